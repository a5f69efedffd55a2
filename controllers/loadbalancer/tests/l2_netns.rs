//! Tier-2 component test of the speaker's layer-2 data plane: `ferrite-l2-announce` answers a real
//! `arping` and `ndisc6` across a veth pair between network namespaces this test creates.
//!
//! ```text
//!   fe-c-XXXX (client)                          fe-n-XXXX (node)
//!   c0 192.0.2.2/24 2001:db8::2/64  <── veth ──>  n0 ── port of ── br0 192.0.2.1/24 2001:db8::1/64
//!   arp_accept=1                                 ferrite-l2-announce --ip 192.0.2.100 --ip 2001:db8::100
//!                                                                    --interface /br[0-9]+/
//! ```
//! n0 is a bridge port, so the answer must come from br0 with br0's MAC, which the test sets to differ
//! from n0's (MetalLB answered from the port, with the port's MAC). Checks, in order: the gratuitous ARP
//! at start puts the VIP into the client's neighbour table; arping and ndisc6 get br0's MAC; an IP that is
//! not announced gets no answer; the metrics count what happened; replacing the set (`--stdin`) stops the
//! answers for the removed IP at once and the new IP's gratuitous ARP reaches the client; br0 going down
//! and up is followed; after SIGTERM nothing is answered.
//!
//! Needs root (namespaces, raw sockets) and `ip`, `arping`, `ndisc6`: the test fails, saying how to
//! install them, when they are missing. Namespaces and the announcer are removed even when it fails.
//!
//! The second test runs real speakers (`ferrite-lb speaker`, the chart's ServiceAccount, one per node
//! namespace of a three-node `ferrite_e2e::netlab` on the box) and checks what L2Advertisements decide,
//! by who answers the client's ARP: an allocate-only pool is never answered; `nodeSelectors` pick the
//! answering node; `serviceSelectors` pick the Services; an `interfaces` regex that matches no
//! interface means no answer, and fixing it (an edit of the advertisement) brings the answer; the
//! Service's `ServiceL2Status` names the node that answers, moves with a failover, and disappears when
//! the Service is deleted.

use ferrite_e2e::netlab::first_mac;
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install arping ndisc6 iproute2";
const VIP4: &str = "192.0.2.100";
const VIP6: &str = "2001:db8::100";
const TAKEOVER4: &str = "192.0.2.101";
const NOT_ANNOUNCED4: &str = "192.0.2.200";
const NOT_ANNOUNCED6: &str = "2001:db8::200";
const BRIDGE_MAC: &str = "02:fe:00:00:00:01";
const METRICS_PORT: u16 = 9473;

fn run(program: &str, args: &[&str]) -> Output {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {program}: {e}; this test needs root and `{INSTALL}`"),
    }
}

