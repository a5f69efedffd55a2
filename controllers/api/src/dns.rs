//! `dns.ferrite.dev/v1alpha1`: ferrite-dns's API and annotation keys.
//!
//! ```text
//!   DNSZone (cluster)  zone apps.example.com., provider embedded{} | rfc2136{...}, policy, ownerId, sources
//!      ▲  the longest zone containing a name gets its records
//!   Service (LoadBalancer status) ─┐
//!   Ingress (rule hosts, status)  ─┼─> desired records ──> embedded server snapshot | RFC 2136 updates
//!   DNSRecord (namespaced)        ─┘
//! ```
//!
//! A [`DNSZone`] is one zone ferrite-dns publishes into: served by its own authoritative server
//! (`embedded`) or written into another server with RFC 2136 dynamic updates (`rfc2136`). A [`DNSRecord`]
//! asks for one record set directly (ferrite-certs publishes its DNS-01 TXT records this way).
//! Services and Ingresses ask through annotations ([`annotations`]), under our prefix and under both of
//! external-dns's prefixes, so a cluster migrating from external-dns keeps every name.
//!
//! The schema is written for the oldest API server the suite runs on (1.20): validation is OpenAPI only
//! (enums, patterns, ranges, `oneOf` for the provider), no CEL.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of ferrite-dns.
pub const GROUP: &str = "dns.ferrite.dev";

/// A DNS name: labels of letters, digits, `-` and `_` (for `_acme-challenge`, SRV names), at most 63
/// characters each, with an optional trailing dot. Checked again, label by label, by the controller.
pub const NAME_PATTERN: &str =
    r"^([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$";
/// A record name: a DNS name, or a wildcard `*.<name>` (the `*` only as the whole first label).
pub const RECORD_NAME_PATTERN: &str = r"^(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?$";

/// The largest TTL a record may carry (RFC 2181 section 8).
pub const MAX_TTL: i64 = 2_147_483_647;
/// `spec.defaultTTL` when not given (external-dns's default for providers without their own).
pub const DEFAULT_TTL: i64 = 300;
/// `spec.ownerId` when not given.
pub const DEFAULT_OWNER_ID: &str = "ferrite-dns";
/// `spec.maxDeletePercent` when not given: a pass may delete at most half of the zone's owned records.
pub const DEFAULT_MAX_DELETE_PERCENT: i32 = 50;

/// Annotation keys on Services and Ingresses. Each own key has external-dns's keys under both of its
/// prefixes as aliases, read in this order: `dns.ferrite.dev/`, `external-dns.kubernetes.io/` (external-dns
/// v0.22 and later), `external-dns.alpha.kubernetes.io/` (before v0.22). The first key present wins.
pub mod annotations {
    /// Names to publish for the object, comma separated (`app.example.com,www.example.com`); a leading
    /// `*.` makes a wildcard. On an Ingress these come in addition to its rule hosts.
    pub const HOSTNAME: &str = "dns.ferrite.dev/hostname";
    /// external-dns's hostname key (v0.22 and later).
    pub const EXTERNAL_DNS_HOSTNAME: &str = "external-dns.kubernetes.io/hostname";
    /// external-dns's hostname key before v0.22.
    pub const EXTERNAL_DNS_ALPHA_HOSTNAME: &str = "external-dns.alpha.kubernetes.io/hostname";

    /// TTL of the object's records: seconds (`60`) or a duration (`1m`, `1h30m`), 1 to 2147483647 s.
    pub const TTL: &str = "dns.ferrite.dev/ttl";
    /// external-dns's TTL key (v0.22 and later).
    pub const EXTERNAL_DNS_TTL: &str = "external-dns.kubernetes.io/ttl";
    /// external-dns's TTL key before v0.22.
    pub const EXTERNAL_DNS_ALPHA_TTL: &str = "external-dns.alpha.kubernetes.io/ttl";

    /// Targets instead of the object's status addresses, comma separated: IP addresses (A/AAAA) or one
    /// host name (CNAME).
    pub const TARGET: &str = "dns.ferrite.dev/target";
    /// external-dns's target key (v0.22 and later).
    pub const EXTERNAL_DNS_TARGET: &str = "external-dns.kubernetes.io/target";
    /// external-dns's target key before v0.22.
    pub const EXTERNAL_DNS_ALPHA_TARGET: &str = "external-dns.alpha.kubernetes.io/target";

