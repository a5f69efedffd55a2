//! The route table: every served Ingress compiled into one immutable, validated snapshot.
//!
//! ```text
//!   served Ingresses, oldest first (creationTimestamp, then namespace/name)
//!     │  each rule: HostPattern::parse(host) | any host      ─┐  invalid host/path/backend:
//!     │  each path: RulePath::compile + BackendRef::from_spec  ├─> that rule skipped, a Warning
//!     │  spec.defaultBackend (per host | catch-all), spec.tls ─┘  same host+path+match kind: oldest wins
//!     v
//!   RouteTable { exact hosts, one-label wildcard hosts, any-host rules, catch-all default, TLS by host }
//!     │
//!   route(host, target): host with rules (exact > wildcard) -> its paths -> its fallback -> NotFound
//!                        any other host -> rules without host -> catch-all default -> NotFound
//!                        paths: Exact lookup, else the longest Prefix (hash lookups per '/')
//! ```
//!
//! Host selection comes first and does not fall through: when `a.example.com` has rules, a request for
//! it that matches none of their paths goes to that host's fallback, not to `*.example.com`'s rules, to
//! rules without a host or to the catch-all. A rule with a host and no `http` claims that host with no
//! paths. Default backends follow ingress-nginx (its `createServers`): the fallback of a host is the
//! `spec.defaultBackend` of the oldest Ingress with a rule for that host (none: the built-in 404); only
//! an Ingress **without rules** sets the catch-all default (the oldest one; a younger one is reported),
//! which serves hosts no rule names, after the rules without a host (nginx's `_` server).
//!
//! TLS binds only rule hosts (nginx attaches certificates to the servers its rules create): each rule
//! host of an Ingress takes the tls entry naming it, else one without hosts, else a wildcard covering
//! it; a tls host without a rule of its Ingress binds nothing.
//!
//! Conflicts are decided by age: the same host, the same path key and the same match kind
//! (`ImplementationSpecific` matches as `Prefix`, and `/foo/` as Prefix is `/foo`) from two rules
//! keeps the rule of the oldest Ingress, and the other one is reported as a [`Warning`].

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::class::{self, ClassDecision};
use crate::host::{HostPattern, RequestHost, wildcard_suffix};
use crate::path::{
    MatchKind, PathError, PathType, RulePath, normalize_path, prefix_candidates, request_path,
};

/// namespace/name of an Ingress.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IngressRef {
    pub namespace: String,
    pub name: String,
}

impl IngressRef {
    pub fn of(ingress: &Ingress) -> Self {
        IngressRef {
            namespace: ingress.metadata.namespace.clone().unwrap_or_default(),
            name: ingress.metadata.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for IngressRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A Service port as an Ingress backend names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServicePort {
    Number(u16),
    /// A named port of the Service, resolved against the Service's ports by the controller.
    Name(String),
}

impl fmt::Display for ServicePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicePort::Number(n) => write!(f, "{n}"),
            ServicePort::Name(n) => f.write_str(n),
        }
    }
}

/// The Service (in the Ingress's namespace) and port a request is sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendRef {
    pub namespace: String,
    pub service: String,
    pub port: ServicePort,
}

impl fmt::Display for BackendRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)
    }
}

/// Why a backend was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("resource backends ({kind} {name:?}) are not supported; use a Service backend")]
    Resource { kind: String, name: String },
    #[error("backend names no Service")]
    NoService,
    #[error("backend Service {0:?} is not a valid Service name (a DNS-1035 label)")]
    BadServiceName(String),
    #[error("backend Service {0:?} names no port (set port.number or port.name)")]
    NoPort(String),
    #[error("backend Service {0:?} sets both port.number and port.name")]
    BothPorts(String),
    #[error("backend Service {service:?}: port {port} is not in 1-65535")]
    PortOutOfRange { service: String, port: i32 },
    #[error("backend Service {service:?}: port name {port:?} is not a valid port name")]
    BadPortName { service: String, port: String },
}

