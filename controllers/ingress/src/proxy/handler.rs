//! One request, from the downstream connection to the upstream and back:
//!
//! ```text
//!   request ──> overload (503 + Retry-After) ──> framing and Host checks (400)
//!           ──> body size by Content-Length (413)
//!           ──> ACME token (plain listener) ──> HTTPS redirect (308) ──> route (404) ──> endpoints (503)
//!           ──> forwarded headers, hop-by-hop removed ──> upstream HTTP/1.1 or h2c (retry another
//!               endpoint on connect failure, idempotent only; 502; no response head in time: 504)
//!           ──> response streamed back | 101: both sides upgraded, bytes copied until one closes
//!   last response byte (or the client gone) ──> metrics, one access log line
//! ```
//!
//! Bodies are never collected: the downstream `Incoming` body is wrapped (bytes counted, the size
//! limit enforced while it streams) and handed to the upstream client; the upstream response body is
//! wrapped (gap timeout) and handed back the same way, wrapped once more to count bytes and to record
//! the request when its last byte is sent or the response is dropped.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::access_log::{AccessLog, Entry};
use super::metrics::{ProxyMetrics, RouteLabels, RouteSeries};
use super::snapshot::Snapshot;
use super::upstream::{InFlight, Pool, Pooled, SendError, Upstreams};
use super::{BoxError, ProxyBody, ProxyConfig, SharedSnapshot};
use crate::host::RequestHost;
use crate::routes::{BackendProtocol, BackendRef, Match};

pub(crate) const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the handler knows about the downstream connection. With the PROXY protocol, `peer` is the
/// client the header named.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// One downstream connection as the request path sees it: its addresses, the forwarded header
/// values that depend on the connection only (built once, cloned per request), and the metric
/// series of the route its last request matched (a connection mostly asks one route).
pub(crate) struct Conn {
    pub info: ConnInfo,
    pub state: Arc<ConnState>,
    x_forwarded_for: Option<HeaderValue>,
    x_forwarded_proto: HeaderValue,
    x_forwarded_port: HeaderValue,
    /// `for=...;proto=...` of the `Forwarded` header.
    forwarded: String,
    /// The `Forwarded` value without a host (a request without a printable Host).
    forwarded_no_host: Option<HeaderValue>,
    last_route: Mutex<Option<CachedRoute>>,
}

/// The series of one route of one snapshot. The snapshot is held weakly: the pointer is compared
/// only, and a `Weak` keeps the address from being reused by a later snapshot.
struct CachedRoute {
    snapshot: Weak<Snapshot>,
    route: usize,
    series: Arc<RouteSeries>,
}

impl Conn {
    pub fn new(info: ConnInfo, state: Arc<ConnState>) -> Arc<Self> {
        let proto = if info.tls { "https" } else { "http" };
        let forwarded = format!("for={};proto={}", forwarded_for(info.peer.ip()), proto);
        Arc::new(Conn {
            x_forwarded_for: HeaderValue::from_str(&info.peer.ip().to_string()).ok(),
            x_forwarded_proto: HeaderValue::from_static(proto),
            x_forwarded_port: HeaderValue::from(info.local.port()),
            forwarded_no_host: HeaderValue::from_str(&forwarded).ok(),
            forwarded,
            info,
            state,
            last_route: Mutex::new(None),
        })
    }

    /// The series of `route` (a pointer into `snapshot`), cached for the next request.
    fn series(
        &self,
        metrics: &ProxyMetrics,
        snapshot: &Arc<Snapshot>,
        route: usize,
        labels: impl FnOnce() -> RouteLabels,
    ) -> Arc<RouteSeries> {
        let mut last = self.last_route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = last.as_ref()
            && c.route == route
            && std::ptr::eq(c.snapshot.as_ptr(), Arc::as_ptr(snapshot))
        {
            return c.series.clone();
        }
        let series = Arc::new(RouteSeries::new(metrics, labels()));
        *last = Some(CachedRoute {
            snapshot: Arc::downgrade(snapshot),
            route,
            series: series.clone(),
        });
        series
    }
}

pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub snapshot: Arc<SharedSnapshot>,
    pub upstreams: Upstreams,
    pub tunnels: TaskTracker,
    pub cancel: CancellationToken,
    pub request_ids: RequestIds,
    pub metrics: ProxyMetrics,
    pub access_log: Option<AccessLog>,
    /// Requests being answered (until their last response byte), for `max_in_flight`.
    pub in_flight: AtomicUsize,
}

/// One downstream connection's entry in the open-connections gauge: `pending` until the TLS
/// handshake's ALPN or the first request tells the protocol.
pub(crate) struct ConnState {
    listener: &'static str,
    protocol: Mutex<&'static str>,
    /// Set once classified: later requests skip the lock.
    classified: AtomicBool,
    metrics: ProxyMetrics,
}

