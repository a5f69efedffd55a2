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

/// The umbrella chart's directory.
pub fn umbrella() -> PathBuf {
    repo_root().join("charts/ferrite")
}

/// `helm template ferrite charts/ferrite --namespace ferrite-system <args>` with the helm of
/// install-deps.sh (no cluster needed): the rendered YAML stream.
pub fn template(args: &[&str]) -> Result<String> {
    let helm = crate::tool("helm");
    let out = std::process::Command::new(&helm)
        .args(["template", "ferrite"])
        .arg(umbrella())
        .args(["--namespace", "ferrite-system"])
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "running {} (e2e/scripts/install-deps.sh installs it)",
                helm.display()
            )
        })?;
    if !out.status.success() {
        bail!(
            "helm template charts/ferrite {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("helm template printed non-UTF-8")
}

/// One document of a rendered stream with the template it came from (helm's `# Source:` line,
/// e.g. `ferrite/charts/dns/templates/rbac.yaml`).
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The template path after `# Source: `.
    pub source: String,
    /// The document's text, without the `---` separator.
    pub text: String,
}

impl Rendered {
    /// The subchart that rendered it (`loadbalancer`, `dns`, ...), `None` for the umbrella's own templates.
    pub fn subchart(&self) -> Option<&str> {
        self.source
            .strip_prefix("ferrite/charts/")
            .and_then(|rest| rest.split('/').next())
    }

    /// The document parsed as YAML.
    pub fn value(&self) -> Result<serde_json::Value> {
        serde_yaml::from_str(&self.text).with_context(|| format!("parsing the document of {}", self.source))
    }
}

/// Splits a `helm template` stream into its documents (helm starts each with `---` and a `# Source:`
/// line; documents that render empty or only comments are dropped).
pub fn documents(stream: &str) -> Vec<Rendered> {
    let mut docs = vec![];
    let mut current: Vec<&str> = vec![];
    let mut flush = |lines: &mut Vec<&str>| {
        if let Some((first, rest)) = lines.split_first()
            && let Some(source) = first.strip_prefix("# Source: ")
            // A template's leading comment block renders as a document of its own: not an object.
            && rest.iter().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        {
            docs.push(Rendered {
                source: source.trim().to_string(),
                text: rest.join("\n") + "\n",
            });
        }
        lines.clear();
    };
    for line in stream.lines() {
        if line == "---" {
            flush(&mut current);
        } else {
            current.push(line);
        }
    }
    flush(&mut current);
    docs
}

/// The prometheus.io scrape annotations of one pod template: who to scrape, on which port and path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// `Deployment/ferrite-dns`, `DaemonSet/ferrite-lb-speaker`.
    pub workload: String,
    /// `prometheus.io/port`.
    pub port: u16,
    /// `prometheus.io/path` (`/metrics` when absent, as the kubernetes-pods scrape config does).
    pub path: String,
}

/// Every workload of a rendered stream whose pod template says `prometheus.io/scrape: "true"`.
pub fn scrape_targets(stream: &str) -> Result<Vec<ScrapeTarget>> {
    let mut out = vec![];
    for doc in documents(stream) {
        let v = doc.value()?;
        let kind = v["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "Deployment" | "DaemonSet" | "StatefulSet") {
            continue;
        }
        let ann = &v["spec"]["template"]["metadata"]["annotations"];
        if ann["prometheus.io/scrape"].as_str() != Some("true") {
            continue;
        }
        let name = v["metadata"]["name"].as_str().unwrap_or_default();
        let port = ann["prometheus.io/port"]
            .as_str()
            .with_context(|| format!("{kind}/{name}: prometheus.io/scrape without prometheus.io/port"))?;
        let port = port
            .parse()
            .with_context(|| format!("{kind}/{name}: prometheus.io/port {port:?} is not a port"))?;
        out.push(ScrapeTarget {
            workload: format!("{kind}/{name}"),
            port,
            path: ann["prometheus.io/path"]
                .as_str()
                .unwrap_or("/metrics")
                .to_string(),
        });
    }
    Ok(out)
}

/// A controller binary of this workspace (`ferrite-lb`, `ferrite-dns`, ...), for tests of ferrite-e2e,
/// which cannot name other packages' binaries with `CARGO_BIN_EXE_*`: in `$FERRITE_BIN_DIR` (`make test`
/// sets it to the build that `cargo test --workspace` just made), else built once per test process with
/// `cargo build -p <package>` (so it is never stale) and taken from the target directory.
pub fn workspace_binary(package: &str, bin: &str) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FERRITE_BIN_DIR") {
        let path = PathBuf::from(dir).join(bin);
        anyhow::ensure!(
            path.is_file(),
            "{} not found ($FERRITE_BIN_DIR): build it with `cargo build -p {package}`",
            path.display()
        );
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .current_dir(repo_root())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build -p {package} --bin {bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The test executable is target/<profile>/deps/<name>-<hash>; binaries are in target/<profile>.
    let exe = std::env::current_exe().context("the test's own path")?;
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("the test executable is not in target/<profile>/deps")?
        .join(bin);
    anyhow::ensure!(path.is_file(), "{} was not built", path.display());
    Ok(path)
}
