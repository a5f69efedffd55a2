//! Leader election against the box, with real processes: two replicas, one leader; SIGKILL the leader and
//! the other takes over within the lease duration; SIGTERM releases the lease so the other takes over at
//! once.
//!
//! Each replica is this test binary re-run as a child (`--ignored --exact replica`): the `replica`
//! function below is the child's entry point, not a test of its own.

use clap::Parser;
use ferrite_e2e::KubeBox;
use ferrite_kit::{App, cli::CommonArgs};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

#[derive(Parser, Debug)]
struct ReplicaCli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Child entry point: runs an App with leader election and prints `LEADER true|false` on every change.
#[tokio::test]
#[ignore = "entry point of the replica processes started by the election tests"]
async fn replica() {
    let Ok(args) = std::env::var("FERRITE_REPLICA_ARGS") else {
        return;
    };
    let cli = ReplicaCli::parse_from(std::iter::once("replica").chain(args.split(' ')));
    let app = App::start(&cli.common, "kittest", "kittest")
        .await
        .expect("app starts");
    println!("PID {}", std::process::id());
    let mut rx = app.leadership.subscribe();
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::select! {
            r = rx.changed() => { if r.is_err() { break } println!("LEADER {}", *rx.borrow_and_update()); }
            _ = app.shutdown.cancelled() => break,
            // The test died: do not outlive it.
            _ = tokio::time::sleep(Duration::from_millis(300)) => {
                if std::os::unix::process::parent_id() != parent { std::process::exit(3) }
            }
        }
    }
    app.finish().await;
    println!("EXIT");
}

struct Replica {
    id: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Replica {
    fn start(kb: &KubeBox, ns: &str, lease: &str, id: &str, duration: &str, deadline: &str) -> Replica {
        let args = format!(
            "--admin-addr 127.0.0.1:0 --lease-name {lease} --lease-namespace {ns} --identity {id} \
             --lease-duration {duration} --lease-renew-deadline {deadline} --lease-retry-period 250ms"
        );
        let mut child = Command::new(std::env::current_exe().expect("test binary path"))
            .args([
                "--ignored",
                "--exact",
                "replica",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FERRITE_REPLICA_ARGS", args)
            .env("KUBECONFIG", &kb.kubeconfig)
            .env("FERRITE_LOG_LEVEL", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("replica starts");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Replica {
            id: id.to_string(),
            child,
            lines,
        }
    }

    /// Waits until the replica reports `LEADER <want>`; returns how long it took.
    fn wait_leader(&self, want: bool, limit: Duration) -> Option<Duration> {
        let start = Instant::now();
        let expect = format!("LEADER {want}");
        while let Some(left) = limit.checked_sub(start.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(l) if l == expect => return Some(start.elapsed()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(ok.success(), "kill {sig} {}", self.child.id());
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn holder(kb: &KubeBox, ns: &str, lease: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(kb.client().await, ns);
    api.get_opt(lease)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
        .filter(|h| !h.is_empty())
}

fn first_leader<'a>(a: &'a Replica, b: &'a Replica) -> (&'a Replica, &'a Replica) {
    // Whoever reports first; the other must stay a follower.
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if a.wait_leader(true, Duration::from_millis(100)).is_some() {
            return (a, b);
        }
        if b.wait_leader(true, Duration::from_millis(100)).is_some() {
            return (b, a);
        }
    }
    panic!("no replica became leader within 20 s");
}

#[tokio::test]
async fn one_leader_and_failover_within_the_lease_duration_after_a_kill() {
    let kb = KubeBox::shared();
    let ns = kb.namespace("elect-kill").await;
    let a = Replica::start(kb, &ns, "kill", "replica-a", "3s", "2s");
    let b = Replica::start(kb, &ns, "kill", "replica-b", "3s", "2s");
    let (leader, follower) = first_leader(&a, &b);
    assert_eq!(holder(kb, &ns, "kill").await.as_deref(), Some(leader.id.as_str()));
    // Exactly one leader: the follower stays a follower through several renewals.
    assert!(
        follower.wait_leader(true, Duration::from_secs(2)).is_none(),
        "two leaders at once"
    );

    leader.signal("-KILL");
    let took = follower
        .wait_leader(true, Duration::from_secs(10))
        .expect("the follower takes over after the leader is killed");
    eprintln!("takeover after SIGKILL: {took:?} (lease duration 3 s, retry period 250 ms)");
    // The follower may take the lease once it has seen no renewal for a whole lease duration; it tries
    // every retry period, so the bound is duration + one retry period (+ scheduling slack).
    assert!(
        took < Duration::from_millis(3000 + 250 + 750),
        "takeover took {took:?}"
    );
    assert_eq!(
        holder(kb, &ns, "kill").await.as_deref(),
        Some(follower.id.as_str())
    );
}

#[tokio::test]
async fn sigterm_releases_the_lease_at_once() {
    let kb = KubeBox::shared();
    let ns = kb.namespace("elect-term").await;
    // A long lease: a takeover well under 10 s can only come from the release.
    let a = Replica::start(kb, &ns, "term", "replica-a", "10s", "6s");
    let b = Replica::start(kb, &ns, "term", "replica-b", "10s", "6s");
    let (leader, follower) = first_leader(&a, &b);
    leader.signal("-TERM");
    let took = follower
        .wait_leader(true, Duration::from_secs(15))
        .expect("the follower takes over");
    eprintln!("takeover after SIGTERM: {took:?} (lease duration 10 s)");
    assert!(
        took < Duration::from_secs(3),
        "lease was not released on SIGTERM: takeover took {took:?}"
    );
    assert_eq!(
        holder(kb, &ns, "term").await.as_deref(),
        Some(follower.id.as_str())
    );
}
