//! Shared watches against the box's real API server: one watch per kind however many subscribers,
//! objects cached and delivered without managedFields (and without kubectl's last-applied annotation
//! when asked), both subscribers seeing the same changes, deletes included; a metadata-only watch; two
//! controllers run by the kit's runner from one shared watch; a transformed watch (data dropped before
//! caching) beside the plain one.

use ferrite_e2e::KubeBox;
use ferrite_kit::{
    admin::Readiness,
    leader::Leadership,
    metrics::ReconcileMetrics,
    runner::{self, RunOptions},
    watch::{Change, LAST_APPLIED, Subscription, Transform, Trim, Watches, metadata_namespaced},
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::{controller::Action, watcher},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

async fn next_for<K>(sub: &mut Subscription<K>, name: &str) -> Change<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let wait = async {
        loop {
            let c = sub.next_change().await.expect("watch still running");
            if c.object().meta().name.as_deref() == Some(name) {
                return c;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("no change of {name} within 20 s"))
}

#[tokio::test]
async fn two_subscribers_of_one_trimmed_watch_see_the_same_changes_and_two_controllers_share_it() {
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let ns = format!("kit-watch-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    nss.create(&PostParams::default(), &n)
        .await
        .expect("namespace created");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watches = Watches::new(shutdown.clone());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

    let w1 = watches.shared(api.clone(), watcher::Config::default(), Trim::all());
    let w2 = watches.shared(api.clone(), watcher::Config::default(), Trim::all());
    assert!(w1.same_as(&w2), "one watch per kind, scope and options");
    let untrimmed = watches.shared(api.clone(), watcher::Config::default(), Trim::default());
    assert!(!untrimmed.same_as(&w1), "other options, other watch");
    let meta = watches.shared(
        metadata_namespaced::<ConfigMap>(client.clone(), &ns),
        watcher::Config::default(),
        Trim::default(),
    );
    let mut s1 = w1.subscribe();
    let mut s2 = w2.subscribe();
    let mut s3 = untrimmed.subscribe();
    let mut sm = meta.subscribe();
    assert_eq!(w1.subscriber_count(), 2);

    // Two controllers, one watch: both reconcile every object of it.
    let counts = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let readiness = Readiness::default();
    let registry = ferrite_kit::prometheus::Registry::new();
    let metrics = ReconcileMetrics::register(&registry, "watchtest").expect("metrics");
    for (i, c) in counts.iter().enumerate() {
        let opts = RunOptions {
            // Two controllers of one kind in one binary: each sets its own label, the runner keeps it.
            metrics: metrics.for_kind(&format!("ConfigMap-{i}")),
            leadership: Leadership::always("test"),
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            resync: Duration::from_secs(300),
            backoff: Default::default(),
        };
        tokio::spawn(runner::run(
            w1.controller(),
            c.clone(),
            |_cm: Arc<ConfigMap>, n: Arc<AtomicUsize>| async move {
                n.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ferrite_kit::Error>(Action::requeue(Duration::from_secs(300)))
            },
            opts,
        ));
    }
    assert_eq!(w1.subscriber_count(), 4, "two subscriptions and two controllers");

    // Server-side apply as kubectl would: managedFields on the server, plus a last-applied annotation.
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "shared", "namespace": ns,
                     "annotations": {LAST_APPLIED: "{\"big\": \"copy\"}", "team": "dns"}},
        "data": {"k": "v"}
    });
    let applied = api
        .patch("shared", &PatchParams::apply("kit-test"), &Patch::Apply(&body))
        .await
        .expect("applied");
    assert!(
        applied.metadata.managed_fields.is_some(),
        "the server keeps managedFields"
    );

    let a = next_for(&mut s1, "shared").await;
    let b = next_for(&mut s2, "shared").await;
    for c in [&a, &b] {
        let Change::Applied(o) = c else {
            panic!("created, not deleted")
        };
        assert!(o.metadata.managed_fields.is_none(), "managedFields stripped");
        let ann = o.annotations();
        assert!(!ann.contains_key(LAST_APPLIED), "last-applied stripped: {ann:?}");
        assert_eq!(ann.get("team").map(String::as_str), Some("dns"));
        assert_eq!(
            o.data.as_ref().and_then(|d| d.get("k")).map(String::as_str),
            Some("v")
        );
    }
    assert!(
        Arc::ptr_eq(a.object(), b.object()),
        "both see the one cached object"
    );
    let cached = w1
        .store()
        .state()
        .into_iter()
        .find(|o| o.name_any() == "shared")
        .expect("cached");
    assert!(cached.metadata.managed_fields.is_none());
    let Change::Applied(u) = next_for(&mut s3, "shared").await else {
        panic!("created")
    };
    assert!(u.metadata.managed_fields.is_none());
    assert!(
        u.annotations().contains_key(LAST_APPLIED),
        "kept without Trim::last_applied"
    );
    let Change::Applied(m) = next_for(&mut sm, "shared").await else {
        panic!("created")
    };
    assert!(m.metadata.managed_fields.is_none());
    assert_eq!(m.annotations().get("team").map(String::as_str), Some("dns"));

    // Both controllers reconciled it.
    for _ in 0..100 {
        if counts.iter().all(|c| c.load(Ordering::SeqCst) >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, c) in counts.iter().enumerate() {
        assert!(c.load(Ordering::SeqCst) >= 1, "controller {i} never reconciled");
    }
    // The runner's readiness gate follows the shared cache (it polls every 250 ms).
    for _ in 0..50 {
        if readiness.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(readiness.is_ready(), "{:?}", readiness.waiting_for());
    let mut text = Vec::new();
    ferrite_kit::prometheus::Encoder::encode(
        &ferrite_kit::prometheus::TextEncoder::new(),
        &registry.gather(),
        &mut text,
    )
    .expect("encodes");
    let text = String::from_utf8(text).expect("utf-8");
    for i in 0..2 {
        let line = format!("ferrite_watchtest_reconcile_total{{kind=\"ConfigMap-{i}\",result=\"success\"}} ");
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line}in\n{text}"));
        assert!(n >= 1, "{line}{n}");
    }
    assert!(
        !text.contains("kind=\"ConfigMap\""),
        "the runner kept the labels set:\n{text}"
    );

    // A delete reaches both subscribers, with the last state.
    api.delete("shared", &DeleteParams::default())
        .await
        .expect("deleted");
    for s in [&mut s1, &mut s2] {
        let Change::Deleted(o) = next_for(s, "shared").await else {
            panic!("deleted, not applied")
        };
        assert_eq!(o.name_any(), "shared");
    }
    shutdown.cancel();
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}

#[tokio::test]
async fn a_transformed_watch_caches_and_delivers_only_what_its_transform_keeps() {
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let ns = format!("kit-watch-t-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    nss.create(&PostParams::default(), &n)
        .await
        .expect("namespace created");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let watches = Watches::new(shutdown.clone());
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    // Like a controller that reads one key: the rest of data never reaches the cache.
    let keep_small = || {
        Transform::new("keep-small", |c: &mut ConfigMap| {
            if let Some(d) = c.data.as_mut() {
                d.retain(|k, _| k == "small");
            }
        })
    };
    let t1 = watches.shared_transformed(api.clone(), watcher::Config::default(), Trim::all(), keep_small());
    let t2 = watches.shared_transformed(api.clone(), watcher::Config::default(), Trim::all(), keep_small());
    assert!(t1.same_as(&t2), "one watch per transform name");
    let plain = watches.shared(api.clone(), watcher::Config::default(), Trim::all());
    assert!(!plain.same_as(&t1), "the untransformed watch is another one");
    let other = watches.shared_transformed(
        api.clone(),
        watcher::Config::default(),
        Trim::all(),
        Transform::new("drop-all", |c: &mut ConfigMap| c.data = None),
    );
    assert!(!other.same_as(&t1), "another transform, another watch");
    let mut st = t1.subscribe();
    let mut sp = plain.subscribe();
    let mut so = other.subscribe();

    let big = "x".repeat(64 * 1024);
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "shaped", "namespace": ns},
        "data": {"small": "1", "big": big}
    }))
    .expect("configmap");
    api.create(&PostParams::default(), &cm).await.expect("created");

    let Change::Applied(t) = next_for(&mut st, "shaped").await else {
        panic!("created")
    };
    let d = t.data.as_ref().expect("data");
    assert_eq!(
        d.len(),
        1,
        "only the kept key: {:?}",
        d.keys().collect::<Vec<_>>()
    );
    assert_eq!(d.get("small").map(String::as_str), Some("1"));
    assert!(t.metadata.managed_fields.is_none(), "trimmed too");
    let cached = t1
        .store()
        .state()
        .into_iter()
        .find(|o| o.name_any() == "shaped")
        .expect("cached");
    assert!(Arc::ptr_eq(&cached, &t), "the subscriber got the cached object");
    let Change::Applied(p) = next_for(&mut sp, "shaped").await else {
        panic!("created")
    };
    assert_eq!(
        p.data.as_ref().and_then(|d| d.get("big")).map(String::len),
        Some(64 * 1024),
        "the plain watch keeps everything"
    );
    let Change::Applied(o) = next_for(&mut so, "shaped").await else {
        panic!("created")
    };
    assert!(o.data.is_none());

    // An update and the delete go through the transform as well.
    let patch = serde_json::json!({"data": {"small": "2", "big": "y"}});
    api.patch("shaped", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patched");
    let Change::Applied(t) = next_for(&mut st, "shaped").await else {
        panic!("updated")
    };
    let d = t.data.as_ref().expect("data");
    assert_eq!((d.len(), d.get("small").map(String::as_str)), (1, Some("2")));
    api.delete("shaped", &DeleteParams::default())
        .await
        .expect("deleted");
    let Change::Deleted(t) = next_for(&mut st, "shaped").await else {
        panic!("deleted")
    };
    assert_eq!(
        t.data.as_ref().map(|d| d.len()),
        Some(1),
        "the last state, transformed"
    );
    shutdown.cancel();
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}
