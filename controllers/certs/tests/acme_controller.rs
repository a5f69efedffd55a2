//! Box test of `ferrite-certs controller` issuing through ACME: a real Pebble + pebble-challtestsrv
//! (strict, its 5% nonce rejection kept) on 127.0.0.1, the controller binary run as the chart's
//! ServiceAccount with its HTTP-01 listener on the port Pebble's VA connects to, and `/usr/bin/openssl`
//! verifying the issued chain against Pebble's root.
//!
//! `acme_lifecycle` runs two controllers on one lease behind a small TCP proxy the test puts on Pebble's
//! VA port (forwarding to the first replica's HTTP-01 listener that accepts, and able to hold every
//! connection, so orders stop at the self-check): the leader killed mid-order, a dnsNames edit, a
//! Certificate deleted mid-order and recreated, and a restart with everything Ready.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::ResourceExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The controller (the `n`th started), its HTTP-01 listener on `http01_port`.
async fn start(kubeconfig: &Path, n: u32, http01_port: u16) -> Controller {
    let log = format!("ferrite-certs-acme-controller-{n}.log");
    let extra = [
        // Pebble's VA connects to 127.0.0.1:<its HTTP port> for every name: our listener is there.
        format!("--http01-listen=127.0.0.1:{http01_port}"),
        // The temporary Ingress's Endpoints (never dialled: the box has no ingress controller, and
        // the API server refuses loopback endpoints) point at a documentation address.
        "--pod-ip=192.0.2.10".into(),
    ];
    start_controller(kubeconfig, "ferrite-certs-controller", &log, &extra).await
}

/// The two test functions share the box and the lease: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_issuance_end_to_end() {
    let _serial = SERIAL.lock().await;
    let pebble = start_pebble(PebbleOptions::default()).await;
    let (kb, client, ns) = setup("certs-acme").await;
    let kubeconfig = certs_account(kb).await;
    let mut ctl = start(&kubeconfig, 1, pebble.http_port()).await;
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
    let shop = wait_issued(&certs, "shop", &ctl.proc, &pebble).await;
    let st = shop.status.clone().unwrap();
    assert_eq!(st.revision, Some(1));
    assert!(st.order.is_none(), "no order left in the status: {:?}", st.order);
    assert!(st.next_private_key_secret_name.is_none());
    let s = secrets.get("shop-tls").await.unwrap();
    verify_chain(dir, "shop", &s, &pebble.root_pem().unwrap());
    let (crt, key, _) = files(dir, "shop", &s);
    check_pair(&crt, &key, 3600);
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
    let _ctl2 = start(&kubeconfig, 2, pebble.http_port()).await;
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

/// Pebble's VA port (and the self-check's address): forwards each connection to the first of
/// `targets` that accepts; while `hold` is set, closes every connection at once (the self-check
/// fails and retries, so orders wait).
async fn va_proxy(listener: tokio::net::TcpListener, targets: Vec<SocketAddr>, hold: Arc<AtomicBool>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            return;
        };
        if hold.load(Ordering::SeqCst) {
            drop(inbound);
            continue;
        }
        let targets = targets.clone();
        tokio::spawn(async move {
            for t in targets {
                if let Ok(mut out) = tokio::net::TcpStream::connect(t).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    return;
                }
            }
        });
    }
}

/// A replica listening for HTTP-01 on `listen`, its self-check through the proxy at `va`.
async fn replica(kubeconfig: &Path, tag: &str, listen: SocketAddr, va: SocketAddr) -> Controller {
    let extra = [
        format!("--http01-listen={listen}"),
        format!("--self-check-http-address={va}"),
        "--self-check-timeout=40s".into(),
        "--pod-ip=192.0.2.10".into(),
        // Two replicas on one host: each its own lease identity (the default is the host name).
        format!("--identity=ferrite-certs-{tag}"),
    ];
    let log = format!("ferrite-certs-acme-lifecycle-{tag}.log");
    start_controller(kubeconfig, "ferrite-certs-controller", &log, &extra).await
}

fn is_leader(metrics: &str) -> bool {
    metrics
        .lines()
        .any(|l| l.starts_with("ferrite_certs_leader") && l.ends_with(" 1"))
}

