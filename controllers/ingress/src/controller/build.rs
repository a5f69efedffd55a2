//! One snapshot build: a pure function of the cached objects.
//!
//! ```text
//!   IngressClasses + Ingresses ──class::decide──> served Ingresses
//!        │ each backend checked against the Services: missing Service / port, ExternalName
//!        v          ──> Problem on the Ingress; the path stays, with no endpoints (503)
//!   RouteTable::compile ──> route warnings (invalid host/path/backend, conflicts: on the younger Ingress)
//!        │ every backend: Service port -> EndpointSlice port (by the Service port's name) -> ready addresses
//!        │ every TLS Secret: loaded certificate | missing | malformed (its last good certificate kept)
//!        │   (Problem on each referencing Ingress); a certificate not valid for a host it is bound
//!        │   to: that host gets the default certificate (CertificateHostMismatch)
//!        │ HTTP-01 Challenges of our classes: host + token -> key authorization
//!        v
//!   Snapshot + problems + served Ingresses + referenced Secrets
//! ```
//!
//! A path (or defaultBackend) whose Service or Service port does not exist, or whose Service is of type
//! ExternalName, stays in the table with no endpoints: its requests get 503 (ingress-nginx keeps such a
//! location with an empty upstream the same way), never a shorter path, a younger Ingress's rule or the
//! default backend, and a Warning Event names the problem. A Service that appears later gets endpoints
//! at the next build.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ferrite_kit::endpointslice::Slice;
use k8s_openapi::api::core::v1::{Service, ServicePort as SvcPort};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use rustls::sign::CertifiedKey;

use crate::class::{self, ClassDecision};
use crate::host::HostPattern;
use crate::proxy::Snapshot;
use crate::routes::{BackendRef, IngressRef, RouteTable, SecretRef, ServicePort};

/// EndpointSlices by (namespace, Service name).
pub type SlicesByService = HashMap<(String, String), Vec<Arc<Slice>>>;

/// A problem found in one Ingress, reported as a Warning Event on it (deduplicated by the writer).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Problem {
    pub ingress: IngressRef,
    /// Stable Event reason: the route warnings' (`InvalidPath`, `PathConflict`, ...), `ServiceNotFound`,
    /// `ServicePortNotFound`, `TLSSecretNotFound`, `InvalidCertificate`, `InvalidKey`, `KeyMismatch`,
    /// `CertificateHostMismatch`.
    pub reason: &'static str,
    pub message: String,
}

/// A certificate that can be served: the signing certificate, the leaf's notAfter (Unix seconds)
/// and the names the leaf is valid for.
#[derive(Clone)]
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    pub not_after: Option<i64>,
    pub names: Arc<CertNames>,
}

impl LoadedCert {
    /// Reads notAfter and the names from the leaf (the first certificate of the chain).
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        let leaf = key
            .cert
            .first()
            .and_then(|der| x509_parser::parse_x509_certificate(der.as_ref()).ok())
            .map(|(_, c)| c);
        let not_after = leaf.as_ref().map(|c| c.validity().not_after.timestamp());
        let names = leaf.as_ref().map(CertNames::of).unwrap_or_default();
        LoadedCert {
            key,
            not_after,
            names: Arc::new(names),
        }
    }
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "notAfter={:?}, names={:?}", self.not_after, self.names)
    }
}

/// The DNS names a leaf certificate is valid for, as ingress-nginx checks a certificate against a
/// host (`createServers`: Go's `VerifyHostname`, then its own `verifyHostname` with the Common Name
/// fallback): the dNSName Subject Alternative Names, or, when there are none, the subject's CN.
/// Lowercase, without a trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertNames {
    pub dns: Vec<String>,
    pub common_name: Option<String>,
}

fn normalize_name(n: &str) -> String {
    n.trim_end_matches('.').to_ascii_lowercase()
}

/// nginx's (and Go's) `matchHostnames`: same number of labels, each equal, except a first pattern
/// label `*`, which matches any one label.
fn match_hostname(pattern: &str, host: &str) -> bool {
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    let (mut p, mut h) = (pattern.split('.'), host.split('.'));
    let mut first = true;
    loop {
        match (p.next(), h.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) => {
                if !(first && a == "*") && a != b {
                    return false;
                }
            }
            _ => return false,
        }
        first = false;
    }
}

