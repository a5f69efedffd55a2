//! Finalizers for state outside Kubernetes (DNS records on a server, ACME orders): the object is not
//! removed before its external state is cleaned up.
//!
//! ```text
//!   decide(obj) ─┬─ AddFinalizer  not deleting, our finalizer missing -> add it (JSON patch), nothing else:
//!                │                the patch is a change, so the object comes back at once
//!                ├─ Apply         not deleting, finalizer present   -> the controller's external work
//!                ├─ Cleanup       deleting, finalizer present       -> cleanup; only when it succeeded,
//!                │                                                    remove the finalizer (JSON patch)
//!                └─ Done          deleting, finalizer gone          -> nothing (the API server removes it)
//! ```
//!
//! Every write is leader-gated ([`Leadership::ensure`], then [`Leadership::bounded`]) and is a JSON patch
//! whose first operation `test`s the finalizers list as it was read (or, when there was none, that there
//! is none): a concurrent change of the list (another controller adding or removing its finalizer) makes
//! the API server refuse the patch instead of having it clobbered; the refusal is reported as `Conflict`
//! and the next event (the concurrent change itself) runs the decision again. A failed cleanup keeps
//! the finalizer, so the object stays (with its `deletionTimestamp`) and the error goes back to the
//! runner, which counts it, logs it and retries with backoff.
//!
//! The finalizer name must be domain-qualified (`dns.ferrite.dev/records`): the API server warns about
//! unqualified names, and a domain keeps two controllers' finalizers apart.

use crate::{Error, ReasonedError, leader::Leadership};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use serde::de::DeserializeOwned;
use std::{fmt::Debug, future::Future, sync::Arc};

/// What an object needs, decided from its metadata alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not being deleted and our finalizer is missing: add it before any external work.
    AddFinalizer,
    /// Not being deleted, our finalizer is present: do the external work.
    Apply,
    /// Being deleted with our finalizer present: clean up, then remove the finalizer.
    Cleanup,
    /// Being deleted and our finalizer is gone: nothing left to do.
    Done,
}

/// A failure of [`Finalizer::reconcile`].
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError<E: ReasonedError> {
    /// The controller's apply step failed.
    #[error("{0}")]
    Apply(#[source] E),
    /// Cleanup of the external state failed; the finalizer stays, so the object is kept until a
    /// cleanup succeeds.
    #[error("cleanup before deletion failed (the object is kept until it succeeds): {0}")]
    Cleanup(#[source] E),
    /// Adding or removing the finalizer failed (not the leader, the list changed meanwhile, API error).
    #[error("{action} finalizer {finalizer}: {source}")]
    Patch {
        /// `adding` or `removing`.
        action: &'static str,
        /// The finalizer.
        finalizer: String,
        /// What went wrong.
        #[source]
        source: Error,
    },
}

impl<E: ReasonedError> ReasonedError for FinalizerError<E> {
    fn reason(&self) -> &'static str {
        match self {
            FinalizerError::Apply(e) | FinalizerError::Cleanup(e) => e.reason(),
            FinalizerError::Patch { source, .. } => match source {
                // A failed `test` operation is 422 on some servers, 409 on others: the list changed.
                Error::Kube(kube::Error::Api(s)) if s.code == 409 || s.code == 422 => "Conflict",
                other => other.reason(),
            },
        }
    }
}

/// A domain-qualified finalizer of one controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finalizer {
    name: String,
}

impl Finalizer {
    /// A finalizer named `name`, which must be `<DNS subdomain with a dot>/<name>`, e.g.
    /// `dns.ferrite.dev/records`.
    pub fn new(name: &str) -> crate::Result<Self> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_string(),
        })
    }

    /// The finalizer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What `obj` needs.
    pub fn decide<K: Resource>(&self, obj: &K) -> Decision {
        let present = obj.finalizers().contains(&self.name);
        match (obj.meta().deletion_timestamp.is_some(), present) {
            (false, false) => Decision::AddFinalizer,
            (false, true) => Decision::Apply,
            (true, true) => Decision::Cleanup,
            (true, false) => Decision::Done,
        }
    }

    /// The JSON patch that adds the finalizer to `obj` as read, `test`ing that the list is unchanged.
    pub fn add_patch<K: Resource>(&self, obj: &K) -> serde_json::Value {
        let current = obj.finalizers();
        if current.is_empty() {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [self.name]},
            ])
        } else {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": current},
                {"op": "add", "path": "/metadata/finalizers/-", "value": self.name},
            ])
        }
    }

    /// The JSON patch that removes the finalizer from `obj` as read (every occurrence), `test`ing that
    /// the list is unchanged; `None` when it is not there.
    pub fn remove_patch<K: Resource>(&self, obj: &K) -> Option<serde_json::Value> {
        let current = obj.finalizers();
        if !current.contains(&self.name) {
            return None;
        }
        let rest: Vec<&String> = current.iter().filter(|f| **f != self.name).collect();
        Some(serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": rest},
        ]))
    }

    /// Runs one reconcile of `obj` with this finalizer: adds it (and returns, the patch brings the object
    /// back), runs `apply` while the object lives, and on deletion runs `cleanup` and removes the finalizer
    /// only after `cleanup` succeeded. Only the leader acts; a follower gets [`Error::NotLeader`] in
    /// [`FinalizerError::Patch`] or before `apply`/`cleanup` run.
    pub async fn reconcile<K, A, AF, C, CF, E>(
        &self,
        api: &Api<K>,
        obj: Arc<K>,
        leadership: &Leadership,
        apply: A,
        cleanup: C,
    ) -> Result<Action, FinalizerError<E>>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        A: FnOnce(Arc<K>) -> AF,
        AF: Future<Output = Result<Action, E>>,
        C: FnOnce(Arc<K>) -> CF,
        CF: Future<Output = Result<(), E>>,
        E: ReasonedError,
    {
        let patch_err = |action, source| FinalizerError::Patch {
            action,
            finalizer: self.name.clone(),
            source,
        };
        match self.decide(&*obj) {
            Decision::AddFinalizer => {
                leadership.ensure().map_err(|e| patch_err("adding", e))?;
                self.patch(api, &obj, self.add_patch(&*obj), leadership)
                    .await
                    .map_err(|e| patch_err("adding", e))?;
                Ok(Action::await_change())
            }
            Decision::Apply => {
                leadership.ensure().map_err(|e| patch_err("checking", e))?;
                apply(obj).await.map_err(FinalizerError::Apply)
            }
            Decision::Cleanup => {
                leadership.ensure().map_err(|e| patch_err("checking", e))?;
                cleanup(obj.clone()).await.map_err(FinalizerError::Cleanup)?;
                if let Some(p) = self.remove_patch(&*obj) {
                    self.patch(api, &obj, p, leadership)
                        .await
                        .map_err(|e| patch_err("removing", e))?;
                }
                Ok(Action::await_change())
            }
            Decision::Done => Ok(Action::await_change()),
        }
    }

    async fn patch<K>(
        &self,
        api: &Api<K>,
        obj: &K,
        ops: serde_json::Value,
        leadership: &Leadership,
    ) -> crate::Result<()>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or_else(|| Error::Option("an object without a name cannot carry a finalizer".into()))?;
        let ops = serde_json::from_value(ops).map_err(|e| Error::Setup(format!("finalizer patch: {e}")))?;
        let params = PatchParams::default();
        leadership
            .bounded(async {
                Ok(api
                    .patch(&name, &params, &Patch::<()>::Json(ops))
                    .await
                    .map(|_| ())?)
            })
            .await
    }
}

