//! The allocator controller: gives `type: LoadBalancer` Services addresses from IPPools.
//!
//! ```text
//!   IPPool watch ──> pool reconcile ──> set_pools (when the pools changed) ──> reconcile all Services
//!                         │                └─> IPPool status: counts, Ready / Overlapping conditions
//!   Service watch ─> service reconcile ──> service::parse ──> Allocator::assign ──> status.loadBalancer
//!                         │                                        └─> Events, "pools need a refresh"
//!   Namespace watch (labels for namespaceSelectors)
//!   L2Advertisement watch (+ every IPPool change) ──> advertisement reconcile ──> status Ready, Events
//! ```
//! Service writes: `status.loadBalancer` (server-side apply, resourceVersion precondition) carrying
//! `lb.ferrite.dev/ip-allocated-from-pool` in the same request ([`StatusMetadata`]), then a merge patch of
//! the metadata only when the annotation still differs or the old `lb.ferrite.dev/announcing-node` is
//! present. Sharing refusals are `SharingConflict` Events, other failures `AllocationFailed`. Events go
//! through the kit's recorder ([`ferrite_kit::events`]) with [`event_limits`]: Normal `IPAllocated`
//! Events within a budget, and a Warning said again on a retry or a resync (the same failure, a
//! deprecated annotation) is the first Event's series, not another write per reconcile.
//! One [`Allocator`] in memory is the source of truth while this replica leads. It is an index of the
//! cluster, not of reconciles:
//!
//! ```text
//!   Service watch ──> reflector (store, managedFields dropped) ──> Context::observe ──> Controller
//!                     (and last-applied-configuration)              │                   (--service-workers
//!                                                                   │                    reconciles at once)
//!                                                                   │ Delete: release now (same uid)
//!                                                                   │ relist: release what is gone
//!                                                                   └ release: retry Services waiting
//!                                                                     for an address
//! ```
//!
//! Leadership comes in terms ([`ferrite_kit::leader::Term`]). The allocator is rebuilt only when this
//! replica's term changes, from a fresh LIST of Services (never from the watch cache, which may be in the
//! middle of a relist and miss recent status writes), before anything is assigned; a brief fence lapse in
//! which nobody else took the lease keeps it. Every reconcile reads the term synchronously and refuses to
//! use an allocator of another term. Status writes are bounded by the leader fence and carry the
//! Service's `resourceVersion` as a precondition, so a write of a replica that lost its term cannot
//! overwrite what a newer leader wrote. Only the leader reconciles; all replicas keep their caches warm.

use crate::{
    alloc::{AllocError, Allocator, PoolConfig, PoolError, PoolProblem, PoolStats, ServiceKey},
    service::{self, Classes, RequestError},
};
use ferrite_api::{
    lb::{IPPool, L2Advertisement, L2AdvertisementStatus},
    names,
};
use ferrite_kit::{
    App, ReasonedError,
    conditions::{self, NewCondition, Status},
    events::{EventLimits, Events, RateLimit},
    kube::{
        Api, Client, Resource, ResourceExt,
        runtime::{
            Controller, WatchStreamExt,
            controller::Action,
            reflector::{self, ObjectRef, Store},
            watcher,
        },
    },
    leader::{Leadership, Term},
    status::apply_status,
};
use futures::{StreamExt, TryStreamExt, channel::mpsc, stream};
use k8s_openapi::{
    api::core::v1::{Namespace, Secret, Service},
    jiff::Timestamp,
};
use prometheus::{GaugeVec, IntGauge, Opts, Registry};
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Service asks for something that cannot be given.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The Service's annotations or spec cannot be read.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The IPPool is invalid.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Writing to the API failed.
    #[error(transparent)]
    Kit(#[from] ferrite_kit::Error),
}

impl ReasonedError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Alloc(e) => e.reason(),
            Error::Request(e) => e.reason(),
            Error::Pool(e) => e.reason(),
            Error::Kit(e) => e.reason(),
        }
    }
}

/// Allocator metrics (MetalLB: `metallb_allocator_addresses_total`, `..._in_use_total`).
#[derive(Clone, Debug)]
pub struct Metrics {
    addresses: GaugeVec,
    in_use: GaugeVec,
    out_of_pool: IntGauge,
}

impl Metrics {
    /// Registers the allocator metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let addresses = GaugeVec::new(
            Opts::new(
                "ferrite_lb_pool_addresses",
                "Addresses a pool can hand out, by family.",
            ),
            &["pool", "family"],
        )?;
        let in_use = GaugeVec::new(
            Opts::new(
                "ferrite_lb_pool_addresses_in_use",
                "Addresses of a pool held by Services, by family.",
            ),
            &["pool", "family"],
        )?;
        let out_of_pool = IntGauge::new(
            "ferrite_lb_addresses_out_of_pool",
            "Addresses still held by Services that are no longer inside any IPPool (kept, see docs).",
        )?;
        registry.register(Box::new(addresses.clone()))?;
        registry.register(Box::new(in_use.clone()))?;
        registry.register(Box::new(out_of_pool.clone()))?;
        Ok(Self {
            addresses,
            in_use,
            out_of_pool,
        })
    }

    fn set_pool(&self, pool: &str, stats: &PoolStats) {
        for (family, total, used) in [
            ("IPv4", stats.total_v4, stats.assigned_v4),
            ("IPv6", stats.total_v6, stats.assigned_v6),
        ] {
            self.addresses
                .with_label_values(&[pool, family])
                .set(total as f64);
            self.in_use.with_label_values(&[pool, family]).set(used as f64);
        }
    }

    fn forget_pool(&self, pool: &str) {
        for family in ["IPv4", "IPv6"] {
            let _ = self.addresses.remove_label_values(&[pool, family]);
            let _ = self.in_use.remove_label_values(&[pool, family]);
        }
    }
}

#[derive(Debug, Default)]
struct State {
    alloc: Allocator,
    /// The leadership term the allocator was rebuilt in; another term means rebuild first.
    term: Option<Term>,
    /// uid of the Service incarnation each allocation belongs to: a Delete of an older incarnation of a
    /// name must not release what a recreated Service of that name holds.
    uids: HashMap<ServiceKey, String>,
    /// Deletes seen while a rebuild's LIST is in flight, replayed on its result (the LIST may predate them).
    rebuilding: Option<Vec<(ServiceKey, Option<String>)>>,
    /// Services seen in the watch's current relist, until it is done.
    relist: Option<HashSet<ServiceKey>>,
    /// Services that got no address because none was free: retried as soon as one is released.
    waiting: BTreeSet<ServiceKey>,
    /// (name, generation) of every pool last given to the allocator.
    pools_seen: Vec<(String, String)>,
    pool_errors: BTreeMap<String, PoolError>,
    problems: BTreeMap<String, Vec<PoolProblem>>,
    /// Services that lost an address to an older Service in the last rebuild, with the address.
    rebuild_losers: BTreeMap<ServiceKey, IpAddr>,
    /// Out-of-pool addresses already warned about.
    warned_out_of_pool: BTreeSet<(ServiceKey, IpAddr)>,
}

/// Shared by both reconcilers.
pub struct Context {
    client: Client,
    events: Events,
    leadership: Leadership,
    policy: Classes,
    metrics: Metrics,
    state: Mutex<State>,
    pools: Store<IPPool>,
    namespaces: Store<Namespace>,
    services: Store<Service>,
    /// One rebuild at a time (several reconciles may notice a new term at once).
    rebuild_lock: tokio::sync::Mutex<()>,
    /// Services to reconcile now (waiting ones, after an address was released).
    retry: mpsc::UnboundedSender<ObjectRef<Service>>,
    /// Bumped when allocations change: pool statuses need a refresh.
    pools_dirty: watch::Sender<u64>,
    /// Bumped when the pool set changes: every Service needs a look.
    services_dirty: watch::Sender<u64>,
    resync: Duration,
    /// Set once pools, namespaces and Services are all listed: nothing is rebuilt or assigned before,
    /// or the rebuild would miss Services and hand out their addresses.
    ready: std::sync::atomic::AtomicBool,
    /// Whether the annotation can ride along with the status write.
    status_metadata: StatusMetadata,
    /// The L2Advertisements, set once listed (before that no pool is told it is not announced).
    adverts: std::sync::OnceLock<Store<L2Advertisement>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("policy", &self.policy).finish()
    }
}

