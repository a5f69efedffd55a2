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
//! Every input change (or a tick every second, as a safety net) starts a round (see "Incremental
//! rounds"); the computation is pure and cheap (one sha256 per Service and node). The speaker is not
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
//! # Incremental rounds
//! Services are elected in groups (Services by their first address, [`Index`]). Each watch records
//! what it changed ([`ChangeLog`]): Service, EndpointSlice and ServiceL2Status keys; for Nodes, pools
//! and advertisements only whether a field the election reads changed (a Node heartbeat or a pool
//! status write is no change). A round re-elects only the groups of the changed Services (an update
//! that changes nothing the election reads is skipped: [`service_digest`]), of the Services whose
//! EndpointSlices (endpoints' node and serving state) or ServiceL2Status changed, and those whose
//! recorded owner is judged by the Node/Lease fallback ([`Outcome::fallback`]). It updates the
//! announcer, metrics, claims and releases only for the Services of those groups. A full round (every
//! group) runs when [`GlobalInputs`] changed (Nodes as the election sees them, the gossip view, pools,
//! advertisements, the startup grace), after a relist, and every [`FULL_ROUND_INTERVAL`].
//! [`crate::pacing::Schedule`] paces full and incremental rounds by their own cost, so a new address
//! never waits for a full round's gap.
//!
//! # What is cached
//! Only what the election reads: [`trim_service`] (a stub for Services of other classes or types),
//! [`trim_slice`], [`trim_node`]; pools and advertisements without status; everything without
//! managedFields (kit [`Trim`]).
//!
//! # Never waiting on the API server
//! [`Speaker::step`] does no I/O: it reads the watch caches and the gossip view, sets the announcer and
//! *enqueues* what it wants written (claims, Events) in [`ApiQueue`]. One background task drains the
//! queue, up to [`API_CONCURRENCY`] calls at once but never two of one key, each call bounded by
//! [`API_CALL_TIMEOUT`]. So a stalled or half-open connection to the API
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
    l2::{Announcer, InterfaceFilter, Plan},
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
        api::{ApiResource, DeleteParams, DynamicObject, Preconditions},
        runtime::{WatchStreamExt, reflector, reflector::Store, watcher},
    },
    watch::{self, Transform, Trim},
};
use futures::StreamExt;
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{
        LoadBalancerIngress, Node, NodeCondition, NodeStatus, ObjectReference, Secret, Service, ServiceSpec,
    },
};
use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
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

