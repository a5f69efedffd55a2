//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Every replica runs the watches and keeps its caches warm; only the holder of the lease writes. The rules
//! follow client-go's leader election, with one addition that matters for correctness:
//!
//! - A candidate takes the lease when it is free (no holder) or when the record has not changed for a
//!   whole `leaseDuration` *as measured on the candidate's own clock* (no clock-skew assumptions).
//! - The holder renews every `retryPeriod`. [`Leadership::is_leader`] is a local fence: it turns false
//!   `renewDeadline` after the start of the last successful renewal, even when the API server cannot be
//!   reached to say so. A partitioned leader therefore stops writing before anyone else may take over
//!   (`renewDeadline < leaseDuration`). This is why the kit does not use kube-lease-manager: its watch
//!   channel does not report a renewal that failed, so a partitioned holder would keep writing.
//! - On shutdown the holder releases the lease (empty holder) so a follower takes over at its next try.
//!
//! ```text
//!   GET lease ──404──> create(holder=me) ───────────────┐
//!       │                                               v
//!       ├─ holder == me ───────────> renew (update) ──> fence = start + renewDeadline
//!       ├─ free or expired ────────> acquire (update, transitions+1)
//!       └─ held by another ────────> wait retryPeriod
//! ```

use crate::{Error, Result};
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Timings and names of an election.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity.
    pub identity: String,
    /// Validity of the lease without renewal.
    pub lease_duration: Duration,
    /// The holder stops writing when it could not renew for this long.
    pub renew_deadline: Duration,
    /// Interval between tries and renewals.
    pub retry_period: Duration,
}

/// This replica's view of the election. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Leadership {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    identity: String,
    /// None: leader election is off and this process always writes.
    fence: Option<Mutex<Option<Instant>>>,
    tx: watch::Sender<bool>,
}

impl Leadership {
    /// Leadership for a process that does not elect (single replica or `--leader-elect=false`).
    pub fn always(identity: impl Into<String>) -> Self {
        let (tx, _) = watch::channel(true);
        Self {
            inner: Arc::new(Inner {
                identity: identity.into(),
                fence: None,
                tx,
            }),
        }
    }

    fn elected(identity: String) -> Self {
        let (tx, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                identity,
                fence: Some(Mutex::new(None)),
                tx,
            }),
        }
    }

    /// True while this replica may write. Checked before every write.
    pub fn is_leader(&self) -> bool {
        let leader = self.fence_holds();
        if !leader && *self.inner.tx.borrow() {
            // The fence ran out between two tries of the election loop: tell subscribers now, so that
            // the next successful renewal is a visible change (and reconciles skipped meanwhile run).
            self.publish();
        }
        leader
    }

    fn fence_holds(&self) -> bool {
        match &self.inner.fence {
            None => true,
            Some(f) => f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|until| Instant::now() < until),
        }
    }

    /// `Ok(())` while this replica may write, else [`Error::NotLeader`].
    pub fn ensure(&self) -> Result<()> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    }

    /// A channel that changes when leadership is gained or lost.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.tx.subscribe()
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    fn set_fence(&self, until: Option<Instant>) {
        if let Some(f) = &self.inner.fence {
            *f.lock().unwrap_or_else(|p| p.into_inner()) = until;
        }
        self.publish();
    }

    /// Sends the current state to subscribers when it changed.
    fn publish(&self) {
        let now = self.fence_holds();
        self.inner.tx.send_if_modified(|v| {
            let changed = *v != now;
            *v = now;
            changed
        });
    }
}

/// What a candidate does with the lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// We hold it: renew.
    Renew,
    /// It is free or expired: take it.
    Acquire,
    /// Someone else holds it and it is fresh: wait.
    Wait,
}

/// Decides what to do with a lease record. `expired` is judged on our own clock by [`Observed`].
pub(crate) fn decide(spec: Option<&LeaseSpec>, me: &str, expired: bool) -> Step {
    match spec
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
    {
        Some(h) if h == me => Step::Renew,
        None => Step::Acquire,
        Some(_) if expired => Step::Acquire,
        Some(_) => Step::Wait,
    }
}

/// The last lease record we saw and when (our clock): a record unchanged for `leaseDuration` is expired.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    record: Option<(Option<String>, Option<MicroTime>, Option<i32>)>,
    at: Option<Instant>,
}

impl Observed {
    /// Notes `spec` seen at `now`; returns whether the record is expired.
    pub(crate) fn observe(&mut self, spec: Option<&LeaseSpec>, now: Instant) -> bool {
        let record = spec.map(|s| {
            (
                s.holder_identity.clone(),
                s.renew_time.clone(),
                s.lease_transitions,
            )
        });
        if self.record != record || self.at.is_none() {
            self.record = record;
            self.at = Some(now);
        }
        let duration = spec.and_then(|s| s.lease_duration_seconds).unwrap_or(15).max(1) as u64;
        self.at
            .is_some_and(|at| now.duration_since(at) >= Duration::from_secs(duration))
    }
}

