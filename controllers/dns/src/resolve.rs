//! Authoritative answers: what the embedded server says for a question, over a set of zone snapshots.
//!
//! ```text
//!   (qname, qtype) ──> ZoneSet::find (longest apex that contains qname; none -> REFUSED)
//!                        │
//!                        ▼
//!                  ┌── lookup(name) ───────────────────────────────────────────────────────────────┐
//!                  │ 1. below a delegation (NS at a non-apex name)? -> referral (AA=0 if first)      │
//!                  │ 2. node at name? -> data of qtype | CNAME (follow) | NODATA                     │
//!                  │ 3. else closest encloser; `*.<closest encloser>` exists? -> as 2, owner = name   │
//!                  │    else NXDOMAIN                                                                │
//!                  └── CNAME: append, lookup(target) again while the target is in this zone ────────┘
//!                        │
//!                        ▼
//!                  Answer { rcode, AA, answer, authority, additional }  (borrowing from the snapshots)
//! ```
//!
//! These rules are ours rather than hickory-server's authority, which answers several of them wrongly
//! (wildcards for names that exist, NXDOMAIN for empty non-terminals, the SOA TTL of negative answers,
//! a CNAME to a missing name): RFC 1034 section 4.3.2 (the algorithm), RFC 4592 (wildcards: the closest
//! encloser and the source of synthesis; never for a name that exists, empty non-terminals included),
//! RFC 2308 (NXDOMAIN vs NODATA; the SOA in the authority section with TTL min(SOA TTL, MINIMUM)),
//! RFC 6604 (the rcode of a CNAME chain is the rcode of its last step). The choices where the RFCs leave
//! room follow BIND with `minimal-responses no-auth;`: no NS RRset in the authority section of positive
//! answers (it is only there when required: referrals), additional A/AAAA for the targets of MX, SRV and
//! NS records in the zone. docs/dns.md ("Answer semantics") lists every rule.
//!
//! The answer borrows the RRsets from the snapshot; nothing is copied until the server encodes it. Names
//! are looked up by [`NameKey`] (built once per name on the stack, ancestors are its suffixes), and the
//! sections keep their first RRsets inline, so the common answer (one RRset, or a negative answer with the
//! SOA) allocates nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::zone::{KeyHash, NameKey, Node, RrSet, Zone};

/// The longest CNAME chain an answer carries (BIND's `max-query-restarts` default is 11; a chain longer
/// than this is a misconfiguration, and a loop is stopped earlier, at its first repeated name).
pub const MAX_CNAME_CHAIN: usize = 12;

/// The zones one server answers for.
#[derive(Debug, Clone)]
pub struct ZoneSet {
    /// In canonical order of their apexes.
    zones: Vec<Arc<Zone>>,
    /// The position in `zones` of each apex, by key.
    by_apex: HashMap<Box<[u8]>, usize, KeyHash>,
}

impl Default for ZoneSet {
    fn default() -> Self {
        ZoneSet {
            zones: Vec::new(),
            by_apex: HashMap::with_hasher(KeyHash::new()),
        }
    }
}

/// A set of zones that cannot be served together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneSetError {
    /// Two snapshots for one apex.
    #[error("zone {apex} is given twice; each zone must be served from one snapshot")]
    DuplicateZone {
        /// The apex.
        apex: String,
    },
}

impl ZoneSetError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ZoneSetError::DuplicateZone { .. } => "DuplicateZone",
        }
    }
}

impl ZoneSet {
    /// The set of `zones`; zones may nest (`example.com.` and `apps.example.com.`): the longest match
    /// answers.
    pub fn new(zones: impl IntoIterator<Item = Arc<Zone>>) -> Result<ZoneSet, ZoneSetError> {
        let mut map = BTreeMap::new();
        for zone in zones {
            let apex = zone.apex().clone();
            if map.insert(apex.clone(), zone).is_some() {
                return Err(ZoneSetError::DuplicateZone {
                    apex: apex.to_string(),
                });
            }
        }
        let zones: Vec<Arc<Zone>> = map.into_values().collect();
        let mut by_apex = HashMap::with_capacity_and_hasher(zones.len(), KeyHash::new());
        for (position, zone) in zones.iter().enumerate() {
            by_apex.insert(Box::from(NameKey::new(zone.apex()).as_bytes()), position);
        }
        Ok(ZoneSet { zones, by_apex })
    }

    /// The zones, in canonical order of their apexes.
    pub fn zones(&self) -> impl Iterator<Item = &Arc<Zone>> {
        self.zones.iter()
    }

    /// The zone that is authoritative for `name`: the one with the longest apex containing it.
    pub fn find(&self, name: &Name) -> Option<&Zone> {
        self.find_key(&NameKey::new(name))
    }

