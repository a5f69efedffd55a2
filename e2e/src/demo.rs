//! Steps of `make demo`, kept in the library so the box tests can run the same steps.

use crate::{
    KubeBox, Supervised,
    netlab::NetLab,
    process::{free_port, tail},
};
use anyhow::{Context, Result, bail};
use k8s_openapi::{
    api::core::v1::{Namespace, Service},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
};
use serde_json::json;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

/// The repository root (the demo and tests run from a checkout).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Applies every CRD under crds/ and waits until each is Established.
pub async fn apply_crds(kb: &KubeBox) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(kb.client().await);
    let dir = repo_root().join("crds");
    let mut names = vec![];
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let crd: CustomResourceDefinition = serde_yaml_from(&path)?;
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply("ferrite-demo").force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {}", path.display()))?;
        names.push(name);
    }
    wait_established(kb, &names).await
}

/// The names of the CRDs under crds/ (the ones the chart's subcharts render too).
pub fn crd_names() -> Result<Vec<String>> {
    let dir = repo_root().join("crds");
    let mut names = vec![];
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) == Some("yaml") {
            let crd: CustomResourceDefinition = serde_yaml_from(&path)?;
            names.push(crd.metadata.name.context("CRD without a name")?);
        }
    }
    Ok(names)
}

/// Waits until each CRD of `names` is Established (served).
pub async fn wait_established(kb: &KubeBox, names: &[String]) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(kb.client().await);
    for name in names {
        let mut established = false;
        for _ in 0..100 {
            let crd = api.get(name).await?;
            established = crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(established, "CRD {name} was not Established within 10 s");
    }
    Ok(())
}

fn serde_yaml_from<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(serde_json::from_value(value)?)
}

