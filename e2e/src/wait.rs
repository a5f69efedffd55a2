//! Waiting, bounded in time, for the box tests, the demo and the benchmarks: until a condition holds,
//! until a controller process just spawned answers `/readyz`, and until an object has an Event. Each error
//! names what was awaited.

use crate::{Supervised, http_get};
use anyhow::{Result, bail};
use k8s_openapi::api::events::v1::Event;
use kube::{Api, Client, api::ListParams};
use std::{
    future::Future,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Polls `f` every `every` until it returns Some; an error naming `what` once `limit` has passed.
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `p` (a controller just spawned) answers 200 on `/readyz` at `admin`, polling every
/// 100 ms; an error with the last lines of its log if it exits or is not ready within `limit`.
pub async fn ready(p: &mut Supervised, admin: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if !p.is_running() {
            bail!(
                "{} exited; last lines of {}:\n{}",
                p.name,
                p.log.display(),
                p.log_tail(30)
            );
        }
        if let Ok((200, _)) = http_get(admin, "/readyz").await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} was not ready within {limit:?}; last lines of {}:\n{}",
                p.name,
                p.log.display(),
                p.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until namespace `ns` holds an Event with `reason` regarding the object `name` (polling every
/// 100 ms); returns the first such Event, or an error after `limit`.
pub async fn event(client: Client, ns: &str, name: &str, reason: &str, limit: Duration) -> Result<Event> {
    let api: Api<Event> = Api::namespaced(client, ns);
    poll(
        limit,
        Duration::from_millis(100),
        &format!("Event {reason} on {name}"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
            })
        },
    )
    .await
}
