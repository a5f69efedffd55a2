//! Box test of `ferrite-certs controller` issuing through ACME: a real Pebble + pebble-challtestsrv
//! (strict, its 5% nonce rejection kept) on 127.0.0.1, the controller binary run as the chart's
//! ServiceAccount with its HTTP-01 listener on the port Pebble's VA connects to, and `/usr/bin/openssl`
//! verifying the issued chain against Pebble's root.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use common::*;
use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer};
use ferrite_e2e::pebble::{Pebble, PebbleOptions};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_issuance_end_to_end() {
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
