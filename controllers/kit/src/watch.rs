//! Watches shared between the controllers of one process, with the bulk trimmed off.
//!
//! ```text
//!   Api<K> ──watcher (or metadata_watcher)──> trim (managedFields; optionally last-applied)
//!          ──> transform (optional, per watch: e.g. drop Secret data a controller never reads) ──> Store<K>
//!                                                                                        └──> per subscriber:
//!            a coalescing queue of changed keys ──> Subscription: Applied(obj) | Deleted(last seen)
//!                                               └─> SharedWatch::controller(): a kube Controller
//! ```
//!
//! Every object is held once: the cache's `Arc`, which each subscriber's queue and each delivered
//! [`Change`] share (a deleted object's last state is one `Arc` for all subscribers too).
//!
//! One [`SharedWatch`] per kind (and scope) holds one watch and one cache, however many controllers
//! read it: [`Watches::shared`] hands out the same one for the same kind, scope and options. Each
//! subscriber has its own queue of keys that changed, so a slow subscriber never holds up the watch,
//! the cache or another subscriber, and never loses a change: a key changed several times before the
//! subscriber looks is delivered once, with the object as it is in the cache then (level-based, like
//! client-go's work queue); a key that is gone from the cache by then is delivered as `Deleted` with
//! the last object seen. A relist delivers every object, and `Deleted` for those that disappeared
//! while the watch was down. A subscriber that joins late first gets everything already cached.
//!
//! # Stalled watches
//!
//! A watch can stop delivering without ending: kube-apiserver 1.20 keeps the response of a Service watch
//! it force-closed ("Forcing watcher close due to unresponsiveness", a burst that overflowed its
//! per-watcher buffer) open and empty until the watch's 290 s timeout (its decorated watcher does not
//! close its channel; kubernetes#102539). So each watch built here ([`SharedWatch::new_with`], every
//! [`Watches`] watch) has a [`StallCheck`]: once it has delivered no change for `quiet` (5 s), a
//! [`Probe`] asks the API server what changed after the last resourceVersion it delivered (a 1 s
//! metadata watch; a metadata list when that resourceVersion is gone). Changes the cache still lacks
//! after `grace` (2 s), with nothing delivered meanwhile, restart the watch: a new list and watch,
//! subscribers seeing every object and `Deleted` for what vanished, as after any relist. Counted in
//! `ferrite_watch_restarts_total{resource,reason}` ([`WatchMetrics`]) and logged. Clean probes back
//! off to `max_quiet` (60 s). docs/architecture.md ("Stalled watches") has the whole story.
//!
//! kube-runtime 5 has shared reflectors too (`reflector::store_shared`, `Controller::for_shared_stream`,
//! feature `unstable-runtime`); its dispatcher applies backpressure (a full subscriber buffer stops the
//! watch for everyone), does not deliver deletes, and a late subscriber misses what was listed before
//! it joined. This module keeps kube's `Store` and `Controller::for_shared_stream` and replaces the
//! dispatch.

use futures::{FutureExt, Stream, StreamExt, future::BoxFuture, stream::BoxStream};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Resource,
    api::{ListParams, WatchEvent, WatchParams},
    core::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        reflector::{ObjectRef, Store, store::Writer},
        watcher,
    },
};
use std::{
    any::{Any, TypeId},
    collections::{HashMap, VecDeque},
    fmt::Debug,
    hash::Hash,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

/// The annotation `kubectl apply` leaves on objects: a full copy of the applied object.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What is dropped from every cached object. `managedFields` always goes (often the larger half of an
/// object, and no controller reads it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Trim {
    /// Also drop the `kubectl.kubernetes.io/last-applied-configuration` annotation.
    pub last_applied: bool,
}

impl Trim {
    /// Drops `managedFields` and the last-applied annotation.
    pub fn all() -> Self {
        Self { last_applied: true }
    }

    /// Trims `obj` in place.
    pub fn apply<K: Resource>(&self, obj: &mut K) {
        let meta = obj.meta_mut();
        meta.managed_fields = None;
        if self.last_applied
            && let Some(a) = meta.annotations.as_mut()
        {
            a.remove(LAST_APPLIED);
            if a.is_empty() {
                meta.annotations = None;
            }
        }
    }

    fn event<K: Resource>(&self, ev: &mut watcher::Event<K>) {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
                self.apply(o)
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

/// Keeps only the labels whose key `keep` accepts (none left: no labels at all). For a [`Transform`]
/// that keeps what a controller selects on, e.g. only `kubernetes.io/service-name` of EndpointSlices.
pub fn retain_labels(meta: &mut ObjectMeta, keep: impl Fn(&str) -> bool) {
    retain_keys(&mut meta.labels, keep)
}

/// Keeps only the annotations whose key `keep` accepts (none left: no annotations at all). For a
/// [`Transform`] of a controller that reads a few annotations or none.
pub fn retain_annotations(meta: &mut ObjectMeta, keep: impl Fn(&str) -> bool) {
    retain_keys(&mut meta.annotations, keep)
}

fn retain_keys(map: &mut Option<std::collections::BTreeMap<String, String>>, keep: impl Fn(&str) -> bool) {
    if let Some(m) = map.as_mut() {
        m.retain(|k, _| keep(k));
        if m.is_empty() {
            *map = None;
        }
    }
}

/// A change made to every object of one watch before it is cached and delivered (after [`Trim`]):
/// applied to listed, applied and deleted objects alike, so the cache, the subscribers and the
/// controllers only ever see transformed objects. Use it to keep only what a controller decides with
/// (e.g. a Secret's data replaced by a summary, or dropped for Secrets nothing references); what is
/// dropped has to be read from the API server when it is needed.
///
/// Keep `metadata.name`, `namespace` and `resourceVersion`: the cache is keyed by the first two, and
/// the stall check ([`StallCheck`]) compares the last with what the API server has.
///
/// The name identifies the transform: [`Watches::shared_transformed`] hands out one watch per kind,
/// scope, options and transform name, so two different transforms must have different names.
pub struct Transform<K> {
    name: Arc<str>,
    f: Arc<dyn Fn(&mut K) + Send + Sync>,
}

impl<K> Clone for Transform<K> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            f: self.f.clone(),
        }
    }
}

impl<K> Debug for Transform<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Transform").field(&self.name).finish()
    }
}

impl<K> Transform<K> {
    /// A transform called `name` that runs `f` on each object.
    pub fn new(name: impl Into<String>, f: impl Fn(&mut K) + Send + Sync + 'static) -> Self {
        Self {
            name: Arc::from(name.into()),
            f: Arc::new(f),
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Transforms `obj` in place.
    pub fn apply(&self, obj: &mut K) {
        (self.f)(obj)
    }

    fn event(&self, ev: &mut watcher::Event<K>) {
        match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
                self.apply(o)
            }
            watcher::Event::Init | watcher::Event::InitDone => {}
        }
    }
}

/// A change seen by a [`Subscription`].
#[derive(Debug)]
pub enum Change<K> {
    /// The object exists; this is its current state in the cache.
    Applied(Arc<K>),
    /// The object is gone; this is the last state seen.
    Deleted(Arc<K>),
}

impl<K> Change<K> {
    /// The object, current or last seen.
    pub fn object(&self) -> &Arc<K> {
        match self {
            Change::Applied(o) | Change::Deleted(o) => o,
        }
    }
}

/// Bounds every shared watch needs.
pub trait Watchable: Resource + Clone + Debug + Send + Sync + 'static
where
    Self::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
}

impl<K> Watchable for K
where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
}

struct Queue<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    state: Mutex<QueueState<K>>,
    notify: Notify,
}

struct QueueState<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    order: VecDeque<ObjectRef<K>>,
    last: HashMap<ObjectRef<K>, Arc<K>>,
    closed: bool,
}

