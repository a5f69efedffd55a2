//! TSIG-signed dynamic UPDATE (RFC 2136) to an authoritative server such as BIND.
//!
//! ```text
//!   UpdateClient::add / delete_values / delete_rrset / send(zone, update RRs)
//!     -> one UPDATE message, signed (RFC 8945 4.3)
//!     -> UDP when it fits in 512 bytes (a truncated or missing answer falls back to TCP), else TCP
//!        (two-byte length framing, RFC 1035 4.2.2 / RFC 7766)
//!     -> the answer: same id, a response to an UPDATE, rcode and TSIG error mapped to UpdateError,
//!        its MAC verified against our request's MAC, its time within the fudge
//! ```
//!
//! The pieces of that exchange are public too ([`sign_message`], [`ResponseVerifier`], [`check_rcode`],
//! [`parse_answer`], [`connect`], [`write_frame`], [`read_frame`]): ferrite-dns's RFC2136 provider packs
//! batches into several messages on one connection and verifies multi-message AXFR answers with them.
//!
//! Why not hickory-net's client and hickory's `TSigner`: `TSigner` implements only hmac-sha256/384/512
//! while BIND setups still carry hmac-sha1 keys, and hickory-net turns a server's BADKEY/BADSIG answer
//! (which by RFC 8945 carries no MAC) into an opaque "verification failed", losing exactly what the
//! operator needs to read. Owning the exchange also gives each call one deadline.
//!
//! Every change this module builds is idempotent on the server (adding a record that exists,
//! deleting one that does not: both no-ops), so a call that failed is simply made again; retries and
//! backoff are the caller's.

use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::hmac;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{TSIG, TsigError, make_tsig_record, message_tbs};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::tsig::{
    FUDGE, TsigAlgorithm, TsigKey, received_tbs, tsig_of, tsig_offset, tsig_record_of, unix_now,
};

/// RFC 8945 5.3.1: at most 99 unsigned messages may follow one another in a signed multi-message answer.
pub const MAX_UNSIGNED_IN_A_ROW: usize = 99;

/// The largest UPDATE sent over UDP (RFC 1035's 512 bytes: no EDNS in an UPDATE).
pub const MAX_UDP_MESSAGE: usize = 512;

/// Why an exchange failed. [`UpdateError::reason`] gives a stable condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    /// The server refused the operation (REFUSED, or a prerequisite/zone rcode): usually its
    /// `allow-update` / `update-policy` / `allow-transfer` does not name the key, or the zone is not one
    /// it serves as primary.
    #[error("{server} refused the {op} for zone {zone}: {detail}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// "UPDATE" or "AXFR".
        op: &'static str,
        /// The answer's rcode.
        rcode: ResponseCode,
        /// The rcode and what it means.
        detail: String,
    },
    /// The server rejected the TSIG key (NOTAUTH with BADKEY, BADSIG or BADTIME), or answered NOTAUTH.
    #[error("TSIG key {key} was rejected by {server}: {detail}")]
    NotAuth {
        /// The key's name.
        key: String,
        /// The server.
        server: SocketAddr,
        /// The answer's rcode (NOTAUTH).
        rcode: ResponseCode,
        /// The TSIG error, if the server sent one (BADKEY, BADSIG, BADTIME).
        tsig_error: Option<TsigError>,
        /// Which check failed and what to look at.
        detail: String,
    },
    /// The server failed (SERVFAIL or another rcode an UPDATE or AXFR does not expect).
    #[error("{server} failed the {op} for zone {zone}: {detail}")]
    ServerFailure {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// "UPDATE" or "AXFR".
        op: &'static str,
        /// The answer's rcode.
        rcode: ResponseCode,
        /// The rcode.
        detail: String,
    },
    /// No connection or no answer within the timeout.
    #[error("{server} did not {what} within {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// "accept a connection", "answer the UPDATE", "complete the AXFR".
        what: &'static str,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The server could not be reached, or closed the connection.
    #[error("cannot reach {server}: {detail}")]
    Unreachable {
        /// The server.
        server: SocketAddr,
        /// The I/O error.
        detail: String,
    },
    /// The answer could not be parsed or did not verify (no TSIG, a wrong MAC, another message id), or the
    /// server could not parse ours (FORMERR, NOTIMP).
    #[error("malformed {op} exchange with {server}: {detail}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// "UPDATE" or "AXFR".
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Bad input: an algorithm, key name, secret or change that cannot be sent.
    #[error("{0}")]
    Invalid(String),
}

