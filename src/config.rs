//! Configuration: a TOML file, then `KEDGE_*` environment variables, then
//! command-line flags, each layer overriding the one before.
//!
//! `KEYS` below is the one place every key is documented (`kedge config keys`
//! prints it, docs/config.md is generated from it). A bad value names the key
//! and the value; the binary exits with status 64 (EX_USAGE) on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use thiserror::Error;

/// How a key's text is turned into a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Str,
    Int,
    Bool,
}

/// One documented configuration key.
pub struct KeyDoc {
    /// Dotted path in the TOML file; the environment variable is
    /// `KEDGE_` + the path in upper case with `.` turned into `_`.
    pub key: &'static str,
    pub ty: KeyType,
    pub default: &'static str,
    pub help: &'static str,
}

/// Every configuration key.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "node_name",
        ty: KeyType::Str,
        default: "<hostname>",
        help: "name of this node; a topic level, so no '/', '+' or '#'",
    },
    KeyDoc {
        key: "data_dir",
        ty: KeyType::Str,
        default: "/var/lib/kedge",
        help: "state directory: redb database, module cache, volumes, container logs",
    },
    KeyDoc {
        key: "manifests_dir",
        ty: KeyType::Str,
        default: "",
        help: "directory of static pod manifests to run and follow (empty: none)",
    },
    KeyDoc {
        key: "manifests_poll_ms",
        ty: KeyType::Int,
        default: "2000",
        help: "how often the static pod directory is re-read",
    },
    KeyDoc {
        key: "topic_prefix",
        ty: KeyType::Str,
        default: "kedge/v1",
        help: "MQTT topic prefix; each node owns {prefix}/{node}/#",
    },
    KeyDoc {
        key: "broker.url",
        ty: KeyType::Str,
        default: "",
        help: "mqtt://host:port or mqtts://host:port; empty: embedded broker on embedded_broker.listen (if built in), else offline",
    },
    KeyDoc {
        key: "broker.ca_file",
        ty: KeyType::Str,
        default: "",
        help: "PEM CA bundle that signs the broker's certificate (mqtts); empty: system roots",
    },
    KeyDoc {
        key: "broker.cert_file",
        ty: KeyType::Str,
        default: "",
        help: "PEM client certificate for mutual TLS",
    },
    KeyDoc {
        key: "broker.key_file",
        ty: KeyType::Str,
        default: "",
        help: "PEM private key (PKCS#8, PKCS#1 or SEC1) of the client certificate",
    },
    KeyDoc {
        key: "broker.username",
        ty: KeyType::Str,
        default: "",
        help: "MQTT username (empty: none)",
    },
    KeyDoc {
        key: "broker.password_file",
        ty: KeyType::Str,
        default: "",
        help: "file holding the MQTT password",
    },
    KeyDoc {
        key: "broker.keep_alive_secs",
        ty: KeyType::Int,
        default: "30",
        help: "MQTT keep-alive; the broker publishes the last will after 1.5x this",
    },
    KeyDoc {
        key: "broker.reconnect_initial_ms",
        ty: KeyType::Int,
        default: "500",
        help: "first reconnect delay; doubles per failure, with jitter",
    },
    KeyDoc {
        key: "broker.reconnect_max_ms",
        ty: KeyType::Int,
        default: "30000",
        help: "cap of the reconnect delay",
    },
    KeyDoc {
        key: "broker.unreadable_retry_ms",
        ty: KeyType::Int,
        default: "300000",
        help: "after a message larger than the agent reads (16 MiB) arrives on its desired topics, how long it leaves them out before reading them again; doubles up to an hour",
    },
    KeyDoc {
        key: "embedded_broker.listen",
        ty: KeyType::Str,
        default: "127.0.0.1:1883",
        help: "where the embedded broker listens when broker.url is empty",
    },
    KeyDoc {
        key: "log.level",
        ty: KeyType::Str,
        default: "info",
        help: "tracing filter of the agent, bridge and sink, e.g. info or kedge=debug (CLI commands log warnings only; KEDGE_LOG sets the filter of any command; `minimal` builds log at most info)",
    },
    KeyDoc {
        key: "log.format",
        ty: KeyType::Str,
        default: "plain",
        help: "plain or json",
    },
    KeyDoc {
        key: "backoff.initial_ms",
        ty: KeyType::Int,
        default: "10000",
        help: "container restart back-off after the first restart (the kubelet's 10 s)",
    },
    KeyDoc {
        key: "backoff.max_ms",
        ty: KeyType::Int,
        default: "300000",
        help: "cap of the restart back-off (the kubelet's 5 min)",
    },
    KeyDoc {
        key: "backoff.reset_after_ms",
        ty: KeyType::Int,
        default: "600000",
        help: "a container that ran this long starts its back-off afresh (10 min)",
    },
    KeyDoc {
        key: "node.heartbeat_ms",
        ty: KeyType::Int,
        default: "10000",
        help: "how often node status is published",
    },
    KeyDoc {
        key: "node.labels",
        ty: KeyType::Str,
        default: "",
        help: "the device's own labels, key=value,key2=value2 (fleet selectors match them; labels the cloud sets on {prefix}/{node}/labels win on a conflict)",
    },
    KeyDoc {
        key: "node.max_pods",
        ty: KeyType::Int,
        default: "110",
        help: "pods capacity reported and enforced",
    },
    KeyDoc {
        key: "node.disk_available_min_percent",
        ty: KeyType::Int,
        default: "10",
        help: "DiskPressure is reported while less than this percent of the data directory's file system is available (the kubelet's nodefs.available hard eviction threshold); 0: never",
    },
    KeyDoc {
        key: "node.eviction_monitoring_ms",
        ty: KeyType::Int,
        default: "10000",
        help: "how often a pod with local storage limits (a disk emptyDir's sizeLimit, limits.ephemeral-storage) is measured and evicted when over one (the kubelet's housekeeping interval, 10 s)",
    },
    KeyDoc {
        key: "outbox.max_entries",
        ty: KeyType::Int,
        default: "10000",
        help: "status/events kept while offline; the oldest are dropped past this",
    },
    KeyDoc {
        key: "outbox.max_age_secs",
        ty: KeyType::Int,
        default: "86400",
        help: "outbox entries older than this are dropped",
    },
    KeyDoc {
        key: "logs.max_file_bytes",
        ty: KeyType::Int,
        default: "10485760",
        help: "container log file size before rotation",
    },
    KeyDoc {
        key: "logs.max_files",
        ty: KeyType::Int,
        default: "2",
        help: "log files kept per container, the live one included",
    },
    KeyDoc {
        key: "wasm.epoch_tick_ms",
        ty: KeyType::Int,
        default: "10",
        help: "Wasm time slice: a running module yields to others this often",
    },
    KeyDoc {
        key: "wasm.ca_file",
        ty: KeyType::Str,
        default: "",
        help: "extra PEM CA bundle trusted for https:// module downloads (besides the system roots)",
    },
    KeyDoc {
        key: "wasm.default_memory_limit_bytes",
        ty: KeyType::Int,
        default: "268435456",
        help: "memory limit of a Wasm container without resources.limits.memory",
    },
    KeyDoc {
        key: "cri.endpoint",
        ty: KeyType::Str,
        default: "unix:///run/containerd/containerd.sock",
        help: "CRI socket of the container runtime (containerd, CRI-O); empty: no container pods",
    },
    KeyDoc {
        key: "cri.cgroup_parent",
        ty: KeyType::Str,
        default: "/kedge",
        help: "cgroup (cgroupfs path) under which each container pod gets its own cgroup",
    },
    KeyDoc {
        key: "cri.timeout_ms",
        ty: KeyType::Int,
        default: "120000",
        help: "deadline of one CRI call (image pulls included)",
    },
    KeyDoc {
        key: "cri.seccomp_default",
        ty: KeyType::Bool,
        default: "false",
        help: "containers without a seccompProfile get the runtime's default profile (RuntimeDefault, the kubelet's --seccomp-default); false: Unconfined, the kubelet's default. Localhost profiles are files under {data_dir}/seccomp",
    },
    KeyDoc {
        key: "cri.resolv_conf",
        ty: KeyType::Str,
        default: "/etc/resolv.conf",
        help: "the node's resolver configuration, which container pods with dnsPolicy Default get (and ClusterFirst, as there is no cluster DNS), as the kubelet's --resolv-conf; with systemd-resolved: /run/systemd/resolve/resolv.conf",
    },
    KeyDoc {
        key: "trust.keys",
        ty: KeyType::Str,
        default: "",
        help: "agent: the public keys whose signatures it accepts on desired state, separated by spaces: <base64 Ed25519 key>[,expires=<RFC 3339>] (kedge keys generate; docs/keys.md); empty: signatures are not checked",
    },
    KeyDoc {
        key: "trust.require_signatures",
        ty: KeyType::Bool,
        default: "true",
        help: "agent, with trust.keys: refuse unsigned desired specs, tombstones, indexes, fleet records, labels and log requests; false: accept unsigned ones (a migration step), still refuse bad signatures",
    },
    KeyDoc {
        key: "trust.signing_key_file",
        ty: KeyType::Str,
        default: "",
        help: "CLI and bridge: the Ed25519 private key (PKCS#8 PEM, kedge keys generate) that signs what they publish for devices; empty: unsigned (also --signing-key)",
    },
    KeyDoc {
        key: "data.routes",
        ty: KeyType::Str,
        default: "",
        help: "workload data routes, separated by ';' or newlines: FROM namespace/pod[/container] topic-filter INTO $upstream|pod/namespace/name [TTL 2h] [PRIORITY 0-9] (0 the highest, 9 the lowest and the default; $upstream only; pods may also declare their own, kedge.io/routes; feature data)",
    },
    KeyDoc {
        key: "data.listen",
        ty: KeyType::Str,
        default: "127.0.0.1:1884",
        help: "where the data endpoint (MQTT 3.1.1 for workloads) listens; 0.0.0.0:PORT for pods on a CNI network",
    },
    KeyDoc {
        key: "data.advertise",
        ty: KeyType::Str,
        default: "",
        help: "host:port workloads connect to (KEDGE_DATA_URL), e.g. the node's address on the pod network; empty: data.listen",
    },
    KeyDoc {
        key: "data.sink_public_key",
        ty: KeyType::Str,
        default: "",
        help: "the sink's X25519 public key (64 hex characters, `kedge sink keygen`); batches are sealed to it; required with data.routes; set alone, it starts the data path for the routes pods declare (`kedge.io/routes`)",
    },
    KeyDoc {
        key: "data.default_ttl_secs",
        ty: KeyType::Int,
        default: "7200",
        help: "how long a message waits for the broker when its route names no TTL",
    },
    KeyDoc {
        key: "data.budget_bytes",
        ty: KeyType::Int,
        default: "67108864",
        help: "bytes of workload messages kept while offline; beyond it the lowest priority's oldest are dropped first (counted, reported as a DataDropped event)",
    },
    KeyDoc {
        key: "data.batch_max_messages",
        ty: KeyType::Int,
        default: "1000",
        help: "most messages in one sealed batch on the link",
    },
    KeyDoc {
        key: "data.compression",
        ty: KeyType::Str,
        default: "lz4",
        help: "how each batch is compressed before it is signed and sealed: lz4 (a batch it does not make smaller goes as it is) or none",
    },
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key}: {message}")]
    Value {
        key: String,
        value: String,
        message: String,
    },
    #[error("unknown configuration key {0} (see `kedge config keys`)")]
    UnknownKey(String),
}

