//! The chart's Prometheus integration, against the real tools from Debian's `prometheus` package:
//!
//! - the PrometheusRule the chart renders passes `promtool check rules`, and `promtool test rules` with the
//!   unit tests in `tests/prometheus/` (every alert firing, and not firing on neighbouring series);
//! - a real `prometheus` on 127.0.0.1 scrapes every controller through a static config built from the
//!   chart's `prometheus.io/scrape|port|path` pod annotations, and a PromQL query over its HTTP API returns
//!   each controller's metrics. The controllers run on the box as their chart ServiceAccounts (the chart is
//!   installed with helm first), the ferrite-lb speaker too (on an excluded Node, so it never announces);
//!   each "pod" gets its own loopback address (127.77.0.N) so every one listens on the port its annotation
//!   names, as pods do.

use anyhow::{Context, Result, bail};
use ferrite_e2e::{
    KubeBox, Supervised,
    chart::{ScrapeTarget, scrape_targets, template, workspace_binary},
    demo::{install_chart, repo_root},
    http_get,
    process::free_port,
    wait,
};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.is_file(),
        "{} not found: run e2e/scripts/install-deps.sh (it installs Debian's prometheus package)",
        path.display()
    );
    path
}

/// The rule groups of the chart's PrometheusRule rendered with `args`, as a Prometheus rule file.
fn rule_file(args: &[&str]) -> String {
    let mut all = vec![
        "--set",
        "prometheus.rules.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ];
    all.extend_from_slice(args);
    let rendered = template(&all).unwrap_or_else(|e| panic!("{e:#}"));
    let rule: Value = serde_yaml::from_str(&rendered).expect("the PrometheusRule is YAML");
    assert_eq!(rule["kind"], "PrometheusRule");
    serde_yaml::to_string(&rule["spec"]).expect("spec serialises")
}

fn group_names(rules: &str) -> BTreeSet<String> {
    let v: Value = serde_yaml::from_str(rules).expect("rules parse");
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter_map(|g| g["name"].as_str().map(String::from))
        .collect()
}

fn alert_names(rules: &str) -> BTreeSet<String> {
    let v: Value = serde_yaml::from_str(rules).expect("rules parse");
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `promtool check rules` and `promtool test rules <tests>` on `rules`; returns the alerts the unit
/// tests name.
fn check_and_test(rules: &str, tests: &[&str]) -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rules.yaml"), rules).expect("rules written");
    promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    let mut tested = BTreeSet::new();
    for t in tests {
        let src = repo_root().join("e2e/tests/prometheus").join(t);
        let text = std::fs::read_to_string(&src).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
        let v: Value = serde_yaml::from_str(&text).expect("unit tests parse");
        for case in v["tests"].as_array().expect("tests") {
            for a in case["alert_rule_test"].as_array().cloned().unwrap_or_default() {
                let name = a["alertname"].as_str().expect("alertname").to_string();
                if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                    tested.insert(name);
                }
            }
        }
        std::fs::write(dir.path().join(t), text).expect("copied");
    }
    if !tests.is_empty() {
        let mut args = vec!["test", "rules"];
        args.extend_from_slice(tests);
        promtool(dir.path(), &args);
    }
    tested
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let rules = rule_file(&[]);
    let mut tests = vec!["rules.test.yaml"];
    // ferrite-ingress's 5xx alert renders with the ingress subchart (ingress.enabled).
    if group_names(&rules).contains("ferrite-ingress") {
        tests.push("rules-ingress.test.yaml");
    }
    let tested = check_and_test(&rules, &tests);
    let alerts = alert_names(&rules);
    for a in &alerts {
        assert!(
            tested.contains(a),
            "alert {a} has no promtool unit test that expects it to fire (e2e/tests/prometheus/)"
        );
    }
    for a in [
        "FerriteReconcileErrors",
        "FerriteSpeakerNotAnnouncing",
        "FerriteDNSProviderUnreachable",
        "FerriteCertificateExpiringSoon",
        "FerriteIngressHigh5xxRatio",
    ] {
        assert!(alerts.contains(a), "{a} missing from {alerts:?}");
    }

    // The groups follow the enabled controllers.
    let without_dns = rule_file(&["--set", "dns.enabled=false"]);
    assert!(
        !group_names(&without_dns).contains("ferrite-dns"),
        "{without_dns}"
    );
    assert!(group_names(&without_dns).contains("ferrite-certs"));
    let only_lb = rule_file(&[
        "--set",
        "dns.enabled=false",
        "--set",
        "certs.enabled=false",
        "--set",
        "ingress.enabled=false",
    ]);
    assert_eq!(
        group_names(&only_lb),
        BTreeSet::from(["ferrite-reconcile".into(), "ferrite-lb".into()])
    );
    // Without ingress the core unit tests still pass on their own.
    check_and_test(&only_lb, &[]);
    // The thresholds are values.
    let tight = rule_file(&["--set", "prometheus.rules.certificateExpiryDays=30"]);
    assert!(tight.contains("< 30 * 86400"), "{tight}");
}

