//! Kubernetes Events (events.k8s.io/v1) for the objects a controller acts on, with client-go's
//! EventCorrelator behaviour adapted to events.k8s.io/v1.
//!
//! Publishing is best effort: a failed Event is logged and never fails a reconcile. Only a writer (the
//! leader, or a process that does not elect) publishes.
//!
//! ```text
//!   normal()/warning() ──> key (type, reason, action, note, reporter, regarding, related; no resourceVersion)
//!        │
//!        ├─ a recent Event has that key (its last repeat < 6 min ago): a repeat. Counted in memory;
//!        │    its `series` is PATCHed at counts 2, 4, 8, 16, ..., at least every `series_refresh` while it
//!        │    goes on, and once more with the final count when it ends (6 min without a repeat, written by a
//!        │    background flush every 10 s, or by `Events::flush`). Repeats never count against a limit.
//!        └─ new: spam filter, then POST
//!             per regarding object (any type): token bucket, client-go's 25 in a row, then 1 per 5 min
//!             per recorder, Normal only: token bucket, 100 in a row, then 5 per second (mass creations)
//!             refused -> not published, counted in ferrite_events_suppressed_total{reason, limit}
//! ```
//!
//! So a reconcile that says the same thing every time (a retried failure, a deprecated annotation seen
//! on every resync) costs one Event and a handful of series writes, not one write per reconcile; another
//! note (another failure) is another Event. Warning Events are never refused by the per-recorder budget,
//! only by the per-object filter. Limits are set by the caller ([`Events::with_limits`]).
//!
//! Unlike kube-runtime's `Recorder`, which keeps a full copy of every Event it published for 6 minutes
//! (unbounded), this keeps only a hash of the key, the Event's name and counts, at most
//! [`EventLimits::cache_max`] keys (and as many per-object buckets); past that the least recently seen
//! are forgotten first (their next repeat is a new Event, which is what the API server's own Event TTL
//! does anyway; a count not yet written is then lost). Counts not yet written when the process exits
//! are lost unless it calls [`Events::flush`] first.

use crate::leader::Leadership;
use k8s_openapi::{
    api::{
        core::v1::ObjectReference,
        events::v1::{Event as K8sEvent, EventSeries},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};
use prometheus::{IntCounterVec, Opts, Registry};
use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How long after its last occurrence an Event is still repeated rather than published anew.
pub const CACHE_TTL: SignedDuration = SignedDuration::from_mins(6);
/// Default of [`EventLimits::cache_max`]: this many recent Events (and per-object buckets) are remembered.
pub const CACHE_MAX: usize = 16_384;
/// How often pending series counts are looked at by the background flush.
const FLUSH_TICK: Duration = Duration::from_secs(10);
/// How often expired entries are swept from the caches.
const SWEEP_EVERY: SignedDuration = SignedDuration::from_secs(10);

/// A token bucket: `burst` in a row, then one more per `every`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Tokens when full (and at the start).
    pub burst: u32,
    /// One token comes back per this long.
    pub every: Duration,
}

impl RateLimit {
    /// `burst` in a row, then one per `every`.
    pub const fn new(burst: u32, every: Duration) -> Self {
        Self { burst, every }
    }

    /// `burst` in a row, then `per_second` per second (a rate of 0 or below never refills).
    pub fn per_second(burst: u32, per_second: f64) -> Self {
        let every = if per_second > 0.0 && per_second.is_finite() {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::MAX
        };
        Self { burst, every }
    }

    fn per_sec(&self) -> f64 {
        if self.every.is_zero() {
            f64::INFINITY
        } else {
            1.0 / self.every.as_secs_f64()
        }
    }
}

/// Limits of an Events publisher (see the module docs). `Default` is the kit's choice for every
/// controller; a caller with other needs sets its own with [`Events::with_limits`].
#[derive(Clone, Debug, PartialEq)]
pub struct EventLimits {
    /// New Events per regarding object, of any type (client-go's spam filter: 25, then 1 per 5 min).
    /// `None`: unlimited.
    pub per_object: Option<RateLimit>,
    /// New Normal Events of this publisher (mass creations: 100, then 5 per second). Warnings never
    /// count. `None`: unlimited.
    pub normal: Option<RateLimit>,
    /// A series that goes on is written at least this often (beside counts 2, 4, 8, ...), so the Event
    /// outlives the API server's Event TTL (1 h by default) while it repeats. client-go: 30 min.
    pub series_refresh: Duration,
    /// Recent Events (and per-object buckets) remembered, at most.
    pub cache_max: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        Self {
            per_object: Some(RateLimit::new(25, Duration::from_secs(300))),
            normal: Some(RateLimit::per_second(100, 5.0)),
            series_refresh: Duration::from_secs(30 * 60),
            cache_max: CACHE_MAX,
        }
    }
}

