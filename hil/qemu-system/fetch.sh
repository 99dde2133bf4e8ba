#!/usr/bin/env bash
# Fetches what the qemu-system back-end boots (cached in $KEDGE_HIL_CACHE,
# default $KEDGE_CACHE_ROOT/kedge-hil-cache = /var/tmp/kedge-hil-cache): Debian's arm64 kernel and its modules,
# and busybox-static for arm64, with apt (arm64 added as a foreign
# architecture), plus qemu-system-arm, cpio and e2fsprogs. Prints the cache
# dir on stdout, and nothing else there: callers capture it
# (`cache=$(hil/qemu-system/fetch.sh)`), so everything else (apt's progress
# and errors) goes to stderr.
set -euo pipefail
exec 3>&1 1>&2 # fd 3: the one line of output; stdout is stderr from here on
source "$(dirname "$0")/../../scripts/cache-env.sh" # KEDGE_HIL_CACHE
cache="$KEDGE_HIL_CACHE"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for p in qemu-system-arm cpio e2fsprogs; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
updated=0
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq; updated=1
fi
if [ ${#need[@]} -gt 0 ]; then
  [ $updated = 1 ] || $SUDO apt-get update -qq
  updated=1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
mkdir -p "$cache"
cd "$cache"
if [ ! -f kernel/vmlinuz ] || [ ! -f busybox/bin/busybox ]; then
  # linux-image-arm64 is the metapackage; its dependency is today's kernel.
  kpkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$kpkg" ]; then
    [ $updated = 1 ] || $SUDO apt-get update -qq
    kpkg=$(apt-cache depends linux-image-arm64:arm64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  rm -rf debs kernel busybox && mkdir debs
  # apt-get download prints progress ("Get:1 http://…") and, as root, a
  # note that the download is unsandboxed: both to stderr, the note dropped.
  (cd debs && apt-get download "${kpkg%:arm64}:arm64" busybox-static:arm64 2>&1 | grep -v unsandboxed || true)
  mkdir -p kernel busybox
  dpkg-deb -x debs/linux-image-*.deb kernel/root
  dpkg-deb -x debs/busybox-static_*.deb busybox
  cp kernel/root/boot/vmlinuz-* kernel/vmlinuz
  rm -rf debs
fi
echo "$cache" >&3