fn bump(tx: &watch::Sender<u64>) {
    tx.send_modify(|v| *v = v.wrapping_add(1));
}

/// One item per change of `rx`, at most one per `min_interval`: changes arriving meanwhile are folded
/// into the next item. (A debounce would keep postponing while changes keep coming, so pool status
/// would not move at all during a long burst of allocations.)
fn changes(
    rx: watch::Receiver<u64>,
    min_interval: Duration,
) -> impl futures::Stream<Item = ()> + Send + 'static {
    stream::unfold(rx, move |mut rx| async move {
        rx.changed().await.ok()?;
        tokio::time::sleep(min_interval).await;
        rx.borrow_and_update();
        Some(((), rx))
    })
}

/// Options of the allocator controller.
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerArgs {
    /// `loadBalancerClass` served.
    #[arg(long, env = "FERRITE_LB_CLASS", default_value = ferrite_api::lb::DEFAULT_LOAD_BALANCER_CLASS)]
    pub lb_class: String,

    /// Serve Services without a `loadBalancerClass` too (this is the cluster's default load balancer,
    /// MetalLB's rule). `--default-class=false` to run beside another load balancer that is the default.
    #[arg(long, env = "FERRITE_LB_DEFAULT_CLASS", default_value_t = true, action = clap::ArgAction::Set)]
    pub default_class: bool,

    /// Secret of the speakers' gossip key: when set, the leader creates it (key `key`, 32 random bytes
    /// as hex) if it does not exist, and never changes it once it does (MetalLB's controller does the same
    /// with its memberlist Secret). Unset: the Secret is someone else's (the chart or the operator).
    #[arg(long, env = "FERRITE_LB_GOSSIP_SECRET")]
    pub gossip_secret: Option<String>,

    /// Namespace of the gossip Secret (the pod's namespace in the chart).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ferrite-system")]
    pub gossip_namespace: String,

    /// Service reconciles run at once (at least 1). Each one makes up to a few API calls; more in flight
    /// than the API server serves at once only queue there, time out and are retried (at 10,000 Services
    /// an unbounded number failed by the thousand).
    #[arg(long, env = "FERRITE_LB_SERVICE_WORKERS", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub service_workers: u16,
}

/// Creates the gossip Secret once, as the leader, if it is missing. Retries until it exists.
async fn ensure_gossip_secret(
    api: Api<Secret>,
    name: String,
    leadership: Leadership,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut lead = leadership.subscribe();
    loop {
        if leadership.is_leader() {
            match create_gossip_secret(&api, &name, &leadership).await {
                Ok(true) => {
                    tracing::info!(secret = %name, "created the speakers' gossip Secret with a random key");
                    return;
                }
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(secret = %name, error = %e, "could not create the gossip Secret; retrying")
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = lead.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}

/// Ok(true): created; Ok(false): it exists already (never touched).
async fn create_gossip_secret(
    api: &Api<Secret>,
    name: &str,
    leadership: &Leadership,
) -> Result<bool, ferrite_kit::Error> {
    use rand::Rng;
    if leadership
        .bounded(async { Ok(api.get_opt(name).await?) })
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let mut raw = [0u8; 32];
    rand::make_rng::<rand::rngs::StdRng>().fill_bytes(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "ferrite-lb"}},
        "type": "Opaque",
        "stringData": {"key": hex},
    }))
    .map_err(|e| ferrite_kit::Error::Setup(format!("gossip Secret: {e}")))?;
    match leadership
        .bounded(async { Ok(api.create(&Default::default(), &secret).await?) })
        .await
    {
        Ok(_) => Ok(true),
        Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the allocator until shutdown.
pub async fn run(app: App, args: ControllerArgs) -> anyhow::Result<()> {
    let client = app.client.clone();
    ferrite_kit::client::require_crd::<IPPool>(&client).await?;
    ferrite_kit::client::require_crd::<L2Advertisement>(&client).await?;
    let metrics = Metrics::register(&app.registry)?;

    // Pools and namespaces: reflectors whose stores the reconcilers read.
    let pools_ctl = Controller::new(Api::<IPPool>::all(client.clone()), watcher::Config::default());
    let pools = pools_ctl.store();
    let (namespaces, ns_writer) = reflector::store();
    let ns_stream = reflector::reflector(
        ns_writer,
        watcher(Api::<Namespace>::all(client.clone()), Default::default()),
    )
    .default_backoff()
    .touched_objects();
    app.readiness
        .gate("watch namespaces")
        .open_when_synced(namespaces.clone());
    tokio::spawn(ns_stream.for_each(|_| async {}));

    let (services, svc_writer) = reflector::store();
    let (retry, retry_rx) = mpsc::unbounded();
    let (pools_dirty, pools_dirty_rx) = watch::channel(0u64);
    let (services_dirty, services_dirty_rx) = watch::channel(0u64);
    let ctx = Arc::new(Context {
        client: client.clone(),
        events: app
            .events(names::LB_CONTROLLER_REPORTER)
            .with_limits(event_limits())?,
        leadership: app.leadership.clone(),
        policy: Classes {
            class: args.lb_class.clone(),
            default_class: args.default_class,
        },
        metrics,
        state: Mutex::new(State::default()),
        pools: pools.clone(),
        namespaces: namespaces.clone(),
        services: services.clone(),
        rebuild_lock: tokio::sync::Mutex::new(()),
        retry,
        pools_dirty,
        services_dirty,
        resync: app.run_options().resync,
        ready: std::sync::atomic::AtomicBool::new(false),
        status_metadata: StatusMetadata::default(),
        adverts: std::sync::OnceLock::new(),
    });
    // The Services watch feeds the store, then the allocator index (deletes, relists), then the Controller.
    let svc_events = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        // Cached without what the allocator never reads: managedFields, and kubectl's copy of the whole
        // object in last-applied-configuration (as large as the Service itself in kubectl-applied clusters).
        .modify(|s| {
            s.managed_fields_mut().clear();
            if let Some(a) = s.metadata.annotations.as_mut() {
                a.remove(LAST_APPLIED);
            }
        })
        .reflect(svc_writer)
        .inspect_ok({
            let ctx = ctx.clone();
            move |ev| ctx.observe(ev)
        })
        .touched_objects();
    let services_ctl = Controller::for_stream(svc_events, services)
        .with_config(
            ferrite_kit::kube::runtime::controller::Config::default().concurrency(args.service_workers),
        )
        .reconcile_on(retry_rx);
    if let Some(name) = args.gossip_secret.clone() {
        tokio::spawn(ensure_gossip_secret(
            Api::namespaced(client.clone(), &args.gossip_namespace),
            name,
            app.leadership.clone(),
            app.shutdown.clone(),
        ));
    }

    let pools_ctl = pools_ctl.reconcile_all_on(changes(pools_dirty_rx, Duration::from_millis(250)));
    let services_ctl = services_ctl.reconcile_all_on(changes(services_dirty_rx, Duration::ZERO));

    let opts = app.run_options();
    tracing::info!(class = %ctx.policy.class, default_class = ctx.policy.default_class, "allocator starting");
    let pool_runner = tokio::spawn(ferrite_kit::runner::run(
        pools_ctl,
        ctx.clone(),
        reconcile_pool,
        opts.clone(),
    ));
    // L2Advertisements: validated by the leader (status + Events); the speakers act on them. Every
    // change of a pool (its labels too) looks at all of them again: which pools they select may change.
    let adverts_ctl = Controller::new(
        Api::<L2Advertisement>::all(client.clone()),
        watcher::Config::default(),
    );
    let adverts = adverts_ctl.store();
    {
        // The pools' Announced condition reads the advertisements once they are listed.
        let ctx = ctx.clone();
        let adverts = adverts.clone();
        tokio::spawn(async move {
            if ferrite_kit::admin::wait_synced(&adverts).await {
                let _ = ctx.adverts.set(adverts);
                bump(&ctx.pools_dirty);
            }
        });
    }
    let adverts_ctl = adverts_ctl.watches(
        Api::<IPPool>::all(client.clone()),
        watcher::Config::default(),
        move |_pool| {
            adverts
                .state()
                .iter()
                .map(|a| ObjectRef::from_obj(a.as_ref()))
                .collect::<Vec<_>>()
        },
    );
    let advert_runner = tokio::spawn(ferrite_kit::runner::run(
        adverts_ctl,
        ctx.clone(),
        reconcile_advertisement,
        opts.clone(),
    ));
    // Services are looked at only once the pools and namespaces are known, so the first rebuild sees
    // every pool and no Service is told "no pool" while the pools are still loading.
    ferrite_kit::admin::wait_synced(&pools).await;
    ferrite_kit::admin::wait_synced(&namespaces).await;
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if ferrite_kit::admin::wait_synced(&ctx.services).await {
                ctx.ready.store(true, std::sync::atomic::Ordering::SeqCst);
                bump(&ctx.services_dirty);
                bump(&ctx.pools_dirty);
            }
        });
    }
    ferrite_kit::runner::run(services_ctl, ctx.clone(), reconcile_service, opts).await;
    let _ = pool_runner.await;
    let _ = advert_runner.await;
    app.finish().await;
    Ok(())
}

