//! The changes that bring a provider's zone to the desired records, without touching anyone else's.
//!
//! ```text
//!   desired (source::ZoneRecords: RRsets + owner resource)  ─┐
//!   current (every record read from the server, e.g. AXFR)   ─┼─> plan() ──> Plan { deletes, updates, creates,
//!   settings (ownerId, policy, registry affixes, guard)      ─┘                     skipped, guard }
//!                                                                                      │ batches(n)
//!                                                                                      ▼
//!                                                                  RFC 2136 UPDATE messages (provider)
//! ```
//!
//! Ownership is external-dns's TXT registry ([`crate::registry`]): a current RRset is ours only if its
//! registry record names our owner id. The rules, in the order they are applied:
//!
//! 1. Never touch an RRset that is not ours: foreign data at a desired name is reported (`NotOwned`), not
//!    overwritten; a desired RRset whose registry names another owner is not created either.
//! 2. The policy: `sync` creates, updates and deletes; `upsert-only` never deletes; `create-only` only
//!    creates (an owned RRset that differs is reported, not changed).
//! 3. Every create and update writes the registry record in external-dns's format at the new-format name
//!    (`a-<name>`); an owned RRset known only by an old-format registry record gets the new-format one
//!    added (as external-dns does), and the old one goes when the last RRset it owns goes.
//! 4. The deletion guard: while the sources are not fully synced (a watch has not listed, an API call
//!    timed out), nothing is deleted; and a pass that would delete more than `max_delete_percent` of the
//!    owned RRsets (but always at least one may go) deletes nothing. Creates and updates still happen.
//! 5. A create that the server would have to refuse because of what stays at the name (a CNAME beside
//!    other data, either way round; e.g. an A -> CNAME change whose delete was withheld) is withheld too.
//!
//! Everything here is pure: the provider reads the zone, calls [`plan`], sends [`Plan::batches`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ferrite_api::dns::{DNSZone, Policy};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::registry::{Labels, NameMapper, Ownership, RegistryError, Resource};
use crate::source::{ZoneRecords, parse_name};

/// How a zone is reconciled.
#[derive(Debug, Clone)]
pub struct PlanSettings {
    /// The zone's apex (its SOA and NS there are never planned).
    pub apex: Name,
    /// Our owner id (`spec.ownerId`).
    pub owner_id: String,
    /// `spec.policy`.
    pub policy: Policy,
    /// The registry's record names (`spec.registry`).
    pub mapper: NameMapper,
    /// `--txt-wildcard-replacement` again, to find the old-format registry record of a wildcard.
    pub wildcard_replacement: String,
    /// `spec.maxDeletePercent`, 0 to 100.
    pub max_delete_percent: u8,
    /// False while any source watch has not synced or the last list failed: then nothing is deleted.
    pub sources_synced: bool,
}

impl PlanSettings {
    /// Settings with external-dns's registry options; fails on a prefix together with a suffix, or an
    /// owner id the registry text cannot carry.
    pub fn new(
        apex: Name,
        owner_id: &str,
        policy: Policy,
        registry: (&str, &str, &str),
        max_delete_percent: i32,
        sources_synced: bool,
    ) -> Result<PlanSettings, RegistryError> {
        let (prefix, suffix, wildcard) = registry;
        // Refuse an owner id the text cannot carry before any record is written with it.
        Labels::owned(
            owner_id,
            &Resource {
                kind: "k".into(),
                namespace: "n".into(),
                name: "n".into(),
            },
        )?;
        Ok(PlanSettings {
            apex,
            owner_id: owner_id.to_string(),
            policy,
            mapper: NameMapper::new(prefix, suffix, wildcard)?,
            wildcard_replacement: wildcard.to_lowercase(),
            max_delete_percent: max_delete_percent.clamp(0, 100) as u8,
            sources_synced,
        })
    }
}

impl PlanSettings {
    /// The settings of a `DNSZone` (`policy`, `ownerId`, `registry`, `maxDeletePercent`).
    pub fn from_zone(zone: &DNSZone, sources_synced: bool) -> Result<PlanSettings, PlanSettingsError> {
        let spec = &zone.spec;
        let apex = parse_name(&spec.zone, false).map_err(|reason| PlanSettingsError::BadZone {
            zone: spec.zone.clone(),
            reason,
        })?;
        let registry = spec.registry.clone().unwrap_or_default();
        PlanSettings::new(
            apex,
            &spec.owner_id,
            spec.policy,
            (
                &registry.txt_prefix,
                &registry.txt_suffix,
                &registry.txt_wildcard_replacement,
            ),
            spec.max_delete_percent,
            sources_synced,
        )
        .map_err(PlanSettingsError::Registry)
    }
}

/// A `DNSZone` whose settings cannot be planned with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanSettingsError {
    /// `spec.zone` is not a DNS name.
    #[error("spec.zone {zone:?} is not a DNS name: {reason}")]
    BadZone {
        /// The value.
        zone: String,
        /// Why.
        reason: String,
    },
    /// `spec.ownerId` or `spec.registry` cannot be used.
    #[error("{0}")]
    Registry(#[source] RegistryError),
}

impl PlanSettingsError {
    /// A short, stable reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            PlanSettingsError::BadZone { .. } => "InvalidZone",
            PlanSettingsError::Registry(e) => e.reason(),
        }
    }
}

/// What a change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Removes an owned RRset (and its registry records).
    Delete,
    /// Changes an owned RRset's data or TTL, or its registry record.
    Update,
    /// Adds an RRset and its registry record.
    Create,
}

/// One RRset's change, as the records to remove and add (registry TXT records included). Removals are
/// records exactly as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Delete, update or create.
    pub kind: ChangeKind,
    /// The RRset's name.
    pub name: Name,
    /// The RRset's type.
    pub rtype: RecordType,
    /// The object it is published for (creates and updates).
    pub resource: Option<Resource>,
    /// Records to remove.
    pub remove: Vec<Record>,
    /// Records to add.
    pub add: Vec<Record>,
}

impl Change {
    /// Record operations in this change (an UPDATE message's update section size).
    pub fn len(&self) -> usize {
        self.remove.len() + self.add.len()
    }

    /// True if the change does nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a desired or owned RRset is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The name and type hold data we do not own (no registry record, or another owner's).
    NotOwned {
        /// The owner id in the registry record, if any.
        owner: Option<String>,
    },
    /// The policy does not allow the change (`create-only` and an owned RRset that differs).
    Policy {
        /// The change that was not made.
        kind: ChangeKind,
    },
    /// A create the server would refuse: a CNAME beside other data at the name, or the other way round.
    Blocked {
        /// The type at the name that stays.
        by: RecordType,
    },
    /// The registry record's name cannot be made (too long, once the type prefix is added).
    RegistryName {
        /// Why.
        reason: String,
    },
}

