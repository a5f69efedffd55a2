//! Runs a `kube::runtime::Controller` the Ferrite way.
//!
//! ```text
//!   watch ──> Controller ──> wrapped reconcile ──┬─ not leader? count "skipped", wait for a change
//!     │           ^                              ├─ Ok  -> success metric, backoff reset
//!     │           │                              └─ Err -> error metric {reason}, per-object backoff
//!     │           └── reconcile all: every resync interval, and when this replica becomes leader
//!     └── readiness gate "watch <plural>" opens after the first full list
//! ```
//! Reconcilers return a requeue interval as a safety net; the periodic resync covers them anyway.
//! The metrics carry `kind=K::kind`, so several controllers in one binary are counted apart.

use crate::{
    ReasonedError,
    admin::Readiness,
    backoff::{Backoff, BackoffTracker},
    leader::Leadership,
    metrics::ReconcileMetrics,
};
use futures::{Stream, StreamExt, stream};
use kube::{
    Resource, ResourceExt,
    runtime::{Controller, controller::Action},
};
use std::{fmt::Debug, future::Future, hash::Hash, sync::Arc, time::Duration, time::Instant};
use tokio_util::sync::CancellationToken;

/// What the runner needs besides the controller: usually taken from [`crate::App`].
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Reconcile metrics of this controller binary; the runner records them under `kind=K::kind`, or
    /// under the label already set with [`ReconcileMetrics::for_kind`] (to tell apart two controllers
    /// of the same kind in one binary).
    pub metrics: ReconcileMetrics,
    /// Only the leader reconciles.
    pub leadership: Leadership,
    /// Readiness gates; the runner adds one for the main watch.
    pub readiness: Readiness,
    /// Stops the controller gracefully (in-flight reconciles finish).
    pub shutdown: CancellationToken,
    /// Every object is reconciled at least this often.
    pub resync: Duration,
    /// Retry policy for failed reconciles.
    pub backoff: Backoff,
}

struct State<Ctx, R> {
    ctx: Arc<Ctx>,
    reconcile: R,
    metrics: ReconcileMetrics,
    leadership: Leadership,
    backoff: BackoffTracker<String>,
}

fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or(""),
        obj.meta().name.as_deref().unwrap_or("")
    )
}

/// Runs `controller` until `opts.shutdown` is cancelled.
pub async fn run<K, Ctx, R, Fut, E>(controller: Controller<K>, ctx: Arc<Ctx>, reconcile: R, opts: RunOptions)
where
    K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Debug + Clone + Eq + Hash + Unpin + Default + Send + Sync,
    Ctx: Send + Sync + 'static,
    R: Fn(Arc<K>, Arc<Ctx>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Action, E>> + Send + 'static,
    E: ReasonedError,
{
    let dt = K::DynamicType::default();
    let plural = K::plural(&dt).to_string();
    // The kind label is K's kind, unless the caller set one (two controllers of one kind in a binary).
    let metrics = if opts.metrics.kind().is_empty() {
        opts.metrics.for_kind(&K::kind(&dt))
    } else {
        opts.metrics.clone()
    };
    opts.readiness
        .gate(format!("watch {plural}"))
        .open_when_synced(controller.store());

    let triggers = stream::select(resync_ticks(opts.resync), became_leader(opts.leadership.clone()));
    let state = Arc::new(State {
        ctx,
        reconcile,
        metrics,
        leadership: opts.leadership.clone(),
        backoff: BackoffTracker::new(opts.backoff),
    });
    let shutdown = opts.shutdown.clone();
    controller
        .reconcile_all_on(triggers)
        .graceful_shutdown_on(async move { shutdown.cancelled().await })
        .run(
            reconcile_wrapped::<K, Ctx, R, Fut, E>,
            error_policy::<K, Ctx, R, E>,
            state,
        )
        .for_each(|res| {
            let plural = plural.clone();
            async move {
                match res {
                    Ok(_) => {}
                    // Reconcile errors are logged by error_policy; these are watch/queue errors.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    Err(e) => tracing::warn!(controller = %plural, error = %e, "controller stream error"),
                }
            }
        })
        .await;
}

async fn reconcile_wrapped<K, Ctx, R, Fut, E>(obj: Arc<K>, state: Arc<State<Ctx, R>>) -> Result<Action, E>
where
    K: Resource,
    R: Fn(Arc<K>, Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
    E: ReasonedError,
{
    if !state.leadership.is_leader() {
        state.metrics.skipped();
        // Becoming leader triggers a reconcile of everything; until then there is nothing to do.
        return Ok(Action::await_change());
    }
    let start = Instant::now();
    let name = obj.name_any();
    let res = (state.reconcile)(obj.clone(), state.ctx.clone()).await;
    match &res {
        Ok(_) => {
            state.metrics.success(start.elapsed());
            state.backoff.succeeded(&key(&*obj));
        }
        Err(e) => {
            state.metrics.error(e.reason(), start.elapsed());
            tracing::debug!(object = %name, reason = e.reason(), "reconcile failed");
        }
    }
    res
}

fn error_policy<K, Ctx, R, E>(obj: Arc<K>, err: &E, state: Arc<State<Ctx, R>>) -> Action
where
    K: Resource,
    E: ReasonedError,
{
    let delay = state.backoff.failed(key(&*obj));
    tracing::warn!(
        object = %key(&*obj), reason = err.reason(), error = %err, retry_in = ?delay,
        "reconcile failed"
    );
    Action::requeue(delay)
}

fn resync_ticks(every: Duration) -> impl Stream<Item = ()> + Send + 'static {
    stream::unfold(tokio::time::Instant::now() + every, move |next| async move {
        tokio::time::sleep_until(next).await;
        Some(((), next + every))
    })
}

fn became_leader(leadership: Leadership) -> impl Stream<Item = ()> + Send + 'static {
    stream::unfold(leadership.subscribe(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}
