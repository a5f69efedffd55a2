//! The admin HTTP server: `/metrics` (Prometheus text, process metrics included), `/livez`, `/readyz`.
//!
//! Readiness is a set of named gates, one per watch (or anything else that must be in place before the
//! process is useful). `/readyz` answers 200 only when every gate is open and otherwise 503 with the names
//! of the gates still closed, so `kubectl describe pod` says what the controller waits for.
//!
//! Liveness is the opposite: a set of named fatal conditions ([`Liveness::fail`]). `/livez` answers 200
//! while none is set and otherwise 503 naming each one ("gossip task died: ..."), so the kubelet restarts
//! the pod and `kubectl describe pod` says why.

use crate::{Error, Result};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, Registry, TextEncoder};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Named readiness gates.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    gates: Arc<Mutex<BTreeMap<String, bool>>>,
}

/// One readiness gate; opening it is permanent.
#[derive(Clone, Debug)]
pub struct Gate {
    name: String,
    readiness: Readiness,
}

impl Readiness {
    /// Adds a closed gate.
    pub fn gate(&self, name: impl Into<String>) -> Gate {
        let name = name.into();
        self.lock().insert(name.clone(), false);
        Gate {
            name,
            readiness: self.clone(),
        }
    }

    /// Names of the gates still closed; empty means ready.
    pub fn waiting_for(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, open)| !**open)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// True when there is at least one gate and every gate is open.
    pub fn is_ready(&self) -> bool {
        let g = self.lock();
        !g.is_empty() && g.values().all(|open| *open)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, bool>> {
        self.gates.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Gate {
    /// Opens the gate.
    pub fn open(&self) {
        self.readiness.lock().insert(self.name.clone(), true);
    }

    /// Opens the gate once the reflector store has its first full list.
    pub fn open_when_synced<K>(self, store: kube::runtime::reflector::Store<K>)
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
    {
        tokio::spawn(async move {
            if wait_synced(&store).await {
                tracing::debug!(watch = %self.name, "watch synced");
                self.open();
            }
        });
    }
}

/// Waits until a reflector store has its first full list; false if its writer is gone.
///
/// kube-runtime's store readiness is a oneshot that remembers only the last waiter's waker, and a
/// Controller waits on its own store; so this polls again every 250 ms instead of waiting once (a fresh
/// poll sees the value even when our waker was overwritten).
pub async fn wait_synced<K>(store: &kube::runtime::reflector::Store<K>) -> bool
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await {
            Ok(Ok(())) => return true,
            Ok(Err(_)) => return false,
            Err(_) => {}
        }
    }
}

/// Named fatal conditions served on `/livez`.
///
/// A task whose death makes the process useless (a gossip loop, a packet responder) marks it here;
/// `/livez` then answers 503 with `not live: <name>: <why>` for every condition set. A condition can be
/// cleared again ([`Liveness::clear`]) for the rare case that a supervisor restarted what failed.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    failed: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Liveness {
    /// Marks the fatal condition `name` (e.g. `gossip task`) with what happened (e.g. `exited: ...`).
    /// Marking it again replaces the description.
    pub fn fail(&self, name: impl Into<String>, why: impl std::fmt::Display) {
        let name = name.into();
        let why = why.to_string();
        tracing::error!(condition = %name, why = %why, "liveness check failed");
        self.lock().insert(name, why);
    }

    /// Marks `name` failed when `task` ends, however it ends (returned, panicked or was cancelled): for
    /// a task that should run as long as the process. Returns the watcher's handle.
    pub fn fail_when_done<T: Send + 'static>(
        &self,
        name: impl Into<String>,
        task: tokio::task::JoinHandle<T>,
    ) -> tokio::task::JoinHandle<()> {
        let (me, name) = (self.clone(), name.into());
        tokio::spawn(async move {
            let why = match task.await {
                Ok(_) => "exited".to_string(),
                Err(e) if e.is_panic() => {
                    let p = e.into_panic();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    format!("panicked: {msg}")
                }
                Err(_) => "cancelled".to_string(),
            };
            me.fail(name, why);
        })
    }

    /// Clears the condition `name`.
    pub fn clear(&self, name: &str) {
        self.lock().remove(name);
    }

    /// True while no fatal condition is set.
    pub fn is_alive(&self) -> bool {
        self.lock().is_empty()
    }

    /// The fatal conditions set, as `(name, why)` sorted by name.
    pub fn failures(&self) -> Vec<(String, String)> {
        self.lock().iter().map(|(n, w)| (n.clone(), w.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A registry with the process collector (CPU, memory, file descriptors, start time) registered.
pub fn registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        // Registering a fresh collector in a fresh registry cannot collide.
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
}

/// Paths the admin server answers itself; extra routes cannot take them.
pub const BUILTIN_PATHS: [&str; 3] = ["/metrics", "/livez", "/readyz"];

/// Largest request body an extra route is given; larger requests get 413.
pub const MAX_ROUTE_BODY: usize = 64 * 1024;

/// What an extra route's handler returns.
pub type RouteFuture = futures::future::BoxFuture<'static, Response<Full<Bytes>>>;

type Handler = Arc<dyn Fn(Request<Bytes>) -> RouteFuture + Send + Sync>;

/// Extra routes of the admin server: path prefix -> handler, e.g. the ACME HTTP-01 solver under
/// `/.well-known/acme-challenge/` or a debug dump, added without forking the kit.
///
/// The table is shared: routes may be added (and removed) before or after the server started, and
/// each request is dispatched against the table as it is when the request arrives. The longest
/// matching prefix wins; a prefix matches its own path and everything below it (`/debug` matches
/// `/debug` and `/debug/x`, not `/debugger`; a prefix ending in `/` matches everything starting with
/// it). The built-in paths ([`BUILTIN_PATHS`]) always answer first. Handlers get every method and
/// the request body (at most [`MAX_ROUTE_BODY`] bytes).
#[derive(Clone, Default)]
pub struct Routes {
    table: Arc<std::sync::RwLock<Vec<(String, Handler)>>>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.prefixes()).finish()
    }
}

