#!/usr/bin/env bash
# Installs the Ceph packages the driver and its tests need, from Debian.
# Idempotent and quiet when everything is there.
set -euo pipefail
pkgs=(ceph-mon ceph-mgr ceph-osd ceph-mds ceph-common librados-dev librbd-dev libcephfs-dev rbd-fuse ceph-fuse)
need=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
exec "$(dirname "$0")/apt-install.sh" "ceph install" "${need[@]}"
