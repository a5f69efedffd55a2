//! Box test of the ingress-shim: a real kube-apiserver and kube-controller-manager (the box), the
//! shim run in-process on an App built from the box's kubeconfig, Ingresses created and changed with
//! the API as a user would.
//!
//! One test function: the steps share one shim and run in order.

mod common;

use std::time::Duration;

use clap::Parser;
use common::{eventually, setup};
use ferrite_api::certs::{Certificate, IssuerKind, IssuerRef};
use ferrite_certs::shim::{self, INGRESS_NAME_LABEL, ShimConfig};
use ferrite_kit::{App, cli::CommonArgs};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn ingress(name: &str, annotations: Value, tls: Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations, "labels": {"app": name}},
        "spec": {
            "defaultBackend": {"service": {"name": name, "port": {"number": 80}}},
            "tls": tls,
        },
    }))
    .expect("test Ingress parses")
}

/// The Warning Event `reason` on Ingress `name` whose note contains `needle`.
async fn warning(events: &Api<Event>, name: &str, reason: &str, needle: &str) -> Event {
    eventually(
        Duration::from_secs(20),
        &format!("Warning {reason} on Ingress {name} mentioning {needle:?}"),
        || async {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some(reason)
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                    && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Ingress")
                    && e.note.as_deref().is_some_and(|n| n.contains(needle))
            })
        },
    )
    .await
}

