#!/usr/bin/env bash
# Brings up a simulated node (network namespaces only) with the real
# nodeagent and cni-eni, and shows pods of two VPCs with the same CIDR
# talking within their VPC and isolated from the other VPC and the node,
# then a pod sandbox: a QEMU VM that takes over a pod's ENI (skipped when
# BIN_DIR has no nodeagent-guest/, see make build): the net part. Then the
# storage part: a Ceph cluster, csi-ceph and a database volume.
# Needs root. Usage: e2e/demo/demo.sh [BIN_DIR]   (default: ./bin, see make build)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${1:-$root/bin}"
# Resolve a relative bin dir against the caller's directory before moving.
BIN="$(cd "$BIN" 2>/dev/null && pwd)" || { echo "demo: no directory ${1:-$root/bin} (run make build)" >&2; exit 2; }
cd "$root"
# exec: signals (Ctrl-C, SIGTERM) reach go run and the demo directly; the
# demo tears down everything it created before exiting.
go run ./e2e/demo/net --bin "$BIN"
# The storage part: a Ceph cluster, csi-ceph and a database volume.
exec go run ./e2e/demo/storage --bin "$BIN"
