#!/usr/bin/env bash
# Builds the metrics-server the bridge's end-to-end tests run beside the
# harness's control plane (`kubectl top node|pod` against kedge Nodes):
# upstream sigs.k8s.io/metrics-server, at the version go.mod pins (a `tool`
# of this module; nothing of ours is compiled in).
#
# Its own module, apart from ../build.sh's and ../kubectl's, so that nothing
# here changes their input hashes. The binary goes to a cache keyed by the
# hash of this module's inputs: $KEDGE_K8S_BIN_ROOT/metrics-server-<hash>/
# (default root /var/tmp/kedge-k8s-bin; Go's caches GOCACHE and GOMODCACHE
# shared with the other harness builds: scripts/cache-env.sh). Milliseconds
# when cached. Prints the binary's directory on stdout and nothing else
# there (callers capture it); go's output and the progress lines go to
# stderr.
set -euo pipefail
exec 3>&1 1>&2 # fd 3: the one line of output; stdout is stderr from here on
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" >/dev/null && pwd)"
# GOCACHE, GOMODCACHE and KEDGE_K8S_BIN_ROOT (scripts/cache-env.sh).
source "$here/../../../scripts/cache-env.sh"
# Go from PATH, else from its default install (scripts/test.sh adds it too).
command -v go >/dev/null || PATH="$PATH:/usr/local/go/bin"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0
hash="$(cd "$here" && cat go.mod go.sum build.sh | sha256sum | cut -c1-16)"
root="$KEDGE_K8S_BIN_ROOT"
out="$root/metrics-server-$hash"
if [[ -x "$out/metrics-server" ]]; then
	echo "metrics-server: cached in $out" >&2
	echo "$out" >&3
	exit 0
fi
version="$(awk '$1 == "sigs.k8s.io/metrics-server" {print $2; exit}' "$here/go.mod")"
tmp="$root/.tmp-metrics-server-$hash-$$"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd "$here"
go build -trimpath -ldflags "-s -w" -o "$tmp/metrics-server" sigs.k8s.io/metrics-server/cmd/metrics-server
mkdir -p "$root"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "metrics-server: built $version in $(( $(date +%s) - start ))s into $out" >&2
echo "$out" >&3
