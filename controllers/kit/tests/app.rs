//! A controller built on the kit, against the box: `/readyz` opens only after its watch synced (here:
//! only once its CRD exists), `/metrics` serves process metrics and the reconcile families labelled by
//! kind (two controllers in one App are counted apart), `/livez` reports a fatal condition, extra
//! routes answer, and bad setups fail with one clear line.

use clap::Parser;
use ferrite_api::lb::IPPool;
use ferrite_e2e::KubeBox;
use ferrite_kit::{App, Error, ReasonedError, cli::CommonArgs, runner};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{Controller, controller::Action, watcher},
};
use std::{sync::Arc, time::Duration};

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, thiserror::Error)]
#[error("this test refuses pools named *-fail")]
struct Refused;
impl ReasonedError for Refused {
    fn reason(&self) -> &'static str {
        "Refused"
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    ferrite_e2e::http_get(addr, path)
        .await
        .expect("admin server answers")
}

#[tokio::test]
async fn readyz_waits_for_the_watch_and_metrics_have_process_and_reconcile_families() {
    let kb = KubeBox::shared();
    let kubeconfig = kb.kubeconfig.display().to_string();
    let cli = Cli::parse_from([
        "test",
        "--kubeconfig",
        &kubeconfig,
        "--admin-addr",
        "127.0.0.1:0",
        "--leader-elect=false",
    ]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = App::start_with(&cli.common, "kittest", "kittest", shutdown.clone())
        .await
        .expect("app starts");

    // The CRD is not installed yet: the kit says so plainly, and the watch cannot sync.
    let err = ferrite_kit::client::require_crd::<IPPool>(&app.client)
        .await
        .expect_err("no CRD yet");
    assert!(matches!(err, Error::MissingCrd { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("ippools.lb.ferrite.dev is not installed"),
        "{err}"
    );
    assert_eq!(err.reason(), "MissingCrd");

    let pools: Api<IPPool> = Api::all(app.client.clone());
    let controller = Controller::new(pools.clone(), watcher::Config::default());
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(runner::run(
        controller,
        seen.clone(),
        |pool: Arc<IPPool>, seen: Arc<std::sync::atomic::AtomicUsize>| async move {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if pool
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("-fail"))
            {
                return Err(Refused);
            }
            Ok(Action::requeue(Duration::from_secs(300)))
        },
        app.run_options(),
    ));

    // A second controller in the same App, of another kind: its reconciles are counted apart.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(app.client.clone(), "default");
    let cm_name = "kit-app-kinds";
    let _ = cms.delete(cm_name, &DeleteParams::default()).await;
    let cm_controller = Controller::new(
        cms.clone(),
        watcher::Config::default().fields(&format!("metadata.name={cm_name}")),
    );
    tokio::spawn(runner::run(
        cm_controller,
        Arc::new(()),
        |_cm: Arc<k8s_openapi::api::core::v1::ConfigMap>, _: Arc<()>| async move {
            Ok::<_, Refused>(Action::requeue(Duration::from_secs(300)))
        },
        app.run_options(),
    ));
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": cm_name}, "data": {"k": "v"}
    }))
    .expect("valid configmap");
    cms.create(&PostParams::default(), &cm)
        .await
        .expect("configmap created");

    // Extra routes and liveness through the App.
    app.routes
        .add("/debug/kit", |_req| async {
            ferrite_kit::admin::text(hyper::StatusCode::OK, "kit debug\n")
        })
        .expect("route added");
    assert_eq!(
        get(app.admin_addr, "/debug/kit").await,
        (200, "kit debug\n".to_string())
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = get(app.admin_addr, "/readyz").await;
    assert_eq!(code, 503, "not ready before the watch synced: {body}");
    assert!(body.contains("watch ippools"), "names what it waits for: {body}");
    assert_eq!(get(app.admin_addr, "/livez").await.0, 200);

    // Install the CRD: the watch syncs and /readyz opens.
    let crds: Api<CustomResourceDefinition> = Api::all(app.client.clone());
    let crd: CustomResourceDefinition = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../crds/ippools.lb.ferrite.dev.yaml"
        ))
        .expect("crds/ is checked in"),
    )
    .expect("valid CRD yaml");
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("CRD created");
    let mut last = (0, String::new());
    for _ in 0..150 {
        last = get(app.admin_addr, "/readyz").await;
        if last.0 == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        last.0, 200,
        "/readyz did not open within 30 s of the CRD being installed: {}",
        last.1
    );

    // One object, one reconcile, counted in the metrics.
    let pool: IPPool = serde_json::from_value(serde_json::json!({
        "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": "kit-app-test"}, "spec": {"addresses": ["192.0.2.0/28"]}
    }))
    .expect("valid pool");
    // The API server may drop a connection while it starts serving a new CRD; retry like a controller.
    let mut created = Err(None);
    for _ in 0..10 {
        match pools.create(&PostParams::default(), &pool).await {
            Ok(p) => {
                created = Ok(p);
                break;
            }
            Err(e) => created = Err(Some(e)),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    created.expect("pool created");
    let mut failing = pool.clone();
    failing.metadata.name = Some("kit-app-fail".into());
    pools
        .create(&PostParams::default(), &failing)
        .await
        .expect("second pool created");
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = get(app.admin_addr, "/metrics").await.1;
        if metrics.contains("ferrite_kittest_reconcile_total{kind=\"IPPool\",result=\"success\"} 1")
            && metrics.contains("ferrite_kittest_reconcile_errors_total{kind=\"IPPool\",reason=\"Refused\"}")
            && metrics.contains("ferrite_kittest_reconcile_total{kind=\"ConfigMap\",result=\"success\"} 1")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for family in [
        "ferrite_kittest_reconcile_total{kind=\"IPPool\",result=\"success\"} 1",
        "ferrite_kittest_reconcile_total{kind=\"IPPool\",result=\"error\"} ",
        "ferrite_kittest_reconcile_total{kind=\"ConfigMap\",result=\"success\"} 1",
        "ferrite_kittest_reconcile_total{kind=\"ConfigMap\",result=\"error\"} 0",
        "# TYPE ferrite_kittest_reconcile_duration_seconds histogram",
        "ferrite_kittest_reconcile_duration_seconds_count{kind=\"IPPool\"}",
        "ferrite_kittest_reconcile_duration_seconds_count{kind=\"ConfigMap\"} 1",
        "ferrite_kittest_reconcile_errors_total{kind=\"IPPool\",reason=\"Refused\"}",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(metrics.contains(family), "/metrics lacks {family:?}:\n{metrics}");
    }
    assert!(
        !metrics.contains("ferrite_kittest_leader"),
        "no leader gauge without leader election"
    );
    assert!(
        !metrics.contains("ferrite_kittest_reconcile_errors_total{kind=\"ConfigMap\""),
        "the ConfigMap controller failed nothing:\n{metrics}"
    );
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    // A fatal condition turns /livez to 503 and names it; /readyz stays open.
    assert_eq!(get(app.admin_addr, "/livez").await.0, 200);
    app.liveness.fail("test task", "died on purpose");
    let (code, body) = get(app.admin_addr, "/livez").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("test task: died on purpose"), "{body}");
    assert_eq!(get(app.admin_addr, "/readyz").await.0, 200);
    cms.delete(cm_name, &DeleteParams::default())
        .await
        .expect("configmap deleted");
    assert_eq!(
        pools
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    shutdown.cancel();
}

#[tokio::test]
async fn bad_setups_fail_with_one_clear_line() {
    let dir = tempfile_dir();
    // A kubeconfig that does not exist.
    let missing = dir.join("nope.kubeconfig");
    let err = ferrite_kit::client::connect_with(Some(&missing))
        .await
        .err()
        .expect("missing kubeconfig fails");
    assert!(err.to_string().contains("nope.kubeconfig"), "{err}");

    // An API server that is not there.
    let port = ferrite_e2e::process::free_port().expect("port");
    let kc = dir.join("unreachable.kubeconfig");
    let kb = KubeBox::shared();
    ferrite_e2e::kubebox::write_kubeconfig(
        &kc,
        &format!("https://127.0.0.1:{port}"),
        &kb.dir.join("ca.crt"),
        "x",
        "x",
        "default",
    )
    .expect("kubeconfig written");
    let err = ferrite_kit::client::connect_with(Some(&kc))
        .await
        .err()
        .expect("nothing listens there");
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach the Kubernetes API server") && msg.contains(&port.to_string()),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "one line: {msg}");

    // The admin port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = ferrite_kit::admin::AdminServer::bind(addr)
        .await
        .expect_err("port in use");
    assert!(err.to_string().contains("--admin-addr"), "{err}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ferrite-kit-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
