//! Election: which node announces (answers ARP/NDP for) a Service's IPs. Pure, no I/O.
//!
//! ```text
//!   Nodes (labels, NetworkUnavailable)  ─┐
//!   member::Membership::alive()          ├─> [NodeInfo]  ─┐
//!   Service (status IPs, eTP), its      ┘                 ├─> elect() ─> Some("node-b") | None
//!     ServiceL2Status (current owner),                      │
//!   EndpointSlices, advertisements'          ──> ServiceView ─┘
//!     nodeSelectors (L2Advertisement, IPPool.l2)
//!
//!   IPPool + L2Advertisements ──> pool_advertisements() ──> [Advertisement] of the pool
//!     ──> announcing() (serviceSelectors) ──> node_selectors for the ServiceView,
//!         interfaces_on(node) (the interface union) for the announcer
//! ```
//!
//! Every speaker runs the same function over the same inputs and announces only if the result is its
//! own node name, so there is no coordination beyond gossip (`member`) and the Kubernetes objects.
//!
//! # Ranking: identical to MetalLB
//! MetalLB's `speaker/layer2_controller.go` (`ShouldAnnounce`) sorts the usable nodes by
//! `sha256.Sum256([]byte(node + "#" + ipString))` with `bytes.Compare(hi, hj) < 0`, i.e. the 32-byte
//! digests compared lexicographically, ascending, and the first node wins. `ipString` is
//! `toAnnounce[0].String()`: only the **first** load-balancer IP of the Service (in the order of
//! `status.loadBalancer.ingress`) is hashed ("Using the first IP should work for both single and dual
//! stack"), so a dual-stack Service has one announcing node for both of its IPs. [`ranking`] and
//! [`elect`] do the same, which lets a fleet that mixes MetalLB and Ferrite speakers (during a
//! migration) agree on the winner when nobody holds the IP yet.
//!
//! The IP text must be byte-for-byte Go's `net.IP.String()`: dotted quad for IPv4, RFC 5952 for IPv6
//! (lowercase, longest zero run compressed, never a single group). Rust's `Display` produces the same
//! text, except for IPv4-mapped IPv6 addresses, which Go prints as a dotted quad (`net.IP` is 16 bytes
//! for both families and `String()` checks `To4()` first); we canonicalise those to IPv4 before hashing.
//!
//! # Eligibility (the candidates that are ranked)
//! As in MetalLB: a live speaker (gossip), not `NetworkUnavailable`, not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`, selected by the `nodeSelectors` of at
//! least one advertisement that announces the Service (see below), and with `externalTrafficPolicy: Local` hosting a serving endpoint of the Service. Also as in
//! MetalLB, a Service with no serving endpoint at all is announced by nobody.
//!
//! # Ferrite's rule: no flip-back
//! MetalLB is stateless: when a higher-ranked node comes back the IP moves to it, which breaks every
//! established TCP connection a second time (MetalLB #795). Ferrite keeps the IP on its current owner,
//! taken from the Service's `ServiceL2Status` (`spec.node`, written by the speaker that announces;
//! passed in as [`ServiceView::current_owner`]), for as long as that node stays eligible. Only when the
//! owner becomes ineligible (speaker dead, node drained of endpoints, excluded...) does the ranking
//! pick a new one. If there is no ServiceL2Status or it names an unknown node, the ranking decides,
//! exactly as MetalLB would.
//!
//! # Advertisements (MetalLB's L2Advertisement)
//! A pool's addresses are announced by every `L2Advertisement` that selects the pool (`ipPools` names
//! OR `ipPoolSelectors`; both empty = every pool) and by the pool's inline `spec.l2` block when present
//! (one more advertisement of that pool, with no `serviceSelectors`). A pool selected by neither is
//! allocate-only: nobody announces it ([`pool_advertisements`] returns nothing).
//!
//! For a Service, the advertisements that announce it are those of its pool whose `serviceSelectors`
//! (ORed; empty = all) match the Service ([`announcing`]; for Services sharing an address, any Service
//! of the group). A node may announce it iff it matches one of the `nodeSelectors` (ORed; empty = all)
//! of at least one of them ([`ServiceView::node_selectors`]), and it answers on the union of their
//! `interfaces` that select it; one such advertisement with no `interfaces` means every eligible
//! interface ([`interfaces_on`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ferrite_api::lb::{IPPool, L2Advertisement};
use ferrite_kit::selector::{self, SelectorError};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use sha2::{Digest, Sha256};

/// Node label that removes a node from every load balancer (Kubernetes well-known label; MetalLB and
/// the cloud providers honour it too).
pub const EXCLUDE_FROM_EXTERNAL_LB_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// What the election needs to know about one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name` of the Node.
    pub name: String,
    /// `metadata.labels` of the Node.
    pub labels: BTreeMap<String, String>,
    /// The Node's `NetworkUnavailable` condition is `True`.
    pub network_unavailable: bool,
    /// The node's speaker is alive according to gossip (`member::Membership::alive`).
    pub speaker_alive: bool,
}

