//! Member: which speakers are alive, by SWIM gossip between the speakers (the `foca` crate).
//!
//! ```text
//!   Node list (speaker) ──join(addrs)──┐                      ┌──> alive(): watch<BTreeSet<node>>
//!                                      v                      │      (election::NodeInfo::speaker_alive)
//!   UDP :7946 ──> [v1 | HMAC | foca] ──> verify ──> Foca ──────┼──> ferrite_lb_members
//!        ^         bad MAC / too big      (SWIM state)        │
//!        └──────── frame + HMAC <─── sends ┘  timers <─> queue └──> ferrite_lb_gossip_rejected_total{reason}
//! ```
//!
//! One tokio task, on a thread of its own with a single-threaded runtime (`ferrite-gossip`), owns the
//! socket, the `Foca` instance, its timer queue and the heartbeats; [`Membership`] is a handle that talks
//! to it over a channel. Speakers find each other through the Node objects: the caller
//! passes the gossip address of every Node to [`Membership::join`] whenever the Node list changes,
//! and the task re-announces every `rejoin_period` to listed peers that are not members, so a healed
//! partition or a late speaker converges without help.
//!
//! # Wire format and authentication
//! Every datagram is `[version][HMAC-SHA256(key, version || payload), 32 bytes][payload]`: version 1
//! carries a foca payload, version 2 a heartbeat (`heartbeat::Beat`, 9 bytes),
//! at most [`MAX_DATAGRAM`] bytes (under a 1500-byte Ethernet MTU, RFC 8085 §3.2). The key comes from a
//! Secret (read by the caller). Datagrams that are too short, too long, of another version or with a bad
//! MAC are dropped before foca parses anything and counted in
//! `ferrite_lb_gossip_rejected_total{reason}`; so a speaker with another key never joins. The MAC
//! gives authenticity, not secrecy (membership is not secret) and no replay window of its own: a
//! replayed datagram can only repeat a SWIM claim that foca's incarnation numbers already order.
//!
//! # Identity
//! [`SpeakerId`] = node name + advertised address + `boot` (milliseconds since the epoch when the
//! speaker started). Foca keys members by address; when two identities share one, the higher
//! `boot` wins, so a restarted speaker is a new member that replaces its previous life at once instead
//! of waiting for the old one to be forgotten. If the cluster wrongly declares us down,
//! [`foca::Identity::renew`] bumps `boot` and we rejoin immediately.
//!
//! # Where failover time went, and the fast path
//! Measured before the heartbeats (docs/benchmarks.md, SIGKILL of the announcing speaker -> the
//! client's neighbour entry moves): median 860 ms, max 1.25 s, against 353 ms for keepalived VRRPv3
//! with 100 ms adverts. Almost all of it was SWIM detection: waiting until somebody probes the dead
//! member (0–2 probe periods of 250 ms with 3 speakers, a shuffled round robin), the failed probe's
//! period (250 ms: foca marks Suspect at the *next* probe tick), then `suspect_to_down_after`
//! (500 ms); and only the prober times the suspicion, so the other speakers learned of the Down at
//! the next gossip round (up to 100 ms more). The takeover after that (the speaker's recompute, the
//! announcer set, the first gratuitous ARP/NA) is immediate: a few milliseconds.
//!
//! So detection has a second, fast path (`heartbeat`): every speaker pings the next
//! `heartbeat_peers` (3) speakers in the ring of node names every `heartbeat_interval` (20 ms) and
//! the peer's gossip thread answers at once. A watched peer silent for `heartbeat_timeout` (100 ms:
//! five pings, counted from the first unanswered one, so a watcher that was itself not scheduled
//! suspects nobody for that time) is *suspected* in SWIM — the suspicion is gossiped at once, to the suspect too — and
//! declared Down after `heartbeat_suspect_to_down` (100 ms) unless it refuted (SWIM's refutation: a
//! newer incarnation, which foca gossips the moment it hears it is suspected) or answered a ping
//! again. A Down is pushed to the other speakers at once instead of at the next gossip round.
//! Expected detection ≈ 80–120 ms until the silence counts (the last pong came 0–20 ms before the
//! death, the silence is checked every round) + 100 ms ≈ **0.18–0.22 s**, the same at every watcher;
//! `tests/member_gossip.rs` measures about 0.2 s on loopback. SWIM's probes keep running unchanged as the slow path for peers
//! that do not (yet) answer heartbeats, e.g. an older speaker during a rolling upgrade.
//!
//! **The trade-off.** A live speaker is declared down only if it is silent for 100 ms *and* does not
//! refute within the next 100 ms: a stall of about 200 ms or more (SIGSTOP, a VM paused, CFS
//! throttling of a CPU limit) is taken for a death, where SWIM alone tolerated about 0.75 s (and
//! keepalived VRRPv3 at 100 ms adverts tolerates 3 adverts + skew ≈ 360 ms). A stall shorter than
//! that is refuted (`stopped_for_less_than_the_suspicion_time_is_not_down_and_for_longer_is`).
//! CPU starvation is not a stall: the gossip task runs on a thread of its own with its own runtime,
//! so nothing else in the speaker (an election over 10,000 Services, a burst of watch events) delays
//! an answer, and a thread that sleeps between pings is scheduled within milliseconds of waking
//! even with busy loops pinned to its CPU (`busy_loops_pinned_to_the_members_cpu_do_not_make_it_down`;
//! the benchmark's CPU-starvation run counts false failovers). Busy loops in the speaker's *own*
//! scheduling group (its cgroup, or its session's autogroup) are different: they use up the group's
//! share and the whole group waits; the benchmark saw 100–200+ ms waits and a false failover that
//! way, and none with the loops in a group of their own (docs/loadbalancer.md). Lost datagrams: five
//! pings in a row on a LAN, then a lost refutation. Do not put a CPU limit on the speaker. Cost: per speaker
//! 3 × 50 pings and as many pongs per second, 42 bytes each.
//!
//! # SWIM timings (why these numbers)
//! Foca's `Config::simple()` (probe 1.5 s, suspect→down 3 s) and `Config::new_lan()` (memberlist's
//! DefaultLANConfig: probe 1 s, suspect→down 4·max(1, log10 n) s) detect in 3–6 s: they are tuned for
//! big memberlist deployments. A speaker fleet is a few to a few hundred nodes on one L2 segment with
//! sub-millisecond RTT, so (see [`Timings::default`]):
//! - `probe_period` 250 ms: each speaker pings one member per period, walking a shuffled
//!   round-robin list; each of the n-1 others reaches a given member once per n-1 periods, so
//!   somebody probes it about once per period (bursty for small fleets: up to 2 periods with 3).
//! - `probe_rtt` 80 ms: the wait for a direct ack before asking 3 others to ping indirectly; ~100× a
//!   LAN RTT, and leaves 170 ms for the indirect round inside the period.
//! - `suspect_to_down_after` 500 ms: two probe periods and five gossip rounds for a falsely
//!   suspected speaker (lost datagrams, a stalled node) to hear the suspicion and refute it. The
//!   heartbeats make detection fast, so this slow path stays conservative.
//! - `gossip_period` 100 ms to 3 members: spreads Suspect/Down/Alive updates in a few hops;
//!   datagrams are small (one member ≈ 40 bytes), about 10 per second per speaker.
//!
//! SWIM alone: wait until probed (0–2 periods with 3 speakers) + one failed probe period + suspicion
//! ≈ 0.75–1.25 s (about 1.0 s on loopback). Suspect members still count as alive; only Down removes a
//! node from [`Membership::alive`]. A graceful stop announces the leave (foca's `leave_cluster`) and
//! peers drop the node at once (under 1 ms on loopback).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use foca::{
    Config, Foca, Identity, NoCustomBroadcast, OwnedNotification, PeriodicParams, PostcardCodec, Timer,
};
use hmac::{Hmac, Mac};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::heartbeat;

