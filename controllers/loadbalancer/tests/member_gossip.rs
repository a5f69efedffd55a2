//! Component test of speaker gossip (`ferrite_lb::member`): real UDP on 127.0.0.1, several members
//! in one process, each on its own port with its own metrics registry.
//!
//! Every wait is bounded (10 s); the measured times are printed (`--nocapture`) so failure-detection
//! regressions show up before they break the assertions. The bounds are generous (a loaded 2-core CI
//! machine); the benchmark (`ferrite-bench --only lb`) measures failover precisely.
//!
//! Two tests need a member in another process, to SIGSTOP it or pin it to a CPU beside a busy loop:
//! they run this test binary again as a child (the ignored helpers `child_member` and `child_hog`,
//! configured by environment variables), and kill it by PID at the end.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_lb::member::{MemberConfig, Membership};
use prometheus::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const KEY: &[u8] = b"ferrite-test-gossip-key-32-bytes";
const WAIT: Duration = Duration::from_secs(10);

struct Member {
    name: &'static str,
    membership: Membership,
    addr: SocketAddr,
    stop: CancellationToken,
    registry: Registry,
}

async fn start_at(name: &'static str, bind: SocketAddr, key: &[u8]) -> Member {
    let registry = Registry::new();
    let stop = CancellationToken::new();
    let membership = Membership::start(
        MemberConfig::new(name, bind, key.to_vec()),
        &registry,
        stop.clone(),
    )
    .await
    .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let addr = membership.identity().addr;
    Member {
        name,
        membership,
        addr,
        stop,
        registry,
    }
}

async fn start(name: &'static str, key: &[u8]) -> Member {
    start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)), key).await
}

