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
//! The exchange itself (signing, framing, the answer's rcode, TSIG error and MAC) is ferrite-kit's
//! (`ferrite_kit::dns::update`, shared with ferrite-certs's DNS-01 solver); this module packs batches
//! into messages and reads zones. hickory-proto builds and parses the messages. Two reasons not to use
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

use ferrite_kit::dns::tsig::TsigKey;
use ferrite_kit::dns::update::{
    self as exchange, check_rcode, parse_answer, read_frame, sign_message, update_message, write_frame,
};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The TSIG fudge we sign with: the clock difference the server accepts (RFC 8945 recommends 300 s).
pub use ferrite_kit::dns::tsig::FUDGE;
/// A TSIG algorithm the provider signs with (ferrite-kit's).
pub use ferrite_kit::dns::tsig::TsigAlgorithm;

/// Why a call failed: ferrite-kit's UPDATE error, with [`Rfc2136Error::reason`] as the condition reason.
pub type Rfc2136Error = ferrite_kit::dns::update::UpdateError;

/// The default bound on one UPDATE message's size, in bytes as encoded without name compression (so the
/// message on the wire is smaller). TCP messages can be at most 65535 bytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 60_000;

/// The default bound on the number of update RRs in one UPDATE message.
pub const DEFAULT_MAX_RRS_PER_MESSAGE: usize = 1_000;

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

/// A client for one zone on one server, with one TSIG key.
#[derive(Clone)]
pub struct Rfc2136Client {
    server: SocketAddr,
    zone: Name,
    key: TsigKey,
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
            .field("key_name", &self.key.name().to_string())
            .field("algorithm", &self.key.algorithm())
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
        let key = TsigKey::new(&key_name.to_string(), algorithm, secret).map_err(Rfc2136Error::Invalid)?;
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
            key,
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
        let mut verifier = sign_message(&mut query, &self.key).map_err(|d| self.malformed("AXFR", d))?;
        let bytes = query
            .to_vec()
            .map_err(|e| self.malformed("AXFR", format!("cannot encode the query: {e}")))?;
        tokio::time::timeout_at(deadline, write_frame(&mut stream, &bytes))
            .await
            .map_err(timeout)?
            .map_err(|e| exchange::unreachable(self.server, e))?;

        let mut records: Vec<Record> = Vec::new();
        let mut soas = 0usize;
        loop {
            let raw = tokio::time::timeout_at(deadline, read_frame(&mut stream))
                .await
                .map_err(timeout)?
                .map_err(|e| exchange::unreachable(self.server, e))?;
            let message = parse_answer(self.server, "AXFR", &raw, id, OpCode::Query)?;
            check_rcode(self.server, &self.zone.to_string(), &self.key, "AXFR", &message)?;
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
        if verifier.unsigned_in_a_row() > 0 {
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
            let rrs = update_rrs.len();
            let mut message = update_message(&self.zone, update_rrs);
            let id = message.metadata.id;
            let mut verifier =
                sign_message(&mut message, &self.key).map_err(|d| self.malformed("UPDATE", d))?;
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
            .map_err(|e| exchange::unreachable(self.server, e))?;
            let answer = parse_answer(self.server, "UPDATE", &raw, id, OpCode::Update)?;
            check_rcode(self.server, &self.zone.to_string(), &self.key, "UPDATE", &answer)
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
        let overhead = 12 + self.zone.len() + 6 + self.key.name().len() + 10 + 32 + 16 + 64;
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
        exchange::connect(self.server, deadline, self.timeouts.connect).await
    }

    fn malformed(&self, op: &'static str, detail: String) -> Rfc2136Error {
        Rfc2136Error::Malformed {
            server: self.server,
            op,
            detail,
        }
    }
}

/// Adds "N messages were applied" to an error from the middle of a batch.
fn with_progress(e: Rfc2136Error, report: &ApplyReport) -> Rfc2136Error {
    if report.messages == 0 {
        return e;
    }
    e.with_note(&format!(
        " ({} earlier UPDATE messages with {} changes were applied)",
        report.messages, report.changes
    ))
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
}
