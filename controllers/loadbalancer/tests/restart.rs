//! Restarts and pool changes against the box: the allocator rebuilds every allocation from Service
//! status before assigning anything (the older of two Services claiming one address keeps it), and a
//! pool that shrinks leaves its addresses with their Services, with a Warning Event and a metric.

mod common;

use common::*;
use ferrite_e2e::KubeBox;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn start_keeps_the_older_claim_of_a_shared_ip_a_shrunk_pool_leaves_addresses_and_new_ones_come_from_the_pool()
 {
    let kb = KubeBox::shared();
    crds(kb).await;
    let NsPool {
        ns,
        pools,
        pool,
        svcs,
        ..
    } = NsPool::new(kb, "restart", &["198.51.100.128/29"]).await;

    // Two Services that both show 198.51.100.130, as after a split brain or a restored backup; the
    // older one by creation time must keep it. (No controller runs while they are written.)
    let status = json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.130"}]}}});
    let older = create(&svcs, lb_service("older", json!({}), json!([{"port": 80}]))).await;
    svcs.patch_status("older", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");
    // creationTimestamp has 1 s resolution: wait until the clock (the API server's: same machine) is in
    // a later second, so `newer` is newer by its timestamp.
    let created = older
        .metadata
        .creation_timestamp
        .as_ref()
        .expect("creationTimestamp")
        .0
        .as_second();
    eventually(
        Duration::from_secs(3),
        "the clock to pass older's creation second",
        || async { (jiff::Timestamp::now().as_second() > created).then_some(()) },
    )
    .await;
    create(&svcs, lb_service("newer", json!({}), json!([{"port": 80}]))).await;
    svcs.patch_status("newer", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("status");

    let running = start_controller(kb, &kb.kubeconfig, &["--lease-namespace=default"]).await;
    let newer = eventually(
        Duration::from_secs(15),
        "newer to be moved off the shared address",
        || async {
            let v = ips(&svcs.get("newer").await.ok()?);
            (!v.is_empty() && v != ["198.51.100.130"]).then_some(v)
        },
    )
    .await;
    let last: u8 = newer[0]
        .rsplit('.')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("an IPv4 address");
    assert!(
        (128..=135).contains(&last) && last != 130,
        "newer moved inside the pool: {newer:?}"
    );
    assert_eq!(
        ips(&svcs.get("older").await.expect("get")),
        vec!["198.51.100.130"],
        "the older keeps it"
    );
    let note = wait_event(kb, &ns, "newer", "IPConflict").await;
    assert!(
        note.contains("198.51.100.130") && note.contains("older"),
        "{note}"
    );

    // Shrink the pool so that `older`'s address is outside every pool: it keeps it, with a warning.
    let patch = json!({"spec": {"addresses": ["198.51.100.132-198.51.100.135"]}});
    pools
        .patch(&pool, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("pool shrunk");
    let note = wait_event(kb, &ns, "older", "IPOutOfPool").await;
    assert!(note.contains("198.51.100.130"), "{note}");
    // The controller has taken in the shrunk pool once its metric counts both addresses outside it.
    let metrics = eventually(Duration::from_secs(10), "the out-of-pool metric", || async {
        let (_, body) = http_get(running.admin, "/metrics").await.ok()?;
        // Both .130 (older) and .128 (newer) are outside the shrunk pool now.
        body.contains("ferrite_lb_addresses_out_of_pool 2")
            .then_some(body)
    })
    .await;
    assert_eq!(
        ips(&svcs.get("older").await.expect("get")),
        vec!["198.51.100.130"],
        "kept after the shrink"
    );
    assert!(
        metrics.contains("ferrite_lb_leader 1"),
        "elected leader of its own lease"
    );

    // A new Service never gets an address outside the pools.
    create(&svcs, lb_service("third", json!({}), json!([{"port": 80}]))).await;
    let (third, _) = wait_ips(&svcs, "third", Duration::from_secs(10)).await;
    let n: u8 = third[0]
        .rsplit('.')
        .next()
        .and_then(|x| x.parse().ok())
        .expect("an IPv4 address");
    assert!(
        (132..=135).contains(&n),
        "third got {third:?}; newer has {newer:?}"
    );
}
