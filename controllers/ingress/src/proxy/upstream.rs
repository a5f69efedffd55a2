//! Upstream selection and connections: round-robin or power-of-two-choices least-requests over a
//! backend's ready endpoints, passive ejection of endpoints that refuse connections, and two pools:
//! HTTP/1.1 keep-alive connections per endpoint (hyper's low-level `client::conn::http1`, see
//! [`Pool`]) and hyper-util's pooled client for cleartext HTTP/2 (h2c, prior knowledge) to gRPC
//! backends, keyed by `ip:port`, which is also one pool per endpoint.
//!
//! ```text
//!   request ──checkout(endpoint)──> idle sender (newest first; closed or idle too long: dropped)
//!              └─ none: TCP connect (connect timeout, TCP_NODELAY) + HTTP/1.1 handshake, the
//!                 connection driven by its own task (upgrades kept: WebSocket)
//!           ──send──> response head ──> body streamed downstream ──last byte──> sender back idle
//!   a pooled connection the upstream closed before our request went out: one new connection, the
//!   same request (it was never sent)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::{BoxError, ProxyBody};
use crate::routes::BackendRef;

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
    http1: Arc<Pool>,
    h2c: Client<HttpConnector, ProxyBody>,
    balance: LoadBalance,
    cursors: Mutex<HashMap<BackendRef, Arc<AtomicUsize>>>,
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
    /// True while `ejected` may hold an entry: the common case (no endpoint ejected) skips its lock.
    any_ejected: AtomicBool,
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
        let http1 = Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout,
            idle_timeout: pool_idle_timeout,
        });
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
            any_ejected: AtomicBool::new(false),
            in_flight: Mutex::new(HashMap::new()),
            ejection,
            rng: AtomicU64::new(seed),
        }
    }

    /// The pooled h2c client (hyper-util's; it multiplexes requests over one connection per endpoint).
    pub fn h2c(&self) -> &Client<HttpConnector, ProxyBody> {
        &self.h2c
    }

    /// The HTTP/1.1 keep-alive pool.
    pub fn http1(&self) -> &Arc<Pool> {
        &self.http1
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
            // One endpoint: nothing to rotate (no cursor lookup).
            LoadBalance::RoundRobin if endpoints.len() == 1 => 0,
            LoadBalance::RoundRobin => self.cursor(backend).fetch_add(1, Ordering::Relaxed) % endpoints.len(),
            // Rotation start is random; the P2C choice is moved to the front below.
            LoadBalance::P2c => (self.random() % endpoints.len() as u64) as usize,
        };
        if !self.any_ejected.load(Ordering::Relaxed) && self.balance == LoadBalance::RoundRobin {
            // Nothing ejected: the rotation as is, without a lock.
            let mut order = Vec::with_capacity(endpoints.len());
            order.extend_from_slice(&endpoints[start..]);
            order.extend_from_slice(&endpoints[..start]);
            return order;
        }
        let now = Instant::now();
        let ejected = {
            let mut ejected = self.ejected.lock().unwrap_or_else(|p| p.into_inner());
            ejected.retain(|_, until| *until > now);
            if ejected.is_empty() {
                self.any_ejected.store(false, Ordering::Relaxed);
            }
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
        self.any_ejected.store(true, Ordering::Relaxed);
    }
}

/// HTTP/1.1 keep-alive connections per endpoint: idle senders kept until reused (newest first) or
/// older than the idle timeout. Each connection is driven by its own task, which ends when the
/// upstream closes it or its last sender is dropped; [`Pool::reap`] drops senders idle too long.
pub struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<IdleConn>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

struct IdleConn {
    tx: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// A connection in use: handed back with [`Pool::put`] once its response is complete.
pub struct Pooled {
    tx: http1::SendRequest<ProxyBody>,
    endpoint: SocketAddr,
}

/// Why a request could not be sent upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection: refused, unreachable, or the connect timeout (the endpoint is ejected).
    Connect(BoxError),
    /// The connection failed after the request was (perhaps partly) sent.
    Request(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Request(e) => write!(f, "{e}"),
        }
    }
}