/// What the election needs to know about one Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceView {
    /// Load-balancer IPs in `status.loadBalancer.ingress` order. Only the first one is ranked on.
    pub ips: Vec<IpAddr>,
    /// `spec.externalTrafficPolicy: Local`.
    pub local_traffic_policy: bool,
    /// Nodes hosting at least one *serving* endpoint of the Service (EndpointSlice
    /// `conditions.serving`, falling back to `ready`, like MetalLB's `EndpointCanServe`).
    pub ready_endpoint_nodes: BTreeSet<String>,
    /// At least one serving endpoint exists, including endpoints with no `nodeName` (selector-less
    /// Services with hand-written EndpointSlices). `false` means nobody announces.
    pub has_serving_endpoint: bool,
    /// Node named by the Service's `ServiceL2Status` (`spec.node`), if any.
    pub current_owner: Option<String>,
    /// The `nodeSelectors` of every advertisement that announces the Service, one list per
    /// advertisement (an empty list selects every node). A node must match one selector of one
    /// advertisement; no advertisement at all (an allocate-only pool) selects no node.
    pub node_selectors: Vec<Vec<LabelSelector>>,
}

/// Why a node may not announce a Service. The `reason()` strings are stable (logs, Events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Ineligible {
    /// The Service has no serving endpoint anywhere.
    NoServingEndpoint,
    /// No live speaker on the node (gossip says it is down or never joined).
    SpeakerDown,
    /// The Node's `NetworkUnavailable` condition is `True`.
    NetworkUnavailable,
    /// The node carries `node.kubernetes.io/exclude-from-external-load-balancers`.
    ExcludedByLabel,
    /// The node matches the `nodeSelectors` of no advertisement that announces the Service.
    NodeSelector,
    /// `externalTrafficPolicy: Local` and no serving endpoint on this node.
    NoLocalEndpoint,
}

impl Ineligible {
    /// Short, stable reason string.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoServingEndpoint => "NoServingEndpoint",
            Self::SpeakerDown => "SpeakerDown",
            Self::NetworkUnavailable => "NetworkUnavailable",
            Self::ExcludedByLabel => "ExcludedByLabel",
            Self::NodeSelector => "NodeSelectorMismatch",
            Self::NoLocalEndpoint => "NoLocalEndpoint",
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

/// MetalLB's ranking key: `sha256(node + "#" + ip)` with `ip` formatted like Go's `net.IP.String()`.
pub fn rank_key(node: &str, ip: IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"#");
    h.update(ip.to_canonical().to_string().as_bytes());
    h.finalize().into()
}

/// All `nodes` ordered for `ip`, best first (ascending digest bytes, as MetalLB). Duplicate names are
/// collapsed.
pub fn ranking<'a>(ip: IpAddr, nodes: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let unique: BTreeSet<&str> = nodes.into_iter().collect();
    let mut keyed: Vec<([u8; 32], &str)> = unique.into_iter().map(|n| (rank_key(n, ip), n)).collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, n)| n.to_owned()).collect()
}

/// Whether a node with `labels` matches one selector of one of `advertisements` (each a list of
/// `nodeSelectors`, empty = every node). Every selector is evaluated, so an invalid one is an error
/// whatever the labels.
pub fn node_selected(
    advertisements: &[Vec<LabelSelector>],
    labels: &BTreeMap<String, String>,
) -> Result<bool, SelectorError> {
    let mut selected = false;
    for selectors in advertisements {
        if selectors.is_empty() {
            selected = true;
        }
        for sel in selectors {
            selected |= selector::matches(sel, labels)?;
        }
    }
    Ok(selected)
}

/// Why `node` may not announce `svc`, or `None` when it may.
///
/// The advertisements' node selectors are evaluated first so that an invalid selector is reported
/// whatever the state of the node.
pub fn ineligibility(node: &NodeInfo, svc: &ServiceView) -> Result<Option<Ineligible>, SelectorError> {
    let selected = node_selected(&svc.node_selectors, &node.labels)?;
    let reason = if !svc.has_serving_endpoint {
        Some(Ineligible::NoServingEndpoint)
    } else if !node.speaker_alive {
        Some(Ineligible::SpeakerDown)
    } else if node.network_unavailable {
        Some(Ineligible::NetworkUnavailable)
    } else if node.labels.contains_key(EXCLUDE_FROM_EXTERNAL_LB_LABEL) {
        // Presence is what counts, whatever the value (Kubernetes service controller semantics).
        Some(Ineligible::ExcludedByLabel)
    } else if !selected {
        Some(Ineligible::NodeSelector)
    } else if svc.local_traffic_policy && !svc.ready_endpoint_nodes.contains(&node.name) {
        Some(Ineligible::NoLocalEndpoint)
    } else {
        None
    };
    Ok(reason)
}

/// `node` may announce `svc`. See [`ineligibility`] for the reason when it may not.
pub fn eligible(node: &NodeInfo, svc: &ServiceView) -> Result<bool, SelectorError> {
    Ok(ineligibility(node, svc)?.is_none())
}

/// The node that announces every IP of `svc`: the current owner while it stays eligible (no
/// flip-back), otherwise the best-ranked eligible node for the Service's first IP. `None` when the
/// Service has no IP or no node is eligible. An invalid node selector is an error.
pub fn elect(svc: &ServiceView, nodes: &[NodeInfo]) -> Result<Option<String>, SelectorError> {
    let Some(&first_ip) = svc.ips.first() else {
        return Ok(None);
    };
    let mut candidates = Vec::with_capacity(nodes.len());
    for node in nodes {
        if eligible(node, svc)? {
            candidates.push(node.name.as_str());
        }
    }
    if let Some(owner) = svc.current_owner.as_deref()
        && candidates.contains(&owner)
    {
        return Ok(Some(owner.to_owned()));
    }
    Ok(ranking(first_ip, candidates).into_iter().next())
}

