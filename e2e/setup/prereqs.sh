#!/usr/bin/env bash
# Installs what the tests, benchmarks and demo need from Debian, once.
# Idempotent and quiet when everything is already there.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
# QEMU's own rbd driver, which opens sandboxes' RBD disks without a host map.
[[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ]] || need+=(qemu-block-extra)
# The sandbox guest's initramfs takes busybox from here (it must be static).
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || need+=(busybox-static)
if [[ "${1:-}" == "--proto" ]]; then
	command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
	# google/protobuf/timestamp.proto, which sandbox.proto imports.
	[[ -e /usr/include/google/protobuf/timestamp.proto ]] || need+=(libprotobuf-dev)
fi
exec "$(dirname "$0")/apt-install.sh" prereqs "${need[@]}"
