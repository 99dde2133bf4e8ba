#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need
# (Debian packages, rustup targets), then format and lint checks, then every
# unit and integration test against real parts (Mosquitto, wasmtime,
# containerd, a Kubernetes control plane and kubectl, both built from the
# upstream Go modules in the background), then the static device binaries
# and hardware in the loop.
#
# Each stage's duration and result is printed at the end in a table, also
# when a stage fails (the run stops at the first failing stage). Every skip
# prints one line saying what was skipped and why. The last line counts the
# tests: "tests: N passed, N failed, N skipped, N ignored" (ignored: tools
# that are tests on purpose, such as scripts/regen-vectors.sh's, not checks).
#
# Switches: KEDGE_SKIP_DEMO=1 (the demos' checks), KEDGE_SKIP_CROSS=1 (device binaries and all HIL),
# KEDGE_SKIP_QEMU_SYSTEM=1 (both emulated arm64 machines),
# KEDGE_SKIP_SSH_BOARD=1 (the emulated ssh board only), KEDGE_TEST_THREADS
# (default 4). Caches: scripts/cache-env.sh (KEDGE_CACHE_ROOT).
#
# Fewer builds of the same crate graph: one clippy check graph covers the
# default features and the bridge (`--features bridge`), one test build runs
# the default tests and the bridge's (bridge_e2e is a second invocation of
# that same build, single-threaded), and the HIL's host CLI is that build's
# binary. Distinct graphs left: clippy `minimal`, the `minimal` unit tests,
# the release device builds (one cargo invocation per feature set, measured
# against the size budgets), which run in the background at the lowest
# priority from the integration tests on, in the CPU the tests leave idle.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every cache location (cargo, the Wasm guests, Go, the control plane, HIL,
# CRI images) from KEDGE_CACHE_ROOT, default /var/tmp: scripts/cache-env.sh.
source scripts/cache-env.sh
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
threads="${KEDGE_TEST_THREADS:-4}"
# bridge_e2e runs a control plane (etcd, apiserver, controllers) per test;
# three at once fit this kind of machine (2 cores, 24 GiB) and take the
# stage from ~700 s to ~370 s, the longest test's own length.
e2e_threads="${KEDGE_E2E_THREADS:-3}"

