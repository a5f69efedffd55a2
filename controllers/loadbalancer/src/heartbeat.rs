//! Heartbeats: the fast path of failure detection between speakers. Pure, no I/O; the gossip task
//! (`member`) sends and receives the datagrams and turns a long silence into a SWIM suspicion.
//!
//! ```text
//!   node-a ──ping(seq)──> node-b        every `heartbeat_interval` (20 ms) to each watched peer
//!   node-a <──pong(seq)── node-b        answered at once by the peer's gossip thread
//!   no pong for `heartbeat_timeout` (100 ms) ──> suspect in SWIM ──> refuted, or Down after
//!   `heartbeat_suspect_to_down` (100 ms)
//! ```
//!
//! Each speaker watches the [`watched`] members: the `k` that follow it in the ring of node names, so
//! every speaker is watched by the `k` before it whatever the fleet size (traffic is `k` pings and `k`
//! pongs per interval per speaker, not n²). A peer is only judged by its heartbeats once it has
//! answered one ([`Watcher::on_pong`] arms it): a speaker that does not speak heartbeats (an older
//! version during a rolling upgrade) is left to SWIM's own probes.
//!
//! A pong counts only if it echoes a sequence number this watcher sent and has not seen acked yet, so a
//! recorded pong replayed later proves nothing. Sequence numbers start at a random value per process.
//! Silence is counted from the first ping a peer left unanswered, so a watcher that was itself not
//! scheduled for a while (and sent nothing) does not take its peers for dead.
//!
//! Wire payload (inside the authenticated frame of `member`, version byte 2): `[kind: 1 ping | 2 pong]
//! [seq: u64 big-endian]`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Frame version byte of heartbeat datagrams (SWIM's are version 1).
pub const VERSION: u8 = 2;
/// Payload length: kind + sequence number.
pub const PAYLOAD_LEN: usize = 9;

const PING: u8 = 1;
const PONG: u8 = 2;

/// One heartbeat datagram's payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// "Are you there?", answered by a [`Beat::Pong`] with the same sequence number.
    Ping(u64),
    /// The answer to [`Beat::Ping`].
    Pong(u64),
}

impl Beat {
    /// The payload bytes.
    pub fn encode(self) -> [u8; PAYLOAD_LEN] {
        let (kind, seq) = match self {
            Beat::Ping(s) => (PING, s),
            Beat::Pong(s) => (PONG, s),
        };
        let mut out = [0u8; PAYLOAD_LEN];
        out[0] = kind;
        out[1..].copy_from_slice(&seq.to_be_bytes());
        out
    }

    /// Parses a payload; the error is a metric label (`malformed`).
    pub fn decode(payload: &[u8]) -> Result<Beat, &'static str> {
        if payload.len() != PAYLOAD_LEN {
            return Err("malformed");
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[1..]);
        let seq = u64::from_be_bytes(seq);
        match payload[0] {
            PING => Ok(Beat::Ping(seq)),
            PONG => Ok(Beat::Pong(seq)),
            _ => Err("malformed"),
        }
    }
}

/// The members `me` watches: the `k` that follow it in the ring of `members` ordered by node name
/// (`me` excluded, duplicates of a name collapsed to the first address).
pub fn watched<'a>(
    me: &str,
    members: impl IntoIterator<Item = (&'a str, SocketAddr)>,
    k: usize,
) -> Vec<SocketAddr> {
    let mut ring: BTreeMap<&str, SocketAddr> = BTreeMap::new();
    for (name, addr) in members {
        if name != me {
            ring.entry(name).or_insert(addr);
        }
    }
    // Names sort after `me` first, then wrap around to the start of the ring.
    let (before, after): (Vec<_>, Vec<_>) = ring.into_iter().partition(|(name, _)| *name < me);
    after.into_iter().chain(before).take(k).map(|(_, a)| a).collect()
}

#[derive(Debug)]
struct Peer {
    /// Last time the peer proved it was alive (a valid pong, or a ping it sent us).
    heard: Instant,
    /// It has answered at least once: only then is its silence held against it.
    armed: bool,
    /// Highest sequence number acknowledged.
    acked: u64,
    /// The round before the peer was first pinged.
    added: u64,
}

