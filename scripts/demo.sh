#!/usr/bin/env bash
# The main job on embedded defaults: builds kedge and runs an agent with the
# embedded MQTT broker and the demo Wasm pod from edge-manifests/. Status
# changes are printed as they happen; in another terminal try
#   target/kedge get pods       target/kedge logs kedge-demo -f
# Ctrl-C stops the agent; the pod comes back on the next start (state in redb).
#
# scripts/demo.sh --fleet: three devices on the first one's embedded broker,
# labelled site=lab (canary), site=lab and site=office; the demo pod goes to
# the lab as a fleet deployment, canary first; then the office device is
# labelled into the lab and gets it too. Ctrl-C stops the three agents.
#
# scripts/demo.sh --data: the data path. An agent runs the example Wasm
# component edge-manifests/sensor-wasm (a reading a second through the host
# interface kedge:data/publish); `kedge sink` opens the sealed batches and
# writes them to a PostgreSQL of the demo's own (installed with apt when
# missing, its cluster in the state directory). Prints the rows as they
# arrive, then the route's counters. Ctrl-C stops everything.
#
# KEDGE_DEMO_CHECK=1 (scripts/test.sh's last stage): each demo checks what it
# shows (the pod Running, the office device given the pod, rows in
# PostgreSQL), stops what it started and exits 0, or 1 saying what failed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
source scripts/cache-env.sh # CARGO_TARGET_DIR
features=()
[ "${1:-}" = --data ] && features=(--features sink)
cargo build --bin kedge "${features[@]}"
mkdir -p "$root/target"
ln -sfn "$CARGO_TARGET_DIR/debug/kedge" "$root/target/kedge" 2>/dev/null || true
kedge="$CARGO_TARGET_DIR/debug/kedge"

state="${KEDGE_DEMO_DIR:-$HOME/.local/share/kedge-demo}"
mkdir -p "$state/manifests"
# The manifest names the module by absolute path and digest.
sed "s#DEMO_DIR#$root/edge-manifests#" edge-manifests/demo.yaml > "$state/manifests/demo.yaml"

if [ "${1:-}" = --data ]; then
  exec scripts/demo-data.sh "$kedge" "$state/data-demo"
fi

# KEDGE_DEMO_CHECK: waits up to 120 s for LINE to match PATTERN in what
# COMMAND prints, then prints it; exits 1 naming WHAT when it never does.
check() { # WHAT PATTERN COMMAND...
  local what=$1 pattern=$2 out=""
  shift 2
  for _ in $(seq 1200); do
    out=$("$@" 2>&1) && grep -Eq "$pattern" <<<"$out" && { echo "demo check: $what: ok"; return 0; }
    sleep 0.1
  done
  printf 'demo check: %s: FAILED (no line matching "%s"); last output:\n%s\n' "$what" "$pattern" "$out" >&2
  exit 1
}

if [ "${1:-}" != --fleet ]; then
  echo "== kedge agent: node demo, embedded broker on 127.0.0.1:1883, state in $state"
  echo "== try: $root/target/kedge get pods   |   $root/target/kedge logs kedge-demo -f"
  if [ -z "${KEDGE_DEMO_CHECK:-}" ]; then
    exec "$kedge" agent --node demo --data-dir "$state/data" --manifests "$state/manifests" "$@"
  fi
  "$kedge" agent --node demo --data-dir "$state/data" --manifests "$state/manifests" "$@" >"$state/agent.log" 2>&1 &
  agent=$!
  trap 'kill $agent 2>/dev/null || true; wait 2>/dev/null || true' EXIT
  check "the demo pod runs" 'kedge-demo +[0-9]+/[0-9]+ +Running' "$kedge" get pods
  "$kedge" get pods
  check "the demo pod logs" '.' "$kedge" logs kedge-demo
  exit 0
fi

fleet="$state/fleet"
mkdir -p "$fleet"
cp "$state/manifests/demo.yaml" "$fleet/demo.yaml"
pids=()
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
# lab-1 starts the embedded broker (no broker configured); the others use it.
"$kedge" agent --node lab-1 --labels site=lab,canary=true --data-dir "$fleet/lab-1" >"$fleet/lab-1.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && break
  sleep 0.1
done
for n in lab-2:site=lab office-1:site=office; do
  "$kedge" --broker mqtt://127.0.0.1:1883 agent --node "${n%%:*}" --labels "${n#*:}" \
    --data-dir "$fleet/${n%%:*}" >"$fleet/${n%%:*}.log" 2>&1 &
  pids+=($!)
done
k() { echo "\$ kedge $*"; "$kedge" --broker mqtt://127.0.0.1:1883 "$@"; echo; }
echo "== three devices (logs in $fleet): lab-1 (site=lab, canary), lab-2 (site=lab), office-1 (site=office)"
for _ in $(seq 100); do
  [ "$("$kedge" --broker mqtt://127.0.0.1:1883 get nodes 2>/dev/null | grep -c Ready)" -ge 3 ] && break
  sleep 0.1
done
k get nodes
k apply -f "$fleet/demo.yaml" --selector site=lab --batches 'canary=true:100%,100%' --min-ready 3s --wait
k get fleets
k get pods -A --node lab-1
k get pods -A --node office-1
k label node office-1 site=lab --overwrite
echo "== office-1 joins the lab: it gets the pod without a new rollout"
for _ in $(seq 300); do
  "$kedge" --broker mqtt://127.0.0.1:1883 get pods -A --node office-1 2>/dev/null | grep -q 'kedge-demo.*Running' && break
  sleep 0.1
done
k get pods -A --node office-1
k get fleets
if [ -n "${KEDGE_DEMO_CHECK:-}" ]; then
  for n in lab-1 lab-2 office-1; do
    check "$n runs the fleet's pod" 'kedge-demo.*Running' "$kedge" --broker mqtt://127.0.0.1:1883 get pods -A --node "$n"
  done
  exit 0
fi
echo "== Ctrl-C stops the three agents"
wait
