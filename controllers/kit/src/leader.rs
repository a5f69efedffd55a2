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
//! - Leadership comes in *terms*: a term starts when this replica takes the lease (creates it or acquires
//!   it from nobody or from another holder) and lasts through every renewal, including renewals after a
//!   brief fence lapse in which nobody else took the lease. [`Leadership::term`] is read synchronously by
//!   the code that writes, so state built for one term (an allocator rebuilt from a LIST) is never used in
//!   another. Writes go through [`Leadership::bounded`]: a call still in flight when the fence runs out is
//!   abandoned, so no write of this replica can land after another replica may have taken over.
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
    /// None: leader election is off and this process always writes (in term 0).
    fence: Option<Mutex<Fence>>,
    tx: watch::Sender<bool>,
}

/// The local fence: until when this replica may write, and in which term.
#[derive(Debug, Default)]
struct Fence {
    until: Option<Instant>,
    term: Term,
    /// Terms begun by this process so far.
    terms: u64,
}

/// One uninterrupted tenure of the lease by this replica.
///
/// Two terms are equal only if they are the same tenure: `seq` counts the tenures this process began, so
/// a replica that lost the lease and took it back is in a new term even if the lease looks the same.
/// `transitions` is the lease's `leaseTransitions` when the term began (for logs and cross-replica checks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Term {
    /// Tenures begun by this process, 1 for the first; 0 when leader election is off.
    pub seq: u64,
    /// The lease's `leaseTransitions` when this term began.
    pub transitions: i32,
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.seq, self.transitions)
    }
}

/// Bound of a write when leader election is off: an API call that hangs must not hang its caller forever.
pub const UNFENCED_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

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
                fence: Some(Mutex::new(Fence::default())),
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
        self.fenced_term().is_some()
    }

    /// The current term and the end of the fence, while the fence holds. `until` is None without election.
    fn fenced_term(&self) -> Option<(Term, Option<Instant>)> {
        match &self.inner.fence {
            None => Some((Term::default(), None)),
            Some(f) => {
                let f = f.lock().unwrap_or_else(|p| p.into_inner());
                f.until
                    .filter(|until| Instant::now() < *until)
                    .map(|until| (f.term, Some(until)))
            }
        }
    }

    /// The term this replica leads in, or None while it may not write. Read synchronously, at the point
    /// of use: state built for one term must be rebuilt before it is used in another.
    pub fn term(&self) -> Option<Term> {
        let t = self.fenced_term().map(|(t, _)| t);
        if t.is_none() && *self.inner.tx.borrow() {
            self.publish();
        }
        t
    }

    /// When the fence runs out (None: leader election is off, no fence). Err when not leader now.
    pub fn deadline(&self) -> Result<Option<Instant>> {
        match self.fenced_term() {
            Some((_, until)) => Ok(until),
            None => {
                self.is_leader();
                Err(Error::NotLeader)
            }
        }
    }

    /// Runs a write `call` only while this replica leads, abandoning it when the fence runs out before it
    /// answers ([`Error::NotLeader`]): a write of an old leader never lands after a new one may have taken
    /// over. Without election the call is bounded by [`UNFENCED_WRITE_TIMEOUT`].
    pub async fn bounded<T, F>(&self, call: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        match self.deadline()? {
            Some(until) => tokio::time::timeout_at(until.into(), call)
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(
                        "a write was abandoned: the leader fence ran out before the API server answered"
                    );
                    Err(Error::NotLeader)
                }),
            None => tokio::time::timeout(UNFENCED_WRITE_TIMEOUT, call)
                .await
                .unwrap_or_else(|_| {
                    Err(Error::CallTimeout {
                        what: "a write to the API server".into(),
                        after: UNFENCED_WRITE_TIMEOUT,
                    })
                }),
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

    /// Extends (or, with None, drops) the fence. `new_term`: this renewal began a tenure (create or acquire),
    /// with the lease's `leaseTransitions` after it.
    fn set_fence(&self, until: Option<Instant>, new_term: Option<i32>) {
        if let Some(f) = &self.inner.fence {
            let mut f = f.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(transitions) = new_term {
                f.terms += 1;
                f.term = Term {
                    seq: f.terms,
                    transitions,
                };
            }
            f.until = until;
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
                Err(_) => Err(Error::CallTimeout {
                    what: format!("renew Lease {}/{}", config.namespace, config.name),
                    after: config.renew_deadline,
                }),
            };
            match result {
                Ok(Held::Yes { began }) => {
                    // A renewal of a lease we still hold continues the term, even after a fence lapse:
                    // nobody else can have written in between. The first renewal of this process begins
                    // one too (a restarted replica with the same identity has nothing built yet).
                    let began =
                        began.or_else(|| (handle.inner_terms() == 0).then_some(last_transitions(&observed)));
                    let was = handle.is_leader();
                    handle.set_fence(Some(started + config.renew_deadline), began);
                    if !was || began.is_some() {
                        tracing::info!(lease = %config.name, identity = %config.identity, term = %handle.current_term(), "became leader");
                    }
                }
                Ok(Held::No) => {
                    if handle.is_leader() {
                        tracing::warn!(lease = %config.name, "lost the lease to another replica; writes stopped");
                    }
                    handle.set_fence(None, None);
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
        handle.set_fence(None, None);
        if was_leader {
            match release(&api, &config).await {
                Ok(()) => tracing::info!(lease = %config.name, "released the lease"),
                Err(e) => tracing::warn!(lease = %config.name, error = %e, "could not release the lease"),
            }
        }
    });
    (leadership, task)
}

