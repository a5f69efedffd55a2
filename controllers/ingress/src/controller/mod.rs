//! The control plane: watches, snapshot builds, status and Events, in the same process as the proxy.
//!
//! ```text
//!   watches (every replica)                       debounced build (every replica)
//!   IngressClass, Ingress, Service (kit, trimmed) ─┐  quiet 10 ms / at most 100 ms after the first
//!   EndpointSlice (v1 | v1beta1, kit reader)      ├─> change: build::build ──> SharedSnapshot::store
//!   TLS Secrets (type=kubernetes.io/tls; data     │   (route table, endpoints, certificates,
//!     kept for referenced ones only)              │    default certificate, ACME tokens)
//!   Challenges (when the CRD exists)             ─┘        │ served Ingresses + problems (latest wins)
//!                                                          v
//!                                          writer (leader only): status.loadBalancer, Warning Events
//! ```
//!
//! `/readyz` opens once every watch has listed and the first snapshot built from them is served; the
//! proxy starts accepting at that moment too. SIGTERM stops accepting and drains (the proxy's drain
//! timeout), then the lease is released.

pub mod build;
pub mod challenges;
pub mod secrets;
pub mod writer;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrite_kit::App;
use ferrite_kit::cli::parse_duration;
use ferrite_kit::endpointslice::{SERVICE_NAME_LABEL, Slice, SliceVersion};
use ferrite_kit::watch::{Change, SharedWatch, Trim};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus::{GaugeVec, Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::proxy::{LoadBalance, Proxy, ProxyConfig, SharedSnapshot, Snapshot, self_signed_default};
use crate::routes::{RouteTable, SecretRef};
use build::{CertState, Inputs};
use writer::{Job, Publish, Writer};

/// `reportingController` of the Events and the name in logs.
pub const REPORTER: &str = "ingress.ferrite.dev/controller";
/// The Lease name when `--lease-name` is not given.
pub const LEASE_DEFAULT: &str = "ferrite-ingress-controller";

/// The proxy's tuning flags, passed to [`ProxyConfig`].
#[derive(clap::Args, Clone, Debug)]
pub struct ProxyArgs {
    /// Answer plain-HTTP requests for hosts with TLS with a 308 redirect to HTTPS.
    #[arg(long, env = "FERRITE_INGRESS_HTTPS_REDIRECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub https_redirect: bool,
    /// The port written into HTTPS redirects (the port clients reach the TLS listener on; 443 is left out).
    #[arg(long, env = "FERRITE_INGRESS_HTTPS_REDIRECT_PORT", default_value_t = 443)]
    pub https_redirect_port: u16,
    /// The port clients reach the plain listener on (the Service port in front of the pod), sent to
    /// backends as X-Forwarded-Port; unset: the listener's own port.
    #[arg(long, env = "FERRITE_INGRESS_PUBLIC_HTTP_PORT")]
    pub public_http_port: Option<u16>,
    /// The port clients reach the TLS listener on, for X-Forwarded-Port; unset: the listener's own.
    #[arg(long, env = "FERRITE_INGRESS_PUBLIC_HTTPS_PORT")]
    pub public_https_port: Option<u16>,
    /// Time a client has to send a complete request head (and to finish the TLS handshake).
    /// Also the longest idle time of an HTTP/1.1 keep-alive connection (hyper times the next head
    /// from the moment the connection goes idle), so keep it at least --idle-timeout.
    #[arg(long, env = "FERRITE_INGRESS_HEADER_READ_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub header_read_timeout: Duration,
    /// A client connection with no request in flight for this long is closed.
    #[arg(long, env = "FERRITE_INGRESS_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// Time allowed to connect to an endpoint.
    #[arg(long, env = "FERRITE_INGRESS_UPSTREAM_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "5s")]
    pub upstream_connect_timeout: Duration,
    /// How long an unused pooled upstream connection is kept.
    #[arg(long, env = "FERRITE_INGRESS_UPSTREAM_IDLE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub upstream_idle_timeout: Duration,
    /// How long an endpoint that refused a connection is tried last.
    #[arg(long, env = "FERRITE_INGRESS_EJECTION_DURATION", value_parser = parse_duration, default_value = "10s")]
    pub ejection_duration: Duration,
    /// Largest request head in bytes (431 beyond; at least 8192).
    #[arg(long, env = "FERRITE_INGRESS_MAX_HEADER_BYTES", default_value_t = 32 * 1024)]
    pub max_header_bytes: usize,
    /// Most request header fields (431 beyond).
    #[arg(long, env = "FERRITE_INGRESS_MAX_HEADERS", default_value_t = 100)]
    pub max_headers: usize,
    /// On SIGTERM, how long in-flight requests and tunnels get to finish.
    #[arg(long, env = "FERRITE_INGRESS_DRAIN_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub drain_timeout: Duration,
    /// Largest request body in bytes (413 beyond); 0: no limit.
    #[arg(long, env = "FERRITE_INGRESS_MAX_BODY_BYTES", default_value_t = 0)]
    pub max_body_bytes: u64,
    /// Time an upstream has to send its response head once the request body is sent (504), and the
    /// longest gap in its body; 0: no limit.
    #[arg(long, env = "FERRITE_INGRESS_UPSTREAM_RESPONSE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub upstream_response_timeout: Duration,
    /// Longest wait for the next piece of a request body from the client (408 beyond); 0: no limit.
    #[arg(long, env = "FERRITE_INGRESS_CLIENT_BODY_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub client_body_timeout: Duration,
    /// Most requests in flight at once; beyond, 503 at once (no queue). 0: no limit.
    #[arg(long, env = "FERRITE_INGRESS_MAX_IN_FLIGHT", default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// How an endpoint is chosen: round-robin, or p2c (power of two choices, fewer requests in flight).
    #[arg(long, env = "FERRITE_INGRESS_LOAD_BALANCE", value_enum, default_value_t = LoadBalanceArg::RoundRobin)]
    pub load_balance: LoadBalanceArg,
    /// Every connection on both listeners starts with a PROXY protocol v1/v2 header (behind a load
    /// balancer that sends one); connections without it are closed.
    #[arg(long, env = "FERRITE_INGRESS_PROXY_PROTOCOL", default_value_t = false, action = clap::ArgAction::Set)]
    pub proxy_protocol: bool,
    /// One JSON access log line per request on stdout.
    #[arg(long, env = "FERRITE_INGRESS_ACCESS_LOG", default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
}

/// `--load-balance` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadBalanceArg {
    RoundRobin,
    P2c,
}