impl UpdateError {
    /// The condition reason: `Refused`, `NotAuth`, `ServerFailure`, `Timeout`, `Unreachable`, `Malformed`,
    /// `Invalid`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "Refused",
            Self::NotAuth { .. } => "NotAuth",
            Self::ServerFailure { .. } => "ServerFailure",
            Self::Timeout { .. } => "Timeout",
            Self::Unreachable { .. } => "Unreachable",
            Self::Malformed { .. } => "Malformed",
            Self::Invalid(_) => "Invalid",
        }
    }

    /// Whether trying again later may succeed without changing the configuration (the server was down or
    /// slow, or failed). `Refused`, `NotAuth` and `Invalid` need an operator.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. }
                | Self::Unreachable { .. }
                | Self::ServerFailure { .. }
                | Self::Malformed { .. }
        )
    }

    /// The rcode of the server's answer, when the error comes from one.
    pub fn rcode(&self) -> Option<ResponseCode> {
        match self {
            Self::Refused { rcode, .. } | Self::NotAuth { rcode, .. } | Self::ServerFailure { rcode, .. } => {
                Some(*rcode)
            }
            _ => None,
        }
    }

    /// The same error with `note` appended to its detail (refusals and failures only): "N earlier
    /// messages were applied" from the middle of a batch.
    pub fn with_note(self, note: &str) -> Self {
        match self {
            Self::Refused {
                server,
                zone,
                op,
                rcode,
                detail,
            } => Self::Refused {
                server,
                zone,
                op,
                rcode,
                detail: detail + note,
            },
            Self::ServerFailure {
                server,
                zone,
                op,
                rcode,
                detail,
            } => Self::ServerFailure {
                server,
                zone,
                op,
                rcode,
                detail: detail + note,
            },
            Self::NotAuth {
                key,
                server,
                rcode,
                tsig_error,
                detail,
            } => Self::NotAuth {
                key,
                server,
                rcode,
                tsig_error,
                detail: detail + note,
            },
            other => other,
        }
    }
}

/// How long each step of an UPDATE may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing a TCP connection.
    pub connect: Duration,
    /// One UPDATE: sending it and reading its answer (over UDP and, after a fallback, TCP together).
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
        }
    }
}

/// Which transport an [`UpdateClient`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// UDP for messages of at most [`MAX_UDP_MESSAGE`] bytes (TCP when the answer is truncated or does
    /// not come within half the request timeout), TCP for larger ones.
    #[default]
    Auto,
    /// TCP only.
    Tcp,
}

/// Sends single TSIG-signed UPDATE messages to one server with one key.
#[derive(Debug, Clone)]
pub struct UpdateClient {
    server: SocketAddr,
    key: TsigKey,
    timeouts: Timeouts,
    transport: Transport,
}

impl UpdateClient {
    /// A client for `server`, signing with `key`. Zero timeouts are refused.
    pub fn new(server: SocketAddr, key: TsigKey, timeouts: Timeouts) -> Result<Self, UpdateError> {
        for (what, t) in [("connect", timeouts.connect), ("request", timeouts.request)] {
            if t.is_zero() {
                return Err(UpdateError::Invalid(format!(
                    "the {what} timeout must be above zero"
                )));
            }
        }
        Ok(Self {
            server,
            key,
            timeouts,
            transport: Transport::Auto,
        })
    }

    /// The same client with another transport.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The key.
    pub fn key(&self) -> &TsigKey {
        &self.key
    }

    /// Adds `records` (one RRset: same name and type, all inside `zone`) to what the server has (RFC 2136
    /// 2.5.1); values already there stay as they are. The records' TTL becomes the RRset's.
    pub async fn add(&self, zone: &Name, records: &[Record]) -> Result<(), UpdateError> {
        self.send(zone, add_rrs(zone, records)?).await
    }

