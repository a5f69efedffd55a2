//! The controller benchmarks of ferrite-dns (`ferrite-dns controller` on the box, a real `named`):
//!
//! ```text
//!   the box (etcd + kube-apiserver) ── CRDs ── ferrite-dns controller (release build, admin kubeconfig)
//!       │                                         ├── embedded server on 127.0.0.1:<port>
//!       │                                         └── RFC2136 UPDATEs (TSIG hmac-sha256) ──> named 127.0.0.1
//!   1. change -> answer: a Service's status IP patched; a UDP query loop (every 5 ms) until the new A
//!      is answered, embedded and RFC2136, N trials each
//!   2. initial sync: 10,000 DNSRecords created first, then the rfc2136 DNSZone; created -> status says
//!      10,000 records and Ready, then one AXFR counts the A records in named; UPDATEs from the metric
//!   3. RSS: DNSRecords of an embedded zone created (RSS_CONCURRENCY in flight) up to the target
//!      (default 100,000 with part 2's 10,000) or a time budget; then a wait-for-condition (a watch of
//!      the DNSZone, with a timeout) until its status.records counts them all: time to converge after
//!      the last create, the controller's VmRSS then, its peak while loading (sampled) and VmHWM
//! ```
//!
//! `--dns-parts` picks parts (throughput is the dnsperf part in `dns.rs`): `rss` alone measures the
//! controller at 100,000 records without the rest. Every loop has a deadline; named and the controller
//! are stopped when the run ends, also on error.

use super::stats::{self, quantile};
use anyhow::{Context, Result, bail, ensure};
use ferrite_api::dns::{DNSRecord, DNSZone};
use ferrite_e2e::{KubeBox, Supervised, process::free_port};
use futures::{StreamExt, stream};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

/// The TSIG key named and the controller share (hmac-sha256).
const KEY: &str = "ferrite-bench";
const SECRET: &[u8] = b"ferrite-bench rfc2136 TSIG secret, 32+ bytes long";
const EMBEDDED_ZONE: &str = "apps.bench.test.";
const RFC_ZONE: &str = "rfc.bench.test.";
const SYNC_ZONE: &str = "sync.bench.test.";
const RSS_ZONE: &str = "rss.bench.test.";
/// Records of the initial-sync benchmark.
pub const SYNC_RECORDS: usize = 10_000;
/// Creates in flight.
const CONCURRENCY: usize = 16;
/// Creates in flight in the RSS part (the API server, not the controller, is what limits it).
const RSS_CONCURRENCY: usize = 32;
/// How long the RSS zone's status may take to count every record after the last create.
const CONVERGE_LIMIT: Duration = Duration::from_secs(180);

/// The parts of `ferrite-bench --only dns` (`--dns-parts throughput,change,sync,rss`; default all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// dnsperf against ferrite-dns's server, BIND and Knot (`dns.rs`).
    pub throughput: bool,
    /// 1. change -> answer.
    pub change: bool,
    /// 2. RFC2136 initial sync.
    pub sync: bool,
    /// 3. controller RSS.
    pub rss: bool,
}

impl Parts {
    /// Every part.
    pub const ALL: Parts = Parts {
        throughput: true,
        change: true,
        sync: true,
        rss: true,
    };

    /// `throughput,change,sync,rss` (any non-empty subset, or `all`).
    pub fn parse(text: &str) -> Result<Parts> {
        let mut p = Parts {
            throughput: false,
            change: false,
            sync: false,
            rss: false,
        };
        for part in text.split(',').map(str::trim) {
            match part {
                "all" => p = Parts::ALL,
                "throughput" => p.throughput = true,
                "change" => p.change = true,
                "sync" => p.sync = true,
                "rss" => p.rss = true,
                _ => bail!("--dns-parts: {part:?} is not one of throughput, change, sync, rss, all"),
            }
        }
        ensure!(
            p.throughput || p.change || p.sync || p.rss,
            "--dns-parts: name at least one part"
        );
        Ok(p)
    }

    /// True if any controller part (change, sync, rss) runs.
    pub fn controller(self) -> bool {
        self.change || self.sync || self.rss
    }
}
/// How long one change may take before the trial fails.
const TRIAL_LIMIT: Duration = Duration::from_secs(10);

