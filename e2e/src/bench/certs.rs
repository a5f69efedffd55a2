//! The benchmarks of ferrite-certs (`ferrite-bench --only certs`):
//!
//! ```text
//!   Pebble (strict, PEBBLE_VA_NOSLEEP=1, 5% nonce rejection) + pebble-challtestsrv (every name -> 127.0.0.1)
//!     ▲ ACME over HTTPS (Pebble's own test CA)        │ HTTP-01 validation: GET 127.0.0.1:<VA http port>
//!     │                                               ▼
//!   1. issuance, HTTP-01, N trials each, one client at a time on the VA's port:
//!      lego (Debian, --http standalone)   certbot (Debian, certonly --standalone)   fresh account per run
//!      ferrite-certs controller (release) on the box, --http01-listen on the VA's port:
//!        Certificate created -> Ready=True (a watch), account kept by its ClusterIssuer;
//!        and again with a new ClusterIssuer per trial (fresh account, like lego and certbot)
//!      every issued chain is checked with `openssl verify` against Pebble's root and the name;
//!      ACME requests per certificate = Pebble's per-request log lines during the run
//!   2. scale: N Certificates (ECDSA P-256) from a CA Issuer, SCALE_CONCURRENCY creates in flight,
//!      first create -> all Ready (a watch, bounded); controller VmRSS (sampled peak) and VmHWM
//! ```
//!
//! lego and certbot bind the VA's port themselves, so they alternate trial by trial first; the
//! ferrite-certs controller holds the port for its whole life, so its trials follow. Every process
//! is started here and stopped by its own handle; every wait has a limit.

use super::stats::{self, quantile};
use anyhow::{Context, Result, bail, ensure};
use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use ferrite_e2e::{KubeBox, Supervised, process::free_port};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use kube::api::{ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest one issuance may take before the trial counts as failed (and the client is killed).
pub const TRIAL_LIMIT: Duration = Duration::from_secs(90);
/// Certificate creates in flight in the scale part.
pub const SCALE_CONCURRENCY: usize = 32;
/// The contact address every client registers with.
const EMAIL: &str = "x@example.test";
/// The names issued (challtestsrv answers 127.0.0.1 for every name).
const DOMAIN: &str = "bench.test";
/// ClusterIssuer whose account is registered once and kept.
pub const KEPT_ISSUER: &str = "bench-pebble";

/// How long `n` Certificates may take to become Ready after the first create.
pub fn scale_limit(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_millis(60) * n as u32
}

/// One issuance.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Start -> certificate issued (`None`: failed, see `failure`).
    pub took: Option<Duration>,
    /// Requests Pebble logged during the trial.
    pub requests: usize,
    /// `ferrite_certs_acme_requests_total` delta (ferrite-certs only).
    pub metric_requests: Option<f64>,
    pub failure: Option<String>,
}

/// The trials of one ACME client.
#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub version: String,
    /// How the clock runs and what the account is, for the report.
    pub what: String,
    pub trials: Vec<Trial>,
    /// The client could not be run at all.
    pub error: Option<String>,
}

impl Client {
    fn new(name: &str, version: String, what: &str) -> Client {
        Client {
            name: name.into(),
            version,
            what: what.into(),
            trials: vec![],
            error: None,
        }
    }

    /// Times of the successful trials.
    pub fn times(&self) -> Vec<Duration> {
        self.trials.iter().filter_map(|t| t.took).collect()
    }

    pub fn failures(&self) -> usize {
        self.trials.iter().filter(|t| t.took.is_none()).count()
    }

    pub fn median(&self) -> Option<Duration> {
        quantile(&self.times(), 0.5)
    }

    pub fn max(&self) -> Option<Duration> {
        self.times().into_iter().max()
    }

    /// Median, min and max of Pebble's request counts over successful trials.
    pub fn requests(&self) -> Option<(usize, usize, usize)> {
        let mut v: Vec<usize> = self
            .trials
            .iter()
            .filter(|t| t.took.is_some())
            .map(|t| t.requests)
            .collect();
        v.sort_unstable();
        Some((*v.get((v.len().max(1) - 1) / 2)?, *v.first()?, *v.last()?))
    }

    /// Sum of the metric deltas over the successful trials, with the trials' Pebble count sum.
    pub fn metric_check(&self) -> Option<(f64, usize)> {
        let ok: Vec<&Trial> = self.trials.iter().filter(|t| t.took.is_some()).collect();
        let m: Option<f64> = ok.iter().map(|t| t.metric_requests).sum();
        Some((m?, ok.iter().map(|t| t.requests).sum()))
    }
}

