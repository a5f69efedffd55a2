//! The data path, end to end on the box: real traffic from the lab's client to the VIP.
//!
//! The lab (e2e/src/netlab.rs) plays kube-proxy's part: in every node namespace an iptables DNAT rule
//! sends `VIP:port` to that node's own backend (socat on the node's "pod" address, answering the
//! node's name over HTTP and as a UDP echo), and the VIP is on no interface, so only the speaker answers
//! ARP/NDP for it. Which backend answers therefore tells which node the client's traffic reached: the
//! node the speakers elected. The chart is installed with helm; the controller and three speakers run
//! as the chart's ServiceAccounts, the speakers inside the node namespaces.
//!
//! Wherever a test finds who serves, the Service's ServiceL2Status (written by the announcing speaker)
//! must name that node too.
//!
//! - HTTP to the VIP reaches the announcing node's backend (and an address nobody announces is not
//!   reachable: the lab's kube-proxy stand-in does not answer ARP by itself);
//! - the announcing node dies (its speaker SIGKILLed, its link cut): a client loop with 100 ms timeouts
//!   sees errors for at most the failover window, then only the new node;
//! - a TCP and a UDP Service sharing one address (`allow-shared-ip`) are both answered through it, by
//!   the same node;
//! - IPv6: a v6 VIP is served before and after its speaker is SIGKILLed, by the new node after;
//! - `externalTrafficPolicy: Local` with endpoints on one node only: that node announces and serves;
//!   a node labelled `node.kubernetes.io/exclude-from-external-load-balancers` and one with
//!   `NetworkUnavailable=True` never announce (the MetalLB ranking would have picked them), and the
//!   label moves an address off its owner;
//! - an L2Advertisement with `nodeSelectors` matching one node only (the one the ranking puts last):
//!   that node announces and serves its pool; a pool that no advertisement selects and that has no
//!   inline `l2` is allocate-only: its Service gets an address that nobody answers for.
//!
//! One box, one lab and one set of speakers for the binary (started by the first test); the tests take
//! turns, each in its own namespace with its own pool range, and each first heals what an earlier one
//! may have left broken (a killed speaker, a cut link).

mod common;

use common::*;
use ferrite_api::lb::{IPPool, ServiceL2Status};
use ferrite_e2e::{
    KubeBox, Supervised,
    netlab::{NetLab, Protocol},
};
use ferrite_kit::endpointslice::SliceVersion;
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::json;
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The Service port every test uses for HTTP (delivered to the backends' 8080).
const HTTP_PORT: u16 = 80;
/// The Service port of the UDP Service (delivered to the backends' 9000).
const UDP_PORT: u16 = 53;
/// MetalLB's (and Kubernetes') label that keeps a node out of load balancing.
const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The lab with its speakers and the controller, shared by every test of the binary.
struct Rig {
    lab: NetLab,
    /// The speaker binary of this run (see [`Rig::start`]).
    bin: PathBuf,
    speaker_kc: PathBuf,
    speakers: Vec<Option<Supervised>>,
    _controller: Running,
}

static RIG: OnceLock<tokio::sync::Mutex<Rig>> = OnceLock::new();

/// The shared rig, started on first use (on a thread with its own runtime: nothing in it belongs to a
/// test's runtime). Lock it for the whole test: the tests take turns.
fn rig() -> &'static tokio::sync::Mutex<Rig> {
    RIG.get_or_init(|| {
        let started = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(Rig::start())
        })
        .join();
        match started {
            Ok(rig) => tokio::sync::Mutex::new(rig),
            Err(_) => panic!("the lab did not start (the panic is printed above)"),
        }
    })
}

fn start_speaker(lab: &NetLab, bin: &Path, i: usize, kubeconfig: &Path) -> Supervised {
    let n = &lab.nodes[i];
    lab.spawn_in(
        &n.ns,
        "speaker",
        bin,
        &ferrite_e2e::demo::speaker_args(kubeconfig, &n.name),
        &[("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")],
    )
    .expect("speaker starts")
}

