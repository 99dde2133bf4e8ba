//! A real Kubernetes control plane for the bridge tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from the upstream Go
//! modules by `tests/k8s-harness/build.sh` (cached under /var/tmp), started
//! on loopback with free ports and certificates generated for this run, and
//! killed on drop.
//!
//! Certificates (one test CA signs them all):
//! - the apiserver's serving certificate (127.0.0.1, localhost, the service IP);
//! - an admin client certificate (`O=system:masters`) for the tests and the
//!   controllers, written into `kubeconfig`;
//! - a client certificate for the bridge (`CN=kedge-bridge`, no groups: it
//!   only gets what `edge-manifests/bridge-rbac.yaml` grants), in
//!   `bridge_kubeconfig`;
//! - the apiserver's kubelet client certificate (`CN=kube-apiserver-kubelet-client`,
//!   no groups: `edge-manifests/bridge-rbac.yaml` binds it to
//!   `system:kubelet-api-admin`, which the bridge's SubjectAccessReviews
//!   check) and a kubelet serving certificate for the bridge (127.0.0.1):
//!   the apiserver verifies the bridge's kubelet API against the CA, and the
//!   bridge verifies the apiserver's client certificate against it;
//! - on demand, client certificates for test users ([`ControlPlane::user_cert`]).
//! - an RSA key pair for service-account tokens.
//!
//! [`Kubectl`] drives a real kubectl (`tests/k8s-harness/kubectl/build.sh`,
//! the control plane's release) against such a control plane through one of
//! its kubeconfigs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;

use super::{
    TestPki, free_port, leaf_ext, openssl, read_lossy, repo_root, run_with_deadline, wait_until,
};

/// Directory of the built control-plane binaries: `KEDGE_K8S_BIN_DIR` if set,
/// else the output of `tests/k8s-harness/build.sh` (built once per machine
/// and input hash; a cache hit takes milliseconds).
pub fn k8s_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("KEDGE_K8S_BIN_DIR") {
            return PathBuf::from(d);
        }
        let script = repo_root().join("tests/k8s-harness/build.sh");
        let out = run_with_deadline(Command::new(&script), b"", Duration::from_secs(3600));
        assert!(
            out.status.success(),
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = stdout.lines().last().unwrap_or_default().trim().to_string();
        assert!(!dir.is_empty(), "build.sh printed no directory");
        PathBuf::from(dir)
    })
    .clone()
}

/// The kubectl the tests drive: `KEDGE_KUBECTL` if set (scripts/test.sh
/// builds it in the background and sets it), else the output of
/// `tests/k8s-harness/kubectl/build.sh` (built once per machine and input
/// hash: under a minute with the control plane's Go cache warm, milliseconds
/// when cached). `Err` says why there is none (the variable names no
/// executable, or the build failed, e.g. without Go).
pub fn kubectl_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| harness_bin("KEDGE_KUBECTL", "kubectl"))
        .clone()
}

/// The metrics-server the `kubectl top` tests run: `KEDGE_METRICS_SERVER`
/// if set (scripts/test.sh builds it in the background), else the output of
/// `tests/k8s-harness/metrics-server/build.sh`, as [`kubectl_bin`].
pub fn metrics_server_bin() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| harness_bin("KEDGE_METRICS_SERVER", "metrics-server"))
        .clone()
}

/// A Go program of the harness: the executable `var` names, else the one
/// `tests/k8s-harness/{name}/build.sh` builds (it prints its directory).
fn harness_bin(var: &str, name: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if executable(&p) {
            Ok(p)
        } else {
            Err(format!("{var}={} is not an executable file", p.display()))
        };
    }
    let script = repo_root().join(format!("tests/k8s-harness/{name}/build.sh"));
    let out = run_with_deadline(Command::new(&script), b"", Duration::from_secs(1800));
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        eprintln!("{stderr}");
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "{var} is not set and {} failed ({}): {}",
            script.display(),
            out.status,
            last.unwrap_or("no output")
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = PathBuf::from(stdout.lines().last().unwrap_or_default().trim()).join(name);
    if executable(&bin) {
        Ok(bin)
    } else {
        Err(format!(
            "{} printed no directory holding {name}",
            script.display()
        ))
    }
}

/// The kubectl for `test`, or `None` after one skip line
/// (`KEDGE-TEST-SKIPPED <test>: …`, counted by scripts/test.sh) when there
/// is none. In CI (`CI=true`) a missing kubectl fails the test instead.
pub fn kubectl_or_skip(test: &str) -> Option<PathBuf> {
    bin_or_skip(test, "kubectl", kubectl_bin(), "KEDGE_KUBECTL")
}