impl EventLimits {
    /// Refuses limits that would publish nothing or remember nothing.
    pub fn validate(&self) -> Result<(), String> {
        for (name, l) in [("per_object", self.per_object), ("normal", self.normal)] {
            if let Some(l) = l
                && l.burst == 0
            {
                return Err(format!(
                    "Event limit {name}: burst must be at least 1 (use None for no limit)"
                ));
            }
        }
        if self.series_refresh < Duration::from_secs(1) {
            return Err("Event limits: series_refresh must be at least 1s".into());
        }
        if self.cache_max == 0 {
            return Err("Event limits: cache_max must be at least 1".into());
        }
        Ok(())
    }
}

/// `ferrite_events_suppressed_total{reason, limit}`: Events not published because a limit refused them
/// (`limit` = `object` for the per-object filter, `normal` for the publisher's Normal budget).
#[derive(Clone, Debug)]
pub struct EventMetrics {
    suppressed: IntCounterVec,
}

impl EventMetrics {
    /// Creates the metrics without registering them.
    pub fn new() -> prometheus::Result<Self> {
        Ok(Self {
            suppressed: IntCounterVec::new(
                Opts::new(
                    "ferrite_events_suppressed_total",
                    "Events not published because a limit refused them (limit: object = per regarding object, normal = the Normal Event budget), by Event reason.",
                ),
                &["reason", "limit"],
            )?,
        })
    }

    /// Creates and registers the metrics in `registry` (once per registry).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self::new()?;
        registry.register(Box::new(m.suppressed.clone()))?;
        Ok(m)
    }

    /// Events suppressed so far with `reason` by `limit`.
    pub fn suppressed(&self, reason: &str, limit: &str) -> u64 {
        self.suppressed.with_label_values(&[reason, limit]).get()
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    at: Timestamp,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Timestamp) -> Self {
        Self {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Timestamp) {
        let secs = now.duration_since(self.at).as_secs_f64().max(0.0);
        self.tokens = (self.tokens + secs * limit.per_sec()).min(f64::from(limit.burst));
        if now > self.at {
            self.at = now;
        }
    }
}

/// What is remembered of a published Event: enough to add to its series.
#[derive(Debug, Clone)]
struct Recent {
    namespace: String,
    /// None while it is being created.
    name: Option<String>,
    /// Occurrences seen.
    count: i32,
    /// Occurrences the API server has (in `series`, or 1 for the Event itself).
    written: i32,
    /// Last occurrence.
    last: Timestamp,
    /// Last write (create or series).
    wrote: Timestamp,
    /// A write of it is in flight (another one waits).
    inflight: bool,
}

/// A series write to make.
#[derive(Debug, Clone, PartialEq)]
struct Write {
    key: u64,
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

/// What to do with one occurrence.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// A new Event: create it, then [`Correlator::created`].
    Create,
    /// A repeat whose series is written now, then [`Correlator::wrote`].
    Series(Write),
    /// A repeat counted in memory, written later.
    Fold,
    /// Refused by a limit (`object` or `normal`).
    Suppress(&'static str),
}

/// The pure part of the recorder: dedupe, series counts and spam filters, with the time passed in.
#[derive(Debug)]
struct Correlator {
    limits: EventLimits,
    series: HashMap<u64, Recent>,
    objects: HashMap<u64, Bucket>,
    normal: Option<Bucket>,
    swept: Option<Timestamp>,
    metrics: Option<EventMetrics>,
}

impl Correlator {
    fn new(limits: EventLimits) -> Self {
        Self {
            limits,
            series: HashMap::new(),
            objects: HashMap::new(),
            normal: None,
            swept: None,
            metrics: None,
        }
    }

    fn refresh(&self) -> SignedDuration {
        SignedDuration::try_from(self.limits.series_refresh).unwrap_or(SignedDuration::MAX)
    }