fn condition_is(c: &Certificate, type_: &str, status: &str, reason: &str) -> bool {
    cert_condition(c, type_).is_some_and(|(s, r, _)| s == status && r == reason)
}

fn secret_rv(s: &Secret) -> String {
    s.metadata.resource_version.clone().unwrap_or_default()
}

/// Orders Pebble created (its log line per order; `POST /order-plz` also counts requests refused
/// with badNonce, which Pebble does for 5% of them).
fn pebble_orders(p: &Pebble) -> usize {
    p.log_tail(1_000_000).matches("Added order").count()
}

/// Accounts Pebble created.
fn pebble_accounts(p: &Pebble) -> usize {
    p.log_tail(1_000_000).matches("accounts in memory").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_lifecycle() {
    let _serial = SERIAL.lock().await;
    let pebble = start_pebble(PebbleOptions::default()).await;
    let (kb, client, ns) = setup("certs-life").await;
    let kubeconfig = certs_account(kb).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = pebble.root_pem().unwrap();

    let va: SocketAddr = format!("127.0.0.1:{}", pebble.http_port()).parse().unwrap();
    let listen_a: SocketAddr = free_addr().parse().unwrap();
    let listen_b: SocketAddr = free_addr().parse().unwrap();
    let hold = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(va).await.expect("VA port free");
    let proxy = tokio::spawn(va_proxy(listener, vec![listen_a, listen_b], hold.clone()));

    // Two replicas of one lease; a is the leader (started first, waited for).
    let mut a = replica(&kubeconfig, "a", listen_a, va).await;
    eventually(Duration::from_secs(30), "replica a leads", || async {
        is_leader(&metrics(a.admin).await).then_some(())
    })
    .await;
    let mut b = replica(&kubeconfig, "b", listen_b, va).await;
    assert!(!is_leader(&metrics(b.admin).await), "b follows while a leads");

    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(pebble.ca_pem().as_bytes());
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "acme-life"}, "spec": {"acme": {
            "server": pebble.directory_url(), "privateKeySecretRef": {"name": "acme-life-account"},
            "caBundle": ca_bundle,
            "solvers": [{"http01": {"ingress": {"ingressClassName": "other"}}}]}}}),
    )
    .await;
    wait_cluster_issuer(&cluster_issuers, "acme-life", "True", "ACMEAccountRegistered").await;
    let cert = |name: &str, names: &[&str]| {
        json!({"metadata": {"name": name}, "spec": {
            "secretName": format!("{name}-tls"), "issuerRef": {"name": "acme-life", "kind": "ClusterIssuer"},
            "dnsNames": names, "privateKey": {"algorithm": "ECDSA"}}})
    };

    // (c) Leader loss mid-flight: three orders placed by a and held at the self-check; a is killed;
    // b takes the lease, resumes the same orders (Pebble sees no new order) and issues all three.
    let names = ["life-1", "life-2", "life-3"];
    hold.store(true, Ordering::SeqCst);
    let orders_start = pebble_orders(&pebble);
    for n in names {
        create(&certs, cert(n, &[&format!("{n}.life.test")])).await;
    }
    for n in names {
        eventually(
            Duration::from_secs(30),
            &format!("{n}'s order recorded"),
            || async {
                let c = certs.get(n).await.ok()?;
                (condition_is(&c, "Issuing", "True", "DoesNotExist") && c.status?.order.is_some())
                    .then_some(())
            },
        )
        .await;
    }
    let orders_held = pebble_orders(&pebble);
    assert_eq!(
        orders_held,
        orders_start + names.len(),
        "one order per Certificate"
    );
    a.proc.crash();
    hold.store(false, Ordering::SeqCst);
    eventually(Duration::from_secs(30), "replica b took the lease", || async {
        is_leader(&metrics(b.admin).await).then_some(())
    })
    .await;
    for n in names {
        let c = wait_issued(&certs, n, &b.proc, &pebble).await;
        assert_eq!(revision(&c), 1, "{n}");
        let s = secrets.get(&format!("{n}-tls")).await.unwrap();
        let leaf = verify_chain(dir, n, &s, &root);
        assert!(sans(&leaf).contains(&format!("DNS:{n}.life.test")));
        assert!(secrets.get_opt(&format!("{n}-next-key")).await.unwrap().is_none());
    }
    assert_eq!(
        pebble_orders(&pebble),
        orders_held,
        "the new leader resumed the orders instead of placing new ones"
    );

    // (a) dnsNames edited on a Ready Certificate: Issuing=True RequestChanged while Ready stays True
    // and the Secret keeps the old certificate (held at the self-check); then the new certificate,
    // with the new names, replaces it in one write.
    hold.store(true, Ordering::SeqCst);
    let old = secrets.get("life-1-tls").await.unwrap();
    let (old_crt, _, _) = files(dir, "life-1-old", &old);
    let old_serial = serial(&old_crt);
    certs
        .patch(
            "life-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dnsNames": ["life-1.life.test", "new.life-1.life.test"]}})),
        )
        .await
        .unwrap();
    let c = eventually(
        Duration::from_secs(30),
        "life-1 Issuing RequestChanged",
        || async {
            let c = certs.get("life-1").await.ok()?;
            condition_is(&c, "Issuing", "True", "RequestChanged").then_some(c)
        },
    )
    .await;
    assert!(
        condition_is(&c, "Ready", "True", "Ready"),
        "still Ready while re-issuing: {:?}",
        c.status
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = secrets.get("life-1-tls").await.unwrap();
    assert_eq!(
        secret_rv(&during),
        secret_rv(&old),
        "the old Secret is served until the new one is written"
    );
    hold.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let new = loop {
        let s = secrets.get("life-1-tls").await.unwrap();
        let parsed =
            ferrite_certs::pki::parse_tls_secret(Some(data(&s, "tls.crt")), Some(data(&s, "tls.key")));
        assert!(parsed.is_ok(), "the Secret is always a valid pair: {parsed:?}");
        if data(&s, "tls.crt") != data(&old, "tls.crt") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "life-1 not re-issued: {}",
            b.proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let leaf = verify_chain(dir, "life-1-new", &new, &root);
    let sn = sans(&leaf);
    assert!(
        sn.contains("DNS:life-1.life.test") && sn.contains("DNS:new.life-1.life.test"),
        "{sn}"
    );
    assert_ne!(serial(&leaf), old_serial);
    let (new_crt, new_key, _) = files(dir, "life-1-new", &new);
    check_pair(&new_crt, &new_key, 3600);
    let c = eventually(Duration::from_secs(15), "life-1 Ready at revision 2", || async {
        let c = certs.get("life-1").await.ok()?;
        (revision(&c) == 2 && condition_is(&c, "Ready", "True", "Ready")).then_some(c)
    })
    .await;
    assert!(
        cert_condition(&c, "Issuing").is_none(),
        "Issuing removed: {:?}",
        c.status
    );
    let note = wait_event(kb, &ns, "life-1", "Issued").await;
    assert!(!note.is_empty());

    // (b) A Certificate deleted mid-order: its Challenge and the temporary Ingress, Service and
    // Endpoints go, so do its pending key and its metric series; no Secret is written for it even
    // when the CA could validate; created again, it is issued.
    hold.store(true, Ordering::SeqCst);
    create(&certs, cert("gone", &["gone.life.test"])).await;
    let challenges: Api<ferrite_api::certs::Challenge> = Api::namespaced(client.clone(), &ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let endpoints: Api<Endpoints> = Api::namespaced(client.clone(), &ns);
    let of_gone = ListParams::default().labels("certs.ferrite.dev/certificate-name=gone");
    let solver_objects = || async {
        let lp = ListParams::default();
        let count = |names: Vec<String>| names.iter().filter(|n| n.starts_with("ferrite-acme-")).count();
        (
            challenges.list(&of_gone).await.unwrap().items.len(),
            count(
                ingresses
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|o| o.name_any())
                    .collect(),
            ),
            count(
                services
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|o| o.name_any())
                    .collect(),
            ),
            count(
                endpoints
                    .list(&lp)
                    .await
                    .unwrap()
                    .items
                    .iter()
                    .map(|o| o.name_any())
                    .collect(),
            ),
        )
    };
    eventually(
        Duration::from_secs(30),
        "gone's Challenge and solver objects",
        || async {
            let o = solver_objects().await;
            let key = secrets.get_opt("gone-next-key").await.ok()??;
            (o == (1, 1, 1, 1)).then_some(key)
        },
    )
    .await;
    eventually(Duration::from_secs(15), "gone's metric series", || async {
        let m = metrics(b.admin).await;
        m.lines()
            .any(|l| l.starts_with("ferrite_certs_certificate_ready_status{") && l.contains("name=\"gone\""))
            .then_some(())
    })
    .await;
    certs.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(30),
        "gone's Challenge, Ingress, Service, Endpoints removed",
        || async { (solver_objects().await == (0, 0, 0, 0)).then_some(()) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "gone's pending key Secret removed",
        || async {
            secrets
                .get_opt("gone-next-key")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        "gone's metric series removed",
        || async {
            let m = metrics(b.admin).await;
            (!m.lines()
                .any(|l| l.starts_with("ferrite_certs_certificate_") && l.contains("name=\"gone\"")))
            .then_some(())
        },
    )
    .await;
    hold.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        secrets.get_opt("gone-tls").await.unwrap().is_none(),
        "no Secret written for a deleted Certificate: {}",
        b.proc.log_tail(30)
    );
    let orders_before_recreate = pebble_orders(&pebble);
    create(&certs, cert("gone", &["gone.life.test"])).await;
    let c = wait_issued(&certs, "gone", &b.proc, &pebble).await;
    assert_eq!(revision(&c), 1);
    let s = secrets.get("gone-tls").await.unwrap();
    verify_chain(dir, "gone", &s, &root);
    assert!(
        pebble_orders(&pebble) > orders_before_recreate,
        "a new order for the new Certificate"
    );
    // Deleting a Ready Certificate keeps its Secret (cert-manager's default; no ownerReference on it).
    certs.delete("gone", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(15), "gone deleted", || async {
        certs.get_opt("gone").await.ok()?.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = secrets.get("gone-tls").await.expect("the Secret is kept");
    assert!(
        kept.metadata.owner_references.is_none(),
        "{:?}",
        kept.metadata.owner_references
    );

    // (d) A restart with every Certificate Ready issues nothing: no order, no account, the same
    // revisions and Secret versions, no issuance counted by the new leader.
    let before: Vec<(String, i64, String)> = {
        let mut v = Vec::new();
        for n in names {
            let c = certs.get(n).await.unwrap();
            let s = secrets.get(&c.spec.secret_name).await.unwrap();
            v.push((n.to_string(), revision(&c), secret_rv(&s)));
        }
        v
    };
    let (orders, accounts) = (pebble_orders(&pebble), pebble_accounts(&pebble));
    b.proc.stop(Duration::from_secs(10));
    let c = replica(&kubeconfig, "c", listen_a, va).await;
    eventually(
        Duration::from_secs(30),
        "the restarted controller reconciled life-1..3",
        || async {
            let m = metrics(c.admin).await;
            names
                .iter()
                .all(|n| {
                    m.lines().any(|l| {
                        l.starts_with("ferrite_certs_certificate_ready_status{")
                            && l.contains(&format!("name=\"{n}\""))
                            && l.contains("condition=\"True\"")
                            && l.ends_with(" 1")
                    })
                })
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (n, rev, rv) in before {
        let cert = certs.get(&n).await.unwrap();
        let s = secrets.get(&cert.spec.secret_name).await.unwrap();
        assert_eq!(revision(&cert), rev, "{n}: not issued again after a restart");
        assert_eq!(secret_rv(&s), rv, "{n}: Secret not rewritten");
    }
    assert_eq!(pebble_orders(&pebble), orders, "no order after the restart");
    assert_eq!(
        pebble_accounts(&pebble),
        accounts,
        "the account is loaded, not registered again"
    );
    let m = metrics(c.admin).await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("ferrite_certs_issuances_total{") && !l.ends_with(" 0")),
        "the restarted controller issued nothing:\n{m}"
    );

    // Leave nothing for the other test's controller to reconcile.
    for n in names {
        certs.delete(n, &DeleteParams::default()).await.unwrap();
    }
    cluster_issuers
        .delete("acme-life", &DeleteParams::default())
        .await
        .unwrap();
    proxy.abort();
}
