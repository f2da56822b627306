//go:build tools

// This file pins build-only dependencies in go.mod and is never compiled:
// shimd itself (the harness builds cmd/shimd through the replace directive)
// and etcdctl and etcdutl of the same etcd release (`make etcdctl`; the
// snapshot tests build etcdutl).
package conformance

import (
	_ "github.com/shimd/shimd/cmd/shimd"
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
)
