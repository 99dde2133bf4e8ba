#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian packages, rustup targets), then format and lint checks, then every
# unit and integration test against real parts (Mosquitto, wasmtime).
set -euo pipefail
cd "$(dirname "$0")/.."

# Every cache location (cargo, the Wasm guests, Go, the control plane, HIL,
# CRI images) from KEDGE_CACHE_ROOT, default /var/tmp: scripts/cache-env.sh.
source scripts/cache-env.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

need_pkgs=()
# containerd … protobuf-compiler: the CRI tests start their own containerd
# (runc, CNI plugins), build busybox/pause images (busybox-static, umoci,
# skopeo), run a registry with htpasswd auth (docker-registry,
# apache2-utils), and k8s-cri compiles its protos with protoc.
for p in mosquitto mosquitto-clients openssl containerd runc containernetworking-plugins \
  busybox-static umoci skopeo docker-registry apache2-utils protobuf-compiler iptables iproute2 curl \
  python3 file systemd; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "== installing ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  # No package may start its system service (containerd, docker-registry):
  # the tests start their own. policy-rc.d refuses service starts during
  # the install; any that slipped through are stopped below.
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  if [ "$added_policy" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi
fi
for svc in containerd docker-registry; do
  if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif command -v service >/dev/null && service "$svc" status >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO service "$svc" stop >/dev/null 2>&1 || true
  fi
done
# Mosquitto must not hold 1883 as a system service; the tests start their own.
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
installed=$(rustup target list --installed)
for t in wasm32-wasip1 wasm32-wasip2; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

# The bridge tests run a real control plane built from the upstream Go modules
# (tests/k8s-harness). The binaries are cached under /var/tmp by input hash:
# a cold build takes ~20 min on 2 cores, a cache hit milliseconds.
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go not found: install Go >= 1.25 (https://go.dev/dl) first" >&2; exit 1; }
echo "== Kubernetes control plane (tests/k8s-harness)"
KEDGE_K8S_BIN_DIR="$(nice -n 10 tests/k8s-harness/build.sh | tail -n 1)"
export KEDGE_K8S_BIN_DIR

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (default = full, and minimal)"
cargo clippy --all-targets --locked -- -D warnings
cargo clippy --all-targets --locked --no-default-features --features minimal -- -D warnings
echo "== cargo test"
cargo test --locked --no-fail-fast -- --test-threads="${KEDGE_TEST_THREADS:-4}"
echo "== kedge bridge (feature bridge): clippy, unit tests, end to end against the control plane"
cargo clippy --all-targets --locked --features bridge -- -D warnings
cargo test --locked --features bridge --lib -- bridge::
cargo test --locked --features bridge --test bridge_e2e -- --test-threads=1

# Static device binaries (targets/): x86-64 `full` and `minimal` against
# their size budgets (over budget fails), aarch64 `minimal` for the HIL.
# Then hardware in the loop: the aarch64 `minimal` agent under qemu-user,
# a whole emulated arm64 machine (qemu-system) that is rebooted, and the ssh
# back-end against an emulated Debian arm64 board with systemd and sshd
# (its root filesystem is built once, cached in /var/tmp/kedge-hil-cache).
# KEDGE_SKIP_CROSS=1 skips this stage; KEDGE_SKIP_QEMU_SYSTEM=1 skips both
# emulated machines, KEDGE_SKIP_SSH_BOARD=1 only the ssh board.
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
    if [ "${KEDGE_SKIP_SSH_BOARD:-0}" != 1 ]; then
      echo "== hardware in the loop: ssh (an emulated Debian arm64 board: systemd, sshd, minimal)"
      hil/ssh/emulated-board.sh hil/run.sh --backend ssh --device-bin "$arm" --scenario hil/scenarios/minimal.scn
    fi
  fi
fi