    /// Deletes exactly these values (RFC 2136 2.5.4); other values of the RRset stay.
    pub async fn delete_values(&self, zone: &Name, records: &[Record]) -> Result<(), UpdateError> {
        self.send(zone, delete_value_rrs(zone, records)?).await
    }

    /// Deletes the RRset `name`/`rtype` (RFC 2136 2.5.2); nothing else at the name is touched.
    pub async fn delete_rrset(&self, zone: &Name, name: &Name, rtype: RecordType) -> Result<(), UpdateError> {
        self.send(zone, vec![delete_rrset_rr(zone, name, rtype)?]).await
    }

    /// Sends one UPDATE for `zone` with these update RRs (as [`add_rrs`], [`delete_value_rrs`] and
    /// [`delete_rrset_rr`] build them) and checks the signed answer.
    pub async fn send(&self, zone: &Name, update_rrs: Vec<Record>) -> Result<(), UpdateError> {
        let deadline = Instant::now() + self.timeouts.request;
        let mut message = update_message(zone, update_rrs);
        let id = message.metadata.id;
        let mut verifier = sign_message(&mut message, &self.key).map_err(|d| self.malformed(d))?;
        let bytes = message
            .to_vec()
            .map_err(|e| self.malformed(format!("cannot encode the update: {e}")))?;
        if bytes.len() > usize::from(u16::MAX) {
            return Err(UpdateError::Invalid(format!(
                "an UPDATE message of {} bytes does not fit in one TCP message (at most 65535)",
                bytes.len()
            )));
        }
        let zone_text = zone.to_string();
        if self.transport == Transport::Auto && bytes.len() <= MAX_UDP_MESSAGE {
            // Half the request timeout for UDP, so a lost datagram still leaves time for TCP.
            let udp_deadline = Instant::now() + self.timeouts.request / 2;
            match self.exchange_udp(&bytes, id, udp_deadline).await {
                Ok(Some(raw)) => {
                    let answer = parse_answer(self.server, "UPDATE", &raw, id, OpCode::Update)?;
                    if !answer.metadata.truncation {
                        check_rcode(self.server, &zone_text, &self.key, "UPDATE", &answer)?;
                        return verifier.verify(&raw, &answer).map_err(|d| self.malformed(d));
                    }
                }
                // No answer in time: the datagram or its answer was lost, or UDP is filtered; TCP next.
                Ok(None) => {}
                Err(e) => return Err(e),
            }
            // The UDP attempt's MAC is not the one the TCP answer covers: sign again.
            message.signature = None;
            verifier = sign_message(&mut message, &self.key).map_err(|d| self.malformed(d))?;
        }
        let bytes = message
            .to_vec()
            .map_err(|e| self.malformed(format!("cannot encode the update: {e}")))?;
        let mut stream = connect(self.server, deadline, self.timeouts.connect).await?;
        let timeout = |_| UpdateError::Timeout {
            server: self.server,
            what: "answer the UPDATE",
            timeout: self.timeouts.request,
        };
        let raw = tokio::time::timeout_at(deadline, async {
            write_frame(&mut stream, &bytes).await?;
            read_frame(&mut stream).await
        })
        .await
        .map_err(timeout)?
        .map_err(|e| unreachable(self.server, e))?;
        let answer = parse_answer(self.server, "UPDATE", &raw, id, OpCode::Update)?;
        check_rcode(self.server, &zone_text, &self.key, "UPDATE", &answer)?;
        verifier.verify(&raw, &answer).map_err(|d| self.malformed(d))
    }

    /// One datagram out, the answer with our id from the server back; `None` when none came in time.
    async fn exchange_udp(
        &self,
        bytes: &[u8],
        id: u16,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, UpdateError> {
        let bind: SocketAddr = if self.server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(bind)
            .await
            .map_err(|e| unreachable(self.server, e))?;
        socket
            .connect(self.server)
            .await
            .map_err(|e| unreachable(self.server, e))?;
        socket
            .send(bytes)
            .await
            .map_err(|e| unreachable(self.server, e))?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(unreachable(self.server, e)),
                Ok(Ok(n)) => n,
            };
            // A stray datagram (an old answer, another id) is skipped; the connected socket only
            // receives from the server.
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok(Some(buf[..n].to_vec()));
            }
        }
    }

    fn malformed(&self, detail: String) -> UpdateError {
        UpdateError::Malformed {
            server: self.server,
            op: "UPDATE",
            detail,
        }
    }
}

