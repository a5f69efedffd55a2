//! Client timeouts against real sockets: an API server that accepts connections and never answers
//! costs the connect timeout, not forever; a run-time call bounded by `client::call` fails with the
//! typed `CallTimeout` (reason `Timeout`), not a setup error.

use ferrite_e2e::KubeBox;
use ferrite_kit::{
    Error, ReasonedError,
    client::{self, Timeouts},
};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::ListParams};
use std::time::{Duration, Instant};

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
