//! How many events one pod may publish: the kubelet's spam filter
//! (client-go's `EventSourceObjectSpamFilter`), a token bucket per pod, so a
//! crash-looping container or a pod with a thousand containers cannot flood
//! the outbox, the link and the apiserver. Pure: time is an argument.
//!
//! Node events (no pod) are not limited here: the agent emits few of them,
//! each from a rare cause.

use std::collections::HashMap;
use std::time::Duration;

use crate::model::PodKey;

/// Events a pod may publish at once (client-go's default burst).
pub const BURST: u32 = 25;
/// One more event allowed per this much time (client-go's default rate:
/// 1/300 per second).
pub const REFILL: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    /// When the last token was added (or the bucket made): monotonic time.
    since: Duration,
    /// Events refused since the last one allowed.
    dropped: u64,
}

/// What [`EventBudget::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Publish it; `dropped` events of this pod were refused before it.
    Yes { dropped: u64 },
    /// Over the pod's budget: count it, publish nothing.
    No,
}

/// The per-pod budgets. One small entry per pod that emitted an event.
#[derive(Debug, Default)]
pub struct EventBudget {
    pods: HashMap<PodKey, Bucket>,
}

impl EventBudget {
    /// Whether an event about `pod` may go out at `now` (a monotonic
    /// clock's reading; only differences matter).
    pub fn admit(&mut self, pod: &PodKey, now: Duration) -> Admit {
        let b = self.pods.entry(pod.clone()).or_insert(Bucket {
            tokens: BURST,
            since: now,
            dropped: 0,
        });
        let elapsed = now.saturating_sub(b.since);
        let earned = (elapsed.as_secs() / REFILL.as_secs()).min(u64::from(BURST)) as u32;
        if earned > 0 {
            b.tokens = (b.tokens + earned).min(BURST);
            b.since = if b.tokens == BURST {
                now
            } else {
                b.since + REFILL * earned
            };
        }
        if b.tokens == 0 {
            b.dropped += 1;
            return Admit::No;
        }
        b.tokens -= 1;
        Admit::Yes {
            dropped: std::mem::take(&mut b.dropped),
        }
    }

    /// The pod is gone: its budget with it.
    pub fn forget(&mut self, pod: &PodKey) {
        self.pods.remove(pod);
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: &str) -> PodKey {
        PodKey::new("default", n)
    }

    #[test]
    fn a_burst_then_one_per_refill_period() {
        let mut b = EventBudget::default();
        let t0 = Duration::from_secs(1000);
        for i in 0..BURST {
            assert_eq!(
                b.admit(&key("a"), t0),
                Admit::Yes { dropped: 0 },
                "event {i}"
            );
        }
        assert_eq!(b.admit(&key("a"), t0), Admit::No);
        assert_eq!(
            b.admit(&key("a"), t0 + REFILL - Duration::from_secs(1)),
            Admit::No
        );
        // One token back after a refill period; the refused ones are counted.
        assert_eq!(b.admit(&key("a"), t0 + REFILL), Admit::Yes { dropped: 2 });
        assert_eq!(b.admit(&key("a"), t0 + REFILL), Admit::No);
        // Other pods have their own budget.
        assert_eq!(b.admit(&key("b"), t0), Admit::Yes { dropped: 0 });
    }

    #[test]
    fn refills_to_the_burst_and_no_further() {
        let mut b = EventBudget::default();
        let t0 = Duration::ZERO;
        for _ in 0..BURST {
            b.admit(&key("a"), t0);
        }
        let later = t0 + REFILL * (BURST * 10);
        let allowed = (0..BURST * 2)
            .filter(|_| matches!(b.admit(&key("a"), later), Admit::Yes { .. }))
            .count();
        assert_eq!(allowed, BURST as usize);
    }

    #[test]
    fn partial_refill_keeps_the_remainder() {
        let mut b = EventBudget::default();
        let t0 = Duration::ZERO;
        for _ in 0..BURST {
            b.admit(&key("a"), t0);
        }
        // 1.5 periods: one token, and the half period counts toward the next.
        let t1 = t0 + REFILL + REFILL / 2;
        assert!(matches!(b.admit(&key("a"), t1), Admit::Yes { .. }));
        assert_eq!(b.admit(&key("a"), t1), Admit::No);
        assert!(matches!(
            b.admit(&key("a"), t0 + REFILL * 2),
            Admit::Yes { .. }
        ));
    }

    #[test]
    fn forget_resets_a_pod() {
        let mut b = EventBudget::default();
        for _ in 0..BURST {
            b.admit(&key("a"), Duration::ZERO);
        }
        b.forget(&key("a"));
        assert!(b.is_empty());
        assert!(matches!(
            b.admit(&key("a"), Duration::ZERO),
            Admit::Yes { .. }
        ));
    }
}
