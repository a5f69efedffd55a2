//! Zone snapshots: one immutable, validated view of a zone's data.
//!
//! ```text
//!   ZoneConfig (apex, SOA fields, NS names)   ─┐
//!                                              ├─> Zone::build ──> Zone (immutable)
//!   records: Vec<hickory Record>               ─┘      │              │
//!                                                      │ ZoneError    ├─> resolve (answers)
//!                                                      ▼              └─> later: AXFR, RFC2136 diff
//!                                                exactly what is wrong
//! ```
//!
//! A `Zone` is built once from the zone's settings (the `DNSZone` object) and the desired records (from
//! Services, Ingresses and `DNSRecord`s), and never changes afterwards: a change builds a new snapshot that
//! the server swaps in atomically. Building does all the work the query path must not: names are made
//! absolute, records are grouped into RRsets keyed by owner name and type, the SOA and apex NS RRsets are
//! made from the settings, the SOA used in negative answers gets its RFC 2308 TTL, and every empty
//! non-terminal (a name with no data of its own but with data below it, RFC 4592 section 2.2.2) gets a node,
//! so "does this name exist" is one map lookup.
//!
//! The rules checked here are the ones a server must not break when it answers (RFC 1034, RFC 2181): data
//! only inside the zone, no CNAME beside other data or at the apex, one CNAME per name, one TTL per RRset,
//! TTLs up to 2^31-1, NS below the apex only as a delegation with nothing but glue below it, no wildcard
//! delegations. Each error names the record and the rule.
//!
//! The query path looks names up by [`NameKey`]: the name's labels in wire format (length-prefixed),
//! ASCII-lowercased, without the root label. Every ancestor's key is a suffix of the name's key, so finding
//! the closest encloser or a delegation above a name is slicing and hashing, never building a name; the
//! nodes are kept in canonical order for [`Zone::nodes`] and indexed by key in a hash map.
//!
//! Names are compared case-insensitively (hickory's `Name`); every name, including those inside RDATA
//! (CNAME, MX, SRV, NS, PTR targets), is taken as absolute, so `app.example.com` and `app.example.com.` are
//! the same name.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};

use hickory_proto::rr::rdata::{CNAME, MX, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The largest TTL a record may carry: RFC 2181 section 8 (values with the top bit set are treated as 0 by
/// resolvers, so we refuse them instead of publishing something that is silently different).
pub const MAX_TTL: u32 = 0x7fff_ffff;

/// The record types a zone may hold besides the SOA and apex NS it makes itself. These are the types the
/// sources publish (A, AAAA, CNAME, TXT, SRV, MX, CAA), NS for delegations and PTR.
pub const SUPPORTED_TYPES: [RecordType; 9] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::TXT,
    RecordType::SRV,
    RecordType::MX,
    RecordType::CAA,
    RecordType::NS,
    RecordType::PTR,
];

/// The zone's own settings: what a `DNSZone` says about its apex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The apex, e.g. `apps.example.com.`.
    pub apex: Name,
    /// The SOA's fields (the serial is bumped by the controller on every change).
    pub soa: SoaConfig,
    /// The names of the zone's name servers (the NS RRset at the apex). At least one.
    pub nameservers: Vec<Name>,
    /// The TTL of the apex NS RRset.
    pub ns_ttl: u32,
}

/// The fields of the zone's SOA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoaConfig {
    /// MNAME: the primary name server.
    pub mname: Name,
    /// RNAME: the responsible person's mailbox, as a name (`hostmaster.example.com.`).
    pub rname: Name,
    /// SERIAL.
    pub serial: u32,
    /// REFRESH, seconds.
    pub refresh: u32,
    /// RETRY, seconds.
    pub retry: u32,
    /// EXPIRE, seconds.
    pub expire: u32,
    /// MINIMUM: the TTL of negative answers, capped by the SOA's own TTL (RFC 2308 section 4).
    pub minimum: u32,
    /// The TTL of the SOA record itself.
    pub ttl: u32,
}

