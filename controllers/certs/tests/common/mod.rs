//! Shared by ferrite-certs's box test binaries (each says `mod common;`): the box of the binary with the
//! CRDs and a fresh namespace, the chart's RBAC and ServiceAccount kubeconfig, the `ferrite-certs
//! controller` process with the flags the tests run it with, waits for Ready conditions and Events, and
//! `/usr/bin/openssl` checks of what the controller writes.
// Not every binary uses every helper; a failed unwrap in a helper is a failed test.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer, IssuerStatus};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use ferrite_e2e::{KubeBox, Supervised};
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::{Api, Client};

/// Where the controller's lease and the ClusterIssuers' Secrets live.
pub const CLUSTER_NS: &str = "ferrite-system";

/// The box of this test binary (started on first use) with the CRDs applied, an admin client and a
/// fresh namespace named after `prefix`.
pub async fn setup(prefix: &str) -> (&'static KubeBox, Client, String) {
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace(prefix).await;
    (kb, client, ns)
}

/// Polls `f` every 100 ms until it returns Some; fails the test naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    ferrite_e2e::wait::poll(limit, Duration::from_millis(100), what, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A subchart's RBAC (`charts/ferrite/charts/<subchart>/templates/rbac.yaml`) applied to the box in
/// [`CLUSTER_NS`]; returns the kubeconfig of its ServiceAccount `account`.
pub async fn chart_account(kb: &KubeBox, subchart: &str, account: &str) -> PathBuf {
    ferrite_e2e::chart::service_account(kb, subchart, CLUSTER_NS, account, &[])
        .await
        .unwrap_or_else(|e| panic!("{subchart} chart's ServiceAccount {account}: {e:#}"))
}

/// ferrite-certs's chart RBAC; the kubeconfig of its ServiceAccount `ferrite-certs`.
pub async fn certs_account(kb: &KubeBox) -> PathBuf {
    chart_account(kb, "certs", "ferrite-certs").await
}

/// A log file kept after the test (the box's directory is not), for reading after a failure.
pub fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

/// `127.0.0.1:<a free port>`.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", ferrite_e2e::process::free_port().unwrap())
}

/// Waits for `/readyz` of a controller just spawned (30 s), failing with its log.
pub async fn wait_ready(proc: &mut Supervised, admin: SocketAddr) {
    ferrite_e2e::wait::ready(proc, admin, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A running `ferrite-certs controller` and its admin address.
pub struct Controller {
    pub proc: Supervised,
    pub admin: SocketAddr,
}

/// `ferrite-certs controller` as the ServiceAccount of `kubeconfig`, leader of lease `lease`, with
/// short lease and backoff timings and `extra` flags, logging to [`log_path`]`(log)`; waits for
/// `/readyz`.
pub async fn start_controller(kubeconfig: &Path, lease: &str, log: &str, extra: &[String]) -> Controller {
    let admin = free_addr();
    let mut args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--lease-name={lease}"),
        format!("--lease-namespace={CLUSTER_NS}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        format!("--cluster-resource-namespace={CLUSTER_NS}"),
        "--backoff-base=2s".into(),
        "--backoff-max=10s".into(),
    ];
    args.extend_from_slice(extra);
    let mut proc = Supervised::spawn(
        "ferrite-certs controller",
        &PathBuf::from(env!("CARGO_BIN_EXE_ferrite-certs")),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_certs=debug")],
        &log_path(log),
    )
    .expect("controller starts");
    let admin: SocketAddr = admin.parse().unwrap();
    wait_ready(&mut proc, admin).await;
    Controller { proc, admin }
}

/// Pebble and pebble-challtestsrv on 127.0.0.1.
pub async fn start_pebble(options: PebbleOptions) -> Pebble {
    tokio::task::spawn_blocking(move || Pebble::start(options))
        .await
        .unwrap()
        .expect("Pebble starts (apt-get install -y pebble)")
}

/// The admin server's `/metrics`.
pub async fn metrics(admin: SocketAddr) -> String {
    match ferrite_e2e::http_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("/metrics at {admin}: {other:?}"),
    }
}

/// Creates an object from JSON.
pub async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("valid object");
    api.create(&PostParams::default(), &obj).await.expect("created")
}

/// A condition's (status, reason, message).
pub type Cond = (String, String, String);

pub fn cert_condition(c: &Certificate, type_: &str) -> Option<Cond> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

pub fn revision(c: &Certificate) -> i64 {
    c.status.as_ref().and_then(|s| s.revision).unwrap_or(0)
}

