//! A shared Service watch that kube-apiserver force-closes ("Forcing watcher close due to
//! unresponsiveness") recovers in seconds, not at the watch's 290 s timeout.
//!
//! How it is reproduced: the watch's reader stops while a few hundred large Services are deleted
//! (a Transform that blocks, as a busy controller would block the read), so the API server's
//! per-watcher buffer overflows and the cacher drops the watcher. On the box's kube-apiserver 1.20
//! the HTTP response of a Service watch then stays open with nothing more in it (the registry's
//! decorated watcher does not close its channel when the cacher's closes; kubernetes#102539), until
//! the watch's own timeout. The kit's stall check sees the API server has changes the watch did not
//! deliver and starts the watch again (list and watch), so the subscriber sees every delete and the
//! Services created during the stall within seconds.

use ferrite_e2e::KubeBox;
use ferrite_kit::watch::{Change, Subscription, Transform, Trim, WatchMetrics, Watches};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    runtime::watcher,
};
use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

/// Services deleted while the reader stops: each carries a 128 KiB annotation, so the burst (~38 MB
/// of events) is more than the socket buffers and the cacher's channels hold (here the client had
/// ~190 of them, ~24 MB, before the cacher gave up: fewer do not reproduce it reliably). Creating and
/// deleting them is most of the test's time: ~30 s on a quiet machine, ~85 s at load 4 on 2 cores.
const DELETED: usize = 300;
/// Services created during the stall (small).
const CREATED: usize = 20;
/// The bound on recovery (the stall check: 5 s quiet, a probe, 2 s grace, a relist).
const RECOVERY: Duration = Duration::from_secs(30);

fn service(ns: &str, name: &str, pad: Option<&str>) -> Service {
    let mut v = serde_json::json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
    });
    if let Some(pad) = pad {
        v["metadata"]["annotations"] = serde_json::json!({ "pad": pad });
    }
    serde_json::from_value(v).expect("service")
}

async fn parallel<F: std::future::Future<Output = ()>>(n: usize, f: impl Fn(usize) -> F) {
    futures::stream::iter(0..n)
        .map(f)
        .buffer_unordered(32)
        .for_each(|()| async {})
        .await;
}

/// Takes changes until `done` says enough or `within` passed; returns how long it took.
async fn take_until(
    sub: &mut Subscription<Service>,
    within: Duration,
    mut done: impl FnMut(&Change<Service>) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    let wait = async {
        while let Some(c) = sub.next_change().await {
            if done(&c) {
                return true;
            }
        }
        false
    };
    match tokio::time::timeout(within, wait).await {
        Ok(true) => Some(start.elapsed()),
        _ => None,
    }
}

// Reader states of the blocking transform.
const READING: u8 = 0;
const ARMED: u8 = 1;
const BLOCKED: u8 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_force_closed_service_watch_recovers_within_seconds() {
    // The kit's "watch stalled" warning shows with the test's output.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "ferrite_kit=info".into()))
        .try_init();
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let ns = format!("kit-stall-{}", std::process::id());
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    nss.create(&PostParams::default(), &n)
        .await
        .expect("namespace created");
    let api: Api<Service> = Api::namespaced(client.clone(), &ns);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = ferrite_kit::prometheus::Registry::new();
    let metrics = WatchMetrics::register(&registry).expect("metrics");
    // As App sets them up: the default stall check, restarts counted.
    let watches = Watches::new(shutdown.clone()).with_metrics(metrics.clone());

    // Once armed, the first event blocks the watch's reader until the test releases it (at most 120 s).
    let state = Arc::new(AtomicU8::new(READING));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let released = Arc::new(Mutex::new(released));
    let (st, rel) = (state.clone(), released.clone());
    let blocker = Transform::new("block-once", move |_s: &mut Service| {
        if st
            .compare_exchange(ARMED, BLOCKED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            // A blocking read, as a reader stuck in CPU work: the watch task's thread waits here.
            let _ = rel
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .recv_timeout(Duration::from_secs(120));
        }
    });
    let w = watches.shared_transformed(api.clone(), watcher::Config::default(), Trim::all(), blocker);
    let mut sub = w.subscribe();

    let pad = "x".repeat(128 * 1024);
    parallel(DELETED, |i| {
        let (api, s) = (api.clone(), service(&ns, &format!("old-{i}"), Some(&pad)));
        async move {
            api.create(&PostParams::default(), &s).await.expect("create");
        }
    })
    .await;
    let mut listed = HashSet::new();
    take_until(&mut sub, Duration::from_secs(60), |c| {
        if let Change::Applied(o) = c {
            listed.insert(o.metadata.name.clone().unwrap_or_default());
        }
        listed.len() == DELETED
    })
    .await
    .expect("the watch delivered every Service created");

    // Stop reading, delete them all and create new ones meanwhile, then read again.
    state.store(ARMED, Ordering::SeqCst);
    let started = Instant::now();
    parallel(DELETED, |i| {
        let api = api.clone();
        async move {
            api.delete(&format!("old-{i}"), &DeleteParams::default())
                .await
                .expect("delete");
        }
    })
    .await;
    parallel(CREATED, |i| {
        let (api, s) = (api.clone(), service(&ns, &format!("new-{i}"), None));
        async move {
            api.create(&PostParams::default(), &s).await.expect("create");
        }
    })
    .await;
    assert_eq!(state.load(Ordering::SeqCst), BLOCKED, "the reader was blocked");
    // Give the cacher a moment to give up on the blocked watcher.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = release.send(());
    let blocked_for = started.elapsed();
    let forced = kb
        .apiserver_log_tail(100_000)
        .contains("Forcing watcher close due to unresponsiveness: *core.Service");

    let (mut deleted, mut created) = (HashSet::new(), HashSet::new());
    let took = take_until(&mut sub, RECOVERY, |c| {
        let name = c.object().metadata.name.clone().unwrap_or_default();
        match c {
            Change::Deleted(_) if name.starts_with("old-") => {
                deleted.insert(name);
            }
            Change::Applied(_) if name.starts_with("new-") => {
                created.insert(name);
            }
            _ => {}
        }
        deleted.len() == DELETED && created.len() == CREATED
    })
    .await;
    let restarts = metrics.restarts("services", "stalled") + metrics.restarts("services", "diverged");
    eprintln!(
        "reader blocked {blocked_for:?}; apiserver forced the watcher close: {forced}; \
         caught up after {took:?}; restarts {restarts}"
    );
    let took = took.unwrap_or_else(|| {
        panic!(
            "after {RECOVERY:?} the subscriber had {} of {DELETED} deletes and {} of {CREATED} creates \
             (forced close: {forced}, restarts: {restarts})\n{}",
            deleted.len(),
            created.len(),
            kb.apiserver_log_tail(20)
        )
    });
    assert!(took < RECOVERY, "{took:?}");
    if forced {
        // The box's 1.20 API server keeps a force-closed Service watch open: only a restart by the
        // stall check catches up this fast.
        assert!(restarts >= 1, "caught up in {took:?} without a restart");
    }
    assert_eq!(
        w.store().state().len(),
        CREATED,
        "the cache holds just the new Services"
    );

    shutdown.cancel();
    let _ = nss.delete(&ns, &DeleteParams::default()).await;
}