/// A zone that cannot be built, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneError {
    /// A record's owner is not at or below the apex.
    #[error("zone {apex}: record {name} {rtype} is outside the zone (names must end in {apex})")]
    OutsideZone {
        /// The zone.
        apex: String,
        /// The record's owner.
        name: String,
        /// The record's type.
        rtype: RecordType,
    },
    /// A CNAME at the apex, where the SOA and NS must be (RFC 1912 section 2.4, RFC 2181 section 10.1).
    #[error("zone {apex}: CNAME at the apex is not allowed (the apex holds the SOA and NS records)")]
    CnameAtApex {
        /// The zone.
        apex: String,
    },
    /// A CNAME beside other data at the same name (RFC 1034 section 3.6.2, RFC 2181 section 10.1).
    #[error(
        "zone {apex}: {name} has a CNAME and also {other} records; a CNAME must be the only record at its name"
    )]
    CnameAndOtherData {
        /// The zone.
        apex: String,
        /// The name.
        name: String,
        /// One of the other types at that name.
        other: RecordType,
    },
    /// Several different CNAME records at one name (RFC 2181 section 10.1: an alias has one target).
    #[error(
        "zone {apex}: {name} has {count} CNAME records ({targets}); a name can be an alias of one name only"
    )]
    MultipleCnames {
        /// The zone.
        apex: String,
        /// The name.
        name: String,
        /// How many.
        count: usize,
        /// The targets, comma-separated.
        targets: String,
    },
    /// A TTL above 2^31-1 (RFC 2181 section 8).
    #[error(
        "zone {apex}: record {name} {rtype} has TTL {ttl}, above the maximum {MAX_TTL} (RFC 2181 section 8)"
    )]
    BadTtl {
        /// The zone.
        apex: String,
        /// The record's owner (the apex for the SOA and NS settings).
        name: String,
        /// The record's type.
        rtype: RecordType,
        /// The TTL given.
        ttl: u32,
    },
    /// Records of one RRset with different TTLs (RFC 2181 section 5.2).
    #[error(
        "zone {apex}: the {rtype} records of {name} have different TTLs ({first} and {second}); all records of one name and type must share one TTL"
    )]
    TtlMismatch {
        /// The zone.
        apex: String,
        /// The owner.
        name: String,
        /// The type.
        rtype: RecordType,
        /// One TTL.
        first: u32,
        /// Another.
        second: u32,
    },
    /// A record type the zone does not hold.
    #[error(
        "zone {apex}: record {name} {rtype}: type {rtype} is not supported (supported: A, AAAA, CNAME, TXT, SRV, MX, CAA, NS, PTR)"
    )]
    UnsupportedType {
        /// The zone.
        apex: String,
        /// The owner.
        name: String,
        /// The type.
        rtype: RecordType,
    },
    /// An SOA record, or an NS record at the apex, among the records: those come from the zone's settings.
    #[error(
        "zone {apex}: {rtype} records at the apex come from the zone's settings (spec.soa / spec.nameservers), not from records"
    )]
    ApexRecordFromSettings {
        /// The zone.
        apex: String,
        /// SOA or NS.
        rtype: RecordType,
    },
    /// An SOA record away from the apex.
    #[error("zone {apex}: SOA record at {name}: a zone has one SOA, at its apex")]
    SoaBelowApex {
        /// The zone.
        apex: String,
        /// Where it was.
        name: String,
    },
    /// No name servers in the settings: a zone needs an NS RRset at its apex (RFC 1034 section 4.2.1).
    #[error("zone {apex}: no name servers; a zone needs at least one NS record at its apex")]
    NoNameservers {
        /// The zone.
        apex: String,
    },
    /// Data below a delegation point other than glue addresses (RFC 1034 section 4.2.1: it is not
    /// authoritative here and would never be served).
    #[error(
        "zone {apex}: record {name} {rtype} is at or below the delegation at {cut} and would never be answered (only NS at the cut and A/AAAA glue may be there)"
    )]
    Occluded {
        /// The zone.
        apex: String,
        /// The owner.
        name: String,
        /// The type.
        rtype: RecordType,
        /// The delegation point above it.
        cut: String,
    },
    /// A wildcard delegation (RFC 4592 section 4.2: its meaning is undefined).
    #[error("zone {apex}: NS records at the wildcard {name} are not allowed (RFC 4592 section 4.2)")]
    WildcardDelegation {
        /// The zone.
        apex: String,
        /// The wildcard name.
        name: String,
    },
    /// A name that cannot be made absolute or extended (too long).
    #[error("zone {apex}: name {name}: {reason}")]
    BadName {
        /// The zone.
        apex: String,
        /// The name, as text.
        name: String,
        /// hickory's explanation.
        reason: String,
    },
}

impl ZoneError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ZoneError::OutsideZone { .. } => "OutsideZone",
            ZoneError::CnameAtApex { .. } => "CNAMEAtApex",
            ZoneError::CnameAndOtherData { .. } => "CNAMEAndOtherData",
            ZoneError::MultipleCnames { .. } => "MultipleCNAMEs",
            ZoneError::BadTtl { .. } => "BadTTL",
            ZoneError::TtlMismatch { .. } => "TTLMismatch",
            ZoneError::UnsupportedType { .. } => "UnsupportedType",
            ZoneError::ApexRecordFromSettings { .. } => "ApexRecordFromSettings",
            ZoneError::SoaBelowApex { .. } => "SOABelowApex",
            ZoneError::NoNameservers { .. } => "NoNameservers",
            ZoneError::Occluded { .. } => "Occluded",
            ZoneError::WildcardDelegation { .. } => "WildcardDelegation",
            ZoneError::BadName { .. } => "BadName",
        }
    }
}

/// All records of one owner name and type: the unit DNS answers in (RFC 2181 section 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RrSet {
    name: Name,
    rtype: RecordType,
    ttl: u32,
    rdatas: Vec<RData>,
}

impl RrSet {
    /// The owner name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The type.
    pub fn record_type(&self) -> RecordType {
        self.rtype
    }

    /// The TTL shared by every record of the set.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// The records' data, without duplicates, in the order first given.
    pub fn rdatas(&self) -> &[RData] {
        &self.rdatas
    }

    /// An empty set at the root, for slots that are never read (see `resolve::Section`).
    pub(crate) fn filler() -> RrSet {
        RrSet {
            name: Name::root(),
            rtype: RecordType::NULL,
            ttl: 0,
            rdatas: Vec::new(),
        }
    }

    /// The set as hickory records under `owner` (the set's own name, or the query name for an answer
    /// synthesized from a wildcard).
    pub fn records_as<'a>(&'a self, owner: &'a Name) -> impl Iterator<Item = Record> + 'a {
        self.rdatas
            .iter()
            .map(move |rdata| Record::from_rdata(owner.clone(), self.ttl, rdata.clone()))
    }
}

