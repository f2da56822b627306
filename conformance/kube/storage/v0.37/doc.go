// Package storage runs k8s.io/apiserver v0.37.2's etcd3 storage tests
// against etcd 3.7.3 and shimd; see storage_test.go.
package storage