/// Starts the election in the background. Returns the leadership handle and the task, which ends after
/// `shutdown` is cancelled and the lease is released.
pub fn start(
    client: Client,
    config: LeaseConfig,
    shutdown: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let leadership = Leadership::elected(config.identity.clone());
    let handle = leadership.clone();
    let task = tokio::spawn(async move {
        let api: Api<Lease> = Api::namespaced(client, &config.namespace);
        let mut observed = Observed::default();
        loop {
            let started = Instant::now();
            // A renewal that hangs must not outlive the fence: give up at the renew deadline.
            let attempt = tokio::time::timeout(
                config.renew_deadline,
                try_acquire_or_renew(&api, &config, &mut observed),
            );
            let result = match attempt.await {
                Ok(r) => r,
                Err(_) => Err(Error::Setup(format!(
                    "no answer within {:?}",
                    config.renew_deadline
                ))),
            };
            match result {
                Ok(true) => {
                    if !handle.is_leader() {
                        tracing::info!(lease = %config.name, identity = %config.identity, "became leader");
                    }
                    handle.set_fence(Some(started + config.renew_deadline));
                }
                Ok(false) => {
                    if handle.is_leader() {
                        tracing::warn!(lease = %config.name, "lost the lease to another replica; writes stopped");
                    }
                    handle.set_fence(None);
                }
                Err(e) => {
                    tracing::warn!(lease = %config.name, error = %e, "could not read or renew the lease");
                    handle.publish();
                }
            }
            // Wake at the fence too, so subscribers learn of an expiry while the API is unreachable.
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(config.retry_period) => {}
            }
        }
        let was_leader = handle.is_leader();
        handle.set_fence(None);
        if was_leader {
            match release(&api, &config).await {
                Ok(()) => tracing::info!(lease = %config.name, "released the lease"),
                Err(e) => tracing::warn!(lease = %config.name, error = %e, "could not release the lease"),
            }
        }
    });
    (leadership, task)
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
) -> Result<bool> {
    let duration_secs = config.lease_duration.as_secs().max(1) as i32;
    let existing = match api.get_opt(&config.name).await? {
        Some(l) => l,
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(config.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(config.identity.clone()),
                    lease_duration_seconds: Some(duration_secs),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(e.into()),
            };
        }
    };
    let expired = observed.observe(existing.spec.as_ref(), Instant::now());
    let step = decide(existing.spec.as_ref(), &config.identity, expired);
    let mut lease = existing;
    let spec = lease.spec.get_or_insert_with(Default::default);
    match step {
        Step::Wait => return Ok(false),
        Step::Renew => {
            spec.renew_time = Some(now_micro());
            spec.lease_duration_seconds = Some(duration_secs);
        }
        Step::Acquire => {
            spec.holder_identity = Some(config.identity.clone());
            spec.lease_duration_seconds = Some(duration_secs);
            spec.acquire_time = Some(now_micro());
            spec.renew_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
    }
    // Replace carries resourceVersion: if anyone wrote in between, the API answers 409 and we lost the race.
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(l) => {
            observed.observe(l.spec.as_ref(), Instant::now());
            Ok(true)
        }
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<()> {
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        return Ok(());
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.lease_duration_seconds = Some(1);
    spec.renew_time = Some(now_micro());
    api.replace(&config.name, &PostParams::default(), &lease).await?;
    Ok(())
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew_secs: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            lease_duration_seconds: Some(10),
            renew_time: Some(MicroTime(Timestamp::from_second(renew_secs).expect("valid"))),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let cases = [
            ("no lease record", None, false, Step::Acquire),
            ("held by me", Some(spec(Some("me"), 1)), false, Step::Renew),
            (
                "held by me, looks expired: still renew",
                Some(spec(Some("me"), 1)),
                true,
                Step::Renew,
            ),
            ("released (no holder)", Some(spec(None, 1)), false, Step::Acquire),
            (
                "released (empty holder)",
                Some(spec(Some(""), 1)),
                false,
                Step::Acquire,
            ),
            (
                "held by other, fresh",
                Some(spec(Some("other"), 1)),
                false,
                Step::Wait,
            ),
            (
                "held by other, expired",
                Some(spec(Some("other"), 1)),
                true,
                Step::Acquire,
            ),
        ];
        for (name, s, expired, want) in cases {
            assert_eq!(decide(s.as_ref(), "me", expired), want, "{name}");
        }
    }

    #[test]
    fn expiry_is_measured_on_our_clock_from_the_last_change() {
        let t0 = Instant::now();
        let mut o = Observed::default();
        let s1 = spec(Some("other"), 100);
        assert!(!o.observe(Some(&s1), t0));
        assert!(!o.observe(Some(&s1), t0 + Duration::from_secs(9)));
        // The holder renews: the clock restarts even though the renew time is far in the past.
        let s2 = spec(Some("other"), 101);
        assert!(!o.observe(Some(&s2), t0 + Duration::from_secs(9)));
        assert!(!o.observe(Some(&s2), t0 + Duration::from_secs(18)));
        assert!(o.observe(Some(&s2), t0 + Duration::from_secs(19)));
    }

    #[test]
    fn fence_expires_without_any_call() {
        let l = Leadership::elected("me".into());
        assert!(!l.is_leader());
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)));
        assert!(l.is_leader());
        assert!(*l.subscribe().borrow());
        // The fence runs out with no call to the election loop in between.
        l.set_fence(Some(Instant::now() + Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(40));
        let mut rx = l.subscribe();
        rx.borrow_and_update();
        assert!(!l.is_leader(), "a fence in the past means no writes");
        assert!(l.ensure().is_err());
        assert!(
            rx.has_changed().unwrap_or(false) && !*rx.borrow_and_update(),
            "subscribers learn of the expiry"
        );
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)));
        assert!(
            rx.has_changed().unwrap_or(false) && *rx.borrow_and_update(),
            "and of the renewal after it"
        );
        assert!(Leadership::always("x").is_leader());
    }
}
