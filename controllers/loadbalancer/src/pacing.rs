//! Pacing of the speaker's election rounds: a bounded share of a core, whatever the cluster's size.
//!
//! A full round of the speaker recomputes its whole desired set ([`crate::speaker`]) and costs time
//! proportional to the Services, EndpointSlices and ServiceL2Statuses it reads (an incremental round, in
//! proportion to what changed: see [`Schedule`]). Input changes are
//! coalesced (one wake-up stands for every change since the last round), but during a burst of changes
//! (10,000 Services created, each written three times by the allocator and the API server) a speaker
//! that starts the next round as soon as the last one ends is busy all the time: at 10,000 Services three
//! speakers on a 2-core machine took the CPU the API server and the allocator needed, and the whole
//! burst slowed down with the size of the cluster (work per change grows with the cluster, and so does the
//! number of changes).
//!
//! ```text
//!   round (took d) ──> wait until d·idle_per_busy has passed (at most max_gap) ──> next round
//!                      ^ a change of the gossip view (a peer died or came back) ends the wait at once
//! ```
//!
//! So a speaker uses at most `1 / (1 + idle_per_busy)` of a core for its rounds, while a small cluster,
//! whose rounds take well under a millisecond, still reacts within a few milliseconds (the gap is as
//! short as the round). Changes that arrive during the wait are folded into the next round. Failover does
//! not wait: a change of the live members ends the gap (the caller selects on it).
//!
//! # Full and incremental rounds ([`Schedule`])
//! Most rounds are incremental: they recompute only the groups whose Services, EndpointSlices or
//! ServiceL2Statuses changed, so they cost in proportion to the change, not to the cluster. A full round
//! (every group: a Node, pool or advertisement changed, a watch relisted, the startup grace) costs in
//! proportion to the cluster. Each kind is paced by its own cost: a full round of d delays the next
//! *full* round by `gap(d)`, an incremental round of d the next round of either kind by `gap(d)`. So a
//! Service that gets its first address right after a full round at 10,000 Services is announced after
//! the (short) incremental gap, not after the full round's (up to 1 s): pacing bounds repeated rounds,
//! never a first announcement. Each kind uses at most `1 / (1 + idle_per_busy)` of a core.

use std::time::Duration;
use tokio::time::Instant;

/// How long the speaker waits after a round before starting the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacer {
    /// Idle time per unit of round time: the rounds use at most `1 / (1 + idle_per_busy)` of a core.
    pub idle_per_busy: u32,
    /// The gap never exceeds this (a very slow round must not delay the next one without bound).
    pub max_gap: Duration,
}

/// The speaker's pacing: rounds use at most 1/10 of a core; the gap is at most 1 s (the safety-net
/// tick of the speaker's loop).
pub const SPEAKER: Pacer = Pacer {
    idle_per_busy: 9,
    max_gap: Duration::from_secs(1),
};

/// Environment variable overriding [`SPEAKER`]'s `idle_per_busy` (an integer, 0 = no pacing): for
/// measuring (the benchmark compares both) and for a cluster that wants a different share.
pub const IDLE_PER_BUSY_ENV: &str = "FERRITE_LB_SPEAKER_IDLE_PER_BUSY";

/// The speaker's pacing: [`SPEAKER`], with `idle_per_busy` from `value` (the environment variable
/// [`IDLE_PER_BUSY_ENV`]) when set.
pub fn speaker(value: Option<&str>) -> Result<Pacer, String> {
    let Some(v) = value else { return Ok(SPEAKER) };
    let idle_per_busy = v
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|n| *n <= 1000)
        .ok_or_else(|| format!("{IDLE_PER_BUSY_ENV}={v:?}: want an integer from 0 (no pacing) to 1000"))?;
    Ok(Pacer {
        idle_per_busy,
        ..SPEAKER
    })
}

impl Pacer {
    /// The wait after a round that took `took` before the next round may start.
    pub fn gap(&self, took: Duration) -> Duration {
        took.saturating_mul(self.idle_per_busy).min(self.max_gap)
    }

    /// The largest share of a core the rounds can use while changes keep coming (rounds shorter than
    /// `max_gap / idle_per_busy`).
    pub fn max_share(&self) -> f64 {
        1.0 / (1.0 + f64::from(self.idle_per_busy))
    }
}

/// When the next round may start, after full and incremental rounds (module docs).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pacer: Pacer,
    /// The next full round starts no earlier.
    full_at: Instant,
    /// The next round of either kind starts no earlier.
    any_at: Instant,
}

impl Schedule {
    /// Nothing ran yet: the first round may start at once.
    pub fn new(pacer: Pacer, now: Instant) -> Self {
        Self {
            pacer,
            full_at: now,
            any_at: now,
        }
    }