    /// Names (comma separated) that point at a Service's cluster IPs instead of its load-balancer addresses.
    pub const INTERNAL_HOSTNAME: &str = "dns.ferrite.dev/internal-hostname";
    /// external-dns's internal-hostname key (v0.22 and later).
    pub const EXTERNAL_DNS_INTERNAL_HOSTNAME: &str = "external-dns.kubernetes.io/internal-hostname";
    /// external-dns's internal-hostname key before v0.22.
    pub const EXTERNAL_DNS_ALPHA_INTERNAL_HOSTNAME: &str =
        "external-dns.alpha.kubernetes.io/internal-hostname";

    /// `"true"`: publish nothing for this object (ferrite-dns only; external-dns has no such key).
    pub const EXCLUDE: &str = "dns.ferrite.dev/exclude";

    /// The hostname keys, in the order they are read.
    pub const HOSTNAME_KEYS: [&str; 3] = [HOSTNAME, EXTERNAL_DNS_HOSTNAME, EXTERNAL_DNS_ALPHA_HOSTNAME];
    /// The TTL keys, in the order they are read.
    pub const TTL_KEYS: [&str; 3] = [TTL, EXTERNAL_DNS_TTL, EXTERNAL_DNS_ALPHA_TTL];
    /// The target keys, in the order they are read.
    pub const TARGET_KEYS: [&str; 3] = [TARGET, EXTERNAL_DNS_TARGET, EXTERNAL_DNS_ALPHA_TARGET];
    /// The internal-hostname keys, in the order they are read.
    pub const INTERNAL_HOSTNAME_KEYS: [&str; 3] = [
        INTERNAL_HOSTNAME,
        EXTERNAL_DNS_INTERNAL_HOSTNAME,
        EXTERNAL_DNS_ALPHA_INTERNAL_HOSTNAME,
    ];
}

/// Condition types and reasons of `DNSZone` and `DNSRecord` status.
pub mod conditions {
    /// `DNSZone`: the zone is published (embedded: served; rfc2136: the last sync succeeded).
    pub const READY: &str = "Ready";
    /// `DNSZone` (rfc2136): True while the server cannot be reached or refuses our updates (wrong TSIG key).
    pub const PROVIDER_UNREACHABLE: &str = "ProviderUnreachable";
    /// `DNSZone`: True while two objects claim one name with different targets; the message names both.
    pub const CONFLICTS: &str = "Conflicts";
    /// `DNSZone` (embedded with `transfer`): True when the transfer key is loaded and secondaries may
    /// transfer the zone; False (reason `SecretUnavailable`, `InvalidTransferKey`) while not.
    pub const TRANSFERS: &str = "Transfers";
    /// `DNSZone`: True while deletions are withheld (sources not synced, or more than `maxDeletePercent`).
    pub const DELETION_GUARD: &str = "DeletionGuard";
    /// `DNSRecord`: the record set is published; the message names the zone.
    pub const PROGRAMMED: &str = "Programmed";
}