impl Pool {
    fn checkout(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(&endpoint)?;
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout {
                return Some(c.tx);
            }
        }
        None
    }

    /// Hands a connection back once its response body was read to the end (else it is dropped,
    /// which closes it).
    pub fn put(&self, conn: Pooled) {
        if conn.tx.is_closed() || self.idle_timeout.is_zero() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.entry(conn.endpoint).or_default().push(IdleConn {
            tx: conn.tx,
            since: Instant::now(),
        });
    }

    #[cfg(test)]
    fn idle_count(&self, endpoint: SocketAddr) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get(&endpoint).map_or(0, Vec::len)
    }

    /// Drops senders idle longer than the idle timeout (their connections close) and endpoints
    /// without any.
    pub fn reap(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < self.idle_timeout);
            !list.is_empty()
        });
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<http1::SendRequest<ProxyBody>, SendError> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(endpoint),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(Box::new(e))),
            Err(_) => {
                return Err(SendError::Connect(Box::new(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                ))));
            }
        };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Request(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// A connection for one request to `endpoint`, obtained before the request is built: an idle
    /// pooled one, else a new one. A connect error means nothing was sent, so any request (one
    /// with a body too) can go to another endpoint.
    pub async fn connection(&self, endpoint: SocketAddr) -> Result<Ready, SendError> {
        Ok(match self.checkout(endpoint) {
            Some(tx) => Ready { tx, reused: true },
            None => Ready {
                tx: self.connect(endpoint).await?,
                reused: false,
            },
        })
    }

    /// Sends `req` (origin-form target, Host set) to `endpoint` on an idle connection or a new one.
    /// A pooled connection that turns out closed before the request went out is replaced by a new
    /// one, with the same request.
    pub async fn send(
        &self,
        endpoint: SocketAddr,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        let mut pooled = self.checkout(endpoint);
        loop {
            let reused = pooled.is_some();
            let mut tx = match pooled.take() {
                Some(tx) => tx,
                None => self.connect(endpoint).await?,
            };
            // A returned connection is normally ready at once; one that is not within the connect
            // timeout is dropped rather than waited on.
            if reused
                && !matches!(
                    tokio::time::timeout(self.connect_timeout, tx.ready()).await,
                    Ok(Ok(()))
                )
            {
                pooled = self.checkout(endpoint);
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Pooled { tx, endpoint })),
                Err(mut e) => match e.take_message() {
                    // Never written: the upstream had closed the pooled connection.
                    Some(r) if reused => {
                        req = r;
                        pooled = self.checkout(endpoint);
                    }
                    _ => return Err(SendError::Request(Box::new(e.into_error()))),
                },
            }
        }
    }

    /// [`Pool::send`] on a connection from [`Pool::connection`].
    pub async fn send_on(
        &self,
        endpoint: SocketAddr,
        ready: Ready,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Pooled), SendError> {
        let mut next = Some(ready);
        loop {
            let Ready { mut tx, reused } = match next.take() {
                Some(r) => r,
                None => self.connection(endpoint).await?,
            };
            // A returned connection is normally ready at once; one that is not within the connect
            // timeout is dropped rather than waited on.
            if reused
                && !matches!(
                    tokio::time::timeout(self.connect_timeout, tx.ready()).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Pooled { tx, endpoint })),
                Err(mut e) => match e.take_message() {
                    // Never written: the upstream had closed the pooled connection.
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Request(Box::new(e.into_error()))),
                },
            }
        }
    }
}

/// A connection ready to take one request ([`Pool::connection`]).
pub struct Ready {
    tx: http1::SendRequest<ProxyBody>,
    /// From the pool (may turn out closed; then another is used).
    reused: bool,
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

    /// A raw HTTP/1.1 server on loopback: answers each request `ok` (keep-alive unless
    /// `close_after_one`, then it closes the connection right after the response, without saying
    /// so); returns its address and the count of connections it accepted.
    async fn server(close_after_one: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if s.write_all(reply).await.is_err() {
                                return;
                            }
                            if close_after_one {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    async fn get(pool: &Arc<Pool>, endpoint: SocketAddr) -> Result<(), String> {
        use http_body_util::{BodyExt, Empty};
        let body: ProxyBody = Empty::new().map_err(|never| match never {}).boxed();
        let mut req = Request::new(body);
        req.headers_mut()
            .insert(hyper::header::HOST, hyper::header::HeaderValue::from_static("t"));
        let (resp, conn) = pool.send(endpoint, req).await.map_err(|e| e.to_string())?;
        let (_, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        assert_eq!(&bytes[..], b"ok");
        pool.put(conn);
        Ok(())
    }

    fn pool(idle_timeout: Duration) -> Arc<Pool> {
        Arc::new(Pool {
            idle: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(2),
            idle_timeout,
        })
    }

    #[tokio::test]
    async fn pool_reuses_a_connection_and_replaces_closed_ones() {
        let (addr, accepted) = server(false).await;
        let p = pool(Duration::from_secs(60));
        for _ in 0..5 {
            get(&p, addr).await.expect("request");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one kept-alive connection");
        assert_eq!(p.idle_count(addr), 1);

        // The upstream closes every connection after its response: each request still succeeds,
        // on a new connection when the pooled one is found closed.
        let (addr, accepted) = server(true).await;
        for _ in 0..5 {
            get(&p, addr).await.expect("request after the upstream closed");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);

        // Nobody listening: a connect error, not a request error.
        let gone = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let body: ProxyBody = {
            use http_body_util::BodyExt;
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed()
        };
        match p.send(gone, Request::new(body)).await {
            Err(SendError::Connect(_)) => {}
            other => panic!("expected a connect error, got {:?}", other.map(|_| ())),
        }
    }

    #[tokio::test]
    async fn pool_reaps_idle_connections() {
        let (addr, accepted) = server(false).await;
        let p = pool(Duration::from_millis(50));
        get(&p, addr).await.expect("request");
        assert_eq!(p.idle_count(addr), 1);
        tokio::time::sleep(Duration::from_millis(120)).await;
        p.reap();
        assert_eq!(p.idle_count(addr), 0, "idle past the timeout");
        get(&p, addr).await.expect("request");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the reaped connection was not reused"
        );
    }

    #[test]
    fn load_balance_parses() {
        assert_eq!("p2c".parse::<LoadBalance>(), Ok(LoadBalance::P2c));
        assert_eq!("round-robin".parse::<LoadBalance>(), Ok(LoadBalance::RoundRobin));
        assert!("random".parse::<LoadBalance>().is_err());
    }
}
