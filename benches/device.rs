//! The device binary that memory and size verdicts are about (included with
//! `#[path]`; not a bench of its own): the static x86-64 musl build with the
//! `full` feature set, as `scripts/build-targets.sh` makes it and leaves it
//! in `$CARGO_TARGET_DIR/device/x86_64-unknown-linux-musl/full/kedge`
//! (`KEDGE_FEATURE_SETS=full scripts/build-targets.sh
//! x86_64-unknown-linux-musl`), its budget from
//! `targets/x86_64-unknown-linux-musl.toml`.
//!
//! The bench does not build it: `cargo bench` holds the target directory's
//! lock while its benches run, so a cargo inside one would wait for ever.
//! `KEDGE_BENCH_DEVICE_BIN`: measure this device binary instead. Without
//! one, or with one older than the newest source file, the verdicts are
//! skipped with one line saying why.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub const TARGET: &str = "x86_64-unknown-linux-musl";
pub const FEATURES: &str = "full";

/// The device binary and how it was made.
pub struct DeviceBin {
    pub path: PathBuf,
    /// How it was made: built by the bench, or given.
    pub label: String,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory: `CARGO_TARGET_DIR`, else the one this bench runs
/// from (`<target>/release/deps/<bench>-<hash>`), else `./target`.
fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// The newest modification time under `dir` (files only).
fn newest(dir: &Path) -> Option<SystemTime> {
    let mut latest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        latest = latest.max(t);
    }
    latest
}

/// The device binary, or why there is none.
pub fn device_binary() -> Result<DeviceBin, String> {
    if let Some(path) = std::env::var_os("KEDGE_BENCH_DEVICE_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "KEDGE_BENCH_DEVICE_BIN={} is not a file",
                path.display()
            ));
        }
        return Ok(DeviceBin {
            path,
            label: "given by KEDGE_BENCH_DEVICE_BIN".into(),
        });
    }
    let build = format!("KEDGE_FEATURE_SETS={FEATURES} scripts/build-targets.sh {TARGET}");
    let path = target_dir()
        .join("device")
        .join(TARGET)
        .join(FEATURES)
        .join("kedge");
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|_| format!("{} is missing (build it: {build})", short(&path)))?;
    let root = manifest_dir();
    let sources = [
        newest(&root.join("src")),
        std::fs::metadata(root.join("Cargo.toml"))
            .and_then(|m| m.modified())
            .ok(),
        std::fs::metadata(root.join("Cargo.lock"))
            .and_then(|m| m.modified())
            .ok(),
    ];
    if sources.into_iter().flatten().any(|t| t > built) {
        return Err(format!(
            "{} is older than the sources (rebuild it: {build})",
            short(&path)
        ));
    }
    Ok(DeviceBin {
        path,
        label: format!("x86-64 musl static, features `{FEATURES}`, from scripts/build-targets.sh"),
    })
}

/// `budget_<set>_bytes` of the target's definition in targets/.
pub fn budget_bytes(set: &str) -> Option<u64> {
    let file = manifest_dir()
        .join("targets")
        .join(format!("{TARGET}.toml"));
    let text = std::fs::read_to_string(file).ok()?;
    let key = format!("budget_{set}_bytes");
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        v.split('#').next()?.trim().trim_matches('"').parse().ok()
    })
}

/// A path shown short: relative to the target directory when inside it.
pub fn short(path: &Path) -> String {
    let dir = target_dir();
    path.strip_prefix(&dir).map_or_else(
        |_| path.display().to_string(),
        |p| format!("$CARGO_TARGET_DIR/{}", p.display()),
    )
}