/// One zone ferrite-dns publishes records into.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dns.ferrite.dev",
    version = "v1alpha1",
    kind = "DNSZone",
    plural = "dnszones",
    shortname = "dnsz",
    category = "ferrite",
    status = "DNSZoneStatus",
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".spec.zone"}"#,
    printcolumn = r#"{"name":"Server","type":"string","jsonPath":".spec.provider.rfc2136.server","description":"RFC 2136 server (empty: the embedded server)"}"#,
    printcolumn = r#"{"name":"Policy","type":"string","jsonPath":".spec.policy"}"#,
    printcolumn = r#"{"name":"Owner","type":"string","jsonPath":".spec.ownerId","priority":1}"#,
    printcolumn = r#"{"name":"Records","type":"integer","jsonPath":".status.records"}"#,
    printcolumn = r#"{"name":"Serial","type":"integer","jsonPath":".status.serial","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Last Sync","type":"date","jsonPath":".status.lastSyncTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DNSZoneSpec {
    /// The zone's apex, e.g. `apps.example.com.` (the trailing dot is optional). Names at or below it
    /// are published here; of nested zones the longest one gets a name.
    #[schemars(length(min = 1, max = 254), regex(pattern = NAME_PATTERN))]
    pub zone: String,

    /// Where the records go: exactly one of `embedded` or `rfc2136`.
    pub provider: Provider,

    /// What ferrite-dns may do to the zone's records: `sync` (create, update and delete its own records),
    /// `upsert-only` (never delete), `create-only` (never update or delete). Default `sync`.
    #[serde(default)]
    pub policy: Policy,

    /// The owner id written into (and required in) every TXT registry record. Records whose registry
    /// names another owner, or that have none, are never touched. Reuse external-dns's `--txt-owner-id` to
    /// take over the records it manages. Default `ferrite-dns`.
    #[serde(default = "default_owner_id")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[^,=\x22]+$"))]
    pub owner_id: String,

    /// TTL of records whose object sets none, seconds. Default 300.
    #[serde(rename = "defaultTTL", default = "default_ttl")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub default_ttl: i64,

    /// Which objects may publish into this zone. Default: Services, Ingresses and DNSRecords of every
    /// namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sources: Option<SourceFilter>,

    /// The TXT registry's record names (rfc2136), as external-dns's `--txt-prefix`, `--txt-suffix` and
    /// `--txt-wildcard-replacement`, so a zone external-dns wrote with them is read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySettings>,

    /// The most a single pass may delete, as a percentage of the records this owner holds in the zone;
    /// a pass that would delete more deletes nothing and sets the `DeletionGuard` condition. A pass may
    /// always delete one record. 100 turns the guard off. Default 50.
    #[serde(default = "default_max_delete_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_delete_percent: i32,
}

/// Exactly one provider.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    /// ferrite-dns's own authoritative server answers for the zone (delegate the zone to it).
    Embedded(EmbeddedProvider),
    /// Records are written into another server (BIND, Knot, PowerDNS) with TSIG-signed RFC 2136 updates.
    Rfc2136(Rfc2136Provider),
}

/// Settings of a zone served by the embedded server: its SOA and apex NS records.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddedProvider {
    /// Names of the zone's name servers (the NS records at the apex), as the parent zone delegates to
    /// them. Default `ns1.<zone>`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 254), regex(pattern = NAME_PATTERN)))]
    pub nameservers: Vec<String>,

    /// Addresses of name servers inside the zone (glue: `ns1.<zone>` A/AAAA records), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nameserver_addresses: BTreeMap<String, Vec<String>>,

    /// TTL of the apex NS records, seconds. Default 3600.
    #[serde(rename = "nsTTL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub ns_ttl: Option<i64>,

    /// The SOA record's fields; every field has a default. The serial is the controller's: it is bumped
    /// on every change and shown in `status.serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soa: Option<SoaSettings>,

    /// Secondary servers (BIND, Knot) that copy the zone: each is sent a NOTIFY, signed with
    /// `transfer`'s key, whenever the serial changes, and then transfers it (AXFR/IXFR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub secondaries: Vec<SecondaryServer>,

    /// The TSIG key secondaries transfer the zone with. Without it no one may transfer the zone. A key
    /// may transfer only the zones whose `DNSZone` names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferSettings>,
}

/// A secondary name server of an embedded zone (a NOTIFY target).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryServer {
    /// The secondary's IP address (IPv4 or IPv6, no host name).
    #[schemars(length(min = 2, max = 45), regex(pattern = r"^[0-9A-Fa-f:.]+$"))]
    pub address: String,
    /// The secondary's port. Default 53.
    #[serde(default = "default_dns_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// The TSIG key allowed to transfer an embedded zone (AXFR/IXFR) and that signs its NOTIFY messages.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferSettings {
    /// The key's name, as the secondaries know it (`key "ferrite-dns-transfer" { ... }` in BIND).
    #[schemars(length(min = 1, max = 254), regex(pattern = NAME_PATTERN))]
    pub tsig_key_name: String,
    /// The Secret holding the key's secret, base64 as `tsig-keygen` prints it.
    pub tsig_key_secret_ref: SecretKeyRef,
    /// The TSIG algorithm. Default `hmac-sha256`.
    #[serde(default)]
    pub tsig_algorithm: TsigAlgorithm,
}

