//! Reading a Service: whether ferrite-lb serves it, and the allocation [`Request`] its spec and
//! annotations make. Pure: the controller passes the Service and its namespace's labels.
//!
//! Annotation keys are read in order of preference — Ferrite's own, then MetalLB's current key, then
//! MetalLB's legacy `metallb.universe.tf/*` key (which still works but earns a Warning Event) — and the
//! deprecated `spec.loadBalancerIP` last. Every value is parsed; a bad one is an error naming the key,
//! the value and what is wrong, never a guess.

use crate::{
    addr::Family,
    alloc::{Port, Protocol, Request, ServiceKey},
};
use ferrite_api::lb::annotations as ann;
use k8s_openapi::api::core::v1::Service;
use std::{collections::BTreeMap, net::IpAddr};

/// Whether `svc` is ferrite-lb's to serve: a `type: LoadBalancer` Service whose `loadBalancerClass` is
/// `lb_class`, or that has no class when `default_class` (this ferrite-lb is the cluster's default load
/// balancer, MetalLB's rule). Shared by the allocator and the speaker, so both serve the same Services.
pub fn is_ours(svc: &Service, lb_class: &str, default_class: bool) -> bool {
    let Some(spec) = &svc.spec else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            Some(c) => c == lb_class,
            None => default_class,
        }
}

/// Which Services the allocator serves: `--lb-class` and `--default-class`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Classes {
    /// The `loadBalancerClass` served (default `ferrite.dev/lb`).
    pub class: String,
    /// Whether Services without a class are served too (`--default-class`, default true).
    pub default_class: bool,
}

impl Classes {
    /// Whether `svc` is a LoadBalancer Service of our class (or of no class, when we are the default).
    pub fn serves(&self, svc: &Service) -> bool {
        is_ours(svc, &self.class, self.default_class)
    }
}

/// A Service annotation or field Ferrite cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// An annotation value does not parse.
    #[error("annotation {key}={value:?}: {why}")]
    BadAnnotation {
        /// The annotation key.
        key: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// `spec.loadBalancerIP` does not parse.
    #[error("spec.loadBalancerIP {value:?} is not an IP address")]
    BadLoadBalancerIP {
        /// Its value.
        value: String,
    },
    /// A port has a protocol the API does not define.
    #[error("spec.ports: protocol {0:?} is not TCP, UDP or SCTP")]
    BadProtocol(String),
    /// An address annotation and a different `spec.loadBalancerIP` (MetalLB refuses both set).
    #[error(
        "service can not have both {key}={value:?} and spec.loadBalancerIP {spec_ip:?}; \
         remove one (or make them the same address)"
    )]
    ConflictingRequest {
        /// The address annotation key.
        key: &'static str,
        /// Its value.
        value: String,
        /// `spec.loadBalancerIP`.
        spec_ip: String,
    },
}

impl RequestError {
    /// Short reason for Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::BadAnnotation { .. } => "InvalidAnnotation",
            RequestError::BadLoadBalancerIP { .. } => "InvalidLoadBalancerIP",
            RequestError::BadProtocol(_) => "InvalidProtocol",
            RequestError::ConflictingRequest { .. } => "ConflictingRequest",
        }
    }
}

/// A request plus the notes the controller turns into Warning Events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedService {
    /// What to ask the allocator.
    pub request: Request,
    /// Legacy annotation keys in use (each earns a Warning Event).
    pub legacy_keys: Vec<&'static str>,
}

/// The first of `keys` present on the Service: (key, value, trimmed).
///
/// A MetalLB key (`metallb.io/*`, `metallb.universe.tf/*`) whose value is empty after trimming counts
/// as absent, as in MetalLB (its `valueForAnnotation` and `SharingKey` return "", which means no pool,
/// no sharing, no requested address): the key is returned with `None` and the later keys are not read
/// (MetalLB reads its legacy key only when the current one is missing, not when it is empty). An empty
/// `lb.ferrite.dev/*` value stays an error, reported by the caller.
fn annotation<'a>(
    annotations: &'a BTreeMap<String, String>,
    keys: &[&'static str],
) -> Option<(&'static str, Option<&'a str>)> {
    keys.iter().find_map(|k| {
        annotations.get(*k).map(|v| {
            let v = v.trim();
            (*k, (!(v.is_empty() && is_metallb(k))).then_some(v))
        })
    })
}

fn is_legacy(key: &str) -> bool {
    key.starts_with("metallb.universe.tf/")
}

fn is_metallb(key: &str) -> bool {
    key.starts_with("metallb.io/") || is_legacy(key)
}

