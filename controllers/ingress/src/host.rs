//! Host names on both sides of the route table.
//!
//! ```text
//!   Ingress rule / tls host ──> HostPattern::parse ──> Exact("a.example.com") | Wildcard("example.com")
//!   (validated: DNS labels,      (lowercase, trailing dot dropped; errors become Warnings)
//!    ASCII only, no IP, no port)
//!
//!   Host header / :authority / SNI ──> RequestHost::parse ──> "a.example.com" in a stack buffer
//!                                      (port stripped, trailing dot dropped, lowercased, no allocation)
//! ```
//!
//! A wildcard covers exactly one label, as the Ingress API says: `*.example.com` matches `a.example.com`,
//! not `example.com` and not `a.b.example.com`.

use std::fmt;
use std::net::Ipv4Addr;

/// The longest DNS name in presentation form without its trailing dot (RFC 1035 section 2.3.4).
pub const MAX_HOST_LEN: usize = 253;
/// The longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A host of an Ingress rule or of a `spec.tls` entry, validated and lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// A precise name, like `foo.example.com`.
    Exact(String),
    /// `*.<suffix>`: holds the suffix (`example.com` for `*.example.com`).
    Wildcard(String),
}

/// Why a rule or tls host was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error(
        "host {0:?} is not ASCII: write internationalized names in their punycode form (xn--...), \
         as the Ingress API requires"
    )]
    NotAscii(String),
    #[error("host {0:?} is longer than {MAX_HOST_LEN} characters")]
    TooLong(String),
    #[error("host {0:?} is an IP address; Ingress hosts are DNS names (leave host empty to match any host)")]
    IpAddress(String),
    #[error("host {0:?} has a port; Ingress hosts have none (the listener decides the port)")]
    Port(String),
    #[error(
        "host {host:?}: label {label:?} is not a DNS label (lowercase letters, digits and '-', \
         1 to 63 characters, not starting or ending with '-')"
    )]
    BadLabel { host: String, label: String },
    #[error(
        "host {0:?}: a wildcard must be '*' alone as the first label, followed by a domain \
         (like *.example.com)"
    )]
    BadWildcard(String),
}

