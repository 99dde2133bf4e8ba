//! Shared helpers for kedge's integration tests (`mod support;` in each
//! `tests/*.rs`). Everything talks to real parts: a real Mosquitto broker on a
//! free port, the real `kedge` binary, the `mosquitto_sub`/`mosquitto_pub`
//! CLIs, and Wasm guests built from `tests/wasm-guests`. Waits are for an
//! observable condition with a deadline (`wait_until`), never fixed sleeps.
#![allow(dead_code)]

pub mod k8s;

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tempfile::TempDir;

pub mod cri;
pub mod data;
pub mod postgres;

/// Repository root (the kedge crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A persistent cache kept between test runs: `$var` if set, else
/// `$KEDGE_CACHE_ROOT/name`, else `/var/tmp/name` (the rule of
/// scripts/cache-env.sh; an empty `name` is the root itself).
pub fn cache_dir(var: &str, name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(var).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let root = std::env::var_os("KEDGE_CACHE_ROOT")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
    root.join(name)
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

/// Calls `f` every 50 ms until it returns `Some`, panicking with `what` after `deadline`.
/// Says that `test` is skipped and why, in one line that scripts/test.sh
/// counts: written to stderr directly, past libtest's output capture (which
/// swallows `eprintln!` of passing tests), starting with
/// `KEDGE-TEST-SKIPPED <test>:`. CI fails on a root machine if any appear.
pub fn skip_test(test: &str, why: &str) {
    use std::io::Write as _;
    let line = format!("KEDGE-TEST-SKIPPED {test}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn wait_until<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll_until(deadline, Duration::from_millis(50), f)
        .unwrap_or_else(|| panic!("timed out after {deadline:?} waiting for: {what}"))
}

/// Polls `f` every `interval` until it returns `Some` or `deadline` passes (then `None`).
/// This is the only place the helpers sleep: always waiting for a condition.
pub fn poll_until<T>(
    deadline: Duration,
    interval: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= deadline {
            return None;
        }
        std::thread::sleep(interval);
    }
}

/// A child process that is SIGKILLed and reaped when dropped (also on panic).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` (stdin fed from `input`), killing it and panicking if it outlives `deadline`.
pub fn run_with_deadline(mut cmd: Command, input: &[u8], deadline: Duration) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().unwrap_or_else(|e| panic!("spawn {desc}: {e}")));
    let mut stdin = child.0.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading stdin gives EPIPE; not our concern.
        let _ = stdin.write_all(&input);
    });
    let out = read_to_end_thread(child.0.stdout.take().expect("stdout is piped"));
    let err = read_to_end_thread(child.0.stderr.take().expect("stderr is piped"));
    let status = poll_until(deadline, Duration::from_millis(5), || {
        child.0.try_wait().expect("try_wait")
    })
    .unwrap_or_else(|| panic!("{desc} did not finish within {deadline:?}; killed"));
    let _ = writer.join();
    Output {
        status,
        stdout: out.join().expect("stdout reader thread"),
        stderr: err.join().expect("stderr reader thread"),
    }
}

/// Reads a pipe to its end on a background thread.
fn read_to_end_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Reads a file as (lossy) UTF-8, or "" if it does not exist.
fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Wasm guests and hashing
// ---------------------------------------------------------------------------

/// Which WASI target to build the test guest for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestTarget {
    /// `wasm32-wasip1`: a core module.
    P1,
    /// `wasm32-wasip2`: a component.
    P2,
}

impl GuestTarget {
    /// The rustc target triple.
    pub fn triple(self) -> &'static str {
        match self {
            GuestTarget::P1 => "wasm32-wasip1",
            GuestTarget::P2 => "wasm32-wasip2",
        }
    }
}

