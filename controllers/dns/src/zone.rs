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
//! Names are compared case-insensitively (hickory's `Name`); every name, including those inside RDATA
//! (CNAME, MX, SRV, NS, PTR targets), is taken as absolute, so `app.example.com` and `app.example.com.` are
//! the same name.

use std::collections::BTreeMap;
use std::fmt;

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

/// An immutable, validated zone.
#[derive(Clone, PartialEq, Eq)]
pub struct Zone {
    apex: Name,
    serial: u32,
    nodes: BTreeMap<Name, Node>,
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

        let negative_soa = RrSet {
            name: apex.clone(),
            rtype: RecordType::SOA,
            ttl: soa.ttl.min(soa.minimum),
            rdatas: vec![soa_rdata],
        };
        Ok(Zone {
            apex,
            serial: soa.serial,
            nodes,
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
        self.apex.zone_of(name)
    }

    /// The node at exactly `name`: present for names with data and for empty non-terminals.
    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// The RRset of `rtype` at exactly `name`.
    pub fn rrset(&self, name: &Name, rtype: RecordType) -> Option<&RrSet> {
        self.nodes.get(name).and_then(|node| node.get(rtype))
    }

    /// The SOA RRset at the apex, with the SOA's own TTL.
    pub fn soa(&self) -> &RrSet {
        // Built in `build` and never removed; the negative SOA carries the same data.
        self.rrset(&self.apex, RecordType::SOA)
            .unwrap_or(&self.negative_soa)
    }

    /// The SOA RRset as it goes into negative answers: TTL = min(SOA TTL, MINIMUM) (RFC 2308 section 3).
    pub fn negative_soa(&self) -> &RrSet {
        &self.negative_soa
    }

    /// Every name of the zone with its node, in canonical DNS order (RFC 4034 section 6.1).
    pub fn nodes(&self) -> impl Iterator<Item = (&Name, &Node)> {
        self.nodes.iter()
    }

    /// True if `name` is an empty non-terminal of this zone.
    pub fn is_empty_non_terminal(&self, name: &Name) -> bool {
        self.nodes.get(name).is_some_and(Node::is_empty_non_terminal)
    }

    /// The zone's empty non-terminals, in canonical order.
    pub fn empty_non_terminals(&self) -> impl Iterator<Item = &Name> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.is_empty_non_terminal())
            .map(|(name, _)| name)
    }

    /// The highest delegation point (a non-apex name with NS records) at or above `name`, if any.
    pub fn delegation_of(&self, name: &Name) -> Option<&RrSet> {
        let apex_labels = self.apex.iter().len();
        let labels = name.iter().len();
        if !self.contains(name) {
            return None;
        }
        ((apex_labels + 1)..=labels).find_map(|n| {
            let ancestor = name.trim_to(n);
            self.rrset(&ancestor, RecordType::NS)
        })
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