/// What an election round ended with.
enum Held {
    /// We hold the lease; `began`: this round took it (a new term), with the lease's transitions count.
    Yes { began: Option<i32> },
    /// Someone else holds it.
    No,
}

fn last_transitions(o: &Observed) -> i32 {
    o.record.as_ref().and_then(|r| r.2).unwrap_or(0)
}

impl Leadership {
    fn inner_terms(&self) -> u64 {
        self.inner
            .fence
            .as_ref()
            .map_or(0, |f| f.lock().unwrap_or_else(|p| p.into_inner()).terms)
    }

    fn current_term(&self) -> Term {
        self.inner.fence.as_ref().map_or(Term::default(), |f| {
            f.lock().unwrap_or_else(|p| p.into_inner()).term
        })
    }
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Observed,
) -> Result<Held> {
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
                Ok(l) => {
                    observed.observe(l.spec.as_ref(), Instant::now());
                    Ok(Held::Yes { began: Some(0) })
                }
                Err(e) if is_conflict(&e) => Ok(Held::No),
                Err(e) => Err(e.into()),
            };
        }
    };
    let expired = observed.observe(existing.spec.as_ref(), Instant::now());
    let step = decide(existing.spec.as_ref(), &config.identity, expired);
    let mut lease = existing;
    let spec = lease.spec.get_or_insert_with(Default::default);
    match step {
        Step::Wait => return Ok(Held::No),
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
            let began = (step == Step::Acquire)
                .then(|| l.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0));
            Ok(Held::Yes { began })
        }
        Err(e) if is_conflict(&e) => Ok(Held::No),
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
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), Some(0));
        assert!(l.is_leader());
        assert!(*l.subscribe().borrow());
        // The fence runs out with no call to the election loop in between.
        l.set_fence(Some(Instant::now() + Duration::from_millis(20)), None);
        std::thread::sleep(Duration::from_millis(40));
        let mut rx = l.subscribe();
        rx.borrow_and_update();
        assert!(!l.is_leader(), "a fence in the past means no writes");
        assert!(l.ensure().is_err());
        assert!(
            rx.has_changed().unwrap_or(false) && !*rx.borrow_and_update(),
            "subscribers learn of the expiry"
        );
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), None);
        assert!(
            rx.has_changed().unwrap_or(false) && *rx.borrow_and_update(),
            "and of the renewal after it"
        );
        assert!(Leadership::always("x").is_leader());
    }

    #[test]
    fn a_term_lasts_through_renewals_and_fence_lapses_and_ends_when_the_lease_is_retaken() {
        let l = Leadership::elected("me".into());
        assert_eq!(l.term(), None, "no term before the lease is held");
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), Some(4));
        let first = l.term().expect("leading");
        assert_eq!((first.seq, first.transitions), (1, 4));
        // Renewals continue the term.
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), None);
        assert_eq!(l.term(), Some(first));
        // A lapse (fence ran out, lease still ours) and a renewal: the same term.
        l.set_fence(Some(Instant::now()), None);
        assert_eq!(l.term(), None, "no term while the fence is out");
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), None);
        assert_eq!(l.term(), Some(first));
        // Lost, then acquired again: a new term, even if the lease's counter looked the same.
        l.set_fence(None, None);
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), Some(4));
        let second = l.term().expect("leading");
        assert_ne!(second, first);
        assert_eq!(second.seq, 2);
        assert_eq!(Leadership::always("x").term(), Some(Term::default()));
    }

    #[tokio::test]
    async fn a_write_in_flight_when_the_fence_runs_out_is_abandoned() {
        let l = Leadership::elected("me".into());
        let never = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        assert!(
            matches!(l.bounded(never).await, Err(Error::NotLeader)),
            "not leader: not even started"
        );
        l.set_fence(Some(Instant::now() + Duration::from_millis(50)), Some(0));
        let started = Instant::now();
        let hangs = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        };
        assert!(matches!(l.bounded(hangs).await, Err(Error::NotLeader)));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "abandoned at the fence"
        );
        l.set_fence(Some(Instant::now() + Duration::from_secs(60)), None);
        assert_eq!(l.bounded(async { Ok(7) }).await.ok(), Some(7));
    }
}
