//! The allocator against the box: Services get addresses from the right pool within a second, the
//! incumbents' annotations work, bad input gets a clear condition or Event, and pool status is kept.

mod common;

use common::*;
use ferrite_api::lb::{IPPool, L2Advertisement};
use ferrite_e2e::KubeBox;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
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
    // Said again on every reconcile (the create, the status write, each change below): one Event all the
    // same, the repeats counted in its series instead of published again.
    for i in 0..3 {
        let touch = json!({"metadata": {"labels": {"touched": i.to_string()}}});
        svcs.patch("legacy", &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .expect("labelled");
    }
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(kb.client().await, &ns);
    let deprecated = || async {
        let list = events.list(&Default::default()).await.expect("listed");
        list.items
            .into_iter()
            .filter(|e| {
                e.reason.as_deref() == Some("DeprecatedAnnotation")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("legacy")
            })
            .collect::<Vec<_>>()
    };
    let count = eventually(
        Duration::from_secs(10),
        "DeprecatedAnnotation repeats in its series",
        || async { deprecated().await.first()?.series.as_ref().map(|s| s.count) },
    )
    .await;
    assert!(count >= 2, "{count}");
    let all = deprecated().await;
    assert_eq!(all.len(), 1, "one Event, not one per reconcile: {all:?}");
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
    let note = wait_event(kb, &ns, "clash", "SharingConflict").await;
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

/// The condition `type_` of a pool once its status is `status` (and, if given, its reason `reason`).
async fn wait_pool_condition(
    pools: &Api<IPPool>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> Condition {
    eventually(
        Duration::from_secs(10),
        &format!("{type_}={status} {reason:?} on IPPool {name}"),
        || async {
            let p = pools.get(name).await.ok()?;
            let c = p.status?.conditions.into_iter().find(|c| c.type_ == type_)?;
            (c.status == status && reason.is_none_or(|r| c.reason == r)).then_some(c)
        },
    )
    .await
}

/// MetalLB's order: the lowest priority number first, unset after every set one; serviceSelectors and
/// namespaceSelectors are lists, any entry matching is enough.
#[tokio::test]
async fn priority_lower_first_unset_last_and_list_selectors_are_ored() {
    let kb = controller().await;
    let ns = kb.namespace("prio").await;
    let client = kb.client().await;
    // A label only this namespace has, for the namespaceSelectors pool below (set first, so the
    // controller's namespace watch has it before any Service is looked at).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"prio-test": ns}}})),
        )
        .await
        .expect("namespace labelled");
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        pool(&format!("{ns}-a-unset"), &ns, &["203.0.113.0/29"], json!({})),
    )
    .await;
    create(
        &pools,
        pool(
            &format!("{ns}-p20"),
            &ns,
            &["203.0.113.8/29"],
            json!({"serviceAllocation": {"namespaces": [ns], "priority": 20}}),
        ),
    )
    .await;
    create(
        &pools,
        pool(
            &format!("{ns}-p10"),
            &ns,
            &["203.0.113.16/29"],
            json!({"serviceAllocation": {"namespaces": [ns], "priority": 10,
                   "serviceSelectors": [{"matchLabels": {"app": "web"}}, {"matchLabels": {"tier": "front"}}]}}),
        ),
    )
    .await;
    for name in [format!("{ns}-a-unset"), format!("{ns}-p20"), format!("{ns}-p10")] {
        wait_pool_condition(&pools, &name, "Ready", "True", None).await;
    }
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let labelled = |name: &str, labels: serde_json::Value| {
        json!({"metadata": {"name": name, "labels": labels},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}})
    };
    create(&svcs, labelled("plain", json!({}))).await;
    create(&svcs, labelled("front", json!({"tier": "front"}))).await;
    create(&svcs, labelled("web", json!({"app": "web"}))).await;
    let (plain, _) = wait_ips(&svcs, "plain", Duration::from_secs(10)).await;
    let (front, _) = wait_ips(&svcs, "front", Duration::from_secs(10)).await;
    let (web, _) = wait_ips(&svcs, "web", Duration::from_secs(10)).await;
    let octet = |ip: &str| {
        ip.rsplit('.')
            .next()
            .and_then(|o| o.parse::<u8>().ok())
            .expect("IPv4")
    };
    assert!(
        (8..16).contains(&octet(&plain[0])),
        "no selector matches: priority 20 before unset: {plain:?}"
    );
    assert!(
        (16..24).contains(&octet(&front[0])),
        "second serviceSelectors entry: priority 10: {front:?}"
    );
    assert!(
        (16..24).contains(&octet(&web[0])),
        "first serviceSelectors entry: {web:?}"
    );

    // A negative priority with a namespaceSelectors list (the second entry matches this namespace's
    // label) comes before all of them; Services already placed stay where they are.
    create(
        &pools,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": format!("{ns}-neg")},
               "spec": {"addresses": ["203.0.113.24/29"],
                        "serviceAllocation": {"priority": -1, "namespaceSelectors": [
                            {"matchLabels": {"prio-test": "no-such-namespace"}},
                            {"matchLabels": {"prio-test": ns}}]}}}),
    )
    .await;
    wait_pool_condition(&pools, &format!("{ns}-neg"), "Ready", "True", None).await;
    create(&svcs, labelled("late", json!({}))).await;
    let (late, _) = wait_ips(&svcs, "late", Duration::from_secs(10)).await;
    assert!((24..32).contains(&octet(&late[0])), "{late:?}");
    assert_eq!(wait_ips(&svcs, "plain", Duration::from_secs(1)).await.0, plain);
    let note = wait_event(kb, &ns, "late", "IPAllocated").await;
    assert!(note.contains(&format!("{ns}-neg")), "{note}");

    // Update: the priority of p20 goes below -1; new Services go there. Delete: back to neg.
    pools
        .patch(
            &format!("{ns}-p20"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"serviceAllocation": {"priority": -5}}})),
        )
        .await
        .expect("patched");
    eventually(Duration::from_secs(10), "p20 at priority -5", || async {
        let p = pools.get(&format!("{ns}-p20")).await.ok()?;
        (p.status?.observed_generation == p.metadata.generation).then_some(())
    })
    .await;
    create(&svcs, labelled("later", json!({}))).await;
    let (later, _) = wait_ips(&svcs, "later", Duration::from_secs(10)).await;
    assert!((8..16).contains(&octet(&later[0])), "{later:?}");
    pools
        .delete(&format!("{ns}-p20"), &Default::default())
        .await
        .expect("deleted");
    eventually(Duration::from_secs(10), "p20 gone", || async {
        pools
            .get_opt(&format!("{ns}-p20"))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The pool watch of the controller sees the delete within moments; a new Service then goes to neg.
    tokio::time::sleep(Duration::from_millis(500)).await;
    create(&svcs, labelled("last", json!({}))).await;
    let (last, _) = wait_ips(&svcs, "last", Duration::from_secs(10)).await;
    assert!((24..32).contains(&octet(&last[0])), "{last:?}");
}

/// Fields the API does not define are kept by the CRD and refused by the controller, each named; the
/// removed singular selectors name their replacement. Fixing the pool makes it Ready.
#[tokio::test]
async fn unknown_fields_are_refused_naming_each_field() {
    let kb = controller().await;
    let ns = kb.namespace("unknown").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let name = format!("{ns}-old");
    let old_style = json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
        "spec": {"addresses": ["203.0.113.32/29"], "autoassign": true,
                 "serviceAllocation": {"namespaces": [ns], "namespaceSelector": {"matchLabels": {"team": "a"}}}}});
    let created = create(&pools, old_style.clone()).await;
    // The API server kept the fields (x-kubernetes-preserve-unknown-fields) instead of pruning them.
    assert_eq!(
        created.spec.unknown_fields(),
        vec!["spec.autoassign", "spec.serviceAllocation.namespaceSelector"]
    );
    let ready = wait_pool_condition(&pools, &name, "Ready", "False", Some("UnknownField")).await;
    assert!(
        ready.message.contains(
            "unknown field spec.serviceAllocation.namespaceSelector (removed: use namespaceSelectors (a list, ORed as in MetalLB))"
        ) && ready.message.contains("unknown field spec.autoassign"),
        "{}",
        ready.message
    );
    let invalid = wait_pool_condition(&pools, &name, "Invalid", "True", Some("UnknownField")).await;
    assert_eq!(invalid.message, ready.message);
    let note = wait_event(kb, "default", &name, "UnknownField").await;
    assert!(note.contains("namespaceSelectors"), "{note}");

    // A refused pool hands out nothing.
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    create(&svcs, lb_service("web", json!({}), json!([{"port": 80}]))).await;
    wait_event(kb, &ns, "web", "AllocationFailed").await;
    assert!(ips(&svcs.get("web").await.expect("get")).is_empty());

    // Update: the fields removed (merge patch null) -> Ready, and the waiting Service gets an address.
    pools
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"autoassign": null, "serviceAllocation": {"namespaceSelector": null}}}),
            ),
        )
        .await
        .expect("patched");
    wait_pool_condition(&pools, &name, "Ready", "True", None).await;
    wait_pool_condition(&pools, &name, "Invalid", "False", None).await;
    let (got, _) = wait_ips(&svcs, "web", Duration::from_secs(15)).await;
    assert!(got[0].starts_with("203.0.113.3"), "{got:?}");

    // Delete and recreate it old-style: refused again (a fresh object, a fresh condition).
    pools.delete(&name, &Default::default()).await.expect("deleted");
    eventually(Duration::from_secs(10), "pool gone", || async {
        pools.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    create(&pools, old_style).await;
    wait_pool_condition(&pools, &name, "Ready", "False", Some("UnknownField")).await;

    // The inline l2 block is validated too.
    let l2 = format!("{ns}-l2");
    create(
        &pools,
        pool(
            &l2,
            &ns,
            &["203.0.113.40/29"],
            json!({"l2": {"interfaces": ["eth0", "/eth[/"]}}),
        ),
    )
    .await;
    let c = wait_pool_condition(&pools, &l2, "Ready", "False", Some("InvalidInterface")).await;
    assert!(
        c.message.contains("spec.l2.interfaces") && c.message.contains("/eth[/"),
        "{}",
        c.message
    );
    wait_event(kb, "default", &l2, "InvalidInterface").await;

    // Typos inside selectors are kept too (the selector schemas preserve unknown keys; pruned, each
    // would be `{}`, which matches everything) and refused naming the path.
    let nested = format!("{ns}-nested");
    let created = create(
        &pools,
        pool(
            &nested,
            &ns,
            &["203.0.113.48/29"],
            json!({"serviceAllocation": {
                       "namespaces": [ns],
                       "namespaceSelectors": [{"matchLabel": {"team": "a"}}],
                       "serviceSelectors": [{"matchExpressions": [{"key": "app", "operator": "In", "value": ["web"]}]}]},
                   "l2": {"nodeSelector": {"matchLabels": {"zone": "a"}, "matchlabels": {"zone": "b"}}}}),
        ),
    )
    .await;
    let want = [
        "spec.serviceAllocation.namespaceSelectors[0].matchLabel",
        "spec.serviceAllocation.serviceSelectors[0].matchExpressions[0].value",
        "spec.l2.nodeSelector.matchlabels",
    ];
    assert_eq!(created.spec.unknown_fields(), want);
    let c = wait_pool_condition(&pools, &nested, "Ready", "False", Some("UnknownField")).await;
    for field in want {
        assert!(
            c.message.contains(&format!("unknown field {field}")),
            "{field}: {}",
            c.message
        );
    }
    let advs: Api<L2Advertisement> = Api::all(client.clone());
    let adv = format!("{ns}-nested-adv");
    let created = create(
        &advs,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement", "metadata": {"name": adv},
               "spec": {"ipPools": [nested],
                        "ipPoolSelectors": [{"matchExpressions": [{"key": "a", "operator": "Exists", "vals": []}]}],
                        "nodeSelectors": [{"matchLabels": {"zone": "a"}}, {"matchLabel": {"zone": "b"}}],
                        "serviceSelectors": [{"matchLabelz": {"app": "web"}}]}}),
    )
    .await;
    let want = [
        "spec.ipPoolSelectors[0].matchExpressions[0].vals",
        "spec.nodeSelectors[1].matchLabel",
        "spec.serviceSelectors[0].matchLabelz",
    ];
    assert_eq!(created.spec.unknown_fields(), want);
    let c = eventually(
        Duration::from_secs(10),
        "Ready=False UnknownField on the advertisement",
        || async {
            let a = advs.get(&adv).await.ok()?;
            let c = a.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (c.status == "False" && c.reason == "UnknownField").then_some(c)
        },
    )
    .await;
    for field in want {
        assert!(
            c.message.contains(&format!("unknown field {field}")),
            "{field}: {}",
            c.message
        );
    }
    wait_event(kb, "default", &adv, "UnknownField").await;
}