impl BackendRef {
    pub fn from_spec(namespace: &str, backend: &IngressBackend) -> Result<Self, BackendError> {
        let Some(service) = &backend.service else {
            return Err(match &backend.resource {
                Some(r) => BackendError::Resource {
                    kind: r.kind.clone(),
                    name: r.name.clone(),
                },
                None => BackendError::NoService,
            });
        };
        let name = &service.name;
        if !is_dns_1035_label(name) {
            return Err(BackendError::BadServiceName(name.clone()));
        }
        let port = match service
            .port
            .as_ref()
            .map(|p| (p.number, p.name.as_deref().filter(|n| !n.is_empty())))
        {
            None | Some((None, None)) => return Err(BackendError::NoPort(name.clone())),
            Some((Some(_), Some(_))) => return Err(BackendError::BothPorts(name.clone())),
            Some((Some(n), None)) => match u16::try_from(n) {
                Ok(n) if n > 0 => ServicePort::Number(n),
                _ => {
                    return Err(BackendError::PortOutOfRange {
                        service: name.clone(),
                        port: n,
                    });
                }
            },
            Some((None, Some(p))) => {
                // IANA service name (what the API validates): 1-15 of [a-z0-9-], a letter, no "--".
                let ok = p.len() <= 15
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && p.bytes().any(|b| b.is_ascii_lowercase())
                    && !p.starts_with('-')
                    && !p.ends_with('-')
                    && !p.contains("--");
                if !ok {
                    return Err(BackendError::BadPortName {
                        service: name.clone(),
                        port: p.to_owned(),
                    });
                }
                ServicePort::Name(p.to_owned())
            }
        };
        Ok(BackendRef {
            namespace: namespace.to_owned(),
            service: name.clone(),
            port,
        })
    }
}

fn is_dns_1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// `ferrite.dev/backend-protocol` on an Ingress: `http` (HTTP/1.1, the default) or `h2c` (HTTP/2 with
/// prior knowledge, for gRPC) for every backend of that Ingress.
pub const BACKEND_PROTOCOL_ANNOTATION: &str = "ferrite.dev/backend-protocol";
/// ingress-nginx's annotation, accepted for migration: `HTTP`, `GRPC`, `H2C` (case-insensitive).
/// [`BACKEND_PROTOCOL_ANNOTATION`] wins when both are set.
pub const NGINX_BACKEND_PROTOCOL_ANNOTATION: &str = "nginx.ingress.kubernetes.io/backend-protocol";

/// The protocol the proxy speaks to a backend's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendProtocol {
    /// HTTP/1.1 with keep-alive (Upgrade tunnels included).
    #[default]
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (gRPC): one multiplexed connection per endpoint,
    /// trailers passed through.
    H2c,
}

impl BackendProtocol {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendProtocol::Http1 => "http",
            BackendProtocol::H2c => "h2c",
        }
    }

    /// The protocol an Ingress asks for through its annotations; `Err` is the message of an
    /// `InvalidBackend` warning (the Ingress's backends then use HTTP/1.1).
    pub fn of(ingress: &Ingress) -> Result<Self, String> {
        let annotations = ingress.metadata.annotations.as_ref();
        let get = |k: &str| annotations.and_then(|a| a.get(k)).map(|v| v.trim());
        if let Some(v) = get(BACKEND_PROTOCOL_ANNOTATION) {
            return match v.to_ascii_lowercase().as_str() {
                "http" | "" => Ok(BackendProtocol::Http1),
                "h2c" => Ok(BackendProtocol::H2c),
                _ => Err(format!(
                    "annotation {BACKEND_PROTOCOL_ANNOTATION}: {v:?} is not http or h2c; backends use HTTP/1.1"
                )),
            };
        }
        if let Some(v) = get(NGINX_BACKEND_PROTOCOL_ANNOTATION) {
            return match v.to_ascii_uppercase().as_str() {
                "HTTP" | "" => Ok(BackendProtocol::Http1),
                "GRPC" | "H2C" => Ok(BackendProtocol::H2c),
                _ => Err(format!(
                    "annotation {NGINX_BACKEND_PROTOCOL_ANNOTATION}: {v:?} is not supported \
                     (HTTP, GRPC and H2C are; TLS to backends is not); backends use HTTP/1.1"
                )),
            };
        }
        Ok(BackendProtocol::Http1)
    }
}