impl SkipReason {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            SkipReason::NotOwned { .. } => "NotOwned",
            SkipReason::Policy { .. } => "PolicyForbids",
            SkipReason::Blocked { .. } => "Blocked",
            SkipReason::RegistryName { .. } => "RegistryName",
        }
    }
}

/// An RRset the plan leaves alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The name.
    pub name: Name,
    /// The type.
    pub rtype: RecordType,
    /// The object that wanted it, for desired RRsets.
    pub resource: Option<Resource>,
    /// Why.
    pub reason: SkipReason,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.name, self.rtype)?;
        match &self.reason {
            SkipReason::NotOwned { owner: Some(owner) } => {
                write!(f, "owned by {owner:?}, not by us; left alone")
            }
            SkipReason::NotOwned { owner: None } => {
                write!(f, "exists on the server without a registry record; left alone")
            }
            SkipReason::Policy { kind } => write!(f, "the policy does not allow this {kind:?}"),
            SkipReason::Blocked { by } => write!(
                f,
                "{by} records stay at this name, and a CNAME cannot share a name with other data"
            ),
            SkipReason::RegistryName { reason } => write!(f, "no registry record name: {reason}"),
        }
    }
}

/// Deletions withheld by the deletion guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// The sources are not fully synced, so an absent object may only be unseen.
    SourcesNotSynced {
        /// RRsets that would have been deleted.
        withheld: usize,
    },
    /// More deletions than the guard allows in one pass.
    TooManyDeletions {
        /// RRsets that would have been deleted.
        deletions: usize,
        /// RRsets we own in the zone.
        owned: usize,
        /// `maxDeletePercent`.
        max_percent: u8,
        /// The most one pass may delete.
        allowed: usize,
    },
}

impl Guard {
    /// A short, stable reason for the `DeletionGuard` condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Guard::SourcesNotSynced { .. } => "SourcesNotSynced",
            Guard::TooManyDeletions { .. } => "TooManyDeletions",
        }
    }
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Guard::SourcesNotSynced { withheld } => write!(
                f,
                "{withheld} deletions withheld: the sources are not fully synced (a watch has not listed yet or the last list failed)"
            ),
            Guard::TooManyDeletions {
                deletions,
                owned,
                max_percent,
                allowed,
            } => write!(
                f,
                "{deletions} of {owned} owned record sets would be deleted in one pass, more than maxDeletePercent {max_percent}% allows ({allowed}); nothing deleted. Check the sources, then raise maxDeletePercent to let it through"
            ),
        }
    }
}

/// The changes of one pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Deletions (empty when the guard tripped).
    pub deletes: Vec<Change>,
    /// Updates.
    pub updates: Vec<Change>,
    /// Creates.
    pub creates: Vec<Change>,
    /// RRsets left alone, with the reason.
    pub skipped: Vec<Skipped>,
    /// Set when deletions were withheld.
    pub guard: Option<Guard>,
    /// Data RRsets we own on the server before the pass.
    pub owned: usize,
}

impl Plan {
    /// True if the pass changes nothing.
    pub fn is_empty(&self) -> bool {
        self.deletes.is_empty() && self.updates.is_empty() && self.creates.is_empty()
    }

    /// Every change in the order it must be sent: deletes (so a name is free before a CNAME replaces
    /// its addresses), updates, creates.
    pub fn changes(&self) -> impl Iterator<Item = &Change> {
        self.deletes.iter().chain(&self.updates).chain(&self.creates)
    }

    /// The changes in batches of at most `max_records` record operations (at least one change per
    /// batch: a change is never split, so an RRset and its registry record go in one atomic UPDATE).
    pub fn batches(&self, max_records: usize) -> Vec<Vec<&Change>> {
        let mut batches: Vec<Vec<&Change>> = Vec::new();
        let mut size = 0;
        for change in self.changes() {
            match batches.last_mut() {
                Some(batch) if size + change.len() <= max_records.max(1) => {
                    batch.push(change);
                    size += change.len();
                }
                _ => {
                    batches.push(vec![change]);
                    size = change.len();
                }
            }
        }
        batches
    }
}

/// A current RRset.
#[derive(Debug, Default)]
struct Current {
    records: Vec<Record>,
}

impl Current {
    fn ttl(&self) -> u32 {
        self.records.first().map_or(0, |r| r.ttl)
    }

    fn rdatas(&self) -> BTreeSet<&RData> {
        self.records.iter().map(|r| &r.data).collect()
    }
}