/// Runs a setup command that must succeed.
fn sh(args: &[&str]) {
    let out = run(args[0], &args[1..]);
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Which arping is installed: Thomas Habets' (Debian `arping`, interface flag `-i`) or iputils' (`-I`).
/// Returns its interface flag and a deadline: Habets' takes fractional seconds, iputils' whole ones.
fn arping_flavour() -> (&'static str, &'static str) {
    let out = run("arping", &["--help"]);
    if text(&out).contains("Habets") {
        ("-i", "0.5")
    } else {
        ("-I", "1")
    }
}

/// Namespaces and processes of one test run, removed on drop (also when the test panics).
struct Lab {
    client: String,
    node: String,
    announcer: Option<Child>,
    stdin: Option<ChildStdin>,
    reports: Option<mpsc::Receiver<String>>,
    log: std::path::PathBuf,
}

impl Lab {
    fn new() -> Lab {
        for (tool, args) in [
            ("ip", &["-V"][..]),
            ("arping", &["--help"][..]),
            ("ndisc6", &["-V"][..]),
        ] {
            if let Err(e) = Command::new(tool)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
            {
                panic!("`{tool}` is missing ({e}): run `{INSTALL}`");
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let suffix = format!("{:06x}", (std::process::id() ^ nanos) & 0xff_ffff);
        let lab = Lab {
            client: format!("fe-c-{suffix}"),
            node: format!("fe-n-{suffix}"),
            announcer: None,
            stdin: None,
            reports: None,
            log: std::env::temp_dir().join(format!("fe-l2-announce-{suffix}.log")),
        };
        sh(&["ip", "netns", "add", &lab.client]);
        sh(&["ip", "netns", "add", &lab.node]);
        for ns in [&lab.client, &lab.node] {
            // No duplicate address detection: addresses are usable at once, the test stays fast.
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
            ]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Learn neighbours from gratuitous ARP (that is what the test checks).
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.client,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.arp_accept=1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.client,
            "sysctl",
            "-qw",
            "net.ipv4.conf.default.arp_accept=1",
        ]);
        let (c, n) = (lab.client.as_str(), lab.node.as_str());
        sh(&[
            "ip", "-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "n0", "netns", n,
        ]);
        sh(&[
            "ip", "-n", n, "link", "add", "br0", "address", BRIDGE_MAC, "type", "bridge",
        ]);
        sh(&["ip", "-n", n, "link", "set", "n0", "master", "br0"]);
        sh(&["ip", "-n", n, "addr", "add", "192.0.2.1/24", "dev", "br0"]);
        sh(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "2001:db8::1/64",
            "dev",
            "br0",
            "nodad",
        ]);
        sh(&["ip", "-n", c, "addr", "add", "192.0.2.2/24", "dev", "c0"]);
        sh(&[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            "2001:db8::2/64",
            "dev",
            "c0",
            "nodad",
        ]);
        for (ns, dev) in [(n, "n0"), (n, "br0"), (c, "c0")] {
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        // Carrier changes reach IPv6 through linkwatch, which may take up to a second; until then c0
        // has no link-local address and no multicast route ("Network is unreachable" for ndisc6).
        for (ns, dev) in [(c, "c0"), (n, "br0")] {
            Lab::wait_for(
                &format!("an IPv6 link-local address on {dev}"),
                Duration::from_secs(5),
                || {
                    let out = text(&run(
                        "ip",
                        &["-n", ns, "-6", "addr", "show", "dev", dev, "scope", "link"],
                    ));
                    out.contains("fe80::") && !out.contains("tentative")
                },
            );
        }
        lab
    }

    fn mac(&self, ns: &str, dev: &str) -> String {
        let out = run("ip", &["-n", ns, "-o", "link", "show", "dev", dev]);
        let s = text(&out);
        let ether = s.split("link/ether").nth(1).unwrap_or("");
        first_mac(ether).unwrap_or_else(|| panic!("no MAC for {dev} in {ns}: {s}"))
    }

    /// Waits until `cond` holds, for at most `limit`.
    fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the announcer in the node namespace and waits for its "announcing" lines.
    fn start_announcer(&mut self) {
        let log = std::fs::File::create(&self.log).expect("log file");
        let port = METRICS_PORT.to_string();
        let metrics = format!("127.0.0.1:{port}");
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.node,
                env!("CARGO_BIN_EXE_ferrite-l2-announce"),
            ])
            .args([
                "--ip",
                VIP4,
                "--ip",
                VIP6,
                "--interface",
                "/br[0-9]+/",
                "--metrics-addr",
                &metrics,
            ])
            .args(["--log-level", "debug", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("log file"))
            .spawn()
            .expect("spawn ferrite-l2-announce");
        let stdout = child.stdout.take().expect("piped stdout");
        self.stdin = child.stdin.take();
        // `ip netns exec` execs the command, so this PID is the announcer's.
        self.announcer = Some(child);
        // The announcer logs to stdout too: keep every line in the log file (shown if the test fails)
        // and pass on its "announcing"/"not announcing" reports.
        let (tx, rx) = mpsc::channel();
        let mut log = log;
        std::thread::spawn(move || {
            use std::io::Write as _;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                let report = line.starts_with("announcing ") || line.starts_with("not announcing ");
                if report && tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.reports = Some(rx);
        self.expect_reports(&[
            format!("announcing {VIP4} on br0"),
            format!("announcing {VIP6} on br0"),
        ]);
    }

    /// Waits (at most 5 s) for the announcer's next reports and checks them.
    fn expect_reports(&self, want: &[String]) {
        let rx = self.reports.as_ref().expect("announcer started");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => got.push(line),
                Err(e) => panic!("announcer did not report within 5 s ({e}); got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(got, want);
    }

    /// Replaces the announced set through the announcer's stdin (`--stdin`) and waits for its report.
    fn replace_set(&mut self, ips: &[&str]) {
        use std::io::Write as _;
        let stdin = self.stdin.as_mut().expect("announcer stdin");
        writeln!(stdin, "{}", ips.join(" ")).expect("write to announcer");
        stdin.flush().expect("flush announcer stdin");
        let want: Vec<String> = ips.iter().map(|ip| format!("announcing {ip} on br0")).collect();
        self.expect_reports(&want);
    }

    fn arping(&self, ip: &str) -> Option<String> {
        // An answer takes a millisecond here; a short deadline keeps the no-answer cases fast.
        let (interface_flag, wait) = arping_flavour();
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "arping",
                "-c",
                "1",
                "-w",
                wait,
                interface_flag,
                "c0",
                ip,
            ],
        );
        let s = text(&out);
        println!("arping {ip}:\n{s}"); // shown when the test fails
        // Habets: "42 bytes from 02:fe:00:00:00:01 (192.0.2.100): index=0 ..."
        // iputils: "Unicast reply from 192.0.2.100 [02:FE:00:00:00:01]  0.6ms"
        s.lines()
            .find(|l| l.contains("from") && l.contains(ip))
            .and_then(first_mac)
    }

    fn ndisc6(&self, ip: &str) -> Option<String> {
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client,
                "ndisc6",
                "-1",
                "-r",
                "1",
                "-w",
                "500",
                ip,
                "c0",
            ],
        );
        let s = text(&out);
        println!("ndisc6 {ip}:\n{s}"); // shown when the test fails
        s.lines()
            .find(|l| l.contains("Target link-layer address"))
            .and_then(first_mac)
    }

    fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = run("ip", &["-n", &self.client, "neigh", "show", ip, "dev", "c0"]);
        first_mac(&text(&out))
    }

    /// GET /metrics from inside the node namespace (its loopback is not the host's).
    fn metrics(&self) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT} && printf 'GET /metrics HTTP/1.0\\r\\nHost: l\\r\\n\\r\\n' >&3 && timeout 2 cat <&3"
        );
        text(&run("ip", &["netns", "exec", &self.node, "bash", "-c", &script]))
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop_announcer(&mut self) {
        let Some(mut child) = self.announcer.take() else {
            return;
        };
        sh(&["kill", "-TERM", &child.id().to_string()]);
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "announcer exited with {status} after SIGTERM");
                    return;
                }
                Ok(None) if start.elapsed() < Duration::from_secs(3) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                other => {
                    let _ = child.kill();
                    panic!("announcer did not exit within 3 s of SIGTERM: {other:?}");
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.announcer.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- ferrite-l2-announce log ({}) ---\n{log}", self.log.display());
        }
        let _ = std::fs::remove_file(&self.log);
        for ns in [&self.client, &self.node] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn counter(metrics: &str, name: &str, protocol: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with(name)
                && l.contains(&format!("protocol=\"{protocol}\""))
                && l.contains("interface=\"br0\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[test]
fn announcer_answers_arp_and_ndp_from_the_bridge_with_its_mac() {
    let mut lab = Lab::new();
    let bridge_mac = lab.mac(&lab.node, "br0");
    let port_mac = lab.mac(&lab.node, "n0");
    assert_eq!(bridge_mac, BRIDGE_MAC);
    assert_ne!(
        bridge_mac, port_mac,
        "the test needs the bridge and its port to have different MACs"
    );
    assert_eq!(
        lab.client_neighbour(VIP4),
        None,
        "fresh client must not know the VIP"
    );

    lab.start_announcer();

    // The gratuitous ARP sent at takeover (arp_accept=1 on the client) creates the neighbour entry.
    Lab::wait_for(
        "the gratuitous ARP to reach the client's neighbour table",
        Duration::from_secs(3),
        || lab.client_neighbour(VIP4).is_some(),
    );
    assert_eq!(lab.client_neighbour(VIP4).as_deref(), Some(bridge_mac.as_str()));

    assert_eq!(
        lab.arping(VIP4).as_deref(),
        Some(bridge_mac.as_str()),
        "arping {VIP4}"
    );
    assert_eq!(
        lab.ndisc6(VIP6).as_deref(),
        Some(bridge_mac.as_str()),
        "ndisc6 {VIP6}"
    );
    assert_eq!(
        lab.arping(NOT_ANNOUNCED4),
        None,
        "{NOT_ANNOUNCED4} is not announced"
    );
    assert_eq!(
        lab.ndisc6(NOT_ANNOUNCED6),
        None,
        "{NOT_ANNOUNCED6} is not announced"
    );

    let m = lab.metrics();
    assert!(
        counter(&m, "ferrite_lb_requests_received_total", "arp") >= 1,
        "{m}"
    );
    assert!(counter(&m, "ferrite_lb_responses_sent_total", "arp") >= 1, "{m}");
    assert!(counter(&m, "ferrite_lb_responses_sent_total", "ndp") >= 1, "{m}");
    assert!(counter(&m, "ferrite_lb_gratuitous_sent_total", "arp") >= 2, "{m}");
    assert!(counter(&m, "ferrite_lb_gratuitous_sent_total", "ndp") >= 1, "{m}");

    // Takeover of a new IP and loss of an old one: VIP4 is answered no more the moment the new set is
    // reported; the new IP's gratuitous ARP reaches the client's neighbour table at once.
    lab.replace_set(&[TAKEOVER4, VIP6]);
    assert_eq!(lab.arping(VIP4), None, "{VIP4} was removed from the set");
    Lab::wait_for("the takeover's gratuitous ARP", Duration::from_secs(2), || {
        lab.client_neighbour(TAKEOVER4).is_some()
    });
    assert_eq!(
        lab.client_neighbour(TAKEOVER4).as_deref(),
        Some(bridge_mac.as_str())
    );
    assert_eq!(
        lab.arping(TAKEOVER4).as_deref(),
        Some(bridge_mac.as_str()),
        "arping {TAKEOVER4}"
    );

    // Link changes are followed over rtnetlink: br0 down drops its workers (and sockets); br0 up brings
    // the answers back without a restart.
    sh(&["ip", "-n", &lab.node, "link", "set", "br0", "down"]);
    Lab::wait_for(
        "the announcer to stop answering on br0",
        Duration::from_secs(3),
        || lab.log_text().contains("stopped answering on interface"),
    );
    sh(&["ip", "-n", &lab.node, "link", "set", "br0", "up"]);
    Lab::wait_for(
        "answers on br0 after it came back up",
        Duration::from_secs(5),
        || lab.arping(TAKEOVER4).as_deref() == Some(bridge_mac.as_str()),
    );

    lab.stop_announcer();
    assert_eq!(lab.arping(TAKEOVER4), None, "no ARP answer after SIGTERM");
    assert_eq!(lab.ndisc6(VIP6), None, "no NDP answer after SIGTERM");
}

mod common;

mod advertisements {
    use super::common::{
        lab::{Accounts, Slices, Speakers, built_binary, registered_lab, wait_status_gone},
        *,
    };
    use ferrite_api::lb::{NODE_LABEL, ServiceL2Status};
    use ferrite_e2e::{KubeBox, netlab::NetLab};
    use k8s_openapi::api::core::v1::{Node, Service};
    use kube::{
        Api,
        api::{DeleteParams, DynamicObject, Patch, PatchParams},
    };
    use serde_json::json;
    use std::time::Duration;

    struct Rig {
        lab: NetLab,
        ns: String,
        svcs: Api<Service>,
        slices: Slices,
        statuses: Api<ServiceL2Status>,
        speakers: Speakers,
    }

    impl Rig {
        fn logs(&self) -> String {
            self.speakers.logs()
        }

        /// A Service of pool `pool` with `labels` and a ready endpoint on every node; returns its IP.
        async fn service(&self, name: &str, pool: &str, labels: serde_json::Value) -> String {
            LbService::new(name)
                .labels(labels)
                .pool(&format!("{}-{pool}", self.ns))
                .create(&self.svcs)
                .await;
            self.slices.everywhere(&self.lab, name).await;
            let (ips, _) = wait_ips(&self.svcs, name, Duration::from_secs(15)).await;
            ips[0].clone()
        }

        /// The index of the node whose MAC answers `ip` within `limit`, or None.
        fn answered_by(&self, ip: &str, limit: Duration) -> Option<usize> {
            let mac = self.lab.arping_within(ip, Duration::from_millis(200), limit)?;
            self.lab.node_index_by_mac(&mac)
        }

        /// Waits until node `i` answers `ip` and its ServiceL2Status names it.
        async fn wait_announced(&self, service: &str, ip: &str, i: usize) {
            let want = self.lab.nodes[i].name.clone();
            let mut last = None;
            for _ in 0..100 {
                let st = self.statuses.get_opt(service).await.ok().flatten();
                let by = self.answered_by(ip, Duration::from_millis(300));
                if by == Some(i) && st.as_ref().is_some_and(|st| st.spec.node == want) {
                    let st = st.expect("status");
                    let labels = st.metadata.labels.unwrap_or_default();
                    assert_eq!(
                        labels.get(NODE_LABEL),
                        Some(&want),
                        "the node label follows spec.node"
                    );
                    return;
                }
                last = Some((by, st.map(|s| s.spec.node)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!(
                "{service} ({ip}): want {want} answering and in its ServiceL2Status, last saw (answering node index, status node) {last:?}{}",
                self.logs()
            );
        }

        async fn assert_not_announced(&self, service: &str, ip: &str, why: &str) {
            assert_eq!(
                self.answered_by(ip, Duration::from_secs(2)),
                None,
                "{service} ({ip}) answered: {why}{}",
                self.logs()
            );
            assert!(
                self.statuses.get_opt(service).await.expect("get").is_none(),
                "{service} has a ServiceL2Status: {why}"
            );
        }
    }

    #[tokio::test]
    async fn advertisements_pick_pools_nodes_services_and_interfaces_and_the_service_l2_status_follows_the_answer()
     {
        let kb = KubeBox::shared();
        let accounts = Accounts::install(kb).await;
        let client = kb.client().await;
        let lab = registered_lab(kb, 3).await;
        // Zones a, b, c for nodes 0, 1, 2.
        let nodes: Api<Node> = Api::all(client.clone());
        for (i, n) in lab.nodes.iter().enumerate() {
            let zone = ["a", "b", "c"][i];
            nodes
                .patch(
                    &n.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"zone": zone}}})),
                )
                .await
                .expect("zone label");
        }
        let _controller = accounts.start_controller(kb).await;
        let speakers = Speakers::start(&lab, built_binary(), &accounts.speaker, &[]);

        let ns = kb.namespace("l2adv").await;
        let pools: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &kube::api::ApiResource::erase::<ferrite_api::lb::IPPool>(&()),
        );
        let ads: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &kube::api::ApiResource::erase::<ferrite_api::lb::L2Advertisement>(&()),
        );
        // Every advertisement names its pools: one that names none would select every pool.
        let pool_specs = [
            ("quiet", "192.0.2.130-192.0.2.131", None),
            ("zone", "192.0.2.132-192.0.2.133", None),
            ("picked", "192.0.2.134-192.0.2.136", None),
            ("iface", "192.0.2.137-192.0.2.138", None),
            ("inline", "192.0.2.139-192.0.2.140", Some(json!({}))),
        ];
        for (name, range, l2) in pool_specs {
            let mut extra = json!({"autoAssign": false});
            if let Some(l2) = l2 {
                extra["l2"] = l2;
            }
            create(&pools, pool(&format!("{ns}-{name}"), &ns, &[range], extra)).await;
        }
        for (name, spec) in [
            // Zone b only, on interfaces matching a regex.
            (
                "zone",
                json!({"ipPools": [format!("{ns}-zone")], "nodeSelectors": [{"matchLabels": {"zone": "b"}}],
                "interfaces": ["/eth[0-9]+/"]}),
            ),
            // Zone a or c (ORed), Services labelled announce=yes only.
            (
                "picked",
                json!({"ipPools": [format!("{ns}-picked")],
                "nodeSelectors": [{"matchLabels": {"zone": "a"}}, {"matchLabels": {"zone": "c"}}],
                "serviceSelectors": [{"matchLabels": {"announce": "yes"}}]}),
            ),
            // An interface regex no node has.
            (
                "iface",
                json!({"ipPools": [format!("{ns}-iface")], "interfaces": ["/eth[1-9]/"]}),
            ),
        ] {
            create(
                &ads,
                json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "L2Advertisement",
                    "metadata": {"name": format!("{ns}-{name}")}, "spec": spec}),
            )
            .await;
        }
        let mut rig = Rig {
            lab,
            svcs: Api::namespaced(client.clone(), &ns),
            slices: Slices::new(&client, &ns).await,
            statuses: Api::namespaced(client.clone(), &ns),
            ns: ns.clone(),
            speakers,
        };

        // nodeSelectors: only zone b (node 1) answers, through the regex /eth[0-9]+/.
        let zone_ip = rig.service("zoned", "zone", json!({})).await;
        rig.wait_announced("zoned", &zone_ip, 1).await;
        let st = rig.statuses.get("zoned").await.expect("status");
        assert_eq!(st.spec.interfaces, ["eth0"]);

        // serviceSelectors: the labelled Service is answered (by zone a or c), the other is not.
        let picked_ip = rig.service("picked", "picked", json!({"announce": "yes"})).await;
        let skipped_ip = rig.service("skipped", "picked", json!({})).await;
        let by = rig
            .answered_by(&picked_ip, Duration::from_secs(10))
            .expect("the labelled Service is answered");
        assert!(by == 0 || by == 2, "answered by node {by}, outside zones a and c");
        rig.wait_announced("picked", &picked_ip, by).await;
        rig.assert_not_announced("skipped", &skipped_ip, "no serviceSelector matches it")
            .await;

        // Allocate-only: an address, never an answer.
        let quiet_ip = rig.service("quiet", "quiet", json!({})).await;
        rig.assert_not_announced("quiet", &quiet_ip, "its pool is allocate-only")
            .await;

        // An interface regex matching no interface: nobody answers; fixed, the elected node does.
        let iface_ip = rig.service("iface", "iface", json!({})).await;
        rig.assert_not_announced("iface", &iface_ip, "/eth[1-9]/ matches no interface")
            .await;
        ads.patch(
            &format!("{ns}-iface"),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"interfaces": ["/e.h0/"]}})),
        )
        .await
        .expect("advertisement fixed");
        let by = rig
            .answered_by(&iface_ip, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("answered once the regex matches eth0{}", rig.logs()));
        rig.wait_announced("iface", &iface_ip, by).await;

        // The inline l2 block is one more advertisement; its ServiceL2Status follows a failover.
        let web_ip = rig.service("web", "inline", json!({})).await;
        let first = rig
            .answered_by(&web_ip, Duration::from_secs(10))
            .expect("the inline pool is answered");
        rig.wait_announced("web", &web_ip, first).await;
        rig.speakers.crash(first);
        let mut second = None;
        for _ in 0..100 {
            second = rig
                .answered_by(&web_ip, Duration::from_millis(300))
                .filter(|i| *i != first);
            if second.is_some() {
                break;
            }
        }
        let second = second.unwrap_or_else(|| panic!("no failover off node {first}{}", rig.logs()));
        rig.wait_announced("web", &web_ip, second).await;

        // The Service goes: so does its record.
        rig.svcs
            .delete("web", &DeleteParams::default())
            .await
            .expect("Service deleted");
        wait_status_gone(
            &rig.statuses,
            "web",
            Duration::from_secs(15),
            "the Service was deleted",
            || rig.logs(),
        )
        .await;
    }
}
