//! Zone transfers from the embedded server to secondaries: AXFR (RFC 5936), IXFR (RFC 1995) and NOTIFY
//! (RFC 1996), authorised and signed with TSIG (RFC 8945).
//!
//! ```text
//!   ZonesHandle::swap(new) ──> Transfers::swap: old ⇄ new under one lock
//!        │                       per zone whose serial grew: Diff {from, to, deleted, added} kept (last N)
//!        │                       and NOTIFY sent to the zone's secondaries (UDP, signed, retried, bounded)
//!   TCP AXFR/IXFR, signed ──> verify TSIG (key in the ACL, MAC, time) ──> messages, each signed
//!                              (RFC 8945 5.3.1 chaining: prior MAC, then the timers only)
//!   UDP IXFR ──> the current SOA (TC=1 unless the client is current: "ask over TCP", RFC 1995 section 2)
//!   any other signed query ──> verified, answered as usual, the answer signed
//! ```
//!
//! Answers:
//! - a transfer (AXFR or IXFR) without TSIG, or with no keys configured: REFUSED;
//! - a signed request with a key not in the ACL (name and algorithm): NOTAUTH, TSIG error BADKEY, no MAC;
//!   a MAC that does not verify: NOTAUTH, BADSIG, no MAC; a time outside the fudge: NOTAUTH, BADTIME,
//!   signed, with our time in Other Data (RFC 8945 5.2);
//! - a transfer of a name that is not the apex of one of our zones: REFUSED;
//! - AXFR: the SOA, every RRset (apex NS included), the SOA again, in messages of at most
//!   [`MAX_MESSAGE_BYTES`] of records each; every message signed;
//! - IXFR whose serial (the SOA in the authority section) is current or newer: the current SOA alone;
//!   whose serial the kept differences chain from: the incremental form (current SOA, then per step the
//!   old SOA, the deleted records, the new SOA, the added records, then the current SOA); else the AXFR
//!   form.
//!
//! The configuration can be replaced while serving ([`crate::server::ZonesHandle::set_transfer`]): it is
//! one snapshot behind an `ArcSwap`, read once per transfer or NOTIFY; plain queries never read it.
//! Keys come two ways: [`TransferConfig::keys`] may transfer every zone, [`TransferConfig::zone_keys`]
//! only the zone they are given for (and sign that zone's NOTIFY messages).
//!
//! The SOA serial is the caller's: [`crate::zone::SoaConfig::serial`]. The controller must increase it
//! on every change of a zone, for example with [`next_serial`]; a snapshot that changes a zone without a
//! new serial is served but not announced, and its IXFR history is dropped (logged as a warning).

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::hmac;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinEncodable;

use crate::resolve::ZoneSet;
use crate::server::{Dropped, Responded, Shared, Transport, respond_with};
use crate::tsig::{SignWith, TsigKey, received_tbs, sign_encoded, tsig_offset, tsig_record_of, unix_now};
use crate::zone::{RrSet, Zone};

/// The default number of differences kept per zone for IXFR.
pub const DEFAULT_IXFR_HISTORY: usize = 16;

/// The default number of NOTIFY attempts per secondary (RFC 1996 section 3.6 leaves it to the server;
/// BIND tries 5 times).
pub const DEFAULT_NOTIFY_ATTEMPTS: u32 = 5;

/// The default wait for a NOTIFY answer, doubled after every attempt.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

/// The records of one transfer message, in bytes as encoded without compression (the message on the
/// wire is smaller; far below 65535 with the TSIG record).
pub const MAX_MESSAGE_BYTES: usize = 16_000;

/// Room kept for the TSIG record when a signed answer must fit a size limit (name, algorithm, a 64-byte
/// MAC, the fixed fields).
const TSIG_RESERVE: u16 = 200;

/// A zone's secondaries: where NOTIFY goes when its serial changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secondary {
    /// The zone's apex.
    pub zone: Name,
    /// The secondaries' addresses (port 53 unless said otherwise).
    pub addresses: Vec<SocketAddr>,
}

/// A key that may transfer one zone only (and signs that zone's NOTIFY messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneKey {
    /// The zone's apex.
    pub zone: Name,
    /// The key. One key name may be given for several zones, always with the same algorithm and secret.
    pub key: TsigKey,
}

/// Zone transfers: who may transfer (TSIG keys) and whom to notify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferConfig {
    /// The keys allowed to transfer every zone (AXFR and IXFR). With `zone_keys` also empty, every
    /// transfer is REFUSED.
    pub keys: Vec<TsigKey>,
    /// Keys allowed to transfer only their zone; a zone's NOTIFY messages are signed with its key.
    pub zone_keys: Vec<ZoneKey>,
    /// The secondaries to NOTIFY, per zone.
    pub secondaries: Vec<Secondary>,
    /// The key NOTIFY messages are signed with (one of `keys`, by name); `None`: the first key, or
    /// unsigned when there is none.
    pub notify_key: Option<Name>,
    /// Differences kept per zone for IXFR; 0 answers every IXFR in the AXFR form.
    pub ixfr_history: usize,
    /// NOTIFY attempts per secondary and serial (at least 1).
    pub notify_attempts: u32,
    /// The wait for the first NOTIFY answer; doubled for every retry.
    pub notify_timeout: Duration,
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            keys: Vec::new(),
            zone_keys: Vec::new(),
            secondaries: Vec::new(),
            notify_key: None,
            ixfr_history: DEFAULT_IXFR_HISTORY,
            notify_attempts: DEFAULT_NOTIFY_ATTEMPTS,
            notify_timeout: DEFAULT_NOTIFY_TIMEOUT,
        }
    }
}

/// RFC 1982 serial number arithmetic: true if `a` is after `b`.
pub fn serial_newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < (1 << 31)
}

/// The serial for a zone's next change: the current Unix time if that is after `previous` (so serials
/// read as dates and survive a restart), else `previous + 1`; always after `previous` in RFC 1982 terms.
pub fn next_serial(previous: u32, now: SystemTime) -> u32 {
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Serials are 32-bit: the time wraps around like them.
    let time = (seconds & u64::from(u32::MAX)) as u32;
    if serial_newer(time, previous) {
        time
    } else {
        previous.wrapping_add(1)
    }
}

