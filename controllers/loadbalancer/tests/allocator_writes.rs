//! What the allocator writes per new Service, against the box (the 1.20 API server keeps metadata
//! written through a Service's status): `lb.ferrite.dev/ip-allocated-from-pool` rides along with the
//! status apply (one request), so no separate metadata patch owns it.

mod common;

use common::{crds, create, eventually, ips, start_controller};
use ferrite_api::lb::IPPool;
use ferrite_e2e::KubeBox;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use serde_json::json;
use std::time::Duration;

const MANAGER: &str = ferrite_api::names::LB_CONTROLLER_MANAGER;
const KEY: &str = "lb.ferrite.dev/ip-allocated-from-pool";

/// The managedFields entries (manager, operation) whose fields name the annotation.
fn owners_of_annotation(s: &Service) -> Vec<(String, String)> {
    s.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| {
            m.fields_v1
                .as_ref()
                // (a JSON pointer would need the key's '/' escaped)
                .and_then(|f| {
                    f.0.get("f:metadata")?
                        .get("f:annotations")?
                        .get(format!("f:{KEY}"))
                })
                .is_some()
        })
        .map(|m| {
            (
                m.manager.clone().unwrap_or_default(),
                m.operation.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_annotation_is_written_with_the_status_in_one_apply() {
    let kb = KubeBox::shared();
    crds(kb).await;
    let _running = start_controller(kb, &kb.kubeconfig, &["--leader-elect=false"]).await;
    let ns = kb.namespace("writes").await;
    let client = kb.client().await;
    let pools: Api<IPPool> = Api::all(client.clone());
    let pool_name = format!("{ns}-p");
    create(
        &pools,
        json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": pool_name},
               "spec": {"addresses": ["203.0.113.200/29"], "serviceAllocation": {"namespaces": [ns]}}}),
    )
    .await;
    let svcs: Api<Service> = Api::namespaced(client, &ns);
    create(
        &svcs,
        json!({"metadata": {"name": "web"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    )
    .await;
    let s = eventually(Duration::from_secs(15), "address and annotation", || async {
        let s = svcs.get("web").await.ok()?;
        (!ips(&s).is_empty() && s.metadata.annotations.as_ref()?.get(KEY) == Some(&pool_name)).then_some(s)
    })
    .await;
    // Only the controller's server-side apply owns the annotation: no merge patch (operation Update)
    // was needed after the status write.
    assert_eq!(
        owners_of_annotation(&s),
        vec![(MANAGER.to_string(), "Apply".to_string())],
        "managedFields: {:?}",
        s.metadata.managed_fields
    );
    // The same apply owns the status: one write carried both.
    let apply = s
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some(MANAGER) && m.operation.as_deref() == Some("Apply"))
        .expect("the controller's apply entry");
    let fields = &apply.fields_v1.as_ref().expect("fields").0;
    assert!(
        fields.pointer("/f:status/f:loadBalancer").is_some(),
        "the apply that wrote the annotation also wrote the status: {fields}"
    );
}