/// The SOA fields of an embedded zone (RFC 1035 section 3.3.13).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SoaSettings {
    /// MNAME, the primary name server. Default: the first name server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 254), regex(pattern = NAME_PATTERN))]
    pub mname: Option<String>,
    /// RNAME, the responsible person's mailbox written as a name (`hostmaster.example.com.` for
    /// hostmaster@example.com). Default `hostmaster.<zone>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 254), regex(pattern = NAME_PATTERN))]
    pub rname: Option<String>,
    /// REFRESH, seconds: how often secondaries check the serial. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub refresh: Option<i64>,
    /// RETRY, seconds: how soon a secondary retries a failed refresh. Default 600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub retry: Option<i64>,
    /// EXPIRE, seconds: when a secondary that cannot refresh stops answering. Default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub expire: Option<i64>,
    /// MINIMUM, seconds: the TTL of negative answers (capped by the SOA's TTL). Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub minimum: Option<i64>,
    /// TTL of the SOA record itself, seconds. Default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 2147483647))]
    pub ttl: Option<i64>,
}

/// A zone on another server, written with RFC 2136 dynamic updates signed with TSIG.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rfc2136Provider {
    /// The server's address or host name (`192.0.2.53`, `ns1.example.com`).
    #[schemars(length(min = 1, max = 254))]
    pub server: String,

    /// The server's port. Default 53.
    #[serde(default = "default_dns_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// The TSIG key's name, as the server knows it (`key "ferrite-dns" { ... }` in BIND).
    #[schemars(length(min = 1, max = 254), regex(pattern = NAME_PATTERN))]
    pub tsig_key_name: String,

    /// The Secret holding the TSIG key's secret, base64 as `tsig-keygen` prints it.
    pub tsig_key_secret_ref: SecretKeyRef,

    /// The TSIG algorithm. Default `hmac-sha256`.
    #[serde(default)]
    pub tsig_algorithm: TsigAlgorithm,

    /// Read the zone's current records with a TSIG-signed AXFR, so records are updated and deleted, not
    /// only added. Without it ferrite-dns only adds (as `upsert-only` without updates). Default true.
    #[serde(default = "default_true")]
    pub axfr: bool,
}

/// A key of a Secret in a namespace (a `DNSZone` is cluster-scoped, so the namespace is explicit).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The Secret's namespace.
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    /// The key inside the Secret. Default `secret`.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// TSIG algorithms (RFC 8945) the RFC 2136 client signs with (MD5 is not offered).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TsigAlgorithm {
    /// HMAC-SHA256 (`tsig-keygen`'s default).
    #[default]
    #[serde(rename = "hmac-sha256")]
    HmacSha256,
    /// HMAC-SHA384.
    #[serde(rename = "hmac-sha384")]
    HmacSha384,
    /// HMAC-SHA512.
    #[serde(rename = "hmac-sha512")]
    HmacSha512,
    /// HMAC-SHA1, for keys made before SHA-2 (RFC 8945 keeps it mandatory to implement; prefer SHA-256).
    #[serde(rename = "hmac-sha1")]
    HmacSha1,
}

/// What ferrite-dns may change in a zone (external-dns's `--policy`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Create, update and delete owned records.
    #[default]
    Sync,
    /// Create and update owned records, never delete.
    UpsertOnly,
    /// Create records, never update or delete.
    CreateOnly,
}

/// Which objects may publish into a zone. Every given criterion must match.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceFilter {
    /// Namespaces whose objects may publish. Empty: every namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,

    /// Labels the objects must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<LabelSelector>,

    /// Kinds of objects that may publish. Empty: all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<SourceKind>,
}

/// A kind of object records come from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum SourceKind {
    /// Services of type LoadBalancer (status addresses) and any Service's cluster IPs (internal-hostname).
    Service,
    /// Ingresses: every rule host, pointing at the Ingress's `status.loadBalancer`.
    Ingress,
    /// `DNSRecord` objects.
    #[serde(rename = "DNSRecord")]
    DnsRecord,
}

/// external-dns's TXT registry naming options.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySettings {
    /// external-dns's `--txt-prefix` (`%{record_type}` is replaced by the type). Exclusive with `txtSuffix`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub txt_prefix: String,
    /// external-dns's `--txt-suffix`. Exclusive with `txtPrefix`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub txt_suffix: String,
    /// external-dns's `--txt-wildcard-replacement`: what a leading `*` becomes in a registry name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 63))]
    pub txt_wildcard_replacement: String,
}

