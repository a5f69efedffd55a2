//! The allocator: which Service holds which address. A plain state machine with no I/O, in the style of
//! Linkerd's policy "index": the controller feeds it pools and Services, and reads decisions back.
//!
//! ```text
//!   IPPool objects ──PoolConfig::from_pool──> set_pools ──> Vec<PoolProblem>   (Overlapping -> condition)
//!   on start: every LB Service ──Request──> rebuild ──> Vec<(ServiceKey, AllocError)>   (losers of a duplicate)
//!   Service applied ──Request──> assign ──> Assignment {ips, pools, changed} | AllocError  (status / Event)
//!   Service deleted or no longer LoadBalancer ──> release
//!   read: stats(pool) (IPPool status, metrics), out_of_pool() (Warning Events, metric), assigned(key)
//! ```
//!
//! Order of calls: `set_pools`, then `rebuild` with every Service once, then `assign` per Service as events
//! arrive. `assign` is idempotent (the same request gives the same addresses) and atomic: when it fails the
//! Service keeps exactly what it held before.
//!
//! # Rules
//! - **Never two holders** of one address, except Services with the same sharing key whose ports
//!   (protocol + port) do not overlap.
//! - **Stability**: a Service keeps an address it holds while the address still fits its request: the family
//!   is requested, it is one of the requested IPs (if any), and — if the address is in some pool — a pool
//!   that allows the Service offers it (the named pool if one is named). `autoAssign` and `priority` are
//!   not re-checked for addresses already held: they steer new allocations only. A Service whose own request
//!   changed (other requested IP, other named pool, other families, a sharing key or ports that now
//!   conflict) moves.
//! - **Pools shrink, addresses stay**: an address held by a Service that is no longer in any pool (pool
//!   shrunk, deleted, or `avoidBuggyIPs` turned on) stays assigned and is listed by
//!   [`Allocator::out_of_pool`] so the controller can warn; it is never moved silently. New addresses always
//!   come from pools.
//! - **Requested IPs** (annotations, `spec.loadBalancerIP`) must be in a pool that allows the Service (the
//!   named pool when one is named); `autoAssign: false` pools are used only when named or when an address
//!   of theirs is requested. At most one requested IP per family; requested IPs are the whole answer.
//! - **Pool choice** without a named pool: among the pools that allow the Service, have `autoAssign` and have
//!   a free address of the family, MetalLB's order (its `Allocate`: the pinned pools sorted by `sortPools`,
//!   then the others): first every pool that **has a `serviceAllocation`** (even `{}` or only a priority),
//!   the **lowest `priority` number** first and those without a priority (or with 0, MetalLB's "unset")
//!   after them; then the pools without a `serviceAllocation`. Ties by pool name (alphabetical), where
//!   MetalLB's order is left to Go's map order and unstable sort. (Ferrite before v1alpha1's MetalLB
//!   parity used the opposite, higher-wins order.)
//! - **A pool allows a Service** (MetalLB's `serviceAllocation`) when both criteria hold: the namespace
//!   criterion (the namespace is in `namespaces` OR its labels match any of `namespaceSelectors`) and the
//!   Service criterion (its labels match any of `serviceSelectors`). An empty criterion matches everything.
//! - **Sharing** (MetalLB's rules): holders of one address have the same sharing key, no port (protocol +
//!   port) in common, and equal MetalLB backend keys: a Local Service's key is its `spec.selector`, a
//!   Cluster Service's is empty (so is a Local one's without a selector), so Local Services with a selector
//!   share only with Local Services of the same selector and the node announcing the address has
//!   endpoints of every one. With a sharing key
//!   and no requested IP, an address already used by the same key in a candidate pool is preferred (if the
//!   rules allow) over a free one, so `allow-shared-ip` alone is enough to put a TCP and a UDP Service on
//!   one address.
//! - **Dual-stack**: one address per family in [`Request::families`], both from ONE pool that offers both
//!   (MetalLB's rule) unless a pool is named or addresses are requested. With `dual_stack_required`
//!   (RequireDualStack) every family must be served or the assignment fails ([`AllocError::NoDualStackPool`]
//!   without such a pool); otherwise (PreferDualStack) without such a pool only the primary family is
//!   served, and a Service holding one address keeps just that one.
//! - **Restart**: [`Allocator::rebuild`] adopts the addresses in each Service's status, oldest Service first
//!   (creation time, then namespace/name), before anything is assigned. When two Services claim one address
//!   the older keeps it and the newer gets [`AllocError::IpInUse`]; the controller then calls `assign` for it,
//!   which gives it a new address, and emits an Event. Addresses outside every pool are adopted too (they
//!   keep being served).
//! - **Overlapping pools** are reported by [`Allocator::set_pools`] (for the `Overlapping` condition) but
//!   stay usable: an address is one entry in one global table, so it cannot be handed out twice.
//!
//! # Cost
//! Each pool keeps, per family, the count of its addresses in use and a cursor (the last address handed
//! out); a new address is found by walking the pool lazily from the cursor, wrapping once, skipping used
//! ones. The walk is bounded by the pool's used count, and exhaustion is known from the counts without
//! walking, so 10,000 Services in a /16 or a /64 pool cost about one step each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrite_api::lb::IPPool;
use ferrite_kit::ReasonedError;
use ferrite_kit::selector::{self, SelectorError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use crate::addr::{AddrError, Family, PoolAddresses};

/// A Service, by namespace and name. Orders by namespace, then name.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// `metadata.namespace`
    pub namespace: String,
    /// `metadata.name`
    pub name: String,
}

impl ServiceKey {
    /// A key from a namespace and a name.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the Kubernetes default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// A Service port as far as sharing is concerned: two Services conflict on the same protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    /// Protocol.
    pub protocol: Protocol,
    /// `spec.ports[].port`
    pub port: u16,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol)
    }
}

/// An `IPPool` as the allocator sees it: parsed addresses and validated selectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolConfig {
    /// `metadata.name`
    pub name: String,
    /// `spec.addresses`, parsed.
    pub addresses: PoolAddresses,
    /// `spec.autoAssign`
    pub auto_assign: bool,
    /// `spec.avoidBuggyIPs`
    pub avoid_buggy_ips: bool,
    /// Whether the pool has a `spec.serviceAllocation` at all, even `{}` or one with only a priority
    /// (MetalLB then pins it to every Service): such pools, when they allow the Service, are tried before
    /// every pool without one (see [`ferrite_api::lb::auto_assign_order`]).
    pub pinned: bool,
    /// `spec.serviceAllocation.priority`: lower is tried first; `None` or 0 (MetalLB's "unset") after
    /// every set one.
    pub priority: Option<i32>,
    /// `spec.serviceAllocation.namespaces` (ORed with `namespace_selectors`; both empty: every namespace).
    pub namespaces: Vec<String>,
    /// `spec.serviceAllocation.namespaceSelectors`, validated (any matching is enough).
    pub namespace_selectors: Vec<LabelSelector>,
    /// `spec.serviceAllocation.serviceSelectors`, validated (any matching is enough; empty: every Service).
    pub service_selectors: Vec<LabelSelector>,
}

/// An `IPPool` the allocator cannot use (`Invalid` condition); the pool is then left out of `set_pools`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// An entry of `spec.addresses` is wrong.
    #[error("IPPool \"{pool}\": {source}")]
    Address {
        /// The pool.
        pool: String,
        /// Which entry and why.
        #[source]
        source: AddrError,
    },
    /// A selector of `spec.serviceAllocation` or `spec.l2` is wrong.
    #[error("IPPool \"{pool}\": spec.{field}: {source}")]
    Selector {
        /// The pool.
        pool: String,
        /// Its path below `spec`: `serviceAllocation.namespaceSelectors[0]`, `l2.nodeSelector`...
        field: String,
        /// What is wrong.
        #[source]
        source: SelectorError,
    },
    /// An entry of `spec.l2.interfaces` is neither an interface name nor a valid `/regex/`.
    #[error("IPPool \"{pool}\": spec.l2.interfaces: {message}")]
    Interface {
        /// The pool.
        pool: String,
        /// Which entry and why.
        message: String,
    },
    /// The pool has fields this version does not define (each named, with its replacement if it was
    /// renamed or removed).
    #[error("IPPool \"{pool}\": {}", unknown_fields_message(.fields, "IPPool"))]
    UnknownField {
        /// The pool.
        pool: String,
        /// The paths of the fields (`spec.serviceAllocation.namespaceSelector`).
        fields: Vec<String>,
    },
}

/// What replaces a field of an earlier Ferrite release (or of MetalLB) that this version does not have.
pub fn replacement_of(path: &str) -> Option<&'static str> {
    match path {
        "spec.serviceAllocation.namespaceSelector" => {
            Some("removed: use namespaceSelectors (a list, ORed as in MetalLB)")
        }
        "spec.serviceAllocation.serviceSelector" => {
            Some("removed: use serviceSelectors (a list, ORed as in MetalLB)")
        }
        "spec.ipAddressPools" => Some("MetalLB's name: use ipPools"),
        "spec.ipAddressPoolSelectors" => Some("MetalLB's name: use ipPoolSelectors"),
        "spec.nodeSelector" => Some("use nodeSelectors (a list, ORed)"),
        "spec.l2.nodeSelectors" => {
            Some("the inline l2 block takes one nodeSelector; use an L2Advertisement for a list")
        }
        _ => None,
    }
}

/// "unknown field spec.x (not a field of KIND lb.ferrite.dev/v1alpha1); unknown field spec.y (removed:
/// use ...)": one clause per field, for conditions and Events.
pub fn unknown_fields_message(fields: &[String], kind: &str) -> String {
    fields
        .iter()
        .map(|f| match replacement_of(f) {
            Some(hint) => format!("unknown field {f} ({hint})"),
            None => format!("unknown field {f} (not a field of {kind} lb.ferrite.dev/v1alpha1)"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl PoolError {
    /// Short CamelCase reason for the `Invalid` condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            PoolError::Address { .. } => "InvalidAddress",
            PoolError::Selector { .. } => "InvalidSelector",
            PoolError::Interface { .. } => "InvalidInterface",
            PoolError::UnknownField { .. } => "UnknownField",
        }
    }
}

impl ReasonedError for PoolError {
    fn reason(&self) -> &'static str {
        PoolError::reason(self)
    }
}

impl PoolConfig {
    /// Reads an `IPPool`: refuses unknown fields, parses the addresses and validates the selectors and the
    /// inline `l2` block, so that matching later cannot fail.
    pub fn from_pool(p: &IPPool) -> Result<Self, PoolError> {
        let name = p.name_any();
        let unknown = p.spec.unknown_fields();
        if !unknown.is_empty() {
            return Err(PoolError::UnknownField {
                pool: name,
                fields: unknown,
            });
        }
        let addresses = PoolAddresses::parse(&p.spec.addresses).map_err(|source| PoolError::Address {
            pool: name.clone(),
            source,
        })?;
        let alloc = p.spec.service_allocation.clone().unwrap_or_default();
        let mut selectors: Vec<(String, &LabelSelector)> = Vec::new();
        for (field, list) in [
            ("namespaceSelectors", &alloc.namespace_selectors),
            ("serviceSelectors", &alloc.service_selectors),
        ] {
            for (i, sel) in list.iter().enumerate() {
                selectors.push((format!("serviceAllocation.{field}[{i}]"), sel));
            }
        }
        if let Some(sel) = p.spec.l2.as_ref().and_then(|l2| l2.node_selector.as_ref()) {
            selectors.push(("l2.nodeSelector".to_string(), sel));
        }
        for (field, sel) in selectors {
            selector::validate(sel).map_err(|source| PoolError::Selector {
                pool: name.clone(),
                field,
                source,
            })?;
        }
        if let Some(l2) = &p.spec.l2 {
            crate::l2::iface::InterfaceFilter::new(l2.interfaces.iter().cloned()).map_err(|e| {
                PoolError::Interface {
                    pool: name.clone(),
                    message: e.to_string(),
                }
            })?;
        }
        Ok(PoolConfig {
            name,
            addresses,
            auto_assign: p.spec.auto_assign,
            avoid_buggy_ips: p.spec.avoid_buggy_ips,
            pinned: p.spec.service_allocation.is_some(),
            priority: p.priority(),
            namespaces: alloc.namespaces,
            namespace_selectors: ferrite_api::lb::label_selectors(&alloc.namespace_selectors),
            service_selectors: ferrite_api::lb::label_selectors(&alloc.service_selectors),
        })
    }

    /// Whether the pool serves this Service (`serviceAllocation`); `Err` says why not.
    pub fn allows(&self, req: &Request) -> Result<(), String> {
        // Selectors were validated in from_pool; an invalid one (a hand-built config) matches nothing.
        let matches = |sels: &[LabelSelector], labels: &BTreeMap<String, String>| {
            sels.iter()
                .any(|sel| selector::matches(sel, labels).unwrap_or(false))
        };
        let namespace_ok = (self.namespaces.is_empty() && self.namespace_selectors.is_empty())
            || self.namespaces.contains(&req.key.namespace)
            || matches(&self.namespace_selectors, &req.namespace_labels);
        if !namespace_ok {
            let criterion = match (self.namespaces.is_empty(), self.namespace_selectors.is_empty()) {
                (false, true) => "is not in spec.serviceAllocation.namespaces",
                (true, false) => "has labels no spec.serviceAllocation.namespaceSelectors entry matches",
                _ => "is neither in spec.serviceAllocation.namespaces nor matched by its namespaceSelectors",
            };
            return Err(format!("namespace \"{}\" {criterion}", req.key.namespace));
        }
        if !self.service_selectors.is_empty() && !matches(&self.service_selectors, &req.labels) {
            return Err(
                "the Service's labels match no spec.serviceAllocation.serviceSelectors entry".to_string(),
            );
        }
        Ok(())
    }

    /// The sort key of the auto-assign order, MetalLB's: pools with a `serviceAllocation` first (set
    /// priorities lowest first, then unset or 0), then the pools without one; ties by name.
    fn order_key(&self) -> (bool, bool, i32, &str) {
        ferrite_api::lb::auto_assign_order(self.pinned, self.priority, &self.name)
    }

    /// Whether the allocator may hand out `ip` from this pool (inside it, not skipped by `avoidBuggyIPs`).
    pub fn offers(&self, ip: IpAddr) -> bool {
        self.addresses.offers(ip, self.avoid_buggy_ips)
    }
}

/// Everything the allocator needs to know about one Service, as read by the controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The Service.
    pub key: ServiceKey,
    /// `metadata.creationTimestamp` in seconds; with `key` as the tiebreak it decides who is older.
    pub created: i64,
    /// The Service's labels.
    pub labels: BTreeMap<String, String>,
    /// The labels of the Service's namespace.
    pub namespace_labels: BTreeMap<String, String>,
    /// Families to serve, primary first: `spec.ipFamilies` (SingleStack: the first only; RequireDualStack
    /// and PreferDualStack: both). Empty means the families of `requested`, or IPv4 if none is requested.
    pub families: Vec<Family>,
    /// `ipFamilyPolicy: RequireDualStack`: fail unless every family in `families` is served.
    pub dual_stack_required: bool,
    /// Requested addresses (annotations or `spec.loadBalancerIP`), at most one per family.
    pub requested: Vec<IpAddr>,
    /// Named pool (`lb.ferrite.dev/pool` or a MetalLB alias).
    pub pool: Option<String>,
    /// Sharing key (`lb.ferrite.dev/allow-shared-ip` or a MetalLB alias).
    pub sharing_key: Option<String>,
    /// `spec.ports`, for sharing conflicts.
    pub ports: Vec<Port>,
    /// `spec.externalTrafficPolicy: Local`: with a non-empty `selector`, may share only with Local
    /// Services of the same selector (MetalLB's backend key; without a selector the key is empty, as for
    /// Cluster).
    pub local: bool,
    /// `spec.selector` (compared between Local Services that share an address).
    pub selector: BTreeMap<String, String>,
    /// Addresses in `status.loadBalancer.ingress` now; kept when still valid so addresses are stable.
    pub current: Vec<IpAddr>,
}

