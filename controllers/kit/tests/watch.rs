//! Shared watches against the box's real API server: one watch per kind however many subscribers,
//! objects cached and delivered without managedFields (and without kubectl's last-applied annotation
//! when asked), both subscribers seeing the same changes, deletes included; a metadata-only watch; two
//! controllers run by the kit's runner from one shared watch.

use ferrite_e2e::KubeBox;
use ferrite_kit::{
    admin::Readiness,
    leader::Leadership,
    metrics::ReconcileMetrics,
    runner::{self, RunOptions},
    watch::{Change, LAST_APPLIED, Subscription, Trim, Watches, metadata_namespaced},
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
