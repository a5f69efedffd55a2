//! The umbrella chart against the box with the real helm: `helm install` is accepted object by object,
//! `helm upgrade` with changed values changes and removes what the values say, `helm uninstall` leaves
//! nothing but the CRDs (the subcharts render them with `helm.sh/resource-policy: keep`), a release with
//! `crds.enabled=false` has no CRD and leaves the existing ones alone; and each controller's chart
//! ServiceAccount is denied what its controller does not need (RBAC narrow). That the same accounts are
//! sufficient is shown by every controller's own box tests, which run the controller as its account
//! (ferrite_e2e::chart::service_account).
//!
//! The steps share one release, so they run in order in one test.

use ferrite_e2e::{
    KubeBox,
    chart::{documents, umbrella},
};
use std::{path::Path, process::Command, time::Duration};

const NS: &str = "ferrite-system";
const GOSSIP: &str = "loadbalancer.speaker.gossipKey=0123456789abcdef0123456789abcdef";

fn run(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn helm(kb: &KubeBox, args: &[&str]) -> String {
    let mut c = kb.helm();
    c.args(args);
    run(c, &format!("helm {}", args.join(" ")))
}

/// `kind/name` (with `-n namespace` when namespaced) of every object of a manifest.
fn objects(manifest: &str) -> Vec<(String, Option<String>)> {
    documents(manifest)
        .iter()
        .map(|d| {
            let v = d.value().expect("YAML");
            let kind = v["kind"].as_str().expect("kind");
            let name = v["metadata"]["name"].as_str().expect("name");
            (
                format!(
                    "{kind}.{}/{name}",
                    group(v["apiVersion"].as_str().expect("apiVersion"))
                ),
                v["metadata"]["namespace"].as_str().map(String::from),
            )
        })
        .collect()
}

/// `apps/v1` -> `apps`, `v1` -> `` (kubectl's `kind.group/name` form, so kinds with the same name in
/// two groups are not confused).
fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
}

/// Whether `kubectl get` finds the object: Some(true) found, Some(false) NotFound.
fn exists(kb: &KubeBox, obj: &str, ns: Option<&str>) -> bool {
    let obj = obj.replace("./", "/");
    let mut c = kb.kubectl();
    c.args(["get", &obj, "-o", "name"]);
    if let Some(ns) = ns {
        c.args(["-n", ns]);
    }
    let out = c.output().expect("kubectl runs");
    if out.status.success() {
        return true;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "kubectl get {obj}: {err}"
    );
    false
}

fn write(kb: &KubeBox, name: &str, text: &str) -> std::path::PathBuf {
    let p = kb.dir.join(name);
    std::fs::write(&p, text).expect("written");
    p
}

