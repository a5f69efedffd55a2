//! The ferrite-dns controller: watches, the embedded server's zones, RFC2136 syncs, status and Events.
//!
//! ```text
//!   DNSZone / DNSRecord / Service / Ingress watches (kit, shared) ──> change ──> debounce ──> pass
//!   pass: source::desired ──> embedded zones: Zone::build (serial bumped on change) ──> ZonesHandle::swap
//!                        │                                       (every replica serves)
//!                        ├─> leader: DNSZone status (embedded), DNSRecord Programmed, Warning Events
//!                        └─> rfc2136 zones: one worker each (latest desired state, latest wins)
//!   worker (leader only): Secret (get by name) ──> AXFR ──> plan::plan ──> UPDATE batches ──> status
//!                         retried with backoff while the server fails; resynced every --sync-interval
//! ```
//! Every replica builds the desired state and answers queries from it; only the leader writes status,
//! publishes Events and sends updates to RFC2136 servers. Nothing is deleted on a server before every
//! source watch has listed once. RFC2136 zones carry the finalizer `dns.ferrite.dev/records`: deleting
//! the `DNSZone` removes the records we own from the server first (policy `sync` only).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ferrite_api::dns::conditions as condition_types;
use ferrite_api::dns::{DNSRecord, DNSZone, Policy, Provider};
use ferrite_kit::conditions::{self, NewCondition, Status};
use ferrite_kit::events::Events;
use ferrite_kit::finalizer::Finalizer;
use ferrite_kit::kube::runtime::controller::Action;
use ferrite_kit::kube::runtime::reflector::{ObjectRef, Store};
use ferrite_kit::kube::runtime::watcher;
use ferrite_kit::kube::{Api, Resource as _, ResourceExt};
use ferrite_kit::leader::Leadership;
use ferrite_kit::status::apply_status;
use ferrite_kit::watch::{Change, SharedWatch, Trim};
use ferrite_kit::{App, ReasonedError};
use hickory_proto::rr::{Name, Record, RecordType};
use k8s_openapi::api::core::v1::{ObjectReference, Secret, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::sync::{Notify, watch};

use crate::plan::{self, PlanSettings};
use crate::registry::Resource;
use crate::resolve::ZoneSet;
use crate::rfc2136::{self, Rfc2136Client, Timeouts, TsigAlgorithm};
use crate::server::{Server, ServerConfig, ZonesHandle};
use crate::source::{self, Conflict, Index, ObjectProblem, SourceObject, ZoneRecords, ZoneTarget};
use crate::transfer::{Secondary, TransferConfig, ZoneKey};
use crate::tsig::TsigKey;
use crate::zone::Zone;

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "ferrite-dns";
/// Reporter of Events.
pub const REPORTER: &str = "dns.ferrite.dev/controller";
/// Finalizer on RFC2136 zones.
pub const FINALIZER: &str = "dns.ferrite.dev/records";
/// Record operations per UPDATE batch handed to the client (which may split further by size).
const BATCH_RECORDS: usize = 500;
/// Event keys remembered (so one problem gives one Event, not one per pass).
const MAX_EVENT_KEYS: usize = 10_000;

/// Flags of `ferrite-dns controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Address (UDP and TCP) of the embedded authoritative server.
    #[arg(long, env = "FERRITE_DNS_LISTEN", default_value = "0.0.0.0:53")]
    pub dns_listen: SocketAddr,
    /// UDP worker threads of the embedded server (0: one per CPU).
    #[arg(long, env = "FERRITE_DNS_UDP_WORKERS", default_value_t = 0)]
    pub dns_udp_workers: usize,
    /// Changes seen within this time are published together.
    #[arg(long, env = "FERRITE_DNS_DEBOUNCE", default_value = "100ms", value_parser = ferrite_kit::cli::parse_duration)]
    pub debounce: Duration,
    /// Every RFC2136 zone is read back and repaired at least this often.
    #[arg(long, env = "FERRITE_DNS_SYNC_INTERVAL", default_value = "1m", value_parser = ferrite_kit::cli::parse_duration)]
    pub sync_interval: Duration,
    /// Longest wait between retries of a failing RFC2136 sync (starts at 1 s, doubles).
    #[arg(long, env = "FERRITE_DNS_MAX_RETRY_BACKOFF", default_value = "1m", value_parser = ferrite_kit::cli::parse_duration)]
    pub max_retry_backoff: Duration,
}

/// The `ferrite_dns_*` controller metrics (the server registers its query metrics itself).
#[derive(Clone, Debug)]
pub struct Metrics {
    records: GaugeVec,
    serial: GaugeVec,
    sync_duration: HistogramVec,
    updates_sent: IntCounterVec,
    updates_failed: IntCounterVec,
    provider_errors: IntCounterVec,
    last_sync: GaugeVec,
    source_errors: GaugeVec,
}