/// Waits (30 s) until the Certificate's Ready condition is `status` with `reason`.
pub async fn wait_cert(api: &Api<Certificate>, name: &str, status: &str, reason: &str) -> Certificate {
    let mut last = None;
    let what = format!("Certificate {name} Ready={status} {reason}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(c) = api.get(name).await {
            let r = cert_condition(&c, "Ready");
            if r.as_ref().is_some_and(|(s, re, _)| s == status && re == reason) {
                return c;
            }
            last = r;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last Ready: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (90 s) until the Certificate is Ready=True, failing with the controller's and Pebble's logs.
pub async fn wait_issued(
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

fn issuer_ready(status: Option<&IssuerStatus>) -> Option<Cond> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits (30 s) until the Issuer's Ready condition is `status` with `reason`.
pub async fn wait_issuer(api: &Api<Issuer>, name: &str, status: &str, reason: &str) -> Cond {
    eventually(
        Duration::from_secs(30),
        &format!("Issuer {name} Ready={status} {reason}"),
        || async {
            let i = api.get(name).await.ok()?;
            issuer_ready(i.status.as_ref()).filter(|(s, r, _)| s == status && r == reason)
        },
    )
    .await
}

/// Waits (30 s) until the ClusterIssuer's Ready condition is `status` with `reason`.
pub async fn wait_cluster_issuer(api: &Api<ClusterIssuer>, name: &str, status: &str, reason: &str) -> Cond {
    eventually(
        Duration::from_secs(30),
        &format!("ClusterIssuer {name} Ready={status} {reason}"),
        || async {
            let i = api.get(name).await.ok()?;
            issuer_ready(i.status.as_ref()).filter(|(s, r, _)| s == status && r == reason)
        },
    )
    .await
}

/// Waits (15 s) for an Event `reason` about `name` in `ns`; returns its (type, note).
pub async fn wait_event_typed(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> (String, String) {
    let e = ferrite_e2e::wait::event(kb.client().await, ns, name, reason, Duration::from_secs(15))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (e.type_.unwrap_or_default(), e.note.unwrap_or_default())
}

/// Waits (15 s) for an Event `reason` about `name` in `ns`; returns its note.
pub async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> String {
    wait_event_typed(kb, ns, name, reason).await.1
}

/// The Secret's value of `key` (which must be there).
pub fn data<'a>(s: &'a Secret, key: &str) -> &'a [u8] {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .unwrap_or_else(|| panic!("Secret {} has no {key}", s.metadata.name.as_deref().unwrap_or("")))
}

/// Runs openssl with `args`; returns (success, stdout + stderr).
pub fn openssl(args: &[&str]) -> (bool, String) {
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

/// Writes the Secret's keys into `dir` as files; returns (tls.crt, tls.key, ca.crt) paths.
pub fn files(dir: &Path, tag: &str, s: &Secret) -> (String, String, String) {
    let p = |k: &str| dir.join(format!("{tag}-{k}")).display().to_string();
    std::fs::write(p("tls.crt"), data(s, "tls.crt")).unwrap();
    std::fs::write(p("tls.key"), data(s, "tls.key")).unwrap();
    if let Some(ca) = s.data.as_ref().and_then(|d| d.get("ca.crt")) {
        std::fs::write(p("ca.crt"), &ca.0).unwrap();
    }
    (p("tls.crt"), p("tls.key"), p("ca.crt"))
}

/// openssl: `key` is the key of the certificate `crt` (`what` names it in the failure).
pub fn check_key(crt: &str, key: &str, what: &str) {
    let (ok1, cert_pub) = openssl(&["x509", "-in", crt, "-noout", "-pubkey"]);
    let (ok2, key_pub) = openssl(&["pkey", "-in", key, "-pubout"]);
    assert!(ok1 && ok2, "openssl pubkey: {cert_pub} {key_pub}");
    assert_eq!(cert_pub, key_pub, "tls.key is the key of {what}");
}

/// openssl: the certificate is valid for another `secs`, and the key is the certificate's.
pub fn check_pair(crt: &str, key: &str, secs: u64) {
    let (ok, out) = openssl(&["x509", "-in", crt, "-noout", "-checkend", &secs.to_string()]);
    assert!(ok, "openssl x509 -checkend {secs}: {out}");
    check_key(crt, key, "tls.crt");
}

/// openssl: the certificate's subjectAltName extension, as printed.
pub fn sans(crt: &str) -> String {
    let (ok, out) = openssl(&["x509", "-in", crt, "-noout", "-ext", "subjectAltName"]);
    assert!(ok, "openssl x509 -ext: {out}");
    out
}

/// openssl: the certificate's serial, as printed.
pub fn serial(crt: &str) -> String {
    let (ok, out) = openssl(&["x509", "-in", crt, "-noout", "-serial"]);
    assert!(ok, "openssl x509 -serial: {out}");
    out.trim().to_string()
}

/// The PEM blocks of a chain, in order.
pub fn pem_blocks(pem: &str) -> Vec<String> {
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

/// openssl: the Secret's `tls.crt` holds a leaf and its chain, which verifies against Pebble's root
/// `root_pem`; the three are written into `dir` with `tag`. Returns the leaf's path.
pub fn verify_chain(dir: &Path, tag: &str, s: &Secret, root_pem: &str) -> String {
    let chain = String::from_utf8(data(s, "tls.crt").to_vec()).unwrap();
    let blocks = pem_blocks(&chain);
    assert!(
        blocks.len() >= 2,
        "tls.crt holds the leaf and its chain: {} blocks",
        blocks.len()
    );
    let p = |k: &str| dir.join(format!("{tag}-{k}")).display().to_string();
    let (leaf, inter, root) = (p("leaf.pem"), p("chain.pem"), p("root.pem"));
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&inter, blocks[1..].concat()).unwrap();
    std::fs::write(&root, root_pem).unwrap();
    let (ok, out) = openssl(&["verify", "-CAfile", &root, "-untrusted", &inter, &leaf]);
    assert!(ok, "openssl verify against Pebble's root: {out}");
    leaf
}
