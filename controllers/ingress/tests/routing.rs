//! Table-driven tests of the route table through its public API: the Kubernetes documentation's path
//! and host examples, merging and conflicts across Ingresses, default backends, TLS selection, the class
//! decision and invalid inputs.

use ferrite_ingress::{
    CONTROLLER_NAME, ClassDecision, ClassSource, Compiled, Match, NotServed, PathType, RouteTable, RulePath,
    SecretRef, ServicePort, SharedRouteTable, WarningKind, decide_class,
};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_json::{Value, json};

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-02-01T00:00:00Z";
const T2: &str = "2026-03-01T00:00:00Z";

fn ingress(namespace: &str, name: &str, created: Option<&str>, spec: Value) -> Ingress {
    let mut metadata = json!({"namespace": namespace, "name": name});
    if let Some(created) = created {
        metadata["creationTimestamp"] = json!(created);
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": metadata, "spec": spec,
    }))
    .expect("valid Ingress")
}

fn svc(name: &str) -> Value {
    json!({"service": {"name": name, "port": {"number": 80}}})
}

fn path(p: &str, path_type: &str, service: &str) -> Value {
    json!({"path": p, "pathType": path_type, "backend": svc(service)})
}

fn rule(host: Option<&str>, paths: Vec<Value>) -> Value {
    let mut r = json!({"http": {"paths": paths}});
    if let Some(h) = host {
        r["host"] = json!(h);
    }
    r
}

fn compile(ingresses: &[Ingress]) -> Compiled {
    RouteTable::compile(ingresses)
}

/// The Service a request reaches: `Some("svc")` for a rule, `Some("default:svc")` for the default
/// backend, `None` for the built-in 404.
fn reach(table: &RouteTable, host: &str, target: &str) -> Option<String> {
    match table.route(host, target) {
        Match::Route(r) => Some(r.backend.service.clone()),
        Match::Default(d) => Some(format!("default:{}", d.backend.service)),
        Match::NotFound => None,
    }
}

/// Every row of the "Examples" table of the Kubernetes Ingress documentation
/// (concepts/services-networking/ingress, "Path types" > "Examples"), copied with its expected result.
/// Each rule path routes to the Service `p<index>`; "No" rows must reach the default backend.
#[test]
fn docs_path_examples_table() {
    struct Row {
        kind: &'static str,
        paths: &'static [(&'static str, &'static str)],
        requests: &'static [&'static str],
        /// Index of the matching path, `None` for "No".
        want: Option<usize>,
        doc: &'static str,
    }
    const P: &str = "Prefix";
    const E: &str = "Exact";
    let rows = [
        Row {
            kind: "Prefix",
            paths: &[("/", P)],
            requests: &["/", "/foo", "/foo/bar/", "/aaa/bbb?x=1"],
            want: Some(0),
            doc: "Yes (all paths)",
        },
        Row {
            kind: "Exact",
            paths: &[("/foo", E)],
            requests: &["/foo"],
            want: Some(0),
            doc: "Yes",
        },
        Row {
            kind: "Exact",
            paths: &[("/foo", E)],
            requests: &["/bar"],
            want: None,
            doc: "No",
        },
        Row {
            kind: "Exact",
            paths: &[("/foo", E)],
            requests: &["/foo/"],
            want: None,
            doc: "No",
        },
        Row {
            kind: "Exact",
            paths: &[("/foo/", E)],
            requests: &["/foo"],
            want: None,
            doc: "No",
        },
        Row {
            kind: "Prefix",
            paths: &[("/foo", P)],
            requests: &["/foo", "/foo/"],
            want: Some(0),
            doc: "Yes",
        },
        Row {
            kind: "Prefix",
            paths: &[("/foo/", P)],
            requests: &["/foo", "/foo/"],
            want: Some(0),
            doc: "Yes",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bb", P)],
            requests: &["/aaa/bbb"],
            want: None,
            doc: "No",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bbb", P)],
            requests: &["/aaa/bbb"],
            want: Some(0),
            doc: "Yes",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bbb/", P)],
            requests: &["/aaa/bbb"],
            want: Some(0),
            doc: "Yes, ignores trailing slash",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bbb", P)],
            requests: &["/aaa/bbb/"],
            want: Some(0),
            doc: "Yes, matches trailing slash",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bbb", P)],
            requests: &["/aaa/bbb/ccc"],
            want: Some(0),
            doc: "Yes, matches subpath",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa/bbb", P)],
            requests: &["/aaa/bbbxyz"],
            want: None,
            doc: "No, does not match string prefix",
        },
        Row {
            kind: "Prefix",
            paths: &[("/", P), ("/aaa", P)],
            requests: &["/aaa/ccc"],
            want: Some(1),
            doc: "Yes, matches /aaa prefix",
        },
        Row {
            kind: "Prefix",
            paths: &[("/", P), ("/aaa", P), ("/aaa/bbb", P)],
            requests: &["/aaa/bbb"],
            want: Some(2),
            doc: "Yes, matches /aaa/bbb prefix",
        },
        Row {
            kind: "Prefix",
            paths: &[("/", P), ("/aaa", P), ("/aaa/bbb", P)],
            requests: &["/ccc"],
            want: Some(0),
            doc: "Yes, matches / prefix",
        },
        Row {
            kind: "Prefix",
            paths: &[("/aaa", P)],
            requests: &["/ccc"],
            want: None,
            doc: "No, uses default backend",
        },
        Row {
            kind: "Mixed",
            paths: &[("/foo", P), ("/foo", E)],
            requests: &["/foo"],
            want: Some(1),
            doc: "Yes, prefers Exact",
        },
    ];
    // ImplementationSpecific is Prefix here: every row must hold with it too.
    for implementation_specific in [false, true] {
        for row in &rows {
            let paths = row
                .paths
                .iter()
                .enumerate()
                .map(|(i, (p, t))| {
                    let t = if implementation_specific && *t == P {
                        "ImplementationSpecific"
                    } else {
                        t
                    };
                    path(p, t, &format!("p{i}"))
                })
                .collect();
            let ing = ingress(
                "default",
                "docs",
                Some(T0),
                json!({"defaultBackend": svc("fallback"), "rules": [rule(Some("example.com"), paths)]}),
            );
            let compiled = compile(&[ing]);
            assert_eq!(compiled.warnings, vec![], "{} {:?}", row.kind, row.paths);
            for request in row.requests {
                let want = match row.want {
                    Some(i) => format!("p{i}"),
                    None => "default:fallback".to_owned(),
                };
                assert_eq!(
                    reach(&compiled.table, "example.com", request).as_deref(),
                    Some(want.as_str()),
                    "{} {:?} request {request:?}: the docs say {:?} (ImplementationSpecific: {implementation_specific})",
                    row.kind,
                    row.paths,
                    row.doc,
                );
                // The reference definition on a single rule path agrees with the table's lookup.
                if let [(p, t)] = row.paths {
                    let t = PathType::parse(t).expect("path type");
                    let rule_path = RulePath::compile(Some(p), t).expect("valid path");
                    let target = request.split('?').next().unwrap_or(request);
                    assert_eq!(
                        rule_path.matches(target),
                        row.want.is_some(),
                        "{p} {t} vs {request}"
                    );
                }
            }
        }
    }
}

