//! The command line: `kedge agent`, and the operator commands that drive
//! devices over MQTT without Kubernetes (`apply`, `get`, `delete`, `logs`,
//! and for fleets `label`, `rollout`, `describe`), plus `wire decode` and
//! `config keys`. Output reads like kubectl's.

pub mod client;
#[cfg(feature = "operator")]
pub mod fleet;
pub mod fleet_args;
pub mod label;
#[cfg(feature = "operator")]
pub mod routes;
#[cfg(feature = "operator")]
pub mod top;

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Config};
#[cfg(feature = "manifests")]
use crate::model::convert::{FileResolver, Reader, Resolver, convert_pod, parse_manifests};
use crate::model::{
    DesiredIndex, LogChunk, LogRequest, NodeConditionType, NodeStatus, PodKey, PodSpec, PodStatus,
    now_ms,
};
#[cfg(feature = "manifests")]
use crate::seal::PublicKey;
use crate::wire::{self, Message, TopicKind, Topics};
use client::{ANSWER_TIMEOUT, Client};

#[derive(Parser, Debug)]
#[command(
    name = "kedge",
    version,
    about = "Kubernetes pods on edge devices, over MQTT"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct GlobalArgs {
    /// Configuration file (default: /etc/kedge/config.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Broker URL, mqtt://host:port or mqtts://host:port (broker.url).
    #[arg(long, global = true, value_name = "URL")]
    pub broker: Option<String>,
    /// Set any configuration key, e.g. --set backoff.initial_ms=100.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Sign what is published for devices with this Ed25519 key
    /// (trust.signing_key_file; `kedge keys generate`).
    #[arg(long, global = true, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the device agent.
    Agent(AgentArgs),
    /// Send the pods of a manifest file to a node, or to every device whose
    /// labels match (--selector: a fleet deployment).
    Apply {
        /// YAML or JSON file with one or more Pods; - for stdin. With
        /// --node, the Secrets and ConfigMaps in the file resolve the pods'
        /// references, and a spec that carries Secret values is sealed to
        /// the node's key (docs/keys.md).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        #[arg(long, required_unless_present = "selector")]
        node: Option<String>,
        /// Namespace for pods that name none.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        fleet: fleet_args::FleetArgs,
    },
    /// Set or remove the labels of a device (key=value, key-), which fleet
    /// selectors match.
    Label {
        what: LabelWhat,
        node: String,
        /// key=value to set, key- to remove.
        labels: Vec<String>,
        /// Change labels that already have a value.
        #[arg(long)]
        overwrite: bool,
        /// Print the device's labels (its own and the cloud's).
        #[arg(long, conflicts_with = "labels")]
        list: bool,
    },
    /// Drive, pause, resume or undo a fleet's rollout.
    Rollout {
        #[command(subcommand)]
        command: fleet_args::RolloutCommand,
    },
    /// Show a fleet in detail: policy, rollout, devices, failures.
    Describe {
        what: DescribeWhat,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Convert Kubernetes Pod manifests into kedge pod specs (JSON), the
    /// static pods (`NAME.kedge.json`) of agents built without manifest
    /// support (`minimal`). Secrets and ConfigMaps in the file resolve the
    /// pods' references; the output then holds the Secret values in clear
    /// (as `kubectl create --dry-run=client -o yaml` prints them): keep it
    /// where only the device's owner can read it.
    #[cfg(feature = "manifests")]
    Convert {
        /// YAML or JSON file with Pods, and the Secrets and ConfigMaps they
        /// refer to; - for stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Show pods, nodes, fleets or data routes.
    Get {
        what: GetWhat,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        #[arg(short = 'o', long)]
        output: Option<Output>,
    },
    /// Delete a pod or a fleet.
    Delete {
        what: DeleteWhat,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// The node of a pod (found from the retained specs when omitted).
        #[arg(long)]
        node: Option<String>,
    },
    /// Show the CPU and memory of devices or pods, as each device measures
    /// them (asked over MQTT twice, a second apart), like kubectl top.
    Top {
        #[command(subcommand)]
        what: TopWhat,
    },
    /// Print a container's log.
    Logs {
        pod: String,
        #[arg(short = 'c', long)]
        container: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        tail: Option<u64>,
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(short = 'p', long)]
        previous: bool,
        #[arg(long)]
        timestamps: bool,
    },
    /// Work with wire payloads.
    Wire {
        #[command(subcommand)]
        command: WireCommand,
    },
    /// Show configuration keys.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Make and show the Ed25519 keys that sign desired state (docs/keys.md).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Precompile Wasm modules for devices.
    #[cfg(feature = "wasm-compiler")]
    Wasm {
        #[command(subcommand)]
        command: WasmCommand,
    },
}

#[cfg(feature = "wasm-compiler")]
#[derive(Subcommand, Debug)]
pub enum WasmCommand {
    /// Compile a module or component for a device's CPU, so agents built
    /// without the Wasm compiler (`minimal`) can run it.
    Compile {
        /// The device's architecture.
        #[arg(long)]
        target: crate::runtime::wasm::CompileTarget,
        /// The .wasm module or component (or .wat text).
        input: PathBuf,
        /// Where to write the precompiled module (.cwasm).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Node name (node_name).
    #[arg(long)]
    pub node: Option<String>,
    /// State directory (data_dir).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Static pod manifests to run and follow (manifests_dir).
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// The device's labels, key=value,key2=value2 (node.labels).
    #[arg(long, value_name = "K=V,...")]
    pub labels: Option<String>,
}

/// `kedge wasm compile`: writes the artifact and prints the image reference
/// a pod names it by.
#[cfg(feature = "wasm-compiler")]
pub fn wasm_compile(
    target: crate::runtime::wasm::CompileTarget,
    input: &std::path::Path,
    output: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let code = crate::runtime::wasm::precompile(&bytes, target)
        .with_context(|| format!("cannot compile {}", input.display()))?;
    std::fs::write(output, &code).with_context(|| format!("cannot write {}", output.display()))?;
    let sha256 = crate::runtime::module_source::sha256_hex(&code);
    let absolute = std::path::absolute(output).unwrap_or_else(|_| output.to_path_buf());
    println!("file://{}@sha256:{sha256}", absolute.display());
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum TopWhat {
    /// NAME CPU(cores) CPU(%) MEMORY(bytes) MEMORY(%) of every node, or one;
    /// percentages of what the node reports allocatable.
    #[command(alias = "nodes", alias = "no")]
    Node {
        name: Option<String>,
        /// How long each device has to answer (default 10s).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        #[arg(long)]
        no_headers: bool,
    },
    /// NAME CPU(cores) MEMORY(bytes) of the pods with a running container.
    #[command(alias = "pods", alias = "po")]
    Pod {
        name: Option<String>,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only the pods of this node.
        #[arg(long)]
        node: Option<String>,
        /// One line per container.
        #[arg(long)]
        containers: bool,
        /// How long each device has to answer (default 10s).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
        #[arg(long)]
        no_headers: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum WireCommand {
    /// Print a payload as JSON (file, or stdin when omitted).
    Decode {
        file: Option<PathBuf>,
        /// The input is hex text.
        #[arg(long)]
        hex: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write a new private key (PKCS#8 PEM, mode 0600) and print its public
    /// key as an agent's trust.keys takes it.
    Generate {
        /// Where to write the private key (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the public key of a private key file.
    Public { file: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Every configuration key with its environment variable and default.
    Keys,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GetWhat {
    #[value(alias = "pod", alias = "po")]
    Pods,
    #[value(alias = "node", alias = "no")]
    Nodes,
    #[value(alias = "fleet")]
    Fleets,
    /// The data path's routes of each node (or `--node`'s) and their
    /// counters.
    #[value(alias = "route")]
    Routes,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteWhat {
    #[value(alias = "pods", alias = "po")]
    Pod,
    #[value(alias = "fleets")]
    Fleet,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LabelWhat {
    #[value(alias = "nodes", alias = "no")]
    Node,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DescribeWhat {
    #[value(alias = "fleets")]
    Fleet,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Wide,
    Json,
}

/// Loads configuration from file, environment and these flags.
pub fn load_config(
    global: &GlobalArgs,
    extra: &[(&str, Option<String>)],
) -> Result<Config, config::ConfigError> {
    let mut overrides: Vec<(String, String)> = Vec::new();
    if let Some(b) = &global.broker {
        overrides.push(("broker.url".into(), b.clone()));
    }
    if let Some(k) = &global.signing_key {
        overrides.push(("trust.signing_key_file".into(), k.display().to_string()));
    }
    for (k, v) in extra {
        if let Some(v) = v {
            overrides.push((k.to_string(), v.clone()));
        }
    }
    for kv in &global.set {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| config::ConfigError::Value {
                key: kv.clone(),
                value: String::new(),
                message: "--set takes KEY=VALUE".into(),
            })?;
        overrides.push((k.trim().to_string(), v.to_string()));
    }
    config::load(global.config.as_deref(), std::env::vars(), &overrides)
}

/// The CLI's desired index for `node` (`index/cli`), read back through the
/// barrier; empty when there is none. Entries whose spec is no longer
/// retained (a tombstone whose index update was lost: a CLI that died in
/// between, or another writer) are dropped. An unreadable index is an
/// error: a rewritten index would drop the pods it listed, and the agent
/// would then delete them.
async fn read_cli_index(
    client: &mut Client,
    topics: &Topics,
    node: &str,
) -> anyhow::Result<DesiredIndex> {
    let topic = topics.index(node, wire::INDEX_AUTHOR_CLI);
    let mut index = match client.retained(&topic).await?.into_iter().next() {
        None => return Ok(DesiredIndex::default()),
        Some((_, payload)) => wire::decode_as::<DesiredIndex>(&payload)
            .map(|(_, i)| i)
            .with_context(|| {
                format!(
                    "the desired index on {topic} cannot be read; remove it (an empty retained \
                 publish) and apply the node's pods again"
                )
            })?,
    };
    let retained: Vec<(PodKey, String)> = client
        .retained(&topics.desired_filter(node))
        .await?
        .into_iter()
        .filter_map(|(t, p)| match (topics.parse(&t), Retained::read(&p)) {
            (Some(TopicKind::Desired { pod, .. }), Ok(Some(r))) => Some((pod, r.uid().to_string())),
            _ => None,
        })
        .collect();
    index.pods.retain(|e| {
        retained
            .iter()
            .any(|(k, uid)| *k == e.key() && *uid == e.uid)
    });
    Ok(index)
}

/// Publishes the CLI's index for `node` after the specs it lists (same
/// client, QoS 1: the broker keeps the order).
async fn publish_cli_index(
    client: &mut Client,
    topics: &Topics,
    node: &str,
    index: &DesiredIndex,
) -> anyhow::Result<()> {
    let payload = wire::encode(0, &Message::DesiredIndex(index.clone()))?;
    client
        .publish_acked(&topics.index(node, wire::INDEX_AUTHOR_CLI), payload, true)
        .await
}

/// Converts one pod of a manifest for `kedge apply` and `kedge convert`: a
/// refusal is the error (`pod/NAME is invalid: FIELD: ...`), and what is
/// accepted but not honoured (the injected service account token volume)
/// is printed to stderr as kubectl prints the apiserver's warnings
/// (`Warning: pod/NAME: FIELD: ...`).
#[cfg(feature = "manifests")]
pub(crate) fn pod_spec_warned(
    pod: &k8s_openapi::api::core::v1::Pod,
    resolver: &dyn Resolver,
) -> anyhow::Result<PodSpec> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let converted = convert_pod(pod, resolver).with_context(|| format!("pod/{name} is invalid"))?;
    for w in &converted.warnings {
        eprintln!("Warning: pod/{name}: {w}");
    }
    Ok(converted.spec)
}

/// A manifest file's text; `-` is stdin.
#[cfg(feature = "manifests")]
fn read_manifest_file(file: &PathBuf) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

/// `kedge convert -f`: the pods of a manifest file as kedge pod specs, a
/// JSON list (what `*.kedge.json` static pod files hold), their references
/// resolved from the Secrets and ConfigMaps of the same file.
#[cfg(feature = "manifests")]
pub fn convert(file: &PathBuf) -> anyhow::Result<()> {
    let text = read_manifest_file(file)?;
    let manifests = parse_manifests(&text)
        .with_context(|| format!("error validating {:?}", file.display().to_string()))?;
    let resolver = FileResolver::new(&manifests, None, Reader::Convert)
        .with_context(|| format!("error validating {:?}", file.display().to_string()))?;
    let mut specs = Vec::new();
    for pod in &manifests.pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let spec = pod_spec_warned(pod, &resolver)?;
        for (_, secret) in resolver.take_secrets_found() {
            eprintln!(
                "warning: pod/{name} carries the values of secret {secret:?} in clear in this output"
            );
        }
        specs.push(spec);
    }
    for unused in resolver.unused() {
        eprintln!("warning: no pod in the file uses {unused}");
    }
    writeln!(
        std::io::stdout(),
        "{}",
        serde_json::to_string_pretty(&specs)?
    )?;
    Ok(())
}

/// `kedge apply -f` in a build without Kubernetes manifests (`minimal`).
#[cfg(not(feature = "manifests"))]
pub async fn apply(
    _config: &Config,
    _file: &PathBuf,
    _node: &str,
    _namespace: Option<&str>,
) -> anyhow::Result<()> {
    bail!(
        "this kedge was built without Kubernetes manifest support (a `minimal` device build); \
         run `kedge apply` from a workstation's kedge against the same broker"
    )
}

/// `kedge apply -f`: to one node (`--node`), or as fleet deployments
/// (`--selector`).
pub async fn apply_command(
    config: &Config,
    file: &PathBuf,
    node: Option<&str>,
    namespace: Option<&str>,
    args: &fleet_args::FleetArgs,
) -> anyhow::Result<()> {
    match node {
        Some(node) => {
            if let Some(flag) = args.fleet_flag() {
                bail!("{flag} applies to fleet deployments: use --selector instead of --node");
            }
            apply(config, file, node, namespace).await
        }
        #[cfg(all(feature = "manifests", feature = "operator"))]
        None => fleet::apply(config, file, namespace, args).await,
        #[cfg(all(feature = "manifests", not(feature = "operator")))]
        None => {
            let _ = (file, namespace, args);
            Err(no_operator("kedge apply --selector"))
        }
        #[cfg(not(feature = "manifests"))]
        None => apply(config, file, "", namespace).await,
    }
}

/// What a build without the operator commands (fleets, `top`; a device
/// build: the `operator` feature is not in `full` or `minimal`) answers
/// them.
#[cfg(not(feature = "operator"))]
fn no_operator(command: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{command}: this kedge was built without the operator commands (a device build); \
         run it from a workstation's kedge against the same broker"
    )
}

/// `kedge top node|pod`.
pub async fn top_command(config: &Config, what: &TopWhat) -> anyhow::Result<()> {
    #[cfg(feature = "operator")]
    return top::top(config, what).await;
    #[cfg(not(feature = "operator"))]
    {
        let _ = (config, what);
        Err(no_operator("kedge top"))
    }
}

/// `kedge rollout status|pause|resume|undo`.
pub async fn rollout_command(
    config: &Config,
    command: &fleet_args::RolloutCommand,
) -> anyhow::Result<()> {
    #[cfg(feature = "operator")]
    return fleet::rollout(config, command).await;
    #[cfg(not(feature = "operator"))]
    {
        let _ = (config, command);
        Err(no_operator("kedge rollout"))
    }
}

/// `kedge describe fleet`.
pub async fn describe_command(config: &Config, name: &str, namespace: &str) -> anyhow::Result<()> {
    #[cfg(feature = "operator")]
    return fleet::describe(config, name, namespace).await;
    #[cfg(not(feature = "operator"))]
    {
        let _ = (config, name, namespace);
        Err(no_operator("kedge describe fleet"))
    }
}

/// `kedge apply -f`.
#[cfg(feature = "manifests")]
pub async fn apply(
    config: &Config,
    file: &PathBuf,
    node: &str,
    namespace: Option<&str>,
) -> anyhow::Result<()> {
    if !wire::valid_topic_level(node) {
        bail!("invalid node name {node:?}");
    }
    let text = read_manifest_file(file)?;
    let invalid = || format!("error validating {:?}", file.display().to_string());
    let manifests = parse_manifests(&text).with_context(invalid)?;
    if manifests.pods.is_empty() {
        if !manifests.secrets.is_empty() || !manifests.config_maps.is_empty() {
            bail!(
                "no pods in {}: kedge keeps no Secrets or ConfigMaps, they only resolve the \
                 references of the pods applied with them",
                file.display()
            );
        }
        bail!("no objects passed to apply");
    }
    let resolver = FileResolver::new(&manifests, namespace, Reader::Apply).with_context(invalid)?;
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let mut index = read_cli_index(&mut client, &topics, node).await?;
    let index_before = index.clone();
    let mut sealing_key: Option<PublicKey> = None;
    for mut pod in manifests.pods {
        let ns = place_in_namespace(&mut pod, namespace);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = PodKey::new(&ns, &name);
        let topic = topics.desired(node, &key);
        let existing = client
            .retained(&topic)
            .await?
            .into_iter()
            .find_map(|(t, p)| match Retained::read(&p) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("warning: the spec on {t} cannot be read ({e}); replacing it");
                    None
                }
            });
        let uid = existing
            .as_ref()
            .map(|e| e.uid().to_string())
            .or_else(|| pod.metadata.uid.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        pod.metadata.uid = Some(uid.clone());
        crate::model::convert::bind_to_node(&mut pod, node)
            .with_context(|| format!("pod/{name} is invalid"))?;
        let mut spec = pod_spec_warned(&pod, &resolver)?;
        spec.uid = uid;
        let secrets = resolver.take_secrets_found();
        let verb = if existing.is_some() {
            "configured"
        } else {
            "created"
        };
        let Some(spec) = next_to_send(existing.as_ref(), spec, !secrets.is_empty()) else {
            if let Some(Retained::Plain(e)) = &existing {
                index.upsert(crate::model::IndexEntry::of(e));
            }
            writeln!(std::io::stdout(), "pod/{name} unchanged")?;
            continue;
        };
        index.upsert(crate::model::IndexEntry::of(&spec));
        let message = match secrets.first() {
            None => Message::DesiredPod(spec.clone()),
            Some((_, secret)) => {
                let to = match &sealing_key {
                    Some(k) => k.clone(),
                    None => {
                        let k = node_sealing_key(&mut client, &topics, node, secret).await?;
                        eprintln!(
                            "sealing Secret values to the key of node {node} (key id {})",
                            hex::encode(k.id())
                        );
                        sealing_key.insert(k).clone()
                    }
                };
                Message::SealedPod(
                    crate::seal::seal_pod(&to, &topic, &spec)
                        .with_context(|| format!("cannot seal pod/{name}"))?,
                )
            }
        };
        let payload = wire::encode(spec.generation, &message)?;
        client.publish_acked(&topic, payload, true).await?;
        writeln!(std::io::stdout(), "pod/{name} {verb}")?;
    }
    for unused in resolver.unused() {
        eprintln!("warning: no pod in the file uses {unused}");
    }
    if index != index_before {
        publish_cli_index(&mut client, &topics, node, &index).await?;
    }
    client.disconnect().await;
    Ok(())
}

/// What is retained on a pod's desired topic, as far as the CLI can read
/// it: a plain spec, or a sealed one, of which only the uid (in clear) and
/// the generation (the envelope's sequence) can be read.
#[derive(Debug, Clone, PartialEq)]
enum Retained {
    Plain(Box<PodSpec>),
    Sealed { uid: String, generation: u64 },
}

impl Retained {
    /// A retained desired payload; `None` for a tombstone.
    fn read(payload: &[u8]) -> Result<Option<Retained>, wire::WireError> {
        if wire::is_tombstone(payload) {
            return Ok(None);
        }
        let env = wire::decode(payload)?;
        match env.message {
            Message::DesiredPod(spec) => Ok(Some(Retained::Plain(Box::new(spec)))),
            Message::SealedPod(sealed) => Ok(Some(Retained::Sealed {
                uid: sealed.uid,
                generation: env.seq,
            })),
            other => Err(wire::WireError::WrongKind {
                expected: "DesiredPod or SealedPod",
                found: other.kind().name(),
            }),
        }
    }

    fn uid(&self) -> &str {
        match self {
            Retained::Plain(spec) => &spec.uid,
            Retained::Sealed { uid, .. } => uid,
        }
    }
}

/// The spec to publish over `existing` (`None`: unchanged, publish
/// nothing); `sealed` says it carries Secret values. A sealed spec on the
/// broker cannot be compared: the same uid is sent again with the next
/// generation (an agent adopts an unchanged spec without restarting its
/// pod). A plain spec on the broker equal to one that carries Secret
/// values holds them in clear: it is replaced by the sealed one.
#[cfg(feature = "manifests")]
fn next_to_send(existing: Option<&Retained>, spec: PodSpec, sealed: bool) -> Option<PodSpec> {
    match existing {
        Some(Retained::Sealed { uid, generation }) if *uid == spec.uid => {
            let mut spec = spec;
            spec.generation = generation + 1;
            Some(spec)
        }
        Some(Retained::Plain(e)) if sealed && e.uid == spec.uid => {
            let generation = e.generation + 1;
            crate::model::next_desired(Some(&**e), spec.clone()).or_else(|| {
                let mut spec = spec;
                spec.generation = generation;
                Some(spec)
            })
        }
        Some(Retained::Plain(e)) => crate::model::next_desired(Some(&**e), spec),
        _ => crate::model::next_desired(None, spec),
    }
}

/// The public key node `node` reports in its retained status, to seal the
/// values of `secret` (and any other) to. Never a fallback to plaintext.
#[cfg(feature = "manifests")]
async fn node_sealing_key(
    client: &mut Client,
    topics: &Topics,
    node: &str,
    secret: &str,
) -> anyhow::Result<PublicKey> {
    let topic = topics.node(node);
    let status = match client.retained(&topic).await?.into_iter().next() {
        None => None,
        Some((_, payload)) => wire::decode_retained::<NodeStatus>(&payload)
            .with_context(|| {
                format!(
                    "the status of node {node} on {topic} cannot be read; refusing to send the \
                     values of secret {secret:?} in the clear"
                )
            })?
            .map(|(_, s)| s),
    };
    let Some(status) = status else {
        bail!(
            "node {node} has not reported its status on this broker (has its agent ever \
             connected? is the node name right?), so there is no key to seal to; refusing to \
             send the values of secret {secret:?} in the clear"
        );
    };
    let Some(key) = status.sealing_key else {
        bail!(
            "node {node} has not reported a sealing key (an agent older than wire version 5, \
             or it could not make its key: see its log); refusing to send the values of secret \
             {secret:?} in the clear"
        );
    };
    PublicKey::from_bytes(&key, &format!("the status of node {node}"))
        .with_context(|| format!("refusing to send the values of secret {secret:?} in the clear"))
}

/// The node given, or else the one that has the pod, from retained desired
/// or reported topics.
async fn find_node(
    client: &mut Client,
    topics: &Topics,
    key: &PodKey,
    given: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(n) = given {
        return Ok(n.to_string());
    }
    for kind in ["desired", "reported"] {
        let filter = format!(
            "{}/+/{kind}/{}/{}",
            topics.prefix(),
            key.namespace,
            key.name
        );
        let found = client.retained(&filter).await?;
        let nodes: Vec<String> = found
            .iter()
            .filter_map(|(t, _)| match topics.parse(t) {
                Some(TopicKind::Desired { node, .. } | TopicKind::Reported { node, .. }) => {
                    Some(node)
                }
                _ => None,
            })
            .collect();
        match nodes.as_slice() {
            [] => continue,
            [one] => return Ok(one.clone()),
            many => bail!(
                "pod {} exists on several nodes ({}); choose one with --node",
                key.name,
                many.join(", ")
            ),
        }
    }
    bail!(
        "pods \"{}\" not found in namespace \"{}\"",
        key.name,
        key.namespace
    )
}

/// `kedge delete pod|fleet`.
pub async fn delete_any(
    config: &Config,
    what: DeleteWhat,
    name: &str,
    namespace: &str,
    node: Option<&str>,
) -> anyhow::Result<()> {
    match what {
        DeleteWhat::Pod => delete(config, name, namespace, node).await,
        DeleteWhat::Fleet if node.is_some() => {
            bail!("--node names a pod's node; a fleet is deleted from every device")
        }
        #[cfg(feature = "operator")]
        DeleteWhat::Fleet => fleet::delete(config, name, namespace).await,
        #[cfg(not(feature = "operator"))]
        DeleteWhat::Fleet => Err(no_operator("kedge delete fleet")),
    }
}

/// `kedge delete pod`.
pub async fn delete(
    config: &Config,
    name: &str,
    namespace: &str,
    node: Option<&str>,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let key = PodKey::new(namespace, name);
    let node = find_node(&mut client, &topics, &key, node).await?;
    let mut index = read_cli_index(&mut client, &topics, &node).await?;
    client
        .publish_acked(&topics.desired(&node, &key), Vec::new(), true)
        .await?;
    if index.remove(&key) {
        publish_cli_index(&mut client, &topics, &node, &index).await?;
    }
    writeln!(std::io::stdout(), "pod \"{name}\" deleted")?;
    client.disconnect().await;
    Ok(())
}

/// `kedge keys generate --out FILE`: a new key, readable only by its owner.
pub fn keys_generate(out: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let der = crate::trust::generate()?;
    let signer = crate::trust::Signer::from_pkcs8(&der).map_err(anyhow::Error::msg)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("cannot create {}", out.display()))?;
    file.write_all(crate::trust::to_pem(&der).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    eprintln!(
        "wrote the private key to {} (key id {}); give agents this line in trust.keys:",
        out.display(),
        hex::encode(signer.key_id())
    );
    writeln!(std::io::stdout(), "{}", signer.public_key_base64())?;
    Ok(())
}

/// `kedge keys public FILE`.
pub fn keys_public(file: &std::path::Path) -> anyhow::Result<()> {
    let signer = crate::trust::Signer::load(file)?;
    writeln!(std::io::stdout(), "{}", signer.public_key_base64())?;
    Ok(())
}

/// kubectl's short age: 45s, 3m20s, 5h, 2d.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map(|s| s.len()).unwrap_or(0))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == r.len() {
                    cell.clone()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// Rows of `kedge get pods`; one place for the columns.
pub fn pods_table(
    pods: &[(String, PodStatus)],
    all_namespaces: bool,
    wide: bool,
    now: u64,
) -> String {
    let mut rows = Vec::new();
    let mut header: Vec<String> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".into());
    }
    header.extend(["NAME", "READY", "STATUS", "RESTARTS", "AGE"].map(String::from));
    if wide {
        header.extend(["IP", "NODE"].map(String::from));
    }
    rows.push(header);
    for (node, s) in pods {
        let (ready, total) = s.ready_count();
        let mut row = Vec::new();
        if all_namespaces {
            row.push(s.namespace.clone());
        }
        row.push(s.name.clone());
        row.push(format!("{ready}/{total}"));
        row.push(s.display_status());
        row.push(s.restart_count().to_string());
        row.push(
            s.start_time_ms
                .map(|t| age(now.saturating_sub(t)))
                .unwrap_or_else(|| "<unknown>".into()),
        );
        if wide {
            row.push(s.pod_ip.clone().unwrap_or_else(|| "<none>".into()));
            row.push(node.clone());
        }
        rows.push(row);
    }
    table(&rows)
}

/// `kedge get pods|nodes|fleets`.
pub async fn get(
    config: &Config,
    what: GetWhat,
    namespace: &str,
    all_namespaces: bool,
    node: Option<&str>,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let node_level = node.unwrap_or("+");
    let mut stdout = std::io::stdout();
    match what {
        GetWhat::Pods => {
            let mut pods: Vec<(String, PodStatus)> = Vec::new();
            for (topic, payload) in client.retained(&topics.reported_filter(node_level)).await? {
                let Some(TopicKind::Reported { node, .. }) = topics.parse(&topic) else {
                    continue;
                };
                match wire::decode_as::<PodStatus>(&payload) {
                    Ok((_, s)) if all_namespaces || s.namespace == namespace => {
                        pods.push((node, s))
                    }
                    Ok(_) => {}
                    Err(e) => eprintln!("warning: skipping {topic}: {e}"),
                }
            }
            pods.sort_by(|a, b| (&a.1.namespace, &a.1.name).cmp(&(&b.1.namespace, &b.1.name)));
            match output {
                Some(Output::Json) => {
                    let items: Vec<serde_json::Value> = pods
                        .iter()
                        .map(|(n, s)| serde_json::json!({ "node": n, "status": s }))
                        .collect();
                    print_list(&mut stdout, items)?;
                }
                _ if pods.is_empty() => no_resources(all_namespaces, namespace),
                o => write!(
                    stdout,
                    "{}",
                    pods_table(&pods, all_namespaces, o == Some(Output::Wide), now_ms())
                )?,
            }
        }
        #[cfg(feature = "operator")]
        GetWhat::Fleets => {
            fleet::get(
                &mut client,
                &topics,
                namespace,
                all_namespaces,
                node,
                output,
            )
            .await?;
        }
        #[cfg(not(feature = "operator"))]
        GetWhat::Fleets => return Err(no_operator("kedge get fleets")),
        #[cfg(feature = "operator")]
        GetWhat::Routes => {
            let nodes = node_statuses(&mut client, &topics, node_level).await?;
            match output {
                Some(Output::Json) => {
                    let items: Vec<serde_json::Value> = nodes
                        .iter()
                        .map(|n| serde_json::json!({ "node": n.name, "data": n.data }))
                        .collect();
                    print_list(&mut stdout, items)?;
                }
                _ if nodes.is_empty() => eprintln!("No resources found"),
                o => write!(
                    stdout,
                    "{}",
                    routes::routes_table(&nodes, o == Some(Output::Wide))
                )?,
            }
        }
        #[cfg(not(feature = "operator"))]
        GetWhat::Routes => return Err(no_operator("kedge get routes")),
        GetWhat::Nodes => {
            let nodes = node_statuses(&mut client, &topics, node_level).await?;
            match output {
                Some(Output::Json) => {
                    writeln!(
                        stdout,
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "kind": "List", "items": nodes })
                        )?
                    )?;
                }
                _ if nodes.is_empty() => eprintln!("No resources found"),
                o => write!(
                    stdout,
                    "{}",
                    nodes_table(&nodes, o == Some(Output::Wide), now_ms())
                )?,
            }
        }
    }
    client.disconnect().await;
    Ok(())
}

/// The retained status of every node (`node_level`: one, or `+`), by name.
async fn node_statuses(
    client: &mut Client,
    topics: &Topics,
    node_level: &str,
) -> anyhow::Result<Vec<NodeStatus>> {
    let filter = format!("{}/{node_level}/node", topics.prefix());
    let mut nodes: Vec<NodeStatus> = Vec::new();
    for (topic, payload) in client.retained(&filter).await? {
        match wire::decode_as::<NodeStatus>(&payload).map(|(_, n)| n) {
            Ok(n) => nodes.push(n),
            Err(e) => eprintln!("warning: skipping {topic}: {e}"),
        }
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// A node whose last heartbeat is older than this shows NotReady (the
/// Kubernetes node lease duration).
pub const NODE_STALE_MS: u64 = 40_000;

pub fn nodes_table(nodes: &[NodeStatus], wide: bool, now: u64) -> String {
    let mut header: Vec<String> = ["NAME", "STATUS", "ROLES", "LAST-SEEN", "VERSION", "ARCH"]
        .map(String::from)
        .to_vec();
    if wide {
        header.extend(
            [
                "INTERNAL-IP",
                "OS-IMAGE",
                "KERNEL-VERSION",
                "CONTAINER-RUNTIME",
            ]
            .map(String::from),
        );
    }
    let mut rows = vec![header];
    for n in nodes {
        let ready = n.online
            && now.saturating_sub(n.heartbeat_ms) <= NODE_STALE_MS
            && n.condition(NodeConditionType::Ready)
                .map(|c| c.status)
                .unwrap_or(false);
        let mut row = vec![
            n.name.clone(),
            if ready {
                "Ready".into()
            } else {
                "NotReady".into()
            },
            "edge".into(),
            if n.heartbeat_ms == 0 {
                "<unknown>".into()
            } else {
                format!("{} ago", age(now.saturating_sub(n.heartbeat_ms)))
            },
            n.info.agent_version.clone(),
            n.info.architecture.clone(),
        ];
        if wide {
            row.push(
                n.addresses
                    .iter()
                    .find(|a| a.kind == "InternalIP")
                    .map(|a| a.address.clone())
                    .unwrap_or_else(|| "<none>".into()),
            );
            row.push(n.info.os_image.clone());
            row.push(n.info.kernel_version.clone());
            row.push(n.info.container_runtime_version.clone());
        }
        rows.push(row);
    }
    table(&rows)
}

/// `kedge logs`.
#[allow(clippy::too_many_arguments)]
pub async fn logs(
    config: &Config,
    pod: &str,
    namespace: &str,
    container: Option<String>,
    node: Option<&str>,
    tail: Option<u64>,
    follow: bool,
    previous: bool,
    timestamps: bool,
) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let key = PodKey::new(namespace, pod);
    let node = find_node(&mut client, &topics, &key, node).await?;
    let request = LogRequest {
        request_id: String::new(),
        namespace: namespace.into(),
        pod: pod.into(),
        container,
        tail_lines: tail,
        follow,
        previous,
        timestamps,
        since_seconds: None,
        limit_bytes: None,
    };
    let mut stream = client.logs(&node, request).await?;
    let mut stdout = std::io::stdout();
    let mut first = true;
    loop {
        let next = if first || !follow {
            match tokio::time::timeout(ANSWER_TIMEOUT, stream.recv()).await {
                Ok(m) => m,
                Err(_) => {
                    bail!("node {node} did not answer within {ANSWER_TIMEOUT:?} (is it online?)")
                }
            }
        } else {
            stream.recv().await
        };
        first = false;
        let Some(LogChunk {
            data, eof, error, ..
        }) = next
        else {
            bail!(
                "lost the connection to broker {} while reading the logs of node {node}",
                client.url()
            );
        };
        stdout.write_all(&data)?;
        stdout.flush()?;
        if let Some(e) = error {
            bail!("{e}");
        }
        if eof {
            break;
        }
    }
    drop(stream);
    client.disconnect().await;
    Ok(())
}

/// `kedge wire decode`.
pub fn wire_decode(file: Option<&PathBuf>, hex_input: bool) -> anyhow::Result<()> {
    let mut bytes = Vec::new();
    match file {
        Some(f) => {
            bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?
        }
        None => {
            std::io::stdin().read_to_end(&mut bytes)?;
        }
    }
    if hex_input {
        let text: String = String::from_utf8_lossy(&bytes).split_whitespace().collect();
        bytes = hex::decode(text).context("the input is not hex")?;
    }
    // Every message kind's JSON form: in build-host builds (`operator`),
    // not worth its bytes in a device build.
    #[cfg(not(feature = "operator"))]
    bail!(
        "kedge wire decode: this kedge is a device build, without the JSON forms of the wire \
         messages; decode on a workstation's kedge ({} bytes read)",
        bytes.len()
    );
    #[cfg(feature = "operator")]
    {
        let json = wire::to_json(&bytes)?;
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&json)?
        )?;
        Ok(())
    }
}

/// The pod's namespace: its own, else `-n`, else `default` (kubectl's
/// order); written into the pod.
#[cfg(feature = "manifests")]
pub(crate) fn place_in_namespace(
    pod: &mut k8s_openapi::api::core::v1::Pod,
    namespace: Option<&str>,
) -> String {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .or_else(|| namespace.map(str::to_string))
        .unwrap_or_else(|| "default".into());
    pod.metadata.namespace = Some(ns.clone());
    ns
}

/// `{"kind": "List", "items": […]}`, as kubectl prints `-o json`.
pub(crate) fn print_list(
    out: &mut impl std::io::Write,
    items: Vec<serde_json::Value>,
) -> anyhow::Result<()> {
    let list = serde_json::json!({ "kind": "List", "items": items });
    writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
    Ok(())
}

/// What kubectl says when a list is empty.
pub(crate) fn no_resources(all_namespaces: bool, namespace: &str) {
    if all_namespaces {
        eprintln!("No resources found");
    } else {
        eprintln!("No resources found in {namespace} namespace.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(5_000), "5s");
        assert_eq!(age(200_000), "3m20s");
        assert_eq!(age(1_800_000), "30m");
        assert_eq!(age(5 * 3_600_000), "5h");
        assert_eq!(age(3 * 86_400_000), "3d");
    }

    #[test]
    fn fleet_commands_parse() {
        let cli = Cli::try_parse_from([
            "kedge",
            "apply",
            "-f",
            "app.yaml",
            "--selector",
            "building=b43,tier in (a,b)",
            "--priority",
            "-5",
            "--batches",
            "canary=true:100%,25%,100%",
            "--wait",
        ])
        .expect("parses");
        match cli.command {
            Command::Apply {
                node: None, fleet, ..
            } => {
                assert_eq!(
                    fleet.selector.as_deref(),
                    Some("building=b43,tier in (a,b)")
                );
                assert_eq!(fleet.priority, Some(-5));
                assert!(fleet.wait);
            }
            other => panic!("{other:?}"),
        }
        // One of --node and --selector, not both; fleet flags need --selector
        // (beside --node, `apply_command` refuses them: clap lets a flag that
        // requires a conflicting one through).
        for bad in [
            &["kedge", "apply", "-f", "a.yaml"][..],
            &[
                "kedge",
                "apply",
                "-f",
                "a.yaml",
                "--node",
                "gw1",
                "--selector",
                "a=b",
            ],
            &["kedge", "apply", "-f", "a.yaml", "--batches", "10%"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from(["kedge", "apply", "-f", "a", "--node", "n", "--wait"])
            .expect("parses");
        assert!(
            matches!(cli.command, Command::Apply { ref fleet, .. } if fleet.fleet_flag() == Some("--wait"))
        );
        let cli =
            Cli::try_parse_from(["kedge", "label", "node", "gw1", "a=b", "c-"]).expect("parses");
        assert!(matches!(cli.command, Command::Label { ref labels, .. } if labels.len() == 2));
        for args in [
            &[
                "kedge",
                "rollout",
                "status",
                "fleet/sensors",
                "--timeout",
                "5m",
            ][..],
            &["kedge", "rollout", "undo", "fleet", "sensors", "-n", "b43"],
            &["kedge", "get", "fleets", "-A", "-o", "wide"],
            &["kedge", "describe", "fleet", "sensors"],
            &["kedge", "delete", "fleet", "sensors"],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[cfg(feature = "manifests")]
    #[test]
    fn a_sealed_spec_on_the_broker_is_sent_again_with_the_next_generation() {
        use crate::model::{RestartPolicy, samples};
        let spec = |generation| samples::spec("web", "u1", generation, RestartPolicy::Always);
        let sealed = Retained::Sealed {
            uid: "u1".into(),
            generation: 4,
        };
        // Sealed: cannot be compared; the same uid goes again as generation 5
        // (sealed or not), which the agent adopts without a restart.
        for carries_secrets in [true, false] {
            let next = next_to_send(Some(&sealed), spec(1), carries_secrets).expect("sent");
            assert_eq!((next.uid.as_str(), next.generation), ("u1", 5));
        }
        // A plain spec equal to the new one: unchanged, unless the new one
        // carries Secret values, which must not stay in clear.
        let plain = Retained::Plain(Box::new(spec(3)));
        assert_eq!(next_to_send(Some(&plain), spec(1), false), None);
        let next = next_to_send(Some(&plain), spec(1), true).expect("sealed over plain");
        assert_eq!(next.generation, 4);
        let mut changed = spec(1);
        changed.restart_policy = RestartPolicy::Never;
        for carries_secrets in [true, false] {
            let next = next_to_send(Some(&plain), changed.clone(), carries_secrets);
            assert_eq!(next.map(|s| s.generation), Some(4));
        }
        assert_eq!(
            next_to_send(None, spec(0), true).map(|s| s.generation),
            Some(1)
        );
    }

    #[test]
    fn retained_desired_payloads_read_sealed_or_not() {
        use crate::model::{RestartPolicy, samples};
        let mut spec = samples::spec("web", "u1", 7, RestartPolicy::Always);
        spec.containers.push(samples::container("app"));
        let plain = wire::encode(7, &Message::DesiredPod(spec.clone())).expect("encodes");
        assert_eq!(
            Retained::read(&plain).expect("reads"),
            Some(Retained::Plain(Box::new(spec.clone())))
        );
        let key = crate::seal::KeyPair::generate().expect("key");
        let topic = "kedge/v1/gw1/desired/default/web";
        let sealed = crate::seal::seal_pod(&key.public(), topic, &spec).expect("seals");
        let payload = wire::encode(7, &Message::SealedPod(sealed)).expect("encodes");
        let read = Retained::read(&payload).expect("reads").expect("some");
        assert_eq!(
            read,
            Retained::Sealed {
                uid: "u1".into(),
                generation: 7
            }
        );
        assert_eq!(read.uid(), "u1");
        assert_eq!(Retained::read(&[]).expect("tombstone"), None);
        let index = wire::encode(0, &Message::DesiredIndex(DesiredIndex::default())).expect("x");
        assert!(Retained::read(&index).is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["kedge", "get", "po", "-A", "-o", "wide"]).expect("parses");
        assert!(matches!(
            cli.command,
            Command::Get {
                what: GetWhat::Pods,
                all_namespaces: true,
                output: Some(Output::Wide),
                ..
            }
        ));
    }
}
