//! A small L2 network of "nodes" for speaker tests, the demo and the benchmarks, in network namespaces
//! this process creates (addresses from the documentation ranges 192.0.2.0/24 and 2001:db8::/64 only).
//!
//! ```text
//!   fe-<id>-br:  br0 ─┬─ <id>n0 ── eth0 in fe-<id>-n0  192.0.2.10   "node" 0 (a speaker runs here)
//!                     ├─ <id>n1 ── eth0 in fe-<id>-n1  192.0.2.11   "node" 1
//!                     ├─ ...
//!                     └─ <id>c  ── eth0 in fe-<id>-c   192.0.2.2    "client" (arping, neighbour table)
//! ```
//! A process in a node namespace cannot reach the host's 127.0.0.1, so each node namespace gets a socat
//! listening on 127.0.0.1:<api port> that forwards over a Unix socket (the filesystem is shared) to a
//! host-side socat connected to the box's API server. The box's kubeconfig therefore works unchanged
//! inside the namespaces. Everything is removed on drop, also when a test panics.
//!
//! **Data path** ([`NetLab::start_backends`], [`NetLab::deliver_locally`]): the lab can also play
//! kube-proxy's part. Each node namespace gets a "pod" address on its loopback (198.51.100.<n> and
//! 2001:db8:100::<n>, the node's last address byte) with a backend listening there (socat: HTTP on
//! TCP 8080 answering the node's name, a UDP echo on 9000 answering `<node> <line>`), and, per Service
//! port, an iptables DNAT rule in the `nat` table's PREROUTING path (`VIP:port -> pod:target port`), as
//! kube-proxy's iptables mode writes it. The VIP itself is on no interface, so the kernel never answers
//! ARP/NDP for it: only the speaker does, and the node it made the client send to is the node whose
//! backend answers. The client asks with `curl` ([`NetLab::client_http_get`]) and a UDP socket
//! ([`NetLab::client_udp`]).

use crate::{KubeBox, Supervised};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

/// What to install when a tool is missing.
pub const INSTALL: &str = "apt-get install iproute2 arping ndisc6 socat";

/// What the data path ([`NetLab::start_backends`]) needs on top of [`INSTALL`].
pub const DATAPATH_INSTALL: &str = "apt-get install iptables curl socat";

/// TCP port of every node's HTTP backend (the Services' `targetPort`).
pub const BACKEND_HTTP_PORT: u16 = 8080;

/// UDP port of every node's echo backend (the Services' `targetPort`).
pub const BACKEND_UDP_PORT: u16 = 9000;

/// Name of the nat chain the lab's kube-proxy stand-in fills (jumped to from PREROUTING).
const SERVICES_CHAIN: &str = "FERRITE-LAB-SERVICES";

/// The HTTP backend, run by socat once per connection with the node's name as `$1`: reads the request
/// head (so closing does not reset the connection) and answers `<node>\n`.
const HTTP_BACKEND: &str = r#"cr=$(printf '\r')
while IFS= read -r line; do
  case "$line" in ""|"$cr") break ;; esac
done
printf 'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s\n' $((${#1} + 1)) "$1"
"#;

/// The UDP echo backend, run by socat once per datagram: answers `<node> <first line>`.
const UDP_BACKEND: &str = r#"IFS= read -r line
printf '%s %s\n' "$1" "$line"
"#;

/// Transport protocol of a Service port the lab delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP, delivered to [`BACKEND_HTTP_PORT`].
    Tcp,
    /// UDP, delivered to [`BACKEND_UDP_PORT`].
    Udp,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// The backend port this protocol is delivered to.
    pub fn backend_port(self) -> u16 {
        match self {
            Protocol::Tcp => BACKEND_HTTP_PORT,
            Protocol::Udp => BACKEND_UDP_PORT,
        }
    }
}

/// One "node" of the lab.
#[derive(Debug, Clone)]
pub struct LabNode {
    /// Kubernetes Node name.
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its IPv4 address on the lab network.
    pub ip4: Ipv4Addr,
    /// Its IPv6 address on the lab network.
    pub ip6: Ipv6Addr,
    /// MAC of its `eth0`.
    pub mac: String,
}

impl LabNode {
    /// The node's "pod" IPv4 address, 198.51.100.<last byte of `ip4`>, on its loopback: where its
    /// backends listen and where the lab's kube-proxy stand-in sends the VIP.
    pub fn pod_ip4(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 51, 100, self.ip4.octets()[3])
    }

    /// The node's "pod" IPv6 address, 2001:db8:100::<last group of `ip6`>, on its loopback.
    pub fn pod_ip6(&self) -> Ipv6Addr {
        let last = self.ip6.segments()[7];
        Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, last)
    }

    /// The node's pod address of `vip`'s family.
    pub fn pod_ip(&self, vip: IpAddr) -> IpAddr {
        match vip {
            IpAddr::V4(_) => IpAddr::V4(self.pod_ip4()),
            IpAddr::V6(_) => IpAddr::V6(self.pod_ip6()),
        }
    }
}