impl CertNames {
    pub fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Self {
        let dns = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(normalize_name(d)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(normalize_name);
        CertNames { dns, common_name }
    }

    /// Whether the certificate is valid for a rule host. A wildcard rule host (`*.example.com`)
    /// is covered by the same wildcard name only, as in ingress-nginx.
    pub fn covers(&self, host: &HostPattern) -> bool {
        let host = normalize_name(&host.to_string());
        if self.dns.is_empty() {
            return self
                .common_name
                .as_deref()
                .is_some_and(|cn| match_hostname(cn, &host));
        }
        self.dns.iter().any(|d| match_hostname(d, &host))
    }
}

/// What the Secret cache knows about one referenced TLS Secret.
#[derive(Clone)]
pub enum CertState {
    /// Loaded and servable.
    Loaded(LoadedCert),
    /// The Secret exists but its current data cannot serve (reason as
    /// [`crate::proxy::CertError::reason`], message). `last_good`: the certificate it held before
    /// this update, still served (ingress-nginx keeps the last good certificate of a Secret updated
    /// to malformed data; only a delete removes it).
    Invalid {
        reason: &'static str,
        message: String,
        last_good: Option<LoadedCert>,
    },
    /// The Secret exists and is being read (its data was not kept before it was referenced).
    Loading,
}

impl CertState {
    /// The certificate to serve, if any: the loaded one, or an invalid Secret's last good one.
    pub fn servable(&self) -> Option<&LoadedCert> {
        match self {
            CertState::Loaded(c) => Some(c),
            CertState::Invalid { last_good, .. } => last_good.as_ref(),
            CertState::Loading => None,
        }
    }

    /// The state after an update of the Secret was read into `self`: an invalid update keeps the
    /// certificate `previous` served.
    pub fn after(self, previous: Option<&CertState>) -> CertState {
        match self {
            CertState::Invalid {
                reason,
                message,
                last_good: None,
            } => CertState::Invalid {
                reason,
                message,
                last_good: previous.and_then(CertState::servable).cloned(),
            },
            other => other,
        }
    }
}

impl std::fmt::Debug for CertState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertState::Loaded(c) => write!(f, "Loaded({c:?})"),
            CertState::Invalid {
                reason,
                message,
                last_good,
            } => write!(f, "Invalid({reason}: {message}; last good: {last_good:?})"),
            CertState::Loading => f.write_str("Loading"),
        }
    }
}

/// An HTTP-01 token to serve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AcmeToken {
    pub host: String,
    pub token: String,
    pub key_authorization: String,
    /// The IngressClass the Challenge asks for (`None`: any of ours).
    pub class: Option<String>,
}

/// Everything a build reads.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub controller: &'a str,
    pub classes: &'a [IngressClass],
    pub ingresses: &'a [Arc<Ingress>],
    /// Services by (namespace, name).
    pub services: &'a HashMap<(String, String), Arc<Service>>,
    /// EndpointSlices by (namespace, Service name).
    pub slices: &'a SlicesByService,
    /// Referenced TLS Secrets the cache holds (absent: the Secret does not exist).
    pub certificates: &'a HashMap<SecretRef, CertState>,
    /// `--default-ssl-certificate`, when given.
    pub default_secret: Option<&'a SecretRef>,
    /// The self-signed fallback.
    pub self_signed: &'a Arc<CertifiedKey>,
    pub acme: &'a [AcmeToken],
}

/// The result of a build.
#[derive(Debug)]
pub struct Built {
    pub snapshot: Snapshot,
    /// Sorted, deduplicated.
    pub problems: Vec<Problem>,
    /// Served Ingresses, oldest first.
    pub served: Vec<IngressRef>,
    /// The TLS Secrets this snapshot wants (the Secret cache keeps the data of these only), with the
    /// default certificate's.
    pub secrets: BTreeSet<SecretRef>,
    /// notAfter of every loaded referenced Secret (the expiry gauge).
    pub expiry: BTreeMap<SecretRef, i64>,
}

/// The Service port an Ingress backend port names. By number only TCP ports count (as ingress-nginx):
/// a Service with `443/UDP` (QUIC) and `443/TCP` serves HTTP on the TCP one. Names are unique.
fn service_port<'a>(svc: &'a Service, port: &ServicePort) -> Option<&'a SvcPort> {
    let ports = svc.spec.as_ref()?.ports.as_ref()?;
    ports.iter().find(|p| match port {
        ServicePort::Number(n) => {
            p.port == i32::from(*n) && p.protocol.as_deref().is_none_or(|proto| proto == "TCP")
        }
        ServicePort::Name(n) => p.name.as_deref() == Some(n.as_str()),
    })
}

fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// Why a backend cannot be used: `None` when its Service and port exist.
fn backend_problem(
    services: &HashMap<(String, String), Arc<Service>>,
    backend: &BackendRef,
) -> Option<(&'static str, String)> {
    let Some(svc) = services.get(&(backend.namespace.clone(), backend.service.clone())) else {
        return Some((
            "ServiceNotFound",
            format!("Service {}/{} does not exist", backend.namespace, backend.service),
        ));
    };
    if is_external_name(svc) {
        return Some((
            "UnsupportedService",
            format!(
                "Service {}/{} is of type ExternalName, which has no endpoints to proxy to",
                backend.namespace, backend.service
            ),
        ));
    }
    if service_port(svc, &backend.port).is_none() {
        return Some((
            "ServicePortNotFound",
            format!(
                "Service {}/{} has no {}port {}",
                backend.namespace,
                backend.service,
                if matches!(backend.port, ServicePort::Number(_)) {
                    "TCP "
                } else {
                    ""
                },
                backend.port
            ),
        ));
    }
    None
}