const PENDING: &str = "pending";

impl ConnState {
    pub fn new(listener: &'static str, metrics: &ProxyMetrics) -> Arc<Self> {
        metrics.connections.with_label_values(&[listener, PENDING]).inc();
        metrics.connections_total.with_label_values(&[listener]).inc();
        Arc::new(ConnState {
            listener,
            protocol: Mutex::new(PENDING),
            classified: AtomicBool::new(false),
            metrics: metrics.clone(),
        })
    }

    /// Moves the connection from `pending` to `protocol` (`http1`, `h2`); later calls do nothing.
    pub fn classify(&self, protocol: &'static str) {
        if self.classified.load(Ordering::Relaxed) {
            return;
        }
        self.classified.store(true, Ordering::Relaxed);
        let mut p = self.protocol.lock().unwrap_or_else(|e| e.into_inner());
        if *p == PENDING {
            self.metrics
                .connections
                .with_label_values(&[self.listener, PENDING])
                .dec();
            self.metrics
                .connections
                .with_label_values(&[self.listener, protocol])
                .inc();
            *p = protocol;
        }
    }
}

impl Drop for ConnState {
    fn drop(&mut self) {
        let p = *self.protocol.lock().unwrap_or_else(|e| e.into_inner());
        self.metrics
            .connections
            .with_label_values(&[self.listener, p])
            .dec();
    }
}

/// Request ids: a random per-process prefix and a counter, 32 hex digits, unique without a lock.
pub(crate) struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        RequestIds {
            prefix: h.finish(),
            counter: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Mixing the counter keeps ids from looking sequential in logs while staying unique.
        let mixed = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.prefix.rotate_left(17);
        let mut id = [0u8; 32];
        for (i, word) in [self.prefix, mixed].into_iter().enumerate() {
            for j in 0..16 {
                let nibble = (word >> (60 - 4 * j)) & 0xf;
                id[16 * i + j] = b"0123456789abcdef"[nibble as usize];
            }
        }
        HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

/// An incoming X-Request-Id is kept when it is 1..=128 characters of `[A-Za-z0-9._-]` (no way to
/// smuggle separators into logs); anything else is replaced.
fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

pub(crate) fn local_response(status: StatusCode, text: &str) -> Response<ProxyBody> {
    let mut resp = Response::new(full(format!("{} {}\n", status.as_u16(), text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// The hop-by-hop headers of RFC 9110 section 7.6.1, plus the ones every proxy strips.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        if keep_upgrade && name == header::UPGRADE {
            continue;
        }
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if !keep_upgrade {
        headers.remove(header::UPGRADE);
    }
}

fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// The request's host as sent (HTTP/2 `:authority` or the Host header), when printable: the value
/// is reused for Host, X-Forwarded-Host and routing without copies.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(a) = req.uri().authority() {
        return HeaderValue::from_str(a.as_str()).ok();
    }
    req.headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned()
}

fn host_str(host: &Option<HeaderValue>) -> &str {
    host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or("")
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request's future, boxed (see [`handle`]).
pub(crate) type HandleFuture = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

/// The request entry point (a hyper service function). The request's state (several KB: the
/// record, the route, the upstream send) lives in a box allocated per request and freed with the
/// response head: hyper keeps the slot of a connection's service future for the connection's whole
/// life, so an idle keep-alive connection holds 16 bytes there instead of the largest request state.
pub(crate) fn handle(shared: Arc<Shared>, conn: Arc<Conn>, req: Request<Incoming>) -> HandleFuture {
    Box::pin(serve(shared, conn, req))
}

async fn serve(
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    conn.state.classify(if req.version() == Version::HTTP_2 {
        "h2"
    } else {
        "http1"
    });
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => shared.request_ids.next(),
    };
    let logging = shared.access_log.is_some();
    let in_flight = shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
    shared.metrics.in_flight.inc();
    let mut record = Record {
        shared: shared.clone(),
        time: SystemTime::now(),
        started,
        peer: conn.info.peer,
        method: req.method().clone(),
        // Only the access log needs these copies; without it a request allocates none of them.
        target: if logging {
            req.uri()
                .path_and_query()
                .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_string())
        } else {
            String::new()
        },
        host: if logging {
            request_host(&req)
                .map(|h| host_str(&Some(h)).to_string())
                .unwrap_or_default()
        } else {
            String::new()
        },
        version: req.version(),
        user_agent: match req.headers().get(header::USER_AGENT) {
            Some(v) if logging => String::from_utf8_lossy(v.as_bytes()).into_owned(),
            _ => String::new(),
        },
        request_id: if logging {
            String::from_utf8_lossy(request_id.as_bytes()).into_owned()
        } else {
            String::new()
        },
        labels: RouteLabels::fixed("unmatched"),
        series: None,
        // Until a response exists: a client that goes away first is recorded as nginx's 499.
        status: CLIENT_CLOSED,
        upstream_addr: None,
        upstream_duration: None,
        body: Arc::new(BodyState::default()),
        bytes_out: 0,
        endpoint: None,
    };
    let max = shared.config.max_in_flight;
    let mut resp = if max > 0 && in_flight > max {
        // Shed load at once instead of queueing: the client (or the LB in front) retries elsewhere.
        shared.metrics.overload.inc();
        record.labels = RouteLabels::fixed("overload");
        let mut resp = local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: the proxy is overloaded",
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    } else {
        route(&shared, &conn, req, request_id.clone(), &mut record).await
    };
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id);
    record.status = resp.status();
    let (parts, body) = resp.into_parts();
    let body = Tracked {
        inner: body,
        record: Some(record),
    };
    Ok(Response::from_parts(parts, body.boxed()))
}