/// Reads `svc` into a [`Request`]. Call only for Services [`is_ours`].
pub fn parse(
    svc: &Service,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<ParsedService, RequestError> {
    let meta = &svc.metadata;
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let spec = svc.spec.clone().unwrap_or_default();
    let mut legacy_keys = vec![];

    let mut requested = vec![];
    let spec_ip = spec
        .load_balancer_ip
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let ips = annotation(
        annotations,
        &[ann::IPS, ann::METALLB_IPS, ann::METALLB_LEGACY_IPS],
    );
    if let Some((key, _)) = ips
        && is_legacy(key)
    {
        legacy_keys.push(key);
    }
    if let Some((key, Some(value))) = ips {
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: IpAddr = part.parse().map_err(|_| RequestError::BadAnnotation {
                key,
                value: value.to_string(),
                why: format!("{part:?} is not an IP address"),
            })?;
            if requested.contains(&ip) {
                return Err(RequestError::BadAnnotation {
                    key,
                    value: value.to_string(),
                    why: format!("{ip} is listed twice"),
                });
            }
            requested.push(ip);
        }
        if requested.is_empty() {
            return Err(RequestError::BadAnnotation {
                key,
                value: value.to_string(),
                why: "no address given; remove the annotation or list addresses separated by commas".into(),
            });
        }
        // MetalLB refuses the annotation and spec.loadBalancerIP together ("service can not have
        // both"); Ferrite accepts them when they ask for the same single address, and refuses
        // otherwise rather than quietly ignoring one of them.
        if let Some(v) = spec_ip
            && (requested.len() != 1 || v.parse::<IpAddr>().ok() != Some(requested[0]))
        {
            return Err(RequestError::ConflictingRequest {
                key,
                value: value.to_string(),
                spec_ip: v.to_string(),
            });
        }
    } else if let Some(v) = spec_ip {
        requested.push(
            v.parse()
                .map_err(|_| RequestError::BadLoadBalancerIP { value: v.to_string() })?,
        );
    }

    let mut text = |keys: &[&'static str]| -> Result<Option<String>, RequestError> {
        match annotation(annotations, keys) {
            None => Ok(None),
            Some((key, value)) => {
                if is_legacy(key) {
                    legacy_keys.push(key);
                }
                // An empty MetalLB value is absent (see `annotation`).
                let Some(value) = value else { return Ok(None) };
                if value.is_empty() {
                    return Err(RequestError::BadAnnotation {
                        key,
                        value: value.into(),
                        why: "empty value".into(),
                    });
                }
                if value.len() > 253 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(RequestError::BadAnnotation {
                        key,
                        value: value.into(),
                        why: "must be at most 253 characters without spaces".into(),
                    });
                }
                Ok(Some(value.to_string()))
            }
        }
    };
    let pool = text(&[ann::POOL, ann::METALLB_POOL, ann::METALLB_LEGACY_POOL])?;
    let sharing_key = text(&[
        ann::ALLOW_SHARED_IP,
        ann::METALLB_ALLOW_SHARED_IP,
        ann::METALLB_LEGACY_ALLOW_SHARED_IP,
    ])?;

    let families: Vec<Family> = spec
        .ip_families
        .unwrap_or_default()
        .iter()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        })
        .collect();
    let policy = spec.ip_family_policy.as_deref().unwrap_or("SingleStack");
    let families = match policy {
        "RequireDualStack" | "PreferDualStack" => {
            let mut f = families;
            // The API server fills both families for dual-stack Services on a dual-stack cluster; on a
            // single-stack cluster a PreferDualStack Service has one, and we serve just that.
            if policy == "RequireDualStack" && f.len() < 2 {
                for fam in Family::ALL {
                    if !f.contains(&fam) {
                        f.push(fam);
                    }
                }
            }
            f
        }
        _ => families.into_iter().take(1).collect(),
    };

    let mut ports = vec![];
    for p in spec.ports.unwrap_or_default() {
        let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => return Err(RequestError::BadProtocol(other.to_string())),
        };
        ports.push(Port {
            protocol,
            port: u16::try_from(p.port).unwrap_or(0),
        });
    }

    let current = current_ips(svc);
    let created = meta
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    Ok(ParsedService {
        request: Request {
            key: ServiceKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ),
            created,
            labels: meta.labels.clone().unwrap_or_default(),
            namespace_labels: namespace_labels.clone(),
            dual_stack_required: policy == "RequireDualStack",
            families,
            requested,
            pool,
            sharing_key,
            ports,
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            selector: spec.selector.clone().unwrap_or_default(),
            current,
        },
        legacy_keys,
    })
}

