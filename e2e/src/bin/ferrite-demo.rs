//! `make demo`: the box (etcd + kube-apiserver + controller-manager on loopback) with the chart installed,
//! a small L2 network of "node" network namespaces each running a `ferrite-lb speaker` and a "client"
//! namespace on a bridge, `ferrite-lb controller` on the host, an IPPool and a LoadBalancer Service. The
//! client finds the Service's address by ARP at the elected node; then that node's speaker is killed and
//! the address moves; the speaker comes back and the address stays where it is (no flip-back). Then
//! `ferrite-dns controller` serves an embedded DNSZone and `dig` finds the Service's address under the name
//! its external-dns annotation asks for. Last, `ferrite-certs controller` bootstraps a private CA (a
//! selfSigned ClusterIssuer, an `isCA` Certificate, a `ca` ClusterIssuer) and issues a certificate for that
//! name, which `openssl verify` checks against the CA.
//!
//! Prints what to try and waits for Ctrl-C, which stops everything it started (processes by PID, the
//! network namespaces, the box). `FERRITE_DEMO_EXIT=1` stops right after the failover instead (for CI
//! and scripts); any failed step exits 1.

use anyhow::{Context, Result, anyhow, bail};
use ferrite_e2e::{
    KubeBox,
    demo::{self, DEMO_NAMESPACE, DEMO_POOL, DEMO_SERVICE, Lb, Running},
    netlab::NetLab,
};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use std::time::{Duration, Instant};

/// Everything the demo started; dropped (or torn down) to stop it.
struct Demo {
    // Field order is drop order: processes, then the lab's namespaces, then the box.
    running: Running,
    lab: NetLab,
    kb: KubeBox,
    lb: Lb,
    vip: String,
    /// The embedded DNS server of ferrite-dns.
    dns: Option<std::net::SocketAddr>,
    /// The admin server of ferrite-certs.
    certs: Option<std::net::SocketAddr>,
}

impl Demo {
    fn teardown(mut self) {
        let t = Instant::now();
        eprintln!(
            "==> stopping the controller and speakers, removing the lab's namespaces, stopping the box"
        );
        self.running.stop();
        self.lab.teardown();
        self.kb.stop();
        eprintln!("    done in {}", ms(t.elapsed()));
    }
}

#[tokio::main]
async fn main() {
    // Ctrl-C during the setup drops the setup future, whose Drops stop everything it started so far.
    let setup = tokio::select! {
        r = setup() => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let demo = match setup {
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            std::process::exit(1);
        }
        None => {
            eprintln!("==> interrupted: everything this demo started is stopped");
            std::process::exit(130);
        }
    };
    if std::env::var_os("FERRITE_DEMO_EXIT").is_some_and(|v| v == "1") {
        demo.teardown();
        return;
    }
    print_hints(&demo);
    if let Err(e) = tokio::signal::ctrl_c().await {
        eprintln!("waiting for Ctrl-C: {e}");
    }
    demo.teardown();
}

