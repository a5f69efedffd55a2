//! Box tests of `ferrite-certs controller`: a real kube-apiserver (the box), the controller process
//! run as the chart's ServiceAccount with the chart's RBAC, and `/usr/bin/openssl` checking what it
//! writes (not only our own parser).
//!
//! One test function: one controller (one leader) serves every step, so the steps share it and run
//! in order; each step uses its own object names.
// A test binary: a failed unwrap in a helper is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use ferrite_api::certs::{Certificate, ClusterIssuer, Issuer};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The controller (the `n`th started), with this test's lease and log.
async fn start(kubeconfig: &Path, n: u32) -> Controller {
    let log = format!("ferrite-certs-controller-{n}.log");
    // HTTP-01 is not used here; its listener stays on loopback (the default is 0.0.0.0:8089).
    start_controller(
        kubeconfig,
        "ferrite-certs-controller",
        &log,
        &[format!("--http01-listen={}", free_addr())],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_end_to_end() {
    let (kb, client, ns) = setup("certs").await;
    let kubeconfig = certs_account(kb).await;
    let mut ctl = start(&kubeconfig, 1).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let issuers: Api<Issuer> = Api::namespaced(client.clone(), &ns);
    let cluster_issuers: Api<ClusterIssuer> = Api::all(client.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let cluster_certs: Api<Certificate> = Api::namespaced(client.clone(), CLUSTER_NS);
    let cluster_secrets: Api<Secret> = Api::namespaced(client.clone(), CLUSTER_NS);

    // 1. selfSigned Issuer -> Certificate Ready -> a Secret openssl accepts.
    create(
        &issuers,
        json!({"metadata": {"name": "selfsigned"}, "spec": {"selfSigned": {}}}),
    )
    .await;
    wait_issuer(&issuers, "selfsigned", "True", "IsReady").await;
    create(
        &certs,
        json!({"metadata": {"name": "web"}, "spec": {
            "secretName": "web-tls", "issuerRef": {"name": "selfsigned"},
            "dnsNames": ["web.ctl.test", "www.ctl.test"], "ipAddresses": ["127.0.0.1"],
            "duration": "24h", "privateKey": {"algorithm": "ECDSA"},
            "secretTemplate": {"labels": {"team": "web"}, "annotations": {"note": "from-template"}}}}),
    )
    .await;
    let web = wait_cert(&certs, "web", "True", "Ready").await;
    assert_eq!(revision(&web), 1, "{:?}", web.status);
    let st = web.status.clone().unwrap();
    assert!(st.not_after.is_some() && st.renewal_time.is_some(), "{st:?}");
    let web_secret = secrets.get("web-tls").await.unwrap();
    assert_eq!(web_secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let labels = web_secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("certs.ferrite.dev/managed").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        labels
            .get("certs.ferrite.dev/certificate-name")
            .map(String::as_str),
        Some("web")
    );
    assert_eq!(labels.get("team").map(String::as_str), Some("web"));
    let ann = web_secret.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(ann.get("note").map(String::as_str), Some("from-template"));
    assert_eq!(
        ann.get("certs.ferrite.dev/issuer-name").map(String::as_str),
        Some("selfsigned")
    );
    assert_eq!(
        ann.get("certs.ferrite.dev/issuer-kind").map(String::as_str),
        Some("Issuer")
    );
    let (crt, key, _) = files(dir, "web", &web_secret);
    check_pair(&crt, &key, 23 * 3600);
    let (ok, _) = openssl(&[
        "x509",
        "-in",
        &crt,
        "-noout",
        "-checkend",
        &(25 * 3600).to_string(),
    ]);
    assert!(!ok, "a 24h certificate must not be valid for 25h");
    let s = sans(&crt);
    assert!(
        s.contains("DNS:web.ctl.test")
            && s.contains("DNS:www.ctl.test")
            && s.contains("IP Address:127.0.0.1"),
        "{s}"
    );
    wait_event(kb, &ns, "web", "Issued").await;
    let m = metrics(ctl.admin).await;
    assert!(
        m.lines().any(
            |l| l.starts_with("ferrite_certs_certificate_expiration_timestamp_seconds{")
                && l.contains("name=\"web\"")
                && l.contains("issuer_name=\"selfsigned\"")
        ),
        "expiration metric:\n{m}"
    );
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrite_certs_certificate_ready_status{")
                && l.contains("name=\"web\"")
                && l.contains("condition=\"True\"")
                && l.ends_with(" 1")),
        "ready metric:\n{m}"
    );
    assert!(
        m.contains("ferrite_certs_issuances_total{issuer_type=\"selfSigned\",result=\"success\"}"),
        "{m}"
    );

    // 2. CA bootstrap: selfSigned ClusterIssuer -> isCA Certificate -> CA ClusterIssuer -> leaf.
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "ctl-root"}, "spec": {"selfSigned": {}}}),
    )
    .await;
    wait_cluster_issuer(&cluster_issuers, "ctl-root", "True", "IsReady").await;
    create(
        &cluster_certs,
        json!({"metadata": {"name": "ctl-ca"}, "spec": {
            "secretName": "ctl-ca-keypair", "isCA": true, "commonName": "ferrite test CA",
            "issuerRef": {"name": "ctl-root", "kind": "ClusterIssuer"},
            "privateKey": {"algorithm": "ECDSA", "size": 384}}}),
    )
    .await;
    wait_cert(&cluster_certs, "ctl-ca", "True", "Ready").await;
    create(
        &cluster_issuers,
        json!({"metadata": {"name": "ctl-ca"}, "spec": {"ca": {"secretName": "ctl-ca-keypair"}}}),
    )
    .await;
    wait_cluster_issuer(&cluster_issuers, "ctl-ca", "True", "KeyPairVerified").await;
    create(
        &certs,
        json!({"metadata": {"name": "leaf"}, "spec": {
            "secretName": "leaf-tls", "issuerRef": {"name": "ctl-ca", "kind": "ClusterIssuer"},
            "dnsNames": ["leaf.ctl.test"], "privateKey": {"algorithm": "RSA", "encoding": "PKCS8"}}}),
    )
    .await;
    wait_cert(&certs, "leaf", "True", "Ready").await;
    let leaf_secret = secrets.get("leaf-tls").await.unwrap();
    let (crt, key, ca) = files(dir, "leaf", &leaf_secret);
    check_pair(&crt, &key, 3600);
    let (ok, out) = openssl(&["verify", "-CAfile", &ca, &crt]);
    assert!(ok, "openssl verify -CAfile ca.crt tls.crt: {out}");
    let ca_secret = cluster_secrets.get("ctl-ca-keypair").await.unwrap();
    let (ca_crt, _, _) = files(dir, "ca", &ca_secret);
    let (ok, out) = openssl(&["verify", "-CAfile", &ca_crt, &crt]);
    assert!(ok, "leaf verifies against the CA Secret's tls.crt: {out}");
    let (ok, out) = openssl(&["x509", "-in", &ca_crt, "-noout", "-ext", "basicConstraints"]);
    assert!(ok && out.contains("CA:TRUE"), "the CA certificate is a CA: {out}");
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY"),
        "encoding PKCS8"
    );

    // 3. The Secret deleted -> issued again.
    secrets.delete("web-tls", &DeleteParams::default()).await.unwrap();
    let web = eventually(Duration::from_secs(30), "web re-issued (revision 2)", || async {
        let c = certs.get("web").await.ok()?;
        (revision(&c) == 2 && cert_condition(&c, "Ready")?.0 == "True").then_some(c)
    })
    .await;
    assert_eq!(cert_condition(&web, "Ready").unwrap().1, "Ready");
    let again = secrets.get("web-tls").await.expect("the Secret is back");
    let (crt, key, _) = files(dir, "web2", &again);
    check_pair(&crt, &key, 3600);

    // 3b. The Secret edited (key of another certificate) -> issued again.
    let mut edited = again.clone();
    let other = secrets.get("leaf-tls").await.unwrap();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("tls.key".into(), other.data.as_ref().unwrap()["tls.key"].clone());
    edited.metadata.managed_fields = None;
    secrets
        .replace("web-tls", &PostParams::default(), &edited)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "web re-issued after tls.key edit (revision 3)",
        || async {
            let c = certs.get("web").await.ok()?;
            (revision(&c) == 3).then_some(())
        },
    )
    .await;
    let fixed = secrets.get("web-tls").await.unwrap();
    let (crt, key, _) = files(dir, "web3", &fixed);
    check_pair(&crt, &key, 3600);

    // 4. Renewal forced by renewBefore (1h certificates renewed 5 s after issuance), with the old
    //    Secret readable until the new one replaces it; rotationPolicy Never keeps the key, Always
    //    (the default) changes it.
    for (name, policy) in [("rot-never", "Never"), ("rot-always", "Always")] {
        create(
            &certs,
            json!({"metadata": {"name": name}, "spec": {
                "secretName": format!("{name}-tls"), "issuerRef": {"name": "selfsigned"},
                "dnsNames": [format!("{name}.ctl.test")], "duration": "1h", "renewBefore": "59m55s",
                "privateKey": {"algorithm": "ECDSA", "rotationPolicy": policy}}}),
        )
        .await;
    }
    for (name, same_key) in [("rot-never", true), ("rot-always", false)] {
        let first = wait_cert(&certs, name, "True", "Ready").await;
        let rev1 = revision(&first);
        let s1 = secrets.get(&format!("{name}-tls")).await.unwrap();
        let (crt1, key1, _) = files(dir, &format!("{name}-1"), &s1);
        check_pair(&crt1, &key1, 60);
        // Until the renewal lands, every read of the Secret gives a complete, matching pair.
        let deadline = Instant::now() + Duration::from_secs(30);
        let s2 = loop {
            let s = secrets.get(&format!("{name}-tls")).await.unwrap();
            let parsed =
                ferrite_certs::pki::parse_tls_secret(Some(data(&s, "tls.crt")), Some(data(&s, "tls.key")));
            assert!(
                parsed.is_ok(),
                "{name}: the Secret is always a valid pair: {parsed:?}"
            );
            if data(&s, "tls.crt") != data(&s1, "tls.crt") {
                break s;
            }
            assert!(Instant::now() < deadline, "{name}: not renewed in 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (crt2, key2, _) = files(dir, &format!("{name}-2"), &s2);
        check_pair(&crt2, &key2, 60);
        assert_ne!(serial(&crt1), serial(&crt2), "{name}: a new certificate");
        let k1 = std::fs::read(&key1).unwrap();
        let k2 = std::fs::read(&key2).unwrap();
        assert_eq!(k1 == k2, same_key, "{name}: key kept = {same_key}");
        let renewed = eventually(Duration::from_secs(10), "revision incremented", || async {
            let c = certs.get(name).await.ok()?;
            (revision(&c) > rev1).then_some(c)
        })
        .await;
        assert!(revision(&renewed) > rev1);
        certs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_event(kb, &ns, "rot-always", "Issued").await;

    // 5. Bad specs: a condition with the reason, a Warning Event, no Secret.
    let bad: [(&str, serde_json::Value, &str); 3] = [
        (
            "orphan",
            json!({"issuerRef": {"name": "nope"}, "dnsNames": ["o.ctl.test"]}),
            "IssuerNotFound",
        ),
        (
            "short",
            json!({"issuerRef": {"name": "selfsigned"}, "dnsNames": ["s.ctl.test"], "duration": "1h", "renewBefore": "2h"}),
            "InvalidSpec",
        ),
        (
            "nameless",
            json!({"issuerRef": {"name": "selfsigned"}}),
            "InvalidSpec",
        ),
    ];
    for (name, spec, _) in &bad {
        let mut spec = spec.clone();
        spec["secretName"] = format!("{name}-tls").into();
        create(&certs, json!({"metadata": {"name": name}, "spec": spec})).await;
    }
    for (name, _, reason) in &bad {
        let c = wait_cert(&certs, name, "False", reason).await;
        let msg = cert_condition(&c, "Ready").unwrap().2;
        let note = wait_event(kb, &ns, name, reason).await;
        assert_eq!(note, msg, "{name}: the Event says what the condition says");
        assert!(
            secrets.get_opt(&format!("{name}-tls")).await.unwrap().is_none(),
            "{name}: no Secret"
        );
    }
    let short = certs.get("short").await.unwrap();
    assert!(
        cert_condition(&short, "Ready").unwrap().2.contains("renewBefore"),
        "{short:?}"
    );
    // A CA Secret without a key: the Issuer says so, its Certificates wait.
    let ca_only: Secret = serde_json::from_value(json!({
        "metadata": {"name": "broken-ca"}, "type": "Opaque",
        "data": {"tls.crt": k8s_openapi::ByteString(data(&ca_secret, "tls.crt").to_vec())}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &ca_only).await.unwrap();
    create(
        &issuers,
        json!({"metadata": {"name": "broken"}, "spec": {"ca": {"secretName": "broken-ca"}}}),
    )
    .await;
    let (_, _, msg) = wait_issuer(&issuers, "broken", "False", "ErrGetKeyPair").await;
    assert!(msg.contains("tls.key"), "{msg}");
    wait_event(kb, &ns, "broken", "ErrGetKeyPair").await;
    create(
        &certs,
        json!({"metadata": {"name": "needs-broken"}, "spec": {
            "secretName": "needs-broken-tls", "issuerRef": {"name": "broken"}, "dnsNames": ["b.ctl.test"]}}),
    )
    .await;
    wait_cert(&certs, "needs-broken", "False", "IssuerNotReady").await;
    wait_event(kb, &ns, "needs-broken", "IssuerNotReady").await;
    assert!(secrets.get_opt("needs-broken-tls").await.unwrap().is_none());
    // A Secret of that name that ferrite-certs did not write is left alone.
    let foreign: Secret = serde_json::from_value(json!({
        "metadata": {"name": "foreign-tls"}, "type": "Opaque", "data": {"x": "eA=="}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &foreign).await.unwrap();
    create(
        &certs,
        json!({"metadata": {"name": "foreign"}, "spec": {
            "secretName": "foreign-tls", "issuerRef": {"name": "selfsigned"}, "dnsNames": ["f.ctl.test"]}}),
    )
    .await;
    wait_cert(&certs, "foreign", "False", "SecretNotManaged").await;
    let untouched = secrets.get("foreign-tls").await.unwrap();
    assert_eq!(untouched.type_.as_deref(), Some("Opaque"));
    assert!(
        !untouched.data.unwrap().contains_key("tls.crt"),
        "the foreign Secret is untouched"
    );
    // The missing issuer appears: its Certificate is issued without being touched.
    create(
        &issuers,
        json!({"metadata": {"name": "nope"}, "spec": {"selfSigned": {}}}),
    )
    .await;
    wait_cert(&certs, "orphan", "True", "Ready").await;
    assert!(secrets.get_opt("orphan-tls").await.unwrap().is_some());

    // 6. A restart keeps state: nothing valid is issued again.
    let before: Vec<(String, i64, String)> = {
        let mut v = Vec::new();
        for name in ["web", "leaf", "orphan"] {
            let c = certs.get(name).await.unwrap();
            let s = secrets.get(&c.spec.secret_name).await.unwrap();
            v.push((
                name.to_string(),
                revision(&c),
                s.metadata.resource_version.unwrap(),
            ));
        }
        v
    };
    ctl.proc.stop(Duration::from_secs(10));
    let mut ctl2 = start(&kubeconfig, 2).await;
    // The new leader has reconciled every Certificate once when its metrics name them.
    eventually(
        Duration::from_secs(30),
        "the restarted controller reconciled web/leaf/orphan",
        || async {
            let m = metrics(ctl2.admin).await;
            ["web", "leaf", "orphan"]
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
    for (name, rev, rv) in before {
        let c = certs.get(&name).await.unwrap();
        let s = secrets.get(&c.spec.secret_name).await.unwrap();
        assert_eq!(revision(&c), rev, "{name}: not issued again after a restart");
        assert_eq!(
            s.metadata.resource_version.unwrap(),
            rv,
            "{name}: Secret not rewritten"
        );
    }

    // The controller listed and watched only the Secrets it manages (the API server's audit log).
    let user = format!("system:serviceaccount:{CLUSTER_NS}:ferrite-certs");
    let text = std::fs::read_to_string(kb.audit_log()).expect("audit log");
    let mut seen = 0;
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["user"]["username"] != user.as_str() || e["objectRef"]["resource"] != "secrets" {
            continue;
        }
        let verb = e["verb"].as_str().unwrap_or_default();
        if verb != "list" && verb != "watch" {
            continue;
        }
        let uri = e["requestURI"].as_str().unwrap_or_default();
        assert!(
            uri.contains("labelSelector=certs.ferrite.dev%2Fmanaged%3Dtrue"),
            "a Secret {verb} without the managed label selector: {uri}"
        );
        seen += 1;
    }
    assert!(seen > 0, "the audit log shows the controller's Secret list/watch");

    // Deleted Certificates leave no metric series.
    certs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually(Duration::from_secs(15), "web's series removed", || async {
        let m = metrics(ctl2.admin).await;
        (!m.lines()
            .any(|l| l.starts_with("ferrite_certs_certificate_") && l.contains("name=\"web\"")))
        .then_some(())
    })
    .await;
    // ... and the restarted controller issued nothing at all.
    let m = metrics(ctl2.admin).await;
    assert!(
        !m.lines()
            .any(|l| l.starts_with("ferrite_certs_issuances_total{") && !l.ends_with(" 0")),
        "no issuance after the restart:\n{m}"
    );

    // 7. dnsNames edited on a Ready Certificate: re-issued with the new names (RequestChanged);
    //    every read meanwhile is a complete pair for either the old or the new names, Ready never
    //    turns False, and the Event names the reason.
    let old_leaf = secrets.get("leaf-tls").await.unwrap();
    let leaf_rev = revision(&certs.get("leaf").await.unwrap());
    certs
        .patch(
            "leaf",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"dnsNames": ["leaf.ctl.test", "api.leaf.ctl.test"]}})),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leaf = loop {
        let s = secrets.get("leaf-tls").await.unwrap();
        let parsed =
            ferrite_certs::pki::parse_tls_secret(Some(data(&s, "tls.crt")), Some(data(&s, "tls.key")));
        assert!(
            parsed.is_ok(),
            "leaf: the Secret is always a valid pair: {parsed:?}"
        );
        let c = certs.get("leaf").await.unwrap();
        assert_eq!(
            cert_condition(&c, "Ready").map(|r| r.0).as_deref(),
            Some("True"),
            "Ready stays True while the old certificate is served: {:?}",
            c.status
        );
        if data(&s, "tls.crt") != data(&old_leaf, "tls.crt") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "leaf not re-issued after the dnsNames edit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (old_crt, _, _) = files(dir, "leaf-old", &old_leaf);
    assert!(!sans(&old_crt).contains("api.leaf.ctl.test"));
    let (crt, key, ca) = files(dir, "leaf-new", &new_leaf);
    check_pair(&crt, &key, 3600);
    let sn = sans(&crt);
    assert!(
        sn.contains("DNS:leaf.ctl.test") && sn.contains("DNS:api.leaf.ctl.test"),
        "{sn}"
    );
    let (ok, out) = openssl(&["verify", "-CAfile", &ca, &crt]);
    assert!(ok, "{out}");
    let leaf = eventually(Duration::from_secs(10), "leaf's revision up", || async {
        let c = certs.get("leaf").await.ok()?;
        (revision(&c) == leaf_rev + 1).then_some(c)
    })
    .await;
    assert_eq!(cert_condition(&leaf, "Ready").unwrap().1, "Ready");
    assert!(cert_condition(&leaf, "Issuing").is_none(), "{:?}", leaf.status);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(15),
        "an Issued Event naming RequestChanged",
        || async {
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("leaf")
                        && e.reason.as_deref() == Some("Issued")
                        && e.note.as_deref().is_some_and(|n| n.contains("(RequestChanged)"))
                })
                .then_some(())
        },
    )
    .await;

    // 8. A Ready Certificate deleted: its Secret is kept as it is (cert-manager's default: the
    //    Secret has no ownerReference); created again with the same spec, the Secret is adopted, not
    //    issued again.
    let kept_rv = secrets
        .get("leaf-tls")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    certs.delete("leaf", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(15),
        "leaf gone, its series removed",
        || async {
            let gone = certs.get_opt("leaf").await.ok()?.is_none();
            let m = metrics(ctl2.admin).await;
            let series = m
                .lines()
                .any(|l| l.starts_with("ferrite_certs_certificate_") && l.contains("name=\"leaf\""));
            (gone && !series).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = secrets.get("leaf-tls").await.expect("the Secret is kept");
    assert_eq!(kept.metadata.resource_version.as_deref(), Some(kept_rv.as_str()));
    assert!(kept.metadata.owner_references.is_none());
    create(
        &certs,
        json!({"metadata": {"name": "leaf"}, "spec": {
            "secretName": "leaf-tls", "issuerRef": {"name": "ctl-ca", "kind": "ClusterIssuer"},
            "dnsNames": ["leaf.ctl.test", "api.leaf.ctl.test"],
            "privateKey": {"algorithm": "RSA", "encoding": "PKCS8"}}}),
    )
    .await;
    let adopted = wait_cert(&certs, "leaf", "True", "Ready").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = secrets.get("leaf-tls").await.unwrap();
    assert_eq!(
        s.metadata.resource_version.as_deref(),
        Some(kept_rv.as_str()),
        "adopted, not issued again: {:?}",
        adopted.status
    );
    assert!(adopted.status.unwrap().not_after.is_some());

    // 9. Leader loss mid-flight: a second replica (its own identity) follows; 24 Certificates are
    //    created and the leader is killed while they are being issued. The other replica takes over
    //    and every Certificate becomes Ready, none issued twice.
    let standby = start_controller(
        &kubeconfig,
        "ferrite-certs-controller",
        "ferrite-certs-controller-3.log",
        &[
            "--identity=ferrite-certs-standby".to_string(),
            format!("--http01-listen={}", free_addr()),
        ],
    )
    .await;
    let burst: Vec<String> = (0..24).map(|i| format!("burst-{i}")).collect();
    for (i, n) in burst.iter().enumerate() {
        create(
            &certs,
            json!({"metadata": {"name": n}, "spec": {
                "secretName": format!("{n}-tls"), "issuerRef": {"name": "ctl-ca", "kind": "ClusterIssuer"},
                "dnsNames": [format!("{n}.ctl.test")], "privateKey": {"algorithm": "ECDSA"}}}),
        )
        .await;
        if i == 4 {
            ctl2.proc.crash();
        }
    }
    for n in &burst {
        let c = eventually(
            Duration::from_secs(90),
            &format!("{n} Ready after the failover"),
            || async {
                let c = certs.get(n).await.ok()?;
                (cert_condition(&c, "Ready")?.0 == "True").then_some(c)
            },
        )
        .await;
        // Issued once: revision 1, or 0 when the killed leader wrote the Secret but not the status
        // and the new leader adopted that Secret as current.
        assert!(revision(&c) <= 1, "{n}: issued once: {:?}", c.status);
        let s = secrets.get(&format!("{n}-tls")).await.unwrap();
        let (crt, key, ca) = files(dir, n, &s);
        check_pair(&crt, &key, 3600);
        let (ok, out) = openssl(&["verify", "-CAfile", &ca, &crt]);
        assert!(ok, "{n}: {out}");
    }
    let m = metrics(standby.admin).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("ferrite_certs_leader") && l.ends_with(" 1")),
        "the standby leads:\n{m}"
    );
    // The standby's log: each Certificate issued by it at most once, and some issued by it at all
    // (the leader was killed mid-flight, not after the burst).
    let log = std::fs::read_to_string(log_path("ferrite-certs-controller-3.log")).unwrap();
    let mut by_standby = 0;
    for n in &burst {
        let needle = format!("{ns}/{n} ");
        let issued = log
            .lines()
            .filter(|l| l.contains(" issued ") && l.contains(&needle))
            .count();
        assert!(issued <= 1, "{n} issued {issued} times by the standby");
        by_standby += issued;
    }
    assert!(
        by_standby > 0,
        "the standby issued none of the burst: the leader died too late"
    );

    // 10. --enable-certificate-owner-ref: the Certificate owns its Secret, and deleting it deletes
    //     the Secret (the garbage collector); without the flag (above) the Secret stays.
    let mut standby = standby;
    standby.proc.stop(Duration::from_secs(10));
    let _owner = start_controller(
        &kubeconfig,
        "ferrite-certs-controller",
        "ferrite-certs-controller-4.log",
        &[
            "--enable-certificate-owner-ref".to_string(),
            format!("--http01-listen={}", free_addr()),
        ],
    )
    .await;
    let owned = create(
        &certs,
        json!({"metadata": {"name": "owned"}, "spec": {
            "secretName": "owned-tls", "issuerRef": {"name": "selfsigned"}, "dnsNames": ["owned.ctl.test"]}}),
    )
    .await;
    wait_cert(&certs, "owned", "True", "Ready").await;
    let s = secrets.get("owned-tls").await.unwrap();
    let refs = s.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        refs.len() == 1
            && refs[0].kind == "Certificate"
            && refs[0].name == "owned"
            && Some(&refs[0].uid) == owned.metadata.uid.as_ref()
            && refs[0].controller == Some(true),
        "the Secret is owned by its Certificate: {refs:?}"
    );
    certs.delete("owned", &DeleteParams::default()).await.unwrap();
    eventually(
        Duration::from_secs(60),
        "owned-tls deleted with its Certificate",
        || async { secrets.get_opt("owned-tls").await.ok()?.is_none().then_some(()) },
    )
    .await;
}