/// The "Hostname wildcards" table of the documentation, through the whole table, plus exact-beats-
/// wildcard and the request host normalization (case, port, trailing dot).
#[test]
fn hosts() {
    let ing = ingress(
        "default",
        "hosts",
        Some(T0),
        json!({"defaultBackend": svc("fallback"), "rules": [
            rule(Some("*.foo.com"), vec![path("/", "Prefix", "wild-foo")]),
            rule(Some("*.example.com"), vec![path("/", "Prefix", "wild")]),
            rule(Some("a.example.com"), vec![path("/api", "Prefix", "exact")]),
        ]}),
    );
    // Hosts no rule names get the catch-all of an Ingress without rules; the named ones the
    // defaultBackend of their Ingress.
    let catch_all = ingress(
        "default",
        "catch-all",
        Some(T1),
        json!({"defaultBackend": svc("catch-all")}),
    );
    let compiled = compile(&[ing, catch_all]);
    assert_eq!(compiled.warnings, vec![]);
    let t = &compiled.table;
    let cases: &[(&str, &str, Option<&str>, &str)] = &[
        (
            "bar.foo.com",
            "/",
            Some("wild-foo"),
            "docs: matches based on shared suffix",
        ),
        (
            "baz.bar.foo.com",
            "/",
            Some("default:catch-all"),
            "docs: wildcard only covers a single DNS label",
        ),
        (
            "foo.com",
            "/",
            Some("default:catch-all"),
            "docs: wildcard only covers a single DNS label",
        ),
        ("a.example.com", "/api/v1", Some("exact"), "exact beats wildcard"),
        ("b.example.com", "/api/v1", Some("wild"), "wildcard"),
        ("A.Example.COM", "/api", Some("exact"), "case-insensitive"),
        ("a.example.com:8443", "/api", Some("exact"), "port stripped"),
        ("a.example.com.", "/api", Some("exact"), "trailing dot"),
        ("B.EXAMPLE.COM.:80", "/", Some("wild"), "all of it on a wildcard"),
        (
            "a.example.com",
            "/other",
            Some("default:fallback"),
            "no fall-through to *.example.com",
        ),
        (
            "example.com",
            "/",
            Some("default:catch-all"),
            "the wildcard's own suffix",
        ),
        ("other.org", "/", Some("default:catch-all"), "unknown host"),
        (
            ".example.com",
            "/",
            Some("default:catch-all"),
            "empty first label",
        ),
        ("b.example.com", "/", Some("wild"), "wildcard"),
    ];
    for (host, target, want, why) in cases {
        assert_eq!(reach(t, host, target).as_deref(), *want, "{host} {target}: {why}");
    }
}

#[test]
fn rules_without_host_match_any_host() {
    let ing = ingress(
        "default",
        "any",
        Some(T0),
        json!({"rules": [
            rule(Some("a.example.com"), vec![path("/", "Prefix", "a")]),
            rule(None, vec![path("/", "Prefix", "any")]),
            rule(Some("claimed.example.com"), vec![]),
        ]}),
    );
    let bare = ingress(
        "default",
        "bare",
        Some(T1),
        json!({"rules": [{"host": "bare.example.com"}]}),
    );
    let compiled = compile(&[ing, bare]);
    assert_eq!(compiled.warnings, vec![]);
    let t = &compiled.table;
    let cases: &[(&str, Option<&str>)] = &[
        ("a.example.com", Some("a")),
        ("b.example.com", Some("any")),
        ("", Some("any")),
        ("[::1]:80", Some("any")),
        ("10.0.0.1", Some("any")),
        ("bücher.example", Some("any")),
        // A rule with a host and no paths claims its host: no rule there, no default backend.
        ("claimed.example.com", None),
        ("bare.example.com", None),
    ];
    for (host, want) in cases {
        assert_eq!(reach(t, host, "/x").as_deref(), *want, "host {host:?}");
    }
}

