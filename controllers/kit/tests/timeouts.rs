//! Client timeouts against real sockets: an API server that accepts connections and never answers
//! costs the connect timeout, not forever; a connection that stalls mid-way is dropped by the read
//! timeout; a run-time call bounded by `client::call` fails with the typed `CallTimeout` (reason
//! `Timeout`), not a setup error.

use ferrite_e2e::KubeBox;
use ferrite_kit::{
    Error, ReasonedError,
    client::{self, Timeouts},
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::ListParams};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

#[tokio::test]
async fn a_silent_api_server_costs_the_connect_timeout_and_a_slow_call_is_a_typed_timeout() {
    let kb = KubeBox::shared();

    // Accepts TCP and never says a word (not even the TLS handshake).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        silent.set_nonblocking(true).expect("nonblocking");
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until && !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            match silent.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        conns.len()
    });
    let dir = std::env::temp_dir().join(format!("ferrite-kit-timeouts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kc = dir.join("silent.kubeconfig");
    ferrite_e2e::kubebox::write_kubeconfig(
        &kc,
        &format!("https://127.0.0.1:{port}"),
        &kb.dir.join("ca.crt"),
        "x",
        "x",
        "default",
    )
    .expect("kubeconfig written");
    let timeouts = Timeouts {
        connect: Duration::from_millis(500),
        ..Timeouts::default()
    };
    let start = Instant::now();
    let err = client::connect_with_timeouts(Some(&kc), timeouts)
        .await
        .err()
        .expect("a silent server is not a working API server");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "gave up after {took:?}, want about the 500 ms connect timeout (+ retries): {err}"
    );
    assert!(
        matches!(err, Error::Unreachable { .. } | Error::Timeout { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(
        held.join().expect("listener thread") >= 1,
        "the client did connect"
    );

    // Against the real box: a call within its deadline succeeds, one that cannot finish in time is a
    // CallTimeout naming the call.
    let c = client::connect_with_timeouts(Some(&kb.kubeconfig), Timeouts::default())
        .await
        .expect("the box answers");
    let ns: Api<Namespace> = Api::all(c);
    let list = client::call(
        "list namespaces",
        Duration::from_secs(10),
        ns.list(&ListParams::default()),
    )
    .await
    .expect("listed in time");
    assert!(!list.items.is_empty());
    let err = client::call("list namespaces", Duration::ZERO, ns.list(&ListParams::default()))
        .await
        .expect_err("no call finishes in zero time");
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    assert_eq!(err.reason(), "Timeout");
    assert!(
        err.to_string()
            .starts_with("list namespaces did not finish within 0ns"),
        "{err}"
    );
}

/// A TCP bridge to the box's API server that can stall: while stalled it holds every byte in both
/// directions (a half-open connection as seen from the client), new connections included.
async fn stallable_bridge(target: String) -> (u16, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let stalled = Arc::new(AtomicBool::new(false));
    let st = stalled.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::spawn(pump(cr, sw, st.clone()));
            tokio::spawn(pump(sr, cw, st.clone()));
        }
    });
    (port, stalled)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: the test ends long before; a connection lives at most this long.
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_stalled_connection_is_dropped_by_the_read_timeout_and_a_call_without_one_is_bounded_by_call() {
    let kb = KubeBox::shared();
    let target = kb
        .server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .to_string();
    let (port, stalled) = stallable_bridge(target).await;
    let dir = std::env::temp_dir().join(format!("ferrite-kit-stall-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kc = dir.join("bridged.kubeconfig");
    let admin = std::fs::read_to_string(&kb.kubeconfig).expect("box kubeconfig");
    assert!(admin.contains(&kb.server), "the kubeconfig names the server");
    std::fs::write(
        &kc,
        admin.replace(&kb.server, &format!("https://127.0.0.1:{port}")),
    )
    .expect("bridged kubeconfig");

    let short = Timeouts {
        connect: Duration::from_secs(2),
        read: Some(Duration::from_secs(2)),
        write: Duration::from_secs(5),
    };
    let with_read = client::connect_with_timeouts(Some(&kc), short)
        .await
        .expect("the box answers through the bridge");
    let without_read = client::connect_with_timeouts(Some(&kc), Timeouts { read: None, ..short })
        .await
        .expect("the box answers through the bridge");
    let ns_a: Api<Namespace> = Api::all(with_read);
    let ns_b: Api<Namespace> = Api::all(without_read);
    ns_a.list(&ListParams::default()).await.expect("listed");
    ns_b.list(&ListParams::default()).await.expect("listed");

    stalled.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), ns_a.list(&ListParams::default()))
        .await
        .expect("the read timeout ends the call, not the test's 30 s guard");
    assert!(r.is_err(), "a stalled connection cannot list");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "gave up after {took:?}; the read timeout is 2 s"
    );

    let start = Instant::now();
    let err = client::call(
        "list namespaces",
        Duration::from_secs(3),
        ns_b.list(&ListParams::default()),
    )
    .await
    .expect_err("stalled");
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    assert_eq!(err.reason(), "Timeout");
    assert!(start.elapsed() < Duration::from_secs(6));

    // The bridge recovers: the client with the read timeout works again (on a fresh connection).
    stalled.store(false, Ordering::SeqCst);
    let mut ok = false;
    for _ in 0..10 {
        if ns_a.list(&ListParams::default()).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ok, "the client recovers once the connection moves again");
}