/// Observed state of a [`DNSZone`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DNSZoneStatus {
    /// Records published in the zone (not counting the SOA, apex NS and registry TXT records).
    #[serde(default)]
    pub records: i64,
    /// When the zone was last published completely (embedded: snapshot swapped; rfc2136: server in sync).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
    /// The SOA serial (embedded) or the server's serial after the last sync (rfc2136).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<i64>,
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `ProviderUnreachable`, `Conflicts`, `DeletionGuard` (see [`conditions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One record set to publish, asked for directly.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "dns.ferrite.dev",
    version = "v1alpha1",
    kind = "DNSRecord",
    plural = "dnsrecords",
    shortname = "dnsr",
    category = "ferrite",
    namespaced,
    status = "DNSRecordStatus",
    printcolumn = r#"{"name":"Name","type":"string","jsonPath":".spec.name"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Targets","type":"string","jsonPath":".spec.targets"}"#,
    printcolumn = r#"{"name":"TTL","type":"integer","jsonPath":".spec.ttl","priority":1}"#,
    printcolumn = r#"{"name":"Zone","type":"string","jsonPath":".status.zone"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DNSRecordSpec {
    /// The record's fully qualified name (`app.apps.example.com`, `*.apps.example.com`,
    /// `_acme-challenge.app.apps.example.com`); it goes to the longest `DNSZone` containing it.
    #[schemars(length(min = 1, max = 254), regex(pattern = RECORD_NAME_PATTERN))]
    pub name: String,

    /// The record type.
    #[serde(rename = "type")]
    pub record_type: RecordType,

    /// TTL, seconds. Default: the zone's `defaultTTL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2147483647))]
    pub ttl: Option<i64>,

    /// The record data, one entry per record, in zone-file presentation: A `192.0.2.10`; AAAA
    /// `2001:db8::10`; CNAME `target.example.com` (exactly one); TXT the text (one string, split every 255
    /// bytes); SRV `<priority> <weight> <port> <target>`; MX `<preference> <exchange>`; CAA
    /// `<flags> <issue|issuewild> "<value>"`.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 4096)))]
    pub targets: Vec<String>,
}

/// The record types a `DNSRecord` may ask for.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordType {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias.
    Cname,
    /// Text.
    Txt,
    /// Service location (RFC 2782).
    Srv,
    /// Mail exchange.
    Mx,
    /// Certification Authority Authorization (RFC 8659).
    Caa,
}

/// Observed state of a [`DNSRecord`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DNSRecordStatus {
    /// The `DNSZone` (its name) the record is published in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Programmed`: True once published, with the zone in the message; False with the reason
    /// (OutsideZones, BadTarget, Conflict, ...) otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn default_owner_id() -> String {
    DEFAULT_OWNER_ID.to_string()
}

fn default_ttl() -> i64 {
    DEFAULT_TTL
}

fn default_max_delete_percent() -> i32 {
    DEFAULT_MAX_DELETE_PERCENT
}

fn default_dns_port() -> i32 {
    53
}

fn default_secret_key() -> String {
    "secret".to_string()
}

fn default_true() -> bool {
    true
}

impl DNSZoneSpec {
    /// The source filter, or the default one (everything).
    pub fn source_filter(&self) -> SourceFilter {
        self.sources.clone().unwrap_or_default()
    }
}

impl SourceFilter {
    /// Whether objects of `kind` may publish (an empty list allows every kind).
    pub fn allows_kind(&self, kind: SourceKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }

