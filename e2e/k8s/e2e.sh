#!/usr/bin/env bash
# e2e.sh BIN: make e2e-k8s's runner. Starts a Ceph cluster and the
# single-node Kubernetes of up.sh with containerd's CNI folders where the
# nodeagent DaemonSet installs cni-eni (/etc/cni/net.d, /opt/cni/bin),
# imports the image archives of BIN/images, runs the smoke test and the Go
# tests of e2e/k8s (they install the suite with kustomize and run the
# scenarios), and tears everything down, also when a step fails: the
# cluster, Ceph, and what the suite left on the host (cni-eni and its
# conflist, the agent's and csi-ceph's state, their cgroups).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
[[ $# -eq 1 ]] || { echo "usage: e2e.sh BIN" >&2; exit 2; }
bin=$(cd "$1" && pwd)
[[ $(id -u) -eq 0 ]] || { echo "e2e.sh: needs root" >&2; exit 1; }
work=$(mktemp -d /tmp/nodeinfra-e2e-k8s-XXXXXX)
t0=$SECONDS
phase() { echo "e2e-k8s: $* ($((SECONDS - t0)) s)" >&2; }

# What the suite puts on the host, and whether it was there before.
host_paths=(/opt/cni/bin/cni-eni /opt/cni/bin/loopback /etc/cni/net.d/10-cni-eni.conflist /lib/modules /run/mount /var/lib/nodeagent /run/nodeagent /var/lib/csi-ceph /var/lib/csi-cephfs)
# The csi-ceph node plugins mount their state dirs Bidirectional (their
# mapper daemons' mounts must reach the host): a host whose / is shared
# (systemd's) needs nothing; this one's / is private, so each state dir is
# made a shared mount of its own for the run.
shared_dirs=(/var/lib/csi-ceph /var/lib/csi-cephfs)
made_shared=()
declare -A had
for p in "${host_paths[@]}" /etc/cni/net.d /opt/cni/bin /etc/cni /opt/cni; do [[ -e $p ]] && had[$p]=1; done

cleanup() {
	rc=$?
	set +e
	phase "tearing down"
	"$here/down.sh" "$work/k8s" >"$work/down.log" 2>&1 || { echo "e2e-k8s: down.sh failed:" >&2; tail -20 "$work/down.log" >&2; }
	for d in "${made_shared[@]}"; do umount -l "$d"; done
	"$repo/e2e/setup/ceph-down.sh" "$work/ceph/cluster" >/dev/null 2>&1
	# The agent's and the mappers' cgroups, once empty (the scenarios make
	# no sandbox; a daemon left in them shows as a failure to remove).
	for cg in nodeagent csi-ceph-mappers csi-cephfs-mounters; do
		for d in /sys/fs/cgroup/*/"$cg" /sys/fs/cgroup/"$cg"; do
			[[ -d $d ]] && find "$d" -depth -type d -exec rmdir {} + 2>/dev/null
		done
	done
	for p in "${host_paths[@]}"; do
		[[ -n ${had[$p]:-} ]] || rm -rf "$p"
	done
	for p in /etc/cni/net.d /opt/cni/bin /etc/cni /opt/cni; do
		[[ -n ${had[$p]:-} ]] || rmdir "$p" 2>/dev/null
	done
	if [[ $rc -eq 0 ]]; then rm -rf "$work"; else echo "e2e-k8s: failed; logs in $work" >&2; fi
	phase "done (exit $rc)"
	exit $rc
}
trap cleanup EXIT

phase "starting Ceph"
mkdir -p "$work/ceph"
if "$repo/e2e/setup/ceph-up.sh" "$work/ceph/cluster" >"$work/ceph/up.log" 2>&1; then
	touch "$work/ceph/ready"
else
	touch "$work/ceph/failed"
	tail -20 "$work/ceph/up.log" >&2
	exit 1
fi
for d in "${shared_dirs[@]}"; do
	mkdir -p "$d"
	if ! mountpoint -q "$d"; then
		mount --bind "$d" "$d" && mount --make-shared "$d" && made_shared+=("$d")
	fi
done
phase "starting Kubernetes"
mkdir -p /etc/cni/net.d /opt/cni/bin
# Pods' network namespaces in /run/netns, containerd's default: the agent
# finds them there (its DaemonSet mounts the host's /run/netns).
CNI_CONF_DIR=/etc/cni/net.d CNI_BIN_DIR=/opt/cni/bin NETNS_UNDER_STATE=false IMAGES_DIR="$bin/images" "$here/up.sh" "$work/k8s"
"$here/smoke.sh" "$work/k8s"
phase "running the scenarios"
cd "$repo"
NODEINFRA_K8S_DIR="$work/k8s" NODEINFRA_CEPH_DIR="$work/ceph" NODEINFRA_BIN="$bin" \
	go test -count=1 -v -timeout 30m ./e2e/k8s 2>&1 | tee "$work/e2e.log" | grep -E '^(=== RUN|--- |\s+\S+_test.go|ok|FAIL|PASS)'
[[ ${PIPESTATUS[0]} -eq 0 ]]