/// Default gossip port: the port MetalLB's memberlist uses, so firewall rules carry over.
pub const DEFAULT_PORT: u16 = 7946;
/// Largest datagram sent or accepted, header included.
pub const MAX_DATAGRAM: usize = 1400;
/// Shortest accepted key. 16 random bytes = 128 bits.
pub const MIN_KEY_LEN: usize = 16;

const WIRE_VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + MAC_LEN;

type HmacSha256 = Hmac<Sha256>;
type Swim = Foca<SpeakerId, PostcardCodec, StdRng, NoCustomBroadcast>;

/// SWIM timings. Defaults and the reasoning behind them are in the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How often each speaker probes one member.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before indirect probes; must be below `probe_period`.
    pub probe_rtt: Duration,
    /// How long a suspected member may refute before it is declared down.
    pub suspect_to_down_after: Duration,
    /// How often updates are pushed to 3 random members outside the probe cycle.
    pub gossip_period: Duration,
    /// How often listed peers that are not members are announced to again.
    pub rejoin_period: Duration,
    /// How often each watched peer is pinged by the heartbeat fast path (`heartbeat`).
    pub heartbeat_interval: Duration,
    /// Silence (no pong, no ping) after which a watched peer is suspected; a multiple of the interval.
    pub heartbeat_timeout: Duration,
    /// How long a peer suspected for its silence may refute before it is declared down.
    pub heartbeat_suspect_to_down: Duration,
    /// How many peers each speaker watches (its successors in the ring of node names); 0 turns the
    /// fast path off and leaves detection to SWIM's probes.
    pub heartbeat_peers: usize,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(250),
            probe_rtt: Duration::from_millis(80),
            suspect_to_down_after: Duration::from_millis(500),
            gossip_period: Duration::from_millis(100),
            rejoin_period: Duration::from_secs(5),
            heartbeat_interval: Duration::from_millis(20),
            heartbeat_timeout: Duration::from_millis(100),
            heartbeat_suspect_to_down: Duration::from_millis(100),
            heartbeat_peers: 3,
        }
    }
}

/// How to run gossip on this node.
#[derive(Clone)]
pub struct MemberConfig {
    /// This node's name (`spec.nodeName` of the speaker pod).
    pub node: String,
    /// Local UDP address to bind, e.g. `0.0.0.0:7946` (host network).
    pub bind: SocketAddr,
    /// Address peers reach us at (the Node's InternalIP and the gossip port). Port 0 means "the port
    /// actually bound" (useful with `bind` port 0 in tests). Must not be unspecified (`0.0.0.0`).
    pub advertise: SocketAddr,
    /// Shared HMAC key, from a Secret; at least [`MIN_KEY_LEN`] bytes.
    pub key: Vec<u8>,
    /// SWIM timings.
    pub timings: Timings,
}

impl MemberConfig {
    /// Default timings, advertising the bind address.
    pub fn new(node: impl Into<String>, bind: SocketAddr, key: Vec<u8>) -> Self {
        Self {
            node: node.into(),
            bind,
            advertise: bind,
            key,
            timings: Timings::default(),
        }
    }
}

// The key stays out of logs.
impl fmt::Debug for MemberConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberConfig")
            .field("node", &self.node)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("timings", &self.timings)
            .finish()
    }
}

