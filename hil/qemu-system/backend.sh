# hil/run.sh back-end `qemu-system`: a whole emulated arm64 machine (qemu
# -M virt, TCG). Debian's arm64 kernel boots an initramfs made here: busybox,
# the virtio and ext4 modules, kedge, its config and the scenario's modules.
# Its init mounts a virtio disk at /var/lib/kedge (the data dir survives
# reboots), configures user networking (the host is 10.0.2.2, where the
# broker listens on 127.0.0.1) and runs kedge like a service that restarts.
# It prints the agent's log and, every 2 s, a stats line to the serial
# console. `restart` power-cycles the machine (kill qemu, boot again).
# Sourced by hil/run.sh; uses $arch, $device_bin, $port, $node, $work.
qemu_pid=""
be_prepare() {
  [ "$arch" = aarch64 ] || { echo "qemu-system back-end: arm64 only" >&2; return 1; }
  local cache initrd="$work/initrd" kver mods m
  cache=$(hil/qemu-system/fetch.sh) || return 1
  rm -rf "$initrd"; mkdir -p "$initrd"/{bin,sbin,etc/kedge,proc,sys,dev,run,tmp,modules,lib/modules,usr/bin,var/lib/kedge}
  cp "$cache/busybox/bin/busybox" "$initrd/bin/busybox"
  install -m 0755 "$device_bin" "$initrd/usr/bin/kedge"
  [ -d "$work/modules" ] && cp "$work"/modules/* "$initrd/modules/"
  # Kernel modules for virtio (PCI, block, net) and ext4, dependencies first
  # (read from each module's .modinfo: the package ships no modules.dep).
  kver=$(ls "$cache/kernel/root/lib/modules")
  local moddir="$cache/kernel/root/lib/modules/$kver"
  mods=()
  add_mod() { # module name
    local path dep
    path=$(find "$moddir" -name "$1.ko" | head -1)
    [ -n "$path" ] || { echo "no kernel module $1" >&2; return 1; }
    for dep in $(tr '\0' '\n' <"$path" | grep -a '^depends=' | head -1 | cut -d= -f2 | tr ',' ' '); do
      add_mod "$dep" || return 1
    done
    case " ${mods[*]} " in *" $path "*) ;; *) mods+=("$path") ;; esac
  }
  for m in virtio_pci virtio_blk virtio_net crc32c_generic ext4; do add_mod "$m" || return 1; done
  for m in "${mods[@]}"; do cp "$m" "$initrd/lib/modules/"; basename "$m" >>"$initrd/lib/modules/order"; done
  cat >"$initrd/etc/kedge/config.toml" <<EOC
node_name = "$node"
data_dir = "/var/lib/kedge"
[broker]
url = "mqtt://10.0.2.2:$port"
[node]
heartbeat_ms = 1000
EOC
  cat >"$initrd/init" <<'EOI'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order); do insmod /lib/modules/$m; done
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
mount -t ext4 /dev/vda /var/lib/kedge || echo "KEDGE-INIT no data disk"
hostname kedge-vm
echo "KEDGE-INIT up"
# Stats for the HIL report: the agent's RSS, PSS (KiB) and CPU time (ms).
(while sleep 2; do
  pid=$(cat /run/kedge.pid 2>/dev/null) || continue
  [ -r /proc/$pid/smaps_rollup ] || continue
  echo "KEDGE-STATS $(awk '/^Rss:/ {print $2}' /proc/$pid/smaps_rollup) $(awk '/^Pss:/ {print $2}' /proc/$pid/smaps_rollup) $(awk '{print ($14 + $15) * 10}' /proc/$pid/stat)"
done) 2>/dev/null &
# Like systemd's Restart=always. The log goes to the console through a
# pipe, as under journald (not a terminal: no colours).
mkfifo /run/kedge.log; cat /run/kedge.log &
while true; do
  /usr/bin/kedge agent --config /etc/kedge/config.toml >/run/kedge.log 2>&1 & echo $! >/run/kedge.pid
  wait $!; echo "KEDGE-INIT agent exited with $?"; sleep 2
done
EOI
  chmod 0755 "$initrd/init"
  (cd "$initrd" && find . | cpio -o -H newc 2>/dev/null | gzip -1) >"$work/initrd.gz" || return 1
  truncate -s 256M "$work/data.img" && mkfs.ext4 -q -F "$work/data.img" || return 1
  qemu_kernel="$cache/kernel/vmlinuz"
}
be_start() {
  local accel=(-M virt -cpu cortex-a57)
  qemu-system-aarch64 "${accel[@]}" -m 512 -smp 2 -nographic -no-reboot \
    -kernel "$qemu_kernel" -initrd "$work/initrd.gz" -append "console=ttyAMA0 rdinit=/init quiet" \
    -drive "file=$work/data.img,format=raw,if=virtio" \
    -netdev user,id=n0 -device virtio-net-pci,netdev=n0 \
    </dev/null >>"$work/console.log" 2>&1 & qemu_pid=$!; pids+=($qemu_pid)
}
# A power cycle: the data disk keeps whatever reached it.
be_restart() { kill -9 "$qemu_pid" 2>/dev/null; wait "$qemu_pid" 2>/dev/null; be_start; }
be_stats() { tr -d '\r' <"$work/console.log" | grep -a '^KEDGE-STATS [0-9]* [0-9]* [0-9]*$' | tail -1 | cut -d' ' -f2-4; }
be_log() { tr -d '\r' <"$work/console.log"; }
be_stop() { [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; }
