//! The DNS-01 self-check, as cert-manager does it: the TXT record is looked up at the zone's
//! authoritative servers, which are found through the recursive resolvers.
//!
//! ```text
//!   _acme-challenge.www.example.com.   SOA?  (resolvers, RD=1)  NXDOMAIN           -> up one label
//!   www.example.com.                   SOA?                      NOERROR, no SOA   -> up one label
//!   example.com.                       SOA?                      SOA example.com.  -> the zone
//!   example.com.                       NS?                       ns1.example.net., ns2.example.net.
//!   ns1.example.net. / ns2...          A? AAAA?                  their addresses (port 53, or the override)
//!   _acme-challenge.www.example.com.   TXT? at every NS (RD=0)   every one must hold the value
//! ```
//!
//! With `recursive_only` (cert-manager's `--dns01-recursive-nameservers-only`) the TXT is asked of the
//! configured servers themselves, and one of them holding the value is enough (the behaviour before
//! authoritative discovery). A name whose SOA answer is a CNAME is skipped on the walk (a zone apex
//! cannot be a CNAME), as cert-manager does.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// One query's bound (UDP, then TCP when truncated).
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Most authoritative servers asked (a zone with more is checked at the first ones, in NS order).
const MAX_AUTHORITATIVE: usize = 8;

/// `name` as an absolute DNS name.
pub(crate) fn fqdn(name: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(name.trim_end_matches('.')).map_err(|e| format!("bad name {name}: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

/// Asks `server` for `name`/`rtype` with recursion desired or not (UDP, then TCP when the answer is
/// truncated), bounded by [`QUERY_TIMEOUT`].
pub async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recursion: bool,
) -> Result<Message, String> {
    let mut query = Message::query();
    query.metadata.recursion_desired = recursion;
    query.add_query(Query::query(name.clone(), rtype));
    let id = query.metadata.id;
    let wire = query.to_vec().map_err(|e| format!("encoding the query: {e}"))?;
    let ask = async {
        let bind: SocketAddr = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let sock = tokio::net::UdpSocket::bind(bind)
            .await
            .map_err(|e| e.to_string())?;
        sock.send_to(&wire, server).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        let msg = loop {
            let (n, from) = sock.recv_from(&mut buf).await.map_err(|e| e.to_string())?;
            if from != server {
                continue;
            }
            let m = Message::from_vec(&buf[..n]).map_err(|e| format!("bad answer: {e}"))?;
            if m.metadata.id == id {
                break m;
            }
        };
        if !msg.metadata.truncation {
            return Ok::<_, String>(msg);
        }
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let len = u16::try_from(wire.len()).map_err(|_| "query too long".to_string())?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&wire);
        s.write_all(&framed).await.map_err(|e| e.to_string())?;
        let mut lenb = [0u8; 2];
        s.read_exact(&mut lenb).await.map_err(|e| e.to_string())?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(lenb))];
        s.read_exact(&mut body).await.map_err(|e| e.to_string())?;
        Message::from_vec(&body).map_err(|e| format!("bad answer: {e}"))
    };
    tokio::time::timeout(QUERY_TIMEOUT, ask)
        .await
        .map_err(|_| format!("no answer in {}s", QUERY_TIMEOUT.as_secs()))?
}

/// The TXT values in an answer (each record's strings joined).
pub(crate) fn txt_values(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => {
                let v: Vec<u8> = txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                Some(String::from_utf8_lossy(&v).into_owned())
            }
            _ => None,
        })
        .collect()
}

/// Asks the resolvers in turn (recursion desired) and returns the first answer; the error of the last
/// one when none answers.
pub async fn resolve(resolvers: &[SocketAddr], name: &Name, rtype: RecordType) -> Result<Message, String> {
    let mut last = "no recursive nameservers configured".to_string();
    for r in resolvers {
        match query(*r, name, rtype, true).await {
            Ok(m) => return Ok(m),
            Err(e) => last = format!("{name} {rtype} at {r}: {e}"),
        }
    }
    Err(last)
}

