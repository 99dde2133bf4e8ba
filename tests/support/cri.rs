//! A real containerd for the CRI tests: its own config, socket, root and
//! state under a temp dir, runc, a CNI bridge with its own name and subnet,
//! busybox and pause images built locally from busybox-static (umoci,
//! skopeo), and Debian's docker-registry on loopback with htpasswd auth.
//!
//! Everything is torn down by `Drop` (also when a test panics): pod
//! processes and shims, containerd, mounts under the temp dir, the bridge,
//! the iptables rules and chains of our CNI network, CNI cache entries and
//! the cgroups under our own cgroup parent. See
//! ../shared/notes/cri-on-this-machine.md for why each setting is there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::{free_port, poll_until, read_lossy, run_with_deadline};

/// The busybox image every container test runs (imported, never pulled).
pub const BUSYBOX: &str = "kedge.test/busybox:1";
/// The sandbox ("pause") image containerd is configured with.
pub const PAUSE: &str = "kedge.test/pause:1";

/// Whether the CRI tests can run here. They need root (containerd, CNI,
/// cgroups); without it they print one line and skip. CI runs as root.
///
/// The line is written to stderr directly, past libtest's output capture
/// (which swallows `eprintln!` of passing tests), and starts with
/// `KEDGE-TEST-SKIPPED <test>:`: scripts/test.sh counts these lines and CI
/// fails on a root machine if any appear.
pub fn cri_tests_can_run(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    super::skip_test(
        test,
        "the CRI tests need root (they start containerd, CNI bridges and cgroups)",
    );
    false
}

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(cmd);
    c.args(args);
    run_with_deadline(c, b"", Duration::from_secs(120))
}

fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Images

/// Image archives built once per machine and kept in
/// `$KEDGE_CRI_IMAGE_CACHE` (default `$KEDGE_CACHE_ROOT`, else /var/tmp): an
/// OCI layout with `busybox` and `pause` tags and a docker-archive per image.
pub struct ImageCache {
    pub layout: PathBuf,
    pub busybox_tar: PathBuf,
    pub pause_tar: PathBuf,
}

/// Builds (or finds) the images. The cache key is the busybox binary's
/// digest, so a new busybox-static makes new images. Safe across test
/// processes: each builds into its own temp dir and renames it into place.
pub fn images() -> &'static ImageCache {
    static CACHE: std::sync::OnceLock<ImageCache> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.is_file(),
            "/bin/busybox is missing: install busybox-static (scripts/test.sh does)"
        );
        let key = &super::sha256_file(busybox)[..16];
        let parent = super::cache_dir("KEDGE_CRI_IMAGE_CACHE", "");
        std::fs::create_dir_all(&parent).expect("CRI image cache dir");
        let dir = parent.join(format!("kedge-cri-images-{key}"));
        let cache = ImageCache {
            layout: dir.join("layout"),
            busybox_tar: dir.join("busybox.tar"),
            pause_tar: dir.join("pause.tar"),
        };
        if cache.pause_tar.is_file() {
            return cache;
        }
        let tmp = tempfile::Builder::new()
            .prefix("kedge-cri-images-build-")
            .tempdir_in(&parent)
            .expect("temp dir for images");
        build_images(tmp.path());
        let built = tmp.keep();
        if std::fs::rename(&built, &dir).is_err() {
            // Another process won the race; use its images.
            let _ = std::fs::remove_dir_all(&built);
        }
        assert!(cache.pause_tar.is_file(), "images were not built");
        cache
    })
}

fn build_images(dir: &Path) {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let l = layout.to_str().expect("utf8");
    let b = bundle.to_str().expect("utf8");
    sh_ok("umoci", &["init", "--layout", l]);
    sh_ok("umoci", &["new", "--image", &format!("{l}:busybox")]);
    sh_ok(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{l}:busybox"),
            b,
        ],
    );
    let rootfs = bundle.join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir bin");
    for d in ["tmp", "etc", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy busybox");
    let list = sh_ok("/bin/busybox", &["--list"]);
    for applet in list.lines().map(str::trim).filter(|a| !a.is_empty()) {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    std::fs::write(
        rootfs.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    sh_ok("umoci", &["repack", "--image", &format!("{l}:busybox"), b]);
    sh_ok(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{l}:busybox"),
            "--config.env",
            "PATH=/bin",
            "--config.cmd",
            "/bin/sh",
            "--tag",
            "busybox",
        ],
    );
    // busybox `sleep` is the pause process: sandboxes are stopped with SIGKILL.
    sh_ok(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{l}:busybox"),
            "--config.entrypoint",
            "/bin/sleep",
            "--config.cmd",
            "2147483647",
            "--tag",
            "pause",
        ],
    );
    for (tag, name, tar) in [
        ("busybox", BUSYBOX, "busybox.tar"),
        ("pause", PAUSE, "pause.tar"),
    ] {
        let dest = format!("docker-archive:{}:{name}", dir.join(tar).display());
        sh_ok("skopeo", &["copy", &format!("oci:{l}:{tag}"), &dest]);
    }
    let _ = std::fs::remove_dir_all(&bundle);
}