impl Request {
    /// The families to serve, deduplicated, primary first (see [`Request::families`]).
    fn wanted_families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = Vec::new();
        let source: Vec<Family> = if !self.families.is_empty() {
            self.families.clone()
        } else if !self.requested.is_empty() {
            self.requested.iter().map(|ip| Family::of(*ip)).collect()
        } else {
            vec![Family::V4]
        };
        for f in source {
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    fn requested_of(&self, family: Family) -> Option<IpAddr> {
        self.requested
            .iter()
            .copied()
            .find(|ip| Family::of(*ip) == family)
    }
}

/// The outcome of a successful [`Allocator::assign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The Service's addresses, in the order of its families; write them to `status.loadBalancer.ingress`.
    pub ips: Vec<IpAddr>,
    /// The pools the addresses are in (sorted, deduplicated); empty for addresses outside every pool.
    pub pools: Vec<String>,
    /// The pool of each address, in the order of `ips` (`None`: outside every pool).
    pub pool_of: Vec<Option<String>>,
    /// Whether the addresses differ from what the allocator held for the Service before the call (emit
    /// `IPAllocated` only then).
    pub changed: bool,
}

/// Something wrong with the set of pools, reported by [`Allocator::set_pools`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolProblem {
    /// `pool` shares addresses with `other` (`ip` is one of them). Reported once for each of the two pools.
    Overlapping {
        /// The pool to put the condition on.
        pool: String,
        /// The other pool.
        other: String,
        /// One shared address.
        ip: IpAddr,
    },
}

impl fmt::Display for PoolProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolProblem::Overlapping { pool, other, ip } => {
                write!(
                    f,
                    "IPPool \"{pool}\" overlaps IPPool \"{other}\" (both contain {ip})"
                )
            }
        }
    }
}

/// Address counts of one pool, per family (for `IPPool` status and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Addresses the pool may hand out (after `avoidBuggyIPs`), IPv4.
    pub total_v4: u128,
    /// IPv4 addresses of the pool held by Services.
    pub assigned_v4: u128,
    /// IPv4 addresses still free.
    pub available_v4: u128,
    /// Addresses the pool may hand out, IPv6 (saturating at `u128::MAX`).
    pub total_v6: u128,
    /// IPv6 addresses of the pool held by Services.
    pub assigned_v6: u128,
    /// IPv6 addresses still free.
    pub available_v6: u128,
}

/// Why a Service did not get (all) its addresses. The message is fit for an `AllocationFailed` Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every candidate pool is full for the family.
    #[error("no free {family} address in {}", pool_list(.pools))]
    PoolExhausted {
        /// The candidate pools, in the order they were tried.
        pools: Vec<String>,
        /// The family.
        family: Family,
    },
    /// The named pool has no address of the family.
    #[error("pool \"{pool}\" has no {family} addresses; name another pool or change ipFamilies")]
    PoolLacksFamily {
        /// The named pool.
        pool: String,
        /// The family.
        family: Family,
    },
    /// The address is held by another Service that does not share it.
    #[error(
        "IP {ip} is in use by {by}; to share it give both Services the same lb.ferrite.dev/allow-shared-ip key"
    )]
    IpInUse {
        /// The address.
        ip: IpAddr,
        /// Its holder.
        by: ServiceKey,
    },
    /// A requested address in no pool.
    #[error("IP {ip} is not in any IPPool (or is skipped by avoidBuggyIPs); request an address of a pool")]
    OutsidePools {
        /// The address.
        ip: IpAddr,
    },
    /// A requested address outside the named pool.
    #[error("IP {ip} is not in pool \"{pool}\" (or is skipped by its avoidBuggyIPs)")]
    NotInPool {
        /// The address.
        ip: IpAddr,
        /// The named pool.
        pool: String,
    },
    /// The named pool does not exist (or is invalid).
    #[error("pool \"{pool}\" does not exist or is invalid")]
    UnknownPool {
        /// The named pool.
        pool: String,
    },
    /// The pool's `serviceAllocation` excludes the Service.
    #[error("pool \"{pool}\" does not serve this Service: {why}")]
    PoolNotAllowed {
        /// The pool.
        pool: String,
        /// Which criterion failed.
        why: String,
    },
    /// A dual-stack Service (RequireDualStack, no named pool, nothing requested) and no auto-assign pool
    /// that allows it has a free address of both families (MetalLB takes both from one pool).
    #[error(
        "no IPPool with free IPv4 and IPv6 addresses serves this Service: both addresses of a dual-stack Service come from one pool (as in MetalLB); add both families to a pool, or name a pool"
    )]
    NoDualStackPool,
    /// No auto-assign pool that allows the Service has addresses of the family.
    #[error(
        "no IPPool with {family} addresses serves this Service (check autoAssign and serviceAllocation, or name a pool)"
    )]
    NoMatchingPool {
        /// The family.
        family: Family,
    },
    /// Same sharing key, but a port is used by both Services.
    #[error("IP {ip} is shared with {by}, which already uses port {port}; use another port or another key")]
    SharingConflict {
        /// The address.
        ip: IpAddr,
        /// The Service using the port.
        by: ServiceKey,
        /// The conflicting port.
        port: Port,
    },
    /// Same sharing key and no port conflict, but MetalLB's backend rule refuses: the holders' backend
    /// keys (a Local Service's `spec.selector`, empty for Cluster or a Local Service without a selector)
    /// differ.
    #[error(
        "IP {ip} is shared with {by}, but {why}; a Service with externalTrafficPolicy: Local and a spec.selector shares an address only with Local Services of the same spec.selector (the announcing node must have endpoints of all of them); use another address or key"
    )]
    SharingTrafficPolicy {
        /// The address.
        ip: IpAddr,
        /// The Service it would share with.
        by: ServiceKey,
        /// What differs.
        why: String,
    },
    /// Both Services have sharing keys, but different ones.
    #[error("IP {ip} is in use by {by}, which has a different allow-shared-ip key")]
    SharingKeyMismatch {
        /// The address.
        ip: IpAddr,
        /// Its holder.
        by: ServiceKey,
    },
    /// A requested address of a family the Service does not have.
    #[error("requested IP {ip} is {}, which is not in the Service's ipFamilies", Family::of(*.ip))]
    FamilyNotRequested {
        /// The address.
        ip: IpAddr,
    },
    /// Two requested addresses of one family.
    #[error("more than one {family} address requested; request at most one per family")]
    TooManyRequested {
        /// The family.
        family: Family,
    },
    /// RequireDualStack with requested addresses that miss a family.
    #[error(
        "the Service requires dual-stack but requests no {family} address; request one per family, or none"
    )]
    RequestedFamilyMissing {
        /// The missing family.
        family: Family,
    },
}

fn pool_list(pools: &[String]) -> String {
    let quoted: Vec<String> = pools.iter().map(|p| format!("\"{p}\"")).collect();
    match quoted.len() {
        1 => format!("pool {}", quoted.join("")),
        _ => format!("pools {}", quoted.join(", ")),
    }
}

impl AllocError {
    /// True when the failure is about addresses other Services hold, so a release may cure it (the
    /// Service is retried as soon as anything is released instead of after its backoff).
    pub fn may_free_up(&self) -> bool {
        matches!(
            self,
            AllocError::PoolExhausted { .. }
                | AllocError::IpInUse { .. }
                | AllocError::SharingConflict { .. }
                | AllocError::SharingKeyMismatch { .. }
                | AllocError::SharingTrafficPolicy { .. }
        )
    }

    /// True when sharing rules refused the address (the controller's `SharingConflict` Event).
    pub fn is_sharing(&self) -> bool {
        matches!(
            self,
            AllocError::SharingConflict { .. }
                | AllocError::SharingKeyMismatch { .. }
                | AllocError::SharingTrafficPolicy { .. }
        )
    }

    /// Short CamelCase reason for Event reasons and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            AllocError::PoolExhausted { .. } => "PoolExhausted",
            AllocError::PoolLacksFamily { .. } => "PoolLacksFamily",
            AllocError::IpInUse { .. } => "IPInUse",
            AllocError::OutsidePools { .. } => "IPOutsidePools",
            AllocError::NotInPool { .. } => "IPNotInPool",
            AllocError::UnknownPool { .. } => "UnknownPool",
            AllocError::PoolNotAllowed { .. } => "PoolNotAllowed",
            AllocError::NoMatchingPool { .. } => "NoMatchingPool",
            AllocError::NoDualStackPool => "NoDualStackPool",
            AllocError::SharingConflict { .. } => "SharingConflict",
            AllocError::SharingKeyMismatch { .. } => "SharingKeyMismatch",
            AllocError::SharingTrafficPolicy { .. } => "SharingTrafficPolicy",
            AllocError::FamilyNotRequested { .. } => "FamilyNotRequested",
            AllocError::TooManyRequested { .. } => "TooManyRequestedIPs",
            AllocError::RequestedFamilyMissing { .. } => "RequestedFamilyMissing",
        }
    }
}

impl ReasonedError for AllocError {
    fn reason(&self) -> &'static str {
        AllocError::reason(self)
    }
}

fn fidx(f: Family) -> usize {
    match f {
        Family::V4 => 0,
        Family::V6 => 1,
    }
}