/// The zone apex of `name`: the first name, walking up one label at a time from `name` itself, whose
/// SOA query answers NOERROR with an SOA in the answer section (cert-manager's `FindZoneByFqdn`).
/// NXDOMAIN and NODATA go up a label; a CNAME answer is skipped; any other rcode is an error.
/// `ask` is the SOA query (through the resolvers); it is a parameter so the walk is unit-tested.
pub async fn find_zone<F, Fut>(name: &Name, mut ask: F) -> Result<Name, String>
where
    F: FnMut(Name) -> Fut,
    Fut: Future<Output = Result<Message, String>>,
{
    let mut candidate = name.clone();
    candidate.set_fqdn(true);
    while !candidate.is_root() {
        let answer = ask(candidate.clone()).await?;
        let rcode = answer.metadata.response_code;
        if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
            return Err(format!("{candidate} SOA: the resolver answered {rcode}"));
        }
        if rcode == ResponseCode::NoError {
            let cname = answer
                .answers
                .iter()
                .any(|r| r.record_type() == RecordType::CNAME);
            if !cname && let Some(soa) = answer.answers.iter().find(|r| r.record_type() == RecordType::SOA) {
                return Ok(soa.name.clone());
            }
        }
        candidate = candidate.base_name();
    }
    Err(format!("no zone apex (SOA) found for {name}"))
}

/// The NS names of `zone` (through the resolvers), in answer order, at most [`MAX_AUTHORITATIVE`].
pub async fn zone_nameservers(resolvers: &[SocketAddr], zone: &Name) -> Result<Vec<Name>, String> {
    let answer = resolve(resolvers, zone, RecordType::NS).await?;
    let names = ns_names(&answer, zone);
    if names.is_empty() {
        return Err(format!(
            "{zone} NS: no nameservers ({})",
            answer.metadata.response_code
        ));
    }
    Ok(names)
}

/// The NS targets for `zone` in an answer: its answer section, else (a server that refers rather
/// than answers) its authority section.
fn ns_names(answer: &Message, zone: &Name) -> Vec<Name> {
    let from_answers = ns_in(&answer.answers, zone);
    if from_answers.is_empty() {
        ns_in(&answer.authorities, zone)
    } else {
        from_answers
    }
}

fn ns_in(records: &[hickory_proto::rr::Record], zone: &Name) -> Vec<Name> {
    let mut out: Vec<Name> = Vec::new();
    for r in records {
        if let RData::NS(ns) = &r.data
            && r.name == *zone
            && !out.contains(&ns.0)
        {
            out.push(ns.0.clone());
        }
    }
    out.truncate(MAX_AUTHORITATIVE);
    out
}

/// The A and AAAA addresses of `host` (through the resolvers), each with `port`.
pub async fn addresses(resolvers: &[SocketAddr], host: &Name, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut out = Vec::new();
    let mut last = None;
    for rtype in [RecordType::A, RecordType::AAAA] {
        match resolve(resolvers, host, rtype).await {
            Ok(m) => {
                for r in &m.answers {
                    let ip = match &r.data {
                        RData::A(a) => IpAddr::V4(a.0),
                        RData::AAAA(a) => IpAddr::V6(a.0),
                        _ => continue,
                    };
                    let a = SocketAddr::new(ip, port);
                    if !out.contains(&a) {
                        out.push(a);
                    }
                }
            }
            Err(e) => last = Some(e),
        }
    }
    if out.is_empty() {
        return Err(last.unwrap_or_else(|| format!("{host} has no A or AAAA record")));
    }
    Ok(out)
}

/// The zone's authoritative servers: each NS name with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authoritative {
    /// The zone apex found.
    pub zone: Name,
    /// NS name -> its addresses (port = the authoritative port).
    pub servers: Vec<(Name, Vec<SocketAddr>)>,
}

/// Finds the zone of `record` and its authoritative servers through `resolvers`; `port` is the port
/// the servers are asked on (53, overridable for tests).
pub async fn discover(resolvers: &[SocketAddr], record: &Name, port: u16) -> Result<Authoritative, String> {
    let zone = find_zone(record, |n| async move {
        resolve(resolvers, &n, RecordType::SOA).await
    })
    .await?;
    let mut servers = Vec::new();
    for ns in zone_nameservers(resolvers, &zone).await? {
        let addrs = addresses(resolvers, &ns, port)
            .await
            .map_err(|e| format!("nameserver {ns} of {zone}: {e}"))?;
        servers.push((ns, addrs));
    }
    Ok(Authoritative { zone, servers })
}

/// Every authoritative server holds `value` at `record` (each NS answers from one of its addresses,
/// tried in order; recursion not desired).
pub async fn check_authoritative(record: &Name, value: &str, auth: &Authoritative) -> Result<(), String> {
    for (ns, addrs) in &auth.servers {
        let mut seen = Err(format!("{record} TXT at {ns}: no address answered"));
        for a in addrs {
            match query(*a, record, RecordType::TXT, false).await {
                Ok(m) => {
                    let values = txt_values(&m);
                    seen = if values.iter().any(|v| v == value) {
                        Ok(())
                    } else {
                        Err(format!(
                            "{record} TXT at {ns} ({a}, authoritative for {}) has {} value(s), not the challenge's",
                            auth.zone,
                            values.len()
                        ))
                    };
                    break;
                }
                Err(e) => seen = Err(format!("{record} TXT at {ns} ({a}): {e}")),
            }
        }
        seen?;
    }
    Ok(())
}