/// The problems of the backends of `ing` whose Service or port is missing (or that are ExternalName
/// Services). Nothing is removed: such a path stays routed, with no endpoints, so the proxy answers 503
/// for it (as ingress-nginx does) instead of letting the request fall through to a shorter path, a
/// younger Ingress or the default backend. Indices are those of the Ingress as written.
fn backend_problems(
    ing: &Ingress,
    services: &HashMap<(String, String), Arc<Service>>,
    problems: &mut Vec<Problem>,
) {
    let me = IngressRef::of(ing);
    let Some(spec) = ing.spec.as_ref() else { return };
    let check = |b: &IngressBackend| -> Option<(&'static str, String)> {
        // Backends the route table rejects anyway are left for its own warning.
        let r = BackendRef::from_spec(&me.namespace, b).ok()?;
        backend_problem(services, &r)
    };
    if let Some((reason, m)) = spec.default_backend.as_ref().and_then(check) {
        problems.push(Problem {
            ingress: me.clone(),
            reason,
            message: format!("defaultBackend: {m}; it answers 503"),
        });
    }
    for (ri, rule) in spec.rules.iter().flatten().enumerate() {
        for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
            if let Some((reason, m)) = check(&p.backend) {
                problems.push(Problem {
                    ingress: me.clone(),
                    reason,
                    message: format!("rules[{ri}].http.paths[{pi}]: {m}; the path answers 503"),
                });
            }
        }
    }
}

