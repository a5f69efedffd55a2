//! The RFC2136 provider: TSIG-signed dynamic UPDATE (RFC 2136) and TSIG-signed AXFR (RFC 5936) against an
//! authoritative server such as BIND, over TCP.
//!
//! ```text
//!   Rfc2136Client::read_zone ──> AXFR query, signed ──> every answer message verified (RFC 8945 5.3.1
//!                                                        chaining) ──> Vec<Record> (the zone, SOA once)
//!   Rfc2136Client::apply(batch) ──> changes packed into as few UPDATE messages as the limits allow,
//!                                   each signed, sent one after another on one connection,
//!                                   each answer checked: rcode, TSIG error, MAC, time
//! ```
//!
//! hickory-proto builds and parses the messages and the TSIG record (its `message_tbs`,
//! `emit_tsig_for_mac` and `make_tsig_record`); the MAC is computed here with aws-lc-rs, and the transport
//! (two-byte length framing over TCP, RFC 1035 4.2.2 / RFC 7766) is ours. Two reasons not to use
//! hickory-net's client and hickory's `TSigner`: `TSigner` implements only hmac-sha256/384/512 while BIND
//! setups still carry hmac-sha1 keys, and hickory-net's client turns a server's BADKEY/BADSIG answer
//! (which by RFC 8945 carries no MAC) into an opaque "verification failed" error, losing exactly what the
//! operator needs to read: that the key was rejected. Owning the exchange also gives each call one deadline.
//!
//! Each call opens its own connection and has a timeout; retries with backoff are the caller's.
//! Every change is idempotent (adding a record that exists, deleting an RRset that does not: both are
//! no-ops on the server), so a batch that failed half-way is simply sent again.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use aws_lc_rs::hmac;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::tsig::{
    TSIG, TsigAlgorithm as HickoryTsigAlgorithm, TsigError, make_tsig_record, message_tbs,
};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::tsig::{received_tbs, tsig_of, tsig_offset, tsig_record_of, unix_now};

/// The TSIG fudge we sign with: the clock difference the server accepts (RFC 8945 recommends 300 s).
pub use crate::tsig::FUDGE;

/// The default bound on one UPDATE message's size, in bytes as encoded without name compression (so the
/// message on the wire is smaller). TCP messages can be at most 65535 bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 60_000;

/// The default bound on the number of update RRs in one UPDATE message.
pub const DEFAULT_MAX_RRS_PER_MESSAGE: usize = 1_000;

/// RFC 8945 5.3.1: at most 99 unsigned messages may follow one another in a signed AXFR answer.
const MAX_UNSIGNED_IN_A_ROW: usize = 99;

/// A TSIG algorithm the provider signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsigAlgorithm {
    /// hmac-sha1 (accepted for existing keys; RFC 8945 says SHA-256 should be used).
    HmacSha1,
    /// hmac-sha256, the default (`tsig-keygen`'s default too).
    #[default]
    HmacSha256,
    /// hmac-sha384.
    HmacSha384,
    /// hmac-sha512.
    HmacSha512,
}

impl TsigAlgorithm {
    /// Parses the name used in `DNSZone.spec.provider.rfc2136.tsigAlgorithm` and in BIND's
    /// `algorithm` statement: `hmac-sha256`, `hmac-sha512`, `hmac-sha384`, `hmac-sha1` (case-insensitive,
    /// a trailing `.` allowed).
    pub fn parse(name: &str) -> Result<Self, Rfc2136Error> {
        match name.trim().trim_end_matches('.').to_ascii_lowercase().as_str() {
            "hmac-sha1" => Ok(Self::HmacSha1),
            "hmac-sha256" => Ok(Self::HmacSha256),
            "hmac-sha384" => Ok(Self::HmacSha384),
            "hmac-sha512" => Ok(Self::HmacSha512),
            other => Err(Rfc2136Error::Invalid(format!(
                "TSIG algorithm {other:?} is not supported (supported: hmac-sha256, hmac-sha512, hmac-sha384, hmac-sha1)"
            ))),
        }
    }

    /// The algorithm's name as BIND writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => "hmac-sha1",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    pub(crate) fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    pub(crate) fn hickory(self) -> HickoryTsigAlgorithm {
        match self {
            Self::HmacSha1 => HickoryTsigAlgorithm::HmacSha1,
            Self::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            Self::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            Self::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long each step may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// One UPDATE message: sending it and reading its answer.
    pub request: Duration,
    /// A whole zone transfer, from the query to the last message.
    pub transfer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
            transfer: Duration::from_secs(60),
        }
    }
}

