//! The allocator against the box: Services get addresses from the right pool within a second, the
//! incumbents' annotations work, bad input gets a clear condition or Event, and pool status is kept.

mod common;

use common::*;
use ferrite_api::lb::IPPool;
use ferrite_e2e::KubeBox;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use std::{sync::OnceLock, time::Duration};

/// One controller for this test binary, like the box; its watchdog stops it when the binary exits.
static RUNNING: OnceLock<std::sync::Mutex<Running>> = OnceLock::new();
static START: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn controller() -> &'static KubeBox {
    let kb = KubeBox::shared();
    let _g = START.lock().await;
    if RUNNING.get().is_none() {
        crds(kb).await;
        let running = start_controller(kb, &kb.kubeconfig, &["--leader-elect=false"]).await;
        let _ = RUNNING.set(std::sync::Mutex::new(running));
    }
    kb
}

async fn admin_addr() -> std::net::SocketAddr {
    controller().await;
    RUNNING
        .get()
        .expect("started")
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admin
}

/// A pool that serves only `ns`, so tests running side by side do not take each other's addresses.
fn pool(name: &str, ns: &str, addresses: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"addresses": addresses, "serviceAllocation": {"namespaces": [ns]}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})
}

fn lb_service(name: &str, annotations: serde_json::Value, ports: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "annotations": annotations},
           "spec": {"type": "LoadBalancer", "ports": ports}})
}

#[tokio::test]
async fn a_service_gets_an_ip_from_its_pool_within_a_second() {
    let kb = controller().await;
    let ns = kb.namespace("alloc").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        pool(&format!("{ns}-a"), &ns, &["198.51.100.0/30"], json!({})),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(&svcs, lb_service("web", json!({}), json!([{"port": 80}]))).await;
    let (ips, took) = wait_ips(&svcs, "web", Duration::from_secs(10)).await;
    eprintln!("Service created -> IP in status: {took:?}");
    assert_eq!(ips.len(), 1);
    assert!(ips[0].starts_with("198.51.100."), "{ips:?}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let note = wait_event(kb, &ns, "web", "IPAllocated").await;
    assert!(
        note.contains(&ips[0]) && note.contains(&format!("{ns}-a")),
        "{note}"
    );

    // The pool's status counts it.
    let p = eventually(Duration::from_secs(10), "pool status", || async {
        let p = pools.get(&format!("{ns}-a")).await.ok()?;
        let st = p.status.clone()?;
        (st.assigned_ipv4 == 1).then_some(p)
    })
    .await;
    let st = p.status.expect("status");
    assert_eq!(st.available_ipv4, 3);
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{:?}",
        st.conditions
    );
}