/// Rounds remembered (sequence number and when it was sent): far more than a timeout's worth.
const ROUNDS_KEPT: usize = 64;

/// Heartbeat bookkeeping of one speaker: whom it pings, when it last heard from each.
///
/// A peer's silence is measured from the *first ping it left unanswered*, not from the last answer:
/// when this speaker itself stalls, it sends no pings and holds no silence against anybody for that
/// time (a watcher that was not scheduled must not take its peers for dead).
#[derive(Debug)]
pub struct Watcher {
    peers: BTreeMap<SocketAddr, Peer>,
    /// Last sequence number sent (shared by all peers: every ping of a round has the same one).
    seq: u64,
    /// Sequence number of the first ping of this process.
    first: u64,
    /// When the last [`ROUNDS_KEPT`] rounds were sent.
    rounds: std::collections::VecDeque<(u64, Instant)>,
}

impl Watcher {
    /// A watcher whose sequence numbers start after `start` (pass a random value).
    pub fn new(start: u64) -> Self {
        // Leave room so the counter never wraps in the life of a process (2^62 rounds).
        let start = start >> 2;
        Watcher {
            peers: BTreeMap::new(),
            seq: start,
            first: start.wrapping_add(1),
            rounds: std::collections::VecDeque::with_capacity(ROUNDS_KEPT),
        }
    }

    /// Sets the watched peers: new ones start as just heard (and unarmed), gone ones are forgotten.
    pub fn set_watched(&mut self, addrs: &[SocketAddr], now: Instant) {
        self.peers.retain(|a, _| addrs.contains(a));
        for a in addrs {
            self.peers.entry(*a).or_insert(Peer {
                heard: now,
                armed: false,
                acked: 0,
                added: self.seq,
            });
        }
    }

