//! The benchmarks of ferrite-lb, ferrite-dns and ferrite-certs (tier 4 of DESIGN.md: measurements, not
//! tests). `--only lb|dns|certs` runs one part; the DNS part is in [`dns`] (dnsperf against ferrite-dns,
//! BIND9, Knot), the certificates part in [`certs`] (ACME issuance against Pebble beside lego and
//! certbot, and Certificates at scale from a CA issuer).
//!
//! ferrite-lb:
//! ```text
//!   the box (etcd + kube-apiserver 1.20 on 127.0.0.1) ── chart installed with helm
//!     ├── ferrite-lb controller   (host, ServiceAccount ferrite-lb-controller, leader-elected)
//!     └── NetLab: fe-<id>-n{0,1,2}  ferrite-lb speaker in each (ServiceAccount ferrite-lb-speaker)
//!                 fe-<id>-c         the client: arping, neighbour table
//! ```
//! 1. latency: N Services created one by one; create -> IP in status, create -> first ARP answer.
//! 2. failover: SIGKILL the announcing node's speaker; kill -> the client's neighbour entry shows
//!    another node's MAC. 2b: the same with keepalived in the same namespaces (VRRPv2 with 1 s
//!    adverts, VRRPv3 with 100 ms). 2c: the announcing speaker and busy loops pinned to one CPU for a
//!    fixed period; every VIP move then is a false failover.
//! 3. allocation throughput: 10,000 Services (bounded concurrency) until all have an IP in status.
//! 4. RSS of the controller and the speakers, idle and at 10,000 Services.
//!
//! Every loop is bounded in count and time; the lab's namespaces and every process are removed when the
//! run ends, also on error. Addresses: 192.0.2.0/24 on the lab's bridge, and 198.18.0.0/15 (RFC 2544
//! benchmarking range) for the 10,000 Services, which is only written into status, never sent to.

mod arp_probe;
pub mod certs;
pub mod dns;
pub mod dns_controller;
pub mod ingress;
mod measure;
mod report;
mod stats;

