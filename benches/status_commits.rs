//! `cargo bench --bench status_commits`: what recording supervisor
//! statuses costs the agent's event loop, with the commit (redb, fsync) on
//! the loop and off it. The controller records a batch of statuses per
//! loop turn; while it commits, it handles nothing else.
//!
//! A model of the controller's loop on the real store: the loop runs in
//! `block_on` of a multi-thread runtime, as `kedge agent`'s does, and
//! selects between batches of status reports (all waiting at that moment,
//! as `agent::recv_batch` takes them) and pings. A producer sends bursts of
//! one status per pod (a node-wide restart) as fast as the loop takes them;
//! a pinger sends a ping every millisecond, and the loop notes how long
//! each waited: the loop's latency for everything else it serves
//! (acknowledgements, log requests, the session's events). Three ways, in
//! the same run, taking turns so that they share the disk's noise:
//!
//! - per status, on the loop: `Store::record_status` for each status (the
//!   agent before this change);
//! - per batch, on the loop: `Store::record_statuses`, one transaction;
//! - per batch, off the loop: `Store::stage_statuses` on the loop, the
//!   commit in `spawn_blocking`, reports waiting (and batching up) while it
//!   runs (the agent now: `Controller::record_statuses_off_loop`).
//!
//! Prints one Markdown table: statuses recorded per second, commits, and
//! the ping latency's percentiles with the number of pings they come from
//! (`benches/stats.rs`: nearest rank, "—" for a p99 from fewer than 100).
//! Nothing is asserted.
//!
//! Environment: `KEDGE_BENCH_PODS` (64), `KEDGE_BENCH_BURSTS` (100 per
//! round), `KEDGE_BENCH_ROUNDS` (3), `KEDGE_BENCH_DIR` (where the database
//! lives: the fsync is what is measured, so put it on the device's kind of
//! storage; default: a temporary directory under /var/tmp).

#[path = "stats.rs"]
#[allow(dead_code)]
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kedge::model::{ContainerState, ContainerStatus, PodPhase, PodStatus};
use kedge::store::{OutboxEntry, Store};
use kedge::wire::{self, Message};
use tokio::sync::mpsc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number"))
        })
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    EachStatus,
    BatchInline,
    BatchOffLoop,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::EachStatus => "per status, on the loop (before)",
            Mode::BatchInline => "per batch, on the loop",
            Mode::BatchOffLoop => "per batch, off the loop (now)",
        }
    }
}

#[derive(Default)]
struct Tally {
    statuses: usize,
    commits: usize,
    elapsed: Duration,
    pings: Vec<Duration>,
}

fn status(pod: usize, burst: usize) -> PodStatus {
    PodStatus {
        namespace: "default".into(),
        name: format!("pod-{pod}"),
        uid: format!("uid-{pod}"),
        observed_generation: 1,
        phase: PodPhase::Running,
        conditions: vec![],
        reason: None,
        message: None,
        start_time_ms: Some(1_700_000_000_000),
        host_ip: None,
        pod_ip: None,
        init_container_statuses: vec![],
        container_statuses: vec![ContainerStatus {
            name: "app".into(),
            image: "file:///opt/app.wasm".into(),
            image_id: String::new(),
            container_id: format!("wasm://pod-{pod}/app/{burst}"),
            ready: true,
            started: true,
            restart_count: burst as u32,
            state: ContainerState::Running {
                started_at_ms: 1_700_000_000_000 + burst as u64,
            },
            last_state: None,
        }],
    }
}

fn entry(s: &PodStatus, seq: u64) -> OutboxEntry {
    let body = wire::Body::of(&Message::PodStatus(s.clone())).expect("encodes");
    OutboxEntry {
        topic: format!("kedge/gw/reported/{}/{}", s.namespace, s.name),
        payload: body.envelope(seq),
        retain: true,
        created_ms: 0,
    }
}

