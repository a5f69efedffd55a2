//! Zone transfers from the embedded server into a real `named` (Debian's bind9) configured as a
//! SECONDARY, and into a real Knot DNS (`knotd`, Debian's knot) with the configuration docs/dns.md shows: TSIG-signed AXFR on load, NOTIFY on a new serial and the IXFR that follows, and the refusals
//! (unsigned, wrong secret, unknown key). `named` is started by this test on 127.0.0.1 with its own
//! configuration in a temporary directory and stopped by its PID; one `named` for this test binary.
//!
//! Needs `named`, `dig` and `knotd`: `apt-get install -y bind9 bind9-dnsutils knot` (e2e/scripts/install-deps.sh
//! installs them). Run: `cargo test -p ferrite-dns --test transfer`.

mod common;
use common::*;
use std::net::SocketAddr;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ferrite_dns::resolve::ZoneSet;
use ferrite_dns::rfc2136::{Rfc2136Client, Rfc2136Error, Timeouts, TsigAlgorithm};
use ferrite_dns::server::{Server, ServerConfig};
use ferrite_dns::transfer::{Secondary, TransferConfig, next_serial};
use ferrite_dns::tsig::TsigKey;
use ferrite_dns::tsig::sign_request;
use ferrite_dns::zone::{SoaConfig, Zone, ZoneConfig};
use ferrite_e2e::Supervised;
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use prometheus::Registry;

const ZONE: &str = "xfr.example.test.";
const KEY: &str = "xfr-key";
const SECRET: &[u8] = b"ferrite-dns transfer test secret, 32+ bytes";
const WRONG_SECRET: &[u8] = b"not the secret the server knows";
/// Enough TXT records that an AXFR takes several messages (16 kB of records each).
const BULK: usize = 1500;

fn name(text: &str) -> Name {
    Name::from_str(text).unwrap_or_else(|err| panic!("name {text:?}: {err}"))
}

/// A record from `owner ttl TYPE rdata`.
fn record(line: &str) -> Record {
    let mut parts = line.splitn(4, ' ');
    let (Some(owner), Some(ttl), Some(rtype), Some(rdata)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("record {line:?}: want `owner ttl TYPE rdata`");
    };
    let rtype = RecordType::from_str(rtype).unwrap_or_else(|err| panic!("{line:?}: {err}"));
    let ttl = ttl.parse().unwrap_or_else(|err| panic!("{line:?}: {err}"));
    let rdata = RData::try_from_str(rtype, rdata).unwrap_or_else(|err| panic!("{line:?}: {err}"));
    Record::from_rdata(name(owner), ttl, rdata)
}

fn zones(serial: u32, lines: &[String]) -> ZoneSet {
    let config = ZoneConfig {
        apex: name(ZONE),
        soa: SoaConfig {
            mname: name("ns1.example.net."),
            rname: name("hostmaster.example.net."),
            serial,
            // Long timers: only NOTIFY makes the secondary look again within the test.
            refresh: 86_400,
            retry: 3600,
            expire: 3_600_000,
            minimum: 60,
            ttl: 300,
        },
        nameservers: vec![name("ns1.example.net."), name("ns2.example.net.")],
        ns_ttl: 3600,
    };
    let zone = Zone::build(&config, lines.iter().map(|line| record(line)))
        .unwrap_or_else(|err| panic!("zone: {err}"));
    ZoneSet::new([Arc::new(zone)]).unwrap_or_else(|err| panic!("zone set: {err}"))
}

fn first_records() -> Vec<String> {
    let mut lines: Vec<String> = [
        "www.xfr.example.test. 300 A 192.0.2.10",
        "www.xfr.example.test. 300 A 192.0.2.11",
        "www.xfr.example.test. 300 AAAA 2001:db8::10",
        "alias.xfr.example.test. 300 CNAME www.xfr.example.test.",
        "xfr.example.test. 300 MX 10 mail.xfr.example.test.",
        "mail.xfr.example.test. 300 A 192.0.2.25",
        "note.xfr.example.test. 300 TXT \"hello from ferrite\"",
        "_sip._tcp.xfr.example.test. 300 SRV 10 5 5060 sip.xfr.example.test.",
        "*.wild.xfr.example.test. 300 A 192.0.2.99",
        "xfr.example.test. 300 CAA 0 issue \"letsencrypt.org\"",
        "gone.xfr.example.test. 300 A 192.0.2.66",
    ]
    .iter()
    .map(|line| (*line).to_string())
    .collect();
    for index in 0..BULK {
        lines.push(format!(
            "bulk{index}.xfr.example.test. 300 TXT \"{index:05} {}\"",
            "x".repeat(30)
        ));
    }
    lines
}

