//! `lb.ferrite.dev/v1alpha1`: the load balancer's API and annotation keys.
//!
//! An [`IPPool`] is a set of addresses the allocator may hand to `type: LoadBalancer` Services, and the
//! rules for which Services may get them (`serviceAllocation`) and where they are announced (`l2`).
//! Field names follow MetalLB's `IPAddressPool` + `L2Advertisement` so a migration is a rename.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, LabelSelectorRequirement};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of the load balancer.
pub const GROUP: &str = "lb.ferrite.dev";

/// The `loadBalancerClass` Ferrite serves by default (`--lb-class`). Services with no class are served
/// too only while `--default-class` is true (its default), as MetalLB does when it is the default.
pub const DEFAULT_LOAD_BALANCER_CLASS: &str = "ferrite.dev/lb";

/// Annotation keys on Services. Each own key has the MetalLB keys as aliases, read in this order.
pub mod annotations {
    /// Requested addresses, comma separated (one per family for dual-stack).
    pub const IPS: &str = "lb.ferrite.dev/ips";
    /// MetalLB's current key for requested addresses.
    pub const METALLB_IPS: &str = "metallb.io/loadBalancerIPs";
    /// MetalLB's legacy key for requested addresses; honored with a Warning Event.
    pub const METALLB_LEGACY_IPS: &str = "metallb.universe.tf/loadBalancerIPs";
    /// Pool to allocate from.
    pub const POOL: &str = "lb.ferrite.dev/pool";
    /// MetalLB's key for the pool.
    pub const METALLB_POOL: &str = "metallb.io/address-pool";
    /// MetalLB's legacy key for the pool; honored with a Warning Event.
    pub const METALLB_LEGACY_POOL: &str = "metallb.universe.tf/address-pool";
    /// Sharing key: Services with the same key and no port conflict share one address.
    pub const ALLOW_SHARED_IP: &str = "lb.ferrite.dev/allow-shared-ip";
    /// MetalLB's sharing key.
    pub const METALLB_ALLOW_SHARED_IP: &str = "metallb.io/allow-shared-ip";
    /// MetalLB's legacy sharing key; honored with a Warning Event.
    pub const METALLB_LEGACY_ALLOW_SHARED_IP: &str = "metallb.universe.tf/allow-shared-ip";
    /// Written by speakers before v1alpha1's `ServiceL2Status` existed (the announcing node's name). No
    /// longer written; the controller removes it from Services it reconciles.
    pub const ANNOUNCING_NODE: &str = "lb.ferrite.dev/announcing-node";
    /// Written by the allocator: the IPPool the Service's addresses come from (comma separated, in the
    /// order of `status.loadBalancer.ingress`, when two families come from two pools).
    pub const IP_ALLOCATED_FROM_POOL: &str = "lb.ferrite.dev/ip-allocated-from-pool";
    /// MetalLB's spelling of [`IP_ALLOCATED_FROM_POOL`]: written by the allocator with the same value
    /// (a migrated Service's stale MetalLB pool is rewritten), read by `import-metallb`.
    pub const METALLB_IP_ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";
}

/// Label on every [`ServiceL2Status`]: the name of the Service it describes.
pub const SERVICE_NAME_LABEL: &str = "lb.ferrite.dev/service-name";
/// Label on every [`ServiceL2Status`]: the node that announces.
pub const NODE_LABEL: &str = "lb.ferrite.dev/node";

/// A label selector (`matchLabels`, `matchExpressions`) that keeps the keys it does not define.
///
/// With `properties` declared, the API server prunes unknown keys again below a
/// `x-kubernetes-preserve-unknown-fields` object, so a typo inside a selector (`matchLabel: {zone: a}`)
/// would be stored as `{}`, which matches everything. This type's schema preserves unknown keys (of the
/// selector and of each `matchExpressions` item), the value keeps them, and [`Selector::unknown_fields`]
/// names them so the controller refuses the object. Dereferences to the [`LabelSelector`] it means.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector {
    raw: RawSelector,
    selector: LabelSelector,
}

/// A label selector: `matchLabels` and `matchExpressions`, ANDed; empty matches everything. Keys it does
/// not define are kept and refused by the controller, naming them (a typo must not widen the selector).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
struct RawSelector {
    /// Labels that must all be present with these values (ANDed with `matchExpressions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold (ANDed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_expressions: Option<Vec<RawRequirement>>,
    /// Keys this version does not define (see [`Selector`]).
    #[serde(flatten)]
    #[schemars(skip)]
    unknown: BTreeMap<String, serde_json::Value>,
}