fn lowest(f: Family) -> IpAddr {
    match f {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// A pool with its counters.
#[derive(Debug, Clone)]
struct Pool {
    cfg: PoolConfig,
    /// Addresses the pool may hand out, per family.
    usable: [u128; 2],
    /// Distinct held addresses the pool offers, per family.
    assigned: [u128; 2],
    /// Last address handed out from this pool, per family: the next walk starts there.
    cursor: [Option<IpAddr>; 2],
}

impl Pool {
    fn new(cfg: PoolConfig) -> Self {
        let usable = Family::ALL.map(|f| cfg.addresses.usable(f, cfg.avoid_buggy_ips));
        Pool {
            cfg,
            usable,
            assigned: [0; 2],
            cursor: [None; 2],
        }
    }

    fn free(&self, f: Family) -> u128 {
        self.usable[fidx(f)].saturating_sub(self.assigned[fidx(f)])
    }
}

/// What one Service holds.
#[derive(Debug, Clone)]
struct Held {
    ips: Vec<IpAddr>,
    sharing_key: Option<String>,
    ports: Vec<Port>,
    local: bool,
    selector: BTreeMap<String, String>,
}

impl Held {
    fn of(req: &Request, ips: Vec<IpAddr>) -> Self {
        Held {
            ips,
            sharing_key: req.sharing_key.clone(),
            ports: req.ports.clone(),
            local: req.local,
            selector: req.selector.clone(),
        }
    }
}

/// MetalLB's backend key of a Service (`k8salloc.BackendKey`): its `spec.selector` when it is
/// `externalTrafficPolicy: Local`, empty for Cluster. Services share an address only with equal keys.
fn backend_key(local: bool, selector: &BTreeMap<String, String>) -> Option<&BTreeMap<String, String>> {
    (local && !selector.is_empty()).then_some(selector)
}

/// `a=b,c=d` (sorted), or `<none>` for the empty selector.
fn selector_text(sel: &BTreeMap<String, String>) -> String {
    if sel.is_empty() {
        return "<none>".to_string();
    }
    sel.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Who holds one address. Every holder has `sharing_key` (at most one holder when it is `None`).
#[derive(Debug, Clone)]
struct IpUse {
    sharing_key: Option<String>,
    holders: BTreeSet<ServiceKey>,
}

/// The allocation state of the whole cluster. See the module docs for the rules.
#[derive(Debug, Clone, Default)]
pub struct Allocator {
    /// In the auto-assign order: pools with a `serviceAllocation` (set priorities lowest first, then unset
    /// ones), then the others, ties by name.
    pools: Vec<Pool>,
    services: HashMap<ServiceKey, Held>,
    ips: HashMap<IpAddr, IpUse>,
    by_sharing_key: HashMap<String, BTreeSet<IpAddr>>,
}

/// One planned address: the address and the pool it was freshly taken from (to move that pool's cursor).
type Planned = (IpAddr, Option<usize>);

impl Allocator {
    /// An allocator with no pools and no Services.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the pools (pass every valid pool each time). Held addresses are kept whatever the change
    /// (see [`Allocator::out_of_pool`]). Returns the overlaps between pools.
    pub fn set_pools(&mut self, pools: Vec<PoolConfig>) -> Vec<PoolProblem> {
        let mut new: Vec<Pool> = Vec::with_capacity(pools.len());
        for cfg in pools {
            if new.iter().any(|p| p.cfg.name == cfg.name) {
                continue; // names are unique in the API; keep the first if a caller repeats one
            }
            let mut pool = Pool::new(cfg);
            // Keep the cursor of an unchanged pool so a config edit elsewhere does not rewind it.
            if let Some(old) = self.pools.iter().find(|p| p.cfg.name == pool.cfg.name)
                && old.cfg.addresses == pool.cfg.addresses
            {
                pool.cursor = old.cursor;
            }
            new.push(pool);
        }
        new.sort_by(|a, b| a.cfg.order_key().cmp(&b.cfg.order_key()));
        for ip in self.ips.keys() {
            for p in new.iter_mut().filter(|p| p.cfg.offers(*ip)) {
                p.assigned[fidx(Family::of(*ip))] += 1;
            }
        }
        self.pools = new;

        let mut problems = Vec::new();
        for (i, a) in self.pools.iter().enumerate() {
            for b in &self.pools[i + 1..] {
                if let Some(ip) = a.cfg.addresses.overlaps(&b.cfg.addresses) {
                    problems.push(PoolProblem::Overlapping {
                        pool: a.cfg.name.clone(),
                        other: b.cfg.name.clone(),
                        ip,
                    });
                    problems.push(PoolProblem::Overlapping {
                        pool: b.cfg.name.clone(),
                        other: a.cfg.name.clone(),
                        ip,
                    });
                }
            }
        }
        problems
    }

    /// Gives the Service its addresses: keeps what it holds (or has in its status) while still valid,
    /// takes requested addresses, or picks free ones. Idempotent; on error nothing changes.
    pub fn assign(&mut self, req: &Request) -> Result<Assignment, AllocError> {
        let families = req.wanted_families();
        self.check_requested_shape(req, &families)?;
        let needed: Vec<Family> = if req.requested.is_empty() {
            families.clone()
        } else {
            families
                .iter()
                .copied()
                .filter(|f| req.requested_of(*f).is_some())
                .collect()
        };

        let held = self.services.get(&req.key);
        let existing: &[IpAddr] = held.map_or(&req.current, |h| &h.ips);
        let mut needed = needed;
        let mut kept: Vec<Option<IpAddr>> = needed
            .iter()
            .map(|&f| {
                existing.iter().copied().find(|ip| {
                    Family::of(*ip) == f
                        && self.fits_request(*ip, req, held.is_some())
                        && self.check_share(*ip, req).is_ok()
                })
            })
            .collect();
        // MetalLB's dual-stack rule (no named pool, nothing requested): both families from ONE pool that
        // offers both; PreferDualStack without such a pool gets its primary family only, and a
        // PreferDualStack Service that holds one address keeps just that one (idempotent: a second look
        // does not add what the first refused); RequireDualStack missing a family takes it from the
        // held address's pool. Addresses already held (two pools, from an earlier release) are kept.
        let mut only: Option<usize> = None;
        if req.pool.is_none() && req.requested.is_empty() && needed.len() == 2 {
            match (kept[0], kept[1]) {
                (Some(_), Some(_)) => {}
                (None, None) => match self.dual_stack_pool(req) {
                    Some(i) => only = Some(i),
                    None if req.dual_stack_required => return Err(AllocError::NoDualStackPool),
                    None => {
                        needed.truncate(1);
                        kept.truncate(1);
                    }
                },
                (Some(ip), None) | (None, Some(ip)) if !req.dual_stack_required => {
                    needed = vec![Family::of(ip)];
                    kept = vec![Some(ip)];
                }
                (Some(ip), None) | (None, Some(ip)) => {
                    let missing = if Family::of(ip) == Family::V4 {
                        Family::V6
                    } else {
                        Family::V4
                    };
                    match self
                        .pools
                        .iter()
                        .position(|p| p.cfg.offers(ip))
                        .filter(|&i| self.pools[i].usable[fidx(missing)] > 0)
                    {
                        Some(i) => only = Some(i),
                        None => return Err(AllocError::NoDualStackPool),
                    }
                }
            }
        }
        let mut plan: Vec<Planned> = Vec::new();
        let mut errors: Vec<AllocError> = Vec::new();
        for (&f, keep) in needed.iter().zip(kept) {
            let got = match keep {
                Some(ip) => Ok((ip, None)),
                None => match req.requested_of(f) {
                    Some(ip) => self.check_requested(ip, req).map(|()| (ip, None)),
                    None => self.pick(f, req, only),
                },
            };
            match got {
                Ok(p) => plan.push(p),
                Err(e) => errors.push(e),
            }
        }
        // Requested addresses and RequireDualStack are all-or-nothing; PreferDualStack takes what it can.
        if let Some(e) = errors.first()
            && (plan.is_empty() || req.dual_stack_required || !req.requested.is_empty())
        {
            return Err(e.clone());
        }
        Ok(self.commit(req, plan))
    }

    /// Frees every address of the Service (deleted, or no longer `type: LoadBalancer`).
    pub fn release(&mut self, key: &ServiceKey) {
        if let Some(held) = self.services.remove(key) {
            for ip in held.ips {
                self.unhold(ip, key);
            }
        }
    }

    /// Forgets every Service and adopts the addresses in the status of `existing` (every LoadBalancer
    /// Service this controller serves), oldest first. Addresses that no longer fit a Service's request are
    /// not adopted (its next `assign` moves it); an address already adopted by an older Service that does
    /// not share it is refused with the error returned here for the newer one.
    pub fn rebuild(&mut self, mut existing: Vec<Request>) -> Vec<(ServiceKey, AllocError)> {
        self.services.clear();
        self.ips.clear();
        self.by_sharing_key.clear();
        for p in &mut self.pools {
            p.assigned = [0; 2];
            p.cursor = [None; 2];
        }
        existing.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.key.cmp(&b.key)));
        let mut errors = Vec::new();
        for req in &existing {
            let families = req.wanted_families();
            // Registered before adopting so that newer Services see this one's key and ports.
            self.services.insert(req.key.clone(), Held::of(req, Vec::new()));
            for &ip in &req.current {
                let f = Family::of(ip);
                let has_family = self
                    .assigned(&req.key)
                    .is_some_and(|ips| ips.iter().any(|a| Family::of(*a) == f));
                if !families.contains(&f) || has_family || !self.fits_request(ip, req, true) {
                    continue;
                }
                match self.check_share(ip, req) {
                    Ok(()) => {
                        self.hold(ip, &req.key, req.sharing_key.as_deref());
                        if let Some(h) = self.services.get_mut(&req.key) {
                            h.ips.push(ip);
                        }
                    }
                    Err(e) => errors.push((req.key.clone(), e)),
                }
            }
        }
        errors
    }

    /// Address counts of the pool, or `None` if there is no such (valid) pool.
    pub fn stats(&self, pool: &str) -> Option<PoolStats> {
        let p = self.pools.iter().find(|p| p.cfg.name == pool)?;
        Some(PoolStats {
            total_v4: p.usable[0],
            assigned_v4: p.assigned[0],
            available_v4: p.free(Family::V4),
            total_v6: p.usable[1],
            assigned_v6: p.assigned[1],
            available_v6: p.free(Family::V6),
        })
    }

    /// Addresses held by Services but offered by no pool any more (pool shrunk or deleted, or
    /// `avoidBuggyIPs` turned on): still served; the controller warns. Sorted by Service, then address.
    pub fn out_of_pool(&self) -> Vec<(ServiceKey, IpAddr)> {
        let mut out: Vec<(ServiceKey, IpAddr)> = self
            .services
            .iter()
            .flat_map(|(k, h)| h.ips.iter().map(move |ip| (k, *ip)))
            .filter(|(_, ip)| !self.offered(*ip))
            .map(|(k, ip)| (k.clone(), ip))
            .collect();
        out.sort();
        out
    }

    /// The addresses `key` holds that are in no pool (a cheap, per-Service [`Allocator::out_of_pool`]).
    pub fn out_of_pool_of(&self, key: &ServiceKey) -> Vec<IpAddr> {
        self.services
            .get(key)
            .map(|h| h.ips.iter().copied().filter(|ip| !self.offered(*ip)).collect())
            .unwrap_or_default()
    }

    fn offered(&self, ip: IpAddr) -> bool {
        self.pools.iter().any(|p| p.cfg.offers(ip))
    }

    /// The addresses the Service holds, if any.
    pub fn assigned(&self, key: &ServiceKey) -> Option<&[IpAddr]> {
        self.services.get(key).map(|h| h.ips.as_slice())
    }

    /// The Services holding `ip` (more than one only when they share it).
    pub fn holders(&self, ip: IpAddr) -> Vec<ServiceKey> {
        self.ips
            .get(&ip)
            .map(|u| u.holders.iter().cloned().collect())
            .unwrap_or_default()
    }

    // ---- checks (no mutation) ----

    /// Requested IPs: at most one per family, only wanted families, all families under RequireDualStack.
    fn check_requested_shape(&self, req: &Request, families: &[Family]) -> Result<(), AllocError> {
        for (i, ip) in req.requested.iter().enumerate() {
            let f = Family::of(*ip);
            if !families.contains(&f) {
                return Err(AllocError::FamilyNotRequested { ip: *ip });
            }
            if req.requested[..i].iter().any(|o| Family::of(*o) == f && o != ip) {
                return Err(AllocError::TooManyRequested { family: f });
            }
        }
        if !req.requested.is_empty()
            && req.dual_stack_required
            && let Some(f) = families.iter().find(|f| req.requested_of(**f).is_none())
        {
            return Err(AllocError::RequestedFamilyMissing { family: *f });
        }
        Ok(())
    }

    /// Whether an address the Service has may stay with it under its current request (sharing aside).
    /// `held`: the allocator already gave it to this Service, so it may be outside every pool.
    fn fits_request(&self, ip: IpAddr, req: &Request, held: bool) -> bool {
        if !req.requested.is_empty() && !req.requested.contains(&ip) {
            return false;
        }
        let mut offering = self.pools.iter().filter(|p| p.cfg.offers(ip)).peekable();
        if offering.peek().is_none() {
            return held;
        }
        let mut offering = offering.filter(|p| p.cfg.allows(req).is_ok());
        match &req.pool {
            Some(name) => offering.any(|p| &p.cfg.name == name),
            None => offering.next().is_some(),
        }
    }

    /// Whether the Service may hold `ip` next to its current holders.
    fn check_share(&self, ip: IpAddr, req: &Request) -> Result<(), AllocError> {
        let Some(used) = self.ips.get(&ip) else {
            return Ok(());
        };
        for by in used.holders.iter().filter(|h| **h != req.key) {
            let Some(other) = self.services.get(by) else {
                continue;
            };
            match (req.sharing_key.as_deref(), other.sharing_key.as_deref()) {
                (Some(a), Some(b)) if a == b => {
                    if let Some(port) = req.ports.iter().find(|p| other.ports.contains(p)) {
                        return Err(AllocError::SharingConflict {
                            ip,
                            by: by.clone(),
                            port: *port,
                        });
                    }
                    // MetalLB's backend key (k8salloc.BackendKey, compared by sharingOK): a Local
                    // Service's spec.selector, "" for Cluster; holders must have equal keys. So a Local
                    // Service without a selector shares with Cluster ones, like MetalLB.
                    let why = if backend_key(req.local, &req.selector)
                        == backend_key(other.local, &other.selector)
                    {
                        None
                    } else if req.local && other.local {
                        Some(format!(
                            "both are externalTrafficPolicy: Local with different spec.selector ({} here, {} on {by})",
                            selector_text(&req.selector),
                            selector_text(&other.selector)
                        ))
                    } else {
                        let policy = |local: bool, sel: &BTreeMap<String, String>| {
                            if local {
                                format!("Local (spec.selector {})", selector_text(sel))
                            } else {
                                "Cluster".to_string()
                            }
                        };
                        Some(format!(
                            "this Service has externalTrafficPolicy: {} and {by} has {}",
                            policy(req.local, &req.selector),
                            policy(other.local, &other.selector)
                        ))
                    };
                    if let Some(why) = why {
                        return Err(AllocError::SharingTrafficPolicy {
                            ip,
                            by: by.clone(),
                            why,
                        });
                    }
                }
                (Some(_), Some(_)) => return Err(AllocError::SharingKeyMismatch { ip, by: by.clone() }),
                _ => return Err(AllocError::IpInUse { ip, by: by.clone() }),
            }
        }
        Ok(())
    }

    /// A requested address: in a pool that allows the Service (the named one if any), and shareable.
    fn check_requested(&self, ip: IpAddr, req: &Request) -> Result<(), AllocError> {
        match &req.pool {
            Some(name) => {
                let p = self.named_pool(name)?;
                if !p.cfg.offers(ip) {
                    return Err(AllocError::NotInPool {
                        ip,
                        pool: name.clone(),
                    });
                }
                p.cfg.allows(req).map_err(|why| AllocError::PoolNotAllowed {
                    pool: name.clone(),
                    why,
                })?;
            }
            None => {
                let offering: Vec<&Pool> = self.pools.iter().filter(|p| p.cfg.offers(ip)).collect();
                let first = offering.first().ok_or(AllocError::OutsidePools { ip })?;
                if !offering.iter().any(|p| p.cfg.allows(req).is_ok()) {
                    let why = first.cfg.allows(req).err().unwrap_or_default();
                    return Err(AllocError::PoolNotAllowed {
                        pool: first.cfg.name.clone(),
                        why,
                    });
                }
            }
        }
        self.check_share(ip, req)
    }

    fn named_pool(&self, name: &str) -> Result<&Pool, AllocError> {
        self.pools
            .iter()
            .find(|p| p.cfg.name == name)
            .ok_or_else(|| AllocError::UnknownPool {
                pool: name.to_string(),
            })
    }

    /// A new address of family `f` for a Service that requested none.
    /// The first auto-assign pool (in pool order) that allows `req` and has a free address of each
    /// family: where a dual-stack Service takes both (MetalLB's rule).
    fn dual_stack_pool(&self, req: &Request) -> Option<usize> {
        (0..self.pools.len()).find(|&i| {
            let p = &self.pools[i];
            p.cfg.auto_assign && Family::ALL.iter().all(|f| p.free(*f) > 0) && p.cfg.allows(req).is_ok()
        })
    }

    /// A free address of family `f` for `req`: from its named pool, else from the auto-assign pools
    /// (only pool `only` when given).
    fn pick(&self, f: Family, req: &Request, only: Option<usize>) -> Result<Planned, AllocError> {
        let candidates: Vec<usize> = match &req.pool {
            Some(name) => {
                let p = self.named_pool(name)?;
                p.cfg.allows(req).map_err(|why| AllocError::PoolNotAllowed {
                    pool: name.clone(),
                    why,
                })?;
                if !p.cfg.addresses.has(f) {
                    return Err(AllocError::PoolLacksFamily {
                        pool: name.clone(),
                        family: f,
                    });
                }
                self.pools
                    .iter()
                    .position(|q| q.cfg.name == *name)
                    .into_iter()
                    .collect()
            }
            None => (0..self.pools.len())
                .filter(|&i| {
                    let p = &self.pools[i];
                    only.is_none_or(|o| o == i)
                        && p.cfg.auto_assign
                        && p.usable[fidx(f)] > 0
                        && p.cfg.allows(req).is_ok()
                })
                .collect(),
        };
        if candidates.is_empty() {
            return Err(AllocError::NoMatchingPool { family: f });
        }

        // An address the sharing key already uses, in pool order, beats a free one.
        if let Some(key) = &req.sharing_key
            && let Some(shared) = self.by_sharing_key.get(key)
        {
            for &i in &candidates {
                let p = &self.pools[i];
                if let Some(ip) = shared.iter().copied().find(|ip| {
                    Family::of(*ip) == f && p.cfg.offers(*ip) && self.check_share(*ip, req).is_ok()
                }) {
                    return Ok((ip, None));
                }
            }
        }

        for &i in &candidates {
            let p = &self.pools[i];
            if p.free(f) == 0 {
                continue;
            }
            if let Some(ip) = self.scan(p, f) {
                return Ok((ip, Some(i)));
            }
        }
        Err(AllocError::PoolExhausted {
            pools: candidates
                .iter()
                .map(|&i| self.pools[i].cfg.name.clone())
                .collect(),
            family: f,
        })
    }

    /// The first free address of the pool from its cursor, wrapping once. Bounded by the pool's used count:
    /// each step either finds a free address or passes a used one.
    fn scan(&self, p: &Pool, f: Family) -> Option<IpAddr> {
        let avoid = p.cfg.avoid_buggy_ips;
        let start = p.cursor[fidx(f)].unwrap_or(lowest(f));
        let limit = usize::try_from(p.assigned[fidx(f)])
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        p.cfg
            .addresses
            .candidates_from(f, start, avoid)
            .chain(p.cfg.addresses.candidates(f, avoid).take_while(|ip| *ip < start))
            .take(limit)
            .find(|ip| !self.ips.contains_key(ip))
    }

    // ---- mutation ----

    fn commit(&mut self, req: &Request, plan: Vec<Planned>) -> Assignment {
        let old = self.services.remove(&req.key);
        let old_ips: BTreeSet<IpAddr> = old.iter().flat_map(|h| h.ips.iter().copied()).collect();
        for ip in &old_ips {
            self.unhold(*ip, &req.key);
        }
        let ips: Vec<IpAddr> = plan.iter().map(|(ip, _)| *ip).collect();
        self.services.insert(req.key.clone(), Held::of(req, ips.clone()));
        for (ip, from_pool) in plan {
            self.hold(ip, &req.key, req.sharing_key.as_deref());
            if let Some(i) = from_pool
                && let Some(p) = self.pools.get_mut(i)
            {
                p.cursor[fidx(Family::of(ip))] = Some(ip);
            }
        }
        let new_ips: BTreeSet<IpAddr> = ips.iter().copied().collect();
        let pool_of: Vec<Option<String>> = ips
            .iter()
            .map(|ip| {
                let mut offering = self.pools.iter().filter(|p| p.cfg.offers(*ip));
                match &req.pool {
                    Some(name)
                        if self
                            .pools
                            .iter()
                            .any(|p| &p.cfg.name == name && p.cfg.offers(*ip)) =>
                    {
                        Some(name.clone())
                    }
                    _ => offering
                        .find(|p| p.cfg.allows(req).is_ok())
                        .map(|p| p.cfg.name.clone()),
                }
            })
            .collect();
        let mut pools: Vec<String> = pool_of.iter().flatten().cloned().collect();
        pools.sort();
        pools.dedup();
        Assignment {
            ips,
            pools,
            pool_of,
            changed: old.is_none() || old_ips != new_ips,
        }
    }

    fn hold(&mut self, ip: IpAddr, key: &ServiceKey, sharing_key: Option<&str>) {
        let fresh = !self.ips.contains_key(&ip);
        let used = self.ips.entry(ip).or_insert_with(|| IpUse {
            sharing_key: sharing_key.map(str::to_string),
            holders: BTreeSet::new(),
        });
        used.holders.insert(key.clone());
        if fresh {
            for p in self.pools.iter_mut().filter(|p| p.cfg.offers(ip)) {
                p.assigned[fidx(Family::of(ip))] += 1;
            }
            if let Some(k) = sharing_key {
                self.by_sharing_key.entry(k.to_string()).or_default().insert(ip);
            }
        }
    }

    fn unhold(&mut self, ip: IpAddr, key: &ServiceKey) {
        let Some(used) = self.ips.get_mut(&ip) else { return };
        used.holders.remove(key);
        if !used.holders.is_empty() {
            return;
        }
        let sharing_key = used.sharing_key.take();
        self.ips.remove(&ip);
        for p in self.pools.iter_mut().filter(|p| p.cfg.offers(ip)) {
            let a = &mut p.assigned[fidx(Family::of(ip))];
            *a = a.saturating_sub(1);
        }
        if let Some(k) = sharing_key
            && let Some(set) = self.by_sharing_key.get_mut(&k)
        {
            set.remove(&ip);
            if set.is_empty() {
                self.by_sharing_key.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| ip(s)).collect()
    }

    fn pool(name: &str, addrs: &[&str]) -> PoolConfig {
        PoolConfig {
            name: name.to_string(),
            addresses: PoolAddresses::parse(addrs).unwrap(),
            auto_assign: true,
            ..Default::default()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn selector(pairs: &[(&str, &str)]) -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(labels(pairs)),
            match_expressions: None,
        })
    }

    impl PoolConfig {
        fn prio(mut self, p: i32) -> Self {
            self.pinned = true;
            self.priority = Some(p);
            self
        }
        /// `serviceAllocation: {}`: pinned to every Service, no priority.
        fn pinned(mut self) -> Self {
            self.pinned = true;
            self
        }
        fn manual(mut self) -> Self {
            self.auto_assign = false;
            self
        }
        fn avoid_buggy(mut self) -> Self {
            self.avoid_buggy_ips = true;
            self
        }
        fn only_ns(mut self, ns: &[&str]) -> Self {
            self.pinned = true;
            self.namespaces = ns.iter().map(|s| s.to_string()).collect();
            self
        }
        fn svc_sel(mut self, pairs: &[(&str, &str)]) -> Self {
            self.pinned = true;
            self.service_selectors.extend(selector(pairs));
            self
        }
        fn ns_sel(mut self, pairs: &[(&str, &str)]) -> Self {
            self.pinned = true;
            self.namespace_selectors.extend(selector(pairs));
            self
        }
    }

    fn svc(name: &str) -> Request {
        Request {
            key: ServiceKey::new("default", name),
            families: vec![Family::V4],
            ..Default::default()
        }
    }

    impl Request {
        fn ns(mut self, ns: &str) -> Self {
            self.key.namespace = ns.to_string();
            self
        }
        fn fam(mut self, f: &[Family], required: bool) -> Self {
            self.families = f.to_vec();
            self.dual_stack_required = required;
            self
        }
        fn want(mut self, v: &[&str]) -> Self {
            self.requested = ips(v);
            self
        }
        fn in_pool(mut self, p: &str) -> Self {
            self.pool = Some(p.to_string());
            self
        }
        fn share(mut self, key: &str, ports: &[(Protocol, u16)]) -> Self {
            self.sharing_key = Some(key.to_string());
            self.ports = ports
                .iter()
                .map(|(protocol, port)| Port {
                    protocol: *protocol,
                    port: *port,
                })
                .collect();
            self
        }
        fn ports(mut self, ports: &[(Protocol, u16)]) -> Self {
            self.ports = ports
                .iter()
                .map(|(protocol, port)| Port {
                    protocol: *protocol,
                    port: *port,
                })
                .collect();
            self
        }
        fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
            self.labels = labels(pairs);
            self
        }
        fn ns_labels(mut self, pairs: &[(&str, &str)]) -> Self {
            self.namespace_labels = labels(pairs);
            self
        }
        fn status(mut self, v: &[&str]) -> Self {
            self.current = ips(v);
            self
        }
        fn born(mut self, t: i64) -> Self {
            self.created = t;
            self
        }
    }

    use Family::{V4, V6};
    use Protocol::{Tcp, Udp};

    /// MetalLB's documented `serviceAllocation` example pool.
    fn metallb_scoped() -> PoolConfig {
        let mut p = pool("ip-pool-ns-service-alloc-sample", &["192.168.20.0/24"])
            .prio(50)
            .only_ns(&["namespace-a", "namespace-b"])
            .ns_sel(&[("foo", "bar")]);
        p.service_selectors.push(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "In".into(),
                    values: Some(vec!["bar".into()]),
                },
            ]),
        });
        p
    }

    /// The catch-all pool next to it, tried after (priority 100).
    fn metallb_rest() -> PoolConfig {
        pool("default", &["192.168.30.0/24"]).prio(100)
    }

    struct Case {
        name: &'static str,
        pools: Vec<PoolConfig>,
        before: Vec<Request>,
        req: Request,
        /// The addresses, or the error reason.
        want: Result<&'static [&'static str], &'static str>,
    }

    #[test]
    fn assign_table() {
        let v4 = || pool("v4", &["192.0.2.0/30"]);
        let v6 = || pool("v6", &["2001:db8::/126"]);
        let cases = vec![
            Case {
                name: "auto from the only pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s"),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "avoidBuggyIPs skips .0",
                pools: vec![v4().avoid_buggy()],
                before: vec![],
                req: svc("s"),
                want: Ok(&["192.0.2.1"]),
            },
            Case {
                name: "next free address",
                pools: vec![v4()],
                before: vec![svc("a")],
                req: svc("s"),
                want: Ok(&["192.0.2.1"]),
            },
            Case {
                name: "requested inside a pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").want(&["192.0.2.2"]),
                want: Ok(&["192.0.2.2"]),
            },
            Case {
                name: "requested outside every pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").want(&["198.51.100.1"]),
                want: Err("IPOutsidePools"),
            },
            Case {
                name: "requested .0 in an avoidBuggyIPs pool",
                pools: vec![v4().avoid_buggy()],
                before: vec![],
                req: svc("s").want(&["192.0.2.0"]),
                want: Err("IPOutsidePools"),
            },
            Case {
                name: "requested but in use",
                pools: vec![v4()],
                before: vec![svc("a").want(&["192.0.2.2"])],
                req: svc("s").want(&["192.0.2.2"]),
                want: Err("IPInUse"),
            },
            Case {
                name: "exhausted pool",
                pools: vec![pool("small", &["192.0.2.0/31"])],
                before: vec![svc("a"), svc("b")],
                req: svc("s"),
                want: Err("PoolExhausted"),
            },
            Case {
                name: "no pools at all",
                pools: vec![],
                before: vec![],
                req: svc("s"),
                want: Err("NoMatchingPool"),
            },
            Case {
                name: "unknown named pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").in_pool("nope"),
                want: Err("UnknownPool"),
            },
            Case {
                name: "named pool does not allow the namespace",
                pools: vec![v4().only_ns(&["prod"])],
                before: vec![],
                req: svc("s").in_pool("v4"),
                want: Err("PoolNotAllowed"),
            },
            Case {
                name: "named pool allows the namespace",
                pools: vec![v4().only_ns(&["prod"])],
                before: vec![],
                req: svc("s").ns("prod").in_pool("v4"),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "requested IP of a pool that does not allow the namespace",
                pools: vec![v4().only_ns(&["prod"])],
                before: vec![],
                req: svc("s").want(&["192.0.2.1"]),
                want: Err("PoolNotAllowed"),
            },
            Case {
                name: "requested IP outside the named pool",
                pools: vec![v4(), pool("other", &["198.51.100.0/30"])],
                before: vec![],
                req: svc("s").in_pool("other").want(&["192.0.2.1"]),
                want: Err("IPNotInPool"),
            },
            Case {
                name: "named pool with the requested IP",
                pools: vec![v4(), pool("other", &["198.51.100.0/30"])],
                before: vec![],
                req: svc("s").in_pool("other").want(&["198.51.100.3"]),
                want: Ok(&["198.51.100.3"]),
            },
            Case {
                name: "autoAssign off is skipped",
                pools: vec![v4().manual().prio(100), pool("auto", &["198.51.100.0/30"])],
                before: vec![],
                req: svc("s"),
                want: Ok(&["198.51.100.0"]),
            },
            Case {
                name: "autoAssign off is used when named",
                pools: vec![v4().manual(), pool("auto", &["198.51.100.0/30"])],
                before: vec![],
                req: svc("s").in_pool("v4"),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "autoAssign off is used when one of its IPs is requested",
                pools: vec![v4().manual()],
                before: vec![],
                req: svc("s").want(&["192.0.2.3"]),
                want: Ok(&["192.0.2.3"]),
            },
            Case {
                name: "only autoAssign-off pools",
                pools: vec![v4().manual()],
                before: vec![],
                req: svc("s"),
                want: Err("NoMatchingPool"),
            },
            Case {
                name: "lower priority number wins (MetalLB's order)",
                pools: vec![
                    pool("first", &["198.51.100.0/30"]).prio(1),
                    pool("second", &["203.0.113.0/30"]).prio(10),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["198.51.100.0"]),
            },
            Case {
                name: "unset priority comes after every set one, even a large one",
                pools: vec![
                    pool("a-unset", &["198.51.100.0/30"]),
                    pool("z-set", &["203.0.113.0/30"]).prio(1000),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "negative priority is before a positive one",
                pools: vec![
                    pool("one", &["198.51.100.0/30"]).prio(1),
                    pool("neg", &["203.0.113.0/30"]).prio(-3),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            // MetalLB's priority is a plain int (omitempty): 0 is "unset", sorted after every set one.
            Case {
                name: "priority 0 is unset: after priority 7",
                pools: vec![
                    pool("a-zero", &["198.51.100.0/30"]).prio(0),
                    pool("z-seven", &["203.0.113.0/30"]).prio(7),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "priority 0 and unset tie: the pool name",
                pools: vec![
                    pool("b-zero", &["198.51.100.0/30"]).prio(0),
                    pool("a-empty", &["203.0.113.0/30"]).pinned(),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            // MetalLB's Allocate: the pools with a serviceAllocation (an empty one, or one with only a
            // priority, matches every Service) first, then the pools without one.
            Case {
                name: "serviceAllocation: {} is tried before a pool without one, whatever the names",
                pools: vec![
                    pool("a-plain", &["198.51.100.0/30"]),
                    pool("z-empty", &["203.0.113.0/30"]).pinned(),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "a pinned pool without priority is tried before a pool without serviceAllocation",
                pools: vec![
                    pool("a-plain", &["198.51.100.0/30"]),
                    pool("z-ns", &["203.0.113.0/30"]).only_ns(&["default"]),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "a full pinned pool falls back to the pools without serviceAllocation",
                pools: vec![
                    pool("a-plain", &["198.51.100.0/30"]),
                    pool("z-empty", &["203.0.113.7/32"]).prio(3),
                ],
                before: vec![svc("a")],
                req: svc("s"),
                want: Ok(&["198.51.100.0"]),
            },
            Case {
                name: "a pinned pool that does not match is never used, the unpinned one is",
                pools: vec![
                    pool("a-plain", &["198.51.100.0/30"]),
                    pool("z-other", &["203.0.113.0/30"]).prio(1).only_ns(&["other"]),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["198.51.100.0"]),
            },
            Case {
                name: "equal set priorities go to the pool name",
                pools: vec![
                    pool("b", &["198.51.100.0/30"]).prio(5),
                    pool("a", &["203.0.113.0/30"]).prio(5),
                ],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            // MetalLB's documented example (Reduce scope of address allocation): a pool with priority 50
            // for Services labelled app=bar in namespace-a, namespace-b or namespaces labelled foo=bar,
            // beside a pool for everything else with priority 100 (tried after).
            Case {
                name: "metallb example: listed namespace and matching Service get the priority-50 pool",
                pools: vec![metallb_scoped(), metallb_rest()],
                before: vec![],
                req: svc("s").ns("namespace-b").labels(&[("app", "bar")]),
                want: Ok(&["192.168.20.0"]),
            },
            Case {
                name: "metallb example: a namespace labelled foo=bar counts like a listed one (ORed)",
                pools: vec![metallb_scoped(), metallb_rest()],
                before: vec![],
                req: svc("s")
                    .ns("other")
                    .ns_labels(&[("foo", "bar")])
                    .labels(&[("app", "bar")]),
                want: Ok(&["192.168.20.0"]),
            },
            Case {
                name: "metallb example: right namespace, wrong Service labels (criteria ANDed)",
                pools: vec![metallb_scoped(), metallb_rest()],
                before: vec![],
                req: svc("s").ns("namespace-a").labels(&[("app", "foo")]),
                want: Ok(&["192.168.30.0"]),
            },
            Case {
                name: "metallb example: right Service labels, namespace neither listed nor selected",
                pools: vec![metallb_scoped(), metallb_rest()],
                before: vec![],
                req: svc("s").ns("other").labels(&[("app", "bar")]),
                want: Ok(&["192.168.30.0"]),
            },
            Case {
                name: "serviceSelectors are ORed: the second selector matches",
                pools: vec![
                    v4(),
                    pool("web", &["203.0.113.0/30"])
                        .prio(1)
                        .svc_sel(&[("app", "web")])
                        .svc_sel(&[("tier", "front")]),
                ],
                before: vec![],
                req: svc("s").labels(&[("tier", "front")]),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "namespaceSelectors are ORed: the second selector matches",
                pools: vec![
                    pool("team", &["203.0.113.0/30"])
                        .ns_sel(&[("team", "a")])
                        .ns_sel(&[("team", "b")]),
                ],
                before: vec![],
                req: svc("s").ns_labels(&[("team", "b")]),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "named pool whose serviceSelectors do not match",
                pools: vec![pool("web", &["203.0.113.0/30"]).svc_sel(&[("app", "web")])],
                before: vec![],
                req: svc("s").in_pool("web").labels(&[("app", "db")]),
                want: Err("PoolNotAllowed"),
            },
            Case {
                name: "priority tie goes to the pool name",
                pools: vec![pool("b", &["198.51.100.0/30"]), pool("a", &["203.0.113.0/30"])],
                before: vec![],
                req: svc("s"),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "full high-priority pool falls through to the next",
                pools: vec![
                    pool("low", &["198.51.100.0/30"]),
                    pool("high", &["203.0.113.7/32"]).prio(5),
                ],
                before: vec![svc("a")],
                req: svc("s"),
                want: Ok(&["198.51.100.0"]),
            },
            Case {
                name: "serviceSelector matches",
                pools: vec![
                    v4(),
                    pool("web", &["203.0.113.0/30"])
                        .prio(5)
                        .svc_sel(&[("app", "web")]),
                ],
                before: vec![],
                req: svc("s").labels(&[("app", "web")]),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "serviceSelector does not match: next pool",
                pools: vec![
                    v4(),
                    pool("web", &["203.0.113.0/30"])
                        .prio(5)
                        .svc_sel(&[("app", "web")]),
                ],
                before: vec![],
                req: svc("s").labels(&[("app", "db")]),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "namespaceSelector matches the namespace's labels",
                pools: vec![
                    v4(),
                    pool("team", &["203.0.113.0/30"]).prio(5).ns_sel(&[("team", "a")]),
                ],
                before: vec![],
                req: svc("s").ns_labels(&[("team", "a")]),
                want: Ok(&["203.0.113.0"]),
            },
            Case {
                name: "namespaceSelector does not match the Service's own labels",
                pools: vec![pool("team", &["203.0.113.0/30"]).ns_sel(&[("team", "a")])],
                before: vec![],
                req: svc("s").labels(&[("team", "a")]),
                want: Err("NoMatchingPool"),
            },
            Case {
                name: "sharing: same key, other protocol, prefers the shared IP",
                pools: vec![v4()],
                before: vec![svc("dns-tcp").share("dns", &[(Tcp, 53)]).want(&["192.0.2.2"])],
                req: svc("dns-udp").share("dns", &[(Udp, 53)]),
                want: Ok(&["192.0.2.2"]),
            },
            Case {
                name: "sharing: requested shared IP, different ports",
                pools: vec![v4()],
                before: vec![svc("a").share("k", &[(Tcp, 80)]).want(&["192.0.2.1"])],
                req: svc("s").share("k", &[(Tcp, 443)]).want(&["192.0.2.1"]),
                want: Ok(&["192.0.2.1"]),
            },
            Case {
                name: "sharing: port conflict",
                pools: vec![v4()],
                before: vec![svc("a").share("k", &[(Tcp, 80)]).want(&["192.0.2.1"])],
                req: svc("s").share("k", &[(Tcp, 80)]).want(&["192.0.2.1"]),
                want: Err("SharingConflict"),
            },
            Case {
                name: "sharing: key mismatch",
                pools: vec![v4()],
                before: vec![svc("a").share("k1", &[(Tcp, 80)]).want(&["192.0.2.1"])],
                req: svc("s").share("k2", &[(Tcp, 443)]).want(&["192.0.2.1"]),
                want: Err("SharingKeyMismatch"),
            },
            Case {
                name: "sharing: the holder has no key",
                pools: vec![v4()],
                before: vec![svc("a").ports(&[(Tcp, 80)]).want(&["192.0.2.1"])],
                req: svc("s").share("k", &[(Tcp, 443)]).want(&["192.0.2.1"]),
                want: Err("IPInUse"),
            },
            Case {
                name: "sharing: same key but ports conflict gets a fresh IP",
                pools: vec![v4()],
                before: vec![svc("a").share("k", &[(Tcp, 80)])],
                req: svc("s").share("k", &[(Tcp, 80)]),
                want: Ok(&["192.0.2.1"]),
            },
            Case {
                // MetalLB: both families from one pool; two single-family pools are not enough.
                name: "dual-stack required, two single-family pools",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], true),
                want: Err("NoDualStackPool"),
            },
            Case {
                // MetalLB's doc example (ipv4-pool, ipv6-pool, no dual-stack pool): the first family only.
                name: "dual-stack preferred, two single-family pools",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V6, V4], false),
                want: Ok(&["2001:db8::"]),
            },
            Case {
                // ... and with the dualstack-pool: both from it.
                name: "dual-stack preferred, a dual-stack pool beside single-family ones",
                pools: vec![
                    v4(),
                    v6(),
                    pool("z-mixed", &["198.51.100.0/30", "2001:db8:1::/126"]),
                ],
                before: vec![],
                req: svc("s").fam(&[V6, V4], false),
                want: Ok(&["2001:db8:1::", "198.51.100.0"]),
            },
            Case {
                name: "dual-stack from one mixed pool",
                pools: vec![pool("mixed", &["192.0.2.0/30", "2001:db8::/126"])],
                before: vec![],
                req: svc("s").fam(&[V6, V4], true),
                want: Ok(&["2001:db8::", "192.0.2.0"]),
            },
            Case {
                name: "dual-stack required, no IPv6 pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], true),
                want: Err("NoDualStackPool"),
            },
            Case {
                name: "dual-stack preferred, no IPv6 pool",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], false),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                // No dual-stack pool: the primary family only, and its pool is full.
                name: "dual-stack preferred, IPv4 pool full",
                pools: vec![pool("one", &["192.0.2.9/32"]), v6()],
                before: vec![svc("a")],
                req: svc("s").fam(&[V4, V6], false),
                want: Err("PoolExhausted"),
            },
            Case {
                // The mixed pool's IPv4 is taken: it no longer offers both, so the primary family only.
                name: "dual-stack preferred, the mixed pool's IPv4 full",
                pools: vec![pool("mixed", &["192.0.2.9/32", "2001:db8::/126"]), v4()],
                before: vec![svc("a").in_pool("mixed")],
                req: svc("s").fam(&[V4, V6], false),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "dual-stack preferred, nothing at all",
                pools: vec![],
                before: vec![],
                req: svc("s").fam(&[V4, V6], false),
                want: Err("NoMatchingPool"),
            },
            Case {
                name: "IPv6 single-stack",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V6], false),
                want: Ok(&["2001:db8::"]),
            },
            Case {
                name: "requested dual-stack pair",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], true).want(&["2001:db8::3", "192.0.2.3"]),
                want: Ok(&["192.0.2.3", "2001:db8::3"]),
            },
            Case {
                name: "requested family not in ipFamilies",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").want(&["2001:db8::1"]),
                want: Err("FamilyNotRequested"),
            },
            Case {
                name: "two IPv4 requested",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").want(&["192.0.2.1", "192.0.2.2"]),
                want: Err("TooManyRequestedIPs"),
            },
            Case {
                name: "dual-stack required but only IPv4 requested",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], true).want(&["192.0.2.1"]),
                want: Err("RequestedFamilyMissing"),
            },
            Case {
                name: "dual-stack preferred and only IPv4 requested",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V4, V6], false).want(&["192.0.2.1"]),
                want: Ok(&["192.0.2.1"]),
            },
            Case {
                name: "named pool without the family",
                pools: vec![v4(), v6()],
                before: vec![],
                req: svc("s").fam(&[V6], false).in_pool("v4"),
                want: Err("PoolLacksFamily"),
            },
            Case {
                name: "free address from status is adopted",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").status(&["192.0.2.3"]),
                want: Ok(&["192.0.2.3"]),
            },
            Case {
                name: "address from status held by another is not adopted",
                pools: vec![v4()],
                before: vec![svc("a").want(&["192.0.2.3"])],
                req: svc("s").status(&["192.0.2.3"]),
                want: Ok(&["192.0.2.0"]),
            },
            Case {
                name: "address from status outside pools is not adopted by assign",
                pools: vec![v4()],
                before: vec![],
                req: svc("s").status(&["198.51.100.7"]),
                want: Ok(&["192.0.2.0"]),
            },
        ];
        for c in cases {
            let mut a = Allocator::new();
            assert!(a.set_pools(c.pools).is_empty(), "case {}: pools overlap", c.name);
            for b in &c.before {
                a.assign(b)
                    .unwrap_or_else(|e| panic!("case {}: setup {}: {e}", c.name, b.key));
            }
            let before = a.assigned(&c.req.key).map(<[IpAddr]>::to_vec);
            let got = a.assign(&c.req);
            match (&got, c.want) {
                (Ok(asg), Ok(want)) => {
                    assert_eq!(asg.ips, ips(want), "case: {}", c.name);
                    assert!(asg.changed, "case: {}", c.name);
                }
                (Err(e), Err(reason)) => {
                    assert_eq!(e.reason(), reason, "case {}: {e}", c.name);
                    // Atomic: a failed assign changes nothing.
                    assert_eq!(
                        a.assigned(&c.req.key).map(<[IpAddr]>::to_vec),
                        before,
                        "case: {}",
                        c.name
                    );
                }
                _ => panic!("case {}: got {got:?}, want {:?}", c.name, c.want),
            }
        }
    }

    /// The IPv4 pools of MetalLB's controller/controller_test.go (`testSelector` as `app=web`): which pool a
    /// new Service gets, by namespace and labels.
    #[test]
    fn metallb_controller_test_pools_in_metallbs_order() {
        let pools = || {
            vec![
                pool("pool1", &["1.2.3.0/31"]),
                pool("pool2", &["3.4.5.6/32"]).manual(),
                pool("pool6", &["7.8.9.0/31"]).only_ns(&["test-ns1"]).prio(10),
                pool("pool7", &["10.11.12.0/31"]).only_ns(&["test-ns1"]).prio(11),
                pool("pool8", &["13.14.15.0/31"])
                    .svc_sel(&[("app", "web")])
                    .prio(9),
                pool("pool9", &["16.17.18.0/31"]).only_ns(&["test-ns2"]),
                pool("pool10", &["19.20.21.0/31"])
                    .svc_sel(&[("app", "web")])
                    .prio(8),
                pool("pool11", &["22.23.24.0/31"])
                    .only_ns(&["test-ns1"])
                    .svc_sel(&[("app", "web")])
                    .prio(8),
                pool("pool12", &["25.26.27.0/31"])
                    .only_ns(&["test-ns1"])
                    .svc_sel(&[("app", "web")])
                    .prio(5),
            ]
        };
        let web = [("app", "web")];
        /// (case, namespace, labels, the addresses of the Services created one after the other)
        type OrderCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Vec<&'a str>);
        let cases: Vec<OrderCase<'_>> = vec![
            (
                "test-ns1: pool6 (10), then pool7 (11), then the unpinned pool1",
                "test-ns1",
                &[],
                vec!["7.8.9.0", "7.8.9.1", "10.11.12.0", "10.11.12.1", "1.2.3.0"],
            ),
            (
                "test-ns1 and app=web: pool12 (5), then pool10 and pool11 (8, by name), pool8 (9), pool6",
                "test-ns1",
                &web,
                vec![
                    "25.26.27.0",
                    "25.26.27.1",
                    "19.20.21.0",
                    "19.20.21.1",
                    "22.23.24.0",
                    "22.23.24.1",
                    "13.14.15.0",
                    "13.14.15.1",
                    "7.8.9.0",
                ],
            ),
            (
                "test-ns2: pool9 (pinned, no priority) before the unpinned pool1",
                "test-ns2",
                &[],
                vec!["16.17.18.0", "16.17.18.1", "1.2.3.0"],
            ),
            (
                "test-ns2 and app=web: pool10 (8), pool8 (9), then pool9 (unset), then pool1",
                "test-ns2",
                &web,
                vec![
                    "19.20.21.0",
                    "19.20.21.1",
                    "13.14.15.0",
                    "13.14.15.1",
                    "16.17.18.0",
                    "16.17.18.1",
                    "1.2.3.0",
                ],
            ),
            (
                "another namespace: only the unpinned pool1 (pool2 is not autoAssign)",
                "other",
                &[],
                vec!["1.2.3.0", "1.2.3.1"],
            ),
        ];
        let mut a = Allocator::new();
        a.set_pools(pools());
        a.assign(&svc("a").ns("other")).unwrap();
        a.assign(&svc("b").ns("other")).unwrap();
        let e = a.assign(&svc("c").ns("other")).unwrap_err();
        assert_eq!(e.reason(), "PoolExhausted", "{e}");
        assert!(
            e.to_string().contains("\"pool1\""),
            "only pool1 is a candidate: {e}"
        );
        for (name, ns, labels, want) in cases {
            let mut a = Allocator::new();
            a.set_pools(pools());
            for (i, ip) in want.iter().enumerate() {
                let got = a
                    .assign(&svc(&format!("s{i}")).ns(ns).labels(labels))
                    .unwrap_or_else(|e| panic!("{name}: Service {i}: {e}"));
                assert_eq!(got.ips, ips(&[ip]), "{name}: Service {i}");
            }
            check_invariants(&a);
        }
    }

    #[test]
    fn error_messages_name_the_culprit() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("lan", &["192.0.2.1/32"]).only_ns(&["prod"])]);
        a.assign(
            &svc("web")
                .ns("prod")
                .want(&["192.0.2.1"])
                .share("k", &[(Tcp, 80)]),
        )
        .unwrap();
        let cases: Vec<(Request, &str)> = vec![
            (
                svc("x").ns("prod").want(&["192.0.2.1"]),
                "IP 192.0.2.1 is in use by prod/web",
            ),
            (
                svc("x").ns("prod").want(&["192.0.2.1"]).share("k", &[(Tcp, 80)]),
                "already uses port 80/TCP",
            ),
            (
                svc("x").in_pool("lan"),
                "pool \"lan\" does not serve this Service: namespace \"default\"",
            ),
            (svc("x").in_pool("wan"), "pool \"wan\" does not exist"),
            (
                svc("x").ns("prod").share("j", &[]),
                "no free IPv4 address in pool \"lan\"",
            ),
            (
                svc("x").want(&["203.0.113.1"]),
                "IP 203.0.113.1 is not in any IPPool",
            ),
        ];
        for (req, want) in cases {
            let err = a.assign(&req).unwrap_err();
            assert!(err.to_string().contains(want), "want {want:?} in {err}");
        }
        let e = AllocError::PoolExhausted {
            pools: vec!["a".into(), "b".into()],
            family: V6,
        };
        assert_eq!(e.to_string(), "no free IPv6 address in pools \"a\", \"b\"");
    }

    #[test]
    fn idempotent_reassign_and_release_frees() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("p", &["192.0.2.0/30"])]);
        let first = a.assign(&svc("s1")).unwrap();
        let again = a.assign(&svc("s1")).unwrap();
        assert_eq!(first.ips, again.ips);
        assert_eq!(first.pools, vec!["p".to_string()]);
        assert!(first.changed && !again.changed);
        for n in ["s2", "s3", "s4"] {
            a.assign(&svc(n)).unwrap();
        }
        assert_eq!(a.assign(&svc("s5")).unwrap_err().reason(), "PoolExhausted");
        let s2 = a.assigned(&ServiceKey::new("default", "s2")).unwrap().to_vec();
        a.release(&ServiceKey::new("default", "s2"));
        assert!(a.holders(s2[0]).is_empty());
        assert_eq!(a.stats("p").unwrap().available_v4, 1);
        // The cursor wraps around to the freed address.
        assert_eq!(a.assign(&svc("s5")).unwrap().ips, s2);
        assert_eq!(a.stats("p").unwrap().assigned_v4, 4);
        a.release(&ServiceKey::new("default", "nope")); // releasing an unknown Service is a no-op
    }

    #[test]
    fn stable_across_pool_changes_moves_on_request_change() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("a", &["192.0.2.0/29"])]);
        let s = svc("s");
        assert_eq!(a.assign(&s).unwrap().ips, ips(&["192.0.2.0"]));
        // A new, higher-priority pool does not move a Service that already has an address.
        a.set_pools(vec![
            pool("a", &["192.0.2.0/29"]),
            pool("b", &["203.0.113.0/29"]).prio(9),
        ]);
        let r = a.assign(&s).unwrap();
        assert_eq!((r.ips.clone(), r.changed), (ips(&["192.0.2.0"]), false));
        // Nor does turning autoAssign off on its pool.
        a.set_pools(vec![
            pool("a", &["192.0.2.0/29"]).manual(),
            pool("b", &["203.0.113.0/29"]).prio(9),
        ]);
        assert!(!a.assign(&s).unwrap().changed);
        // A new requested IP moves it and frees the old one.
        let r = a.assign(&s.clone().want(&["192.0.2.5"])).unwrap();
        assert_eq!((r.ips, r.changed), (ips(&["192.0.2.5"]), true));
        assert!(a.holders(ip("192.0.2.0")).is_empty());
        // Naming another pool moves it again.
        let r = a.assign(&s.clone().in_pool("b")).unwrap();
        assert_eq!((r.ips, r.pools), (ips(&["203.0.113.0"]), vec!["b".to_string()]));
        assert_eq!(a.stats("a").unwrap().assigned_v4, 0);
        // A pool that stops allowing the Service moves it on its next assign (the admin said so).
        a.set_pools(vec![
            pool("a", &["192.0.2.0/29"]),
            pool("b", &["203.0.113.0/29"]).only_ns(&["prod"]),
        ]);
        assert_eq!(a.assign(&s).unwrap().ips, ips(&["192.0.2.0"]));
        // Changing the sharing key so that it now clashes with a co-holder moves only that Service.
        a.assign(&svc("t").share("k", &[(Tcp, 80)]).want(&["192.0.2.7"]))
            .unwrap();
        a.assign(&svc("u").share("k", &[(Tcp, 81)]).want(&["192.0.2.7"]))
            .unwrap();
        assert_eq!(a.holders(ip("192.0.2.7")).len(), 2);
        let r = a.assign(&svc("u").share("k2", &[(Tcp, 81)])).unwrap();
        assert_ne!(r.ips, ips(&["192.0.2.7"]));
        assert_eq!(a.holders(ip("192.0.2.7")), vec![ServiceKey::new("default", "t")]);
    }

    #[test]
    fn shrunk_or_deleted_pool_keeps_the_address() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("p", &["192.0.2.0/29"])]);
        let s = svc("s").want(&["192.0.2.6"]);
        let auto = svc("auto").in_pool("p");
        a.assign(&s).unwrap();
        a.assign(&auto).unwrap();
        // Shrink the pool: 192.0.2.6 leaves it.
        a.set_pools(vec![pool("p", &["192.0.2.0/30"])]);
        let key = ServiceKey::new("default", "s");
        assert_eq!(a.out_of_pool(), vec![(key.clone(), ip("192.0.2.6"))]);
        assert_eq!(a.stats("p").unwrap().assigned_v4, 1);
        let r = a.assign(&s).unwrap();
        assert_eq!((r.ips, r.pools, r.changed), (ips(&["192.0.2.6"]), vec![], false));
        // A new Service asking for it is refused: it is held, and outside every pool anyway.
        assert_eq!(
            a.assign(&svc("x").want(&["192.0.2.6"])).unwrap_err().reason(),
            "IPOutsidePools"
        );
        // New Services only get addresses of the shrunk pool.
        for n in ["x1", "x2", "x3"] {
            let got = a.assign(&svc(n)).unwrap().ips[0];
            assert!(a.pools[0].cfg.offers(got), "{got}");
        }
        // Delete the named pool: both Services keep serving.
        a.set_pools(vec![]);
        assert_eq!(a.assign(&auto).unwrap().ips, ips(&["192.0.2.0"]));
        assert_eq!(a.out_of_pool().len(), 5);
        // ... across a restart too.
        let existing: Vec<Request> = a
            .services
            .iter()
            .map(|(k, h)| Request {
                key: k.clone(),
                families: vec![V4],
                current: h.ips.clone(),
                ..Default::default()
            })
            .collect();
        let mut b = Allocator::new();
        b.set_pools(vec![]);
        assert!(b.rebuild(existing).is_empty());
        assert_eq!(b.out_of_pool(), a.out_of_pool());
        // Releasing an out-of-pool address simply forgets it.
        b.release(&key);
        assert_eq!(b.out_of_pool().len(), 4);
    }

    #[test]
    fn avoid_buggy_turned_on_lists_held_buggy_address() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("p", &["192.0.2.0/24"])]);
        a.assign(&svc("s")).unwrap();
        a.set_pools(vec![pool("p", &["192.0.2.0/24"]).avoid_buggy()]);
        assert_eq!(
            a.out_of_pool(),
            vec![(ServiceKey::new("default", "s"), ip("192.0.2.0"))]
        );
        let st = a.stats("p").unwrap();
        assert_eq!((st.total_v4, st.assigned_v4, st.available_v4), (254, 0, 254));
        assert_eq!(a.assign(&svc("s")).unwrap().ips, ips(&["192.0.2.0"]));
    }

    #[test]
    fn rebuild_table() {
        struct R {
            name: &'static str,
            existing: Vec<Request>,
            /// (service, addresses it holds after rebuild)
            held: Vec<(&'static str, &'static [&'static str])>,
            /// (service, reason) of the refused claims
            errors: Vec<(&'static str, &'static str)>,
        }
        let cases = vec![
            R {
                name: "older keeps a duplicate, whatever the input order",
                existing: vec![
                    svc("new").born(200).status(&["192.0.2.1"]),
                    svc("old").born(100).status(&["192.0.2.1"]),
                ],
                held: vec![("old", &["192.0.2.1"]), ("new", &[])],
                errors: vec![("new", "IPInUse")],
            },
            R {
                name: "same creation time: namespace/name decides",
                existing: vec![
                    svc("b").born(5).status(&["192.0.2.1"]),
                    svc("a").born(5).status(&["192.0.2.1"]),
                ],
                held: vec![("a", &["192.0.2.1"]), ("b", &[])],
                errors: vec![("b", "IPInUse")],
            },
            R {
                name: "sharing Services are both adopted",
                existing: vec![
                    svc("tcp").share("k", &[(Tcp, 53)]).status(&["192.0.2.2"]),
                    svc("udp").share("k", &[(Udp, 53)]).status(&["192.0.2.2"]),
                ],
                held: vec![("tcp", &["192.0.2.2"]), ("udp", &["192.0.2.2"])],
                errors: vec![],
            },
            R {
                name: "sharing with a port conflict: newer refused",
                existing: vec![
                    svc("one").born(1).share("k", &[(Tcp, 53)]).status(&["192.0.2.2"]),
                    svc("two").born(2).share("k", &[(Tcp, 53)]).status(&["192.0.2.2"]),
                ],
                held: vec![("one", &["192.0.2.2"]), ("two", &[])],
                errors: vec![("two", "SharingConflict")],
            },
            R {
                name: "dual-stack status adopted; status no longer requested is skipped silently",
                existing: vec![
                    svc("ds")
                        .fam(&[V4, V6], true)
                        .status(&["192.0.2.3", "2001:db8::3"]),
                    svc("moved").want(&["192.0.2.1"]).status(&["192.0.2.2"]),
                    svc("v4only").status(&["192.0.2.0", "2001:db8::9"]),
                ],
                held: vec![
                    ("ds", &["192.0.2.3", "2001:db8::3"]),
                    ("moved", &[]),
                    ("v4only", &["192.0.2.0"]),
                ],
                errors: vec![],
            },
            R {
                name: "address outside every pool is adopted (keeps serving)",
                existing: vec![svc("s").status(&["198.51.100.9"])],
                held: vec![("s", &["198.51.100.9"])],
                errors: vec![],
            },
        ];
        for c in cases {
            let mut a = Allocator::new();
            a.set_pools(vec![
                pool("v4", &["192.0.2.0/29"]),
                pool("v6", &["2001:db8::/124"]),
            ]);
            // Rebuild forgets what was there before.
            a.assign(&svc("stale")).unwrap();
            let errors: Vec<(String, &str)> = a
                .rebuild(c.existing.clone())
                .into_iter()
                .map(|(k, e)| (k.name, e.reason()))
                .collect();
            let want: Vec<(String, &str)> = c.errors.iter().map(|(n, r)| (n.to_string(), *r)).collect();
            assert_eq!(errors, want, "case: {}", c.name);
            assert_eq!(
                a.assigned(&ServiceKey::new("default", "stale")),
                None,
                "case: {}",
                c.name
            );
            for (n, want) in &c.held {
                assert_eq!(
                    a.assigned(&ServiceKey::new("default", *n))
                        .map(<[IpAddr]>::to_vec)
                        .unwrap_or_default(),
                    ips(want),
                    "case {}: {n}",
                    c.name
                );
            }
            // Then every Service is assigned; the refused ones get a new address, nobody else moves.
            for r in &c.existing {
                let got = a
                    .assign(r)
                    .unwrap_or_else(|e| panic!("case {}: {}: {e}", c.name, r.key));
                let kept = c
                    .held
                    .iter()
                    .find(|(n, _)| *n == r.key.name)
                    .map(|(_, v)| ips(v))
                    .unwrap_or_default();
                assert!(
                    kept.iter().all(|k| got.ips.contains(k)),
                    "case {}: {} moved",
                    c.name,
                    r.key
                );
            }
            check_invariants(&a);
        }
    }

    #[test]
    fn overlapping_pools_are_reported_and_still_safe() {
        let mut a = Allocator::new();
        let problems = a.set_pools(vec![
            pool("a", &["192.0.2.0/29"]),
            pool("b", &["192.0.2.4-192.0.2.20"]),
            pool("c", &["198.51.100.0/30"]),
        ]);
        assert_eq!(
            problems,
            vec![
                PoolProblem::Overlapping {
                    pool: "a".into(),
                    other: "b".into(),
                    ip: ip("192.0.2.4")
                },
                PoolProblem::Overlapping {
                    pool: "b".into(),
                    other: "a".into(),
                    ip: ip("192.0.2.4")
                },
            ]
        );
        assert_eq!(
            problems[0].to_string(),
            "IPPool \"a\" overlaps IPPool \"b\" (both contain 192.0.2.4)"
        );
        // Fill "a" (its upper half is shared with "b"), then "b" skips what "a" handed out.
        let mut seen = BTreeSet::new();
        for i in 0..8 {
            assert!(seen.insert(a.assign(&svc(&format!("a{i}")).in_pool("a")).unwrap().ips[0]));
        }
        for i in 0..13 {
            assert!(seen.insert(a.assign(&svc(&format!("b{i}")).in_pool("b")).unwrap().ips[0]));
        }
        assert_eq!(
            a.assign(&svc("b13").in_pool("b")).unwrap_err().reason(),
            "PoolExhausted"
        );
        assert_eq!(a.stats("b").unwrap().assigned_v4, 17);
        assert_eq!(a.stats("a").unwrap().available_v4, 0);
    }

    #[test]
    fn ipv6_slash64_is_counted_not_materialised() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("v6", &["2001:db8::/64"])]);
        let st = a.stats("v6").unwrap();
        assert_eq!((st.total_v6, st.available_v6, st.total_v4), (1 << 64, 1 << 64, 0));
        for n in 0..3 {
            a.assign(&svc(&format!("s{n}")).fam(&[V6], false)).unwrap();
        }
        let st = a.stats("v6").unwrap();
        assert_eq!((st.assigned_v6, st.available_v6), (3, (1 << 64) - 3));
        // A requested address at the very end of the /64.
        let r = a
            .assign(
                &svc("end")
                    .fam(&[V6], false)
                    .want(&["2001:db8::ffff:ffff:ffff:ffff"]),
            )
            .unwrap();
        assert_eq!(r.pools, vec!["v6".to_string()]);
        assert_eq!(a.stats("nope"), None);
    }

    #[test]
    fn ten_thousand_services_in_a_slash16() {
        let mut a = Allocator::new();
        a.set_pools(vec![pool("big", &["10.0.0.0/16"]).avoid_buggy()]);
        let mut seen = BTreeSet::new();
        for n in 0..10_000 {
            let r = a.assign(&svc(&format!("s{n}"))).unwrap();
            assert!(seen.insert(r.ips[0]));
        }
        let st = a.stats("big").unwrap();
        assert_eq!((st.assigned_v4, st.available_v4), (10_000, 65536 - 512 - 10_000));
        // Releasing half and reassigning reuses freed addresses (the cursor wraps).
        for n in (0..10_000).step_by(2) {
            a.release(&ServiceKey::new("default", format!("s{n}")));
        }
        for n in 0..5_000 {
            a.assign(&svc(&format!("t{n}"))).unwrap();
        }
        assert_eq!(a.stats("big").unwrap().assigned_v4, 10_000);
        check_invariants(&a);
    }

    #[test]
    fn pool_config_from_ippool() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let mk = |spec: serde_json::Value| -> IPPool {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
                "metadata": {"name": "lan"}, "spec": spec,
            }))
            .expect("IPPool parses")
        };
        let cfg = PoolConfig::from_pool(&mk(serde_json::json!({
            "addresses": ["192.0.2.0/28"], "autoAssign": false, "avoidBuggyIPs": true,
            "serviceAllocation": {"priority": 7, "namespaces": ["prod"],
                                  "namespaceSelectors": [{"matchLabels": {"a": "b"}}],
                                  "serviceSelectors": [{"matchLabels": {"c": "d"}}, {}]},
            "l2": {"interfaces": ["eth0", "/^enp.*/"]},
        })))
        .unwrap();
        assert_eq!(
            (
                cfg.name.as_str(),
                cfg.priority,
                cfg.auto_assign,
                cfg.avoid_buggy_ips
            ),
            ("lan", Some(7), false, true)
        );
        assert_eq!(cfg.namespaces, vec!["prod".to_string()]);
        assert_eq!(cfg.namespace_selectors, vec![selector(&[("a", "b")]).unwrap()]);
        assert_eq!(cfg.service_selectors.len(), 2);
        assert_eq!(cfg.addresses.count_v4(), 16);

        let err =
            PoolConfig::from_pool(&mk(serde_json::json!({"addresses": ["10.0.0.300/24"]}))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "IPPool \"lan\": address \"10.0.0.300/24\" is not a CIDR or range: invalid IP"
        );
        assert_eq!(err.reason(), "InvalidAddress");

        let bad = serde_json::to_value(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: "In".into(),
                values: None,
            }]),
        })
        .unwrap();
        // (spec, reason, the message starts with)
        let cases = [
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"],
                    "serviceAllocation": {"serviceSelectors": [{}, bad.clone()]}}),
                "InvalidSelector",
                "IPPool \"lan\": spec.serviceAllocation.serviceSelectors[1]: matchExpressions[0]",
            ),
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"],
                    "serviceAllocation": {"namespaceSelectors": [bad.clone()]}}),
                "InvalidSelector",
                "IPPool \"lan\": spec.serviceAllocation.namespaceSelectors[0]: matchExpressions[0]",
            ),
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"], "l2": {"nodeSelector": bad}}),
                "InvalidSelector",
                "IPPool \"lan\": spec.l2.nodeSelector: matchExpressions[0]",
            ),
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"], "l2": {"interfaces": ["/eth[/"]}}),
                "InvalidInterface",
                "IPPool \"lan\": spec.l2.interfaces: interface pattern \"/eth[/\" is invalid",
            ),
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"], "l2": {"interfaces": ["eth 0"]}}),
                "InvalidInterface",
                "IPPool \"lan\": spec.l2.interfaces: interface pattern \"eth 0\" is invalid: not an interface name",
            ),
            (
                serde_json::json!({"addresses": ["192.0.2.0/28"],
                    "serviceAllocation": {"namespaceSelector": {"matchLabels": {"a": "b"}}}}),
                "UnknownField",
                "IPPool \"lan\": unknown field spec.serviceAllocation.namespaceSelector (removed: use namespaceSelectors (a list, ORed as in MetalLB))",
            ),
            (
                serde_json::json!({"addresses": ["10.0.0.300/24"], "autoassign": true,
                    "serviceAllocation": {"serviceSelector": {}}}),
                "UnknownField",
                "IPPool \"lan\": unknown field spec.autoassign (not a field of IPPool lb.ferrite.dev/v1alpha1); unknown field spec.serviceAllocation.serviceSelector (removed: use serviceSelectors (a list, ORed as in MetalLB))",
            ),
        ];
        for (spec, reason, start) in cases {
            let err = PoolConfig::from_pool(&mk(spec)).unwrap_err();
            assert_eq!(err.reason(), reason, "{err}");
            assert!(err.to_string().starts_with(start), "{err}");
        }
    }

    #[test]
    fn sharing_follows_metallbs_rules() {
        let p = || pool("p", &["192.0.2.0/30"]);
        let web = |name: &str, port: u16| svc(name).share("k", &[(Tcp, port)]).want(&["192.0.2.1"]);
        let local = |mut r: Request, sel: &[(&str, &str)]| {
            r.local = true;
            r.selector = labels(sel);
            r
        };
        // (case, the holder, the newcomer, the error reason or None when it shares)
        let cases: Vec<(&str, Request, Request, Option<&str>)> = vec![
            ("Cluster and Cluster", web("a", 80), web("b", 443), None),
            (
                "Local and Local, same selector",
                local(web("a", 80), &[("app", "x")]),
                local(web("b", 443), &[("app", "x")]),
                None,
            ),
            (
                "Local and Local, other selector",
                local(web("a", 80), &[("app", "x")]),
                local(web("b", 443), &[("app", "y")]),
                Some("SharingTrafficPolicy"),
            ),
            (
                "Local holder, Cluster newcomer",
                local(web("a", 80), &[("app", "x")]),
                web("b", 443),
                Some("SharingTrafficPolicy"),
            ),
            (
                "Cluster holder, Local newcomer with a selector",
                web("a", 80),
                local(web("b", 443), &[("app", "x")]),
                Some("SharingTrafficPolicy"),
            ),
            // MetalLB's BackendKey of a Local Service without a selector is "", a Cluster one's too.
            (
                "Cluster holder, Local newcomer without a selector: both backend keys empty",
                web("a", 80),
                local(web("b", 443), &[]),
                None,
            ),
            (
                "Local holder without a selector, Cluster newcomer",
                local(web("a", 80), &[]),
                web("b", 443),
                None,
            ),
            (
                "Local without a selector, Local with one",
                local(web("a", 80), &[]),
                local(web("b", 443), &[("app", "x")]),
                Some("SharingTrafficPolicy"),
            ),
            (
                "Local and Local, same two-label selector",
                local(web("a", 80), &[("app", "x"), ("tier", "web")]),
                local(web("b", 443), &[("tier", "web"), ("app", "x")]),
                None,
            ),
            (
                "Local and Local, one selector a subset of the other",
                local(web("a", 80), &[("app", "x"), ("tier", "web")]),
                local(web("b", 443), &[("app", "x")]),
                Some("SharingTrafficPolicy"),
            ),
            ("same port", web("a", 80), web("b", 80), Some("SharingConflict")),
            (
                "other key",
                web("a", 80),
                svc("b").share("other", &[(Tcp, 443)]).want(&["192.0.2.1"]),
                Some("SharingKeyMismatch"),
            ),
            (
                "no key",
                web("a", 80),
                svc("b").ports(&[(Tcp, 443)]).want(&["192.0.2.1"]),
                Some("IPInUse"),
            ),
        ];
        for (name, holder, newcomer, want) in cases {
            let mut a = Allocator::new();
            a.set_pools(vec![p()]);
            a.assign(&holder).expect(name);
            match (a.assign(&newcomer), want) {
                (Ok(got), None) => assert_eq!(got.ips, ips(&["192.0.2.1"]), "{name}"),
                (Err(e), Some(reason)) => {
                    assert_eq!(e.reason(), reason, "{name}: {e}");
                    assert_eq!(e.is_sharing(), reason != "IPInUse", "{name}");
                    assert!(e.to_string().contains("default/a"), "{name}: {e}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
            check_invariants(&a);
        }
        // The message says why.
        let mut a = Allocator::new();
        a.set_pools(vec![p()]);
        a.assign(&local(web("a", 80), &[("app", "x")])).unwrap();
        let e = a.assign(&web("b", 443)).unwrap_err();
        assert!(
            e.to_string().contains(
                "this Service has externalTrafficPolicy: Cluster and default/a has Local (spec.selector app=x)"
            ),
            "{e}"
        );
        let e = a.assign(&local(web("b", 443), &[("app", "y")])).unwrap_err();
        assert!(e.to_string().contains("(app=y here, app=x on default/a)"), "{e}");
        let e = a.assign(&local(web("b", 443), &[])).unwrap_err();
        assert!(e.to_string().contains("(<none> here, app=x on default/a)"), "{e}");
        // Without a requested address a Local newcomer with a selector is not put on the Cluster holder's
        // address; one without a selector is (equal backend keys, the sharing key's address preferred).
        let mut a = Allocator::new();
        a.set_pools(vec![p()]);
        a.assign(&svc("a").share("k", &[(Tcp, 80)])).unwrap();
        let held = a.assigned(&ServiceKey::new("default", "a")).unwrap().to_vec();
        let got = a
            .assign(&local(svc("b").share("k", &[(Tcp, 443)]), &[("app", "x")]))
            .unwrap();
        assert_ne!(got.ips, held);
        let got = a.assign(&local(svc("c").share("k", &[(Tcp, 444)]), &[])).unwrap();
        assert_eq!(got.ips, held);
        check_invariants(&a);
    }

    /// MetalLB's dual-stack rule for a Service that already holds one address: PreferDualStack keeps just
    /// it; RequireDualStack takes the missing family from that address's pool, or fails.
    #[test]
    fn a_held_single_address_and_dual_stack() {
        let mut a = Allocator::new();
        a.set_pools(vec![
            pool("mixed", &["192.0.2.0/30", "2001:db8::/126"]),
            pool("v6", &["2001:db8:1::/126"]),
        ]);
        let one = a.assign(&svc("s")).unwrap();
        assert_eq!(one.ips, ips(&["192.0.2.0"]));
        let got = a.assign(&svc("s").fam(&[V4, V6], false)).unwrap();
        assert_eq!((got.ips, got.changed), (ips(&["192.0.2.0"]), false));
        let got = a.assign(&svc("s").fam(&[V4, V6], true)).unwrap();
        assert_eq!(got.ips, ips(&["192.0.2.0", "2001:db8::"]));
        assert_eq!(got.pools, vec!["mixed".to_string()]);

        let mut a = Allocator::new();
        a.set_pools(vec![
            pool("v4", &["192.0.2.0/30"]),
            pool("v6", &["2001:db8::/126"]),
        ]);
        a.assign(&svc("s")).unwrap();
        assert_eq!(
            a.assign(&svc("s").fam(&[V4, V6], true)).unwrap_err().reason(),
            "NoDualStackPool"
        );
        check_invariants(&a);
    }

    #[test]
    fn assignment_names_the_pool_of_each_address() {
        let mut a = Allocator::new();
        a.set_pools(vec![
            pool("v4", &["192.0.2.0/30"]),
            pool("v6", &["2001:db8::/126"]),
        ]);
        // Two pools only for requested addresses (MetalLB's rule takes fresh ones from one pool); once held,
        // they are kept without the request.
        let got = a
            .assign(&svc("s").fam(&[V6, V4], true).want(&["2001:db8::", "192.0.2.0"]))
            .unwrap();
        assert_eq!(got.ips, ips(&["2001:db8::", "192.0.2.0"]));
        assert_eq!(got.pool_of, vec![Some("v6".to_string()), Some("v4".to_string())]);
        let got = a.assign(&svc("s").fam(&[V6, V4], true)).unwrap();
        assert!(!got.changed);
        assert_eq!(got.pools, vec!["v4".to_string(), "v6".to_string()]);
        // The pool shrinks away from the address: it is kept, in no pool.
        a.set_pools(vec![
            pool("v4", &["192.0.2.2/31"]),
            pool("v6", &["2001:db8::/126"]),
        ]);
        let got = a.assign(&svc("s").fam(&[V6, V4], true)).unwrap();
        assert_eq!(got.pool_of, vec![Some("v6".to_string()), None]);
    }

    /// Checks every internal invariant: no address held by two Services that may not share it, the three
    /// tables agree, and pool counters equal a recount.
    fn check_invariants(a: &Allocator) {
        for (ip, used) in &a.ips {
            assert!(!used.holders.is_empty(), "{ip}: empty holder set");
            let holders: Vec<&Held> = used.holders.iter().map(|k| &a.services[k]).collect();
            for (i, h) in holders.iter().enumerate() {
                assert!(h.ips.contains(ip), "{ip}: holder does not list it");
                assert_eq!(h.sharing_key, used.sharing_key, "{ip}: holder key differs");
                for o in &holders[i + 1..] {
                    assert!(h.sharing_key.is_some(), "{ip}: two holders without a sharing key");
                    assert!(
                        h.ports.iter().all(|p| !o.ports.contains(p)),
                        "{ip}: two holders share a port"
                    );
                    assert_eq!(
                        backend_key(h.local, &h.selector),
                        backend_key(o.local, &o.selector),
                        "{ip}: holders with other backend keys (a Local one with a selector next to a Cluster one or another selector)"
                    );
                }
            }
            if let Some(k) = &used.sharing_key {
                assert!(
                    a.by_sharing_key[k].contains(ip),
                    "{ip}: missing from by_sharing_key"
                );
            }
        }
        let keyed: usize = a.by_sharing_key.values().map(BTreeSet::len).sum();
        assert_eq!(keyed, a.ips.values().filter(|u| u.sharing_key.is_some()).count());
        for (k, h) in &a.services {
            for ip in &h.ips {
                assert!(
                    a.ips[ip].holders.contains(k),
                    "{k} holds {ip} but is not its holder"
                );
            }
            for f in Family::ALL {
                assert!(
                    h.ips.iter().filter(|ip| Family::of(**ip) == f).count() <= 1,
                    "{k}: two {f}"
                );
            }
        }
        for p in &a.pools {
            let st = a.stats(&p.cfg.name).unwrap();
            for (f, assigned, available, total) in [
                (V4, st.assigned_v4, st.available_v4, st.total_v4),
                (V6, st.assigned_v6, st.available_v6, st.total_v6),
            ] {
                let recount = a
                    .ips
                    .keys()
                    .filter(|ip| Family::of(**ip) == f && p.cfg.offers(**ip))
                    .count() as u128;
                assert_eq!(assigned, recount, "pool {} {f}", p.cfg.name);
                assert_eq!(available, total - assigned, "pool {} {f}", p.cfg.name);
            }
        }
    }

    /// A tiny deterministic PRNG (Knuth's MMIX LCG); good enough to shuffle operations.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
        fn chance(&mut self, percent: usize) -> bool {
            self.next(100) < percent
        }
    }

    fn random_pools(rng: &mut Lcg) -> Vec<PoolConfig> {
        let menu = [
            || pool("a", &["192.0.2.0/29"]),
            || pool("a", &["192.0.2.0/30"]),         // "a" shrunk
            || pool("b", &["192.0.2.6-192.0.2.12"]), // overlaps "a"
            || pool("c", &["2001:db8::/126", "198.51.100.0/31"]),
            || pool("d", &["203.0.113.0/30"]).manual(),
            || pool("e", &["2001:db8::ff00/125"]).only_ns(&["ns1"]),
        ];
        let mut out: Vec<PoolConfig> = Vec::new();
        for make in menu {
            if rng.chance(60) {
                let mut p = make();
                p.priority = [None, Some(0), Some(1)][rng.next(3)];
                p.pinned = p.priority.is_some() || rng.chance(50);
                p.avoid_buggy_ips = rng.chance(30);
                if rng.chance(20) {
                    p.service_selectors.extend(selector(&[("app", "web")]));
                }
                out.push(p);
            }
        }
        out
    }

    fn random_request(rng: &mut Lcg, keys: &[ServiceKey]) -> Request {
        let wanted = [
            "192.0.2.1",
            "192.0.2.7",
            "192.0.2.0",
            "2001:db8::1",
            "198.51.100.1",
            "203.0.113.2",
            "10.9.9.9",
        ];
        let key = keys[rng.next(keys.len())].clone();
        let created = (key.name.len() + key.namespace.len()) as i64;
        let mut r = Request {
            key,
            created,
            ..Default::default()
        };
        r.families = match rng.next(4) {
            0 => vec![V6],
            1 => vec![V4, V6],
            2 => vec![V6, V4],
            _ => vec![V4],
        };
        r.dual_stack_required = r.families.len() == 2 && rng.chance(50);
        if rng.chance(25) {
            r.requested = vec![ip(wanted[rng.next(wanted.len())])];
        }
        if rng.chance(15) {
            r.pool = Some(["a", "b", "c", "d", "e", "zz"][rng.next(6)].to_string());
        }
        r.sharing_key = [None, Some("k1".to_string()), Some("k2".to_string())][rng.next(3)].clone();
        let proto = if rng.chance(50) { Tcp } else { Udp };
        r.ports = vec![Port {
            protocol: proto,
            port: [53, 80][rng.next(2)],
        }];
        if rng.chance(30) {
            r.labels = labels(&[("app", "web")]);
        }
        if rng.chance(30) {
            r.local = true;
            // No selector: MetalLB's empty backend key, like a Cluster Service's.
            r.selector = match rng.next(3) {
                0 => BTreeMap::new(),
                n => labels(&[("app", ["web", "db"][n - 1])]),
            };
        } else if rng.chance(20) {
            r.selector = labels(&[("app", "web")]); // ignored for Cluster
        }
        r
    }

    #[test]
    fn random_operations_keep_the_invariants() {
        for seed in 1..=4u64 {
            let mut rng = Lcg(seed);
            let keys: Vec<ServiceKey> = (0..14)
                .map(|i| ServiceKey::new(format!("ns{}", i % 2), format!("svc{i}")))
                .collect();
            let mut a = Allocator::new();
            a.set_pools(random_pools(&mut rng));
            let mut last: HashMap<ServiceKey, Request> = HashMap::new();
            for step in 0..3000 {
                match rng.next(20) {
                    0..=10 => {
                        let req = random_request(&mut rng, &keys);
                        let before: Vec<IpAddr> =
                            a.assigned(&req.key).map(<[IpAddr]>::to_vec).unwrap_or_default();
                        if let Ok(r) = a.assign(&req) {
                            for ip in r.ips.iter().filter(|ip| !before.contains(ip)) {
                                assert!(
                                    a.pools.iter().any(|p| p.cfg.offers(*ip)),
                                    "step {step}: new {ip} outside pools"
                                );
                            }
                            if req.dual_stack_required {
                                assert_eq!(r.ips.len(), 2, "step {step}");
                            }
                            // Idempotent.
                            let again = a
                                .assign(&req)
                                .unwrap_or_else(|e| panic!("step {step}: reassign failed: {e}"));
                            assert_eq!((again.ips, again.changed), (r.ips, false), "step {step}");
                            last.insert(req.key.clone(), req);
                        }
                    }
                    11..=14 => {
                        let key = &keys[rng.next(keys.len())];
                        a.release(key);
                        last.remove(key);
                        assert_eq!(a.assigned(key), None);
                    }
                    15..=17 => {
                        a.set_pools(random_pools(&mut rng));
                    }
                    _ => {
                        // A restart: a fresh allocator rebuilt from "status", then every Service reassigned.
                        let pools: Vec<PoolConfig> = a.pools.iter().map(|p| p.cfg.clone()).collect();
                        let existing: Vec<Request> = last
                            .values()
                            .map(|r| Request {
                                current: a.assigned(&r.key).unwrap_or_default().to_vec(),
                                ..r.clone()
                            })
                            .collect();
                        let mut b = Allocator::new();
                        b.set_pools(pools);
                        let errors = b.rebuild(existing.clone());
                        // Nothing was duplicated, so nothing is refused; what no longer fits a request
                        // (a pool changed since) is left for the next assign.
                        assert!(errors.is_empty(), "step {step}: {errors:?}");
                        for r in &existing {
                            let got = b.assigned(&r.key).unwrap_or_default();
                            assert!(
                                got.iter().all(|ip| r.current.contains(ip)),
                                "step {step}: {}",
                                r.key
                            );
                        }
                        a = b;
                    }
                }
                check_invariants(&a);
            }
        }
    }
}

#[cfg(test)]
mod shrink_regression {
    use super::*;

    fn req(name: &str, created: i64, current: &[&str]) -> Request {
        Request {
            key: ServiceKey::new("ns", name),
            created,
            current: current.iter().map(|s| s.parse().expect("ip")).collect(),
            ..Default::default()
        }
    }

    /// Seen on the box: after a pool shrank, a new Service was given a freed address that was no longer
    /// in any pool.
    #[test]
    fn a_new_service_after_a_shrink_gets_an_address_of_the_shrunk_pool() {
        let pool = |addrs: &[&str]| PoolConfig {
            name: "p".into(),
            addresses: PoolAddresses::parse(addrs).expect("valid"),
            auto_assign: true,
            namespaces: vec!["ns".into()],
            ..Default::default()
        };
        let mut a = Allocator::new();
        a.set_pools(vec![pool(&["198.51.100.128/29"])]);
        let losers = a.rebuild(vec![
            req("older", 1, &["198.51.100.130"]),
            req("newer", 2, &["198.51.100.130"]),
        ]);
        assert_eq!(losers.len(), 1);
        let newer = a
            .assign(&req("newer", 2, &["198.51.100.130"]))
            .expect("newer moves");
        assert_ne!(newer.ips, vec!["198.51.100.130".parse::<IpAddr>().expect("ip")]);
        a.set_pools(vec![pool(&["198.51.100.132-198.51.100.135"])]);
        let third = a.assign(&req("third", 3, &[])).expect("third gets one");
        let n = match third.ips[0] {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(_) => 0,
        };
        assert!(
            (132..=135).contains(&n),
            "{:?} (newer has {:?})",
            third.ips,
            newer.ips
        );
    }
}
