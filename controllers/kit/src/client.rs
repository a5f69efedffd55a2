//! The Kubernetes client: from `KUBECONFIG`/`~/.kube/config` or the in-cluster service account, checked
//! against the server before a controller starts so a wrong setup fails at once with a clear message.

use crate::{Error, Result};
use kube::{Api, Client, Resource, api::ListParams};
use std::{path::Path, time::Duration};

/// Timeouts of the client's connections to the API server.
///
/// `read` is an idle timeout on each connection (no byte for that long: the connection is dropped),
/// counted from the last write so a request never inherits the idle time of a pooled connection. A
/// watch is quiet until an event or its server-side timeout (kube-runtime asks for 290 s and itself
/// gives up on a watch idle for 295 s), so `read` must be above that ([`crate::cli::WATCH_IDLE`]) or
/// `None`. Bound a single call more tightly with [`call`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (TCP and TLS); also bounds the version check at start.
    pub connect: Duration,
    /// Idle timeout of a connection's reads; `None`: none.
    pub read: Option<Duration>,
    /// Idle timeout of a connection's writes.
    pub write: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Some(Duration::from_secs(300)),
            write: Duration::from_secs(30),
        }
    }
}

impl Timeouts {
    /// Sets these timeouts on a client configuration.
    pub fn apply(&self, config: &mut kube::Config) {
        config.connect_timeout = Some(self.connect);
        config.read_timeout = self.read;
        config.reset_reader_on_write = true;
        config.write_timeout = Some(self.write);
    }
}

/// Runs one API call with a deadline: `Err(Error::CallTimeout)` (reason `Timeout`) when `fut` has not
/// finished within `after`, so a stalled connection costs a bounded wait and is told apart from a
/// setup error. `what` names the call in the message, e.g. `"patch Service default/web status"`.
pub async fn call<T, E>(
    what: impl Into<String>,
    after: Duration,
    fut: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T>
where
    Error: From<E>,
{
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::CallTimeout {
            what: what.into(),
            after,
        }),
    }
}

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
    connect_with_timeouts(kubeconfig, Timeouts::default()).await
}

/// Like [`connect_with`], with explicit client [`Timeouts`].
pub async fn connect_with_timeouts(kubeconfig: Option<&Path>, timeouts: Timeouts) -> Result<Client> {
    install_crypto_provider();
    let mut config = match kubeconfig {
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
    timeouts.apply(&mut config);
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(Error::BadConfig)?;
    // The first contact may take the connect time plus one round trip; give it a little more.
    let limit = timeouts.connect + Duration::from_secs(2);
    match tokio::time::timeout(limit, client.apiserver_version()).await {
        Ok(Ok(_)) => Ok(client),
        Ok(Err(source)) => Err(Error::Unreachable { url, source }),
        Err(_) => Err(Error::Timeout {
            url,
            secs: limit.as_secs(),
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
