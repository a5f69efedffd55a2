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

use crate::{KubeBox, Supervised};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

/// What to install when a tool is missing.
pub const INSTALL: &str = "apt-get install iproute2 arping ndisc6 socat";

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
        for (tool, arg) in [("ip", "-V"), ("socat", "-V"), ("arping", "--help")] {
            if Command::new(tool)
                .arg(arg)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                bail!("{tool} is missing: {INSTALL}");
            }
        }
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
        };
        lab.add_ns(&lab.bridge_ns.clone())?;
        let br = lab.bridge_ns.clone();
        sh(&["ip", "-n", &br, "link", "add", "br0", "type", "bridge"])?;
        // Multicast snooping would hold back Neighbor Solicitations until it has seen an MLD report.
        sh(&[
            "ip",
            "-n",
            &br,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        sh(&["ip", "-n", &br, "link", "set", "br0", "up"])?;

        let client = lab.client_ns.clone();
        lab.attach(&client, &format!("{id}c"), "192.0.2.2", "2001:db8::2")?;
        for key in [
            "net.ipv4.conf.all.arp_accept=1",
            "net.ipv4.conf.eth0.arp_accept=1",
        ] {
            sh(&["ip", "netns", "exec", &client, "sysctl", "-qw", key])?;
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
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", key])?;
        }
        Ok(())
    }

    /// Creates `ns` with an `eth0` plugged into the bridge.
    fn attach(&mut self, ns: &str, port: &str, ip4: &str, ip6: &str) -> Result<()> {
        self.add_ns(ns)?;
        let peer = format!("{port}x");
        sh(&["ip", "link", "add", port, "type", "veth", "peer", "name", &peer])?;
        sh(&["ip", "link", "set", port, "netns", &self.bridge_ns])?;
        sh(&[
            "ip",
            "-n",
            &self.bridge_ns,
            "link",
            "set",
            port,
            "master",
            "br0",
            "up",
        ])?;
        sh(&["ip", "link", "set", &peer, "netns", ns])?;
        sh(&["ip", "-n", ns, "link", "set", &peer, "name", "eth0"])?;
        sh(&["ip", "-n", ns, "addr", "add", &format!("{ip4}/24"), "dev", "eth0"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
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
        let out = run("arping", &["--help"]).ok()?;
        let (flag, wait) = if text(&out).contains("Habets") {
            ("-i", "0.5")
        } else {
            ("-I", "1")
        };
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client_ns,
                "arping",
                "-c",
                "1",
                "-w",
                wait,
                flag,
                "eth0",
                ip,
            ],
        )
        .ok()?;
        text(&out)
            .lines()
            .find(|l| l.contains("from") && l.contains(ip))
            .and_then(first_mac)
    }

    /// Asks `ip` by ARP from the client every `interval` until the first answer or until `limit`;
    /// returns the MAC that answered. One arping process (Habets arping) sends the requests, so the
    /// first answer is seen within about `interval` of the address becoming answered (plus the tool's
    /// start-up); with iputils arping it falls back to [`NetLab::arping`] in a loop bounded by `limit`.
    pub fn arping_within(&self, ip: &str, interval: Duration, limit: Duration) -> Option<String> {
        let habets = run("arping", &["--help"]).is_ok_and(|o| text(&o).contains("Habets"));
        if !habets {
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
        let out = run(
            "ip",
            &[
                "netns",
                "exec",
                &self.client_ns,
                "arping",
                "-C",
                "1",
                "-W",
                &interval,
                "-w",
                &limit,
                "-i",
                "eth0",
                ip,
            ],
        )
        .ok()?;
        text(&out)
            .lines()
            .find(|l| l.contains("from") && l.contains(ip))
            .and_then(first_mac)
    }

    /// Sets the client's neighbour entry for `ip` to `mac` (state STALE), as a client that has been
    /// talking to that address would hold it.
    pub fn set_client_neighbour(&self, ip: &str, mac: &str) -> Result<()> {
        sh(&[
            "ip",
            "-n",
            &self.client_ns,
            "neigh",
            "replace",
            ip,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "stale",
        ])
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
}