/// Where an [`Advertisement`] comes from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AdvertisementSource {
    /// An `L2Advertisement` object (its name).
    L2Advertisement(String),
    /// The inline `spec.l2` block of the IPPool (its name).
    InlineL2(String),
}

impl fmt::Display for AdvertisementSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::L2Advertisement(n) => write!(f, "L2Advertisement {n}"),
            Self::InlineL2(n) => write!(f, "IPPool {n} (spec.l2)"),
        }
    }
}

/// One advertisement of a pool's addresses: an `L2Advertisement` that selects the pool, or the pool's
/// inline `l2` block. Its selectors have been validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Advertisement {
    /// Where it comes from (logs, Events).
    pub source: AdvertisementSource,
    /// Nodes that may announce (ORed); empty = every node.
    pub node_selectors: Vec<LabelSelector>,
    /// Services announced (ORed); empty = every Service.
    pub service_selectors: Vec<LabelSelector>,
    /// Interface names and `/regex/` patterns; empty = every eligible interface.
    pub interfaces: Vec<String>,
}

/// Why an advertisement cannot be used. It is then ignored (as if it did not exist) and reported.
#[derive(Clone, Debug, PartialEq)]
pub struct AdvertisementError {
    /// The advertisement at fault.
    pub source: AdvertisementSource,
    /// Which field and what is wrong with it.
    pub message: String,
}

impl fmt::Display for AdvertisementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.message)
    }
}

fn validate_all(field: &str, sels: &[ferrite_api::lb::Selector]) -> Result<(), String> {
    for (i, sel) in sels.iter().enumerate() {
        selector::validate(sel).map_err(|e| format!("{field}[{i}]: {e}"))?;
    }
    Ok(())
}

/// Parses an `L2Advertisement` once: its selectors and interface patterns checked; the error names
/// the field.
pub fn parse_advertisement(ad: &L2Advertisement) -> Result<ParsedAdvertisement, AdvertisementError> {
    let name = ad.metadata.name.clone().unwrap_or_default();
    let source = AdvertisementSource::L2Advertisement(name);
    let spec = &ad.spec;
    let check = || -> Result<(), String> {
        // Unknown fields (a typo inside a selector stored as `{}` would otherwise select everything).
        let unknown = spec.unknown_fields();
        if !unknown.is_empty() {
            return Err(crate::alloc::unknown_fields_message(&unknown, "L2Advertisement"));
        }
        validate_all("ipPoolSelectors", &spec.ip_pool_selectors)?;
        validate_all("nodeSelectors", &spec.node_selectors)?;
        validate_all("serviceSelectors", &spec.service_selectors)?;
        crate::l2::InterfaceFilter::new(spec.interfaces.iter()).map_err(|e| format!("interfaces: {e}"))?;
        Ok(())
    };
    check().map_err(|message| AdvertisementError {
        source: source.clone(),
        message,
    })?;
    Ok(ParsedAdvertisement {
        ip_pools: spec.ip_pools.clone(),
        ip_pool_selectors: ferrite_api::lb::label_selectors(&spec.ip_pool_selectors),
        advertisement: Advertisement {
            source,
            node_selectors: ferrite_api::lb::label_selectors(&spec.node_selectors),
            service_selectors: ferrite_api::lb::label_selectors(&spec.service_selectors),
            interfaces: spec.interfaces.clone(),
        },
    })
}

/// A valid `L2Advertisement`: which pools it selects and what it does for them.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedAdvertisement {
    /// `spec.ipPools`.
    pub ip_pools: Vec<String>,
    /// `spec.ipPoolSelectors` (validated).
    pub ip_pool_selectors: Vec<LabelSelector>,
    /// The rest of it.
    pub advertisement: Advertisement,
}

impl ParsedAdvertisement {
    /// Selects the pool `name` with `labels`: named in `ipPools`, or matching one of
    /// `ipPoolSelectors`, or both lists empty (every pool).
    pub fn selects_pool(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.ip_pools.is_empty() && self.ip_pool_selectors.is_empty())
            || self.ip_pools.iter().any(|p| p == name)
            || self
                .ip_pool_selectors
                .iter()
                .any(|s| selector::matches(s, labels).unwrap_or(false))
    }
}

/// The pool's inline `spec.l2` as an advertisement (`None` without the block), or why it is invalid.
pub fn inline_advertisement(pool: &IPPool) -> Option<Result<Advertisement, AdvertisementError>> {
    let l2 = pool.spec.l2.as_ref()?;
    let source = AdvertisementSource::InlineL2(pool.metadata.name.clone().unwrap_or_default());
    let check = || -> Result<(), String> {
        let unknown: Vec<String> = pool
            .spec
            .unknown_fields()
            .into_iter()
            .filter(|f| f.starts_with("spec.l2."))
            .collect();
        if !unknown.is_empty() {
            return Err(crate::alloc::unknown_fields_message(&unknown, "IPPool"));
        }
        if let Some(sel) = &l2.node_selector {
            selector::validate(sel).map_err(|e| format!("l2.nodeSelector: {e}"))?;
        }
        crate::l2::InterfaceFilter::new(l2.interfaces.iter()).map_err(|e| format!("l2.interfaces: {e}"))?;
        Ok(())
    };
    Some(
        check()
            .map(|()| Advertisement {
                source: source.clone(),
                node_selectors: l2.node_selector.iter().map(LabelSelector::from).collect(),
                service_selectors: vec![],
                interfaces: l2.interfaces.clone(),
            })
            .map_err(|message| AdvertisementError { source, message }),
    )
}