/// What exists at one name: its RRsets, sorted by type; none for an empty non-terminal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    rrsets: Vec<RrSet>,
}

impl Node {
    /// The RRsets at this name.
    pub fn rrsets(&self) -> &[RrSet] {
        &self.rrsets
    }

    /// The RRset of one type, if any.
    pub fn get(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|set| set.rtype == rtype)
    }

    /// True for an empty non-terminal: the name exists (it has descendants) but holds no data.
    pub fn is_empty_non_terminal(&self) -> bool {
        self.rrsets.is_empty()
    }
}

/// The longest key: a name is at most 255 octets in wire format, the root label included.
const KEY_MAX: usize = 255;
/// The most labels a name can have besides the root (one octet of length, one of data each).
const LABELS_MAX: usize = 127;

/// A name as the zone looks it up: its labels in wire format (each prefixed by its length),
/// ASCII-lowercased, without the root label, so that names equal under DNS's case-insensitive comparison
/// have equal keys. The key of the ancestor with `n` labels is [`NameKey::suffix`]`(n)`. Built on the stack:
/// no allocation.
#[derive(Clone)]
pub struct NameKey {
    bytes: [u8; KEY_MAX],
    len: usize,
    /// Where each label starts, left to right; `starts[labels] == len`.
    starts: [u8; LABELS_MAX + 1],
    labels: usize,
    /// Set if the name did not fit (hickory's `Name` never allows that): such a key finds nothing.
    invalid: bool,
}

impl NameKey {
    /// The key of `name`.
    pub fn new(name: &Name) -> NameKey {
        let mut key = NameKey {
            bytes: [0; KEY_MAX],
            len: 0,
            starts: [0; LABELS_MAX + 1],
            labels: 0,
            invalid: false,
        };
        for label in name.iter() {
            let (Ok(size), Ok(start)) = (u8::try_from(label.len()), u8::try_from(key.len)) else {
                key.invalid = true;
                break;
            };
            let end = key.len + 1 + label.len();
            let (Some(slot), Some(dest)) = (key.starts.get_mut(key.labels), key.bytes.get_mut(key.len..end))
            else {
                key.invalid = true;
                break;
            };
            *slot = start;
            dest[0] = size;
            for (out, byte) in dest[1..].iter_mut().zip(label) {
                *out = byte.to_ascii_lowercase();
            }
            key.len = end;
            key.labels += 1;
        }
        match u8::try_from(key.len) {
            Ok(len) if !key.invalid && key.labels <= LABELS_MAX => key.starts[key.labels] = len,
            _ => {
                key.invalid = true;
                key.labels = 0;
                key.len = 0;
            }
        }
        key
    }

    /// How many labels the name has (the root label not counted).
    pub fn labels(&self) -> usize {
        self.labels
    }

    /// The key of the ancestor with the last `labels` labels of the name (`labels()` for the name itself,
    /// 0 for the root). More labels than the name has gives the name itself.
    pub fn suffix(&self, labels: usize) -> &[u8] {
        let labels = labels.min(self.labels);
        let start = usize::from(self.starts[self.labels - labels]);
        &self.bytes[start..self.len]
    }

    /// The whole key.
    pub fn as_bytes(&self) -> &[u8] {
        self.suffix(self.labels)
    }

    /// False for a name that could not be keyed (never for a hickory `Name`).
    pub fn is_valid(&self) -> bool {
        !self.invalid
    }
}

impl fmt::Debug for NameKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameKey")
            .field("bytes", &self.as_bytes())
            .field("labels", &self.labels)
            .finish()
    }
}

/// A fast hash for name keys (an FxHash-like multiply-rotate over 8-byte words with a final mix), seeded
/// per process so that the bucket of a name cannot be predicted from outside.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHash {
    seed: u64,
}

impl KeyHash {
    pub(crate) fn new() -> KeyHash {
        KeyHash {
            seed: RandomState::new().hash_one(0x6665_7272_6974_6521_u64),
        }
    }
}

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;

    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.seed)
    }
}

/// The hasher of [`KeyHash`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        // splitmix64's finalizer: the table uses both the low bits (bucket) and the high bits (tag).
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
}

/// An immutable, validated zone.
#[derive(Clone, PartialEq, Eq)]
pub struct Zone {
    apex: Name,
    /// The apex's key and label count.
    apex_key: Box<[u8]>,
    apex_labels: usize,
    serial: u32,
    /// Every name with its node, in canonical order.
    nodes: Vec<(Name, Node)>,
    /// The position in `nodes` of each name, by key.
    index: HashMap<Box<[u8]>, u32, KeyHash>,
    /// True if some name below the apex has NS records (a zone cut); most zones have none, and then no
    /// lookup looks for one.
    has_delegations: bool,
    /// The SOA as it goes into the authority section of negative answers: TTL = min(SOA TTL, MINIMUM).
    negative_soa: RrSet,
    record_count: usize,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The nodes can be 100,000 names: show the shape, not the data.
        f.debug_struct("Zone")
            .field("apex", &self.apex)
            .field("serial", &self.serial)
            .field("names", &self.nodes.len())
            .field("records", &self.record_count)
            .finish()
    }
}

