//! The umbrella chart rendered by the real helm (`~/.cache/ferrite/bin/helm`, from install-deps.sh), no
//! cluster: insta snapshots of `helm template` for the defaults and non-default value sets, one snapshot
//! per subchart (so a change in one controller's templates shows up in that controller's snapshot only).
//!
//! A changed template fails here with the diff; accept it with `cargo insta review` (or
//! `INSTA_UPDATE=always cargo test -p ferrite-e2e --test chart`) and commit `e2e/tests/snapshots/`.
//! The ingress subchart's documents are left out: ferrite-ingress's chart tests own them.

use ferrite_e2e::chart::{Rendered, documents, scrape_targets, template};
use std::collections::BTreeMap;

/// Value sets rendered and snapshotted: name, `helm template` arguments.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    (
        // What a cluster with its own conventions sets: a pinned image, a gossip key from a vault, TSIG
        // Secrets for RFC2136 zones, one Service for DNS (Kubernetes 1.26+), scheduling and extra flags, CRDs
        // managed elsewhere or not kept.
        "custom",
        &[
            "--set",
            "loadbalancer.image.tag=0.1.0-rc1",
            "--set",
            "loadbalancer.speaker.gossipKey=0123456789abcdef0123456789abcdef",
            "--set",
            "loadbalancer.controller.replicas=3",
            "--set",
            "loadbalancer.controller.priorityClassName=system-cluster-critical",
            "--set-string",
            "loadbalancer.speaker.nodeSelector.ferrite\\.dev/speaker=true",
            "--set",
            "loadbalancer.speaker.extraArgs={--startup-grace=5s}",
            "--set",
            "loadbalancer.logFormat=plain",
            "--set",
            "loadbalancer.defaultClass=false",
            "--set",
            "dns.tsigSecrets[0].namespace=ferrite-system",
            "--set",
            "dns.tsigSecrets[0].name=bind-tsig",
            "--set",
            "dns.service.split=false",
            "--set",
            "dns.service.loadBalancerClass=ferrite.dev/lb",
            "--set",
            "dns.service.externalTrafficPolicy=Local",
            "--set",
            "dns.podAnnotations.example\\.com/team=infra",
            "--set",
            "certs.replicas=1",
            "--set",
            "certs.clusterResourceNamespace=cert-secrets",
            "--set",
            "certs.prometheusScrape=false",
            "--set",
            "certs.extraArgs={--log-level=debug}",
            // CRDs applied by GitOps for dns; the certs CRDs go with the release.
            "--set",
            "dns.crds.enabled=false",
            "--set",
            "certs.crds.keep=false",
        ],
    ),
    (
        // Only the allocator, no speaker (BGP or another announcer does layer 2), nothing else.
        "lb-controller-only",
        &[
            "--set",
            "loadbalancer.speaker.enabled=false",
            "--set",
            "loadbalancer.controller.podDisruptionBudget.enabled=false",
            "--set",
            "dns.enabled=false",
            "--set",
            "certs.enabled=false",
        ],
    ),
    (
        // The Prometheus Operator objects (the dashboards' JSON is checked by chart_prometheus.rs).
        "monitoring",
        &[
            "--set",
            "prometheus.rules.enabled=true",
            "--set",
            "prometheus.rules.labels.release=kube-prometheus-stack",
            "--set",
            "prometheus.serviceMonitor.enabled=true",
            "--set",
            "prometheus.serviceMonitor.interval=15s",
        ],
    ),
];

/// charts/ferrite/Chart.yaml's appVersion: the default image tag of every subchart.
fn app_version() -> String {
    let path = ferrite_e2e::chart::umbrella().join("Chart.yaml");
    let chart: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).expect("Chart.yaml"))
        .expect("Chart.yaml parses");
    chart["appVersion"].as_str().expect("appVersion").to_string()
}

/// The subcharts snapshotted here (`None` is the umbrella's own templates).
const SNAPSHOTTED: &[Option<&str>] = &[None, Some("loadbalancer"), Some("dns"), Some("certs")];

fn render(args: &[&str]) -> Vec<Rendered> {
    match template(args) {
        Ok(stream) => documents(&stream),
        Err(e) => panic!("{e:#}"),
    }
}