/// Errors starting gossip. Each has a stable [`MemberError::reason`].
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(
        "gossip key is empty: put at least {MIN_KEY_LEN} random bytes in the gossip Secret (e.g. `openssl rand 32`)"
    )]
    EmptyKey,
    #[error(
        "gossip key is {len} bytes: at least {MIN_KEY_LEN} random bytes are required (e.g. `openssl rand 32`)"
    )]
    ShortKey { len: usize },
    #[error("node name is empty: pass the node name (spec.nodeName via the downward API)")]
    EmptyNodeName,
    #[error("advertise address {0} is unspecified: peers need a reachable IP (the Node's InternalIP)")]
    UnspecifiedAdvertise(SocketAddr),
    #[error("invalid gossip timings: {0}")]
    InvalidTimings(String),
    #[error(
        "cannot bind gossip UDP socket {addr}: {source} (is port {port} in use, e.g. by MetalLB's \
         memberlist or another speaker? choose another gossip port)",
        port = addr.port()
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("registering gossip metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("starting the gossip thread: {0}")]
    Thread(#[source] io::Error),
}

impl MemberError {
    /// Short, stable reason string for metrics and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::EmptyKey | Self::ShortKey { .. } => "InvalidGossipKey",
            Self::EmptyNodeName | Self::UnspecifiedAdvertise(_) | Self::InvalidTimings(_) => {
                "InvalidGossipConfig"
            }
            Self::Bind { .. } => "GossipBindFailed",
            Self::Metrics(_) => "MetricsRegistration",
            Self::Thread(_) => "GossipThreadFailed",
        }
    }
}

/// A speaker's identity in the gossip cluster. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpeakerId {
    /// Node name.
    pub node: String,
    /// Advertised gossip address; foca's member key.
    pub addr: SocketAddr,
    /// Milliseconds since the epoch at start, bumped by one on each renewal.
    pub boot: u64,
}

impl Identity for SpeakerId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            boot: self.boot.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.boot, &self.node) > (adversary.boot, &adversary.node)
    }
}

/// Handle on the gossip task. Cancel the `shutdown` token given to [`Membership::start`] to leave
/// the cluster gracefully; [`Membership::crash`] stops without telling anyone.
#[derive(Debug)]
pub struct Membership {
    id: SpeakerId,
    commands: mpsc::UnboundedSender<Command>,
    alive: watch::Receiver<BTreeSet<String>>,
    task: JoinHandle<()>,
    /// Why the task ended on its own (set just before it returns); `None` after a graceful leave, a
    /// panic or an abort.
    exit: Arc<Mutex<Option<String>>>,
}

/// Consecutive receive errors after which the socket counts as broken and the task ends (with a 10 ms
/// pause after each, so about a second of nothing but errors).
const MAX_RECV_ERRORS: u32 = 100;

#[derive(Debug)]
enum Command {
    Join(BTreeSet<SocketAddr>),
}

impl Membership {
    /// Validates `cfg`, binds the UDP socket, registers the metrics and starts the gossip task.
    pub async fn start(
        cfg: MemberConfig,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Result<Membership, MemberError> {
        if cfg.key.is_empty() {
            return Err(MemberError::EmptyKey);
        }
        if cfg.key.len() < MIN_KEY_LEN {
            return Err(MemberError::ShortKey { len: cfg.key.len() });
        }
        if cfg.node.is_empty() {
            return Err(MemberError::EmptyNodeName);
        }
        if cfg.advertise.ip().is_unspecified() {
            return Err(MemberError::UnspecifiedAdvertise(cfg.advertise));
        }
        let config = foca_config(&cfg.timings)?;
        // HMAC accepts keys of any length; the error arm cannot happen with a non-empty key.
        let mac = HmacSha256::new_from_slice(&cfg.key).map_err(|_| MemberError::EmptyKey)?;
        let metrics = Metrics::register(registry)?;

        // A std socket, registered with the gossip thread's own runtime below.
        let bind_err = |source| MemberError::Bind {
            addr: cfg.bind,
            source,
        };
        let socket = std::net::UdpSocket::bind(cfg.bind).map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let mut advertise = cfg.advertise;
        if advertise.port() == 0 {
            let bound = socket.local_addr().map_err(|source| MemberError::Bind {
                addr: cfg.bind,
                source,
            })?;
            advertise.set_port(bound.port());
        }

        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = SpeakerId {
            node: cfg.node.clone(),
            addr: advertise,
            boot,
        };
        let foca = Foca::new(id.clone(), config, rand::make_rng::<StdRng>(), PostcardCodec);
        let (alive_tx, alive) = watch::channel(BTreeSet::from([cfg.node.clone()]));
        metrics.members.set(1);
        let (commands, commands_rx) = mpsc::unbounded_channel();

        info!(node = %id.node, addr = %advertise, boot = id.boot, "gossip started");
        let exit = Arc::new(Mutex::new(None));
        let task = spawn_gossip_thread(
            socket,
            GossipParts {
                foca,
                mac,
                metrics,
                alive: alive_tx,
                timings: cfg.timings,
                watcher: heartbeat::Watcher::new(rand::random()),
            },
            commands_rx,
            shutdown,
            exit.clone(),
        )
        .await?;
        Ok(Membership {
            id,
            commands,
            alive,
            task,
            exit,
        })
    }

    /// Sets the gossip addresses of all speakers (from the Node list; our own address may be in it)
    /// and announces to those that are not members yet. Call it again whenever the Node list changes.
    pub fn join(&self, peers: impl IntoIterator<Item = SocketAddr>) {
        let peers = peers.into_iter().filter(|p| *p != self.id.addr).collect();
        // Fails only when the task has stopped, and then there is nothing to join.
        let _ = self.commands.send(Command::Join(peers));
    }

    /// Names of the nodes whose speaker is alive, this node included. Changes as soon as a member
    /// joins, leaves or is declared down (Suspect members still count as alive). The channel closes
    /// (`changed()` returns an error) once the gossip task has stopped; stop announcing then.
    pub fn alive(&self) -> watch::Receiver<BTreeSet<String>> {
        self.alive.clone()
    }

    /// Our identity (node, advertised address, boot).
    pub fn identity(&self) -> &SpeakerId {
        &self.id
    }

    /// Stops at once without announcing the leave, as if the process had died: peers find out by
    /// failed probes. For failure-detection tests and benchmarks.
    pub fn crash(self) {
        self.task.abort();
    }

    /// Aborts the gossip task but keeps the handle, so [`Membership::stopped`] resolves as it does when
    /// the task dies by itself. Fault injection only (the speaker's `--fault-gossip-sigusr1`).
    pub fn abort_task(&self) {
        self.task.abort();
    }

    /// Resolves once the gossip task has stopped, with why. After a graceful leave (the shutdown token
    /// was cancelled) this resolves too; callers tell the two apart by the token. A speaker whose
    /// gossip stopped otherwise has a frozen view of who is alive and must stop announcing.
    pub async fn stopped(&self) -> String {
        let mut alive = self.alive.clone();
        // `changed` fails only once the task has dropped the sender, i.e. ended.
        while alive.changed().await.is_ok() {}
        self.exit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| "the gossip task ended unexpectedly (it panicked or was aborted)".to_owned())
    }