    /// [`ZoneSet::find`] by key.
    pub fn find_key(&self, key: &NameKey) -> Option<&Zone> {
        if !key.is_valid() {
            return None;
        }
        if let [zone] = self.zones.as_slice() {
            return zone.contains_key(key).then_some(zone.as_ref());
        }
        (0..=key.labels())
            .rev()
            .find_map(|labels| self.by_apex.get(key.suffix(labels)))
            .and_then(|&position| self.zones.get(position))
            .map(Arc::as_ref)
    }

    /// The authoritative answer to `qname`/`qtype` (class IN; the server checks the class).
    pub fn resolve<'a>(&'a self, qname: &'a Name, qtype: RecordType) -> Answer<'a> {
        let mut key = NameKey::new(qname);
        let Some(zone) = self.find_key(&key) else {
            return Answer::empty(None, ResponseCode::Refused, false, Outcome::Refused);
        };
        if matches!(
            qtype,
            RecordType::AXFR | RecordType::IXFR | RecordType::OPT | RecordType::TSIG
        ) {
            // Zone transfers are the server's (with TSIG); OPT and TSIG are not questions.
            return Answer::empty(Some(zone), ResponseCode::NotImp, false, Outcome::NotImplemented);
        }
        let mut answer = Answer::empty(Some(zone), ResponseCode::NoError, true, Outcome::Answer);
        // The names looked up so far (a CNAME chain is at most MAX_CNAME_CHAIN long): on the stack.
        let mut visited: [Option<&Name>; MAX_CNAME_CHAIN + 1] = [None; MAX_CNAME_CHAIN + 1];
        let mut steps = 0;
        let mut current = qname;
        loop {
            if let Some(slot) = visited.get_mut(steps) {
                *slot = Some(current);
            }
            steps += 1;
            match lookup(zone, &key, current, qtype) {
                Step::Referral(cut) => {
                    // RFC 1034 4.3.2 step 3b. A referral for the question itself is not authoritative;
                    // after a CNAME the answer's first record is ours, so AA stays (RFC 6604 section 3).
                    if answer.answer.is_empty() {
                        answer.authoritative = false;
                    }
                    answer.outcome = Outcome::Referral;
                    answer.authority.push(RrsetRef {
                        owner: cut.name(),
                        rrset: cut,
                        synthesized: false,
                    });
                    answer.add_addresses_for(self, zone, cut);
                    break;
                }
                Step::Data {
                    owner,
                    node,
                    synthesized,
                } => {
                    let sets: &[RrSet] = node.rrsets();
                    for set in sets
                        .iter()
                        .filter(|set| qtype == RecordType::ANY || set.record_type() == qtype)
                    {
                        answer.answer.push(RrsetRef {
                            owner: if synthesized { owner } else { set.name() },
                            rrset: set,
                            synthesized,
                        });
                    }
                    let end = answer.answer.len();
                    for index in 0..end {
                        let set = answer.answer[index].rrset;
                        answer.add_addresses_for(self, zone, set);
                    }
                    break;
                }
                Step::Cname {
                    owner,
                    cname,
                    synthesized,
                } => {
                    answer.answer.push(RrsetRef {
                        owner: if synthesized { owner } else { cname.name() },
                        rrset: cname,
                        synthesized,
                    });
                    let Some(target) = cname_target(cname) else { break };
                    let chain = answer.answer.len();
                    let target_key = NameKey::new(target);
                    let same_zone = self
                        .find_key(&target_key)
                        .is_some_and(|found| std::ptr::eq(found, zone));
                    // A target elsewhere (another zone, even one we serve, or outside all of them) ends the
                    // chain: the resolver follows it. A repeated name is a loop.
                    if !same_zone || chain >= MAX_CNAME_CHAIN || visited.contains(&Some(target)) {
                        break;
                    }
                    current = target;
                    key = target_key;
                }
                Step::NoData => {
                    answer.outcome = Outcome::NoData;
                    answer.add_negative_soa(zone);
                    break;
                }
                Step::NxDomain => {
                    answer.rcode = ResponseCode::NXDomain;
                    answer.outcome = Outcome::NxDomain;
                    answer.add_negative_soa(zone);
                    break;
                }
            }
        }
        answer
    }
}

/// What kind of answer this is (for metrics and logs; the rcode alone does not tell NODATA from data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Data for the question (possibly after CNAMEs, possibly only the CNAMEs).
    Answer,
    /// The name exists but has no data of that type (NOERROR, SOA in authority).
    NoData,
    /// The name does not exist (NXDOMAIN, SOA in authority).
    NxDomain,
    /// The name is at or below a delegation to another server (NS in authority).
    Referral,
    /// The name is in none of our zones.
    Refused,
    /// A question type answered elsewhere or not at all (AXFR, IXFR, OPT, TSIG).
    NotImplemented,
}

impl Outcome {
    /// A short, stable label (for the `ferrite_dns_*` query metrics).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answer => "answer",
            Outcome::NoData => "nodata",
            Outcome::NxDomain => "nxdomain",
            Outcome::Referral => "referral",
            Outcome::Refused => "refused",
            Outcome::NotImplemented => "notimp",
        }
    }
}

