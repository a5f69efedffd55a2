//! Gratuitous-announcement schedule (pure): which IPs are due a gratuitous ARP / unsolicited NA now.
//!
//! A takeover schedules [`GRATUITOUS_ROUNDS`] rounds [`GRATUITOUS_INTERVAL`] apart, the first at once.
//! A removed IP is dropped from the schedule by the worker (`retain`) before anything is sent, and the
//! worker re-checks the plan before each send as well.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use super::{GRATUITOUS_INTERVAL, GRATUITOUS_ROUNDS};

/// Pending gratuitous rounds per IP.
#[derive(Debug)]
pub(crate) struct Bursts<T: Ord + Copy> {
    pending: BTreeMap<T, (Instant, u8)>,
}

impl<T: Ord + Copy> Bursts<T> {
    pub(crate) fn new() -> Self {
        Bursts {
            pending: BTreeMap::new(),
        }
    }

    /// (Re)starts the burst for `ip`: first round due at `now`.
    pub(crate) fn start(&mut self, ip: T, now: Instant) {
        self.pending.insert(ip, (now, GRATUITOUS_ROUNDS));
    }

    /// Follows a plan change of one worker: IPs new in `current` (or every IP, when `restart_all`
    /// because the interface's MAC changed) start a burst; IPs no longer in `current` lose theirs.
    pub(crate) fn follow(
        &mut self,
        previous: &BTreeSet<T>,
        current: &BTreeSet<T>,
        restart_all: bool,
        now: Instant,
    ) {
        for ip in current {
            if restart_all || !previous.contains(ip) {
                self.start(*ip, now);
            }
        }
        self.retain(|ip| current.contains(ip));
    }

    /// Drops the bursts of IPs for which `keep` is false.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.pending.retain(|ip, _| keep(ip));
    }

    /// When the next round is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending.values().map(|(at, _)| *at).min()
    }

    /// The IPs due at `now`; each is rescheduled one interval later or dropped after its last round.
    pub(crate) fn take_due(&mut self, now: Instant) -> Vec<T> {
        let mut due = Vec::new();
        self.pending.retain(|ip, (at, left)| {
            if *at > now {
                return true;
            }
            due.push(*ip);
            *left = left.saturating_sub(1);
            *at += GRATUITOUS_INTERVAL;
            *left > 0
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn five_rounds_over_five_seconds() {
        let t0 = Instant::now();
        let mut b = Bursts::new();
        b.start(1u8, t0);
        let mut sent = Vec::new();
        let mut now = t0;
        while let Some(at) = b.next_due() {
            now = now.max(at);
            for ip in b.take_due(now) {
                sent.push((ip, now - t0));
            }
            assert!(now - t0 < Duration::from_secs(5), "burst must end within 5 s");
        }
        let times: Vec<u128> = sent.iter().map(|(_, d)| d.as_millis()).collect();
        assert_eq!(times, vec![0, 1100, 2200, 3300, 4400]);
    }

    #[test]
    fn not_due_yet_and_retain() {
        let t0 = Instant::now();
        let mut b = Bursts::new();
        b.start(1u8, t0);
        b.start(2u8, t0 + Duration::from_millis(500));
        assert_eq!(b.take_due(t0), vec![1]);
        assert_eq!(b.next_due(), Some(t0 + Duration::from_millis(500)));
        b.retain(|ip| *ip != 2);
        assert_eq!(b.next_due(), Some(t0 + GRATUITOUS_INTERVAL));
        assert!(b.take_due(t0 + Duration::from_millis(600)).is_empty());
    }
}
