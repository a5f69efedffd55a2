//! Events against the box's real API server: an identical repeat within the TTL is the first Event's
//! series (count 2 at once, the 3rd by `flush`), even when the object's resourceVersion moved; another
//! note, reason or object is a new Event; a cluster-scoped object's Event lands.

use ferrite_e2e::KubeBox;
use ferrite_kit::{events::Events, leader::Leadership};
use k8s_openapi::api::{
    core::v1::{Namespace, ObjectReference},
    events::v1::Event,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use std::time::Duration;

#[tokio::test]
async fn repeats_become_a_series_and_other_reasons_new_events() {
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let ns = format!("kit-events-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    let created = nss
        .create(&PostParams::default(), &n)
        .await
        .expect("namespace created");
    let events = Events::new(client.clone(), "kit.ferrite.dev/test", Leadership::always("test"));
    let on_at = |name: &str, rv: &str| ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        namespace: Some(ns.clone()),
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        resource_version: Some(rv.into()),
        ..Default::default()
    };
    let on = |name: &str| on_at(name, "1");
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    let count_of = |note: &'static str| {
        let api = api.clone();
        async move {
            let list = api.list(&ListParams::default()).await.expect("listed");
            list.items
                .into_iter()
                .find(|e| e.note.as_deref() == Some(note))
                .map(|e| e.series.map_or(1, |s| s.count))
        }
    };
    events.warning(&on_at("a", "1"), "Broken", "Check", "first").await;
    events.warning(&on_at("a", "2"), "Broken", "Check", "first").await;
    assert_eq!(
        count_of("first").await,
        Some(2),
        "the first repeat is written at once"
    );
    events.warning(&on_at("a", "3"), "Broken", "Check", "first").await;
    assert_eq!(
        count_of("first").await,
        Some(2),
        "the third waits (count 4, or the series' end)"
    );
    events.flush().await;
    assert_eq!(count_of("first").await, Some(3), "flush writes what is pending");
    events.warning(&on("a"), "Broken", "Check", "second").await;
    events.normal(&on("a"), "Fixed", "Check", "ok").await;
    events.warning(&on("b"), "Broken", "Check", "b").await;
    // A cluster-scoped object (its Event goes to "default").
    let ns_ref = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Namespace".into()),
        name: Some(ns.clone()),
        uid: created.metadata.uid.clone(),
        ..Default::default()
    };
    events.normal(&ns_ref, "Seen", "Check", "cluster-scoped").await;
    events.normal(&ns_ref, "Seen", "Check", "cluster-scoped").await;

    let list = api.list(&ListParams::default()).await.expect("listed");
    let mut seen: Vec<(String, String, Option<i32>, Option<String>)> = list
        .items
        .iter()
        .map(|e| {
            let r = e.regarding.as_ref().expect("regarding");
            (
                r.name.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.series.as_ref().map(|s| s.count),
                e.note.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            ("a".into(), "Broken".into(), None, Some("second".into())),
            ("a".into(), "Broken".into(), Some(3), Some("first".into())),
            ("a".into(), "Fixed".into(), None, Some("ok".into())),
            ("b".into(), "Broken".into(), None, Some("b".into())),
        ],
        "one Event per object, reason and note, identical repeats counted"
    );
    let default: Api<Event> = Api::namespaced(client.clone(), "default");
    let mine: Vec<Event> = default
        .list(&ListParams::default())
        .await
        .expect("listed")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(ns.as_str()))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!(mine[0].series.as_ref().map(|s| s.count), Some(2));
    for e in mine {
        if let Some(name) = e.metadata.name {
            let _ = default.delete(&name, &DeleteParams::default()).await;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), nss.delete(&ns, &DeleteParams::default())).await;
}
