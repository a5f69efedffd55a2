//! Component tests of the data plane: the proxy on 127.0.0.1 with free ports, tiny hyper backends,
//! and real clients (curl for HTTP/1.1, HTTP/2, h2c and TLS; hyper's client; raw TCP for the probes).

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrite_ingress::proxy::{
    Proxy, ProxyConfig, SharedSnapshot, Snapshot, certified_key_from_pem, self_signed_default,
};
use ferrite_ingress::{BackendRef, RouteTable, SecretRef, ServicePort};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::networking::v1::Ingress;
use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CURL: &str = "/usr/bin/curl";

fn ingress(name: &str, spec: serde_json::Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": "web", "name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec,
    }))
    .expect("test Ingress")
}

fn path(p: &str, service: &str) -> serde_json::Value {
    json!({"path": p, "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}})
}

fn backend(service: &str) -> BackendRef {
    BackendRef {
        namespace: "web".into(),
        service: service.into(),
        port: ServicePort::Number(80),
    }
}

fn secret(name: &str) -> SecretRef {
    SecretRef {
        namespace: "web".into(),
        name: name.into(),
    }
}

/// a.test: /a -> svc-a, /b -> svc-b, /empty -> svc-empty (no endpoints); tls.test (TLS, Secret tls-a)
/// -> svc-a; b.test (TLS, Secret tls-b) -> svc-b.
fn table() -> RouteTable {
    let ing = ingress(
        "main",
        json!({
            "tls": [{"hosts": ["tls.test"], "secretName": "tls-a"}, {"hosts": ["b.test"], "secretName": "tls-b"}],
            "rules": [
                {"host": "a.test", "http": {"paths": [path("/a", "svc-a"), path("/b", "svc-b"), path("/empty", "svc-empty")]}},
                {"host": "tls.test", "http": {"paths": [path("/", "svc-a")]}},
                {"host": "b.test", "http": {"paths": [path("/", "svc-b")]}},
            ],
        }),
    );
    let compiled = RouteTable::compile([&ing]);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    compiled.table
}

/// A backend answering every request with its name, the path and the headers it received; POST
/// bodies are streamed back as they arrive; `Upgrade` requests get a 101 and an echo of the bytes.
async fn start_backend(name: &'static str) -> SocketAddr {
    start_counting_backend(name).await.0
}

/// [`start_backend`] that also counts the TCP connections it accepted.
async fn start_counting_backend(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("backend addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| async move { backend_answer(name, req) });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn backend_answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<TestBody>, hyper::Error> {
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
            .expect("101");
        return Ok(resp);
    }
    if req.method() == hyper::Method::POST {
        let resp = Response::builder()
            .header("x-backend", name)
            .body(req.into_body().boxed())
            .expect("echo");
        return Ok(resp);
    }
    let mut text = format!("backend={name}\npath={}\n", req.uri().path());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(text)).map_err(|n| match n {}).boxed())
        .expect("answer"))
}

struct Certs {
    tls_a_pem: String,
    b_pem: String,
    dir: tempfile::TempDir,
}

fn cert(name: &str) -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

struct Running {
    http: SocketAddr,
    https: SocketAddr,
    shared: Arc<SharedSnapshot>,
    cancel: CancellationToken,
    a: SocketAddr,
    b: SocketAddr,
    certs: Certs,
}

impl Running {
    fn snapshot(&self, generation: u64) -> Snapshot {
        build_snapshot(self.a, self.b, &self.certs, generation)
    }

    fn ca(&self, name: &str) -> String {
        self.certs.dir.path().join(name).to_string_lossy().into_owned()
    }
}