/// One change to the zone. Each change is one RRset (one name and type) and is never split across
/// UPDATE messages, so a replace is atomic on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add these records to their RRset (RFC 2136 2.5.1). All records have the same name and type; records
    /// already present are left as they are. The records' TTL becomes the RRset's TTL.
    Add(Vec<Record>),
    /// Delete the RRset `name`/`rtype` (RFC 2136 2.5.2); nothing else at the name is touched.
    Delete {
        /// The owner name.
        name: Name,
        /// The type.
        rtype: RecordType,
    },
    /// Replace the RRset `name`/`rtype` by `records`: a delete and adds in the same message, so the server
    /// applies both or neither. `records` all have that name and type and must not be empty (use
    /// `Delete`).
    Replace {
        /// The owner name.
        name: Name,
        /// The type.
        rtype: RecordType,
        /// The new RRset.
        records: Vec<Record>,
    },
}

impl Change {
    fn describe(&self) -> String {
        match self {
            Self::Add(records) => match records.first() {
                Some(r) => format!("add {} {}", r.name, r.record_type()),
                None => "add (no records)".to_string(),
            },
            Self::Delete { name, rtype } => format!("delete {name} {rtype}"),
            Self::Replace { name, rtype, .. } => format!("replace {name} {rtype}"),
        }
    }
}

/// What `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ApplyReport {
    /// UPDATE messages sent (and accepted).
    pub messages: usize,
    /// Changes applied.
    pub changes: usize,
    /// Update RRs sent (deletes count one each).
    pub rrs: usize,
}

/// Why a call failed. [`Rfc2136Error::reason`] gives the condition reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rfc2136Error {
    /// The server refused the operation (REFUSED, or a prerequisite/zone rcode): usually its
    /// `allow-update` / `allow-transfer` does not name the key, or the zone is not one it serves as primary.
    #[error("{server} refused the {op} for zone {zone}: {detail}")]
    Refused {
        /// The server.
        server: SocketAddr,
        /// The zone.
        zone: String,
        /// "UPDATE" or "AXFR".
        op: &'static str,
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

impl Rfc2136Error {
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
}

/// A client for one zone on one server, with one TSIG key.
#[derive(Clone)]
pub struct Rfc2136Client {
    server: SocketAddr,
    zone: Name,
    key_name: Name,
    algorithm: TsigAlgorithm,
    key: hmac::Key,
    timeouts: Timeouts,
    max_message_bytes: usize,
    max_rrs_per_message: usize,
}

impl fmt::Debug for Rfc2136Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Rfc2136Client")
            .field("server", &self.server)
            .field("zone", &self.zone.to_string())
            .field("key_name", &self.key_name.to_string())
            .field("algorithm", &self.algorithm)
            .field("timeouts", &self.timeouts)
            .finish_non_exhaustive()
    }
}

impl Rfc2136Client {
    /// A client for `zone` on `server`, signing with the key `key_name` (as named in the server's
    /// `key "<name>" { ... }` statement), `algorithm` and the decoded `secret` (the bytes of BIND's base64
    /// `secret`).
    pub fn new(
        server: SocketAddr,
        zone: &str,
        key_name: &str,
        algorithm: TsigAlgorithm,
        secret: &[u8],
        timeouts: Timeouts,
    ) -> Result<Self, Rfc2136Error> {
        let zone = parse_fqdn(zone).map_err(|e| Rfc2136Error::Invalid(format!("zone {zone:?}: {e}")))?;
        if zone.is_root() {
            return Err(Rfc2136Error::Invalid("zone must not be the root".to_string()));
        }
        let key_name = parse_fqdn(key_name)
            .map_err(|e| Rfc2136Error::Invalid(format!("TSIG key name {key_name:?}: {e}")))?;
        if key_name.is_root() {
            return Err(Rfc2136Error::Invalid(
                "TSIG key name must not be empty".to_string(),
            ));
        }
        if secret.is_empty() {
            return Err(Rfc2136Error::Invalid(format!(
                "TSIG key {key_name}: the secret is empty"
            )));
        }
        for (what, t) in [
            ("connect", timeouts.connect),
            ("request", timeouts.request),
            ("transfer", timeouts.transfer),
        ] {
            if t.is_zero() {
                return Err(Rfc2136Error::Invalid(format!(
                    "the {what} timeout must be above zero"
                )));
            }
        }
        Ok(Self {
            server,
            zone,
            key_name,
            algorithm,
            key: hmac::Key::new(algorithm.hmac(), secret),
            timeouts,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_rrs_per_message: DEFAULT_MAX_RRS_PER_MESSAGE,
        })
    }