impl fmt::Display for BackendProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of problem a [`Warning`] reports; [`WarningKind::reason`] is the stable Event reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningKind {
    InvalidHost,
    InvalidPath,
    InvalidBackend,
    PathConflict,
    DefaultBackendConflict,
    InvalidTls,
    TlsConflict,
}

impl WarningKind {
    /// The Event reason and metric label.
    pub fn reason(self) -> &'static str {
        match self {
            WarningKind::InvalidHost => "InvalidHost",
            WarningKind::InvalidPath => "InvalidPath",
            WarningKind::InvalidBackend => "InvalidBackend",
            WarningKind::PathConflict => "PathConflict",
            WarningKind::DefaultBackendConflict => "DefaultBackendConflict",
            WarningKind::InvalidTls => "InvalidTLS",
            WarningKind::TlsConflict => "TLSConflict",
        }
    }
}

/// A problem in one Ingress that made the table skip part of it; the controller turns it into a
/// Warning Event on that Ingress. The rest of the Ingress and every other Ingress keep routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub ingress: IngressRef,
    pub kind: WarningKind,
    pub message: String,
}

/// A path of a rule, compiled: what matched, for the backend and the metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub ingress: IngressRef,
    /// The rule's host; `None` for a rule without host (any host).
    pub host: Option<HostPattern>,
    /// Index of the rule in `spec.rules` and of the path in its `http.paths`.
    pub rule: usize,
    pub path_index: usize,
    pub path: RulePath,
    pub backend: BackendRef,
    /// From the Ingress's backend-protocol annotation.
    pub protocol: BackendProtocol,
}

/// The default backend and the Ingress that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultBackend {
    pub ingress: IngressRef,
    pub backend: BackendRef,
    /// From the Ingress's backend-protocol annotation.
    pub protocol: BackendProtocol,
}

/// The result of [`RouteTable::route`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match<'a> {
    /// A rule's path matched.
    Route(&'a Route),
    /// No rule matched: the host's fallback (`spec.defaultBackend` of the oldest Ingress with a rule
    /// for it) or, for a host no rule names, the catch-all (of the oldest Ingress without rules).
    Default(&'a DefaultBackend),
    /// Nothing matched and no default backend applies: the proxy answers its built-in 404.
    NotFound,
}

impl<'a> Match<'a> {
    pub fn backend(&self) -> Option<&'a BackendRef> {
        match self {
            Match::Route(r) => Some(&r.backend),
            Match::Default(d) => Some(&d.backend),
            Match::NotFound => None,
        }
    }

    /// The protocol to speak to the backend (HTTP/1.1 for [`Match::NotFound`]).
    pub fn protocol(&self) -> BackendProtocol {
        match self {
            Match::Route(r) => r.protocol,
            Match::Default(d) => d.protocol,
            Match::NotFound => BackendProtocol::Http1,
        }
    }

    /// The Ingress that decided this match (for metrics labels).
    pub fn ingress(&self) -> Option<&'a IngressRef> {
        match self {
            Match::Route(r) => Some(&r.ingress),
            Match::Default(d) => Some(&d.ingress),
            Match::NotFound => None,
        }
    }
}

/// namespace/name of a TLS Secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The TLS configuration of one host pattern: a rule host of [`TlsBinding::ingress`], the oldest
/// Ingress with a rule and a matching `spec.tls` entry for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsBinding {
    pub host: HostPattern,
    /// The Secret from `spec.tls[].secretName`; `None` when the entry has no secretName (the proxy's
    /// default certificate is used, and the host still counts as a TLS host).
    pub secret: Option<SecretRef>,
    pub ingress: IngressRef,
}