impl ConfigError {
    fn value(key: &str, value: impl ToString, message: impl Into<String>) -> Self {
        ConfigError::Value {
            key: key.to_string(),
            value: value.to_string(),
            message: message.into(),
        }
    }
}

/// The documented default of `key`, looked up at compile time: a key that
/// is not in `KEYS` (a typo) does not compile, and neither does an integer
/// default that is not a number or a key that is not an integer.
macro_rules! default_str {
    ($key:literal) => {
        const { KEYS[key_index($key)].default }
    };
}
macro_rules! default_int {
    ($key:literal) => {
        const { int_default(key_index($key)) }
    };
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn key_index(key: &str) -> usize {
    let mut i = 0;
    while i < KEYS.len() {
        if str_eq(KEYS[i].key, key) {
            return i;
        }
        i += 1;
    }
    panic!("not a configuration key (config::KEYS)")
}

const fn int_default(index: usize) -> u64 {
    let doc = &KEYS[index];
    assert!(
        matches!(doc.ty, KeyType::Int),
        "an integer default of a key that is not an integer"
    );
    let digits = doc.default.as_bytes();
    assert!(!digits.is_empty(), "an integer key without a default");
    let mut value: u64 = 0;
    let mut i = 0;
    while i < digits.len() {
        assert!(
            digits[i].is_ascii_digit(),
            "an integer default that is not a number"
        );
        value = value * 10 + (digits[i] - b'0') as u64;
        i += 1;
    }
    value
}

/// The resolved configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node_name: String,
    pub data_dir: PathBuf,
    pub manifests_dir: Option<PathBuf>,
    pub manifests_poll_ms: u64,
    pub topic_prefix: String,
    pub broker: BrokerConfig,
    pub embedded_broker: EmbeddedBrokerConfig,
    pub log: LogConfig,
    pub backoff: BackoffConfig,
    pub node: NodeConfig,
    pub outbox: OutboxConfig,
    pub logs: LogsConfig,
    pub wasm: WasmConfig,
    pub cri: CriConfig,
    pub trust: TrustConfig,
    pub data: DataConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustConfig {
    /// Checked by `validate`; parsed by `Config::trusted_keys`.
    pub keys: String,
    pub require_signatures: bool,
    pub signing_key_file: Option<PathBuf>,
}

impl Default for TrustConfig {
    fn default() -> Self {
        TrustConfig {
            keys: default_str!("trust.keys").into(),
            require_signatures: default_str!("trust.require_signatures") == "true",
            signing_key_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    pub routes: String,
    pub listen: String,
    pub advertise: String,
    pub sink_public_key: String,
    pub default_ttl_secs: u64,
    pub budget_bytes: u64,
    pub batch_max_messages: u64,
    pub compression: String,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            routes: String::new(),
            listen: default_str!("data.listen").into(),
            advertise: String::new(),
            sink_public_key: String::new(),
            default_ttl_secs: default_int!("data.default_ttl_secs"),
            budget_bytes: default_int!("data.budget_bytes"),
            batch_max_messages: default_int!("data.batch_max_messages"),
            compression: default_str!("data.compression").into(),
        }
    }
}

impl DataConfig {
    /// The address put in KEDGE_DATA_URL.
    pub fn advertised(&self) -> &str {
        if self.advertise.is_empty() {
            &self.listen
        } else {
            &self.advertise
        }
    }

    /// `data.compression` (checked by `Config::validate`; LZ4 for a value
    /// it would refuse).
    #[cfg(feature = "data")]
    pub fn compression(&self) -> crate::data::Compression {
        self.compression.parse().unwrap_or_default()
    }

    /// The routes (checked by `Config::validate`, so this only fails on a
    /// configuration made without it).
    #[cfg(feature = "data")]
    pub fn parsed_routes(&self) -> Result<Vec<crate::data::Route>, crate::data::RouteError> {
        crate::data::parse_routes(
            "data.routes",
            &self.routes,
            Duration::from_secs(self.default_ttl_secs),
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub url: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub keep_alive_secs: u64,
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
    pub unreadable_retry_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedBrokerConfig {
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub reset_after_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub heartbeat_ms: u64,
    pub labels: String,
    pub max_pods: u64,
    pub disk_available_min_percent: u64,
    pub eviction_monitoring_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    pub max_entries: u64,
    pub max_age_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    pub max_file_bytes: u64,
    pub max_files: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WasmConfig {
    pub epoch_tick_ms: u64,
    pub ca_file: Option<PathBuf>,
    pub default_memory_limit_bytes: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    /// None: no container runtime on this node.
    pub endpoint: Option<String>,
    pub cgroup_parent: String,
    pub timeout_ms: u64,
    pub seccomp_default: bool,
    pub resolv_conf: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_name: hostname(),
            data_dir: PathBuf::from(default_str!("data_dir")),
            manifests_dir: None,
            manifests_poll_ms: default_int!("manifests_poll_ms"),
            topic_prefix: default_str!("topic_prefix").into(),
            broker: BrokerConfig::default(),
            embedded_broker: EmbeddedBrokerConfig::default(),
            log: LogConfig::default(),
            backoff: BackoffConfig::default(),
            node: NodeConfig::default(),
            outbox: OutboxConfig::default(),
            logs: LogsConfig::default(),
            wasm: WasmConfig::default(),
            cri: CriConfig::default(),
            trust: TrustConfig::default(),
            data: DataConfig::default(),
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            keep_alive_secs: default_int!("broker.keep_alive_secs"),
            reconnect_initial_ms: default_int!("broker.reconnect_initial_ms"),
            reconnect_max_ms: default_int!("broker.reconnect_max_ms"),
            unreadable_retry_ms: default_int!("broker.unreadable_retry_ms"),
        }
    }
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: default_str!("embedded_broker.listen").into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_str!("log.level").into(),
            format: default_str!("log.format").into(),
        }
    }
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial_ms: default_int!("backoff.initial_ms"),
            max_ms: default_int!("backoff.max_ms"),
            reset_after_ms: default_int!("backoff.reset_after_ms"),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            heartbeat_ms: default_int!("node.heartbeat_ms"),
            labels: default_str!("node.labels").to_string(),
            max_pods: default_int!("node.max_pods"),
            disk_available_min_percent: default_int!("node.disk_available_min_percent"),
            eviction_monitoring_ms: default_int!("node.eviction_monitoring_ms"),
        }
    }
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_entries: default_int!("outbox.max_entries"),
            max_age_secs: default_int!("outbox.max_age_secs"),
        }
    }
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            max_file_bytes: default_int!("logs.max_file_bytes"),
            max_files: default_int!("logs.max_files") as u32,
        }
    }
}

