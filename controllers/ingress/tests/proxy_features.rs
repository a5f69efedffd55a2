//! Component tests of the data plane's observability, limits and upstream options: metrics scraped
//! from the registry, the JSON access log, 413/504/503, Transfer-Encoding probes, h2c (gRPC-style)
//! upstreams with trailers, P2C, the PROXY protocol, an HTTP/2 connection across swaps and the
//! bounded drain. Real clients (curl, hyper, raw TCP) against the proxy on 127.0.0.1.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferrite_ingress::proxy::{
    AccessLogSink, LoadBalance, Proxy, ProxyConfig, SharedSnapshot, Snapshot, proxy_protocol,
    self_signed_default,
};
use ferrite_ingress::{BackendRef, RouteTable, ServicePort};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::networking::v1::Ingress;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const CURL: &str = "/usr/bin/curl";

type TestBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

fn ingress(name: &str, annotations: serde_json::Value, spec: serde_json::Value) -> Ingress {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": "web", "name": name, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "annotations": annotations},
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

/// a.test: /a -> svc-a, /slow -> svc-slow; tls.test (TLS) -> svc-a; g.test -> svc-g over h2c
/// (ferrite annotation); n.test -> svc-g over h2c (ingress-nginx's GRPC annotation).
fn table() -> RouteTable {
    let main = ingress(
        "main",
        json!({}),
        json!({
            "tls": [{"hosts": ["tls.test"]}],
            "rules": [
                {"host": "a.test", "http": {"paths": [path("/a", "svc-a"), path("/slow", "svc-slow")]}},
                {"host": "tls.test", "http": {"paths": [path("/", "svc-a")]}},
            ],
        }),
    );
    let grpc = ingress(
        "grpc",
        json!({"ferrite.dev/backend-protocol": "h2c"}),
        json!({"rules": [{"host": "g.test", "http": {"paths": [path("/", "svc-g")]}}]}),
    );
    let nginx = ingress(
        "nginx-grpc",
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        json!({"rules": [{"host": "n.test", "http": {"paths": [path("/", "svc-g")]}}]}),
    );
    let compiled = RouteTable::compile([&main, &grpc, &nginx]);
    assert!(compiled.warnings.is_empty(), "{:?}", compiled.warnings);
    compiled.table
}

fn boxed(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|n| match n {}).boxed()
}

/// HTTP/1.1 backend: `/slow/head` waits 3 s before its head, `/slow/stall` sends a head and one
/// chunk then nothing for 3 s; POST echoes its body; everything else answers its name, the path
/// and the headers it received.
async fn start_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| answer(name, req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn answer(name: &'static str, req: Request<Incoming>) -> Result<Response<TestBody>, hyper::Error> {
    let path = req.uri().path().to_string();
    if path == "/slow/head" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if path == "/slow/stall" {
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(1);
        tokio::spawn(async move {
            let _ = tx.send_data(Bytes::from_static(b"first")).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = tx.send_data(Bytes::from_static(b"late")).await;
        });
        return Ok(Response::new(body.boxed()));
    }
    if path == "/a/collect" {
        let len = req.into_body().collect().await?.to_bytes().len();
        return Ok(Response::new(boxed(format!("collected {len}"))));
    }
    if req.method() == hyper::Method::POST {
        return Ok(Response::builder()
            .header("x-backend", name)
            .body(req.into_body().boxed())
            .expect("echo"));
    }
    let mut text = format!("backend={name}\npath={path}\nversion={:?}\n", req.version());
    for (k, v) in req.headers() {
        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    Ok(Response::builder()
        .header("x-backend", name)
        .body(boxed(text))
        .expect("answer"))
}

/// An h2c (prior knowledge) backend like a gRPC server: answers with the request's version, its
/// `te` header and the body length, then trailers `grpc-status: 0`.
async fn start_h2c_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind h2c");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let version = format!("{:?}", req.version());
                    let te = req
                        .headers()
                        .get("te")
                        .map(|v| v.to_str().unwrap_or("?").to_string())
                        .unwrap_or_default();
                    let host = req
                        .headers()
                        .get("host")
                        .map(|v| v.to_str().unwrap_or("?").to_string())
                        .unwrap_or_default();
                    let len = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().len())
                        .unwrap_or(0);
                    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(2);
                    tokio::spawn(async move {
                        let text = format!("h2c version={version} te={te} host={host} len={len}\n");
                        let _ = tx.send_data(Bytes::from(text)).await;
                        let mut trailers = hyper::HeaderMap::new();
                        trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                        let _ = tx.send_trailers(trailers).await;
                    });
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .header("content-type", "application/grpc")
                            .body(body)
                            .expect("h2c answer"),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Captured access log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, d: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(d);
        Ok(d.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        let bytes = self.0.lock().expect("lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 log")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Waits (bounded) for a line whose request id is `id`.
    async fn wait_for(&self, id: &str) -> serde_json::Value {
        for _ in 0..100 {
            if let Some(l) = self.lines().into_iter().find(|l| l["request_id"] == id) {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no access log line for {id}: {:?}", self.lines());
    }
}

struct Running {
    http: SocketAddr,
    https: SocketAddr,
    shared: Arc<SharedSnapshot>,
    cancel: CancellationToken,
    registry: prometheus::Registry,
    log: Captured,
    a: SocketAddr,
    g: SocketAddr,
    served: tokio::task::JoinHandle<()>,
}

fn snapshot(a: SocketAddr, g: SocketAddr, generation: u64) -> Snapshot {
    let mut s = Snapshot::new(table(), self_signed_default().expect("cert"));
    s.set_endpoints(backend("svc-a"), vec![a]);
    s.set_endpoints(backend("svc-slow"), vec![a]);
    s.set_endpoints(backend("svc-g"), vec![g]);
    s.set_generation(generation);
    s
}

impl Running {
    fn snapshot(&self, generation: u64) -> Snapshot {
        snapshot(self.a, self.g, generation)
    }

    fn scrape(&self) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &self.registry.gather(), &mut buf)
            .expect("encode");
        String::from_utf8(buf).expect("utf-8")
    }

    /// The value of one series line (`name{labels}`), 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().expect("number"))
    }
}

