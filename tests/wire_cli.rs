//! `kedge wire decode` on the committed wire vectors, and `kedge convert`,
//! through the real binary (no broker needed).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn kedge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kedge"));
    cmd.env("KEDGE_LOG", "off");
    cmd
}

fn vector(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("vectors")
        .join(name)
}

fn vector_bytes(name: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(vector(name)).expect("vector file");
    let digits: String = text.split_whitespace().collect();
    hex::decode(digits).expect("vector is hex")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = kedge()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kedge runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("kedge finishes")
}

fn assert_malformed(out: &Output, what: &str) {
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{what}: exit status {}", out.status);
    assert!(
        stderr.contains("malformed"),
        "{what}: stderr does not say malformed: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: panicked: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout: {}",
        text(&out.stdout)
    );
}

#[test]
fn decodes_the_event_vector_from_hex() {
    let out = kedge()
        .args(["wire", "decode", "--hex"])
        .arg(vector("event.hex"))
        .output()
        .expect("kedge runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains(r#""kind": "Event""#), "stdout: {stdout}");
    assert!(
        stdout.contains(r#""reason": "BackOff""#),
        "stdout: {stdout}"
    );
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(json["version"], kedge::wire::SCHEMA_VERSION);
    assert_eq!(json["seq"], 43);
    assert_eq!(json["body"]["kind"], "Warning");
    assert_eq!(json["body"]["pod"], "sensor");
}

#[test]
fn shows_the_signature_of_a_signed_vector() {
    let out = kedge()
        .args(["wire", "decode", "--hex"])
        .arg(vector("signed/tombstone.hex"))
        .output()
        .expect("kedge runs");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    assert_eq!(json["kind"], "Tombstone");
    assert_eq!(json["signature"]["counter"], 1_767_225_700_000u64);
    assert_eq!(json["signature"]["key_id"].as_str().map(str::len), Some(16));
}

#[test]
fn decodes_raw_bytes_from_stdin() {
    let out = run_with_stdin(&["wire", "decode"], &vector_bytes("log_chunk.hex"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains(r#""kind": "LogChunk""#), "stdout: {stdout}");
    assert!(stdout.contains(r#""eof": true"#), "stdout: {stdout}");
}

#[test]
fn empty_payload_is_a_tombstone() {
    let out = run_with_stdin(&["wire", "decode"], b"");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(stdout.contains(r#""tombstone": true"#), "stdout: {stdout}");
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = dir.path().join("garbage.bin");
    std::fs::write(&garbage, [0xffu8; 16]).expect("write");
    let out = kedge()
        .args(["wire", "decode"])
        .arg(&garbage)
        .output()
        .expect("kedge runs");
    assert_malformed(&out, "garbage file");

    // A vector cut short: the right version and kind, then nothing usable.
    let bytes = vector_bytes("event.hex");
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = kedge()
        .args(["wire", "decode"])
        .arg(&cut)
        .output()
        .expect("kedge runs");
    assert_malformed(&out, "truncated event");
}

/// A pod as a cluster holds it (`kubectl get pod -o yaml`): the service
/// account token volume the apiserver injected is left out, and `kedge
/// convert` says so on stderr as kubectl prints warnings; a token the user
/// projects is refused with its field.
#[test]
fn convert_leaves_out_the_injected_token_volume_with_a_warning() {
    let pod = |token_path: &str| {
        format!(
            "apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  containers:
  - name: app
    image: nginx:1.25
    volumeMounts:
    - mountPath: /var/run/secrets/kubernetes.io/serviceaccount
      name: kube-api-access-7xk2p
      readOnly: true
  volumes:
  - name: kube-api-access-7xk2p
    projected:
      defaultMode: 420
      sources:
      - serviceAccountToken:
          expirationSeconds: 3607
          path: {token_path}
      - configMap:
          items:
          - key: ca.crt
            path: ca.crt
          name: kube-root-ca.crt
      - downwardAPI:
          items:
          - fieldRef:
              apiVersion: v1
              fieldPath: metadata.namespace
            path: namespace
"
        )
    };
    let out = run_with_stdin(&["convert", "-f", "-"], pod("token").as_bytes());
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        "Warning: pod/web: spec.volumes[0]: the pod runs without its service account token at /var/run/secrets/kubernetes.io/serviceaccount: kedge nodes do not mount API tokens (set automountServiceAccountToken: false to silence this)\n"
    );
    let specs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(specs[0]["volumes"], serde_json::json!([]));
    assert_eq!(
        specs[0]["containers"][0]["volume_mounts"],
        serde_json::json!([])
    );

    let out = run_with_stdin(&["convert", "-f", "-"], pod("api-token").as_bytes());
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pod/web is invalid")
            && stderr.contains("spec.volumes[0].projected.sources[0].serviceAccountToken: service account token projections are not supported"),
        "{stderr}"
    );
}