/// An UPDATE message for `zone` (its zone section) with these update RRs and a random id.
pub fn update_message(zone: &Name, update_rrs: Vec<Record>) -> Message {
    // hickory's own query() picks a random id.
    let id = Message::query().metadata.id;
    let mut message = Message::new(id, MessageType::Query, OpCode::Update);
    message.metadata.recursion_desired = false;
    let mut q = Query::new();
    q.set_name(zone.clone())
        .set_query_class(DNSClass::IN)
        .set_query_type(RecordType::SOA);
    message.add_zone(q);
    for rr in update_rrs {
        message.add_update(rr);
    }
    message
}

/// Checks that `name` is inside `zone` and `rtype` is one an UPDATE may change.
fn check_target(zone: &Name, name: &Name, rtype: RecordType, what: &str) -> Result<(), UpdateError> {
    let invalid = |why: String| UpdateError::Invalid(format!("zone {zone}: {what} {name} {rtype}: {why}"));
    if !zone.zone_of(name) {
        return Err(invalid("the name is outside the zone".to_string()));
    }
    match rtype {
        RecordType::SOA => Err(invalid("the SOA is the server's".to_string())),
        RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT | RecordType::TSIG => Err(
            invalid(format!("{rtype} is not a record type that can be updated")),
        ),
        _ => Ok(()),
    }
}

/// The RRs of one RRset, checked: not empty, one name and type, data present.
fn one_rrset<'a>(zone: &Name, records: &'a [Record], what: &str) -> Result<&'a Record, UpdateError> {
    let first = records
        .first()
        .ok_or_else(|| UpdateError::Invalid(format!("zone {zone}: {what}: no records")))?;
    check_target(zone, &first.name, first.record_type(), what)?;
    for r in records {
        if r.name != first.name || r.record_type() != first.record_type() {
            return Err(UpdateError::Invalid(format!(
                "zone {zone}: {what}: record {} {} is not of the RRset {} {}; one call is one RRset",
                r.name,
                r.record_type(),
                first.name,
                first.record_type()
            )));
        }
        if matches!(r.data, RData::Update0(_)) {
            return Err(UpdateError::Invalid(format!(
                "zone {zone}: {what}: record {} {} has no data",
                r.name,
                r.record_type()
            )));
        }
    }
    Ok(first)
}

/// Update RRs adding `records` (one RRset) to their RRset (RFC 2136 2.5.1: class IN).
pub fn add_rrs(zone: &Name, records: &[Record]) -> Result<Vec<Record>, UpdateError> {
    one_rrset(zone, records, "add")?;
    Ok(records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.dns_class = DNSClass::IN;
            r
        })
        .collect())
}

/// Update RRs deleting exactly these values (RFC 2136 2.5.4: class NONE, TTL 0, the data kept).
pub fn delete_value_rrs(zone: &Name, records: &[Record]) -> Result<Vec<Record>, UpdateError> {
    one_rrset(zone, records, "delete")?;
    Ok(records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            r.dns_class = DNSClass::NONE;
            r.ttl = 0;
            r
        })
        .collect())
}

/// The update RR deleting the RRset `name`/`rtype` (RFC 2136 2.5.2: class ANY, TTL 0, no data). The
/// apex NS RRset is refused (it is the server's).
pub fn delete_rrset_rr(zone: &Name, name: &Name, rtype: RecordType) -> Result<Record, UpdateError> {
    check_target(zone, name, rtype, "delete")?;
    if name == zone && rtype == RecordType::NS {
        return Err(UpdateError::Invalid(format!(
            "zone {zone}: delete {name} NS: the apex NS RRset is the server's"
        )));
    }
    let mut r = Record::update0(name.clone(), 0, rtype);
    r.dns_class = DNSClass::ANY;
    Ok(r)
}

