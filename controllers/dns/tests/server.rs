//! The embedded server against the real `dig` (Debian package bind9-dnsutils), on 127.0.0.1 and a free
//! port: every record type over UDP and TCP, negative answers, wildcards, REFUSED, EDNS, truncation with
//! the TCP retry, snapshot swaps, TCP framing/idle/cap, and the query metrics.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ferrite_dns::resolve::ZoneSet;
use ferrite_dns::server::{Server, ServerConfig};
use ferrite_dns::zone::{SoaConfig, Zone, ZoneConfig};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use prometheus::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APEX: &str = "example.test.";

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap_or_else(|err| panic!("test name {text:?}: {err}"))
}

/// A record from `owner ttl TYPE rdata`.
fn record(line: &str) -> Record {
    let mut parts = line.splitn(4, ' ');
    let (Some(owner), Some(ttl), Some(rtype), Some(rdata)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("test record {line:?}: want `owner ttl TYPE rdata`");
    };
    let rtype = RecordType::from_str(rtype).unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
    let ttl = ttl
        .parse()
        .unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
    let rdata = RData::try_from_str(rtype, rdata).unwrap_or_else(|err| panic!("test record {line:?}: {err}"));
    Record::from_rdata(name(owner), ttl, rdata)
}

/// `example.test.`: SOA TTL 3600 and MINIMUM 300 (negative answers carry 300), one of each type, a
/// wildcard, a TXT RRset of 30 x 100 bytes (too big for any UDP answer) and one of 6 (over 512, under
/// 1232). `www_v4` is the address of `www`, to see a swap.
fn zones(www_v4: &str) -> ZoneSet {
    let config = ZoneConfig {
        apex: name(APEX),
        soa: SoaConfig {
            mname: name("ns1.example.test."),
            rname: name("hostmaster.example.test."),
            serial: 7,
            refresh: 3600,
            retry: 300,
            expire: 3_600_000,
            minimum: 300,
            ttl: 3600,
        },
        nameservers: vec![name("ns1.example.test.")],
        ns_ttl: 3600,
    };
    let mut records: Vec<Record> = [
        "ns1.example.test. 3600 A 192.0.2.53",
        &format!("www.example.test. 300 A {www_v4}"),
        "www.example.test. 300 AAAA 2001:db8::10",
        "alias.example.test. 300 CNAME www.example.test.",
        "txt.example.test. 300 TXT hello",
        "_sip._tcp.example.test. 300 SRV 10 20 5060 sip.example.test.",
        "sip.example.test. 300 A 192.0.2.20",
        "example.test. 300 MX 10 mail.example.test.",
        "mail.example.test. 300 A 192.0.2.25",
        "example.test. 300 CAA 0 issue \"ca.example.net\"",
        "*.wild.example.test. 300 A 192.0.2.99",
    ]
    .into_iter()
    .map(record)
    .collect();
    for index in 0..30 {
        records.push(record(&format!(
            "big.example.test. 300 TXT {index:02}{}",
            "x".repeat(98)
        )));
    }
    for index in 0..6 {
        records.push(record(&format!(
            "medium.example.test. 300 TXT {index:02}{}",
            "y".repeat(98)
        )));
    }
    let zone = Zone::build(&config, records).unwrap_or_else(|err| panic!("zone: {err}"));
    ZoneSet::new([Arc::new(zone)]).unwrap_or_else(|err| panic!("zone set: {err}"))
}

fn start(config: ServerConfig) -> (Server, Registry) {
    let registry = Registry::new();
    let server =
        Server::start(&config, zones("192.0.2.10"), &registry).unwrap_or_else(|err| panic!("server: {err}"));
    (server, registry)
}

fn local_config() -> ServerConfig {
    let mut config = ServerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.udp_workers = 2;
    config
}

/// What `dig` printed, split up.
#[derive(Debug)]
struct Dig {
    status: String,
    flags: Vec<String>,
    answer: Vec<String>,
    authority: Vec<String>,
    additional: Vec<String>,
    /// The `; EDNS: ...` line of the OPT pseudosection.
    edns: Option<String>,
    raw: String,
}

