//! The embedded authoritative server: answers from the current [`ZoneSet`] over UDP and TCP.
//!
//! ```text
//!   Server::swap(ZoneSet) ──> ArcSwap<ZoneSet> (one snapshot, replaced atomically; readers take no lock)
//!                                   │ load()
//!   UDP: N threads, one SO_REUSEPORT socket each ─┐
//!        (blocking recv/send, buffers reused)     ├─> respond(bytes) ──> ZoneSet::resolve ──> encode ──> bytes
//!   TCP: one Tokio listener, a task per           │    (hickory-proto      (our RFC rules)     (hickory's
//!        connection (length-framed, capped) ──────┘     header/question)                       BinEncoder)
//! ```
//!
//! The lookup is ours ([`crate::resolve`]); hickory-proto reads the header and the question and writes the
//! response. The hot path is also ours rather than hickory-server's request loop (8k QPS against BIND's
//! 101k on the same machine): each UDP worker owns a socket bound with `SO_REUSEPORT` (the kernel spreads
//! the queries over them), a receive buffer and a response buffer, so a query costs one snapshot load
//! (lock-free), one lookup and one encode, with no allocation beyond the ones hickory's encoder makes for
//! name compression. The RRsets are written straight from the snapshot, never copied into `Record`s.
//!
//! What is answered how (docs/dns.md, "Embedded server"):
//! - a header that cannot be read (under 12 bytes) and any message with QR=1: dropped, nothing is sent;
//! - an opcode other than QUERY: NOTIMP; not exactly one question, or a question or record that cannot be
//!   parsed, or two OPT records: FORMERR;
//! - EDNS (RFC 6891): a query with OPT gets OPT back (our UDP payload size, 1232 by default; DO copied,
//!   RFC 3225); a version above 0 gets BADVERS; the UDP limit is the requester's size (at least 512) capped
//!   by ours, and 512 without OPT; TCP allows 65535;
//! - class other than IN: REFUSED; AXFR over UDP: FORMERR (as BIND); AXFR and IXFR, and every
//!   TSIG-signed query, go to [`crate::transfer`] (TSIG verified, transfer ACL, signed answers; outside
//!   our zones REFUSED);
//! - truncation (RFC 2181 section 9): when the answer and authority sections do not fit, the response is
//!   the header and the question with TC=1 and no records at all, never a partial RRset (hickory-server
//!   sends a partial one); additional RRsets that do not fit are left out whole, without TC.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::ProtoError;
use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::resolve::{Answer, RrsetRef, ZoneSet};
use crate::transfer::{TransferConfig, Transfers};

/// The UDP payload size we advertise in OPT and accept at most: the DNS flag day 2020 value, which avoids
/// IP fragmentation on every common path (BIND's and Knot's default too).
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;

/// The UDP limit without EDNS (RFC 1035 section 4.2.1), and the smallest size EDNS may ask for (RFC 6891
/// section 6.2.5).
pub const PLAIN_UDP_LIMIT: u16 = 512;

/// How long a TCP connection may stay silent before it is closed (RFC 7766 section 6.2.3 suggests
/// seconds, not minutes; BIND's `tcp-idle-timeout` is 30 s, Knot's 10 s).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many TCP connections are served at once; further ones are accepted and closed at once, counted in
/// `ferrite_dns_tcp_connections_rejected_total` (BIND's `tcp-clients` default is 150).
pub const DEFAULT_TCP_MAX_CONNECTIONS: usize = 256;

/// The largest DNS message (TCP's 2-byte length prefix).
const TCP_LIMIT: u16 = u16::MAX;

/// Our OPT record on the wire: root name (1), type (2), class (2), TTL (4), RDLENGTH (2), no options.
const OPT_LEN: u16 = 11;

/// How often a blocked UDP worker looks at the stop flag.
const UDP_POLL: Duration = Duration::from_millis(200);

/// Where and how the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address for both UDP and TCP (53 in the chart). Port 0 picks a free port, the same for both.
    pub listen: SocketAddr,
    /// UDP worker threads, each with its own `SO_REUSEPORT` socket; 0 means one per CPU.
    pub udp_workers: usize,
    /// Our EDNS UDP payload size: advertised in OPT, and the most we send over UDP. At least 512.
    pub udp_payload: u16,
    /// A TCP connection silent this long is closed.
    pub tcp_idle_timeout: Duration,
    /// TCP connections served at once.
    pub tcp_max_connections: usize,
    /// Zone transfers (AXFR/IXFR) to secondaries, who may ask (TSIG keys) and whom to NOTIFY. The
    /// default allows no transfer and notifies nobody.
    pub transfer: TransferConfig,
}

impl ServerConfig {
    /// The defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> ServerConfig {
        ServerConfig {
            listen,
            udp_workers: 0,
            udp_payload: DEFAULT_UDP_PAYLOAD,
            tcp_idle_timeout: DEFAULT_TCP_IDLE_TIMEOUT,
            tcp_max_connections: DEFAULT_TCP_MAX_CONNECTIONS,
            transfer: TransferConfig::default(),
        }
    }
}

/// A server that could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A socket could not be made or bound.
    #[error("DNS server: cannot listen on {addr} over {transport}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// UDP or TCP.
        transport: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A setting that cannot work.
    #[error("DNS server: {0}")]
    BadConfig(String),
    /// Started outside a Tokio runtime (the TCP listener runs on one).
    #[error("DNS server: must be started inside a Tokio runtime (the TCP listener runs on it)")]
    NoRuntime,
    /// A UDP worker thread could not be started.
    #[error("DNS server: cannot start a UDP worker thread: {0}")]
    Spawn(#[source] io::Error),
    /// The metrics could not be registered (for example twice on one registry).
    #[error("DNS server: cannot register the ferrite_dns_* query metrics: {0}")]
    Metrics(#[source] prometheus::Error),
}

impl ServerError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ServerError::Bind { .. } => "BindFailed",
            ServerError::BadConfig(_) => "BadConfig",
            ServerError::NoRuntime => "NoRuntime",
            ServerError::Spawn(_) => "SpawnFailed",
            ServerError::Metrics(_) => "MetricsFailed",
        }
    }
}