impl Context {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The allocator, valid for this replica's current term: rebuilt from a fresh LIST first when the term
    /// changed, pools re-read when they changed. Fails with NotLeader when this replica does not lead (or
    /// its term changed while rebuilding).
    async fn state_for_term(&self) -> Result<(std::sync::MutexGuard<'_, State>, Term), Error> {
        let term = self.leadership.term().ok_or(ferrite_kit::Error::NotLeader)?;
        if self.lock().term != Some(term) {
            self.rebuild(term).await?;
        }
        let mut st = self.lock();
        if st.term != Some(term) || self.leadership.term() != Some(term) {
            return Err(ferrite_kit::Error::NotLeader.into());
        }
        self.refresh_pools(&mut st, false);
        Ok((st, term))
    }

    /// Rebuilds the allocator for `term` from a fresh LIST of Services (the watch cache may be mid-relist
    /// and miss status writes of the last term, which would hand their addresses out twice).
    async fn rebuild(&self, term: Term) -> Result<(), Error> {
        let _one = self.rebuild_lock.lock().await;
        if self.lock().term == Some(term) {
            return Ok(());
        }
        self.lock().rebuilding = Some(Vec::new());
        let api: Api<Service> = Api::all(self.client.clone());
        let listed = self
            .leadership
            .bounded(async { Ok(api.list(&Default::default()).await?) })
            .await;
        let mut st = self.lock();
        let deleted_meanwhile = st.rebuilding.take().unwrap_or_default();
        let listed = listed?;
        if self.leadership.term() != Some(term) {
            return Err(ferrite_kit::Error::NotLeader.into());
        }
        st.alloc = Allocator::new();
        self.refresh_pools(&mut st, true);
        let mut requests = Vec::new();
        st.uids.clear();
        for s in listed
            .items
            .iter()
            .filter(|s| self.policy.serves(s) && s.meta().deletion_timestamp.is_none())
        {
            let labels = self.namespace_labels(s);
            // A Service whose annotations no longer parse still holds what its status shows: adopt
            // that, so its address is not handed to anyone else.
            let req = match service::parse(s, &labels) {
                Ok(p) => p.request,
                Err(_) => service::status_only_request(s, &labels),
            };
            if let Some(uid) = s.uid() {
                st.uids.insert(req.key.clone(), uid);
            }
            requests.push(req);
        }
        let n = requests.len();
        st.rebuild_losers.clear();
        for (key, err) in st.alloc.rebuild(requests) {
            if let AllocError::IpInUse { ip, .. } = err {
                st.rebuild_losers.insert(key, ip);
            }
        }
        // Deletes the LIST may predate: release what the same incarnation holds.
        for (key, uid) in deleted_meanwhile {
            release_deleted(&mut st, &key, uid.as_deref());
        }
        st.term = Some(term);
        st.warned_out_of_pool.clear();
        st.waiting.clear();
        self.refresh_out_of_pool(&mut st);
        tracing::info!(
            services = n,
            conflicts = st.rebuild_losers.len(),
            term = %term,
            "allocations rebuilt from a fresh list of Services"
        );
        drop(st);
        bump(&self.services_dirty);
        bump(&self.pools_dirty);
        Ok(())
    }

    /// Gives the allocator the current pools when they changed (or always, with `force`).
    fn refresh_pools(&self, st: &mut State, force: bool) {
        let mut pools: Vec<Arc<IPPool>> = self.pools.state();
        pools.sort_by_key(|p| p.name_any());
        let seen: Vec<(String, String)> = pools
            .iter()
            // generation, not resourceVersion: the pool's own status writes must not count as a change
            // of the pool set (each would re-reconcile every Service).
            .map(|p| {
                (
                    p.name_any(),
                    p.metadata.generation.unwrap_or_default().to_string(),
                )
            })
            .collect();
        if !force && st.pools_seen == seen {
            return;
        }
        let mut configs = vec![];
        st.pool_errors.clear();
        for p in &pools {
            match PoolConfig::from_pool(p) {
                Ok(c) => configs.push(c),
                Err(e) => {
                    st.pool_errors.insert(p.name_any(), e);
                }
            }
        }
        let problems = st.alloc.set_pools(configs);
        st.problems.clear();
        for pr in problems {
            let PoolProblem::Overlapping { pool, .. } = &pr;
            st.problems.entry(pool.clone()).or_default().push(pr);
        }
        // Metrics of pools that are gone.
        for (gone, _) in st
            .pools_seen
            .iter()
            .filter(|(n, _)| !seen.iter().any(|(m, _)| m == n))
        {
            self.metrics.forget_pool(gone);
        }
        st.pools_seen = seen;
        self.refresh_out_of_pool(st);
        bump(&self.services_dirty);
        bump(&self.pools_dirty);
    }

    fn refresh_out_of_pool(&self, st: &mut State) {
        let out = st.alloc.out_of_pool();
        self.metrics
            .out_of_pool
            .set(i64::try_from(out.len()).unwrap_or(i64::MAX));
        // Forget warnings for addresses that are back in a pool, so a later shrink warns again.
        st.warned_out_of_pool.retain(|w| out.contains(w));
    }

    /// Feeds the allocator index from the Services watch: a deleted Service releases its addresses at
    /// once, and after a relist whatever was deleted while the watch was down is released too. Runs on
    /// every replica (cheap; a follower's allocator is rebuilt anyway when its term begins).
    fn observe(&self, ev: &watcher::Event<Service>) {
        let mut st = self.lock();
        let released = match ev {
            watcher::Event::Delete(svc) => {
                let key = ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any());
                let uid = svc.uid();
                if let Some(log) = st.rebuilding.as_mut() {
                    log.push((key.clone(), uid.clone()));
                }
                release_deleted(&mut st, &key, uid.as_deref())
            }
            watcher::Event::Init => {
                st.relist = Some(HashSet::new());
                Released::default()
            }
            watcher::Event::InitApply(svc) => {
                let key = ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any());
                if let Some(seen) = st.relist.as_mut() {
                    seen.insert(key);
                }
                Released::default()
            }
            watcher::Event::InitDone => match st.relist.take() {
                // Held by the allocator, absent from the fresh list: deleted while the watch was down.
                Some(seen) if st.term.is_some() && st.rebuilding.is_none() => {
                    let gone: Vec<ServiceKey> =
                        st.uids.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    let mut any = Released::default();
                    for key in gone {
                        let r = release_deleted(&mut st, &key, None);
                        any.held |= r.held;
                        any.out_of_pool |= r.out_of_pool;
                    }
                    any
                }
                _ => Released::default(),
            },
            watcher::Event::Apply(_) => Released::default(),
        };
        if released.held {
            // The out-of-pool list changes only when a released address was out of pool (computing it
            // walks every allocation: per Delete that was quadratic in a mass deletion).
            if released.out_of_pool {
                self.refresh_out_of_pool(&mut st);
            }
            self.retry_waiting(&mut st);
            drop(st);
            bump(&self.pools_dirty);
        }
    }

    /// An address was released: every Service waiting for one gets another try now, not after its backoff.
    fn retry_waiting(&self, st: &mut State) {
        for key in std::mem::take(&mut st.waiting) {
            let _ = self
                .retry
                .unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
        }
    }

    fn namespace_labels(&self, svc: &Service) -> BTreeMap<String, String> {
        let ns = svc.namespace().unwrap_or_default();
        self.namespaces
            .get(&reflector::ObjectRef::new(&ns))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }
}