/// Signs `message` with `key` (RFC 8945 4.3) and returns the verifier for its answer.
pub fn sign_message(message: &mut Message, key: &TsigKey) -> Result<ResponseVerifier, String> {
    let pre = TSIG::new(
        key.algorithm().hickory(),
        unix_now(),
        FUDGE,
        Vec::new(),
        message.metadata.id,
        None,
        Vec::new(),
    );
    let tbs = message_tbs(&*message, &pre, key.name())
        .map_err(|e| format!("cannot encode the message to sign: {e}"))?;
    let mac = hmac::sign(&key.hmac_key(), &tbs).as_ref().to_vec();
    message.signature = Some(Box::new(make_tsig_record(
        key.name().clone(),
        pre.set_mac(mac.clone()),
    )));
    Ok(ResponseVerifier {
        key: key.clone(),
        previous_mac: mac,
        first: true,
        pending: Vec::new(),
        unsigned_in_a_row: 0,
    })
}

/// Verifies the answers to one signed request (RFC 8945 5.3 and 5.3.1): the first must be signed; later
/// ones (an AXFR) may leave up to [`MAX_UNSIGNED_IN_A_ROW`] unsigned, covered by the next signed one.
#[derive(Debug)]
pub struct ResponseVerifier {
    key: TsigKey,
    previous_mac: Vec<u8>,
    first: bool,
    /// Unsigned messages since the last signed one.
    pending: Vec<u8>,
    unsigned_in_a_row: usize,
}

impl ResponseVerifier {
    /// Checks one answer message: `raw` as received, `message` parsed from it.
    pub fn verify(&mut self, raw: &[u8], message: &Message) -> Result<(), String> {
        let Some((name, tsig)) = tsig_record_of(message) else {
            if self.first {
                return Err("the answer is not TSIG-signed".to_string());
            }
            self.unsigned_in_a_row += 1;
            if self.unsigned_in_a_row > MAX_UNSIGNED_IN_A_ROW {
                return Err(format!(
                    "more than {MAX_UNSIGNED_IN_A_ROW} unsigned messages in a row"
                ));
            }
            self.pending.extend_from_slice(raw);
            return Ok(());
        };
        let algorithm = self.key.algorithm();
        if name != *self.key.name() || tsig.algorithm != algorithm.hickory() {
            return Err(format!(
                "the answer is signed with key {name} ({}), not {} ({algorithm})",
                tsig.algorithm,
                self.key.name(),
            ));
        }
        let start =
            tsig_offset(raw).ok_or_else(|| "cannot find the TSIG record in the answer".to_string())?;
        let tbs = received_tbs(
            raw,
            start,
            &tsig,
            &name,
            Some(&self.previous_mac),
            &self.pending,
            self.first,
        )?;
        self.pending.clear();
        hmac::verify(&self.key.hmac_key(), &tbs, &tsig.mac).map_err(|_| {
            "the answer's TSIG MAC does not verify (it was not signed with this key)".to_string()
        })?;
        let now = unix_now();
        if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
            return Err(format!(
                "the answer was signed at {} and this host's clock says {now}: more than the fudge of {} s apart",
                tsig.time, tsig.fudge
            ));
        }
        self.previous_mac = tsig.mac;
        self.first = false;
        self.unsigned_in_a_row = 0;
        Ok(())
    }

    /// Unsigned messages since the last signed one (a transfer must end signed: 0).
    pub fn unsigned_in_a_row(&self) -> usize {
        self.unsigned_in_a_row
    }

    /// The MAC the next answer's signature covers (the request's, then the last verified answer's).
    pub fn previous_mac(&self) -> &[u8] {
        &self.previous_mac
    }
}

/// Parses an answer and checks it answers the request: same id, a response, the same opcode.
pub fn parse_answer(
    server: SocketAddr,
    op: &'static str,
    raw: &[u8],
    id: u16,
    opcode: OpCode,
) -> Result<Message, UpdateError> {
    let malformed = |detail: String| UpdateError::Malformed { server, op, detail };
    let message = Message::from_vec(raw).map_err(|e| malformed(format!("cannot parse the answer: {e}")))?;
    if message.metadata.id != id {
        return Err(malformed(format!(
            "answer id {} for request id {id}",
            message.metadata.id
        )));
    }
    if message.metadata.message_type != MessageType::Response || message.metadata.op_code != opcode {
        return Err(malformed(
            "the answer is not a response to the request".to_string(),
        ));
    }
    Ok(message)
}

