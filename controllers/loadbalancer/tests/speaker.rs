//! The speaker as the chart deploys it, on the box: its ServiceAccount (`ferrite-lb-speaker`, the
//! chart's ClusterRole) cannot write Services at all, yet it records who announces each Service in a
//! `ServiceL2Status` (named like the Service, in its namespace, owned by it, labelled, written with the
//! speaker's field manager) and removes it when it stops announcing (Service deleted, graceful
//! shutdown), and deletes one a vanished node left behind for a Service nobody announces. Also:
//! `ferrite_lb_speaker_announced{service,protocol="layer2",node,ip}`; an allocate-only
//! pool (no advertisement, no `l2`) is allocated from but never announced; an L2Advertisement whose
//! interface this node does not have becomes a Warning Event `NoInterface` on the advertisement.
//!
//! One lab node (a network namespace with `eth0` on the lab bridge), the allocator and the speaker both
//! running as the chart's ServiceAccounts. Needs root and `apt-get install iproute2 arping ndisc6 socat`.

mod common;

use common::{
    lab::{
        Accounts, Slices, Speakers, built_binary, registered_lab, speaker_http, wait_status, wait_status_gone,
    },
    *,
};
use ferrite_api::lb::{IPPool, L2Advertisement, NODE_LABEL, SERVICE_NAME_LABEL, ServiceL2Status};
use ferrite_e2e::{KubeBox, netlab::Protocol};
use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::json;
use std::{net::IpAddr, time::Duration};

/// The field managers of an object.
fn managers(meta: &kube::api::ObjectMeta) -> Vec<String> {
    meta.managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect()
}

fn status_code<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Option<u16> {
    match r {
        Err(kube::Error::Api(e)) => Some(e.code),
        Err(e) => panic!("not an API error: {e}"),
        Ok(_) => None,
    }
}

