//! The RFC2136 DNS-01 presenter against a real `named` (Debian's bind9, ferrite-e2e's helper) on
//! 127.0.0.1, configured as docs/certs.md shows: a `tsig-keygen` style key and an `update-policy` that
//! lets it change only TXT records under `_acme-challenge`. The TXT value appears (checked with `dig`),
//! a second challenge at the same name (an apex and its wildcard) adds its own value, and each cleanup
//! removes only its own value; a wrong key and a name outside the policy are refused.
//!
//!
//! The DNS-01 self-check is tested here too, against two nameds: a "resolver" that holds an old copy of
//! the zone (no challenge record) and the zone's authoritative server, found through it (SOA walk, NS,
//! A) and asked on its port (`authoritative_port`, the test's stand-in for port 53).
//!
//! Needs `named` and `dig`: `apt-get install -y bind9 bind9-dnsutils`. Run:
//! `cargo test -p ferrite-certs --test rfc2136`.

use std::time::Duration;

use ferrite_certs::acme::{AuthzInfo, ChallengeInfo, ChallengeKind, Presented, dns_value};
use ferrite_certs::solvers::Rfc2136Presenter;
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use ferrite_kit::dns::tsig::{TsigAlgorithm, TsigKey};
use ferrite_kit::dns::update::{Timeouts, UpdateClient};

const KEY: &str = "ferrite-certs";
const SECRET: &[u8] = b"ferrite-certs rfc2136 test secret, 32+ bytes";

fn presented(identifier: &str, wildcard: bool, token: &str) -> Presented {
    let key_authorization = format!("{token}.thumbprint");
    let challenge = ChallengeInfo {
        kind: ChallengeKind::Dns01,
        url: format!("https://ca/chall/{token}"),
        token: token.to_string(),
        dns_txt_value: dns_value(&key_authorization),
        key_authorization,
        status: "pending".into(),
        error: None,
    };
    Presented {
        authz: AuthzInfo {
            url: format!("https://ca/authz/{token}"),
            identifier: identifier.to_string(),
            wildcard,
            is_ip: false,
            status: "pending".into(),
            challenges: vec![challenge.clone()],
        },
        challenge,
    }
}

fn presenter(named: &Named, secret: &[u8]) -> Rfc2136Presenter {
    let key = TsigKey::new(
        KEY,
        TsigAlgorithm::parse("HMACSHA256").expect("cert-manager's spelling"),
        secret,
    )
    .expect("key");
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
    };
    Rfc2136Presenter::new(
        UpdateClient::new(named.addr(), key, timeouts).expect("client"),
        Duration::from_secs(3),
    )
}

