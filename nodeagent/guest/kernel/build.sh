#!/usr/bin/env bash
# Builds the sandbox guest kernel from Debian's linux-source-6.1:
# tinyconfig + guest.config, everything built in, as an uncompressed
# vmlinux that QEMU boots through PVH. The result is cached outside the
# repository, keyed by the config and the source version, so only the
# first build on a machine pays the 6-7 minutes.
#
#   build.sh [CACHE_DIR]   prints the path of the vmlinux
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-/var/cache/nodeinfra/kernel}
"$here/../../../e2e/setup/apt-install.sh" "guest kernel" $(
	for p in linux-source-6.1 flex bison libelf-dev bc; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
)
tarball=$(ls /usr/src/linux-source-6.1.tar.xz)
ver=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( (cat "$here/guest.config"; echo "$ver") | sha256sum | cut -c1-16)
out="$cache/$key"
if [[ -f "$out/vmlinux" ]]; then
	echo "$out/vmlinux"
	exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build-XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xf "$tarball"
src="$work/linux-source-6.1"
{
	make -C "$src" tinyconfig
	"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/guest.config"
	make -C "$src" olddefconfig
	make -C "$src" -j"$(nproc)" vmlinux
} >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
mkdir -p "$out"
cp "$src/vmlinux" "$out/vmlinux.tmp"
cp "$src/.config" "$out/config"
mv "$out/vmlinux.tmp" "$out/vmlinux"
echo "$out/vmlinux"