impl Routes {
    /// Adds `handler` under `prefix`. Refused when the prefix is not an absolute path, is a
    /// built-in path, or is taken already.
    pub fn add<F, Fut>(&self, prefix: &str, handler: F) -> Result<()>
    where
        F: Fn(Request<Bytes>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
    {
        if !prefix.starts_with('/') || prefix.contains(['?', '#']) || prefix.contains(char::is_whitespace) {
            return Err(Error::Option(format!(
                "admin route {prefix:?} must be an absolute path like /debug or /.well-known/acme-challenge/ (no query, no spaces)"
            )));
        }
        if BUILTIN_PATHS.contains(&prefix.trim_end_matches('/')) {
            return Err(Error::Option(format!(
                "admin route {prefix:?} is served by the admin server itself ({})",
                BUILTIN_PATHS.join(", ")
            )));
        }
        let mut table = self.write();
        if table.iter().any(|(p, _)| p == prefix) {
            return Err(Error::Option(format!(
                "admin route {prefix:?} is registered twice"
            )));
        }
        let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
        table.push((prefix.to_string(), handler));
        // Longest prefix first, so the first match is the most specific one.
        table.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(())
    }

    /// Removes the route under exactly `prefix`; false when there was none.
    pub fn remove(&self, prefix: &str) -> bool {
        let mut table = self.write();
        let before = table.len();
        table.retain(|(p, _)| p != prefix);
        table.len() != before
    }

    /// The registered prefixes, most specific first.
    pub fn prefixes(&self) -> Vec<String> {
        self.read().iter().map(|(p, _)| p.clone()).collect()
    }

    /// The prefix that would answer `path`, if any.
    pub fn matching(&self, path: &str) -> Option<String> {
        self.read()
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(p, _)| p.clone())
    }

    fn find(&self, path: &str) -> Option<Handler> {
        self.read()
            .iter()
            .find(|(p, _)| prefix_matches(p, path))
            .map(|(_, h)| h.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<(String, Handler)>> {
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<(String, Handler)>> {
        self.table.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Everything the admin server serves.
#[derive(Clone, Debug, Default)]
pub struct AdminState {
    /// Served on `/metrics`.
    pub registry: Registry,
    /// Served on `/readyz`.
    pub readiness: Readiness,
    /// Served on `/livez`.
    pub liveness: Liveness,
    /// Extra routes.
    pub routes: Routes,
}

/// The bound admin server.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local: SocketAddr,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::AdminBind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::AdminBind { addr, source })?;
        Ok(Self { listener, local })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves metrics and readiness (always live, no extra routes) until `shutdown` is cancelled.
    pub async fn serve(self, registry: Registry, readiness: Readiness, shutdown: CancellationToken) {
        self.serve_with(
            AdminState {
                registry,
                readiness,
                ..AdminState::default()
            },
            shutdown,
        )
        .await
    }

    /// Serves `state` until `shutdown` is cancelled.
    pub async fn serve_with(self, state: AdminState, shutdown: CancellationToken) {
        tracing::info!(addr = %self.local, routes = ?state.routes, "admin server listening (/metrics, /livez, /readyz)");
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin server accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(dispatch(req, &state).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), svc);
                // Scrapers and probes: a slow or broken client only costs its own connection.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    }
}

async fn dispatch(req: Request<hyper::body::Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if BUILTIN_PATHS.contains(&path) {
        return handle(&req, state);
    }
    let Some(handler) = state.routes.find(path) else {
        return handle(&req, state);
    };
    let (parts, body) = req.into_parts();
    let body =
        match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, MAX_ROUTE_BODY)).await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                    text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body over {MAX_ROUTE_BODY} bytes\n"),
                    )
                } else {
                    text(
                        StatusCode::BAD_REQUEST,
                        format!("reading the request body: {e}\n"),
                    )
                };
            }
        };
    handler(Request::from_parts(parts, body)).await
}