impl<K: Resource + Clone + 'static> Queue<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn new() -> Self {
        Self {
            state: Mutex::new(QueueState {
                order: VecDeque::new(),
                last: HashMap::new(),
                closed: false,
            }),
            notify: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, key: ObjectRef<K>, obj: Arc<K>) {
        let mut s = self.lock();
        if s.last.insert(key.clone(), obj).is_none() {
            s.order.push_back(key);
        }
        drop(s);
        self.notify.notify_one();
    }

    fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_one();
    }
}

struct Inner<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    subscribers: Mutex<Vec<Weak<Queue<K>>>>,
    closed: std::sync::atomic::AtomicBool,
}

/// One watch of one kind, its cache, and any number of subscribers. Cheap to clone.
pub struct SharedWatch<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    inner: Arc<Inner<K>>,
}

impl<K: Resource + Clone + 'static> Clone for SharedWatch<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K: Resource + Clone + 'static> Debug for SharedWatch<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedWatch")
            .field("cached", &self.inner.store.len())
            .field("subscribers", &live(&self.inner).len())
            .finish()
    }
}

impl<K> SharedWatch<K>
where
    K: Watchable + serde::de::DeserializeOwned,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
    /// Starts watching `api` with `config` (full objects), trimmed by `trim`, until `shutdown`, with
    /// the default [`StallCheck`] and no metrics.
    pub fn new(api: Api<K>, config: watcher::Config, trim: Trim, shutdown: CancellationToken) -> Self {
        Self::new_with(api, config, trim, None, WatchOptions::default(), shutdown)
    }

    /// Like [`SharedWatch::new`], with every object also changed by `transform` before it is cached.
    pub fn new_transformed(
        api: Api<K>,
        config: watcher::Config,
        trim: Trim,
        transform: Transform<K>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::new_with(
            api,
            config,
            trim,
            Some(transform),
            WatchOptions::default(),
            shutdown,
        )
    }

    /// Like [`SharedWatch::new_transformed`] (no transform when `None`), with `options`: the stall
    /// check (a probe of the API server when the watch has gone quiet; a restart when it stalled)
    /// and the metrics it counts restarts in.
    pub fn new_with(
        api: Api<K>,
        config: watcher::Config,
        trim: Trim,
        transform: Option<Transform<K>>,
        options: WatchOptions,
        shutdown: CancellationToken,
    ) -> Self {
        let probe = Arc::new(ApiProbe {
            api: api.clone(),
            label_selector: config.label_selector.clone(),
            field_selector: config.field_selector.clone(),
        });
        let make = move || watcher(api.clone(), config.clone()).default_backoff().boxed();
        Self::start(
            Source::Restartable {
                make: Box::new(make),
                probe,
                check: options.stall,
                metrics: options.metrics,
            },
            trim,
            transform,
            shutdown,
        )
    }
}

impl<K> SharedWatch<K>
where
    K: Watchable,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
    /// Runs `source` (a watcher stream) into a shared cache until `shutdown`. A fixed stream cannot be
    /// restarted, so there is no stall check (see [`SharedWatch::from_restartable`]).
    pub fn from_source(
        source: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
        trim: Trim,
        shutdown: CancellationToken,
    ) -> Self {
        Self::from_source_transformed(source, trim, None, shutdown)
    }

    /// Like [`SharedWatch::from_source`], each object trimmed, then changed by `transform` (if any).
    pub fn from_source_transformed(
        source: BoxStream<'static, watcher::Result<watcher::Event<K>>>,
        trim: Trim,
        transform: Option<Transform<K>>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::start(Source::Fixed(source), trim, transform, shutdown)
    }

    /// Runs the watcher streams `make` builds into a shared cache until `shutdown`, checking with
    /// `probe` as `options.stall` says that the current stream still delivers: one that stalled is
    /// dropped and `make` called again (a new watch, which lists first; subscribers get `Deleted`
    /// for what vanished meanwhile, as after any relist). [`SharedWatch::new_with`] uses the API
    /// server; tests give fake streams and a fake probe.
    pub fn from_restartable(
        make: impl Fn() -> BoxStream<'static, watcher::Result<watcher::Event<K>>> + Send + 'static,
        probe: Arc<dyn Probe>,
        trim: Trim,
        options: WatchOptions,
        shutdown: CancellationToken,
    ) -> Self {
        Self::start(
            Source::Restartable {
                make: Box::new(make),
                probe,
                check: options.stall,
                metrics: options.metrics,
            },
            trim,
            None,
            shutdown,
        )
    }

    fn start(
        source: Source<K>,
        trim: Trim,
        transform: Option<Transform<K>>,
        shutdown: CancellationToken,
    ) -> Self {
        let writer: Writer<K> = Writer::default();
        let inner = Arc::new(Inner {
            store: writer.as_reader(),
            subscribers: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(run(inner.clone(), writer, source, trim, transform, shutdown));
        Self { inner }
    }

    /// The shared cache (read-only).
    pub fn store(&self) -> Store<K> {
        self.inner.store.clone()
    }

    /// A new subscriber: first everything already cached, then every change.
    pub fn subscribe(&self) -> Subscription<K> {
        let queue = Arc::new(Queue::new());
        {
            let mut subs = self.inner.subscribers.lock().unwrap_or_else(|p| p.into_inner());
            subs.retain(|w| w.strong_count() > 0);
            subs.push(Arc::downgrade(&queue));
        }
        for obj in self.inner.store.state() {
            queue.push(key_of(&obj), obj);
        }
        if self.inner.closed.load(std::sync::atomic::Ordering::SeqCst) {
            queue.close();
        }
        Subscription {
            queue,
            store: self.inner.store.clone(),
            in_flight: None,
        }
    }

    /// A kube Controller fed by a new subscription (applied objects) and reading the shared cache;
    /// give it to [`crate::runner::run`] like one from `Controller::new`.
    pub fn controller(&self) -> Controller<K>
    where
        K: serde::de::DeserializeOwned,
    {
        let trigger = self.subscribe().filter_map(|c| async move {
            match c {
                Change::Applied(o) => Some(o),
                Change::Deleted(_) => None,
            }
        });
        Controller::for_shared_stream(trigger, self.store())
    }

    /// Live subscribers.
    pub fn subscriber_count(&self) -> usize {
        live(&self.inner).len()
    }

    /// True when both handles are the same watch.
    pub fn same_as(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

fn key_of<K: Resource>(obj: &K) -> ObjectRef<K>
where
    K::DynamicType: Eq + Hash + Clone + Default,
{
    ObjectRef::from_obj_with(obj, K::DynamicType::default())
}

fn live<K: Resource + Clone + 'static>(inner: &Inner<K>) -> Vec<Arc<Queue<K>>>
where
    K::DynamicType: Eq + Hash + Clone,
{
    inner
        .subscribers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect()
}

/// When a shared watch checks that it still delivers, and how long it waits (module docs:
/// "Stalled watches"). The defaults suit every controller; [`Watches::with_stall_check`] changes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallCheck {
    /// The first probe, once the watch has delivered no change for this long.
    pub quiet: Duration,
    /// Each probe that finds nothing missing doubles the wait before the next, up to this; a change
    /// delivered brings it back to `quiet`.
    pub max_quiet: Duration,
    /// How long changes a probe found may stay missing from the cache (and no change be delivered)
    /// before the watch counts as stalled and is restarted.
    pub grace: Duration,
}

impl Default for StallCheck {
    fn default() -> Self {
        Self {
            quiet: Duration::from_secs(5),
            max_quiet: Duration::from_secs(60),
            grace: Duration::from_secs(2),
        }
    }
}

/// Options of one shared watch beyond what it watches.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// The stall check; `None`: none (the watch then relies on kube-runtime alone).
    pub stall: Option<StallCheck>,
    /// Where restarts are counted; `None`: not counted (still logged).
    pub metrics: Option<WatchMetrics>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            stall: Some(StallCheck::default()),
            metrics: None,
        }
    }
}