/// One scale run.
#[derive(Debug, Clone)]
pub struct Scale {
    pub count: usize,
    /// Every create sent and answered.
    pub create: Duration,
    /// First create -> every Certificate Ready=True (`None`: not within `limit`).
    pub all_ready: Option<Duration>,
    pub ready: usize,
    pub limit: Duration,
    /// Managed Secrets in the namespace at the end.
    pub secrets: usize,
    /// Secrets checked with `openssl verify` against the CA (a sample).
    pub verified: usize,
    /// Certificates in the whole cluster when the RSS was read (the controller holds them all).
    pub cluster_certificates: usize,
    /// VmRSS of the fresh controller before the first create.
    pub idle_kib: Option<u64>,
    /// VmRSS 3 s after all were Ready (or the wait ran out).
    pub kib: Option<u64>,
    /// Highest VmRSS sampled every 250 ms from the first create on.
    pub peak_kib: Option<u64>,
    /// VmHWM at the end.
    pub hwm_kib: Option<u64>,
    pub error: Option<String>,
}

/// What `--only certs` measured.
#[derive(Debug, Clone)]
pub struct CertsResults {
    pub pebble: String,
    pub trials: usize,
    pub acme: Vec<Client>,
    pub scale: Vec<Scale>,
    /// Why the ferrite-certs parts did not run (e.g. the binary has no HTTP-01 listener yet).
    pub notes: Vec<String>,
    /// The controller's flags, for the report.
    pub controller_flags: String,
}

fn package_version(pkg: &str) -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("{pkg} {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| format!("{pkg} (version unknown)"))
}

/// Requests Pebble's WFE logged so far (one `<METHOD> <path> -> calling handler()` line each,
/// badNonce rejections included).
pub fn count_requests(log: &str) -> usize {
    log.lines()
        .filter(|l| l.ends_with("-> calling handler()"))
        .count()
}

fn pebble_requests(p: &Pebble) -> usize {
    count_requests(&p.log_tail(usize::MAX))
}

/// PEM blocks of `pem`, in order.
pub fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = vec![];
    let mut cur: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim_end();
        if line.starts_with("-----BEGIN ") {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line.starts_with("-----END ")
            && let Some(c) = cur.take()
        {
            out.push(c);
        }
    }
    out
}

