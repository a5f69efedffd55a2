//! The finalizer helper against the box's real API server, with "DNS records on a server" simulated as
//! a set: the finalizer is added before any external work, a delete waits for the cleanup, a failed
//! cleanup keeps the object (and says so), a successful one lets it go; a concurrent change of the
//! finalizers list is refused instead of clobbered; a follower writes nothing.

use ferrite_e2e::KubeBox;
use ferrite_kit::{
    Error, ReasonedError,
    finalizer::{Decision, Finalizer, FinalizerError},
    leader::{self, Leadership, LeaseConfig},
};
use k8s_openapi::api::{coordination::v1::Lease, core::v1::ConfigMap, core::v1::Namespace};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::Duration,
};

const FIN: &str = "dns.ferrite.dev/records";
const OTHER: &str = "other.example.com/keep";

#[derive(Debug, thiserror::Error)]
#[error("DNS server refused the update")]
struct ServerRefused;
impl ReasonedError for ServerRefused {
    fn reason(&self) -> &'static str {
        "ServerRefused"
    }
}

/// The "DNS server": records by name, and whether it currently refuses updates.
#[derive(Default)]
struct Server {
    records: Mutex<BTreeSet<String>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl Server {
    fn has(&self, name: &str) -> bool {
        self.records.lock().expect("lock").contains(name)
    }
}

async fn step(
    f: &Finalizer,
    api: &Api<ConfigMap>,
    obj: ConfigMap,
    leadership: &Leadership,
    server: &Arc<Server>,
) -> Result<Action, FinalizerError<ServerRefused>> {
    let (s1, s2) = (server.clone(), server.clone());
    f.reconcile(
        api,
        Arc::new(obj),
        leadership,
        |cm: Arc<ConfigMap>| async move {
            s1.records.lock().expect("lock").insert(cm.name_any());
            Ok(Action::requeue(Duration::from_secs(300)))
        },
        |cm: Arc<ConfigMap>| async move {
            if s2.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(ServerRefused);
            }
            s2.records.lock().expect("lock").remove(&cm.name_any());
            Ok(())
        },
    )
    .await
}

async fn setup(ns: &str) -> (kube::Client, Api<ConfigMap>) {
    let kb = KubeBox::shared();
    let client = ferrite_kit::client::connect_with(Some(&kb.kubeconfig))
        .await
        .expect("box answers");
    let nss: Api<Namespace> = Api::all(client.clone());
    let n: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("namespace");
    match nss.create(&PostParams::default(), &n).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {ns}: {e}"),
    }
    (client.clone(), Api::namespaced(client, ns))
}

async fn create(api: &Api<ConfigMap>, name: &str) -> ConfigMap {
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "data": {"ip": "192.0.2.1"}}))
            .expect("configmap");
    api.create(&PostParams::default(), &cm).await.expect("created")
}

