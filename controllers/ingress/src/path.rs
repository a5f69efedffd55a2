//! Ingress paths: validation of rule paths and the matching rules of the three path types.
//!
//! ```text
//!   (path, pathType) ──> RulePath::compile ──> RulePath { kind: Exact | Prefix, key }
//!                        (rejects what is      Exact:  key = path as written ("/foo/" stays "/foo/")
//!                         unsafe or ambiguous) Prefix: key = path without trailing '/' ("/" stays "/")
//!
//!   request target ──> request_path ("/a/b?x=1" -> "/a/b") ──> prefix_candidates:
//!                      "/a/b", "/a", "/" (longest first: one hash lookup each, no allocation)
//! ```
//!
//! Request paths are matched as received: no percent-decoding and no dot-segment removal, so a
//! request for `/foo%2Fbar` has the single element `foo%2Fbar`. Rule paths, on the other hand, are
//! validated strictly (the 2026 ingress-nginx CVEs came in through `path`): only RFC 3986 path
//! characters, well-formed percent escapes, no empty (`//`) or dot (`.`, `..`) segments, no encoded
//! `/`, `\` or NUL, and for `ImplementationSpecific` (matched as `Prefix`) nothing that looks like a
//! regular expression, because a path written for ingress-nginx's regex mode would otherwise silently
//! match as a literal prefix.

use std::fmt;

/// Longest rule path accepted. Far above anything real; bounds the work a hostile object can cause.
pub const MAX_PATH_LEN: usize = 4096;

/// `pathType` of an Ingress path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathType {
    Exact,
    Prefix,
    /// Matched exactly like [`PathType::Prefix`] (the API leaves it to the implementation).
    ImplementationSpecific,
}

impl PathType {
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        match raw {
            "Exact" => Ok(PathType::Exact),
            "Prefix" => Ok(PathType::Prefix),
            "ImplementationSpecific" => Ok(PathType::ImplementationSpecific),
            other => Err(PathError::UnknownPathType(other.to_owned())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PathType::Exact => "Exact",
            PathType::Prefix => "Prefix",
            PathType::ImplementationSpecific => "ImplementationSpecific",
        }
    }

    /// How paths of this type are matched.
    pub fn match_kind(self) -> MatchKind {
        match self {
            PathType::Exact => MatchKind::Exact,
            PathType::Prefix | PathType::ImplementationSpecific => MatchKind::Prefix,
        }
    }
}

impl fmt::Display for PathType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The two matching behaviours behind the three path types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MatchKind {
    Exact,
    Prefix,
}

/// Why a rule path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("pathType {0:?} is not one of Exact, Prefix, ImplementationSpecific")]
    UnknownPathType(String),
    #[error("pathType {0} needs a path")]
    Missing(PathType),
    #[error("path {0:?} does not start with '/'")]
    NoLeadingSlash(String),
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path {path:?}: character {ch:?} at byte {at} is not allowed in a URL path (RFC 3986)")]
    Character { path: String, ch: char, at: usize },
    #[error("path {0:?}: '%' must be followed by two hexadecimal digits")]
    BadPercent(String),
    #[error("path {0:?}: encoded '/', '\\' or NUL (%2F, %5C, %00) would make path elements ambiguous")]
    EncodedSeparator(String),
    #[error("path {0:?} has an empty segment ('//')")]
    EmptySegment(String),
    #[error("path {0:?} has a '.' or '..' segment")]
    DotSegment(String),
    #[error(
        "path {path:?} looks like a regular expression ({ch:?}); ferrite matches ImplementationSpecific \
         paths as Prefix, literally: write the literal prefix with pathType Prefix"
    )]
    RegexLike { path: String, ch: char },
}

/// A validated rule path, ready for lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulePath {
    /// The path as written in the Ingress (`/` when an ImplementationSpecific path was left empty).
    pub path: String,
    pub path_type: PathType,
    /// The lookup key: the path for Exact, the path without its trailing `/` for Prefix.
    pub key: String,
}

impl RulePath {
    /// Validates `path` for `path_type`. An ImplementationSpecific path may be omitted and then matches
    /// every request (the Ingress API's "when unspecified, all paths are matched").
    pub fn compile(path: Option<&str>, path_type: PathType) -> Result<Self, PathError> {
        let path = match (path, path_type) {
            (Some(p), _) if !p.is_empty() => p,
            (_, PathType::ImplementationSpecific) => "/",
            (_, t) => return Err(PathError::Missing(t)),
        };
        validate(path, path_type)?;
        let key = match path_type.match_kind() {
            MatchKind::Exact => path.to_owned(),
            MatchKind::Prefix => prefix_key(path).to_owned(),
        };
        Ok(RulePath {
            path: path.to_owned(),
            path_type,
            key,
        })
    }

    /// Whether a request path (as received, query already removed) matches this rule path.
    /// The route table does the same through hash lookups; this is the reference definition.
    pub fn matches(&self, request_path: &str) -> bool {
        match self.path_type.match_kind() {
            MatchKind::Exact => request_path == self.key,
            MatchKind::Prefix => prefix_candidates(request_path).any(|c| c == self.key),
        }
    }
}

