#!/usr/bin/env bash
# Builds the kubectl the bridge's end-to-end tests drive (tests/bridge_e2e:
# `kubectl get`, `apply`, `logs` against the harness's apiserver): upstream
# k8s.io/kubectl, run by main.go here, at the version of the control plane
# (../go.mod pins k8s.io/kubernetes v1.35.4; go.mod here pins k8s.io/kubectl
# v0.35.4, the same release), so `kubectl version` prints v1.35.4.
#
# Its own module, apart from ../build.sh's, so that nothing here changes the
# control plane's input hash (a cold control-plane build is ~25 min). The
# binary goes to a cache keyed by the hash of this module's inputs:
# $KEDGE_K8S_BIN_ROOT/kubectl-<hash>/kubectl (default root /var/tmp/kedge-k8s-bin;
# Go's caches GOCACHE and GOMODCACHE shared with ../build.sh:
# scripts/cache-env.sh). About 3 min on 2 cores with a warm GOCACHE, about
# 6 min cold; milliseconds when cached. Prints the binary's directory on
# stdout and nothing else there (callers capture it); go's output and the
# progress lines go to stderr.
set -euo pipefail
exec 3>&1 1>&2 # fd 3: the one line of output; stdout is stderr from here on
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" >/dev/null && pwd)"
# GOCACHE, GOMODCACHE and KEDGE_K8S_BIN_ROOT (scripts/cache-env.sh).
source "$here/../../../scripts/cache-env.sh"
# Go from PATH, else from its default install (scripts/test.sh adds it too).
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
hash="$(cd "$here" && cat go.mod go.sum build.sh main.go | sha256sum | cut -c1-16)"
root="$KEDGE_K8S_BIN_ROOT"
out="$root/kubectl-$hash"
if [[ -x "$out/kubectl" ]]; then
	echo "kubectl: cached in $out" >&2
	echo "$out" >&3
	exit 0
fi
# k8s.io/kubectl v0.X.Y is the library of Kubernetes v1.X.Y.
lib_version="$(awk '$1 == "k8s.io/kubectl" {print $2; exit}' "$here/go.mod")"
if [[ ! $lib_version =~ ^v0\.([0-9]+)\.([0-9]+)$ ]]; then
	echo "kubectl: no k8s.io/kubectl v0.X.Y in $here/go.mod (found '${lib_version}')" >&2
	exit 1
fi
minor="${BASH_REMATCH[1]}"
k8s_version="v1.$minor.${BASH_REMATCH[2]}"
ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$k8s_version \
 -X k8s.io/component-base/version.gitMajor=1 \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
 -X k8s.io/client-go/pkg/version.gitMajor=1 \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor \
 -X k8s.io/client-go/pkg/version.gitTreeState=clean"
tmp="$root/.tmp-kubectl-$hash-$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$here"
go build -trimpath -ldflags "$ldflags" -o "$tmp/kubectl" .
mkdir -p "$root"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "kubectl: built $k8s_version in $(( $(date +%s) - start ))s into $out" >&2
echo "$out" >&3