/// Checks that `name` is `<DNS subdomain containing a dot>/<qualified name>`.
pub fn validate_name(name: &str) -> crate::Result<()> {
    let bad = |why: &str| {
        Err(Error::Option(format!(
            "finalizer {name:?} {why}; use a domain-qualified name like dns.ferrite.dev/records"
        )))
    };
    let Some((domain, local)) = name.split_once('/') else {
        return bad("has no domain");
    };
    if domain.len() > 253 || !domain.contains('.') {
        return bad("needs a DNS domain with a dot before the '/'");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !domain.split('.').all(label_ok) {
        return bad("has an invalid domain (lowercase letters, digits, '-' and '.')");
    }
    let local_ok = !local.is_empty()
        && local.len() <= 63
        && local
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && local.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && local.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if !local_ok {
        return bad("has an invalid name after the '/' (1-63 letters, digits, '-', '_', '.')");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::ConfigMap,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };

    const F: &str = "dns.ferrite.dev/records";

    fn cm(finalizers: &[&str], deleting: bool) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("x".into()),
                finalizers: (!finalizers.is_empty())
                    .then(|| finalizers.iter().map(|s| s.to_string()).collect()),
                deletion_timestamp: deleting.then(|| Time(jiff_now())),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn jiff_now() -> k8s_openapi::jiff::Timestamp {
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH
    }

    #[test]
    fn decisions_table() {
        let f = Finalizer::new(F).expect("valid");
        let other = "certs.ferrite.dev/orders";
        let cases = [
            (cm(&[], false), Decision::AddFinalizer),
            (cm(&[other], false), Decision::AddFinalizer),
            (cm(&[F], false), Decision::Apply),
            (cm(&[other, F], false), Decision::Apply),
            (cm(&[F], true), Decision::Cleanup),
            (cm(&[F, other], true), Decision::Cleanup),
            (cm(&[other], true), Decision::Done),
            (cm(&[], true), Decision::Done),
        ];
        for (obj, want) in cases {
            assert_eq!(f.decide(&obj), want, "{:?}", obj.metadata);
        }
    }

    #[test]
    fn patches_test_the_list_they_were_computed_from() {
        let f = Finalizer::new(F).expect("valid");
        assert_eq!(
            f.add_patch(&cm(&[], false)),
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [F]},
            ])
        );
        assert_eq!(
            f.add_patch(&cm(&["a.b/c"], false)),
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a.b/c"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": F},
            ])
        );
        assert_eq!(f.remove_patch(&cm(&["a.b/c"], true)), None);
        assert_eq!(
            f.remove_patch(&cm(&["a.b/c", F, "d.e/f"], true)),
            Some(serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["a.b/c", F, "d.e/f"]},
                {"op": "replace", "path": "/metadata/finalizers", "value": ["a.b/c", "d.e/f"]},
            ]))
        );
        // The patches are valid JSON patches.
        let p: Result<Patch<()>, _> = serde_json::from_value(f.add_patch(&cm(&[], false))).map(Patch::Json);
        assert!(p.is_ok());
    }

    #[test]
    fn names_must_be_domain_qualified() {
        for ok in [F, "certs.ferrite.dev/acme-order", "a.b/C_x.1"] {
            assert!(Finalizer::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "records",
            "ferrite/records",
            "Dns.ferrite.dev/records",
            "dns..dev/records",
            "dns.ferrite.dev/",
            "dns.ferrite.dev/-x",
            "dns.ferrite.dev/a/b",
            "-a.dev/x",
        ] {
            let err = Finalizer::new(bad).expect_err(bad);
            assert!(err.to_string().contains(bad), "{err}");
        }
    }
}
