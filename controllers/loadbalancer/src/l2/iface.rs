//! Interfaces: the model, the eligibility rule, the interface filter and the announcement plan, all pure
//! (the rtnetlink follower that keeps the model current is `netlink.rs`).
//!
//! ```text
//!   rtnetlink dump + RTNLGRP_LINK ──> interface_from_link ──> Interface per ifindex ──┐
//!   Announcer::set(ip -> InterfaceFilter) ────────────────────────────────────────────┴─> Plan::compute
//!        Plan: ifindex -> {name, MAC, IPs answered there}   (read by every packet before replying)
//! ```
//!
//! Eligibility (why each rule):
//! - up (`IFF_UP`) and carrier (`IFF_LOWER_UP`, and an oper state that is not down): a reply or a
//!   gratuitous ARP on a dead link is lost, and the election should not count on it.
//! - not loopback, and an Ethernet MAC: ARP/NDP answers carry a link-layer address.
//! - no master and not a bond slave (`IFF_SLAVE`): a bond slave or bridge port is answered from its
//!   bond/bridge, which owns the MAC the rest of the LAN sees (MetalLB skips interfaces with a master
//!   too).
//! - not `NOARP` (`IFF_NOARP`): the kernel does no neighbour resolution there (tunnels, some virtual
//!   links), so nobody on it asks; MetalLB skips them too.
//! - matches the advertisement's filter: exact names or `/regex/` (anchored: `/eth[0-9]/` does not match
//!   `veth0`). With no interface named, MetalLB's default exclusion list applies ([`DEFAULT_EXCLUDED`]:
//!   container bridges, CNI devices, veths, tunnels, IPVS), so a speaker does not answer on the pod
//!   network. Naming an interface is the way to use one of those.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage, State};

use super::L2Error;
use super::packet::MacAddr;

/// One network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    /// The Ethernet MAC; `None` when the link is not Ethernet or has no usable unicast address.
    pub mac: Option<MacAddr>,
    pub up: bool,
    pub carrier: bool,
    pub loopback: bool,
    /// ifindex of the bond or bridge this interface is enslaved to.
    pub master: Option<u32>,
    /// `IFF_NOARP`: no neighbour resolution on this link.
    pub noarp: bool,
    /// `IFF_SLAVE`: a bond slave (set by the bonding driver, also when the master is not visible).
    pub bond_slave: bool,
}

/// MetalLB's default `announcedInterfacesToExclude` (config/native/exclude-l2-config.yaml, the
/// `metallb-excludel2` ConfigMap), plus `cilium*` and `vxlan*` (Cilium's and VXLAN overlay devices,
/// which MetalLB users add by hand). Each is a regex on the whole name; used only when an
/// advertisement names no interface.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "^docker.*",
    "^cbr.*",
    "^dummy.*",
    "^virbr.*",
    "^lxcbr.*",
    "^veth.*",
    "^lo$",
    "^cali.*",
    "^tunl.*",
    "^flannel.*",
    "^kube-ipvs.*",
    "^cni.*",
    "^nodelocaldns.*",
    "^lxc.*",
    "^cilium.*",
    "^vxlan.*",
];

fn default_excluded() -> &'static regex::RegexSet {
    static SET: std::sync::OnceLock<regex::RegexSet> = std::sync::OnceLock::new();
    SET.get_or_init(|| regex::RegexSet::new(DEFAULT_EXCLUDED).expect("the default exclusion list compiles"))
}

/// The entry of [`DEFAULT_EXCLUDED`] that excludes `name`, if any.
pub fn excluded_by_default(name: &str) -> Option<&'static str> {
    default_excluded()
        .matches(name)
        .iter()
        .next()
        .map(|i| DEFAULT_EXCLUDED[i])
}

