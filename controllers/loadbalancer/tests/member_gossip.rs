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

mod common;

use common::gossip::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

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
        match try_start_at("node-c", c_addr, KEY).await {
            Ok(m) => {
                restarted = Some(m);
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

    leave_all([a, b, c2]).await;
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
    c.leave().await;
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

    leave_all([a, b]).await;
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

    leave_all([a, b, intruder]).await;
}

// === A member in another process ===

/// The two child-process tests pin and stop processes: one at a time.
static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_for_less_than_the_suspicion_time_is_not_down_and_for_longer_is() {
    let _one = CHILDREN.lock().await;
    let w = WithChild::start(None).await;

    // SIGSTOP for 100 ms, five times: less than the suspicion time (100 ms of silence + 100 ms to
    // refute). node-c may be suspected, but it refutes as soon as it runs again.
    for round in 0..5 {
        signal(w.child.pid(), "STOP");
        tokio::time::sleep(Duration::from_millis(100)).await;
        signal(w.child.pid(), "CONT");
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("stop round {round}: node-c resumed");
    }
    w.assert_node_c_never_down("", "after 100 ms stops");

    // Stopped for good (1.5 s): that is a dead speaker, and it is declared down well within the bound.
    signal(w.child.pid(), "STOP");
    let stopped = Instant::now();
    let ab = names(&["node-a", "node-b"]);
    for m in [&w.a, &w.b] {
        wait_alive(m, &ab).await;
        let took = stopped.elapsed();
        println!("{}: stopped node-c declared down after {took:?}", m.name);
        assert!(took < Duration::from_secs(1), "{}: took {took:?}", m.name);
    }
    let remaining = Duration::from_millis(1500).saturating_sub(stopped.elapsed());
    tokio::time::sleep(remaining).await;
    // Resumed, it learns it was declared down and rejoins with a new identity.
    signal(w.child.pid(), "CONT");
    for m in [&w.a, &w.b] {
        let took = wait_alive(m, &w.all).await;
        println!("{}: resumed node-c is back after {took:?}", m.name);
    }
    w.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_loops_pinned_to_the_members_cpu_do_not_make_it_down() {
    let _one = CHILDREN.lock().await;
    // node-c and three busy loops on the last CPU (the only one on a 1-CPU machine).
    let cpu = cpus() - 1;
    let w = WithChild::start(Some(cpu)).await;

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
        w.child.pid()
    );
    tokio::time::sleep(Duration::from_secs(hog_secs)).await;
    drop(hogs);
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_node_c_never_down(" under the busy loops", "while sharing its CPU with busy loops");
    w.finish().await;
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