fn build_snapshot(a: SocketAddr, b: SocketAddr, certs: &Certs, generation: u64) -> Snapshot {
    let mut s = Snapshot::new(table(), self_signed_default().expect("default cert"));
    s.set_endpoints(backend("svc-a"), vec![a]);
    s.set_endpoints(backend("svc-b"), vec![b]);
    s.set_endpoints(backend("svc-empty"), vec![]);
    let (ca, ka) = (&certs.tls_a_pem, certs.dir.path().join("tls-a.key"));
    let ka = std::fs::read(ka).expect("key a");
    s.set_certificate_pem(secret("tls-a"), ca.as_bytes(), &ka)
        .expect("cert a");
    let kb = std::fs::read(certs.dir.path().join("b.key")).expect("key b");
    s.set_certificate_pem(secret("tls-b"), certs.b_pem.as_bytes(), &kb)
        .expect("cert b");
    s.set_acme_token("tls.test", "tok_en-1", "tok_en-1.thumbprint")
        .expect("token");
    s.set_generation(generation);
    s
}

async fn start(tweak: impl FnOnce(&mut ProxyConfig)) -> Running {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = start_backend("A").await;
    let b = start_backend("B").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (tls_a_pem, tls_a_key) = cert("tls.test");
    let (b_pem, b_key) = cert("b.test");
    std::fs::write(dir.path().join("tls-a.pem"), &tls_a_pem).expect("write");
    std::fs::write(dir.path().join("tls-a.key"), &tls_a_key).expect("write");
    std::fs::write(dir.path().join("b.pem"), &b_pem).expect("write");
    std::fs::write(dir.path().join("b.key"), &b_key).expect("write");
    let certs = Certs {
        tls_a_pem,
        b_pem,
        dir,
    };
    let shared = Arc::new(SharedSnapshot::new(build_snapshot(a, b, &certs, 0)));
    let mut config = ProxyConfig {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        https_addr: "127.0.0.1:0".parse().expect("addr"),
        // The access log has its own tests (proxy_features.rs); keep the test output readable.
        access_log: false,
        ..ProxyConfig::default()
    };
    tweak(&mut config);
    let proxy = Proxy::bind(config, shared.clone()).await.expect("bind proxy");
    let http = proxy.http_addr().expect("addr");
    let https = proxy.https_addr().expect("addr");
    let cancel = CancellationToken::new();
    tokio::spawn(proxy.serve(cancel.clone()));
    Running {
        http,
        https,
        shared,
        cancel,
        a,
        b,
        certs,
    }
}

