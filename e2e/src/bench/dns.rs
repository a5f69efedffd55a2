//! The DNS benchmark: query throughput of ferrite-dns's embedded server, BIND9 and Knot DNS, one after
//! another, on the same zone, the same query file and the same dnsperf settings.
//!
//! ```text
//!   generated zone bench.example. (10,000 A records) ──┬─> ferrite_dns::server::Server, in this process
//!                                                      ├─> named  -n 2 (generated named.conf)
//!                                                      └─> knotd  udp-workers 2 (generated knot.conf)
//!   generated query file (80% hits, 10% NXDOMAIN, 10% NODATA)
//!     └─> dnsperf -c 8 -l N           (throughput pass, R rounds: in each round every server in turn)
//!     └─> dnsperf -c 8 -l N/2 -v      (latency pass: every query's latency -> percentiles)
//! ```
//!
//! Each server listens on 127.0.0.1 with a free port; all three are started first and stay up (idle
//! while another is measured), so the rounds can interleave them; only loopback is used. The percentiles come from a second, shorter pass with `-v` because dnsperf 2.10
//! has no latency histogram and printing every query roughly halves its own query rate: the throughput
//! pass stays free of that cost.

use anyhow::{Context, Result, bail, ensure};
use ferrite_dns::resolve::ZoneSet;
use ferrite_dns::server::{Server, ServerConfig};
use ferrite_dns::zone::{SoaConfig, Zone, ZoneConfig};
use ferrite_e2e::{Supervised, process::free_port};
use hickory_proto::rr::{Name, RData, Record};
use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

/// The zone's apex.
pub const APEX: &str = "bench.example.";
/// A records in the zone (besides the SOA, the apex NS and the name server's address).
pub const RECORDS: usize = 10_000;
/// Lines of the query file (dnsperf loops over it).
pub const QUERY_LINES: usize = 100_000;
/// dnsperf's simulated clients.
pub const CLIENTS: usize = 8;
/// Worker threads of every server (UDP workers for ferrite-dns and Knot, `-n` for BIND).
pub const WORKERS: usize = 2;
/// How long a server may take to load the zone and answer.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// The owner of the i-th record.
fn host(i: usize) -> String {
    format!("h{i:05}.{APEX}")
}

/// The address of the i-th record, in 198.18.0.0/15 (RFC 2544 benchmarking range; never sent to).
fn address(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(u32::MAX) & 0xffff;
    Ipv4Addr::from(0xc612_0000 | i)
}

/// The zone as a zone file (for BIND and Knot).
pub fn zone_file() -> String {
    let mut s = String::with_capacity(RECORDS * 48);
    let _ = writeln!(s, "$ORIGIN {APEX}\n$TTL 300");
    let _ = writeln!(
        s,
        "@ 3600 IN SOA ns1.{APEX} hostmaster.{APEX} 1 3600 600 86400 60\n@ 3600 IN NS ns1.{APEX}\nns1.{APEX} 300 IN A 127.0.0.1"
    );
    for i in 0..RECORDS {
        let _ = writeln!(s, "{} 300 IN A {}", host(i), address(i));
    }
    s
}

/// The same zone as a ferrite-dns snapshot.
pub fn zone() -> Result<Zone> {
    let name = |text: &str| Name::from_ascii(text).with_context(|| format!("name {text}"));
    let apex = name(APEX)?;
    let config = ZoneConfig {
        soa: SoaConfig {
            mname: name(&format!("ns1.{APEX}"))?,
            rname: name(&format!("hostmaster.{APEX}"))?,
            serial: 1,
            refresh: 3600,
            retry: 600,
            expire: 86400,
            minimum: 60,
            ttl: 3600,
        },
        nameservers: vec![name(&format!("ns1.{APEX}"))?],
        ns_ttl: 3600,
        apex,
    };
    let mut records = Vec::with_capacity(RECORDS + 1);
    records.push(Record::from_rdata(
        name(&format!("ns1.{APEX}"))?,
        300,
        RData::A(Ipv4Addr::LOCALHOST.into()),
    ));
    for i in 0..RECORDS {
        records.push(Record::from_rdata(
            name(&host(i))?,
            300,
            RData::A(address(i).into()),
        ));
    }
    Zone::build(&config, records).context("building the benchmark zone")
}

/// What a query line asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An A query for a name with an A record.
    Hit,
    /// A name that does not exist.
    NxDomain,
    /// AAAA for a name that has only an A record.
    NoData,
}

