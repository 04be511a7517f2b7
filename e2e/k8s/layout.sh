# layout.sh, sourced by up.sh, down.sh and smoke.sh with $dir set to the
# cluster's folder (absolute): where everything of one cluster lives, and
# the helpers that find its processes again.
#
#   cluster.env       the settings up.sh chose (ports, node name, host
#                     paths), written before anything starts: down.sh
#                     reads it, and its presence means "not torn down"
#   kubeconfig        admin credentials (system:masters)
#   pki/              pki.sh's certificates and keys
#   etc/              kubeconfigs of the components, kubelet and
#                     containerd configurations
#   etcd/             etcd's data
#   containerd/       containerd's root, state, socket; runc's state
#   cni/net.d cni/bin the CNI folders containerd reads (unless
#                     CNI_CONF_DIR / CNI_BIN_DIR point elsewhere)
#   logs/             one log per daemon; pod-logs/ the pods' logs
#   run/              one pid file per daemon
#   host.orig         what up.sh found on the host and changed or created
#                     (sysctls, folders, files), for down.sh

pki=$dir/pki
etc=$dir/etc
logs=$dir/logs
run=$dir/run
cluster_env=$dir/cluster.env
kubeconfig=$dir/kubeconfig
host_orig=$dir/host.orig
ctrd_dir=$dir/containerd
ctrd_sock=$ctrd_dir/containerd.sock
runc_root=$ctrd_dir/runc
# The daemons, in start order; down.sh stops them in reverse.
daemons=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet)

# The kubelet changes these on start (container_manager_linux.go,
# setupKernelTunables); up.sh records them first, down.sh puts them back.
kubelet_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# pid_of NAME: the pid of the cluster's daemon NAME, if it still runs (the
# pid file alone could name a recycled pid: its command line must mention
# this cluster's folder or, for the kubelet, its config under it).
pid_of() {
	local f=$run/$1.pid pid
	[[ -f $f ]] || return 1
	pid=$(<"$f")
	[[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' 2>/dev/null </proc/"$pid"/cmdline | grep -qF -- "$dir/" || return 1
	echo "$pid"
}

# mounts_under PATH...: the mount points at or below each PATH, deepest
# first (the order to unmount them in).
mounts_under() {
	local p
	for p in "$@"; do
		awk -v p="$p" '{ m = $5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print length(m) "\t" m }' /proc/self/mountinfo
	done | sort -rn | cut -f2- | awk '!seen[$0]++'
}