/// The change from one serial of a zone to the next.
#[derive(Debug)]
struct Diff {
    from: u32,
    to: u32,
    old_soa: Record,
    new_soa: Record,
    deleted: Vec<Record>,
    added: Vec<Record>,
}

/// A checked [`TransferConfig`], replaced as a whole.
#[derive(Debug)]
struct Settings {
    config: TransferConfig,
    notify_key: Option<TsigKey>,
}

impl Settings {
    fn on(&self) -> bool {
        !self.config.keys.is_empty() || !self.config.zone_keys.is_empty()
    }

    /// The key named `name` (lowercase), global or of some zone.
    fn key(&self, name: &Name) -> Option<&TsigKey> {
        self.config
            .keys
            .iter()
            .chain(self.config.zone_keys.iter().map(|z| &z.key))
            .find(|k| k.name() == name)
    }

    /// Whether `key` may transfer the zone at `apex`.
    fn may_transfer(&self, key: &TsigKey, apex: &Name) -> bool {
        self.config.keys.iter().any(|k| k == key)
            || self
                .config
                .zone_keys
                .iter()
                .any(|z| &z.zone == apex && &z.key == key)
    }

    /// The key a zone's NOTIFY is signed with: the zone's own, else the global notify key.
    fn notify_key(&self, apex: &Name) -> Option<TsigKey> {
        self.config
            .zone_keys
            .iter()
            .find(|z| &z.zone == apex)
            .map(|z| z.key.clone())
            .or_else(|| self.notify_key.clone())
    }

    fn check(config: &TransferConfig) -> Result<Settings, String> {
        if config.notify_attempts == 0 {
            return Err("transfer.notify_attempts is 0: at least one NOTIFY must be sent".to_string());
        }
        if config.notify_timeout.is_zero() {
            return Err("transfer.notify_timeout is 0: a secondary needs time to answer NOTIFY".to_string());
        }
        for (index, key) in config.keys.iter().enumerate() {
            if config.keys[..index].iter().any(|k| k.name() == key.name()) {
                return Err(format!("transfer key {} is given twice", key.name()));
            }
        }
        for (index, zk) in config.zone_keys.iter().enumerate() {
            if config.keys.iter().any(|k| k.name() == zk.key.name()) {
                return Err(format!(
                    "transfer key {} of zone {} is also a key for every zone",
                    zk.key.name(),
                    zk.zone
                ));
            }
            if let Some(other) = config.zone_keys[..index]
                .iter()
                .find(|o| o.key.name() == zk.key.name() && o.key != zk.key)
            {
                return Err(format!(
                    "transfer key {} is given for zones {} and {} with different algorithms or secrets",
                    zk.key.name(),
                    other.zone,
                    zk.zone
                ));
            }
        }
        let notify_key = match &config.notify_key {
            Some(name) => {
                let name = name.to_lowercase();
                let found =
                    config.keys.iter().find(|k| k.name() == &name).ok_or_else(|| {
                        format!("transfer.notify_key {name} is not one of the transfer keys")
                    })?;
                Some(found.clone())
            }
            None => config.keys.first().cloned(),
        };
        for secondary in &config.secondaries {
            if secondary.addresses.is_empty() {
                return Err(format!("secondaries of zone {}: no address", secondary.zone));
            }
        }
        Ok(Settings {
            config: config.clone(),
            notify_key,
        })
    }
}

/// The transfer side of a running server.
#[derive(Debug)]
pub(crate) struct Transfers {
    settings: ArcSwap<Settings>,
    runtime: tokio::runtime::Handle,
    /// Per apex, the last differences, oldest first. Also taken around every swap, so swaps are ordered.
    history: Mutex<HashMap<Name, VecDeque<Arc<Diff>>>>,
}