/// The kit's watch metrics: `ferrite_watch_restarts_total{resource, reason}`, the watches the kit
/// dropped and started again because they had stalled (`reason="stalled"`: a probe watch saw changes
/// the watch did not deliver; `reason="diverged"`: the watch was too far behind to probe, and a list
/// differed from the cache). [`crate::App`] registers them in its registry.
#[derive(Clone, Debug)]
pub struct WatchMetrics {
    restarts: prometheus::IntCounterVec,
}

impl WatchMetrics {
    /// The metrics, not registered.
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            restarts: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "ferrite_watch_restarts_total",
                    "Shared watches restarted (a new list and watch) because they stopped delivering, by resource and reason (stalled, diverged).",
                ),
                &["resource", "reason"],
            )?,
        })
    }

    /// The metrics, registered in `registry`.
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let m = Self::new()?;
        registry.register(Box::new(m.restarts.clone()))?;
        Ok(m)
    }

    /// Restarts counted for `resource` and `reason`.
    pub fn restarts(&self, resource: &str, reason: &str) -> u64 {
        self.restarts.with_label_values(&[resource, reason]).get()
    }

    fn show(&self, resource: &str) {
        for r in [REASON_STALLED, REASON_DIVERGED] {
            self.restarts.with_label_values(&[resource, r]);
        }
    }

    fn restarted(&self, resource: &str, reason: &str) {
        self.restarts.with_label_values(&[resource, reason]).inc();
    }
}

const REASON_STALLED: &str = "stalled";
const REASON_DIVERGED: &str = "diverged";

/// One object as a probe of the API server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its name.
    pub name: String,
    /// Its namespace (`None`: cluster-scoped).
    pub namespace: Option<String>,
    /// Its resourceVersion then (of the delete, for a deleted object).
    pub resource_version: String,
    /// Seen deleted.
    pub deleted: bool,
}

impl Seen {
    fn of(meta: &ObjectMeta, deleted: bool) -> Self {
        Self {
            name: meta.name.clone().unwrap_or_default(),
            namespace: meta.namespace.clone(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            deleted,
        }
    }
}

/// What a [`Probe`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed {
    /// The changes after the resourceVersion probed from (a short watch from it).
    Changes(Vec<Seen>),
    /// That resourceVersion was too old to watch from (410 Gone): the collection as listed now (every
    /// object, none `deleted`) and the list's resourceVersion.
    Listed {
        /// The objects.
        items: Vec<Seen>,
        /// The list's resourceVersion.
        resource_version: String,
    },
}

/// Asks the API server what changed since a resourceVersion, for the stall check.
pub trait Probe: Send + Sync + 'static {
    /// Changes after `since` (the last resourceVersion the watch delivered; `None`: it delivered
    /// none, so everything there is counts).
    fn probe(&self, since: Option<String>) -> BoxFuture<'static, Result<Probed, String>>;
}

/// How long a probe watch reads (the API server replays what it has after the resourceVersion at
/// once; the watch asks to end after 1 s).
const PROBE_READ: Duration = Duration::from_secs(2);
/// A probe stops after this many changes: one missing is enough to know.
const PROBE_MAX: usize = 500;

/// The probe of [`SharedWatch::new_with`]: a metadata-only watch from the resourceVersion with the
/// watch's selectors, 1 s long; when that resourceVersion is gone (410), a metadata-only list.
struct ApiProbe<K> {
    api: Api<K>,
    label_selector: Option<String>,
    field_selector: Option<String>,
}

impl<K> Probe for ApiProbe<K>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    fn probe(&self, since: Option<String>) -> BoxFuture<'static, Result<Probed, String>> {
        let api = self.api.clone();
        let (labels, fields) = (self.label_selector.clone(), self.field_selector.clone());
        async move {
            let wp = WatchParams {
                label_selector: labels.clone(),
                field_selector: fields.clone(),
                timeout: Some(1),
                bookmarks: false,
                send_initial_events: false,
            };
            let from = since.unwrap_or_else(|| "0".to_string());
            let stream = match api.watch_metadata(&wp, &from).await {
                Ok(s) => s,
                Err(kube::Error::Api(s)) if s.code == 410 => return list_all(&api, labels, fields).await,
                Err(e) => return Err(format!("probe watch: {e}")),
            };
            let mut stream = std::pin::pin!(stream);
            let mut changes = Vec::new();
            let deadline = tokio::time::sleep(PROBE_READ);
            tokio::pin!(deadline);
            while changes.len() < PROBE_MAX {
                let item = tokio::select! {
                    _ = &mut deadline => break,
                    item = stream.next() => item,
                };
                match item {
                    None => break,
                    Some(Ok(WatchEvent::Added(o) | WatchEvent::Modified(o))) => {
                        changes.push(Seen::of(&o.metadata, false))
                    }
                    Some(Ok(WatchEvent::Deleted(o))) => changes.push(Seen::of(&o.metadata, true)),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(WatchEvent::Error(s))) if s.code == 410 => {
                        return list_all(&api, labels, fields).await;
                    }
                    Some(Ok(WatchEvent::Error(s))) => return Err(format!("probe watch: {}", s.message)),
                    Some(Err(e)) => return Err(format!("probe watch: {e}")),
                }
            }
            Ok(Probed::Changes(changes))
        }
        .boxed()
    }
}

async fn list_all<K>(
    api: &Api<K>,
    label_selector: Option<String>,
    field_selector: Option<String>,
) -> Result<Probed, String>
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned,
{
    let mut lp = ListParams {
        label_selector,
        field_selector,
        limit: Some(500),
        ..ListParams::default()
    };
    let mut items = Vec::new();
    let mut resource_version = None;
    loop {
        let page = api
            .list_metadata(&lp)
            .await
            .map_err(|e| format!("probe list: {e}"))?;
        if resource_version.is_none() {
            resource_version = page.metadata.resource_version.clone();
        }
        items.extend(page.items.iter().map(|o| Seen::of(&o.metadata, false)));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp.continue_token = Some(c),
            None => break,
        }
    }
    Ok(Probed::Listed {
        items,
        resource_version: resource_version.unwrap_or_default(),
    })
}

fn rv_number(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// True when a cached object at `cached` (its resourceVersion; `None`: not cached) reflects `seen`:
/// the object at that version or a later one, or gone (or come back later) when seen deleted.
/// resourceVersions are compared as numbers when both are (etcd's are); otherwise only equality
/// counts.
fn reflects(cached: Option<&str>, seen: &Seen) -> bool {
    match cached {
        None => seen.deleted,
        // Cached without a resourceVersion (a transform dropped it): present is all that can be told.
        Some("") => !seen.deleted,
        Some(c) => match (rv_number(c), rv_number(&seen.resource_version)) {
            (Some(c), Some(s)) if seen.deleted => c > s,
            (Some(c), Some(s)) => c >= s,
            _ => !seen.deleted && c == seen.resource_version,
        },
    }
}

fn cached_rv<K>(store: &Store<K>, seen: &Seen) -> Option<String>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let mut key = ObjectRef::<K>::new_with(&seen.name, K::DynamicType::default());
    if let Some(ns) = &seen.namespace {
        key = key.within(ns);
    }
    store
        .get(&key)
        .map(|o| o.meta().resource_version.clone().unwrap_or_default())
}

/// What the probe saw that the cache does not reflect. `last_rv` is the last resourceVersion the
/// watch delivered: a list older than it says nothing (the watch is past it).
fn missing<K>(store: &Store<K>, probed: &Probed, last_rv: Option<&str>) -> Vec<Seen>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    match probed {
        Probed::Changes(changes) => still_missing(store, changes),
        Probed::Listed {
            items,
            resource_version,
        } => {
            if let (Some(l), Some(r)) = (last_rv.and_then(rv_number), rv_number(resource_version))
                && l >= r
            {
                return Vec::new();
            }
            let mut out = still_missing(store, items);
            let listed: std::collections::HashSet<(Option<&str>, &str)> = items
                .iter()
                .map(|s| (s.namespace.as_deref(), s.name.as_str()))
                .collect();
            for o in store.state() {
                let m = o.meta();
                let (ns, name) = (m.namespace.as_deref(), m.name.as_deref().unwrap_or_default());
                if !listed.contains(&(ns, name)) {
                    out.push(Seen {
                        name: name.to_string(),
                        namespace: ns.map(str::to_string),
                        resource_version: resource_version.clone(),
                        deleted: true,
                    });
                }
            }
            out
        }
    }
}

