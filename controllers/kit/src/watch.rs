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
//! kube-runtime 5 has shared reflectors too (`reflector::store_shared`, `Controller::for_shared_stream`,
//! feature `unstable-runtime`); its dispatcher applies backpressure (a full subscriber buffer stops the
//! watch for everyone), does not deliver deletes, and a late subscriber misses what was listed before
//! it joined. This module keeps kube's `Store` and `Controller::for_shared_stream` and replaces the
//! dispatch.

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Resource,
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
};
use tokio::sync::Notify;
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
    /// Starts watching `api` with `config` (full objects), trimmed by `trim`, until `shutdown`.
    pub fn new(api: Api<K>, config: watcher::Config, trim: Trim, shutdown: CancellationToken) -> Self {
        Self::from_source(watcher(api, config).default_backoff().boxed(), trim, shutdown)
    }

    /// Like [`SharedWatch::new`], with every object also changed by `transform` before it is cached.
    pub fn new_transformed(
        api: Api<K>,
        config: watcher::Config,
        trim: Trim,
        transform: Transform<K>,
        shutdown: CancellationToken,
    ) -> Self {
        Self::from_source_transformed(
            watcher(api, config).default_backoff().boxed(),
            trim,
            Some(transform),
            shutdown,
        )
    }
}

impl<K> SharedWatch<K>
where
    K: Watchable,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin + Send + Sync,
{
    /// Runs `source` (a watcher stream) into a shared cache until `shutdown`.
    pub fn from_source(
        source: futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>,
        trim: Trim,
        shutdown: CancellationToken,
    ) -> Self {
        Self::from_source_transformed(source, trim, None, shutdown)
    }

    /// Like [`SharedWatch::from_source`], each object trimmed, then changed by `transform` (if any).
    pub fn from_source_transformed(
        source: futures::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>,
        trim: Trim,
        transform: Option<Transform<K>>,
        shutdown: CancellationToken,
    ) -> Self {
        let mut writer: Writer<K> = Writer::default();
        let inner = Arc::new(Inner {
            store: writer.as_reader(),
            subscribers: Mutex::new(Vec::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        let task_inner = inner.clone();
        tokio::spawn(async move {
            let inner = task_inner;
            let mut source = source;
            let plural = K::plural(&K::DynamicType::default()).to_string();
            loop {
                let ev = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    ev = source.next() => ev,
                };
                match ev {
                    None => break,
                    Some(Err(e)) => {
                        tracing::warn!(watch = %plural, error = %e, "watch failed; retrying with backoff")
                    }
                    Some(Ok(mut ev)) => {
                        trim.event(&mut ev);
                        if let Some(t) = &transform {
                            t.event(&mut ev);
                        }
                        let before = matches!(ev, watcher::Event::InitDone).then(|| inner.store.state());
                        writer.apply_watcher_event(&ev);
                        fan_out(&inner, ev, before);
                    }
                }
            }
            inner.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            for q in live(&inner) {
                q.close();
            }
        });
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
}

impl Watches {
    /// Watches that stop with `shutdown`.
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            shutdown,
            map: Arc::default(),
        }
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
        let w = SharedWatch::new_transformed(api, config, trim, transform, self.shutdown.clone());
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
        let w = SharedWatch::new(api, config, trim, self.shutdown.clone());
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
}
