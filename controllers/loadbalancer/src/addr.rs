//! The addresses of one pool: parsing `IPPool.spec.addresses`, membership, sizes and candidate order.
//!
//! ```text
//!   ["192.0.2.0/28", "192.0.2.40 - 192.0.2.50", "2001:db8::/64"]
//!        │ parse: each entry -> inclusive span of integers (u128), per family
//!        ▼ sort + merge (overlapping or adjacent entries of one pool collapse, so nothing is counted twice)
//!   PoolAddresses { v4: [spans], v6: [spans] }
//!        ├─ contains(ip)            binary search
//!        ├─ count_v4 / count_v6     arithmetic, u128 (saturates for ::/0)
//!        ├─ usable(family, avoid)   count minus .0/.255 when avoidBuggyIPs, still arithmetic
//!        ├─ candidates_from(..)     lazy iterator in address order; a /64 is never materialised
//!        └─ overlaps(other)         one shared address, by a merge walk of the sorted spans
//! ```
//!
//! Accepted entry forms (whitespace around the entry and around `-` is ignored):
//! - a CIDR, `192.0.2.0/28` or `2001:db8::/120`. A CIDR with host bits set (`192.0.2.5/24`) is accepted
//!   and means its network (`192.0.2.0/24`), as MetalLB (Go's `net.ParseCIDR`) does: refusing it would break
//!   pools migrated from MetalLB, and the intent is unambiguous.
//! - an inclusive range `a-b` of one family with `a <= b`.
//! - a single address `192.0.2.7` (same as `/32` or `/128`); MetalLB requires the `/32`, we accept both.
//!
//! Nothing here allocates: see [`crate::alloc`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An address entry that cannot be used; the message names the entry and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Neither a CIDR, nor a range, nor an address.
    #[error("address \"{entry}\" is not a CIDR or range: {reason}")]
    Invalid {
        /// The entry as written.
        entry: String,
        /// What is wrong with it (`invalid IP`, `invalid prefix length` ...).
        reason: String,
    },
    /// A range whose first address is after its last.
    #[error("range \"{entry}\" is reversed: write the lower address first")]
    Reversed {
        /// The entry as written.
        entry: String,
    },
    /// A range from an IPv4 to an IPv6 address or the reverse.
    #[error("range \"{entry}\" mixes IPv4 and IPv6: use one range per family")]
    MixedFamilies {
        /// The entry as written.
        entry: String,
    },
}

impl AddrError {
    /// Short CamelCase reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        "InvalidAddress"
    }

    /// The offending entry as written.
    pub fn entry(&self) -> &str {
        match self {
            AddrError::Invalid { entry, .. }
            | AddrError::Reversed { entry }
            | AddrError::MixedFamilies { entry } => entry,
        }
    }
}

/// An inclusive span of addresses of one family, as integers (IPv4 in the low 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u128,
    end: u128,
}

