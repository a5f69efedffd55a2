//! Upstream selection and connections: round-robin over a backend's ready endpoints, passive
//! ejection of endpoints that refuse connections, HTTP/1.1 keep-alive pools per endpoint (hyper-util's
//! pooled client keys its pool by `ip:port`, which is exactly one pool per endpoint).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyBody;
use crate::routes::BackendRef;

/// The upstream side shared by every connection of the proxy.
pub struct Upstreams {
    client: Client<HttpConnector, ProxyBody>,
    cursors: Mutex<HashMap<BackendRef, Arc<AtomicUsize>>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    ejection: Duration,
}

impl Upstreams {
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration, ejection: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle_timeout)
            // Host is set from the downstream request, never from the endpoint address.
            .set_host(false)
            .build(connector);
        Upstreams {
            client,
            cursors: Mutex::new(HashMap::new()),
            ejected: Mutex::new(HashMap::new()),
            ejection,
        }
    }

    pub fn client(&self) -> &Client<HttpConnector, ProxyBody> {
        &self.client
    }

    /// The endpoints to try, in order: round-robin start, endpoints ejected less than the ejection
    /// time ago moved to the end (when every endpoint is ejected they are still tried: a refused
    /// connection is cheaper than a 503 for a backend that just came back).
    pub fn order(&self, backend: &BackendRef, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let cursor = {
            let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
            match cursors.get(backend) {
                Some(c) => c.clone(),
                None => {
                    let c = Arc::new(AtomicUsize::new(0));
                    cursors.insert(backend.clone(), c.clone());
                    c
                }
            }
        };
        let start = cursor.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let now = Instant::now();
        let ejected = {
            let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
            ejected.retain(|_, until| *until > now);
            endpoints
                .iter()
                .map(|e| ejected.contains_key(e))
                .collect::<Vec<_>>()
        };
        let rotated = (0..endpoints.len()).map(|i| (start + i) % endpoints.len());
        let (healthy, sick): (Vec<usize>, Vec<usize>) = rotated.partition(|&i| !ejected[i]);
        healthy.into_iter().chain(sick).map(|i| endpoints[i]).collect()
    }

    /// Records that `endpoint` refused a connection (or the connect timed out).
    pub fn eject(&self, endpoint: SocketAddr) {
        let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
        ejected.insert(endpoint, Instant::now() + self.ejection);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::ServicePort;

    #[test]
    fn round_robin_and_ejected_endpoints_last() {
        let u = Upstreams::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let b = BackendRef {
            namespace: "ns".into(),
            service: "s".into(),
            port: ServicePort::Number(80),
        };
        let e: Vec<SocketAddr> = (1..=3).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        let firsts: Vec<SocketAddr> = (0..6).map(|_| u.order(&b, &e)[0]).collect();
        assert_eq!(firsts, [e[0], e[1], e[2], e[0], e[1], e[2]]);
        u.eject(e[1]);
        for _ in 0..6 {
            let order = u.order(&b, &e);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], e[1], "{order:?}");
        }
        assert!(u.order(&b, &[]).is_empty());
    }

    #[test]
    fn ejection_expires() {
        let u = Upstreams::new(Duration::from_secs(1), Duration::from_secs(1), Duration::ZERO);
        let b = BackendRef {
            namespace: "ns".into(),
            service: "s".into(),
            port: ServicePort::Number(80),
        };
        let e: Vec<SocketAddr> = (1..=2).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        u.eject(e[0]);
        let firsts: Vec<SocketAddr> = (0..2).map(|_| u.order(&b, &e)[0]).collect();
        assert_eq!(firsts, [e[0], e[1]]);
    }
}