/// What [`release_deleted`] freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Released {
    /// The Service held an address.
    held: bool,
    /// One of them was outside every pool (the out-of-pool gauge changes).
    out_of_pool: bool,
}

/// Releases what `key` holds if it is the incarnation `uid` (None: whatever is there).
fn release_deleted(st: &mut State, key: &ServiceKey, uid: Option<&str>) -> Released {
    if let (Some(uid), Some(held_by)) = (uid, st.uids.get(key))
        && held_by != uid
    {
        // A recreated Service of the same name holds it now; the Delete is of an older one.
        return Released::default();
    }
    st.uids.remove(key);
    st.rebuild_losers.remove(key);
    st.waiting.remove(key);
    st.warned_out_of_pool.retain(|(k, _)| k != key);
    let held = st.alloc.assigned(key).is_some();
    let out_of_pool = !st.alloc.out_of_pool_of(key).is_empty();
    st.alloc.release(key);
    if held {
        tracing::info!(service = %key, "released (Service deleted)");
    }
    Released { held, out_of_pool }
}

fn ingress_status(ips: &[IpAddr]) -> serde_json::Value {
    let ingress: Vec<_> = ips
        .iter()
        .map(|ip| serde_json::json!({"ip": ip.to_string()}))
        .collect();
    serde_json::json!({"loadBalancer": {"ingress": ingress}})
}

/// kubectl's client-side apply annotation: dropped from the Service cache (never read, never written here).
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Until every watch has listed, reconciles wait (and are triggered again once it has).
const NOT_READY_RETRY: Duration = Duration::from_millis(500);

/// After a 409 (the Service changed since it was read, e.g. the cache had not seen our last write yet):
/// look again soon, with the newer object.
const CONFLICT_RETRY: Duration = Duration::from_millis(200);

impl Context {
    /// Writes a Service's `status.loadBalancer` in `term`, with the Service's resourceVersion as a
    /// precondition, and in the same request `lb.ferrite.dev/ip-allocated-from-pool` = `pools` when given
    /// (see [`StatusMetadata`]). Ok(None): the Service changed meanwhile (409); nothing was written.
    /// Ok(Some(svc)): the Service as written, for [`Context::write_annotations`] to compare with.
    async fn write_lb_status(
        &self,
        svc: &Service,
        term: Term,
        status: serde_json::Value,
        pools: Option<&str>,
    ) -> Result<Option<Service>, Error> {
        use ferrite_api::lb::annotations::IP_ALLOCATED_FROM_POOL;
        if self.leadership.term() != Some(term) {
            return Err(ferrite_kit::Error::NotLeader.into());
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        let name = svc.name_any();
        let carry = pools.filter(|_| self.status_metadata.may_carry());
        let body = status_body(&name, svc.resource_version().as_deref(), status, carry);
        let params = kube::api::PatchParams::apply(names::LB_CONTROLLER_MANAGER).force();
        match self
            .leadership
            .bounded(async {
                Ok(api
                    .patch_status(&name, &params, &kube::api::Patch::Apply(&body))
                    .await?)
            })
            .await
        {
            Ok(written) => {
                if let Some(want) = carry {
                    let kept = written
                        .annotations()
                        .get(IP_ALLOCATED_FROM_POOL)
                        .map(String::as_str)
                        == Some(want);
                    if self.status_metadata.learn(kept) {
                        tracing::info!(
                            carries = kept,
                            "the API server {} annotations written through a Service's status",
                            if kept { "keeps" } else { "drops" }
                        );
                    }
                }
                Ok(Some(written))
            }
            Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets `lb.ferrite.dev/ip-allocated-from-pool` to `pools` (removes it for `None`) and removes the
    /// `lb.ferrite.dev/announcing-node` of earlier releases, with one merge patch of the Service's
    /// metadata, only when something differs from `svc` (pass the object a status write returned: the
    /// annotation it carried is not written again). Written after the status, in `term`.
    async fn write_annotations(&self, svc: &Service, term: Term, pools: Option<String>) -> Result<(), Error> {
        let patch = annotation_patch(svc, pools);
        let Some(patch) = patch else { return Ok(()) };
        if self.leadership.term() != Some(term) {
            return Err(ferrite_kit::Error::NotLeader.into());
        }
        let api: Api<Service> = Api::namespaced(self.client.clone(), &svc.namespace().unwrap_or_default());
        let name = svc.name_any();
        let params = kube::api::PatchParams::default();
        match self
            .leadership
            .bounded(async {
                Ok(api
                    .patch(&name, &params, &kube::api::Patch::Merge(&patch))
                    .await?)
            })
            .await
        {
            Ok(_) => Ok(()),
            // Deleted meanwhile: nothing to annotate.
            Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The allocator's Event limits: the kit's, with the Normal budget pinned at 100 in a row, then 5 per
/// second. Every Service gets its `IPAllocated` Event in ordinary use; in a mass creation (thousands of
/// Services at once) one Event per Service would be one more API write per Service, each as costly as the
/// status write, for something the status already says. The surplus is counted in
/// `ferrite_events_suppressed_total{reason="IPAllocated",limit="normal"}`. Warning Events are never
/// refused by it.
fn event_limits() -> EventLimits {
    EventLimits {
        normal: Some(RateLimit::per_second(100, 5.0)),
        ..EventLimits::default()
    }
}

/// Whether the API server keeps `metadata.annotations` written through a Service's `status`
/// subresource. The 1.20-era Service status strategy resets only `spec`, so the allocator's annotation
/// rides along with the status write (one request per new Service instead of two); a server that drops
/// it is noticed on the first write (the returned object lacks it) and from then on the annotation is a
/// separate merge patch of the metadata, as before.
#[derive(Debug, Default)]
struct StatusMetadata(std::sync::atomic::AtomicU8);

impl StatusMetadata {
    // 0: not known yet (nothing written).
    const KEPT: u8 = 1;
    const DROPPED: u8 = 2;

    /// Carry the annotation in the status write: not known to be dropped.
    fn may_carry(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed) != Self::DROPPED
    }

    /// Records what one write showed; true when this is news (worth a log line).
    fn learn(&self, kept: bool) -> bool {
        let v = if kept { Self::KEPT } else { Self::DROPPED };
        self.0.swap(v, std::sync::atomic::Ordering::Relaxed) != v
    }
}

/// The server-side-apply body of a Service status write: `status`, the `resourceVersion` precondition
/// when given, and `ip-allocated-from-pool` = `pools` when given.
fn status_body(
    name: &str,
    resource_version: Option<&str>,
    status: serde_json::Value,
    pools: Option<&str>,
) -> serde_json::Value {
    use ferrite_api::lb::annotations::{IP_ALLOCATED_FROM_POOL, METALLB_IP_ALLOCATED_FROM_POOL};
    let mut meta = serde_json::json!({ "name": name });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    if let Some(pools) = pools {
        // MetalLB's key with the same value, so what reads MetalLB's annotation stays right.
        meta["annotations"] =
            serde_json::json!({ IP_ALLOCATED_FROM_POOL: pools, METALLB_IP_ALLOCATED_FROM_POOL: pools });
    }
    serde_json::json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "status": status})
}

/// The merge patch that makes the Service's annotations say `pools` (`None`: no
/// `ip-allocated-from-pool`) without the old `announcing-node`; `None` when they already do.
fn annotation_patch(svc: &Service, pools: Option<String>) -> Option<serde_json::Value> {
    use ferrite_api::lb::annotations::{
        ANNOUNCING_NODE, IP_ALLOCATED_FROM_POOL, METALLB_IP_ALLOCATED_FROM_POOL,
    };
    let have = svc.annotations();
    let mut changes = serde_json::Map::new();
    // Ferrite's key and MetalLB's, with one value: a Service MetalLB allocated before the migration
    // must not keep naming MetalLB's pool once Ferrite moves it, and tools that read MetalLB's key
    // keep working; both go when the Service loses its addresses (as MetalLB's clearServiceState).
    for key in [IP_ALLOCATED_FROM_POOL, METALLB_IP_ALLOCATED_FROM_POOL] {
        if have.get(key) != pools.as_ref() {
            changes.insert(
                key.to_string(),
                pools
                    .clone()
                    .map_or(serde_json::Value::Null, serde_json::Value::String),
            );
        }
    }
    if have.contains_key(ANNOUNCING_NODE) {
        changes.insert(ANNOUNCING_NODE.to_string(), serde_json::Value::Null);
    }
    if changes.is_empty() {
        return None;
    }
    Some(serde_json::json!({"metadata": {"annotations": changes}}))
}

/// The value of `ip-allocated-from-pool`: the pools of the addresses in the order of the status, each
/// once, comma separated; `None` when no address is in a pool.
fn pools_annotation(pool_of: &[Option<String>]) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for p in pool_of.iter().flatten() {
        if !out.contains(&p.as_str()) {
            out.push(p);
        }
    }
    (!out.is_empty()).then(|| out.join(","))
}

async fn reconcile_service(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Action::requeue(NOT_READY_RETRY));
    }
    let key = ServiceKey::new(svc.namespace().unwrap_or_default(), svc.name_any());
    let oref = svc.object_ref(&());
    let current = service::current_ips(&svc);
    let requeue = Action::requeue(ctx.resync);