/// Runs `kubectl <args>` as the ServiceAccount of `kubeconfig`: Ok(stdout) or Err(stderr).
fn as_account(kb: &KubeBox, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let out = kb
        .kubectl()
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// One account's checks: `allowed` must succeed (retried while the new bindings reach the authorizer),
/// then every `denied` request is refused with 403 Forbidden.
async fn narrow(kb: &KubeBox, account: &str, allowed: &[&[&str]], denied: &[&[&str]]) {
    let kc = kb
        .service_account_kubeconfig(NS, account)
        .await
        .unwrap_or_else(|e| panic!("kubeconfig of {account}: {e:#}"));
    for args in allowed {
        let mut last = String::new();
        let mut ok = false;
        for _ in 0..50 {
            match as_account(kb, &kc, args) {
                Ok(_) => {
                    ok = true;
                    break;
                }
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "{account} may `kubectl {}`: {last}", args.join(" "));
    }
    for args in denied {
        match as_account(kb, &kc, args) {
            Ok(out) => panic!(
                "{account} must not `kubectl {}`, but it did: {out}",
                args.join(" ")
            ),
            Err(e) => assert!(
                // kubectl prints a 403 as "(Forbidden)" or, from its create subcommands, "is forbidden: User".
                e.contains("(Forbidden)") || e.contains("is forbidden: User"),
                "{account}: `kubectl {}` must be refused with 403 Forbidden: {e}",
                args.join(" ")
            ),
        }
    }
}

async fn forbidden_actions(kb: &KubeBox) {
    // Objects the accounts must not reach: an unrelated Secret next to the chart and one elsewhere.
    run(
        {
            let mut c = kb.kubectl();
            c.args(["create", "namespace", "bystander"]);
            c
        },
        "create namespace bystander",
    );
    for ns in [NS, "bystander"] {
        let mut c = kb.kubectl();
        c.args([
            "-n",
            ns,
            "create",
            "secret",
            "generic",
            "unrelated",
            "--from-literal=k=v",
        ]);
        run(c, "create the unrelated Secret");
    }
    let ingress = write(
        kb,
        "forbidden-ingress.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: probe, namespace: bystander}\n\
         spec: {defaultBackend: {service: {name: x, port: {number: 80}}}}\n",
    );
    let ingress = ingress.to_str().expect("utf-8 path");
    let node = write(
        kb,
        "forbidden-node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata: {name: probe-node}\n",
    );
    run(
        {
            let mut c = kb.kubectl();
            c.args(["create", "-f"]).arg(&node);
            c
        },
        "create Node probe-node",
    );
    let get_secret = ["-n", "bystander", "get", "secret", "unrelated"];
    let get_secret_here = ["-n", NS, "get", "secret", "unrelated"];
    let list_secrets = ["get", "secrets", "-A"];
    let write_ingress = ["create", "-f", ingress];
    let write_node = ["label", "node", "probe-node", "x=y"];
    let list_pods = ["get", "pods", "-A"];
    let other_lease = [
        "-n",
        "kube-system",
        "create",
        "configmap",
        "probe",
        "--from-literal=k=v",
    ];

    narrow(
        kb,
        "ferrite-lb-controller",
        &[&["get", "services", "-A"], &["get", "ippools"]],
        &[
            &get_secret,
            &get_secret_here,
            &list_secrets,
            &write_ingress,
            &write_node,
            &list_pods,
        ],
    )
    .await;
    narrow(
        kb,
        "ferrite-lb-speaker",
        &[
            &["get", "nodes"],
            &["-n", NS, "get", "secret", "ferrite-lb-gossip"],
        ],
        &[
            &get_secret,
            &get_secret_here,
            &list_secrets,
            &write_ingress,
            &write_node,
            &list_pods,
        ],
    )
    .await;
    narrow(
        kb,
        "ferrite-dns",
        &[&["get", "services", "-A"], &["get", "dnszones", "-A"]],
        &[
            &get_secret,
            &get_secret_here,
            &list_secrets,
            &write_ingress,
            &["-n", "bystander", "delete", "service", "anything"],
            &list_pods,
        ],
    )
    .await;
    // ferrite-certs writes the Secrets of Certificates in any namespace, so RBAC (which cannot select by
    // label) grants it Secrets cluster-wide; what keeps it off unlabelled Secrets is that it only lists
    // and watches with the label selector (docs/certs.md, "RBAC"). Everything else stays closed.
    narrow(
        kb,
        "ferrite-certs",
        &[
            &["get", "certificates", "-A"],
            &["get", "secrets", "-A", "-l", "certs.ferrite.dev/managed=true"],
        ],
        &[
            &write_node,
            &list_pods,
            &other_lease,
            &["delete", "ippools", "--all"],
            &[
                "create",
                "clusterrolebinding",
                "escalate",
                "--clusterrole=cluster-admin",
                "--user=x",
            ],
            &["-n", "bystander", "get", "services"],
        ],
    )
    .await;
    narrow(
        kb,
        "ferrite-ingress",
        &[&["get", "ingresses", "-A"], &["get", "endpointslices", "-A"]],
        &[
            &write_ingress,
            &["-n", "bystander", "delete", "secret", "unrelated"],
            &[
                "-n",
                "bystander",
                "create",
                "secret",
                "generic",
                "planted",
                "--from-literal=k=v",
            ],
            &write_node,
            &list_pods,
        ],
    )
    .await;
}

#[tokio::test]
async fn helm_install_upgrade_uninstall_and_narrow_rbac() {
    let kb = KubeBox::shared();
    let chart = umbrella();
    let chart = chart.to_str().expect("utf-8 path");

    // Install: every object helm rendered is in the cluster afterwards.
    helm(
        kb,
        &[
            "install",
            "ferrite",
            chart,
            "--namespace",
            NS,
            "--create-namespace",
            "--set",
            GOSSIP,
        ],
    );
    let manifest = helm(kb, &["get", "manifest", "ferrite", "--namespace", NS]);
    let installed = objects(&manifest);
    assert!(installed.len() > 20, "the release has its objects: {installed:?}");
    for (obj, ns) in &installed {
        assert!(exists(kb, obj, ns.as_deref()), "{obj} was installed");
    }
    let crds = run(
        {
            let mut c = kb.kubectl();
            c.args(["get", "crd", "-o", "name"]);
            c
        },
        "kubectl get crd",
    );
    for crd in [
        "ippools.lb.ferrite.dev",
        "dnszones.dns.ferrite.dev",
        "certificates.certs.ferrite.dev",
    ] {
        assert!(crds.contains(crd), "CRD {crd} installed by the release: {crds}");
        assert!(
            installed.contains(&(
                format!("CustomResourceDefinition.apiextensions.k8s.io/{crd}"),
                None
            )),
            "CRD {crd} is an object of the release (templates/crds/), not of Helm's crds/ folder"
        );
        let policy = run(
            {
                let mut c = kb.kubectl();
                c.args([
                    "get",
                    "crd",
                    crd,
                    "-o",
                    "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
                ]);
                c
            },
            "get the CRD's resource policy",
        );
        assert_eq!(policy, "keep", "CRD {crd}");
    }

    forbidden_actions(kb).await;

    // Upgrade with changed values: dns scaled to 3, certs and the speaker switched off.
    helm(
        kb,
        &[
            "upgrade",
            "ferrite",
            chart,
            "--namespace",
            NS,
            "--set",
            GOSSIP,
            "--set",
            "dns.replicas=3",
            "--set",
            "certs.enabled=false",
            "--set",
            "loadbalancer.speaker.enabled=false",
        ],
    );
    let replicas = run(
        {
            let mut c = kb.kubectl();
            c.args([
                "-n",
                NS,
                "get",
                "deployment",
                "ferrite-dns",
                "-o",
                "jsonpath={.spec.replicas}",
            ]);
            c
        },
        "get ferrite-dns replicas",
    );
    assert_eq!(replicas, "3");
    for (obj, ns) in [
        ("deployment.apps/ferrite-certs", Some(NS)),
        ("clusterrole.rbac.authorization.k8s.io/ferrite-certs", None),
        ("serviceaccount/ferrite-certs", Some(NS)),
        ("daemonset.apps/ferrite-lb-speaker", Some(NS)),
        ("clusterrole.rbac.authorization.k8s.io/ferrite-lb-speaker", None),
    ] {
        assert!(!exists(kb, obj, ns), "{obj} removed by the upgrade");
    }
    assert!(
        exists(kb, "crd/certificates.certs.ferrite.dev", None),
        "CRDs stay"
    );
    let upgraded = objects(&helm(kb, &["get", "manifest", "ferrite", "--namespace", NS]));
    for (obj, ns) in &upgraded {
        assert!(exists(kb, obj, ns.as_deref()), "{obj} is in the upgraded release");
    }

    // Uninstall: nothing of either revision is left, the CRDs are.
    helm(
        kb,
        &[
            "uninstall",
            "ferrite",
            "--namespace",
            NS,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    let is_crd = |obj: &str| obj.starts_with("CustomResourceDefinition.");
    for (obj, ns) in installed.iter().chain(&upgraded) {
        if is_crd(obj) {
            assert!(exists(kb, obj, None), "{obj} kept by helm uninstall");
            continue;
        }
        assert!(
            !exists(kb, obj, ns.as_deref()),
            "{obj} left behind by helm uninstall"
        );
    }
    let left = run(
        {
            let mut c = kb.kubectl();
            c.args([
                "get",
                "all,serviceaccounts,secrets,configmaps,roles,rolebindings,clusterroles,clusterrolebindings,\
                 ingressclasses,poddisruptionbudgets",
                "-A",
                "-l",
                "app.kubernetes.io/part-of=ferrite",
                "-o",
                "name",
            ]);
            c
        },
        "list what is left",
    );
    assert!(left.trim().is_empty(), "left after uninstall: {left}");
    let crds_after = run(
        {
            let mut c = kb.kubectl();
            c.args(["get", "crd", "-o", "name"]);
            c
        },
        "kubectl get crd",
    );
    assert_eq!(crds_after, crds, "the CRDs (and their objects) are kept");

    // crds.enabled=false (CRDs managed elsewhere): the release has no CRD, and neither its install nor
    // its uninstall touches the CRDs already there.
    let no_crds = [
        "install",
        "ferrite",
        chart,
        "--namespace",
        NS,
        "--set",
        GOSSIP,
        "--set",
        "loadbalancer.crds.enabled=false",
        "--set",
        "dns.crds.enabled=false",
        "--set",
        "certs.crds.enabled=false",
    ];
    helm(kb, &no_crds);
    let without = objects(&helm(kb, &["get", "manifest", "ferrite", "--namespace", NS]));
    assert!(
        without.len() > 20 && !without.iter().any(|(obj, _)| is_crd(obj)),
        "crds.enabled=false: the release has its objects and no CRD: {without:?}"
    );
    helm(
        kb,
        &[
            "uninstall",
            "ferrite",
            "--namespace",
            NS,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
    let crds_last = run(
        {
            let mut c = kb.kubectl();
            c.args(["get", "crd", "-o", "name"]);
            c
        },
        "kubectl get crd",
    );
    assert_eq!(crds_last, crds, "a release without CRDs leaves them alone");

    // CRDs without Helm's ownership metadata (applied with kubectl from crds/, or installed by an older
    // chart from its crds/ folder): a plain install refuses them, `--take-ownership` adopts them
    // (docs/install.md, "Upgrading").
    for crd in crds.lines() {
        let mut c = kb.kubectl();
        c.args(["label", crd, "app.kubernetes.io/managed-by-"]);
        run(c, "drop the managed-by label");
        let mut c = kb.kubectl();
        c.args([
            "annotate",
            crd,
            "meta.helm.sh/release-name-",
            "meta.helm.sh/release-namespace-",
        ]);
        run(c, "drop Helm's ownership annotations");
    }
    let install = ["install", "ferrite", chart, "--namespace", NS, "--set", GOSSIP];
    let mut c = kb.helm();
    c.args(install);
    let refused = c.output().expect("helm runs");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("ownership metadata"),
        "helm install over foreign CRDs must be refused: {err}"
    );
    // The refused install may leave a failed release behind.
    let mut c = kb.helm();
    c.args([
        "uninstall",
        "ferrite",
        "--namespace",
        NS,
        "--wait",
        "--timeout",
        "60s",
    ]);
    let _ = c.output();
    let mut adopt = install.to_vec();
    adopt.push("--take-ownership");
    helm(kb, &adopt);
    let adopted = objects(&helm(kb, &["get", "manifest", "ferrite", "--namespace", NS]));
    assert_eq!(
        adopted.iter().filter(|(obj, _)| is_crd(obj)).count(),
        ferrite_api::crds().len(),
        "--take-ownership: the release owns the CRDs again: {adopted:?}"
    );
    helm(
        kb,
        &[
            "uninstall",
            "ferrite",
            "--namespace",
            NS,
            "--wait",
            "--timeout",
            "60s",
        ],
    );
}
