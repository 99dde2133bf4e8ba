//! What an author does to a fleet deployment: define or update it (`kedge
//! apply --selector`, a bridge turning a workload into a fleet), pause,
//! resume and undo its rollout, and the text forms of a rollout policy
//! (`--batches 'canary=true:100%,25%,100%'`). Pure: the caller reads the
//! retained record, calls these and publishes what they return.

use std::collections::BTreeSet;

use thiserror::Error;

use crate::model::selector::Selector;
use crate::model::validate::MAX_SECONDS;
use crate::model::{
    Batch, Cohort, FleetDeployment, Limit, Rollout, RolloutPhase, RolloutPolicy, RolloutState,
};

use super::rollout;

/// What an author says a fleet deployment is (everything but its uid,
/// which the record keeps, and its rollout progress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    pub namespace: String,
    pub name: String,
    pub selector: String,
    pub priority: i32,
    pub pod_name: String,
    /// The digest of the spec payload (`fleet::spec_payload`), made with
    /// the uid the record will carry.
    pub spec_digest: String,
    pub policy: RolloutPolicy,
}

/// The outcome of [`define`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The record already says this: publish nothing.
    Unchanged,
    /// A new fleet deployment (revision 1).
    Created(Box<FleetDeployment>),
    /// A new revision (the spec or the pod changed), or the same revision
    /// with a new selector, priority or policy.
    Configured(Box<FleetDeployment>),
}

/// Whether a policy needs a rollout controller to reach any device: with
/// no batches and no disruption budget every matching device gets a new
/// revision at once (the record's cohort is "everyone" from the start).
pub fn is_staged(policy: &RolloutPolicy) -> bool {
    !policy.batches.is_empty() || policy.max_unavailable != Limit::Count(0)
}

/// The record for `definition`, given the retained one (`previous`, whose
/// uid `uid` must be when there is one). A changed spec or pod name is a
/// new revision (`rollout::start`: the stable revision is the last
/// completed one); a changed selector, priority or policy alone updates
/// the record in place; nothing changed is [`Applied::Unchanged`].
pub fn define(
    definition: Definition,
    uid: &str,
    previous: Option<&FleetDeployment>,
    now_ms: u64,
) -> Applied {
    let Definition {
        namespace,
        name,
        selector,
        priority,
        pod_name,
        spec_digest,
        policy,
    } = definition;
    if let Some(p) = previous
        && p.spec_digest == spec_digest
        && p.pod_name == pod_name
    {
        if p.selector == selector && p.priority == priority && p.rollout.policy == policy {
            return Applied::Unchanged;
        }
        let mut next = p.clone();
        next.selector = selector;
        next.priority = priority;
        next.rollout.policy = policy;
        return Applied::Configured(Box::new(next));
    }
    let fresh = FleetDeployment {
        namespace,
        name,
        uid: uid.to_string(),
        selector,
        priority,
        pod_name,
        revision: 1,
        spec_digest,
        cohorts: Vec::new(),
        stable: None,
        rollout: Rollout {
            policy,
            state: RolloutState::default(),
        },
    };
    let mut next = rollout::start(fresh, previous, now_ms);
    if !is_staged(&next.rollout.policy) {
        next.cohorts = vec![Cohort::everyone()];
    }
    match previous {
        None => Applied::Created(Box::new(next)),
        Some(_) => Applied::Configured(Box::new(next)),
    }
}

