#!/usr/bin/env bash
# Starts a single-node Ceph cluster (mon, mgr, one bluestore OSD on a
# sparse file, MDS) on 127.0.0.1 with cephx, all its state under DIR.
# Installs Ceph from Debian first when it is missing. When it returns, all
# PGs are active+clean, pool "rbd" and CephFS "cephfs" exist, and
# DIR/ceph.conf and DIR/ceph.client.admin.keyring are written.
#
#   e2e/setup/ceph-up.sh DIR        (ceph-down.sh DIR stops it and removes DIR)
#
# Ports: CEPH_PORT_BASE (default: a free block of 64 ports picked here) is
# the monitor's msgr2 port (clients given a bare "host:port" try msgr2
# first), the next one its legacy msgr1 port; the other daemons bind the
# 62 ports above. DIR/cluster.json describes the cluster in ceph-csi's
# config.json shape (clusterID "test").
set -euo pipefail

dir=${1:?usage: ceph-up.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "ceph-up: $*" >&2; }

"$here/ceph-install.sh"

if [[ -e "$dir/ceph.conf" ]]; then
	log "$dir already holds a cluster; run ceph-down.sh first"
	exit 1
fi

pick_base() {
	local used base
	used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
	for _ in $(seq 1 50); do
		base=$((20000 + (RANDOM % 400) * 64))
		if ! grep -qxE "$(seq -s'|' "$base" $((base + 63)))" <<<"$used"; then
			echo "$base"
			return
		fi
	done
	log "no free port block"
	exit 1
}
base=${CEPH_PORT_BASE:-$(pick_base)}
# A start that fails halfway stops the daemons it started (logs stay).
up=""
trap '[[ -n "$up" ]] || { pkill -9 -f -- "-c $dir/ceph.conf" 2>/dev/null || true; log "start failed; daemons stopped, logs in $dir/log"; }' EXIT
fsid=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$dir"/{run,log,mon,mgr/ceph-x,osd/ceph-0,mds/ceph-a}

cat >"$dir/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$base,v1:127.0.0.1:$((base + 1))]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind port min = $((base + 2))
ms bind port max = $((base + 63))
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
mon data = $dir/mon/\$cluster-\$id
mgr data = $dir/mgr/\$cluster-\$id
osd data = $dir/osd/\$cluster-\$id
mds data = $dir/mds/\$cluster-\$id
keyring = $dir/ceph.client.admin.keyring
mon cluster log file = $dir/log/cluster.log
debug ms = 0

[mon]
keyring = $dir/mon/ceph-a/keyring

[mgr]
keyring = $dir/mgr/ceph-x/keyring
mgr initial modules = volumes

[osd]
keyring = $dir/osd/ceph-0/keyring
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 21474836480
bluestore fsck on mount = false
osd memory target = 939524096

[mds]
keyring = $dir/mds/ceph-a/keyring
CONF
conf=(-c "$dir/ceph.conf")

ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool --create-keyring "$dir/ceph.client.admin.keyring" --gen-key -n client.admin \
	--cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/ceph.client.admin.keyring" >/dev/null
monmaptool --create --addv a "[v2:127.0.0.1:$base,v1:127.0.0.1:$((base + 1))]" --fsid "$fsid" "$dir/monmap" >/dev/null
ceph-mon "${conf[@]}" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" >>"$dir/log/daemons.out" 2>&1
# Daemons' own start-up chatter goes to the log dir.
out="$dir/log/daemons.out"
ceph-mon "${conf[@]}" -i a >>"$out" 2>&1

c() { timeout 60 ceph "${conf[@]}" "$@"; }
c mon enable-msgr2 >/dev/null 2>&1 || true
c osd set-require-min-compat-client mimic >/dev/null 2>&1 || true

c auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' -o "$dir/mgr/ceph-x/keyring"
ceph-mgr "${conf[@]}" -i x >>"$out" 2>&1

osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_key=$(ceph-authtool --gen-print-key)
printf '[osd.0]\n\tkey = %s\n' "$osd_key" >"$dir/osd/ceph-0/keyring"
echo "{\"cephx_secret\": \"$osd_key\"}" | c osd new "$osd_uuid" -i - >/dev/null
ceph-osd "${conf[@]}" -i 0 --mkfs --osd-uuid "$osd_uuid" >/dev/null 2>"$dir/log/osd-mkfs.log"
ceph-osd "${conf[@]}" -i 0 >>"$out" 2>&1

c auth get-or-create mds.a mon 'allow profile mds' osd 'allow rwx' mds 'allow' mgr 'allow profile mds' -o "$dir/mds/ceph-a/keyring"
ceph-mds "${conf[@]}" -i a >>"$out" 2>&1

c osd pool create rbd 8 >/dev/null 2>&1
c osd pool application enable rbd rbd >/dev/null 2>&1

# CephFS needs the mgr's volumes module, which needs an available mgr.
for _ in $(seq 1 120); do
	c mgr stat 2>/dev/null | grep -q '"available": true' && break
	sleep 0.5
done
for _ in $(seq 1 20); do
	c fs volume create cephfs >/dev/null 2>&1 && break
	sleep 1
done
c fs ls 2>/dev/null | grep -q 'name: cephfs' || { log "cephfs was not created"; exit 1; }
c fs set cephfs standby_count_wanted 0 >/dev/null

# HEALTH_OK shows before the PGs leave "unknown": wait for both.
ok=""
for _ in $(seq 1 240); do
	st=$(c status --format json 2>/dev/null || true)
	if python3 - "$st" <<'PY'
import json, sys
try:
    s = json.loads(sys.argv[1])
except Exception:
    sys.exit(1)
pgs = s["pgmap"]
states = {x["state_name"]: x["count"] for x in pgs.get("pgs_by_state", [])}
total = pgs.get("num_pgs", 0)
fs_up = s.get("fsmap", {}).get("up", 0) >= 1
sys.exit(0 if s["health"]["status"] == "HEALTH_OK" and total > 0
         and states.get("active+clean", 0) == total and fs_up else 1)
PY
	then
		ok=1
		break
	fi
	sleep 0.5
done
if [[ -z "$ok" ]]; then
	log "cluster not healthy in time:"
	c status >&2 || true
	exit 1
fi
printf '[{"clusterID": "test", "monitors": ["127.0.0.1:%d"]}]\n' "$base" >"$dir/cluster.json"
up=1
log "cluster up in $dir (mon 127.0.0.1:$base v2, :$((base + 1)) v1, fsid $fsid)"