/// The second snapshot: www's addresses changed, one name added, one removed, one TXT changed.
fn second_records() -> Vec<String> {
    first_records()
        .into_iter()
        .filter(|line| {
            !line.starts_with("gone.") && !line.starts_with("www.xfr.example.test. 300 A 192.0.2.11")
        })
        .map(|line| {
            if line.starts_with("note.") {
                "note.xfr.example.test. 300 TXT \"changed\"".to_string()
            } else {
                line
            }
        })
        .chain([
            "www.xfr.example.test. 300 A 192.0.2.12".to_string(),
            "new.xfr.example.test. 300 A 192.0.2.77".to_string(),
        ])
        .collect()
}

/// `dig @127.0.0.1 -p port +time=2 +tries=1 <args>`, its output.
async fn dig(port: u16, args: &[&str]) -> String {
    let mut command = tokio::process::Command::new("dig");
    command
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .stdin(Stdio::null());
    match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(Ok(output)) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Ok(Err(err)) => panic!("dig {args:?}: {err} (apt-get install -y bind9-dnsutils)"),
        Err(_) => panic!("dig {args:?} did not finish in 30 s"),
    }
}

/// `dig +short`, sorted lines.
async fn short(port: u16, qname: &str, rtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(port, &["+short", qname, rtype])
        .await
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

/// The secondary under test: a `named` (ferrite-e2e's) or a Knot DNS.
enum Peer {
    Named(Named),
    Knot {
        process: Supervised,
        port: u16,
        _dir: tempfile::TempDir,
    },
}

impl Peer {
    /// `named` on `port` as a secondary of `primary`, transfers signed with the test's key.
    fn named(port: u16, primary: SocketAddr) -> Peer {
        Peer::Named(
            Named::start(NamedConfig {
                port: Some(port),
                keys: vec![NamedKey::new(KEY, "hmac-sha256", SECRET)],
                zones: vec![NamedZone::secondary(ZONE, primary, KEY)],
                extra: "logging { category xfer-in { default_stderr; }; category notify { default_stderr; }; };\n"
                    .to_string(),
            })
            .expect("named starts"),
        )
    }

    /// Knot DNS (`knotd`, Debian's knot) as the secondary instead, with the docs' configuration.
    fn knot(port: u16, primary: SocketAddr) -> Peer {
        let knotd = require("knotd");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        let conf = format!(
            r#"server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
log:
  - target: stderr
    any: info
database:
    storage: "{d}"
key:
  - id: {KEY}
    algorithm: hmac-sha256
    secret: {secret}
remote:
  - id: ferrite
    address: {ip}@{primary_port}
    key: {KEY}
acl:
  - id: notify-from-ferrite
    address: {ip}
    key: {KEY}
    action: notify
zone:
  - domain: xfr.example.test
    storage: "{d}"
    master: ferrite
    acl: notify-from-ferrite
"#,
            secret = base64(SECRET),
            ip = primary.ip(),
            primary_port = primary.port(),
        );
        std::fs::write(dir.path().join("knot.conf"), conf).expect("write knot.conf");
        let args = [
            "-c".to_string(),
            dir.path().join("knot.conf").display().to_string(),
        ];
        let process = Supervised::spawn("knotd", &knotd, &args, &[], &dir.path().join("knot.log"))
            .expect("start knotd");
        Peer::Knot {
            process,
            port,
            _dir: dir,
        }
    }

    fn port(&self) -> u16 {
        match self {
            Peer::Named(n) => n.port(),
            Peer::Knot { port, .. } => *port,
        }
    }

    fn log(&self) -> String {
        match self {
            Peer::Named(n) => n.log(),
            Peer::Knot { process, .. } => process.log_tail(100_000),
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self {
            Peer::Named(n) => n.exited(),
            Peer::Knot { process, .. } => {
                (!process.is_running()).then(|| format!("knotd exited:\n{}", process.log_tail(200)))
            }
        }
    }

    /// Waits until `check` holds for what the peer answers, up to `limit`.
    async fn wait_for(&mut self, what: &str, limit: Duration, check: impl AsyncCheck) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(exited) = self.exited() {
                panic!("{exited}");
            }
            if check.holds(self.port()).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "secondary: {what} not seen within {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        match self {
            Peer::Named(n) => n.stop(),
            Peer::Knot { process, .. } => process.stop(Duration::from_secs(10)),
        }
    }
}

