//! The speaker: decides which VIPs this node announces and hands them to the layer-2 announcer.
//!
//! ```text
//!   Services ─┐                                         ┌─> l2::Announcer::set(ip -> interfaces)
//!   Nodes ────┤                                         │     (answers ARP/NDP, GARP/NA on takeover)
//!   EndpointSlices (v1 | v1beta1) ──> step() ──> election::elect per Service
//!   IPPools + L2Advertisements ┤                 ^      └─> ApiQueue (bounded, latest wins) ─> one task:
//!   ServiceL2Statuses (owners) ┘                 │          ServiceL2Status apply / delete,
//!   member::Membership (SWIM gossip: live speakers) ┘         Events, each call with a timeout
//! ```
//! Every input change (or a tick every second, as a safety net) recomputes the whole desired set;
//! the computation is pure and cheap (one sha256 per Service and node). The speaker is not
//! leader-elected: every node decides for itself, and all decide alike because they see the same
//! objects and the same gossip view. The owner recorded in the Service's `ServiceL2Status` keeps the IP
//! while it stays eligible, so a recovered node does not take it back (no flip-back).
//!
//! # Who announces: ServiceL2Status
//! The speaker that announces a Service applies (server-side apply, field manager
//! `lb.ferrite.dev/speaker`) a `ServiceL2Status` in the Service's namespace, named like the Service,
//! owned by it (owner reference: deleting the Service deletes it) and labelled with
//! `lb.ferrite.dev/service-name` and `lb.ferrite.dev/node`. When it stops announcing it deletes it,
//! with the object's `resourceVersion` as precondition, and only while it still names this node (a
//! peer that took over has rewritten it). On graceful shutdown it deletes every one naming it. The
//! speaker never writes Services.
//!
//! # Never waiting on the API server
//! [`Speaker::step`] does no I/O: it reads the watch caches and the gossip view, sets the announcer and
//! *enqueues* what it wants written (claims, Events) in [`ApiQueue`]. One background task drains the
//! queue, each call bounded by [`API_CALL_TIMEOUT`]. So a stalled or half-open connection to the API
//! server delays the ServiceL2Status and the Events, never the ARP/NDP answers or a takeover after a
//! peer's death (gossip alone decides that). The queue holds one entry per (kind, Service): a newer
//! claim or Event replaces a pending one, a claim this node no longer wins is withdrawn, and past
//! [`API_QUEUE_CAPACITY`] entries new ones are dropped and counted.
//!
//! # Fatal: a dead gossip task
//! With gossip gone this node's view of who is alive is frozen while its peers, no longer hearing it,
//! take its addresses over: two nodes would answer. So the speaker stops announcing at once, marks
//! `/livez` failed ("gossip task: ..."), and exits non-zero after [`GOSSIP_FAILURE_EXIT_DELAY`].
//!
//! # Inputs gate the first election
//! Nothing is elected before every watch the step reads (Services, IPPools, L2Advertisements,
//! ServiceL2Statuses, Nodes, EndpointSlices, node Leases) has its first full list: before the IPPools are known every address would look
//! out-of-pool, and before the Nodes are known every peer would look dead.
//!
//! # Only pool addresses
//! An address is announced only if an IPPool contains it. Anyone who can write `services/status`
//! could otherwise make every node answer for the gateway's address. An address outside every pool
//! gets one Warning Event `NotAnnounced` per (Service, address), from one speaker (the best-ranked
//! live node for the address, so the fleet does not repeat it).

use crate::{
    addr::PoolAddresses,
    election::{self, Advertisement, NodeInfo, ServiceView},
    l2::{Announcer, InterfaceFilter},
    member::{MemberConfig, Membership},
    service::{self, Classes},
};
use anyhow::Context as _;
use ferrite_api::{
    lb::{IPPool, L2Advertisement, NODE_LABEL, SERVICE_NAME_LABEL, ServiceL2Status},
    names,
};
use ferrite_kit::{
    App,
    endpointslice::{Slice, SliceVersion},
    events::Events,
    kube::{
        Api, Client, Resource, ResourceExt,
        api::{DeleteParams, DynamicObject, Preconditions},
        runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
    },
};
use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, ObjectReference, Secret, Service},
};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Options of the speaker.
#[derive(clap::Args, Clone, Debug)]
pub struct SpeakerArgs {
    /// Name of this node (the downward API's spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,

    /// `loadBalancerClass` served (the allocator's `--lb-class`).
    #[arg(long, env = "FERRITE_LB_CLASS", default_value = ferrite_api::lb::DEFAULT_LOAD_BALANCER_CLASS)]
    pub lb_class: String,

    /// Announce Services without a `loadBalancerClass` too (this is the cluster's default load
    /// balancer, MetalLB's rule; the allocator's `--default-class`). `--default-class=false` beside
    /// another load balancer that is the default.
    #[arg(long, env = "FERRITE_LB_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,

    /// UDP port of the gossip between speakers.
    #[arg(long, env = "FERRITE_GOSSIP_PORT", default_value_t = 7946)]
    pub gossip_port: u16,

    /// Address to bind the gossip socket to (defaults to the node's InternalIP).
    #[arg(long, env = "FERRITE_GOSSIP_BIND")]
    pub gossip_bind: Option<IpAddr>,

    /// Secret (in the speaker's namespace) whose key `key` authenticates gossip.
    #[arg(long, env = "FERRITE_GOSSIP_SECRET", default_value = "ferrite-lb-gossip")]
    pub gossip_secret: String,

    /// After start, announce only the Services whose ServiceL2Status already names this node, for this
    /// long: the gossip view needs a moment to fill, and a speaker that saw only itself would claim every
    /// address (a restarted fleet would flap).
    #[arg(long, env = "FERRITE_STARTUP_GRACE", value_parser = ferrite_kit::cli::parse_duration, default_value = "3s")]
    pub startup_grace: Duration,

    /// Namespace of the gossip Secret (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrite-system")]
    pub namespace: String,

    /// Heartbeat fast path of failure detection: how often each watched peer is pinged. With the
    /// defaults a dead speaker is detected in about 0.2 s and a live one may stall for about 0.2 s
    /// without being taken for dead; raise the three durations together on nodes whose speaker is often
    /// starved of CPU (see docs/loadbalancer.md, "Liveness").
    #[arg(long, env = "FERRITE_HEARTBEAT_INTERVAL", value_parser = ferrite_kit::cli::parse_duration, default_value = "20ms")]
    pub heartbeat_interval: Duration,

    /// Silence (no answer to a heartbeat) after which a peer is suspected; at least two intervals.
    #[arg(long, env = "FERRITE_HEARTBEAT_TIMEOUT", value_parser = ferrite_kit::cli::parse_duration, default_value = "100ms")]
    pub heartbeat_timeout: Duration,

    /// How long a peer suspected for its silence may refute before it is declared down.
    #[arg(long, env = "FERRITE_HEARTBEAT_SUSPECT_TO_DOWN", value_parser = ferrite_kit::cli::parse_duration, default_value = "100ms")]
    pub heartbeat_suspect_to_down: Duration,

    /// How many peers each speaker watches by heartbeats (its successors in the ring of node names);
    /// 0 turns the fast path off and leaves detection to SWIM's probes (about 1 s).
    #[arg(long, env = "FERRITE_HEARTBEAT_PEERS", default_value_t = 3)]
    pub heartbeat_peers: usize,

    /// Fault injection for tests and drills: SIGUSR1 aborts the gossip task, as if it had died (the
    /// speaker then stops announcing, fails /livez and exits non-zero). Off by default.
    #[arg(long, env = "FERRITE_FAULT_GOSSIP_SIGUSR1", default_value_t = false)]
    pub fault_gossip_sigusr1: bool,
}

