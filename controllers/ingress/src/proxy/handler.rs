//! One request, from the downstream connection to the upstream and back:
//!
//! ```text
//!   request ──> framing checks (400) ──> ACME token (plain listener) ──> HTTPS redirect (308)
//!           ──> route (404) ──> endpoints (503) ──> forwarded headers, hop-by-hop removed
//!           ──> upstream HTTP/1.1 (retry another endpoint on connect failure, idempotent only; 502)
//!           ──> response streamed back | 101: both sides upgraded, bytes copied until one closes
//! ```
//!
//! Bodies are never collected: the downstream `Incoming` body is boxed and handed to the upstream
//! client, and the upstream response body is handed back the same way.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ProxyBody;
use super::snapshot::Snapshot;
use super::upstream::Upstreams;
use super::{ProxyConfig, SharedSnapshot};
use crate::host::RequestHost;

pub(crate) const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// What the handler knows about the downstream connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

pub(crate) struct Shared {
    pub config: ProxyConfig,
    pub snapshot: Arc<SharedSnapshot>,
    pub upstreams: Upstreams,
    pub tunnels: TaskTracker,
    pub cancel: CancellationToken,
    pub request_ids: RequestIds,
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
        let id = format!("{:016x}{:016x}", self.prefix, mixed);
        HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
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

fn request_host(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The request entry point (a hyper service function).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let request_id = match req.headers().get("x-request-id") {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => shared.request_ids.next(),
    };
    let mut resp = route(&shared, conn, req, request_id.clone()).await;
    resp.headers_mut()
        .insert(HeaderName::from_static("x-request-id"), request_id);
    Ok(resp)
}

async fn route(
    shared: &Arc<Shared>,
    conn: ConnInfo,
    req: Request<Incoming>,
    request_id: HeaderValue,
) -> Response<ProxyBody> {
    let snapshot = shared.snapshot.load();
    let host = request_host(&req);
    let host_ref = host.as_deref().unwrap_or("");
    let path = req.uri().path();

    let mut skip_redirect = false;
    if !conn.tls && path.starts_with(ACME_PREFIX) {
        let token = &path[ACME_PREFIX.len()..];
        if let Some(answer) = snapshot.acme_answer(host_ref, token) {
            let mut resp = Response::new(full(answer.to_string()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return resp;
        }
        // Unknown token: route it (a backend may be the solver), but never redirect a challenge.
        skip_redirect = true;
    }

    if !conn.tls
        && !skip_redirect
        && shared.config.redirect_to_https
        && let Some(resp) = redirect(shared, &snapshot, host_ref, req.uri())
    {
        return resp;
    }

    let matched = snapshot
        .routes()
        .route(host_ref, req.uri().path_and_query().map_or("/", |p| p.as_str()));
    let Some(backend) = matched.backend() else {
        return local_response(StatusCode::NOT_FOUND, "Not Found");
    };
    let endpoints = shared.upstreams.order(backend, snapshot.endpoints(backend));
    if endpoints.is_empty() {
        return local_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: no ready endpoint",
        );
    }
    forward(shared, conn, req, host, request_id, &endpoints).await
}

fn redirect(shared: &Shared, snapshot: &Snapshot, host: &str, uri: &Uri) -> Option<Response<ProxyBody>> {
    let normalized = RequestHost::parse(host)?;
    snapshot.routes().tls_for(host)?;
    let port = match shared.config.https_redirect_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{}{}", normalized.as_str(), port, pq);
    let value = HeaderValue::from_str(&location).ok()?;
    let mut resp = local_response(StatusCode::PERMANENT_REDIRECT, "Permanent Redirect");
    resp.headers_mut().insert(header::LOCATION, value);
    Some(resp)
}

fn forwarded_for(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        // RFC 7239 section 6: IPv6 nodes are bracketed and the value quoted.
        std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
    }
}

fn set_forwarded_headers(
    headers: &mut HeaderMap,
    conn: ConnInfo,
    host: Option<&str>,
    request_id: HeaderValue,
) {
    let proto = if conn.tls { "https" } else { "http" };
    let client = conn.peer.ip().to_string();
    // The proxy is the edge: what a client claims in X-Forwarded-*/Forwarded is replaced, never
    // trusted (a client could otherwise choose the address a backend logs or rate-limits).
    headers.remove("forwarded");
    let put = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        } else {
            headers.remove(name);
        }
    };
    put(headers, "x-forwarded-for", &client);
    put(headers, "x-forwarded-proto", proto);
    put(headers, "x-forwarded-port", &conn.local.port().to_string());
    match host {
        Some(h) => put(headers, "x-forwarded-host", h),
        None => {
            headers.remove("x-forwarded-host");
        }
    }
    let mut forwarded = format!("for={};proto={}", forwarded_for(conn.peer.ip()), proto);
    if let Some(h) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
        forwarded.push_str(&format!(";host=\"{h}\""));
    }
    put(headers, "forwarded", &forwarded);
    headers.insert(HeaderName::from_static("x-request-id"), request_id);
}

async fn forward(
    shared: &Arc<Shared>,
    conn: ConnInfo,
    mut req: Request<Incoming>,
    host: Option<String>,
    request_id: HeaderValue,
    endpoints: &[SocketAddr],
) -> Response<ProxyBody> {
    let upgrade = wants_upgrade(&req);
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if upgrade {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    set_forwarded_headers(&mut parts.headers, conn, host.as_deref(), request_id);
    // HTTP/1.1 upstream needs a Host; a client without one (HTTP/1.0) gets the empty value RFC 9112
    // section 3.2 prescribes for a target without authority.
    let host_value = host
        .as_deref()
        .and_then(|h| HeaderValue::from_str(h).ok())
        .unwrap_or_else(|| HeaderValue::from_static(""));
    parts.headers.insert(header::HOST, host_value);
    // A body-less idempotent request can be sent again as is; anything else has been (partly)
    // consumed by the first attempt.
    let retryable = is_idempotent(&parts.method) && body.is_end_stream();
    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut body = Some(body.boxed());
    let attempts = if retryable { endpoints.len().min(3) } else { 1 };

    for (i, endpoint) in endpoints.iter().take(attempts).enumerate() {
        let uri = match format!("http://{endpoint}{pq}").parse::<Uri>() {
            Ok(u) => u,
            Err(_) => {
                let mut resp = local_response(StatusCode::BAD_REQUEST, "Bad Request: request target");
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
        };
        let mut upstream = Request::new(body.take().unwrap_or_else(empty));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = parts.headers.clone();
        match shared.upstreams.client().request(upstream).await {
            Ok(mut resp) => {
                if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    return match downstream_upgrade {
                        Some(down) => tunnel(shared, down, resp),
                        None => local_response(StatusCode::BAD_GATEWAY, "Bad Gateway: unexpected 101"),
                    };
                }
                let keep_upgrade = false;
                strip_hop_by_hop(resp.headers_mut(), keep_upgrade);
                let (parts, body) = resp.into_parts();
                return Response::from_parts(parts, body.boxed());
            }
            Err(e) if e.is_connect() => {
                shared.upstreams.eject(*endpoint);
                tracing::debug!(%endpoint, attempt = i + 1, error = %e, "upstream connect failed");
            }
            Err(e) => {
                tracing::debug!(%endpoint, error = %e, "upstream request failed");
                return local_response(StatusCode::BAD_GATEWAY, "Bad Gateway");
            }
        }
    }
    local_response(
        StatusCode::BAD_GATEWAY,
        "Bad Gateway: no endpoint accepted the connection",
    )
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