/// Lower-case, without the trailing dot: the key every spelling of a name shares.
fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Computes the changes that bring `current` (every record of the zone on the server) to `desired`.
pub fn plan(settings: &PlanSettings, desired: &ZoneRecords, current: &[Record]) -> Plan {
    let mapper = &settings.mapper;
    let mut ownership = Ownership::new(mapper.clone());
    // Registry records by their own name, and by the record (name, type; no type: old format) they own.
    let mut registry_by_txt_name: BTreeMap<String, Vec<Record>> = BTreeMap::new();
    let mut old_format: BTreeMap<String, String> = BTreeMap::new();
    let mut data: BTreeMap<(Name, RecordType), Current> = BTreeMap::new();
    for record in current {
        let rtype = record.record_type();
        if rtype == RecordType::SOA || (rtype == RecordType::NS && record.name == settings.apex) {
            continue;
        }
        if let RData::TXT(txt) = &record.data
            && Labels::decode_txt(txt).is_ok()
        {
            let txt_name = record.name.to_string();
            if let Some((owned_name, owned_type)) = mapper.to_record_name(&txt_name) {
                ownership.insert(&txt_name, &txt_text(txt));
                registry_by_txt_name
                    .entry(key(&txt_name))
                    .or_default()
                    .push(record.clone());
                if owned_type.is_none() {
                    old_format.insert(key(&owned_name), key(&txt_name));
                }
                continue;
            }
        }
        data.entry((record.name.to_lowercase(), rtype))
            .or_default()
            .records
            .push(record.clone());
    }
    let wanted: BTreeMap<(Name, RecordType), &crate::source::DesiredSet> = desired
        .sets
        .iter()
        .map(|s| ((s.name.to_lowercase(), s.rtype), s))
        .collect();

    let owner_of = |name: &Name, rtype: RecordType| -> Option<&Labels> {
        ownership.labels_for(&name.to_string(), rtype)
    };
    let ours = |name: &Name, rtype: RecordType| {
        owner_of(name, rtype).is_some_and(|l| l.is_owned_by(&settings.owner_id))
    };
    let new_format_name = |name: &Name, rtype: RecordType| -> Result<Name, String> {
        let text = mapper.to_txt_name(&name.to_string(), rtype);
        Name::from_ascii(&text).map_err(|e| format!("{text}: {e}"))
    };

    let mut out = Plan {
        owned: data.keys().filter(|(n, t)| ours(n, *t)).count(),
        ..Plan::default()
    };

    let mut keys: BTreeSet<(Name, RecordType)> = wanted.keys().cloned().collect();
    keys.extend(data.keys().cloned());
    for (name, rtype) in keys {
        let want = wanted.get(&(name.clone(), rtype)).copied();
        let have = data.get(&(name.clone(), rtype));
        let labels = owner_of(&name, rtype);
        let owned = ours(&name, rtype);
        let skip = |reason| Skipped {
            name: name.clone(),
            rtype,
            resource: want.map(|w| w.owner.clone()),
            reason,
        };
        match (want, have) {
            (None, None) => {}
            (None, Some(have)) => {
                if !owned {
                    continue;
                }
                if settings.policy != Policy::Sync {
                    out.skipped.push(skip(SkipReason::Policy {
                        kind: ChangeKind::Delete,
                    }));
                    continue;
                }
                let mut remove = have.records.clone();
                if let Ok(txt_name) = new_format_name(&name, rtype) {
                    remove.extend(
                        registry_by_txt_name
                            .remove(&key(&txt_name.to_string()))
                            .into_iter()
                            .flatten(),
                    );
                }
                out.deletes.push(Change {
                    kind: ChangeKind::Delete,
                    name: name.clone(),
                    rtype,
                    resource: labels
                        .and_then(|l| l.resource())
                        .and_then(|r| Resource::parse(r).ok()),
                    remove,
                    add: Vec::new(),
                });
            }
            (Some(want), have) => {
                if have.is_some() && !owned {
                    out.skipped.push(skip(SkipReason::NotOwned {
                        owner: labels.and_then(|l| l.owner()).map(str::to_string),
                    }));
                    continue;
                }
                if have.is_none()
                    && let Some(labels) = labels
                    && !labels.is_owned_by(&settings.owner_id)
                {
                    // Another owner's registry record for this name and type: theirs, even without data.
                    out.skipped.push(skip(SkipReason::NotOwned {
                        owner: labels.owner().map(str::to_string),
                    }));
                    continue;
                }
                let txt_name = match new_format_name(&name, rtype) {
                    Ok(n) => n,
                    Err(reason) => {
                        out.skipped.push(skip(SkipReason::RegistryName { reason }));
                        continue;
                    }
                };
                let Ok(registry_text) = Labels::owned(&settings.owner_id, &want.owner) else {
                    // Unreachable with validated settings and Kubernetes names; never write a bad text.
                    out.skipped.push(skip(SkipReason::RegistryName {
                        reason: format!("resource {} cannot be a registry label", want.owner),
                    }));
                    continue;
                };
                let registry_rdata = RData::TXT(registry_text.to_txt());
                let registry_now: Vec<Record> = registry_by_txt_name
                    .get(&key(&txt_name.to_string()))
                    .cloned()
                    .unwrap_or_default();
                // Compared as labels, not bytes: a text external-dns split or quoted differently, or with
                // labels of its own beside owner and resource, is the same ownership and is not rewritten.
                let registry_ok = registry_now.len() == 1
                    && match &registry_now[0].data {
                        RData::TXT(txt) => Labels::decode_txt(txt).is_ok_and(|l| {
                            l.owner() == registry_text.owner() && l.resource() == registry_text.resource()
                        }),
                        _ => false,
                    };
                let mut change = Change {
                    kind: if have.is_some() {
                        ChangeKind::Update
                    } else {
                        ChangeKind::Create
                    },
                    name: want.name.clone(),
                    rtype,
                    resource: Some(want.owner.clone()),
                    remove: Vec::new(),
                    add: Vec::new(),
                };
                if rtype == RecordType::CNAME
                    && let Some(old_txt) = old_format.get(&record_key(&name, &settings.wildcard_replacement))
                    && registry_by_txt_name
                        .get(old_txt)
                        .is_some_and(|records| owned_by(records, &settings.owner_id))
                {
                    // An old-format registry TXT at the alias's own name would be "other data" beside
                    // the CNAME (external-dns's reason for the new format): the new-format record replaces it.
                    change
                        .remove
                        .extend(registry_by_txt_name.remove(old_txt).into_iter().flatten());
                }
                if !registry_ok {
                    change.remove.extend(registry_now);
                    change
                        .add
                        .push(Record::from_rdata(txt_name, want.ttl, registry_rdata));
                }
                match have {
                    None => change.add.extend(want.records()),
                    Some(have) => {
                        let now = have.rdatas();
                        let then: BTreeSet<&RData> = want.rdatas.iter().collect();
                        if have.ttl() != want.ttl {
                            // RFC 2136 keeps one TTL per RRset: replace the whole set.
                            change.remove.extend(have.records.iter().cloned());
                            change.add.extend(want.records());
                        } else if now != then {
                            change
                                .remove
                                .extend(have.records.iter().filter(|r| !then.contains(&r.data)).cloned());
                            change
                                .add
                                .extend(want.records().filter(|r| !now.contains(&r.data)));
                        }
                    }
                }
                if change.is_empty() {
                    continue;
                }
                let allowed = match change.kind {
                    ChangeKind::Create => true,
                    _ => settings.policy != Policy::CreateOnly,
                };
                if !allowed {
                    out.skipped.push(skip(SkipReason::Policy { kind: change.kind }));
                    continue;
                }
                match change.kind {
                    ChangeKind::Create => out.creates.push(change),
                    _ => out.updates.push(change),
                }
            }
        }
    }

    let data_deletes = out.deletes.len();

    // Orphaned registry records of ours (no data left and none wanted): removed with a sync pass.
    if settings.policy == Policy::Sync {
        let wanted_txt: BTreeSet<String> = wanted
            .keys()
            .filter_map(|(n, t)| new_format_name(n, *t).ok())
            .map(|n| key(&n.to_string()))
            .collect();
        for (txt_name, records) in std::mem::take(&mut registry_by_txt_name) {
            let Some((owned_name, owned_type)) = mapper.to_record_name(&txt_name) else {
                continue;
            };
            if !owned_by(&records, &settings.owner_id) || wanted_txt.contains(&txt_name) {
                continue;
            }
            let owned_key = key(&owned_name);
            // Data of the owned name that stays after the pass and that this record may own.
            let stays = |t: RecordType| {
                data.iter().any(|((n, dt), _)| {
                    *dt == t
                        && record_key(n, &settings.wildcard_replacement) == owned_key
                        && !out.deletes.iter().any(|c| c.name == *n && c.rtype == *dt)
                })
            };
            let still_needed = match owned_type {
                Some(t) => stays(t),
                // The old format owns every type but AAAA; kept while any of those stays or is wanted.
                None => {
                    data.keys().any(|(n, t)| {
                        *t != RecordType::AAAA
                            && record_key(n, &settings.wildcard_replacement) == owned_key
                            && stays(*t)
                    }) || wanted.keys().any(|(n, t)| {
                        *t != RecordType::AAAA && record_key(n, &settings.wildcard_replacement) == owned_key
                    })
                }
            };
            if still_needed {
                continue;
            }
            // Attach to the deletion of the name's data if there is one (one atomic UPDATE), else its own.
            let name = records[0].name.clone();
            match out
                .deletes
                .iter_mut()
                .find(|c| record_key(&c.name, &settings.wildcard_replacement) == owned_key)
            {
                Some(change) => change.remove.extend(records),
                None => out.deletes.push(Change {
                    kind: ChangeKind::Delete,
                    name,
                    rtype: RecordType::TXT,
                    resource: None,
                    remove: records,
                    add: Vec::new(),
                }),
            }
        }
    }

    // The deletion guard (counting data RRsets; orphaned registry records are withheld with them).
    if !out.deletes.is_empty() && !settings.sources_synced {
        out.guard = Some(Guard::SourcesNotSynced {
            withheld: data_deletes,
        });
        out.deletes.clear();
    } else {
        let allowed = (out.owned * usize::from(settings.max_delete_percent) / 100).max(1);
        if data_deletes > allowed {
            out.guard = Some(Guard::TooManyDeletions {
                deletions: data_deletes,
                owned: out.owned,
                max_percent: settings.max_delete_percent,
                allowed,
            });
            out.deletes.clear();
        }
    }

    // Creates the server would refuse beside what stays at the name.
    let stays: BTreeMap<Name, BTreeSet<RecordType>> = {
        let mut m: BTreeMap<Name, BTreeSet<RecordType>> = BTreeMap::new();
        for (n, t) in data.keys() {
            if !out
                .deletes
                .iter()
                .any(|c| c.name.to_lowercase() == *n && c.rtype == *t)
            {
                m.entry(n.clone()).or_default().insert(*t);
            }
        }
        m
    };
    let mut creates = Vec::new();
    for change in std::mem::take(&mut out.creates) {
        let here = stays.get(&change.name.to_lowercase());
        let blocker = here.and_then(|types| {
            types
                .iter()
                .find(|t| (change.rtype == RecordType::CNAME) != (**t == RecordType::CNAME))
                .copied()
        });
        match blocker {
            Some(by) => out.skipped.push(Skipped {
                name: change.name.clone(),
                rtype: change.rtype,
                resource: change.resource.clone(),
                reason: SkipReason::Blocked { by },
            }),
            None => creates.push(change),
        }
    }
    out.creates = creates;
    out
}