fn txt(named: &Named, name: &str) -> Vec<String> {
    named
        .answers(name, "TXT")
        .into_iter()
        .map(|v| v.trim_matches('"').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_presenter_against_named() {
    let named = Named::start(NamedConfig {
        keys: vec![NamedKey::new(KEY, "hmac-sha256", SECRET)],
        zones: vec![
            NamedZone::primary("example.test", "www IN A 192.0.2.10\n").update_policy(&format!(
                "grant {KEY} name _acme-challenge.example.test. TXT; \
                 grant {KEY} name _acme-challenge.www.example.test. TXT;"
            )),
        ],
        ..NamedConfig::default()
    })
    .expect("named starts");
    let p = presenter(&named, SECRET);

    // www.example.test: present -> the TXT value is served; cleanup -> gone.
    let www = presented("www.example.test", false, "tok-www");
    p.add(&www).await.expect("present");
    assert_eq!(
        txt(&named, "_acme-challenge.www.example.test."),
        std::slice::from_ref(&www.challenge.dns_txt_value)
    );

    // example.test and *.example.test share _acme-challenge.example.test: two values, each removed alone.
    let apex = presented("example.test", false, "tok-apex");
    let wild = presented("example.test", true, "tok-wild");
    p.add(&apex).await.expect("present the apex");
    p.add(&wild).await.expect("present the wildcard");
    let mut both = vec![
        apex.challenge.dns_txt_value.clone(),
        wild.challenge.dns_txt_value.clone(),
    ];
    both.sort();
    let mut seen = txt(&named, "_acme-challenge.example.test.");
    seen.sort();
    assert_eq!(seen, both);
    p.remove(&apex).await.expect("clean up the apex");
    assert_eq!(
        txt(&named, "_acme-challenge.example.test."),
        std::slice::from_ref(&wild.challenge.dns_txt_value)
    );
    p.remove(&wild).await.expect("clean up the wildcard");
    assert!(txt(&named, "_acme-challenge.example.test.").is_empty());

    p.remove(&www).await.expect("clean up www");
    assert!(txt(&named, "_acme-challenge.www.example.test.").is_empty());
    // A second cleanup is a no-op, not an error.
    p.remove(&www).await.expect("clean up again");
    assert_eq!(named.answers("www.example.test.", "A"), ["192.0.2.10"]);

    // A wrong secret: refused (BADSIG), nothing written.
    let wrong = presenter(&named, b"not the secret");
    let e = wrong.add(&www).await.unwrap_err();
    assert!(format!("{e:#}").contains("BADSIG"), "{e:#}");
    // A name the CA never asks for, outside the update-policy: REFUSED.
    let zone = hickory_proto::rr::Name::from_ascii("example.test.").expect("zone");
    let rec = hickory_proto::rr::Record::from_rdata(
        hickory_proto::rr::Name::from_ascii("www.example.test.").expect("name"),
        60,
        hickory_proto::rr::RData::TXT(hickory_proto::rr::rdata::TXT::new(vec!["x".into()])),
    );
    let key = TsigKey::new(KEY, TsigAlgorithm::HmacSha256, SECRET).expect("key");
    let e = UpdateClient::new(named.addr(), key, Timeouts::default())
        .expect("client")
        .add(&zone, &[rec])
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Refused", "{e}");
    assert!(txt(&named, "_acme-challenge.www.example.test.").is_empty());
}

fn named(zones: Vec<NamedZone>) -> Named {
    Named::start(NamedConfig {
        zones,
        ..NamedConfig::default()
    })
    .expect("named starts (apt-get install -y bind9 bind9-dnsutils)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_self_check_asks_the_zones_authoritative_servers() {
    use ferrite_certs::acme::{SelfCheck, dns01_self_check};
    let (auth, resolver) = tokio::task::spawn_blocking(|| {
        // The authoritative server: the challenge record in auth.sc.test and two.sc.test.
        let auth = named(vec![
            NamedZone::primary(
                "auth.sc.test",
                "_acme-challenge.www IN TXT \"fresh\"\n_acme-challenge.a.b IN TXT \"deep\"\n",
            ),
            NamedZone::primary("two.sc.test", "_acme-challenge IN TXT \"fresh\"\n"),
        ]);
        // The "resolver": the same zones without the records. Its NS for auth.sc.test is
        // ns1.auth.sc.test (127.0.0.1, the authoritative one on the test's port); two.sc.test has a
        // second NS, ns2.two.sc.test at 127.0.0.2, where nothing listens.
        let resolver = named(vec![
            NamedZone::primary("auth.sc.test", ""),
            NamedZone::primary("two.sc.test", "@ IN NS ns2\nns2 IN A 127.0.0.2\n"),
        ]);
        (auth, resolver)
    })
    .await
    .expect("nameds");
    let cfg = SelfCheck {
        nameservers: vec![resolver.addr()],
        authoritative_port: auth.port(),
        ..SelfCheck::default()
    };
    // Found at the authoritative server although the resolver does not have it.
    dns01_self_check("_acme-challenge.www.auth.sc.test", "fresh", &cfg)
        .await
        .expect("the authoritative server has the value");
    // Below empty non-terminals and NXDOMAINs the walk still finds the apex.
    dns01_self_check("_acme-challenge.a.b.auth.sc.test", "deep", &cfg)
        .await
        .expect("the deep record");
    let e = dns01_self_check("_acme-challenge.x.y.auth.sc.test", "deep", &cfg)
        .await
        .unwrap_err();
    assert!(
        e.contains("ns1.auth.sc.test.")
            && e.contains("authoritative for auth.sc.test.")
            && e.contains("0 value(s)"),
        "{e}"
    );
    // Another value: not the challenge's.
    let e = dns01_self_check("_acme-challenge.www.auth.sc.test", "other", &cfg)
        .await
        .unwrap_err();
    assert!(e.contains("1 value(s), not the challenge's"), "{e}");
    // Every authoritative server must have it: ns2 does not answer.
    let e = dns01_self_check("_acme-challenge.two.sc.test", "fresh", &cfg)
        .await
        .unwrap_err();
    assert!(e.contains("ns2.two.sc.test.") && e.contains("127.0.0.2"), "{e}");
    // The old behaviour (--dns01-recursive-nameservers-only): the resolver itself is asked.
    let recursive = SelfCheck {
        recursive_only: true,
        ..cfg.clone()
    };
    let e = dns01_self_check("_acme-challenge.www.auth.sc.test", "fresh", &recursive)
        .await
        .unwrap_err();
    assert!(
        e.contains(&resolver.addr().to_string()) && e.contains("0 value(s)"),
        "{e}"
    );
    let direct = SelfCheck {
        nameservers: vec![auth.addr()],
        ..recursive
    };
    dns01_self_check("_acme-challenge.www.auth.sc.test", "fresh", &direct)
        .await
        .expect("asked directly");
    // A name no zone holds: the resolver refuses it (named has no recursion), and the walk stops
    // there with that error instead of asking the CA.
    let e = dns01_self_check("_acme-challenge.nowhere.invalid", "fresh", &cfg)
        .await
        .unwrap_err();
    assert!(
        e.contains("_acme-challenge.nowhere.invalid.") && e.contains("Query Refused"),
        "{e}"
    );
}