/// A request that only keeps what the Service's status shows, for a Service whose annotations do not
/// parse: on a rebuild its addresses must stay taken (they are still advertised) until it is fixed.
pub fn status_only_request(svc: &Service, namespace_labels: &BTreeMap<String, String>) -> Request {
    let current = current_ips(svc);
    let mut families: Vec<Family> = vec![];
    for ip in &current {
        let f = Family::of(*ip);
        if !families.contains(&f) {
            families.push(f);
        }
    }
    Request {
        key: ServiceKey::new(
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default(),
        ),
        created: svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_second())
            .unwrap_or(i64::MAX),
        labels: svc.metadata.labels.clone().unwrap_or_default(),
        namespace_labels: namespace_labels.clone(),
        families,
        current,
        local: svc
            .spec
            .as_ref()
            .and_then(|s| s.external_traffic_policy.as_deref())
            == Some("Local"),
        selector: svc
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default(),
        ..Request::default()
    }
}

/// The IPs in `status.loadBalancer.ingress` (entries that are not IPs are ignored).
pub fn current_ips(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).expect("valid Service")
    }

    fn lb(annotations: serde_json::Value, spec: serde_json::Value) -> Service {
        let mut s = json!({"type": "LoadBalancer", "ports": [{"port": 80}]});
        if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        svc(json!({
            "metadata": {"name": "web", "namespace": "app", "annotations": annotations,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": s
        }))
    }

    #[test]
    fn class_policy() {
        // (case, spec, served as the default class, served when not the default)
        let cases = [
            ("no class", json!({"type": "LoadBalancer"}), true, false),
            (
                "our class",
                json!({"type": "LoadBalancer", "loadBalancerClass": "ferrite.dev/lb"}),
                true,
                true,
            ),
            (
                "other class",
                json!({"type": "LoadBalancer", "loadBalancerClass": "metallb.io/x"}),
                false,
                false,
            ),
            ("ClusterIP", json!({"type": "ClusterIP"}), false, false),
            (
                "ClusterIP of our class",
                json!({"type": "ClusterIP", "loadBalancerClass": "ferrite.dev/lb"}),
                false,
                false,
            ),
            ("NodePort", json!({"type": "NodePort"}), false, false),
        ];
        for (name, spec, as_default, not_default) in cases {
            let s = svc(json!({"metadata": {"name": "x"}, "spec": spec}));
            for (default_class, want) in [(true, as_default), (false, not_default)] {
                let p = Classes {
                    class: "ferrite.dev/lb".into(),
                    default_class,
                };
                assert_eq!(p.serves(&s), want, "{name}, default_class={default_class}");
                assert_eq!(is_ours(&s, "ferrite.dev/lb", default_class), want, "{name}");
            }
        }
        let other = svc(json!({"metadata": {"name": "x"},
                               "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/lb"}}));
        assert!(is_ours(&other, "example.com/lb", false));
    }

    #[test]
    fn traffic_policy_and_selector_are_read_for_sharing() {
        let p = parse(
            &lb(
                json!({}),
                json!({"externalTrafficPolicy": "Local", "selector": {"app": "web"}}),
            ),
            &BTreeMap::new(),
        )
        .expect("parses")
        .request;
        assert!(p.local);
        assert_eq!(p.selector.get("app").map(String::as_str), Some("web"));
        let p = parse(
            &lb(json!({}), json!({"externalTrafficPolicy": "Cluster"})),
            &BTreeMap::new(),
        )
        .expect("parses")
        .request;
        assert!(!p.local && p.selector.is_empty());
    }

    #[test]
    fn requested_ips_in_order_of_preference() {
        // (case, annotations, spec, requested IPs, legacy keys flagged)
        type Case = (
            &'static str,
            serde_json::Value,
            serde_json::Value,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: [Case; 6] = [
            (
                "own key",
                json!({"lb.ferrite.dev/ips": "192.0.2.10"}),
                json!({}),
                vec!["192.0.2.10"],
                vec![],
            ),
            (
                "own key wins over metallb",
                json!({"lb.ferrite.dev/ips": "192.0.2.10", "metallb.io/loadBalancerIPs": "192.0.2.11"}),
                json!({}),
                vec!["192.0.2.10"],
                vec![],
            ),
            (
                "metallb key, dual-stack list",
                json!({"metallb.io/loadBalancerIPs": "192.0.2.11, 2001:db8::11"}),
                json!({}),
                vec!["192.0.2.11", "2001:db8::11"],
                vec![],
            ),
            (
                "legacy key is flagged",
                json!({"metallb.universe.tf/loadBalancerIPs": "192.0.2.12"}),
                json!({}),
                vec!["192.0.2.12"],
                vec!["metallb.universe.tf/loadBalancerIPs"],
            ),
            (
                "spec.loadBalancerIP",
                json!({}),
                json!({"loadBalancerIP": "192.0.2.13"}),
                vec!["192.0.2.13"],
                vec![],
            ),
            ("nothing requested", json!({}), json!({}), vec![], vec![]),
        ];
        for (name, annotations, spec, want, legacy) in cases {
            let p = parse(&lb(annotations, spec), &BTreeMap::new()).expect(name);
            let want: Vec<IpAddr> = want.iter().map(|s| s.parse().expect("ip")).collect();
            assert_eq!(p.request.requested, want, "{name}");
            assert_eq!(p.legacy_keys, legacy, "{name}");
        }
    }

    #[test]
    fn bad_values_are_errors_that_name_the_key() {
        let cases = [
            (
                "not an ip",
                json!({"lb.ferrite.dev/ips": "192.0.2.300"}),
                json!({}),
                "lb.ferrite.dev/ips",
            ),
            (
                "duplicate",
                json!({"lb.ferrite.dev/ips": "192.0.2.1,192.0.2.1"}),
                json!({}),
                "listed twice",
            ),
            (
                "empty list",
                json!({"metallb.io/loadBalancerIPs": " , "}),
                json!({}),
                "no address given",
            ),
            (
                "empty pool",
                json!({"lb.ferrite.dev/pool": ""}),
                json!({}),
                "lb.ferrite.dev/pool",
            ),
            (
                "pool with spaces",
                json!({"metallb.io/address-pool": "a b"}),
                json!({}),
                "metallb.io/address-pool",
            ),
            (
                "bad loadBalancerIP",
                json!({}),
                json!({"loadBalancerIP": "nope"}),
                "spec.loadBalancerIP",
            ),
            (
                "bad protocol",
                json!({}),
                json!({"ports": [{"port": 80, "protocol": "ICMP"}]}),
                "ICMP",
            ),
            (
                "empty own ips",
                json!({"lb.ferrite.dev/ips": ""}),
                json!({}),
                "lb.ferrite.dev/ips",
            ),
            (
                "empty own sharing key",
                json!({"lb.ferrite.dev/allow-shared-ip": " "}),
                json!({}),
                "lb.ferrite.dev/allow-shared-ip",
            ),
            (
                "annotation and a different loadBalancerIP",
                json!({"metallb.io/loadBalancerIPs": "192.0.2.10"}),
                json!({"loadBalancerIP": "192.0.2.11"}),
                "can not have both metallb.io/loadBalancerIPs",
            ),
            (
                "own key and a different loadBalancerIP",
                json!({"lb.ferrite.dev/ips": "192.0.2.10"}),
                json!({"loadBalancerIP": "192.0.2.11"}),
                "can not have both lb.ferrite.dev/ips",
            ),
            (
                "dual-stack annotation and a loadBalancerIP",
                json!({"metallb.universe.tf/loadBalancerIPs": "192.0.2.10,2001:db8::10"}),
                json!({"loadBalancerIP": "192.0.2.10"}),
                "spec.loadBalancerIP \"192.0.2.10\"",
            ),
            (
                "annotation and an unparsable loadBalancerIP",
                json!({"metallb.io/loadBalancerIPs": "192.0.2.10"}),
                json!({"loadBalancerIP": "nope"}),
                "can not have both",
            ),
        ];
        for (name, annotations, spec, needle) in cases {
            let err = parse(&lb(annotations, spec), &BTreeMap::new()).expect_err(name);
            assert!(err.to_string().contains(needle), "{name}: {err}");
        }
        let err = parse(
            &lb(
                json!({"metallb.io/loadBalancerIPs": "192.0.2.10"}),
                json!({"loadBalancerIP": "192.0.2.11"}),
            ),
            &BTreeMap::new(),
        )
        .expect_err("conflict");
        assert_eq!(err.reason(), "ConflictingRequest");
    }

    #[test]
    fn empty_metallb_values_are_absent_as_in_metallb() {
        // (case, annotations, spec, requested, pool, sharing key, legacy keys flagged)
        type Case = (
            &'static str,
            serde_json::Value,
            serde_json::Value,
            Vec<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
            Vec<&'static str>,
        );
        let cases: [Case; 7] = [
            (
                "every metallb.io key empty",
                json!({"metallb.io/loadBalancerIPs": "", "metallb.io/address-pool": "",
                       "metallb.io/allow-shared-ip": ""}),
                json!({}),
                vec![],
                None,
                None,
                vec![],
            ),
            (
                "legacy keys empty or blank (still flagged)",
                json!({"metallb.universe.tf/loadBalancerIPs": " ", "metallb.universe.tf/address-pool": "",
                       "metallb.universe.tf/allow-shared-ip": "  "}),
                json!({}),
                vec![],
                None,
                None,
                vec![
                    "metallb.universe.tf/loadBalancerIPs",
                    "metallb.universe.tf/address-pool",
                    "metallb.universe.tf/allow-shared-ip",
                ],
            ),
            (
                "an empty annotation leaves spec.loadBalancerIP in charge",
                json!({"metallb.io/loadBalancerIPs": ""}),
                json!({"loadBalancerIP": "192.0.2.13"}),
                vec!["192.0.2.13"],
                None,
                None,
                vec![],
            ),
            (
                // MetalLB reads the legacy key only when the current one is missing.
                "an empty current key hides the legacy one",
                json!({"metallb.io/address-pool": "", "metallb.universe.tf/address-pool": "lan"}),
                json!({}),
                vec![],
                None,
                None,
                vec![],
            ),
            (
                "an empty metallb key does not hide Ferrite's",
                json!({"metallb.io/address-pool": "", "lb.ferrite.dev/pool": "lan",
                       "metallb.io/allow-shared-ip": "", "lb.ferrite.dev/allow-shared-ip": "k"}),
                json!({}),
                vec![],
                Some("lan"),
                Some("k"),
                vec![],
            ),
            (
                "annotation equal to spec.loadBalancerIP is accepted",
                json!({"metallb.io/loadBalancerIPs": "192.0.2.10"}),
                json!({"loadBalancerIP": " 192.0.2.10"}),
                vec!["192.0.2.10"],
                None,
                None,
                vec![],
            ),
            (
                "empty spec.loadBalancerIP is absent",
                json!({"metallb.io/loadBalancerIPs": "192.0.2.10"}),
                json!({"loadBalancerIP": ""}),
                vec!["192.0.2.10"],
                None,
                None,
                vec![],
            ),
        ];
        for (name, annotations, spec, ips, pool, key, legacy) in cases {
            let p = parse(&lb(annotations, spec), &BTreeMap::new()).expect(name);
            let ips: Vec<IpAddr> = ips.iter().map(|s| s.parse().expect("ip")).collect();
            assert_eq!(p.request.requested, ips, "{name}");
            assert_eq!(p.request.pool.as_deref(), pool, "{name}");
            assert_eq!(p.request.sharing_key.as_deref(), key, "{name}");
            assert_eq!(p.legacy_keys, legacy, "{name}");
        }
    }

    #[test]
    fn families_ports_pool_sharing_and_status() {
        let s = svc(json!({
            "metadata": {"name": "dns", "namespace": "infra", "labels": {"app": "dns"},
                         "annotations": {"metallb.io/address-pool": "lan", "lb.ferrite.dev/allow-shared-ip": "dns"},
                         "creationTimestamp": "2026-01-01T00:00:10Z"},
            "spec": {"type": "LoadBalancer", "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                     "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "2001:db8::5"}, {"hostname": "x.example"}, {"ip": "192.0.2.5"}]}}
        }));
        let r = parse(&s, &BTreeMap::from([("team".to_string(), "infra".to_string())]))
            .expect("parses")
            .request;
        assert_eq!(r.key, ServiceKey::new("infra", "dns"));
        assert_eq!(r.families, vec![Family::V6, Family::V4]);
        assert!(r.dual_stack_required);
        assert_eq!(r.pool.as_deref(), Some("lan"));
        assert_eq!(r.sharing_key.as_deref(), Some("dns"));
        assert_eq!(
            r.ports,
            vec![
                Port {
                    protocol: Protocol::Udp,
                    port: 53
                },
                Port {
                    protocol: Protocol::Tcp,
                    port: 53
                }
            ]
        );
        assert_eq!(
            r.current,
            vec![
                "2001:db8::5".parse::<IpAddr>().unwrap(),
                "192.0.2.5".parse().unwrap()
            ]
        );
        assert_eq!(r.namespace_labels.get("team").map(String::as_str), Some("infra"));
        assert_eq!(r.created, 1767225610);

        // SingleStack serves only the primary family, whatever ipFamilies lists.
        let single = lb(
            json!({}),
            json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "SingleStack"}),
        );
        assert_eq!(
            parse(&single, &BTreeMap::new()).expect("parses").request.families,
            vec![Family::V4]
        );
    }
}
