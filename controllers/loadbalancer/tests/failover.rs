//! End to end on the box and real packets: the chart installed with helm, the allocator and three
//! speakers running as the chart's ServiceAccounts (speakers inside "node" network namespaces), a
//! Service that gets an address, the elected node answering the client's ARP with its own MAC; then that
//! node's speaker is killed and the address moves to another node (the client learns the new MAC from
//! the gratuitous ARP); the killed speaker comes back and does NOT take the address back.

mod common;

use common::*;
use ferrite_api::lb::{IPPool, annotations::ANNOUNCING_NODE};
use ferrite_e2e::{KubeBox, Supervised, netlab::NetLab};
use ferrite_kit::endpointslice::SliceVersion;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::json;
use std::{
    path::Path,
    time::{Duration, Instant},
};

fn start_speaker(lab: &NetLab, i: usize, kubeconfig: &Path) -> Supervised {
    let n = &lab.nodes[i];
    lab.spawn_in(
        &n.ns,
        "speaker",
        Path::new(env!("CARGO_BIN_EXE_ferrite-lb")),
        &ferrite_e2e::demo::speaker_args(kubeconfig, &n.name),
        &[("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")],
    )
    .expect("speaker starts")
}

async fn owner(svcs: &Api<Service>, name: &str) -> Option<String> {
    svcs.get(name)
        .await
        .ok()?
        .metadata
        .annotations?
        .get(ANNOUNCING_NODE)
        .cloned()
}

#[tokio::test]
async fn service_is_announced_by_one_node_fails_over_and_does_not_flip_back() {
    let kb = KubeBox::shared();
    ferrite_e2e::demo::install_chart(kb)
        .await
        .expect("chart installed");
    let controller_kc = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-controller")
        .await
        .expect("controller kubeconfig");
    let speaker_kc = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-speaker")
        .await
        .expect("speaker kubeconfig");

    let lab = NetLab::new(kb, 3).expect("lab network");
    lab.register_nodes(kb).await.expect("Node objects");
    let _controller = start_controller(kb, &controller_kc, &["--lease-namespace=ferrite-system"]).await;
    let mut speakers: Vec<Option<Supervised>> = (0..3)
        .map(|i| Some(start_speaker(&lab, i, &speaker_kc)))
        .collect();

    let client = kb.client().await;
    let ns = kb.namespace("failover").await;
    let pools: Api<IPPool> = Api::all(client.clone());
    create(
        &pools,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": format!("{ns}-lan")},
        "spec": {"addresses": ["192.0.2.100-192.0.2.110"], "serviceAllocation": {"namespaces": [ns]},
                 "l2": {"interfaces": ["eth0"]}}}),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    create(
        &svcs,
        json!({"metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}], "selector": {"app": "web"}}}),
    )
    .await;
    // What an endpoint controller would write: one ready endpoint on every node.
    let version = SliceVersion::detect(&client).await.expect("discovery");
    let slices: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &version.api_resource());
    let endpoints: Vec<_> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            json!({
                "addresses": [format!("198.51.100.{}", 10 + i)], "conditions": {"ready": true},
                "topology": {"kubernetes.io/hostname": n.name}, "nodeName": n.name,
            })
        })
        .collect();
    let mut slice = json!({"apiVersion": format!("discovery.k8s.io/{}", if version == SliceVersion::V1 { "v1" } else { "v1beta1" }),
        "kind": "EndpointSlice", "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 8080, "protocol": "TCP"}]});
    if version == SliceVersion::V1Beta1 {
        // v1beta1 on 1.20 carries the node in topology; nodeName is behind a feature gate there.
        for e in slice["endpoints"].as_array_mut().expect("array") {
            e.as_object_mut().expect("object").remove("nodeName");
        }
    }
    let obj: DynamicObject = serde_json::from_value(slice).expect("slice");
    slices
        .create(&PostParams::default(), &obj)
        .await
        .expect("EndpointSlice created");

    let (ips, took) = wait_ips(&svcs, "web", Duration::from_secs(15)).await;
    let vip = ips[0].clone();
    eprintln!("VIP {vip} in status after {took:?}");
    let first = eventually(Duration::from_secs(20), "an announcing node", || {
        owner(&svcs, "web")
    })
    .await;
    let first_node = lab
        .nodes
        .iter()
        .position(|n| n.name == first)
        .expect("owner is a lab node");
    let want = lab.nodes[first_node].mac.clone();
    let mac = eventually(
        Duration::from_secs(10),
        "an ARP answer from the elected node",
        || async { lab.arping(&vip).filter(|m| *m == want) },
    )
    .await;
    // Exactly one node answers: repeated asks always get the elected node's MAC.
    for _ in 0..5 {
        assert_eq!(
            lab.arping(&vip).as_deref(),
            Some(want.as_str()),
            "the elected node answers with its own MAC"
        );
    }
    let note = wait_event(kb, &ns, "web", "Announcing").await;
    assert!(note.contains(&first) && note.contains("eth0"), "{note}");

    // Kill the elected node's speaker: another node takes over and the client learns its MAC from the
    // gratuitous ARP, without asking.
    let killed = Instant::now();
    if let Some(mut s) = speakers[first_node].take() {
        s.crash();
    }
    let new_mac = eventually(
        Duration::from_secs(10),
        "the client's neighbour entry to move",
        || async { lab.client_neighbour(&vip).filter(|m| *m != mac) },
    )
    .await;
    let moved = killed.elapsed();
    let second = lab
        .node_by_mac(&new_mac)
        .expect("new MAC is a lab node")
        .name
        .clone();
    eprintln!("failover {first} -> {second}: client saw the new MAC after {moved:?}");
    assert_ne!(second, first);
    assert!(moved < Duration::from_secs(5), "failover took {moved:?}");
    assert_eq!(lab.arping(&vip).as_deref(), Some(new_mac.as_str()));
    eventually(
        Duration::from_secs(10),
        "the annotation to name the new owner",
        || async { (owner(&svcs, "web").await.as_deref() == Some(second.as_str())).then_some(()) },
    )
    .await;

    // The first node comes back: it must not take the address back (no flip-back).
    speakers[first_node] = Some(start_speaker(&lab, first_node, &speaker_kc));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        owner(&svcs, "web").await.as_deref(),
        Some(second.as_str()),
        "no flip-back"
    );
    assert_eq!(
        lab.arping(&vip).as_deref(),
        Some(new_mac.as_str()),
        "still answered by {second}"
    );
}