/// The lab: a bridge, nodes and a client, plus the API forwarders.
#[derive(Debug)]
pub struct NetLab {
    /// Short random id in every name.
    pub id: String,
    /// Namespace holding the bridge.
    pub bridge_ns: String,
    /// The client namespace (interface `eth0`, 192.0.2.2).
    pub client_ns: String,
    /// The nodes.
    pub nodes: Vec<LabNode>,
    dir: PathBuf,
    procs: Vec<Supervised>,
    namespaces: Vec<String>,
    backends: bool,
}

fn run(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}: the lab needs root and `{INSTALL}`"))
}

fn sh(args: &[&str]) -> Result<()> {
    let out = run(args[0], &args[1..])?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n <ns> args...`, which must succeed.
fn ip_n(ns: &str, args: &[&str]) -> Result<()> {
    sh(&[&["ip", "-n", ns][..], args].concat())
}

/// `args` run inside `ns` (`ip netns exec`); its output.
fn ns_run(ns: &str, args: &[&str]) -> Result<Output> {
    run("ip", &[&["netns", "exec", ns][..], args].concat())
}

/// `args` run inside `ns`, which must succeed.
fn ns_sh(ns: &str, args: &[&str]) -> Result<()> {
    sh(&[&["ip", "netns", "exec", ns][..], args].concat())
}

/// Fails naming `install` when one of `tools` (each run with its argument, e.g. a version flag) cannot be
/// run.
fn require(tools: &[(&str, &str)], install: &str) -> Result<()> {
    for (tool, arg) in tools {
        if Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!("{tool} is missing: {install}");
        }
    }
    Ok(())
}

/// Whether the installed arping is Thomas Habets' (Debian `arping`: interface flag `-i`, fractional
/// deadlines) rather than iputils' (`-I`, whole seconds).
fn habets_arping() -> bool {
    run("arping", &["--help"]).is_ok_and(|o| text(&o).contains("Habets"))
}

/// The MAC of the answer for `ip` in arping's output.
fn arping_answer(out: &Output, ip: &str) -> Option<String> {
    text(out)
        .lines()
        .find(|l| l.contains("from") && l.contains(ip))
        .and_then(first_mac)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The first MAC address in `s`, lower case.
pub fn first_mac(s: &str) -> Option<String> {
    s.split(|c: char| c.is_whitespace() || "[]()".contains(c))
        .find_map(|w| {
            let parts: Vec<&str> = w.split(':').collect();
            (parts.len() == 6
                && parts
                    .iter()
                    .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit())))
            .then(|| w.to_lowercase())
        })
}

impl NetLab {
    /// Builds the network with `nodes` node namespaces and forwards the box's API into them.
    pub fn new(kb: &KubeBox, nodes: usize) -> Result<NetLab> {
        require(&[("ip", "-V"), ("socat", "-V"), ("arping", "--help")], INSTALL)?;
        anyhow::ensure!((1..=50).contains(&nodes), "1 to 50 nodes");
        let id = format!(
            "{:04x}",
            std::process::id() as u16
                ^ (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .subsec_nanos() as u16)
        );
        let dir = kb.dir.join(format!("lab-{id}"));
        std::fs::create_dir_all(&dir)?;
        let mut lab = NetLab {
            bridge_ns: format!("fe-{id}-br"),
            client_ns: format!("fe-{id}-c"),
            id: id.clone(),
            nodes: vec![],
            dir,
            procs: vec![],
            namespaces: vec![],
            backends: false,
        };
        lab.add_ns(&lab.bridge_ns.clone())?;
        let br = lab.bridge_ns.clone();
        ip_n(&br, &["link", "add", "br0", "type", "bridge"])?;
        // Multicast snooping would hold back Neighbor Solicitations until it has seen an MLD report.
        ip_n(
            &br,
            &["link", "set", "br0", "type", "bridge", "mcast_snooping", "0"],
        )?;
        ip_n(&br, &["link", "set", "br0", "up"])?;

        let client = lab.client_ns.clone();
        lab.attach(&client, &format!("{id}c"), "192.0.2.2", "2001:db8::2")?;
        for key in [
            "net.ipv4.conf.all.arp_accept=1",
            "net.ipv4.conf.eth0.arp_accept=1",
        ] {
            ns_sh(&client, &["sysctl", "-qw", key])?;
        }
        for i in 0..nodes {
            let ns = format!("fe-{id}-n{i}");
            let ip4 = Ipv4Addr::new(192, 0, 2, 10 + i as u8);
            let ip6: Ipv6Addr = format!("2001:db8::{}", 10 + i).parse()?;
            lab.attach(&ns, &format!("{id}n{i}"), &ip4.to_string(), &ip6.to_string())?;
            let mac = lab.mac(&ns, "eth0")?;
            lab.nodes.push(LabNode {
                name: format!("lab{id}-{}", (b'a' + i as u8) as char),
                ns,
                ip4,
                ip6,
                mac,
            });
        }
        lab.forward_api(kb)?;
        Ok(lab)
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        sh(&["ip", "netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip_n(ns, &["link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            ns_sh(ns, &["sysctl", "-qw", key])?;
        }
        Ok(())
    }

    /// Creates `ns` with an `eth0` plugged into the bridge.
    fn attach(&mut self, ns: &str, port: &str, ip4: &str, ip6: &str) -> Result<()> {
        self.add_ns(ns)?;
        let peer = format!("{port}x");
        sh(&["ip", "link", "add", port, "type", "veth", "peer", "name", &peer])?;
        sh(&["ip", "link", "set", port, "netns", &self.bridge_ns])?;
        ip_n(&self.bridge_ns, &["link", "set", port, "master", "br0", "up"])?;
        sh(&["ip", "link", "set", &peer, "netns", ns])?;
        ip_n(ns, &["link", "set", &peer, "name", "eth0"])?;
        ip_n(ns, &["addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
        ip_n(ns, &["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"])?;
        ip_n(ns, &["link", "set", "eth0", "up"])?;
        Ok(())
    }

    /// MAC of `dev` in `ns`.
    pub fn mac(&self, ns: &str, dev: &str) -> Result<String> {
        let out = run("ip", &["-n", ns, "link", "show", dev])?;
        let s = text(&out);
        s.lines()
            .find(|l| l.contains("link/ether"))
            .and_then(first_mac)
            .with_context(|| format!("no MAC for {dev} in {ns}: {s}"))
    }

    fn forward_api(&mut self, kb: &KubeBox) -> Result<()> {
        let port = kb
            .server
            .rsplit(':')
            .next()
            .context("box server URL has no port")?
            .to_string();
        let sock = self.dir.join("api.sock");
        let socat = PathBuf::from("/usr/bin/socat");
        self.procs.push(Supervised::spawn(
            "socat (host side)",
            &socat,
            &[
                format!("UNIX-LISTEN:{},fork,unlink-early", sock.display()),
                format!("TCP:127.0.0.1:{port}"),
            ],
            &[],
            &self.dir.join("socat-host.log"),
        )?);
        for n in self.nodes.clone() {
            let p = self.spawn_in(
                &n.ns,
                "socat (node side)",
                &socat,
                &[
                    format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
                    format!("UNIX-CONNECT:{}", sock.display()),
                ],
                &[],
            )?;
            self.procs.push(p);
        }
        Ok(())
    }

    /// Starts `program args` inside `ns` under a watchdog; its log goes to the lab's directory.
    pub fn spawn_in(
        &self,
        ns: &str,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Supervised> {
        let mut all = vec![
            "netns".to_string(),
            "exec".into(),
            ns.to_string(),
            program.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        let log = self.dir.join(format!(
            "{}-{}.log",
            ns,
            name.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        ));
        // `ip netns exec` execs the program, so the watchdog's child PID is the program itself.
        Supervised::spawn(name, Path::new("ip"), &all, env, &log)
    }

    /// Creates the Node objects (InternalIP, Ready) the speakers and the election read.
    pub async fn register_nodes(&self, kb: &KubeBox) -> Result<()> {
        let api: Api<Node> = Api::all(kb.client().await);
        for n in &self.nodes {
            let node: Node = serde_json::from_value(
                serde_json::json!({"metadata": {"name": n.name, "labels": {"ferrite.dev/lab": self.id}}}),
            )?;
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            let status = serde_json::json!({"status": {
                "addresses": [{"type": "InternalIP", "address": n.ip4.to_string()}, {"type": "Hostname", "address": n.name}],
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "lab node"}],
            }});
            api.patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&status))
                .await?;
        }
        Ok(())
    }

    /// Asks `ip` by ARP from the client; returns the MAC that answered.
    pub fn arping(&self, ip: &str) -> Option<String> {
        let (flag, wait) = if habets_arping() {
            ("-i", "0.5")
        } else {
            ("-I", "1")
        };
        let out = ns_run(
            &self.client_ns,
            &["arping", "-c", "1", "-w", wait, flag, "eth0", ip],
        )
        .ok()?;
        arping_answer(&out, ip)
    }

    /// Asks `ip` by ARP from the client every `interval` until the first answer or until `limit`;
    /// returns the MAC that answered. One arping process (Habets arping) sends the requests, so the
    /// first answer is seen within about `interval` of the address becoming answered (plus the tool's
    /// start-up); with iputils arping it falls back to [`NetLab::arping`] in a loop bounded by `limit`.
    pub fn arping_within(&self, ip: &str, interval: Duration, limit: Duration) -> Option<String> {
        if !habets_arping() {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                if let Some(mac) = self.arping(ip) {
                    return Some(mac);
                }
            }
            return None;
        }
        let (interval, limit) = (
            format!("{:.3}", interval.as_secs_f64()),
            format!("{:.3}", limit.as_secs_f64()),
        );
        let args = [
            "arping", "-C", "1", "-W", &interval, "-w", &limit, "-i", "eth0", ip,
        ];
        let out = ns_run(&self.client_ns, &args).ok()?;
        arping_answer(&out, ip)
    }

    /// Sets the client's neighbour entry for `ip` to `mac` (state STALE), as a client that has been
    /// talking to that address would hold it.
    pub fn set_client_neighbour(&self, ip: &str, mac: &str) -> Result<()> {
        ip_n(
            &self.client_ns,
            &[
                "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "stale",
            ],
        )
    }

    /// The MAC the client's neighbour table holds for `ip`.
    pub fn client_neighbour(&self, ip: &str) -> Option<String> {
        let out = run("ip", &["-n", &self.client_ns, "neigh", "show", ip, "dev", "eth0"]).ok()?;
        let s = text(&out);
        if s.contains("FAILED") || s.contains("INCOMPLETE") {
            return None;
        }
        first_mac(&s)
    }

    /// The node whose `eth0` has `mac`.
    pub fn node_by_mac(&self, mac: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.mac == mac)
    }

    /// The index in [`NetLab::nodes`] of the node whose `eth0` has `mac`.
    pub fn node_index_by_mac(&self, mac: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.mac == mac)
    }

    /// The index in [`NetLab::nodes`] of the node named `name`.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Plays the pods' part in every node namespace: puts the node's pod addresses
    /// ([`LabNode::pod_ip4`], [`LabNode::pod_ip6`]) on its loopback and starts its backends there (socat:
    /// HTTP on [`BACKEND_HTTP_PORT`] answering the node's name, a UDP echo on [`BACKEND_UDP_PORT`]
    /// answering `<node> <line>`, both families), and creates the nat chain that
    /// [`NetLab::deliver_locally`] fills. Idempotent.
    pub fn start_backends(&mut self) -> Result<()> {
        if self.backends {
            return Ok(());
        }
        require(
            &[("iptables", "-V"), ("ip6tables", "-V"), ("curl", "-V")],
            DATAPATH_INSTALL,
        )?;
        let http = self.dir.join("http-backend.sh");
        let udp = self.dir.join("udp-backend.sh");
        std::fs::write(&http, HTTP_BACKEND).with_context(|| format!("writing {}", http.display()))?;
        std::fs::write(&udp, UDP_BACKEND).with_context(|| format!("writing {}", udp.display()))?;
        let socat = PathBuf::from("/usr/bin/socat");
        for n in self.nodes.clone() {
            let (pod4, pod6) = (n.pod_ip4(), n.pod_ip6());
            ip_n(&n.ns, &["addr", "replace", &format!("{pod4}/32"), "dev", "lo"])?;
            ip_n(
                &n.ns,
                &["addr", "replace", &format!("{pod6}/128"), "dev", "lo", "nodad"],
            )?;
            for iptables in ["iptables", "ip6tables"] {
                ns_sh(&n.ns, &[iptables, "-w", "-t", "nat", "-N", SERVICES_CHAIN])?;
                ns_sh(
                    &n.ns,
                    &[
                        iptables,
                        "-w",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-j",
                        SERVICES_CHAIN,
                    ],
                )?;
            }
            let listeners = [
                (
                    "http backend v4",
                    format!("TCP4-LISTEN:{BACKEND_HTTP_PORT},bind={pod4},reuseaddr,fork"),
                    &http,
                ),
                (
                    "http backend v6",
                    format!("TCP6-LISTEN:{BACKEND_HTTP_PORT},bind=[{pod6}],reuseaddr,fork"),
                    &http,
                ),
                (
                    "udp backend v4",
                    format!("UDP4-RECVFROM:{BACKEND_UDP_PORT},bind={pod4},fork"),
                    &udp,
                ),
                (
                    "udp backend v6",
                    format!("UDP6-RECVFROM:{BACKEND_UDP_PORT},bind=[{pod6}],fork"),
                    &udp,
                ),
            ];
            for (name, listen, script) in listeners {
                let p = self.spawn_in(
                    &n.ns,
                    name,
                    &socat,
                    &[listen, format!("EXEC:/bin/sh {} {}", script.display(), n.name)],
                    &[],
                )?;
                self.procs.push(p);
            }
        }
        self.backends = true;
        // socat binds right after it starts; wait (bounded) until every node answers on its own pod
        // addresses, so a test's first request does not race the listeners.
        for n in &self.nodes {
            for pod in [IpAddr::V4(n.pod_ip4()), IpAddr::V6(n.pod_ip6())] {
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let got = self.http_get_in(&n.ns, pod, BACKEND_HTTP_PORT, Duration::from_secs(1));
                    match got {
                        Ok(name) if name == n.name => break,
                        _ if std::time::Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        other => bail!("the backend of {} on {pod} does not answer: {other:?}", n.name),
                    }
                }
            }
        }
        Ok(())
    }

    /// Plays kube-proxy's part for one Service port: in every node namespace, traffic to `vip:port`
    /// (`protocol`) arriving from the LAN is DNATed to that node's own backend (its pod address, port
    /// [`Protocol::backend_port`]), the rule kube-proxy's iptables mode writes for a LoadBalancer IP
    /// with a local endpoint. The VIP is configured on no interface, so the kernel never answers ARP or
    /// NDP for it. Needs [`NetLab::start_backends`] first.
    pub fn deliver_locally(&self, vip: IpAddr, port: u16, protocol: Protocol) -> Result<()> {
        anyhow::ensure!(self.backends, "start_backends() first");
        let iptables = if vip.is_ipv4() { "iptables" } else { "ip6tables" };
        for n in &self.nodes {
            let to = match n.pod_ip(vip) {
                IpAddr::V4(a) => format!("{a}:{}", protocol.backend_port()),
                IpAddr::V6(a) => format!("[{a}]:{}", protocol.backend_port()),
            };
            let dst = if vip.is_ipv4() {
                format!("{vip}/32")
            } else {
                format!("{vip}/128")
            };
            let port = port.to_string();
            let rule = [
                "-d",
                &dst,
                "-p",
                protocol.name(),
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ];
            // Once per (VIP, port): a rule that is there already is not added twice.
            let check = [&[iptables, "-w", "-t", "nat", "-C", SERVICES_CHAIN][..], &rule].concat();
            if ns_run(&n.ns, &check)?.status.success() {
                continue;
            }
            ns_sh(
                &n.ns,
                &[&[iptables, "-w", "-t", "nat", "-A", SERVICES_CHAIN][..], &rule].concat(),
            )?;
        }
        Ok(())
    }

    /// HTTP GET `http://ip:port/` with curl inside `ns`, bounded by `timeout`; the body, trimmed.
    fn http_get_in(&self, ns: &str, ip: IpAddr, port: u16, timeout: Duration) -> Result<String> {
        let url = match ip {
            IpAddr::V4(a) => format!("http://{a}:{port}/"),
            IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
        };
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let curl = [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--globoff",
            "--noproxy",
            "*",
            "--max-time",
            &secs,
            &url,
        ];
        let out = ns_run(ns, &curl)?;
        if !out.status.success() {
            bail!("GET {url} from {ns}: {}", text(&out).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// HTTP GET `http://ip:port/` from the client namespace with curl, the whole request bounded by
    /// `timeout`; the body, trimmed (the lab's backends answer the name of the node that served).
    pub fn client_http_get(&self, ip: IpAddr, port: u16, timeout: Duration) -> Result<String> {
        self.http_get_in(&self.client_ns, ip, port, timeout)
    }

    /// Sends the line `payload` in one UDP datagram from the client namespace to `ip:port` and returns
    /// the first line of the answer (the lab's echo backends answer `<node> <payload>`), or an error
    /// when none came within `timeout`.
    pub fn client_udp(&self, ip: IpAddr, port: u16, payload: &str, timeout: Duration) -> Result<String> {
        anyhow::ensure!(
            !payload.contains(['\n', '\'']),
            "payload must be one line without quotes"
        );
        let script =
            format!("exec 3<>/dev/udp/{ip}/{port} && printf '%s\\n' '{payload}' >&3 && head -n 1 <&3");
        let secs = format!("{:.3}", timeout.as_secs_f64());
        let out = ns_run(&self.client_ns, &["timeout", &secs, "bash", "-c", &script])?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || answer.is_empty() {
            bail!(
                "UDP {ip}:{port} from the client: no answer within {timeout:?} {}",
                text(&out).trim()
            );
        }
        Ok(answer)
    }

    /// Unplugs (`up == false`) or replugs node `i` from the bridge: its bridge port goes down, so the
    /// node's `eth0` loses carrier, as when a node dies or its cable is pulled; everything inside the
    /// node namespace stays as it was. Replugging restores its addresses.
    pub fn set_node_link(&self, i: usize, up: bool) -> Result<()> {
        let n = self.nodes.get(i).context("no such node")?;
        let port = format!("{}n{i}", self.id);
        ip_n(
            &self.bridge_ns,
            &["link", "set", &port, if up { "up" } else { "down" }],
        )?;
        if up {
            // IPv6 may drop the global address when the carrier goes.
            ip_n(
                &n.ns,
                &["addr", "replace", &format!("{}/24", n.ip4), "dev", "eth0"],
            )?;
            ip_n(
                &n.ns,
                &[
                    "addr",
                    "replace",
                    &format!("{}/64", n.ip6),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            )?;
        }
        Ok(())
    }

    /// Deletes the lab's namespaces once this process has exited, for a lab kept in a static (which is
    /// never dropped). Its processes die with the process anyway (their watchdogs).
    pub fn delete_after_exit(&self) -> Result<()> {
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"owner=$1; shift; while kill -0 "$owner" 2>/dev/null; do sleep 0.5; done; sleep 1; for ns in "$@"; do ip netns del "$ns" 2>/dev/null; done"#)
            .arg("ferrite-lab-janitor")
            .arg(std::process::id().to_string())
            .args(self.namespaces.iter().rev())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().context("starting the lab's janitor")?;
        Ok(())
    }

    /// Directory of the lab's logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the lab's own processes and removes its namespaces now.
    pub fn teardown(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(3));
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = run("ip", &["netns", "del", &ns]);
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn macs_are_found_in_tool_output() {
        assert_eq!(
            super::first_mac("42 bytes from 02:FE:00:00:00:01 (192.0.2.100): index=0").as_deref(),
            Some("02:fe:00:00:00:01")
        );
        assert_eq!(
            super::first_mac("Unicast reply from 192.0.2.100 [02:AB:00:00:00:01]  0.6ms").as_deref(),
            Some("02:ab:00:00:00:01")
        );
        assert_eq!(
            super::first_mac("192.0.2.100 dev eth0 lladdr 0a:0b:0c:0d:0e:0f REACHABLE").as_deref(),
            Some("0a:0b:0c:0d:0e:0f")
        );
        assert_eq!(super::first_mac("no mac here 12:34"), None);
    }

    #[test]
    fn pod_addresses_follow_the_node_address() {
        let n = super::LabNode {
            name: "laba-b".into(),
            ns: "fe-a-n1".into(),
            ip4: "192.0.2.11".parse().unwrap(),
            ip6: "2001:db8::11".parse().unwrap(),
            mac: "02:00:00:00:00:01".into(),
        };
        assert_eq!(n.pod_ip4().to_string(), "198.51.100.11");
        assert_eq!(n.pod_ip6().to_string(), "2001:db8:100::11");
        assert_eq!(
            n.pod_ip("192.0.2.100".parse().unwrap()).to_string(),
            "198.51.100.11"
        );
        assert_eq!(
            n.pod_ip("2001:db8::100".parse().unwrap()).to_string(),
            "2001:db8:100::11"
        );
    }
}
