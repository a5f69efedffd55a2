//! The PROXY protocol (HAProxy's specification, versions 1 and 2), read before TLS and HTTP when
//! `ProxyConfig::proxy_protocol` is on: a load balancer in front (ferrite-lb in a proxy mode, a cloud
//! NLB, HAProxy) tells the client's address in a header at the start of every connection.
//!
//! ```text
//!   v1: "PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n"   (text, at most 107 bytes)
//!       "PROXY TCP6 2001:db8::1 2001:db8::2 51234 443\r\n" | "PROXY UNKNOWN ...\r\n"
//!   v2: \r\n\r\n\0\r\nQUIT\n, ver|cmd, family|transport, length (u16 BE), addresses, TLVs
//! ```
//!
//! Exactly the header's bytes are consumed (v1 byte by byte after the first 15, v2 by its length),
//! so what follows is read by TLS or HTTP unchanged. `LOCAL` (v2) and `UNKNOWN` (v1) headers, and
//! address families other than TCP over IPv4/IPv6, keep the connection's own peer address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;
/// Larger v2 headers (addresses plus TLVs) are refused; real ones are well below this.
const V2_MAX_BODY: usize = 4096;

/// What the header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A proxied TCP connection from `source` to `destination`.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A health check of the load balancer itself, or an address the protocol cannot carry:
    /// the connection's own addresses stand.
    Local,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyProtocolError {
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PROXY protocol header")]
    Missing,
    #[error("invalid PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("invalid PROXY v2 header: {0}")]
    V2(&'static str),
}

/// Reads and parses one PROXY header from the start of a connection.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<ProxyHeader, ProxyProtocolError> {
    // Both versions' headers are at least 15 bytes ("PROXY UNKNOWN\r\n"; v2 has 16).
    let mut buf = Vec::with_capacity(V1_MAX);
    buf.resize(15, 0);
    io.read_exact(&mut buf).await?;
    if buf[..12] == V2_SIGNATURE[..] {
        let mut rest = [0u8; 1];
        io.read_exact(&mut rest).await?;
        buf.push(rest[0]);
        let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if len > V2_MAX_BODY {
            return Err(ProxyProtocolError::V2("longer than 4096 bytes"));
        }
        let mut body = vec![0u8; len];
        io.read_exact(&mut body).await?;
        return parse_v2(buf[12], buf[13], &body);
    }
    if !buf.starts_with(b"PROXY ") {
        return Err(ProxyProtocolError::Missing);
    }
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX {
            return Err(ProxyProtocolError::V1("no CRLF in 107 bytes"));
        }
        io.read_exact(&mut byte).await?;
        buf.push(byte[0]);
    }
    parse_v1(&buf[..buf.len() - 2])
}

/// `line` is the header without its CRLF.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    let line = std::str::from_utf8(line).map_err(|_| ProxyProtocolError::V1("not ASCII"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("PROXY") {
        return Err(ProxyProtocolError::V1("does not start with PROXY"));
    }
    let family = parts.next().ok_or(ProxyProtocolError::V1("no protocol"))?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (the spec's sender may put anything there).
        return Ok(ProxyHeader::Local);
    }
    let fields: Vec<&str> = parts.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(ProxyProtocolError::V1("expected 4 fields after the protocol"));
    };
    let (src, dst): (IpAddr, IpAddr) = match family {
        "TCP4" => (
            IpAddr::V4(
                src.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv4 source"))?,
            ),
            IpAddr::V4(
                dst.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv4 destination"))?,
            ),
        ),
        "TCP6" => (
            IpAddr::V6(
                src.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv6 source"))?,
            ),
            IpAddr::V6(
                dst.parse()
                    .map_err(|_| ProxyProtocolError::V1("bad IPv6 destination"))?,
            ),
        ),
        _ => return Err(ProxyProtocolError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let port = |p: &str| {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ProxyProtocolError::V1("bad port"));
        }
        p.parse::<u16>().map_err(|_| ProxyProtocolError::V1("bad port"))
    };
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, port(sport)?),
        destination: SocketAddr::new(dst, port(dport)?),
    })
}