/// A docker-archive in `dir` of the busybox image with `binary` added as
/// `/bin/{its file name}`, tagged `name` (for `ctr images import`): how a
/// test puts a program of its own into a local image.
pub fn busybox_with(binary: &Path, name: &str, dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&images().layout)
        .arg(&layout)
        .status()
        .expect("cp");
    assert!(copied.success(), "cannot copy the busybox layout");
    let (l, b) = (
        layout.to_str().expect("utf8"),
        bundle.to_str().expect("utf8"),
    );
    sh_ok(
        "umoci",
        &[
            "unpack",
            "--rootless",
            "--image",
            &format!("{l}:busybox"),
            b,
        ],
    );
    let file_name = binary.file_name().expect("a file");
    std::fs::copy(binary, bundle.join("rootfs/bin").join(file_name)).expect("copy the binary");
    sh_ok("umoci", &["repack", "--image", &format!("{l}:custom"), b]);
    let tar = dir.join("custom.tar");
    sh_ok(
        "skopeo",
        &[
            "copy",
            &format!("oci:{l}:custom"),
            &format!("docker-archive:{}:{name}", tar.display()),
        ],
    );
    let _ = std::fs::remove_dir_all(&bundle);
    tar
}

// ---------------------------------------------------------------------------
// containerd