/// `openssl verify` of a chain (leaf first) against `root`; `name` is checked against the leaf
/// when given.
pub fn openssl_verify(chain: &str, root: &str, name: Option<&str>) -> Result<()> {
    let blocks = pem_blocks(chain);
    ensure!(!blocks.is_empty(), "no certificate in the chain");
    let dir = tempfile::Builder::new()
        .prefix("ferrite-bench-verify")
        .tempdir()?;
    let (leaf, rest) = (dir.path().join("leaf.pem"), dir.path().join("rest.pem"));
    let root_path = dir.path().join("root.pem");
    std::fs::write(&leaf, &blocks[0])?;
    std::fs::write(&rest, blocks[1..].concat())?;
    std::fs::write(&root_path, root)?;
    let mut cmd = std::process::Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(&root_path);
    if blocks.len() > 1 {
        cmd.arg("-untrusted").arg(&rest);
    }
    if let Some(n) = name {
        cmd.args(["-verify_hostname", n]);
    }
    let out = cmd.arg(&leaf).output().context("running openssl verify")?;
    ensure!(
        out.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Runs `program` with a limit; `Ok(elapsed)` when it exited 0.
async fn timed(program: &str, args: &[String], env: &[(&str, &Path)], log: &Path) -> Result<Duration> {
    let out = std::fs::File::create(log)?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    let status = match tokio::time::timeout(TRIAL_LIMIT, child.wait()).await {
        Ok(s) => s?,
        Err(_) => {
            let _ = child.kill().await;
            bail!("{program} did not finish within {TRIAL_LIMIT:?}");
        }
    };
    let took = start.elapsed();
    if !status.success() {
        bail!(
            "{program} exited with {status}: {}",
            ferrite_e2e::process::tail(log, 5)
        );
    }
    Ok(took)
}

fn lego_args(dir: &str, port: u16, name: &str, path: &Path) -> Vec<String> {
    [
        "--server",
        dir,
        "--email",
        EMAIL,
        "--accept-tos",
        "--http",
        "--http.port",
        &format!("127.0.0.1:{port}"),
        "--domains",
        name,
        "--path",
        &path.display().to_string(),
        "run",
    ]
    .map(String::from)
    .to_vec()
}

fn certbot_args(dir: &str, port: u16, name: &str, path: &Path) -> Vec<String> {
    let p = |s: &str| path.join(s).display().to_string();
    [
        "certonly",
        "--standalone",
        "--http-01-port",
        &port.to_string(),
        "--http-01-address",
        "127.0.0.1",
        "--server",
        dir,
        "--agree-tos",
        "-m",
        EMAIL,
        "--no-eff-email",
        "-d",
        name,
        "--config-dir",
        &p("config"),
        "--work-dir",
        &p("work"),
        "--logs-dir",
        &p("logs"),
        "--non-interactive",
    ]
    .map(String::from)
    .to_vec()
}

/// The command lines as the report prints them.
pub fn commands() -> [String; 2] {
    let d = Path::new("<tmp>");
    [
        format!(
            "LEGO_CA_CERTIFICATES=<pebble-https-ca.pem> lego {}",
            lego_args("<pebble>/dir", 0, "<name>", d).join(" ")
        )
        .replace("127.0.0.1:0", "127.0.0.1:<va-http-port>"),
        format!(
            "REQUESTS_CA_BUNDLE=<pebble-https-ca.pem> certbot {}",
            certbot_args("<pebble>/dir", 0, "<name>", d).join(" ")
        )
        .replace("--http-01-port 0", "--http-01-port <va-http-port>")
        .replace("<tmp>/config", "<tmp>")
        .replace("<tmp>/work", "<tmp>")
        .replace("<tmp>/logs", "<tmp>"),
    ]
}

/// One lego or certbot issuance with a fresh account (a new directory): time, Pebble's request
/// count, and the issued chain checked with openssl.
async fn cli_trial(pebble: &Pebble, root: &str, which: &str, i: usize) -> Trial {
    let name = format!("{which}-{i}.{DOMAIN}");
    let before = pebble_requests(pebble);
    let result = async {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ferrite-bench-{which}"))
            .tempdir()?;
        let url = pebble.directory_url();
        let ca = pebble.ca_path();
        let log = dir.path().join("client.log");
        let (took, chain) = if which == "lego" {
            let took = timed(
                "lego",
                &lego_args(&url, pebble.http_port(), &name, dir.path()),
                &[("LEGO_CA_CERTIFICATES", &ca)],
                &log,
            )
            .await?;
            let crt = dir.path().join("certificates").join(format!("{name}.crt"));
            (
                took,
                std::fs::read_to_string(&crt).with_context(|| format!("{}", crt.display()))?,
            )
        } else {
            let took = timed(
                "certbot",
                &certbot_args(&url, pebble.http_port(), &name, dir.path()),
                &[("REQUESTS_CA_BUNDLE", &ca)],
                &log,
            )
            .await?;
            let crt = dir.path().join("config/live").join(&name).join("fullchain.pem");
            (
                took,
                std::fs::read_to_string(&crt).with_context(|| format!("{}", crt.display()))?,
            )
        };
        openssl_verify(&chain, root, Some(&name))?;
        Ok::<_, anyhow::Error>(took)
    }
    .await;
    let requests = pebble_requests(pebble) - before;
    match result {
        Ok(took) => Trial {
            took: Some(took),
            requests,
            metric_requests: None,
            failure: None,
        },
        Err(e) => Trial {
            took: None,
            requests,
            metric_requests: None,
            failure: Some(format!("{e:#}")),
        },
    }
}

/// Runs both parts: `trials` issuances per client, then each of `counts` Certificates from a CA.
/// `certs_bin` is the release `ferrite-certs`; without it only lego and certbot run.
pub async fn run(certs_bin: Option<&Path>, trials: usize, counts: &[usize]) -> Result<CertsResults> {
    eprintln!("==> certs: starting Pebble + pebble-challtestsrv (strict, PEBBLE_VA_NOSLEEP=1)");
    let mut pebble = tokio::task::spawn_blocking(|| Pebble::start(PebbleOptions::default()))
        .await
        .context("starting Pebble panicked")??;
    let result = bench(&pebble, certs_bin, trials, counts).await;
    pebble.stop();
    result
}

async fn bench(
    pebble: &Pebble,
    certs_bin: Option<&Path>,
    trials: usize,
    counts: &[usize],
) -> Result<CertsResults> {
    let root = pebble.root_pem().context("Pebble's root")?;
    let mut lego = Client::new(
        "lego",
        package_version("lego"),
        "process start -> exit 0; fresh account (new --path) every run",
    );
    let mut certbot = Client::new(
        "certbot",
        package_version("certbot"),
        "process start -> exit 0; fresh account (new config dir) every run",
    );
    eprintln!(
        "==> certs 1. HTTP-01 issuance: lego and certbot, {trials} trials each, alternating (VA port {})",
        pebble.http_port()
    );
    for i in 0..trials {
        for c in [&mut lego, &mut certbot] {
            let t = cli_trial(pebble, &root, &c.name, i).await;
            if let Some(f) = &t.failure {
                eprintln!("    {} trial {i} failed: {f}", c.name);
            }
            c.trials.push(t);
        }
    }
    for c in [&lego, &certbot] {
        eprintln!(
            "    {}: median {:?}, max {:?}, requests {:?}, {} failed",
            c.name,
            c.median(),
            c.max(),
            c.requests(),
            c.failures()
        );
    }
    let mut results = CertsResults {
        pebble: package_version("pebble"),
        trials,
        acme: vec![lego, certbot],
        scale: vec![],
        notes: vec![],
        controller_flags: String::new(),
    };
    let Some(bin) = certs_bin else {
        results.notes.push(
            "ferrite-certs was not measured: no release `ferrite-certs` binary next to ferrite-bench".into(),
        );
        return Ok(results);
    };
    eprintln!("==> certs: starting the box (etcd + kube-apiserver on 127.0.0.1)");
    let kb = KubeBox::start().await.context("starting the box")?;
    let r = ferrite_parts(&kb, bin, pebble, &root, trials, counts, &mut results).await;
    kb.stop();
    r.map(|()| results)
}

/// The controller's flags besides the kubeconfig and the admin address.
fn controller_flags(cluster_ns: &str, http01: Option<u16>) -> Vec<String> {
    let mut v = vec![
        "--lease-namespace=default".to_string(),
        format!("--cluster-resource-namespace={cluster_ns}"),
        // A failed trial is retried soon instead of after cert-manager's hour.
        "--backoff-base=2s".into(),
        "--backoff-max=10s".into(),
    ];
    if let Some(port) = http01 {
        // Pebble's VA connects to 127.0.0.1:<port> for every name: the listener is there, and the
        // self-check (kept on, the default) asks it there instead of resolving the name.
        v.push(format!("--http01-listen=127.0.0.1:{port}"));
        v.push(format!("--self-check-http-address=127.0.0.1:{port}"));
        // The temporary Ingress's Endpoints (never dialled: the box has no ingress controller and
        // the API server refuses loopback endpoints) point at a documentation address.
        v.push("--pod-ip=192.0.2.10".into());
    }
    v
}

async fn start_controller(
    kb: &KubeBox,
    bin: &Path,
    flags: &[String],
    log: &str,
) -> Result<(Supervised, SocketAddr)> {
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kb.kubeconfig.display()),
        format!("--admin-addr={admin}"),
    ];
    args.extend(flags.iter().cloned());
    let mut proc = Supervised::spawn(
        "ferrite-certs controller",
        bin,
        &args,
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join(log),
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !proc.is_running() {
            bail!("ferrite-certs controller exited:\n{}", proc.log_tail(30));
        }
        if let Ok((200, _)) = stats::http_get(admin, "/readyz").await {
            return Ok((proc, admin));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "ferrite-certs controller not ready within 60 s:\n{}",
        proc.log_tail(30)
    )
}

/// True if `ferrite-certs controller --help` lists `flag`.
fn has_flag(bin: &Path, flag: &str) -> bool {
    std::process::Command::new(bin)
        .args(["controller", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).context("object")?;
    api.create(&PostParams::default(), &obj).await.context("create")
}

fn ready_condition(conditions: &[Condition]) -> Option<&Condition> {
    conditions.iter().find(|c| c.type_ == "Ready")
}

/// Ready=True on a Certificate.
pub fn cert_ready(c: &Certificate) -> bool {
    c.status
        .as_ref()
        .and_then(|s| ready_condition(&s.conditions))
        .is_some_and(|c| c.status == "True")
}

/// The Ready condition of a Certificate as text, for failure messages.
fn cert_state(c: Option<&Certificate>) -> String {
    match c
        .and_then(|c| c.status.as_ref())
        .and_then(|s| ready_condition(&s.conditions))
    {
        Some(r) => format!("Ready={} {}: {}", r.status, r.reason, r.message),
        None => "no Ready condition".into(),
    }
}

/// Watches Certificate `name` until Ready=True, at most `limit`.
async fn wait_cert_ready(api: &Api<Certificate>, name: &str, limit: Duration) -> Result<()> {
    let cond = |c: Option<&Certificate>| c.is_some_and(cert_ready);
    match tokio::time::timeout(
        limit,
        kube::runtime::wait::await_condition(api.clone(), name, cond),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => bail!("watching Certificate {name}: {e}"),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            bail!(
                "Certificate {name} not Ready within {limit:?} ({})",
                cert_state(now.as_ref())
            )
        }
    }
}

fn secret_text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
}

