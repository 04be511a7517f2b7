#!/usr/bin/env bash
# Installs the Ceph packages the driver and its tests need, from Debian.
# Idempotent and quiet when everything is there.
set -euo pipefail
pkgs=(ceph-mon ceph-mgr ceph-osd ceph-mds ceph-common librados-dev librbd-dev libcephfs-dev rbd-fuse ceph-fuse)
need=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
[[ ${#need[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "ceph install: need root to install ${need[*]}" >&2
	exit 1
fi
# A private archive dir: these images delete downloaded .debs after every
# dpkg run, which breaks concurrent apt runs.
cache=/var/cache/nodeinfra-apt
mkdir -p "$cache/partial"
opts=(-o "Dir::Cache::archives=$cache/" -o DPkg::Lock::Timeout=600 -qq)
echo "ceph install: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get "${opts[@]}" update >/dev/null || true
apt-get "${opts[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