/// Every advertisement of `pool`: the valid `advertisements` that select it, then its inline `l2`
/// (when present and valid). Empty: the pool is allocate-only. An invalid inline block is returned as
/// the error (and left out).
pub fn pool_advertisements(
    pool: &IPPool,
    advertisements: &[ParsedAdvertisement],
) -> (Vec<Advertisement>, Option<AdvertisementError>) {
    let name = pool.metadata.name.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    let labels = pool.metadata.labels.as_ref().unwrap_or(&empty);
    let mut out: Vec<Advertisement> = advertisements
        .iter()
        .filter(|a| a.selects_pool(name, labels))
        .map(|a| a.advertisement.clone())
        .collect();
    let mut error = None;
    match inline_advertisement(pool) {
        Some(Ok(a)) => out.push(a),
        Some(Err(e)) => error = Some(e),
        None => {}
    }
    (out, error)
}

/// The advertisements of `ads` that announce a Service with one of `service_labels` (Services
/// sharing an address are announced together: one matching Service is enough). `serviceSelectors`
/// are ORed; an empty list matches every Service.
pub fn announcing<'a>(
    ads: &'a [Advertisement],
    service_labels: &[&BTreeMap<String, String>],
) -> Vec<&'a Advertisement> {
    ads.iter()
        .filter(|a| {
            a.service_selectors.is_empty()
                || a.service_selectors.iter().any(|s| {
                    service_labels
                        .iter()
                        .any(|l| selector::matches(s, l).unwrap_or(false))
                })
        })
        .collect()
}

