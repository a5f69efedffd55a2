//! Box tests of DNS-01 end to end: `ferrite-certs controller` (run as the chart's ServiceAccount) issues a
//! wildcard Certificate from a real Pebble whose VA resolves through the DNS server the answer is put in,
//! with the DNS self-check on (`--self-check-nameservers`) and `/usr/bin/openssl` verifying the chain
//! against Pebble's root:
//! 1. `dns01.ferriteDNS`: the `ferrite-dns controller` binary (its chart's ServiceAccount too) serves an
//!    `embedded` DNSZone on 127.0.0.1 and publishes the `DNSRecord` TXT ferrite-certs writes;
//! 2. `dns01.rfc2136`: a test `named` with an `update-policy` for a TSIG key; and a wrong TSIG secret
//!    fails the Certificate with BADSIG, a Warning Event and no Secret.
//!
//! Needs `pebble`, `named`, `dig` and `openssl` (e2e/scripts/install-deps.sh). The `ferrite-dns` binary
//! is built first (`cargo build -p ferrite-dns --bin ferrite-dns`) unless `FERRITE_DNS_BIN` names one.
//! Run: `cargo test -p ferrite-certs --test dns01`.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferrite_api::certs::{Certificate, Challenge, ClusterIssuer};
use ferrite_api::dns::DNSRecord;
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use ferrite_e2e::pebble::{Pebble, PebbleOptions, free_tcp_udp_port};
use ferrite_e2e::{KubeBox, Supervised};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

const CLUSTER_NS: &str = "ferrite-system";
const KEY: &str = "ferrite-certs-dns01";
const SECRET: &[u8] = b"ferrite-certs dns01 box test secret, 32+ bytes";