impl Metrics {
    /// Registers the metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let records = GaugeVec::new(
            Opts::new(
                "ferrite_dns_records",
                "Records published in a zone (RRs, without SOA/NS/registry).",
            ),
            &["zone"],
        )?;
        let serial = GaugeVec::new(
            Opts::new("ferrite_dns_zone_serial", "SOA serial of an embedded zone."),
            &["zone"],
        )?;
        let sync_duration = HistogramVec::new(
            HistogramOpts::new(
                "ferrite_dns_sync_duration_seconds",
                "Time of one RFC2136 sync (read, plan, updates).",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["zone"],
        )?;
        let updates_sent = IntCounterVec::new(
            Opts::new(
                "ferrite_dns_updates_sent_total",
                "RFC2136 UPDATE messages the server accepted.",
            ),
            &["zone"],
        )?;
        let updates_failed = IntCounterVec::new(
            Opts::new(
                "ferrite_dns_updates_failed_total",
                "RFC2136 update batches that failed.",
            ),
            &["zone"],
        )?;
        let provider_errors = IntCounterVec::new(
            Opts::new(
                "ferrite_dns_provider_errors_total",
                "Failed RFC2136 syncs, by reason (Unreachable, Timeout, NotAuth, Refused, ...).",
            ),
            &["zone", "reason"],
        )?;
        let last_sync = GaugeVec::new(
            Opts::new(
                "ferrite_dns_last_sync_timestamp_seconds",
                "Unix time of the last successful sync (RFC2136) or snapshot swap (embedded).",
            ),
            &["zone"],
        )?;
        let source_errors = GaugeVec::new(
            Opts::new(
                "ferrite_dns_source_errors",
                "Objects that publish nothing because of an error, and names lost to a conflict.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(serial.clone()))?;
        registry.register(Box::new(sync_duration.clone()))?;
        registry.register(Box::new(updates_sent.clone()))?;
        registry.register(Box::new(updates_failed.clone()))?;
        registry.register(Box::new(provider_errors.clone()))?;
        registry.register(Box::new(last_sync.clone()))?;
        registry.register(Box::new(source_errors.clone()))?;
        Ok(Self {
            records,
            serial,
            sync_duration,
            updates_sent,
            updates_failed,
            provider_errors,
            last_sync,
            source_errors,
        })
    }

    fn forget(&self, zone: &str) {
        let _ = self.records.remove_label_values(&[zone]);
        let _ = self.serial.remove_label_values(&[zone]);
        let _ = self.last_sync.remove_label_values(&[zone]);
    }
}

/// Why a sync of an RFC2136 zone failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The TSIG Secret could not be read.
    #[error("TSIG Secret {namespace}/{name}: {message}")]
    Secret {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// Why.
        message: String,
    },
    /// The server's address cannot be resolved.
    #[error("server {server:?}: {message}")]
    Address {
        /// The configured server.
        server: String,
        /// Why.
        message: String,
    },
    /// The zone's settings cannot be planned with.
    #[error(transparent)]
    Settings(#[from] plan::PlanSettingsError),
    /// The server failed or refused.
    #[error(transparent)]
    Provider(#[from] rfc2136::Rfc2136Error),
    /// A write to the API failed.
    #[error(transparent)]
    Kit(#[from] ferrite_kit::Error),
}

impl ReasonedError for SyncError {
    fn reason(&self) -> &'static str {
        match self {
            SyncError::Secret { .. } => "SecretUnavailable",
            SyncError::Address { .. } => "BadServerAddress",
            SyncError::Settings(e) => e.reason(),
            SyncError::Provider(e) => e.reason(),
            SyncError::Kit(e) => e.reason(),
        }
    }
}

/// What an RFC2136 worker works on: the latest desired state of its zone.
#[derive(Debug, Clone)]
struct Job {
    zone: Arc<DNSZone>,
    desired: Arc<ZoneRecords>,
    /// [`Index::content_hash`] of `desired`.
    desired_hash: u64,
    conflicts: Vec<String>,
    sources_synced: bool,
}

impl Job {
    /// What a sync depends on: the desired records, the zone's spec and metadata that the finalizer reads,
    /// the conflicts reported and whether deletions are allowed (the zone's status excluded).
    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        serde_json::to_string(&self.zone.spec)
            .unwrap_or_default()
            .hash(&mut h);
        self.zone.metadata.deletion_timestamp.is_some().hash(&mut h);
        self.zone.metadata.finalizers.hash(&mut h);
        self.zone.metadata.uid.hash(&mut h);
        self.desired_hash.hash(&mut h);
        self.conflicts.hash(&mut h);
        self.sources_synced.hash(&mut h);
        h.finish()
    }
}

struct Worker {
    tx: watch::Sender<Option<Arc<Job>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Per embedded zone: the content last served and its serial.
#[derive(Debug, Clone)]
struct Served {
    fingerprint: u64,
    /// [`spec_hash`] of the zone it was built from.
    spec: u64,
    serial: u32,
    zone: Arc<Zone>,
    swapped_at: Timestamp,
}

struct Shared {
    client: ferrite_kit::kube::Client,
    leadership: Leadership,
    events: Events,
    metrics: Metrics,
    /// `ferrite_dns_reconcile_*{kind="DNSZone"}`: one per RFC2136 zone sync (the leader's).
    zone_reconciles: ferrite_kit::metrics::ReconcileMetrics,
    /// `ferrite_dns_reconcile_*{kind="ZoneSet"}`: one per pass that rebuilt the embedded zones.
    pass_reconciles: ferrite_kit::metrics::ReconcileMetrics,
    args: ControllerArgs,
    /// Event keys already published.
    emitted: Mutex<HashSet<(String, String)>>,
}

impl Shared {
    /// A Warning Event once per (object, note) while the problem lasts.
    async fn warn_once(&self, on: &ObjectReference, key: &str, reason: &str, note: String) {
        if !self.leadership.is_leader() {
            return;
        }
        {
            let mut emitted = self.emitted.lock().unwrap_or_else(|p| p.into_inner());
            let k = (key.to_string(), note.clone());
            if emitted.contains(&k) {
                return;
            }
            if emitted.len() >= MAX_EVENT_KEYS {
                emitted.clear();
            }
            emitted.insert(k);
        }
        self.events.warning(on, reason, "Publish", note).await;
    }

    /// Forgets the Events of an object whose problems are gone (so a recurrence is told again).
    fn forget_events(&self, keep: &HashSet<String>, prefix: &str) {
        let mut emitted = self.emitted.lock().unwrap_or_else(|p| p.into_inner());
        emitted.retain(|(k, _)| !k.starts_with(prefix) || keep.contains(k));
    }
}

/// Runs the controller until shutdown.
pub async fn run(app: App, args: ControllerArgs) -> anyhow::Result<()> {
    let client = app.client.clone();
    ferrite_kit::client::require_crd::<DNSZone>(&client).await?;
    ferrite_kit::client::require_crd::<DNSRecord>(&client).await?;
    let metrics = Metrics::register(&app.registry)?;

    let zones_w = app.watches.shared(
        Api::<DNSZone>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let records_w = app.watches.shared(
        Api::<DNSRecord>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let services_w = app.watches.shared(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let ingresses_w = app.watches.shared(
        Api::<Ingress>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let zones = zones_w.store();
    let records = records_w.store();
    let services = services_w.store();
    let ingresses = ingresses_w.store();
    app.readiness
        .gate("watch dnszones")
        .open_when_synced(zones.clone());
    app.readiness
        .gate("watch dnsrecords")
        .open_when_synced(records.clone());
    app.readiness
        .gate("watch services")
        .open_when_synced(services.clone());
    app.readiness
        .gate("watch ingresses")
        .open_when_synced(ingresses.clone());

    let synced = Arc::new(AtomicBool::new(false));
    let changed = Arc::new(Notify::new());
    {
        let (z, r, s, i) = (
            zones.clone(),
            records.clone(),
            services.clone(),
            ingresses.clone(),
        );
        let synced = synced.clone();
        let changed = changed.clone();
        tokio::spawn(async move {
            let all = ferrite_kit::admin::wait_synced(&z).await
                && ferrite_kit::admin::wait_synced(&r).await
                && ferrite_kit::admin::wait_synced(&s).await
                && ferrite_kit::admin::wait_synced(&i).await;
            if all {
                synced.store(true, Ordering::SeqCst);
                changed.notify_one();
            }
        });
    }
    // A DNSZone change wakes the pass (zones are few: each pass reads them from the cache).
    {
        let mut sub = zones_w.subscribe();
        let changed = changed.clone();
        tokio::spawn(async move {
            while sub.next_change().await.is_some() {
                changed.notify_one();
            }
        });
    }
    // Source objects: each change derived once, into the index at the next pass.
    let pending: Pending = Arc::new(Mutex::new(HashMap::new()));
    let caught_up: [Arc<AtomicBool>; 3] = Default::default();
    feed(
        &services_w,
        "service",
        SourceObject::from_service,
        pending.clone(),
        changed.clone(),
        caught_up[0].clone(),
    );
    feed(
        &ingresses_w,
        "ingress",
        SourceObject::from_ingress,
        pending.clone(),
        changed.clone(),
        caught_up[1].clone(),
    );
    feed(
        &records_w,
        "dnsrecord",
        SourceObject::from_record,
        pending.clone(),
        changed.clone(),
        caught_up[2].clone(),
    );
    // A new leader writes what the previous one may not have: every status is looked at.
    let full_requested = Arc::new(AtomicBool::new(true));
    {
        let mut leader = app.leadership.subscribe();
        let changed = changed.clone();
        let full_requested = full_requested.clone();
        tokio::spawn(async move {
            while leader.changed().await.is_ok() {
                full_requested.store(true, Ordering::SeqCst);
                changed.notify_one();
            }
        });
    }

    let mut config = ServerConfig::new(args.dns_listen);
    config.udp_workers = args.dns_udp_workers;
    let empty = ZoneSet::new(Vec::new()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let server = Server::start(&config, empty, &app.registry)
        .map_err(|e| anyhow::anyhow!("embedded DNS server on {}: {e}", args.dns_listen))?;
    tracing::info!(addr = %server.local_addr(), "embedded DNS server listening (UDP and TCP)");
    let handle = server.handle();

    let shared = Arc::new(Shared {
        client: client.clone(),
        leadership: app.leadership.clone(),
        events: app.events(REPORTER),
        metrics,
        zone_reconciles: app.reconcile_metrics().for_kind("DNSZone"),
        pass_reconciles: app.reconcile_metrics().for_kind("ZoneSet"),
        args: args.clone(),
        emitted: Mutex::new(HashSet::new()),
    });
    let (status_tx, mut status_rx) = watch::channel::<Option<Arc<StatusJob>>>(None);
    let status_task = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while status_rx.changed().await.is_ok() {
                let job = status_rx.borrow_and_update().clone();
                if let Some(job) = job {
                    job.write(&shared).await;
                }
            }
        })
    };
    // DNSRecord status in a task of its own: 100,000 new records are 100,000 writes, and the zones'
    // status (their record count) must not wait behind them.
    let outcomes: Outcomes = Arc::new(Mutex::new(HashMap::new()));
    let outcomes_ready = Arc::new(Notify::new());
    let record_status_task = tokio::spawn(record_status(
        shared.clone(),
        outcomes.clone(),
        outcomes_ready.clone(),
        records.clone(),
    ));
    let mut pass = Pass {
        shared: shared.clone(),
        status_tx,
        handle,
        served: BTreeMap::new(),
        build_errors: BTreeMap::new(),
        workers: BTreeMap::new(),
        rfc_desired: BTreeMap::new(),
        synced: synced.clone(),
        caught_up,
        told_synced: false,
        pending,
        outcomes,
        outcomes_ready,
        index: Index::default(),
        zones,
        stores: Stores {
            records,
            services,
            ingresses,
        },
    };
    let shutdown = app.shutdown.clone();
    let resync = app.run_options().resync;
    loop {
        // The periodic pass looks at every status again (never rely on events alone).
        let mut full = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changed.notified() => {}
            _ = tokio::time::sleep(resync) => full = true,
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(args.debounce) => {}
        }
        full |= full_requested.swap(false, Ordering::SeqCst);
        pass.run(full).await;
    }
    for (_, w) in std::mem::take(&mut pass.workers) {
        w.task.abort();
    }
    status_task.abort();
    record_status_task.abort();
    server.shutdown().await;
    app.finish().await;
    Ok(())
}

/// The latest derived state of each changed source object, waiting for the next pass (latest wins;
/// `None`: deleted, or it asks for no name any more). Bounded by the number of objects.
type Pending = Arc<Mutex<HashMap<Resource, Option<SourceObject>>>>;

/// Outcomes of `DNSRecord`s whose status the leader's status task has yet to look at (latest wins).
type Outcomes = Arc<Mutex<HashMap<Resource, source::Outcome>>>;

/// Feeds one source kind's changes into `pending` as [`SourceObject`]s (a few hundred bytes each: the
/// object itself stays only in the watch's cache) and wakes the pass. `caught_up` turns true once the
/// watch has listed and every listed object has been handed over, so a pass that sees it true (read
/// before it takes `pending`) holds every object: only then may anything be deleted.
fn feed<K>(
    watch: &SharedWatch<K>,
    kind: &'static str,
    derive: fn(&K) -> Option<SourceObject>,
    pending: Pending,
    changed: Arc<Notify>,
    caught_up: Arc<AtomicBool>,
) where
    K: ferrite_kit::kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let mut sub = watch.subscribe();
    let store = watch.store();
    tokio::spawn(async move {
        // Keys handed over until caught up (then dropped).
        let mut delivered: Option<HashSet<ObjectRef<K>>> = Some(HashSet::new());
        let mut listed = false;
        loop {
            tokio::select! {
                change = sub.next_change() => {
                    let Some(change) = change else { break };
                    let (object, derived) = match &change {
                        Change::Applied(o) => (o, derive(o)),
                        Change::Deleted(o) => (o, None),
                    };
                    if let Some(d) = delivered.as_mut() {
                        d.insert(ObjectRef::from_obj(&**object));
                    }
                    pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(resource_of(kind, &**object), derived);
                    changed.notify_one();
                }
                r = store.wait_until_ready(), if !listed => {
                    if r.is_err() {
                        break;
                    }
                    listed = true;
                }
            }
            // The store is ready a moment before the listed objects reach the subscriber: caught up
            // only when every object in the store has been handed over.
            if listed
                && sub.pending() == 0
                && let Some(d) = &delivered
                && store
                    .state()
                    .iter()
                    .all(|o| d.contains(&ObjectRef::from_obj(&**o)))
            {
                delivered = None;
                caught_up.store(true, Ordering::SeqCst);
                changed.notify_one();
            }
        }
    });
}

struct Pass {
    shared: Arc<Shared>,
    status_tx: watch::Sender<Option<Arc<StatusJob>>>,
    handle: ZonesHandle,
    served: BTreeMap<String, Served>,
    /// Embedded zones whose last build failed: the fingerprint and the error (told again, not rebuilt).
    build_errors: BTreeMap<String, (u64, (&'static str, String))>,
    workers: BTreeMap<String, Worker>,
    /// Per RFC2136 zone: the desired records last handed to its worker and their hash.
    rfc_desired: BTreeMap<String, (Arc<ZoneRecords>, u64)>,
    synced: Arc<AtomicBool>,
    /// Per source kind (Services, Ingresses, DNSRecords): every listed object is in `pending` or the index.
    caught_up: [Arc<AtomicBool>; 3],
    told_synced: bool,
    pending: Pending,
    outcomes: Outcomes,
    /// Wakes the DNSRecord status task.
    outcomes_ready: Arc<Notify>,
    index: Index,
    zones: Store<DNSZone>,
    stores: Stores,
}

/// The caches the status task looks objects up in (for Event references and current status).
#[derive(Clone)]
struct Stores {
    records: Store<DNSRecord>,
    services: Store<Service>,
    ingresses: Store<Ingress>,
}

impl Stores {
    /// The reference an Event about `r` is published on, if the object is still cached.
    fn object_ref(&self, r: &Resource) -> Option<ObjectReference> {
        let key = |o: &Resource| (o.name.clone(), o.namespace.clone());
        let (name, ns) = key(r);
        match r.kind.as_str() {
            "service" => self
                .services
                .get(&ObjectRef::new(&name).within(&ns))
                .map(|o| o.object_ref(&())),
            "ingress" => self
                .ingresses
                .get(&ObjectRef::new(&name).within(&ns))
                .map(|o| o.object_ref(&())),
            "dnsrecord" => self
                .records
                .get(&ObjectRef::new(&name).within(&ns))
                .map(|o| o.object_ref(&())),
            _ => None,
        }
    }
}

fn created(zone: &DNSZone) -> (Option<Time>, String) {
    (zone.metadata.creation_timestamp.clone(), zone.name_any())
}

/// Hash of a zone's settings (`spec`).
fn spec_hash(zone: &DNSZone) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&zone.spec).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Content fingerprint of a zone: its settings and its records (the serial excluded).
fn fingerprint(spec: u64, content: u64) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (spec, content).hash(&mut h);
    h.finish()
}

/// The serial of a zone's new content: after (RFC 1982) the previous one of this process, or (the first
/// in this process) the one in status; the unix time when that is after it (so replicas and restarts
/// agree roughly). See [`crate::transfer::next_serial`].
fn next_serial(previous: Option<u32>, status_serial: u32, now: std::time::SystemTime) -> u32 {
    crate::transfer::next_serial(previous.unwrap_or(status_serial), now)
}

/// The transfer settings of one embedded zone: its key (if any) and secondaries, or why not.
async fn zone_transfer(
    shared: &Shared,
    apex: &Name,
    e: &ferrite_api::dns::EmbeddedProvider,
) -> Result<(Option<TsigKey>, Vec<SocketAddr>), (&'static str, String)> {
    let mut addresses = Vec::new();
    for s in &e.secondaries {
        let ip: IpAddr = s.address.parse().map_err(|_| {
            (
                "InvalidSecondary",
                format!("secondary {:?} is not an IP address", s.address),
            )
        })?;
        let port = u16::try_from(s.port).ok().filter(|p| *p > 0).ok_or((
            "InvalidSecondary",
            format!("secondary {ip}: port {} is out of range", s.port),
        ))?;
        addresses.push(SocketAddr::new(ip, port));
    }
    let Some(t) = &e.transfer else {
        return Ok((None, addresses));
    };
    let secret = read_secret(shared, &t.tsig_key_secret_ref)
        .await
        .map_err(|e| ("SecretUnavailable", format!("transfer key of zone {apex}: {e}")))?;
    let alg_name = serde_json::to_value(t.tsig_algorithm)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let algorithm = TsigAlgorithm::parse(&alg_name).map_err(|e| ("InvalidTransferKey", e.to_string()))?;
    let key = TsigKey::new(&t.tsig_key_name, algorithm, &secret).map_err(|e| ("InvalidTransferKey", e))?;
    Ok((Some(key), addresses))
}

impl Pass {
    /// One pass: the changes since the last one into the index, then only the zones they touched.
    /// `full`: every `DNSRecord`'s status is looked at (resync, new leader), not only the changed ones.
    async fn run(&mut self, full: bool) {
        let pass_started = Instant::now();
        // Read before `pending` is taken: every object the flags account for is in it by then.
        let synced =
            self.synced.load(Ordering::SeqCst) && self.caught_up.iter().all(|c| c.load(Ordering::SeqCst));
        if synced && !self.told_synced {
            tracing::info!("every source watch has listed: deletions allowed");
            self.told_synced = true;
        }
        let mut zones: Vec<Arc<DNSZone>> = self.zones.state();
        zones.sort_by_key(|z| created(z));

        // Zones the sources may publish into; the oldest DNSZone of an apex wins it.
        let mut zone_errors: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
        let mut targets: Vec<ZoneTarget> = Vec::new();
        let mut apexes: BTreeMap<Name, String> = BTreeMap::new();
        for zone in &zones {
            let key = zone.name_any();
            if zone.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match ZoneTarget::from_zone(zone) {
                Ok(t) => {
                    if let Some(owner) = apexes.get(&t.apex) {
                        zone_errors.insert(
                            key.clone(),
                            (
                                "DuplicateZone",
                                format!("zone {} is already served by the older DNSZone {owner}", t.apex),
                            ),
                        );
                        continue;
                    }
                    apexes.insert(t.apex.clone(), key.clone());
                    targets.push(t);
                }
                Err(e) => {
                    zone_errors.insert(key.clone(), (e.reason(), e.to_string()));
                }
            }
        }
        self.index.set_zones(targets);
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for (resource, object) in pending {
            self.index.apply(&resource, object);
        }
        let dirty = self.index.take_dirty_zones();
        let dirty_objects = self.index.take_dirty_objects();

        // Embedded zones: rebuild those whose records or settings changed, bump the serial, swap.
        let mut snapshots: Vec<Arc<Zone>> = Vec::new();
        let mut live = BTreeSet::new();
        for zone in &zones {
            let key = zone.name_any();
            if !matches!(zone.spec.provider, Provider::Embedded(_))
                || zone_errors.contains_key(&key)
                || zone.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            live.insert(key.clone());
            let spec = spec_hash(zone);
            let previous = self.served.get(&key);
            let fp = match previous {
                Some(p) if p.spec == spec && !dirty.contains(&key) => p.fingerprint,
                _ => fingerprint(spec, self.index.content_hash(&key)),
            };
            if let Some((failed, e)) = self.build_errors.get(&key)
                && *failed == fp
            {
                // Keep answering from the last good snapshot, and keep saying why.
                if let Some(p) = previous {
                    snapshots.push(p.zone.clone());
                }
                zone_errors.insert(key.clone(), e.clone());
                continue;
            }
            if let Some(p) = previous
                && p.fingerprint == fp
            {
                snapshots.push(p.zone.clone());
                continue;
            }
            let status_serial = zone
                .status
                .as_ref()
                .and_then(|s| s.serial)
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0);
            let serial = next_serial(
                previous.map(|p| p.serial),
                status_serial,
                std::time::SystemTime::now(),
            );
            let index = &self.index;
            let built = source::embedded_zone(zone, serial)
                .map_err(|e| (e.reason(), e.to_string()))
                .and_then(|c| {
                    let (config, glue) = c.ok_or(("InvalidZone", "not an embedded zone".to_string()))?;
                    Zone::build(&config, index.records(&key).chain(glue))
                        .map_err(|e| (e.reason(), e.to_string()))
                });
            match built {
                Ok(z) => {
                    let z = Arc::new(z);
                    snapshots.push(z.clone());
                    self.build_errors.remove(&key);
                    self.served.insert(
                        key.clone(),
                        Served {
                            fingerprint: fp,
                            spec,
                            serial,
                            zone: z,
                            swapped_at: Timestamp::now(),
                        },
                    );
                }
                Err(e) => {
                    // Keep answering from the last good snapshot.
                    if let Some(p) = previous {
                        snapshots.push(p.zone.clone());
                    }
                    self.build_errors.insert(key.clone(), (fp, e.clone()));
                    zone_errors.insert(key.clone(), e);
                }
            }
        }
        self.served.retain(|k, _| live.contains(k));
        self.build_errors.retain(|k, _| live.contains(k));

        // Zone transfers: keys (read from their Secrets) and secondaries of the served embedded zones.
        let mut transfer = TransferConfig::default();
        let mut transfer_state: BTreeMap<String, (bool, &'static str, String)> = BTreeMap::new();
        for zone in &zones {
            let key = zone.name_any();
            let Provider::Embedded(e) = &zone.spec.provider else {
                continue;
            };
            if !live.contains(&key) || (e.transfer.is_none() && e.secondaries.is_empty()) {
                continue;
            }
            let Some(served) = self.served.get(&key) else {
                continue;
            };
            let apex = served.zone.apex().clone();
            match zone_transfer(&self.shared, &apex, e).await {
                Ok((tsig, addresses)) => {
                    let conflict = tsig.as_ref().and_then(|k| {
                        transfer
                            .zone_keys
                            .iter()
                            .find(|z| z.key.name() == k.name() && &z.key != k)
                            .map(|z| z.zone.clone())
                    });
                    if let Some(other) = conflict {
                        transfer_state.insert(
                            key,
                            (
                                false,
                                "TransferKeyConflict",
                                format!(
                                    "transfer key {} is used for zone {other} with another algorithm or secret",
                                    e.transfer.as_ref().map_or("", |t| t.tsig_key_name.as_str())
                                ),
                            ),
                        );
                        continue;
                    }
                    let message = match &tsig {
                        Some(k) => format!(
                            "key {} may transfer the zone; NOTIFY to {} secondaries",
                            k.name(),
                            addresses.len()
                        ),
                        None => format!(
                            "no transfer key: NOTIFY (unsigned) to {} secondaries, every transfer REFUSED",
                            addresses.len()
                        ),
                    };
                    transfer_state.insert(
                        key,
                        (
                            tsig.is_some(),
                            if tsig.is_some() {
                                "Configured"
                            } else {
                                "NoTransferKey"
                            },
                            message,
                        ),
                    );
                    if let Some(k) = tsig {
                        transfer.zone_keys.push(ZoneKey {
                            zone: apex.clone(),
                            key: k,
                        });
                    }
                    if !addresses.is_empty() {
                        transfer.secondaries.push(Secondary {
                            zone: apex,
                            addresses,
                        });
                    }
                }
                Err((reason, message)) => {
                    transfer_state.insert(key, (false, reason, message));
                }
            }
        }
        if let Err(e) = self.handle.set_transfer(&transfer) {
            tracing::error!(error = %e, "zone transfer settings not applied");
        }
        match ZoneSet::new(snapshots) {
            Ok(set) => {
                self.handle.swap(set);
                self.shared.pass_reconciles.success(pass_started.elapsed());
            }
            Err(e) => {
                tracing::error!(error = %e, "zone set not swapped");
                self.shared
                    .pass_reconciles
                    .error("ZoneSetInvalid", pass_started.elapsed());
            }
        }
        for (key, s) in &self.served {
            let m = &self.shared.metrics;
            m.records
                .with_label_values(&[key])
                .set(self.index.record_count(key) as f64);
            m.serial.with_label_values(&[key]).set(f64::from(s.serial));
            m.last_sync
                .with_label_values(&[key])
                .set(s.swapped_at.as_second() as f64);
        }
        let problems = self.index.problems();
        let conflicts: Vec<Conflict> = self.index.conflicts().into_iter().cloned().collect();
        self.shared
            .metrics
            .source_errors
            .with_label_values(&["problem"])
            .set(problems.iter().map(|p| p.errors.len()).sum::<usize>() as f64);
        self.shared
            .metrics
            .source_errors
            .with_label_values(&["conflict"])
            .set(conflicts.len() as f64);
        let zone_conflicts: BTreeMap<String, Vec<String>> = zones
            .iter()
            .map(|z| {
                let key = z.name_any();
                let c = self
                    .index
                    .conflicts_in(&key)
                    .iter()
                    .map(|c| c.to_string())
                    .collect();
                (key, c)
            })
            .collect();

        // RFC2136 zones: hand the latest desired state to each zone's worker (the records are copied
        // out of the index only when they changed).
        let mut rfc_live = BTreeSet::new();
        for zone in &zones {
            let key = zone.name_any();
            // A zone with bad settings (or a duplicate apex) is only told so (Ready=False above).
            if !matches!(zone.spec.provider, Provider::Rfc2136(_)) || zone_errors.contains_key(&key) {
                continue;
            }
            rfc_live.insert(key.clone());
            if dirty.contains(&key) || !self.rfc_desired.contains_key(&key) {
                let records = Arc::new(self.index.zone_records(&key));
                let hash = self.index.content_hash(&key);
                self.rfc_desired.insert(key.clone(), (records, hash));
            }
            let Some((desired, desired_hash)) = self.rfc_desired.get(&key).cloned() else {
                continue;
            };
            let job = Arc::new(Job {
                zone: zone.clone(),
                desired,
                desired_hash,
                conflicts: zone_conflicts.get(&key).cloned().unwrap_or_default(),
                sources_synced: synced && !zone_errors.contains_key(&key),
            });
            let worker = self.workers.entry(key.clone()).or_insert_with(|| {
                let (tx, rx) = watch::channel(None);
                let task = tokio::spawn(worker(self.shared.clone(), key.clone(), rx));
                Worker { tx, task }
            });
            worker.tx.send_replace(Some(job));
        }
        self.rfc_desired.retain(|k, _| rfc_live.contains(k));
        self.workers.retain(|k, w| {
            let keep = rfc_live.contains(k);
            if !keep {
                w.task.abort();
                self.shared.metrics.forget(k);
            }
            keep
        });
        for k in zones.iter().map(|z| z.name_any()) {
            if !live.contains(&k) && !rfc_live.contains(&k) {
                self.shared.metrics.forget(&k);
            }
        }

        if !self.shared.leadership.is_leader() {
            return;
        }
        // DNSRecords whose status may have changed (all of them on a full pass), for the status task.
        {
            let mut outcomes = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
            let changed: Vec<&Resource> = if full {
                self.index.objects().collect()
            } else {
                dirty_objects.iter().map(|r| &**r).collect()
            };
            for r in changed.into_iter().filter(|r| r.kind == "dnsrecord") {
                if let Some(o) = self.index.outcome(r) {
                    outcomes.insert(r.clone(), o);
                }
            }
            if !outcomes.is_empty() {
                self.outcomes_ready.notify_one();
            }
        }
        // Status writes run in their own task (latest wins), so a slow API server never delays a swap.
        let serials = self.served.iter().map(|(k, s)| (k.clone(), s.serial)).collect();
        let counts = zones
            .iter()
            .map(|z| {
                let key = z.name_any();
                let n = self.index.record_count(&key);
                (key, n)
            })
            .collect();
        self.status_tx.send_replace(Some(Arc::new(StatusJob {
            zones,
            zone_errors,
            serials,
            transfer_state,
            counts,
            zone_conflicts,
            problems,
            conflicts,
            stores: self.stores.clone(),
        })));
    }
}

/// What the leader's status task writes after a pass.
struct StatusJob {
    zones: Vec<Arc<DNSZone>>,
    zone_errors: BTreeMap<String, (&'static str, String)>,
    serials: BTreeMap<String, u32>,
    /// Per embedded zone with transfer settings: (ok, reason, message) of the `Transfers` condition.
    transfer_state: BTreeMap<String, (bool, &'static str, String)>,
    /// Records published per zone.
    counts: BTreeMap<String, usize>,
    /// Conflicts per zone, as the `Conflicts` condition names them.
    zone_conflicts: BTreeMap<String, Vec<String>>,
    problems: Vec<ObjectProblem>,
    conflicts: Vec<Conflict>,
    stores: Stores,
}

impl StatusJob {
    /// DNSZone status (embedded zones and zones with bad settings), DNSRecord status, Events.
    async fn write(&self, shared: &Shared) {
        // Status of embedded zones and zones with bad settings.
        for zone in &self.zones {
            let key = zone.name_any();
            let settings_key = format!("zone:{key}/settings");
            if let Some((reason, message)) = self.zone_errors.get(&key) {
                shared
                    .warn_once(&zone.object_ref(&()), &settings_key, reason, message.clone())
                    .await;
                write_zone_status(
                    shared,
                    zone,
                    None,
                    0,
                    vec![ready(false, reason, message.clone())],
                    false,
                )
                .await;
                continue;
            }
            shared.forget_events(&HashSet::new(), &settings_key);
            if !matches!(zone.spec.provider, Provider::Embedded(_)) {
                continue;
            }
            let Some(&serial) = self.serials.get(&key) else {
                continue;
            };
            let count = self.counts.get(&key).copied().unwrap_or(0);
            let mut conds = vec![ready(
                true,
                "Serving",
                format!(
                    "{} records served by the embedded server, serial {}",
                    count, serial
                ),
            )];
            conds.push(conflicts_condition(
                self.zone_conflicts.get(&key).map_or(&[][..], |c| &c[..]),
            ));
            let transfer_key = format!("zone:{key}/transfer");
            if let Some((ok, reason, message)) = self.transfer_state.get(&key) {
                conds.push((
                    condition_types::TRANSFERS.to_string(),
                    if *ok { Status::True } else { Status::False },
                    reason.to_string(),
                    message.clone(),
                ));
                if *ok {
                    shared.forget_events(&HashSet::new(), &transfer_key);
                } else {
                    shared
                        .warn_once(&zone.object_ref(&()), &transfer_key, reason, message.clone())
                        .await;
                }
            } else {
                shared.forget_events(&HashSet::new(), &transfer_key);
            }
            write_zone_status(shared, zone, Some(serial), count, conds, false).await;
        }
        self.publish_object_status(shared).await;
    }

    /// Warning Events on objects with problems and conflict losers.
    async fn publish_object_status(&self, shared: &Shared) {
        let mut keep: HashSet<String> = HashSet::new();
        for p in &self.problems {
            let (reason, note) = problem_note(p);
            let key = format!("obj:{}", p.resource);
            keep.insert(key.clone());
            if let Some(r) = self.stores.object_ref(&p.resource) {
                shared.warn_once(&r, &key, reason, note).await;
            }
        }
        for c in &self.conflicts {
            let key = format!("obj:{}", c.loser);
            keep.insert(key.clone());
            if let Some(r) = self.stores.object_ref(&c.loser) {
                shared.warn_once(&r, &key, "Conflict", c.to_string()).await;
            }
        }
        shared.forget_events(&keep, "obj:");
    }
}

/// Record status writes in flight.
const STATUS_WRITES: usize = 8;

/// The leader's `DNSRecord` status writer: takes the outcomes the passes handed over (latest per
/// record), writes the `Programmed` condition where it differs from the cached status, a few at a
/// time, and puts back what failed (tried again after the next pass).
async fn record_status(
    shared: Arc<Shared>,
    outcomes: Outcomes,
    ready: Arc<Notify>,
    records: Store<DNSRecord>,
) {
    use futures::StreamExt;
    loop {
        ready.notified().await;
        let batch = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
        futures::stream::iter(batch)
            .for_each_concurrent(STATUS_WRITES, |(res, outcome)| {
                let (shared, outcomes, records) = (&shared, &outcomes, &records);
                async move {
                    if let Err(e) = write_record_status(shared, records, &res, &outcome).await {
                        tracing::warn!(record = %res, error = %e, "DNSRecord status not written");
                        outcomes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(res)
                            .or_insert(outcome);
                    }
                }
            })
            .await;
    }
}

/// Writes one `DNSRecord`'s status when it differs from `outcome` (nothing for a record gone or being
/// deleted).
async fn write_record_status(
    shared: &Shared,
    records: &Store<DNSRecord>,
    res: &Resource,
    outcome: &source::Outcome,
) -> Result<(), ferrite_kit::Error> {
    let Some(r) = records.get(&ObjectRef::new(&res.name).within(&res.namespace)) else {
        return Ok(());
    };
    if r.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let (status, reason, message, zone) = match outcome {
        source::Outcome::Problem(errors) => {
            let (reason, note) = problem_note(&ObjectProblem {
                resource: res.clone(),
                errors: errors.clone(),
            });
            (Status::False, reason.to_string(), note, None)
        }
        source::Outcome::Placed { zones, lost } => {
            let first = zones.first().cloned();
            match lost {
                Some(c) => (Status::False, "Conflict".into(), c.to_string(), first),
                None => (
                    Status::True,
                    "Programmed".into(),
                    format!("published in DNSZone {}", zones.join(", ")),
                    first,
                ),
            }
        }
        source::Outcome::Lost(c) => (Status::False, "Conflict".into(), c.to_string(), None),
        source::Outcome::NoZone => (
            Status::False,
            "NoZone".into(),
            format!("no DNSZone contains {:?}", r.spec.name),
            None,
        ),
    };
    let current = r.status.as_ref();
    let mut conds = current.map(|s| s.conditions.clone()).unwrap_or_default();
    let changed = conditions::set(
        &mut conds,
        NewCondition {
            type_: condition_types::PROGRAMMED,
            status,
            reason: &reason,
            message,
        },
        r.metadata.generation,
        Timestamp::now(),
    );
    if !changed
        && current.and_then(|s| s.zone.clone()) == zone
        && current.and_then(|s| s.observed_generation) == r.metadata.generation
    {
        return Ok(());
    }
    let body = serde_json::json!({
        "zone": zone,
        "observedGeneration": r.metadata.generation,
        "conditions": conds,
    });
    let api = Api::<DNSRecord>::namespaced(shared.client.clone(), &res.namespace);
    apply_status(&api, &r.name_any(), FIELD_MANAGER, body, &shared.leadership)
        .await
        .map(|_| ())
}

/// The reason and note of an object that publishes nothing (Event and `Programmed` condition).
fn problem_note(p: &ObjectProblem) -> (&'static str, String) {
    let reason = p.errors.first().map_or("Invalid", |e| e.reason());
    let note = p
        .errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    (reason, format!("nothing published for {}: {note}", p.resource))
}

fn resource_of<K: ferrite_kit::kube::Resource>(kind: &str, obj: &K) -> Resource {
    Resource {
        kind: kind.to_string(),
        namespace: obj.meta().namespace.clone().unwrap_or_default(),
        name: obj.meta().name.clone().unwrap_or_default(),
    }
}

fn ready(ok: bool, reason: &str, message: String) -> (String, Status, String, String) {
    (
        condition_types::READY.to_string(),
        if ok { Status::True } else { Status::False },
        reason.to_string(),
        message,
    )
}

fn conflicts_condition(conflicts: &[String]) -> (String, Status, String, String) {
    if conflicts.is_empty() {
        (
            condition_types::CONFLICTS.to_string(),
            Status::False,
            "NoConflicts".into(),
            "no name is claimed by two objects".into(),
        )
    } else {
        let mut message = conflicts.iter().take(10).cloned().collect::<Vec<_>>().join("; ");
        if conflicts.len() > 10 {
            message.push_str(&format!("; and {} more", conflicts.len() - 10));
        }
        (
            condition_types::CONFLICTS.to_string(),
            Status::True,
            "NameConflict".into(),
            message,
        )
    }
}

/// Writes a DNSZone's status when anything but the time changed (or `synced` says a sync just ran).
async fn write_zone_status(
    shared: &Shared,
    zone: &DNSZone,
    serial: Option<u32>,
    count: usize,
    new: Vec<(String, Status, String, String)>,
    synced: bool,
) {
    let current = zone.status.clone().unwrap_or_default();
    let mut conds: Vec<Condition> = current.conditions.clone();
    let mut changed = false;
    for (type_, status, reason, message) in &new {
        changed |= conditions::set(
            &mut conds,
            NewCondition {
                type_,
                status: *status,
                reason,
                message: message.clone(),
            },
            zone.metadata.generation,
            Timestamp::now(),
        );
    }
    let serial = serial.map(i64::from);
    if !changed
        && !synced
        && current.records == count as i64
        && (serial.is_none() || current.serial == serial)
        && current.observed_generation == zone.metadata.generation
    {
        return;
    }
    let mut body = serde_json::json!({
        "records": count,
        "lastSyncTime": Time(Timestamp::now()),
        "observedGeneration": zone.metadata.generation,
        "conditions": conds,
    });
    if let Some(s) = serial.or(current.serial) {
        body["serial"] = s.into();
    }
    let api = Api::<DNSZone>::all(shared.client.clone());
    if let Err(e) = apply_status(&api, &zone.name_any(), FIELD_MANAGER, body, &shared.leadership).await {
        tracing::warn!(zone = %zone.name_any(), error = %e, "DNSZone status not written");
    }
}

/// One RFC2136 zone: syncs its latest job while leader, on every change, every `--sync-interval`, and
/// again with backoff after a failure.
async fn worker(shared: Arc<Shared>, key: String, mut rx: watch::Receiver<Option<Arc<Job>>>) {
    let mut backoff = Duration::from_secs(1);
    let mut next = Instant::now();
    let mut last_inputs: Option<u64> = None;
    let finalizer = match Finalizer::new(FINALIZER) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "finalizer name");
            return;
        }
    };
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(next.into()) => {}
        }
        let Some(job) = rx.borrow_and_update().clone() else {
            continue;
        };
        // A pass hands over the job on every change anywhere (our own status writes included): sync again
        // only when this zone's inputs changed, or when a resync or retry is due.
        let inputs = job.fingerprint();
        if last_inputs == Some(inputs) && Instant::now() < next {
            continue;
        }
        if !shared.leadership.is_leader() {
            next = Instant::now() + Duration::from_secs(1);
            continue;
        }
        let started = Instant::now();
        let api = Api::<DNSZone>::all(shared.client.clone());
        let result = finalizer
            .reconcile(
                &api,
                job.zone.clone(),
                &shared.leadership,
                |_| async { sync(&shared, &job, false).await.map(|_| Action::await_change()) },
                |_| async { cleanup(&shared, &job).await },
            )
            .await;
        shared
            .metrics
            .sync_duration
            .with_label_values(&[&key])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => shared.zone_reconciles.success(started.elapsed()),
            Err(e) => shared.zone_reconciles.error(e.reason(), started.elapsed()),
        }
        match result {
            Ok(_) => {
                last_inputs = Some(inputs);
                backoff = Duration::from_secs(1);
                next = Instant::now() + shared.args.sync_interval;
            }
            Err(e) => {
                last_inputs = Some(inputs);
                tracing::warn!(zone = %key, error = %e, retry_in = ?backoff, "sync failed");
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(shared.args.max_retry_backoff.max(Duration::from_secs(1)));
            }
        }
    }
}