/// The running server. Dropping it stops it: TCP at once, the UDP workers within 200 ms (they hold the
/// port until then); [`Server::shutdown`] also waits for them, so the port is free when it returns.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    udp_workers: Vec<std::thread::JoinHandle<()>>,
    tcp: tokio::task::JoinHandle<()>,
}

/// A handle that publishes new snapshots to a running server (for the reconciler, which does not own the
/// server). Cheap to clone.
#[derive(Debug, Clone)]
pub struct ZonesHandle {
    shared: Arc<Shared>,
}

impl ZonesHandle {
    /// Publishes `zones`: every query that starts after this returns answers from them; queries being
    /// answered finish on the snapshot they started with. A zone whose SOA serial increased keeps the
    /// difference for IXFR and is announced to its secondaries with NOTIFY ([`crate::transfer`]); the
    /// caller must bump the serial on every change ([`crate::transfer::next_serial`]).
    pub fn swap(&self, zones: ZoneSet) {
        let shared = &self.shared;
        shared
            .transfer
            .swap(&shared.zones, Arc::new(zones), &shared.zones_for_notify());
    }

    /// The snapshot being served.
    pub fn current(&self) -> Arc<ZoneSet> {
        self.shared.zones.load_full()
    }

    /// Replaces the zone-transfer configuration (keys, secondaries) of the running server. Checked as at
    /// start; on error the previous configuration stays in force. Secondaries that are new, or whose
    /// zone's NOTIFY key changed, are sent a NOTIFY for the current serial at once. Queries never read
    /// this configuration; transfers started before the call finish with the old one. Returns whether
    /// anything changed.
    pub fn set_transfer(&self, config: &TransferConfig) -> Result<bool, ServerError> {
        let shared = &self.shared;
        shared
            .transfer
            .update(config, &shared.zones, &shared.zones_for_notify())
            .map_err(ServerError::BadConfig)
    }
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) zones: ArcSwap<ZoneSet>,
    pub(crate) transfer: Transfers,
    metrics: Metrics,
    pub(crate) udp_payload: u16,
    tcp_idle_timeout: Duration,
    stop: AtomicBool,
}

impl Shared {
    /// A weak view of the served zones, for NOTIFY tasks that stop once a newer serial is served.
    fn zones_for_notify(self: &Arc<Self>) -> std::sync::Weak<Shared> {
        Arc::downgrade(self)
    }
}

impl Server {
    /// Binds UDP and TCP on `config.listen`, registers the `ferrite_dns_*` query metrics on `registry` and
    /// starts answering from `zones`. Must be called inside a Tokio runtime (the TCP side runs on it; the
    /// UDP workers are threads of their own).
    pub fn start(config: &ServerConfig, zones: ZoneSet, registry: &Registry) -> Result<Server, ServerError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServerError::NoRuntime)?;
        if config.udp_payload < PLAIN_UDP_LIMIT {
            return Err(ServerError::BadConfig(format!(
                "UDP payload size {} is below 512, the size every DNS client accepts (RFC 6891 section 6.2.5)",
                config.udp_payload
            )));
        }
        if config.tcp_max_connections == 0 {
            return Err(ServerError::BadConfig(
                "tcp_max_connections is 0: at least one TCP connection is needed (truncated answers are retried over TCP)"
                    .to_string(),
            ));
        }
        if config.tcp_idle_timeout.is_zero() {
            return Err(ServerError::BadConfig(
                "tcp_idle_timeout is 0: TCP clients need time to send their query".to_string(),
            ));
        }
        let workers = if config.udp_workers == 0 {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        } else {
            config.udp_workers
        };
        let transfer = Transfers::new(&config.transfer, runtime.clone()).map_err(ServerError::BadConfig)?;
        let metrics = Metrics::register(registry)?;
        let (udp, tcp, local_addr) = bind(config.listen, workers)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(tcp).map_err(|source| ServerError::Bind {
                addr: local_addr,
                transport: "TCP",
                source,
            })?
        };
        let shared = Arc::new(Shared {
            zones: ArcSwap::from_pointee(ZoneSet::default()),
            transfer,
            metrics,
            udp_payload: config.udp_payload,
            tcp_idle_timeout: config.tcp_idle_timeout,
            stop: AtomicBool::new(false),
        });
        let mut udp_workers = Vec::with_capacity(udp.len());
        for (index, socket) in udp.into_iter().enumerate() {
            let worker = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ferrite-dns-udp-{index}"))
                .spawn(move || udp_worker(&socket, &worker));
            match spawned {
                Ok(handle) => udp_workers.push(handle),
                Err(err) => {
                    shared.stop.store(true, Ordering::Relaxed);
                    return Err(ServerError::Spawn(err));
                }
            }
        }
        // The first snapshot goes through swap too: its zones are announced to their secondaries.
        shared
            .transfer
            .swap(&shared.zones, Arc::new(zones), &shared.zones_for_notify());
        let tcp = runtime.spawn(tcp_accept(listener, shared.clone(), config.tcp_max_connections));
        tracing::info!(%local_addr, udp_workers = workers, "embedded DNS server listening on UDP and TCP");
        Ok(Server {
            shared,
            local_addr,
            udp_workers,
            tcp,
        })
    }

    /// The address answering on UDP and TCP (the port chosen when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Publishes `zones` atomically (see [`ZonesHandle::swap`]).
    pub fn swap(&self, zones: ZoneSet) {
        self.handle().swap(zones);
    }

    /// Replaces the zone-transfer configuration (see [`ZonesHandle::set_transfer`]).
    pub fn set_transfer(&self, config: &TransferConfig) -> Result<bool, ServerError> {
        self.handle().set_transfer(config)
    }

    /// A handle to publish snapshots from elsewhere.
    pub fn handle(&self) -> ZonesHandle {
        ZonesHandle {
            shared: self.shared.clone(),
        }
    }

    /// Stops answering and waits until the port is free: the TCP listener and its connections end at once,
    /// the UDP workers within 200 ms.
    pub async fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tcp.abort();
        let workers = std::mem::take(&mut self.udp_workers);
        let joined = tokio::task::spawn_blocking(move || {
            for worker in workers {
                // A worker that panicked has already stopped; nothing more to do for it.
                let _ = worker.join();
            }
        });
        let _ = joined.await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.tcp.abort();
    }
}