use anyhow::{Context, Result, bail, ensure};
use ferrite_e2e::{
    KubeBox, Supervised,
    kubebox::{KUBE_BUILD, KUBE_VERSION},
    netlab::NetLab,
    process::free_port,
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// `--help`.
pub const USAGE: &str = "ferrite-bench: benchmarks of ferrite-lb on the box and of ferrite-dns's server (run as root, release build)

usage: ferrite-bench [--only lb|dns|certs|ingress] [--write FILE] [--services N] [--latency-n N] [--trials N]
                     [--concurrency N] [--dns-seconds N]

  --only lb|dns|certs|ingress  run one part only (default: all, lb first, ingress last); the report then holds
                    that part's tables and says the others were not run
  --write FILE      write the markdown report to FILE (default: print it)
  --services N      Services of the allocation benchmark (default 10000)
  --latency-n N     Services of the create -> IP / ARP benchmark (default 20)
  --trials N        failover trials (default 20), for ferrite-lb and for each keepalived configuration
  --lb-parts LIST   ferrite-lb parts to run, comma-separated: latency, failover, keepalived, starvation,
                    alloc (the 10,000-Service allocation and its RSS), or all (default all); e.g.
                    `--only lb --lb-parts failover,keepalived,starvation` for the failover comparison only
  --starve-seconds N  length of the CPU-starvation run (default 60)
  --concurrency N   creates in flight in the allocation benchmark (default 16)
  --apiserver-sample N  creates of the API server's own create rate, the allocation benchmark's yardstick
                    (default: as many as --services, so both run at the same size)
  --dns-seconds N   dnsperf's -l for the DNS throughput pass (default 10; the latency pass is half)
  --dns-rounds N    DNS throughput rounds, each server once a round, median reported (default 3)
  --dns-trials N    change -> answer trials of the DNS controller, per provider (default 20)
  --dns-rss-records N  DNSRecords for the controller RSS benchmark (default 100000)
  --dns-rss-seconds N  time budget for creating them; fewer are measured (and said) if it runs out (default 600)
  --dns-parts LIST  DNS parts to run, comma-separated: throughput (dnsperf), change, sync, rss, or all
                    (default all); e.g. `--only dns --dns-parts rss` measures the controller at 100,000 records
  --certs-trials N  HTTP-01 issuances per ACME client (lego, certbot, ferrite-certs) against Pebble (default 20)
  --certs-counts LIST  Certificates of the CA-issuer scale runs, comma-separated, each run on its own
                    (default 1000,10000), or `none` for the issuance part only
  --quick           shorter ingress runs (3 s each, 2,000 idle connections, 200 changes, 1,000 Ingresses)
  --ingress-duration N  seconds of each ingress throughput/latency run (default 10)
  --ingress-connections N  wrk connections of the keep-alive runs (default 64)
  --ingress-rate N  req/s of the fixed-rate latency run (default: half the slowest proxy's plain throughput)
  --ingress-idle N  idle keep-alive connections of the RSS run (default 10000)
  --ingress-changes N  configuration changes under load, ferrite-ingress and nginx (default 1000)
  --ingress-change-interval-ms N  pause between two changes (default 20)
  --ingress-ingresses N  Ingresses of the route-table propagation run (default 10000)
  --ingress-trials N  change -> served trials at that scale (default 10)
  --ingress-parts LIST  ingress metrics to run, comma-separated: plain, tls, h2, handshake, rate, idle,
                    changes, propagation, or all (default all)
  --ingress-targets LIST  proxies measured, comma-separated: backend, nginx, haproxy, caddy, ferrite, or all
                    (default all); e.g. `--ingress-parts plain --ingress-targets ferrite,nginx` for one row

Build first: cargo build --release --workspace --bins (or run `make bench`).";

/// Which parts of the benchmark run (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Every part: ferrite-lb, ferrite-dns and ferrite-certs.
    Both,
    /// ferrite-lb only.
    Lb,
    /// ferrite-dns only.
    Dns,
    /// ferrite-certs only.
    Certs,
    /// ferrite-ingress only.
    Ingress,
}

impl Only {
    /// True if the ferrite-lb part runs.
    pub fn lb(self) -> bool {
        matches!(self, Only::Both | Only::Lb)
    }

    /// True if the DNS part runs.
    pub fn dns(self) -> bool {
        matches!(self, Only::Both | Only::Dns)
    }

    /// True if the certificates part runs.
    pub fn certs(self) -> bool {
        matches!(self, Only::Both | Only::Certs)
    }

    /// True if the ingress part runs.
    pub fn ingress(self) -> bool {
        matches!(self, Only::Both | Only::Ingress)
    }
}

/// Command-line options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to write the report.
    pub write: Option<PathBuf>,
    /// Services of the allocation benchmark.
    pub services: usize,
    /// Services of the latency benchmark.
    pub latency_n: usize,
    /// Failover trials.
    pub trials: usize,
    /// Which ferrite-lb parts run (`--lb-parts`).
    pub lb_parts: LbParts,
    /// Length of the CPU-starvation run.
    pub starve_seconds: u64,
    /// Creates in flight.
    pub concurrency: usize,
    /// Creates of the API server's own create rate (`--apiserver-sample`; None: `services`).
    pub apiserver_sample: Option<usize>,
    /// Which parts run.
    pub only: Only,
    /// dnsperf's `-l` for the DNS throughput pass.
    pub dns_seconds: u64,
    /// DNS throughput rounds.
    pub dns_rounds: usize,
    /// Change -> answer trials per provider.
    pub dns_trials: usize,
    /// DNSRecords of the controller RSS benchmark.
    pub dns_rss_records: usize,
    /// Time budget for creating them.
    pub dns_rss_seconds: u64,
    /// Which DNS parts run (`--dns-parts`).
    pub dns_parts: dns_controller::Parts,
    /// HTTP-01 issuances per ACME client.
    pub certs_trials: usize,
    /// Certificates of each CA-issuer scale run.
    pub certs_counts: Vec<usize>,
    /// The `--ingress-*` flags and `--quick`.
    pub ingress: ingress::Flags,
    /// `--help` was given.
    pub help: bool,
}

