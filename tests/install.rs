//! The device install story: `install/install.sh` into a temporary root
//! (binary, config, data dir, service user, systemd unit), the config it
//! writes accepted by the real binary, and the unit checked by
//! `systemd-analyze verify`. Starting the service needs a device with
//! systemd running (the `ssh` HIL back-end does that).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

fn install(root: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(repo_root().join("install/install.sh"));
    cmd.arg("--binary")
        .arg(kedge_bin())
        .arg("--root")
        .arg(root)
        .args(extra);
    run_with_deadline(cmd, b"", Duration::from_secs(60))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn install_script_lays_out_a_device_and_its_unit_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    let ca = dir.path().join("broker-ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write ca");
    let out = install(
        &root,
        &[
            "--broker",
            "mqtts://broker.example:8883",
            "--node",
            "gw-7",
            "--ca-file",
            ca.to_str().expect("utf8"),
        ],
    );
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let bin = root.join("usr/local/bin/kedge");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(
        std::fs::read(&bin).expect("bin"),
        std::fs::read(kedge_bin()).expect("src")
    );
    assert_eq!(mode(&root.join("var/lib/kedge")), 0o750);
    let config = root.join("etc/kedge/config.toml");
    assert_eq!(mode(&config), 0o640);
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains("node_name = \"gw-7\""), "{text}");
    assert!(
        text.contains("url = \"mqtts://broker.example:8883\""),
        "{text}"
    );
    assert!(
        text.contains("ca_file = \"/etc/kedge/broker-ca.pem\""),
        "{text}"
    );
    assert!(root.join("etc/kedge/broker-ca.pem").is_file());
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("kedge:x:") && l.ends_with(":/var/lib/kedge:/usr/sbin/nologin")),
        "{passwd}"
    );

    // The config it wrote is one the agent accepts (every key known, every
    // value valid): loading it is the first thing every command does.
    let out = kedge(&["--config", config.to_str().expect("utf8"), "config", "keys"]);
    assert!(
        out.status.success(),
        "kedge rejects the installed config: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A second run (an upgrade) keeps the config and adds no second user.
    std::fs::write(&config, format!("{text}# edited on the device\n")).expect("edit");
    let out = install(&root, &["--broker", "mqtt://other:1883"]);
    assert!(out.status.success());
    let kept = std::fs::read_to_string(&config).expect("config");
    assert!(kept.ends_with("# edited on the device\n"), "{kept}");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    assert_eq!(
        passwd.lines().filter(|l| l.starts_with("kedge:")).count(),
        1
    );

    // The unit, with its ExecStart pointed into the temporary root.
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/kedge.service"))
        .expect("unit")
        .replace("/usr/local/bin/kedge", bin.to_str().expect("utf8"));
    assert!(unit.contains("User=kedge") && unit.contains("StateDirectory=kedge"));
    let unit_path = dir.path().join("kedge.service");
    std::fs::write(&unit_path, unit).expect("write unit");
    let mut verify = Command::new("systemd-analyze");
    verify.args(["verify", "--man=no"]).arg(&unit_path);
    let out = run_with_deadline(verify, b"", Duration::from_secs(60));
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn install_script_refuses_bad_arguments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = install(&dir.path().join("root"), &["--bogus"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument --bogus"));
    let mut cmd = Command::new(repo_root().join("install/install.sh"));
    cmd.args(["--binary", "/nonexistent/kedge"]);
    let out = run_with_deadline(cmd, b"", Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(66));
}