/// nginx's "client closed request": the request future was dropped before a response head existed.
const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Everything one request records when it ends: metrics and the access log line.
struct Record {
    shared: Arc<Shared>,
    time: SystemTime,
    started: Instant,
    peer: SocketAddr,
    method: Method,
    target: String,
    host: String,
    version: Version,
    user_agent: String,
    request_id: String,
    labels: RouteLabels,
    /// The matched route's series (cached per connection); `None`: looked up from `labels`.
    series: Option<Arc<RouteSeries>>,
    status: StatusCode,
    upstream_addr: Option<SocketAddr>,
    upstream_duration: Option<Duration>,
    /// The request body's byte count and state, shared with the body on its way upstream.
    body: Arc<BodyState>,
    bytes_out: u64,
    /// The upstream endpoint's in-flight count (P2C), held until the response is done.
    endpoint: Option<InFlight>,
}

impl Drop for Record {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        shared.metrics.in_flight.dec();
        let took = self.started.elapsed();
        let bytes_in = self.body.seen.load(Ordering::Relaxed);
        let series = match self.series.take() {
            Some(s) => s,
            None => Arc::new(RouteSeries::new(&shared.metrics, self.labels.clone())),
        };
        series.requests(&shared.metrics, &self.method, self.status).inc();
        series.request_duration.observe(took.as_secs_f64());
        if bytes_in > 0 {
            series.request_bytes.inc_by(bytes_in);
        }
        if self.bytes_out > 0 {
            series.response_bytes.inc_by(self.bytes_out);
        }
        if let Some(d) = self.upstream_duration {
            series.upstream_duration(&shared.metrics).observe(d.as_secs_f64());
        }
        let l = &self.labels;
        if let Some(log) = &shared.access_log {
            let protocol = match self.version {
                Version::HTTP_09 => "HTTP/0.9",
                Version::HTTP_10 => "HTTP/1.0",
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_3 => "HTTP/3.0",
                _ => "HTTP/1.1",
            };
            let entry = Entry {
                time: self.time,
                remote_addr: self.peer.ip(),
                host: &self.host,
                method: self.method.as_str(),
                path: &self.target,
                protocol,
                status: self.status.as_u16(),
                upstream_addr: self.upstream_addr,
                request_duration: took,
                upstream_duration: self.upstream_duration,
                bytes_in,
                bytes_out: self.bytes_out,
                request_id: &self.request_id,
                namespace: &l.namespace,
                ingress: &l.ingress,
                service: &l.service,
                user_agent: &self.user_agent,
            };
            log.send(entry.to_line());
        }
    }
}

/// The response body as sent downstream: counts bytes, and records the request (drops the
/// [`Record`]) at the last frame, on an error, or when hyper drops the body (client gone, HEAD).
struct Tracked {
    inner: ProxyBody,
    record: Option<Record>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(rec)) = (frame.data_ref(), self.record.as_mut()) {
                    rec.bytes_out += d.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.record = None;
                }
            }
            Poll::Ready(_) => self.record = None,
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_body_bytes ({0} bytes)")]
struct BodyTooLarge(u64);

#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?} (upstream_response_timeout)")]
struct UpstreamStalled(Duration);