/// Installs the umbrella chart into `ferrite-system` with a real helm (the CRDs from the subcharts' templates,
/// RBAC, the gossip Secret, the Deployments and DaemonSets: nothing runs them in the box, the demo and
/// the tests start the controllers as processes authenticated as the chart's ServiceAccounts).
pub async fn install_chart(kb: &KubeBox) -> Result<()> {
    let gossip = create_gossip_secret(kb).await?;
    let out = kb
        .helm()
        .args(["upgrade", "--install", "ferrite"])
        .arg(repo_root().join("charts/ferrite"))
        .args(["--namespace", "ferrite-system", "--create-namespace"])
        .args(["--set", &gossip])
        // CRDs an earlier step of the same box applied from crds/ (apply_crds) carry no Helm ownership
        // metadata; the release adopts them (docs/install.md, "Upgrade").
        .arg("--take-ownership")
        .output()
        .context("running helm (e2e/scripts/install-deps.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The release applied the CRDs (crds.enabled); wait until they are served. Applying them again here
    // would take their fields from helm's field manager, and the next `helm upgrade` would conflict.
    wait_established(kb, &crd_names()?).await
}

/// The one-time step of docs/loadbalancer.md before installing the chart: namespace `ferrite-system` and
/// Secret `ferrite-lb-gossip` with `key=$(openssl rand -hex 32)`, each created only if missing (so the key
/// stays the same across installs and upgrades). Returns the chart value that names the key: the Secret,
/// or, for a Secret an older chart release created itself, its key (so the upgrade keeps it).
pub async fn create_gossip_secret(kb: &KubeBox) -> Result<String> {
    let ns: Api<Namespace> = Api::all(kb.client().await);
    if ns.get_opt("ferrite-system").await?.is_none() {
        let out = kb
            .kubectl()
            .args(["create", "namespace", "ferrite-system"])
            .output()?;
        anyhow::ensure!(
            out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
            "kubectl create namespace ferrite-system: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(kb.client().await, "ferrite-system");
    if let Some(existing) = secrets.get_opt("ferrite-lb-gossip").await? {
        let by_helm = existing
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/managed-by"))
            .is_some_and(|m| m == "Helm");
        let key = existing.data.as_ref().and_then(|d| d.get("key"));
        return Ok(match key {
            Some(k) if by_helm => format!("loadbalancer.speaker.gossipKey={}", String::from_utf8_lossy(&k.0)),
            _ => "loadbalancer.speaker.gossipSecret=ferrite-lb-gossip".into(),
        });
    }
    let key = std::process::Command::new("openssl")
        .args(["rand", "-hex", "32"])
        .output()
        .context("running openssl rand")?;
    anyhow::ensure!(key.status.success(), "openssl rand -hex 32 failed");
    let key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    let out = kb
        .kubectl()
        .args([
            "-n",
            "ferrite-system",
            "create",
            "secret",
            "generic",
            "ferrite-lb-gossip",
        ])
        .arg(format!("--from-literal=key={key}"))
        .output()
        .context("running kubectl")?;
    anyhow::ensure!(
        out.status.success() || String::from_utf8_lossy(&out.stderr).contains("AlreadyExists"),
        "kubectl create secret generic ferrite-lb-gossip: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok("loadbalancer.speaker.gossipSecret=ferrite-lb-gossip".into())
}

/// Processes the demo started, and lines telling the user what to try.
#[derive(Debug, Default)]
pub struct Running {
    /// The processes, stopped by PID on [`Running::stop`] (or when the demo dies).
    pub procs: Vec<Supervised>,
    /// What to try.
    pub hints: Vec<String>,
}

impl Running {
    /// The process named `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Supervised> {
        self.procs.iter_mut().find(|p| p.name == name)
    }

    /// Replaces the process named `p.name` (or adds it).
    pub fn replace(&mut self, p: Supervised) {
        match self.procs.iter().position(|q| q.name == p.name) {
            Some(i) => self.procs[i] = p,
            None => self.procs.push(p),
        }
    }

    /// Stops every process, newest first.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

/// Name of the speaker process of `node` in [`Running::procs`].
pub fn speaker_name(node: &str) -> String {
    format!("speaker {node}")
}

/// Name of the controller process in [`Running::procs`].
pub const CONTROLLER: &str = "ferrite-lb controller";

/// The load balancer's pieces as the demo runs them.
#[derive(Debug, Clone)]
pub struct Lb {
    /// The `ferrite-lb` binary.
    pub bin: PathBuf,
    /// Kubeconfig of ServiceAccount `ferrite-system/ferrite-lb-controller`.
    pub controller_kubeconfig: PathBuf,
    /// Kubeconfig of ServiceAccount `ferrite-system/ferrite-lb-speaker`.
    pub speaker_kubeconfig: PathBuf,
    /// The controller's admin address (metrics, health).
    pub admin: SocketAddr,
}

/// A binary of the workspace, found next to the running executable (`cargo build --workspace --bins`
/// puts them all in one directory).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the demo's own path")?;
    let path = exe
        .parent()
        .context("the demo's path has no directory")?
        .join(name);
    if !path.is_file() {
        bail!(
            "{} not found: run `make demo` (it builds the binaries first)",
            path.display()
        );
    }
    Ok(path)
}

/// Finds `ferrite-lb` and mints the kubeconfigs of the chart's ServiceAccounts (the chart must be installed).
pub async fn prepare_lb(kb: &KubeBox) -> Result<Lb> {
    let bin = sibling_binary("ferrite-lb")?;
    let controller_kubeconfig = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-controller")
        .await
        .context("minting the controller's ServiceAccount kubeconfig")?;
    let speaker_kubeconfig = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-lb-speaker")
        .await
        .context("minting the speaker's ServiceAccount kubeconfig")?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    Ok(Lb {
        bin,
        controller_kubeconfig,
        speaker_kubeconfig,
        admin,
    })
}

/// Starts the controllers that exist: `ferrite-lb controller` on the host (waits for /readyz) and a
/// `ferrite-lb speaker` in every node namespace of `lab`, all as the chart's ServiceAccounts.
pub async fn start_controllers(kb: &KubeBox, lab: &NetLab, lb: &Lb) -> Result<Running> {
    let mut running = Running::default();
    let controller = Supervised::spawn(
        CONTROLLER,
        &lb.bin,
        &[
            "controller".into(),
            format!("--kubeconfig={}", lb.controller_kubeconfig.display()),
            format!("--admin-addr={}", lb.admin),
            "--lease-namespace=ferrite-system".into(),
        ],
        &[("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")],
        &kb.dir.join("ferrite-lb-controller.log"),
    )?;
    running.procs.push(controller);
    wait_ready(running.get_mut(CONTROLLER).context("controller")?, lb.admin).await?;
    for i in 0..lab.nodes.len() {
        running.procs.push(start_speaker(lab, i, lb)?);
    }
    Ok(running)
}

/// Arguments of `ferrite-lb speaker` for a lab node, as the chart would run it (its ServiceAccount's
/// kubeconfig, the chart's gossip Secret in ferrite-system; admin on the namespace's own loopback).
pub fn speaker_args(kubeconfig: &std::path::Path, node: &str) -> Vec<String> {
    vec![
        "speaker".into(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--node-name={node}"),
        "--admin-addr=127.0.0.1:9091".into(),
        "--namespace=ferrite-system".into(),
        "--gossip-secret=ferrite-lb-gossip".into(),
    ]
}

/// Starts the speaker of node `i` inside its network namespace.
pub fn start_speaker(lab: &NetLab, i: usize, lb: &Lb) -> Result<Supervised> {
    let n = &lab.nodes[i];
    lab.spawn_in(
        &n.ns,
        &speaker_name(&n.name),
        &lb.bin,
        &speaker_args(&lb.speaker_kubeconfig, &n.name),
        &[("FERRITE_LOG_LEVEL", "info,ferrite_lb=debug")],
    )
}

/// Namespace of the demo's Service.
pub const DEMO_NAMESPACE: &str = "demo";
/// Name of the demo's Service.
pub const DEMO_SERVICE: &str = "web";
/// Name of the demo's IPPool.
pub const DEMO_POOL: &str = "demo-lan";

/// The EndpointSlice API the server serves: `discovery.k8s.io/v1` from 1.21, `v1beta1` before (the box).
pub async fn endpointslice_version(client: &Client) -> Result<&'static str> {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => Ok("v1"),
        Ok(_) => Ok("v1beta1"),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok("v1beta1"),
        Err(e) => Err(e).context("discovering discovery.k8s.io/v1"),
    }
}

/// Creates the demo's objects: IPPool `demo-lan` (192.0.2.100-192.0.2.120 on `eth0`), namespace `demo`,
/// Service `demo/web` (LoadBalancer, port 80) and the EndpointSlice an endpoint controller would write:
/// one ready endpoint on every lab node. Idempotent (server-side apply).
pub async fn create_demo_objects(kb: &KubeBox, lab: &NetLab) -> Result<()> {
    let client = kb.client().await;
    let pp = PatchParams::apply("ferrite-demo").force();
    let pool_res = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lb.ferrite.dev", "v1alpha1", "IPPool"),
        "ippools",
    );
    let pools: Api<DynamicObject> = Api::all_with(client.clone(), &pool_res);
    let pool = json!({"apiVersion": "lb.ferrite.dev/v1alpha1", "kind": "IPPool",
        "metadata": {"name": DEMO_POOL},
        "spec": {"addresses": ["192.0.2.100-192.0.2.120"], "l2": {"interfaces": ["eth0"]}}});
    pools
        .patch(DEMO_POOL, &pp, &Patch::Apply(&pool))
        .await
        .context("creating IPPool demo-lan")?;

    let nss: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": DEMO_NAMESPACE}});
    nss.patch(DEMO_NAMESPACE, &pp, &Patch::Apply(&ns))
        .await
        .context("creating namespace demo")?;

    let svcs: Api<Service> = Api::namespaced(client.clone(), DEMO_NAMESPACE);
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": DEMO_SERVICE},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}], "selector": {"app": "web"}}});
    svcs.patch(DEMO_SERVICE, &pp, &Patch::Apply(&svc))
        .await
        .context("creating Service demo/web")?;

    let version = endpointslice_version(&client).await?;
    let slice_res = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
        "endpointslices",
    );
    let slices: Api<DynamicObject> = Api::namespaced_with(client, DEMO_NAMESPACE, &slice_res);
    let endpoints: Vec<_> = lab
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let mut e = json!({
                "addresses": [format!("198.51.100.{}", 10 + i)], "conditions": {"ready": true},
                "topology": {"kubernetes.io/hostname": n.name},
            });
            // v1beta1 on 1.20 carries the node in topology; nodeName is behind a feature gate there.
            if version == "v1" {
                e["nodeName"] = json!(n.name);
            }
            e
        })
        .collect();
    let slice = json!({"apiVersion": format!("discovery.k8s.io/{version}"), "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": DEMO_SERVICE}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": [{"port": 8080, "protocol": "TCP"}]});
    slices
        .patch("web-1", &pp, &Patch::Apply(&slice))
        .await
        .context("creating EndpointSlice demo/web-1")?;
    Ok(())
}