/// The metrics-server for `test`, as [`kubectl_or_skip`].
pub fn metrics_server_or_skip(test: &str) -> Option<PathBuf> {
    bin_or_skip(
        test,
        "metrics-server",
        metrics_server_bin(),
        "KEDGE_METRICS_SERVER",
    )
}

fn bin_or_skip(test: &str, name: &str, bin: Result<PathBuf, String>, var: &str) -> Option<PathBuf> {
    match bin {
        Ok(bin) => Some(bin),
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test} needs {name}, and CI must run it: {why}")
        }
        Err(why) => {
            super::skip_test(
                test,
                &format!(
                    "no {name} ({why}); scripts/test.sh builds it \
                     (tests/k8s-harness/{name}/build.sh) and sets {var}"
                ),
            );
            None
        }
    }
}

/// A real kubectl as one user of a control plane: every command runs with
/// `--kubeconfig` (the user), `KUBECONFIG` unset, no kuberc preferences
/// (`KUBERC=off`) and a discovery cache of its own, so nothing of the
/// machine's `~/.kube` takes part.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache: TempDir,
}

impl Kubectl {
    pub fn new(bin: &Path, kubeconfig: &Path) -> Kubectl {
        Kubectl {
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            cache: tempfile::Builder::new()
                .prefix("kedge-kubectl-cache-")
                .tempdir()
                .expect("kubectl cache dir"),
        }
    }

    /// Runs `kubectl ARGS…` to its end (at most two minutes).
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with_input(args, b"")
    }

    /// Runs `kubectl ARGS…` to its end with `input` on its stdin.
    pub fn run_with_input(&self, args: &[&str], input: &[u8]) -> std::process::Output {
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s")
            .args(args)
            .env_remove("KUBECONFIG")
            .env("KUBERC", "off")
            .env("KUBECACHEDIR", self.cache.path());
        run_with_deadline(cmd, input, Duration::from_secs(120))
    }

    /// Runs `kubectl ARGS…` to its end in a terminal of `rows` × `cols`
    /// (a pseudo-terminal made by util-linux `script`), as a user at a
    /// shell runs `kubectl exec -it`: stdout is what the terminal showed.
    pub fn run_in_terminal(&self, args: &[&str], rows: u16, cols: u16) -> std::process::Output {
        let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
        let mut line = format!(
            "stty rows {rows} cols {cols}; exec {} {}",
            quote(&self.bin.display().to_string()),
            quote(&format!("--kubeconfig={}", self.kubeconfig.display())),
        );
        for a in args {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let mut cmd = Command::new("script");
        cmd.args(["-q", "-e", "-c", &line, "/dev/null"])
            .env_remove("KUBECONFIG")
            .env("KUBERC", "off")
            .env("KUBECACHEDIR", self.cache.path());
        run_with_deadline(cmd, b"", Duration::from_secs(120))
    }

    /// Starts `kubectl ARGS…` (a long-running one, such as port-forward),
    /// stdout and stderr piped; the caller kills it.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(&self.bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .env("KUBERC", "off")
            .env("KUBECACHEDIR", self.cache.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start kubectl")
    }

    /// `kubectl ARGS…`, which must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The rows of a table kubectl prints (`get`, header first), each split at
/// whitespace: fine for the columns the tests read, none of which holds a
/// space.
pub fn kubectl_rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// Options for [`ControlPlane::start`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOpts {
    /// Start kube-controller-manager and kube-scheduler (Deployments,
    /// DaemonSets, scheduling, node lifecycle). Off: apiserver and etcd only.
    pub controllers: bool,
    /// `--node-monitor-grace-period` of the node lifecycle controller.
    pub node_monitor_grace: Duration,
}

impl Default for ControlPlaneOpts {
    fn default() -> Self {
        ControlPlaneOpts {
            controllers: true,
            node_monitor_grace: Duration::from_secs(15),
        }
    }
}

/// The certificate and key files of one control plane.
#[derive(Debug, Clone)]
pub struct ClusterCerts {
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    /// Client certificate of the apiserver towards kubelets (signed by `ca`).
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// A kubelet serving certificate for 127.0.0.1 (signed by `ca`).
    pub kubelet_serving_cert: PathBuf,
    pub kubelet_serving_key: PathBuf,
}