    /// Whether objects of `namespace` may publish (an empty list allows every namespace).
    pub fn allows_namespace(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn zone_defaults() {
        let spec: DNSZoneSpec =
            serde_json::from_value(json!({"zone": "apps.example.com.", "provider": {"embedded": {}}}))
                .expect("minimal zone parses");
        assert_eq!(spec.policy, Policy::Sync);
        assert_eq!(spec.owner_id, "ferrite-dns");
        assert_eq!(spec.default_ttl, 300);
        assert_eq!(spec.max_delete_percent, 50);
        assert_eq!(spec.provider, Provider::Embedded(EmbeddedProvider::default()));
        assert_eq!(spec.source_filter(), SourceFilter::default());
    }

    #[test]
    fn rfc2136_defaults_and_spelling() {
        let spec: DNSZoneSpec = serde_json::from_value(json!({
            "zone": "example.org",
            "policy": "upsert-only",
            "ownerId": "cluster-a",
            "defaultTTL": 60,
            "provider": {"rfc2136": {
                "server": "192.0.2.53",
                "tsigKeyName": "ferrite-dns",
                "tsigKeySecretRef": {"name": "tsig", "namespace": "ferrite-system"}
            }}
        }))
        .expect("rfc2136 zone parses");
        let Provider::Rfc2136(p) = &spec.provider else {
            panic!("rfc2136 provider expected, got {:?}", spec.provider);
        };
        assert_eq!(p.port, 53);
        assert_eq!(p.tsig_algorithm, TsigAlgorithm::HmacSha256);
        assert!(p.axfr);
        assert_eq!(p.tsig_key_secret_ref.key, "secret");
        assert_eq!(spec.policy, Policy::UpsertOnly);
        let v = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(v["defaultTTL"], 60);
        assert_eq!(v["provider"]["rfc2136"]["tsigAlgorithm"], "hmac-sha256");
        assert_eq!(v["provider"]["rfc2136"]["axfr"], true);
        assert_eq!(v["policy"], "upsert-only");
        let back: DNSZoneSpec = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, spec);
    }

    #[test]
    fn provider_is_exactly_one() {
        for (case, provider) in [
            ("none", json!({})),
            (
                "both",
                json!({"embedded": {}, "rfc2136": {"server": "a", "tsigKeyName": "k", "tsigKeySecretRef": {"name": "s", "namespace": "n"}}}),
            ),
            ("unknown", json!({"route53": {}})),
        ] {
            let r =
                serde_json::from_value::<DNSZoneSpec>(json!({"zone": "example.org", "provider": provider}));
            assert!(r.is_err(), "{case}: parsed as {r:?}");
        }
    }

    #[test]
    fn enums_spelled_as_documented() {
        for (text, policy) in [
            ("sync", Policy::Sync),
            ("upsert-only", Policy::UpsertOnly),
            ("create-only", Policy::CreateOnly),
        ] {
            assert_eq!(serde_json::from_value::<Policy>(json!(text)).expect(text), policy);
        }
        for (text, rtype) in [
            ("A", RecordType::A),
            ("AAAA", RecordType::Aaaa),
            ("CNAME", RecordType::Cname),
            ("TXT", RecordType::Txt),
            ("SRV", RecordType::Srv),
            ("MX", RecordType::Mx),
            ("CAA", RecordType::Caa),
        ] {
            assert_eq!(
                serde_json::from_value::<RecordType>(json!(text)).expect(text),
                rtype
            );
        }
        assert!(serde_json::from_value::<RecordType>(json!("NS")).is_err());
        for (text, kind) in [
            ("Service", SourceKind::Service),
            ("Ingress", SourceKind::Ingress),
            ("DNSRecord", SourceKind::DnsRecord),
        ] {
            assert_eq!(
                serde_json::from_value::<SourceKind>(json!(text)).expect(text),
                kind
            );
        }
        for (text, alg) in [
            ("hmac-sha256", TsigAlgorithm::HmacSha256),
            ("hmac-sha384", TsigAlgorithm::HmacSha384),
            ("hmac-sha512", TsigAlgorithm::HmacSha512),
            ("hmac-sha1", TsigAlgorithm::HmacSha1),
        ] {
            assert_eq!(
                serde_json::from_value::<TsigAlgorithm>(json!(text)).expect(text),
                alg
            );
        }
        assert!(serde_json::from_value::<TsigAlgorithm>(json!("hmac-md5")).is_err());
    }

    #[test]
    fn record_parses() {
        let spec: DNSRecordSpec = serde_json::from_value(json!({
            "name": "_acme-challenge.app.apps.example.com", "type": "TXT", "targets": ["token"]
        }))
        .expect("record parses");
        assert_eq!(spec.record_type, RecordType::Txt);
        assert_eq!(spec.ttl, None);
        assert_eq!(serde_json::to_value(&spec).expect("serializes")["type"], "TXT");
        assert!(
            serde_json::from_value::<DNSRecordSpec>(json!({"name": "a.example.com", "type": "A"})).is_err()
        );
    }

