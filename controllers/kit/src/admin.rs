//! The admin HTTP server: `/metrics` (Prometheus text, process metrics included), `/livez`, `/readyz`.
//!
//! Readiness is a set of named gates, one per watch (or anything else that must be in place before the
//! process is useful). `/readyz` answers 200 only when every gate is open and otherwise 503 with the names
//! of the gates still closed, so `kubectl describe pod` says what the controller waits for.

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

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, registry: Registry, readiness: Readiness, shutdown: CancellationToken) {
        tracing::info!(addr = %self.local, "admin server listening (/metrics, /livez, /readyz)");
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
            let (registry, readiness) = (registry.clone(), readiness.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let resp = handle(&req, &registry, &readiness);
                    async move { Ok::<_, std::convert::Infallible>(resp) }
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

fn handle<B>(req: &Request<B>, registry: &Registry, readiness: &Readiness) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let mut buf = Vec::new();
            match TextEncoder::new().encode(&registry.gather(), &mut buf) {
                Ok(()) => Response::builder()
                    .header("content-type", prometheus::TEXT_FORMAT)
                    .body(Full::new(Bytes::from(buf)))
                    .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n".into())),
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics failed: {e}\n"),
                ),
            }
        }
        "/livez" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            if readiness.is_ready() {
                text(StatusCode::OK, "ok\n".into())
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
        _ => text(StatusCode::NOT_FOUND, "try /metrics, /livez or /readyz\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
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
        let reg = registry();
        let r = Readiness::default();
        assert_eq!(
            handle(&get("/readyz"), &reg, &r).status(),
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
            handle(&get("/readyz"), &reg, &r).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        b.open();
        assert_eq!(handle(&get("/readyz"), &reg, &r).status(), StatusCode::OK);
        assert_eq!(handle(&get("/livez"), &reg, &r).status(), StatusCode::OK);
        assert_eq!(handle(&get("/nope"), &reg, &r).status(), StatusCode::NOT_FOUND);
    }
}