    if !ctx.policy.serves(&svc) || svc.meta().deletion_timestamp.is_some() {
        let (held, term) = {
            let (mut st, term) = ctx.state_for_term().await?;
            let held = st.alloc.assigned(&key).is_some();
            let out_of_pool = !st.alloc.out_of_pool_of(&key).is_empty();
            st.alloc.release(&key);
            st.uids.remove(&key);
            st.waiting.remove(&key);
            if held {
                if out_of_pool {
                    ctx.refresh_out_of_pool(&mut st);
                }
                ctx.retry_waiting(&mut st);
            }
            (held, term)
        };
        if held {
            bump(&ctx.pools_dirty);
            tracing::info!(service = %key, "released");
        }
        // A Service that stopped being a LoadBalancer loses its address; one handed to another class is
        // that class's business.
        let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
        let mut written = None;
        if held && !is_lb && !current.is_empty() && svc.meta().deletion_timestamp.is_none() {
            match ctx
                .write_lb_status(&svc, term, serde_json::json!({"loadBalancer": {}}), None)
                .await?
            {
                Some(w) => written = Some(w),
                None => return Ok(Action::requeue(CONFLICT_RETRY)),
            }
        }
        // What we wrote while it was ours goes with the addresses (only then: another ferrite-lb of
        // another class may be annotating it now).
        if held && svc.meta().deletion_timestamp.is_none() {
            ctx.write_annotations(written.as_ref().unwrap_or(&svc), term, None)
                .await?;
        }
        return Ok(requeue);
    }

    let parsed = match service::parse(&svc, &ctx.namespace_labels(&svc)) {
        Ok(p) => p,
        Err(e) => {
            // Said again on every retry: the recorder folds identical repeats into one Event's series.
            ctx.events
                .warning(&oref, e.reason(), "Allocate", e.to_string())
                .await;
            return Err(e.into());
        }
    };
    // Said on every reconcile (each write to the Service, each resync); one Event per annotation all the
    // same: the recorder's key has no resourceVersion and folds the identical repeats into its series.
    for key in &parsed.legacy_keys {
        let new = key.replace("metallb.universe.tf/", "metallb.io/");
        ctx.events
            .warning(
                &oref,
                "DeprecatedAnnotation",
                "Allocate",
                format!("annotation {key} is deprecated; use {new} or the lb.ferrite.dev/ key"),
            )
            .await;
    }

    // One look at the allocator: the assignment, a lost duplicate (rebuild) and, for a held address
    // outside every pool, whether that was already said.
    let (result, conflict, fresh_out, holds_nothing, term) = {
        let (mut st, term) = ctx.state_for_term().await?;
        let conflict = st
            .rebuild_losers
            .remove(&key)
            .map(|ip| (ip, st.alloc.holders(ip)));
        let result = st.alloc.assign(&parsed.request);
        let fresh_out: Vec<IpAddr> = if result.is_ok() {
            if let Some(uid) = svc.uid() {
                st.uids.insert(key.clone(), uid);
            }
            st.waiting.remove(&key);
            st.alloc
                .out_of_pool_of(&key)
                .into_iter()
                .filter(|ip| st.warned_out_of_pool.insert((key.clone(), *ip)))
                .collect()
        } else {
            // Waits for an address: retried as soon as any is released.
            if let Err(e) = &result
                && e.may_free_up()
            {
                st.waiting.insert(key.clone());
            }
            vec![]
        };
        let holds_nothing = st.alloc.assigned(&key).is_none();
        (result, conflict, fresh_out, holds_nothing, term)
    };
    if let Some((ip, holders)) = conflict {
        let by = holders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        ctx.events
            .warning(&oref, "IPConflict", "Allocate", format!("IP {ip} is also held by {by}, which is older and keeps it; this Service gets another address"))
            .await;
    }
    // Addresses that fell out of every pool stay with their Services; say so, once.
    for ip in fresh_out {
        ctx.events
            .warning(&oref, "IPOutOfPool", "Allocate", format!("IP {ip} is no longer in any IPPool; the Service keeps it until it is deleted or asks for another address"))
            .await;
    }
    match result {
        Ok(assignment) => {
            let pools = pools_annotation(&assignment.pool_of);
            let mut written = None;
            if assignment.ips != current {
                match ctx
                    .write_lb_status(&svc, term, ingress_status(&assignment.ips), pools.as_deref())
                    .await?
                {
                    Some(w) => written = Some(w),
                    None => return Ok(Action::requeue(CONFLICT_RETRY)),
                }
            }
            if assignment.changed || assignment.ips != current {
                let ips = assignment
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                let from = if assignment.pools.is_empty() {
                    "outside every pool (kept)".to_string()
                } else {
                    format!("from pool {}", assignment.pools.join(", "))
                };
                // Within the Normal Event budget of [`event_limits`].
                ctx.events
                    .normal(
                        &oref,
                        "IPAllocated",
                        "Allocate",
                        format!("Assigned IP {ips} {from}"),
                    )
                    .await;
                tracing::info!(service = %key, ips = %ips, term = %term, "assigned");
                bump(&ctx.pools_dirty);
            }
            ctx.write_annotations(written.as_ref().unwrap_or(&svc), term, pools)
                .await?;
            Ok(requeue)
        }
        Err(e) => {
            // Its status shows an address it does not hold (it lost it to an older Service): take it back
            // off the status so one address is never advertised for two Services.
            let mut written = None;
            if holds_nothing && !current.is_empty() {
                match ctx.write_lb_status(&svc, term, ingress_status(&[]), None).await? {
                    Some(w) => written = Some(w),
                    None => return Ok(Action::requeue(CONFLICT_RETRY)),
                }
            }
            if holds_nothing {
                ctx.write_annotations(written.as_ref().unwrap_or(&svc), term, None)
                    .await?;
            }
            // Sharing refused (port, key, or the externalTrafficPolicy: Local rule): its own reason.
            let reason = if e.is_sharing() {
                "SharingConflict"
            } else {
                "AllocationFailed"
            };
            // A Service that keeps failing the same way is retried with backoff but told once: the
            // recorder folds the identical Warning into the first one's series (10,000 Services no pool
            // served made ~70,000 Event writes in 10 minutes when each retry was one).
            ctx.events.warning(&oref, reason, "Allocate", e.to_string()).await;
            Err(e.into())
        }
    }
}

