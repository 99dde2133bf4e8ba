//! Link settings for the static device binaries (targets/README.md).
//!
//! Release builds for the musl device targets abort on panic (the release
//! profile's `panic = "abort"`). There they link:
//! - with targets/no-unwind-tables.ld, which drops the DWARF unwind tables
//!   nothing reads (KEDGE_KEEP_UNWIND_TABLES=1 keeps them; a release profile
//!   changed to unwind must set it: build scripts cannot see the panic
//!   strategy, CARGO_CFG_PANIC is the target's default, not the profile's);
//! - with lld and identical code folding, when `ld.lld` is installed
//!   (Debian: lld; scripts/build-targets.sh installs it), which merges the
//!   many byte-identical monomorphised functions (KEDGE_NO_ICF=1: GNU ld).
//!
//! Every other build (tests, the host's glibc build, dev builds that
//! unwind) links as usual.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=targets/no-unwind-tables.ld");
    println!("cargo:rerun-if-env-changed=KEDGE_KEEP_UNWIND_TABLES");
    println!("cargo:rerun-if-env-changed=KEDGE_NO_ICF");
    println!("cargo:rerun-if-env-changed=PATH");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let device = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "musl";
    if !(release && device) {
        return;
    }
    if var("KEDGE_KEEP_UNWIND_TABLES").is_empty() {
        let script =
            std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("targets/no-unwind-tables.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
    if !var("KEDGE_NO_ICF").is_empty() {
        return;
    }
    let lld = std::env::split_paths(&var("PATH"))
        .map(|d| d.join("ld.lld"))
        .find(|p| p.is_file());
    if let Some(lld) = lld {
        // Cross gcc drivers (aarch64-linux-gnu-gcc) look for ld.lld only in
        // their own program directories; -B adds one that holds it.
        let dir = std::path::Path::new(&var("OUT_DIR")).join("lld");
        let link = dir.join("ld.lld");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::remove_file(&link);
        if let Err(e) = symlink(&lld, &link) {
            println!("cargo:warning=cannot link {}: {e}", link.display());
            return;
        }
        println!("cargo:rustc-link-arg-bins=-B{}/", dir.display());
        println!("cargo:rustc-link-arg-bins=-fuse-ld=lld");
        println!("cargo:rustc-link-arg-bins=-Wl,--icf=all");
    } else {
        println!(
            "cargo:warning=ld.lld not found: linking without identical code folding, \
             so the binary comes out larger (Debian: apt install lld)"
        );
    }
}

#[cfg(unix)]
fn symlink(target: &std::path::Path, link: &std::path::Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Device binaries are cross-compiled on Linux or macOS; on other hosts
/// they link without lld (build.rs warns), and this file still compiles.
#[cfg(not(unix))]
fn symlink(_target: &std::path::Path, _link: &std::path::Path) -> std::io::Result<()> {
    Err(std::io::Error::other("not a unix build host"))
}
