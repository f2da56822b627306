//go:build tools

// Package etcdrel keeps in go.mod what building etcd 3.6's own commands
// needs: `go build go.etcd.io/etcd/server/v3` (etcd; in 3.6 the module's root
// is package main) and `go build go.etcd.io/etcd/etcdutl/v3`. It is never
// compiled.
package etcdrel

import (
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/server/v3"
)