async fn start(tweak: impl FnOnce(&mut ProxyConfig)) -> Running {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let a = start_backend("A").await;
    let g = start_h2c_backend().await;
    let shared = Arc::new(SharedSnapshot::new(snapshot(a, g, 0)));
    let registry = prometheus::Registry::new();
    let log = Captured::default();
    let mut config = ProxyConfig {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        https_addr: "127.0.0.1:0".parse().expect("addr"),
        registry: Some(registry.clone()),
        access_log: true,
        access_log_to: AccessLogSink::writer(log.clone()),
        ..ProxyConfig::default()
    };
    tweak(&mut config);
    let proxy = Proxy::bind(config, shared.clone()).await.expect("bind proxy");
    let http = proxy.http_addr().expect("addr");
    let https = proxy.https_addr().expect("addr");
    let cancel = CancellationToken::new();
    let served = tokio::spawn(proxy.serve(cancel.clone()));
    Running {
        http,
        https,
        shared,
        cancel,
        registry,
        log,
        a,
        g,
        served,
    }
}

async fn curl(args: &[&str]) -> (u16, String, String) {
    let out = tokio::process::Command::new(CURL)
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("run /usr/bin/curl (apt-get install curl)");
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = t.rsplit_once('\n').unwrap_or(("", &t));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends raw bytes, returns what came back until the proxy closed (or 5 s passed) and whether it
/// closed.
async fn raw(addr: SocketAddr, request: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

fn client() -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

fn get(addr: SocketAddr, host: &str, path: &str) -> Request<TestBody> {
    Request::builder()
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(boxed(Bytes::new()))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_connections_and_handshakes() {
    let p = start(|_| {}).await;
    let base = format!("http://{}", p.http);
    for _ in 0..3 {
        let (code, _, _) = curl(&["-H", "Host: a.test", &format!("{base}/a/x")]).await;
        assert_eq!(code, 200);
    }
    let (code, _, _) = curl(&[
        "-H",
        "Host: a.test",
        "-X",
        "POST",
        "-d",
        "12345",
        &format!("{base}/a/p"),
    ])
    .await;
    assert_eq!(code, 200);
    let (code, _, _) = curl(&["-H", "Host: nowhere.test", &format!("{base}/x")]).await;
    assert_eq!(code, 404);
    let (code, _, _) = curl(&["-H", "Host: tls.test", &format!("{base}/x")]).await;
    assert_eq!(code, 308);
    // TLS: one good handshake (h2), one refused (TLS 1.1 offered), one that never finishes.
    let port = p.https.port();
    let (code, _, err) = curl(&[
        "-k",
        "--http2",
        "--resolve",
        &format!("tls.test:{port}:127.0.0.1"),
        &format!("https://tls.test:{port}/"),
    ])
    .await;
    assert_eq!(code, 200, "{err}");
    let (code, _, _) = curl(&[
        "-k",
        "--tls-max",
        "1.1",
        "--resolve",
        &format!("tls.test:{port}:127.0.0.1"),
        &format!("https://tls.test:{port}/"),
    ])
    .await;
    assert_eq!(code, 0);
    // Open connections: one idle plain connection is counted while open.
    let idle = TcpStream::connect(p.http).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = p.scrape();
    let want = [
        "ferrite_ingress_requests_total{code=\"2xx\",ingress=\"main\",method=\"GET\",namespace=\"web\",service=\"svc-a\"} 4",
        "ferrite_ingress_requests_total{code=\"2xx\",ingress=\"main\",method=\"POST\",namespace=\"web\",service=\"svc-a\"} 1",
        "ferrite_ingress_requests_total{code=\"4xx\",ingress=\"unmatched\",method=\"GET\",namespace=\"\",service=\"unmatched\"} 1",
        "ferrite_ingress_requests_total{code=\"3xx\",ingress=\"main\",method=\"GET\",namespace=\"web\",service=\"redirect\"} 1",
        "ferrite_ingress_request_duration_seconds_count{ingress=\"main\",namespace=\"web\",service=\"svc-a\"} 5",
        "ferrite_ingress_upstream_response_duration_seconds_count{ingress=\"main\",namespace=\"web\",service=\"svc-a\"} 5",
        "ferrite_ingress_request_bytes_total{ingress=\"main\",namespace=\"web\",service=\"svc-a\"} 5",
        "ferrite_ingress_tls_handshakes_total{alpn=\"h2\",version=\"TLSv1.3\"} 1",
        "ferrite_ingress_tls_handshake_errors_total{reason=\"peer_incompatible\"} 1",
        "ferrite_ingress_connections_open{listener=\"http\",protocol=\"pending\"} 1",
        "ferrite_ingress_connections_total{listener=\"https\"} 2",
        "ferrite_ingress_requests_in_flight 0",
    ];
    for w in want {
        assert!(text.contains(w), "missing {w}\n{text}");
    }
    // Requests from a Host header never become label values.
    assert!(!text.contains("nowhere.test"), "{text}");
    assert!(
        p.metric(
            "ferrite_ingress_response_bytes_total{ingress=\"main\",namespace=\"web\",service=\"svc-a\"}"
        ) > 100.0
    );
    drop(idle);
    // The generation, read at scrape time.
    for g in 1..=3 {
        p.shared.store(p.snapshot(g));
    }
    assert_eq!(p.shared.swaps(), 3);
    assert_eq!(p.metric("ferrite_ingress_snapshot_generation"), 3.0);
    // Series of an Ingress that left the route table go at the next scrape; fixed words stay.
    let main_series = "ferrite_ingress_requests_total{code=\"2xx\",ingress=\"main\",method=\"GET\",namespace=\"web\",service=\"svc-a\"}";
    assert_eq!(p.metric(main_series), 4.0);
    let mut without_main = Snapshot::new(RouteTable::empty(), self_signed_default().expect("cert"));
    without_main.set_generation(4);
    p.shared.store(without_main);
    let _ = p.scrape();
    let text = p.scrape();
    assert!(!text.contains("ingress=\"main\""), "{text}");
    assert!(text.contains("ingress=\"unmatched\""), "{text}");
    p.shared.store(p.snapshot(5));
    // The idle connection is gone from the gauge once closed.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        p.metric("ferrite_ingress_connections_open{listener=\"http\",protocol=\"pending\"}"),
        0.0
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_has_one_json_line_per_request() {
    let p = start(|_| {}).await;
    // A target with braces and escapes, sent raw so nothing normalizes it; the user agent with
    // quotes (hyper refuses `"` and `\` in a request target with 400).
    let (r, _) = raw(
        p.http,
        b"GET /a/q{x}y%2F?z=1&w=%222 HTTP/1.1\r\nHost: a.test\r\nUser-Agent: probe/1 \"x\"\r\nX-Request-Id: log-1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let line = p.log.wait_for("log-1").await;
    assert_eq!(line["path"], "/a/q{x}y%2F?z=1&w=%222", "{line}");
    assert_eq!(line["host"], "a.test");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["remote_addr"], "127.0.0.1");
    assert_eq!(line["upstream_addr"], p.a.to_string());
    assert_eq!(line["namespace"], "web");
    assert_eq!(line["ingress"], "main");
    assert_eq!(line["service"], "svc-a");
    assert_eq!(line["user_agent"], "probe/1 \"x\"");
    assert_eq!(line["bytes_in"], 0);
    assert!(line["bytes_out"].as_u64().expect("bytes_out") > 50, "{line}");
    assert!(
        line["request_duration"].as_f64().expect("duration")
            >= line["upstream_duration"].as_f64().expect("up")
    );
    let time = line["time"].as_str().expect("time");
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "{time}"
    );

    // A POST over HTTP/2 and a 404: bytes in, protocol, no upstream.
    let (code, _, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: a.test",
        "-H",
        "X-Request-Id: log-2",
        "-d",
        "0123456789",
        &format!("http://{}/a/post", p.http),
    ])
    .await;
    assert_eq!(code, 200);
    let line = p.log.wait_for("log-2").await;
    assert_eq!(
        (line["protocol"].as_str(), line["bytes_in"].as_u64()),
        (Some("HTTP/2.0"), Some(10))
    );
    assert_eq!(line["bytes_out"], 10);
    let (code, _, _) = curl(&[
        "-H",
        "Host: x.test",
        "-H",
        "X-Request-Id: log-3",
        &format!("http://{}/", p.http),
    ])
    .await;
    assert_eq!(code, 404);
    let line = p.log.wait_for("log-3").await;
    assert_eq!(line["upstream_addr"], serde_json::Value::Null);
    assert_eq!(line["ingress"], "unmatched");
    assert_eq!(p.metric("ferrite_ingress_access_log_dropped_total"), 0.0);
    p.cancel.cancel();

    // access_log: false writes nothing.
    let q = start(|c| c.access_log = false).await;
    let (code, _, _) = curl(&["-H", "Host: a.test", &format!("http://{}/a", q.http)]).await;
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(q.log.lines().is_empty());
    q.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_upstream_timeout_and_overload() {
    let p = start(|c| {
        c.max_body_bytes = Some(1000);
        c.upstream_response_timeout = Duration::from_secs(1);
        c.max_in_flight = 2;
    })
    .await;
    let base = format!("http://{}", p.http);
    // By Content-Length: refused before the body is read, the connection closed.
    let (r, closed) = raw(
        p.http,
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1001\r\n\r\nxxxx",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 413"), "{r}");
    assert!(closed, "connection left open after 413");
    // Exactly the limit passes.
    let body = "y".repeat(1000);
    let (code, echoed, _) = curl(&["-H", "Host: a.test", "-d", &body, &format!("{base}/a")]).await;
    assert_eq!((code, echoed.len()), (200, 1000));
    // Streamed (chunked, no length) to a backend that reads the whole body before answering:
    // counted while it streams, 413 once past the limit.
    let (code, _, _) = curl(&[
        "-H",
        "Host: a.test",
        "-H",
        "Transfer-Encoding: chunked",
        "-d",
        &"z".repeat(5000),
        &format!("{base}/a/collect"),
    ])
    .await;
    assert_eq!(code, 413, "streamed body over the limit");
    // HTTP/2: by content-length, and streamed without one.
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri("http://a.test/a/collect")
        .header("content-length", "5000")
        .body(boxed("z".repeat(5000)))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 413);
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
    tokio::spawn(async move {
        for _ in 0..5 {
            if tx.send_data(Bytes::from(vec![b'z'; 400])).await.is_err() {
                return;
            }
        }
    });
    let req = Request::builder()
        .method("POST")
        .uri("http://a.test/a/collect")
        .body(body.boxed())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 413);
    // Under the limit, streamed: passes.
    let req = Request::builder()
        .method("POST")
        .uri("http://a.test/a/collect")
        .body(boxed("z".repeat(999)))
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let got = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(&got[..], b"collected 999");

    // No response head within upstream_response_timeout: 504, after about that time.
    let started = Instant::now();
    let (code, _, _) = curl(&["-H", "Host: a.test", &format!("{base}/slow/head")]).await;
    assert_eq!(code, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    // A body that stalls: the response is cut (curl reports a transfer error), never completed.
    let out = tokio::process::Command::new(CURL)
        .args([
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Host: a.test",
            &format!("{base}/slow/stall"),
        ])
        .output()
        .await
        .expect("curl");
    assert!(!out.status.success(), "stalled body completed: {:?}", out);
    assert_eq!(&out.stdout[..], b"first");
    // The same over HTTP/2: the stream is reset, the body ends in an error.
    let req = Request::builder()
        .uri("http://a.test/slow/stall")
        .body(boxed(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("response head");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.into_body().collect().await.is_err(),
        "stalled HTTP/2 body completed"
    );
    assert!(
        p.metric("ferrite_ingress_upstream_timeouts_total{namespace=\"web\",service=\"svc-slow\"}") >= 2.0
    );

    // Overload: two slow requests in flight, the third is answered 503 at once with Retry-After.
    let c = client();
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let c = c.clone();
            let req = get(p.http, "a.test", "/slow/head");
            tokio::spawn(async move { c.request(req).await.map(|r| r.status()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    for s in slow {
        assert_eq!(s.await.expect("task").expect("slow"), StatusCode::GATEWAY_TIMEOUT);
    }
    // Capacity is back once they are done.
    let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(p.metric("ferrite_ingress_overload_rejected_total"), 1.0);
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_probes_are_refused_and_closed() {
    let p = start(|_| {}).await;
    let probes: [&[u8]; 8] = [
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /a HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"POST /a HTTP/1.1\r\nHost: a.test\r\nContent-Length: +5\r\n\r\nhello",
    ];
    for probe in probes {
        let (r, closed) = raw(p.http, probe).await;
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "{}: {r}",
            String::from_utf8_lossy(probe)
        );
        assert!(closed, "connection kept after {}", String::from_utf8_lossy(probe));
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{r}");
    }
    // Refused below the request path (the framing checks, or hyper itself): counted as
    // downstream parse errors, never as requests.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        p.metric("ferrite_ingress_downstream_errors_total{listener=\"http\",reason=\"parse\"}")
            >= probes.len() as f64,
        "{}",
        p.scrape()
    );
    assert!(
        !p.scrape().contains("ferrite_ingress_requests_total{"),
        "{}",
        p.scrape()
    );
    // Chunk-size tricks (an oversized chunk size, a chunk extension with a bare LF, no CRLF after
    // the data): the body fails where it goes wrong, the request is answered 400 and the
    // connection closed; what follows is never read as a request. The backend (/a/collect) reads
    // the whole body before it answers, as nginx's request buffering does: one that answered first
    // would race the body's failure (its 200 may already be on the way).
    for probe in [
        &b"POST /a/collect HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nx\r\n0\r\n\r\n"[..],
        b"POST /a/collect HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
        b"POST /a/collect HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloGET /b HTTP/1.1\r\nHost: a.test\r\n\r\n",
    ] {
        let (r, closed) = raw(p.http, probe).await;
        let what = String::from_utf8_lossy(probe);
        assert!(r.starts_with("HTTP/1.1 400"), "{what}: {r}");
        assert!(closed, "connection kept after {what}");
        assert_eq!(r.matches("HTTP/1.1").count(), 1, "{r}");
    }
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_by_annotation_with_trailers() {
    let p = start(|_| {}).await;
    // HTTP/2 downstream (h2c prior knowledge) to an h2c upstream: trailers come through.
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for host in ["g.test", "n.test"] {
        let req = Request::builder()
            .method("POST")
            .uri(format!("http://{host}/pkg.Service/Method"))
            .header("te", "trailers")
            .header("content-type", "application/grpc")
            .body(boxed(Bytes::from_static(b"\0\0\0\0\x05hello")))
            .expect("request");
        let resp = send.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200, "{host}");
        assert_eq!(
            resp.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        let collected = resp.into_body().collect().await.expect("body");
        let trailers = collected.trailers().cloned().expect("trailers passed through");
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"0"[..]));
        let text = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
        assert_eq!(
            text,
            format!("h2c version=HTTP/2.0 te=trailers host={host} len=10\n")
        );
    }
    // HTTP/1.1 downstream to the same h2c upstream.
    let (code, body, _) = curl(&["--http1.1", "-H", "Host: g.test", &format!("http://{}/x", p.http)]).await;
    assert_eq!(code, 200);
    assert_eq!(body, "h2c version=HTTP/2.0 te= host=g.test len=0\n");
    // Plain Ingresses still use HTTP/1.1.
    let (code, body, _) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: a.test",
        &format!("http://{}/a", p.http),
    ])
    .await;
    assert_eq!(code, 200);
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    p.cancel.cancel();
}

#[test]
fn backend_protocol_annotations() {
    use ferrite_ingress::routes::BackendProtocol;
    use ferrite_ingress::{Match, WarningKind};
    let spec = |host: &str| json!({"rules": [{"host": host, "http": {"paths": [path("/", "svc")]}}]});
    let both = ingress(
        "both",
        json!({"ferrite.dev/backend-protocol": "http", "nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}),
        spec("both.test"),
    );
    let upper = ingress(
        "upper",
        json!({"ferrite.dev/backend-protocol": "H2C"}),
        spec("upper.test"),
    );
    let h2c = ingress(
        "h2c",
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "h2c"}),
        spec("h2c.test"),
    );
    let https = ingress(
        "https",
        json!({"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}),
        spec("https.test"),
    );
    let bad = ingress(
        "bad",
        json!({"ferrite.dev/backend-protocol": "grpc"}),
        spec("bad.test"),
    );
    let plain = ingress("plain", json!({}), spec("plain.test"));
    let compiled = RouteTable::compile([&both, &upper, &h2c, &https, &bad, &plain]);
    let protocol = |host: &str| match compiled.table.route(host, "/") {
        Match::Route(r) => r.protocol,
        other => panic!("{host}: {other:?}"),
    };
    // The ferrite annotation wins over ingress-nginx's.
    assert_eq!(protocol("both.test"), BackendProtocol::Http1);
    assert_eq!(protocol("upper.test"), BackendProtocol::H2c);
    assert_eq!(protocol("h2c.test"), BackendProtocol::H2c);
    assert_eq!(protocol("plain.test"), BackendProtocol::Http1);
    // Unsupported values: a warning on that Ingress, its backends keep HTTP/1.1 and keep routing.
    assert_eq!(protocol("https.test"), BackendProtocol::Http1);
    assert_eq!(protocol("bad.test"), BackendProtocol::Http1);
    let warned: Vec<(&str, WarningKind)> = compiled
        .warnings
        .iter()
        .map(|w| (w.ingress.name.as_str(), w.kind))
        .collect();
    assert_eq!(
        warned,
        [
            ("bad", WarningKind::InvalidBackend),
            ("https", WarningKind::InvalidBackend)
        ],
        "oldest first, then by namespace/name"
    );
    assert!(
        compiled.warnings[1].message.contains("TLS to backends is not"),
        "{:?}",
        compiled.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_balances_over_endpoints() {
    let p = start(|c| c.load_balance = LoadBalance::P2c).await;
    let x = start_backend("X").await;
    let y = start_backend("Y").await;
    let mut s = p.snapshot(1);
    s.set_endpoints(backend("svc-a"), vec![x, y]);
    p.shared.store(s);
    let c = client();
    let mut seen = std::collections::HashMap::new();
    for _ in 0..40 {
        let resp = c.request(get(p.http, "a.test", "/a")).await.expect("request");
        assert_eq!(resp.status(), 200);
        let name = resp
            .headers()
            .get("x-backend")
            .map(|v| v.to_str().unwrap_or("?").to_string());
        *seen.entry(name.unwrap_or_default()).or_insert(0) += 1;
        resp.into_body().collect().await.expect("body");
    }
    assert_eq!(seen.len(), 2, "both endpoints used: {seen:?}");
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_sets_the_client_address() {
    let p = start(|c| {
        c.proxy_protocol = true;
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // v1 on the plain listener.
    let (r, _) = raw(
        p.http,
        b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nGET /a HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: pp-1\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.contains("x-forwarded-for: 203.0.113.7\n"), "{r}");
    assert!(r.contains("forwarded: for=203.0.113.7;"), "{r}");
    assert!(
        r.contains("x-forwarded-port: 80\n"),
        "the header's destination port: {r}"
    );
    assert_eq!(p.log.wait_for("pp-1").await["remote_addr"], "203.0.113.7");
    // v2 (IPv6) then TLS on the TLS listener.
    let mut tcp = TcpStream::connect(p.https).await.expect("connect");
    let header = proxy_protocol::encode_v2(
        "[2001:db8::7]:40001".parse().expect("addr"),
        "[2001:db8::1]:443".parse().expect("addr"),
    );
    tcp.write_all(&header).await.expect("header");
    let config = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("tls.test").expect("name"),
            tcp,
        )
        .await
        .expect("TLS after the PROXY header");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::builder()
                .uri("/")
                .header("host", "tls.test")
                .body(boxed(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("response");
    let body =
        String::from_utf8_lossy(&resp.into_body().collect().await.expect("body").to_bytes()).into_owned();
    assert!(body.contains("x-forwarded-for: 2001:db8::7\n"), "{body}");
    assert!(
        body.contains("forwarded: for=\"[2001:db8::7]\";proto=https"),
        "{body}"
    );
    assert!(
        body.contains("x-forwarded-port: 443\n"),
        "the header's destination port: {body}"
    );
    // No header: closed without an answer; a garbage header too; nothing at all: closed after the
    // header read timeout.
    let (r, closed) = raw(p.http, b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(r.is_empty() && closed, "{r}");
    let (r, closed) = raw(
        p.http,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\nGET / HTTP/1.1\r\n\r\n",
    )
    .await;
    assert!(r.is_empty() && closed, "{r}");
    let started = Instant::now();
    let (r, closed) = raw(p.http, b"").await;
    assert!(r.is_empty() && closed && started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        p.metric("ferrite_ingress_proxy_protocol_errors_total{listener=\"http\"}"),
        2.0
    );
    p.cancel.cancel();
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_http2_connection_survives_100_swaps() {
    let p = start(|_| {}).await;
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    for generation in 1..=100u64 {
        p.shared.store(p.snapshot(generation));
        // Two streams at once on the same connection after every swap.
        let reqs = ["/a/one", "/a/two"].map(|path| {
            Request::builder()
                .uri(format!("http://a.test{path}"))
                .body(boxed(Bytes::new()))
                .expect("request")
        });
        let [r1, r2] = reqs;
        let (a, b) = tokio::join!(send.send_request(r1), send.send_request(r2));
        for r in [a, b] {
            let r = r.expect("response on the same connection");
            assert_eq!(r.status(), 200, "generation {generation}");
            r.into_body().collect().await.expect("body");
        }
    }
    assert_eq!(
        p.metric("ferrite_ingress_connections_total{listener=\"http\"}"),
        1.0
    );
    assert_eq!(
        p.metric("ferrite_ingress_requests_total{code=\"2xx\",ingress=\"main\",method=\"GET\",namespace=\"web\",service=\"svc-a\"}"),
        200.0
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_bounded_by_drain_timeout() {
    let p = start(|c| {
        c.drain_timeout = Duration::from_secs(1);
        c.upstream_response_timeout = Duration::ZERO;
    })
    .await;
    // A request whose upstream answers after 3 s is still in flight at shutdown; the drain gives
    // up after 1 s and serve returns.
    let c = client();
    let pending = tokio::spawn(async move { c.request(get(p.http, "a.test", "/slow/head")).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    p.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), p.served)
        .await
        .expect("serve returned")
        .expect("serve task");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "drain took {took:?}"
    );
    let _ = pending.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_header_is_closed_and_counted() {
    let p = start(|c| c.header_read_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let (r, closed) = raw(p.http, b"GET /a HTTP/1.1\r\nHost: a.test\r\nX-Slow: 1\r\n").await;
    assert!(closed, "slow client still connected: {r}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        p.metric("ferrite_ingress_downstream_errors_total{listener=\"http\",reason=\"timeout\"}"),
        1.0,
        "{}",
        p.scrape()
    );
    // A TLS client that never sends its ClientHello: closed and counted as a handshake timeout.
    let (_, closed) = raw(p.https, b"").await;
    assert!(closed);
    assert_eq!(
        p.metric("ferrite_ingress_tls_handshake_errors_total{reason=\"timeout\"}"),
        1.0
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_gone_before_the_response_is_logged_as_499() {
    let p = start(|_| {}).await;
    let mut s = TcpStream::connect(p.http).await.expect("connect");
    s.write_all(b"GET /slow/head HTTP/1.1\r\nHost: a.test\r\nX-Request-Id: gone-1\r\n\r\n")
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);
    let line = p.log.wait_for("gone-1").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["upstream_addr"], p.a.to_string());
    assert_eq!(line["service"], "svc-slow");
    assert_eq!(
        p.metric("ferrite_ingress_requests_total{code=\"4xx\",ingress=\"main\",method=\"GET\",namespace=\"web\",service=\"svc-slow\"}"),
        1.0
    );
    assert_eq!(p.metric("ferrite_ingress_requests_in_flight"), 0.0);
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_under_load_fail_no_request() {
    let p = Arc::new(start(|c| c.load_balance = LoadBalance::P2c).await);
    let x = start_backend("X").await;
    let y = start_backend("Y").await;
    let sets = [vec![x], vec![x, y], vec![y], vec![y, x]];
    let stop = CancellationToken::new();
    let mut load = Vec::new();
    // Three HTTP/1.1 workers over pooled connections and one HTTP/2 connection; bounded counts.
    for worker in 0..4usize {
        let (p, stop) = (p.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut h2 = if worker == 3 {
                let tcp = TcpStream::connect(p.http).await.expect("connect");
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .expect("h2");
                tokio::spawn(conn);
                Some(send)
            } else {
                None
            };
            let c = client();
            for i in 0..3000 {
                if stop.is_cancelled() && i > 20 {
                    break;
                }
                let resp = match h2.as_mut() {
                    Some(send) => {
                        let req = Request::builder()
                            .uri("http://a.test/a/h2")
                            .body(boxed(Bytes::new()))
                            .expect("request");
                        send.send_request(req).await.map_err(|e| e.to_string())
                    }
                    None => c
                        .request(get(p.http, "a.test", "/a/h1"))
                        .await
                        .map_err(|e| e.to_string()),
                };
                match resp {
                    Ok(r) if r.status() == 200 => match r.into_body().collect().await {
                        Ok(_) => ok += 1,
                        Err(e) => failed.push(format!("body: {e}")),
                    },
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    for generation in 1..=150u64 {
        let mut s = p.snapshot(generation);
        s.set_endpoints(backend("svc-a"), sets[generation as usize % sets.len()].clone());
        p.shared.store(s);
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    stop.cancel();
    let mut total = 0;
    for l in load {
        let (ok, failed) = l.await.expect("worker");
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total >= 100, "load too small: {total}");
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_over_tls_negotiates_alpn_http_1_0() {
    let p = start(|_| {}).await;
    let port = p.https.port();
    // curl --http1.0 offers only `http/1.0` in ALPN: without it in the server's list, rustls
    // refuses the handshake (no_application_protocol, curl exit 35).
    let (code, body, err) = curl(&[
        "-k",
        "-v",
        "--http1.0",
        "--resolve",
        &format!("tls.test:{port}:127.0.0.1"),
        &format!("https://tls.test:{port}/x"),
    ])
    .await;
    assert_eq!(code, 200, "{err}");
    assert!(body.contains("backend=A"), "{body}");
    assert!(err.contains("ALPN: offers http/1.0"), "{err}");
    assert!(err.contains("< HTTP/1.0 200"), "{err}");
    // The other protocols are still negotiated as before.
    for (flag, want) in [
        ("--http1.1", "ALPN: server accepted http/1.1"),
        ("--http2", "ALPN: server accepted h2"),
    ] {
        let (code, _, err) = curl(&[
            "-k",
            "-v",
            flag,
            "--resolve",
            &format!("tls.test:{port}:127.0.0.1"),
            &format!("https://tls.test:{port}/x"),
        ])
        .await;
        assert_eq!(code, 200, "{flag}: {err}");
        assert!(err.contains(want), "{flag}: {err}");
    }
    for alpn in ["http/1.0", "http/1.1", "h2"] {
        assert_eq!(
            p.metric(&format!(
                "ferrite_ingress_tls_handshakes_total{{alpn=\"{alpn}\",version=\"TLSv1.3\"}}"
            )),
            1.0,
            "{}",
            p.scrape()
        );
    }
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_forwarding_headers_are_overwritten_and_proxy_removed() {
    let p = start(|_| {}).await;
    let base = format!("http://{}", p.http);
    let spoofed = [
        "-H",
        "Host: a.test",
        "-H",
        "X-Real-IP: 6.6.6.6",
        "-H",
        "X-Scheme: https",
        "-H",
        "X-Forwarded-Scheme: https",
        "-H",
        "Proxy: http://evil.test:3128",
        "-H",
        "X-Forwarded-For: 1.2.3.4",
        "-H",
        "X-Forwarded-For: 5.6.7.8",
        "-H",
        "X-Forwarded-Host: evil.test",
        "-H",
        "X-Original-Forwarded-For: 9.9.9.9",
    ];
    let (code, body, err) = curl(&[&spoofed[..], &[&format!("{base}/a/h")]].concat()).await;
    assert_eq!(code, 200, "{err}");
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "x-real-ip: 127.0.0.1",
        "x-forwarded-for: 127.0.0.1",
        "x-scheme: http",
        "x-forwarded-scheme: http",
        "x-forwarded-proto: http",
        "x-forwarded-host: a.test",
        // The client's own values, as ingress-nginx passes them on.
        "x-original-forwarded-for: 1.2.3.4, 5.6.7.8",
        "x-original-forwarded-host: evil.test",
    ] {
        assert!(lines.contains(&want), "missing {want:?}:\n{body}");
    }
    for gone in [
        "proxy:",
        "x-real-ip: 6.6.6.6",
        "x-original-forwarded-for: 9.9.9.9",
    ] {
        assert!(
            !lines.iter().any(|l| l.starts_with(gone)),
            "{gone:?} passed:\n{body}"
        );
    }
    // Without X-Forwarded-* from the client, a client's X-Original-* is not passed either.
    let (code, body, _) = curl(&[
        "-H",
        "Host: a.test",
        "-H",
        "X-Original-Forwarded-For: 9.9.9.9",
        "-H",
        "X-Original-Forwarded-Host: evil.test",
        &format!("{base}/a/h"),
    ])
    .await;
    assert_eq!(code, 200);
    assert!(!body.contains("x-original-forwarded"), "{body}");
    // Over TLS the scheme headers say https.
    let port = p.https.port();
    let (code, body, err) = curl(&[
        "-k",
        "-H",
        "X-Scheme: http",
        "--resolve",
        &format!("tls.test:{port}:127.0.0.1"),
        &format!("https://tls.test:{port}/x"),
    ])
    .await;
    assert_eq!(code, 200, "{err}");
    let lines: Vec<&str> = body.lines().collect();
    for want in [
        "x-scheme: https",
        "x-forwarded-scheme: https",
        "x-real-ip: 127.0.0.1",
    ] {
        assert!(lines.contains(&want), "missing {want:?}:\n{body}");
    }
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_is_504_and_refused_is_502() {
    let p = start(|c| c.upstream_connect_timeout = Duration::from_millis(300)).await;
    // A listener that never accepts, its accept queue (backlog 0: one connection) full: further
    // SYNs are dropped, so a connect hangs until the timeout.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let blackhole = socket.listen(0).expect("listen");
    let hole = blackhole.local_addr().expect("addr");
    let _filler = std::net::TcpStream::connect(hole).expect("fill the accept queue");
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let base = format!("http://{}", p.http);
    let timeouts = "ferrite_ingress_upstream_timeouts_total{namespace=\"web\",service=\"svc-a\"}";
    for (generation, endpoint, want) in [(1, hole, 504), (2, refused, 502)] {
        let mut s = p.snapshot(generation);
        s.set_endpoints(backend("svc-a"), vec![endpoint]);
        p.shared.store(s);
        let started = Instant::now();
        let (code, body, err) = curl(&["-H", "Host: a.test", &format!("{base}/a/x")]).await;
        assert_eq!(code, want, "{endpoint}: {body} {err}");
        if want == 504 {
            assert!(body.contains("did not accept the connection in time"), "{body}");
            assert!(started.elapsed() >= Duration::from_millis(300));
        }
    }
    assert_eq!(p.metric(timeouts), 1.0, "{}", p.scrape());
    // h2c backends too.
    let mut s = p.snapshot(3);
    s.set_endpoints(backend("svc-g"), vec![hole]);
    p.shared.store(s);
    let (code, _, err) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Host: g.test",
        &format!("{base}/x"),
    ])
    .await;
    assert_eq!(code, 504, "{err}");
    drop(blackhole);
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_1_without_host_two_hosts_or_an_invalid_host_is_400_and_closed() {
    let p = start(|_| {}).await;
    let refused: [&[u8]; 9] = [
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET http://a.test/a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test\r\nHost: tls.test\r\n\r\n",
        b"GET /a HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test/evil\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a..test\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a.test:8o\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost:\r\n\r\n",
    ];
    for probe in refused {
        let what = String::from_utf8_lossy(probe);
        let (r, closed) = raw(p.http, probe).await;
        assert!(r.starts_with("HTTP/1."), "{what}: {r}");
        assert!(r.contains(" 400 "), "{what}: {r}");
        assert!(closed, "connection kept after {what}");
        assert!(!r.contains("backend="), "{what} reached a backend: {r}");
    }
    let accepted: [(&[u8], &str); 5] = [
        (b"GET /a HTTP/1.1\r\nHost: a.test\r\n\r\n", "HTTP/1.1 200"),
        (b"GET /a HTTP/1.1\r\nHost: A.Test.:80\r\n\r\n", "HTTP/1.1 200"),
        (
            b"GET http://a.test/a HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "HTTP/1.1 200",
        ),
        (b"GET /a HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "HTTP/1.1 404"),
        // HTTP/1.0 needs no Host (no rule without a host here: the built-in 404).
        (b"GET /a HTTP/1.0\r\n\r\n", "HTTP/1.0 404"),
    ];
    for (probe, want) in accepted {
        let what = String::from_utf8_lossy(probe);
        let mut request = probe.to_vec();
        // Close after the answer so `raw` returns at once.
        if request.starts_with(b"GET /a HTTP/1.1") || request.starts_with(b"GET http") {
            let at = request.len() - 2;
            request.splice(at..at, b"Connection: close\r\n".iter().copied());
        }
        let (r, _) = raw(p.http, &request).await;
        assert!(r.starts_with(want), "{what}: {r}");
    }
    // HTTP/2 carries :authority, not a Host line: unaffected.
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2");
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://a.test/a/h2")
        .body(boxed(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        p.metric("ferrite_ingress_requests_total{code=\"4xx\",ingress=\"invalid\",method=\"GET\",namespace=\"\",service=\"invalid\"}"),
        refused.len() as f64,
        "{}",
        p.scrape()
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_is_not_an_upstream_timeout_and_a_stalled_one_is_408() {
    let p = start(|c| {
        c.upstream_response_timeout = Duration::from_secs(1);
        c.client_body_timeout = Duration::from_millis(1500);
    })
    .await;
    // Three chunks 700 ms apart (2.1 s of upload, longer than the 1 s response timeout): the
    // backend reads the whole body, then answers. nginx's proxy_read_timeout starts once the
    // request is sent; the upload itself is bounded by the client body timeout between pieces.
    let mut s = TcpStream::connect(p.http).await.expect("connect");
    s.write_all(b"POST /a/collect HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        s.write_all(b"5\r\nhello\r\n").await.expect("chunk");
    }
    s.write_all(b"0\r\n\r\n").await.expect("end");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered")
        .expect("read");
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("collected 15"), "{out}");

    // The upstream still gets its timeout once the body is sent: /slow/head waits 3 s.
    let started = Instant::now();
    let (code, _, _) = curl(&[
        "-H",
        "Host: a.test",
        "-d",
        "x=1",
        &format!("http://{}/slow/head", p.http),
    ])
    .await;
    assert_eq!(code, 504);
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );

    // A client that stops sending its body: 408 after the client body timeout, connection closed.
    let started = Instant::now();
    let (r, closed) = raw(
        p.http,
        b"POST /a/collect HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(closed);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(4),
        "{took:?}"
    );
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_port_is_the_public_port() {
    // The chart's pods listen on 8080/8443 behind Service ports 80/443: backends must see the port
    // the client reached (ingress-nginx's $pass_port), not the container's.
    let p = start(|c| {
        c.public_http_port = Some(80);
        c.public_https_port = Some(443);
    })
    .await;
    let (code, body, _) = curl(&["-H", "Host: a.test", &format!("http://{}/a/x", p.http)]).await;
    assert_eq!(code, 200);
    assert!(body.lines().any(|l| l == "x-forwarded-port: 80"), "{body}");
    let port = p.https.port();
    let (code, body, err) = curl(&[
        "-k",
        "--resolve",
        &format!("tls.test:{port}:127.0.0.1"),
        &format!("https://tls.test:{port}/x"),
    ])
    .await;
    assert_eq!(code, 200, "{err}");
    assert!(body.lines().any(|l| l == "x-forwarded-port: 443"), "{body}");
    p.cancel.cancel();
    // Unset: the listener's own port.
    let p = start(|_| {}).await;
    let (_, body, _) = curl(&["-H", "Host: a.test", &format!("http://{}/a/x", p.http)]).await;
    let want = format!("x-forwarded-port: {}", p.http.port());
    assert!(body.lines().any(|l| l == want), "{body}");
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_cookie_fields_are_joined_for_an_http1_upstream() {
    let p = start(|_| {}).await;
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .expect("h2");
    tokio::spawn(conn);
    // Browsers send every cookie as its own HPACK field (RFC 9113 section 8.2.3).
    let req = Request::builder()
        .uri("http://a.test/a/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(boxed(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let body = String::from_utf8_lossy(&body);
    let cookies: Vec<&str> = body.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(cookies, vec!["cookie: a=1; b=2; c=3"], "{body}");
    // One field stays as it is; HTTP/1.1 clients' lines are not touched either.
    let req = Request::builder()
        .uri("http://a.test/a/cookies")
        .header("cookie", "only=1")
        .body(boxed(Bytes::new()))
        .expect("request");
    let resp = send.send_request(req).await.expect("h2 request");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("cookie: only=1\n"));
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_connection_outlives_ten_seconds_with_the_defaults() {
    // hyper (1.6+) times the next request head from the moment a keep-alive connection goes idle:
    // with the old 10 s header read timeout, every idle HTTP/1.1 connection closed at 10 s instead
    // of the 60 s idle timeout. The default is nginx's 60 s client_header_timeout now.
    assert_eq!(
        ProxyConfig::default().header_read_timeout,
        Duration::from_secs(60)
    );
    let p = start(|_| {}).await;
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http1");
    let driver = tokio::spawn(conn);
    for i in 0..2 {
        if i > 0 {
            tokio::time::sleep(Duration::from_secs(11)).await;
        }
        let req = Request::builder()
            .uri("/a/idle")
            .header("host", "a.test")
            .body(boxed(Bytes::new()))
            .expect("request");
        let resp = send
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK);
        resp.into_body().collect().await.expect("body");
    }
    assert!(!driver.is_finished(), "the connection is still open");
    assert_eq!(
        p.metric("ferrite_ingress_downstream_errors_total{listener=\"http\",reason=\"timeout\"}"),
        0.0
    );
    p.cancel.cancel();
    // What the old default did, scaled down: a header read timeout below the idle timeout closes
    // an idle HTTP/1.1 connection at the header read timeout (documented: min of both).
    let p = start(|c| {
        c.header_read_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(5);
    })
    .await;
    let tcp = TcpStream::connect(p.http).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("http1");
    let driver = tokio::spawn(conn);
    let req = || {
        Request::builder()
            .uri("/a/idle")
            .header("host", "a.test")
            .body(boxed(Bytes::new()))
            .expect("request")
    };
    let resp = send.send_request(req()).await.expect("first request");
    resp.into_body().collect().await.expect("body");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        driver.is_finished(),
        "closed by the header read timeout, not the idle timeout"
    );
    assert!(send.send_request(req()).await.is_err());
    p.cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_retried_after_a_connect_failure() {
    let p = start(|_| {}).await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut s = p.snapshot(1);
    s.set_endpoints(backend("svc-a"), vec![refused, p.a]);
    p.shared.store(s);
    // Whichever endpoint round-robin starts with, every request with a body reaches the backend:
    // nothing was sent to the refusing one (nginx passes it on whatever the method).
    for (i, method) in ["POST", "PUT", "POST", "PATCH"].into_iter().enumerate() {
        let (code, body, err) = curl(&[
            "-X",
            method,
            "-H",
            "Host: a.test",
            "--data-binary",
            &format!("payload-{i}"),
            &format!("http://{}/a/up", p.http),
        ])
        .await;
        assert_eq!(code, 200, "{method}: {body} {err}");
        if method == "POST" {
            assert_eq!(body, format!("payload-{i}"), "the body arrived whole");
        }
    }
    assert!(
        p.metric("ferrite_ingress_upstream_retries_total{namespace=\"web\",service=\"svc-a\"}") >= 1.0,
        "{}",
        p.scrape()
    );
    p.cancel.cancel();
}
