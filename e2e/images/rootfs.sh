#!/usr/bin/env bash
# rootfs.sh [--key] LIST: prints the path of a gzip tarball holding a
# Debian root file system with the packages of LIST (e2e/images/
# NAME.packages), the bottom layer of image NAME; with --key, only the
# cache key it would have (nothing is built).
#
# mmdebstrap builds it from the suite and the apt sources this machine
# uses: Debian's Essential set plus the listed packages (merged /usr, as
# debootstrap makes it, without usrmerge and the Perl it brings), no
# recommends, no
# documentation (copyright files kept, identical ones hard-linked), man
# pages, locales or Python bytecode, no apt lists or caches, no device
# nodes. That takes minutes, so the result is cached under
# $NODEINFRA_IMAGE_CACHE (default /var/cache/nodeinfra/images) as
# NAME-KEY.tar.gz, KEY hashing everything that decides its content: this
# script's mmdebstrap options (with LIST's packages and excluded paths,
# not its comments), the apt sources, and the package versions apt resolves for them
# from this machine's package lists (a dry run on an empty system, about
# two seconds). A new package list, a changed option or a new version of
# any package in the tree (after an apt-get update) gives a new key and a
# new build; older tarballs of NAME are removed. NAME-KEY.versions lists
# the versions a tarball holds.
set -euo pipefail
key_only=false
if [[ ${1:-} == --key ]]; then
	key_only=true
	shift
fi
list=${1:?usage: rootfs.sh [--key] LIST}
cache=${NODEINFRA_IMAGE_CACHE:-/var/cache/nodeinfra/images}
name=$(basename "$list" .packages)
if [[ $(id -u) -ne 0 ]]; then
	echo "rootfs $name: mmdebstrap needs root" >&2
	exit 1
fi

pkgs=()
excludes=()
while read -r line || [[ -n $line ]]; do
	line=${line%%#*}
	line=${line//[[:space:]]/}
	[[ -z $line ]] && continue
	if [[ $line == -* ]]; then
		excludes+=("${line#-}")
	else
		pkgs+=("$line")
	fi
done <"$list"
if [[ ${#pkgs[@]} -eq 0 ]]; then
	echo "rootfs $name: $list names no package" >&2
	exit 1
fi

# This machine's suite and apt sources (one-line and deb822 files).
. /etc/os-release
suite=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}
sources=()
if grep -qsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list; then
	sources+=(/etc/apt/sources.list)
fi
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
	[[ -f $f ]] && sources+=("$f")
done
if [[ ${#sources[@]} -eq 0 ]]; then
	echo "rootfs $name: no apt sources in /etc/apt/sources.list*" >&2
	exit 1
fi

opts=(--variant=essential --mode=root --quiet
	--include="$(IFS=,; echo "${pkgs[*]}")"
	--aptopt='APT::Install-Recommends "false"'
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias'
	--dpkgopt='path-exclude=/usr/share/lintian/*'
	--dpkgopt='path-exclude=/usr/share/bash-completion/*'
	--dpkgopt='path-exclude=/usr/share/zsh/*')
for x in "${excludes[@]}"; do
	opts+=(--dpkgopt="path-exclude=$x")
done
opts+=(--customize-hook='rm -rf "$1"/var/log/* "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/cache/ldconfig/aux-cache'
	--customize-hook='find "$1"/usr -depth -type d -name __pycache__ -exec rm -rf {} +'
	--customize-hook='hardlink -q "$1"/usr/share/doc'
	--skip=output/dev --skip=output/mknod)

mkdir -p "$cache/apt"
exec 9>"$cache/$name.lock"
flock 9

# The versions apt would install on an empty system, from this machine's
# package lists (a private status file and cache). usr-is-merged stands
# for the merged-/usr hook, which installs it rather than usrmerge.
[[ -e $cache/apt/status ]] || : >"$cache/apt/status"
resolve() {
	apt-get -s -o Debug::NoLocking=1 -o Dir::State::status="$cache/apt/status" \
		-o Dir::Cache="$cache/apt" -o Dir::Cache::pkgcache="$cache/apt/pkgcache.bin" \
		-o Dir::Cache::srcpkgcache="$cache/apt/srcpkgcache.bin" \
		-o APT::Install-Recommends=false install '?essential' usr-is-merged "${pkgs[@]}" 2>&1
}
if ! resolved=$(resolve); then
	# No package lists yet on this machine (or stale ones): fetch them.
	apt-get -qq -o DPkg::Lock::Timeout=600 update >/dev/null
	resolved=$(resolve) || { echo "rootfs $name: apt cannot resolve: $resolved" >&2; exit 1; }
fi
versions=$(grep '^Inst ' <<<"$resolved" | awk '{print $2, $3}' | sort)

key=$({
	printf '%s\n' "$suite" "${opts[@]}"
	cat "${sources[@]}"
	echo "$versions"
} | sha256sum | cut -c1-16)
if $key_only; then
	echo "$key"
	exit 0
fi
out=$cache/$name-$key.tar.gz
if [[ -s $out ]]; then
	echo "$out"
	exit 0
fi

command -v mmdebstrap >/dev/null 2>&1 || "$(dirname "$0")/../setup/images-prereqs.sh"
echo "rootfs $name: building with mmdebstrap (${pkgs[*]}), a few minutes, then cached as $out" >&2
tmp=$(mktemp -d "$cache/.build-$name-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! mmdebstrap "${opts[@]}" "$suite" "$tmp/rootfs.tar" "${sources[@]}" >"$tmp/log" 2>&1; then
	grep -v "^E: setup failed: E: env" "$tmp/log" | tail -40 >&2
	exit 1
fi
tar -xOf "$tmp/rootfs.tar" ./var/lib/dpkg/status |
	awk '/^Package:/ {p=$2} /^Version:/ {print p, $2}' | sort >"$tmp/versions"
gzip -n "$tmp/rootfs.tar"
mv "$tmp/versions" "$cache/$name-$key.versions"
mv "$tmp/rootfs.tar.gz" "$out"
for old in "$cache/$name"-????????????????.tar.gz; do
	[[ $old == "$out" ]] || rm -f "$old" "${old%.tar.gz}.versions"
done
echo "$out"
