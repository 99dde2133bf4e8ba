#!/usr/bin/env bash
# The cold path of CI, as a fresh machine sees it: clones this repository's
# `main` (or REF) into a fresh temporary directory and runs `bash .ci/run`
# there, as CI does (CI=true, no standard input), with every cache the suite
# uses pointed at new empty directories: KEDGE_CACHE_ROOT (so the cargo
# target dirs, the Wasm guests' target dir, Go's build and module caches,
# the control-plane binaries, the HIL and ssh-board caches and the CRI image
# cache: scripts/cache-env.sh) and CARGO_HOME (cargo's registry and
# downloaded crates; rustup's proxies keep working, the toolchains live in
# RUSTUP_HOME). Prints the total wall time and keeps the log.
#
#   scripts/ci-cold.sh [--ref REF] [--keep-go] [--keep] [--log FILE] [--plan]
#
# --ref REF   what to test (default: main), a commit of this repository
#             (committed work only; the run needs a REF with
#             scripts/cache-env.sh, else its .ci/run would use warm caches)
# --keep-go   reuse this machine's Go caches, control-plane binaries and kubectl
#             (a cold Go build of the control plane is ~25 min here), to
#             measure a cold run of everything else
# --keep      keep the temporary directory (clone and caches) afterwards
# --log FILE  where the log goes (default /var/tmp/kedge-ci-cold-DATE.log)
# --plan      clone, print the plan, clean up; run nothing
#
# KEDGE_COLD_TMP (default /var/tmp) is where the temporary directory is made:
# a cold run fills ~20 GB there. Not made cold (they are the machine's, not
# the suite's): Debian packages and rustup targets already installed.
set -euo pipefail
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p}' "$0"; exit "${1:-0}"; }
ref=main keep_go=0 keep=0 plan=0 log=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ref) [ $# -ge 2 ] || { echo "ci-cold: --ref needs a value" >&2; exit 64; }; ref=$2; shift 2 ;;
    --keep-go) keep_go=1; shift ;;
    --keep) keep=1; shift ;;
    --log) [ $# -ge 2 ] || { echo "ci-cold: --log needs a value" >&2; exit 64; }; log=$2; shift 2 ;;
    --plan) plan=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "ci-cold: unknown argument $1" >&2; usage 64 >&2 ;;
  esac
done
src=$(cd "$(dirname "$0")/.." >/dev/null && pwd)
sha=$(git -C "$src" rev-parse --verify --quiet "$ref^{commit}") ||
  { echo "ci-cold: $ref is not a commit of $src" >&2; exit 64; }
git -C "$src" cat-file -e "$sha:scripts/cache-env.sh" 2>/dev/null ||
  { echo "ci-cold: $ref ($sha) has no scripts/cache-env.sh: its .ci/run would use the warm caches" >&2; exit 64; }
[ -n "$log" ] || log="/var/tmp/kedge-ci-cold-$(date -u +%Y%m%dT%H%M%SZ).log"

# The caches this machine has now (for --keep-go), by the suite's own rule.
IFS='|' read -r warm_gocache warm_gomod warm_k8s < <(
  bash -c 'source "$1/scripts/cache-env.sh"; echo "$GOCACHE|$GOMODCACHE|$KEDGE_K8S_BIN_ROOT"' _ "$src")

tmp=$(mktemp -d "${KEDGE_COLD_TMP:-/var/tmp}/kedge-ci-cold.XXXXXX")
cleanup() {
  if [ "$keep" = 1 ]; then
    echo "ci-cold: kept $tmp" >&2
  else
    chmod -R u+w "$tmp" 2>/dev/null || true # Go's module cache is read-only
    rm -rf "$tmp" || echo "ci-cold: could not delete all of $tmp" >&2
  fi
}
trap cleanup EXIT
start=""
trap 'echo "ci-cold: interrupted${start:+ after $((SECONDS - start)) s; log in $log}" >&2; exit 130' INT TERM

git clone --quiet --no-checkout "$src" "$tmp/src"
git -C "$tmp/src" checkout --quiet --detach "$sha"
cache="$tmp/cache"
mkdir -p "$cache" "$tmp/cargo-home"
vars=(
  CI=true
  KEDGE_CACHE_ROOT="$cache"
  CARGO_HOME="$tmp/cargo-home"
  RUSTUP_HOME="$(rustup show home 2>/dev/null || echo "${RUSTUP_HOME:-$HOME/.rustup}")"
  # Each one explicitly too, so a value in this environment cannot leak in.
  KEDGE_GUESTS_TARGET_DIR="$cache/kedge-guests-target"
  KEDGE_HIL_CACHE="$cache/kedge-hil-cache"
  KEDGE_HIL_BOARD_CACHE="$cache/kedge-hil-cache/ssh-board"
  KEDGE_CRI_IMAGE_CACHE="$cache"
)
if [ "$keep_go" = 1 ]; then
  vars+=(GOCACHE="$warm_gocache" GOMODCACHE="$warm_gomod" KEDGE_K8S_BIN_ROOT="$warm_k8s")
else
  vars+=(GOCACHE="$cache/kedge-go-cache" GOMODCACHE="$cache/kedge-go-mod" KEDGE_K8S_BIN_ROOT="$cache/kedge-k8s-bin")
fi

echo "ci-cold: plan"
echo "  ref          $ref = $(git -C "$src" log -1 --format='%h %s' "$sha")"
echo "  clone        $tmp/src"
echo "  run          bash .ci/run (cargo target: $cache/kedge-ci-target), no stdin"
echo "  log          $log"
echo "  Go           $([ "$keep_go" = 1 ] && echo "warm (--keep-go): $warm_gocache, $warm_gomod, $warm_k8s" || echo cold)"
echo "  afterwards   $([ "$keep" = 1 ] && echo "keep $tmp" || echo "delete $tmp")"
echo "  environment  (besides this one's)"
printf '    %s\n' "${vars[@]}"
echo "  disk free    $(df -h --output=avail "$tmp" | tail -1 | tr -d ' ') in $(dirname "$tmp")"
[ "$plan" = 0 ] || { echo "ci-cold: --plan: nothing run"; exit 0; }

start=$SECONDS
echo "ci-cold: started $(date -u '+%F %T') UTC" | tee "$log"
set +e
(cd "$tmp/src" && env "${vars[@]}" bash .ci/run) </dev/null 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
set -e
took=$((SECONDS - start))
printf 'ci-cold: .ci/run exited %s after %d min %02d s (%s; Go %s)\n' "$rc" $((took / 60)) $((took % 60)) \
  "$(git -C "$src" log -1 --format=%h "$sha")" "$([ "$keep_go" = 1 ] && echo warm || echo cold)" | tee -a "$log"
echo "ci-cold: log kept in $log"
exit "$rc"