impl From<LoadBalanceArg> for LoadBalance {
    fn from(v: LoadBalanceArg) -> Self {
        match v {
            LoadBalanceArg::RoundRobin => LoadBalance::RoundRobin,
            LoadBalanceArg::P2c => LoadBalance::P2c,
        }
    }
}

/// Flags of `ferrite-ingress controller` (besides the kit's CommonArgs and the worker threads).
#[derive(clap::Args, Clone, Debug)]
pub struct ControllerArgs {
    /// Plain HTTP listener (routes, ACME HTTP-01, redirects).
    #[arg(long, env = "FERRITE_INGRESS_HTTP_LISTEN", default_value = "0.0.0.0:80")]
    pub http_listen: SocketAddr,
    /// TLS listener.
    #[arg(long, env = "FERRITE_INGRESS_HTTPS_LISTEN", default_value = "0.0.0.0:443")]
    pub https_listen: SocketAddr,
    /// NAMESPACE/NAME of the proxy's own Service: its addresses (LoadBalancer: status.loadBalancer
    /// ip and hostname, and externalIPs; NodePort: externalIPs or the ClusterIP; ClusterIP: the
    /// ClusterIP; ExternalName: the name) are written into every served Ingress's status.
    #[arg(
        long,
        env = "FERRITE_INGRESS_PUBLISH_SERVICE",
        conflicts_with = "publish_status_address"
    )]
    pub publish_service: Option<String>,
    /// Fixed addresses (IPs or hostnames, comma-separated) written into served Ingresses' status.
    #[arg(long, env = "FERRITE_INGRESS_PUBLISH_STATUS_ADDRESS", value_delimiter = ',')]
    pub publish_status_address: Vec<String>,
    /// NAMESPACE/NAME of a kubernetes.io/tls Secret served to clients whose SNI has no certificate
    /// (default: a self-signed certificate for ingress-default.ferrite.invalid).
    #[arg(long, env = "FERRITE_INGRESS_DEFAULT_SSL_CERTIFICATE")]
    pub default_ssl_certificate: Option<String>,
    /// A build waits until no change arrived for this long...
    #[arg(long, env = "FERRITE_INGRESS_DEBOUNCE", value_parser = parse_duration, default_value = "10ms")]
    pub debounce: Duration,
    /// ...but never longer than this after the first change.
    #[arg(long, env = "FERRITE_INGRESS_DEBOUNCE_MAX", value_parser = parse_duration, default_value = "100ms")]
    pub debounce_max: Duration,
    /// While the Challenge CRD (ferrite-certs) is not installed, discovery is asked again this often.
    #[arg(long, env = "FERRITE_INGRESS_CRD_DISCOVERY_INTERVAL", value_parser = parse_duration, default_value = "15s")]
    pub crd_discovery_interval: Duration,
    #[command(flatten)]
    pub proxy: ProxyArgs,
}