/// The decoded TSIG secret of a zone, read with one GET of the named Secret.
async fn secret_of(shared: &Shared, p: &ferrite_api::dns::Rfc2136Provider) -> Result<Vec<u8>, SyncError> {
    read_secret(shared, &p.tsig_key_secret_ref).await
}

/// The decoded TSIG secret at `r`, read with one GET of the named Secret.
async fn read_secret(shared: &Shared, r: &ferrite_api::dns::SecretKeyRef) -> Result<Vec<u8>, SyncError> {
    let err = |message: String| SyncError::Secret {
        namespace: r.namespace.clone(),
        name: r.name.clone(),
        message,
    };
    let api = Api::<Secret>::namespaced(shared.client.clone(), &r.namespace);
    let secret = ferrite_kit::client::call(
        "reading the TSIG Secret",
        Duration::from_secs(10),
        api.get(&r.name),
    )
    .await
    .map_err(|e| err(e.to_string()))?;
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| err(format!("has no key {:?}", r.key)))?;
    let text =
        std::str::from_utf8(&data.0).map_err(|_| err(format!("key {:?} is not base64 text", r.key)))?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| {
            err(format!(
                "key {:?} is not base64 (BIND's secret, as is): {e}",
                r.key
            ))
        })
}

async fn client_of(shared: &Shared, zone: &DNSZone) -> Result<Rfc2136Client, SyncError> {
    let Provider::Rfc2136(p) = &zone.spec.provider else {
        return Err(SyncError::Settings(plan::PlanSettingsError::BadZone {
            zone: zone.spec.zone.clone(),
            reason: "not an rfc2136 zone".into(),
        }));
    };
    let port = u16::try_from(p.port).map_err(|_| SyncError::Address {
        server: p.server.clone(),
        message: format!("port {} out of range", p.port),
    })?;
    let addr = match p.server.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port),
        Err(_) => tokio::net::lookup_host((p.server.as_str(), port))
            .await
            .map_err(|e| SyncError::Address {
                server: p.server.clone(),
                message: e.to_string(),
            })?
            .next()
            .ok_or_else(|| SyncError::Address {
                server: p.server.clone(),
                message: "resolves to no address".into(),
            })?,
    };
    let secret = secret_of(shared, p).await?;
    let alg_name = serde_json::to_value(p.tsig_algorithm)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let algorithm = TsigAlgorithm::parse(&alg_name)?;
    Ok(Rfc2136Client::new(
        addr,
        &zone.spec.zone,
        &p.tsig_key_name,
        algorithm,
        &secret,
        Timeouts::default(),
    )?)
}

