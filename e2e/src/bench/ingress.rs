//! The benchmarks of ferrite-ingress (`ferrite-bench --only ingress`): the same backend behind
//! ferrite-ingress, nginx, HAProxy and Caddy, and the backend alone as the ceiling, in one run.
//!
//! ```text
//!   CPU 0: load generator (wrk / h2load / this process)  +  backend (nginx, 1 worker, `return 200`)
//!   CPU 1: the proxy under test, one worker:
//!            nginx (worker_processes 1) | HAProxy (nbthread 1) | Caddy (GOMAXPROCS=1)
//!            | ferrite-ingress controller --worker-threads 1 (on the box: etcd + kube-apiserver 1.20,
//!              IngressClass + Ingress + Service + EndpointSlice -> 127.0.0.1:<backend>)
//!   every listener on 127.0.0.1, random ports; one self-signed ECDSA P-256 certificate for all
//!
//!   per target, metric by metric (all targets run one metric before the next metric starts):
//!   1. wrk -t1 -cC HTTP/1.1 keep-alive, plain and TLS          4. wrk Connection: close over TLS
//!   2. h2load -t1 -c16 -m10 HTTP/2 over TLS                        (a full handshake per request)
//!   3. h2load --h1 --rps: p50/p99 at one fixed rate (half the slowest proxy's plain throughput)
//!   5. RSS of the process tree with N idle keep-alive connections opened from here
//!   6. configuration changes under wrk load: ferrite-ingress Ingress/EndpointSlice changes through
//!      the API, nginx SIGHUP (= `nginx -s reload`); failed requests counted
//!   7. ferrite-ingress only: N Ingresses created, then one changed -> the first request it serves
//! ```
//!
//! Every process (proxies, backend, generators) is started here and stopped by its own PID (the
//! `Supervised` watchdog, `kill_on_drop` children), also on error. Every wait and loop is bounded.

use super::stats::{self, quantile};
use anyhow::{Context, Result, bail, ensure};
use ferrite_e2e::{KubeBox, Supervised, process::free_port};
use futures::{StreamExt, stream};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The CPU the proxies run on.
pub const PROXY_CPU: &str = "1";
/// The CPU of the load generator, the backend and this process.
pub const LOAD_CPU: &str = "0";
/// HTTP/2 clients and streams per client of the h2load runs.
pub const H2_CLIENTS: usize = 16;
/// See [`H2_CLIENTS`].
pub const H2_STREAMS: usize = 10;
/// Connections of the handshake run.
pub const HANDSHAKE_CONNECTIONS: usize = 16;
/// Clients of the fixed-rate run (one request in flight each).
pub const RATE_CLIENTS: usize = 20;
/// Ingress creates in flight.
const CREATE_CONCURRENCY: usize = 32;
/// Idle connections opened in flight.
const OPEN_CONCURRENCY: usize = 256;
/// The name the certificate is for.
pub const HOST: &str = "bench.test";
/// The namespace of the ferrite objects.
const NS: &str = "bench-ingress";
/// The IngressClass.
const CLASS: &str = "ferrite";

/// The `--ingress-*` flags as given (`None`: the default, or the `--quick` default).
#[derive(Debug, Clone, Default)]
pub struct Flags {
    pub duration: Option<u64>,
    pub connections: Option<usize>,
    pub rate: Option<u64>,
    pub idle: Option<usize>,
    pub changes: Option<usize>,
    pub change_interval_ms: Option<u64>,
    pub ingresses: Option<usize>,
    pub trials: Option<usize>,
    pub quick: bool,
    /// `--ingress-parts`: the metrics to run (`None`: all).
    pub parts: Option<Parts>,
    /// `--ingress-targets`: the proxies to measure (`None`: all).
    pub targets: Option<Targets>,
}

/// The ingress metrics (`--ingress-parts`), for quick comparisons of one row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub plain: bool,
    pub tls: bool,
    pub h2: bool,
    pub handshakes: bool,
    pub rate: bool,
    pub idle: bool,
    pub changes: bool,
    pub propagation: bool,
}

impl Parts {
    pub const ALL: Parts = Parts {
        plain: true,
        tls: true,
        h2: true,
        handshakes: true,
        rate: true,
        idle: true,
        changes: true,
        propagation: true,
    };
    const NAMES: &'static str = "plain, tls, h2, handshake, rate, idle, changes, propagation or all";

    /// `plain,tls,...` or `all`.
    pub fn parse(list: &str) -> Result<Parts> {
        let mut p = Parts {
            plain: false,
            tls: false,
            h2: false,
            handshakes: false,
            rate: false,
            idle: false,
            changes: false,
            propagation: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "all" => p = Parts::ALL,
                "plain" => p.plain = true,
                "tls" => p.tls = true,
                "h2" => p.h2 = true,
                "handshake" => p.handshakes = true,
                "rate" => p.rate = true,
                "idle" => p.idle = true,
                "changes" => p.changes = true,
                "propagation" => p.propagation = true,
                _ => bail!("--ingress-parts: {}, not {name:?}", Self::NAMES),
            }
        }
        Ok(p)
    }

    fn names(&self) -> String {
        let all = [
            (self.plain, "plain"),
            (self.tls, "tls"),
            (self.h2, "h2"),
            (self.handshakes, "handshake"),
            (self.rate, "rate"),
            (self.idle, "idle"),
            (self.changes, "changes"),
            (self.propagation, "propagation"),
        ];
        let on: Vec<&str> = all.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        on.join(",")
    }
}

/// The measured proxies (`--ingress-targets`); the backend always runs (it is the upstream), its
/// own row only when named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub backend: bool,
    pub nginx: bool,
    pub haproxy: bool,
    pub caddy: bool,
    pub ferrite: bool,
}

impl Targets {
    pub const ALL: Targets = Targets {
        backend: true,
        nginx: true,
        haproxy: true,
        caddy: true,
        ferrite: true,
    };

    /// `ferrite,nginx,...` or `all`.
    pub fn parse(list: &str) -> Result<Targets> {
        let mut t = Targets {
            backend: false,
            nginx: false,
            haproxy: false,
            caddy: false,
            ferrite: false,
        };
        for name in list.split(',').map(str::trim) {
            match name {
                "all" => t = Targets::ALL,
                "backend" => t.backend = true,
                "nginx" => t.nginx = true,
                "haproxy" => t.haproxy = true,
                "caddy" => t.caddy = true,
                "ferrite" => t.ferrite = true,
                _ => bail!("--ingress-targets: backend, nginx, haproxy, caddy, ferrite or all, not {name:?}"),
            }
        }
        Ok(t)
    }

    fn has(&self, kind: Kind) -> bool {
        match kind {
            Kind::Backend => self.backend,
            Kind::Nginx => self.nginx,
            Kind::Haproxy => self.haproxy,
            Kind::Caddy => self.caddy,
            Kind::Ferrite => self.ferrite,
        }
    }

    fn names(&self) -> String {
        let all = [
            (self.backend, "backend"),
            (self.nginx, "nginx"),
            (self.haproxy, "haproxy"),
            (self.caddy, "caddy"),
            (self.ferrite, "ferrite"),
        ];
        let on: Vec<&str> = all.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        on.join(",")
    }
}

/// What one run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Each throughput and latency run.
    pub duration: Duration,
    /// The handshake run.
    pub handshake_duration: Duration,
    /// wrk's connections for the keep-alive runs.
    pub connections: usize,
    /// The fixed rate of the latency run (`None`: half the slowest proxy's plain throughput).
    pub rate: Option<u64>,
    /// Idle connections of the RSS run.
    pub idle: usize,
    /// Configuration changes under load.
    pub changes: usize,
    /// Pause between two changes.
    pub change_interval: Duration,
    /// Ingresses of the propagation run.
    pub ingresses: usize,
    /// Change -> served trials at that scale.
    pub trials: usize,
    pub quick: bool,
    pub parts: Parts,
    pub targets: Targets,
}

impl Flags {
    /// The settings: given flags, else the defaults (shorter with `--quick`).
    pub fn settings(&self) -> Settings {
        let q = self.quick;
        let duration = self.duration.unwrap_or(if q { 3 } else { 10 });
        Settings {
            duration: Duration::from_secs(duration),
            handshake_duration: Duration::from_secs(duration.min(if q { 2 } else { 4 })),
            connections: self.connections.unwrap_or(64),
            rate: self.rate,
            idle: self.idle.unwrap_or(if q { 2_000 } else { 10_000 }),
            changes: self.changes.unwrap_or(if q { 200 } else { 1_000 }),
            change_interval: Duration::from_millis(self.change_interval_ms.unwrap_or(20)),
            ingresses: self.ingresses.unwrap_or(if q { 1_000 } else { 10_000 }),
            trials: self.trials.unwrap_or(if q { 3 } else { 10 }),
            quick: q,
            parts: self.parts.unwrap_or(Parts::ALL),
            targets: self.targets.unwrap_or(Targets::ALL),
        }
    }

    /// The flags for the report's command line.
    pub fn command(&self) -> String {
        let mut s = String::from("ferrite-bench --only ingress");
        if self.quick {
            s.push_str(" --quick");
        }
        let mut add = |f: &str, v: Option<String>| {
            if let Some(v) = v {
                let _ = write!(s, " --ingress-{f} {v}");
            }
        };
        add("duration", self.duration.map(|v| v.to_string()));
        add("connections", self.connections.map(|v| v.to_string()));
        add("rate", self.rate.map(|v| v.to_string()));
        add("idle", self.idle.map(|v| v.to_string()));
        add("changes", self.changes.map(|v| v.to_string()));
        add(
            "change-interval-ms",
            self.change_interval_ms.map(|v| v.to_string()),
        );
        add("ingresses", self.ingresses.map(|v| v.to_string()));
        add("trials", self.trials.map(|v| v.to_string()));
        add("parts", self.parts.map(|p| p.names()));
        add("targets", self.targets.map(|t| t.names()));
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Results

/// One throughput run (wrk or h2load).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Load {
    /// Requests per second over the run.
    pub rps: f64,
    /// Requests completed.
    pub requests: u64,
    /// Socket errors (connect, read, write, timeout) or h2load's failed/errored/timeout.
    pub errors: u64,
    /// Responses that were not 2xx/3xx.
    pub non2xx: u64,
    /// Latency percentiles (s), when the tool gave them.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// CPU time (user + system, s) the measured process tree used during the run: CPU per request
    /// stays comparable on a busy machine, where requests per second do not.
    pub cpu_seconds: Option<f64>,
}

impl Load {
    /// Requests that did not get a good answer.
    pub fn failed(&self) -> u64 {
        self.errors + self.non2xx
    }
}

/// The fixed-rate run.
#[derive(Debug, Clone, Default)]
pub struct Fixed {
    /// Requests per second asked for (all clients together).
    pub rate: u64,
    /// Requests per second achieved.
    pub achieved: f64,
    pub ok: u64,
    pub failed: u64,
    /// Percentiles (s) of the successful requests.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

/// The idle-connections run.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub asked: usize,
    /// Connections that got a 200 to their first request.
    pub opened: usize,
    /// Of those, still open when the RSS was read.
    pub still_open: usize,
    /// RSS (kB) of the process tree before opening them and with them open.
    pub rss_before: Option<u64>,
    pub rss: Option<u64>,
}

/// Configuration changes under load.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// What one change is.
    pub what: String,
    /// Changes made.
    pub done: usize,
    /// Changes that failed (API error, signal not delivered).
    pub change_errors: usize,
    /// First change -> last change.
    pub took: Duration,
    /// The load during the changes.
    pub load: Load,
    /// Extra facts (route-table swaps counted by the proxy, nginx workers left).
    pub note: String,
}

