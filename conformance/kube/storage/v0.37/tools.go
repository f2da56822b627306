//go:build tools

package storage

// The packages that the tests of k8s.io/apiserver/pkg/storage/etcd3 and
// .../cacher import, so
// that this module's go.mod (kept by go mod tidy) holds their versions: the
// test binary is built from this module (see storage_test.go).
import (
	_ "github.com/go-logr/logr"
	_ "github.com/google/go-cmp/cmp"
	_ "github.com/stretchr/testify/require"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "golang.org/x/sync/errgroup"
	_ "k8s.io/api/core/v1"
	_ "k8s.io/apiserver/pkg/storage/cacher"
	_ "k8s.io/apiserver/pkg/storage/etcd3"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testing"
	_ "k8s.io/apiserver/pkg/storage/etcd3/testserver"
	_ "k8s.io/apiserver/pkg/storage/testing"
	_ "k8s.io/client-go/features/testing"
	_ "k8s.io/client-go/tools/cache"
	_ "k8s.io/client-go/util/watchlist"
	_ "k8s.io/component-base/featuregate/testing"
	_ "k8s.io/component-base/metrics/testutil"
	_ "k8s.io/utils/clock/testing"
)