/// The query file: `lines` lines of `name TYPE` in dnsperf's format, 80% hits, 10% NXDOMAIN, 10% NODATA,
/// interleaved (every tenth line NXDOMAIN, every tenth NODATA), the names spread over the zone by a fixed
/// pseudo-random sequence so every run sends the same queries.
pub fn query_file(lines: usize) -> (String, Vec<Kind>) {
    let mut text = String::with_capacity(lines * 28);
    let mut kinds = Vec::with_capacity(lines);
    let mut state: u64 = 0x243f_6a88_85a3_08d3;
    for line in 0..lines {
        // xorshift64: deterministic, uniform enough to spread the names.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let pick = usize::try_from(state % RECORDS as u64).unwrap_or(0);
        let kind = match line % 10 {
            4 => Kind::NxDomain,
            9 => Kind::NoData,
            _ => Kind::Hit,
        };
        let _ = match kind {
            Kind::Hit => writeln!(text, "{} A", host(pick)),
            Kind::NxDomain => writeln!(text, "nx{pick:05}.{APEX} A"),
            Kind::NoData => writeln!(text, "{} AAAA", host(pick)),
        };
        kinds.push(kind);
    }
    (text, kinds)
}

/// One server's results.
#[derive(Debug, Clone, Default)]
pub struct ServerRun {
    /// `ferrite-dns`, `BIND9`, `Knot DNS`.
    pub server: String,
    /// Its version.
    pub version: String,
    /// Worker threads it used, as configured.
    pub workers: String,
    /// The throughput passes' summaries, one a round.
    pub rounds: Vec<Summary>,
    /// Latency percentiles (seconds) from the `-v` pass: p50, p90, p99, p99.9, max.
    pub percentiles: Option<[f64; 5]>,
    /// Queries in the latency pass.
    pub latency_queries: usize,
    /// Why this server was not measured, if it was not.
    pub error: Option<String>,
}

/// What dnsperf prints at the end.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub sent: u64,
    pub completed: u64,
    pub lost: u64,
    pub qps: f64,
    pub avg_latency: f64,
    pub max_latency: f64,
    pub rcodes: String,
}

impl ServerRun {
    /// The round with the median QPS (the lower middle one for an even count).
    pub fn median(&self) -> Option<&Summary> {
        let mut rounds: Vec<&Summary> = self.rounds.iter().collect();
        rounds.sort_by(|a, b| a.qps.total_cmp(&b.qps));
        rounds.get(rounds.len().saturating_sub(1) / 2).copied()
    }
}

/// The DNS part's results.
#[derive(Debug, Clone, Default)]
pub struct DnsResults {
    pub runs: Vec<ServerRun>,
    pub dnsperf: String,
    pub seconds: u64,
    pub rounds: usize,
    pub command: String,
}

/// A server under test, kept running for all rounds.
enum Running {
    /// ferrite-dns in this process, with the runtime its TCP side runs on.
    Ferrite(Server, tokio::runtime::Runtime),
    /// named or knotd.
    Process(Supervised),
}

impl Running {
    fn stop(self) {
        match self {
            Running::Ferrite(server, runtime) => {
                runtime.block_on(server.shutdown());
                drop(runtime);
            }
            Running::Process(mut proc) => proc.stop(Duration::from_secs(10)),
        }
    }
}