/// A running control plane; every process is killed on drop.
pub struct ControlPlane {
    dir: TempDir,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// Admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// Kubeconfig of the `kedge-bridge` user (no rights until RBAC grants them).
    pub bridge_kubeconfig: PathBuf,
    pub certs: ClusterCerts,
    procs: Vec<Proc>,
}

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Reverse start order: controllers, apiserver, then etcd.
        for p in self.procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                let log = read_lossy(&p.log);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- last lines of {} ({})", p.name, p.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl ControlPlane {
    /// Starts etcd and the apiserver (and the controllers unless disabled),
    /// and returns once the apiserver answers `/readyz` with `ok`.
    pub fn start(opts: ControlPlaneOpts) -> ControlPlane {
        let bin = k8s_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("kedge-k8s-")
            .tempdir()
            .expect("create control-plane temp dir");
        let d = dir.path().to_path_buf();
        let certs = generate_certs(&d);
        let p = |n: &str| d.join(n);

        let mut cp = ControlPlane {
            server: String::new(),
            kubeconfig: p("admin.kubeconfig"),
            bridge_kubeconfig: p("bridge.kubeconfig"),
            certs,
            procs: Vec::new(),
            dir,
        };

        // etcd
        let etcd_port = free_port();
        let etcd_peer = free_port();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        cp.spawn(
            "etcd",
            Command::new(bin.join("etcd"))
                .arg("--data-dir")
                .arg(p("etcd-data"))
                .arg(format!("--listen-client-urls={etcd_url}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}")),
        );

        // kube-apiserver
        let port = free_port();
        cp.server = format!("https://127.0.0.1:{port}");
        let c = &cp.certs;
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.args([
            &format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            &format!("--secure-port={port}"),
            &format!("--tls-cert-file={}", p("apiserver.pem").display()),
            &format!("--tls-private-key-file={}", p("apiserver.key").display()),
            &format!("--client-ca-file={}", c.ca.display()),
            "--authorization-mode=Node,RBAC",
            "--service-cluster-ip-range=10.96.0.0/16",
            &format!("--service-account-key-file={}", p("sa.pub").display()),
            &format!(
                "--service-account-signing-key-file={}",
                p("sa.key").display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!(
                "--kubelet-client-certificate={}",
                c.kubelet_client_cert.display()
            ),
            &format!("--kubelet-client-key={}", c.kubelet_client_key.display()),
            &format!("--kubelet-certificate-authority={}", c.ca.display()),
            // The aggregation layer (metrics.k8s.io from a metrics-server,
            // [`MetricsServer`]): requests proxied with the front proxy's
            // client certificate, and routed to the endpoint, not the
            // service IP (there is no kube-proxy here).
            &format!("--requestheader-client-ca-file={}", c.ca.display()),
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            &format!(
                "--proxy-client-cert-file={}",
                p("front-proxy-client.pem").display()
            ),
            &format!(
                "--proxy-client-key-file={}",
                p("front-proxy-client.key").display()
            ),
            "--enable-aggregator-routing=true",
            "--enable-priority-and-fairness=false",
            "--profiling=false",
            "--v=1",
        ]);
        cp.spawn("kube-apiserver", &mut api);

        write_kubeconfig(
            &cp.kubeconfig,
            &cp.server,
            &cp.certs.ca,
            &p("admin.pem"),
            &p("admin.key"),
        );
        write_kubeconfig(
            &cp.bridge_kubeconfig,
            &cp.server,
            &cp.certs.ca,
            &p("bridge.pem"),
            &p("bridge.key"),
        );

        let admin = (p("admin.pem"), p("admin.key"));
        let ca = cp.certs.ca.clone();
        let server = cp.server.clone();
        wait_until(
            "kube-apiserver to answer /readyz",
            Duration::from_secs(120),
            || {
                cp.assert_running();
                let out = Command::new("curl")
                    .args(["-sS", "--max-time", "5", "--cacert"])
                    .arg(&ca)
                    .arg("--cert")
                    .arg(&admin.0)
                    .arg("--key")
                    .arg(&admin.1)
                    .arg(format!("{server}/readyz"))
                    .output()
                    .ok()?;
                (out.status.success() && out.stdout == b"ok").then_some(())
            },
        );

        if opts.controllers {
            let grace = opts.node_monitor_grace.as_secs().max(2);
            let mut cm = Command::new(bin.join("kube-controller-manager"));
            cm.args([
                &format!("--kubeconfig={}", cp.kubeconfig.display()),
                &format!("--authentication-kubeconfig={}", cp.kubeconfig.display()),
                &format!("--authorization-kubeconfig={}", cp.kubeconfig.display()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()),
                "--leader-elect=false",
                &format!(
                    "--service-account-private-key-file={}",
                    p("sa.key").display()
                ),
                &format!("--root-ca-file={}", cp.certs.ca.display()),
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-service,-route,-cloud-node-lifecycle",
                "--node-monitor-period=1s",
                &format!("--node-monitor-grace-period={grace}s"),
                "--concurrent-deployment-syncs=5",
                // HPAs are evaluated every 2 s instead of 15 s (only the HPA
                // test makes any; nothing else is watched more often).
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--v=1",
            ]);
            cp.spawn("kube-controller-manager", &mut cm);
            let mut sched = Command::new(bin.join("kube-scheduler"));
            sched.args([
                &format!("--kubeconfig={}", cp.kubeconfig.display()),
                &format!("--authentication-kubeconfig={}", cp.kubeconfig.display()),
                &format!("--authorization-kubeconfig={}", cp.kubeconfig.display()),
                "--bind-address=127.0.0.1",
                &format!("--secure-port={}", free_port()),
                "--leader-elect=false",
                "--v=1",
            ]);
            cp.spawn("kube-scheduler", &mut sched);
        }
        cp
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) {
        let log = self.dir.path().join(format!("{name}.log"));
        let f = File::create(&log).expect("create component log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log fd"))
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        self.procs.push(Proc { name, child, log });
    }

    /// Panics (with the component's log) if a component has exited.
    pub fn assert_running(&mut self) {
        for p in &mut self.procs {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("{} exited ({status}):\n{}", p.name, read_lossy(&p.log));
            }
        }
    }

    /// The log of a component so far.
    pub fn log(&self, name: &str) -> String {
        self.procs
            .iter()
            .find(|p| p.name == name)
            .map(|p| read_lossy(&p.log))
            .unwrap_or_default()
    }

    /// A client certificate from the cluster CA for `subject`
    /// (`/CN=alice/O=dev`: user alice in group dev); returns (cert, key).
    pub fn user_cert(&self, file_name: &str, subject: &str) -> (PathBuf, PathBuf) {
        let pki = TestPki {
            dir: self.dir.path(),
            days: "30",
        };
        pki.leaf(
            file_name,
            subject,
            &leaf_ext("digitalSignature, keyEncipherment", "clientAuth", ""),
        );
        let d = self.dir.path();
        (
            d.join(format!("{file_name}.pem")),
            d.join(format!("{file_name}.key")),
        )
    }

    /// The temp dir holding certificates, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write_kubeconfig(path: &Path, server: &str, ca: &Path, cert: &Path, key: &Path) {
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: kedge-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n\
         - name: user\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n\
         - name: kedge-test\n  context:\n    cluster: kedge-test\n    user: user\n\
         current-context: kedge-test\n",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    );
    std::fs::write(path, text).expect("write kubeconfig");
}