impl Default for WasmConfig {
    fn default() -> Self {
        WasmConfig {
            epoch_tick_ms: default_int!("wasm.epoch_tick_ms"),
            ca_file: None,
            default_memory_limit_bytes: default_int!("wasm.default_memory_limit_bytes"),
        }
    }
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            endpoint: Some(default_str!("cri.endpoint").into()),
            cgroup_parent: default_str!("cri.cgroup_parent").into(),
            timeout_ms: default_int!("cri.timeout_ms"),
            seccomp_default: default_str!("cri.seccomp_default") == "true",
            resolv_conf: default_str!("cri.resolv_conf").into(),
        }
    }
}

/// The machine's host name, lower-cased (Kubernetes node names are).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .to_lowercase()
}

/// Loads the configuration: `file` (if given, or `/etc/kedge/config.toml` if
/// it exists), then the environment `env`, then `overrides` (`key=value`
/// pairs from flags), then validation.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &[(String, String)],
) -> Result<Config, ConfigError> {
    let file = config_file(file);
    let mut table = read_file(file.as_deref())?;
    // The roles' own tables are their flags' (`role_defaults`), not keys.
    for role in ROLE_TABLES {
        table.remove(*role);
    }
    for (name, value) in env {
        if let Some(doc) = KEYS.iter().find(|k| env_name(k.key) == name) {
            set_key(&mut table, doc, &value)?;
        }
    }
    for (key, value) in overrides {
        let doc = KEYS
            .iter()
            .find(|k| k.key == key)
            .ok_or_else(|| ConfigError::UnknownKey(key.clone()))?;
        set_key(&mut table, doc, value)?;
    }
    let config: Config = Config::deserialize(table).map_err(|e| ConfigError::Parse {
        path: file
            .clone()
            .unwrap_or_else(|| PathBuf::from("<flags and environment>")),
        message: e.to_string().trim().to_string(),
    })?;
    config.validate()
}