# ---------------------------------------------------------------------------
# Stages: `stage NAME` starts one (ending the previous one as ok); a failing
# command ends the run (set -e) and the EXIT trap records the open stage as
# failed, then prints the table. `skip NAME WHY` records a skip.
# ---------------------------------------------------------------------------
logs=$(mktemp -d /tmp/kedge-test.XXXXXX) # cargo test output, read for counts and skips
stage_rows=() skipped=() current="" current_start=0 run_start=$SECONDS
stage_end() {
  [ -n "$current" ] || return 0
  stage_rows+=("| $current | $((SECONDS - current_start)) | ok |")
  current=""
}
stage() {
  stage_end
  current=$1 current_start=$SECONDS
  echo "== $1"
}
skip() {
  stage_end
  echo "== SKIPPED $1: $2"
  stage_rows+=("| $1 | 0 | skipped: $2 |")
  skipped+=("$1: $2")
}
# Sums libtest's "test result:" lines over every cargo test run so far.
# CRI tests that skipped (not root) ran as passes: counted as skipped.
# Ignored tests (#[ignore]) are tools run by their own scripts, never checks
# (scripts/regen-vectors.sh): counted apart from the skips.
count_tests() {
  local p=0 f=0 i=0 s=0 cri_skips
  if compgen -G "$logs/*.log" >/dev/null; then
    read -r p f i < <(grep -ah '^test result:' "$logs"/*.log |
      awk '{for (n = 1; n < NF; n++) { if ($(n+1) ~ /^passed/) p += $n; if ($(n+1) ~ /^failed/) f += $n; if ($(n+1) ~ /^ignored/) i += $n }}
           END {print p + 0, f + 0, i + 0}')
    cri_skips=$( (grep -aoh 'KEDGE-TEST-SKIPPED [^:]*:' "$logs"/*.log || true) | sort -u | wc -l)
    p=$((p - cri_skips)) s=$cri_skips
  fi
  echo "tests: $p passed, $f failed, $s skipped, $i ignored"
}
summary() {
  local rc=$?
  set +e
  if [ -n "$current" ]; then
    stage_rows+=("| $current | $((SECONDS - current_start)) | FAILED (exit $rc) |")
    current=""
    [ "$rc" = 0 ] || stage_rows+=("| (any later stage) | | not run |")
  fi
  echo
  echo "## scripts/test.sh: $((SECONDS - run_start)) s in all"
  echo
  echo "| stage | seconds | result |"
  echo "|---|---:|---|"
  printf '%s\n' "${stage_rows[@]}"
  if [ ${#skipped[@]} -gt 0 ]; then
    echo
    printf 'skipped: %s\n' "${skipped[@]}"
  fi
  echo
  count_tests
  # A run that stopped early does not leave the background builds behind.
  if [ -n "${k8s_pid:-}" ] && kill -0 "$k8s_pid" 2>/dev/null; then
    kill -- "-$k8s_pid" 2>/dev/null || true
  fi
  for pid in "${device_pid:-}" "${fuzz_pid:-}"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      pkill -P "$pid" 2>/dev/null || true
      kill "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$logs"
  exit "$rc"
}
trap summary EXIT
# A cargo test invocation whose output is kept for the counts and skips.
cargo_test() { # LOGNAME ARGS...
  local log="$logs/$1.log"; shift
  cargo test "$@" 2>&1 | tee -a "$log"
}

# ---------------------------------------------------------------------------
stage "setup: Debian packages, rustup targets and components"
# containerd … protobuf-compiler: the CRI tests start their own containerd
# (runc, CNI plugins), build busybox/pause images (busybox-static, umoci,
# skopeo), run a registry with htpasswd auth (docker-registry,
# apache2-utils), and k8s-cri compiles its protos with protoc. The data
# path's tests start their own PostgreSQL cluster (postgresql: initdb and
# the server; no system cluster is used). No package's service is started
# (scripts/apt-install.sh); any that runs already is stopped below.
scripts/apt-install.sh mosquitto mosquitto-clients openssl containerd runc containernetworking-plugins \
  busybox-static umoci skopeo docker-registry apache2-utils protobuf-compiler iptables iproute2 curl \
  python3 file systemd postgresql
for svc in containerd docker-registry postgresql; do
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
# The fuzzing stage (scripts/fuzz.sh) needs the nightly toolchain and
# cargo-fuzz: CI installs them; elsewhere their absence is a skip.
if [ "${CI:-}" = true ]; then
  rustup run nightly rustc --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
  cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version '^0.13'
fi
export PATH="$PATH:/usr/local/go/bin"
command -v go >/dev/null || { echo "go not found: install Go >= 1.25 (https://go.dev/dl) first" >&2; exit 1; }

# The control plane the bridge tests run (tests/k8s-harness) is built from
# the upstream Go modules: ~25 min cold on 2 cores, milliseconds when cached.
# A cold build starts now, at the lowest priority, and overlaps the Rust
# stages (whose tests spend much of their time waiting on brokers,
# containers and timers); its stage below waits for it.
# Then the kubectl those tests drive (tests/k8s-harness/kubectl: its own
# module and cache key, the control plane's release): after the control
# plane, so that it reuses the packages the control plane just compiled
# (~40 s then; cached, milliseconds). Then the metrics-server `kubectl top`
# reads (tests/k8s-harness/metrics-server, its own module and cache key).
k8s_out="$logs/k8s-harness.out" kubectl_out="$logs/kubectl.out" ms_out="$logs/metrics-server.out"
# Its own process group (setsid), so that a run stopping early can end it.
setsid nice -n 19 bash -c '
  tests/k8s-harness/build.sh >"$1" 2>"$2" &&
  tests/k8s-harness/kubectl/build.sh >"$3" 2>"$4" &&
  tests/k8s-harness/metrics-server/build.sh >"$5" 2>"$6"' \
  go-builds "$k8s_out" "$logs/k8s-harness.log" "$kubectl_out" "$logs/kubectl.log" \
  "$ms_out" "$logs/metrics-server.log" &
k8s_pid=$!

# ---------------------------------------------------------------------------
stage "cargo fmt --check"
cargo fmt --all -- --check

# One check graph for the default features and the bridge: --features bridge
# adds the bridge to the default set, so every default item is linted too
# (no code is compiled only without the bridge).
stage "cargo clippy --all-targets --features bridge,sink (default + bridge + sink)"
cargo clippy --all-targets --locked --features bridge,sink -- -D warnings
cargo clippy --all-targets --locked -p kedge-hpke -- -D warnings
stage "cargo clippy --all-targets, minimal"
cargo clippy --all-targets --locked --no-default-features --features minimal -- -D warnings

# One test build for the default features and the bridge: the unit tests
# (bridge:: included), then every integration test but bridge_e2e, then
# bridge_e2e from the same build, $e2e_threads tests at a time (each runs a
# control plane of its own).
tests=()
for f in tests/*.rs; do
  t=$(basename "$f" .rs)
  [ "$t" = bridge_e2e ] || tests+=(--test "$t")
done
# The fast rungs first: the unit tests and the in-process tests (the
# controller on a fake runtime with paused time, the writer against kube's
# mock service pair, …), no process or service started; then, from the same
# build, the integration tests against real parts.
stage "cargo test --features bridge,sink --lib --bins: unit and in-process tests"
cargo_test lib --locked --features bridge,sink --no-fail-fast --lib --bins -- --test-threads="$threads"
# The release device builds need only the sources: they start now, in the
# background at the lowest priority, and take the CPU the tests below leave
# idle while they wait on containers, brokers, timers and the control plane
# (bridge_e2e uses a quarter of this machine). Their own profile dirs, so
# no cargo lock is shared with the test builds. Their stage waits for them.
device_log="$logs/device-builds.out"
if [ "${KEDGE_SKIP_CROSS:-0}" != 1 ]; then
  nice -n 19 ./scripts/build-targets.sh >"$device_log" 2>&1 &
  device_pid=$!
fi
stage "cargo test --features bridge,sink: integration tests against real parts (--test-threads=$threads)"
cargo_test main --locked --features bridge,sink --no-fail-fast "${tests[@]}" -- --test-threads="$threads"
# The target selection above leaves out doc tests: run them when src/ has one
# (a fenced block that is Rust: no info string, or rust/no_run/should_panic…).
if find src -name '*.rs' -exec cat {} + | awk '/^[ \t]*\/\/[\/!][ \t]*```/ {
          if (!inb) { info = $0; sub(/.*```/, "", info); gsub(/[ \t]/, "", info)
                      if (info == "" || info ~ /^(rust|no_run|should_panic|compile_fail|edition)/) found = 1 }
          inb = !inb }
        END { exit !found }'; then
  stage "cargo test --doc --features bridge,sink"
  cargo_test doc --locked --features bridge,sink --doc
else
  skip "doc tests" "src/ has no Rust doc-test block"
fi
# The CRI end-to-end tests need root; without it each one prints
# "KEDGE-TEST-SKIPPED <test>: …" (tests/support/cri.rs) and returns.
cri_skips=$( (grep -aoh 'KEDGE-TEST-SKIPPED [^:]*:' "$logs/main.log" || true) | sort -u | wc -l)
cri_passed=$(awk '/Running tests\/cri_e2e\.rs/ {on = 1} on && /^test result:/ {for (n = 1; n < NF; n++) if ($(n+1) ~ /^passed/) print $n; exit}' "$logs/main.log")
if [ "$cri_skips" -gt 0 ]; then
  skip "end-to-end tests that need root ($cri_skips: the CRI tests of tests/cri_e2e.rs, the agent's full-disk test)" "not root (uid $(id -u)): they start containerd, CNI bridges and cgroups, or mount a tmpfs"
fi
if [ "${CI:-}" = true ] && [ "$(id -u)" -eq 0 ]; then
  # CI runs as root: the CRI tests must have run, every one of them.
  stage "CI: the CRI end-to-end tests ran"
  if [ "$cri_skips" -gt 0 ] || [ "${cri_passed:-0}" -eq 0 ]; then
    echo "CI on a root machine: the CRI end-to-end tests did not run (passed: ${cri_passed:-none}, skipped: $cri_skips)" >&2
    exit 1
  fi
  echo "tests/cri_e2e.rs: $cri_passed passed, none skipped"
fi

# Coverage-guided fuzzing (docs/fuzzing.md): every target of tests/fuzz for
# 20 s from its seeds, its past crashes and the corpus kept between runs
# ($KEDGE_FUZZ_CORPUS). The documented long run is `scripts/fuzz.sh`. Its
# own toolchain and target dir: it runs in the background (nice 10, above
# the device builds) beside the minimal unit tests and bridge_e2e, which
# leave most of the machine idle; its stage after bridge_e2e waits for it.
fuzz_log="$logs/fuzz.out"
if rustup run nightly rustc --version >/dev/null 2>&1 && cargo fuzz --version >/dev/null 2>&1; then
  KEDGE_FUZZ_NICE=10 ./scripts/fuzz.sh --time 20 --dev >"$fuzz_log" 2>&1 &
  fuzz_pid=$!
else
  # Under CI the setup stage installed both, so this is a local run.
  skip "fuzzing (scripts/fuzz.sh)" "no nightly toolchain or no cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz)"
fi

# minimal (the small devices' set) has its own graph: its unit tests, once.
stage "cargo test --lib, minimal"
cargo_test minimal --locked --no-default-features --features minimal --lib -- --test-threads="$threads"

# The bridge tests run a real control plane built from the upstream Go
# modules (tests/k8s-harness) and drive it with a real kubectl
# (tests/k8s-harness/kubectl), both cached by input hash in
# $KEDGE_K8S_BIN_ROOT; the builds started in the background at the top of
# this script.
stage "Kubernetes control plane, kubectl and metrics-server (tests/k8s-harness, Go; waiting for the background build)"
if ! wait "$k8s_pid"; then
  # build.sh prints its directory only once it succeeded.
  if [ ! -s "$k8s_out" ]; then
    failed=tests/k8s-harness/build.sh log="$logs/k8s-harness.log"
  elif [ ! -s "$kubectl_out" ]; then
    failed=tests/k8s-harness/kubectl/build.sh log="$logs/kubectl.log"
  else
    failed=tests/k8s-harness/metrics-server/build.sh log="$logs/metrics-server.log"
  fi
  cat "$log" >&2
  echo "$failed failed (log above)" >&2
  exit 1
fi
tail -n 3 "$logs/k8s-harness.log"
tail -n 1 "$logs/kubectl.log"
tail -n 1 "$logs/metrics-server.log"
KEDGE_K8S_BIN_DIR="$(tail -n 1 "$k8s_out")"
KEDGE_KUBECTL="$(tail -n 1 "$kubectl_out")/kubectl"
KEDGE_METRICS_SERVER="$(tail -n 1 "$ms_out")/metrics-server"
export KEDGE_K8S_BIN_DIR KEDGE_KUBECTL KEDGE_METRICS_SERVER
stage "cargo test --features bridge,sink --test bridge_e2e (--test-threads=$e2e_threads)"
cargo_test bridge_e2e --locked --features bridge,sink --no-fail-fast --test bridge_e2e -- --test-threads="$e2e_threads"
if [ "${CI:-}" = true ] && [ "$(id -u)" -eq 0 ]; then
  # CI on a root machine has every part a test needs (the setup stage
  # installed it, the background job built the control plane and kubectl):
  # a test that skipped itself there is a broken set-up, not a pass.
  stage "CI: no test skipped itself"
  if grep -aoh 'KEDGE-TEST-SKIPPED [^:]*:' "$logs"/*.log | sort -u | grep .; then
    echo "CI on a root machine: the tests above skipped themselves (each printed why)" >&2
    exit 1
  fi
  echo "no KEDGE-TEST-SKIPPED line in any test log"
fi
if [ -n "${fuzz_pid:-}" ]; then
  stage "fuzzing: 20 s per target (scripts/fuzz.sh --time 20 --dev, nightly; beside the tests above, waiting for it)"
  fuzz_rc=0
  wait "$fuzz_pid" || fuzz_rc=$?
  cat "$fuzz_log" # scripts/fuzz.sh already leaves out libFuzzer's progress lines
  [ "$fuzz_rc" = 0 ] || { echo "scripts/fuzz.sh failed (exit $fuzz_rc, log above)" >&2; exit 1; }
fi

# ---------------------------------------------------------------------------
# Static device binaries (targets/): x86-64 `full` and `minimal` against
# their size budgets (over budget fails), aarch64 `minimal` for the HIL.
# Then hardware in the loop. What each run adds that the others do not:
# - x86-64 `full` (basic.scn) and `minimal` (minimal.scn), native: the
#   release device binaries themselves (LTO, panic=abort, static, no unwind
#   tables; the tests above use debug builds). Seconds.
# - qemu-user, aarch64 `minimal`: the arm64 binary and modules precompiled
#   for aarch64 (and Pulley) under user-mode emulation. Seconds.
# - qemu-system, aarch64 `minimal` (basic.scn): a real arm64 kernel and a
#   busybox init (no systemd), and a power cycle: only what reached the
#   virtio disk survives, so redb's durability is tested as on a device
#   losing power (a kill -9 keeps the host's page cache). ~20 s; the first
#   run fetches ~60 MB of Debian packages into $KEDGE_HIL_CACHE.
# - ssh to the emulated Debian arm64 board (minimal.scn): install/install.sh
#   and kedge.service under a real systemd (the kedge user, Restart=always
#   after kill -9, journald), through the ssh back-end a real board uses.
#   ~70 s; the board's image is built once (5-6 min, $KEDGE_HIL_BOARD_CACHE).
# No stage is dropped: each covers something the others cannot.
# ---------------------------------------------------------------------------
if [ "${KEDGE_SKIP_CROSS:-0}" = 1 ]; then
  skip "static device binaries, size budgets and all hardware in the loop" "KEDGE_SKIP_CROSS=1"
else
  stage "static device binaries and size budgets (3 release builds, started after the unit tests; waiting for them)"
  device_rc=0
  wait "$device_pid" || device_rc=$?
  cat "$device_log"
  [ "$device_rc" = 0 ] || { echo "scripts/build-targets.sh failed (exit $device_rc, log above)" >&2; exit 1; }
  # The host CLI for the HIL: the binary the integration tests above ran
  # ($CARGO_TARGET_DIR/debug/kedge, hil/run.sh's default). Not built again:
  # a `cargo build` without the dev-dependencies unifies features anew and
  # recompiled for 130 s on a cold run (2026-11-27).
  [ -x "$CARGO_TARGET_DIR/debug/kedge" ] ||
    { echo "the test build left no $CARGO_TARGET_DIR/debug/kedge for the HIL" >&2; exit 1; }
  arm="$CARGO_TARGET_DIR/device/aarch64-unknown-linux-musl/minimal/kedge"
  x86="$CARGO_TARGET_DIR/device/x86_64-unknown-linux-musl"
  stage "hardware in the loop: x86-64 full, native (basic.scn)"
  hil/run.sh --backend qemu-user --arch x86_64 --scenario hil/scenarios/basic.scn --device-bin "$x86/full/kedge"
  stage "hardware in the loop: x86-64 minimal, native (minimal.scn)"
  hil/run.sh --backend qemu-user --arch x86_64 --scenario hil/scenarios/minimal.scn --device-bin "$x86/minimal/kedge"
  stage "hardware in the loop: qemu-user, aarch64 minimal (minimal.scn)"
  hil/run.sh --backend qemu-user --device-bin "$arm" --scenario hil/scenarios/minimal.scn
  if [ "${KEDGE_SKIP_QEMU_SYSTEM:-0}" = 1 ]; then
    skip "hardware in the loop: qemu-system arm64 machine and the emulated ssh board" "KEDGE_SKIP_QEMU_SYSTEM=1"
  else
    stage "hardware in the loop: qemu-system arm64 machine, power cycle (basic.scn)"
    hil/run.sh --backend qemu-system --device-bin "$arm" --scenario hil/scenarios/basic.scn
    if [ "${KEDGE_SKIP_SSH_BOARD:-0}" = 1 ]; then
      skip "hardware in the loop: ssh to the emulated Debian arm64 board" "KEDGE_SKIP_SSH_BOARD=1"
    else
      stage "hardware in the loop: ssh to the emulated Debian arm64 board (minimal.scn)"
      hil/ssh/emulated-board.sh hil/run.sh --backend ssh --device-bin "$arm" --scenario hil/scenarios/minimal.scn
    fi
  fi
fi

# ---------------------------------------------------------------------------
# The README's first command, each of its three demos, one shot
# (KEDGE_DEMO_CHECK=1: each checks what it shows, stops and exits). Last,
# because scripts/demo.sh builds kedge without the dev-dependencies' features
# (and --data with the sink), which replaces $CARGO_TARGET_DIR/debug/kedge,
# the binary the HIL above drove. The demos use the embedded broker's fixed
# port, 1883, as a user's machine does.
# ---------------------------------------------------------------------------
if [ "${KEDGE_SKIP_DEMO:-0}" = 1 ]; then
  skip "scripts/demo.sh, its three demos checked" "KEDGE_SKIP_DEMO=1"
else
  for mode in "" --fleet --data; do
    stage "scripts/demo.sh ${mode:-(the main job)}, checked (KEDGE_DEMO_CHECK=1)"
    rm -rf "$logs/demo"
    KEDGE_DEMO_CHECK=1 KEDGE_DEMO_DIR="$logs/demo" timeout 1200 scripts/demo.sh $mode
  done
fi
stage_end