/// One RRset in a section of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RrsetRef<'a> {
    /// The owner name in the answer: the RRset's own name, or the query name when synthesized.
    pub owner: &'a Name,
    /// The data.
    pub rrset: &'a RrSet,
    /// True when synthesized from a wildcard (RFC 4592 section 3.3.1: the owner is the query name).
    pub synthesized: bool,
}

impl<'a> RrsetRef<'a> {
    /// The type of the set.
    pub fn record_type(&self) -> RecordType {
        self.rrset.record_type()
    }

    /// The records as they go on the wire.
    pub fn records(&self) -> impl Iterator<Item = Record> + 'a {
        self.rrset.records_as(self.owner)
    }
}

/// An authoritative answer: the header bits and the three sections that the server encodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The zone that answered (none when refused).
    pub zone: Option<&'a Zone>,
    /// The response code.
    pub rcode: ResponseCode,
    /// The AA bit.
    pub authoritative: bool,
    /// What kind of answer.
    pub outcome: Outcome,
    /// The answer section.
    pub answer: Section<'a>,
    /// The authority section.
    pub authority: Section<'a>,
    /// The additional section (without the OPT record, which is the server's).
    pub additional: Section<'a>,
}

/// How many RRsets a section holds without allocating.
const INLINE_RRSETS: usize = 4;

/// Fills the unused inline slots of a [`Section`] (never visible: a section derefs to its used slots).
static FILLER: LazyLock<RrSet> = LazyLock::new(RrSet::filler);

/// The RRsets of one section of an answer: the first few inline, more on the heap. Derefs to a slice.
#[derive(Clone)]
pub struct Section<'a> {
    inline: [RrsetRef<'a>; INLINE_RRSETS],
    len: usize,
    /// Everything, once there are more than fit inline.
    spilled: Vec<RrsetRef<'a>>,
}

impl<'a> Section<'a> {
    /// An empty section.
    pub fn new() -> Self {
        let filler: &'static RrSet = &FILLER;
        let slot = RrsetRef {
            owner: filler.name(),
            rrset: filler,
            synthesized: false,
        };
        Section {
            inline: [slot; INLINE_RRSETS],
            len: 0,
            spilled: Vec::new(),
        }
    }

    /// Appends one RRset.
    pub fn push(&mut self, set: RrsetRef<'a>) {
        if self.spilled.is_empty() {
            if let Some(slot) = self.inline.get_mut(self.len) {
                *slot = set;
                self.len += 1;
                return;
            }
            self.spilled.reserve(self.len * 2);
            self.spilled.extend_from_slice(&self.inline[..self.len]);
        }
        self.spilled.push(set);
    }
}

impl Default for Section<'_> {
    fn default() -> Self {
        Section::new()
    }
}

impl<'a> Deref for Section<'a> {
    type Target = [RrsetRef<'a>];

    fn deref(&self) -> &[RrsetRef<'a>] {
        if self.spilled.is_empty() {
            &self.inline[..self.len]
        } else {
            &self.spilled
        }
    }
}

impl<'s, 'a> IntoIterator for &'s Section<'a> {
    type Item = &'s RrsetRef<'a>;
    type IntoIter = std::slice::Iter<'s, RrsetRef<'a>>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for Section<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Section<'_> {}

impl fmt::Debug for Section<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<'a> Answer<'a> {
    fn empty(zone: Option<&'a Zone>, rcode: ResponseCode, authoritative: bool, outcome: Outcome) -> Self {
        Answer {
            zone,
            rcode,
            authoritative,
            outcome,
            answer: Section::new(),
            authority: Section::new(),
            additional: Section::new(),
        }
    }

    fn add_negative_soa(&mut self, zone: &'a Zone) {
        let soa = zone.negative_soa();
        self.authority.push(RrsetRef {
            owner: soa.name(),
            rrset: soa,
            synthesized: false,
        });
    }

