// This file is added to k8s.io/apiserver/pkg/storage/etcd3/testserver in the
// copy of the module that storage_test.go builds, where upstream's RunEtcd
// is renamed runEmbeddedEtcd. Every etcd3 test gets its server from RunEtcd: the
// embedded etcd as upstream, or, when SHIMD_STORAGE_BACKEND names one, a
// fresh in-process shimd with the same client wrapping.

package testserver

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/shimd/shimd/conformance/kube/storage/v0.37/shimdtest"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
)

// RunEtcd starts the server under test, configured as cfg where shimd has
// the setting (or NewTestConfig(t) if nil), and returns a client connected
// to it. The server is terminated when the test ends.
func RunEtcd(t testing.TB, cfg *embed.Config) *kubernetes.Client {
	t.Helper()
	if !shimdtest.Enabled() {
		return runEmbeddedEtcd(t, cfg)
	}
	var opts shimdtest.Options
	if cfg != nil {
		opts = shimdtest.Options{
			WatchProgressNotifyInterval: cfg.WatchProgressNotifyInterval,
			MaxRequestBytes:             cfg.MaxRequestBytes,
			MaxTxnOps:                   cfg.MaxTxnOps,
		}
	}
	endpoint := shimdtest.Start(t, opts)
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	kubernetesRecorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, kubernetesRecorder)
	client.Kubernetes = kubernetesRecorder
	return client
}
