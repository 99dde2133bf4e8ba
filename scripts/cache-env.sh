# shellcheck shell=bash
# Sourced (bash) by scripts/, hil/ and tests/k8s-harness/{,kubectl/}build.sh: where
# every persistent cache of the test suite lives, from one root.
#
# Each cache has its own variable; one set by the caller wins. The others
# are derived from KEDGE_CACHE_ROOT (default /var/tmp, which gives the paths
# the suite has always used, so warm caches stay valid):
#
#   CARGO_TARGET_DIR         $KEDGE_CACHE_ROOT/kedge-target (.ci/run: kedge-ci-target)
#   KEDGE_GUESTS_TARGET_DIR  $KEDGE_CACHE_ROOT/kedge-guests-target  (tests/wasm-guests)
#   GOCACHE                  $KEDGE_CACHE_ROOT/kedge-go-cache       (tests/k8s-harness, its kubectl/)
#   GOMODCACHE               $KEDGE_CACHE_ROOT/kedge-go-mod
#   KEDGE_K8S_BIN_ROOT       $KEDGE_CACHE_ROOT/kedge-k8s-bin        (control-plane binaries, kubectl)
#   KEDGE_HIL_CACHE          $KEDGE_CACHE_ROOT/kedge-hil-cache      (qemu-system kernel, busybox)
#   KEDGE_HIL_BOARD_CACHE    $KEDGE_HIL_CACHE/ssh-board             (the emulated board's image)
#   KEDGE_CRI_IMAGE_CACHE    $KEDGE_CACHE_ROOT                      (holds kedge-cri-images-<key>)
#   KEDGE_FUZZ_TARGET_DIR    $KEDGE_CACHE_ROOT/kedge-fuzz-target    (tests/fuzz, nightly)
#   KEDGE_FUZZ_CORPUS        $KEDGE_CACHE_ROOT/kedge-fuzz-corpus    (scripts/fuzz.sh)
#
# The Rust test support (tests/support) applies the same rule to the two it
# reads (KEDGE_GUESTS_TARGET_DIR, KEDGE_CRI_IMAGE_CACHE), so a plain `cargo
# test` agrees with the scripts. CARGO_HOME (cargo's registry) and the
# rustup toolchains are not the suite's: scripts/ci-cold.sh points CARGO_HOME
# at an empty directory for a cold run.
kedge_cache_root="${KEDGE_CACHE_ROOT:-/var/tmp}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$kedge_cache_root/kedge-target}"
export KEDGE_GUESTS_TARGET_DIR="${KEDGE_GUESTS_TARGET_DIR:-$kedge_cache_root/kedge-guests-target}"
export GOCACHE="${GOCACHE:-$kedge_cache_root/kedge-go-cache}"
export GOMODCACHE="${GOMODCACHE:-$kedge_cache_root/kedge-go-mod}"
export KEDGE_K8S_BIN_ROOT="${KEDGE_K8S_BIN_ROOT:-$kedge_cache_root/kedge-k8s-bin}"
export KEDGE_HIL_CACHE="${KEDGE_HIL_CACHE:-$kedge_cache_root/kedge-hil-cache}"
export KEDGE_HIL_BOARD_CACHE="${KEDGE_HIL_BOARD_CACHE:-$KEDGE_HIL_CACHE/ssh-board}"
export KEDGE_CRI_IMAGE_CACHE="${KEDGE_CRI_IMAGE_CACHE:-$kedge_cache_root}"
export KEDGE_FUZZ_TARGET_DIR="${KEDGE_FUZZ_TARGET_DIR:-$kedge_cache_root/kedge-fuzz-target}"
export KEDGE_FUZZ_CORPUS="${KEDGE_FUZZ_CORPUS:-$kedge_cache_root/kedge-fuzz-corpus}"
unset kedge_cache_root
