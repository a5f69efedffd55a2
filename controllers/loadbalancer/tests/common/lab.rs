//! Shared by the box tests that run real speakers in a `ferrite_e2e::netlab` lab: the chart's accounts,
//! the speakers, EndpointSlices, the speakers' admin servers and the ServiceL2Status waits.

use super::{Running, start_controller};
use ferrite_api::lb::ServiceL2Status;
use ferrite_e2e::{
    KubeBox, Supervised,
    netlab::{NetLab, Protocol},
};
use ferrite_kit::endpointslice::SliceVersion;
use kube::{
    Api, Client,
    api::{DynamicObject, PostParams},
};
use serde_json::json;
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// The kubeconfigs of the chart's two ServiceAccounts.
pub struct Accounts {
    pub controller: PathBuf,
    pub speaker: PathBuf,
}

impl Accounts {
    /// Installs the chart with helm; its accounts' kubeconfigs.
    pub async fn install(kb: &KubeBox) -> Accounts {
        ferrite_e2e::demo::install_chart(kb)
            .await
            .expect("chart installed");
        let controller = kb
            .service_account_kubeconfig("ferrite-system", "ferrite-lb-controller")
            .await
            .expect("controller kubeconfig");
        let speaker = kb
            .service_account_kubeconfig("ferrite-system", "ferrite-lb-speaker")
            .await
            .expect("speaker kubeconfig");
        Accounts { controller, speaker }
    }

    /// `ferrite-lb controller` as the chart's controller account (its lease in ferrite-system).
    pub async fn start_controller(&self, kb: &KubeBox) -> Running {
        start_controller(kb, &self.controller, &["--lease-namespace=ferrite-system"]).await
    }
}

/// A lab of `nodes` nodes with their Node objects.
pub async fn registered_lab(kb: &KubeBox, nodes: usize) -> NetLab {
    let lab = NetLab::new(kb, nodes).expect("lab network");
    lab.register_nodes(kb).await.expect("Node objects");
    lab
}

/// The `ferrite-lb` binary of this build.
pub fn built_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrite-lb"))
}

/// One speaker per lab node, each in its node's namespace, as the chart's speaker account runs it.
pub struct Speakers {
    bin: PathBuf,
    kubeconfig: PathBuf,
    env: Vec<(&'static str, &'static str)>,
    /// By node index; None once taken (killed) and not restarted.
    pub procs: Vec<Option<Supervised>>,
}

impl Speakers {
    /// Starts a speaker on every node of `lab`: `bin` with `FERRITE_LOG_LEVEL=info,ferrite_lb=debug`
    /// and `env`.
    pub fn start(
        lab: &NetLab,
        bin: &Path,
        kubeconfig: &Path,
        env: &[(&'static str, &'static str)],
    ) -> Speakers {
        let mut s = Speakers {
            bin: bin.to_path_buf(),
            kubeconfig: kubeconfig.to_path_buf(),
            env: [("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")]
                .into_iter()
                .chain(env.iter().copied())
                .collect(),
            procs: vec![],
        };
        s.procs = (0..lab.nodes.len()).map(|i| Some(s.spawn(lab, i))).collect();
        s
    }

    fn spawn(&self, lab: &NetLab, i: usize) -> Supervised {
        let n = &lab.nodes[i];
        lab.spawn_in(
            &n.ns,
            "speaker",
            &self.bin,
            &ferrite_e2e::demo::speaker_args(&self.kubeconfig, &n.name),
            &self.env,
        )
        .expect("speaker starts")
    }

    /// Starts node `i`'s speaker again (in place of whatever ran there).
    pub fn restart(&mut self, lab: &NetLab, i: usize) {
        self.procs[i] = Some(self.spawn(lab, i));
    }

    /// Node `i`'s speaker, which must be running.
    pub fn get(&self, i: usize) -> &Supervised {
        self.procs[i].as_ref().expect("speaker running")
    }

    pub fn get_mut(&mut self, i: usize) -> &mut Supervised {
        self.procs[i].as_mut().expect("speaker running")
    }

    /// Takes node `i`'s speaker out (to kill it), which must be running.
    pub fn take(&mut self, i: usize) -> Supervised {
        self.procs[i].take().expect("speaker running")
    }

    /// SIGKILLs node `i`'s speaker, if it runs.
    pub fn crash(&mut self, i: usize) {
        if let Some(mut s) = self.procs[i].take() {
            s.crash();
        }
    }

    /// The last lines of every speaker's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.procs.iter().flatten() {
            s.push_str(&format!(
                "\n--- {} ({}):\n{}",
                p.name,
                p.log.display(),
                p.log_tail(25)
            ));
        }
        s
    }
}

