//! A Wasm instance's CPU limit as a CFS quota (`limits.cpu`, the kubelet's
//! `cpu.cfs_quota_us` over a 100 ms `cpu.cfs_period_us`): in each period an
//! instance may be polled for `period × millicores / 1000`; once it has
//! used that, it is not polled again until the period in which its use is
//! paid for begins (a poll that ran past the quota is carried into the
//! next periods, so the average holds however long one poll ran).
//!
//! Pure: time is an argument (the monotonic time since the instance
//! started), the caller (`runtime::wasm`'s `Metered`) measures each poll
//! and waits.

use std::time::Duration;

/// The kubelet's CFS period (`cpu.cfs_period_us`, 100 ms).
pub const PERIOD: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
pub struct CpuQuota {
    /// What the instance may use per period.
    quota: Duration,
    /// When the current period began.
    period_start: Duration,
    /// What it used since the current period began, with what earlier
    /// periods could not pay for.
    used: Duration,
}

impl CpuQuota {
    /// The quota of `limits.cpu` in millicores; None without a limit, or
    /// with a limit of a core or more (an instance runs on one thread at a
    /// time: it can never use more).
    pub fn of_millis(millis: Option<u64>) -> Option<CpuQuota> {
        let millis = millis.filter(|m| *m > 0)?;
        if millis >= 1000 {
            return None;
        }
        let quota = PERIOD.saturating_mul(u32::try_from(millis).ok()?) / 1000;
        Some(CpuQuota {
            quota: quota.max(Duration::from_micros(1)),
            period_start: Duration::ZERO,
            used: Duration::ZERO,
        })
    }

    /// Charges a poll that ran `spent` and ended at `now`; returns when the
    /// instance may be polled again, or None when it is still within its
    /// quota.
    pub fn charge(&mut self, now: Duration, spent: Duration) -> Option<Duration> {
        self.roll(now);
        self.used = self.used.saturating_add(spent);
        if self.used < self.quota {
            return None;
        }
        // Throttled until the period whose share pays for what was used.
        let periods = self.used.as_nanos() / self.quota.as_nanos();
        let periods = u32::try_from(periods).unwrap_or(u32::MAX);
        Some(
            self.period_start
                .saturating_add(PERIOD.saturating_mul(periods)),
        )
    }

    /// Moves to the period `now` falls in; each period that began pays one
    /// quota of what was used.
    fn roll(&mut self, now: Duration) {
        if now < self.period_start.saturating_add(PERIOD) {
            return;
        }
        let elapsed = now.saturating_sub(self.period_start);
        let periods = elapsed.as_nanos() / PERIOD.as_nanos();
        let periods = u32::try_from(periods).unwrap_or(u32::MAX);
        self.period_start = self
            .period_start
            .saturating_add(PERIOD.saturating_mul(periods));
        self.used = self.used.saturating_sub(self.quota.saturating_mul(periods));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn no_limit_or_a_core_and_more_throttles_nothing() {
        assert!(CpuQuota::of_millis(None).is_none());
        assert!(CpuQuota::of_millis(Some(0)).is_none());
        assert!(CpuQuota::of_millis(Some(1000)).is_none());
        assert!(CpuQuota::of_millis(Some(2500)).is_none());
        assert!(CpuQuota::of_millis(Some(999)).is_some());
    }

    #[test]
    fn an_instance_over_its_quota_waits_for_the_next_period() {
        // 200m: 20 ms per 100 ms period.
        let mut q = CpuQuota::of_millis(Some(200)).expect("limited");
        assert_eq!(q.charge(10 * MS, 10 * MS), None);
        assert_eq!(q.charge(25 * MS, 9 * MS), None);
        assert_eq!(q.charge(30 * MS, MS), Some(100 * MS), "20 ms used");
        // The next period pays again.
        assert_eq!(q.charge(110 * MS, 10 * MS), None);
        assert_eq!(q.charge(125 * MS, 10 * MS), Some(200 * MS));
    }

    #[test]
    fn a_long_poll_is_carried_into_the_following_periods() {
        let mut q = CpuQuota::of_millis(Some(200)).expect("limited");
        // 50 ms in one poll: two and a half periods' worth.
        assert_eq!(q.charge(50 * MS, 50 * MS), Some(200 * MS));
        // At 200 ms two periods paid 40 ms: 10 ms is still owed, and 10 ms
        // more fills the period again.
        assert_eq!(q.charge(205 * MS, 5 * MS), None);
        assert_eq!(q.charge(210 * MS, 5 * MS), Some(300 * MS));
    }

    #[test]
    fn over_many_periods_the_use_averages_the_limit() {
        // A guest that always wants to run, polled 5 ms at a time, as long
        // as the quota lets it: over 10 s it gets 2 s (200m).
        let mut q = CpuQuota::of_millis(Some(200)).expect("limited");
        let (mut now, mut ran) = (Duration::ZERO, Duration::ZERO);
        while now < Duration::from_secs(10) {
            now += 5 * MS;
            ran += 5 * MS;
            if let Some(until) = q.charge(now, 5 * MS) {
                now = now.max(until);
            }
        }
        let share = ran.as_secs_f64() / now.as_secs_f64();
        assert!((0.19..=0.21).contains(&share), "share {share}");
    }

    #[test]
    fn an_idle_instance_does_not_bank_quota() {
        let mut q = CpuQuota::of_millis(Some(200)).expect("limited");
        // Idle for a second: the next period gives 20 ms, no more.
        assert_eq!(q.charge(1000 * MS + MS, 15 * MS), None);
        assert_eq!(q.charge(1000 * MS + 20 * MS, 5 * MS), Some(1100 * MS));
    }
}