async fn reconcile_pool(pool: Arc<IPPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.ready.load(std::sync::atomic::Ordering::SeqCst) {
        return Ok(Action::requeue(NOT_READY_RETRY));
    }
    let name = pool.name_any();
    let (pool_error, problems, stats) = {
        let (st, _term) = ctx.state_for_term().await?;
        (
            st.pool_errors.get(&name).cloned(),
            st.problems.get(&name).cloned().unwrap_or_default(),
            st.alloc.stats(&name),
        )
    };

    let mut status = pool.status.clone().unwrap_or_default();
    let generation = pool.metadata.generation;
    let now = Timestamp::now();
    match &pool_error {
        Some(e) => {
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: "Invalid",
                    status: Status::True,
                    reason: e.reason(),
                    message: e.to_string(),
                },
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: names::CONDITION_READY,
                    status: Status::False,
                    reason: e.reason(),
                    message: e.to_string(),
                },
                generation,
                now,
            );
        }
        None => {
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: "Invalid",
                    status: Status::False,
                    reason: "Valid",
                    message: "every entry parses".into(),
                },
                generation,
                now,
            );
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: names::CONDITION_READY,
                    status: Status::True,
                    reason: "Ready",
                    message: "addresses are parsed and in use".into(),
                },
                generation,
                now,
            );
        }
    }
    match problems.first() {
        Some(_) => {
            let message = problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: "Overlapping",
                    status: Status::True,
                    reason: "Overlapping",
                    message,
                },
                generation,
                now,
            );
        }
        None => {
            conditions::set(
                &mut status.conditions,
                NewCondition {
                    type_: "Overlapping",
                    status: Status::False,
                    reason: "NoOverlap",
                    message: "no other pool shares addresses with this one".into(),
                },
                generation,
                now,
            );
        }
    }
    // Announced: whether anything announces the pool's addresses (an allocate-only pool is legal, as in
    // MetalLB, but earlier releases announced an l2-less pool everywhere: say so, once per state).
    let was_announced = conditions_status(pool.status.as_ref(), "Announced");
    let announced = ctx
        .adverts
        .get()
        .map(|store| announced_condition(&pool, &store.state()));
    if let Some((a_status, a_reason, a_message)) = &announced {
        conditions::set(
            &mut status.conditions,
            NewCondition {
                type_: "Announced",
                status: *a_status,
                reason: a_reason,
                message: a_message.clone(),
            },
            generation,
            now,
        );
    }
    let stats = stats.unwrap_or_default();
    let sat = |v: u128| i64::try_from(v).unwrap_or(i64::MAX);
    status.total_ipv4 = sat(stats.total_v4);
    status.total_ipv6 = sat(stats.total_v6);
    status.assigned_ipv4 = sat(stats.assigned_v4);
    status.available_ipv4 = sat(stats.available_v4);
    status.assigned_ipv6 = sat(stats.assigned_v6);
    status.available_ipv6 = sat(stats.available_v6);
    status.observed_generation = generation;
    if pool_error.is_some() {
        ctx.metrics.forget_pool(&name);
    } else {
        ctx.metrics.set_pool(&name, &stats);
    }

    if pool.status.as_ref() != Some(&status) {
        let api: Api<IPPool> = Api::all(ctx.client.clone());
        apply_status(
            &api,
            &name,
            names::LB_CONTROLLER_MANAGER,
            serde_json::to_value(&status).map_err(|e| ferrite_kit::Error::Setup(e.to_string()))?,
            &ctx.leadership,
        )
        .await?;
        if let Some(e) = &pool_error {
            ctx.events
                .warning(&pool.object_ref(&()), e.reason(), "Validate", e.to_string())
                .await;
        }
        if let Some((Status::False, reason, message)) = &announced
            && was_announced.as_deref() != Some("False")
        {
            ctx.events
                .warning(
                    &pool.object_ref(&()),
                    reason,
                    "Validate",
                    format!("IPPool \"{name}\": {message}"),
                )
                .await;
        }
    }
    Ok(Action::requeue(ctx.resync))
}

/// The status ("True"/"False") of the condition `type_` in a pool's status.
fn conditions_status(status: Option<&ferrite_api::lb::IPPoolStatus>, type_: &str) -> Option<String> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

/// The pool's `Announced` condition: True when it has an `l2` block or a valid L2Advertisement selects
/// it (naming them); False, reason `NoAdvertisement`, when nothing does: allocate-only (MetalLB's rule;
/// earlier Ferrite releases announced such a pool from every node).
pub fn announced_condition(
    pool: &IPPool,
    adverts: &[Arc<L2Advertisement>],
) -> (Status, &'static str, String) {
    let name = pool.name_any();
    let mut by: Vec<String> = adverts
        .iter()
        .filter(|a| advertisement_problem(a).is_none())
        .filter(|a| {
            let spec = &a.spec;
            (spec.ip_pools.is_empty() && spec.ip_pool_selectors.is_empty())
                || spec.ip_pools.contains(&name)
                || spec
                    .ip_pool_selectors
                    .iter()
                    .any(|sel| ferrite_kit::selector::matches(sel, pool.labels()).unwrap_or(false))
        })
        .map(|a| format!("L2Advertisement {}", a.name_any()))
        .collect();
    by.sort();
    if pool.spec.l2.is_some() {
        by.insert(0, "its l2 block".to_string());
    }
    if by.is_empty() {
        (
            Status::False,
            "NoAdvertisement",
            "no L2Advertisement selects this pool and it has no l2 block: allocate-only (its addresses are \
             handed out but not announced; earlier Ferrite releases announced such a pool from every node)"
                .to_string(),
        )
    } else {
        (
            Status::True,
            "Announced",
            format!("announced by {}", by.join(", ")),
        )
    }
}

/// Why an L2Advertisement cannot be used: (reason, message naming the field and entry).
pub fn advertisement_problem(adv: &L2Advertisement) -> Option<(&'static str, String)> {
    let spec = &adv.spec;
    // Also inside selectors: a typo there would be stored as `{}`, which selects everything.
    let fields = spec.unknown_fields();
    if !fields.is_empty() {
        return Some((
            "UnknownField",
            crate::alloc::unknown_fields_message(&fields, "L2Advertisement"),
        ));
    }
    for (field, list) in [
        ("ipPoolSelectors", &spec.ip_pool_selectors),
        ("nodeSelectors", &spec.node_selectors),
        ("serviceSelectors", &spec.service_selectors),
    ] {
        for (i, sel) in list.iter().enumerate() {
            if let Err(e) = ferrite_kit::selector::validate(sel) {
                return Some(("InvalidSelector", format!("spec.{field}[{i}]: {e}")));
            }
        }
    }
    if let Some(i) = spec.ip_pools.iter().position(|p| p.trim().is_empty()) {
        return Some(("InvalidPoolName", format!("spec.ipPools[{i}]: empty pool name")));
    }
    if let Err(e) = crate::l2::iface::InterfaceFilter::new(spec.interfaces.iter().cloned()) {
        return Some(("InvalidInterface", format!("spec.interfaces: {e}")));
    }
    None
}

/// The names of the pools `adv` selects (ipPools names OR ipPoolSelectors; both empty: every pool),
/// sorted. Call only for a valid advertisement (an invalid selector selects nothing).
pub fn advertised_pools(adv: &L2Advertisement, pools: &[Arc<IPPool>]) -> Vec<String> {
    let spec = &adv.spec;
    let every = spec.ip_pools.is_empty() && spec.ip_pool_selectors.is_empty();
    let mut out: Vec<String> = pools
        .iter()
        .filter(|p| {
            every
                || spec.ip_pools.contains(&p.name_any())
                || spec
                    .ip_pool_selectors
                    .iter()
                    .any(|sel| ferrite_kit::selector::matches(sel, p.labels()).unwrap_or(false))
        })
        .map(|p| p.name_any())
        .collect();
    out.sort();
    out
}