/// One `matchExpressions` item: `key`, `operator` (`In`, `NotIn`, `Exists`, `DoesNotExist`), `values`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
struct RawRequirement {
    /// The label key the requirement applies to.
    key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    operator: String,
    /// For `In` / `NotIn`: the values (non-empty); for `Exists` / `DoesNotExist`: empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<String>>,
    /// Keys this version does not define (see [`Selector`]).
    #[serde(flatten)]
    #[schemars(skip)]
    unknown: BTreeMap<String, serde_json::Value>,
}

impl From<RawSelector> for Selector {
    fn from(raw: RawSelector) -> Self {
        let selector = LabelSelector {
            match_labels: raw.match_labels.clone(),
            match_expressions: raw.match_expressions.as_ref().map(|list| {
                list.iter()
                    .map(|r| LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        values: r.values.clone(),
                    })
                    .collect()
            }),
        };
        Selector { raw, selector }
    }
}

impl From<LabelSelector> for Selector {
    fn from(selector: LabelSelector) -> Self {
        let raw = RawSelector {
            match_labels: selector.match_labels.clone(),
            match_expressions: selector.match_expressions.as_ref().map(|list| {
                list.iter()
                    .map(|r| RawRequirement {
                        key: r.key.clone(),
                        operator: r.operator.clone(),
                        values: r.values.clone(),
                        unknown: BTreeMap::new(),
                    })
                    .collect()
            }),
            unknown: BTreeMap::new(),
        };
        Selector { raw, selector }
    }
}

impl From<&Selector> for LabelSelector {
    fn from(s: &Selector) -> Self {
        s.selector.clone()
    }
}

impl std::ops::Deref for Selector {
    type Target = LabelSelector;
    fn deref(&self) -> &LabelSelector {
        &self.selector
    }
}

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawSelector::deserialize(d).map(Selector::from)
    }
}

impl Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

impl JsonSchema for Selector {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Selector".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RawSelector::json_schema(generator)
    }
}

impl Selector {
    /// The label selector it means (unknown keys aside).
    pub fn label_selector(&self) -> &LabelSelector {
        &self.selector
    }

    /// Paths of the keys this version does not define, under `at` (`spec.nodeSelectors[0]`):
    /// `spec.nodeSelectors[0].matchLabel`, `spec.nodeSelectors[0].matchExpressions[1].value`.
    pub fn unknown_fields(&self, at: &str) -> Vec<String> {
        let mut out: Vec<String> = self.raw.unknown.keys().map(|k| format!("{at}.{k}")).collect();
        for (i, r) in self.raw.match_expressions.iter().flatten().enumerate() {
            out.extend(
                r.unknown
                    .keys()
                    .map(|k| format!("{at}.matchExpressions[{i}].{k}")),
            );
        }
        out
    }
}

/// The label selectors `list` means (for code that matches with [`LabelSelector`]s).
pub fn label_selectors(list: &[Selector]) -> Vec<LabelSelector> {
    list.iter().map(LabelSelector::from).collect()
}

/// Unknown-field paths of every selector of `list`, the field at `at` (`spec.nodeSelectors`).
fn unknown_in(list: &[Selector], at: &str) -> Vec<String> {
    list.iter()
        .enumerate()
        .flat_map(|(i, s)| s.unknown_fields(&format!("{at}[{i}]")))
        .collect()
}

