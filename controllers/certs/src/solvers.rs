//! ACME challenge solvers: which solver of an issuer answers which name, and how each one puts its
//! answer where the CA looks, as Kubernetes objects (no solver pods).
//!
//! ```text
//!   AcmeOrder::drive ──> OrderSolver (acme::ChallengeSolver)
//!     choose(authz)  ── select(): dnsNames > longest dnsZone > matchLabels > no selector; ties: first
//!                       listed; wildcards only by dns01
//!     present(p)     ── Challenge (owned by the Certificate, controller=true), then by solver:
//!        http01, ferrite's IngressClass ── nothing more: ferrite-ingress serves the token from the Challenge
//!        http01, any other class        ── Service (no selector) + Endpoints -> this pod's listener,
//!                                          temporary Ingress (host, Exact path) -> that Service;
//!                                          all owned by the Challenge
//!        dns01 ferriteDNS               ── DNSRecord TXT _acme-challenge.<name> (one per name and
//!                                          Certificate, a value per Challenge), owned by the Challenges
//!        dns01 rfc2136                  ── ferrite_kit::dns::update: add our TXT value (TSIG Secret read
//!                                          by name from the issuer's namespace)
//!        Challenge status: presented, state, reason (bounded)
//!     cleanup(p)     ── the same in reverse: our TXT value only, the DNSRecord value (the object when
//!                       empty), Ingress/Service/Endpoints, then the Challenge
//!
//!   Http01Tokens (token -> key authorization) ── serve_http01 (hyper): GET/HEAD
//!     /.well-known/acme-challenge/<token> only; 404 for anything else; bounded requests
//! ```
//!
//! The token map is fed by the presenter (and can be fed from a Challenge watch with
//! [`Http01Tokens::apply`]), so the replica that presents is the one the temporary Ingress routes to
//! (its pod IP, `--pod-ip`).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use base64::Engine as _;
use bytes::Bytes;
use ferrite_api::certs::{
    AcmeSolver, CERTIFICATE_NAME_LABEL, Certificate, Challenge, ChallengeSpec, ChallengeStatus,
    ChallengeType, Http01Ingress, IssuerRef, Rfc2136Solver,
};
use ferrite_api::dns::{DNSRecord, DNSRecordSpec, RecordType as DnsRecordType};
use ferrite_kit::dns::tsig::{TsigAlgorithm, TsigKey};
use ferrite_kit::dns::update::{Timeouts, UpdateClient};
use ferrite_kit::kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use ferrite_kit::kube::{self, Api, Resource, ResourceExt};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints, Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::acme::{AuthzInfo, ChallengeKind, ChallengeSolver, MAX_MESSAGE, Presented, bounded};

/// `spec.controller` of ferrite-ingress's IngressClass: Ingresses of that class serve HTTP-01 tokens
/// from the Challenges themselves.
pub const FERRITE_INGRESS_CONTROLLER: &str = "ferrite.dev/ingress";
/// Label on every object made for a challenge: the Challenge's name.
pub const CHALLENGE_LABEL: &str = "certs.ferrite.dev/challenge";
/// Label on Challenges and the DNSRecords made for them: `true`.
pub const SOLVER_LABEL: &str = "certs.ferrite.dev/solver";
/// The old IngressClass annotation, for `http01.ingress.class`.
pub const INGRESS_CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
/// TTL of a `ferriteDNS` TXT record when the solver does not say.
pub const DEFAULT_FERRITE_DNS_TTL: i64 = 60;
/// TTL of an RFC2136 TXT record (cert-manager uses 60 too).
pub const RFC2136_TTL: u32 = 60;
/// Field manager of the objects solvers write.
const FIELD_MANAGER: &str = ferrite_api::names::CERTS_CONTROLLER_MANAGER;
/// The HTTP-01 path prefix.
const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";

// ---------------------------------------------------------------------------------------------
// Selection

/// How specifically a solver's selector matched a name (cert-manager's order; larger wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Specificity {
    /// No selector at all: matches every name.
    NoSelector,
    /// Only `matchLabels` (all present on the Certificate); more labels is more specific.
    Labels(usize),
    /// A `dnsZones` entry contains the name: the longer zone wins, then more labels.
    Zone(usize, usize),
    /// The name is in `dnsNames`; then more labels.
    Name(usize),
}

/// The solver for `name` (as the Certificate lists it: `*.example.com` for a wildcard): the most
/// specific matching selector among the solvers that can answer one of the `offered` challenges
/// (wildcards: DNS-01 only). Ties go to the first listed. `None` when no solver applies.
pub fn select<'a>(
    solvers: &'a [AcmeSolver],
    name: &str,
    labels: &BTreeMap<String, String>,
    offered: &[ChallengeKind],
) -> Option<(usize, &'a AcmeSolver, ChallengeKind)> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let wildcard = name.starts_with("*.");
    let base = name.trim_start_matches("*.");
    let mut best: Option<(Specificity, usize, &'a AcmeSolver, ChallengeKind)> = None;
    for (i, solver) in solvers.iter().enumerate() {
        let kind = match (&solver.http01, &solver.dns01) {
            (Some(_), None) if !wildcard => ChallengeKind::Http01,
            (None, Some(_)) => ChallengeKind::Dns01,
            // Both or neither: an invalid solver (the issuer reports it); an HTTP-01 solver for a
            // wildcard: the CA offers only DNS-01 for those.
            _ => continue,
        };
        if !offered.contains(&kind) {
            continue;
        }
        let Some(spec) = specificity(solver, &name, base, labels) else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, ..)| spec > *b) {
            best = Some((spec, i, solver, kind));
        }
    }
    best.map(|(_, i, s, k)| (i, s, k))
}

fn specificity(
    solver: &AcmeSolver,
    name: &str,
    base: &str,
    labels: &BTreeMap<String, String>,
) -> Option<Specificity> {
    let Some(sel) = &solver.selector else {
        return Some(Specificity::NoSelector);
    };
    if !sel.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return None;
    }
    let nlabels = sel.match_labels.len();
    if sel.dns_names.is_empty() && sel.dns_zones.is_empty() {
        return Some(if nlabels == 0 {
            Specificity::NoSelector
        } else {
            Specificity::Labels(nlabels)
        });
    }
    let norm = |s: &str| s.trim().trim_end_matches('.').to_ascii_lowercase();
    if sel.dns_names.iter().any(|n| norm(n) == name) {
        return Some(Specificity::Name(nlabels));
    }
    let zone = sel
        .dns_zones
        .iter()
        .map(|z| norm(z))
        .filter(|z| !z.is_empty() && (base == z || base.ends_with(&format!(".{z}"))))
        .map(|z| z.len())
        .max()?;
    Some(Specificity::Zone(zone, nlabels))
}

// ---------------------------------------------------------------------------------------------
// HTTP-01 listener

/// The HTTP-01 tokens this process serves: token -> key authorization.
#[derive(Clone, Default)]
pub struct Http01Tokens(Arc<RwLock<HashMap<String, String>>>);