/// The IPs in a Service's status.
pub fn service_ips(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|i| i.iter().filter_map(|x| x.ip.clone()).collect())
        .unwrap_or_default()
}

/// The node that announces Service `name`: `spec.node` of its `ServiceL2Status` (same namespace and
/// name, written by the announcing speaker; `kubectl get servicel2statuses`). None while nobody does.
pub async fn announcing_node(svcs: &Api<Service>, name: &str) -> Option<String> {
    let ns = svcs.namespace()?.to_string();
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("lb.ferrite.dev", "v1alpha1", "ServiceL2Status"),
        "servicel2statuses",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(svcs.clone().into_client(), &ns, &ar);
    let st = api.get_opt(name).await.ok()??;
    st.data.get("spec")?.get("node")?.as_str().map(String::from)
}

/// Polls `f` every 50 ms until it returns Some; an error naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::wait::poll(limit, Duration::from_millis(50), what, f).await
}

/// The arping command a user would type in the client namespace (iputils and Habets' arping spell the
/// interface flag differently).
pub fn arping_command(lab: &NetLab, ip: &str) -> String {
    let habets = std::process::Command::new("arping")
        .arg("--help")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("Habets")
                || String::from_utf8_lossy(&o.stderr).contains("Habets")
        })
        .unwrap_or(false);
    let flag = if habets { "-i" } else { "-I" };
    format!(
        "sudo ip netns exec {} arping -c 3 {flag} eth0 {ip}",
        lab.client_ns
    )
}

