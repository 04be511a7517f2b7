#!/usr/bin/env bash
# Stops the cluster that ceph-up.sh started in DIR and removes DIR.
set -euo pipefail
dir=${1:?usage: ceph-down.sh DIR}
[[ -d "$dir" ]] || exit 0
for pidfile in "$dir"/run/*.pid; do
	[[ -e "$pidfile" ]] || continue
	kill -9 "$(cat "$pidfile")" 2>/dev/null || true
done
# Daemons that had not written a pid file yet: find them by their config.
pkill -9 -f -- "-c $dir/ceph.conf" 2>/dev/null || true
sleep 0.2
rm -rf "$dir"