/// The two scenarios share the box; each runs its own controllers, one scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `/readyz` of a controller just spawned.
async fn wait_ready(proc: &mut Supervised, admin: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(proc.is_running(), "controller exited:\n{}", proc.log_tail(30));
        if let Ok((200, _)) = ferrite_e2e::http_get(admin, "/readyz").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "controller not ready in 30 s:\n{}",
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_path(name: &str) -> PathBuf {
    // Kept after the test (the box's directory is not), for reading after a failure.
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrite-certs-dns01-{name}.log"))
}

fn free_addr() -> String {
    format!("127.0.0.1:{}", ferrite_e2e::process::free_port().unwrap())
}

/// `ferrite-certs controller` as the chart's ServiceAccount; the DNS self-check asks `nameserver`.
async fn start_certs(kubeconfig: &Path, tag: &str, nameserver: SocketAddr) -> (Supervised, SocketAddr) {
    let admin = free_addr();
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--lease-name=ferrite-certs-{tag}"),
        format!("--lease-namespace={CLUSTER_NS}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        format!("--cluster-resource-namespace={CLUSTER_NS}"),
        "--backoff-base=2s".into(),
        "--backoff-max=10s".into(),
        format!("--http01-listen={}", free_addr()),
        format!("--self-check-nameservers={nameserver}"),
        "--self-check-timeout=20s".into(),
        "--rfc2136-timeout=3s".into(),
    ];
    let mut proc = Supervised::spawn(
        "ferrite-certs controller",
        &PathBuf::from(env!("CARGO_BIN_EXE_ferrite-certs")),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_certs=debug")],
        &log_path(&format!("certs-{tag}")),
    )
    .expect("ferrite-certs starts");
    let admin: SocketAddr = admin.parse().unwrap();
    wait_ready(&mut proc, admin).await;
    (proc, admin)
}

/// The `ferrite-dns` binary of this workspace: `FERRITE_DNS_BIN`, else built next to `ferrite-certs`
/// (once per test process, so it is never stale).
fn ferrite_dns_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("FERRITE_DNS_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-q", "-p", "ferrite-dns", "--bin", "ferrite-dns"])
            .current_dir(ferrite_e2e::demo::repo_root())
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo build -p ferrite-dns: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = Path::new(env!("CARGO_BIN_EXE_ferrite-certs"))
            .parent()
            .unwrap()
            .join("ferrite-dns");
        assert!(bin.is_file(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

/// `ferrite-dns controller` as its chart's ServiceAccount, serving embedded zones on `dns`.
async fn start_dns(kubeconfig: &Path, dns: SocketAddr) -> (Supervised, SocketAddr) {
    let bin = tokio::task::spawn_blocking(ferrite_dns_bin).await.unwrap();
    let admin = free_addr();
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--dns-listen={dns}"),
        "--lease-name=ferrite-dns-dns01".into(),
        format!("--lease-namespace={CLUSTER_NS}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        "--sync-interval=2s".into(),
    ];
    let mut proc = Supervised::spawn(
        "ferrite-dns controller",
        &bin,
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_dns=debug")],
        &log_path("dns"),
    )
    .expect("ferrite-dns starts");
    let admin: SocketAddr = admin.parse().unwrap();
    wait_ready(&mut proc, admin).await;
    (proc, admin)
}

/// A subchart's RBAC (`templates/rbac.yaml`) applied to the box; returns the ServiceAccount's kubeconfig.
async fn chart_account(kb: &KubeBox, subchart: &str, account: &str) -> PathBuf {
    let _ = kb.kubectl().args(["create", "namespace", CLUSTER_NS]).output();
    let chart = ferrite_e2e::demo::repo_root().join(format!("charts/ferrite/charts/{subchart}"));
    let out = kb
        .helm()
        .args(["template", "ferrite"])
        .arg(&chart)
        .args(["--namespace", CLUSTER_NS, "--show-only", "templates/rbac.yaml"])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = kb.dir.join(format!("dns01-{subchart}-rbac.yaml"));
    std::fs::write(&rendered, &out.stdout).unwrap();
    let applied = kb
        .kubectl()
        .args(["apply", "-f"])
        .arg(&rendered)
        .output()
        .expect("kubectl runs");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    kb.service_account_kubeconfig(CLUSTER_NS, account)
        .await
        .expect("ServiceAccount kubeconfig")
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("valid object");
    api.create(&PostParams::default(), &obj).await.expect("created")
}

type Cond = (String, String, String);

fn cert_condition(c: &Certificate, type_: &str) -> Option<Cond> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_cluster_issuer_registered(api: &Api<ClusterIssuer>, name: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("ClusterIssuer {name} Ready=True ACMEAccountRegistered"),
        || async {
            let i = api.get(name).await.ok()?;
            i.status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True" && c.reason == "ACMEAccountRegistered")
                .then_some(())
        },
    )
    .await;
}

/// The (type, note) of the first Event `reason` about `name`.
async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> (String, String) {
    let api: Api<Event> = Api::namespaced(kb.client().await, ns);
    eventually(
        Duration::from_secs(15),
        &format!("Event {reason} on {name}"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = e.regarding.as_ref()?.name.as_deref()? == name;
                (on && e.reason.as_deref() == Some(reason))
                    .then(|| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
            })
        },
    )
    .await
}

fn data<'a>(s: &'a Secret, key: &str) -> &'a [u8] {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .unwrap_or_else(|| panic!("Secret {} has no {key}", s.metadata.name.as_deref().unwrap_or("")))
}