#[tokio::test]
async fn delete_waits_for_cleanup_a_failed_cleanup_keeps_the_object_success_removes_it() {
    let (_client, api) = setup(&format!("kit-fin-{}", std::process::id())).await;
    let f = Finalizer::new(FIN).expect("valid name");
    let leadership = Leadership::always("test");
    let server = Arc::new(Server::default());

    let cm = create(&api, "rec-a").await;
    assert_eq!(f.decide(&cm), Decision::AddFinalizer);
    step(&f, &api, cm, &leadership, &server)
        .await
        .expect("finalizer added");
    assert!(
        !server.has("rec-a"),
        "no external work before the finalizer is on"
    );
    let cm = api.get("rec-a").await.expect("get");
    assert_eq!(cm.finalizers(), &[FIN.to_string()]);
    assert_eq!(f.decide(&cm), Decision::Apply);
    step(&f, &api, cm, &leadership, &server).await.expect("applied");
    assert!(server.has("rec-a"));

    // Delete: the object stays, marked for deletion, until the cleanup ran.
    api.delete("rec-a", &DeleteParams::default())
        .await
        .expect("delete accepted");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cm = api.get("rec-a").await.expect("still there");
    assert!(cm.metadata.deletion_timestamp.is_some());
    assert_eq!(f.decide(&cm), Decision::Cleanup);

    // The server refuses: the error comes back, the record and the object stay.
    server.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = step(&f, &api, cm, &leadership, &server)
        .await
        .expect_err("cleanup refused");
    assert!(matches!(err, FinalizerError::Cleanup(_)), "{err}");
    assert_eq!(err.reason(), "ServerRefused");
    assert!(err.to_string().contains("DNS server refused the update"), "{err}");
    assert!(err.to_string().contains("kept"), "{err}");
    assert!(server.has("rec-a"));
    let cm = api.get("rec-a").await.expect("kept after a failed cleanup");
    assert_eq!(cm.finalizers(), &[FIN.to_string()]);

    // The server answers again: cleanup, finalizer removed, object gone.
    server.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    step(&f, &api, cm, &leadership, &server)
        .await
        .expect("cleaned up");
    assert!(!server.has("rec-a"));
    let mut gone = false;
    for _ in 0..50 {
        if api.get_opt("rec-a").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the object is removed once the finalizer is off");
}

#[tokio::test]
async fn a_concurrent_change_of_the_finalizers_is_refused_not_clobbered_and_a_follower_writes_nothing() {
    let ns = format!("kit-fin-race-{}", std::process::id());
    let (client, api) = setup(&ns).await;
    let f = Finalizer::new(FIN).expect("valid name");
    let leadership = Leadership::always("test");
    let server = Arc::new(Server::default());
    let add_other = |on: bool| {
        let body = if on {
            serde_json::json!({"metadata": {"finalizers": [OTHER]}})
        } else {
            // The other controller removes its own finalizer, keeping ours.
            serde_json::json!({"metadata": {"finalizers": [FIN]}})
        };
        let api = api.clone();
        async move {
            api.patch("rec-b", &PatchParams::default(), &Patch::Merge(&body))
                .await
                .expect("the other controller's write")
        }
    };

    // Read, then another controller adds its finalizer: our add (computed from the stale read) is refused.
    let stale = create(&api, "rec-b").await;
    add_other(true).await;
    let err = step(&f, &api, stale, &leadership, &server)
        .await
        .expect_err("stale list");
    assert!(matches!(err, FinalizerError::Patch { .. }), "{err}");
    assert_eq!(err.reason(), "Conflict", "{err}");
    let cm = api.get("rec-b").await.expect("get");
    assert_eq!(
        cm.finalizers(),
        &[OTHER.to_string()],
        "the other finalizer survived"
    );
    // From a fresh read it goes on next to the other one.
    step(&f, &api, cm, &leadership, &server).await.expect("added");
    let cm = api.get("rec-b").await.expect("get");
    assert_eq!(cm.finalizers(), &[OTHER.to_string(), FIN.to_string()]);

    // Deleting: the removal from a stale read is refused too, leaving the other controller's change intact.
    api.delete("rec-b", &DeleteParams::default())
        .await
        .expect("delete accepted");
    let stale = api.get("rec-b").await.expect("get");
    add_other(false).await;
    let err = step(&f, &api, stale, &leadership, &server)
        .await
        .expect_err("stale list");
    assert_eq!(err.reason(), "Conflict", "{err}");
    let cm = api.get("rec-b").await.expect("still there: our finalizer is on");
    assert_eq!(cm.finalizers(), &[FIN.to_string()]);

    // A follower (someone else holds the Lease) neither patches nor runs external work.
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let now = k8s_openapi::jiff::Timestamp::now();
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kit-finalizer"},
        "spec": {"holderIdentity": "someone-else", "leaseDurationSeconds": 3600,
                 "acquireTime": now.to_string(), "renewTime": now.to_string()}
    }))
    .expect("lease");
    let _ = leases.create(&PostParams::default(), &lease).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (follower, task) = leader::start(
        client.clone(),
        LeaseConfig {
            name: "kit-finalizer".into(),
            namespace: ns.clone(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_millis(250),
        },
        shutdown.clone(),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!follower.is_leader());
    let err = step(&f, &api, cm, &follower, &server)
        .await
        .expect_err("a follower does not clean up");
    assert!(
        matches!(
            &err,
            FinalizerError::Patch {
                source: Error::NotLeader,
                ..
            }
        ),
        "{err}"
    );
    assert!(api.get_opt("rec-b").await.expect("get").is_some());
    shutdown.cancel();
    let _ = task.await;

    // The leader finishes the job.
    let cm = api.get("rec-b").await.expect("get");
    step(&f, &api, cm, &leadership, &server)
        .await
        .expect("cleaned up");
    for _ in 0..50 {
        if api.get_opt("rec-b").await.expect("get").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("rec-b was not removed after the leader's cleanup");
}