/// The paths of one host.
#[derive(Debug, Default, Clone)]
struct HostRoutes {
    exact: HashMap<String, usize>,
    prefix: HashMap<String, usize>,
    /// The oldest Ingress with a rule for this host (it decides the fallback); `None` for rules
    /// without a host.
    owner: Option<IngressRef>,
    /// Index in `RouteTable::fallbacks`: the owner's `spec.defaultBackend`, for requests of this host
    /// that match no path. `None`: the proxy's 404.
    fallback: Option<usize>,
}

impl HostRoutes {
    /// Exact first: an Exact hit has the request's full length, which no Prefix can exceed, and Exact
    /// wins ties. Then the longest Prefix, one lookup per path element boundary.
    fn lookup(&self, path: &str) -> Option<usize> {
        if let Some(id) = self.exact.get(path) {
            return Some(*id);
        }
        if self.prefix.is_empty() {
            return None;
        }
        prefix_candidates(path).find_map(|c| self.prefix.get(c).copied())
    }

    fn slot(&mut self, kind: MatchKind) -> &mut HashMap<String, usize> {
        match kind {
            MatchKind::Exact => &mut self.exact,
            MatchKind::Prefix => &mut self.prefix,
        }
    }
}

/// Host patterns mapped to values, with exact-beats-wildcard lookup of a normalized host.
#[derive(Debug, Clone)]
struct ByHost<T> {
    exact: HashMap<String, T>,
    wildcard: HashMap<String, T>,
}

impl<T> Default for ByHost<T> {
    fn default() -> Self {
        ByHost {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        }
    }
}

impl<T> ByHost<T> {
    fn get(&self, host: &str) -> Option<&T> {
        self.exact
            .get(host)
            .or_else(|| wildcard_suffix(host).and_then(|s| self.wildcard.get(s)))
    }

    fn entry(&mut self, pattern: &HostPattern) -> std::collections::hash_map::Entry<'_, String, T> {
        match pattern {
            HostPattern::Exact(h) => self.exact.entry(h.clone()),
            HostPattern::Wildcard(s) => self.wildcard.entry(s.clone()),
        }
    }
}

/// One immutable routing snapshot. Build it with [`RouteTable::build`]; share it with
/// [`SharedRouteTable`].
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    hosts: ByHost<HostRoutes>,
    any_host: Option<HostRoutes>,
    /// The catch-all: `spec.defaultBackend` of the oldest served Ingress without rules.
    default_backend: Option<DefaultBackend>,
    /// `spec.defaultBackend` of Ingresses with rules, each the fallback of the hosts its Ingress owns.
    fallbacks: Vec<DefaultBackend>,
    tls: ByHost<TlsBinding>,
}

/// The output of [`RouteTable::build`].
#[derive(Debug, Clone)]
pub struct Compiled {
    pub table: RouteTable,
    /// Problems to report, each on its Ingress, in build order.
    pub warnings: Vec<Warning>,
    /// The Ingresses the class decision selected (the ones whose status the leader writes), oldest first.
    pub served: Vec<IngressRef>,
}

impl RouteTable {
    /// An empty table: every request is [`Match::NotFound`].
    pub fn empty() -> Self {
        Self::default()
    }