fn join_all(members: &[&Member]) {
    let addrs: Vec<SocketAddr> = members.iter().map(|m| m.addr).collect();
    for m in members {
        m.membership.join(addrs.clone());
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits (at most `WAIT`) until the alive set equals `want`; returns how long it took.
async fn wait_alive(m: &Member, want: &BTreeSet<String>) -> Duration {
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

fn rejected(m: &Member, reason: &str) -> u64 {
    counter(m, "ferrite_lb_gossip_rejected_total", reason)
}

/// A counter of `m`'s registry by its only label's value.
fn counter(m: &Member, name: &str, value: &str) -> u64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|metric| metric.get_label().iter().any(|l| l.value() == value))
        .map(|metric| metric.get_counter().value() as u64)
        .sum()
}

fn gauge(m: &Member, name: &str) -> i64 {
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .map(|metric| metric.get_gauge().value() as i64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_converge_crash_is_detected_and_restart_rejoins() {
    let a = start("node-a", KEY).await;
    let b = start("node-b", KEY).await;
    let c = start("node-c", KEY).await;
    join_all(&[&a, &b, &c]);

    let all = names(&["node-a", "node-b", "node-c"]);
    for m in [&a, &b, &c] {
        let took = wait_alive(m, &all).await;
        println!("{}: converged to 3 members in {took:?}", m.name);
        assert_eq!(gauge(m, "ferrite_lb_members"), 3);
    }

    // Let the heartbeats start (a watcher judges a peer by its heartbeats once it has answered one).
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Crash node-c: no leave message, its socket just goes silent.
    let c_addr = c.addr;
    let crashed_at = Instant::now();
    c.membership.crash();
    let survivors = names(&["node-a", "node-b"]);
    for m in [&a, &b] {
        wait_alive(m, &survivors).await;
        let detected = crashed_at.elapsed();
        println!("{}: crashed node-c detected down after {detected:?}", m.name);
        // Heartbeats: 100 ms of silence + 100 ms to refute ≈ 0.2 s (SWIM's probes alone take ≥ 1 s).
        assert!(
            detected < Duration::from_secs(1),
            "{}: detection took {detected:?}",
            m.name
        );
    }

    // node-c restarts on the same address: a newer boot, so a new member that replaces the old one.
    let mut restarted = None;
    for _ in 0..50 {
        // Bounded: the aborted task releases the port as soon as the runtime drops it.
        let registry = Registry::new();
        let stop = CancellationToken::new();
        match Membership::start(
            MemberConfig::new("node-c", c_addr, KEY.to_vec()),
            &registry,
            stop.clone(),
        )
        .await
        {
            Ok(membership) => {
                restarted = Some(Member {
                    name: "node-c",
                    addr: c_addr,
                    membership,
                    stop,
                    registry,
                });
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let c2 = restarted.expect("restart node-c on its old port");
    join_all(&[&a, &b, &c2]);
    for m in [&a, &b, &c2] {
        let took = wait_alive(m, &all).await;
        println!("{}: restarted node-c is back after {took:?}", m.name);
    }

    for m in [a, b, c2] {
        m.stop.cancel();
        m.membership.finished().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_leave_is_seen_at_once() {
    let a = start("node-a", KEY).await;
    let b = start("node-b", KEY).await;
    let c = start("node-c", KEY).await;
    join_all(&[&a, &b, &c]);
    let all = names(&["node-a", "node-b", "node-c"]);
    for m in [&a, &b, &c] {
        wait_alive(m, &all).await;
    }

    let left_at = Instant::now();
    c.stop.cancel();
    c.membership.finished().await;
    let survivors = names(&["node-a", "node-b"]);
    for m in [&a, &b] {
        wait_alive(m, &survivors).await;
        let seen = left_at.elapsed();
        println!("{}: node-c's leave seen after {seen:?}", m.name);
        // Well below failure detection (probe + suspicion ≈ 1 s): the leave is gossiped directly.
        assert!(
            seen < Duration::from_millis(500),
            "{}: leave took {seen:?}",
            m.name
        );
    }

    for m in [a, b] {
        m.stop.cancel();
        m.membership.finished().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_with_another_key_never_joins() {
    let a = start("node-a", KEY).await;
    let b = start("node-b", KEY).await;
    let intruder = start("node-x", b"another-key-that-is-32-bytes-lon").await;
    join_all(&[&a, &b, &intruder]);

    let ab = names(&["node-a", "node-b"]);
    wait_alive(&a, &ab).await;
    wait_alive(&b, &ab).await;

    // Give the intruder several probe/gossip rounds (bounded) to get in.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(*a.membership.alive().borrow(), ab);
    assert_eq!(*b.membership.alive().borrow(), ab);
    assert_eq!(*intruder.membership.alive().borrow(), names(&["node-x"]));

    let (at_a, at_b, at_x) = (
        rejected(&a, "bad_mac"),
        rejected(&b, "bad_mac"),
        rejected(&intruder, "bad_mac"),
    );
    println!("bad_mac rejections: node-a {at_a}, node-b {at_b}, node-x {at_x}");
    assert!(
        at_a > 0 && at_b > 0,
        "the intruder's announces are dropped and counted"
    );
    assert!(
        at_x > 0,
        "the members' announces to the intruder are dropped and counted"
    );

    for m in [a, b, intruder] {
        m.stop.cancel();
        m.membership.finished().await;
    }
}

// === A member in another process ===

/// The two child-process tests pin and stop processes: one at a time.
static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A child process, killed (SIGCONT first, in case it is stopped) and reaped on drop.
struct ChildProc(Child);

impl ChildProc {
    fn pid(&self) -> u32 {
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

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill runs");
    assert!(status.success() || sig == "CONT", "kill -{sig} {pid}");
}

/// This test binary again, running only the ignored helper `test`, optionally under `taskset -c cpu`.
fn helper(test: &str, cpu: Option<usize>, env: &[(&str, String)]) -> Child {
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
fn spawn_child_member(peers: &[&Member], cpu: Option<usize>) -> (ChildProc, SocketAddr) {
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
fn watch_for_loss(m: &Member, node: &'static str) -> Arc<Mutex<Vec<BTreeSet<String>>>> {
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

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_for_less_than_the_suspicion_time_is_not_down_and_for_longer_is() {
    let _one = CHILDREN.lock().await;
    let a = start("node-a", KEY).await;
    let b = start("node-b", KEY).await;
    let (child, c_addr) = spawn_child_member(&[&a, &b], None);
    a.membership.join([a.addr, b.addr, c_addr]);
    b.membership.join([a.addr, b.addr, c_addr]);
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_alive(&a, &all).await;
    wait_alive(&b, &all).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = [watch_for_loss(&a, "node-c"), watch_for_loss(&b, "node-c")];

    // SIGSTOP for 100 ms, five times: less than the suspicion time (100 ms of silence + 100 ms to
    // refute). node-c may be suspected, but it refutes as soon as it runs again.
    for round in 0..5 {
        signal(child.pid(), "STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal(child.pid(), "CONT");
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("stop round {round}: node-c resumed");
    }
    for m in [&a, &b] {
        println!(
            "{}: heartbeat suspicions of node-c {}, refuted {}",
            m.name,
            counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "suspected"),
            counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "refuted")
        );
    }
    for (m, lost) in [&a, &b].into_iter().zip(&lost) {
        assert_eq!(
            *lost.lock().expect("lock"),
            Vec::<BTreeSet<String>>::new(),
            "{}: node-c was declared down after 100 ms stops",
            m.name
        );
        assert_eq!(*m.membership.alive().borrow(), all, "{}", m.name);
    }

    // Stopped for good (1.5 s): that is a dead speaker, and it is declared down well within the bound.
    signal(child.pid(), "STOP");
    let stopped = Instant::now();
    let ab = names(&["node-a", "node-b"]);
    for m in [&a, &b] {
        wait_alive(m, &ab).await;
        let took = stopped.elapsed();
        println!("{}: stopped node-c declared down after {took:?}", m.name);
        assert!(took < Duration::from_secs(1), "{}: took {took:?}", m.name);
    }
    let remaining = Duration::from_millis(1500).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    // Resumed, it learns it was declared down and rejoins with a new identity.
    signal(child.pid(), "CONT");
    for m in [&a, &b] {
        let took = wait_alive(m, &all).await;
        println!("{}: resumed node-c is back after {took:?}", m.name);
    }
    drop(child);
    for m in [a, b] {
        m.stop.cancel();
        m.membership.finished().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loops_pinned_to_the_members_cpu_do_not_make_it_down() {
    let _one = CHILDREN.lock().await;
    let a = start("node-a", KEY).await;
    let b = start("node-b", KEY).await;
    // node-c and three busy loops on the last CPU (the only one on a 1-CPU machine).
    let cpu = cpus() - 1;
    let (child, c_addr) = spawn_child_member(&[&a, &b], Some(cpu));
    a.membership.join([a.addr, b.addr, c_addr]);
    b.membership.join([a.addr, b.addr, c_addr]);
    let all = names(&["node-a", "node-b", "node-c"]);
    wait_alive(&a, &all).await;
    wait_alive(&b, &all).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = [watch_for_loss(&a, "node-c"), watch_for_loss(&b, "node-c")];

    let hog_secs = 4;
    let hogs: Vec<ChildProc> = (0..3)
        .map(|_| {
            ChildProc(helper(
                "child_hog",
                Some(cpu),
                &[("FERRITE_TEST_CHILD_SECS", hog_secs.to_string())],
            ))
        })
        .collect();
    println!(
        "3 busy loops (pids {:?}) pinned to CPU {cpu} with node-c (pid {}) for {hog_secs} s",
        hogs.iter().map(ChildProc::pid).collect::<Vec<_>>(),
        child.pid()
    );
    tokio::time::sleep(Duration::from_secs(hog_secs)).await;
    drop(hogs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in [&a, &b] {
        println!(
            "{}: heartbeat suspicions of node-c under the busy loops {}, refuted {}",
            m.name,
            counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "suspected"),
            counter(m, "ferrite_lb_gossip_heartbeat_suspicions_total", "refuted")
        );
    }
    for (m, lost) in [&a, &b].into_iter().zip(&lost) {
        assert_eq!(
            *lost.lock().expect("lock"),
            Vec::<BTreeSet<String>>::new(),
            "{}: node-c was declared down while sharing its CPU with busy loops",
            m.name
        );
        assert_eq!(*m.membership.alive().borrow(), all, "{}", m.name);
    }
    drop(child);
    for m in [a, b] {
        m.stop.cancel();
        m.membership.finished().await;
    }
}

/// Helper process of the tests above: `node-c`, joining `FERRITE_TEST_GOSSIP_PEERS`, for at most
/// `FERRITE_TEST_CHILD_SECS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper: started as a child process by the tests above"]
async fn child_member() {
    let peers: Vec<SocketAddr> = std::env::var("FERRITE_TEST_GOSSIP_PEERS")
        .expect("FERRITE_TEST_GOSSIP_PEERS")
        .split(',')
        .map(|p| p.parse().expect("peer address"))
        .collect();
    let secs: u64 = std::env::var("FERRITE_TEST_CHILD_SECS")
        .expect("FERRITE_TEST_CHILD_SECS")
        .parse()
        .expect("seconds");
    let c = start("node-c", KEY).await;
    println!("GOSSIP-ADDR {}", c.addr);
    c.membership.join(peers.into_iter().chain([c.addr]));
    tokio::time::sleep(Duration::from_secs(secs.min(120))).await;
}

/// Helper process: a busy loop for at most `FERRITE_TEST_CHILD_SECS`.
#[test]
#[ignore = "helper: started as a child process by the tests above"]
fn child_hog() {
    let secs: u64 = std::env::var("FERRITE_TEST_CHILD_SECS")
        .expect("FERRITE_TEST_CHILD_SECS")
        .parse()
        .expect("seconds");
    let until = std::time::Instant::now() + Duration::from_secs(secs.min(60));
    let mut x = 0u64;
    while std::time::Instant::now() < until {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