impl fmt::Debug for Http01Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http01Tokens")
            .field("tokens", &self.len())
            .finish()
    }
}

impl Http01Tokens {
    /// Serves `key_authorization` for `token` (a token that is not base64url is refused).
    pub fn insert(&self, token: &str, key_authorization: &str) -> anyhow::Result<()> {
        if !token_ok(token) {
            bail!("the CA's token is not base64url text of at most 256 characters");
        }
        if let Ok(mut m) = self.0.write() {
            m.insert(token.to_string(), key_authorization.to_string());
        }
        Ok(())
    }

    /// Stops serving `token`.
    pub fn remove(&self, token: &str) {
        if let Ok(mut m) = self.0.write() {
            m.remove(token);
        }
    }

    /// The key authorization for `token`.
    pub fn get(&self, token: &str) -> Option<String> {
        self.0.read().ok()?.get(token).cloned()
    }

    /// How many tokens are served.
    pub fn len(&self) -> usize {
        self.0.read().map(|m| m.len()).unwrap_or(0)
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds the map from a Challenge watch: an HTTP-01 Challenge's token is served until the Challenge
    /// is deleted (`deleted`) or reaches a final state (`valid`, `invalid`).
    pub fn apply(&self, ch: &Challenge, deleted: bool) {
        if ch.spec.challenge_type != ChallengeType::Http01 {
            return;
        }
        let done = matches!(
            ch.status.as_ref().and_then(|s| s.state.as_deref()),
            Some("valid") | Some("invalid")
        );
        if deleted || done {
            self.remove(&ch.spec.token);
        } else {
            let _ = self.insert(&ch.spec.token, &ch.spec.key);
        }
    }
}

/// RFC 8555 8.3: the token is base64url (we also bound its length).
fn token_ok(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 256
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Longest time one connection may take (headers, body, answer).
const HTTP01_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait for a slot.
const HTTP01_MAX_CONNECTIONS: usize = 256;
/// hyper's read buffer (headers) limit per connection.
const HTTP01_MAX_HEADER_BYTES: usize = 16 * 1024;

/// The answer to one request: only GET/HEAD of `/.well-known/acme-challenge/<known token>` is 200 with
/// the key authorization; everything else is 404 (405 for another method on a challenge path).
pub fn http01_answer(tokens: &Http01Tokens, method: &Method, path: &str) -> (StatusCode, String) {
    let Some(token) = path.strip_prefix(HTTP01_PREFIX) else {
        return (StatusCode::NOT_FOUND, String::new());
    };
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, String::new());
    }
    match token_ok(token).then(|| tokens.get(token)).flatten() {
        Some(key) => (StatusCode::OK, key),
        None => (StatusCode::NOT_FOUND, String::new()),
    }
}

