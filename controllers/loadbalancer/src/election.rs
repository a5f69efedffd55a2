//! Election: which node announces (answers ARP/NDP for) a Service's IPs. Pure, no I/O.
//!
//! ```text
//!   Nodes (labels, NetworkUnavailable)  ─┐
//!   member::Membership::alive()          ├─> [NodeInfo]  ─┐
//!   Service (status IPs, eTP, annotation ┘                 ├─> elect() ─> Some("node-b") | None
//!     lb.ferrite.dev/announcing-node),                      │
//!   EndpointSlices, IPPool.l2.nodeSelector ──> ServiceView ─┘
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
//! `node.kubernetes.io/exclude-from-external-load-balancers`, matching the pool's L2 `nodeSelector`,
//! and with `externalTrafficPolicy: Local` hosting a serving endpoint of the Service. Also as in
//! MetalLB, a Service with no serving endpoint at all is announced by nobody.
//!
//! # Ferrite's rule: no flip-back
//! MetalLB is stateless: when a higher-ranked node comes back the IP moves to it, which breaks every
//! established TCP connection a second time (MetalLB #795). Ferrite keeps the IP on its current owner,
//! taken from the Service annotation `lb.ferrite.dev/announcing-node` (written by the speaker that
//! announces; passed in as [`ServiceView::current_owner`]), for as long as that node stays eligible.
//! Only when the owner becomes ineligible (speaker dead, node drained of endpoints, excluded...) does
//! the ranking pick a new one. If the annotation is missing or names an unknown node, the ranking
//! decides, exactly as MetalLB would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

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
    /// Node named by the `lb.ferrite.dev/announcing-node` annotation, if any.
    pub current_owner: Option<String>,
    /// `IPPool.spec.l2.nodeSelector` of the pool the IPs come from; `None` selects every node.
    pub pool_node_selector: Option<LabelSelector>,
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
    /// The node does not match the pool's `l2.nodeSelector`.
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

/// Why `node` may not announce `svc`, or `None` when it may.
///
/// The pool's node selector is evaluated first so that an invalid selector is reported whatever the
/// state of the node.
pub fn ineligibility(node: &NodeInfo, svc: &ServiceView) -> Result<Option<Ineligible>, SelectorError> {
    let selected = match &svc.pool_node_selector {
        Some(sel) => selector::matches(sel, &node.labels)?,
        None => true,
    };
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
/// Service has no IP or no node is eligible. An invalid pool node selector is an error.
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
            pool_node_selector: None,
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
                    pool_node_selector: Some(zone_selector("a")),
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
                    pool_node_selector: Some(zone_selector("b")),
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
            pool_node_selector: Some(zone_selector("a")),
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
            pool_node_selector: Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "zone".into(),
                    operator: "Sometimes".into(),
                    values: None,
                }]),
            }),
            ..svc(&["192.0.2.10"])
        };
        assert!(elect(&s, &[node("node-a")]).is_err());
    }
}