/// A containerd of our own; everything it made is removed on drop.
pub struct Containerd {
    /// Holds config, socket, root, state, CNI config and host-local leases.
    pub dir: TempDir,
    pub socket: PathBuf,
    /// The CNI network's name (also its comment in iptables rules).
    pub network: String,
    /// The Linux bridge the CNI plugin makes.
    pub bridge: String,
    /// `10.x.y.0/24`: the pods' subnet.
    pub subnet: String,
    /// The cgroup parent the agent must use (`cri.cgroup_parent`), so
    /// teardown can remove every cgroup the tests made.
    pub cgroup_parent: String,
    log: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd and imports the busybox and pause images.
    pub fn start() -> Containerd {
        let images = images();
        let dir = tempfile::Builder::new()
            .prefix("kedge-containerd-")
            .tempdir_in("/var/tmp")
            .expect("containerd temp dir");
        let id = uuid::Uuid::new_v4().simple().to_string();
        let network = format!("kedge-test-{}", &id[..8]);
        let bridge = format!("kt{}", &id[..8]);
        let subnet = format!(
            "10.{}.{}.0/24",
            200 + fastrand::u8(0..50),
            fastrand::u8(1..255)
        );
        let socket = dir.path().join("containerd.sock");
        let p = |s: &str| dir.path().join(s).display().to_string();
        std::fs::create_dir_all(dir.path().join("net.d")).expect("mkdir net.d");
        std::fs::create_dir_all(dir.path().join("certs.d")).expect("mkdir certs.d");
        let conflist = format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "{network}",
  "plugins": [
    {{"type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": true, "hairpinMode": true,
      "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{subnet}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}], "dataDir": "{leases}"}}}},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}},
    {{"type": "loopback"}}
  ]
}}
"#,
            leases = p("cni-leases"),
        );
        std::fs::write(dir.path().join("net.d/10-kedge-test.conflist"), conflist)
            .expect("write conflist");
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{netd}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{certs}"
"#,
            root = p("root"),
            state = p("state"),
            sock = socket.display(),
            opt = p("opt"),
            runc_root = p("runc"),
            netd = p("net.d"),
            certs = p("certs.d"),
        );
        std::fs::write(dir.path().join("config.toml"), config).expect("write config.toml");
        let log = dir.path().join("containerd.log");
        let mut c = Containerd {
            socket,
            network,
            bridge,
            subnet,
            cgroup_parent: format!("/kedge-test-{}", &id[..8]),
            log,
            child: None,
            dir,
        };
        c.start_daemon();
        for tar in [&images.pause_tar, &images.busybox_tar] {
            c.ctr(&[
                "-n",
                "k8s.io",
                "images",
                "import",
                tar.to_str().expect("utf8"),
            ]);
        }
        c
    }

    /// Starts the containerd process (again) and waits until it answers.
    pub fn start_daemon(&mut self) {
        assert!(self.child.is_none(), "containerd already runs");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.path().join("config.toml"))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("spawn containerd (is it installed?)");
        self.child = Some(child);
        let sock = self.socket.display().to_string();
        let up = poll_until(Duration::from_secs(30), Duration::from_millis(50), || {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|ch| ch.try_wait()) {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            let out = sh("ctr", &["-a", &sock, "version"]);
            out.status.success().then_some(())
        });
        assert!(
            up.is_some(),
            "containerd did not answer within 30 s:\n{}",
            self.log()
        );
    }

    /// Kills the containerd process only (shims and pods keep running), as
    /// a crash or an upgrade of the runtime would.
    pub fn stop_daemon(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Imports a docker-archive (`busybox_with`) into the CRI's namespace.
    pub fn import(&self, tar: &Path) {
        self.ctr(&[
            "-n",
            "k8s.io",
            "images",
            "import",
            tar.to_str().expect("utf8"),
        ]);
    }

    /// `unix://…`, the value for `cri.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `ctr -a SOCK ARGS` and returns stdout, panicking on failure.
    pub fn ctr(&self, args: &[&str]) -> String {
        let sock = self.socket.display().to_string();
        let mut all = vec!["-a", sock.as_str()];
        all.extend_from_slice(args);
        sh_ok("ctr", &all)
    }

    /// Ids of the CRI's containers (all states), via `ctr`.
    pub fn container_ids(&self) -> Vec<String> {
        self.ctr(&["-n", "k8s.io", "containers", "list", "-q"])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Ids of the containers (sandboxes included) of the pod named `pod`,
    /// found by the kubelet's pod-name label.
    pub fn container_ids_of_pod(&self, pod: &str) -> Vec<String> {
        let filter = format!("labels.\"io.kubernetes.pod.name\"=={pod}");
        let mut ids: Vec<String> = self
            .ctr(&["-n", "k8s.io", "containers", "list", "-q", &filter])
            .lines()
            .map(str::to_string)
            .collect();
        ids.sort();
        ids
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Agent flags that point kedge at this containerd.
    pub fn agent_args(&self) -> Vec<String> {
        vec![
            "--set".into(),
            format!("cri.endpoint={}", self.endpoint()),
            "--set".into(),
            format!("cri.cgroup_parent={}", self.cgroup_parent),
        ]
    }

    fn teardown(&mut self) {
        let root = self.dir.path().to_path_buf();
        let needle = root.display().to_string();
        // 0. Every container id (sandboxes included), to find what libcni
        //    cached for them (containerd's own `cni-loopback` network).
        let sock = self.socket.display().to_string();
        let ids: Vec<String> = Command::new("ctr")
            .args(["-a", &sock, "-n", "k8s.io", "containers", "list", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        // 1. Every shim of ours (their command line names our socket or
        //    state dir) and every process below them: the pods.
        let shims = pids_where(|cmdline| {
            cmdline.contains("containerd-shim") && cmdline.contains(needle.as_str())
        });
        let mut victims = Vec::new();
        for shim in &shims {
            descendants(*shim, &mut victims);
        }
        victims.extend(shims.iter().copied());
        for pid in &victims {
            kill9(*pid);
        }
        // 2. containerd itself.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // 3. Mounts under our dir (rootfs overlays, netns, shm), deepest first.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(needle.as_str()))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).output();
        }
        // 4. The bridge and the veths on it.
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
        // 5. iptables rules and chains CNI made for our network.
        remove_cni_iptables(&self.network);
        // 6. libcni's cache of our network's results.
        for dir in ["/var/lib/cni/results", "/var/lib/cni/cache/results"] {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with(&self.network)
                        || ids
                            .iter()
                            .any(|id| !id.is_empty() && name.contains(id.as_str()))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
        // 7. Our cgroups, in every hierarchy.
        remove_cgroups(self.cgroup_parent.trim_start_matches('/'));
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Pids whose command line (NUL turned into spaces) satisfies `pred`.
fn pids_where(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if pred(&cmd) {
                out.push(pid);
            }
        }
    }
    out
}

/// Every descendant of `pid` (children first collected, then theirs).
fn descendants(pid: i32, out: &mut Vec<i32>) {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    for t in rd.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
            out.push(c);
            descendants(c, out);
        }
    }
}

fn kill9(pid: i32) {
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .output();
}

/// Deletes the nat/filter rules that carry our network's comment, the rules
/// that jump to chains those rules live in, and then the chains.
fn remove_cni_iptables(network: &str) {
    for table in ["nat", "filter"] {
        let Ok(out) = Command::new("iptables-save").args(["-t", table]).output() else {
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let ours: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-A ") && l.contains(network))
            .collect();
        // Chains that hold our rules, or that our rules jump to (portmap's
        // per-pod `CNI-DN-…` chain carries no comment of its own: only the
        // jump to it in CNI-HOSTPORT-DNAT does), made by CNI for one pod.
        let mut chains: Vec<String> = ours
            .iter()
            .flat_map(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                let target = words
                    .iter()
                    .position(|w| *w == "-j")
                    .and_then(|i| words.get(i + 1).copied());
                words.get(1).copied().into_iter().chain(target)
            })
            .filter(|c| {
                c.starts_with("CNI-")
                    && !matches!(
                        *c,
                        "CNI-HOSTPORT-DNAT" | "CNI-HOSTPORT-SNAT" | "CNI-HOSTPORT-MASQ"
                    )
            })
            .map(str::to_string)
            .collect();
        chains.sort();
        chains.dedup();
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.starts_with("-A ")
                    && chains
                        .iter()
                        .any(|c| l.ends_with(&format!("-j {c}")) || l.contains(&format!("-j {c} ")))
            })
            .collect();
        for rule in ours.iter().chain(jumps.iter()) {
            let delete = format!("iptables -w -t {table} -D {}", &rule[3..]);
            let _ = Command::new("sh").args(["-c", &delete]).output();
        }
        for c in &chains {
            let _ = Command::new("iptables")
                .args(["-w", "-t", table, "-F", c])
                .output();
            let _ = Command::new("iptables")
                .args(["-w", "-t", table, "-X", c])
                .output();
        }
    }
}

