//! Box tests of `ferrite-ingress controller`: the built binary, run as the chart's ServiceAccount
//! (subchart `ingress`'s RBAC), against the box's kube-apiserver (1.20: EndpointSlice v1beta1, created
//! here since the box has no kube-controller-manager). Backends are small HTTP servers on 127.0.0.1;
//! requests go through the proxy with a real client, certificates are checked with openssl.
//!
//! One box per test binary. The tests run one at a time (a lock): every controller serves every Ingress
//! of the `ferrite` class, so two at once would write each other's status.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrite_e2e::{KubeBox, Supervised};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER_NS: &str = "ferrite-system";
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn setup(prefix: &str) -> (&'static KubeBox, Client, String, PathBuf) {
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace(prefix).await;
    let account = ferrite_e2e::chart::service_account(kb, "ingress", CLUSTER_NS, "ferrite-ingress", &[])
        .await
        .unwrap_or_else(|e| panic!("ingress chart's ServiceAccount: {e:#}"));
    // The chart's IngressClass (templates/ingressclass.yaml), not default.
    let classes: Api<IngressClass> = Api::all(client.clone());
    let class: IngressClass = serde_json::from_value(json!({
        "metadata": {"name": "ferrite"}, "spec": {"controller": "ferrite.dev/ingress"}
    }))
    .unwrap();
    match classes.create(&PostParams::default(), &class).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("IngressClass: {e}"),
    }
    (kb, client, ns, account)
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", ferrite_e2e::process::free_port().unwrap())
        .parse()
        .unwrap()
}

fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name)
}

struct Controller {
    proc: Supervised,
    admin: SocketAddr,
    http: SocketAddr,
    https: SocketAddr,
}

fn controller_args(
    kubeconfig: &Path,
    lease: &str,
    extra: &[String],
) -> (Vec<String>, SocketAddr, SocketAddr, SocketAddr) {
    let (admin, http, https) = (free_addr(), free_addr(), free_addr());
    let mut args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--http-listen={http}"),
        format!("--https-listen={https}"),
        format!("--lease-name={lease}"),
        format!("--lease-namespace={CLUSTER_NS}"),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        "--worker-threads=2".into(),
        "--drain-timeout=5s".into(),
    ];
    args.extend_from_slice(extra);
    (args, admin, http, https)
}

