//! A controller run as its chart's ServiceAccount: the subchart's RBAC rendered by a real `helm template`
//! and applied to the box, then a kubeconfig minted for the account, so a box test exercises exactly the
//! permissions the chart grants.

use crate::{KubeBox, demo::repo_root};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, api::PostParams};
use std::path::PathBuf;

/// Creates namespace `name` unless it exists.
pub async fn ensure_namespace(kb: &KubeBox, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(kb.client().await);
    if api.get_opt(name).await?.is_some() {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        // Created meanwhile by another test of this binary.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Renders `templates/rbac.yaml` of `charts/ferrite/charts/<subchart>` (release `ferrite`, in `namespace`,
/// with `helm_args` such as `--set k=v` added) and applies it to the box.
pub async fn apply_rbac(kb: &KubeBox, subchart: &str, namespace: &str, helm_args: &[&str]) -> Result<()> {
    ensure_namespace(kb, namespace).await?;
    let chart = repo_root().join(format!("charts/ferrite/charts/{subchart}"));
    let out = kb
        .helm()
        .args(["template", "ferrite"])
        .arg(&chart)
        .args(["--namespace", namespace, "--show-only", "templates/rbac.yaml"])
        .args(helm_args)
        .output()
        .context("running helm (e2e/scripts/install-deps.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "helm template {}: {}",
            chart.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rendered = kb.dir.join(format!("{subchart}-rbac.yaml"));
    std::fs::write(&rendered, &out.stdout).with_context(|| format!("writing {}", rendered.display()))?;
    let applied = kb
        .kubectl()
        .args(["apply", "-f"])
        .arg(&rendered)
        .output()
        .context("running kubectl (e2e/scripts/install-deps.sh installs it)")?;
    if !applied.status.success() {
        bail!(
            "kubectl apply -f {}: {}",
            rendered.display(),
            String::from_utf8_lossy(&applied.stderr)
        );
    }
    Ok(())
}

/// [`apply_rbac`], then a kubeconfig for ServiceAccount `namespace/account` (the one the chart names).
pub async fn service_account(
    kb: &KubeBox,
    subchart: &str,
    namespace: &str,
    account: &str,
    helm_args: &[&str],
) -> Result<PathBuf> {
    apply_rbac(kb, subchart, namespace, helm_args).await?;
    kb.service_account_kubeconfig(namespace, account)
        .await
        .with_context(|| format!("minting ServiceAccount {namespace}/{account}'s kubeconfig"))
}