/// Removes `/sys/fs/cgroup/*/{relative}` (deepest first) in every hierarchy.
fn remove_cgroups(relative: &str) {
    if relative.is_empty() {
        return;
    }
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let mut roots: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    roots.push(PathBuf::from("/sys/fs/cgroup"));
    for root in roots {
        let top = root.join(relative);
        if top.is_dir() {
            rmdir_tree(&top);
        }
    }
}

fn rmdir_tree(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_tree(&e.path());
            }
        }
    }
    // A cgroup with processes cannot go; they were killed above, so retry briefly.
    let _ = poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        std::fs::remove_dir(dir).ok()
    });
}

// ---------------------------------------------------------------------------
// Registry

/// Debian's docker-registry on a free loopback port, with htpasswd auth.
pub struct Registry {
    pub dir: TempDir,
    pub port: u16,
    pub user: String,
    pub password: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Registry {
    pub fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("kedge-registry-")
            .tempdir_in("/var/tmp")
            .expect("registry temp dir");
        let user = "kedge".to_string();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let htpasswd = dir.path().join("htpasswd");
        sh_ok(
            "htpasswd",
            &["-Bbc", htpasswd.to_str().expect("utf8"), &user, &password],
        );
        let log = dir.path().join("registry.log");
        for _attempt in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 auth:\n  htpasswd:\n    realm: kedge-test\n    path: {}\n\
                 http:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("storage").display(),
                htpasswd.display()
            );
            let conf = dir.path().join("config.yml");
            std::fs::write(&conf, config).expect("write registry config");
            let logf = std::fs::File::create(&log).expect("registry.log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().expect("dup"))
                .stderr(logf)
                .spawn()
                .expect("spawn docker-registry (is it installed?)");
            let up = poll_until(Duration::from_secs(20), Duration::from_millis(50), || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                std::net::TcpStream::connect(("127.0.0.1", port))
                    .is_ok()
                    .then_some(true)
            });
            if up == Some(true) {
                return Registry {
                    dir,
                    port,
                    user,
                    password,
                    child: Some(child),
                    log,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start:\n{}", read_lossy(&log));
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes the locally built busybox as `{host}/{repo}:{tag}`.
    pub fn push_busybox(&self, repo: &str, tag: &str) -> String {
        let image = format!("{}/{repo}:{tag}", self.host());
        let src = format!("oci:{}:busybox", images().layout.display());
        sh_ok(
            "skopeo",
            &[
                "copy",
                "--dest-tls-verify=false",
                "--dest-creds",
                &format!("{}:{}", self.user, self.password),
                &src,
                &format!("docker://{image}"),
            ],
        );
        image
    }

    /// A `.dockerconfigjson` for this registry with `password`.
    pub fn docker_config_json(&self, password: &str) -> String {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{password}", self.user).as_bytes());
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.host())
    }

    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