/// Why an interface is not used. `Display` is the log text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ineligible {
    Down,
    NoCarrier,
    Loopback,
    /// A bond slave or bridge port: its master answers.
    Enslaved(u32),
    /// `IFF_SLAVE` without a visible master (a bond slave).
    BondSlave,
    /// `IFF_NOARP`.
    NoArp,
    NoEthernetMac,
    /// No interface is named and this one is on the default exclusion list (the matching entry).
    ExcludedByDefault(&'static str),
    FilteredOut,
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::Down => f.write_str("interface is down"),
            Ineligible::NoCarrier => f.write_str("interface has no carrier"),
            Ineligible::Loopback => f.write_str("interface is a loopback"),
            Ineligible::Enslaved(m) => {
                write!(f, "interface is a bond slave or bridge port (master ifindex {m})")
            }
            Ineligible::BondSlave => f.write_str("interface is a bond slave (IFF_SLAVE)"),
            Ineligible::NoArp => f.write_str("interface does not do ARP (NOARP)"),
            Ineligible::NoEthernetMac => f.write_str("interface has no Ethernet MAC"),
            Ineligible::ExcludedByDefault(re) => write!(
                f,
                "interface is on the default exclusion list ({re}); name it in interfaces to use it"
            ),
            Ineligible::FilteredOut => f.write_str("interface does not match the advertisement's interfaces"),
        }
    }
}

/// Decides whether `iface` answers for an IP whose pool has `filter`. Pure.
pub fn eligibility(iface: &Interface, filter: &InterfaceFilter) -> Result<(), Ineligible> {
    if iface.loopback {
        return Err(Ineligible::Loopback);
    }
    if !iface.up {
        return Err(Ineligible::Down);
    }
    if !iface.carrier {
        return Err(Ineligible::NoCarrier);
    }
    if let Some(m) = iface.master {
        return Err(Ineligible::Enslaved(m));
    }
    if iface.bond_slave {
        return Err(Ineligible::BondSlave);
    }
    if iface.noarp {
        return Err(Ineligible::NoArp);
    }
    if iface.mac.is_none() {
        return Err(Ineligible::NoEthernetMac);
    }
    if filter.patterns.is_empty() {
        if let Some(re) = excluded_by_default(&iface.name) {
            return Err(Ineligible::ExcludedByDefault(re));
        }
    } else if !filter.matches(&iface.name) {
        return Err(Ineligible::FilteredOut);
    }
    Ok(())
}

#[derive(Clone)]
enum Pattern {
    Exact(String),
    Regex(regex::Regex),
}

/// Which interfaces an IP is announced on: exact names or `/regex/` patterns (the regex must match the
/// whole name). Empty means every eligible interface.
#[derive(Clone, Default)]
pub struct InterfaceFilter {
    source: Vec<String>,
    patterns: Vec<Pattern>,
}

impl InterfaceFilter {
    /// Every eligible interface.
    pub fn all() -> InterfaceFilter {
        InterfaceFilter::default()
    }

    /// Builds a filter from names and `/regex/` patterns; a bad regex or an empty name is an error that
    /// names the pattern.
    pub fn new<I, S>(patterns: I) -> Result<InterfaceFilter, L2Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut filter = InterfaceFilter::default();
        for p in patterns {
            let p: String = p.into();
            let compiled = match p.strip_prefix('/').and_then(|r| r.strip_suffix('/')) {
                Some(re) if p.len() >= 2 => {
                    let anchored = format!("^(?:{re})$");
                    let re = regex::Regex::new(&anchored).map_err(|e| L2Error::InterfacePattern {
                        pattern: p.clone(),
                        message: e.to_string(),
                    })?;
                    Pattern::Regex(re)
                }
                _ if p.is_empty() || p.chars().any(|c| c.is_whitespace() || c == '/') => {
                    return Err(L2Error::InterfacePattern {
                        pattern: p.clone(),
                        message: "not an interface name; write a name like eth0 or a regex like /eth[0-9]+/"
                            .into(),
                    });
                }
                _ => Pattern::Exact(p.clone()),
            };
            filter.source.push(p);
            filter.patterns.push(compiled);
        }
        Ok(filter)
    }

    /// True when `name` is selected: named by a pattern, or, with no pattern, not on the default
    /// exclusion list ([`DEFAULT_EXCLUDED`]).
    pub fn matches(&self, name: &str) -> bool {
        if self.patterns.is_empty() {
            return excluded_by_default(name).is_none();
        }
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(n) => n == name,
            Pattern::Regex(re) => re.is_match(name),
        })
    }

    /// The patterns as given.
    pub fn patterns(&self) -> &[String] {
        &self.source
    }
}

impl PartialEq for InterfaceFilter {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}
impl Eq for InterfaceFilter {}

