//! Fleets from the command line (docs/wire.md, "Fleets"): `kedge apply
//! --selector` makes or updates a fleet deployment, `kedge rollout` drives
//! and steers its rollout, `kedge get fleets` and `kedge describe fleet`
//! show it with its devices' reports, `kedge delete fleet` removes it.
//! The rules are in `crate::fleet`; this module reads and publishes.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::config::Config;
use crate::fleet::driver::{Driver, Outcome};
use crate::fleet::manage::{self, format_batches, format_duration_secs};
use crate::fleet::tally::{Counts, RevisionCounts, Tally};
use crate::model::{
    FleetDeployment, FleetReport, Limit, NodeStatus, PodKey, RolloutPolicy, now_ms,
};
use crate::wire::{self, TopicKind, Topics};

use super::Output;
use super::client::Client;
pub use super::fleet_args::{FleetArgs, RolloutCommand, RolloutTarget};

/// `--selector` checked; the flag is named in the error.
pub fn selector_from_args(args: &FleetArgs) -> anyhow::Result<String> {
    let selector = args.selector.clone().unwrap_or_default();
    crate::model::selector::Selector::parse("--selector", &selector)
        .map_err(|e| anyhow::anyhow!("invalid --selector {selector:?}: {}", e.detail))?;
    Ok(selector)
}

/// The rollout policy of the flags; each error names its flag.
pub fn policy_from_args(args: &FleetArgs) -> anyhow::Result<RolloutPolicy> {
    let mut policy = RolloutPolicy::default();
    if let Some(b) = &args.batches {
        policy.batches = manage::parse_batches(b)
            .map_err(|e| anyhow::anyhow!("invalid --batches {b:?}: {e}"))?;
    }
    if let Some(t) = &args.success_threshold {
        policy.success_threshold_pct = manage::parse_percent(t)
            .map_err(|e| anyhow::anyhow!("invalid --success-threshold: {e}"))?;
    }
    if let Some(t) = &args.device_timeout {
        policy.device_timeout_secs = manage::parse_duration_secs(t)
            .map_err(|e| anyhow::anyhow!("invalid --device-timeout: {e}"))?;
    }
    if let Some(t) = &args.min_ready {
        policy.min_ready_secs = manage::parse_duration_secs(t)
            .map_err(|e| anyhow::anyhow!("invalid --min-ready: {e}"))?;
    }
    if let Some(m) = &args.max_unavailable {
        policy.max_unavailable = m
            .parse::<Limit>()
            .map_err(|e| anyhow::anyhow!("invalid --max-unavailable: {e}"))?;
    }
    policy.auto_rollback = !args.no_rollback;
    Ok(policy)
}

fn wait_timeout(timeout: Option<&str>) -> anyhow::Result<Option<Duration>> {
    timeout
        .map(|t| {
            manage::parse_duration_secs(t)
                .map(|s| Duration::from_secs(u64::from(s)))
                .map_err(|e| anyhow::anyhow!("invalid --timeout: {e}"))
        })
        .transpose()
}

/// The retained record of a fleet, if any; an unreadable one is reported
/// and treated as none.
async fn read_record(
    client: &mut Client,
    topics: &Topics,
    key: &PodKey,
) -> anyhow::Result<Option<FleetDeployment>> {
    Ok(client
        .retained(&topics.fleet(key))
        .await?
        .into_iter()
        .find_map(
            |(t, p)| match wire::decode_as::<FleetDeployment>(&p).map(|(_, f)| f) {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!("warning: the fleet deployment on {t} cannot be read ({e})");
                    None
                }
            },
        ))
}

fn not_found(key: &PodKey) -> anyhow::Error {
    anyhow::anyhow!(
        "fleets \"{}\" not found in namespace \"{}\"",
        key.name,
        key.namespace
    )
}

/// Publishes `next` (retained), then removes the specs `previous` needed
/// and `next` does not.
async fn publish_record(
    client: &mut Client,
    topics: &Topics,
    previous: Option<&FleetDeployment>,
    next: &FleetDeployment,
) -> anyhow::Result<()> {
    // Never publish what every device would refuse.
    crate::model::validate::Validate::validate(next)
        .map_err(|e| anyhow::anyhow!("fleet/{} is invalid: {e}", next.name))?;
    let payload = wire::encode(0, &wire::Message::FleetDeployment(next.clone()))?;
    client
        .publish_acked(&topics.fleet(&next.key()), payload, true)
        .await?;
    if let Some(p) = previous {
        for digest in manage::unreferenced_specs(p, next) {
            client
                .publish_acked(&topics.fleet_spec(&digest), Vec::new(), true)
                .await?;
        }
    }
    Ok(())
}