/// Longest wait for one API call of the background queue (a ServiceL2Status write or delete, an Event).
pub const API_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Most entries the background queue holds; past it new entries are dropped (and counted).
pub const API_QUEUE_CAPACITY: usize = 4096;

/// Pause before a failed or timed-out write is tried again (unless a newer one replaced it, or it is a
/// claim this node no longer wins).
pub const API_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How long a speaker whose gossip task died keeps running (not announcing, `/livez` failing) before
/// it exits, so a scrape or a probe can see why.
pub const GOSSIP_FAILURE_EXIT_DELAY: Duration = Duration::from_secs(2);

/// Runs the speaker until shutdown.
pub async fn run(app: App, args: SpeakerArgs) -> anyhow::Result<()> {
    let client = app.client.clone();
    let me = args.node_name.clone();
    anyhow::ensure!(
        !me.is_empty(),
        "--node-name (NODE_NAME) is empty: set it from spec.nodeName"
    );

    let nodes_api: Api<Node> = Api::all(client.clone());
    let my_node = nodes_api
        .get_opt(&me)
        .await?
        .with_context(|| format!("Node {me:?} does not exist: --node-name must be this node's name"))?;
    let my_ip = args
        .gossip_bind
        .or_else(|| internal_ip(&my_node))
        .with_context(|| format!("Node {me} has no InternalIP address; pass --gossip-bind"))?;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    // The Secret may not exist yet: with the chart's defaults the controller creates it when it first
    // leads. Wait for it (saying why) instead of crash-looping.
    let mut waited = None;
    let secret = loop {
        if let Some(s) = secrets.get_opt(&args.gossip_secret).await? {
            break s;
        }
        if waited.is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(30)) {
            tracing::warn!(
                secret = %format!("{}/{}", args.namespace, args.gossip_secret),
                "waiting for the gossip Secret (the controller creates it when missing, or create it once: docs/loadbalancer.md)"
            );
            waited = Some(tokio::time::Instant::now());
        }
        tokio::select! {
            _ = app.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let key = secret
        .data
        .as_ref()
        .and_then(|d| d.get("key"))
        .map(|b| b.0.clone())
        .with_context(|| {
            format!(
                "gossip Secret {}/{} has no key \"key\"",
                args.namespace, args.gossip_secret
            )
        })?;

    let bind = SocketAddr::new(my_ip, args.gossip_port);
    let mut member_config = MemberConfig::new(me.clone(), bind, key);
    member_config.timings.heartbeat_interval = args.heartbeat_interval;
    member_config.timings.heartbeat_timeout = args.heartbeat_timeout;
    member_config.timings.heartbeat_suspect_to_down = args.heartbeat_suspect_to_down;
    member_config.timings.heartbeat_peers = args.heartbeat_peers;
    let membership = Membership::start(member_config, &app.registry, app.shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let announcer = Announcer::start_with_shutdown(&app.registry, app.shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let announced_metric = IntGaugeVec::new(
        Opts::new("ferrite_lb_announced", "1 for each address this node announces."),
        &["ip", "node"],
    )?;
    app.registry.register(Box::new(announced_metric.clone()))?;
    let speaker_announced = IntGaugeVec::new(
        Opts::new(
            "ferrite_lb_speaker_announced",
            "1 for each (Service, address) this node announces (MetalLB's metallb_speaker_announced).",
        ),
        &["service", "protocol", "node", "ip"],
    )?;
    app.registry.register(Box::new(speaker_announced.clone()))?;
    let shutdown_client = client.clone();
    let writes = ApiQueue::start(
        &app.registry,
        ApiWriter {
            me: me.clone(),
            client: client.clone(),
            events: app.events(names::LB_SPEAKER_REPORTER),
            leadership: app.leadership.clone(),
        },
        app.shutdown.clone(),
    )?;
    if args.fault_gossip_sigusr1 {
        tracing::warn!("fault injection on: SIGUSR1 aborts the gossip task");
    }

    let wake = Arc::new(Notify::new());
    let services = watch_store::<Service>(&app, Api::all(client.clone()), "services", wake.clone());
    let nodes = watch_store::<Node>(&app, nodes_api, "nodes", wake.clone());
    let pools = watch_store::<IPPool>(&app, Api::all(client.clone()), "ippools", wake.clone());
    let advertisements =
        watch_store::<L2Advertisement>(&app, Api::all(client.clone()), "l2advertisements", wake.clone());
    let statuses =
        watch_store::<ServiceL2Status>(&app, Api::all(client.clone()), "servicel2statuses", wake.clone());
    let node_leases = watch_store::<Lease>(
        &app,
        Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        "node leases",
        wake.clone(),
    );
    let version = SliceVersion::detect(&client).await?;
    let ar = version.api_resource();
    let writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
    let slices = writer.as_reader();
    {
        let wake = wake.clone();
        let stream = reflector::reflector(
            writer,
            watcher(version.api_all(client.clone()), Default::default()),
        )
        .default_backoff()
        .touched_objects();
        app.readiness
            .gate("watch endpointslices")
            .open_when_synced(slices.clone());
        tokio::spawn(stream.for_each(move |_| {
            wake.notify_one();
            async {}
        }));
    }
    {
        let wake = wake.clone();
        let mut alive = membership.alive();
        tokio::spawn(async move {
            while alive.changed().await.is_ok() {
                wake.notify_one();
            }
        });
    }

    let speaker = Speaker {
        me: me.clone(),
        policy: Classes {
            class: args.lb_class,
            default_class: args.default_class,
        },
        writes,
        announcer,
        membership,
        announced_metric,
        speaker_announced,
        services,
        nodes,
        pools,
        advertisements,
        statuses,
        node_leases,
        slices,
        gossip_port: args.gossip_port,
        grace_until: tokio::time::Instant::now() + args.startup_grace,
    };
    tracing::info!(node = %me, gossip = %bind, "speaker starting");
    let gossip_stopped = speaker.membership.stopped();
    tokio::pin!(gossip_stopped);
    // Registered now, so that from here on SIGUSR1 never takes its default action (ending the process).
    let mut sigusr1 = if args.fault_gossip_sigusr1 {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
                .context("listening for SIGUSR1 (--fault-gossip-sigusr1)")?,
        )
    } else {
        None
    };

    // The first election waits for every input it reads (module docs).
    let synced = async {
        ferrite_kit::admin::wait_synced(&speaker.services).await
            && ferrite_kit::admin::wait_synced(&speaker.pools).await
            && ferrite_kit::admin::wait_synced(&speaker.advertisements).await
            && ferrite_kit::admin::wait_synced(&speaker.statuses).await
            && ferrite_kit::admin::wait_synced(&speaker.nodes).await
            && ferrite_kit::admin::wait_synced(&speaker.slices).await
            && ferrite_kit::admin::wait_synced(&speaker.node_leases).await
    };
    let why = tokio::select! {
        _ = app.shutdown.cancelled() => None,
        why = &mut gossip_stopped => Some(why),
        ok = synced => {
            if !ok {
                anyhow::bail!("a watch of the speaker stopped before its first list");
            }
            tracing::info!("every watch listed: electing");
            let mut state = Announced::default();
            let mut fault_fired = false;
            // `ferrite_lb_speaker_reconcile_*{kind="Announcement"}`: one per recompute of what this node
            // announces (a step cannot fail: what it cannot do becomes an Event or a metric).
            let reconciles = app.reconcile_metrics().for_kind("Announcement");
            // Pacing (crate::pacing): after a round that took d the next waits until 9·d has passed
            // (at most 1 s), so rounds use at most 1/10 of a core; a gossip view change ends the wait.
            let pacer = crate::pacing::speaker(std::env::var(crate::pacing::IDLE_PER_BUSY_ENV).ok().as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            let mut alive_changes = speaker.membership.alive();
            loop {
                let started = tokio::time::Instant::now();
                speaker.step(&mut state);
                let took = started.elapsed();
                reconciles.success(took);
                let next_round = tokio::time::Instant::now() + pacer.gap(took);
                tokio::select! {
                    _ = app.shutdown.cancelled() => break None,
                    why = &mut gossip_stopped => break Some(why),
                    Some(()) = async {
                        match sigusr1.as_mut() {
                            Some(s) => s.recv().await,
                            None => std::future::pending().await,
                        }
                    }, if !fault_fired => {
                        fault_fired = true;
                        tracing::warn!("SIGUSR1 (fault injection): aborting the gossip task");
                        speaker.membership.abort_task();
                    }
                    _ = wake.notified() => {}
                    // Safety net, and the end of the startup grace.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                tokio::select! {
                    _ = app.shutdown.cancelled() => break None,
                    why = &mut gossip_stopped => break Some(why),
                    _ = alive_changes.changed() => {}
                    _ = tokio::time::sleep_until(next_round) => {}
                }
            }
        }
    };
    // Stop answering before the process goes away. On a graceful shutdown the token that ended the loop
    // also made the gossip task send its leave and stopped the announcer's workers, at the same moment;
    // this also empties the plan for any worker still finishing. Then the ServiceL2Statuses naming
    // this node go (bounded; a peer that takes over rewrites them anyway).
    speaker.announcer.set(BTreeMap::new());
    speaker.release_all(&shutdown_client).await;
    if let Some(why) = why.filter(|_| !app.shutdown.is_cancelled()) {
        // A frozen membership view while the peers take over would make two nodes answer: stop
        // announcing (above), say so on /livez, then exit so the node's pod is restarted.
        app.liveness.fail("gossip task", format!("stopped: {why}"));
        tracing::error!(%why, delay = ?GOSSIP_FAILURE_EXIT_DELAY, "gossip task stopped: not announcing; exiting");
        tokio::time::sleep(GOSSIP_FAILURE_EXIT_DELAY).await;
        app.shutdown.cancel();
        anyhow::bail!("gossip task stopped: {why}");
    }
    app.finish().await;
    Ok(())
}

fn watch_store<K>(app: &App, api: Api<K>, name: &str, wake: Arc<Notify>) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    // managedFields are large and unused here: drop them before they reach the cache.
    let stream = reflector::reflector(
        writer,
        watcher(api, Default::default()).modify(|o| o.meta_mut().managed_fields = None),
    )
    .default_backoff()
    .touched_objects();
    app.readiness
        .gate(format!("watch {name}"))
        .open_when_synced(store.clone());
    tokio::spawn(stream.for_each(move |_| {
        wake.notify_one();
        async {}
    }));
    store
}

fn internal_ip(node: &Node) -> Option<IpAddr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .find(|a| a.type_ == "InternalIP")
        .and_then(|a| a.address.parse().ok())
}

struct Speaker {
    me: String,
    policy: Classes,
    writes: ApiQueue,
    announcer: Announcer,
    membership: Membership,
    announced_metric: IntGaugeVec,
    speaker_announced: IntGaugeVec,
    services: Store<Service>,
    nodes: Store<Node>,
    pools: Store<IPPool>,
    advertisements: Store<L2Advertisement>,
    statuses: Store<ServiceL2Status>,
    node_leases: Store<Lease>,
    slices: Store<DynamicObject>,
    gossip_port: u16,
    grace_until: tokio::time::Instant,
}

/// What this node announced after the last step: Service -> its IPs.
#[derive(Default, Debug)]
struct Announced {
    services: BTreeMap<(String, String), Vec<IpAddr>>,
    peers: BTreeSet<SocketAddr>,
    /// When this speaker last recorded itself as a Service's announcer. During a partition two speakers
    /// may both win; this keeps them from rewriting the ServiceL2Status back and forth on every event.
    claimed: BTreeMap<(String, String), tokio::time::Instant>,
    /// When this node started announcing each Service (the ServiceL2Status's `since`).
    since: BTreeMap<(String, String), jiff::Timestamp>,
    /// When a delete of a ServiceL2Status naming this node (that it no longer announces) was queued.
    released: BTreeMap<(String, String), tokio::time::Instant>,
    /// (advertisement, node-specific problem) already reported, while it persists.
    warned_interfaces: BTreeSet<(String, String)>,
    /// Nodes gossip has shown alive at least once since this speaker started.
    ever_seen: BTreeSet<String>,
    /// (namespace, name, address) outside every pool that a Warning Event was queued for.
    warned_out_of_pool: BTreeSet<(String, String, IpAddr)>,
    /// Advertisement errors already logged and reported (their text), while they persist.
    warned_advertisements: BTreeSet<String>,
    /// The startup grace has ended (logged once).
    grace_over: bool,
}

/// Where kubelets keep their node Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// How stale a kubelet Lease may be before the node counts as gone (kube-controller-manager's
/// node-monitor-grace-period default).
const NODE_LEASE_GRACE: jiff::SignedDuration = jiff::SignedDuration::from_secs(40);

/// The fallback signal: the Node's Ready condition is True and, when the node has a kubelet Lease, the
/// Lease was renewed within [`NODE_LEASE_GRACE`].
fn node_healthy(node: &Node, lease: Option<&Lease>, now: jiff::Timestamp) -> bool {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let lease_fresh = match lease.and_then(|l| l.spec.as_ref()) {
        None => true, // no kubelet Lease (old or kubelet-less clusters): Ready alone decides
        Some(spec) => spec
            .renew_time
            .as_ref()
            .is_some_and(|t| now.duration_since(t.0) <= NODE_LEASE_GRACE),
    };
    ready && lease_fresh
}

/// How often a speaker may re-record itself as a Service's announcer.
const CLAIM_INTERVAL: Duration = Duration::from_secs(30);

/// How long after queueing the delete of a ServiceL2Status it still sees naming this node a speaker
/// queues it again.
const RELEASE_INTERVAL: Duration = Duration::from_secs(5);

/// Longest wait for the deletes of this node's ServiceL2Statuses on graceful shutdown.
const SHUTDOWN_RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// A parsed pool: its addresses and its advertisements (none: allocate-only).
struct PoolL2 {
    addresses: PoolAddresses,
    advertisements: Vec<Advertisement>,
}

/// One address (or one set of addresses) and the Services that use it. Services sharing an address
/// (allow-shared-ip) are elected together, so one node answers for it.
struct Group {
    services: Vec<Arc<Service>>,
    ips: Vec<IpAddr>,
}

impl Speaker {
    /// Every parsable pool with its advertisements, and the advertisements that cannot be used (with
    /// the object to report them on).
    fn pools(&self) -> (Vec<PoolL2>, Vec<(ObjectReference, election::AdvertisementError)>) {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        for a in self.advertisements.state() {
            match election::parse_advertisement(&a) {
                Ok(p) => parsed.push(p),
                Err(e) => errors.push((a.object_ref(&()), e)),
            }
        }
        let pools = self
            .pools
            .state()
            .iter()
            .filter_map(|p| {
                // The allocator reports an unparsable pool in its status; it hands out nothing from it.
                let addresses = PoolAddresses::parse(&p.spec.addresses).ok()?;
                let (advertisements, error) = election::pool_advertisements(p, &parsed);
                if let Some(e) = error {
                    errors.push((p.object_ref(&()), e));
                }
                Some(PoolL2 {
                    addresses,
                    advertisements,
                })
            })
            .collect();
        (pools, errors)
    }

    /// One election round: pure computation, the announcer set, writes queued. Never awaits.
    fn step(&self, prev: &mut Announced) {
        // Speakers find each other through the Nodes' InternalIPs.
        let peers: BTreeSet<SocketAddr> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| internal_ip(n).map(|ip| SocketAddr::new(ip, self.gossip_port)))
            .collect();
        if peers != prev.peers {
            self.membership.join(peers.iter().copied());
            prev.peers = peers;
        }

        let alive = self.membership.alive().borrow().clone();
        prev.ever_seen.extend(alive.iter().cloned());
        let node_objs = self.nodes.state();
        // Bounded by the cluster's Nodes: names of deleted Nodes (autoscaling) are forgotten.
        if prev.ever_seen.len() > node_objs.len() {
            let names: BTreeSet<String> = node_objs.iter().map(|n| n.name_any()).collect();
            prev.ever_seen.retain(|n| names.contains(n) || alive.contains(n));
        }
        let nodes: Vec<NodeInfo> = node_objs.iter().map(|n| node_info(n, &alive)).collect();
        let (pools, ad_errors) = self.pools();
        self.report_advertisement_errors(&ad_errors, &alive, prev);
        let my_labels = node_objs
            .iter()
            .find(|n| n.name_any() == self.me)
            .map(|n| n.labels().clone())
            .unwrap_or_default();
        let mut slices_by_service: BTreeMap<(String, String), Vec<Slice>> = BTreeMap::new();
        for obj in self.slices.state() {
            let s = Slice::from_dynamic(&obj);
            if let Some(svc) = s.service.clone() {
                slices_by_service
                    .entry((s.namespace.clone(), svc))
                    .or_default()
                    .push(s);
            }
        }

        // Group Services by their first address (the ranking key), oldest first.
        let mut groups: BTreeMap<IpAddr, Group> = BTreeMap::new();
        let mut services: Vec<Arc<Service>> = self
            .services
            .state()
            .into_iter()
            .filter(|s| self.policy.serves(s))
            .collect();
        services.sort_by_key(|s| {
            (
                s.metadata.creation_timestamp.as_ref().map(|t| t.0),
                s.namespace(),
                s.name_any(),
            )
        });
        for svc in services {
            let ips = service::current_ips(&svc);
            let Some(first) = ips.first().copied() else {
                continue;
            };
            let g = groups.entry(first).or_insert_with(|| Group {
                services: vec![],
                ips: vec![],
            });
            for ip in ips {
                if !g.ips.contains(&ip) {
                    g.ips.push(ip);
                }
            }
            g.services.push(svc);
        }

        let converging = tokio::time::Instant::now() < self.grace_until;
        if !converging && !prev.grace_over {
            prev.grace_over = true;
            tracing::info!("startup grace over: electing every Service");
        }
        let mut desired: BTreeMap<IpAddr, InterfaceFilter> = BTreeMap::new();
        // The advertisements each desired address is announced through (Events about interfaces).
        let mut sources: BTreeMap<IpAddr, Vec<election::AdvertisementSource>> = BTreeMap::new();
        let mut mine: BTreeMap<(String, String), (Arc<Service>, Vec<IpAddr>)> = BTreeMap::new();
        let mut out_of_pool_now: BTreeSet<(String, String, IpAddr)> = BTreeSet::new();
        // Services some live node is elected for (its speaker records them).
        let mut won_by_someone: BTreeSet<(String, String)> = BTreeSet::new();
        for (first, group) in &groups {
            // Only addresses an IPPool contains are announced (module docs); the others are reported.
            let (in_pool, outside): (Vec<IpAddr>, Vec<IpAddr>) = group
                .ips
                .iter()
                .partition(|ip| pools.iter().any(|p| p.addresses.contains(**ip)));
            // Not while converging: a speaker that sees only itself would rank itself first and
            // repeat a Warning its peers already gave.
            if !outside.is_empty() && !converging {
                self.report_out_of_pool(group, &outside, &alive, &node_objs, prev, &mut out_of_pool_now);
            }
            // The pool of the first announced address decides the advertisements (and so the node
            // selectors), as its first address decides the ranking.
            let Some(pool) = in_pool
                .first()
                .and_then(|ip| pools.iter().find(|p| p.addresses.contains(*ip)))
            else {
                continue;
            };
            let service_labels: Vec<&BTreeMap<String, String>> =
                group.services.iter().map(|s| s.labels()).collect();
            let announcing = election::announcing(&pool.advertisements, &service_labels);
            if announcing.is_empty() {
                // Allocate-only pool, or no advertisement's serviceSelectors match: nobody announces.
                continue;
            }
            let slices: Vec<&Slice> = group
                .services
                .iter()
                .filter_map(|s| slices_by_service.get(&(s.namespace().unwrap_or_default(), s.name_any())))
                .flatten()
                .collect();
            let oldest = &group.services[0];
            let view = ServiceView {
                ips: group.ips.clone(),
                local_traffic_policy: oldest
                    .spec
                    .as_ref()
                    .and_then(|s| s.external_traffic_policy.as_deref())
                    == Some("Local"),
                ready_endpoint_nodes: slices
                    .iter()
                    .flat_map(|s| s.serving_nodes().map(String::from))
                    .collect(),
                has_serving_endpoint: slices.iter().any(|s| s.has_serving()),
                // The recorded owner of the group: the oldest Service whose ServiceL2Status names one.
                current_owner: group.services.iter().find_map(|s| {
                    let key = (s.namespace().unwrap_or_default(), s.name_any());
                    self.status_of(&key).map(|st| st.spec.node.clone())
                }),
                node_selectors: announcing.iter().map(|a| a.node_selectors.clone()).collect(),
            };
            // Fallback liveness for the recorded owner when gossip cannot tell: a node this speaker has
            // never seen in gossip (UDP blocked between some nodes, or we just restarted) keeps its
            // addresses while its Node is Ready and its kubelet Lease is fresh. A node gossip has seen
            // and then lost is dead at once (the fast path).
            let owner_by_fallback = view.current_owner.as_ref().filter(|o| {
                !alive.contains(*o)
                    && !prev.ever_seen.contains(*o)
                    && node_objs.iter().find(|n| n.name_any() == **o).is_some_and(|n| {
                        let lease = self
                            .node_leases
                            .get(&reflector::ObjectRef::new(o).within(NODE_LEASE_NAMESPACE));
                        node_healthy(n, lease.as_deref(), jiff::Timestamp::now())
                    })
            });
            let with_fallback: Vec<NodeInfo>;
            let nodes = match owner_by_fallback {
                Some(o) => {
                    with_fallback = nodes
                        .iter()
                        .cloned()
                        .map(|mut n| {
                            if &n.name == o {
                                n.speaker_alive = true;
                            }
                            n
                        })
                        .collect();
                    &with_fallback
                }
                None => &nodes,
            };
            let result = election::elect(&view, nodes);
            if let Ok(Some(_)) = &result {
                for svc in &group.services {
                    won_by_someone.insert((svc.namespace().unwrap_or_default(), svc.name_any()));
                }
            }
            match result {
                Ok(Some(winner))
                    if winner == self.me
                        && (!converging || view.current_owner.as_deref() == Some(&self.me)) =>
                {
                    for ip in &in_pool {
                        // Each address on the interfaces its own pool's advertisements give this node.
                        let Some(p) = pools.iter().find(|p| p.addresses.contains(*ip)) else {
                            continue;
                        };
                        let ads = election::announcing(&p.advertisements, &service_labels);
                        let Some(patterns) = election::interfaces_on(&ads, &my_labels) else {
                            continue;
                        };
                        // Validated with the advertisement; a failure here cannot happen, but would
                        // only leave the address unannounced.
                        match InterfaceFilter::new(patterns) {
                            Ok(f) => {
                                desired.insert(*ip, f);
                                sources.insert(*ip, ads.iter().map(|a| a.source.clone()).collect());
                            }
                            Err(e) => tracing::warn!(%ip, error = %e, "interfaces invalid; not announcing"),
                        }
                    }
                    for svc in &group.services {
                        let ips: Vec<IpAddr> = service::current_ips(svc)
                            .into_iter()
                            .filter(|ip| desired.contains_key(ip))
                            .collect();
                        if ips.is_empty() {
                            continue;
                        }
                        mine.insert(
                            (svc.namespace().unwrap_or_default(), svc.name_any()),
                            (svc.clone(), ips),
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(ip = %first, error = %e, "an advertisement's nodeSelector is invalid")
                }
            }
        }
        self.announcer.set(desired.clone());
        prev.warned_out_of_pool.retain(|k| out_of_pool_now.contains(k));

        // Record ownership, tell people, keep the metric: all through the background queue.
        let announced_on = self.announcer.announced();
        self.report_interface_problems(&desired, &announced_on, &sources, prev);
        // The Services recorded as announced here: won, and answered on at least one interface (as
        // MetalLB, an elected node with no matching interface announces nothing and records nothing).
        let interfaces_of = |ips: &[IpAddr]| -> BTreeSet<String> {
            ips.iter()
                .filter_map(|ip| announced_on.get(ip))
                .flatten()
                .cloned()
                .collect()
        };
        let recorded: BTreeSet<(String, String)> = mine
            .iter()
            .filter(|(_, (_, ips))| !interfaces_of(ips).is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        self.writes.set_wanted(recorded.clone());
        let now = tokio::time::Instant::now();
        for (key, (svc, ips)) in &mine {
            let newly = prev.services.get(key) != Some(ips);
            let recent = prev
                .claimed
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < CLAIM_INTERVAL);
            let ifaces = interfaces_of(ips);
            let current = self.status_of(key);
            let recorded_since = current
                .as_ref()
                .filter(|st| st.spec.node == self.me)
                .and_then(|st| st.spec.since.as_ref().map(|t| t.0));
            let since = *prev
                .since
                .entry(key.clone())
                .or_insert_with(|| recorded_since.unwrap_or_else(jiff::Timestamp::now));
            let spec = ferrite_api::lb::ServiceL2StatusSpec {
                node: self.me.clone(),
                addresses: ips.iter().map(ToString::to_string).collect(),
                interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
                since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(since)),
            };
            if recorded.contains(key) && current.as_ref().map(|st| &st.spec) != Some(&spec) && !recent {
                self.writes.push(Write::Claim {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    uid: svc.uid().unwrap_or_default(),
                    spec,
                });
                prev.claimed.insert(key.clone(), now);
            }
            if newly {
                let ip_list = ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                let (warning, reason, note) = if ifaces.is_empty() {
                    (
                        true,
                        "AnnounceFailed",
                        format!(
                            "node {} is elected for {ip_list} but no interface there matches (Warning NoInterface on the advertisement says why)",
                            self.me
                        ),
                    )
                } else {
                    let names: Vec<&str> = ifaces.iter().map(|s| s.as_str()).collect();
                    (
                        false,
                        "Announcing",
                        format!("node {} announces {ip_list} on {}", self.me, names.join(", ")),
                    )
                };
                self.writes.push(Write::Event {
                    on: svc.object_ref(&()),
                    warning,
                    reason,
                    action: "Announce",
                    note,
                    ip: None,
                });
                tracing::info!(service = %key.1, namespace = %key.0, ips = %ip_list, "announcing");
                let service = format!("{}/{}", key.0, key.1);
                for ip in ips {
                    self.announced_metric
                        .with_label_values(&[&ip.to_string(), &self.me])
                        .set(1);
                    self.speaker_announced
                        .with_label_values(&[&service, "layer2", &self.me, &ip.to_string()])
                        .set(1);
                }
            }
        }
        for (key, ips) in &prev.services {
            let still: BTreeSet<IpAddr> = mine
                .get(key)
                .map(|(_, v)| v.iter().copied().collect())
                .unwrap_or_default();
            let service = format!("{}/{}", key.0, key.1);
            for ip in ips.iter().filter(|ip| !still.contains(ip)) {
                let _ = self
                    .announced_metric
                    .remove_label_values(&[&ip.to_string(), &self.me]);
                let _ = self.speaker_announced.remove_label_values(&[
                    &service,
                    "layer2",
                    &self.me,
                    &ip.to_string(),
                ]);
                tracing::info!(service = %key.1, namespace = %key.0, ip = %ip, "stopped announcing");
            }
        }
        // ServiceL2Statuses naming this node for Services it does not announce: delete them (not while
        // converging: then only the Services already naming this node are elected at all). Also those
        // left behind by a node whose speaker is gone (crashed, node deleted) for Services nobody is
        // elected for any more (no endpoint, no address, no advertisement, not served): nobody would
        // ever rewrite them, so one speaker, the first live node by name, deletes them.
        if !converging {
            let janitor = alive.iter().next().map(String::as_str) == Some(self.me.as_str());
            for st in self.statuses.state() {
                let key = (st.namespace().unwrap_or_default(), st.name_any());
                let stale = st.spec.node != self.me
                    && janitor
                    && !alive.contains(&st.spec.node)
                    && !won_by_someone.contains(&key);
                if st.spec.node != self.me && !stale {
                    continue;
                }
                if recorded.contains(&key)
                    || prev
                        .released
                        .get(&key)
                        .is_some_and(|t| now.duration_since(*t) < RELEASE_INTERVAL)
                {
                    continue;
                }
                self.writes.push(Write::Release {
                    namespace: key.0.clone(),
                    name: key.1.clone(),
                    resource_version: st.resource_version(),
                });
                prev.released.insert(key, now);
            }
        }
        // Bounded: a release older than the retry interval has done its job (the record is gone, or the
        // next round queues it again), so deleted Services leave nothing behind.
        prev.released
            .retain(|k, t| !recorded.contains(k) && now.duration_since(*t) < RELEASE_INTERVAL);
        prev.since.retain(|k, _| mine.contains_key(k));
        prev.claimed.retain(|k, _| mine.contains_key(k));
        prev.services = mine.into_iter().map(|(k, (_, ips))| (k, ips)).collect();
    }

    /// The ServiceL2Status of Service `key` (namespace, name), from the watch cache.
    fn status_of(&self, key: &(String, String)) -> Option<Arc<ServiceL2Status>> {
        self.statuses
            .get(&reflector::ObjectRef::new(&key.1).within(&key.0))
    }

    /// Graceful shutdown: deletes every ServiceL2Status naming this node (each with its
    /// resourceVersion as precondition), all at once, for at most [`SHUTDOWN_RELEASE_TIMEOUT`].
    async fn release_all(&self, client: &Client) {
        let mine: Vec<Arc<ServiceL2Status>> = self
            .statuses
            .state()
            .into_iter()
            .filter(|st| st.spec.node == self.me)
            .collect();
        if mine.is_empty() {
            return;
        }
        let deletes = mine.iter().map(|st| {
            let ns = st.namespace().unwrap_or_default();
            let name = st.name_any();
            let rv = st.resource_version();
            async move {
                let api: Api<ServiceL2Status> = Api::namespaced(client.clone(), &ns);
                if let Err(e) = delete_status(&api, &name, rv).await {
                    tracing::warn!(namespace = %ns, service = %name, error = %e, "deleting ServiceL2Status on shutdown");
                }
            }
        });
        let n = mine.len();
        match tokio::time::timeout(SHUTDOWN_RELEASE_TIMEOUT, futures::future::join_all(deletes)).await {
            Ok(_) => tracing::info!(count = n, "shutdown: ServiceL2Statuses of this node deleted"),
            Err(_) => {
                tracing::warn!(count = n, timeout = ?SHUTDOWN_RELEASE_TIMEOUT, "shutdown: deleting ServiceL2Statuses timed out")
            }
        }
    }

    /// Node-specific problems: an address this node is elected for that no interface here answers for
    /// (a named interface missing on this node, or every interface excluded). One Warning Event
    /// `NoInterface` per (advertisement, problem) from this speaker, on the L2Advertisement or IPPool,
    /// while it persists (the kit's recorder also folds repeats into a series).
    fn report_interface_problems(
        &self,
        desired: &BTreeMap<IpAddr, InterfaceFilter>,
        announced_on: &BTreeMap<IpAddr, Vec<String>>,
        sources: &BTreeMap<IpAddr, Vec<election::AdvertisementSource>>,
        prev: &mut Announced,
    ) {
        let mut now: BTreeSet<(String, String)> = BTreeSet::new();
        for (ip, filter) in desired {
            if announced_on.contains_key(ip) {
                continue;
            }
            let wanted = if filter.patterns().is_empty() {
                "every interface not excluded by default".to_string()
            } else {
                format!("interfaces {}", filter.patterns().join(", "))
            };
            let why: Vec<String> = self
                .announcer
                .interfaces(filter)
                .into_iter()
                .filter_map(|(i, r)| r.err().map(|r| format!("{}: {r}", i.name)))
                .collect();
            let note = format!(
                "node {}: no interface answers ARP/NDP for {ip} ({wanted}): {}",
                self.me,
                if why.is_empty() {
                    "no interface at all".to_string()
                } else {
                    why.join("; ")
                }
            );
            for source in sources.get(ip).into_iter().flatten() {
                let key = (source.to_string(), wanted.clone());
                now.insert(key.clone());
                if prev.warned_interfaces.contains(&key) {
                    continue;
                }
                tracing::warn!(advertisement = %source, %ip, %note, "no eligible interface");
                if let Some(on) = self.source_ref(source) {
                    self.writes.push(Write::Event {
                        on,
                        warning: true,
                        reason: "NoInterface",
                        action: "Announce",
                        note: note.clone(),
                        ip: None,
                    });
                }
                prev.warned_interfaces.insert(key);
            }
        }
        prev.warned_interfaces.retain(|k| now.contains(k));
    }

    /// The object an advertisement comes from, for Events.
    fn source_ref(&self, source: &election::AdvertisementSource) -> Option<ObjectReference> {
        match source {
            election::AdvertisementSource::L2Advertisement(n) => self
                .advertisements
                .get(&reflector::ObjectRef::new(n))
                .map(|a| a.object_ref(&())),
            election::AdvertisementSource::InlineL2(n) => self
                .pools
                .get(&reflector::ObjectRef::new(n))
                .map(|p| p.object_ref(&())),
        }
    }

    /// Logs each advertisement that cannot be used once (while it stays broken) and queues one Warning
    /// Event `InvalidAdvertisement` on it, from one speaker only (the first live node by name): the
    /// error is the object's, not the node's.
    fn report_advertisement_errors(
        &self,
        errors: &[(ObjectReference, election::AdvertisementError)],
        alive: &BTreeSet<String>,
        prev: &mut Announced,
    ) {
        let now: BTreeSet<String> = errors.iter().map(|(_, e)| e.to_string()).collect();
        let reporter = alive.iter().next().map(String::as_str) == Some(self.me.as_str());
        for (on, e) in errors {
            let text = e.to_string();
            if prev.warned_advertisements.contains(&text) {
                continue;
            }
            tracing::warn!(error = %text, "advertisement ignored: its addresses are not announced through it");
            if reporter {
                self.writes.push(Write::Event {
                    on: on.clone(),
                    warning: true,
                    reason: "InvalidAdvertisement",
                    action: "Announce",
                    note: format!(
                        "{text}; ignored until fixed (the pool's addresses are not announced through it)"
                    ),
                    ip: None,
                });
            }
            prev.warned_advertisements.insert(text);
        }
        prev.warned_advertisements.retain(|t| now.contains(t));
    }

    /// Queues one Warning Event per (Service, address outside every pool), from one speaker only: the
    /// best-ranked live node for the address (every speaker computes the same one from the same view).
    fn report_out_of_pool(
        &self,
        group: &Group,
        outside: &[IpAddr],
        alive: &BTreeSet<String>,
        node_objs: &[Arc<Node>],
        prev: &mut Announced,
        now: &mut BTreeSet<(String, String, IpAddr)>,
    ) {
        let live_nodes = node_objs
            .iter()
            .map(|n| n.name_any())
            .filter(|n| alive.contains(n));
        for ip in outside {
            let reporter = election::ranking(
                *ip,
                live_nodes.clone().collect::<Vec<_>>().iter().map(String::as_str),
            )
            .into_iter()
            .next();
            for svc in &group.services {
                if !service::current_ips(svc).contains(ip) {
                    continue;
                }
                let key = (svc.namespace().unwrap_or_default(), svc.name_any(), *ip);
                now.insert(key.clone());
                if prev.warned_out_of_pool.contains(&key) {
                    continue;
                }
                prev.warned_out_of_pool.insert(key.clone());
                tracing::warn!(service = %key.1, namespace = %key.0, %ip, "address is in no IPPool; not announcing it");
                if reporter.as_deref() == Some(self.me.as_str()) {
                    self.writes.push(Write::Event {
                        on: svc.object_ref(&()),
                        warning: true,
                        reason: "NotAnnounced",
                        action: "Announce",
                        note: format!(
                            "IP {ip} is in no IPPool: no speaker answers ARP/NDP for it (only addresses of an IPPool are announced)"
                        ),
                        ip: Some(*ip),
                    });
                }
            }
        }
    }
}

/// What the election asks the API server to do; see [`ApiQueue`].
#[derive(Debug, Clone)]
enum Write {
    /// Apply the Service's ServiceL2Status naming this node.
    Claim {
        namespace: String,
        name: String,
        /// The Service's uid (the owner reference).
        uid: String,
        spec: ferrite_api::lb::ServiceL2StatusSpec,
    },
    /// Delete the Service's ServiceL2Status, if it is still at `resource_version` (so still names this
    /// node).
    Release {
        namespace: String,
        name: String,
        resource_version: Option<String>,
    },
    /// Publish an Event on a Service.
    Event {
        on: ObjectReference,
        warning: bool,
        reason: &'static str,
        action: &'static str,
        note: String,
        /// The address it is about, when Events of one reason differ per address.
        ip: Option<IpAddr>,
    },
}

/// Identity of a queued write: a newer write with the same key replaces a pending one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum WriteKey {
    /// A claim or a release of one Service's ServiceL2Status: the newer replaces the older.
    Status(String, String),
    Event(&'static str, String, String, Option<IpAddr>),
}

impl Write {
    fn key(&self) -> WriteKey {
        match self {
            Self::Claim { namespace, name, .. } | Self::Release { namespace, name, .. } => {
                WriteKey::Status(namespace.clone(), name.clone())
            }
            Self::Event { on, reason, ip, .. } => WriteKey::Event(
                reason,
                on.namespace.clone().unwrap_or_default(),
                on.name.clone().unwrap_or_default(),
                *ip,
            ),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Claim { .. } => "claim",
            Self::Release { .. } => "release",
            Self::Event { .. } => "event",
        }
    }
}

/// Pending writes in arrival order, one per key. Pure, no I/O.
#[derive(Debug, Default)]
struct Pending {
    writes: BTreeMap<WriteKey, Write>,
    order: VecDeque<WriteKey>,
    /// The Services this node won in the last election round: only their claims may be retried.
    wanted: BTreeSet<(String, String)>,
}

impl Pending {
    /// Adds `w`, replacing a pending write with its key (which keeps its place). False when full.
    fn push(&mut self, w: Write, capacity: usize) -> bool {
        let key = w.key();
        if let Some(slot) = self.writes.get_mut(&key) {
            *slot = w;
            return true;
        }
        if self.writes.len() >= capacity {
            return false;
        }
        self.order.push_back(key.clone());
        self.writes.insert(key, w);
        true
    }

    fn pop(&mut self) -> Option<Write> {
        while let Some(key) = self.order.pop_front() {
            if let Some(w) = self.writes.remove(&key) {
                return Some(w);
            }
        }
        None
    }

    /// Sets the Services this node won; pending claims for the others, and pending releases of these,
    /// are withdrawn.
    fn set_wanted(&mut self, wanted: BTreeSet<(String, String)>) {
        self.writes.retain(|k, w| match (k, w) {
            (WriteKey::Status(ns, name), Write::Claim { .. }) => wanted.contains(&(ns.clone(), name.clone())),
            (WriteKey::Status(ns, name), _) => !wanted.contains(&(ns.clone(), name.clone())),
            (WriteKey::Event(..), _) => true,
        });
        let writes = &self.writes;
        self.order.retain(|k| writes.contains_key(k));
        self.wanted = wanted;
    }

    /// Puts back a write that failed, unless a newer one with its key is pending or, for a claim,
    /// this node no longer wins the Service (for a release: wins it again).
    fn retry(&mut self, w: Write, capacity: usize) -> bool {
        if self.writes.contains_key(&w.key()) {
            return true;
        }
        match &w {
            Write::Claim { namespace, name, .. }
                if !self.wanted.contains(&(namespace.clone(), name.clone())) =>
            {
                return true;
            }
            Write::Release { namespace, name, .. }
                if self.wanted.contains(&(namespace.clone(), name.clone())) =>
            {
                return true;
            }
            _ => {}
        }
        self.push(w, capacity)
    }

    fn len(&self) -> usize {
        self.writes.len()
    }
}

/// Does the writes: the only part of the speaker that talks to the API server after start-up.
struct ApiWriter {
    me: String,
    client: Client,
    events: Events,
    /// Always a writer: every speaker records its own announcements.
    leadership: ferrite_kit::leader::Leadership,
}

impl ApiWriter {
    async fn write(&self, w: &Write) -> Result<(), String> {
        match w {
            Write::Claim {
                namespace,
                name,
                uid,
                spec,
            } => {
                let api: Api<ServiceL2Status> = Api::namespaced(self.client.clone(), namespace);
                let body = status_body(name, uid, &self.me, spec);
                ferrite_kit::status::apply(&api, name, names::LB_SPEAKER_MANAGER, body, &self.leadership)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Write::Release {
                namespace,
                name,
                resource_version,
            } => {
                let api: Api<ServiceL2Status> = Api::namespaced(self.client.clone(), namespace);
                delete_status(&api, name, resource_version.clone()).await
            }
            Write::Event {
                on,
                warning,
                reason,
                action,
                note,
                ..
            } => {
                // Best effort: Events logs its own failures.
                if *warning {
                    self.events.warning(on, reason, action, note.clone()).await;
                } else {
                    self.events.normal(on, reason, action, note.clone()).await;
                }
                Ok(())
            }
        }
    }
}

/// The bounded background queue between the election and the API server (module docs).
#[derive(Clone)]
struct ApiQueue {
    pending: Arc<Mutex<Pending>>,
    wake: Arc<Notify>,
    depth: IntGauge,
    results: IntCounterVec,
}

impl ApiQueue {
    /// Registers the metrics and starts the task that drains the queue until `shutdown`.
    fn start(registry: &Registry, writer: ApiWriter, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let depth = IntGauge::new(
            "ferrite_lb_speaker_api_queue_depth",
            "ServiceL2Status writes and deletes and Events waiting for the API server.",
        )?;
        let results = IntCounterVec::new(
            Opts::new(
                "ferrite_lb_speaker_api_writes_total",
                "Writes the speaker sent or gave up on, by kind (claim: ServiceL2Status apply, release: its delete, event) and result (ok, error, timeout, dropped).",
            ),
            &["kind", "result"],
        )?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(results.clone()))?;
        let q = ApiQueue {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
            depth,
            results,
        };
        tokio::spawn(q.clone().drain(writer, shutdown));
        Ok(q)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `w` without waiting (a newer write with the same key replaces a pending one).
    fn push(&self, w: Write) {
        let kind = w.kind();
        let (ok, len) = {
            let mut p = self.lock();
            let ok = p.push(w, API_QUEUE_CAPACITY);
            (ok, p.len())
        };
        self.depth.set(i64::try_from(len).unwrap_or(i64::MAX));
        if ok {
            self.wake.notify_one();
        } else {
            self.results.with_label_values(&[kind, "dropped"]).inc();
            tracing::warn!(
                kind,
                capacity = API_QUEUE_CAPACITY,
                "API write queue full; write dropped"
            );
        }
    }

    /// Sets the Services this node won; pending claims for the others are withdrawn.
    fn set_wanted(&self, wanted: BTreeSet<(String, String)>) {
        let len = {
            let mut p = self.lock();
            p.set_wanted(wanted);
            p.len()
        };
        self.depth.set(i64::try_from(len).unwrap_or(i64::MAX));
    }

    /// Queues `w` again after [`API_RETRY_DELAY`] (see [`Pending::retry`]).
    fn retry_later(&self, w: Write, shutdown: CancellationToken) {
        let q = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(API_RETRY_DELAY) => {
                    let ok = q.lock().retry(w, API_QUEUE_CAPACITY);
                    if ok {
                        q.wake.notify_one();
                    }
                }
            }
        });
    }

    async fn drain(self, writer: ApiWriter, shutdown: CancellationToken) {
        loop {
            let next = {
                let mut p = self.lock();
                let w = p.pop();
                self.depth.set(i64::try_from(p.len()).unwrap_or(i64::MAX));
                w
            };
            let Some(w) = next else {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            };
            let kind = w.kind();
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(API_CALL_TIMEOUT, writer.write(&w)) => r,
            };
            let label = match result {
                Ok(Ok(())) => "ok",
                Ok(Err(e)) => {
                    tracing::warn!(kind, key = ?w.key(), error = %e, retry_in = ?API_RETRY_DELAY, "API write failed");
                    "error"
                }
                Err(_) => {
                    tracing::warn!(kind, key = ?w.key(), timeout = ?API_CALL_TIMEOUT, retry_in = ?API_RETRY_DELAY, "API write timed out");
                    "timeout"
                }
            };
            self.results.with_label_values(&[kind, label]).inc();
            if label != "ok" {
                self.retry_later(w, shutdown.clone());
            }
        }
    }
}