/// MetalLB's sharing rule (equal backend keys: a Local Service's spec.selector, empty for Cluster): a
/// Service with externalTrafficPolicy: Local and a selector shares its address only with Local Services of
/// the same selector; a Local one without a selector shares with Cluster ones. A refusal is a
/// SharingConflict Event that says why.
#[tokio::test]
async fn local_services_share_only_with_local_services_of_the_same_selector() {
    let kb = controller().await;
    let ns = kb.namespace("local").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        pool(&format!("{ns}-p"), &ns, &["203.0.113.48/29"], json!({})),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    let svc = |name: &str, policy: &str, app: &str, port: u16, ip: Option<&str>| {
        let mut annotations = json!({"lb.ferrite.dev/allow-shared-ip": "k"});
        if let Some(ip) = ip {
            annotations["lb.ferrite.dev/ips"] = json!(ip);
        }
        json!({"metadata": {"name": name, "annotations": annotations},
               "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "selector": {"app": app},
                        "ports": [{"port": port}]}})
    };
    create(&svcs, svc("a", "Local", "x", 80, None)).await;
    let (a, _) = wait_ips(&svcs, "a", Duration::from_secs(10)).await;
    create(&svcs, svc("cluster", "Cluster", "x", 81, Some(&a[0]))).await;
    let note = wait_event(kb, &ns, "cluster", "SharingConflict").await;
    assert!(
        note.contains("externalTrafficPolicy: Cluster") && note.contains(&format!("{ns}/a has Local")),
        "{note}"
    );
    create(&svcs, svc("other-app", "Local", "y", 82, Some(&a[0]))).await;
    let note = wait_event(kb, &ns, "other-app", "SharingConflict").await;
    assert!(note.contains("app=y here, app=x on"), "{note}");
    create(&svcs, svc("same-app", "Local", "x", 83, Some(&a[0]))).await;
    let (same, _) = wait_ips(&svcs, "same-app", Duration::from_secs(10)).await;
    assert_eq!(same, a, "Local, same selector, same key, other port: shared");
    for name in ["cluster", "other-app"] {
        assert!(ips(&svcs.get(name).await.expect("get")).is_empty(), "{name}");
    }
    // Update: the Cluster one turns Local with the same selector -> it shares now.
    svcs.patch(
        "cluster",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"externalTrafficPolicy": "Local"}})),
    )
    .await
    .expect("patched");
    let (now, _) = wait_ips(&svcs, "cluster", Duration::from_secs(15)).await;
    assert_eq!(now, a);

    // A Local Service without a selector has MetalLB's empty backend key, like a Cluster one: they share.
    let no_selector = |name: &str, policy: &str, port: u16, ip: Option<&str>| {
        let mut annotations = json!({"lb.ferrite.dev/allow-shared-ip": "k2"});
        if let Some(ip) = ip {
            annotations["lb.ferrite.dev/ips"] = json!(ip);
        }
        json!({"metadata": {"name": name, "annotations": annotations},
               "spec": {"type": "LoadBalancer", "externalTrafficPolicy": policy, "ports": [{"port": port}]}})
    };
    create(&svcs, no_selector("plain-cluster", "Cluster", 90, None)).await;
    let (b, _) = wait_ips(&svcs, "plain-cluster", Duration::from_secs(10)).await;
    assert_ne!(b, a);
    create(&svcs, no_selector("local-no-selector", "Local", 91, Some(&b[0]))).await;
    let (shared, _) = wait_ips(&svcs, "local-no-selector", Duration::from_secs(10)).await;
    assert_eq!(shared, b, "Local without a selector shares with Cluster");
    // ... but a Local Service with a selector does not share with either.
    let mut with_selector = no_selector("local-selector", "Local", 92, Some(&b[0]));
    with_selector["spec"]["selector"] = json!({"app": "z"});
    create(&svcs, with_selector).await;
    let note = wait_event(kb, &ns, "local-selector", "SharingConflict").await;
    // The first holder by name is the Local one without a selector.
    assert!(
        note.contains(&format!("(app=z here, <none> on {ns}/local-no-selector)")),
        "{note}"
    );
}