/// Serves HTTP-01 tokens on `listener` until the future is dropped (HTTP/1.1; each connection bounded
/// in time and header size; at most 256 at once).
pub async fn serve_http01(listener: TcpListener, tokens: Http01Tokens) {
    let slots = Arc::new(Semaphore::new(HTTP01_MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "HTTP-01 listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let tokens = tokens.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (status, body) = http01_answer(&tokens, req.method(), req.uri().path());
                let body = if req.method() == Method::HEAD {
                    Bytes::new()
                } else {
                    Bytes::from(body)
                };
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "text/plain")
                    .body(Full::new(body));
                async move { Ok::<_, Infallible>(resp.unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(HTTP01_MAX_HEADER_BYTES)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            match tokio::time::timeout(HTTP01_CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "HTTP-01 connection"),
                Err(_) => tracing::debug!(%peer, "HTTP-01 connection took too long; closed"),
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration

/// Flags of the solvers (part of `ferrite-certs controller`).
#[derive(clap::Args, Debug, Clone)]
pub struct SolverArgs {
    /// Where ferrite-certs serves HTTP-01 tokens for Ingress classes other than ferrite's.
    #[arg(long, env = "FERRITE_CERTS_HTTP01_LISTEN", default_value = "0.0.0.0:8089")]
    pub http01_listen: SocketAddr,
    /// This pod's IP: the per-challenge Service's Endpoints point at it (the chart sets it from the
    /// downward API). Without it, HTTP-01 through other classes uses `--http01-service-name`.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// ferrite-certs's own Service, used as the temporary Ingress's backend when the Certificate is in
    /// that Service's namespace and no pod IP is known.
    #[arg(long, env = "FERRITE_CERTS_HTTP01_SERVICE_NAME")]
    pub http01_service_name: Option<String>,
    /// The namespace of `--http01-service-name` (default: the pod's namespace).
    #[arg(long, env = "FERRITE_CERTS_HTTP01_SERVICE_NAMESPACE")]
    pub http01_service_namespace: Option<String>,
    /// The port of `--http01-service-name` that reaches the listener.
    #[arg(long, env = "FERRITE_CERTS_HTTP01_SERVICE_PORT", default_value_t = 8089)]
    pub http01_service_port: u16,
    /// Time allowed for one RFC2136 UPDATE (DNS-01).
    #[arg(long, env = "FERRITE_CERTS_RFC2136_TIMEOUT", default_value = "10s", value_parser = ferrite_kit::cli::parse_duration)]
    pub rfc2136_timeout: Duration,
}

impl Default for SolverArgs {
    fn default() -> Self {
        Self {
            http01_listen: SocketAddr::from(([0, 0, 0, 0], 8089)),
            pod_ip: None,
            http01_service_name: None,
            http01_service_namespace: None,
            http01_service_port: 8089,
            rfc2136_timeout: Duration::from_secs(10),
        }
    }
}

/// What every order's solver shares: the client, the flags, the token map.
#[derive(Clone)]
pub struct Solvers {
    client: kube::Client,
    args: SolverArgs,
    /// The port the HTTP-01 listener really listens on (the Endpoints' port).
    http01_port: u16,
    tokens: Http01Tokens,
}

impl fmt::Debug for Solvers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Solvers")
            .field("args", &self.args)
            .field("http01_port", &self.http01_port)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Solvers {
    /// Shared solver state. `http01_port` is the port [`serve_http01`] listens on.
    pub fn new(client: kube::Client, args: SolverArgs, http01_port: u16, tokens: Http01Tokens) -> Self {
        Self {
            client,
            args,
            http01_port,
            tokens,
        }
    }

    /// The token map the HTTP-01 listener serves.
    pub fn tokens(&self) -> &Http01Tokens {
        &self.tokens
    }

    /// The solver of one order of `certificate` with `solvers` of the issuer `issuer_ref`, whose Secrets
    /// (TSIG keys) live in `issuer_namespace` (an Issuer's namespace; the cluster-resource namespace for
    /// a ClusterIssuer).
    pub fn for_order(
        &self,
        certificate: &Certificate,
        issuer_ref: &IssuerRef,
        issuer_namespace: &str,
        solvers: &[AcmeSolver],
    ) -> anyhow::Result<OrderSolver> {
        let namespace = certificate
            .namespace()
            .ok_or_else(|| anyhow!("the Certificate has no namespace"))?;
        let owner = certificate
            .controller_owner_ref(&())
            .ok_or_else(|| anyhow!("the Certificate has no uid yet"))?;
        Ok(OrderSolver {
            shared: self.clone(),
            namespace,
            certificate: certificate.name_any(),
            labels: certificate.labels().clone(),
            annotations: certificate.annotations().clone(),
            owner,
            issuer_ref: issuer_ref.clone(),
            issuer_namespace: issuer_namespace.to_string(),
            solvers: solvers.to_vec(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The per-order solver

/// Solves the challenges of one order of one Certificate ([`ChallengeSolver`]).
#[derive(Debug, Clone)]
pub struct OrderSolver {
    shared: Solvers,
    namespace: String,
    certificate: String,
    labels: BTreeMap<String, String>,
    /// The Certificate's annotations (the ingress-shim's HTTP-01 class overrides).
    annotations: BTreeMap<String, String>,
    owner: OwnerReference,
    issuer_ref: IssuerRef,
    issuer_namespace: String,
    solvers: Vec<AcmeSolver>,
}

/// A short stable hash of `parts` (hex), for object names.
fn short_hash(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `name` cut to `max` characters at a DNS-label-safe boundary (no trailing `-` or `.`).
fn cut_name(name: &str, max: usize) -> String {
    let mut s: String = name.chars().take(max).collect();
    while s.ends_with('-') || s.ends_with('.') {
        s.pop();
    }
    s
}

/// A label value if `v` is one (at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at the ends).
fn label_value(v: &str) -> Option<String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    ok.then(|| v.to_string())
}

impl OrderSolver {
    /// The solver (index and config) and challenge kind for `authz`.
    fn solver_for(&self, authz: &AuthzInfo) -> Option<(usize, &AcmeSolver, ChallengeKind)> {
        if authz.is_ip {
            // IP identifiers: HTTP-01 only (RFC 8738); the selector's names do not apply.
            let offered: Vec<ChallengeKind> = authz.challenges.iter().map(|c| c.kind.clone()).collect();
            return self
                .solvers
                .iter()
                .enumerate()
                .find(|(_, s)| {
                    s.http01.is_some() && s.dns01.is_none() && offered.contains(&ChallengeKind::Http01)
                })
                .map(|(i, s)| (i, s, ChallengeKind::Http01));
        }
        let offered: Vec<ChallengeKind> = authz.challenges.iter().map(|c| c.kind.clone()).collect();
        select(&self.solvers, &authz.name(), &self.labels, &offered)
    }

    /// The Challenge's name: `<certificate>-<hash of the authorization and type>`.
    pub fn challenge_name(&self, p: &Presented) -> String {
        let h = short_hash(&[&p.authz.url, p.challenge.kind.as_str()]);
        format!("{}-{h}", cut_name(&self.certificate, 52))
    }

    fn client(&self) -> kube::Client {
        self.shared.client.clone()
    }

    fn labels_for(&self, challenge: &str) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert(SOLVER_LABEL.to_string(), "true".to_string());
        l.insert(CHALLENGE_LABEL.to_string(), challenge.to_string());
        if let Some(c) = label_value(&self.certificate) {
            l.insert(CERTIFICATE_NAME_LABEL.to_string(), c);
        }
        l
    }

    /// Creates (or takes over) the Challenge object and returns the owner reference to it.
    async fn create_challenge(
        &self,
        name: &str,
        p: &Presented,
        solver: &AcmeSolver,
        kind: &ChallengeKind,
    ) -> anyhow::Result<OwnerReference> {
        let api: Api<Challenge> = Api::namespaced(self.client(), &self.namespace);
        let class = match kind {
            ChallengeKind::Http01 => {
                let i = http01_ingress(solver, &self.annotations)?;
                i.ingress_class_name.or(i.class)
            }
            _ => None,
        };
        let spec = ChallengeSpec {
            challenge_type: if *kind == ChallengeKind::Dns01 {
                ChallengeType::Dns01
            } else {
                ChallengeType::Http01
            },
            dns_name: p.authz.identifier.clone(),
            wildcard: p.authz.wildcard,
            token: p.challenge.token.clone(),
            key: p.challenge.key_authorization.clone(),
            url: p.challenge.url.clone(),
            authorization_url: p.authz.url.clone(),
            issuer_ref: self.issuer_ref.clone(),
            ingress_class_name: if *kind == ChallengeKind::Http01 {
                class
            } else {
                None
            },
        };
        let mut ch = Challenge::new(name, spec);
        ch.metadata.namespace = Some(self.namespace.clone());
        ch.metadata.labels = Some(self.labels_for(name));
        ch.metadata.owner_references = Some(vec![self.owner.clone()]);
        let applied = api
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&ch),
            )
            .await
            .with_context(|| format!("creating Challenge {}/{name}", self.namespace))?;
        self.set_status(
            name,
            ChallengeStatus {
                state: Some("pending".into()),
                presented: false,
                processing: false,
                reason: Some("presenting".into()),
            },
        )
        .await?;
        owner_of(&applied)
    }

    /// Writes the Challenge's status (the reason bounded to acme::MAX_MESSAGE characters).
    pub async fn set_status(&self, name: &str, mut status: ChallengeStatus) -> anyhow::Result<()> {
        status.reason = status.reason.map(|r| bounded(&r, MAX_MESSAGE));
        let api: Api<Challenge> = Api::namespaced(self.client(), &self.namespace);
        let body = json!({
            "apiVersion": "certs.ferrite.dev/v1alpha1",
            "kind": "Challenge",
            "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("writing the status of Challenge {}/{name}", self.namespace))?;
        Ok(())
    }

    async fn present_inner(&self, p: &Presented) -> anyhow::Result<()> {
        let (_, solver, kind) = self
            .solver_for(&p.authz)
            .ok_or_else(|| anyhow!("no solver of the issuer matches {}", p.authz.name()))?;
        let name = self.challenge_name(p);
        let owner = self.create_challenge(&name, p, solver, &kind).await?;
        let result = match (&kind, &solver.http01, &solver.dns01) {
            (ChallengeKind::Http01, Some(_), _) => match http01_ingress(solver, &self.annotations) {
                Ok(ingress) => self.present_http01(&name, &owner, p, Some(&ingress)).await,
                Err(e) => Err(e),
            },
            (ChallengeKind::Dns01, _, Some(dns)) => match (&dns.ferrite_dns, &dns.rfc2136) {
                (Some(f), None) => {
                    self.present_dns_record(&name, &owner, p, f.ttl.unwrap_or(DEFAULT_FERRITE_DNS_TTL))
                        .await
                }
                (None, Some(r)) => self.rfc2136(r).await?.add(p).await,
                _ => Err(anyhow!(
                    "the dns01 solver must set exactly one of ferriteDNS and rfc2136"
                )),
            },
            _ => Err(anyhow!("the solver has no {} configuration", kind.as_str())),
        };
        match &result {
            Ok(()) => {
                self.set_status(
                    &name,
                    ChallengeStatus {
                        state: Some(p.challenge.status.clone()),
                        presented: true,
                        processing: false,
                        reason: Some(format!("presented by {}", kind.as_str())),
                    },
                )
                .await?
            }
            Err(e) => {
                // Best effort: the order fails with this error, the Challenge says it too until the
                // cleanup below removes what was made.
                let _ = self
                    .set_status(
                        &name,
                        ChallengeStatus {
                            state: Some("errored".into()),
                            presented: false,
                            processing: false,
                            reason: Some(format!("{e:#}")),
                        },
                    )
                    .await;
            }
        }
        result
    }

    // ---- HTTP-01

    /// Whether `class` (None: the cluster's default IngressClass) is ferrite-ingress's.
    async fn is_ferrite_class(&self, class: Option<&str>) -> anyhow::Result<bool> {
        let api: Api<IngressClass> = Api::all(self.client());
        let found = match class {
            Some(c) => api
                .get_opt(c)
                .await
                .with_context(|| format!("reading IngressClass {c}"))?,
            None => api
                .list(&Default::default())
                .await
                .context("listing IngressClasses")?
                .items
                .into_iter()
                .find(|ic| {
                    ic.annotations()
                        .get("ingressclass.kubernetes.io/is-default-class")
                        .is_some_and(|v| v == "true")
                }),
        };
        Ok(found
            .and_then(|ic| ic.spec)
            .and_then(|s| s.controller)
            .is_some_and(|c| c == FERRITE_INGRESS_CONTROLLER))
    }

    async fn present_http01(
        &self,
        name: &str,
        owner: &OwnerReference,
        p: &Presented,
        ingress: Option<&Http01Ingress>,
    ) -> anyhow::Result<()> {
        self.shared
            .tokens
            .insert(&p.challenge.token, &p.challenge.key_authorization)?;
        let class_name = ingress.and_then(|i| i.ingress_class_name.as_deref());
        let old_class = ingress.and_then(|i| i.class.as_deref());
        if old_class.is_none() && self.is_ferrite_class(class_name).await? {
            // ferrite-ingress serves the token from the Challenge; nothing else to make.
            return Ok(());
        }
        let host = p.authz.identifier.clone();
        let (service, port) = self.http01_backend(name, owner).await?;
        let mut annotations = BTreeMap::new();
        if let Some(c) = old_class {
            annotations.insert(INGRESS_CLASS_ANNOTATION.to_string(), c.to_string());
        }
        let mut body = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": self.object_name(name),
                "namespace": self.namespace,
                "labels": self.labels_for(name),
                "annotations": annotations,
                "ownerReferences": [owner],
            },
            "spec": {
                "rules": [{
                    "host": host,
                    "http": {"paths": [{
                        "path": p.http_path(),
                        "pathType": "Exact",
                        "backend": {"service": {"name": service, "port": {"number": port}}},
                    }]},
                }],
            },
        });
        // With only the old `class` (an annotation) or no class at all, no ingressClassName: the
        // cluster's default IngressClass, or the controller that reads the annotation, takes it.
        if let Some(c) = class_name {
            body["spec"]["ingressClassName"] = json!(c);
        }
        let api: Api<Ingress> = Api::namespaced(self.client(), &self.namespace);
        api.patch(
            &self.object_name(name),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("creating the temporary Ingress for {host}"))?;
        Ok(())
    }

    /// Names of the per-challenge Ingress, Service and Endpoints: a DNS label starting with a letter.
    fn object_name(&self, challenge: &str) -> String {
        format!("ferrite-acme-{}", short_hash(&[&self.namespace, challenge]))
    }

    /// The Service the temporary Ingress routes to, and its port.
    async fn http01_backend(&self, name: &str, owner: &OwnerReference) -> anyhow::Result<(String, u16)> {
        let args = &self.shared.args;
        let Some(ip) = args.pod_ip else {
            let own_ns = args
                .http01_service_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok());
            return match (&args.http01_service_name, own_ns) {
                (Some(svc), Some(ns)) if ns == self.namespace => Ok((svc.clone(), args.http01_service_port)),
                _ => Err(anyhow!(
                    "HTTP-01 through an Ingress class other than ferrite's needs this pod's IP (--pod-ip / POD_IP) \
                     for the challenge's Service in namespace {}",
                    self.namespace
                )),
            };
        };
        let svc_name = self.object_name(name);
        let port = self.shared.http01_port;
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let labels = self.labels_for(name);
        let meta = json!({
            "name": svc_name,
            "namespace": self.namespace,
            "labels": labels,
            "ownerReferences": [owner],
        });
        // No selector: the Endpoints below are ours, pointing at this pod's listener (kube-controller-manager
        // mirrors them into an EndpointSlice for proxies that read those).
        let svc = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            "spec": {"type": "ClusterIP", "ports": [{"name": "http", "protocol": "TCP", "port": port, "targetPort": port}]},
        });
        Api::<Service>::namespaced(self.client(), &self.namespace)
            .patch(&svc_name, &pp, &Patch::Apply(&svc))
            .await
            .with_context(|| format!("creating Service {}/{svc_name}", self.namespace))?;
        let ep = Endpoints {
            metadata: ObjectMeta {
                name: Some(svc_name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                owner_references: Some(vec![owner.clone()]),
                ..ObjectMeta::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(vec![EndpointAddress {
                    ip: ip.to_string(),
                    ..EndpointAddress::default()
                }]),
                ports: Some(vec![EndpointPort {
                    name: Some("http".into()),
                    port: i32::from(port),
                    protocol: Some("TCP".into()),
                    ..EndpointPort::default()
                }]),
                ..EndpointSubset::default()
            }]),
        };
        let mut ep_body = serde_json::to_value(&ep)?;
        ep_body["apiVersion"] = json!("v1");
        ep_body["kind"] = json!("Endpoints");
        Api::<Endpoints>::namespaced(self.client(), &self.namespace)
            .patch(&svc_name, &pp, &Patch::Apply(&ep_body))
            .await
            .with_context(|| format!("creating Endpoints {}/{svc_name}", self.namespace))?;
        Ok((svc_name, port))
    }

    async fn cleanup_http01(&self, name: &str, p: &Presented) -> anyhow::Result<()> {
        self.shared.tokens.remove(&p.challenge.token);
        let obj = self.object_name(name);
        let dp = DeleteParams::background();
        let mut first_error = None;
        let ing: Api<Ingress> = Api::namespaced(self.client(), &self.namespace);
        if let Err(e) = ignore_not_found(ing.delete(&obj, &dp).await.map(|_| ())) {
            first_error.get_or_insert(anyhow!(e).context(format!("deleting Ingress {obj}")));
        }
        let ep: Api<Endpoints> = Api::namespaced(self.client(), &self.namespace);
        if let Err(e) = ignore_not_found(ep.delete(&obj, &dp).await.map(|_| ())) {
            first_error.get_or_insert(anyhow!(e).context(format!("deleting Endpoints {obj}")));
        }
        let svc: Api<Service> = Api::namespaced(self.client(), &self.namespace);
        if let Err(e) = ignore_not_found(svc.delete(&obj, &dp).await.map(|_| ())) {
            first_error.get_or_insert(anyhow!(e).context(format!("deleting Service {obj}")));
        }
        first_error.map_or(Ok(()), Err)
    }

    // ---- DNS-01 through a DNSRecord

    /// The DNSRecord holding the TXT values of `record` for this Certificate (one object per name, so an
    /// apex and its wildcard, whose records share a name, do not conflict in ferrite-dns).
    fn dns_record_name(&self, record: &str) -> String {
        format!(
            "{}-acme-{}",
            cut_name(&self.certificate, 40),
            short_hash(&[&self.certificate, record])
        )
    }

    async fn present_dns_record(
        &self,
        _name: &str,
        owner: &OwnerReference,
        p: &Presented,
        ttl: i64,
    ) -> anyhow::Result<()> {
        let record = p.dns_record_name();
        let obj = self.dns_record_name(&record);
        let value = p.challenge.dns_txt_value.clone();
        let mut owner = owner.clone();
        // Several Challenges may share the object: each owns it, none controls it.
        owner.controller = None;
        owner.block_owner_deletion = None;
        self.edit_dns_record(
            &obj,
            |current| {
                let (mut targets, mut owners) = current
                    .map(|r| {
                        (
                            r.spec.targets.clone(),
                            r.metadata.owner_references.clone().unwrap_or_default(),
                        )
                    })
                    .unwrap_or_default();
                if !targets.contains(&value) {
                    targets.push(value.clone());
                }
                if !owners.iter().any(|o| o.uid == owner.uid) {
                    owners.push(owner.clone());
                }
                Some((targets, owners))
            },
            &record,
            ttl,
        )
        .await
    }

    async fn cleanup_dns_record(&self, name: &str, p: &Presented) -> anyhow::Result<()> {
        let record = p.dns_record_name();
        let obj = self.dns_record_name(&record);
        let value = p.challenge.dns_txt_value.clone();
        let challenge_api: Api<Challenge> = Api::namespaced(self.client(), &self.namespace);
        let uid = challenge_api.get_opt(name).await?.and_then(|c| c.metadata.uid);
        self.edit_dns_record(
            &obj,
            |current| {
                let r = current?;
                let targets: Vec<String> = r.spec.targets.iter().filter(|t| **t != value).cloned().collect();
                let owners: Vec<OwnerReference> = r
                    .metadata
                    .owner_references
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|o| Some(&o.uid) != uid.as_ref())
                    .collect();
                Some((targets, owners))
            },
            &record,
            0,
        )
        .await
    }

    /// Read-modify-write of the DNSRecord `obj` (optimistic, retried on conflicts). `edit` gets the
    /// current object and returns the new targets and owners; no targets: the object is deleted.
    async fn edit_dns_record(
        &self,
        obj: &str,
        edit: impl Fn(Option<&DNSRecord>) -> Option<(Vec<String>, Vec<OwnerReference>)>,
        record: &str,
        ttl: i64,
    ) -> anyhow::Result<()> {
        let api: Api<DNSRecord> = Api::namespaced(self.client(), &self.namespace);
        for _ in 0..5 {
            let current = api
                .get_opt(obj)
                .await
                .with_context(|| format!("reading DNSRecord {obj}"))?;
            let Some((targets, owners)) = edit(current.as_ref()) else {
                return Ok(());
            };
            let result = match (current, targets.is_empty()) {
                (None, true) => return Ok(()),
                (Some(c), true) => {
                    let dp = DeleteParams {
                        preconditions: c.metadata.resource_version.clone().map(|rv| {
                            kube::api::Preconditions {
                                resource_version: Some(rv),
                                uid: None,
                            }
                        }),
                        ..DeleteParams::background()
                    };
                    ignore_not_found(api.delete(obj, &dp).await.map(|_| ()))
                }
                (None, false) => {
                    let mut r = DNSRecord::new(
                        obj,
                        DNSRecordSpec {
                            name: record.to_string(),
                            record_type: DnsRecordType::Txt,
                            ttl: Some(ttl),
                            targets,
                        },
                    );
                    r.metadata.namespace = Some(self.namespace.clone());
                    let mut labels = self.labels_for("");
                    labels.remove(CHALLENGE_LABEL);
                    r.metadata.labels = Some(labels);
                    r.metadata.owner_references = Some(owners);
                    api.create(&PostParams::default(), &r).await.map(|_| ())
                }
                (Some(mut c), false) => {
                    c.spec.targets = targets;
                    c.metadata.owner_references = Some(owners);
                    c.metadata.managed_fields = None;
                    api.replace(obj, &PostParams::default(), &c).await.map(|_| ())
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(anyhow!(e).context(format!("writing DNSRecord {obj}"))),
            }
        }
        bail!("DNSRecord {obj} kept changing under us (5 conflicts)")
    }

    // ---- DNS-01 over RFC2136

    async fn rfc2136(&self, cfg: &Rfc2136Solver) -> anyhow::Result<Rfc2136Presenter> {
        let server = resolve_nameserver(&cfg.nameserver).await?;
        let algorithm = TsigAlgorithm::parse(cfg.tsig_algorithm.as_deref().unwrap_or("hmac-sha256"))?;
        let key = match (&cfg.tsig_key_name, &cfg.tsig_secret_secret_ref) {
            (Some(name), Some(sref)) => {
                let api: Api<Secret> = Api::namespaced(self.client(), &self.issuer_namespace);
                let secret = api
                    .get_opt(&sref.name)
                    .await
                    .with_context(|| format!("reading Secret {}/{}", self.issuer_namespace, sref.name))?
                    .ok_or_else(|| {
                        anyhow!(
                            "the TSIG Secret {}/{} does not exist",
                            self.issuer_namespace,
                            sref.name
                        )
                    })?;
                let bytes = tsig_secret(&secret, sref.key.as_deref())
                    .map_err(|e| anyhow!("Secret {}/{}: {e}", self.issuer_namespace, sref.name))?;
                TsigKey::new(name, algorithm, &bytes).map_err(|e| anyhow!(e))?
            }
            _ => bail!("rfc2136 needs tsigKeyName and tsigSecretSecretRef (unsigned updates are not sent)"),
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(3).min(self.shared.args.rfc2136_timeout),
            request: self.shared.args.rfc2136_timeout,
        };
        Ok(Rfc2136Presenter {
            client: UpdateClient::new(server, key, timeouts)?,
            timeout: self.shared.args.rfc2136_timeout,
        })
    }

    async fn cleanup_inner(&self, p: &Presented) -> anyhow::Result<()> {
        let name = self.challenge_name(p);
        let Some((_, solver, kind)) = self.solver_for(&p.authz) else {
            return self.delete_challenge(&name).await;
        };
        let result = match (&kind, &solver.dns01) {
            (ChallengeKind::Http01, _) => self.cleanup_http01(&name, p).await,
            (ChallengeKind::Dns01, Some(dns)) => match (&dns.ferrite_dns, &dns.rfc2136) {
                (Some(_), _) => self.cleanup_dns_record(&name, p).await,
                (None, Some(r)) => match self.rfc2136(r).await {
                    Ok(c) => c.remove(p).await,
                    Err(e) => Err(e),
                },
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        let deleted = self.delete_challenge(&name).await;
        result.and(deleted)
    }

    async fn delete_challenge(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Challenge> = Api::namespaced(self.client(), &self.namespace);
        ignore_not_found(api.delete(name, &DeleteParams::background()).await.map(|_| ()))
            .with_context(|| format!("deleting Challenge {}/{name}", self.namespace))
    }
}

impl ChallengeSolver for OrderSolver {
    fn choose(&self, authz: &AuthzInfo) -> Option<ChallengeKind> {
        self.solver_for(authz).map(|(_, _, k)| k)
    }

    async fn present(&self, p: &Presented) -> anyhow::Result<()> {
        let r = self.present_inner(p).await;
        if r.is_err() {
            // acme.rs cleans up only what was presented: undo a half-made presentation here.
            let _ = self.cleanup_inner(p).await;
        }
        r
    }

    async fn cleanup(&self, p: &Presented) -> anyhow::Result<()> {
        self.cleanup_inner(p).await
    }

    async fn validating(&self, p: &Presented) {
        let name = self.challenge_name(p);
        let status = ChallengeStatus {
            state: Some("pending".into()),
            presented: true,
            processing: true,
            reason: Some("the self-check passed or was skipped; the CA was asked to validate".into()),
        };
        // Status only: the order goes on whether or not this write lands.
        if let Err(e) = self.set_status(&name, status).await {
            tracing::debug!(challenge = %name, error = %format!("{e:#}"), "Challenge status (processing)");
        }
    }
}

/// Removes every Challenge (and, through ownership, what was made for it) of `certificate` left behind
/// by a controller that stopped mid-order, before a new order is solved.
pub async fn remove_challenges(
    client: kube::Client,
    namespace: &str,
    certificate: &str,
) -> anyhow::Result<()> {
    let Some(value) = label_value(certificate) else {
        return Ok(());
    };
    let api: Api<Challenge> = Api::namespaced(client, namespace);
    let lp = kube::api::ListParams::default()
        .labels(&format!("{CERTIFICATE_NAME_LABEL}={value},{SOLVER_LABEL}=true"));
    for ch in api.list(&lp).await?.items {
        ignore_not_found(
            api.delete(&ch.name_any(), &DeleteParams::background())
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}

/// The Ingress settings an HTTP-01 solver uses for a Certificate: the solver's `http01.ingress`, with the
/// ingress-shim's overrides from the Certificate's annotations (cert-manager's
/// `acme.cert-manager.io/http01-override-ingress-ingressclassname` and `...-override-ingress-class`, copied
/// from the Ingress's `http01-ingress-*` annotations): either one replaces both fields; both at once is an
/// error, as in cert-manager.
pub fn http01_ingress(
    solver: &AcmeSolver,
    annotations: &BTreeMap<String, String>,
) -> anyhow::Result<Http01Ingress> {
    let mut ingress = solver
        .http01
        .as_ref()
        .and_then(|h| h.ingress.clone())
        .unwrap_or_default();
    let name = annotations
        .get(crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS_NAME)
        .filter(|v| !v.trim().is_empty());
    let class = annotations
        .get(crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS)
        .filter(|v| !v.trim().is_empty());
    match (name, class) {
        (Some(_), Some(_)) => bail!(
            "the Certificate has both {} and {}; set one",
            crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS_NAME,
            crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS
        ),
        (Some(n), None) => {
            ingress.ingress_class_name = Some(n.trim().to_string());
            ingress.class = None;
        }
        (None, Some(c)) => {
            ingress.class = Some(c.trim().to_string());
            ingress.ingress_class_name = None;
        }
        (None, None) => {}
    }
    Ok(ingress)
}

/// `Ok` for a delete of something already gone.
fn ignore_not_found(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other,
    }
}

/// An owner reference (not controlling) to an object just written.
fn owner_of(ch: &Challenge) -> anyhow::Result<OwnerReference> {
    let mut o = ch
        .controller_owner_ref(&())
        .ok_or_else(|| anyhow!("the Challenge came back without a uid"))?;
    o.block_owner_deletion = None;
    Ok(o)
}

/// The TSIG secret's bytes from a Secret: the value under `key` (default: the only key, else `secret`)
/// is base64 text as `tsig-keygen` prints it.
pub fn tsig_secret(secret: &Secret, key: Option<&str>) -> Result<Vec<u8>, String> {
    let data = secret.data.clone().unwrap_or_default();
    let key = match key {
        Some(k) => k.to_string(),
        None if data.len() == 1 => data.keys().next().cloned().unwrap_or_default(),
        None => "secret".to_string(),
    };
    let raw = data
        .get(&key)
        .ok_or_else(|| format!("no key {key:?} (it has {:?})", data.keys().collect::<Vec<_>>()))?;
    let text = std::str::from_utf8(&raw.0).map_err(|_| format!("key {key:?} is not base64 text"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| format!("key {key:?} is not base64 (tsig-keygen's secret)"))?;
    if bytes.is_empty() {
        return Err(format!("key {key:?} is empty"));
    }
    Ok(bytes)
}

/// `host`, `host:port`, `[v6]:port` or a bare IPv6 address; port 53 by default; names resolved.
pub async fn resolve_nameserver(s: &str) -> anyhow::Result<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse::<u16>()
                .map_err(|_| anyhow!("nameserver {s:?}: bad port"))?,
        ),
        _ => (s, 53),
    };
    if host.is_empty() {
        bail!("nameserver {s:?}: no host");
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving nameserver {host}"))?
        .next()
        .ok_or_else(|| anyhow!("nameserver {host} resolves to no address"))
}

/// RFC2136 presentation: our TXT value added; on cleanup only that value deleted.
#[derive(Debug)]
pub struct Rfc2136Presenter {
    client: UpdateClient,
    timeout: Duration,
}

impl Rfc2136Presenter {
    /// A presenter over `client`.
    pub fn new(client: UpdateClient, timeout: Duration) -> Self {
        Self { client, timeout }
    }

    async fn target(&self, p: &Presented) -> anyhow::Result<(Name, Record)> {
        let mut owner = Name::from_ascii(p.dns_record_name())
            .map_err(|e| anyhow!("record name {}: {e}", p.dns_record_name()))?;
        owner.set_fqdn(true);
        let zone = ferrite_kit::dns::query::zone_of(self.client.server(), &owner, self.timeout).await?;
        let rec = Record::from_rdata(
            owner,
            RFC2136_TTL,
            RData::TXT(TXT::new(vec![p.challenge.dns_txt_value.clone()])),
        );
        Ok((zone, rec))
    }

    /// Adds the challenge's TXT value at `_acme-challenge.<name>` (other values there stay).
    pub async fn add(&self, p: &Presented) -> anyhow::Result<()> {
        let (zone, rec) = self.target(p).await?;
        self.client.add(&zone, &[rec]).await?;
        Ok(())
    }

    /// Deletes only the challenge's TXT value.
    pub async fn remove(&self, p: &Presented) -> anyhow::Result<()> {
        let (zone, rec) = self.target(p).await?;
        self.client.delete_values(&zone, &[rec]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_api::certs::{Dns01Solver, FerriteDnsSolver, Http01Solver, SolverSelector};

    fn http() -> AcmeSolver {
        AcmeSolver {
            http01: Some(Http01Solver::default()),
            ..AcmeSolver::default()
        }
    }

    fn dns() -> AcmeSolver {
        AcmeSolver {
            dns01: Some(Dns01Solver {
                ferrite_dns: Some(FerriteDnsSolver::default()),
                ..Dns01Solver::default()
            }),
            ..AcmeSolver::default()
        }
    }

    fn with(mut s: AcmeSolver, names: &[&str], zones: &[&str], labels: &[(&str, &str)]) -> AcmeSolver {
        s.selector = Some(SolverSelector {
            dns_names: names.iter().map(|s| s.to_string()).collect(),
            dns_zones: zones.iter().map(|s| s.to_string()).collect(),
            match_labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        });
        s
    }

    /// (name, what the case shows, solvers, offered challenge types, Certificate labels, want index).
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<AcmeSolver>,
        &'a [ChallengeKind],
        &'a [(&'a str, &'a str)],
        Option<usize>,
    );

    #[test]
    fn selection_follows_cert_manager() {
        let both = [ChallengeKind::Http01, ChallengeKind::Dns01];
        let dns_only = [ChallengeKind::Dns01];
        let team = [("team", "a")];
        let cases: Vec<Case<'_>> = vec![
            (
                "a.example.com",
                "no selector matches all",
                vec![http()],
                &both,
                &[],
                Some(0),
            ),
            (
                "a.example.com",
                "ties: the first listed",
                vec![http(), dns()],
                &both,
                &[],
                Some(0),
            ),
            (
                "a.example.com",
                "a zone beats no selector",
                vec![http(), with(dns(), &[], &["example.com"], &[])],
                &both,
                &[],
                Some(1),
            ),
            (
                "a.sub.example.com",
                "the longest zone wins",
                vec![
                    with(http(), &[], &["example.com"], &[]),
                    with(dns(), &[], &["sub.example.com"], &[]),
                ],
                &both,
                &[],
                Some(1),
            ),
            (
                "a.example.com",
                "dnsNames beats zones",
                vec![
                    with(http(), &[], &["a.example.com"], &[]),
                    with(dns(), &["a.example.com"], &[], &[]),
                ],
                &both,
                &[],
                Some(1),
            ),
            (
                "b.example.com",
                "a names-only selector does not match other names",
                vec![with(dns(), &["a.example.com"], &[], &[])],
                &both,
                &[],
                None,
            ),
            (
                "notexample.com",
                "a zone matches at label boundaries only",
                vec![with(dns(), &[], &["example.com"], &[])],
                &both,
                &[],
                None,
            ),
            (
                "example.com",
                "the zone apex is in the zone",
                vec![with(dns(), &[], &["example.com"], &[])],
                &both,
                &[],
                Some(0),
            ),
            (
                "a.example.com",
                "matchLabels beats no selector",
                vec![http(), with(dns(), &[], &[], &team)],
                &both,
                &team,
                Some(1),
            ),
            (
                "a.example.com",
                "matchLabels not on the Certificate: no match",
                vec![with(dns(), &[], &[], &team)],
                &both,
                &[],
                None,
            ),
            (
                "a.example.com",
                "a zone beats matchLabels-only",
                vec![
                    with(http(), &[], &[], &team),
                    with(dns(), &[], &["example.com"], &[]),
                ],
                &both,
                &team,
                Some(1),
            ),
            (
                "a.example.com",
                "same zone: more labels wins",
                vec![
                    with(http(), &[], &["example.com"], &[]),
                    with(dns(), &[], &["example.com"], &team),
                ],
                &both,
                &team,
                Some(1),
            ),
            (
                "*.example.com",
                "wildcards need DNS-01",
                vec![http(), with(dns(), &[], &["other.com"], &[]), dns()],
                &dns_only,
                &[],
                Some(2),
            ),
            (
                "*.example.com",
                "wildcard in dnsNames as written",
                vec![dns(), with(dns(), &["*.example.com"], &[], &[])],
                &dns_only,
                &[],
                Some(1),
            ),
            (
                "*.example.com",
                "a wildcard is in its base name's zone",
                vec![dns(), with(dns(), &[], &["example.com"], &[])],
                &dns_only,
                &[],
                Some(1),
            ),
            (
                "*.example.com",
                "an HTTP-01 solver never answers a wildcard",
                vec![with(http(), &["*.example.com"], &[], &[])],
                &both,
                &[],
                None,
            ),
            (
                "a.example.com",
                "a type the CA does not offer is skipped",
                vec![with(http(), &["a.example.com"], &[], &[]), dns()],
                &dns_only,
                &[],
                Some(1),
            ),
            (
                "A.Example.COM.",
                "names compare case-insensitively, trailing dot ignored",
                vec![dns(), with(dns(), &["a.example.com"], &[], &[])],
                &both,
                &[],
                Some(1),
            ),
            (
                "a.example.com",
                "a solver with both http01 and dns01 is invalid: skipped",
                vec![AcmeSolver {
                    http01: Some(Http01Solver::default()),
                    ..dns()
                }],
                &both,
                &[],
                None,
            ),
        ];
        for (name, what, solvers, offered, labels, want) in cases {
            let labels: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let got = select(&solvers, name, &labels, offered).map(|(i, _, _)| i);
            assert_eq!(got, want, "{what} ({name})");
        }
    }

    #[test]
    fn http01_class_overrides_from_the_certificate() {
        let solver = AcmeSolver {
            http01: Some(Http01Solver {
                ingress: Some(Http01Ingress {
                    ingress_class_name: Some("nginx".into()),
                    class: None,
                }),
            }),
            ..AcmeSolver::default()
        };
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let none = http01_ingress(&solver, &ann(&[])).unwrap();
        assert_eq!(none.ingress_class_name.as_deref(), Some("nginx"));
        let by_name = http01_ingress(
            &solver,
            &ann(&[(crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS_NAME, "ferrite")]),
        )
        .unwrap();
        assert_eq!(
            (by_name.ingress_class_name.as_deref(), by_name.class),
            (Some("ferrite"), None)
        );
        let by_class = http01_ingress(
            &solver,
            &ann(&[(crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS, "traefik")]),
        )
        .unwrap();
        assert_eq!(
            (by_class.ingress_class_name, by_class.class.as_deref()),
            (None, Some("traefik"))
        );
        let both = http01_ingress(
            &solver,
            &ann(&[
                (crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS, "a"),
                (crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS_NAME, "b"),
            ]),
        );
        assert!(both.unwrap_err().to_string().contains("set one"));
        // A solver without an ingress section still takes the override.
        let bare = http01_ingress(
            &http(),
            &ann(&[(crate::shim::HTTP01_OVERRIDE_INGRESS_CLASS_NAME, "x")]),
        )
        .unwrap();
        assert_eq!(bare.ingress_class_name.as_deref(), Some("x"));
    }

    #[test]
    fn tokens_and_answers() {
        let t = Http01Tokens::default();
        t.insert("tok_en-1", "tok_en-1.thumb").unwrap();
        assert!(t.insert("../etc/passwd", "x").is_err());
        assert!(t.insert(&"a".repeat(257), "x").is_err());
        let ok = http01_answer(&t, &Method::GET, "/.well-known/acme-challenge/tok_en-1");
        assert_eq!(ok, (StatusCode::OK, "tok_en-1.thumb".to_string()));
        for (m, path, want) in [
            (
                Method::GET,
                "/.well-known/acme-challenge/other",
                StatusCode::NOT_FOUND,
            ),
            (Method::GET, "/.well-known/acme-challenge/", StatusCode::NOT_FOUND),
            (
                Method::GET,
                "/.well-known/acme-challenge/tok_en-1/x",
                StatusCode::NOT_FOUND,
            ),
            (Method::GET, "/", StatusCode::NOT_FOUND),
            (Method::GET, "/metrics", StatusCode::NOT_FOUND),
            (
                Method::POST,
                "/.well-known/acme-challenge/tok_en-1",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ] {
            assert_eq!(http01_answer(&t, &m, path).0, want, "{m} {path}");
        }
        t.remove("tok_en-1");
        assert!(t.is_empty());
    }

    #[test]
    fn names_are_valid_and_stable() {
        assert_eq!(short_hash(&["a", "b"]), short_hash(&["a", "b"]));
        assert_ne!(short_hash(&["a", "b"]), short_hash(&["ab", ""]));
        assert_eq!(short_hash(&["x"]).len(), 10);
        assert_eq!(cut_name(&format!("{}-x", "a".repeat(51)), 52), "a".repeat(51));
        assert_eq!(label_value("www.example.com").as_deref(), Some("www.example.com"));
        assert_eq!(label_value(&"a".repeat(64)), None);
        assert_eq!(label_value("-a"), None);
    }

    #[test]
    fn tsig_secrets_from_secrets() {
        use k8s_openapi::ByteString;
        let s = |pairs: &[(&str, &str)]| Secret {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        assert_eq!(
            tsig_secret(&s(&[("tsig", "c2VjcmV0\n")]), None).unwrap(),
            b"secret"
        );
        assert_eq!(
            tsig_secret(&s(&[("a", "eA=="), ("secret", "c2VjcmV0")]), None).unwrap(),
            b"secret"
        );
        assert_eq!(
            tsig_secret(&s(&[("k", "c2VjcmV0")]), Some("k")).unwrap(),
            b"secret"
        );
        assert!(
            tsig_secret(&s(&[("k", "c2VjcmV0")]), Some("other"))
                .unwrap_err()
                .contains("no key")
        );
        assert!(
            tsig_secret(&s(&[("k", "not base64!")]), None)
                .unwrap_err()
                .contains("base64")
        );
        assert!(tsig_secret(&s(&[("k", "")]), None).is_err());
    }

    /// One request with hyper's HTTP/1 client: (status, body).
    async fn get(addr: SocketAddr, method: &str, path: &str, host: &str) -> (u16, String) {
        use http_body_util::BodyExt as _;
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn http01_listener_serves_only_live_tokens() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = Http01Tokens::default();
        let server = tokio::spawn(serve_http01(listener, tokens.clone()));
        let path = "/.well-known/acme-challenge/abcDEF_123-x";
        assert_eq!(
            get(addr, "GET", path, "www.example.com").await.0,
            404,
            "not yet presented"
        );
        tokens
            .insert("abcDEF_123-x", "abcDEF_123-x.account-thumbprint")
            .unwrap();
        assert_eq!(
            get(addr, "GET", path, "www.example.com").await,
            (200, "abcDEF_123-x.account-thumbprint".to_string())
        );
        assert_eq!(
            get(addr, "HEAD", path, "www.example.com").await,
            (200, String::new())
        );
        assert_eq!(get(addr, "POST", path, "www.example.com").await.0, 405);
        for other in [
            "/",
            "/metrics",
            "/.well-known/acme-challenge/",
            "/.well-known/acme-challenge/abc%2F..",
            "/x",
        ] {
            assert_eq!(get(addr, "GET", other, "www.example.com").await.0, 404, "{other}");
        }
        // Fed from a Challenge watch: a final state stops serving.
        let mut ch = Challenge::new(
            "c",
            ChallengeSpec {
                challenge_type: ChallengeType::Http01,
                dns_name: "www.example.com".into(),
                wildcard: false,
                token: "watched".into(),
                key: "watched.k".into(),
                url: "https://ca/chall/1".into(),
                authorization_url: "https://ca/authz/1".into(),
                issuer_ref: IssuerRef {
                    name: "le".into(),
                    kind: Default::default(),
                    group: None,
                },
                ingress_class_name: None,
            },
        );
        tokens.apply(&ch, false);
        assert_eq!(
            get(addr, "GET", "/.well-known/acme-challenge/watched", "h")
                .await
                .0,
            200
        );
        ch.status = Some(ChallengeStatus {
            state: Some("valid".into()),
            ..ChallengeStatus::default()
        });
        tokens.apply(&ch, false);
        assert_eq!(
            get(addr, "GET", "/.well-known/acme-challenge/watched", "h")
                .await
                .0,
            404
        );
        tokens.remove("abcDEF_123-x");
        assert_eq!(
            get(addr, "GET", path, "www.example.com").await.0,
            404,
            "cleaned up"
        );

        // A client that sends headers forever is cut off at the header limit, not buffered.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n").await.unwrap();
        let junk = format!("X-Junk: {}\r\n", "j".repeat(1000));
        let mut closed = false;
        for _ in 0..100 {
            if s.write_all(junk.as_bytes()).await.is_err() {
                closed = true;
                break;
            }
        }
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(
            closed || read.is_ok(),
            "the oversized request was answered or closed"
        );
        let text = String::from_utf8_lossy(&buf);
        assert!(
            closed || text.is_empty() || text.starts_with("HTTP/1.1 431"),
            "{text}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn nameservers_parse() {
        for (s, want) in [
            ("127.0.0.1", "127.0.0.1:53"),
            ("127.0.0.1:5353", "127.0.0.1:5353"),
            ("[::1]:5353", "[::1]:5353"),
            ("::1", "[::1]:53"),
        ] {
            let got = resolve_nameserver(s).await.unwrap();
            assert_eq!(got.to_string(), want, "{s}");
        }
        assert!(resolve_nameserver("127.0.0.1:x").await.is_err());
        assert!(resolve_nameserver(":53").await.is_err());
    }
}
