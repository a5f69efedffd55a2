//! The allocator as the chart's `ferrite-lb-controller` ServiceAccount (the chart installed with the real
//! helm): its RBAC is enough for everything this controller writes — Service status, the
//! `ip-allocated-from-pool` annotation (and removing the old `announcing-node`), IPPool status, and the
//! status of L2Advertisements — and denies it writing Service specs.

mod common;

use common::{lab::Accounts, *};
use ferrite_api::lb::L2Advertisement;
use ferrite_e2e::KubeBox;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn the_chart_account_writes_status_annotations_and_advertisement_status() {
    let kb = KubeBox::shared();
    let accounts = Accounts::install(kb).await;
    let NsPool {
        ns,
        client: admin,
        pools,
        pool,
        svcs,
    } = NsPool::new(kb, "account", &["203.0.113.112/29"]).await;
    let advs: Api<L2Advertisement> = Api::all(admin.clone());
    let adv = format!("{ns}-adv");
    create(
        &advs,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement", "metadata": {"name": adv},
               "spec": {"ipPools": [pool]}}),
    )
    .await;
    create(
        &svcs,
        lb_service(
            "web",
            json!({"lb.ferrite.dev/announcing-node": "old"}),
            json!([{"port": 80}]),
        ),
    )
    .await;

    let running = accounts.start_controller(kb).await;
    let (got, _) = wait_ips(&svcs, "web", Duration::from_secs(20)).await;
    assert!(got[0].starts_with("203.0.113.11"), "{got:?}");
    eventually(
        Duration::from_secs(10),
        "ip-allocated-from-pool written, announcing-node removed",
        || async {
            let a = svcs
                .get("web")
                .await
                .ok()?
                .metadata
                .annotations
                .unwrap_or_default();
            (a.get("lb.ferrite.dev/ip-allocated-from-pool") == Some(&pool)
                && !a.contains_key("lb.ferrite.dev/announcing-node"))
            .then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(10), "the advertisement's Ready", || async {
        let c = advs
            .get(&adv)
            .await
            .ok()?
            .status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        (c.status == "True" && c.message == format!("announces pools {pool}")).then_some(())
    })
    .await;
    eventually(Duration::from_secs(10), "the pool's status", || async {
        (pools.get(&pool).await.ok()?.status?.assigned_ipv4 == 1).then_some(())
    })
    .await;

    // patch is all it got on Services: deleting one is denied.
    let as_controller = client_from(&accounts.controller).await;
    let theirs: Api<Service> = Api::namespaced(as_controller, &ns);
    let denied = theirs.delete("web", &Default::default()).await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(e)) if e.code == 403),
        "{denied:?}"
    );
    drop(running);
}