/// Maps an answer's rcode (and TSIG error) to an error; `Ok` for NOERROR.
pub fn check_rcode(
    server: SocketAddr,
    zone: &str,
    key: &TsigKey,
    op: &'static str,
    message: &Message,
) -> Result<(), UpdateError> {
    let rcode = message.metadata.response_code;
    let tsig_error = tsig_of(message).and_then(|t| t.error);
    let zone = zone.to_string();
    // As named.conf spells it: `key "ferrite-dns"`, without the root label.
    let key_name = key.name().to_string().trim_end_matches('.').to_string();
    let algorithm: TsigAlgorithm = key.algorithm();
    let not_auth = |detail: String| UpdateError::NotAuth {
        key: key_name.clone(),
        server,
        rcode,
        tsig_error,
        detail,
    };
    match tsig_error {
        Some(TsigError::BadKey) => {
            return Err(not_auth(format!(
                "BADKEY: the server has no key {key_name} with algorithm {algorithm} (check the key's name and algorithm in named.conf)"
            )));
        }
        Some(TsigError::BadSig) => {
            return Err(not_auth(
                "BADSIG: the signature did not verify (the secret differs from the server's)".to_string(),
            ));
        }
        Some(TsigError::BadTime) => {
            return Err(not_auth(format!(
                "BADTIME: the clocks of this host and the server differ by more than {FUDGE} s"
            )));
        }
        Some(other) => {
            return Err(not_auth(format!(
                "TSIG error {other:?} in the {op} answer (rcode {rcode})"
            )));
        }
        None => {}
    }
    let detail = |what: &str| format!("{rcode}: {what}");
    match rcode {
        ResponseCode::NoError => Ok(()),
        ResponseCode::NotAuth => Err(not_auth(format!(
            "NOTAUTH to the {op}: the server does not accept the key for zone {zone}, or is not authoritative for it"
        ))),
        ResponseCode::Refused => Err(UpdateError::Refused {
            server,
            zone,
            op,
            rcode,
            detail: detail(if op == "AXFR" {
                "the server's allow-transfer does not permit this key, or it does not serve the zone"
            } else {
                "the server's allow-update (or update-policy) does not permit this key, or it does not serve the zone as primary"
            }),
        }),
        ResponseCode::NotZone | ResponseCode::YXDomain | ResponseCode::YXRRSet | ResponseCode::NXRRSet => {
            Err(UpdateError::Refused {
                server,
                zone,
                op,
                rcode,
                detail: detail("the server does not take this change for the zone"),
            })
        }
        ResponseCode::FormErr | ResponseCode::NotImp => Err(UpdateError::Malformed {
            server,
            op,
            detail: detail("the server did not accept the message"),
        }),
        ResponseCode::ServFail => Err(UpdateError::ServerFailure {
            server,
            zone,
            op,
            rcode,
            detail: detail("the server failed (see its log)"),
        }),
        _ => Err(UpdateError::ServerFailure {
            server,
            zone,
            op,
            rcode,
            detail: detail("unexpected rcode"),
        }),
    }
}

/// A TCP connection to `server`, within `connect_timeout` and before `deadline`.
pub async fn connect(
    server: SocketAddr,
    deadline: Instant,
    connect_timeout: Duration,
) -> Result<TcpStream, UpdateError> {
    let deadline = deadline.min(Instant::now() + connect_timeout);
    let stream = tokio::time::timeout_at(deadline, TcpStream::connect(server))
        .await
        .map_err(|_| UpdateError::Timeout {
            server,
            what: "accept a connection",
            timeout: connect_timeout,
        })?
        .map_err(|e| unreachable(server, e))?;
    // Best effort: small request/answer exchanges.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `Unreachable` from an I/O error (an early close said as such).
pub fn unreachable(server: SocketAddr, e: std::io::Error) -> UpdateError {
    let detail = match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
        _ => e.to_string(),
    };
    UpdateError::Unreachable { server, detail }
}

