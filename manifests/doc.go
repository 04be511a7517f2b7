// Package manifests holds nodeinfra's Kubernetes manifests (one folder per
// component, e.g. csi-ceph/). It has no code: its test decodes every YAML
// document under this folder strictly with the Kubernetes API types and
// checks the invariants that tie the documents together.
package manifests
