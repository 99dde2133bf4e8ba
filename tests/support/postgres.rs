//! A real PostgreSQL server (Debian's package) for the data path's tests:
//! its own cluster made by `initdb` in a temporary directory, on a free
//! loopback port, as the `postgres` user when the tests run as root (the
//! server refuses to run as root); killed and removed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{free_port, run_with_deadline};

/// The newest `/usr/lib/postgresql/*/bin`, or `$KEDGE_PG_BIN`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KEDGE_PG_BIN").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

pub struct Postgres {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The uid and gid of the `postgres` user (`id`).
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no postgres user (id {flag} postgres)"))
    };
    (id("-u"), id("-g"))
}

/// `bin/name`, run as `postgres` when root (the process itself, so killing
/// it kills the server).
fn as_owner(bin: &Path, name: &str) -> Command {
    let mut cmd = Command::new(bin.join(name));
    if is_root() {
        use std::os::unix::process::CommandExt as _;
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    cmd
}

impl Postgres {
    /// Makes a cluster and starts it; panics (with the log) if it cannot.
    pub fn start() -> Postgres {
        let bin = pg_bin_dir().expect(
            "PostgreSQL is not installed (apt-get install postgresql; scripts/test.sh does)",
        );
        let dir = tempfile::Builder::new()
            .prefix("kedge-postgres-")
            .tempdir()
            .expect("create postgres temp dir");
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(st.success(), "chown the postgres temp dir");
        }
        let data = dir.path().join("pgdata");
        let mut init = as_owner(&bin, "initdb");
        init.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        let out = run_with_deadline(init, b"", Duration::from_secs(120));
        assert!(
            out.status.success(),
            "initdb failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log");
        let child = as_owner(&bin, "postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-k")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("spawn postgres");
        let mut pg = Postgres {
            port,
            dir,
            child: Some(child),
        };
        let start = Instant::now();
        loop {
            if let Some(st) = pg.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("postgres exited ({st}):\n{}", pg.log());
            }
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && pg.try_psql("SELECT 1").as_deref() == Some("1")
            {
                return pg;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "postgres not ready after 60 s:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A libpq connection string for `postgres` on this server.
    pub fn conn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn try_psql(&self, sql: &str) -> Option<String> {
        let bin = pg_bin_dir()?;
        let mut cmd = Command::new(bin.join("psql"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ]);
        let out = run_with_deadline(cmd, b"", Duration::from_secs(60));
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Runs `sql` with psql and returns its unaligned output; panics on error.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|| panic!("psql {sql:?} failed; server log:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