/// What the DNS controller benchmarks measure.
#[derive(Debug, Clone)]
pub struct ControllerResults {
    pub trials: usize,
    /// Change -> answer, embedded server.
    pub embedded: Vec<Duration>,
    /// Change -> answer in named (RFC2136).
    pub rfc2136: Vec<Duration>,
    /// `None`: not run (`--dns-parts`).
    pub sync: Option<SyncResult>,
    /// `None`: not run (`--dns-parts`).
    pub rss: Option<RssResult>,
    pub debounce: String,
}

/// The RFC2136 initial sync.
#[derive(Debug, Clone)]
pub struct SyncResult {
    pub records: usize,
    /// Creating the DNSRecords (before the zone).
    pub create: Duration,
    /// DNSZone created -> status records == N and Ready.
    pub to_ready: Duration,
    /// DNSZone created -> the AXFR that counted every A record.
    pub to_axfr: Duration,
    /// A records in named's AXFR.
    pub axfr_a: usize,
    /// `ferrite_dns_updates_sent_total` for the zone.
    pub updates: Option<f64>,
}

/// The controller's memory.
#[derive(Debug, Clone)]
pub struct RssResult {
    pub idle_kib: Option<u64>,
    pub target: usize,
    /// DNSRecords created within the budget (all zones: this zone's plus the sync benchmark's).
    pub created: usize,
    pub budget: Duration,
    pub create_time: Duration,
    /// VmRSS once the zone's status counted every record (or the wait timed out) and 3 s after.
    pub kib: Option<u64>,
    /// Highest VmRSS sampled (every 500 ms) while creating and converging.
    pub peak_kib: Option<u64>,
    /// VmHWM (the kernel's peak RSS of the process) at the end.
    pub hwm_kib: Option<u64>,
    /// Last create -> the zone's `status.records` counts them all; `None`: not within the limit.
    pub converge: Option<Duration>,
    pub converge_limit: Duration,
    /// Every DNSRecord the controller holds at that point.
    pub total_records: usize,
    /// `status.records` of the RSS zone when the RSS was read, and the records created in it.
    pub zone_counted: usize,
    pub zone_target: usize,
}

/// Summary of a latency sample: median, p90, p99, max.
pub fn summary(values: &[Duration]) -> Option<[Duration; 4]> {
    Some([
        quantile(values, 0.5)?,
        quantile(values, 0.9)?,
        quantile(values, 0.99)?,
        *values.iter().max()?,
    ])
}

/// Runs the controller benchmarks `parts` names; `trials` change trials per provider, `rss_records`
/// DNSRecords for the RSS benchmark (with part 2's, when it runs) within `rss_budget`.
pub async fn run(
    dns_bin: &Path,
    parts: Parts,
    trials: usize,
    rss_records: usize,
    rss_budget: Duration,
) -> Result<ControllerResults> {
    eprintln!("==> DNS controller: starting the box (etcd + kube-apiserver on 127.0.0.1) and named");
    let kb = KubeBox::start().await.context("starting the box")?;
    let result = async {
        let named = Named::start()?;
        bench(&kb, dns_bin, &named, parts, trials, rss_records, rss_budget).await
    }
    .await;
    kb.stop();
    result
}