    /// One occurrence of the Event `key` about the object `object` at `now`.
    fn observe(&mut self, key: u64, object: u64, type_: EventType, reason: &str, now: Timestamp) -> Step {
        self.sweep(now);
        let refresh = self.refresh();
        if let Some(r) = self.series.get_mut(&key)
            && r.last + CACHE_TTL > now
        {
            r.count = r.count.saturating_add(1);
            if now > r.last {
                r.last = now;
            }
            let due = r.count & (r.count - 1) == 0 || r.wrote + refresh <= now;
            return match &r.name {
                Some(name) if due && !r.inflight => {
                    r.inflight = true;
                    Step::Series(Write {
                        key,
                        namespace: r.namespace.clone(),
                        name: name.clone(),
                        count: r.count,
                        last: r.last,
                    })
                }
                _ => Step::Fold,
            };
        }
        if let Some(limit) = self.refused(object, type_, now) {
            if let Some(m) = &self.metrics {
                m.suppressed.with_label_values(&[reason, limit]).inc();
            }
            return Step::Suppress(limit);
        }
        self.make_room(now);
        self.series.insert(
            key,
            Recent {
                namespace: String::new(),
                name: None,
                count: 1,
                written: 1,
                last: now,
                wrote: now,
                inflight: true,
            },
        );
        Step::Create
    }

    /// Takes a token of each limit that applies, or none and names the one that refused.
    fn refused(&mut self, object: u64, type_: EventType, now: Timestamp) -> Option<&'static str> {
        let per_object = self.limits.per_object;
        let normal = self.limits.normal.filter(|_| type_ == EventType::Normal);
        if let Some(l) = &per_object {
            if !self.objects.contains_key(&object) {
                if self.objects.len() >= self.limits.cache_max {
                    evict_oldest(&mut self.objects, |b| b.at);
                }
                self.objects.insert(object, Bucket::full(l, now));
            }
            let b = self.objects.get_mut(&object)?;
            b.refill(l, now);
            if b.tokens < 1.0 {
                return Some("object");
            }
        }
        if let Some(l) = &normal {
            let b = self.normal.get_or_insert_with(|| Bucket::full(l, now));
            b.refill(l, now);
            if b.tokens < 1.0 {
                return Some("normal");
            }
            b.tokens -= 1.0;
        }
        if per_object.is_some()
            && let Some(b) = self.objects.get_mut(&object)
        {
            b.tokens -= 1.0;
        }
        None
    }

    /// The Event of `key` was created as `namespace`/`name`.
    fn created(&mut self, key: u64, namespace: String, name: String) {
        if let Some(r) = self.series.get_mut(&key) {
            r.namespace = namespace;
            r.name = Some(name);
            r.inflight = false;
        }
    }

    /// A write of `key` failed: a failed create is forgotten (the next occurrence tries again), a
    /// failed series write stays pending.
    fn failed(&mut self, key: u64) {
        if let Some(r) = self.series.get_mut(&key) {
            if r.name.is_none() {
                self.series.remove(&key);
            } else {
                r.inflight = false;
            }
        }
    }

    /// The series of `key` was written up to `count` at `now`.
    fn wrote(&mut self, key: u64, count: i32, now: Timestamp) {
        if let Some(r) = self.series.get_mut(&key) {
            r.written = r.written.max(count);
            r.wrote = now;
            r.inflight = false;
        }
    }

    /// The Event of `key` is gone on the server (its TTL): forget it.
    fn gone(&mut self, key: u64) {
        self.series.remove(&key);
    }

    /// Series with counts not yet written that are due at `now` (ended, or written longer than
    /// `series_refresh` ago; with `all`, every one), marked in flight.
    fn due(&mut self, now: Timestamp, all: bool) -> Vec<Write> {
        let refresh = self.refresh();
        let mut out = Vec::new();
        for (key, r) in &mut self.series {
            let Some(name) = &r.name else { continue };
            if r.inflight || r.count <= r.written {
                continue;
            }
            if all || r.last + CACHE_TTL <= now || r.wrote + refresh <= now {
                r.inflight = true;
                out.push(Write {
                    key: *key,
                    namespace: r.namespace.clone(),
                    name: name.clone(),
                    count: r.count,
                    last: r.last,
                });
            }
        }
        out
    }

    /// Pending counts that will not be written (this replica stopped leading): forgotten.
    fn abandon(&mut self, key: u64) {
        if let Some(r) = self.series.get_mut(&key) {
            r.written = r.count;
            r.inflight = false;
        }
    }

    /// Forgets ended series with nothing left to write and full buckets (at most every 10 s).
    fn sweep(&mut self, now: Timestamp) {
        if self.swept.is_some_and(|t| t + SWEEP_EVERY > now) {
            return;
        }
        self.swept = Some(now);
        self.series.retain(|_, r| {
            r.last + CACHE_TTL > now || (r.name.is_some() && (r.inflight || r.count > r.written))
        });
        if let Some(l) = self.limits.per_object {
            self.objects.retain(|_, b| {
                let mut b = b.clone();
                b.refill(&l, now);
                b.tokens < f64::from(l.burst)
            });
        }
    }

