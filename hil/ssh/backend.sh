# hil/run.sh back-end `ssh`: a real board reached with ssh (key-based login
# as root, or as a user with passwordless sudo). Copies the binary, the
# modules and install/, installs kedge as a systemd service pointed at this
# machine's broker, and reads the agent's state with journalctl and /proc.
# Sourced by hil/run.sh; uses $ssh_dest, $broker_host, $port, $node, $work,
# $arch, $device_bin, $device_modules.
ssh_opts=(-o BatchMode=yes -o StrictHostKeyChecking=accept-new -o ConnectTimeout=10)
on_board() { ssh "${ssh_opts[@]}" "$ssh_dest" "$@"; }
# Runs the shell script on stdin on the board as root.
board_sh() { on_board 'if [ "$(id -u)" -eq 0 ]; then sh -s; else sudo -n sh -s; fi'; }
be_started_at=""
be_prepare() {
  local board_arch
  board_arch=$(on_board uname -m) || return 1
  [ "$board_arch" = "$arch" ] || { echo "the board is $board_arch, not $arch" >&2; return 1; }
  on_board 'command -v systemctl >/dev/null && rm -rf /tmp/kedge-hil && mkdir -p /tmp/kedge-hil/install' || return 1
  scp "${ssh_opts[@]}" -q "$device_bin" "$ssh_dest:/tmp/kedge-hil/kedge" || return 1
  scp "${ssh_opts[@]}" -q install/install.sh install/kedge.service "$ssh_dest:/tmp/kedge-hil/install/" || return 1
  if [ -d "$work/modules" ]; then
    scp "${ssh_opts[@]}" -q "$work"/modules/* "$ssh_dest:/tmp/kedge-hil/" || return 1
  fi
  # A fresh data dir and config for the run: the scenario owns the board.
  board_sh <<EOS
set -e
mkdir -p $device_modules && chmod 0755 /var/lib/kedge-hil $device_modules
for m in /tmp/kedge-hil/*; do [ -f "\$m" ] && [ "\$(basename "\$m")" != kedge ] && install -m 0644 "\$m" $device_modules/; done
systemctl stop kedge.service 2>/dev/null || true
rm -rf /var/lib/kedge/* /etc/kedge/config.toml
sh /tmp/kedge-hil/install/install.sh --binary /tmp/kedge-hil/kedge --broker mqtt://$broker_host:$port --node $node --no-start
EOS
}
be_start() {
  be_started_at=$(on_board "date '+%Y-%m-%d %H:%M:%S'")
  echo 'systemctl daemon-reload && systemctl restart kedge.service' | board_sh
}
# Kill -9 the agent as a crash would; systemd's Restart=always brings it back.
be_restart() { echo 'systemctl kill --signal=KILL kedge.service' | board_sh; }
be_stats() {
  board_sh <<'EOS'
pid=$(systemctl show -p MainPID --value kedge.service)
[ "$pid" -gt 0 ] || exit 1
rss=$(awk '/^Rss:/ {print $2}' /proc/$pid/smaps_rollup)
pss=$(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup)
hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu=$(awk -v hz="$hz" '{print int(($14 + $15) * 1000 / hz)}' /proc/$pid/stat)
echo "$rss $pss $cpu"
EOS
}
be_log() { echo "journalctl -u kedge.service --no-pager -o cat --since '$be_started_at'" | board_sh; }
be_stop() { echo 'systemctl stop kedge.service' | board_sh; }
