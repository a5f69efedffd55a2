//! The raw sockets, behind a safe async API: an AF_PACKET socket for ARP and a raw ICMPv6 socket for NDP.
//!
//! This is the one module of ferrite-lb allowed `unsafe`, because socket2 has no safe way to build or read
//! a `sockaddr_ll` (the link-layer address AF_PACKET needs to bind, to learn the ifindex/packet type of a
//! received frame and to choose the destination MAC), nor to set `PACKET_IGNORE_OUTGOING` and
//! `ICMP6_FILTER`. Each `unsafe` block is a few lines with its SAFETY argument; everything else (the file
//! descriptor, recvmsg, multicast membership) goes through socket2's safe API, and control messages are
//! parsed from plain bytes.
//!
//! ```text
//!   PacketSocket  AF_PACKET/SOCK_DGRAM, protocol ETH_P_ARP, bound to one ifindex
//!                 recv -> (ARP body, PacketMeta{ifindex, pkttype, source MAC})   send(ARP body, dst MAC)
//!   Icmpv6Socket  AF_INET6/SOCK_RAW/IPPROTO_ICMPV6, SO_BINDTODEVICE, ICMP6_FILTER = NS only,
//!                 IPV6_RECVHOPLIMIT + IPV6_RECVPKTINFO, hop limits 255 (RFC 4861 §7.1.2)
//!                 recv -> (ICMPv6 message, Ipv6Envelope)   send_to(message, dst, scope = ifindex)
//! ```
#![allow(unsafe_code)]

use std::io::{self, IoSlice};
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv6Addr, SocketAddrV6};

use socket2::{
    Domain, MaybeUninitSlice, MsgHdr, MsgHdrMut, Protocol, SockAddr, SockAddrStorage, Socket, Type,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::packet::{Ipv6Envelope, MacAddr};

// Linux UAPI constants that the libc crate does not export on every target.
const PACKET_OUTGOING: u8 = 4; // linux/if_packet.h
const PACKET_IGNORE_OUTGOING: libc::c_int = 23; // linux/if_packet.h, Linux >= 4.20
const ICMP6_FILTER: libc::c_int = 1; // netinet/icmp6.h, level IPPROTO_ICMPV6

/// Where a frame came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketMeta {
    pub ifindex: u32,
    /// `PACKET_HOST`, `PACKET_BROADCAST`, ... `PACKET_OUTGOING` (4) for our own transmissions.
    pub pkttype: u8,
    pub source: Option<MacAddr>,
}

impl PacketMeta {
    /// A copy of a frame this host sent (our own gratuitous ARP, the kernel's ARP).
    pub fn is_outgoing(&self) -> bool {
        self.pkttype == PACKET_OUTGOING
    }
}

/// Reinterprets a byte buffer as uninitialised bytes for a receive call.
fn as_uninit(buf: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: MaybeUninit<u8> has the layout of u8; the kernel only writes initialised bytes into the
    // buffer, so the caller's `&mut [u8]` stays fully initialised.
    unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

fn sockaddr_ll(ifindex: u32, protocol: u16, dst: Option<MacAddr>) -> io::Result<SockAddr> {
    let ifindex = libc::c_int::try_from(ifindex)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "ifindex out of range"))?;
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_ll is a Linux sockaddr type and fits in sockaddr_storage (view_as asserts the size).
    let ll = unsafe { storage.view_as::<libc::sockaddr_ll>() };
    ll.sll_family = libc::AF_PACKET as libc::sa_family_t;
    ll.sll_protocol = protocol.to_be();
    ll.sll_ifindex = ifindex;
    if let Some(mac) = dst {
        ll.sll_halen = 6;
        ll.sll_addr[..6].copy_from_slice(&mac.0);
    }
    // SAFETY: the storage holds an initialised sockaddr_ll and the length is its size.
    Ok(unsafe { SockAddr::new(storage, size_of::<libc::sockaddr_ll>() as libc::socklen_t) })
}

fn read_sockaddr_ll(addr: &SockAddr) -> Option<libc::sockaddr_ll> {
    if addr.family() != libc::AF_PACKET as libc::sa_family_t {
        return None;
    }
    // SAFETY: the pointer is to a whole sockaddr_storage (zeroed before the kernel filled it), which is
    // larger than sockaddr_ll; the family says the kernel wrote a sockaddr_ll; any bit pattern is valid.
    Some(unsafe { std::ptr::read_unaligned(addr.as_ptr().cast::<libc::sockaddr_ll>()) })
}