#[tokio::test]
async fn annotations_choose_pool_and_address_including_metallb_aliases() {
    let kb = controller().await;
    let ns = kb.namespace("annot").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        pool(
            &format!("{ns}-auto"),
            &ns,
            &["198.51.100.16/30"],
            json!({"serviceAllocation": {"namespaces": [ns], "priority": 10}}),
        ),
    )
    .await;
    create(
        &pools,
        pool(
            &format!("{ns}-manual"),
            &ns,
            &["198.51.100.20-198.51.100.23"],
            json!({"autoAssign": false}),
        ),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);

    // Named pool (own key), named pool (MetalLB key), requested IP (MetalLB key), legacy key.
    create(
        &svcs,
        lb_service(
            "own-pool",
            json!({"lb.ferrite.dev/pool": format!("{ns}-manual")}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    create(
        &svcs,
        lb_service(
            "metallb-pool",
            json!({"metallb.io/address-pool": format!("{ns}-manual")}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    create(
        &svcs,
        lb_service(
            "requested",
            json!({"metallb.io/loadBalancerIPs": "198.51.100.22"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    create(
        &svcs,
        lb_service(
            "legacy",
            json!({"metallb.universe.tf/loadBalancerIPs": "198.51.100.18"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    create(&svcs, lb_service("auto", json!({}), json!([{"port": 80}]))).await;

    let (own, _) = wait_ips(&svcs, "own-pool", Duration::from_secs(10)).await;
    let (metallb, _) = wait_ips(&svcs, "metallb-pool", Duration::from_secs(10)).await;
    let (requested, _) = wait_ips(&svcs, "requested", Duration::from_secs(10)).await;
    let (legacy, _) = wait_ips(&svcs, "legacy", Duration::from_secs(10)).await;
    let (auto, _) = wait_ips(&svcs, "auto", Duration::from_secs(10)).await;
    let in_manual =
        |ip: &str| ["198.51.100.20", "198.51.100.21", "198.51.100.22", "198.51.100.23"].contains(&ip);
    assert!(in_manual(&own[0]), "{own:?}");
    assert!(in_manual(&metallb[0]), "{metallb:?}");
    assert_ne!(own, metallb);
    assert_eq!(requested, vec!["198.51.100.22"]);
    assert_eq!(legacy, vec!["198.51.100.18"]);
    assert!(
        auto[0].starts_with("198.51.100.1"),
        "auto-assign pool only: {auto:?}"
    );
    let note = wait_event(kb, &ns, "legacy", "DeprecatedAnnotation").await;
    assert!(note.contains("metallb.io/loadBalancerIPs"), "{note}");
}

#[tokio::test]
async fn bad_input_gets_clear_conditions_and_events() {
    let kb = controller().await;
    let ns = kb.namespace("bad").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let bad = format!("{ns}-bad");
    create(&pools, pool(&bad, &ns, &["10.0.0.300/24"], json!({}))).await;
    let p = eventually(Duration::from_secs(10), "Ready=False on the bad pool", || async {
        let p = pools.get(&bad).await.ok()?;
        let c = p
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")?
            .clone();
        Some(c)
    })
    .await;
    assert_eq!(p.reason, "InvalidAddress");
    assert!(p.message.contains("10.0.0.300/24"), "{}", p.message);
    let note = wait_event(kb, "default", &bad, "InvalidAddress").await;
    assert!(note.contains("10.0.0.300/24"), "{note}");

    // Overlapping pools are flagged on both.
    create(
        &pools,
        pool(&format!("{ns}-o1"), &ns, &["198.51.100.32/30"], json!({})),
    )
    .await;
    create(
        &pools,
        pool(
            &format!("{ns}-o2"),
            &ns,
            &["198.51.100.34-198.51.100.40"],
            json!({}),
        ),
    )
    .await;
    for name in [format!("{ns}-o1"), format!("{ns}-o2")] {
        let c = eventually(Duration::from_secs(10), "Overlapping=True", || async {
            let p = pools.get(&name).await.ok()?;
            p.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "Overlapping" && c.status == "True")
        })
        .await;
        assert!(c.message.contains("198.51.100.3"), "{}", c.message);
    }

    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(
        &svcs,
        lb_service(
            "bad-ip",
            json!({"lb.ferrite.dev/ips": "198.51.100.300"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    let note = wait_event(kb, &ns, "bad-ip", "InvalidAnnotation").await;
    assert!(
        note.contains("lb.ferrite.dev/ips") && note.contains("198.51.100.300"),
        "{note}"
    );

    create(
        &svcs,
        lb_service(
            "outside",
            json!({"lb.ferrite.dev/ips": "203.0.113.200"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    let note = wait_event(kb, &ns, "outside", "AllocationFailed").await;
    assert!(
        note.contains("203.0.113.200") && note.contains("not in any IPPool"),
        "{note}"
    );

    create(
        &svcs,
        lb_service(
            "no-pool",
            json!({"lb.ferrite.dev/pool": "does-not-exist"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    let note = wait_event(kb, &ns, "no-pool", "AllocationFailed").await;
    assert!(note.contains("does-not-exist"), "{note}");
    for name in ["bad-ip", "outside", "no-pool"] {
        assert!(
            ips(&svcs.get(name).await.expect("get")).is_empty(),
            "{name} must not get an address"
        );
    }
}

#[tokio::test]
async fn sharing_a_key_shares_the_ip_and_port_conflicts_are_refused() {
    let kb = controller().await;
    let ns = kb.namespace("share").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        pool(&format!("{ns}-p"), &ns, &["198.51.100.48/30"], json!({})),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(
        &svcs,
        lb_service(
            "dns-udp",
            json!({"metallb.io/allow-shared-ip": "dns"}),
            json!([{"port": 53, "protocol": "UDP"}]),
        ),
    )
    .await;
    let (udp, _) = wait_ips(&svcs, "dns-udp", Duration::from_secs(10)).await;
    create(
        &svcs,
        lb_service(
            "dns-tcp",
            json!({"lb.ferrite.dev/allow-shared-ip": "dns", "lb.ferrite.dev/ips": udp[0]}),
            json!([{"port": 53, "protocol": "TCP"}]),
        ),
    )
    .await;
    let (tcp, _) = wait_ips(&svcs, "dns-tcp", Duration::from_secs(10)).await;
    assert_eq!(udp, tcp, "same key, different ports: one address");

    create(
        &svcs,
        lb_service(
            "clash",
            json!({"lb.ferrite.dev/allow-shared-ip": "dns", "lb.ferrite.dev/ips": udp[0]}),
            json!([{"port": 53, "protocol": "UDP"}]),
        ),
    )
    .await;
    let note = wait_event(kb, &ns, "clash", "AllocationFailed").await;
    assert!(note.contains("dns-udp") && note.contains("53/UDP"), "{note}");

    // No longer a LoadBalancer: the address is released and its status cleared.
    let patch = json!({"spec": {"type": "ClusterIP"}});
    svcs.patch("dns-udp", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    eventually(Duration::from_secs(10), "status cleared", || async {
        ips(&svcs.get("dns-udp").await.ok()?).is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn metrics_report_pool_usage_and_reconciles() {
    let kb = controller().await;
    let ns = kb.namespace("metrics").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let name = format!("{ns}-m");
    create(&pools, pool(&name, &ns, &["198.51.100.64/29"], json!({}))).await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(&svcs, lb_service("a", json!({}), json!([{"port": 80}]))).await;
    create(&svcs, lb_service("b", json!({}), json!([{"port": 80}]))).await;
    wait_ips(&svcs, "a", Duration::from_secs(10)).await;
    wait_ips(&svcs, "b", Duration::from_secs(10)).await;
    let admin = admin_addr().await;
    let want = format!("ferrite_lb_pool_addresses_in_use{{family=\"IPv4\",pool=\"{name}\"}} 2");
    let body = eventually(Duration::from_secs(10), "pool metric", || async {
        let (_, body) = http_get(admin, "/metrics").await.ok()?;
        body.contains(&want).then_some(body)
    })
    .await;
    assert!(
        body.contains(&format!(
            "ferrite_lb_pool_addresses{{family=\"IPv4\",pool=\"{name}\"}} 8"
        )),
        "{body}"
    );
    assert!(
        body.contains("ferrite_lb_reconcile_total{kind=\"Service\",result=\"success\"}"),
        "{body}"
    );
    assert!(body.contains("process_resident_memory_bytes"), "{body}");
}

/// The pool's assigned IPv4 count and the in-use metric, once both equal `n`.
async fn wait_in_use(pools: &Api<IPPool>, pool: &str, n: i64) {
    let admin = admin_addr().await;
    let want = format!("ferrite_lb_pool_addresses_in_use{{family=\"IPv4\",pool=\"{pool}\"}} {n}");
    eventually(
        Duration::from_secs(10),
        &format!("pool {pool}: {n} assigned in status and metric"),
        || async {
            let st = pools.get(pool).await.ok()?.status?;
            let (_, body) = http_get(admin, "/metrics").await.ok()?;
            (st.assigned_ipv4 == n && body.contains(&want)).then_some(())
        },
    )
    .await;
}

/// The reproduction: a two-address pool, two Services, both deleted, two new ones. Before the fix
/// the new ones stayed <pending> ("no free IPv4 address") until the controller restarted.
#[tokio::test]
async fn deleted_services_give_their_addresses_back_at_once() {
    let kb = controller().await;
    let ns = kb.namespace("tiny").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let tiny = format!("{ns}-tiny");
    create(
        &pools,
        pool(&tiny, &ns, &["198.51.100.40-198.51.100.41"], json!({})),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    let dp = kube::api::DeleteParams::default();
    for name in ["a", "b"] {
        create(&svcs, lb_service(name, json!({}), json!([{"port": 80}]))).await;
    }
    let (a, _) = wait_ips(&svcs, "a", Duration::from_secs(10)).await;
    let (b, _) = wait_ips(&svcs, "b", Duration::from_secs(10)).await;
    assert_ne!(a, b);
    wait_in_use(&pools, &tiny, 2).await;

    for name in ["a", "b"] {
        svcs.delete(name, &dp).await.expect("deleted");
    }
    // The pool shows the addresses free again, in status and in the metric.
    wait_in_use(&pools, &tiny, 0).await;
    let st = pools.get(&tiny).await.expect("pool").status.expect("status");
    assert_eq!(st.available_ipv4, 2, "{st:?}");

    for name in ["c", "d"] {
        create(&svcs, lb_service(name, json!({}), json!([{"port": 80}]))).await;
    }
    let (c, took_c) = wait_ips(&svcs, "c", Duration::from_secs(10)).await;
    let (d, took_d) = wait_ips(&svcs, "d", Duration::from_secs(10)).await;
    eprintln!("after the deletes: c got {c:?} in {took_c:?}, d got {d:?} in {took_d:?}");
    assert_ne!(c, d);
    let mut got = [c[0].clone(), d[0].clone()];
    got.sort();
    assert_eq!(got, ["198.51.100.40", "198.51.100.41"]);
    wait_in_use(&pools, &tiny, 2).await;

    // A requested address is reusable under a new name once its holder is gone.
    svcs.delete("c", &dp).await.expect("deleted");
    create(
        &svcs,
        lb_service(
            "wants-c",
            json!({"lb.ferrite.dev/ips": c[0]}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    let (w, _) = wait_ips(&svcs, "wants-c", Duration::from_secs(10)).await;
    assert_eq!(w, c, "the requested address of a deleted Service");

    // Delete and at once recreate under the same name: the new Service gets an address (the Delete of
    // the old one must not release what the new one holds), and the pool counts stay true.
    svcs.delete("d", &dp).await.expect("deleted");
    create(&svcs, lb_service("d", json!({}), json!([{"port": 80}]))).await;
    let (d2, _) = wait_ips(&svcs, "d", Duration::from_secs(10)).await;
    assert_eq!(d2, d, "the only free address");
    wait_in_use(&pools, &tiny, 2).await;

    // A Service waiting for an address (pool full) gets one as soon as another is deleted, not after
    // its retry backoff.
    create(&svcs, lb_service("late", json!({}), json!([{"port": 80}]))).await;
    wait_event(kb, &ns, "late", "AllocationFailed").await;
    // Let it fail a few times, so that its retry backoff (0.5 s doubling) is beyond 3 s: the time that
    // passes is what this step tests, there is no condition to wait for instead.
    tokio::time::sleep(Duration::from_secs(8)).await;
    svcs.delete("wants-c", &dp).await.expect("deleted");
    let (late, took) = wait_ips(&svcs, "late", Duration::from_secs(10)).await;
    eprintln!("waiting Service got {late:?} {took:?} after the delete");
    assert_eq!(late, c);
    assert!(took < Duration::from_secs(3), "retried on release, took {took:?}");
}
