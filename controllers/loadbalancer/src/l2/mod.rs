//! The speaker's layer-2 data plane: answers ARP (IPv4) and Neighbor Solicitations (IPv6) for the VIPs
//! this node is elected for, and announces takeovers with gratuitous ARP / unsolicited NA.
//!
//! It never puts a VIP on an interface: kube-proxy delivers the traffic (with IPVS, set `strictARP: true`
//! so the kernel does not also answer for the VIPs on kube-ipvs0).
//!
//! ```text
//!   speaker ── Announcer::set(ip -> InterfaceFilter) ─┐        rtnetlink dump + RTNLGRP_LINK
//!                                                     v                    │  (netlink.rs)
//!                                        Shared{desired, interfaces} <─────┘
//!                                                     │ Plan::compute (iface.rs, pure)
//!                                                     v
//!                                   watch<Arc<Plan>>: ifindex -> {name, MAC, IPs}
//!                       ┌─────────────────────────────┼──────────────────────────────┐
//!                supervisor: one worker per (interface, family) that has IPs to answer
//!                       v                                                            v
//!   arp.rs: AF_PACKET socket, answers who-has,           ndp.rs: ICMPv6 socket, joins solicited-node
//!   gratuitous ARP bursts                                groups, answers NS, unsolicited NA bursts
//! ```
//!
//! Rules the workers keep:
//! - Every request is checked against the *current* plan just before replying, so an IP removed by
//!   `set` is not answered again once `set` has returned (kube-vip kept answering after losing the lease).
//! - The reply carries the MAC of the interface the request arrived on (MetalLB answered with a slave's
//!   or another NIC's MAC on bonded/multi-NIC hosts); bond slaves and bridge ports are never used, their
//!   master is.
//! - A newly announced IP (or a newly eligible interface, or a changed MAC) gets a gratuitous ARP /
//!   unsolicited NA at once and then every 1.1 s for 5 s ([`GRATUITOUS_INTERVAL`], as MetalLB).
//! - A malformed packet is counted (`ferrite_lb_invalid_packets_total`) and logged at debug; a failing
//!   interface is retried by the supervisor without touching the others; a vanished interface's worker
//!   is dropped, which closes its sockets (and leaves its multicast groups).
//! - Everything stops when the last [`Announcer`] handle is dropped or the shutdown token passed to
//!   [`Announcer::start_with_shutdown`] is cancelled.
//!
//! Known limit (shared with MetalLB): the kernel only hands raw ICMPv6 sockets packets addressed to this
//! host, so a unicast NUD probe sent straight to a VIP's address is not seen; the client then falls
//! back to a multicast solicitation (RFC 4861 §7.3.3), which is answered.

mod arp;
mod burst;
pub mod iface;
mod ndp;
mod netlink;
pub mod packet;
mod rawsock;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use iface::{Ineligible, Interface, InterfaceFilter, Plan, eligibility};
pub use packet::MacAddr;

/// Gratuitous ARP / unsolicited NA repeat interval after a takeover (MetalLB: 1.1 s).
pub const GRATUITOUS_INTERVAL: Duration = Duration::from_millis(1100);
/// Gratuitous rounds per takeover: at 0, 1.1, 2.2, 3.3 and 4.4 s, i.e. "every 1.1 s for 5 s".
pub const GRATUITOUS_ROUNDS: u8 = 5;
/// How often the supervisor retries interfaces whose worker failed, and the link list is re-read in full
/// (a safety net for lost netlink notifications).
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// Errors of the layer-2 data plane.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("interface pattern {pattern:?} is invalid: {message}")]
    InterfacePattern { pattern: String, message: String },
    #[error("rtnetlink: {0} (the speaker needs a netlink route socket; is this Linux?)")]
    Netlink(#[source] std::io::Error),
    #[error("listing interfaces over rtnetlink: {0}")]
    LinkDump(#[source] rtnetlink::Error),
    #[error("registering layer-2 metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

impl L2Error {
    /// Short stable reason for metric labels and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            L2Error::InterfacePattern { .. } => "InvalidInterfacePattern",
            L2Error::Netlink(_) | L2Error::LinkDump(_) => "NetlinkFailed",
            L2Error::Metrics(_) => "MetricsRegistration",
        }
    }
}