    /// Selects the Ingresses `controller` serves among `ingresses` (see [`class::decide`]) and compiles
    /// them into a table.
    pub fn build<'a>(
        ingresses: impl IntoIterator<Item = &'a Ingress>,
        classes: &[IngressClass],
        controller: &str,
    ) -> Compiled {
        let served: Vec<&Ingress> = ingresses
            .into_iter()
            .filter(|ing| {
                matches!(
                    class::decide(ing, classes, controller),
                    ClassDecision::Served { .. }
                )
            })
            .collect();
        Self::compile(served)
    }

    /// Compiles Ingresses already selected by the class decision.
    pub fn compile<'a>(ingresses: impl IntoIterator<Item = &'a Ingress>) -> Compiled {
        let mut ordered: Vec<&Ingress> = ingresses.into_iter().collect();
        ordered.sort_by_cached_key(|ing| age_key(ing));
        let mut b = Builder::default();
        for ing in &ordered {
            b.add(ing);
        }
        let served = ordered.iter().map(|ing| IngressRef::of(ing)).collect();
        Compiled {
            table: b.table,
            warnings: b.warnings,
            served,
        }
    }

    /// Routes a request. `host` is the Host header (or `:authority`), port and trailing dot allowed;
    /// `target` is the request target, whose query string is ignored; its path is matched normalized
    /// ([`crate::path::normalize_path`]). Allocates nothing unless the path needs normalizing.
    pub fn route(&self, host: &str, target: &str) -> Match<'_> {
        // Matched normalized (as nginx's $uri); the proxy forwards the target as received.
        let path = normalize_path(request_path(target));
        let path: &str = &path;
        let host = RequestHost::parse(host);
        if let Some(routes) = host.as_ref().and_then(|h| self.hosts.get(h.as_str())) {
            // A host with rules: its paths, else its owner's defaultBackend, else 404 (never the
            // catch-all, which is for hosts no rule names).
            if let Some(id) = routes.lookup(path) {
                return Match::Route(&self.routes[id]);
            }
            return match routes.fallback {
                Some(i) => Match::Default(&self.fallbacks[i]),
                None => Match::NotFound,
            };
        }
        if let Some(id) = self.any_host.as_ref().and_then(|r| r.lookup(path)) {
            return Match::Route(&self.routes[id]);
        }
        match &self.default_backend {
            Some(d) => Match::Default(d),
            None => Match::NotFound,
        }
    }

    /// The TLS binding for an SNI name (or a Host, for the redirect decision): exact beats wildcard.
    pub fn tls_for(&self, sni: &str) -> Option<&TlsBinding> {
        let host = RequestHost::parse(sni)?;
        self.tls.get(host.as_str())
    }

    /// The Secret whose certificate serves `sni`; `None` means the proxy's default certificate.
    pub fn tls_secret_for(&self, sni: &str) -> Option<&SecretRef> {
        self.tls_for(sni).and_then(|b| b.secret.as_ref())
    }

    /// Every host pattern with TLS (`*.example.com` for wildcards), sorted: plain HTTP requests for these
    /// hosts are redirected to HTTPS. Use [`RouteTable::tls_for`] to decide for one request.
    pub fn hosts_with_tls(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .tls
            .exact
            .values()
            .chain(self.tls.wildcard.values())
            .map(|b| b.host.to_string())
            .collect();
        hosts.sort();
        hosts
    }

    /// Every TLS Secret the table references, sorted and deduplicated: the filtered Secret cache's keys.
    pub fn tls_secrets(&self) -> Vec<&SecretRef> {
        let mut secrets: Vec<&SecretRef> = self
            .tls
            .exact
            .values()
            .chain(self.tls.wildcard.values())
            .filter_map(|b| b.secret.as_ref())
            .collect();
        secrets.sort();
        secrets.dedup();
        secrets
    }

    /// Every TLS binding (exact hosts, then wildcards; no particular order within each).
    pub fn tls_bindings(&self) -> impl Iterator<Item = &TlsBinding> {
        self.tls.exact.values().chain(self.tls.wildcard.values())
    }

    /// Every compiled route, in build order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The catch-all default backend: `spec.defaultBackend` of the oldest served Ingress without rules,
    /// for requests whose host no rule names and that match no rule without a host.
    pub fn default_backend(&self) -> Option<&DefaultBackend> {
        self.default_backend.as_ref()
    }

    /// Every default backend a request can reach: the catch-all first, then the fallbacks of hosts
    /// (`spec.defaultBackend` of Ingresses with rules), in build order.
    pub fn default_backends(&self) -> impl Iterator<Item = &DefaultBackend> {
        self.default_backend.iter().chain(self.fallbacks.iter())
    }

    /// The fallback of a host that has rules (`spec.defaultBackend` of the oldest Ingress with a rule
    /// for it): `Some(None)` when that Ingress has none (the proxy's 404), `None` when no rule names the
    /// host (the request goes to the rules without a host and the catch-all).
    pub fn host_fallback(&self, host: &str) -> Option<Option<&DefaultBackend>> {
        let host = RequestHost::parse(host)?;
        let routes = self.hosts.get(host.as_str())?;
        Some(routes.fallback.map(|i| &self.fallbacks[i]))
    }
}

