//! The RFC2136 provider against a real `named` (Debian's bind9), started by this test on 127.0.0.1 with a
//! free port and its own configuration in a temporary directory, and stopped by its PID at the end.
//!
//! Needs `named` and `dig`: `apt-get install -y bind9 bind9-dnsutils` (e2e/scripts/install-deps.sh installs
//! them). Run: `cargo test -p ferrite-dns --test rfc2136`.

use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ferrite_dns::rfc2136::{Change, Rfc2136Client, Rfc2136Error, Timeouts, TsigAlgorithm};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const ZONE: &str = "apps.example.test.";
const KEY: &str = "ferrite-key";
const SECRET: &[u8] = b"ferrite-dns rfc2136 test secret, 32+ bytes long";
const SHA1_SECRET: &[u8] = b"the sha1 key's secret";
const SHA512_SECRET: &[u8] = b"the sha512 key's secret, which is longer than the others";
const OTHER_SECRET: &[u8] = b"a key named knows but does not allow";

/// One `named` (ferrite-e2e's) with the test's keys and an updatable zone.
fn start_named() -> Named {
    Named::start(NamedConfig {
        keys: vec![
            NamedKey::new(KEY, "hmac-sha256", SECRET),
            NamedKey::new("sha1-key", "hmac-sha1", SHA1_SECRET),
            NamedKey::new("sha512-key", "hmac-sha512", SHA512_SECRET),
            NamedKey::new("other-key", "hmac-sha256", OTHER_SECRET),
        ],
        zones: vec![
            NamedZone::primary(
                ZONE,
                "foreign  IN A   192.0.2.99\nforeign  IN TXT \"made by hand\"\n",
            )
            .allow_update(&[KEY, "sha1-key", "sha512-key"])
            .allow_transfer(&[KEY, "sha1-key", "sha512-key"]),
        ],
        ..NamedConfig::default()
    })
    .expect("named starts")
}

fn client_of(named: &Named, key: &str, alg: TsigAlgorithm, secret: &[u8]) -> Rfc2136Client {
    Rfc2136Client::new(named.addr(), ZONE, key, alg, secret, timeouts()).expect("client settings")
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
        transfer: Duration::from_secs(10),
    }
}

fn name(s: &str) -> Name {
    Name::from_str(s).expect("test name")
}

fn rec(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(name(owner), ttl, data)
}

fn a(owner: &str, ip: [u8; 4]) -> Record {
    rec(owner, 120, RData::A(A(Ipv4Addr::from(ip))))
}