/// The UDP sockets (one per worker, all on one port) and the TCP listener. With port 0 the kernel picks
/// the UDP port, and TCP takes the same one; if that port is taken for TCP, another is tried.
fn bind(
    listen: SocketAddr,
    workers: usize,
) -> Result<(Vec<UdpSocket>, std::net::TcpListener, SocketAddr), ServerError> {
    let attempts = if listen.port() == 0 { 16 } else { 1 };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let first = udp_socket(listen)?;
        let addr = first.local_addr().map_err(|source| ServerError::Bind {
            addr: listen,
            transport: "UDP",
            source,
        })?;
        match tcp_listener(addr) {
            Ok(tcp) => {
                let mut udp = Vec::with_capacity(workers);
                udp.push(first);
                for _ in 1..workers {
                    udp.push(udp_socket(addr)?);
                }
                return Ok((udp, tcp, addr));
            }
            Err(ServerError::Bind { source, .. })
                if attempt < attempts && source.kind() == io::ErrorKind::AddrInUse =>
            {
                continue;
            }
            Err(err) => return Err(err),
        }
    }
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket, ServerError> {
    let bind_error = |source| ServerError::Bind {
        addr,
        transport: "UDP",
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_error)?;
    // Several sockets on one port: the kernel hashes each client to one of them, so the workers answer
    // in parallel without sharing a socket (or a lock on one).
    socket.set_reuse_port(true).map_err(bind_error)?;
    // Best effort: a bigger queue rides out bursts; the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(4 << 20);
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.set_read_timeout(Some(UDP_POLL)).map_err(bind_error)?;
    Ok(socket.into())
}

fn tcp_listener(addr: SocketAddr) -> Result<std::net::TcpListener, ServerError> {
    let bind_error = |source| ServerError::Bind {
        addr,
        transport: "TCP",
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(bind_error)?;
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(1024).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    Ok(socket.into())
}

/// One UDP worker: receive, answer, send, with both buffers reused for every query.
fn udp_worker(socket: &UdpSocket, shared: &Shared) {
    let mut request = vec![0u8; usize::from(u16::MAX)];
    let mut response = Vec::with_capacity(usize::from(u16::MAX));
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, peer) = match socket.recv_from(&mut request) {
            Ok(received) => received,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(err) => {
                // ICMP errors from earlier sends surface here; they concern one client, not the socket.
                tracing::debug!(error = %err, "DNS UDP receive failed");
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let result = {
            let zones = shared.zones.load();
            match respond(
                &zones,
                &request[..len],
                Transport::Udp,
                shared.udp_payload,
                &mut response,
            ) {
                Err(Dropped::Deferred) => {
                    crate::transfer::respond_udp(shared, &zones, &request[..len], &mut response)
                }
                other => other,
            }
        };
        shared.metrics.observe(&result);
        if result.is_ok()
            && let Err(err) = socket.send_to(&response, peer)
        {
            tracing::debug!(error = %err, %peer, "DNS UDP send failed");
        }
    }
}

async fn tcp_accept(listener: TcpListener, shared: Arc<Shared>, max_connections: usize) {
    let permits = Arc::new(Semaphore::new(max_connections));
    // Owned by this task: when it is aborted (shutdown), every connection task is aborted with it.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        shared.metrics.tcp_rejected.inc();
                        tracing::debug!(%peer, max_connections, "DNS TCP connection refused: too many open");
                        drop(stream);
                        continue;
                    };
                    let shared = shared.clone();
                    connections.spawn(async move {
                        let mut stream = stream;
                        tcp_connection(&mut stream, &shared).await;
                        // The slot is free before the client sees the close, so it can reconnect at once.
                        drop(permit);
                        drop(stream);
                    });
                }
                Err(err) => {
                    // Out of file descriptors and the like: wait instead of spinning on the error.
                    tracing::warn!(error = %err, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One TCP connection (RFC 7766): length-prefixed queries, answered in order, until the client closes,
/// stays silent for the idle timeout, or sends something whose header cannot be read.
async fn tcp_connection(stream: &mut TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let idle = shared.tcp_idle_timeout;
    let mut request = Vec::new();
    let mut response = Vec::new();
    let mut frame = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut prefix)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        request.resize(usize::from(u16::from_be_bytes(prefix)), 0);
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut request)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let result = {
            let zones = shared.zones.load();
            respond(
                &zones,
                &request,
                Transport::Tcp,
                shared.udp_payload,
                &mut response,
            )
        };
        if result == Err(Dropped::Deferred) {
            // A zone transfer (possibly many messages) or a TSIG-signed query.
            let zones = shared.zones.load_full();
            let (result, messages) = crate::transfer::respond_tcp(shared, &zones, &request);
            shared.metrics.observe(&result);
            for message in messages {
                let Ok(len) = u16::try_from(message.len()) else {
                    return;
                };
                frame.clear();
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&message);
                if !matches!(
                    tokio::time::timeout(idle, stream.write_all(&frame)).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            if result == Err(Dropped::Malformed) {
                return;
            }
            continue;
        }
        shared.metrics.observe(&result);
        match result {
            Ok(_) => {
                let Ok(len) = u16::try_from(response.len()) else {
                    return;
                };
                frame.clear();
                frame.extend_from_slice(&len.to_be_bytes());
                frame.extend_from_slice(&response);
                if !matches!(
                    tokio::time::timeout(idle, stream.write_all(&frame)).await,
                    Ok(Ok(()))
                ) {
                    return;
                }
            }
            Err(Dropped::Response | Dropped::Deferred) => {}
            // The framing may be out of step with the client: end the connection.
            Err(Dropped::Malformed) => return,
        }
    }
}

