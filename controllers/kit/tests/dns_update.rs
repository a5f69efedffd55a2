//! `ferrite_kit::dns::update` against a real `named` (Debian's bind9, ferrite-e2e's helper) on 127.0.0.1:
//! TXT values added and deleted one by one over UDP and over TCP, a message too large for UDP, and each
//! refusal as its typed error (BADSIG, BADKEY, a key the zone does not allow, a server that is down).
//!
//! Needs `named` and `dig`: `apt-get install -y bind9 bind9-dnsutils`. Run:
//! `cargo test -p ferrite-kit --features dns --test dns_update`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use ferrite_kit::dns::query;
use ferrite_kit::dns::tsig::{TsigAlgorithm, TsigKey};
use ferrite_kit::dns::update::{Timeouts, Transport, UpdateClient, UpdateError};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigError;
use hickory_proto::rr::{Name, RData, Record, RecordType};

const ZONE: &str = "kit.example.test.";
const KEY: &str = "kit-key";
const SECRET: &[u8] = b"ferrite-kit update test secret, 32+ bytes";
const SHA1_SECRET: &[u8] = b"an old hmac-sha1 key";
const OTHER_SECRET: &[u8] = b"a key named knows but does not allow";

fn name(s: &str) -> Name {
    Name::from_str(s).expect("test name")
}

fn txt(owner: &str, value: &str) -> Record {
    Record::from_rdata(name(owner), 60, RData::TXT(TXT::new(vec![value.to_string()])))
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
    }
}

fn client(named: &Named, key: &str, alg: TsigAlgorithm, secret: &[u8]) -> UpdateClient {
    let key = TsigKey::new(key, alg, secret).expect("key");
    UpdateClient::new(named.addr(), key, timeouts()).expect("client")
}

/// `dig +short TXT` values without their quotes, sorted.
fn txts(named: &Named, owner: &str) -> Vec<String> {
    let mut v: Vec<String> = named
        .answers(owner, "TXT")
        .into_iter()
        .map(|l| l.trim_matches('"').to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_against_named() {
    let mut named = Named::start(NamedConfig {
        keys: vec![
            NamedKey::new(KEY, "hmac-sha256", SECRET),
            NamedKey::new("sha1-key", "hmac-sha1", SHA1_SECRET),
            NamedKey::new("other-key", "hmac-sha256", OTHER_SECRET),
        ],
        zones: vec![
            NamedZone::primary(ZONE, "_acme-challenge.hand IN TXT \"made by hand\"\n")
                .allow_update(&[KEY, "sha1-key"]),
        ],
        ..NamedConfig::default()
    })
    .expect("named starts");
    let zone = name(ZONE);
    let owner = "_acme-challenge.www.kit.example.test.";

    // UDP (the message is small): one value, then a second one; both are served.
    let udp = client(&named, KEY, TsigAlgorithm::HmacSha256, SECRET);
    udp.add(&zone, &[txt(owner, "token-one")])
        .await
        .expect("add over UDP");
    assert_eq!(txts(&named, owner), ["token-one"]);
    udp.add(&zone, &[txt(owner, "token-two")])
        .await
        .expect("add a second value");
    assert_eq!(txts(&named, owner), ["token-one", "token-two"]);
    let mut read = query::txt_values(named.addr(), &name(owner), Duration::from_secs(2))
        .await
        .expect("TXT query");
    read.sort();
    assert_eq!(read, ["token-one", "token-two"]);
    assert_eq!(
        query::zone_of(named.addr(), &name(owner), Duration::from_secs(2))
            .await
            .expect("zone"),
        name(ZONE)
    );
    assert_eq!(
        query::zone_of(named.addr(), &name(ZONE), Duration::from_secs(2))
            .await
            .expect("apex"),
        name(ZONE)
    );
    let e = query::zone_of(named.addr(), &name("x.elsewhere.test."), Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Refused", "{e}");
    // Adding again is a no-op.
    udp.add(&zone, &[txt(owner, "token-two")])
        .await
        .expect("add again");
    assert_eq!(txts(&named, owner), ["token-one", "token-two"]);

    // Deleting one value over TCP leaves the other.
    let tcp = client(&named, KEY, TsigAlgorithm::HmacSha256, SECRET).with_transport(Transport::Tcp);
    tcp.delete_values(&zone, &[txt(owner, "token-one")])
        .await
        .expect("delete one value");
    assert_eq!(txts(&named, owner), ["token-two"]);
    // Deleting a value that is not there is a no-op.
    tcp.delete_values(&zone, &[txt(owner, "token-one")])
        .await
        .expect("delete again");
    tcp.delete_rrset(&zone, &name(owner), RecordType::TXT)
        .await
        .expect("delete the RRset");
    assert!(txts(&named, owner).is_empty());
    assert_eq!(
        txts(&named, "_acme-challenge.hand.kit.example.test."),
        ["made by hand"]
    );

    // Too large for UDP: 40 values of 60 bytes go over TCP in one message.
    let many: Vec<Record> = (0..40)
        .map(|i| txt("big.kit.example.test.", &format!("{i:02}-{}", "x".repeat(57))))
        .collect();
    udp.add(&zone, &many).await.expect("a large add");
    assert_eq!(txts(&named, "big.kit.example.test.").len(), 40);

    // An hmac-sha1 key (BIND setups still have them).
    let sha1 = client(&named, "sha1-key", TsigAlgorithm::HmacSha1, SHA1_SECRET);
    sha1.add(&zone, &[txt("sha1.kit.example.test.", "v")])
        .await
        .expect("sha1 add");
    assert_eq!(txts(&named, "sha1.kit.example.test."), ["v"]);

    // Refusals, typed.
    let wrong = client(&named, KEY, TsigAlgorithm::HmacSha256, b"not the secret");
    let e = wrong
        .add(&zone, &[txt("x.kit.example.test.", "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UpdateError::NotAuth {
                tsig_error: Some(TsigError::BadSig),
                rcode: ResponseCode::NotAuth,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("BADSIG"), "{e}");
    let unknown = client(&named, "no-such-key", TsigAlgorithm::HmacSha256, SECRET);
    let e = unknown
        .add(&zone, &[txt("x.kit.example.test.", "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            UpdateError::NotAuth {
                tsig_error: Some(TsigError::BadKey),
                ..
            }
        ),
        "{e:?}"
    );
    let other = client(&named, "other-key", TsigAlgorithm::HmacSha256, OTHER_SECRET);
    let e = other
        .add(&zone, &[txt("x.kit.example.test.", "v")])
        .await
        .unwrap_err();
    assert_eq!(e.reason(), "Refused", "{e}");
    assert_eq!(e.rcode(), Some(ResponseCode::Refused));
    assert!(!e.is_transient());
    let outside = udp.add(&zone, &[txt("x.other.test.", "v")]).await.unwrap_err();
    assert_eq!(outside.reason(), "Invalid", "{outside}");
    assert!(txts(&named, "x.kit.example.test.").is_empty());

    // named down: Unreachable (TCP refused) or Timeout, within the request timeout.
    named.stop();
    let started = Instant::now();
    let e = udp.add(&zone, &[txt(owner, "v")]).await.unwrap_err();
    assert!(
        matches!(e, UpdateError::Unreachable { .. } | UpdateError::Timeout { .. }),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