/// One run of the loop until `bursts` bursts of `pods` statuses are
/// recorded.
async fn run(store: Arc<Store>, mode: Mode, pods: usize, bursts: usize) -> Tally {
    let (reports_tx, mut reports) = mpsc::unbounded_channel::<PodStatus>();
    let (ping_tx, mut pings) = mpsc::unbounded_channel::<Instant>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<usize>();
    // The producer keeps one burst ahead of the loop (the supervisors do
    // not wait for the controller).
    let (took_tx, mut took) = mpsc::unbounded_channel::<()>();
    let producer = tokio::spawn(async move {
        for burst in 0..bursts {
            for pod in 0..pods {
                let _ = reports_tx.send(status(pod, burst));
            }
            if burst > 0 && took.recv().await.is_none() {
                return;
            }
        }
    });
    let pinger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if ping_tx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let target = pods * bursts;
    let mut tally = Tally::default();
    let mut in_flight = 0usize;
    let mut taken = 0usize;
    let start = Instant::now();
    while tally.statuses < target {
        tokio::select! {
            biased;
            Some(at) = pings.recv() => tally.pings.push(at.elapsed()),
            Some(n) = done.recv() => {
                in_flight -= 1;
                tally.statuses += n;
            }
            n = async {
                let mut batch = Vec::new();
                reports.recv_many(&mut batch, 4096).await;
                batch
            }, if mode != Mode::BatchOffLoop || in_flight == 0 => {
                let batch = n;
                let before = taken / pods;
                taken += batch.len();
                for _ in before..taken / pods {
                    let _ = took_tx.send(());
                }
                match mode {
                    Mode::EachStatus => {
                        for s in &batch {
                            store.record_status(s, |seq| entry(s, seq)).expect("commit");
                            tally.commits += 1;
                        }
                        tally.statuses += batch.len();
                    }
                    Mode::BatchInline => {
                        store.record_statuses(&batch, |i, seq| entry(&batch[i], seq)).expect("commit");
                        tally.commits += 1;
                        tally.statuses += batch.len();
                    }
                    Mode::BatchOffLoop => {
                        let (staged, _) = store
                            .stage_statuses(&batch, |i, seq| entry(&batch[i], seq))
                            .expect("stage");
                        let n = batch.len();
                        let done_tx = done_tx.clone();
                        in_flight += 1;
                        tally.commits += 1;
                        tokio::task::spawn_blocking(move || {
                            staged.commit().expect("commit");
                            let _ = done_tx.send(n);
                        });
                    }
                }
            }
        }
    }
    tally.elapsed = start.elapsed();
    pinger.abort();
    producer.abort();
    tally
}

fn main() {
    let pods = env_usize("KEDGE_BENCH_PODS", 64);
    let bursts = env_usize("KEDGE_BENCH_BURSTS", 100);
    let rounds = env_usize("KEDGE_BENCH_ROUNDS", 3);
    let base = std::env::var_os("KEDGE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp".into());
    let dir = tempfile::Builder::new()
        .prefix("kedge-status-commits-")
        .tempdir_in(&base)
        .expect("temporary directory");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let modes = [Mode::EachStatus, Mode::BatchInline, Mode::BatchOffLoop];
    let mut tallies: Vec<Tally> = modes.iter().map(|_| Tally::default()).collect();
    for round in 0..rounds {
        for (i, mode) in modes.iter().enumerate() {
            // A fresh database each time: the same size for every way.
            let store = Arc::new(
                Store::open(&dir.path().join(format!("{round}-{i}.redb"))).expect("store"),
            );
            let t = runtime.block_on(run(store, *mode, pods, bursts));
            let all = &mut tallies[i];
            all.statuses += t.statuses;
            all.commits += t.commits;
            all.elapsed += t.elapsed;
            all.pings.extend(t.pings);
        }
    }
    println!(
        "\n{pods} pods, {bursts} bursts of one status per pod, {rounds} rounds; database in {}\n",
        base.display()
    );
    println!(
        "| how statuses are committed | statuses/s | commits | ping p50 ms | ping p99 ms | ping max ms | pings |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (mode, t) in modes.iter().zip(tallies) {
        let pings = stats::Summary::new(t.pings);
        let cell = |q: f64| {
            pings.get(q).map_or_else(
                || "—".to_string(),
                |d| format!("{:.2}", d.as_secs_f64() * 1000.0),
            )
        };
        println!(
            "| {} | {:.0} | {} | {} | {} | {} | {} |",
            mode.label(),
            t.statuses as f64 / t.elapsed.as_secs_f64(),
            t.commits,
            cell(50.0),
            cell(99.0),
            pings.max().map_or("—".to_string(), |d| format!(
                "{:.2}",
                d.as_secs_f64() * 1000.0
            )),
            pings.n(),
        );
    }
}
