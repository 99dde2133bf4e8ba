#!/usr/bin/env bash
# An emulated board for the HIL `ssh` back-end: a Debian bookworm arm64
# machine (qemu-system-aarch64 -M virt, TCG) with systemd as PID 1 and
# openssh-server, reached with ssh over qemu's user networking (a free local
# port forwarded to the board's port 22; the board sees this machine as
# 10.0.2.2). It is what a real board looks like to hil/run.sh --backend ssh.
#
#   hil/ssh/emulated-board.sh [COMMAND ARGS...]
#
# Builds once, into $KEDGE_HIL_BOARD_CACHE (default $KEDGE_HIL_CACHE/ssh-board,
# i.e. /var/tmp/kedge-hil-cache/ssh-board; scripts/cache-env.sh): a root filesystem made by mmdebstrap (arm64
# maintainer scripts run under qemu-user through binfmt_misc), Debian's
# kernel and an initramfs that mounts a virtio root, and an ext4 image made
# from the tree with mkfs.ext4 -d (nothing is mounted). Each run boots a copy
# of that image with a fresh ssh key in /root/.ssh/authorized_keys (written
# with debugfs), waits until ssh answers, exports
#   KEDGE_HIL_SSH=root@127.0.0.1  KEDGE_HIL_SSH_PORT  KEDGE_HIL_SSH_IDENTITY
#   KEDGE_HIL_SSH_OPTIONS (ssh -o options, space separated)
#   KEDGE_HIL_BROKER_HOST=10.0.2.2  KEDGE_HIL_BROKER_LISTEN=127.0.0.1
#   KEDGE_HIL_BOARD_CONSOLE (the board's serial console log)
# runs COMMAND with them (hil/run.sh reads them as defaults), and powers the
# board off when COMMAND ends. Without COMMAND it prints the variables and
# keeps the board up until interrupted. KEDGE_HIL_BOARD_USER=board logs in
# as the board's user with passwordless sudo instead of root.
#
# Standard output carries only COMMAND's output, or the export lines (which
# a caller may eval); everything this script says or runs itself goes to
# stderr.
set -euo pipefail
exec 3>&1 1>&2 # fd 3: the real stdout; stdout is stderr from here on
cd "$(dirname "$0")/../.."
source scripts/cache-env.sh # KEDGE_HIL_BOARD_CACHE
cache="$KEDGE_HIL_BOARD_CACHE"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
log() { echo "emulated-board: $*" >&2; }

# ---------------------------------------------------------------------------
# Host tools
# ---------------------------------------------------------------------------
scripts/apt-install.sh mmdebstrap arch-test qemu-user-static qemu-system-arm e2fsprogs openssh-client

# ---------------------------------------------------------------------------
# The cached image
# ---------------------------------------------------------------------------
# Bump when the recipe below changes: a new recipe builds a new image.
recipe=2
image="$cache/rootfs-$recipe.ext4"
build_image() {
  # arm64 maintainer scripts run in the chroot through qemu-aarch64-static,
  # registered with binfmt_misc ("F": the interpreter is opened now, so it
  # works inside the chroot).
  if ! arch-test arm64 >/dev/null 2>&1; then
    [ -e /proc/sys/fs/binfmt_misc/register ] || $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] ||
      $SUDO sh -c 'cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register'
    arch-test arm64 >/dev/null || { log "cannot run arm64 binaries through binfmt_misc"; return 1; }
  fi
  local tree="$cache/rootfs.tmp" t0=$SECONDS
  $SUDO rm -rf "$tree" "$image.tmp"
  mkdir -p "$cache"
  log "building a Debian bookworm arm64 root filesystem in $tree (once; cached)"
  # initramfs-tools: only what mounts a virtio disk as root (MODULES=list),
  # set before the kernel's postinst builds the initramfs.
  # shellcheck disable=SC2016 # the hooks are run by mmdebstrap's shell
  $SUDO mmdebstrap --arch=arm64 --variant=minbase \
    --include=systemd,systemd-sysv,openssh-server,sudo,linux-image-arm64,initramfs-tools,kmod,iproute2,procps \
    --setup-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"' \
    --setup-hook='echo MODULES=list >"$1/etc/initramfs-tools/conf.d/kedge-hil"' \
    --setup-hook='printf "%s\n" virtio_pci virtio_blk virtio_net ext4 >"$1/usr/share/initramfs-tools/modules.d/kedge-hil"' \
    --customize-hook="\"$PWD/hil/ssh/board-setup.sh\" \"\$1\"" \
    bookworm "$tree" http://deb.debian.org/debian >"$cache/build.log" 2>&1 ||
    { log "mmdebstrap failed; see $cache/build.log"; tail -20 "$cache/build.log" >&2; return 1; }
  $SUDO cp "$tree"/boot/vmlinuz-* "$cache/vmlinuz.tmp"
  $SUDO cp "$tree"/boot/initrd.img-* "$cache/initrd.img.tmp"
  # The image: the tree plus room for the data dir and logs.
  local used
  used=$($SUDO du -sm "$tree" | cut -f1)
  $SUDO mkfs.ext4 -q -F -L kedge-root -d "$tree" "$image.tmp" "$((used + 768))M"
  $SUDO chown "$(id -u):$(id -g)" "$image.tmp" "$cache/vmlinuz.tmp" "$cache/initrd.img.tmp"
  rm -f "$cache"/rootfs-*.ext4 "$cache"/vmlinuz-* "$cache"/initrd.img-* # older recipes
  mv "$cache/vmlinuz.tmp" "$cache/vmlinuz-$recipe"
  mv "$cache/initrd.img.tmp" "$cache/initrd.img-$recipe"
  mv "$image.tmp" "$image"
  $SUDO rm -rf "$tree"
  log "built $image in $((SECONDS - t0)) s"
}
# One build at a time (CI and a developer may share the cache).
mkdir -p "$cache"
exec {lock}>"$cache/build.lock"
flock "$lock"
[ -f "$image" ] || build_image
exec {lock}>&-