#[tokio::test]
async fn speaker_cannot_write_services_and_records_who_announces_in_a_service_l2_status() {
    let kb = KubeBox::shared();
    let accounts = Accounts::install(kb).await;
    let admin = kb.client().await;
    let ns = kb.namespace("speaker").await;
    let svcs: Api<Service> = Api::namespaced(admin.clone(), &ns);

    // RBAC first, before anything runs: the speaker's account may read Services, never write them.
    LbService::new("web")
        .pool(&format!("{ns}-lan"))
        .create(&svcs)
        .await;
    let as_speaker = client_from(&accounts.speaker).await;
    let speaker_svcs: Api<Service> = Api::namespaced(as_speaker.clone(), &ns);
    assert!(
        speaker_svcs.get("web").await.is_ok(),
        "the speaker reads Services"
    );
    let merge = Patch::Merge(json!({"metadata": {"annotations": {"lb.ferrite.dev/announcing-node": "x"}}}));
    assert_eq!(
        status_code(speaker_svcs.patch("web", &PatchParams::default(), &merge).await),
        Some(403),
        "a merge patch of a Service by the speaker's account"
    );
    let apply = Patch::Apply(
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web",
        "annotations": {"lb.ferrite.dev/announcing-node": "x"}}}),
    );
    assert_eq!(
        status_code(
            speaker_svcs
                .patch(
                    "web",
                    &PatchParams::apply("lb.ferrite.dev/speaker").force(),
                    &apply
                )
                .await
        ),
        Some(403),
        "a server-side apply of a Service by the speaker's account"
    );
    let status = Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.250"}]}}}));
    assert_eq!(
        status_code(
            speaker_svcs
                .patch_status("web", &PatchParams::default(), &status)
                .await
        ),
        Some(403),
        "a status patch of a Service by the speaker's account"
    );

    let lab = registered_lab(kb, 1).await;
    let node = lab.nodes[0].clone();
    let _controller = accounts.start_controller(kb).await;
    let mut speakers = Speakers::start(&lab, built_binary(), &accounts.speaker, &[]);

    // Three pools of this namespace: one announced by its inline l2, one allocate-only (no l2, no
    // advertisement), one announced by an L2Advertisement naming an interface the node does not have.
    let pools: Api<IPPool> = Api::all(admin.clone());
    for (name, range, l2) in [
        (
            "lan",
            "192.0.2.120-192.0.2.123",
            Some(json!({"interfaces": ["eth0"]})),
        ),
        ("quiet", "192.0.2.124-192.0.2.125", None),
        ("eth7", "192.0.2.126-192.0.2.127", None),
    ] {
        let mut extra = json!({"autoAssign": false});
        if let Some(l2) = l2 {
            extra["l2"] = l2;
        }
        create(&pools, pool(&format!("{ns}-{name}"), &ns, &[range], extra)).await;
    }
    let ads: Api<L2Advertisement> = Api::all(admin.clone());
    let ad_name = format!("{ns}-eth7");
    create(
        &ads,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement",
            "metadata": {"name": ad_name}, "spec": {"ipPools": [format!("{ns}-eth7")], "interfaces": ["eth7"]}}),
    )
    .await;

    let slices = Slices::new(&admin, &ns).await;
    // One ready endpoint, on the node.
    let v4 = IpAddr::V4(node.ip4);
    let endpoint = |service: &'static str| slices.on_nodes(&lab, service, &[0], v4, Protocol::Tcp);
    endpoint("web").await;
    // A Service of pool `<ns>-<pool>` with its endpoint; its addresses.
    let served = |name: &'static str, pool: &'static str| {
        let (svcs, ns, endpoint) = (&svcs, &ns, &endpoint);
        async move {
            LbService::new(name)
                .pool(&format!("{ns}-{pool}"))
                .create(svcs)
                .await;
            endpoint(name).await;
            wait_ips(svcs, name, Duration::from_secs(15)).await.0
        }
    };
    let (ips, _) = wait_ips(&svcs, "web", Duration::from_secs(15)).await;
    let vip = ips[0].clone();

    // The ServiceL2Status: the speaker's own record, although it may not touch the Service.
    let statuses: Api<ServiceL2Status> = Api::namespaced(admin.clone(), &ns);
    let logs = || speakers.get(0).log_tail(40);
    let st = wait_status(&statuses, "web", Duration::from_secs(20), logs).await;
    let svc = svcs.get("web").await.expect("Service");
    assert_eq!(st.spec.node, node.name);
    assert_eq!(st.spec.addresses, std::slice::from_ref(&vip));
    assert_eq!(st.spec.interfaces, ["eth0"]);
    assert!(st.spec.since.is_some());
    let labels = st.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(SERVICE_NAME_LABEL).map(String::as_str), Some("web"));
    assert_eq!(labels.get(NODE_LABEL), Some(&node.name));
    let owners = st.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("Service", "web")
    );
    assert_eq!(Some(&owners[0].uid), svc.metadata.uid.as_ref());
    let st_managers = managers(&st.metadata);
    assert!(
        st_managers.iter().any(|m| m == "lb.ferrite.dev/speaker"),
        "{st_managers:?}"
    );
    // The Service itself carries nothing from the speaker.
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    assert!(
        !annotations.contains_key("lb.ferrite.dev/announcing-node"),
        "{annotations:?}"
    );
    let svc_managers = managers(&svc.metadata);
    assert!(
        !svc_managers.iter().any(|m| m == "lb.ferrite.dev/speaker"),
        "{svc_managers:?}"
    );
    // The speaker's own account can read its records (kubectl get servicel2statuses).
    let speaker_statuses: Api<ServiceL2Status> = Api::namespaced(as_speaker.clone(), &ns);
    assert!(speaker_statuses.get("web").await.is_ok());

    // Answered on the LAN, and counted as MetalLB counts it.
    eventually(Duration::from_secs(10), "an ARP answer for the VIP", || async {
        lab.arping(&vip).filter(|m| *m == node.mac)
    })
    .await;
    let (_, metrics) = speaker_http(&node.ns, "/metrics").expect("the speaker's admin server answers");
    let want = [
        format!("service=\"{ns}/web\""),
        "protocol=\"layer2\"".to_string(),
        format!("node=\"{}\"", node.name),
        format!("ip=\"{vip}\""),
    ];
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(
        metric(&metrics, "ferrite_lb_speaker_announced", &want),
        Some(1.0),
        "{metrics}"
    );

    // Allocate-only: an address, but no announcement, no record, no ARP answer.
    let quiet_ips = served("quiet", "quiet").await;
    // An announced Service created after it gets its record: the speaker has seen "quiet" by then.
    served("later", "lan").await;
    wait_status(&statuses, "later", Duration::from_secs(20), logs).await;
    assert!(
        statuses.get_opt("quiet").await.expect("get").is_none(),
        "an allocate-only pool's Service got a ServiceL2Status"
    );
    assert_eq!(
        lab.arping_within(&quiet_ips[0], Duration::from_millis(200), Duration::from_secs(2)),
        None,
        "an allocate-only pool's address was answered"
    );

    // A named interface missing on this node: a Warning Event on the L2Advertisement, from this node.
    let nowhere_ips = served("nowhere", "eth7").await;
    let events: Api<Event> = Api::all(admin.clone());
    let note = eventually(
        Duration::from_secs(15),
        "Warning NoInterface on the L2Advertisement",
        || async {
            events
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("NoInterface")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(ad_name.as_str())
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("L2Advertisement")
                })
                .map(|e| (e.type_.unwrap_or_default(), e.note.unwrap_or_default()))
        },
    )
    .await;
    assert_eq!(note.0, "Warning");
    assert!(
        note.1.contains(&node.name) && note.1.contains("eth7") && note.1.contains(&nowhere_ips[0]),
        "{}",
        note.1
    );
    assert_eq!(
        lab.arping_within(
            &nowhere_ips[0],
            Duration::from_millis(200),
            Duration::from_secs(2)
        ),
        None,
        "answered although no interface matches"
    );

    // A record left by a node whose speaker is gone, for a Service nobody is elected for (no endpoint):
    // nobody would rewrite it, so a live speaker deletes it.
    LbService::new("orphan")
        .pool(&format!("{ns}-lan"))
        .create(&svcs)
        .await;
    wait_ips(&svcs, "orphan", Duration::from_secs(15)).await;
    let orphan_uid = svcs
        .get("orphan")
        .await
        .expect("Service")
        .metadata
        .uid
        .unwrap_or_default();
    create(
        &statuses,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "ServiceL2Status",
            "metadata": {"name": "orphan", "labels": {SERVICE_NAME_LABEL: "orphan", NODE_LABEL: "ghost"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "orphan", "uid": orphan_uid}]},
            "spec": {"node": "ghost", "addresses": ["192.0.2.99"]}}),
    )
    .await;
    wait_status_gone(
        &statuses,
        "orphan",
        Duration::from_secs(15),
        "it was written for a node without a speaker",
        logs,
    )
    .await;

    // The Service goes: so does its record (owner reference, or the speaker's delete).
    svcs.delete("web", &DeleteParams::default())
        .await
        .expect("Service deleted");
    wait_status_gone(
        &statuses,
        "web",
        Duration::from_secs(15),
        "the Service was deleted",
        logs,
    )
    .await;

    // Graceful shutdown: the speaker deletes the records naming its node before it exits.
    assert!(statuses.get_opt("later").await.expect("get").is_some());
    let speaker = speakers.get_mut(0);
    speaker.stop(Duration::from_secs(10));
    let log = std::fs::read_to_string(&speaker.log).unwrap_or_default();
    let tail = speaker.log_tail(40);
    assert!(log.contains("ServiceL2Statuses of this node deleted"), "{tail}");
    wait_status_gone(&statuses, "later", Duration::from_secs(2), "SIGTERM", || {
        tail.clone()
    })
    .await;
}