impl Options {
    /// Parses the arguments (without the program name).
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Self> {
        let mut o = Options {
            write: None,
            services: 10_000,
            latency_n: 20,
            trials: 20,
            lb_parts: LbParts::ALL,
            starve_seconds: 60,
            concurrency: 16,
            apiserver_sample: None,
            only: Only::Both,
            dns_seconds: 10,
            dns_rounds: 3,
            dns_trials: 20,
            dns_rss_records: 100_000,
            dns_rss_seconds: 600,
            dns_parts: dns_controller::Parts::ALL,
            certs_trials: 20,
            certs_counts: vec![1_000, 10_000],
            ingress: ingress::Flags::default(),
            help: false,
        };
        let mut args = args.peekable();
        while let Some(a) = args.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                o.help = true;
                continue;
            }
            if flag == "--quick" {
                o.ingress.quick = true;
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().with_context(|| format!("{flag} needs a value"))?,
            };
            let number = || -> Result<usize> {
                let n: usize = value
                    .parse()
                    .with_context(|| format!("{flag}: not a number: {value}"))?;
                ensure!((1..=50_000).contains(&n), "{flag}: 1 to 50000");
                Ok(n)
            };
            match flag.as_str() {
                "--write" => o.write = Some(PathBuf::from(&value)),
                "--services" => o.services = number()?,
                "--latency-n" => o.latency_n = number()?.min(90),
                "--trials" => o.trials = number()?.min(200),
                "--lb-parts" => o.lb_parts = LbParts::parse(&value)?,
                "--starve-seconds" => o.starve_seconds = number()?.min(600) as u64,
                "--concurrency" => o.concurrency = number()?.min(256),
                "--apiserver-sample" => o.apiserver_sample = Some(number()?),
                "--dns-seconds" => o.dns_seconds = number()?.min(600) as u64,
                "--dns-rounds" => o.dns_rounds = number()?.min(20),
                "--dns-trials" => o.dns_trials = number()?.min(200),
                "--dns-rss-records" => {
                    let n: usize = value
                        .parse()
                        .with_context(|| format!("{flag}: not a number: {value}"))?;
                    ensure!((1_000..=200_000).contains(&n), "{flag}: 1000 to 200000");
                    o.dns_rss_records = n;
                }
                "--dns-rss-seconds" => o.dns_rss_seconds = number()?.min(1800) as u64,
                "--dns-parts" => o.dns_parts = dns_controller::Parts::parse(&value)?,
                "--certs-trials" => o.certs_trials = number()?.min(200),
                "--certs-counts" => o.certs_counts = parse_counts(&value)?,
                "--ingress-duration" => o.ingress.duration = Some(number()?.min(120) as u64),
                "--ingress-connections" => o.ingress.connections = Some(number()?.min(1_000)),
                "--ingress-rate" => o.ingress.rate = Some(number()? as u64),
                "--ingress-idle" => o.ingress.idle = Some(number()?.min(30_000)),
                "--ingress-changes" => o.ingress.changes = Some(number()?.min(10_000)),
                "--ingress-change-interval-ms" => {
                    o.ingress.change_interval_ms = Some(number()?.min(1_000) as u64)
                }
                "--ingress-ingresses" => o.ingress.ingresses = Some(number()?),
                "--ingress-trials" => o.ingress.trials = Some(number()?.min(100)),
                "--ingress-parts" => o.ingress.parts = Some(ingress::Parts::parse(&value)?),
                "--ingress-targets" => o.ingress.targets = Some(ingress::Targets::parse(&value)?),
                "--only" => {
                    o.only = match value.as_str() {
                        "lb" => Only::Lb,
                        "dns" => Only::Dns,
                        "certs" => Only::Certs,
                        "ingress" => Only::Ingress,
                        _ => bail!("--only: lb, dns, certs or ingress, not {value}"),
                    }
                }
                _ => bail!("unknown option {flag}"),
            }
        }
        Ok(o)
    }
}

/// The ferrite-lb parts (`--lb-parts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbParts {
    /// Create -> IP / first ARP answer.
    pub latency: bool,
    /// ferrite-lb failover trials.
    pub failover: bool,
    /// The same trials with keepalived (VRRPv2 1 s, VRRPv3 100 ms).
    pub keepalived: bool,
    /// The announcing speaker starved of CPU: false failovers.
    pub starvation: bool,
    /// 10,000-Service allocation throughput and RSS at that scale.
    pub alloc: bool,
}

impl LbParts {
    /// Every part.
    pub const ALL: LbParts = LbParts {
        latency: true,
        failover: true,
        keepalived: true,
        starvation: true,
        alloc: true,
    };