/// `what` followed by the last lines of `log`, for error messages.
pub fn with_log(what: impl std::fmt::Display, log: &Path, lines: usize) -> String {
    format!(
        "{what}\n--- last lines of {}:\n{}",
        log.display(),
        tail(log, lines)
    )
}

/// Starts `ferrite-dns controller` on the host as the chart's ServiceAccount `ferrite-system/ferrite-dns`,
/// its embedded server on 127.0.0.1 (a free port); waits for /readyz. Returns the process and the DNS address.
pub async fn start_dns(kb: &KubeBox) -> Result<(Supervised, SocketAddr)> {
    let bin = sibling_binary("ferrite-dns")?;
    let kubeconfig = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-dns")
        .await
        .context("minting ferrite-dns's ServiceAccount kubeconfig")?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut p = Supervised::spawn(
        "ferrite-dns controller",
        &bin,
        &[
            "controller".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--admin-addr={admin}"),
            format!("--dns-listen={listen}"),
            "--lease-namespace=ferrite-system".into(),
        ],
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join("ferrite-dns-controller.log"),
    )?;
    wait_ready(&mut p, admin).await?;
    Ok((p, listen))
}

/// Starts `ferrite-certs controller` on the host as the chart's ServiceAccount `ferrite-certs`, its
/// HTTP-01 listener on 127.0.0.1. Returns the process and its admin address.
pub async fn start_certs(kb: &KubeBox) -> Result<(Supervised, SocketAddr)> {
    let bin = sibling_binary("ferrite-certs")?;
    let kubeconfig = kb
        .service_account_kubeconfig("ferrite-system", "ferrite-certs")
        .await
        .context("minting ferrite-certs's ServiceAccount kubeconfig")?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let http01: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut p = Supervised::spawn(
        "ferrite-certs controller",
        &bin,
        &[
            "controller".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--admin-addr={admin}"),
            format!("--http01-listen={http01}"),
            "--lease-name=ferrite-certs-controller".into(),
            "--lease-namespace=ferrite-system".into(),
            "--cluster-resource-namespace=ferrite-system".into(),
        ],
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join("ferrite-certs-controller.log"),
    )?;
    wait_ready(&mut p, admin).await?;
    Ok((p, admin))
}