/// How the query came, which decides the size limit and what AXFR gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// A query that gets no response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Shorter than a header: there is no ID to answer to.
    Malformed,
    /// QR=1: a response, never answered (that is how reflection loops start).
    Response,
    /// Not answered by [`respond`]: a zone transfer or a TSIG-signed query, for [`crate::transfer`].
    Deferred,
}

/// What was sent, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Responded {
    /// The question's type; none when there was no readable question.
    pub(crate) qtype: Option<RecordType>,
    pub(crate) rcode: ResponseCode,
    pub(crate) truncated: bool,
}

/// The EDNS parts of a query that the response depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QueryEdns {
    payload: u16,
    version: u8,
    dnssec_ok: bool,
}

/// Answers one query: writes the response into `out` (cleared first) or says why there is none.
fn respond(
    zones: &ZoneSet,
    query: &[u8],
    transport: Transport,
    udp_payload: u16,
    out: &mut Vec<u8>,
) -> Result<Responded, Dropped> {
    respond_with(zones, query, transport, udp_payload, 0, out)
}

/// [`respond`], keeping `reserve` bytes of the size limit free (for a TSIG record appended afterwards).
pub(crate) fn respond_with(
    zones: &ZoneSet,
    query: &[u8],
    transport: Transport,
    udp_payload: u16,
    reserve: u16,
    out: &mut Vec<u8>,
) -> Result<Responded, Dropped> {
    let mut decoder = BinDecoder::new(query);
    let header = Header::read(&mut decoder).map_err(|_| Dropped::Malformed)?;
    if header.message_type == MessageType::Response {
        return Err(Dropped::Response);
    }
    // ID, opcode, RD and CD copied (RFC 1035 section 4.1.1, RFC 6840 section 5.9); RA stays clear.
    let mut metadata = Metadata::response_from_request(&header.metadata);
    let mut reply = Reply {
        out,
        metadata: &mut metadata,
        question: None,
        edns: None,
        limit: PLAIN_UDP_LIMIT,
    };
    if header.counts.queries != 1 {
        return reply.error(ResponseCode::FormErr);
    }
    let Ok(question) = Query::read(&mut decoder) else {
        return reply.error(ResponseCode::FormErr);
    };
    reply.question = Some(&question);
    if header.op_code != OpCode::Query {
        // NOTIFY, UPDATE, STATUS: not served here (RFC 1035 section 4.1.1: not implemented).
        return reply.error(ResponseCode::NotImp);
    }
    let Ok((query_edns, signed)) = read_edns(&mut decoder, header.counts) else {
        return reply.error(ResponseCode::FormErr);
    };
    reply.limit = match (transport, query_edns) {
        (Transport::Tcp, _) => TCP_LIMIT,
        (Transport::Udp, None) => PLAIN_UDP_LIMIT,
        // RFC 6891 section 6.2.5: below 512 counts as 512; above ours is capped to ours.
        (Transport::Udp, Some(edns)) => edns.payload.clamp(PLAIN_UDP_LIMIT, udp_payload),
    }
    .saturating_sub(reserve);
    let response_edns = query_edns.map(|edns| {
        let mut ours = Edns::new();
        ours.set_max_payload(udp_payload).set_dnssec_ok(edns.dnssec_ok);
        ours
    });
    reply.edns = response_edns.as_ref();
    if query_edns.is_some_and(|edns| edns.version > 0) {
        // RFC 6891 section 6.1.3; our OPT says version 0.
        return reply.error(ResponseCode::BADVERS);
    }
    if question.query_class() != DNSClass::IN {
        return reply.error(ResponseCode::Refused);
    }
    let qtype = question.query_type();
    if qtype == RecordType::AXFR && transport == Transport::Udp {
        // A zone transfer cannot fit a datagram (RFC 5936 section 4.2); BIND answers FORMERR.
        return reply.error(ResponseCode::FormErr);
    }
    if signed || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return Err(Dropped::Deferred);
    }
    let answer = zones.resolve(question.name(), qtype);
    reply.answer(&answer)
}

/// Reads the rest of the query after the question: the records are skipped, except the OPT record, which
/// must be in the additional section, once, and owned by the root (RFC 6891 section 6.1.1), and the TSIG
/// record, which must be the last of the additional section (RFC 8945 section 5.1). Returns the EDNS
/// parts and whether the query is signed.
fn read_edns(decoder: &mut BinDecoder<'_>, counts: HeaderCounts) -> Result<(Option<QueryEdns>, bool), ()> {
    let mut edns = None;
    let mut signed = false;
    let sections = [
        (counts.answers, false),
        (counts.authorities, false),
        (counts.additionals, true),
    ];
    for (count, additional) in sections {
        for _ in 0..count {
            let name = Name::read(decoder).map_err(drop)?;
            let rtype = decoder.read_u16().map_err(drop)?.unverified(/* any type is skipped */);
            let class = decoder.read_u16().map_err(drop)?.unverified(/* the payload size for OPT */);
            let ttl = decoder.read_u32().map_err(drop)?.unverified(/* flags and version for OPT */);
            let rdlength = decoder.read_u16().map_err(drop)?.unverified(/* checked by read_slice */);
            decoder.read_slice(usize::from(rdlength)).map_err(drop)?;
            if signed {
                // Something after the TSIG record.
                return Err(());
            }
            if rtype == u16::from(RecordType::TSIG) {
                if !additional {
                    return Err(());
                }
                signed = true;
            }
            if rtype == u16::from(RecordType::OPT) {
                if !additional || edns.is_some() || !name.is_root() {
                    return Err(());
                }
                edns = Some(QueryEdns {
                    payload: class,
                    version: ((ttl >> 16) & 0xff) as u8,
                    dnssec_ok: ttl & 0x8000 != 0,
                });
            }
        }
    }
    Ok((edns, signed))
}

