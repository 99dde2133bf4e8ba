#!/usr/bin/env bash
# Hardware-in-the-loop runner: runs one scenario (hil/scenarios/*.scn) on one
# back-end and prints a report: pass/fail per step, binary size, the agent's
# RSS/PSS and CPU on the device, pod start latency seen from the host. Exits
# non-zero if a step failed.
#
#   hil/run.sh --backend qemu-user|qemu-system|ssh [--scenario FILE]
#              [--device-bin PATH] [--host-bin PATH] [--arch aarch64|x86_64]
#              [--ssh USER@BOARD] [--ssh-port N] [--ssh-identity FILE]
#              [--ssh-option OPT]... [--broker-host ADDR]
#
# qemu-user    the device binary under qemu-<arch>-static on this machine
#              (default arch aarch64; this machine's own arch runs natively);
#              fast, runs in CI.
# qemu-system  a whole emulated arm64 machine: Debian's kernel, an initramfs
#              with busybox and kedge started by init, user networking to
#              the host's broker (10.0.2.2), a virtio disk for the data dir;
#              `restart` reboots it (hil/qemu-system/).
# ssh          a board with systemd (a real one, or the emulated one of
#              hil/ssh/emulated-board.sh): copies the binary and modules,
#              installs the systemd service with install/install.sh, runs
#              the scenario;
#              `restart` kills the agent (-9), systemd starts it again.
#              --broker-host is this machine's address as the board sees it.
#              --ssh-option is passed to ssh as -o OPT. Defaults come from
#              KEDGE_HIL_SSH, KEDGE_HIL_SSH_PORT, KEDGE_HIL_SSH_IDENTITY,
#              KEDGE_HIL_SSH_OPTIONS (space separated) and
#              KEDGE_HIL_BROKER_HOST, which hil/ssh/emulated-board.sh sets
#              for its emulated board (and KEDGE_HIL_BROKER_LISTEN: the
#              broker's listen address, else 0.0.0.0 for this back-end).
#
# The broker is a Mosquitto started here on a free port; the host CLI
# (--host-bin, a build with the Wasm compiler) drives the device.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
source scripts/cache-env.sh # CARGO_TARGET_DIR, KEDGE_HIL_CACHE
target_dir="$CARGO_TARGET_DIR"
backend="" scenario=hil/scenarios/basic.scn arch=aarch64 device_bin=""
ssh_dest="${KEDGE_HIL_SSH:-}" ssh_port="${KEDGE_HIL_SSH_PORT:-}" ssh_identity="${KEDGE_HIL_SSH_IDENTITY:-}"
broker_host="${KEDGE_HIL_BROKER_HOST:-}"
read -ra ssh_options <<<"${KEDGE_HIL_SSH_OPTIONS:-}"
host_bin="$target_dir/debug/kedge"
while [ $# -gt 0 ]; do
  case "$1" in
    --backend) backend=$2; shift 2 ;;
    --scenario) scenario=$2; shift 2 ;;
    --device-bin) device_bin=$2; shift 2 ;;
    --host-bin) host_bin=$2; shift 2 ;;
    --arch) arch=$2; shift 2 ;;
    --ssh) ssh_dest=$2; shift 2 ;;
    --ssh-port) ssh_port=$2; shift 2 ;;
    --ssh-identity) ssh_identity=$2; shift 2 ;;
    --ssh-option) ssh_options+=("$2"); shift 2 ;;
    --broker-host) broker_host=$2; shift 2 ;;
    -h|--help) sed -n '2,34s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 64 ;;
  esac
done
case "$backend" in qemu-user|qemu-system|ssh) ;; *) echo "run.sh: --backend qemu-user|qemu-system|ssh" >&2; exit 64 ;; esac
case "$arch" in aarch64) k8s_arch=arm64 ;; x86_64) k8s_arch=amd64 ;; *) echo "run.sh: --arch aarch64|x86_64" >&2; exit 64 ;; esac
[ -n "$device_bin" ] || device_bin="$target_dir/$arch-unknown-linux-musl/release/kedge"
for f in "$scenario" "$device_bin" "$host_bin"; do [ -f "$f" ] || { echo "run.sh: missing $f" >&2; exit 66; }; done