/// Most writes of the background queue in flight at once: a failover of 1,000 Services lands its
/// ServiceL2Statuses 16 at a time, not one by one. Two writes of one Service never overlap.
pub const API_CONCURRENCY: usize = 16;

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

    // Every watch records what it changed (Service, EndpointSlice and ServiceL2Status keys; Nodes,
    // pools and advertisements only when a field the election reads changed) and wakes the loop.
    let changes = ChangeLog::default();
    let wake = changes.wake.clone();
    let policy = Classes {
        class: args.lb_class,
        default_class: args.default_class,
    };
    let services = {
        let p = policy.clone();
        watch_store::<Service>(
            &app,
            Api::all(client.clone()),
            "services",
            move |s| trim_service(&p, s),
            keyed(changes.clone(), |c| &mut c.services),
        )
    };
    let nodes = watch_store::<Node>(
        &app,
        nodes_api,
        "nodes",
        trim_node,
        relevant(changes.clone(), node_projection),
    );
    let pools = watch_store::<IPPool>(
        &app,
        Api::all(client.clone()),
        "ippools",
        |p| p.status = None,
        relevant(changes.clone(), |p: &IPPool| (p.labels().clone(), p.spec.clone())),
    );
    let advertisements = watch_store::<L2Advertisement>(
        &app,
        Api::all(client.clone()),
        "l2advertisements",
        |a| a.status = None,
        relevant(changes.clone(), |a: &L2Advertisement| {
            (a.labels().clone(), a.spec.clone())
        }),
    );
    let statuses = watch_store::<ServiceL2Status>(
        &app,
        Api::all(client.clone()),
        "servicel2statuses",
        |_| {},
        keyed(changes.clone(), |c| &mut c.statuses),
    );
    let node_leases = {
        // Read only for the fallback liveness of owners gossip never showed (those groups are
        // re-elected every round): a renewal only wakes the loop.
        let wake = wake.clone();
        watch_store::<Lease>(
            &app,
            Api::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
            "node leases",
            |_| {},
            move |_| wake.notify_one(),
        )
    };
    let version = SliceVersion::detect(&client).await?;
    let slice_resource = version.api_resource();
    let writer = reflector::store::Writer::<DynamicObject>::new(slice_resource.clone());
    let slices = writer.as_reader();
    {
        let mut on_event = keyed(changes.clone(), |c| &mut c.slices);
        let stream = reflector::reflector(
            writer,
            watcher(version.api_all(client.clone()), Default::default()).modify(trim_slice),
        )
        .default_backoff();
        app.readiness
            .gate("watch endpointslices")
            .open_when_synced(slices.clone());
        tokio::spawn(stream.for_each(move |ev| {
            if let Ok(ev) = ev {
                on_event(&ev);
            }
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

    let plan = announcer.plan_changes();
    let speaker = Speaker {
        me: me.clone(),
        policy,
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
        slice_resource,
        changes,
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
            let mut state = Announced {
                plan: Some(plan),
                ..Announced::default()
            };
            let mut fault_fired = false;
            // `ferrite_lb_speaker_reconcile_*{kind="Announcement"}`: one per recompute of what this node
            // announces (a step cannot fail: what it cannot do becomes an Event or a metric).
            let reconciles = app.reconcile_metrics().for_kind("Announcement");
            // Pacing (crate::pacing): a full round of d delays the next full round until 9·d has passed
            // (at most 1 s), an incremental round of d the next round; a new address waits only for
            // the last incremental round's gap; a gossip view change ends any wait.
            let pacer = crate::pacing::speaker(std::env::var(crate::pacing::IDLE_PER_BUSY_ENV).ok().as_deref())
                .map_err(|e| anyhow::anyhow!(e))?;
            let mut schedule = crate::pacing::Schedule::new(pacer, tokio::time::Instant::now());
            let mut alive_changes = speaker.membership.alive();
            loop {
                let taken = speaker.changes.take();
                let started = tokio::time::Instant::now();
                let full = speaker.step(&mut state, taken);
                let took = started.elapsed();
                reconciles.success(took);
                schedule.finished(full, tokio::time::Instant::now(), took);
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
                // Wait for the gap of the kind of round the pending changes need (one that arrives
                // meanwhile and needs a full round extends the wait to the full round's gap).
                let stop = loop {
                    let at = schedule.next(speaker.changes.needs_full());
                    if at <= tokio::time::Instant::now() {
                        break None;
                    }
                    tokio::select! {
                        _ = app.shutdown.cancelled() => break Some(None),
                        why = &mut gossip_stopped => break Some(Some(why)),
                        _ = alive_changes.changed() => break None,
                        _ = tokio::time::sleep_until(at) => {}
                    }
                };
                if let Some(why) = stop {
                    break why;
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

/// A Service, EndpointSlice or ServiceL2Status: (namespace, name).
type Key = (String, String);

fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.meta().namespace.clone().unwrap_or_default(),
        o.meta().name.clone().unwrap_or_default(),
    )
}

/// What the watches saw change since the loop last looked (module docs, "Incremental rounds").
#[derive(Debug, Default)]
struct Changes {
    services: HashSet<Key>,
    slices: HashSet<Key>,
    statuses: HashSet<Key>,
    /// A field the election reads of a Node, IPPool or L2Advertisement changed.
    global: bool,
    /// A watch listed again (objects may have vanished unseen): every group is recomputed.
    relisted: bool,
}

/// [`Changes`] shared between the watch tasks and the loop, and the loop's wake-up.
#[derive(Clone, Default)]
struct ChangeLog {
    inner: Arc<Mutex<Changes>>,
    wake: Arc<Notify>,
}

impl ChangeLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Changes> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, f: impl FnOnce(&mut Changes)) {
        f(&mut self.lock());
        self.wake.notify_one();
    }

    fn take(&self) -> Changes {
        std::mem::take(&mut *self.lock())
    }

    /// The pending changes need a full round.
    fn needs_full(&self) -> bool {
        let c = self.lock();
        c.global || c.relisted
    }
}

/// The event hook of a watch whose objects the rounds look up by key.
fn keyed<K: Resource + 'static>(
    changes: ChangeLog,
    pick: fn(&mut Changes) -> &mut HashSet<Key>,
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    move |ev| match ev {
        watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
            let k = key_of(o);
            changes.record(|c| {
                pick(c).insert(k);
            })
        }
        watcher::Event::InitDone => changes.record(|c| c.relisted = true),
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
}

/// The event hook of a watch every group depends on (Nodes, pools, advertisements): a full round only
/// when what `project` keeps of an object changed (a Node's heartbeat or a pool's status does not).
fn relevant<K: Resource + 'static, P: PartialEq + Send + 'static>(
    changes: ChangeLog,
    project: fn(&K) -> P,
) -> impl FnMut(&watcher::Event<K>) + Send + 'static {
    let mut seen: HashMap<String, P> = HashMap::new();
    let mut listing: Option<HashMap<String, P>> = None;
    move |ev| {
        let name = |o: &K| o.meta().name.clone().unwrap_or_default();
        let changed = match ev {
            watcher::Event::Apply(o) => {
                let p = project(o);
                let n = name(o);
                let changed = seen.get(&n) != Some(&p);
                seen.insert(n, p);
                changed
            }
            watcher::Event::Delete(o) => seen.remove(&name(o)).is_some(),
            watcher::Event::Init => {
                listing = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(o) => {
                listing
                    .get_or_insert_with(HashMap::new)
                    .insert(name(o), project(o));
                false
            }
            watcher::Event::InitDone => {
                let now = listing.take().unwrap_or_default();
                let changed = now != seen;
                seen = now;
                changed
            }
        };
        if changed {
            changes.record(|c| c.global = true);
        }
    }
}

/// A watch into a cache: each object trimmed (kit [`Trim`]: managedFields, last-applied) and changed by
/// `transform` (kit [`Transform`]) before it is cached; `on_event` sees every event after the cache.
fn watch_store<K>(
    app: &App,
    api: Api<K>,
    name: &str,
    transform: impl Fn(&mut K) + Send + Sync + 'static,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> Store<K>
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
    let transform = Transform::new(format!("lb-speaker {name}"), transform);
    let stream = reflector::reflector(
        writer,
        watcher(api, Default::default()).modify(move |o| {
            Trim::all().apply(o);
            transform.apply(o);
        }),
    )
    .default_backoff();
    app.readiness
        .gate(format!("watch {name}"))
        .open_when_synced(store.clone());
    tokio::spawn(stream.for_each(move |ev| {
        if let Ok(ev) = ev {
            on_event(&ev);
        }
        async {}
    }));
    store
}

/// What the speaker keeps of a Service: for one it serves, the name, uid, resourceVersion, creation
/// time and labels (advertisements' serviceSelectors), `spec.type`, `loadBalancerClass`,
/// `externalTrafficPolicy` and the ingress IPs; of any other Service only a stub (name and uid: it is
/// never elected). No annotations: the speaker reads none.
fn trim_service(policy: &Classes, s: &mut Service) {
    let served = policy.serves(s);
    let m = &mut s.metadata;
    m.annotations = None;
    m.owner_references = None;
    m.finalizers = None;
    m.generate_name = None;
    if !served {
        m.labels = None;
        s.spec = None;
        s.status = None;
        return;
    }
    if let Some(spec) = s.spec.as_mut() {
        *spec = ServiceSpec {
            type_: spec.type_.take(),
            load_balancer_class: spec.load_balancer_class.take(),
            external_traffic_policy: spec.external_traffic_policy.take(),
            ..Default::default()
        };
    }
    if let Some(st) = s.status.as_mut() {
        st.conditions = None;
        if let Some(ingress) = st.load_balancer.as_mut().and_then(|lb| lb.ingress.as_mut()) {
            for i in ingress.iter_mut() {
                *i = LoadBalancerIngress {
                    ip: i.ip.take(),
                    ..Default::default()
                };
            }
        }
    }
}

/// What the speaker keeps of a Node: name, labels, InternalIP addresses and the `Ready` and
/// `NetworkUnavailable` conditions' status (no images, no heartbeat times).
fn trim_node(n: &mut Node) {
    n.metadata.annotations = None;
    n.metadata.owner_references = None;
    n.spec = None;
    if let Some(st) = n.status.as_mut() {
        *st = NodeStatus {
            addresses: st
                .addresses
                .take()
                .map(|a| a.into_iter().filter(|a| a.type_ == "InternalIP").collect()),
            conditions: st.conditions.take().map(|cs| {
                cs.into_iter()
                    .filter(|c| c.type_ == "Ready" || c.type_ == "NetworkUnavailable")
                    .map(|c| NodeCondition {
                        type_: c.type_,
                        status: c.status,
                        ..Default::default()
                    })
                    .collect()
            }),
            ..Default::default()
        };
    }
}

/// What of a Node the election reads (a change of anything else needs no full round).
fn node_projection(n: &Node) -> (BTreeMap<String, String>, Option<NodeStatus>) {
    (n.labels().clone(), n.status.clone())
}

/// What the speaker keeps of an EndpointSlice: the `kubernetes.io/service-name` label and each
/// endpoint's `conditions` and `nodeName` (v1beta1's `topology` hostname moved there); no addresses,
/// ports, hints or managedFields.
fn trim_slice(o: &mut DynamicObject) {
    Trim::all().apply(o);
    let m = &mut o.metadata;
    m.annotations = None;
    m.owner_references = None;
    m.generate_name = None;
    watch::retain_labels(m, |k| k == ferrite_kit::endpointslice::SERVICE_NAME_LABEL);
    let endpoints: Vec<serde_json::Value> = o
        .data
        .get("endpoints")
        .and_then(serde_json::Value::as_array)
        .map(|eps| {
            eps.iter()
                .map(|e| {
                    let mut out = serde_json::Map::new();
                    if let Some(c) = e.get("conditions") {
                        out.insert("conditions".into(), c.clone());
                    }
                    let node = e
                        .get("nodeName")
                        .or_else(|| e.pointer("/topology/kubernetes.io~1hostname"));
                    if let Some(n) = node {
                        out.insert("nodeName".into(), n.clone());
                    }
                    serde_json::Value::Object(out)
                })
                .collect()
        })
        .unwrap_or_default();
    o.data = serde_json::json!({ "endpoints": endpoints });
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
    slice_resource: ApiResource,
    changes: ChangeLog,
    gossip_port: u16,
    grace_until: tokio::time::Instant,
}

/// A Service's place among the Services of its group: oldest first, then namespace and name.
type Rank = (Option<jiff::Timestamp>, Key);

/// Which Services and EndpointSlices make up each group (Services by their first address), kept up to
/// date from the changes, so a round touches only the groups that changed.
#[derive(Debug, Default)]
struct Index {
    /// Served Service with an address -> its rank, its first address (the group), and a digest of what
    /// the election reads of it (an update that changes none of it touches no group).
    group_of: HashMap<Key, (Rank, IpAddr, u64)>,
    /// Group -> its Services, oldest first.
    members: HashMap<IpAddr, BTreeSet<Rank>>,
    /// EndpointSlice (namespace, name) -> its Service (namespace, name) and a digest of its endpoints.
    slice_owner: HashMap<Key, (Key, u64)>,
    /// Service -> the names of its EndpointSlices.
    slices_of: HashMap<Key, BTreeSet<String>>,
}

fn digest(v: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher as _;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

/// What the election reads of a Service (besides its EndpointSlices and ServiceL2Status).
fn service_digest(s: &Service, ips: &[IpAddr]) -> u64 {
    let spec = s.spec.as_ref();
    digest(&(
        s.labels(),
        ips,
        spec.and_then(|s| s.external_traffic_policy.as_deref()),
        s.metadata.uid.as_deref(),
    ))
}

impl Index {
    /// Files Service `key` (`svc`: its cached state, `None` when gone or not served) under its
    /// group; the groups it left and joined (the same one for an update) are added to `dirty`.
    fn service(&mut self, key: &Key, svc: Option<&Service>, dirty: &mut BTreeSet<IpAddr>) {
        let now = svc.and_then(|s| {
            let ips = service::current_ips(s);
            let first = *ips.first()?;
            let rank = (s.metadata.creation_timestamp.as_ref().map(|t| t.0), key.clone());
            Some((rank, first, service_digest(s, &ips)))
        });
        let before = self.group_of.get(key);
        if before == now.as_ref() {
            return;
        }
        if let Some((rank, ip, _)) = self.group_of.remove(key) {
            if let Some(m) = self.members.get_mut(&ip) {
                m.remove(&rank);
                if m.is_empty() {
                    self.members.remove(&ip);
                }
            }
            dirty.insert(ip);
        }
        if let Some((rank, ip, d)) = now {
            self.members.entry(ip).or_default().insert(rank.clone());
            self.group_of.insert(key.clone(), (rank, ip, d));
            dirty.insert(ip);
        }
    }

    /// Files EndpointSlice `key` (`slice`: its cached state, `None` when gone) under its Service;
    /// the Services whose endpoints changed are added to `touched`.
    fn slice(&mut self, key: &Key, slice: Option<&Slice>, touched: &mut BTreeSet<Key>) {
        let now = slice.and_then(|s| {
            let svc = (s.namespace.clone(), s.service.clone()?);
            let d = digest(
                &s.endpoints
                    .iter()
                    .map(|e| (e.node_name.as_deref(), e.serving))
                    .collect::<Vec<_>>(),
            );
            Some((svc, d))
        });
        if self.slice_owner.get(key) == now.as_ref() {
            return;
        }
        if let Some((svc, _)) = self.slice_owner.remove(key) {
            if let Some(names) = self.slices_of.get_mut(&svc) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_of.remove(&svc);
                }
            }
            touched.insert(svc);
        }
        if let Some((svc, d)) = now {
            self.slices_of
                .entry(svc.clone())
                .or_default()
                .insert(key.1.clone());
            self.slice_owner.insert(key.clone(), (svc.clone(), d));
            touched.insert(svc);
        }
    }

    /// The group of Service `key`, if it has one.
    fn group(&self, key: &Key) -> Option<IpAddr> {
        self.group_of.get(key).map(|(_, ip, _)| *ip)
    }
}

/// What one group's election gave this node.
#[derive(Debug, Default)]
struct Outcome {
    /// The group's Services.
    members: Vec<Key>,
    /// Some live node is elected for the group (its speaker records it).
    won_by_someone: bool,
    /// Addresses this node announces, with the interfaces and the advertisements they go through.
    desired: Vec<(IpAddr, InterfaceFilter, Vec<election::AdvertisementSource>)>,
    /// The group's Services this node announces, with their announced addresses.
    mine: Vec<(Key, Arc<Service>, Vec<IpAddr>)>,
    /// (namespace, name, address) outside every pool.
    out_of_pool: Vec<(String, String, IpAddr)>,
    /// The recorded owner is judged by the fallback (not alive in gossip, never seen there): its
    /// Lease may go stale without any event, so the group is elected again every round.
    fallback: bool,
}

/// What the election reads that every group depends on; a change means a full round.
#[derive(Debug, PartialEq)]
struct GlobalInputs {
    nodes: Vec<NodeInfo>,
    ever_seen: BTreeSet<String>,
    pools: Vec<(String, BTreeMap<String, String>, ferrite_api::lb::IPPoolSpec)>,
    advertisements: Vec<(
        String,
        BTreeMap<String, String>,
        ferrite_api::lb::L2AdvertisementSpec,
    )>,
    converging: bool,
}

/// How often a round recomputes every group even when nothing global changed (a safety net: the
/// incremental rounds are complete on their own).
const FULL_ROUND_INTERVAL: Duration = Duration::from_secs(60);

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
    /// Groups and their Services and EndpointSlices.
    index: Index,
    /// Each group's last election.
    outcomes: HashMap<IpAddr, Outcome>,
    /// Groups this node announces something of.
    winning: BTreeSet<IpAddr>,
    /// Groups re-elected every round ([`Outcome::fallback`]).
    fallback_groups: BTreeSet<IpAddr>,
    /// Services some live node is elected for.
    won_by_someone: HashSet<Key>,
    /// The Services this node announces (all groups' [`Outcome::mine`]).
    mine: BTreeMap<Key, (Arc<Service>, Vec<IpAddr>)>,
    /// The announcer's desired set and each address's advertisements.
    desired: BTreeMap<IpAddr, InterfaceFilter>,
    sources: BTreeMap<IpAddr, Vec<election::AdvertisementSource>>,
    /// Address -> the interfaces it is answered on, as of the last change of the desired set or links.
    announced_on: BTreeMap<IpAddr, Vec<String>>,
    /// The Services recorded as announced here: won and answered on at least one interface.
    recorded: BTreeSet<Key>,
    /// Addresses exposed in `ferrite_lb_announced`, and (Service -> addresses) in
    /// `ferrite_lb_speaker_announced`.
    metric_ips: BTreeSet<IpAddr>,
    metric_services: HashMap<Key, Vec<IpAddr>>,
    /// Services whose claim waits for [`CLAIM_INTERVAL`] (looked at every round until sent or moot).
    reclaim: BTreeSet<Key>,
    /// What every group depends on, as of the last round, and when the last full round ran.
    global: Option<GlobalInputs>,
    last_full: Option<tokio::time::Instant>,
    /// The announcer's plan: a change this node did not make (a link came or went) touches every
    /// announced Service.
    plan: Option<tokio::sync::watch::Receiver<Arc<Plan>>>,
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

/// What one round's groups share.
struct Round<'a> {
    alive: &'a BTreeSet<String>,
    nodes: &'a [NodeInfo],
    node_objs: &'a [Arc<Node>],
    pools: &'a [PoolL2],
    my_labels: &'a BTreeMap<String, String>,
    converging: bool,
}