/// plan::Change -> RFC2136 changes: per name and type, the RRset as it must be after the change.
fn to_rfc_changes(current: &[Record], changes: &[&plan::Change]) -> Vec<rfc2136::Change> {
    let mut sets: BTreeMap<(Name, RecordType), (Vec<Record>, Vec<Record>)> = BTreeMap::new();
    for c in changes {
        for r in &c.remove {
            sets.entry((r.name.to_lowercase(), r.record_type()))
                .or_default()
                .0
                .push(r.clone());
        }
        for r in &c.add {
            sets.entry((r.name.to_lowercase(), r.record_type()))
                .or_default()
                .1
                .push(r.clone());
        }
    }
    let mut out = Vec::new();
    for ((name, rtype), (remove, add)) in sets {
        let removed: HashSet<_> = remove.iter().map(|r| r.data.clone()).collect();
        let mut after: Vec<Record> = current
            .iter()
            .filter(|r| {
                r.name.to_lowercase() == name && r.record_type() == rtype && !removed.contains(&r.data)
            })
            .cloned()
            .collect();
        if remove.is_empty() {
            out.push(rfc2136::Change::Add(add));
            continue;
        }
        if let Some(ttl) = add.first().map(|r| r.ttl) {
            for r in &mut after {
                r.ttl = ttl;
            }
        }
        for r in add {
            if !after.iter().any(|a| a.data == r.data) {
                after.push(r);
            }
        }
        if after.is_empty() {
            out.push(rfc2136::Change::Delete { name, rtype });
        } else {
            out.push(rfc2136::Change::Replace {
                name,
                rtype,
                records: after,
            });
        }
    }
    out
}