work=$(mktemp -d /tmp/kedge-hil.XXXXXX)
pids=()
node="hil-$backend-$k8s_arch"
cleanup() {
  type be_stop >/dev/null 2>&1 && be_stop >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------
# The broker, the host CLI, waiting
# ---------------------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')
url="mqtt://127.0.0.1:$port"
listen=127.0.0.1; [ "$backend" = ssh ] && listen=${KEDGE_HIL_BROKER_LISTEN:-0.0.0.0} # boards reach it from outside
printf 'listener %s %s\nallow_anonymous true\nset_tcp_nodelay true\n' "$port" "$listen" >"$work/mosquitto.conf"
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 & pids+=($!)
kedge() { "$host_bin" --broker "$url" "$@"; }
wait_for() { # seconds, command...: until the command succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.2; done
}
wait_for 10 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null || { echo "mosquitto did not start" >&2; cat "$work/mosquitto.log"; exit 1; }

# ---------------------------------------------------------------------------
# Back-ends: be_prepare (ship binary and modules), be_start, be_restart,
# be_stats (prints "RSS_KIB PSS_KIB CPU_MS"), be_log (the agent's log so
# far), be_stop. $device_modules is where the device reads the modules.
# ---------------------------------------------------------------------------
case "$backend" in
qemu-user)
  device_modules="$work/modules"
  agent=""
  be_prepare() { :; }
  emulator=("qemu-$arch-static")
  [ "$arch" = "$(uname -m)" ] && emulator=() # the host's own arch runs natively
  be_start() {
    "${emulator[@]}" "$device_bin" agent --node "$node" --broker "$url" --data-dir "$work/data" \
      --set node.heartbeat_ms=1000 >>"$work/agent.log" 2>&1 & agent=$!; pids+=($agent)
  }
  be_restart() { kill -9 "$agent" 2>/dev/null; wait "$agent" 2>/dev/null; be_start; }
  be_stats() { # the emulator's own memory and CPU are included
    local rss pss cpu
    rss=$(awk '/^Rss:/ {print $2}' "/proc/$agent/smaps_rollup")
    pss=$(awk '/^Pss:/ {print $2}' "/proc/$agent/smaps_rollup")
    cpu=$(awk '{print ($14 + $15) * 10}' "/proc/$agent/stat")
    echo "$rss $pss $cpu"
  }
  be_log() { cat "$work/agent.log"; }
  be_stop() { [ -n "$agent" ] && kill "$agent" 2>/dev/null; }
  ;;
qemu-system)
  device_modules=/modules
  source hil/qemu-system/backend.sh
  ;;
ssh)
  [ -n "$ssh_dest" ] || { echo "run.sh: --ssh USER@BOARD (or KEDGE_HIL_SSH) is needed" >&2; exit 64; }
  [ -n "$broker_host" ] || { echo "run.sh: --broker-host ADDR (this machine as the board sees it) is needed" >&2; exit 64; }
  device_modules=/var/lib/kedge-hil/modules
  source hil/ssh/backend.sh
  ;;
esac

# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------
results=() failed=0 latencies=() stats=""
declare -A images applied containers
record() { # name, status
  results+=("| $1 | $2 |")
  [ "$2" = pass ] || failed=1
}
step_module() { # NAME FILE [raw|pulley]
  local name=$1 file=$2 mode=${3:-}
  mkdir -p "$work/modules"
  local out
  case "$mode" in
    raw) out="$work/modules/$name.${file##*.}"; cp "$file" "$out" || return 1 ;;
    pulley) out="$work/modules/$name.cwasm"; "$host_bin" wasm compile --target pulley64 "$file" -o "$out" >/dev/null || return 1 ;;
    *) out="$work/modules/$name.cwasm"; "$host_bin" wasm compile --target "$arch" "$file" -o "$out" >/dev/null || return 1 ;;
  esac
  images[$name]="file://$device_modules/$(basename "$out")@sha256:$(sha256sum "$out" | cut -d' ' -f1)"
}
step_apply() { # MANIFEST
  local m="$work/$(basename "$1")" name
  cp "$1" "$m"
  for name in "${!images[@]}"; do sed -i "s#{{image:$name}}#${images[$name]}#g" "$m"; done
  local now pod
  now=$(date +%s%N)
  for pod in $(awk '/^metadata:/ {m=1} m && /^  name:/ {print $2; m=0}' "$m"); do applied[$pod]=$now; done
  kedge apply -f "$m" --node "$node"
}
pod_is() { kedge get pods 2>/dev/null | awk -v p="$1" '$1 == p' | grep -q "$2"; }
container_id() { # POD: its first container's id while Running
  kedge get pods -o json 2>/dev/null | python3 -c '
import json, sys
for item in json.load(sys.stdin)["items"]:
    s = item["status"]
    if s["name"] == sys.argv[1] and s["phase"] == "Running" and s["container_statuses"]:
        c = s["container_statuses"][0]
        if "Running" in c["state"]:
            print(c["container_id"])
' "$1"
}
runs_anew() { local id; id=$(container_id "$1") && [ -n "$id" ] && [ "$id" != "${containers[$1]:-}" ]; }
step_pod_recreated() { # POD: Running again in a new container (after a restart)
  wait_for 300 runs_anew "$1" || return 1
  containers[$1]=$(container_id "$1")
}
step_pod_running() { # POD
  wait_for 180 pod_is "$1" Running || return 1
  containers[$1]=$(container_id "$1")
  # Start latency: only for the first Running after an apply.
  [ -n "${applied[$1]:-}" ] && latencies+=("$1 $(( ($(date +%s%N) - applied[$1]) / 1000000 ))")
  unset "applied[$1]"
}
pod_waits_with() { # POD TEXT: the first container waits with TEXT in its reason or message
  kedge get pods -o json 2>/dev/null | python3 -c '
import json, sys
pod, text = sys.argv[1:]
for item in json.load(sys.stdin)["items"]:
    s = item["status"]
    if s["name"] == pod and s["container_statuses"]:
        w = s["container_statuses"][0]["state"].get("Waiting") or {}
        sys.exit(0 if text in (w.get("reason") or "") + " " + (w.get("message") or "") else 1)
sys.exit(1)' "$1" "$2"
}
step_pod_waiting() { wait_for 120 pod_waits_with "$1" "$2"; }
pod_exited_with() { # POD CODE: the first container terminated with exit code CODE
  kedge get pods -o json 2>/dev/null | python3 -c '
import json, sys
pod, code = sys.argv[1], int(sys.argv[2])
for item in json.load(sys.stdin)["items"]:
    s = item["status"]
    if s["name"] == pod and s["container_statuses"]:
        c = s["container_statuses"][0]
        t = c["state"].get("Terminated") or (c.get("last_state") or {}).get("Terminated") or {}
        sys.exit(0 if t.get("exit_code") == code else 1)
sys.exit(1)' "$1" "$2"
}
step_pod_exit() { wait_for 120 pod_exited_with "$1" "$2"; }
node_is_ready() { kedge get nodes 2>/dev/null | awk -v n="$node" '$1 == n' | grep Ready | grep -q "$k8s_arch"; }
step_node_ready() {
  wait_for 300 node_is_ready || return 1
  [ -n "${started_at:-}" ] && latencies+=("node $node: start → Ready $(( ($(date +%s%N) - started_at) / 1000000 ))")
  started_at=""
}
step_start() { started_at=$(date +%s%N); be_start; }
step_restart() { started_at=$(date +%s%N); be_restart; }
logs_have() { kedge logs "$1" 2>/dev/null | grep -qF "$2"; }
step_logs_contain() { wait_for 60 logs_have "$1" "$2"; }
have_stats() { stats=$(be_stats) && [ -n "$stats" ]; }
step_measure() { wait_for 30 have_stats; }
log_says_restored() { be_log 2>/dev/null | grep -q "restored desired pods from the store pods=$1"; }
step_restored() { wait_for 300 log_says_restored "$1"; }

