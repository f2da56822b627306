//go:build tools

// This file pins build-only dependencies in go.mod and is never compiled:
// shimd itself (the harness builds cmd/shimd through the replace directive)
// and etcdctl and etcdutl of the same etcd release (`make etcdctl`; the
// snapshot tests build etcdutl), and etcd's benchmark tool (go run ./bench
// --etcd-tool builds it; go.etcd.io/etcd/v3 is at v3.7.1, the newest 3.7
// release of that module the module proxy serves: see bench/etcdtool.go).
package conformance

import (
	_ "github.com/shimd/shimd/cmd/shimd"
	_ "go.etcd.io/etcd/etcdctl/v3"
	_ "go.etcd.io/etcd/etcdutl/v3"
	_ "go.etcd.io/etcd/v3/tools/benchmark"
)