/// Builds `tests/wasm-guests` for `target` (once per test process) and returns `guest.wasm`.
pub fn guest_wasm(target: GuestTarget) -> PathBuf {
    static P1: OnceLock<PathBuf> = OnceLock::new();
    static P2: OnceLock<PathBuf> = OnceLock::new();
    let cell = match target {
        GuestTarget::P1 => &P1,
        GuestTarget::P2 => &P2,
    };
    cell.get_or_init(|| build_guest(target)).clone()
}

/// Runs `cargo build --release` for the guest crate and target.
fn build_guest(target: GuestTarget) -> PathBuf {
    let target_dir = cache_dir("KEDGE_GUESTS_TARGET_DIR", "kedge-guests-target");
    let manifest = repo_root().join("tests/wasm-guests/Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        target.triple(),
        "--manifest-path",
    ])
    .arg(&manifest)
    .env("CARGO_TARGET_DIR", &target_dir)
    // Host-specific flags (coverage, sanitizers, clippy) must not leak into the guest.
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS")
    .env_remove("CARGO_BUILD_RUSTFLAGS")
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER");
    let out = run_with_deadline(cmd, b"", Duration::from_secs(600));
    assert!(
        out.status.success(),
        "building the wasm guest for {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        target.triple(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let wasm = target_dir.join(target.triple()).join("release/guest.wasm");
    assert!(
        wasm.is_file(),
        "cargo succeeded but {} is missing",
        wasm.display()
    );
    wasm
}