/// The apply body of a Service's ServiceL2Status: named like the Service, owned by it (so deleting the
/// Service deletes it), labelled with the Service's name and the node.
fn status_body(
    service: &str,
    uid: &str,
    node: &str,
    spec: &ferrite_api::lb::ServiceL2StatusSpec,
) -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "labels": {SERVICE_NAME_LABEL: service, NODE_LABEL: node},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service, "uid": uid}],
        },
        "spec": spec,
    })
}

/// Deletes a ServiceL2Status if it is still at `resource_version`. Gone already, or changed since (a
/// peer took over and rewrote it): nothing to do, not an error.
async fn delete_status(
    api: &Api<ServiceL2Status>,
    name: &str,
    resource_version: Option<String>,
) -> Result<(), String> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version,
            uid: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(ferrite_kit::kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

fn node_info(n: &Node, alive: &BTreeSet<String>) -> NodeInfo {
    let name = n.name_any();
    let network_unavailable = n
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
        });
    NodeInfo {
        speaker_alive: alive.contains(&name),
        name,
        labels: n.labels().clone(),
        network_unavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: SpeakerArgs,
    }

    #[test]
    fn heartbeat_flags_default_to_the_gossip_defaults_and_parse() {
        use clap::Parser as _;
        let d = crate::member::Timings::default();
        let cli = Cli::try_parse_from(["x", "--node-name", "a"]).expect("defaults parse");
        assert_eq!(cli.args.heartbeat_interval, d.heartbeat_interval);
        assert_eq!(cli.args.heartbeat_timeout, d.heartbeat_timeout);
        assert_eq!(cli.args.heartbeat_suspect_to_down, d.heartbeat_suspect_to_down);
        assert_eq!(cli.args.heartbeat_peers, d.heartbeat_peers);
        let cli = Cli::try_parse_from([
            "x",
            "--node-name",
            "a",
            "--heartbeat-interval",
            "50ms",
            "--heartbeat-timeout=1s",
            "--heartbeat-suspect-to-down",
            "500ms",
            "--heartbeat-peers",
            "0",
        ])
        .expect("set values parse");
        assert_eq!(cli.args.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(cli.args.heartbeat_timeout, Duration::from_secs(1));
        assert_eq!(cli.args.heartbeat_suspect_to_down, Duration::from_millis(500));
        assert_eq!(cli.args.heartbeat_peers, 0);
        let err = Cli::try_parse_from(["x", "--node-name", "a", "--heartbeat-timeout", "soon"])
            .err()
            .expect("a bad duration is refused");
        assert!(err.to_string().contains("heartbeat-timeout"), "{err}");
    }

    fn node(ready: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}}))
        .expect("node")
    }

    fn lease(renewed: &str) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "n"}, "spec": {"renewTime": renewed}}))
            .expect("lease")
    }

    fn claim(ns: &str, name: &str) -> Write {
        Write::Claim {
            namespace: ns.into(),
            name: name.into(),
            uid: "uid".into(),
            spec: ferrite_api::lb::ServiceL2StatusSpec {
                node: "n".into(),
                ..Default::default()
            },
        }
    }

    fn release(ns: &str, name: &str) -> Write {
        Write::Release {
            namespace: ns.into(),
            name: name.into(),
            resource_version: Some("7".into()),
        }
    }

    fn event(name: &str, reason: &'static str, note: &str) -> Write {
        Write::Event {
            on: ObjectReference {
                namespace: Some("ns".into()),
                name: Some(name.into()),
                ..Default::default()
            },
            warning: false,
            reason,
            action: "Announce",
            note: note.into(),
            ip: None,
        }
    }

    fn note(w: &Write) -> String {
        match w {
            Write::Event { note, .. } => note.clone(),
            Write::Claim { name, .. } => format!("claim {name}"),
            Write::Release { name, .. } => format!("release {name}"),
        }
    }

    #[test]
    fn queued_writes_keep_their_place_latest_wins_and_are_bounded() {
        let mut p = Pending::default();
        assert!(p.push(event("a", "Announcing", "first"), 3));
        assert!(p.push(claim("ns", "a"), 3));
        assert!(p.push(event("b", "Announcing", "b"), 3));
        // Same key: replaces in place, takes no room.
        assert!(p.push(event("a", "Announcing", "second"), 3));
        // Full: a new key is refused.
        assert!(!p.push(event("c", "Announcing", "c"), 3));
        assert_eq!(p.len(), 3);
        let order: Vec<String> = std::iter::from_fn(|| p.pop()).map(|w| note(&w)).collect();
        assert_eq!(order, ["second", "claim a", "b"]);
        assert!(p.pop().is_none());
    }

    #[test]
    fn withdrawn_claims_are_never_sent() {
        let mut p = Pending::default();
        p.push(claim("ns", "a"), 10);
        p.push(claim("ns", "b"), 10);
        p.push(event("a", "Announcing", "kept"), 10);
        p.set_wanted(BTreeSet::from([("ns".to_string(), "b".to_string())]));
        let order: Vec<String> = std::iter::from_fn(|| p.pop()).map(|w| note(&w)).collect();
        assert_eq!(order, ["claim b", "kept"]);
        // A failed claim comes back only while it is still won, and never over a newer write.
        assert!(p.retry(claim("ns", "a"), 10));
        assert!(p.pop().is_none(), "claim a is not wanted");
        assert!(p.retry(claim("ns", "b"), 10));
        p.push(event("a", "Announcing", "newer"), 10);
        assert!(p.retry(event("a", "Announcing", "older"), 10));
        let order: Vec<String> = std::iter::from_fn(|| p.pop()).map(|w| note(&w)).collect();
        assert_eq!(order, ["claim b", "newer"]);
    }

    #[test]
    fn a_release_and_a_claim_of_one_service_replace_each_other() {
        let mut p = Pending::default();
        p.push(claim("ns", "a"), 10);
        p.push(release("ns", "b"), 10);
        // Lost a, won b: the newer write replaces the pending one in place.
        p.push(release("ns", "a"), 10);
        p.push(claim("ns", "b"), 10);
        assert_eq!(p.len(), 2);
        // Winning a again withdraws its pending release; b is not won: its claim goes.
        p.set_wanted(BTreeSet::from([("ns".to_string(), "a".to_string())]));
        assert!(p.pop().is_none(), "nothing left to send");
        // A failed release comes back only while the Service is not won.
        assert!(p.retry(release("ns", "a"), 10));
        assert!(p.pop().is_none(), "a is won again: no release");
        assert!(p.retry(release("ns", "c"), 10));
        let order: Vec<String> = std::iter::from_fn(|| p.pop()).map(|w| note(&w)).collect();
        assert_eq!(order, ["release c"]);
    }

    #[test]
    fn service_l2_status_body_is_owned_by_the_service_and_labelled() {
        let spec = ferrite_api::lb::ServiceL2StatusSpec {
            node: "node-b".into(),
            addresses: vec!["192.0.2.10".into()],
            interfaces: vec!["eth0".into()],
            since: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-01T10:00:00Z".parse().expect("time"),
            )),
        };
        let v = status_body("web", "uid-1", "node-b", &spec);
        assert_eq!(
            v["metadata"]["ownerReferences"],
            json!([{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "uid-1"}])
        );
        assert_eq!(v["metadata"]["labels"][SERVICE_NAME_LABEL], "web");
        assert_eq!(v["metadata"]["labels"][NODE_LABEL], "node-b");
        assert_eq!(
            v["spec"],
            json!({"node": "node-b", "addresses": ["192.0.2.10"], "interfaces": ["eth0"],
                   "since": "2026-12-01T10:00:00Z"})
        );
    }

    #[test]
    fn fallback_liveness_needs_ready_and_a_fresh_kubelet_lease() {
        let now: jiff::Timestamp = "2026-11-22T12:00:00Z".parse().expect("time");
        let cases = [
            (
                "ready, fresh lease",
                node("True"),
                Some(lease("2026-11-22T11:59:50.000000Z")),
                true,
            ),
            ("ready, no lease (kubelet-less)", node("True"), None, true),
            (
                "ready, stale lease",
                node("True"),
                Some(lease("2026-11-22T11:59:00.000000Z")),
                false,
            ),
            (
                "not ready, fresh lease",
                node("False"),
                Some(lease("2026-11-22T11:59:59.000000Z")),
                false,
            ),
            ("unknown", node("Unknown"), None, false),
        ];
        for (name, n, l, want) in cases {
            assert_eq!(node_healthy(&n, l.as_ref(), now), want, "{name}");
        }
    }
}