/// A pool of addresses for `type: LoadBalancer` Services.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.ferrite.dev",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "ipp",
    category = "ferrite",
    status = "IPPoolStatus",
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses","description":"CIDRs and ranges in the pool"}"#,
    printcolumn = r#"{"name":"Auto","type":"boolean","jsonPath":".spec.autoAssign","description":"Whether Services get addresses from this pool without asking for it"}"#,
    printcolumn = r#"{"name":"Total v4","type":"integer","jsonPath":".status.totalIPv4","priority":1}"#,
    printcolumn = r#"{"name":"Assigned v4","type":"integer","jsonPath":".status.assignedIPv4"}"#,
    printcolumn = r#"{"name":"Available v4","type":"integer","jsonPath":".status.availableIPv4"}"#,
    printcolumn = r#"{"name":"Assigned v6","type":"integer","jsonPath":".status.assignedIPv6","priority":1}"#,
    printcolumn = r#"{"name":"Available v6","type":"integer","jsonPath":".status.availableIPv6","priority":1}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct IPPoolSpec {
    /// Addresses in the pool: IPv4 or IPv6 CIDRs (`192.0.2.0/28`, `2001:db8::/120`) or inclusive ranges
    /// (`192.0.2.10-192.0.2.20`). A pool may mix families.
    #[schemars(length(min = 1, max = 256), inner(length(min = 1, max = 100)))]
    pub addresses: Vec<String>,

    /// Whether Services that do not name a pool may get addresses from this pool. Default true.
    #[serde(default = "default_true")]
    pub auto_assign: bool,

    /// Skip IPv4 addresses ending in `.0` or `.255`, which some old network equipment drops.
    /// (Spelled as MetalLB spells it, so its manifests port unchanged.)
    #[serde(rename = "avoidBuggyIPs", default, skip_serializing_if = "std::ops::Not::not")]
    pub avoid_buggy_ips: bool,

    /// Which Services may get addresses from this pool, and with which priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,

    /// Where the pool's addresses are announced on layer 2 (ARP/NDP): one more advertisement of this
    /// pool, besides the L2Advertisements that select it. `l2: {}` is every node, every eligible interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l2: Option<L2Announcement>,

    /// Fields this version does not define. The CRD keeps them (`x-kubernetes-preserve-unknown-fields`)
    /// so that the controller can refuse the pool naming them, instead of the API server dropping them
    /// silently. Not part of the schema.
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Which Services a pool serves (MetalLB's `serviceAllocation`). Two criteria, ANDed: the namespace
/// (`namespaces` OR `namespaceSelectors`) and the Service (`serviceSelectors`, ORed); an empty criterion
/// matches everything.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct ServiceAllocation {
    /// Order among the auto-assign pools that serve a Service (MetalLB's): pools that have a
    /// `serviceAllocation` (even `{}`) are tried before pools without one; among them the LOWER number
    /// first, and unset or 0 (MetalLB's "unset") after every set one; ties go to the pool name.
    ///
    /// An int32: the schema bounds it (`format: int32` alone is not checked by the API server), so a number
    /// outside it is refused when written instead of stored for the controller to fail on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = i32::MIN, max = i32::MAX))]
    pub priority: Option<i32>,

    /// Namespaces whose Services may use this pool (ORed with `namespaceSelectors`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(length(min = 1, max = 63)))]
    pub namespaces: Vec<String>,

    /// Labels of the namespaces whose Services may use this pool: any selector matching is enough
    /// (ORed with each other and with `namespaces`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<Selector>,

    /// Labels of the Services that may use this pool: any selector matching is enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<Selector>,

    /// Fields this version does not define (see [`IPPoolSpec::unknown`]); the removed singular
    /// `namespaceSelector` / `serviceSelector` land here.
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Layer-2 announcement of a pool's addresses.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct L2Announcement {
    /// Interfaces to answer on: exact names (`eth0`) or regular expressions written `/regex/`
    /// (`/^enp.*/`). Empty means every eligible interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,

    /// Nodes that may announce the pool's addresses. Empty means every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<Selector>,

    /// Fields this version does not define (see [`IPPoolSpec::unknown`]).
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

impl IPPoolSpec {
    /// Paths of every field this version does not define (`spec.x`, `spec.serviceAllocation.y`,
    /// `spec.serviceAllocation.serviceSelectors[0].matchLabel`, `spec.l2.z`, `spec.l2.nodeSelector.w`),
    /// in that order.
    pub fn unknown_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.unknown.keys().map(|k| format!("spec.{k}")).collect();
        if let Some(a) = &self.service_allocation {
            out.extend(a.unknown.keys().map(|k| format!("spec.serviceAllocation.{k}")));
            out.extend(unknown_in(
                &a.namespace_selectors,
                "spec.serviceAllocation.namespaceSelectors",
            ));
            out.extend(unknown_in(
                &a.service_selectors,
                "spec.serviceAllocation.serviceSelectors",
            ));
        }
        if let Some(l2) = &self.l2 {
            out.extend(l2.unknown.keys().map(|k| format!("spec.l2.{k}")));
            if let Some(sel) = &l2.node_selector {
                out.extend(sel.unknown_fields("spec.l2.nodeSelector"));
            }
        }
        out
    }
}