/// A condition on what a server at a port answers.
trait AsyncCheck {
    async fn holds(&self, port: u16) -> bool;
}

/// `dig +short qname rtype` equals `want` (sorted).
struct Answers<'a> {
    qname: &'a str,
    rtype: &'a str,
    want: Vec<String>,
}

impl AsyncCheck for Answers<'_> {
    async fn holds(&self, port: u16) -> bool {
        short(port, self.qname, self.rtype).await == self.want
    }
}

/// The SOA records in dig's answer.
fn soa_lines(out: &str) -> usize {
    out.lines()
        .filter(|line| !line.starts_with(';') && line.split_whitespace().nth(3) == Some("SOA"))
        .count()
}

/// A TSIG-signed IXFR over UDP for a client at `serial`; the answer.
async fn udp_ixfr(server: SocketAddr, key: &TsigKey, serial: u32) -> Message {
    let mut query = Message::query();
    query.add_query(Query::query(name(ZONE), RecordType::IXFR));
    query.authorities.push(Record::from_rdata(
        name(ZONE),
        0,
        RData::SOA(SOA::new(name("."), name("."), serial, 0, 0, 0, 0)),
    ));
    let mut bytes = query.to_vec().expect("encode");
    sign_request(&mut bytes, key).expect("sign");
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    socket.send_to(&bytes, server).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf))
        .await
        .expect("an answer within 3 s")
        .expect("receive");
    Message::from_vec(&buf[..len]).expect("parse the answer")
}

fn client(server: SocketAddr, key: &str, secret: &[u8]) -> Rfc2136Client {
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_secs(3),
        transfer: Duration::from_secs(10),
    };
    Rfc2136Client::new(server, ZONE, key, TsigAlgorithm::HmacSha256, secret, timeouts).expect("client")
}

/// The names and types compared between the embedded server and the secondary.
const COMPARED: &[(&str, &str)] = &[
    ("xfr.example.test.", "SOA"),
    ("xfr.example.test.", "NS"),
    ("xfr.example.test.", "MX"),
    ("xfr.example.test.", "CAA"),
    ("www.xfr.example.test.", "A"),
    ("www.xfr.example.test.", "AAAA"),
    ("alias.xfr.example.test.", "CNAME"),
    ("alias.xfr.example.test.", "A"),
    ("note.xfr.example.test.", "TXT"),
    ("_sip._tcp.xfr.example.test.", "SRV"),
    ("anything.wild.xfr.example.test.", "A"),
    ("gone.xfr.example.test.", "A"),
    ("new.xfr.example.test.", "A"),
    ("bulk0.xfr.example.test.", "TXT"),
    ("bulk1499.xfr.example.test.", "TXT"),
];

