//! The `ingress` subchart as `helm template` renders it (no cluster): its objects for the defaults and
//! the switches, the exact RBAC, the schema's refusals, and that the binary accepts every environment
//! variable the chart sets. (ferrite-e2e's chart tests leave the ingress documents to this file.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use ferrite_e2e::chart::{Rendered, documents, template};
use serde_json::{Value, json};

fn ingress_docs(args: &[&str]) -> Vec<Value> {
    let stream = template(args).unwrap_or_else(|e| panic!("{e:#}"));
    documents(&stream)
        .iter()
        .filter(|d: &&Rendered| d.subchart() == Some("ingress"))
        .map(|d| d.value().expect("valid YAML"))
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Option<&'a Value> {
    docs.iter().find(|d| d["kind"] == kind)
}

fn env(workload: &Value) -> Vec<(String, String)> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .collect()
}

fn env_of(workload: &Value, name: &str) -> Option<String> {
    env(workload).into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

#[test]
fn defaults_render_the_class_a_least_privilege_deployment_and_its_load_balancer() {
    let docs = ingress_docs(&[]);
    let class = find(&docs, "IngressClass").expect("IngressClass");
    assert_eq!(class["metadata"]["name"], "ferrite");
    assert_eq!(class["spec"]["controller"], "ferrite.dev/ingress");
    assert!(
        class["metadata"]["annotations"].is_null(),
        "not the default class"
    );

    let deploy = find(&docs, "Deployment").expect("Deployment");
    assert_eq!(deploy["spec"]["replicas"], 2);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "ferrite-ingress");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let c = &pod["containers"][0];
    assert_eq!(
        c["image"], "ghcr.io/ferrite-dev/ferrite:0.1.0",
        "the one Ferrite image"
    );
    assert_eq!(c["command"], json!(["/usr/local/bin/ferrite-ingress"]));
    assert_eq!(c["args"], json!(["controller"]));
    assert_eq!(c["securityContext"]["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    let ports: Vec<(String, i64)> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["containerPort"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("http".into(), 8080),
            ("https".into(), 8443),
            ("admin".into(), 9090)
        ],
        "unprivileged ports in the container"
    );
    assert!(c["ports"][0]["hostPort"].is_null());
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_PUBLISH_SERVICE").as_deref(),
        Some("ferrite-system/ferrite-ingress")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_HTTP_LISTEN").as_deref(),
        Some("0.0.0.0:8080")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_HTTPS_LISTEN").as_deref(),
        Some("0.0.0.0:8443")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_HTTPS_REDIRECT_PORT").as_deref(),
        Some("443")
    );
    // Backends see the Service ports clients reach (X-Forwarded-Port), not 8080/8443.
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_PUBLIC_HTTP_PORT").as_deref(),
        Some("80")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_PUBLIC_HTTPS_PORT").as_deref(),
        Some("443")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_INGRESS_CLIENT_BODY_TIMEOUT").as_deref(),
        Some("60s")
    );
    assert_eq!(
        env_of(deploy, "FERRITE_LEASE_NAME").as_deref(),
        Some("ferrite-ingress-controller")
    );
    assert!(env_of(deploy, "FERRITE_INGRESS_PUBLISH_STATUS_ADDRESS").is_none());
    // The grace period outlasts the drain.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    let drain: i64 = env_of(deploy, "FERRITE_INGRESS_DRAIN_TIMEOUT")
        .unwrap()
        .trim_end_matches('s')
        .parse()
        .unwrap();
    assert!(grace > drain, "grace {grace}s > drain {drain}s");
    let ann = &deploy["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], "9090");

    let svc = find(&docs, "Service").expect("Service");
    assert_eq!(svc["metadata"]["name"], "ferrite-ingress");
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    assert_eq!(
        svc["spec"]["ports"],
        json!([
            {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}
        ])
    );
    assert_eq!(
        svc["spec"]["selector"],
        json!({"app.kubernetes.io/name": "ferrite-ingress"})
    );
    let pdb = find(&docs, "PodDisruptionBudget").expect("PDB");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
}