impl Zone {
    /// Validates `records` against the zone's settings and builds the snapshot. Identical records are
    /// merged (an RRset is a set); anything else that breaks a rule is an error naming the record.
    pub fn build(config: &ZoneConfig, records: impl IntoIterator<Item = Record>) -> Result<Zone, ZoneError> {
        let apex = absolute(&config.apex, &config.apex)?;
        let soa = &config.soa;
        if config.nameservers.is_empty() {
            return Err(ZoneError::NoNameservers {
                apex: apex.to_string(),
            });
        }
        for (rtype, ttl) in [(RecordType::SOA, soa.ttl), (RecordType::NS, config.ns_ttl)] {
            check_ttl(&apex, &apex, rtype, ttl)?;
        }

        // Group into RRsets first, so every rule below sees whole sets.
        let mut sets: BTreeMap<(Name, RecordType), RrSet> = BTreeMap::new();
        let soa_rdata = RData::SOA(SOA::new(
            absolute(&apex, &soa.mname)?,
            absolute(&apex, &soa.rname)?,
            soa.serial,
            clamp_i32(soa.refresh),
            clamp_i32(soa.retry),
            clamp_i32(soa.expire),
            soa.minimum,
        ));
        sets.insert(
            (apex.clone(), RecordType::SOA),
            RrSet {
                name: apex.clone(),
                rtype: RecordType::SOA,
                ttl: soa.ttl,
                rdatas: vec![soa_rdata.clone()],
            },
        );
        let mut ns = RrSet {
            name: apex.clone(),
            rtype: RecordType::NS,
            ttl: config.ns_ttl,
            rdatas: Vec::new(),
        };
        for server in &config.nameservers {
            let rdata = RData::NS(NS(absolute(&apex, server)?));
            if !ns.rdatas.contains(&rdata) {
                ns.rdatas.push(rdata);
            }
        }
        sets.insert((apex.clone(), RecordType::NS), ns);

        for record in records {
            let rtype = record.record_type();
            let name = absolute(&apex, &record.name)?;
            if !apex.zone_of(&name) {
                return Err(ZoneError::OutsideZone {
                    apex: apex.to_string(),
                    name: name.to_string(),
                    rtype,
                });
            }
            if rtype == RecordType::SOA {
                return Err(if name == apex {
                    ZoneError::ApexRecordFromSettings {
                        apex: apex.to_string(),
                        rtype,
                    }
                } else {
                    ZoneError::SoaBelowApex {
                        apex: apex.to_string(),
                        name: name.to_string(),
                    }
                });
            }
            if rtype == RecordType::NS && name == apex {
                return Err(ZoneError::ApexRecordFromSettings {
                    apex: apex.to_string(),
                    rtype,
                });
            }
            if !SUPPORTED_TYPES.contains(&rtype) {
                return Err(ZoneError::UnsupportedType {
                    apex: apex.to_string(),
                    name: name.to_string(),
                    rtype,
                });
            }
            if rtype == RecordType::NS && name.is_wildcard() {
                return Err(ZoneError::WildcardDelegation {
                    apex: apex.to_string(),
                    name: name.to_string(),
                });
            }
            check_ttl(&apex, &name, rtype, record.ttl)?;
            let rdata = absolute_rdata(&apex, record.data)?;
            match sets.get_mut(&(name.clone(), rtype)) {
                Some(set) => {
                    if set.ttl != record.ttl {
                        return Err(ZoneError::TtlMismatch {
                            apex: apex.to_string(),
                            name: name.to_string(),
                            rtype,
                            first: set.ttl,
                            second: record.ttl,
                        });
                    }
                    if !set.rdatas.contains(&rdata) {
                        set.rdatas.push(rdata);
                    }
                }
                None => {
                    sets.insert(
                        (name.clone(), rtype),
                        RrSet {
                            name,
                            rtype,
                            ttl: record.ttl,
                            rdatas: vec![rdata],
                        },
                    );
                }
            }
        }

        let mut nodes: BTreeMap<Name, Node> = BTreeMap::new();
        let mut record_count = 0;
        for ((name, _), set) in sets {
            record_count += set.rdatas.len();
            nodes.entry(name).or_default().rrsets.push(set);
        }

        // Per-name rules.
        let cuts: Vec<Name> = nodes
            .iter()
            .filter(|(name, node)| **name != apex && node.get(RecordType::NS).is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for (name, node) in &nodes {
            if let Some(cname) = node.get(RecordType::CNAME) {
                if *name == apex {
                    return Err(ZoneError::CnameAtApex {
                        apex: apex.to_string(),
                    });
                }
                if cname.rdatas.len() > 1 {
                    let targets: Vec<String> = cname.rdatas.iter().map(|r| r.to_string()).collect();
                    return Err(ZoneError::MultipleCnames {
                        apex: apex.to_string(),
                        name: name.to_string(),
                        count: cname.rdatas.len(),
                        targets: targets.join(", "),
                    });
                }
                if let Some(other) = node.rrsets.iter().find(|set| set.rtype != RecordType::CNAME) {
                    return Err(ZoneError::CnameAndOtherData {
                        apex: apex.to_string(),
                        name: name.to_string(),
                        other: other.rtype,
                    });
                }
            }
            // At a delegation point only NS (and, with DNSSEC, DS) belong to this zone; below it only glue.
            for cut in &cuts {
                let at_cut = name == cut;
                if !cut.zone_of(name) {
                    continue;
                }
                for set in &node.rrsets {
                    let allowed = if at_cut {
                        set.rtype == RecordType::NS || set.rtype.is_ip_addr()
                    } else {
                        set.rtype.is_ip_addr()
                    };
                    if !allowed {
                        return Err(ZoneError::Occluded {
                            apex: apex.to_string(),
                            name: name.to_string(),
                            rtype: set.rtype,
                            cut: cut.to_string(),
                        });
                    }
                }
            }
        }

        // Empty non-terminals: every ancestor of a name with data, up to the apex, exists.
        let apex_labels = apex.iter().len();
        let mut ents = Vec::new();
        for name in nodes.keys() {
            for labels in (apex_labels + 1)..name.iter().len() {
                let ancestor = name.trim_to(labels);
                if !nodes.contains_key(&ancestor) {
                    ents.push(ancestor);
                }
            }
        }
        for ent in ents {
            nodes.entry(ent).or_default();
        }
        let has_delegations = !cuts.is_empty();
        // Vectors grown one push at a time keep room for four RRsets per name: at 100,000 names that
        // is tens of megabytes of spare capacity in every snapshot.
        let nodes: Vec<(Name, Node)> = nodes
            .into_iter()
            .map(|(name, mut node)| {
                node.rrsets.shrink_to_fit();
                for set in &mut node.rrsets {
                    set.rdatas.shrink_to_fit();
                }
                (name, node)
            })
            .collect();
        let mut index = HashMap::with_capacity_and_hasher(nodes.len(), KeyHash::new());
        for (position, (name, _)) in nodes.iter().enumerate() {
            // A zone holds far fewer than 2^32 names (each costs memory); refuse rather than wrap.
            let position = u32::try_from(position).map_err(|_| ZoneError::BadName {
                apex: apex.to_string(),
                name: name.to_string(),
                reason: "the zone has more than 2^32 names".to_string(),
            })?;
            index.insert(Box::from(NameKey::new(name).as_bytes()), position);
        }
        let apex_key = NameKey::new(&apex);

        let negative_soa = RrSet {
            name: apex.clone(),
            rtype: RecordType::SOA,
            ttl: soa.ttl.min(soa.minimum),
            rdatas: vec![soa_rdata],
        };
        Ok(Zone {
            apex_key: Box::from(apex_key.as_bytes()),
            apex_labels: apex_key.labels(),
            apex,
            serial: soa.serial,
            nodes,
            index,
            has_delegations,
            negative_soa,
            record_count,
        })
    }

    /// The apex.
    pub fn apex(&self) -> &Name {
        &self.apex
    }

    /// The SOA serial of this snapshot.
    pub fn serial(&self) -> u32 {
        self.serial
    }

    /// How many records the zone holds, SOA and apex NS included.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// True if `name` is at or below the apex.
    pub fn contains(&self, name: &Name) -> bool {
        self.contains_key(&NameKey::new(name))
    }

    /// True if the name of `key` is at or below the apex.
    pub fn contains_key(&self, key: &NameKey) -> bool {
        key.is_valid() && key.labels() >= self.apex_labels && key.suffix(self.apex_labels) == &*self.apex_key
    }

    /// How many labels the apex has (the root label not counted).
    pub fn apex_labels(&self) -> usize {
        self.apex_labels
    }

    /// The node at exactly `name`: present for names with data and for empty non-terminals.
    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.node_by_key(NameKey::new(name).as_bytes())
    }