fn ms(d: Duration) -> String {
    if d < Duration::from_secs(10) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

fn step(what: &str) -> Instant {
    eprintln!("==> {what}");
    Instant::now()
}

async fn setup() -> Result<Demo> {
    let start = Instant::now();
    // Fail before starting anything when the binaries were not built.
    demo::sibling_binary("ferrite-lb")?;
    demo::sibling_binary("ferrite-dns")?;
    demo::sibling_binary("ferrite-certs")?;

    let t = step("starting the box (etcd + kube-apiserver v1.20 + kube-controller-manager on 127.0.0.1)");
    let kb = KubeBox::start().await.context("starting the box")?;
    eprintln!(
        "    API server {} (files in {}), {}",
        kb.server,
        kb.dir.display(),
        ms(t.elapsed())
    );

    let t = step("installing the chart with helm into ferrite-system (CRDs, RBAC, gossip Secret)");
    demo::install_chart(&kb).await?;
    let lb = demo::prepare_lb(&kb).await?;
    eprintln!(
        "    kubeconfigs for ServiceAccounts ferrite-lb-controller and ferrite-lb-speaker minted, {}",
        ms(t.elapsed())
    );

    let t = step("building the lab network: a bridge, 3 \"node\" namespaces and a \"client\" namespace");
    let lab = NetLab::new(&kb, 3).context("building the lab network")?;
    lab.register_nodes(&kb)
        .await
        .context("creating the Node objects")?;
    for n in &lab.nodes {
        eprintln!(
            "    node   {:<12} netns {:<12} {:<12} {}",
            n.name, n.ns, n.ip4, n.mac
        );
    }
    eprintln!(
        "    client {:<12} netns {:<12} {:<12} {}",
        "",
        lab.client_ns,
        "192.0.2.2",
        lab.mac(&lab.client_ns, "eth0").unwrap_or_default()
    );
    eprintln!("    {}", ms(t.elapsed()));

    let t =
        step("starting ferrite-lb controller on the host and a ferrite-lb speaker in each node namespace");
    let running = demo::start_controllers(&kb, &lab, &lb).await?;
    eprintln!(
        "    controller ready (admin {}), {} speakers started, {}",
        lb.admin,
        lab.nodes.len(),
        ms(t.elapsed())
    );
    let mut d = Demo {
        running,
        lab,
        kb,
        lb,
        vip: String::new(),
        dns: None,
        certs: None,
    };
    failover(&mut d).await?;
    dns(&mut d).await?;
    certs(&mut d).await?;
    eprintln!("==> all steps passed in {}", ms(start.elapsed()));
    Ok(d)
}

/// The last lines of every speaker's log, for error messages.
fn speaker_logs(d: &Demo) -> String {
    d.running
        .procs
        .iter()
        .filter(|p| p.name.starts_with("speaker "))
        .map(|p| demo::with_log(&p.name, &p.log, 8))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn failover(d: &mut Demo) -> Result<()> {
    let t = step(&format!(
        "creating IPPool {DEMO_POOL} (192.0.2.100-192.0.2.120 on eth0), Service {DEMO_NAMESPACE}/{DEMO_SERVICE} \
         (LoadBalancer, port 80) and its EndpointSlice (a ready endpoint on every node)"
    ));
    demo::create_demo_objects(&d.kb, &d.lab).await?;
    let svcs: Api<Service> = Api::namespaced(d.kb.client().await, DEMO_NAMESPACE);
    let ips = demo::eventually(
        Duration::from_secs(15),
        "an IP in the Service's status",
        || async {
            let v = demo::service_ips(&svcs.get(DEMO_SERVICE).await.ok()?);
            (!v.is_empty()).then_some(v)
        },
    )
    .await
    .map_err(|e| anyhow!(demo::with_log(e, &d.kb.dir.join("ferrite-lb-controller.log"), 20)))?;
    let vip = ips[0].clone();
    d.vip = vip.clone();
    eprintln!("    VIP {vip} in the Service's status after {}", ms(t.elapsed()));

    let first = demo::eventually(
        Duration::from_secs(20),
        "a ServiceL2Status naming the announcing node",
        || demo::announcing_node(&svcs, DEMO_SERVICE),
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", speaker_logs(d)))?;
    eprintln!(
        "    elected node: {first} (ServiceL2Status {DEMO_SERVICE}) after {}",
        ms(t.elapsed())
    );
    let first_node = d
        .lab
        .nodes
        .iter()
        .position(|n| n.name == first)
        .with_context(|| format!("the announcing node {first} is not a lab node"))?;
    let old_mac = d.lab.nodes[first_node].mac.clone();
    demo::eventually(
        Duration::from_secs(10),
        &format!("an ARP answer for {vip} from {first} ({old_mac})"),
        || async { d.lab.arping(&vip).filter(|m| *m == old_mac) },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", speaker_logs(d)))?;
    println!(
        "client 192.0.2.2 -> arping {vip}: answered by {first} ({old_mac}), {} after the Service was created",
        ms(t.elapsed())
    );

    let t = step(&format!("killing the speaker on {first} (SIGKILL)"));
    let speaker = demo::speaker_name(&first);
    d.running
        .get_mut(&speaker)
        .with_context(|| format!("no process {speaker}"))?
        .crash();
    let killed = Instant::now();
    let new_mac = demo::eventually(
        Duration::from_secs(10),
        &format!("the client's neighbour entry for {vip} to move away from {old_mac}"),
        || async { d.lab.client_neighbour(&vip).filter(|m| *m != old_mac) },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", speaker_logs(d)))?;
    let moved = killed.elapsed();
    let second = d
        .lab
        .node_by_mac(&new_mac)
        .with_context(|| format!("the new MAC {new_mac} is not a lab node's"))?
        .name
        .clone();
    println!(
        "failover: {first} -> {second} in {} (the client learnt {new_mac} from the gratuitous ARP)",
        ms(moved)
    );
    let answer = d.lab.arping(&vip);
    println!(
        "client 192.0.2.2 -> arping {vip}: answered by {} ({})",
        answer
            .as_deref()
            .and_then(|m| d.lab.node_by_mac(m))
            .map_or("nobody", |n| n.name.as_str()),
        answer.as_deref().unwrap_or("-")
    );
    if answer.as_deref() != Some(new_mac.as_str()) {
        bail!(
            "after the failover {vip} is not answered by {second}\n{}",
            speaker_logs(d)
        );
    }
    demo::eventually(
        Duration::from_secs(10),
        &format!("the ServiceL2Status to name {second}"),
        || async {
            (demo::announcing_node(&svcs, DEMO_SERVICE).await.as_deref() == Some(second.as_str()))
                .then_some(())
        },
    )
    .await
    .map_err(|e| anyhow!("{e}\n{}", speaker_logs(d)))?;
    eprintln!(
        "    ServiceL2Status {DEMO_SERVICE}: node {second}, {}",
        ms(t.elapsed())
    );

    step(&format!(
        "restarting the speaker on {first}; the VIP must stay on {second} (no flip-back)"
    ));
    let p = demo::start_speaker(&d.lab, first_node, &d.lb)?;
    d.running.replace(p);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let owner = demo::announcing_node(&svcs, DEMO_SERVICE).await;
    let answer = d.lab.arping(&vip);
    if owner.as_deref() != Some(second.as_str()) || answer.as_deref() != Some(new_mac.as_str()) {
        bail!(
            "flip-back: 4 s after {first}'s speaker came back the ServiceL2Status names {owner:?} and {vip} is answered by {answer:?} (want {second}, {new_mac})\n{}",
            speaker_logs(d)
        );
    }
    println!("after 4 s: {vip} still announced by {second} ({new_mac}); {first} is back and did not take it");
    Ok(())
}

/// The name the demo Service gets, under the embedded zone.
const DEMO_ZONE: &str = "demo.example.test.";
const DEMO_HOSTNAME: &str = "web.demo.example.test";

/// ferrite-dns: an embedded DNSZone, the demo Service annotated the way external-dns users already do
/// (the legacy `external-dns.alpha.kubernetes.io/` prefix), and `dig` answering the VIP.
async fn dns(d: &mut Demo) -> Result<()> {
    let t = step(&format!(
        "starting ferrite-dns controller on the host (embedded DNS server on 127.0.0.1), DNSZone {DEMO_ZONE}, \
         annotating {DEMO_NAMESPACE}/{DEMO_SERVICE} with external-dns.alpha.kubernetes.io/hostname={DEMO_HOSTNAME}"
    ));
    let (proc, listen) = demo::start_dns(&d.kb).await?;
    d.running.procs.push(proc);
    d.dns = Some(listen);
    demo::create_dns_objects(&d.kb, DEMO_ZONE, DEMO_HOSTNAME).await?;
    let vip = d.vip.clone();
    let answer = demo::eventually(
        Duration::from_secs(15),
        &format!("dig {DEMO_HOSTNAME} at the embedded server to answer {vip}"),
        || async { demo::dig(listen, DEMO_HOSTNAME, "A").filter(|a| a.contains(&vip)) },
    )
    .await
    .map_err(|e| {
        anyhow!(demo::with_log(
            e,
            &d.kb.dir.join("ferrite-dns-controller.log"),
            20
        ))
    })?;
    println!(
        "dig @{} -p {} {DEMO_HOSTNAME} A -> {} ({} after the annotation)",
        listen.ip(),
        listen.port(),
        answer.join(", "),
        ms(t.elapsed())
    );
    Ok(())
}

/// The demo Certificate's Secret, in the demo namespace.
const DEMO_TLS_SECRET: &str = "web-tls";

/// ferrite-certs: a private CA bootstrapped from a selfSigned ClusterIssuer, a certificate for the demo
/// name issued by it, checked with openssl.
async fn certs(d: &mut Demo) -> Result<()> {
    let t = step(&format!(
        "starting ferrite-certs controller on the host; ClusterIssuer demo-selfsigned -> CA Certificate \
         ferrite-system/demo-ca -> ClusterIssuer demo-ca -> Certificate {DEMO_NAMESPACE}/{DEMO_TLS_SECRET} for {DEMO_HOSTNAME}"
    ));
    let (proc, admin) = demo::start_certs(&d.kb).await?;
    d.running.procs.push(proc);
    d.certs = Some(admin);
    demo::create_certs_objects(&d.kb, DEMO_HOSTNAME, DEMO_TLS_SECRET).await?;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(d.kb.client().await, DEMO_NAMESPACE);
    let log = d.kb.dir.join("ferrite-certs-controller.log");
    let pair = demo::eventually(
        Duration::from_secs(30),
        &format!("Secret {DEMO_NAMESPACE}/{DEMO_TLS_SECRET} to hold a certificate and ca.crt"),
        || async {
            let s = secrets.get_opt(DEMO_TLS_SECRET).await.ok()??;
            let data = s.data?;
            let crt = data.get("tls.crt")?.0.clone();
            let ca = data.get("ca.crt")?.0.clone();
            (!crt.is_empty() && !ca.is_empty()).then_some((crt, ca))
        },
    )
    .await
    .map_err(|e| anyhow!(demo::with_log(e, &log, 20)))?;
    let elapsed = t.elapsed();
    let dir = d.kb.dir.join("demo-certs");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("tls.crt"), &pair.0)?;
    std::fs::write(dir.join("ca.crt"), &pair.1)?;
    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.join("ca.crt"))
        .arg(dir.join("tls.crt"))
        .output()
        .context("running openssl verify")?;
    if !verify.status.success() {
        bail!(
            "openssl verify of the demo certificate failed: {}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
    }
    let show = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-enddate",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(dir.join("tls.crt"))
        .output()
        .context("running openssl x509")?;
    println!(
        "openssl verify -CAfile ca.crt tls.crt -> OK ({} after the objects were created)",
        ms(elapsed)
    );
    for line in String::from_utf8_lossy(&show.stdout).lines() {
        println!("    {}", line.trim());
    }
    Ok(())
}

fn print_hints(d: &Demo) {
    println!();
    println!("Ferrite is running against the box. In another terminal:");
    println!("  export KUBECONFIG={}", d.kb.kubeconfig.display());
    println!(
        "  export PATH={}:$PATH",
        ferrite_e2e::cache_dir().join("bin").display()
    );
    println!("  kubectl get ippools");
    println!("  kubectl -n {DEMO_NAMESPACE} get svc {DEMO_SERVICE} -o yaml");
    println!("  kubectl get servicel2statuses -A   # who announces each Service");
    println!("  kubectl get events -A");
    println!("  {}", demo::arping_command(&d.lab, &d.vip));
    println!("  curl -s http://{}/metrics | grep ferrite_", d.lb.admin);
    if let Some(dns) = d.dns {
        println!("  kubectl get dnszones");
        println!("  dig @{} -p {} {DEMO_HOSTNAME}", dns.ip(), dns.port());
    }
    if let Some(certs) = d.certs {
        println!("  kubectl get certificates,clusterissuers -A");
        println!("  kubectl -n {DEMO_NAMESPACE} get secret {DEMO_TLS_SECRET} -o yaml");
        println!("  curl -s http://{certs}/metrics | grep ferrite_certs_certificate");
    }
    println!(
        "Logs: {} (API server, controller) and {} (speakers).",
        d.kb.dir.display(),
        d.lab.dir().display()
    );
    for hint in &d.running.hints {
        println!("  {hint}");
    }
    println!("Ctrl-C to stop (everything this demo started is stopped, by PID, and the namespaces removed).");
}
