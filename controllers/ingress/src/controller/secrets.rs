//! The TLS Secret cache: one watch of `type=kubernetes.io/tls` Secrets, data kept only for the Secrets
//! served Ingresses reference.
//!
//! ```text
//!   watch Secrets, fieldSelector type=kubernetes.io/tls (the API server filters; Opaque Secrets,
//!   service-account tokens, Helm releases never reach us)
//!     │ every event: name + resourceVersion remembered (a few dozen bytes)
//!     │ referenced (wanted) Secret: tls.crt/tls.key parsed into a rustls key + notAfter, PEM dropped
//!     v
//!   certificates(): SecretRef -> Loaded | Invalid | Loading       set_wanted(): newly referenced Secrets
//!     (Invalid after an update keeps the last good certificate)  the watch already passed: one GET each
//! ```
//!
//! Why a type-filtered watch and not per-name GETs or watches: a watch delivers every update (a renewed
//! certificate) within the watch latency with one connection, whatever the number of Secrets, and the
//! server-side field selector keeps every non-TLS Secret off the wire. The data of unreferenced TLS
//! Secrets is dropped as each event is read, so memory grows with the referenced Secrets only. RBAC
//! cannot narrow `list`/`watch` by type or name, so the ServiceAccount can read all Secrets; the code
//! only asks for TLS ones. A Secret that becomes referenced after the watch passed it is read once
//! with `get` (the watch keeps it current from then on).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::build::{CertState, LoadedCert};
use crate::proxy::certified_key_from_pem;
use crate::routes::SecretRef;

/// The field selector of the watch.
pub const TLS_TYPE_SELECTOR: &str = "type=kubernetes.io/tls";
/// GETs of newly referenced Secrets in flight at once.
pub const FETCH_CONCURRENCY: usize = 16;

#[derive(Default)]
struct State {
    wanted: BTreeSet<SecretRef>,
    /// Every TLS Secret the watch has seen, with its resourceVersion.
    seen: HashMap<SecretRef, String>,
    /// Wanted Secrets: loaded, invalid, or being read.
    kept: HashMap<SecretRef, CertState>,
    /// Keys listed since the last relist began.
    relist: Option<HashSet<SecretRef>>,
    synced: bool,
}

/// The cache; cheap to clone.
#[derive(Clone)]
pub struct SecretCache {
    state: Arc<Mutex<State>>,
    api: Api<Secret>,
    changed: Arc<Notify>,
    fetches: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for SecretCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("SecretCache")
            .field("seen", &s.seen.len())
            .field("kept", &s.kept.len())
            .finish()
    }
}

fn key_of(s: &Secret) -> SecretRef {
    SecretRef {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        name: s.metadata.name.clone().unwrap_or_default(),
    }
}

/// Parses a `kubernetes.io/tls` Secret into what the proxy serves.
pub fn load(secret: &Secret) -> CertState {
    let get = |k: &str| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .map(|b| b.0.as_slice())
    };
    let (Some(cert), Some(key)) = (get("tls.crt"), get("tls.key")) else {
        return CertState::Invalid {
            reason: "InvalidCertificate",
            message: "the Secret has no tls.crt or no tls.key".into(),
            last_good: None,
        };
    };
    match certified_key_from_pem(cert, key) {
        Ok(key) => CertState::Loaded(LoadedCert::new(key)),
        Err(e) => CertState::Invalid {
            reason: e.reason(),
            message: e.to_string(),
            last_good: None,
        },
    }
}