impl Dig {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|have| have == flag)
    }
}

/// Runs `dig @addr -p port +time=2 +tries=1 <args>`.
async fn dig(addr: SocketAddr, args: &[&str]) -> Dig {
    let mut command = tokio::process::Command::new("dig");
    command
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args);
    let output = match tokio::time::timeout(Duration::from_secs(30), command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => panic!(
            "`dig` is not installed: these tests query the server with it. Install it with \
             `apt-get install -y bind9-dnsutils` (e2e/scripts/install-deps.sh does)"
        ),
        Ok(Err(err)) => panic!("dig {args:?}: {err}"),
        Err(_) => panic!("dig {args:?} did not finish in 30 s"),
    };
    let raw = String::from_utf8_lossy(&output.stdout).into_owned();
    parse_dig(raw)
}

fn parse_dig(raw: String) -> Dig {
    let mut dig = Dig {
        status: String::new(),
        flags: Vec::new(),
        answer: Vec::new(),
        authority: Vec::new(),
        additional: Vec::new(),
        edns: None,
        raw: String::new(),
    };
    let mut section: Option<&str> = None;
    for line in raw.lines() {
        if let Some((_, rest)) = line.split_once("status: ") {
            dig.status = rest.split(',').next().unwrap_or_default().to_string();
            // A retry over TCP prints a second header: the last one counts.
            dig.flags.clear();
            dig.answer.clear();
            dig.authority.clear();
            dig.additional.clear();
            dig.edns = None;
        } else if let Some(rest) = line.strip_prefix(";; flags:") {
            let flags = rest.split(';').next().unwrap_or_default();
            dig.flags = flags.split_whitespace().map(str::to_string).collect();
        } else if line.starts_with("; EDNS:") {
            dig.edns = Some(line.to_string());
        } else if line.starts_with(";; ANSWER SECTION:") {
            section = Some("answer");
        } else if line.starts_with(";; AUTHORITY SECTION:") {
            section = Some("authority");
        } else if line.starts_with(";; ADDITIONAL SECTION:") {
            section = Some("additional");
        } else if line.trim().is_empty() {
            section = None;
        } else if let Some(section) = section
            && !line.starts_with(';')
        {
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                "answer" => dig.answer.push(line),
                "authority" => dig.authority.push(line),
                _ => dig.additional.push(line),
            }
        }
    }
    dig.raw = raw;
    dig
}