/// A response being written.
struct Reply<'q, 'o> {
    out: &'o mut Vec<u8>,
    metadata: &'o mut Metadata,
    question: Option<&'q Query>,
    edns: Option<&'q Edns>,
    limit: u16,
}

impl Reply<'_, '_> {
    /// A response with no records: the header, the question if there was one, OPT if the query had one.
    fn error(&mut self, rcode: ResponseCode) -> Result<Responded, Dropped> {
        self.metadata.response_code = rcode;
        self.metadata.authoritative = false;
        self.send(None)
    }

    fn answer(&mut self, answer: &Answer<'_>) -> Result<Responded, Dropped> {
        self.metadata.response_code = answer.rcode;
        self.metadata.authoritative = answer.authoritative;
        self.send(Some(answer))
    }

    fn send(&mut self, answer: Option<&Answer<'_>>) -> Result<Responded, Dropped> {
        let qtype = self.question.map(Query::query_type);
        match encode(
            self.out,
            *self.metadata,
            self.question,
            answer,
            self.edns,
            self.limit,
        ) {
            Ok(truncated) => Ok(Responded {
                qtype,
                rcode: self.metadata.response_code,
                truncated,
            }),
            Err(err) => {
                // Data the encoder refuses (it was validated when the zone was built, so this is a bug):
                // say SERVFAIL rather than nothing, so the client does not wait for a timeout.
                tracing::warn!(error = %err, question = ?self.question, "DNS response could not be encoded");
                self.metadata.response_code = ResponseCode::ServFail;
                self.metadata.authoritative = false;
                encode(
                    self.out,
                    *self.metadata,
                    self.question,
                    None,
                    self.edns,
                    self.limit,
                )
                .map(|truncated| Responded {
                    qtype,
                    rcode: ResponseCode::ServFail,
                    truncated,
                })
                .map_err(|_| Dropped::Malformed)
            }
        }
    }
}

/// Writes the response into `out`, at most `limit` bytes. Returns whether it was truncated: when the
/// answer and authority sections do not fit, the response is the header and the question with TC=1 and
/// no records (RFC 2181 section 9: a resolver must not use a partial RRset, so none is sent; the client
/// retries over TCP). Additional RRsets that do not fit are left out, each whole, without TC (RFC 2181
/// section 9 again: the additional section is not required). OPT always fits: room for it is kept.
fn encode(
    out: &mut Vec<u8>,
    metadata: Metadata,
    question: Option<&Query>,
    answer: Option<&Answer<'_>>,
    edns: Option<&Edns>,
    limit: u16,
) -> Result<bool, ProtoError> {
    match encode_sections(out, metadata, question, answer, edns, limit) {
        Err(ProtoError::MaxBufferSizeExceeded(_)) => {
            let mut truncated = metadata;
            truncated.truncation = true;
            encode_sections(out, truncated, question, None, edns, limit)?;
            Ok(true)
        }
        other => other.map(|()| false),
    }
}

fn encode_sections(
    out: &mut Vec<u8>,
    metadata: Metadata,
    question: Option<&Query>,
    answer: Option<&Answer<'_>>,
    edns: Option<&Edns>,
    limit: u16,
) -> Result<(), ProtoError> {
    out.clear();
    let mut encoder = BinEncoder::new(out);
    let opt_len = if edns.is_some() { OPT_LEN } else { 0 };
    encoder.set_max_size(limit.saturating_sub(opt_len));
    let place = encoder.place::<Header>()?;
    let mut counts = HeaderCounts::default();
    if let Some(question) = question {
        question.emit(&mut encoder)?;
        counts.queries = 1;
    }
    let qname = question.map(Query::name);
    if let Some(answer) = answer {
        for set in &answer.answer {
            counts.answers = counts
                .answers
                .saturating_add(emit_rrset(&mut encoder, set, qname)?);
        }
        for set in &answer.authority {
            counts.authorities = counts
                .authorities
                .saturating_add(emit_rrset(&mut encoder, set, qname)?);
        }
        for set in &answer.additional {
            let mark = encoder.offset();
            match emit_rrset(&mut encoder, set, qname) {
                Ok(count) => counts.additionals = counts.additionals.saturating_add(count),
                Err(ProtoError::MaxBufferSizeExceeded(_)) => {
                    // Undo the partial RRset, and the compression pointers into it, and stop: later sets
                    // are not more important than this one.
                    encoder.set_offset(mark);
                    encoder.trim();
                    break;
                }
                Err(err) => return Err(err),
            }
        }
    }
    if let Some(edns) = edns {
        encoder.set_max_size(limit);
        let mut edns = edns.clone();
        // The upper 8 bits of the 12-bit rcode live in OPT (BADVERS is 16: 0 in the header, 1 here).
        edns.set_rcode_high(metadata.response_code.high());
        edns.emit(&mut encoder)?;
        counts.additionals = counts.additionals.saturating_add(1);
    }
    place.replace(&mut encoder, Header { metadata, counts })
}

/// Writes one RRset straight from the snapshot (no `Record` is built). Returns how many records.
///
/// An owner equal to the query name is written as the question spells it (as BIND does): names compare
/// case-insensitively, and the encoder's compression matches bytes, so the owner then becomes a 2-byte
/// pointer to the question.
fn emit_rrset(
    encoder: &mut BinEncoder<'_>,
    set: &RrsetRef<'_>,
    qname: Option<&Name>,
) -> Result<u16, ProtoError> {
    let owner = match qname {
        Some(qname) if qname == set.owner => qname,
        _ => set.owner,
    };
    let rtype = set.record_type();
    let ttl = set.rrset.ttl();
    let mut count = 0u16;
    for rdata in set.rrset.rdatas() {
        owner.emit(encoder)?;
        rtype.emit(encoder)?;
        DNSClass::IN.emit(encoder)?;
        encoder.emit_u32(ttl)?;
        let place = encoder.place::<u16>()?;
        rdata.emit(encoder)?;
        let len = u16::try_from(encoder.len_since_place(&place))
            .map_err(|_| ProtoError::Message("RDATA longer than 65535 bytes"))?;
        place.replace(encoder, len)?;
        count = count.saturating_add(1);
    }
    Ok(count)
}

