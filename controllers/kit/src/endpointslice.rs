//! EndpointSlices on every API server the suite supports.
//!
//! `discovery.k8s.io/v1` exists from Kubernetes 1.21; 1.20 (the box) serves only `v1beta1`. The reader
//! asks discovery once which version the server has, watches that version as dynamic objects and turns
//! both shapes into one [`Slice`] view. In v1beta1 the node of an endpoint is `nodeName` (1.20, behind a
//! feature gate) or `topology["kubernetes.io/hostname"]`; in v1 it is `nodeName`. Likewise the zone:
//! v1 `zone`, v1beta1 `topology["topology.kubernetes.io/zone"]` (or the deprecated
//! `failure-domain.beta.kubernetes.io/zone`). Ports, conditions (`ready`, `serving`, `terminating`) and
//! `hints.forZones` have the same shape in both.

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

/// Zone label of the v1beta1 topology (and of Nodes).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The deprecated zone label, still read from v1beta1 topology.
pub const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";

/// One port of a slice: every endpoint of the slice serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// Port name; matches the Service port name (may be empty for a single unnamed port).
    pub name: Option<String>,
    /// Port number; `None` means "all ports" (API semantics).
    pub port: Option<i32>,
    /// `TCP` (the default when absent), `UDP` or `SCTP`.
    pub protocol: String,
    /// `appProtocol`, e.g. `http`, `https`, `kubernetes.io/h2c`.
    pub app_protocol: Option<String>,
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
    /// `conditions.terminating` (the endpoint's pod is shutting down); absent means false.
    pub terminating: bool,
    /// Node the endpoint runs on, if known.
    pub node_name: Option<String>,
    /// Zone of the endpoint, if known.
    pub zone: Option<String>,
    /// `hostname` of the endpoint (StatefulSet pods, headless Services).
    pub hostname: Option<String>,
    /// Zones this endpoint should serve (`hints.forZones`, topology-aware routing); empty: no hint.
    pub for_zones: Vec<String>,
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
    /// Ports every endpoint of this slice serves.
    pub ports: Vec<Port>,
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
        let ports = d
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(port).collect())
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
            ports,
        }
    }

    /// The port named `name` (`""` or `None` match an unnamed port).
    pub fn port(&self, name: Option<&str>) -> Option<&Port> {
        let want = name.unwrap_or("");
        self.ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or("") == want)
    }

    /// Endpoints that serve, ready first and terminating-but-serving last (the order a proxy should
    /// prefer them in).
    pub fn serving_endpoints(&self) -> Vec<&Endpoint> {
        let mut v: Vec<&Endpoint> = self.endpoints.iter().filter(|e| e.serving).collect();
        v.sort_by_key(|e| (e.terminating, !e.ready));
        v
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
    let terminating = v
        .pointer("/conditions/terminating")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let node_name = v
        .get("nodeName")
        .and_then(Value::as_str)
        .or_else(|| {
            v.pointer("/topology/kubernetes.io~1hostname")
                .and_then(Value::as_str)
        })
        .map(String::from);
    let zone = v
        .get("zone")
        .and_then(Value::as_str)
        .or_else(|| {
            let topo = v.get("topology")?;
            topo.get(ZONE_LABEL)
                .or_else(|| topo.get(LEGACY_ZONE_LABEL))
                .and_then(Value::as_str)
        })
        .map(String::from);
    let hostname = v.get("hostname").and_then(Value::as_str).map(String::from);
    let for_zones = v
        .pointer("/hints/forZones")
        .and_then(Value::as_array)
        .map(|zs| {
            zs.iter()
                .filter_map(|z| z.get("name").and_then(Value::as_str))
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Endpoint {
        addresses,
        ready,
        serving,
        terminating,
        node_name,
        zone,
        hostname,
        for_zones,
    }
}

fn port(v: &Value) -> Port {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(String::from);
    Port {
        name: text("name"),
        port: v
            .get("port")
            .and_then(Value::as_i64)
            .and_then(|p| i32::try_from(p).ok()),
        protocol: text("protocol").unwrap_or_else(|| "TCP".to_string()),
        app_protocol: text("appProtocol"),
    }
}

/// The slices of Service `namespace/service`, read with `version` (label `kubernetes.io/service-name`).
pub async fn list_for_service(
    client: &Client,
    version: SliceVersion,
    namespace: &str,
    service: &str,
) -> crate::Result<Vec<Slice>> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &version.api_resource());
    let lp = kube::api::ListParams::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let list = api.list(&lp).await?;
    Ok(list.items.iter().map(Slice::from_dynamic).collect())
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
    fn ports_conditions_zones_and_hints_read_alike_from_v1_and_v1beta1() {
        let ports = json!([
            {"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "http"},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"port": 9000}
        ]);
        let v1 = dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "app", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [
                {"addresses": ["192.0.2.10"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "nodeName": "node-a", "zone": "z1", "hints": {"forZones": [{"name": "z1"}]}},
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "nodeName": "node-b", "zone": "z2", "hostname": "web-1"},
                {"addresses": ["192.0.2.12"], "conditions": {"ready": false, "serving": false, "terminating": true},
                 "nodeName": "node-c"}
            ]
        }));
        let beta = dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "app", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [
                {"addresses": ["192.0.2.10"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "topology": {"kubernetes.io/hostname": "node-a", "topology.kubernetes.io/zone": "z1"},
                 "hints": {"forZones": [{"name": "z1"}]}},
                {"addresses": ["192.0.2.11"], "conditions": {"ready": false, "serving": true, "terminating": true},
                 "topology": {"kubernetes.io/hostname": "node-b", "failure-domain.beta.kubernetes.io/zone": "z2"},
                 "hostname": "web-1"},
                {"addresses": ["192.0.2.12"], "conditions": {"ready": false, "serving": false, "terminating": true},
                 "nodeName": "node-c"}
            ]
        }));
        let a = Slice::from_dynamic(&v1);
        assert_eq!(a, Slice::from_dynamic(&beta), "one view of both versions");
        assert_eq!(
            a.ports,
            vec![
                Port {
                    name: Some("http".into()),
                    port: Some(8080),
                    protocol: "TCP".into(),
                    app_protocol: Some("http".into())
                },
                Port {
                    name: Some("dns".into()),
                    port: Some(53),
                    protocol: "UDP".into(),
                    app_protocol: None
                },
                Port {
                    name: None,
                    port: Some(9000),
                    protocol: "TCP".into(),
                    app_protocol: None
                },
            ]
        );
        assert_eq!(a.port(Some("dns")).and_then(|p| p.port), Some(53));
        assert_eq!(a.port(None).and_then(|p| p.port), Some(9000));
        assert!(a.port(Some("nope")).is_none());
        let e = &a.endpoints;
        assert_eq!((e[0].ready, e[0].serving, e[0].terminating), (true, true, false));
        assert_eq!((e[1].ready, e[1].serving, e[1].terminating), (false, true, true));
        assert_eq!((e[2].ready, e[2].serving, e[2].terminating), (false, false, true));
        assert_eq!(e[0].zone.as_deref(), Some("z1"));
        assert_eq!(e[1].zone.as_deref(), Some("z2"));
        assert_eq!(e[2].zone, None);
        assert_eq!(e[0].for_zones, vec!["z1".to_string()]);
        assert_eq!(e[1].hostname.as_deref(), Some("web-1"));
        assert_eq!(e[2].node_name.as_deref(), Some("node-c"));
        let serving: Vec<&str> = a
            .serving_endpoints()
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(
            serving,
            vec!["192.0.2.10", "192.0.2.11"],
            "ready first, terminating-but-serving after"
        );
        assert_eq!(a.serving_nodes().collect::<Vec<_>>(), vec!["node-a", "node-b"]);
        assert!(a.has_serving());
    }

    #[test]
    fn tolerates_empty_and_odd_slices() {
        let s = Slice::from_dynamic(&dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "y"}, "endpoints": null
        })));
        assert!(s.endpoints.is_empty());
        assert!(s.ports.is_empty());
        assert!(s.service.is_none());
        let odd = Slice::from_dynamic(&dynamic(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "x", "namespace": "y"},
            "ports": [{"port": 99999999999_i64, "protocol": 7}, "junk"],
            "endpoints": [{"addresses": [1, "192.0.2.9"], "conditions": {"terminating": "yes"}, "topology": null}]
        })));
        assert_eq!(
            odd.ports[0].port, None,
            "out of range is no port, not a wrapped one"
        );
        assert_eq!(odd.ports[0].protocol, "TCP");
        assert_eq!(odd.ports.len(), 2);
        assert_eq!(odd.endpoints[0].addresses, vec!["192.0.2.9".to_string()]);
        assert!(!odd.endpoints[0].terminating);
        assert!(odd.endpoints[0].serving, "absent ready and serving mean serving");
    }
}