impl fmt::Debug for InterfaceFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InterfaceFilter").field(&self.source).finish()
    }
}

/// What one interface answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub name: String,
    pub mac: MacAddr,
    pub ips: BTreeSet<IpAddr>,
}

/// The announcement plan: for every interface that answers for at least one IP, its name, MAC and IPs.
/// Recomputed whenever the desired set or an interface changes; every packet is checked against the
/// current plan before it is answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub by_ifindex: BTreeMap<u32, InterfacePlan>,
}

impl Plan {
    /// Pure: which eligible interface answers which IP.
    pub fn compute(
        interfaces: &BTreeMap<u32, Interface>,
        desired: &BTreeMap<IpAddr, InterfaceFilter>,
    ) -> Plan {
        // Thousands of IPs share a handful of filters (one per pool): decide eligibility once per
        // (filter, interface), not per (IP, interface).
        let mut filters: Vec<(&InterfaceFilter, Vec<u32>)> = Vec::new();
        let mut ips_of: BTreeMap<u32, BTreeSet<IpAddr>> = BTreeMap::new();
        for (ip, filter) in desired {
            let i = match filters.iter().position(|(f, _)| *f == filter) {
                Some(i) => i,
                None => {
                    let eligible = interfaces
                        .values()
                        .filter(|iface| eligibility(iface, filter).is_ok())
                        .map(|iface| iface.index)
                        .collect();
                    filters.push((filter, eligible));
                    filters.len() - 1
                }
            };
            for ix in &filters[i].1 {
                ips_of.entry(*ix).or_default().insert(*ip);
            }
        }
        let mut by_ifindex = BTreeMap::new();
        for iface in interfaces.values() {
            let Some(mac) = iface.mac else { continue };
            let ips = ips_of.remove(&iface.index).unwrap_or_default();
            if !ips.is_empty() {
                by_ifindex.insert(
                    iface.index,
                    InterfacePlan {
                        name: iface.name.clone(),
                        mac,
                        ips,
                    },
                );
            }
        }
        Plan { by_ifindex }
    }

    /// The MAC to answer with if `ip` is announced on `ifindex` right now.
    pub fn answers(&self, ifindex: u32, ip: IpAddr) -> Option<MacAddr> {
        self.by_ifindex
            .get(&ifindex)
            .filter(|p| p.ips.contains(&ip))
            .map(|p| p.mac)
    }

    /// ip -> names of the interfaces it is answered on.
    pub fn announced(&self) -> BTreeMap<IpAddr, Vec<String>> {
        let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for p in self.by_ifindex.values() {
            for ip in &p.ips {
                out.entry(*ip).or_default().push(p.name.clone());
            }
        }
        out
    }
}