fn namespaced(flag: &str, v: &str) -> anyhow::Result<(String, String)> {
    match v.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => anyhow::bail!("--{flag} {v:?}: expected NAMESPACE/NAME"),
    }
}

impl ControllerArgs {
    /// The proxy's configuration, its metrics in `registry` (fields the proxy adds later keep their
    /// defaults).
    #[allow(clippy::needless_update)]
    pub fn proxy_config(&self, registry: Option<Registry>) -> ProxyConfig {
        let p = &self.proxy;
        ProxyConfig {
            http_addr: self.http_listen,
            https_addr: self.https_listen,
            redirect_to_https: p.https_redirect,
            https_redirect_port: p.https_redirect_port,
            public_http_port: p.public_http_port,
            public_https_port: p.public_https_port,
            header_read_timeout: p.header_read_timeout,
            idle_timeout: p.idle_timeout,
            upstream_connect_timeout: p.upstream_connect_timeout,
            upstream_idle_timeout: p.upstream_idle_timeout,
            ejection_duration: p.ejection_duration,
            max_header_bytes: p.max_header_bytes,
            max_headers: p.max_headers,
            drain_timeout: p.drain_timeout,
            max_body_bytes: (p.max_body_bytes > 0).then_some(p.max_body_bytes),
            upstream_response_timeout: p.upstream_response_timeout,
            client_body_timeout: p.client_body_timeout,
            max_in_flight: p.max_in_flight,
            load_balance: p.load_balance.into(),
            proxy_protocol: p.proxy_protocol,
            access_log: p.access_log,
            registry,
            ..ProxyConfig::default()
        }
    }

    /// Where status addresses come from.
    pub fn publish(&self) -> anyhow::Result<Publish> {
        if let Some(s) = &self.publish_service {
            let (namespace, name) = namespaced("publish-service", s)?;
            return Ok(Publish::Service { namespace, name });
        }
        let addrs: Vec<String> = self
            .publish_status_address
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        Ok(if addrs.is_empty() {
            Publish::Off
        } else {
            Publish::Addresses(addrs)
        })
    }

    pub fn default_secret(&self) -> anyhow::Result<Option<SecretRef>> {
        self.default_ssl_certificate
            .as_deref()
            .map(|v| {
                namespaced("default-ssl-certificate", v)
                    .map(|(namespace, name)| SecretRef { namespace, name })
            })
            .transpose()
    }
}

/// The control plane's metrics (the proxy registers its own).
#[derive(Clone, Debug)]
pub struct Metrics {
    pub swaps: IntCounter,
    pub build_duration: Histogram,
    pub served: IntGauge,
    pub routes: IntGauge,
    pub warnings: IntGaugeVec,
    pub expiry: GaugeVec,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Metrics {
            swaps: IntCounter::new(
                "ferrite_ingress_route_table_swaps_total",
                "Snapshots (route table, endpoints, certificates, ACME tokens) swapped into the proxy.",
            )?,
            build_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ferrite_ingress_snapshot_build_duration_seconds",
                    "Time to build one snapshot from the cached objects.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            )?,
            served: IntGauge::new(
                "ferrite_ingress_served_ingresses",
                "Ingresses this controller serves (class decision) in the current snapshot.",
            )?,
            routes: IntGauge::new(
                "ferrite_ingress_routes",
                "Compiled routes (host + path) in the current snapshot.",
            )?,
            warnings: IntGaugeVec::new(
                Opts::new(
                    "ferrite_ingress_ingress_warnings",
                    "Problems in served Ingresses in the current snapshot, by Event reason.",
                ),
                &["reason"],
            )?,
            expiry: GaugeVec::new(
                Opts::new(
                    "ferrite_ingress_ssl_certificate_expiry_timestamp_seconds",
                    "notAfter (Unix seconds) of the leaf certificate of every served TLS Secret \
                     (ingress-nginx: nginx_ingress_controller_ssl_expire_time_seconds).",
                ),
                &["namespace", "secret"],
            )?,
        };
        registry.register(Box::new(m.swaps.clone()))?;
        registry.register(Box::new(m.build_duration.clone()))?;
        registry.register(Box::new(m.served.clone()))?;
        registry.register(Box::new(m.routes.clone()))?;
        registry.register(Box::new(m.warnings.clone()))?;
        registry.register(Box::new(m.expiry.clone()))?;
        Ok(m)
    }
}