    /// `all` or a comma-separated list of part names.
    pub fn parse(value: &str) -> Result<Self> {
        if value == "all" {
            return Ok(Self::ALL);
        }
        let mut p = LbParts {
            latency: false,
            failover: false,
            keepalived: false,
            starvation: false,
            alloc: false,
        };
        for part in value.split(',').map(str::trim) {
            match part {
                "latency" => p.latency = true,
                "failover" => p.failover = true,
                "keepalived" => p.keepalived = true,
                "starvation" => p.starvation = true,
                "alloc" => p.alloc = true,
                _ => {
                    bail!("--lb-parts: latency, failover, keepalived, starvation, alloc or all, not {part:?}")
                }
            }
        }
        Ok(p)
    }

    /// The flag that selects these parts, empty for all.
    pub fn flag(self) -> String {
        if self == Self::ALL {
            return String::new();
        }
        let names = [
            (self.latency, "latency"),
            (self.failover, "failover"),
            (self.keepalived, "keepalived"),
            (self.starvation, "starvation"),
            (self.alloc, "alloc"),
        ];
        let list: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        format!(" --lb-parts {}", list.join(","))
    }
}

/// `--certs-counts`: comma-separated counts, each 1 to 50,000, or `none` (no scale runs).
fn parse_counts(value: &str) -> Result<Vec<usize>> {
    if value == "none" {
        return Ok(vec![]);
    }
    let counts = value
        .split(',')
        .map(str::trim)
        .map(|c| {
            let n: usize = c
                .parse()
                .with_context(|| format!("--certs-counts: not a number: {c:?}"))?;
            ensure!((1..=50_000).contains(&n), "--certs-counts: each 1 to 50000");
            Ok(n)
        })
        .collect::<Result<Vec<usize>>>()?;
    ensure!(counts.len() <= 5, "--certs-counts: at most 5 counts");
    Ok(counts)
}

/// Busy loops pinned beside the announcing speaker in the CPU-starvation run.
pub const STARVE_HOGS: usize = 4;

/// Set in the re-executed child: the API server is already wrapped.
const WRAPPED: &str = "FERRITE_BENCH_APISERVER_WRAPPED";
/// NodePorts for the 10,000 Services: the default range (30000-32767) holds only 2768, and the 1.20
/// API server allocates one per LoadBalancer port (`allocateLoadBalancerNodePorts` is alpha there).
pub const NODE_PORT_RANGE: &str = "30000-49999";

/// Runs everything; returns the exit code.
pub fn main(opts: Options) -> i32 {
    if opts.only.lb()
        && std::env::var_os(WRAPPED).is_none()
        && std::env::var_os("FERRITE_KUBECONFIG").is_none()
    {
        return match rerun_with_wrapped_apiserver() {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bench failed: {e:#}");
                1
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench failed: tokio runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(run(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            1
        }
    }
}

/// The box starts `$KUBE_APISERVER` as given; a wrapper adds `--service-node-port-range`. The box reads
/// the variable at start, so this process runs itself again with it set (and removes the wrapper after).
fn rerun_with_wrapped_apiserver() -> Result<i32> {
    let real = std::env::var_os("KUBE_APISERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            ferrite_e2e::cache_dir()
                .join(format!("kube-{KUBE_VERSION}-{KUBE_BUILD}"))
                .join("kube-apiserver")
        });
    ensure!(
        real.is_file(),
        "{} not found: run `make deps` (e2e/scripts/install-deps.sh)",
        real.display()
    );
    let real = real.display().to_string();
    ensure!(!real.contains('\''), "odd path {real}");
    let dir = tempfile::Builder::new().prefix("ferrite-bench-").tempdir()?;
    let wrapper = dir.path().join("kube-apiserver");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nexec '{real}' \"$@\" --service-node-port-range={NODE_PORT_RANGE}\n"),
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let status = Command::new(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .env("KUBE_APISERVER", &wrapper)
        .env(WRAPPED, "1")
        .status()
        .context("running the benchmark")?;
    Ok(status.code().unwrap_or(1))
}

/// `ferrite-lb` next to this binary (same profile).
fn ferrite_lb_binary() -> Result<PathBuf> {
    sibling_binary("ferrite-lb")
}

/// Binary `name` next to this one (same profile).
fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating ferrite-bench")?;
    let lb = exe.parent().context("ferrite-bench has no directory")?.join(name);
    if !lb.is_file() {
        bail!(
            "{} not found: build with `cargo build --release --workspace --bins`",
            lb.display()
        );
    }
    Ok(lb)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    })
}