/// One sync: read, plan, apply, status. `cleanup` plans an empty desired state with no guard.
async fn sync(shared: &Shared, job: &Job, cleanup: bool) -> Result<(), SyncError> {
    let zone = &job.zone;
    let key = zone.name_any();
    let result = sync_inner(shared, job, cleanup).await;
    match &result {
        Ok(outcome) => {
            if !cleanup {
                let mut conds = vec![
                    ready(
                        true,
                        "Synced",
                        format!("{} records in sync on the server", outcome.records),
                    ),
                    (
                        condition_types::PROVIDER_UNREACHABLE.to_string(),
                        Status::False,
                        "Reachable".into(),
                        format!("last sync sent {} UPDATE messages", outcome.messages),
                    ),
                    conflicts_condition(&job.conflicts),
                ];
                conds.push(match &outcome.guard {
                    Some(g) => (
                        condition_types::DELETION_GUARD.to_string(),
                        Status::True,
                        g.reason().to_string(),
                        g.to_string(),
                    ),
                    None => (
                        condition_types::DELETION_GUARD.to_string(),
                        Status::False,
                        "NoDeletionsWithheld".into(),
                        "no deletion was withheld".into(),
                    ),
                });
                if let Some(g) = &outcome.guard
                    && matches!(g, plan::Guard::TooManyDeletions { .. })
                {
                    shared
                        .warn_once(
                            &zone.object_ref(&()),
                            &format!("zone:{key}/guard"),
                            g.reason(),
                            g.to_string(),
                        )
                        .await;
                } else {
                    let keep = HashSet::new();
                    shared.forget_events(&keep, &format!("zone:{key}/guard"));
                }
                shared
                    .metrics
                    .records
                    .with_label_values(&[&key])
                    .set(outcome.records as f64);
                shared
                    .metrics
                    .last_sync
                    .with_label_values(&[&key])
                    .set(Timestamp::now().as_second() as f64);
                write_zone_status(shared, zone, None, outcome.records, conds, true).await;
            }
        }
        Err(e) => {
            shared
                .metrics
                .provider_errors
                .with_label_values(&[&key, e.reason()])
                .inc();
            let conds = vec![
                ready(false, e.reason(), e.to_string()),
                (
                    condition_types::PROVIDER_UNREACHABLE.to_string(),
                    Status::True,
                    e.reason().to_string(),
                    e.to_string(),
                ),
                conflicts_condition(&job.conflicts),
            ];
            let records = zone.status.as_ref().map_or(0, |s| s.records.max(0) as usize);
            write_zone_status(shared, zone, None, records, conds, false).await;
        }
    }
    result.map(|_| ())
}