/// Wakes `changed` on every change of `watch`; for Ingresses only when more than the status changed
/// (the writer's own status writes must not rebuild the table).
fn wake_on<K>(watch: &SharedWatch<K>, changed: Arc<Notify>, fingerprint: fn(&K) -> u64)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let mut sub = watch.subscribe();
    tokio::spawn(async move {
        let mut seen: HashMap<kube::runtime::reflector::ObjectRef<K>, u64> = HashMap::new();
        while let Some(c) = sub.next_change().await {
            let key = kube::runtime::reflector::ObjectRef::from_obj(&**c.object());
            let wake = match &c {
                Change::Applied(o) => seen.insert(key, fingerprint(o)) != Some(fingerprint(o)),
                Change::Deleted(_) => {
                    seen.remove(&key);
                    true
                }
            };
            if wake {
                changed.notify_one();
            }
        }
    });
}

fn hash_of(v: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(v)
}

fn any_version(o: &impl kube::Resource) -> u64 {
    hash_of(&o.meta().resource_version)
}

fn ingress_fingerprint(i: &Ingress) -> u64 {
    // Spec changes bump generation; the legacy class annotation does not, so annotations count too.
    hash_of(&(&i.metadata.generation, &i.metadata.annotations, &i.metadata.uid))
}

/// EndpointSlices by (namespace, Service), fed by one watch of the version the server has.
#[derive(Clone, Default)]
struct Slices {
    by_name: Arc<std::sync::Mutex<SliceMap>>,
    synced: Arc<AtomicBool>,
}

/// Slices by (namespace, name), and the grouping by Service of the last build (dropped on a change,
/// so a build after an Ingress-only change does not regroup).
#[derive(Default)]
struct SliceMap {
    by_name: HashMap<(String, String), Arc<Slice>>,
    grouped: Option<Arc<build::SlicesByService>>,
}

impl Slices {
    fn grouped(&self) -> Arc<build::SlicesByService> {
        let mut m = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(g) = &m.grouped {
            return g.clone();
        }
        let mut out: build::SlicesByService = HashMap::new();
        for s in m.by_name.values() {
            if let Some(svc) = &s.service {
                out.entry((s.namespace.clone(), svc.clone()))
                    .or_default()
                    .push(s.clone());
            }
        }
        let out = Arc::new(out);
        m.grouped = Some(out.clone());
        out
    }

    async fn run(
        self,
        api: Api<kube::api::DynamicObject>,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let config = watcher::Config::default().labels(SERVICE_NAME_LABEL);
        let mut stream = watcher(api, config).default_backoff().boxed();
        let mut relist: Option<std::collections::HashSet<(String, String)>> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let mut m = self.by_name.lock().unwrap_or_else(|p| p.into_inner());
            let wake = match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "EndpointSlice watch failed; retrying with backoff");
                    false
                }
                Some(Ok(watcher::Event::Init)) => {
                    relist = Some(Default::default());
                    false
                }
                Some(Ok(watcher::Event::InitApply(o))) | Some(Ok(watcher::Event::Apply(o))) => {
                    let s = Slice::from_dynamic(&o);
                    let key = (s.namespace.clone(), s.name.clone());
                    if let Some(r) = relist.as_mut() {
                        r.insert(key.clone());
                    }
                    let s = Arc::new(s);
                    m.by_name.insert(key, s.clone()) != Some(s)
                }
                Some(Ok(watcher::Event::Delete(o))) => {
                    let s = Slice::from_dynamic(&o);
                    m.by_name.remove(&(s.namespace, s.name)).is_some()
                }
                Some(Ok(watcher::Event::InitDone)) => {
                    if let Some(listed) = relist.take() {
                        m.by_name.retain(|k, _| listed.contains(k));
                    }
                    self.synced.store(true, Ordering::SeqCst);
                    true
                }
            };
            if wake {
                m.grouped = None;
            }
            drop(m);
            if wake {
                changed.notify_one();
            }
        }
    }
}