/// The propagation run (ferrite-ingress only).
#[derive(Debug, Clone, Default)]
pub struct Propagation {
    pub ingresses: usize,
    pub create_errors: usize,
    /// First create -> every create answered.
    pub created: Duration,
    /// First create -> the last Ingress served (`None`: not within the limit).
    pub all_served: Option<Duration>,
    /// Change -> served, per trial (`None`: not within the limit).
    pub trials: Vec<Option<Duration>>,
    /// RSS (kB) of ferrite-ingress with them all.
    pub rss: Option<u64>,
}

/// One column of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub name: String,
    pub version: String,
    /// Workers and CPU.
    pub setup: String,
    pub plain: Option<Load>,
    pub tls: Option<Load>,
    pub h2: Option<Load>,
    pub handshakes: Option<Load>,
    pub fixed: Option<Fixed>,
    pub idle: Option<Idle>,
    pub changes: Option<Changes>,
    /// Runs that could not be done, with why.
    pub failures: Vec<String>,
}

/// What `--only ingress` measured.
#[derive(Debug, Clone, Default)]
pub struct IngressResults {
    pub command: String,
    pub settings: Option<Settings>,
    /// True when the proxies and the generator were pinned to two CPUs.
    pub pinned: bool,
    pub rows: Vec<Row>,
    pub propagation: Option<Propagation>,
    pub tools: Vec<String>,
    /// How long the part took.
    pub took: Duration,
    /// ferrite-ingress's flags.
    pub ferrite_flags: String,
    /// Why something was not measured.
    pub notes: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Parsers

/// A duration as wrk prints it (`596.00us`, `1.04ms`, `2.00s`, `1.50m`), in seconds.
pub fn parse_wrk_duration(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * scale)
}

/// wrk's output (with or without `--latency`).
pub fn parse_wrk(out: &str) -> Result<Load> {
    let mut load = Load::default();
    let mut rps = None;
    let mut requests = None;
    let mut in_dist = false;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if t.contains(" requests in ") {
            requests = t.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
            in_dist = false;
        } else if let Some(v) = t.strip_prefix("Socket errors:") {
            load.errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
        } else if let Some(v) = t.strip_prefix("Non-2xx or 3xx responses:") {
            load.non2xx = v.trim().parse().unwrap_or(0);
        } else if t == "Latency Distribution" {
            in_dist = true;
        } else if in_dist {
            let mut parts = t.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("50%"), Some(v)) => load.p50 = parse_wrk_duration(v),
                (Some("99%"), Some(v)) => load.p99 = parse_wrk_duration(v),
                (Some(p), Some(_)) if p.ends_with('%') => {}
                _ => in_dist = false,
            }
        }
    }
    load.rps = rps.with_context(|| format!("no Requests/sec in wrk's output:\n{}", tail(out, 8)))?;
    load.requests =
        requests.with_context(|| format!("no request count in wrk's output:\n{}", tail(out, 8)))?;
    Ok(load)
}

/// h2load's summary.
pub fn parse_h2load(out: &str) -> Result<Load> {
    let mut load = Load::default();
    let mut rps = None;
    let mut ok = None;
    let mut failed = 0;
    for line in out.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("finished in ") {
            // finished in 10.00s, 55555.50 req/s, 6.10MB/s
            rps = rest
                .split(',')
                .nth(1)
                .and_then(|p| p.trim().strip_suffix(" req/s"))
                .and_then(|v| v.trim().parse::<f64>().ok());
        } else if let Some(rest) = t.strip_prefix("requests:") {
            // requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout
            for part in rest.split(',') {
                let mut w = part.split_whitespace();
                let (Some(n), Some(what)) = (w.next(), w.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "succeeded" => ok = Some(n),
                    // HTTP-level failures (4xx, 5xx) included; taken apart below.
                    "failed" => failed = n,
                    _ => {}
                }
            }
        } else if let Some(rest) = t.strip_prefix("status codes:") {
            // status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx
            load.non2xx = rest
                .split(',')
                .filter_map(|p| {
                    let mut w = p.split_whitespace();
                    let n = w.next()?.parse::<u64>().ok()?;
                    matches!(w.next()?, "4xx" | "5xx").then_some(n)
                })
                .sum();
        }
    }
    load.rps = rps.with_context(|| format!("no req/s in h2load's output:\n{}", tail(out, 8)))?;
    let ok = ok.with_context(|| format!("no request counts in h2load's output:\n{}", tail(out, 8)))?;
    // h2load's `failed` counts 4xx/5xx answers and requests that got no answer (`errored`, `timeout`).
    load.errors = failed.saturating_sub(load.non2xx);
    load.requests = ok;
    Ok(load)
}

/// h2load's `--log-file`: (status, seconds) per request.
pub fn parse_h2load_log(log: &str) -> Vec<(u16, f64)> {
    log.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _start = f.next()?;
            let status: u16 = f.next()?.trim().parse().ok()?;
            let us: f64 = f.next()?.trim().parse().ok()?;
            Some((status, us / 1e6))
        })
        .collect()
}