/// `ferrite_certs_acme_requests_total`, every series added up.
async fn acme_metric(admin: SocketAddr) -> Option<f64> {
    let (code, body) = stats::http_get(admin, "/metrics").await.ok()?;
    (code == 200).then(|| stats::sample(&body, "ferrite_certs_acme_requests_total", &[]))?
}

fn acme_issuer(name: &str, pebble: &Pebble) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"acme": {
        "server": pebble.directory_url(), "email": EMAIL,
        "privateKeySecretRef": {"name": format!("{name}-account")},
        "caBundle": super::dns_controller::base64(pebble.ca_pem().as_bytes()),
        "solvers": [{"http01": {"ingress": {}}}]}}})
}

fn certificate(name: &str, issuer: serde_json::Value, dns_name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"secretName": format!("{name}-tls"), "issuerRef": issuer,
        "dnsNames": [dns_name], "privateKey": {"algorithm": "ECDSA", "size": 256}}})
}

#[allow(clippy::too_many_arguments)]
async fn ferrite_trial(
    pebble: &Pebble,
    root: &str,
    certs: &Api<Certificate>,
    secrets: &Api<Secret>,
    cluster_issuers: &Api<ClusterIssuer>,
    admin: SocketAddr,
    fresh: bool,
    i: usize,
) -> Trial {
    let tag = if fresh { "fresh" } else { "kept" };
    let name = format!("acme-{tag}-{i}");
    let dns_name = format!("{name}.{DOMAIN}");
    let before = pebble_requests(pebble);
    let metric_before = acme_metric(admin).await;
    let result = async {
        let start = Instant::now();
        let issuer = if fresh {
            let issuer = format!("bench-pebble-fresh-{i}");
            create(cluster_issuers, acme_issuer(&issuer, pebble)).await?;
            issuer
        } else {
            KEPT_ISSUER.to_string()
        };
        create(
            certs,
            certificate(&name, json!({"name": issuer, "kind": "ClusterIssuer"}), &dns_name),
        )
        .await?;
        wait_cert_ready(certs, &name, TRIAL_LIMIT).await?;
        let took = start.elapsed();
        let secret = secrets.get(&format!("{name}-tls")).await.context("the Secret")?;
        let chain = secret_text(&secret, "tls.crt").context("the Secret has no tls.crt")?;
        openssl_verify(&chain, root, Some(&dns_name))?;
        Ok::<_, anyhow::Error>(took)
    }
    .await;
    let metric_after = acme_metric(admin).await;
    let requests = pebble_requests(pebble) - before;
    let metric_requests = metric_before.zip(metric_after).map(|(b, a)| a - b);
    match result {
        Ok(took) => Trial {
            took: Some(took),
            requests,
            metric_requests,
            failure: None,
        },
        Err(e) => Trial {
            took: None,
            requests,
            metric_requests,
            failure: Some(format!("{e:#}")),
        },
    }
}