    /// Waits for the task to end (after the shutdown token is cancelled and the leave was sent).
    pub async fn finished(self) {
        // A JoinError here means the task panicked or was aborted; either way it has stopped.
        let _ = self.task.await;
    }
}

/// What [`Gossip`] is made of, built by [`Membership::start`] before the socket is registered.
struct GossipParts {
    foca: Swim,
    mac: HmacSha256,
    metrics: Metrics,
    alive: watch::Sender<BTreeSet<String>>,
    timings: Timings,
    watcher: heartbeat::Watcher,
}

/// Runs the gossip task on a thread of its own with a single-threaded runtime, so that nothing else
/// the process does (an election over 10,000 Services, a burst of watch events) delays a ping's answer
/// or a refutation: a busy speaker stays a live speaker. Returns the task's handle (abort, await)
/// once the socket is registered with that runtime.
async fn spawn_gossip_thread(
    socket: std::net::UdpSocket,
    parts: GossipParts,
    commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    exit: Arc<Mutex<Option<String>>>,
) -> Result<JoinHandle<()>, MemberError> {
    let (handle_tx, handle_rx) = tokio::sync::oneshot::channel::<Result<JoinHandle<()>, io::Error>>();
    let spawned = std::thread::Builder::new()
        .name("ferrite-gossip".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            // The thread ends when the task does (returned, panicked or aborted: the guard is dropped
            // with the task's future in every case).
            let ended = CancellationToken::new();
            let guard = ended.clone().drop_guard();
            let socket = match rt.block_on(async { UdpSocket::from_std(socket) }) {
                Ok(s) => s,
                Err(e) => {
                    let _ = handle_tx.send(Err(e));
                    return;
                }
            };
            let gossip = Gossip {
                foca: parts.foca,
                runtime: foca::AccumulatingRuntime::new(),
                socket,
                mac: parts.mac,
                metrics: parts.metrics,
                timers: TimerQueue::default(),
                peers: BTreeSet::new(),
                alive: parts.alive,
                timings: parts.timings,
                frame: Vec::with_capacity(MAX_DATAGRAM),
                watcher: parts.watcher,
                beats_out: Vec::new(),
                suspected: BTreeMap::new(),
            };
            let task = rt.spawn(async move {
                let _guard = guard;
                if let Err(why) = gossip.run(commands, shutdown).await {
                    *exit.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
                }
            });
            if handle_tx.send(Ok(task)).is_err() {
                return;
            }
            rt.block_on(ended.cancelled());
        });
    if let Err(e) = spawned {
        return Err(MemberError::Thread(e));
    }
    match handle_rx.await {
        Ok(Ok(task)) => Ok(task),
        Ok(Err(e)) => Err(MemberError::Thread(e)),
        Err(_) => Err(MemberError::Thread(io::Error::other(
            "the gossip thread ended before it started",
        ))),
    }
}