/// The documents of one subchart, in helm's order, each headed by its template (helm sorts by kind, then
/// name, so the order is stable).
fn joined(docs: &[Rendered], subchart: Option<&str>) -> String {
    let mut out = String::new();
    for d in docs.iter().filter(|d| d.subchart() == subchart) {
        out.push_str("---\n# Source: ");
        out.push_str(&d.source);
        out.push('\n');
        out.push_str(&crd_metadata_only(d));
    }
    if out.is_empty() {
        out.push_str("# (renders nothing)\n");
    }
    out
}

/// A CRD's document up to its `spec:` (what the chart adds: labels, the keep annotation), the spec
/// replaced by a pointer to `crds/`: crdgen generates both, `the_chart_renders_the_crds_of_crds_dir_once_each_from_its_subchart_and_kept`
/// checks they are the same, and an API change does not rewrite every snapshot. Other documents as they are.
fn crd_metadata_only(d: &Rendered) -> String {
    let is_crd = d.value().is_ok_and(|v| v["kind"] == "CustomResourceDefinition");
    match d.text.split_once("\nspec:\n") {
        Some((head, _)) if is_crd => {
            let name = d.value().expect("parsed above")["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            format!("{head}\nspec: # as in crds/{name}.yaml\n")
        }
        _ => d.text.clone(),
    }
}

/// The CRD documents of a render: name -> (subchart, parsed document).
fn rendered_crds(args: &[&str]) -> BTreeMap<String, (String, serde_json::Value)> {
    render(args)
        .iter()
        .filter_map(|d| {
            let v = d.value().expect("valid YAML");
            (v["kind"] == "CustomResourceDefinition").then(|| {
                (
                    v["metadata"]["name"].as_str().expect("named").to_string(),
                    (d.subchart().unwrap_or("umbrella").to_string(), v),
                )
            })
        })
        .collect()
}

/// Every file of crds/ (the CRDs of controllers/api, written by crdgen): name -> parsed document.
fn crds_dir() -> BTreeMap<String, serde_json::Value> {
    let dir = ferrite_e2e::demo::repo_root().join("crds");
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("crds/ is checked in") {
        let path = entry.expect("readable").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let v: serde_json::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).expect("readable")).expect("YAML");
        out.insert(v["metadata"]["name"].as_str().expect("named").to_string(), v);
    }
    out
}

#[test]
fn the_chart_renders_the_crds_of_crds_dir_once_each_from_its_subchart_and_kept() {
    let expected = crds_dir();
    assert_eq!(expected.len(), 9, "{:?}", expected.keys());
    let rendered = rendered_crds(&[]);
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the defaults render every CRD once"
    );
    for (name, (subchart, v)) in &rendered {
        let group = name.split_once('.').expect("plural.group").1;
        let owner = match group {
            "lb.ferrite.dev" => "loadbalancer",
            "dns.ferrite.dev" => "dns",
            "certs.ferrite.dev" => "certs",
            other => panic!("{name}: unknown group {other}"),
        };
        assert_eq!(subchart, owner, "{name} comes from its controller's subchart");
        assert_eq!(
            v["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}: kept by default"
        );
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/part-of"], "ferrite",
            "{name}"
        );
        let want = &expected[name];
        assert_eq!(v["spec"], want["spec"], "{name}: the spec of crds/{name}.yaml");
        assert_eq!(v["apiVersion"], want["apiVersion"], "{name}");
    }
}