struct Outcome {
    records: usize,
    messages: usize,
    guard: Option<plan::Guard>,
}

async fn sync_inner(shared: &Shared, job: &Job, cleanup: bool) -> Result<Outcome, SyncError> {
    let zone = &job.zone;
    let key = zone.name_any();
    let client = client_of(shared, zone).await?;
    let axfr = matches!(&zone.spec.provider, Provider::Rfc2136(p) if p.axfr);
    let current = if axfr {
        client.read_zone().await?
    } else {
        Vec::new()
    };
    let mut settings = PlanSettings::from_zone(zone, job.sources_synced || cleanup)?;
    let empty = ZoneRecords::default();
    let desired = if cleanup {
        settings.max_delete_percent = 100;
        settings.policy = Policy::Sync;
        &empty
    } else {
        &*job.desired
    };
    let plan = plan::plan(&settings, desired, &current);
    let mut messages = 0;
    for batch in plan.batches(BATCH_RECORDS) {
        let changes = to_rfc_changes(&current, &batch);
        match client.apply(&changes).await {
            Ok(report) => {
                messages += report.messages;
                shared
                    .metrics
                    .updates_sent
                    .with_label_values(&[&key])
                    .inc_by(report.messages as u64);
            }
            Err(e) => {
                shared.metrics.updates_failed.with_label_values(&[&key]).inc();
                return Err(e.into());
            }
        }
    }
    if !plan.is_empty() {
        tracing::info!(
            zone = %key,
            deletes = plan.deletes.len(),
            updates = plan.updates.len(),
            creates = plan.creates.len(),
            messages,
            "zone synced"
        );
    }
    Ok(Outcome {
        records: desired.records().len(),
        messages,
        guard: plan.guard.clone(),
    })
}