/// `kedge apply -f FILE --selector …`: each pod of the file becomes (or
/// updates) a fleet deployment: the spec is published first, then the
/// record.
#[cfg(feature = "manifests")]
pub async fn apply(
    config: &Config,
    file: &std::path::PathBuf,
    namespace: Option<&str>,
    args: &FleetArgs,
) -> anyhow::Result<()> {
    use anyhow::Context;

    use crate::fleet::manage::{Applied, Definition};
    use crate::model::convert::{parse_pod_manifests, pod_spec_from_k8s};
    use crate::model::validate::Validate;

    let selector = selector_from_args(args)?;
    let policy = policy_from_args(args)?;
    let timeout = wait_timeout(args.timeout.as_deref())?;
    let text = super::read_manifest_file(file)?;
    let manifests = parse_pod_manifests(&text)
        .with_context(|| format!("error validating {:?}", file.display().to_string()))?;
    if manifests.is_empty() {
        bail!("no objects passed to apply");
    }
    if args.fleet.is_some() && manifests.len() > 1 {
        bail!(
            "--fleet names one fleet, but {} holds {} pods: apply them one at a time, or leave \
             --fleet out to name each fleet after its pod",
            file.display(),
            manifests.len()
        );
    }
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let mut stdout = std::io::stdout();
    let mut applied = Vec::new();
    for mut pod in manifests {
        let ns = super::place_in_namespace(&mut pod, namespace);
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let name = args.fleet.clone().unwrap_or_else(|| pod_name.clone());
        if !wire::valid_topic_level(&name) {
            if args.fleet.is_some() {
                bail!("invalid --fleet {name:?}: a fleet name is a DNS subdomain");
            }
            // The pod's own name is wrong: say so as `kedge apply` does.
            pod_spec_from_k8s(&pod).with_context(|| format!("pod/{pod_name} is invalid"))?;
            bail!("invalid pod name {pod_name:?}");
        }
        let key = PodKey::new(&ns, &name);
        let previous = read_record(&mut client, &topics, &key).await?;
        let uid = previous
            .as_ref()
            .map(|p| p.uid.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        pod.metadata.uid = Some(uid.clone());
        crate::model::convert::unbound(&pod)
            .with_context(|| format!("pod/{pod_name} is invalid"))?;
        let mut spec = super::pod_spec_warned(&pod, &crate::model::convert::NoResolver)?;
        spec.uid = uid.clone();
        let (digest, payload) = crate::fleet::spec_payload(&spec)?;
        let definition = Definition {
            namespace: ns.clone(),
            name: name.clone(),
            selector: selector.clone(),
            priority: args.priority.unwrap_or(0),
            pod_name: pod_name.clone(),
            spec_digest: digest.clone(),
            policy: policy.clone(),
        };
        let (record, verb) = match manage::define(definition, &uid, previous.as_ref(), now_ms()) {
            Applied::Unchanged => {
                writeln!(stdout, "fleet/{name} unchanged")?;
                applied.push(key);
                continue;
            }
            Applied::Created(f) => (*f, "created"),
            Applied::Configured(f) => (*f, "configured"),
        };
        Validate::validate(&record).map_err(|e| match e.field.as_str() {
            "metadata.name" => anyhow::anyhow!("invalid --fleet {name:?}: {}", e.detail),
            _ => anyhow::anyhow!("fleet/{name} is invalid: {e}"),
        })?;
        client
            .publish_acked(&topics.fleet_spec(&digest), payload, true)
            .await?;
        publish_record(&mut client, &topics, previous.as_ref(), &record).await?;
        writeln!(stdout, "fleet/{name} {verb}")?;
        if !args.wait && manage::is_staged(&record.rollout.policy) && record.cohorts.is_empty() {
            eprintln!(
                "revision {} of fleet/{name} waits for its first batch: drive the rollout with \
                 `kedge rollout status fleet/{name}{}`",
                record.revision,
                namespace_flag(&ns)
            );
        }
        applied.push(key);
    }
    if args.wait {
        for key in &applied {
            drive(&mut client, &topics, key, timeout).await?;
        }
    }
    client.disconnect().await;
    Ok(())
}

fn namespace_flag(ns: &str) -> String {
    if ns == "default" {
        String::new()
    } else {
        format!(" -n {ns}")
    }
}

// ---------------------------------------------------------------------------
// kedge rollout

/// `kedge rollout status|pause|resume|undo`.
pub async fn rollout(config: &Config, command: &RolloutCommand) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let (target, timeout) = match command {
        RolloutCommand::Status { target, timeout } => (target, timeout.as_deref()),
        RolloutCommand::Pause { target }
        | RolloutCommand::Resume { target }
        | RolloutCommand::Undo { target } => (target, None),
    };
    let key = target.key()?;
    let timeout = wait_timeout(timeout)?;
    let mut client = Client::connect(config).await?;
    if let RolloutCommand::Status { .. } = command {
        drive(&mut client, &topics, &key, timeout).await?;
        client.disconnect().await;
        return Ok(());
    }
    let Some(record) = read_record(&mut client, &topics, &key).await? else {
        return Err(not_found(&key));
    };
    let (next, verb) = match command {
        RolloutCommand::Pause { .. } => (manage::pause(&record)?, "paused"),
        RolloutCommand::Resume { .. } => (manage::resume(&record, now_ms())?, "resumed"),
        _ => (manage::undo(&record, now_ms())?, "rolled back"),
    };
    publish_record(&mut client, &topics, Some(&record), &next).await?;
    writeln!(std::io::stdout(), "fleet/{} {verb}", key.name)?;
    client.disconnect().await;
    Ok(())
}