async fn run(opts: Options) -> Result<()> {
    let machine;
    let mut lb_results = None;
    if opts.only.lb() {
        let lb = ferrite_lb_binary()?;
        ensure!(
            is_root(),
            "the benchmarks need root (network namespaces, raw sockets)"
        );
        machine = report::Machine::probe(&lb);
        eprintln!("==> starting the box (etcd + kube-apiserver v1.20 on 127.0.0.1)");
        let kb = KubeBox::start().await.context("starting the box")?;
        let result = bench(&kb, &lb, &opts).await;
        kb.stop();
        lb_results = Some(result?);
    } else {
        machine = report::Machine::probe(&std::env::current_exe().context("locating ferrite-bench")?);
    }
    let mut dns_results = None;
    let mut dns_ctl_results = None;
    if opts.only.dns() {
        let (seconds, rounds) = (opts.dns_seconds, opts.dns_rounds);
        if opts.dns_parts.throughput {
            // Blocking work (dnsperf runs, the server's own runtime): off the async workers.
            dns_results = Some(
                tokio::task::spawn_blocking(move || dns::run(seconds, rounds))
                    .await
                    .context("the DNS benchmark panicked")??,
            );
        }
        if opts.dns_parts.controller() {
            let dns_bin = sibling_binary("ferrite-dns")?;
            dns_ctl_results = Some(
                dns_controller::run(
                    &dns_bin,
                    opts.dns_parts,
                    opts.dns_trials,
                    opts.dns_rss_records,
                    Duration::from_secs(opts.dns_rss_seconds),
                )
                .await?,
            );
        }
    }
    let mut certs_results = None;
    if opts.only.certs() {
        let bin = certs::binary();
        certs_results = Some(certs::run(bin.as_deref(), opts.certs_trials, &opts.certs_counts).await?);
    }
    let mut ingress_results = None;
    if opts.only.ingress() {
        ensure!(
            is_root(),
            "the ingress benchmark needs root (RLIMIT_NOFILE, taskset of every process)"
        );
        ingress_results = Some(ingress::run(&opts.ingress).await?);
    }
    let results = report::Results {
        machine,
        opts: opts.clone(),
        lb: lb_results,
        dns: dns_results,
        dns_controller: dns_ctl_results,
        certs: certs_results,
        ingress: ingress_results,
    };
    let text = report::markdown(&results);
    match &opts.write {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("==> wrote {}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Everything running for the benchmarks; dropped (stopped, removed) in field order.
pub(crate) struct Rig {
    pub speakers: Vec<Option<Supervised>>,
    pub controller: Supervised,
    pub admin: SocketAddr,
    pub lab: NetLab,
    pub lb: PathBuf,
    pub speaker_kc: PathBuf,
}

impl Rig {
    pub fn start_speaker(&self, i: usize) -> Result<Supervised> {
        let n = &self.lab.nodes[i];
        self.lab.spawn_in(
            &n.ns,
            "speaker",
            &self.lb,
            &ferrite_e2e::demo::speaker_args(&self.speaker_kc, &n.name),
            &[("FERRITE_LOG_LEVEL", "info")],
        )
    }

    /// RSS (kB) of the controller and of each speaker.
    pub fn rss(&self) -> report::Rss {
        report::Rss {
            controller: self.controller.program_pid().and_then(stats::rss_kib),
            speakers: self
                .speakers
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        self.lab.nodes[i].name.clone(),
                        s.as_ref()
                            .and_then(Supervised::program_pid)
                            .and_then(stats::rss_kib),
                    )
                })
                .collect(),
        }
    }

    /// Fails with the log tail of any process that died.
    pub fn check_alive(&mut self) -> Result<()> {
        if !self.controller.is_running() {
            bail!("the controller exited:\n{}", self.controller.log_tail(30));
        }
        for s in self.speakers.iter_mut().flatten() {
            if !s.is_running() {
                bail!("a speaker exited ({}):\n{}", s.log.display(), s.log_tail(30));
            }
        }
        Ok(())
    }
}