    /// Additional-section processing (RFC 1034 section 4.3.2 step 6, RFC 2782, RFC 1035 section 3.3.9):
    /// the A and AAAA RRsets of the names an MX, SRV or NS RRset points to, when those names are in this
    /// zone (for a referral: the glue). Sets already in the answer are not repeated.
    fn add_addresses_for(&mut self, zones: &ZoneSet, zone: &'a Zone, set: &'a RrSet) {
        // Most answers are addresses: nothing to add, and no need to look at the records.
        if !matches!(
            set.record_type(),
            RecordType::MX | RecordType::SRV | RecordType::NS
        ) {
            return;
        }
        for rdata in set.rdatas() {
            let target = match rdata {
                RData::MX(mx) => &mx.exchange,
                RData::SRV(srv) => &srv.target,
                RData::NS(ns) => &ns.0,
                _ => continue,
            };
            // Only names this zone holds: its own data, and for NS also glue (which may sit below a cut
            // or inside a nested zone we serve, but is still this zone's copy).
            let key = NameKey::new(target);
            let ours = zones
                .find_key(&key)
                .is_some_and(|found| std::ptr::eq(found, zone));
            let glue = set.record_type() == RecordType::NS && zone.contains_key(&key);
            if !(ours || glue) {
                continue;
            }
            let Some(node) = zone.node_by_key(key.as_bytes()) else {
                continue;
            };
            for rtype in [RecordType::A, RecordType::AAAA] {
                let Some(addresses) = node.get(rtype) else {
                    continue;
                };
                let seen = |r: &RrsetRef<'_>| std::ptr::eq(r.rrset, addresses);
                if self.answer.iter().any(seen) || self.additional.iter().any(seen) {
                    continue;
                }
                self.additional.push(RrsetRef {
                    owner: addresses.name(),
                    rrset: addresses,
                    synthesized: false,
                });
            }
        }
    }
}

impl fmt::Display for Answer<'_> {
    /// A `dig`-like rendering, one record a line, for logs and tests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rcode={} aa={} outcome={}",
            self.rcode,
            self.authoritative,
            self.outcome.as_str()
        )?;
        for (section, sets) in [
            ("answer", &self.answer),
            ("authority", &self.authority),
            ("additional", &self.additional),
        ] {
            for set in sets.iter() {
                for record in set.records() {
                    writeln!(f, "{section}: {}", record_line(&record))?;
                }
            }
        }
        Ok(())
    }
}

/// `owner ttl TYPE rdata`, as in a zone file without the class.
pub fn record_line(record: &Record) -> String {
    format!(
        "{} {} {} {}",
        record.name,
        record.ttl,
        record.record_type(),
        record.data
    )
}

/// One step of the lookup for one name (the CNAME chain strings the steps together).
enum Step<'a> {
    /// At or below a zone cut: the NS RRset of the cut.
    Referral(&'a RrSet),
    /// The node answers the question: its RRsets of the question type (all of them for ANY).
    Data {
        owner: &'a Name,
        node: &'a Node,
        synthesized: bool,
    },
    /// The node is an alias: its CNAME, to be followed.
    Cname {
        owner: &'a Name,
        cname: &'a RrSet,
        synthesized: bool,
    },
    /// The name exists, no data of this type.
    NoData,
    /// The name does not exist, and no wildcard covers it.
    NxDomain,
}

fn lookup<'a>(zone: &'a Zone, key: &NameKey, name: &'a Name, qtype: RecordType) -> Step<'a> {
    // RFC 1034 4.3.2 step 3b: the data at and below a cut belongs to the child zone. DS is the one type
    // the parent answers at the cut itself (RFC 4035 section 3.1.4.1). Free when the zone has no cuts.
    if let Some(cut) = zone.delegation_of_key(key)
        && !(qtype == RecordType::DS && cut.name() == name)
    {
        return Step::Referral(cut);
    }
    // Step 3a: the name exists (with data, or as an empty non-terminal, which is NODATA: RFC 4592 2.2.2).
    if let Some(node) = zone.node_by_key(key.as_bytes()) {
        return from_node(name, node, qtype, false);
    }
    // Step 3c, RFC 4592 section 3.3.1: the closest encloser is the longest existing ancestor (the apex at
    // worst); the source of synthesis is `*.<closest encloser>`. Only that one wildcard may answer, so
    // `ghost.*.example.` is NXDOMAIN: its closest encloser is `*.example.` and `*.*.example.` is absent.
    let encloser = (zone.apex_labels()..key.labels())
        .rev()
        .map(|labels| key.suffix(labels))
        .find(|ancestor| zone.node_by_key(ancestor).is_some());
    let Some(encloser) = encloser else {
        return Step::NxDomain;
    };
    match zone.wildcard_of(encloser) {
        Some(node) => from_node(name, node, qtype, true),
        None => Step::NxDomain,
    }
}

fn from_node<'a>(name: &'a Name, node: &'a Node, qtype: RecordType, synthesized: bool) -> Step<'a> {
    if qtype == RecordType::ANY {
        return if node.is_empty_non_terminal() {
            Step::NoData
        } else {
            Step::Data {
                owner: name,
                node,
                synthesized,
            }
        };
    }
    if node.get(qtype).is_some() {
        return Step::Data {
            owner: name,
            node,
            synthesized,
        };
    }
    if let Some(cname) = node.get(RecordType::CNAME) {
        return Step::Cname {
            owner: name,
            cname,
            synthesized,
        };
    }
    Step::NoData
}

