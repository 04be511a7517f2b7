#!/usr/bin/env bash
# promtool.sh DEST: puts Debian's promtool (from the `prometheus` package)
# at DEST, once. The package is unpacked, not installed: installing it
# would start a Prometheus server on the machine.
set -euo pipefail
dest=$1
[[ -x $dest ]] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "promtool: fetching Debian's prometheus package for promtool" >&2
cd "$work"
if ! apt-get -qq download prometheus >/dev/null 2>&1; then
	apt-get -qq update >/dev/null 2>&1 || true
	apt-get -qq download prometheus >/dev/null
fi
dpkg-deb -x prometheus_*.deb root
mkdir -p "$(dirname "$dest")"
install -m 0755 root/usr/bin/promtool "$dest"
