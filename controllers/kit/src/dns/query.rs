//! Plain (unsigned) queries to one server: what a DNS-01 solver needs to find the zone a name is in
//! ([`zone_of`]) and to read a TXT RRset back ([`txt_values`]). UDP first, TCP when the answer is
//! truncated; one deadline per call.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::update::{UpdateError, connect, parse_answer, read_frame, unreachable, write_frame};

/// Asks `server` for `name`/`rtype` (recursion not desired) and returns the answer message.
pub async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Message, UpdateError> {
    let deadline = Instant::now() + timeout;
    let mut message = Message::query();
    message.metadata.recursion_desired = false;
    message.add_query(Query::query(name.clone(), rtype));
    let id = message.metadata.id;
    let bytes = message
        .to_vec()
        .map_err(|e| UpdateError::Invalid(format!("cannot encode a query for {name} {rtype}: {e}")))?;
    let timed_out = |_| UpdateError::Timeout {
        server,
        what: "answer the query",
        timeout,
    };
    let udp = async {
        let bind = if server.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(server).await?;
        socket.send(&bytes).await?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                return Ok::<_, std::io::Error>(buf[..n].to_vec());
            }
        }
    };
    let raw = tokio::time::timeout_at(deadline, udp)
        .await
        .map_err(timed_out)?
        .map_err(|e| unreachable(server, e))?;
    let answer = parse_answer(server, "query", &raw, id, OpCode::Query)?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    let mut stream = connect(server, deadline, timeout).await?;
    let raw = tokio::time::timeout_at(deadline, async {
        write_frame(&mut stream, &bytes).await?;
        read_frame(&mut stream).await
    })
    .await
    .map_err(timed_out)?
    .map_err(|e| unreachable(server, e))?;
    parse_answer(server, "query", &raw, id, OpCode::Query)
}

/// The TXT values at `name` as `server` answers them (each record's strings joined); empty when there
/// are none (NXDOMAIN or NODATA).
pub async fn txt_values(
    server: SocketAddr,
    name: &Name,
    timeout: Duration,
) -> Result<Vec<String>, UpdateError> {
    let answer = query(server, name, RecordType::TXT, timeout).await?;
    Ok(answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => {
                let bytes: Vec<u8> = txt.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                Some(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => None,
        })
        .collect())
}

/// The zone `name` belongs to on `server`, from the SOA an authoritative server returns for it (in the
/// answer at an apex, in the authority section below one, RFC 2308 3).
pub async fn zone_of(server: SocketAddr, name: &Name, timeout: Duration) -> Result<Name, UpdateError> {
    let answer = query(server, name, RecordType::SOA, timeout).await?;
    answer
        .answers
        .iter()
        .chain(answer.authorities.iter())
        .find(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name))
        .map(|r| r.name.clone())
        .ok_or_else(|| UpdateError::Refused {
            server,
            zone: name.to_string(),
            op: "query",
            rcode: answer.metadata.response_code,
            detail: format!(
                "{}: the server returned no SOA for {name}: it is not authoritative for a zone containing it",
                answer.metadata.response_code
            ),
        })
}
