//go:build tools

// Package kube keeps the commands it builds in go.mod (go mod tidy).
package kube

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
