//! Server-side-apply status patches: one field manager per controller, `force` so a controller always
//! owns the fields it writes, and a leader check before every write.

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
    leadership.ensure()?;
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    let params = PatchParams::apply(field_manager).force();
    Ok(api.patch_status(name, &params, &Patch::Apply(&patch)).await?)
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
    leadership.ensure()?;
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
    Ok(api.patch(name, &params, &Patch::Apply(&body)).await?)
}