/// Foca's LAN configuration with Ferrite's timings (module docs explain the numbers).
fn foca_config(t: &Timings) -> Result<Config, MemberError> {
    let bad = |m: &str| Err(MemberError::InvalidTimings(m.to_owned()));
    if t.probe_rtt.is_zero() || t.probe_period <= t.probe_rtt {
        return bad("probe_rtt must be non-zero and shorter than probe_period");
    }
    if t.suspect_to_down_after.is_zero() || t.gossip_period.is_zero() || t.rejoin_period.is_zero() {
        return bad("suspect_to_down_after, gossip_period and rejoin_period must be non-zero");
    }
    if t.heartbeat_peers > 0 {
        if t.heartbeat_interval.is_zero() || t.heartbeat_suspect_to_down.is_zero() {
            return bad("heartbeat_interval and heartbeat_suspect_to_down must be non-zero");
        }
        // One lost pong must never look like a dead peer.
        if t.heartbeat_timeout < t.heartbeat_interval * 2 {
            return bad("heartbeat_timeout must be at least two heartbeat intervals");
        }
    }
    // The cluster-size hint only sets max_transmissions (4·log10(n+1) = 6 for 32 speakers): how many
    // times each update piggybacks; plenty for clusters a few times larger with 100 ms gossip.
    let mut c = Config::new_lan(NonZeroU32::MIN.saturating_add(31));
    c.probe_period = t.probe_period;
    c.probe_rtt = t.probe_rtt;
    c.suspect_to_down_after = t.suspect_to_down_after;
    c.max_packet_size = NonZeroUsize::MIN.saturating_add(MAX_DATAGRAM - HEADER_LEN - 1);
    c.periodic_gossip = Some(PeriodicParams {
        frequency: t.gossip_period,
        num_members: NonZeroUsize::MIN.saturating_add(2),
    });
    // Members we saw die are asked again every 10 s (new_lan: 65 s) so a healed partition rejoins fast.
    c.periodic_announce_to_down_members = Some(PeriodicParams {
        frequency: Duration::from_secs(10),
        num_members: NonZeroUsize::MIN.saturating_add(1),
    });
    Ok(c)
}

// === impl Metrics ===

#[derive(Clone, Debug)]
struct Metrics {
    members: IntGauge,
    rejected: IntCounterVec,
    beats: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, MemberError> {
        let members = IntGauge::new(
            "ferrite_lb_members",
            "Speakers this speaker sees alive, itself included.",
        )
        .map_err(MemberError::Metrics)?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "ferrite_lb_gossip_rejected_total",
                "Gossip datagrams dropped, by reason (bad_mac, oversize, truncated, bad_version, malformed).",
            ),
            &["reason"],
        )
        .map_err(MemberError::Metrics)?;
        registry
            .register(Box::new(members.clone()))
            .map_err(MemberError::Metrics)?;
        registry
            .register(Box::new(rejected.clone()))
            .map_err(MemberError::Metrics)?;
        for reason in ["bad_mac", "oversize", "truncated", "bad_version", "malformed"] {
            // Export zeros so dashboards and alerts see the series before the first rejection.
            rejected.with_label_values(&[reason]);
        }
        let beats = IntCounterVec::new(
            Opts::new(
                "ferrite_lb_gossip_heartbeat_suspicions_total",
                "Peers suspected because their heartbeats stopped, and how each suspicion ended (event: suspected, refuted, down).",
            ),
            &["event"],
        )
        .map_err(MemberError::Metrics)?;
        registry
            .register(Box::new(beats.clone()))
            .map_err(MemberError::Metrics)?;
        for event in ["suspected", "refuted", "down"] {
            beats.with_label_values(&[event]);
        }
        Ok(Self {
            members,
            rejected,
            beats,
        })
    }

    fn beat(&self, event: &str) {
        self.beats.with_label_values(&[event]).inc();
    }

    fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }
}

// === impl TimerQueue ===

/// Foca's timers, earliest first (a min-heap on deadline, then insertion order).
#[derive(Default)]
struct TimerQueue {
    heap: BinaryHeap<Scheduled>,
    seq: u64,
}

struct Scheduled {
    at: Instant,
    seq: u64,
    timer: Timer<SpeakerId>,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl TimerQueue {
    fn push(&mut self, at: Instant, timer: Timer<SpeakerId>) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            timer,
        });
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.at)
    }

    fn pop_due(&mut self, now: Instant) -> Vec<Timer<SpeakerId>> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|s| s.at <= now) {
            if let Some(s) = self.heap.pop() {
                due.push(s.timer);
            }
        }
        // When the loop lagged, foca wants SendIndirectProbe before ProbeRandomMember (Timer's Ord).
        due.sort();
        due
    }
}

// === impl Gossip ===

/// The task: owns the socket and the SWIM state.
struct Gossip {
    foca: Swim,
    runtime: foca::AccumulatingRuntime<SpeakerId>,
    socket: UdpSocket,
    mac: HmacSha256,
    metrics: Metrics,
    timers: TimerQueue,
    peers: BTreeSet<SocketAddr>,
    alive: watch::Sender<BTreeSet<String>>,
    timings: Timings,
    frame: Vec<u8>,
    watcher: heartbeat::Watcher,
    /// Heartbeats to send at the next drain.
    beats_out: Vec<(SocketAddr, heartbeat::Beat)>,
    /// Peers this speaker suspected for their silence: the incarnation suspected and when it is
    /// declared down unless it refuted or spoke again.
    suspected: BTreeMap<SocketAddr, Suspicion>,
}

/// A suspicion raised by missing heartbeats.
#[derive(Debug, Clone, Copy)]
struct Suspicion {
    incarnation: foca::Incarnation,
    since: Instant,
    down_at: Instant,
}

