//! The Kubernetes client: from `KUBECONFIG`/`~/.kube/config` or the in-cluster service account, checked
//! against the server before a controller starts so a wrong setup fails at once with a clear message.

use crate::{Error, Result};
use kube::{Api, Client, Resource, api::ListParams};
use std::{path::Path, time::Duration};

/// How long the first contact with the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs aws-lc-rs as the process-wide rustls provider. Every binary calls this first (App::start does).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Builds a client from the environment (`KUBECONFIG`, `~/.kube/config` or in-cluster) and checks that
/// the API server answers.
pub async fn connect() -> Result<Client> {
    connect_with(None).await
}

/// Like [`connect`], with an explicit kubeconfig file when given.
pub async fn connect_with(kubeconfig: Option<&Path>) -> Result<Client> {
    install_crypto_provider();
    let config = match kubeconfig {
        None => kube::Config::infer().await.map_err(Error::NoConfig)?,
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| Error::BadKubeconfig {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::BadKubeconfig {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?
        }
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(Error::BadConfig)?;
    match tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(source)) => Err(Error::Unreachable { url, source }),
        Err(_) => Err(Error::Timeout {
            url,
            secs: CONNECT_TIMEOUT.as_secs(),
        }),
    }
}

/// Fails with [`Error::MissingCrd`] when the CRD of `K` is not installed.
pub async fn require_crd<K>(client: &Client) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(e) if crate::error::is_not_found(&e) => Err(Error::MissingCrd {
            crd: format!("{}.{}", K::plural(&()), K::group(&())),
        }),
        Err(e) => Err(Error::Kube(e)),
    }
}