    /// The watched peers.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers.keys().copied()
    }

    /// The sequence number of the next round of pings, sent at `now`.
    pub fn next_round(&mut self, now: Instant) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        if self.rounds.len() == ROUNDS_KEPT {
            self.rounds.pop_front();
        }
        self.rounds.push_back((self.seq, now));
        self.seq
    }

    /// A pong from `from`. True if it proves the peer alive now: it echoes a sequence number this
    /// watcher sent and that is newer than the last one acknowledged (a replay or a late duplicate is
    /// false).
    pub fn on_pong(&mut self, from: SocketAddr, seq: u64, now: Instant) -> bool {
        let Some(p) = self.peers.get_mut(&from) else {
            return false;
        };
        if seq < self.first || seq > self.seq || seq <= p.acked {
            return false;
        }
        p.acked = seq;
        p.heard = now;
        p.armed = true;
        true
    }

    /// A ping from `from` also shows it is alive (it does not arm it: only a pong shows it answers).
    pub fn on_ping(&mut self, from: SocketAddr, now: Instant) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.heard = now;
        }
    }

    /// When `addr` was last heard from, if it is watched.
    pub fn heard(&self, addr: SocketAddr) -> Option<Instant> {
        self.peers.get(&addr).map(|p| p.heard)
    }

    /// Armed peers that left every ping of at least `timeout` unanswered (counted from the first
    /// such ping) and have not been heard from for as long.
    pub fn silent(&self, now: Instant, timeout: Duration) -> Vec<SocketAddr> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                if !p.armed || now.saturating_duration_since(p.heard) < timeout {
                    return false;
                }
                let unanswered = p.acked.max(p.added).wrapping_add(1);
                if unanswered > self.seq {
                    // Nothing outstanding: it answered the last round.
                    return false;
                }
                match self.rounds.iter().find(|(seq, _)| *seq == unanswered) {
                    Some((_, sent)) => now.saturating_duration_since(*sent) >= timeout,
                    // Older than every round kept: unanswered for very long.
                    None => true,
                }
            })
            .map(|(a, _)| *a)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, i], 7946))
    }

    #[test]
    fn beats_round_trip_and_garbage_is_malformed() {
        for b in [Beat::Ping(0), Beat::Ping(u64::MAX), Beat::Pong(42)] {
            assert_eq!(Beat::decode(&b.encode()), Ok(b));
        }
        assert_eq!(Beat::decode(&[]), Err("malformed"));
        assert_eq!(Beat::decode(&[1; 8]), Err("malformed"));
        assert_eq!(Beat::decode(&[3; PAYLOAD_LEN]), Err("malformed"));
        assert_eq!(Beat::decode(&[1; PAYLOAD_LEN + 1]), Err("malformed"));
    }

    #[test]
    fn a_watcher_that_stalled_holds_no_silence_against_its_peers() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watcher::new(7);
        w.set_watched(&[addr(1)], t0);
        let s = w.next_round(t0);
        assert!(w.on_pong(addr(1), s, t0 + ms(1)));
        // This speaker was not scheduled for 500 ms: no ping went out meanwhile.
        let back = t0 + ms(500);
        assert!(w.silent(back, ms(100)).is_empty());
        w.next_round(back);
        assert!(w.silent(back + ms(50), ms(100)).is_empty());
        // Unanswered for 100 ms after it resumed pinging: now that counts.
        assert_eq!(w.silent(back + ms(100), ms(100)), vec![addr(1)]);
        // Rounds beyond what is kept: the oldest unanswered one is long gone, still silent.
        for i in 0..(ROUNDS_KEPT as u64 + 5) {
            w.next_round(back + ms(101 + i));
        }
        assert_eq!(w.silent(back + ms(400), ms(100)), vec![addr(1)]);
    }

    #[test]
    fn ring_successors_wrap_and_exclude_me() {
        let m = [
            ("node-c", addr(3)),
            ("node-a", addr(1)),
            ("node-d", addr(4)),
            ("node-b", addr(2)),
        ];
        assert_eq!(watched("node-b", m, 2), vec![addr(3), addr(4)]);
        assert_eq!(watched("node-d", m, 2), vec![addr(1), addr(2)]);
        assert_eq!(watched("node-c", m, 10), vec![addr(4), addr(1), addr(2)]);
        assert_eq!(watched("node-a", m, 0), Vec::<SocketAddr>::new());
        // Every node is watched by exactly k others.
        let mut watchers = BTreeMap::new();
        for (me, _) in m {
            for a in watched(me, m, 2) {
                *watchers.entry(a).or_insert(0) += 1;
            }
        }
        assert!(watchers.values().all(|n| *n == 2), "{watchers:?}");
        assert_eq!(watched("node-a", [("node-a", addr(1))], 3), vec![]);
    }

    #[test]
    fn silence_counts_only_for_armed_peers_and_pongs_must_echo_a_sent_ping() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Watcher::new(1000);
        w.set_watched(&[addr(1), addr(2)], t0);
        // Never answered: not held against them.
        assert!(w.silent(t0 + ms(500), ms(100)).is_empty());

        let s1 = w.next_round(t0);
        assert!(!w.on_pong(addr(1), s1 + 1, t0), "a ping never sent");
        assert!(!w.on_pong(addr(1), 3, t0), "before this process's first ping");
        assert!(!w.on_pong(addr(9), s1, t0), "not watched");
        assert!(w.on_pong(addr(1), s1, t0 + ms(10)));
        assert!(!w.on_pong(addr(1), s1, t0 + ms(20)), "replayed");
        assert_eq!(w.heard(addr(1)), Some(t0 + ms(10)));

        // Answered the last round: nothing outstanding, however long ago.
        assert!(w.silent(t0 + ms(500), ms(100)).is_empty());
        // Pinged every 20 ms from 20 ms on, never answered: silent from the first of those pings.
        for i in 1..=5 {
            w.next_round(t0 + ms(20 * i));
        }
        assert!(w.silent(t0 + ms(110), ms(100)).is_empty());
        assert_eq!(w.silent(t0 + ms(120), ms(100)), vec![addr(1)]);
        // Its ping shows it alive again.
        w.on_ping(addr(1), t0 + ms(150));
        assert!(w.silent(t0 + ms(200), ms(100)).is_empty());

        // Unwatched and watched again: forgotten in between, starts unarmed.
        w.set_watched(&[addr(2)], t0 + ms(300));
        assert_eq!(w.heard(addr(1)), None);
        w.set_watched(&[addr(1), addr(2)], t0 + ms(300));
        assert!(w.silent(t0 + ms(900), ms(100)).is_empty());
        assert_eq!(w.peers().collect::<Vec<_>>(), vec![addr(1), addr(2)]);
    }
}
