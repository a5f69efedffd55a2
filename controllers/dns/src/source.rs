//! Desired records from Kubernetes objects: Services, Ingresses and `DNSRecord`s, per zone.
//!
//! ```text
//!   Service  (LoadBalancer status, cluster IPs)  ─┐  annotations: dns.ferrite.dev/, external-dns.kubernetes.io/,
//!   Ingress  (rule + TLS hosts -> status)        ─┼─ external-dns.alpha.kubernetes.io/ (first present wins)
//!   DNSRecord (name, type, targets)              ─┘
//!        │ claims: (name, type, ttl, data) per object, or ObjectProblem (nothing published for the object)
//!        ▼
//!   the longest zone containing the name (and whose sources filter selects the object)
//!        │ oldest object wins a name; a newer one with other data loses the whole name: Conflict
//!        ▼
//!   Desired { zones: zone -> ZoneRecords (RRsets with their owner resource), problems, conflicts }
//! ```
//!
//! This is pure: objects in, desired records out. Every rule a zone snapshot enforces that one object
//! could break for everyone (a CNAME beside other data, a CNAME at the apex, two CNAME targets, a bad
//! TTL, a name outside the zone) is checked here, per object, so one bad object is reported (a Warning
//! Event) and left out while everything else is published, and `zone::Zone::build` of the result
//! cannot fail because of a source.
//!
//! Conflicts are resolved deterministically, so every replica computes the same winner: objects are
//! taken oldest first (`creationTimestamp`, then kind, namespace, name); a name's RRsets belong to the
//! first object that claims them, a later object claiming the same RRset with the same data shares it,
//! and a later object claiming it with other data, or a CNAME where others have data (or the other way
//! round), loses every record it wanted at that name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ferrite_api::dns::{
    DNSRecord, DNSZone, RecordType as ApiRecordType, SourceFilter, SourceKind, annotations,
};
use hickory_proto::rr::rdata::caa::read_issuer;
use hickory_proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{Selector, SelectorExt};

use crate::registry::Resource;
use crate::zone::{MAX_TTL, SoaConfig, ZoneConfig};

/// A zone records may be published into, as the sources see it.
#[derive(Debug, Clone)]
pub struct ZoneTarget {
    /// The `DNSZone`'s name: the key of the zone in [`Desired::zones`].
    pub key: String,
    /// The apex.
    pub apex: Name,
    /// TTL of records whose object sets none.
    pub default_ttl: u32,
    /// Names the zone's own settings hold (the embedded server's in-zone name servers and their glue):
    /// no object may publish there.
    pub reserved: BTreeSet<Name>,
    filter: Filter,
}

#[derive(Debug, Clone)]
struct Filter {
    namespaces: BTreeSet<String>,
    selector: Option<Selector>,
    kinds: BTreeSet<SourceKind>,
}

/// A `DNSZone` the sources cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneTargetError {
    /// `spec.zone` is not a DNS name.
    #[error("DNSZone {zone:?}: spec.zone {value:?} is not a DNS name: {reason}")]
    BadApex {
        /// The `DNSZone`'s name.
        zone: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// `spec.defaultTTL` out of range.
    #[error("DNSZone {zone:?}: spec.defaultTTL {ttl} is not between 1 and {MAX_TTL}")]
    BadDefaultTtl {
        /// The `DNSZone`'s name.
        zone: String,
        /// The value.
        ttl: i64,
    },
    /// A name server name or SOA name of an embedded zone that is not a DNS name.
    #[error("DNSZone {zone:?}: {field} {value:?} is not a DNS name: {reason}")]
    BadSettingName {
        /// The `DNSZone`'s name.
        zone: String,
        /// The field.
        field: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A glue address that is not an IP address, or glue for a name outside the zone.
    #[error("DNSZone {zone:?}: spec.provider.embedded.nameserverAddresses[{name:?}]: {reason}")]
    BadGlue {
        /// The `DNSZone`'s name.
        zone: String,
        /// The name server's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A number of an embedded zone's settings out of range.
    #[error("DNSZone {zone:?}: {field} {value} is not between {min} and {MAX_TTL}")]
    BadSettingNumber {
        /// The `DNSZone`'s name.
        zone: String,
        /// The field.
        field: &'static str,
        /// The value.
        value: i64,
        /// The smallest allowed.
        min: u32,
    },
    /// `spec.sources.labelSelector` cannot be parsed.
    #[error("DNSZone {zone:?}: spec.sources.labelSelector: {reason}")]
    BadSelector {
        /// The `DNSZone`'s name.
        zone: String,
        /// Why.
        reason: String,
    },
}

impl ZoneTargetError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ZoneTargetError::BadApex { .. } => "InvalidZone",
            ZoneTargetError::BadDefaultTtl { .. } => "InvalidDefaultTTL",
            ZoneTargetError::BadSelector { .. } => "InvalidSelector",
            ZoneTargetError::BadSettingName { .. } => "InvalidName",
            ZoneTargetError::BadGlue { .. } => "InvalidGlue",
            ZoneTargetError::BadSettingNumber { .. } => "InvalidSetting",
        }
    }
}

impl ZoneTarget {
    /// The zone of a `DNSZone` object.
    pub fn from_zone(zone: &DNSZone) -> Result<ZoneTarget, ZoneTargetError> {
        let key = zone.metadata.name.clone().unwrap_or_default();
        let mut target = ZoneTarget::new(
            &key,
            &zone.spec.zone,
            zone.spec.default_ttl,
            &zone.spec.source_filter(),
        )?;
        if let Some((config, _)) = embedded_zone(zone, 0)? {
            target.reserved = config
                .nameservers
                .into_iter()
                .filter(|ns| target.apex.zone_of(ns) && *ns != target.apex)
                .collect();
        }
        Ok(target)
    }

    /// A zone from its parts (`apex` with or without the trailing dot).
    pub fn new(
        key: &str,
        apex: &str,
        default_ttl: i64,
        filter: &SourceFilter,
    ) -> Result<ZoneTarget, ZoneTargetError> {
        let apex_name = parse_name(apex, false).map_err(|reason| ZoneTargetError::BadApex {
            zone: key.to_string(),
            value: apex.to_string(),
            reason,
        })?;
        let default_ttl = u32::try_from(default_ttl)
            .ok()
            .filter(|ttl| (1..=MAX_TTL).contains(ttl))
            .ok_or(ZoneTargetError::BadDefaultTtl {
                zone: key.to_string(),
                ttl: default_ttl,
            })?;
        let selector = match &filter.label_selector {
            Some(selector) => {
                Some(
                    Selector::try_from(selector.clone()).map_err(|e| ZoneTargetError::BadSelector {
                        zone: key.to_string(),
                        reason: e.to_string(),
                    })?,
                )
            }
            None => None,
        };
        Ok(ZoneTarget {
            key: key.to_string(),
            apex: apex_name,
            default_ttl,
            reserved: BTreeSet::new(),
            filter: Filter {
                namespaces: filter.namespaces.iter().cloned().collect(),
                selector,
                kinds: filter.kinds.iter().copied().collect(),
            },
        })
    }

    /// Whether the zone's sources filter selects an object.
    fn selects(&self, object: &Object) -> bool {
        let f = &self.filter;
        (f.kinds.is_empty() || f.kinds.contains(&object.kind))
            && (f.namespaces.is_empty() || f.namespaces.contains(&object.resource.namespace))
            && f.selector.as_ref().is_none_or(|s| s.matches(&object.labels))
    }
}

/// Why an object publishes nothing. One object can have several.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A name that is not a DNS name (or a `*` that is not the whole first label).
    #[error("{key}: {value:?} is not a DNS name: {reason}")]
    BadHostname {
        /// Where the name came from (an annotation key, `spec.rules[].host`, `spec.name`).
        key: String,
        /// The name as given.
        value: String,
        /// Why.
        reason: String,
    },
    /// A name in none of the zones.
    #[error("{name} is in none of the DNS zones ({zones})")]
    OutsideZones {
        /// The name.
        name: String,
        /// The apexes of every zone, comma-separated.
        zones: String,
    },
    /// A name whose zone does not take records from this object.
    #[error("{name} is in DNSZone {zone:?}, whose spec.sources does not select this object")]
    NotSelected {
        /// The name.
        name: String,
        /// The zone's key.
        zone: String,
    },
    /// A TTL that is not a number of seconds or a duration, or out of range.
    #[error("{key}: TTL {value:?} {reason}")]
    BadTtl {
        /// The annotation key or field.
        key: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A target that cannot be record data of its type.
    #[error("{key}: target {value:?}: {reason}")]
    BadTarget {
        /// The annotation key or field.
        key: String,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
    /// An annotation with a value that is not allowed.
    #[error("annotation {key}: {value:?} {reason}")]
    BadAnnotation {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A hostname annotation on a Service that has no load-balancer addresses to point at.
    #[error(
        "a Service of type {service_type} has no load-balancer addresses; publish it with a target annotation, or use internal-hostname for its cluster IP"
    )]
    UnsupportedServiceType {
        /// `spec.type`.
        service_type: String,
    },
    /// internal-hostname on a Service without a cluster IP (headless).
    #[error("internal-hostname on a Service without a cluster IP (clusterIP: None)")]
    NoClusterIp,
    /// A name the zone's settings hold (an in-zone name server of the embedded server).
    #[error(
        "{name} is a name server of DNSZone {zone:?} (spec.provider.embedded); objects cannot publish there"
    )]
    ReservedName {
        /// The name.
        name: String,
        /// The zone's key.
        zone: String,
    },
    /// A CNAME at a zone's apex, where the SOA and NS are.
    #[error("{name} is the apex of DNSZone {zone:?}; it cannot be a CNAME (point it at addresses instead)")]
    CnameAtApex {
        /// The name.
        name: String,
        /// The zone's key.
        zone: String,
    },
    /// One object asking for a CNAME and other data at one name (e.g. `hostname` with a load-balancer
    /// host name and `internal-hostname` with a cluster IP).
    #[error(
        "{name} would be a CNAME and also have {other} records; a CNAME must be the only record at its name"
    )]
    CnameAndOtherData {
        /// The name.
        name: String,
        /// The other type.
        other: RecordType,
    },
    /// A CNAME can only have one target.
    #[error("{name} would be a CNAME to {targets}; a CNAME has exactly one target")]
    MultipleCnameTargets {
        /// The name.
        name: String,
        /// The targets, comma-separated.
        targets: String,
    },
}

impl SourceError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SourceError::BadHostname { .. } => "BadHostname",
            SourceError::OutsideZones { .. } => "OutsideZones",
            SourceError::NotSelected { .. } => "NotSelectedByZone",
            SourceError::BadTtl { .. } => "BadTTL",
            SourceError::BadTarget { .. } => "BadTarget",
            SourceError::BadAnnotation { .. } => "BadAnnotation",
            SourceError::UnsupportedServiceType { .. } => "UnsupportedServiceType",
            SourceError::NoClusterIp => "NoClusterIP",
            SourceError::ReservedName { .. } => "ReservedName",
            SourceError::CnameAtApex { .. } => "CNAMEAtApex",
            SourceError::MultipleCnameTargets { .. } => "MultipleCNAMETargets",
            SourceError::CnameAndOtherData { .. } => "CNAMEAndOtherData",
        }
    }
}

/// An object that publishes nothing, and every reason why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectProblem {
    /// The object.
    pub resource: Resource,
    /// What is wrong with it.
    pub errors: Vec<SourceError>,
}

/// Two objects claiming one name with different data: the newer one publishes nothing at that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The zone's key.
    pub zone: String,
    /// The name.
    pub name: Name,
    /// The type the loser wanted.
    pub loser_type: RecordType,
    /// The type the winner holds there (the same, or CNAME vs. other data).
    pub winner_type: RecordType,
    /// The older object, whose records stay.
    pub winner: Resource,
    /// The newer object, whose records at this name are left out.
    pub loser: Resource,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} is claimed by {} (older, kept) and by {} ({}, left out)",
            self.name, self.winner_type, self.winner, self.loser, self.loser_type
        )
    }
}

/// One desired RRset and the object it is published for (the registry's `resource` label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredSet {
    /// The owner name (absolute).
    pub name: Name,
    /// The type.
    pub rtype: RecordType,
    /// The TTL.
    pub ttl: u32,
    /// The data, without duplicates, sorted.
    pub rdatas: Vec<RData>,
    /// The object that won the name.
    pub owner: Resource,
}

impl DesiredSet {
    /// The set as hickory records.
    pub fn records(&self) -> impl Iterator<Item = Record> + '_ {
        self.rdatas
            .iter()
            .map(|rdata| Record::from_rdata(self.name.clone(), self.ttl, rdata.clone()))
    }
}

/// The desired records of one zone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneRecords {
    /// The RRsets, sorted by name and type.
    pub sets: Vec<DesiredSet>,
}

impl ZoneRecords {
    /// Every record, ready for `zone::Zone::build`.
    pub fn records(&self) -> Vec<Record> {
        self.sets.iter().flat_map(DesiredSet::records).collect()
    }

