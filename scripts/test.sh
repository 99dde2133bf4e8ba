#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian packages, rustup targets), then format and lint checks, then every
# unit and integration test against real parts (Mosquitto, wasmtime).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kedge-target}"
export KEDGE_GUESTS_TARGET_DIR="${KEDGE_GUESTS_TARGET_DIR:-/var/tmp/kedge-guests-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_pkgs=()
for p in mosquitto mosquitto-clients openssl python3 file systemd; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# Mosquitto must not hold 1883 as a system service; the tests start their own.
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
installed=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (default = full, and minimal)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --no-default-features --features minimal -- -D warnings
echo "== cargo test"
cargo test --locked --no-fail-fast -- --test-threads="${KEDGE_TEST_THREADS:-4}"

# Static device binaries (targets/): x86-64 `full` and `minimal` against
# their size budgets (over budget fails), aarch64 `minimal` for the HIL.
# Then hardware in the loop: the aarch64 `minimal` agent under qemu-user,
# and a whole emulated arm64 machine (qemu-system) that is rebooted.
# KEDGE_SKIP_CROSS=1 skips this stage; KEDGE_SKIP_QEMU_SYSTEM=1 skips the
# emulated machine.
if [ "${KEDGE_SKIP_CROSS:-0}" != 1 ]; then
  echo "== static device binaries and size budgets"
  ./scripts/build-targets.sh
  cargo build --locked --bin kedge
  arm="$CARGO_TARGET_DIR/device/aarch64-unknown-linux-musl/minimal/kedge"
  echo "== hardware in the loop: x86-64 full and minimal, native"
  x86="$CARGO_TARGET_DIR/device/x86_64-unknown-linux-musl"
  hil/run.sh --backend qemu-user --arch x86_64 --scenario hil/scenarios/basic.scn --device-bin "$x86/full/kedge"
  hil/run.sh --backend qemu-user --arch x86_64 --scenario hil/scenarios/minimal.scn --device-bin "$x86/minimal/kedge"
  echo "== hardware in the loop: qemu-user (aarch64, minimal)"
  hil/run.sh --backend qemu-user --device-bin "$arm" --scenario hil/scenarios/minimal.scn
  if [ "${KEDGE_SKIP_QEMU_SYSTEM:-0}" != 1 ]; then
    echo "== hardware in the loop: qemu-system (arm64 machine, minimal)"
    hil/run.sh --backend qemu-system --device-bin "$arm" --scenario hil/scenarios/basic.scn
  fi
fi