#[test]
fn path_precedence_and_normalized_paths() {
    let ing = ingress(
        "default",
        "paths",
        Some(T0),
        json!({"rules": [rule(Some("x.test"), vec![
            path("/foo/", "Prefix", "prefix-foo"),
            path("/foo", "Exact", "exact-foo"),
            path("/foo/bar", "Prefix", "prefix-foo-bar"),
            path("/caf%C3%A9", "Prefix", "cafe"),
            path("/Case", "Exact", "case"),
        ])]}),
    );
    let compiled = compile(&[ing]);
    assert_eq!(compiled.warnings, vec![]);
    let t = &compiled.table;
    let cases: &[(&str, Option<&str>, &str)] = &[
        (
            "/foo",
            Some("exact-foo"),
            "Exact beats Prefix of equal length (Prefix /foo/ is /foo)",
        ),
        ("/foo?q=1", Some("exact-foo"), "query ignored"),
        ("/foo#f", Some("exact-foo"), "fragment ignored"),
        ("/foo/", Some("prefix-foo"), "Exact /foo does not match /foo/"),
        ("/foo/bar/baz", Some("prefix-foo-bar"), "longest match wins"),
        ("/foo/barbaz", Some("prefix-foo"), "element-wise"),
        ("/foo%2Fbar", None, "percent-encoded '/' is not a separator"),
        (
            "/foo/bar%2Fbaz",
            Some("prefix-foo"),
            "the element is bar%2Fbaz, not bar",
        ),
        (
            "/foo//bar",
            Some("prefix-foo-bar"),
            "slashes merged (nginx's $uri)",
        ),
        ("/foo/./bar", Some("prefix-foo-bar"), "'.' resolved"),
        ("/foo/x/../bar/1", Some("prefix-foo-bar"), "'..' resolved"),
        ("/foo/bar/..", Some("prefix-foo"), "'..' at the end leaves /foo/"),
        ("/x/../foo", Some("exact-foo"), "Exact on the normalized path"),
        ("/%66oo", Some("exact-foo"), "unreserved escapes decoded"),
        ("/foo%2e/bar", None, "a decoded '.' inside an element is literal"),
        (
            "/caf%C3%A9/menu",
            Some("cafe"),
            "percent-encoded rule path, same bytes",
        ),
        (
            "/caf%c3%a9",
            Some("cafe"),
            "escape hex digits are case-insensitive",
        ),
        ("/café", None, "other escapes are not decoded"),
        ("/Case", Some("case"), "case-sensitive"),
        ("/case", None, "case-sensitive"),
        ("*", None, "asterisk-form target"),
        ("", None, "empty target"),
    ];
    for (target, want, why) in cases {
        assert_eq!(reach(t, "x.test", target).as_deref(), *want, "{target:?}: {why}");
    }
    // The metrics labels: which Ingress, rule and path matched.
    match t.route("x.test", "/foo/bar/x") {
        Match::Route(r) => {
            assert_eq!(r.ingress.to_string(), "default/paths");
            assert_eq!((r.rule, r.path_index, r.path.path.as_str()), (0, 2, "/foo/bar"));
            assert_eq!(
                r.host.as_ref().map(ToString::to_string).as_deref(),
                Some("x.test")
            );
        }
        other => panic!("expected a route, got {other:?}"),
    }
}

/// The review's example: `/public` -> static, `/` -> app. A dot segment (also percent-encoded) cannot
/// reach the static backend's prefix for a path outside it, nor hide a path from its own rule.
#[test]
fn dot_segments_cannot_escape_a_prefix() {
    let ing = ingress(
        "default",
        "site",
        Some(T0),
        json!({"rules": [rule(Some("x.test"), vec![
            path("/public", "Prefix", "static"),
            path("/", "Prefix", "app"),
            path("/admin", "Exact", "admin"),
        ])]}),
    );
    let compiled = compile(&[ing]);
    let t = &compiled.table;
    let cases: &[(&str, &str)] = &[
        ("/public/../secret", "app"),
        ("/public/%2e%2e/secret", "app"),
        ("/public/%2E%2e/secret?x=/public", "app"),
        ("/public//../secret", "app"),
        ("/public/./css/a.css", "static"),
        ("//public///css", "static"),
        ("/x/../public/a", "static"),
        ("/%70ublic/a", "static"),
        ("/admin/.", "app"),
        ("/./admin", "admin"),
        ("/admin/x/..", "app"),
        ("/../../admin", "admin"),
    ];
    for (target, want) in cases {
        assert_eq!(reach(t, "x.test", target).as_deref(), Some(*want), "{target:?}");
    }
}