    /// The RRset of a name and type.
    pub fn get(&self, name: &Name, rtype: RecordType) -> Option<&DesiredSet> {
        self.sets.iter().find(|s| &s.name == name && s.rtype == rtype)
    }
}

/// Everything the sources want, per zone, and what could not be published.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// The records of each zone, by the zone's key (every zone given has an entry, maybe empty).
    pub zones: BTreeMap<String, ZoneRecords>,
    /// Objects that publish nothing, with the reasons (one Warning Event each).
    pub problems: Vec<ObjectProblem>,
    /// Names two objects claim with different data (a Warning Event on the loser, the zone's
    /// `Conflicts` condition).
    pub conflicts: Vec<Conflict>,
    /// The zones each object has records in (for `DNSRecord` status).
    pub placements: BTreeMap<Resource, BTreeSet<String>>,
}

/// The objects to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sources<'a> {
    /// Services (any type; only those with a hostname or internal-hostname annotation publish).
    pub services: &'a [Service],
    /// Ingresses.
    pub ingresses: &'a [Ingress],
    /// `DNSRecord`s.
    pub records: &'a [DNSRecord],
}

/// An object, reduced to what the rules need.
#[derive(Debug, Clone, PartialEq)]
struct Object {
    kind: SourceKind,
    resource: Resource,
    created: Option<Time>,
    labels: BTreeMap<String, String>,
}

/// One RRset an object asks for, before it is placed in a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Claim {
    name: Name,
    rtype: RecordType,
    /// `None`: the zone's default TTL.
    ttl: Option<u32>,
    rdatas: Vec<RData>,
}

/// An object's claims, or everything wrong with it.
type ClaimsOrErrors = Result<Vec<Claim>, Vec<SourceError>>;

/// Computes the desired records of every zone from every object (an [`Index`] fed every object once).
pub fn desired(zones: &[ZoneTarget], sources: Sources<'_>) -> Desired {
    let mut index = Index::default();
    index.set_zones(zones.to_vec());
    let objects = (sources.services.iter().filter_map(SourceObject::from_service))
        .chain(sources.ingresses.iter().filter_map(SourceObject::from_ingress))
        .chain(sources.records.iter().filter_map(SourceObject::from_record));
    for object in objects {
        let resource = object.resource().clone();
        index.apply(&resource, Some(object));
    }
    index.desired()
}

/// Where an object's claims land with the current zones.
enum Placed {
    /// No zone selects the object: someone else's business (another controller's, another DNSZone
    /// set's): no records and no complaint.
    Unselected,
    /// The object publishes nothing, for these reasons.
    Problem(Vec<SourceError>),
    /// The RRsets it asks for, per zone and name.
    Sets(BTreeMap<(String, Name), Vec<DesiredSet>>),
}

/// Places an object's claims in `zones`, checking every rule that involves the zone; any error drops
/// the whole object.
fn place(zones: &[ZoneTarget], source: &SourceObject) -> Placed {
    let object = &source.object;
    if !zones.iter().any(|z| z.selects(object)) {
        return Placed::Unselected;
    }
    let claims = match &source.claims {
        Ok(claims) => claims,
        Err(errors) => return Placed::Problem(errors.clone()),
    };
    let mut placed: BTreeMap<(String, Name), Vec<DesiredSet>> = BTreeMap::new();
    let mut errors = Vec::new();
    for claim in claims {
        let Some(zone) = zones
            .iter()
            .filter(|z| z.apex.zone_of(&claim.name))
            .max_by_key(|z| z.apex.num_labels())
        else {
            push_unique(
                &mut errors,
                SourceError::OutsideZones {
                    name: claim.name.to_string(),
                    zones: zones
                        .iter()
                        .map(|z| z.apex.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            );
            continue;
        };
        if !zone.selects(object) {
            push_unique(
                &mut errors,
                SourceError::NotSelected {
                    name: claim.name.to_string(),
                    zone: zone.key.clone(),
                },
            );
            continue;
        }
        if zone.reserved.contains(&claim.name) {
            push_unique(
                &mut errors,
                SourceError::ReservedName {
                    name: claim.name.to_string(),
                    zone: zone.key.clone(),
                },
            );
            continue;
        }
        if claim.rtype == RecordType::CNAME && claim.name == zone.apex {
            errors.push(SourceError::CnameAtApex {
                name: claim.name.to_string(),
                zone: zone.key.clone(),
            });
            continue;
        }
        let set = placed.entry((zone.key.clone(), claim.name.clone())).or_default();
        let ttl = claim.ttl.unwrap_or(zone.default_ttl);
        match set.iter_mut().find(|s| s.rtype == claim.rtype) {
            // One object naming a name twice (hostname annotation and a rule host): one set.
            Some(existing) => {
                for rdata in &claim.rdatas {
                    if !existing.rdatas.contains(rdata) {
                        existing.rdatas.push(rdata.clone());
                    }
                }
                existing.rdatas.sort();
            }
            None => set.push(DesiredSet {
                name: claim.name.clone(),
                rtype: claim.rtype,
                ttl,
                rdatas: claim.rdatas.clone(),
                owner: object.resource.clone(),
            }),
        }
    }
    for ((_, name), sets) in &placed {
        if let Some(cname) = sets.iter().find(|s| s.rtype == RecordType::CNAME)
            && cname.rdatas.len() > 1
        {
            push_unique(
                &mut errors,
                SourceError::MultipleCnameTargets {
                    name: name.to_string(),
                    targets: rdata_list(&cname.rdatas),
                },
            );
        }
        if let Some(other) = sets.iter().find(|s| s.rtype != RecordType::CNAME)
            && sets.iter().any(|s| s.rtype == RecordType::CNAME)
        {
            push_unique(
                &mut errors,
                SourceError::CnameAndOtherData {
                    name: name.to_string(),
                    other: other.rtype,
                },
            );
        }
    }
    if errors.is_empty() {
        Placed::Sets(placed)
    } else {
        Placed::Problem(errors)
    }
}

/// One Service, Ingress or `DNSRecord`, reduced to what the rules need: its identity, age, labels and
/// the RRsets it asks for (or what is wrong with it). This is all the [`Index`] keeps of an object,
/// a few hundred bytes instead of the object (the watch's cache holds the object itself).
#[derive(Debug, Clone, PartialEq)]
pub struct SourceObject {
    object: Object,
    claims: ClaimsOrErrors,
}

impl SourceObject {
    /// A Service's claims; `None` if it asks for no name, is excluded or is being deleted.
    pub fn from_service(service: &Service) -> Option<SourceObject> {
        let object = object(SourceKind::Service, "service", &service.metadata)?;
        let claims = service_claims(service)?;
        Some(SourceObject::compact(object, claims))
    }

    /// An Ingress's claims; `None` if it asks for no name, is excluded or is being deleted.
    pub fn from_ingress(ingress: &Ingress) -> Option<SourceObject> {
        let object = object(SourceKind::Ingress, "ingress", &ingress.metadata)?;
        let claims = ingress_claims(ingress)?;
        Some(SourceObject::compact(object, claims))
    }

    /// A `DNSRecord`'s claim; `None` if it is being deleted.
    pub fn from_record(record: &DNSRecord) -> Option<SourceObject> {
        let object = object(SourceKind::DnsRecord, "dnsrecord", &record.metadata)?;
        Some(SourceObject::compact(object, record_claims(record)))
    }

    /// Kept for as long as the object exists: vectors grown by pushes (room for four `RData`s, several
    /// hundred bytes) trimmed to what they hold.
    fn compact(object: Object, mut claims: ClaimsOrErrors) -> SourceObject {
        match &mut claims {
            Ok(claims) => {
                claims.shrink_to_fit();
                for claim in claims {
                    claim.rdatas.shrink_to_fit();
                }
            }
            Err(errors) => errors.shrink_to_fit(),
        }
        SourceObject { object, claims }
    }

    /// The object (`<kind>/<namespace>/<name>`).
    pub fn resource(&self) -> &Resource {
        &self.object.resource
    }

    /// The order conflicts are decided in: oldest first (`creationTimestamp`), then kind, namespace,
    /// name; an object without a creation time (never from the API server) sorts last.
    fn age(&self) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &Resource) {
        let time = self.object.created.as_ref().map(|t| t.0);
        (time.is_none(), time, &self.object.resource)
    }
}

/// One accepted RRset at a name of a zone: the data of the object that won it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Accepted {
    rtype: RecordType,
    ttl: u32,
    rdatas: Vec<RData>,
    owner: Arc<Resource>,
}

/// One name of one zone: the objects claiming it and the outcome.
#[derive(Debug, Default)]
struct NameState {
    /// Objects whose placed claims include this name (valid objects only).
    claimants: Vec<Arc<Resource>>,
    /// The RRsets published, sorted by type.
    accepted: Vec<Accepted>,
    /// Claimants that lost the name.
    conflicts: Vec<Conflict>,
}

impl NameState {
    fn records(&self) -> usize {
        self.accepted.iter().map(|a| a.rdatas.len()).sum()
    }
}

/// What a `DNSRecord`'s (or any object's) status says after a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing published: everything wrong with it.
    Problem(Vec<SourceError>),
    /// Published in these zones; `lost` names a conflict it lost elsewhere (the last one, by zone and
    /// name), if any.
    Placed {
        /// Zones with records of the object, sorted.
        zones: Vec<String>,
        /// A conflict the object lost at some name.
        lost: Option<Conflict>,
    },
    /// Lost every name it claims.
    Lost(Conflict),
    /// No zone holds (or selects) it.
    NoZone,
}

/// The desired state, kept up to date one object at a time.
///
/// ```text
///   watch event ──> SourceObject (claims, derived once) ──> Index::apply
///        │ unregister the old claims' names, register the new ones (place: zone, rules)
///        ▼
///   per (zone, name): claimants ──resolve (oldest wins)──> accepted RRsets, conflicts
///        │ a name whose outcome changed marks its zone dirty and its claimants for status
///        ▼
///   take_dirty_zones / take_dirty_objects ──> the controller rebuilds only those zones
/// ```
///
/// A change re-derives only the changed object's claims and re-resolves only the names it had or has,
/// so a pass costs the size of what changed plus the rebuild of the zones it touched, not the number of
/// objects. The result is the same as computing everything from scratch ([`desired`] is this index fed
/// every object once; the table tests run through it). A change of the zones (`set_zones` with other
/// targets) re-places every object.
#[derive(Debug, Default)]
pub struct Index {
    zones: Vec<ZoneTarget>,
    /// `Debug` text of `zones`: a change re-places everything.
    zones_signature: String,
    objects: HashMap<Arc<Resource>, SourceObject>,
    /// Per zone key, per name.
    names: BTreeMap<String, BTreeMap<Name, NameState>>,
    /// Records published per zone.
    counts: BTreeMap<String, usize>,
    /// Names with at least one conflict, per zone.
    conflicted: BTreeMap<String, BTreeSet<Name>>,
    /// Objects that publish nothing because of an error.
    problems: BTreeSet<Arc<Resource>>,
    dirty_zones: BTreeSet<String>,
    dirty_objects: BTreeSet<Arc<Resource>>,
}

impl Index {
    /// Sets the zones objects publish into; with other zones than before every object is placed again
    /// and every zone and object is dirty.
    pub fn set_zones(&mut self, zones: Vec<ZoneTarget>) {
        let signature = format!("{zones:?}");
        if signature == self.zones_signature {
            return;
        }
        self.zones_signature = signature;
        self.dirty_zones.extend(self.names.keys().cloned());
        self.dirty_zones.extend(zones.iter().map(|z| z.key.clone()));
        self.zones = zones;
        self.names.clear();
        self.counts.clear();
        self.conflicted.clear();
        self.problems.clear();
        let keys: Vec<Arc<Resource>> = self.objects.keys().cloned().collect();
        let mut touched = BTreeSet::new();
        for key in &keys {
            self.register(key, &mut touched);
        }
        for (zone, name) in touched {
            self.resolve(&zone, &name);
        }
        self.dirty_objects.extend(keys);
    }

    /// Applies one object's latest state (`None`: deleted, or it asks for nothing any more).
    pub fn apply(&mut self, resource: &Resource, object: Option<SourceObject>) {
        let key = match self.objects.get_key_value(resource) {
            Some((k, _)) => k.clone(),
            None => Arc::new(resource.clone()),
        };
        // Its status is looked at again even when nothing it asks for changed (a new generation).
        self.dirty_objects.insert(key.clone());
        if self.objects.get(resource) == object.as_ref() {
            return;
        }
        let mut touched = BTreeSet::new();
        if self.objects.contains_key(resource) {
            self.unregister(&key, &mut touched);
            self.objects.remove(resource);
        }
        if let Some(object) = object {
            self.objects.insert(key.clone(), object);
            self.register(&key, &mut touched);
        }
        for (zone, name) in touched {
            self.resolve(&zone, &name);
        }
    }