impl SecretCache {
    pub fn new(api: Api<Secret>, changed: Arc<Notify>) -> Self {
        SecretCache {
            state: Arc::default(),
            api,
            changed,
            fetches: Arc::new(tokio::sync::Semaphore::new(FETCH_CONCURRENCY)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True once the watch has listed.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// The wanted Secrets the cache knows (absent: the Secret does not exist as a TLS Secret).
    pub fn certificates(&self) -> HashMap<SecretRef, CertState> {
        self.lock().kept.clone()
    }

    /// Replaces the set of referenced Secrets: data of Secrets no longer wanted is dropped, Secrets
    /// newly wanted that the watch already passed are read with a GET.
    pub fn set_wanted(&self, wanted: BTreeSet<SecretRef>) {
        let mut fetch = Vec::new();
        {
            let mut s = self.lock();
            if s.wanted == wanted {
                return;
            }
            s.kept.retain(|k, _| wanted.contains(k));
            for k in &wanted {
                if !s.kept.contains_key(k) && s.seen.contains_key(k) {
                    s.kept.insert(k.clone(), CertState::Loading);
                    fetch.push(k.clone());
                }
            }
            s.wanted = wanted;
        }
        for k in fetch {
            let me = self.clone();
            tokio::spawn(async move { me.fetch(k).await });
        }
    }

    async fn fetch(&self, key: SecretRef) {
        let Ok(_permit) = self.fetches.acquire().await else {
            return;
        };
        // Dropped from the wanted set while waiting for a permit: nothing to read.
        if !matches!(self.lock().kept.get(&key), Some(CertState::Loading)) {
            return;
        }
        let api: Api<Secret> = Api::namespaced(self.api.clone().into_client(), &key.namespace);
        let got = api.get_opt(&key.name).await;
        let mut s = self.lock();
        // A watch event may have loaded (or removed) it meanwhile; that one is newer.
        if !matches!(s.kept.get(&key), Some(CertState::Loading)) {
            return;
        }
        match got {
            Ok(Some(secret)) if secret.type_.as_deref() == Some("kubernetes.io/tls") => {
                s.kept.insert(key, load(&secret));
            }
            Ok(_) => {
                s.kept.remove(&key);
                s.seen.remove(&key);
            }
            Err(e) => {
                tracing::warn!(secret = %key, error = %e, "reading a TLS Secret failed; the watch will deliver its next change");
                s.kept.remove(&key);
            }
        }
        drop(s);
        self.changed.notify_one();
    }

    fn apply(&self, secret: &Secret, listing: bool) {
        let key = key_of(secret);
        let rv = secret.metadata.resource_version.clone().unwrap_or_default();
        let mut s = self.lock();
        if listing && let Some(r) = s.relist.as_mut() {
            r.insert(key.clone());
        }
        if s.seen.get(&key) == Some(&rv) && s.kept.contains_key(&key) == s.wanted.contains(&key) {
            return;
        }
        s.seen.insert(key.clone(), rv);
        let wanted = s.wanted.contains(&key);
        if wanted {
            // An update to malformed data keeps serving the certificate it replaced (nginx's
            // syncSecret keeps the last good one); a delete drops it.
            let next = load(secret).after(s.kept.get(&key));
            s.kept.insert(key, next);
        }
        drop(s);
        if wanted {
            self.changed.notify_one();
        }
    }

    fn delete(&self, secret: &Secret) {
        let key = key_of(secret);
        let mut s = self.lock();
        s.seen.remove(&key);
        let was = s.kept.remove(&key).is_some();
        drop(s);
        if was {
            self.changed.notify_one();
        }
    }

    /// Runs the watch until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = watcher::Config::default().fields(TLS_TYPE_SELECTOR);
        let mut stream = watcher(self.api.clone(), config).default_backoff().boxed();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = stream.next() => ev,
            };
            match ev {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "TLS Secret watch failed; retrying with backoff"),
                Some(Ok(watcher::Event::Init)) => self.lock().relist = Some(HashSet::new()),
                Some(Ok(watcher::Event::InitApply(s))) => self.apply(&s, true),
                Some(Ok(watcher::Event::Apply(s))) => self.apply(&s, false),
                Some(Ok(watcher::Event::Delete(s))) => self.delete(&s),
                Some(Ok(watcher::Event::InitDone)) => {
                    let mut s = self.lock();
                    if let Some(listed) = s.relist.take() {
                        s.seen.retain(|k, _| listed.contains(k));
                        s.kept
                            .retain(|k, v| listed.contains(k) || matches!(v, CertState::Loading));
                    }
                    s.synced = true;
                    drop(s);
                    self.changed.notify_one();
                }
            }
        }
    }
}
