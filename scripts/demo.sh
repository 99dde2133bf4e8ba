#!/usr/bin/env bash
# The main job on embedded defaults: builds kedge and runs an agent with the
# embedded MQTT broker and the demo Wasm pod from edge-manifests/. Status
# changes are printed as they happen; in another terminal try
#   target/debug/kedge get pods       target/debug/kedge logs kedge-demo -f
# Ctrl-C stops the agent; the pod comes back on the next start (state in redb).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
command -v cargo >/dev/null || { echo "cargo not found: install Rust (rustup) first" >&2; exit 1; }
source scripts/cache-env.sh # CARGO_TARGET_DIR
cargo build --bin kedge
mkdir -p "$root/target"
ln -sfn "$CARGO_TARGET_DIR/debug/kedge" "$root/target/kedge" 2>/dev/null || true

state="${KEDGE_DEMO_DIR:-$HOME/.local/share/kedge-demo}"
mkdir -p "$state/manifests"
# The manifest names the module by absolute path and digest.
sed "s#DEMO_DIR#$root/edge-manifests#" edge-manifests/demo.yaml > "$state/manifests/demo.yaml"
echo "== kedge agent: node demo, embedded broker on 127.0.0.1:1883, state in $state"
echo "== try: $root/target/kedge get pods   |   $root/target/kedge logs kedge-demo -f"
exec "$CARGO_TARGET_DIR/debug/kedge" agent --node demo --data-dir "$state/data" --manifests "$state/manifests" "$@"
