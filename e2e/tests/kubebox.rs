//! The box itself: a real API server that stores and watches objects, enforces RBAC for ServiceAccount
//! kubeconfigs, and works with the kubectl that install-deps.sh provides.

use ferrite_e2e::KubeBox;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use std::time::Duration;

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"k": value}}))
        .expect("valid")
}

#[tokio::test]
async fn creates_and_watches_an_object() {
    let kb = KubeBox::shared();
    let ns = kb.namespace("box").await;
    let api: Api<ConfigMap> = Api::namespaced(kb.client().await, &ns);
    let mut stream = watcher(
        api.clone(),
        watcher::Config::default().fields("metadata.name=probe"),
    )
    .applied_objects()
    .boxed();
    api.create(&PostParams::default(), &configmap("probe", "one"))
        .await
        .expect("created");
    let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("watch event within 10 s")
        .expect("watch ok")
        .expect("an object");
    assert_eq!(
        first.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
        Some("one")
    );

    let patch = serde_json::json!({"data": {"k": "two"}});
    api.patch("probe", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    let second = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("second watch event within 10 s")
        .expect("watch ok")
        .expect("an object");
    assert_eq!(
        second.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
        Some("two")
    );
}

#[tokio::test]
async fn service_account_kubeconfig_has_exactly_its_rbac() {
    let kb = KubeBox::shared();
    let ns = kb.namespace("rbac").await;
    let kc = kb
        .service_account_kubeconfig(&ns, "reader")
        .await
        .expect("kubeconfig minted");

    let run = |args: &[&str]| {
        let out = kb
            .kubectl()
            .env("KUBECONFIG", &kc)
            .args(args)
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["-n", &ns, "get", "configmaps"]);
    assert!(
        !ok && err.contains("forbidden"),
        "no RBAC yet, so forbidden: {err}"
    );

    let admin = |args: &[&str]| {
        let out = kb.kubectl().args(args).output().expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    admin(&[
        "-n",
        &ns,
        "create",
        "role",
        "read-cm",
        "--verb=get,list",
        "--resource=configmaps",
    ]);
    admin(&[
        "-n",
        &ns,
        "create",
        "rolebinding",
        "read-cm",
        "--role=read-cm",
        &format!("--serviceaccount={ns}:reader"),
    ]);
    // RBAC caches settle within a moment.
    let mut last = String::new();
    for _ in 0..50 {
        let (ok, err) = run(&["-n", &ns, "get", "configmaps"]);
        if ok {
            let (ok, err) = run(&["-n", &ns, "create", "configmap", "x"]);
            assert!(
                !ok && err.contains("forbidden"),
                "read-only role must not create: {err}"
            );
            return;
        }
        last = err;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("the role binding never took effect: {last}");
}
