//! End to end on the box and real packets: the chart installed with helm, the allocator and three
//! speakers running as the chart's ServiceAccounts (speakers inside "node" network namespaces), a
//! Service that gets an address and the elected node answering the client's ARP with its own MAC. From
//! there each test breaks something and checks what a user on the LAN would see:
//! - the elected speaker is killed: the address moves (the client learns the new MAC from the
//!   gratuitous ARP); the killed speaker comes back, joins gossip and does NOT take it back;
//! - every speaker's API connection is stalled (its node's API forwarder is SIGSTOPped): the owner
//!   still answers ARP, and when it dies gossip alone moves the address; the claim lands once the API
//!   is back;
//! - the owner's gossip task dies (fault injection, SIGUSR1): its `/livez` fails, it exits non-zero and
//!   a peer takes over;
//! - an address in a Service's status that is in no IPPool is never answered and gets one Warning.
//!
//! One box for the binary; each test has its own lab network, speakers, controller, namespace and pool
//! range, and the tests run one at a time (three speakers with 250 ms gossip probes on two cores).

mod common;

use common::{
    lab::{Accounts, Slices, Speakers, built_binary, registered_lab, speaker_http, status_node},
    *,
};
use ferrite_api::lb::ServiceL2Status;
use ferrite_e2e::{KubeBox, Supervised, netlab::NetLab};
use k8s_openapi::api::{core::v1::Service, events::v1::Event};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;
use std::{
    process::Command,
    time::{Duration, Instant},
};

/// The tests share one box but not the CPU well: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The process's log with terminal colour codes removed (the plain log format colours field names).
fn log_text(p: &Supervised) -> String {
    let raw = std::fs::read_to_string(&p.log).unwrap_or_default();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The speaker's log shows gossip with every one of `peers` ("gossip: speaker up node=<peer>").
fn joined(p: &Supervised, peers: &[&str]) -> bool {
    let log = log_text(p);
    peers.iter().all(|peer| {
        log.lines()
            .any(|l| l.contains("gossip: speaker up") && l.contains(&format!("node={peer} ")))
    })
}

/// PIDs of this lab's API forwarders (socat, the listener and its per-connection children) in `ns`.
fn api_forwarders(lab: &NetLab, ns: &str) -> Vec<u32> {
    let sock = lab.dir().join("api.sock").display().to_string();
    let mut pids = vec![];
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if comm.trim() != "socat" || !cmdline.contains(&sock) || !cmdline.contains("TCP-LISTEN") {
            continue;
        }
        let in_ns = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == ns);
        if in_ns {
            pids.push(pid);
        }
    }
    pids
}

