#!/usr/bin/env bash
# Regenerates the wire test vectors (tests/vectors/*.hex) from the samples in
# src/wire/vectors.rs, after an intended format change (a new SCHEMA_VERSION,
# docs/wire.md). It runs the ignored test write_vectors_then_fail_on_purpose,
# which writes every file and then always fails, so regenerating can never
# pass as a test run; this script succeeds only if that test reached its end
# (it prints KEDGE-VECTORS-WRITTEN). Then review the diff and run the checks
# (cargo test --lib wire), which only compare.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cache-env.sh # CARGO_TARGET_DIR
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Expected to fail: the test fails on purpose after writing.
cargo test --lib wire::vectors::write_vectors_then_fail_on_purpose -- \
  --ignored --exact --nocapture >"$log" 2>&1 || true
if ! grep -q 'KEDGE-VECTORS-WRITTEN' "$log"; then
  cat "$log" >&2
  echo "regen-vectors: the vectors were not written (see above)" >&2
  exit 1
fi
grep '^wrote ' "$log"
git --no-pager diff --stat -- tests/vectors
echo "regen-vectors: review git diff tests/vectors, then run: cargo test --lib wire"