/// A data record's name as the registry's index keys it (a leading `*` replaced as the mapper does).
fn record_key(name: &Name, wildcard_replacement: &str) -> String {
    let text = name.to_string();
    match text.split_once('.') {
        Some(("*", rest)) if !wildcard_replacement.is_empty() => {
            key(&format!("{wildcard_replacement}.{rest}"))
        }
        _ => key(&text),
    }
}

/// True if every record is a registry TXT naming `owner_id`.
fn owned_by(records: &[Record], owner_id: &str) -> bool {
    records.iter().all(|r| match &r.data {
        RData::TXT(txt) => Labels::decode_txt(txt).is_ok_and(|l| l.is_owned_by(owner_id)),
        _ => false,
    })
}

/// A TXT record's character-strings joined (the registry text, however it was split).
fn txt_text(txt: &TXT) -> String {
    let bytes: Vec<u8> = txt.txt_data.iter().flat_map(|p| p.iter().copied()).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::DesiredSet;

    const APEX: &str = "apps.example.com.";

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("name")
    }

    fn rdata(rtype: &str, text: &str) -> RData {
        use ferrite_api::dns::RecordType as T;
        let t = match rtype {
            "A" => T::A,
            "AAAA" => T::Aaaa,
            "CNAME" => T::Cname,
            "TXT" => return RData::TXT(TXT::new(vec![text.to_string()])),
            other => panic!("type {other}"),
        };
        crate::source::parse_rdata(t, text).expect("rdata")
    }

    /// `name TTL TYPE data` -> a record.
    fn rec(line: &str) -> Record {
        let mut parts = line.splitn(4, ' ');
        let (Some(n), Some(ttl), Some(t), Some(d)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("bad test record {line:?}");
        };
        Record::from_rdata(name(n), ttl.parse().expect("ttl"), rdata(t, d))
    }

    fn show(r: &Record) -> String {
        let data = match &r.data {
            RData::TXT(txt) => txt_text(txt),
            other => other.to_string(),
        };
        format!("{} {} {} {}", r.name, r.ttl, r.record_type(), data)
    }

    fn owned_text(owner: &str, resource: &str) -> String {
        format!("heritage=external-dns,external-dns/owner={owner},external-dns/resource={resource}")
    }

    /// A desired RRset: `name TTL TYPE data1,data2` owned by `resource`.
    fn want(line: &str, resource: &str) -> DesiredSet {
        let mut parts = line.splitn(4, ' ');
        let (Some(n), Some(ttl), Some(t), Some(d)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            panic!("bad desired {line:?}");
        };
        let mut rdatas: Vec<RData> = d.split(',').map(|d| rdata(t, d)).collect();
        rdatas.sort();
        DesiredSet {
            name: name(n),
            rtype: rdatas[0].record_type(),
            ttl: ttl.parse().expect("ttl"),
            rdatas,
            owner: Resource::parse(resource).expect("resource"),
        }
    }

    fn settings(policy: Policy, percent: i32, synced: bool) -> PlanSettings {
        PlanSettings::new(name(APEX), "ferrite-dns", policy, ("", "", ""), percent, synced).expect("settings")
    }

    /// The plan as lines: `delete|update|create NAME TYPE: -rec; +rec`, then `skip NAME TYPE Reason`.
    fn lines(plan: &Plan) -> Vec<String> {
        let mut out: Vec<String> = plan
            .changes()
            .map(|c| {
                let ops: Vec<String> = c
                    .remove
                    .iter()
                    .map(|r| format!("-{}", show(r)))
                    .chain(c.add.iter().map(|r| format!("+{}", show(r))))
                    .collect();
                format!("{:?} {} {}: {}", c.kind, c.name, c.rtype, ops.join("; "))
            })
            .collect();
        out.extend(
            plan.skipped
                .iter()
                .map(|s| format!("skip {} {} {}", s.name, s.rtype, s.reason.reason())),
        );
        out
    }

    const SVC: &str = "service/default/app";

    struct Case {
        name: &'static str,
        settings: PlanSettings,
        desired: Vec<DesiredSet>,
        current: Vec<&'static str>,
        want: Vec<String>,
        guard: Option<&'static str>,
    }

    fn run(cases: Vec<Case>) {
        for case in cases {
            let current: Vec<Record> = case.current.iter().map(|l| rec(l)).collect();
            let plan = plan(&case.settings, &ZoneRecords { sets: case.desired }, &current);
            assert_eq!(lines(&plan), case.want, "{}", case.name);
            assert_eq!(
                plan.guard.as_ref().map(Guard::reason),
                case.guard,
                "{}",
                case.name
            );
        }
    }

    fn reg(txt_name: &str, owner: &str, resource: &str) -> &'static str {
        Box::leak(format!("{txt_name} 300 TXT {}", owned_text(owner, resource)).into_boxed_str())
    }

    #[test]
    fn creates_updates_deletes() {
        let sync = || settings(Policy::Sync, 50, true);
        let ours = |n: &str| reg(n, "ferrite-dns", SVC);
        run(vec![
            Case {
                name: "create: the records and the registry record in external-dns's format",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1,192.0.2.2", SVC)],
                current: vec![],
                want: vec![format!(
                    "Create app.apps.example.com. A: +a-app.apps.example.com. 300 TXT {}; +app.apps.example.com. 300 A 192.0.2.1; +app.apps.example.com. 300 A 192.0.2.2",
                    owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
            Case {
                name: "in sync: nothing",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours("a-app.apps.example.com.")],
                want: vec![],
                guard: None,
            },
            Case {
                name: "names compare case-insensitively",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec!["App.Apps.Example.com. 300 A 192.0.2.1", ours("A-App.apps.example.com.")],
                want: vec![],
                guard: None,
            },
            Case {
                name: "update: only the records that differ",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1,192.0.2.3", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", "app.apps.example.com. 300 A 192.0.2.2", ours("a-app.apps.example.com.")],
                want: vec!["Update app.apps.example.com. A: -app.apps.example.com. 300 A 192.0.2.2; +app.apps.example.com. 300 A 192.0.2.3".into()],
                guard: None,
            },
            Case {
                name: "TTL change replaces the set",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 60 A 192.0.2.1", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours("a-app.apps.example.com.")],
                want: vec!["Update app.apps.example.com. A: -app.apps.example.com. 300 A 192.0.2.1; +app.apps.example.com. 60 A 192.0.2.1".into()],
                guard: None,
            },
            Case {
                name: "another object won the name: the registry's resource follows",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", "ingress/web/shop")],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours("a-app.apps.example.com.")],
                want: vec![format!(
                    "Update app.apps.example.com. A: -a-app.apps.example.com. 300 TXT {}; +a-app.apps.example.com. 300 TXT {}",
                    owned_text("ferrite-dns", SVC),
                    owned_text("ferrite-dns", "ingress/web/shop")
                )],
                guard: None,
            },
            Case {
                name: "delete: the records and their registry record",
                settings: sync(),
                desired: vec![],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours("a-app.apps.example.com.")],
                want: vec![format!(
                    "Delete app.apps.example.com. A: -app.apps.example.com. 300 A 192.0.2.1; -a-app.apps.example.com. 300 TXT {}",
                    owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
            Case {
                name: "SOA and apex NS are never planned",
                settings: sync(),
                desired: vec![],
                current: vec![],
                want: vec![],
                guard: None,
            },
        ]);
        // SOA and apex NS from the server: ignored, even though nothing owns them.
        let soa = Record::from_rdata(
            name(APEX),
            3600,
            RData::SOA(hickory_proto::rr::rdata::SOA::new(
                name("ns1.apps.example.com."),
                name("h.apps.example.com."),
                1,
                1,
                1,
                1,
                1,
            )),
        );
        let ns = Record::from_rdata(
            name(APEX),
            3600,
            RData::NS(hickory_proto::rr::rdata::NS(name("ns1.apps.example.com."))),
        );
        let p = plan(&sync(), &ZoneRecords::default(), &[soa, ns]);
        assert!(p.is_empty() && p.skipped.is_empty() && p.owned == 0, "{p:?}");
    }

    #[test]
    fn ownership() {
        let sync = || settings(Policy::Sync, 50, true);
        run(vec![
            Case {
                name: "foreign data without a registry record: left alone",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec!["app.apps.example.com. 300 A 198.51.100.1"],
                want: vec!["skip app.apps.example.com. A NotOwned".into()],
                guard: None,
            },
            Case {
                name: "another owner's records: left alone",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec![
                    "app.apps.example.com. 300 A 198.51.100.1",
                    reg("a-app.apps.example.com.", "cluster-b", SVC),
                ],
                want: vec!["skip app.apps.example.com. A NotOwned".into()],
                guard: None,
            },
            Case {
                name: "another owner's registry record without data: not created over it",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec![reg("a-app.apps.example.com.", "cluster-b", SVC)],
                want: vec!["skip app.apps.example.com. A NotOwned".into()],
                guard: None,
            },
            Case {
                name: "foreign records nobody wants: not touched, not reported",
                settings: sync(),
                desired: vec![],
                current: vec![
                    "www.apps.example.com. 300 A 198.51.100.1",
                    "other.apps.example.com. 300 A 198.51.100.2",
                    reg("a-other.apps.example.com.", "cluster-b", "service/x/y"),
                    "note.apps.example.com. 300 TXT hello",
                ],
                want: vec![],
                guard: None,
            },
            Case {
                name: "a TXT that only looks like ownership (another heritage) is data",
                settings: sync(),
                desired: vec![],
                current: vec![
                    "app.apps.example.com. 300 A 198.51.100.1",
                    "a-app.apps.example.com. 300 TXT heritage=someone-else,external-dns/owner=ferrite-dns",
                ],
                want: vec![],
                guard: None,
            },
            Case {
                name: "old-format registry (TXT at the name itself) owns the A: the new format is added",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec![
                    "app.apps.example.com. 300 A 192.0.2.1",
                    reg("app.apps.example.com.", "ferrite-dns", SVC),
                ],
                want: vec![format!(
                    "Update app.apps.example.com. A: +a-app.apps.example.com. 300 TXT {}",
                    owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
            Case {
                name: "old format never owned AAAA",
                settings: sync(),
                desired: vec![want("app.apps.example.com. 300 AAAA 2001:db8::2", SVC)],
                current: vec![
                    "app.apps.example.com. 300 AAAA 2001:db8::1",
                    reg("app.apps.example.com.", "ferrite-dns", SVC),
                ],
                // The old-format record owns nothing here (no A, CNAME, ...): an orphan of ours, removed.
                want: vec![
                    format!(
                        "Delete app.apps.example.com. TXT: -app.apps.example.com. 300 TXT {}",
                        owned_text("ferrite-dns", SVC)
                    ),
                    "skip app.apps.example.com. AAAA NotOwned".into(),
                ],
                guard: None,
            },
            Case {
                name: "delete with both formats: both registry records go",
                settings: sync(),
                desired: vec![],
                current: vec![
                    "app.apps.example.com. 300 A 192.0.2.1",
                    reg("app.apps.example.com.", "ferrite-dns", SVC),
                    reg("a-app.apps.example.com.", "ferrite-dns", SVC),
                ],
                want: vec![format!(
                    "Delete app.apps.example.com. A: -app.apps.example.com. 300 A 192.0.2.1; -a-app.apps.example.com. 300 TXT {t}; -app.apps.example.com. 300 TXT {t}",
                    t = owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
            Case {
                name: "orphaned registry record of ours: removed",
                settings: sync(),
                desired: vec![],
                current: vec![reg("a-gone.apps.example.com.", "ferrite-dns", SVC)],
                want: vec![format!(
                    "Delete a-gone.apps.example.com. TXT: -a-gone.apps.example.com. 300 TXT {}",
                    owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
            Case {
                name: "orphaned registry record of ours, wanted again: data created under it",
                settings: sync(),
                desired: vec![want("back.apps.example.com. 300 A 192.0.2.1", SVC)],
                current: vec![reg("a-back.apps.example.com.", "ferrite-dns", SVC)],
                want: vec!["Create back.apps.example.com. A: +back.apps.example.com. 300 A 192.0.2.1".into()],
                guard: None,
            },
        ]);
    }

    #[test]
    fn adopts_a_zone_external_dns_manages() {
        // external-dns's registry docs: `--txt-owner-id=my-cluster`, a Service `default/nginx` published as
        // `nginx.apps.example.com`, with the new-format record (and, from v0.12 to v0.17, the old one).
        let current: Vec<Record> = [
            "nginx.apps.example.com. 300 A 192.0.2.10",
            "nginx.apps.example.com. 300 TXT heritage=external-dns,external-dns/owner=my-cluster,external-dns/resource=service/default/nginx",
            "a-nginx.apps.example.com. 300 TXT heritage=external-dns,external-dns/owner=my-cluster,external-dns/resource=service/default/nginx",
            "www.apps.example.com. 300 CNAME nginx.apps.example.com.",
            "cname-www.apps.example.com. 300 TXT \"heritage=external-dns,external-dns/owner=my-cluster,external-dns/resource=ingress/default/www\"",
            "manual.apps.example.com. 300 A 198.51.100.7",
        ]
        .iter()
        .map(|l| rec(l))
        .collect();
        let desired = ZoneRecords {
            sets: vec![
                want(
                    "nginx.apps.example.com. 300 A 192.0.2.10",
                    "service/default/nginx",
                ),
                want(
                    "www.apps.example.com. 300 CNAME nginx.apps.example.com.",
                    "ingress/default/www",
                ),
            ],
        };
        let s = PlanSettings::new(name(APEX), "my-cluster", Policy::Sync, ("", "", ""), 50, true)
            .expect("settings");
        let p = plan(&s, &desired, &current);
        // Taken over as it is: nothing deleted, re-created or rewritten (the quoted text decodes the same).
        assert_eq!(p.owned, 2);
        assert!(p.is_empty() && p.skipped.is_empty(), "{:?}", lines(&p));
        // external-dns's later deletion of the Service: both of its registry records go with the A.
        let gone = ZoneRecords {
            sets: vec![desired.sets[1].clone()],
        };
        let p = plan(&s, &gone, &current);
        assert_eq!(p.deletes.len(), 1, "{:?}", lines(&p));
        assert_eq!(p.deletes[0].remove.len(), 3, "{:?}", lines(&p));
        // With another owner id the same zone is entirely foreign.
        let other = plan(&settings(Policy::Sync, 50, true), &desired, &current);
        assert!(other.is_empty(), "{:?}", lines(&other));
        assert_eq!(other.skipped.len(), 2);
    }

    #[test]
    fn policies() {
        let ours = || reg("a-app.apps.example.com.", "ferrite-dns", SVC);
        for (policy, want_delete, want_update, want_create) in [
            (Policy::Sync, "Delete", "Update", "Create"),
            (Policy::UpsertOnly, "skip-Delete", "Update", "Create"),
            (Policy::CreateOnly, "skip-Delete", "skip-Update", "Create"),
        ] {
            let s = settings(policy, 100, true);
            let kinds = |desired: Vec<DesiredSet>, current: Vec<&str>| -> String {
                let current: Vec<Record> = current.iter().map(|l| rec(l)).collect();
                let p = plan(&s, &ZoneRecords { sets: desired }, &current);
                match (p.changes().next(), p.skipped.first()) {
                    (Some(c), None) => format!("{:?}", c.kind),
                    (
                        None,
                        Some(Skipped {
                            reason: SkipReason::Policy { kind },
                            ..
                        }),
                    ) => format!("skip-{kind:?}"),
                    other => format!("unexpected {other:?}"),
                }
            };
            assert_eq!(
                kinds(vec![], vec!["app.apps.example.com. 300 A 192.0.2.1", ours()]),
                want_delete,
                "{policy:?} delete"
            );
            assert_eq!(
                kinds(
                    vec![want("app.apps.example.com. 300 A 192.0.2.2", SVC)],
                    vec!["app.apps.example.com. 300 A 192.0.2.1", ours()]
                ),
                want_update,
                "{policy:?} update"
            );
            assert_eq!(
                kinds(vec![want("app.apps.example.com. 300 A 192.0.2.2", SVC)], vec![]),
                want_create,
                "{policy:?} create"
            );
        }
        // Orphaned registry records stay unless the policy is sync.
        let orphan: Vec<Record> = vec![rec(reg("a-gone.apps.example.com.", "ferrite-dns", SVC))];
        assert!(
            plan(
                &settings(Policy::UpsertOnly, 50, true),
                &ZoneRecords::default(),
                &orphan
            )
            .is_empty()
        );
    }

    #[test]
    fn type_changes_at_a_name() {
        let ours_a = reg("a-app.apps.example.com.", "ferrite-dns", SVC);
        run(vec![
            Case {
                name: "A -> CNAME under sync: the delete goes first, then the create",
                settings: settings(Policy::Sync, 100, true),
                desired: vec![want("app.apps.example.com. 300 CNAME lb.provider.net.", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours_a],
                want: vec![
                    format!(
                        "Delete app.apps.example.com. A: -app.apps.example.com. 300 A 192.0.2.1; -a-app.apps.example.com. 300 TXT {}",
                        owned_text("ferrite-dns", SVC)
                    ),
                    format!(
                        "Create app.apps.example.com. CNAME: +cname-app.apps.example.com. 300 TXT {}; +app.apps.example.com. 300 CNAME lb.provider.net.",
                        owned_text("ferrite-dns", SVC)
                    ),
                ],
                guard: None,
            },
            Case {
                name: "A -> CNAME under upsert-only: the A stays, so the CNAME cannot be created",
                settings: settings(Policy::UpsertOnly, 100, true),
                desired: vec![want("app.apps.example.com. 300 CNAME lb.provider.net.", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours_a],
                want: vec![
                    "skip app.apps.example.com. A PolicyForbids".into(),
                    "skip app.apps.example.com. CNAME Blocked".into(),
                ],
                guard: None,
            },
            Case {
                name: "A -> CNAME while the sources are not synced: delete withheld, create withheld",
                settings: settings(Policy::Sync, 100, false),
                desired: vec![want("app.apps.example.com. 300 CNAME lb.provider.net.", SVC)],
                current: vec!["app.apps.example.com. 300 A 192.0.2.1", ours_a],
                want: vec!["skip app.apps.example.com. CNAME Blocked".into()],
                guard: Some("SourcesNotSynced"),
            },
            Case {
                name: "a CNAME where a foreign TXT is: blocked",
                settings: settings(Policy::Sync, 100, true),
                desired: vec![want("app.apps.example.com. 300 CNAME lb.provider.net.", SVC)],
                current: vec!["app.apps.example.com. 300 TXT v=spf1 -all"],
                want: vec!["skip app.apps.example.com. CNAME Blocked".into()],
                guard: None,
            },
            Case {
                name: "a CNAME where our old-format registry TXT is: that TXT goes with the create",
                settings: settings(Policy::Sync, 100, true),
                desired: vec![want("app.apps.example.com. 300 CNAME lb.provider.net.", SVC)],
                current: vec![reg("app.apps.example.com.", "ferrite-dns", SVC)],
                want: vec![format!(
                    "Create app.apps.example.com. CNAME: -app.apps.example.com. 300 TXT {t}; +cname-app.apps.example.com. 300 TXT {t}; +app.apps.example.com. 300 CNAME lb.provider.net.",
                    t = owned_text("ferrite-dns", SVC)
                )],
                guard: None,
            },
        ]);
    }

    #[test]
    fn deletion_guard() {
        // `owned` RRsets of ours, of which the first `keep` are still wanted.
        let case = |owned: usize, keep: usize, percent: i32, synced: bool| -> Plan {
            let mut current = Vec::new();
            let mut desired = Vec::new();
            for i in 0..owned {
                let n = format!("r{i}.apps.example.com.");
                current.push(rec(&format!("{n} 300 A 192.0.2.{}", i + 1)));
                current.push(rec(reg(&format!("a-{n}"), "ferrite-dns", SVC)));
                if i < keep {
                    desired.push(want(&format!("{n} 300 A 192.0.2.{}", i + 1), SVC));
                }
            }
            // Foreign records never count.
            current.push(rec("foreign.apps.example.com. 300 A 198.51.100.1"));
            plan(
                &settings(Policy::Sync, percent, synced),
                &ZoneRecords { sets: desired },
                &current,
            )
        };
        for (name, owned, keep, percent, synced, deletes, guard) in [
            ("half of 4 at 50%: allowed", 4, 2, 50, true, 2, None),
            (
                "3 of 4 at 50%: refused",
                4,
                1,
                50,
                true,
                0,
                Some("TooManyDeletions"),
            ),
            (
                "all of 4 at 50% (the API-timeout case): refused",
                4,
                0,
                50,
                true,
                0,
                Some("TooManyDeletions"),
            ),
            ("all of 4 at 100%: allowed", 4, 0, 100, true, 4, None),
            (
                "the only record: one deletion is always allowed",
                1,
                0,
                50,
                true,
                1,
                None,
            ),
            (
                "2 of 2 at 50%: refused",
                2,
                0,
                50,
                true,
                0,
                Some("TooManyDeletions"),
            ),
            ("1 of 10 at 0%: the one allowed deletion", 10, 9, 0, true, 1, None),
            (
                "2 of 10 at 0%: refused",
                10,
                8,
                0,
                true,
                0,
                Some("TooManyDeletions"),
            ),
            (
                "sources not synced: nothing deleted",
                4,
                3,
                100,
                false,
                0,
                Some("SourcesNotSynced"),
            ),
            (
                "sources not synced, nothing to delete: no guard",
                4,
                4,
                50,
                false,
                0,
                None,
            ),
        ] {
            let p = case(owned, keep, percent, synced);
            assert_eq!(p.deletes.len(), deletes, "{name}");
            assert_eq!(
                p.guard.as_ref().map(Guard::reason),
                guard,
                "{name}: {:?}",
                p.guard
            );
            assert_eq!(p.owned, owned, "{name}");
        }
        // Creates and updates still happen while deletions are withheld; the message says what to do.
        let mut p = case(4, 0, 50, true);
        assert_eq!(
            p.guard.as_ref().map(ToString::to_string).as_deref(),
            Some(
                "4 of 4 owned record sets would be deleted in one pass, more than maxDeletePercent 50% allows (2); nothing deleted. Check the sources, then raise maxDeletePercent to let it through"
            )
        );
        let current = vec![
            rec("r0.apps.example.com. 300 A 192.0.2.1"),
            rec(reg("a-r0.apps.example.com.", "ferrite-dns", SVC)),
            rec("r1.apps.example.com. 300 A 192.0.2.2"),
            rec(reg("a-r1.apps.example.com.", "ferrite-dns", SVC)),
        ];
        p = plan(
            &settings(Policy::Sync, 50, false),
            &ZoneRecords {
                sets: vec![
                    want("r0.apps.example.com. 300 A 192.0.2.9", SVC),
                    want("new.apps.example.com. 300 A 192.0.2.8", SVC),
                ],
            },
            &current,
        );
        assert_eq!(
            (p.deletes.len(), p.updates.len(), p.creates.len()),
            (0, 1, 1),
            "{:?}",
            lines(&p)
        );
        assert_eq!(p.guard, Some(Guard::SourcesNotSynced { withheld: 1 }));
    }

    #[test]
    fn registry_affixes() {
        // external-dns's registry_test.go: prefix `txt.`, wildcard replacement `wc`.
        let s = PlanSettings::new(
            name("test-zone.example.org."),
            "owner",
            Policy::Sync,
            ("txt.", "", "wc"),
            50,
            true,
        )
        .expect("settings");
        let desired = ZoneRecords {
            sets: vec![want(
                "*.wildcard.test-zone.example.org. 300 CNAME foo.loadbalancer.com.",
                "ingress/default/wc",
            )],
        };
        let p = plan(&s, &desired, &[]);
        assert_eq!(p.creates.len(), 1);
        let txt = p.creates[0]
            .add
            .iter()
            .find(|r| r.record_type() == RecordType::TXT)
            .expect("registry record");
        assert_eq!(
            txt.name.to_string(),
            "txt.cname-wc.wildcard.test-zone.example.org."
        );
        // Reading it back: the wildcard is owned, nothing to do.
        let current: Vec<Record> = p.creates[0].add.clone();
        assert!(plan(&s, &desired, &current).is_empty());
        // Prefix and suffix together are refused.
        let err = PlanSettings::new(name(APEX), "o", Policy::Sync, ("p.", "-s", ""), 50, true)
            .expect_err("exclusive");
        assert_eq!(err.reason(), "RegistryPrefixAndSuffix");
        // An owner id the registry text cannot carry is refused before anything is written.
        assert!(PlanSettings::new(name(APEX), "a,b", Policy::Sync, ("", "", ""), 50, true).is_err());
    }

    #[test]
    fn settings_from_a_zone() {
        use ferrite_api::dns::{DNSZoneSpec, Provider, RegistrySettings};
        let zone = DNSZone::new(
            "apps",
            DNSZoneSpec {
                zone: "Apps.Example.com".into(),
                provider: Provider::Embedded(Default::default()),
                policy: Policy::UpsertOnly,
                owner_id: "my-cluster".into(),
                default_ttl: 300,
                sources: None,
                registry: Some(RegistrySettings {
                    txt_prefix: "txt.".into(),
                    txt_wildcard_replacement: "wc".into(),
                    ..Default::default()
                }),
                max_delete_percent: 20,
            },
        );
        let s = PlanSettings::from_zone(&zone, false).expect("settings");
        assert_eq!(s.apex, name(APEX));
        assert_eq!(
            (
                s.owner_id.as_str(),
                s.policy,
                s.max_delete_percent,
                s.sources_synced
            ),
            ("my-cluster", Policy::UpsertOnly, 20, false)
        );
        assert_eq!(
            s.mapper.to_txt_name("*.apps.example.com.", RecordType::A),
            "txt.a-wc.apps.example.com."
        );
        let mut bad = zone.clone();
        bad.spec.registry = Some(RegistrySettings {
            txt_prefix: "p.".into(),
            txt_suffix: "-s".into(),
            ..Default::default()
        });
        assert_eq!(
            PlanSettings::from_zone(&bad, true)
                .expect_err("exclusive")
                .reason(),
            "RegistryPrefixAndSuffix"
        );
        bad.spec.registry = None;
        bad.spec.zone = "a..b".into();
        assert_eq!(
            PlanSettings::from_zone(&bad, true)
                .expect_err("bad zone")
                .reason(),
            "InvalidZone"
        );
    }

    #[test]
    fn registry_name_too_long() {
        // 4 labels of 63 = 255 with dots; with "cname-" the registry name no longer fits.
        let long = format!(
            "{l}.{l}.{l}.{m}.apps.example.com.",
            l = "a".repeat(63),
            m = "b".repeat(30)
        );
        let n = Name::from_ascii(&long);
        if let Ok(n) = n {
            let set = DesiredSet {
                name: n,
                rtype: RecordType::CNAME,
                ttl: 300,
                rdatas: vec![rdata("CNAME", "lb.provider.net")],
                owner: Resource::parse(SVC).expect("resource"),
            };
            let p = plan(
                &settings(Policy::Sync, 50, true),
                &ZoneRecords { sets: vec![set] },
                &[],
            );
            assert!(p.creates.is_empty(), "{:?}", lines(&p));
            assert_eq!(p.skipped[0].reason.reason(), "RegistryName");
        } else {
            panic!(
                "the test name {long} should be a valid name ({} bytes)",
                long.len()
            );
        }
    }

    #[test]
    fn batches_keep_changes_whole_and_ordered() {
        let mut desired = Vec::new();
        let mut current = Vec::new();
        for i in 0..3 {
            desired.push(want(&format!("c{i}.apps.example.com. 300 A 192.0.2.{i}"), SVC));
            current.push(rec(&format!("d{i}.apps.example.com. 300 A 192.0.2.{i}")));
            current.push(rec(reg(&format!("a-d{i}.apps.example.com."), "ferrite-dns", SVC)));
        }
        desired.push(want("d0.apps.example.com. 300 A 192.0.2.0", SVC));
        let p = plan(
            &settings(Policy::Sync, 100, true),
            &ZoneRecords { sets: desired },
            &current,
        );
        assert_eq!((p.deletes.len(), p.creates.len()), (2, 3));
        let sizes = |n| {
            p.batches(n)
                .iter()
                .map(|b| b.iter().map(|c| c.len()).sum::<usize>())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(100), [10]);
        assert_eq!(sizes(4), [4, 4, 2]);
        // A change bigger than the limit still goes, alone and whole.
        assert_eq!(sizes(1), [2, 2, 2, 2, 2]);
        let kinds: Vec<ChangeKind> = p.batches(4).into_iter().flatten().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Delete,
                ChangeKind::Delete,
                ChangeKind::Create,
                ChangeKind::Create,
                ChangeKind::Create
            ]
        );
    }
}
