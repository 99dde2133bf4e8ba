#!/bin/sh
# mmdebstrap customize hook for hil/ssh/emulated-board.sh: turns the Debian
# arm64 tree at $1 into a small board that boots fast: root on /dev/vda,
# DHCP with systemd-networkd (qemu's user network), sshd with key login as
# root, a volatile journal, and no units that only make boot wait.
set -eu
root=$1
echo kedge-board >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 kedge-board\n' >"$root/etc/hosts"
# The kernel mounts the root (root=/dev/vda rw): no fstab entry, so nothing
# waits for udev to announce the disk, and no fsck.
echo '# root: /dev/vda, mounted read-write by the kernel' >"$root/etc/fstab"

mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/10-wired.network" <<'EOF'
[Match]
Type=ether

[Network]
DHCP=ipv4
LinkLocalAddressing=no
IPv6AcceptRA=no
EOF
# network-online.target (kedge.service is ordered after it): any link up.
mkdir -p "$root/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat >"$root/etc/systemd/system/systemd-networkd-wait-online.service.d/any.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF

mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n' >"$root/etc/systemd/journald.conf.d/kedge-hil.conf"

mkdir -p "$root/etc/ssh/sshd_config.d"
cat >"$root/etc/ssh/sshd_config.d/kedge-hil.conf" <<'EOF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
EOF
mkdir -p "$root/root/.ssh"
chmod 0700 "$root/root/.ssh"
# A board user with passwordless sudo, as on boards that do not let root in;
# hil/ssh/emulated-board.sh puts the run's key here too.
chroot "$root" useradd --uid 1000 --user-group --create-home --shell /bin/bash board
echo 'board ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/board"
chmod 0440 "$root/etc/sudoers.d/board"
mkdir -p "$root/home/board/.ssh"
chmod 0700 "$root/home/board/.ssh"
chroot "$root" chown -R board:board /home/board/.ssh

chroot "$root" systemctl enable systemd-networkd.service ssh.service
# Nothing logs in on a console; timers that fetch or scrub would only compete
# with the scenario for the emulated CPU.
chroot "$root" systemctl mask \
  serial-getty@ttyAMA0.service getty@tty1.service getty.target console-getty.service \
  apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
  systemd-timesyncd.service man-db.timer dpkg-db-backup.timer \
  systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
  remote-fs.target cryptsetup.target 2>/dev/null || true

# Smaller image: no apt lists or package caches.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