    /// Room for one more series: past `cache_max`, the least recently seen tenth goes.
    fn make_room(&mut self, now: Timestamp) {
        if self.series.len() >= self.limits.cache_max {
            self.swept = None;
            self.sweep(now);
        }
        if self.series.len() >= self.limits.cache_max {
            evict_oldest(&mut self.series, |r| r.last);
        }
    }
}

/// Removes the least recent tenth (at least one) of `map`, by `at`.
fn evict_oldest<V>(map: &mut HashMap<u64, V>, at: impl Fn(&V) -> Timestamp) {
    let mut times: Vec<Timestamp> = map.values().map(&at).collect();
    if times.is_empty() {
        return;
    }
    let n = (times.len() / 10).max(1);
    let (_, cutoff, _) = times.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    let mut left = n;
    map.retain(|_, v| {
        if left > 0 && at(v) <= cutoff {
            left -= 1;
            false
        } else {
            true
        }
    });
}

/// Publishes Events as one controller instance. Clones share the caches and limits.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    reporter: Reporter,
    leadership: Leadership,
    state: Mutex<Correlator>,
    flusher: AtomicBool,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("identity", &self.inner.leadership.identity())
            .finish()
    }
}

impl Events {
    /// A publisher reporting as `controller` (e.g. `lb.ferrite.dev/controller`), instance = identity,
    /// with the default [`EventLimits`] and no metrics ([`crate::App::events`] adds them).
    pub fn new(client: Client, controller: &str, leadership: Leadership) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance: Some(leadership.identity().to_string()),
        };
        Self {
            inner: Arc::new(Inner {
                client,
                reporter,
                leadership,
                state: Mutex::new(Correlator::new(EventLimits::default())),
                flusher: AtomicBool::new(false),
            }),
        }
    }

    /// The same publisher with `limits` (for it and every clone); refused when invalid.
    pub fn with_limits(self, limits: EventLimits) -> crate::Result<Self> {
        limits.validate().map_err(crate::Error::Setup)?;
        {
            let mut st = self.inner.lock();
            st.limits = limits;
            st.normal = None;
            st.objects.clear();
        }
        Ok(self)
    }

    /// The same publisher counting what it suppresses in `metrics`.
    pub fn with_metrics(self, metrics: EventMetrics) -> Self {
        self.inner.lock().metrics = Some(metrics);
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> EventLimits {
        self.inner.lock().limits.clone()
    }

    /// A Normal Event.
    pub async fn normal(&self, on: &ObjectReference, reason: &str, action: &str, note: impl Into<String>) {
        self.publish(on, EventType::Normal, reason, action, note.into())
            .await
    }

    /// A Warning Event.
    pub async fn warning(&self, on: &ObjectReference, reason: &str, action: &str, note: impl Into<String>) {
        self.publish(on, EventType::Warning, reason, action, note.into())
            .await
    }

    /// Writes every series count not written yet now (before exiting; tests).
    pub async fn flush(&self) {
        self.inner.flush(true).await
    }

    async fn publish(
        &self,
        on: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let inner = &self.inner;
        if !inner.leadership.is_leader() {
            return;
        }
        // The API limits an Event note to 1 KiB.
        let note = truncate(note, 1024);
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        let key = inner.key(&ev, on);
        let now = Timestamp::now();
        let step = inner
            .lock()
            .observe(key, object_key(&inner.reporter, on), type_, reason, now);
        match step {
            Step::Suppress(limit) => {
                tracing::debug!(reason, object = ?on.name, limit, "Event suppressed by a limit");
            }
            Step::Fold => self.start_flusher(),
            Step::Series(w) => {
                if !inner.write_series(&w).await {
                    self.start_flusher();
                }
            }
            Step::Create => {
                // Bounded by the leader fence like every write (an Event of an old term never lands late).
                let res = inner
                    .leadership
                    .bounded(async { Ok(inner.create(&ev, on, now).await?) })
                    .await;
                match res {
                    Ok((namespace, name)) => inner.lock().created(key, namespace, name),
                    Err(e) => {
                        inner.lock().failed(key);
                        tracing::warn!(reason, object = ?on.name, error = %e, "could not publish Event");
                    }
                }
            }
        }
    }

    /// Starts the background flush of pending series counts (once; it ends with the last clone).
    fn start_flusher(&self) {
        if self.inner.flusher.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.inner.flusher.store(false, Ordering::SeqCst);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(FLUSH_TICK).await;
                let Some(inner) = weak.upgrade() else { break };
                inner.flush(false).await;
            }
        });
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Correlator> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// client-go's key, without the regarding object's resourceVersion (a Service's every write
    /// changes it; it is the same failure): type, action, reason, note, reporter, regarding and related.
    fn key(&self, ev: &Event, on: &ObjectReference) -> u64 {
        let mut h = DefaultHasher::new();
        (
            matches!(ev.type_, EventType::Warning),
            &ev.action,
            &ev.reason,
            &ev.note,
            &self.reporter.controller,
            &self.reporter.instance,
        )
            .hash(&mut h);
        hash_ref(on, &mut h);
        if let Some(r) = &ev.secondary {
            hash_ref(r, &mut h);
        }
        h.finish()
    }

    fn event(&self, ev: &Event, on: &ObjectReference, now: Timestamp) -> K8sEvent {
        K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(on.clone()),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: on.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    on.name.as_ref().unwrap_or(&self.reporter.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            related: ev.secondary.clone(),
            ..Default::default()
        }
    }

    /// Creates the Event; its (namespace, name).
    async fn create(
        &self,
        ev: &Event,
        on: &ObjectReference,
        now: Timestamp,
    ) -> Result<(String, String), kube::Error> {
        match self.create_once(ev, on, now).await {
            // Kubernetes 1.20 validates events.k8s.io/v1 strictly: the regarding object's namespace must
            // equal the Event's, which for a cluster-scoped object ("" vs "default") cannot hold. Name the
            // Event's namespace in the reference there; newer servers accept the first form.
            Err(kube::Error::Api(s)) if s.code == 422 && on.namespace.is_none() => {
                let mut on = on.clone();
                on.namespace = Some("default".into());
                self.create_once(ev, &on, now).await
            }
            other => other,
        }
    }

    async fn create_once(
        &self,
        ev: &Event,
        on: &ObjectReference,
        now: Timestamp,
    ) -> Result<(String, String), kube::Error> {
        let event = self.event(ev, on, now);
        let namespace = on.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
        Ok((namespace, name))
    }

    /// Writes a series count (within the leader fence); false when it failed and is still pending.
    async fn write_series(&self, w: &Write) -> bool {
        if !self.leadership.is_leader() {
            self.lock().abandon(w.key);
            return true;
        }
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &w.namespace);
        let patch = serde_json::json!({
            "series": EventSeries { count: w.count, last_observed_time: MicroTime(w.last) }
        });
        let res = self
            .leadership
            .bounded(async {
                Ok(api
                    .patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?)
            })
            .await;
        match res {
            Ok(_) => {
                self.lock().wrote(w.key, w.count, Timestamp::now());
                true
            }
            // The Event is gone (the server's Event TTL, or deleted): the next occurrence is a new one.
            Err(crate::Error::Kube(kube::Error::Api(e))) if e.code == 404 => {
                self.lock().gone(w.key);
                true
            }
            Err(e) => {
                self.lock().failed(w.key);
                tracing::warn!(event = %w.name, error = %e, "could not update an Event's series");
                false
            }
        }
    }

    /// Writes the due (or, with `all`, every) pending series count, one at a time.
    async fn flush(&self, all: bool) {
        let due = self.lock().due(Timestamp::now(), all);
        for w in due {
            self.write_series(&w).await;
        }
    }
}