async fn start(kubeconfig: &Path, lease: &str, log: &str, extra: &[String]) -> Controller {
    let (args, admin, http, https) = controller_args(kubeconfig, lease, extra);
    let mut proc = Supervised::spawn(
        "ferrite-ingress controller",
        &PathBuf::from(env!("CARGO_BIN_EXE_ferrite-ingress")),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_ingress=debug")],
        &log_path(log),
    )
    .expect("controller starts");
    ferrite_e2e::wait::ready(&mut proc, admin, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    Controller {
        proc,
        admin,
        http,
        https,
    }
}

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    ferrite_e2e::wait::poll(Duration::from_secs(20), Duration::from_millis(50), what, f)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A backend answering every request with 200 and `name` (one request per connection).
async fn backend(name: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// A backend answering `name` after `delay`.
async fn slow_backend(name: &'static str, delay: Duration) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    port
}

/// GET `path` with `Host: host` over plain HTTP: (status, body), None when the connection failed.
async fn get(addr: SocketAddr, host: &str, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status: u16 = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Waits until `host` + `path` answers `status` (and `body`, when given).
async fn wait_get(addr: SocketAddr, host: &str, path: &str, status: u16, body: Option<&str>) {
    eventually(&format!("GET {host}{path} -> {status} {body:?}"), || async {
        let (s, b) = get(addr, host, path).await?;
        (s == status && body.is_none_or(|want| b == want)).then_some(())
    })
    .await
}

/// The subject of the certificate served for `sni` (openssl s_client).
fn served_subject(addr: SocketAddr, sni: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect {addr} -servername {sni} 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .expect("openssl runs");
    // OpenSSL 3 prints `subject=CN = first`, 1.1 `subject=CN=first`: compared without spaces.
    String::from_utf8_lossy(&out.stdout)
        .replace(' ', "")
        .trim()
        .to_string()
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("valid object");
    api.create(&PostParams::default(), &obj).await.expect("created")
}

async fn service(client: &Client, ns: &str, name: &str) {
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    create(
        &api,
        json!({"metadata": {"name": name}, "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    )
    .await;
}

fn slices_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("discovery.k8s.io", "v1beta1", "EndpointSlice"),
        "endpointslices",
    );
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// Creates or replaces the EndpointSlice of Service `svc` with one ready endpoint 127.0.0.1:`port`.
async fn endpoints(client: &Client, ns: &str, svc: &str, port: u16) {
    let api = slices_api(client, ns);
    let body = json!({
        "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{svc}-1"), "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}]
    });
    api.patch(
        &format!("{svc}-1"),
        &PatchParams::apply("ferrite-ingress-test").force(),
        &Patch::Apply(&body),
    )
    .await
    .expect("EndpointSlice applied");
}

fn ingress_json(name: &str, class: Option<&str>, rules: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({"rules": rules});
    if let Some(c) = class {
        spec["ingressClassName"] = json!(c);
    }
    json!({"metadata": {"name": name}, "spec": spec})
}

fn rule(host: &str, path: &str, path_type: &str, svc: &str) -> serde_json::Value {
    json!({"host": host, "http": {"paths": [
        {"path": path, "pathType": path_type, "backend": {"service": {"name": svc, "port": {"number": 80}}}}
    ]}})
}

fn lb_addresses(ing: &Ingress) -> Vec<String> {
    ing.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|a| a.ip.clone().or_else(|| a.hostname.clone()))
        .collect()
}

async fn wait_status(api: &Api<Ingress>, name: &str, want: &[&str]) {
    eventually(
        &format!("Ingress {name} status.loadBalancer {want:?}"),
        || async {
            let ing = api.get(name).await.ok()?;
            (lb_addresses(&ing) == want).then_some(())
        },
    )
    .await
}

async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> String {
    let e = ferrite_e2e::wait::event(kb.client().await, ns, name, reason, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    e.note.unwrap_or_default()
}

async fn metrics(admin: SocketAddr) -> String {
    match ferrite_e2e::http_get(admin, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("/metrics at {admin}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_follow_ingresses_endpoints_and_report_broken_rules() {
    let _serial = SERIAL.lock().await;
    let (kb, client, ns, account) = setup("ing-routes").await;
    let ctl = start(
        &account,
        "ing-routes",
        "ingress-routes.log",
        &["--publish-status-address=192.0.2.10".into()],
    )
    .await;
    let (a, b) = (backend("A").await, backend("B").await);
    service(&client, &ns, "web").await;
    endpoints(&client, &ns, "web", a).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let host = format!("{ns}.test");
    create(
        &ingresses,
        ingress_json("web", Some("ferrite"), json!([rule(&host, "/", "Prefix", "web")])),
    )
    .await;
    wait_get(ctl.http, &host, "/x", 200, Some("A")).await;
    wait_status(&ingresses, "web", &["192.0.2.10"]).await;

    // Endpoints change: the new backend.
    endpoints(&client, &ns, "web", b).await;
    wait_get(ctl.http, &host, "/", 200, Some("B")).await;

    // Ingress update: only /v2 is routed.
    let mut ing = ingresses.get("web").await.unwrap();
    ing.spec.as_mut().unwrap().rules =
        serde_json::from_value(json!([rule(&host, "/v2", "Exact", "web")])).unwrap();
    ingresses
        .replace("web", &PostParams::default(), &ing)
        .await
        .unwrap();
    wait_get(ctl.http, &host, "/", 404, None).await;
    wait_get(ctl.http, &host, "/v2", 200, Some("B")).await;

    // defaultBackend of an Ingress with rules (ingress-nginx): the fallback of its own host only; the
    // other hosts keep the built-in 404.
    let mut fb = ingress_json(
        "fallback",
        Some("ferrite"),
        json!([rule(&format!("fb.{host}"), "/only", "Exact", "web")]),
    );
    fb["spec"]["defaultBackend"] = json!({"service": {"name": "web", "port": {"number": 80}}});
    create(&ingresses, fb).await;
    wait_get(ctl.http, &format!("fb.{host}"), "/other", 200, Some("B")).await;
    wait_get(ctl.http, &host, "/", 404, None).await;
    wait_get(ctl.http, &format!("unknown.{host}"), "/", 404, None).await;
    ingresses
        .delete("fallback", &DeleteParams::default())
        .await
        .unwrap();
    wait_get(ctl.http, &format!("fb.{host}"), "/other", 404, None).await;

    // Broken Ingresses: each problem is an Event on its Ingress; the good route keeps serving. Ages
    // are in seconds: `broken` must be younger than `web` to lose their conflict.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    create(
        &ingresses,
        ingress_json(
            "broken",
            Some("ferrite"),
            json!([
                rule(&format!("missing.{host}"), "/", "Prefix", "nope"),
                rule(
                    &format!("regex.{host}"),
                    "/api/(.*)",
                    "ImplementationSpecific",
                    "web"
                ),
                rule(&host, "/v2", "Exact", "web"),
                rule(&format!("ok.{host}"), "/", "Prefix", "web"),
            ]),
        ),
    )
    .await;
    let note = wait_event(kb, &ns, "broken", "ServiceNotFound").await;
    assert!(note.contains("nope"), "{note}");
    wait_event(kb, &ns, "broken", "InvalidPath").await;
    let note = wait_event(kb, &ns, "broken", "PathConflict").await;
    assert!(note.contains("older Ingress"), "{note}");
    wait_get(ctl.http, &format!("ok.{host}"), "/", 200, Some("B")).await;
    // The missing Service keeps its path: 503 (no endpoints), not a fall-through.
    wait_get(ctl.http, &format!("missing.{host}"), "/", 503, None).await;
    wait_get(ctl.http, &host, "/v2", 200, Some("B")).await;
    // Told once, not at every rebuild.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let count = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("ServiceNotFound"))
        .count();
    assert_eq!(count, 1, "one ServiceNotFound Event");
    // Deleted and recreated with the same problem: told again (a new object).
    ingresses
        .delete("broken", &DeleteParams::default())
        .await
        .unwrap();
    create(
        &ingresses,
        ingress_json(
            "broken",
            Some("ferrite"),
            json!([rule(&format!("missing.{host}"), "/", "Prefix", "nope")]),
        ),
    )
    .await;
    eventually(
        "a second ServiceNotFound Event for the recreated Ingress",
        || async {
            let n = events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("ServiceNotFound"))
                .count();
            (n == 2).then_some(())
        },
    )
    .await;
    // The missing Service appears: its rule comes back.
    service(&client, &ns, "nope").await;
    endpoints(&client, &ns, "nope", a).await;
    wait_get(ctl.http, &format!("missing.{host}"), "/", 200, Some("A")).await;

    // Leaving the class: no route, status cleared.
    ingresses
        .delete("broken", &DeleteParams::default())
        .await
        .unwrap();
    let patch = json!({"spec": {"ingressClassName": "someone-else"}});
    ingresses
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    wait_get(ctl.http, &host, "/v2", 404, None).await;
    wait_status(&ingresses, "web", &[]).await;

    // Delete and recreate.
    ingresses.delete("web", &DeleteParams::default()).await.unwrap();
    create(
        &ingresses,
        ingress_json("web", Some("ferrite"), json!([rule(&host, "/", "Prefix", "web")])),
    )
    .await;
    wait_get(ctl.http, &host, "/", 200, Some("B")).await;
    ingresses.delete("web", &DeleteParams::default()).await.unwrap();
    wait_get(ctl.http, &host, "/", 404, None).await;

    let m = metrics(ctl.admin).await;
    for want in [
        "ferrite_ingress_route_table_swaps_total",
        "ferrite_ingress_reconcile_total{kind=\"Ingress\",result=\"success\"}",
        "ferrite_ingress_reconcile_total{kind=\"IngressStatus\",result=\"success\"}",
        "ferrite_ingress_served_ingresses",
        // The data plane's, in the same registry.
        "ferrite_ingress_requests_total",
    ] {
        assert!(m.contains(want), "{want} in /metrics");
    }
    drop(ctl);
}

fn self_signed(cn: &str, san: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_secret(name: &str, cert: &str, key: &str) -> serde_json::Value {
    json!({"metadata": {"name": name}, "type": "kubernetes.io/tls",
           "stringData": {"tls.crt": cert, "tls.key": key}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_secrets_default_class_and_challenges() {
    let _serial = SERIAL.lock().await;
    let (kb, client, ns, account) = setup("ing-tls").await;
    // --default-ssl-certificate: served to SNI names without a certificate of their own.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (fallback_cert, fallback_key) = self_signed("fallback", "fallback.test");
    create(&secrets, tls_secret("fallback", &fallback_cert, &fallback_key)).await;
    let ctl = start(
        &account,
        "ing-tls",
        "ingress-tls.log",
        &[format!("--default-ssl-certificate={ns}/fallback")],
    )
    .await;
    let subject = served_subject(ctl.https, "unknown.test");
    assert!(
        subject.contains("CN=fallback"),
        "the default certificate from the start: {subject}"
    );
    let a = backend("A").await;
    service(&client, &ns, "web").await;
    endpoints(&client, &ns, "web", a).await;
    let host = format!("{ns}.test");
    let (cert, key) = self_signed("first", &host);
    create(&secrets, tls_secret("cert", &cert, &key)).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    // TLS binds only hosts the Ingress has a rule for: bad.{host} has one.
    // mismatch.{host} is bound to a certificate for other.test only.
    let (other_cert, other_cert_key) = self_signed("other", "other.test");
    create(&secrets, tls_secret("other", &other_cert, &other_cert_key)).await;
    let mut v = ingress_json(
        "tls",
        Some("ferrite"),
        json!([
            rule(&host, "/", "Prefix", "web"),
            rule(&format!("bad.{host}"), "/", "Prefix", "web"),
            rule(&format!("mismatch.{host}"), "/", "Prefix", "web")
        ]),
    );
    v["spec"]["tls"] = json!([{"hosts": [&host], "secretName": "cert"},
                              {"hosts": [format!("bad.{host}")], "secretName": "broken"},
                              {"hosts": [format!("norule.{host}")], "secretName": "cert"},
                              {"hosts": [format!("mismatch.{host}")], "secretName": "other"}]);
    create(&ingresses, v).await;
    let addr = ctl.https;
    let h = host.clone();
    eventually("the Secret's certificate served", || {
        let h = h.clone();
        async move { served_subject(addr, &h).contains("CN=first").then_some(()) }
    })
    .await;
    // Plain HTTP for a TLS host: redirected.
    wait_get(ctl.http, &host, "/", 308, None).await;
    // A tls host without a rule binds nothing: no redirect (no route either), an InvalidTLS Event.
    wait_get(ctl.http, &format!("norule.{host}"), "/", 404, None).await;
    let note = wait_event(kb, &ns, "tls", "InvalidTLS").await;
    assert!(note.contains("binds nothing"), "{note}");
    // A certificate without the host in its SAN: the default certificate for that host (nginx's
    // createServers), an Event, and still the redirect.
    let note = wait_event(kb, &ns, "tls", "CertificateHostMismatch").await;
    assert!(note.contains("mismatch.") && note.contains("/other"), "{note}");
    let subject = served_subject(addr, &format!("mismatch.{host}"));
    assert!(subject.contains("CN=fallback"), "{subject}");
    wait_get(ctl.http, &format!("mismatch.{host}"), "/", 308, None).await;

    // Secret updated: the new certificate from the next handshake on, no restart.
    let (cert2, key2) = self_signed("second", &host);
    secrets
        .replace(
            "cert",
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cert", "resourceVersion": secrets.get("cert").await.unwrap().metadata.resource_version},
                "type": "kubernetes.io/tls", "stringData": {"tls.crt": cert2, "tls.key": key2}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let h = host.clone();
    eventually("the updated certificate served", || {
        let h = h.clone();
        async move { served_subject(addr, &h).contains("CN=second").then_some(()) }
    })
    .await;
    // Updated to malformed data (a bad rotation): an Event, and the last good certificate is still
    // served (ingress-nginx keeps it too); only a delete would drop it.
    secrets
        .replace(
            "cert",
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "cert", "resourceVersion": secrets.get("cert").await.unwrap().metadata.resource_version},
                "type": "kubernetes.io/tls", "stringData": {"tls.crt": "not a certificate", "tls.key": &key2}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let note = wait_event(kb, &ns, "tls", "InvalidCertificate").await;
    assert!(note.contains("previous certificate is still served"), "{note}");
    let subject = served_subject(addr, &host);
    assert!(
        subject.contains("CN=second"),
        "the last good certificate: {subject}"
    );

    // A malformed Secret (key of another certificate): Event, the default certificate for its host.
    wait_event(kb, &ns, "tls", "TLSSecretNotFound").await;
    let (_, other_key) = self_signed("other", "other.test");
    create(&secrets, tls_secret("broken", &cert, &other_key)).await;
    let note = wait_event(kb, &ns, "tls", "KeyMismatch").await;
    assert!(note.contains("broken"), "{note}");
    let subject = served_subject(addr, &format!("bad.{host}"));
    assert!(subject.contains("CN=fallback"), "{subject}");
    let m = metrics(ctl.admin).await;
    assert!(
        m.contains(&format!(
            "ferrite_ingress_ssl_certificate_expiry_timestamp_seconds{{namespace=\"{ns}\",secret=\"cert\"}}"
        )),
        "expiry gauge"
    );

    // ACME HTTP-01: the token of a Challenge for a TLS host is answered on :80, before the redirect.
    let challenges: Api<ferrite_api::certs::Challenge> = Api::namespaced(client.clone(), &ns);
    create(
        &challenges,
        json!({"metadata": {"name": "ch"}, "spec": {"type": "HTTP-01", "dnsName": host, "token": "tok_123",
            "key": "tok_123.thumbprint", "url": "https://ca.test/chall/1", "authorizationURL": "https://ca.test/authz/1",
            "issuerRef": {"name": "le"}, "ingressClassName": "ferrite"}}),
    )
    .await;
    wait_get(
        ctl.http,
        &host,
        "/.well-known/acme-challenge/tok_123",
        200,
        Some("tok_123.thumbprint"),
    )
    .await;
    challenges.delete("ch", &DeleteParams::default()).await.unwrap();
    // Gone: the path is routed like any other (the proxy never redirects ACME paths).
    wait_get(
        ctl.http,
        &host,
        "/.well-known/acme-challenge/tok_123",
        200,
        Some("A"),
    )
    .await;

    // Default class: a class-less Ingress is served only while `ferrite` is the default.
    let plain = format!("plain.{host}");
    create(
        &ingresses,
        ingress_json("classless", None, json!([rule(&plain, "/", "Prefix", "web")])),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(ctl.http, &plain, "/").await.map(|r| r.0), Some(404));
    let classes: Api<IngressClass> = Api::all(client.clone());
    let set = |v: Option<&str>| json!({"metadata": {"annotations": {"ingressclass.kubernetes.io/is-default-class": v}}});
    classes
        .patch(
            "ferrite",
            &PatchParams::default(),
            &Patch::Merge(&set(Some("true"))),
        )
        .await
        .unwrap();
    wait_get(ctl.http, &plain, "/", 200, Some("A")).await;
    classes
        .patch("ferrite", &PatchParams::default(), &Patch::Merge(&set(None)))
        .await
        .unwrap();
    wait_get(ctl.http, &plain, "/", 404, None).await;
    for n in ["tls", "classless"] {
        ingresses.delete(n, &DeleteParams::default()).await.unwrap();
    }
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_service_status_leader_handover_restart_and_drain() {
    let _serial = SERIAL.lock().await;
    let (_kb, client, ns, account) = setup("ing-lead").await;
    // The proxy's own Service (the chart's LoadBalancer Service), its address set as an LB would.
    let svcs: Api<Service> = Api::namespaced(client.clone(), CLUSTER_NS);
    let pub_name = format!("proxy-{ns}");
    create(
        &svcs,
        json!({"metadata": {"name": pub_name}, "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]}}),
    )
    .await;
    let set_vip = |ip: &'static str| {
        let svcs = svcs.clone();
        let pub_name = pub_name.clone();
        async move {
            let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
            svcs.patch_status(&pub_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    set_vip("192.0.2.20").await;
    let flags = vec![format!("--publish-service={CLUSTER_NS}/{pub_name}")];
    let mut one = start(&account, "ing-lead", "ingress-lead-1.log", &flags).await;
    let two = start(&account, "ing-lead", "ingress-lead-2.log", &flags).await;
    let a = backend("A").await;
    service(&client, &ns, "web").await;
    endpoints(&client, &ns, "web", a).await;
    let host = format!("{ns}.test");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    create(
        &ingresses,
        ingress_json("web", Some("ferrite"), json!([rule(&host, "/", "Prefix", "web")])),
    )
    .await;
    // Both replicas serve; the leader writes the Service's address.
    wait_get(one.http, &host, "/", 200, Some("A")).await;
    wait_get(two.http, &host, "/", 200, Some("A")).await;
    wait_status(&ingresses, "web", &["192.0.2.20"]).await;

    // The first (the leader: it started first) crashes; the second takes over status writes.
    one.proc.crash();
    set_vip("192.0.2.21").await;
    wait_status(&ingresses, "web", &["192.0.2.21"]).await;
    wait_get(two.http, &host, "/", 200, Some("A")).await;

    // Restart: serving again from the first snapshot (readiness waited for it).
    let one = start(&account, "ing-lead", "ingress-lead-3.log", &flags).await;
    assert_eq!(get(one.http, &host, "/").await, Some((200, "A".into())));

    drop(one);

    // SIGTERM with a slow request in flight: the request completes, the listener closes, exit 0.
    let slow = slow_backend("slow", Duration::from_millis(1500)).await;
    service(&client, &ns, "slow").await;
    endpoints(&client, &ns, "slow", slow).await;
    let slow_host = format!("slow.{ns}.test");
    create(
        &ingresses,
        ingress_json(
            "slow",
            Some("ferrite"),
            json!([rule(&slow_host, "/", "Prefix", "slow")]),
        ),
    )
    .await;
    let (args, admin, http, _) = controller_args(&account, "ing-lead", &flags);
    let log = std::fs::File::create(log_path("ingress-lead-drain.log")).unwrap();
    let mut direct = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferrite-ingress"))
        .args(&args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    eventually("the directly started controller ready", || async {
        matches!(ferrite_e2e::http_get(admin, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    wait_get(http, &slow_host, "/", 200, Some("slow")).await;
    let in_flight = tokio::spawn(async move { get(http, &slow_host, "/").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = direct.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), direct.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        in_flight.await.unwrap(),
        Some((200, "slow".into())),
        "the in-flight request finished"
    );
    assert!(get(http, &host, "/").await.is_none(), "listener closed");
    ingresses.delete("slow", &DeleteParams::default()).await.unwrap();
    ingresses.delete("web", &DeleteParams::default()).await.unwrap();
    drop(two);
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_coalesce_into_few_swaps_and_one_change_is_live_fast() {
    use futures::StreamExt;
    let _serial = SERIAL.lock().await;
    let (_kb, client, ns, account) = setup("ing-burst").await;
    let ctl = start(&account, "ing-burst", "ingress-burst.log", &[]).await;
    let a = backend("A").await;
    service(&client, &ns, "web").await;
    endpoints(&client, &ns, "web", a).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    wait_get(ctl.http, "nothing.test", "/", 404, None).await;
    let swaps = "ferrite_ingress_route_table_swaps_total";
    let before = counter(&metrics(ctl.admin).await, swaps);
    const N: usize = 300;
    futures::stream::iter(0..N)
        .map(|i| {
            let ingresses = ingresses.clone();
            let host = format!("b{i}.{ns}.test");
            async move {
                create(
                    &ingresses,
                    ingress_json(
                        &format!("b{i}"),
                        Some("ferrite"),
                        json!([rule(&host, "/", "Prefix", "web")]),
                    ),
                )
                .await
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for i in [0, N / 2, N - 1] {
        wait_get(ctl.http, &format!("b{i}.{ns}.test"), "/", 200, Some("A")).await;
    }
    let after = counter(&metrics(ctl.admin).await, swaps);
    assert!(
        after - before < (N / 5) as f64,
        "{N} Ingresses created at once: {} swaps",
        after - before
    );
    // One change alone: live well within a second (watch latency + at most the 100 ms debounce).
    let host = format!("single.{ns}.test");
    let started = std::time::Instant::now();
    create(
        &ingresses,
        ingress_json(
            "single",
            Some("ferrite"),
            json!([rule(&host, "/", "Prefix", "web")]),
        ),
    )
    .await;
    wait_get(ctl.http, &host, "/", 200, Some("A")).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1000),
        "one Ingress served after {took:?}"
    );
    ingresses
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await
        .unwrap();
    drop(ctl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_without_the_challenge_crd_and_picks_it_up_when_installed() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let _serial = SERIAL.lock().await;
    let (kb, client, ns, account) = setup("ing-nocrd").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = "challenges.certs.ferrite.dev";
    crds.delete(crd, &DeleteParams::default()).await.unwrap();
    eventually("the Challenge CRD gone", || async {
        crds.get_opt(crd).await.ok()?.is_none().then_some(())
    })
    .await;
    let ctl = start(
        &account,
        "ing-nocrd",
        "ingress-nocrd.log",
        &["--crd-discovery-interval=500ms".into()],
    )
    .await;
    let a = backend("A").await;
    service(&client, &ns, "web").await;
    endpoints(&client, &ns, "web", a).await;
    let host = format!("{ns}.test");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    create(
        &ingresses,
        ingress_json("web", Some("ferrite"), json!([rule(&host, "/", "Prefix", "web")])),
    )
    .await;
    wait_get(ctl.http, &host, "/", 200, Some("A")).await;
    // Without --default-ssl-certificate: the self-signed default.
    let subject = served_subject(ctl.https, "unknown.test");
    assert!(subject.contains("ingress-default.ferrite.invalid"), "{subject}");

    // ferrite-certs installed later: its Challenges are served without a restart.
    ferrite_e2e::demo::apply_crds(kb)
        .await
        .expect("CRDs applied again");
    let challenges: Api<ferrite_api::certs::Challenge> = Api::namespaced(client.clone(), &ns);
    eventually("Challenges can be created", || async {
        let ch: ferrite_api::certs::Challenge = serde_json::from_value(json!({
            "metadata": {"name": "late"}, "spec": {"type": "HTTP-01", "dnsName": host, "token": "late_tok",
            "key": "late_tok.thumb", "url": "https://ca.test/c", "authorizationURL": "https://ca.test/a",
            "issuerRef": {"name": "le"}}}))
        .unwrap();
        challenges
            .create(&PostParams::default(), &ch)
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    wait_get(
        ctl.http,
        &host,
        "/.well-known/acme-challenge/late_tok",
        200,
        Some("late_tok.thumb"),
    )
    .await;
    ingresses.delete("web", &DeleteParams::default()).await.unwrap();
    challenges.delete("late", &DeleteParams::default()).await.unwrap();
    drop(ctl);
}

#[test]
fn tls_secrets_parse_into_certificates_or_reasons() {
    use ferrite_ingress::controller::build::CertState;
    use ferrite_ingress::controller::secrets::load;
    let secret = |crt: &str, key: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls",
            "stringData": {}, "data": {
                "tls.crt": ferrite_e2e::named::base64(crt.as_bytes()),
                "tls.key": ferrite_e2e::named::base64(key.as_bytes())}}))
        .unwrap()
    };
    let (cert, key) = self_signed("x", "x.test");
    let (_, other) = self_signed("y", "y.test");
    match load(&secret(&cert, &key)) {
        CertState::Loaded(c) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            assert!(c.not_after.expect("notAfter") > now, "valid now");
            assert_eq!(c.names.dns, vec!["x.test".to_string()]);
        }
        other => panic!("{other:?}"),
    }
    for (crt, key, want) in [
        (cert.as_str(), other.as_str(), "KeyMismatch"),
        ("", key.as_str(), "InvalidCertificate"),
        (cert.as_str(), "not a key", "InvalidKey"),
    ] {
        match load(&secret(crt, key)) {
            CertState::Invalid { reason, .. } => assert_eq!(reason, want),
            other => panic!("{want}: {other:?}"),
        }
    }
    let empty: Secret =
        serde_json::from_value(json!({"metadata": {"name": "s"}, "type": "kubernetes.io/tls"})).unwrap();
    assert!(matches!(
        load(&empty),
        CertState::Invalid {
            reason: "InvalidCertificate",
            ..
        }
    ));
}