/// A private CA the way docs/certs.md bootstraps one (a selfSigned ClusterIssuer, an `isCA` Certificate
/// in ferrite-system, a `ca` ClusterIssuer on its Secret) and a Certificate `secret` for `hostname` in
/// the demo namespace, issued by that CA.
pub async fn create_certs_objects(kb: &KubeBox, hostname: &str, secret: &str) -> Result<()> {
    let client = kb.client().await;
    let api = |kind: &str, plural: &str, ns: Option<&str>| {
        let gvk = GroupVersionKind::gvk("certs.ferrite.dev", "v1alpha1", kind);
        let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
        match ns {
            Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
            None => Api::<DynamicObject>::all_with(client.clone(), &ar),
        }
    };
    let objects = [
        (
            api("ClusterIssuer", "clusterissuers", None),
            json!({"apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "ClusterIssuer",
                   "metadata": {"name": "demo-selfsigned"}, "spec": {"selfSigned": {}}}),
        ),
        (
            api("Certificate", "certificates", Some("ferrite-system")),
            json!({"apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "Certificate",
                   "metadata": {"name": "demo-ca", "namespace": "ferrite-system"},
                   "spec": {"isCA": true, "commonName": "Ferrite demo CA", "secretName": "demo-ca",
                            "duration": "87600h", "privateKey": {"algorithm": "ECDSA", "size": 256},
                            "issuerRef": {"name": "demo-selfsigned", "kind": "ClusterIssuer"}}}),
        ),
        (
            api("ClusterIssuer", "clusterissuers", None),
            json!({"apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "ClusterIssuer",
                   "metadata": {"name": "demo-ca"}, "spec": {"ca": {"secretName": "demo-ca"}}}),
        ),
        (
            api("Certificate", "certificates", Some(DEMO_NAMESPACE)),
            json!({"apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "Certificate",
                   "metadata": {"name": secret, "namespace": DEMO_NAMESPACE},
                   "spec": {"secretName": secret, "dnsNames": [hostname],
                            "privateKey": {"algorithm": "ECDSA"},
                            "issuerRef": {"name": "demo-ca", "kind": "ClusterIssuer"}}}),
        ),
    ];
    for (api, obj) in objects {
        let obj: DynamicObject = serde_json::from_value(obj)?;
        let name = obj.metadata.name.clone().unwrap_or_default();
        if api.get_opt(&name).await?.is_none() {
            api.create(&Default::default(), &obj)
                .await
                .with_context(|| format!("creating {name}"))?;
        }
    }
    Ok(())
}

/// Waits up to 30 s for `p`'s admin server at `admin` to answer /readyz 200; fails with its log tail
/// when it exits or is not ready in time.
async fn wait_ready(p: &mut Supervised, admin: SocketAddr) -> Result<()> {
    crate::wait::ready(p, admin, Duration::from_secs(30)).await
}

/// An embedded DNSZone `zone` and the demo Service annotated with external-dns's legacy hostname key.
pub async fn create_dns_objects(kb: &KubeBox, zone: &str, hostname: &str) -> Result<()> {
    let client = kb.client().await;
    let gvk = GroupVersionKind::gvk("dns.ferrite.dev", "v1alpha1", "DNSZone");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "dnszones");
    let zones: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let z: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "dns.ferrite.dev/v1alpha1", "kind": "DNSZone",
        "metadata": {"name": "demo"},
        "spec": {"zone": zone, "provider": {"embedded": {}}}
    }))?;
    if zones.get_opt("demo").await?.is_none() {
        zones
            .create(&Default::default(), &z)
            .await
            .context("creating DNSZone demo")?;
    }
    let svcs: Api<Service> = Api::namespaced(client, DEMO_NAMESPACE);
    let patch = json!({"metadata": {"annotations": {"external-dns.alpha.kubernetes.io/hostname": hostname}}});
    svcs.patch(DEMO_SERVICE, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .context("annotating the demo Service")?;
    Ok(())
}

/// `dig @server name type +short` (Debian's bind9-dnsutils): the answers, or None when dig fails.
pub fn dig(server: SocketAddr, name: &str, rtype: &str) -> Option<Vec<String>> {
    let out = std::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args([
            "-p",
            &server.port().to_string(),
            name,
            rtype,
            "+short",
            "+time=1",
            "+tries=1",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .collect();
    (!v.is_empty()).then_some(v)
}
