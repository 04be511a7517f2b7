#!/usr/bin/env bash
# `make test`: starts one Ceph cluster for the whole run (in the background,
# while the tests compile), runs every package's tests, stops the cluster.
# Tests that need Ceph wait for it through pkg/testutil (NODEINFRA_CEPH_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: run-tests.sh BIN_DIR}

./e2e/setup/ceph-install.sh
ceph_dir=$(mktemp -d /tmp/nodeinfra-ceph-XXXXXX)
up_pid=""
cleanup() {
	if [[ -n "$up_pid" ]]; then
		kill "$up_pid" 2>/dev/null || true
		wait "$up_pid" 2>/dev/null || true
	fi
	./e2e/setup/ceph-down.sh "$ceph_dir/cluster" || true
	rm -rf "$ceph_dir"
}
trap cleanup EXIT
(
	if ./e2e/setup/ceph-up.sh "$ceph_dir/cluster" >"$ceph_dir/up.log" 2>&1; then
		touch "$ceph_dir/ready"
	else
		touch "$ceph_dir/failed"
		cat "$ceph_dir/up.log" >&2
	fi
) &
up_pid=$!

# The sandbox guest kernel: built once per machine (about 4 minutes on two
# cores), then taken from its cache.
NODEINFRA_GUEST_KERNEL=$(./nodeagent/guest/kernel/build.sh)
export NODEINFRA_CEPH_DIR=$ceph_dir NODEINFRA_BIN=$bin NODEINFRA_GUEST_KERNEL
# csi-sanity counts every volume and snapshot the driver can list, so it
# runs after the other packages, which share the cluster's pools. It runs
# for RBD (mount and block) and for CephFS (csi-ceph --type cephfs, in a
# subvolume group of its own), with the e2e tests of both.
go test -count=1 -timeout 15m $(go list ./... | grep -v '/e2e/csi$')
# The host side of the guest channel faces hostile guests: its tests (a
# stateful fuzz seed corpus, a real VM) run again under the race detector.
go test -count=1 -race -timeout 5m ./nodeagent/guest/client
go test -count=1 -timeout 15m ./e2e/csi
