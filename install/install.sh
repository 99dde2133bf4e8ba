#!/bin/sh
# Installs the kedge agent on a device (POSIX sh: works with busybox):
# the static binary, a config file, the data directory, a system user and
# the systemd unit, then enables and starts the service.
#
#   install/install.sh --binary ./kedge --broker mqtts://broker:8883 [--node NAME]
#       [--ca-file ca.pem --cert-file dev.pem --key-file dev.key]
#       [--root DIR] [--no-start] [--user kedge]
#
# --root installs into another root (an image being built, or a test); it
# neither creates the user through the system tools nor starts anything.
# An existing /etc/kedge/config.toml is kept.
set -eu

usage() { sed -n '2,14s/^# \{0,1\}//p' "$0"; exit "${1:-0}"; }
root=/ binary="" broker="" node="" ca="" cert="" key="" start=1 user=kedge
here=$(cd "$(dirname "$0")" >/dev/null && pwd) # >/dev/null: cd prints the dir when CDPATH is set
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=$2; shift 2 ;;
    --broker) broker=$2; shift 2 ;;
    --node) node=$2; shift 2 ;;
    --ca-file) ca=$2; shift 2 ;;
    --cert-file) cert=$2; shift 2 ;;
    --key-file) key=$2; shift 2 ;;
    --root) root=$2; shift 2 ;;
    --user) user=$2; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; usage 64 ;;
  esac
done
[ -n "$binary" ] || { echo "install.sh: --binary is required" >&2; exit 64; }
[ -f "$binary" ] || { echo "install.sh: no binary at $binary" >&2; exit 66; }
root=${root%/}
bindir=$root/usr/local/bin confdir=$root/etc/kedge datadir=$root/var/lib/kedge
unitdir=$root/etc/systemd/system

# The binary must run here (right architecture, static): ask it its version.
if [ -z "$root" ]; then
  "$binary" --version >/dev/null || { echo "install.sh: $binary does not run on this machine ($(uname -m))" >&2; exit 1; }
fi

# The service user: no login, home is the data directory.
if [ -z "$root" ]; then
  if ! id "$user" >/dev/null 2>&1; then
    if command -v useradd >/dev/null; then
      useradd --system --user-group --home-dir /var/lib/kedge --no-create-home --shell /usr/sbin/nologin "$user"
    else # busybox
      addgroup -S "$user" && adduser -S -D -H -h /var/lib/kedge -s /sbin/nologin -G "$user" "$user"
    fi
  fi
else
  # Another root: add the entries to its passwd and group files directly.
  mkdir -p "$root/etc"
  touch "$root/etc/passwd" "$root/etc/group"
  if ! grep -q "^$user:" "$root/etc/passwd"; then
    uid=999
    while cut -d: -f3 "$root/etc/passwd" | grep -qx "$uid" || cut -d: -f3 "$root/etc/group" | grep -qx "$uid"; do uid=$((uid - 1)); done
    echo "$user:x:$uid:" >>"$root/etc/group"
    echo "$user:x:$uid:$uid:kedge agent:/var/lib/kedge:/usr/sbin/nologin" >>"$root/etc/passwd"
  fi
fi
owner() { # chown only where the user exists (not in another root)
  if [ -z "$root" ]; then chown "$@"; fi
}

mkdir -p "$bindir" "$confdir" "$datadir" "$unitdir"
install -m 0755 "$binary" "$bindir/kedge"
chmod 0750 "$datadir"; owner "$user:$user" "$datadir"

if [ ! -f "$confdir/config.toml" ]; then
  {
    echo "# kedge agent configuration; every key: kedge config keys (docs/config.md)"
    [ -n "$node" ] && echo "node_name = \"$node\""
    echo "data_dir = \"/var/lib/kedge\""
    echo
    echo "[broker]"
    echo "url = \"$broker\""
    for pair in "ca_file:$ca" "cert_file:$cert" "key_file:$key"; do
      name=${pair%%:*} file=${pair#*:}
      [ -n "$file" ] || continue
      install -m 0640 "$file" "$confdir/$(basename "$file")"
      owner "root:$user" "$confdir/$(basename "$file")"
      echo "$name = \"/etc/kedge/$(basename "$file")\""
    done
  } >"$confdir/config.toml"
  chmod 0640 "$confdir/config.toml"; owner "root:$user" "$confdir/config.toml"
fi

sed "s/^User=kedge$/User=$user/; s/^Group=kedge$/Group=$user/" "$here/kedge.service" >"$unitdir/kedge.service"
chmod 0644 "$unitdir/kedge.service"

echo "installed kedge into ${root:-/}: $bindir/kedge, $confdir/config.toml, $datadir, $unitdir/kedge.service"
if [ -z "$root" ] && [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable --now kedge.service
  systemctl restart kedge.service
  echo "kedge.service is $(systemctl is-active kedge.service)"
fi
