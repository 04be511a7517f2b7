#!/usr/bin/env bash
# up.sh DIR: a single-node Kubernetes v1.34 on this machine, every file of
# it under DIR except the kubelet's root dir: etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler on 127.0.0.1, a private
# containerd (Debian's 1.6 + runc), and the kubelet. It imports the image
# archives of IMAGES_DIR (nothing can be pulled here), waits for the node
# to be Ready and prints how to reach the cluster. down.sh DIR undoes it,
# also after a failed up. The layout of DIR is in layout.sh.
#
# Settings (environment):
#   K8S_BIN        the Kubernetes binaries (default: build.sh's cache)
#   IMAGES_DIR     image archives to import, *.tar (default: bin/images)
#   SANDBOX_IMAGE  containerd's sandbox_image (default: the tag of
#                  IMAGES_DIR/pause*.tar, else registry.k8s.io/pause:3.10)
#   NODE_NAME      the node (default: the host name); the API server
#                  reaches the kubelet by this name (logs, exec): /etc/hosts
#                  must map it to a loopback address
#   NODE_IP        the node's InternalIP (default: the kubelet's choice,
#                  the address of the default route's interface)
#   KUBELET_ROOT   the kubelet's --root-dir (default /var/lib/kubelet: the
#                  CSI manifests name it)
#   CNI_CONF_DIR   containerd's CNI folders (default DIR/cni/net.d and
#   CNI_BIN_DIR    DIR/cni/bin; /etc/cni/net.d and /opt/cni/bin are what
#                  the nodeagent DaemonSet installs cni-eni into)
#   APISERVER_PORT the API server's port on 127.0.0.1 (default: a free one)
#   NETNS_UNDER_STATE  true (default): pods' network namespaces under
#                  containerd's state dir, out of the host's /run/netns;
#                  false: in /run/netns, containerd's default, where the
#                  nodeagent DaemonSet sees them (it mounts /run/netns)
#
# Networking: no kube-proxy, no DNS: ClusterIPs lead nowhere, and the
# kubernetes Service has no endpoints (its endpoint may not be a loopback
# address). Pods on the host network reach the API server at 127.0.0.1 and
# must be told so: KUBERNETES_SERVICE_HOST=127.0.0.1 and
# KUBERNETES_SERVICE_PORT=<port> (printed at the end, in DIR/cluster.env).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
start=$SECONDS