/// `ver_cmd`, `family` are bytes 13 and 14 of the header; `body` the `len` bytes after it.
pub fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Result<ProxyHeader, ProxyProtocolError> {
    if ver_cmd >> 4 != 2 {
        return Err(ProxyProtocolError::V2("version is not 2"));
    }
    match ver_cmd & 0x0f {
        0 => return Ok(ProxyHeader::Local),
        1 => {}
        _ => return Err(ProxyProtocolError::V2("command is not LOCAL or PROXY")),
    }
    let transport = family & 0x0f;
    let addr = |ip: IpAddr, at: usize| SocketAddr::new(ip, u16::from_be_bytes([body[at], body[at + 1]]));
    match family >> 4 {
        // AF_INET
        1 => {
            if body.len() < 12 {
                return Err(ProxyProtocolError::V2("IPv4 addresses truncated"));
            }
            if transport != 1 {
                return Ok(ProxyHeader::Local);
            }
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let dst = Ipv4Addr::new(body[4], body[5], body[6], body[7]);
            Ok(ProxyHeader::Proxied {
                source: addr(IpAddr::V4(src), 8),
                destination: addr(IpAddr::V4(dst), 10),
            })
        }
        // AF_INET6
        2 => {
            if body.len() < 36 {
                return Err(ProxyProtocolError::V2("IPv6 addresses truncated"));
            }
            if transport != 1 {
                return Ok(ProxyHeader::Local);
            }
            let ip = |at: usize| {
                let mut o = [0u8; 16];
                o.copy_from_slice(&body[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(o))
            };
            Ok(ProxyHeader::Proxied {
                source: addr(ip(0), 32),
                destination: addr(ip(16), 34),
            })
        }
        // AF_UNSPEC, AF_UNIX: nothing we can use as a client address.
        0 | 3 => Ok(ProxyHeader::Local),
        _ => Err(ProxyProtocolError::V2("unknown address family")),
    }
}

/// A v2 header for `source` -> `destination` over TCP (tests and tools).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<ProxyHeader, ProxyProtocolError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let r = read_header(&mut cursor).await;
        let at = usize::try_from(cursor.position()).expect("pos");
        (r, bytes[at..].to_vec())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("addr")
    }

    #[tokio::test]
    async fn v1_headers() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(
            r.expect("v1"),
            ProxyHeader::Proxied {
                source: sa("192.0.2.1:51234"),
                destination: sa("198.51.100.2:443")
            }
        );
        assert_eq!(rest, b"GET / HTTP/1.1\r\n", "exactly the header is consumed");
        let (r, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n").await;
        assert_eq!(
            r.expect("v6"),
            ProxyHeader::Proxied {
                source: sa("[2001:db8::1]:1"),
                destination: sa("[2001:db8::2]:65535")
            }
        );
        let (r, rest) = read(b"PROXY UNKNOWN\r\nxyz").await;
        assert_eq!(r.expect("unknown"), ProxyHeader::Local);
        assert_eq!(rest, b"xyz");
        let (r, _) = read(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").await;
        assert_eq!(r.expect("unknown with addresses"), ProxyHeader::Local);
    }

    #[tokio::test]
    async fn v1_refusals() {
        let bad: [&[u8]; 11] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51234\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443 extra\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2",
        ];
        for b in bad {
            let (r, _) = read(b).await;
            assert!(r.is_err(), "accepted {:?}", String::from_utf8_lossy(b));
        }
        // No CRLF within 107 bytes: refused without reading on forever.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        let (r, rest) = read(&long).await;
        assert!(matches!(r, Err(ProxyProtocolError::V1(_))), "{r:?}");
        assert_eq!(rest.len(), long.len() - V1_MAX);
    }

    #[tokio::test]
    async fn v2_headers() {
        let h = encode_v2(sa("192.0.2.1:51234"), sa("198.51.100.2:443"));
        let mut bytes = h.clone();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (r, rest) = read(&bytes).await;
        assert_eq!(
            r.expect("v2"),
            ProxyHeader::Proxied {
                source: sa("192.0.2.1:51234"),
                destination: sa("198.51.100.2:443")
            }
        );
        assert_eq!(rest, b"\x16\x03\x01");
        let h6 = encode_v2(sa("[2001:db8::1]:5"), sa("[2001:db8::2]:6"));
        let (r, _) = read(&h6).await;
        assert_eq!(
            r.expect("v2 v6"),
            ProxyHeader::Proxied {
                source: sa("[2001:db8::1]:5"),
                destination: sa("[2001:db8::2]:6")
            }
        );
        // TLVs after the addresses are skipped (length covers them).
        let mut tlv = h.clone();
        tlv[15] += 7;
        tlv.extend_from_slice(&[0x04, 0x00, 0x04, b'a', b'b', b'c', b'd']);
        tlv.extend_from_slice(b"next");
        let (r, rest) = read(&tlv).await;
        assert!(matches!(r, Ok(ProxyHeader::Proxied { .. })), "{r:?}");
        assert_eq!(rest, b"next");
        // LOCAL (health check): own addresses.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let (r, _) = read(&local).await;
        assert_eq!(r.expect("local"), ProxyHeader::Local);
    }

    #[tokio::test]
    async fn v2_refusals() {
        let h = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
        let mut version = h.clone();
        version[12] = 0x11;
        let mut command = h.clone();
        command[12] = 0x22;
        let mut family = h.clone();
        family[13] = 0x41;
        let mut short = h.clone();
        short[15] = 8;
        let mut huge = h[..14].to_vec();
        huge.extend_from_slice(&u16::MAX.to_be_bytes());
        let truncated = h[..20].to_vec();
        for (what, b) in [
            ("version", version),
            ("command", command),
            ("family", family),
            ("short addresses", short),
            ("huge", huge),
            ("truncated", truncated),
        ] {
            let (r, _) = read(&b).await;
            assert!(r.is_err(), "{what} accepted");
        }
    }
}