/// The `qtype` label values: the types people chart, everything else is `OTHER` (a client can send any of
/// 65536 types; the label must not grow with them). `NONE`: no readable question.
const QTYPE_LABELS: [(Option<RecordType>, &str); 19] = [
    (Some(RecordType::A), "A"),
    (Some(RecordType::AAAA), "AAAA"),
    (Some(RecordType::CNAME), "CNAME"),
    (Some(RecordType::TXT), "TXT"),
    (Some(RecordType::SRV), "SRV"),
    (Some(RecordType::MX), "MX"),
    (Some(RecordType::CAA), "CAA"),
    (Some(RecordType::SOA), "SOA"),
    (Some(RecordType::NS), "NS"),
    (Some(RecordType::PTR), "PTR"),
    (Some(RecordType::HTTPS), "HTTPS"),
    (Some(RecordType::SVCB), "SVCB"),
    (Some(RecordType::DS), "DS"),
    (Some(RecordType::DNSKEY), "DNSKEY"),
    (Some(RecordType::ANY), "ANY"),
    (Some(RecordType::AXFR), "AXFR"),
    (Some(RecordType::IXFR), "IXFR"),
    (None, "NONE"),
    (None, "OTHER"),
];

/// The `rcode` label values (the names dig and CoreDNS's `coredns_dns_responses_total` use).
const RCODE_LABELS: [(ResponseCode, &str); 8] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::BADVERS, "BADVERS"),
    (ResponseCode::Unknown(0xfff), "OTHER"),
];

fn qtype_label_index(qtype: Option<RecordType>) -> usize {
    let other = QTYPE_LABELS.len() - 1;
    match qtype {
        None => other - 1,
        Some(qtype) => QTYPE_LABELS
            .iter()
            .position(|(known, _)| *known == Some(qtype))
            .unwrap_or(other),
    }
}

fn rcode_label_index(rcode: ResponseCode) -> usize {
    RCODE_LABELS
        .iter()
        .position(|(known, _)| *known == rcode)
        .unwrap_or(RCODE_LABELS.len() - 1)
}

