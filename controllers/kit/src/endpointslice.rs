//! EndpointSlices on every API server the suite supports.
//!
//! `discovery.k8s.io/v1` exists from Kubernetes 1.21; 1.20 (the box) serves only `v1beta1`. The reader
//! asks discovery once which version the server has, watches that version as dynamic objects and turns
//! both shapes into one [`Slice`] view. In v1beta1 the node of an endpoint is `nodeName` (1.20, behind a
//! feature gate) or `topology["kubernetes.io/hostname"]`; in v1 it is `nodeName`.

use kube::{
    Client,
    api::{Api, ApiResource, DynamicObject, GroupVersionKind},
};
use serde_json::Value;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The EndpointSlice version a server serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceVersion {
    /// `discovery.k8s.io/v1` (Kubernetes 1.21+).
    V1,
    /// `discovery.k8s.io/v1beta1` (Kubernetes 1.17–1.24).
    V1Beta1,
}

impl SliceVersion {
    /// Asks the server which version it has, preferring v1.
    pub async fn detect(client: &Client) -> crate::Result<Self> {
        match client.list_api_group_resources("discovery.k8s.io/v1").await {
            Ok(list) if list.resources.iter().any(|r| r.name == "endpointslices") => Ok(Self::V1),
            Ok(_) => Ok(Self::V1Beta1),
            Err(e) if crate::error::is_not_found(&e) => Ok(Self::V1Beta1),
            Err(e) => Err(e.into()),
        }
    }

    /// The API resource for dynamic access.
    pub fn api_resource(self) -> ApiResource {
        let version = match self {
            Self::V1 => "v1",
            Self::V1Beta1 => "v1beta1",
        };
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
            "endpointslices",
        )
    }

    /// An API handle for all namespaces.
    pub fn api_all(self, client: Client) -> Api<DynamicObject> {
        Api::all_with(client, &self.api_resource())
    }
}

/// One endpoint of a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Addresses of the endpoint.
    pub addresses: Vec<String>,
    /// `conditions.ready`; an absent value means ready (API convention).
    pub ready: bool,
    /// `conditions.serving` (1.20+; true for a terminating endpoint that still serves), falling back to
    /// `ready` when absent, as MetalLB's `EndpointCanServe` does.
    pub serving: bool,
    /// Node the endpoint runs on, if known.
    pub node_name: Option<String>,
}

/// The parts of an EndpointSlice the controllers use, whatever its version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slice {
    /// Namespace of the slice (and its Service).
    pub namespace: String,
    /// Slice name.
    pub name: String,
    /// Owning Service, from the `kubernetes.io/service-name` label.
    pub service: Option<String>,
    /// `IPv4`, `IPv6` or `FQDN`.
    pub address_type: String,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

impl Slice {
    /// Reads a dynamic EndpointSlice of either version.
    pub fn from_dynamic(obj: &DynamicObject) -> Self {
        let d = &obj.data;
        let endpoints = d
            .get("endpoints")
            .and_then(Value::as_array)
            .map(|eps| eps.iter().map(endpoint).collect())
            .unwrap_or_default();
        Slice {
            namespace: obj.metadata.namespace.clone().unwrap_or_default(),
            name: obj.metadata.name.clone().unwrap_or_default(),
            service: obj
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                .cloned(),
            address_type: d
                .get("addressType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            endpoints,
        }
    }

    /// Nodes with at least one serving endpoint.
    pub fn serving_nodes(&self) -> impl Iterator<Item = &str> {
        self.endpoints
            .iter()
            .filter(|e| e.serving)
            .filter_map(|e| e.node_name.as_deref())
    }

    /// Whether any endpoint serves (also endpoints without a node name).
    pub fn has_serving(&self) -> bool {
        self.endpoints.iter().any(|e| e.serving)
    }
}

fn endpoint(v: &Value) -> Endpoint {
    let addresses = v
        .get("addresses")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
        .unwrap_or_default();
    let ready = v
        .pointer("/conditions/ready")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let serving = v
        .pointer("/conditions/serving")
        .and_then(Value::as_bool)
        .unwrap_or(ready);
    let node_name = v
        .get("nodeName")
        .and_then(Value::as_str)
        .or_else(|| {
            v.pointer("/topology/kubernetes.io~1hostname")
                .and_then(Value::as_str)
        })
        .map(String::from);
    Endpoint {
        addresses,
        ready,
        serving,
        node_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dynamic(v: Value) -> DynamicObject {
        serde_json::from_value(v).expect("valid object")
    }

    #[test]
    fn reads_v1_and_v1beta1_alike() {
        let v1 = dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "app", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.10"], "conditions": {"ready": true}, "nodeName": "node-a"},
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false}, "nodeName": "node-b"},
                {"addresses": ["192.0.2.12"], "nodeName": "node-c"}
            ]
        }));
        let beta = dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "app", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.10"], "conditions": {"ready": true}, "topology": {"kubernetes.io/hostname": "node-a"}},
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false}, "topology": {"kubernetes.io/hostname": "node-b"}},
                {"addresses": ["192.0.2.12"], "topology": {"kubernetes.io/hostname": "node-c"}}
            ]
        }));
        let a = Slice::from_dynamic(&v1);
        let b = Slice::from_dynamic(&beta);
        assert_eq!(a, b);
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(
            a.serving_nodes().collect::<Vec<_>>(),
            vec!["node-a", "node-c"],
            "absent ready means ready"
        );
    }

    #[test]
    fn a_terminating_endpoint_that_still_serves_counts() {
        let s = Slice::from_dynamic(&dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "y"}, "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["192.0.2.1"], "conditions": {"ready": false, "serving": true, "terminating": true}, "nodeName": "a"},
                {"addresses": ["192.0.2.2"], "conditions": {"ready": false, "serving": false}, "nodeName": "b"}
            ]
        })));
        assert_eq!(s.serving_nodes().collect::<Vec<_>>(), vec!["a"]);
    }

    #[test]
    fn tolerates_empty_and_odd_slices() {
        let s = Slice::from_dynamic(&dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "y"}, "endpoints": null
        })));
        assert!(s.endpoints.is_empty());
        assert!(s.service.is_none());
    }
}
