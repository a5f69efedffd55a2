//! Per-object exponential backoff for failed reconciles.
//!
//! A failing object is retried after `base * 2^(failures-1)`, capped at `max`; a success forgets it. The
//! tracker is keyed by object so one broken object does not slow down the others.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

/// Exponential backoff policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub base: Duration,
    /// Upper bound of the delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before the next try after `failures` consecutive failures (1 = first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(31);
        self.base
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// Counts consecutive failures per key.
#[derive(Debug)]
pub struct BackoffTracker<K> {
    policy: Backoff,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> BackoffTracker<K> {
    /// A tracker with the given policy.
    pub fn new(policy: Backoff) -> Self {
        Self {
            policy,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn failed(&self, key: K) -> Duration {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        self.policy.delay(*n)
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Consecutive failures of `key` so far.
    pub fn failures(&self, key: &K) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_doubles_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(10),
        };
        let cases = [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 4),
            (4, 8),
            (5, 10),
            (40, 10),
            (u32::MAX, 10),
        ];
        for (failures, secs) in cases {
            assert_eq!(
                b.delay(failures),
                Duration::from_secs(secs),
                "failures={failures}"
            );
        }
    }

    #[test]
    fn tracker_is_per_object_and_resets_on_success() {
        let t = BackoffTracker::new(Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        });
        assert_eq!(t.failed("a"), Duration::from_secs(1));
        assert_eq!(t.failed("a"), Duration::from_secs(2));
        assert_eq!(t.failed("b"), Duration::from_secs(1), "b is not slowed down by a");
        assert_eq!(t.failed("a"), Duration::from_secs(4));
        t.succeeded(&"a");
        assert_eq!(t.failures(&"a"), 0);
        assert_eq!(t.failed("a"), Duration::from_secs(1));
    }
}
