//! Upstream selection and connections: round-robin or power-of-two-choices least-requests over a
//! backend's ready endpoints, passive ejection of endpoints that refuse connections, and two pooled
//! clients: HTTP/1.1 keep-alive and cleartext HTTP/2 (h2c, prior knowledge) for gRPC backends.
//! hyper-util's pooled client keys its pool by `ip:port`, which is exactly one pool per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::ProxyBody;
use crate::routes::{BackendProtocol, BackendRef};

/// How the first endpoint of a request is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoadBalance {
    /// Each backend's endpoints in turn.
    #[default]
    RoundRobin,
    /// Power of two choices: two random healthy endpoints, the one with fewer requests in flight
    /// (through this proxy) wins.
    P2c,
}

impl LoadBalance {
    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalance::RoundRobin => "round-robin",
            LoadBalance::P2c => "p2c",
        }
    }
}

impl std::str::FromStr for LoadBalance {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" | "round_robin" | "rr" => Ok(LoadBalance::RoundRobin),
            "p2c" | "least-requests" | "least_request" => Ok(LoadBalance::P2c),
            other => Err(format!("load balancing {other:?} is not round-robin or p2c")),
        }
    }
}

impl std::fmt::Display for LoadBalance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The upstream side shared by every connection of the proxy.
pub struct Upstreams {
    http1: Client<HttpConnector, ProxyBody>,
    h2c: Client<HttpConnector, ProxyBody>,
    balance: LoadBalance,
    cursors: Mutex<HashMap<BackendRef, Arc<AtomicUsize>>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    in_flight: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    ejection: Duration,
    rng: AtomicU64,
}

/// Counts one request in flight to an endpoint until dropped (P2C's load signal).
#[derive(Debug)]
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    connector
}

impl Upstreams {
    #[cfg(test)]
    pub fn new(connect_timeout: Duration, pool_idle_timeout: Duration, ejection: Duration) -> Self {
        Self::with_balance(
            connect_timeout,
            pool_idle_timeout,
            ejection,
            LoadBalance::RoundRobin,
        )
    }