/// The layer-2 counters (mirroring metallb_layer2_requests_received, _responses_sent, _gratuitous_sent).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    requests: IntCounterVec,
    responses: IntCounterVec,
    gratuitous: IntCounterVec,
    invalid: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, L2Error> {
        let counter = |name: &str, help: &str| -> Result<IntCounterVec, L2Error> {
            let c = IntCounterVec::new(Opts::new(name, help), &["protocol", "interface"])
                .map_err(L2Error::Metrics)?;
            registry.register(Box::new(c.clone())).map_err(L2Error::Metrics)?;
            Ok(c)
        };
        Ok(Metrics {
            requests: counter(
                "ferrite_lb_requests_received_total",
                "ARP requests / Neighbor Solicitations received for an announced IP.",
            )?,
            responses: counter(
                "ferrite_lb_responses_sent_total",
                "ARP replies / Neighbor Advertisements sent.",
            )?,
            gratuitous: counter(
                "ferrite_lb_gratuitous_sent_total",
                "Gratuitous ARP / unsolicited Neighbor Advertisement packets sent on takeover.",
            )?,
            invalid: counter(
                "ferrite_lb_invalid_packets_total",
                "Malformed or invalid ARP/NDP packets ignored.",
            )?,
        })
    }
}

/// Protocol label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    Arp,
    Ndp,
}

impl Family {
    fn label(self) -> &'static str {
        match self {
            Family::Arp => "arp",
            Family::Ndp => "ndp",
        }
    }
    fn of(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Arp,
            IpAddr::V6(_) => Family::Ndp,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    desired: BTreeMap<IpAddr, InterfaceFilter>,
    interfaces: BTreeMap<u32, Interface>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    plan: watch::Sender<Arc<Plan>>,
    metrics: Metrics,
}

impl Shared {
    /// Applies `f` to the state and publishes the new plan, under one lock so that concurrent `set`s and
    /// link changes cannot publish plans out of order.
    fn update(&self, f: impl FnOnce(&mut State)) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut st);
        let plan = Plan::compute(&st.interfaces, &st.desired);
        self.plan.send_if_modified(|cur| {
            if **cur == plan {
                return false;
            }
            tracing::debug!(announced = ?plan.announced(), "layer-2 plan changed");
            *cur = Arc::new(plan);
            true
        });
    }
}

/// Context handed to each per-interface worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCtx {
    ifindex: u32,
    name: String,
    plan: watch::Receiver<Arc<Plan>>,
    metrics: Metrics,
    stop: CancellationToken,
}

impl WorkerCtx {
    /// The MAC to answer `ip` with on this interface, read from the current plan (per packet).
    fn answers(&self, ip: IpAddr) -> Option<MacAddr> {
        self.plan.borrow().answers(self.ifindex, ip)
    }

    fn count(&self, which: &IntCounterVec, family: Family) {
        which
            .with_label_values(&[family.label(), self.name.as_str()])
            .inc();
    }
}

/// Handle to the layer-2 announcer. Cheap to clone; the background tasks stop when the last clone is
/// dropped (or the shutdown token is cancelled).
#[derive(Debug, Clone)]
pub struct Announcer {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

impl Announcer {
    /// Registers the metrics in `metrics`, lists the interfaces over rtnetlink and starts following link
    /// changes. Nothing is announced until [`Announcer::set`]. Must run inside a Tokio runtime.
    pub async fn start(metrics: &Registry) -> Result<Announcer, L2Error> {
        Announcer::start_with_shutdown(metrics, CancellationToken::new()).await
    }

