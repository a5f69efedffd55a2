//! Kubernetes Events (events.k8s.io/v1) for the objects a controller acts on.
//!
//! Publishing is best effort: a failed Event is logged and never fails a reconcile. Only a writer (the
//! leader, or a process that does not elect) publishes.
//!
//! The same Event repeated (same type, reason, action, reporter and regarding object, as
//! kube-runtime's `Recorder` keys it) within 6 minutes of its last occurrence is not a new Event: the
//! first one gets a `series` (count, lastObservedTime), like client-go's and kube-runtime's recorders.
//! Unlike kube-runtime's `Recorder`, which keeps a full copy of every Event it published for 6 minutes
//! (unbounded: one per object at a burst of thousands of objects), this keeps only the Event's name and
//! count per key, at most [`CACHE_MAX`] keys; past that the least recently seen are forgotten first
//! (their next repeat is a new Event, which is what the API server's own Event TTL does anyway).

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
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// How long after its last occurrence an Event is still repeated rather than published anew.
pub const CACHE_TTL: SignedDuration = SignedDuration::from_mins(6);
/// At most this many recent Events are remembered for aggregation.
pub const CACHE_MAX: usize = 4096;

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    leadership: Leadership,
}

/// What is remembered of a published Event: enough to add to its series.
#[derive(Debug, Clone)]
struct Recent {
    namespace: String,
    name: String,
    count: i32,
    last: Timestamp,
}

#[derive(Debug, Default)]
struct Cache {
    map: HashMap<String, Recent>,
    swept: Option<Timestamp>,
}

impl Cache {
    /// Forgets Events past the TTL (at most every 10 s), then the least recently seen ones until
    /// there is room for one more.
    fn make_room(&mut self, now: Timestamp) {
        let due = self
            .swept
            .is_none_or(|t| t + SignedDuration::from_secs(10) <= now);
        if due || self.map.len() >= CACHE_MAX {
            self.map.retain(|_, r| r.last + CACHE_TTL > now);
            self.swept = Some(now);
        }
        while self.map.len() >= CACHE_MAX {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.map.remove(&oldest);
        }
    }
}

/// A bounded Event recorder (see the module docs).
#[derive(Clone)]
struct Recorder {
    client: Client,
    reporter: Reporter,
    cache: Arc<Mutex<Cache>>,
}