/// A node status and whether it carries labels (schema version 2).
fn node_status(payload: &[u8]) -> Option<(NodeStatus, bool)> {
    let env = wire::decode(payload).ok()?;
    match env.message {
        wire::Message::NodeStatus(n) => Some((n, env.version >= 2)),
        _ => None,
    }
}

/// Feeds one message of a watched fleet to its driver. Returns false when
/// the fleet deployment was deleted.
fn feed(driver: &mut Driver, topics: &Topics, topic: &str, payload: &[u8], now: u64) -> bool {
    match topics.parse(topic) {
        Some(TopicKind::Fleet { .. }) => {
            if payload.is_empty() {
                return false;
            }
            match wire::decode_as::<FleetDeployment>(payload) {
                Ok((_, f)) => driver.on_record(f, now),
                Err(e) => {
                    eprintln!("warning: the fleet deployment on {topic} cannot be read ({e})")
                }
            }
        }
        Some(TopicKind::FleetReport { node, .. }) => {
            match wire::decode_retained::<FleetReport>(payload) {
                Ok(r) => driver.on_report(&node, r.map(|(_, r)| r), now),
                Err(e) => eprintln!("warning: skipping {topic}: {e}"),
            }
        }
        Some(TopicKind::Node { node }) if !payload.is_empty() => {
            if let Some((n, has_labels)) = node_status(payload) {
                driver.on_node(
                    &node,
                    n.online,
                    n.heartbeat_ms,
                    has_labels.then_some(n.labels),
                    now,
                );
            }
        }
        _ => {}
    }
    true
}

