//! ARP and NDP wire formats: pure encode/decode, no I/O.
//!
//! What the sockets hand us and what we hand back:
//!
//! ```text
//!   AF_PACKET SOCK_DGRAM (ETH_P_ARP)        the kernel strips/builds the Ethernet header,
//!     28-byte ARP payload  <──> ArpPacket   we see the ARP body only (RFC 826)
//!   raw ICMPv6 socket
//!     ICMPv6 message       ──> NeighborSolicitation::parse   (RFC 4861 §4.3, §7.1.1)
//!     NeighborAdvertisement::encode ──> ICMPv6 message       (RFC 4861 §4.4; checksum 0:
//!                                                             the kernel fills it, RFC 3542 §3.1)
//! ```
//!
//! Every parser returns a [`PacketError`] instead of panicking: packets come from the network.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of ARP (used as the AF_PACKET protocol).
pub const ETH_P_ARP: u16 = 0x0806;

/// An Ethernet MAC address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// 00:00:00:00:00:00.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// A MAC from a byte slice of exactly 6 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<MacAddr> {
        <[u8; 6]>::try_from(bytes).ok().map(MacAddr)
    }

    /// A usable unicast station address: not all-zero, not multicast/broadcast (I/G bit clear).
    pub fn is_unicast(&self) -> bool {
        *self != MacAddr::ZERO && self.0[0] & 0x01 == 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a received packet was dropped. Each variant has a short stable [`PacketError::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet is {got} bytes, shorter than the {need}-byte minimum")]
    TooShort { got: usize, need: usize },
    #[error(
        "ARP for hardware type {htype}/protocol {ptype:#06x}/lengths {hlen},{plen}: only Ethernet/IPv4 is supported"
    )]
    ArpNotEthernetIpv4 {
        htype: u16,
        ptype: u16,
        hlen: u8,
        plen: u8,
    },
    #[error("ARP operation {0} is neither request (1) nor reply (2)")]
    ArpOperation(u16),
    #[error("ICMPv6 type {0} is not a Neighbor Solicitation (135)")]
    NotNeighborSolicitation(u8),
    #[error("Neighbor Solicitation with ICMPv6 code {0}, RFC 4861 §7.1.1 requires 0")]
    NdpCode(u8),
    #[error("Neighbor Solicitation hop limit {0}, RFC 4861 §7.1.1 requires 255 (sent from off-link)")]
    NdpHopLimit(u8),
    #[error("Neighbor Solicitation target {0} is a multicast address")]
    NdpMulticastTarget(Ipv6Addr),
    #[error("NDP option with length 0 or running past the end of the packet")]
    NdpOptionLength,
    #[error(
        "Neighbor Solicitation from :: must go to a solicited-node group and carry no source link-layer option"
    )]
    NdpUnspecifiedSource,
}

impl PacketError {
    /// Short reason string for logs.
    pub fn reason(&self) -> &'static str {
        match self {
            PacketError::TooShort { .. } => "too_short",
            PacketError::ArpNotEthernetIpv4 { .. } => "arp_not_ethernet_ipv4",
            PacketError::ArpOperation(_) => "arp_operation",
            PacketError::NotNeighborSolicitation(_) => "not_ns",
            PacketError::NdpCode(_) => "ndp_code",
            PacketError::NdpHopLimit(_) => "ndp_hop_limit",
            PacketError::NdpMulticastTarget(_) => "ndp_multicast_target",
            PacketError::NdpOptionLength => "ndp_option_length",
            PacketError::NdpUnspecifiedSource => "ndp_unspecified_source",
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// ARP (RFC 826), Ethernet + IPv4 only.

/// ARP operation code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOp {
    Request,
    Reply,
}

impl ArpOp {
    fn code(self) -> u16 {
        match self {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        }
    }
}

/// An Ethernet/IPv4 ARP packet (the 28-byte body, without the Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket {
    pub op: ArpOp,
    pub sender_mac: MacAddr,
    pub sender_ip: Ipv4Addr,
    pub target_mac: MacAddr,
    pub target_ip: Ipv4Addr,
}

impl ArpPacket {
    /// Length of an Ethernet/IPv4 ARP body.
    pub const LEN: usize = 28;

    /// Parses an ARP body. Trailing bytes (Ethernet minimum-frame padding) are ignored.
    pub fn parse(buf: &[u8]) -> Result<ArpPacket, PacketError> {
        let b: &[u8; Self::LEN] =
            buf.get(..Self::LEN)
                .and_then(|s| s.try_into().ok())
                .ok_or(PacketError::TooShort {
                    got: buf.len(),
                    need: Self::LEN,
                })?;
        let htype = u16::from_be_bytes([b[0], b[1]]);
        let ptype = u16::from_be_bytes([b[2], b[3]]);
        let (hlen, plen) = (b[4], b[5]);
        if htype != 1 || ptype != 0x0800 || hlen != 6 || plen != 4 {
            return Err(PacketError::ArpNotEthernetIpv4 {
                htype,
                ptype,
                hlen,
                plen,
            });
        }
        let op = match u16::from_be_bytes([b[6], b[7]]) {
            1 => ArpOp::Request,
            2 => ArpOp::Reply,
            other => return Err(PacketError::ArpOperation(other)),
        };
        Ok(ArpPacket {
            op,
            sender_mac: MacAddr([b[8], b[9], b[10], b[11], b[12], b[13]]),
            sender_ip: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
            target_mac: MacAddr([b[18], b[19], b[20], b[21], b[22], b[23]]),
            target_ip: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
        })
    }

    /// The 28-byte ARP body.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..2].copy_from_slice(&1u16.to_be_bytes());
        b[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.op.code().to_be_bytes());
        b[8..14].copy_from_slice(&self.sender_mac.0);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac.0);
        b[24..28].copy_from_slice(&self.target_ip.octets());
        b
    }

    /// Sender IP equals target IP: an announcement (RFC 5227 §2.3 "ARP Announcement") or someone's
    /// gratuitous ARP, ours included. It is not a question, so it is never answered.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// Our reply to `self` (a request for `self.target_ip`): "target_ip is at `mac`" sent back to the
    /// requester (RFC 826 "swap" step). A probe (RFC 5227 §2.1.1, sender IP 0.0.0.0) gets the same reply,
    /// which defends the address.
    pub fn reply(&self, mac: MacAddr) -> ArpPacket {
        ArpPacket {
            op: ArpOp::Reply,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }

    /// A gratuitous ARP for `ip` at `mac`, broadcast. Like MetalLB we send both forms, because
    /// implementations differ in which one updates an existing cache entry: the request form (RFC 5227 §3
    /// "ARP Announcement", target MAC zero) and the reply form (target MAC broadcast, as MetalLB does).
    pub fn gratuitous(op: ArpOp, mac: MacAddr, ip: Ipv4Addr) -> ArpPacket {
        let target_mac = match op {
            ArpOp::Request => MacAddr::ZERO,
            ArpOp::Reply => MacAddr::BROADCAST,
        };
        ArpPacket {
            op,
            sender_mac: mac,
            sender_ip: ip,
            target_mac,
            target_ip: ip,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// NDP (RFC 4861).

/// ICMPv6 type of a Neighbor Solicitation.
pub const ICMPV6_NEIGHBOR_SOLICITATION: u8 = 135;
/// ICMPv6 type of a Neighbor Advertisement.
pub const ICMPV6_NEIGHBOR_ADVERTISEMENT: u8 = 136;
const OPT_SOURCE_LLA: u8 = 1;
const OPT_TARGET_LLA: u8 = 2;

/// ff02::1, all-nodes link-local multicast.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast address of `ip`: ff02::1:ff00:0/104 plus its low 24 bits (RFC 4291 §2.7.1).
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, o[13], o[14], o[15],
    ])
}

fn is_solicited_node(ip: Ipv6Addr) -> bool {
    let o = ip.octets();
    o[..13] == [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff]
}

/// A Neighbor Solicitation (the ICMPv6 message, without the IPv6 header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborSolicitation {
    pub target: Ipv6Addr,
    /// Source link-layer address option, if present and Ethernet-sized.
    pub source_lla: Option<MacAddr>,
}

/// What the socket told us about the IPv6 header around an ICMPv6 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Envelope {
    pub source: Ipv6Addr,
    /// Destination address (IPV6_PKTINFO), if the kernel gave it.
    pub destination: Option<Ipv6Addr>,
    /// Hop limit (IPV6_HOPLIMIT), if the kernel gave it.
    pub hop_limit: Option<u8>,
}

impl NeighborSolicitation {
    /// Length of the fixed part: type, code, checksum, reserved, target.
    pub const FIXED_LEN: usize = 24;

    /// Parses and validates a Neighbor Solicitation as RFC 4861 §7.1.1 asks: hop limit 255, code 0,
    /// length >= 24, target not multicast, every option of non-zero length, and from the unspecified
    /// address only to a solicited-node group without a source link-layer option. The checksum was
    /// already verified by the kernel (raw ICMPv6 sockets drop bad checksums, RFC 3542 §3.1).
    pub fn parse(msg: &[u8], env: &Ipv6Envelope) -> Result<NeighborSolicitation, PacketError> {
        if msg.len() < Self::FIXED_LEN {
            return Err(PacketError::TooShort {
                got: msg.len(),
                need: Self::FIXED_LEN,
            });
        }
        if msg[0] != ICMPV6_NEIGHBOR_SOLICITATION {
            return Err(PacketError::NotNeighborSolicitation(msg[0]));
        }
        if let Some(h) = env.hop_limit
            && h != 255
        {
            return Err(PacketError::NdpHopLimit(h));
        }
        if msg[1] != 0 {
            return Err(PacketError::NdpCode(msg[1]));
        }
        let mut t = [0u8; 16];
        t.copy_from_slice(&msg[8..24]);
        let target = Ipv6Addr::from(t);
        if target.is_multicast() {
            return Err(PacketError::NdpMulticastTarget(target));
        }
        let mut source_lla = None;
        let mut opts = &msg[Self::FIXED_LEN..];
        while !opts.is_empty() {
            // Options are type, length in units of 8 octets, data (RFC 4861 §4.6).
            let len = usize::from(*opts.get(1).ok_or(PacketError::NdpOptionLength)?) * 8;
            if len == 0 || len > opts.len() {
                return Err(PacketError::NdpOptionLength);
            }
            if opts[0] == OPT_SOURCE_LLA {
                source_lla = MacAddr::from_slice(&opts[2..8.min(len)]);
            }
            opts = &opts[len..];
        }
        if env.source.is_unspecified() {
            let to_group = env.destination.is_none_or(is_solicited_node);
            if !to_group || source_lla.is_some() {
                return Err(PacketError::NdpUnspecifiedSource);
            }
        }
        Ok(NeighborSolicitation { target, source_lla })
    }
}

/// A Neighbor Advertisement carrying a Target Link-Layer Address option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeighborAdvertisement {
    pub target: Ipv6Addr,
    pub solicited: bool,
    pub override_flag: bool,
    pub target_lla: MacAddr,
}

impl NeighborAdvertisement {
    /// 24 bytes of header and target plus an 8-byte target link-layer option.
    pub const LEN: usize = 32;

    /// Answer to a solicitation from `source`: Solicited and Override set, except that a solicitation
    /// from :: (duplicate address detection) is answered with Solicited clear to all-nodes
    /// (RFC 4861 §7.2.4). Returns the message and where to send it.
    pub fn answer(
        ns: &NeighborSolicitation,
        source: Ipv6Addr,
        mac: MacAddr,
    ) -> (NeighborAdvertisement, Ipv6Addr) {
        let from_dad = source.is_unspecified();
        let na = NeighborAdvertisement {
            target: ns.target,
            solicited: !from_dad,
            override_flag: true,
            target_lla: mac,
        };
        (na, if from_dad { ALL_NODES } else { source })
    }

    /// Unsolicited advertisement on takeover: Override set, Solicited clear, to all-nodes (RFC 4861 §7.2.6).
    pub fn unsolicited(target: Ipv6Addr, mac: MacAddr) -> NeighborAdvertisement {
        NeighborAdvertisement {
            target,
            solicited: false,
            override_flag: true,
            target_lla: mac,
        }
    }

    /// The ICMPv6 message. The checksum field is left 0: the kernel computes it for raw ICMPv6 sockets
    /// (RFC 3542 §3.1), because only it knows the source address it will choose.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = ICMPV6_NEIGHBOR_ADVERTISEMENT;
        // b[1] code 0, b[2..4] checksum.
        // Flags: R (router) 0x80 never, we are not a router for the VIP; S 0x40; O 0x20.
        b[4] = (u8::from(self.solicited) << 6) | (u8::from(self.override_flag) << 5);
        b[8..24].copy_from_slice(&self.target.octets());
        b[24] = OPT_TARGET_LLA;
        b[25] = 1; // 8 octets
        b[26..32].copy_from_slice(&self.target_lla.0);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQ_MAC: MacAddr = MacAddr([0x02, 0x00, 0x5e, 0x10, 0x00, 0x01]);
    const OUR_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0xab, 0xcd, 0xef]);

    // "who-has 192.0.2.10 tell 192.0.2.1", as seen by tcpdump -x on an AF_PACKET DGRAM socket, with
    // 18 bytes of Ethernet padding behind it.
    const ARP_REQUEST: [u8; 46] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, // htype, ptype, hlen, plen, op=1
        0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, 192, 0, 2, 1, // sender
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 0, 2, 10, // target
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // padding
    ];

    #[test]
    fn arp_request_parses_and_reply_layout() {
        let req = ArpPacket::parse(&ARP_REQUEST).unwrap();
        assert_eq!(req.op, ArpOp::Request);
        assert_eq!(req.sender_mac, REQ_MAC);
        assert_eq!(req.sender_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(req.target_ip, Ipv4Addr::new(192, 0, 2, 10));
        assert!(!req.is_gratuitous());

        let reply = req.reply(OUR_MAC).encode();
        let want: [u8; 28] = [
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, // op=2
            0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, 192, 0, 2, 10, // sender = us, the VIP
            0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, 192, 0, 2, 1, // target = requester
        ];
        assert_eq!(reply, want);
        assert_eq!(ArpPacket::parse(&reply).unwrap(), req.reply(OUR_MAC));
    }

    #[test]
    fn gratuitous_forms() {
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        let req = ArpPacket::gratuitous(ArpOp::Request, OUR_MAC, ip).encode();
        assert_eq!(&req[6..8], &[0, 1]);
        assert_eq!(&req[14..18], &[192, 0, 2, 10]);
        assert_eq!(&req[18..24], &[0; 6]);
        assert_eq!(&req[24..28], &[192, 0, 2, 10]);
        let rep = ArpPacket::gratuitous(ArpOp::Reply, OUR_MAC, ip).encode();
        assert_eq!(&rep[6..8], &[0, 2]);
        assert_eq!(&rep[18..24], &[0xff; 6]);
        assert!(ArpPacket::parse(&rep).unwrap().is_gratuitous());
    }

    #[test]
    fn arp_malformed() {
        let cases: &[(&str, Vec<u8>, &str)] = &[
            ("empty", vec![], "too_short"),
            ("truncated", ARP_REQUEST[..27].to_vec(), "too_short"),
            (
                "token ring",
                {
                    let mut v = ARP_REQUEST.to_vec();
                    v[1] = 6;
                    v
                },
                "arp_not_ethernet_ipv4",
            ),
            (
                "ipv6 ptype",
                {
                    let mut v = ARP_REQUEST.to_vec();
                    v[2] = 0x86;
                    v[3] = 0xdd;
                    v
                },
                "arp_not_ethernet_ipv4",
            ),
            (
                "rarp op 3",
                {
                    let mut v = ARP_REQUEST.to_vec();
                    v[7] = 3;
                    v
                },
                "arp_operation",
            ),
        ];
        for (name, bytes, reason) in cases {
            let err = ArpPacket::parse(bytes).unwrap_err();
            assert_eq!(err.reason(), *reason, "{name}: {err}");
        }
    }

    #[test]
    fn solicited_node_address() {
        let cases = [
            ("2001:db8::10", "ff02::1:ff00:10"),
            ("2001:db8::1:2345:6789", "ff02::1:ff45:6789"),
            ("fe80::5054:ff:feab:cdef", "ff02::1:ffab:cdef"),
        ];
        for (ip, group) in cases {
            let got = solicited_node(ip.parse().unwrap());
            assert_eq!(got, group.parse::<Ipv6Addr>().unwrap(), "{ip}");
            assert!(is_solicited_node(got));
        }
        assert!(!is_solicited_node(ALL_NODES));
    }

    fn env(source: &str, dst: &str, hop: u8) -> Ipv6Envelope {
        Ipv6Envelope {
            source: source.parse().unwrap(),
            destination: Some(dst.parse().unwrap()),
            hop_limit: Some(hop),
        }
    }

    // NS for 2001:db8::10 with a source link-layer option, as ndisc6 sends it.
    const NS: [u8; 32] = [
        135, 0, 0x12, 0x34, 0, 0, 0, 0, // type, code, checksum, reserved
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // target
        1, 1, 0x02, 0x00, 0x5e, 0x10, 0x00, 0x01, // SLLA option
    ];

    #[test]
    fn ns_parses() {
        let ns = NeighborSolicitation::parse(&NS, &env("fe80::1", "ff02::1:ff00:10", 255)).unwrap();
        assert_eq!(ns.target, "2001:db8::10".parse::<Ipv6Addr>().unwrap());
        assert_eq!(ns.source_lla, Some(REQ_MAC));
        // Without the option (NUD probes may omit it).
        let ns = NeighborSolicitation::parse(&NS[..24], &env("fe80::1", "2001:db8::10", 255)).unwrap();
        assert_eq!(ns.source_lla, None);
        // Hop limit and destination unknown: still accepted.
        let unknown = Ipv6Envelope {
            source: "fe80::1".parse().unwrap(),
            destination: None,
            hop_limit: None,
        };
        assert!(NeighborSolicitation::parse(&NS, &unknown).is_ok());
        // DAD probe from :: to the solicited-node group, no SLLA.
        assert!(NeighborSolicitation::parse(&NS[..24], &env("::", "ff02::1:ff00:10", 255)).is_ok());
    }

    #[test]
    fn ns_invalid() {
        let ok = env("fe80::1", "ff02::1:ff00:10", 255);
        let with = |i: usize, v: u8| {
            let mut b = NS.to_vec();
            b[i] = v;
            b
        };
        let cases: Vec<(&str, Vec<u8>, Ipv6Envelope, &str)> = vec![
            ("short", NS[..23].to_vec(), ok, "too_short"),
            ("echo request", with(0, 128), ok, "not_ns"),
            ("code 1", with(1, 1), ok, "ndp_code"),
            (
                "hop limit 64",
                NS.to_vec(),
                env("fe80::1", "ff02::1:ff00:10", 64),
                "ndp_hop_limit",
            ),
            ("multicast target", with(8, 0xff), ok, "ndp_multicast_target"),
            ("option length 0", with(25, 0), ok, "ndp_option_length"),
            ("option past end", with(25, 2), ok, "ndp_option_length"),
            ("option header cut", NS[..25].to_vec(), ok, "ndp_option_length"),
            (
                "dad with slla",
                NS.to_vec(),
                env("::", "ff02::1:ff00:10", 255),
                "ndp_unspecified_source",
            ),
            (
                "dad to unicast",
                NS[..24].to_vec(),
                env("::", "2001:db8::10", 255),
                "ndp_unspecified_source",
            ),
        ];
        for (name, bytes, e, reason) in cases {
            let err = NeighborSolicitation::parse(&bytes, &e).unwrap_err();
            assert_eq!(err.reason(), reason, "{name}: {err}");
        }
    }

    #[test]
    fn na_layout() {
        let ns = NeighborSolicitation::parse(&NS, &env("fe80::1", "ff02::1:ff00:10", 255)).unwrap();
        let (na, dst) = NeighborAdvertisement::answer(&ns, "fe80::1".parse().unwrap(), OUR_MAC);
        assert_eq!(dst, "fe80::1".parse::<Ipv6Addr>().unwrap());
        let want: [u8; 32] = [
            136, 0, 0, 0, 0x60, 0, 0, 0, // type, code, checksum (kernel), flags S|O
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, // target
            2, 1, 0x52, 0x54, 0x00, 0xab, 0xcd, 0xef, // TLLA option
        ];
        assert_eq!(na.encode(), want);

        // DAD: Solicited clear, to all-nodes.
        let (na, dst) = NeighborAdvertisement::answer(&ns, Ipv6Addr::UNSPECIFIED, OUR_MAC);
        assert_eq!(dst, ALL_NODES);
        assert_eq!(na.encode()[4], 0x20);

        let un = NeighborAdvertisement::unsolicited(ns.target, OUR_MAC).encode();
        assert_eq!(un[4], 0x20);
        assert_eq!(&un[24..26], &[2, 1]);
    }

    #[test]
    fn mac_display_and_unicast() {
        assert_eq!(OUR_MAC.to_string(), "52:54:00:ab:cd:ef");
        assert!(OUR_MAC.is_unicast());
        assert!(!MacAddr::ZERO.is_unicast());
        assert!(!MacAddr::BROADCAST.is_unicast());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }
}