const TRANSPORTS: [&str; 2] = ["+notcp", "+tcp"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_type_over_udp_and_tcp() {
    let (server, _registry) = start(local_config());
    let addr = server.local_addr();
    let soa = "example.test. 3600 IN SOA ns1.example.test. hostmaster.example.test. 7 3600 300 3600000 300";
    // (name, type, answer, additional)
    let cases: [(&str, &str, &[&str], &[&str]); 11] = [
        (
            "www.example.test.",
            "A",
            &["www.example.test. 300 IN A 192.0.2.10"],
            &[],
        ),
        (
            "www.example.test.",
            "AAAA",
            &["www.example.test. 300 IN AAAA 2001:db8::10"],
            &[],
        ),
        (
            "alias.example.test.",
            "CNAME",
            &["alias.example.test. 300 IN CNAME www.example.test."],
            &[],
        ),
        (
            "alias.example.test.",
            "A",
            &[
                "alias.example.test. 300 IN CNAME www.example.test.",
                "www.example.test. 300 IN A 192.0.2.10",
            ],
            &[],
        ),
        (
            "txt.example.test.",
            "TXT",
            &["txt.example.test. 300 IN TXT \"hello\""],
            &[],
        ),
        (
            "_sip._tcp.example.test.",
            "SRV",
            &["_sip._tcp.example.test. 300 IN SRV 10 20 5060 sip.example.test."],
            &["sip.example.test. 300 IN A 192.0.2.20"],
        ),
        (
            "example.test.",
            "MX",
            &["example.test. 300 IN MX 10 mail.example.test."],
            &["mail.example.test. 300 IN A 192.0.2.25"],
        ),
        (
            "example.test.",
            "CAA",
            &["example.test. 300 IN CAA 0 issue \"ca.example.net\""],
            &[],
        ),
        ("example.test.", "SOA", &[soa], &[]),
        (
            "example.test.",
            "NS",
            &["example.test. 3600 IN NS ns1.example.test."],
            &["ns1.example.test. 3600 IN A 192.0.2.53"],
        ),
        (
            "WWW.Example.TEST.",
            "A",
            &["WWW.Example.TEST. 300 IN A 192.0.2.10"],
            &[],
        ),
    ];
    for transport in TRANSPORTS {
        for (qname, qtype, answer, additional) in cases {
            let got = dig(addr, &[transport, qname, qtype]).await;
            let case = format!("{qname} {qtype} {transport}");
            assert_eq!(got.status, "NOERROR", "{case}:\n{}", got.raw);
            assert!(got.has_flag("aa") && got.has_flag("qr"), "{case}:\n{}", got.raw);
            assert!(got.has_flag("rd"), "{case}: RD copied:\n{}", got.raw);
            assert!(!got.has_flag("ra") && !got.has_flag("tc"), "{case}:\n{}", got.raw);
            assert_eq!(
                got.answer.iter().map(String::as_str).collect::<Vec<_>>(),
                answer,
                "{case}:\n{}",
                got.raw
            );
            assert!(
                got.authority.is_empty(),
                "{case}: no NS in positive answers:\n{}",
                got.raw
            );
            assert_eq!(
                got.additional.iter().map(String::as_str).collect::<Vec<_>>(),
                additional,
                "{case}:\n{}",
                got.raw
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_answers_wildcards_and_refused() {
    let (server, _registry) = start(local_config());
    let addr = server.local_addr();
    // RFC 2308: TTL min(SOA TTL 3600, MINIMUM 300).
    let negative_soa =
        "example.test. 300 IN SOA ns1.example.test. hostmaster.example.test. 7 3600 300 3600000 300";
    for transport in TRANSPORTS {
        let nxdomain = dig(addr, &[transport, "nope.example.test.", "A"]).await;
        assert_eq!(nxdomain.status, "NXDOMAIN", "{transport}:\n{}", nxdomain.raw);
        assert!(nxdomain.has_flag("aa"), "{}", nxdomain.raw);
        assert!(nxdomain.answer.is_empty(), "{}", nxdomain.raw);
        assert_eq!(nxdomain.authority, [negative_soa], "{}", nxdomain.raw);

        let nodata = dig(addr, &[transport, "www.example.test.", "MX"]).await;
        assert_eq!(nodata.status, "NOERROR", "{transport}:\n{}", nodata.raw);
        assert!(nodata.has_flag("aa"), "{}", nodata.raw);
        assert!(nodata.answer.is_empty(), "{}", nodata.raw);
        assert_eq!(nodata.authority, [negative_soa], "{}", nodata.raw);

        // An empty non-terminal exists: NODATA, not NXDOMAIN.
        let ent = dig(addr, &[transport, "_tcp.example.test.", "A"]).await;
        assert_eq!(ent.status, "NOERROR", "{}", ent.raw);
        assert_eq!(ent.authority, [negative_soa], "{}", ent.raw);

        let wildcard = dig(addr, &[transport, "anything.wild.example.test.", "A"]).await;
        assert_eq!(wildcard.status, "NOERROR", "{}", wildcard.raw);
        assert!(wildcard.has_flag("aa"), "{}", wildcard.raw);
        assert_eq!(
            wildcard.answer,
            ["anything.wild.example.test. 300 IN A 192.0.2.99"],
            "{}",
            wildcard.raw
        );
        let wildcard_nodata = dig(addr, &[transport, "anything.wild.example.test.", "TXT"]).await;
        assert_eq!(wildcard_nodata.status, "NOERROR", "{}", wildcard_nodata.raw);
        assert!(wildcard_nodata.answer.is_empty(), "{}", wildcard_nodata.raw);
        assert_eq!(
            wildcard_nodata.authority,
            [negative_soa],
            "{}",
            wildcard_nodata.raw
        );

        let refused = dig(addr, &[transport, "www.example.org.", "A"]).await;
        assert_eq!(refused.status, "REFUSED", "{transport}:\n{}", refused.raw);
        assert!(!refused.has_flag("aa"), "{}", refused.raw);
        assert!(
            refused.answer.is_empty() && refused.authority.is_empty(),
            "{}",
            refused.raw
        );
    }
    // Zone transfers need a TSIG key of the transfer ACL (none here): over TCP (dig always uses TCP for
    // AXFR) REFUSED (tests/transfer.rs covers signed transfers).
    let axfr = dig(addr, &["example.test.", "AXFR"]).await;
    assert!(axfr.raw.contains("Transfer failed"), "{}", axfr.raw);
    assert!(!axfr.raw.contains("192.0.2.10"), "{}", axfr.raw);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_and_truncation() {
    let (server, registry) = start(local_config());
    let addr = server.local_addr();

    // OPT answered with ours (1232) when the query has one (dig sends one by default), absent otherwise.
    let with = dig(addr, &["www.example.test.", "A"]).await;
    let edns = with
        .edns
        .as_deref()
        .unwrap_or_else(|| panic!("no OPT:\n{}", with.raw));
    assert!(
        edns.contains("version: 0") && edns.contains("udp: 1232"),
        "{edns}"
    );
    let without = dig(addr, &["+noedns", "www.example.test.", "A"]).await;
    assert_eq!(without.status, "NOERROR", "{}", without.raw);
    assert!(without.edns.is_none(), "{}", without.raw);
    assert_eq!(without.answer.len(), 1, "{}", without.raw);
    let badvers = dig(addr, &["+edns=1", "+noednsnegotiation", "www.example.test.", "A"]).await;
    assert_eq!(badvers.status, "BADVERS", "{}", badvers.raw);
    assert!(badvers.answer.is_empty(), "{}", badvers.raw);

    // ~700 bytes: over 512, under 1232.
    // (args, truncated)
    let medium: [(&[&str], bool); 4] = [
        (&["+noedns"], true),
        (&["+bufsize=512"], true),
        (&["+bufsize=1232"], false),
        (&["+bufsize=4096"], false),
    ];
    for (args, truncated) in medium {
        let mut all = vec!["+notcp", "+ignore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["medium.example.test.", "TXT"]);
        let got = dig(addr, &all).await;
        assert_eq!(got.has_flag("tc"), truncated, "{args:?}:\n{}", got.raw);
        if truncated {
            assert!(got.answer.is_empty(), "{args:?}: no partial RRset:\n{}", got.raw);
            assert_eq!(got.status, "NOERROR", "{args:?}:\n{}", got.raw);
            assert!(got.has_flag("aa"), "{args:?}:\n{}", got.raw);
        } else {
            assert_eq!(got.answer.len(), 6, "{args:?}:\n{}", got.raw);
        }
    }

    // ~3,300 bytes: over every UDP limit.
    let truncated = dig(addr, &["+notcp", "+ignore", "big.example.test.", "TXT"]).await;
    assert!(truncated.has_flag("tc"), "{}", truncated.raw);
    assert!(
        truncated.answer.is_empty(),
        "no partial RRset:\n{}",
        truncated.raw
    );
    // Without +ignore dig retries over TCP and gets all of it.
    let retried = dig(addr, &["+notcp", "big.example.test.", "TXT"]).await;
    assert!(
        retried.raw.contains("Truncated, retrying in TCP mode"),
        "{}",
        retried.raw
    );
    assert!(!retried.has_flag("tc"), "{}", retried.raw);
    assert_eq!(retried.answer.len(), 30, "{}", retried.raw);
    assert!(
        retried
            .answer
            .iter()
            .all(|line| line.starts_with("big.example.test. 300 IN TXT"))
    );

    let families = registry.gather();
    let truncations = counter(&families, "ferrite_dns_truncated_responses_total", &[]);
    assert_eq!(truncations, 4, "two medium, two big");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_is_seen_by_the_next_query_and_queries_are_counted() {
    let (server, registry) = start(local_config());
    let addr = server.local_addr();
    for transport in TRANSPORTS {
        let before = dig(addr, &[transport, "www.example.test.", "A"]).await;
        assert_eq!(
            before.answer,
            ["www.example.test. 300 IN A 192.0.2.10"],
            "{}",
            before.raw
        );
    }
    server.swap(zones("192.0.2.11"));
    for transport in TRANSPORTS {
        let after = dig(addr, &[transport, "www.example.test.", "A"]).await;
        assert_eq!(
            after.answer,
            ["www.example.test. 300 IN A 192.0.2.11"],
            "{}",
            after.raw
        );
    }
    // From a handle, as the reconciler does.
    let handle = server.handle();
    handle.swap(zones("192.0.2.12"));
    assert!(handle.current().find(&name("www.example.test.")).is_some());
    let again = dig(addr, &["www.example.test.", "A"]).await;
    assert_eq!(
        again.answer,
        ["www.example.test. 300 IN A 192.0.2.12"],
        "{}",
        again.raw
    );
    let _ = dig(addr, &["nope.example.test.", "A"]).await;
    let _ = dig(addr, &["www.example.org.", "NAPTR"]).await;

    let families = registry.gather();
    let a = counter(
        &families,
        "ferrite_dns_queries_total",
        &[("qtype", "A"), ("rcode", "NOERROR")],
    );
    assert_eq!(a, 5);
    let nx = counter(
        &families,
        "ferrite_dns_queries_total",
        &[("qtype", "A"), ("rcode", "NXDOMAIN")],
    );
    assert_eq!(nx, 1);
    let other = counter(
        &families,
        "ferrite_dns_queries_total",
        &[("qtype", "OTHER"), ("rcode", "REFUSED")],
    );
    assert_eq!(other, 1);
    server.shutdown().await;
}

/// The value of one counter, by name and labels; 0 when absent.
fn counter(families: &[prometheus::proto::MetricFamily], name: &str, labels: &[(&str, &str)]) -> u64 {
    families
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|metric| {
            labels.iter().all(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|label| label.name() == *key && label.value() == *value)
            })
        })
        .map(|metric| metric.get_counter().value() as u64)
        .sum()
}

fn query_bytes(id: u16, qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(name(qname), qtype));
    message.to_vec().unwrap_or_else(|err| panic!("query: {err}"))
}

async fn send_framed(stream: &mut TcpStream, message: &[u8]) {
    let len = u16::try_from(message.len()).unwrap_or_else(|err| panic!("{err}"));
    let mut frame = len.to_be_bytes().to_vec();
    frame.extend_from_slice(message);
    stream
        .write_all(&frame)
        .await
        .unwrap_or_else(|err| panic!("write: {err}"));
}

async fn read_framed(stream: &mut TcpStream) -> Message {
    let mut prefix = [0u8; 2];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut prefix)).await;
    assert!(matches!(read, Ok(Ok(_))), "no response: {read:?}");
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut body)).await;
    assert!(matches!(read, Ok(Ok(_))), "short response: {read:?}");
    Message::from_vec(&body).unwrap_or_else(|err| panic!("response: {err}"))
}

