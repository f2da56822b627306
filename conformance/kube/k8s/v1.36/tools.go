//go:build tools

// Package k8s keeps the commands the kube scenario builds in go.mod (go mod tidy).
package k8s

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