/// Runs openssl with `args`; returns (success, stdout + stderr).
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .output()
        .expect("/usr/bin/openssl runs (apt-get install -y openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The PEM blocks of a chain, in order.
fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in pem.lines() {
        cur.push_str(line);
        cur.push('\n');
        if line.starts_with("-----END") {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// openssl: the Secret's chain verifies against Pebble's root, its key is the leaf's, and the leaf
/// names exactly `names` (as `DNS:` entries).
fn verify_secret(dir: &Path, tag: &str, s: &Secret, root_pem: &str, names: &[&str]) {
    let chain = String::from_utf8(data(s, "tls.crt").to_vec()).unwrap();
    let blocks = pem_blocks(&chain);
    assert!(
        blocks.len() >= 2,
        "tls.crt holds the leaf and its chain: {} blocks",
        blocks.len()
    );
    let p = |k: &str| dir.join(format!("{tag}-{k}")).display().to_string();
    let (leaf, inter, root, key) = (p("leaf.pem"), p("chain.pem"), p("root.pem"), p("tls.key"));
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&inter, blocks[1..].concat()).unwrap();
    std::fs::write(&root, root_pem).unwrap();
    std::fs::write(&key, data(s, "tls.key")).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", &root, "-untrusted", &inter, &leaf]);
    assert!(ok, "openssl verify against Pebble's root: {out}");
    let (ok1, cert_pub) = openssl(&["x509", "-in", &leaf, "-noout", "-pubkey"]);
    let (ok2, key_pub) = openssl(&["pkey", "-in", &key, "-pubout"]);
    assert!(ok1 && ok2, "openssl pubkey: {cert_pub} {key_pub}");
    assert_eq!(cert_pub, key_pub, "tls.key is the key of the leaf");
    let (ok, out) = openssl(&["x509", "-in", &leaf, "-noout", "-ext", "subjectAltName"]);
    assert!(ok, "openssl x509 -ext: {out}");
    let mut got: Vec<&str> = out
        .split([',', '\n'])
        .map(str::trim)
        .filter_map(|e| e.strip_prefix("DNS:"))
        .collect();
    got.sort_unstable();
    let mut want = names.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "the leaf's names: {out}");
}

/// `dig @addr name TXT`: (status, TXT answers without quotes).
fn dig_txt(server: SocketAddr, name: &str) -> (String, Vec<String>) {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string()])
        .args([
            "+time=2",
            "+tries=1",
            "+norecurse",
            "+noall",
            "+answer",
            "+comments",
        ])
        .args([name, "TXT"])
        .output()
        .expect("dig runs (apt-get install -y bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| {
            l.split_once("status: ")
                .map(|(_, r)| r.split(',').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    let answers = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter(|l| l.split_whitespace().nth(3) == Some("TXT"))
        .map(|l| {
            l.split_whitespace()
                .skip(4)
                .collect::<Vec<_>>()
                .join(" ")
                .trim_matches('"')
                .to_string()
        })
        .collect();
    (status, answers)
}

/// Waits until `server` answers `name` TXT with NXDOMAIN or NOERROR without TXT (NODATA).
async fn wait_no_txt(server: SocketAddr, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, answers) = dig_txt(server, name);
        if status == "NXDOMAIN" || (status == "NOERROR" && answers.is_empty()) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "{name} TXT at {server} still answered: {status} {answers:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of a counter's series whose labels contain `labels`.
fn counter_sum(metrics: &str, name: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(admin: SocketAddr) -> String {
    match ferrite_e2e::http_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("/metrics at {admin}: {other:?}"),
    }
}

async fn start_pebble(dns_server: SocketAddr) -> Pebble {
    tokio::task::spawn_blocking(move || {
        Pebble::start(PebbleOptions {
            dns_server: Some(dns_server),
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("Pebble starts (apt-get install -y pebble)")
}

/// Waits until the Certificate is Ready=True, failing with the controller's and Pebble's logs.
async fn wait_ready_cert(
    api: &Api<Certificate>,
    name: &str,
    ctl: &Supervised,
    pebble: &Pebble,
) -> Certificate {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let c = api.get(name).await.unwrap();
        if cert_condition(&c, "Ready").is_some_and(|(s, _, _)| s == "True") {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{name} not Ready in 90 s: {:?}\n{}\n{}",
            c.status,
            ctl.log_tail(40),
            pebble.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A wildcard and its apex through `dns01.ferriteDNS`: ferrite-dns serves the embedded zone Pebble
/// resolves through; the DNSRecord (one, with both values) and the Challenges are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_ferrite_dns_wildcard() {
    let _serial = SERIAL.lock().await;
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace("certs-dns01").await;
    let certs_kubeconfig = chart_account(kb, "certs", "ferrite-certs").await;
    let dns_kubeconfig = chart_account(kb, "dns", "ferrite-dns").await;
    let dns: SocketAddr = format!("127.0.0.1:{}", free_tcp_udp_port().unwrap())
        .parse()
        .unwrap();
    let (mut dns_proc, dns_admin) = start_dns(&dns_kubeconfig, dns).await;

    let zones: Api<ferrite_api::dns::DNSZone> = Api::all(client.clone());
    create(
        &zones,
        json!({"metadata": {"name": "certs-dns01"}, "spec": {"zone": "dns01.test.", "provider": {"embedded": {}}}}),
    )
    .await;
    eventually(Duration::from_secs(20), "dns01.test. served", || async {
        let (status, _) = dig_txt(dns, "dns01.test.");
        (status == "NOERROR").then_some(())
    })
    .await;
    assert_eq!(
        wait_no_txt(dns, "_acme-challenge.dns01.test.").await,
        "NXDOMAIN",
        "no challenge record before"
    );

    let pebble = start_pebble(dns).await;
    assert_eq!(pebble.resolver(), dns);
    let (ctl, _) = start_certs(&certs_kubeconfig, "ferrite-dns", dns).await;
    let tmp = tempfile::tempdir().unwrap();

    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let records: Api<DNSRecord> = Api::namespaced(client.clone(), &ns);
    let challenges: Api<Challenge> = Api::namespaced(client.clone(), &ns);
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(pebble.ca_pem().as_bytes());
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "dns01-ferrite"}, "spec": {"acme": {
            "server": pebble.directory_url(), "privateKeySecretRef": {"name": "dns01-ferrite-account"},
            "caBundle": ca_bundle, "solvers": [{"dns01": {"ferriteDNS": {}}}]}}}),
    )
    .await;
    wait_cluster_issuer_registered(&cluster_issuers, "dns01-ferrite").await;
    let txt_before = counter_sum(
        &metrics(dns_admin).await,
        "ferrite_dns_queries_total",
        "qtype=\"TXT\"",
    );

    create(
        &certs,
        json!({"metadata": {"name": "wild"}, "spec": {
            "secretName": "wild-tls", "issuerRef": {"name": "dns01-ferrite", "kind": "ClusterIssuer"},
            "dnsNames": ["*.dns01.test", "dns01.test"], "privateKey": {"algorithm": "ECDSA"}}}),
    )
    .await;
    // While the order runs: the DNSRecord ferrite-certs writes, as ferrite-dns sees it.
    let mut most_targets = 0;
    let mut record_names = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(list) = records.list(&ListParams::default()).await {
            for r in list.items {
                most_targets = most_targets.max(r.spec.targets.len());
                if !record_names.contains(&r.spec.name) {
                    record_names.push(r.spec.name.clone());
                }
            }
        }
        let c = certs.get("wild").await.unwrap();
        if cert_condition(&c, "Ready").is_some_and(|(s, _, _)| s == "True") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wild not Ready in 90 s: {:?}\n{}\n{}",
            c.status,
            ctl.log_tail(40),
            pebble.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let wild = wait_ready_cert(&certs, "wild", &ctl, &pebble).await;
    assert_eq!(
        record_names
            .iter()
            .map(|n| n.trim_end_matches('.'))
            .collect::<Vec<_>>(),
        ["_acme-challenge.dns01.test"],
        "one DNSRecord for the apex and its wildcard"
    );
    assert_eq!(most_targets, 2, "the DNSRecord held both challenge values");
    // Pebble asks once per authorization; the self-check asked ferrite-dns too.
    let txt_queries = counter_sum(
        &metrics(dns_admin).await,
        "ferrite_dns_queries_total",
        "qtype=\"TXT\"",
    ) - txt_before;
    assert!(
        txt_queries >= 4.0,
        "TXT queries at ferrite-dns: {txt_queries} (Pebble's 2 and the self-check's)"
    );
    let st = wild.status.clone().unwrap();
    assert_eq!(st.revision, Some(1));
    assert!(st.order.is_none(), "no order left in the status: {:?}", st.order);

    let s = secrets.get("wild-tls").await.unwrap();
    verify_secret(
        tmp.path(),
        "wild",
        &s,
        &pebble.root_pem().unwrap(),
        &["*.dns01.test", "dns01.test"],
    );

    eventually(
        Duration::from_secs(15),
        "DNSRecords and Challenges removed",
        || async {
            let r = records.list(&ListParams::default()).await.ok()?;
            let c = challenges.list(&ListParams::default()).await.ok()?;
            (r.items.is_empty() && c.items.is_empty()).then_some(())
        },
    )
    .await;
    wait_no_txt(dns, "_acme-challenge.dns01.test.").await;
    assert!(dns_proc.is_running(), "ferrite-dns still runs");

    // Tidy for the other scenario's controller: no issuer left pointing at this Pebble.
    cluster_issuers
        .delete("dns01-ferrite", &Default::default())
        .await
        .unwrap();
    drop(ctl);
    drop(dns_proc);
}

/// A wildcard through `dns01.rfc2136` into a test named (update-policy for one TSIG key, the secret in
/// the cluster-resource namespace); the TXT values are removed afterwards. A wrong secret: BADSIG.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_rfc2136_into_named_wildcard_and_wrong_key() {
    let _serial = SERIAL.lock().await;
    let named = tokio::task::spawn_blocking(|| {
        Named::start(NamedConfig {
            keys: vec![NamedKey::new(KEY, "hmac-sha256", SECRET)],
            zones: vec![NamedZone::primary("rfc.dns01.test", "").update_policy(&format!(
                "grant {KEY} name _acme-challenge.rfc.dns01.test. TXT; \
                 grant {KEY} name _acme-challenge.bad.rfc.dns01.test. TXT;"
            ))],
            ..NamedConfig::default()
        })
    })
    .await
    .unwrap()
    .expect("named starts (apt-get install -y bind9 bind9-dnsutils)");
    let ns_addr = named.addr();
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace("certs-rfc2136").await;
    let kubeconfig = chart_account(kb, "certs", "ferrite-certs").await;
    let pebble = start_pebble(ns_addr).await;
    let (ctl, _) = start_certs(&kubeconfig, "rfc2136", ns_addr).await;
    let tmp = tempfile::tempdir().unwrap();

    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let challenges: Api<Challenge> = Api::namespaced(client.clone(), &ns);
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let cluster_secrets: Api<Secret> = Api::namespaced(client.clone(), CLUSTER_NS);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for (name, secret) in [
        ("dns01-tsig", SECRET),
        ("dns01-tsig-wrong", &b"not the secret of this key, 32+ bytes"[..]),
    ] {
        // As `kubectl create secret generic --from-literal=secret=<tsig-keygen's base64>` makes it.
        create(
            &cluster_secrets,
            json!({"metadata": {"name": name}, "stringData": {"secret": b64(secret)}}),
        )
        .await;
    }
    let issuer = |name: &str, secret: &str| {
        json!({"metadata": {"name": name}, "spec": {"acme": {
            "server": pebble.directory_url(), "privateKeySecretRef": {"name": format!("{name}-account")},
            "caBundle": b64(pebble.ca_pem().as_bytes()),
            "solvers": [{"dns01": {"rfc2136": {
                "nameserver": ns_addr.to_string(), "tsigKeyName": KEY, "tsigAlgorithm": "HMACSHA256",
                "tsigSecretSecretRef": {"name": secret, "key": "secret"}}}}]}}})
    };
    create(&cluster_issuers, issuer("dns01-rfc2136", "dns01-tsig")).await;
    create(
        &cluster_issuers,
        issuer("dns01-rfc2136-wrong", "dns01-tsig-wrong"),
    )
    .await;
    wait_cluster_issuer_registered(&cluster_issuers, "dns01-rfc2136").await;
    wait_cluster_issuer_registered(&cluster_issuers, "dns01-rfc2136-wrong").await;

    create(
        &certs,
        json!({"metadata": {"name": "rfc-wild"}, "spec": {
            "secretName": "rfc-wild-tls", "issuerRef": {"name": "dns01-rfc2136", "kind": "ClusterIssuer"},
            "dnsNames": ["*.rfc.dns01.test", "rfc.dns01.test"]}}),
    )
    .await;
    let wild = wait_ready_cert(&certs, "rfc-wild", &ctl, &pebble).await;
    assert_eq!(wild.status.clone().unwrap().revision, Some(1));
    let s = secrets.get("rfc-wild-tls").await.unwrap();
    verify_secret(
        tmp.path(),
        "rfc-wild",
        &s,
        &pebble.root_pem().unwrap(),
        &["*.rfc.dns01.test", "rfc.dns01.test"],
    );
    // Both values removed from named (the journal applied: dig asks named itself).
    wait_no_txt(ns_addr, "_acme-challenge.rfc.dns01.test.").await;
    eventually(Duration::from_secs(15), "Challenges removed", || async {
        let c = challenges.list(&ListParams::default()).await.ok()?;
        c.items.is_empty().then_some(())
    })
    .await;

    // The wrong secret: named refuses the UPDATE (BADSIG); the order fails before the CA is asked.
    let orders = |p: &Pebble| p.log_tail(1_000_000).matches("POST /chalZ").count();
    let challenges_posted = orders(&pebble);
    assert!(
        challenges_posted >= 2,
        "Pebble's log counts the challenges posted"
    );
    create(
        &certs,
        json!({"metadata": {"name": "rfc-bad"}, "spec": {
            "secretName": "rfc-bad-tls", "issuerRef": {"name": "dns01-rfc2136-wrong", "kind": "ClusterIssuer"},
            "dnsNames": ["bad.rfc.dns01.test"]}}),
    )
    .await;
    let failing = eventually(
        Duration::from_secs(30),
        "rfc-bad Issuing=False Failed",
        || async {
            let c = certs.get("rfc-bad").await.ok()?;
            cert_condition(&c, "Issuing")
                .filter(|(s, r, _)| s == "False" && r == "Failed")
                .map(|_| c)
        },
    )
    .await;
    let (_, _, msg) = cert_condition(&failing, "Issuing").unwrap();
    assert!(
        msg.contains("BADSIG"),
        "the message names the TSIG failure: {msg}"
    );
    assert!(msg.contains("SolverFailed"), "{msg}");
    assert!(
        failing.status.as_ref().unwrap().failed_issuance_attempts >= Some(1),
        "{:?}",
        failing.status
    );
    assert_eq!(cert_condition(&failing, "Ready").unwrap().1, "DoesNotExist");
    let (type_, note) = wait_event(kb, &ns, "rfc-bad", "Failed").await;
    assert_eq!(type_, "Warning", "{note}");
    assert!(note.contains("BADSIG"), "{note}");
    assert!(
        secrets.get_opt("rfc-bad-tls").await.unwrap().is_none(),
        "no Secret"
    );
    assert_eq!(
        dig_txt(ns_addr, "_acme-challenge.bad.rfc.dns01.test.").1,
        Vec::<String>::new(),
        "nothing written with the wrong key"
    );
    assert_eq!(
        orders(&pebble),
        challenges_posted,
        "the CA is never asked to validate"
    );
    drop(ctl);
}
