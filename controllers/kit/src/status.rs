//! Server-side-apply status patches: one field manager per controller, `force` so a controller always
//! owns the fields it writes, and a leader check before every write.
//!
//! Every write runs inside [`Leadership::bounded`]: it is abandoned when the leader fence runs out, so a
//! write of a replica that lost the lease cannot land after a new leader took over. Writes whose content
//! was computed from a read object (a Service's assigned address) can also carry that object's
//! `resourceVersion` as a precondition ([`apply_status_at`]): if anyone wrote the object since, the API
//! server answers 409 Conflict and nothing is overwritten.

use crate::{Result, leader::Leadership};
use kube::{
    Api, Resource,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Applies `status` (the body of `.status`) to object `name` as `field_manager`.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    status: serde_json::Value,
    leadership: &Leadership,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    apply_status_at(api, name, None, field_manager, status, leadership).await
}

/// Like [`apply_status`], with `resource_version` (when given) as a precondition: the write fails with
/// 409 Conflict when the object changed since that version was read.
pub async fn apply_status_at<K>(
    api: &Api<K>,
    name: &str,
    resource_version: Option<&str>,
    field_manager: &str,
    status: serde_json::Value,
    leadership: &Leadership,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let patch = status_patch::<K>(name, resource_version, status);
    let params = PatchParams::apply(field_manager).force();
    leadership
        .bounded(async { Ok(api.patch_status(name, &params, &Patch::Apply(&patch)).await?) })
        .await
}

/// The apply body of a status write.
fn status_patch<K: Resource<DynamicType = ()>>(
    name: &str,
    resource_version: Option<&str>,
    status: serde_json::Value,
) -> serde_json::Value {
    let mut meta = serde_json::json!({ "name": name });
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": meta,
        "status": status,
    })
}

/// Applies a partial object (metadata/spec fields) as `field_manager`.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    field_manager: &str,
    body: serde_json::Value,
    leadership: &Leadership,
) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let mut body = body;
    if let Some(obj) = body.as_object_mut() {
        obj.insert("apiVersion".into(), K::api_version(&()).into());
        obj.insert("kind".into(), K::kind(&()).into());
        let meta = obj.entry("metadata").or_insert_with(|| serde_json::json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("name".into(), name.into());
        }
    }
    let params = PatchParams::apply(field_manager).force();
    leadership
        .bounded(async { Ok(api.patch(name, &params, &Patch::Apply(&body)).await?) })
        .await
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Service;

    #[test]
    fn the_precondition_is_the_objects_resource_version() {
        let with = super::status_patch::<Service>("web", Some("42"), serde_json::json!({"a": 1}));
        assert_eq!(with["metadata"]["resourceVersion"], "42");
        assert_eq!(with["metadata"]["name"], "web");
        assert_eq!(with["kind"], "Service");
        let without = super::status_patch::<Service>("web", None, serde_json::json!({}));
        assert!(without["metadata"].get("resourceVersion").is_none());
    }
}