/// True when the server closed the connection (EOF) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(within, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_pipelining_idle_timeout_and_connection_cap() {
    let mut config = local_config();
    // Long enough that the first connection is still open when the second one comes, on a loaded CI box.
    config.tcp_idle_timeout = Duration::from_secs(2);
    config.tcp_max_connections = 1;
    let (server, registry) = start(config);
    let addr = server.local_addr();

    // Several queries on one connection, sent back to back, answered in order; a big answer complete.
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect: {err}"));
    send_framed(&mut stream, &query_bytes(1, "www.example.test.", RecordType::A)).await;
    send_framed(&mut stream, &query_bytes(2, "big.example.test.", RecordType::TXT)).await;
    send_framed(&mut stream, &query_bytes(3, "example.test.", RecordType::AXFR)).await;
    let first = read_framed(&mut stream).await;
    assert_eq!((first.id, first.answers.len()), (1, 1));
    let second = read_framed(&mut stream).await;
    assert_eq!(
        (second.id, second.answers.len(), second.truncation),
        (2, 30, false)
    );
    let third = read_framed(&mut stream).await;
    assert_eq!(
        (third.id, third.response_code),
        (3, ResponseCode::Refused),
        "AXFR over TCP without TSIG"
    );

    // The cap is 1: a second connection is closed at once and counted.
    let mut extra = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect: {err}"));
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "second connection kept open"
    );
    let rejected = counter(
        &registry.gather(),
        "ferrite_dns_tcp_connections_rejected_total",
        &[],
    );
    assert_eq!(rejected, 1);

    // Idle for longer than 2 s: closed.
    assert!(
        closed_within(&mut stream, Duration::from_secs(6)).await,
        "idle connection kept open"
    );
    // The slot is free again.
    let mut next = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connect: {err}"));
    send_framed(&mut next, &query_bytes(4, "www.example.test.", RecordType::AAAA)).await;
    let fourth = read_framed(&mut next).await;
    assert_eq!((fourth.id, fourth.answers.len()), (4, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_rules_from_a_raw_client() {
    let (server, registry) = start(local_config());
    let addr = server.local_addr();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|err| panic!("bind: {err}"));
    let mut buffer = vec![0u8; 65535];

    // AXFR over UDP: FORMERR, as BIND.
    let axfr = query_bytes(5, "example.test.", RecordType::AXFR);
    socket
        .send_to(&axfr, addr)
        .await
        .unwrap_or_else(|err| panic!("send: {err}"));
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no answer to AXFR over UDP"))
        .unwrap_or_else(|err| panic!("recv: {err}"));
    let response = Message::from_vec(&buffer[..len]).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!((response.id, response.response_code), (5, ResponseCode::FormErr));

    // A response (QR=1) and a runt are never answered; the next query still is.
    let mut reflected = query_bytes(6, "www.example.test.", RecordType::A);
    reflected[2] |= 0x80;
    socket
        .send_to(&reflected, addr)
        .await
        .unwrap_or_else(|err| panic!("send: {err}"));
    socket
        .send_to(&[0u8; 5], addr)
        .await
        .unwrap_or_else(|err| panic!("send: {err}"));
    socket
        .send_to(&query_bytes(7, "www.example.test.", RecordType::A), addr)
        .await
        .unwrap_or_else(|err| panic!("send: {err}"));
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no answer"))
        .unwrap_or_else(|err| panic!("recv: {err}"));
    let response = Message::from_vec(&buffer[..len]).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(response.id, 7, "the QR=1 message and the runt got no answer");
    let families = registry.gather();
    assert_eq!(
        counter(
            &families,
            "ferrite_dns_dropped_queries_total",
            &[("reason", "response")]
        ),
        1
    );
    assert_eq!(
        counter(
            &families,
            "ferrite_dns_dropped_queries_total",
            &[("reason", "malformed")]
        ),
        1
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_settings_and_busy_ports_are_clear_errors() {
    let (server, _registry) = start(local_config());
    let mut config = local_config();
    config.listen = server.local_addr();
    // The UDP sockets use SO_REUSEPORT, so the busy port shows on TCP.
    let err = Server::start(&config, zones("192.0.2.10"), &Registry::new())
        .err()
        .unwrap_or_else(|| panic!("a second server on a port in use started"));
    assert_eq!(err.reason(), "BindFailed", "{err}");
    assert!(
        err.to_string().contains(&server.local_addr().to_string()),
        "{err}"
    );

    let mut small = local_config();
    small.udp_payload = 400;
    let err = Server::start(&small, zones("192.0.2.10"), &Registry::new())
        .err()
        .unwrap_or_else(|| panic!("payload 400 accepted"));
    assert_eq!(err.reason(), "BadConfig", "{err}");

    // One registry, two servers: the metrics cannot be registered twice.
    let registry = Registry::new();
    let first = Server::start(&local_config(), zones("192.0.2.10"), &registry)
        .unwrap_or_else(|err| panic!("server: {err}"));
    let err = Server::start(&local_config(), zones("192.0.2.10"), &registry)
        .err()
        .unwrap_or_else(|| panic!("metrics registered twice"));
    assert_eq!(err.reason(), "MetricsFailed", "{err}");
    first.shutdown().await;
    server.shutdown().await;
}