#[test]
fn crds_enabled_false_renders_no_crd_and_crds_keep_false_drops_the_annotation() {
    let none = rendered_crds(&[
        "--set",
        "loadbalancer.crds.enabled=false",
        "--set",
        "dns.crds.enabled=false",
        "--set",
        "certs.crds.enabled=false",
    ]);
    assert!(
        none.is_empty(),
        "crds.enabled=false everywhere: {:?}",
        none.keys()
    );
    // One subchart off: only its CRDs go; the rest of that subchart still renders.
    let without_dns = rendered_crds(&["--set", "dns.crds.enabled=false"]);
    assert!(
        without_dns.keys().all(|n| !n.ends_with(".dns.ferrite.dev")) && without_dns.len() == 7,
        "{:?}",
        without_dns.keys()
    );
    assert!(
        render(&["--set", "dns.crds.enabled=false"])
            .iter()
            .any(|d| d.source == "ferrite/charts/dns/templates/deployment.yaml"),
        "the dns controller is still installed"
    );
    let unkept = rendered_crds(&["--set", "certs.crds.keep=false"]);
    for (name, (_, v)) in &unkept {
        let kept = v["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep";
        assert_eq!(kept, !name.ends_with(".certs.ferrite.dev"), "{name}");
    }
}

#[test]
fn helm_template_snapshots() {
    for (set, args) in VALUE_SETS {
        let docs = render(args);
        for sub in SNAPSHOTTED {
            let name = format!("{set}-{}", sub.unwrap_or("umbrella"));
            insta::assert_snapshot!(
                name,
                joined(&docs, *sub),
                &format!("helm template {}", args.join(" "))
            );
        }
    }
}

#[test]
fn renders_the_same_every_time() {
    for (set, args) in VALUE_SETS {
        let first = template(args).expect("renders");
        let second = template(args).expect("renders");
        assert!(first == second, "value set {set}: two renders differ");
    }
}

#[test]
fn every_document_is_a_kubernetes_object_of_a_known_subchart() {
    for (set, args) in VALUE_SETS {
        let docs = render(args);
        assert!(!docs.is_empty(), "value set {set} renders nothing");
        let mut seen: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for d in &docs {
            assert!(
                matches!(
                    d.subchart(),
                    None | Some("loadbalancer" | "dns" | "certs" | "ingress")
                ),
                "{set}: {} is from an unknown subchart",
                d.source
            );
            let v = d.value().expect("valid YAML");
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
            assert!(
                v["apiVersion"].is_string() && !kind.is_empty() && !name.is_empty(),
                "{set}: {} renders a document without apiVersion, kind or name:\n{}",
                d.source,
                d.text
            );
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(other) = seen.insert((kind.clone(), ns.clone(), name.clone()), d.source.clone()) {
                panic!(
                    "{set}: {kind} {ns}/{name} rendered twice ({other} and {})",
                    d.source
                );
            }
        }
    }
}

#[test]
fn pods_are_least_privilege() {
    let docs = render(&[]);
    let mut workloads = 0;
    for d in docs.iter().filter(|d| d.subchart() != Some("ingress")) {
        let v = d.value().expect("valid YAML");
        let kind = v["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "DaemonSet") {
            continue;
        }
        workloads += 1;
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{kind}/{name}: seccomp RuntimeDefault"
        );
        assert!(
            pod["serviceAccountName"].is_string(),
            "{kind}/{name}: own ServiceAccount"
        );
        for c in pod["containers"].as_array().expect("containers") {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{kind}/{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{kind}/{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{kind}/{name}"
            );
            let added: Vec<&str> = sc["capabilities"]["add"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                .unwrap_or_default();
            let allowed: &[&str] = match name {
                "ferrite-lb-speaker" => &["NET_RAW"],
                "ferrite-dns" => &["NET_BIND_SERVICE"],
                _ => &[],
            };
            assert_eq!(added, allowed, "{kind}/{name}: capabilities added");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez", "{kind}/{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{kind}/{name}");
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{kind}/{name}: memory request"
            );
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{kind}/{name}: memory limit"
            );
            // The chart's default image is the one image with every binary, tagged with the appVersion.
            assert_eq!(
                c["image"].as_str().unwrap_or_default(),
                format!("ghcr.io/ferrite-dev/ferrite:{}", app_version()),
                "{kind}/{name}"
            );
            let bin = c["command"][0].as_str().unwrap_or_default();
            assert!(
                bin.strip_prefix("/usr/local/bin/")
                    .is_some_and(|b| name.starts_with(b)),
                "{kind}/{name} runs its own binary of the image: {bin}"
            );
        }
        // Non-root everywhere but the speaker, which needs raw sockets on the host network namespace.
        if name != "ferrite-lb-speaker" {
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{kind}/{name}");
        }
    }
    assert!(
        workloads >= 4,
        "lb controller + speaker, dns, certs: {workloads} workloads"
    );
}

#[test]
fn every_workload_is_scraped_on_its_admin_port() {
    let stream = template(&[]).expect("renders");
    let targets = scrape_targets(&stream).expect("annotations parse");
    let by_name: BTreeMap<&str, (u16, &str)> = targets
        .iter()
        .map(|t| (t.workload.as_str(), (t.port, t.path.as_str())))
        .collect();
    for (workload, port) in [
        ("Deployment/ferrite-lb-controller", 9090),
        ("DaemonSet/ferrite-lb-speaker", 9091),
        ("Deployment/ferrite-dns", 9090),
        ("Deployment/ferrite-certs", 9090),
    ] {
        assert_eq!(
            by_name.get(workload),
            Some(&(port, "/metrics")),
            "{workload}: {targets:?}"
        );
    }
    // The annotation's port is the container's admin port (what the admin server listens on).
    for d in documents(&stream) {
        let v = d.value().expect("valid YAML");
        let Some(ann) = v["spec"]["template"]["metadata"]["annotations"].as_object() else {
            continue;
        };
        let Some(port) = ann.get("prometheus.io/port").and_then(|p| p.as_str()) else {
            continue;
        };
        let admin = v["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "admin"))
            .map(|p| p["containerPort"].to_string());
        assert_eq!(
            admin.as_deref(),
            Some(port),
            "{}: admin port vs prometheus.io/port",
            d.source
        );
    }
    let off = template(&["--set", "certs.prometheusScrape=false"]).expect("renders");
    assert!(
        !scrape_targets(&off)
            .expect("annotations parse")
            .iter()
            .any(|t| t.workload == "Deployment/ferrite-certs"),
        "certs.prometheusScrape=false drops the annotations"
    );
}

#[test]
fn extra_env_is_added_to_every_workload_after_the_charts_own() {
    let workloads = [
        ("loadbalancer.controller", "Deployment", "ferrite-lb-controller"),
        ("loadbalancer.speaker", "DaemonSet", "ferrite-lb-speaker"),
        ("dns", "Deployment", "ferrite-dns"),
        ("certs", "Deployment", "ferrite-certs"),
        ("ingress", "Deployment", "ferrite-ingress"),
    ];
    let mut args: Vec<String> = vec![];
    for (key, _, _) in workloads {
        args.extend([
            "--set".into(),
            format!("{key}.extraEnv[0].name=HTTPS_PROXY"),
            "--set-string".into(),
            format!("{key}.extraEnv[0].value=http://proxy.example:3128"),
            "--set".into(),
            format!("{key}.extraEnv[1].name=NODE"),
            "--set".into(),
            format!("{key}.extraEnv[1].valueFrom.fieldRef.fieldPath=spec.nodeName"),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let docs = render(&args);
    for (key, kind, name) in workloads {
        let w = docs
            .iter()
            .filter_map(|d| d.value().ok())
            .find(|v| v["kind"] == kind && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind}/{name} is rendered"));
        let env = w["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind}/{name} has env"))
            .clone();
        let n = env.len();
        assert!(n >= 3, "{key}: the chart's own env is kept: {env:?}");
        assert_eq!(env[n - 2]["name"], "HTTPS_PROXY", "{key}: {env:?}");
        assert_eq!(env[n - 2]["value"], "http://proxy.example:3128", "{key}");
        assert_eq!(env[n - 1]["name"], "NODE", "{key}");
        assert_eq!(
            env[n - 1]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName",
            "{key}"
        );
    }
    // An EnvVar with a misspelt field is refused by the schema, naming it.
    let err = template(&["--set", "dns.extraEnv[0].nme=X"]).expect_err("the schema refuses it");
    assert!(format!("{err:#}").contains("nme"), "{err:#}");
}

#[test]
fn the_schema_refuses_bad_values_with_a_clear_message() {
    for (set, wants) in [
        ("dns.replicas=two", "replicas"),
        ("dns.bogus=1", "bogus"),
        ("dns.crds.enabled=yes", "enabled"),
        ("certs.crds.bogus=1", "bogus"),
        ("loadbalancer.crds.keep=1", "keep"),
        ("dsn.enabled=false", "dsn"),
        ("certs.replicas=-1", "replicas"),
        ("loadbalancer.speaker.gossipKey=short", "gossipKey"),
        ("loadbalancer.controller.replicas=0", "replicas"),
        ("loadbalancer.defaultClass=maybe", "defaultClass"),
        ("prometheus.rules.reconcileErrorRatio=2", "reconcileErrorRatio"),
        (
            "prometheus.rules.certificateNotReadyFor=soon",
            "certificateNotReadyFor",
        ),
        ("prometheus.serviceMonitor.bogus=1", "bogus"),
        ("grafana.dashboards.enabled=yes", "enabled"),
    ] {
        let err = match template(&["--set", set]) {
            Ok(_) => panic!("--set {set} rendered; values.schema.json must refuse it"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains(wants),
            "--set {set}: the error names {wants:?}: {err}"
        );
    }
}
