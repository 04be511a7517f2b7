//go:build tools

// Package tools pins the Kubernetes commands that e2e/k8s/build.sh builds:
// `go mod tidy` keeps their dependencies in go.mod and go.sum, so a build
// on any machine uses the same module versions. The build tag keeps the
// file out of every build (a main package cannot be imported).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
