#!/usr/bin/env bash
# apt-install.sh WHY PKG...: installs Debian packages, quietly, with a
# private archive dir (these images delete downloaded .debs after every
# dpkg run, which breaks concurrent apt runs) and a wait for the dpkg lock.
set -euo pipefail
why=$1
shift
[[ $# -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
	echo "$why: need root to install $*" >&2
	exit 1
fi
cache=/var/cache/nodeinfra-apt
mkdir -p "$cache/partial"
opts=(-o "Dir::Cache::archives=$cache/" -o DPkg::Lock::Timeout=600 -qq)
echo "$why: installing $*" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get "${opts[@]}" update >/dev/null || true
apt-get "${opts[@]}" install -y --no-install-recommends "$@" >/dev/null