/// The tables of a configuration file that belong to a cloud-side role's
/// flags (`[bridge]`: `kubelet-listen = "0.0.0.0:10250"`), read by
/// `role_defaults`, never by `load`.
pub const ROLE_TABLES: &[&str] = &["bridge"];

/// The file to read: the one given, else /etc/kedge/config.toml if present.
fn config_file(file: Option<&Path>) -> Option<PathBuf> {
    let default_file = Path::new("/etc/kedge/config.toml");
    match file {
        Some(f) => Some(f.to_path_buf()),
        None if default_file.exists() => Some(default_file.to_path_buf()),
        None => None,
    }
}

fn read_file(file: Option<&Path>) -> Result<toml::Table, ConfigError> {
    let Some(path) = file else {
        return Ok(toml::Table::new());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

/// A role's flags from the configuration file's `[role]` table, as the
/// defaults of `cmd` (the role's subcommand): the file is the lowest layer,
/// under `KEDGE_{ROLE}_*` and the flags themselves. A key is a flag's long
/// name (`kubelet-listen`, or `kubelet_listen`); an unknown key is an
/// error naming it; arrays give a repeatable flag several values.
pub fn role_defaults(
    cmd: clap::Command,
    file: Option<&Path>,
    role: &str,
) -> Result<clap::Command, ConfigError> {
    let file = config_file(file);
    let mut table = read_file(file.as_deref())?;
    let Some(section) = table.remove(role) else {
        return Ok(cmd);
    };
    let bad = |key: &str, value: &toml::Value, message: &str| {
        ConfigError::value(&format!("{role}.{key}"), value.type_str(), message)
    };
    let toml::Value::Table(section) = section else {
        return Err(bad("", &section, "must be a table of flags"));
    };
    let mut cmd = cmd;
    for (key, value) in section {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "help")
        else {
            return Err(ConfigError::UnknownKey(format!("{role}.{key}")));
        };
        let id = arg.get_id().clone();
        let text = |v: &toml::Value| match v {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            other => Err(bad(&key, other, "must be a string, a number or a boolean")),
        };
        let values: Vec<String> = match &value {
            toml::Value::Array(items) => items.iter().map(text).collect::<Result<_, _>>()?,
            one => vec![text(one)?],
        };
        let values: Vec<&'static str> = values
            .into_iter()
            .map(|v| &*Box::leak(v.into_boxed_str()))
            .collect();
        // A value from the file satisfies a flag the command line must
        // otherwise give.
        cmd = cmd.mut_arg(id, |a| a.default_values(values).required(false));
    }
    Ok(cmd)
}

/// `KEDGE_BROKER_URL` for `broker.url`.
pub fn env_name(key: &str) -> String {
    format!("KEDGE_{}", key.replace('.', "_").to_uppercase())
}

fn set_key(table: &mut toml::Table, doc: &KeyDoc, text: &str) -> Result<(), ConfigError> {
    let value = match doc.ty {
        KeyType::Str => toml::Value::String(text.to_string()),
        KeyType::Int => toml::Value::Integer(
            text.trim()
                .parse::<i64>()
                .map_err(|_| ConfigError::value(doc.key, text, "expected a whole number"))?,
        ),
        KeyType::Bool => toml::Value::Boolean(
            text.trim()
                .parse::<bool>()
                .map_err(|_| ConfigError::value(doc.key, text, "expected true or false"))?,
        ),
    };
    let mut parts: Vec<&str> = doc.key.split('.').collect();
    let last = parts.pop().unwrap_or(doc.key);
    let mut current = table;
    for part in parts {
        let entry = current
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            other => {
                return Err(ConfigError::value(
                    part,
                    format!("{other:?}"),
                    "expected a table",
                ));
            }
        };
    }
    current.insert(last.to_string(), value);
    Ok(())
}