impl HostPattern {
    /// Parses a host as written in an Ingress. Matching is case-insensitive, so uppercase letters are
    /// lowered (the API server already refuses them); one trailing dot is tolerated and dropped.
    pub fn parse(raw: &str) -> Result<Self, HostError> {
        if raw.is_empty() {
            return Err(HostError::Empty);
        }
        if !raw.is_ascii() {
            return Err(HostError::NotAscii(raw.to_owned()));
        }
        let host = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
        if host.is_empty() {
            return Err(HostError::Empty);
        }
        if host.len() > MAX_HOST_LEN {
            return Err(HostError::TooLong(raw.to_owned()));
        }
        if host.contains(':') || host.starts_with('[') {
            // An IPv6 literal or a port: both are refused, say which.
            if host.starts_with('[') || host.matches(':').count() > 1 {
                return Err(HostError::IpAddress(raw.to_owned()));
            }
            return Err(HostError::Port(raw.to_owned()));
        }
        if host.parse::<Ipv4Addr>().is_ok() {
            return Err(HostError::IpAddress(raw.to_owned()));
        }
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, host.as_str()),
        };
        if name.is_empty() || name.contains('*') {
            return Err(HostError::BadWildcard(raw.to_owned()));
        }
        for label in name.split('.') {
            if !is_dns_label(label) {
                return Err(HostError::BadLabel {
                    host: raw.to_owned(),
                    label: label.to_owned(),
                });
            }
        }
        Ok(if wildcard {
            HostPattern::Wildcard(name.to_owned())
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether a normalized request host (see [`RequestHost`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => wildcard_suffix(host).is_some_and(|s| s == suffix.as_str()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(name) => f.write_str(name),
            HostPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// RFC 1123 label, lowercase: what the Ingress API's host validation accepts.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// The part of a normalized host that a one-label wildcard compares: everything after the first label.
/// `None` when the host has a single label or an empty first label.
pub(crate) fn wildcard_suffix(host: &str) -> Option<&str> {
    let (first, rest) = host.split_once('.')?;
    (!first.is_empty() && !rest.is_empty()).then_some(rest)
}

/// Whether a Host header value is `uri-host [ ":" port ]` (RFC 9112 section 3.2, RFC 3986 section
/// 3.2.2): an IP literal in brackets, or a reg-name / IPv4 address of unreserved characters,
/// sub-delims and percent-encodings, then an optional port of digits. Like nginx
/// (`ngx_http_validate_host`), an empty host and `..` are refused too. An HTTP/1 request with an
/// invalid Host gets 400.
pub fn valid_host_header(value: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = value.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &rest[..end];
        // IPv6 (hex, ':', '.' for an embedded IPv4) or IPvFuture (`v1.x`: unreserved, sub-delims).
        if literal.is_empty() || !literal.iter().all(|&b| is_reg_name_byte(b) || b == b':') {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (literal, port),
            _ => return false,
        }
    } else {
        match value.iter().rposition(|&b| b == b':') {
            Some(i) => (&value[..i], &value[i + 1..]),
            None => (value, &[][..]),
        }
    };
    if !port.iter().all(u8::is_ascii_digit) {
        return false;
    }
    if value.first() == Some(&b'[') {
        return true;
    }
    let name = host.strip_suffix(b".").unwrap_or(host);
    if name.is_empty() || name.windows(2).any(|w| w == b"..") {
        return false;
    }
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                if !host
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 3;
            }
            b if is_reg_name_byte(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3986 unreserved and sub-delims characters.
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// A request's host (Host header, `:authority` or SNI) normalized for lookup, held in a stack buffer
/// so that routing a request allocates nothing.
///
/// Normalization: a `:port` suffix is stripped (digits only), one trailing dot is dropped, ASCII letters
/// are lowered. Anything that can never equal a rule host is refused with `None` (empty, longer than
/// 253 characters, an IPv6 literal, non-ASCII, characters other than letters, digits, `-`, `.` and
/// `_`); such requests only match rules without a host.
#[derive(Clone)]
pub struct RequestHost {
    buf: [u8; MAX_HOST_LEN],
    len: usize,
}

impl RequestHost {
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.starts_with('[') {
            return None;
        }
        let host = match raw.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            Some(_) => return None,
            None => raw,
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() || host.len() > MAX_HOST_LEN {
            return None;
        }
        let mut buf = [0u8; MAX_HOST_LEN];
        for (slot, b) in buf.iter_mut().zip(host.bytes()) {
            if !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_') {
                return None;
            }
            *slot = b.to_ascii_lowercase();
        }
        Some(RequestHost { buf, len: host.len() })
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever written, so this is always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl fmt::Debug for RequestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestHost").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_values() {
        for ok in [
            "a.test",
            "A.Test.",
            "a.test:8080",
            "a.test:",
            "a_b.test",
            "10.0.0.1:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::1]",
            "[::ffff:10.0.0.1]:80",
            "xn--bcher-kva.example",
            "a%2Eb",
            "localhost",
        ] {
            assert!(valid_host_header(ok.as_bytes()), "{ok:?} refused");
        }
        for bad in [
            "",
            ":80",
            ".",
            "a..test",
            "a.test/evil",
            "a test",
            "a.test:8o",
            "a.test:80:80",
            "user@a.test",
            "a\\b",
            "[::1",
            "[]",
            "[::1]x",
            "[::1]:x",
            "a%2",
            "a%zz",
            "b\u{fc}cher.example",
        ] {
            assert!(!valid_host_header(bad.as_bytes()), "{bad:?} accepted");
        }
    }

    #[test]
    fn rule_hosts() {
        let exact = |s: &str| Ok(HostPattern::Exact(s.to_owned()));
        let wild = |s: &str| Ok(HostPattern::Wildcard(s.to_owned()));
        let cases: &[(&str, Result<HostPattern, HostError>)] = &[
            ("foo.bar.com", exact("foo.bar.com")),
            ("Foo.Bar.COM", exact("foo.bar.com")),
            ("foo.bar.com.", exact("foo.bar.com")),
            ("localhost", exact("localhost")),
            ("xn--bcher-kva.example", exact("xn--bcher-kva.example")),
            ("*.foo.com", wild("foo.com")),
            ("*.com", wild("com")),
            ("", Err(HostError::Empty)),
            (".", Err(HostError::Empty)),
            (
                "bücher.example",
                Err(HostError::NotAscii("bücher.example".into())),
            ),
            ("10.0.0.1", Err(HostError::IpAddress("10.0.0.1".into()))),
            ("[::1]", Err(HostError::IpAddress("[::1]".into()))),
            ("::1", Err(HostError::IpAddress("::1".into()))),
            ("foo.com:8080", Err(HostError::Port("foo.com:8080".into()))),
            ("*", Err(HostError::BadWildcard("*".into()))),
            ("*.", Err(HostError::BadWildcard("*.".into()))),
            ("foo.*.com", Err(HostError::BadWildcard("foo.*.com".into()))),
            ("*foo.com", Err(HostError::BadWildcard("*foo.com".into()))),
            ("*.*.foo.com", Err(HostError::BadWildcard("*.*.foo.com".into()))),
            (
                "foo..com",
                Err(HostError::BadLabel {
                    host: "foo..com".into(),
                    label: "".into(),
                }),
            ),
            (
                "-foo.com",
                Err(HostError::BadLabel {
                    host: "-foo.com".into(),
                    label: "-foo".into(),
                }),
            ),
            (
                "foo_bar.com",
                Err(HostError::BadLabel {
                    host: "foo_bar.com".into(),
                    label: "foo_bar".into(),
                }),
            ),
            (
                "a b.com",
                Err(HostError::BadLabel {
                    host: "a b.com".into(),
                    label: "a b".into(),
                }),
            ),
            (
                "foo.com/x",
                Err(HostError::BadLabel {
                    host: "foo.com/x".into(),
                    label: "com/x".into(),
                }),
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(&HostPattern::parse(raw), want, "host {raw:?}");
        }
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(matches!(HostPattern::parse(&long), Err(HostError::TooLong(_))));
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(matches!(
            HostPattern::parse(&long_label),
            Err(HostError::BadLabel { .. })
        ));
    }

    #[test]
    fn request_hosts() {
        let cases: &[(&str, Option<&str>)] = &[
            ("foo.bar.com", Some("foo.bar.com")),
            ("FOO.bar.Com", Some("foo.bar.com")),
            ("foo.bar.com:8443", Some("foo.bar.com")),
            ("foo.bar.com.", Some("foo.bar.com")),
            ("foo.bar.com.:80", Some("foo.bar.com")),
            ("foo.bar.com:", Some("foo.bar.com")),
            ("10.0.0.1:80", Some("10.0.0.1")),
            ("", None),
            (":80", None),
            ("[::1]:443", None),
            ("foo.com:http", None),
            ("foo.com:80:80", None),
            ("*.foo.com", None),
            ("bücher.example", None),
            ("foo bar", None),
        ];
        for (raw, want) in cases {
            assert_eq!(
                RequestHost::parse(raw).as_ref().map(RequestHost::as_str),
                *want,
                "host {raw:?}"
            );
        }
        assert!(RequestHost::parse(&"a".repeat(254)).is_none());
        assert_eq!(
            RequestHost::parse(&"a".repeat(253)).map(|h| h.as_str().len()),
            Some(253)
        );
    }

    /// The Kubernetes Ingress documentation's "Hostname wildcards" table.
    #[test]
    fn docs_wildcard_table() {
        let pattern = HostPattern::parse("*.foo.com").expect("valid");
        let cases = [
            ("bar.foo.com", true),      // Matches based on shared suffix
            ("baz.bar.foo.com", false), // No match, wildcard only covers a single DNS label
            ("foo.com", false),         // No match, wildcard only covers a single DNS label
        ];
        for (host, want) in cases {
            assert_eq!(pattern.matches(host), want, "*.foo.com vs {host}");
        }
    }
}