fn still_missing<K>(store: &Store<K>, seen: &[Seen]) -> Vec<Seen>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    seen.iter()
        .filter(|s| !reflects(cached_rv(store, s).as_deref(), s))
        .cloned()
        .collect()
}

/// The stall check's state: when to probe, what a probe found, when to give up on the watch. Pure
/// (time is passed in), so it is tested without an API server.
#[derive(Debug)]
struct Detector {
    check: StallCheck,
    /// An InitDone was delivered and no relist is under way: the cache should follow the server.
    synced: bool,
    /// The wait before the next probe.
    wait: Duration,
    next_probe: Instant,
    /// The highest (or, not numeric, the latest) resourceVersion delivered.
    last_rv: Option<String>,
    /// Changes a probe found missing, the reason, and when the watch counts as stalled.
    suspect: Option<(Vec<Seen>, &'static str, Instant)>,
}

/// What the detector wants done.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing wrong.
    Fine,
    /// Missing changes; check again at the instant.
    Suspect(Instant),
    /// Restart the watch, for this reason.
    Restart(&'static str, usize),
}

impl Detector {
    fn new(check: StallCheck, now: Instant) -> Self {
        Self {
            check,
            synced: false,
            wait: check.quiet,
            next_probe: now + check.quiet,
            last_rv: None,
            suspect: None,
        }
    }

    fn note_rv(&mut self, rv: Option<&str>) {
        let Some(rv) = rv.filter(|r| !r.is_empty()) else {
            return;
        };
        let newer = match (self.last_rv.as_deref().and_then(rv_number), rv_number(rv)) {
            (Some(old), Some(new)) => new > old,
            _ => true,
        };
        if newer {
            self.last_rv = Some(rv.to_string());
        }
    }

    /// An event from the watch.
    fn event<K: Resource>(&mut self, ev: &watcher::Event<K>, now: Instant) {
        match ev {
            watcher::Event::Init => {
                self.synced = false;
                self.suspect = None;
            }
            watcher::Event::InitApply(o) => self.note_rv(o.meta().resource_version.as_deref()),
            watcher::Event::InitDone => {
                self.synced = true;
                self.next_probe = now + self.wait;
            }
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                self.note_rv(o.meta().resource_version.as_deref());
                self.suspect = None;
                self.wait = self.check.quiet;
                self.next_probe = now + self.wait;
            }
        }
    }

    /// When to start the next probe (`None`: not now: not synced, or changes are suspected).
    fn probe_at(&self) -> Option<Instant> {
        (self.synced && self.suspect.is_none()).then_some(self.next_probe)
    }

    fn backoff(&mut self, now: Instant) {
        self.wait = (self.wait * 2).min(self.check.max_quiet);
        self.next_probe = now + self.wait;
    }

    /// A probe's outcome: the changes the cache does not reflect (`Err`: the probe failed).
    fn probed(&mut self, missing: Result<Vec<Seen>, String>, listed: bool, now: Instant) -> Verdict {
        match missing {
            Ok(m) if !m.is_empty() && self.synced => {
                let at = now + self.check.grace;
                let reason = if listed { REASON_DIVERGED } else { REASON_STALLED };
                self.suspect = Some((m, reason, at));
                Verdict::Suspect(at)
            }
            _ => {
                self.backoff(now);
                Verdict::Fine
            }
        }
    }

    /// The changes suspected missing, for a second look at the cache.
    fn suspected(&self) -> Option<(&[Seen], Instant)> {
        self.suspect.as_ref().map(|(s, _, at)| (s.as_slice(), *at))
    }

    /// The second look, after the grace: `still` is what the cache still does not reflect.
    fn recheck(&mut self, still: usize, now: Instant) -> Verdict {
        let Some((_, reason, _)) = self.suspect.take() else {
            return Verdict::Fine;
        };
        self.backoff(now);
        if still == 0 {
            return Verdict::Fine;
        }
        // A restart lists again; until then nothing is probed. Repeated restarts wait longer.
        self.synced = false;
        Verdict::Restart(reason, still)
    }
}

/// Where a shared watch's events come from.
enum Source<K> {
    /// One stream, as given (tests; callers with their own stream).
    Fixed(BoxStream<'static, watcher::Result<watcher::Event<K>>>),
    /// Streams built on demand, checked for stalls.
    Restartable {
        make: Box<dyn Fn() -> BoxStream<'static, watcher::Result<watcher::Event<K>>> + Send>,
        probe: Arc<dyn Probe>,
        check: Option<StallCheck>,
        metrics: Option<WatchMetrics>,
    },
}

fn resource_name<K: Resource>() -> String
where
    K::DynamicType: Default,
{
    let dt = K::DynamicType::default();
    let (plural, group) = (K::plural(&dt), K::group(&dt));
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// The watch task: events into the cache and the subscribers' queues; the stall check beside it.
async fn run<K>(
    inner: Arc<Inner<K>>,
    mut writer: Writer<K>,
    source: Source<K>,
    trim: Trim,
    transform: Option<Transform<K>>,
    shutdown: CancellationToken,
) where
    K: Watchable,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
    let resource = resource_name::<K>();
    let (mut stream, make, probe, check, metrics) = match source {
        Source::Fixed(s) => (s, None, None, None, None),
        Source::Restartable {
            make,
            probe,
            check,
            metrics,
        } => {
            let s = make();
            (s, Some(make), Some(probe), check, metrics)
        }
    };
    if let Some(m) = &metrics {
        m.show(&resource);
    }
    // No probe without a way to restart.
    let check = check.filter(|_| make.is_some());
    let mut det = check.map(|c| Detector::new(c, Instant::now()));
    let mut probing: Option<BoxFuture<'static, Result<Probed, String>>> = None;
    let far = || Instant::now() + Duration::from_secs(24 * 3600);
    loop {
        let probe_at = det
            .as_ref()
            .and_then(|d| d.probe_at())
            .filter(|_| probing.is_none());
        let recheck_at = det.as_ref().and_then(|d| d.suspected()).map(|(_, at)| at);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            ev = stream.next() => match ev {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(watch = %resource, error = %e, "watch failed; retrying with backoff")
                }
                Some(Ok(mut ev)) => {
                    if let Some(d) = det.as_mut() {
                        d.event(&ev, Instant::now());
                        if matches!(ev, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                            // The watch delivers: whatever a probe under way finds is being caught up.
                            probing = None;
                        }
                    }
                    trim.event(&mut ev);
                    if let Some(t) = &transform {
                        t.event(&mut ev);
                    }
                    let before = matches!(ev, watcher::Event::InitDone).then(|| inner.store.state());
                    writer.apply_watcher_event(&ev);
                    fan_out(&inner, ev, before);
                }
            },
            _ = tokio::time::sleep_until(probe_at.unwrap_or_else(far)), if probe_at.is_some() => {
                if let (Some(p), Some(d)) = (&probe, &det) {
                    probing = Some(p.probe(d.last_rv.clone()));
                }
            },
            res = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                probing = None;
                if let Some(d) = det.as_mut() {
                    let listed = matches!(res, Ok(Probed::Listed { .. }));
                    if let Err(e) = &res {
                        tracing::debug!(watch = %resource, error = %e, "watch stall probe failed");
                    }
                    let m = res.map(|p| missing(&inner.store, &p, d.last_rv.as_deref()));
                    if let Verdict::Suspect(_) = d.probed(m, listed, Instant::now()) {
                        tracing::debug!(watch = %resource, "the API server has changes the watch has not delivered; looking again after the grace");
                    }
                }
            },
            _ = tokio::time::sleep_until(recheck_at.unwrap_or_else(far)), if recheck_at.is_some() => {
                let Some(d) = det.as_mut() else { continue };
                let still = d
                    .suspected()
                    .map(|(s, _)| still_missing(&inner.store, s))
                    .unwrap_or_default();
                let quiet_for = d.check.quiet;
                if let Verdict::Restart(reason, n) = d.recheck(still.len(), Instant::now()) {
                    let example = still
                        .first()
                        .map(|s| format!("{}{}{}", s.namespace.as_deref().unwrap_or(""), if s.namespace.is_some() { "/" } else { "" }, s.name))
                        .unwrap_or_default();
                    tracing::warn!(
                        watch = %resource,
                        reason,
                        missing = n,
                        example = %example,
                        last_resource_version = d.last_rv.as_deref().unwrap_or(""),
                        "watch stalled: the API server has changes it did not deliver (quiet for at least {}s); restarting it (list and watch again)",
                        quiet_for.as_secs()
                    );
                    if let Some(m) = &metrics {
                        m.restarted(&resource, reason);
                    }
                    if let Some(make) = &make {
                        stream = make();
                    }
                }
            },
        }
    }
    inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    for q in live(&inner) {
        q.close();
    }
}

