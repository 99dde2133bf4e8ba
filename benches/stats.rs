//! Percentiles for the benches' tables (included with `#[path]`; not a
//! bench of its own): nearest rank, and only the percentiles the sample
//! count can carry. A p99 needs at least 100 samples (one above it), a p95
//! 20, a p90 10; a table shows "—" for the others, and every table says how
//! many samples each percentile came from.

use std::time::Duration;

/// Sorted samples.
pub struct Summary {
    sorted: Vec<Duration>,
}

impl Summary {
    pub fn new(samples: impl IntoIterator<Item = Duration>) -> Summary {
        let mut sorted: Vec<Duration> = samples.into_iter().collect();
        sorted.sort();
        Summary { sorted }
    }

    /// How many samples.
    pub fn n(&self) -> usize {
        self.sorted.len()
    }

    /// Whether `n` samples carry percentile `q` (0–100): at least one
    /// sample lies above it.
    pub fn carries(n: usize, q: f64) -> bool {
        q <= 50.0 || n as f64 * (100.0 - q) / 100.0 >= 1.0 - 1e-9
    }

    /// The fewest samples that carry percentile `q`.
    pub fn needed(q: f64) -> usize {
        (1..=1_000_000)
            .find(|&n| Self::carries(n, q))
            .unwrap_or(usize::MAX)
    }

    /// Nearest-rank percentile `q` (0–100), or `None` when there are too
    /// few samples to carry it (or none at all).
    pub fn get(&self, q: f64) -> Option<Duration> {
        if self.sorted.is_empty() || !Self::carries(self.n(), q) {
            return None;
        }
        let rank = ((q / 100.0) * self.n() as f64).ceil() as usize;
        Some(self.sorted[rank.clamp(1, self.n()) - 1])
    }

    pub fn max(&self) -> Option<Duration> {
        self.sorted.last().copied()
    }

    /// The highest of p99, p95, p90 the samples carry.
    pub fn tail(&self) -> Option<(f64, Duration)> {
        [99.0, 95.0, 90.0]
            .into_iter()
            .find_map(|q| self.get(q).map(|d| (q, d)))
    }

    /// `get(q)` in milliseconds with `decimals`, or "—".
    pub fn ms(&self, q: f64, decimals: usize) -> String {
        self.get(q).map_or_else(
            || "—".to_string(),
            |d| format!("{:.decimals$} ms", d.as_secs_f64() * 1000.0),
        )
    }

    /// `get(q)` in seconds with `decimals`, or "—".
    pub fn secs(&self, q: f64, decimals: usize) -> String {
        self.get(q).map_or_else(
            || "—".to_string(),
            |d| format!("{:.decimals$} s", d.as_secs_f64()),
        )
    }
}