/// Every certificate and key of a control plane, made with the `openssl` CLI.
fn generate_certs(d: &Path) -> ClusterCerts {
    let p = |n: &str| d.join(n);
    let pki = TestPki { dir: d, days: "30" };
    pki.ca(
        "/CN=kedge-k8s-test-ca",
        "keyCertSign, cRLSign, digitalSignature",
    );
    let usage = "digitalSignature, keyEncipherment";
    let server_san = "subjectAltName = DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, \
                      DNS:kubernetes.default.svc, IP:127.0.0.1, IP:10.96.0.1\n";
    // And this machine's own address, for a bridge that advertises it
    // (the apiserver's node proxy refuses loopback addresses).
    let kubelet_san = match host_ipv4() {
        Ok(ip) => format!("subjectAltName = DNS:localhost, IP:127.0.0.1, IP:{ip}\n"),
        Err(_) => "subjectAltName = DNS:localhost, IP:127.0.0.1\n".to_string(),
    };
    let kubelet_san = kubelet_san.as_str();
    let leaves = [
        ("apiserver", "/CN=kube-apiserver", "serverAuth", server_san),
        (
            "admin",
            "/O=system:masters/CN=kedge-admin",
            "clientAuth",
            "",
        ),
        ("bridge", "/CN=kedge-bridge", "clientAuth", ""),
        // No admin group: RBAC gives it what it needs on kubelets
        // (edge-manifests/bridge-rbac.yaml binds system:kubelet-api-admin).
        (
            "kubelet-client",
            "/CN=kube-apiserver-kubelet-client",
            "clientAuth",
            "",
        ),
        (
            "kubelet-serving",
            "/CN=kedge-bridge-kubelet",
            "serverAuth",
            kubelet_san,
        ),
        // The apiserver towards aggregated API servers (metrics-server).
        (
            "front-proxy-client",
            "/CN=front-proxy-client",
            "clientAuth",
            "",
        ),
    ];
    for (name, subject, eku, san) in leaves {
        pki.leaf(name, subject, &leaf_ext(usage, eku, san));
    }
    openssl(
        d,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ],
    );
    openssl(d, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    ClusterCerts {
        ca: p("ca.pem"),
        ca_key: p("ca.key"),
        kubelet_client_cert: p("kubelet-client.pem"),
        kubelet_client_key: p("kubelet-client.key"),
        kubelet_serving_cert: p("kubelet-serving.pem"),
        kubelet_serving_key: p("kubelet-serving.key"),
    }
}