async fn bench(
    kb: &KubeBox,
    dns_bin: &Path,
    named: &Named,
    parts: Parts,
    trials: usize,
    rss_records: usize,
    rss_budget: Duration,
) -> Result<ControllerResults> {
    ferrite_e2e::demo::apply_crds(kb).await?;
    let client = kb.client().await;
    let ns = kb.namespace("bench-dns").await;
    let dns_port = free_port()?;
    let debounce = "100ms".to_string();
    let (mut ctl, admin) = start_controller(kb, dns_bin, dns_port, &debounce).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_kib = ctl.program_pid().and_then(stats::rss_kib);

    let zones: Api<DNSZone> = Api::all(client.clone());
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let recs: Api<DNSRecord> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create(
        &secrets,
        json!({"metadata": {"name": "tsig"}, "stringData": {"secret": base64(SECRET)}}),
    )
    .await?;

    // 1. change -> answer.
    let mut embedded = Vec::new();
    let mut rfc2136 = Vec::new();
    if parts.change {
        let rfc_provider = json!({"rfc2136": {"server": "127.0.0.1", "port": named.port, "tsigKeyName": KEY,
            "tsigKeySecretRef": {"name": "tsig", "namespace": ns}}});
        create(&zones, json!({"metadata": {"name": "bench-embedded"}, "spec": {"zone": EMBEDDED_ZONE, "provider": {"embedded": {}}}})).await?;
        create(
            &zones,
            json!({"metadata": {"name": "bench-rfc"}, "spec": {"zone": RFC_ZONE, "provider": rfc_provider}}),
        )
        .await?;
        let emb_addr: SocketAddr = format!("127.0.0.1:{dns_port}").parse()?;
        let rfc_addr: SocketAddr = format!("127.0.0.1:{}", named.port).parse()?;
        for (name, host, addr, out) in [
            ("emb", "www.apps.bench.test.", emb_addr, &mut embedded),
            ("rfc", "www.rfc.bench.test.", rfc_addr, &mut rfc2136),
        ] {
            eprintln!("==> DNS controller 1. change -> answer ({name}), {trials} trials");
            create(
                &svcs,
                json!({"metadata": {"name": name, "annotations": {"dns.ferrite.dev/hostname": host}},
                       "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
            )
            .await?;
            set_ip(&svcs, name, Ipv4Addr::new(198, 18, 0, 1)).await?;
            wait_a(addr, host, Ipv4Addr::new(198, 18, 0, 1), Duration::from_secs(30))
                .await
                .with_context(|| format!("first answer for {host}:\n{}", ctl.log_tail(20)))?;
            for i in 0..trials {
                let ip = Ipv4Addr::new(198, 18, 1, (i % 250) as u8 + 2);
                let start = Instant::now();
                set_ip(&svcs, name, ip).await?;
                wait_a(addr, host, ip, TRIAL_LIMIT)
                    .await
                    .with_context(|| format!("trial {i} of {host}:\n{}", ctl.log_tail(20)))?;
                out.push(start.elapsed());
                // Apart from the debounce window of the previous change.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
        eprintln!(
            "    embedded {:?}, rfc2136 {:?} (median/p90/p99/max)",
            summary(&embedded),
            summary(&rfc2136)
        );
        ensure!(ctl.is_running(), "the controller exited:\n{}", ctl.log_tail(30));
    }

    // 2. initial sync of 10,000 records into named.
    let sync = if parts.sync {
        Some(initial_sync(&zones, &recs, &ns, named, &mut ctl, admin).await?)
    } else {
        None
    };

    // 3. RSS at many records.
    let rss = if parts.rss {
        let before = if parts.sync { SYNC_RECORDS } else { 0 };
        Some(rss(&zones, &recs, &mut ctl, idle_kib, before, rss_records, rss_budget).await?)
    } else {
        None
    };
    ctl.stop(Duration::from_secs(5));
    Ok(ControllerResults {
        trials: if parts.change { trials } else { 0 },
        embedded,
        rfc2136,
        sync,
        rss,
        debounce,
    })
}

async fn initial_sync(
    zones: &Api<DNSZone>,
    recs: &Api<DNSRecord>,
    ns: &str,
    named: &Named,
    ctl: &mut Supervised,
    admin: SocketAddr,
) -> Result<SyncResult> {
    eprintln!("==> DNS controller 2. RFC2136 initial sync of {SYNC_RECORDS} DNSRecords");
    let start = Instant::now();
    create_records(recs, "sync", SYNC_ZONE, 0..SYNC_RECORDS, CONCURRENCY).await?;
    let create_time = start.elapsed();
    let updates_before = updates_sent(admin, "bench-sync", SYNC_ZONE).await.unwrap_or(0.0);
    let rfc_provider = json!({"rfc2136": {"server": "127.0.0.1", "port": named.port, "tsigKeyName": KEY,
        "tsigKeySecretRef": {"name": "tsig", "namespace": ns}}});
    let created = Instant::now();
    create(
        zones,
        json!({"metadata": {"name": "bench-sync"}, "spec": {"zone": SYNC_ZONE, "provider": rfc_provider}}),
    )
    .await?;
    let deadline = created + Duration::from_secs(180);
    let to_ready = loop {
        ensure!(ctl.is_running(), "the controller exited:\n{}", ctl.log_tail(30));
        if let Ok(z) = zones.get("bench-sync").await
            && let Some(s) = &z.status
            && s.records as usize >= SYNC_RECORDS
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        {
            break created.elapsed();
        }
        ensure!(
            Instant::now() < deadline,
            "zone bench-sync not Ready with {SYNC_RECORDS} records in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (to_axfr, axfr_a) = loop {
        let n = axfr_a_count(named.port, SYNC_ZONE)?;
        if n >= SYNC_RECORDS {
            break (created.elapsed(), n);
        }
        ensure!(
            Instant::now() < deadline,
            "named holds {n} of {SYNC_RECORDS} A records after 180 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let updates = updates_sent(admin, "bench-sync", SYNC_ZONE)
        .await
        .map(|u| u - updates_before);
    let sync = SyncResult {
        records: SYNC_RECORDS,
        create: create_time,
        to_ready,
        to_axfr,
        axfr_a,
        updates,
    };
    eprintln!("    {sync:?}");
    Ok(sync)
}

/// The controller's VmRSS sampled every 500 ms until dropped; `peak()` is the highest seen.
struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> RssSampler {
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            while let Some(kib) = stats::rss_kib(pid) {
                p.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        RssSampler { peak, task }
    }

    fn peak(&self) -> Option<u64> {
        Some(self.peak.load(std::sync::atomic::Ordering::Relaxed)).filter(|k| *k > 0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `VmHWM` (peak resident set) of a process, KiB.
fn hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn rss(
    zones: &Api<DNSZone>,
    recs: &Api<DNSRecord>,
    ctl: &mut Supervised,
    idle_kib: Option<u64>,
    before: usize,
    rss_records: usize,
    rss_budget: Duration,
) -> Result<RssResult> {
    let target = rss_records.saturating_sub(before);
    eprintln!(
        "==> DNS controller 3. RSS: {target} DNSRecords in one embedded zone ({before} already in another; budget {rss_budget:?}, {RSS_CONCURRENCY} in flight)"
    );
    create(
        zones,
        json!({"metadata": {"name": "bench-rss"}, "spec": {"zone": RSS_ZONE, "provider": {"embedded": {}}}}),
    )
    .await?;
    let sampler = RssSampler::start(ctl.program_pid());
    let start = Instant::now();
    let mut made = 0;
    while made < target && start.elapsed() < rss_budget {
        ensure!(ctl.is_running(), "the controller exited:\n{}", ctl.log_tail(30));
        let end = (made + 2000).min(target);
        create_records(recs, "rss", RSS_ZONE, made..end, RSS_CONCURRENCY).await?;
        made = end;
        if made % 10_000 == 0 {
            eprintln!(
                "    {made} created in {:.0} s, controller RSS {} KiB",
                start.elapsed().as_secs_f64(),
                ctl.program_pid().and_then(stats::rss_kib).unwrap_or(0)
            );
        }
    }
    let create_time = start.elapsed();
    // Until the zone's status counts them all: a watch of the DNSZone (no polling), with a limit.
    let last_create = Instant::now();
    let counted = move |z: Option<&DNSZone>| {
        z.and_then(|z| z.status.as_ref())
            .is_some_and(|s| s.records.max(0) as usize >= made)
    };
    let converge = match tokio::time::timeout(
        CONVERGE_LIMIT,
        kube::runtime::wait::await_condition(zones.clone(), "bench-rss", counted),
    )
    .await
    {
        Ok(Ok(_)) => Some(last_create.elapsed()),
        Ok(Err(e)) => bail!("watching DNSZone bench-rss: {e}"),
        Err(_) => None,
    };
    ensure!(ctl.is_running(), "the controller exited:\n{}", ctl.log_tail(30));
    let zone_counted = zones
        .get("bench-rss")
        .await
        .ok()
        .and_then(|z| z.status)
        .map_or(0, |s| s.records.max(0) as usize);
    // Let the last publication and the watch caches settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = ctl.program_pid();
    let kib = pid.and_then(stats::rss_kib);
    let rss = RssResult {
        idle_kib,
        target: rss_records,
        created: made + before,
        budget: rss_budget,
        create_time,
        kib,
        peak_kib: sampler.peak().max(kib),
        hwm_kib: pid.and_then(hwm_kib),
        converge,
        converge_limit: CONVERGE_LIMIT,
        total_records: made + before,
        zone_counted,
        zone_target: made,
    };
    eprintln!("    {rss:?}");
    Ok(rss)
}

async fn start_controller(
    kb: &KubeBox,
    bin: &Path,
    dns_port: u16,
    debounce: &str,
) -> Result<(Supervised, SocketAddr)> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kb.kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--dns-listen=127.0.0.1:{dns_port}"),
        format!("--debounce={debounce}"),
        "--lease-namespace=default".into(),
    ];
    let mut proc = Supervised::spawn(
        "ferrite-dns controller",
        bin,
        &args,
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join("bench-dns-controller.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("ferrite-dns controller exited:\n{}", proc.log_tail(30));
        }
        if let Ok((200, _)) = stats::http_get(admin, "/readyz").await {
            return Ok((proc, admin));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "ferrite-dns controller not ready within 60 s:\n{}",
        proc.log_tail(30)
    )
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).context("object")?;
    api.create(&PostParams::default(), &obj).await.context("create")
}

async fn set_ip(api: &Api<Service>, name: &str, ip: Ipv4Addr) -> Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}}})),
    )
    .await
    .with_context(|| format!("status of Service {name}"))?;
    Ok(())
}

/// DNSRecords `<prefix>-<i>` (A `r<i>.<zone>` -> an address in 198.18.0.0/15), `concurrency` in flight.
async fn create_records(
    api: &Api<DNSRecord>,
    prefix: &str,
    zone: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> Result<()> {
    let results: Vec<Result<()>> = stream::iter(range)
        .map(|i| async move {
            let ip = Ipv4Addr::new(198, 18 + (i >> 16) as u8 % 2, (i >> 8) as u8, i as u8);
            create(
                api,
                json!({"metadata": {"name": format!("{prefix}-{i}")},
                       "spec": {"name": format!("r{i}.{zone}"), "type": "A", "targets": [ip.to_string()]}}),
            )
            .await
            .map(|_| ())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// The metric's `zone` label is the DNSZone's key (its object name); the zone's name is tried as well.
async fn updates_sent(admin: SocketAddr, object: &str, zone: &str) -> Option<f64> {
    let (code, body) = stats::http_get(admin, "/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    stats::sample(&body, "ferrite_dns_updates_sent_total", &[("zone", object)])
        .or_else(|| stats::sample(&body, "ferrite_dns_updates_sent_total", &[("zone", zone)]))
        .or_else(|| {
            stats::sample(
                &body,
                "ferrite_dns_updates_sent_total",
                &[("zone", zone.trim_end_matches('.'))],
            )
        })
}

/// Queries `host` A at `server` every 5 ms until `want` is the answer.
async fn wait_a(server: SocketAddr, host: &str, want: Ipv4Addr, limit: Duration) -> Result<()> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.connect(server).await?;
    let name = Name::from_str(host).context("name")?;
    let deadline = Instant::now() + limit;
    let mut id: u16 = 1;
    let mut buf = vec![0u8; 4096];
    loop {
        id = id.wrapping_add(1);
        let mut q = Message::new(id, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name.clone(), RecordType::A));
        sock.send(&q.to_vec()?).await?;
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
            && answers_a(&buf[..n], id) == Some(vec![want])
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{host} A is not {want} after {limit:?} ({server})"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The A addresses of a response with id `id`; `None` for another id or a message that does not parse.
pub fn answers_a(packet: &[u8], id: u16) -> Option<Vec<Ipv4Addr>> {
    let m = Message::from_vec(packet).ok()?;
    if m.metadata.id != id {
        return None;
    }
    Some(
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect(),
    )
}

/// A records of the benchmark's names (`r<digits>.<zone>`) in `dig AXFR` output (`name ttl IN A address`
/// lines); the zone's own records (e.g. `ns1`) are not counted.
pub fn count_a(axfr: &str) -> usize {
    axfr.lines()
        .filter(|l| !l.starts_with(';'))
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ours = f.first().and_then(|n| n.strip_prefix('r')).is_some_and(|n| {
                let digits = n.split('.').next().unwrap_or("");
                !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
            });
            ours && f.len() == 5 && f[2] == "IN" && f[3] == "A"
        })
        .count()
}

fn axfr_a_count(port: u16, zone: &str) -> Result<usize> {
    let out = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=5", "+tries=1", "-y"])
        .arg(format!("hmac-sha256:{KEY}:{}", base64(SECRET)))
        .args([zone, "AXFR"])
        .output()
        .context("dig runs (apt-get install -y bind9-dnsutils)")?;
    Ok(count_a(&String::from_utf8_lossy(&out.stdout)))
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// `named` with the TSIG key and the two updatable zones.
struct Named {
    _dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Named {
    fn start() -> Result<Named> {
        let dir = tempfile::Builder::new()
            .prefix("ferrite-bench-named-")
            .tempdir()?;
        let port = free_port()?;
        let d = dir.path().display();
        let mut conf = format!(
            "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\";
  managed-keys-directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};
  recursion no; notify no; dnssec-validation no; }};
controls {{ }};
key \"{KEY}\" {{ algorithm hmac-sha256; secret \"{s}\"; }};
",
            s = base64(SECRET)
        );
        for zone in [RFC_ZONE, SYNC_ZONE] {
            let z = zone.trim_end_matches('.');
            conf += &format!(
                "zone \"{z}\" {{ type primary; file \"{d}/{z}.db\"; allow-update {{ key {KEY}; }}; allow-transfer {{ key {KEY}; }}; }};\n"
            );
            std::fs::write(
                dir.path().join(format!("{z}.db")),
                format!(
                    "$TTL 300\n@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60\n@ IN NS ns1.{zone}\nns1 IN A 127.0.0.1\n"
                ),
            )?;
        }
        std::fs::write(dir.path().join("named.conf"), conf)?;
        let named = ["/usr/sbin/named", "/usr/bin/named", "/sbin/named"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .context("named not found (apt-get install -y bind9)")?;
        let log = std::fs::File::create(dir.path().join("named.log"))?;
        let child = Command::new(named)
            .args(["-g", "-u", "root", "-4", "-n", "1", "-c"])
            .arg(dir.path().join("named.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting named")?;
        let n = Named {
            _dir: dir,
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("dig")
                .args([
                    "@127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "+short",
                    "+time=1",
                    "+tries=1",
                    RFC_ZONE,
                    "SOA",
                ])
                .output()
                .context("dig runs")?;
            if !out.stdout.is_empty() {
                return Ok(n);
            }
            ensure!(
                Instant::now() < deadline,
                "named not answering on 127.0.0.1:{port} in 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_median_p90_p99_max() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let s = summary(&v).expect("non-empty");
        assert_eq!(s.map(|d| d.as_millis()), [10, 18, 20, 20]);
        assert!(summary(&[]).is_none());
    }

    #[test]
    fn counts_a_records_of_an_axfr() {
        let out = "; <<>> DiG 9.18 <<>> AXFR\nsync.bench.test. 300 IN SOA ns1. host. 1 3600 600 86400 60\n\
                   r1.sync.bench.test. 300 IN A 198.18.0.1\nr1.sync.bench.test. 300 IN TXT \"heritage\"\n\
                   r2.sync.bench.test. 300 IN A 198.18.0.2\nns1.sync.bench.test. 300 IN A 127.0.0.1\n\
                   rx.sync.bench.test. 300 IN A 127.0.0.2\n;; XFR size: 5 records\n";
        assert_eq!(count_a(out), 2);
        assert_eq!(count_a(""), 0);
    }

    #[test]
    fn parses_a_answers_and_checks_the_id() {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        let name = Name::from_str("www.apps.bench.test.").expect("name");
        m.answers.push(hickory_proto::rr::Record::from_rdata(
            name,
            60,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 18, 1, 2))),
        ));
        let bytes = m.to_vec().expect("encodes");
        assert_eq!(answers_a(&bytes, 7), Some(vec![Ipv4Addr::new(198, 18, 1, 2)]));
        assert_eq!(answers_a(&bytes, 8), None);
        assert_eq!(answers_a(b"junk", 7), None);
    }

    #[test]
    fn parts_parse() {
        let p = Parts::parse("rss").expect("rss");
        assert_eq!(
            (p.throughput, p.change, p.sync, p.rss, p.controller()),
            (false, false, false, true, true)
        );
        let p = Parts::parse("throughput").expect("throughput");
        assert!(p.throughput && !p.controller());
        assert_eq!(Parts::parse("all").expect("all"), Parts::ALL);
        assert_eq!(
            Parts::parse("sync, change").expect("two"),
            Parts {
                throughput: false,
                change: true,
                sync: true,
                rss: false,
            }
        );
        let e = Parts::parse("rss,memory").expect_err("unknown part");
        assert!(e.to_string().contains("\"memory\""), "{e}");
        assert!(Parts::parse("").is_err());
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(base64(b"a"), "YQ==");
    }
}