/// Starts the three servers, then runs `rounds` rounds of the throughput pass (in each round every server
/// in turn, so slow drifts of the machine's load hit all of them alike), then each server's latency pass.
pub fn run(seconds: u64, rounds: usize) -> Result<DnsResults> {
    let dnsperf = which("dnsperf").context("dnsperf not found: run `make deps` (Debian package dnsperf)")?;
    let dir = tempfile::Builder::new().prefix("ferrite-bench-dns-").tempdir()?;
    let zone_path = dir.path().join("bench.zone");
    std::fs::write(&zone_path, zone_file())?;
    let queries = dir.path().join("queries.txt");
    std::fs::write(&queries, query_file(QUERY_LINES).0)?;
    let version = output(&dnsperf, &["-h"])
        .lines()
        .find_map(|l| l.strip_prefix("Version "))
        .map_or_else(
            || "dnsperf (version unknown)".to_string(),
            |v| format!("dnsperf {}", v.trim()),
        );
    let mut results = DnsResults {
        runs: Vec::new(),
        dnsperf: version,
        seconds,
        rounds,
        command: format!("dnsperf -s 127.0.0.1 -p PORT -d queries.txt -c {CLIENTS} -l {seconds}"),
    };

    let mut servers: Vec<(ServerRun, Option<(Running, u16)>)> = Vec::new();
    eprintln!("==> DNS: starting ferrite-dns (embedded server, in this process, {WORKERS} UDP workers)");
    servers.push(started("ferrite-dns", |run| {
        run.version = format!("{} (this build)", env!("CARGO_PKG_VERSION"));
        run.workers = format!("{WORKERS} UDP worker threads (SO_REUSEPORT)");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .context("tokio runtime for the DNS server")?;
        let zones = ZoneSet::new([Arc::new(zone()?)]).context("zone set")?;
        let mut config = ServerConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        config.udp_workers = WORKERS;
        let registry = prometheus::Registry::new();
        let server = {
            let _entered = runtime.enter();
            Server::start(&config, zones, &registry).context("starting ferrite-dns")?
        };
        let port = server.local_addr().port();
        Ok((Running::Ferrite(server, runtime), port))
    }));

    eprintln!("==> DNS: starting BIND9 (named -n {WORKERS})");
    servers.push(started("BIND9", |run| {
        let named = which("named").context("named not found (Debian package bind9)")?;
        let version = output(&named, &["-v"]);
        run.version = version.split(" <id").next().unwrap_or("").trim().to_string();
        run.workers = format!("{WORKERS} (`named -n {WORKERS}`)");
        let port = free_port()?;
        let conf = dir.path().join("named.conf");
        let d = dir.path().display();
        std::fs::write(
            &conf,
            format!(
                "options {{\n  directory \"{d}\";\n  listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  \
                 pid-file \"{d}/named.pid\";\n  session-keyfile \"{d}/session.key\";\n  recursion no;\n  \
                 dnssec-validation no;\n  minimal-responses no-auth;\n  querylog no;\n}};\ncontrols {{ }};\n\
                 zone \"{}\" {{ type primary; file \"{}\"; }};\n",
                APEX.trim_end_matches('.'),
                zone_path.display()
            ),
        )?;
        let args: Vec<String> = vec![
            "-g".into(),
            "-n".into(),
            WORKERS.to_string(),
            "-c".into(),
            conf.display().to_string(),
        ];
        let mut proc = Supervised::spawn("named", &named, &args, &[], &dir.path().join("named.log"))?;
        wait_ready(port, &mut proc)?;
        Ok((Running::Process(proc), port))
    }));

    eprintln!("==> DNS: starting Knot DNS (knotd, udp-workers {WORKERS})");
    servers.push(started("Knot DNS", |run| {
        let knotd = which("knotd").context("knotd not found (Debian package knot)")?;
        run.version = output(&knotd, &["-V"]).trim().to_string();
        run.workers = format!("{WORKERS} UDP workers (`udp-workers: {WORKERS}`), 1 TCP worker");
        let port = free_port()?;
        let run_dir = dir.path().join("knot");
        std::fs::create_dir_all(run_dir.join("db"))?;
        let conf = dir.path().join("knot.conf");
        let r = run_dir.display();
        std::fs::write(
            &conf,
            format!(
                "server:\n  rundir: \"{r}\"\n  listen: 127.0.0.1@{port}\n  udp-workers: {WORKERS}\n  tcp-workers: 1\n  \
                 background-workers: 1\ndatabase:\n  storage: \"{r}/db\"\ncontrol:\n  listen: \"{r}/knot.sock\"\n\
                 log:\n  - target: stderr\n    any: info\ntemplate:\n  - id: default\n    storage: \"{r}\"\n    \
                 zonefile-sync: -1\n    zonefile-load: whole\n    journal-content: none\n\
                 zone:\n  - domain: {APEX}\n    file: \"{}\"\n",
                zone_path.display()
            ),
        )?;
        let args: Vec<String> = vec!["-c".into(), conf.display().to_string()];
        let mut proc = Supervised::spawn("knotd", &knotd, &args, &[], &dir.path().join("knot.log"))?;
        wait_ready(port, &mut proc)?;
        Ok((Running::Process(proc), port))
    }));

    for round in 1..=rounds {
        for (run, running) in &mut servers {
            let Some((_, port)) = running else { continue };
            eprintln!("==> DNS round {round}/{rounds}: {}", run.server);
            match throughput(&dnsperf, &queries, *port, seconds) {
                Ok(summary) => {
                    eprintln!(
                        "    {:.0} QPS, mean latency {:.3} ms, {}",
                        summary.qps,
                        summary.avg_latency * 1000.0,
                        summary.rcodes
                    );
                    run.rounds.push(summary);
                }
                Err(e) => {
                    eprintln!("    {}: {e:#}", run.server);
                    run.error = Some(format!("{e:#}"));
                    if let Some((server, _)) = running.take() {
                        server.stop();
                    }
                }
            }
        }
    }
    for (run, running) in &mut servers {
        let Some((_, port)) = running else { continue };
        eprintln!("==> DNS latency pass: {}", run.server);
        match latency(&dnsperf, &queries, *port, (seconds / 2).max(1)) {
            Ok(mut latencies) => {
                run.latency_queries = latencies.len();
                run.percentiles = percentiles(&mut latencies);
            }
            Err(e) => run.error = Some(format!("latency pass: {e:#}")),
        }
    }
    for (run, running) in servers {
        if let Some((server, _)) = running {
            server.stop();
        }
        results.runs.push(run);
    }
    Ok(results)
}