fn controller_uid(c: &Certificate) -> Option<String> {
    shim::controlling_ingress(c).map(|o| o.uid.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_annotations_become_certificates_owned_by_the_ingress() {
    let (kb, client, ns) = setup("shim").await;
    let kubeconfig = kb.kubeconfig.display().to_string();
    let cli = Cli::parse_from([
        "test",
        "--kubeconfig",
        &kubeconfig,
        "--admin-addr",
        "127.0.0.1:0",
        "--leader-elect=false",
        "--log-level=info,ferrite_certs=debug",
    ]);
    let app = App::start(&cli.common, "certs", "ferrite-certs")
        .await
        .expect("app starts");
    let config = ShimConfig {
        default_issuer: Some(IssuerRef {
            name: "default-acme".into(),
            kind: IssuerKind::ClusterIssuer,
            group: None,
        }),
    };
    let shim_task = shim::spawn(&app, config);

    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let certs: Api<Certificate> = Api::namespaced(client.clone(), &ns);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();

    // 1. cert-manager's cluster-issuer annotation -> one Certificate per TLS entry, owned by the Ingress.
    let web = ingresses
        .create(
            &pp,
            &ingress(
                "web",
                json!({"cert-manager.io/cluster-issuer": "letsencrypt"}),
                json!([
                    {"hosts": ["a.example.com", "b.example.com"], "secretName": "web-tls"},
                    {"hosts": ["c.example.com", "192.0.2.10"], "secretName": "c-tls"},
                    {"hosts": ["nosecret.example.com"]},
                ]),
            ),
        )
        .await
        .expect("Ingress web created");
    let web_uid = web.uid().expect("uid");
    for (name, dns, ips) in [
        ("web-tls", vec!["a.example.com", "b.example.com"], vec![]),
        ("c-tls", vec!["c.example.com"], vec!["192.0.2.10"]),
    ] {
        let c = eventually(
            Duration::from_secs(20),
            &format!("Certificate {name}"),
            || async { certs.get_opt(name).await.ok().flatten() },
        )
        .await;
        assert_eq!(c.spec.secret_name, name);
        assert_eq!(c.spec.issuer_ref.name, "letsencrypt");
        assert_eq!(c.spec.issuer_ref.kind, IssuerKind::ClusterIssuer);
        assert_eq!(c.spec.dns_names, dns);
        assert_eq!(c.spec.ip_addresses, ips);
        let owner = shim::controlling_ingress(&c).expect("a controller ownerReference");
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Ingress", "web", web_uid.as_str())
        );
        assert_eq!(
            c.labels().get(INGRESS_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(c.labels().get("app").map(String::as_str), Some("web"));
        let managers: Vec<String> = c
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| m.manager.clone())
            .collect();
        assert!(
            managers
                .iter()
                .any(|m| m == ferrite_api::names::CERTS_CONTROLLER_MANAGER),
            "{managers:?}"
        );
    }
    // The entry without a secretName is skipped and said so.
    warning(&events, "web", "BadConfig", "spec.tls[2] has no secretName").await;

    // 2. Annotations and hosts change -> the Certificate follows.
    let patch = json!({
        "metadata": {"annotations": {"cert-manager.io/duration": "720h", "certs.ferrite.dev/private-key-algorithm": "ECDSA"}},
        "spec": {"tls": [
            {"hosts": ["a.example.com", "b.example.com", "d.example.com"], "secretName": "web-tls"},
            {"hosts": ["c.example.com", "192.0.2.10"], "secretName": "c-tls"},
        ]},
    });
    ingresses
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("Ingress web patched");
    eventually(Duration::from_secs(20), "web-tls updated", || async {
        let c = certs.get_opt("web-tls").await.ok().flatten()?;
        (c.spec.dns_names == ["a.example.com", "b.example.com", "d.example.com"]
            && c.spec.duration.as_deref() == Some("720h0m0s")
            && c.spec.private_key.as_ref().and_then(|p| p.algorithm)
                == Some(ferrite_api::certs::KeyAlgorithm::Ecdsa))
        .then_some(())
    })
    .await;

    // 3. A TLS entry removed -> its Certificate is deleted; the other stays.
    let tls = json!({"spec": {"tls": [
        {"hosts": ["a.example.com", "b.example.com", "d.example.com"], "secretName": "web-tls"},
    ]}});
    ingresses
        .patch("web", &PatchParams::default(), &Patch::Merge(&tls))
        .await
        .expect("Ingress web patched");
    eventually(Duration::from_secs(20), "c-tls deleted", || async {
        certs.get_opt("c-tls").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        certs.get_opt("web-tls").await.expect("get").is_some(),
        "web-tls stays"
    );

    // 4. A bad annotation -> a Warning naming it, and no Certificate.
    ingresses
        .create(
            &pp,
            &ingress(
                "bad",
                json!({"cert-manager.io/issuer": "ca", "cert-manager.io/private-key-size": "big"}),
                json!([{"hosts": ["bad.example.com"], "secretName": "bad-tls"}]),
            ),
        )
        .await
        .expect("Ingress bad created");
    warning(
        &events,
        "bad",
        "BadConfig",
        "\"cert-manager.io/private-key-size\"",
    )
    .await;
    // The same reconcile that published the Event decided not to write; give a late write a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        certs.get_opt("bad-tls").await.expect("get").is_none(),
        "no Certificate for an Ingress with a bad annotation"
    );
    // Both an issuer and a cluster-issuer: refused, as cert-manager refuses it.
    ingresses
        .create(
            &pp,
            &ingress(
                "both",
                json!({"certs.ferrite.dev/issuer": "ca", "cert-manager.io/cluster-issuer": "le"}),
                json!([{"hosts": ["both.example.com"], "secretName": "both-tls"}]),
            ),
        )
        .await
        .expect("Ingress both created");
    warning(&events, "both", "BadConfig", "are set; set only one").await;
    assert!(certs.get_opt("both-tls").await.expect("get").is_none());

    // 5. A younger Ingress asking for the same Secret with other hosts: the older one keeps it.
    ingresses
        .create(
            &pp,
            &ingress(
                "late",
                json!({"kubernetes.io/tls-acme": "true"}),
                json!([{"hosts": ["late.example.com"], "secretName": "web-tls"}]),
            ),
        )
        .await
        .expect("Ingress late created");
    warning(&events, "late", "CertificateConflict", "\"web\"").await;
    let c = certs.get("web-tls").await.expect("web-tls");
    assert_eq!(controller_uid(&c).as_deref(), Some(web_uid.as_str()));
    assert_eq!(
        c.spec.dns_names,
        ["a.example.com", "b.example.com", "d.example.com"]
    );

    // 6. The older Ingress deleted -> its Certificate goes, and the younger one gets its own, with
    // the default issuer (tls-acme).
    ingresses
        .delete("web", &DeleteParams::default())
        .await
        .expect("Ingress web deleted");
    let late_uid = ingresses.get("late").await.expect("late").uid();
    let c = eventually(Duration::from_secs(30), "web-tls taken over by late", || async {
        let c = certs.get_opt("web-tls").await.ok().flatten()?;
        (controller_uid(&c) == late_uid).then_some(c)
    })
    .await;
    assert_eq!(c.spec.dns_names, ["late.example.com"]);
    assert_eq!(c.spec.issuer_ref.name, "default-acme");
    assert_eq!(c.spec.issuer_ref.kind, IssuerKind::ClusterIssuer);

    // 7. The last Ingress with Certificates deleted -> no Certificate left in the namespace.
    ingresses
        .delete("late", &DeleteParams::default())
        .await
        .expect("Ingress late deleted");
    eventually(Duration::from_secs(30), "every Certificate gone", || async {
        let list = certs.list(&Default::default()).await.ok()?;
        list.items.is_empty().then_some(())
    })
    .await;

    app.shutdown.cancel();
    let res = tokio::time::timeout(Duration::from_secs(10), shim_task)
        .await
        .expect("the shim stops on shutdown")
        .expect("the shim task does not panic");
    res.expect("the shim ends without an error");
}
