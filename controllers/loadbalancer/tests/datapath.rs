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

use common::{
    lab::{Accounts, Slices, Speakers, built_binary, registered_lab, speaker_http, wait_status_names},
    *,
};
use ferrite_api::lb::{IPPool, ServiceL2Status};
use ferrite_e2e::{
    KubeBox,
    netlab::{NetLab, Protocol},
};
use k8s_openapi::api::core::v1::Service;
use kube::{
    Api,
    api::{DynamicObject, PostParams},
};
use serde_json::json;
use std::{
    net::IpAddr,
    path::PathBuf,
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
    speakers: Speakers,
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

impl Rig {
    async fn start() -> Rig {
        let kb = KubeBox::shared();
        let accounts = Accounts::install(kb).await;
        let mut lab = registered_lab(kb, 3).await;
        lab.delete_after_exit().expect("lab janitor");
        // Speakers restarted later in the run run this same binary, even if the build directory's is
        // replaced by a rebuild meanwhile (a hard link keeps the file; a copy where links cannot be).
        let bin: PathBuf = lab.dir().join("ferrite-lb");
        if std::fs::hard_link(built_binary(), &bin).is_err() {
            std::fs::copy(built_binary(), &bin).expect("speaker binary copied");
        }
        lab.start_backends().expect("the lab's backends");
        let controller = accounts.start_controller(kb).await;
        let speakers = Speakers::start(&lab, &bin, &accounts.speaker, &[]);
        let mut rig = Rig {
            lab,
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
            let exited = match self.speakers.procs[i].as_mut() {
                Some(s) => (!s.is_running()).then(|| s.log_tail(40)),
                None => None,
            };
            if self.speakers.procs[i].is_none() || exited.is_some() {
                self.speakers.restart(&self.lab, i);
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
                let members =
                    speaker_http(ns, "/metrics").and_then(|(_, m)| metric(&m, "ferrite_lb_members", &[]));
                let log = std::fs::read_to_string(&self.speakers.get(i).log).unwrap_or_default();
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

    fn logs(&self) -> String {
        self.speakers.logs()
    }

    fn name(&self, i: usize) -> &str {
        &self.lab.nodes[i].name
    }

    fn index(&self, name: &str) -> usize {
        self.lab
            .node_index(name)
            .unwrap_or_else(|| panic!("{name:?} is not a lab node"))
    }

    /// The nodes in the order MetalLB's ranking puts them for `ip`.
    fn ranking(&self, ip: &str) -> Vec<usize> {
        let names: Vec<String> = self.lab.nodes.iter().map(|n| n.name.clone()).collect();
        let ip: IpAddr = ip.parse().expect("ip");
        ferrite_lb::election::ranking(ip, names.iter().map(String::as_str))
            .iter()
            .map(|n| self.index(n))
            .collect()
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
            .node_index_by_mac(&mac)
            .unwrap_or_else(|| panic!("{ip} answered by {mac}, which is no lab node's MAC"))
    }

    /// Asks `times` times who answers ARP for `vip`: node `want` every time (`why`, with the logs).
    async fn arp_owner_is(&self, vip: IpAddr, want: usize, times: usize, why: &str) {
        for _ in 0..times {
            assert_eq!(self.arp_owner(vip).await, want, "{why}{}", self.logs());
        }
    }

    /// The node the client's neighbour entry for `vip` points at.
    fn neighbour_owner(&self, vip: IpAddr) -> Option<usize> {
        let mac = self.lab.client_neighbour(&vip.to_string())?;
        self.lab.node_index_by_mac(&mac)
    }

    /// One HTTP GET from the client to `vip:80`; the node whose backend answered.
    fn http_node(&self, vip: IpAddr, timeout: Duration) -> Result<usize, String> {
        let body = self
            .lab
            .client_http_get(vip, HTTP_PORT, timeout)
            .map_err(|e| format!("{e:#}"))?;
        self.lab
            .node_index(&body)
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

impl Rig {
    /// 500 ms into a client loop against `vip` (requests bounded by `timeout`, see [`client_loop`]),
    /// node `from`'s speaker is SIGKILLed (with `cut_link`, its link is cut at the same moment); checks
    /// the failover ([`check_failover`]: errors for less than 3 s) and returns the new node.
    fn fail_over(&mut self, vip: IpAddr, from: usize, timeout: Duration, cut_link: bool) -> usize {
        let mut killed = self.speakers.take(from);
        let r: &Rig = self;
        let (samples, fired) = client_loop(r, vip, timeout, Duration::from_secs(15), from, || {
            if cut_link {
                r.lab.set_node_link(from, false).expect("link cut");
            }
            killed.crash();
        });
        check_failover(r, &samples, fired, from, Duration::from_secs(3)).0
    }
}

/// One test's namespace, pool and API handles.
struct Case {
    kb: &'static KubeBox,
    ns: String,
    svcs: Api<Service>,
    slices: Slices,
    l2: Api<ServiceL2Status>,
}

impl Case {
    /// A fresh namespace and an IPPool over `range` for it, announced everywhere (`l2: {}`).
    async fn new(prefix: &str, range: &str) -> Case {
        let kb = KubeBox::shared();
        let client = kb.client().await;
        let ns = kb.namespace(prefix).await;
        let case = Case {
            kb,
            svcs: Api::namespaced(client.clone(), &ns),
            slices: Slices::new(&client, &ns).await,
            l2: Api::namespaced(client, &ns),
            ns,
        };
        case.pool("lan", range, Some(json!({}))).await;
        case
    }

    /// Another IPPool `<ns>-<suffix>` over `range` for this namespace, with `l2` as its inline block
    /// (`None`: no inline block, so only an L2Advertisement can announce it).
    async fn pool(&self, suffix: &str, range: &str, l2: Option<serde_json::Value>) -> String {
        let name = format!("{}-{suffix}", self.ns);
        let extra = match l2 {
            Some(l2) => json!({"l2": l2}),
            None => json!({}),
        };
        let pools: Api<IPPool> = Api::all(self.kb.client().await);
        create(&pools, pool(&name, &self.ns, &[range], extra)).await;
        name
    }

    /// Creates the LoadBalancer Service `svc` and waits for its address; then writes one ready endpoint
    /// of it on each of `nodes` (at the node's pod address of the address's family) and has every node
    /// deliver the address's port locally, as kube-proxy would. Returns the address.
    async fn serve(&self, rig: &Rig, svc: LbService, nodes: &[usize]) -> IpAddr {
        let name = svc.name().to_string();
        svc.create(&self.svcs).await;
        let (ips, took) = wait_ips(&self.svcs, &name, Duration::from_secs(15)).await;
        eprintln!("{}/{name}: {ips:?} after {took:?}", self.ns);
        let vip: IpAddr = ips[0].parse().expect("an IP in the status");
        let (port, protocol) = svc.port_protocol();
        self.slices.on_nodes(&rig.lab, &name, nodes, vip, protocol).await;
        rig.lab
            .deliver_locally(vip, port, protocol)
            .expect("VIP delivered");
        vip
    }

    /// Waits until the ServiceL2Status of `service` (written by the announcing speaker) names `node`:
    /// who `kubectl get servicel2statuses` says announces is who the client reaches.
    async fn status_names(&self, rig: &Rig, service: &str, node: &str) {
        wait_status_names(&self.l2, service, node, Duration::from_secs(10), || rig.logs()).await;
    }
}

/// The test's turn: the shared rig, locked for the whole test and healed (see [`Rig::heal`]), and a
/// fresh namespace with a pool over `range` (see [`Case::new`]).
async fn turn(prefix: &str, range: &str) -> (tokio::sync::MutexGuard<'static, Rig>, Case) {
    let mut rig = rig().lock().await;
    rig.heal().await;
    (rig, Case::new(prefix, range).await)
}

/// A Service `name` on `port` (`protocol`) with `annotations`.
fn web(name: &str, port: u16, protocol: Protocol, annotations: serde_json::Value) -> LbService {
    LbService::new(name).port(port, protocol).annotations(annotations)
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
    let (rig, case) = turn("dp-http", "192.0.2.100-192.0.2.103").await;
    let vip = case
        .serve(&rig, web("web", HTTP_PORT, Protocol::Tcp, json!({})), &[0, 1, 2])
        .await;

    let owner = rig.arp_owner(vip).await;
    case.status_names(&rig, "web", rig.name(owner)).await;
    rig.served_by(vip, owner, 10).await;
    assert_eq!(
        rig.neighbour_owner(vip),
        Some(owner),
        "the client sends to the node that answered its ARP"
    );
    rig.arp_owner_is(vip, owner, 3, "one node answers ARP for the VIP")
        .await;

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
    let (mut rig, case) = turn("dp-failover", "192.0.2.104-192.0.2.107").await;
    let vip = case
        .serve(&rig, web("web", HTTP_PORT, Protocol::Tcp, json!({})), &[0, 1, 2])
        .await;
    let first = rig.arp_owner(vip).await;
    rig.served_by(vip, first, 5).await;

    // The node dies: its speaker is SIGKILLed and its link is cut at the same moment (a node that stops
    // answering altogether; a speaker crash alone leaves its node serving, see the IPv6 test).
    let second = rig.fail_over(vip, first, Duration::from_millis(100), true);
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
    let (rig, case) = turn("dp-shared", "192.0.2.108-192.0.2.111").await;
    let key = json!({"lb.ferrite.dev/allow-shared-ip": "dns"});
    let tcp = case
        .serve(
            &rig,
            web("dns-tcp", HTTP_PORT, Protocol::Tcp, key.clone()),
            &[0, 1, 2],
        )
        .await;
    let udp = case
        .serve(&rig, web("dns-udp", UDP_PORT, Protocol::Udp, key), &[0, 1, 2])
        .await;
    assert_eq!(tcp, udp, "both Services hold one address");

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
    let (mut rig, case) = turn("dp-v6", "2001:db8::100-2001:db8::103").await;
    let svc = web(
        "web6",
        HTTP_PORT,
        Protocol::Tcp,
        json!({"lb.ferrite.dev/ips": "2001:db8::101"}),
    );
    let vip = case.serve(&rig, svc, &[0, 1, 2]).await;
    assert_eq!(vip.to_string(), "2001:db8::101");

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
    let second = rig.fail_over(vip, first, Duration::from_millis(200), false);
    assert_eq!(rig.neighbour_owner(vip), Some(second), "the client's entry moved");
    case.status_names(&rig, "web6", rig.name(second)).await;
    rig.heal().await;
    rig.served_by(vip, second, 5).await;
}

#[tokio::test]
async fn local_traffic_policy_exclude_label_and_network_unavailable_decide_who_announces_and_serves() {
    let (rig, case) = turn("dp-policy", "192.0.2.112-192.0.2.119").await;

    // externalTrafficPolicy: Local with the only endpoint on the node MetalLB's ranking puts last:
    // that node announces and serves.
    let local_ip = "192.0.2.112";
    let only = rig.ranking(local_ip)[2];
    let svc = web(
        "local",
        HTTP_PORT,
        Protocol::Tcp,
        json!({"lb.ferrite.dev/ips": local_ip}),
    );
    let vip = case.serve(&rig, svc.local(), &[only]).await;
    rig.arp_owner_is(vip, only, 1, "the node with the endpoint announces")
        .await;
    case.status_names(&rig, "local", rig.name(only)).await;
    rig.served_by(vip, only, 5).await;

    // The two best-ranked nodes for another address are out: the first by the exclude label, the
    // second by NetworkUnavailable=True. A Service on that address is announced by the third only.
    let cluster_ip = "192.0.2.113";
    let r = rig.ranking(cluster_ip);
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
    let svc = web(
        "cluster",
        HTTP_PORT,
        Protocol::Tcp,
        json!({"lb.ferrite.dev/ips": cluster_ip}),
    );
    let vip = case.serve(&rig, svc, &[0, 1, 2]).await;
    let why = format!(
        "only {} may announce {cluster_ip} ({} is excluded, {} has NetworkUnavailable)",
        rig.name(r[2]),
        rig.name(r[0]),
        rig.name(r[1])
    );
    rig.arp_owner_is(vip, r[2], 5, &why).await;
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
    // The namespace's default pool (`l2: {}`) is not used here: both Services name their pool.
    let (rig, case) = turn("dp-adv", "192.0.2.120-192.0.2.121").await;
    let advertised = case.pool("adv", "192.0.2.122-192.0.2.123", None).await;
    let quiet = case.pool("quiet", "192.0.2.124-192.0.2.125", None).await;
    let ip = "192.0.2.122";
    let last = rig.ranking(ip)[2];
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

    let svc = web(
        "adv",
        HTTP_PORT,
        Protocol::Tcp,
        json!({"lb.ferrite.dev/pool": advertised, "lb.ferrite.dev/ips": ip}),
    );
    let vip = case.serve(&rig, svc, &[0, 1, 2]).await;
    rig.arp_owner_is(vip, last, 3, "only the node the advertisement selects announces")
        .await;
    case.status_names(&rig, "adv", rig.name(last)).await;
    rig.served_by(vip, last, 5).await;

    // Allocate-only: the address is handed out, and nobody answers for it or serves it.
    let svc = web(
        "quiet",
        HTTP_PORT,
        Protocol::Tcp,
        json!({"lb.ferrite.dev/pool": quiet}),
    );
    let silent = case.serve(&rig, svc, &[0, 1, 2]).await;
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
