//! Shared by the gossip component tests (`ferrite_lb::member`): members on 127.0.0.1 in this process,
//! each on its own port with its own metrics registry, and a member in a child process (this test
//! binary again, running its ignored helper `child_member`; busy loops: `child_hog`).

use ferrite_lb::member::{MemberConfig, Membership};
use prometheus::Registry;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The members' shared key.
pub const KEY: &[u8] = b"ferrite-test-gossip-key-32-bytes";
/// The bound of every wait.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Member {
    pub name: &'static str,
    pub membership: Membership,
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub registry: Registry,
}

impl Member {
    /// Leaves gracefully and waits until its gossip task has finished.
    pub async fn leave(self) {
        self.stop.cancel();
        self.membership.finished().await;
    }
}

/// A member bound to `bind`, or the error of its start.
pub async fn try_start_at(name: &'static str, bind: SocketAddr, key: &[u8]) -> Result<Member, String> {
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let membership = Membership::start(
        MemberConfig::new(name, bind, key.to_vec()),
        &registry,
        stop.clone(),
    )
    .await
    .map_err(|e| format!("start {name}: {e}"))?;
    let addr = membership.identity().addr;
    Ok(Member {
        name,
        membership,
        addr,
        stop,
        registry,
    })
}

/// A member on a free port of 127.0.0.1.
pub async fn start(name: &'static str, key: &[u8]) -> Member {
    try_start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)), key)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Every member joins every one.
pub fn join_all(members: &[&Member]) {
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    for m in members {
        m.membership.join(addrs.clone());
    }
}

/// Each member leaves (see [`Member::leave`]).
pub async fn leave_all(members: impl IntoIterator<Item = Member>) {
    for m in members {
        m.leave().await;
    }
}

pub fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits (at most `WAIT`) until the alive set equals `want`; returns how long it took.
pub async fn wait_alive(m: &Member, want: &BTreeSet<String>) -> Duration {
    let started = Instant::now();
    let mut rx: watch::Receiver<BTreeSet<String>> = m.membership.alive();
    loop {
        if *rx.borrow_and_update() == *want {
            return started.elapsed();
        }
        let left = WAIT.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => panic!("{}: gossip task stopped while waiting for {want:?}", m.name),
            Err(_) => panic!(
                "{}: alive is {:?}, wanted {want:?} within {WAIT:?}",
                m.name,
                *rx.borrow()
            ),
        }
    }
}

pub fn rejected(m: &Member, reason: &str) -> u64 {
    counter(m, "ferrite_lb_gossip_rejected_total", reason)
}

/// A counter of `m`'s registry by its only label's value.
pub fn counter(m: &Member, name: &str, value: &str) -> u64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|metric| metric.get_label().iter().any(|l| l.value() == value))
        .map(|metric| metric.get_counter().value() as u64)
        .sum()
}

pub fn gauge(m: &Member, name: &str) -> i64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|metric| metric.get_gauge().value() as i64)
        .sum()
}

/// A child process, killed (SIGCONT first, in case it is stopped) and reaped on drop.
pub struct ChildProc(pub Child);

impl ChildProc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        signal(self.pid(), "CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success() || sig == "CONT", "kill -{sig} {pid}");
}

/// This test binary again, running only the ignored helper `test`, optionally under `taskset -c cpu`.
pub fn helper(test: &str, cpu: Option<usize>, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = match cpu {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c.to_string()).arg(exe);
            cmd
        }
        None => Command::new(exe),
    };
    cmd.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd.spawn().unwrap_or_else(|e| panic!("spawn {test}: {e}"))
}

/// Starts `node-c` in a child process (on `cpu` if given) that joins `peers`; returns it and its
/// gossip address.
pub fn spawn_child_member(peers: &[&Member], cpu: Option<usize>) -> (ChildProc, SocketAddr) {
    let peers: Vec<String> = peers.iter().map(|m| m.addr.to_string()).collect();
    let mut child = helper(
        "child_member",
        cpu,
        &[
            ("FERRITE_TEST_GOSSIP_PEERS", peers.join(",")),
            ("FERRITE_TEST_CHILD_SECS", "60".into()),
        ],
    );
    let stdout = child.stdout.take().expect("piped");
    let child = ChildProc(child);
    let mut lines = BufReader::new(stdout).lines();
    // Bounded: the child prints its address first thing, or exits (and the stream ends).
    for line in lines.by_ref().take(100) {
        let line = line.expect("child stdout");
        // The harness may have printed "test child_member ... " on the same line.
        if let Some((_, addr)) = line.split_once("GOSSIP-ADDR ") {
            let addr: SocketAddr = addr.trim().parse().expect("address");
            // Keep draining its stdout so it never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
            return (child, addr);
        }
    }
    panic!("the child member never printed its address");
}

/// Records every alive set of `m` that lacks `node`, until the returned flag is read.
pub fn watch_for_loss(m: &Member, node: &'static str) -> Arc<Mutex<Vec<BTreeSet<String>>>> {
    let lost = Arc::new(Mutex::new(Vec::new()));
    let mut rx = m.membership.alive();
    let out = lost.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let now = rx.borrow_and_update().clone();
            if !now.contains(node) {
                out.lock().expect("lock").push(now);
            }
        }
    });
    lost
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `node-a` and `node-b` in this process and `node-c` in a child process (on `cpu` if given), all three
/// alive to a and b, heartbeats running, and every alive set of a and b without node-c recorded.
pub struct WithChild {
    pub a: Member,
    pub b: Member,
    pub child: ChildProc,
    /// The three names.
    pub all: BTreeSet<String>,
    lost: [Arc<Mutex<Vec<BTreeSet<String>>>>; 2],
}

impl WithChild {
    pub async fn start(cpu: Option<usize>) -> WithChild {
        let a = start("node-a", KEY).await;
        let b = start("node-b", KEY).await;
        let (child, c_addr) = spawn_child_member(&[&a, &b], cpu);
        a.membership.join([a.addr, b.addr, c_addr]);
        b.membership.join([a.addr, b.addr, c_addr]);
        let all = names(&["node-a", "node-b", "node-c"]);
        wait_alive(&a, &all).await;
        wait_alive(&b, &all).await;
        // Let the heartbeats start (a watcher judges a peer by its heartbeats once it has answered one).
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lost = [watch_for_loss(&a, "node-c"), watch_for_loss(&b, "node-c")];
        WithChild {
            a,
            b,
            child,
            all,
            lost,
        }
    }

    /// Prints a's and b's heartbeat suspicions of node-c (`during` says when) and checks that neither
    /// ever had node-c down (`cause` says what it must survive), and that both see all three now.
    pub fn assert_node_c_never_down(&self, during: &str, cause: &str) {
        for m in [&self.a, &self.b] {
            println!(
                "{}: heartbeat suspicions of node-c{during} {}, refuted {}",
                m.name,
                counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "suspected"),
                counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "refuted")
            );
        }
        for (m, lost) in [&self.a, &self.b].into_iter().zip(&self.lost) {
            assert_eq!(
                *lost.lock().expect("lock"),
                Vec::<BTreeSet<String>>::new(),
                "{}: node-c was declared down {cause}",
                m.name
            );
            assert_eq!(*m.membership.alive().borrow(), self.all, "{}", m.name);
        }
    }

    /// Kills the child, then a and b leave.
    pub async fn finish(self) {
        drop(self.child);
        leave_all([self.a, self.b]).await;
    }
}