/// What a group's outcome gives the announcer (to tell whether the desired set changed).
fn desired_of(o: Option<&Outcome>) -> Vec<(IpAddr, &[String], &[election::AdvertisementSource])> {
    o.map(|o| {
        o.desired
            .iter()
            .map(|(ip, f, s)| (*ip, f.patterns(), s.as_slice()))
            .collect()
    })
    .unwrap_or_default()
}

/// The interfaces `ips` are answered on.
fn interfaces_of(announced_on: &BTreeMap<IpAddr, Vec<String>>, ips: &[IpAddr]) -> BTreeSet<String> {
    ips.iter()
        .filter_map(|ip| announced_on.get(ip))
        .flatten()
        .cloned()
        .collect()
}

impl Speaker {
    /// Every parsable pool with its advertisements, and the advertisements that cannot be used (with
    /// the object to report them on).
    fn pools(&self) -> (Vec<PoolL2>, Vec<(ObjectReference, election::AdvertisementError)>) {
        let mut errors = Vec::new();
        let mut parsed = Vec::new();
        // By name: every round (and every speaker) sees them in the same order.
        let mut ads = self.advertisements.state();
        ads.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut pools = self.pools.state();
        pools.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for a in ads {
            match election::parse_advertisement(&a) {
                Ok(p) => parsed.push(p),
                Err(e) => errors.push((a.object_ref(&()), e)),
            }
        }
        let pools = pools
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

    /// One election round: the announcer set, writes queued; pure computation over the caches, never
    /// awaits. A full round recomputes every group; an incremental one only the groups `changes`
    /// touched (module docs). Returns whether it was a full round.
    fn step(&self, prev: &mut Announced, changes: Changes) -> bool {
        let now = tokio::time::Instant::now();
        let mut node_objs = self.nodes.state();
        node_objs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        // Speakers find each other through the Nodes' InternalIPs.
        let peers: BTreeSet<SocketAddr> = node_objs
            .iter()
            .filter_map(|n| internal_ip(n).map(|ip| SocketAddr::new(ip, self.gossip_port)))
            .collect();
        if peers != prev.peers {
            self.membership.join(peers.iter().copied());
            prev.peers = peers;
        }

        let alive = self.membership.alive().borrow().clone();
        prev.ever_seen.extend(alive.iter().cloned());
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
        let converging = now < self.grace_until;
        if !converging && !prev.grace_over {
            prev.grace_over = true;
            tracing::info!("startup grace over: electing every Service");
        }

        // A full round when anything every group depends on changed (or a watch relisted, or the
        // safety-net interval passed); otherwise only the groups the changes touched.
        let mut pool_inputs: Vec<_> = self
            .pools
            .state()
            .iter()
            .map(|p| (p.name_any(), p.labels().clone(), p.spec.clone()))
            .collect();
        pool_inputs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut ad_inputs: Vec<_> = self
            .advertisements
            .state()
            .iter()
            .map(|a| (a.name_any(), a.labels().clone(), a.spec.clone()))
            .collect();
        ad_inputs.sort_by(|a, b| a.0.cmp(&b.0));
        let global = GlobalInputs {
            nodes: nodes.clone(),
            ever_seen: prev.ever_seen.clone(),
            pools: pool_inputs,
            advertisements: ad_inputs,
            converging,
        };
        let full = changes.relisted
            || converging
            || prev.global.as_ref() != Some(&global)
            || prev
                .last_full
                .is_none_or(|t| now.duration_since(t) >= FULL_ROUND_INTERVAL);
        prev.global = Some(global);

        // The groups to elect again, and the Services whose ServiceL2Status to look at again.
        let mut dirty: BTreeSet<IpAddr> = BTreeSet::new();
        let mut touched_status: BTreeSet<Key> = BTreeSet::new();
        if full {
            prev.last_full = Some(now);
            prev.index = Index::default();
            let mut ignored = BTreeSet::new();
            for obj in self.slices.state() {
                let s = Slice::from_dynamic(&obj);
                prev.index
                    .slice(&(s.namespace.clone(), s.name.clone()), Some(&s), &mut ignored);
            }
            for svc in self.services.state() {
                let key = key_of(&*svc);
                let served = Some(&*svc).filter(|s| self.policy.serves(s));
                prev.index.service(&key, served, &mut dirty);
            }
            dirty.extend(prev.outcomes.keys().copied());
        } else {
            let mut by_slices: BTreeSet<Key> = BTreeSet::new();
            for key in &changes.slices {
                prev.index.slice(key, self.slice(key).as_ref(), &mut by_slices);
            }
            for key in &changes.services {
                let svc = self.service(key);
                let served = svc.as_deref().filter(|s| self.policy.serves(s));
                prev.index.service(key, served, &mut dirty);
            }
            dirty.extend(by_slices.iter().filter_map(|k| prev.index.group(k)));
            for key in changes.statuses {
                dirty.extend(prev.index.group(&key));
                touched_status.insert(key);
            }
            dirty.extend(prev.fallback_groups.iter().copied());
        }

        // Elect the dirty groups: first take out what their last elections contributed (a Service
        // may have moved from one dirty group to another), then put in the new results.
        let olds: HashMap<IpAddr, Outcome> = dirty
            .iter()
            .filter_map(|ip| prev.outcomes.remove(ip).map(|o| (*ip, o)))
            .collect();
        // Services whose announcement may have changed: metrics, Events, claims looked at again.
        let mut touched: BTreeSet<Key> = BTreeSet::new();
        for (ip, o) in &olds {
            for k in &o.members {
                prev.won_by_someone.remove(k);
            }
            for (k, _, _) in &o.mine {
                prev.mine.remove(k);
                touched.insert(k.clone());
            }
            touched_status.extend(o.members.iter().cloned());
            prev.winning.remove(ip);
        }
        let round = Round {
            alive: &alive,
            nodes: &nodes,
            node_objs: &node_objs,
            pools: &pools,
            my_labels: &my_labels,
            converging,
        };
        let mut desired_changed = false;
        let mut out_of_pool_now: HashSet<(String, String, IpAddr)> = HashSet::new();
        for ip in &dirty {
            prev.fallback_groups.remove(ip);
            let old = olds.get(ip);
            let members: Vec<Key> = prev
                .index
                .members
                .get(ip)
                .map(|m| m.iter().map(|(_, k)| k.clone()).collect())
                .unwrap_or_default();
            let services: Vec<Arc<Service>> = members.iter().filter_map(|k| self.service(k)).collect();
            let new = (!services.is_empty()).then(|| self.elect_group(*ip, services, &round, prev));
            if desired_of(old) != desired_of(new.as_ref()) {
                desired_changed = true;
            }
            let Some(o) = new else {
                continue;
            };
            if o.won_by_someone {
                prev.won_by_someone.extend(o.members.iter().cloned());
            }
            for (k, svc, ips) in &o.mine {
                prev.mine.insert(k.clone(), (svc.clone(), ips.clone()));
                touched.insert(k.clone());
            }
            touched_status.extend(o.members.iter().cloned());
            out_of_pool_now.extend(o.out_of_pool.iter().cloned());
            if !o.desired.is_empty() || !o.mine.is_empty() {
                prev.winning.insert(*ip);
            }
            if o.fallback {
                prev.fallback_groups.insert(*ip);
            }
            prev.outcomes.insert(*ip, o);
        }
        // An out-of-pool warning is kept while some group still has the address outside every pool.
        for o in olds.values() {
            for k in &o.out_of_pool {
                if !out_of_pool_now.contains(k) {
                    prev.warned_out_of_pool.remove(k);
                }
            }
        }
        drop(olds);

        // The announcer: set only when the desired set changed (it recomputes its plan over all of it).
        let links_changed = prev
            .plan
            .as_mut()
            .is_some_and(|p| p.has_changed().unwrap_or(false));
        if desired_changed {
            let mut desired = BTreeMap::new();
            let mut sources = BTreeMap::new();
            for o in prev.winning.iter().filter_map(|ip| prev.outcomes.get(ip)) {
                for (ip, filter, from) in &o.desired {
                    desired.insert(*ip, filter.clone());
                    sources.insert(*ip, from.clone());
                }
            }
            self.announcer.set(desired.clone());
            prev.desired = desired;
            prev.sources = sources;
        }
        if desired_changed || links_changed || full {
            if let Some(p) = prev.plan.as_mut() {
                p.borrow_and_update();
            }
            prev.announced_on = self.announcer.announced();
            self.report_interface_problems(
                &prev.desired,
                &prev.announced_on,
                &prev.sources,
                &mut prev.warned_interfaces,
            );
            // `ferrite_lb_announced`: the addresses answered on at least one interface.
            let now_ips: BTreeSet<IpAddr> = prev.announced_on.keys().copied().collect();
            for ip in prev.metric_ips.difference(&now_ips) {
                let _ = self
                    .announced_metric
                    .remove_label_values(&[&ip.to_string(), &self.me]);
            }
            for ip in now_ips.difference(&prev.metric_ips) {
                self.announced_metric
                    .with_label_values(&[&ip.to_string(), &self.me])
                    .set(1);
            }
            prev.metric_ips = now_ips;
        }
        if links_changed || full {
            // The interfaces of any announced Service may differ.
            touched.extend(prev.mine.keys().cloned());
        }
        touched.extend(std::mem::take(&mut prev.reclaim));

        // Record ownership, tell people, keep the metric: all through the background queue.
        let mut recorded_changed = false;
        for key in &touched {
            let entry = prev.mine.get(key).cloned();
            let ifaces: BTreeSet<String> = entry
                .as_ref()
                .map(|(_, ips)| interfaces_of(&prev.announced_on, ips))
                .unwrap_or_default();
            // Recorded as announced here: won, and answered on at least one interface (as MetalLB, an
            // elected node with no matching interface announces nothing and records nothing).
            let is_recorded = entry.is_some() && !ifaces.is_empty();
            recorded_changed |= if is_recorded {
                prev.recorded.insert(key.clone())
            } else {
                prev.recorded.remove(key)
            };
            self.set_service_metric(key, entry.as_ref().filter(|_| is_recorded), prev);
            let Some((svc, ips)) = entry else {
                if let Some(ips) = prev.services.remove(key) {
                    for ip in ips {
                        tracing::info!(service = %key.1, namespace = %key.0, ip = %ip, "stopped announcing");
                    }
                }
                prev.since.remove(key);
                prev.claimed.remove(key);
                continue;
            };
            let newly = prev.services.get(key) != Some(&ips);
            let recent = prev
                .claimed
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < CLAIM_INTERVAL);
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
            if is_recorded && current.as_ref().map(|st| &st.spec) != Some(&spec) {
                if recent {
                    prev.reclaim.insert(key.clone());
                } else {
                    self.writes.push(Write::Claim {
                        namespace: key.0.clone(),
                        name: key.1.clone(),
                        uid: svc.uid().unwrap_or_default(),
                        spec,
                    });
                    prev.claimed.insert(key.clone(), now);
                }
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
                if let Some(old) = prev.services.get(key) {
                    for ip in old.iter().filter(|ip| !ips.contains(ip)) {
                        tracing::info!(service = %key.1, namespace = %key.0, ip = %ip, "stopped announcing");
                    }
                }
                prev.services.insert(key.clone(), ips);
            }
        }
        if recorded_changed {
            self.writes.set_wanted(prev.recorded.clone());
        }

        // ServiceL2Statuses naming this node for Services it does not announce: delete them (not while
        // converging: then only the Services already naming this node are elected at all). Also those
        // left behind by a node whose speaker is gone (crashed, node deleted) for Services nobody is
        // elected for any more (no endpoint, no address, no advertisement, not served): nobody would
        // ever rewrite them, so one speaker, the first live node by name, deletes them. A full round
        // looks at every ServiceL2Status, an incremental one at those of the Services it touched and
        // at the deletes queued more than RELEASE_INTERVAL ago.
        if !converging {
            let janitor = alive.iter().next().map(String::as_str) == Some(self.me.as_str());
            if full {
                for st in self.statuses.state() {
                    if st.spec.node != self.me && !janitor {
                        continue;
                    }
                    self.consider_release(&st, janitor, &alive, now, prev);
                }
            } else {
                let due: Vec<Key> = prev
                    .released
                    .iter()
                    .filter(|(_, t)| now.duration_since(**t) >= RELEASE_INTERVAL)
                    .map(|(k, _)| k.clone())
                    .collect();
                let keys: BTreeSet<&Key> = touched_status.iter().chain(&touched).chain(&due).collect();
                for key in keys {
                    if let Some(st) = self.status_of(key) {
                        self.consider_release(&st, janitor, &alive, now, prev);
                    }
                }
            }
        }
        // Bounded: a release older than the retry interval has done its job (the record is gone, or a
        // later round queues it again), so deleted Services leave nothing behind.
        prev.released
            .retain(|k, t| !prev.recorded.contains(k) && now.duration_since(*t) < RELEASE_INTERVAL);
        full
    }