/// Starts one server; a failure is recorded in its row, not fatal to the other servers.
fn started(
    server: &str,
    f: impl FnOnce(&mut ServerRun) -> Result<(Running, u16)>,
) -> (ServerRun, Option<(Running, u16)>) {
    let mut run = ServerRun {
        server: server.to_string(),
        ..ServerRun::default()
    };
    match f(&mut run) {
        Ok(running) => (run, Some(running)),
        Err(e) => {
            eprintln!("    {server}: {e:#}");
            run.error = Some(format!("{e:#}"));
            (run, None)
        }
    }
}

fn dnsperf_args(queries: &Path, port: u16, seconds: u64) -> Vec<String> {
    vec![
        "-s".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-d".into(),
        queries.display().to_string(),
        "-c".into(),
        CLIENTS.to_string(),
        "-l".into(),
        seconds.to_string(),
    ]
}

/// One throughput pass.
fn throughput(dnsperf: &Path, queries: &Path, port: u16, seconds: u64) -> Result<Summary> {
    let out = dnsperf_output(dnsperf, &dnsperf_args(queries, port, seconds))?;
    parse_summary(&out).with_context(|| format!("reading dnsperf's summary:\n{out}"))
}

/// The latency pass: every query's latency.
fn latency(dnsperf: &Path, queries: &Path, port: u16, seconds: u64) -> Result<Vec<f64>> {
    let mut args = dnsperf_args(queries, port, seconds);
    args.push("-v".into());
    Ok(parse_latencies(&dnsperf_output(dnsperf, &args)?))
}

fn dnsperf_output(dnsperf: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(dnsperf)
        .args(args)
        .output()
        .context("running dnsperf")?;
    ensure!(
        out.status.success(),
        "dnsperf {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The numbers of dnsperf's `Statistics:` block.
pub fn parse_summary(out: &str) -> Result<Summary> {
    let field = |label: &str| -> Option<&str> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(str::trim)
    };
    let first_number = |label: &str| -> Result<f64> {
        field(label)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no `{label}` in dnsperf's output"))
    };
    let avg = field("Average Latency (s):").with_context(|| "no `Average Latency` in dnsperf's output")?;
    let max_latency = avg
        .split_once("max ")
        .and_then(|(_, v)| v.trim_end_matches(')').trim().parse().ok())
        .unwrap_or(f64::NAN);
    Ok(Summary {
        sent: first_number("Queries sent:")? as u64,
        completed: first_number("Queries completed:")? as u64,
        lost: first_number("Queries lost:")? as u64,
        qps: first_number("Queries per second:")?,
        avg_latency: first_number("Average Latency (s):")?,
        max_latency,
        rcodes: field("Response codes:").unwrap_or("").to_string(),
    })
}

/// The latency of every answered query of `dnsperf -v` (`> NOERROR name TYPE 0.000123`).
pub fn parse_latencies(out: &str) -> Vec<f64> {
    out.lines()
        .filter(|l| l.starts_with("> ") && !l.starts_with("> T "))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect()
}

/// p50, p90, p99, p99.9, max (nearest rank).
pub fn percentiles(values: &mut [f64]) -> Option<[f64; 5]> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    Some([at(0.5), at(0.9), at(0.99), at(0.999), at(1.0)])
}

