#!/usr/bin/env bash
# smoke.sh DIR: checks the cluster up.sh started in DIR end to end: a pod
# on the host network (the only network there is without a CNI plugin),
# running the sandbox image (the one image sure to be there: nothing can
# be pulled), must be placed by the scheduler and be Running; the API
# server must reach the kubelet for its logs; the pod must go on delete.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[[ $# -eq 1 ]] || { echo "usage: smoke.sh DIR" >&2; exit 2; }
dir=$(cd "$1" && pwd)
# shellcheck source=layout.sh
. "$here/layout.sh"
[[ -f $cluster_env ]] || { echo "smoke.sh: no cluster in $dir (up.sh $dir)" >&2; exit 1; }
# shellcheck disable=SC1090
. "$cluster_env"
kubectl() { "$K8S_BIN/kubectl" --kubeconfig "$kubeconfig" "$@"; }
start=$SECONDS
pod=smoke-$(date +%s%N | tail -c 7)
trap 'kubectl delete pod "$pod" --ignore-not-found --wait=false >/dev/null 2>&1 || true' EXIT

kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  namespace: default
spec:
  hostNetwork: true
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: pause
      image: $SANDBOX_IMAGE
      imagePullPolicy: Never
EOF
if ! kubectl wait --for=jsonpath='{.status.phase}'=Running "pod/$pod" --timeout=60s >/dev/null; then
	kubectl describe pod "$pod" >&2 || true
	echo "smoke.sh: pod $pod is not Running" >&2
	exit 1
fi
running=$((SECONDS - start))
# The API server's way to the kubelet (Hostname address, TLS both ways).
kubectl logs "$pod" >/dev/null || { echo "smoke.sh: no logs of $pod: the API server cannot reach the kubelet" >&2; exit 1; }
kubectl delete pod "$pod" --wait=true --timeout=60s >/dev/null
trap - EXIT
echo "smoke.sh: ok: pod Running after $running s, deleted after $((SECONDS - start)) s"