/// Nearest-rank percentile `q` of seconds.
fn pct(v: &[f64], q: f64) -> Option<f64> {
    let d: Vec<Duration> = v.iter().map(|s| Duration::from_secs_f64(s.max(0.0))).collect();
    quantile(&d, q).map(|d| d.as_secs_f64())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Processes

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

fn version_of(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{program} (version unknown)"))
}

/// `pid` and every descendant.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 1024 {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

/// CPU time (user + system, s) of `pid` and its descendants, from `/proc/<pid>/stat` (clock ticks
/// of USER_HZ = 100, the value Linux fixes for userspace).
pub fn tree_cpu_seconds(pid: u32) -> Option<f64> {
    let ticks: Vec<u64> = tree(pid)
        .into_iter()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Fields after the command (which may hold spaces) start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the command.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .collect();
    (!ticks.is_empty()).then(|| ticks.iter().sum::<u64>() as f64 / 100.0)
}

/// Runs `run` and records the CPU time the process tree of `pid` used meanwhile.
async fn with_cpu(pid: Option<u32>, run: impl std::future::Future<Output = Result<Load>>) -> Result<Load> {
    let before = pid.and_then(tree_cpu_seconds);
    let mut load = run.await?;
    let after = pid.and_then(tree_cpu_seconds);
    load.cpu_seconds = before.zip(after).map(|(b, a)| (a - b).max(0.0));
    Ok(load)
}

/// Microseconds of CPU per request of a run, when measured.
fn cpu_per_request(l: Option<&Load>) -> String {
    match l {
        Some(Load {
            cpu_seconds: Some(c),
            requests,
            ..
        }) if *requests > 0 => format!("{:.0}", c * 1e6 / *requests as f64),
        _ => "–".into(),
    }
}

/// VmRSS (kB) of `pid` and its descendants (nginx: master + workers).
pub fn tree_rss_kib(pid: u32) -> Option<u64> {
    let v: Vec<u64> = tree(pid).into_iter().filter_map(stats::rss_kib).collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// Raises this process's open-file limit (inherited by everything started after): 10,000 idle
/// connections need 10,000 descriptors here and in the proxy. Tries `want`, else the hard limit
/// (a container without CAP_SYS_RESOURCE cannot go past it); the limit set.
fn raise_nofile(want: u64) -> Result<u64> {
    let set = |soft: u64, hard: u64| {
        std::process::Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={soft}:{hard}"))
            .output()
            .context("running prlimit (util-linux)")
    };
    if set(want, want)?.status.success() {
        return Ok(want);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .context("reading the open-file limit from /proc/self/limits")?;
    let out = set(hard, hard)?;
    ensure!(
        out.status.success(),
        "prlimit --nofile={hard}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(hard)
}

/// Pins every thread of this process and of everything it started so far (the box) to `cpu`.
fn pin_self(cpu: &str) -> Result<()> {
    for pid in tree(std::process::id()) {
        let out = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpu])
            .arg(pid.to_string())
            .output()
            .context("running taskset")?;
        // A short-lived child (the watchdogs' `sleep`) may be gone already.
        ensure!(
            out.status.success() || pid != std::process::id(),
            "taskset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A generator run: `program args` on the load CPU, killed by PID if it overruns `limit`.
async fn run_tool(pinned: bool, program: &str, args: &[String], limit: Duration) -> Result<String> {
    let mut cmd = if pinned {
        let mut c = tokio::process::Command::new("taskset");
        c.args(["-c", LOAD_CPU, program]);
        c
    } else {
        tokio::process::Command::new(program)
    };
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("{program} did not finish within {limit:?}"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{program} exited with {}:\n{}",
        out.status,
        tail(&text, 10)
    );
    Ok(text)
}

/// A plain HTTP/1.1 GET with `Host: host`, connection closed after; the status code.
pub async fn status_of(addr: SocketAddr, host: &str, path: &str) -> Result<u16> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut buf = vec![0u8; 512];
        let mut n = 0;
        while n < 12 {
            let r = s.read(&mut buf[n..]).await?;
            if r == 0 {
                break;
            }
            n += r;
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path} from {addr} timed out"))??;
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status from {addr}: {text:?}"))
}

/// A started proxy (or the backend).
struct Target {
    row: Row,
    http: SocketAddr,
    https: SocketAddr,
    proc: Supervised,
    kind: Kind,
    /// ferrite-ingress's admin server.
    admin: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backend,
    Nginx,
    Haproxy,
    Caddy,
    Ferrite,
}

impl Target {
    fn rss(&self) -> Option<u64> {
        self.proc.program_pid().and_then(tree_rss_kib)
    }

    fn alive(&mut self) -> Result<()> {
        if !self.proc.is_running() {
            bail!("{} exited:\n{}", self.row.name, self.proc.log_tail(20));
        }
        Ok(())
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Spawns `program args`, pinned to `cpu` when pinning.
fn spawn(
    name: &str,
    pinned: Option<&str>,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<Supervised> {
    match pinned {
        Some(cpu) => {
            let mut a = vec!["-c".to_string(), cpu.to_string(), program.display().to_string()];
            a.extend(args.iter().cloned());
            Supervised::spawn(name, Path::new("/usr/bin/taskset"), &a, env, log)
        }
        None => Supervised::spawn(name, program, args, env, log),
    }
}

/// Waits until `addr` answers 200 for `/` (plain HTTP), bounded.
async fn wait_serving(proc: &mut Supervised, name: &str, addr: SocketAddr, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("{name} exited:\n{}", proc.log_tail(20));
        }
        match status_of(addr, HOST, "/").await {
            Ok(200) => return Ok(()),
            Ok(c) => last = format!("status {c}"),
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{name} did not answer 200 on {addr} within {limit:?} (last: {last}):\n{}",
        proc.log_tail(20)
    )
}

/// `curl -k` over TLS (HTTP/2 when offered): the status, to check the TLS listener before measuring.
async fn check_tls(https: SocketAddr) -> Result<()> {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sk",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--max-time",
            "5",
        ])
        .arg("--resolve")
        .arg(format!("{HOST}:{}:127.0.0.1", https.port()))
        .arg(format!("https://{HOST}:{}/", https.port()))
        .kill_on_drop(true)
        .output()
        .await
        .context("running curl")?;
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    ensure!(
        s == "200 2",
        "TLS check on {https}: curl says {s:?} (want \"200 2\": status 200 over HTTP/2)"
    );
    Ok(())
}

/// The certificate (ECDSA P-256, `bench.test` and 127.0.0.1) all servers present.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    /// cert + key in one file (HAProxy).
    both: PathBuf,
    cert_pem: String,
    key_pem: String,
}

fn make_cert(dir: &Path) -> Result<Cert> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(vec![HOST.to_string(), "127.0.0.1".to_string()])?;
    p.distinguished_name.push(DnType::CommonName, HOST);
    let cert = p.self_signed(&key)?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    let c = Cert {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        both: dir.join("both.pem"),
        cert_pem,
        key_pem,
    };
    std::fs::write(&c.cert, &c.cert_pem)?;
    std::fs::write(&c.key, &c.key_pem)?;
    std::fs::write(&c.both, format!("{}{}", c.cert_pem, c.key_pem))?;
    Ok(c)
}

fn temp_paths(dir: &Path) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {};\n", dir.join(format!("tmp-{t}")).display()))
        .collect()
}

/// The backend: nginx, one worker, `return 200`, plain on 127.0.0.1 and 127.0.0.2 (a second
/// endpoint for the EndpointSlice changes) and TLS + HTTP/2 for the backend-alone TLS rows.
pub fn backend_conf(dir: &Path, port: u16, tls_port: u16, cert: &Path, key: &Path) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {dir}/backend-error.log warn;\n\
         events {{ worker_connections 16384; }}\nhttp {{\n  access_log off;\n{temp}\
         \x20 keepalive_timeout 120s;\n  keepalive_requests 10000000;\n  default_type text/plain;\n\
         \x20 server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    listen 127.0.0.2:{port} backlog=4096;\n\
         \x20   listen 127.0.0.1:{tls_port} ssl http2 backlog=4096;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n\
         \x20   ssl_protocols TLSv1.2 TLSv1.3;\n    location / {{ return 200 \"ok\\n\"; }}\n  }}\n}}\n",
        pid = dir.join("backend.pid").display(),
        dir = dir.display(),
        temp = temp_paths(&dir.join("backend")),
        cert = cert.display(),
        key = key.display(),
    )
}

/// nginx as the reverse proxy: one worker, upstream keep-alive, forwarded headers.
pub fn nginx_conf(dir: &Path, http: u16, https: u16, backend: u16, cert: &Path, key: &Path) -> String {
    format!(
        "worker_processes 1;\ndaemon off;\npid {pid};\nerror_log {dir}/nginx-error.log warn;\n\
         events {{ worker_connections 19000; }}\nhttp {{\n  access_log off;\n{temp}\
         \x20 keepalive_timeout 120s;\n  keepalive_requests 10000000;\n\
         \x20 upstream backend {{\n    server 127.0.0.1:{backend};\n    keepalive 128;\n    keepalive_requests 10000000;\n  }}\n\
         \x20 server {{\n    listen 127.0.0.1:{http} backlog=4096;\n    listen 127.0.0.1:{https} ssl http2 backlog=4096;\n\
         \x20   ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.2 TLSv1.3;\n\
         \x20   location / {{\n      proxy_pass http://backend;\n      proxy_http_version 1.1;\n\
         \x20     proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
         \x20     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
         \x20     proxy_set_header X-Forwarded-Proto $scheme;\n    }}\n  }}\n}}\n",
        pid = dir.join("nginx.pid").display(),
        dir = dir.display(),
        temp = temp_paths(&dir.join("nginx")),
        cert = cert.display(),
        key = key.display(),
    )
}

/// HAProxy: one thread, keep-alive both ways, `http-reuse always`.
pub fn haproxy_conf(http: u16, https: u16, backend: u16, both: &Path) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 15000\n  no strict-limits\n  tune.ssl.default-dh-param 2048\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n\
         \x20 timeout http-keep-alive 120s\n  timeout http-request 10s\n  option http-keep-alive\n  option forwardfor\n  maxconn 15000\n\
         frontend fe\n  bind 127.0.0.1:{http} backlog 4096\n  bind 127.0.0.1:{https} ssl crt {both} alpn h2,http/1.1 backlog 4096\n\
         \x20 http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}\n  default_backend be\n\
         backend be\n  http-reuse always\n  server s1 127.0.0.1:{backend}\n",
        both = both.display()
    )
}

/// Caddy: `reverse_proxy` (keep-alive upstream by default), HTTP/1.1 and HTTP/2 only.
pub fn caddy_conf(http: u16, https: u16, backend: u16, cert: &Path, key: &Path) -> String {
    format!(
        "{{\n  admin off\n  auto_https off\n  default_sni {HOST}\n  servers {{\n    protocols h1 h2\n  }}\n}}\n\
         http://:{http} {{\n  bind 127.0.0.1\n  reverse_proxy 127.0.0.1:{backend}\n}}\n\
         https://:{https} {{\n  bind 127.0.0.1\n  tls {cert} {key}\n  reverse_proxy 127.0.0.1:{backend}\n}}\n",
        cert = cert.display(),
        key = key.display(),
    )
}

// ---------------------------------------------------------------------------------------------
// Measurements

fn wrk_args(url: &str, connections: usize, d: Duration, close: bool) -> Vec<String> {
    let mut a = vec![
        "-t1".to_string(),
        format!("-c{connections}"),
        format!("-d{}s", d.as_secs().max(1)),
        "--timeout".into(),
        "5s".into(),
        "--latency".into(),
        "-H".into(),
        format!("Host: {HOST}"),
    ];
    if close {
        a.push("-H".into());
        a.push("Connection: close".into());
    }
    a.push(url.to_string());
    a
}

async fn wrk(pinned: bool, url: &str, connections: usize, d: Duration, close: bool) -> Result<Load> {
    let out = run_tool(
        pinned,
        "wrk",
        &wrk_args(url, connections, d, close),
        d + Duration::from_secs(30),
    )
    .await?;
    parse_wrk(&out)
}

async fn h2load(pinned: bool, url: &str, d: Duration) -> Result<Load> {
    let args = vec![
        "-t1".to_string(),
        format!("-c{H2_CLIENTS}"),
        format!("-m{H2_STREAMS}"),
        "-D".into(),
        format!("{}", d.as_secs().max(1)),
        "--warm-up-time=1".into(),
        url.to_string(),
    ];
    let out = run_tool(pinned, "h2load", &args, d + Duration::from_secs(30)).await?;
    parse_h2load(&out)
}

async fn fixed_rate(pinned: bool, url: &str, rate: u64, d: Duration, dir: &Path) -> Result<Fixed> {
    let per_client = (rate / RATE_CLIENTS as u64).max(1);
    let log = dir.join("h2load-rate.log");
    let _ = std::fs::remove_file(&log);
    let args = vec![
        "--h1".to_string(),
        "-t1".into(),
        format!("-c{RATE_CLIENTS}"),
        format!("--rps={per_client}"),
        "-D".into(),
        format!("{}", d.as_secs().max(1)),
        "--warm-up-time=1".into(),
        format!("--log-file={}", log.display()),
        url.to_string(),
    ];
    let out = run_tool(pinned, "h2load", &args, d + Duration::from_secs(30)).await?;
    let summary = parse_h2load(&out)?;
    let text = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    let rows = parse_h2load_log(&text);
    let good: Vec<f64> = rows
        .iter()
        .filter(|(s, _)| (200..400).contains(s))
        .map(|(_, t)| *t)
        .collect();
    Ok(Fixed {
        rate: per_client * RATE_CLIENTS as u64,
        achieved: summary.rps,
        ok: good.len() as u64,
        failed: (rows.len() - good.len()) as u64 + summary.errors,
        p50: pct(&good, 0.5),
        p99: pct(&good, 0.99),
        p999: pct(&good, 0.999),
    })
}