impl Span {
    /// Number of addresses, saturating at `u128::MAX` for `::/0`.
    fn len(self) -> u128 {
        (self.end - self.start).saturating_add(1)
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_int(family: Family, n: u128) -> IpAddr {
    match family {
        // Spans of the V4 family only ever hold values that fit in 32 bits.
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Whether old firmware may mishandle this address: an IPv4 address ending in `.0` or `.255` (MetalLB's
/// `avoidBuggyIPs`). IPv6 addresses never are.
pub fn is_buggy(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => matches!(a.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

fn is_buggy_int(family: Family, n: u128) -> bool {
    family == Family::V4 && matches!(n & 0xff, 0 | 0xff)
}

/// How many integers in `[0, n]` are congruent to `r` modulo 256.
fn count_mod256_upto(n: u128, r: u128) -> u128 {
    if n < r { 0 } else { (n - r) / 256 + 1 }
}

/// How many IPv4 addresses of `span` end in `.0` or `.255`.
fn buggy_in(span: Span) -> u128 {
    [0u128, 255]
        .into_iter()
        .map(|r| {
            let upto_end = count_mod256_upto(span.end, r);
            let before = if span.start == 0 {
                0
            } else {
                count_mod256_upto(span.start - 1, r)
            };
            upto_end - before
        })
        .sum()
}

/// The parsed, normalised addresses of one pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolAddresses {
    /// Sorted, non-overlapping, non-adjacent.
    v4: Vec<Span>,
    /// Sorted, non-overlapping, non-adjacent.
    v6: Vec<Span>,
}

/// Parses one address of an entry. `which`: the side of a range, named in the error (a CIDR or a bare address
/// has only one address, so naming it again would add nothing).
fn parse_ip(entry: &str, s: &str, which: Option<&str>) -> Result<IpAddr, AddrError> {
    s.trim().parse::<IpAddr>().map_err(|_| AddrError::Invalid {
        entry: entry.to_string(),
        reason: match which {
            Some(side) => format!("invalid IP \"{}\" ({side} of the range)", s.trim()),
            None => "invalid IP".to_string(),
        },
    })
}

fn parse_entry(raw: &str) -> Result<(Family, Span), AddrError> {
    let entry = raw.trim();
    let invalid = |reason: &str| AddrError::Invalid {
        entry: raw.to_string(),
        reason: reason.to_string(),
    };
    if entry.is_empty() {
        return Err(invalid("empty"));
    }
    if let Some((addr, prefix)) = entry.split_once('/') {
        let ip = parse_ip(raw, addr, None)?;
        let family = Family::of(ip);
        let bits: u32 = if family == Family::V4 { 32 } else { 128 };
        let prefix: u32 = prefix
            .trim()
            .parse()
            .ok()
            .filter(|p| *p <= bits)
            .ok_or_else(|| invalid(&format!("invalid prefix length (0 to {bits} for {family})")))?;
        let host_bits = bits - prefix;
        // Host bits set means the network, as net.ParseCIDR does (see the module docs).
        let host_mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let start = to_int(ip) & !host_mask;
        return Ok((
            family,
            Span {
                start,
                end: start | host_mask,
            },
        ));
    }
    if let Some((a, b)) = entry.split_once('-') {
        let (a, b) = (parse_ip(raw, a, Some("start"))?, parse_ip(raw, b, Some("end"))?);
        if Family::of(a) != Family::of(b) {
            return Err(AddrError::MixedFamilies {
                entry: raw.to_string(),
            });
        }
        let (start, end) = (to_int(a), to_int(b));
        if start > end {
            return Err(AddrError::Reversed {
                entry: raw.to_string(),
            });
        }
        return Ok((Family::of(a), Span { start, end }));
    }
    let ip = parse_ip(raw, entry, None)?;
    Ok((
        Family::of(ip),
        Span {
            start: to_int(ip),
            end: to_int(ip),
        },
    ))
}

fn normalise(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by_key(|s| (s.start, s.end));
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match out.last_mut() {
            Some(last) if s.start <= last.end.saturating_add(1) => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    out
}

impl PoolAddresses {
    /// Parses `IPPool.spec.addresses`. The first bad entry fails the whole pool (a half-read pool would
    /// hand out addresses the admin did not mean).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<PoolAddresses, AddrError> {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for entry in entries {
            match parse_entry(entry.as_ref())? {
                (Family::V4, span) => v4.push(span),
                (Family::V6, span) => v6.push(span),
            }
        }
        Ok(PoolAddresses {
            v4: normalise(v4),
            v6: normalise(v6),
        })
    }

    fn spans(&self, family: Family) -> &[Span] {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }

    /// Whether the pool has no address at all.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether the pool has addresses of `family`.
    pub fn has(&self, family: Family) -> bool {
        !self.spans(family).is_empty()
    }

    /// Whether `ip` is in the pool (regardless of `avoidBuggyIPs`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let n = to_int(ip);
        let spans = self.spans(Family::of(ip));
        // First span whose end is >= n; it contains n iff its start is <= n.
        let i = spans.partition_point(|s| s.end < n);
        spans.get(i).is_some_and(|s| s.start <= n)
    }

    /// Number of addresses of `family` (saturating at `u128::MAX`).
    pub fn count(&self, family: Family) -> u128 {
        self.spans(family)
            .iter()
            .fold(0u128, |acc, s| acc.saturating_add(s.len()))
    }

    /// Number of IPv4 addresses.
    pub fn count_v4(&self) -> u128 {
        self.count(Family::V4)
    }

    /// Number of IPv6 addresses (saturating at `u128::MAX`).
    pub fn count_v6(&self) -> u128 {
        self.count(Family::V6)
    }

    /// Number of addresses of `family` the allocator may hand out: with `avoid_buggy_ips`, IPv4 addresses
    /// ending in `.0` or `.255` are not counted (like MetalLB's pool counts).
    pub fn usable(&self, family: Family, avoid_buggy_ips: bool) -> u128 {
        if !(avoid_buggy_ips && family == Family::V4) {
            return self.count(family);
        }
        self.v4.iter().map(|s| s.len() - buggy_in(*s)).sum()
    }

    /// Whether the allocator may hand out `ip` from this pool: inside it and not skipped by `avoid_buggy_ips`.
    pub fn offers(&self, ip: IpAddr, avoid_buggy_ips: bool) -> bool {
        self.contains(ip) && !(avoid_buggy_ips && is_buggy(ip))
    }

    /// Candidate addresses of `family` in address order, lazily.
    pub fn candidates(&self, family: Family, avoid_buggy_ips: bool) -> Candidates<'_> {
        Candidates::new(family, self.spans(family), 0, avoid_buggy_ips)
    }

    /// Candidate addresses of `family` that are `>= from`, in address order, lazily. `from` of the other
    /// family yields nothing.
    pub fn candidates_from(&self, family: Family, from: IpAddr, avoid_buggy_ips: bool) -> Candidates<'_> {
        if Family::of(from) != family {
            return Candidates::new(family, &[], 0, avoid_buggy_ips);
        }
        Candidates::new(family, self.spans(family), to_int(from), avoid_buggy_ips)
    }

    /// One address both pools contain (the lowest), or `None` if they are disjoint.
    pub fn overlaps(&self, other: &PoolAddresses) -> Option<IpAddr> {
        Family::ALL.into_iter().find_map(|family| {
            let (a, b) = (self.spans(family), other.spans(family));
            let (mut i, mut j) = (0, 0);
            while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
                if x.start <= y.end && y.start <= x.end {
                    return Some(from_int(family, x.start.max(y.start)));
                }
                if x.end < y.end {
                    i += 1;
                } else {
                    j += 1;
                }
            }
            None
        })
    }

    /// The pool's spans as `(first, last)` address pairs, IPv4 first; for logs and status messages.
    pub fn ranges(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        Family::ALL.into_iter().flat_map(move |family| {
            self.spans(family)
                .iter()
                .map(move |s| (from_int(family, s.start), from_int(family, s.end)))
        })
    }
}

/// Lazy iterator over a pool's addresses of one family, in address order. Holds a position, never a list.
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    family: Family,
    spans: &'a [Span],
    /// Index of the span being walked.
    idx: usize,
    /// Next value to yield, if inside `spans[idx]`.
    next: u128,
    avoid_buggy_ips: bool,
}