#[test]
fn merging_and_conflicts() {
    let older = ingress(
        "team-a",
        "shop",
        Some(T0),
        json!({"rules": [rule(Some("shop.example.com"), vec![
            path("/a", "Prefix", "a-old"),
            path("/x", "Exact", "x-exact"),
        ])]}),
    );
    let newer = ingress(
        "team-b",
        "shop",
        Some(T1),
        json!({"rules": [rule(Some("SHOP.example.com"), vec![
            path("/b", "Prefix", "b-new"),
            path("/a/", "ImplementationSpecific", "a-new"),
            path("/x", "Prefix", "x-prefix"),
        ])]}),
    );
    // Given newest first, the result is the same: age decides, not input order.
    let compiled = compile(&[newer.clone(), older.clone()]);
    let t = &compiled.table;
    let cases: &[(&str, Option<&str>)] = &[
        ("/a/1", Some("a-old")),
        ("/b/1", Some("b-new")),
        ("/x", Some("x-exact")),
        ("/x/1", Some("x-prefix")),
    ];
    for (target, want) in cases {
        assert_eq!(reach(t, "shop.example.com", target).as_deref(), *want, "{target}");
    }
    assert_eq!(compiled.warnings.len(), 1, "{:?}", compiled.warnings);
    let w = &compiled.warnings[0];
    assert_eq!(w.ingress.to_string(), "team-b/shop");
    assert_eq!(w.kind, WarningKind::PathConflict);
    assert_eq!(w.kind.reason(), "PathConflict");
    assert!(
        w.message.contains("team-a/shop") && w.message.contains("rules[0].http.paths[1]"),
        "{}",
        w.message
    );
    let served: Vec<String> = compiled.served.iter().map(ToString::to_string).collect();
    assert_eq!(served, ["team-a/shop", "team-b/shop"]);

    // Same creationTimestamp: namespace/name decides. No timestamp: the newest.
    let first = ingress(
        "ns1",
        "z",
        Some(T2),
        json!({"rules": [rule(None, vec![path("/", "Prefix", "ns1")])]}),
    );
    let second = ingress(
        "ns2",
        "a",
        Some(T2),
        json!({"rules": [rule(None, vec![path("/", "Prefix", "ns2")])]}),
    );
    let unsaved = ingress(
        "aaa",
        "a",
        None,
        json!({"rules": [rule(None, vec![path("/", "Prefix", "unsaved")])]}),
    );
    let compiled = compile(&[unsaved, second, first]);
    assert_eq!(reach(&compiled.table, "any", "/").as_deref(), Some("ns1"));
    let losers: Vec<String> = compiled.warnings.iter().map(|w| w.ingress.to_string()).collect();
    assert_eq!(losers, ["ns2/a", "aaa/a"]);

    // A duplicate inside one Ingress: the first path wins.
    let dup = ingress(
        "default",
        "dup",
        Some(T0),
        json!({"rules": [
            rule(Some("d.test"), vec![path("/p", "Prefix", "first")]),
            rule(Some("d.test"), vec![path("/p", "Prefix", "second")]),
        ]}),
    );
    let compiled = compile(&[dup]);
    assert_eq!(reach(&compiled.table, "d.test", "/p").as_deref(), Some("first"));
    assert_eq!(compiled.warnings.len(), 1);
    assert!(
        compiled.warnings[0].message.contains("of this Ingress"),
        "{}",
        compiled.warnings[0].message
    );
}