async fn ferrite_parts(
    kb: &KubeBox,
    bin: &Path,
    pebble: &Pebble,
    root: &str,
    trials: usize,
    counts: &[usize],
    results: &mut CertsResults,
) -> Result<()> {
    ferrite_e2e::demo::apply_crds(kb).await?;
    let client = kb.client().await;
    let cluster_ns = kb.namespace("bench-certs-cluster").await;
    let ns = kb.namespace("bench-certs-acme").await;
    let http01 = has_flag(bin, "--http01-listen");
    let flags = controller_flags(&cluster_ns, http01.then_some(pebble.http_port()));
    results.controller_flags = flags.join(" ");
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    if http01 {
        eprintln!(
            "==> certs 1. HTTP-01 issuance: ferrite-certs controller (--http01-listen on the VA port), {trials} trials, account kept, then {trials} with a fresh account"
        );
        let (mut ctl, admin) = start_controller(kb, bin, &flags, "bench-certs-acme.log").await?;
        let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let cis: Api<ClusterIssuer> = Api::all(client.clone());
        let mut kept = Client::new(
            "ferrite-certs",
            version.clone(),
            "Certificate created -> Ready=True (watch); account registered once by the ClusterIssuer and kept",
        );
        let mut fresh = Client::new(
            "ferrite-certs, fresh account",
            version.clone(),
            "ClusterIssuer + Certificate created -> Ready=True; a new ClusterIssuer (new account) every run",
        );
        let setup = async {
            create(&cis, acme_issuer(KEPT_ISSUER, pebble)).await?;
            let ready = |i: Option<&ClusterIssuer>| {
                i.and_then(|i| i.status.as_ref())
                    .and_then(|s| ready_condition(&s.conditions))
                    .is_some_and(|c| c.status == "True")
            };
            tokio::time::timeout(
                Duration::from_secs(60),
                kube::runtime::wait::await_condition(cis.clone(), KEPT_ISSUER, ready),
            )
            .await
            .context("ClusterIssuer bench-pebble not Ready within 60 s")??;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        match setup {
            Err(e) => {
                let msg = format!("{e:#}\n{}", ctl.log_tail(10));
                kept.error = Some(msg.clone());
                fresh.error = Some(msg);
            }
            Ok(()) => {
                'trials: for i in 0..trials {
                    for (c, is_fresh) in [(&mut kept, false), (&mut fresh, true)] {
                        if !ctl.is_running() {
                            c.error = Some(format!("the controller exited:\n{}", ctl.log_tail(30)));
                            break 'trials;
                        }
                        let t = ferrite_trial(pebble, root, &certs, &secrets, &cis, admin, is_fresh, i).await;
                        if let Some(f) = &t.failure {
                            eprintln!("    {} trial {i} failed: {f}", c.name);
                        }
                        c.trials.push(t);
                    }
                }
            }
        }
        for c in [&kept, &fresh] {
            eprintln!(
                "    {}: median {:?}, max {:?}, requests {:?}, metric {:?}, {} failed",
                c.name,
                c.median(),
                c.max(),
                c.requests(),
                c.metric_check(),
                c.failures()
            );
        }
        ctl.stop(Duration::from_secs(5));
        results.acme.push(kept);
        results.acme.push(fresh);
    } else {
        results.notes.push(format!(
            "ferrite-certs ACME issuance was not measured: this build's `ferrite-certs controller` ({}) has no `--http01-listen` (its HTTP-01 listener, controllers/certs/src/solvers.rs)",
            bin.display()
        ));
    }

    // 2. Scale: a fresh controller per count, after the previous count's namespace is gone.
    let mut previous: Option<String> = None;
    for &n in counts {
        if let Some(old) = previous.take() {
            delete_namespace(&client, &old).await;
        }
        let ns = kb.namespace("bench-certs-scale").await;
        previous = Some(ns.clone());
        eprintln!(
            "==> certs 2. {n} Certificates from a CA Issuer, {SCALE_CONCURRENCY} creates in flight (limit {:?})",
            scale_limit(n)
        );
        let s = scale(kb, &client, bin, &flags, &ns, n).await;
        eprintln!("    {s:?}");
        results.scale.push(s);
    }
    Ok(())
}

