//! Box tests of `ferrite-dns controller`: a real kube-apiserver (the box), the controller process run as
//! the chart's ServiceAccount with the chart's RBAC, `dig` against its embedded server, and a real
//! `named` for an rfc2136 zone.
//!
//! One test function: one controller writes status for every zone, so the steps share it and run in order.

mod common;
use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrite_api::dns::{DNSRecord, DNSZone};
use ferrite_e2e::named::{Named, NamedConfig, NamedKey, NamedZone};
use ferrite_e2e::{KubeBox, Supervised};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const SECRET: &[u8] = b"ferrite-dns controller test secret, 32+ bytes";
const KEY: &str = "ferrite-key";
const RFC_ZONE: &str = "rfc.ctl.test.";

/// `dig +short @127.0.0.1 -p port name type`, sorted lines; and the status.
fn dig(port: u16, name: &str, rtype: &str) -> (String, Vec<String>) {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+time=2",
            "+tries=1",
            "+noall",
            "+answer",
            "+comments",
        ])
        .args([name, rtype])
        .output()
        .expect("dig runs (apt-get install -y bind9-dnsutils)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .lines()
        .find_map(|l| {
            l.split_once("status: ")
                .map(|(_, r)| r.split(',').next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    let mut answers: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .filter_map(|l| {
            l.split_whitespace()
                .nth(4)
                .map(|_| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
        })
        .collect();
    answers.sort();
    (status, answers)
}

async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_answer(port: u16, name: &str, rtype: &str, want: &[&str], limit: Duration) -> Duration {
    let start = Instant::now();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(limit, &format!("{name} {rtype} -> {want:?}"), || {
        let want = want.clone();
        async move {
            let (status, got) = dig(port, name, rtype);
            (status == "NOERROR" && got == want).then_some(())
        }
    })
    .await;
    start.elapsed()
}

async fn wait_nxdomain(port: u16, name: &str) {
    eventually(
        Duration::from_secs(10),
        &format!("NXDOMAIN for {name}"),
        || async { (dig(port, name, "A").0 == "NXDOMAIN").then_some(()) },
    )
    .await;
}

struct Controller {
    proc: Supervised,
    admin: SocketAddr,
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrite-dns"))
}

async fn start_controller(kb: &KubeBox, kubeconfig: &Path, dns_port: u16) -> Controller {
    let admin = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = vec![
        "controller".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--admin-addr={admin}"),
        format!("--dns-listen=127.0.0.1:{dns_port}"),
        "--lease-name=ferrite-dns".into(),
        "--lease-namespace=ferrite-system".into(),
        "--lease-duration=3s".into(),
        "--lease-renew-deadline=2s".into(),
        "--lease-retry-period=250ms".into(),
        "--sync-interval=2s".into(),
    ];
    let log = kb.dir.join(format!(
        "ferrite-dns-{dns_port}-{}.log",
        Instant::now().elapsed().as_nanos()
    ));
    let mut proc = Supervised::spawn(
        "ferrite-dns controller",
        &bin(),
        &args,
        &[("FERRITE_LOG_LEVEL", "info,ferrite_dns=debug")],
        &log,
    )
    .expect("controller starts");
    let addr: SocketAddr = admin.parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(proc.is_running(), "controller exited:\n{}", proc.log_tail(30));
        if let Ok((200, _)) = ferrite_e2e::http_get(addr, "/readyz").await {
            return Controller { proc, admin: addr };
        }
        assert!(
            Instant::now() < deadline,
            "controller not ready in 30 s:\n{}",
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The chart's RBAC (ServiceAccount ferrite-dns in ferrite-system, TSIG Secret `ns/tsig` by name) applied
/// to the box; returns the ServiceAccount's kubeconfig.
async fn chart_account(kb: &KubeBox, secret_ns: &str) -> PathBuf {
    let _ = kb
        .kubectl()
        .args(["create", "namespace", "ferrite-system"])
        .output();
    let chart = ferrite_e2e::demo::repo_root().join("charts/ferrite/charts/dns");
    let out = kb
        .helm()
        .args(["template", "ferrite"])
        .arg(&chart)
        .args([
            "--namespace",
            "ferrite-system",
            "--show-only",
            "templates/rbac.yaml",
        ])
        .args([
            "--set",
            &format!("tsigSecrets[0].namespace={secret_ns},tsigSecrets[0].name=tsig"),
        ])
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = kb.dir.join("dns-rbac.yaml");
    std::fs::write(&rendered, &out.stdout).expect("write rbac");
    let applied = kb
        .kubectl()
        .args(["apply", "-f"])
        .arg(&rendered)
        .output()
        .expect("kubectl runs");
    assert!(
        applied.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    kb.service_account_kubeconfig("ferrite-system", "ferrite-dns")
        .await
        .expect("ServiceAccount kubeconfig")
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("valid object");
    api.create(&PostParams::default(), &obj).await.expect("created")
}

async fn lb_service(api: &Api<Service>, name: &str, annotations: serde_json::Value) {
    create(
        api,
        json!({"metadata": {"name": name, "annotations": annotations},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}),
    )
    .await;
}

async fn set_service_ip(api: &Api<Service>, name: &str, ip: &str) {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})),
    )
    .await
    .expect("Service status written");
}

fn condition(zone: &DNSZone, type_: &str) -> Option<(String, String, String)> {
    zone.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

async fn wait_event(kb: &KubeBox, ns: &str, name: &str, reason: &str) -> String {
    let api: Api<Event> = Api::namespaced(kb.client().await, ns);
    eventually(
        Duration::from_secs(15),
        &format!("Event {reason} on {name}"),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items.into_iter().find_map(|e| {
                let on = e.regarding.as_ref()?.name.as_deref()? == name;
                (on && e.reason.as_deref() == Some(reason)).then(|| e.note.unwrap_or_default())
            })
        },
    )
    .await
}

/// A `named` (ferrite-e2e's) with the TSIG key and an updatable zone.
fn start_named() -> Named {
    Named::start(NamedConfig {
        keys: vec![NamedKey::new(KEY, "hmac-sha256", SECRET)],
        zones: vec![
            NamedZone::primary(RFC_ZONE, "foreign IN A 192.0.2.99\n")
                .allow_update(&[KEY])
                .allow_transfer(&[KEY]),
        ],
        ..NamedConfig::default()
    })
    .expect("named starts")
}

/// A real `named` on `port` as a SECONDARY of the embedded zone `sec.ctl.test` (primary: the controller's
/// embedded server on `primary_port`, transfers signed with the test's TSIG key).
fn start_secondary(port: u16, primary_port: u16) -> Named {
    Named::start(NamedConfig {
        port: Some(port),
        keys: vec![NamedKey::new(KEY, "hmac-sha256", SECRET)],
        zones: vec![NamedZone::secondary(
            "sec.ctl.test",
            SocketAddr::from(([127, 0, 0, 1], primary_port)),
            KEY,
        )],
        ..NamedConfig::default()
    })
    .expect("secondary named starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_end_to_end() {
    let kb = KubeBox::shared();
    ferrite_e2e::demo::apply_crds(kb).await.expect("CRDs applied");
    let client = kb.client().await;
    let ns = kb.namespace("dns").await;
    let kubeconfig = chart_account(kb, &ns).await;
    let port = free_port();
    let mut ctl = start_controller(kb, &kubeconfig, port).await;

    let zones: Api<DNSZone> = Api::all(client.clone());
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let ings: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let recs: Api<DNSRecord> = Api::namespaced(client.clone(), &ns);
    create(&zones, json!({"metadata": {"name": "ctl-embedded"}, "spec": {"zone": "apps.ctl.test.", "provider": {"embedded": {}}}})).await;
    wait_answer(
        port,
        "apps.ctl.test",
        "NS",
        &["ns1.apps.ctl.test."],
        Duration::from_secs(10),
    )
    .await;

    // Three Services, one per annotation prefix: answered shortly after their status IP is written.
    lb_service(
        &svcs,
        "alpha",
        json!({"external-dns.alpha.kubernetes.io/hostname": "alpha.apps.ctl.test"}),
    )
    .await;
    lb_service(
        &svcs,
        "plain",
        json!({"external-dns.kubernetes.io/hostname": "plain.apps.ctl.test"}),
    )
    .await;
    lb_service(
        &svcs,
        "ours",
        json!({"dns.ferrite.dev/hostname": "ours.apps.ctl.test"}),
    )
    .await;
    for (name, ip) in [
        ("alpha", "192.0.2.1"),
        ("plain", "192.0.2.2"),
        ("ours", "192.0.2.3"),
    ] {
        set_service_ip(&svcs, name, ip).await;
    }
    for (name, ip) in [
        ("alpha", "192.0.2.1"),
        ("plain", "192.0.2.2"),
        ("ours", "192.0.2.3"),
    ] {
        let took = wait_answer(
            port,
            &format!("{name}.apps.ctl.test"),
            "A",
            &[ip],
            Duration::from_secs(5),
        )
        .await;
        eprintln!("{name}: answered {took:?} after the status write (or less)");
    }

    // An Ingress with two hosts.
    create(
        &ings,
        json!({"metadata": {"name": "web"}, "spec": {"rules": [{"host": "w1.apps.ctl.test"}, {"host": "w2.apps.ctl.test"}]}}),
    )
    .await;
    ings.patch_status(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}})),
    )
    .await
    .expect("Ingress status");
    wait_answer(
        port,
        "w1.apps.ctl.test",
        "A",
        &["192.0.2.10"],
        Duration::from_secs(5),
    )
    .await;
    wait_answer(
        port,
        "w2.apps.ctl.test",
        "A",
        &["192.0.2.10"],
        Duration::from_secs(5),
    )
    .await;

    // DNSRecords: TXT and CNAME, Programmed naming the zone.
    create(&recs, json!({"metadata": {"name": "txt"}, "spec": {"name": "txt.apps.ctl.test", "type": "TXT", "targets": ["hello world"]}})).await;
    create(&recs, json!({"metadata": {"name": "cname"}, "spec": {"name": "c.apps.ctl.test", "type": "CNAME", "targets": ["ours.apps.ctl.test"]}})).await;
    wait_answer(
        port,
        "txt.apps.ctl.test",
        "TXT",
        &["\"hello world\""],
        Duration::from_secs(5),
    )
    .await;
    wait_answer(
        port,
        "c.apps.ctl.test",
        "CNAME",
        &["ours.apps.ctl.test."],
        Duration::from_secs(5),
    )
    .await;
    for name in ["txt", "cname"] {
        eventually(
            Duration::from_secs(10),
            &format!("DNSRecord {name} Programmed"),
            || async {
                let r = recs.get(name).await.ok()?;
                let s = r.status?;
                let c = s.conditions.iter().find(|c| c.type_ == "Programmed")?;
                (c.status == "True"
                    && s.zone.as_deref() == Some("ctl-embedded")
                    && c.message.contains("ctl-embedded"))
                .then_some(())
            },
        )
        .await;
    }

    // Update the IP -> new answer; delete -> NXDOMAIN.
    set_service_ip(&svcs, "ours", "192.0.2.33").await;
    wait_answer(
        port,
        "ours.apps.ctl.test",
        "A",
        &["192.0.2.33"],
        Duration::from_secs(5),
    )
    .await;
    svcs.delete("plain", &DeleteParams::default())
        .await
        .expect("deleted");
    wait_nxdomain(port, "plain.apps.ctl.test").await;

    // A bad TTL: Warning Event, nothing published for it; others keep working.
    lb_service(
        &svcs,
        "badttl",
        json!({"dns.ferrite.dev/hostname": "bad.apps.ctl.test", "dns.ferrite.dev/ttl": "abc"}),
    )
    .await;
    set_service_ip(&svcs, "badttl", "192.0.2.50").await;
    let note = wait_event(kb, &ns, "badttl", "BadTTL").await;
    assert!(note.contains("abc"), "{note}");
    assert_eq!(dig(port, "bad.apps.ctl.test", "A").0, "NXDOMAIN");
    wait_answer(
        port,
        "alpha.apps.ctl.test",
        "A",
        &["192.0.2.1"],
        Duration::from_secs(2),
    )
    .await;

    // Two Services claiming one name: the oldest wins; Conflicts names both.
    lb_service(
        &svcs,
        "first",
        json!({"dns.ferrite.dev/hostname": "shared.apps.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "first", "192.0.2.60").await;
    wait_answer(
        port,
        "shared.apps.ctl.test",
        "A",
        &["192.0.2.60"],
        Duration::from_secs(5),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creation timestamps have second precision
    lb_service(
        &svcs,
        "second",
        json!({"dns.ferrite.dev/hostname": "shared.apps.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "second", "192.0.2.61").await;
    let message = eventually(Duration::from_secs(10), "Conflicts condition", || async {
        let z = zones.get("ctl-embedded").await.ok()?;
        let (status, _, message) = condition(&z, "Conflicts")?;
        (status == "True").then_some(message)
    })
    .await;
    assert!(
        message.contains(&format!("service/{ns}/first")) && message.contains(&format!("service/{ns}/second")),
        "{message}"
    );
    wait_event(kb, &ns, "second", "Conflict").await;
    assert_eq!(
        dig(port, "shared.apps.ctl.test", "A").1,
        vec!["192.0.2.60".to_string()]
    );

    // A second DNSZone for the same apex: Ready=False DuplicateZone naming the first, a Warning Event;
    // the first keeps serving.
    create(
        &zones,
        json!({"metadata": {"name": "ctl-dup"}, "spec": {"zone": "apps.ctl.test.", "provider": {"embedded": {}}}}),
    )
    .await;
    let (reason, message) = eventually(Duration::from_secs(10), "DuplicateZone", || async {
        let z = zones.get("ctl-dup").await.ok()?;
        let (status, reason, message) = condition(&z, "Ready")?;
        (status == "False").then_some((reason, message))
    })
    .await;
    assert_eq!(reason, "DuplicateZone", "{message}");
    assert!(message.contains("ctl-embedded"), "{message}");
    wait_event(kb, "default", "ctl-dup", "DuplicateZone").await;
    wait_answer(
        port,
        "alpha.apps.ctl.test",
        "A",
        &["192.0.2.1"],
        Duration::from_secs(2),
    )
    .await;
    zones
        .delete("ctl-dup", &DeleteParams::default())
        .await
        .expect("deleted");

    // Restart: the same answers, the serial never decreases.
    let serial_before = eventually(Duration::from_secs(10), "serial in status", || async {
        zones.get("ctl-embedded").await.ok()?.status?.serial
    })
    .await;
    let soa_serial = |p: u16| -> u64 {
        dig(p, "apps.ctl.test", "SOA")
            .1
            .first()
            .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
            .unwrap_or(0)
    };
    let served_before = soa_serial(port);
    ctl.proc.stop(Duration::from_secs(10));
    let port2 = free_port();
    ctl = start_controller(kb, &kubeconfig, port2).await;
    wait_answer(
        port2,
        "alpha.apps.ctl.test",
        "A",
        &["192.0.2.1"],
        Duration::from_secs(10),
    )
    .await;
    wait_answer(
        port2,
        "ours.apps.ctl.test",
        "A",
        &["192.0.2.33"],
        Duration::from_secs(5),
    )
    .await;
    wait_answer(
        port2,
        "txt.apps.ctl.test",
        "TXT",
        &["\"hello world\""],
        Duration::from_secs(5),
    )
    .await;
    let served_after = soa_serial(port2);
    assert!(
        served_after >= served_before && served_after >= serial_before as u64,
        "serial {served_before} -> {served_after}"
    );

    // rfc2136 against a real named, with the TSIG Secret.
    let mut named = start_named();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    create(
        &secrets,
        json!({"metadata": {"name": "tsig"}, "stringData": {"secret": base64(SECRET)}}),
    )
    .await;
    create(
        &zones,
        json!({"metadata": {"name": "ctl-rfc"}, "spec": {"zone": RFC_ZONE, "provider": {"rfc2136": {
            "server": "127.0.0.1", "port": named.port(), "tsigKeyName": KEY,
            "tsigKeySecretRef": {"name": "tsig", "namespace": ns}}}}}),
    )
    .await;
    lb_service(
        &svcs,
        "rfc",
        json!({"dns.ferrite.dev/hostname": "app.rfc.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "rfc", "192.0.2.70").await;
    let named_port = named.port();
    wait_answer(
        named_port,
        "app.rfc.ctl.test",
        "A",
        &["192.0.2.70"],
        Duration::from_secs(15),
    )
    .await;
    let txts = eventually(Duration::from_secs(10), "registry TXT", || async {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &named_port.to_string(),
                "+short",
                "-y",
                &format!("hmac-sha256:{KEY}:{}", base64(SECRET)),
                RFC_ZONE,
                "AXFR",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("heritage=external-dns,external-dns/owner=ferrite-dns")
            .then_some(text)
    })
    .await;
    assert!(
        txts.contains(&format!("external-dns/resource=service/{ns}/rfc")),
        "{txts}"
    );
    assert_eq!(
        dig(named_port, "foreign.rfc.ctl.test", "A").1,
        vec!["192.0.2.99".to_string()]
    );
    eventually(Duration::from_secs(10), "ctl-rfc Ready", || async {
        let z = zones.get("ctl-rfc").await.ok()?;
        (condition(&z, "Ready")?.0 == "True").then_some(())
    })
    .await;
    svcs.delete("rfc", &DeleteParams::default())
        .await
        .expect("deleted");
    eventually(
        Duration::from_secs(15),
        "app.rfc.ctl.test removed from named",
        || async { (dig(named_port, "app.rfc.ctl.test", "A").0 == "NXDOMAIN").then_some(()) },
    )
    .await;

    // named stopped: the change waits (ProviderUnreachable, retried with backoff); restarted: it lands.
    named.stop();
    lb_service(
        &svcs,
        "rfc3",
        json!({"dns.ferrite.dev/hostname": "three.rfc.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "rfc3", "192.0.2.72").await;
    let reason = eventually(
        Duration::from_secs(20),
        "ProviderUnreachable while named is down",
        || async {
            let z = zones.get("ctl-rfc").await.ok()?;
            let (status, reason, _) = condition(&z, "ProviderUnreachable")?;
            (status == "True").then_some(reason)
        },
    )
    .await;
    assert!(reason == "Unreachable" || reason == "Timeout", "{reason}");
    named.run().expect("named starts again");
    wait_answer(
        named_port,
        "three.rfc.ctl.test",
        "A",
        &["192.0.2.72"],
        Duration::from_secs(20),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "ProviderUnreachable False again",
        || async {
            let z = zones.get("ctl-rfc").await.ok()?;
            (condition(&z, "ProviderUnreachable")?.0 == "False").then_some(())
        },
    )
    .await;

    // A wrong TSIG secret: ProviderUnreachable with a clear message.
    secrets
        .patch(
            "tsig",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": base64(b"a different secret entirely!!")}})),
        )
        .await
        .expect("secret patched");
    lb_service(
        &svcs,
        "rfc2",
        json!({"dns.ferrite.dev/hostname": "two.rfc.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "rfc2", "192.0.2.71").await;
    let (reason, message) = eventually(Duration::from_secs(20), "ProviderUnreachable", || async {
        let z = zones.get("ctl-rfc").await.ok()?;
        let (status, reason, message) = condition(&z, "ProviderUnreachable")?;
        (status == "True").then_some((reason, message))
    })
    .await;
    assert_eq!(reason, "NotAuth", "{message}");
    assert!(
        message.contains("BADSIG") || message.contains("rejected"),
        "{message}"
    );
    assert!(named.log().len() < 10_000_000);

    // Deleting the rfc2136 zone object removes our records (policy sync) once the key is right again.
    secrets
        .patch(
            "tsig",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": base64(SECRET)}})),
        )
        .await
        .expect("secret patched");
    wait_answer(
        named_port,
        "two.rfc.ctl.test",
        "A",
        &["192.0.2.71"],
        Duration::from_secs(20),
    )
    .await;
    // The deletion guard: a spec change that drops every Service at once deletes nothing.
    let zone_patch = |sources: serde_json::Value| {
        let zones = zones.clone();
        async move {
            zones
                .patch(
                    "ctl-rfc",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"sources": sources}})),
                )
                .await
                .expect("zone patched");
        }
    };
    zone_patch(json!({"kinds": ["DNSRecord"]})).await;
    let message = eventually(Duration::from_secs(15), "DeletionGuard", || async {
        let z = zones.get("ctl-rfc").await.ok()?;
        let (status, reason, message) = condition(&z, "DeletionGuard")?;
        (status == "True" && reason == "TooManyDeletions").then_some(message)
    })
    .await;
    assert!(message.contains("maxDeletePercent"), "{message}");
    wait_event(kb, "default", "ctl-rfc", "TooManyDeletions").await;
    assert_eq!(
        dig(named_port, "two.rfc.ctl.test", "A").1,
        vec!["192.0.2.71".to_string()]
    );
    assert_eq!(
        dig(named_port, "three.rfc.ctl.test", "A").1,
        vec!["192.0.2.72".to_string()]
    );
    zone_patch(serde_json::Value::Null).await;
    eventually(Duration::from_secs(15), "DeletionGuard False again", || async {
        let z = zones.get("ctl-rfc").await.ok()?;
        (condition(&z, "DeletionGuard")?.0 == "False").then_some(())
    })
    .await;

    // Metrics.
    let (code, metrics) = ferrite_e2e::http_get(ctl.admin, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(code, 200);
    for want in [
        "ferrite_dns_records{zone=\"ctl-embedded\"}",
        "ferrite_dns_records{zone=\"ctl-rfc\"} 2",
        "ferrite_dns_updates_sent_total{zone=\"ctl-rfc\"}",
        "ferrite_dns_provider_errors_total{reason=\"NotAuth\",zone=\"ctl-rfc\"}",
        "ferrite_dns_sync_duration_seconds_count{zone=\"ctl-rfc\"}",
        "ferrite_dns_queries_total{",
        "ferrite_dns_leader 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from /metrics:\n{metrics}");
    }
    // The kit's reconcile series: the leader's RFC2136 syncs (one failed NotAuth above) and the passes
    // that swapped the embedded zones, each counted above zero.
    assert!(
        metrics.contains("ferrite_dns_reconcile_errors_total{kind=\"DNSZone\",reason=\"NotAuth\"}"),
        "the NotAuth sync is a DNSZone reconcile error:\n{metrics}"
    );
    for kind in ["DNSZone", "ZoneSet"] {
        let series = format!("ferrite_dns_reconcile_total{{kind=\"{kind}\",result=\"success\"}} ");
        let count: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from /metrics:\n{metrics}"));
        assert!(
            count > 0.0,
            "{series}{count}: no successful {kind} reconcile counted"
        );
    }

    zones
        .delete("ctl-rfc", &DeleteParams::default())
        .await
        .expect("zone deleted");
    eventually(
        Duration::from_secs(20),
        "records removed and DNSZone gone",
        || async {
            let gone = zones.get_opt("ctl-rfc").await.ok()?.is_none();
            (gone && dig(named_port, "two.rfc.ctl.test", "A").0 == "NXDOMAIN").then_some(())
        },
    )
    .await;
    assert_eq!(
        dig(named_port, "foreign.rfc.ctl.test", "A").1,
        vec!["192.0.2.99".to_string()]
    );
    // An embedded zone with a real named as its secondary, driven by the DNSZone: named loads the zone by
    // a TSIG-signed AXFR and follows a change by NOTIFY + IXFR.
    let sec_port = free_port();
    create(
        &zones,
        json!({"metadata": {"name": "ctl-sec"}, "spec": {"zone": "sec.ctl.test.", "provider": {"embedded": {
            "secondaries": [{"address": "127.0.0.1", "port": sec_port}],
            "transfer": {"tsigKeyName": KEY, "tsigKeySecretRef": {"name": "tsig", "namespace": ns}}}}}}),
    )
    .await;
    lb_service(
        &svcs,
        "sec",
        json!({"dns.ferrite.dev/hostname": "www.sec.ctl.test"}),
    )
    .await;
    set_service_ip(&svcs, "sec", "192.0.2.50").await;
    wait_answer(
        port2,
        "www.sec.ctl.test",
        "A",
        &["192.0.2.50"],
        Duration::from_secs(10),
    )
    .await;
    eventually(Duration::from_secs(15), "Transfers=True on ctl-sec", || async {
        let z = zones.get("ctl-sec").await.ok()?;
        (condition(&z, "Transfers")?.0 == "True").then_some(())
    })
    .await;
    // The secondary listens on the port the DNSZone names; it starts after the zone is served, so its
    // first AXFR finds it.
    let mut secondary = start_secondary(sec_port, port2);
    let sec_named = secondary.port();
    eprintln!("secondary named on 127.0.0.1:{sec_named}");
    eventually(
        Duration::from_secs(20),
        "the secondary to answer www.sec.ctl.test",
        || async { (dig(sec_named, "www.sec.ctl.test", "A").1 == ["192.0.2.50"]).then_some(()) },
    )
    .await;
    set_service_ip(&svcs, "sec", "192.0.2.51").await;
    eventually(
        Duration::from_secs(20),
        "the secondary to follow the change (NOTIFY)",
        || async { (dig(sec_named, "www.sec.ctl.test", "A").1 == ["192.0.2.51"]).then_some(()) },
    )
    .await;
    assert_eq!(
        dig(port2, "www.sec.ctl.test", "A").1,
        dig(sec_named, "www.sec.ctl.test", "A").1,
        "the secondary answers like the primary"
    );
    secondary.stop();

    ctl.proc.stop(Duration::from_secs(10));
}
