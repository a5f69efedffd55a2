//! Box test of `ferrite-certs controller` issuing through ACME: a real Pebble + pebble-challtestsrv
//! (strict, its 5% nonce rejection kept) on 127.0.0.1, the controller binary run as the chart's
//! ServiceAccount with its HTTP-01 listener on the port Pebble's VA connects to, and `/usr/bin/openssl`
//! verifying the issued chain against Pebble's root.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use ferrite_e2e::{KubeBox, Supervised};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::json;

const CLUSTER_NS: &str = "ferrite-system";

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

struct Controller {
    proc: Supervised,
    admin: SocketAddr,
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrite-certs"))
}

async fn start_controller(kubeconfig: &Path, n: u32, http01_port: u16) -> Controller {
    let admin = format!("127.0.0.1:{}", ferrite_e2e::process::free_port().unwrap());
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        "--lease-name=ferrite-certs-controller".into(),
        format!("--lease-namespace={CLUSTER_NS}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        format!("--cluster-resource-namespace={CLUSTER_NS}"),
        "--backoff-base=2s".into(),
        "--backoff-max=10s".into(),
        // Pebble's VA connects to 127.0.0.1:<its HTTP port> for every name: our listener is there.
        format!("--http01-listen=127.0.0.1:{http01_port}"),
        // The temporary Ingress's Endpoints (never dialled: the box has no ingress controller, and
        // the API server refuses loopback endpoints) point at a documentation address.
        "--pod-ip=192.0.2.10".into(),
    ];
    // Kept after the test (the box's directory is not), for reading after a failure.
    let log =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrite-certs-acme-controller-{n}.log"));
    let mut proc = Supervised::spawn(
        "ferrite-certs controller",
        &bin(),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_certs=debug")],
        &log,
    )
    .expect("controller starts");
    let addr: SocketAddr = admin.parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(proc.is_running(), "controller exited:\n{}", proc.log_tail(30));
        if let Ok((200, _)) = ferrite_e2e::http_get(addr, "/readyz").await {
            return Controller { proc, admin: addr };
        }
        assert!(
            Instant::now() < deadline,
            "controller not ready in 30 s:\n{}",
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chart's RBAC applied to the box; returns the ServiceAccount's kubeconfig.
async fn chart_account(kb: &KubeBox) -> PathBuf {
    let _ = kb.kubectl().args(["create", "namespace", CLUSTER_NS]).output();
    let chart = ferrite_e2e::demo::repo_root().join("charts/ferrite/charts/certs");
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
    let rendered = kb.dir.join("certs-acme-rbac.yaml");
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
    kb.service_account_kubeconfig(CLUSTER_NS, "ferrite-certs")
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

async fn wait_cert(api: &Api<Certificate>, name: &str, status: &str, reason: &str) -> Certificate {
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

fn issuer_ready(status: Option<&ferrite_api::certs::IssuerStatus>) -> Option<Cond> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_issuer(api: &Api<Issuer>, name: &str, status: &str, reason: &str) -> Cond {
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

async fn wait_cluster_issuer(api: &Api<ClusterIssuer>, name: &str, status: &str, reason: &str) -> Cond {
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

async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(kb.client().await, ns);
    eventually(
        Duration::from_secs(15),
        &format!("Event {reason} on {name}"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = e.regarding.as_ref()?.name.as_deref()? == name;
                (on && e.reason.as_deref() == Some(reason)).then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await
}

fn revision(c: &Certificate) -> i64 {
    c.status.as_ref().and_then(|s| s.revision).unwrap_or(0)
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

/// Writes the Secret's keys into `dir` as files; returns (tls.crt, tls.key, ca.crt) paths.
fn files(dir: &Path, tag: &str, s: &Secret) -> (String, String, String) {
    let p = |k: &str| dir.join(format!("{tag}-{k}")).display().to_string();
    std::fs::write(p("tls.crt"), data(s, "tls.crt")).unwrap();
    std::fs::write(p("tls.key"), data(s, "tls.key")).unwrap();
    if let Some(ca) = s.data.as_ref().and_then(|d| d.get("ca.crt")) {
        std::fs::write(p("ca.crt"), &ca.0).unwrap();
    }
    (p("tls.crt"), p("tls.key"), p("ca.crt"))
}

/// openssl: the certificate is valid for another `secs`, and the key is the certificate's.
fn check_pair(crt: &str, key: &str, secs: u64) {
    let (ok, out) = openssl(&["x509", "-in", crt, "-noout", "-checkend", &secs.to_string()]);
    assert!(ok, "openssl x509 -checkend {secs}: {out}");
    let (ok1, cert_pub) = openssl(&["x509", "-in", crt, "-noout", "-pubkey"]);
    let (ok2, key_pub) = openssl(&["pkey", "-in", key, "-pubout"]);
    assert!(ok1 && ok2, "openssl pubkey: {cert_pub} {key_pub}");
    assert_eq!(cert_pub, key_pub, "tls.key is the key of tls.crt");
}

fn sans(crt: &str) -> String {
    let (ok, out) = openssl(&["x509", "-in", crt, "-noout", "-ext", "subjectAltName"]);
    assert!(ok, "openssl x509 -ext: {out}");
    out
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_issuance_end_to_end() {
    let pebble = tokio::task::spawn_blocking(|| Pebble::start(PebbleOptions::default()))
        .await
        .unwrap()
        .expect("Pebble starts (apt-get install -y pebble)");
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace("certs-acme").await;
    let kubeconfig = chart_account(kb).await;
    let mut ctl = start_controller(&kubeconfig, 1, pebble.http_port()).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let issuers: Api<Issuer> = Api::namespaced(client.clone(), &ns);
    let cluster_secrets: Api<Secret> = Api::namespaced(client.clone(), CLUSTER_NS);
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(pebble.ca_pem().as_bytes());

    // The account: registered once, kept in its Secret (managed), its URI in the status.
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "acme-pebble"}, "spec": {"acme": {
            "server": pebble.directory_url(), "email": "ops@acme.test",
            "privateKeySecretRef": {"name": "acme-pebble-account"}, "caBundle": ca_bundle,
            "skipSelfCheck": true,
            "solvers": [{"http01": {"ingress": {"ingressClassName": "other"}}}]}}}),
    )
    .await;
    let (_, _, msg) =
        wait_cluster_issuer(&cluster_issuers, "acme-pebble", "True", "ACMEAccountRegistered").await;
    assert!(!msg.is_empty());
    let ci = cluster_issuers.get("acme-pebble").await.unwrap();
    let uri = ci
        .status
        .and_then(|s| s.acme)
        .and_then(|a| a.uri)
        .unwrap_or_default();
    assert!(uri.starts_with("https://"), "account URI in status: {uri:?}");
    let account = cluster_secrets
        .get("acme-pebble-account")
        .await
        .expect("account Secret");
    assert_eq!(
        account
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("certs.ferrite.dev/managed"))
            .map(String::as_str),
        Some("true")
    );
    assert!(!data(&account, "acme-account.json").is_empty());

    // A Certificate for two names: the chain verifies against Pebble's root.
    create(
        &certs,
        json!({"metadata": {"name": "shop"}, "spec": {
            "secretName": "shop-tls", "issuerRef": {"name": "acme-pebble", "kind": "ClusterIssuer"},
            "dnsNames": ["shop.acme.test", "www.shop.acme.test"], "privateKey": {"algorithm": "ECDSA"}}}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let shop = loop {
        let c = certs.get("shop").await.unwrap();
        if cert_condition(&c, "Ready").is_some_and(|(s, _, _)| s == "True") {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "shop not Ready in 90 s: {:?}\n{}\n{}",
            c.status,
            ctl.proc.log_tail(40),
            pebble.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let st = shop.status.clone().unwrap();
    assert_eq!(st.revision, Some(1));
    assert!(st.order.is_none(), "no order left in the status: {:?}", st.order);
    assert!(st.next_private_key_secret_name.is_none());
    let s = secrets.get("shop-tls").await.unwrap();
    let chain = String::from_utf8(data(&s, "tls.crt").to_vec()).unwrap();
    let blocks = pem_blocks(&chain);
    assert!(
        blocks.len() >= 2,
        "tls.crt holds the leaf and its chain: {} blocks",
        blocks.len()
    );
    let leaf = dir.join("leaf.pem");
    let inter = dir.join("chain.pem");
    let root = dir.join("root.pem");
    std::fs::write(&leaf, &blocks[0]).unwrap();
    std::fs::write(&inter, blocks[1..].concat()).unwrap();
    std::fs::write(&root, pebble.root_pem().unwrap()).unwrap();
    let (crt, key, _) = files(dir, "shop", &s);
    check_pair(&crt, &key, 3600);
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        inter.to_str().unwrap(),
        leaf.to_str().unwrap(),
    ]);
    assert!(ok, "openssl verify against Pebble's root: {out}");
    let s = sans(&crt);
    assert!(
        s.contains("DNS:shop.acme.test") && s.contains("DNS:www.shop.acme.test"),
        "{s}"
    );
    assert!(
        secrets.get_opt("shop-next-key").await.unwrap().is_none(),
        "the pending key Secret is removed"
    );
    wait_event(kb, &ns, "shop", "Issued").await;
    let m = metrics(ctl.admin).await;
    assert!(
        m.contains("ferrite_certs_acme_requests_total{"),
        "ACME request counts:\n{m}"
    );
    assert!(
        m.contains("ferrite_certs_issuances_total{issuer_type=\"acme\",result=\"success\"} 1"),
        "{m}"
    );

    // A controller killed mid-order resumes the same order with the same key. The order is held
    // at the self-check (nothing answers on port 80), the controller stops, the issuer is told to
    // skip the self-check, and a new controller finishes that order: Pebble sees no new order.
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "acme-slow"}, "spec": {"acme": {
            "server": pebble.directory_url(), "privateKeySecretRef": {"name": "acme-slow-account"},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(pebble.ca_pem().as_bytes()),
            "solvers": [{"http01": {"ingress": {"ingressClassName": "other"}}}]}}}),
    )
    .await;
    wait_cluster_issuer(&cluster_issuers, "acme-slow", "True", "ACMEAccountRegistered").await;
    create(
        &certs,
        json!({"metadata": {"name": "resume"}, "spec": {
            "secretName": "resume-tls", "issuerRef": {"name": "acme-slow", "kind": "ClusterIssuer"},
            "dnsNames": ["resume.acme.test"], "privateKey": {"algorithm": "ECDSA"}}}),
    )
    .await;
    let (order_url, pending) = eventually(Duration::from_secs(30), "resume's order recorded", || async {
        let st = certs.get("resume").await.ok()?.status?;
        let issuing = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Issuing" && c.status == "True");
        let url = st.order.filter(|_| issuing)?.url;
        let pending = secrets
            .get_opt(st.next_private_key_secret_name.as_deref()?)
            .await
            .ok()??;
        Some((url, pending))
    })
    .await;
    let orders = |p: &Pebble| p.log_tail(1_000_000).matches("POST /order-plz").count();
    let orders_before = orders(&pebble);
    assert!(orders_before >= 2, "Pebble's log counts the orders placed");
    ctl.proc.stop(Duration::from_secs(10));
    let mut slow = cluster_issuers.get("acme-slow").await.unwrap();
    slow.spec.config.acme.as_mut().unwrap().skip_self_check = true;
    slow.metadata.managed_fields = None;
    cluster_issuers
        .replace("acme-slow", &PostParams::default(), &slow)
        .await
        .unwrap();
    let _ctl2 = start_controller(&kubeconfig, 2, pebble.http_port()).await;
    let resumed = wait_cert(&certs, "resume", "True", "Ready").await;
    assert_eq!(revision(&resumed), 1);
    assert_eq!(
        orders(&pebble),
        orders_before,
        "no new order after the restart (was {order_url})"
    );
    let s = secrets.get("resume-tls").await.unwrap();
    let (crt, key, _) = files(dir, "resume", &s);
    check_pair(&crt, &key, 3600);
    let pending_key = dir.join("pending.key");
    std::fs::write(&pending_key, data(&pending, "tls.key")).unwrap();
    let (_, a) = openssl(&["pkey", "-in", &key, "-pubout"]);
    let (_, b) = openssl(&["pkey", "-in", pending_key.to_str().unwrap(), "-pubout"]);
    assert_eq!(a, b, "finalized with the key kept before the restart");

    // A failing issuance (no solver for the name): failedIssuanceAttempts counts up with the
    // backoff (2s, 4s here), Issuing=False Failed, a Warning Event, no Secret.
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "acme-nosolver"}, "spec": {"acme": {
            "server": pebble.directory_url(), "privateKeySecretRef": {"name": "acme-nosolver-account"},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(pebble.ca_pem().as_bytes()),
            "skipSelfCheck": true,
            "solvers": [{"selector": {"dnsZones": ["elsewhere.test"]}, "http01": {"ingress": {}}}]}}}),
    )
    .await;
    wait_cluster_issuer(&cluster_issuers, "acme-nosolver", "True", "ACMEAccountRegistered").await;
    create(
        &certs,
        json!({"metadata": {"name": "unsolvable"}, "spec": {
            "secretName": "unsolvable-tls", "issuerRef": {"name": "acme-nosolver", "kind": "ClusterIssuer"},
            "dnsNames": ["unsolvable.acme.test"]}}),
    )
    .await;
    let failing = eventually(Duration::from_secs(30), "two failed attempts", || async {
        let c = certs.get("unsolvable").await.ok()?;
        (c.status.as_ref()?.failed_issuance_attempts? >= 2).then_some(c)
    })
    .await;
    let st = failing.status.clone().unwrap();
    let (status, reason, msg) = cert_condition(&failing, "Issuing").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Failed"), "{msg}");
    assert!(msg.contains("SolverFailed"), "{msg}");
    let (last, next) = (st.last_failure_time.unwrap().0, st.next_attempt_time.unwrap().0);
    assert!(next > last, "nextAttemptTime after lastFailureTime");
    assert_eq!(cert_condition(&failing, "Ready").unwrap().1, "DoesNotExist");
    wait_event(kb, &ns, "unsolvable", "Failed").await;
    assert!(secrets.get_opt("unsolvable-tls").await.unwrap().is_none());

    // An unreachable ACME server: the Issuer says so, with a bounded message, and a Warning Event;
    // its Certificate waits and nothing is ordered.
    create(
        &issuers,
        json!({"metadata": {"name": "down"}, "spec": {"acme": {
            "server": "https://127.0.0.1:1/dir", "privateKeySecretRef": {"name": "down-account"},
            "solvers": [{"http01": {"ingress": {}}}]}}}),
    )
    .await;
    let (_, _, msg) = wait_issuer(&issuers, "down", "False", "ErrRegisterACMEAccount").await;
    assert!(msg.len() <= 600, "bounded message: {msg}");
    wait_event(kb, &ns, "down", "ErrRegisterACMEAccount").await;
    assert!(secrets.get_opt("down-account").await.unwrap().is_none());
    create(
        &certs,
        json!({"metadata": {"name": "waits"}, "spec": {
            "secretName": "waits-tls", "issuerRef": {"name": "down"}, "dnsNames": ["w.acme.test"]}}),
    )
    .await;
    wait_cert(&certs, "waits", "False", "IssuerNotReady").await;
    assert!(secrets.get_opt("waits-tls").await.unwrap().is_none());
}

async fn metrics(admin: SocketAddr) -> String {
    match ferrite_e2e::http_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("/metrics: {other:?}"),
    }
}