/// Opens `n` keep-alive connections (one request each), reads the RSS with them idle, closes them.
async fn idle(t: &Target, n: usize) -> Idle {
    let mut r = Idle {
        asked: n,
        rss_before: t.rss(),
        ..Default::default()
    };
    let addr = t.http;
    let deadline = Instant::now() + Duration::from_secs(90);
    let conns: Vec<tokio::net::TcpStream> = stream::iter(0..n)
        .map(|_| async move {
            if Instant::now() > deadline {
                return None;
            }
            let open = async {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
                    .await
                    .ok()?;
                let mut buf = [0u8; 1024];
                let k = s.read(&mut buf).await.ok()?;
                buf[..k].starts_with(b"HTTP/1.1 200").then_some(s)
            };
            tokio::time::timeout(Duration::from_secs(10), open)
                .await
                .ok()
                .flatten()
        })
        .buffer_unordered(OPEN_CONCURRENCY)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    r.opened = conns.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.rss = t.rss();
    let mut buf = [0u8; 16];
    r.still_open = conns
        .iter()
        .filter(|s| matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    drop(conns);
    r
}

// ---------------------------------------------------------------------------------------------
// The ferrite side

fn slice_resource(v1: bool) -> ApiResource {
    let version = if v1 { "v1" } else { "v1beta1" };
    ApiResource {
        group: "discovery.k8s.io".into(),
        version: version.into(),
        api_version: format!("discovery.k8s.io/{version}"),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    }
}

fn ingress_resource() -> ApiResource {
    ApiResource {
        group: "networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "networking.k8s.io/v1".into(),
        kind: "Ingress".into(),
        plural: "ingresses".into(),
    }
}

fn ingress_json(name: &str, host: Option<&str>, extra_paths: &[String]) -> serde_json::Value {
    let mut paths = vec![json!({"path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": "backend", "port": {"name": "http"}}}})];
    for p in extra_paths {
        paths.push(json!({"path": p, "pathType": "Prefix",
            "backend": {"service": {"name": "backend", "port": {"name": "http"}}}}));
    }
    let mut rule = json!({"http": {"paths": paths}});
    if let Some(h) = host {
        rule["host"] = json!(h);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ingressClassName": CLASS, "rules": [rule]},
    })
}

fn slice_json(v1: bool, backend: u16, addresses: &[&str]) -> serde_json::Value {
    let ar = slice_resource(v1);
    let endpoints: Vec<_> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": ar.api_version, "kind": "EndpointSlice",
        "metadata": {"name": "backend-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4", "endpoints": endpoints,
        "ports": [{"name": "http", "port": backend, "protocol": "TCP"}],
    })
}

async fn create(client: &Client, ar: &ApiResource, namespaced: bool, v: serde_json::Value) -> Result<()> {
    let obj: DynamicObject = serde_json::from_value(v)?;
    let api: Api<DynamicObject> = if namespaced {
        Api::namespaced_with(client.clone(), NS, ar)
    } else {
        Api::all_with(client.clone(), ar)
    };
    api.create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("creating {} {}", ar.kind, obj.metadata.name.unwrap_or_default()))?;
    Ok(())
}

/// Namespace, IngressClass, TLS Secret, Service, EndpointSlice and the benchmark's Ingress.
async fn ferrite_objects(client: &Client, backend: u16, cert: &Cert) -> Result<bool> {
    let core = |kind: &str, plural: &str| ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    };
    create(
        client,
        &core("Namespace", "namespaces"),
        false,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await?;
    let class = ApiResource {
        group: "networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "networking.k8s.io/v1".into(),
        kind: "IngressClass".into(),
        plural: "ingressclasses".into(),
    };
    create(
        client,
        &class,
        false,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": {"name": CLASS},
               "spec": {"controller": ferrite_ingress_controller_name()}}),
    )
    .await?;
    create(
        client,
        &core("Secret", "secrets"),
        true,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bench-tls", "namespace": NS},
               "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert.cert_pem, "tls.key": cert.key_pem}}),
    )
    .await?;
    create(
        client,
        &core("Service", "services"),
        true,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "backend", "namespace": NS},
               "spec": {"ports": [{"name": "http", "port": 80, "targetPort": backend, "protocol": "TCP"}]}}),
    )
    .await?;
    let v1 = client
        .list_api_group_resources("discovery.k8s.io/v1")
        .await
        .is_ok();
    create(
        client,
        &slice_resource(v1),
        true,
        slice_json(v1, backend, &["127.0.0.1"]),
    )
    .await?;
    create(
        client,
        &ingress_resource(),
        true,
        ingress_json("bench", None, &[]),
    )
    .await?;
    Ok(v1)
}

/// `ferrite.dev/ingress` (the e2e crate does not link ferrite-ingress).
fn ferrite_ingress_controller_name() -> &'static str {
    "ferrite.dev/ingress"
}

/// The controller's flags besides the kubeconfig and the addresses.
pub fn ferrite_flags() -> Vec<String> {
    vec![
        "--worker-threads".into(),
        "1".into(),
        "--leader-elect=false".into(),
        format!("--default-ssl-certificate={NS}/bench-tls"),
        // The other proxies keep idle client connections 120 s as well.
        "--idle-timeout=120s".into(),
        // nginx, HAProxy and Caddy run without an access log here too.
        "--access-log=false".into(),
    ]
}