fn signal(pids: &[u32], sig: &str) {
    for pid in pids {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

/// Stalls the API connections of node namespace `ns` (SIGSTOP to its forwarders: TCP stays open, nothing
/// answers, like a half-open connection); resumed on drop (SIGCONT), also when the test fails.
struct ApiStall {
    pids: Vec<u32>,
}

impl ApiStall {
    fn new(lab: &NetLab, ns: &str) -> ApiStall {
        let pids = api_forwarders(lab, ns);
        assert!(!pids.is_empty(), "no API forwarder (socat) found in {ns}");
        signal(&pids, "STOP");
        ApiStall { pids }
    }
}

impl Drop for ApiStall {
    fn drop(&mut self) {
        signal(&self.pids, "CONT");
    }
}

/// One lab with its speakers and controller, a Service `web` with an address from `range` announced
/// by one node.
struct Rig {
    kb: &'static KubeBox,
    lab: NetLab,
    speakers: Speakers,
    controller: Option<Running>,
    ns: String,
    svcs: Api<Service>,
    slices: Slices,
    statuses: Api<ServiceL2Status>,
    vip: String,
    /// Index of the node that announces `vip`.
    first: usize,
}

impl Rig {
    async fn new(prefix: &str, range: &str) -> Rig {
        let kb = KubeBox::shared();
        let accounts = Accounts::install(kb).await;
        let lab = registered_lab(kb, 3).await;
        let controller = accounts.start_controller(kb).await;
        // Documented fault injection (docs/loadbalancer.md): SIGUSR1 aborts the gossip task.
        let speakers = Speakers::start(
            &lab,
            built_binary(),
            &accounts.speaker,
            &[("FERRITE_FAULT_GOSSIP_SIGUSR1", "true")],
        );

        let client = kb.client().await;
        let ns = kb.namespace(prefix).await;
        let pools: Api<ferrite_api::lb::IPPool> = Api::all(client.clone());
        create(
            &pools,
            pool(
                &format!("{ns}-lan"),
                &ns,
                &[range],
                json!({"l2": {"interfaces": ["eth0"]}}),
            ),
        )
        .await;
        let mut rig = Rig {
            kb,
            lab,
            speakers,
            controller: Some(controller),
            svcs: Api::namespaced(client.clone(), &ns),
            slices: Slices::new(&client, &ns).await,
            statuses: Api::namespaced(client, &ns),
            ns,
            vip: String::new(),
            first: 0,
        };
        LbService::new("web").create(&rig.svcs).await;
        rig.slices.everywhere(&rig.lab, "web").await;

        let (ips, took) = wait_ips(&rig.svcs, "web", Duration::from_secs(15)).await;
        rig.vip = ips[0].clone();
        eprintln!("VIP {} in status after {took:?}", rig.vip);
        let first = eventually(Duration::from_secs(20), "an announcing node", || rig.owner("web")).await;
        rig.first = rig.lab.node_index(&first).expect("owner is a lab node");
        let want = rig.lab.nodes[rig.first].mac.clone();
        eventually(
            Duration::from_secs(10),
            "an ARP answer from the elected node",
            || async { rig.lab.arping(&rig.vip).filter(|m| *m == want) },
        )
        .await;
        rig
    }

    /// The announcing node, from the Service's ServiceL2Status.
    async fn owner(&self, service: &str) -> Option<String> {
        status_node(&self.statuses, service).await
    }

    /// Waits (at most `limit`, `what`) until the ServiceL2Status of web names `node`.
    async fn wait_owner(&self, node: &str, limit: Duration, what: &str) {
        eventually(limit, what, || async {
            (self.owner("web").await.as_deref() == Some(node)).then_some(())
        })
        .await;
    }

    fn others(&self, i: usize) -> Vec<usize> {
        (0..self.lab.nodes.len()).filter(|j| *j != i).collect()
    }

    fn logs(&self) -> String {
        self.speakers.logs()
    }

    /// Waits until the client's neighbour entry for the VIP moved off `mac`; returns the new owner's
    /// index and how long it took from `since`.
    async fn wait_moved(&self, mac: &str, since: Instant, limit: Duration) -> (usize, Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(m) = self.lab.client_neighbour(&self.vip).filter(|m| m != mac) {
                let moved = since.elapsed();
                let i = self
                    .lab
                    .node_index_by_mac(&m)
                    .expect("the new MAC is a lab node's");
                return (i, moved);
            }
            if Instant::now() > deadline {
                panic!(
                    "the VIP {} did not move off {mac} within {limit:?}{}",
                    self.vip,
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn killed_owner_moves_the_vip_to_a_peer_and_on_return_after_joining_gossip_does_not_take_it_back() {
    let _one = SERIAL.lock().await;
    let mut rig = Rig::new("failover", "192.0.2.100-192.0.2.103").await;
    let first = rig.first;
    let first_name = rig.lab.nodes[first].name.clone();
    let mac = rig.lab.nodes[first].mac.clone();
    // Exactly one node answers: repeated asks always get the elected node's MAC.
    for _ in 0..5 {
        assert_eq!(
            rig.lab.arping(&rig.vip).as_deref(),
            Some(mac.as_str()),
            "the elected node answers with its own MAC"
        );
    }
    let note = wait_event(rig.kb, &rig.ns, "web", "Announcing").await;
    assert!(note.contains(&first_name) && note.contains("eth0"), "{note}");

    // Kill the elected node's speaker: another node takes over and the client learns its MAC from the
    // gratuitous ARP, without asking.
    let killed = Instant::now();
    rig.speakers.crash(first);
    let (second, moved) = rig.wait_moved(&mac, killed, Duration::from_secs(10)).await;
    let second_name = rig.lab.nodes[second].name.clone();
    let new_mac = rig.lab.nodes[second].mac.clone();
    eprintln!("failover {first_name} -> {second_name}: client saw the new MAC after {moved:?}");
    assert_ne!(second, first);
    assert!(moved < Duration::from_secs(5), "failover took {moved:?}");
    assert_eq!(rig.lab.arping(&rig.vip).as_deref(), Some(new_mac.as_str()));
    rig.wait_owner(
        &second_name,
        Duration::from_secs(10),
        "the ServiceL2Status to name the new owner",
    )
    .await;

    // The first node comes back: once it has joined gossip and its startup grace is over (it then
    // elects every Service), it must not take the address back (no flip-back).
    rig.speakers.restart(&rig.lab, first);
    let peers: Vec<String> = rig
        .others(first)
        .iter()
        .map(|j| rig.lab.nodes[*j].name.clone())
        .collect();
    let peers: Vec<&str> = peers.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = rig.speakers.get(first);
        if joined(s, &peers) && log_text(s).contains("startup grace over") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted speaker did not join gossip with {peers:?} and end its startup grace within 20 s:{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The round that ended the grace elected every Service; it logs "announcing" in that same round
    // for anything it won.
    let log = log_text(rig.speakers.get(first));
    assert!(
        !log.lines()
            .any(|l| l.contains("announcing") && l.contains("service=web")),
        "the restarted speaker announced web again:\n{}",
        rig.logs()
    );
    assert_eq!(
        rig.owner("web").await.as_deref(),
        Some(second_name.as_str()),
        "no flip-back"
    );
    assert_eq!(
        rig.lab.arping(&rig.vip).as_deref(),
        Some(new_mac.as_str()),
        "still answered by {second_name}"
    );
}

#[tokio::test]
async fn with_every_api_connection_stalled_the_owner_still_answers_arp_and_gossip_alone_moves_the_vip() {
    let _one = SERIAL.lock().await;
    let mut rig = Rig::new("stall", "192.0.2.104-192.0.2.107").await;
    let first = rig.first;
    let first_name = rig.lab.nodes[first].name.clone();
    let mac = rig.lab.nodes[first].mac.clone();

    // Stall every node's API connection: TCP stays open, nothing answers.
    let stalls: Vec<ApiStall> = rig
        .lab
        .nodes
        .iter()
        .map(|n| ApiStall::new(&rig.lab, &n.ns))
        .collect();
    // Still answered, by the same node, while its API calls hang.
    for _ in 0..5 {
        assert_eq!(
            rig.lab.arping(&rig.vip).as_deref(),
            Some(mac.as_str()),
            "the owner answers ARP with its API stalled"
        );
    }

    // The owner dies: gossip alone (no API) makes a stalled peer take over.
    let killed = Instant::now();
    rig.speakers.crash(first);
    let (second, moved) = rig.wait_moved(&mac, killed, Duration::from_secs(10)).await;
    let second_name = rig.lab.nodes[second].name.clone();
    eprintln!("failover with the API stalled {first_name} -> {second_name} after {moved:?}");
    assert!(moved < Duration::from_secs(5), "failover took {moved:?}");
    assert_eq!(
        rig.lab.arping(&rig.vip).as_deref(),
        Some(rig.lab.nodes[second].mac.as_str())
    );
    // The stall is real: the new owner's claim has not reached the API server.
    assert_eq!(
        rig.owner("web").await.as_deref(),
        Some(first_name.as_str()),
        "the claim landed although the API was stalled"
    );
    eventually(
        Duration::from_secs(15),
        "the new owner's claim to time out (or fail) in its background queue",
        || async {
            let log = log_text(rig.speakers.get(second));
            (log.contains("API write timed out") || log.contains("API write failed")).then_some(())
        },
    )
    .await;

    // The API comes back: the queued claim lands.
    drop(stalls);
    rig.wait_owner(
        &second_name,
        Duration::from_secs(20),
        "the ServiceL2Status to name the new owner once the API is back",
    )
    .await;
}

#[tokio::test]
async fn owner_whose_gossip_task_dies_fails_livez_exits_non_zero_and_a_peer_takes_over() {
    let _one = SERIAL.lock().await;
    let mut rig = Rig::new("gossipdeath", "192.0.2.108-192.0.2.111").await;
    let first = rig.first;
    let first_ns = rig.lab.nodes[first].ns.clone();
    let mac = rig.lab.nodes[first].mac.clone();
    assert_eq!(speaker_http(&first_ns, "/livez").map(|r| r.0), Some(200));

    let pid = rig.speakers.get(first).program_pid().expect("speaker pid");
    let killed = Instant::now();
    signal(&[pid], "USR1");
    // /livez says why, before the process goes away.
    let (code, body) = eventually(Duration::from_secs(2), "/livez to fail", || async {
        speaker_http(&first_ns, "/livez").filter(|r| r.0 != 200)
    })
    .await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("gossip task"), "{body}");

    let (second, moved) = rig.wait_moved(&mac, killed, Duration::from_secs(10)).await;
    eprintln!(
        "gossip task died on {}; {} took over after {moved:?}",
        rig.lab.nodes[first].name, rig.lab.nodes[second].name
    );
    assert_ne!(second, first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.speakers.procs[first].as_mut().is_some_and(|s| s.is_running()) {
        assert!(
            Instant::now() < deadline,
            "the speaker still runs 10 s after its gossip task died:\n{}",
            rig.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // main() prints the error and returns a failure exit code only on an error from run().
    let log = log_text(rig.speakers.get(first));
    assert!(
        log.contains("ferrite-lb: gossip task stopped"),
        "no fatal exit line in the speaker log:\n{}",
        rig.logs()
    );
    assert_eq!(
        rig.lab.arping(&rig.vip).as_deref(),
        Some(rig.lab.nodes[second].mac.as_str()),
        "one node answers: the new owner"
    );
}

#[tokio::test]
async fn status_ip_outside_every_ippool_is_never_answered_and_gets_one_warning_event() {
    let _one = SERIAL.lock().await;
    let mut rig = Rig::new("outofpool", "192.0.2.112-192.0.2.115").await;
    // No allocator from here on: the status below stays as written (as if someone with services/status
    // access had written it).
    if let Some(mut c) = rig.controller.take() {
        c.proc.stop(Duration::from_secs(5));
    }
    let rogue_ip = "192.0.2.200";
    LbService::new("rogue").create(&rig.svcs).await;
    rig.svcs
        .patch_status(
            "rogue",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": rogue_ip}]}}})),
        )
        .await
        .expect("status written");
    // Serving endpoints everywhere: with the address in a pool, a node would be elected.
    rig.slices.everywhere(&rig.lab, "rogue").await;

    let note = wait_event(rig.kb, &rig.ns, "rogue", "NotAnnounced").await;
    assert!(note.contains(rogue_ip), "{note}");
    assert_eq!(
        rig.lab
            .arping_within(rogue_ip, Duration::from_millis(200), Duration::from_secs(3)),
        None,
        "an address in no IPPool was answered{}",
        rig.logs()
    );
    // The pool address is still answered (the speakers work), and nobody records itself for rogue.
    assert!(rig.lab.arping(&rig.vip).is_some(), "the pool address is answered");
    assert_eq!(rig.owner("rogue").await, None, "nobody claims rogue");
    let events: Api<Event> = Api::namespaced(rig.kb.client().await, &rig.ns);
    let warnings: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("NotAnnounced")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("rogue")
        })
        .collect();
    assert_eq!(warnings.len(), 1, "one Warning from the fleet: {warnings:?}");
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        warnings[0].series.is_none(),
        "the Warning was repeated: {:?}",
        warnings[0].series
    );
}
