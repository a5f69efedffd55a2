//! Shared by the box tests of ferrite-lb: CRDs installed, a controller process running against the box,
//! the objects the tests create (pools, Services), waits. [`lab`]: the tests that run real speakers in a
//! `ferrite_e2e::netlab` lab; [`gossip`]: the gossip component tests.
//!
//! Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod gossip;
pub mod lab;

use ferrite_api::lb::IPPool;
pub use ferrite_e2e::http_get;
use ferrite_e2e::{KubeBox, Supervised, netlab::Protocol, process::free_port};
use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use serde_json::json;
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

/// A client that authenticates as `kubeconfig` says.
pub async fn client_from(kubeconfig: &Path) -> Client {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    Client::try_from(config).expect("client")
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

/// A pool that serves only `ns`, so tests running side by side do not take each other's addresses;
/// `extra` is merged into its spec (and may replace `serviceAllocation`).
pub fn pool(name: &str, ns: &str, addresses: &[&str], extra: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"addresses": addresses, "serviceAllocation": {"namespaces": [ns]}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool", "metadata": {"name": name}, "spec": spec})
}

/// A LoadBalancer Service without a selector.
pub fn lb_service(name: &str, annotations: serde_json::Value, ports: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "annotations": annotations},
           "spec": {"type": "LoadBalancer", "ports": ports}})
}

/// A LoadBalancer Service selecting `app: <name>`, port 80 unless [`LbService::port`] says otherwise.
pub struct LbService {
    name: String,
    annotations: serde_json::Value,
    labels: serde_json::Value,
    ports: Option<(u16, Protocol)>,
    local: bool,
}

impl LbService {
    pub fn new(name: &str) -> LbService {
        LbService {
            name: name.to_string(),
            annotations: json!({}),
            labels: json!({}),
            ports: None,
            local: false,
        }
    }

    pub fn annotations(mut self, annotations: serde_json::Value) -> LbService {
        self.annotations = annotations;
        self
    }

    /// The `lb.ferrite.dev/pool` annotation.
    pub fn pool(self, pool: &str) -> LbService {
        self.annotations(json!({"lb.ferrite.dev/pool": pool}))
    }

    pub fn labels(mut self, labels: serde_json::Value) -> LbService {
        self.labels = labels;
        self
    }

    /// One port `port`/`protocol` with the lab backends' port of that protocol as its `targetPort`.
    pub fn port(mut self, port: u16, protocol: Protocol) -> LbService {
        self.ports = Some((port, protocol));
        self
    }

    /// `externalTrafficPolicy: Local`.
    pub fn local(mut self) -> LbService {
        self.local = true;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Service's port and protocol.
    pub fn port_protocol(&self) -> (u16, Protocol) {
        self.ports.unwrap_or((80, Protocol::Tcp))
    }

    pub fn json(&self) -> serde_json::Value {
        let ports = match self.ports {
            None => json!([{"port": 80}]),
            Some((port, protocol)) => {
                let proto = match protocol {
                    Protocol::Tcp => "TCP",
                    Protocol::Udp => "UDP",
                };
                json!([{"port": port, "protocol": proto, "targetPort": protocol.backend_port()}])
            }
        };
        let mut spec = json!({"type": "LoadBalancer", "selector": {"app": self.name}, "ports": ports});
        if self.local {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        json!({"metadata": {"name": self.name, "annotations": self.annotations, "labels": self.labels},
               "spec": spec})
    }

    /// Creates it in `svcs`.
    pub async fn create(&self, svcs: &Api<Service>) -> Service {
        create(svcs, self.json()).await
    }
}

/// A fresh namespace with a pool `<ns>-p` over `addresses` serving only it.
pub struct NsPool {
    pub ns: String,
    pub client: Client,
    pub pools: Api<IPPool>,
    /// The pool's name.
    pub pool: String,
    pub svcs: Api<Service>,
}

impl NsPool {
    /// A namespace `<prefix>-...` and its pool (the CRDs must be installed).
    pub async fn new(kb: &KubeBox, prefix: &str, addresses: &[&str]) -> NsPool {
        let ns = kb.namespace(prefix).await;
        let client = kb.client().await;
        let pools: Api<IPPool> = Api::all(client.clone());
        let pool_name = format!("{ns}-p");
        create(&pools, pool(&pool_name, &ns, addresses, json!({}))).await;
        NsPool {
            svcs: Api::namespaced(client.clone(), &ns),
            ns,
            client,
            pools,
            pool: pool_name,
        }
    }
}

/// The value of the sample of `name` in a Prometheus text whose labels include every one of `labels`
/// (`key="value"`); `labels` empty: the unlabelled sample (or the first labelled one).
pub fn metric(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let labelled = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|key| key == name || key.starts_with(&labelled))
        })
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
