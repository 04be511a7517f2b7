#!/usr/bin/env bash
# Installs what the tests, benchmarks and demo need from Debian, once.
# Idempotent and quiet when everything is already there.
set -euo pipefail

need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v mkfs.xfs >/dev/null 2>&1 || need+=(xfsprogs)
command -v losetup >/dev/null 2>&1 || need+=(mount)
if [[ "${1:-}" == "--proto" ]]; then
	command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
fi
[[ ${#need[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "prereqs: need root to install ${need[*]}" >&2
	exit 1
fi
# A private archive dir: Debian images here delete downloaded .debs after
# every dpkg run, which breaks concurrent apt runs.
cache=/var/cache/nodeinfra-apt
mkdir -p "$cache/partial"
apt_opts=(-o "Dir::Cache::archives=$cache/" -o DPkg::Lock::Timeout=600 -qq)
echo "prereqs: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get "${apt_opts[@]}" update >/dev/null || true
apt-get "${apt_opts[@]}" install -y --no-install-recommends "${need[@]}" >/dev/null