    /// The node whose name has the key `key` (see [`NameKey`]; a suffix of a key is an ancestor's key).
    pub fn node_by_key(&self, key: &[u8]) -> Option<&Node> {
        let position = *self.index.get(key)?;
        self.nodes.get(position as usize).map(|(_, node)| node)
    }

    /// The node at the wildcard `*.<name of key>`, if the zone has one.
    pub fn wildcard_of(&self, key: &[u8]) -> Option<&Node> {
        let mut wildcard = [0u8; KEY_MAX];
        let end = key.len() + 2;
        let dest = wildcard.get_mut(2..end)?;
        dest.copy_from_slice(key);
        wildcard[0] = 1;
        wildcard[1] = b'*';
        self.node_by_key(&wildcard[..end])
    }

    /// The RRset of `rtype` at exactly `name`.
    pub fn rrset(&self, name: &Name, rtype: RecordType) -> Option<&RrSet> {
        self.node(name).and_then(|node| node.get(rtype))
    }

    /// The SOA RRset at the apex, with the SOA's own TTL.
    pub fn soa(&self) -> &RrSet {
        // Built in `build` and never removed; the negative SOA carries the same data.
        self.node_by_key(&self.apex_key)
            .and_then(|node| node.get(RecordType::SOA))
            .unwrap_or(&self.negative_soa)
    }

    /// The SOA RRset as it goes into negative answers: TTL = min(SOA TTL, MINIMUM) (RFC 2308 section 3).
    pub fn negative_soa(&self) -> &RrSet {
        &self.negative_soa
    }

    /// Every name of the zone with its node, in canonical DNS order (RFC 4034 section 6.1).
    pub fn nodes(&self) -> impl Iterator<Item = (&Name, &Node)> {
        self.nodes.iter().map(|(name, node)| (name, node))
    }

    /// True if `name` is an empty non-terminal of this zone.
    pub fn is_empty_non_terminal(&self, name: &Name) -> bool {
        self.node(name).is_some_and(Node::is_empty_non_terminal)
    }

