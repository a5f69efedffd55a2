//! Component test of speaker gossip (`ferrite_lb::member`): real UDP on 127.0.0.1, several members
//! in one process, each on its own port with its own metrics registry.
//!
//! Every wait is bounded (10 s); the measured times are printed (`--nocapture`) so failure-detection
//! regressions show up before they break the assertions.

use std::collections::BTreeSet;
use std::net::SocketAddr;
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
    m.registry
        .gather()
        .iter()
        .filter(|f| f.name() == "ferrite_lb_gossip_rejected_total")
        .flat_map(|f| f.get_metric())
        .filter(|metric| {
            metric
                .get_label()
                .iter()
                .any(|l| l.name() == "reason" && l.value() == reason)
        })
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

    // Crash node-c: no leave message, its socket just goes silent.
    let c_addr = c.addr;
    let crashed_at = Instant::now();
    c.membership.crash();
    let survivors = names(&["node-a", "node-b"]);
    for m in [&a, &b] {
        wait_alive(m, &survivors).await;
        let detected = crashed_at.elapsed();
        println!("{}: crashed node-c detected down after {detected:?}", m.name);
        assert!(
            detected < Duration::from_secs(3),
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