#[test]
fn rbac_is_exactly_what_the_controller_uses() {
    let docs = ingress_docs(&[]);
    let rules = |kind: &str| -> BTreeSet<String> {
        find(&docs, kind).unwrap_or_else(|| panic!("{kind}"))["rules"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let groups: Vec<String> = r["apiGroups"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap().to_string())
                    .collect();
                let resources: Vec<String> = r["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap().to_string())
                    .collect();
                let verbs: Vec<String> = r["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|g| g.as_str().unwrap().to_string())
                    .collect();
                let mut out = vec![];
                for g in &groups {
                    for res in &resources {
                        for v in &verbs {
                            out.push(format!("{g}/{res}:{v}"));
                        }
                    }
                }
                out
            })
            .collect()
    };
    let want: BTreeSet<String> = [
        "networking.k8s.io/ingresses:list",
        "networking.k8s.io/ingresses:watch",
        "networking.k8s.io/ingressclasses:list",
        "networking.k8s.io/ingressclasses:watch",
        "networking.k8s.io/ingresses/status:patch",
        "/services:list",
        "/services:watch",
        "discovery.k8s.io/endpointslices:list",
        "discovery.k8s.io/endpointslices:watch",
        "/secrets:get",
        "/secrets:list",
        "/secrets:watch",
        "certs.ferrite.dev/challenges:list",
        "certs.ferrite.dev/challenges:watch",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(rules("ClusterRole"), want);
    let lease: BTreeSet<String> = [
        "coordination.k8s.io/leases:get",
        "coordination.k8s.io/leases:create",
        "coordination.k8s.io/leases:update",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(rules("Role"), lease);
}

#[test]
fn switches_default_class_daemonset_host_ports_and_status_addresses() {
    let docs = ingress_docs(&[
        "--set",
        "ingress.ingressClass.default=true",
        "--set",
        "ingress.kind=DaemonSet",
        "--set",
        "ingress.hostPorts.enabled=true",
        "--set",
        "ingress.publishStatusAddresses={192.0.2.1,lb.example.com}",
        "--set",
        "ingress.service.externalTrafficPolicy=Cluster",
        "--set",
        "ingress.workerThreads=4",
    ]);
    let class = find(&docs, "IngressClass").unwrap();
    assert_eq!(
        class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert!(find(&docs, "Deployment").is_none());
    assert!(
        find(&docs, "PodDisruptionBudget").is_none(),
        "no PDB for a DaemonSet"
    );
    let ds = find(&docs, "DaemonSet").expect("DaemonSet");
    assert!(ds["spec"]["replicas"].is_null());
    let ports = &ds["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert_eq!(ports[0]["hostPort"], 80);
    assert_eq!(ports[1]["hostPort"], 443);
    assert_eq!(
        env_of(ds, "FERRITE_INGRESS_PUBLISH_STATUS_ADDRESS").as_deref(),
        Some("192.0.2.1,lb.example.com")
    );
    assert!(env_of(ds, "FERRITE_INGRESS_PUBLISH_SERVICE").is_none());
    assert_eq!(env_of(ds, "FERRITE_INGRESS_WORKER_THREADS").as_deref(), Some("4"));
    assert_eq!(
        find(&docs, "Service").unwrap()["spec"]["externalTrafficPolicy"],
        "Cluster"
    );

    assert!(ingress_docs(&["--set", "ingress.enabled=false"]).is_empty());
}

#[test]
fn the_schema_refuses_bad_values() {
    for bad in [
        "ingress.kind=Pod",
        "ingress.replicas=0",
        "ingress.bogus=1",
        "ingress.proxy.loadBalance=random",
        "ingress.containerPorts.http=80",
        "ingress.service.externalTrafficPolicy=Sometimes",
        "ingress.defaultSSLCertificate=no-slash",
        "ingress.proxy.drainTimeout=soon",
    ] {
        assert!(template(&["--set", bad]).is_err(), "--set {bad} accepted");
    }
}

#[test]
fn the_binary_accepts_every_variable_the_chart_sets() {
    let docs = ingress_docs(&[
        "--set",
        "ingress.workerThreads=2",
        "--set",
        "ingress.defaultSSLCertificate=ns/cert",
    ]);
    let deploy = find(&docs, "Deployment").unwrap();
    let vars: Vec<(String, String)> = env(deploy)
        .into_iter()
        .filter(|(n, _)| n.starts_with("FERRITE_"))
        .map(|(n, v)| {
            if n == "FERRITE_ADMIN_ADDR" {
                (n, "127.0.0.1:0".into())
            } else {
                (n, v)
            }
        })
        .collect();
    assert!(vars.len() > 15, "{vars:?}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferrite-ingress"))
        .args(["controller", "--kubeconfig", "/nonexistent/kubeconfig"])
        .envs(vars)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Past the argument parser: it fails on the kubeconfig, not on a variable.
    assert!(
        stderr.contains("cannot use kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
}
