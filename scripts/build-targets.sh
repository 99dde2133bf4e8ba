#!/usr/bin/env bash
# Builds the static device binaries of every target in targets/ whose
# status is "built" (or the targets named as arguments), without Docker:
# rustup targets plus Debian cross toolchains. Prints each binary's size
# next to its budget; with KEDGE_ENFORCE_BUDGET=1 a binary over budget fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kedge-target}"
field() { sed -n "s/^$2 *= *\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" "$1" | head -1 | sed 's/ *$//'; }

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in targets/*.toml; do
    [ "$(field "$f" status)" = built ] && targets+=("$(field "$f" rust_target)")
  done
fi

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
rows=()
over=0
for t in "${targets[@]}"; do
  f="targets/$t.toml"
  [ -f "$f" ] || { echo "no target definition $f" >&2; exit 1; }
  missing=()
  for p in $(field "$f" debian_packages); do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  features=$(field "$f" features)
  args=(--release --locked --target "$t" --bin kedge)
  if [ "$features" != default ]; then args+=(--no-default-features --features "$features"); fi
  echo "== building $t ($features)"
  cargo build "${args[@]}"
  bin="$CARGO_TARGET_DIR/$t/release/kedge"
  file "$bin"
  size=$(stat -c %s "$bin")
  budget=$(field "$f" budget_bytes)
  verdict="within budget"
  if [ "$size" -gt "$budget" ]; then verdict="OVER budget by $((size - budget)) bytes"; over=1; fi
  rows+=("| $t | $features | $size | $budget | $verdict |")
done
echo
echo "| target | features | bytes | budget | verdict |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ "$over" -ne 0 ] && [ "${KEDGE_ENFORCE_BUDGET:-0}" = 1 ]; then exit 1; fi