/// Deletes a namespace and waits (at most 180 s) until it is gone, so its objects leave the
/// controller's caches.
async fn delete_namespace(client: &kube::Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.delete(ns, &Default::default()).await.is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline {
        if matches!(api.get_opt(ns).await, Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("    namespace {ns} still terminating after 180 s");
}

/// A CA key pair for the scale part's Issuer: (certificate PEM, key PEM).
fn ca_material() -> Result<(String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ferrite bench private CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    let cert = ca.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// VmRSS sampled every 250 ms until dropped.
struct Sampler {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: Option<u32>) -> Sampler {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            let Some(pid) = pid else { return };
            while let Some(kib) = stats::rss_kib(pid) {
                p.fetch_max(kib, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Sampler { peak, task }
    }

    fn peak(&self) -> Option<u64> {
        Some(self.peak.load(Ordering::Relaxed)).filter(|k| *k > 0)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `VmHWM` of a process, KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn scale(
    kb: &KubeBox,
    client: &kube::Client,
    bin: &Path,
    flags: &[String],
    ns: &str,
    n: usize,
) -> Scale {
    let limit = scale_limit(n);
    let mut s = Scale {
        count: n,
        create: Duration::ZERO,
        all_ready: None,
        ready: 0,
        limit,
        secrets: 0,
        verified: 0,
        cluster_certificates: 0,
        idle_kib: None,
        kib: None,
        peak_kib: None,
        hwm_kib: None,
        error: None,
    };
    if let Err(e) = scale_run(kb, client, bin, flags, ns, &mut s).await {
        s.error = Some(format!("{e:#}"));
    }
    s
}

async fn scale_run(
    kb: &KubeBox,
    client: &kube::Client,
    bin: &Path,
    flags: &[String],
    ns: &str,
    s: &mut Scale,
) -> Result<()> {
    let n = s.count;
    let (ca_pem, key_pem) = ca_material()?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    create(
        &secrets,
        json!({"metadata": {"name": "bench-ca"}, "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": ca_pem, "tls.key": key_pem}}),
    )
    .await?;
    let issuers: Api<Issuer> = Api::namespaced(client.clone(), ns);
    create(
        &issuers,
        json!({"metadata": {"name": "bench-ca"}, "spec": {"ca": {"secretName": "bench-ca"}}}),
    )
    .await?;
    let (mut ctl, _admin) = start_controller(kb, bin, flags, &format!("bench-certs-scale-{n}.log")).await?;
    let result = async {
        let ready = |i: Option<&Issuer>| {
            i.and_then(|i| i.status.as_ref())
                .and_then(|s| ready_condition(&s.conditions))
                .is_some_and(|c| c.status == "True")
        };
        tokio::time::timeout(
            Duration::from_secs(60),
            kube::runtime::wait::await_condition(issuers.clone(), "bench-ca", ready),
        )
        .await
        .context("Issuer bench-ca not Ready within 60 s")??;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pid = ctl.program_pid();
        s.idle_kib = pid.and_then(stats::rss_kib);
        let certs: Api<Certificate> = Api::namespaced(client.clone(), ns);
        // The watch runs before the first create, so no Ready transition is missed.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let watch = tokio::spawn(count_ready(certs.clone(), n, rx));
        let sampler = Sampler::start(pid);
        let start = Instant::now();
        let created = stream::iter(0..n)
            .map(|i| {
                let certs = certs.clone();
                async move {
                    let name = format!("c-{i:05}");
                    let body = certificate(
                        &name,
                        json!({"name": "bench-ca", "kind": "Issuer"}),
                        &format!("{name}.scale.{DOMAIN}"),
                    );
                    let mut last = None;
                    for _ in 0..3 {
                        match create(&certs, body.clone()).await {
                            Ok(_) => return Ok(()),
                            Err(e) => last = Some(e),
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    Err(last.unwrap_or_else(|| anyhow::anyhow!("create {name}")))
                }
            })
            .buffer_unordered(SCALE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await;
        s.create = start.elapsed();
        if let Err(e) = created {
            let _ = tx.send(());
            return Err(e.context("creating Certificates"));
        }
        let waited = tokio::time::timeout(limit_left(start, s.limit), watch).await;
        let _ = tx.send(());
        match waited {
            Ok(Ok(Ok((count, done)))) => {
                s.ready = count;
                s.all_ready = done.map(|t| t.duration_since(start));
            }
            Ok(Ok(Err(e))) => bail!("watching Certificates: {e:#}"),
            Ok(Err(e)) => bail!("the watch task: {e}"),
            Err(_) => {}
        }
        if s.all_ready.is_none() {
            // The watch was cut by the limit: count Ready now.
            s.ready = certs
                .list(&ListParams::default())
                .await
                .map(|l| l.items.iter().filter(|c| cert_ready(c)).count())
                .unwrap_or(s.ready);
        }
        ensure!(ctl.is_running(), "the controller exited:\n{}", ctl.log_tail(30));
        tokio::time::sleep(Duration::from_secs(3)).await;
        s.kib = pid.and_then(stats::rss_kib);
        s.hwm_kib = pid.and_then(hwm_kib);
        s.peak_kib = sampler.peak().max(s.kib);
        drop(sampler);
        let all: Api<Certificate> = Api::all(client.clone());
        s.cluster_certificates = count_metadata(&all, &ListParams::default()).await?;
        s.secrets = count_metadata(
            &secrets,
            &ListParams::default().labels(&format!("{}=true", ferrite_api::certs::MANAGED_LABEL)),
        )
        .await?;
        // A sample of the issued Secrets, checked with openssl against the CA.
        for i in [0, n / 2, n - 1] {
            let name = format!("c-{i:05}");
            let secret = secrets.get(&format!("{name}-tls")).await?;
            let chain = secret_text(&secret, "tls.crt").context("no tls.crt")?;
            openssl_verify(&chain, &ca_pem, Some(&format!("{name}.scale.{DOMAIN}")))
                .with_context(|| format!("Secret {name}-tls"))?;
            s.verified += 1;
        }
        Ok(())
    }
    .await;
    ctl.stop(Duration::from_secs(5));
    result
}

fn limit_left(start: Instant, limit: Duration) -> Duration {
    limit.saturating_sub(start.elapsed())
}

/// Objects matching `lp`, listed by metadata in pages of 500.
async fn count_metadata<K>(api: &Api<K>, lp: &ListParams) -> Result<usize>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut lp = lp.clone().limit(500);
    let mut n = 0;
    for _ in 0..1000 {
        let page = api.list_metadata(&lp).await.context("list")?;
        n += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp = lp.continue_token(&c),
            None => return Ok(n),
        }
    }
    bail!("more than 500,000 objects")
}

/// Follows the namespace's Certificates until `n` are Ready=True (then returns the instant) or
/// `stop` fires; returns the Ready count.
async fn count_ready(
    api: Api<Certificate>,
    n: usize,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(usize, Option<Instant>)> {
    let mut ready: HashSet<String> = HashSet::new();
    let mut events = watcher(api, watcher::Config::default()).boxed();
    loop {
        let ev = tokio::select! {
            _ = &mut stop => return Ok((ready.len(), None)),
            ev = events.next() => ev,
        };
        let Some(ev) = ev else {
            bail!("the watch ended");
        };
        match ev {
            Ok(watcher::Event::Apply(c)) | Ok(watcher::Event::InitApply(c)) => {
                let name = kube::ResourceExt::name_any(&c);
                if cert_ready(&c) {
                    ready.insert(name);
                } else {
                    ready.remove(&name);
                }
            }
            Ok(watcher::Event::Delete(c)) => {
                ready.remove(&kube::ResourceExt::name_any(&c));
            }
            Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
            // The watcher re-lists by itself after errors; pause briefly.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
        if ready.len() >= n {
            return Ok((ready.len(), Some(Instant::now())));
        }
    }
}

/// The `ferrite-certs` binary next to ferrite-bench, if built.
pub fn binary() -> Option<PathBuf> {
    super::sibling_binary("ferrite-certs").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pebble_request_lines() {
        let log = "Pebble 2026/12/01 12:32:55 Listening on: 127.0.0.1:24000\n\
                   Pebble 2026/12/01 12:32:56 GET /dir -> calling handler()\n\
                   Pebble 2026/12/01 12:32:56 HEAD /nonce-plz -> calling handler()\n\
                   Pebble 2026/12/01 12:32:56 There are now 1 accounts in memory\n\
                   Pebble 2026/12/01 12:32:56 POST /finalize-order/ -> calling handler()\n\
                   Pebble 2026/12/01 12:32:56 Attempting to validate w/ HTTP: http://a.test:5002/x\n";
        assert_eq!(count_requests(log), 3);
        assert_eq!(count_requests(""), 0);
    }

    #[test]
    fn splits_pem_chains() {
        let chain = "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n\n\
                     -----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----\n";
        let b = pem_blocks(chain);
        assert_eq!(b.len(), 2);
        assert!(b[0].contains("AAA") && !b[0].contains("BBB"));
        assert!(b[1].starts_with("-----BEGIN CERTIFICATE-----\nBBB"));
        assert!(pem_blocks("junk").is_empty());
    }

    #[test]
    fn request_summary_is_median_min_max_of_successes() {
        let t = |took: Option<u64>, requests| Trial {
            took: took.map(Duration::from_millis),
            requests,
            metric_requests: Some(requests as f64),
            failure: None,
        };
        let mut c = Client::new("x", String::new(), "");
        assert_eq!(c.requests(), None);
        c.trials = vec![t(Some(10), 12), t(None, 40), t(Some(30), 10), t(Some(20), 11)];
        assert_eq!(c.requests(), Some((11, 10, 12)));
        assert_eq!(c.median(), Some(Duration::from_millis(20)));
        assert_eq!(c.max(), Some(Duration::from_millis(30)));
        assert_eq!(c.failures(), 1);
        assert_eq!(c.metric_check(), Some((33.0, 33)));
    }

    #[test]
    fn openssl_checks_chain_and_name() {
        let (ca, _) = ca_material().expect("ca");
        // A CA's own certificate verifies against itself, but carries no DNS name.
        openssl_verify(&ca, &ca, None).expect("self-signed CA verifies");
        assert!(openssl_verify(&ca, &ca, Some("x.bench.test")).is_err());
        let (other, _) = ca_material().expect("ca");
        assert!(openssl_verify(&ca, &other, None).is_err());
        assert!(openssl_verify("", &ca, None).is_err());
    }
}