/// Lower-case hex SHA-256 of a file's content.
pub fn sha256_file(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    sha256_hex(&bytes)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------
// Mosquitto broker
// ---------------------------------------------------------------------------

/// A real Mosquitto broker on 127.0.0.1 with a free port; killed on drop.
pub struct Mosquitto {
    /// The TCP port the listener is bound to.
    pub port: u16,
    tls: bool,
    dir: TempDir,
    conf: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    /// The log's length when a persistent broker last saved its state
    /// (`stop_gracefully`): its next start must restore it.
    saved_at: Option<usize>,
}

impl Mosquitto {
    /// Starts a plain-TCP broker allowing anonymous clients.
    pub fn start() -> Mosquitto {
        Self::start_with(None)
    }

    /// Starts a TLS broker using `tls`; optionally requiring a client cert (CN becomes the username).
    pub fn start_tls(tls: &TlsFiles, require_client_cert: bool) -> Mosquitto {
        Self::start_with(Some((tls, require_client_cert)))
    }

    /// Starts a broker with the configuration `conf(port)` writes (a
    /// listener on 127.0.0.1:port; `tls` for the URL's scheme), for tests
    /// of a configuration as documented.
    pub fn start_custom(tls: bool, conf: impl Fn(u16) -> String) -> Mosquitto {
        Self::start_conf(tls, conf)
    }

    /// Picks a port, writes the config and starts; retries if the port got taken meanwhile.
    fn start_with(tls: Option<(&TlsFiles, bool)>) -> Mosquitto {
        Self::start_conf(tls.is_some(), |port| mosquitto_conf(port, tls))
    }

    fn start_conf(tls: bool, conf: impl Fn(u16) -> String) -> Mosquitto {
        let dir = tempfile::Builder::new()
            .prefix("kedge-mosquitto-")
            .tempdir()
            .expect("create mosquitto temp dir");
        let mut m = Mosquitto {
            port: 0,
            tls,
            conf: dir.path().join("mosquitto.conf"),
            log_path: dir.path().join("mosquitto.log"),
            dir,
            child: None,
            saved_at: None,
        };
        let mut last_log = String::new();
        for _attempt in 0..5 {
            m.port = free_port();
            std::fs::write(&m.conf, conf(m.port)).expect("write mosquitto.conf");
            match m.spawn_and_wait() {
                Ok(()) => return m,
                Err(log) => last_log = log,
            }
        }
        panic!("mosquitto kept failing with 'Address already in use'; last attempt:\n{last_log}");
    }

    /// Spawns mosquitto and waits until it accepts TCP connections.
    /// `Err(log)` means the port was taken (caller may retry); other failures panic.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open mosquitto.log");
        let log_offset = log.metadata().map(|m| m.len()).unwrap_or(0) as usize;
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn /usr/sbin/mosquitto (is mosquitto installed?)");
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        loop {
            let child = self.child.as_mut().expect("child was just set");
            if let Some(status) = child.try_wait().expect("try_wait mosquitto") {
                self.child = None;
                let log = self.log();
                let new = log.get(log_offset..).unwrap_or(&log).to_string();
                if new.contains("Address already in use") {
                    return Err(new);
                }
                panic!("mosquitto exited early ({status}); log:\n{log}");
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!(
                    "mosquitto did not accept connections on {addr} within 10 s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `mqtt://127.0.0.1:PORT` (or `mqtts://` for a TLS broker).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Starts a plain-TCP broker that keeps its state (sessions,
    /// subscriptions, queued messages) in its directory across a
    /// `stop_gracefully` + `restart`, as a production broker does.
    pub fn start_persistent() -> Mosquitto {
        let mut m = Self::start();
        let store = m.dir.path().join("store");
        std::fs::create_dir_all(&store).expect("mkdir mosquitto store");
        let conf = mosquitto_conf(m.port, None).replace(
            "persistence false\n",
            &format!(
                "persistence true\npersistence_location {}/\n",
                store.display()
            ),
        );
        std::fs::write(&m.conf, conf).expect("write mosquitto.conf");
        m.restart();
        m
    }

    /// Stops the broker with SIGTERM and waits for it to exit. A persistent
    /// broker must have saved its state then: one that could not (a full
    /// disk, say) loses what it held, which a test would otherwise read as
    /// its client's loss, so that panics here, saying why.
    pub fn stop_gracefully(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
            if self.persistent() {
                let log = self.log();
                let saved = log.rfind("Saving in-memory database");
                let failed = saved.and_then(|at| {
                    log[at..]
                        .lines()
                        .find(|l| l.contains("Error"))
                        .map(str::to_string)
                });
                if saved.is_none() || failed.is_some() {
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    panic!(
                        "mosquitto did not save its state on SIGTERM ({}): what it held is lost; log tail (newest first):\n{}",
                        failed.unwrap_or_else(|| "no 'Saving in-memory database' line".into()),
                        tail.join("\n")
                    );
                }
                self.saved_at = Some(log.len());
            }
        }
    }

    /// Whether the broker keeps its state across restarts (`start_persistent`).
    fn persistent(&self) -> bool {
        std::fs::read_to_string(&self.conf).is_ok_and(|c| c.contains("persistence true\n"))
    }

    /// Kills the broker and waits for it to exit (simulates an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port with the same config.
    pub fn restart(&mut self) {
        self.stop();
        // If something grabbed our port during the outage, retry until it lets go.
        let mut last_log = String::new();
        let started = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            self.spawn_and_wait().map_err(|log| last_log = log).ok()
        });
        if started.is_none() {
            panic!(
                "could not restart mosquitto on port {}:\n{last_log}",
                self.port
            );
        }
        // What a graceful stop saved comes back, or this says why not.
        if let Some(at) = self.saved_at.take() {
            let log = self.log();
            if let Some(bad) = log.get(at..).unwrap_or_default().lines().find(|l| {
                (l.contains("Error") || l.contains("Warning"))
                    && (l.contains("ersist") || l.contains("database"))
            }) {
                panic!("mosquitto did not restore the state it saved: {bad}");
            }
        }
    }

    /// The broker's log so far (all restarts, `log_type all`).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }

    /// The temp dir holding the config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A currently free TCP port on 127.0.0.1 (bind port 0, read it, release
/// it), never one handed out before in this process: a test's broker that
/// is down for an outage leaves its port free, and a test running beside it
/// must not start a broker there (the first test's agent would then hand
/// its batches to the wrong broker).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The mosquitto.conf text for a listener on `port`.
/// `user root`: started as root, mosquitto would otherwise switch to the `mosquitto`
/// user before loading the TLS key from our 0700 temp dir (no effect when not root).
fn mosquitto_conf(port: u16, tls: Option<(&TlsFiles, bool)>) -> String {
    let mut c = format!(
        "user root\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest stderr\n\
         log_type all\n\
         log_timestamp_format %H:%M:%S\n"
    );
    if let Some((t, require)) = tls {
        c += &format!(
            "cafile {}\ncertfile {}\nkeyfile {}\n",
            t.ca.display(),
            t.server_cert.display(),
            t.server_key.display()
        );
        if require {
            c += "require_certificate true\nuse_identity_as_username true\n";
        }
    }
    c
}

// ---------------------------------------------------------------------------
// TLS material
// ---------------------------------------------------------------------------

/// A test CA plus server (`localhost`, 127.0.0.1) and client certificates, PEM, keys PKCS#8.
pub struct TlsFiles {
    /// Temp dir holding all files (deleted on drop).
    pub dir: TempDir,
    /// CA certificate.
    pub ca: PathBuf,
    /// Server certificate (SAN `DNS:localhost`, `IP:127.0.0.1`).
    pub server_cert: PathBuf,
    /// Server private key.
    pub server_key: PathBuf,
    /// Client certificate (CN = the requested name).
    pub client_cert: PathBuf,
    /// Client private key.
    pub client_key: PathBuf,
}

/// Generates a CA, a server cert and a client cert with CN `client_cn` using the `openssl` CLI.
pub fn generate_tls(client_cn: &str) -> TlsFiles {
    let dir = tempfile::Builder::new()
        .prefix("kedge-tls-")
        .tempdir()
        .expect("create TLS temp dir");
    let p = |name: &str| dir.path().join(name);
    let pki = TestPki {
        dir: dir.path(),
        days: "365",
    };
    pki.ca("/CN=kedge test CA", "keyCertSign, cRLSign");
    let san = "subjectAltName = DNS:localhost, IP:127.0.0.1\n";
    let usage = "digitalSignature";
    pki.leaf(
        "server",
        "/CN=localhost",
        &leaf_ext(usage, "serverAuth", san),
    );
    pki.leaf(
        "client",
        &format!("/CN={client_cn}"),
        &leaf_ext(usage, "clientAuth", ""),
    );
    TlsFiles {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
        dir,
    }
}

/// A test PKI made with the `openssl` CLI in `dir`: `ca` writes ca.key and
/// ca.pem, `leaf` writes NAME.key and NAME.pem signed by that CA.
pub struct TestPki<'a> {
    pub dir: &'a Path,
    /// Validity of every certificate, in days.
    pub days: &'static str,
}

impl TestPki<'_> {
    /// A P-256 key.
    pub fn ec_key(&self, name: &str) {
        openssl(
            self.dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ],
        );
    }

    /// A self-signed CA (a CSR signed with its own key, so the extensions apply).
    pub fn ca(&self, subject: &str, key_usage: &str) {
        std::fs::write(
            self.dir.join("ca.ext"),
            format!(
                "basicConstraints = critical, CA:TRUE\n\
                 keyUsage = critical, {key_usage}\n\
                 subjectKeyIdentifier = hash\n"
            ),
        )
        .expect("write ca.ext");
        self.ec_key("ca.key");
        openssl(
            self.dir,
            &[
                "req", "-new", "-key", "ca.key", "-subj", subject, "-out", "ca.csr",
            ],
        );
        openssl(
            self.dir,
            &[
                "x509", "-req", "-in", "ca.csr", "-key", "ca.key", "-days", self.days, "-sha256",
                "-extfile", "ca.ext", "-out", "ca.pem",
            ],
        );
    }

    /// NAME.key and NAME.pem for `subject`, with the extensions `ext`.
    pub fn leaf(&self, name: &str, subject: &str, ext: &str) {
        let (key, csr, extf, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
            format!("{name}.pem"),
        );
        std::fs::write(self.dir.join(&extf), ext).expect("write ext");
        self.ec_key(&key);
        openssl(
            self.dir,
            &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
        );
        openssl(
            self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                self.days,
                "-sha256",
                "-extfile",
                &extf,
                "-out",
                &pem,
            ],
        );
    }
}