#[test]
fn prometheus_rule_and_service_monitors_render_when_enabled() {
    let off = template(&[]).expect("renders");
    assert!(!off.contains("kind: PrometheusRule") && !off.contains("kind: ServiceMonitor"));
    let on = template(&[
        "--set",
        "prometheus.rules.enabled=true",
        "--set",
        "prometheus.serviceMonitor.enabled=true",
        "--set",
        "prometheus.serviceMonitor.labels.release=kube-prometheus-stack",
    ])
    .expect("renders");
    let docs = ferrite_e2e::chart::documents(&on);
    let monitors: Vec<Value> = docs
        .iter()
        .map(|d| d.value().expect("YAML"))
        .filter(|v| v["kind"] == "ServiceMonitor")
        .collect();
    let names: BTreeSet<&str> = monitors
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str())
        .collect();
    for n in [
        "ferrite-lb-controller",
        "ferrite-lb-speaker",
        "ferrite-dns",
        "ferrite-certs",
        "ferrite-ingress",
    ] {
        assert!(names.contains(n), "ServiceMonitor {n}: {names:?}");
    }
    for m in &monitors {
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus-stack");
    }
    // Each metrics Service selects the pods of its workload, on the port of their scrape annotation.
    let targets = scrape_targets(&on).expect("annotations");
    for t in &targets {
        let name = t.workload.split('/').nth(1).expect("kind/name");
        let svc = docs
            .iter()
            .map(|d| d.value().expect("YAML"))
            .find(|v| v["kind"] == "Service" && v["metadata"]["name"] == format!("{name}-metrics"))
            .unwrap_or_else(|| panic!("no metrics Service for {name}"));
        assert_eq!(svc["spec"]["selector"]["app.kubernetes.io/name"], name);
        assert_eq!(svc["spec"]["ports"][0]["port"], u64::from(t.port), "{name}");
    }
}

/// One controller of the scrape test: the workload it stands for and how it was started.
struct Pod {
    target: ScrapeTarget,
    /// `127.77.0.N:<annotated port>`.
    addr: SocketAddr,
    proc: Supervised,
    /// A metric of this controller that the scrape must return.
    metric: &'static str,
}

async fn start_pod(
    kb: &KubeBox,
    targets: &[ScrapeTarget],
    workload: &str,
    n: u8,
    // Package and binary share the name (ferrite-lb, ...).
    bin: &str,
    args: impl FnOnce(SocketAddr, &Path) -> Vec<String>,
    metric: &'static str,
) -> Result<Pod> {
    let target = targets
        .iter()
        .find(|t| t.workload == workload)
        .with_context(|| format!("the chart renders no scrape annotations for {workload}"))?
        .clone();
    // The chart names each workload's ServiceAccount like the workload.
    let account = workload.split('/').nth(1).context("kind/name")?;
    let addr: SocketAddr = format!("127.77.0.{n}:{}", target.port).parse()?;
    let kubeconfig = kb.service_account_kubeconfig("ferrite-system", account).await?;
    let bin = tokio::task::spawn_blocking({
        let bin = bin.to_string();
        move || workspace_binary(&bin, &bin)
    })
    .await??;
    let mut proc = Supervised::spawn(
        workload,
        &bin,
        &args(addr, &kubeconfig),
        &[("FERRITE_LOG_LEVEL", "info")],
        &kb.dir.join(format!("scrape-{account}.log")),
    )?;
    wait::ready(&mut proc, addr, Duration::from_secs(60)).await?;
    Ok(Pod {
        target,
        addr,
        proc,
        metric,
    })
}