/// Queues what `ev` changed for every subscriber, each sharing one `Arc` per object: the cache's
/// for an applied object, one for all for a deleted one (`ev` was applied to the cache already).
fn fan_out<K>(inner: &Inner<K>, ev: watcher::Event<K>, before: Option<Vec<Arc<K>>>)
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let subs = live(inner);
    if subs.is_empty() {
        return;
    }
    let mut changed: Vec<(ObjectRef<K>, Arc<K>)> = Vec::new();
    match ev {
        watcher::Event::Apply(o) => {
            let k = key_of(&o);
            let cached = inner.store.get(&k).unwrap_or_else(|| Arc::new(o));
            changed.push((k, cached));
        }
        watcher::Event::Delete(o) => {
            changed.push((key_of(&o), Arc::new(o)));
        }
        watcher::Event::InitDone => {
            let now = inner.store.state();
            let present: std::collections::HashSet<ObjectRef<K>> = now.iter().map(|o| key_of(&**o)).collect();
            for o in before.unwrap_or_default() {
                let k = key_of(&*o);
                if !present.contains(&k) {
                    changed.push((k, o));
                }
            }
            changed.extend(now.into_iter().map(|o| (key_of(&*o), o)));
        }
        watcher::Event::Init | watcher::Event::InitApply(_) => {}
    }
    for q in &subs {
        for (k, o) in &changed {
            q.push(k.clone(), o.clone());
        }
    }
}

/// One subscriber's view of a [`SharedWatch`]: a stream of [`Change`]s, ending when the watch stops.
pub struct Subscription<K: Resource + Clone + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    queue: Arc<Queue<K>>,
    store: Store<K>,
    in_flight: Option<futures::future::BoxFuture<'static, Option<Change<K>>>>,
}

impl<K: Resource + Clone + 'static> Debug for Subscription<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("pending", &self.queue.lock().order.len())
            .finish()
    }
}

async fn next_from<K>(queue: Arc<Queue<K>>, store: Store<K>) -> Option<Change<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    loop {
        let notified = queue.notify.notified();
        {
            let mut s = queue.lock();
            if let Some(key) = s.order.pop_front() {
                let last = s.last.remove(&key);
                drop(s);
                match (store.get(&key), last) {
                    (Some(cur), _) => return Some(Change::Applied(cur)),
                    (None, Some(last)) => return Some(Change::Deleted(last)),
                    (None, None) => continue,
                }
            }
            if s.closed {
                return None;
            }
        }
        notified.await;
    }
}

impl<K> Subscription<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    /// The next change; `None` once the watch has stopped and everything was delivered.
    pub async fn next_change(&mut self) -> Option<Change<K>> {
        StreamExt::next(self).await
    }

    /// Changes waiting to be taken.
    pub fn pending(&self) -> usize {
        self.queue.lock().order.len()
    }
}

impl<K> Stream for Subscription<K>
where
    K: Resource + Clone + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    type Item = Change<K>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let fut = this
            .in_flight
            .get_or_insert_with(|| Box::pin(next_from(this.queue.clone(), this.store.clone())));
        let out = fut.poll_unpin(cx);
        if out.is_ready() {
            this.in_flight = None;
        }
        out
    }
}

/// Shared watches by (type, scope and options).
type WatchMap = HashMap<(TypeId, String), Box<dyn Any + Send + Sync>>;

/// The shared watches of one process, one per kind, scope and options ([`crate::App::watches`]).
#[derive(Clone, Debug)]
pub struct Watches {
    shutdown: CancellationToken,
    map: Arc<Mutex<WatchMap>>,
    options: WatchOptions,
}

impl Watches {
    /// Watches that stop with `shutdown`, with the default [`StallCheck`] and no metrics.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            map: Arc::default(),
            options: WatchOptions::default(),
        }
    }

    /// The same, counting restarts in `metrics` (for watches started from now on).
    pub fn with_metrics(mut self, metrics: WatchMetrics) -> Self {
        self.options.metrics = Some(metrics);
        self
    }

    /// The same, with another stall check (`None`: none) for watches started from now on.
    pub fn with_stall_check(mut self, check: Option<StallCheck>) -> Self {
        self.options.stall = check;
        self
    }

    /// Like [`Watches::shared`], each object also changed by `transform` before it is cached: one
    /// watch per kind, scope, options and transform name (see [`Transform`]), apart from the
    /// untransformed one.
    pub fn shared_transformed<K>(
        &self,
        api: Api<K>,
        config: watcher::Config,
        trim: Trim,
        transform: Transform<K>,
    ) -> SharedWatch<K>
    where
        K: Watchable + serde::de::DeserializeOwned,
        K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
    {
        let what = format!("transform={:?}", transform.name());
        let key = (
            TypeId::of::<K>(),
            scope_key(api.resource_url(), &config, trim, &what),
        );
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&key).and_then(|b| b.downcast_ref::<SharedWatch<K>>()) {
            return w.clone();
        }
        let w = SharedWatch::new_with(
            api,
            config,
            trim,
            Some(transform),
            self.options.clone(),
            self.shutdown.clone(),
        );
        map.insert(key, Box::new(w.clone()));
        w
    }

    /// The shared watch of `api` (its kind and namespace scope) with `config` and `trim`: started on
    /// the first call, the same one for every later call with the same arguments.
    pub fn shared<K>(&self, api: Api<K>, config: watcher::Config, trim: Trim) -> SharedWatch<K>
    where
        K: Watchable + serde::de::DeserializeOwned,
        K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
    {
        let key = (
            TypeId::of::<K>(),
            scope_key(api.resource_url(), &config, trim, "full"),
        );
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = map.get(&key).and_then(|b| b.downcast_ref::<SharedWatch<K>>()) {
            return w.clone();
        }
        let w = SharedWatch::new_with(
            api,
            config,
            trim,
            None,
            self.options.clone(),
            self.shutdown.clone(),
        );
        map.insert(key, Box::new(w.clone()));
        w
    }
}

/// An API handle for all namespaces whose lists and watches are metadata-only (`PartialObjectMeta<K>`:
/// names, labels, annotations, owners, finalizers; no spec or status). Give it to [`SharedWatch::new`]
/// or [`Watches::shared`] for a controller that only needs to know what exists.
pub fn metadata_all<K>(client: kube::Client) -> Api<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + 'static,
{
    Api::all(client)
}

