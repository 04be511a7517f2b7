#!/usr/bin/env bash
# down.sh DIR: stops the cluster up.sh started in DIR and removes every
# trace of it: its daemons, the pods' containers and containerd shims, the
# pods' cgroups, the mounts under the kubelet's root dir (the kubelet's
# bind mount of that dir onto itself included) and under DIR, the sysctls
# the kubelet changed, the host folders and files up.sh created, and DIR.
# Idempotent, and safe after a failed or interrupted up.sh: each step
# undoes only what it finds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

[[ $# -eq 1 ]] || { echo "usage: down.sh DIR" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "down.sh: needs root" >&2; exit 1; }
if [[ ! -d $1 ]]; then
	echo "down.sh: $1: no cluster" >&2
	exit 0
fi
dir=$(cd "$1" && pwd)
# shellcheck source=layout.sh
. "$here/layout.sh"
KUBELET_ROOT=/var/lib/kubelet
if [[ -f $cluster_env ]]; then
	# shellcheck disable=SC1090
	. "$cluster_env"
fi
log() { echo "down.sh: $*" >&2; }
errors=0

# stop NAME SECONDS: SIGTERM, then SIGKILL after SECONDS.
stop() {
	local pid
	pid=$(pid_of "$1") || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq $(($2 * 10))); do
		pid_of "$1" >/dev/null || return 0
		sleep 0.1
	done
	log "$1 ($pid) ignored SIGTERM for $2 s: SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	sleep 0.2
}

# The kubelet first: it would restart what the next steps kill.
stop kubelet 5

# The pods' containers, through runc (containerd may be gone already),
# then the shims that watched them. containerd runs runc with
# Root=<runc_root>/<namespace>.
for root in "$runc_root"/*; do
	[[ -d $root ]] || continue
	for id in $(runc --root "$root" list -q 2>/dev/null); do
		runc --root "$root" kill "$id" KILL 2>/dev/null || true
		runc --root "$root" delete --force "$id" 2>/dev/null || true
	done
done
# The pods' sandboxes, whose cached CNI results (/var/lib/cni/results,
# named NETWORK-SANDBOX-IFNAME) are left when no CNI DEL comes.
sandboxes=()
for d in "$ctrd_dir"/state/io.containerd.grpc.v1.cri/sandboxes/*; do
	[[ -d $d ]] && sandboxes+=("${d##*/}")
done
# The shims' sockets are outside DIR (/run/containerd/s): their names are
# in the tasks' address files.
shim_socks=()
for f in "$ctrd_dir"/state/io.containerd.runtime.v2.task/*/*/address; do
	# A task may end between the glob and the read.
	sock=$(sed -n 's|^unix://||p' "$f" 2>/dev/null) || continue
	[[ -n $sock ]] && shim_socks+=("$sock")
done
for p in /proc/[0-9]*; do
	cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
	if [[ $cmd == *containerd-shim* && $cmd == *"-address $ctrd_sock "* ]]; then
		kill -KILL "${p#/proc/}" 2>/dev/null || true
	fi
done
stop containerd 5
for s in "${shim_socks[@]}"; do
	[[ $s == /run/containerd/s/* ]] && rm -f "$s"
done
for id in "${sandboxes[@]}"; do
	rm -f /var/lib/cni/results/*-"$id"-*
done
# The control plane's data goes with DIR: no need for the API server's
# graceful shutdown, which waits up to 60 s for its own watches.
for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
	stop "${daemons[i]}" 2
done

# The kubelet's pod cgroups (cgroupfs driver: kubepods at the root of each
# hierarchy), when this cluster's kubelet made them: any process left in
# them belonged to a pod.
if grep -qx "created cgroup kubepods" "$host_orig" 2>/dev/null; then
	for top in /sys/fs/cgroup/*/kubepods; do
		[[ -d $top ]] || continue
		while read -r cg; do
			while read -r pid; do
				kill -KILL "$pid" 2>/dev/null || true
			done < <(cat "$cg/cgroup.procs" 2>/dev/null)
			for _ in $(seq 20); do
				rmdir "$cg" 2>/dev/null && break
				sleep 0.1
			done
			[[ -d $cg ]] && { log "cannot remove cgroup $cg"; errors=$((errors + 1)); }
		done < <(find "$top" -depth -type d)
	done
fi

# Mounts: the pods' volumes and the kubelet's self bind mount (stacked if
# the kubelet started more than once), containerd's rootfs, shm and netns
# mounts under DIR. Deepest first; lazily when busy.
kubelet_root_ours=false
[[ -f $KUBELET_ROOT/.nodeinfra-e2e-k8s && $(<"$KUBELET_ROOT/.nodeinfra-e2e-k8s") == "$dir" ]] && kubelet_root_ours=true
roots=("$dir")
$kubelet_root_ours && roots+=("$KUBELET_ROOT")
for _ in 1 2 3 4 5; do
	mapfile -t ms < <(mounts_under "${roots[@]}")
	((${#ms[@]} > 0)) || break
	for m in "${ms[@]}"; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
	done
done
mapfile -t ms < <(mounts_under "${roots[@]}")
if ((${#ms[@]} > 0)); then
	log "still mounted, not removing ${roots[*]}: ${ms[*]}"
	exit 1
fi

# foreign PATH: whether PATH, which up.sh found missing, now holds what
# is not this cluster's: mounts, or the root dir of another cluster's
# kubelet (one that started after a failed up.sh of this one).
foreign() {
	local r
	[[ -n $(mounts_under "$1") ]] && return 0
	for r in "$KUBELET_ROOT" /var/lib/kubelet; do
		[[ ($r == "$1" || $r == "$1"/*) && -f $r/.nodeinfra-e2e-k8s && $(<"$r/.nodeinfra-e2e-k8s") != "$dir" ]] && return 0
	done
	return 1
}

# What the cluster changed on the host (host.orig, written by up.sh).
if [[ -f $host_orig ]]; then
	while read -r what arg; do
		case $what in
		sysctl)
			sysctl -q -w "$arg" >/dev/null || { log "cannot restore $arg"; errors=$((errors + 1)); }
			;;
		shared-dir)
			# Another containerd may use it now: only when empty.
			rmdir "$arg" 2>/dev/null || true
			;;
		created)
			if foreign "$arg"; then
				log "not removing $arg: in use by another cluster"
			else
				rm -rf --one-file-system "$arg"
			fi
			;;
		esac
	done <"$host_orig"
fi
if $kubelet_root_ours && [[ -d $KUBELET_ROOT ]]; then
	# It was there, empty, before up.sh: empty it again.
	find "$KUBELET_ROOT" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
fi
# The kubelet's links to its pods' logs, in a folder that was there before.
if [[ -d /var/log/containers ]]; then
	find /var/log/containers -maxdepth 1 -type l -lname "$dir/*" -delete
fi

rm -rf --one-file-system "$dir"
((errors == 0)) || { log "$errors things could not be undone (above)"; exit 1; }
log "removed the cluster in $dir"