/// Converts an rtnetlink link message; `None` when it has no name (never the case for RTM_NEWLINK).
pub fn interface_from_link(msg: &LinkMessage) -> Option<Interface> {
    let h = &msg.header;
    let mut name = None;
    let mut address = None;
    let mut master = None;
    let mut oper = None;
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(a) => address = Some(a.as_slice()),
            LinkAttribute::Controller(m) if *m != 0 => master = Some(*m),
            LinkAttribute::OperState(s) => oper = Some(*s),
            _ => {}
        }
    }
    let ethernet = h.link_layer_type == LinkLayerType::Ether;
    let mac = address
        .filter(|_| ethernet)
        .and_then(MacAddr::from_slice)
        .filter(MacAddr::is_unicast);
    // Dummy and some virtual links report oper state "unknown" while passing traffic; only states that
    // mean "no" count against carrier.
    let oper_down = matches!(
        oper,
        Some(State::Down | State::LowerLayerDown | State::NotPresent | State::Dormant)
    );
    Some(Interface {
        index: h.index,
        name: name?,
        mac,
        up: h.flags.contains(LinkFlags::Up),
        carrier: h.flags.contains(LinkFlags::LowerUp) && !oper_down,
        loopback: h.flags.contains(LinkFlags::Loopback) || h.link_layer_type == LinkLayerType::Loopback,
        master,
        noarp: h.flags.contains(LinkFlags::Noarp),
        bond_slave: h.flags.contains(LinkFlags::Port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(index: u32, name: &str) -> Interface {
        Interface {
            index,
            name: name.into(),
            mac: Some(MacAddr([0x02, 0, 0, 0, 0, index as u8])),
            up: true,
            carrier: true,
            loopback: false,
            master: None,
            noarp: false,
            bond_slave: false,
        }
    }

    #[test]
    fn eligibility_table() {
        let all = InterfaceFilter::all();
        let only_eth = InterfaceFilter::new(["/eth[0-9]+/"]).unwrap();
        let only_cni = InterfaceFilter::new(["cni0"]).unwrap();
        let cases: Vec<(&str, Interface, &InterfaceFilter, Result<(), Ineligible>)> = vec![
            ("plain ethernet", eth(2, "eth0"), &all, Ok(())),
            (
                "down",
                Interface {
                    up: false,
                    ..eth(2, "eth0")
                },
                &all,
                Err(Ineligible::Down),
            ),
            (
                "no carrier",
                Interface {
                    carrier: false,
                    ..eth(2, "eth0")
                },
                &all,
                Err(Ineligible::NoCarrier),
            ),
            (
                "loopback",
                Interface {
                    loopback: true,
                    mac: None,
                    ..eth(1, "lo")
                },
                &all,
                Err(Ineligible::Loopback),
            ),
            (
                "bond slave",
                Interface {
                    master: Some(7),
                    ..eth(3, "eno1")
                },
                &all,
                Err(Ineligible::Enslaved(7)),
            ),
            (
                "bridge port",
                Interface {
                    master: Some(8),
                    ..eth(4, "veth9")
                },
                &all,
                Err(Ineligible::Enslaved(8)),
            ),
            ("bond itself", eth(7, "bond0"), &all, Ok(())),
            (
                "bond slave without a visible master (IFF_SLAVE)",
                Interface {
                    bond_slave: true,
                    ..eth(3, "eno1")
                },
                &all,
                Err(Ineligible::BondSlave),
            ),
            (
                "NOARP (a tunnel)",
                Interface {
                    noarp: true,
                    ..eth(9, "eth5")
                },
                &all,
                Err(Ineligible::NoArp),
            ),
            (
                "NOARP even when named",
                Interface {
                    noarp: true,
                    ..eth(9, "eth5")
                },
                &only_eth,
                Err(Ineligible::NoArp),
            ),
            (
                "CNI bridge excluded by default",
                eth(10, "cni0"),
                &all,
                Err(Ineligible::ExcludedByDefault("^cni.*")),
            ),
            (
                "docker bridge excluded by default",
                eth(11, "docker0"),
                &all,
                Err(Ineligible::ExcludedByDefault("^docker.*")),
            ),
            (
                "veth excluded by default",
                eth(12, "veth1a2b"),
                &all,
                Err(Ineligible::ExcludedByDefault("^veth.*")),
            ),
            (
                "flannel VXLAN excluded by default",
                eth(13, "flannel.1"),
                &all,
                Err(Ineligible::ExcludedByDefault("^flannel.*")),
            ),
            (
                "kube-ipvs0 excluded by default",
                eth(14, "kube-ipvs0"),
                &all,
                Err(Ineligible::ExcludedByDefault("^kube-ipvs.*")),
            ),
            (
                "cilium_host excluded by default",
                eth(15, "cilium_host"),
                &all,
                Err(Ineligible::ExcludedByDefault("^cilium.*")),
            ),
            (
                "an excluded name is used when named",
                eth(10, "cni0"),
                &only_cni,
                Ok(()),
            ),
            ("not a prefix match: myveth0", eth(16, "myveth0"), &all, Ok(())),
            (
                "no mac (wireguard)",
                Interface {
                    mac: None,
                    ..eth(5, "wg0")
                },
                &all,
                Err(Ineligible::NoEthernetMac),
            ),
            ("regex match", eth(2, "eth12"), &only_eth, Ok(())),
            (
                "regex anchored",
                eth(6, "veth0"),
                &only_eth,
                Err(Ineligible::FilteredOut),
            ),
            (
                "down wins over filter",
                Interface {
                    up: false,
                    ..eth(6, "veth0")
                },
                &only_eth,
                Err(Ineligible::Down),
            ),
        ];
        for (name, iface, filter, want) in cases {
            assert_eq!(eligibility(&iface, filter), want, "{name}");
        }
    }

    #[test]
    fn filter_patterns() {
        let f = InterfaceFilter::new(["eth0", "/bond.*/"]).unwrap();
        let cases = [
            ("eth0", true),
            ("eth01", false),
            ("bond0", true),
            ("xbond0", false),
            ("br0", false),
        ];
        for (name, want) in cases {
            assert_eq!(f.matches(name), want, "{name}");
        }
        assert!(InterfaceFilter::all().matches("anything"));
        assert!(!InterfaceFilter::all().matches("docker0"), "default exclusions");
        for name in [
            "docker0",
            "cbr0",
            "dummy0",
            "virbr0",
            "lxcbr0",
            "veth0",
            "lo",
            "cali123",
            "tunl0",
            "flannel.1",
            "kube-ipvs0",
            "cni0",
            "nodelocaldns",
            "lxc42",
            "cilium_net",
            "vxlan.calico",
        ] {
            assert!(excluded_by_default(name).is_some(), "{name}");
        }
        for name in ["eth0", "eno1", "bond0", "br0", "enp3s0", "lo0", "wlan0"] {
            assert_eq!(excluded_by_default(name), None, "{name}");
        }
        assert_eq!(f.patterns(), ["eth0", "/bond.*/"]);
        assert_eq!(f, InterfaceFilter::new(["eth0", "/bond.*/"]).unwrap());
    }

    #[test]
    fn filter_errors_name_the_pattern() {
        for bad in ["/eth[/", "", "eth 0", "/", "eth/0"] {
            let err = InterfaceFilter::new([bad]).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn plan_answers_from_master_not_slave() {
        let mut ifaces = BTreeMap::new();
        for i in [
            Interface {
                loopback: true,
                mac: None,
                ..eth(1, "lo")
            },
            Interface {
                master: Some(4),
                ..eth(2, "eno1")
            },
            Interface {
                master: Some(4),
                ..eth(3, "eno2")
            },
            eth(4, "bond0"),
            eth(5, "eth9"),
        ] {
            ifaces.insert(i.index, i);
        }
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        let desired = BTreeMap::from([
            (v4, InterfaceFilter::all()),
            (v6, InterfaceFilter::new(["bond0"]).unwrap()),
        ]);
        let plan = Plan::compute(&ifaces, &desired);
        assert_eq!(plan.by_ifindex.keys().copied().collect::<Vec<_>>(), vec![4, 5]);
        assert_eq!(plan.answers(4, v4), Some(MacAddr([2, 0, 0, 0, 0, 4])));
        assert_eq!(plan.answers(5, v6), None);
        assert_eq!(plan.answers(2, v4), None);
        assert_eq!(
            plan.announced(),
            BTreeMap::from([
                (v4, vec!["bond0".to_string(), "eth9".to_string()]),
                (v6, vec!["bond0".to_string()])
            ])
        );
        assert_eq!(Plan::compute(&ifaces, &BTreeMap::new()), Plan::default());
    }

    #[test]
    fn link_message_conversion() {
        let mut msg = LinkMessage::default();
        msg.header.index = 3;
        msg.header.link_layer_type = LinkLayerType::Ether;
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("eno1".into()),
            LinkAttribute::Address(vec![0x52, 0x54, 0, 1, 2, 3]),
            LinkAttribute::Controller(9),
            LinkAttribute::OperState(State::Up),
        ];
        let i = interface_from_link(&msg).unwrap();
        assert_eq!(
            i,
            Interface {
                index: 3,
                name: "eno1".into(),
                mac: Some(MacAddr([0x52, 0x54, 0, 1, 2, 3])),
                up: true,
                carrier: true,
                loopback: false,
                master: Some(9),
                noarp: false,
                bond_slave: false,
            }
        );
        msg.header.flags = LinkFlags::Up | LinkFlags::LowerUp | LinkFlags::Noarp | LinkFlags::Port;
        let i = interface_from_link(&msg).unwrap();
        assert!(i.noarp && i.bond_slave);
        msg.attributes[3] = LinkAttribute::OperState(State::LowerLayerDown);
        msg.header.link_layer_type = LinkLayerType::Void;
        let i = interface_from_link(&msg).unwrap();
        assert!(!i.carrier);
        assert_eq!(i.mac, None);
    }
}
