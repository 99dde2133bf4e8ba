//! The device binary that memory and size verdicts are about (included with
//! `#[path]`; not a bench of its own): the static x86-64 musl build with the
//! `full` feature set, made as `scripts/build-targets.sh` makes it
//! (`cargo build --release --locked --target x86_64-unknown-linux-musl
//! --bin kedge --no-default-features --features full`), its budget from
//! `targets/x86_64-unknown-linux-musl.toml`.
//!
//! `KEDGE_BENCH_DEVICE_BIN`: use this device binary (e.g.
//! `$CARGO_TARGET_DIR/device/x86_64-unknown-linux-musl/full/kedge` from
//! scripts/build-targets.sh) instead of building one.
//! `KEDGE_BENCH_SKIP_MUSL`: do not build it; the verdicts are then skipped
//! with one line saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// The device binary, built if needed, or why there is none.
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
    if std::env::var_os("KEDGE_BENCH_SKIP_MUSL").is_some() {
        return Err("not built: KEDGE_BENCH_SKIP_MUSL is set".into());
    }
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("not built: cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Err(format!(
            "not built: target {TARGET} is not installed (rustup target add {TARGET})"
        ));
    }
    if !on_path("musl-gcc") {
        return Err("not built: musl-gcc is not on PATH (apt-get install musl-tools)".into());
    }
    eprintln!(
        "bench: building the device binary (cargo build --release --locked --target {TARGET} --bin kedge --no-default-features --features {FEATURES})"
    );
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(manifest_dir())
        .args(["build", "--release", "--locked", "--target", TARGET])
        .args([
            "--bin",
            "kedge",
            "--no-default-features",
            "--features",
            FEATURES,
        ])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("not built: cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "not built: cargo build --target {TARGET} failed ({status})"
        ));
    }
    let path = target_dir().join(TARGET).join("release").join("kedge");
    if !path.is_file() {
        return Err(format!("{} is missing after the build", path.display()));
    }
    Ok(DeviceBin {
        path,
        label: format!(
            "x86-64 musl static, features `{FEATURES}`, built as scripts/build-targets.sh does"
        ),
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
