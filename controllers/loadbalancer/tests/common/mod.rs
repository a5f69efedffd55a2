//! Shared by the box tests of ferrite-lb: CRDs installed, a controller process running against the box.
#![allow(dead_code)]

pub use ferrite_e2e::http_get;
use ferrite_e2e::{KubeBox, Supervised, process::free_port};
use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

/// A controller process and its admin address.
pub struct Running {
    pub proc: Supervised,
    pub admin: SocketAddr,
}

/// Installs crds/ into the box (idempotent).
pub async fn crds(kb: &KubeBox) {
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
}

/// Starts `ferrite-lb controller` against the box with `kubeconfig`, waits for /readyz.
pub async fn start_controller(kb: &KubeBox, kubeconfig: &Path, extra: &[&str]) -> Running {
    let port = free_port().expect("free port");
    let admin: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let mut args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let log = kb.dir.join(format!("ferrite-lb-controller-{port}.log"));
    let mut proc = Supervised::spawn(
        "ferrite-lb controller",
        std::path::Path::new(env!("CARGO_BIN_EXE_ferrite-lb")),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")],
        &log,
    )
    .expect("controller starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !proc.is_running() {
            panic!("controller exited:\n{}", proc.log_tail(30));
        }
        if let Ok((200, _)) = http_get(admin, "/readyz").await {
            return Running { proc, admin };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("controller not ready within 30 s:\n{}", proc.log_tail(30));
}

/// Creates an object from JSON, retrying connection hiccups.
pub async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("valid object");
    let mut last = None;
    for _ in 0..10 {
        match api.create(&PostParams::default(), &obj).await {
            Ok(o) => return o,
            Err(kube::Error::Api(e)) => panic!("create failed: {e:?}"),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("create failed: {last:?}");
}

/// The IPs of a Service's status.
pub fn ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

/// Polls `f` every 50 ms until it returns Some, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the Service shows IPs in its status; returns them and how long it took.
pub async fn wait_ips(api: &Api<Service>, name: &str, limit: Duration) -> (Vec<String>, Duration) {
    let start = Instant::now();
    let ips = eventually(limit, &format!("an IP on Service {name}"), || async {
        let s = api.get(name).await.ok()?;
        let v = ips(&s);
        (!v.is_empty()).then_some(v)
    })
    .await;
    (ips, start.elapsed())
}

/// Waits for an Event with `reason` on object `name` in `ns`; returns its note.
pub async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(kb.client().await, ns);
    eventually(
        Duration::from_secs(15),
        &format!("Event {reason} on {name}"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = e.regarding.as_ref()?.name.as_deref()? == name;
                (on && e.reason.as_deref() == Some(reason)).then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await
}