# ---------------------------------------------------------------------------
# One run: a copy of the image with a fresh key, booted
# ---------------------------------------------------------------------------
run=$(mktemp -d /tmp/kedge-board.XXXXXX)
qemu_pid=""
ssh_port=""
board_ssh() {
  ssh -i "$run/id" -p "$ssh_port" -o BatchMode=yes -o ConnectTimeout=5 \
    -o UserKnownHostsFile="$run/known_hosts" -o StrictHostKeyChecking=accept-new \
    -o ServerAliveInterval=5 -o LogLevel=ERROR root@127.0.0.1 "$@" </dev/null
}
shutdown_board() {
  set +e
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    # A clean power-off; the copy of the disk is thrown away, so a board that
    # does not answer is switched off.
    board_ssh 'systemctl --no-block poweroff' >/dev/null 2>&1 &&
      timeout 30 tail --pid="$qemu_pid" -f /dev/null
    kill -0 "$qemu_pid" 2>/dev/null && log "the board did not power off; switching it off"
    kill "$qemu_pid" 2>/dev/null
    wait "$qemu_pid" 2>/dev/null
  fi
  rm -rf "$run"
}
trap shutdown_board EXIT
trap 'exit 130' INT TERM

ssh-keygen -q -t ed25519 -N '' -C kedge-hil -f "$run/id"
cp --sparse=always "$image" "$run/disk.ext4"
# The key goes in without mounting: debugfs writes into the ext4 image.
# For root and for the sudo user `board` (uid 1000).
debugfs -w -f - "$run/disk.ext4" >/dev/null 2>"$run/debugfs.err" <<EOD
cd /root/.ssh
write $run/id.pub authorized_keys
sif authorized_keys mode 0100600
sif authorized_keys uid 0
sif authorized_keys gid 0
cd /home/board/.ssh
write $run/id.pub authorized_keys
sif authorized_keys mode 0100600
sif authorized_keys uid 1000
sif authorized_keys gid 1000
EOD
for f in /root/.ssh/authorized_keys /home/board/.ssh/authorized_keys; do
  debugfs -R "stat $f" "$run/disk.ext4" 2>/dev/null | grep -q 'Mode:  0600' ||
    { log "could not write the ssh key into the image ($f)"; cat "$run/debugfs.err" >&2; exit 1; }
done

boot_start=$SECONDS
for attempt in 1 2 3; do
  ssh_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  qemu-system-aarch64 -M virt -cpu cortex-a57 -smp 2 -m 1024 -nographic -no-reboot \
    -kernel "$cache/vmlinuz-$recipe" -initrd "$cache/initrd.img-$recipe" \
    -append "root=/dev/vda rw fsck.mode=skip console=ttyAMA0 quiet systemd.show_status=0" \
    -drive "file=$run/disk.ext4,format=raw,if=virtio" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$ssh_port-:22" -device virtio-net-pci,netdev=n0 \
    -device virtio-rng-pci \
    </dev/null >"$run/console.log" 2>&1 &
  qemu_pid=$!
  sleep 1
  kill -0 "$qemu_pid" 2>/dev/null && break # else: the port was taken meanwhile
  wait "$qemu_pid" 2>/dev/null; qemu_pid=""
done
[ -n "$qemu_pid" ] || { log "qemu did not start"; cat "$run/console.log" >&2; exit 1; }
deadline=$((SECONDS + ${KEDGE_HIL_BOOT_TIMEOUT:-300}))
until board_ssh true 2>/dev/null; do
  if ! kill -0 "$qemu_pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
    log "the board did not answer ssh; console:"; tail -40 "$run/console.log" >&2; exit 1
  fi
  sleep 1
done
log "booted; ssh answered after $((SECONDS - boot_start)) s ($(board_ssh 'systemd-analyze 2>/dev/null | head -1'))"

export KEDGE_HIL_SSH=${KEDGE_HIL_BOARD_USER:-root}@127.0.0.1 KEDGE_HIL_SSH_PORT=$ssh_port KEDGE_HIL_SSH_IDENTITY=$run/id
export KEDGE_HIL_SSH_OPTIONS="UserKnownHostsFile=$run/known_hosts StrictHostKeyChecking=accept-new"
# qemu's user network reaches the host's loopback: the broker need not
# listen on every interface.
export KEDGE_HIL_BROKER_HOST=10.0.2.2 KEDGE_HIL_BROKER_LISTEN=127.0.0.1 KEDGE_HIL_BOARD_CONSOLE=$run/console.log
if [ $# -gt 0 ]; then
  "$@" >&3 3>&-
else
  for v in KEDGE_HIL_SSH KEDGE_HIL_SSH_PORT KEDGE_HIL_SSH_IDENTITY KEDGE_HIL_SSH_OPTIONS KEDGE_HIL_BROKER_HOST KEDGE_HIL_BROKER_LISTEN; do
    printf 'export %s=%q\n' "$v" "${!v}" >&3
  done
  log "the board runs until interrupted (Ctrl-C)"
  wait "$qemu_pid"
fi