/// The zone object is being deleted: under policy `sync`, remove every record we own from the server.
async fn cleanup(shared: &Shared, job: &Job) -> Result<(), SyncError> {
    if job.zone.spec.policy != Policy::Sync {
        tracing::info!(zone = %job.zone.name_any(), "DNSZone deleted; policy is not sync: records stay on the server");
        return Ok(());
    }
    sync(shared, job, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::RData;
    use hickory_proto::rr::rdata::{A, TXT};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn a(owner: &str, ttl: u32, ip: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A::from(std::net::Ipv4Addr::from(ip))))
    }

    fn txt(owner: &str, text: &str) -> Record {
        Record::from_rdata(name(owner), 300, RData::TXT(TXT::new(vec![text.to_string()])))
    }

    fn change(kind: plan::ChangeKind, remove: Vec<Record>, add: Vec<Record>) -> plan::Change {
        let first = remove.first().or(add.first()).expect("a record").clone();
        plan::Change {
            kind,
            name: first.name.clone(),
            rtype: first.record_type(),
            resource: None,
            remove,
            add,
        }
    }

    #[test]
    fn serial_never_decreases() {
        // (previous in this process, status.serial, now) -> serial; RFC 1982: u32::MAX is followed by
        // a small serial, never stuck at u32::MAX.
        let cases = [
            (None, 0, 1_000, 1_000),
            (None, 5_000, 1_000, 5_001),
            (Some(1_000), 0, 1_000, 1_001),
            (Some(1_000), 0, 2_000, 2_000),
            (Some(u32::MAX), 0, 2_000, 2_000),
            (None, u32::MAX, 2_000, 2_000),
            (Some(u32::MAX), 0, u64::from(u32::MAX), 0),
        ];
        for (previous, status, now, want) in cases {
            let now = std::time::UNIX_EPOCH + Duration::from_secs(now);
            assert_eq!(
                next_serial(previous, status, now),
                want,
                "{previous:?} {status} {now:?}"
            );
        }
    }

    #[test]
    fn plan_changes_become_rrset_changes() {
        use plan::ChangeKind::*;
        let www1 = a("www.z.test.", 300, [192, 0, 2, 1]);
        let www2 = a("www.z.test.", 300, [192, 0, 2, 2]);
        let reg = txt("a-www.z.test.", "heritage=external-dns,external-dns/owner=o");
        let current = vec![www1.clone(), www2.clone(), reg.clone()];

        // A create: adds only (the RRset and its registry record), nothing replaced.
        let new = a("new.z.test.", 60, [192, 0, 2, 9]);
        let out = to_rfc_changes(&current, &[&change(Create, vec![], vec![new.clone()])]);
        assert_eq!(out, vec![rfc2136::Change::Add(vec![new])]);

        // A delete of the whole RRset and its registry record: two Deletes.
        let del = change(Delete, vec![www1.clone(), www2.clone(), reg.clone()], vec![]);
        let out = to_rfc_changes(&current, &[&del]);
        assert_eq!(
            out,
            vec![
                rfc2136::Change::Delete {
                    name: name("a-www.z.test."),
                    rtype: RecordType::TXT
                },
                rfc2136::Change::Delete {
                    name: name("www.z.test."),
                    rtype: RecordType::A
                },
            ]
        );

        // An update removing one address and adding another: the RRset as it must be after, with the new TTL.
        let www3 = a("www.z.test.", 120, [192, 0, 2, 3]);
        let up = change(Update, vec![www1.clone()], vec![www3.clone()]);
        let out = to_rfc_changes(&current, &[&up]);
        let mut kept = www2.clone();
        kept.ttl = 120;
        assert_eq!(
            out,
            vec![rfc2136::Change::Replace {
                name: name("www.z.test."),
                rtype: RecordType::A,
                records: vec![kept, www3],
            }]
        );

        // Removing a record another owner's set does not hold is harmless: the rest of the set stays.
        let stray = change(Update, vec![a("www.z.test.", 300, [192, 0, 2, 77])], vec![]);
        let out = to_rfc_changes(&current, &[&stray]);
        assert_eq!(
            out,
            vec![rfc2136::Change::Replace {
                name: name("www.z.test."),
                rtype: RecordType::A,
                records: vec![www1, www2],
            }]
        );
    }
}