    /// Bounds for one UPDATE message: its size (bytes, uncompressed; at most 65000) and its number of update
    /// RRs (at least 1). A single change larger than the bounds still goes alone in one message if it fits in
    /// 65000 bytes.
    pub fn with_limits(
        mut self,
        max_message_bytes: usize,
        max_rrs_per_message: usize,
    ) -> Result<Self, Rfc2136Error> {
        if !(512..=65_000).contains(&max_message_bytes) {
            return Err(Rfc2136Error::Invalid(format!(
                "max message size {max_message_bytes} must be between 512 and 65000 bytes"
            )));
        }
        if max_rrs_per_message == 0 {
            return Err(Rfc2136Error::Invalid(
                "max RRs per message must be at least 1".to_string(),
            ));
        }
        self.max_message_bytes = max_message_bytes;
        self.max_rrs_per_message = max_rrs_per_message;
        Ok(self)
    }

    /// The zone's apex.
    pub fn zone(&self) -> &Name {
        &self.zone
    }

    /// The server.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Reads the zone with a TSIG-signed AXFR: every record, the apex SOA once (first), in the server's
    /// order. Every message of the answer must verify.
    pub async fn read_zone(&self) -> Result<Vec<Record>, Rfc2136Error> {
        let deadline = Instant::now() + self.timeouts.transfer;
        let timeout = |_: tokio::time::error::Elapsed| Rfc2136Error::Timeout {
            server: self.server,
            what: "complete the AXFR",
            timeout: self.timeouts.transfer,
        };
        let mut stream = self.connect(deadline).await?;

        let mut query = Message::query();
        query.metadata.recursion_desired = false;
        let mut q = Query::query(self.zone.clone(), RecordType::AXFR);
        q.set_query_class(DNSClass::IN);
        query.add_query(q);
        let id = query.metadata.id;
        let mut verifier = self.sign(&mut query, "AXFR")?;
        let bytes = query
            .to_vec()
            .map_err(|e| self.malformed("AXFR", format!("cannot encode the query: {e}")))?;
        tokio::time::timeout_at(deadline, write_frame(&mut stream, &bytes))
            .await
            .map_err(timeout)?
            .map_err(|e| self.unreachable(e))?;

        let mut records: Vec<Record> = Vec::new();
        let mut soas = 0usize;
        loop {
            let raw = tokio::time::timeout_at(deadline, read_frame(&mut stream))
                .await
                .map_err(timeout)?
                .map_err(|e| self.unreachable(e))?;
            let message = self.parse_answer("AXFR", &raw, id, OpCode::Query)?;
            self.check_rcode("AXFR", &message)?;
            verifier
                .verify(&raw, &message)
                .map_err(|detail| self.malformed("AXFR", detail))?;
            for record in message.answers {
                if record.record_type() == RecordType::SOA {
                    soas += 1;
                    if soas == 2 {
                        break;
                    }
                } else if soas == 0 {
                    return Err(self.malformed(
                        "AXFR",
                        format!("the transfer does not start with the SOA of {}", self.zone),
                    ));
                }
                records.push(record);
            }
            if soas >= 2 {
                break;
            }
        }
        if verifier.unsigned_in_a_row > 0 {
            return Err(self.malformed(
                "AXFR",
                "the last message of the transfer is not signed".to_string(),
            ));
        }
        Ok(records)
    }

