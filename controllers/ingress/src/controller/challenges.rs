//! HTTP-01 tokens from ferrite-certs's `Challenge` objects (certs.ferrite.dev/v1alpha1).
//!
//! The CRD is optional: without ferrite-certs the controller serves without tokens and asks discovery
//! again every `--crd-discovery-interval` (15 s), starting the watch once the CRD is there. A CRD
//! removed later makes the watch fail (retried with backoff) and its tokens stay until it is back. Only HTTP-01 Challenges
//! that are not for a wildcard are kept (host, token, key authorization and the IngressClass they ask
//! for: a few hundred bytes each).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_api::certs::{Challenge, ChallengeType};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::build::AcmeToken;

/// The tokens to serve; cheap to clone.
#[derive(Clone, Default)]
pub struct Challenges {
    tokens: Arc<Mutex<BTreeMap<(String, String), AcmeToken>>>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges")
            .field("tokens", &self.lock().len())
            .finish()
    }
}

fn key_of(c: &Challenge) -> (String, String) {
    (
        c.metadata.namespace.clone().unwrap_or_default(),
        c.metadata.name.clone().unwrap_or_default(),
    )
}

fn token_of(c: &Challenge) -> Option<AcmeToken> {
    (c.spec.challenge_type == ChallengeType::Http01 && !c.spec.wildcard).then(|| AcmeToken {
        host: c.spec.dns_name.clone(),
        token: c.spec.token.clone(),
        key_authorization: c.spec.key.clone(),
        class: c.spec.ingress_class_name.clone().filter(|s| !s.is_empty()),
    })
}

/// Whether the server has the Challenge CRD.
async fn crd_present(client: &Client) -> bool {
    match client
        .list_api_group_resources("certs.ferrite.dev/v1alpha1")
        .await
    {
        Ok(list) => list.resources.iter().any(|r| r.name == "challenges"),
        Err(_) => false,
    }
}

impl Challenges {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), AcmeToken>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every token, sorted.
    pub fn tokens(&self) -> Vec<AcmeToken> {
        self.lock().values().cloned().collect()
    }

    fn set(&self, c: &Challenge) -> bool {
        let key = key_of(c);
        let mut m = self.lock();
        match token_of(c) {
            Some(t) => m.insert(key, t.clone()) != Some(t),
            None => m.remove(&key).is_some(),
        }
    }

    /// Waits for the CRD, then watches Challenges until `shutdown`, waking `changed` on every change.
    pub async fn run(
        self,
        client: Client,
        retry: Duration,
        changed: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut told = false;
        while !crd_present(&client).await {
            if !told {
                tracing::info!(
                    "the Challenge CRD (certs.ferrite.dev/v1alpha1) is not installed: serving without ACME HTTP-01 tokens, checking again every {retry:?}"
                );
                told = true;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
        tracing::info!("watching Challenges for ACME HTTP-01 tokens");
        let api: Api<Challenge> = Api::all(client);
        let mut stream = watcher(api, watcher::Config::default()).default_backoff().boxed();
        let mut relist: Option<HashSet<(String, String)>> = None;
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            let wake = match ev {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "Challenge watch failed; retrying with backoff");
                    false
                }
                Some(Ok(watcher::Event::Init)) => {
                    relist = Some(HashSet::new());
                    false
                }
                Some(Ok(watcher::Event::InitApply(c))) => {
                    if let Some(r) = relist.as_mut() {
                        r.insert(key_of(&c));
                    }
                    self.set(&c)
                }
                Some(Ok(watcher::Event::Apply(c))) => self.set(&c),
                Some(Ok(watcher::Event::Delete(c))) => self.lock().remove(&key_of(&c)).is_some(),
                Some(Ok(watcher::Event::InitDone)) => {
                    let listed = relist.take().unwrap_or_default();
                    let mut m = self.lock();
                    let before = m.len();
                    m.retain(|k, _| listed.contains(k));
                    before != m.len()
                }
            };
            if wake {
                changed.notify_one();
            }
        }
    }
}