/// Oldest first; an object without creationTimestamp (not stored yet) counts as the newest.
fn age_key(ing: &Ingress) -> (bool, Option<Time>, IngressRef) {
    let ts = ing.metadata.creation_timestamp.clone();
    (ts.is_none(), ts, IngressRef::of(ing))
}

#[derive(Default)]
struct Builder {
    table: RouteTable,
    warnings: Vec<Warning>,
}

impl Builder {
    fn warn(&mut self, ingress: &IngressRef, kind: WarningKind, message: String) {
        self.warnings.push(Warning {
            ingress: ingress.clone(),
            kind,
            message,
        });
    }

    fn add(&mut self, ing: &Ingress) {
        let me = IngressRef::of(ing);
        let Some(spec) = &ing.spec else { return };
        let protocol = BackendProtocol::of(ing).unwrap_or_else(|message| {
            self.warn(&me, WarningKind::InvalidBackend, message);
            BackendProtocol::Http1
        });
        let has_rules = spec.rules.as_ref().is_some_and(|r| !r.is_empty());
        let mut default = None;
        if let Some(backend) = &spec.default_backend {
            match BackendRef::from_spec(&me.namespace, backend) {
                Err(e) => self.warn(&me, WarningKind::InvalidBackend, format!("defaultBackend: {e}")),
                Ok(backend) => {
                    default = Some(DefaultBackend {
                        ingress: me.clone(),
                        backend,
                        protocol,
                    })
                }
            }
        }
        // Without rules, defaultBackend is the catch-all (oldest first); with rules, it is the fallback
        // of the hosts this Ingress is the first to route (ingress-nginx's createServers).
        let mut fallback: Option<usize> = None;
        let mut unused_for: Vec<String> = Vec::new();
        if let Some(d) = default.take() {
            if has_rules {
                fallback = Some(self.table.fallbacks.len());
                self.table.fallbacks.push(d);
            } else {
                match &self.table.default_backend {
                    Some(older) => {
                        let message = format!(
                            "defaultBackend {} ignored: the older Ingress {} (also without rules) already \
                             sets the catch-all default backend",
                            d.backend, older.ingress
                        );
                        self.warn(&me, WarningKind::DefaultBackendConflict, message);
                    }
                    None => self.table.default_backend = Some(d),
                }
            }
        }
        let mut rule_hosts = Vec::new();
        for (ri, rule) in spec.rules.iter().flatten().enumerate() {
            let host = match rule
                .host
                .as_deref()
                .filter(|h| !h.is_empty())
                .map(HostPattern::parse)
            {
                None => None,
                Some(Ok(h)) => Some(h),
                Some(Err(e)) => {
                    self.warn(&me, WarningKind::InvalidHost, format!("rules[{ri}] skipped: {e}"));
                    continue;
                }
            };
            if let Some(h) = &host {
                rule_hosts.push(h.clone());
            }
            // A rule claims its host even without paths (see the module docs); the first Ingress to
            // claim it decides its fallback.
            match &host {
                Some(h) => {
                    let routes = self.table.hosts.entry(h).or_insert_with(|| HostRoutes {
                        owner: Some(me.clone()),
                        fallback,
                        ..HostRoutes::default()
                    });
                    if fallback.is_some()
                        && let Some(owner) = routes.owner.as_ref().filter(|o| **o != me)
                    {
                        unused_for.push(format!(
                            "host {h} (the older Ingress {owner} decides its fallback)"
                        ));
                    }
                }
                None => {
                    self.table.any_host.get_or_insert_with(HostRoutes::default);
                    if fallback.is_some() {
                        unused_for.push(
                            "rules without a host (their fallback is the catch-all default backend, which \
                             only an Ingress without rules sets)"
                                .to_owned(),
                        );
                    }
                }
            }
            for (pi, p) in rule.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                self.add_path(&me, host.as_ref(), ri, pi, p, protocol);
            }
        }
        if let Some(i) = fallback
            && !unused_for.is_empty()
        {
            let mut seen = std::collections::HashSet::new();
            unused_for.retain(|u| seen.insert(u.clone()));
            let message = format!(
                "defaultBackend {} is not the fallback of {}",
                self.table.fallbacks[i].backend,
                unused_for.join(", ")
            );
            self.warn(&me, WarningKind::DefaultBackendConflict, message);
        }
        self.add_tls(ing, &me, &rule_hosts);
    }

    fn add_path(
        &mut self,
        me: &IngressRef,
        host: Option<&HostPattern>,
        ri: usize,
        pi: usize,
        p: &k8s_openapi::api::networking::v1::HTTPIngressPath,
        protocol: BackendProtocol,
    ) {
        let at = format!("rules[{ri}].http.paths[{pi}]");
        let compiled: Result<RulePath, PathError> =
            PathType::parse(&p.path_type).and_then(|t| RulePath::compile(p.path.as_deref(), t));
        let path = match compiled {
            Ok(path) => path,
            Err(e) => return self.warn(me, WarningKind::InvalidPath, format!("{at} skipped: {e}")),
        };
        let backend = match BackendRef::from_spec(&me.namespace, &p.backend) {
            Ok(b) => b,
            Err(e) => return self.warn(me, WarningKind::InvalidBackend, format!("{at} skipped: {e}")),
        };
        let id = self.table.routes.len();
        let kind = path.path_type.match_kind();
        let key = path.key.clone();
        let routes = match host {
            Some(h) => self.table.hosts.entry(h).or_default(),
            None => self.table.any_host.get_or_insert_with(HostRoutes::default),
        };
        if let Some(&older) = routes.slot(kind).get(&key) {
            let older = &self.table.routes[older];
            let host = host.map_or_else(|| "any host".to_owned(), |h| format!("host {h}"));
            let by = if older.ingress == *me {
                format!(
                    "rules[{}].http.paths[{}] of this Ingress",
                    older.rule, older.path_index
                )
            } else {
                format!("the older Ingress {}", older.ingress)
            };
            let message = format!(
                "{at} skipped: {} {} on {host} is already routed by {by}",
                path.path_type, path.path
            );
            return self.warn(me, WarningKind::PathConflict, message);
        }
        routes.slot(kind).insert(key, id);
        self.table.routes.push(Route {
            ingress: me.clone(),
            host: host.cloned(),
            rule: ri,
            path_index: pi,
            path,
            backend,
            protocol,
        });
    }

    /// TLS as ingress-nginx binds it (`createServers`, `extractTLSSecretName`): only the hosts of this
    /// Ingress's rules get a binding; for each, an entry naming it exactly (or an entry without
    /// hosts, which names every rule host) comes first, then an entry with a wildcard covering it. A
    /// host already bound by an older Ingress (which had a rule for it) keeps that binding.
    fn add_tls(&mut self, ing: &Ingress, me: &IngressRef, rule_hosts: &[HostPattern]) {
        let Some(tls) = ing.spec.as_ref().and_then(|s| s.tls.as_ref()) else {
            return;
        };
        // Every entry's hosts, parsed (`None`: the entry lists none, so it means every rule host).
        let mut entries: Vec<(usize, Option<SecretRef>, Option<Vec<HostPattern>>)> = Vec::new();
        for (ti, entry) in tls.iter().enumerate() {
            let secret = entry
                .secret_name
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|name| SecretRef {
                    namespace: me.namespace.clone(),
                    name: name.to_owned(),
                });
            let hosts = match entry.hosts.as_deref() {
                Some(hosts) if !hosts.is_empty() => {
                    let mut parsed = Vec::new();
                    for (hi, h) in hosts.iter().enumerate() {
                        match HostPattern::parse(h) {
                            Ok(h) => parsed.push(h),
                            Err(e) => self.warn(
                                me,
                                WarningKind::InvalidTls,
                                format!("tls[{ti}].hosts[{hi}] skipped: {e}"),
                            ),
                        }
                    }
                    Some(parsed)
                }
                _ => {
                    if rule_hosts.is_empty() {
                        let message = format!(
                            "tls[{ti}] skipped: it names no hosts and the Ingress's rules name none \
                             (TLS needs a host to select the certificate by SNI)"
                        );
                        self.warn(me, WarningKind::InvalidTls, message);
                    }
                    None
                }
            };
            entries.push((ti, secret, hosts));
        }
        // A tls host that covers none of this Ingress's rule hosts binds nothing (nginx creates no
        // server for it): the default certificate and no redirect. Said once per host.
        for (ti, _, hosts) in &entries {
            for h in hosts.iter().flatten() {
                let covers = rule_hosts.iter().any(|r| {
                    r == h || matches!((h, r), (HostPattern::Wildcard(_), HostPattern::Exact(name)) if h.matches(name))
                });
                if !covers {
                    let message = format!(
                        "tls[{ti}] host {h} binds nothing: no rule of this Ingress is for that host \
                         (it gets the default certificate and no HTTPS redirect)"
                    );
                    self.warn(me, WarningKind::InvalidTls, message);
                }
            }
        }
        let mut seen: Vec<&HostPattern> = Vec::new();
        for host in rule_hosts {
            if seen.contains(&host) {
                continue;
            }
            seen.push(host);
            let exact = entries
                .iter()
                .find(|(_, _, hosts)| hosts.as_ref().is_none_or(|hs| hs.contains(host)));
            let chosen = exact.or_else(|| {
                let HostPattern::Exact(name) = host else {
                    return None;
                };
                entries.iter().find(|(_, _, hosts)| {
                    hosts
                        .iter()
                        .flatten()
                        .any(|h| matches!(h, HostPattern::Wildcard(_)) && h.matches(name))
                })
            });
            let Some((ti, secret, _)) = chosen else { continue };
            let binding = TlsBinding {
                host: host.clone(),
                secret: secret.clone(),
                ingress: me.clone(),
            };
            let older = match self.table.tls.entry(host) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(binding);
                    continue;
                }
                std::collections::hash_map::Entry::Occupied(o) => o.get().clone(),
            };
            // The same Secret from an older Ingress agrees: nothing to report.
            if older.secret == *secret {
                continue;
            }
            let theirs = older
                .secret
                .map_or_else(|| "the default certificate".to_owned(), |s| s.to_string());
            let message = format!(
                "tls[{ti}] host {host} skipped: the older Ingress {}, which also has a rule for it, already \
                 serves it with {theirs}",
                older.ingress
            );
            self.warn(me, WarningKind::TlsConflict, message);
        }
    }
}

/// The live route table, swapped atomically when Ingresses change: requests in flight keep the snapshot
/// they loaded, new requests see the new one; readers never lock.
#[derive(Debug)]
pub struct SharedRouteTable(ArcSwap<RouteTable>);

impl SharedRouteTable {
    pub fn new(table: RouteTable) -> Self {
        SharedRouteTable(ArcSwap::from_pointee(table))
    }

    /// The current snapshot (cheap; hold it for one request).
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.0.load()
    }

    /// Publishes a new snapshot.
    pub fn store(&self, table: RouteTable) {
        self.0.store(Arc::new(table));
    }
}

impl Default for SharedRouteTable {
    fn default() -> Self {
        Self::new(RouteTable::empty())
    }
}