    /// Applies `batch` with as few UPDATE messages as the limits allow, in order, on one connection. Each
    /// message is applied atomically by the server; if one fails, the ones before it stay applied and the
    /// error says so (sending the whole batch again is safe).
    pub async fn apply(&self, batch: &[Change]) -> Result<ApplyReport, Rfc2136Error> {
        let messages = self.pack(batch)?;
        let mut report = ApplyReport::default();
        if messages.is_empty() {
            return Ok(report);
        }
        let mut stream = self.connect(Instant::now() + self.timeouts.connect).await?;
        for (changes, update_rrs) in messages {
            let mut message = Message::new(rand_id(), MessageType::Query, OpCode::Update);
            message.metadata.recursion_desired = false;
            let mut zone = Query::new();
            zone.set_name(self.zone.clone())
                .set_query_class(DNSClass::IN)
                .set_query_type(RecordType::SOA);
            message.add_zone(zone);
            let rrs = update_rrs.len();
            for rr in update_rrs {
                message.add_update(rr);
            }
            let id = message.metadata.id;
            let mut verifier = self.sign(&mut message, "UPDATE")?;
            let bytes = message
                .to_vec()
                .map_err(|e| self.malformed("UPDATE", format!("cannot encode the update: {e}")))?;
            if bytes.len() > usize::from(u16::MAX) {
                return Err(Rfc2136Error::Invalid(format!(
                    "an UPDATE message of {} bytes does not fit in one TCP message (at most 65535)",
                    bytes.len()
                )));
            }
            let deadline = Instant::now() + self.timeouts.request;
            let timeout = |_| Rfc2136Error::Timeout {
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
            .map_err(|e| self.unreachable(e))?;
            let answer = self.parse_answer("UPDATE", &raw, id, OpCode::Update)?;
            self.check_rcode("UPDATE", &answer)
                .map_err(|e| with_progress(e, &report))?;
            verifier
                .verify(&raw, &answer)
                .map_err(|detail| self.malformed("UPDATE", detail))?;
            report.messages += 1;
            report.changes += changes;
            report.rrs += rrs;
        }
        Ok(report)
    }

    /// Validates the changes and packs them into messages: (number of changes, update RRs) per message.
    fn pack(&self, batch: &[Change]) -> Result<Vec<(usize, Vec<Record>)>, Rfc2136Error> {
        // Header, zone section and TSIG record (name, algorithm name, up to a 64-byte MAC).
        let overhead = 12 + self.zone.len() + 6 + self.key_name.len() + 10 + 32 + 16 + 64;
        let mut messages: Vec<(usize, Vec<Record>)> = Vec::new();
        let mut current: Vec<Record> = Vec::new();
        let mut current_changes = 0usize;
        let mut current_bytes = overhead;
        for change in batch {
            let rrs = self.update_rrs(change)?;
            let mut bytes = 0usize;
            for rr in &rrs {
                bytes += rr
                    .to_bytes()
                    .map_err(|e| {
                        Rfc2136Error::Invalid(format!(
                            "{}: cannot encode {}: {e}",
                            change.describe(),
                            rr.name
                        ))
                    })?
                    .len();
            }
            if overhead + bytes > 65_000 {
                return Err(Rfc2136Error::Invalid(format!(
                    "{}: the change is {bytes} bytes, more than one UPDATE message can carry",
                    change.describe()
                )));
            }
            let full = !current.is_empty()
                && (current_bytes + bytes > self.max_message_bytes
                    || current.len() + rrs.len() > self.max_rrs_per_message);
            if full {
                messages.push((current_changes, std::mem::take(&mut current)));
                current_changes = 0;
                current_bytes = overhead;
            }
            current_bytes += bytes;
            current_changes += 1;
            current.extend(rrs);
        }
        if !current.is_empty() {
            messages.push((current_changes, current));
        }
        Ok(messages)
    }

    /// The update RRs of one change (RFC 2136 2.5), after checking it.
    fn update_rrs(&self, change: &Change) -> Result<Vec<Record>, Rfc2136Error> {
        let invalid =
            |why: String| Rfc2136Error::Invalid(format!("zone {}: {}: {why}", self.zone, change.describe()));
        let check_name = |name: &Name| -> Result<(), Rfc2136Error> {
            if !self.zone.zone_of(name) {
                return Err(invalid(format!("{name} is outside the zone")));
            }
            Ok(())
        };
        let check_type = |rtype: RecordType| -> Result<(), Rfc2136Error> {
            match rtype {
                RecordType::SOA => Err(invalid("the SOA is the server's".to_string())),
                RecordType::ANY
                | RecordType::AXFR
                | RecordType::IXFR
                | RecordType::OPT
                | RecordType::TSIG => Err(invalid(format!(
                    "{rtype} is not a record type that can be updated"
                ))),
                _ => Ok(()),
            }
        };
        let adds =
            |name: &Name, rtype: RecordType, records: &[Record]| -> Result<Vec<Record>, Rfc2136Error> {
                let mut out = Vec::with_capacity(records.len());
                for r in records {
                    if r.name != *name || r.record_type() != rtype {
                        return Err(invalid(format!(
                            "record {} {} is not of the RRset {name} {rtype}; one change is one RRset",
                            r.name,
                            r.record_type()
                        )));
                    }
                    if matches!(r.data, RData::Update0(_)) {
                        return Err(invalid(format!("record {} {} has no data", r.name, rtype)));
                    }
                    let mut r = r.clone();
                    r.dns_class = DNSClass::IN;
                    out.push(r);
                }
                Ok(out)
            };
        let delete = |name: &Name, rtype: RecordType| {
            let mut r = Record::update0(name.clone(), 0, rtype);
            r.dns_class = DNSClass::ANY;
            r
        };
        match change {
            Change::Add(records) => {
                let first = records
                    .first()
                    .ok_or_else(|| invalid("no records to add".to_string()))?;
                check_name(&first.name)?;
                check_type(first.record_type())?;
                adds(&first.name, first.record_type(), records)
            }
            Change::Delete { name, rtype } => {
                check_name(name)?;
                check_type(*rtype)?;
                if *name == self.zone && *rtype == RecordType::NS {
                    return Err(invalid("the apex NS RRset is the server's".to_string()));
                }
                Ok(vec![delete(name, *rtype)])
            }
            Change::Replace { name, rtype, records } => {
                check_name(name)?;
                check_type(*rtype)?;
                if records.is_empty() {
                    return Err(invalid("no records to replace with (use Delete)".to_string()));
                }
                let mut out = vec![delete(name, *rtype)];
                out.extend(adds(name, *rtype, records)?);
                Ok(out)
            }
        }
    }

    async fn connect(&self, deadline: Instant) -> Result<TcpStream, Rfc2136Error> {
        let deadline = deadline.min(Instant::now() + self.timeouts.connect);
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(self.server))
            .await
            .map_err(|_| Rfc2136Error::Timeout {
                server: self.server,
                what: "accept a connection",
                timeout: self.timeouts.connect,
            })?
            .map_err(|e| self.unreachable(e))?;
        // Best effort: small request/answer exchanges.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// Signs `message` (RFC 8945 4.3) and returns the verifier for its answer.
    fn sign(&self, message: &mut Message, op: &'static str) -> Result<Verifier, Rfc2136Error> {
        let pre = TSIG::new(
            self.algorithm.hickory(),
            unix_now(),
            FUDGE,
            Vec::new(),
            message.metadata.id,
            None,
            Vec::new(),
        );
        let tbs = message_tbs(&*message, &pre, &self.key_name)
            .map_err(|e| self.malformed(op, format!("cannot encode the message to sign: {e}")))?;
        let mac = hmac::sign(&self.key, &tbs).as_ref().to_vec();
        message.signature = Some(Box::new(make_tsig_record(
            self.key_name.clone(),
            pre.set_mac(mac.clone()),
        )));
        Ok(Verifier {
            key: self.key.clone(),
            key_name: self.key_name.clone(),
            algorithm: self.algorithm,
            previous_mac: mac,
            first: true,
            pending: Vec::new(),
            unsigned_in_a_row: 0,
        })
    }

    fn parse_answer(
        &self,
        op: &'static str,
        raw: &[u8],
        id: u16,
        opcode: OpCode,
    ) -> Result<Message, Rfc2136Error> {
        let message = Message::from_vec(raw)
            .map_err(|e| self.malformed(op, format!("cannot parse the answer: {e}")))?;
        if message.metadata.id != id {
            return Err(self.malformed(
                op,
                format!("answer id {} for request id {id}", message.metadata.id),
            ));
        }
        if message.metadata.message_type != MessageType::Response || message.metadata.op_code != opcode {
            return Err(self.malformed(op, "the answer is not a response to the request".to_string()));
        }
        Ok(message)
    }

    /// Maps the answer's rcode (and TSIG error) to an error.
    fn check_rcode(&self, op: &'static str, message: &Message) -> Result<(), Rfc2136Error> {
        let rcode = message.metadata.response_code;
        let tsig_error = tsig_of(message).and_then(|t| t.error);
        let zone = self.zone.to_string();
        // As named.conf spells it: `key "ferrite-dns"`, without the root label.
        let key = self.key_name.to_string().trim_end_matches('.').to_string();
        let not_auth = |detail: String| Rfc2136Error::NotAuth {
            key: key.clone(),
            server: self.server,
            detail,
        };
        match tsig_error {
            Some(TsigError::BadKey) => {
                return Err(not_auth(format!(
                    "BADKEY: the server has no key {key} with algorithm {} (check the key's name and algorithm in named.conf)",
                    self.algorithm
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
            ResponseCode::Refused => Err(Rfc2136Error::Refused {
                server: self.server,
                zone,
                op,
                detail: detail(if op == "AXFR" {
                    "the server's allow-transfer does not permit this key, or it does not serve the zone"
                } else {
                    "the server's allow-update (or update-policy) does not permit this key, or it does not serve the zone as primary"
                }),
            }),
            ResponseCode::NotZone
            | ResponseCode::YXDomain
            | ResponseCode::YXRRSet
            | ResponseCode::NXRRSet => Err(Rfc2136Error::Refused {
                server: self.server,
                zone,
                op,
                detail: detail("the server does not take this change for the zone"),
            }),
            ResponseCode::FormErr | ResponseCode::NotImp => {
                Err(self.malformed(op, detail("the server did not accept the message")))
            }
            ResponseCode::ServFail => Err(Rfc2136Error::ServerFailure {
                server: self.server,
                zone,
                op,
                detail: detail("the server failed (see its log)"),
            }),
            _ => Err(Rfc2136Error::ServerFailure {
                server: self.server,
                zone,
                op,
                detail: detail("unexpected rcode"),
            }),
        }
    }

    fn malformed(&self, op: &'static str, detail: String) -> Rfc2136Error {
        Rfc2136Error::Malformed {
            server: self.server,
            op,
            detail,
        }
    }

    fn unreachable(&self, e: std::io::Error) -> Rfc2136Error {
        let detail = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
            _ => e.to_string(),
        };
        Rfc2136Error::Unreachable {
            server: self.server,
            detail,
        }
    }
}

/// Adds "N messages were applied" to an error from the middle of a batch.
fn with_progress(e: Rfc2136Error, report: &ApplyReport) -> Rfc2136Error {
    if report.messages == 0 {
        return e;
    }
    let note = format!(
        " ({} earlier UPDATE messages with {} changes were applied)",
        report.messages, report.changes
    );
    match e {
        Rfc2136Error::Refused {
            server,
            zone,
            op,
            detail,
        } => Rfc2136Error::Refused {
            server,
            zone,
            op,
            detail: detail + &note,
        },
        Rfc2136Error::ServerFailure {
            server,
            zone,
            op,
            detail,
        } => Rfc2136Error::ServerFailure {
            server,
            zone,
            op,
            detail: detail + &note,
        },
        Rfc2136Error::NotAuth { key, server, detail } => Rfc2136Error::NotAuth {
            key,
            server,
            detail: detail + &note,
        },
        other => other,
    }
}

/// Verifies the answers to one signed request (RFC 8945 5.3 and 5.3.1).
struct Verifier {
    key: hmac::Key,
    key_name: Name,
    algorithm: TsigAlgorithm,
    previous_mac: Vec<u8>,
    first: bool,
    /// Unsigned messages since the last signed one (an AXFR may leave up to 99 unsigned).
    pending: Vec<u8>,
    unsigned_in_a_row: usize,
}

impl Verifier {
    fn verify(&mut self, raw: &[u8], message: &Message) -> Result<(), String> {
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
        if name != self.key_name || tsig.algorithm != self.algorithm.hickory() {
            return Err(format!(
                "the answer is signed with key {name} ({}), not {} ({})",
                tsig.algorithm, self.key_name, self.algorithm
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
        hmac::verify(&self.key, &tbs, &tsig.mac).map_err(|_| {
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
}

async fn write_frame(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "message above 65535 bytes"))?;
    let mut buf = Vec::with_capacity(bytes.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(bytes);
    stream.write_all(&buf).await?;
    stream.flush().await
}

async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

fn parse_fqdn(s: &str) -> Result<Name, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty".to_string());
    }
    let mut name = Name::from_ascii(s).map_err(|e| e.to_string())?;
    name.set_fqdn(true);
    Ok(name)
}

fn rand_id() -> u16 {
    // hickory's own query() picks a random id; take it from there.
    Message::query().metadata.id
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use std::net::Ipv4Addr;

    fn client() -> Rfc2136Client {
        Rfc2136Client::new(
            "127.0.0.1:53".parse().unwrap(),
            "apps.example.test",
            "ferrite-key",
            TsigAlgorithm::HmacSha256,
            b"0123456789abcdef0123456789abcdef",
            Timeouts::default(),
        )
        .unwrap()
    }

    fn a(name: &str, ip: [u8; 4]) -> Record {
        Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            60,
            RData::A(A(Ipv4Addr::from(ip))),
        )
    }

    #[test]
    fn algorithms_parse_by_bind_names() {
        for (s, want) in [
            ("hmac-sha256", TsigAlgorithm::HmacSha256),
            ("HMAC-SHA512", TsigAlgorithm::HmacSha512),
            ("hmac-sha1.", TsigAlgorithm::HmacSha1),
            ("hmac-sha384", TsigAlgorithm::HmacSha384),
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
    fn bad_settings_are_refused() {
        let addr: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let t = Timeouts::default();
        let alg = TsigAlgorithm::HmacSha256;
        assert!(Rfc2136Client::new(addr, "", "k", alg, b"s", t).is_err());
        assert!(Rfc2136Client::new(addr, ".", "k", alg, b"s", t).is_err());
        assert!(Rfc2136Client::new(addr, "z.test", "", alg, b"s", t).is_err());
        let e = Rfc2136Client::new(addr, "z.test", "k", alg, b"", t).unwrap_err();
        assert!(e.to_string().contains("secret is empty"), "{e}");
        let zero = Timeouts {
            request: Duration::ZERO,
            ..t
        };
        assert!(Rfc2136Client::new(addr, "z.test", "k", alg, b"s", zero).is_err());
        assert!(client().with_limits(100, 10).is_err());
        assert!(client().with_limits(4096, 0).is_err());
        // The secret is never printed.
        assert!(!format!("{:?}", client()).contains("0123456789"));
    }

    #[test]
    fn changes_become_rfc2136_update_rrs() {
        let c = client();
        let name = Name::from_ascii("app.apps.example.test.").unwrap();
        let add = c
            .update_rrs(&Change::Add(vec![a("app.apps.example.test.", [192, 0, 2, 1])]))
            .unwrap();
        assert_eq!(add.len(), 1);
        assert_eq!(add[0].dns_class, DNSClass::IN);
        let del = c
            .update_rrs(&Change::Delete {
                name: name.clone(),
                rtype: RecordType::A,
            })
            .unwrap();
        assert_eq!(del.len(), 1);
        assert_eq!(
            (del[0].dns_class, del[0].ttl, del[0].record_type()),
            (DNSClass::ANY, 0, RecordType::A)
        );
        assert!(matches!(del[0].data, RData::Update0(RecordType::A)));
        let rep = c
            .update_rrs(&Change::Replace {
                name,
                rtype: RecordType::A,
                records: vec![
                    a("app.apps.example.test.", [192, 0, 2, 1]),
                    a("app.apps.example.test.", [192, 0, 2, 2]),
                ],
            })
            .unwrap();
        assert_eq!(rep.len(), 3);
        assert_eq!(rep[0].dns_class, DNSClass::ANY);
        assert_eq!(rep[1].dns_class, DNSClass::IN);
    }

    #[test]
    fn bad_changes_name_the_change() {
        let c = client();
        let cases: Vec<(Change, &str)> = vec![
            (
                Change::Add(vec![a("app.other.test.", [192, 0, 2, 1])]),
                "outside the zone",
            ),
            (Change::Add(vec![]), "no records"),
            (
                Change::Add(vec![
                    a("x.apps.example.test.", [192, 0, 2, 1]),
                    a("y.apps.example.test.", [192, 0, 2, 1]),
                ]),
                "one change is one RRset",
            ),
            (
                Change::Delete {
                    name: Name::from_ascii("apps.example.test.").unwrap(),
                    rtype: RecordType::SOA,
                },
                "SOA",
            ),
            (
                Change::Delete {
                    name: Name::from_ascii("apps.example.test.").unwrap(),
                    rtype: RecordType::NS,
                },
                "apex NS",
            ),
            (
                Change::Replace {
                    name: Name::from_ascii("x.apps.example.test.").unwrap(),
                    rtype: RecordType::A,
                    records: vec![],
                },
                "use Delete",
            ),
        ];
        for (change, want) in cases {
            let e = c.update_rrs(&change).unwrap_err();
            assert_eq!(e.reason(), "Invalid");
            assert!(e.to_string().contains(want), "{change:?}: {e}");
        }
    }

    #[test]
    fn batches_are_packed_within_the_limits() {
        let batch: Vec<Change> = (0..2500)
            .map(|i| {
                Change::Add(vec![a(
                    &format!("h{i}.apps.example.test."),
                    [10, 0, (i / 256) as u8, (i % 256) as u8],
                )])
            })
            .collect();
        let packed = client().pack(&batch).unwrap();
        assert_eq!(packed.len(), 3, "1000 RRs per message by default");
        assert_eq!(packed.iter().map(|(c, _)| c).sum::<usize>(), 2500);
        let small = client().with_limits(4096, 1000).unwrap().pack(&batch).unwrap();
        assert!(small.len() >= 20, "{}", small.len());
        for (_, rrs) in &small {
            let bytes: usize = rrs.iter().map(|r| r.to_bytes().unwrap().len()).sum();
            assert!(bytes <= 4096, "{bytes}");
        }
        // A replace is never split.
        let rep: Vec<Change> = (0..10)
            .map(|i| Change::Replace {
                name: Name::from_ascii(format!("r{i}.apps.example.test.")).unwrap(),
                rtype: RecordType::A,
                records: vec![
                    a(&format!("r{i}.apps.example.test."), [10, 0, 0, 1]),
                    a(&format!("r{i}.apps.example.test."), [10, 0, 0, 2]),
                ],
            })
            .collect();
        let packed = client().with_limits(4096, 4).unwrap().pack(&rep).unwrap();
        assert_eq!(packed.len(), 10);
        assert!(packed.iter().all(|(c, rrs)| *c == 1 && rrs.len() == 3));
        assert!(client().pack(&[]).unwrap().is_empty());
    }

    #[test]
    fn signed_messages_verify_with_the_same_key_only() {
        // A request signed by us, "answered" by re-signing as a server would (RFC 8945 4.3.3): the
        // verifier accepts it, and rejects a flipped byte.
        let c = client();
        let mut req = Message::new(7, MessageType::Query, OpCode::Update);
        let mut v = c.sign(&mut req, "UPDATE").unwrap();
        let req_mac = v.previous_mac.clone();
        let mut resp = Message::new(7, MessageType::Response, OpCode::Update);
        let pre = TSIG::new(
            HickoryTsigAlgorithm::HmacSha256,
            unix_now(),
            FUDGE,
            Vec::new(),
            7,
            None,
            Vec::new(),
        );
        let mut tbs = (req_mac.len() as u16).to_be_bytes().to_vec();
        tbs.extend_from_slice(&req_mac);
        tbs.extend(message_tbs(&resp, &pre, &c.key_name).unwrap());
        let mac = hmac::sign(&c.key, &tbs).as_ref().to_vec();
        resp.signature = Some(Box::new(make_tsig_record(c.key_name.clone(), pre.set_mac(mac))));
        let raw = resp.to_vec().unwrap();
        let parsed = Message::from_vec(&raw).unwrap();
        let mut v2 = c
            .sign(&mut Message::new(7, MessageType::Query, OpCode::Update), "UPDATE")
            .unwrap();
        v2.previous_mac = req_mac.clone();
        v.verify(&raw, &parsed).unwrap();
        let mut bad = raw.clone();
        bad[3] ^= 0x01;
        let parsed_bad = Message::from_vec(&bad).unwrap();
        assert!(
            v2.verify(&bad, &parsed_bad)
                .unwrap_err()
                .contains("does not verify")
        );
        // An unsigned first answer is refused.
        let unsigned = Message::new(7, MessageType::Response, OpCode::Update);
        let mut v3 = c
            .sign(&mut Message::new(7, MessageType::Query, OpCode::Update), "UPDATE")
            .unwrap();
        assert!(
            v3.verify(&unsigned.to_vec().unwrap(), &unsigned)
                .unwrap_err()
                .contains("not TSIG-signed")
        );
    }
}
