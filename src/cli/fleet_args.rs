//! The arguments of the fleet operator commands (`kedge apply --selector`,
//! `kedge rollout`): in every build, so that a device build (without the
//! `operator` feature, whose commands are in `cli::fleet`) parses the same
//! command line and says that the command is not in it.

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::model::PodKey;
use crate::wire;

/// The fleet flags of `kedge apply`.
#[derive(Args, Debug, Default, Clone)]
pub struct FleetArgs {
    /// Make a fleet deployment instead of sending to one node: every device
    /// whose labels match this label selector runs the pods, now and later
    /// ('building=b43,tier in (a,b)'; '' is every device).
    #[arg(long, value_name = "SELECTOR", conflicts_with = "node")]
    pub selector: Option<String>,
    /// When two fleets give a device a pod of the same name, the higher
    /// priority wins (default 0).
    #[arg(long, requires = "selector", allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// The fleet's name (default: the pod's name).
    #[arg(long, requires = "selector", value_name = "NAME")]
    pub fleet: Option<String>,
    /// Roll a new revision out in batches, in order and cumulative:
    /// [SELECTOR:]LIMIT items, e.g. 'canary=true:100%,25%,100%'.
    #[arg(long, requires = "selector", value_name = "BATCHES")]
    pub batches: Option<String>,
    /// Percentage of a batch that must run the revision before the next
    /// batch starts; more failures roll it back (default 100).
    #[arg(long, requires = "selector", value_name = "PERCENT")]
    pub success_threshold: Option<String>,
    /// A device that has not run the revision this long after it was asked
    /// to counts as failed (default 10m).
    #[arg(long, requires = "selector", value_name = "DURATION")]
    pub device_timeout: Option<String>,
    /// A device counts as running the revision once it has been up this
    /// long without a break, so one that crash-loops fails its batch
    /// (default 10s; Kubernetes' minReadySeconds).
    #[arg(long, requires = "selector", value_name = "DURATION")]
    pub min_ready: Option<String>,
    /// At most this many devices (10) or this share (10%) updating or
    /// failed at once (default: no limit).
    #[arg(long, requires = "selector", value_name = "LIMIT")]
    pub max_unavailable: Option<String>,
    /// When too many devices fail, halt the rollout instead of rolling back
    /// to the last revision that completed.
    #[arg(long, requires = "selector")]
    pub no_rollback: bool,
    /// Drive the rollout and wait for it, as `kedge rollout status` does.
    #[arg(long, requires = "selector")]
    pub wait: bool,
    /// With --wait: give up after this long (default: wait as long as it
    /// takes).
    #[arg(long, requires = "wait", value_name = "DURATION")]
    pub timeout: Option<String>,
}

impl FleetArgs {
    /// The first fleet flag given, if any (clap lets them through beside
    /// `--node`, which conflicts with `--selector`).
    pub fn fleet_flag(&self) -> Option<&'static str> {
        [
            (self.selector.is_some(), "--selector"),
            (self.priority.is_some(), "--priority"),
            (self.fleet.is_some(), "--fleet"),
            (self.batches.is_some(), "--batches"),
            (self.success_threshold.is_some(), "--success-threshold"),
            (self.device_timeout.is_some(), "--device-timeout"),
            (self.min_ready.is_some(), "--min-ready"),
            (self.max_unavailable.is_some(), "--max-unavailable"),
            (self.no_rollback, "--no-rollback"),
            (self.wait, "--wait"),
            (self.timeout.is_some(), "--timeout"),
        ]
        .into_iter()
        .find_map(|(set, flag)| set.then_some(flag))
    }
}

#[derive(Args, Debug, Clone)]
pub struct RolloutTarget {
    /// fleet/NAME (or: fleet NAME).
    pub resource: String,
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

impl RolloutTarget {
    /// The fleet named, as kubectl reads `deployment/web` or `deployment web`.
    pub fn key(&self) -> anyhow::Result<PodKey> {
        let (kind, name) = match (self.resource.split_once('/'), &self.name) {
            (Some((kind, name)), None) => (kind, name),
            (None, Some(name)) => (self.resource.as_str(), name.as_str()),
            (Some(_), Some(_)) => bail!(
                "there is no need to specify a resource type as a separate argument when passing \
                 arguments in resource/name form"
            ),
            (None, None) => bail!("name the fleet: fleet/NAME"),
        };
        if !matches!(kind, "fleet" | "fleets") {
            bail!("kedge rollout works on fleets, not {kind:?}: fleet/NAME");
        }
        if !wire::valid_topic_level(name) {
            bail!("invalid fleet name {name:?}");
        }
        Ok(PodKey::new(&self.namespace, name))
    }
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Drive a fleet's rollout batch by batch and wait for it: exits 0 when
    /// it completes, non-zero when it was rolled back, halted or paused.
    /// Interrupted, it continues from the retained record when run again.
    Status {
        #[command(flatten)]
        target: RolloutTarget,
        /// Give up after this long (default: wait as long as it takes).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<String>,
    },
    /// Stop a rollout where it is.
    Pause {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Go on with a paused or halted rollout.
    Resume {
        #[command(flatten)]
        target: RolloutTarget,
    },
    /// Roll back to the last revision that completed (as a new revision).
    Undo {
        #[command(flatten)]
        target: RolloutTarget,
    },
}
