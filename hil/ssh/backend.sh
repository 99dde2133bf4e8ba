# hil/run.sh back-end `ssh`: a board reached with ssh (key-based login as
# root, or as a user with passwordless sudo), a real one or the emulated one
# of hil/ssh/emulated-board.sh. Copies the binary, the modules and install/,
# installs kedge as a systemd service pointed at this machine's broker, and
# reads the agent's state with journalctl and /proc. One ssh connection is
# shared by all commands (ControlMaster). Sourced by hil/run.sh; uses
# $ssh_dest, $ssh_port, $ssh_identity, $ssh_options, $broker_host, $port,
# $node, $work, $arch, $device_bin, $device_modules.
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=10 -o ServerAliveInterval=15
  -o ControlMaster=auto -o "ControlPath=$work/ssh-%C" -o ControlPersist=120)
[ -n "$ssh_port" ] && ssh_opts+=(-p "$ssh_port")
[ -n "$ssh_identity" ] && ssh_opts+=(-i "$ssh_identity" -o IdentitiesOnly=yes)
have_known_hosts=0
for o in "${ssh_options[@]}"; do
  ssh_opts+=(-o "$o")
  case "$o" in StrictHostKeyChecking=*|UserKnownHostsFile=*) have_known_hosts=1 ;; esac
done
[ $have_known_hosts = 1 ] || ssh_opts+=(-o StrictHostKeyChecking=accept-new)
# A command on the board. Not reading stdin: run.sh reads the scenario there.
on_board() { ssh "${ssh_opts[@]}" "$ssh_dest" "$@" </dev/null; }
# The same, fed with this stdin.
on_board_stdin() { ssh "${ssh_opts[@]}" "$ssh_dest" "$@"; }
# Runs the shell script on stdin on the board as root.
board_sh() { on_board_stdin 'if [ "$(id -u)" -eq 0 ]; then sh -s; else sudo -n sh -s; fi'; }
be_started_at=""
be_prepare() {
  local board_arch
  board_arch=$(on_board uname -m) || return 1
  [ "$board_arch" = "$arch" ] || { echo "the board is $board_arch, not $arch" >&2; return 1; }
  on_board 'command -v systemctl >/dev/null' || { echo "the board has no systemd (systemctl)" >&2; return 1; }
  # Everything in one stream (tar: no sftp-server needed on the board).
  local ship="$work/ship"
  rm -rf "$ship"; mkdir -p "$ship/install" "$ship/modules"
  cp "$device_bin" "$ship/kedge"
  cp install/install.sh install/kedge.service "$ship/install/"
  [ -d "$work/modules" ] && cp "$work"/modules/* "$ship/modules/"
  # /var/tmp, not /tmp: install.sh runs the binary, and /tmp may be noexec.
  local dir
  dir=$(on_board 'mktemp -d /var/tmp/kedge-hil.XXXXXX') && [ -n "$dir" ] || return 1
  tar -C "$ship" -cf - . | on_board_stdin "tar -xf - -C $dir" || return 1
  # A fresh data dir and config for the run: the scenario owns the board.
  # Heartbeats every second, as on the other back-ends.
  board_sh <<EOS
set -e
systemctl stop kedge.service 2>/dev/null || true
rm -rf $device_modules && mkdir -p $device_modules && chmod 0755 /var/lib/kedge-hil $device_modules
for m in $dir/modules/*; do [ -f "\$m" ] && install -m 0644 "\$m" $device_modules/; done
rm -rf /var/lib/kedge/* /etc/kedge/config.toml
sh $dir/install/install.sh --binary $dir/kedge --broker mqtt://$broker_host:$port --node $node --no-start
printf '\n[node]\nheartbeat_ms = 1000\n' >>/etc/kedge/config.toml
rm -rf $dir
systemctl daemon-reload
EOS
}
be_start() { # one round trip: the board's clock (for journalctl --since), then the start
  # Captured: only the date may reach stdout.
  be_started_at=$(echo "date '+%Y-%m-%d %H:%M:%S' && systemctl restart kedge.service >&2" | board_sh) || return 1
}
# Kill -9 the agent as a crash would; systemd's Restart=always brings it back.
be_restart() { echo 'systemctl kill --signal=KILL kedge.service' | board_sh; }
be_stats() {
  board_sh <<'EOS'
pid=$(systemctl show -p MainPID --value kedge.service)
[ "$pid" -gt 0 ] || exit 1
# RSS and PSS from one read of smaps_rollup (two reads can disagree).
mem=$(awk '/^Rss:/ {r = $2} /^Pss:/ {p = $2} END {print r, p}' /proc/$pid/smaps_rollup)
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu=$(awk -v hz="$hz" '{print int(($14 + $15) * 1000 / hz)}' /proc/$pid/stat)
echo "$mem $cpu"
EOS
}
be_log() { echo "journalctl -u kedge.service --no-pager -o cat --since '$be_started_at'" | board_sh; }
be_stop() {
  echo 'systemctl stop kedge.service' | board_sh
  ssh "${ssh_opts[@]}" -O exit "$ssh_dest" 2>/dev/null
}