impl L2AdvertisementSpec {
    /// Paths of every field this version does not define (`spec.x`,
    /// `spec.nodeSelectors[0].matchLabel`, `spec.serviceSelectors[1].matchExpressions[0].value`...).
    pub fn unknown_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = self.unknown.keys().map(|k| format!("spec.{k}")).collect();
        out.extend(unknown_in(&self.ip_pool_selectors, "spec.ipPoolSelectors"));
        out.extend(unknown_in(&self.node_selectors, "spec.nodeSelectors"));
        out.extend(unknown_in(&self.service_selectors, "spec.serviceSelectors"));
        out
    }
}

/// Observed state of an [`IPPool`].
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolStatus {
    /// IPv4 addresses the pool can hand out (after `avoidBuggyIPs`).
    #[serde(rename = "totalIPv4", default)]
    pub total_ipv4: i64,
    /// IPv6 addresses the pool can hand out (saturates at 2^63-1 for large prefixes).
    #[serde(rename = "totalIPv6", default)]
    pub total_ipv6: i64,
    /// IPv4 addresses of the pool held by Services.
    #[serde(rename = "assignedIPv4", default)]
    pub assigned_ipv4: i64,
    /// IPv4 addresses of the pool still free.
    #[serde(rename = "availableIPv4", default)]
    pub available_ipv4: i64,
    /// IPv6 addresses of the pool held by Services.
    #[serde(rename = "assignedIPv6", default)]
    pub assigned_ipv6: i64,
    /// IPv6 addresses of the pool still free (saturates at 2^63-1 for large prefixes).
    #[serde(rename = "availableIPv6", default)]
    pub available_ipv6: i64,
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (False with reason InvalidAddress / InvalidSelector / InvalidInterface / UnknownField
    /// when the pool cannot be used), `Invalid` (True with the offending entry in the message) and
    /// `Overlapping` (True when another pool shares addresses with this one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Where and for which Services the addresses of some pools are announced on layer 2: MetalLB's
/// `L2Advertisement`, cluster-scoped. A pool no advertisement selects (and without an inline `l2`
/// block) is allocate-only: its addresses are handed out but never announced.
///
/// Every list criterion is ORed within itself (any item matching is enough) and an empty list matches
/// everything; the criteria are ANDed with each other.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.ferrite.dev",
    version = "v1alpha1",
    kind = "L2Advertisement",
    plural = "l2advertisements",
    shortname = "l2adv",
    category = "ferrite",
    status = "L2AdvertisementStatus",
    printcolumn = r#"{"name":"Pools","type":"string","jsonPath":".spec.ipPools"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct L2AdvertisementSpec {
    /// Names of the IPPools announced (MetalLB's `ipAddressPools`). With `ipPoolSelectors` also empty:
    /// every pool.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pools: Vec<String>,

    /// Labels of the IPPools announced (MetalLB's `ipAddressPoolSelectors`), ORed with `ipPools`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_pool_selectors: Vec<Selector>,

    /// Nodes that may announce (ORed). Empty: every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<Selector>,

    /// Interfaces to answer on: exact names (`eth0`) or whole-name regular expressions written `/regex/`.
    /// Empty: every eligible interface (MetalLB's default exclusions apply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,

    /// Labels of the Services announced (ORed, MetalLB's `serviceSelectors`). Empty: every Service of the
    /// selected pools. MetalLB's API says Services matching these selectors cannot use `allow-shared-ip`;
    /// here Services sharing an address are announced together, and one Service of the group matching is
    /// enough.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<Selector>,

    /// Fields this version does not define (MetalLB's `ipAddressPools`, a typo...): kept by the CRD
    /// (`x-kubernetes-preserve-unknown-fields`) so the controller can refuse the advertisement naming
    /// them (Ready=False, reason `UnknownField`). Not part of the schema.
    #[serde(flatten)]
    #[schemars(skip)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

/// Observed state of an [`L2Advertisement`], written by the controller.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementStatus {
    /// `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (False with a reason such as `InvalidSelector`, `InvalidInterface` or `UnknownField` and
    /// the offending entry in the message; True with `NoPools` in the message when it selects none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Who announces a Service's addresses: MetalLB's `ServiceL2Status`. One object per announced Service, in
/// the Service's namespace, named like the Service, written by the speaker that announces it and deleted
/// when it stops (owner reference: the Service, so deleting the Service removes it too).
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "lb.ferrite.dev",
    version = "v1alpha1",
    kind = "ServiceL2Status",
    plural = "servicel2statuses",
    shortname = "l2status",
    category = "ferrite",
    namespaced,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Addresses","type":"string","jsonPath":".spec.addresses"}"#,
    printcolumn = r#"{"name":"Interfaces","type":"string","jsonPath":".spec.interfaces"}"#,
    printcolumn = r#"{"name":"Since","type":"date","jsonPath":".spec.since"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusSpec {
    /// The node whose speaker answers ARP/NDP for the addresses.
    pub node: String,
    /// The Service's addresses this node announces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// The interfaces it answers on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// When this node started announcing (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Sort key of the auto-assign order (MetalLB's `Allocate`: the pinned pools sorted by `sortPools`, then
/// the others) for a pool named `name` that has a `serviceAllocation` (`pinned`, even `{}`) with `priority`:
/// pinned pools first, among them set priorities lowest number first, then unset ones (`None` or 0: MetalLB's
/// `priority` is a plain int, so 0 is its "unset"); then the pools without a `serviceAllocation`, whose
/// priority does not count. Ties go to the name (MetalLB leaves them to map order and an unstable sort).
/// Compare with `Ord` on the tuple.
pub fn auto_assign_order(pinned: bool, priority: Option<i32>, name: &str) -> (bool, bool, i32, &str) {
    let set = priority.filter(|p| pinned && *p != 0);
    (!pinned, set.is_none(), set.unwrap_or(0), name)
}

fn default_true() -> bool {
    true
}

impl IPPool {
    /// The pool's `serviceAllocation.priority`: among auto-assign pools the LOWER number is tried first,
    /// and `None` or 0 (unset) after every set one. See [`IPPool::auto_assign_order`].
    pub fn priority(&self) -> Option<i32> {
        self.spec.service_allocation.as_ref().and_then(|a| a.priority)
    }

    /// Sort key of the auto-assign order (MetalLB's, see [`auto_assign_order`]): pools with a
    /// `serviceAllocation` first, by priority, then the others; ties by name.
    pub fn auto_assign_order(&self) -> (bool, bool, i32, &str) {
        auto_assign_order(
            self.spec.service_allocation.is_some(),
            self.priority(),
            self.metadata.name.as_deref().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn auto_assign_defaults_to_true() {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({"addresses": ["192.0.2.0/28"]}))
            .expect("minimal spec parses");
        assert!(spec.auto_assign);
        assert!(!spec.avoid_buggy_ips);
        let spec: IPPoolSpec = serde_json::from_value(
            serde_json::json!({"addresses": ["192.0.2.0/28"], "avoidBuggyIPs": true, "autoAssign": false}),
        )
        .expect("MetalLB spelling parses");
        assert!(spec.avoid_buggy_ips && !spec.auto_assign);
    }

    #[test]
    fn status_uses_metallb_field_names() {
        let status = IPPoolStatus {
            assigned_ipv4: 2,
            available_ipv6: 5,
            ..Default::default()
        };
        let v = serde_json::to_value(&status).expect("serializes");
        assert_eq!(v["assignedIPv4"], 2);
        assert_eq!(v["availableIPv6"], 5);
    }

    #[test]
    fn crd_has_status_subresource_and_short_name() {
        let crd = IPPool::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("ippools.lb.ferrite.dev"));
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.short_names, Some(vec!["ipp".to_string()]));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    }

    #[test]
    fn metallb_service_allocation_parses_and_unknown_fields_are_kept_by_path() {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["192.0.2.0/28"],
            "serviceAllocation": {
                "priority": 50,
                "namespaces": ["a"],
                "namespaceSelectors": [{"matchLabels": {"team": "x"}}, {"matchLabels": {"team": "y"}}],
                "serviceSelectors": [{"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]}],
            },
        }))
        .expect("MetalLB's serviceAllocation parses");
        let a = spec.service_allocation.as_ref().expect("set");
        assert_eq!(a.priority, Some(50));
        assert_eq!(a.namespace_selectors.len(), 2);
        assert_eq!(a.service_selectors.len(), 1);
        assert!(spec.unknown_fields().is_empty());

        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["192.0.2.0/28"],
            "autoassign": false,
            "serviceAllocation": {"namespaceSelector": {"matchLabels": {"a": "b"}}, "serviceSelector": {}},
            "l2": {"interface": "eth0"},
        }))
        .expect("unknown fields do not fail parsing");
        assert_eq!(
            spec.unknown_fields(),
            vec![
                "spec.autoassign",
                "spec.serviceAllocation.namespaceSelector",
                "spec.serviceAllocation.serviceSelector",
                "spec.l2.interface",
            ]
        );
        // Known fields round-trip; the unknown ones are written back as they came.
        let v = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(v["autoassign"], false);
        assert_eq!(
            v["serviceAllocation"]["namespaceSelector"]["matchLabels"]["a"],
            "b"
        );
    }

    #[test]
    fn unknown_keys_inside_selectors_are_kept_and_named_by_path() {
        let spec: IPPoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["192.0.2.0/28"],
            "serviceAllocation": {
                "namespaceSelectors": [{"matchLabels": {"team": "x"}}, {"matchLabel": {"team": "y"}}],
                "serviceSelectors": [{"matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["web"]},
                    {"key": "tier", "operator": "In", "value": ["db"]},
                ]}],
            },
            "l2": {"nodeSelector": {"matchLabels": {"zone": "a"}, "matchExpression": []}},
        }))
        .expect("parses");
        assert_eq!(
            spec.unknown_fields(),
            vec![
                "spec.serviceAllocation.namespaceSelectors[1].matchLabel",
                "spec.serviceAllocation.serviceSelectors[0].matchExpressions[1].value",
                "spec.l2.nodeSelector.matchExpression",
            ]
        );
        // The known part is what the selector means; the typo'd one means nothing but is not lost.
        let a = spec.service_allocation.as_ref().expect("set");
        assert_eq!(
            a.namespace_selectors[0]
                .match_labels
                .as_ref()
                .and_then(|m| m.get("team"))
                .map(String::as_str),
            Some("x")
        );
        assert_eq!(*a.namespace_selectors[1], LabelSelector::default());
        let exprs = a.service_selectors[0].match_expressions.as_ref().expect("exprs");
        assert_eq!(exprs[1].key, "tier");
        assert_eq!(exprs[1].values, None);
        let v = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(
            v["serviceAllocation"]["namespaceSelectors"][1]["matchLabel"]["team"],
            "y"
        );
        assert_eq!(
            v["serviceAllocation"]["serviceSelectors"][0]["matchExpressions"][1]["value"][0],
            "db"
        );
        assert_eq!(v["l2"]["nodeSelector"]["matchLabels"]["zone"], "a");

        let adv: L2AdvertisementSpec = serde_json::from_value(serde_json::json!({
            "ipPoolSelectors": [{"matchLabels": {"a": "b"}}],
            "nodeSelectors": [{"matchLabels": {"a": "b"}}, {"matchLabel": {"zone": "a"}}],
            "serviceSelectors": [{"matchExpressions": [{"key": "k", "operator": "Exists", "vals": []}]}],
            "ipAddressPools": ["p"],
        }))
        .expect("parses");
        assert_eq!(
            adv.unknown_fields(),
            vec![
                "spec.ipAddressPools",
                "spec.nodeSelectors[1].matchLabel",
                "spec.serviceSelectors[0].matchExpressions[0].vals",
            ]
        );
        let clean: L2AdvertisementSpec =
            serde_json::from_value(serde_json::json!({"nodeSelectors": [{"matchLabels": {"a": "b"}}]}))
                .expect("parses");
        assert!(clean.unknown_fields().is_empty());
        // A selector built from a LabelSelector has nothing unknown and means the same.
        let ls = LabelSelector {
            match_labels: Some(BTreeMap::from([("a".to_string(), "b".to_string())])),
            match_expressions: None,
        };
        let s = Selector::from(ls.clone());
        assert_eq!(s.label_selector(), &ls);
        assert!(s.unknown_fields("x").is_empty());
        assert_eq!(label_selectors(&[s]), vec![ls]);
    }

    #[test]
    fn selector_schemas_preserve_unknown_keys_at_every_level() {
        let pool = serde_json::to_value(&IPPool::crd().spec.versions[0].schema).expect("schema");
        let spec = &pool["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let alloc = &spec["serviceAllocation"]["properties"];
        let adv = serde_json::to_value(&L2Advertisement::crd().spec.versions[0].schema).expect("schema");
        let aspec = &adv["openAPIV3Schema"]["properties"]["spec"]["properties"];
        let selectors = [
            ("namespaceSelectors", &alloc["namespaceSelectors"]["items"]),
            ("serviceSelectors", &alloc["serviceSelectors"]["items"]),
            ("l2.nodeSelector", &spec["l2"]["properties"]["nodeSelector"]),
            ("ipPoolSelectors", &aspec["ipPoolSelectors"]["items"]),
            ("nodeSelectors", &aspec["nodeSelectors"]["items"]),
            ("serviceSelectors (adv)", &aspec["serviceSelectors"]["items"]),
        ];
        for (name, sel) in selectors {
            assert_eq!(sel["x-kubernetes-preserve-unknown-fields"], true, "{name}: {sel}");
            assert_eq!(sel["type"], "object", "{name}: {sel}");
            assert!(sel.get("additionalProperties").is_none(), "{name}: {sel}");
            assert_eq!(sel["properties"]["matchLabels"]["type"], "object", "{name}");
            let item = &sel["properties"]["matchExpressions"]["items"];
            assert_eq!(
                item["x-kubernetes-preserve-unknown-fields"], true,
                "{name}: {item}"
            );
            assert_eq!(item["required"], serde_json::json!(["key", "operator"]), "{name}");
            assert!(item["properties"].get("unknown").is_none(), "{name}");
        }
    }

    #[test]
    fn auto_assign_order_is_metallbs_pinned_first_lower_first_unset_last_then_name() {
        // (pinned, priority, name): MetalLB's Allocate tries the pools with a serviceAllocation (sorted by
        // sortPools: positive priorities ascending, 0 = unset after them) before the pools without one.
        let mut pools = [
            auto_assign_order(false, None, "a-plain"),
            auto_assign_order(true, None, "z-empty"),
            auto_assign_order(true, Some(10), "z"),
            auto_assign_order(true, Some(0), "b-zero"),
            auto_assign_order(true, Some(-5), "m"),
            auto_assign_order(true, Some(10), "b"),
            auto_assign_order(false, Some(1), "0-plain"),
        ];
        pools.sort();
        let names: Vec<&str> = pools.iter().map(|(_, _, _, n)| *n).collect();
        assert_eq!(
            names,
            vec!["m", "b", "z", "b-zero", "z-empty", "0-plain", "a-plain"]
        );
        let pool: IPPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": "p"},
            "spec": {"addresses": ["192.0.2.0/28"], "serviceAllocation": {}},
        }))
        .expect("parses");
        assert_eq!(pool.auto_assign_order(), (false, true, 0, "p"));
    }

    #[test]
    fn crd_schema_keeps_unknown_fields_for_the_controller_to_name() {
        let crd = IPPool::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema serializes");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["x-kubernetes-preserve-unknown-fields"], true);
        assert!(spec.get("additionalProperties").is_none(), "{spec}");
        assert!(spec["properties"].get("unknown").is_none());
        let alloc = &spec["properties"]["serviceAllocation"];
        assert_eq!(alloc["x-kubernetes-preserve-unknown-fields"], true);
        for field in ["namespaceSelectors", "serviceSelectors"] {
            assert_eq!(alloc["properties"][field]["type"], "array", "{field}");
        }
        assert!(alloc["properties"].get("namespaceSelector").is_none());
        // No 0-1000 bound as in earlier releases: any int32, bounded so the API server refuses the rest.
        let priority = &alloc["properties"]["priority"];
        assert_eq!(priority["format"], "int32", "{priority}");
        assert_eq!(
            priority["minimum"].as_f64(),
            Some(f64::from(i32::MIN)),
            "{priority}"
        );
        assert_eq!(
            priority["maximum"].as_f64(),
            Some(f64::from(i32::MAX)),
            "{priority}"
        );
        assert_eq!(
            spec["properties"]["l2"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        let adv = serde_json::to_value(&L2Advertisement::crd().spec.versions[0].schema).expect("schema");
        assert_eq!(
            adv["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }
}
