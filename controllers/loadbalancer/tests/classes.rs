//! `--default-class` against the box: a controller that is not the cluster's default load balancer
//! leaves Services without a `loadBalancerClass` alone (MetalLB's rule); one that is serves them. The box
//! is Kubernetes 1.20, which has no `spec.loadBalancerClass`: every Service there is class-less.

mod common;

use common::*;
use ferrite_e2e::KubeBox;
use k8s_openapi::api::events::v1::Event;
use kube::{Api, api::ListParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn default_class_false_leaves_class_less_services_alone() {
    let kb = KubeBox::shared();
    crds(kb).await;
    let NsPool {
        ns,
        client,
        pools,
        pool,
        svcs,
    } = NsPool::new(kb, "classes", &["203.0.113.96/29"]).await;
    create(&svcs, lb_service("web", json!({}), json!([{"port": 80}]))).await;

    let not_default = start_controller(
        kb,
        &kb.kubeconfig,
        &["--leader-elect=false", "--default-class=false"],
    )
    .await;
    // It runs and leads: it writes the pool's status...
    eventually(Duration::from_secs(10), "the pool's Ready condition", || async {
        let p = pools.get(&pool).await.ok()?;
        p.status?
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
            .then_some(())
    })
    .await;
    // ...but the class-less Service gets nothing. Its reconciles run right after the pool's (the same
    // start), so a few seconds of nothing is the answer; there is no "ignored" signal to wait for.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = svcs.get("web").await.expect("get");
    assert!(ips(&s).is_empty(), "{:?}", s.status);
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let list = events.list(&ListParams::default()).await.expect("events");
    assert!(
        list.items
            .iter()
            .all(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) != Some("web")),
        "no Event about a Service that is not ours: {:?}",
        list.items
    );
    drop(not_default);

    // The default class (the flag's default): served.
    let _default = start_controller(kb, &kb.kubeconfig, &["--leader-elect=false"]).await;
    let (got, _) = wait_ips(&svcs, "web", Duration::from_secs(10)).await;
    assert!(
        got[0].starts_with("203.0.113.9") || got[0].starts_with("203.0.113.10"),
        "{got:?}"
    );
    eventually(Duration::from_secs(10), "ip-allocated-from-pool", || async {
        let s = svcs.get("web").await.ok()?;
        (s.metadata
            .annotations?
            .get("lb.ferrite.dev/ip-allocated-from-pool")
            == Some(&pool))
        .then_some(())
    })
    .await;
}