/// Why a rollout command cannot be carried out.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ManageError {
    #[error("fleet \"{0}\" is already paused")]
    AlreadyPaused(String),
    #[error("fleet \"{name}\" has no rollout in progress (phase {phase})")]
    NotInProgress { name: String, phase: &'static str },
    #[error("fleet \"{name}\" is not paused or halted (phase {phase})")]
    NotPaused { name: String, phase: &'static str },
    #[error("fleet \"{0}\" has no earlier revision to roll back to")]
    NoStableRevision(String),
}

/// `kedge rollout pause`: no step moves the rollout until it is resumed.
pub fn pause(f: &FleetDeployment) -> Result<FleetDeployment, ManageError> {
    match f.rollout.state.phase {
        RolloutPhase::Progressing => {}
        RolloutPhase::Paused => return Err(ManageError::AlreadyPaused(f.name.clone())),
        other => {
            return Err(ManageError::NotInProgress {
                name: f.name.clone(),
                phase: other.as_str(),
            });
        }
    }
    let mut next = f.clone();
    next.rollout.state.phase = RolloutPhase::Paused;
    next.rollout.state.message = format!(
        "paused at batch {} of {}",
        u32::from(f.rollout.state.batch) + 1,
        f.rollout.policy.batches.len().max(1)
    );
    Ok(next)
}

/// `kedge rollout resume`: a paused or halted rollout goes on from its
/// batch; device timeouts count again from now.
pub fn resume(f: &FleetDeployment, now_ms: u64) -> Result<FleetDeployment, ManageError> {
    match f.rollout.state.phase {
        RolloutPhase::Paused | RolloutPhase::Halted => {}
        other => {
            return Err(ManageError::NotPaused {
                name: f.name.clone(),
                phase: other.as_str(),
            });
        }
    }
    let mut next = f.clone();
    next.rollout.state.phase = RolloutPhase::Progressing;
    next.rollout.state.batch_started_ms = now_ms;
    next.rollout.state.message = format!(
        "resumed at batch {} of {}",
        u32::from(f.rollout.state.batch) + 1,
        f.rollout.policy.batches.len().max(1)
    );
    Ok(next)
}

/// `kedge rollout undo`: the stable revision's spec as a new revision, to
/// every device at once (as `rollout::step`'s rollback), followed to
/// completion like any revision.
pub fn undo(f: &FleetDeployment, now_ms: u64) -> Result<FleetDeployment, ManageError> {
    let Some(stable) = f.stable.clone() else {
        return Err(ManageError::NoStableRevision(f.name.clone()));
    };
    let mut next = f.clone();
    next.revision = f.revision + 1;
    next.spec_digest = stable.spec_digest.clone();
    next.cohorts = vec![Cohort::everyone()];
    next.rollout.state = RolloutState {
        phase: RolloutPhase::Progressing,
        batch: 0,
        started_ms: now_ms,
        batch_started_ms: now_ms,
        message: format!(
            "rolled back to the spec of revision {} as revision {} (kedge rollout undo)",
            stable.revision, next.revision
        ),
    };
    // Every device runs it at once: no batch is left to admit.
    next.rollout.state.batch = next.rollout.policy.batches.len().saturating_sub(1) as u16;
    Ok(next)
}

/// The spec digests a record needs retained: its target's and its stable
/// revision's.
pub fn spec_digests(f: &FleetDeployment) -> BTreeSet<String> {
    let mut out = BTreeSet::from([f.spec_digest.clone()]);
    out.extend(f.stable.iter().map(|s| s.spec_digest.clone()));
    out
}

/// Spec digests `previous` needed and `next` no longer does: their
/// retained specs can be removed once `next` is published.
pub fn unreferenced_specs(previous: &FleetDeployment, next: &FleetDeployment) -> Vec<String> {
    let keep = spec_digests(next);
    spec_digests(previous)
        .into_iter()
        .filter(|d| !keep.contains(d))
        .collect()
}

// ---------------------------------------------------------------------------
// The text forms of a policy (flags, annotations)

/// Splits at commas outside parentheses (`tier in (a,b)` is one part).
fn split_top_level(input: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in input.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth <= 0 => {
                parts.push(&input[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&input[start..]);
    parts
}

/// Parses batches: `[SELECTOR:]LIMIT` items separated by commas, in order,
/// e.g. `canary=true:100%,25%,100%`. A selector may hold commas of its own
/// (`canary=true,zone=a:100%`): parts up to the one carrying the limit
/// belong to it. A limit is a count (`10`) or a percentage (`25%`).
pub fn parse_batches(input: &str) -> Result<Vec<Batch>, String> {
    let mut batches = Vec::new();
    let mut selector_parts: Vec<&str> = Vec::new();
    if input.trim().is_empty() {
        return Ok(batches);
    }
    for part in split_top_level(input).into_iter().map(str::trim) {
        if part.is_empty() {
            return Err("an empty batch: batches are [SELECTOR:]LIMIT separated by ','".into());
        }
        let (tail, limit_text) = match part.rsplit_once(':') {
            Some((s, l)) => (Some(s.trim()), l.trim()),
            None => (None, part),
        };
        let limit = match (limit_text.parse::<Limit>(), tail) {
            (Ok(l), _) => l,
            // A selector part; its limit comes later.
            (Err(_), None) => {
                selector_parts.push(part);
                continue;
            }
            (Err(e), Some(_)) => return Err(format!("batch {}: {e}", batches.len() + 1)),
        };
        if limit == Limit::Count(0) {
            return Err(format!(
                "batch {}: a batch has at least 1 device",
                batches.len() + 1
            ));
        }
        selector_parts.extend(tail);
        let selector = selector_parts.join(",");
        selector_parts.clear();
        Selector::parse("selector", &selector)
            .map_err(|e| format!("batch {}: {}", batches.len() + 1, e.detail))?;
        batches.push(Batch { selector, limit });
    }
    if !selector_parts.is_empty() {
        return Err(format!(
            "{:?} has no limit: a batch is [SELECTOR:]LIMIT, e.g. canary=true:100%",
            selector_parts.join(",")
        ));
    }
    if batches.len() > crate::model::validate::MAX_BATCHES {
        return Err(format!(
            "{} batches: at most {}",
            batches.len(),
            crate::model::validate::MAX_BATCHES
        ));
    }
    Ok(batches)
}

/// The text form [`parse_batches`] reads.
pub fn format_batches(batches: &[Batch]) -> String {
    batches
        .iter()
        .map(|b| {
            if b.selector.is_empty() {
                b.limit.to_string()
            } else {
                format!("{}:{}", b.selector, b.limit)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A percentage of 1 to 100, with or without `%` (`90`, `90%`).
pub fn parse_percent(input: &str) -> Result<u8, String> {
    let s = input.trim();
    match s.strip_suffix('%').unwrap_or(s).parse::<u8>() {
        Ok(p @ 1..=100) => Ok(p),
        _ => Err(format!("{s:?}: a percentage is 1 to 100")),
    }
}

/// A duration in whole seconds: `90s`, `10m`, `1h 30m`, or plain seconds.
pub fn parse_duration_secs(input: &str) -> Result<u32, String> {
    let s = input.trim();
    let secs = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?}: {e} (e.g. 90s, 10m, 1h)"))?
            .as_secs(),
    };
    if secs == 0 || secs > MAX_SECONDS {
        return Err(format!("{s:?}: between 1s and {}d", MAX_SECONDS / 86_400));
    }
    Ok(secs as u32)
}

/// A duration in kubectl's short form: `90s`, `10m`, `2h`, `1h30m`.
pub fn format_duration_secs(secs: u32) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Revision;

    fn digest(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn definition(d: char) -> Definition {
        Definition {
            namespace: "default".into(),
            name: "sensors".into(),
            selector: "building=b43".into(),
            priority: 5,
            pod_name: "sensor".into(),
            spec_digest: digest(d),
            policy: RolloutPolicy::default(),
        }
    }

    fn record(applied: Applied) -> FleetDeployment {
        match applied {
            Applied::Created(f) | Applied::Configured(f) => *f,
            Applied::Unchanged => panic!("expected a record"),
        }
    }

    #[test]
    fn a_new_fleet_is_revision_one_and_unstaged_goes_to_everyone() {
        let f = record(define(definition('a'), "u1", None, 10));
        assert_eq!((f.revision, f.uid.as_str()), (1, "u1"));
        assert_eq!(f.cohorts, vec![Cohort::everyone()]);
        assert_eq!(f.stable, None);
        assert_eq!(f.rollout.state.phase, RolloutPhase::Progressing);
        assert_eq!(f.rollout.state.started_ms, 10);
        // Staged: no device gets it before a controller admits a batch.
        let mut d = definition('a');
        d.policy.batches = parse_batches("canary=true:100%,100%").expect("parses");
        assert!(record(define(d, "u1", None, 10)).cohorts.is_empty());
    }

    #[test]
    fn the_same_definition_is_unchanged_and_a_new_spec_is_a_new_revision() {
        let mut first = record(define(definition('a'), "u1", None, 10));
        assert_eq!(
            define(definition('a'), "u1", Some(&first), 20),
            Applied::Unchanged
        );
        // Not complete yet: the stable revision stays none.
        let second = record(define(definition('b'), "u1", Some(&first), 20));
        assert_eq!((second.revision, second.stable.clone()), (2, None));
        // Completed: it becomes the stable revision of the next.
        first.rollout.state.phase = RolloutPhase::Complete;
        let second = record(define(definition('b'), "u1", Some(&first), 20));
        assert_eq!(
            second.stable,
            Some(Revision {
                revision: 1,
                spec_digest: digest('a')
            })
        );
        assert_eq!(unreferenced_specs(&first, &second), Vec::<String>::new());
        let third = record(define(definition('c'), "u1", Some(&second), 30));
        assert_eq!(third.revision, 3);
        assert_eq!(unreferenced_specs(&second, &third), vec![digest('b')]);
    }

    #[test]
    fn a_new_selector_or_priority_keeps_the_revision_and_its_progress() {
        let mut d = definition('a');
        d.policy.batches = parse_batches("50%,100%").expect("parses");
        let mut first = record(define(d.clone(), "u1", None, 10));
        first.cohorts = vec![Cohort {
            selector: String::new(),
            per_10k: 5_000,
        }];
        d.priority = 50;
        d.selector = "building in (b43,b44)".into();
        let next = record(define(d, "u1", Some(&first), 20));
        assert_eq!(next.revision, 1);
        assert_eq!(next.cohorts, first.cohorts);
        assert_eq!(next.priority, 50);
        assert_eq!(next.selector, "building in (b43,b44)");
    }

    #[test]
    fn pause_resume_and_undo() {
        let mut f = record(define(definition('a'), "u1", None, 10));
        let paused = pause(&f).expect("pauses");
        assert_eq!(paused.rollout.state.phase, RolloutPhase::Paused);
        assert_eq!(
            pause(&paused),
            Err(ManageError::AlreadyPaused("sensors".into()))
        );
        let resumed = resume(&paused, 99).expect("resumes");
        assert_eq!(resumed.rollout.state.phase, RolloutPhase::Progressing);
        assert_eq!(resumed.rollout.state.batch_started_ms, 99);
        assert!(matches!(
            resume(&resumed, 100),
            Err(ManageError::NotPaused { .. })
        ));
        assert_eq!(
            undo(&f, 100),
            Err(ManageError::NoStableRevision("sensors".into()))
        );
        f.rollout.state.phase = RolloutPhase::Complete;
        let second = record(define(definition('b'), "u1", Some(&f), 20));
        let undone = undo(&second, 30).expect("undoes");
        assert_eq!(undone.revision, 3);
        assert_eq!(undone.spec_digest, digest('a'));
        assert_eq!(undone.cohorts, vec![Cohort::everyone()]);
        assert_eq!(undone.rollout.state.phase, RolloutPhase::Progressing);
        assert_eq!(unreferenced_specs(&second, &undone), vec![digest('b')]);
        assert!(matches!(
            pause(&record(Applied::Created(Box::new({
                let mut c = undone.clone();
                c.rollout.state.phase = RolloutPhase::Complete;
                c
            })))),
            Err(ManageError::NotInProgress { .. })
        ));
    }

    #[test]
    fn batches_parse_with_selectors_that_hold_commas() {
        let b = parse_batches("canary=true:100%,25%,100%").expect("parses");
        assert_eq!(
            b,
            vec![
                Batch {
                    selector: "canary=true".into(),
                    limit: Limit::Percent(100)
                },
                Batch {
                    selector: String::new(),
                    limit: Limit::Percent(25)
                },
                Batch {
                    selector: String::new(),
                    limit: Limit::Percent(100)
                },
            ]
        );
        assert_eq!(format_batches(&b), "canary=true:100%,25%,100%");
        let b = parse_batches("canary=true, zone in (a,b):5, 100%").expect("parses");
        assert_eq!(b[0].selector, "canary=true,zone in (a,b)");
        assert_eq!(b[0].limit, Limit::Count(5));
        assert_eq!(parse_batches(&format_batches(&b)).expect("parses"), b);
        assert_eq!(parse_batches(" ").expect("parses"), vec![]);
    }

    #[test]
    fn bad_batches_say_what_is_wrong() {
        let err = |s: &str| parse_batches(s).expect_err(s);
        assert!(
            err("canary=true").contains("has no limit"),
            "{}",
            err("canary=true")
        );
        assert!(err("25%,,100%").contains("empty batch"));
        assert!(err("canary=true:150%").contains("1% to 100%"));
        assert!(err("10%,0").contains("at least 1 device"));
        assert!(err("canary=tr ue:10%").starts_with("batch 1:"));
        assert!(err("a=b:x").contains("expected a count"));
    }

    #[test]
    fn percentages_and_durations() {
        assert_eq!(parse_percent("90"), Ok(90));
        assert_eq!(parse_percent("90%"), Ok(90));
        assert!(parse_percent("0").is_err());
        assert!(parse_percent("101%").is_err());
        assert_eq!(parse_duration_secs("10m"), Ok(600));
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("1h 30m"), Ok(5_400));
        assert!(parse_duration_secs("0s").is_err());
        assert!(parse_duration_secs("soon").is_err());
        assert_eq!(format_duration_secs(600), "10m");
        assert_eq!(format_duration_secs(5_430), "1h30m30s");
        assert_eq!(format_duration_secs(45), "45s");
        assert_eq!(
            "10%".parse::<Limit>().map(|l| l.to_string()),
            Ok("10%".into())
        );
    }
}