    /// The zone's empty non-terminals, in canonical order.
    pub fn empty_non_terminals(&self) -> impl Iterator<Item = &Name> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.is_empty_non_terminal())
            .map(|(name, _)| name)
    }

    /// True if some name below the apex has NS records.
    pub fn has_delegations(&self) -> bool {
        self.has_delegations
    }

    /// The highest delegation point (a non-apex name with NS records) at or above `name`, if any.
    pub fn delegation_of(&self, name: &Name) -> Option<&RrSet> {
        if !self.has_delegations {
            return None;
        }
        self.delegation_of_key(&NameKey::new(name))
    }

    /// [`Zone::delegation_of`] by key: free when the zone has no delegations, otherwise one hash lookup
    /// per label between the apex and the name.
    pub fn delegation_of_key(&self, key: &NameKey) -> Option<&RrSet> {
        if !self.has_delegations || !self.contains_key(key) {
            return None;
        }
        ((self.apex_labels + 1)..=key.labels())
            .find_map(|labels| self.node_by_key(key.suffix(labels))?.get(RecordType::NS))
    }
}

fn check_ttl(apex: &Name, name: &Name, rtype: RecordType, ttl: u32) -> Result<(), ZoneError> {
    if ttl > MAX_TTL {
        return Err(ZoneError::BadTtl {
            apex: apex.to_string(),
            name: name.to_string(),
            rtype,
            ttl,
        });
    }
    Ok(())
}

fn clamp_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// `name` as an absolute name: the sources give `app.example.com`, DNS means `app.example.com.`.
fn absolute(apex: &Name, name: &Name) -> Result<Name, ZoneError> {
    if name.is_fqdn() {
        return Ok(name.clone());
    }
    // Re-parsing rather than `set_fqdn`, so the length limit of an absolute name is enforced.
    let text = format!("{}.", name.to_ascii().trim_end_matches('.'));
    Name::from_ascii(&text).map_err(|err| ZoneError::BadName {
        apex: apex.to_string(),
        name: text,
        reason: err.to_string(),
    })
}

/// The RDATA with every name inside it made absolute (see [`absolute`]).
fn absolute_rdata(apex: &Name, rdata: RData) -> Result<RData, ZoneError> {
    Ok(match rdata {
        RData::CNAME(CNAME(target)) => RData::CNAME(CNAME(absolute(apex, &target)?)),
        RData::NS(NS(target)) => RData::NS(NS(absolute(apex, &target)?)),
        RData::PTR(PTR(target)) => RData::PTR(PTR(absolute(apex, &target)?)),
        RData::MX(mx) => RData::MX(MX::new(mx.preference, absolute(apex, &mx.exchange)?)),
        RData::SRV(srv) => RData::SRV(SRV::new(
            srv.priority,
            srv.weight,
            srv.port,
            absolute(apex, &srv.target)?,
        )),
        other => other,
    })
}

/// Test helpers shared by the modules' tests: names and records from text.
#[cfg(test)]
pub(crate) mod fixture {
    use std::str::FromStr;

    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::{SoaConfig, ZoneConfig};

    /// A name from text; panics on a typo in a test table.
    pub fn name(text: &str) -> Name {
        Name::from_ascii(text).unwrap_or_else(|err| panic!("test name {text:?}: {err}"))
    }

    /// A record from zone-file-like text: `owner ttl TYPE rdata...` (names in RDATA absolute).
    pub fn record(line: &str) -> Record {
        let mut parts = line.splitn(4, ' ');
        let (Some(owner), Some(ttl), Some(rtype), Some(rdata)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("test record {line:?}: want `owner ttl TYPE rdata`");
        };
        let rtype = RecordType::from_str(rtype).unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
        let ttl: u32 = ttl
            .parse()
            .unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
        let rdata =
            RData::try_from_str(rtype, rdata).unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
        Record::from_rdata(name(owner), ttl, rdata)
    }

