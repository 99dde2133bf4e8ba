#!/usr/bin/env bash
# Hardware-in-the-loop, qemu-user back-end: runs the aarch64 static kedge
# under qemu-aarch64 against a Mosquitto on the host, applies the demo Wasm
# pod with the host CLI and checks it runs and logs. Prints a report (pass or
# fail per step, binary size, agent RSS, start latency seen from the host)
# and exits non-zero if a step failed.
#
#   hil/qemu-user.sh [AARCH64_KEDGE] [HOST_KEDGE]
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target_dir="${CARGO_TARGET_DIR:-/var/tmp/kedge-target}"
device_bin="${1:-$target_dir/aarch64-unknown-linux-musl/release/kedge}"
host_bin="${2:-$target_dir/debug/kedge}"
work=$(mktemp -d /tmp/kedge-hil.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

results=()
failed=0
step() { # name, command...
  local name=$1; shift
  if "$@" >>"$work/steps.log" 2>&1; then results+=("| $name | pass |"); else results+=("| $name | FAIL |"); failed=1; fi
}
wait_for() { # seconds, command...: until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.2; done
}

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url="mqtt://127.0.0.1:$port"
printf 'listener %s 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n' "$port" > "$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 & pids+=($!)

step "binary is a static aarch64 executable" bash -c "file '$device_bin' | grep -q 'ARM aarch64' && file '$device_bin' | grep -Eq 'statically linked|static-pie linked'"
step "broker up" wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"

qemu-aarch64-static "$device_bin" agent --node hil-arm64 --broker "$url" --data-dir "$work/data" \
  --set node.heartbeat_ms=1000 >"$work/agent.log" 2>&1 & agent=$!; pids+=($agent)
step "agent registers (node Ready, arch arm64)" wait_for 120 bash -c "'$host_bin' --broker $url get nodes 2>/dev/null | grep hil-arm64 | grep Ready | grep -q arm64"

sed "s#DEMO_DIR#$root/edge-manifests#" edge-manifests/demo.yaml > "$work/demo.yaml"
start=$(date +%s%N)
step "apply the demo Wasm pod" "$host_bin" --broker "$url" apply -f "$work/demo.yaml" --node hil-arm64
step "pod Running" wait_for 120 bash -c "'$host_bin' --broker $url get pods 2>/dev/null | grep kedge-demo | grep -q Running"
latency_ms=$(( ($(date +%s%N) - start) / 1000000 ))
step "pod logs arrive" wait_for 30 bash -c "'$host_bin' --broker $url logs kedge-demo 2>/dev/null | grep -q 'tick 1'"
rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$agent/status 2>/dev/null || echo "?")

kill -9 "$agent" 2>/dev/null; wait "$agent" 2>/dev/null
qemu-aarch64-static "$device_bin" agent --node hil-arm64 --broker "$url" --data-dir "$work/data" \
  >>"$work/agent.log" 2>&1 & agent=$!; pids+=($agent)
step "pod restored from redb after kill -9" wait_for 120 bash -c "grep -q 'restored desired pods from the store pods=1' '$work/agent.log' && '$host_bin' --broker $url get pods 2>/dev/null | grep kedge-demo | grep -q Running"

size=$(stat -c %s "$device_bin")
echo "## HIL report: qemu-user (aarch64)"
echo
echo "| step | result |"
echo "|---|---|"
printf '%s\n' "${results[@]}"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| binary size (aarch64 musl, stripped) | $size bytes ($((size / 1024 / 1024)) MiB) |"
echo "| agent RSS under qemu-user (includes the emulator) | ${rss_kib} KiB |"
echo "| apply → Running seen from the host (polled every 0.2 s, under emulation) | ${latency_ms} ms |"
if [ $failed -ne 0 ]; then
  echo; echo "== steps log"; cat "$work/steps.log"; echo "== agent log (tail)"; tail -40 "$work/agent.log"
fi
exit $failed