async fn curl(args: &[&str]) -> Output {
    tokio::process::Command::new(CURL)
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .await
        .expect("run /usr/bin/curl (apt-get install curl)")
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -w '%{http_code}'` appended after a newline.
async fn status_and_body(args: &[&str]) -> (u16, String) {
    let mut all = vec!["-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all).await;
    let t = text(&out);
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", &t));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_and_path_over_http1_http2_and_tls() {
    let p = start(|_| {}).await;
    let base = format!("http://{}", p.http);

    let (code, body) = status_and_body(&["-H", "Host: a.test", &format!("{base}/a/x?q=1")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("backend=A\npath=/a/x\n"), "{body}");
    let (code, body) = status_and_body(&["-H", "Host: a.test", &format!("{base}/b")]).await;
    assert_eq!((code, body.contains("backend=B")), (200, true), "{body}");

    // h2c with prior knowledge on the plain listener.
    let (code, body) = status_and_body(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: a.test",
        &format!("{base}/b/h2c"),
    ])
    .await;
    assert_eq!(
        (code, body.contains("backend=B\npath=/b/h2c")),
        (200, true),
        "{body}"
    );

    // Nothing matches: the built-in 404. A backend without endpoints: 503.
    let (code, _) = status_and_body(&["-H", "Host: nope.test", &format!("{base}/")]).await;
    assert_eq!(code, 404);
    let (code, _) = status_and_body(&["-H", "Host: a.test", &format!("{base}/other")]).await;
    assert_eq!(code, 404);
    let (code, body) = status_and_body(&["-H", "Host: a.test", &format!("{base}/empty")]).await;
    assert_eq!(code, 503, "{body}");

    // Forwarded headers: client claims are replaced; a valid request id is kept, others replaced.
    let (code, body) = status_and_body(&[
        "-H",
        "Host: a.test",
        "-H",
        "X-Forwarded-For: 6.6.6.6",
        "-H",
        "X-Request-Id: abc-123",
        "-H",
        "Connection: keep-alive, X-Secret",
        "-H",
        "X-Secret: hop",
        &format!("{base}/a"),
    ])
    .await;
    assert_eq!(code, 200);
    assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
    assert!(!body.contains("x-forwarded-for: 6.6.6.6"), "{body}");
    // Passed on under its own name, as ingress-nginx does.
    assert!(body.contains("x-original-forwarded-for: 6.6.6.6\n"), "{body}");
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: a.test\n"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-port: {}\n", p.http.port())),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http;host=\"a.test\"\n"),
        "{body}"
    );
    assert!(body.contains("x-request-id: abc-123\n"), "{body}");
    assert!(body.contains("host: a.test\n"), "{body}");
    assert!(
        !body.contains("x-secret"),
        "hop-by-hop header listed in Connection was forwarded: {body}"
    );
    let (_, body) = status_and_body(&[
        "-H",
        "Host: a.test",
        "-H",
        "X-Request-Id: bad id\"",
        &format!("{base}/a"),
    ])
    .await;
    let id = body
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_default();
    assert_eq!(id.len(), 32, "generated id expected: {body}");

    // TLS, HTTP/2 by ALPN and HTTP/1.1, SNI-selected certificate verified against its own CA.
    let resolve = format!("tls.test:{}:127.0.0.1", p.https.port());
    let url = format!("https://tls.test:{}/over-tls", p.https.port());
    let ca = p.ca("tls-a.pem");
    for version in ["--http2", "--http1.1"] {
        let out = curl(&[version, "-v", "--resolve", &resolve, "--cacert", &ca, &url]).await;
        let body = text(&out);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{version}: {err}");
        assert!(body.contains("backend=A\npath=/over-tls"), "{body}");
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        if version == "--http2" {
            assert!(err.contains("ALPN: server accepted h2"), "{err}");
        }
        assert!(err.contains("TLSv1.3") || err.contains("TLSv1.2"), "{err}");
    }
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_tls_1_1_is_refused() {
    let p = start(|_| {}).await;
    let port = p.https.port();
    // b.test with b's certificate as the only CA: verifies only if b's certificate is served.
    let out = curl(&[
        "--resolve",
        &format!("b.test:{port}:127.0.0.1"),
        "--cacert",
        &p.ca("b.pem"),
        &format!("https://b.test:{port}/"),
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text(&out).contains("backend=B"));
    // b.test's certificate is not tls.test's.
    let out = curl(&[
        "--resolve",
        &format!("b.test:{port}:127.0.0.1"),
        "--cacert",
        &p.ca("tls-a.pem"),
        &format!("https://b.test:{port}/"),
    ])
    .await;
    assert!(!out.status.success(), "b.test verified with tls.test's CA");
    // A name without a certificate gets the self-signed default (its subject printed by curl -v -k).
    let out = curl(&[
        "-v",
        "-k",
        "--resolve",
        &format!("a.test:{port}:127.0.0.1"),
        &format!("https://a.test:{port}/a"),
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("subject: CN=ingress-default.ferrite.invalid"),
        "{err}"
    );
    // TLS 1.1 and older are refused.
    let out = curl(&[
        "-k",
        "--tls-max",
        "1.1",
        "--resolve",
        &format!("b.test:{port}:127.0.0.1"),
        &format!("https://b.test:{port}/"),
    ])
    .await;
    assert!(!out.status.success(), "TLS 1.1 accepted");

    // A new certificate for b.test is served from the next handshake on, without a restart.
    let (new_pem, new_key) = cert("b.test");
    let new_ca = p.certs.dir.path().join("b-new.pem");
    std::fs::write(&new_ca, &new_pem).expect("write");
    let mut next = p.snapshot(1);
    next.set_certificate(
        secret("tls-b"),
        certified_key_from_pem(new_pem.as_bytes(), new_key.as_bytes()).expect("new"),
    );
    p.shared.store(next);
    let out = curl(&[
        "--resolve",
        &format!("b.test:{port}:127.0.0.1"),
        "--cacert",
        &new_ca.to_string_lossy(),
        &format!("https://b.test:{port}/"),
    ])
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_and_acme() {
    let p = start(|_| {}).await;
    let base = format!("http://{}", p.http);
    let out = curl(&["-i", "-H", "Host: tls.test", &format!("{base}/x?y=1")]).await;
    let head = text(&out);
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("location: https://tls.test/x?y=1\r\n"),
        "{head}"
    );
    // The ACME token is answered on :80 before the redirect.
    let (code, body) = status_and_body(&[
        "-H",
        "Host: tls.test",
        &format!("{base}/.well-known/acme-challenge/tok_en-1"),
    ])
    .await;
    assert_eq!((code, body.as_str()), (200, "tok_en-1.thumbprint"));
    // Not for another host, and an unknown token is routed (never redirected).
    let (code, body) = status_and_body(&[
        "-H",
        "Host: b.test",
        &format!("{base}/.well-known/acme-challenge/tok_en-1"),
    ])
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("backend=B"), "{body}");
    // A host without TLS is not redirected.
    let (code, _) = status_and_body(&["-H", "Host: a.test", &format!("{base}/a")]).await;
    assert_eq!(code, 200);
    p.cancel.cancel();

    let p = start(|c| c.redirect_to_https = false).await;
    let (code, body) = status_and_body(&["-H", "Host: tls.test", &format!("http://{}/plain", p.http)]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("backend=A"));
    p.cancel.cancel();
}

/// Sends raw bytes, returns what came back until the proxy closed or 3 s passed.
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_probes_limits_and_slow_headers() {
    let p = start(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    let a = p.http;
    // Ambiguous framing is refused with 400 and the connection closed, before any upstream sees
    // the request (the framing checks below hyper, as nginx does): CL+TE in either order,
    // repeated Content-Length lines (equal or not), Transfer-Encoding other than one chunked.
    let refused: [&[u8]; 7] = [
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-Folded: a\r\n b\r\n\r\n",
        // A refused request after a valid one on the same connection: the first is answered.
        b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nPOST /b HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    for (i, probe) in refused.iter().enumerate() {
        let r = raw(a, probe).await;
        let what = String::from_utf8_lossy(probe);
        let last = if i == refused.len() - 1 {
            assert!(r.starts_with("HTTP/1.1 200"), "{what}: {r}");
            assert!(r.contains("backend=A\npath=/a\n"), "{what}: {r}");
            r.rfind("HTTP/1.1 ").unwrap_or(0)
        } else {
            0
        };
        assert!(r[last..].starts_with("HTTP/1.1 400"), "{what}: {r}");
        assert!(
            r[last..]
                .to_ascii_lowercase()
                .contains("\r\nconnection: close\r\n"),
            "{what}: {r}"
        );
        assert_eq!(
            r.matches("HTTP/1.1 ").count(),
            1 + usize::from(last > 0),
            "{what}: {r}"
        );
        assert!(!r.contains("backend=B") && !r.contains("hello"), "{what}: {r}");
    }
    // The same with the head arriving in pieces (the refused head is split across reads).
    let mut s = TcpStream::connect(a).await.expect("connect");
    s.set_nodelay(true).expect("nodelay");
    for piece in [
        &b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-"[..],
        b"Length: 5\r\nContent-Len",
        b"gth: 5\r",
        b"\n\r\nhello",
    ] {
        s.write_all(piece).await.expect("write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "connection left open");
    let r = String::from_utf8_lossy(&out);
    assert!(
        r.starts_with("HTTP/1.1 400"),
        "split duplicate Content-Length: {r}"
    );
    // Pipelined valid requests are all served, after a Content-Length body and after a chunked
    // body with extensions and a trailer.
    let r = raw(
        a,
        b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\nPOST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n\r\nhelloPOST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r.matches("HTTP/1.1 200").count(), 4, "pipelined: {r}");
    assert!(r.contains("hello") && r.contains("world"), "{r}");
    assert!(r.contains("backend=B\npath=/b\n"), "{r}");
    // An invalid chunk size: the body is refused where it starts, nothing after it is read.
    let r = raw(
        a,
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "invalid chunk size: {r}");
    assert!(
        r.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{r}"
    );
    assert_eq!(r.matches("HTTP/1.1 ").count(), 1, "{r}");
    // A WebSocket upgrade still works, and bytes in the tunnel that look like refused requests
    // are not inspected.
    let mut tunnel = open_tunnel(a).await;
    echo(
        &mut tunnel,
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    drop(tunnel);

    // HTTP/1.0 without Host: rules without a host would apply; here none exist, so the built-in 404.
    let r = raw(a, b"GET /a HTTP/1.0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.0 404"), "{r}");

    // Header limits: 431.
    let big = format!(
        "GET /a HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(40 * 1024)
    );
    let r = raw(a, big.as_bytes()).await;
    assert!(
        r.starts_with("HTTP/1.1 431"),
        "oversize head: {}",
        &r[..r.len().min(200)]
    );
    let mut many = String::from("GET /a HTTP/1.1\r\nHost: a.test\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let r = raw(a, many.as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "too many headers: {r}");

    // The same limit over HTTP/2 (h2c): 431.
    let big_header = format!("X-Big: {}", "x".repeat(40 * 1024));
    let (code, _) = status_and_body(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: a.test",
        "-H",
        &big_header,
        &format!("http://{a}/a"),
    ])
    .await;
    assert_eq!(code, 431, "oversize HTTP/2 header list");

    // Slowloris: an incomplete head is closed after the header read timeout.
    let mut s = TcpStream::connect(a).await.expect("connect");
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a.test\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "slow client still connected after 5 s");
    assert!(started.elapsed() < Duration::from_secs(4));
    p.cancel.cancel();
}

/// This process's resident set (VmRSS), in bytes.
fn rss_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb * 1024)
        .expect("VmRSS in /proc/self/status")
}

type Client =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_streams_both_ways() {
    let p = start(|_| {}).await;
    const CHUNK: usize = 1024 * 1024;
    const CHUNKS: usize = 64;
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(2);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/a/upload", p.http))
        .header("host", "a.test")
        .body(body.boxed())
        .expect("request");
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; CHUNK]);
        tx.send_data(chunk.clone()).await.expect("first chunk");
        // The rest is generated only once the response has started: a proxy that collected the
        // request body before forwarding it would wait here forever.
        started_rx.await.expect("response started");
        for _ in 1..CHUNKS {
            tx.send_data(chunk.clone()).await.expect("chunk");
        }
    });
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("response head before the body was complete")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("x-backend").map(|v| v.as_bytes()),
        Some(&b"A"[..])
    );
    let _ = started_tx.send(());
    let mut body = resp.into_body();
    let mut total = 0usize;
    let baseline = rss_bytes();
    let mut peak = baseline;
    let read = async {
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("frame");
            if let Some(d) = frame.data_ref() {
                assert!(d.iter().all(|b| *b == 7));
                total += d.len();
            }
            peak = peak.max(rss_bytes());
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("echo finished");
    producer.await.expect("producer");
    assert_eq!(total, CHUNK * CHUNKS);
    // Proxy, backend and client share this process: holding the 64 MiB anywhere would show here.
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 32 * 1024 * 1024,
        "RSS grew by {} MiB during a 64 MiB echo",
        growth >> 20
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_retries_another_endpoint() {
    let p = start(|_| {}).await;
    // A port nobody listens on: bind, note it, close.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let mut s = p.snapshot(1);
    s.set_endpoints(backend("svc-a"), vec![dead, p.a]);
    p.shared.store(s);
    let c = client();
    for _ in 0..6 {
        let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
        assert_eq!(resp.status(), 200);
    }
    // Only the dead endpoint: 502.
    let mut s = p.snapshot(2);
    s.set_endpoints(backend("svc-a"), vec![dead]);
    p.shared.store(s);
    let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
    assert_eq!(resp.status(), 502);
    p.cancel.cancel();
}

async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).await.expect("connect");
    upgrade(s).await
}

/// Sends an Upgrade request on `s` and reads the head of the 101.
async fn upgrade<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut s: S) -> S {
    s.write_all(b"GET /a/ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("101 in time")
            .expect("read");
        assert_eq!(n, 1, "closed before 101: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket\r\n"),
        "{head}"
    );
    s
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: &mut S, msg: &[u8]) {
    s.write_all(msg).await.expect("tunnel write");
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(buf, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_keeps_requests_and_tunnels() {
    let p = Arc::new(start(|_| {}).await);
    let mut tunnel = open_tunnel(p.http).await;
    echo(&mut tunnel, b"before").await;

    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let mut load = Vec::new();
    for worker in 0..4 {
        let (p, failures, done, stop) = (p.clone(), failures.clone(), done.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            // Bounded: at most 2,000 requests per worker, or until the swaps are over.
            for i in 0..2000 {
                if stop.is_cancelled() && i > 10 {
                    break;
                }
                let (host, path, want) = if (i + worker) % 2 == 0 {
                    ("a.test", "/a", "A")
                } else {
                    ("a.test", "/b", "B")
                };
                match c.request(get(p.http, host, path)).await {
                    Ok(r)
                        if r.status() == 200
                            && r.headers().get("x-backend").map(|v| v.as_bytes())
                                == Some(want.as_bytes()) =>
                    {
                        if r.into_body().collect().await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for generation in 1..=100 {
        p.shared.store(p.snapshot(generation));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.cancel();
    for l in load {
        l.await.expect("load worker");
    }
    echo(&mut tunnel, b"after 100 swaps").await;
    assert_eq!(p.shared.load().generation(), 100);
    assert!(
        done.load(Ordering::Relaxed) >= 40,
        "load too small: {}",
        done.load(Ordering::Relaxed)
    );
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let p = start(|_| {}).await;
    // A streamed upload in flight when shutdown starts still completes.
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(1);
    let req = Request::builder()
        .method("POST")
        .uri(format!("http://{}/a/drain", p.http))
        .header("host", "a.test")
        .body(body.boxed())
        .expect("request");
    let c = client();
    let pending = tokio::spawn(async move {
        let resp = c.request(req).await.expect("response");
        resp.into_body().collect().await.expect("body").to_bytes()
    });
    tx.send_data(Bytes::from_static(b"part1-")).await.expect("send");
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.cancel.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tx.send_data(Bytes::from_static(b"part2"))
        .await
        .expect("send after shutdown started");
    drop(tx);
    let got = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("drained")
        .expect("task");
    assert_eq!(&got[..], b"part1-part2");
    // No new connections after shutdown.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(p.http).await.is_err(),
        "listener still open after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_pooled_keep_alive_connections() {
    let p = start(|_| {}).await;
    let (x, x_conns) = start_counting_backend("X").await;
    let (y, y_conns) = start_counting_backend("Y").await;
    let mut s = p.snapshot(1);
    s.set_endpoints(backend("svc-a"), vec![x, y]);
    p.shared.store(s);
    let c = client();
    let mut seen = Vec::new();
    for _ in 0..20 {
        let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
        assert_eq!(resp.status(), 200);
        let name = resp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        seen.push(name.unwrap_or_default());
        resp.into_body().collect().await.expect("body");
    }
    let xs = seen.iter().filter(|n| *n == "X").count();
    assert_eq!(xs, 10, "round-robin expected: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "not alternating: {seen:?}");
    // Sequential requests reuse one pooled connection per endpoint.
    assert_eq!(
        (x_conns.load(Ordering::Relaxed), y_conns.load(Ordering::Relaxed)),
        (1, 1)
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let p = start(|c| c.idle_timeout = Duration::from_secs(1)).await;
    let mut s = TcpStream::connect(p.http).await.expect("connect");
    s.write_all(b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "idle keep-alive connection still open after 5 s");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "the request was answered first"
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_tunnel_over_tls() {
    let p = start(|_| {}).await;
    let mut roots = rustls::RootCertStore::empty();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(p.certs.tls_a_pem.as_bytes()).expect("pem");
    roots.add(der).expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(p.https).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("tls.test").expect("name");
    let tls = connector
        .connect(name, tcp)
        .await
        .expect("TLS handshake with tls.test's certificate");
    let mut tunnel = upgrade(tls).await;
    echo(&mut tunnel, b"over tls").await;
    p.shared.store(p.snapshot(1));
    echo(&mut tunnel, b"after a swap").await;
    p.cancel.cancel();
}
