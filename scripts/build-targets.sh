#!/usr/bin/env bash
# Builds the static device binaries, without Docker (rustup targets plus
# Debian cross toolchains): for every target in targets/ whose status is
# "built" (or the targets named as arguments), each of its feature_sets,
# one cargo invocation per feature set for every target that builds it.
# Each binary is copied to $CARGO_TARGET_DIR/device/TARGET/SET/kedge and its
# size printed next to the brief's budget (budget_SET_bytes) and the
# ceiling (ceiling_SET_bytes: today's size plus a little, lowered as the
# binary shrinks, raised only on purpose). Over the budget or over the
# ceiling fails the script with the figure (KEDGE_ENFORCE_BUDGET=0: report
# only).
#
#   scripts/build-targets.sh [TARGET…]       KEDGE_FEATURE_SETS="full" overrides the sets
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cache-env.sh # CARGO_TARGET_DIR
field() { sed -n "s/^$2 *= *\"\{0,1\}\([^\"#]*\)\"\{0,1\}.*/\1/p" "$1" | head -1 | sed 's/ *$//'; }

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in targets/*.toml; do
    [ "$(field "$f" status)" = built ] && targets+=("$(field "$f" rust_target)")
  done
fi

# Each target's packages and rustup target, then which targets build each
# feature set.
declare -A set_targets=()
sets=()
for t in "${targets[@]}"; do
  f="targets/$t.toml"
  [ -f "$f" ] || { echo "no target definition $f" >&2; exit 1; }
  # shellcheck disable=SC2046 # the field is a list of package names
  scripts/apt-install.sh $(field "$f" debian_packages) file
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
  for set in ${KEDGE_FEATURE_SETS:-$(field "$f" feature_sets)}; do
    [ -n "${set_targets[$set]:-}" ] || sets+=("$set")
    set_targets[$set]="${set_targets[$set]:-} $t"
  done
done

# The dependencies' source paths in the binary (panic locations: ~760 of
# them) start with the registry's directory, which would make the size
# depend on where CARGO_HOME is (a cold CI run's was 25 characters longer:
# +13 kB in `minimal`). Remapped to a fixed prefix for every target, on top
# of .cargo/config.toml's rustflags (cargo joins the arrays).
registry_src="${CARGO_HOME:-$HOME/.cargo}/registry/src/"

# One cargo invocation per feature set, for all its targets at once: cargo
# compiles the targets' crates side by side (the last crate, kedge with LTO
# and one codegen unit, is one core's work per target).
rows=()
over=()
for set in "${sets[@]}"; do
  read -ra set_ts <<<"${set_targets[$set]}"
  echo "== building ${set_ts[*]} ($set)"
  start=$SECONDS
  target_args=()
  for t in "${set_ts[@]}"; do
    target_args+=(--target "$t" --config "target.$t.rustflags=[\"--remap-path-prefix=$registry_src=crates/\"]")
  done
  # A set's own profile where Cargo.toml has one (`device-minimal`: the
  # crypto back at opt-level "z"), otherwise release.
  profile=release
  grep -q "^\[profile\.device-$set\]" Cargo.toml && profile="device-$set"
  cargo build --profile "$profile" --locked "${target_args[@]}" --bin kedge --no-default-features --features "$set"
  took=$((SECONDS - start))
  for t in "${set_ts[@]}"; do
    f="targets/$t.toml"
    out="$CARGO_TARGET_DIR/device/$t/$set"
    mkdir -p "$out"
    cp "$CARGO_TARGET_DIR/$t/$profile/kedge" "$out/kedge"
    file "$out/kedge"
    file "$out/kedge" | grep -Eq 'statically linked|static-pie linked' || { echo "$out/kedge is not static" >&2; exit 1; }
    size=$(stat -c %s "$out/kedge")
    budget=$(field "$f" "budget_${set}_bytes")
    ceiling=$(field "$f" "ceiling_${set}_bytes")
    if [ -z "$budget" ]; then
      verdict="no budget for this set"
    else
      verdict="within budget ($((budget - size)) bytes left)"
    fi
    if [ -n "$budget" ] && [ "$size" -gt "$budget" ]; then
      verdict="OVER BUDGET by $((size - budget)) bytes"
      over+=("$t $set: $size bytes, budget $budget")
    fi
    if [ -n "$ceiling" ] && [ "$size" -gt "$ceiling" ]; then
      verdict="$verdict; OVER the enforced ceiling $ceiling by $((size - ceiling)) bytes"
      over+=("$t $set: $size bytes, enforced ceiling $ceiling")
    fi
    rows+=("| $t | $set | $size | $(awk -v s="$size" 'BEGIN {printf "%.2f", s / 1e6}') MB | ${budget:-none} | ${ceiling:-none} | $verdict | $took s |")
  done
done
echo
echo "| target | features | bytes | size | budget | ceiling | verdict | build (one per feature set) |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [ ${#over[@]} -gt 0 ]; then
  printf 'size gate failed: %s\n' "${over[@]}" >&2
  [ "${KEDGE_ENFORCE_BUDGET:-1}" = 0 ] || exit 1
fi