/// Runs the controller and the proxy until shutdown (SIGTERM), then drains.
pub async fn run(app: App, args: ControllerArgs) -> anyhow::Result<()> {
    let client = app.client.clone();
    let publish = args.publish()?;
    let default_secret = args.default_secret()?;
    let metrics = Metrics::register(&app.registry).context("registering metrics")?;
    let reconcile = app.reconcile_metrics().for_kind("Ingress");
    let status_metrics = app.reconcile_metrics().for_kind("IngressStatus");
    let self_signed = self_signed_default().context("generating the self-signed default certificate")?;

    let shared = Arc::new(SharedSnapshot::new(Snapshot::new(
        RouteTable::empty(),
        self_signed.clone(),
    )));
    let proxy = Proxy::bind(args.proxy_config(Some(app.registry.clone())), shared.clone()).await?;
    tracing::info!(http = ?proxy.http_addr().ok(), https = ?proxy.https_addr().ok(), ?publish, "ferrite-ingress listening; serving after the first snapshot");
    let snapshot_gate = app.readiness.gate("first snapshot served");

    let changed = Arc::new(Notify::new());
    let classes_w: SharedWatch<IngressClass> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    let ingresses_w: SharedWatch<Ingress> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    let services_w: SharedWatch<Service> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    wake_on(&classes_w, changed.clone(), any_version);
    wake_on(&ingresses_w, changed.clone(), ingress_fingerprint);
    wake_on(&services_w, changed.clone(), any_version);
    let version = SliceVersion::detect(&client).await?;
    tracing::info!(?version, "EndpointSlice version");
    let slices = Slices::default();
    tokio::spawn(slices.clone().run(
        version.api_all(client.clone()),
        changed.clone(),
        app.shutdown.clone(),
    ));
    let challenges = challenges::Challenges::default();
    tokio::spawn(challenges.clone().run(
        client.clone(),
        args.crd_discovery_interval,
        changed.clone(),
        app.shutdown.clone(),
    ));
    let secrets = secrets::SecretCache::new(Api::<Secret>::all(client.clone()), changed.clone());

    let (job_tx, job_rx) = tokio::sync::watch::channel(Arc::new(Job::default()));
    let writer = Writer::new(
        ingresses_w.store(),
        services_w.store(),
        client.clone(),
        publish,
        app.events(REPORTER),
        app.leadership.clone(),
        status_metrics,
    );
    let writer_task = tokio::spawn(writer.run(job_rx));

    let shutdown = app.shutdown.clone();
    // Every watch but the Secrets' has listed: the first build tells which Secrets to keep, then the
    // Secret watch starts, so its first list keeps exactly those (no GET per Secret at start).
    let (cs, is, ss) = (classes_w.store(), ingresses_w.store(), services_w.store());
    let listed = async {
        ferrite_kit::admin::wait_synced(&cs).await
            && ferrite_kit::admin::wait_synced(&is).await
            && ferrite_kit::admin::wait_synced(&ss).await
            && {
                while !slices.synced.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                true
            }
    };
    tokio::select! {
        _ = shutdown.cancelled() => { app.finish().await; return Ok(()) }
        ok = listed => if !ok { anyhow::bail!("a watch stopped before its first list") },
    }

    let mut state = BuildState {
        metrics,
        reconcile,
        shared: shared.clone(),
        self_signed,
        default_secret,
        generation: 0,
        expiry_labels: BTreeSet::new(),
    };
    let first = state.build(
        &classes_w,
        &ingresses_w,
        &services_w,
        &slices,
        &secrets,
        &challenges,
        false,
    );
    secrets.set_wanted(first.secrets.clone());
    tokio::spawn(secrets.clone().run(shutdown.clone()));
    while !secrets.synced() {
        tokio::select! {
            _ = shutdown.cancelled() => { app.finish().await; return Ok(()) }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }

    let mut proxy = Some(proxy);
    let mut proxy_task = None;
    let resync = app.run_options().resync;
    let mut pending = true;
    loop {
        if !pending {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed.notified() => {}
                _ = tokio::time::sleep(resync) => {}
            }
            // Coalesce a burst: build when quiet for `debounce`, at the latest `debounce_max` after the
            // first change.
            let first_change = Instant::now();
            loop {
                let left = args.debounce_max.saturating_sub(first_change.elapsed());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(args.debounce.min(left)) => break,
                    _ = changed.notified() => {}
                }
            }
            if shutdown.is_cancelled() {
                break;
            }
        }
        pending = false;
        let built = state.build(
            &classes_w,
            &ingresses_w,
            &services_w,
            &slices,
            &secrets,
            &challenges,
            true,
        );
        secrets.set_wanted(built.secrets.clone());
        let _ = job_tx.send(Arc::new(Job {
            served: built.served,
            problems: built.problems,
        }));
        if let Some(p) = proxy.take() {
            proxy_task = Some(tokio::spawn(p.serve(shutdown.clone())));
            snapshot_gate.open();
            tracing::info!("first snapshot served; ready");
        }
    }
    writer_task.abort();
    if let Some(t) = proxy_task {
        // The proxy drains in-flight requests (bounded by --drain-timeout).
        let _ = t.await;
    }
    app.finish().await;
    Ok(())
}