/// GET `path` from the speaker's admin server inside node namespace `ns` (127.0.0.1:9091 there).
fn speaker_get(ns: &str, path: &str) -> Option<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "1",
        ])
        .arg(format!("http://127.0.0.1:9091{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

/// The value of the unlabelled gauge `name` in a metrics text.
fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

impl Rig {
    async fn start() -> Rig {
        let kb = KubeBox::shared();
        ferrite_e2e::demo::install_chart(kb)
            .await
            .expect("chart installed");
        let controller_kc = kb
            .service_account_kubeconfig("ferrite-system", "ferrite-lb-controller")
            .await
            .expect("controller kubeconfig");
        let speaker_kc = kb
            .service_account_kubeconfig("ferrite-system", "ferrite-lb-speaker")
            .await
            .expect("speaker kubeconfig");
        let mut lab = NetLab::new(kb, 3).expect("lab network");
        lab.delete_after_exit().expect("lab janitor");
        // Speakers restarted later in the run run this same binary, even if the build directory's is
        // replaced by a rebuild meanwhile (a hard link keeps the file; a copy where links cannot be).
        let bin = lab.dir().join("ferrite-lb");
        let built = Path::new(env!("CARGO_BIN_EXE_ferrite-lb"));
        if std::fs::hard_link(built, &bin).is_err() {
            std::fs::copy(built, &bin).expect("speaker binary copied");
        }
        lab.start_backends().expect("the lab's backends");
        lab.register_nodes(kb).await.expect("Node objects");
        let controller = start_controller(kb, &controller_kc, &["--lease-namespace=ferrite-system"]).await;
        let speakers = (0..lab.nodes.len())
            .map(|i| Some(start_speaker(&lab, &bin, i, &speaker_kc)))
            .collect();
        let mut rig = Rig {
            lab,
            bin,
            speaker_kc,
            speakers,
            _controller: controller,
        };
        rig.wait_converged().await;
        rig
    }

    /// Brings back what an earlier test may have left broken (a cut link, a speaker it killed), then
    /// waits until every speaker sees every other one and is past its startup grace. A speaker that
    /// exited by itself is a failure, not something to heal.
    async fn heal(&mut self) {
        for i in 0..self.lab.nodes.len() {
            self.lab.set_node_link(i, true).expect("node link up");
            let exited = match self.speakers[i].as_mut() {
                Some(s) => (!s.is_running()).then(|| s.log_tail(40)),
                None => None,
            };
            if self.speakers[i].is_none() || exited.is_some() {
                self.speakers[i] = Some(start_speaker(&self.lab, &self.bin, i, &self.speaker_kc));
            }
            // Restarted first, so the tests after this one find a whole lab.
            if let Some(log) = exited {
                panic!("speaker {i} exited by itself:\n{log}");
            }
        }
        self.wait_converged().await;
    }

    async fn wait_converged(&mut self) {
        let n = self.lab.nodes.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..n {
            loop {
                let ns = &self.lab.nodes[i].ns;
                let members = speaker_get(ns, "/metrics").and_then(|m| gauge(&m, "ferrite_lb_members"));
                let log = std::fs::read_to_string(&self.speaker(i).log).unwrap_or_default();
                if members == Some(n as f64) && log.contains("startup grace over") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "speaker {i} does not see {n} members (sees {members:?}) or is still in its startup grace after 30 s:{}",
                    self.logs()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn speaker(&self, i: usize) -> &Supervised {
        self.speakers[i].as_ref().expect("speaker running")
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.speakers.iter().flatten() {
            s.push_str(&format!(
                "\n--- {} ({}):\n{}",
                p.name,
                p.log.display(),
                p.log_tail(25)
            ));
        }
        s
    }

    fn name(&self, i: usize) -> &str {
        &self.lab.nodes[i].name
    }

    fn index(&self, name: &str) -> usize {
        self.lab
            .nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("{name:?} is not a lab node"))
    }

    /// The node whose MAC answers the client's ARP for `vip` (IPv4), waiting up to 15 s for an answer.
    async fn arp_owner(&self, vip: IpAddr) -> usize {
        let ip = vip.to_string();
        let mac = eventually(
            Duration::from_secs(15),
            &format!("an ARP answer for {ip}"),
            || async { self.lab.arping(&ip) },
        )
        .await;
        self.lab
            .nodes
            .iter()
            .position(|n| n.mac == mac)
            .unwrap_or_else(|| panic!("{ip} answered by {mac}, which is no lab node's MAC"))
    }

    /// The node the client's neighbour entry for `vip` points at.
    fn neighbour_owner(&self, vip: IpAddr) -> Option<usize> {
        let mac = self.lab.client_neighbour(&vip.to_string())?;
        self.lab.nodes.iter().position(|n| n.mac == mac)
    }

    /// One HTTP GET from the client to `vip:80`; the node whose backend answered.
    fn http_node(&self, vip: IpAddr, timeout: Duration) -> Result<usize, String> {
        let body = self
            .lab
            .client_http_get(vip, HTTP_PORT, timeout)
            .map_err(|e| format!("{e:#}"))?;
        self.lab
            .nodes
            .iter()
            .position(|n| n.name == body)
            .ok_or_else(|| format!("answer {body:?} names no lab node"))
    }

    /// Waits (bounded) until HTTP to `vip` is answered by node `want`, then checks that `times` more
    /// requests in a row are answered by it too.
    async fn served_by(&self, vip: IpAddr, want: usize, times: usize) {
        let mut last = Err(String::new());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            last = self.http_node(vip, Duration::from_secs(1));
            if last == Ok(want) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            last,
            Ok(want),
            "HTTP to {vip} not served by {} within 10 s{}",
            self.name(want),
            self.logs()
        );
        for _ in 0..times {
            assert_eq!(
                self.http_node(vip, Duration::from_secs(2)),
                Ok(want),
                "HTTP to {vip} served by another node than {}",
                self.name(want)
            );
        }
    }
}

/// One test's namespace, pool and API handles.
struct Case {
    kb: &'static KubeBox,
    ns: String,
    svcs: Api<Service>,
    slices: Api<DynamicObject>,
    l2: Api<ServiceL2Status>,
    version: SliceVersion,
}

impl Case {
    /// A fresh namespace and an IPPool over `range` for it, announced everywhere (`l2: {}`).
    async fn new(prefix: &str, range: &str) -> Case {
        let kb = KubeBox::shared();
        let client = kb.client().await;
        let ns = kb.namespace(prefix).await;
        let pools: Api<IPPool> = Api::all(client.clone());
        create(
            &pools,
            json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
            "metadata": {"name": format!("{ns}-lan")},
            "spec": {"addresses": [range], "serviceAllocation": {"namespaces": [ns]}, "l2": {}}}),
        )
        .await;
        let version = SliceVersion::detect(&client).await.expect("discovery");
        Case {
            kb,
            svcs: Api::namespaced(client.clone(), &ns),
            slices: Api::namespaced_with(client.clone(), &ns, &version.api_resource()),
            l2: Api::namespaced(client, &ns),
            ns,
            version,
        }
    }

    /// Another IPPool `<ns>-<suffix>` over `range` for this namespace, with `l2` as its inline block
    /// (`None`: no inline block, so only an L2Advertisement can announce it).
    async fn pool(&self, suffix: &str, range: &str, l2: Option<serde_json::Value>) -> String {
        let name = format!("{}-{suffix}", self.ns);
        let mut spec = json!({"addresses": [range], "serviceAllocation": {"namespaces": [self.ns]}});
        if let Some(l2) = l2 {
            spec["l2"] = l2;
        }
        let pools: Api<IPPool> = Api::all(self.kb.client().await);
        create(
            &pools,
            json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
                "metadata": {"name": name}, "spec": spec}),
        )
        .await;
        name
    }

    /// Creates a LoadBalancer Service `name` with one port and waits for its address.
    async fn service(
        &self,
        name: &str,
        port: u16,
        protocol: Protocol,
        annotations: serde_json::Value,
        local: bool,
    ) -> IpAddr {
        let proto = match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let mut spec = json!({"type": "LoadBalancer", "selector": {"app": name},
            "ports": [{"port": port, "protocol": proto, "targetPort": protocol.backend_port()}]});
        if local {
            spec["externalTrafficPolicy"] = json!("Local");
        }
        create(
            &self.svcs,
            json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec}),
        )
        .await;
        let (ips, took) = wait_ips(&self.svcs, name, Duration::from_secs(15)).await;
        eprintln!("{}/{name}: {ips:?} after {took:?}", self.ns);
        ips[0].parse().expect("an IP in the status")
    }

    /// What an endpoint controller would write: one ready endpoint of `service` on each of `nodes`
    /// (at the node's pod address of `family`'s family).
    async fn endpoints(&self, rig: &Rig, service: &str, nodes: &[usize], family: IpAddr, protocol: Protocol) {
        let endpoints: Vec<_> = nodes
            .iter()
            .map(|i| {
                let n = &rig.lab.nodes[*i];
                json!({
                    "addresses": [n.pod_ip(family).to_string()], "conditions": {"ready": true},
                    "topology": {"kubernetes.io/hostname": n.name}, "nodeName": n.name,
                })
            })
            .collect();
        let v1 = self.version == SliceVersion::V1;
        let proto = match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let mut slice = json!({"apiVersion": format!("discovery.k8s.io/{}", if v1 { "v1" } else { "v1beta1" }),
            "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": if family.is_ipv4() { "IPv4" } else { "IPv6" }, "endpoints": endpoints,
            "ports": [{"port": protocol.backend_port(), "protocol": proto}]});
        if !v1 {
            // v1beta1 on 1.20 carries the node in topology; nodeName is behind a feature gate there.
            for e in slice["endpoints"].as_array_mut().expect("array") {
                e.as_object_mut().expect("object").remove("nodeName");
            }
        }
        let obj: DynamicObject = serde_json::from_value(slice).expect("slice");
        self.slices
            .create(&PostParams::default(), &obj)
            .await
            .expect("EndpointSlice created");
    }

    /// Waits until the ServiceL2Status of `service` (written by the announcing speaker) names `node`:
    /// who `kubectl get servicel2statuses` says announces is who the client reaches.
    async fn status_names(&self, rig: &Rig, service: &str, node: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.l2.get_opt(service).await;
            if let Ok(Some(s)) = &got
                && s.spec.node == node
            {
                return;
            }
            if Instant::now() > deadline {
                let now = match got {
                    Ok(Some(s)) => format!("it names {:?}: {:?}", s.spec.node, s.spec),
                    Ok(None) => "there is none".to_string(),
                    Err(e) => format!("cannot read it: {e}"),
                };
                panic!(
                    "the ServiceL2Status {}/{service} does not name {node} after 10 s: {now}{}",
                    self.ns,
                    rig.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sets (`Some(value)`) or removes (`None`) label `key` of Node `node` with kubectl (synchronous, so it
/// also works from Drop).
fn label_node(kb: &KubeBox, node: &str, key: &str, value: Option<&str>) -> Result<(), String> {
    let arg = match value {
        Some(v) => format!("{key}={v}"),
        None => format!("{key}-"),
    };
    kubectl(kb, &["label", "node", node, &arg, "--overwrite"])
}

/// Runs kubectl against the box; its error output when it fails.
fn kubectl(kb: &KubeBox, args: &[&str]) -> Result<(), String> {
    let out = kb
        .kubectl()
        .args(args)
        .output()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sets Node `node`'s `NetworkUnavailable` condition (status subresource, strategic merge by type).
fn network_unavailable(kb: &KubeBox, node: &str, unavailable: bool) -> Result<(), String> {
    let patch = json!({"status": {"conditions": [{"type": "NetworkUnavailable",
        "status": if unavailable { "True" } else { "False" },
        "reason": if unavailable { "LabCutOff" } else { "LabRouteCreated" },
        "message": "set by the datapath test"}]}});
    kubectl(
        kb,
        &[
            "patch",
            "node",
            node,
            "--subresource=status",
            "--type=strategic",
            "-p",
            &patch.to_string(),
        ],
    )
}

/// Undoes the node changes of a test, also when it fails.
struct NodeChanges {
    kb: &'static KubeBox,
    /// (node, label key) to remove.
    labelled: Vec<(String, String)>,
    unavailable: Vec<String>,
}

impl Drop for NodeChanges {
    fn drop(&mut self) {
        // No panic here (this may run while a failed test unwinds): say what could not be undone.
        for (n, key) in &self.labelled {
            if let Err(e) = label_node(self.kb, n, key, None) {
                eprintln!("cannot remove label {key} of {n}: {e}");
            }
        }
        for n in &self.unavailable {
            if let Err(e) = network_unavailable(self.kb, n, false) {
                eprintln!("cannot reset NetworkUnavailable of {n}: {e}");
            }
        }
    }
}

/// One request of a client loop.
#[derive(Debug)]
struct Sample {
    /// When it started, from the loop's start.
    at: Duration,
    /// How long it took.
    took: Duration,
    /// The node that answered, or the error.
    answer: Result<usize, String>,
}

/// Runs a client loop against `vip:80` (each request bounded by `timeout`, about every 10 ms) and,
/// 500 ms into it, `trigger`. Stops once 10 requests in a row after the trigger were answered by a node
/// other than `from`, or after `limit`. Returns the samples and when the trigger ran.
fn client_loop(
    rig: &Rig,
    vip: IpAddr,
    timeout: Duration,
    limit: Duration,
    from: usize,
    trigger: impl FnOnce(),
) -> (Vec<Sample>, Duration) {
    let fired: OnceLock<Duration> = OnceLock::new();
    let start = Instant::now();
    std::thread::scope(|s| {
        let looper = s.spawn(|| {
            let mut samples = vec![];
            let mut moved = 0;
            while start.elapsed() < limit && samples.len() < 5000 {
                let at = start.elapsed();
                let answer = rig.http_node(vip, timeout);
                let took = start.elapsed() - at;
                if fired.get().is_some_and(|f| at > *f) {
                    moved = match answer {
                        Ok(n) if n != from => moved + 1,
                        _ => 0,
                    };
                }
                samples.push(Sample { at, took, answer });
                if moved >= 10 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        std::thread::sleep(Duration::from_millis(500));
        let _ = fired.set(start.elapsed());
        trigger();
        let samples = looper.join().expect("client loop");
        (samples, *fired.get().expect("trigger ran"))
    })
}

/// Checks a failover run: before `fired` every answer came from `from` (most requests answered); after
/// it, errors only within a window shorter than `max_window`, answers from `from` and then only from
/// one other node, the last 10 from it. Returns that node and the error window.
fn check_failover(
    rig: &Rig,
    samples: &[Sample],
    fired: Duration,
    from: usize,
    max_window: Duration,
) -> (usize, Duration) {
    let summary = || {
        samples
            .iter()
            .map(|s| {
                format!(
                    "{:>6} ms +{:>4} ms {}",
                    s.at.as_millis(),
                    s.took.as_millis(),
                    match &s.answer {
                        Ok(n) => rig.name(*n).to_string(),
                        Err(e) => e.clone(),
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (before, after): (Vec<&Sample>, Vec<&Sample>) = samples.iter().partition(|s| s.at + s.took <= fired);
    // Before the kill every answer comes from the owner. A request may time out on a loaded machine
    // (two cores, the box, three speakers): a few are tolerated, they are no failover.
    let answered = before.iter().filter(|s| s.answer.is_ok()).count();
    assert!(
        answered > 0 && answered * 2 > before.len(),
        "most requests before the kill must be answered:\n{}",
        summary()
    );
    for s in &before {
        if let Ok(n) = s.answer {
            assert_eq!(
                n,
                from,
                "before the kill every request is answered by {}:\n{}",
                rig.name(from),
                summary()
            );
        }
    }
    let errors: Vec<&&Sample> = after.iter().filter(|s| s.answer.is_err()).collect();
    let window = match (errors.first(), errors.last()) {
        (Some(first), Some(last)) => (last.at + last.took).saturating_sub(first.at),
        _ => Duration::ZERO,
    };
    let served: Vec<usize> = after
        .iter()
        .filter(|s| s.at > fired)
        .filter_map(|s| s.answer.as_ref().ok().copied())
        .collect();
    let new = *served.last().unwrap_or_else(|| {
        panic!(
            "no request was answered after the kill:\n{}{}",
            summary(),
            rig.logs()
        )
    });
    assert_ne!(
        new,
        from,
        "still served by the killed node at the end:\n{}",
        summary()
    );
    // Traffic moves once: answers from the old node (while it still gets the client's packets), then
    // only from the new one; never a third node, never back.
    let switched = served.iter().position(|n| *n == new).unwrap_or(0);
    assert!(
        served[..switched].iter().all(|n| *n == from) && served[switched..].iter().all(|n| *n == new),
        "traffic did not move once from {} to {}:\n{}",
        rig.name(from),
        rig.name(new),
        summary()
    );
    let tail: Vec<&&Sample> = after.iter().rev().take(10).collect();
    assert!(
        tail.len() == 10 && tail.iter().all(|s| s.answer == Ok(new)),
        "the loop ended before 10 requests in a row reached {}:\n{}{}",
        rig.name(new),
        summary(),
        rig.logs()
    );
    assert!(
        window < max_window,
        "errors for {window:?} (at most {max_window:?} allowed):\n{}",
        summary()
    );
    eprintln!(
        "failover {} -> {}: {} requests after the kill, {} failed, error window {window:?}",
        rig.name(from),
        rig.name(new),
        after.len(),
        errors.len()
    );
    (new, window)
}

#[tokio::test]
async fn http_to_the_vip_reaches_the_announcing_nodes_backend_and_nothing_else_answers_for_it() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    let case = Case::new("dp-http", "192.0.2.100-192.0.2.103").await;
    let vip = case
        .service("web", HTTP_PORT, Protocol::Tcp, json!({}), false)
        .await;
    case.endpoints(&rig, "web", &[0, 1, 2], vip, Protocol::Tcp).await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");

    let owner = rig.arp_owner(vip).await;
    case.status_names(&rig, "web", rig.name(owner)).await;
    rig.served_by(vip, owner, 10).await;
    assert_eq!(
        rig.neighbour_owner(vip),
        Some(owner),
        "the client sends to the node that answered its ARP"
    );
    for _ in 0..3 {
        assert_eq!(
            rig.arp_owner(vip).await,
            owner,
            "one node answers ARP for the VIP"
        );
    }

    // The stand-in for kube-proxy does not make the kernel answer for an address: another address of
    // the pool, delivered on every node but held by no Service, is not reachable.
    let unused: IpAddr = if vip.to_string() == "192.0.2.103" {
        "192.0.2.102"
    } else {
        "192.0.2.103"
    }
    .parse()
    .expect("ip");
    rig.lab
        .deliver_locally(unused, HTTP_PORT, Protocol::Tcp)
        .expect("delivered");
    assert!(
        rig.lab
            .client_http_get(unused, HTTP_PORT, Duration::from_millis(500))
            .is_err(),
        "{unused} is held by no Service but was served"
    );
    assert_eq!(
        rig.lab.arping(&unused.to_string()),
        None,
        "nobody answers ARP for {unused}"
    );
}

#[tokio::test]
async fn when_the_announcing_node_dies_a_client_loop_sees_errors_only_within_the_failover_window() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    let case = Case::new("dp-failover", "192.0.2.104-192.0.2.107").await;
    let vip = case
        .service("web", HTTP_PORT, Protocol::Tcp, json!({}), false)
        .await;
    case.endpoints(&rig, "web", &[0, 1, 2], vip, Protocol::Tcp).await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");
    let first = rig.arp_owner(vip).await;
    rig.served_by(vip, first, 5).await;

    // The node dies: its speaker is SIGKILLed and its link is cut at the same moment (a node that stops
    // answering altogether; a speaker crash alone leaves its node serving, see the IPv6 test).
    let mut killed = rig.speakers[first].take().expect("speaker running");
    let (samples, fired) = {
        let r: &Rig = &rig;
        client_loop(
            r,
            vip,
            Duration::from_millis(100),
            Duration::from_secs(15),
            first,
            || {
                r.lab.set_node_link(first, false).expect("link cut");
                killed.crash();
            },
        )
    };
    let (second, _) = check_failover(&rig, &samples, fired, first, Duration::from_secs(3));
    // The cut was real: the dead node does not even answer ARP for its own address. (Whether a request
    // failed depends on how fast the loop runs on a loaded machine; the window check above does not.)
    assert_eq!(
        rig.lab.arping(&rig.lab.nodes[first].ip4.to_string()),
        None,
        "the cut-off node still answers"
    );
    case.status_names(&rig, "web", rig.name(second)).await;
    assert_eq!(rig.neighbour_owner(vip), Some(second));

    // The node comes back (link, then its speaker): it does not take the address back, traffic stays
    // with the new owner.
    rig.heal().await;
    rig.served_by(vip, second, 10).await;
    assert_eq!(rig.arp_owner(vip).await, second, "no flip-back");
}

#[tokio::test]
async fn a_tcp_and_a_udp_service_sharing_an_ip_are_both_answered_through_it_by_the_same_node() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    let case = Case::new("dp-shared", "192.0.2.108-192.0.2.111").await;
    let key = json!({"lb.ferrite.dev/allow-shared-ip": "dns"});
    let tcp = case
        .service("dns-tcp", HTTP_PORT, Protocol::Tcp, key.clone(), false)
        .await;
    let udp = case.service("dns-udp", UDP_PORT, Protocol::Udp, key, false).await;
    assert_eq!(tcp, udp, "both Services hold one address");
    case.endpoints(&rig, "dns-tcp", &[0, 1, 2], tcp, Protocol::Tcp)
        .await;
    case.endpoints(&rig, "dns-udp", &[0, 1, 2], udp, Protocol::Udp)
        .await;
    rig.lab
        .deliver_locally(tcp, HTTP_PORT, Protocol::Tcp)
        .expect("TCP delivered");
    rig.lab
        .deliver_locally(udp, UDP_PORT, Protocol::Udp)
        .expect("UDP delivered");

    let owner = rig.arp_owner(tcp).await;
    case.status_names(&rig, "dns-tcp", rig.name(owner)).await;
    case.status_names(&rig, "dns-udp", rig.name(owner)).await;
    rig.served_by(tcp, owner, 3).await;
    for i in 0..5 {
        let answer = rig
            .lab
            .client_udp(udp, UDP_PORT, &format!("ping{i}"), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("UDP through the shared VIP: {e:#}{}", rig.logs()));
        assert_eq!(
            answer,
            format!("{} ping{i}", rig.name(owner)),
            "the UDP Service is answered by the same node as the TCP one"
        );
    }
    // The UDP port is not answered over TCP and vice versa: each port reaches its own Service only.
    assert!(
        rig.lab
            .client_udp(udp, HTTP_PORT, "x", Duration::from_millis(500))
            .is_err(),
        "UDP to the TCP Service's port was answered"
    );
}

#[tokio::test]
async fn an_ipv6_vip_is_served_before_and_after_its_speaker_is_sigkilled() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    let case = Case::new("dp-v6", "2001:db8::100-2001:db8::103").await;
    let vip = case
        .service(
            "web6",
            HTTP_PORT,
            Protocol::Tcp,
            json!({"lb.ferrite.dev/ips": "2001:db8::101"}),
            false,
        )
        .await;
    assert_eq!(vip.to_string(), "2001:db8::101");
    case.endpoints(&rig, "web6", &[0, 1, 2], vip, Protocol::Tcp).await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");

    // Reached over NDP: the node that answers is the one the client's neighbour entry points at.
    let first = eventually(Duration::from_secs(15), "HTTP to the IPv6 VIP", || async {
        rig.http_node(vip, Duration::from_secs(1)).ok()
    })
    .await;
    assert_eq!(
        rig.neighbour_owner(vip),
        Some(first),
        "served by the node the client's NDP resolved"
    );
    case.status_names(&rig, "web6", rig.name(first)).await;
    rig.served_by(vip, first, 5).await;

    // Only the speaker dies; the node keeps serving what reaches it, so the client keeps being
    // answered until the new owner's unsolicited Neighbor Advertisement moves its entry.
    let mut killed = rig.speakers[first].take().expect("speaker running");
    let (samples, fired) = {
        let r: &Rig = &rig;
        client_loop(
            r,
            vip,
            Duration::from_millis(200),
            Duration::from_secs(15),
            first,
            || killed.crash(),
        )
    };
    let (second, _) = check_failover(&rig, &samples, fired, first, Duration::from_secs(3));
    assert_eq!(rig.neighbour_owner(vip), Some(second), "the client's entry moved");
    case.status_names(&rig, "web6", rig.name(second)).await;
    rig.heal().await;
    rig.served_by(vip, second, 5).await;
}

#[tokio::test]
async fn local_traffic_policy_exclude_label_and_network_unavailable_decide_who_announces_and_serves() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    let case = Case::new("dp-policy", "192.0.2.112-192.0.2.119").await;
    let names: Vec<String> = rig.lab.nodes.iter().map(|n| n.name.clone()).collect();
    let rank = |ip: &str| -> Vec<usize> {
        let ip: IpAddr = ip.parse().expect("ip");
        ferrite_lb::election::ranking(ip, names.iter().map(String::as_str))
            .iter()
            .map(|n| rig.index(n))
            .collect()
    };

    // externalTrafficPolicy: Local with the only endpoint on the node MetalLB's ranking puts last:
    // that node announces and serves.
    let local_ip = "192.0.2.112";
    let only = rank(local_ip)[2];
    let vip = case
        .service(
            "local",
            HTTP_PORT,
            Protocol::Tcp,
            json!({"lb.ferrite.dev/ips": local_ip}),
            true,
        )
        .await;
    case.endpoints(&rig, "local", &[only], vip, Protocol::Tcp).await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");
    assert_eq!(
        rig.arp_owner(vip).await,
        only,
        "the node with the endpoint announces{}",
        rig.logs()
    );
    case.status_names(&rig, "local", rig.name(only)).await;
    rig.served_by(vip, only, 5).await;

    // The two best-ranked nodes for another address are out: the first by the exclude label, the
    // second by NetworkUnavailable=True. A Service on that address is announced by the third only.
    let cluster_ip = "192.0.2.113";
    let r = rank(cluster_ip);
    let mut changes = NodeChanges {
        kb: case.kb,
        labelled: vec![],
        unavailable: vec![],
    };
    label_node(case.kb, rig.name(r[0]), EXCLUDE_LABEL, Some("")).expect("label set");
    changes
        .labelled
        .push((rig.name(r[0]).to_string(), EXCLUDE_LABEL.to_string()));
    network_unavailable(case.kb, rig.name(r[1]), true).expect("condition set");
    changes.unavailable.push(rig.name(r[1]).to_string());
    // Node changes and the Service arrive on different watches: give the Node events a head start.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let vip = case
        .service(
            "cluster",
            HTTP_PORT,
            Protocol::Tcp,
            json!({"lb.ferrite.dev/ips": cluster_ip}),
            false,
        )
        .await;
    case.endpoints(&rig, "cluster", &[0, 1, 2], vip, Protocol::Tcp)
        .await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");
    for _ in 0..5 {
        assert_eq!(
            rig.arp_owner(vip).await,
            r[2],
            "only {} may announce {cluster_ip} ({} is excluded, {} has NetworkUnavailable){}",
            rig.name(r[2]),
            rig.name(r[0]),
            rig.name(r[1]),
            rig.logs()
        );
    }
    case.status_names(&rig, "cluster", rig.name(r[2])).await;
    rig.served_by(vip, r[2], 5).await;
    assert_eq!(rig.neighbour_owner(vip), Some(r[2]));

    // Both back in, and the owner labelled: the address moves off it to the best-ranked candidate, and
    // the client follows (gratuitous ARP).
    drop(changes);
    let changes = NodeChanges {
        kb: case.kb,
        labelled: vec![(rig.name(r[2]).to_string(), EXCLUDE_LABEL.to_string())],
        unavailable: vec![],
    };
    label_node(case.kb, rig.name(r[2]), EXCLUDE_LABEL, Some("true")).expect("label set");
    rig.served_by(vip, r[0], 5).await;
    assert_eq!(rig.neighbour_owner(vip), Some(r[0]), "the client's entry moved");
    case.status_names(&rig, "cluster", rig.name(r[0])).await;
    drop(changes);
}

#[tokio::test]
async fn an_advertisements_node_selector_picks_who_serves_and_a_pool_nobody_advertises_is_allocate_only() {
    let mut rig = rig().lock().await;
    rig.heal().await;
    // The namespace's default pool (`l2: {}`) is not used here: both Services name their pool.
    let case = Case::new("dp-adv", "192.0.2.120-192.0.2.121").await;
    let advertised = case.pool("adv", "192.0.2.122-192.0.2.123", None).await;
    let quiet = case.pool("quiet", "192.0.2.124-192.0.2.125", None).await;
    let names: Vec<String> = rig.lab.nodes.iter().map(|n| n.name.clone()).collect();
    let ip = "192.0.2.122";
    let last = rig
        .index(&ferrite_lb::election::ranking(ip.parse().expect("ip"), names.iter().map(String::as_str))[2]);
    let key = "ferrite.dev/datapath-l2";
    let _changes = NodeChanges {
        kb: case.kb,
        labelled: vec![(rig.name(last).to_string(), key.to_string())],
        unavailable: vec![],
    };
    label_node(case.kb, rig.name(last), key, Some(&case.ns)).expect("label set");
    let ads: Api<DynamicObject> = Api::all_with(
        case.kb.client().await,
        &kube::discovery::ApiResource::erase::<ferrite_api::lb::L2Advertisement>(&()),
    );
    let ad: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement",
        "metadata": {"name": advertised},
        "spec": {"ipPools": [advertised], "interfaces": ["eth0"],
                 "nodeSelectors": [{"matchLabels": {key: case.ns}}]}}))
    .expect("advertisement");
    ads.create(&PostParams::default(), &ad)
        .await
        .expect("L2Advertisement created");
    // Let the speakers see the label and the advertisement before the Service exists.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let vip = case
        .service(
            "adv",
            HTTP_PORT,
            Protocol::Tcp,
            json!({"lb.ferrite.dev/pool": advertised, "lb.ferrite.dev/ips": ip}),
            false,
        )
        .await;
    case.endpoints(&rig, "adv", &[0, 1, 2], vip, Protocol::Tcp).await;
    rig.lab
        .deliver_locally(vip, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");
    for _ in 0..3 {
        assert_eq!(
            rig.arp_owner(vip).await,
            last,
            "only the node the advertisement selects announces{}",
            rig.logs()
        );
    }
    case.status_names(&rig, "adv", rig.name(last)).await;
    rig.served_by(vip, last, 5).await;

    // Allocate-only: the address is handed out, and nobody answers for it or serves it.
    let silent = case
        .service(
            "quiet",
            HTTP_PORT,
            Protocol::Tcp,
            json!({"lb.ferrite.dev/pool": quiet}),
            false,
        )
        .await;
    case.endpoints(&rig, "quiet", &[0, 1, 2], silent, Protocol::Tcp)
        .await;
    rig.lab
        .deliver_locally(silent, HTTP_PORT, Protocol::Tcp)
        .expect("VIP delivered");
    assert_eq!(
        rig.lab.arping_within(
            &silent.to_string(),
            Duration::from_millis(200),
            Duration::from_secs(2)
        ),
        None,
        "the address of a pool no advertisement selects was answered{}",
        rig.logs()
    );
    assert!(
        rig.lab
            .client_http_get(silent, HTTP_PORT, Duration::from_millis(500))
            .is_err(),
        "an allocate-only address was served"
    );
    assert!(
        case.l2.get_opt("quiet").await.expect("get").is_none(),
        "a ServiceL2Status for an address nobody announces"
    );
    ads.delete(&advertised, &Default::default())
        .await
        .expect("L2Advertisement deleted");
}