/// Asks the server for the zone's SOA until it answers (NOERROR with an answer), the process exits or
/// the limit passes.
fn wait_ready(port: u16, proc: &mut Supervised) -> Result<()> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut query = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in APEX.trim_end_matches('.').split('.') {
        query.push(u8::try_from(label.len())?);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 6, 0, 1]);
    let deadline = Instant::now() + READY_LIMIT;
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("{} exited:\n{}", proc.name, proc.log_tail(20));
        }
        socket.send_to(&query, (Ipv4Addr::LOCALHOST, port))?;
        if let Ok(n) = socket.recv(&mut buf)
            && n >= 12
            && buf[..2] == [0x12, 0x34]
            && buf[3] & 0x0f == 0
            && u16::from_be_bytes([buf[6], buf[7]]) > 0
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{} did not answer for {APEX} within {READY_LIMIT:?}:\n{}",
        proc.name,
        proc.log_tail(20)
    )
}

fn which(program: &str) -> Option<PathBuf> {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(program))
    .find(|p| p.is_file())
}

fn output(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_file_is_80_10_10_over_names_of_the_zone() {
        let (text, kinds) = query_file(10_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 10_000);
        let count = |k: Kind| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(count(Kind::Hit), 8_000);
        assert_eq!(count(Kind::NxDomain), 1_000);
        assert_eq!(count(Kind::NoData), 1_000);
        let zone = zone().expect("zone");
        assert_eq!(
            zone.record_count(),
            RECORDS + 3,
            "A records + SOA + NS + the name server's A"
        );
        let zones = ZoneSet::new([Arc::new(zone)]).expect("zone set");
        let mut distinct = std::collections::HashSet::new();
        for (line, kind) in lines.iter().zip(&kinds) {
            let (qname, qtype) = line.split_once(' ').expect("name TYPE");
            let qname = Name::from_ascii(qname).expect("name");
            let qtype: hickory_proto::rr::RecordType = qtype.parse().expect("type");
            let outcome = zones.resolve(&qname, qtype).outcome;
            let want = match kind {
                Kind::Hit => ferrite_dns::resolve::Outcome::Answer,
                Kind::NxDomain => ferrite_dns::resolve::Outcome::NxDomain,
                Kind::NoData => ferrite_dns::resolve::Outcome::NoData,
            };
            assert_eq!(outcome, want, "{line}");
            distinct.insert(qname);
        }
        assert!(
            distinct.len() > 5_000,
            "names spread over the zone: {}",
            distinct.len()
        );
        assert_eq!(query_file(100).0, query_file(100).0, "the same queries every run");
    }

    #[test]
    fn the_median_round_is_reported() {
        let round = |qps: f64| Summary {
            qps,
            ..Summary::default()
        };
        let mut run = ServerRun::default();
        assert!(run.median().is_none());
        run.rounds = vec![round(90.0), round(30.0), round(60.0)];
        assert_eq!(run.median().map(|s| s.qps), Some(60.0));
        run.rounds.push(round(10.0));
        assert_eq!(
            run.median().map(|s| s.qps),
            Some(30.0),
            "the lower middle of an even count"
        );
    }

    #[test]
    fn the_zone_file_holds_every_record() {
        let text = zone_file();
        assert_eq!(text.lines().filter(|l| l.contains(" IN A ")).count(), RECORDS + 1);
        assert!(text.contains(&format!("{} 300 IN A 198.18.39.15", host(9999))));
    }

    #[test]
    fn dnsperf_output_is_read() {
        let out = "Statistics:\n\n  Queries sent:         181168\n  Queries completed:    181160 (100.00%)\n  \
                   Queries lost:         8 (0.00%)\n\n  Response codes:       NOERROR 163044 (90.00%), NXDOMAIN 18116 (10.00%)\n  \
                   Run time (s):         2.000549\n  Queries per second:   90559.141516\n\n  \
                   Average Latency (s):  0.000299 (min 0.000015, max 0.004266)\n";
        let s = parse_summary(out).expect("summary");
        assert_eq!((s.sent, s.completed, s.lost), (181_168, 181_160, 8));
        assert!((s.qps - 90_559.141_516).abs() < 1e-6);
        assert!((s.avg_latency - 0.000_299).abs() < 1e-12);
        assert!((s.max_latency - 0.004_266).abs() < 1e-12);
        assert!(s.rcodes.starts_with("NOERROR 163044"));
        assert!(parse_summary("nothing").is_err());
        let v = "> NOERROR h00000.bench.example. A 0.000197\n> NXDOMAIN nx1.bench.example. A 0.000100\n[Timeout] x\n";
        let mut lat = parse_latencies(v);
        assert_eq!(lat, [0.000_197, 0.000_100]);
        let p = percentiles(&mut lat).expect("two values");
        assert_eq!(p[0], 0.000_100);
        assert_eq!(p[4], 0.000_197);
        assert!(percentiles(&mut []).is_none());
    }
}
