//! The proxy data plane: listeners, TLS, the request path and the upstream pools, all reading one
//! [`Snapshot`] the controller swaps atomically.
//!
//! ```text
//!   :80  ── TCP ─────────────────────────┐   framing checks (HTTP/1: CL+TE, repeated CL -> 400)
//!                                         ├─> hyper-util auto (HTTP/1.1 | HTTP/2) ──> handler::handle
//!   :443 ── TCP ── rustls (SNI -> cert ──┘        header read timeout, header limits      │
//!                  from the snapshot,                                                     v
//!                  ALPN h2/http1.1)                                   Upstreams (pooled HTTP/1.1 client)
//! ```
//!
//! Each connection runs in its own task; each upgraded connection (WebSocket) in another. A shutdown
//! (the [`CancellationToken`] given to [`Proxy::serve`]) stops accepting, asks every connection to
//! finish its in-flight requests (`graceful_shutdown`) and waits up to the drain timeout.

mod access_log;
mod framing;
mod handler;
pub mod metrics;
pub mod proxy_protocol;
pub mod snapshot;
mod tls;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access_log::AccessLogSink;
pub use metrics::ProxyMetrics;
pub use snapshot::{
    AcmeError, CertError, DEFAULT_CERT_NAME, SharedSnapshot, Snapshot, certified_key_from_pem,
    self_signed_default,
};
pub use tls::server_config;
pub use upstream::LoadBalance;

use handler::{Conn, ConnInfo, ConnState, RequestIds, Shared};
use upstream::Upstreams;