    /// A round (`full` or incremental) that took `took` ended at `end`.
    pub fn finished(&mut self, full: bool, end: Instant, took: Duration) {
        let at = end + self.pacer.gap(took);
        if full {
            // Only the next full round waits for a full round; an incremental one may follow at once.
            self.full_at = at;
            self.any_at = end;
        } else {
            self.any_at = at;
        }
    }

    /// The earliest start of the next round, which is a full one if `full`.
    pub fn next(&self, full: bool) -> Instant {
        if full {
            self.full_at.max(self.any_at)
        } else {
            self.any_at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_gap_is_proportional_to_the_round_and_capped() {
        let p = SPEAKER;
        assert_eq!(p.gap(Duration::ZERO), Duration::ZERO);
        assert_eq!(p.gap(Duration::from_micros(300)), Duration::from_micros(2700));
        assert_eq!(p.gap(20 * MS), 180 * MS);
        assert_eq!(p.gap(200 * MS), Duration::from_secs(1));
        assert_eq!(p.gap(Duration::MAX), Duration::from_secs(1));
        let none = Pacer {
            idle_per_busy: 0,
            max_gap: Duration::from_secs(1),
        };
        assert_eq!(none.gap(50 * MS), Duration::ZERO);
    }

    /// A burst of changes that never stops: rounds back to back as soon as the gap allows. The busy
    /// share stays at the bound whatever the round costs (small or large cluster), and a small cluster's
    /// rounds still start every few milliseconds.
    #[test]
    fn a_continuous_burst_uses_a_bounded_share_of_a_core() {
        let p = SPEAKER;
        for round in [Duration::from_micros(200), 2 * MS, 20 * MS, 100 * MS] {
            let (mut busy, mut t) = (Duration::ZERO, Duration::ZERO);
            let mut rounds = 0u32;
            while t < Duration::from_secs(60) {
                busy += round;
                t += round + p.gap(round);
                rounds += 1;
            }
            let share = busy.as_secs_f64() / t.as_secs_f64();
            assert!(
                (share - p.max_share()).abs() < 0.01,
                "round {round:?}: share {share}"
            );
            assert!(rounds > 0);
            if round < MS {
                // Round + gap: a change waits at most this long before a round sees it.
                assert!(round + p.gap(round) <= 2 * MS + round);
            }
        }
        assert!((p.max_share() - 0.1).abs() < 1e-9);
    }

    #[test]
    fn the_share_can_be_set_from_the_environment() {
        assert_eq!(speaker(None), Ok(SPEAKER));
        assert_eq!(speaker(Some("0")).unwrap().gap(50 * MS), Duration::ZERO);
        assert_eq!(speaker(Some(" 4 ")).unwrap().gap(10 * MS), 40 * MS);
        for bad in ["", "-1", "x", "1.5", "1001"] {
            let e = speaker(Some(bad)).unwrap_err();
            assert!(e.contains(IDLE_PER_BUSY_ENV), "{e}");
        }
    }

    /// Rounds slower than max_gap / idle_per_busy are only delayed by max_gap.
    #[test]
    fn a_slow_round_is_delayed_at_most_max_gap() {
        let p = SPEAKER;
        assert_eq!(p.gap(Duration::from_secs(3)), p.max_gap);
        assert_eq!(p.gap(111 * MS), 999 * MS);
        assert_eq!(p.gap(112 * MS), p.max_gap);
    }

    /// A Service allocated right after a slow full round is elected at once (an incremental round),
    /// while another full round still waits for the full round's gap.
    #[test]
    fn a_first_announcement_does_not_wait_for_a_full_rounds_gap() {
        let t0 = Instant::now();
        let mut s = Schedule::new(SPEAKER, t0);
        assert_eq!(s.next(true), t0, "the first round at once");
        // A full round at 10,000 Services: 80 ms, so the next full round waits 720 ms.
        let end = t0 + 80 * MS;
        s.finished(true, end, 80 * MS);
        assert_eq!(s.next(true), end + 720 * MS);
        assert_eq!(s.next(false), end, "a new address goes out without waiting");
        // The incremental round (one Service) takes 100 us: the next one waits 900 us, and a full round
        // still waits for its own gap.
        let end2 = end + Duration::from_micros(100);
        s.finished(false, end2, Duration::from_micros(100));
        assert_eq!(s.next(false), end2 + Duration::from_micros(900));
        assert_eq!(s.next(true), end + 720 * MS);
        // A slow incremental round (a burst) delays everything behind it.
        let end3 = end + 800 * MS;
        s.finished(false, end3, 50 * MS);
        assert_eq!(s.next(true), end3 + 450 * MS);
        assert_eq!(s.next(false), end3 + 450 * MS);
    }
}