/// GET `path` from the speaker's admin server inside node namespace `ns` (127.0.0.1:9091 there): the
/// status code and the whole response, or None when nothing answers.
pub fn speaker_http(ns: &str, path: &str) -> Option<(u16, String)> {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/9091 && printf 'GET {path} HTTP/1.0\\r\\nHost: speaker\\r\\n\\r\\n' >&3 && timeout 2 cat <&3"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "bash", "-c", &script])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

/// The EndpointSlices of one namespace, in the API version the server serves.
pub struct Slices {
    api: Api<DynamicObject>,
    version: SliceVersion,
}

impl Slices {
    pub async fn new(client: &Client, ns: &str) -> Slices {
        let version = SliceVersion::detect(client).await.expect("discovery");
        Slices {
            api: Api::namespaced_with(client.clone(), ns, &version.api_resource()),
            version,
        }
    }

    /// What an endpoint controller would write: one ready endpoint of `service` on each of `nodes` (at
    /// the node's pod address of `family`'s family), port [`Protocol::backend_port`].
    pub async fn on_nodes(
        &self,
        lab: &NetLab,
        service: &str,
        nodes: &[usize],
        family: IpAddr,
        protocol: Protocol,
    ) {
        let v1 = self.version == SliceVersion::V1;
        let endpoints: Vec<_> = nodes
            .iter()
            .map(|i| {
                let n = &lab.nodes[*i];
                let mut e = json!({
                    "addresses": [n.pod_ip(family).to_string()], "conditions": {"ready": true},
                    "topology": {"kubernetes.io/hostname": n.name},
                });
                // v1beta1 on 1.20 carries the node in topology; nodeName is behind a feature gate there.
                if v1 {
                    e["nodeName"] = json!(n.name);
                }
                e
            })
            .collect();
        let proto = match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let slice = json!({"apiVersion": format!("discovery.k8s.io/{}", if v1 { "v1" } else { "v1beta1" }),
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": if family.is_ipv4() { "IPv4" } else { "IPv6" }, "endpoints": endpoints,
            "ports": [{"port": protocol.backend_port(), "protocol": proto}]});
        let obj: DynamicObject = serde_json::from_value(slice).expect("slice");
        self.api
            .create(&PostParams::default(), &obj)
            .await
            .expect("EndpointSlice created");
    }

    /// One ready IPv4 TCP endpoint of `service` on every node of `lab`.
    pub async fn everywhere(&self, lab: &NetLab, service: &str) {
        let all: Vec<usize> = (0..lab.nodes.len()).collect();
        self.on_nodes(
            lab,
            service,
            &all,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Protocol::Tcp,
        )
        .await;
    }
}

/// The node the ServiceL2Status of `service` names (`spec.node`); None while there is none or it
/// cannot be read.
pub async fn status_node(statuses: &Api<ServiceL2Status>, service: &str) -> Option<String> {
    Some(statuses.get_opt(service).await.ok()??.spec.node)
}

/// What reading a ServiceL2Status gave.
type Read = kube::Result<Option<ServiceL2Status>>;

/// Reads the ServiceL2Status of `service` every `step` until `done` takes what it read; after `limit`
/// panics with `failed(what it read last)` and `logs()`.
async fn poll_status<T>(
    statuses: &Api<ServiceL2Status>,
    service: &str,
    (limit, step): (Duration, Duration),
    mut done: impl FnMut(&Read) -> Option<T>,
    failed: impl FnOnce(Read) -> String,
    logs: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let got = statuses.get_opt(service).await;
        if let Some(v) = done(&got) {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{}{}", failed(got), logs());
        }
        tokio::time::sleep(step).await;
    }
}

/// Waits (polling every 50 ms, at most `limit`) until the ServiceL2Status of `service` names `node`;
/// the panic says what it names instead, and `logs()`.
pub async fn wait_status_names(
    statuses: &Api<ServiceL2Status>,
    service: &str,
    node: &str,
    limit: Duration,
    logs: impl Fn() -> String,
) {
    let names = |got: &Read| matches!(got, Ok(Some(s)) if s.spec.node == node).then_some(());
    let failed = |got: Read| {
        let now = match got {
            Ok(Some(s)) => format!("it names {:?}: {:?}", s.spec.node, s.spec),
            Ok(None) => "there is none".to_string(),
            Err(e) => format!("cannot read it: {e}"),
        };
        let ns = statuses.namespace().unwrap_or_default();
        format!("the ServiceL2Status {ns}/{service} does not name {node} after {limit:?}: {now}")
    };
    let every = Duration::from_millis(50);
    poll_status(statuses, service, (limit, every), names, failed, logs).await
}

/// Waits (polling every 100 ms, at most `limit`) for the ServiceL2Status of `service`.
pub async fn wait_status(
    statuses: &Api<ServiceL2Status>,
    service: &str,
    limit: Duration,
    logs: impl Fn() -> String,
) -> ServiceL2Status {
    let there = |got: &Read| got.as_ref().ok().cloned().flatten();
    let failed = |_| format!("no ServiceL2Status {service} within {limit:?}:\n");
    let every = Duration::from_millis(100);
    poll_status(statuses, service, (limit, every), there, failed, logs).await
}

/// Waits (polling every 100 ms, at most `limit`) until the ServiceL2Status of `service` is gone,
/// which it must be because of `why`.
pub async fn wait_status_gone(
    statuses: &Api<ServiceL2Status>,
    service: &str,
    limit: Duration,
    why: &str,
    logs: impl Fn() -> String,
) {
    let gone = |got: &Read| matches!(got, Ok(None)).then_some(());
    let failed = |got: Read| {
        let now = match got {
            Ok(_) => "it exists".to_string(),
            Err(e) => format!("cannot read it: {e}"),
        };
        format!("ServiceL2Status {service} still there {limit:?} after {why} ({now}):\n")
    };
    let every = Duration::from_millis(100);
    poll_status(statuses, service, (limit, every), gone, failed, logs).await
}
