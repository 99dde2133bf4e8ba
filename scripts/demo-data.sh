#!/usr/bin/env bash
# `scripts/demo.sh --data` (which builds kedge with the sink and calls this
# with the binary and a state directory): the data path end to end on one
# machine.
#
#   the example component (edge-manifests/sensor-wasm: one reading a second
#   through the host interface kedge:data/publish)
#     → the agent: each reading committed to its store, batched, signed by
#       the device, sealed to the sink's key
#     → the agent's embedded MQTT broker (it only ever holds ciphertext)
#     → `kedge sink`: verifies, opens, writes each message once
#     → PostgreSQL (a cluster of the demo's own, in a temporary directory;
#       Debian's package installed when missing)
#
# Each run starts afresh: new keys, a new agent state, a new database.
# Ctrl-C stops the agent, the sink and PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
kedge=$1
state=$2
node=demo-data

scripts/apt-install.sh postgresql
pgbin=$(find /usr/lib/postgresql -maxdepth 2 -name bin -type d | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
source scripts/cache-env.sh # CARGO_TARGET_DIR

echo "== building the example component (edge-manifests/sensor-wasm, wasm32-wasip2)"
guest_target="$CARGO_TARGET_DIR/sensor-wasm"
CARGO_TARGET_DIR="$guest_target" cargo build -q --locked --release --target wasm32-wasip2 \
  --manifest-path edge-manifests/sensor-wasm/Cargo.toml
wasm="$guest_target/wasm32-wasip2/release/sensor.wasm"
digest=$(sha256sum "$wasm" | cut -d' ' -f1)

rm -rf "$state"
mkdir -p "$state/devices"
# PostgreSQL refuses to run as root: its cluster belongs to the postgres
# user then, in a directory that user can reach.
pg=$(mktemp -d /tmp/kedge-demo-pg.XXXXXX)
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" -eq 0 ] && chown postgres "$pg"
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$pg/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$pg"
}
trap stop EXIT
trap 'exit 130' INT TERM

port=55432
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
echo "== PostgreSQL on 127.0.0.1:$port (cluster in $pg)"
as_pg "$pgbin/initdb" -D "$pg/data" -U kedge --auth=trust -E UTF8 >/dev/null
as_pg "$pgbin/pg_ctl" -D "$pg/data" -l "$pg/log" -w \
  -o "-p $port -k $pg -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$pgbin/createdb" -h 127.0.0.1 -p "$port" -U kedge telemetry
psql() { "$pgbin/psql" -h 127.0.0.1 -p "$port" -U kedge -d telemetry "$@"; }

echo "== the sink's key: its public half goes to the device (data.sink_public_key)"
sink_pub=$("$kedge" sink keygen --out "$state/sink.key")
echo "   $sink_pub"

echo "== kedge agent: node $node, embedded broker on 127.0.0.1:1883, data endpoint on 127.0.0.1:1884 (logs: $state/agent.log)"
"$kedge" agent --node "$node" --data-dir "$state/agent" \
  --set "data.sink_public_key=$sink_pub" >"$state/agent.log" 2>&1 &
pids+=($!)
# The device makes its signing key on its first start; the sink verifies
# each batch with its public half.
device_pub="$state/agent/data/device-key.pk8.pub"
for _ in $(seq 300); do [ -s "$device_pub" ] && break; sleep 0.1; done
[ -s "$device_pub" ] || { echo "the agent made no device key; its log:" >&2; tail -20 "$state/agent.log" >&2; exit 1; }
cp "$device_pub" "$state/devices/$node.pub"

echo "== kedge sink: subscribed to the devices' batches (logs: $state/sink.log)"
# One sink: a plain subscription of a persistent session (--share-group "").
"$kedge" --broker mqtt://127.0.0.1:1883 sink run --key "$state/sink.key" \
  --device-keys "$state/devices" --share-group "" \
  --postgres "host=127.0.0.1 port=$port user=kedge dbname=telemetry" >"$state/sink.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do grep -q "sink subscribed" "$state/sink.log" && break; sleep 0.1; done
grep -q "sink subscribed" "$state/sink.log" || { echo "the sink did not subscribe; its log:" >&2; tail -20 "$state/sink.log" >&2; exit 1; }

# The example pod (edge-manifests/data-sensor-wasm.yaml) with this build
# of the component: its route travels with it (kedge.io/routes).
sed "s#image: file://.*#image: file://$wasm@sha256:$digest#" edge-manifests/data-sensor-wasm.yaml >"$state/pod.yaml"
k() { echo "\$ kedge $*"; "$kedge" --broker mqtt://127.0.0.1:1883 "$@"; echo; }
k apply -f "$state/pod.yaml" --node "$node"
for _ in $(seq 300); do
  "$kedge" --broker mqtt://127.0.0.1:1883 get pods --node "$node" 2>/dev/null | grep -q 'sensor-wasm.*Running' && break
  sleep 0.1
done
k get pods --node "$node"

echo "== rows in PostgreSQL as they arrive (kedge_messages; Ctrl-C stops)"
query="SELECT seq, pod, container, topic, payload_json, device_time, received_time - device_time AS delay
       FROM kedge_messages ORDER BY received_time DESC, seq DESC LIMIT 3"
for round in $(seq 5); do
  sleep 3
  echo "\$ psql -c 'SELECT count(*) FROM kedge_messages'  →  $(psql -tAc 'SELECT count(*) FROM kedge_messages')"
  [ "$round" = 1 ] && psql -c "$query"
done
psql -c "$query"
echo "== the route's counters, as of the node's last status report:"
k get routes --node "$node"
if [ -n "${KEDGE_DEMO_CHECK:-}" ]; then
  # scripts/demo.sh's KEDGE_DEMO_CHECK: the readings are rows, from the pod.
  rows=$(psql -tAc "SELECT count(*) FROM kedge_messages WHERE pod = 'sensor-wasm' AND payload_json IS NOT NULL")
  if [ "$rows" -gt 0 ]; then
    echo "demo check: $rows readings of sensor-wasm in PostgreSQL: ok"
    exit 0
  fi
  echo "demo check: no reading of sensor-wasm in PostgreSQL: FAILED; the sink's log:" >&2
  tail -20 "$state/sink.log" >&2
  exit 1
fi
echo "== the broker only carried sealed batches: try  mosquitto_sub -h 127.0.0.1 -t 'kedge/#' -v"
echo "== Ctrl-C stops the agent, the sink and PostgreSQL"
wait