/// The interfaces a node with `node_labels` answers on for a Service announced by `ads` (from
/// [`announcing`]): the union of the `interfaces` of the advertisements whose `nodeSelectors` select
/// it. `None`: none selects the node. `Some(vec![])`: every eligible interface (one selecting
/// advertisement names none).
pub fn interfaces_on(ads: &[&Advertisement], node_labels: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut union: BTreeSet<String> = BTreeSet::new();
    let mut selected = false;
    for a in ads {
        let on_node = node_selected(std::slice::from_ref(&a.node_selectors), node_labels).unwrap_or(false);
        if !on_node {
            continue;
        }
        if a.interfaces.is_empty() {
            return Some(vec![]);
        }
        selected = true;
        union.extend(a.interfaces.iter().cloned());
    }
    selected.then(|| union.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn digest_order(ip: &str, nodes: &[&str]) -> Vec<String> {
        // Independent reference: hash exactly the bytes MetalLB hashes and sort the digests.
        let mut v: Vec<(Vec<u8>, String)> = nodes
            .iter()
            .map(|n| {
                (
                    Sha256::digest(format!("{n}#{ip}").as_bytes()).to_vec(),
                    n.to_string(),
                )
            })
            .collect();
        v.sort();
        v.into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn ranking_matches_sha256_order() {
        let nodes = [
            "node-a", "node-b", "node-c", "node-d", "worker-1", "worker-2", "cp-0",
        ];
        // (ip as parsed, ip text MetalLB hashes)
        let table = [
            ("192.0.2.10", "192.0.2.10"),
            ("198.51.100.255", "198.51.100.255"),
            ("2001:db8::10", "2001:db8::10"),
            ("2001:0DB8:0000:0000:0001:0000:0000:0001", "2001:db8::1:0:0:1"),
            ("2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"),
            // IPv4-mapped IPv6: Go's net.IP.String() prints the dotted quad.
            ("::ffff:203.0.113.7", "203.0.113.7"),
        ];
        for (ip, go_text) in table {
            let parsed: IpAddr = ip.parse().unwrap();
            assert_eq!(ranking(parsed, nodes), digest_order(go_text, &nodes), "ip {ip}");
        }
    }

    #[test]
    fn ranking_known_orders() {
        // Computed once with `python3 -c 'hashlib.sha256((n+"#"+ip).encode()).digest()'`.
        let nodes = ["node-a", "node-b", "node-c", "node-d"];
        let table = [
            ("192.0.2.10", ["node-d", "node-c", "node-b", "node-a"]),
            ("2001:db8::10", ["node-b", "node-a", "node-c", "node-d"]),
        ];
        for (ip, want) in table {
            assert_eq!(ranking(ip.parse().unwrap(), nodes), want, "ip {ip}");
        }
    }

    #[test]
    fn ranking_ignores_input_order_and_duplicates() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            ranking(ip, ["node-a", "node-c", "node-a", "node-d", "node-b"]),
            ranking(ip, ["node-d", "node-b", "node-c", "node-a"])
        );
        assert!(ranking(ip, []).is_empty());
    }

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            labels: BTreeMap::from([("kubernetes.io/hostname".into(), name.into())]),
            network_unavailable: false,
            speaker_alive: true,
        }
    }

    fn svc(ips: &[&str]) -> ServiceView {
        ServiceView {
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            local_traffic_policy: false,
            ready_endpoint_nodes: BTreeSet::from(["node-a".to_string()]),
            has_serving_endpoint: true,
            current_owner: None,
            node_selectors: vec![vec![]],
        }
    }

    fn zone_selector(zone: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some(BTreeMap::from([("zone".into(), zone.into())])),
            match_expressions: None,
        }
    }

    fn with_zone(mut n: NodeInfo, zone: &str) -> NodeInfo {
        n.labels.insert("zone".into(), zone.into());
        n
    }

    /// For 192.0.2.10 the ranking of node-a..d is d, c, b, a (see `ranking_known_orders`).
    #[test]
    fn elect_table() {
        let v4 = ["192.0.2.10"];
        struct Case {
            name: &'static str,
            svc: ServiceView,
            nodes: Vec<NodeInfo>,
            want: Option<&'static str>,
        }
        let all = || ["node-a", "node-b", "node-c", "node-d"].map(node).to_vec();
        let dead = |mut n: NodeInfo| {
            n.speaker_alive = false;
            n
        };
        let cases = vec![
            Case {
                name: "no owner: best ranked wins",
                svc: svc(&v4),
                nodes: all(),
                want: Some("node-d"),
            },
            Case {
                name: "no flip-back: owner keeps the IP although node-d ranks first",
                svc: ServiceView {
                    current_owner: Some("node-b".into()),
                    ..svc(&v4)
                },
                nodes: all(),
                want: Some("node-b"),
            },
            Case {
                name: "owner speaker dead: next in ranking",
                svc: ServiceView {
                    current_owner: Some("node-d".into()),
                    ..svc(&v4)
                },
                nodes: vec![
                    node("node-a"),
                    node("node-b"),
                    node("node-c"),
                    dead(node("node-d")),
                ],
                want: Some("node-c"),
            },
            Case {
                name: "owner unknown (deleted node): ranking decides",
                svc: ServiceView {
                    current_owner: Some("node-gone".into()),
                    ..svc(&v4)
                },
                nodes: all(),
                want: Some("node-d"),
            },
            Case {
                name: "owner NetworkUnavailable: next in ranking",
                svc: ServiceView {
                    current_owner: Some("node-d".into()),
                    ..svc(&v4)
                },
                nodes: vec![
                    node("node-a"),
                    node("node-b"),
                    node("node-c"),
                    NodeInfo {
                        network_unavailable: true,
                        ..node("node-d")
                    },
                ],
                want: Some("node-c"),
            },
            Case {
                name: "exclude label (any value) removes the best node",
                svc: svc(&v4),
                nodes: vec![node("node-a"), node("node-b"), node("node-c"), {
                    let mut n = node("node-d");
                    n.labels
                        .insert(EXCLUDE_FROM_EXTERNAL_LB_LABEL.into(), String::new());
                    n
                }],
                want: Some("node-c"),
            },
            Case {
                name: "eTP Local: only nodes with a serving endpoint",
                svc: ServiceView {
                    local_traffic_policy: true,
                    ready_endpoint_nodes: BTreeSet::from(["node-a".into(), "node-b".into()]),
                    ..svc(&v4)
                },
                nodes: all(),
                want: Some("node-b"),
            },
            Case {
                name: "eTP Local: owner lost its endpoint, moves",
                svc: ServiceView {
                    local_traffic_policy: true,
                    ready_endpoint_nodes: BTreeSet::from(["node-a".into()]),
                    current_owner: Some("node-b".into()),
                    ..svc(&v4)
                },
                nodes: all(),
                want: Some("node-a"),
            },
            Case {
                name: "eTP Local: no endpoint on a node with a speaker",
                svc: ServiceView {
                    local_traffic_policy: true,
                    ready_endpoint_nodes: BTreeSet::from(["node-x".into()]),
                    ..svc(&v4)
                },
                nodes: all(),
                want: None,
            },
            Case {
                name: "eTP Cluster: endpoint placement does not matter",
                svc: ServiceView {
                    ready_endpoint_nodes: BTreeSet::new(),
                    ..svc(&v4)
                },
                nodes: all(),
                want: Some("node-d"),
            },
            Case {
                name: "no serving endpoint at all: nobody (as MetalLB)",
                svc: ServiceView {
                    has_serving_endpoint: false,
                    ..svc(&v4)
                },
                nodes: all(),
                want: None,
            },
            Case {
                name: "pool nodeSelector",
                svc: ServiceView {
                    node_selectors: vec![vec![zone_selector("a")]],
                    ..svc(&v4)
                },
                nodes: vec![
                    with_zone(node("node-a"), "a"),
                    with_zone(node("node-b"), "a"),
                    with_zone(node("node-c"), "b"),
                    node("node-d"),
                ],
                want: Some("node-b"),
            },
            Case {
                name: "pool nodeSelector excludes the owner",
                svc: ServiceView {
                    node_selectors: vec![vec![zone_selector("b")]],
                    current_owner: Some("node-a".into()),
                    ..svc(&v4)
                },
                nodes: vec![with_zone(node("node-a"), "a"), with_zone(node("node-c"), "b")],
                want: Some("node-c"),
            },
            Case {
                name: "no candidates",
                svc: svc(&v4),
                nodes: vec![dead(node("node-a")), dead(node("node-b"))],
                want: None,
            },
            Case {
                name: "no nodes",
                svc: svc(&v4),
                nodes: vec![],
                want: None,
            },
            Case {
                name: "no IP yet",
                svc: svc(&[]),
                nodes: all(),
                want: None,
            },
            Case {
                // MetalLB hashes only the first IP: one owner for both families. For 2001:db8::10
                // node-b would win, for 192.0.2.10 node-d.
                name: "dual-stack v4 first: ranked on the IPv4 address",
                svc: svc(&["192.0.2.10", "2001:db8::10"]),
                nodes: all(),
                want: Some("node-d"),
            },
            Case {
                name: "dual-stack v6 first: ranked on the IPv6 address",
                svc: svc(&["2001:db8::10", "192.0.2.10"]),
                nodes: all(),
                want: Some("node-b"),
            },
        ];
        for c in cases {
            assert_eq!(elect(&c.svc, &c.nodes).unwrap().as_deref(), c.want, "{}", c.name);
        }
    }

    #[test]
    fn no_flip_back_sequence() {
        // node-d (best ranked) owns the IP, dies, node-c takes over, node-d returns: node-c keeps it.
        let mut nodes = ["node-a", "node-b", "node-c", "node-d"].map(node).to_vec();
        let mut s = svc(&["192.0.2.10"]);
        let step = |s: &ServiceView, nodes: &[NodeInfo]| elect(s, nodes).unwrap();

        assert_eq!(step(&s, &nodes).as_deref(), Some("node-d"));
        s.current_owner = step(&s, &nodes);
        nodes[3].speaker_alive = false;
        assert_eq!(step(&s, &nodes).as_deref(), Some("node-c"));
        s.current_owner = step(&s, &nodes);
        nodes[3].speaker_alive = true;
        assert_eq!(
            step(&s, &nodes).as_deref(),
            Some("node-c"),
            "must not flip back to node-d"
        );
        // A stateless MetalLB speaker would have moved it back.
        assert_eq!(
            ranking(
                "192.0.2.10".parse().unwrap(),
                nodes.iter().map(|n| n.name.as_str())
            )[0],
            "node-d"
        );
    }

    #[test]
    fn ineligibility_reasons() {
        let s = ServiceView {
            local_traffic_policy: true,
            node_selectors: vec![vec![zone_selector("a")]],
            ..svc(&["192.0.2.10"])
        };
        let ok = with_zone(node("node-a"), "a");
        let table: Vec<(&str, NodeInfo, &ServiceView, Option<Ineligible>)> = vec![
            ("eligible", ok.clone(), &s, None),
            (
                "speaker down",
                NodeInfo {
                    speaker_alive: false,
                    ..ok.clone()
                },
                &s,
                Some(Ineligible::SpeakerDown),
            ),
            (
                "network unavailable",
                NodeInfo {
                    network_unavailable: true,
                    ..ok.clone()
                },
                &s,
                Some(Ineligible::NetworkUnavailable),
            ),
            (
                "excluded",
                {
                    let mut n = ok.clone();
                    n.labels
                        .insert(EXCLUDE_FROM_EXTERNAL_LB_LABEL.into(), "true".into());
                    n
                },
                &s,
                Some(Ineligible::ExcludedByLabel),
            ),
            (
                "selector",
                with_zone(node("node-a"), "b"),
                &s,
                Some(Ineligible::NodeSelector),
            ),
            (
                "no local endpoint",
                with_zone(node("node-b"), "a"),
                &s,
                Some(Ineligible::NoLocalEndpoint),
            ),
        ];
        for (name, n, s, want) in table {
            assert_eq!(ineligibility(&n, s).unwrap(), want, "{name}");
            assert_eq!(eligible(&n, s).unwrap(), want.is_none(), "{name}");
        }
        let none = ServiceView {
            has_serving_endpoint: false,
            ..s.clone()
        };
        assert_eq!(
            ineligibility(&ok, &none).unwrap(),
            Some(Ineligible::NoServingEndpoint)
        );
    }

    #[test]
    fn invalid_selector_is_an_error() {
        let s = ServiceView {
            node_selectors: vec![vec![LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "Sometimes".into(),
                    values: None,
                }]),
            }]],
            ..svc(&["192.0.2.10"])
        };
        assert!(elect(&s, &[node("node-a")]).is_err());
    }

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(kv: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels(kv)),
            match_expressions: None,
        }
    }

    fn l2adv(name: &str, spec: serde_json::Value) -> L2Advertisement {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": name}, "spec": spec}))
        .expect("L2Advertisement")
    }

    fn pool(name: &str, pool_labels: serde_json::Value, l2: Option<serde_json::Value>) -> IPPool {
        let mut spec = serde_json::json!({"addresses": ["192.0.2.0/28"]});
        if let Some(l2) = l2 {
            spec["l2"] = l2;
        }
        serde_json::from_value(serde_json::json!({
            "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name, "labels": pool_labels}, "spec": spec}))
        .expect("IPPool")
    }

    fn sources(ads: &[Advertisement]) -> Vec<String> {
        ads.iter().map(|a| a.source.to_string()).collect()
    }

    #[test]
    fn which_advertisements_announce_a_pool() {
        let ads: Vec<ParsedAdvertisement> = [
            l2adv("all", serde_json::json!({})),
            l2adv("by-name", serde_json::json!({"ipPools": ["lan"]})),
            l2adv("by-label", serde_json::json!({"ipPoolSelectors": [{"matchLabels": {"tier": "edge"}}]})),
            l2adv(
                "name-or-label",
                serde_json::json!({"ipPools": ["other"], "ipPoolSelectors": [{"matchLabels": {"tier": "core"}}]}),
            ),
        ]
        .iter()
        .map(|a| parse_advertisement(a).expect("valid"))
        .collect();
        let only = |names: &[&str]| -> Vec<ParsedAdvertisement> {
            ads.iter()
                .filter(|a| {
                    names.contains(
                        &a.advertisement
                            .source
                            .to_string()
                            .trim_start_matches("L2Advertisement "),
                    )
                })
                .cloned()
                .collect()
        };
        let cases: Vec<(&str, IPPool, Vec<ParsedAdvertisement>, Vec<&str>)> = vec![
            (
                "no advertisement, no l2: allocate-only",
                pool("lan", serde_json::json!({}), None),
                vec![],
                vec![],
            ),
            (
                "advertisements that select other pools only: allocate-only",
                pool("dmz", serde_json::json!({"tier": "x"}), None),
                only(&["by-name", "by-label", "name-or-label"]),
                vec![],
            ),
            (
                "inline l2: {} alone",
                pool("lan", serde_json::json!({}), Some(serde_json::json!({}))),
                vec![],
                vec!["IPPool lan (spec.l2)"],
            ),
            (
                "empty ipPools and ipPoolSelectors select every pool; by name; inline last",
                pool(
                    "lan",
                    serde_json::json!({}),
                    Some(serde_json::json!({"interfaces": ["eth0"]})),
                ),
                ads.clone(),
                vec![
                    "L2Advertisement all",
                    "L2Advertisement by-name",
                    "IPPool lan (spec.l2)",
                ],
            ),
            (
                "by label; ipPools and ipPoolSelectors ORed",
                pool("edge", serde_json::json!({"tier": "core"}), None),
                ads.clone(),
                vec!["L2Advertisement all", "L2Advertisement name-or-label"],
            ),
            (
                "by label",
                pool("edge", serde_json::json!({"tier": "edge"}), None),
                ads.clone(),
                vec!["L2Advertisement all", "L2Advertisement by-label"],
            ),
        ];
        for (name, p, ads, want) in cases {
            let (got, err) = pool_advertisements(&p, &ads);
            assert_eq!(err, None, "{name}");
            assert_eq!(sources(&got), want, "{name}");
        }
    }

    #[test]
    fn invalid_advertisements_are_refused_naming_the_field() {
        let bad_selector = serde_json::json!([{"matchExpressions": [{"key": "k", "operator": "Sometimes"}]}]);
        for (spec, field) in [
            (
                serde_json::json!({"nodeSelectors": bad_selector}),
                "nodeSelectors[0]",
            ),
            (
                serde_json::json!({"serviceSelectors": bad_selector}),
                "serviceSelectors[0]",
            ),
            (
                serde_json::json!({"ipPoolSelectors": bad_selector}),
                "ipPoolSelectors[0]",
            ),
            (serde_json::json!({"interfaces": ["/eth[/"]}), "interfaces"),
        ] {
            let e = parse_advertisement(&l2adv("bad", spec)).expect_err(field);
            assert!(
                e.to_string()
                    .starts_with(&format!("L2Advertisement bad: {field}")),
                "{e}"
            );
        }
        let p = pool(
            "lan",
            serde_json::json!({}),
            Some(serde_json::json!({"interfaces": ["eth 0"]})),
        );
        let (ads, err) = pool_advertisements(&p, &[]);
        assert!(ads.is_empty());
        let err = err.expect("inline error").to_string();
        assert!(err.starts_with("IPPool lan (spec.l2): l2.interfaces"), "{err}");
    }

    /// A typo inside a selector is stored by the CRD (preserve-unknown-fields) and makes the speakers
    /// ignore the advertisement, as the controller refuses it: read as `{}` it would select everything.
    #[test]
    fn unknown_fields_make_an_advertisement_ignored() {
        for (spec, field) in [
            (
                serde_json::json!({"nodeSelectors": [{"matchLabel": {"zone": "a"}}]}),
                "spec.nodeSelectors[0].matchLabel",
            ),
            (
                serde_json::json!({"serviceSelectors": [{"matchExpressions": [{"key": "a", "operator": "Exists", "valus": []}]}]}),
                "spec.serviceSelectors[0].matchExpressions[0].valus",
            ),
            (
                serde_json::json!({"ipPoolSelectors": [{"matchLabel": {}}]}),
                "spec.ipPoolSelectors[0].matchLabel",
            ),
            (serde_json::json!({"interface": ["eth0"]}), "spec.interface"),
        ] {
            let e = parse_advertisement(&l2adv("typo", spec)).expect_err(field);
            assert!(e.to_string().contains(&format!("unknown field {field}")), "{e}");
        }
        let p = pool(
            "lan",
            serde_json::json!({}),
            Some(serde_json::json!({"nodeSelector": {"matchLabel": {"zone": "a"}}})),
        );
        let (ads, err) = pool_advertisements(&p, &[]);
        assert!(ads.is_empty());
        let err = err.expect("inline error").to_string();
        assert!(
            err.contains("unknown field spec.l2.nodeSelector.matchLabel"),
            "{err}"
        );
    }

    fn ad(
        name: &str,
        nodes: Vec<LabelSelector>,
        services: Vec<LabelSelector>,
        ifaces: &[&str],
    ) -> Advertisement {
        Advertisement {
            source: AdvertisementSource::L2Advertisement(name.into()),
            node_selectors: nodes,
            service_selectors: services,
            interfaces: ifaces.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn service_selectors_node_selectors_and_the_interface_union() {
        let ads = vec![
            ad(
                "web-a",
                vec![sel(&[("zone", "a")])],
                vec![sel(&[("app", "web")])],
                &["eth0"],
            ),
            ad(
                "web-b-or-c",
                vec![sel(&[("zone", "b")]), sel(&[("zone", "c")])],
                vec![sel(&[("app", "web")])],
                &["/bond[0-9]/"],
            ),
            ad(
                "db-anywhere",
                vec![],
                vec![sel(&[("app", "db")]), sel(&[("app", "cache")])],
                &["eth1"],
            ),
            ad(
                "web-a-second",
                vec![sel(&[("zone", "a")])],
                vec![sel(&[("app", "web")])],
                &["eth2", "eth0"],
            ),
        ];
        let web = labels(&[("app", "web")]);
        let db = labels(&[("app", "db")]);
        let cache = labels(&[("app", "cache")]);
        let other = labels(&[("app", "other")]);
        let names = |v: Vec<&Advertisement>| v.iter().map(|a| a.source.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(announcing(&ads, &[&web])),
            [
                "L2Advertisement web-a",
                "L2Advertisement web-b-or-c",
                "L2Advertisement web-a-second"
            ]
        );
        assert_eq!(
            names(announcing(&ads, &[&cache])),
            ["L2Advertisement db-anywhere"]
        );
        assert!(
            announcing(&ads, &[&other]).is_empty(),
            "no serviceSelector matches"
        );
        assert_eq!(
            names(announcing(&ads, &[&other, &db])),
            ["L2Advertisement db-anywhere"],
            "one Service of a shared address is enough"
        );

        let for_web = announcing(&ads, &[&web]);
        let node_selectors: Vec<Vec<LabelSelector>> =
            for_web.iter().map(|a| a.node_selectors.clone()).collect();
        type Row<'a> = (&'a str, BTreeMap<String, String>, bool, Option<Vec<&'a str>>);
        let table: Vec<Row<'_>> = vec![
            (
                "zone a: union of two advertisements",
                labels(&[("zone", "a")]),
                true,
                Some(vec!["eth0", "eth2"]),
            ),
            (
                "zone c: second selector of an advertisement (ORed)",
                labels(&[("zone", "c")]),
                true,
                Some(vec!["/bond[0-9]/"]),
            ),
            (
                "zone d: no advertisement selects it",
                labels(&[("zone", "d")]),
                false,
                None,
            ),
        ];
        for (name, l, selected, ifaces) in table {
            assert_eq!(node_selected(&node_selectors, &l).unwrap(), selected, "{name}");
            assert_eq!(
                interfaces_on(&for_web, &l),
                ifaces.map(|v| v.iter().map(|s| s.to_string()).collect()),
                "{name}"
            );
        }
        // An advertisement with no interfaces that selects the node: every eligible interface.
        let mut with_all = ads.clone();
        with_all.push(ad("web-everywhere", vec![], vec![], &[]));
        let for_web = announcing(&with_all, &[&web]);
        assert_eq!(interfaces_on(&for_web, &labels(&[("zone", "a")])), Some(vec![]));
        // No advertisement at all selects no node.
        assert!(!node_selected(&[], &labels(&[("zone", "a")])).unwrap());
    }

    #[test]
    fn elect_ors_the_node_selectors_of_every_advertisement() {
        // 192.0.2.10 ranks node-d, node-c, node-b, node-a.
        let nodes = vec![
            with_zone(node("node-a"), "a"),
            with_zone(node("node-b"), "b"),
            with_zone(node("node-c"), "c"),
            with_zone(node("node-d"), "d"),
        ];
        type Row<'a> = (&'a str, Vec<Vec<LabelSelector>>, Option<&'a str>);
        let table: Vec<Row<'_>> = vec![
            (
                "one advertisement, zone a",
                vec![vec![zone_selector("a")]],
                Some("node-a"),
            ),
            (
                "two advertisements (a) and (b): both zones eligible",
                vec![vec![zone_selector("a")], vec![zone_selector("b")]],
                Some("node-b"),
            ),
            (
                "one advertisement with two selectors (a or c)",
                vec![vec![zone_selector("a"), zone_selector("c")]],
                Some("node-c"),
            ),
            (
                "one advertisement for every node wins over a narrow one",
                vec![vec![zone_selector("a")], vec![]],
                Some("node-d"),
            ),
            ("no advertisement: allocate-only, nobody", vec![], None),
        ];
        for (name, node_selectors, want) in table {
            let s = ServiceView {
                node_selectors,
                ..svc(&["192.0.2.10"])
            };
            assert_eq!(elect(&s, &nodes).unwrap().as_deref(), want, "{name}");
        }
    }
}