impl Gossip {
    /// Runs until `shutdown` (Ok, after sending the leave) or until the socket keeps failing (Err with
    /// why).
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        let mut recv_errors = 0u32;
        let mut rejoin = tokio::time::interval(self.timings.rejoin_period);
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let beats_on = self.timings.heartbeat_peers > 0;
        let mut beat = tokio::time::interval(if beats_on {
            self.timings.heartbeat_interval
        } else {
            Duration::from_secs(3600)
        });
        // After a stall, one round at once (the datagrams that queued up meanwhile are read first).
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = self.timers.next_deadline();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    if let Err(e) = self.foca.leave_cluster(&mut self.runtime) {
                        warn!(error = %e, "gossip: leaving the cluster failed");
                    }
                    self.drain().await;
                    info!("gossip stopped: left the cluster");
                    return Ok(());
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        recv_errors = 0;
                        self.on_datagram(&buf[..len], from);
                    }
                    Err(e) => {
                        recv_errors += 1;
                        debug!(error = %e, "gossip: receive failed");
                        if recv_errors >= MAX_RECV_ERRORS {
                            let why = format!("gossip socket failed {recv_errors} times in a row: {e}");
                            warn!(%why, "gossip stopped");
                            return Err(why);
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                () = sleep_until_opt(next) => {
                    for timer in self.timers.pop_due(Instant::now()) {
                        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
                            debug!(error = %e, "gossip: timer");
                        }
                    }
                }
                Some(Command::Join(peers)) = commands.recv() => {
                    self.peers = peers;
                    self.announce_to_strangers();
                }
                _ = rejoin.tick() => self.announce_to_strangers(),
                _ = beat.tick(), if beats_on => self.heartbeat_round(),
                // A suspicion's verdict on time, not at the next heartbeat round.
                () = sleep_until_opt(self.next_verdict()) => self.verdicts_due(),
            }
            self.drain().await;
        }
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) {
        let (version, payload) = match open(&self.mac, datagram) {
            Ok(p) => p,
            Err(reason) => {
                self.metrics.reject(reason);
                debug!(%from, reason, len = datagram.len(), "gossip: datagram dropped");
                return;
            }
        };
        if version == heartbeat::VERSION {
            self.on_beat(payload, from);
            return;
        }
        match self.foca.handle_data(payload, &mut self.runtime) {
            Ok(()) => {}
            Err(foca::Error::DataFromOurselves) => {}
            Err(e) => {
                self.metrics.reject("malformed");
                debug!(%from, error = %e, "gossip: authenticated datagram not understood");
            }
        }
    }

    /// A heartbeat datagram: answer a ping, note a pong.
    fn on_beat(&mut self, payload: &[u8], from: SocketAddr) {
        let now = Instant::now();
        match heartbeat::Beat::decode(payload) {
            Ok(heartbeat::Beat::Ping(seq)) => {
                self.watcher.on_ping(from, now);
                self.beats_out.push((from, heartbeat::Beat::Pong(seq)));
            }
            Ok(heartbeat::Beat::Pong(seq)) => {
                if self.watcher.on_pong(from, seq, now)
                    && let Some(s) = self.suspected.remove(&from)
                {
                    self.metrics.beat("refuted");
                    info!(
                        %from,
                        after = ?now.saturating_duration_since(s.since),
                        "gossip: suspected speaker answers heartbeats again"
                    );
                }
            }
            Err(reason) => {
                self.metrics.reject(reason);
                debug!(%from, reason, "gossip: heartbeat not understood");
            }
        }
    }

    /// One heartbeat round: follow the ring, suspect the silent, declare down the unrefuted, ping.
    fn heartbeat_round(&mut self) {
        let now = Instant::now();
        let me = self.foca.identity().node.clone();
        let watched = heartbeat::watched(
            &me,
            self.foca
                .iter_members()
                .map(|m| (m.id().node.as_str(), m.id().addr)),
            self.timings.heartbeat_peers,
        );
        self.watcher.set_watched(&watched, now);
        self.suspected.retain(|a, _| watched.contains(a));
        for addr in self.watcher.silent(now, self.timings.heartbeat_timeout) {
            self.suspect_silent(addr, now);
        }
        self.verdicts_due();
        let seq = self.watcher.next_round(now);
        for addr in watched {
            self.beats_out.push((addr, heartbeat::Beat::Ping(seq)));
        }
    }

    /// When the earliest silence suspicion is due its verdict.
    fn next_verdict(&self) -> Option<Instant> {
        self.suspected.values().map(|s| s.down_at).min()
    }

    /// The verdicts of every suspicion whose refutation window is over.
    fn verdicts_due(&mut self) {
        let now = Instant::now();
        let due: Vec<SocketAddr> = self
            .suspected
            .iter()
            .filter(|(_, s)| s.down_at <= now)
            .map(|(a, _)| *a)
            .collect();
        for addr in due {
            self.verdict(addr);
        }
    }

    /// `addr` has been silent for the heartbeat timeout: suspect it in SWIM (once per window) and push
    /// the suspicion at once, so that a live speaker hears it and refutes.
    fn suspect_silent(&mut self, addr: SocketAddr, now: Instant) {
        if self.suspected.contains_key(&addr) {
            return;
        }
        let Some(member) = self.foca.iter_members().find(|m| m.id().addr == addr).cloned() else {
            return;
        };
        let incarnation = member.incarnation();
        if member.state() == foca::State::Alive {
            let suspect = foca::Member::new(member.id().clone(), incarnation, foca::State::Suspect);
            if let Err(e) = self
                .foca
                .apply_many(std::iter::once(suspect), true, &mut self.runtime)
            {
                debug!(error = %e, "gossip: suspecting a silent speaker");
            }
        }
        self.suspected.insert(
            addr,
            Suspicion {
                incarnation,
                since: now,
                down_at: now + self.timings.heartbeat_suspect_to_down,
            },
        );
        if let Err(e) = self.foca.gossip(&mut self.runtime) {
            debug!(error = %e, "gossip: pushing a suspicion");
        }
        self.metrics.beat("suspected");
        info!(
            node = %member.id().node,
            %addr,
            silent = ?self.watcher.heard(addr).map(|h| now.saturating_duration_since(h)),
            down_in = ?self.timings.heartbeat_suspect_to_down,
            "gossip: no heartbeat from speaker; suspected"
        );
    }

    /// The refutation window of a silence suspicion is over: down, unless the speaker refuted (a newer
    /// incarnation) or spoke again.
    fn verdict(&mut self, addr: SocketAddr) {
        let Some(s) = self.suspected.remove(&addr) else {
            return;
        };
        let Some(member) = self.foca.iter_members().find(|m| m.id().addr == addr).cloned() else {
            // Down or gone already (SWIM, a leave, or another watcher's verdict).
            return;
        };
        let spoke = self.watcher.heard(addr).is_some_and(|h| h > s.since);
        if spoke || member.incarnation() != s.incarnation {
            self.metrics.beat("refuted");
            debug!(node = %member.id().node, spoke, "gossip: silence suspicion refuted");
            return;
        }
        let down = foca::Member::new(member.id().clone(), s.incarnation, foca::State::Down);
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(down), true, &mut self.runtime)
        {
            debug!(error = %e, "gossip: declaring a silent speaker down");
            return;
        }
        self.metrics.beat("down");
        info!(
            node = %member.id().node,
            %addr,
            silent = ?self.watcher.heard(addr).map(|h| Instant::now().saturating_duration_since(h)),
            "gossip: speaker silent and did not refute; declared down"
        );
    }

    /// Announce to listed peers that are not active members (new, restarted, or partitioned away).
    fn announce_to_strangers(&mut self) {
        let members: BTreeSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
        let strangers: Vec<SocketAddr> = self.peers.difference(&members).copied().collect();
        for addr in strangers {
            // Foca accepts an Announce addressed to any identity with its address; node and boot
            // are learnt from the reply.
            let probe = SpeakerId {
                node: String::new(),
                addr,
                boot: 0,
            };
            if let Err(e) = self.foca.announce(probe, &mut self.runtime) {
                debug!(%addr, error = %e, "gossip: announce");
            }
        }
    }

    /// Sends what foca produced, schedules its timers and publishes membership changes.
    async fn drain(&mut self) {
        // Pongs first: they are what a watcher is waiting for.
        for (to, beat) in std::mem::take(&mut self.beats_out) {
            seal(&self.mac, heartbeat::VERSION, &beat.encode(), &mut self.frame);
            if let Err(e) = self.socket.send_to(&self.frame, to).await {
                debug!(%to, error = %e, "gossip: heartbeat send failed");
            }
        }
        let mut changed = false;
        let mut pushed = false;
        loop {
            self.send_swim().await;
            let now = Instant::now();
            while let Some((after, timer)) = self.runtime.to_schedule() {
                self.timers.push(now + after, timer);
            }
            let mut down = false;
            while let Some(n) = self.runtime.to_notify() {
                down |= self.on_notification(n);
                changed = true;
            }
            // A member just went down here: tell the others now rather than at the next gossip
            // round, so that every speaker's election sees it at about the same time.
            if down && !pushed {
                pushed = true;
                if let Err(e) = self.foca.gossip(&mut self.runtime) {
                    debug!(error = %e, "gossip: pushing a down member");
                }
                continue;
            }
            break;
        }
        if changed {
            self.publish();
        }
    }

    async fn send_swim(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            seal(&self.mac, WIRE_VERSION, &data, &mut self.frame);
            if let Err(e) = self.socket.send_to(&self.frame, to.addr).await {
                debug!(to = %to.addr, error = %e, "gossip: send failed");
            }
        }
    }

    /// Logs a notification; true when a member went down.
    fn on_notification(&mut self, n: OwnedNotification<SpeakerId>) -> bool {
        {
            match n {
                OwnedNotification::MemberUp(id) => {
                    info!(node = %id.node, addr = %id.addr, "gossip: speaker up");
                }
                OwnedNotification::MemberDown(id) => {
                    info!(node = %id.node, addr = %id.addr, "gossip: speaker down");
                    self.suspected.remove(&id.addr);
                    return true;
                }
                OwnedNotification::Rename(old, new) => {
                    debug!(node = %new.node, old_boot = old.boot, new_boot = new.boot, "gossip: speaker restarted");
                }
                OwnedNotification::Rejoin(id) => {
                    warn!(
                        boot = id.boot,
                        "gossip: peers declared this speaker down; rejoined with a new identity"
                    );
                }
                OwnedNotification::Defunct => warn!("gossip: this speaker was declared down"),
                other => debug!(notification = ?other, "gossip"),
            }
        }
        false
    }

    fn publish(&self) {
        let own = self.foca.identity().node.clone();
        let alive: BTreeSet<String> = self
            .foca
            .iter_members()
            .map(|m| m.id().node.clone())
            .chain([own])
            .collect();
        self.metrics
            .members
            .set(i64::try_from(alive.len()).unwrap_or(i64::MAX));
        self.alive.send_if_modified(|cur| {
            if *cur == alive {
                false
            } else {
                *cur = alive;
                true
            }
        });
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Frames `payload` into `out`: version (1 SWIM, 2 heartbeat), MAC over version and payload, payload.
fn seal(key: &HmacSha256, version: u8, payload: &[u8], out: &mut Vec<u8>) {
    let mut mac = key.clone();
    mac.update(&[version]);
    mac.update(payload);
    out.clear();
    out.push(version);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.extend_from_slice(payload);
}

/// Checks a datagram and returns its version and payload (foca's or a heartbeat), or the rejection
/// reason (a metric label).
fn open<'a>(key: &HmacSha256, datagram: &'a [u8]) -> Result<(u8, &'a [u8]), &'static str> {
    if datagram.len() > MAX_DATAGRAM {
        return Err("oversize");
    }
    if datagram.len() <= HEADER_LEN {
        return Err("truncated");
    }
    let (header, payload) = datagram.split_at(HEADER_LEN);
    let (version, tag) = header.split_at(1);
    if version != [WIRE_VERSION] && version != [heartbeat::VERSION] {
        return Err("bad_version");
    }
    let mut mac = key.clone();
    mac.update(version);
    mac.update(payload);
    // Constant-time comparison.
    mac.verify_slice(tag).map_err(|_| "bad_mac")?;
    Ok((version[0], payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &[u8]) -> HmacSha256 {
        HmacSha256::new_from_slice(k).unwrap()
    }

    #[test]
    fn frames_round_trip_and_rejections() {
        let k = key(b"0123456789abcdef");
        let mut frame = Vec::new();
        seal(&k, WIRE_VERSION, b"hello swim", &mut frame);
        assert_eq!(frame.len(), HEADER_LEN + 10);
        assert_eq!(open(&k, &frame), Ok((WIRE_VERSION, &b"hello swim"[..])));
        let mut beat = Vec::new();
        seal(&k, heartbeat::VERSION, b"beat", &mut beat);
        assert_eq!(open(&k, &beat), Ok((heartbeat::VERSION, &b"beat"[..])));

        let mut tampered = frame.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let mut wrong_version = frame.clone();
        wrong_version[0] = 3;
        // The MAC covers the version: a SWIM frame relabelled as a heartbeat is refused.
        let mut relabelled = frame.clone();
        relabelled[0] = heartbeat::VERSION;
        let other = key(b"fedcba9876543210");
        let table: Vec<(&str, Vec<u8>, &HmacSha256, &str)> = vec![
            ("other key", frame.clone(), &other, "bad_mac"),
            ("tampered payload", tampered, &k, "bad_mac"),
            ("version", wrong_version, &k, "bad_version"),
            ("relabelled", relabelled, &k, "bad_mac"),
            ("header only", frame[..HEADER_LEN].to_vec(), &k, "truncated"),
            ("empty", vec![], &k, "truncated"),
            ("oversize", vec![WIRE_VERSION; MAX_DATAGRAM + 1], &k, "oversize"),
        ];
        for (name, datagram, k, want) in table {
            assert_eq!(open(k, &datagram), Err(want), "{name}");
        }
    }

    #[test]
    fn newer_boot_wins_the_address() {
        let addr: SocketAddr = "192.0.2.1:7946".parse().unwrap();
        let old = SpeakerId {
            node: "n1".into(),
            addr,
            boot: 10,
        };
        let new = old.renew().unwrap();
        assert_eq!(new.boot, 11);
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }

    #[test]
    fn default_timings_make_a_valid_config() {
        let c = foca_config(&Timings::default()).unwrap();
        assert_eq!(c.max_packet_size.get() + HEADER_LEN, MAX_DATAGRAM);
        assert_eq!(c.periodic_gossip.map(|p| p.num_members.get()), Some(3));
        let bad = Timings {
            probe_rtt: Duration::from_millis(300),
            ..Timings::default()
        };
        assert!(matches!(foca_config(&bad), Err(MemberError::InvalidTimings(_))));
        // One lost pong must not look like a death: the silence spans at least two intervals.
        let hasty = Timings {
            heartbeat_timeout: Duration::from_millis(30),
            ..Timings::default()
        };
        assert!(matches!(foca_config(&hasty), Err(MemberError::InvalidTimings(_))));
        // With the fast path off its timings do not matter.
        let off = Timings {
            heartbeat_peers: 0,
            ..hasty
        };
        assert!(foca_config(&off).is_ok());
    }

    #[tokio::test]
    async fn stopped_resolves_when_the_task_dies_and_on_graceful_leave() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tok = CancellationToken::new();
        let m = Membership::start(
            MemberConfig::new("n", bind, vec![1; 32]),
            &Registry::new(),
            tok.clone(),
        )
        .await
        .unwrap();
        // Running: not stopped.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), m.stopped())
                .await
                .is_err()
        );
        m.abort_task();
        let why = tokio::time::timeout(Duration::from_secs(5), m.stopped())
            .await
            .expect("stopped after abort");
        assert!(why.contains("ended unexpectedly"), "{why}");

        let tok = CancellationToken::new();
        let m = Membership::start(
            MemberConfig::new("n", bind, vec![1; 32]),
            &Registry::new(),
            tok.clone(),
        )
        .await
        .unwrap();
        tok.cancel();
        tokio::time::timeout(Duration::from_secs(5), m.stopped())
            .await
            .expect("stopped after leave");
    }

    #[tokio::test]
    async fn bad_config_errors_are_clear() {
        let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let reg = Registry::new();
        let tok = CancellationToken::new();
        let err = Membership::start(MemberConfig::new("n", bind, vec![]), &reg, tok.clone())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "InvalidGossipKey");
        let err = Membership::start(MemberConfig::new("n", bind, vec![1; 8]), &reg, tok.clone())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("8 bytes"), "{err}");

        let taken = std::net::UdpSocket::bind(bind).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = Membership::start(MemberConfig::new("n", addr, vec![1; 32]), &reg, tok.clone())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "GossipBindFailed");
        assert!(
            err.to_string()
                .contains(&format!("is port {} in use", addr.port())),
            "{err}"
        );

        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let err = Membership::start(MemberConfig::new("n", any, vec![1; 32]), &reg, tok)
            .await
            .unwrap_err();
        assert!(matches!(err, MemberError::UnspecifiedAdvertise(_)), "{err}");
    }
}