    fn register(&mut self, key: &Arc<Resource>, touched: &mut BTreeSet<(String, Name)>) {
        let Some(object) = self.objects.get(key) else {
            return;
        };
        match place(&self.zones, object) {
            Placed::Unselected => {}
            Placed::Problem(_) => {
                self.problems.insert(key.clone());
            }
            Placed::Sets(sets) => {
                for (zone, name) in sets.into_keys() {
                    let state = self
                        .names
                        .entry(zone.clone())
                        .or_default()
                        .entry(name.clone())
                        .or_default();
                    state.claimants.push(key.clone());
                    touched.insert((zone, name));
                }
            }
        }
    }

    fn unregister(&mut self, key: &Arc<Resource>, touched: &mut BTreeSet<(String, Name)>) {
        let Some(object) = self.objects.get(key) else {
            return;
        };
        // The zones have not changed since it was registered (set_zones re-registers everything), so
        // placing it again finds the same names.
        match place(&self.zones, object) {
            Placed::Unselected => {}
            Placed::Problem(_) => {
                self.problems.remove(key);
            }
            Placed::Sets(sets) => {
                for (zone, name) in sets.into_keys() {
                    if let Some(state) = self.names.get_mut(&zone).and_then(|n| n.get_mut(&name)) {
                        state.claimants.retain(|c| c != key);
                    }
                    touched.insert((zone, name));
                }
            }
        }
    }

    /// Decides one name again: claimants oldest first; a name's RRsets belong to the first object that
    /// claims them, a later one with the same data shares them, a later one with other data (or a
    /// CNAME where others have data, or the other way round) loses every record it wanted there.
    fn resolve(&mut self, zone: &str, name: &Name) {
        let Some(state) = self.names.get(zone).and_then(|n| n.get(name)) else {
            return;
        };
        let mut claimants: Vec<&SourceObject> = state
            .claimants
            .iter()
            .filter_map(|c| self.objects.get(&**c))
            .collect();
        claimants.sort_by(|a, b| a.age().cmp(&b.age()));
        let mut have: Vec<DesiredSet> = Vec::new();
        let mut conflicts = Vec::new();
        let wanted = (zone.to_string(), name.clone());
        for object in claimants {
            let Placed::Sets(mut placed) = place(&self.zones, object) else {
                continue;
            };
            let sets = placed.remove(&wanted).unwrap_or_default();
            let conflict = sets.iter().find_map(|want| {
                have.iter()
                    .find(|have| {
                        if have.rtype == want.rtype {
                            have.rdatas != want.rdatas
                        } else {
                            have.rtype == RecordType::CNAME || want.rtype == RecordType::CNAME
                        }
                    })
                    .map(|have| Conflict {
                        zone: zone.to_string(),
                        name: name.clone(),
                        loser_type: want.rtype,
                        winner_type: have.rtype,
                        winner: have.owner.clone(),
                        loser: object.resource().clone(),
                    })
            });
            if let Some(conflict) = conflict {
                conflicts.push(conflict);
                continue;
            }
            for set in sets {
                // The same data from an older object: that object stays the owner, with its TTL.
                if !have.iter().any(|h| h.rtype == set.rtype) {
                    have.push(set);
                }
            }
        }
        have.sort_by_key(|s| u16::from(s.rtype));
        let Some(state) = self.names.get_mut(zone).and_then(|n| n.get_mut(name)) else {
            return;
        };
        // Not collected in place: that would keep `have`'s spare capacity for as long as the name lives.
        let mut accepted: Vec<Accepted> = Vec::with_capacity(have.len());
        accepted.extend(have.into_iter().map(|s| {
            let owner = state
                .claimants
                .iter()
                .find(|c| ***c == s.owner)
                .cloned()
                .unwrap_or_else(|| Arc::new(s.owner));
            Accepted {
                rtype: s.rtype,
                ttl: s.ttl,
                rdatas: s.rdatas,
                owner,
            }
        }));
        if accepted == state.accepted && conflicts == state.conflicts {
            if state.claimants.is_empty() {
                self.remove_name(zone, name);
            }
            return;
        }
        let before = state.records();
        state.accepted = accepted;
        state.conflicts = conflicts;
        let after = state.records();
        let has_conflicts = !state.conflicts.is_empty();
        let empty = state.claimants.is_empty();
        self.dirty_objects.extend(state.claimants.iter().cloned());
        let count = self.counts.entry(zone.to_string()).or_default();
        *count = (*count + after).saturating_sub(before);
        if has_conflicts {
            self.conflicted
                .entry(zone.to_string())
                .or_default()
                .insert(name.clone());
        } else if let Some(c) = self.conflicted.get_mut(zone) {
            c.remove(name);
        }
        self.dirty_zones.insert(zone.to_string());
        if empty {
            self.remove_name(zone, name);
        }
    }

    fn remove_name(&mut self, zone: &str, name: &Name) {
        if let Some(names) = self.names.get_mut(zone) {
            names.remove(name);
            if names.is_empty() {
                self.names.remove(zone);
            }
        }
        if let Some(c) = self.conflicted.get_mut(zone) {
            c.remove(name);
        }
    }

    /// Zones whose records or conflicts changed since the last call.
    pub fn take_dirty_zones(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.dirty_zones)
    }

    /// Objects whose outcome may have changed since the last call (applied, or at a name decided
    /// again).
    pub fn take_dirty_objects(&mut self) -> BTreeSet<Arc<Resource>> {
        std::mem::take(&mut self.dirty_objects)
    }

    /// Every object held.
    pub fn objects(&self) -> impl Iterator<Item = &Resource> + '_ {
        self.objects.keys().map(|k| &**k)
    }

    /// Records published in a zone (RRs).
    pub fn record_count(&self, zone: &str) -> usize {
        self.counts.get(zone).copied().unwrap_or(0)
    }

    /// The records of a zone, sorted by name and type, ready for `zone::Zone::build`.
    pub fn records(&self, zone: &str) -> impl Iterator<Item = Record> + '_ {
        self.names
            .get(zone)
            .into_iter()
            .flatten()
            .flat_map(|(name, state)| {
                state.accepted.iter().flat_map(move |a| {
                    a.rdatas
                        .iter()
                        .map(move |rdata| Record::from_rdata(name.clone(), a.ttl, rdata.clone()))
                })
            })
    }

    /// A hash of a zone's records and their owners (equal records, equal hash; no formatting).
    pub fn content_hash(&self, zone: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for (name, state) in self.names.get(zone).into_iter().flatten() {
            name.to_lowercase().hash(&mut h);
            for a in &state.accepted {
                (u16::from(a.rtype), a.ttl, &a.rdatas, &*a.owner).hash(&mut h);
            }
        }
        h.finish()
    }

    /// The desired RRsets of a zone with their owners (for a provider's plan).
    pub fn zone_records(&self, zone: &str) -> ZoneRecords {
        ZoneRecords {
            sets: self
                .names
                .get(zone)
                .into_iter()
                .flatten()
                .flat_map(|(name, state)| {
                    state.accepted.iter().map(move |a| DesiredSet {
                        name: name.clone(),
                        rtype: a.rtype,
                        ttl: a.ttl,
                        rdatas: a.rdatas.clone(),
                        owner: (*a.owner).clone(),
                    })
                })
                .collect(),
        }
    }

    /// The conflicts in a zone, by name.
    pub fn conflicts_in(&self, zone: &str) -> Vec<&Conflict> {
        let Some(names) = self.conflicted.get(zone) else {
            return Vec::new();
        };
        let states = self.names.get(zone);
        names
            .iter()
            .filter_map(|n| states.and_then(|s| s.get(n)))
            .flat_map(|s| s.conflicts.iter())
            .collect()
    }

    /// Every conflict, the losers oldest first (then zone and name).
    pub fn conflicts(&self) -> Vec<&Conflict> {
        let mut all: Vec<&Conflict> = self
            .conflicted
            .keys()
            .flat_map(|z| self.conflicts_in(z))
            .collect();
        all.sort_by(|a, b| {
            let age = |c: &Conflict| self.objects.get(&c.loser).map(SourceObject::age);
            (age(a), &a.zone, &a.name).cmp(&(age(b), &b.zone, &b.name))
        });
        all
    }

    /// Every object that publishes nothing because of an error, oldest first.
    pub fn problems(&self) -> Vec<ObjectProblem> {
        let mut objects: Vec<&SourceObject> = self
            .problems
            .iter()
            .filter_map(|k| self.objects.get(&**k))
            .collect();
        objects.sort_by(|a, b| a.age().cmp(&b.age()));
        objects
            .into_iter()
            .filter_map(|o| match place(&self.zones, o) {
                Placed::Problem(errors) => Some(ObjectProblem {
                    resource: o.resource().clone(),
                    errors,
                }),
                _ => None,
            })
            .collect()
    }

    /// What an object's status says; `None` for an object the index does not hold.
    pub fn outcome(&self, resource: &Resource) -> Option<Outcome> {
        let object = self.objects.get(resource)?;
        let sets = match place(&self.zones, object) {
            Placed::Unselected => return Some(Outcome::NoZone),
            Placed::Problem(errors) => return Some(Outcome::Problem(errors)),
            Placed::Sets(sets) => sets,
        };
        let mut zones = BTreeSet::new();
        let mut lost = None;
        for (zone, name) in sets.keys() {
            let state = self.names.get(zone).and_then(|n| n.get(name));
            match state.and_then(|s| s.conflicts.iter().find(|c| &c.loser == resource)) {
                Some(c) => lost = Some(c.clone()),
                None => {
                    zones.insert(zone.clone());
                }
            }
        }
        Some(match (zones.is_empty(), lost) {
            (true, Some(c)) => Outcome::Lost(c),
            (true, None) => Outcome::NoZone,
            (false, lost) => Outcome::Placed {
                zones: zones.into_iter().collect(),
                lost,
            },
        })
    }

    /// Everything at once, as [`desired`] returns it.
    pub fn desired(&self) -> Desired {
        let mut placements: BTreeMap<Resource, BTreeSet<String>> = BTreeMap::new();
        for key in self.objects.keys() {
            if let Some(Outcome::Placed { zones, .. }) = self.outcome(key) {
                placements.insert((**key).clone(), zones.into_iter().collect());
            }
        }
        Desired {
            zones: self
                .zones
                .iter()
                .map(|z| (z.key.clone(), self.zone_records(&z.key)))
                .collect(),
            problems: self.problems(),
            conflicts: self.conflicts().into_iter().cloned().collect(),
            placements,
        }
    }
}

/// Defaults of an embedded zone's settings (documented in docs/dns.md, DNSZone table).
pub mod embedded_defaults {
    /// TTL of the apex NS records.
    pub const NS_TTL: u32 = 3600;
    /// SOA REFRESH.
    pub const REFRESH: u32 = 3600;
    /// SOA RETRY.
    pub const RETRY: u32 = 600;
    /// SOA EXPIRE.
    pub const EXPIRE: u32 = 86400;
    /// SOA MINIMUM (negative-answer TTL).
    pub const MINIMUM: u32 = 60;
    /// TTL of the SOA record.
    pub const SOA_TTL: u32 = 3600;
}

/// The embedded server's settings of a zone with every default filled in (name servers `ns1.<zone>`,
/// MNAME the first name server, RNAME `hostmaster.<zone>`, the SOA timers of [`embedded_defaults`]) and
/// the glue records of `nameserverAddresses` (TTL: the NS TTL), or `None` for another provider.
pub fn embedded_zone(
    zone: &DNSZone,
    serial: u32,
) -> Result<Option<(ZoneConfig, Vec<Record>)>, ZoneTargetError> {
    let ferrite_api::dns::Provider::Embedded(embedded) = &zone.spec.provider else {
        return Ok(None);
    };
    let key = zone.metadata.name.clone().unwrap_or_default();
    let name = |field: &'static str, value: &str| {
        parse_name(value, false).map_err(|reason| ZoneTargetError::BadSettingName {
            zone: key.clone(),
            field,
            value: value.to_string(),
            reason,
        })
    };
    let number = |field: &'static str, value: Option<i64>, default: u32, min: u32| match value {
        None => Ok(default),
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|n| (min..=MAX_TTL).contains(n))
            .ok_or(ZoneTargetError::BadSettingNumber {
                zone: key.clone(),
                field,
                value: v,
                min,
            }),
    };
    let apex = name("spec.zone", &zone.spec.zone)?;
    let mut nameservers = Vec::new();
    for ns in &embedded.nameservers {
        let ns = name("spec.provider.embedded.nameservers", ns)?;
        if !nameservers.contains(&ns) {
            nameservers.push(ns);
        }
    }
    if nameservers.is_empty() {
        nameservers.push(name("spec.zone", &format!("ns1.{apex}"))?);
    }
    let soa = embedded.soa.clone().unwrap_or_default();
    let mname = match &soa.mname {
        Some(m) => name("spec.provider.embedded.soa.mname", m)?,
        None => nameservers[0].clone(),
    };
    let rname = match &soa.rname {
        Some(r) => name("spec.provider.embedded.soa.rname", r)?,
        None => name("spec.zone", &format!("hostmaster.{apex}"))?,
    };
    let ns_ttl = number(
        "spec.provider.embedded.nsTTL",
        embedded.ns_ttl,
        embedded_defaults::NS_TTL,
        1,
    )?;
    let config = ZoneConfig {
        apex: apex.clone(),
        soa: SoaConfig {
            mname,
            rname,
            serial,
            refresh: number(
                "spec.provider.embedded.soa.refresh",
                soa.refresh,
                embedded_defaults::REFRESH,
                1,
            )?,
            retry: number(
                "spec.provider.embedded.soa.retry",
                soa.retry,
                embedded_defaults::RETRY,
                1,
            )?,
            expire: number(
                "spec.provider.embedded.soa.expire",
                soa.expire,
                embedded_defaults::EXPIRE,
                1,
            )?,
            minimum: number(
                "spec.provider.embedded.soa.minimum",
                soa.minimum,
                embedded_defaults::MINIMUM,
                0,
            )?,
            ttl: number(
                "spec.provider.embedded.soa.ttl",
                soa.ttl,
                embedded_defaults::SOA_TTL,
                0,
            )?,
        },
        nameservers,
        ns_ttl,
    };
    let mut glue = Vec::new();
    for (ns, addresses) in &embedded.nameserver_addresses {
        let bad = |reason: String| ZoneTargetError::BadGlue {
            zone: key.clone(),
            name: ns.clone(),
            reason,
        };
        let ns_name = parse_name(ns, false).map_err(bad)?;
        if !config.nameservers.contains(&ns_name) {
            return Err(bad(format!("{ns_name} is not one of the zone's name servers")));
        }
        if !apex.zone_of(&ns_name) || ns_name == apex {
            return Err(bad(format!(
                "{ns_name} is not below {apex}; glue is only for name servers inside the zone"
            )));
        }
        for address in addresses {
            let ip: IpAddr = address
                .trim()
                .parse()
                .map_err(|_| bad(format!("{address:?} is not an IP address")))?;
            let rdata = match ip {
                IpAddr::V4(a) => RData::A(A(a)),
                IpAddr::V6(a) => RData::AAAA(AAAA(a)),
            };
            glue.push(Record::from_rdata(ns_name.clone(), ns_ttl, rdata));
        }
    }
    Ok(Some((config, glue)))
}