    pub fn with_balance(
        connect_timeout: Duration,
        pool_idle_timeout: Duration,
        ejection: Duration,
        balance: LoadBalance,
    ) -> Self {
        let http1 = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle_timeout)
            // Host is set from the downstream request, never from the endpoint address.
            .set_host(false)
            .build(connector(connect_timeout));
        let h2c = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(pool_idle_timeout)
            .set_host(false)
            .http2_only(true)
            .build(connector(connect_timeout));
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        Upstreams {
            http1,
            h2c,
            balance,
            cursors: Mutex::new(HashMap::new()),
            ejected: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            ejection,
            rng: AtomicU64::new(seed),
        }
    }

    /// The pooled client for a backend protocol.
    pub fn client(&self, protocol: BackendProtocol) -> &Client<HttpConnector, ProxyBody> {
        match protocol {
            BackendProtocol::Http1 => &self.http1,
            BackendProtocol::H2c => &self.h2c,
        }
    }

    /// splitmix64 over an atomic counter: cheap, lock-free, good enough to pick two endpoints.
    fn random(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn counter(&self, endpoint: SocketAddr) -> Arc<AtomicUsize> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&endpoint) {
            return c.clone();
        }
        // Endpoints come and go with Pods: forget idle counters of gone endpoints now and then.
        if map.len() >= 4096 {
            map.retain(|_, c| Arc::strong_count(c) > 1 || c.load(Ordering::Relaxed) > 0);
        }
        let c = Arc::new(AtomicUsize::new(0));
        map.insert(endpoint, c.clone());
        c
    }

    /// Requests currently in flight to `endpoint` through this proxy.
    pub fn in_flight(&self, endpoint: SocketAddr) -> usize {
        let map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&endpoint).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Marks a request in flight to `endpoint` until the returned guard is dropped; only P2C reads
    /// the counts, so round-robin skips the bookkeeping (one lock fewer per request).
    pub fn track(&self, endpoint: SocketAddr) -> Option<InFlight> {
        (self.balance == LoadBalance::P2c).then(|| self.start(endpoint))
    }

    /// Marks a request in flight to `endpoint` until the returned guard is dropped.
    pub fn start(&self, endpoint: SocketAddr) -> InFlight {
        let c = self.counter(endpoint);
        c.fetch_add(1, Ordering::Relaxed);
        InFlight(c)
    }

    /// The endpoints to try, in order: the load balancer's choice first, endpoints ejected less than
    /// the ejection time ago moved to the end (when every endpoint is ejected they are still tried:
    /// a refused connection is cheaper than a 503 for a backend that just came back).
    pub fn order(&self, backend: &BackendRef, endpoints: &[SocketAddr]) -> Vec<SocketAddr> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let start = match self.balance {
            LoadBalance::RoundRobin => self.cursor(backend).fetch_add(1, Ordering::Relaxed) % endpoints.len(),
            // Rotation start is random; the P2C choice is moved to the front below.
            LoadBalance::P2c => (self.random() % endpoints.len() as u64) as usize,
        };
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
        let (mut healthy, sick): (Vec<usize>, Vec<usize>) = rotated.partition(|&i| !ejected[i]);
        if self.balance == LoadBalance::P2c && healthy.len() >= 2 {
            // healthy[0] is a random pick; the second is another random healthy one.
            let other = 1 + (self.random() % (healthy.len() as u64 - 1)) as usize;
            let (a, b) = (healthy[0], healthy[other]);
            if self.in_flight(endpoints[b]) < self.in_flight(endpoints[a]) {
                healthy.swap(0, other);
            }
        }
        healthy.into_iter().chain(sick).map(|i| endpoints[i]).collect()
    }

    fn cursor(&self, backend: &BackendRef) -> Arc<AtomicUsize> {
        let mut cursors = self.cursors.lock().unwrap_or_else(|p| p.into_inner());
        match cursors.get(backend) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(AtomicUsize::new(0));
                cursors.insert(backend.clone(), c.clone());
                c
            }
        }
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

    fn b() -> BackendRef {
        BackendRef {
            namespace: "ns".into(),
            service: "s".into(),
            port: ServicePort::Number(80),
        }
    }

    #[test]
    fn round_robin_and_ejected_endpoints_last() {
        let u = Upstreams::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
        );
        let b = b();
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
        let b = b();
        let e: Vec<SocketAddr> = (1..=2).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        u.eject(e[0]);
        let firsts: Vec<SocketAddr> = (0..2).map(|_| u.order(&b, &e)[0]).collect();
        assert_eq!(firsts, [e[0], e[1]]);
    }

    fn p2c() -> Upstreams {
        Upstreams::with_balance(
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(60),
            LoadBalance::P2c,
        )
    }

    #[test]
    fn p2c_prefers_the_less_loaded_endpoint() {
        let u = p2c();
        let b = b();
        let e: Vec<SocketAddr> = (1..=2).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        // e[0] busy with 5 requests, e[1] idle: with two endpoints both are always the two
        // choices, so the idle one must win every time.
        let busy: Vec<InFlight> = (0..5).map(|_| u.start(e[0])).collect();
        assert_eq!(u.in_flight(e[0]), 5);
        for _ in 0..50 {
            let order = u.order(&b, &e);
            assert_eq!(order, [e[1], e[0]], "retries still get the other endpoint");
        }
        drop(busy);
        assert_eq!(u.in_flight(e[0]), 0);
        // Equal load: both endpoints get picked.
        let firsts: std::collections::HashSet<SocketAddr> = (0..50).map(|_| u.order(&b, &e)[0]).collect();
        assert_eq!(firsts.len(), 2);
    }

    #[test]
    fn p2c_spreads_load_and_avoids_the_hot_endpoint() {
        let u = p2c();
        let b = b();
        let e: Vec<SocketAddr> = (1..=4).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        let _hot: Vec<InFlight> = (0..10).map(|_| u.start(e[0])).collect();
        let mut picks = HashMap::new();
        let mut held = Vec::new();
        for _ in 0..300 {
            let first = u.order(&b, &e)[0];
            *picks.entry(first).or_insert(0) += 1;
            // Keep the request "in flight" so the counts evolve like real load.
            held.push(u.start(first));
            if held.len() > 6 {
                held.remove(0);
            }
        }
        // The hot endpoint can only win when both choices are it (never: choices are distinct)
        // or when the other is at least as busy (never below 10 while only 6 are held).
        assert_eq!(picks.get(&e[0]), None, "{picks:?}");
        for cold in &e[1..] {
            assert!(picks.get(cold).copied().unwrap_or(0) > 50, "{picks:?}");
        }
    }

    #[test]
    fn p2c_keeps_ejected_endpoints_last() {
        let u = p2c();
        let b = b();
        let e: Vec<SocketAddr> = (1..=3).map(|i| SocketAddr::from(([127, 0, 0, i], 80))).collect();
        u.eject(e[2]);
        for _ in 0..30 {
            let order = u.order(&b, &e);
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], e[2], "{order:?}");
        }
    }

    #[test]
    fn load_balance_parses() {
        assert_eq!("p2c".parse::<LoadBalance>(), Ok(LoadBalance::P2c));
        assert_eq!("round-robin".parse::<LoadBalance>(), Ok(LoadBalance::RoundRobin));
        assert!("random".parse::<LoadBalance>().is_err());
    }
}
