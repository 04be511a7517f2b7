#!/usr/bin/env bash
# Builds the Kubernetes binaries of the single-node test cluster
# (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kubectl) from the release's Go module, pinned by tools/go.mod and
# tools/go.sum, and caches them outside the repository, one folder per
# release: only the first build on a machine pays its 1050 CPU seconds
# (10 minutes on 2 idle cores, 18 when they are shared).
#
#   build.sh [CACHE_DIR]   prints the folder holding the five binaries
#
# Built like the release (hack/lib/golang.sh): -trimpath, -s -w, tags
# selinux,notest,grpcnotrace, and the version variables the release sets
# with -X, without which every binary (and the node) reports
# v0.0.0-master. All five are static (CGO_ENABLED=0): one build
# configuration shares every compiled package between them; upstream
# links the kubelet against libc, which matters only with NSS modules
# other than files and dns.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools=$here/tools
cache=${1:-/var/cache/nodeinfra/k8s}
cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

# The main module's Makefile exports GOFLAGS=-tags=pacific (go-ceph); the
# tags of this build are set below, and GOFLAGS would add to them.
export GOFLAGS='' GOWORK=off CGO_ENABLED=0

ver=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$tools/go.mod")
[[ -n $ver ]] || { echo "build.sh: no k8s.io/kubernetes version in $tools/go.mod" >&2; exit 1; }
out=$cache/$ver
# The stamp is written last: a folder without it is an interrupted build.
if [[ -f $out/.built ]]; then
	echo "$out"
	exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/build-XXXXXX")
trap 'rm -rf "$work"' EXIT

# The release's publication time stands in for the build date, so that
# two builds of the same release give the same binaries.
date=$(cd "$tools" && go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)
[[ -n $date ]] || date=1970-01-01T00:00:00Z
major=${ver#v}
major=${major%%.*}
minor=${ver#v*.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	ldflags+=" -X $pkg.gitVersion=$ver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
	ldflags+=" -X $pkg.gitCommit= -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
done

echo "build.sh: building Kubernetes $ver (${cmds[*]}) into $out" >&2
start=$SECONDS
(
	cd "$tools"
	go build -mod=readonly -trimpath -tags selinux,notest,grpcnotrace \
		-ldflags "$ldflags" -o "$work/" "${cmds[@]/#/k8s.io/kubernetes/cmd/}"
) >"$work/build.log" 2>&1 || { tail -40 "$work/build.log" >&2; exit 1; }
for c in "${cmds[@]}"; do
	[[ -x $work/$c ]] || { echo "build.sh: $c was not built" >&2; exit 1; }
done
"$work/kubelet" --version | grep -qx "Kubernetes $ver" ||
	{ echo "build.sh: kubelet reports $("$work/kubelet" --version), want $ver" >&2; exit 1; }

mkdir -p "$out"
for c in "${cmds[@]}"; do
	mv -f "$work/$c" "$out/$c"
done
{
	echo "version $ver"
	go version
	echo "go.sum $(sha256sum <"$tools/go.sum" | cut -c1-16)"
	echo "seconds $((SECONDS - start))"
} >"$out/.built"
echo "build.sh: built in $((SECONDS - start)) s" >&2
echo "$out"