fn push_unique(errors: &mut Vec<SourceError>, error: SourceError) {
    if !errors.contains(&error) {
        errors.push(error);
    }
}

fn rdata_list(rdatas: &[RData]) -> String {
    rdatas
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The object's identity, or `None` for objects being deleted (their records go) and objects without a
/// name.
fn object(kind: SourceKind, kind_label: &str, meta: &ObjectMeta) -> Option<Object> {
    if meta.deletion_timestamp.is_some() {
        return None;
    }
    Some(Object {
        kind,
        resource: Resource {
            kind: kind_label.to_string(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone()?,
        },
        created: meta.creation_timestamp.clone(),
        labels: meta.labels.clone().unwrap_or_default(),
    })
}

/// The first of `keys` present in the annotations, with its key.
fn annotation<'a>(meta: &'a ObjectMeta, keys: &[&'static str]) -> Option<(&'static str, &'a str)> {
    let map = meta.annotations.as_ref()?;
    keys.iter().find_map(|k| map.get(*k).map(|v| (*k, v.as_str())))
}

/// `true` if the object is excluded; an error for a value that is not a boolean.
fn excluded(meta: &ObjectMeta) -> Result<bool, SourceError> {
    match annotation(meta, &[annotations::EXCLUDE]) {
        None => Ok(false),
        Some((_, v)) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some((_, v)) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some((key, v)) => Err(SourceError::BadAnnotation {
            key: key.to_string(),
            value: v.to_string(),
            reason: "is not \"true\" or \"false\"",
        }),
    }
}

/// The names of a hostname-style annotation (comma separated, blanks ignored).
fn hostnames(meta: &ObjectMeta, keys: &[&'static str], errors: &mut Vec<SourceError>) -> Vec<Name> {
    let Some((key, value)) = annotation(meta, keys) else {
        return Vec::new();
    };
    names(key, value.split(','), errors)
}

fn names<'a>(key: &str, values: impl Iterator<Item = &'a str>, errors: &mut Vec<SourceError>) -> Vec<Name> {
    let mut out = Vec::new();
    for value in values.map(str::trim).filter(|v| !v.is_empty()) {
        match parse_name(value, true) {
            Ok(name) if !out.contains(&name) => out.push(name),
            Ok(_) => {}
            Err(reason) => errors.push(SourceError::BadHostname {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            }),
        }
    }
    out
}

/// A DNS name as text (trailing dot optional), made absolute and lower-case. Labels: letters, digits,
/// `-` (not first or last) and `_`, 1 to 63 characters; `*` only as the whole first label, and only if
/// `wildcard`.
pub fn parse_name(text: &str, wildcard: bool) -> Result<Name, String> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() {
        return Err("the name is empty".to_string());
    }
    if trimmed.len() > 253 {
        return Err(format!("{} characters, longer than 253", trimmed.len()));
    }
    for (i, label) in trimmed.split('.').enumerate() {
        if label == "*" {
            if i == 0 && wildcard {
                continue;
            }
            return Err(if wildcard {
                "a wildcard `*` must be the whole first label (`*.apps.example.com`)".to_string()
            } else {
                "a wildcard is not allowed here".to_string()
            });
        }
        if label.is_empty() {
            return Err("it has an empty label (`..`)".to_string());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "label {label:?} has {c:?} (only letters, digits, '-' and '_')"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Name::from_ascii(format!("{}.", trimmed.to_ascii_lowercase())).map_err(|e| e.to_string())
}

/// A TTL: whole seconds (`300`) or a Go-style duration of whole seconds (`5m`, `1h30m`, `90s`), as
/// external-dns accepts them; 1 to 2147483647 s.
pub fn parse_ttl(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let seconds: u64 = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().map_err(|_| "is too large".to_string())?
    } else {
        let mut total: u64 = 0;
        let mut rest = text;
        if rest.is_empty() {
            return Err("is empty".to_string());
        }
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err("is not seconds or a duration like 5m, 1h30m".to_string());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| "is too large".to_string())?;
            rest = &rest[digits..];
            let unit = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let factor = match &rest[..unit] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err("is not seconds or a duration with units h, m, s".to_string()),
            };
            rest = &rest[unit..];
            total = n
                .checked_mul(factor)
                .and_then(|v| total.checked_add(v))
                .ok_or("is too large")?;
        }
        total
    };
    match u32::try_from(seconds) {
        Ok(ttl) if (1..=MAX_TTL).contains(&ttl) => Ok(ttl),
        _ => Err(format!("is {seconds} s, not between 1 and {MAX_TTL}")),
    }
}

fn ttl_annotation(meta: &ObjectMeta, errors: &mut Vec<SourceError>) -> Option<u32> {
    let (key, value) = annotation(meta, &annotations::TTL_KEYS)?;
    match parse_ttl(value) {
        Ok(ttl) => Some(ttl),
        Err(reason) => {
            errors.push(SourceError::BadTtl {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            });
            None
        }
    }
}

/// Addresses and host names an object points at.
#[derive(Debug, Default)]
struct Targets {
    ips: Vec<IpAddr>,
    hosts: Vec<Name>,
}

impl Targets {
    fn is_empty(&self) -> bool {
        self.ips.is_empty() && self.hosts.is_empty()
    }

    /// A/AAAA for the addresses; else one CNAME set for the host names (one host name required,
    /// checked once the name is placed).
    fn claims(&self, name: &Name, ttl: Option<u32>) -> Vec<Claim> {
        let mut v4: Vec<RData> = Vec::new();
        let mut v6: Vec<RData> = Vec::new();
        for ip in &self.ips {
            match ip {
                IpAddr::V4(a) => v4.push(RData::A(A(*a))),
                IpAddr::V6(a) => v6.push(RData::AAAA(AAAA(*a))),
            }
        }
        let mut out = Vec::new();
        for (rtype, mut rdatas) in [(RecordType::A, v4), (RecordType::AAAA, v6)] {
            rdatas.sort();
            rdatas.dedup();
            if !rdatas.is_empty() {
                out.push(Claim {
                    name: name.clone(),
                    rtype,
                    ttl,
                    rdatas,
                });
            }
        }
        if out.is_empty() && !self.hosts.is_empty() {
            let mut rdatas: Vec<RData> = self
                .hosts
                .iter()
                .map(|h| RData::CNAME(CNAME(h.clone())))
                .collect();
            rdatas.sort();
            rdatas.dedup();
            out.push(Claim {
                name: name.clone(),
                rtype: RecordType::CNAME,
                ttl,
                rdatas,
            });
        }
        out
    }
}

/// The target annotation: IP addresses, or host names; not both.
fn target_annotation(meta: &ObjectMeta, errors: &mut Vec<SourceError>) -> Option<Targets> {
    let (key, value) = annotation(meta, &annotations::TARGET_KEYS)?;
    let errors_before = errors.len();
    let mut targets = Targets::default();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(ip) = part.parse::<IpAddr>() {
            targets.ips.push(ip);
        } else {
            match parse_name(part, false) {
                Ok(host) => targets.hosts.push(host),
                Err(reason) => errors.push(SourceError::BadTarget {
                    key: key.to_string(),
                    value: part.to_string(),
                    reason: format!("not an IP address or a host name: {reason}"),
                }),
            }
        }
    }
    if !targets.ips.is_empty() && !targets.hosts.is_empty() {
        errors.push(SourceError::BadTarget {
            key: key.to_string(),
            value: value.to_string(),
            reason: "mixes IP addresses and host names; give addresses (A/AAAA) or one host name (CNAME)"
                .to_string(),
        });
    }
    if targets.is_empty() && errors.len() == errors_before {
        errors.push(SourceError::BadTarget {
            key: key.to_string(),
            value: value.to_string(),
            reason: "has no targets".to_string(),
        });
    }
    Some(targets)
}

/// Status addresses: IPs that parse, host names that parse; what does not parse is the status writer's
/// business and is skipped.
fn status_targets<'a>(entries: impl Iterator<Item = (Option<&'a String>, Option<&'a String>)>) -> Targets {
    let mut targets = Targets::default();
    for (ip, hostname) in entries {
        if let Some(ip) = ip.and_then(|ip| ip.parse::<IpAddr>().ok()) {
            targets.ips.push(ip);
        } else if let Some(host) = hostname.and_then(|h| parse_name(h, false).ok()) {
            targets.hosts.push(host);
        }
    }
    targets
}

/// A Service's claims, `None` if it asks for no name (or is excluded).
fn service_claims(service: &Service) -> Option<ClaimsOrErrors> {
    let meta = &service.metadata;
    let mut errors = Vec::new();
    match excluded(meta) {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => return Some(Err(vec![e])),
    }
    let hosts = hostnames(meta, &annotations::HOSTNAME_KEYS, &mut errors);
    let internal = hostnames(meta, &annotations::INTERNAL_HOSTNAME_KEYS, &mut errors);
    if hosts.is_empty() && internal.is_empty() && errors.is_empty() {
        return None;
    }
    let ttl = ttl_annotation(meta, &mut errors);
    let spec = service.spec.clone().unwrap_or_default();
    let mut claims = Vec::new();
    if !hosts.is_empty() {
        let service_type = spec.type_.clone().unwrap_or_else(|| "ClusterIP".to_string());
        let targets = match target_annotation(meta, &mut errors) {
            Some(targets) => Some(targets),
            None if service_type == "LoadBalancer" => {
                let ingress = service
                    .status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref());
                Some(status_targets(
                    ingress
                        .into_iter()
                        .flatten()
                        .map(|i| (i.ip.as_ref(), i.hostname.as_ref())),
                ))
            }
            None => {
                errors.push(SourceError::UnsupportedServiceType { service_type });
                None
            }
        };
        if let Some(targets) = targets {
            for host in &hosts {
                claims.extend(targets.claims(host, ttl));
            }
        }
    }
    if !internal.is_empty() {
        let mut ips: Vec<&String> = spec.cluster_ips.iter().flatten().collect();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.as_ref());
        }
        let ips: Vec<IpAddr> = ips.into_iter().filter_map(|ip| ip.parse().ok()).collect();
        if ips.is_empty() {
            errors.push(SourceError::NoClusterIp);
        } else {
            let targets = Targets {
                ips,
                hosts: Vec::new(),
            };
            for host in &internal {
                claims.extend(targets.claims(host, ttl));
            }
        }
    }
    Some(if errors.is_empty() {
        Ok(claims)
    } else {
        Err(errors)
    })
}