/// What the request path learns from the request body while it streams upstream.
#[derive(Default)]
struct BodyState {
    /// Bytes received.
    seen: AtomicU64,
    /// The size limit was passed (the upstream error becomes a 413).
    over: AtomicBool,
    /// Reading it from the client failed (invalid chunked framing, the client gone mid-body): the
    /// upstream error becomes a 400, as in nginx.
    bad: AtomicBool,
    /// Read to its end: the upstream connection is idle once the response is too.
    done: AtomicBool,
    /// Told when `done` is set: the upstream response timeout starts then.
    finished: tokio::sync::Notify,
    /// Frames read so far (the upload progresses while this grows).
    frames: AtomicU64,
    /// The last read of the body is waiting on the client (whose gaps have their own timeout).
    waiting_client: AtomicBool,
    /// The client sent nothing of the body for `client_body_timeout`: the error becomes a 408.
    client_timed_out: AtomicBool,
}

impl BodyState {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.finished.notify_waiters();
        }
    }

    /// Resolves when the upstream has sent no response head for `t` counted from the end of the
    /// request body (nginx's proxy_read_timeout starts once the request is sent), or, while the
    /// body is still going up, when the upstream took none of it for `t` (proxy_send_timeout).
    /// A client that is slow to send the body is bounded by `client_body_timeout` instead.
    async fn response_timeout(&self, t: Duration) {
        loop {
            let finished = self.finished.notified();
            if self.done.load(Ordering::Relaxed) {
                break;
            }
            let seen = self.frames.load(Ordering::Relaxed);
            tokio::select! {
                _ = finished => break,
                _ = tokio::time::sleep(t) => {
                    if self.frames.load(Ordering::Relaxed) == seen
                        && !self.waiting_client.load(Ordering::Relaxed)
                        && !self.done.load(Ordering::Relaxed)
                    {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(t).await;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client sent nothing of the request body for {0:?} (client_body_timeout)")]
struct ClientBodyTimeout(Duration);

/// The downstream request body on its way upstream: bytes counted, the size limit enforced while
/// it streams (a chunked body has no length to check up front).
struct RequestBody {
    inner: Incoming,
    state: Arc<BodyState>,
    limit: Option<u64>,
    /// Longest wait for the next piece of the body from the client (nginx's client_body_timeout).
    gap: Option<Duration>,
    /// Armed when a read waits on the client, reset after progress (as in [`UpstreamBody`]).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let waiting = r.is_pending();
        self.state.waiting_client.store(waiting, Ordering::Relaxed);
        if !waiting {
            self.progressed = true;
            self.state.frames.fetch_add(1, Ordering::Relaxed);
        }
        match r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    let n = d.len() as u64;
                    let total = self.state.seen.fetch_add(n, Ordering::Relaxed) + n;
                    if let Some(limit) = self.limit
                        && total > limit
                    {
                        self.state.over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(limit)))));
                    }
                }
                if self.inner.is_end_stream() {
                    self.state.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.state.bad.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Ready(None) => {
                self.state.finish();
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(t) = self.gap else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::now() + t;
                let progressed = std::mem::replace(&mut self.progressed, false);
                match self.sleep.as_mut() {
                    Some(sleep) if progressed => sleep.as_mut().reset(deadline),
                    Some(_) => {}
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                if self
                    .sleep
                    .as_mut()
                    .is_some_and(|s| s.as_mut().poll(cx).is_ready())
                {
                    self.state.client_timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(ClientBodyTimeout(t)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream response body: fails (the downstream response is cut, never silently truncated)
/// when the upstream sends nothing for `timeout`. Read to its end (and the request body too), it
/// hands its HTTP/1.1 connection back to the pool.
struct UpstreamBody {
    inner: Incoming,
    timeout: Option<Duration>,
    /// Armed when the body first waits, re-armed when a wait follows progress: no timer at all for
    /// a body that is there when asked for.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
    /// `upstream_timeouts` and its (namespace, service) labels, looked up only on a timeout.
    stalled: Option<(prometheus::IntCounterVec, Arc<str>, Arc<str>)>,
    /// The pooled connection (HTTP/1.1), the pool, and the request body's state.
    conn: Option<(Pooled, Arc<Pool>, Arc<BodyState>)>,
    done: bool,
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if let Some((conn, pool, request)) = self.conn.take()
            && (self.done || self.inner.is_end_stream())
            && request.done.load(Ordering::Relaxed)
        {
            pool.put(conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                self.progressed = true;
                match &r {
                    None | Some(Err(_)) => self.done = r.is_none(),
                    Some(Ok(_)) => self.done = self.inner.is_end_stream(),
                }
                Poll::Ready(r.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
            }
            Poll::Pending => {
                let Some(t) = self.timeout else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::now() + t;
                let progressed = std::mem::replace(&mut self.progressed, false);
                if let Some(sleep) = self.sleep.as_mut() {
                    if progressed {
                        sleep.as_mut().reset(deadline);
                    }
                } else {
                    self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
                }
                if self
                    .sleep
                    .as_mut()
                    .is_some_and(|s| s.as_mut().poll(cx).is_ready())
                {
                    if let Some((c, namespace, service)) = self.stalled.take() {
                        c.with_label_values(&[&*namespace, &*service]).inc();
                    }
                    return Poll::Ready(Some(Err(Box::new(UpstreamStalled(t)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn bad_request(text: &str) -> Response<ProxyBody> {
    let mut resp = local_response(StatusCode::BAD_REQUEST, text);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Framing hyper accepts but a proxy must not: a `Transfer-Encoding` other than exactly one
/// `chunked` (hyper refuses a non-chunked final coding; `gzip, chunked` and repeated lines are
/// refused here, as nginx does, because upstreams disagree on them).
fn framing_error(req: &Request<Incoming>) -> Option<&'static str> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let mut te = req.headers().get_all(header::TRANSFER_ENCODING).iter();
    if let Some(first) = te.next()
        && (te.next().is_some() || !first.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
    {
        return Some("Bad Request: Transfer-Encoding other than chunked");
    }
    None
}

/// RFC 9113 section 8.2.3: an HTTP/2 client may split `cookie` into one field per cookie (browsers
/// do, for HPACK); before an HTTP/1.1 hop they MUST be joined into one with "; " (as nginx does).
/// Many HTTP/1.1 servers read only the first `Cookie` line. Nothing is done for one field.
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// RFC 9112 section 3.2, as nginx: an HTTP/1.1 request without Host, any HTTP/1 request with more
/// than one Host line or an invalid one (not `host[:port]`) is a 400 (two Hosts are a classic
/// request-smuggling and cache-poisoning probe: hops would disagree on the host).
fn host_error(req: &Request<Incoming>) -> Option<&'static str> {
    let version = req.version();
    if version != Version::HTTP_11 && version != Version::HTTP_10 {
        return None;
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if version == Version::HTTP_11 => Some("Bad Request: HTTP/1.1 request without Host"),
        (None, _) => None,
        (Some(_), Some(_)) => Some("Bad Request: more than one Host"),
        (Some(h), None) if !crate::host::valid_host_header(h.as_bytes()) => Some("Bad Request: invalid Host"),
        (Some(_), None) => None,
    }
}

fn labels_for(m: &Match<'_>) -> RouteLabels {
    let (ingress, backend): (&crate::routes::IngressRef, &BackendRef) = match m {
        Match::Route(r) => (&r.ingress, &r.backend),
        Match::Default(d) => (&d.ingress, &d.backend),
        Match::NotFound => return RouteLabels::fixed("unmatched"),
    };
    RouteLabels {
        namespace: Arc::from(ingress.namespace.as_str()),
        ingress: Arc::from(ingress.name.as_str()),
        service: Arc::from(backend.service.as_str()),
    }
}

async fn route(
    shared: &Arc<Shared>,
    conn: &Conn,
    req: Request<Incoming>,
    request_id: HeaderValue,
    record: &mut Record,
) -> Response<ProxyBody> {
    if let Some(why) = framing_error(&req).or_else(|| host_error(&req)) {
        record.labels = RouteLabels::fixed("invalid");
        return bad_request(why);
    }
    if let Some(limit) = shared.config.max_body_bytes
        && req.body().size_hint().lower() > limit
    {
        // Refused by Content-Length before a byte of the body is read; the connection closes (the
        // unread body cannot be skipped safely).
        record.labels = RouteLabels::fixed("invalid");
        let mut resp = local_response(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return resp;
    }
    let snapshot = shared.snapshot.load();
    let host = request_host(&req);
    let host_ref = host_str(&host);
    let path = req.uri().path();
    let tls = conn.info.tls;

    let mut skip_redirect = false;
    if !tls && path.starts_with(ACME_PREFIX) {
        let token = &path[ACME_PREFIX.len()..];
        if let Some(answer) = snapshot.acme_answer(host_ref, token) {
            record.labels = RouteLabels::fixed("acme");
            let mut resp = Response::new(full(answer.to_string()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return resp;
        }
        // Unknown token: route it (a backend may be the solver), but never redirect a challenge.
        skip_redirect = true;
    }

    if !tls
        && !skip_redirect
        && shared.config.redirect_to_https
        && let Some((resp, ingress)) = redirect(shared, &snapshot, host_ref, req.uri())
    {
        record.labels = RouteLabels {
            namespace: Arc::from(ingress.namespace.as_str()),
            ingress: Arc::from(ingress.name.as_str()),
            service: Arc::from("redirect"),
        };
        return resp;
    }

    let matched = snapshot
        .routes()
        .route(host_ref, req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let route_ptr = match &matched {
        Match::Route(r) => Some(std::ptr::from_ref::<crate::routes::Route>(r) as usize),
        Match::Default(d) => Some(std::ptr::from_ref::<crate::routes::DefaultBackend>(d) as usize),
        Match::NotFound => None,
    };
    match route_ptr {
        Some(ptr) => {
            let series = conn.series(&shared.metrics, &snapshot, ptr, || labels_for(&matched));
            record.labels = series.labels.clone();
            record.series = Some(series);
        }
        None => record.labels = labels_for(&matched),
    }
    let Some(backend) = matched.backend() else {
        return local_response(StatusCode::NOT_FOUND, "Not Found");
    };
    let protocol = matched.protocol();
    let endpoints = shared.upstreams.order(backend, snapshot.endpoints(backend));
    if endpoints.is_empty() {
        return local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: no ready endpoint",
        );
    }
    let target = Target {
        backend,
        protocol,
        endpoints: &endpoints,
    };
    forward(shared, conn, req, host, request_id, target, record).await
}

struct Target<'a> {
    backend: &'a BackendRef,
    protocol: BackendProtocol,
    endpoints: &'a [SocketAddr],
}
fn redirect(
    shared: &Shared,
    snapshot: &Snapshot,
    host: &str,
    uri: &Uri,
) -> Option<(Response<ProxyBody>, crate::routes::IngressRef)> {
    let normalized = RequestHost::parse(host)?;
    let binding = snapshot.routes().tls_for(host)?;
    let port = match shared.config.https_redirect_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{}{}", normalized.as_str(), port, pq);
    let value = HeaderValue::from_str(&location).ok()?;
    let mut resp = local_response(StatusCode::PERMANENT_REDIRECT, "Permanent Redirect");
    resp.headers_mut().insert(header::LOCATION, value);
    Some((resp, binding.ingress.clone()))
}

fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        // RFC 7239 section 6: IPv6 nodes are bracketed and the value quoted.
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
const X_SCHEME: HeaderName = HeaderName::from_static("x-scheme");
const X_ORIGINAL_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-original-forwarded-for");
const X_ORIGINAL_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-original-forwarded-host");
/// httpoxy (CVE-2016-5385): CGI-style backends turn a `Proxy` request header into `HTTP_PROXY`.
const PROXY: HeaderName = HeaderName::from_static("proxy");

/// The client's own value of a header, every line joined with ", " (nginx's `$http_x_forwarded_for`).
fn client_value(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?.clone();
    let Some(second) = values.next() else {
        return Some(first);
    };
    let mut joined = first.as_bytes().to_vec();
    for v in std::iter::once(second).chain(values) {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(v.as_bytes());
    }
    HeaderValue::from_bytes(&joined).ok()
}

fn set_forwarded_headers(
    headers: &mut HeaderMap,
    conn: &Conn,
    host: Option<&HeaderValue>,
    request_id: HeaderValue,
) {
    // The proxy is the edge: what a client claims in X-Forwarded-*/Forwarded/X-Real-IP/X-Scheme is
    // replaced, never trusted (a client could otherwise choose the address a backend logs or
    // rate-limits).
    let put = |headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>| match value {
        Some(v) => {
            headers.insert(name, v);
        }
        None => {
            headers.remove(name);
        }
    };
    // What the client sent in X-Forwarded-For/-Host, passed on as ingress-nginx does (under names
    // a backend does not trust by default); without one, a client's X-Original-* is removed.
    let original_for = client_value(headers, &X_FORWARDED_FOR);
    let original_host = client_value(headers, &X_FORWARDED_HOST);
    put(headers, X_ORIGINAL_FORWARDED_FOR, original_for);
    put(headers, X_ORIGINAL_FORWARDED_HOST, original_host);
    put(headers, X_FORWARDED_FOR, conn.x_forwarded_for.clone());
    // ingress-nginx always sets X-Real-IP ($remote_addr) and the scheme under two more names.
    put(headers, X_REAL_IP, conn.x_forwarded_for.clone());
    put(headers, X_FORWARDED_SCHEME, Some(conn.x_forwarded_proto.clone()));
    put(headers, X_SCHEME, Some(conn.x_forwarded_proto.clone()));
    headers.remove(PROXY);
    put(headers, X_FORWARDED_PROTO, Some(conn.x_forwarded_proto.clone()));
    put(headers, X_FORWARDED_PORT, Some(conn.x_forwarded_port.clone()));
    put(headers, X_FORWARDED_HOST, host.cloned());
    let quotable = host.filter(|h| {
        h.as_bytes()
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"' && *b != b'\\')
    });
    let forwarded = match quotable.and_then(|h| h.to_str().ok()) {
        Some(h) => HeaderValue::from_str(&format!("{};host=\"{h}\"", conn.forwarded)).ok(),
        None => conn.forwarded_no_host.clone(),
    };
    put(headers, FORWARDED, forwarded);
    headers.insert(X_REQUEST_ID, request_id);
}

async fn forward(
    shared: &Arc<Shared>,
    conn: &Conn,
    mut req: Request<Incoming>,
    host: Option<HeaderValue>,
    request_id: HeaderValue,
    target: Target<'_>,
    record: &mut Record,
) -> Response<ProxyBody> {
    let h2c = target.protocol == BackendProtocol::H2c;
    // Upgrades need HTTP/1.1 on both sides.
    let upgrade = !h2c && wants_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // gRPC needs `te: trailers` upstream (the one TE value HTTP/2 allows).
    let te_trailers = h2c
        && parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    set_forwarded_headers(&mut parts.headers, conn, host.as_ref(), request_id);
    if parts.version == Version::HTTP_2 && !h2c {
        join_cookies(&mut parts.headers);
    }
    // HTTP/1.1 upstream needs a Host; a client without one (HTTP/1.0) gets the empty value RFC 9112
    // section 3.2 prescribes for a target without authority.
    parts
        .headers
        .insert(header::HOST, host.unwrap_or_else(|| HeaderValue::from_static("")));
    // A body-less idempotent request can be sent again as is; anything else has been (partly)
    // consumed by the first attempt. Over HTTP/1.1 any other request gets its connection before
    // its body is handed over, so a connect failure (nothing sent) still tries the next endpoint,
    // as nginx does whatever the method (with one endpoint there is nothing to retry).
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let preconnect = !h2c && !retryable && target.endpoints.len() > 1;
    let state = record.body.clone();
    if body.is_end_stream() {
        state.finish();
    }
    let path_and_query = parts.uri.path_and_query().cloned();
    let mut body = Some(
        RequestBody {
            inner: body,
            state: state.clone(),
            limit: shared.config.max_body_bytes,
            gap: Some(shared.config.client_body_timeout).filter(|t| !t.is_zero()),
            sleep: None,
            progressed: false,
        }
        .boxed(),
    );
    let endpoints = target.endpoints;
    let attempts = if retryable || preconnect {
        endpoints.len().min(3)
    } else {
        1
    };
    let service = [target.backend.namespace.as_str(), target.backend.service.as_str()];
    let timeout = Some(shared.config.upstream_response_timeout).filter(|t| !t.is_zero());
    let pool = shared.upstreams.http1();
    // nginx answers with the status of the last try: a connect that timed out is a 504 ("upstream
    // timed out while connecting"), a refused or unreachable one a 502.
    let mut last_connect_timed_out = false;

    for (i, endpoint) in endpoints.iter().take(attempts).enumerate() {
        if i > 0 {
            shared.metrics.upstream_retries.with_label_values(&service).inc();
        }
        let ready = if preconnect {
            match pool.connection(*endpoint).await {
                Ok(r) => Some(r),
                Err(SendError::Connect(e)) => {
                    last_connect_timed_out = connect_failed(shared, *endpoint, &service, i, &*e);
                    continue;
                }
                Err(SendError::Request(e)) => {
                    tracing::debug!(%endpoint, error = %e, "upstream handshake failed");
                    return local_response(StatusCode::BAD_GATEWAY, "Bad Gateway");
                }
            }
        } else {
            None
        };
        // HTTP/1.1 connections are to the endpoint already: the target is origin-form. The h2c
        // client picks its connection by the absolute URI's authority.
        let uri = match (&path_and_query, h2c) {
            (Some(pq), false) => Uri::from(pq.clone()),
            (None, false) => Uri::from_static("/"),
            (pq, true) => {
                let pq = pq.as_ref().map_or("/", |p| p.as_str());
                match format!("http://{endpoint}{pq}").parse::<Uri>() {
                    Ok(u) => u,
                    Err(_) => return bad_request("Bad Request: request target"),
                }
            }
        };
        let mut upstream = Request::new(body.take().unwrap_or_else(empty));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = if h2c { Version::HTTP_2 } else { Version::HTTP_11 };
        // The last attempt takes the headers; earlier ones (retries are possible) copy them. A
        // request with a connection already is sent on it (no retry after that).
        *upstream.headers_mut() = if i + 1 < attempts && ready.is_none() {
            parts.headers.clone()
        } else {
            std::mem::take(&mut parts.headers)
        };
        record.upstream_addr = Some(*endpoint);
        record.endpoint = shared.upstreams.track(*endpoint);
        let sent = Instant::now();
        let send = async {
            if h2c {
                match shared.upstreams.h2c().request(upstream).await {
                    Ok(resp) => Ok((resp, None)),
                    Err(e) if e.is_connect() => Err(SendError::Connect(Box::new(e))),
                    Err(e) => Err(SendError::Request(Box::new(e))),
                }
            } else {
                match ready {
                    Some(r) => pool.send_on(*endpoint, r, upstream).await,
                    None => pool.send(*endpoint, upstream).await,
                }
                .map(|(resp, pooled)| (resp, Some(pooled)))
            }
        };
        let result = match timeout {
            Some(t) => {
                tokio::pin!(send);
                tokio::select! {
                    biased;
                    r = &mut send => r,
                    _ = state.response_timeout(t) => {
                        shared.metrics.upstream_timeouts.with_label_values(&service).inc();
                        tracing::debug!(%endpoint, "upstream response timed out");
                        return local_response(StatusCode::GATEWAY_TIMEOUT, "Gateway Timeout");
                    }
                }
            }
            None => send.await,
        };
        match result {
            Ok((mut resp, pooled)) => {
                record.upstream_duration = Some(sent.elapsed());
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    // The connection belongs to the tunnel now, never back to the pool.
                    return match downstream_upgrade {
                        Some(down) => tunnel(shared, down, resp),
                        None => local_response(StatusCode::BAD_GATEWAY, "Bad Gateway: unexpected 101"),
                    };
                }
                let keep_upgrade = false;
                strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
                let (parts, body) = resp.into_parts();
                let body = UpstreamBody {
                    inner: body,
                    timeout,
                    sleep: None,
                    progressed: false,
                    stalled: Some((
                        shared.metrics.upstream_timeouts.clone(),
                        record.labels.namespace.clone(),
                        record.labels.service.clone(),
                    )),
                    conn: pooled.map(|p| (p, pool.clone(), state.clone())),
                    done: false,
                };
                return Response::from_parts(parts, body.boxed());
            }
            Err(SendError::Connect(e)) => {
                last_connect_timed_out = connect_failed(shared, *endpoint, &service, i, &*e);
            }
            Err(SendError::Request(e)) => {
                if state.client_timed_out.load(Ordering::Relaxed) {
                    tracing::debug!(%endpoint, error = %e, "request body timed out");
                    let mut resp = local_response(StatusCode::REQUEST_TIMEOUT, "Request Timeout");
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return resp;
                }
                if state.over.load(Ordering::Relaxed) {
                    let mut resp = local_response(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large");
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return resp;
                }
                if state.bad.load(Ordering::Relaxed) {
                    tracing::debug!(%endpoint, error = %e, "request body refused");
                    return bad_request("Bad Request: invalid request body");
                }
                tracing::debug!(%endpoint, error = %e, "upstream request failed");
                return local_response(StatusCode::BAD_GATEWAY, "Bad Gateway");
            }
        }
    }
    if last_connect_timed_out {
        shared.metrics.upstream_timeouts.with_label_values(&service).inc();
        return local_response(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway Timeout: the upstream did not accept the connection in time",
        );
    }
    local_response(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway: no endpoint accepted the connection",
    )
}

/// A connect failure: the endpoint ejected, counted; whether it was a timeout.
fn connect_failed(
    shared: &Shared,
    endpoint: SocketAddr,
    service: &[&str; 2],
    attempt: usize,
    e: &(dyn std::error::Error + 'static),
) -> bool {
    shared.upstreams.eject(endpoint);
    shared
        .metrics
        .upstream_connect_errors
        .with_label_values(service)
        .inc();
    shared.metrics.upstream_ejections.with_label_values(service).inc();
    tracing::debug!(%endpoint, attempt = attempt + 1, error = %e, "upstream connect failed");
    is_timeout(e)
}

/// Whether an error (or one of its sources) is a timeout: the pool's connect timeout, hyper-util's
/// (h2c), or the kernel's `ETIMEDOUT`.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = e.source();
    }
    false
}

/// Answers 101 downstream and, once both sides have switched, copies bytes both ways. The tunnel
/// lives in its own task: it does not depend on the snapshot, so a swap never touches it.
fn tunnel(
    shared: &Arc<Shared>,
    downstream: hyper::upgrade::OnUpgrade,
    mut upstream: Response<Incoming>,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut upstream);
    let cancel = shared.cancel.clone();
    let drain = shared.config.drain_timeout;
    shared.tunnels.spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream_upgrade) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        let copy = tokio::io::copy_bidirectional(&mut down, &mut up);
        tokio::pin!(copy);
        tokio::select! {
            _ = &mut copy => {}
            _ = cancel.cancelled() => {
                // Shutdown: give the tunnel the drain time to finish on its own.
                let _ = tokio::time::timeout(drain, copy).await;
            }
        }
    });
    let (mut parts, _) = upstream.into_parts();
    // 101 keeps Connection/Upgrade: they are the point of the response.
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.remove(HeaderName::from_static("keep-alive"));
    Response::from_parts(parts, empty())
}