#[test]
fn default_backend() {
    let empty = compile(&[]);
    assert_eq!(empty.table.route("a.test", "/"), Match::NotFound);

    let older = ingress(
        "default",
        "old",
        Some(T0),
        json!({"defaultBackend": svc("old-default")}),
    );
    let younger_catch_all = ingress(
        "default",
        "young",
        Some(T1),
        json!({"defaultBackend": svc("young-default")}),
    );
    let with_rules = ingress(
        "default",
        "new",
        Some(T1),
        json!({"defaultBackend": {"service": {"name": "new-default", "port": {"name": "http"}}},
               "rules": [rule(Some("n.test"), vec![path("/api", "Prefix", "n")])]}),
    );
    let resource = ingress(
        "default",
        "res",
        Some(T2),
        json!({"defaultBackend": {"resource": {"apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "static"}}}),
    );
    let compiled = compile(&[resource, with_rules, younger_catch_all, older]);
    let t = &compiled.table;
    // The catch-all (oldest Ingress without rules) serves hosts no rule names.
    assert_eq!(
        reach(t, "other.test", "/").as_deref(),
        Some("default:old-default")
    );
    // An Ingress with rules: its defaultBackend is the fallback of its own host only.
    assert_eq!(reach(t, "n.test", "/api/x").as_deref(), Some("n"));
    assert_eq!(
        reach(t, "n.test", "/other").as_deref(),
        Some("default:new-default")
    );
    match t.route("other.test", "/") {
        Match::Default(d) => {
            assert_eq!(d.ingress.to_string(), "default/old");
            assert_eq!(d.backend.port, ServicePort::Number(80));
            assert_eq!(d.backend.to_string(), "default/old-default:80");
        }
        other => panic!("expected the default backend, got {other:?}"),
    }
    let all: Vec<String> = t.default_backends().map(|d| d.backend.service.clone()).collect();
    assert_eq!(all, ["old-default", "new-default"]);
    let kinds: Vec<(String, WarningKind)> = compiled
        .warnings
        .iter()
        .map(|w| (w.ingress.to_string(), w.kind))
        .collect();
    assert_eq!(
        kinds,
        [
            ("default/young".to_owned(), WarningKind::DefaultBackendConflict),
            ("default/res".to_owned(), WarningKind::InvalidBackend),
        ]
    );
    assert!(
        compiled.warnings[1].message.contains("resource backends"),
        "{}",
        compiled.warnings[1].message
    );
}

/// ingress-nginx's createServers: an Ingress with rules AND a defaultBackend uses it for the hosts it
/// is the first to route; the catch-all is only set by an Ingress without rules; everything else is
/// the built-in 404.
#[test]
fn default_backend_is_per_host_like_ingress_nginx() {
    // The review's example: team-a (older) defaultBackend a-fallback + rule a.example.com; team-b rule
    // b.example.com /api.
    let team_a = ingress(
        "team-a",
        "a",
        Some(T0),
        json!({"defaultBackend": svc("a-fallback"),
               "rules": [rule(Some("a.example.com"), vec![path("/", "Exact", "a")])]}),
    );
    let team_b = ingress(
        "team-b",
        "b",
        Some(T1),
        json!({"rules": [rule(Some("b.example.com"), vec![path("/api", "Prefix", "b")])]}),
    );
    let compiled = compile(&[team_b.clone(), team_a.clone()]);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    let t = &compiled.table;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("a.example.com", "/", Some("a")),
        ("a.example.com", "/x", Some("default:a-fallback")),
        ("A.Example.COM.:80", "/x", Some("default:a-fallback")),
        ("b.example.com", "/api/v1", Some("b")),
        ("b.example.com", "/other", None),
        ("unknown.org", "/", None),
        ("", "/", None),
    ];
    for (host, target, want) in cases {
        assert_eq!(reach(t, host, target).as_deref(), *want, "{host}{target}");
    }
    assert_eq!(t.default_backend(), None);
    assert!(matches!(t.host_fallback("a.example.com"), Some(Some(d)) if d.backend.service == "a-fallback"));
    assert_eq!(t.host_fallback("b.example.com"), Some(None));
    assert_eq!(t.host_fallback("unknown.org"), None);

    // The oldest Ingress with a rule for a host decides its fallback; a younger one's defaultBackend
    // is not used for that host (a warning says so), but is for its own other hosts. Wildcard hosts
    // alike; a rule with a host and no http is all fallback.
    let shared = ingress(
        "team-c",
        "c",
        Some(T2),
        json!({"defaultBackend": svc("c-fallback"),
               "rules": [rule(Some("a.example.com"), vec![path("/c", "Prefix", "c")]),
                         rule(Some("*.c.example.com"), vec![path("/c", "Prefix", "c")]),
                         {"host": "only-default.example.com"}]}),
    );
    let compiled = compile(&[shared, team_b, team_a]);
    let t = &compiled.table;
    let cases: &[(&str, &str, Option<&str>)] = &[
        ("a.example.com", "/c/1", Some("c")),
        ("a.example.com", "/x", Some("default:a-fallback")),
        ("x.c.example.com", "/c", Some("c")),
        ("x.c.example.com", "/x", Some("default:c-fallback")),
        (
            "only-default.example.com",
            "/anything",
            Some("default:c-fallback"),
        ),
        ("y.x.c.example.com", "/x", None),
    ];
    for (host, target, want) in cases {
        assert_eq!(reach(t, host, target).as_deref(), *want, "{host}{target}");
    }
    let w: Vec<(String, WarningKind, String)> = compiled
        .warnings
        .iter()
        .map(|w| (w.ingress.to_string(), w.kind, w.message.clone()))
        .collect();
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].0, "team-c/c");
    assert_eq!(w[0].1, WarningKind::DefaultBackendConflict);
    assert!(
        w[0].2.contains("host a.example.com") && w[0].2.contains("team-a/a"),
        "{}",
        w[0].2
    );
}

/// Rules without a host are nginx's `_` server: they serve every host no rule names, and what they do
/// not match goes to the catch-all of an Ingress without rules, never to the defaultBackend of the
/// Ingress holding them.
#[test]
fn default_backend_and_rules_without_host() {
    let hostless = ingress(
        "default",
        "hostless",
        Some(T0),
        json!({"defaultBackend": svc("hostless-fallback"),
               "rules": [rule(None, vec![path("/any", "Prefix", "any")])]}),
    );
    let named = ingress(
        "default",
        "named",
        Some(T0),
        json!({"rules": [rule(Some("named.test"), vec![path("/named", "Prefix", "named")])]}),
    );
    let compiled = compile(&[hostless.clone(), named.clone()]);
    let t = &compiled.table;
    assert_eq!(reach(t, "other.test", "/any/1").as_deref(), Some("any"));
    assert_eq!(reach(t, "other.test", "/x"), None);
    // A host with rules does not use the rules without a host.
    assert_eq!(reach(t, "named.test", "/any"), None);
    let w: Vec<(String, WarningKind)> = compiled
        .warnings
        .iter()
        .map(|w| (w.ingress.to_string(), w.kind))
        .collect();
    assert_eq!(
        w,
        [("default/hostless".to_owned(), WarningKind::DefaultBackendConflict)]
    );
    assert!(compiled.warnings[0].message.contains("rules without a host"));

    let catch_all = ingress(
        "default",
        "catch-all",
        Some(T1),
        json!({"defaultBackend": svc("catch-all")}),
    );
    let compiled = compile(&[hostless, named, catch_all]);
    let t = &compiled.table;
    assert_eq!(reach(t, "other.test", "/any").as_deref(), Some("any"));
    assert_eq!(reach(t, "other.test", "/x").as_deref(), Some("default:catch-all"));
    assert_eq!(reach(t, "", "/x").as_deref(), Some("default:catch-all"));
    assert_eq!(reach(t, "named.test", "/x"), None);
}

#[test]
fn tls_selection() {
    let a = ingress(
        "web",
        "a",
        Some(T0),
        json!({
            "tls": [
                // Exact beats wildcard whatever the entry order.
                {"hosts": ["*.example.com"], "secretName": "wild-tls"},
                {"hosts": ["A.Example.COM"], "secretName": "a-tls"},
                {"hosts": ["plain.example.org"]},
            ],
            "rules": [
                rule(Some("a.example.com"), vec![path("/", "Prefix", "a")]),
                rule(Some("c.example.com"), vec![path("/", "Prefix", "c")]),
                rule(Some("plain.example.org"), vec![path("/", "Prefix", "plain")]),
            ],
        }),
    );
    let b = ingress(
        "other",
        "b",
        Some(T1),
        json!({
            "tls": [
                {"hosts": ["b.example.net", "c.example.com"], "secretName": "b-tls"},
                {"secretName": "rules-tls"},
            ],
            "rules": [
                rule(Some("b.example.net"), vec![path("/", "Prefix", "b")]),
                rule(Some("c.example.com"), vec![path("/b", "Prefix", "b")]),
                rule(Some("r.example.net"), vec![path("/", "Prefix", "r")]),
                rule(Some("*.w.example.net"), vec![path("/", "Prefix", "w")]),
            ],
        }),
    );
    let compiled = compile(&[b, a]);
    let t = &compiled.table;
    let secret = |ns: &str, name: &str| {
        Some(SecretRef {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    };
    let cases: &[(&str, Option<SecretRef>, &str)] = &[
        ("a.example.com", secret("web", "a-tls"), "exact beats wildcard"),
        ("A.EXAMPLE.COM", secret("web", "a-tls"), "case-insensitive"),
        (
            "c.example.com",
            secret("web", "wild-tls"),
            "the wildcard binds a rule host it covers; the older Ingress decides",
        ),
        ("b.example.com", None, "the wildcard binds no host without a rule"),
        ("x.b.example.com", None, "one label only"),
        ("example.com", None, "not the wildcard's suffix"),
        ("b.example.net", secret("other", "b-tls"), "exact entry"),
        (
            "r.example.net",
            secret("other", "rules-tls"),
            "entry without hosts: the Ingress's rule hosts",
        ),
        (
            "x.w.example.net",
            secret("other", "rules-tls"),
            "entry without hosts: rule wildcard",
        ),
        ("plain.example.org", None, "no secretName: default certificate"),
        ("unknown.test", None, "no TLS"),
    ];
    for (sni, want, why) in cases {
        assert_eq!(t.tls_secret_for(sni), want.as_ref(), "{sni}: {why}");
    }
    assert!(t.tls_for("plain.example.org").is_some_and(|b| b.secret.is_none()));
    assert!(t.tls_for("unknown.test").is_none());
    assert!(t.tls_for("b.example.com").is_none(), "no redirect either");
    assert_eq!(
        t.hosts_with_tls(),
        [
            "*.w.example.net",
            "a.example.com",
            "b.example.net",
            "c.example.com",
            "plain.example.org",
            "r.example.net"
        ]
    );
    let secrets: Vec<String> = t.tls_secrets().iter().map(ToString::to_string).collect();
    assert_eq!(
        secrets,
        ["other/b-tls", "other/rules-tls", "web/a-tls", "web/wild-tls"]
    );
    assert_eq!(compiled.warnings.len(), 1, "{:?}", compiled.warnings);
    assert_eq!(compiled.warnings[0].kind, WarningKind::TlsConflict);
    assert_eq!(compiled.warnings[0].ingress.to_string(), "other/b");
    assert!(
        compiled.warnings[0].message.contains("web/wild-tls")
            && compiled.warnings[0].message.contains("c.example.com"),
        "{}",
        compiled.warnings[0].message
    );
    assert_eq!(compiled.warnings[0].kind.reason(), "TLSConflict");

    // A tls entry with no hosts on an Ingress whose rules have no host binds nothing: reported.
    let hostless = ingress(
        "web",
        "hostless",
        Some(T0),
        json!({"tls": [{"secretName": "lost"}], "rules": [rule(None, vec![path("/", "Prefix", "any")])]}),
    );
    let compiled = compile(&[hostless]);
    assert_eq!(compiled.table.hosts_with_tls(), Vec::<String>::new());
    let kinds: Vec<WarningKind> = compiled.warnings.iter().map(|w| w.kind).collect();
    assert_eq!(kinds, [WarningKind::InvalidTls]);
    assert_eq!(reach(&compiled.table, "a.test", "/").as_deref(), Some("any"));
}

/// The review's examples (ingress-nginx binds certificates to the servers of rule hosts only).
#[test]
fn tls_binds_only_rule_hosts() {
    // An older Ingress lists shop.example.com in tls without a rule for it: it binds nothing, the
    // Ingress that routes the host decides, and nobody gets a TLSConflict.
    let team_b = ingress(
        "team-b",
        "b",
        Some(T0),
        json!({"tls": [{"hosts": ["shop.example.com", "b.example.com"], "secretName": "b-cert"}],
               "rules": [rule(Some("b.example.com"), vec![path("/", "Prefix", "b")])]}),
    );
    let shop = ingress(
        "shop",
        "shop",
        Some(T1),
        json!({"tls": [{"hosts": ["shop.example.com"], "secretName": "shop-cert"}],
               "rules": [rule(Some("shop.example.com"), vec![path("/", "Prefix", "shop")])]}),
    );
    let compiled = compile(&[shop.clone(), team_b.clone()]);
    let t = &compiled.table;
    assert_eq!(
        t.tls_secret_for("shop.example.com")
            .map(ToString::to_string)
            .as_deref(),
        Some("shop/shop-cert")
    );
    assert_eq!(
        t.tls_secret_for("b.example.com")
            .map(ToString::to_string)
            .as_deref(),
        Some("team-b/b-cert")
    );
    let w: Vec<(String, WarningKind)> = compiled
        .warnings
        .iter()
        .map(|w| (w.ingress.to_string(), w.kind))
        .collect();
    assert_eq!(w, [("team-b/b".to_owned(), WarningKind::InvalidTls)]);
    assert!(
        compiled.warnings[0]
            .message
            .contains("shop.example.com binds nothing"),
        "{}",
        compiled.warnings[0].message
    );

    // A wildcard tls host of A covers only A's rule hosts: b.example.com, routed by B without TLS,
    // gets no binding (so no certificate of A and no redirect).
    let wild = ingress(
        "a",
        "a",
        Some(T0),
        json!({"tls": [{"hosts": ["*.example.com"], "secretName": "wild"}],
               "rules": [rule(Some("a.example.com"), vec![path("/", "Prefix", "a")])]}),
    );
    let plain = ingress(
        "b",
        "b",
        Some(T1),
        json!({"rules": [rule(Some("b.example.com"), vec![path("/", "Prefix", "b")])]}),
    );
    let compiled = compile(&[wild, plain]);
    let t = &compiled.table;
    assert_eq!(
        t.tls_secret_for("a.example.com")
            .map(ToString::to_string)
            .as_deref(),
        Some("a/wild")
    );
    assert!(t.tls_for("b.example.com").is_none());
    assert!(t.tls_for("z.example.com").is_none());
    assert_eq!(t.hosts_with_tls(), ["a.example.com"]);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);

    // A wildcard rule host takes a tls entry naming the same wildcard.
    let w = ingress(
        "w",
        "w",
        Some(T0),
        json!({"tls": [{"hosts": ["*.w.test"], "secretName": "w"}],
               "rules": [rule(Some("*.w.test"), vec![path("/", "Prefix", "w")])]}),
    );
    let compiled = compile(&[w]);
    assert_eq!(
        compiled
            .table
            .tls_secret_for("x.w.test")
            .map(ToString::to_string)
            .as_deref(),
        Some("w/w")
    );
    assert!(compiled.warnings.is_empty());
}

/// Each broken part yields one warning of the right kind; the valid parts of the same Ingress and every
/// other Ingress keep routing.
#[test]
fn invalid_inputs_are_skipped_with_a_warning() {
    let broken = ingress(
        "default",
        "broken",
        Some(T0),
        json!({
            "tls": [{"hosts": ["*"], "secretName": "x"}, {"hosts": ["ok.example.com"], "secretName": "ok-tls"}],
            "rules": [
                rule(Some("bücher.example"), vec![path("/", "Prefix", "idn")]),
                rule(Some("10.0.0.1"), vec![path("/", "Prefix", "ip")]),
                rule(Some("ok.example.com"), vec![
                    path("/ok", "Prefix", "ok"),
                    path("/../etc", "Prefix", "dots"),
                    path("relative", "Prefix", "relative"),
                    path("/a//b", "Exact", "empty-segment"),
                    path("/x;}{include", "Prefix", "injection"),
                    path("/api/(.*)", "ImplementationSpecific", "regex"),
                    path("/r", "Regex", "bad-type"),
                    json!({"path": "/exact-without", "pathType": "Exact", "backend": {"service": {"name": "noport"}}}),
                    json!({"path": "/zero", "pathType": "Exact", "backend": {"service": {"name": "zero", "port": {"number": 0}}}}),
                    json!({"path": "/both", "pathType": "Exact", "backend": {"service": {"name": "both", "port": {"number": 80, "name": "http"}}}}),
                    json!({"path": "/badsvc", "pathType": "Exact", "backend": {"service": {"name": "Bad_Name", "port": {"number": 80}}}}),
                    json!({"path": "/res", "pathType": "Exact", "backend": {"resource": {"kind": "Bucket", "name": "b"}}}),
                    json!({"path": "/named", "pathType": "Exact", "backend": {"service": {"name": "named", "port": {"name": "https"}}}}),
                ]),
            ],
        }),
    );
    let fine = ingress(
        "default",
        "fine",
        Some(T1),
        json!({"rules": [rule(Some("fine.test"), vec![path("/", "Prefix", "fine")])]}),
    );
    let compiled = compile(&[broken, fine]);
    let kinds: Vec<WarningKind> = compiled.warnings.iter().map(|w| w.kind).collect();
    use WarningKind::*;
    assert_eq!(
        kinds,
        [
            InvalidHost,
            InvalidHost,
            InvalidPath,
            InvalidPath,
            InvalidPath,
            InvalidPath,
            InvalidPath,
            InvalidPath,
            InvalidBackend,
            InvalidBackend,
            InvalidBackend,
            InvalidBackend,
            InvalidBackend,
            InvalidTls,
        ],
        "{:#?}",
        compiled.warnings
    );
    assert!(
        compiled
            .warnings
            .iter()
            .all(|w| w.ingress.to_string() == "default/broken")
    );
    assert!(
        compiled.warnings[0].message.contains("punycode"),
        "{}",
        compiled.warnings[0].message
    );
    assert!(
        compiled.warnings[6].message.contains("regular expression"),
        "{}",
        compiled.warnings[6].message
    );
    let t = &compiled.table;
    assert_eq!(reach(t, "ok.example.com", "/ok/1").as_deref(), Some("ok"));
    assert_eq!(reach(t, "ok.example.com", "/named").as_deref(), Some("named"));
    assert_eq!(reach(t, "ok.example.com", "/zero"), None);
    assert_eq!(reach(t, "fine.test", "/").as_deref(), Some("fine"));
    assert_eq!(reach(t, "10.0.0.1", "/"), None);
    assert_eq!(
        t.tls_secret_for("ok.example.com").map(|s| s.name.as_str()),
        Some("ok-tls")
    );
    assert_eq!(t.routes().len(), 3);
    match t.route("ok.example.com", "/named") {
        Match::Route(r) => assert_eq!(r.backend.port, ServicePort::Name("https".to_owned())),
        other => panic!("{other:?}"),
    }
}

fn class(name: &str, controller: &str, default: Option<&str>) -> IngressClass {
    let mut metadata = json!({"name": name});
    if let Some(d) = default {
        metadata["annotations"] = json!({"ingressclass.kubernetes.io/is-default-class": d});
    }
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": metadata,
        "spec": {"controller": controller},
    }))
    .expect("valid IngressClass")
}