/// An Ingress's claims: every rule host and TLS host, and the hostname annotation, pointing at its
/// `status.loadBalancer` (or the target annotation). `None` if excluded or without names.
fn ingress_claims(ingress: &Ingress) -> Option<ClaimsOrErrors> {
    let meta = &ingress.metadata;
    let mut errors = Vec::new();
    match excluded(meta) {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => return Some(Err(vec![e])),
    }
    let spec = ingress.spec.clone().unwrap_or_default();
    let mut hosts = names(
        "spec.rules[].host",
        spec.rules.iter().flatten().filter_map(|r| r.host.as_deref()),
        &mut errors,
    );
    for host in names(
        "spec.tls[].hosts",
        spec.tls
            .iter()
            .flatten()
            .flat_map(|t| t.hosts.iter().flatten())
            .map(String::as_str),
        &mut errors,
    ) {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    for host in hostnames(meta, &annotations::HOSTNAME_KEYS, &mut errors) {
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    if hosts.is_empty() && errors.is_empty() {
        return None;
    }
    let ttl = ttl_annotation(meta, &mut errors);
    let targets = target_annotation(meta, &mut errors).unwrap_or_else(|| {
        let ingress = ingress
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        status_targets(
            ingress
                .into_iter()
                .flatten()
                .map(|i| (i.ip.as_ref(), i.hostname.as_ref())),
        )
    });
    if !errors.is_empty() {
        return Some(Err(errors));
    }
    Some(Ok(hosts.iter().flat_map(|h| targets.claims(h, ttl)).collect()))
}

/// A `DNSRecord`'s one claim.
fn record_claims(record: &DNSRecord) -> ClaimsOrErrors {
    let spec = &record.spec;
    let mut errors = Vec::new();
    let name = parse_name(&spec.name, true).map_err(|reason| SourceError::BadHostname {
        key: "spec.name".to_string(),
        value: spec.name.clone(),
        reason,
    });
    let ttl = match spec.ttl {
        None => None,
        Some(ttl) => match u32::try_from(ttl).ok().filter(|t| (1..=MAX_TTL).contains(t)) {
            Some(ttl) => Some(ttl),
            None => {
                errors.push(SourceError::BadTtl {
                    key: "spec.ttl".to_string(),
                    value: ttl.to_string(),
                    reason: format!("is not between 1 and {MAX_TTL}"),
                });
                None
            }
        },
    };
    let rtype = record_type(spec.record_type);
    let mut rdatas = Vec::new();
    if spec.targets.is_empty() {
        errors.push(SourceError::BadTarget {
            key: "spec.targets".to_string(),
            value: String::new(),
            reason: "a record needs at least one target".to_string(),
        });
    }
    for target in &spec.targets {
        // A registry text would make whoever can write a DNSRecord the owner of other records (and
        // their deletion ours to make): refused.
        if spec.record_type == ApiRecordType::Txt && crate::registry::Labels::decode(target).is_ok() {
            errors.push(SourceError::BadTarget {
                key: "spec.targets".to_string(),
                value: target.clone(),
                reason: "a TXT text in external-dns's registry format (heritage=external-dns) is reserved for ownership records".to_string(),
            });
            continue;
        }
        match parse_rdata(spec.record_type, target) {
            Ok(rdata) => {
                if !rdatas.contains(&rdata) {
                    rdatas.push(rdata);
                }
            }
            Err(reason) => errors.push(SourceError::BadTarget {
                key: "spec.targets".to_string(),
                value: target.clone(),
                reason,
            }),
        }
    }
    rdatas.sort();
    match name {
        Ok(name) if errors.is_empty() => Ok(vec![Claim {
            name,
            rtype,
            ttl,
            rdatas,
        }]),
        Ok(_) => Err(errors),
        Err(e) => {
            errors.insert(0, e);
            Err(errors)
        }
    }
}

/// The hickory type of a `DNSRecord` type.
pub fn record_type(rtype: ApiRecordType) -> RecordType {
    match rtype {
        ApiRecordType::A => RecordType::A,
        ApiRecordType::Aaaa => RecordType::AAAA,
        ApiRecordType::Cname => RecordType::CNAME,
        ApiRecordType::Txt => RecordType::TXT,
        ApiRecordType::Srv => RecordType::SRV,
        ApiRecordType::Mx => RecordType::MX,
        ApiRecordType::Caa => RecordType::CAA,
    }
}

/// One target of a `DNSRecord`, in zone-file presentation, as record data.
pub fn parse_rdata(rtype: ApiRecordType, text: &str) -> Result<RData, String> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let number = |field: &str, what: &str| -> Result<u16, String> {
        field
            .parse::<u16>()
            .map_err(|_| format!("{what} {field:?} is not a number from 0 to 65535"))
    };
    let host = |field: &str| parse_name(field, false).map_err(|reason| format!("{field:?}: {reason}"));
    match rtype {
        ApiRecordType::A => text
            .trim()
            .parse()
            .map(|a| RData::A(A(a)))
            .map_err(|_| "not an IPv4 address".to_string()),
        ApiRecordType::Aaaa => text
            .trim()
            .parse()
            .map(|a| RData::AAAA(AAAA(a)))
            .map_err(|_| "not an IPv6 address".to_string()),
        ApiRecordType::Cname => match fields.as_slice() {
            [target] => Ok(RData::CNAME(CNAME(host(target)?))),
            _ => Err("a CNAME target is one host name".to_string()),
        },
        ApiRecordType::Txt => {
            if text.is_empty() {
                return Err("empty text".to_string());
            }
            // One string per target, in 255-byte character-strings (RFC 1035 section 3.3.14).
            Ok(RData::TXT(TXT::from_bytes(text.as_bytes().chunks(255).collect())))
        }
        ApiRecordType::Srv => match fields.as_slice() {
            [priority, weight, port, target] => Ok(RData::SRV(SRV::new(
                number(priority, "priority")?,
                number(weight, "weight")?,
                number(port, "port")?,
                host(target)?,
            ))),
            _ => Err("an SRV target is \"<priority> <weight> <port> <target>\"".to_string()),
        },
        ApiRecordType::Mx => match fields.as_slice() {
            [preference, exchange] => Ok(RData::MX(MX::new(
                number(preference, "preference")?,
                host(exchange)?,
            ))),
            _ => Err("an MX target is \"<preference> <exchange>\"".to_string()),
        },
        ApiRecordType::Caa => parse_caa(text),
    }
}

/// `<flags> <issue|issuewild> "<value>"` (RFC 8659 presentation); flags 0 or 128 (issuer critical).
fn parse_caa(text: &str) -> Result<RData, String> {
    let usage = "a CAA target is `<flags> <issue|issuewild> \"<value>\"`, e.g. `0 issue \"letsencrypt.org\"`";
    let mut parts = text.trim().splitn(3, char::is_whitespace);
    let (Some(flags), Some(tag), Some(value)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage.to_string());
    };
    let critical = match flags {
        "0" => false,
        "128" => true,
        _ => return Err(format!("CAA flags {flags:?} must be 0 or 128")),
    };
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    let (issuer, options) = read_issuer(value.as_bytes()).map_err(|e| format!("CAA value {value:?}: {e}"))?;
    match tag.to_ascii_lowercase().as_str() {
        "issue" => Ok(RData::CAA(CAA::new_issue(critical, issuer, options))),
        "issuewild" => Ok(RData::CAA(CAA::new_issuewild(critical, issuer, options))),
        other => Err(format!(
            "CAA tag {other:?} is not supported (issue, issuewild); {usage}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_api::dns::DNSRecordSpec;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus};
    use k8s_openapi::api::networking::v1::{
        IngressLoadBalancerIngress, IngressLoadBalancerStatus, IngressRule, IngressSpec, IngressStatus,
        IngressTLS,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::jiff::Timestamp;

    fn zone(key: &str, apex: &str) -> ZoneTarget {
        ZoneTarget::new(key, apex, 300, &SourceFilter::default()).expect("zone")
    }

    fn zones() -> Vec<ZoneTarget> {
        vec![
            zone("apps", "apps.example.com."),
            zone("com", "example.com"),
            zone("org", "example.org."),
        ]
    }

    fn meta(ns: &str, name: &str, age: i64, annotations: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(ns.to_string()),
            // `age` seconds after an epoch: smaller is older.
            creation_timestamp: Some(Time(
                Timestamp::from_second(1_700_000_000 + age).expect("timestamp"),
            )),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// A LoadBalancer Service with status entries (IPs or host names).
    fn lb(name: &str, age: i64, annotations: &[(&str, &str)], status: &[&str]) -> Service {
        Service {
            metadata: meta("default", name, age, annotations),
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                cluster_ips: Some(vec!["10.96.0.10".into()]),
                ..Default::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        status
                            .iter()
                            .map(|s| {
                                if s.parse::<IpAddr>().is_ok() {
                                    LoadBalancerIngress {
                                        ip: Some(s.to_string()),
                                        ..Default::default()
                                    }
                                } else {
                                    LoadBalancerIngress {
                                        hostname: Some(s.to_string()),
                                        ..Default::default()
                                    }
                                }
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            }),
        }
    }

    fn ingress(
        name: &str,
        age: i64,
        annotations: &[(&str, &str)],
        hosts: &[&str],
        tls: &[&str],
        status: &[&str],
    ) -> Ingress {
        Ingress {
            metadata: meta("web", name, age, annotations),
            spec: Some(IngressSpec {
                rules: Some(
                    hosts
                        .iter()
                        .map(|h| IngressRule {
                            host: Some(h.to_string()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                tls: Some(vec![IngressTLS {
                    hosts: Some(tls.iter().map(|h| h.to_string()).collect()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: Some(IngressStatus {
                load_balancer: Some(IngressLoadBalancerStatus {
                    ingress: Some(
                        status
                            .iter()
                            .map(|s| IngressLoadBalancerIngress {
                                ip: s.parse::<IpAddr>().is_ok().then(|| s.to_string()),
                                hostname: s.parse::<IpAddr>().is_err().then(|| s.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
            }),
        }
    }

    fn record(
        name: &str,
        age: i64,
        fqdn: &str,
        rtype: ApiRecordType,
        ttl: Option<i64>,
        targets: &[&str],
    ) -> DNSRecord {
        let mut r = DNSRecord::new(
            name,
            DNSRecordSpec {
                name: fqdn.to_string(),
                record_type: rtype,
                ttl,
                targets: targets.iter().map(|t| t.to_string()).collect(),
            },
        );
        r.metadata = meta("certs", name, age, &[]);
        r
    }

    /// The desired records of a zone as `name TTL TYPE data` lines, for readable tables.
    fn lines(d: &Desired, zone: &str) -> Vec<String> {
        d.zones[zone]
            .records()
            .iter()
            .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
            .collect()
    }

    fn reasons(d: &Desired) -> Vec<String> {
        d.problems
            .iter()
            .flat_map(|p| {
                p.errors
                    .iter()
                    .map(move |e| format!("{} {}", p.resource, e.reason()))
            })
            .collect()
    }

    const H: &str = annotations::HOSTNAME;
    const EXT: &str = annotations::EXTERNAL_DNS_HOSTNAME;
    const ALPHA: &str = annotations::EXTERNAL_DNS_ALPHA_HOSTNAME;

    #[test]
    fn services_by_annotation() {
        struct Case {
            name: &'static str,
            annotations: &'static [(&'static str, &'static str)],
            status: &'static [&'static str],
            want: &'static [&'static str],
            problems: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "own prefix",
                annotations: &[(H, "app.apps.example.com")],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "external-dns.kubernetes.io prefix (v0.22+)",
                annotations: &[(EXT, "app.apps.example.com")],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "external-dns.alpha.kubernetes.io prefix (before v0.22)",
                annotations: &[(ALPHA, "app.apps.example.com.")],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "own prefix wins over both aliases",
                annotations: &[
                    (ALPHA, "alpha.apps.example.com"),
                    (EXT, "ext.apps.example.com"),
                    (H, "own.apps.example.com"),
                ],
                status: &["192.0.2.10"],
                want: &["own.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "v0.22 key wins over the alpha key",
                annotations: &[(ALPHA, "alpha.apps.example.com"), (EXT, "ext.apps.example.com")],
                status: &["192.0.2.10"],
                want: &["ext.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "comma list, blanks, upper case, dual stack",
                annotations: &[(H, " B.apps.example.com, ,a.apps.example.com ")],
                status: &["2001:db8::10", "192.0.2.10"],
                want: &[
                    "a.apps.example.com. 300 A 192.0.2.10",
                    "a.apps.example.com. 300 AAAA 2001:db8::10",
                    "b.apps.example.com. 300 A 192.0.2.10",
                    "b.apps.example.com. 300 AAAA 2001:db8::10",
                ],
                problems: &[],
            },
            Case {
                name: "status host name: CNAME",
                annotations: &[(H, "app.apps.example.com")],
                status: &["lb.provider.net"],
                want: &["app.apps.example.com. 300 CNAME lb.provider.net."],
                problems: &[],
            },
            Case {
                name: "status with addresses and a host name: the addresses",
                annotations: &[(H, "app.apps.example.com")],
                status: &["lb.provider.net", "192.0.2.10"],
                want: &["app.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "two status host names: no CNAME with two targets",
                annotations: &[(H, "app.apps.example.com")],
                status: &["a.provider.net", "b.provider.net"],
                want: &[],
                problems: &["service/default/svc MultipleCNAMETargets"],
            },
            Case {
                name: "target override with addresses (alpha key)",
                annotations: &[
                    (H, "app.apps.example.com"),
                    (
                        annotations::EXTERNAL_DNS_ALPHA_TARGET,
                        "198.51.100.1,198.51.100.2",
                    ),
                ],
                status: &["192.0.2.10"],
                want: &[
                    "app.apps.example.com. 300 A 198.51.100.1",
                    "app.apps.example.com. 300 A 198.51.100.2",
                ],
                problems: &[],
            },
            Case {
                name: "target override with a host name",
                annotations: &[
                    (H, "app.apps.example.com"),
                    (annotations::EXTERNAL_DNS_TARGET, "edge.example.net"),
                ],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 300 CNAME edge.example.net."],
                problems: &[],
            },
            Case {
                name: "target mixing addresses and host names",
                annotations: &[
                    (H, "app.apps.example.com"),
                    (annotations::TARGET, "192.0.2.1,edge.example.net"),
                ],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadTarget"],
            },
            Case {
                name: "target that is neither",
                annotations: &[(H, "app.apps.example.com"), (annotations::TARGET, "not an ip")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadTarget"],
            },
            Case {
                name: "ttl seconds",
                annotations: &[(H, "app.apps.example.com"), (annotations::TTL, "60")],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 60 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "ttl duration under the v0.22 key",
                annotations: &[
                    (H, "app.apps.example.com"),
                    (annotations::EXTERNAL_DNS_TTL, "1h30m"),
                ],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 5400 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "ttl under the alpha key",
                annotations: &[
                    (H, "app.apps.example.com"),
                    (annotations::EXTERNAL_DNS_ALPHA_TTL, "2m"),
                ],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 120 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "bad ttl: nothing published",
                annotations: &[(H, "app.apps.example.com"), (annotations::TTL, "soon")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadTTL"],
            },
            Case {
                name: "ttl 0",
                annotations: &[(H, "app.apps.example.com"), (annotations::TTL, "0")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadTTL"],
            },
            Case {
                name: "ttl above 2^31-1",
                annotations: &[(H, "app.apps.example.com"), (annotations::TTL, "2147483648")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadTTL"],
            },
            Case {
                name: "wildcard",
                annotations: &[(H, "*.apps.example.com")],
                status: &["192.0.2.10"],
                want: &["*.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "wildcard not first",
                annotations: &[(H, "a.*.apps.example.com")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadHostname"],
            },
            Case {
                name: "one name outside every zone: nothing for the object",
                annotations: &[(H, "ok.apps.example.com,app.elsewhere.net")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc OutsideZones"],
            },
            Case {
                name: "label-wise zone match (badexample.com is not in example.com)",
                annotations: &[(H, "www.badexample.com")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc OutsideZones"],
            },
            Case {
                name: "no status yet: nothing, no problem",
                annotations: &[(H, "app.apps.example.com")],
                status: &[],
                want: &[],
                problems: &[],
            },
            Case {
                name: "excluded",
                annotations: &[(H, "app.apps.example.com"), (annotations::EXCLUDE, "true")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &[],
            },
            Case {
                name: "exclude false",
                annotations: &[(H, "app.apps.example.com"), (annotations::EXCLUDE, "False")],
                status: &["192.0.2.10"],
                want: &["app.apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "exclude with a bad value",
                annotations: &[(H, "app.apps.example.com"), (annotations::EXCLUDE, "yes")],
                status: &["192.0.2.10"],
                want: &[],
                problems: &["service/default/svc BadAnnotation"],
            },
            Case {
                name: "no annotation: nothing",
                annotations: &[],
                status: &["192.0.2.10"],
                want: &[],
                problems: &[],
            },
            Case {
                name: "CNAME at a zone apex",
                annotations: &[(H, "apps.example.com")],
                status: &["lb.provider.net"],
                want: &[],
                problems: &["service/default/svc CNAMEAtApex"],
            },
            Case {
                name: "addresses at a zone apex",
                annotations: &[(H, "apps.example.com")],
                status: &["192.0.2.10"],
                want: &["apps.example.com. 300 A 192.0.2.10"],
                problems: &[],
            },
            Case {
                name: "internal-hostname: cluster IP (v0.22 key)",
                annotations: &[(
                    annotations::EXTERNAL_DNS_INTERNAL_HOSTNAME,
                    "app.internal.apps.example.com",
                )],
                status: &["192.0.2.10"],
                want: &["app.internal.apps.example.com. 300 A 10.96.0.10"],
                problems: &[],
            },
            Case {
                name: "internal-hostname and hostname at one name, CNAME beside A",
                annotations: &[
                    (annotations::INTERNAL_HOSTNAME, "x.apps.example.com"),
                    (H, "x.apps.example.com"),
                ],
                status: &["lb.provider.net"],
                want: &[],
                problems: &["service/default/svc CNAMEAndOtherData"],
            },
            Case {
                name: "internal-hostname and hostname",
                annotations: &[
                    (
                        annotations::EXTERNAL_DNS_ALPHA_INTERNAL_HOSTNAME,
                        "in.apps.example.com",
                    ),
                    (H, "out.apps.example.com"),
                ],
                status: &["192.0.2.10"],
                want: &[
                    "in.apps.example.com. 300 A 10.96.0.10",
                    "out.apps.example.com. 300 A 192.0.2.10",
                ],
                problems: &[],
            },
        ];
        for case in cases {
            let svc = lb("svc", 0, case.annotations, case.status);
            let d = desired(
                &zones(),
                Sources {
                    services: &[svc],
                    ..Default::default()
                },
            );
            assert_eq!(lines(&d, "apps"), case.want, "{}", case.name);
            assert_eq!(reasons(&d), case.problems, "{}: {:?}", case.name, d.problems);
            assert!(d.conflicts.is_empty(), "{}", case.name);
        }
    }

    #[test]
    fn service_types() {
        let mut svc = lb("svc", 0, &[(H, "app.apps.example.com")], &["192.0.2.10"]);
        svc.spec.as_mut().expect("spec").type_ = Some("ClusterIP".into());
        let d = desired(
            &zones(),
            Sources {
                services: std::slice::from_ref(&svc),
                ..Default::default()
            },
        );
        assert_eq!(reasons(&d), ["service/default/svc UnsupportedServiceType"]);

        // A target annotation publishes any Service type.
        svc.metadata
            .annotations
            .as_mut()
            .expect("annotations")
            .insert(annotations::TARGET.into(), "192.0.2.99".into());
        let d = desired(
            &zones(),
            Sources {
                services: std::slice::from_ref(&svc),
                ..Default::default()
            },
        );
        assert_eq!(lines(&d, "apps"), ["app.apps.example.com. 300 A 192.0.2.99"]);

        // Headless: no cluster IP for internal-hostname.
        let mut headless = lb(
            "headless",
            0,
            &[(annotations::INTERNAL_HOSTNAME, "db.apps.example.com")],
            &[],
        );
        let spec = headless.spec.as_mut().expect("spec");
        spec.type_ = Some("ClusterIP".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        let d = desired(
            &zones(),
            Sources {
                services: &[headless],
                ..Default::default()
            },
        );
        assert_eq!(reasons(&d), ["service/default/headless NoClusterIP"]);

        // Being deleted: its records go, no problem reported.
        let mut deleting = lb("gone", 0, &[(H, "app.apps.example.com")], &["192.0.2.10"]);
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let d = desired(
            &zones(),
            Sources {
                services: &[deleting],
                ..Default::default()
            },
        );
        assert!(lines(&d, "apps").is_empty() && d.problems.is_empty());
    }

    #[test]
    fn ingresses() {
        struct Case {
            name: &'static str,
            annotations: &'static [(&'static str, &'static str)],
            hosts: &'static [&'static str],
            tls: &'static [&'static str],
            status: &'static [&'static str],
            want: &'static [&'static str],
            problems: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "every rule host, TLS host and annotation name, once",
                annotations: &[(ALPHA, "extra.apps.example.com,a.apps.example.com")],
                hosts: &["a.apps.example.com", "b.apps.example.com", "a.apps.example.com"],
                tls: &["t.apps.example.com"],
                status: &["192.0.2.20"],
                want: &[
                    "a.apps.example.com. 300 A 192.0.2.20",
                    "b.apps.example.com. 300 A 192.0.2.20",
                    "extra.apps.example.com. 300 A 192.0.2.20",
                    "t.apps.example.com. 300 A 192.0.2.20",
                ],
                problems: &[],
            },
            Case {
                name: "status host name",
                annotations: &[],
                hosts: &["a.apps.example.com"],
                tls: &[],
                status: &["ingress.provider.net"],
                want: &["a.apps.example.com. 300 CNAME ingress.provider.net."],
                problems: &[],
            },
            Case {
                name: "wildcard rule host",
                annotations: &[(annotations::EXTERNAL_DNS_TTL, "30")],
                hosts: &["*.apps.example.com"],
                tls: &[],
                status: &["192.0.2.20"],
                want: &["*.apps.example.com. 30 A 192.0.2.20"],
                problems: &[],
            },
            Case {
                name: "no status yet",
                annotations: &[],
                hosts: &["a.apps.example.com"],
                tls: &[],
                status: &[],
                want: &[],
                problems: &[],
            },
            Case {
                name: "a rule host outside every zone",
                annotations: &[],
                hosts: &["a.apps.example.com", "shop.example.net"],
                tls: &[],
                status: &["192.0.2.20"],
                want: &[],
                problems: &["ingress/web/ing OutsideZones"],
            },
            Case {
                name: "a bad rule host",
                annotations: &[],
                hosts: &["a.apps.example.com", "bad_host!.apps.example.com"],
                tls: &[],
                status: &["192.0.2.20"],
                want: &[],
                problems: &["ingress/web/ing BadHostname"],
            },
            Case {
                name: "excluded",
                annotations: &[(annotations::EXCLUDE, "true")],
                hosts: &["a.apps.example.com"],
                tls: &[],
                status: &["192.0.2.20"],
                want: &[],
                problems: &[],
            },
        ];
        for case in cases {
            let ing = ingress("ing", 0, case.annotations, case.hosts, case.tls, case.status);
            let d = desired(
                &zones(),
                Sources {
                    ingresses: &[ing],
                    ..Default::default()
                },
            );
            assert_eq!(lines(&d, "apps"), case.want, "{}", case.name);
            assert_eq!(reasons(&d), case.problems, "{}: {:?}", case.name, d.problems);
        }
    }

    #[test]
    fn dns_records() {
        use ApiRecordType::*;
        struct Case {
            name: &'static str,
            rtype: ApiRecordType,
            ttl: Option<i64>,
            targets: &'static [&'static str],
            want: &'static [&'static str],
            problem: Option<&'static str>,
        }
        let n = "r.apps.example.com";
        let cases = [
            Case {
                name: "A",
                rtype: A,
                ttl: Some(60),
                targets: &["192.0.2.1", "192.0.2.1", "192.0.2.2"],
                want: &[
                    "r.apps.example.com. 60 A 192.0.2.1",
                    "r.apps.example.com. 60 A 192.0.2.2",
                ],
                problem: None,
            },
            Case {
                name: "AAAA",
                rtype: Aaaa,
                ttl: None,
                targets: &["2001:db8::1"],
                want: &["r.apps.example.com. 300 AAAA 2001:db8::1"],
                problem: None,
            },
            Case {
                name: "CNAME",
                rtype: Cname,
                ttl: None,
                targets: &["target.example.net"],
                want: &["r.apps.example.com. 300 CNAME target.example.net."],
                problem: None,
            },
            Case {
                name: "TXT",
                rtype: Txt,
                ttl: None,
                targets: &["token-1", "v=spf1 -all"],
                want: &[
                    "r.apps.example.com. 300 TXT token-1",
                    "r.apps.example.com. 300 TXT v=spf1 -all",
                ],
                problem: None,
            },
            Case {
                name: "SRV",
                rtype: Srv,
                ttl: None,
                targets: &["10 5 443 web.apps.example.com"],
                want: &["r.apps.example.com. 300 SRV 10 5 443 web.apps.example.com."],
                problem: None,
            },
            Case {
                name: "MX",
                rtype: Mx,
                ttl: None,
                targets: &["10 mail.example.com."],
                want: &["r.apps.example.com. 300 MX 10 mail.example.com."],
                problem: None,
            },
            Case {
                name: "CAA issue",
                rtype: Caa,
                ttl: None,
                targets: &["0 issue \"letsencrypt.org\""],
                want: &["r.apps.example.com. 300 CAA 0 issue \"letsencrypt.org\""],
                problem: None,
            },
            Case {
                name: "CAA issuewild critical",
                rtype: Caa,
                ttl: None,
                targets: &["128 issuewild \";\""],
                want: &["r.apps.example.com. 300 CAA 128 issuewild \";\""],
                problem: None,
            },
            Case {
                name: "A with an IPv6 address",
                rtype: A,
                ttl: None,
                targets: &["2001:db8::1"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "AAAA with an IPv4 address",
                rtype: Aaaa,
                ttl: None,
                targets: &["192.0.2.1"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "two CNAME targets",
                rtype: Cname,
                ttl: None,
                targets: &["a.example.net", "b.example.net"],
                want: &[],
                problem: Some("MultipleCNAMETargets"),
            },
            Case {
                name: "CNAME to a bad name",
                rtype: Cname,
                ttl: None,
                targets: &["a b"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "SRV missing a field",
                rtype: Srv,
                ttl: None,
                targets: &["10 5 web.example.com"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "SRV port out of range",
                rtype: Srv,
                ttl: None,
                targets: &["10 5 70000 web.example.com"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "MX without preference",
                rtype: Mx,
                ttl: None,
                targets: &["mail.example.com"],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "CAA bad flags",
                rtype: Caa,
                ttl: None,
                targets: &["1 issue \"ca.example\""],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "CAA iodef unsupported",
                rtype: Caa,
                ttl: None,
                targets: &["0 iodef \"mailto:a@example.com\""],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "TXT forging a registry record",
                rtype: Txt,
                ttl: None,
                targets: &[
                    "heritage=external-dns,external-dns/owner=ferrite-dns,external-dns/resource=service/a/b",
                ],
                want: &[],
                problem: Some("BadTarget"),
            },
            Case {
                name: "TTL 0",
                rtype: A,
                ttl: Some(0),
                targets: &["192.0.2.1"],
                want: &[],
                problem: Some("BadTTL"),
            },
            Case {
                name: "no targets",
                rtype: Txt,
                ttl: None,
                targets: &[],
                want: &[],
                problem: Some("BadTarget"),
            },
        ];
        for case in cases {
            let r = record("rec", 0, n, case.rtype, case.ttl, case.targets);
            let d = desired(
                &zones(),
                Sources {
                    records: &[r],
                    ..Default::default()
                },
            );
            assert_eq!(lines(&d, "apps"), case.want, "{}", case.name);
            let want: Vec<String> = case
                .problem
                .iter()
                .map(|p| format!("dnsrecord/certs/rec {p}"))
                .collect();
            assert_eq!(reasons(&d), want, "{}: {:?}", case.name, d.problems);
            if case.problem.is_none() {
                assert_eq!(
                    d.placements.get(&Resource {
                        kind: "dnsrecord".into(),
                        namespace: "certs".into(),
                        name: "rec".into()
                    }),
                    Some(&BTreeSet::from(["apps".to_string()])),
                    "{}",
                    case.name
                );
            }
        }
        // A wildcard DNSRecord, and a name in a zone that is the longest match of nested zones.
        let d = desired(
            &zones(),
            Sources {
                records: &[
                    record("w", 0, "*.apps.example.com", A, None, &["192.0.2.1"]),
                    record("c", 0, "www.example.com", A, None, &["192.0.2.2"]),
                ],
                ..Default::default()
            },
        );
        assert_eq!(lines(&d, "apps"), ["*.apps.example.com. 300 A 192.0.2.1"]);
        assert_eq!(lines(&d, "com"), ["www.example.com. 300 A 192.0.2.2"]);
        assert!(lines(&d, "org").is_empty());
    }

    #[test]
    fn index_changes_only_what_an_object_touches() {
        let targets = vec![zone("apps", "apps.example.com."), zone("org", "example.org.")];
        let svc = |name: &str, age, host: &str, ip: &str| lb(name, age, &[(H, host)], &[ip]);
        let keys = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        let objects = |set: BTreeSet<Arc<Resource>>| set.iter().map(|r| r.to_string()).collect::<Vec<_>>();
        let zone_lines = |index: &Index, zone: &str| -> Vec<String> {
            index
                .records(zone)
                .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
                .collect()
        };
        let mut index = Index::default();
        index.set_zones(targets.clone());
        // Every step: the same result as computing everything from scratch.
        let mut live: BTreeMap<String, Service> = BTreeMap::new();
        let mut step = |index: &mut Index, name: &str, object: Option<Service>| {
            let resource = Resource {
                kind: "service".into(),
                namespace: "default".into(),
                name: name.into(),
            };
            index.apply(&resource, object.as_ref().and_then(SourceObject::from_service));
            match object {
                Some(o) => live.insert(name.to_string(), o),
                None => live.remove(name),
            };
            let services: Vec<Service> = live.values().cloned().collect();
            assert_eq!(
                index.desired(),
                desired(
                    &targets,
                    Sources {
                        services: &services,
                        ..Default::default()
                    }
                ),
                "after {name}"
            );
        };

        step(
            &mut index,
            "old",
            Some(svc("old", 1, "x.apps.example.com", "192.0.2.1")),
        );
        step(
            &mut index,
            "other",
            Some(svc("other", 2, "y.example.org", "192.0.2.9")),
        );
        assert_eq!(keys(index.take_dirty_zones()), ["apps", "org"]);
        index.take_dirty_objects();

        // The same object again (a status write, a resync): no zone to rebuild.
        step(
            &mut index,
            "old",
            Some(svc("old", 1, "x.apps.example.com", "192.0.2.1")),
        );
        assert!(index.take_dirty_zones().is_empty());
        assert_eq!(objects(index.take_dirty_objects()), ["service/default/old"]);

        // An update: its zone only, its own status only, the other zone's records untouched.
        step(
            &mut index,
            "old",
            Some(svc("old", 1, "x.apps.example.com", "192.0.2.2")),
        );
        assert_eq!(keys(index.take_dirty_zones()), ["apps"]);
        assert_eq!(objects(index.take_dirty_objects()), ["service/default/old"]);
        assert_eq!(
            zone_lines(&index, "apps"),
            ["x.apps.example.com. 300 A 192.0.2.2"]
        );
        assert_eq!(zone_lines(&index, "org"), ["y.example.org. 300 A 192.0.2.9"]);
        assert_eq!((index.record_count("apps"), index.record_count("org")), (1, 1));

        // A newer object claiming the name with other data loses it: a conflict, the records stay.
        step(
            &mut index,
            "new",
            Some(svc("new", 10, "x.apps.example.com", "192.0.2.3")),
        );
        assert_eq!(keys(index.take_dirty_zones()), ["apps"]);
        assert_eq!(
            objects(index.take_dirty_objects()),
            ["service/default/new", "service/default/old"]
        );
        assert_eq!(
            zone_lines(&index, "apps"),
            ["x.apps.example.com. 300 A 192.0.2.2"]
        );
        let conflict = index.conflicts_in("apps").first().map(|c| c.to_string());
        assert_eq!(
            conflict.as_deref(),
            Some(
                "x.apps.example.com. A is claimed by service/default/old (older, kept) and by service/default/new (A, left out)"
            )
        );
        let new = Resource::parse("service/default/new").expect("resource");
        assert!(matches!(index.outcome(&new), Some(Outcome::Lost(_))));

        // The older one deleted: the newer one wins, the conflict is gone.
        step(&mut index, "old", None);
        assert_eq!(keys(index.take_dirty_zones()), ["apps"]);
        assert_eq!(
            zone_lines(&index, "apps"),
            ["x.apps.example.com. 300 A 192.0.2.3"]
        );
        assert!(index.conflicts_in("apps").is_empty());
        assert_eq!(
            index.outcome(&new),
            Some(Outcome::Placed {
                zones: vec!["apps".into()],
                lost: None
            })
        );

        // A bad annotation: a problem, its records go; fixed again: back.
        step(
            &mut index,
            "new",
            Some(lb(
                "new",
                10,
                &[(H, "x.apps.example.com"), (annotations::TTL, "soon")],
                &["192.0.2.3"],
            )),
        );
        assert_eq!(keys(index.take_dirty_zones()), ["apps"]);
        assert_eq!(index.record_count("apps"), 0);
        assert!(matches!(index.outcome(&new), Some(Outcome::Problem(_))));
        step(
            &mut index,
            "new",
            Some(svc("new", 10, "x.apps.example.com", "192.0.2.3")),
        );
        assert_eq!(index.record_count("apps"), 1);

        // The zones change: everything placed again, every zone dirty.
        index.take_dirty_zones();
        index.set_zones(vec![zone("apps", "apps.example.com.")]);
        assert_eq!(keys(index.take_dirty_zones()), ["apps", "org"]);
        assert_eq!(index.record_count("org"), 0);
        assert!(matches!(
            index.outcome(&Resource::parse("service/default/other").expect("resource")),
            Some(Outcome::Problem(_))
        ));

        // Deleted: nothing left, and nothing held.
        index.apply(&new, None);
        assert!(zone_lines(&index, "apps").is_empty());
        assert_eq!(index.outcome(&new), None);
    }

    #[test]
    fn conflicts() {
        struct Case {
            name: &'static str,
            objects: Vec<Service>,
            want: &'static [&'static str],
            conflicts: &'static [&'static str],
            owner: &'static str,
        }
        let a = |name: &'static str, age, host: &'static str, ip: &'static str| {
            lb(name, age, &[(H, host)], &[ip])
        };
        let cases = [
            Case {
                name: "oldest wins, whatever the list order",
                objects: vec![
                    a("new", 10, "x.apps.example.com", "192.0.2.2"),
                    a("old", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 A 192.0.2.1"],
                conflicts: &[
                    "x.apps.example.com. A is claimed by service/default/old (older, kept) and by service/default/new (A, left out)",
                ],
                owner: "service/default/old",
            },
            Case {
                name: "same creation time: kind, namespace, name decide",
                objects: vec![
                    a("b", 5, "x.apps.example.com", "192.0.2.2"),
                    a("a", 5, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 A 192.0.2.1"],
                conflicts: &[
                    "x.apps.example.com. A is claimed by service/default/a (older, kept) and by service/default/b (A, left out)",
                ],
                owner: "service/default/a",
            },
            Case {
                name: "same data: shared, no conflict, the older owns",
                objects: vec![
                    a("new", 10, "x.apps.example.com", "192.0.2.1"),
                    a("old", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 A 192.0.2.1"],
                conflicts: &[],
                owner: "service/default/old",
            },
            Case {
                name: "A and AAAA from two objects: no conflict",
                objects: vec![
                    a("v6", 10, "x.apps.example.com", "2001:db8::1"),
                    a("v4", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &[
                    "x.apps.example.com. 300 A 192.0.2.1",
                    "x.apps.example.com. 300 AAAA 2001:db8::1",
                ],
                conflicts: &[],
                owner: "service/default/v4",
            },
            Case {
                name: "CNAME after an A: the CNAME loses",
                objects: vec![
                    a("alias", 10, "x.apps.example.com", "lb.provider.net"),
                    a("addr", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 A 192.0.2.1"],
                conflicts: &[
                    "x.apps.example.com. A is claimed by service/default/addr (older, kept) and by service/default/alias (CNAME, left out)",
                ],
                owner: "service/default/addr",
            },
            Case {
                name: "A after a CNAME: the A loses",
                objects: vec![
                    a("alias", 1, "x.apps.example.com", "lb.provider.net"),
                    a("addr", 10, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 CNAME lb.provider.net."],
                conflicts: &[
                    "x.apps.example.com. CNAME is claimed by service/default/alias (older, kept) and by service/default/addr (A, left out)",
                ],
                owner: "service/default/alias",
            },
            Case {
                name: "the loser keeps its other names",
                objects: vec![
                    lb(
                        "new",
                        10,
                        &[(H, "x.apps.example.com,y.apps.example.com")],
                        &["192.0.2.2"],
                    ),
                    a("old", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &[
                    "x.apps.example.com. 300 A 192.0.2.1",
                    "y.apps.example.com. 300 A 192.0.2.2",
                ],
                conflicts: &[
                    "x.apps.example.com. A is claimed by service/default/old (older, kept) and by service/default/new (A, left out)",
                ],
                owner: "service/default/old",
            },
            Case {
                name: "the loser loses the whole name (its AAAA too)",
                objects: vec![
                    lb(
                        "new",
                        10,
                        &[(H, "x.apps.example.com")],
                        &["192.0.2.2", "2001:db8::2"],
                    ),
                    a("old", 1, "x.apps.example.com", "192.0.2.1"),
                ],
                want: &["x.apps.example.com. 300 A 192.0.2.1"],
                conflicts: &[
                    "x.apps.example.com. A is claimed by service/default/old (older, kept) and by service/default/new (A, left out)",
                ],
                owner: "service/default/old",
            },
        ];
        for case in cases {
            let d = desired(
                &zones(),
                Sources {
                    services: &case.objects,
                    ..Default::default()
                },
            );
            assert_eq!(lines(&d, "apps"), case.want, "{}", case.name);
            let conflicts: Vec<String> = d.conflicts.iter().map(ToString::to_string).collect();
            assert_eq!(conflicts, case.conflicts, "{}", case.name);
            let x = parse_name("x.apps.example.com", false).expect("name");
            let owner = d.zones["apps"]
                .sets
                .iter()
                .find(|s| s.name == x)
                .map(|s| s.owner.to_string());
            assert_eq!(owner.as_deref(), Some(case.owner), "{}", case.name);
            assert!(d.problems.is_empty(), "{}", case.name);
        }
        // Across kinds: an Ingress older than a Service wins.
        let d = desired(
            &zones(),
            Sources {
                services: &[a("svc", 10, "x.apps.example.com", "192.0.2.1")],
                ingresses: &[ingress(
                    "ing",
                    1,
                    &[],
                    &["x.apps.example.com"],
                    &[],
                    &["192.0.2.9"],
                )],
                ..Default::default()
            },
        );
        assert_eq!(lines(&d, "apps"), ["x.apps.example.com. 300 A 192.0.2.9"]);
        assert_eq!(d.conflicts[0].loser.to_string(), "service/default/svc");
    }

    #[test]
    fn zone_filters() {
        let web_only = SourceFilter {
            namespaces: vec!["web".into()],
            ..Default::default()
        };
        let labelled = SourceFilter {
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("dns".to_string(), "public".to_string())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let records_only = SourceFilter {
            kinds: vec![SourceKind::DnsRecord],
            ..Default::default()
        };
        let svc = lb("svc", 0, &[(H, "x.apps.example.com")], &["192.0.2.1"]);
        let mut labelled_svc = svc.clone();
        labelled_svc.metadata.labels = Some(BTreeMap::from([("dns".to_string(), "public".to_string())]));

        // No zone selects the object: nothing and no complaint.
        let only_web = [ZoneTarget::new("apps", "apps.example.com", 300, &web_only).expect("zone")];
        let d = desired(
            &only_web,
            Sources {
                services: std::slice::from_ref(&svc),
                ..Default::default()
            },
        );
        assert!(lines(&d, "apps").is_empty() && d.problems.is_empty());

        // Another zone selects it, but the name's zone does not.
        let two = [
            ZoneTarget::new("apps", "apps.example.com", 300, &web_only).expect("zone"),
            zone("com", "example.com"),
        ];
        let d = desired(
            &two,
            Sources {
                services: std::slice::from_ref(&svc),
                ..Default::default()
            },
        );
        assert_eq!(reasons(&d), ["service/default/svc NotSelectedByZone"]);
        assert!(
            lines(&d, "com").is_empty(),
            "not published in the parent zone either"
        );

        // Label selector.
        let by_label = [ZoneTarget::new("apps", "apps.example.com", 300, &labelled).expect("zone")];
        let d = desired(
            &by_label,
            Sources {
                services: &[svc.clone(), labelled_svc],
                ..Default::default()
            },
        );
        assert_eq!(lines(&d, "apps"), ["x.apps.example.com. 300 A 192.0.2.1"]);
        assert!(d.problems.is_empty());

        // Kinds.
        let kinds = [ZoneTarget::new("apps", "apps.example.com", 60, &records_only).expect("zone")];
        let d = desired(
            &kinds,
            Sources {
                services: std::slice::from_ref(&svc),
                records: &[record(
                    "r",
                    0,
                    "r.apps.example.com",
                    ApiRecordType::A,
                    None,
                    &["192.0.2.5"],
                )],
                ..Default::default()
            },
        );
        assert_eq!(
            lines(&d, "apps"),
            ["r.apps.example.com. 60 A 192.0.2.5"],
            "the zone's defaultTTL"
        );
    }

    #[test]
    fn zone_targets_validated() {
        let bad_selector = SourceFilter {
            label_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                        key: "a".into(),
                        operator: "Sometimes".into(),
                        values: None,
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        for (case, apex, ttl, filter, reason) in [
            (
                "wildcard apex",
                "*.example.com",
                300,
                SourceFilter::default(),
                "InvalidZone",
            ),
            ("empty apex", "", 300, SourceFilter::default(), "InvalidZone"),
            (
                "ttl 0",
                "example.com",
                0,
                SourceFilter::default(),
                "InvalidDefaultTTL",
            ),
            (
                "ttl too large",
                "example.com",
                1 << 31,
                SourceFilter::default(),
                "InvalidDefaultTTL",
            ),
            (
                "bad selector",
                "example.com",
                300,
                bad_selector,
                "InvalidSelector",
            ),
        ] {
            let err = ZoneTarget::new("z", apex, ttl, &filter).expect_err(case);
            assert_eq!(err.reason(), reason, "{case}: {err}");
        }
    }

    #[test]
    fn ttl_and_name_parsing() {
        for (text, want) in [
            ("300", Ok(300)),
            ("1", Ok(1)),
            ("2147483647", Ok(2147483647)),
            ("90s", Ok(90)),
            ("5m", Ok(300)),
            ("1h30m", Ok(5400)),
            ("1h0m10s", Ok(3610)),
            ("0", Err(())),
            ("0s", Err(())),
            ("-5", Err(())),
            ("2147483648", Err(())),
            ("99999999999999999999999", Err(())),
            ("1d", Err(())),
            ("1.5h", Err(())),
            ("m", Err(())),
            ("", Err(())),
        ] {
            assert_eq!(parse_ttl(text).map_err(|_| ()), want, "{text:?}");
        }
        for (text, wildcard, ok) in [
            ("App.Example.COM", false, true),
            ("app.example.com.", false, true),
            ("_acme-challenge.app.example.com", false, true),
            ("*.example.com", true, true),
            ("*.example.com", false, false),
            ("*", true, true),
            ("a.*.example.com", true, false),
            ("*a.example.com", true, false),
            ("a..example.com", true, false),
            ("-a.example.com", true, false),
            ("a-.example.com", true, false),
            ("a b.example.com", true, false),
            (".", true, false),
            ("", true, false),
        ] {
            assert_eq!(
                parse_name(text, wildcard).is_ok(),
                ok,
                "{text:?} wildcard={wildcard}"
            );
        }
        assert_eq!(
            parse_name("App.Example.COM", false).expect("name").to_string(),
            "app.example.com."
        );
        let long = format!("{}.example.com", "a".repeat(64));
        assert!(parse_name(&long, false).is_err());
    }

    #[test]
    fn output_builds_zones() {
        use crate::zone::{SoaConfig, Zone, ZoneConfig};
        let d = desired(
            &zones(),
            Sources {
                services: &[
                    lb(
                        "a",
                        1,
                        &[(H, "a.apps.example.com,*.apps.example.com,apps.example.com")],
                        &["192.0.2.1", "2001:db8::1"],
                    ),
                    lb("b", 2, &[(H, "a.apps.example.com")], &["lb.provider.net"]),
                    lb(
                        "c",
                        3,
                        &[(H, "c.apps.example.com"), (annotations::TTL, "60")],
                        &["lb.provider.net"],
                    ),
                    lb(
                        "d",
                        4,
                        &[(H, "c.apps.example.com"), (annotations::TTL, "120")],
                        &["lb.provider.net"],
                    ),
                ],
                records: &[record(
                    "t",
                    5,
                    "_acme-challenge.a.apps.example.com",
                    ApiRecordType::Txt,
                    None,
                    &["x"],
                )],
                ..Default::default()
            },
        );
        let name = |s: &str| Name::from_ascii(s).expect("name");
        let config = ZoneConfig {
            apex: name("apps.example.com."),
            soa: SoaConfig {
                mname: name("ns1.apps.example.com."),
                rname: name("hostmaster.apps.example.com."),
                serial: 1,
                refresh: 3600,
                retry: 600,
                expire: 86400,
                minimum: 60,
                ttl: 3600,
            },
            nameservers: vec![name("ns1.apps.example.com.")],
            ns_ttl: 3600,
        };
        let zone = Zone::build(&config, d.zones["apps"].records()).expect("desired records always build");
        assert_eq!(
            d.conflicts.len(),
            1,
            "b's CNAME beside a's addresses lost: {:?}",
            d.conflicts
        );
        // c and d agree on the data, not the TTL: one RRset, the older object's TTL.
        let c = d.zones["apps"]
            .get(&name("c.apps.example.com."), RecordType::CNAME)
            .expect("c");
        assert_eq!((c.ttl, c.owner.name.as_str()), (60, "c"));
        // SOA, NS, A+AAAA at a, * and the apex, the CNAME at c, the TXT.
        assert!(format!("{zone:?}").contains("records: 10"), "{zone:?}");
    }

    fn embedded(name: &str, apex: &str, provider: ferrite_api::dns::EmbeddedProvider) -> DNSZone {
        use ferrite_api::dns::{DNSZoneSpec, Policy, Provider};
        DNSZone::new(
            name,
            DNSZoneSpec {
                zone: apex.into(),
                provider: Provider::Embedded(provider),
                policy: Policy::Sync,
                owner_id: "ferrite-dns".into(),
                default_ttl: 300,
                sources: None,
                registry: None,
                max_delete_percent: 50,
            },
        )
    }

    #[test]
    fn embedded_zone_settings() {
        use ferrite_api::dns::{EmbeddedProvider, SoaSettings};
        // Every default.
        let zone = embedded("apps", "apps.example.com", EmbeddedProvider::default());
        let (config, glue) = embedded_zone(&zone, 7).expect("valid").expect("embedded");
        assert_eq!(config.apex.to_string(), "apps.example.com.");
        assert_eq!(
            config.nameservers,
            [parse_name("ns1.apps.example.com", false).expect("ns")]
        );
        assert_eq!(config.soa.mname.to_string(), "ns1.apps.example.com.");
        assert_eq!(config.soa.rname.to_string(), "hostmaster.apps.example.com.");
        assert_eq!(
            (
                config.soa.serial,
                config.soa.refresh,
                config.soa.retry,
                config.soa.expire,
                config.soa.minimum,
                config.soa.ttl,
                config.ns_ttl
            ),
            (7, 3600, 600, 86400, 60, 3600, 3600)
        );
        assert!(glue.is_empty());

        // Given values and glue; the glue and the zone build together.
        let zone = embedded(
            "apps",
            "apps.example.com.",
            EmbeddedProvider {
                nameservers: vec!["ns-a.apps.example.com".into(), "ns.other.net.".into()],
                nameserver_addresses: BTreeMap::from([(
                    "ns-a.apps.example.com".to_string(),
                    vec!["192.0.2.53".to_string(), "2001:db8::53".to_string()],
                )]),
                ns_ttl: Some(600),
                soa: Some(SoaSettings {
                    rname: Some("dns.example.com".into()),
                    minimum: Some(30),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        let (config, glue) = embedded_zone(&zone, 1).expect("valid").expect("embedded");
        assert_eq!(config.soa.mname.to_string(), "ns-a.apps.example.com.");
        assert_eq!(
            (
                config.soa.rname.to_string().as_str(),
                config.soa.minimum,
                config.ns_ttl
            ),
            ("dns.example.com.", 30, 600)
        );
        let glue: Vec<String> = glue
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.ttl, r.data))
            .collect();
        assert_eq!(
            glue,
            [
                "ns-a.apps.example.com. 600 192.0.2.53",
                "ns-a.apps.example.com. 600 2001:db8::53"
            ]
        );
        let records = embedded_zone(&zone, 1).expect("valid").expect("embedded").1;
        crate::zone::Zone::build(&config, records).expect("glue builds");

        // The in-zone name server is reserved: an object claiming it is refused, the other one is not.
        let target = ZoneTarget::from_zone(&zone).expect("target");
        assert_eq!(
            target.reserved,
            BTreeSet::from([parse_name("ns-a.apps.example.com", false).expect("ns")])
        );
        let d = desired(
            &[target],
            Sources {
                services: &[
                    lb("svc", 0, &[(H, "ns-a.apps.example.com")], &["192.0.2.1"]),
                    lb("ok", 0, &[(H, "ns-b.apps.example.com")], &["192.0.2.1"]),
                ],
                ..Default::default()
            },
        );
        assert_eq!(reasons(&d), ["service/default/svc ReservedName"]);
        assert_eq!(lines(&d, "apps"), ["ns-b.apps.example.com. 300 A 192.0.2.1"]);

        // Bad settings, each named.
        let bad = |p: EmbeddedProvider| {
            embedded_zone(&embedded("apps", "apps.example.com", p), 1)
                .expect_err("bad")
                .reason()
        };
        assert_eq!(
            bad(EmbeddedProvider {
                nameservers: vec!["a..b".into()],
                ..Default::default()
            }),
            "InvalidName"
        );
        assert_eq!(
            bad(EmbeddedProvider {
                nameserver_addresses: BTreeMap::from([(
                    "ns1.apps.example.com".to_string(),
                    vec!["not-an-ip".to_string()]
                )]),
                ..Default::default()
            }),
            "InvalidGlue"
        );
        assert_eq!(
            bad(EmbeddedProvider {
                nameservers: vec!["ns.other.net".into()],
                nameserver_addresses: BTreeMap::from([(
                    "ns.other.net".to_string(),
                    vec!["192.0.2.1".to_string()]
                )]),
                ..Default::default()
            }),
            "InvalidGlue"
        );
        assert_eq!(
            bad(EmbeddedProvider {
                nameserver_addresses: BTreeMap::from([(
                    "ns9.apps.example.com".to_string(),
                    vec!["192.0.2.1".to_string()]
                )]),
                ..Default::default()
            }),
            "InvalidGlue"
        );
        assert_eq!(
            bad(EmbeddedProvider {
                ns_ttl: Some(0),
                ..Default::default()
            }),
            "InvalidSetting"
        );
        assert_eq!(
            bad(EmbeddedProvider {
                soa: Some(SoaSettings {
                    refresh: Some(-1),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            "InvalidSetting"
        );
    }
}