/// The progress line of a rollout that is moving.
fn progress_line(driver: &Driver, now: u64) -> String {
    let f = driver.fleet();
    let name = &f.name;
    let unreported = driver.unreported(now);
    if !unreported.is_empty() {
        let shown: Vec<&str> = unreported.iter().take(5).copied().collect();
        return format!(
            "Waiting for fleet \"{name}\" rollout to finish: {} matching device(s) have not \
             reported yet ({}{})...",
            unreported.len(),
            shown.join(", "),
            if unreported.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    let p = driver.progress(now);
    let batches = f.rollout.policy.batches.len().max(1);
    format!(
        "Waiting for fleet \"{name}\" rollout to finish: batch {} of {batches}: {} of {} devices \
         run revision {} ({} updating, {} failed)...",
        u32::from(f.rollout.state.batch) + 1,
        p.succeeded,
        p.expected,
        f.revision,
        p.updating,
        p.failed
    )
}

/// The rollout driver: follows the fleet's record, its devices' reports
/// and node statuses, steps the rollout on every change and every second,
/// publishes each record the step returns and prints the progress. Ends
/// when the rollout completes (Ok) or stops (an error naming why).
pub async fn drive(
    client: &mut Client,
    topics: &Topics,
    key: &PodKey,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    const TICK: Duration = Duration::from_secs(1);
    let filters = vec![
        topics.fleet(key),
        topics.fleet_report("+", key),
        topics.node("+"),
    ];
    let retained = client.watch(&filters).await?;
    let now = now_ms();
    let record = retained
        .iter()
        .filter(|(t, p)| *t == filters[0] && !p.is_empty())
        .find_map(|(_, p)| wire::decode_as::<FleetDeployment>(p).ok())
        .map(|(_, f)| f);
    let Some(record) = record else {
        return Err(not_found(key));
    };
    let mut driver = Driver::new(record, now);
    for (topic, payload) in &retained {
        feed(&mut driver, topics, topic, payload, now);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut stdout = std::io::stdout();
    let mut last_line = String::new();
    // Records this loop published, whose echoes are still to come (in
    // order: one client's publishes keep theirs). An echo is not news; fed
    // to the driver, an older one would take it back a step.
    let mut echoes: VecDeque<FleetDeployment> = VecDeque::new();
    loop {
        let now = now_ms();
        let mut previous = driver.fleet().clone();
        for next in driver.step(now) {
            echoes.push_back(next.clone());
            publish_record(client, topics, Some(&previous), &next).await?;
            writeln!(
                stdout,
                "fleet \"{}\": {}",
                key.name, next.rollout.state.message
            )?;
            previous = next;
        }
        let f = driver.fleet();
        match driver.outcome() {
            Outcome::Complete => {
                writeln!(
                    stdout,
                    "fleet \"{}\" successfully rolled out (revision {})",
                    key.name, f.revision
                )?;
                return Ok(());
            }
            Outcome::Failed(_) => bail!(
                "fleet \"{}\" rollout failed: {}",
                key.name,
                f.rollout.state.message
            ),
            Outcome::Paused => bail!(
                "fleet \"{}\" rollout is paused; go on with `kedge rollout resume fleet/{}{}`",
                key.name,
                key.name,
                namespace_flag(&key.namespace)
            ),
            Outcome::Rolling => {}
        }
        let line = progress_line(&driver, now);
        if line != last_line {
            writeln!(stdout, "{line}")?;
            last_line = line;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            bail!("timed out waiting for fleet \"{}\" to roll out", key.name);
        }
        // A change, or the tick (device timeouts, stale heartbeats).
        if let Ok(message) = tokio::time::timeout(TICK, client.next_message()).await {
            let (topic, payload) = message?;
            if topic == filters[0]
                && echoes.front().is_some_and(|ours| {
                    wire::decode_as::<FleetDeployment>(&payload).is_ok_and(|(_, f)| f == *ours)
                })
            {
                echoes.pop_front();
                continue;
            }
            if !feed(&mut driver, topics, &topic, &payload, now_ms()) {
                bail!("fleet \"{}\" was deleted", key.name);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// kedge get fleets, describe fleet, delete fleet

/// A fleet with what its devices report.
pub struct FleetView {
    pub driver: Driver,
}

impl FleetView {
    pub fn fleet(&self) -> &FleetDeployment {
        self.driver.fleet()
    }
    pub fn counts(&self) -> Counts {
        self.driver.tally().counts()
    }
}

/// Every fleet in `namespace` (None: all) with its devices' reports (of
/// `node` only, when given) and presence, read through the barrier.
async fn read_fleets(
    client: &mut Client,
    topics: &Topics,
    namespace: Option<&str>,
    name: Option<&str>,
    node: Option<&str>,
) -> anyhow::Result<Vec<FleetView>> {
    let ns = namespace.unwrap_or("+");
    let fleet = PodKey::new(ns, name.unwrap_or("+"));
    let now = now_ms();
    let mut views: Vec<FleetView> = Vec::new();
    for (topic, payload) in client.retained(&topics.fleet(&fleet)).await? {
        match wire::decode_as::<FleetDeployment>(&payload) {
            Ok((_, f)) => views.push(FleetView {
                driver: Driver::new(f, now),
            }),
            Err(e) => eprintln!("warning: skipping {topic}: {e}"),
        }
    }
    if views.is_empty() {
        return Ok(views);
    }
    let node_level = node.unwrap_or("+");
    let statuses = client.retained(&topics.node(node_level)).await?;
    let reports = client
        .retained(&topics.fleet_report(node_level, &fleet))
        .await?;
    for view in &mut views {
        let key = view.fleet().key();
        for (topic, payload) in statuses.iter().chain(reports.iter()) {
            let ours = match topics.parse(topic) {
                Some(TopicKind::FleetReport { fleet, .. }) => fleet == key,
                Some(TopicKind::Node { .. }) => true,
                _ => false,
            };
            if ours {
                feed(&mut view.driver, topics, topic, payload, now);
            }
        }
    }
    views.sort_by_key(|a| a.fleet().key());
    Ok(views)
}

fn or_none(s: &str) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s.to_string()
    }
}

/// Rows of `kedge get fleets`; one place for the columns.
pub fn fleets_table(
    fleets: &[(FleetDeployment, Counts)],
    all_namespaces: bool,
    wide: bool,
) -> String {
    let mut header: Vec<String> = Vec::new();
    if all_namespaces {
        header.push("NAMESPACE".into());
    }
    header.extend(
        [
            "NAME",
            "SELECTOR",
            "PRIORITY",
            "REVISION",
            "TARGETED",
            "UP-TO-DATE",
            "RUNNING",
            "READY",
            "FAILED",
            "OFFLINE",
            "PHASE",
        ]
        .map(String::from),
    );
    if wide {
        header.extend(["POD", "BATCHES", "MESSAGE"].map(String::from));
    }
    let mut rows = vec![header];
    for (f, c) in fleets {
        let mut row = Vec::new();
        if all_namespaces {
            row.push(f.namespace.clone());
        }
        row.push(f.name.clone());
        row.push(or_none(&f.selector));
        row.push(f.priority.to_string());
        row.push(f.revision.to_string());
        for n in [
            c.targeted, c.applied, c.running, c.ready, c.failed, c.offline,
        ] {
            row.push(n.to_string());
        }
        row.push(f.rollout.state.phase.as_str().to_string());
        if wide {
            row.push(f.pod_name.clone());
            row.push(or_none(&format_batches(&f.rollout.policy.batches)));
            row.push(or_none(&f.rollout.state.message));
        }
        rows.push(row);
    }
    super::table(&rows)
}

fn counts_json(c: &Counts) -> serde_json::Value {
    serde_json::json!({
        "targeted": c.targeted,
        "desired": c.desired,
        "upToDate": c.applied,
        "running": c.running,
        "ready": c.ready,
        "failed": c.failed,
        "waiting": c.waiting,
        "superseded": c.superseded,
        "offline": c.offline,
    })
}

/// `kedge get fleets`.
pub async fn get(
    client: &mut Client,
    topics: &Topics,
    namespace: &str,
    all_namespaces: bool,
    node: Option<&str>,
    output: Option<Output>,
) -> anyhow::Result<()> {
    let views = read_fleets(
        client,
        topics,
        (!all_namespaces).then_some(namespace),
        None,
        node,
    )
    .await?;
    let mut stdout = std::io::stdout();
    match output {
        Some(Output::Json) => {
            let items: Vec<serde_json::Value> = views
                .iter()
                .map(|v| {
                    serde_json::json!({
                        "fleet": v.fleet(),
                        "devices": counts_json(&v.counts()),
                    })
                })
                .collect();
            super::print_list(&mut stdout, items)?;
        }
        _ if views.is_empty() => super::no_resources(all_namespaces, namespace),
        o => {
            let rows: Vec<(FleetDeployment, Counts)> = views
                .iter()
                .map(|v| (v.fleet().clone(), v.counts()))
                .collect();
            write!(
                stdout,
                "{}",
                fleets_table(&rows, all_namespaces, o == Some(Output::Wide))
            )?;
        }
    }
    Ok(())
}

fn short_digest(d: &str) -> String {
    format!("sha256:{}", d.get(..12).unwrap_or(d))
}

/// One `Key:   value` line of `kedge describe`.
fn field(key: &str, value: &str) -> String {
    format!("{:<20}{value}\n", format!("{key}:"))
}

/// `kedge describe fleet`'s text.
pub fn describe_text(view: &FleetView, now: u64) -> String {
    let f = view.fleet();
    let c = view.counts();
    let policy = &f.rollout.policy;
    let state = &f.rollout.state;
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&field(k, &v));
    line("Name", f.name.clone());
    line("Namespace", f.namespace.clone());
    line("UID", f.uid.clone());
    line("Selector", or_none(&f.selector));
    line("Priority", f.priority.to_string());
    line("Pod", f.pod_name.clone());
    line(
        "Revision",
        format!("{} (spec {})", f.revision, short_digest(&f.spec_digest)),
    );
    line(
        "Stable Revision",
        f.stable.as_ref().map_or_else(
            || "<none>".into(),
            |s| format!("{} (spec {})", s.revision, short_digest(&s.spec_digest)),
        ),
    );
    line("Batches", or_none(&format_batches(&policy.batches)));
    line(
        "Success Threshold",
        format!("{}%", policy.success_threshold_pct),
    );
    line(
        "Device Timeout",
        format_duration_secs(policy.device_timeout_secs),
    );
    line("Min Ready", format_duration_secs(policy.min_ready_secs));
    line(
        "Max Unavailable",
        match policy.max_unavailable {
            Limit::Count(0) => "<unlimited>".into(),
            l => l.to_string(),
        },
    );
    line("Auto Rollback", policy.auto_rollback.to_string());
    line("Phase", state.phase.as_str().to_string());
    line(
        "Batch",
        format!(
            "{} of {}",
            u32::from(state.batch) + 1,
            policy.batches.len().max(1)
        ),
    );
    line("Message", or_none(&state.message));
    if state.started_ms != 0 {
        line(
            "Started",
            format!("{} ago", super::age(now.saturating_sub(state.started_ms))),
        );
    }
    let cohorts: Vec<String> = f
        .cohorts
        .iter()
        .map(|co| {
            let who = if co.selector.is_empty() {
                "all devices".to_string()
            } else {
                co.selector.clone()
            };
            if co.per_10k >= crate::model::fleet::BUCKETS {
                who
            } else {
                format!("{who} below bucket {}/10000", co.per_10k)
            }
        })
        .collect();
    line(
        "Cohorts",
        if cohorts.is_empty() {
            "<none>".into()
        } else {
            cohorts.join("; ")
        },
    );
    out.push_str("Devices:\n");
    for (k, v) in [
        ("Targeted", c.targeted),
        ("Up-to-date", c.applied),
        ("Running", c.running),
        ("Ready", c.ready),
        ("Failed", c.failed),
        ("Waiting", c.waiting),
        ("Superseded", c.superseded),
        ("Offline", c.offline),
    ] {
        out.push_str(&format!("  {:<16}{v}\n", format!("{k}:")));
    }
    out.push_str(&revisions_table(view.driver.tally()));
    let failures: Vec<(&str, &str)> = view.driver.tally().failures(10).collect();
    if !failures.is_empty() {
        out.push_str("Failing Devices:\n");
        let width = failures.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (node, why) in &failures {
            out.push_str(&format!("  {node:<width$}   {why}\n"));
        }
        if (c.failed as usize) > failures.len() {
            out.push_str(&format!(
                "  … and {} more\n",
                c.failed as usize - failures.len()
            ));
        }
    }
    out
}

/// The `Revisions:` table of `kedge describe fleet` (as kubectl describe
/// prints its tables): the devices per revision they run, newest first,
/// the older revisions in one line; nothing when no device runs one.
fn revisions_table(tally: &Tally) -> String {
    let b = tally.by_revision();
    let mut rows: Vec<Vec<String>> = vec![
        [
            "Revision", "Devices", "Running", "Ready", "Failed", "Offline",
        ]
        .map(String::from)
        .to_vec(),
        [
            "--------", "-------", "-------", "-----", "------", "-------",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let line = |name: String, c: &RevisionCounts| {
        let mut row = vec![name];
        row.extend([c.devices, c.running, c.ready, c.failed, c.offline].map(|n| n.to_string()));
        row
    };
    rows.extend(b.revisions().map(|(r, c)| line(r.to_string(), c)));
    rows.extend(b.older().map(|(below, c)| line(format!("< {below}"), c)));
    if rows.len() == 2 {
        return String::new();
    }
    let mut out = String::from("Revisions:\n");
    for l in super::table(&rows).lines() {
        out.push_str("  ");
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// `kedge describe fleet NAME`.
pub async fn describe(config: &Config, name: &str, namespace: &str) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let mut client = Client::connect(config).await?;
    let key = PodKey::new(namespace, name);
    if !wire::valid_topic_level(name) {
        bail!("invalid fleet name {name:?}");
    }
    let views = read_fleets(&mut client, &topics, Some(namespace), Some(name), None).await?;
    let Some(view) = views.first() else {
        return Err(not_found(&key));
    };
    write!(std::io::stdout(), "{}", describe_text(view, now_ms()))?;
    client.disconnect().await;
    Ok(())
}

/// `kedge delete fleet NAME`: the record's tombstone (devices remove its
/// pods), then its specs'.
pub async fn delete(config: &Config, name: &str, namespace: &str) -> anyhow::Result<()> {
    let topics = Topics::new(&config.topic_prefix);
    let key = PodKey::new(namespace, name);
    if !wire::valid_topic_level(name) {
        bail!("invalid fleet name {name:?}");
    }
    let mut client = Client::connect(config).await?;
    let present = client.retained(&topics.fleet(&key)).await?;
    if present.is_empty() {
        return Err(not_found(&key));
    }
    let record = present
        .iter()
        .find_map(|(_, p)| wire::decode_as::<FleetDeployment>(p).ok())
        .map(|(_, f)| f);
    client
        .publish_acked(&topics.fleet(&key), Vec::new(), true)
        .await?;
    match &record {
        Some(f) => {
            for digest in manage::spec_digests(f) {
                client
                    .publish_acked(&topics.fleet_spec(&digest), Vec::new(), true)
                    .await?;
            }
        }
        None => eprintln!(
            "warning: the fleet deployment could not be read, so its specs on {} stay",
            topics.fleet_spec("…")
        ),
    }
    writeln!(std::io::stdout(), "fleet \"{name}\" deleted")?;
    client.disconnect().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::manage::{Applied, Definition};
    use crate::model::{FleetPodState, RolloutPhase};

    fn args(pairs: &[(&str, &str)]) -> FleetArgs {
        let mut a = FleetArgs {
            selector: Some("building=b43".into()),
            ..FleetArgs::default()
        };
        for (k, v) in pairs {
            let v = Some(v.to_string());
            match *k {
                "selector" => a.selector = v,
                "batches" => a.batches = v,
                "success-threshold" => a.success_threshold = v,
                "device-timeout" => a.device_timeout = v,
                "min-ready" => a.min_ready = v,
                "max-unavailable" => a.max_unavailable = v,
                other => panic!("{other}"),
            }
        }
        a
    }

    fn error(a: FleetArgs) -> String {
        match selector_from_args(&a).and_then(|_| policy_from_args(&a)) {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn flags_make_the_policy_and_errors_name_the_flag() {
        let p = policy_from_args(&args(&[
            ("batches", "canary=true:100%,25%,100%"),
            ("success-threshold", "90"),
            ("device-timeout", "10m"),
            ("min-ready", "30s"),
            ("max-unavailable", "10%"),
        ]))
        .expect("valid");
        assert_eq!(p.min_ready_secs, 30);
        assert_eq!(p.batches.len(), 3);
        assert_eq!(p.success_threshold_pct, 90);
        assert_eq!(p.device_timeout_secs, 600);
        assert_eq!(p.max_unavailable, Limit::Percent(10));
        assert!(p.auto_rollback);
        let defaults = policy_from_args(&args(&[])).expect("valid");
        assert_eq!(defaults, RolloutPolicy::default());

        let e = error(args(&[("selector", "tier in (a")]));
        assert!(e.starts_with("invalid --selector \"tier in (a\":"), "{e}");
        let e = error(args(&[("batches", "canary=true")]));
        assert!(
            e.starts_with("invalid --batches \"canary=true\":") && e.contains("has no limit"),
            "{e}"
        );
        let e = error(args(&[("success-threshold", "0")]));
        assert!(e.starts_with("invalid --success-threshold:"), "{e}");
        let e = error(args(&[("device-timeout", "soon")]));
        assert!(e.starts_with("invalid --device-timeout:"), "{e}");
        let e = error(args(&[("max-unavailable", "200%")]));
        assert!(e.starts_with("invalid --max-unavailable:"), "{e}");
    }

    #[test]
    fn rollout_targets_read_like_kubectl() {
        let t = |r: &str, n: Option<&str>| RolloutTarget {
            resource: r.into(),
            name: n.map(String::from),
            namespace: "default".into(),
        };
        assert_eq!(
            t("fleet/sensors", None).key().expect("valid"),
            PodKey::new("default", "sensors")
        );
        assert_eq!(
            t("fleet", Some("sensors")).key().expect("valid"),
            PodKey::new("default", "sensors")
        );
        let e = t("deployment/web", None).key().expect_err("not a fleet");
        assert!(e.to_string().contains("works on fleets"), "{e}");
        assert!(t("fleet", None).key().is_err());
    }

    fn sample() -> FleetView {
        let digest: String = std::iter::repeat_n('a', 64).collect();
        let Applied::Created(f) = manage::define(
            Definition {
                namespace: "default".into(),
                name: "sensors".into(),
                selector: "building=b43".into(),
                priority: 10,
                pod_name: "sensor".into(),
                spec_digest: digest,
                policy: RolloutPolicy {
                    batches: manage::parse_batches("canary=true:100%,100%").expect("valid"),
                    ..RolloutPolicy::default()
                },
            },
            "uid-1",
            None,
            1_000,
        ) else {
            panic!("created");
        };
        let mut driver = Driver::new(*f, 1_000);
        for (node, state, reason) in [
            ("gw1", FleetPodState::Ready, None),
            ("gw2", FleetPodState::Failed, Some("CrashLoopBackOff")),
            ("gw3", FleetPodState::Waiting, None),
        ] {
            let up = state == FleetPodState::Ready;
            let asked = state != FleetPodState::Waiting;
            let report = FleetReport {
                fleet_uid: "uid-1".into(),
                desired_revision: u64::from(asked),
                running_revision: u64::from(up),
                state,
                groups: 0b11,
                reason: reason.map(String::from),
                message: None,
            };
            driver.on_report(node, Some(report), 1_000);
        }
        driver.on_node("gw3", false, 0, None, 1_000);
        FleetView { driver }
    }

    #[test]
    fn the_fleets_table_has_kubectls_columns() {
        let view = sample();
        let rows = vec![(view.fleet().clone(), view.counts())];
        let table = fleets_table(&rows, false, false);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            [
                "NAME",
                "SELECTOR",
                "PRIORITY",
                "REVISION",
                "TARGETED",
                "UP-TO-DATE",
                "RUNNING",
                "READY",
                "FAILED",
                "OFFLINE",
                "PHASE"
            ]
        );
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "sensors",
                "building=b43",
                "10",
                "1",
                "3",
                "1",
                "1",
                "1",
                "1",
                "1",
                "Progressing"
            ]
        );
        // Columns line up: every value starts under its header.
        let at = lines[0].find("PHASE").expect("PHASE");
        assert_eq!(&lines[1][at..], "Progressing");
        let wide = fleets_table(&rows, true, true);
        assert!(wide.starts_with("NAMESPACE"), "{wide}");
        assert!(wide.contains("canary=true:100%,100%"), "{wide}");
    }

    #[test]
    fn describe_shows_the_policy_the_counts_and_the_failures() {
        let text = describe_text(&sample(), 61_000);
        let fields = [
            ("Name", "sensors"),
            ("Selector", "building=b43"),
            ("Priority", "10"),
            ("Revision", "1 (spec sha256:aaaaaaaaaaaa)"),
            ("Stable Revision", "<none>"),
            ("Batches", "canary=true:100%,100%"),
            ("Success Threshold", "100%"),
            ("Device Timeout", "10m"),
            ("Max Unavailable", "<unlimited>"),
            ("Phase", "Progressing"),
            ("Batch", "1 of 2"),
            ("Started", "60s ago"),
            ("Cohorts", "<none>"),
        ];
        let mut wants: Vec<String> = fields.iter().map(|(k, v)| field(k, v)).collect();
        assert!(
            wants[0].starts_with("Name:               sensors"),
            "{}",
            wants[0]
        );
        wants.extend(
            [
                "  Targeted:       3",
                "  Failed:         1",
                "  Offline:        1",
                "Failing Devices:\n  gw2   CrashLoopBackOff",
            ]
            .map(String::from),
        );
        for want in wants {
            assert!(text.contains(&want), "{want:?} not in\n{text}");
        }
        // The devices per revision, as kubectl describe prints a table.
        assert!(
            text.contains(concat!(
                "Revisions:\n",
                "  Revision   Devices   Running   Ready   Failed   Offline\n",
                "  --------   -------   -------   -----   ------   -------\n",
                "  1          1         1         1       1        0\n",
            )),
            "{text}"
        );
        let mut view = sample();
        let mut f = view.fleet().clone();
        f.rollout.state.phase = RolloutPhase::Complete;
        f.cohorts = vec![crate::model::Cohort::everyone()];
        view.driver.on_record(f, 2_000);
        assert!(describe_text(&view, 2_000).contains(&field("Cohorts", "all devices")));
    }
}
