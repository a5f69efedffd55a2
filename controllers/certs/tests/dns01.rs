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

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use ferrite_api::certs::{Certificate, Challenge, ClusterIssuer};
use ferrite_api::dns::DNSRecord;
use ferrite_e2e::Supervised;
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use ferrite_e2e::pebble::{Pebble, PebbleOptions, free_tcp_udp_port};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

const CLUSTER_NS: &str = "ferrite-system";
const KEY: &str = "ferrite-certs-dns01";
const SECRET: &[u8] = b"ferrite-certs dns01 box test secret, 32+ bytes";

/// The two scenarios share the box; each runs its own controllers, one scenario at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        &log_path("ferrite-certs-dns01-dns.log"),
    )
    .expect("ferrite-dns starts");
    let admin: SocketAddr = admin.parse().unwrap();
    wait_ready(&mut proc, admin).await;
    (proc, admin)
}

/// openssl: the Secret's chain verifies against Pebble's root, its key is the leaf's, and the leaf
/// names exactly `names` (as `DNS:` entries).
fn verify_secret(dir: &Path, tag: &str, s: &Secret, root_pem: &str, names: &[&str]) {
    let leaf = verify_chain(dir, tag, s, root_pem);
    let key = dir.join(format!("{tag}-tls.key")).display().to_string();
    std::fs::write(&key, data(s, "tls.key")).unwrap();
    check_key(&leaf, &key, "the leaf");
    let out = sans(&leaf);
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

/// `ferrite-certs controller` as the chart's ServiceAccount; the DNS self-check resolves through
/// `nameserver`, with `more` flags (how the TXT is checked).
async fn start_certs(
    kubeconfig: &Path,
    tag: &str,
    nameserver: SocketAddr,
    more: &[String],
) -> (Supervised, SocketAddr) {
    let mut extra = vec![
        format!("--http01-listen={}", free_addr()),
        format!("--self-check-nameservers={nameserver}"),
        "--self-check-timeout=20s".into(),
        "--rfc2136-timeout=3s".into(),
    ];
    extra.extend_from_slice(more);
    let lease = format!("ferrite-certs-{tag}");
    let log = format!("ferrite-certs-dns01-certs-{tag}.log");
    let ctl = start_controller(kubeconfig, &lease, &log, &extra).await;
    (ctl.proc, ctl.admin)
}

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

async fn start_pebble_resolving(dns_server: SocketAddr) -> Pebble {
    start_pebble(PebbleOptions {
        dns_server: Some(dns_server),
        ..Default::default()
    })
    .await
}

/// A wildcard and its apex through `dns01.ferriteDNS`: ferrite-dns serves the embedded zone Pebble
/// resolves through; the DNSRecord (one, with both values) and the Challenges are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_through_ferrite_dns_wildcard() {
    let _serial = SERIAL.lock().await;
    let (kb, client, ns) = setup("certs-dns01").await;
    let certs_kubeconfig = chart_account(kb, "certs", "ferrite-certs").await;
    let dns_kubeconfig = chart_account(kb, "dns", "ferrite-dns").await;
    let dns: SocketAddr = format!("127.0.0.1:{}", free_tcp_udp_port().unwrap())
        .parse()
        .unwrap();
    let (mut dns_proc, dns_admin) = start_dns(&dns_kubeconfig, dns).await;

    let zones: Api<ferrite_api::dns::DNSZone> = Api::all(client.clone());
    create(
        &zones,
        // Its NS ns1.dns01.test. with glue 127.0.0.1: the self-check finds ferrite-dns as the zone's
        // authoritative server.
        json!({"metadata": {"name": "certs-dns01"}, "spec": {"zone": "dns01.test.", "provider": {"embedded": {
            "nameserverAddresses": {"ns1.dns01.test": ["127.0.0.1"]}}}}}),
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

    let pebble = start_pebble_resolving(dns).await;
    assert_eq!(pebble.resolver(), dns);
    // The self-check walks to dns01.test.'s SOA through ferrite-dns, finds its NS (ns1.dns01.test.,
    // 127.0.0.1) and asks it on ferrite-dns's port.
    let (ctl, _) = start_certs(
        &certs_kubeconfig,
        "ferrite-dns",
        dns,
        &[format!("--self-check-authoritative-port={}", dns.port())],
    )
    .await;
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
    wait_cluster_issuer(&cluster_issuers, "dns01-ferrite", "True", "ACMEAccountRegistered").await;
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
    let wild = wait_issued(&certs, "wild", &ctl, &pebble).await;
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
    let (kb, client, ns) = setup("certs-rfc2136").await;
    let kubeconfig = chart_account(kb, "certs", "ferrite-certs").await;
    let pebble = start_pebble_resolving(ns_addr).await;
    // The self-check finds the zone's authoritative server (NS ns1.rfc.dns01.test., A 127.0.0.1)
    // through named and asks it on named's port.
    let (ctl, _) = start_certs(
        &kubeconfig,
        "rfc2136",
        ns_addr,
        &[format!("--self-check-authoritative-port={}", ns_addr.port())],
    )
    .await;
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
    wait_cluster_issuer(&cluster_issuers, "dns01-rfc2136", "True", "ACMEAccountRegistered").await;
    wait_cluster_issuer(
        &cluster_issuers,
        "dns01-rfc2136-wrong",
        "True",
        "ACMEAccountRegistered",
    )
    .await;

    create(
        &certs,
        json!({"metadata": {"name": "rfc-wild"}, "spec": {
            "secretName": "rfc-wild-tls", "issuerRef": {"name": "dns01-rfc2136", "kind": "ClusterIssuer"},
            "dnsNames": ["*.rfc.dns01.test", "rfc.dns01.test"]}}),
    )
    .await;
    let wild = wait_issued(&certs, "rfc-wild", &ctl, &pebble).await;
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
    let (type_, note) = wait_event_typed(kb, &ns, "rfc-bad", "Failed").await;
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