/// Writes one DNS message with its two-byte length (RFC 1035 4.2.2).
pub async fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message above 65535 bytes"))?;
    let mut buf = Vec::with_capacity(bytes.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    stream.write_all(&buf).await?;
    stream.flush().await
}

/// Reads one length-framed DNS message (at most 65535 bytes by construction).
pub async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::tsig::TsigAlgorithm as HickoryTsigAlgorithm;
    use hickory_proto::rr::rdata::{A, TXT};
    use std::net::Ipv4Addr;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn txt(owner: &str, value: &str) -> Record {
        Record::from_rdata(name(owner), 60, RData::TXT(TXT::new(vec![value.to_string()])))
    }

    fn key() -> TsigKey {
        TsigKey::new(
            "ferrite-key",
            TsigAlgorithm::HmacSha256,
            b"0123456789abcdef0123456789abcdef",
        )
        .unwrap()
    }

    #[test]
    fn algorithms_parse_by_bind_and_cert_manager_names() {
        for (s, want) in [
            ("hmac-sha256", TsigAlgorithm::HmacSha256),
            ("HMAC-SHA512", TsigAlgorithm::HmacSha512),
            ("hmac-sha1.", TsigAlgorithm::HmacSha1),
            ("hmac-sha384", TsigAlgorithm::HmacSha384),
            ("HMACSHA256", TsigAlgorithm::HmacSha256),
            ("HMACSHA1", TsigAlgorithm::HmacSha1),
        ] {
            assert_eq!(TsigAlgorithm::parse(s).unwrap(), want, "{s}");
            assert_eq!(TsigAlgorithm::parse(want.name()).unwrap(), want);
        }
        let err = TsigAlgorithm::parse("hmac-md5").unwrap_err();
        assert_eq!(err.reason(), "Invalid");
        assert!(err.to_string().contains("hmac-md5"), "{err}");
        assert_eq!(TsigAlgorithm::default(), TsigAlgorithm::HmacSha256);
    }

    #[test]
    fn changes_become_rfc2136_update_rrs() {
        let zone = name("example.test.");
        let add = add_rrs(&zone, &[txt("_acme-challenge.www.example.test.", "v1")]).unwrap();
        assert_eq!((add[0].dns_class, add[0].ttl), (DNSClass::IN, 60));
        let del = delete_value_rrs(&zone, &[txt("_acme-challenge.www.example.test.", "v1")]).unwrap();
        assert_eq!((del[0].dns_class, del[0].ttl), (DNSClass::NONE, 0));
        assert!(
            matches!(del[0].data, RData::TXT(_)),
            "the value is kept: only it is deleted"
        );
        let set = delete_rrset_rr(&zone, &name("www.example.test."), RecordType::A).unwrap();
        assert_eq!((set.dns_class, set.ttl), (DNSClass::ANY, 0));
        assert!(matches!(set.data, RData::Update0(RecordType::A)));
    }

    #[test]
    fn bad_changes_are_refused_with_what_was_wrong() {
        let zone = name("example.test.");
        let cases: Vec<(Result<Vec<Record>, UpdateError>, &str)> = vec![
            (add_rrs(&zone, &[txt("x.other.test.", "v")]), "outside the zone"),
            (add_rrs(&zone, &[]), "no records"),
            (
                add_rrs(&zone, &[txt("a.example.test.", "v"), txt("b.example.test.", "v")]),
                "one call is one RRset",
            ),
            (
                delete_rrset_rr(&zone, &name("example.test."), RecordType::SOA).map(|r| vec![r]),
                "SOA",
            ),
            (
                delete_rrset_rr(&zone, &name("example.test."), RecordType::NS).map(|r| vec![r]),
                "apex NS",
            ),
        ];
        for (got, want) in cases {
            let e = got.unwrap_err();
            assert_eq!(e.reason(), "Invalid");
            assert!(e.to_string().contains(want), "{e} lacks {want}");
        }
        let a = Record::from_rdata(name("a.example.test."), 5, RData::A(A(Ipv4Addr::LOCALHOST)));
        assert!(add_rrs(&zone, &[a]).is_ok());
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let zero = Timeouts {
            request: Duration::ZERO,
            ..Timeouts::default()
        };
        assert_eq!(
            UpdateClient::new(addr, key(), zero).unwrap_err().reason(),
            "Invalid"
        );
        assert!(
            !format!(
                "{:?}",
                UpdateClient::new(addr, key(), Timeouts::default()).unwrap()
            )
            .contains("0123456789")
        );
    }

    /// A response signed as a server would (RFC 8945 4.3.3) over the request's MAC.
    fn server_answer(key: &TsigKey, request_mac: &[u8], id: u16, rcode: ResponseCode) -> Vec<u8> {
        let mut resp = Message::new(id, MessageType::Response, OpCode::Update);
        resp.metadata.response_code = rcode;
        let pre = TSIG::new(
            HickoryTsigAlgorithm::HmacSha256,
            unix_now(),
            FUDGE,
            Vec::new(),
            id,
            None,
            Vec::new(),
        );
        let mut tbs = (request_mac.len() as u16).to_be_bytes().to_vec();
        tbs.extend_from_slice(request_mac);
        tbs.extend(message_tbs(&resp, &pre, key.name()).unwrap());
        let mac = hmac::sign(&key.hmac_key(), &tbs).as_ref().to_vec();
        resp.signature = Some(Box::new(make_tsig_record(key.name().clone(), pre.set_mac(mac))));
        resp.to_vec().unwrap()
    }

    #[test]
    fn answers_verify_with_the_same_key_only() {
        let k = key();
        let mut req = update_message(&name("example.test."), vec![]);
        let id = req.metadata.id;
        let mut v = sign_message(&mut req, &k).unwrap();
        let raw = server_answer(&k, v.previous_mac(), id, ResponseCode::NoError);
        let parsed = Message::from_vec(&raw).unwrap();
        let mut again = sign_message(&mut update_message(&name("example.test."), vec![]), &k).unwrap();
        again.previous_mac = v.previous_mac().to_vec();
        v.verify(&raw, &parsed).unwrap();
        let mut bad = raw.clone();
        bad[3] ^= 0x01;
        assert!(
            again
                .verify(&bad, &Message::from_vec(&bad).unwrap())
                .unwrap_err()
                .contains("does not verify")
        );
        let other = TsigKey::new("ferrite-key", TsigAlgorithm::HmacSha256, b"another secret").unwrap();
        let mut v3 = sign_message(&mut update_message(&name("example.test."), vec![]), &other).unwrap();
        v3.previous_mac = again.previous_mac.clone();
        assert!(v3.verify(&raw, &parsed).is_err());
        let unsigned = Message::new(7, MessageType::Response, OpCode::Update);
        let mut v4 = sign_message(&mut update_message(&name("example.test."), vec![]), &k).unwrap();
        assert!(
            v4.verify(&unsigned.to_vec().unwrap(), &unsigned)
                .unwrap_err()
                .contains("not TSIG-signed")
        );
    }

    #[test]
    fn rcodes_map_to_typed_errors() {
        let server: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let k = key();
        let answer = |rcode| {
            let mut m = Message::new(1, MessageType::Response, OpCode::Update);
            m.metadata.response_code = rcode;
            m
        };
        assert!(check_rcode(server, "z.", &k, "UPDATE", &answer(ResponseCode::NoError)).is_ok());
        for (rcode, reason) in [
            (ResponseCode::Refused, "Refused"),
            (ResponseCode::NotAuth, "NotAuth"),
            (ResponseCode::NotZone, "Refused"),
            (ResponseCode::ServFail, "ServerFailure"),
            (ResponseCode::FormErr, "Malformed"),
        ] {
            let e = check_rcode(server, "z.", &k, "UPDATE", &answer(rcode)).unwrap_err();
            assert_eq!(e.reason(), reason, "{rcode}");
            if reason != "Malformed" {
                assert_eq!(e.rcode(), Some(rcode));
            }
        }
        let noted = check_rcode(server, "z.", &k, "UPDATE", &answer(ResponseCode::Refused))
            .unwrap_err()
            .with_note(" (2 earlier)");
        assert!(noted.to_string().ends_with("(2 earlier)"), "{noted}");
    }
}