    /// Queues the delete of ServiceL2Status `st` if it names this node and the Service is not recorded
    /// here, or (`janitor`) names a dead node and nobody is elected for the Service.
    fn consider_release(
        &self,
        st: &ServiceL2Status,
        janitor: bool,
        alive: &BTreeSet<String>,
        now: tokio::time::Instant,
        prev: &mut Announced,
    ) {
        let key = key_of(st);
        let stale = st.spec.node != self.me
            && janitor
            && !alive.contains(&st.spec.node)
            && !prev.won_by_someone.contains(&key);
        if st.spec.node != self.me && !stale {
            return;
        }
        if prev.recorded.contains(&key)
            || prev
                .released
                .get(&key)
                .is_some_and(|t| now.duration_since(*t) < RELEASE_INTERVAL)
        {
            return;
        }
        self.writes.push(Write::Release {
            namespace: key.0.clone(),
            name: key.1.clone(),
            resource_version: st.resource_version(),
        });
        prev.released.insert(key, now);
    }

    /// `ferrite_lb_speaker_announced` of Service `key`: 1 for each address while it is recorded as
    /// announced here (`announced`), absent otherwise (not elected, or elected with no interface).
    fn set_service_metric(
        &self,
        key: &Key,
        announced: Option<&(Arc<Service>, Vec<IpAddr>)>,
        prev: &mut Announced,
    ) {
        let want: Vec<IpAddr> = announced.map(|(_, ips)| ips.clone()).unwrap_or_default();
        let had = prev.metric_services.remove(key).unwrap_or_default();
        if had == want {
            if !want.is_empty() {
                prev.metric_services.insert(key.clone(), want);
            }
            return;
        }
        let service = format!("{}/{}", key.0, key.1);
        for ip in had.iter().filter(|ip| !want.contains(ip)) {
            let _ =
                self.speaker_announced
                    .remove_label_values(&[&service, "layer2", &self.me, &ip.to_string()]);
        }
        for ip in want.iter().filter(|ip| !had.contains(ip)) {
            self.speaker_announced
                .with_label_values(&[&service, "layer2", &self.me, &ip.to_string()])
                .set(1);
        }
        if !want.is_empty() {
            prev.metric_services.insert(key.clone(), want);
        }
    }

