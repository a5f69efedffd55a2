//! The typed EndpointSlice view over the box's real API server (1.20: `discovery.k8s.io/v1beta1` only):
//! the version is detected, and a slice written there reads back with ports, conditions, zones and its
//! Service.

use ferrite_e2e::KubeBox;
use ferrite_kit::endpointslice::{self, SliceVersion};
use kube::api::{Api, DynamicObject, PostParams};

#[tokio::test]
async fn a_v1beta1_slice_reads_back_as_the_typed_view_of_its_service() {
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let version = SliceVersion::detect(&client).await.expect("discovery");
    // The box is 1.20; on a newer server the same code reads v1.
    let group_version = match version {
        SliceVersion::V1 => "discovery.k8s.io/v1",
        SliceVersion::V1Beta1 => "discovery.k8s.io/v1beta1",
    };
    let ns = "default";
    let svc = format!("kit-es-{}", std::process::id());
    let zone_field = match version {
        SliceVersion::V1 => serde_json::json!({"nodeName": "node-a", "zone": "z1"}),
        SliceVersion::V1Beta1 => serde_json::json!({
            "topology": {"kubernetes.io/hostname": "node-a", "topology.kubernetes.io/zone": "z1"}
        }),
    };
    let mut ready = serde_json::json!({
        "addresses": ["192.0.2.20"], "conditions": {"ready": true}
    });
    for (k, v) in zone_field.as_object().expect("object") {
        ready[k] = v.clone();
    }
    let slice: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": group_version, "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"}],
        "endpoints": [
            ready,
            {"addresses": ["192.0.2.21"], "conditions": {"ready": false}}
        ]
    }))
    .expect("slice");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &version.api_resource());
    api.create(&PostParams::default(), &slice)
        .await
        .expect("slice created");

    let slices = endpointslice::list_for_service(&client, version, ns, &svc)
        .await
        .expect("listed");
    assert_eq!(slices.len(), 1, "{slices:?}");
    let s = &slices[0];
    assert_eq!(s.service.as_deref(), Some(svc.as_str()));
    assert_eq!(s.address_type, "IPv4");
    let http = s.port(Some("http")).expect("http port");
    assert_eq!(
        (http.port, http.protocol.as_str(), http.app_protocol.as_deref()),
        (Some(8080), "TCP", Some("http"))
    );
    assert_eq!(s.endpoints.len(), 2);
    assert_eq!(s.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
    assert!(s.endpoints[0].ready && s.endpoints[0].serving && !s.endpoints[0].terminating);
    assert!(!s.endpoints[1].serving);
    assert_eq!(s.serving_nodes().collect::<Vec<_>>(), vec!["node-a"]);
    assert!(
        endpointslice::list_for_service(&client, version, ns, "no-such-service")
            .await
            .expect("listed")
            .is_empty()
    );
    api.delete(&format!("{svc}-1"), &Default::default())
        .await
        .expect("deleted");
}