/// The allocator names the pool in lb.ferrite.dev/ip-allocated-from-pool and, with the same value, in
/// MetalLB's metallb.io/ip-allocated-from-pool (a stale value MetalLB left is rewritten), removes both
/// when the Service loses its addresses, and strips the announcing-node annotation of earlier releases.
/// Sets the Service's type, retrying the API server's 409: kube-apiserver 1.20 can answer a merge
/// patch of a Service with a conflict when the controller writes the same Service at that moment.
async fn patch_type(svcs: &Api<Service>, to: &str) {
    for attempt in 0.. {
        match svcs
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"type": to}})),
            )
            .await
        {
            Ok(_) => return,
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 10 => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("patch type {to}: {e}"),
        }
    }
}

#[tokio::test]
async fn ip_allocated_from_pool_is_written_and_removed() {
    let kb = controller().await;
    let ns = kb.namespace("frompool").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool_name = format!("{ns}-p");
    create(&pools, pool(&pool_name, &ns, &["203.0.113.56/29"], json!({}))).await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(
        &svcs,
        lb_service(
            "web",
            json!({"lb.ferrite.dev/announcing-node": "old-node",
                   "metallb.io/ip-allocated-from-pool": "metallb-pool"}),
            json!([{"port": 80}]),
        ),
    )
    .await;
    let annotations = |s: &Service| s.metadata.annotations.clone().unwrap_or_default();
    let wait_annotation = |want: Option<String>| {
        let svcs = svcs.clone();
        async move {
            eventually(
                Duration::from_secs(10),
                &format!("ip-allocated-from-pool = {want:?}"),
                || async {
                    let s = svcs.get("web").await.ok()?;
                    let a = annotations(&s);
                    (a.get("lb.ferrite.dev/ip-allocated-from-pool") == want.as_ref()
                        && a.get("metallb.io/ip-allocated-from-pool") == want.as_ref())
                    .then_some(s)
                },
            )
            .await
        }
    };
    let s = wait_annotation(Some(pool_name.clone())).await;
    assert!(!ips(&s).is_empty());
    let s = eventually(Duration::from_secs(10), "announcing-node removed", || async {
        let s = svcs.get("web").await.ok()?;
        (!annotations(&s).contains_key("lb.ferrite.dev/announcing-node")).then_some(s)
    })
    .await;
    assert_eq!(
        annotations(&s).get("lb.ferrite.dev/ip-allocated-from-pool"),
        Some(&pool_name)
    );

    // No longer a LoadBalancer: address and annotation go.
    patch_type(&svcs, "ClusterIP").await;
    let s = wait_annotation(None).await;
    eventually(Duration::from_secs(10), "status cleared", || async {
        ips(&svcs.get("web").await.ok()?).is_empty().then_some(())
    })
    .await;
    drop(s);
    // A LoadBalancer again: back.
    patch_type(&svcs, "LoadBalancer").await;
    wait_annotation(Some(pool_name.clone())).await;

    // Delete and recreate under the same name: annotated again.
    svcs.delete("web", &Default::default()).await.expect("deleted");
    eventually(Duration::from_secs(10), "Service gone", || async {
        svcs.get_opt("web").await.ok()?.is_none().then_some(())
    })
    .await;
    create(&svcs, lb_service("web", json!({}), json!([{"port": 80}]))).await;
    wait_annotation(Some(pool_name)).await;
}

