//go:build tools

// Package etcd keeps what `go build go.etcd.io/etcd/server/v3` needs in
// go.mod (a main package cannot be imported; etcd's main only wraps etcdmain).
package etcd

import _ "go.etcd.io/etcd/server/v3/etcdmain"