/// The server's metrics. The query counter's children are looked up once per label pair and then kept,
/// so counting a query is one atomic add (no label hashing on the hot path).
#[derive(Debug)]
struct Metrics {
    queries: IntCounterVec,
    children: Box<[OnceLock<IntCounter>]>,
    truncated: IntCounter,
    dropped_malformed: IntCounter,
    dropped_response: IntCounter,
    tcp_rejected: IntCounter,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Metrics, ServerError> {
        let queries = IntCounterVec::new(
            Opts::new(
                "ferrite_dns_queries_total",
                "Queries answered by the embedded DNS server, by question type (known types, else OTHER) and response code.",
            ),
            &["qtype", "rcode"],
        )
        .map_err(ServerError::Metrics)?;
        let truncated = IntCounter::new(
            "ferrite_dns_truncated_responses_total",
            "UDP responses sent with TC=1 (header and question only) because the answer did not fit; the client retries over TCP.",
        )
        .map_err(ServerError::Metrics)?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "ferrite_dns_dropped_queries_total",
                "Messages the embedded DNS server did not answer: malformed (no readable header) or response (QR=1).",
            ),
            &["reason"],
        )
        .map_err(ServerError::Metrics)?;
        let tcp_rejected = IntCounter::new(
            "ferrite_dns_tcp_connections_rejected_total",
            "TCP connections closed at once because the limit of concurrent connections was reached.",
        )
        .map_err(ServerError::Metrics)?;
        registry
            .register(Box::new(queries.clone()))
            .map_err(ServerError::Metrics)?;
        registry
            .register(Box::new(truncated.clone()))
            .map_err(ServerError::Metrics)?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(ServerError::Metrics)?;
        registry
            .register(Box::new(tcp_rejected.clone()))
            .map_err(ServerError::Metrics)?;
        let children = (0..QTYPE_LABELS.len() * RCODE_LABELS.len())
            .map(|_| OnceLock::new())
            .collect();
        Ok(Metrics {
            children,
            truncated,
            dropped_malformed: dropped.with_label_values(&["malformed"]),
            dropped_response: dropped.with_label_values(&["response"]),
            tcp_rejected,
            queries,
        })
    }

    fn observe(&self, result: &Result<Responded, Dropped>) {
        match result {
            Ok(responded) => {
                let qtype = qtype_label_index(responded.qtype);
                let rcode = rcode_label_index(responded.rcode);
                let child = self.children[qtype * RCODE_LABELS.len() + rcode].get_or_init(|| {
                    self.queries
                        .with_label_values(&[QTYPE_LABELS[qtype].1, RCODE_LABELS[rcode].1])
                });
                child.inc();
                if responded.truncated {
                    self.truncated.inc();
                }
            }
            Err(Dropped::Malformed) => self.dropped_malformed.inc(),
            Err(Dropped::Response) => self.dropped_response.inc(),
            // Counted where it is answered.
            Err(Dropped::Deferred) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{DNSClass, RData, RecordType};

    use super::*;
    use crate::resolve::ZoneSet;
    use crate::zone::Zone;
    use crate::zone::fixture::{config, name, record};

    /// `example.` with an RRset of `txt_strings` 100-byte TXT strings at `big.example.`, an MX at
    /// `mail.example.` whose target `mx.example.` has `addresses` A records, and `www.example. A`.
    fn zones(txt_strings: usize, addresses: usize) -> ZoneSet {
        let mut records = vec![
            record("www.example. 300 A 192.0.2.1"),
            record("mail.example. 300 MX 10 mx.example."),
        ];
        for index in 0..txt_strings {
            records.push(record(&format!(
                "big.example. 300 TXT {index:03}{}",
                "x".repeat(97)
            )));
        }
        for index in 0..addresses {
            records.push(record(&format!(
                "mx.example. 300 A 10.0.{}.{}",
                index / 250,
                index % 250 + 1
            )));
        }
        let zone = Zone::build(&config("example."), records).unwrap_or_else(|err| panic!("zone: {err}"));
        ZoneSet::new([Arc::new(zone)]).unwrap_or_else(|err| panic!("zone set: {err}"))
    }

    struct Ask<'a> {
        qname: &'a str,
        qtype: RecordType,
        edns: Option<(u16, u8)>,
    }

    fn query(ask: &Ask<'_>) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(name(ask.qname), ask.qtype));
        if let Some((payload, version)) = ask.edns {
            let mut edns = Edns::new();
            edns.set_max_payload(payload).set_version(version);
            message.set_edns(edns);
        }
        message.to_vec().unwrap_or_else(|err| panic!("query: {err}"))
    }

    fn ask(zones: &ZoneSet, ask: &Ask<'_>, transport: Transport) -> (Responded, Vec<u8>, Message) {
        let mut out = Vec::new();
        let responded = respond(zones, &query(ask), transport, DEFAULT_UDP_PAYLOAD, &mut out)
            .unwrap_or_else(|dropped| panic!("dropped: {dropped:?}"));
        let message = Message::from_vec(&out).unwrap_or_else(|err| panic!("response does not parse: {err}"));
        (responded, out, message)
    }

    fn txt_count(message: &Message) -> usize {
        message
            .answers
            .iter()
            .filter(|record| matches!(record.data, RData::TXT(_)))
            .count()
    }

    #[test]
    fn truncation_sends_header_and_question_only_never_a_partial_rrset() {
        // 9 x ~115 bytes: about 1,050 bytes of answer, over 512 and under 1232.
        let zones = zones(9, 0);
        let big = |edns| Ask {
            qname: "big.example.",
            qtype: RecordType::TXT,
            edns,
        };
        // (case, transport, EDNS (payload, version), truncated)
        let cases = [
            ("UDP without EDNS: 512", Transport::Udp, None, true),
            ("UDP, EDNS 512", Transport::Udp, Some((512, 0)), true),
            (
                "UDP, EDNS below 512 counts as 512",
                Transport::Udp,
                Some((100, 0)),
                true,
            ),
            ("UDP, EDNS 1232", Transport::Udp, Some((1232, 0)), false),
            (
                "UDP, EDNS 4096 is capped to ours (fits)",
                Transport::Udp,
                Some((4096, 0)),
                false,
            ),
            ("TCP without EDNS", Transport::Tcp, None, false),
        ];
        for (case, transport, edns, truncated) in cases {
            let (responded, bytes, message) = ask(&zones, &big(edns), transport);
            assert_eq!(responded.truncated, truncated, "{case}");
            assert_eq!(message.truncation, truncated, "{case}");
            assert_eq!(message.response_code, ResponseCode::NoError, "{case}");
            assert!(message.authoritative, "{case}");
            assert_eq!(message.queries.len(), 1, "{case}");
            assert_eq!(
                message.edns.is_some(),
                edns.is_some(),
                "{case}: OPT iff the query had OPT"
            );
            if truncated {
                assert!(bytes.len() <= 512, "{case}: {} bytes", bytes.len());
                assert!(message.answers.is_empty(), "{case}: no partial RRset");
                assert!(
                    message.authorities.is_empty() && message.additionals.is_empty(),
                    "{case}"
                );
            } else {
                assert_eq!(txt_count(&message), 9, "{case}: the whole RRset");
            }
        }
    }

    #[test]
    fn udp_limit_is_ours_even_when_the_requester_allows_more() {
        // 20 x ~115 bytes: over 1232.
        let zones = zones(20, 0);
        let big = Ask {
            qname: "big.example.",
            qtype: RecordType::TXT,
            edns: Some((4096, 0)),
        };
        let (responded, bytes, message) = ask(&zones, &big, Transport::Udp);
        assert!(responded.truncated && message.truncation);
        assert!(message.answers.is_empty());
        assert!(bytes.len() <= usize::from(DEFAULT_UDP_PAYLOAD));
        let edns = message.edns.unwrap_or_else(|| panic!("no OPT"));
        assert_eq!(edns.max_payload(), DEFAULT_UDP_PAYLOAD);
        let (responded, _, message) = ask(&zones, &big, Transport::Tcp);
        assert!(!responded.truncated && !message.truncation);
        assert_eq!(txt_count(&message), 20);
    }

    #[test]
    fn additional_rrsets_that_do_not_fit_are_left_out_whole_without_tc() {
        // 40 A records for the MX target: 40 x 16 bytes in the additional section.
        let zones = zones(0, 40);
        let mail = |edns| Ask {
            qname: "mail.example.",
            qtype: RecordType::MX,
            edns,
        };
        let (responded, bytes, message) = ask(&zones, &mail(None), Transport::Udp);
        assert!(!responded.truncated && !message.truncation);
        assert_eq!(message.answers.len(), 1);
        assert!(message.additionals.is_empty(), "no partial additional RRset");
        assert!(bytes.len() <= 512);
        let (_, _, message) = ask(&zones, &mail(Some((1232, 0))), Transport::Udp);
        assert!(!message.truncation);
        assert_eq!(message.additionals.len(), 40);
    }

    #[test]
    fn header_and_edns_rules() {
        let zones = zones(0, 0);
        let ask_raw = |bytes: &[u8], transport| {
            let mut out = Vec::new();
            respond(&zones, bytes, transport, DEFAULT_UDP_PAYLOAD, &mut out)
                .map(|_| Message::from_vec(&out).unwrap_or_else(|err| panic!("response: {err}")))
        };
        let www = query(&Ask {
            qname: "www.example.",
            qtype: RecordType::A,
            edns: None,
        });

        // Shorter than a header: nothing to answer to.
        assert_eq!(
            ask_raw(&www[..11], Transport::Udp).err(),
            Some(Dropped::Malformed)
        );
        // A response is never answered.
        let mut response = www.clone();
        response[2] |= 0x80;
        assert_eq!(ask_raw(&response, Transport::Udp).err(), Some(Dropped::Response));

        // ID and RD copied, AA set, RA clear.
        let answer = ask_raw(&www, Transport::Udp).unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(answer.id, 0x1234);
        assert!(answer.recursion_desired && answer.authoritative && !answer.recursion_available);
        assert_eq!(answer.message_type, MessageType::Response);
        assert_eq!(answer.answers.len(), 1);

        // (case, query bytes, transport, rcode, question echoed)
        let mut two_questions = www.clone();
        two_questions[5] = 2;
        let mut no_question = www.clone();
        no_question[5] = 0;
        let mut notify = www.clone();
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        let cut = &www[..www.len() - 3];
        let mut chaos = Message::new(7, MessageType::Query, OpCode::Query);
        let mut question = Query::query(name("version.bind."), RecordType::TXT);
        question.set_query_class(DNSClass::CH);
        chaos.add_query(question);
        let chaos = chaos.to_vec().unwrap_or_else(|err| panic!("{err}"));
        let axfr = query(&Ask {
            qname: "example.",
            qtype: RecordType::AXFR,
            edns: None,
        });
        let axfr_outside = query(&Ask {
            qname: "example.org.",
            qtype: RecordType::AXFR,
            edns: None,
        });
        let outside = query(&Ask {
            qname: "www.example.org.",
            qtype: RecordType::A,
            edns: None,
        });
        let cases: [(&str, &[u8], Transport, ResponseCode, bool); 7] = [
            (
                "two questions",
                &two_questions,
                Transport::Udp,
                ResponseCode::FormErr,
                false,
            ),
            (
                "no question",
                &no_question,
                Transport::Udp,
                ResponseCode::FormErr,
                false,
            ),
            (
                "question cut short",
                cut,
                Transport::Udp,
                ResponseCode::FormErr,
                false,
            ),
            ("NOTIFY", &notify, Transport::Udp, ResponseCode::NotImp, true),
            ("class CH", &chaos, Transport::Udp, ResponseCode::Refused, true),
            (
                "AXFR over UDP",
                &axfr,
                Transport::Udp,
                ResponseCode::FormErr,
                true,
            ),
            (
                "outside our zones",
                &outside,
                Transport::Udp,
                ResponseCode::Refused,
                true,
            ),
        ];
        for (case, bytes, transport, rcode, echoed) in cases {
            let message = ask_raw(bytes, transport).unwrap_or_else(|err| panic!("{case}: {err:?}"));
            assert_eq!(message.response_code, rcode, "{case}");
            assert_eq!(message.queries.len(), usize::from(echoed), "{case}");
            assert!(message.answers.is_empty() && !message.authoritative, "{case}");
        }

        // Zone transfers over TCP are the transfer module's (TSIG, ACL), inside our zones or not.
        for bytes in [&axfr, &axfr_outside] {
            assert_eq!(ask_raw(bytes, Transport::Tcp).err(), Some(Dropped::Deferred));
        }

        // EDNS version 1: BADVERS (16 = 0 in the header, 1 in OPT), with our OPT at version 0.
        let mut out = Vec::new();
        let edns1 = query(&Ask {
            qname: "www.example.",
            qtype: RecordType::A,
            edns: Some((1232, 1)),
        });
        let responded = respond(&zones, &edns1, Transport::Udp, DEFAULT_UDP_PAYLOAD, &mut out)
            .unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(responded.rcode, ResponseCode::BADVERS);
        assert_eq!(out[3] & 0x0f, 0, "low rcode bits");
        let message = Message::from_vec(&out).unwrap_or_else(|err| panic!("{err}"));
        let edns = message.edns.unwrap_or_else(|| panic!("no OPT"));
        assert_eq!((edns.rcode_high(), edns.version()), (1, 0));
        assert!(message.answers.is_empty());

        // Two OPT records: FORMERR (RFC 6891 section 6.1.1).
        let mut twice = query(&Ask {
            qname: "www.example.",
            qtype: RecordType::A,
            edns: Some((1232, 0)),
        });
        let opt = twice[twice.len() - 11..].to_vec();
        twice.extend_from_slice(&opt);
        twice[11] = 2;
        let message = ask_raw(&twice, Transport::Udp).unwrap_or_else(|err| panic!("{err:?}"));
        assert_eq!(message.response_code, ResponseCode::FormErr);

        // OPT answered with our payload size; the DO bit copied.
        let mut edns_query = Message::new(9, MessageType::Query, OpCode::Query);
        edns_query.add_query(Query::query(name("www.example."), RecordType::A));
        let mut edns = Edns::new();
        edns.set_max_payload(4096).set_dnssec_ok(true);
        edns_query.set_edns(edns);
        let bytes = edns_query.to_vec().unwrap_or_else(|err| panic!("{err}"));
        let message = ask_raw(&bytes, Transport::Udp).unwrap_or_else(|err| panic!("{err:?}"));
        let edns = message.edns.unwrap_or_else(|| panic!("no OPT"));
        assert_eq!(edns.max_payload(), DEFAULT_UDP_PAYLOAD);
        assert!(edns.flags().dnssec_ok);
        assert_eq!(message.answers.len(), 1);
    }

    #[test]
    fn metric_labels_stay_few() {
        assert_eq!(QTYPE_LABELS[qtype_label_index(Some(RecordType::A))].1, "A");
        assert_eq!(
            QTYPE_LABELS[qtype_label_index(Some(RecordType::Unknown(65000)))].1,
            "OTHER"
        );
        assert_eq!(
            QTYPE_LABELS[qtype_label_index(Some(RecordType::NAPTR))].1,
            "OTHER"
        );
        assert_eq!(QTYPE_LABELS[qtype_label_index(None)].1, "NONE");
        assert_eq!(
            RCODE_LABELS[rcode_label_index(ResponseCode::NXDomain)].1,
            "NXDOMAIN"
        );
        assert_eq!(
            RCODE_LABELS[rcode_label_index(ResponseCode::BADCOOKIE)].1,
            "OTHER"
        );
    }
}