async fn start_ferrite(
    kb: &KubeBox,
    bin: &Path,
    pinned: bool,
    dir: &Path,
    backend: u16,
    cert: &Cert,
) -> Result<(Target, bool)> {
    let client = kb.client().await;
    let v1 = ferrite_objects(&client, backend, cert).await?;
    let (http, https, admin) = (free_port()?, free_port()?, free_port()?);
    let mut args = vec![
        "controller".to_string(),
        format!("--kubeconfig={}", kb.kubeconfig.display()),
        format!("--http-listen=127.0.0.1:{http}"),
        format!("--https-listen=127.0.0.1:{https}"),
        format!("--admin-addr=127.0.0.1:{admin}"),
    ];
    args.extend(ferrite_flags());
    let mut proc = spawn(
        "ferrite-ingress",
        pinned.then_some(PROXY_CPU),
        bin,
        &args,
        &[("FERRITE_LOG_LEVEL", "warn")],
        &dir.join("ferrite-ingress.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !proc.is_running() {
            bail!("ferrite-ingress exited:\n{}", proc.log_tail(30));
        }
        if let Ok((200, _)) = stats::http_get(addr(admin), "/readyz").await {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "ferrite-ingress not ready within 60 s:\n{}",
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_serving(&mut proc, "ferrite-ingress", addr(http), Duration::from_secs(30)).await?;
    let row = Row {
        name: "ferrite-ingress".into(),
        version: format!(
            "{} ({} build)",
            version_of(&bin.display().to_string(), &["--version"]),
            // ferrite-ingress is this binary's sibling (same build), wherever the two were copied.
            if cfg!(debug_assertions) {
                "**debug**"
            } else {
                "release"
            }
        ),
        setup: if pinned {
            format!("`--worker-threads 1`, CPU {PROXY_CPU}")
        } else {
            "`--worker-threads 1`".into()
        },
        ..Default::default()
    };
    Ok((
        Target {
            row,
            http: addr(http),
            https: addr(https),
            proc,
            kind: Kind::Ferrite,
            admin: Some(addr(admin)),
        },
        v1,
    ))
}

/// Sum of `ferrite_ingress_*swap*` samples on the admin server, if any.
async fn swaps(admin: SocketAddr) -> Option<f64> {
    let (code, body) = stats::http_get(admin, "/metrics").await.ok()?;
    if code != 200 {
        return None;
    }
    let v: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("ferrite_ingress_") && l.contains("swap") && !l.contains("_bucket"))
        .filter(|l| !l.contains("_sum") && !l.contains("_count") || l.contains("_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// `changes` configuration changes while wrk runs against `url`; `change(i)` makes the i-th.
async fn under_load<F, Fut>(
    pinned: bool,
    url: &str,
    connections: usize,
    changes: usize,
    interval: Duration,
    mut change: F,
) -> Result<Changes>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    // wrk runs 1 s before the first change and past the last one; the changes are bounded by the
    // same clock (a change that comes too late is not made).
    let budget = (interval + Duration::from_millis(25)) * changes as u32;
    let d = (budget + Duration::from_secs(3)).min(Duration::from_secs(600));
    let wrk = tokio::spawn({
        let url = url.to_string();
        async move { self::wrk(pinned, &url, connections, d, false).await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = Instant::now();
    let stop_by = start + d - Duration::from_secs(2);
    let (mut done, mut errors) = (0, 0);
    for i in 0..changes {
        if Instant::now() > stop_by {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(5), change(i)).await {
            Ok(Ok(())) => done += 1,
            _ => errors += 1,
        }
        tokio::time::sleep(interval).await;
    }
    let took = start.elapsed();
    let load = wrk.await.context("wrk task")??;
    Ok(Changes {
        what: String::new(),
        done,
        change_errors: errors,
        took,
        load,
        note: String::new(),
    })
}

async fn ferrite_changes(
    client: &Client,
    t: &Target,
    v1: bool,
    backend: u16,
    s: &Settings,
    pinned: bool,
) -> Result<Changes> {
    let ingresses: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ingress_resource());
    let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &slice_resource(v1));
    let admin = t.admin;
    let before = match admin {
        Some(a) => swaps(a).await,
        None => None,
    };
    let url = format!("http://127.0.0.1:{}/", t.http.port());
    let mut c = under_load(pinned, &url, s.connections, s.changes, s.change_interval, |i| {
        let (ingresses, slices) = (ingresses.clone(), slices.clone());
        async move {
            let pp = PatchParams::default();
            if i % 2 == 0 {
                // An extra path on the benchmark's Ingress, then none again.
                let extra = if i % 4 == 0 {
                    vec![format!("/change-{i}")]
                } else {
                    vec![]
                };
                let body = ingress_json("bench", None, &extra);
                ingresses
                    .patch("bench", &pp, &Patch::Merge(json!({"spec": body["spec"]})))
                    .await?;
            } else {
                // A second ready endpoint (127.0.0.2: the same backend), then one again.
                let addrs: &[&str] = if i % 4 == 1 {
                    &["127.0.0.1", "127.0.0.2"]
                } else {
                    &["127.0.0.1"]
                };
                let body = slice_json(v1, backend, addrs);
                slices
                    .patch(
                        "backend-1",
                        &pp,
                        &Patch::Merge(json!({"endpoints": body["endpoints"]})),
                    )
                    .await?;
            }
            Ok(())
        }
    })
    .await?;
    c.what =
        "Ingress path added/removed and EndpointSlice endpoint added/removed, alternating, through the API"
            .into();
    if let Some(a) = admin {
        let after = swaps(a).await;
        c.note = match (before, after) {
            (Some(b), Some(a)) => format!("route-table swaps counted by ferrite-ingress: {:.0}", a - b),
            _ => "ferrite-ingress exposes no route-table swap metric".into(),
        };
    }
    Ok(c)
}

async fn nginx_changes(t: &Target, s: &Settings, pinned: bool) -> Result<Changes> {
    let pid = t.proc.program_pid().context("nginx's master is not running")?;
    let url = format!("http://127.0.0.1:{}/", t.http.port());
    let mut c = under_load(
        pinned,
        &url,
        s.connections,
        s.changes,
        s.change_interval,
        |_| async move {
            let st = tokio::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .await?;
            ensure!(st.success(), "kill -HUP {pid}");
            Ok(())
        },
    )
    .await?;
    c.what = "SIGHUP to the master (= `nginx -s reload`)".into();
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.note = format!("nginx processes 1 s after the last reload: {}", tree(pid).len());
    Ok(c)
}

/// `n` Ingresses (one host each), then `trials` times one host changed -> the first 200 for it.
async fn propagation(client: &Client, t: &Target, n: usize, trials: usize) -> Result<Propagation> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ingress_resource());
    let host = |i: usize, v: usize| format!("h{i}-v{v}.scale.test");
    let mut p = Propagation {
        ingresses: n,
        ..Default::default()
    };
    // The benchmark's Ingress has no host: it would serve every host. Without it an unknown host is a 404.
    api.delete("bench", &Default::default())
        .await
        .context("deleting Ingress bench")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(status_of(t.http, &host(0, 0), "/").await, Ok(404)) {
        ensure!(
            Instant::now() < deadline,
            "unknown hosts still served 30 s after the host-less Ingress was deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    let limit = Duration::from_secs(120) + Duration::from_millis(30) * n as u32;
    let results: Vec<bool> = stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            let body = ingress_json(&format!("scale-{i}"), Some(&host(i, 0)), &[]);
            async move {
                if start.elapsed() > limit {
                    return false;
                }
                let Ok(obj) = serde_json::from_value::<DynamicObject>(body) else {
                    return false;
                };
                for _ in 0..3 {
                    if api.create(&PostParams::default(), &obj).await.is_ok() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                false
            }
        })
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect()
        .await;
    p.created = start.elapsed();
    p.create_errors = results.iter().filter(|ok| !**ok).count();
    let last = (0..n)
        .rev()
        .find(|i| results[*i])
        .context("no Ingress was created")?;
    let deadline = start + limit;
    while Instant::now() < deadline {
        if matches!(status_of(t.http, &host(last, 0), "/").await, Ok(200))
            && matches!(status_of(t.http, &host(0, 0), "/").await, Ok(200))
        {
            p.all_served = Some(start.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.rss = t.rss();
    for trial in 1..=trials {
        let i = (trial * 7919) % n;
        let new = host(i, trial);
        ensure!(
            !matches!(status_of(t.http, &new, "/").await, Ok(200)),
            "{new} is served before its Ingress names it"
        );
        let body = ingress_json(&format!("scale-{i}"), Some(&new), &[]);
        let sent = Instant::now();
        api.patch(
            &format!("scale-{i}"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": body["spec"]})),
        )
        .await
        .with_context(|| format!("changing Ingress scale-{i}"))?;
        let mut got = None;
        while sent.elapsed() < Duration::from_secs(30) {
            if matches!(status_of(t.http, &new, "/").await, Ok(200)) {
                got = Some(sent.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        p.trials.push(got);
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// The run

/// The `ferrite-ingress` binary next to ferrite-bench, if built.
pub fn binary() -> Option<PathBuf> {
    super::sibling_binary("ferrite-ingress").ok()
}

/// Runs everything `flags` asks for.
pub async fn run(flags: &Flags) -> Result<IngressResults> {
    let began = Instant::now();
    let s = flags.settings();
    let mut res = IngressResults {
        command: flags.command(),
        settings: Some(s.clone()),
        ferrite_flags: ferrite_flags().join(" "),
        ..Default::default()
    };
    for tool in [
        "nginx", "haproxy", "caddy", "wrk", "h2load", "taskset", "prlimit", "curl",
    ] {
        ensure!(
            which(tool).is_some(),
            "{tool} not found: run e2e/scripts/install-deps.sh (Debian packages nginx haproxy caddy wrk nghttp2-client util-linux curl)"
        );
    }
    res.tools = vec![
        version_of("wrk", &["-v"])
            .split(" Copyright")
            .next()
            .unwrap_or("wrk")
            .trim()
            .to_string(),
        version_of("h2load", &["--version"]),
    ];
    let nofile = raise_nofile(200_000)?;
    // The box starts on every CPU (pinned to one it may not come up within its limit on a busy
    // machine), and is moved to the load CPU once it runs.
    let bin = binary().filter(|_| s.targets.ferrite);
    let mut kb = None;
    match &bin {
        None if !s.targets.ferrite => {}
        None => res.notes.push(
            "ferrite-ingress was not measured: no `ferrite-ingress` binary next to ferrite-bench \
             (cargo build --release -p ferrite-ingress --bin ferrite-ingress)"
                .into(),
        ),
        Some(bin) => {
            eprintln!(
                "==> ingress: starting the box (etcd + kube-apiserver on 127.0.0.1) for {}",
                bin.display()
            );
            match KubeBox::start().await {
                Ok(b) => kb = Some(b),
                Err(e) => res.notes.push(format!(
                    "ferrite-ingress was not measured: starting the box: {e:#}"
                )),
            }
        }
    }
    if (nofile as usize) < s.idle + 1_000 {
        res.notes.push(format!(
            "the open-file limit is {nofile}: fewer than {} idle connections can be opened",
            s.idle
        ));
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    res.pinned = cpus >= 2;
    if res.pinned {
        pin_self(LOAD_CPU)?;
    } else {
        res.notes.push(format!("{cpus} CPU: nothing pinned"));
    }
    let pinned = res.pinned;
    let dir = tempfile::Builder::new()
        .prefix("ferrite-bench-ingress")
        .tempdir()?;
    let d = dir.path();
    for sub in ["backend", "nginx", "caddy"] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let cert = make_cert(d)?;
    let nginx_bin = which("nginx").context("nginx")?;

    // The backend.
    let (bport, btls) = (free_port()?, free_port()?);
    std::fs::write(
        d.join("backend.conf"),
        backend_conf(d, bport, btls, &cert.cert, &cert.key),
    )?;
    let mut bproc = spawn(
        "backend nginx",
        pinned.then_some(LOAD_CPU),
        &nginx_bin,
        &[
            "-e".into(),
            "stderr".into(),
            "-p".into(),
            d.join("backend").display().to_string(),
            "-c".into(),
            d.join("backend.conf").display().to_string(),
        ],
        &[],
        &d.join("backend.log"),
    )?;
    wait_serving(&mut bproc, "the backend", addr(bport), Duration::from_secs(20)).await?;
    let on = |cpu: &str| {
        if pinned {
            format!(", CPU {cpu}")
        } else {
            String::new()
        }
    };
    let mut targets = vec![Target {
        row: Row {
            name: "backend alone".into(),
            version: version_of("nginx", &["-v"]).replace("nginx version: ", ""),
            setup: format!("nginx `return 200`, 1 worker{}", on(LOAD_CPU)),
            ..Default::default()
        },
        http: addr(bport),
        https: addr(btls),
        proc: bproc,
        kind: Kind::Backend,
        admin: None,
    }];

    // The peers.
    if s.targets.nginx {
        let (p, q) = (free_port()?, free_port()?);
        std::fs::write(
            d.join("nginx.conf"),
            nginx_conf(d, p, q, bport, &cert.cert, &cert.key),
        )?;
        let proc = spawn(
            "nginx",
            pinned.then_some(PROXY_CPU),
            &nginx_bin,
            &[
                "-e".into(),
                "stderr".into(),
                "-p".into(),
                d.join("nginx").display().to_string(),
                "-c".into(),
                d.join("nginx.conf").display().to_string(),
            ],
            &[],
            &d.join("nginx.log"),
        )?;
        targets.push(Target {
            row: Row {
                name: "nginx".into(),
                version: version_of("nginx", &["-v"]).replace("nginx version: ", ""),
                setup: format!("`worker_processes 1`{}", on(PROXY_CPU)),
                ..Default::default()
            },
            http: addr(p),
            https: addr(q),
            proc,
            kind: Kind::Nginx,
            admin: None,
        });
    }
    if s.targets.haproxy {
        let (p, q) = (free_port()?, free_port()?);
        std::fs::write(d.join("haproxy.cfg"), haproxy_conf(p, q, bport, &cert.both))?;
        let proc = spawn(
            "haproxy",
            pinned.then_some(PROXY_CPU),
            &which("haproxy").context("haproxy")?,
            &[
                "-db".into(),
                "-f".into(),
                d.join("haproxy.cfg").display().to_string(),
            ],
            &[],
            &d.join("haproxy.log"),
        )?;
        targets.push(Target {
            row: Row {
                name: "HAProxy".into(),
                version: version_of("haproxy", &["-v"])
                    .replace("HAProxy version", "haproxy")
                    .split(' ')
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" "),
                setup: format!("`nbthread 1`{}", on(PROXY_CPU)),
                ..Default::default()
            },
            http: addr(p),
            https: addr(q),
            proc,
            kind: Kind::Haproxy,
            admin: None,
        });
    }
    if s.targets.caddy {
        let (p, q) = (free_port()?, free_port()?);
        std::fs::write(
            d.join("Caddyfile"),
            caddy_conf(p, q, bport, &cert.cert, &cert.key),
        )?;
        let caddy_home = d.join("caddy").display().to_string();
        let proc = spawn(
            "caddy",
            pinned.then_some(PROXY_CPU),
            &which("caddy").context("caddy")?,
            &[
                "run".into(),
                "--config".into(),
                d.join("Caddyfile").display().to_string(),
                "--adapter".into(),
                "caddyfile".into(),
            ],
            &[
                ("GOMAXPROCS", "1"),
                ("HOME", &caddy_home),
                ("XDG_DATA_HOME", &caddy_home),
                ("XDG_CONFIG_HOME", &caddy_home),
            ],
            &d.join("caddy.log"),
        )?;
        targets.push(Target {
            row: Row {
                name: "Caddy".into(),
                version: format!("caddy {}", version_of("caddy", &["version"])),
                setup: format!("`GOMAXPROCS=1`{}", on(PROXY_CPU)),
                ..Default::default()
            },
            http: addr(p),
            https: addr(q),
            proc,
            kind: Kind::Caddy,
            admin: None,
        });
    }
    for t in targets.iter_mut() {
        let name = t.row.name.clone();
        wait_serving(&mut t.proc, &name, t.http, Duration::from_secs(20)).await?;
        check_tls(t.https).await.with_context(|| name.clone())?;
    }

    // ferrite-ingress on the box (started first, below).
    let mut v1 = false;
    if let (Some(b), Some(bin)) = (&kb, &bin) {
        match start_ferrite(b, bin, pinned, d, bport, &cert).await {
            Ok((mut t, is_v1)) => {
                v1 = is_v1;
                if let Err(e) = check_tls(t.https).await {
                    t.row.failures.push(format!("TLS check: {e:#}"));
                }
                targets.push(t);
            }
            Err(e) => res.notes.push(format!("ferrite-ingress was not measured: {e:#}")),
        }
    }
    let result = measure(&mut targets, &mut res, &s, pinned, d, kb.as_ref(), v1, bport).await;
    for t in targets.iter_mut() {
        t.proc.stop(Duration::from_secs(5));
    }
    res.rows = targets
        .into_iter()
        .filter(|t| s.targets.has(t.kind))
        .map(|t| t.row)
        .collect();
    if let Some(b) = kb {
        b.stop();
    }
    res.took = began.elapsed();
    result?;
    Ok(res)
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    targets: &mut [Target],
    res: &mut IngressResults,
    s: &Settings,
    pinned: bool,
    dir: &Path,
    kb: Option<&KubeBox>,
    v1: bool,
    backend: u16,
) -> Result<()> {
    macro_rules! each {
        ($part:ident, $label:expr, |$t:ident| $body:expr, $set:ident) => {
            for $t in targets
                .iter_mut()
                .filter(|t| s.parts.$part && s.targets.has(t.kind))
            {
                eprintln!("==> ingress: {} — {}", $label, $t.row.name);
                if let Err(e) = $t.alive() {
                    $t.row.failures.push(format!("{}: {e:#}", $label));
                    continue;
                }
                match $body.await {
                    Ok(v) => $t.row.$set = Some(v),
                    Err(e) => $t.row.failures.push(format!("{}: {e:#}", $label)),
                }
            }
        };
    }
    let plain = |t: &Target| format!("http://127.0.0.1:{}/", t.http.port());
    let tls = |t: &Target| format!("https://127.0.0.1:{}/", t.https.port());
    each!(
        plain,
        "HTTP/1.1 keep-alive",
        |t| with_cpu(
            t.proc.program_pid(),
            wrk(pinned, &plain(t), s.connections, s.duration, false)
        ),
        plain
    );
    each!(
        tls,
        "HTTP/1.1 keep-alive over TLS",
        |t| with_cpu(
            t.proc.program_pid(),
            wrk(pinned, &tls(t), s.connections, s.duration, false)
        ),
        tls
    );
    each!(
        h2,
        "HTTP/2 over TLS",
        |t| with_cpu(t.proc.program_pid(), h2load(pinned, &tls(t), s.duration)),
        h2
    );
    each!(
        handshakes,
        "new TLS connection per request",
        |t| wrk(pinned, &tls(t), HANDSHAKE_CONNECTIONS, s.handshake_duration, true),
        handshakes
    );
    let rate = match s.rate {
        Some(r) => r,
        None => {
            let slowest = targets
                .iter()
                .filter(|t| t.kind != Kind::Backend)
                .filter_map(|t| t.row.plain.as_ref().map(|l| l.rps))
                .fold(f64::INFINITY, f64::min);
            if slowest.is_finite() {
                (((slowest / 2.0) as u64) / 100 * 100).max(RATE_CLIENTS as u64)
            } else {
                1_000
            }
        }
    };
    each!(
        rate,
        "fixed rate",
        |t| fixed_rate(pinned, &plain(t), rate, s.duration, dir),
        fixed
    );
    let measured = |t: &&mut Target| s.targets.has(t.kind);
    for t in targets.iter_mut().filter(measured).filter(|_| s.parts.idle) {
        eprintln!("==> ingress: {} idle connections — {}", s.idle, t.row.name);
        if t.alive().is_ok() {
            let r = idle(t, s.idle).await;
            t.row.idle = Some(r);
            // Let the closed connections go before the next target.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    for t in targets.iter_mut().filter(measured).filter(|_| s.parts.changes) {
        let r = match t.kind {
            Kind::Nginx => {
                eprintln!("==> ingress: {} nginx reloads under load", s.changes);
                nginx_changes(t, s, pinned).await
            }
            Kind::Ferrite => {
                let Some(kb) = kb else { continue };
                eprintln!("==> ingress: {} ferrite-ingress changes under load", s.changes);
                let client = kb.client().await;
                ferrite_changes(&client, t, v1, backend, s, pinned).await
            }
            _ => continue,
        };
        match r {
            Ok(c) => t.row.changes = Some(c),
            Err(e) => t.row.failures.push(format!("changes under load: {e:#}")),
        }
    }
    let ferrite = targets.iter_mut().find(|t| t.kind == Kind::Ferrite);
    if let (Some(kb), Some(t), true) = (kb, ferrite, s.parts.propagation) {
        eprintln!(
            "==> ingress: {} Ingresses, {} change -> served trials",
            s.ingresses, s.trials
        );
        let client = kb.client().await;
        match propagation(&client, t, s.ingresses, s.trials).await {
            Ok(p) => res.propagation = Some(p),
            Err(e) => res.notes.push(format!(
                "propagation with {} Ingresses failed: {e:#}",
                s.ingresses
            )),
        }
        if let Err(e) = t.alive() {
            res.notes.push(format!("{e:#}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

/// `1234567.8` -> `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round().max(0.0) as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 0.001 => format!("{:.0} µs", v * 1e6),
        Some(v) if v < 1.0 => format!("{:.2} ms", v * 1e3),
        Some(v) => format!("{v:.2} s"),
    }
}

fn dur(v: Option<Duration>) -> String {
    ms(v.map(|d| d.as_secs_f64()))
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**not met**" }
}

fn cell(s: &str) -> String {
    s.replace('|', "/").replace('\n', " ")
}

/// A throughput cell: req/s, ratio to nginx and share of the backend alone, failures if any.
fn rate_cell(r: &Row, pick: fn(&Row) -> Option<&Load>, nginx: Option<f64>, backend: Option<f64>) -> String {
    let Some(l) = pick(r) else {
        return "–".into();
    };
    let mut s = thousands(l.rps);
    let mut rel = vec![];
    if r.name != "nginx"
        && r.name != "backend alone"
        && let Some(n) = nginx.filter(|n| *n > 0.0)
    {
        rel.push(format!("{:.2}× nginx", l.rps / n));
    }
    if r.name != "backend alone"
        && let Some(b) = backend.filter(|b| *b > 0.0)
    {
        rel.push(format!("{:.0}% of backend", 100.0 * l.rps / b));
    }
    if !rel.is_empty() {
        let _ = write!(s, " ({})", rel.join(", "));
    }
    if l.failed() > 0 {
        let _ = write!(s, "; **{} failed**", thousands(l.failed() as f64));
    }
    s
}

fn by<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.name == name)
}

/// The `## ferrite-ingress` section.
pub fn markdown(w: &mut String, commit: &str, r: &IngressResults) {
    let _ = writeln!(w, "## ferrite-ingress\n");
    let _ = writeln!(
        w,
        "Command: `{}` (module `e2e/src/bench/ingress.rs`), commit {commit}. One run, one machine, one backend \
         for every proxy.\n",
        r.command
    );
    for n in &r.notes {
        let _ = writeln!(w, "**Note**: {}\n", cell(n));
    }
    let Some(s) = &r.settings else {
        return;
    };
    let rows = &r.rows;
    let _ = writeln!(
        w,
        "Setup: {}every listener on 127.0.0.1 (random ports), one self-signed ECDSA P-256 certificate for all, TLS 1.2/1.3; \
         the backend is nginx answering `return 200 \"ok\\n\"` (1 worker); every proxy keeps upstream connections \
         alive and adds X-Forwarded-For/-Proto. Tools: {}.\n",
        if r.pinned {
            format!(
                "**the proxy under test is pinned to CPU {PROXY_CPU} with one worker; the load generator, the backend, \
                 this process and the box (etcd, kube-apiserver) are pinned to CPU {LOAD_CPU}** (taskset); "
            )
        } else {
            String::new()
        },
        r.tools.join(", ")
    );
    let _ = writeln!(
        w,
        "ferrite-ingress: `ferrite-ingress controller --kubeconfig <box> --http-listen 127.0.0.1:<p> --https-listen \
         127.0.0.1:<q> --admin-addr 127.0.0.1:<r> {}` on the box (etcd + kube-apiserver 1.20), one IngressClass, a \
         host-less Ingress `/` → Service `backend` → an EndpointSlice written here (127.0.0.1:<backend>). The part took {:.0} s.\n",
        r.ferrite_flags,
        r.took.as_secs_f64()
    );
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let _ = writeln!(w, "| | {} |", names.join(" | "));
    let _ = writeln!(w, "|---|{}", "---|".repeat(names.len()));
    let line = |w: &mut String, label: &str, f: &dyn Fn(&Row) -> String| {
        let cells: Vec<String> = rows.iter().map(|r| cell(&f(r))).collect();
        let _ = writeln!(w, "| {label} | {} |", cells.join(" | "));
    };
    line(w, "version", &|r| r.version.clone());
    line(w, "workers, CPU", &|r| r.setup.clone());
    type Pick = fn(&Row) -> Option<&Load>;
    let runs: [(String, Pick); 4] = [
        (
            format!(
                "HTTP/1.1 keep-alive, req/s (wrk -t1 -c{} {} s)",
                s.connections,
                s.duration.as_secs()
            ),
            |r| r.plain.as_ref(),
        ),
        (
            format!(
                "HTTP/1.1 keep-alive over TLS, req/s (wrk -t1 -c{})",
                s.connections
            ),
            |r| r.tls.as_ref(),
        ),
        (
            format!("HTTP/2 over TLS, req/s (h2load -t1 -c{H2_CLIENTS} -m{H2_STREAMS})"),
            |r| r.h2.as_ref(),
        ),
        (
            format!(
                "new TLS connections/s (wrk -c{HANDSHAKE_CONNECTIONS} `Connection: close`, {} s)",
                s.handshake_duration.as_secs()
            ),
            |r| r.handshakes.as_ref(),
        ),
    ];
    for (label, pick) in runs.iter() {
        let nginx = by(rows, "nginx").and_then(|r| pick(r)).map(|l| l.rps);
        let backend = by(rows, "backend alone").and_then(|r| pick(r)).map(|l| l.rps);
        line(w, label, &|r| rate_cell(r, *pick, nginx, backend));
    }
    line(
        w,
        "CPU per request, µs (plain / TLS / HTTP/2; the measured process tree's user + system time)",
        &|r| {
            format!(
                "{} / {} / {}",
                cpu_per_request(r.plain.as_ref()),
                cpu_per_request(r.tls.as_ref()),
                cpu_per_request(r.h2.as_ref())
            )
        },
    );
    line(
        w,
        "latency at saturation p50 / p99 (wrk keep-alive, plain)",
        &|r| {
            r.plain
                .as_ref()
                .map(|l| format!("{} / {}", ms(l.p50), ms(l.p99)))
                .unwrap_or_else(|| "–".into())
        },
    );
    let rate = rows.iter().find_map(|r| r.fixed.as_ref().map(|f| f.rate));
    line(
        w,
        &format!(
            "fixed rate {} req/s (h2load --h1 -c{RATE_CLIENTS} --rps): p50 / p99 / p99.9",
            rate.map(|v| thousands(v as f64)).unwrap_or_else(|| "–".into())
        ),
        &|r| match &r.fixed {
            None => "–".into(),
            Some(f) => {
                let mut c = format!("{} / {} / {}", ms(f.p50), ms(f.p99), ms(f.p999));
                if f.failed > 0 {
                    let _ = write!(c, "; **{} failed** of {}", f.failed, f.ok + f.failed);
                }
                if f.achieved < 0.95 * f.rate as f64 || f.achieved > 1.05 * f.rate as f64 {
                    let _ = write!(c, " (achieved {} req/s)", thousands(f.achieved));
                }
                c
            }
        },
    );
    line(
        w,
        &format!(
            "RSS idle → with {} idle keep-alive connections",
            thousands(s.idle as f64)
        ),
        &|r| match &r.idle {
            None => "–".into(),
            Some(i) => {
                let mb = |k: Option<u64>| {
                    k.map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                        .unwrap_or_else(|| "–".into())
                };
                let mut c = format!("{} → {}", mb(i.rss_before), mb(i.rss));
                if i.opened < i.asked || i.still_open < i.opened {
                    let _ = write!(
                        c,
                        " ({} opened, {} still open)",
                        thousands(i.opened as f64),
                        thousands(i.still_open as f64)
                    );
                }
                c
            }
        },
    );
    line(
        w,
        &format!(
            "{} configuration changes under wrk load (-c{}): failed requests / requests",
            thousands(s.changes as f64),
            s.connections
        ),
        &|r| match &r.changes {
            None => {
                if r.name == "nginx" || r.name == "ferrite-ingress" {
                    "not measured (see below)".into()
                } else {
                    "– (not run: the issue compares nginx's reloads)".into()
                }
            }
            Some(c) => {
                let mut t = format!(
                    "**{}** / {} ({} changes in {:.1} s",
                    thousands(c.load.failed() as f64),
                    thousands(c.load.requests as f64),
                    thousands(c.done as f64),
                    c.took.as_secs_f64()
                );
                if c.change_errors > 0 {
                    let _ = write!(t, ", {} changes failed", c.change_errors);
                }
                t.push(')');
                t
            }
        },
    );
    let _ = writeln!(w);
    for r in rows {
        if let Some(c) = &r.changes {
            let _ = writeln!(
                w,
                "- {} changes: {}; wrk: {} socket errors, {} non-2xx; {}.",
                r.name,
                c.what,
                c.load.errors,
                c.load.non2xx,
                if c.note.is_empty() { "–" } else { &c.note }
            );
        }
        for f in &r.failures {
            let _ = writeln!(
                w,
                "- {}: not measured: {}",
                r.name,
                cell(f.lines().next().unwrap_or(""))
            );
        }
    }
    type PickRun = fn(&Row) -> Option<&Load>;
    let checks: [(&str, PickRun); 3] = [
        ("HTTP/1.1", |r| r.plain.as_ref()),
        ("HTTP/1.1 TLS", |r| r.tls.as_ref()),
        ("HTTP/2", |r| r.h2.as_ref()),
    ];
    let verdicts: Vec<String> = checks
        .iter()
        .map(|(name, pick)| {
            let b = by(rows, "backend alone").and_then(|b| pick(b)).map(|l| l.rps);
            let fastest = rows
                .iter()
                .filter(|r| r.name != "backend alone")
                .filter_map(|r| pick(r).map(|l| l.rps))
                .fold(0.0, f64::max);
            match b {
                Some(b) if b > fastest => {
                    format!("{name} yes ({:.2}× the fastest proxy)", b / fastest.max(1.0))
                }
                Some(_) => format!("{name} **no** (the proxies may be bounded by CPU {LOAD_CPU} too)"),
                None => format!("{name} –"),
            }
        })
        .collect();
    let _ = writeln!(
        w,
        "- The generator is not the bottleneck where the backend-alone row (generator + backend on CPU {LOAD_CPU}, no proxy) \
         runs faster than every proxy: {}.",
        verdicts.join(", ")
    );
    let _ = writeln!(w);
    if let Some(p) = &r.propagation {
        let ok: Vec<Duration> = p.trials.iter().flatten().copied().collect();
        let _ = writeln!(
            w,
            "### Route-table propagation at {} Ingresses (ferrite-ingress)\n",
            thousands(p.ingresses as f64)
        );
        let _ = writeln!(w, "| | |\n|---|---|");
        let _ = writeln!(
            w,
            "| {} Ingresses created ({CREATE_CONCURRENCY} in flight; {} failed) | {:.1} s |",
            thousands(p.ingresses as f64),
            p.create_errors,
            p.created.as_secs_f64()
        );
        let _ = writeln!(
            w,
            "| first create → the last one served | {} |",
            p.all_served
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "not within the limit".into())
        );
        let _ = writeln!(
            w,
            "| one Ingress's host changed → first 200 for the new host (median / max of {} trials{}) | {} / {} |",
            p.trials.len(),
            if ok.len() < p.trials.len() {
                format!(", {} not within 30 s", p.trials.len() - ok.len())
            } else {
                String::new()
            },
            dur(quantile(&ok, 0.5)),
            dur(ok.iter().max().copied())
        );
        let _ = writeln!(
            w,
            "| ferrite-ingress RSS with them all | {} |\n",
            p.rss
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "–".into())
        );
    }
    goals(w, s, rows);
}

fn goals(w: &mut String, s: &Settings, rows: &[Row]) {
    let Some(f) = by(rows, "ferrite-ingress") else {
        let _ = writeln!(w, "Goals: not evaluated (ferrite-ingress was not measured).\n");
        return;
    };
    let nginx = by(rows, "nginx");
    let backend = by(rows, "backend alone");
    let _ = writeln!(w, "### Goals (issue #9)\n");
    let _ = writeln!(w, "| goal | measured | |\n|---|---|---|");
    type Pick = fn(&Row) -> Option<&Load>;
    let runs: [(&str, Pick); 3] = [
        ("HTTP/1.1", |r| r.plain.as_ref()),
        ("HTTP/1.1 TLS", |r| r.tls.as_ref()),
        ("HTTP/2", |r| r.h2.as_ref()),
    ];
    let ratio = |other: Option<&Row>, pick: Pick| -> Option<f64> {
        let a = pick(f)?.rps;
        let b = pick(other?)?.rps;
        (b > 0.0).then(|| a / b)
    };
    let vs_nginx: Vec<(&str, Option<f64>)> = runs.iter().map(|(n, p)| (*n, ratio(nginx, *p))).collect();
    let vs_backend: Vec<(&str, Option<f64>)> = runs.iter().map(|(n, p)| (*n, ratio(backend, *p))).collect();
    let show = |v: &[(&str, Option<f64>)], pctg: bool| {
        v.iter()
            .map(|(n, r)| match r {
                Some(r) if pctg => format!("{n} {:.0}%", r * 100.0),
                Some(r) => format!("{n} {r:.2}×"),
                None => format!("{n} –"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all = |v: &[(&str, Option<f64>)], min: f64| v.iter().all(|(_, r)| r.is_some_and(|r| r >= min));
    let _ = writeln!(
        w,
        "| throughput ≥ 1.3× nginx | {} | {} |",
        show(&vs_nginx, false),
        met(all(&vs_nginx, 1.3))
    );
    let _ = writeln!(
        w,
        "| throughput ≥ 70% of the backend alone | {} | {} |",
        show(&vs_backend, true),
        met(all(&vs_backend, 0.7))
    );
    let p99 = |r: Option<&Row>| r.and_then(|r| r.fixed.as_ref()).and_then(|x| x.p99);
    let (fp, np) = (p99(Some(f)), p99(nginx));
    let fixed_ok = f.fixed.as_ref().is_some_and(|x| x.failed == 0);
    let _ = writeln!(
        w,
        "| p99 ≤ nginx's (fixed rate) | ferrite-ingress {} vs nginx {} | {} |",
        ms(fp),
        ms(np),
        met(fixed_ok && fp.zip(np).is_some_and(|(a, b)| a <= b))
    );
    let (text, ok) = match &f.changes {
        None => ("not measured".to_string(), false),
        Some(c) => (
            format!(
                "{} failed of {} requests across {} changes ({} change errors)",
                c.load.failed(),
                thousands(c.load.requests as f64),
                thousands(c.done as f64),
                c.change_errors
            ),
            c.load.failed() == 0 && c.change_errors == 0 && c.done >= s.changes && c.load.requests > 0,
        ),
    };
    let _ = writeln!(
        w,
        "| zero failed requests across {} configuration changes under load | {text} | {} |",
        thousands(s.changes as f64),
        met(ok)
    );
    if s.changes < 1_000 || s.quick {
        let _ = writeln!(
            w,
            "\nThis run used fewer changes or shorter runs than the goals name (`--quick` or flags): the goal rows describe this run only."
        );
    }
    let _ = writeln!(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 10s test @ http://127.0.0.1:41234/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   610.47us  128.82us   5.00ms   86.13%
    Req/Sec    97.23k     5.09k  103.06k    85.00%
  Latency Distribution
     50%  596.00us
     75%  650.00us
     90%  729.00us
     99%    1.04ms
  967544 requests in 10.00s, 129.18MB read
  Socket errors: connect 0, read 12, write 3, timeout 1
  Non-2xx or 3xx responses: 5
Requests/sec:  96754.05
Transfer/sec:     12.92MB
";

    #[test]
    fn wrk_output_is_read() {
        let l = parse_wrk(WRK).expect("parse");
        assert_eq!(l.rps, 96754.05);
        assert_eq!(l.requests, 967_544);
        assert_eq!((l.errors, l.non2xx, l.failed()), (16, 5, 21));
        assert!((l.p50.expect("p50") - 596e-6).abs() < 1e-12);
        assert!((l.p99.expect("p99") - 1.04e-3).abs() < 1e-12);
        // Without --latency, errors or non-2xx lines.
        let short = "Running 1s test @ http://x/\n  1 threads and 2 connections\n  100 requests in 1.00s, 1KB read\nRequests/sec:    100.00\n";
        let l = parse_wrk(short).expect("short");
        assert_eq!((l.rps, l.requests, l.failed(), l.p99), (100.0, 100, 0, None));
        assert!(parse_wrk("unable to connect to 127.0.0.1:1 Connection refused").is_err());
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(parse_wrk_duration("2.00s"), Some(2.0));
        assert_eq!(parse_wrk_duration("1.50m"), Some(90.0));
        assert!((parse_wrk_duration("27.39ms").expect("ms") - 0.02739).abs() < 1e-12);
        assert_eq!(parse_wrk_duration("12"), None);
        assert_eq!(parse_wrk_duration("xus"), None);
    }

    // h2load 1.52's summary (a run that got 404s: h2load counts them as failed, not succeeded).
    const H2LOAD_404: &str = "starting benchmark...
Application protocol: http/1.1
Main benchmark duration is over for thread #0. Stopping all clients.

finished in 8.99s, 809.50 req/s, 94.94KB/s
requests: 1619 total, 1621 started, 1619 done, 0 succeeded, 1619 failed, 0 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 1619 4xx, 0 5xx
traffic: 189.88KB (194435) total, 701.67KB (718508) headers (space savings 0.00%), 1.71MB (1796270) data
                     min         max         mean         sd        +/- sd
time for request:      332us     21.24ms      2.30ms      2.18ms    89.44%
";

    #[test]
    fn h2load_output_is_read() {
        let l = parse_h2load(H2LOAD_404).expect("parse");
        assert_eq!((l.rps, l.requests, l.non2xx, l.errors), (809.5, 0, 1619, 0));
        let ok = "finished in 10.00s, 55555.50 req/s, 6.10MB/s\n\
            requests: 555600 total, 555700 started, 555600 done, 555590 succeeded, 10 failed, 7 errored, 3 timeout\n\
            status codes: 555590 2xx, 0 3xx, 0 4xx, 0 5xx\n";
        let l = parse_h2load(ok).expect("ok");
        assert_eq!(
            (l.rps, l.requests, l.non2xx, l.errors, l.failed()),
            (55555.5, 555_590, 0, 10, 10)
        );
        assert!(parse_h2load("starting benchmark...\n").is_err());
    }

    #[test]
    fn h2load_log_is_read() {
        let log = "1796138046566245\t200\t17142\n1796138046566238\t404\t1000\ngarbage\n\n1\t200\tx\n";
        let rows = parse_h2load_log(log);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, 200);
        assert!((rows[0].1 - 0.017142).abs() < 1e-12);
        assert_eq!(rows[1], (404, 0.001));
        let v: Vec<f64> = (1..=1000).map(|i| i as f64 / 1000.0).collect();
        assert_eq!(pct(&v, 0.5), Some(0.5));
        assert_eq!(pct(&v, 0.99), Some(0.99));
        assert_eq!(pct(&[], 0.99), None);
    }

    #[test]
    fn settings_defaults_and_quick() {
        let full = Flags::default().settings();
        assert_eq!(full.duration, Duration::from_secs(10));
        assert_eq!(
            (full.idle, full.changes, full.ingresses, full.connections),
            (10_000, 1_000, 10_000, 64)
        );
        let q = Flags {
            quick: true,
            ingresses: Some(50),
            ..Default::default()
        };
        let s = q.settings();
        assert_eq!(
            (s.duration, s.ingresses, s.changes),
            (Duration::from_secs(3), 50, 200)
        );
        assert_eq!(
            q.command(),
            "ferrite-bench --only ingress --quick --ingress-ingresses 50"
        );
    }

    #[test]
    fn parts_and_targets_select_rows() {
        let p = Parts::parse("plain,tls").expect("parts");
        assert!(p.plain && p.tls && !p.h2 && !p.rate && !p.propagation);
        assert_eq!(Parts::parse("all").expect("all"), Parts::ALL);
        assert!(Parts::parse("plain,nope").is_err());
        let t = Targets::parse("ferrite,nginx").expect("targets");
        assert!(t.has(Kind::Ferrite) && t.has(Kind::Nginx) && !t.has(Kind::Backend) && !t.has(Kind::Caddy));
        assert!(Targets::parse("squid").is_err());
        let f = Flags {
            parts: Some(p),
            targets: Some(t),
            ..Default::default()
        };
        assert_eq!(
            f.command(),
            "ferrite-bench --only ingress --ingress-parts plain,tls --ingress-targets nginx,ferrite"
        );
        assert_eq!(Flags::default().settings().parts, Parts::ALL);
    }

    #[test]
    fn configs_name_their_ports_and_files() {
        let dir = Path::new("/tmp/x");
        let (cert, key, both) = (Path::new("/c.pem"), Path::new("/k.pem"), Path::new("/b.pem"));
        let n = nginx_conf(dir, 1001, 1002, 1003, cert, key);
        for want in [
            "worker_processes 1;",
            "listen 127.0.0.1:1001 ",
            "listen 127.0.0.1:1002 ssl http2",
            "server 127.0.0.1:1003;",
            "ssl_certificate /c.pem;",
            "access_log off;",
        ] {
            assert!(n.contains(want), "nginx.conf lacks {want:?}:\n{n}");
        }
        let b = backend_conf(dir, 2001, 2002, cert, key);
        assert!(b.contains("listen 127.0.0.2:2001") && b.contains("return 200"));
        let h = haproxy_conf(1001, 1002, 1003, both);
        assert!(
            h.contains("nbthread 1") && h.contains("bind 127.0.0.1:1002 ssl crt /b.pem alpn h2,http/1.1")
        );
        assert!(h.contains("server s1 127.0.0.1:1003"));
        let c = caddy_conf(1001, 1002, 1003, cert, key);
        assert!(c.contains("http://:1001 {\n  bind 127.0.0.1") && c.contains("tls /c.pem /k.pem"));
        assert!(c.contains("reverse_proxy 127.0.0.1:1003") && c.contains("protocols h1 h2"));
    }

    #[test]
    fn cpu_time_of_a_process_tree_and_per_request() {
        let me = std::process::id();
        let before = tree_cpu_seconds(me).expect("own /proc/<pid>/stat");
        // Burn a little CPU so the count can only grow.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i ^ (x >> 3));
        }
        assert!(x != 1);
        let after = tree_cpu_seconds(me).expect("own /proc/<pid>/stat");
        assert!(after >= before, "{before} -> {after}");
        assert_eq!(tree_cpu_seconds(u32::MAX), None, "no such process");
        let load = Load {
            requests: 20_000,
            cpu_seconds: Some(1.0),
            ..Default::default()
        };
        assert_eq!(cpu_per_request(Some(&load)), "50");
        assert_eq!(cpu_per_request(Some(&Load::default())), "–");
        assert_eq!(cpu_per_request(None), "–");
    }

    #[test]
    fn report_states_goals_honestly() {
        let load = |rps: f64| Load {
            rps,
            requests: 1000,
            ..Default::default()
        };
        let row = |name: &str, rps: f64, p99: f64| Row {
            name: name.into(),
            plain: Some(load(rps)),
            tls: Some(load(rps)),
            h2: Some(load(rps)),
            fixed: Some(Fixed {
                rate: 1000,
                achieved: 1000.0,
                ok: 1000,
                p99: Some(p99),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut ferrite = row("ferrite-ingress", 140.0, 0.002);
        ferrite.changes = Some(Changes {
            done: 1000,
            load: load(5000.0),
            ..Default::default()
        });
        let mut nginx = row("nginx", 100.0, 0.003);
        nginx.changes = Some(Changes {
            done: 1000,
            load: Load {
                errors: 214,
                ..load(5000.0)
            },
            ..Default::default()
        });
        let r = IngressResults {
            command: "ferrite-bench --only ingress".into(),
            settings: Some(Flags::default().settings()),
            pinned: true,
            rows: vec![row("backend alone", 180.0, 0.001), nginx, ferrite],
            ..Default::default()
        };
        let mut w = String::new();
        markdown(&mut w, "abc1234", &r);
        assert!(w.contains("commit abc1234"), "{w}");
        assert!(w.contains("| 140 (1.40× nginx, 78% of backend) |"), "{w}");
        assert!(
            w.contains(
                "| throughput ≥ 1.3× nginx | HTTP/1.1 1.40×, HTTP/1.1 TLS 1.40×, HTTP/2 1.40× | **met** |"
            ),
            "{w}"
        );
        assert!(w.contains("| throughput ≥ 70% of the backend alone | HTTP/1.1 78%, HTTP/1.1 TLS 78%, HTTP/2 78% | **met** |"), "{w}");
        assert!(
            w.contains("| p99 ≤ nginx's (fixed rate) | ferrite-ingress 2.00 ms vs nginx 3.00 ms | **met** |"),
            "{w}"
        );
        assert!(w.contains("| **214** / 1,000 (1,000 changes"), "{w}");
        assert!(w.contains("across 1,000 configuration changes under load | 0 failed of 1,000 requests across 1,000 changes (0 change errors) | **met** |"), "{w}");
        // Fewer changes than asked: not met, whatever the errors.
        let mut r2 = r.clone();
        if let Some(c) = r2.rows[2].changes.as_mut() {
            c.done = 999;
        }
        let mut w2 = String::new();
        markdown(&mut w2, "abc1234", &r2);
        assert!(w2.contains("(0 change errors) | **not met** |"), "{w2}");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
