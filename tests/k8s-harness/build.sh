#!/usr/bin/env bash
# Builds the upstream control plane the bridge tests run against:
# kube-apiserver, kube-controller-manager, kube-scheduler (k8s.io/kubernetes,
# version pinned in go.mod) and a single-member etcd (go.etcd.io/etcd/server/v3
# embedded in etcd/main.go).
#
# The binaries go to a cache outside the clone keyed by the hash of the inputs
# ($KEDGE_K8S_BIN_ROOT/<hash>, default /var/tmp/kedge-k8s-bin; Go's caches in
# GOCACHE and GOMODCACHE: scripts/cache-env.sh),
# so a CI run rebuilds only when go.mod, go.sum or the sources change. Prints
# the binary directory on stdout, and nothing else there (callers capture
# it): go's own output and the progress lines go to stderr.
set -euo pipefail
exec 3>&1 1>&2 # fd 3: the one line of output; stdout is stderr from here on
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" >/dev/null && pwd)"
# GOCACHE, GOMODCACHE and KEDGE_K8S_BIN_ROOT (scripts/cache-env.sh).
source "$here/../../scripts/cache-env.sh"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
hash="$(cd "$here" && cat go.mod go.sum build.sh etcd/main.go tools.go | sha256sum | cut -c1-16)"
root="$KEDGE_K8S_BIN_ROOT"
out="$root/$hash"
bins=(kube-apiserver kube-controller-manager kube-scheduler etcd)
complete=1
for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || complete=0; done
if [[ $complete == 1 ]]; then
	echo "k8s harness: cached in $out" >&2
	echo "$out" >&3
	exit 0
fi
k8s_version="$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")"
if [[ -z "$k8s_version" ]]; then
	k8s_version="$(awk '/^require k8s.io\/kubernetes/ {print $3; exit}' "$here/go.mod")"
fi
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean"
tmp="$root/.tmp-$hash-$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$here"
go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kube-scheduler
go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" ./etcd
mkdir -p "$root"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "k8s harness: built $k8s_version in $(( $(date +%s) - start ))s into $out" >&2
echo "$out" >&3