async fn same_answers(primary: u16, secondary: u16) {
    for (qname, rtype) in COMPARED {
        let ours = short(primary, qname, rtype).await;
        let theirs = short(secondary, qname, rtype).await;
        assert_eq!(ours, theirs, "{qname} {rtype}: embedded vs named secondary");
        // Status too (NXDOMAIN vs NOERROR).
        let status = |out: String| {
            out.lines()
                .find_map(|line| {
                    line.split_once("status: ")
                        .map(|(_, rest)| rest.split(',').next().unwrap_or_default().to_string())
                })
                .unwrap_or_default()
        };
        assert_eq!(
            status(dig(primary, &[qname, rtype]).await),
            status(dig(secondary, &[qname, rtype]).await),
            "{qname} {rtype}: status"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knot_secondary_serves_the_zone_and_follows_notify() {
    let knot_port = free_port();
    let key = TsigKey::new(KEY, TsigAlgorithm::HmacSha256, SECRET).expect("key");
    let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.udp_workers = 1;
    config.transfer = TransferConfig {
        keys: vec![key],
        secondaries: vec![Secondary {
            zone: name(ZONE),
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], knot_port))],
        }],
        notify_timeout: Duration::from_millis(500),
        ..TransferConfig::default()
    };
    let first_serial = 2_100_000_000;
    let server = Server::start(&config, zones(first_serial, &first_records()), &Registry::new())
        .unwrap_or_else(|err| panic!("start: {err}"));
    let primary = server.local_addr();
    let mut knot = Peer::knot(knot_port, primary);
    knot.wait_for(
        "the first serial",
        Duration::from_secs(30),
        Answers {
            qname: ZONE,
            rtype: "SOA",
            want: short(primary.port(), ZONE, "SOA").await,
        },
    )
    .await;
    same_answers(primary.port(), knot.port()).await;
    let second_serial = next_serial(first_serial, SystemTime::now());
    server.swap(zones(second_serial, &second_records()));
    knot.wait_for(
        "the new addresses after NOTIFY",
        Duration::from_secs(10),
        Answers {
            qname: "www.xfr.example.test.",
            rtype: "A",
            want: vec!["192.0.2.10".to_string(), "192.0.2.12".to_string()],
        },
    )
    .await;
    same_answers(primary.port(), knot.port()).await;
    let log = knot.log();
    assert!(log.to_lowercase().contains("notify"), "{log}");
    // Incremental: Knot says "AXFR-style IXFR" when it gets the full form instead.
    assert!(
        log.contains("IXFR, incoming") && log.contains("finished"),
        "{log}"
    );
    assert!(!log.contains("AXFR-style"), "{log}");
    knot.stop();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_secondary_serves_the_zone_and_follows_notify() {
    let named_port = free_port();
    let key = TsigKey::new(KEY, TsigAlgorithm::HmacSha256, SECRET).expect("key");
    let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.udp_workers = 1;
    config.transfer = TransferConfig {
        keys: vec![key],
        secondaries: vec![Secondary {
            zone: name(ZONE),
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], named_port))],
        }],
        notify_timeout: Duration::from_millis(500),
        ..TransferConfig::default()
    };
    let first_serial = 2_000_000_000;
    let server = Server::start(&config, zones(first_serial, &first_records()), &Registry::new())
        .unwrap_or_else(|err| panic!("start: {err}"));
    let primary = server.local_addr();

    // Refused before named ever asks: unsigned, a wrong secret, an unknown key.
    let unsigned = dig(primary.port(), &["+tcp", ZONE, "AXFR"]).await;
    assert!(unsigned.contains("Transfer failed"), "{unsigned}");
    assert!(!unsigned.contains("192.0.2.10"), "{unsigned}");
    let wrong = dig(
        primary.port(),
        &[
            "-y",
            &format!("hmac-sha256:{KEY}:{}", base64(WRONG_SECRET)),
            ZONE,
            "AXFR",
        ],
    )
    .await;
    assert!(!wrong.contains("192.0.2.10"), "{wrong}");
    let err = client(primary, KEY, WRONG_SECRET)
        .read_zone()
        .await
        .expect_err("wrong secret");
    assert!(matches!(err, Rfc2136Error::NotAuth { .. }), "{err}");
    assert!(err.to_string().contains("BADSIG"), "{err}");
    let err = client(primary, "other-key", SECRET)
        .read_zone()
        .await
        .expect_err("unknown key");
    assert!(err.to_string().contains("BADKEY"), "{err}");
    // Signed with the key: the whole zone, every message verified (RFC 8945 chaining) by our client.
    let records = client(primary, KEY, SECRET)
        .read_zone()
        .await
        .expect("signed AXFR");
    assert!(records.len() > BULK, "{} records", records.len());
    assert_eq!(
        records
            .iter()
            .filter(|r| r.record_type() == RecordType::SOA)
            .count(),
        1
    );
    let signed = dig(
        primary.port(),
        &[
            "-y",
            &format!("hmac-sha256:{KEY}:{}", base64(SECRET)),
            ZONE,
            "AXFR",
        ],
    )
    .await;
    assert!(
        signed.contains("192.0.2.10") && signed.contains("bulk1499."),
        "{signed}"
    );
    assert!(
        !signed.contains("Transfer failed") && !signed.contains("tsig"),
        "{signed}"
    );

    // The secondary loads the zone by AXFR and answers as the embedded server does.
    let mut named = Peer::named(named_port, primary);
    named
        .wait_for(
            "the first serial",
            Duration::from_secs(30),
            Answers {
                qname: ZONE,
                rtype: "SOA",
                want: short(primary.port(), ZONE, "SOA").await,
            },
        )
        .await;
    same_answers(primary.port(), named.port()).await;

    // A new snapshot with a bumped serial: NOTIFY, then the secondary's IXFR, then the new answers.
    let second_serial = next_serial(first_serial, SystemTime::now());
    assert!(second_serial > first_serial);
    server.swap(zones(second_serial, &second_records()));
    let started = Instant::now();
    named
        .wait_for(
            "the new addresses after NOTIFY",
            Duration::from_secs(10),
            Answers {
                qname: "www.xfr.example.test.",
                rtype: "A",
                want: vec!["192.0.2.10".to_string(), "192.0.2.12".to_string()],
            },
        )
        .await;
    eprintln!("secondary up to date {:?} after the swap", started.elapsed());
    same_answers(primary.port(), named.port()).await;
    let log = named.log();
    assert!(log.contains("received notify"), "{log}");
    // The refresh was incremental: the IXFR form holds the current SOA, the old SOA, the 3 deleted
    // records (www's .11, gone, the old note), the new SOA, the 3 added ones (www's .12, new, the new
    // note) and the current SOA again; a full transfer would hold every record.
    let last = log
        .lines()
        .rfind(|line| line.contains("Transfer completed"))
        .unwrap_or_else(|| panic!("no completed transfer in the log:\n{log}"));
    assert!(last.contains(" 10 records"), "not incremental: {last}");

    // IXFR asked directly, signed. Over UDP: the current SOA alone, with TC=1 when the client is behind.
    let y = format!("hmac-sha256:{KEY}:{}", base64(SECRET));
    let key = TsigKey::new(KEY, TsigAlgorithm::HmacSha256, SECRET).expect("key");
    let current = udp_ixfr(primary, &key, second_serial).await;
    assert_eq!(
        (current.answers.len(), current.truncation),
        (1, false),
        "{current:?}"
    );
    assert_eq!(current.answers[0].record_type(), RecordType::SOA);
    assert!(
        current.signature.is_some()
            || current
                .additionals
                .iter()
                .any(|r| r.record_type() == RecordType::TSIG)
    );
    let behind = udp_ixfr(primary, &key, first_serial).await;
    assert_eq!((behind.answers.len(), behind.truncation), (1, true), "{behind:?}");
    assert_eq!(behind.metadata.response_code, ResponseCode::NoError);
    // Over TCP: a known serial gets the incremental form, an unknown one the whole zone.
    let incremental = dig(primary.port(), &["-y", &y, &format!("ixfr={first_serial}"), ZONE]).await;
    assert_eq!(soa_lines(&incremental), 4, "{incremental}");
    assert!(
        incremental.contains("192.0.2.11") && incremental.contains("192.0.2.12"),
        "{incremental}"
    );
    assert!(!incremental.contains("bulk7."), "{incremental}");
    let unknown = dig(primary.port(), &["-y", &y, "ixfr=12345", ZONE]).await;
    assert_eq!(soa_lines(&unknown), 2, "{unknown}");
    assert!(
        unknown.contains("bulk1499.") && !unknown.contains("192.0.2.11"),
        "{unknown}"
    );
    // Unsigned IXFR: refused.
    let unsigned = dig(primary.port(), &[&format!("ixfr={first_serial}"), ZONE]).await;
    assert!(!unsigned.contains("192.0.2.12"), "{unsigned}");
    assert!(unsigned.contains("Transfer failed"), "{unsigned}");

    // A server without transfer keys refuses even a signed transfer.
    let mut closed = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    closed.udp_workers = 1;
    let closed = Server::start(&closed, zones(first_serial, &first_records()), &Registry::new())
        .unwrap_or_else(|err| panic!("start: {err}"));
    let refused = udp_ixfr(closed.local_addr(), &key, first_serial).await;
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused.answers.is_empty());
    closed.shutdown().await;

    named.stop();
    server.shutdown().await;
}