async fn start_controller(kb: &KubeBox, lb: &Path, kubeconfig: &Path) -> Result<(Supervised, SocketAddr)> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        "--lease-namespace=ferrite-system".into(),
    ];
    let mut proc = Supervised::spawn(
        "ferrite-lb controller",
        lb,
        &args,
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join("bench-controller.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("controller exited:\n{}", proc.log_tail(30));
        }
        if let Ok((200, _)) = stats::http_get(admin, "/readyz").await {
            return Ok((proc, admin));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("controller not ready within 60 s:\n{}", proc.log_tail(30))
}

async fn bench(kb: &KubeBox, lb: &Path, opts: &Options) -> Result<report::LbResults> {
    eprintln!("==> installing the chart (helm), minting ServiceAccount kubeconfigs");
    ferrite_e2e::demo::install_chart(kb).await?;
    let controller_kc = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-controller")
        .await?;
    let speaker_kc = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-speaker")
        .await?;
    let apiserver = kb
        .client()
        .await
        .apiserver_version()
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "unknown".into());

    eprintln!("==> building the lab: 3 node namespaces + a client on a bridge");
    let lab = NetLab::new(kb, 3)?;
    lab.register_nodes(kb).await?;
    eprintln!("==> starting the controller (release build {})", lb.display());
    let (controller, admin) = start_controller(kb, lb, &controller_kc).await?;
    let mut rig = Rig {
        speakers: vec![],
        controller,
        admin,
        lab,
        lb: lb.to_path_buf(),
        speaker_kc,
    };
    for i in 0..rig.lab.nodes.len() {
        let s = rig.start_speaker(i)?;
        rig.speakers.push(Some(s));
    }
    // The speakers' startup grace (3 s) and a gossip round; then measure idle memory.
    tokio::time::sleep(Duration::from_secs(8)).await;
    rig.check_alive()?;
    let rss_idle = rig.rss();
    eprintln!("    idle RSS: {rss_idle:?}");

    let client = kb.client().await;
    let ns_lat = kb.namespace("bench-lat").await;
    let parts = opts.lb_parts;
    measure::lan_pool(&client, &rig, &ns_lat).await?;
    let mut latency = measure::Latency::default();
    if parts.latency {
        eprintln!(
            "==> 1. create -> IP in status / first ARP answer, {} Services",
            opts.latency_n
        );
        latency = measure::latency(&client, &rig, &ns_lat, opts.latency_n).await?;
        rig.check_alive()?;
    }
    let mut failover = measure::Failover::default();
    if parts.failover {
        eprintln!("==> 2. failover, {} trials", opts.trials);
        failover = measure::failover(&client, &mut rig, &ns_lat, opts.trials).await?;
        rig.check_alive()?;
    }
    let mut keepalived = vec![];
    if parts.keepalived {
        for vrrp in measure::Vrrp::ALL {
            eprintln!("==> 2b. failover with {}, {} trials", vrrp.label(), opts.trials);
            // A missing keepalived is said in the report, not fatal to the other parts.
            let run = measure::keepalived(&rig, vrrp, opts.trials)
                .await
                .map_err(|e| format!("{e:#}"));
            if let Err(e) = &run {
                eprintln!("    keepalived run failed: {e}");
            }
            keepalived.push((vrrp, run));
            rig.check_alive()?;
        }
    }
    let mut starvation = None;
    if parts.starvation {
        let period = Duration::from_secs(opts.starve_seconds);
        eprintln!("==> 2c. the announcing speaker starved of CPU for {period:?}");
        starvation = Some(measure::starvation(&client, &mut rig, &ns_lat, STARVE_HOGS, period).await?);
        rig.check_alive()?;
    }
    // Memory again after the failover restarts, still with only a handful of Services.
    let rss_before = rig.rss();
    let mut alloc = measure::Alloc::default();
    let mut rss_loaded = report::Rss::default();
    if parts.alloc {
        let ns_alloc = kb.namespace("bench-alloc").await;
        eprintln!(
            "==> 3. allocation throughput, {} Services, {} in flight",
            opts.services, opts.concurrency
        );
        let sample = opts.apiserver_sample.unwrap_or(opts.services);
        alloc =
            measure::allocation(&client, &rig, &ns_alloc, opts.services, opts.concurrency, sample).await?;
        rig.check_alive()?;
        rss_loaded = rig.rss();
        eprintln!("    RSS at {} Services: {rss_loaded:?}", opts.services);
    }
    Ok(report::LbResults {
        apiserver,
        parts,
        latency,
        failover,
        keepalived,
        starvation,
        alloc,
        rss_idle,
        rss_before,
        rss_loaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options> {
        Options::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn only_selects_the_parts() {
        let both = parse(&[]).expect("defaults");
        assert!(both.only.lb() && both.only.dns());
        assert_eq!((both.dns_seconds, both.dns_rounds), (10, 3));
        let dns = parse(&["--only", "dns", "--dns-seconds=4"]).expect("dns only");
        assert!(!dns.only.lb() && dns.only.dns());
        assert_eq!(dns.dns_seconds, 4);
        let lb = parse(&["--only=lb"]).expect("lb only");
        assert!(lb.only.lb() && !lb.only.dns());
        let err = parse(&["--only", "both"]).expect_err("bad value");
        assert_eq!(err.to_string(), "--only: lb, dns, certs or ingress, not both");
        let ing = parse(&["--only", "ingress", "--quick", "--ingress-idle=500"]).expect("ingress only");
        assert!(ing.only.ingress() && !ing.only.lb() && !ing.only.certs() && both.only.ingress());
        let s = ing.ingress.settings();
        assert_eq!(
            (s.idle, s.changes, s.duration),
            (500, 200, Duration::from_secs(3))
        );
        assert_eq!(
            ing.ingress.command(),
            "ferrite-bench --only ingress --quick --ingress-idle 500"
        );
        let full = both.ingress.settings();
        assert_eq!((full.idle, full.changes, full.ingresses), (10_000, 1_000, 10_000));
        assert!(parse(&["--ingress-duration", "0"]).is_err());
        let certs = parse(&["--only", "certs"]).expect("certs only");
        assert!(certs.only.certs() && !certs.only.lb() && !certs.only.dns());
        assert!(both.only.certs());
    }

    #[test]
    fn apiserver_sample_defaults_to_the_run_size() {
        let d = parse(&["--services", "5000"]).expect("services");
        assert_eq!((d.services, d.apiserver_sample), (5000, None));
        let o = parse(&["--apiserver-sample=2000"]).expect("sample");
        assert_eq!(o.apiserver_sample, Some(2000));
        assert!(parse(&["--apiserver-sample", "0"]).is_err());
    }

    #[test]
    fn lb_parts_flag() {
        let d = parse(&[]).expect("defaults");
        assert_eq!((d.lb_parts, d.starve_seconds), (LbParts::ALL, 60));
        assert_eq!(d.lb_parts.flag(), "");
        let o = parse(&["--lb-parts", "failover, keepalived", "--starve-seconds=5"]).expect("parts");
        assert!(o.lb_parts.failover && o.lb_parts.keepalived);
        assert!(!o.lb_parts.latency && !o.lb_parts.alloc && !o.lb_parts.starvation);
        assert_eq!(o.lb_parts.flag(), " --lb-parts failover,keepalived");
        assert_eq!(o.starve_seconds, 5);
        let err = parse(&["--lb-parts", "failover,bgp"]).expect_err("unknown part");
        assert!(err.to_string().contains("\"bgp\""), "{err}");
        assert_eq!(parse(&["--lb-parts=all"]).expect("all").lb_parts, LbParts::ALL);
    }

    #[test]
    fn certs_flags() {
        let d = parse(&[]).expect("defaults");
        assert_eq!((d.certs_trials, d.certs_counts.clone()), (20, vec![1000, 10000]));
        let o = parse(&["--certs-trials=3", "--certs-counts", "50, 200"]).expect("flags");
        assert_eq!((o.certs_trials, o.certs_counts), (3, vec![50, 200]));
        assert!(parse(&["--certs-counts", "10,x"]).is_err());
        assert!(parse(&["--certs-counts", "0"]).is_err());
        assert!(parse(&["--certs-counts", ""]).is_err());
        assert!(
            parse(&["--certs-counts", "none"])
                .expect("none")
                .certs_counts
                .is_empty()
        );
    }
}
