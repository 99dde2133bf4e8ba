//! Link settings for the static device binaries (targets/README.md).
//!
//! Release builds for the musl device targets abort on panic (the release
//! profile's `panic = "abort"`); there they link with
//! targets/no-unwind-tables.ld, which drops the DWARF unwind tables nothing
//! reads. Every other build (tests, the host's glibc build, dev builds that
//! unwind) links as usual. A release profile changed to unwind must set
//! KEDGE_KEEP_UNWIND_TABLES=1 (build scripts cannot see the panic strategy:
//! CARGO_CFG_PANIC is the target's default, not the profile's).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=targets/no-unwind-tables.ld");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let device = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "musl";
    if release && device && var("KEDGE_KEEP_UNWIND_TABLES").is_empty() {
        let script =
            std::path::Path::new(&var("CARGO_MANIFEST_DIR")).join("targets/no-unwind-tables.ld");
        println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", script.display());
    }
    println!("cargo:rerun-if-env-changed=KEDGE_KEEP_UNWIND_TABLES");
}