/// Creates Node `name` (Ready, InternalIP `ip`) labelled
/// `node.kubernetes.io/exclude-from-external-load-balancers`, so no speaker on it is ever elected.
async fn register_excluded_node(kb: &KubeBox, name: &str, ip: &str) -> Result<()> {
    let api: Api<Node> = Api::all(kb.client().await);
    let node: Node = serde_json::from_value(serde_json::json!({"metadata": {
        "name": name,
        "labels": {"node.kubernetes.io/exclude-from-external-load-balancers": "true"},
    }}))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let status = serde_json::json!({"status": {
        "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "scrape test node"}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    let labels = api.get(name).await?.metadata.labels.unwrap_or_default();
    if !labels.contains_key("node.kubernetes.io/exclude-from-external-load-balancers") {
        bail!("Node {name} exists without the exclude-from-external-load-balancers label: {labels:?}");
    }
    Ok(())
}

async fn query(prom: SocketAddr, promql: &str) -> Result<Vec<Value>> {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={promql}")).await?;
    if code != 200 {
        bail!("query {promql}: HTTP {code}: {body}");
    }
    let v: Value = serde_json::from_str(&body).with_context(|| format!("query {promql}: {body}"))?;
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn jobs_of(result: &[Value]) -> BTreeSet<String> {
    result
        .iter()
        .filter_map(|s| s["metric"]["job"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn real_prometheus_scrapes_every_controller_by_the_chart_annotations() {
    let kb = KubeBox::shared();
    install_chart(kb)
        .await
        .expect("helm install of the umbrella chart");
    let targets = scrape_targets(&template(&[]).expect("renders")).expect("annotations");

    let mut pods = vec![];
    let lb = start_pod(
        kb,
        &targets,
        "Deployment/ferrite-lb-controller",
        1,
        "ferrite-lb",
        |admin, kc| {
            vec![
                "controller".into(),
                format!("--kubeconfig={}", kc.display()),
                format!("--admin-addr={admin}"),
                "--lease-namespace=ferrite-system".into(),
                "--lease-name=ferrite-lb-scrape".into(),
            ]
        },
        "ferrite_lb_reconcile_total",
    )
    .await;
    pods.push(lb.expect("ferrite-lb controller starts"));
    let dns_listen = format!("127.77.0.2:{}", free_port().expect("port"));
    let dns = start_pod(
        kb,
        &targets,
        "Deployment/ferrite-dns",
        2,
        "ferrite-dns",
        |admin, kc| {
            vec![
                "controller".into(),
                format!("--kubeconfig={}", kc.display()),
                format!("--admin-addr={admin}"),
                format!("--dns-listen={dns_listen}"),
                "--lease-namespace=ferrite-system".into(),
                "--lease-name=ferrite-dns-scrape".into(),
            ]
        },
        // ferrite-dns's reconciles: embedded-zone passes (kind ZoneSet) and RFC2136 zone syncs (DNSZone).
        "ferrite_dns_reconcile_total",
    )
    .await;
    pods.push(dns.expect("ferrite-dns starts"));
    let certs = start_pod(
        kb,
        &targets,
        "Deployment/ferrite-certs",
        3,
        "ferrite-certs",
        |admin, kc| {
            vec![
                "controller".into(),
                format!("--kubeconfig={}", kc.display()),
                format!("--admin-addr={admin}"),
                // The chart's HTTP-01 port, on this pod's address.
                format!("--http01-listen={}:8089", admin.ip()),
                "--lease-namespace=ferrite-system".into(),
                "--lease-name=ferrite-certs-scrape".into(),
                "--cluster-resource-namespace=ferrite-system".into(),
            ]
        },
        "ferrite_certs_reconcile_total",
    )
    .await;
    pods.push(certs.expect("ferrite-certs starts"));
    let (http, https) = (free_port().expect("port"), free_port().expect("port"));
    let ingress = start_pod(
        kb,
        &targets,
        "Deployment/ferrite-ingress",
        4,
        "ferrite-ingress",
        |admin, kc| {
            vec![
                "controller".into(),
                format!("--kubeconfig={}", kc.display()),
                format!("--admin-addr={admin}"),
                format!("--http-listen={}:{http}", admin.ip()),
                format!("--https-listen={}:{https}", admin.ip()),
                "--lease-namespace=ferrite-system".into(),
                "--lease-name=ferrite-ingress-scrape".into(),
            ]
        },
        // Its snapshot builds (kind Ingress) and status writes (IngressStatus).
        "ferrite_ingress_reconcile_total",
    )
    .await;
    pods.push(ingress.expect("ferrite-ingress starts"));
    // The speaker, on a Node of its own that can never announce: it carries
    // node.kubernetes.io/exclude-from-external-load-balancers (ineligible for every Service whatever the
    // pools say) and this box has no IPPool, so the speaker sends no ARP/NDP on any interface. Its gossip
    // binds to the pod's loopback address.
    let speaker_node = "ferrite-scrape-speaker";
    register_excluded_node(kb, speaker_node, "127.77.0.5")
        .await
        .expect("the speaker's Node");
    let gossip_port = free_port().expect("port");
    let speaker = start_pod(
        kb,
        &targets,
        "DaemonSet/ferrite-lb-speaker",
        5,
        "ferrite-lb",
        |admin, kc| {
            vec![
                "speaker".into(),
                format!("--kubeconfig={}", kc.display()),
                format!("--admin-addr={admin}"),
                format!("--node-name={speaker_node}"),
                format!("--gossip-bind={}", admin.ip()),
                format!("--gossip-port={gossip_port}"),
                "--namespace=ferrite-system".into(),
                "--gossip-secret=ferrite-lb-gossip".into(),
            ]
        },
        // Registered when its gossip starts; it sees itself.
        "ferrite_lb_speaker_reconcile_total",
    )
    .await;
    pods.push(speaker.expect("ferrite-lb speaker starts"));

    // The kubernetes-pods job of a Prometheus, for these pods: one job per workload, the annotated port
    // and path.
    let mut config = String::from(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\nscrape_configs:\n",
    );
    for p in &pods {
        let job = p.target.workload.split('/').nth(1).expect("kind/name");
        config.push_str(&format!(
            "  - job_name: {job}\n    metrics_path: {}\n    static_configs: [{{targets: ['{}']}}]\n",
            p.target.path, p.addr
        ));
    }
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("prometheus.yml"), &config).expect("config written");
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port().expect("port"))
        .parse()
        .expect("addr");
    let mut prometheus = Supervised::spawn(
        "prometheus",
        &tool("prometheus"),
        &[
            format!("--config.file={}", dir.path().join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address={prom}"),
            "--log.level=warn".into(),
        ],
        &[],
        &kb.dir.join("prometheus.log"),
    )
    .expect("prometheus starts");

    let want_jobs: BTreeSet<String> = pods
        .iter()
        .map(|p| {
            p.target
                .workload
                .split('/')
                .nth(1)
                .expect("kind/name")
                .to_string()
        })
        .collect();
    let up = wait::poll(
        Duration::from_secs(60),
        Duration::from_millis(500),
        "every target up",
        || async {
            let up = query(prom, "up").await.ok()?;
            let ok: BTreeSet<String> = up
                .iter()
                .filter(|s| s["value"][1] == "1")
                .filter_map(|s| s["metric"]["job"].as_str().map(String::from))
                .collect();
            (ok == want_jobs).then_some(up)
        },
    )
    .await;
    if let Err(e) = up {
        panic!(
            "{e:#}\nconfig:\n{config}\nprometheus log:\n{}\nup: {:?}",
            prometheus.log_tail(20),
            query(prom, "up").await
        );
    }

    for p in &mut pods {
        let job = p
            .target
            .workload
            .split('/')
            .nth(1)
            .expect("kind/name")
            .to_string();
        let series = query(prom, p.metric).await.expect("query");
        assert!(
            jobs_of(&series).contains(&job),
            "{} from job {job}: {series:?}\n{} log:\n{}",
            p.metric,
            p.proc.name,
            p.proc.log_tail(20)
        );
    }
    let rss = query(prom, "process_resident_memory_bytes").await.expect("query");
    assert_eq!(
        jobs_of(&rss),
        want_jobs,
        "process_resident_memory_bytes of every job: {rss:?}"
    );
    for s in &rss {
        let bytes: f64 = s["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        assert!(bytes > 1e6, "a controller's RSS is more than 1 MB: {s}");
    }

    prometheus.stop(Duration::from_secs(5));
    for p in &mut pods {
        p.proc.stop(Duration::from_secs(5));
    }
    let nodes: Api<Node> = Api::all(kb.client().await);
    nodes
        .delete(speaker_node, &Default::default())
        .await
        .expect("the speaker's Node is deleted");
}

/// Every query of every dashboard (charts/ferrite/dashboards/, copied to docs/dashboards/) is valid
/// PromQL: each becomes a recording rule that `promtool check rules` parses, with the `$job` variable
/// replaced as Grafana does for "All". The chart's ConfigMaps carry the files unchanged.
#[test]
fn dashboards_are_valid_promql_and_shipped_as_sidecar_configmaps() {
    let dir = repo_root().join("charts/ferrite/dashboards");
    let mut rules = String::from("groups:\n  - name: dashboards\n    rules:\n");
    let mut names = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("dashboards dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let d: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        assert_eq!(d["uid"], name.as_str(), "{}: uid", path.display());
        let docs_copy = repo_root()
            .join("docs/dashboards")
            .join(path.file_name().expect("file name"));
        assert_eq!(
            std::fs::read_to_string(&docs_copy).ok().as_deref(),
            Some(text.as_str()),
            "{} is a copy of {} (make generate)",
            docs_copy.display(),
            path.display()
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(panels.len() >= 6, "{name}: {} panels", panels.len());
        for p in panels {
            for t in p["targets"].as_array().expect("targets") {
                let expr = t["expr"].as_str().expect("expr").replace("$job", ".*");
                rules.push_str(&format!(
                    "      - record: dashboard:{}:{}\n        expr: {}\n",
                    name.replace('-', "_"),
                    p["id"],
                    serde_json::to_string(&expr).expect("string")
                ));
            }
        }
        names.insert(name);
    }
    assert_eq!(
        names,
        BTreeSet::from(["ferrite-lb", "ferrite-dns", "ferrite-certs", "ferrite-ingress"].map(String::from))
    );
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::write(tmp.path().join("dashboards.yaml"), &rules).expect("written");
    promtool(tmp.path(), &["check", "rules", "dashboards.yaml"]);

    let rendered = template(&[
        "--set",
        "grafana.dashboards.enabled=true",
        "--set",
        "grafana.dashboards.namespace=monitoring",
        "--set",
        "dns.enabled=false",
    ])
    .expect("renders");
    let maps: Vec<Value> = ferrite_e2e::chart::documents(&rendered)
        .iter()
        .map(|d| d.value().expect("YAML"))
        .filter(|v| v["kind"] == "ConfigMap")
        .collect();
    let shipped: BTreeSet<&str> = maps
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        shipped,
        BTreeSet::from([
            "ferrite-lb-dashboard",
            "ferrite-certs-dashboard",
            "ferrite-ingress-dashboard"
        ]),
        "one per enabled controller"
    );
    for m in &maps {
        assert_eq!(m["metadata"]["labels"]["grafana_dashboard"], "1");
        assert_eq!(m["metadata"]["namespace"], "monitoring");
        let (key, json) = m["data"]
            .as_object()
            .and_then(|d| d.iter().next())
            .expect("one key");
        let file = std::fs::read_to_string(dir.join(key)).expect("the dashboard file");
        assert_eq!(
            json.as_str().map(str::trim),
            Some(file.trim()),
            "{key} shipped unchanged"
        );
    }
}