/// Options for [`BridgeProc::start`].
#[derive(Debug, Clone)]
pub struct BridgeOpts {
    pub broker_url: String,
    pub kubeconfig: PathBuf,
    pub certs: ClusterCerts,
    /// Extra arguments after the standard ones.
    pub extra_args: Vec<String>,
}

/// A running `kedge bridge`; SIGKILLed on drop. Its kubelet API listens on
/// 127.0.0.1 at a free port with the control plane's kubelet serving
/// certificate and verifies clients against the control plane's CA.
pub struct BridgeProc {
    /// In a mutex so that [`BridgeProc::assert_running`] takes `&self` and
    /// can run inside any wait.
    child: Mutex<Option<Child>>,
    /// Where its shared kubelet API listens: 127.0.0.1, or the
    /// `--advertise-address` given in `extra_args`.
    pub kubelet_host: String,
    pub kubelet_port: u16,
    log: PathBuf,
    _dir: TempDir,
}

impl BridgeProc {
    pub fn start(opts: BridgeOpts) -> BridgeProc {
        let dir = tempfile::Builder::new()
            .prefix("kedge-bridge-")
            .tempdir()
            .expect("bridge temp dir");
        let log = dir.path().join("bridge.log");
        let f = File::create(&log).expect("create bridge.log");
        let kubelet_port = free_port();
        // An `--advertise-address` in `extra_args` is also where it listens.
        let given = opts
            .extra_args
            .iter()
            .position(|a| a == "--advertise-address")
            .and_then(|i| opts.extra_args.get(i + 1).cloned());
        let kubelet_host = given.clone().unwrap_or_else(|| "127.0.0.1".into());
        let mut cmd = Command::new(super::kedge_bin());
        cmd.arg("bridge")
            .arg("--broker")
            .arg(&opts.broker_url)
            .arg("--kubeconfig")
            .arg(&opts.kubeconfig);
        if given.is_none() {
            cmd.args(["--advertise-address", "127.0.0.1"]);
        }
        let child = cmd
            .arg(format!("--kubelet-listen={kubelet_host}:{kubelet_port}"))
            .arg("--tls-cert-file")
            .arg(&opts.certs.kubelet_serving_cert)
            .arg("--tls-private-key-file")
            .arg(&opts.certs.kubelet_serving_key)
            .arg("--client-ca-file")
            .arg(&opts.certs.ca)
            .args(&opts.extra_args)
            .env("KEDGE_LOG", "info,kedge=debug")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn kedge bridge");
        BridgeProc {
            child: Mutex::new(Some(child)),
            kubelet_host,
            kubelet_port,
            log,
            _dir: dir,
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn pid(&self) -> u32 {
        self.child().as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILLs the bridge (a replica dying).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (what Kubernetes sends a pod it stops) and waits up to
    /// `deadline` for the bridge to exit; returns its exit status.
    pub fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        let pid = self.pid();
        let st = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(st.success(), "kill -TERM {pid} failed: {st}");
        // On timeout this panics and Drop SIGKILLs the bridge.
        let status = wait_until(
            &format!("kedge bridge (pid {pid}) to exit after SIGTERM"),
            deadline,
            || {
                self.child()
                    .as_mut()
                    .and_then(|c| c.try_wait().expect("try_wait bridge"))
            },
        );
        self.child().take();
        status
    }

    /// The bridge's output so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Panics with the log if the bridge has exited.
    pub fn assert_running(&self) {
        let exited = self
            .child()
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            panic!("kedge bridge exited ({status}):\n{}", read_lossy(&self.log));
        }
    }

    /// [`wait_until`], failing at once (with the bridge's log) if the
    /// bridge has exited.
    pub fn wait<T>(&self, what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        wait_until(what, deadline, || {
            self.assert_running();
            f()
        })
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let log = read_lossy(&self.log);
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of kedge bridge ({})", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// One value of the bridge's Prometheus metrics (`/metrics` on its kubelet
/// API, read with the control plane's admin certificate), for benchmarks.
pub fn bridge_metric(cp: &ControlPlane, port: u16, name: &str) -> Option<f64> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(&cp.certs.ca)
        .arg("--cert")
        .arg(cp.dir().join("admin.pem"))
        .arg("--key")
        .arg(cp.dir().join("admin.key"))
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .ok()?;
    let prefix = format!("{name} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// A process's CPU time (user + system) so far, for benchmarks.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|v| v.parse::<u64>().ok()))
        .sum();
    // USER_HZ: 100 on every Linux architecture kedge builds for.
    Duration::from_millis(ticks * 10)
}

/// A real metrics-server (`tests/k8s-harness/metrics-server`) beside a
/// [`ControlPlane`], registered as the `v1beta1.metrics.k8s.io` APIService
/// once [`MetricsServer::manifest`] is applied, so `kubectl top` works.
/// It scrapes every Node's kubelet API at the Node's `InternalIP` and
/// `daemonEndpoints` port (`--kubelet-use-node-status-port`) with the
/// apiserver's kubelet client certificate, every 10 s (its minimum).
/// Killed on drop.
pub struct MetricsServer {
    child: Mutex<Child>,
    log: PathBuf,
    /// The Service, Endpoints and APIService that route metrics.k8s.io to
    /// this process (`kubectl apply -f` it as an admin).
    pub manifest: PathBuf,
}

/// This machine's first non-loopback IPv4 address: the apiserver refuses
/// loopback endpoints, so an aggregated API server must listen on another.
pub fn host_ipv4() -> Result<std::net::Ipv4Addr, String> {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .map_err(|e| format!("cannot run hostname -I: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|a| a.parse::<std::net::Ipv4Addr>().ok())
        .find(|a| !a.is_loopback() && !a.is_link_local() && !a.is_unspecified())
        .ok_or_else(|| "this machine has no non-loopback IPv4 address (hostname -I)".to_string())
}

impl MetricsServer {
    pub fn start(cp: &ControlPlane, bin: &Path, ip: std::net::Ipv4Addr) -> MetricsServer {
        let d = cp.dir().join("metrics-server");
        std::fs::create_dir_all(&d).expect("metrics-server dir");
        let log = d.join("metrics-server.log");
        let f = File::create(&log).expect("create metrics-server.log");
        let port = free_port();
        let kubeconfig = cp.kubeconfig.display().to_string();
        let child = Command::new(bin)
            .arg(format!("--secure-port={port}"))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--cert-dir={}", d.display()))
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--authentication-kubeconfig={kubeconfig}"))
            .arg(format!("--authorization-kubeconfig={kubeconfig}"))
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg("--kubelet-use-node-status-port")
            .arg(format!(
                "--kubelet-certificate-authority={}",
                cp.certs.ca.display()
            ))
            .arg(format!(
                "--kubelet-client-certificate={}",
                cp.certs.kubelet_client_cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                cp.certs.kubelet_client_key.display()
            ))
            .arg("--metric-resolution=10s")
            .arg("--kubelet-request-timeout=5s")
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("dup log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn metrics-server");
        let manifest = d.join("metrics-server.yaml");
        std::fs::write(
            &manifest,
            format!(
                "apiVersion: v1
kind: Service
metadata: {{name: metrics-server, namespace: kube-system}}
spec:
  ports: [{{name: https, port: {port}, targetPort: {port}, protocol: TCP}}]
---
apiVersion: v1
kind: Endpoints
metadata: {{name: metrics-server, namespace: kube-system}}
subsets:
- addresses: [{{ip: \"{ip}\"}}]
  ports: [{{name: https, port: {port}, protocol: TCP}}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {{name: v1beta1.metrics.k8s.io}}
spec:
  service: {{name: metrics-server, namespace: kube-system, port: {port}}}
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
"
            ),
        )
        .expect("write metrics-server.yaml");
        MetricsServer {
            child: Mutex::new(child),
            log,
            manifest,
        }
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Panics (Drop prints its last lines) if it has exited.
    pub fn assert_running(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(Some(status)) = child.try_wait() {
            panic!("metrics-server exited: {status}");
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of metrics-server ({})", self.log.display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}