/// The error type of the proxy's bodies (hyper's, a body over the size limit, a stalled upstream).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the proxy writes (streamed upstream bodies and its own answers).
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Listener addresses, limits and timeouts. `Default` is the production setting.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Plain HTTP listener (ACME HTTP-01, redirects, plain routes).
    pub http_addr: SocketAddr,
    /// TLS listener.
    pub https_addr: SocketAddr,
    /// Answer plain-HTTP requests for hosts with TLS with a 308 to HTTPS.
    pub redirect_to_https: bool,
    /// The port written into redirects (the port clients reach the TLS listener on, e.g. behind a
    /// load balancer); 443 is left out of the Location.
    pub https_redirect_port: u16,
    /// The port clients reach the plain listener on (the Service or host port in front of it), sent
    /// as `X-Forwarded-Port`; `None`: the listener's own port. A PROXY header's destination wins.
    pub public_http_port: Option<u16>,
    /// The same for the TLS listener.
    pub public_https_port: Option<u16>,
    /// Time a client has to send a complete request head (slowloris), also the TLS handshake limit.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// How long an unused pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// How long an endpoint that refused a connection is tried last.
    pub ejection_duration: Duration,
    /// Largest request head in bytes (HTTP/1.1 read buffer; HTTP/2 header list): 431 beyond.
    pub max_header_bytes: usize,
    /// Most request header fields (HTTP/1.1): 431 beyond.
    pub max_headers: usize,
    /// How long a shutdown waits for in-flight requests and tunnels.
    pub drain_timeout: Duration,
    /// Largest request body in bytes: `413` (by `Content-Length` before reading, or as soon as a
    /// streamed body passes it). `None`: no limit.
    pub max_body_bytes: Option<u64>,
    /// Time the upstream has to send its response head once the request body was sent (while the
    /// body goes up: longest time the upstream takes none of it), and longest gap between two
    /// pieces of its body: `504` for the head, the response cut for the body. Zero: no limit.
    pub upstream_response_timeout: Duration,
    /// Longest wait for the next piece of a request body from the client (nginx's
    /// client_body_timeout): `408` and the connection closed. Zero: no limit.
    pub client_body_timeout: Duration,
    /// Most requests answered at once; beyond, `503` with `Retry-After: 1` at once (no queue).
    /// Zero: no limit.
    pub max_in_flight: usize,
    /// How a backend's endpoint is chosen.
    pub load_balance: LoadBalance,
    /// Every connection on both listeners starts with a PROXY protocol v1 or v2 header; a connection
    /// without a valid one is closed. The header's client address is the one forwarded and logged.
    pub proxy_protocol: bool,
    /// One JSON line per request.
    pub access_log: bool,
    /// Where access log lines go (stdout by default).
    pub access_log_to: AccessLogSink,
    /// Lines queued for the access log writer; beyond, lines are dropped and counted.
    pub access_log_buffer: usize,
    /// The registry the `ferrite_ingress_*` metrics are registered in (the admin server's); `None`:
    /// recorded but not exposed.
    pub registry: Option<prometheus::Registry>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            http_addr: SocketAddr::from(([0, 0, 0, 0], 80)),
            https_addr: SocketAddr::from(([0, 0, 0, 0], 443)),
            redirect_to_https: true,
            https_redirect_port: 443,
            public_http_port: None,
            public_https_port: None,
            // nginx's client_header_timeout. hyper (>= 1.6) also arms this timer on an idle HTTP/1.1
            // keep-alive connection, so it bounds idle connections too: below `idle_timeout` it
            // would close them early.
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(60),
            ejection_duration: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            drain_timeout: Duration::from_secs(30),
            max_body_bytes: None,
            upstream_response_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            max_in_flight: 10_000,
            load_balance: LoadBalance::RoundRobin,
            proxy_protocol: false,
            access_log: true,
            access_log_to: AccessLogSink::stdout(),
            access_log_buffer: 16_384,
            registry: None,
        }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("max_header_bytes {0} is below hyper's minimum of 8192")]
    HeaderBytes(usize),
    #[error("TLS configuration: {0}")]
    Tls(#[source] rustls::Error),
    #[error("registering the proxy metrics: {0}")]
    Metrics(#[source] prometheus::Error),
    #[error("starting the access log writer: {0}")]
    AccessLog(#[source] std::io::Error),
}

/// A bound proxy: listeners open, not yet serving.
pub struct Proxy {
    shared: Arc<Shared>,
    http: TcpListener,
    https: TcpListener,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("http", &self.http.local_addr().ok())
            .field("https", &self.https.local_addr().ok())
            .finish()
    }
}

impl Proxy {
    /// Binds both listeners. Serving starts with [`Proxy::serve`].
    pub async fn bind(config: ProxyConfig, snapshot: Arc<SharedSnapshot>) -> Result<Proxy, ProxyError> {
        if config.max_header_bytes < 8192 {
            return Err(ProxyError::HeaderBytes(config.max_header_bytes));
        }
        let tls = server_config(snapshot.clone()).map_err(ProxyError::Tls)?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ProxyError::Bind { addr, source })
        };
        let http = bind(config.http_addr).await?;
        let https = bind(config.https_addr).await?;
        let upstreams = Upstreams::with_balance(
            config.upstream_connect_timeout,
            config.upstream_idle_timeout,
            config.ejection_duration,
            config.load_balance,
        );
        let metrics = match &config.registry {
            Some(registry) => ProxyMetrics::register(registry, snapshot.clone()),
            None => ProxyMetrics::new(),
        }
        .map_err(ProxyError::Metrics)?;
        let access_log = if config.access_log {
            Some(
                access_log::AccessLog::start(
                    config.access_log_to.clone(),
                    config.access_log_buffer,
                    metrics.access_log_dropped.clone(),
                )
                .map_err(ProxyError::AccessLog)?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared {
            config,
            snapshot,
            upstreams,
            tunnels: TaskTracker::new(),
            cancel: CancellationToken::new(),
            request_ids: RequestIds::new(),
            metrics,
            access_log,
            in_flight: std::sync::atomic::AtomicUsize::new(0),
        });
        Ok(Proxy {
            shared,
            http,
            https,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
        })
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    pub fn https_addr(&self) -> std::io::Result<SocketAddr> {
        self.https.local_addr()
    }

    /// The data plane's metrics (already registered when `ProxyConfig::registry` was set).
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.shared.metrics
    }

    /// Serves until `shutdown` is cancelled, then drains: no new connections, in-flight requests
    /// finish, open connections close after their current request, tunnels get the drain timeout.
    pub async fn serve(self, shutdown: CancellationToken) {
        let Proxy {
            shared,
            http,
            https,
            acceptor,
        } = self;
        let connections = TaskTracker::new();
        let builder = Arc::new(http_builder(&shared.config));
        // Idle upstream connections past the idle timeout are closed even when no request comes.
        let reaper = {
            let pool = shared.upstreams.http1().clone();
            let every = (shared.config.upstream_idle_timeout / 2)
                .clamp(Duration::from_millis(100), Duration::from_secs(5));
            let stop = shared.cancel.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(every) => pool.reap(),
                    }
                }
            })
        };
        loop {
            let (stream, tls) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = http.accept() => (r, false),
                r = https.accept() => (r, true),
            };
            let (stream, peer) = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let builder = builder.clone();
            let acceptor = acceptor.clone();
            let shutdown = shutdown.clone();
            connections.spawn(async move {
                let listener = if tls { "https" } else { "http" };
                let state = ConnState::new(listener, &shared.metrics);
                let mut stream = stream;
                let timeout = shared.config.header_read_timeout;
                // X-Forwarded-Port is the port the client reached: the PROXY header's destination,
                // else the listener's public port (the Service port in front), else its own.
                let public = if tls {
                    shared.config.public_https_port
                } else {
                    shared.config.public_http_port
                };
                let reached = |local: SocketAddr| match public {
                    Some(port) => SocketAddr::new(local.ip(), port),
                    None => local,
                };
                // With the PROXY protocol the client and the address it connected to (the load
                // balancer's, whose port goes into X-Forwarded-Port) come from the header.
                let (peer, local) = if shared.config.proxy_protocol {
                    let header = tokio::time::timeout(timeout, proxy_protocol::read_header(&mut stream));
                    match header.await {
                        Ok(Ok(proxy_protocol::ProxyHeader::Proxied { source, destination })) => {
                            (source, destination)
                        }
                        Ok(Ok(proxy_protocol::ProxyHeader::Local)) => (peer, reached(local)),
                        Ok(Err(e)) => {
                            shared
                                .metrics
                                .proxy_protocol_errors
                                .with_label_values(&[listener])
                                .inc();
                            tracing::debug!(%peer, error = %e, "PROXY protocol header refused");
                            return;
                        }
                        Err(_) => {
                            shared
                                .metrics
                                .header_timeouts
                                .with_label_values(&[listener])
                                .inc();
                            tracing::debug!(%peer, "PROXY protocol header timed out");
                            return;
                        }
                    }
                } else {
                    (peer, reached(local))
                };
                let info = ConnInfo { peer, local, tls };
                if tls {
                    let handshake = tokio::time::timeout(timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let (_, session) = stream.get_ref();
                            let version = match session.protocol_version() {
                                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                                _ => "other",
                            };
                            let alpn = match session.alpn_protocol() {
                                Some(b"h2") => "h2",
                                Some(b"http/1.1") => "http/1.1",
                                Some(b"http/1.0") => "http/1.0",
                                Some(_) => "other",
                                None => "none",
                            };
                            shared
                                .metrics
                                .tls_handshakes
                                .with_label_values(&[version, alpn])
                                .inc();
                            // HTTP/2 has no HTTP/1 framing to check.
                            let h1 = alpn != "h2";
                            if !h1 {
                                state.classify("h2");
                            }
                            serve_connection(shared, builder, info, state, stream, h1, shutdown).await
                        }
                        Ok(Err(e)) => {
                            let reason = metrics::tls_error_reason(&e);
                            shared.metrics.tls_errors.with_label_values(&[reason]).inc();
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            shared.metrics.tls_errors.with_label_values(&["timeout"]).inc();
                            shared
                                .metrics
                                .header_timeouts
                                .with_label_values(&[listener])
                                .inc();
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                } else {
                    // h2c with prior knowledge is told apart by the scanner (its preface is no
                    // HTTP/1 request line) and passed through.
                    serve_connection::<TcpStream>(shared, builder, info, state, stream, true, shutdown).await;
                }
            });
        }
        drop((http, https));
        shared.cancel.cancel();
        let _ = reaper.await;
        connections.close();
        shared.tunnels.close();
        let drain = shared.config.drain_timeout;
        let _ = tokio::time::timeout(drain, async {
            connections.wait().await;
            shared.tunnels.wait().await;
        })
        .await;
    }
}