impl<'a> Candidates<'a> {
    fn new(family: Family, spans: &'a [Span], from: u128, avoid_buggy_ips: bool) -> Self {
        let idx = spans.partition_point(|s| s.end < from);
        let next = spans.get(idx).map_or(0, |s| s.start.max(from));
        Candidates {
            family,
            spans,
            idx,
            next,
            avoid_buggy_ips,
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = IpAddr;

    fn next(&mut self) -> Option<IpAddr> {
        loop {
            let span = *self.spans.get(self.idx)?;
            let n = self.next;
            if n >= span.end {
                // Last address of this span (also the overflow-safe exit for a span ending at u128::MAX).
                self.idx += 1;
                self.next = self.spans.get(self.idx).map_or(0, |s| s.start);
            } else {
                self.next = n + 1;
            }
            if n > span.end {
                continue;
            }
            if self.avoid_buggy_ips && is_buggy_int(self.family, n) {
                continue;
            }
            return Some(from_int(self.family, n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pool(entries: &[&str]) -> PoolAddresses {
        PoolAddresses::parse(entries).unwrap()
    }

    #[test]
    fn parse_table() {
        // (name, entries, v4 count, v6 count)
        let cases: &[(&str, &[&str], u128, u128)] = &[
            ("ipv4 /28", &["192.0.2.0/28"], 16, 0),
            ("ipv4 /32", &["192.0.2.7/32"], 1, 0),
            ("ipv4 /0", &["0.0.0.0/0"], 1 << 32, 0),
            ("ipv6 /120", &["2001:db8::/120"], 0, 256),
            ("ipv6 /64 is counted, not listed", &["2001:db8::/64"], 0, 1 << 64),
            ("ipv6 /0 saturates", &["::/0"], 0, u128::MAX),
            ("range", &["192.0.2.10-192.0.2.20"], 11, 0),
            ("range with spaces", &[" 192.0.2.10 - 192.0.2.20 "], 11, 0),
            ("single-address range", &["192.0.2.10-192.0.2.10"], 1, 0),
            ("ipv6 range", &["2001:db8::1-2001:db8::ff"], 0, 255),
            ("bare address", &["192.0.2.9"], 1, 0),
            ("host bits set means the network", &["192.0.2.5/24"], 256, 0),
            (
                "overlapping entries are merged",
                &["192.0.2.0/28", "192.0.2.8-192.0.2.20"],
                21,
                0,
            ),
            (
                "adjacent entries are merged",
                &["192.0.2.0/29", "192.0.2.8/29"],
                16,
                0,
            ),
            ("mixed families", &["192.0.2.0/30", "2001:db8::/126"], 4, 4),
            ("empty list", &[], 0, 0),
        ];
        for (name, entries, v4, v6) in cases {
            let p = PoolAddresses::parse(entries).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((p.count_v4(), p.count_v6()), (*v4, *v6), "case: {name}");
        }
    }

    #[test]
    fn parse_error_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "bad octet",
                "10.0.0.300/24",
                "address \"10.0.0.300/24\" is not a CIDR or range: invalid IP",
            ),
            (
                "garbage",
                "lan",
                "address \"lan\" is not a CIDR or range: invalid IP",
            ),
            ("empty", "  ", "is not a CIDR or range: empty"),
            (
                "prefix too long v4",
                "192.0.2.0/33",
                "invalid prefix length (0 to 32 for IPv4)",
            ),
            (
                "prefix too long v6",
                "2001:db8::/129",
                "invalid prefix length (0 to 128 for IPv6)",
            ),
            ("prefix not a number", "192.0.2.0/x", "invalid prefix length"),
            (
                "range with bad end",
                "192.0.2.1-192.0.2.x",
                "invalid IP \"192.0.2.x\"",
            ),
            (
                "reversed range",
                "192.0.2.20-192.0.2.10",
                "range \"192.0.2.20-192.0.2.10\" is reversed",
            ),
            (
                "mixed range",
                "192.0.2.1-2001:db8::1",
                "range \"192.0.2.1-2001:db8::1\" mixes IPv4 and IPv6",
            ),
        ];
        for (name, entry, want) in cases {
            let err = PoolAddresses::parse(&["192.0.2.0/24", entry]).expect_err(name);
            assert!(err.to_string().contains(want), "case {name}: got {err}");
            assert_eq!(err.entry(), *entry, "case: {name}");
            assert_eq!(err.reason(), "InvalidAddress");
        }
    }

    #[test]
    fn contains_table() {
        let p = pool(&["192.0.2.0/28", "192.0.2.100-192.0.2.110", "2001:db8::/64"]);
        let cases: &[(&str, &str, bool)] = &[
            ("first of cidr", "192.0.2.0", true),
            ("last of cidr", "192.0.2.15", true),
            ("just after cidr", "192.0.2.16", false),
            ("between entries", "192.0.2.50", false),
            ("range start", "192.0.2.100", true),
            ("range end", "192.0.2.110", true),
            ("after range", "192.0.2.111", false),
            ("other network", "198.51.100.1", false),
            ("v6 inside /64", "2001:db8::ffff:ffff:ffff:ffff", true),
            ("v6 outside /64", "2001:db8:0:1::", false),
            ("v4-mapped v6 is not v4", "::ffff:192.0.2.1", false),
        ];
        for (name, addr, want) in cases {
            assert_eq!(p.contains(ip(addr)), *want, "case: {name}");
        }
    }

    #[test]
    fn avoid_buggy_ips_table() {
        // (name, entries, usable v4 with avoidBuggyIPs)
        let cases: &[(&str, &[&str], u128)] = &[
            ("/24 loses .0 and .255", &["192.0.2.0/24"], 254),
            ("/23 loses two per /24", &["192.0.2.0/23"], 508),
            ("/28 at the start of a /24 loses .0", &["192.0.2.0/28"], 15),
            ("/28 at the end of a /24 loses .255", &["192.0.2.240/28"], 15),
            ("/28 in the middle loses nothing", &["192.0.2.16/28"], 16),
            ("range across a /24 boundary", &["192.0.2.250-192.0.3.5"], 10),
            ("single .255", &["192.0.2.255/32"], 0),
            ("/16", &["10.1.0.0/16"], 65536 - 512),
        ];
        for (name, entries, want) in cases {
            let p = pool(entries);
            assert_eq!(p.usable(Family::V4, true), *want, "case: {name}");
            assert_eq!(p.usable(Family::V4, false), p.count_v4(), "case: {name}");
            // The arithmetic agrees with the iterator.
            assert_eq!(
                p.candidates(Family::V4, true).count() as u128,
                *want,
                "case: {name}"
            );
        }
        let p = pool(&["192.0.2.254-192.0.3.1"]);
        let got: Vec<IpAddr> = p.candidates(Family::V4, true).collect();
        assert_eq!(got, vec![ip("192.0.2.254"), ip("192.0.3.1")]);
        assert!(p.offers(ip("192.0.2.254"), true));
        assert!(!p.offers(ip("192.0.3.0"), true));
        assert!(p.offers(ip("192.0.3.0"), false));
        // IPv6 is never "buggy".
        let p6 = pool(&["2001:db8::/120"]);
        assert_eq!(p6.usable(Family::V6, true), 256);
        assert!(p6.offers(ip("2001:db8::ff"), true));
    }

    #[test]
    fn candidates_are_lazy_and_ordered() {
        let p = pool(&["192.0.2.10-192.0.2.12", "192.0.2.0/31", "2001:db8::/64"]);
        let v4: Vec<IpAddr> = p.candidates(Family::V4, false).collect();
        let want: Vec<IpAddr> = ["192.0.2.0", "192.0.2.1", "192.0.2.10", "192.0.2.11", "192.0.2.12"]
            .iter()
            .map(|s| ip(s))
            .collect();
        assert_eq!(v4, want);
        // From a cursor: inside a span, between spans, past the end.
        let from = |s: &str| p.candidates_from(Family::V4, ip(s), false).collect::<Vec<_>>();
        assert_eq!(from("192.0.2.11"), want[3..].to_vec());
        assert_eq!(from("192.0.2.5"), want[2..].to_vec());
        assert!(from("192.0.2.13").is_empty());
        assert!(
            p.candidates_from(Family::V4, ip("2001:db8::1"), false)
                .next()
                .is_none()
        );
        // A /64 is walked lazily: taking three addresses from near its end is instant.
        let near_end = ip("2001:db8::ffff:ffff:ffff:fffe");
        let v6: Vec<IpAddr> = p.candidates_from(Family::V6, near_end, false).take(3).collect();
        assert_eq!(v6, vec![near_end, ip("2001:db8::ffff:ffff:ffff:ffff")]);
        assert_eq!(
            p.candidates(Family::V6, false).nth(1000),
            Some(ip("2001:db8::3e8"))
        );
        // The very last IPv6 address does not overflow.
        let top = pool(&["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"]);
        assert_eq!(top.candidates(Family::V6, false).count(), 2);
    }

    #[test]
    fn overlaps_table() {
        type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a str], Option<&'a str>);
        let cases: &[Case<'_>] = &[
            ("disjoint", &["192.0.2.0/28"], &["192.0.2.16/28"], None),
            (
                "adjacent is not overlapping",
                &["192.0.2.0-192.0.2.9"],
                &["192.0.2.10-192.0.2.20"],
                None,
            ),
            (
                "cidr contains range",
                &["192.0.2.0/24"],
                &["192.0.2.10-192.0.2.20"],
                Some("192.0.2.10"),
            ),
            (
                "share one address",
                &["192.0.2.0-192.0.2.10"],
                &["192.0.2.10-192.0.2.20"],
                Some("192.0.2.10"),
            ),
            (
                "later span overlaps",
                &["192.0.2.0/30", "192.0.2.100/30"],
                &["192.0.2.102-192.0.2.200"],
                Some("192.0.2.102"),
            ),
            ("different families", &["192.0.2.0/24"], &["2001:db8::/64"], None),
            (
                "v6",
                &["192.0.2.0/30", "2001:db8::/64"],
                &["2001:db8::8000/120"],
                Some("2001:db8::8000"),
            ),
        ];
        for (name, a, b, want) in cases {
            let (a, b) = (pool(a), pool(b));
            let want = want.map(ip);
            assert_eq!(a.overlaps(&b), want, "case: {name}");
            assert_eq!(b.overlaps(&a), want, "case (reversed): {name}");
        }
    }

    #[test]
    fn family_of_and_display() {
        assert_eq!(Family::of(ip("192.0.2.1")), Family::V4);
        assert_eq!(Family::of(ip("2001:db8::1")), Family::V6);
        assert_eq!(Family::V6.to_string(), "IPv6");
        let p = pool(&["192.0.2.0/30", "2001:db8::/127"]);
        let r: Vec<_> = p.ranges().collect();
        assert_eq!(
            r,
            vec![
                (ip("192.0.2.0"), ip("192.0.2.3")),
                (ip("2001:db8::"), ip("2001:db8::1"))
            ]
        );
    }
}