    #[test]
    fn source_filter_defaults_allow_everything() {
        let f = SourceFilter::default();
        assert!(f.allows_kind(SourceKind::Ingress) && f.allows_namespace("any"));
        let f = SourceFilter {
            namespaces: vec!["web".into()],
            kinds: vec![SourceKind::DnsRecord],
            ..Default::default()
        };
        assert!(f.allows_namespace("web") && !f.allows_namespace("other"));
        assert!(f.allows_kind(SourceKind::DnsRecord) && !f.allows_kind(SourceKind::Service));
    }

    fn schema(
        crd: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> serde_json::Value {
        serde_json::to_value(&crd.spec.versions[0].schema).expect("schema serializes")["openAPIV3Schema"]
            .clone()
    }

    #[test]
    fn zone_crd_schema_validates() {
        let crd = DNSZone::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("dnszones.dns.ferrite.dev"));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["dnsz".to_string()]));
        assert!(
            crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let spec = &schema(&crd)["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["provider", "zone"]);
        assert_eq!(
            spec["properties"]["policy"]["enum"],
            json!(["sync", "upsert-only", "create-only"])
        );
        assert_eq!(spec["properties"]["policy"]["default"], "sync");
        assert_eq!(spec["properties"]["defaultTTL"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(
            spec["properties"]["maxDeletePercent"]["maximum"].as_f64(),
            Some(100.0)
        );
        assert!(spec["properties"]["zone"]["pattern"].is_string());
        // Exactly one provider: the variants' properties hoisted, `oneOf` keeps only `required`.
        let provider = &spec["properties"]["provider"];
        assert_eq!(
            provider["oneOf"],
            json!([{"required": ["embedded"]}, {"required": ["rfc2136"]}])
        );
        let rfc = &provider["properties"]["rfc2136"];
        assert_eq!(rfc["properties"]["port"]["maximum"].as_f64(), Some(65535.0));
        assert_eq!(rfc["properties"]["tsigAlgorithm"]["default"], "hmac-sha256");
        assert_eq!(rfc["properties"]["axfr"]["default"], true);
        let kinds = &spec["properties"]["sources"]["properties"]["kinds"]["items"]["enum"];
        assert_eq!(kinds, &json!(["Service", "Ingress", "DNSRecord"]));
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert!(
            columns.iter().any(|c| c == "Records") && columns.iter().any(|c| c == "Ready"),
            "{columns:?}"
        );
    }

    #[test]
    fn record_crd_schema_validates() {
        let crd = DNSRecord::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("dnsrecords.dns.ferrite.dev"));
        assert_eq!(crd.spec.scope, "Namespaced");
        let spec = &schema(&crd)["properties"]["spec"];
        assert_eq!(
            spec["properties"]["type"]["enum"],
            json!(["A", "AAAA", "CNAME", "TXT", "SRV", "MX", "CAA"])
        );
        assert_eq!(spec["properties"]["targets"]["minItems"], 1);
        assert_eq!(spec["properties"]["ttl"]["maximum"].as_f64(), Some(2147483647.0));
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(required, ["name", "targets", "type"]);
    }

    #[test]
    fn name_patterns() {
        let zone = regex::Regex::new(NAME_PATTERN).expect("zone pattern compiles");
        let record = regex::Regex::new(RECORD_NAME_PATTERN).expect("record pattern compiles");
        for (case, name, zone_ok, record_ok) in [
            ("plain", "apps.example.com", true, true),
            ("trailing dot", "apps.example.com.", true, true),
            ("underscore", "_acme-challenge.app.example.com", true, true),
            ("wildcard", "*.apps.example.com", false, true),
            ("wildcard inside", "a.*.example.com", false, false),
            ("hyphen at label start", "-a.example.com", false, false),
            ("empty label", "a..example.com", false, false),
            (
                "label of 64",
                &format!("{}.example.com", "a".repeat(64)),
                false,
                false,
            ),
            (
                "label of 63",
                &format!("{}.example.com", "a".repeat(63)),
                true,
                true,
            ),
            ("space", "a b.example.com", false, false),
        ] {
            assert_eq!(zone.is_match(name), zone_ok, "{case}: zone {name}");
            assert_eq!(record.is_match(name), record_ok, "{case}: record {name}");
        }
    }
}
