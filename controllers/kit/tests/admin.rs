//! The admin server over real HTTP (hyper's client on loopback): extra routes next to the built-in
//! paths, and `/livez` turning 503 with the name of a fatal condition.

use ferrite_kit::admin::{AdminServer, AdminState, MAX_ROUTE_BODY, text};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, body::Bytes};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

/// One request on a fresh HTTP/1.1 connection.
async fn call(addr: SocketAddr, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, String) {
    let go = async {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "admin")
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let resp = sender.send_request(req).await.expect("response");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), go)
        .await
        .expect("admin server answers within 5 s")
}

#[tokio::test]
async fn extra_routes_answer_beside_the_builtin_paths_and_livez_names_fatal_conditions() {
    let server = AdminServer::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let state = AdminState {
        registry: ferrite_kit::admin::registry(),
        ..AdminState::default()
    };
    state.readiness.gate("test").open();

    // An ACME HTTP-01 solver: token -> key authorization, filled while the server already runs.
    let tokens: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let solver = tokens.clone();
    state
        .routes
        .add("/.well-known/acme-challenge/", move |req: Request<Bytes>| {
            let token = req
                .uri()
                .path()
                .trim_start_matches("/.well-known/acme-challenge/")
                .to_string();
            let answer = solver.lock().expect("lock").get(&token).cloned();
            async move {
                match answer {
                    Some(key_auth) => text(StatusCode::OK, key_auth),
                    None => text(StatusCode::NOT_FOUND, format!("no challenge {token:?}\n")),
                }
            }
        })
        .expect("solver route");
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(server.serve_with(state.clone(), shutdown.clone()));

    let (code, body) = call(addr, Method::GET, "/.well-known/acme-challenge/abc", vec![]).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body.contains("no challenge \"abc\""),
        "the route answered, not the server: {body}"
    );
    tokens
        .lock()
        .expect("lock")
        .insert("abc".into(), "abc.thumbprint".into());
    assert_eq!(
        call(addr, Method::GET, "/.well-known/acme-challenge/abc", vec![]).await,
        (StatusCode::OK, "abc.thumbprint".to_string())
    );

    // A debug route added after the server started, getting method and body.
    state
        .routes
        .add("/debug/echo", |req: Request<Bytes>| async move {
            text(
                StatusCode::OK,
                format!(
                    "{} {} {}",
                    req.method(),
                    req.uri().path(),
                    String::from_utf8_lossy(req.body())
                ),
            )
        })
        .expect("debug route");
    assert_eq!(
        call(addr, Method::POST, "/debug/echo/x", b"hello".to_vec()).await,
        (StatusCode::OK, "POST /debug/echo/x hello".to_string())
    );
    let (code, _) = call(addr, Method::POST, "/debug/echo", vec![b'a'; MAX_ROUTE_BODY + 1]).await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, body) = call(addr, Method::GET, "/debugger", vec![]).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        body.contains("/debug/echo") && body.contains("/.well-known/acme-challenge/"),
        "404 lists the routes: {body}"
    );

    // The built-in paths stay as they were.
    let (code, body) = call(addr, Method::GET, "/metrics", vec![]).await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("process_cpu_seconds_total"), "{body}");
    assert_eq!(call(addr, Method::GET, "/readyz", vec![]).await.0, StatusCode::OK);
    assert_eq!(
        call(addr, Method::POST, "/readyz", vec![]).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // Liveness: 200 until a fatal condition is marked, then 503 naming it; readiness unaffected.
    assert_eq!(
        call(addr, Method::GET, "/livez", vec![]).await,
        (StatusCode::OK, "ok\n".to_string())
    );
    state
        .liveness
        .fail("gossip task", "exited: receive socket closed");
    assert_eq!(
        call(addr, Method::GET, "/livez", vec![]).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not live: gossip task: exited: receive socket closed\n".to_string()
        )
    );
    assert_eq!(call(addr, Method::GET, "/readyz", vec![]).await.0, StatusCode::OK);
    shutdown.cancel();
}
