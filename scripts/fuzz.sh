#!/usr/bin/env bash
# Coverage-guided fuzzing of what crosses kedge's trust boundaries
# (docs/fuzzing.md): cargo-fuzz (libFuzzer) targets in tests/fuzz, one
# target at a time, one process, at the lowest priority (KEDGE_FUZZ_NICE, the
# nice level: default 19).
#
#   scripts/fuzz.sh [TARGET] [--runs N | --time S] [--dev]
#
# --dev builds the targets without optimisation (AddressSanitizer and
# coverage still on): a fraction of the release build's compile time, fewer
# executions per second. scripts/test.sh's short run uses it; the long run
# does not.
# Without TARGET every target runs, one after the other. Without --runs or
# --time each runs the documented long run: 10,000,000 executions.
# scripts/test.sh runs `scripts/fuzz.sh --time 20` after the unit tests.
#
# Each target starts from its seeds (tests/fuzz/seeds/TARGET, the wire test
# vectors for wire_decode, edge-manifests/demo.yaml for manifest_convert) and
# every input that once crashed it (tests/fuzz/regressions/TARGET: a
# regression there fails the run at once), and grows a corpus kept between
# runs in $KEDGE_FUZZ_CORPUS/TARGET. A crash stops the run with the path of
# the input (tests/fuzz/artifacts/TARGET/) and the command that replays it.
# The last lines are a table: executions, seconds, executions per second,
# and libFuzzer's coverage (cov: edges, ft: features) per target.
#
# Needs the nightly toolchain and cargo-fuzz. Without them it prints one
# "== SKIPPED fuzzing: …" line and exits 0, except under CI (CI=true), where
# scripts/test.sh's setup stage installs both and their absence is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cache-env.sh

targets_all=(wire_decode manifest_convert cri_log_reader kubelet_request selector_parse spdy_frames)
targets=() limit=(-runs=10000000) limit_text="10000000 runs" profile=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) limit=(-runs="$2") limit_text="$2 runs"; shift 2 ;;
    --time) limit=(-max_total_time="$2") limit_text="$2 s"; shift 2 ;;
    --dev) profile=(--dev); shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (usage: scripts/fuzz.sh [TARGET] [--runs N | --time S] [--dev])" >&2; exit 64 ;;
    *)
      if [[ " ${targets_all[*]} " != *" $1 "* ]]; then
        echo "unknown target $1 (targets: ${targets_all[*]})" >&2
        exit 64
      fi
      targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${targets_all[@]}")

skip_or_fail() {
  if [ "${CI:-}" = true ]; then
    echo "fuzzing: $1 (CI requires it: scripts/test.sh's setup stage installs it)" >&2
    exit 1
  fi
  echo "== SKIPPED fuzzing: $1"
  exit 0
}
rustup run nightly rustc --version >/dev/null 2>&1 ||
  skip_or_fail "no nightly toolchain (rustup toolchain install nightly --profile minimal)"
cargo fuzz --version >/dev/null 2>&1 ||
  skip_or_fail "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"

fuzz_dir=tests/fuzz
niceness="${KEDGE_FUZZ_NICE:-19}"
fuzz_target_dir="$KEDGE_FUZZ_TARGET_DIR"
work=$(mktemp -d /tmp/kedge-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

# One build of every target (release, debug assertions, AddressSanitizer;
# --dev: unoptimised).
echo "== building the fuzz targets (nightly, $fuzz_target_dir)"
nice -n "$niceness" cargo +nightly fuzz build "${profile[@]}" --fuzz-dir "$fuzz_dir" --target-dir "$fuzz_target_dir"

# Seeds made from files the repository keeps for their own sake.
seeds_from_repo() { # TARGET DIR
  case "$1" in
    wire_decode)
      for f in tests/vectors/*.hex tests/vectors/v*/*.hex; do
        name=$(basename "$(dirname "$f")")-$(basename "$f" .hex)
        tr -d ' \n' <"$f" | xxd -r -p >"$2/$name"
      done ;;
    manifest_convert) cp edge-manifests/demo.yaml "$2/" ;;
  esac
}

rows=()
for t in "${targets[@]}"; do
  corpus="$KEDGE_FUZZ_CORPUS/$t"
  from_repo="$work/repo-seeds/$t"
  mkdir -p "$corpus" "$from_repo" "$fuzz_dir/artifacts/$t"
  seeds_from_repo "$t" "$from_repo"
  dirs=("$corpus" "$from_repo")
  for d in "$fuzz_dir/seeds/$t" "$fuzz_dir/regressions/$t"; do
    [ -d "$d" ] && dirs+=("$d")
  done
  dict=()
  [ -f "$fuzz_dir/dicts/$t.dict" ] && dict=(-dict="$fuzz_dir/dicts/$t.dict")
  echo "== fuzzing $t ($limit_text)"
  log="$work/$t.log"
  set +e
  nice -n "$niceness" cargo +nightly fuzz run "${profile[@]}" --fuzz-dir "$fuzz_dir" --target-dir "$fuzz_target_dir" \
    "$t" "${dirs[@]}" -- \
    "${limit[@]}" "${dict[@]}" -timeout=30 -print_final_stats=1 \
    -artifact_prefix="$fuzz_dir/artifacts/$t/" 2>&1 | tee "$log" | grep -av -e '^#[0-9]*[[:space:]]*\(NEW\|REDUCE\|pulse\)' -e '^"' -e '^######'
  rc=${PIPESTATUS[0]}
  set -e
  runs=$(awk '/^stat::number_of_executed_units:/ {print $2}' "$log")
  rate=$(awk '/^stat::average_exec_per_sec:/ {print $2}' "$log")
  secs=$(awk '/^Done [0-9]+ runs in/ {print $5}' "$log")
  cov=$(grep -ao 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  if [ "$rc" -ne 0 ]; then
    artifact=$(grep -ao 'Test unit written to [^ ]*' "$log" | tail -n 1 | awk '{print $5}')
    echo "fuzzing $t FAILED (exit $rc); input: ${artifact:-see the log above}" >&2
    echo "replay: cargo +nightly fuzz run --fuzz-dir $fuzz_dir $t ${artifact:-ARTIFACT}" >&2
    echo "then add it to $fuzz_dir/regressions/$t/ with the fix (docs/fuzzing.md)" >&2
    exit "$rc"
  fi
  rows+=("| $t | ${runs:-?} | ${secs:-?} | ${rate:-?} | ${cov:-?} |")
done

echo
echo "| target | executions | seconds | exec/s | coverage |"
echo "|---|---:|---:|---:|---|"
printf '%s\n' "${rows[@]}"