be_prepare_done=0
run_step() { # VERB ARGS...
  local verb=$1; shift
  if [ $be_prepare_done = 0 ] && [ "$verb" != module ]; then
    be_prepare >>"$work/steps.log" 2>&1 || { record "prepare the device" FAIL; return; }
    be_prepare_done=1
  fi
  local fn="step_${verb//-/_}"
  type "$fn" >/dev/null 2>&1 || { record "$verb: unknown step" FAIL; return; }
  if "$fn" "$@" >>"$work/steps.log" 2>&1; then record "$verb${*:+ $*}" pass; else record "$verb${*:+ $*}" FAIL; fi
}

record "binary is a static $arch executable" "$(file -L "$device_bin" | grep -q "$( [ $arch = aarch64 ] && echo 'ARM aarch64' || echo 'x86-64')" && file -L "$device_bin" | grep -Eq 'statically linked|static-pie linked' && echo pass || echo FAIL)"
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  [ -n "${line// }" ] || continue
  eval "words=($line)"
  [ $failed = 0 ] || { record "${words[*]}" skipped; continue; }
  run_step "${words[@]}"
done <"$scenario"

size=$(stat -L -c %s "$device_bin")
read -r rss pss cpu <<<"${stats:-? ? ?}"
echo "## HIL report: $(basename "$scenario" .scn) on $backend ($arch)"
echo
echo "| step | result |"
echo "|---|---|"
printf '%s\n' "${results[@]}"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| binary size ($arch musl, stripped) | $size bytes ($(awk -v s="$size" 'BEGIN {printf "%.1f", s / 1048576}') MiB) |"
note=""; [ "$backend" = qemu-user ] && [ "$arch" != "$(uname -m)" ] && note=" (includes the emulator)"
echo "| agent RSS / PSS on the device$note | $rss / $pss KiB |"
echo "| agent CPU time so far$note | $cpu ms |"
for l in "${latencies[@]}"; do
  case "$l" in
    "node "*) echo "| ${l% *}, seen from the host | ${l##* } ms |" ;;
    *) echo "| ${l%% *}: apply → Running seen from the host (polled every 0.2 s) | ${l##* } ms |" ;;
  esac
done
if [ $failed -ne 0 ]; then
  echo; echo "== steps log"; tail -40 "$work/steps.log"; echo "== agent log (tail)"; be_log 2>/dev/null | tail -40
fi
exit $failed