/// The Ready condition of an advertisement: (status, reason, message).
fn advertisement_ready(adv: &L2Advertisement, pools: &[Arc<IPPool>]) -> (Status, &'static str, String) {
    if let Some((reason, message)) = advertisement_problem(adv) {
        return (Status::False, reason, message);
    }
    let selected = advertised_pools(adv, pools);
    let missing: Vec<&str> = adv
        .spec
        .ip_pools
        .iter()
        .filter(|n| !selected.contains(n))
        .map(String::as_str)
        .collect();
    let missing = if missing.is_empty() {
        String::new()
    } else {
        format!(" (no IPPool named {})", missing.join(", "))
    };
    if selected.is_empty() {
        (
            Status::True,
            "NoPools",
            format!("valid, but selects no pool{missing}: it announces nothing"),
        )
    } else {
        (
            Status::True,
            "Ready",
            format!("announces pools {}{missing}", selected.join(", ")),
        )
    }
}

async fn reconcile_advertisement(adv: Arc<L2Advertisement>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = adv.name_any();
    let pools = ctx.pools.state();
    let (status_value, reason, message) = advertisement_ready(&adv, &pools);
    let mut status: L2AdvertisementStatus = adv.status.clone().unwrap_or_default();
    let generation = adv.metadata.generation;
    conditions::set(
        &mut status.conditions,
        NewCondition {
            type_: names::CONDITION_READY,
            status: status_value,
            reason,
            message: message.clone(),
        },
        generation,
        Timestamp::now(),
    );
    status.observed_generation = generation;
    if adv.status.as_ref() != Some(&status) {
        let api: Api<L2Advertisement> = Api::all(ctx.client.clone());
        apply_status(
            &api,
            &name,
            names::LB_CONTROLLER_MANAGER,
            serde_json::to_value(&status).map_err(|e| ferrite_kit::Error::Setup(e.to_string()))?,
            &ctx.leadership,
        )
        .await?;
        if status_value == Status::False {
            ctx.events
                .warning(
                    &adv.object_ref(&()),
                    reason,
                    "Validate",
                    format!("L2Advertisement \"{name}\": {message}"),
                )
                .await;
        }
    }
    // Which pools are announced may have changed (their Announced condition).
    bump(&ctx.pools_dirty);
    Ok(Action::requeue(ctx.resync))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use serde_json::json;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn pool_config(name: &str, cidr: &str) -> PoolConfig {
        let p: IPPool = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"addresses": [cidr]},
        }))
        .expect("IPPool");
        PoolConfig::from_pool(&p).expect("valid pool")
    }

    fn lb_request(name: &str, ip: &str) -> crate::alloc::Request {
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "app"},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip}]}},
        }))
        .expect("Service");
        service::status_only_request(&s, &BTreeMap::new())
    }

    /// A deleted Service says whether it held an address outside every pool: only then is the
    /// out-of-pool list (a walk over every allocation) computed again.
    #[test]
    fn released_tells_whether_an_out_of_pool_address_went() {
        let mut st = State::default();
        st.alloc.set_pools(vec![pool_config("a", "10.0.0.0/24")]);
        let (inside, outside) = (lb_request("in", "10.0.0.5"), lb_request("out", "192.0.2.9"));
        assert!(st.alloc.rebuild(vec![inside.clone(), outside.clone()]).is_empty());
        assert_eq!(st.alloc.out_of_pool().len(), 1);
        st.uids.insert(inside.key.clone(), "u1".into());
        st.uids.insert(outside.key.clone(), "u2".into());
        // Another incarnation's Delete releases nothing.
        assert_eq!(
            release_deleted(&mut st, &inside.key, Some("old")),
            Released::default()
        );
        assert_eq!(
            release_deleted(&mut st, &inside.key, Some("u1")),
            Released {
                held: true,
                out_of_pool: false
            }
        );
        assert_eq!(
            release_deleted(&mut st, &outside.key, None),
            Released {
                held: true,
                out_of_pool: true
            }
        );
        assert!(st.alloc.out_of_pool().is_empty());
        assert_eq!(release_deleted(&mut st, &outside.key, None), Released::default());
    }

    #[test]
    fn default_class_flag_defaults_to_true_and_takes_a_value() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()));
        let a = parse(&[]).expect("no flags").args;
        assert!(a.default_class);
        assert_eq!(a.lb_class, "ferrite.dev/lb");
        assert!(
            !parse(&["--default-class=false"])
                .expect("false")
                .args
                .default_class
        );
        assert!(
            parse(&["--default-class", "true"])
                .expect("true")
                .args
                .default_class
        );
        assert!(parse(&["--default-class=maybe"]).is_err());
        let a = parse(&["--lb-class=example.com/lb", "--default-class=false"])
            .expect("both")
            .args;
        assert_eq!((a.lb_class.as_str(), a.default_class), ("example.com/lb", false));
    }

    fn svc(annotations: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "web", "namespace": "app", "annotations": annotations}}),
        )
        .expect("Service")
    }

    #[test]
    fn annotations_name_the_pools_and_drop_the_old_announcing_node() {
        let pools =
            |v: &[Option<&str>]| -> Vec<Option<String>> { v.iter().map(|p| p.map(str::to_string)).collect() };
        assert_eq!(
            pools_annotation(&pools(&[Some("v6"), Some("v4")])).as_deref(),
            Some("v6,v4")
        );
        assert_eq!(
            pools_annotation(&pools(&[Some("dual"), Some("dual")])).as_deref(),
            Some("dual")
        );
        assert_eq!(
            pools_annotation(&pools(&[None, Some("v4")])).as_deref(),
            Some("v4")
        );
        assert_eq!(pools_annotation(&pools(&[None])), None);
        assert_eq!(pools_annotation(&[]), None);

        const F: &str = "lb.ferrite.dev/ip-allocated-from-pool";
        const M: &str = "metallb.io/ip-allocated-from-pool";
        // (case, annotations now, wanted pools, patch)
        let cases = [
            ("new", json!({}), Some("lan"), Some(json!({F: "lan", M: "lan"}))),
            ("same", json!({F: "lan", M: "lan"}), Some("lan"), None),
            (
                "moved",
                json!({F: "lan", M: "lan"}),
                Some("dmz"),
                Some(json!({F: "dmz", M: "dmz"})),
            ),
            (
                "migrated from MetalLB: its stale pool is rewritten",
                json!({M: "metallb-pool"}),
                Some("lan"),
                Some(json!({F: "lan", M: "lan"})),
            ),
            (
                "an earlier release wrote only Ferrite's key",
                json!({F: "lan"}),
                Some("lan"),
                Some(json!({M: "lan"})),
            ),
            (
                "lost its addresses",
                json!({F: "lan", M: "lan", "x": "y"}),
                None,
                Some(json!({F: null, M: null})),
            ),
            (
                "lost its addresses, MetalLB's key only",
                json!({M: "metallb-pool"}),
                None,
                Some(json!({M: null})),
            ),
            ("nothing to remove", json!({"x": "y"}), None, None),
            (
                "old announcing-node",
                json!({F: "lan", M: "lan", "lb.ferrite.dev/announcing-node": "n1"}),
                Some("lan"),
                Some(json!({"lb.ferrite.dev/announcing-node": null})),
            ),
        ];
        for (name, have, want, patch) in cases {
            let got = annotation_patch(&svc(have), want.map(str::to_string));
            assert_eq!(
                got,
                patch.map(|a| json!({"metadata": {"annotations": a}})),
                "{name}"
            );
        }
    }

    /// The status write carries the annotation (and the resourceVersion precondition) only when asked.
    #[test]
    fn status_body_carries_the_annotation_when_given() {
        let st = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        let b = status_body("web", Some("7"), st.clone(), Some("lan"));
        assert_eq!(
            b,
            json!({"apiVersion": "v1", "kind": "Service", "status": st,
                   "metadata": {"name": "web", "resourceVersion": "7",
                                "annotations": {"lb.ferrite.dev/ip-allocated-from-pool": "lan",
                                                "metallb.io/ip-allocated-from-pool": "lan"}}})
        );
        let b = status_body("web", None, json!({}), None);
        assert_eq!(b["metadata"], json!({"name": "web"}));
        // What the API server returned is what the follow-up patch compares with: nothing left to write.
        let written = svc(json!({"lb.ferrite.dev/ip-allocated-from-pool": "lan",
                                 "metallb.io/ip-allocated-from-pool": "lan"}));
        assert_eq!(annotation_patch(&written, Some("lan".into())), None);
    }

    /// The first write decides; only a change is news (one log line).
    #[test]
    fn status_metadata_is_learnt_from_the_first_write() {
        let m = StatusMetadata::default();
        assert!(m.may_carry());
        assert!(m.learn(true));
        assert!(!m.learn(true));
        assert!(m.may_carry());
        assert!(m.learn(false));
        assert!(!m.may_carry());
    }

    /// The Normal budget stays lb's (100, then 5/s); the rest is the kit's default.
    #[test]
    fn event_limits_keep_the_ip_allocated_budget() {
        let l = event_limits();
        assert_eq!(l.normal, Some(RateLimit::new(100, Duration::from_millis(200))));
        assert_eq!(l.per_object, EventLimits::default().per_object);
        assert_eq!(l.validate(), Ok(()));
    }

    #[test]
    fn service_workers_flag_is_bounded_below() {
        let parse = |args: &[&str]| Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()));
        assert_eq!(parse(&[]).expect("default").args.service_workers, 32);
        assert_eq!(
            parse(&["--service-workers=4"]).expect("4").args.service_workers,
            4
        );
        assert!(parse(&["--service-workers=0"]).is_err());
    }

    fn adv(spec: serde_json::Value) -> L2Advertisement {
        serde_json::from_value(
            json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement",
                                      "metadata": {"name": "adv"}, "spec": spec}),
        )
        .expect("L2Advertisement")
    }

    fn ippool(name: &str, labels: serde_json::Value) -> Arc<IPPool> {
        Arc::new(
            serde_json::from_value(json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
                                          "metadata": {"name": name, "labels": labels},
                                          "spec": {"addresses": ["192.0.2.0/30"]}}))
            .expect("IPPool"),
        )
    }

    #[test]
    fn a_pool_is_announced_by_its_l2_block_or_a_valid_advertisement() {
        let lan = ippool("lan", json!({"zone": "a"}));
        let mut inline = (*ippool("inline", json!({}))).clone();
        inline.spec.l2 = Some(Default::default());
        let ads = |specs: &[(&str, serde_json::Value)]| -> Vec<Arc<L2Advertisement>> {
            specs
                .iter()
                .map(|(n, spec)| {
                    let mut a = adv(spec.clone());
                    a.metadata.name = Some(n.to_string());
                    Arc::new(a)
                })
                .collect()
        };
        // (case, pool, advertisements, status, reason, message contains)
        let cases = [
            (
                "nothing",
                lan.clone(),
                ads(&[]),
                Status::False,
                "NoAdvertisement",
                "allocate-only",
            ),
            (
                "another pool only",
                lan.clone(),
                ads(&[("x", json!({"ipPools": ["dmz"]}))]),
                Status::False,
                "NoAdvertisement",
                "no L2Advertisement selects this pool and it has no l2 block",
            ),
            (
                "an invalid advertisement does not count",
                lan.clone(),
                ads(&[("bad", json!({"ipPools": ["lan"], "interfaces": ["/eth[/"]}))]),
                Status::False,
                "NoAdvertisement",
                "allocate-only",
            ),
            (
                "by name and by label, sorted",
                lan.clone(),
                ads(&[
                    ("z", json!({"ipPools": ["lan"]})),
                    ("a", json!({"ipPoolSelectors": [{"matchLabels": {"zone": "a"}}]})),
                ]),
                Status::True,
                "Announced",
                "announced by L2Advertisement a, L2Advertisement z",
            ),
            (
                "an advertisement of every pool",
                lan.clone(),
                ads(&[("all", json!({}))]),
                Status::True,
                "Announced",
                "announced by L2Advertisement all",
            ),
            (
                "inline l2",
                Arc::new(inline),
                ads(&[]),
                Status::True,
                "Announced",
                "announced by its l2 block",
            ),
        ];
        for (name, pool, adverts, status, reason, needle) in cases {
            let (s, r, m) = announced_condition(&pool, &adverts);
            assert_eq!((s, r), (status, reason), "{name}: {m}");
            assert!(m.contains(needle), "{name}: {m}");
        }
        let st: ferrite_api::lb::IPPoolStatus = serde_json::from_value(json!({"conditions": [
            {"type": "Announced", "status": "False", "reason": "NoAdvertisement", "message": "m",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}))
        .expect("status");
        assert_eq!(
            conditions_status(Some(&st), "Announced").as_deref(),
            Some("False")
        );
        assert_eq!(conditions_status(Some(&st), "Ready"), None);
        assert_eq!(conditions_status(None, "Announced"), None);
    }

    #[test]
    fn advertisement_validation_and_selected_pools() {
        let pools = vec![
            ippool("lan", json!({"zone": "a"})),
            ippool("dmz", json!({"zone": "b"})),
            ippool("lab", json!({})),
        ];
        // (case, spec, Ready status, reason, message contains)
        let cases = [
            (
                "everything",
                json!({}),
                Status::True,
                "Ready",
                "announces pools dmz, lab, lan",
            ),
            (
                "by name",
                json!({"ipPools": ["lan"]}),
                Status::True,
                "Ready",
                "announces pools lan",
            ),
            (
                "names OR selectors",
                json!({"ipPools": ["lab"], "ipPoolSelectors": [{"matchLabels": {"zone": "b"}}]}),
                Status::True,
                "Ready",
                "announces pools dmz, lab",
            ),
            (
                "a missing name is noted",
                json!({"ipPools": ["lan", "gone"]}),
                Status::True,
                "Ready",
                "announces pools lan (no IPPool named gone)",
            ),
            (
                "selects no pool",
                json!({"ipPoolSelectors": [{"matchLabels": {"zone": "z"}}]}),
                Status::True,
                "NoPools",
                "selects no pool",
            ),
            (
                "bad regex",
                json!({"interfaces": ["eth0", "/eth[/"]}),
                Status::False,
                "InvalidInterface",
                "spec.interfaces: interface pattern \"/eth[/\" is invalid",
            ),
            (
                "name with a space",
                json!({"interfaces": ["eth 0"]}),
                Status::False,
                "InvalidInterface",
                "\"eth 0\"",
            ),
            (
                "name with a slash",
                json!({"interfaces": ["eth/0"]}),
                Status::False,
                "InvalidInterface",
                "\"eth/0\"",
            ),
            (
                "bad node selector",
                json!({"nodeSelectors": [{}, {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}]}),
                Status::False,
                "InvalidSelector",
                "spec.nodeSelectors[1]",
            ),
            (
                "MetalLB's field name",
                json!({"ipAddressPools": ["lan"]}),
                Status::False,
                "UnknownField",
                "unknown field spec.ipAddressPools (MetalLB's name: use ipPools)",
            ),
            (
                "a typo",
                json!({"interface": ["eth0"]}),
                Status::False,
                "UnknownField",
                "unknown field spec.interface (not a field of L2Advertisement lb.ferrite.dev/v1alpha1)",
            ),
            (
                "a typo inside a node selector (stored as {} it would select every node)",
                json!({"nodeSelectors": [{"matchLabel": {"zone": "a"}}]}),
                Status::False,
                "UnknownField",
                "unknown field spec.nodeSelectors[0].matchLabel",
            ),
            (
                "a typo inside a pool selector's expression",
                json!({"ipPoolSelectors": [{"matchExpressions": [{"key": "zone", "operator": "In", "value": ["a"]}]}]}),
                Status::False,
                "UnknownField",
                "unknown field spec.ipPoolSelectors[0].matchExpressions[0].value",
            ),
            (
                "a typo inside a service selector",
                json!({"serviceSelectors": [{"matchLabels": {"a": "b"}, "matchlabels": {}}]}),
                Status::False,
                "UnknownField",
                "unknown field spec.serviceSelectors[0].matchlabels",
            ),
        ];
        for (name, spec, status, reason, needle) in cases {
            let (s, r, m) = advertisement_ready(&adv(spec), &pools);
            assert_eq!((s, r), (status, reason), "{name}: {m}");
            assert!(m.contains(needle), "{name}: {m}");
        }
    }
}