/// L2Advertisements are validated by the controller: a bad `/regex/` is Ready=False with a Warning
/// Event, a fixed one is Ready and says which pools it announces, one selecting nothing says so.
#[tokio::test]
async fn advertisements_get_a_ready_condition_and_events() {
    let kb = controller().await;
    let ns = kb.namespace("adv").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool_name = format!("{ns}-p");
    create(&pools, pool(&pool_name, &ns, &["203.0.113.64/29"], json!({}))).await;
    let advs: Api<L2Advertisement> = Api::all(client);
    let name = format!("{ns}-adv");
    let bad = json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement", "metadata": {"name": name},
                     "spec": {"ipPools": [pool_name], "interfaces": ["/eth[/"]}});
    create(&advs, bad.clone()).await;
    let ready = |status: &'static str, reason: &'static str| {
        let advs = advs.clone();
        let name = name.clone();
        async move {
            eventually(
                Duration::from_secs(10),
                &format!("Ready={status} {reason} on L2Advertisement {name}"),
                || async {
                    let a = advs.get(&name).await.ok()?;
                    let st = a.status?;
                    let c = st.conditions.into_iter().find(|c| c.type_ == "Ready")?;
                    (c.status == status
                        && c.reason == reason
                        && st.observed_generation == a.metadata.generation)
                        .then_some(c)
                },
            )
            .await
        }
    };
    let c = ready("False", "InvalidInterface").await;
    assert!(c.message.contains("/eth[/"), "{}", c.message);
    let note = wait_event(kb, "default", &name, "InvalidInterface").await;
    assert!(note.contains("/eth[/"), "{note}");

    // Update: fixed.
    advs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"interfaces": ["eth0", "/^enp.*/"]}})),
    )
    .await
    .expect("patched");
    let c = ready("True", "Ready").await;
    assert_eq!(c.message, format!("announces pools {pool_name}"));

    // The pool goes away: the advertisement selects nothing now (noted, still valid).
    pools
        .delete(&pool_name, &Default::default())
        .await
        .expect("deleted");
    let c = ready("True", "NoPools").await;
    assert!(c.message.contains("selects no pool"), "{}", c.message);

    // MetalLB's field name is refused, naming ours.
    advs.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"ipAddressPools": ["x"]}})),
    )
    .await
    .expect("patched");
    let c = ready("False", "UnknownField").await;
    assert!(c.message.contains("use ipPools"), "{}", c.message);

    // Delete and recreate the bad one: refused again.
    advs.delete(&name, &Default::default()).await.expect("deleted");
    eventually(Duration::from_secs(10), "advertisement gone", || async {
        advs.get_opt(&name).await.ok()?.is_none().then_some(())
    })
    .await;
    create(&advs, bad).await;
    ready("False", "InvalidInterface").await;
}

