//! Steps of `make demo`, kept in the library so the box tests can run the same steps.

use crate::{KubeBox, Supervised};
use anyhow::{Context, Result};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use std::{path::PathBuf, time::Duration};

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
    for name in names {
        let mut established = false;
        for _ in 0..100 {
            let crd = api.get(&name).await?;
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

/// Installs the umbrella chart into `ferrite-system` with a real helm (CRDs from the charts' crds/,
/// RBAC, the gossip Secret, the Deployments and DaemonSets: nothing runs them in the box, the demo and
/// the tests start the controllers as processes authenticated as the chart's ServiceAccounts).
pub async fn install_chart(kb: &KubeBox) -> Result<()> {
    let out = kb
        .helm()
        .args(["upgrade", "--install", "ferrite"])
        .arg(repo_root().join("charts/ferrite"))
        .args(["--namespace", "ferrite-system", "--create-namespace"])
        .output()
        .context("running helm (e2e/scripts/install-deps.sh installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // helm installs CRDs from crds/ first; wait until they are served.
    apply_crds(kb).await
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
    /// Stops every process, newest first.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.procs.pop() {
            p.stop(Duration::from_secs(5));
        }
    }
}

/// Starts the controllers that exist. (None yet: the load balancer adds itself here.)
pub async fn start_controllers(_kb: &KubeBox) -> Result<Running> {
    Ok(Running::default())
}
