//! Repeats of one Event become one object with a count, as client-go's
//! event correlator makes them for the kubelet: a crash-looping container's
//! `BackOff` is one Event with `count: 12`, not twelve objects. Pure: the
//! writer asks what to write and reports what it wrote.
//!
//! Bounded like client-go's (an LRU of 4,096 series); a repeat more than
//! [`WINDOW_MS`] after the last one starts a new object.

use std::collections::HashMap;

use super::state::KubeEvent;
use crate::model::EventType;

/// Series remembered at most.
pub const MAX_SERIES: usize = 4096;
/// A repeat within this long of the previous one bumps its count.
pub const WINDOW_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    involved_kind: &'static str,
    involved_name: String,
    involved_uid: String,
    warning: bool,
    reason: String,
    message: String,
    host: String,
    field_path: Option<String>,
}

impl Key {
    fn of(ev: &KubeEvent) -> Key {
        Key {
            namespace: ev.namespace.clone(),
            involved_kind: ev.involved_kind,
            involved_name: ev.involved_name.clone(),
            involved_uid: ev.involved_uid.clone(),
            warning: ev.kind == EventType::Warning,
            reason: ev.reason.clone(),
            message: ev.message.clone(),
            host: ev.host.clone(),
            field_path: ev.field_path.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: u32,
    first_ms: u64,
    last_ms: u64,
}

/// What to write for one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// A new Event object with this name (count 1).
    Create { name: String },
    /// The existing object `name`: set `count` and `lastTimestamp`
    /// (its `firstTimestamp` is `first_ms`).
    Bump {
        name: String,
        count: u32,
        first_ms: u64,
    },
}

#[derive(Debug, Default)]
pub struct EventSeries {
    series: HashMap<Key, Series>,
}

impl EventSeries {
    /// What to write for `ev`; `fresh_name` names a new object.
    pub fn next(&mut self, ev: &KubeEvent, fresh_name: impl FnOnce() -> String) -> Write {
        let key = Key::of(ev);
        if let Some(s) = self.series.get_mut(&key)
            && ev.time_ms.saturating_sub(s.last_ms) <= WINDOW_MS
        {
            s.count = s.count.saturating_add(1);
            s.last_ms = s.last_ms.max(ev.time_ms);
            return Write::Bump {
                name: s.name.clone(),
                count: s.count,
                first_ms: s.first_ms,
            };
        }
        if self.series.len() >= MAX_SERIES && !self.series.contains_key(&key) {
            // Forget the series repeated least recently.
            if let Some(oldest) = self
                .series
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
            {
                self.series.remove(&oldest);
            }
        }
        let name = fresh_name();
        self.series.insert(
            key,
            Series {
                name: name.clone(),
                count: 1,
                first_ms: ev.time_ms,
                last_ms: ev.time_ms,
            },
        );
        Write::Create { name }
    }

    /// The object of `ev`'s series is gone (deleted by its TTL, or a bump
    /// raced its create): the next repeat starts a new one.
    pub fn lost(&mut self, ev: &KubeEvent) {
        self.series.remove(&Key::of(ev));
    }

    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(reason: &str, t: u64) -> KubeEvent {
        KubeEvent {
            namespace: "default".into(),
            involved_kind: "Pod",
            involved_name: "web".into(),
            involved_uid: "u1".into(),
            kind: EventType::Warning,
            reason: reason.into(),
            message: "Back-off restarting failed container app".into(),
            time_ms: t,
            host: "gw1".into(),
            field_path: Some("spec.containers{app}".into()),
        }
    }

    #[test]
    fn repeats_bump_one_object() {
        let mut s = EventSeries::default();
        let mut n = 0;
        let mut fresh = || {
            n += 1;
            format!("web.{n}")
        };
        assert_eq!(
            s.next(&ev("BackOff", 1_000), &mut fresh),
            Write::Create {
                name: "web.1".into()
            }
        );
        assert_eq!(
            s.next(&ev("BackOff", 2_000), &mut fresh),
            Write::Bump {
                name: "web.1".into(),
                count: 2,
                first_ms: 1_000
            }
        );
        // Another reason is another series.
        assert_eq!(
            s.next(&ev("Killing", 2_000), &mut fresh),
            Write::Create {
                name: "web.2".into()
            }
        );
        // Past the window: a new object.
        assert_eq!(
            s.next(&ev("BackOff", 2_000 + WINDOW_MS + 1), &mut fresh),
            Write::Create {
                name: "web.3".into()
            }
        );
    }

    #[test]
    fn lost_series_start_again() {
        let mut s = EventSeries::default();
        s.next(&ev("BackOff", 0), || "a".into());
        s.lost(&ev("BackOff", 0));
        assert_eq!(
            s.next(&ev("BackOff", 1), || "b".into()),
            Write::Create { name: "b".into() }
        );
    }

    #[test]
    fn bounded() {
        let mut s = EventSeries::default();
        for i in 0..(MAX_SERIES as u64 + 10) {
            let mut e = ev("BackOff", 1_000 + i);
            e.involved_name = format!("pod-{i}");
            s.next(&e, || format!("n{i}"));
        }
        assert_eq!(s.len(), MAX_SERIES);
        // The least recent went first; the newest are kept.
        let mut newest = ev("BackOff", 1_000 + MAX_SERIES as u64 + 10);
        newest.involved_name = format!("pod-{}", MAX_SERIES + 9);
        assert!(matches!(s.next(&newest, || "x".into()), Write::Bump { .. }));
    }
}