/// The extensions of a leaf certificate.
pub fn leaf_ext(key_usage: &str, extended_key_usage: &str, san: &str) -> String {
    format!(
        "basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, {key_usage}\n\
         extendedKeyUsage = {extended_key_usage}\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid\n{san}"
    )
}

/// Runs `openssl ARGS` in `dir`, panicking with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).current_dir(dir);
    let out = run_with_deadline(cmd, b"", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// The kedge binary: CLI and agent
// ---------------------------------------------------------------------------

/// Path of the `kedge` binary built for these tests.
pub fn kedge_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kedge"))
}

/// Runs `kedge ARGS` with a 60 s deadline (killed and panics on timeout).
pub fn kedge(args: &[&str]) -> Output {
    let mut cmd = Command::new(kedge_bin());
    cmd.args(args);
    run_with_deadline(cmd, b"", Duration::from_secs(60))
}

/// Runs `kedge ARGS`, asserts it succeeded and returns its stdout.
pub fn kedge_ok(args: &[&str]) -> String {
    let out = kedge(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kedge {args:?} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs `kedge --broker URL ARGS` against a test broker.
pub fn kedge_on(broker: &Mosquitto, args: &[&str]) -> Output {
    let url = broker.url();
    let mut all = vec!["--broker", url.as_str()];
    all.extend_from_slice(args);
    kedge(&all)
}

/// Runs `kedge --broker URL ARGS`, asserts it succeeded and returns its
/// stdout; a failure shows the agent's log too.
/// `kedge apply` of `yaml` (written to a fresh file in `dir`) to `node`;
/// returns the CLI's output, failing with the agent's log.
pub fn apply_on(broker: &Mosquitto, agent: &Agent, dir: &Path, node: &str, yaml: &str) -> String {
    let path = dir.join(format!("m-{}.yaml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, yaml).expect("write manifest");
    let file = path.to_str().expect("utf8");
    kedge_on_ok(broker, agent, &["apply", "-f", file, "--node", node])
}

pub fn kedge_on_ok(broker: &Mosquitto, agent: &Agent, args: &[&str]) -> String {
    let out = kedge_on(broker, args);
    assert!(
        out.status.success(),
        "kedge {args:?} failed:\nstdout: {}\nstderr: {}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        agent.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Options for [`Agent::start`].
#[derive(Debug, Clone, Default)]
pub struct AgentOpts {
    /// `--node NAME`.
    pub node: String,
    /// `--broker URL`; omitted when `None`.
    pub broker_url: Option<String>,
    /// `--data-dir DIR` (created if missing; the log goes to `DIR.agent.log`).
    pub data_dir: PathBuf,
    /// Extra arguments appended after the standard ones.
    pub extra_args: Vec<String>,
    /// Extra environment variables (after `KEDGE_LOG=debug`).
    pub env: Vec<(String, String)>,
}

/// A running `kedge agent` child process; SIGKILLed on drop.
pub struct Agent {
    child: Option<Child>,
    pid: u32,
    log_path: PathBuf,
}

impl Agent {
    /// Spawns `kedge agent --node N [--broker URL] --data-dir DIR EXTRA…`,
    /// output appended to `DIR.agent.log` beside the data directory (not in
    /// it: a test that fills the data directory's disk still reads the log).
    pub fn start(opts: AgentOpts) -> Agent {
        // KEDGE_AGENT_BIN: run another build as the agent (a static device
        // binary, for benchmarks); the CLI stays this build's.
        let bin = std::env::var_os("KEDGE_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(kedge_bin);
        Self::start_bin(&bin, opts)
    }

    /// [`Agent::start`] running `bin` as the agent (benchmarks: the device
    /// binary).
    pub fn start_bin(bin: &Path, opts: AgentOpts) -> Agent {
        std::fs::create_dir_all(&opts.data_dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", opts.data_dir.display()));
        let log_path = PathBuf::from(format!("{}.agent.log", opts.data_dir.display()));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open agent.log");
        let mut cmd = Command::new(bin);
        cmd.arg("agent").arg("--node").arg(&opts.node);
        if let Some(url) = &opts.broker_url {
            cmd.arg("--broker").arg(url);
        }
        cmd.arg("--data-dir")
            .arg(&opts.data_dir)
            .args(&opts.extra_args)
            .env("KEDGE_LOG", "debug")
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn kedge agent");
        Agent {
            pid: child.id(),
            child: Some(child),
            log_path,
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// SIGKILLs the agent and reaps it (simulates a crash / power loss).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to 20 s for a graceful exit; returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let pid = self.pid;
        let child = self.child.as_mut().expect("agent is not running");
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed: {st}");
        // On timeout this panics and Drop SIGKILLs the agent.
        let status = wait_until(
            &format!("kedge agent (pid {pid}) to exit after SIGTERM"),
            Duration::from_secs(20),
            || child.try_wait().expect("try_wait agent"),
        );
        self.child = None;
        status
    }

    /// Waits for the agent to exit by itself (a fault hook's abort) and
    /// returns its exit status.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let pid = self.pid;
        let child = self.child.as_mut().expect("agent is not running");
        let status = wait_until(
            &format!("kedge agent (pid {pid}) to exit"),
            deadline,
            || child.try_wait().expect("try_wait agent"),
        );
        self.child = None;
        status
    }

    /// The agent's combined stdout/stderr so far (all runs sharing this data dir).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------
// MQTT clients (mosquitto_sub / mosquitto_pub)
// ---------------------------------------------------------------------------

/// Connection arguments for the mosquitto CLIs: `-h HOST -p PORT` plus CA and client cert if `tls`.
pub fn mqtt_cli_args(url: &str, tls: Option<&TlsFiles>) -> Vec<String> {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("broker URL without scheme: {url}"));
    assert!(
        scheme == "mqtt" || scheme == "mqtts",
        "unsupported broker URL scheme in {url}"
    );
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("broker URL without port: {url}"));
    let mut args = vec!["-h".to_string(), host.to_string(), "-p".into(), port.into()];
    if let Some(t) = tls {
        for (flag, path) in [
            ("--cafile", &t.ca),
            ("--cert", &t.client_cert),
            ("--key", &t.client_key),
        ] {
            args.push(flag.into());
            args.push(path.display().to_string());
        }
    } else {
        assert!(scheme == "mqtt", "{url} needs TLS files");
    }
    args
}

/// Publishes `payload` (QoS 1; `retain` adds `-r`) with `mosquitto_pub`, panicking on failure.
pub fn publish_raw(url: &str, topic: &str, payload: &[u8], retain: bool) {
    publish_raw_tls(url, None, topic, payload, retain)
}

/// [`publish_raw`] over TLS (CA and client cert from `tls`).
pub fn publish_raw_tls(
    url: &str,
    tls: Option<&TlsFiles>,
    topic: &str,
    payload: &[u8],
    retain: bool,
) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(mqtt_cli_args(url, tls))
        .args(["-q", "1", "-t", topic]);
    // -s reads the payload from stdin verbatim; an empty payload needs -n.
    cmd.arg(if payload.is_empty() { "-n" } else { "-s" });
    if retain {
        cmd.arg("-r");
    }
    let out = run_with_deadline(cmd, payload, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "mosquitto_pub to {url} topic {topic} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Connects with `client_id` and a clean session, publishes one message and
/// disconnects: the broker drops that client id's persistent session (and
/// everything queued in it), as when another client takes over the id.
pub fn wipe_session(url: &str, client_id: &str) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(mqtt_cli_args(url, None)).args([
        "-i",
        client_id,
        "-q",
        "1",
        "-t",
        "kedge-test/session-takeover",
        "-m",
        "x",
    ]);
    let out = run_with_deadline(cmd, b"", Duration::from_secs(30));
    assert!(
        out.status.success(),
        "mosquitto_pub as {client_id} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Topic prefix used by [`Subscriber::start`] to prove its subscription is active.
const READY_PREFIX: &str = "kedge-test/ready/";

/// Messages recorded by a [`Subscriber`]: (topic, payload) in arrival order.
type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A `mosquitto_sub` process recording every message on a topic filter; killed on drop.
pub struct Subscriber {
    child: KillOnDrop,
    messages: Messages,
    stderr: Arc<Mutex<String>>,
}

impl Subscriber {
    /// Subscribes (QoS 1) to `topic_filter` and returns once the subscription is live.
    pub fn start(url: &str, topic_filter: &str, tls: Option<&TlsFiles>) -> Subscriber {
        let ready_topic = format!("{READY_PREFIX}{}", uuid::Uuid::new_v4());
        let mut cmd = Command::new("mosquitto_sub");
        // "%t %x": topic, space, payload as lower-case hex (two digits per byte), newline.
        cmd.args(mqtt_cli_args(url, tls))
            .args([
                "-q",
                "1",
                "-t",
                topic_filter,
                "-t",
                &ready_topic,
                "-F",
                "%t %x",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = KillOnDrop(cmd.spawn().expect("spawn mosquitto_sub"));
        let messages: Messages = Arc::default();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let ready = Arc::new(AtomicBool::new(false));
        {
            let out = child.0.stdout.take().expect("stdout is piped");
            let (messages, ready, stderr) = (messages.clone(), ready.clone(), stderr.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let Some((topic, payload)) = parse_sub_line(&line) else {
                        let mut s = stderr.lock().expect("stderr lock");
                        s.push_str(&format!("[support] unparsable output line: {line:?}\n"));
                        continue;
                    };
                    if topic.starts_with(READY_PREFIX) {
                        ready.store(true, Ordering::SeqCst);
                    } else {
                        messages
                            .lock()
                            .expect("messages lock")
                            .push((topic, payload));
                    }
                }
            });
        }
        {
            let err = child.0.stderr.take().expect("stderr is piped");
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut s = stderr.lock().expect("stderr lock");
                    s.push_str(&line);
                    s.push('\n');
                }
            });
        }
        let mut sub = Subscriber {
            child,
            messages,
            stderr,
        };
        // Publish to the ready topic until our own subscription delivers it.
        let start = Instant::now();
        while !ready.load(Ordering::SeqCst) {
            if let Some(status) = sub.child.0.try_wait().expect("try_wait mosquitto_sub") {
                panic!(
                    "mosquitto_sub for {topic_filter} on {url} exited ({status}): {}",
                    sub.stderr()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "mosquitto_sub for {topic_filter} on {url} not subscribed after 10 s: {}",
                sub.stderr()
            );
            let mut cmd = Command::new("mosquitto_pub");
            cmd.args(mqtt_cli_args(url, tls))
                .args(["-q", "1", "-t", &ready_topic, "-m", "ready"]);
            // Failure is fine here (broker may still be coming up); we just try again.
            let _ = run_with_deadline(cmd, b"", Duration::from_secs(10));
            poll_until(
                Duration::from_millis(500),
                Duration::from_millis(10),
                || ready.load(Ordering::SeqCst).then_some(()),
            );
        }
        sub
    }

    /// All messages received so far (topic, payload), in arrival order.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.messages.lock().expect("messages lock").clone()
    }

    /// Waits until some received message (past or future) satisfies `pred` and returns it.
    pub fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        pred: impl Fn(&str, &[u8]) -> bool,
    ) -> (String, Vec<u8>) {
        let found = poll_until(deadline, Duration::from_millis(50), || {
            self.messages
                .lock()
                .expect("messages lock")
                .iter()
                .find(|(t, p)| pred(t, p))
                .cloned()
        });
        found.unwrap_or_else(|| {
            let received: Vec<String> = self
                .messages()
                .iter()
                .map(|(t, p)| format!("{t} {}", String::from_utf8_lossy(p)))
                .collect();
            panic!(
                "timed out after {deadline:?} waiting for message: {what}\n\
                 received: {received:#?}\nmosquitto_sub stderr: {}",
                self.stderr()
            )
        })
    }

    /// What `mosquitto_sub` wrote to stderr so far (connection errors etc.).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }
}

/// Splits a `%t %x` line into topic and decoded payload (topics may contain spaces; hex cannot).
fn parse_sub_line(line: &str) -> Option<(String, Vec<u8>)> {
    let (topic, hexpayload) = line.rsplit_once(' ')?;
    Some((topic.to_string(), hex::decode(hexpayload).ok()?))
}

/// A process's resident set size in KiB (0 if it is gone): for benchmarks.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The `p` quantile (0–1) of `v`, which it sorts; zero when empty.
pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Agent flags that make back-off and heartbeats test-sized.
pub fn fast_args() -> Vec<String> {
    [
        "--set",
        "backoff.initial_ms=300",
        "--set",
        "backoff.max_ms=600",
        "--set",
        "node.heartbeat_ms=500",
        "--set",
        "broker.reconnect_initial_ms=200",
        "--set",
        "broker.reconnect_max_ms=1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

// ---------------------------------------------------------------------------
// Pods through the CLI
// ---------------------------------------------------------------------------

/// A pod's status from `kedge get pods -A -o json`, if reported.
pub fn pod_status(url: &str, name: &str) -> Option<serde_json::Value> {
    let out = kedge_ok(&["--broker", url, "get", "pods", "-A", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .map(|i| i["status"].clone())
        .find(|s| s["name"] == name)
}

/// A pod manifest running the Wasm `module` (pinned by its sha256) as its
/// container `main` with these arguments and restart policy; `extra` is
/// YAML appended to the container (`    env: [...]\n`, a second
/// container…), or empty.
pub fn wasm_pod(name: &str, module: &Path, args: &[&str], restart: &str, extra: &str) -> String {
    let sha = sha256_file(module);
    let args: Vec<String> = args.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
spec:
  runtimeClassName: kedge-wasm
  restartPolicy: {restart}
  containers:
  - name: main
    image: file://{module}@sha256:{sha}
    args: [{args}]
{extra}"#,
        module = module.display(),
        args = args.join(", "),
    )
}

/// Runs `f` with a client of the shared `kedge::client` on `broker`, once
/// its first barrier came back.
pub fn with_client<T>(broker: &Mosquitto, f: impl AsyncFnOnce(&kedge::client::Client) -> T) -> T {
    use kedge::client::{self, ClientOptions, Inbound};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut config = kedge::config::Config::default();
        config.broker.url = Some(broker.url());
        let opts = ClientOptions::new(format!("kedge-cli-test-{}", std::process::id()));
        let (client, mut inbox) = client::start(&config, opts).expect("client starts");
        loop {
            match tokio::time::timeout(Duration::from_secs(60), inbox.recv()).await {
                Ok(Some(Inbound::Synced)) => break,
                Ok(Some(Inbound::Disconnected { error })) => panic!("disconnected: {error}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no barrier from {}", broker.url()),
            }
        }
        let out = f(&client).await;
        client.close();
        inbox.closed().await;
        out
    })
}