fn cname_target(set: &RrSet) -> Option<&Name> {
    set.rdatas().iter().find_map(|rdata| match rdata {
        RData::CNAME(cname) => Some(&cname.0),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zone::ZoneConfig;
    use crate::zone::fixture::{config, name, record};

    fn zone(apex: &str, lines: &[&str]) -> Arc<Zone> {
        zone_with(config(apex), lines)
    }

    fn zone_with(cfg: ZoneConfig, lines: &[&str]) -> Arc<Zone> {
        Arc::new(
            Zone::build(&cfg, lines.iter().map(|line| record(line))).unwrap_or_else(|err| panic!("{err}")),
        )
    }

    /// One question and everything the answer must say.
    struct Case {
        what: &'static str,
        qname: &'static str,
        qtype: RecordType,
        rcode: ResponseCode,
        aa: bool,
        outcome: Outcome,
        answer: &'static [&'static str],
        authority: &'static [&'static str],
        additional: &'static [&'static str],
    }

    fn lines(sets: &[RrsetRef<'_>]) -> Vec<String> {
        sets.iter()
            .flat_map(|set| set.records())
            .map(|record| record_line(&record))
            .collect()
    }

    fn check(zones: &ZoneSet, cases: &[Case]) {
        for case in cases {
            let qname = name(case.qname);
            let got = zones.resolve(&qname, case.qtype);
            let context = format!("{} ({} {}):\n{got}", case.what, case.qname, case.qtype);
            assert_eq!(got.rcode, case.rcode, "rcode: {context}");
            assert_eq!(got.authoritative, case.aa, "AA: {context}");
            assert_eq!(got.outcome, case.outcome, "outcome: {context}");
            assert_eq!(lines(&got.answer), case.answer, "answer: {context}");
            assert_eq!(lines(&got.authority), case.authority, "authority: {context}");
            assert_eq!(lines(&got.additional), case.additional, "additional: {context}");
        }
    }

    const NEG_SOA: &str = "example. 300 SOA ns1.example. hostmaster.example. 1 3600 300 3600000 300";

    /// The example zone of RFC 4592 section 2.2.1 (SOA TTL 3600, MINIMUM 300 here, so the negative TTL
    /// is visibly min(TTL, MINIMUM)).
    fn rfc4592_zone() -> ZoneSet {
        let zone = zone(
            "example.",
            &[
                "*.example. 3600 TXT \"this is a wildcard\"",
                "*.example. 3600 MX 10 host1.example.",
                "sub.*.example. 3600 TXT \"this is not a wildcard\"",
                "host1.example. 3600 A 192.0.2.1",
                "_ssh._tcp.host1.example. 3600 SRV 0 0 22 host1.example.",
                "_ssh._tcp.host2.example. 3600 SRV 0 0 22 host2.example.",
                "subdel.example. 3600 NS ns.example.com.",
                "subdel.example. 3600 NS ns.example.net.",
            ],
        );
        ZoneSet::new([zone]).expect("one zone")
    }

    #[test]
    fn rfc4592_section_2_2_1_examples() {
        use RecordType::*;
        use ResponseCode::{NXDomain, NoError};
        check(
            &rfc4592_zone(),
            &[
                // "The following responses would be synthesized from one of the wildcards in the zone:"
                Case {
                    what: "synthesized: host3.example. MX from *.example.",
                    qname: "host3.example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["host3.example. 3600 MX 10 host1.example."],
                    authority: &[],
                    additional: &["host1.example. 3600 A 192.0.2.1"],
                },
                Case {
                    what: "no error, but no data: there is no A RRset at *.example.",
                    qname: "host3.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "synthesized: bar.example. does not exist, but the wildcard does",
                    qname: "foo.bar.example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["foo.bar.example. 3600 TXT this is a wildcard"],
                    authority: &[],
                    additional: &[],
                },
                // "The following responses would not be synthesized from any of the wildcards in the zone:"
                Case {
                    what: "not synthesized: host1.example. exists",
                    qname: "host1.example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "not synthesized: sub.*.example. exists",
                    qname: "sub.*.example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "not synthesized: _tcp.host1.example. exists (without data)",
                    qname: "_telnet._tcp.host1.example.",
                    qtype: SRV,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "not synthesized: subdel.example. exists (and is a zone cut)",
                    qname: "host.subdel.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: false,
                    outcome: Outcome::Referral,
                    answer: &[],
                    authority: &[
                        "subdel.example. 3600 NS ns.example.com.",
                        "subdel.example. 3600 NS ns.example.net.",
                    ],
                    additional: &[],
                },
                Case {
                    what: "not synthesized: *.example. exists (a wildcard does not match its own subdomains)",
                    qname: "ghost.*.example.",
                    qtype: MX,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
            ],
        );
    }

    #[test]
    fn rfc4592_zone_other_questions() {
        use RecordType::*;
        use ResponseCode::{NXDomain, NoError};
        check(
            &rfc4592_zone(),
            &[
                Case {
                    what: "the wildcard owner asked literally",
                    qname: "*.example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["*.example. 3600 MX 10 host1.example."],
                    authority: &[],
                    additional: &["host1.example. 3600 A 192.0.2.1"],
                },
                Case {
                    what: "sub.*.example. has its own data",
                    qname: "sub.*.example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["sub.*.example. 3600 TXT this is not a wildcard"],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "empty non-terminal host2.example.: NODATA, never the wildcard's MX",
                    qname: "host2.example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "empty non-terminal _tcp.host1.example.",
                    qname: "_tcp.host1.example.",
                    qtype: SRV,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "SRV with its target's address in additional",
                    qname: "_ssh._tcp.host1.example.",
                    qtype: SRV,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["_ssh._tcp.host1.example. 3600 SRV 0 0 22 host1.example."],
                    authority: &[],
                    additional: &["host1.example. 3600 A 192.0.2.1"],
                },
                Case {
                    what: "wildcard with no data of the type, two levels down",
                    qname: "a.b.example.",
                    qtype: AAAA,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "ANY synthesized from the wildcard: every RRset at *.example.",
                    qname: "any.example.",
                    qtype: ANY,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "any.example. 3600 MX 10 host1.example.",
                        "any.example. 3600 TXT this is a wildcard",
                    ],
                    authority: &[],
                    additional: &["host1.example. 3600 A 192.0.2.1"],
                },
                Case {
                    what: "NS at the delegation point: a referral",
                    qname: "subdel.example.",
                    qtype: NS,
                    rcode: NoError,
                    aa: false,
                    outcome: Outcome::Referral,
                    answer: &[],
                    authority: &[
                        "subdel.example. 3600 NS ns.example.com.",
                        "subdel.example. 3600 NS ns.example.net.",
                    ],
                    additional: &[],
                },
                Case {
                    what: "DS at the delegation point is the parent's: NODATA",
                    qname: "subdel.example.",
                    qtype: DS,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "below a wildcard's own subdomain, with a deeper name",
                    qname: "x.ghost.*.example.",
                    qtype: TXT,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
            ],
        );
    }

    fn app_zones() -> ZoneSet {
        let parent = zone(
            "example.",
            &[
                "example. 300 MX 10 mx1.example.",
                "mx1.example. 300 A 192.0.2.25",
                "mx1.example. 300 AAAA 2001:db8::25",
                "app.example. 60 A 192.0.2.10",
                "app.example. 60 A 192.0.2.11",
                "app.example. 60 TXT owner=team-a",
                "www.example. 60 CNAME app.example.",
                "chain.example. 60 CNAME www.example.",
                "dangling.example. 60 CNAME missing.example.",
                "to-txt-less.example. 60 CNAME mx1.example.",
                "outside.example. 60 CNAME app.example.org.",
                "to-child.example. 60 CNAME web.apps.example.",
                "loop1.example. 60 CNAME loop2.example.",
                "loop2.example. 60 CNAME loop1.example.",
                "self.example. 60 CNAME self.example.",
                "*.wild.example. 60 CNAME app.example.",
                "*.loopy.example. 60 CNAME again.loopy.example.",
                "to-deleg.example. 60 CNAME host.deleg.example.",
                "deleg.example. 600 NS ns1.deleg.example.",
                "deleg.example. 600 NS ns.example.net.",
                "ns1.deleg.example. 600 A 192.0.2.53",
                "a.b.c.example. 60 TXT deep",
            ],
        );
        let child = zone("apps.example.", &["web.apps.example. 60 A 198.51.100.1"]);
        ZoneSet::new([parent, child]).expect("two zones")
    }

    #[test]
    fn nxdomain_nodata_and_cname_cases() {
        use RecordType::*;
        use ResponseCode::{NXDomain, NoError, NotImp, Refused};
        const CHILD_SOA: &str =
            "apps.example. 300 SOA ns1.apps.example. hostmaster.apps.example. 1 3600 300 3600000 300";
        check(
            &app_zones(),
            &[
                Case {
                    what: "plain answer, two records",
                    qname: "app.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["app.example. 60 A 192.0.2.10", "app.example. 60 A 192.0.2.11"],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "names are case-insensitive",
                    qname: "APP.Example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["app.example. 60 TXT owner=team-a"],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "NXDOMAIN with the SOA at TTL min(3600, 300)",
                    qname: "nothere.example.",
                    qtype: A,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "NODATA at a name with other data",
                    qname: "app.example.",
                    qtype: AAAA,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "NODATA at an empty non-terminal",
                    qname: "b.c.example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &[],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "MX at the apex with both addresses of the exchange",
                    qname: "example.",
                    qtype: MX,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["example. 300 MX 10 mx1.example."],
                    authority: &[],
                    additional: &[
                        "mx1.example. 300 A 192.0.2.25",
                        "mx1.example. 300 AAAA 2001:db8::25",
                    ],
                },
                Case {
                    what: "SOA at the apex with its own TTL",
                    qname: "example.",
                    qtype: SOA,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["example. 3600 SOA ns1.example. hostmaster.example. 1 3600 300 3600000 300"],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "NS at the apex",
                    qname: "example.",
                    qtype: NS,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "example. 3600 NS ns.example.com.",
                        "example. 3600 NS ns.example.net.",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "CNAME followed inside the zone",
                    qname: "www.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "www.example. 60 CNAME app.example.",
                        "app.example. 60 A 192.0.2.10",
                        "app.example. 60 A 192.0.2.11",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "two CNAMEs in a chain",
                    qname: "chain.example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "chain.example. 60 CNAME www.example.",
                        "www.example. 60 CNAME app.example.",
                        "app.example. 60 TXT owner=team-a",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "the CNAME itself when asked for CNAME",
                    qname: "www.example.",
                    qtype: CNAME,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["www.example. 60 CNAME app.example."],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "ANY at an alias is the alias, not followed",
                    qname: "www.example.",
                    qtype: ANY,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["www.example. 60 CNAME app.example."],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "CNAME to a missing in-zone name: NXDOMAIN, the CNAME in the answer, the SOA in authority",
                    qname: "dangling.example.",
                    qtype: A,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &["dangling.example. 60 CNAME missing.example."],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "CNAME to an in-zone name without that type: NODATA after the CNAME",
                    qname: "to-txt-less.example.",
                    qtype: TXT,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::NoData,
                    answer: &["to-txt-less.example. 60 CNAME mx1.example."],
                    authority: &[NEG_SOA],
                    additional: &[],
                },
                Case {
                    what: "CNAME out of every zone: the CNAME alone, for the resolver to follow",
                    qname: "outside.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["outside.example. 60 CNAME app.example.org."],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "CNAME into a nested zone we also serve: the chain stops at the zone boundary",
                    qname: "to-child.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["to-child.example. 60 CNAME web.apps.example."],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "CNAME loop: each CNAME once, then stop",
                    qname: "loop1.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "loop1.example. 60 CNAME loop2.example.",
                        "loop2.example. 60 CNAME loop1.example.",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "CNAME to itself",
                    qname: "self.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["self.example. 60 CNAME self.example."],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "wildcard CNAME: synthesized with the query name as owner, then followed",
                    qname: "x.wild.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "x.wild.example. 60 CNAME app.example.",
                        "app.example. 60 A 192.0.2.10",
                        "app.example. 60 A 192.0.2.11",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "wildcard CNAME that matches its own target: stopped at the repeated name",
                    qname: "first.loopy.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &[
                        "first.loopy.example. 60 CNAME again.loopy.example.",
                        "again.loopy.example. 60 CNAME again.loopy.example.",
                    ],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "referral with glue for the in-zone name server only",
                    qname: "www.deleg.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: false,
                    outcome: Outcome::Referral,
                    answer: &[],
                    authority: &[
                        "deleg.example. 600 NS ns1.deleg.example.",
                        "deleg.example. 600 NS ns.example.net.",
                    ],
                    additional: &["ns1.deleg.example. 600 A 192.0.2.53"],
                },
                Case {
                    what: "glue is not answered as our data: a referral",
                    qname: "ns1.deleg.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: false,
                    outcome: Outcome::Referral,
                    answer: &[],
                    authority: &[
                        "deleg.example. 600 NS ns1.deleg.example.",
                        "deleg.example. 600 NS ns.example.net.",
                    ],
                    additional: &["ns1.deleg.example. 600 A 192.0.2.53"],
                },
                Case {
                    what: "CNAME into a delegation: the CNAME (authoritative) and the referral",
                    qname: "to-deleg.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Referral,
                    answer: &["to-deleg.example. 60 CNAME host.deleg.example."],
                    authority: &[
                        "deleg.example. 600 NS ns1.deleg.example.",
                        "deleg.example. 600 NS ns.example.net.",
                    ],
                    additional: &["ns1.deleg.example. 600 A 192.0.2.53"],
                },
                Case {
                    what: "longest matching zone wins: the nested zone answers with its own SOA",
                    qname: "nothere.apps.example.",
                    qtype: A,
                    rcode: NXDomain,
                    aa: true,
                    outcome: Outcome::NxDomain,
                    answer: &[],
                    authority: &[CHILD_SOA],
                    additional: &[],
                },
                Case {
                    what: "the nested zone's data",
                    qname: "web.apps.example.",
                    qtype: A,
                    rcode: NoError,
                    aa: true,
                    outcome: Outcome::Answer,
                    answer: &["web.apps.example. 60 A 198.51.100.1"],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "outside every zone: REFUSED, not authoritative",
                    qname: "app.example.org.",
                    qtype: A,
                    rcode: Refused,
                    aa: false,
                    outcome: Outcome::Refused,
                    answer: &[],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "a parent of the zone is outside it",
                    qname: ".",
                    qtype: NS,
                    rcode: Refused,
                    aa: false,
                    outcome: Outcome::Refused,
                    answer: &[],
                    authority: &[],
                    additional: &[],
                },
                Case {
                    what: "zone transfers are not answered here",
                    qname: "example.",
                    qtype: AXFR,
                    rcode: NotImp,
                    aa: false,
                    outcome: Outcome::NotImplemented,
                    answer: &[],
                    authority: &[],
                    additional: &[],
                },
            ],
        );
    }

    #[test]
    fn long_cname_chains_are_bounded() {
        let mut owned: Vec<String> = (0..40)
            .map(|i| format!("c{i}.example. 60 CNAME c{}.example.", i + 1))
            .collect();
        owned.push("c40.example. 60 A 192.0.2.1".to_string());
        let lines: Vec<&str> = owned.iter().map(String::as_str).collect();
        let zones = ZoneSet::new([zone("example.", &lines)]).expect("one zone");
        let qname = name("c0.example.");
        let got = zones.resolve(&qname, RecordType::A);
        assert_eq!(got.rcode, ResponseCode::NoError);
        assert_eq!(got.answer.len(), MAX_CNAME_CHAIN, "{got}");
        assert!(
            got.answer
                .iter()
                .all(|set| set.record_type() == RecordType::CNAME)
        );
    }

    #[test]
    fn answers_borrow_and_mark_synthesis() {
        let zones = rfc4592_zone();
        let qname = name("host3.example.");
        let got = zones.resolve(&qname, RecordType::MX);
        assert!(got.answer[0].synthesized);
        assert!(
            std::ptr::eq(got.answer[0].owner, &qname),
            "the owner is the query name itself"
        );
        assert_eq!(
            got.zone.map(|zone| zone.apex().to_string()),
            Some("example.".to_string())
        );
        assert!(!got.additional[0].synthesized);
    }

    #[test]
    fn apex_ns_answer_carries_in_zone_server_addresses() {
        let mut cfg = config("example.");
        cfg.nameservers = vec![name("ns1.example."), name("ns.example.net.")];
        let zones = ZoneSet::new([zone_with(cfg, &["ns1.example. 300 A 192.0.2.53"])]).expect("one zone");
        check(
            &zones,
            &[Case {
                what: "NS at the apex: the in-zone server's address in additional, the other left to the resolver",
                qname: "example.",
                qtype: RecordType::NS,
                rcode: ResponseCode::NoError,
                aa: true,
                outcome: Outcome::Answer,
                answer: &[
                    "example. 3600 NS ns1.example.",
                    "example. 3600 NS ns.example.net.",
                ],
                authority: &[],
                additional: &["ns1.example. 300 A 192.0.2.53"],
            }],
        );
    }

    #[test]
    fn common_answers_stay_inline_and_many_rrsets_spill() {
        let zones = ZoneSet::new([zone(
            "example.",
            &[
                "app.example. 60 A 192.0.2.10",
                "app.example. 60 AAAA 2001:db8::10",
                "app.example. 60 TXT one",
                "app.example. 60 MX 10 app.example.",
                "app.example. 60 CAA 0 issue \"ca.example.net\"",
            ],
        )])
        .expect("one zone");
        let qname = name("APP.example.");
        let hit = zones.resolve(&qname, RecordType::A);
        assert_eq!(hit.answer.len(), 1);
        assert!(
            hit.answer.spilled.is_empty(),
            "a positive answer does not allocate"
        );
        let missing = name("nothere.example.");
        let nxdomain = zones.resolve(&missing, RecordType::A);
        assert_eq!(nxdomain.rcode, ResponseCode::NXDomain);
        assert!(nxdomain.authority.spilled.is_empty());
        let any = zones.resolve(&qname, RecordType::ANY);
        let types: Vec<RecordType> = any.answer.iter().map(RrsetRef::record_type).collect();
        assert_eq!(
            types,
            [
                RecordType::A,
                RecordType::MX,
                RecordType::TXT,
                RecordType::AAAA,
                RecordType::CAA
            ],
            "{any}"
        );
        assert!(
            !any.answer.spilled.is_empty(),
            "more than fit inline: on the heap, in order"
        );
        assert_eq!(any.answer, any.answer.clone());
    }

    #[test]
    fn find_picks_the_longest_apex_by_labels() {
        let zones = ZoneSet::new([
            zone("example.", &[]),
            zone("apps.example.", &[]),
            zone("a.b.apps.example.", &[]),
        ])
        .expect("three zones");
        for (qname, apex) in [
            ("x.apps.example.", Some("apps.example.")),
            ("B.APPS.example.", Some("apps.example.")),
            ("x.a.b.apps.example.", Some("a.b.apps.example.")),
            ("xapps.example.", Some("example.")),
            ("example.", Some("example.")),
            ("example.org.", None),
            (".", None),
        ] {
            let found = zones.find(&name(qname)).map(|zone| zone.apex().to_string());
            assert_eq!(found.as_deref(), apex, "{qname}");
        }
        let single = ZoneSet::new([zone("apps.example.", &[])]).expect("one zone");
        assert!(single.find(&name("a.Apps.example.")).is_some());
        assert!(single.find(&name("example.")).is_none());
        assert!(ZoneSet::default().find(&name("example.")).is_none());
    }

    #[test]
    fn duplicate_zones_are_refused() {
        let err = ZoneSet::new([zone("example.", &[]), zone("example.", &[])]).expect_err("duplicate");
        assert_eq!(err.reason(), "DuplicateZone");
        assert_eq!(
            err.to_string(),
            "zone example. is given twice; each zone must be served from one snapshot"
        );
    }
}