/// One of `servers` holds `value` at `record` (asked with recursion desired): the check with
/// `recursive_only`.
pub async fn check_recursive(record: &Name, value: &str, servers: &[SocketAddr]) -> Result<(), String> {
    let mut last = "no nameservers configured".to_string();
    for s in servers {
        match query(*s, record, RecordType::TXT, true).await {
            Ok(m) => {
                let values = txt_values(&m);
                if values.iter().any(|v| v == value) {
                    return Ok(());
                }
                last = format!(
                    "{record} TXT at {s} has {} value(s), not the challenge's",
                    values.len()
                );
            }
            Err(e) => last = format!("{record} TXT at {s}: {e}"),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{A, CNAME, NS, SOA};
    use std::collections::HashMap;
    use std::sync::Mutex;

    fn n(s: &str) -> Name {
        fqdn(s).unwrap()
    }

    fn soa(zone: &str) -> Record {
        Record::from_rdata(
            n(zone),
            60,
            RData::SOA(SOA::new(
                n(&format!("ns1.{zone}")),
                n(&format!("hostmaster.{zone}")),
                1,
                3600,
                600,
                86400,
                60,
            )),
        )
    }

    /// What a resolver answers for `name SOA`.
    enum Ans {
        /// NOERROR with the SOA in the answer (a zone apex).
        Apex,
        /// NXDOMAIN with the zone's SOA in the authority section.
        NxDomain(&'static str),
        /// NOERROR, no answer, the SOA in the authority section (an empty non-terminal / other type).
        NoData(&'static str),
        /// NOERROR with a CNAME (and its target's SOA, as a resolver follows it).
        Cname(&'static str),
        /// Another rcode.
        Rcode(ResponseCode),
    }

    fn message(name: &Name, a: &Ans) -> Message {
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        match a {
            Ans::Apex => {
                m.add_answer(soa(&name.to_ascii()));
            }
            Ans::NxDomain(z) => {
                m.metadata.response_code = ResponseCode::NXDomain;
                m.add_authority(soa(z));
            }
            Ans::NoData(z) => {
                m.add_authority(soa(z));
            }
            Ans::Cname(target) => {
                m.add_answer(Record::from_rdata(
                    name.clone(),
                    60,
                    RData::CNAME(CNAME(n(target))),
                ));
                m.add_answer(soa(target));
            }
            Ans::Rcode(r) => m.metadata.response_code = *r,
        }
        m
    }

    /// Walks from `start` over the table (a name not in it: NXDOMAIN under the root); returns the
    /// result and the names asked, in order.
    async fn walk(start: &str, table: Vec<(&str, Ans)>) -> (Result<Name, String>, Vec<String>) {
        let table: HashMap<Name, Ans> = table.into_iter().map(|(k, v)| (n(k), v)).collect();
        let asked = Mutex::new(Vec::new());
        let r = find_zone(&n(start), |q| {
            asked.lock().unwrap().push(q.to_ascii());
            let m = message(&q, table.get(&q).unwrap_or(&Ans::NxDomain(".")));
            async move { Ok(m) }
        })
        .await;
        let asked = asked.into_inner().unwrap();
        (r, asked)
    }

    #[tokio::test]
    async fn walks_up_to_the_apex() {
        let (zone, asked) = walk(
            "_acme-challenge.www.shop.example.com",
            vec![
                (
                    "_acme-challenge.www.shop.example.com",
                    Ans::NxDomain("example.com"),
                ),
                ("www.shop.example.com", Ans::NoData("example.com")),
                ("shop.example.com", Ans::NoData("example.com")),
                ("example.com", Ans::Apex),
                ("com", Ans::Apex),
            ],
        )
        .await;
        assert_eq!(zone.unwrap(), n("example.com"));
        assert_eq!(
            asked,
            [
                "_acme-challenge.www.shop.example.com.",
                "www.shop.example.com.",
                "shop.example.com.",
                "example.com."
            ]
        );
    }

    #[tokio::test]
    async fn a_delegated_child_zone_is_its_own_apex() {
        let (zone, _) = walk(
            "_acme-challenge.app.dev.example.com",
            vec![
                (
                    "_acme-challenge.app.dev.example.com",
                    Ans::NxDomain("dev.example.com"),
                ),
                ("app.dev.example.com", Ans::NoData("dev.example.com")),
                ("dev.example.com", Ans::Apex),
                ("example.com", Ans::Apex),
            ],
        )
        .await;
        assert_eq!(zone.unwrap(), n("dev.example.com"));
    }

    #[tokio::test]
    async fn the_name_itself_can_be_the_apex() {
        let (zone, asked) = walk(
            "_acme-challenge.example.com",
            vec![("_acme-challenge.example.com", Ans::Apex)],
        )
        .await;
        assert_eq!(zone.unwrap(), n("_acme-challenge.example.com"));
        assert_eq!(asked.len(), 1);
    }

    #[tokio::test]
    async fn a_cname_is_skipped() {
        // _acme-challenge delegated by CNAME to another zone: the CNAME's owner is not an apex even
        // though the resolver also returns the target's SOA.
        let (zone, asked) = walk(
            "_acme-challenge.example.com",
            vec![
                ("_acme-challenge.example.com", Ans::Cname("acme.other.net")),
                ("example.com", Ans::Apex),
            ],
        )
        .await;
        assert_eq!(zone.unwrap(), n("example.com"));
        assert_eq!(asked, ["_acme-challenge.example.com.", "example.com."]);
    }

    #[tokio::test]
    async fn servfail_and_refused_are_errors() {
        for rcode in [ResponseCode::ServFail, ResponseCode::Refused] {
            let (zone, asked) = walk(
                "_acme-challenge.a.example.com",
                vec![
                    ("_acme-challenge.a.example.com", Ans::NxDomain("example.com")),
                    ("a.example.com", Ans::Rcode(rcode)),
                    ("example.com", Ans::Apex),
                ],
            )
            .await;
            let e = zone.unwrap_err();
            assert!(
                e.contains("a.example.com.") && e.contains(&rcode.to_string()),
                "{e}"
            );
            assert_eq!(asked.len(), 2, "stops at the error");
        }
    }

    #[tokio::test]
    async fn no_soa_anywhere_is_an_error_not_a_loop() {
        let (zone, asked) = walk("_acme-challenge.a.b.test", vec![]).await;
        let e = zone.unwrap_err();
        assert!(e.contains("no zone apex"), "{e}");
        // Every label once, never the root.
        assert_eq!(
            asked,
            ["_acme-challenge.a.b.test.", "a.b.test.", "b.test.", "test."]
        );
    }

    #[tokio::test]
    async fn a_resolver_error_stops_the_walk() {
        let r = find_zone(&n("x.example.com"), |_| async {
            Err::<Message, _>("no answer in 3s".to_string())
        })
        .await;
        assert_eq!(r.unwrap_err(), "no answer in 3s");
    }

    #[test]
    fn ns_names_of_the_zone_only_deduplicated_and_bounded() {
        let zone = n("example.com");
        let mut m = Message::new(1, MessageType::Response, OpCode::Query);
        for ns in ["ns1.example.net", "NS2.example.net", "ns1.example.net"] {
            m.add_answer(Record::from_rdata(zone.clone(), 60, RData::NS(NS(n(ns)))));
        }
        m.add_answer(Record::from_rdata(
            n("other.com"),
            60,
            RData::NS(NS(n("ns9.other.com"))),
        ));
        m.add_answer(Record::from_rdata(
            zone.clone(),
            60,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        assert_eq!(
            ns_names(&m, &n("EXAMPLE.com")),
            [n("ns1.example.net"), n("NS2.example.net")]
        );
        let mut big = Message::new(1, MessageType::Response, OpCode::Query);
        for i in 0..20 {
            big.add_answer(Record::from_rdata(
                zone.clone(),
                60,
                RData::NS(NS(n(&format!("ns{i}.example.net")))),
            ));
        }
        assert_eq!(ns_names(&big, &zone).len(), MAX_AUTHORITATIVE);
        // A referral: the NS set in the authority section.
        let mut referral = Message::new(1, MessageType::Response, OpCode::Query);
        referral.add_authority(Record::from_rdata(
            zone.clone(),
            60,
            RData::NS(NS(n("ns3.example.net"))),
        ));
        assert_eq!(ns_names(&referral, &zone), [n("ns3.example.net")]);
        // Answers win over authorities.
        m.add_authority(Record::from_rdata(
            zone.clone(),
            60,
            RData::NS(NS(n("ns3.example.net"))),
        ));
        assert_eq!(ns_names(&m, &zone).len(), 2);
    }

    #[test]
    fn names_are_made_absolute() {
        assert_eq!(fqdn("a.example.com.").unwrap().to_ascii(), "a.example.com.");
        assert_eq!(fqdn("a.example.com").unwrap().to_ascii(), "a.example.com.");
        assert!(fqdn("a..b").is_err());
    }
}