impl Recorder {
    fn new(client: Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            cache: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// kube-runtime's key: type, action, reason, reporter, the regarding and related objects.
    fn key(&self, ev: &Event, on: &ObjectReference) -> String {
        let r = |o: &ObjectReference| {
            format!(
                "{}\0{}\0{}\0{}\0{}\0{}\0{}",
                o.api_version.as_deref().unwrap_or(""),
                o.kind.as_deref().unwrap_or(""),
                o.namespace.as_deref().unwrap_or(""),
                o.name.as_deref().unwrap_or(""),
                o.uid.as_deref().unwrap_or(""),
                o.resource_version.as_deref().unwrap_or(""),
                o.field_path.as_deref().unwrap_or("")
            )
        };
        format!(
            "{:?}\0{}\0{}\0{}\0{}\0{}\0{}",
            ev.type_,
            ev.action,
            ev.reason,
            self.reporter.controller,
            self.reporter.instance.as_deref().unwrap_or(""),
            r(on),
            ev.secondary.as_ref().map(r).unwrap_or_default()
        )
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

    /// Publishes `ev` about `on`: a new Event, or the next of the series of a recent one.
    async fn publish(&self, ev: &Event, on: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = self.key(ev, on);
        let recent = {
            let mut c = self.lock();
            c.make_room(now);
            c.map.get(&key).filter(|r| r.last + CACHE_TTL > now).cloned()
        };
        if let Some(r) = recent {
            let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &r.namespace);
            let count = r.count.saturating_add(1);
            let patch = serde_json::json!({
                "series": EventSeries { count, last_observed_time: MicroTime(now) }
            });
            match api
                .patch(&r.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.lock().map.insert(
                        key,
                        Recent {
                            count,
                            last: now,
                            ..r
                        },
                    );
                    return Ok(());
                }
                // The Event is gone (its TTL on the server, or deleted): publish a new one.
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        let event = self.event(ev, on, now);
        let namespace = on.namespace.clone().unwrap_or_else(|| "default".into());
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let created = api.create(&PostParams::default(), &event).await?;
        let name = created.metadata.name.or(event.metadata.name).unwrap_or_default();
        let mut c = self.lock();
        c.make_room(now);
        c.map.insert(
            key,
            Recent {
                namespace,
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("identity", &self.leadership.identity())
            .finish()
    }
}

impl Events {
    /// A publisher reporting as `controller` (e.g. `lb.ferrite.dev/controller`), instance = identity.
    pub fn new(client: Client, controller: &str, leadership: Leadership) -> Self {
        let reporter = Reporter {
            controller: controller.to_string(),
            instance: Some(leadership.identity().to_string()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            leadership,
        }
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

    async fn publish(
        &self,
        on: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if !self.leadership.is_leader() {
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
        // Bounded by the leader fence like every write (an Event of an old term never lands late).
        let res = self
            .leadership
            .bounded(async { Ok(self.publish_once(&ev, on).await?) })
            .await;
        if let Err(e) = res {
            tracing::warn!(reason, object = ?on.name, error = %e, "could not publish Event");
        }
    }

    async fn publish_once(&self, ev: &Event, on: &ObjectReference) -> Result<(), kube::Error> {
        match self.recorder.publish(ev, on).await {
            // Kubernetes 1.20 validates events.k8s.io/v1 strictly: the regarding object's namespace must
            // equal the Event's, which for a cluster-scoped object ("" vs "default") cannot hold. Name the
            // Event's namespace in the reference there; newer servers accept the first form.
            Err(kube::Error::Api(s)) if s.code == 422 && on.namespace.is_none() => {
                let mut on = on.clone();
                on.namespace = Some("default".into());
                self.recorder.publish(ev, &on).await
            }
            other => other,
        }
    }
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

    fn recent(last: Timestamp) -> Recent {
        Recent {
            namespace: "ns".into(),
            name: "e".into(),
            count: 1,
            last,
        }
    }

    #[test]
    fn the_cache_forgets_past_the_ttl_and_stays_bounded_dropping_the_least_recent() {
        let t0 = Timestamp::from_second(1_800_000_000).expect("t");
        let mut c = Cache::default();
        c.map.insert("old".into(), recent(t0));
        c.map
            .insert("new".into(), recent(t0 + SignedDuration::from_mins(5)));
        c.make_room(t0 + SignedDuration::from_mins(6));
        assert!(!c.map.contains_key("old"), "6 minutes old: forgotten");
        assert!(c.map.contains_key("new"));
        let t1 = t0 + SignedDuration::from_mins(7);
        for i in 0..CACHE_MAX + 10 {
            c.make_room(t1);
            let at = t1 + SignedDuration::from_millis(i as i64);
            c.map.insert(format!("k{i}"), recent(at));
            assert!(c.map.len() <= CACHE_MAX);
        }
        assert_eq!(c.map.len(), CACHE_MAX);
        assert!(
            !c.map.contains_key("new") && !c.map.contains_key("k0"),
            "least recent first"
        );
        assert!(c.map.contains_key(&format!("k{}", CACHE_MAX + 9)));
    }

    #[tokio::test]
    async fn repeats_share_a_key_and_other_objects_or_reasons_do_not() {
        let cfg = kube::Config::new("http://127.0.0.1:9".parse().expect("url"));
        let client = Client::try_from(cfg).expect("client");
        let r = Recorder::new(
            client,
            Reporter {
                controller: "c".into(),
                instance: Some("i".into()),
            },
        );
        let ev = |reason: &str| Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some("n".into()),
            action: "A".into(),
            secondary: None,
        };
        let on = |name: &str| ObjectReference {
            kind: Some("Certificate".into()),
            namespace: Some("ns".into()),
            name: Some(name.into()),
            ..Default::default()
        };
        let mut other_note = ev("R");
        other_note.note = Some("another note".into());
        assert_eq!(r.key(&ev("R"), &on("a")), r.key(&other_note, &on("a")));
        assert_ne!(r.key(&ev("R"), &on("a")), r.key(&ev("R"), &on("b")));
        assert_ne!(r.key(&ev("R"), &on("a")), r.key(&ev("S"), &on("a")));
        let e = r.event(
            &ev("R"),
            &on("a"),
            Timestamp::from_second(1_800_000_000).expect("t"),
        );
        assert_eq!(e.reporting_instance.as_deref(), Some("i"));
        assert_eq!(e.type_.as_deref(), Some("Normal"));
        assert!(e.series.is_none());
        assert!(e.metadata.name.as_deref().is_some_and(|n| n.starts_with("a.")));
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