impl Transfers {
    pub(crate) fn new(config: &TransferConfig, runtime: tokio::runtime::Handle) -> Result<Transfers, String> {
        Ok(Transfers {
            settings: ArcSwap::from_pointee(Settings::check(config)?),
            runtime,
            history: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the configuration (checked first; on error the old one stays). Transfers that started
    /// finish with the old one; NOTIFYs already sent keep their key. Secondaries added here are told of
    /// the current serial of their zone at once. Returns whether anything changed.
    pub(crate) fn update(
        &self,
        config: &TransferConfig,
        current: &ArcSwap<ZoneSet>,
        shared: &Weak<Shared>,
    ) -> Result<bool, String> {
        let new = Settings::check(config)?;
        // Under the history lock, so an update and a swap never interleave.
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = self.settings.load_full();
        if old.config == new.config {
            return Ok(false);
        }
        let new = Arc::new(new);
        self.settings.store(new.clone());
        drop(history);
        let zones = current.load_full();
        for zone in zones.zones() {
            let before = old.config.secondaries.iter().find(|s| &s.zone == zone.apex());
            let after = new.config.secondaries.iter().find(|s| &s.zone == zone.apex());
            let Some(after) = after else { continue };
            let added: Vec<SocketAddr> = after
                .addresses
                .iter()
                .filter(|a| before.is_none_or(|b| !b.addresses.contains(a)))
                .copied()
                .collect();
            let key_changed = old.notify_key(zone.apex()) != new.notify_key(zone.apex());
            let targets = if key_changed {
                after.addresses.clone()
            } else {
                added
            };
            self.notify_to(&new, zone, &targets, shared);
        }
        Ok(true)
    }

    /// Publishes `new` in `current`, keeps the differences of the zones whose serial grew and notifies
    /// their secondaries.
    pub(crate) fn swap(&self, current: &ArcSwap<ZoneSet>, new: Arc<ZoneSet>, shared: &Weak<Shared>) {
        let mut history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = current.swap(new.clone());
        let settings = self.settings.load_full();
        // Without keys nobody can transfer: no differences to keep, no contents to compare.
        let transfers_on = settings.on();
        let mut notify = Vec::new();
        for zone in new.zones() {
            let apex = zone.apex();
            let previous = old.zones().find(|z| z.apex() == apex);
            match previous {
                None => {
                    history.remove(apex);
                    notify.push(zone.clone());
                }
                Some(previous) if Arc::ptr_eq(previous, zone) => {}
                Some(previous) if previous.serial() == zone.serial() => {
                    if transfers_on && **previous != **zone {
                        tracing::warn!(
                            zone = %apex, serial = zone.serial(),
                            "zone changed without a new SOA serial: secondaries will not see the change \
                             (the controller must bump the serial on every change)"
                        );
                        history.remove(apex);
                    }
                }
                Some(previous) if serial_newer(zone.serial(), previous.serial()) => {
                    if transfers_on && settings.config.ixfr_history > 0 {
                        let kept = history.entry(apex.clone()).or_default();
                        kept.push_back(Arc::new(diff(previous, zone)));
                        while kept.len() > settings.config.ixfr_history {
                            kept.pop_front();
                        }
                    }
                    notify.push(zone.clone());
                }
                Some(previous) => {
                    tracing::warn!(
                        zone = %apex, from = previous.serial(), to = zone.serial(),
                        "zone serial went backwards: secondaries keep their copy until its serial is newer"
                    );
                    history.remove(apex);
                }
            }
        }
        history.retain(|apex, _| new.zones().any(|z| z.apex() == apex));
        drop(history);
        for zone in notify {
            if let Some(secondary) = settings
                .config
                .secondaries
                .iter()
                .find(|s| &s.zone == zone.apex())
            {
                self.notify_to(&settings, &zone, &secondary.addresses, shared);
            }
        }
    }

    fn chain(&self, apex: &Name, from: u32, to: u32) -> Option<Vec<Arc<Diff>>> {
        let history = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let kept = history.get(apex)?;
        let start = kept.iter().position(|d| d.from == from)?;
        let steps: Vec<Arc<Diff>> = kept.iter().skip(start).cloned().collect();
        let contiguous = steps.windows(2).all(|w| w[0].to == w[1].from);
        (contiguous && steps.last().is_some_and(|d| d.to == to)).then_some(steps)
    }

    fn notify_to(
        &self,
        settings: &Settings,
        zone: &Arc<Zone>,
        addresses: &[SocketAddr],
        shared: &Weak<Shared>,
    ) {
        for &address in addresses {
            let job = Notify {
                apex: zone.apex().clone(),
                serial: zone.serial(),
                soa: soa_record(zone),
                address,
                key: settings.notify_key(zone.apex()),
                attempts: settings.config.notify_attempts,
                timeout: settings.config.notify_timeout,
                shared: shared.clone(),
            };
            self.runtime.spawn(job.run());
        }
    }
}

/// One zone's NOTIFY to one secondary, retried until answered, the attempts run out, or a newer serial
/// is served (which has its own NOTIFY).
struct Notify {
    apex: Name,
    serial: u32,
    soa: Record,
    address: SocketAddr,
    key: Option<TsigKey>,
    attempts: u32,
    timeout: Duration,
    shared: Weak<Shared>,
}

impl Notify {
    async fn run(self) {
        let bind: SocketAddr = if self.address.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut timeout = self.timeout;
        for attempt in 1..=self.attempts {
            if !self.still_current() {
                return;
            }
            match self.once(bind, timeout).await {
                Ok(()) => {
                    tracing::info!(zone = %self.apex, serial = self.serial, secondary = %self.address, attempt,
                        "NOTIFY acknowledged");
                    return;
                }
                Err(err) => {
                    tracing::warn!(zone = %self.apex, serial = self.serial, secondary = %self.address, attempt,
                        attempts = self.attempts, error = %err, "NOTIFY not acknowledged");
                }
            }
            timeout = (timeout * 2).min(Duration::from_secs(30));
        }
    }

    fn still_current(&self) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        let zones = shared.zones.load();
        zones
            .zones()
            .any(|z| z.apex() == &self.apex && z.serial() == self.serial)
    }

    async fn once(&self, bind: SocketAddr, timeout: Duration) -> Result<(), String> {
        let id = Message::query().metadata.id;
        let mut message = Message::new(id, MessageType::Query, OpCode::Notify);
        message.metadata.authoritative = true;
        message.add_query(Query::query(self.apex.clone(), RecordType::SOA));
        message.answers.push(self.soa.clone());
        let mut bytes = message
            .to_vec()
            .map_err(|e| format!("cannot encode NOTIFY: {e}"))?;
        if let Some(key) = &self.key {
            sign_encoded(&mut bytes, SignWith::key(key, None, id))?;
        }
        let socket = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        socket
            .send_to(&bytes, self.address)
            .await
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut buf = vec![0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let received = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
                .map_err(|e| format!("cannot receive: {e}"))?;
            let (len, from) = received;
            if from != self.address {
                continue;
            }
            let Ok(answer) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            if answer.metadata.id != id
                || answer.metadata.message_type != MessageType::Response
                || answer.metadata.op_code != OpCode::Notify
            {
                continue;
            }
            return match answer.metadata.response_code {
                ResponseCode::NoError => Ok(()),
                rcode => Err(format!("the secondary answered {rcode}")),
            };
        }
    }
}

fn soa_record(zone: &Zone) -> Record {
    let soa = zone.soa();
    soa.records_as(zone.apex())
        .next()
        .unwrap_or_else(|| Record::update0(zone.apex().clone(), soa.ttl(), RecordType::SOA))
}

/// The records of `from` not in `to` and of `to` not in `from`, the SOA left out.
fn diff(from: &Zone, to: &Zone) -> Diff {
    let mut deleted = Vec::new();
    let mut added = Vec::new();
    fn sets(zone: &Zone) -> HashMap<(&Name, RecordType), &RrSet> {
        zone.nodes()
            .flat_map(|(name, node)| {
                node.rrsets()
                    .iter()
                    .filter(|set| set.record_type() != RecordType::SOA)
                    .map(move |set| ((name, set.record_type()), set))
            })
            .collect()
    }
    let old = sets(from);
    let new = sets(to);
    for (key, old_set) in &old {
        match new.get(key) {
            Some(new_set) if new_set == old_set => {}
            Some(new_set) if new_set.ttl() == old_set.ttl() => {
                for rdata in old_set.rdatas() {
                    if !new_set.rdatas().contains(rdata) {
                        deleted.push(Record::from_rdata(key.0.clone(), old_set.ttl(), rdata.clone()));
                    }
                }
                for rdata in new_set.rdatas() {
                    if !old_set.rdatas().contains(rdata) {
                        added.push(Record::from_rdata(key.0.clone(), new_set.ttl(), rdata.clone()));
                    }
                }
            }
            Some(new_set) => {
                deleted.extend(old_set.records_as(key.0));
                added.extend(new_set.records_as(key.0));
            }
            None => deleted.extend(old_set.records_as(key.0)),
        }
    }
    for (key, new_set) in &new {
        if !old.contains_key(key) {
            added.extend(new_set.records_as(key.0));
        }
    }
    Diff {
        from: from.serial(),
        to: to.serial(),
        old_soa: soa_record(from),
        new_soa: soa_record(to),
        deleted,
        added,
    }
}

/// Every record of `zone` but the SOA, in canonical order.
fn all_records(zone: &Zone) -> Vec<Record> {
    zone.nodes()
        .flat_map(|(name, node)| {
            node.rrsets()
                .iter()
                .filter(|set| set.record_type() != RecordType::SOA)
                .flat_map(move |set| set.records_as(name))
        })
        .collect()
}

/// How a request was authenticated.
enum Auth {
    /// No TSIG.
    None,
    /// A key of the ACL; the request's MAC.
    Key(TsigKey, Vec<u8>),
}

/// A signed request that failed (RFC 8945 5.2): the answer is NOTAUTH with this TSIG error.
struct Rejected {
    error: TsigError,
    /// The key, when known (BADTIME answers are signed with it).
    key: Option<(TsigKey, Vec<u8>)>,
    /// The key name as sent (BADKEY/BADSIG answers carry it, unsigned).
    name: Name,
    algorithm: hickory_proto::rr::rdata::tsig::TsigAlgorithm,
    oid: u16,
    detail: String,
}

fn authenticate(transfers: &Settings, raw: &[u8], request: &Message) -> Result<Auth, Box<Rejected>> {
    let Some((name, tsig)) = tsig_record_of(request) else {
        return Ok(Auth::None);
    };
    let rejected = |error, key, detail: String| {
        Box::new(Rejected {
            error,
            key,
            name: name.clone(),
            algorithm: tsig.algorithm.clone(),
            oid: tsig.oid,
            detail,
        })
    };
    let Some(key) = transfers
        .key(&name.to_lowercase())
        .filter(|k| k.algorithm().hickory() == tsig.algorithm)
    else {
        return Err(rejected(
            TsigError::BadKey,
            None,
            format!("key {name} ({}) is not a transfer key", tsig.algorithm),
        ));
    };
    let verified = tsig_offset(raw)
        .ok_or_else(|| "cannot find the TSIG record".to_string())
        .and_then(|start| received_tbs(raw, start, &tsig, &name, None, &[], true))
        .and_then(|tbs| {
            hmac::verify(&key.hmac_key(), &tbs, &tsig.mac).map_err(|_| "the MAC does not verify".to_string())
        });
    if let Err(detail) = verified {
        return Err(rejected(TsigError::BadSig, None, detail));
    }
    let now = unix_now();
    if now.abs_diff(tsig.time) > u64::from(tsig.fudge) {
        return Err(rejected(
            TsigError::BadTime,
            Some((key.clone(), tsig.mac.clone())),
            format!(
                "signed at {}, our clock says {now} (fudge {} s)",
                tsig.time, tsig.fudge
            ),
        ));
    }
    Ok(Auth::Key(key.clone(), tsig.mac))
}

/// The header of every answer message to `request`.
fn metadata(request: &Message, rcode: ResponseCode, authoritative: bool) -> Metadata {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    metadata.authoritative = authoritative;
    metadata
}

/// Encodes an answer with these records (OPT when `edns`), at most `limit` bytes.
fn encode(
    request: &Message,
    metadata: Metadata,
    question: bool,
    answers: Vec<Record>,
    edns: bool,
) -> Result<Vec<u8>, String> {
    let mut message = Message::new(request.metadata.id, MessageType::Response, metadata.op_code);
    message.metadata = metadata;
    if question {
        message.queries = request.queries.clone();
    }
    message.answers = answers;
    if edns && request.edns.is_some() {
        let mut ours = Edns::new();
        ours.set_max_payload(crate::server::DEFAULT_UDP_PAYLOAD);
        message.edns = Some(ours);
    }
    message
        .to_vec()
        .map_err(|e| format!("cannot encode the answer: {e}"))
}

/// Signs the messages of one answer in order (RFC 8945 5.3.1: every message signed; the first with the
/// request's MAC and the full variables, the later ones with the previous MAC and the timers).
fn sign_all(messages: &mut [Vec<u8>], key: &TsigKey, request_mac: &[u8], oid: u16) -> Result<(), String> {
    let mut prior = request_mac.to_vec();
    for (index, message) in messages.iter_mut().enumerate() {
        let mut with = SignWith::key(key, Some(&prior), oid);
        with.first = index == 0;
        prior = sign_encoded(message, with)?;
    }
    Ok(())
}

/// What a transfer path produced: the messages and what to count.
struct Produced {
    rcode: ResponseCode,
    messages: Vec<Vec<u8>>,
    truncated: bool,
}

fn refuse_unsigned(request: &Message, rcode: ResponseCode) -> Result<Produced, String> {
    Ok(Produced {
        rcode,
        messages: vec![encode(
            request,
            metadata(request, rcode, false),
            true,
            Vec::new(),
            true,
        )?],
        truncated: false,
    })
}

fn rejected_answer(request: &Message, rejected: &Rejected) -> Result<Produced, String> {
    tracing::info!(key = %rejected.name, error = ?rejected.error, detail = %rejected.detail,
        "TSIG-signed request rejected");
    let mut bytes = encode(
        request,
        metadata(request, ResponseCode::NotAuth, false),
        true,
        Vec::new(),
        false,
    )?;
    match &rejected.key {
        Some((key, mac)) => {
            // BADTIME: signed, with our time in Other Data (RFC 8945 5.2.3).
            let now = unix_now();
            let mut with = SignWith::key(key, Some(mac), rejected.oid);
            with.error = Some(rejected.error);
            with.other.extend_from_slice(&((now >> 32) as u16).to_be_bytes());
            with.other.extend_from_slice(&(now as u32).to_be_bytes());
            sign_encoded(&mut bytes, with)?;
        }
        None => {
            // BADKEY, BADSIG: the request's key name and algorithm, no MAC.
            sign_encoded(
                &mut bytes,
                SignWith {
                    key_name: &rejected.name,
                    algorithm: rejected.algorithm.clone(),
                    hmac: None,
                    prior_mac: None,
                    first: true,
                    oid: rejected.oid,
                    error: Some(rejected.error),
                    other: Vec::new(),
                },
            )?;
        }
    }
    Ok(Produced {
        rcode: ResponseCode::NotAuth,
        messages: vec![bytes],
        truncated: false,
    })
}

/// The serial an IXFR request says the client has: the SOA in its authority section.
fn client_serial(request: &Message) -> Option<u32> {
    request.authorities.iter().find_map(|record| match &record.data {
        RData::SOA(soa) => Some(soa.serial),
        _ => None,
    })
}

/// Splits `records` into transfer messages (the question in the first only).
fn messages_of(request: &Message, records: Vec<Record>, metadata: Metadata) -> Result<Vec<Vec<u8>>, String> {
    let mut messages = Vec::new();
    let mut batch = Vec::new();
    let mut size = 0;
    for record in records {
        let len = record.to_bytes().map_or(MAX_MESSAGE_BYTES, |b| b.len());
        if !batch.is_empty() && size + len > MAX_MESSAGE_BYTES {
            let first = messages.is_empty();
            messages.push(encode(
                request,
                metadata,
                first,
                std::mem::take(&mut batch),
                first,
            )?);
            size = 0;
        }
        size += len;
        batch.push(record);
    }
    let first = messages.is_empty();
    messages.push(encode(request, metadata, first, batch, first)?);
    Ok(messages)
}

/// The records of a full transfer: SOA, everything else, SOA.
fn full(zone: &Zone) -> Vec<Record> {
    let soa = soa_record(zone);
    let mut records = Vec::with_capacity(zone.record_count() + 2);
    records.push(soa.clone());
    records.extend(all_records(zone));
    records.push(soa);
    records
}

fn incremental(zone: &Zone, steps: &[Arc<Diff>]) -> Vec<Record> {
    let soa = soa_record(zone);
    let mut records = vec![soa.clone()];
    for step in steps {
        records.push(step.old_soa.clone());
        records.extend(step.deleted.iter().cloned());
        records.push(step.new_soa.clone());
        records.extend(step.added.iter().cloned());
    }
    records.push(soa);
    records
}

fn produce(shared: &Shared, zones: &ZoneSet, raw: &[u8], transport: Transport) -> Result<Produced, String> {
    let transfers = &*shared.transfer.settings.load_full();
    let request = Message::from_vec(raw).map_err(|e| format!("cannot parse the request: {e}"))?;
    let Some(question) = request.queries.first() else {
        return Err("no question".to_string());
    };
    let qtype = question.query_type();
    let is_transfer = matches!(qtype, RecordType::AXFR | RecordType::IXFR);
    if is_transfer && !transfers.on() {
        // No transfer ACL: nobody may transfer, signed or not.
        return refuse_unsigned(&request, ResponseCode::Refused);
    }
    let auth = match authenticate(transfers, raw, &request) {
        Ok(auth) => auth,
        Err(rejected) => return rejected_answer(&request, &rejected),
    };
    if !is_transfer {
        // A signed ordinary query: answered as usual, from the request without its TSIG, then signed.
        let Auth::Key(key, mac) = auth else {
            return Err("an unsigned query reached the TSIG path".to_string());
        };
        let start = tsig_offset(raw).ok_or("cannot find the TSIG record")?;
        let mut stripped = raw[..start].to_vec();
        let arcount = u16::from_be_bytes([stripped[10], stripped[11]]).saturating_sub(1);
        stripped[10..12].copy_from_slice(&arcount.to_be_bytes());
        let mut out = Vec::new();
        let responded = respond_with(
            zones,
            &stripped,
            transport,
            shared.udp_payload,
            TSIG_RESERVE,
            &mut out,
        )
        .map_err(|dropped| format!("not answered: {dropped:?}"))?;
        let mut messages = vec![out];
        sign_all(&mut messages, &key, &mac, request.metadata.id)?;
        return Ok(Produced {
            rcode: responded.rcode,
            messages,
            truncated: responded.truncated,
        });
    }
    let qname = question.name();
    let Some(zone) = zones.find(qname).filter(|zone| zone.apex() == qname) else {
        return refuse_unsigned(&request, ResponseCode::Refused);
    };
    let Auth::Key(key, mac) = auth else {
        tracing::info!(zone = %qname, ?qtype, "unsigned zone transfer refused");
        return refuse_unsigned(&request, ResponseCode::Refused);
    };
    if !transfers.may_transfer(&key, zone.apex()) {
        tracing::info!(zone = %qname, ?qtype, key = %key.name(), "zone transfer refused: the key is for other zones");
        return refuse_unsigned(&request, ResponseCode::Refused);
    }
    let answer_metadata = metadata(&request, ResponseCode::NoError, true);
    let (mut messages, truncated) = match qtype {
        RecordType::IXFR => {
            let Some(serial) = client_serial(&request) else {
                let mut messages = vec![encode(
                    &request,
                    metadata(&request, ResponseCode::FormErr, false),
                    true,
                    Vec::new(),
                    false,
                )?];
                sign_all(&mut messages, &key, &mac, request.metadata.id)?;
                return Ok(Produced {
                    rcode: ResponseCode::FormErr,
                    messages,
                    truncated: false,
                });
            };
            let current = zone.serial();
            let up_to_date = serial == current || serial_newer(serial, current);
            if transport == Transport::Udp {
                // RFC 1995 section 2: the current SOA; TC=1 when the client must come back over TCP.
                let mut meta = answer_metadata;
                meta.truncation = !up_to_date;
                (
                    vec![encode(&request, meta, true, vec![soa_record(zone)], true)?],
                    !up_to_date,
                )
            } else if up_to_date {
                (
                    messages_of(&request, vec![soa_record(zone)], answer_metadata)?,
                    false,
                )
            } else if let Some(steps) = shared.transfer.chain(zone.apex(), serial, current) {
                tracing::info!(zone = %qname, from = serial, to = current, key = %key.name(), "IXFR (incremental)");
                (
                    messages_of(&request, incremental(zone, &steps), answer_metadata)?,
                    false,
                )
            } else {
                tracing::info!(zone = %qname, from = serial, to = current, key = %key.name(), "IXFR (full, serial unknown)");
                (messages_of(&request, full(zone), answer_metadata)?, false)
            }
        }
        _ => {
            tracing::info!(zone = %qname, serial = zone.serial(), key = %key.name(), "AXFR");
            (messages_of(&request, full(zone), answer_metadata)?, false)
        }
    };
    sign_all(&mut messages, &key, &mac, request.metadata.id)?;
    Ok(Produced {
        rcode: ResponseCode::NoError,
        messages,
        truncated,
    })
}

/// A SERVFAIL for a request that could not be answered (a bug or a request hickory cannot parse: FORMERR).
fn fallback(raw: &[u8], err: &str) -> Vec<u8> {
    tracing::debug!(error = %err, "zone transfer or signed query not answered normally");
    let mut out = Vec::with_capacity(12);
    if raw.len() >= 12 {
        out.extend_from_slice(&raw[..12]);
        // QR=1, opcode and RD kept, AA/TC clear; RA/Z/AD/CD clear, rcode FORMERR; no records.
        out[2] = (out[2] | 0x80) & 0xf9;
        out[3] = 1;
        out[4..12].fill(0);
    }
    out
}

/// Answers a deferred query that came over UDP (see [`crate::server`]).
pub(crate) fn respond_udp(
    shared: &Shared,
    zones: &ZoneSet,
    raw: &[u8],
    out: &mut Vec<u8>,
) -> Result<Responded, Dropped> {
    out.clear();
    let qtype = qtype_of(raw);
    match produce(shared, zones, raw, Transport::Udp) {
        Ok(mut produced) => {
            if let Some(first) = produced.messages.first_mut() {
                std::mem::swap(out, first);
            }
            Ok(Responded {
                qtype,
                rcode: produced.rcode,
                truncated: produced.truncated,
            })
        }
        Err(err) => {
            *out = fallback(raw, &err);
            if out.is_empty() {
                return Err(Dropped::Malformed);
            }
            Ok(Responded {
                qtype,
                rcode: ResponseCode::FormErr,
                truncated: false,
            })
        }
    }
}

/// Answers a deferred query that came over TCP: every message to send, in order.
pub(crate) fn respond_tcp(
    shared: &Shared,
    zones: &ZoneSet,
    raw: &[u8],
) -> (Result<Responded, Dropped>, Vec<Vec<u8>>) {
    let qtype = qtype_of(raw);
    match produce(shared, zones, raw, Transport::Tcp) {
        Ok(produced) => (
            Ok(Responded {
                qtype,
                rcode: produced.rcode,
                truncated: produced.truncated,
            }),
            produced.messages,
        ),
        Err(err) => {
            let out = fallback(raw, &err);
            if out.is_empty() {
                return (Err(Dropped::Malformed), Vec::new());
            }
            (
                Ok(Responded {
                    qtype,
                    rcode: ResponseCode::FormErr,
                    truncated: false,
                }),
                vec![out],
            )
        }
    }
}

fn qtype_of(raw: &[u8]) -> Option<RecordType> {
    let end = crate::tsig::skip_name(raw, 12)?;
    let bytes = raw.get(end..end + 2)?;
    Some(RecordType::from(u16::from_be_bytes([bytes[0], bytes[1]])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsig::TsigAlgorithm;
    use crate::zone::fixture::{config, record};

    #[test]
    fn zone_keys_transfer_only_their_zone_and_sign_its_notify() {
        let n = |s: &str| Name::from_ascii(s).expect("name");
        let k1 = TsigKey::new("k1", TsigAlgorithm::HmacSha256, b"one").expect("key");
        let k1_other = TsigKey::new("k1", TsigAlgorithm::HmacSha256, b"other").expect("key");
        let k2 = TsigKey::new("k2", TsigAlgorithm::HmacSha256, b"two").expect("key");
        let config = TransferConfig {
            zone_keys: vec![
                ZoneKey {
                    zone: n("a.example."),
                    key: k1.clone(),
                },
                ZoneKey {
                    zone: n("b.example."),
                    key: k2.clone(),
                },
            ],
            ..TransferConfig::default()
        };
        let s = Settings::check(&config).expect("valid");
        assert!(s.on());
        assert!(s.may_transfer(&k1, &n("a.example.")));
        assert!(!s.may_transfer(&k1, &n("b.example.")));
        assert!(s.may_transfer(&k2, &n("b.example.")));
        assert_eq!(s.key(k2.name()), Some(&k2));
        assert_eq!(s.notify_key(&n("a.example.")), Some(k1.clone()));
        assert_eq!(s.notify_key(&n("c.example.")), None);
        let clash = TransferConfig {
            zone_keys: vec![
                ZoneKey {
                    zone: n("a.example."),
                    key: k1.clone(),
                },
                ZoneKey {
                    zone: n("b.example."),
                    key: k1_other,
                },
            ],
            ..TransferConfig::default()
        };
        let err = Settings::check(&clash).expect_err("one name, two secrets");
        assert!(err.contains("different algorithms or secrets"), "{err}");
        let global_too = TransferConfig {
            keys: vec![k1.clone()],
            zone_keys: vec![ZoneKey {
                zone: n("a.example."),
                key: k1,
            }],
            ..TransferConfig::default()
        };
        assert!(Settings::check(&global_too).is_err());
    }

    #[test]
    fn serials_follow_rfc_1982() {
        assert!(serial_newer(2, 1));
        assert!(!serial_newer(1, 2));
        assert!(!serial_newer(5, 5));
        assert!(serial_newer(0, u32::MAX), "wraps");
        assert!(serial_newer(10, u32::MAX - 10));
        assert!(
            !serial_newer(1 << 31, 0),
            "exactly half way is undefined: not newer"
        );
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        // (previous, now, next)
        let cases = [
            (1, 1_700_000_000, 1_700_000_000),
            (1_700_000_000, 1_700_000_000, 1_700_000_001),
            (1_800_000_000, 1_700_000_000, 1_800_000_001),
            (u32::MAX, 5, 5),
            (2_000_000_000, 5_000_000_000, 2_000_000_001),
        ];
        for (previous, now, next) in cases {
            let got = next_serial(previous, at(now));
            assert_eq!(got, next, "previous {previous}, now {now}");
            assert!(serial_newer(got, previous));
        }
    }

    fn zone(serial: u32, lines: &[&str]) -> Zone {
        let mut config = config("example.");
        config.soa.serial = serial;
        Zone::build(&config, lines.iter().map(|l| record(l))).unwrap()
    }

    #[test]
    fn diffs_list_deleted_and_added_records_without_the_soa() {
        let old = zone(
            1,
            &[
                "www.example. 300 A 192.0.2.1",
                "www.example. 300 A 192.0.2.2",
                "gone.example. 300 TXT bye",
                "ttl.example. 300 A 192.0.2.9",
            ],
        );
        let new = zone(
            2,
            &[
                "www.example. 300 A 192.0.2.1",
                "www.example. 300 A 192.0.2.3",
                "new.example. 300 TXT hello",
                "ttl.example. 60 A 192.0.2.9",
            ],
        );
        let d = diff(&old, &new);
        assert_eq!((d.from, d.to), (1, 2));
        let text = |records: &[Record]| {
            let mut lines: Vec<String> = records.iter().map(crate::resolve::record_line).collect();
            lines.sort();
            lines
        };
        let deleted = text(&d.deleted);
        let added = text(&d.added);
        assert_eq!(deleted.len(), 3, "{deleted:?}");
        assert!(deleted.iter().any(|l| l.contains("192.0.2.2")));
        assert!(deleted.iter().any(|l| l.contains("gone.example.")));
        assert!(
            deleted
                .iter()
                .any(|l| l.contains("ttl.example.") && l.contains("300"))
        );
        assert_eq!(added.len(), 3, "{added:?}");
        assert!(added.iter().any(|l| l.contains("192.0.2.3")));
        assert!(added.iter().any(|l| l.contains("new.example.")));
        assert!(
            added
                .iter()
                .any(|l| l.contains("ttl.example.") && l.contains(" 60 "))
        );
        assert!(
            d.deleted
                .iter()
                .chain(&d.added)
                .all(|r| r.record_type() != RecordType::SOA)
        );
        // A full transfer starts and ends with the SOA and holds everything once.
        let records = full(&new);
        assert_eq!(records.first().map(Record::record_type), Some(RecordType::SOA));
        assert_eq!(records.last().map(Record::record_type), Some(RecordType::SOA));
        assert_eq!(
            records.len(),
            new.record_count() + 1,
            "SOA counted once in record_count"
        );
    }

    #[test]
    fn big_transfers_are_split_into_messages_that_fit() {
        let lines: Vec<String> = (0..3000)
            .map(|i| format!("host{i}.example. 300 TXT {}", "x".repeat(40)))
            .collect();
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let zone = zone(7, &refs);
        let mut request = Message::query();
        request.add_query(Query::query(zone.apex().clone(), RecordType::AXFR));
        let messages = messages_of(
            &request,
            full(&zone),
            metadata(&request, ResponseCode::NoError, true),
        )
        .unwrap();
        assert!(messages.len() > 3, "{} messages", messages.len());
        let mut count = 0;
        for (index, bytes) in messages.iter().enumerate() {
            assert!(bytes.len() < 65_000);
            let message = Message::from_vec(bytes).unwrap();
            assert_eq!(message.queries.len(), usize::from(index == 0));
            count += message.answers.len();
        }
        assert_eq!(count, zone.record_count() + 1);
    }

    /// Appends a TSIG record signed at `time` (the clock of a host that is off by a lot).
    fn sign_at(bytes: &mut Vec<u8>, key: &TsigKey, time: u64) {
        use hickory_proto::rr::rdata::tsig::{TSIG, make_tsig_record};
        use hickory_proto::serialize::binary::BinEncoder;
        let id = u16::from_be_bytes([bytes[0], bytes[1]]);
        let pre = TSIG::new(
            key.algorithm().hickory(),
            time,
            300,
            Vec::new(),
            id,
            None,
            Vec::new(),
        );
        let mut vars = Vec::new();
        pre.emit_tsig_for_mac(&mut BinEncoder::new(&mut vars), key.name())
            .unwrap();
        let mut tbs = bytes.clone();
        tbs.extend_from_slice(&vars);
        let mac = hmac::sign(&key.hmac_key(), &tbs).as_ref().to_vec();
        let record = make_tsig_record(key.name().clone(), pre.set_mac(mac));
        bytes.extend_from_slice(&record.to_bytes().unwrap());
        bytes[11] += 1;
    }

    async fn ask_udp(server: SocketAddr, bytes: &[u8]) -> (Vec<u8>, Message) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(bytes, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (len, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        buf.truncate(len);
        let message = Message::from_vec(&buf).unwrap();
        (buf, message)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn signed_queries_get_signed_answers_and_a_stale_clock_gets_badtime() {
        use crate::server::{Server, ServerConfig};
        let key = TsigKey::new("k", crate::tsig::TsigAlgorithm::HmacSha256, b"the secret").unwrap();
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.udp_workers = 1;
        config.transfer.keys = vec![key.clone()];
        let zone = zone(3, &["www.example. 300 A 192.0.2.1"]);
        let zones = ZoneSet::new([Arc::new(zone)]).unwrap();
        let server = Server::start(&config, zones, &prometheus::Registry::new()).unwrap();
        let mut query = Message::query();
        query.add_query(Query::query(
            Name::from_ascii("www.example.").unwrap(),
            RecordType::A,
        ));
        let plain = query.to_vec().unwrap();

        // A good signature: the answer is signed over the request's MAC.
        let mut bytes = plain.clone();
        let request_mac = crate::tsig::sign_request(&mut bytes, &key).unwrap();
        let (raw, answer) = ask_udp(server.local_addr(), &bytes).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(answer.answers.len(), 1);
        let (name, tsig) = tsig_record_of(&answer).expect("a signed answer");
        assert_eq!(tsig.error, None);
        let start = tsig_offset(&raw).unwrap();
        let tbs = received_tbs(&raw, start, &tsig, &name, Some(&request_mac), &[], true).unwrap();
        assert!(
            hmac::verify(&key.hmac_key(), &tbs, &tsig.mac).is_ok(),
            "the answer's MAC verifies"
        );

        // Signed an hour ago: NOTAUTH, BADTIME, signed, our time in Other Data.
        let mut stale = plain.clone();
        sign_at(&mut stale, &key, unix_now() - 3600);
        let (_, answer) = ask_udp(server.local_addr(), &stale).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NotAuth);
        assert!(answer.answers.is_empty());
        let (_, tsig) = tsig_record_of(&answer).expect("TSIG in the BADTIME answer");
        assert_eq!(tsig.error, Some(TsigError::BadTime));
        assert_eq!(tsig.other.len(), 6);
        assert!(!tsig.mac.is_empty(), "BADTIME answers are signed");

        // A wrong secret: NOTAUTH, BADSIG, no MAC.
        let other = TsigKey::new("k", crate::tsig::TsigAlgorithm::HmacSha256, b"another").unwrap();
        let mut bad = plain.clone();
        crate::tsig::sign_request(&mut bad, &other).unwrap();
        let (_, answer) = ask_udp(server.local_addr(), &bad).await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NotAuth);
        let (_, tsig) = tsig_record_of(&answer).expect("TSIG in the BADSIG answer");
        assert_eq!((tsig.error, tsig.mac.len()), (Some(TsigError::BadSig), 0));

        // An unsigned query is answered as always, unsigned.
        let (_, answer) = ask_udp(server.local_addr(), &plain).await;
        assert_eq!(answer.answers.len(), 1);
        assert!(tsig_record_of(&answer).is_none());
        server.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn notify_is_signed_retried_a_bounded_number_of_times_and_stops_when_answered() {
        use crate::server::{Server, ServerConfig};
        let key = TsigKey::new("k", crate::tsig::TsigAlgorithm::HmacSha256, b"the secret").unwrap();
        // A secondary that never answers, and one that answers the second attempt.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let answering = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.udp_workers = 1;
        config.transfer.keys = vec![key.clone()];
        config.transfer.notify_attempts = 3;
        config.transfer.notify_timeout = Duration::from_millis(50);
        config.transfer.secondaries = vec![Secondary {
            zone: Name::from_ascii("example.").unwrap(),
            addresses: vec![silent.local_addr().unwrap(), answering.local_addr().unwrap()],
        }];
        let zones =
            |serial| ZoneSet::new([Arc::new(zone(serial, &["www.example. 300 A 192.0.2.1"]))]).unwrap();
        let server = Server::start(&config, zones(1), &prometheus::Registry::new()).unwrap();

        // The answering secondary: ignores the first attempt of serial 2, answers the second.
        let answerer = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut attempts = 0;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while let Ok(Ok((len, from))) =
                tokio::time::timeout_at(deadline, answering.recv_from(&mut buf)).await
            {
                let message = Message::from_vec(&buf[..len]).unwrap();
                let serial = match message.answers.first().map(|r| &r.data) {
                    Some(RData::SOA(soa)) => soa.serial,
                    _ => 0,
                };
                if serial != 2 {
                    continue;
                }
                attempts += 1;
                if attempts == 2 {
                    let mut ack = Message::new(message.metadata.id, MessageType::Response, OpCode::Notify);
                    ack.queries = message.queries.clone();
                    answering.send_to(&ack.to_vec().unwrap(), from).await.unwrap();
                }
            }
            attempts
        });
        let mut buf = vec![0u8; 4096];
        let mut received = Vec::new();
        // The first snapshot is announced too; then a new serial.
        server.swap(zones(2));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, silent.recv_from(&mut buf)).await {
            received.push(Message::from_vec(&buf[..len]).unwrap());
        }
        // Serial 1's NOTIFY stops once serial 2 is served; serial 2's is sent exactly 3 times.
        let for_two: Vec<&Message> = received
            .iter()
            .filter(
                |m| matches!(m.answers.first().map(|r| &r.data), Some(RData::SOA(soa)) if soa.serial == 2),
            )
            .collect();
        assert_eq!(for_two.len(), 3, "{received:?}");
        for message in &for_two {
            assert_eq!(message.metadata.op_code, OpCode::Notify);
            assert!(message.metadata.authoritative);
            assert_eq!(message.queries[0].query_type(), RecordType::SOA);
            let (name, tsig) = tsig_record_of(message).expect("signed");
            assert_eq!(name, *key.name());
            assert!(!tsig.mac.is_empty());
        }

        let attempts = answerer.await.unwrap();
        assert_eq!(attempts, 2, "no attempt after the acknowledgement");
        server.shutdown().await;
    }
}