fn non_empty(p: Option<PathBuf>) -> Option<PathBuf> {
    p.filter(|p| !p.as_os_str().is_empty())
}

impl Config {
    fn validate_data(&self) -> Result<(), ConfigError> {
        let data = &self.data;
        // A data path comes with the node's routes or with the sink's key
        // alone (pods then declare their routes, `kedge.io/routes`).
        if data.routes.trim().is_empty() && data.sink_public_key.is_empty() {
            return Ok(());
        }
        #[cfg(not(feature = "data"))]
        return Err(if data.routes.trim().is_empty() {
            ConfigError::value(
                "data.sink_public_key",
                &data.sink_public_key,
                "this build has no data path (cargo feature data)",
            )
        } else {
            ConfigError::value(
                "data.routes",
                &data.routes,
                "this build has no data path (cargo feature data)",
            )
        });
        #[cfg(feature = "data")]
        {
            data.parsed_routes().map_err(|e| {
                ConfigError::value(&format!("{}[{}]", e.key, e.index), &data.routes, e.message)
            })?;
            if data.sink_public_key.is_empty() {
                return Err(ConfigError::value(
                    "data.sink_public_key",
                    "",
                    "required with data.routes: the sink's public key (kedge sink keygen)",
                ));
            }
            crate::data::SinkPublicKey::parse(&data.sink_public_key, "data.sink_public_key")
                .map_err(|e| {
                    ConfigError::value("data.sink_public_key", &data.sink_public_key, e.to_string())
                })?;
            for (key, addr) in [
                ("data.listen", &data.listen),
                ("data.advertise", &data.advertise),
            ] {
                if !addr.is_empty()
                    && addr.parse::<std::net::SocketAddr>().is_err()
                    && !addr.contains(':')
                {
                    return Err(ConfigError::value(key, addr, "expected host:port"));
                }
            }
            if data.listen.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::value(
                    "data.listen",
                    &data.listen,
                    "expected ip:port such as 127.0.0.1:1884",
                ));
            }
            if let Err(e) = data.compression.parse::<crate::data::Compression>() {
                return Err(ConfigError::value("data.compression", &data.compression, e));
            }
            if data.batch_max_messages == 0 || data.default_ttl_secs == 0 {
                return Err(ConfigError::value(
                    "data.batch_max_messages",
                    data.batch_max_messages,
                    "must be positive (and so must data.default_ttl_secs)",
                ));
            }
            Ok(())
        }
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        // Empty strings mean "not set" so env and flags can unset file values.
        self.broker.url = self.broker.url.filter(|u| !u.is_empty());
        self.broker.username = self.broker.username.filter(|u| !u.is_empty());
        self.broker.ca_file = non_empty(self.broker.ca_file);
        self.broker.cert_file = non_empty(self.broker.cert_file);
        self.broker.key_file = non_empty(self.broker.key_file);
        self.broker.password_file = non_empty(self.broker.password_file);
        self.manifests_dir = non_empty(self.manifests_dir);
        self.wasm.ca_file = non_empty(self.wasm.ca_file);
        self.cri.endpoint = self.cri.endpoint.filter(|e| !e.is_empty());
        self.trust.signing_key_file = non_empty(self.trust.signing_key_file);
        if let Err(e) = crate::trust::TrustedKey::parse_list(&self.trust.keys) {
            return Err(ConfigError::value(
                "trust.keys",
                &self.trust.keys,
                e.to_string(),
            ));
        }
        if let Some(endpoint) = &self.cri.endpoint
            && !endpoint.starts_with("unix://")
            && !endpoint.starts_with('/')
        {
            return Err(ConfigError::value(
                "cri.endpoint",
                endpoint,
                "expected unix:///path/to/socket",
            ));
        }
        if !self.cri.resolv_conf.is_absolute() {
            return Err(ConfigError::value(
                "cri.resolv_conf",
                self.cri.resolv_conf.display(),
                "expected an absolute path such as /etc/resolv.conf",
            ));
        }
        if !self.cri.cgroup_parent.starts_with('/') || self.cri.cgroup_parent.contains("..") {
            return Err(ConfigError::value(
                "cri.cgroup_parent",
                &self.cri.cgroup_parent,
                "expected an absolute cgroupfs path such as /kedge",
            ));
        }

        self.validate_data()?;
        if !crate::wire::valid_topic_level(&self.node_name) || self.node_name.starts_with('_') {
            return Err(ConfigError::value(
                "node_name",
                &self.node_name,
                "must be non-empty without '/', '+' or '#', and not start with '_' (reserved)",
            ));
        }
        if let Err(e) =
            crate::model::selector::Selector::parse_labels("node.labels", &self.node.labels)
        {
            return Err(ConfigError::value(
                "node.labels",
                &self.node.labels,
                &e.detail,
            ));
        }
        if self.topic_prefix.is_empty() || self.topic_prefix.contains(['+', '#']) {
            return Err(ConfigError::value(
                "topic_prefix",
                &self.topic_prefix,
                "must be non-empty without '+' or '#'",
            ));
        }
        if let Some(url) = &self.broker.url {
            BrokerUrl::parse(url)?;
        }
        if self.broker.cert_file.is_some() != self.broker.key_file.is_some() {
            return Err(ConfigError::value(
                "broker.key_file",
                self.broker
                    .key_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                "broker.cert_file and broker.key_file go together",
            ));
        }
        if !matches!(self.log.format.as_str(), "plain" | "json") {
            return Err(ConfigError::value(
                "log.format",
                &self.log.format,
                "expected plain or json",
            ));
        }
        for (key, v) in [
            ("backoff.max_ms", self.backoff.max_ms),
            ("broker.reconnect_max_ms", self.broker.reconnect_max_ms),
            (
                "broker.unreadable_retry_ms",
                self.broker.unreadable_retry_ms,
            ),
            ("node.heartbeat_ms", self.node.heartbeat_ms),
            (
                "node.eviction_monitoring_ms",
                self.node.eviction_monitoring_ms,
            ),
            ("outbox.max_entries", self.outbox.max_entries),
            ("logs.max_file_bytes", self.logs.max_file_bytes),
            ("wasm.epoch_tick_ms", self.wasm.epoch_tick_ms),
            ("cri.timeout_ms", self.cri.timeout_ms),
            ("manifests_poll_ms", self.manifests_poll_ms),
        ] {
            if v == 0 {
                return Err(ConfigError::value(key, v, "must be greater than 0"));
            }
        }
        if self.backoff.initial_ms > self.backoff.max_ms {
            return Err(ConfigError::value(
                "backoff.initial_ms",
                self.backoff.initial_ms,
                "must not exceed backoff.max_ms",
            ));
        }
        if self.node.disk_available_min_percent > 100 {
            return Err(ConfigError::value(
                "node.disk_available_min_percent",
                self.node.disk_available_min_percent,
                "must be a percentage, 0 to 100",
            ));
        }
        if self.logs.max_files == 0 {
            return Err(ConfigError::value(
                "logs.max_files",
                0,
                "must be at least 1",
            ));
        }
        Ok(self)
    }

    /// The device's own labels (`node.labels`, checked by `validate`).
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        crate::model::selector::Selector::parse_labels("node.labels", &self.node.labels)
            .unwrap_or_default()
    }

    /// The keys of `trust.keys` (checked by `validate`).
    pub fn trusted_keys(&self) -> Vec<crate::trust::TrustedKey> {
        crate::trust::TrustedKey::parse_list(&self.trust.keys).unwrap_or_default()
    }

    /// The signer of `trust.signing_key_file`, if set.
    pub fn signer(&self) -> Result<Option<crate::trust::Signer>, crate::trust::TrustError> {
        self.trust
            .signing_key_file
            .as_deref()
            .map(crate::trust::Signer::load)
            .transpose()
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.node.heartbeat_ms)
    }
}