/// The zone as `(name, type, rdata text)`, without the SOA.
fn listing(records: &[Record]) -> Vec<(String, RecordType, String)> {
    let mut v: Vec<_> = records
        .iter()
        .filter(|r| r.record_type() != RecordType::SOA)
        .map(|r| {
            (
                r.name.to_string().to_lowercase(),
                r.record_type(),
                r.data.to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc2136_against_named() {
    let mut named = start_named();
    let client = client_of(&named, KEY, TsigAlgorithm::HmacSha256, SECRET);

    // AXFR reads the zone: SOA first, then the rest, the closing SOA dropped.
    let zone = client.read_zone().await.unwrap();
    assert_eq!(zone[0].record_type(), RecordType::SOA, "{zone:?}");
    assert_eq!(
        zone.iter().filter(|r| r.record_type() == RecordType::SOA).count(),
        1
    );
    let before = listing(&zone);
    for want in [
        ("apps.example.test.", RecordType::NS, "ns1.apps.example.test."),
        ("ns1.apps.example.test.", RecordType::A, "127.0.0.1"),
        ("foreign.apps.example.test.", RecordType::A, "192.0.2.99"),
    ] {
        assert!(
            before
                .iter()
                .any(|(n, t, d)| n == want.0 && *t == want.1 && d == want.2),
            "{want:?} not in {before:?}"
        );
    }
    assert!(
        before
            .iter()
            .any(|(n, t, _)| n == "foreign.apps.example.test." && *t == RecordType::TXT)
    );

    // Create A, AAAA, CNAME and TXT: one message, and dig answers them.
    let batch = vec![
        Change::Add(vec![a("app.apps.example.test.", [192, 0, 2, 10])]),
        Change::Add(vec![rec(
            "app.apps.example.test.",
            120,
            RData::AAAA(AAAA(Ipv6Addr::from_str("2001:db8::10").unwrap())),
        )]),
        Change::Add(vec![rec(
            "www.apps.example.test.",
            60,
            RData::CNAME(CNAME(name("app.apps.example.test."))),
        )]),
        Change::Add(vec![rec(
            "a-app.apps.example.test.",
            300,
            RData::TXT(TXT::new(vec![
                "heritage=external-dns,external-dns/owner=ferrite,external-dns/resource=service/default/app"
                    .into(),
            ])),
        )]),
    ];
    let report = client.apply(&batch).await.unwrap();
    assert_eq!((report.messages, report.changes, report.rrs), (1, 4, 4));
    assert_eq!(named.answers("app.apps.example.test.", "A"), ["192.0.2.10"]);
    assert_eq!(named.answers("app.apps.example.test.", "AAAA"), ["2001:db8::10"]);
    assert_eq!(
        named.answers("www.apps.example.test.", "CNAME"),
        ["app.apps.example.test."]
    );
    assert_eq!(
        named.answers("a-app.apps.example.test.", "TXT"),
        ["\"heritage=external-dns,external-dns/owner=ferrite,external-dns/resource=service/default/app\""]
    );
    // Sending the same batch again changes nothing (adds are idempotent).
    client.apply(&batch).await.unwrap();
    assert_eq!(named.answers("app.apps.example.test.", "A"), ["192.0.2.10"]);

    // Replace the A RRset by two addresses, delete the AAAA; the foreign records stay.
    client
        .apply(&[
            Change::Replace {
                name: name("app.apps.example.test."),
                rtype: RecordType::A,
                records: vec![
                    a("app.apps.example.test.", [192, 0, 2, 11]),
                    a("app.apps.example.test.", [192, 0, 2, 12]),
                ],
            },
            Change::Delete {
                name: name("app.apps.example.test."),
                rtype: RecordType::AAAA,
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        named.answers("app.apps.example.test.", "A"),
        ["192.0.2.11", "192.0.2.12"]
    );
    assert!(named.answers("app.apps.example.test.", "AAAA").is_empty());
    assert_eq!(
        named.answers("www.apps.example.test.", "CNAME"),
        ["app.apps.example.test."],
        "other types at other names stay"
    );
    assert_eq!(named.answers("foreign.apps.example.test.", "A"), ["192.0.2.99"]);
    assert_eq!(
        named.answers("foreign.apps.example.test.", "TXT"),
        ["\"made by hand\""]
    );
    let after = listing(&client.read_zone().await.unwrap());
    for r in before
        .iter()
        .filter(|(n, _, _)| n.starts_with("foreign.") || n.starts_with("ns1."))
    {
        assert!(after.contains(r), "{r:?} was touched: {after:?}");
    }
    // Deleting an RRset that does not exist is a no-op, not an error.
    client
        .apply(&[Change::Delete {
            name: name("ghost.apps.example.test."),
            rtype: RecordType::A,
        }])
        .await
        .unwrap();

    // hmac-sha1 and hmac-sha512 keys work too (updates and transfers).
    for (key, alg, secret, ip) in [
        ("sha1-key", TsigAlgorithm::HmacSha1, SHA1_SECRET, [192, 0, 2, 21]),
        (
            "sha512-key",
            TsigAlgorithm::HmacSha512,
            SHA512_SECRET,
            [192, 0, 2, 22],
        ),
    ] {
        let c = client_of(&named, key, alg, secret);
        let owner = format!("{key}.apps.example.test.");
        c.apply(&[Change::Add(vec![a(&owner, ip)])]).await.unwrap();
        assert_eq!(named.answers(&owner, "A"), [Ipv4Addr::from(ip).to_string()]);
        assert!(
            listing(&c.read_zone().await.unwrap())
                .iter()
                .any(|(n, _, _)| *n == owner)
        );
    }

    // A wrong secret: NotAuth naming the key and the server, nothing changed.
    let zone_before = listing(&client.read_zone().await.unwrap());
    let wrong = client_of(&named, KEY, TsigAlgorithm::HmacSha256, b"not the secret");
    let err = wrong
        .apply(&[Change::Add(vec![a(
            "intruder.apps.example.test.",
            [192, 0, 2, 66],
        )])])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotAuth", "{err}");
    eprintln!("wrong secret: {err}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "TSIG key {KEY} was rejected by 127.0.0.1:{}: ",
            named.port()
        )),
        "{msg}"
    );
    assert!(msg.contains("BADSIG"), "{msg}");
    assert!(!err.is_transient());
    let err = wrong.read_zone().await.unwrap_err();
    assert_eq!(err.reason(), "NotAuth", "{err}");
    assert!(named.answers("intruder.apps.example.test.", "A").is_empty());
    // An unknown key name: BADKEY. A known key the zone does not allow: Refused.
    let unknown = client_of(&named, "no-such-key", TsigAlgorithm::HmacSha256, SECRET);
    let err = unknown
        .apply(&[Change::Add(vec![a(
            "intruder.apps.example.test.",
            [192, 0, 2, 66],
        )])])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotAuth", "{err}");
    assert!(err.to_string().contains("BADKEY"), "{err}");
    eprintln!("unknown key: {err}");
    let other = client_of(&named, "other-key", TsigAlgorithm::HmacSha256, OTHER_SECRET);
    let err = other
        .apply(&[Change::Add(vec![a(
            "intruder.apps.example.test.",
            [192, 0, 2, 66],
        )])])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Refused", "{err}");
    assert!(err.to_string().contains("allow-update"), "{err}");
    eprintln!("key not allowed: {err}");
    let err = other.read_zone().await.unwrap_err();
    assert!(matches!(err.reason(), "Refused" | "NotAuth"), "{err}");
    // The same algorithm name with another key's algorithm: BADKEY (the key is hmac-sha256 on the server).
    let wrong_alg = client_of(&named, KEY, TsigAlgorithm::HmacSha512, SECRET);
    let err = wrong_alg
        .apply(&[Change::Add(vec![a(
            "intruder.apps.example.test.",
            [192, 0, 2, 66],
        )])])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "NotAuth", "{err}");
    assert!(named.answers("intruder.apps.example.test.", "A").is_empty());
    assert_eq!(
        listing(&client.read_zone().await.unwrap()),
        zone_before,
        "nothing changed"
    );

    // A large batch goes in several messages, and every record arrives.
    let big: Vec<Change> = (0..2000u32)
        .map(|i| {
            Change::Add(vec![a(
                &format!("h{i}.bulk.apps.example.test."),
                [10, 1, (i / 256) as u8, (i % 256) as u8],
            )])
        })
        .collect();
    let started = Instant::now();
    let report = client.apply(&big).await.unwrap();
    assert!(report.messages >= 2, "{report:?}");
    assert_eq!((report.changes, report.rrs), (2000, 2000));
    let small_messages = client.clone().with_limits(8192, 1000).unwrap();
    let replace: Vec<Change> = (0..2000u32)
        .map(|i| Change::Replace {
            name: name(&format!("h{i}.bulk.apps.example.test.")),
            rtype: RecordType::A,
            records: vec![a(
                &format!("h{i}.bulk.apps.example.test."),
                [10, 2, (i / 256) as u8, (i % 256) as u8],
            )],
        })
        .collect();
    let report2 = small_messages.apply(&replace).await.unwrap();
    assert!(report2.messages > report.messages, "{report2:?} vs {report:?}");
    eprintln!(
        "2000 adds in {} messages, 2000 replaces in {} messages, {:?}",
        report.messages,
        report2.messages,
        started.elapsed()
    );
    let zone = client.read_zone().await.unwrap();
    let bulk: Vec<&Record> = zone
        .iter()
        .filter(|r| r.name.to_string().ends_with(".bulk.apps.example.test."))
        .collect();
    assert_eq!(bulk.len(), 2000);
    assert!(bulk.iter().all(|r| r.data.to_string().starts_with("10.2.")));
    assert_eq!(
        named.answers("h1999.bulk.apps.example.test.", "A"),
        ["10.2.7.207"]
    );

    // named stopped: Unreachable or Timeout, within the timeout.
    named.stop();
    let started = Instant::now();
    let err = client
        .apply(&[Change::Add(vec![a("later.apps.example.test.", [192, 0, 2, 30])])])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Rfc2136Error::Unreachable { .. } | Rfc2136Error::Timeout { .. }
        ),
        "{err}"
    );
    assert!(err.is_transient());
    eprintln!("named stopped: {err}");
    assert!(
        started.elapsed() <= timeouts().connect + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let err = client.read_zone().await.unwrap_err();
    assert!(matches!(err.reason(), "Unreachable" | "Timeout"), "{err}");
    // Restarted: works again, and everything written before is still there.
    named.run().expect("named starts again");
    client
        .apply(&[Change::Add(vec![a("later.apps.example.test.", [192, 0, 2, 30])])])
        .await
        .unwrap();
    assert_eq!(named.answers("later.apps.example.test.", "A"), ["192.0.2.30"]);
    assert_eq!(
        named.answers("app.apps.example.test.", "A"),
        ["192.0.2.11", "192.0.2.12"]
    );
    assert_eq!(client.read_zone().await.unwrap().len(), zone.len() + 1);

    named.stop();
}

/// A server that accepts connections and never answers: the call ends with Timeout after the request
/// timeout, not later.
#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let t = Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_millis(500),
        transfer: Duration::from_millis(700),
    };
    let client = Rfc2136Client::new(addr, ZONE, KEY, TsigAlgorithm::HmacSha256, SECRET, t).unwrap();
    let started = Instant::now();
    let err = client
        .apply(&[Change::Add(vec![a("x.apps.example.test.", [192, 0, 2, 1])])])
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(err.to_string().contains("answer the UPDATE"), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    let started = Instant::now();
    let err = client.read_zone().await.unwrap_err();
    assert_eq!(err.reason(), "Timeout", "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    holder.abort();
}