    /// Like [`Announcer::start`], and also stops everything when `shutdown` is cancelled.
    pub async fn start_with_shutdown(
        metrics: &Registry,
        shutdown: CancellationToken,
    ) -> Result<Announcer, L2Error> {
        let metrics = Metrics::register(metrics)?;
        let (plan, _) = watch::channel(Arc::new(Plan::default()));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            plan,
            metrics,
        });
        let stop = shutdown.child_token();
        let links = netlink::LinkFollower::connect().await?;
        let first = links.dump().await?;
        shared.update(|st| st.interfaces = first);
        tokio::spawn(links.run(shared.clone(), stop.clone()));
        tokio::spawn(supervise(shared.clone(), stop.clone()));
        Ok(Announcer {
            shared,
            _stop: Arc::new(stop.drop_guard()),
        })
    }

    /// Replaces the whole announced set. IPs no longer present stop being answered before this returns;
    /// new ones are announced with gratuitous ARP / unsolicited NA right away, then every 1.1 s for 5 s.
    pub fn set(&self, desired: BTreeMap<IpAddr, InterfaceFilter>) {
        self.shared.update(|st| st.desired = desired);
    }

    /// The plan, to be told when it changes: by [`Announcer::set`], or because an interface came, went
    /// or changed (the speaker then looks again at which interfaces each address is answered on).
    pub fn plan_changes(&self) -> watch::Receiver<Arc<Plan>> {
        self.shared.plan.subscribe()
    }

    /// ip -> names of the interfaces it is answered on right now. An IP of the desired set that is missing
    /// here has no eligible interface on this node.
    pub fn announced(&self) -> BTreeMap<IpAddr, Vec<String>> {
        self.shared.plan.borrow().announced()
    }

    /// The interfaces as last reported by the kernel, with why each is or is not eligible for `filter`.
    pub fn interfaces(&self, filter: &InterfaceFilter) -> Vec<(Interface, Result<(), Ineligible>)> {
        let st = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.interfaces
            .values()
            .map(|i| (i.clone(), eligibility(i, filter)))
            .collect()
    }
}

/// Aborts the task when dropped, so removing a worker from the map closes its sockets.
#[derive(Debug)]
struct Worker {
    name: String,
    task: JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Keeps one worker per (interface, family) that has IPs to answer, restarting failed ones.
async fn supervise(shared: Arc<Shared>, stop: CancellationToken) {
    let mut plan_rx = shared.plan.subscribe();
    let mut workers: BTreeMap<(u32, Family), Worker> = BTreeMap::new();
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let plan = plan_rx.borrow_and_update().clone();
        let wanted: BTreeSet<(u32, Family)> = plan
            .by_ifindex
            .iter()
            .flat_map(|(ix, p)| p.ips.iter().map(move |ip| (*ix, Family::of(ip))))
            .collect();
        workers.retain(|key, w| {
            let keep = wanted.contains(key) && plan.by_ifindex.get(&key.0).is_some_and(|p| p.name == w.name);
            if !keep {
                tracing::info!(interface = %w.name, protocol = key.1.label(), "stopped answering on interface");
            }
            keep
        });
        for key @ (ifindex, family) in wanted {
            if workers.get(&key).is_some_and(|w| !w.task.is_finished()) {
                continue;
            }
            let Some(p) = plan.by_ifindex.get(&ifindex) else {
                continue;
            };
            let ctx = WorkerCtx {
                ifindex,
                name: p.name.clone(),
                plan: shared.plan.subscribe(),
                metrics: shared.metrics.clone(),
                stop: stop.clone(),
            };
            tracing::info!(interface = %p.name, mac = %p.mac, protocol = family.label(), "answering on interface");
            let task = match family {
                Family::Arp => tokio::spawn(arp::run(ctx)),
                Family::Ndp => tokio::spawn(ndp::run(ctx)),
            };
            workers.insert(
                key,
                Worker {
                    name: p.name.clone(),
                    task,
                },
            );
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = plan_rx.changed() => if changed.is_err() { break },
            _ = retry.tick() => {}
        }
    }
}