/// Prefix paths ignore a trailing slash ("/aaa/bbb/" matches "/aaa/bbb"); the root stays "/".
fn prefix_key(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() { "/" } else { trimmed }
}

/// RFC 3986 `pchar` and `/`: unreserved, sub-delims, ':' and '@' (percent escapes checked apart).
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// Characters that make an ImplementationSpecific path look like an ingress-nginx regex. Those outside
/// RFC 3986 (`^ [ ] { } | \ ?`) are already refused by [`is_path_char`].
const REGEX_CHARS: &[u8] = b"*()$+";

fn validate(path: &str, path_type: PathType) -> Result<(), PathError> {
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if !path.starts_with('/') {
        return Err(PathError::NoLeadingSlash(path.to_owned()));
    }
    for (at, ch) in path.char_indices() {
        if ch != '%' && !(ch.is_ascii() && is_path_char(ch as u8)) {
            return Err(PathError::Character {
                path: path.to_owned(),
                ch,
                at,
            });
        }
    }
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            match hex {
                Some(b"2F" | b"2f" | b"5C" | b"5c" | b"00") => {
                    return Err(PathError::EncodedSeparator(path.to_owned()));
                }
                Some(_) => i += 3,
                None => return Err(PathError::BadPercent(path.to_owned())),
            }
        } else {
            i += 1;
        }
    }
    if path.contains("//") {
        return Err(PathError::EmptySegment(path.to_owned()));
    }
    if path.split('/').any(is_dot_segment) {
        return Err(PathError::DotSegment(path.to_owned()));
    }
    if path_type == PathType::ImplementationSpecific
        && let Some(ch) = path.bytes().find(|b| REGEX_CHARS.contains(b))
    {
        return Err(PathError::RegexLike {
            path: path.to_owned(),
            ch: ch as char,
        });
    }
    Ok(())
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, ...): RFC 3986 section 6.2.2.2 says they are equal.
fn is_dot_segment(segment: &str) -> bool {
    let mut dots = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case("%2e") {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// The path of a request target: everything before `?` (query) or `#` (fragment), as received.
pub fn request_path(target: &str) -> &str {
    match target.find(['?', '#']) {
        Some(end) => &target[..end],
        None => target,
    }
}

/// The Prefix keys a request path can match, longest first: the path itself (unless it ends with `/`,
/// which no key does, except the root), each prefix ending before a `/`, and `/`. Element-wise by
/// construction: `/aaa/bbbxyz` yields `/aaa/bbbxyz` and `/`, never `/aaa/bbb`. Nothing for a path that
/// does not start with `/` (`*`, an absolute URI): such targets only reach the default backend.
pub(crate) fn prefix_candidates(path: &str) -> impl Iterator<Item = &str> {
    let valid = path.starts_with('/');
    let whole = (valid && path.len() > 1 && !path.ends_with('/')).then_some(path);
    let bytes = path.as_bytes();
    let mut end = if valid { path.len() } else { 0 };
    let inner = std::iter::from_fn(move || {
        while end > 1 {
            end -= 1;
            if bytes[end] == b'/' && bytes[end - 1] != b'/' {
                return Some(&path[..end]);
            }
        }
        None
    });
    whole.into_iter().chain(inner).chain(valid.then_some("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates() {
        let cases: &[(&str, &[&str])] = &[
            ("/", &["/"]),
            ("/aaa", &["/aaa", "/"]),
            ("/aaa/", &["/aaa", "/"]),
            ("/aaa/bbb", &["/aaa/bbb", "/aaa", "/"]),
            ("/aaa/bbb/", &["/aaa/bbb", "/aaa", "/"]),
            ("/aaa/bbb/ccc", &["/aaa/bbb/ccc", "/aaa/bbb", "/aaa", "/"]),
            ("/aaa//bbb", &["/aaa//bbb", "/aaa", "/"]),
            ("//", &["/"]),
            ("*", &[]),
            ("", &[]),
            ("http://x/y", &[]),
        ];
        for (path, want) in cases {
            let got: Vec<&str> = prefix_candidates(path).collect();
            assert_eq!(&got, want, "candidates of {path:?}");
        }
    }

    #[test]
    fn rule_paths() {
        use PathType::*;
        let ok: &[(&str, PathType, &str)] = &[
            ("/", Prefix, "/"),
            ("/foo", Prefix, "/foo"),
            ("/foo/", Prefix, "/foo"),
            ("/foo/", Exact, "/foo/"),
            ("/foo", ImplementationSpecific, "/foo"),
            ("/a-b_c.d~e/!$&'()*+,;=:@", Prefix, "/a-b_c.d~e/!$&'()*+,;=:@"),
            ("/caf%C3%A9", Exact, "/caf%C3%A9"),
            (
                "/.well-known/acme-challenge",
                Prefix,
                "/.well-known/acme-challenge",
            ),
            ("/v1.2/...", Prefix, "/v1.2/..."),
            ("/index.html", ImplementationSpecific, "/index.html"),
        ];
        for (path, t, key) in ok {
            let compiled = RulePath::compile(Some(path), *t).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(compiled.key, *key, "{path:?}");
        }
        assert_eq!(
            RulePath::compile(None, ImplementationSpecific).map(|p| p.key),
            Ok("/".to_owned())
        );
        assert_eq!(
            RulePath::compile(Some(""), ImplementationSpecific).map(|p| p.key),
            Ok("/".to_owned())
        );

        type Check = fn(&PathError) -> bool;
        let bad: &[(Option<&str>, PathType, Check)] = &[
            (None, Exact, |e| matches!(e, PathError::Missing(Exact))),
            (Some(""), Prefix, |e| matches!(e, PathError::Missing(Prefix))),
            (Some("foo"), Prefix, |e| matches!(e, PathError::NoLeadingSlash(_))),
            (Some("/foo bar"), Prefix, |e| {
                matches!(e, PathError::Character { ch: ' ', at: 4, .. })
            }),
            (Some("/foo\nbar"), Prefix, |e| {
                matches!(e, PathError::Character { ch: '\n', .. })
            }),
            (Some("/a;}{"), Prefix, |e| {
                matches!(e, PathError::Character { ch: '}', .. })
            }),
            (Some("/a\"b"), Exact, |e| {
                matches!(e, PathError::Character { ch: '"', .. })
            }),
            (Some("/a?b"), Exact, |e| {
                matches!(e, PathError::Character { ch: '?', .. })
            }),
            (Some("/a#b"), Exact, |e| {
                matches!(e, PathError::Character { ch: '#', .. })
            }),
            (Some("/a\\b"), Exact, |e| {
                matches!(e, PathError::Character { ch: '\\', .. })
            }),
            (Some("/café"), Exact, |e| {
                matches!(e, PathError::Character { ch: 'é', .. })
            }),
            (Some("/a%"), Prefix, |e| matches!(e, PathError::BadPercent(_))),
            (Some("/a%4"), Prefix, |e| matches!(e, PathError::BadPercent(_))),
            (Some("/a%zz"), Prefix, |e| matches!(e, PathError::BadPercent(_))),
            (Some("/a%2Fb"), Prefix, |e| {
                matches!(e, PathError::EncodedSeparator(_))
            }),
            (Some("/a%5cb"), Prefix, |e| {
                matches!(e, PathError::EncodedSeparator(_))
            }),
            (Some("/a%00"), Prefix, |e| {
                matches!(e, PathError::EncodedSeparator(_))
            }),
            (Some("//"), Prefix, |e| matches!(e, PathError::EmptySegment(_))),
            (Some("/a//b"), Exact, |e| matches!(e, PathError::EmptySegment(_))),
            (Some("/a/../b"), Prefix, |e| matches!(e, PathError::DotSegment(_))),
            (Some("/a/.."), Prefix, |e| matches!(e, PathError::DotSegment(_))),
            (Some("/./a"), Exact, |e| matches!(e, PathError::DotSegment(_))),
            (Some("/a/%2e%2E/b"), Prefix, |e| {
                matches!(e, PathError::DotSegment(_))
            }),
            (Some("/a/.%2e"), Prefix, |e| matches!(e, PathError::DotSegment(_))),
            (Some("/api/(.*)"), ImplementationSpecific, |e| {
                matches!(e, PathError::RegexLike { ch: '(', .. })
            }),
            (Some("/foo.*"), ImplementationSpecific, |e| {
                matches!(e, PathError::RegexLike { ch: '*', .. })
            }),
            (Some("/v[0-9]+"), ImplementationSpecific, |e| {
                matches!(e, PathError::Character { ch: '[', .. })
            }),
            (Some("/end$"), ImplementationSpecific, |e| {
                matches!(e, PathError::RegexLike { ch: '$', .. })
            }),
            (Some("/a+"), ImplementationSpecific, |e| {
                matches!(e, PathError::RegexLike { ch: '+', .. })
            }),
            (Some("/^a"), ImplementationSpecific, |e| {
                matches!(e, PathError::Character { ch: '^', .. })
            }),
            (Some("/a|b"), ImplementationSpecific, |e| {
                matches!(e, PathError::Character { ch: '|', .. })
            }),
        ];
        for (path, t, check) in bad {
            match RulePath::compile(*path, *t) {
                Err(e) => assert!(check(&e), "{path:?} {t}: unexpected error {e:?}"),
                Ok(p) => panic!("{path:?} {t}: accepted as {p:?}"),
            }
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
        assert_eq!(RulePath::compile(Some(&long), Prefix), Err(PathError::TooLong));
        assert!(matches!(
            PathType::parse("prefix"),
            Err(PathError::UnknownPathType(_))
        ));
    }

    #[test]
    fn request_paths() {
        let cases = [
            ("/a/b?x=1", "/a/b"),
            ("/a/b#frag", "/a/b"),
            ("/a/b", "/a/b"),
            ("/?", "/"),
            ("/a%3Fb?c", "/a%3Fb"),
        ];
        for (target, want) in cases {
            assert_eq!(request_path(target), want, "{target:?}");
        }
    }
}