/// Ready endpoints of a backend whose Service and port exist.
fn endpoints(inputs: &Inputs<'_>, backend: &BackendRef) -> Vec<SocketAddr> {
    let key = (backend.namespace.clone(), backend.service.clone());
    let Some(svc) = inputs.services.get(&key) else {
        return Vec::new();
    };
    if is_external_name(svc) {
        return Vec::new();
    }
    let Some(sp) = service_port(svc, &backend.port) else {
        return Vec::new();
    };
    let want = sp.name.as_deref().unwrap_or("");
    let mut out: Vec<SocketAddr> = Vec::new();
    for slice in inputs.slices.get(&key).into_iter().flatten() {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        // The slice's ports carry the Service port's name and the endpoints' (target) port number.
        let Some(port) = slice
            .port(Some(want))
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p > 0)
        else {
            continue;
        };
        for ep in slice.endpoints.iter().filter(|e| e.ready && !e.terminating) {
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The Ingresses referencing each TLS Secret (for the Secret problems).
fn secret_users(served: &[&Ingress]) -> BTreeMap<SecretRef, BTreeSet<IngressRef>> {
    let mut users: BTreeMap<SecretRef, BTreeSet<IngressRef>> = BTreeMap::new();
    for ing in served {
        let me = IngressRef::of(ing);
        for t in ing.spec.iter().flat_map(|s| s.tls.iter().flatten()) {
            if let Some(name) = t.secret_name.as_deref().filter(|n| !n.is_empty()) {
                users
                    .entry(SecretRef {
                        namespace: me.namespace.clone(),
                        name: name.to_owned(),
                    })
                    .or_default()
                    .insert(me.clone());
            }
        }
    }
    users
}

/// Whether an IngressClass name is ours.
fn ours(classes: &[IngressClass], controller: &str, name: &str) -> bool {
    classes.iter().any(|c| {
        c.metadata.name.as_deref() == Some(name)
            && c.spec.as_ref().and_then(|s| s.controller.as_deref()) == Some(controller)
    })
}

/// Builds the snapshot (generation 0: the caller numbers it).
pub fn build(inputs: &Inputs<'_>) -> Built {
    let mut problems: Vec<Problem> = Vec::new();
    let served_objs: Vec<&Ingress> = inputs
        .ingresses
        .iter()
        .map(|i| &**i)
        .filter(|ing| {
            matches!(
                class::decide(ing, inputs.classes, inputs.controller),
                ClassDecision::Served { .. }
            )
        })
        .collect();
    for ing in &served_objs {
        backend_problems(ing, inputs.services, &mut problems);
    }
    let compiled = RouteTable::compile(served_objs.iter().copied());
    problems.extend(compiled.warnings.iter().map(|w| Problem {
        ingress: w.ingress.clone(),
        reason: w.kind.reason(),
        message: w.message.clone(),
    }));
    let table = compiled.table;

    // Endpoints of every backend the table can route to.
    let mut backends: Vec<&BackendRef> = table.routes().iter().map(|r| &r.backend).collect();
    backends.extend(table.default_backends().map(|d| &d.backend));
    let mut resolved: HashMap<BackendRef, Vec<SocketAddr>> = HashMap::new();
    for b in backends {
        if !resolved.contains_key(b) {
            resolved.insert(b.clone(), endpoints(inputs, b));
        }
    }

    // Certificates.
    let mut secrets: BTreeSet<SecretRef> = table.tls_secrets().into_iter().cloned().collect();
    let users = secret_users(&served_objs);
    let mut loaded: Vec<(SecretRef, Arc<CertifiedKey>)> = Vec::new();
    let mut expiry: BTreeMap<SecretRef, i64> = BTreeMap::new();
    let mut names: HashMap<&SecretRef, Arc<CertNames>> = HashMap::new();
    for secret in &secrets {
        let state = inputs.certificates.get(secret);
        if let Some(c) = state.and_then(CertState::servable) {
            loaded.push((secret.clone(), c.key.clone()));
            names.insert(secret, c.names.clone());
            if let Some(t) = c.not_after {
                expiry.insert(secret.clone(), t);
            }
        }
        let problem = match state {
            Some(CertState::Loaded(_)) | Some(CertState::Loading) => None,
            Some(CertState::Invalid {
                reason,
                message,
                last_good,
            }) => Some((
                *reason,
                if last_good.is_some() {
                    format!(
                        "TLS Secret {secret} cannot be served ({message}); its previous certificate is still served"
                    )
                } else {
                    format!(
                        "TLS Secret {secret} cannot be served ({message}); its hosts get the default certificate"
                    )
                },
            )),
            None => Some((
                "TLSSecretNotFound",
                format!(
                    "TLS Secret {secret} does not exist (or is not of type kubernetes.io/tls); its hosts get the default certificate"
                ),
            )),
        };
        if let Some((reason, message)) = problem {
            for ing in users.get(secret).into_iter().flatten() {
                problems.push(Problem {
                    ingress: ing.clone(),
                    reason,
                    message: message.clone(),
                });
            }
        }
    }
    // A certificate that is not valid for a host it is bound to is not served for it: the host gets
    // the default certificate (and is still redirected), as ingress-nginx's createServers does.
    let mut mismatched: Vec<HostPattern> = Vec::new();
    for binding in table.tls_bindings() {
        let Some(secret) = binding.secret.as_ref() else {
            continue;
        };
        if let Some(n) = names.get(secret)
            && !n.covers(&binding.host)
        {
            mismatched.push(binding.host.clone());
            problems.push(Problem {
                ingress: binding.ingress.clone(),
                reason: "CertificateHostMismatch",
                message: format!(
                    "the certificate of TLS Secret {secret} has no Subject Alternative Name (or Common Name) for {}; \
                     the host gets the default certificate",
                    binding.host
                ),
            });
        }
    }
    let mut default_key = inputs.self_signed.clone();
    if let Some(d) = inputs.default_secret {
        secrets.insert(d.clone());
        match inputs.certificates.get(d).and_then(CertState::servable) {
            Some(c) => {
                default_key = c.key.clone();
                if let Some(t) = c.not_after {
                    expiry.insert(d.clone(), t);
                }
            }
            None => {
                let other = inputs.certificates.get(d);
                tracing::warn!(secret = %d, state = ?other, "the --default-ssl-certificate Secret cannot be served; using the self-signed default")
            }
        }
    }

    let served: Vec<IngressRef> = compiled.served;
    let mut snapshot = Snapshot::new(table, default_key);
    for (b, eps) in resolved {
        snapshot.set_endpoints(b, eps);
    }
    for (s, k) in loaded {
        snapshot.set_certificate(s, k);
    }
    for host in mismatched {
        snapshot.serve_default_certificate_for(host);
    }
    for t in inputs.acme {
        if let Some(c) = &t.class
            && !ours(inputs.classes, inputs.controller, c)
        {
            continue;
        }
        if let Err(e) = snapshot.set_acme_token(&t.host, &t.token, &t.key_authorization) {
            tracing::warn!(host = %t.host, error = %e, "Challenge token not served");
        }
    }
    problems.sort();
    problems.dedup();
    Built {
        snapshot,
        problems,
        served,
        secrets,
        expiry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_kit::kube::api::DynamicObject;
    use serde_json::json;

    fn ingress(v: serde_json::Value) -> Arc<Ingress> {
        Arc::new(serde_json::from_value(v).expect("ingress"))
    }

    fn class(name: &str, controller: &str) -> IngressClass {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"controller": controller}}))
            .expect("class")
    }

    fn service(ns: &str, name: &str, ports: serde_json::Value) -> ((String, String), Arc<Service>) {
        (
            (ns.into(), name.into()),
            Arc::new(
                serde_json::from_value(
                    json!({"metadata": {"name": name, "namespace": ns}, "spec": {"ports": ports}}),
                )
                .expect("service"),
            ),
        )
    }

    fn slice(ns: &str, svc: &str, ports: serde_json::Value, eps: serde_json::Value) -> Slice {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{svc}-x"), "namespace": ns, "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": eps
        }))
        .expect("slice");
        Slice::from_dynamic(&o)
    }

    /// `build` with no default certificate and no ACME tokens (most tests).
    fn build_plain(
        classes: &[IngressClass],
        ingresses: &[Arc<Ingress>],
        services: &HashMap<(String, String), Arc<Service>>,
        slices: &SlicesByService,
        certificates: &HashMap<SecretRef, CertState>,
        self_signed: &Arc<CertifiedKey>,
    ) -> Built {
        build(&Inputs {
            controller: crate::CONTROLLER_NAME,
            classes,
            ingresses,
            services,
            slices,
            certificates,
            default_secret: None,
            self_signed,
            acme: &[],
        })
    }

    /// A self-signed certificate with subject CN `cn` and dNSName SANs `sans` (none: no SAN
    /// extension).
    fn cert(cn: &str, sans: &[&str]) -> Arc<CertifiedKey> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().expect("key");
        let c = params.self_signed(&key).expect("cert");
        crate::proxy::certified_key_from_pem(c.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("certified key")
    }

    fn rule(host: &str, path: &str, svc: &str, port: serde_json::Value) -> serde_json::Value {
        json!({"host": host, "http": {"paths": [
            {"path": path, "pathType": "Prefix", "backend": {"service": {"name": svc, "port": port}}}
        ]}})
    }

    #[test]
    fn endpoints_resolve_by_number_and_name_and_missing_services_skip_only_their_path() {
        let classes = vec![
            class("ferrite", "ferrite.dev/ingress"),
            class("other", "example.com/x"),
        ];
        let ingresses = vec![
            ingress(
                json!({"metadata": {"name": "a", "namespace": "app", "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"ingressClassName": "ferrite", "rules": [
                    rule("a.test", "/", "web", json!({"number": 80})),
                    rule("b.test", "/", "web", json!({"name": "http"})),
                    rule("c.test", "/", "gone", json!({"number": 80})),
                    rule("d.test", "/", "web", json!({"number": 81})),
                ]}}),
            ),
            ingress(json!({"metadata": {"name": "not-ours", "namespace": "app"},
                "spec": {"ingressClassName": "other", "rules": [rule("x.test", "/", "web", json!({"number": 80}))]}})),
        ];
        let services: HashMap<_, _> = [service(
            "app",
            "web",
            json!([{"name": "http", "port": 80, "targetPort": 8080}]),
        )]
        .into();
        let slices: HashMap<_, _> = [(
            ("app".to_string(), "web".to_string()),
            vec![Arc::new(slice(
                "app",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([
                    {"addresses": ["127.0.0.2"], "conditions": {"ready": true}},
                    {"addresses": ["127.0.0.3"], "conditions": {"ready": false}}
                ]),
            ))],
        )]
        .into();
        let certificates = HashMap::new();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &slices,
            &certificates,
            &self_signed,
        );
        assert_eq!(built.served.len(), 1);
        let s = &built.snapshot;
        let want: Vec<SocketAddr> = vec!["127.0.0.2:8080".parse().expect("addr")];
        for host in ["a.test", "b.test"] {
            let b = s.routes().route(host, "/").backend().cloned().expect("routed");
            assert_eq!(s.endpoints(&b), &want[..], "{host}");
        }
        // A missing Service or port keeps its route, with no endpoints: the proxy answers 503.
        for (host, service) in [("c.test", "gone"), ("d.test", "web")] {
            let b = s
                .routes()
                .route(host, "/")
                .backend()
                .cloned()
                .expect("still routed");
            assert_eq!(b.service, service, "{host}");
            assert!(s.endpoints(&b).is_empty(), "{host} has no endpoints");
        }
        assert!(s.routes().route("x.test", "/").backend().is_none(), "not ours");
        let reasons: Vec<&str> = built.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, vec!["ServiceNotFound", "ServicePortNotFound"]);
    }

    #[test]
    fn a_broken_backend_answers_503_instead_of_falling_through() {
        let classes = vec![class("ferrite", "ferrite.dev/ingress")];
        let path = |p: &str, svc: &str| json!({"path": p, "pathType": "Prefix", "backend": {"service": {"name": svc, "port": {"number": 80}}}});
        let ingresses = vec![
            ingress(
                json!({"metadata": {"name": "shop", "namespace": "app", "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"ingressClassName": "ferrite",
                    "defaultBackend": {"service": {"name": "fallback-gone", "port": {"number": 80}}},
                    "rules": [{"host": "shop.test", "http": {"paths": [
                        path("/", "storefront"), path("/admin", "admin"), path("/ext", "external"),
                        {"path": "/quic", "pathType": "Prefix", "backend": {"service": {"name": "quic", "port": {"number": 443}}}},
                        {"path": "/dns", "pathType": "Prefix", "backend": {"service": {"name": "udp-only", "port": {"number": 53}}}}]}}]}}),
            ),
            // A younger Ingress routing the same path must not take it over.
            ingress(
                json!({"metadata": {"name": "young", "namespace": "app", "creationTimestamp": "2024-01-02T00:00:00Z"},
                "spec": {"ingressClassName": "ferrite",
                    "rules": [{"host": "shop.test", "http": {"paths": [path("/admin", "storefront")]}}]}}),
            ),
        ];
        let mut services: HashMap<_, _> = [
            service("app", "storefront", json!([{"port": 80}])),
            // By number, only TCP ports count: 443/UDP (QUIC) is not an HTTP backend.
            service(
                "app",
                "quic",
                json!([{"name": "quic", "port": 443, "protocol": "UDP"},
                       {"name": "https", "port": 443, "protocol": "TCP"}]),
            ),
            service(
                "app",
                "udp-only",
                json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
            ),
        ]
        .into();
        services.insert(
            ("app".into(), "external".into()),
            Arc::new(
                serde_json::from_value(json!({"metadata": {"name": "external", "namespace": "app"},
                    "spec": {"type": "ExternalName", "externalName": "example.org", "ports": [{"port": 80}]}}))
                .expect("service"),
            ),
        );
        let slices: HashMap<_, _> = [
            (
                ("app".to_string(), "storefront".to_string()),
                vec![Arc::new(slice(
                    "app",
                    "storefront",
                    json!([{"port": 8080}]),
                    json!([{"addresses": ["127.0.0.2"]}]),
                ))],
            ),
            (
                ("app".to_string(), "quic".to_string()),
                vec![Arc::new(slice(
                    "app",
                    "quic",
                    json!([{"name": "quic", "port": 9443, "protocol": "UDP"},
                           {"name": "https", "port": 8443, "protocol": "TCP"}]),
                    json!([{"addresses": ["127.0.0.5"]}]),
                ))],
            ),
        ]
        .into();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &slices,
            &HashMap::new(),
            &self_signed,
        );
        let s = &built.snapshot;
        let to = |host: &str, target: &str| {
            let m = s.routes().route(host, target);
            let b = m.backend().cloned().expect("routed");
            (b.service.clone(), s.endpoints(&b).len())
        };
        assert_eq!(to("shop.test", "/admin/users"), ("admin".into(), 0));
        assert_eq!(to("shop.test", "/ext"), ("external".into(), 0));
        assert_eq!(to("shop.test", "/cart"), ("storefront".into(), 1));
        let quic = s
            .routes()
            .route("shop.test", "/quic")
            .backend()
            .cloned()
            .expect("routed");
        assert_eq!(
            s.endpoints(&quic),
            &["127.0.0.5:8443".parse::<SocketAddr>().expect("addr")][..]
        );
        assert_eq!(to("shop.test", "/dns"), ("udp-only".into(), 0));
        // The messages name the paths as written (no index shifted by a removed path).
        let mut messages: Vec<(&str, &str)> = built
            .problems
            .iter()
            .filter(|p| p.ingress.name == "shop")
            .map(|p| (p.reason, p.message.as_str()))
            .collect();
        messages.sort();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert!(messages[0].0 == "ServiceNotFound" && messages[0].1.starts_with("defaultBackend:"));
        assert!(messages[1].0 == "ServiceNotFound" && messages[1].1.starts_with("rules[0].http.paths[1]:"));
        assert!(
            messages[2].0 == "ServicePortNotFound" && messages[2].1.starts_with("rules[0].http.paths[4]:"),
            "{messages:?}"
        );
        assert!(
            messages[3].0 == "UnsupportedService" && messages[3].1.starts_with("rules[0].http.paths[2]:"),
            "{messages:?}"
        );
        let young: Vec<&str> = built
            .problems
            .iter()
            .filter(|p| p.ingress.name == "young")
            .map(|p| p.reason)
            .collect();
        assert_eq!(young, vec!["PathConflict"]);
    }

    #[test]
    fn tls_secrets_missing_or_invalid_are_problems_on_their_ingresses() {
        let classes = vec![class("ferrite", "ferrite.dev/ingress")];
        let ingresses = vec![ingress(json!({"metadata": {"name": "a", "namespace": "app"},
            "spec": {"ingressClassName": "ferrite",
                "tls": [{"hosts": ["a.test"], "secretName": "good"}, {"hosts": ["b.test"], "secretName": "bad"},
                        {"hosts": ["c.test"], "secretName": "absent"}],
                "rules": [rule("a.test", "/", "web", json!({"number": 80})),
                          rule("b.test", "/", "web", json!({"number": 80})),
                          rule("c.test", "/", "web", json!({"number": 80}))]}}))];
        let services: HashMap<_, _> = [service("app", "web", json!([{"port": 80}]))].into();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let r = |n: &str| SecretRef {
            namespace: "app".into(),
            name: n.into(),
        };
        let certificates: HashMap<_, _> = [
            (
                r("good"),
                CertState::Loaded(LoadedCert {
                    key: cert("a", &["a.test"]),
                    not_after: Some(42),
                    names: Arc::new(CertNames {
                        dns: vec!["a.test".into()],
                        common_name: None,
                    }),
                }),
            ),
            (
                r("bad"),
                CertState::Invalid {
                    reason: "KeyMismatch",
                    message: "x".into(),
                    last_good: None,
                },
            ),
        ]
        .into();
        let built = build(&Inputs {
            controller: crate::CONTROLLER_NAME,
            classes: &classes,
            ingresses: &ingresses,
            services: &services,
            slices: &HashMap::new(),
            certificates: &certificates,
            default_secret: None,
            self_signed: &self_signed,
            acme: &[AcmeToken {
                host: "a.test".into(),
                token: "tok".into(),
                key_authorization: "tok.thumb".into(),
                class: None,
            }],
        });
        let reasons: Vec<&str> = built.problems.iter().map(|p| p.reason).collect();
        assert_eq!(reasons, vec!["KeyMismatch", "TLSSecretNotFound"]);
        assert_eq!(built.secrets.len(), 3);
        assert_eq!(built.expiry.get(&r("good")), Some(&42));
        assert_eq!(built.snapshot.acme_answer("a.test", "tok"), Some("tok.thumb"));
    }

    #[test]
    fn ten_thousand_ingresses_build_in_one_pass() {
        const N: usize = 10_000;
        let classes = vec![class("ferrite", "ferrite.dev/ingress")];
        let ingresses: Vec<Arc<Ingress>> = (0..N)
            .map(|i| {
                ingress(json!({"metadata": {"name": format!("i{i}"), "namespace": "app"},
                    "spec": {"ingressClassName": "ferrite",
                        "tls": [{"hosts": [format!("h{i}.test")], "secretName": format!("s{}", i % 100)}],
                        "rules": [rule(&format!("h{i}.test"), "/", "web", json!({"number": 80}))]}}))
            })
            .collect();
        let services: HashMap<_, _> = [service("app", "web", json!([{"name": "http", "port": 80}]))].into();
        let slices: SlicesByService = [(
            ("app".to_string(), "web".to_string()),
            vec![Arc::new(slice(
                "app",
                "web",
                json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": ["127.0.0.2"]}]),
            ))],
        )]
        .into();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let started = std::time::Instant::now();
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &slices,
            &HashMap::new(),
            &self_signed,
        );
        let took = started.elapsed();
        assert_eq!(built.served.len(), N);
        assert_eq!(built.snapshot.routes().routes().len(), N);
        assert_eq!(built.secrets.len(), 100);
        // Every Ingress names a missing Secret: one problem each, none lost.
        assert_eq!(built.problems.len(), N);
        let b = built
            .snapshot
            .routes()
            .route("h9999.test", "/")
            .backend()
            .cloned()
            .expect("routed");
        assert_eq!(built.snapshot.endpoints(&b).len(), 1);
        eprintln!("{N} Ingresses built in {took:?}");
        assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    }

    #[test]
    fn hostname_matching_is_nginx_s() {
        let cases = [
            ("a.test", "a.test", true),
            ("*.a.test", "x.a.test", true),
            ("*.a.test", "a.test", false),
            ("*.a.test", "y.x.a.test", false),
            ("*.a.test", "*.a.test", true),
            ("x.a.test", "*.a.test", false),
            ("a.*.test", "a.b.test", false),
            ("", "a.test", false),
            ("a.test", "b.test", false),
        ];
        for (pattern, host, want) in cases {
            assert_eq!(match_hostname(pattern, host), want, "{pattern} vs {host}");
        }
        let n = |dns: &[&str], cn: Option<&str>| CertNames {
            dns: dns.iter().map(|d| d.to_string()).collect(),
            common_name: cn.map(str::to_string),
        };
        let h = |s: &str| HostPattern::parse(s).expect("host");
        // SANs win over the CN: the CN is only looked at when there is no dNSName SAN.
        assert!(!n(&["b.test"], Some("a.test")).covers(&h("a.test")));
        assert!(n(&[], Some("a.test")).covers(&h("a.test")));
        assert!(n(&[], Some("*.a.test")).covers(&h("x.a.test")));
        assert!(!n(&[], None).covers(&h("a.test")));
        assert!(n(&["b.test", "*.a.test"], None).covers(&h("*.a.test")));
        // Names are read from a certificate lowercased and without a trailing dot.
        let c = LoadedCert::new(cert("Only.CN.test", &[]));
        assert_eq!(c.names.dns, Vec::<String>::new());
        assert_eq!(c.names.common_name.as_deref(), Some("only.cn.test"));
        let c = LoadedCert::new(cert("ignored", &["A.test", "*.w.test."]));
        assert_eq!(c.names.dns, vec!["a.test".to_string(), "*.w.test".to_string()]);
        assert!(c.not_after.is_some());
    }

    #[test]
    fn a_certificate_not_valid_for_its_host_serves_the_default_for_that_host() {
        let classes = vec![class("ferrite", "ferrite.dev/ingress")];
        let ingresses = vec![ingress(json!({"metadata": {"name": "a", "namespace": "app"},
            "spec": {"ingressClassName": "ferrite",
                "tls": [{"hosts": ["a.test", "m.test"], "secretName": "a"},
                        {"hosts": ["*.w.test", "x.w.test"], "secretName": "w"},
                        {"hosts": ["cn.test"], "secretName": "cn"}],
                "rules": [rule("a.test", "/", "web", json!({"number": 80})),
                          rule("m.test", "/", "web", json!({"number": 80})),
                          rule("*.w.test", "/", "web", json!({"number": 80})),
                          rule("x.w.test", "/", "web", json!({"number": 80})),
                          rule("cn.test", "/", "web", json!({"number": 80}))]}}))];
        let services: HashMap<_, _> = [service("app", "web", json!([{"port": 80}]))].into();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let r = |n: &str| SecretRef {
            namespace: "app".into(),
            name: n.into(),
        };
        let (a, w, cn) = (
            cert("a", &["a.test"]),
            cert("w", &["*.w.test"]),
            cert("cn.test", &[]),
        );
        let certificates: HashMap<_, _> = [
            (r("a"), CertState::Loaded(LoadedCert::new(a.clone()))),
            (r("w"), CertState::Loaded(LoadedCert::new(w.clone()))),
            (r("cn"), CertState::Loaded(LoadedCert::new(cn.clone()))),
        ]
        .into();
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &HashMap::new(),
            &certificates,
            &self_signed,
        );
        let s = &built.snapshot;
        let served = |sni: &str| s.certificate_for(Some(sni));
        assert!(Arc::ptr_eq(&served("a.test"), &a));
        assert!(Arc::ptr_eq(&served("m.test"), &self_signed), "not in the SAN");
        assert!(
            Arc::ptr_eq(&served("x.w.test"), &w),
            "wildcard SAN covers the exact host"
        );
        assert!(Arc::ptr_eq(&served("y.w.test"), &w), "the wildcard binding");
        assert!(Arc::ptr_eq(&served("cn.test"), &cn), "CN fallback without SANs");
        // Still a TLS host: plain HTTP is redirected, as in ingress-nginx.
        assert!(s.routes().tls_for("m.test").is_some());
        let problems: Vec<(&str, &str)> = built
            .problems
            .iter()
            .map(|p| (p.reason, p.message.as_str()))
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, "CertificateHostMismatch");
        assert!(
            problems[0].1.contains("app/a") && problems[0].1.contains("m.test"),
            "{problems:?}"
        );
    }

    #[test]
    fn an_invalid_update_keeps_serving_the_last_good_certificate() {
        let good = LoadedCert::new(cert("a", &["a.test"]));
        let invalid = || CertState::Invalid {
            reason: "InvalidCertificate",
            message: "tls.crt is not valid PEM".into(),
            last_good: None,
        };
        // The state transitions of a Secret update.
        let loaded = CertState::Loaded(good.clone());
        let after_bad = invalid().after(Some(&loaded));
        assert!(
            after_bad
                .servable()
                .is_some_and(|c| Arc::ptr_eq(&c.key, &good.key))
        );
        let after_second_bad = invalid().after(Some(&after_bad));
        assert!(
            after_second_bad
                .servable()
                .is_some_and(|c| Arc::ptr_eq(&c.key, &good.key))
        );
        assert!(
            invalid().after(None).servable().is_none(),
            "nothing served before"
        );
        assert!(invalid().after(Some(&CertState::Loading)).servable().is_none());
        let newer = LoadedCert::new(cert("a2", &["a.test"]));
        let fixed = CertState::Loaded(newer.clone()).after(Some(&after_bad));
        assert!(fixed.servable().is_some_and(|c| Arc::ptr_eq(&c.key, &newer.key)));

        let classes = vec![class("ferrite", "ferrite.dev/ingress")];
        let ingresses = vec![ingress(json!({"metadata": {"name": "a", "namespace": "app"},
            "spec": {"ingressClassName": "ferrite",
                "tls": [{"hosts": ["a.test"], "secretName": "a"}],
                "rules": [rule("a.test", "/", "web", json!({"number": 80}))]}}))];
        let services: HashMap<_, _> = [service("app", "web", json!([{"port": 80}]))].into();
        let self_signed = crate::proxy::self_signed_default().expect("cert");
        let secret = SecretRef {
            namespace: "app".into(),
            name: "a".into(),
        };
        let certificates: HashMap<_, _> = [(secret.clone(), after_bad)].into();
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &HashMap::new(),
            &certificates,
            &self_signed,
        );
        assert!(Arc::ptr_eq(
            &built.snapshot.certificate_for(Some("a.test")),
            &good.key
        ));
        assert_eq!(built.expiry.get(&secret), good.not_after.as_ref());
        assert_eq!(built.problems.len(), 1);
        assert_eq!(built.problems[0].reason, "InvalidCertificate");
        assert!(
            built.problems[0]
                .message
                .contains("its previous certificate is still served"),
            "{:?}",
            built.problems
        );
        // Without a last good certificate (or once deleted): the default.
        let certificates: HashMap<_, _> = [(secret.clone(), invalid())].into();
        let built = build_plain(
            &classes,
            &ingresses,
            &services,
            &HashMap::new(),
            &certificates,
            &self_signed,
        );
        assert!(Arc::ptr_eq(
            &built.snapshot.certificate_for(Some("a.test")),
            &self_signed
        ));
        assert!(built.problems[0].message.contains("default certificate"));
    }
}