[[ $# -eq 1 ]] || { echo "usage: up.sh DIR" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "up.sh: needs root (containerd, the kubelet, mounts)" >&2; exit 1; }
dir=$(realpath -m "$1")
[[ $dir != *[[:space:]]* ]] || { echo "up.sh: $dir: no white space, please (mount tables escape it)" >&2; exit 1; }
# shellcheck source=layout.sh
. "$here/layout.sh"

log() { echo "up.sh: [$((SECONDS - start)) s] $*" >&2; }
# fail MESSAGE [LOG]: gives up, with the tail of the daemon's log.
fail() {
	echo "up.sh: $1" >&2
	if [[ -n ${2:-} && -f $logs/$2.log ]]; then
		echo "--- last lines of $logs/$2.log" >&2
		tail -n 30 "$logs/$2.log" >&2
	fi
	echo "up.sh: the cluster is not up; clean up with: $here/down.sh $dir" >&2
	exit 1
}

# --- Refuse to start over a cluster ------------------------------------

if [[ -f $cluster_env ]]; then
	for d in "${daemons[@]}"; do
		pid_of "$d" >/dev/null && { echo "up.sh: $dir holds a running cluster ($d runs); down.sh $dir stops it" >&2; exit 1; }
	done
	echo "up.sh: $dir holds a cluster that was not torn down; run $here/down.sh $dir first" >&2
	exit 1
fi
NODE_NAME=${NODE_NAME:-$(hostname | tr '[:upper:]' '[:lower:]')}
KUBELET_ROOT=${KUBELET_ROOT:-/var/lib/kubelet}
NETNS_UNDER_STATE=${NETNS_UNDER_STATE:-true}
CNI_CONF_DIR=${CNI_CONF_DIR:-$dir/cni/net.d}
CNI_BIN_DIR=${CNI_BIN_DIR:-$dir/cni/bin}
IMAGES_DIR=${IMAGES_DIR:-$repo/bin/images}
# The API server reaches the kubelet by the node's name (its Hostname
# address; the kubelet listens on 127.0.0.1 only), and the kubelet looks
# its name up for its InternalIP: /etc/hosts must answer, so that neither
# asks the DNS server, which is off this machine.
awk -v n="$NODE_NAME" '/^[[:space:]]*#/ { next } $1 ~ /^(127\.|::1$)/ { for (i = 2; i <= NF; i++) if ($i == n) f = 1 } END { exit !f }' /etc/hosts || {
	echo "up.sh: node name $NODE_NAME is not a loopback name in /etc/hosts: add \"127.0.0.1 $NODE_NAME\" there, or leave NODE_NAME unset" >&2
	exit 1
}
# One kubelet per machine: with the cgroupfs driver every kubelet puts its
# pods under /kubepods, and the sysctls it sets are the machine's.
if [[ -e /sys/fs/cgroup/memory/kubepods ]]; then
	echo "up.sh: /sys/fs/cgroup/*/kubepods exists: another kubelet runs here, or one left its cgroups (down.sh of its cluster removes them)" >&2
	exit 1
fi
# The marker in the kubelet's root dir names the cluster that owns it.
marker=$KUBELET_ROOT/.nodeinfra-e2e-k8s
if [[ -f $marker ]]; then
	echo "up.sh: $KUBELET_ROOT belongs to the cluster in $(<"$marker"); run $here/down.sh $(<"$marker") first" >&2
	exit 1
fi
if [[ -d $KUBELET_ROOT && -n $(ls -A "$KUBELET_ROOT") ]]; then
	echo "up.sh: $KUBELET_ROOT holds another kubelet's files; choose another KUBELET_ROOT" >&2
	exit 1
fi

# --- Packages and binaries ---------------------------------------------

# shellcheck disable=SC2046 # one word per missing package
"$repo/e2e/setup/apt-install.sh" "k8s cluster" $(
	for p in etcd-server containerd runc containernetworking-plugins openssl curl jq; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
	done
)
K8S_BIN=${K8S_BIN:-$("$here/build.sh")}
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl; do
	[[ -x $K8S_BIN/$b ]] || fail "no $K8S_BIN/$b"
done
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }

# --- Settings, recorded before anything changes ------------------------

# The sandbox image is the one image containerd needs for every pod: take
# its name from the pause archive when there is one.
if [[ -z ${SANDBOX_IMAGE:-} ]]; then
	SANDBOX_IMAGE=registry.k8s.io/pause:3.10
	for f in "$IMAGES_DIR"/pause*.tar; do
		[[ -f $f ]] || continue
		tag=$(tar -xOf "$f" manifest.json 2>/dev/null | jq -r '.[0].RepoTags[0] // empty' 2>/dev/null || true)
		[[ -n $tag ]] && SANDBOX_IMAGE=$tag
		break
	done
fi

# free_port VAR: sets VAR to a port nothing listens on, from 20000-29999,
# not yet given to this cluster.
taken=" "
free_port() {
	local p
	for _ in $(seq 200); do
		p=$((20000 + RANDOM % 10000))
		[[ $taken == *" $p "* || -n $(ss -Hltn "sport = :$p") ]] && continue
		taken+="$p "
		printf -v "$1" %s "$p"
		return
	done
	fail "no free port"
}
etcd_port='' etcd_peer_port='' cm_port='' sched_port='' kubelet_port='' kubelet_healthz_port=''
free_port etcd_port
free_port etcd_peer_port
[[ -n ${APISERVER_PORT:-} ]] || free_port APISERVER_PORT
free_port cm_port
free_port sched_port
free_port kubelet_port
free_port kubelet_healthz_port

mkdir -p "$pki" "$etc" "$logs" "$run" "$dir/etcd" "$ctrd_dir" "$dir/pod-logs" "$dir/flexvolume" "$dir/kubelet-pki"
cat >"$cluster_env" <<EOF
# Written by up.sh; read by down.sh and smoke.sh.
K8S_BIN=$K8S_BIN
NODE_NAME=$NODE_NAME
KUBELET_ROOT=$KUBELET_ROOT
CNI_CONF_DIR=$CNI_CONF_DIR
CNI_BIN_DIR=$CNI_BIN_DIR
SANDBOX_IMAGE=$SANDBOX_IMAGE
CONTAINERD_SOCKET=$ctrd_sock
KUBECONFIG=$kubeconfig
KUBERNETES_SERVICE_HOST=127.0.0.1
KUBERNETES_SERVICE_PORT=$APISERVER_PORT
ETCD_PORT=$etcd_port
KUBELET_PORT=$kubelet_port
EOF

# missing PATH: "created TOP" when PATH is missing, TOP being its topmost
# missing ancestor (what mkdir -p creates, and down.sh removes).
missing() {
	local p=$1 top=
	while [[ ! -e $p ]]; do
		top=$p
		p=$(dirname "$p")
	done
	[[ -z $top ]] || echo "created $top"
}
# What the cluster changes outside DIR, found before it does.
{
	for s in "${kubelet_sysctls[@]}"; do
		echo "sysctl $s=$(sysctl -n "$s")"
	done
	missing "$KUBELET_ROOT"
	# The device manager's socket folder is /var/lib/kubelet/device-plugins
	# whatever the root dir.
	[[ $KUBELET_ROOT == /var/lib/kubelet ]] || missing /var/lib/kubelet
	missing /var/log/containers
	[[ -e /sys/fs/cgroup/memory/kubepods ]] || echo "created cgroup kubepods"
	# containerd 1.6 puts its shims' sockets in /run/containerd/s, whatever
	# its state dir; another containerd may share the folder.
	[[ -e /run/containerd/s ]] || echo "shared-dir /run/containerd/s"
	[[ -e /run/containerd ]] || echo "shared-dir /run/containerd"
	# libcni's cache of the pods' network results (containerd 1.6 cannot
	# move it); cni-eni's tests may use it too.
	[[ -e /var/lib/cni/results ]] || echo "shared-dir /var/lib/cni/results"
	[[ -e /var/lib/cni ]] || echo "shared-dir /var/lib/cni"
	for d in "$CNI_CONF_DIR" "$CNI_BIN_DIR"; do
		[[ $d == "$dir"/* ]] || missing "$d"
	done
} >"$host_orig"

# --- PKI and kubeconfigs -----------------------------------------------

log "certificates"
"$here/pki.sh" "$pki" "$NODE_NAME"
# write_kubeconfig FILE CERT: credentials of the certificate pki/CERT.
write_kubeconfig() {
	cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: nodeinfra-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$pki/$2.crt")
    client-key-data: $(base64 -w0 "$pki/$2.key")
contexts:
- name: $2@nodeinfra-e2e
  context:
    cluster: nodeinfra-e2e
    user: $2
current-context: $2@nodeinfra-e2e
EOF
	chmod 0600 "$1"
}
write_kubeconfig "$kubeconfig" admin
write_kubeconfig "$etc/controller-manager.conf" controller-manager
write_kubeconfig "$etc/scheduler.conf" scheduler
write_kubeconfig "$etc/kubelet.conf" kubelet-client

# launch NAME COMMAND...: starts a daemon in a session of its own (it
# outlives this script), its output in logs/NAME.log.
launch() {
	local name=$1
	shift
	setsid "$@" </dev/null >"$logs/$name.log" 2>&1 &
	echo $! >"$run/$name.pid"
}
# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds; fails
# with NAME's log when NAME dies or the time is up.
wait_for() {
	local name=$1 secs=$2 deadline=$((SECONDS + $2))
	shift 2
	until "$@" >/dev/null 2>&1; do
		pid_of "$name" >/dev/null || fail "$name exited" "$name"
		((SECONDS < deadline)) || fail "$name: not ready after $secs s" "$name"
		sleep 0.2
	done
}

# --- Control plane -----------------------------------------------------

log "etcd on 127.0.0.1:$etcd_port"
launch etcd etcd --name default --data-dir "$dir/etcd" \
	--listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
	--listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
	--initial-cluster "default=http://127.0.0.1:$etcd_peer_port" --listen-metrics-urls "" \
	--quota-backend-bytes $((2 << 30)) --snapshot-count 10000 --logger zap --log-outputs stderr
wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

log "kube-apiserver on 127.0.0.1:$APISERVER_PORT"
# --endpoint-reconciler-type=none: the kubernetes Service's endpoint would
# be the advertised address, and validation refuses a loopback one (every
# few seconds, in the log); without kube-proxy it would lead nowhere.
launch kube-apiserver "$K8S_BIN/kube-apiserver" \
	--bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" --advertise-address=127.0.0.1 \
	--endpoint-reconciler-type=none \
	--etcd-servers="http://127.0.0.1:$etcd_port" \
	--tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
	--client-ca-file="$pki/ca.crt" \
	--kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
	--kubelet-client-key="$pki/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$pki/ca.crt" \
	--kubelet-preferred-address-types=Hostname,InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.cluster.local \
	--service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
	--service-cluster-ip-range=10.96.0.0/16 \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
	--allow-privileged=true \
	--requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
	--requestheader-allowed-names=front-proxy-client \
	--requestheader-username-headers=X-Remote-User \
	--requestheader-group-headers=X-Remote-Group \
	--requestheader-extra-headers-prefix=X-Remote-Extra- \
	--proxy-client-cert-file="$pki/front-proxy-client.crt" \
	--proxy-client-key-file="$pki/front-proxy-client.key"
wait_for kube-apiserver 60 kubectl get --raw /readyz

log "kube-controller-manager, kube-scheduler"
# --flex-volume-plugin-dir: else it creates /usr/libexec/kubernetes.
launch kube-controller-manager "$K8S_BIN/kube-controller-manager" \
	--kubeconfig="$etc/controller-manager.conf" \
	--authentication-kubeconfig="$etc/controller-manager.conf" \
	--authorization-kubeconfig="$etc/controller-manager.conf" \
	--bind-address=127.0.0.1 --secure-port="$cm_port" --leader-elect=false \
	--cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
	--root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/sa.key" \
	--use-service-account-credentials=true \
	--service-cluster-ip-range=10.96.0.0/16 \
	--flex-volume-plugin-dir="$dir/flexvolume"
launch kube-scheduler "$K8S_BIN/kube-scheduler" \
	--kubeconfig="$etc/scheduler.conf" \
	--authentication-kubeconfig="$etc/scheduler.conf" \
	--authorization-kubeconfig="$etc/scheduler.conf" \
	--bind-address=127.0.0.1 --secure-port="$sched_port" --leader-elect=false

# --- Container runtime -------------------------------------------------

log "containerd at $ctrd_sock (CNI: $CNI_CONF_DIR, $CNI_BIN_DIR)"
mkdir -p "$CNI_CONF_DIR" "$CNI_BIN_DIR"
# containerd adds a loopback network to every pod, with this plugin.
[[ -e $CNI_BIN_DIR/loopback ]] || {
	cp /usr/lib/cni/loopback "$CNI_BIN_DIR/loopback"
	[[ $CNI_BIN_DIR == "$dir"/* ]] || echo "created $CNI_BIN_DIR/loopback" >>"$host_orig"
}
# Until a network plugin installs its conflist (cni-eni's 10-cni-eni
# sorts first and wins), containerd would report its network not ready
# and the node would stay NotReady. This one lets hostNetwork pods run;
# any other pod fails to start ("failed to find network info"), as it
# should without a pod network.
placeholder=$CNI_CONF_DIR/99-nodeinfra-e2e-no-pod-network.conflist
if ! ls "$CNI_CONF_DIR"/*.conf "$CNI_CONF_DIR"/*.conflist "$CNI_CONF_DIR"/*.json >/dev/null 2>&1; then
	cat >"$placeholder" <<'EOF'
{
  "cniVersion": "1.0.0",
  "name": "no-pod-network",
  "plugins": [{"type": "loopback"}]
}
EOF
	[[ $CNI_CONF_DIR == "$dir"/* ]] || echo "created $placeholder" >>"$host_orig"
fi
cat >"$etc/containerd.toml" <<EOF
# Written by up.sh. Everything under $ctrd_dir.
version = 2
root = "$ctrd_dir/root"
state = "$ctrd_dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = "$ctrd_sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$ctrd_dir/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # This VM lacks CAP_SYS_RESOURCE: without it runc fails with "can't get
  # final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = $NETNS_UNDER_STATE
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "$runc_root"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$CNI_BIN_DIR"
    conf_dir = "$CNI_CONF_DIR"
    max_conf_num = 1
EOF
# No registry is reachable, and a pull must not send anything off this
# machine (a DNS query for the registry included): every registry
# connection goes to a proxy that is not there and fails at once.
launch containerd env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 NO_PROXY= \
	containerd --config "$etc/containerd.toml"
wait_for containerd 30 ctr -a "$ctrd_sock" version

imported=0
for f in "$IMAGES_DIR"/*.tar; do
	[[ -f $f ]] || continue
	ctr -a "$ctrd_sock" -n k8s.io images import "$f" >>"$logs/images.log" 2>&1 || fail "import $f" images
	imported=$((imported + 1))
done
log "imported $imported image archives from $IMAGES_DIR"
# ctr names an image without a registry docker.io/library/NAME.
sandbox_ref=$SANDBOX_IMAGE
[[ ${sandbox_ref%%/*} == *[.:]* || ${sandbox_ref%%/*} == localhost ]] || {
	[[ $sandbox_ref == */* ]] || sandbox_ref=library/$sandbox_ref
	sandbox_ref=docker.io/$sandbox_ref
}
ctr -a "$ctrd_sock" -n k8s.io images ls -q | grep -qxF "$sandbox_ref" ||
	fail "sandbox image $SANDBOX_IMAGE is not in $IMAGES_DIR/*.tar and cannot be pulled: no pod can start (set IMAGES_DIR or SANDBOX_IMAGE)"

# --- Kubelet -----------------------------------------------------------

log "kubelet $NODE_NAME (root dir $KUBELET_ROOT)"
mkdir -p "$KUBELET_ROOT"
echo "$dir" >"$marker"
# imageGCHighThresholdPercent 100, low eviction thresholds: the kubelet
# must never delete an imported image, which could not be pulled again.
# makeIPTablesUtilChains false: no iptables chains on this machine.
cat >"$etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $pki/kubelet-serving.crt
tlsPrivateKeyFile: $pki/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$ctrd_sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
podLogsDir: $dir/pod-logs
volumePluginDir: $dir/flexvolume
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
makeIPTablesUtilChains: false
rotateCertificates: false
serverTLSBootstrap: false
resolvConf: /etc/resolv.conf
EOF
node_ip=()
[[ -n ${NODE_IP:-} ]] && node_ip=(--node-ip="$NODE_IP")
launch kubelet "$K8S_BIN/kubelet" --config="$etc/kubelet.yaml" --kubeconfig="$etc/kubelet.conf" \
	--root-dir="$KUBELET_ROOT" --cert-dir="$dir/kubelet-pki" --hostname-override="$NODE_NAME" "${node_ip[@]}"

node_ready() {
	[[ $(kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}
wait_for kubelet 120 node_ready
# Pods cannot be created before the controller manager made the
# namespace's default service account.
wait_for kube-controller-manager 60 kubectl -n default get serviceaccount default
log "node $NODE_NAME is Ready"

cat <<EOF

Kubernetes $("$K8S_BIN/kubelet" --version | cut -d' ' -f2) is up ($((SECONDS - start)) s): node $NODE_NAME.
  export KUBECONFIG=$kubeconfig PATH=$K8S_BIN:\$PATH
  kubectl get nodes
In-cluster clients (hostNetwork pods) must set
  KUBERNETES_SERVICE_HOST=127.0.0.1 KUBERNETES_SERVICE_PORT=$APISERVER_PORT
containerd: $ctrd_sock (ctr -a $ctrd_sock -n k8s.io ...)
CNI conf dir: $CNI_CONF_DIR  CNI bin dir: $CNI_BIN_DIR
kubelet root dir: $KUBELET_ROOT  logs: $logs
Stop it with: $here/down.sh $dir
EOF