    /// The cached Service `key`.
    fn service(&self, key: &Key) -> Option<Arc<Service>> {
        self.services
            .get(&reflector::ObjectRef::new(&key.1).within(&key.0))
    }

    /// The cached EndpointSlice `key` (namespace, slice name).
    fn slice(&self, key: &Key) -> Option<Slice> {
        self.slices
            .get(&reflector::ObjectRef::new_with(&key.1, self.slice_resource.clone()).within(&key.0))
            .map(|o| Slice::from_dynamic(&o))
    }

    /// Elects one group: the Services whose first address is `first`, oldest first.
    fn elect_group(
        &self,
        first: IpAddr,
        services: Vec<Arc<Service>>,
        round: &Round<'_>,
        prev: &mut Announced,
    ) -> Outcome {
        let mut group = Group {
            services: vec![],
            ips: vec![],
        };
        for svc in services {
            for ip in service::current_ips(&svc) {
                if !group.ips.contains(&ip) {
                    group.ips.push(ip);
                }
            }
            group.services.push(svc);
        }
        let mut out = Outcome {
            members: group.services.iter().map(|s| key_of(&**s)).collect(),
            ..Outcome::default()
        };
        let pools = round.pools;
        // Only addresses an IPPool contains are announced (module docs); the others are reported.
        let (in_pool, outside): (Vec<IpAddr>, Vec<IpAddr>) = group
            .ips
            .iter()
            .partition(|ip| pools.iter().any(|p| p.addresses.contains(**ip)));
        // Not while converging: a speaker that sees only itself would rank itself first and repeat a
        // Warning its peers already gave.
        if !outside.is_empty() && !round.converging {
            let mut now = BTreeSet::new();
            self.report_out_of_pool(&group, &outside, round.alive, round.node_objs, prev, &mut now);
            out.out_of_pool = now.into_iter().collect();
        }
        // The pool of the first announced address decides the advertisements (and so the node
        // selectors), as its first address decides the ranking.
        let Some(pool) = in_pool
            .first()
            .and_then(|ip| pools.iter().find(|p| p.addresses.contains(*ip)))
        else {
            return out;
        };
        let service_labels: Vec<&BTreeMap<String, String>> =
            group.services.iter().map(|s| s.labels()).collect();
        let announcing = election::announcing(&pool.advertisements, &service_labels);
        if announcing.is_empty() {
            // Allocate-only pool, or no advertisement's serviceSelectors match: nobody announces.
            return out;
        }
        let slices: Vec<Slice> = out
            .members
            .iter()
            .filter_map(|k| prev.index.slices_of.get(k).map(|names| (k, names)))
            .flat_map(|(k, names)| names.iter().map(move |n| (k.0.clone(), n.clone())))
            .filter_map(|sk| self.slice(&sk))
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
            current_owner: out
                .members
                .iter()
                .find_map(|k| self.status_of(k).map(|st| st.spec.node.clone())),
            node_selectors: announcing.iter().map(|a| a.node_selectors.clone()).collect(),
        };
        // Fallback liveness for the recorded owner when gossip cannot tell: a node this speaker has
        // never seen in gossip (UDP blocked between some nodes, or we just restarted) keeps its
        // addresses while its Node is Ready and its kubelet Lease is fresh. A node gossip has seen and
        // then lost is dead at once (the fast path).
        let unseen_owner = view
            .current_owner
            .as_ref()
            .filter(|o| !round.alive.contains(*o) && !prev.ever_seen.contains(*o));
        out.fallback = unseen_owner.is_some();
        let owner_by_fallback = unseen_owner.filter(|o| {
            round
                .node_objs
                .iter()
                .find(|n| n.name_any() == **o)
                .is_some_and(|n| {
                    let lease = self
                        .node_leases
                        .get(&reflector::ObjectRef::new(o).within(NODE_LEASE_NAMESPACE));
                    node_healthy(n, lease.as_deref(), jiff::Timestamp::now())
                })
        });
        let with_fallback: Vec<NodeInfo>;
        let nodes = match owner_by_fallback {
            Some(o) => {
                with_fallback = round
                    .nodes
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
            None => round.nodes,
        };
        let result = election::elect(&view, nodes);
        out.won_by_someone = matches!(result, Ok(Some(_)));
        match result {
            Ok(Some(winner))
                if winner == self.me
                    && (!round.converging || view.current_owner.as_deref() == Some(&self.me)) =>
            {
                for ip in &in_pool {
                    // Each address on the interfaces its own pool's advertisements give this node.
                    let Some(p) = pools.iter().find(|p| p.addresses.contains(*ip)) else {
                        continue;
                    };
                    let ads = election::announcing(&p.advertisements, &service_labels);
                    let Some(patterns) = election::interfaces_on(&ads, round.my_labels) else {
                        continue;
                    };
                    // Validated with the advertisement; a failure here cannot happen, but would only
                    // leave the address unannounced.
                    match InterfaceFilter::new(patterns) {
                        Ok(f) => {
                            out.desired
                                .push((*ip, f, ads.iter().map(|a| a.source.clone()).collect()));
                        }
                        Err(e) => tracing::warn!(%ip, error = %e, "interfaces invalid; not announcing"),
                    }
                }
                for svc in &group.services {
                    let ips: Vec<IpAddr> = service::current_ips(svc)
                        .into_iter()
                        .filter(|ip| out.desired.iter().any(|(d, _, _)| d == ip))
                        .collect();
                    if ips.is_empty() {
                        continue;
                    }
                    out.mine.push((key_of(&**svc), svc.clone(), ips));
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(ip = %first, error = %e, "an advertisement's nodeSelector is invalid")
            }
        }
        out
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
        warned: &mut BTreeSet<(String, String)>,
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
                if warned.contains(&key) {
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
                warned.insert(key);
            }
        }
        warned.retain(|k| now.contains(k));
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

    /// The oldest write whose key is not in `busy` (a write of that key is in flight).
    fn pop_except(&mut self, busy: &BTreeSet<&WriteKey>) -> Option<Write> {
        let mut i = 0;
        while let Some(key) = self.order.get(i) {
            if !self.writes.contains_key(key) {
                self.order.remove(i);
            } else if busy.contains(key) {
                i += 1;
            } else {
                let key = self.order.remove(i)?;
                return self.writes.remove(&key);
            }
        }
        None
    }

    #[cfg(test)]
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

/// What drains the queue: the API server ([`ApiWriter`]), or a fake in tests.
trait WriteApi: Send + Sync + 'static {
    fn write<'a>(&'a self, w: &'a Write) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

impl WriteApi for ApiWriter {
    fn write<'a>(&'a self, w: &'a Write) -> futures::future::BoxFuture<'a, Result<(), String>> {
        Box::pin(ApiWriter::write(self, w))
    }
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
    fn start<W: WriteApi>(
        registry: &Registry,
        writer: W,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
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
        tokio::spawn(q.clone().drain(Arc::new(writer), shutdown));
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

    /// Sends the queued writes, up to [`API_CONCURRENCY`] at once, never two of one key at once (so
    /// the claim and the release of one ServiceL2Status land in the order they were decided).
    async fn drain<W: WriteApi>(self, writer: Arc<W>, shutdown: CancellationToken) {
        type Done = (Write, Result<Result<(), String>, tokio::time::error::Elapsed>);
        let mut running: tokio::task::JoinSet<Done> = tokio::task::JoinSet::new();
        let mut busy: HashMap<tokio::task::Id, WriteKey> = HashMap::new();
        loop {
            while running.len() < API_CONCURRENCY {
                let next = {
                    let mut p = self.lock();
                    let in_flight: BTreeSet<&WriteKey> = busy.values().collect();
                    let w = p.pop_except(&in_flight);
                    self.depth.set(i64::try_from(p.len()).unwrap_or(i64::MAX));
                    w
                };
                let Some(w) = next else { break };
                let key = w.key();
                let writer = writer.clone();
                let task = running.spawn(async move {
                    let r = tokio::time::timeout(API_CALL_TIMEOUT, writer.write(&w)).await;
                    (w, r)
                });
                busy.insert(task.id(), key);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                    let (id, out) = match done {
                        Ok((id, out)) => (id, Some(out)),
                        Err(e) => (e.id(), None),
                    };
                    busy.remove(&id);
                    let Some((w, result)) = out else { continue };
                    let kind = w.kind();
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
                _ = self.wake.notified() => {}
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
    fn a_key_in_flight_is_skipped_and_keeps_its_place() {
        let mut p = Pending::default();
        p.push(claim("ns", "a"), 10);
        p.push(claim("ns", "b"), 10);
        p.push(event("a", "Announcing", "ev a"), 10);
        let a = WriteKey::Status("ns".into(), "a".into());
        let busy = BTreeSet::from([&a]);
        assert_eq!(p.pop_except(&busy).map(|w| note(&w)).as_deref(), Some("claim b"));
        assert_eq!(p.pop_except(&busy).map(|w| note(&w)).as_deref(), Some("ev a"));
        assert!(
            p.pop_except(&busy).is_none(),
            "only a's claim is left, and a is in flight"
        );
        // A newer write of a replaces the waiting one; once a is free it goes first.
        p.push(release("ns", "a"), 10);
        assert_eq!(p.len(), 1);
        assert_eq!(
            p.pop_except(&BTreeSet::new()).map(|w| note(&w)).as_deref(),
            Some("release a")
        );
        assert!(p.pop_except(&BTreeSet::new()).is_none());
    }

    /// Records how many writes are in flight, and that two of one key never overlap.
    #[derive(Default)]
    struct SlowApi {
        state: Mutex<(usize, usize, BTreeSet<WriteKey>, Vec<String>)>,
        overlap: std::sync::atomic::AtomicBool,
    }

    impl WriteApi for SlowApi {
        fn write<'a>(&'a self, w: &'a Write) -> futures::future::BoxFuture<'a, Result<(), String>> {
            Box::pin(async move {
                {
                    let mut st = self.state.lock().expect("lock");
                    st.0 += 1;
                    st.1 = st.1.max(st.0);
                    if !st.2.insert(w.key()) {
                        self.overlap.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut st = self.state.lock().expect("lock");
                st.0 -= 1;
                st.2.remove(&w.key());
                st.3.push(note(w));
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn the_queue_sends_sixteen_at_a_time_never_two_of_one_service() {
        let api = Arc::new(SlowApi::default());
        let stop = CancellationToken::new();
        let q = ApiQueue {
            pending: Arc::default(),
            wake: Arc::new(Notify::new()),
            depth: IntGauge::new("d", "d").expect("gauge"),
            results: IntCounterVec::new(Opts::new("r", "r"), &["kind", "result"]).expect("counter"),
        };
        for i in 0..64 {
            q.push(claim("ns", &format!("s{i}")));
        }
        tokio::spawn(q.clone().drain(api.clone(), stop.clone()));
        // A release of s0 queued while its claim is in flight waits for the claim.
        tokio::time::sleep(Duration::from_millis(5)).await;
        q.push(release("ns", "s0"));
        let t0 = std::time::Instant::now();
        loop {
            if api.state.lock().expect("lock").3.len() == 65 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "all 65 writes done within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let st = api.state.lock().expect("lock");
        assert_eq!(
            st.1, API_CONCURRENCY,
            "at most and at best {API_CONCURRENCY} in flight"
        );
        assert!(
            !api.overlap.load(std::sync::atomic::Ordering::SeqCst),
            "two writes of one key overlapped"
        );
        let pos = |n: &str| st.3.iter().position(|x| x == n).expect("sent");
        assert!(pos("claim s0") < pos("release s0"), "the release after the claim");
        // 65 writes of 20 ms, 16 at a time: about 100 ms, not 1.3 s.
        assert!(t0.elapsed() < Duration::from_millis(900), "{:?}", t0.elapsed());
        stop.cancel();
    }

    fn lb_svc(class: Option<&str>, type_: &str) -> Service {
        let mut spec = json!({"type": type_, "ports": [{"port": 80}], "selector": {"app": "web"},
            "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.10"});
        if let Some(c) = class {
            spec["loadBalancerClass"] = json!(c);
        }
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "u1", "resourceVersion": "5",
                "creationTimestamp": "2026-12-01T10:00:00Z", "labels": {"app": "web"},
                "annotations": {"lb.ferrite.dev/ip-allocated-from-pool": "lan", "big": "x".repeat(4096)},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
            "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10", "ports": [{"port": 80, "protocol": "TCP"}]}]}}
        }))
        .expect("service")
    }

    #[test]
    fn the_service_cache_keeps_what_the_election_reads_and_stubs_other_classes() {
        let policy = Classes {
            class: ferrite_api::lb::DEFAULT_LOAD_BALANCER_CLASS.into(),
            default_class: true,
        };
        let mut s = lb_svc(None, "LoadBalancer");
        let ips_before = service::current_ips(&s);
        trim_service(&policy, &mut s);
        assert!(policy.serves(&s), "still served after trimming");
        assert_eq!(service::current_ips(&s), ips_before);
        assert_eq!(s.metadata.uid.as_deref(), Some("u1"));
        assert!(s.metadata.creation_timestamp.is_some());
        assert_eq!(s.labels().get("app").map(String::as_str), Some("web"));
        assert!(s.metadata.annotations.is_none());
        let spec = s.spec.as_ref().expect("spec");
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert!(spec.ports.is_none() && spec.selector.is_none() && spec.cluster_ip.is_none());
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(
            v["status"]["loadBalancer"]["ingress"],
            json!([{"ip": "192.0.2.10"}])
        );

        for mut other in [
            lb_svc(Some("example.com/other"), "LoadBalancer"),
            lb_svc(None, "ClusterIP"),
        ] {
            let full = serde_json::to_vec(&other).expect("json").len();
            trim_service(&policy, &mut other);
            assert!(!policy.serves(&other));
            assert!(other.spec.is_none() && other.status.is_none() && other.metadata.labels.is_none());
            assert_eq!(other.metadata.name.as_deref(), Some("web"));
            let size = serde_json::to_vec(&other).expect("json").len();
            assert!(size * 10 < full, "a stub: {size} of {full} bytes");
        }
    }

    #[test]
    fn the_slice_cache_keeps_endpoints_nodes_and_conditions_only() {
        let mut o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "ns", "generateName": "web-",
                "labels": {"kubernetes.io/service-name": "web", "endpointslice.kubernetes.io/managed-by": "x"},
                "managedFields": [{"manager": "kube-controller-manager"}]},
            "addressType": "IPv4",
            "ports": [{"port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": true},
                 "topology": {"kubernetes.io/hostname": "n2"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}}
            ]
        }))
        .expect("slice");
        let before = Slice::from_dynamic(&o);
        trim_slice(&mut o);
        let after = Slice::from_dynamic(&o);
        assert_eq!(after.service.as_deref(), Some("web"));
        assert_eq!(
            after.serving_nodes().collect::<Vec<_>>(),
            before.serving_nodes().collect::<Vec<_>>()
        );
        assert_eq!(after.serving_nodes().collect::<Vec<_>>(), ["n1", "n2"]);
        assert!(after.has_serving());
        assert!(o.metadata.managed_fields.is_none());
        assert_eq!(o.metadata.labels.as_ref().map(|l| l.len()), Some(1));
        assert_eq!(
            o.data,
            json!({"endpoints": [
                {"conditions": {"ready": true}, "nodeName": "n1"},
                {"conditions": {"ready": false, "serving": true}, "nodeName": "n2"},
                {"conditions": {"ready": false}}
            ]})
        );
    }

    #[test]
    fn the_node_cache_keeps_labels_internal_ip_and_two_conditions() {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1", "labels": {"zone": "a"}, "annotations": {"x": "y"}},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}, {"type": "Hostname", "address": "n1"}],
                "conditions": [
                    {"type": "Ready", "status": "True", "lastHeartbeatTime": "2026-12-01T10:00:00Z", "message": "ok"},
                    {"type": "NetworkUnavailable", "status": "True"},
                    {"type": "MemoryPressure", "status": "False"}],
                "images": [{"names": ["registry/big:1"], "sizeBytes": 1}],
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "k",
                    "osImage": "o", "containerRuntimeVersion": "c", "kubeletVersion": "v",
                    "kubeProxyVersion": "v", "operatingSystem": "linux", "architecture": "amd64"}
            }
        }))
        .expect("node");
        let healthy_before = node_healthy(&n, None, jiff::Timestamp::now());
        trim_node(&mut n);
        assert_eq!(internal_ip(&n), "192.0.2.1".parse().ok());
        let info = node_info(&n, &BTreeSet::new());
        assert!(info.network_unavailable);
        assert_eq!(info.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(node_healthy(&n, None, jiff::Timestamp::now()), healthy_before);
        let v = serde_json::to_value(&n).expect("json");
        assert_eq!(
            v["status"],
            json!({"addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
                   "conditions": [{"type": "Ready", "status": "True"}, {"type": "NetworkUnavailable", "status": "True"}]})
        );
        assert!(v.get("spec").is_none());
    }

    #[test]
    fn only_relevant_changes_of_nodes_ask_for_a_full_round() {
        use watcher::Event as E;
        let log = ChangeLog::default();
        let mut hook = relevant(log.clone(), node_projection);
        let mk = |zone: &str, rv: &str| -> Node {
            let mut n: Node = serde_json::from_value(json!({
                "metadata": {"name": "n1", "resourceVersion": rv, "labels": {"zone": zone}},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
            .expect("node");
            trim_node(&mut n);
            n
        };
        hook(&E::Init);
        hook(&E::InitApply(mk("a", "1")));
        hook(&E::InitDone);
        assert!(log.take().global, "the first list");
        hook(&E::Apply(mk("a", "2")));
        assert!(!log.needs_full(), "a heartbeat (same fields) is no change");
        hook(&E::Init);
        hook(&E::InitApply(mk("a", "3")));
        hook(&E::InitDone);
        assert!(!log.needs_full(), "a relist that changed nothing");
        hook(&E::Apply(mk("b", "4")));
        assert!(log.take().global, "a label changed");
        hook(&E::Delete(mk("b", "5")));
        assert!(log.take().global, "deleted");
    }

    #[test]
    fn the_index_files_services_under_their_first_address_and_skips_unchanged_ones() {
        let mut idx = Index::default();
        let key: Key = ("ns".into(), "web".into());
        let s = lb_svc(None, "LoadBalancer");
        let ip: IpAddr = "192.0.2.10".parse().expect("ip");
        let mut dirty = BTreeSet::new();
        idx.service(&key, Some(&s), &mut dirty);
        assert_eq!(dirty, BTreeSet::from([ip]));
        assert_eq!(idx.group(&key), Some(ip));
        // The same Service again (another resourceVersion, an annotation): no group touched.
        let mut again = s.clone();
        again.metadata.resource_version = Some("6".into());
        dirty.clear();
        idx.service(&key, Some(&again), &mut dirty);
        assert!(dirty.is_empty());
        // Its address changes: both groups.
        let mut moved = s.clone();
        moved.status = serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.11"}]}}))
            .expect("status");
        idx.service(&key, Some(&moved), &mut dirty);
        let ip2: IpAddr = "192.0.2.11".parse().expect("ip");
        assert_eq!(dirty, BTreeSet::from([ip, ip2]));
        assert!(!idx.members.contains_key(&ip), "the empty group is gone");
        // Gone (or no longer served).
        dirty.clear();
        idx.service(&key, None, &mut dirty);
        assert_eq!(dirty, BTreeSet::from([ip2]));
        assert!(idx.members.is_empty() && idx.group_of.is_empty());

        // Slices: filed under their Service; an unchanged slice touches nothing.
        let slice = |nodes: &[&str]| Slice {
            namespace: "ns".into(),
            name: "web-1".into(),
            service: Some("web".into()),
            address_type: "IPv4".into(),
            endpoints: nodes
                .iter()
                .map(|n| ferrite_kit::endpointslice::Endpoint {
                    addresses: vec![],
                    ready: true,
                    serving: true,
                    terminating: false,
                    node_name: Some(n.to_string()),
                    zone: None,
                    hostname: None,
                    for_zones: vec![],
                })
                .collect(),
            ports: vec![],
        };
        let sk: Key = ("ns".into(), "web-1".into());
        let mut touched = BTreeSet::new();
        idx.slice(&sk, Some(&slice(&["n1"])), &mut touched);
        assert_eq!(touched, BTreeSet::from([key.clone()]));
        touched.clear();
        idx.slice(&sk, Some(&slice(&["n1"])), &mut touched);
        assert!(touched.is_empty());
        idx.slice(&sk, Some(&slice(&["n1", "n2"])), &mut touched);
        assert_eq!(touched, BTreeSet::from([key.clone()]));
        touched.clear();
        idx.slice(&sk, None, &mut touched);
        assert_eq!(touched, BTreeSet::from([key]));
        assert!(idx.slices_of.is_empty() && idx.slice_owner.is_empty());
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