/// A parsed `mqtt://` or `mqtts://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl BrokerUrl {
    pub fn parse(url: &str) -> Result<BrokerUrl, ConfigError> {
        let bad = |m: &str| ConfigError::value("broker.url", url, m);
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            return Err(bad("expected mqtt://host:port or mqtts://host:port"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| bad("the port must be a number from 1 to 65535"))?,
            ),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains('/') {
            return Err(bad("missing host"));
        }
        if port == 0 {
            return Err(bad("the port must be a number from 1 to 65535"));
        }
        Ok(BrokerUrl {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// A role's own flags (`kedge bridge`, `kedge sink run`) read from the
/// environment too: `--kubelet-listen` of `kedge bridge` is
/// `KEDGE_BRIDGE_KUBELET_LISTEN`. The flag wins over the variable, as a
/// flag wins over the environment for the configuration keys above. Every
/// flag of `cmd` and its subcommands gets its name here, from one rule, so
/// that the docs (`flags_markdown`) and the parser cannot disagree.
pub fn flags_from_env(cmd: clap::Command, prefix: &str) -> clap::Command {
    let cmd = cmd.mut_args(|arg| match arg.get_long() {
        Some(long) if long != "help" => {
            let name = flag_env_name(prefix, long);
            arg.env(&*Box::leak(name.into_boxed_str()))
        }
        _ => arg,
    });
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    names.into_iter().fold(cmd, |cmd, sub| {
        let prefix = format!("{prefix}_{}", sub.replace('-', "_").to_uppercase());
        cmd.mut_subcommand(sub, |c| flags_from_env(c, &prefix))
    })
}

/// `KEDGE_BRIDGE` + `kubelet-listen` → `KEDGE_BRIDGE_KUBELET_LISTEN`.
pub fn flag_env_name(prefix: &str, long: &str) -> String {
    format!("{prefix}_{}", long.replace('-', "_").to_uppercase())
}

/// A role's flags as Markdown (docs/config.md, `kedge config keys`): the
/// flag, its environment variable, its default and its help, from the
/// parser itself (`flags_from_env` applied).
pub fn flags_markdown(cmd: &clap::Command) -> String {
    fn rows(c: &clap::Command, title: &str, out: &mut String) {
        out.push_str(&format!(
            "\n### `{title}`\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n"
        ));
        for arg in c.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let env = arg
                .get_env()
                .map(|e| e.to_string_lossy().into_owned())
                .unwrap_or_default();
            let default = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(",");
            let help = arg
                .get_help()
                .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
                .unwrap_or_default();
            out.push_str(&format!(
                "| `--{long}` | `{env}` | `{default}` | {help} |\n"
            ));
        }
    }
    let mut out = String::new();
    let name = cmd.get_name().to_string();
    if cmd
        .get_arguments()
        .any(|a| a.get_long().is_some_and(|l| l != "help"))
    {
        rows(cmd, &format!("kedge {name}"), &mut out);
    }
    for sub in cmd.get_subcommands() {
        rows(sub, &format!("kedge {name} {}", sub.get_name()), &mut out);
    }
    out
}

/// The key table as Markdown (docs/config.md and `kedge config keys`).
pub fn keys_markdown() -> String {
    let mut out = String::from("| key | environment | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        out.push_str(&format!(
            "| `{}` | `{}` | `{}` | {} |\n",
            k.key,
            env_name(k.key),
            k.default,
            k.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_with(
        file_text: Option<&str>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        if let Some(t) = file_text {
            std::fs::write(&path, t).expect("write");
        }
        let env = env.iter().map(|(a, b)| (a.to_string(), b.to_string()));
        let flags: Vec<(String, String)> = flags
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        load(file_text.map(|_| path.as_path()), env, &flags)
    }

    #[test]
    fn layers_override_in_order() {
        let c = load_with(
            Some("node_name = \"from-file\"\n[broker]\nurl = \"mqtt://file:1883\"\nkeep_alive_secs = 5\n"),
            &[("KEDGE_BROKER_URL", "mqtt://env:1884"), ("KEDGE_NODE_NAME", "from-env"), ("UNRELATED", "x")],
            &[("node_name", "from-flag")],
        )
        .expect("valid");
        assert_eq!(c.node_name, "from-flag");
        assert_eq!(c.broker.url.as_deref(), Some("mqtt://env:1884"));
        assert_eq!(c.broker.keep_alive_secs, 5);
        assert_eq!(c.backoff.initial_ms, 10_000);
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = load_with(None, &[("KEDGE_BACKOFF_MAX_MS", "soon")], &[]).expect_err("bad");
        assert_eq!(
            e.to_string(),
            "invalid value \"soon\" for backoff.max_ms: expected a whole number"
        );
        let e = load_with(None, &[], &[("broker.url", "http://x")]).expect_err("bad");
        assert!(e.to_string().contains("for broker.url"), "{e}");
        let e = load_with(None, &[], &[("node_name", "a/b")]).expect_err("bad");
        assert!(e.to_string().contains("for node_name"), "{e}");
        let e = load_with(None, &[], &[("log.format", "xml")]).expect_err("bad");
        assert!(e.to_string().contains("for log.format"), "{e}");
        let e = load_with(Some("[broker]\nurll = 1\n"), &[], &[]).expect_err("bad");
        assert!(e.to_string().contains("urll"), "{e}");
        let e = load_with(None, &[], &[("no.such", "1")]).expect_err("bad");
        assert!(matches!(e, ConfigError::UnknownKey(_)));
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtts://broker.example:8884").expect("ok"),
            BrokerUrl {
                tls: true,
                host: "broker.example".into(),
                port: 8884
            }
        );
        assert_eq!(BrokerUrl::parse("mqtt://10.0.0.1").expect("ok").port, 1883);
        assert_eq!(BrokerUrl::parse("mqtts://h").expect("ok").port, 8883);
        assert!(BrokerUrl::parse("mqtt://h:0").is_err());
        assert!(BrokerUrl::parse("mqtt://:1883").is_err());
        assert!(BrokerUrl::parse("tcp://h:1").is_err());
    }

    #[test]
    fn docs_list_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md");
        let doc = std::fs::read_to_string(path).expect("docs/config.md");
        assert!(
            doc.contains(&keys_markdown()),
            "docs/config.md is stale: regenerate it with `kedge config keys`"
        );
    }

    #[test]
    fn every_key_has_a_default_that_loads() {
        // Setting every key to its documented default must be accepted.
        let flags: Vec<(String, String)> = KEYS
            .iter()
            .filter(|k| !k.default.starts_with('<'))
            .map(|k| (k.key.to_string(), k.default.to_string()))
            .collect();
        let spelled_out = load(None, std::iter::empty(), &flags).expect("defaults load");
        // … and give the configuration that no setting gives: the structs'
        // defaults are the documented ones.
        let unset = load(None, std::iter::empty(), &[]).expect("loads");
        assert_eq!(format!("{spelled_out:?}"), format!("{unset:?}"));
    }
}