/// Like [`metadata_all`], in one namespace.
pub fn metadata_namespaced<K>(client: kube::Client, namespace: &str) -> Api<PartialObjectMeta<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + serde::de::DeserializeOwned
        + 'static,
{
    Api::namespaced(client, namespace)
}

fn scope_key(url: &str, config: &watcher::Config, trim: Trim, what: &str) -> String {
    format!(
        "{what} {url} labels={:?} fields={:?} trim={trim:?}",
        config.label_selector, config.field_selector
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::ResourceExt;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                         "annotations": {LAST_APPLIED: "{}", "keep": "me"},
                         "managedFields": [{"manager": "kubectl", "operation": "Apply"}]}
        }))
        .expect("configmap")
    }

    #[test]
    fn trim_drops_managed_fields_and_optionally_last_applied() {
        let mut a = cm("a", "1");
        Trim::default().apply(&mut a);
        assert!(a.metadata.managed_fields.is_none());
        assert!(
            a.metadata
                .annotations
                .as_ref()
                .expect("kept")
                .contains_key(LAST_APPLIED)
        );
        let mut b = cm("b", "1");
        Trim::all().apply(&mut b);
        let ann = b.metadata.annotations.as_ref().expect("other annotations stay");
        assert!(!ann.contains_key(LAST_APPLIED));
        assert_eq!(ann.get("keep").map(String::as_str), Some("me"));
    }

    #[test]
    fn retain_labels_and_annotations_keep_what_is_asked_and_drop_empty_maps() {
        let mut a = cm("a", "1");
        a.metadata.labels = Some([("app".to_string(), "web".to_string()), ("x".into(), "y".into())].into());
        retain_labels(&mut a.metadata, |k| k == "app");
        assert_eq!(a.labels().len(), 1);
        assert_eq!(a.labels().get("app").map(String::as_str), Some("web"));
        retain_annotations(&mut a.metadata, |k| k == "keep");
        assert_eq!(
            a.metadata
                .annotations
                .as_ref()
                .map(|m| m.keys().cloned().collect::<Vec<_>>()),
            Some(vec!["keep".to_string()])
        );
        retain_annotations(&mut a.metadata, |_| false);
        assert!(a.metadata.annotations.is_none(), "an empty map is dropped");
        retain_labels(&mut a.metadata, |_| false);
        assert!(a.metadata.labels.is_none());
        // Nothing to keep from: stays None.
        retain_labels(&mut a.metadata, |_| true);
        assert!(a.metadata.labels.is_none());
    }

    async fn next(sub: &mut Subscription<ConfigMap>) -> Change<ConfigMap> {
        tokio::time::timeout(std::time::Duration::from_secs(2), sub.next_change())
            .await
            .expect("a change within 2 s")
            .expect("not closed")
    }

    #[tokio::test]
    async fn subscribers_coalesce_see_deletes_and_relist_gaps_and_late_joiners_catch_up() {
        use watcher::Event as E;
        let (tx, rx) = futures::channel::mpsc::unbounded::<watcher::Result<E<ConfigMap>>>();
        let stop = CancellationToken::new();
        let w = SharedWatch::from_source(rx.boxed(), Trim::all(), stop.clone());
        let mut s1 = w.subscribe();
        let send = |e| tx.unbounded_send(Ok(e)).expect("send");
        send(E::Init);
        send(E::InitApply(cm("a", "1")));
        send(E::InitApply(cm("b", "1")));
        send(E::InitDone);
        let mut got = vec![];
        for _ in 0..2 {
            match next(&mut s1).await {
                Change::Applied(o) => {
                    assert!(o.metadata.managed_fields.is_none(), "trimmed in the cache");
                    got.push(o.metadata.name.clone().expect("name"));
                }
                Change::Deleted(o) => panic!("unexpected delete of {:?}", o.metadata.name),
            }
        }
        got.sort();
        assert_eq!(got, vec!["a", "b"]);

        // A late subscriber gets the cache first.
        let mut s2 = w.subscribe();
        assert_eq!(s2.pending(), 2);
        assert_eq!(w.subscriber_count(), 2);

        // Three updates of a before s1 looks: one change, the latest.
        send(E::Apply(cm("a", "2")));
        send(E::Apply(cm("a", "3")));
        send(E::Apply(cm("a", "4")));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(s1.pending(), 1);
        match next(&mut s1).await {
            Change::Applied(o) => assert_eq!(o.metadata.resource_version.as_deref(), Some("4")),
            Change::Deleted(_) => panic!("a exists"),
        }
        // A delete is delivered with the last state.
        send(E::Delete(cm("b", "5")));
        match next(&mut s1).await {
            Change::Deleted(o) => assert_eq!(o.metadata.name.as_deref(), Some("b")),
            Change::Applied(_) => panic!("b is gone"),
        }
        // A relist in which a vanished: s1 learns it as a delete.
        send(E::Init);
        send(E::InitApply(cm("c", "6")));
        send(E::InitDone);
        let mut seen = vec![];
        for _ in 0..2 {
            match next(&mut s1).await {
                Change::Applied(o) => seen.push(format!("+{}", o.metadata.name.clone().expect("n"))),
                Change::Deleted(o) => seen.push(format!("-{}", o.metadata.name.clone().expect("n"))),
            }
        }
        seen.sort();
        assert_eq!(seen, vec!["+c", "-a"]);

        // s2 took nothing meanwhile: its queue holds a, b, c once each, resolved against the cache.
        let mut s2_seen = vec![];
        while s2.pending() > 0 {
            match next(&mut s2).await {
                Change::Applied(o) => s2_seen.push(format!("+{}", o.metadata.name.clone().expect("n"))),
                Change::Deleted(o) => s2_seen.push(format!("-{}", o.metadata.name.clone().expect("n"))),
            }
        }
        s2_seen.sort();
        assert_eq!(s2_seen, vec!["+c", "-a", "-b"]);

        // Shutdown ends every subscription.
        stop.cancel();
        let end = tokio::time::timeout(std::time::Duration::from_secs(2), s1.next_change())
            .await
            .expect("ends");
        assert!(end.is_none());
        drop(s1);
        drop(s2);
        assert_eq!(w.subscriber_count(), 0);
    }

    fn with_data(name: &str, rv: &str, data: &[(&str, &str)]) -> ConfigMap {
        let mut c = cm(name, rv);
        c.data = Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        c
    }

    #[tokio::test]
    async fn a_transform_shapes_the_cache_and_every_change_and_subscribers_share_one_object() {
        use watcher::Event as E;
        let (tx, rx) = futures::channel::mpsc::unbounded::<watcher::Result<E<ConfigMap>>>();
        let stop = CancellationToken::new();
        // Keep only the "keep" entry of data, and note that the transform ran.
        let t = Transform::new("keep-only", |c: &mut ConfigMap| {
            if let Some(d) = c.data.as_mut() {
                d.retain(|k, _| k == "keep");
            }
            c.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert("transformed".into(), "yes".into());
        });
        assert_eq!(t.name(), "keep-only");
        let w = SharedWatch::from_source_transformed(rx.boxed(), Trim::all(), Some(t), stop.clone());
        let mut s1 = w.subscribe();
        let mut s2 = w.subscribe();
        let send = |e| tx.unbounded_send(Ok(e)).expect("send");
        send(E::Init);
        send(E::InitApply(with_data(
            "a",
            "1",
            &[("keep", "1"), ("big", "xxxxxxxx")],
        )));
        send(E::InitDone);
        let (Change::Applied(a1), Change::Applied(a2)) = (next(&mut s1).await, next(&mut s2).await) else {
            panic!("a exists")
        };
        let cached = w.store().get(&ObjectRef::new("a").within("ns")).expect("cached");
        for o in [&a1, &a2, &cached] {
            let data = o.data.as_ref().expect("data");
            assert_eq!(data.len(), 1, "only what the transform kept: {data:?}");
            assert_eq!(data.get("keep").map(String::as_str), Some("1"));
            assert_eq!(o.labels().get("transformed").map(String::as_str), Some("yes"));
            assert!(o.metadata.managed_fields.is_none(), "trimmed as well");
            assert!(!o.annotations().contains_key(LAST_APPLIED));
        }
        assert!(Arc::ptr_eq(&a1, &a2) && Arc::ptr_eq(&a1, &cached), "one object");
        drop((a1, a2, cached));

        // An update waiting in both queues is the cache's object, not a copy per queue.
        send(E::Apply(with_data(
            "a",
            "2",
            &[("keep", "2"), ("big", "yyyyyyyy")],
        )));
        for _ in 0..100 {
            if s1.pending() == 1 && s2.pending() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!((s1.pending(), s2.pending()), (1, 1));
        let cached = w.store().get(&ObjectRef::new("a").within("ns")).expect("cached");
        assert_eq!(cached.metadata.resource_version.as_deref(), Some("2"));
        assert_eq!(
            Arc::strong_count(&cached),
            4,
            "the store, both queues and this handle hold one object"
        );
        let Change::Applied(a1) = next(&mut s1).await else {
            panic!("a exists")
        };
        assert!(Arc::ptr_eq(&a1, &cached));
        assert_eq!(a1.data.as_ref().map(|d| d.len()), Some(1));
        let _ = next(&mut s2).await;

        // A delete: both subscribers get the one last state, transformed too.
        send(E::Delete(with_data("a", "3", &[("keep", "3"), ("big", "z")])));
        let (Change::Deleted(d1), Change::Deleted(d2)) = (next(&mut s1).await, next(&mut s2).await) else {
            panic!("a is gone")
        };
        assert!(Arc::ptr_eq(&d1, &d2), "one last state for all");
        assert_eq!(d1.data.as_ref().map(|d| d.len()), Some(1));
        assert_eq!(d1.metadata.resource_version.as_deref(), Some("3"));
        stop.cancel();
    }

    fn seen(name: &str, rv: &str, deleted: bool) -> Seen {
        Seen {
            name: name.into(),
            namespace: Some("ns".into()),
            resource_version: rv.into(),
            deleted,
        }
    }

    #[test]
    fn a_cached_object_reflects_what_the_probe_saw_at_that_version_or_later() {
        // Present on the server at rv 5.
        assert!(!reflects(None, &seen("a", "5", false)), "not cached");
        assert!(!reflects(Some("4"), &seen("a", "5", false)), "cached older");
        assert!(reflects(Some("5"), &seen("a", "5", false)));
        assert!(reflects(Some("9"), &seen("a", "5", false)), "cached newer");
        // Deleted on the server at rv 5.
        assert!(reflects(None, &seen("a", "5", true)), "gone from the cache too");
        assert!(!reflects(Some("4"), &seen("a", "5", true)), "still cached");
        assert!(reflects(Some("7"), &seen("a", "5", true)), "created again later");
        // Not numbers: only equality counts.
        assert!(reflects(Some("x"), &seen("a", "x", false)));
        assert!(!reflects(Some("y"), &seen("a", "x", false)));
        assert!(!reflects(Some("x"), &seen("a", "x", true)));
        // Cached without a resourceVersion: present reflects any version, but not a delete.
        assert!(reflects(Some(""), &seen("a", "5", false)));
        assert!(!reflects(Some(""), &seen("a", "5", true)));
    }

    fn test_check() -> StallCheck {
        StallCheck {
            quiet: Duration::from_secs(5),
            max_quiet: Duration::from_secs(30),
            grace: Duration::from_secs(2),
        }
    }

    #[test]
    fn the_detector_probes_only_a_quiet_synced_watch_backs_off_and_restarts_only_after_the_grace() {
        use watcher::Event as E;
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut d = Detector::new(test_check(), t0);
        assert_eq!(d.probe_at(), None, "nothing to probe before the first list");
        d.event(&E::<ConfigMap>::Init, t0);
        d.event(&E::InitApply(cm("a", "7")), t0);
        d.event(&E::InitApply(cm("b", "3")), t0);
        assert_eq!(d.probe_at(), None, "still listing");
        d.event(&E::<ConfigMap>::InitDone, s(1));
        assert_eq!(d.probe_at(), Some(s(6)));
        assert_eq!(
            d.last_rv.as_deref(),
            Some("7"),
            "the highest resourceVersion listed"
        );

        // Clean probes double the wait, up to max_quiet.
        assert_eq!(d.probed(Ok(vec![]), false, s(6)), Verdict::Fine);
        assert_eq!(d.probe_at(), Some(s(16)));
        assert_eq!(d.probed(Err("unreachable".into()), false, s(16)), Verdict::Fine);
        assert_eq!(d.probe_at(), Some(s(36)), "a failed probe waits too");
        assert_eq!(d.probed(Ok(vec![]), false, s(36)), Verdict::Fine);
        assert_eq!(d.probe_at(), Some(s(66)), "capped at max_quiet");
        // A change delivered: back to quiet.
        d.event(&E::Apply(cm("a", "9")), s(70));
        assert_eq!(d.probe_at(), Some(s(75)));
        assert_eq!(d.last_rv.as_deref(), Some("9"));
        d.event(&E::Delete(cm("b", "8")), s(71));
        assert_eq!(d.last_rv.as_deref(), Some("9"), "never goes back");

        // The probe finds a change missing: suspect, no further probe, look again after the grace.
        let m = vec![seen("c", "10", false)];
        assert_eq!(d.probed(Ok(m.clone()), false, s(76)), Verdict::Suspect(s(78)));
        assert_eq!(d.probe_at(), None);
        assert_eq!(d.suspected(), Some((m.as_slice(), s(78))));
        // Caught up by then: fine, and probing resumes.
        assert_eq!(d.recheck(0, s(78)), Verdict::Fine);
        assert!(d.probe_at().is_some());
        // A change delivered during the grace clears the suspicion (the watch is alive).
        assert_eq!(d.probed(Ok(m.clone()), false, s(90)), Verdict::Suspect(s(92)));
        d.event(&E::Apply(cm("c", "10")), s(91));
        assert_eq!(d.suspected(), None);
        assert_eq!(d.recheck(1, s(92)), Verdict::Fine, "nothing suspected any more");
        // Still missing after the grace: restart; no probe until the new list is done.
        assert_eq!(d.probed(Ok(m.clone()), true, s(100)), Verdict::Suspect(s(102)));
        assert_eq!(d.recheck(1, s(102)), Verdict::Restart(REASON_DIVERGED, 1));
        assert_eq!(d.probe_at(), None);
        d.event(&E::<ConfigMap>::Init, s(102));
        d.event(&E::<ConfigMap>::InitDone, s(103));
        assert_eq!(d.probe_at(), Some(s(113)), "after a restart the wait has doubled");
        // A probe result that arrives while a relist is under way is not acted on.
        d.event(&E::<ConfigMap>::Init, s(120));
        assert_eq!(d.probed(Ok(m), false, s(121)), Verdict::Fine);
    }

    #[tokio::test]
    async fn missing_compares_probe_changes_and_lists_with_the_cache() {
        use watcher::Event as E;
        let (tx, rx) = futures::channel::mpsc::unbounded::<watcher::Result<E<ConfigMap>>>();
        let stop = CancellationToken::new();
        let w = SharedWatch::from_source(rx.boxed(), Trim::all(), stop.clone());
        let mut sub = w.subscribe();
        for e in [
            E::Init,
            E::InitApply(cm("a", "5")),
            E::InitApply(cm("b", "6")),
            E::InitDone,
        ] {
            tx.unbounded_send(Ok(e)).expect("send");
        }
        for _ in 0..2 {
            next(&mut sub).await;
        }
        let store = w.store();
        let changes = Probed::Changes(vec![
            seen("a", "5", false),
            seen("b", "8", true),
            seen("c", "9", false),
        ]);
        assert_eq!(
            missing(&store, &changes, Some("6")),
            vec![seen("b", "8", true), seen("c", "9", false)]
        );
        // A list newer than the watch: a is older in the cache, b is not listed, c is new.
        let listed = Probed::Listed {
            items: vec![seen("a", "7", false), seen("c", "9", false)],
            resource_version: "10".into(),
        };
        let mut m = missing(&store, &listed, Some("6"));
        m.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(
            m,
            vec![
                seen("a", "7", false),
                seen("b", "10", true),
                seen("c", "9", false)
            ]
        );
        // The watch delivered past the list: the list says nothing.
        assert!(missing(&store, &listed, Some("11")).is_empty());
        // A list that matches the cache: nothing missing.
        let same = Probed::Listed {
            items: vec![seen("a", "5", false), seen("b", "6", false)],
            resource_version: "10".into(),
        };
        assert!(missing(&store, &same, Some("6")).is_empty());
        stop.cancel();
    }

    /// A probe that answers from a script, counting its calls.
    struct FakeProbe {
        answers: Mutex<VecDeque<Result<Probed, String>>>,
        calls: std::sync::atomic::AtomicUsize,
        since: Mutex<Vec<Option<String>>>,
    }

    impl Probe for FakeProbe {
        fn probe(&self, since: Option<String>) -> BoxFuture<'static, Result<Probed, String>> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.since.lock().expect("lock").push(since);
            let a = self
                .answers
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(Ok(Probed::Changes(vec![])));
            async move { a }.boxed()
        }
    }

    type Feed = futures::channel::mpsc::UnboundedSender<watcher::Result<watcher::Event<ConfigMap>>>;

    /// A restartable source whose streams are fed through the senders it hands out, one per start.
    fn fake_streams() -> (
        impl Fn() -> BoxStream<'static, watcher::Result<watcher::Event<ConfigMap>>> + Send + 'static,
        futures::channel::mpsc::UnboundedReceiver<Feed>,
    ) {
        let (started_tx, started_rx) = futures::channel::mpsc::unbounded::<Feed>();
        let make = move || {
            let (tx, rx) = futures::channel::mpsc::unbounded();
            started_tx.unbounded_send(tx).expect("test alive");
            rx.boxed()
        };
        (make, started_rx)
    }

    async fn next_start(starts: &mut futures::channel::mpsc::UnboundedReceiver<Feed>) -> Feed {
        tokio::time::timeout(Duration::from_secs(5), starts.next())
            .await
            .expect("a start within 5 s")
            .expect("open")
    }

    fn fast_check() -> StallCheck {
        StallCheck {
            quiet: Duration::from_millis(100),
            max_quiet: Duration::from_millis(400),
            grace: Duration::from_millis(100),
        }
    }

    #[tokio::test]
    async fn a_stalled_watch_is_restarted_and_subscribers_see_what_changed_meanwhile() {
        use watcher::Event as E;
        let (make, mut starts) = fake_streams();
        // The stalled watch never delivers b's delete; the probe sees it, twice (before and after
        // the grace the cache still has b).
        let probe = Arc::new(FakeProbe {
            answers: Mutex::new(VecDeque::from([Ok(Probed::Changes(vec![seen("b", "8", true)]))])),
            calls: Default::default(),
            since: Mutex::default(),
        });
        let registry = prometheus::Registry::new();
        let metrics = WatchMetrics::register(&registry).expect("metrics");
        let stop = CancellationToken::new();
        let w = SharedWatch::from_restartable(
            make,
            probe.clone(),
            Trim::all(),
            WatchOptions {
                stall: Some(fast_check()),
                metrics: Some(metrics.clone()),
            },
            stop.clone(),
        );
        let mut sub = w.subscribe();
        let first = next_start(&mut starts).await;
        for e in [
            E::Init,
            E::InitApply(cm("a", "5")),
            E::InitApply(cm("b", "6")),
            E::InitDone,
        ] {
            first.unbounded_send(Ok(e)).expect("send");
        }
        for _ in 0..2 {
            next(&mut sub).await;
        }
        first.unbounded_send(Ok(E::Apply(cm("a", "7")))).expect("send");
        assert!(
            matches!(next(&mut sub).await, Change::Applied(o) if o.metadata.resource_version.as_deref() == Some("7"))
        );
        assert_eq!(metrics.restarts("configmaps", REASON_STALLED), 0);

        // Quiet from here (the stream stays open: a stalled watch). The kit probes, waits the
        // grace, and starts a new watch.
        let second = next_start(&mut starts).await;
        assert_eq!(metrics.restarts("configmaps", REASON_STALLED), 1);
        assert_eq!(
            probe
                .since
                .lock()
                .expect("lock")
                .first()
                .cloned()
                .flatten()
                .as_deref(),
            Some("7"),
            "probed from the last resourceVersion delivered"
        );
        for e in [E::Init, E::InitApply(cm("a", "7")), E::InitDone] {
            second.unbounded_send(Ok(e)).expect("send");
        }
        let mut seen_changes = vec![];
        for _ in 0..2 {
            match next(&mut sub).await {
                Change::Applied(o) => seen_changes.push(format!("+{}", o.metadata.name.clone().expect("n"))),
                Change::Deleted(o) => seen_changes.push(format!("-{}", o.metadata.name.clone().expect("n"))),
            }
        }
        seen_changes.sort();
        assert_eq!(
            seen_changes,
            vec!["+a", "-b"],
            "b's delete reached the subscriber"
        );
        assert!(first.is_closed(), "the stalled stream was dropped");

        // The new watch is healthy: later probes find nothing and nothing restarts.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(probe.calls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        assert_eq!(metrics.restarts("configmaps", REASON_STALLED), 1);
        assert!(starts.try_recv().is_err(), "no further start");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_quiet_healthy_watch_is_probed_with_backoff_and_never_restarted() {
        use watcher::Event as E;
        let (make, mut starts) = fake_streams();
        // The probe sees a change the watch delivers within the grace: not a stall.
        let probe = Arc::new(FakeProbe {
            answers: Mutex::new(VecDeque::from([Ok(Probed::Changes(vec![seen("c", "9", false)]))])),
            calls: Default::default(),
            since: Mutex::default(),
        });
        let registry = prometheus::Registry::new();
        let metrics = WatchMetrics::register(&registry).expect("metrics");
        let stop = CancellationToken::new();
        let w = SharedWatch::from_restartable(
            make,
            probe.clone(),
            Trim::all(),
            WatchOptions {
                stall: Some(StallCheck {
                    grace: Duration::from_millis(300),
                    ..fast_check()
                }),
                metrics: Some(metrics.clone()),
            },
            stop.clone(),
        );
        let mut sub = w.subscribe();
        let feed = next_start(&mut starts).await;
        for e in [E::Init, E::InitApply(cm("a", "5")), E::InitDone] {
            feed.unbounded_send(Ok(e)).expect("send");
        }
        next(&mut sub).await;
        // The first probe (after 100 ms) reports c; c arrives 100 ms later, within the grace.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(probe.calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        feed.unbounded_send(Ok(E::Apply(cm("c", "9")))).expect("send");
        next(&mut sub).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let calls = probe.calls.load(std::sync::atomic::Ordering::SeqCst);
        // 100 ms after c, then 200, 400, 400, ... : a handful, not one per 100 ms.
        assert!((3..=6).contains(&calls), "{calls} probes");
        assert_eq!(metrics.restarts("configmaps", REASON_STALLED), 0);
        assert!(starts.try_recv().is_err(), "never restarted");
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf)
                .expect("encodes");
            String::from_utf8(buf).expect("utf-8")
        };
        assert!(
            text.contains("ferrite_watch_restarts_total{reason=\"stalled\",resource=\"configmaps\"} 0"),
            "visible at 0:\n{text}"
        );
        stop.cancel();
    }
}
