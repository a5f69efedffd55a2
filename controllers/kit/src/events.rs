//! Kubernetes Events (events.k8s.io/v1) for the objects a controller acts on.
//!
//! Publishing is best effort: a failed Event is logged and never fails a reconcile. Only a writer (the
//! leader, or a process that does not elect) publishes.

use crate::leader::Leadership;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Publishes Events as one controller instance.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
    leadership: Leadership,
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
    #[test]
    fn notes_are_cut_on_a_char_boundary() {
        let s = "é".repeat(600);
        let t = super::truncate(s, 1024);
        assert!(t.len() <= 1024);
        assert!(t.ends_with("..."));
        assert_eq!(super::truncate("short".into(), 1024), "short");
    }
}