    /// Settings for a zone at `apex` with SOA TTL 3600 and MINIMUM 300, two name servers.
    pub fn config(apex: &str) -> ZoneConfig {
        let apex = name(apex);
        ZoneConfig {
            soa: SoaConfig {
                mname: name(&format!("ns1.{apex}")),
                rname: name(&format!("hostmaster.{apex}")),
                serial: 1,
                refresh: 3600,
                retry: 300,
                expire: 3_600_000,
                minimum: 300,
                ttl: 3600,
            },
            nameservers: vec![name("ns.example.com."), name("ns.example.net.")],
            ns_ttl: 3600,
            apex,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{config, name, record};
    use super::*;

    fn build(apex: &str, lines: &[&str]) -> Result<Zone, ZoneError> {
        Zone::build(&config(apex), lines.iter().map(|line| record(line)))
    }

    #[test]
    fn builds_rrsets_soa_ns_and_empty_non_terminals() {
        let zone = build(
            "example.",
            &[
                "host1.example. 3600 A 192.0.2.1",
                "host1.example. 3600 A 192.0.2.1",
                "host1.example. 3600 A 192.0.2.2",
                "_ssh._tcp.host1.example. 3600 SRV 0 0 22 host1.example.",
                "a.b.c.example. 60 TXT hello",
                "App.Example. 60 AAAA 2001:db8::1",
            ],
        )
        .expect("valid zone");
        assert_eq!(zone.apex(), &name("example."));
        assert_eq!(zone.serial(), 1);
        let a = zone.rrset(&name("host1.example."), RecordType::A).expect("A set");
        assert_eq!(a.rdatas().len(), 2, "duplicates merged");
        assert_eq!(a.ttl(), 3600);
        assert!(
            zone.rrset(&name("app.example."), RecordType::AAAA).is_some(),
            "case-insensitive"
        );
        assert_eq!(zone.soa().ttl(), 3600);
        assert_eq!(zone.negative_soa().ttl(), 300, "min(SOA TTL, MINIMUM)");
        assert_eq!(
            zone.rrset(&name("example."), RecordType::NS)
                .map(|s| s.rdatas().len()),
            Some(2)
        );
        let ents: Vec<String> = zone.empty_non_terminals().map(|n| n.to_string()).collect();
        assert_eq!(ents, ["c.example.", "b.c.example.", "_tcp.host1.example."]);
        assert!(zone.is_empty_non_terminal(&name("_tcp.host1.example.")));
        assert!(!zone.is_empty_non_terminal(&name("host1.example.")));
        assert!(!zone.is_empty_non_terminal(&name("nothere.example.")));
        // SOA + 2 NS + 2 A + SRV + TXT + AAAA
        assert_eq!(zone.record_count(), 8);
    }

    #[test]
    fn relative_names_are_taken_as_absolute() {
        let mut cfg = config("example.com.");
        cfg.apex = name("example.com");
        let records = vec![
            Record::from_rdata(
                name("www.example.com"),
                60,
                RData::CNAME(CNAME(name("app.example.com"))),
            ),
            Record::from_rdata(
                name("app.example.com"),
                60,
                RData::A("192.0.2.7".parse().expect("ip")),
            ),
        ];
        let zone = Zone::build(&cfg, records).expect("valid zone");
        let cname = zone
            .rrset(&name("www.example.com."), RecordType::CNAME)
            .expect("cname");
        assert_eq!(cname.rdatas()[0], RData::CNAME(CNAME(name("app.example.com."))));
        assert!(zone.rrset(&name("app.example.com."), RecordType::A).is_some());
    }

    #[test]
    fn validation_errors_say_what_is_wrong() {
        let big_ttl = format!("a.example. {} A 192.0.2.1", u64::from(MAX_TTL) + 1);
        let cases: &[(&str, &[&str], &str, &str)] = &[
            (
                "CNAME beside other data",
                &["www.example. 60 CNAME app.example.", "www.example. 60 TXT hi"],
                "CNAMEAndOtherData",
                "zone example.: www.example. has a CNAME and also TXT records; a CNAME must be the only record at its name",
            ),
            (
                "CNAME at the apex",
                &["example. 60 CNAME other.net."],
                "CNAMEAtApex",
                "zone example.: CNAME at the apex is not allowed (the apex holds the SOA and NS records)",
            ),
            (
                "two CNAMEs",
                &[
                    "www.example. 60 CNAME a.example.",
                    "www.example. 60 CNAME b.example.",
                ],
                "MultipleCNAMEs",
                "zone example.: www.example. has 2 CNAME records (a.example., b.example.); a name can be an alias of one name only",
            ),
            (
                "name outside the zone",
                &["app.example.org. 60 A 192.0.2.1"],
                "OutsideZone",
                "zone example.: record app.example.org. A is outside the zone (names must end in example.)",
            ),
            (
                "suffix is not a label boundary",
                &["badexample. 60 A 192.0.2.1"],
                "OutsideZone",
                "zone example.: record badexample. A is outside the zone (names must end in example.)",
            ),
            (
                "TTL mismatch in an RRset",
                &["a.example. 60 A 192.0.2.1", "a.example. 120 A 192.0.2.2"],
                "TTLMismatch",
                "zone example.: the A records of a.example. have different TTLs (60 and 120); all records of one name and type must share one TTL",
            ),
            (
                "SOA among the records",
                &["example. 60 SOA ns.example. host.example. 1 2 3 4 5"],
                "ApexRecordFromSettings",
                "zone example.: SOA records at the apex come from the zone's settings (spec.soa / spec.nameservers), not from records",
            ),
            (
                "apex NS among the records",
                &["example. 60 NS ns.other."],
                "ApexRecordFromSettings",
                "zone example.: NS records at the apex come from the zone's settings (spec.soa / spec.nameservers), not from records",
            ),
            (
                "SOA below the apex",
                &["sub.example. 60 SOA ns.example. host.example. 1 2 3 4 5"],
                "SOABelowApex",
                "zone example.: SOA record at sub.example.: a zone has one SOA, at its apex",
            ),
            (
                "unsupported type",
                &["a.example. 60 HINFO cpu os"],
                "UnsupportedType",
                "zone example.: record a.example. HINFO: type HINFO is not supported (supported: A, AAAA, CNAME, TXT, SRV, MX, CAA, NS, PTR)",
            ),
            (
                "data below a delegation",
                &[
                    "sub.example. 60 NS ns.sub.example.",
                    "www.sub.example. 60 TXT occluded",
                ],
                "Occluded",
                "zone example.: record www.sub.example. TXT is at or below the delegation at sub.example. and would never be answered (only NS at the cut and A/AAAA glue may be there)",
            ),
            (
                "non-glue data at a delegation point",
                &[
                    "sub.example. 60 NS ns.sub.example.",
                    "sub.example. 60 MX 10 mail.example.",
                ],
                "Occluded",
                "zone example.: record sub.example. MX is at or below the delegation at sub.example. and would never be answered (only NS at the cut and A/AAAA glue may be there)",
            ),
            (
                "wildcard delegation",
                &["*.example. 60 NS ns.example.net."],
                "WildcardDelegation",
                "zone example.: NS records at the wildcard *.example. are not allowed (RFC 4592 section 4.2)",
            ),
            (
                "TTL above 2^31-1",
                &[big_ttl.as_str()],
                "BadTTL",
                "zone example.: record a.example. A has TTL 2147483648, above the maximum 2147483647 (RFC 2181 section 8)",
            ),
        ];
        for (case, lines, reason, message) in cases {
            let err = build("example.", lines).expect_err(case);
            assert_eq!(err.reason(), *reason, "{case}");
            assert_eq!(err.to_string(), *message, "{case}");
        }
    }

    #[test]
    fn glue_below_a_delegation_is_allowed() {
        let zone = build(
            "example.",
            &[
                "sub.example. 60 NS ns.sub.example.",
                "ns.sub.example. 60 A 192.0.2.53",
                "ns.sub.example. 60 AAAA 2001:db8::53",
            ],
        )
        .expect("glue is fine");
        let cut = zone
            .delegation_of(&name("deep.www.sub.example."))
            .expect("below the cut");
        assert_eq!(cut.name(), &name("sub.example."));
        assert!(zone.delegation_of(&name("sub.example.")).is_some());
        assert!(
            zone.delegation_of(&name("example.")).is_none(),
            "the apex NS is not a delegation"
        );
        assert!(zone.delegation_of(&name("other.example.")).is_none());
    }

    #[test]
    fn name_keys_ignore_case_and_their_suffixes_are_the_ancestors() {
        let key = NameKey::new(&name("WWW.App.Example."));
        assert!(key.is_valid());
        assert_eq!(key.labels(), 3);
        assert_eq!(key.as_bytes(), b"\x03www\x03app\x07example");
        assert_eq!(key.as_bytes(), NameKey::new(&name("www.app.example.")).as_bytes());
        assert_eq!(key.suffix(2), NameKey::new(&name("app.example.")).as_bytes());
        assert_eq!(key.suffix(1), b"\x07example");
        assert_eq!(key.suffix(0), b"", "the root");
        assert_eq!(
            key.suffix(9),
            key.as_bytes(),
            "more labels than the name has: the name"
        );
        assert_eq!(NameKey::new(&Name::root()).labels(), 0);
        // A label boundary matters: `badexample.` does not end in the key of `example.` at a label.
        let bad = NameKey::new(&name("badexample."));
        assert_ne!(bad.suffix(1), b"\x07example".as_slice());
        // A dot inside a label (binary label) is not a label boundary.
        let dotted = Name::from_labels(vec![b"a.b".to_vec(), b"example".to_vec()]).expect("name");
        let dotted_key = NameKey::new(&dotted);
        assert_eq!(dotted_key.labels(), 2);
        assert_ne!(
            dotted_key.as_bytes(),
            NameKey::new(&name("a.b.example.")).as_bytes()
        );
    }

    #[test]
    fn lookups_by_key_agree_with_lookups_by_name() {
        let zone = build(
            "Example.",
            &[
                "Host1.example. 3600 A 192.0.2.1",
                "a.b.c.example. 60 TXT hello",
                "*.wild.example. 60 TXT any",
            ],
        )
        .expect("valid zone");
        assert!(!zone.has_delegations(), "no cut: the cut search is skipped");
        assert_eq!(zone.apex_labels(), 1);
        for text in [
            "host1.EXAMPLE.",
            "b.c.example.",
            "c.example.",
            "example.",
            "*.wild.example.",
        ] {
            let by_name = zone.node(&name(text)).expect(text);
            let by_key = zone
                .node_by_key(NameKey::new(&name(text)).as_bytes())
                .expect(text);
            assert!(std::ptr::eq(by_name, by_key), "{text}");
        }
        assert!(zone.node(&name("nothere.example.")).is_none());
        assert!(
            zone.wildcard_of(NameKey::new(&name("wild.example.")).as_bytes())
                .is_some()
        );
        assert!(
            zone.wildcard_of(NameKey::new(&name("example.")).as_bytes())
                .is_none()
        );
        assert!(zone.contains(&name("deep.down.EXAMPLE.")));
        assert!(!zone.contains(&name("badexample.")));
        assert!(!zone.contains(&Name::root()));
        let names: Vec<String> = zone.nodes().map(|(n, _)| n.to_string()).collect();
        let mut sorted: Vec<Name> = zone.nodes().map(|(n, _)| n.clone()).collect();
        sorted.sort();
        assert_eq!(
            names,
            sorted.iter().map(Name::to_string).collect::<Vec<_>>(),
            "canonical order"
        );

        let delegated = build("example.", &["sub.example. 60 NS ns.example.net."]).expect("valid zone");
        assert!(delegated.has_delegations());
        assert!(delegated.delegation_of(&name("x.SUB.example.")).is_some());
    }

    #[test]
    fn settings_are_checked() {
        let mut cfg = config("example.");
        cfg.nameservers.clear();
        let err = Zone::build(&cfg, Vec::new()).expect_err("no NS");
        assert_eq!(
            err.to_string(),
            "zone example.: no name servers; a zone needs at least one NS record at its apex"
        );
        let mut cfg = config("example.");
        cfg.soa.ttl = u32::MAX;
        let err = Zone::build(&cfg, Vec::new()).expect_err("bad SOA TTL");
        assert_eq!(err.reason(), "BadTTL");
        assert!(
            err.to_string().contains("record example. SOA has TTL 4294967295"),
            "{err}"
        );
    }
}