fn hash_ref(o: &ObjectReference, h: &mut DefaultHasher) {
    (
        &o.api_version,
        &o.kind,
        &o.namespace,
        &o.name,
        &o.uid,
        &o.field_path,
    )
        .hash(h);
}

/// The spam filter's key: the reporter and the regarding object (client-go: source + involved object).
fn object_key(reporter: &Reporter, on: &ObjectReference) -> u64 {
    let mut h = DefaultHasher::new();
    (&reporter.controller, &reporter.instance).hash(&mut h);
    hash_ref(on, &mut h);
    h.finish()
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("t")
    }

    fn secs(s: i64) -> SignedDuration {
        SignedDuration::from_secs(s)
    }

    /// Drives a correlator as the publisher does, every write succeeding at once; counts API writes.
    struct Sim {
        c: Correlator,
        creates: usize,
        series: Vec<i32>,
    }

    impl Sim {
        fn new(limits: EventLimits) -> Self {
            Self {
                c: Correlator::new(limits),
                creates: 0,
                series: vec![],
            }
        }

        fn occur(&mut self, key: u64, object: u64, type_: EventType, now: Timestamp) -> Step {
            let step = self.c.observe(key, object, type_, "R", now);
            match &step {
                Step::Create => {
                    self.creates += 1;
                    self.c.created(key, "ns".into(), format!("e{key}"));
                }
                Step::Series(w) => {
                    self.series.push(w.count);
                    self.c.wrote(w.key, w.count, now);
                }
                Step::Fold | Step::Suppress(_) => {}
            }
            step
        }

        fn flush(&mut self, now: Timestamp) {
            for w in self.c.due(now, false) {
                self.series.push(w.count);
                self.c.wrote(w.key, w.count, now);
            }
        }
    }

    fn unlimited() -> EventLimits {
        EventLimits {
            per_object: None,
            normal: None,
            ..Default::default()
        }
    }

    /// ferrite-lb's `IPAllocated` budget (kit default): 100 in a row, then 5/s; tokens never exceed
    /// 100; Warnings never count against it; the surplus is counted by reason.
    #[test]
    fn the_normal_budget_allows_a_burst_then_a_rate_and_never_refuses_warnings() {
        let mut s = Sim::new(EventLimits {
            per_object: None,
            ..Default::default()
        });
        let metrics = EventMetrics::new().expect("metrics");
        s.c.metrics = Some(metrics.clone());
        let mut key = 0u64;
        let mut burst = |s: &mut Sim, now: Timestamp, n: usize| {
            (0..n)
                .filter(|_| {
                    key += 1;
                    s.occur(key, key, EventType::Normal, now) == Step::Create
                })
                .count()
        };
        assert_eq!(burst(&mut s, t0(), 1000), 100);
        assert_eq!(metrics.suppressed("R", "normal"), 900);
        assert_eq!(
            s.occur(99_999, 99_999, EventType::Warning, t0()),
            Step::Create,
            "a Warning is never refused by the budget"
        );
        assert_eq!(burst(&mut s, t0() + secs(1), 100), 5, "one second later: 5 more");
        assert_eq!(
            burst(&mut s, t0() + secs(3601), 1000),
            100,
            "refilled to 100, not beyond"
        );
        assert_eq!(metrics.suppressed("R", "object"), 0);
    }

    /// client-go's spam filter: 25 new Events about one object, then one per 5 minutes, of any type;
    /// other objects are not affected; repeats of a known Event cost no token.
    #[test]
    fn the_per_object_filter_is_25_then_one_per_5_minutes() {
        let mut s = Sim::new(EventLimits {
            normal: None,
            ..Default::default()
        });
        let created = (0..40u64)
            .filter(|k| s.occur(*k, 7, EventType::Warning, t0()) == Step::Create)
            .count();
        assert_eq!(created, 25);
        assert_eq!(s.occur(100, 7, EventType::Normal, t0()), Step::Suppress("object"));
        assert_eq!(
            s.occur(100, 8, EventType::Normal, t0()),
            Step::Create,
            "another object"
        );
        // A repeat of one of the 25 is folded, not refused.
        assert!(matches!(
            s.occur(0, 7, EventType::Warning, t0() + secs(1)),
            Step::Series(_)
        ));
        assert_eq!(
            s.occur(101, 7, EventType::Warning, t0() + secs(299)),
            Step::Suppress("object")
        );
        assert_eq!(
            s.occur(101, 7, EventType::Warning, t0() + secs(301)),
            Step::Create
        );
        assert_eq!(
            s.occur(102, 7, EventType::Warning, t0() + secs(302)),
            Step::Suppress("object")
        );
    }

    /// "One Warning per distinct failure": an identical repeat is the first Event's series, written at
    /// counts 2, 4, 8, ... (not once per repeat); the final count is written when the series ends.
    #[test]
    fn an_identical_repeat_costs_no_write_per_repeat_and_the_final_count_lands() {
        let mut s = Sim::new(EventLimits::default());
        let mut now = t0();
        for _ in 0..1000 {
            s.occur(1, 1, EventType::Warning, now);
            now += SignedDuration::from_millis(100);
        }
        assert_eq!(s.creates, 1);
        assert_eq!(s.series, vec![2, 4, 8, 16, 32, 64, 128, 256, 512]);
        // Nothing pending is written before the series ends or is due for a refresh...
        s.flush(now + secs(60));
        assert_eq!(s.series.len(), 9);
        // ... and 6 minutes after the last repeat, its count is.
        s.flush(now + secs(361));
        assert_eq!(s.series.last(), Some(&1000));
        // Then it is forgotten: the same again later is a new Event.
        let later = now + secs(400);
        assert_eq!(s.occur(1, 1, EventType::Warning, later), Step::Create);
    }

    /// Another note (another failure), reason, type or object is another Event; the same failure of a
    /// Service whose resourceVersion changed in between is the same one.
    #[tokio::test]
    async fn keys_tell_distinct_failures_apart_but_not_resource_versions() {
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let events = Events::new(
            Client::try_from(cfg).expect("client"),
            "c",
            Leadership::always("i"),
        );
        let inner = &events.inner;
        let ev = |type_, reason: &str, note: &str| Event {
            type_,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Allocate".into(),
            secondary: None,
        };
        let on = |name: &str, rv: &str| ObjectReference {
            kind: Some("Service".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some(rv.into()),
            ..Default::default()
        };
        let w = |note| ev(EventType::Warning, "AllocationFailed", note);
        let k = inner.key(&w("no pool"), &on("a", "1"));
        assert_eq!(
            k,
            inner.key(&w("no pool"), &on("a", "2")),
            "resourceVersion is not part of it"
        );
        for other in [
            inner.key(&w("pool p is full"), &on("a", "1")),
            inner.key(
                &ev(EventType::Warning, "SharingConflict", "no pool"),
                &on("a", "1"),
            ),
            inner.key(
                &ev(EventType::Normal, "AllocationFailed", "no pool"),
                &on("a", "1"),
            ),
            inner.key(&w("no pool"), &on("b", "1")),
        ] {
            assert_ne!(k, other);
        }
        let mut recreated = on("a", "1");
        recreated.uid = Some("another".into());
        assert_ne!(
            k,
            inner.key(&w("no pool"), &recreated),
            "a recreated object is another"
        );
        assert_eq!(
            object_key(&inner.reporter, &on("a", "1")),
            object_key(&inner.reporter, &on("a", "9"))
        );
        let e = inner.event(&w("no pool"), &on("a", "1"), t0());
        assert_eq!(e.reporting_instance.as_deref(), Some("i"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert!(e.series.is_none());
        assert!(e.metadata.name.as_deref().is_some_and(|n| n.starts_with("a.")));
    }

    /// A Warning said on every reconcile (ferrite-lb's `DeprecatedAnnotation`: every write to the
    /// Service and every 5-minute resync) for a day is one Event and a few series writes, not 300.
    #[test]
    fn a_warning_said_on_every_reconcile_is_one_event() {
        let mut s = Sim::new(EventLimits::default());
        let mut now = t0();
        let mut reconciles = 0;
        while now < t0() + SignedDuration::from_hours(24) {
            // Two quick reconciles (our own status write), then the resync.
            for _ in 0..2 {
                s.occur(1, 1, EventType::Warning, now);
                reconciles += 1;
            }
            now += secs(300);
            s.flush(now);
        }
        assert_eq!(s.creates, 1);
        let writes = s.series.len();
        assert!(writes <= 60, "{writes} series writes for {reconciles} reconciles");
        // While it goes on it is written at least every series_refresh (the Event outlives the
        // server's 1 h TTL).
        assert!(s.series.windows(2).all(|w| w[0] < w[1]));
        assert!(writes >= 24 * 2, "{writes}");
    }

    /// Two occurrences while the first is still being created: one Event, the repeat written later;
    /// a failed create is forgotten (the next occurrence tries again).
    #[test]
    fn repeats_during_a_create_are_not_a_second_event_and_a_failed_create_is_retried() {
        let mut c = Correlator::new(unlimited());
        assert_eq!(c.observe(1, 1, EventType::Normal, "R", t0()), Step::Create);
        assert_eq!(c.observe(1, 1, EventType::Normal, "R", t0()), Step::Fold);
        c.created(1, "ns".into(), "e".into());
        let due = c.due(t0() + secs(361), false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].count, 2);
        assert!(c.due(t0() + secs(361), true).is_empty(), "in flight: not twice");
        c.wrote(1, 2, t0() + secs(361));
        assert_eq!(c.observe(2, 2, EventType::Normal, "R", t0()), Step::Create);
        c.failed(2);
        assert_eq!(c.observe(2, 2, EventType::Normal, "R", t0()), Step::Create);
        // A series write that failed stays pending; `flush` (all) writes it.
        assert!(matches!(
            c.observe(1, 1, EventType::Normal, "R", t0() + secs(362)),
            Step::Create
        ));
        c.created(1, "ns".into(), "e2".into());
        let Step::Series(w) = c.observe(1, 1, EventType::Normal, "R", t0() + secs(363)) else {
            panic!("count 2 is written at once")
        };
        c.failed(w.key);
        assert_eq!(c.due(t0() + secs(364), true).first().map(|w| w.count), Some(2));
        // The Event gone on the server: forgotten.
        c.gone(1);
        assert_eq!(
            c.observe(1, 1, EventType::Normal, "R", t0() + secs(365)),
            Step::Create
        );
    }

    #[test]
    fn the_caches_forget_ended_series_and_stay_bounded_dropping_the_least_recent() {
        let mut c = Correlator::new(EventLimits {
            cache_max: 100,
            ..unlimited()
        });
        c.observe(1, 1, EventType::Normal, "R", t0());
        c.created(1, "ns".into(), "e".into());
        c.observe(2, 2, EventType::Normal, "R", t0() + secs(300));
        c.created(2, "ns".into(), "e".into());
        c.observe(3, 3, EventType::Normal, "R", t0() + secs(300));
        c.created(3, "ns".into(), "e".into());
        c.observe(3, 3, EventType::Normal, "R", t0() + secs(300));
        c.observe(3, 3, EventType::Normal, "R", t0() + secs(300));
        c.sweep(t0() + secs(700));
        assert!(
            !c.series.contains_key(&1),
            "ended with nothing to write: forgotten"
        );
        assert!(!c.series.contains_key(&2));
        assert!(
            c.series.contains_key(&3),
            "ended with a count to write: kept for the flush"
        );
        let t1 = t0() + secs(800);
        for k in 10..300u64 {
            let at = t1 + SignedDuration::from_millis(k as i64);
            c.observe(k, k, EventType::Normal, "R", at);
            c.created(k, "ns".into(), "e".into());
            assert!(c.series.len() <= 100);
        }
        assert!(!c.series.contains_key(&10), "least recent first");
        assert!(c.series.contains_key(&299));
        // Per-object buckets are bounded too, and full ones are forgotten.
        let mut c = Correlator::new(EventLimits {
            cache_max: 50,
            normal: None,
            ..Default::default()
        });
        for k in 0..200u64 {
            c.observe(k, k, EventType::Normal, "R", t0());
            assert!(c.objects.len() <= 50);
        }
        c.sweep(t0() + SignedDuration::from_hours(3));
        assert!(c.objects.is_empty(), "refilled buckets are forgotten");
    }

    #[tokio::test]
    async fn limits_are_validated() {
        assert_eq!(EventLimits::default().validate(), Ok(()));
        let bad = [
            EventLimits {
                normal: Some(RateLimit::per_second(0, 5.0)),
                ..Default::default()
            },
            EventLimits {
                series_refresh: Duration::ZERO,
                ..Default::default()
            },
            EventLimits {
                cache_max: 0,
                ..Default::default()
            },
        ];
        for l in bad {
            assert!(l.validate().is_err(), "{l:?}");
        }
        assert_eq!(RateLimit::per_second(1, 5.0).every, Duration::from_millis(200));
        assert_eq!(RateLimit::per_second(1, 0.0).every, Duration::MAX);
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let events = Events::new(
            Client::try_from(cfg).expect("client"),
            "c",
            Leadership::always("i"),
        );
        let limits = EventLimits {
            normal: Some(RateLimit::per_second(10, 1.0)),
            ..Default::default()
        };
        let events = events.with_limits(limits.clone()).expect("valid");
        assert_eq!(events.limits(), limits);
        assert!(
            events
                .with_limits(EventLimits {
                    cache_max: 0,
                    ..Default::default()
                })
                .is_err()
        );
    }

    #[test]
    fn the_metric_registers_once_per_registry() {
        let r = Registry::new();
        let m = EventMetrics::register(&r).expect("registers");
        m.suppressed.with_label_values(&["IPAllocated", "normal"]).inc();
        let names: Vec<String> = r.gather().iter().map(|f| f.name().to_string()).collect();
        assert_eq!(names, vec!["ferrite_events_suppressed_total".to_string()]);
        assert!(EventMetrics::register(&r).is_err());
    }

    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = super::truncate(s, 1024);
        assert!(t.len() <= 1024);
        assert!(t.ends_with("..."));
        assert_eq!(super::truncate("short".into(), 1024), "short");
    }
}