fn http_builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes)
        .max_headers(config.max_headers)
        .keep_alive(true);
    // No HTTP/2 keep-alive pings: their frames would count as activity and keep an idle
    // connection open forever; the idle timer below closes idle (or dead) peers instead.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

async fn serve_connection<I>(
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    info: ConnInfo,
    state: Arc<ConnState>,
    io: I,
    h1: bool,
    shutdown: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Request smuggling checks hyper does not make (see framing.rs), below hyper's HTTP/1 parser.
    let scanner = if h1 {
        framing::Scanner::new(shared.config.max_header_bytes, shared.config.max_headers)
    } else {
        framing::Scanner::passthrough()
    };
    let io = framing::FramedIo::new(io, scanner, info.peer);
    let (io, idle) = idle::IdleIo::new(io);
    let svc_shared = shared.clone();
    let conn = Conn::new(info, state);
    let service = service_fn(move |req| handler::handle(svc_shared.clone(), conn.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle_timeout = shared.config.idle_timeout;
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                // A request the framing checks refused is a parse error like hyper's own.
                let reason = if framing::is_violation(&*e) {
                    "parse"
                } else {
                    metrics::downstream_error_reason(&*e)
                };
                let listener = if info.tls { "https" } else { "http" };
                shared
                    .metrics
                    .downstream_errors
                    .with_label_values(&[listener, reason])
                    .inc();
                tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = shutdown.cancelled() => {}
        _ = idle.expired(idle_timeout) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(shared.config.drain_timeout, conn).await;
}

mod idle;