struct BuildState {
    metrics: Metrics,
    reconcile: ferrite_kit::metrics::ReconcileMetrics,
    shared: Arc<SharedSnapshot>,
    self_signed: Arc<rustls::sign::CertifiedKey>,
    default_secret: Option<SecretRef>,
    generation: u64,
    expiry_labels: BTreeSet<SecretRef>,
}

/// What the main loop keeps of a build.
struct BuildOutcome {
    secrets: BTreeSet<SecretRef>,
    served: Vec<crate::routes::IngressRef>,
    problems: Vec<build::Problem>,
}

impl BuildState {
    #[allow(clippy::too_many_arguments)]
    fn build(
        &mut self,
        classes: &SharedWatch<IngressClass>,
        ingresses: &SharedWatch<Ingress>,
        services: &SharedWatch<Service>,
        slices: &Slices,
        secrets: &secrets::SecretCache,
        challenges: &challenges::Challenges,
        store: bool,
    ) -> BuildOutcome {
        let started = Instant::now();
        let classes: Vec<IngressClass> = classes.store().state().iter().map(|c| (**c).clone()).collect();
        let ingresses = ingresses.store().state();
        let services: HashMap<(String, String), Arc<Service>> = services
            .store()
            .state()
            .into_iter()
            .map(|s| {
                (
                    (
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    ),
                    s,
                )
            })
            .collect();
        let slices = slices.grouped();
        let certificates: HashMap<SecretRef, CertState> = secrets.certificates();
        let acme = challenges.tokens();
        let built = build::build(&Inputs {
            controller: crate::CONTROLLER_NAME,
            classes: &classes,
            ingresses: &ingresses,
            services: &services,
            slices: &slices,
            certificates: &certificates,
            default_secret: self.default_secret.as_ref(),
            self_signed: &self.self_signed,
            acme: &acme,
        });
        let mut snapshot = built.snapshot;
        if store {
            self.generation += 1;
            snapshot.set_generation(self.generation);
            let routes = snapshot.routes().routes().len();
            self.shared.store(snapshot);
            let took = started.elapsed();
            self.metrics.swaps.inc();
            self.metrics.build_duration.observe(took.as_secs_f64());
            self.metrics
                .served
                .set(i64::try_from(built.served.len()).unwrap_or(i64::MAX));
            self.metrics.routes.set(i64::try_from(routes).unwrap_or(i64::MAX));
            self.metrics.warnings.reset();
            for p in &built.problems {
                self.metrics.warnings.with_label_values(&[p.reason]).inc();
            }
            for gone in self
                .expiry_labels
                .iter()
                .filter(|s| !built.expiry.contains_key(s))
            {
                let _ = self
                    .metrics
                    .expiry
                    .remove_label_values(&[&gone.namespace, &gone.name]);
            }
            for (s, t) in &built.expiry {
                self.metrics
                    .expiry
                    .with_label_values(&[&s.namespace, &s.name])
                    .set(*t as f64);
            }
            self.expiry_labels = built.expiry.keys().cloned().collect();
            self.reconcile.success(took);
            tracing::debug!(
                generation = self.generation,
                served = built.served.len(),
                routes,
                problems = built.problems.len(),
                took_ms = took.as_millis() as u64,
                "snapshot swapped"
            );
        }
        BuildOutcome {
            secrets: built.secrets,
            served: built.served,
            problems: built.problems,
        }
    }
}
