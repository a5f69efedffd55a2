//! Ingress paths: validation of rule paths and the matching rules of the three path types.
//!
//! ```text
//!   (path, pathType) ──> RulePath::compile ──> RulePath { kind: Exact | Prefix, key }
//!                        (rejects what is      Exact:  key = path as written ("/foo/" stays "/foo/")
//!                         unsafe or ambiguous) Prefix: key = path without trailing '/' ("/" stays "/")
//!
//!   request target ──> request_path ("/a/b?x=1" -> "/a/b") ──> normalize_path ──> prefix_candidates:
//!                      "/a/./c//b" -> "/a/c/b" (as nginx's $uri)     "/a/c/b", "/a/c", "/a", "/"
//!                      (borrowed unless it changes)                  (longest first: one hash lookup each)
//! ```
//!
//! Request paths are normalized for matching only, like nginx's `$uri` (which ingress-nginx matches
//! its locations against): escapes of unreserved characters decoded (`%2e` is `.`, `%41` is `A`), the
//! hex digits of the other escapes upper-cased (`%c3%a9` is `%C3%A9`), `.` and `..` segments resolved
//! (never above the root) and repeated slashes merged. `%2F` stays an escape inside its element, so
//! `/foo%2Fbar` has the single element `foo%2Fbar`. The proxy forwards the request target as received.
//! Rule keys get the same escape normalization (rule paths cannot hold dot segments or `//`). Rule
//! paths, on the other hand, are
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
    /// Matched exactly like [`PathType::Prefix`] (the API leaves it to the implementation). ingress-nginx
    /// differs: a plain string prefix (`/foo` matches `/foobar`), regex with its annotations; see
    /// docs/ingress.md, Paths.
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
        let normalized = normalize_path(path);
        let key = match path_type.match_kind() {
            MatchKind::Exact => normalized.into_owned(),
            MatchKind::Prefix => prefix_key(&normalized).to_owned(),
        };
        Ok(RulePath {
            path: path.to_owned(),
            path_type,
            key,
        })
    }

    /// Whether a request path (as received, query already removed; normalized here with
    /// [`normalize_path`]) matches this rule path. The route table does the same through hash lookups;
    /// this is the reference definition.
    pub fn matches(&self, request_path: &str) -> bool {
        let path = normalize_path(request_path);
        match self.path_type.match_kind() {
            MatchKind::Exact => *path == self.key,
            MatchKind::Prefix => prefix_candidates(&path).any(|c| c == self.key),
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

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether [`normalize_path`] would change `path`: an escape, an empty, `.` or `..` segment.
fn needs_normalizing(path: &str) -> bool {
    path.starts_with('/')
        && (path.contains('%') || path.contains("//") || path.split('/').any(|s| s == "." || s == ".."))
}

/// The path as nginx's `$uri` sees it, for matching (see the module docs): unreserved escapes
/// decoded, other escapes' hex upper-cased, `.`/`..` resolved (clamped at the root), `//` merged; a
/// trailing `/` (also one left by a final `.` or `..`) is kept. Borrowed when nothing changes, which is
/// every ordinary path; targets that do not start with `/` (`*`) are returned as they are.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    if !needs_normalizing(path) {
        return Cow::Borrowed(path);
    }
    // 1. Escapes. A '%' not followed by two hex digits stays as it is.
    let bytes = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            )
        {
            let v = h * 16 + l;
            if is_unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push('%');
                decoded.push(bytes[i + 1].to_ascii_uppercase() as char);
                decoded.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        // Copy the run up to the next '%' at once (keeps multi-byte characters whole).
        let end = path[i + 1..].find('%').map_or(path.len(), |e| i + 1 + e);
        decoded.push_str(&path[i..end]);
        i = end;
    }
    // 2. Segments: merge empty ones, resolve dot segments.
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    let parts: Vec<&str> = decoded[1..].split('/').collect();
    let last = parts.len() - 1;
    for (n, seg) in parts.into_iter().enumerate() {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
        trailing = n == last && matches!(seg, "" | "." | "..");
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Cow::Owned(out)
}

/// The Prefix keys a (normalized) request path can match, longest first: the path itself (unless it
/// ends with `/`, which no key does, except the root), each prefix ending before a `/`, and `/`. Element-wise by
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
    fn normalized_paths() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/public/../secret", "/secret"),
            ("/public/%2e%2e/secret", "/secret"),
            ("/public/%2E./secret", "/secret"),
            ("/public/.%2e", "/"),
            ("/a/./b", "/a/b"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("//a///b//", "/a/b/"),
            ("//", "/"),
            ("/%61%70%69", "/api"),
            ("/%7Euser", "/~user"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/a/%2F/../b", "/a/b"),
            ("/100%", "/100%"),
            ("/%zz/%4", "/%zz/%4"),
            ("/é/./x", "/é/x"),
            ("/...", "/..."),
            ("/.well-known/x", "/.well-known/x"),
            ("*", "*"),
            ("", ""),
        ];
        for (path, want) in cases {
            assert_eq!(normalize_path(path), want, "{path:?}");
        }
        assert!(matches!(normalize_path("/a/b/c"), std::borrow::Cow::Borrowed(_)));
        let p = RulePath::compile(Some("/public"), PathType::Prefix).expect("path");
        assert!(p.matches("/public/%2e/x"));
        assert!(!p.matches("/public/../secret"));
        assert!(p.matches("/x/../public"));
        let p = RulePath::compile(Some("/caf%c3%A9/%41"), PathType::Exact).expect("path");
        assert_eq!(p.key, "/caf%C3%A9/A");
        assert!(p.matches("/caf%C3%a9/A"));
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