fn handle<B>(req: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut buf = Vec::new();
            match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
                Ok(()) => Response::builder()
                    .header("content-type", prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(buf)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics failed: {e}\n"),
                ),
            }
        }
        "/livez" => {
            let failures = state.liveness.failures();
            if failures.is_empty() {
                text(StatusCode::OK, "ok\n")
            } else {
                let what: Vec<String> = failures.iter().map(|(n, w)| format!("{n}: {w}")).collect();
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not live: {}\n", what.join("; ")),
                )
            }
        }
        "/readyz" => {
            let readiness = &state.readiness;
            if readiness.is_ready() {
                text(StatusCode::OK, "ok\n")
            } else {
                let waiting = readiness.waiting_for();
                let what = if waiting.is_empty() {
                    "nothing registered yet".into()
                } else {
                    waiting.join(", ")
                };
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: waiting for {what}\n"),
                )
            }
        }
        _ => {
            let mut paths: Vec<String> = BUILTIN_PATHS.iter().map(|p| p.to_string()).collect();
            paths.extend(state.routes.prefixes());
            text(StatusCode::NOT_FOUND, format!("try {}\n", paths.join(", ")))
        }
    }
}

/// A `text/plain` response, for extra routes too.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).expect("request")
    }

    #[test]
    fn readyz_waits_for_every_gate() {
        let state = AdminState {
            registry: registry(),
            ..AdminState::default()
        };
        let r = &state.readiness;
        assert_eq!(
            handle(&get("/readyz"), &state).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let a = r.gate("watch ippools");
        let b = r.gate("watch services");
        assert_eq!(
            r.waiting_for(),
            vec!["watch ippools".to_string(), "watch services".to_string()]
        );
        a.open();
        assert_eq!(
            handle(&get("/readyz"), &state).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        b.open();
        assert_eq!(handle(&get("/readyz"), &state).status(), StatusCode::OK);
        assert_eq!(handle(&get("/livez"), &state).status(), StatusCode::OK);
        assert_eq!(handle(&get("/nope"), &state).status(), StatusCode::NOT_FOUND);
    }

    fn body(resp: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt;
        let bytes = futures::executor::block_on(resp.into_body().collect())
            .expect("full body")
            .to_bytes();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn livez_names_every_fatal_condition() {
        let state = AdminState::default();
        let live = state.liveness.clone();
        assert!(live.is_alive());
        assert_eq!(handle(&get("/livez"), &state).status(), StatusCode::OK);
        live.fail("gossip task", "exited: socket closed");
        live.fail("arp responder", "panicked");
        assert!(!live.is_alive());
        let resp = handle(&get("/livez"), &state);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body(resp),
            "not live: arp responder: panicked; gossip task: exited: socket closed\n"
        );
        live.clear("arp responder");
        live.clear("gossip task");
        assert_eq!(handle(&get("/livez"), &state).status(), StatusCode::OK);
        // Readiness is independent of liveness.
        live.fail("x", "y");
        state.readiness.gate("g").open();
        assert_eq!(handle(&get("/readyz"), &state).status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_task_that_ends_marks_its_condition() {
        let live = Liveness::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let w1 = live.fail_when_done(
            "gossip task",
            tokio::spawn(async move {
                let _ = rx.await;
            }),
        );
        #[allow(clippy::panic)]
        let w2 = live.fail_when_done("arp task", tokio::spawn(async { panic!("socket closed") }));
        w2.await.expect("watcher");
        assert_eq!(
            live.failures(),
            vec![("arp task".to_string(), "panicked: socket closed".to_string())]
        );
        tx.send(()).expect("send");
        w1.await.expect("watcher");
        assert_eq!(live.failures().len(), 2);
        assert!(
            live.failures()
                .contains(&("gossip task".to_string(), "exited".to_string()))
        );
    }

    #[test]
    fn route_prefixes_match_whole_segments_longest_first() {
        let routes = Routes::default();
        let ok = |_req: Request<Bytes>| async { text(StatusCode::OK, "x") };
        routes.add("/debug", ok).expect("added");
        routes.add("/debug/deep", ok).expect("added");
        routes.add("/.well-known/acme-challenge/", ok).expect("added");
        assert_eq!(routes.matching("/debug").as_deref(), Some("/debug"));
        assert_eq!(routes.matching("/debug/x").as_deref(), Some("/debug"));
        assert_eq!(routes.matching("/debug/deep/1").as_deref(), Some("/debug/deep"));
        assert_eq!(routes.matching("/debugger"), None);
        assert_eq!(
            routes.matching("/.well-known/acme-challenge/tok").as_deref(),
            Some("/.well-known/acme-challenge/")
        );
        assert_eq!(routes.matching("/.well-known/acme-challenge"), None);
        assert_eq!(routes.matching("/"), None);
        for bad in [
            "debug", "/metrics", "/livez/", "/readyz", "/a b", "/x?y=1", "/debug",
        ] {
            let err = routes.add(bad, ok).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(routes.remove("/debug"));
        assert!(!routes.remove("/debug"));
        assert_eq!(routes.matching("/debug/x"), None);
    }
}