fn setsockopt<T>(sock: &Socket, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `value` is a live, initialised T of the size passed; the fd is owned by `sock`.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast::<libc::c_void>(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn register(sock: Socket) -> io::Result<AsyncFd<Socket>> {
    // SAFETY: socket2's Socket owns its fd, never replaces it and closes it only when dropped, which
    // happens after (inside) the AsyncFd's drop.
    Ok(unsafe { AsyncFd::register_with_interest(sock, Interest::READABLE | Interest::WRITABLE)? })
}

async fn send_with(fd: &AsyncFd<Socket>, f: impl Fn(&Socket) -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match f(fd.get_ref()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut guard = fd.writable().await?;
                guard.clear_ready();
            }
            other => return other,
        }
    }
}

/// An AF_PACKET datagram socket for one EtherType on one interface. Closed when dropped.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    protocol: u16,
}

impl PacketSocket {
    /// Opens a socket receiving `protocol` frames on `ifindex` (needs CAP_NET_RAW).
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<PacketSocket> {
        let sock = Socket::new(
            Domain::PACKET,
            Type::DGRAM,
            Some(Protocol::from(i32::from(protocol.to_be()))),
        )?;
        sock.set_nonblocking(true)?;
        // Our own transmissions would come back as PACKET_OUTGOING copies; skip them in the kernel where
        // supported (4.20+) and check pkttype anyway on older kernels.
        let _ = setsockopt(
            &sock,
            libc::SOL_PACKET,
            PACKET_IGNORE_OUTGOING,
            &1 as &libc::c_int,
        );
        sock.bind(&sockaddr_ll(ifindex, protocol, None)?)?;
        Ok(PacketSocket {
            fd: register(sock)?,
            ifindex,
            protocol,
        })
    }