fn classed(field: Option<&str>, annotation: Option<&str>) -> Ingress {
    let mut ing = ingress(
        "default",
        "c",
        Some(T0),
        json!({"rules": [rule(None, vec![path("/", "Prefix", "s")])]}),
    );
    if let Some(spec) = ing.spec.as_mut() {
        spec.ingress_class_name = field.map(str::to_owned);
    }
    if let Some(a) = annotation {
        ing.metadata.annotations = Some([("kubernetes.io/ingress.class".to_owned(), a.to_owned())].into());
    }
    ing
}

#[test]
fn class_decision() {
    let ours = class("ferrite", CONTROLLER_NAME, None);
    let ours_default = class("ferrite-default", CONTROLLER_NAME, Some("true"));
    let ours_default2 = class("ferrite-b", CONTROLLER_NAME, Some("true"));
    let nginx = class("nginx", "k8s.io/ingress-nginx", None);
    let nginx_default = class("nginx", "k8s.io/ingress-nginx", Some("true"));
    let ours_title_case = class("ferrite-default", CONTROLLER_NAME, Some("True"));
    let served = |class: &str, source| ClassDecision::Served {
        class: class.to_owned(),
        source,
    };
    let other = |class: &str| {
        ClassDecision::NotServed(NotServed::OtherController {
            class: class.to_owned(),
            controller: "k8s.io/ingress-nginx".to_owned(),
        })
    };
    let cases: Vec<(&str, Ingress, Vec<IngressClass>, ClassDecision)> = vec![
        (
            "field names our class",
            classed(Some("ferrite"), None),
            vec![ours.clone(), nginx.clone()],
            served("ferrite", ClassSource::Field),
        ),
        (
            "field names another controller's class",
            classed(Some("nginx"), None),
            vec![ours.clone(), nginx.clone()],
            other("nginx"),
        ),
        (
            "field names a missing class",
            classed(Some("gone"), None),
            vec![ours.clone()],
            ClassDecision::NotServed(NotServed::UnknownClass {
                class: "gone".to_owned(),
            }),
        ),
        (
            "legacy annotation names our class",
            classed(None, Some("ferrite")),
            vec![ours.clone(), nginx.clone()],
            served("ferrite", ClassSource::Annotation),
        ),
        (
            "legacy annotation names another class",
            classed(None, Some("nginx")),
            vec![ours.clone(), nginx.clone()],
            other("nginx"),
        ),
        (
            "the field wins over the annotation",
            classed(Some("ferrite"), Some("nginx")),
            vec![ours.clone(), nginx.clone()],
            served("ferrite", ClassSource::Field),
        ),
        (
            "the field wins over the annotation (other way)",
            classed(Some("nginx"), Some("ferrite")),
            vec![ours.clone(), nginx.clone()],
            other("nginx"),
        ),
        (
            "an empty field is unset",
            classed(Some(""), Some("ferrite")),
            vec![ours.clone()],
            served("ferrite", ClassSource::Annotation),
        ),
        (
            "a class named explicitly needs no default",
            classed(Some("ferrite"), None),
            vec![ours.clone(), nginx_default.clone()],
            served("ferrite", ClassSource::Field),
        ),
        (
            "no class, our default",
            classed(None, None),
            vec![ours_default.clone(), nginx.clone()],
            served("ferrite-default", ClassSource::Default),
        ),
        (
            "no class, no default",
            classed(None, None),
            vec![ours.clone(), nginx.clone()],
            ClassDecision::NotServed(NotServed::NoDefaultClass),
        ),
        (
            "default is only \"true\"",
            classed(None, None),
            vec![ours_title_case],
            ClassDecision::NotServed(NotServed::NoDefaultClass),
        ),
        (
            "no class, another controller's default",
            classed(None, None),
            vec![ours.clone(), nginx_default.clone()],
            ClassDecision::NotServed(NotServed::DefaultOfOtherController {
                class: "nginx".to_owned(),
                controller: "k8s.io/ingress-nginx".to_owned(),
            }),
        ),
        (
            "several defaults, all ours: the first by name",
            classed(None, None),
            vec![ours_default.clone(), ours_default2.clone()],
            served("ferrite-b", ClassSource::Default),
        ),
        (
            "several defaults, one another controller's",
            classed(None, None),
            vec![ours_default.clone(), nginx_default.clone()],
            ClassDecision::NotServed(NotServed::DefaultOfOtherController {
                class: "nginx".to_owned(),
                controller: "k8s.io/ingress-nginx".to_owned(),
            }),
        ),
    ];
    for (why, ing, classes, want) in cases {
        assert_eq!(decide_class(&ing, &classes, CONTROLLER_NAME), want, "{why}");
    }

    // build() serves only what the decision selects.
    let mine = classed(Some("ferrite"), None);
    let mut theirs = classed(Some("nginx"), None);
    theirs.metadata.name = Some("theirs".to_owned());
    let compiled = RouteTable::build([&theirs, &mine], &[ours, nginx], CONTROLLER_NAME);
    let served: Vec<String> = compiled.served.iter().map(ToString::to_string).collect();
    assert_eq!(served, ["default/c"]);
    assert_eq!(compiled.table.routes().len(), 1);
    assert_eq!(compiled.warnings, vec![]);
}

#[test]
fn shared_table_swaps() {
    let shared = SharedRouteTable::default();
    assert_eq!(shared.load().route("a.test", "/"), Match::NotFound);
    let held = shared.load();
    let ing = ingress(
        "default",
        "a",
        Some(T0),
        json!({"rules": [rule(Some("a.test"), vec![path("/", "Prefix", "a")])]}),
    );
    shared.store(compile(&[ing]).table);
    assert_eq!(reach(&shared.load(), "a.test", "/").as_deref(), Some("a"));
    // A reader holding the old snapshot keeps it.
    assert_eq!(held.route("a.test", "/"), Match::NotFound);
}