/// A pool without `l2` that no L2Advertisement selects is allocate-only: the controller says so in its
/// Announced condition (False, NoAdvertisement) with one Warning Event; an advertisement naming it makes
/// it Announced=True, naming the advertisement; one with an `l2` block is announced by it.
#[tokio::test]
async fn an_allocate_only_pool_is_told_it_is_not_announced() {
    let kb = controller().await;
    let ns = kb.namespace("announced").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let name = format!("{ns}-quiet");
    create(&pools, pool(&name, &ns, &["203.0.113.72/29"], json!({}))).await;
    let c = wait_pool_condition(&pools, &name, "Announced", "False", Some("NoAdvertisement")).await;
    assert!(c.message.contains("allocate-only"), "{}", c.message);
    let note = wait_event(kb, "default", &name, "NoAdvertisement").await;
    assert!(note.contains("no L2Advertisement selects this pool"), "{note}");

    let advs: Api<L2Advertisement> = Api::all(client.clone());
    let adv = format!("{ns}-adv");
    create(
        &advs,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement", "metadata": {"name": adv},
               "spec": {"ipPools": [name]}}),
    )
    .await;
    let c = wait_pool_condition(&pools, &name, "Announced", "True", Some("Announced")).await;
    assert!(
        c.message.contains(&format!("L2Advertisement {adv}")),
        "{}",
        c.message
    );

    let inline = format!("{ns}-inline");
    create(
        &pools,
        pool(&inline, &ns, &["203.0.113.80/29"], json!({"l2": {}})),
    )
    .await;
    let c = wait_pool_condition(&pools, &inline, "Announced", "True", Some("Announced")).await;
    assert!(c.message.contains("its l2 block"), "{}", c.message);
}