    /// Receives one frame's payload (the Ethernet header stripped).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, PacketMeta)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|s| s.get_ref().recv_from(as_uninit(buf))) {
                Ok(Ok((n, addr))) => {
                    let ll = read_sockaddr_ll(&addr);
                    let meta = PacketMeta {
                        ifindex: ll.map_or(self.ifindex, |l| u32::try_from(l.sll_ifindex).unwrap_or(0)),
                        pkttype: ll.map_or(0, |l| l.sll_pkttype),
                        source: ll
                            .filter(|l| l.sll_halen == 6)
                            .and_then(|l| MacAddr::from_slice(&l.sll_addr[..6])),
                    };
                    return Ok((n, meta));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends `payload` to `dst`; the kernel adds the Ethernet header with the interface's MAC as source.
    pub async fn send(&self, payload: &[u8], dst: MacAddr) -> io::Result<()> {
        let addr = sockaddr_ll(self.ifindex, self.protocol, Some(dst))?;
        send_with(&self.fd, |s| s.send_to(payload, &addr)).await.map(drop)
    }
}

/// A raw ICMPv6 socket bound to one interface that receives only Neighbor Solicitations. Closed when dropped.
#[derive(Debug)]
pub struct Icmpv6Socket {
    fd: AsyncFd<Socket>,
    ifindex: u32,
    freebind: bool,
}

impl Icmpv6Socket {
    /// Opens the socket on interface `name`/`ifindex` (needs CAP_NET_RAW).
    pub fn open(ifindex: u32, name: &str) -> io::Result<Icmpv6Socket> {
        let sock = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
        sock.set_nonblocking(true)?;
        sock.bind_device(Some(name.as_bytes()))?;
        // ICMP6_FILTER (RFC 3542 §3.2): a set bit blocks that type; let only NS (135) through so echo and
        // router traffic never wakes us.
        let mut filter = [u32::MAX; 8];
        let ns = usize::from(super::packet::ICMPV6_NEIGHBOR_SOLICITATION);
        filter[ns >> 5] &= !(1u32 << (ns & 31));
        setsockopt(&sock, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &filter)?;
        // RFC 4861 §7.1.1: a valid NS has hop limit 255; ask for it, and for the destination address.
        sock.set_recv_hoplimit_v6(true)?;
        setsockopt(
            &sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_RECVPKTINFO,
            &1 as &libc::c_int,
        )?;
        // RFC 4861 §7.1.2: NAs are sent with hop limit 255 so receivers know they are on-link.
        sock.set_unicast_hops_v6(255)?;
        sock.set_multicast_hops_v6(255)?;
        sock.set_multicast_if_v6(ifindex)?;
        sock.set_multicast_loop_v6(false)?;
        // The NA's source address is the VIP itself, as the kernel does for its own addresses
        // (ndisc_send_na), and as ndisc6 and other clients expect: they match the NA's source scope
        // with the target's. The VIP is on no interface, so the kernel accepts it as IPV6_PKTINFO
        // source only with IPV6_FREEBIND (Linux >= 4.15, no capability needed). Without it we fall
        // back to the link-local source the kernel picks (what MetalLB sends).
        let freebind = match sock.set_freebind_v6(true) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "IPV6_FREEBIND unavailable; NAs will come from the link-local address");
                false
            }
        };
        Ok(Icmpv6Socket {
            fd: register(sock)?,
            ifindex,
            freebind,
        })
    }

    /// Joins a multicast group (a solicited-node group) on this interface.
    pub fn join(&self, group: &Ipv6Addr) -> io::Result<()> {
        self.fd.get_ref().join_multicast_v6(group, self.ifindex)
    }

    /// Leaves a multicast group on this interface.
    pub fn leave(&self, group: &Ipv6Addr) -> io::Result<()> {
        self.fd.get_ref().leave_multicast_v6(group, self.ifindex)
    }

    /// Receives one ICMPv6 message (the kernel strips the IPv6 header) and its envelope.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Ipv6Envelope)> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut control = [MaybeUninit::<u8>::uninit(); 128];
            let mut addr = SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0));
            let res = guard.try_io(|s| {
                let mut bufs = [MaybeUninitSlice::new(as_uninit(buf))];
                let mut msg = MsgHdrMut::new()
                    .with_addr(&mut addr)
                    .with_buffers(&mut bufs)
                    .with_control(&mut control);
                let n = s.get_ref().recvmsg(&mut msg, 0)?;
                Ok((n, msg.control_len()))
            });
            match res {
                Ok(Ok((n, control_len))) => {
                    let control = &control[..control_len.min(control.len())];
                    // SAFETY: recvmsg reported `control_len` bytes of control data written by the kernel.
                    let control = unsafe { &*(control as *const [MaybeUninit<u8>] as *const [u8]) };
                    let (destination, hop_limit) = parse_cmsgs(control);
                    let source = addr.as_socket_ipv6().map_or(Ipv6Addr::UNSPECIFIED, |a| *a.ip());
                    return Ok((
                        n,
                        Ipv6Envelope {
                            source,
                            destination,
                            hop_limit,
                        },
                    ));
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends an ICMPv6 message to `dst` on this interface (scope id = ifindex for link-local and
    /// multicast), from `source` when the kernel allows it (see `open`), else from its own choice.
    pub async fn send_to(&self, msg: &[u8], dst: Ipv6Addr, source: Ipv6Addr) -> io::Result<()> {
        let addr = SockAddr::from(SocketAddrV6::new(dst, 0, 0, self.ifindex));
        if self.freebind {
            let control = pktinfo_cmsg(source, self.ifindex);
            let res = send_with(&self.fd, |s| {
                let bufs = [IoSlice::new(msg)];
                s.sendmsg(
                    &MsgHdr::new()
                        .with_addr(&addr)
                        .with_buffers(&bufs)
                        .with_control(&control),
                    0,
                )
            })
            .await;
            match res {
                // EINVAL/EADDRNOTAVAIL: the source was refused after all; send from the kernel's choice.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EADDRNOTAVAIL)) => {
                    tracing::debug!(error = %e, %source, "source address refused; using the kernel's choice");
                }
                other => return other.map(drop),
            }
        }
        send_with(&self.fd, |s| s.send_to(msg, &addr)).await.map(drop)
    }
}

const CMSG_ALIGN: usize = size_of::<usize>();
const fn cmsg_align(n: usize) -> usize {
    n.div_ceil(CMSG_ALIGN) * CMSG_ALIGN
}
/// CMSG_ALIGN(sizeof(struct cmsghdr)): {size_t len; int level; int type;}.
const CMSG_HEADER: usize = cmsg_align(size_of::<usize>() + 2 * size_of::<libc::c_int>());

/// One IPV6_PKTINFO control message (struct in6_pktinfo {in6_addr; unsigned ifindex}) choosing the source
/// address and interface, laid out as CMSG_SPACE/CMSG_LEN do.
fn pktinfo_cmsg(source: Ipv6Addr, ifindex: u32) -> Vec<u8> {
    let data_len = 16 + 4;
    let mut v = vec![0u8; CMSG_HEADER + cmsg_align(data_len)];
    let len = CMSG_HEADER + data_len;
    v[..size_of::<usize>()].copy_from_slice(&len.to_ne_bytes());
    let o = size_of::<usize>();
    v[o..o + 4].copy_from_slice(&libc::IPPROTO_IPV6.to_ne_bytes());
    v[o + 4..o + 8].copy_from_slice(&libc::IPV6_PKTINFO.to_ne_bytes());
    v[CMSG_HEADER..CMSG_HEADER + 16].copy_from_slice(&source.octets());
    v[CMSG_HEADER + 16..CMSG_HEADER + 20].copy_from_slice(&ifindex.to_ne_bytes());
    v
}

/// Reads IPV6_PKTINFO (destination) and IPV6_HOPLIMIT from the control messages: `struct cmsghdr` is
/// {size_t len; int level; int type;} followed by data, each header and message aligned to size_t
/// (CMSG_ALIGN in linux/socket.h).
fn parse_cmsgs(mut control: &[u8]) -> (Option<Ipv6Addr>, Option<u8>) {
    let header = CMSG_HEADER;
    let (mut dst, mut hop) = (None, None);
    while control.len() >= header {
        let mut len_bytes = [0u8; size_of::<usize>()];
        len_bytes.copy_from_slice(&control[..size_of::<usize>()]);
        let len = usize::from_ne_bytes(len_bytes);
        let int_at = |off: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&control[off..off + 4]);
            i32::from_ne_bytes(b)
        };
        let (level, kind) = (int_at(size_of::<usize>()), int_at(size_of::<usize>() + 4));
        if len < header || len > control.len() {
            break;
        }
        let data = &control[header..len];
        if level == libc::IPPROTO_IPV6 {
            if kind == libc::IPV6_PKTINFO && data.len() >= 16 {
                let mut a = [0u8; 16];
                a.copy_from_slice(&data[..16]);
                dst = Some(Ipv6Addr::from(a));
            } else if kind == libc::IPV6_HOPLIMIT && data.len() >= 4 {
                hop = u8::try_from(int_at(header)).ok();
            }
        }
        control = control.get(cmsg_align(len)..).unwrap_or(&[]);
    }
    (dst, hop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmsg(level: i32, kind: i32, data: &[u8]) -> Vec<u8> {
        let header = 16; // 64-bit Linux
        let mut v = Vec::new();
        v.extend_from_slice(&((header + data.len()) as u64).to_ne_bytes());
        v.extend_from_slice(&level.to_ne_bytes());
        v.extend_from_slice(&kind.to_ne_bytes());
        v.extend_from_slice(data);
        while v.len() % 8 != 0 {
            v.push(0);
        }
        v
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn control_messages() {
        let mut pktinfo = "ff02::1:ff00:10".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        pktinfo.extend_from_slice(&3u32.to_ne_bytes());
        let mut buf = cmsg(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, &pktinfo);
        buf.extend(cmsg(
            libc::IPPROTO_IPV6,
            libc::IPV6_HOPLIMIT,
            &255i32.to_ne_bytes(),
        ));
        assert_eq!(
            parse_cmsgs(&buf),
            (Some("ff02::1:ff00:10".parse().unwrap()), Some(255))
        );
        // Truncated or garbage control data yields nothing, without panicking.
        assert_eq!(parse_cmsgs(&buf[..10]), (None, None));
        let mut bad = buf.clone();
        bad[0] = 0xff;
        assert_eq!(parse_cmsgs(&bad), (None, None));
        assert_eq!(parse_cmsgs(&[]), (None, None));
    }

    #[test]
    fn pktinfo_roundtrip() {
        let src: Ipv6Addr = "2001:db8::10".parse().unwrap();
        let c = pktinfo_cmsg(src, 7);
        assert_eq!(c.len() % size_of::<usize>(), 0);
        assert_eq!(parse_cmsgs(&c), (Some(src), None));
        assert_eq!(&c[CMSG_HEADER + 16..CMSG_HEADER + 20], &7u32.to_ne_bytes());
    }
}
