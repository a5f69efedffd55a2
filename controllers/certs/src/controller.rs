//! The ferrite-certs controller: Issuers, ClusterIssuers and Certificates reconciled into
//! `kubernetes.io/tls` Secrets, renewed on time.
//!
//! ```text
//!   watches (kit, shared, managedFields trimmed):
//!     Certificate ──────────────────────────────┐
//!     Issuer / ClusterIssuer ── issuerRef ──────┤ (re-reconcile the Certificates that name them)
//!     Secret, label certs.ferrite.dev/managed ──┘ (certificate-name label -> its Certificate;
//!                                                   an issuer's CA / account Secret -> the issuer)
//!   Issuer reconcile: IssuerConfig::which ─> selfSigned: Ready | ca: GET Secret, CaIssuer::from_pem
//!                     | acme: account Secret (GET; created with the managed label) ─> Ready + acme.uri
//!   Certificate reconcile:
//!     validate spec (renewal::validate_spec, names, key) ─ bad ─> Ready=False InvalidSpec + Warning
//!     resolve issuer ─ missing / not Ready ─> Ready=False IssuerNotFound / IssuerNotReady
//!     cached Secret ─> renewal::needs_issuance ─ None ─> Ready=True, requeue at renewalTime
//!        └ Some(reason), backoff over ─> live GET of the Secret (the cache may lag our own write)
//!             ─> key (rotationPolicy) ─> sign (selfSigned | ca) ─> SSA Secret ─> Ready, revision+1
//!             └ failure ─> failedIssuanceAttempts+1, nextAttemptTime = backoff, Warning Event
//! ```
//!
//! Only Secrets carrying [`MANAGED_LABEL`] are watched (a label-selected watch): a cluster's other
//! Secrets never enter the cache, which is what makes cert-manager need gigabytes in large clusters.
//! Secrets an issuer references (a CA key pair, an ACME account key, an EAB key) are read by name
//! when needed; the ones ferrite-certs itself writes carry the label, so their changes are seen.
//!
//! Every replica watches; only the leader reconciles and writes (kit runner + leader fence).
//! Statuses are written with server-side apply as [`FIELD_MANAGER`], and only when they change.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use ferrite_api::certs::{
    AcmeIssuerStatus, CERTIFICATE_NAME_LABEL, Certificate, CertificateStatus, ClusterIssuer, Issuer,
    IssuerConfig, IssuerKind, IssuerStatus, MANAGED_LABEL, conditions as cond, secret_annotations,
    secret_keys,
};
use ferrite_api::names;
use ferrite_kit::conditions::{self, NewCondition, Status};
use ferrite_kit::events::Events;
use ferrite_kit::kube::runtime::controller::{self, Action};
use ferrite_kit::kube::runtime::reflector::{ObjectRef, Store};
use ferrite_kit::kube::runtime::watcher;
use ferrite_kit::kube::{Api, Resource, ResourceExt};
use ferrite_kit::leader::Leadership;
use ferrite_kit::watch::{Change, SharedWatch, Transform, Trim};
use ferrite_kit::{App, ReasonedError};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::acme::{self, AcmeAccount, AcmeError, AcmeOrder, ClientConfig, Eab, NewAccountRequest};
use crate::pki::{self, CaIssuer, KeySpec, Names, PkiError, PrivateKey, SignedCertificate};
use crate::renewal::{self, IssuanceCheck, IssuanceReason, KeyPlan, RenewalConfig, RenewalSpec};

/// Field manager of every write (status, Secrets).
pub const FIELD_MANAGER: &str = names::CERTS_CONTROLLER_MANAGER;
/// Reporter of Events.
pub const REPORTER: &str = names::CERTS_CONTROLLER_REPORTER;
/// Certificate reconciles in flight at once. Unbounded, a burst of new Certificates (thousands
/// created together) starts one reconcile each, and every one holds its API requests, response
/// buffers and task state at the same time: the controller's peak memory then grows with the size
/// of the burst. Others wait in the controller's queue (deduplicated per Certificate).
pub const CERTIFICATE_RECONCILES: u16 = 32;

/// How often a not-Ready issuer is looked at again (its Secret may appear, its CA come back).
const ISSUER_RECHECK: Duration = Duration::from_secs(30);
/// How often a Certificate waiting for its issuer is looked at again (issuer changes also trigger).
const WAIT_RECHECK: Duration = Duration::from_secs(60);
/// Why an ACME Certificate is not ordered when the controller runs without challenge solvers.
const NO_SOLVER: &str = "ACME issuance needs the challenge solvers (controllers/certs/src/solvers.rs), which this build does not have; no order was placed";
/// The message tail of an issuer without a Ready condition yet.
const NOT_RECONCILED: &str = "not reconciled yet";
/// Retry after a status write lost to a newer version of the Certificate (or issuer).
const CONFLICT_RETRY: Duration = Duration::from_millis(500);
/// Longest message put in a condition or Event from an error.
const MAX_MESSAGE: usize = 512;
/// Condition reason when the Secret named by a Certificate exists but was not written by us.
pub const REASON_SECRET_NOT_MANAGED: &str = "SecretNotManaged";

/// Flags of `ferrite-certs controller`.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    /// Namespace of the Secrets ClusterIssuers reference (CA key pairs, ACME account keys, EAB and
    /// TSIG keys). Default: the pod's namespace, then `ferrite-system`.
    #[arg(long, env = "FERRITE_CERTS_CLUSTER_RESOURCE_NAMESPACE")]
    pub cluster_resource_namespace: Option<String>,
    /// Wait after the first failed issuance of a Certificate; doubles per failure (cert-manager: 1h).
    #[arg(long, env = "FERRITE_CERTS_BACKOFF_BASE", default_value = "1h", value_parser = ferrite_kit::cli::parse_duration)]
    pub backoff_base: Duration,
    /// Longest wait between failed issuances (cert-manager: 32h).
    #[arg(long, env = "FERRITE_CERTS_BACKOFF_MAX", default_value = "32h", value_parser = ferrite_kit::cli::parse_duration)]
    pub backoff_max: Duration,
    /// Time allowed for one request to an ACME server.
    #[arg(long, env = "FERRITE_CERTS_ACME_REQUEST_TIMEOUT", default_value = "30s", value_parser = ferrite_kit::cli::parse_duration)]
    pub acme_request_timeout: Duration,
    /// How long the self-check of a presented challenge keeps trying before the order fails.
    #[arg(long, env = "FERRITE_CERTS_SELF_CHECK_TIMEOUT", default_value = "60s", value_parser = ferrite_kit::cli::parse_duration)]
    pub self_check_timeout: Duration,
    /// HTTP-01 self-check: connect to this address instead of resolving the name (the Host header
    /// is still the name), e.g. the ingress controller's Service when cluster DNS does not resolve
    /// the public name from inside.
    #[arg(long, env = "FERRITE_CERTS_SELF_CHECK_HTTP_ADDRESS")]
    pub self_check_http_address: Option<std::net::SocketAddr>,
    /// HTTP-01 self-check port when resolving the name.
    #[arg(long, env = "FERRITE_CERTS_SELF_CHECK_HTTP_PORT", default_value_t = 80)]
    pub self_check_http_port: u16,
    /// DNS-01 self-check: the recursive resolvers (`ip:port`, comma separated) through which the
    /// zone's authoritative servers are found and asked for the TXT record. Empty: no DNS self-check.
    #[arg(
        long,
        env = "FERRITE_CERTS_SELF_CHECK_NAMESERVERS",
        value_delimiter = ',',
        alias = "dns01-recursive-nameservers"
    )]
    pub self_check_nameservers: Vec<std::net::SocketAddr>,
    /// DNS-01 self-check: ask only the --self-check-nameservers for the TXT record instead of the
    /// zone's authoritative servers found through them (cert-manager's flag of the same name).
    #[arg(long, env = "FERRITE_CERTS_DNS01_RECURSIVE_NAMESERVERS_ONLY")]
    pub dns01_recursive_nameservers_only: bool,
    /// DNS-01 self-check: the port the zone's authoritative servers are asked on (tests with servers
    /// on loopback ports).
    #[arg(
        long,
        env = "FERRITE_CERTS_SELF_CHECK_AUTHORITATIVE_PORT",
        default_value_t = 53
    )]
    pub self_check_authoritative_port: u16,
    /// Make each Certificate the owner (controller) of the Secret it writes, so deleting the
    /// Certificate deletes the Secret too (cert-manager's flag of the same name). Set at every issuance.
    #[arg(long, env = "FERRITE_CERTS_ENABLE_CERTIFICATE_OWNER_REF")]
    pub enable_certificate_owner_ref: bool,
    /// Longest wait for an order to become ready after its challenges, and for its certificate.
    #[arg(long, env = "FERRITE_CERTS_ACME_POLL_TIMEOUT", default_value = "120s", value_parser = ferrite_kit::cli::parse_duration)]
    pub acme_poll_timeout: Duration,
}

impl ControllerArgs {
    /// The cluster-resource namespace after defaults.
    pub fn cluster_namespace(&self) -> String {
        self.cluster_resource_namespace
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "ferrite-system".to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// (namespace, name) of a Certificate.
type CertKey = (String, String);
/// (issuer_name, issuer_kind) metric labels.
type IssuerLabels = (String, String);

/// What the per-Certificate series say about one Certificate.
#[derive(Clone, Debug, PartialEq)]
struct CertSeries {
    issuer: IssuerLabels,
    /// notAfter and renewal time (Unix seconds), when known.
    not_after: Option<f64>,
    renewal: Option<f64>,
    /// The Ready condition's status: "True", "False" or "Unknown".
    ready: &'static str,
}

const READY_STATES: [&str; 3] = ["True", "False", "Unknown"];

/// The per-Certificate gauges (expiration, renewal time, ready status), kept as one small entry per
/// Certificate and turned into series when scraped. A `GaugeVec` child per series holds its own copy
/// of the metric's description and label pairs (five series, about 2 KB per Certificate); this is
/// about 150 bytes, with the same exposition.
#[derive(Clone, Debug)]
struct CertificateGauges {
    expiration: prometheus::core::Desc,
    renewal: prometheus::core::Desc,
    ready: prometheus::core::Desc,
    certs: Arc<Mutex<HashMap<CertKey, CertSeries>>>,
}

impl CertificateGauges {
    fn new() -> prometheus::Result<Self> {
        let cert_labels = || {
            ["namespace", "name", "issuer_name", "issuer_kind"]
                .map(String::from)
                .to_vec()
        };
        let desc = |name: &str, help: &str, labels: Vec<String>| {
            prometheus::core::Desc::new(name.into(), help.into(), labels, HashMap::new())
        };
        Ok(Self {
            expiration: desc(
                "ferrite_certs_certificate_expiration_timestamp_seconds",
                "notAfter of the certificate in a Certificate's Secret (Unix time).",
                cert_labels(),
            )?,
            renewal: desc(
                "ferrite_certs_certificate_renewal_timestamp_seconds",
                "When a Certificate will be renewed (Unix time).",
                cert_labels(),
            )?,
            ready: desc(
                "ferrite_certs_certificate_ready_status",
                "1 for the Ready condition's current status of a Certificate (True, False, Unknown), else 0.",
                ["namespace", "name", "condition"].map(String::from).to_vec(),
            )?,
            certs: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CertKey, CertSeries>> {
        self.certs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn gauge_family(
    desc: &prometheus::core::Desc,
    metrics: Vec<prometheus::proto::Metric>,
) -> prometheus::proto::MetricFamily {
    let mut f = prometheus::proto::MetricFamily::default();
    f.set_name(desc.fq_name.clone());
    f.set_help(desc.help.clone());
    f.set_field_type(prometheus::proto::MetricType::GAUGE);
    f.set_metric(metrics);
    f
}

/// One gauge sample with `labels` (name, value), sorted by name as the encoders expect.
fn gauge_sample(labels: &[(&str, &str)], value: f64) -> prometheus::proto::Metric {
    let mut pairs: Vec<prometheus::proto::LabelPair> = labels
        .iter()
        .map(|(n, v)| {
            let mut p = prometheus::proto::LabelPair::default();
            p.set_name((*n).into());
            p.set_value((*v).into());
            p
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    let mut g = prometheus::proto::Gauge::default();
    g.set_value(value);
    let mut m = prometheus::proto::Metric::from_gauge(g);
    m.set_label(pairs);
    m
}

impl prometheus::core::Collector for CertificateGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.expiration, &self.renewal, &self.ready]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let (mut expiration, mut renewal, mut ready) = (Vec::new(), Vec::new(), Vec::new());
        for ((ns, name), c) in self.lock().iter() {
            let l = [
                ("namespace", ns.as_str()),
                ("name", name.as_str()),
                ("issuer_name", c.issuer.0.as_str()),
                ("issuer_kind", c.issuer.1.as_str()),
            ];
            if let Some(t) = c.not_after {
                expiration.push(gauge_sample(&l, t));
            }
            if let Some(t) = c.renewal {
                renewal.push(gauge_sample(&l, t));
            }
            for s in READY_STATES {
                let v = if s == c.ready { 1.0 } else { 0.0 };
                ready.push(gauge_sample(
                    &[("namespace", ns), ("name", name), ("condition", s)],
                    v,
                ));
            }
        }
        [
            (&self.expiration, expiration),
            (&self.renewal, renewal),
            (&self.ready, ready),
        ]
        .into_iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(d, m)| gauge_family(d, m))
        .collect()
    }
}

/// The `ferrite_certs_*` metrics (see docs/certs.md for cert-manager's names).
#[derive(Clone, Debug)]
pub struct Metrics {
    certificates: CertificateGauges,
    issuance_duration: HistogramVec,
    issuances: IntCounterVec,
    acme_requests: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let certificates = CertificateGauges::new()?;
        let issuance_duration = HistogramVec::new(
            HistogramOpts::new(
                "ferrite_certs_issuance_duration_seconds",
                "Time of one issuance, key generation to Secret written, by issuer type.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
            ]),
            &["issuer_type"],
        )?;
        let issuances = IntCounterVec::new(
            Opts::new(
                "ferrite_certs_issuances_total",
                "Issuances by issuer type and result (success, failure).",
            ),
            &["issuer_type", "result"],
        )?;
        let acme_requests = IntCounterVec::new(
            Opts::new(
                "ferrite_certs_acme_requests_total",
                "Requests to ACME servers by endpoint and HTTP status (or error).",
            ),
            &["endpoint", "status"],
        )?;
        registry.register(Box::new(certificates.clone()))?;
        registry.register(Box::new(issuance_duration.clone()))?;
        registry.register(Box::new(issuances.clone()))?;
        registry.register(Box::new(acme_requests.clone()))?;
        Ok(Self {
            certificates,
            issuance_duration,
            issuances,
            acme_requests,
        })
    }

    /// The hook acme.rs calls per request.
    pub fn acme_hook(&self) -> acme::RequestHook {
        let c = self.acme_requests.clone();
        Arc::new(move |endpoint: &'static str, status: &str| {
            c.with_label_values(&[endpoint, status]).inc();
        })
    }

    fn observe(&self, ns: &str, name: &str, issuer: &(String, String), status: &CertificateStatus) {
        let current = conditions::get(&status.conditions, cond::READY)
            .map(|c| c.status.as_str())
            .unwrap_or("Unknown");
        let series = CertSeries {
            issuer: issuer.clone(),
            not_after: status.not_after.as_ref().map(|t| t.0.as_second() as f64),
            renewal: status.renewal_time.as_ref().map(|t| t.0.as_second() as f64),
            ready: READY_STATES
                .into_iter()
                .find(|s| *s == current)
                .unwrap_or("Unknown"),
        };
        let mut certs = self.certificates.lock();
        match certs.get_mut(&(ns.to_string(), name.to_string())) {
            Some(old) => *old = series,
            None => {
                certs.insert((ns.to_string(), name.to_string()), series);
            }
        }
    }

    /// Removes every series of a deleted Certificate.
    pub fn forget(&self, ns: &str, name: &str) {
        self.certificates
            .lock()
            .remove(&(ns.to_string(), name.to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Errors that fail a reconcile (the runner retries with backoff). Everything about the user's
/// objects is reported in conditions and Events instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a read or write.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] ferrite_kit::Error),
}

impl ReasonedError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "KubeError",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(ferrite_kit::Error::Kube(e))
    }
}

/// Why one issuance failed.
#[derive(Debug, thiserror::Error)]
enum IssueError {
    /// The issuer cannot sign (its CA Secret went bad since it was Ready).
    #[error("{0}")]
    Issuer(String),
    /// Key generation or signing failed.
    #[error("{0}")]
    Pki(#[from] PkiError),
    /// The ACME CA failed or refused.
    #[error("{0}")]
    Acme(#[from] AcmeError),
    /// The API server failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Certificate changed while its order was being recorded.
    #[error("the Certificate changed during the issuance")]
    Conflict,
}

impl IssueError {
    fn reason(&self) -> &'static str {
        match self {
            IssueError::Issuer(_) => cond::REASON_ISSUER_NOT_READY,
            IssueError::Pki(e) => e.reason(),
            IssueError::Acme(e) => e.reason(),
            IssueError::Kube(_) => "KubeError",
            IssueError::Conflict => "Conflict",
        }
    }
}

fn bounded(s: &str) -> String {
    acme::bounded(s, MAX_MESSAGE)
}

// ---------------------------------------------------------------------------------------------
// The desired certificate, from a spec

/// A validated Certificate spec.
#[derive(Debug, Clone)]
pub struct Desired {
    /// The names to issue for.
    pub names: Names,
    /// Lifetime and renewal.
    pub renewal: RenewalConfig,
    /// The key.
    pub key: KeySpec,
    /// When the key is replaced.
    pub rotation: renewal::RotationPolicy,
    /// `isCA`.
    pub is_ca: bool,
}

/// Validates a Certificate spec as the controller needs it; the error names the field.
pub fn desired(spec: &ferrite_api::certs::CertificateSpec) -> Result<Desired, String> {
    if !spec.issuer_ref.group_is_ours() {
        return Err(format!(
            "spec.issuerRef.group {:?} is not certs.ferrite.dev (or cert-manager.io)",
            bounded(spec.issuer_ref.group.as_deref().unwrap_or(""))
        ));
    }
    let renewal = renewal::validate_spec(&RenewalSpec {
        duration: spec.duration.clone(),
        renew_before: spec.renew_before.clone(),
        renew_before_percentage: spec.renew_before_percentage,
    })
    .map_err(|e| e.to_string())?;
    let mut ips = Vec::new();
    for ip in &spec.ip_addresses {
        ips.push(
            IpAddr::from_str(ip.trim())
                .map_err(|_| format!("spec.ipAddresses: {:?} is not an IP address", bounded(ip)))?,
        );
    }
    let common_name = spec.common_name.clone().filter(|c| !c.trim().is_empty());
    let dns_names: Vec<String> = spec.dns_names.iter().map(|n| n.trim().to_string()).collect();
    if let Some(bad) = dns_names.iter().find(|n| n.is_empty()) {
        return Err(format!("spec.dnsNames: {bad:?} is empty"));
    }
    if dns_names.is_empty() && ips.is_empty() && common_name.is_none() {
        return Err("at least one of spec.dnsNames, spec.ipAddresses and spec.commonName must be set".into());
    }
    let pk = spec.private_key.clone().unwrap_or_default();
    use ferrite_api::certs::{KeyAlgorithm as A, KeyEncoding as E, RotationPolicy as R};
    let size = match pk.size {
        None => None,
        Some(s) => Some(u32::try_from(s).map_err(|_| format!("spec.privateKey.size {s} is negative"))?),
    };
    let key = KeySpec {
        algorithm: match pk.algorithm {
            None | Some(A::Rsa) => pki::KeyAlgorithm::Rsa,
            Some(A::Ecdsa) => pki::KeyAlgorithm::Ecdsa,
            Some(A::Ed25519) => pki::KeyAlgorithm::Ed25519,
        },
        size,
        encoding: match pk.encoding {
            None | Some(E::Pkcs1) => pki::KeyEncoding::Pkcs1,
            Some(E::Pkcs8) => pki::KeyEncoding::Pkcs8,
        },
    };
    key.validate().map_err(|e| format!("spec.privateKey: {e}"))?;
    let rotation = match pk.rotation_policy {
        None | Some(R::Always) => renewal::RotationPolicy::Always,
        Some(R::Never) => renewal::RotationPolicy::Never,
    };
    let subject = spec
        .subject
        .as_ref()
        .map(|sub| pki::SubjectFields {
            organizations: sub.organizations.clone(),
            organizational_units: sub.organizational_units.clone(),
            countries: sub.countries.clone(),
            localities: sub.localities.clone(),
            provinces: sub.provinces.clone(),
        })
        .unwrap_or_default();
    subject.validate().map_err(|e| e.to_string())?;
    Ok(Desired {
        names: Names {
            dns_names,
            ip_addresses: ips,
            common_name,
            subject,
        },
        renewal,
        key,
        rotation,
        is_ca: spec.is_ca,
    })
}

fn is_spec_error(e: &PkiError) -> bool {
    matches!(
        e,
        PkiError::NoNames
            | PkiError::InvalidDnsName { .. }
            | PkiError::InvalidCommonName { .. }
            | PkiError::InvalidSubject { .. }
            | PkiError::InvalidKeySize { .. }
            | PkiError::InvalidDuration { .. }
    )
}

// ---------------------------------------------------------------------------------------------
// Context

/// What every reconcile reads and writes through.
pub struct Context {
    client: kube::Client,
    events: Events,
    leadership: Leadership,
    metrics: Metrics,
    args: ControllerArgs,
    cluster_ns: String,
    certificates: Store<Certificate>,
    issuers: Store<Issuer>,
    cluster_issuers: Store<ClusterIssuer>,
    secrets: Store<Secret>,
    /// Loaded ACME accounts by issuer key, with the fingerprint of what they were loaded from.
    accounts: Mutex<HashMap<String, (String, AcmeAccount)>>,
    /// Solves the challenges of ACME orders; `None`: ACME Certificates are not ordered.
    solver: Option<Arc<dyn OrderDriver>>,
    /// ARI answers per Certificate.
    ari: Mutex<HashMap<CertKey, AriEntry>>,
}

/// The CA's last ARI answer for one Certificate's current certificate.
#[derive(Debug, Clone)]
struct AriEntry {
    /// The ARI id of the certificate asked about.
    id: String,
    /// The suggested renewal time, if any.
    at: Option<Timestamp>,
    /// When to ask again.
    next_fetch: Timestamp,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("cluster_ns", &self.cluster_ns)
            .finish_non_exhaustive()
    }
}

/// An issuer as a Certificate sees it.
#[derive(Debug, Clone)]
struct ResolvedIssuer {
    kind: IssuerKind,
    name: String,
    /// Where its Secrets live.
    namespace: String,
    config: IssuerConfig,
}

impl ResolvedIssuer {
    fn issuer_type(&self) -> &'static str {
        self.config.which().unwrap_or("unknown")
    }
}

fn is_managed(s: &Secret) -> bool {
    s.labels().get(MANAGED_LABEL).map(String::as_str) == Some("true")
}

fn secret_bytes<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    s.data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.as_slice())
        .filter(|b| !b.is_empty())
}

/// The Certificate a managed Secret belongs to (label, else annotation).
fn secret_owner(s: &Secret) -> Option<String> {
    s.labels()
        .get(CERTIFICATE_NAME_LABEL)
        .or_else(|| s.annotations().get(secret_annotations::CERTIFICATE_NAME))
        .cloned()
}

/// Whether `name` is a valid label value (the certificate-name label is skipped otherwise).
fn label_value_ok(name: &str) -> bool {
    name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

impl Context {
    fn resolve_issuer(
        &self,
        ns: &str,
        r: &ferrite_api::certs::IssuerRef,
    ) -> Result<ResolvedIssuer, (&'static str, String)> {
        let (status, config, namespace) = match r.kind {
            IssuerKind::Issuer => {
                let Some(i) = self.issuers.get(&ObjectRef::new(&r.name).within(ns)) else {
                    return Err((
                        cond::REASON_ISSUER_NOT_FOUND,
                        format!("Issuer {ns}/{} does not exist", r.name),
                    ));
                };
                (i.status.clone(), i.spec.config.clone(), ns.to_string())
            }
            IssuerKind::ClusterIssuer => {
                let Some(i) = self.cluster_issuers.get(&ObjectRef::new(&r.name)) else {
                    return Err((
                        cond::REASON_ISSUER_NOT_FOUND,
                        format!("ClusterIssuer {} does not exist", r.name),
                    ));
                };
                (i.status.clone(), i.spec.config.clone(), self.cluster_ns.clone())
            }
        };
        let conds = status.map(|s| s.conditions).unwrap_or_default();
        if !conditions::is_true(&conds, cond::READY) {
            let why = conditions::get(&conds, cond::READY)
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| NOT_RECONCILED.into());
            return Err((
                cond::REASON_ISSUER_NOT_READY,
                bounded(&format!("{} {} is not Ready ({why})", r.kind.as_str(), r.name)),
            ));
        }
        Ok(ResolvedIssuer {
            kind: r.kind,
            name: r.name.clone(),
            namespace,
            config,
        })
    }

    fn acme_config(&self, a: &ferrite_api::certs::AcmeIssuer) -> Result<ClientConfig, String> {
        let mut cfg = ClientConfig::new(a.server.clone());
        cfg.skip_tls_verify = a.skip_tls_verify;
        cfg.request_timeout = self.args.acme_request_timeout;
        cfg.on_request = Some(self.metrics.acme_hook());
        if let Some(b) = a.ca_bundle.as_deref().filter(|b| !b.trim().is_empty()) {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .map_err(|_| "acme.caBundle is not base64".to_string())?;
            cfg.ca_bundle =
                Some(String::from_utf8(pem).map_err(|_| "acme.caBundle is not PEM text".to_string())?);
        }
        Ok(cfg)
    }
}

// ---------------------------------------------------------------------------------------------
// Issuers

/// The result of looking at one issuer.
struct IssuerOutcome {
    status: IssuerStatus,
    /// A Warning to publish when the Ready condition changed to it.
    warning: Option<(&'static str, String)>,
    requeue: Duration,
}

async fn check_issuer(
    ctx: &Context,
    key: &str,
    config: &IssuerConfig,
    secret_ns: &str,
    old: &IssuerStatus,
    generation: Option<i64>,
) -> Result<IssuerOutcome, Error> {
    let now = Timestamp::now();
    let mut status = old.clone();
    let (ok, reason, message, acme_status) = match config.which() {
        Err(msg) => (false, cond::REASON_BAD_CONFIG, msg, None),
        Ok("selfSigned") => (
            true,
            cond::REASON_IS_READY,
            "The selfSigned issuer is ready".to_string(),
            None,
        ),
        Ok("ca") => {
            let ca = config
                .ca
                .as_ref()
                .map(|c| c.secret_name.clone())
                .unwrap_or_default();
            match load_ca(ctx, secret_ns, &ca).await? {
                Ok(ca_issuer) => (
                    true,
                    cond::REASON_KEY_PAIR_VERIFIED,
                    format!("Signing CA verified: {}", bounded(&ca_issuer.info().subject)),
                    None,
                ),
                Err(msg) => (false, cond::REASON_ERR_GET_KEY_PAIR, msg, None),
            }
        }
        Ok(_) => match config.acme.as_ref() {
            Some(a) => match acme_account(ctx, key, a, secret_ns).await? {
                Ok((account, email)) => (
                    true,
                    cond::REASON_ACME_ACCOUNT_REGISTERED,
                    "The ACME account was registered with the ACME server".to_string(),
                    Some(AcmeIssuerStatus {
                        uri: Some(account.uri().to_string()),
                        last_registered_email: email,
                    }),
                ),
                Err(msg) => (
                    false,
                    cond::REASON_ERR_REGISTER_ACME_ACCOUNT,
                    msg,
                    old.acme.clone(),
                ),
            },
            None => (
                false,
                cond::REASON_BAD_CONFIG,
                "no issuer configuration".into(),
                None,
            ),
        },
    };
    let was = conditions::get(&old.conditions, cond::READY)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()));
    conditions::set(
        &mut status.conditions,
        NewCondition {
            type_: cond::READY,
            status: Status::from(ok),
            reason,
            message: message.clone(),
        },
        generation,
        now,
    );
    status.acme = acme_status;
    let changed_to = Some(("False".to_string(), reason.to_string(), message.clone()));
    let warning = (!ok && was != changed_to).then_some((reason, message));
    Ok(IssuerOutcome {
        status,
        warning,
        requeue: if ok { ctx_resync() } else { ISSUER_RECHECK },
    })
}

fn ctx_resync() -> Duration {
    Duration::from_secs(300)
}

/// The CA of a `ca` issuer: the outer error is the API server's, the inner a message for the user.
async fn load_ca(ctx: &Context, ns: &str, name: &str) -> Result<Result<CaIssuer, String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = match api.get_opt(name).await {
        Ok(Some(s)) => s,
        Ok(None) => return Ok(Err(format!("CA Secret {ns}/{name} does not exist"))),
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(format!(
                "CA Secret {ns}/{name} cannot be read: forbidden (RBAC)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let crt = secret_bytes(&secret, secret_keys::TLS_CRT);
    let key = secret_bytes(&secret, secret_keys::TLS_KEY);
    Ok(match (crt, key) {
        (None, _) => Err(format!("CA Secret {ns}/{name} has no tls.crt")),
        (_, None) => Err(format!("CA Secret {ns}/{name} has no tls.key")),
        (Some(c), Some(k)) => {
            CaIssuer::from_pem(c, k).map_err(|e| bounded(&format!("CA Secret {ns}/{name}: {e}")))
        }
    })
}

/// The issuer's ACME account: loaded from its Secret, or registered and stored there.
async fn acme_account(
    ctx: &Context,
    key: &str,
    a: &ferrite_api::certs::AcmeIssuer,
    ns: &str,
) -> Result<Result<(AcmeAccount, Option<String>), String>, Error> {
    let cfg = match ctx.acme_config(a) {
        Ok(c) => c,
        Err(msg) => return Ok(Err(msg)),
    };
    let email = a.email.clone().filter(|e| !e.trim().is_empty());
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret_name = &a.private_key_secret_ref.name;
    let existing = match api.get_opt(secret_name).await {
        Ok(s) => s,
        Err(kube::Error::Api(e)) if e.code == 403 => {
            return Ok(Err(format!(
                "account Secret {ns}/{secret_name} cannot be read: forbidden (RBAC)"
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let fingerprint = |rv: Option<&str>| {
        format!(
            "{}|{}|{}|{}",
            a.server,
            rv.unwrap_or(""),
            a.skip_tls_verify,
            a.ca_bundle.as_deref().unwrap_or("")
        )
    };
    if let Some(s) = &existing
        && let Some(creds) = secret_bytes(s, secret_keys::ACME_ACCOUNT)
    {
        let fp = fingerprint(s.metadata.resource_version.as_deref());
        if let Some((f, acc)) = ctx.accounts.lock().unwrap_or_else(|p| p.into_inner()).get(key)
            && *f == fp
        {
            return Ok(Ok((acc.clone(), email)));
        }
        return Ok(match AcmeAccount::load(&cfg, creds).await {
            Ok(acc) => {
                ctx.accounts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.to_string(), (fp, acc.clone()));
                Ok((acc, email))
            }
            Err(e) => Err(format!("loading the ACME account: {}", e.message())),
        });
    }
    if existing.as_ref().is_some_and(|s| !is_managed(s)) {
        return Ok(Err(format!(
            "Secret {ns}/{secret_name} exists but holds no ACME account ({}); delete it or name another privateKeySecretRef",
            secret_keys::ACME_ACCOUNT
        )));
    }
    // EAB key, read by name.
    let eab = match &a.external_account_binding {
        None => None,
        Some(b) => {
            let key_name = b.key_secret_ref.key.clone().unwrap_or_else(|| "secret".into());
            let s = match api.get_opt(&b.key_secret_ref.name).await {
                Ok(Some(s)) => s,
                Ok(None) => {
                    return Ok(Err(format!(
                        "EAB Secret {ns}/{} does not exist",
                        b.key_secret_ref.name
                    )));
                }
                Err(kube::Error::Api(e)) if e.code == 403 => {
                    return Ok(Err(format!(
                        "EAB Secret {ns}/{} cannot be read: forbidden (RBAC)",
                        b.key_secret_ref.name
                    )));
                }
                Err(e) => return Err(e.into()),
            };
            let Some(v) = secret_bytes(&s, &key_name) else {
                return Ok(Err(format!(
                    "EAB Secret {ns}/{} has no key {key_name:?}",
                    b.key_secret_ref.name
                )));
            };
            Some(Eab {
                key_id: b.key_id.clone(),
                hmac_key_b64url: String::from_utf8_lossy(v).trim().to_string(),
            })
        }
    };
    let (acc, creds) = match AcmeAccount::create(
        &cfg,
        &NewAccountRequest {
            email: email.clone(),
            eab,
        },
    )
    .await
    {
        Ok(x) => x,
        Err(e) => return Ok(Err(e.message())),
    };
    let body = serde_json::json!({
        "metadata": {"namespace": ns, "labels": {MANAGED_LABEL: "true"}},
        "type": "Opaque",
        "data": {secret_keys::ACME_ACCOUNT: base64::engine::general_purpose::STANDARD.encode(&creds)},
    });
    let written = ferrite_kit::status::apply(&api, secret_name, FIELD_MANAGER, body, &ctx.leadership).await?;
    ctx.accounts.lock().unwrap_or_else(|p| p.into_inner()).insert(
        key.to_string(),
        (
            fingerprint(written.metadata.resource_version.as_deref()),
            acc.clone(),
        ),
    );
    Ok(Ok((acc, email)))
}

async fn reconcile_issuer(issuer: Arc<Issuer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = issuer.namespace().unwrap_or_default();
    let name = issuer.name_any();
    let key = issuer_key(IssuerKind::Issuer, &ns, &name);
    let old = issuer.status.clone().unwrap_or_default();
    let out = check_issuer(
        &ctx,
        &key,
        &issuer.spec.config,
        &ns,
        &old,
        issuer.metadata.generation,
    )
    .await?;
    let api: Api<Issuer> = Api::namespaced(ctx.client.clone(), &ns);
    publish_issuer(&ctx, &api, issuer.as_ref(), &key, &old, out).await
}

async fn reconcile_cluster_issuer(issuer: Arc<ClusterIssuer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = issuer.name_any();
    let key = issuer_key(IssuerKind::ClusterIssuer, "", &name);
    let old = issuer.status.clone().unwrap_or_default();
    let ns = ctx.cluster_ns.clone();
    let out = check_issuer(
        &ctx,
        &key,
        &issuer.spec.config,
        &ns,
        &old,
        issuer.metadata.generation,
    )
    .await?;
    let api: Api<ClusterIssuer> = Api::all(ctx.client.clone());
    publish_issuer(&ctx, &api, issuer.as_ref(), &key, &old, out).await
}

/// Writes an issuer's new status (only when it changed) and its Warning, for Issuers and ClusterIssuers.
async fn publish_issuer<K>(
    ctx: &Context,
    api: &Api<K>,
    issuer: &K,
    key: &str,
    old: &IssuerStatus,
    out: IssuerOutcome,
) -> Result<Action, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if out.status != *old {
        // Only over the version the status was computed from: a stale cached copy (or a replica that
        // lost the lease) never rolls back a newer status. The newer version is reconciled next.
        match ferrite_kit::status::apply_status_at(
            api,
            &issuer.name_any(),
            issuer.meta().resource_version.as_deref(),
            FIELD_MANAGER,
            serde_json::to_value(&out.status).unwrap_or_default(),
            &ctx.leadership,
        )
        .await
        {
            Ok(_) => {}
            Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                tracing::debug!(issuer = %key, "issuer changed since it was read; its status is written from the newer version");
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Some((reason, msg)) = out.warning {
        tracing::warn!(issuer = %key, reason, message = %msg, "issuer not ready");
        ctx.events
            .warning(&issuer.object_ref(&()), reason, "Validate", msg)
            .await;
    }
    Ok(Action::requeue(out.requeue))
}

// ---------------------------------------------------------------------------------------------
// Certificates

fn ready_condition(
    conds: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String)> {
    conditions::get(conds, cond::READY).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn clear_failures(s: &mut CertificateStatus) {
    s.failed_issuance_attempts = None;
    s.last_failure_time = None;
    s.next_attempt_time = None;
}

fn set_times(s: &mut CertificateStatus, leaf: &pki::CertInfo, renewal_at: Timestamp) {
    s.not_before = Some(Time(leaf.not_before));
    s.not_after = Some(Time(leaf.not_after));
    s.renewal_time = Some(Time(renewal_at));
}

/// What the cached Secret says.
struct Observed {
    parsed: Option<Result<pki::TlsSecret, PkiError>>,
    certificate_name: Option<String>,
    issuer: Option<renewal::IssuerRef>,
    /// `tls.key` alone (rotationPolicy Never reuses it even when the certificate is bad). `None`
    /// for a cached summary (see [`summarize_secret`]): issuing works on a live read.
    key: Option<PrivateKey>,
    exists: bool,
    managed: bool,
    /// The CA's suggested renewal time (ACME ARI), when it gave one.
    suggested: Option<Timestamp>,
}

// ---------------------------------------------------------------------------------------------
// The Secret cache: what the reconcile decides with, not the certificate and key bytes

/// The cached copy of a managed Secret whose `tls.crt` and `tls.key` parse and match: its data is
/// replaced by the leaf certificate (DER) under this key, ...
const SUMMARY_LEAF: &str = "ferrite-certs/leaf.der";
/// ... and the key's algorithm and size (`ECDSA 256`, `Ed25519`) under this one. A `/` cannot be in
/// a Secret's data key, so no Secret read from the API server has either.
const SUMMARY_KEY: &str = "ferrite-certs/key";

/// The transform of the managed-Secret watch. Everything a reconcile on the cache decides with
/// stays: labels, annotations (owner, issuer), the leaf's names, times, serial and authority key id
/// (from its DER, for ARI), the key's algorithm and size, and that the key matches the leaf. The
/// chain, `ca.crt` and the private key go: a reconcile that issues GETs the Secret first, and
/// re-issuing with the old key (rotationPolicy Never) reads the key from that GET. A Secret that
/// does not parse (edited, half written, an ACME account) is cached whole, so the reconcile sees
/// exactly what is wrong. Any edit of the Secret is a new object through this transform.
fn summarize_secret(s: &mut Secret) {
    let Ok(tls) = pki::parse_tls_secret(
        secret_bytes(s, secret_keys::TLS_CRT),
        secret_bytes(s, secret_keys::TLS_KEY),
    ) else {
        return;
    };
    let key = match tls.key.size {
        Some(size) => format!("{} {size}", tls.key.algorithm),
        None => tls.key.algorithm.to_string(),
    };
    let leaf = tls.chain.into_iter().next().map(|c| c.der).unwrap_or_default();
    s.data = Some(BTreeMap::from([
        (SUMMARY_LEAF.to_string(), k8s_openapi::ByteString(leaf)),
        (SUMMARY_KEY.to_string(), k8s_openapi::ByteString(key.into_bytes())),
    ]));
    s.string_data = None;
}

/// What [`summarize_secret`] left, read back; `None` for a Secret cached whole (or read live).
fn summarized(s: &Secret) -> Option<Result<pki::TlsSecret, PkiError>> {
    let leaf = secret_bytes(s, SUMMARY_LEAF)?;
    let key = secret_bytes(s, SUMMARY_KEY)?;
    let bad = |detail: &str| PkiError::InvalidCertificate {
        what: "the cached Secret summary".into(),
        index: 0,
        detail: detail.into(),
    };
    let key = std::str::from_utf8(key).ok().and_then(|k| {
        let (alg, size) = match k.split_once(' ') {
            Some((a, n)) => (a, Some(n.parse::<u32>().ok()?)),
            None => (k, None),
        };
        let algorithm = [
            pki::KeyAlgorithm::Rsa,
            pki::KeyAlgorithm::Ecdsa,
            pki::KeyAlgorithm::Ed25519,
        ]
        .into_iter()
        .find(|a| a.to_string() == alg)?;
        Some(pki::KeyInfo { algorithm, size })
    });
    let Some(key) = key else {
        return Some(Err(bad("unreadable key summary")));
    };
    Some(
        pki::parse_certificate_der(leaf, secret_keys::TLS_CRT).map(|leaf| pki::TlsSecret {
            chain: vec![leaf],
            key,
        }),
    )
}

fn observe_secret(s: Option<&Secret>) -> Observed {
    let Some(s) = s else {
        return Observed {
            parsed: None,
            certificate_name: None,
            issuer: None,
            key: None,
            exists: false,
            managed: false,
            suggested: None,
        };
    };
    let crt = secret_bytes(s, secret_keys::TLS_CRT);
    let key = secret_bytes(s, secret_keys::TLS_KEY);
    let ann = s.annotations();
    Observed {
        parsed: Some(summarized(s).unwrap_or_else(|| pki::parse_tls_secret(crt, key))),
        certificate_name: ann.get(secret_annotations::CERTIFICATE_NAME).cloned(),
        issuer: ann
            .get(secret_annotations::ISSUER_NAME)
            .map(|n| renewal::IssuerRef {
                name: n.clone(),
                kind: ann
                    .get(secret_annotations::ISSUER_KIND)
                    .cloned()
                    .unwrap_or_default(),
            }),
        key: key.and_then(|k| PrivateKey::from_pem(k).ok()),
        exists: true,
        managed: is_managed(s),
        suggested: None,
    }
}

fn decide(
    name: &str,
    d: &Desired,
    issuer: &renewal::IssuerRef,
    o: &Observed,
    now: Timestamp,
) -> Option<IssuanceReason> {
    renewal::needs_issuance(&IssuanceCheck {
        secret: o.parsed.as_ref(),
        certificate_name: name,
        secret_certificate_name: o.certificate_name.as_deref(),
        desired_names: &d.names,
        desired_issuer: issuer,
        secret_issuer: o.issuer.as_ref(),
        key_spec: &d.key,
        renewal: &d.renewal,
        suggested_renewal: o.suggested,
        manually_triggered: false,
        now,
    })
}

fn until(t: Timestamp, now: Timestamp) -> Duration {
    let secs = t.as_second().saturating_sub(now.as_second());
    Duration::from_secs(u64::try_from(secs).unwrap_or(0).max(1))
}

struct CertRun<'a> {
    ctx: &'a Context,
    cert: &'a Certificate,
    ns: String,
    name: String,
    old: CertificateStatus,
    status: CertificateStatus,
    now: Timestamp,
    generation: Option<i64>,
    /// The status is written only over this version of the Certificate (a stale cached copy
    /// must not roll back a newer status, e.g. the revision).
    resource_version: Option<String>,
}

impl<'a> CertRun<'a> {
    fn new(ctx: &'a Context, cert: &'a Certificate) -> Self {
        let old = cert.status.clone().unwrap_or_default();
        CertRun {
            ctx,
            cert,
            ns: cert.namespace().unwrap_or_default(),
            name: cert.name_any(),
            status: old.clone(),
            old,
            now: Timestamp::now(),
            generation: cert.metadata.generation,
            resource_version: cert.metadata.resource_version.clone(),
        }
    }

    fn set(&mut self, type_: &'static str, ok: Status, reason: &str, message: String) {
        conditions::set(
            &mut self.status.conditions,
            NewCondition {
                type_,
                status: ok,
                reason,
                message,
            },
            self.generation,
            self.now,
        );
    }

    /// Writes the status if it changed; false when the Certificate changed since it was read
    /// (its newer version is reconciled next).
    async fn write(&mut self, issuer: &(String, String)) -> Result<bool, Error> {
        if self.status == self.old {
            self.ctx
                .metrics
                .observe(&self.ns, &self.name, issuer, &self.status);
            return Ok(true);
        }
        let api: Api<Certificate> = Api::namespaced(self.ctx.client.clone(), &self.ns);
        match ferrite_kit::status::apply_status_at(
            &api,
            &self.name,
            self.resource_version.as_deref(),
            FIELD_MANAGER,
            serde_json::to_value(&self.status).unwrap_or_default(),
            &self.ctx.leadership,
        )
        .await
        {
            Ok(written) => {
                self.ctx
                    .metrics
                    .observe(&self.ns, &self.name, issuer, &self.status);
                // Later writes of this run go over the version just written.
                self.resource_version = written.metadata.resource_version;
                self.old = self.status.clone();
                Ok(true)
            }
            Err(ferrite_kit::Error::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Ready=False with `reason`, no Event (a state expected to pass by itself).
    async fn not_ready_quiet(mut self, reason: &'static str, message: String) -> Result<Action, Error> {
        self.set(cond::READY, Status::False, reason, message);
        conditions::remove(&mut self.status.conditions, cond::ISSUING);
        let issuer = (
            self.cert.spec.issuer_ref.name.clone(),
            self.cert.spec.issuer_ref.kind.as_str().to_string(),
        );
        if !self.write(&issuer).await? {
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        Ok(Action::requeue(WAIT_RECHECK))
    }

    /// Ready=False with `reason`, a Warning Event when the condition changed, no issuance.
    async fn not_ready(
        mut self,
        reason: &'static str,
        message: String,
        requeue: Option<Duration>,
    ) -> Result<Action, Error> {
        let before = ready_condition(&self.old.conditions);
        self.set(cond::READY, Status::False, reason, message.clone());
        conditions::remove(&mut self.status.conditions, cond::ISSUING);
        let issuer = (
            self.cert.spec.issuer_ref.name.clone(),
            self.cert.spec.issuer_ref.kind.as_str().to_string(),
        );
        if !self.write(&issuer).await? {
            return Ok(Action::requeue(CONFLICT_RETRY));
        }
        if before != ready_condition(&self.status.conditions) {
            tracing::warn!(certificate = %format!("{}/{}", self.ns, self.name), reason, message = %message, "certificate not ready");
            self.ctx
                .events
                .warning(&self.cert.object_ref(&()), reason, "Issue", message)
                .await;
        }
        Ok(match requeue {
            Some(d) => Action::requeue(d),
            None => Action::await_change(),
        })
    }
}

async fn reconcile_certificate(cert: Arc<Certificate>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = cert.namespace().unwrap_or_default();
    let name = cert.name_any();
    if cert.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&ns, &name);
        return Ok(Action::await_change());
    }
    let run = CertRun::new(&ctx, &cert);
    let d = match desired(&cert.spec) {
        Ok(d) => d,
        Err(msg) => {
            return run
                .not_ready(cond::REASON_INVALID_SPEC, bounded(&msg), None)
                .await;
        }
    };
    let issuer = match ctx.resolve_issuer(&ns, &cert.spec.issuer_ref) {
        Ok(i) => i,
        // An issuer not looked at yet: its first status write reconciles this Certificate again.
        Err((reason, msg)) if msg.ends_with(concat!("(", "not reconciled yet", ")")) => {
            return run.not_ready_quiet(reason, msg).await;
        }
        Err((reason, msg)) => return run.not_ready(reason, msg, Some(WAIT_RECHECK)).await,
    };
    let secret_ref = ObjectRef::new(&cert.spec.secret_name).within(&ns);
    let cached = ctx.secrets.get(&secret_ref);
    let mut observed = observe_secret(cached.as_deref());
    observed.suggested = ari_suggestion(&ctx, &issuer, &observed, &ns, &name).await;
    let want_issuer = renewal::IssuerRef {
        name: issuer.name.clone(),
        kind: issuer.kind.as_str().to_string(),
    };
    match decide(&name, &d, &want_issuer, &observed, run.now) {
        None => up_to_date(run, &d, &issuer, &observed).await,
        Some(_) => {
            // The cache may lag a Secret and a status we just wrote, or miss a Secret we do not
            // manage: ask the API server before issuing.
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let live = api.get_opt(&cert.spec.secret_name).await?;
            let certs: Api<Certificate> = Api::namespaced(ctx.client.clone(), &ns);
            let Some(live_cert) = certs.get_opt(&name).await? else {
                return Ok(Action::await_change());
            };
            if live_cert.metadata.generation != cert.metadata.generation {
                // The spec changed since the cached copy: its own event reconciles it.
                return Ok(Action::requeue(CONFLICT_RETRY));
            }
            let run = CertRun::new(&ctx, &live_cert);
            let mut observed = observe_secret(live.as_ref());
            observed.suggested = ari_suggestion(&ctx, &issuer, &observed, &ns, &name).await;
            if observed.exists && !observed.managed {
                let msg = format!(
                    "Secret {ns}/{} exists and was not written by ferrite-certs; delete it, or label it {MANAGED_LABEL}=true to let ferrite-certs take it over",
                    cert.spec.secret_name
                );
                return run
                    .not_ready(REASON_SECRET_NOT_MANAGED, msg, Some(WAIT_RECHECK))
                    .await;
            }
            match decide(&name, &d, &want_issuer, &observed, run.now) {
                None => up_to_date(run, &d, &issuer, &observed).await,
                Some(reason) => issue(run, &d, &issuer, &observed, reason).await,
            }
        }
    }
}

/// The renewal time the CA suggests for the Secret's certificate (ACME Renewal Information, RFC
/// 9773): the middle of its window, asked again after the Retry-After the CA gave (at least 1 min,
/// at most 1 day). `None` for other issuers, CAs without `renewalInfo`, or when the account is not
/// loaded yet (the issuer's reconcile loads it).
async fn ari_suggestion(
    ctx: &Context,
    issuer: &ResolvedIssuer,
    observed: &Observed,
    ns: &str,
    name: &str,
) -> Option<Timestamp> {
    if issuer.issuer_type() != "acme" {
        return None;
    }
    let Some(Ok(tls)) = observed.parsed.as_ref() else {
        return None;
    };
    let key = issuer_key(issuer.kind, &issuer.namespace, &issuer.name);
    let account = ctx
        .accounts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .map(|(_, a)| a.clone())?;
    if !account.supports_ari() {
        return None;
    }
    let id = acme::certificate_id(&tls.leaf().der).ok()?;
    let now = Timestamp::now();
    let cache_key = (ns.to_string(), name.to_string());
    if let Some(entry) = ctx.ari.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key)
        && entry.id == id
        && now < entry.next_fetch
    {
        return entry.at;
    }
    let (at, wait) = match account.renewal_info(&id).await {
        Ok(Some(w)) => {
            let half = w.end.duration_since(w.start) / 2;
            (w.start.checked_add(half).ok(), w.retry_after)
        }
        Ok(None) => (None, Duration::from_secs(86_400)),
        Err(e) => {
            tracing::debug!(certificate = %format!("{ns}/{name}"), error = %e.message(), "ARI renewalInfo");
            (None, Duration::from_secs(300))
        }
    };
    let wait = wait.clamp(Duration::from_secs(60), Duration::from_secs(86_400));
    let next_fetch = now
        .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::ZERO))
        .unwrap_or(now);
    ctx.ari
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(cache_key, AriEntry { id, at, next_fetch });
    at
}

/// The Secret holds a current certificate: Ready, times, requeue at the renewal time.
async fn up_to_date(
    mut run: CertRun<'_>,
    d: &Desired,
    issuer: &ResolvedIssuer,
    observed: &Observed,
) -> Result<Action, Error> {
    let Some(Ok(secret)) = observed.parsed.as_ref() else {
        // needs_issuance returns None only for a parsed Secret.
        return Ok(Action::requeue(WAIT_RECHECK));
    };
    let leaf = secret.leaf();
    let mut renewal_at = d.renewal.renewal_time(leaf.not_before, leaf.not_after);
    if let Some(suggested) = observed.suggested {
        renewal_at = renewal_at.min(suggested);
    }
    if let Some(pending) = run.old.next_private_key_secret_name.as_deref() {
        // An issuance abandoned because the Secret became current again: its key is not needed.
        delete_pending_key(run.ctx, &run.ns, pending).await;
    }
    run.set(
        cond::READY,
        Status::True,
        cond::REASON_READY,
        "Certificate is up to date and has not expired".into(),
    );
    conditions::remove(&mut run.status.conditions, cond::ISSUING);
    set_times(&mut run.status, leaf, renewal_at);
    clear_failures(&mut run.status);
    run.status.order = None;
    run.status.next_private_key_secret_name = None;
    if !run
        .write(&(issuer.name.clone(), issuer.kind.as_str().to_string()))
        .await?
    {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    Ok(Action::requeue(until(renewal_at, run.now)))
}

async fn issue(
    mut run: CertRun<'_>,
    d: &Desired,
    issuer: &ResolvedIssuer,
    observed: &Observed,
    reason: IssuanceReason,
) -> Result<Action, Error> {
    let ctx = run.ctx;
    let issuer_labels = (issuer.name.clone(), issuer.kind.as_str().to_string());
    let issuer_type = issuer.issuer_type();
    // Backoff after failures, unless the spec changed since the last one.
    let failed = run.old.failed_issuance_attempts.unwrap_or(0).max(0);
    let failed_same_gen = conditions::get(&run.old.conditions, cond::ISSUING)
        .is_some_and(|c| c.reason == cond::REASON_FAILED && c.observed_generation == run.generation);
    if failed > 0
        && failed_same_gen
        && let Some(next) = run.old.next_attempt_time.as_ref().map(|t| t.0)
        && next > run.now
    {
        return Ok(Action::requeue(until(next, run.now)));
    }
    // The key, per rotationPolicy.
    let key = match renewal::plan_private_key(d.rotation, observed.key.as_ref(), &d.key) {
        Ok(KeyPlan::Reuse) => observed
            .key
            .as_ref()
            .and_then(|k| k.to_pem(d.key.encoding).ok())
            .and_then(|pem| PrivateKey::from_pem(pem.as_bytes()).ok()),
        Ok(KeyPlan::Generate) => None,
        Err(e) => {
            return run
                .not_ready(cond::REASON_SECRET_MISMATCH, bounded(&e.to_string()), None)
                .await;
        }
    };
    let started = Instant::now();
    let signed = if issuer.config.which() == Ok("acme") {
        let replaces = match observed.parsed.as_ref() {
            // ARI (RFC 9773): the new order names the certificate it replaces (dropped by acme.rs
            // when the CA has no renewalInfo).
            Some(Ok(tls)) => acme::certificate_id(&tls.leaf().der).ok(),
            _ => None,
        };
        acme_sign(&mut run, d, issuer, key, &reason, replaces).await
    } else {
        sign(ctx, d, issuer, key, run.now).await
    };
    let (signed, key) = match signed {
        Ok(x) => x,
        Err(IssueError::Pki(e)) if is_spec_error(&e) => {
            return run
                .not_ready(cond::REASON_INVALID_SPEC, bounded(&e.to_string()), None)
                .await;
        }
        Err(IssueError::Kube(e)) => return Err(e.into()),
        Err(IssueError::Conflict) => return Ok(Action::requeue(CONFLICT_RETRY)),
        Err(e) => {
            ctx.metrics
                .issuances
                .with_label_values(&[issuer_type, "failure"])
                .inc();
            return failed_issuance(run, &reason, e, &issuer_labels).await;
        }
    };
    // A Certificate deleted (or deleted and created again) while its ACME order ran gets no Secret
    // from it: its pending key went with it, and a new one issues for itself. (Signing with the
    // selfSigned and ca issuers takes no time after the live read of step 4: no second read.)
    let gone = issuer.config.which() == Ok("acme")
        && Api::<Certificate>::namespaced(ctx.client.clone(), &run.ns)
            .get_opt(&run.name)
            .await?
            .is_none_or(|c| {
                c.metadata.uid != run.cert.metadata.uid || c.metadata.deletion_timestamp.is_some()
            });
    if gone {
        tracing::info!(certificate = %format!("{}/{}", run.ns, run.name), "deleted while being issued; no Secret written");
        return Ok(Action::await_change());
    }
    // The Secret: old content stays until this one write replaces it.
    let key_pem = match key.to_pem(d.key.encoding) {
        Ok(p) => p,
        Err(e) => return failed_issuance(run, &reason, e.into(), &issuer_labels).await,
    };
    let mut body = secret_body(run.cert, issuer, &signed, &key_pem);
    if ctx.args.enable_certificate_owner_ref
        && let Some(owner) = run.cert.controller_owner_ref(&())
    {
        body["metadata"]["ownerReferences"] = serde_json::json!([owner]);
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &run.ns);
    ferrite_kit::status::apply(
        &api,
        &run.cert.spec.secret_name,
        FIELD_MANAGER,
        body,
        &ctx.leadership,
    )
    .await?;
    if let Some(pending) = run.status.next_private_key_secret_name.clone() {
        // The pending key is in the certificate's Secret now.
        delete_pending_key(ctx, &run.ns, &pending).await;
    }
    let took = started.elapsed();
    ctx.metrics
        .issuance_duration
        .with_label_values(&[issuer_type])
        .observe(took.as_secs_f64());
    ctx.metrics
        .issuances
        .with_label_values(&[issuer_type, "success"])
        .inc();
    let leaf = &signed.info;
    let renewal_at = d.renewal.renewal_time(leaf.not_before, leaf.not_after);
    run.set(
        cond::READY,
        Status::True,
        cond::REASON_READY,
        "Certificate is up to date and has not expired".into(),
    );
    conditions::remove(&mut run.status.conditions, cond::ISSUING);
    set_times(&mut run.status, leaf, renewal_at);
    clear_failures(&mut run.status);
    run.status.revision = Some(run.old.revision.unwrap_or(0).saturating_add(1));
    run.status.order = None;
    run.status.next_private_key_secret_name = None;
    if !run.write(&issuer_labels).await? {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    let note = format!(
        "Issued by {} {} ({}): serial {}, valid until {}; {}",
        issuer.kind.as_str(),
        issuer.name,
        reason.reason(),
        leaf.serial,
        leaf.not_after,
        bounded(&reason.to_string())
    );
    tracing::info!(certificate = %format!("{}/{}", run.ns, run.name), reason = reason.reason(), took_ms = took.as_millis() as u64, "issued");
    ctx.events
        .normal(&run.cert.object_ref(&()), "Issued", "Issue", note)
        .await;
    Ok(Action::requeue(until(renewal_at, run.now)))
}

async fn failed_issuance(
    mut run: CertRun<'_>,
    reason: &IssuanceReason,
    e: IssueError,
    issuer_labels: &(String, String),
) -> Result<Action, Error> {
    let ctx = run.ctx;
    let failed = u32::try_from(run.old.failed_issuance_attempts.unwrap_or(0).max(0))
        .unwrap_or(0)
        .saturating_add(1);
    let mut wait = renewal::backoff(failed, ctx.args.backoff_base, ctx.args.backoff_max);
    if let IssueError::Acme(a) = &e
        && let Some(ra) = a.retry_after()
    {
        wait = wait.max(ra);
    }
    let next = run
        .now
        .checked_add(jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    let message = bounded(&format!("{} ({}): {e}", reason.reason(), e.reason()));
    run.status.failed_issuance_attempts = Some(i32::try_from(failed).unwrap_or(i32::MAX));
    run.status.last_failure_time = Some(Time(run.now));
    run.status.next_attempt_time = Some(Time(next));
    run.set(
        cond::ISSUING,
        Status::False,
        cond::REASON_FAILED,
        format!(
            "{message}; attempt {failed} failed, next attempt at {}",
            Timestamp::from_second(next.as_second()).unwrap_or(next)
        ),
    );
    // Ready stays True while the Secret's certificate is still valid (a failed renewal).
    if !matches!(reason, IssuanceReason::Renewing { .. }) {
        run.set(
            cond::READY,
            Status::False,
            reason.reason(),
            bounded(&reason.to_string()),
        );
    }
    if !run.write(issuer_labels).await? {
        return Ok(Action::requeue(CONFLICT_RETRY));
    }
    tracing::warn!(certificate = %format!("{}/{}", run.ns, run.name), reason = e.reason(), error = %message, attempts = failed, retry_in = ?wait, "issuance failed");
    ctx.events
        .warning(&run.cert.object_ref(&()), cond::REASON_FAILED, "Issue", message)
        .await;
    Ok(Action::requeue(wait.max(Duration::from_secs(1))))
}

/// Signs a certificate with `key` (or a new one) as the issuer says.
async fn sign(
    ctx: &Context,
    d: &Desired,
    issuer: &ResolvedIssuer,
    key: Option<PrivateKey>,
    now: Timestamp,
) -> Result<(SignedCertificate, PrivateKey), IssueError> {
    let key = match key {
        Some(k) => k,
        None => {
            let spec = d.key;
            tokio::task::spawn_blocking(move || PrivateKey::generate(&spec))
                .await
                .map_err(|e| IssueError::Issuer(format!("key generation task: {e}")))??
        }
    };
    let spec = pki::CertificateSpec {
        names: d.names.clone(),
        duration: d.renewal.duration,
        is_ca: d.is_ca,
    };
    match issuer.config.which() {
        Ok("selfSigned") => Ok((pki::self_signed(&key, &spec, now)?, key)),
        Ok("ca") => {
            let name = issuer
                .config
                .ca
                .as_ref()
                .map(|c| c.secret_name.clone())
                .unwrap_or_default();
            let ca = load_ca(ctx, &issuer.namespace, &name)
                .await
                .map_err(|Error::Kube(e)| IssueError::Issuer(e.to_string()))?
                .map_err(IssueError::Issuer)?;
            Ok((pki::ca_signed(&key, &spec, &ca, now)?, key))
        }
        Ok(_) => Err(IssueError::Issuer(NO_SOLVER.into())),
        Err(msg) => Err(IssueError::Issuer(msg)),
    }
}

/// The apply body of a Certificate's Secret.
fn secret_body(
    cert: &Certificate,
    issuer: &ResolvedIssuer,
    signed: &SignedCertificate,
    key_pem: &str,
) -> serde_json::Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    let name = cert.name_any();
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    if let Some(t) = &cert.spec.secret_template {
        labels.extend(t.labels.clone());
        annotations.extend(t.annotations.clone());
    }
    labels.insert(MANAGED_LABEL.into(), "true".into());
    if label_value_ok(&name) {
        labels.insert(CERTIFICATE_NAME_LABEL.into(), name.clone());
    }
    let info = &signed.info;
    annotations.insert(secret_annotations::CERTIFICATE_NAME.into(), name);
    annotations.insert(secret_annotations::ISSUER_NAME.into(), issuer.name.clone());
    annotations.insert(
        secret_annotations::ISSUER_KIND.into(),
        issuer.kind.as_str().into(),
    );
    annotations.insert(secret_annotations::ALT_NAMES.into(), info.dns_names.join(","));
    annotations.insert(
        secret_annotations::IP_SANS.into(),
        info.ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );
    annotations.insert(
        secret_annotations::COMMON_NAME.into(),
        info.common_name.clone().unwrap_or_default(),
    );
    annotations.insert(secret_annotations::NOT_AFTER.into(), info.not_after.to_string());
    let mut data = serde_json::Map::new();
    data.insert(secret_keys::TLS_CRT.into(), b64(&signed.certificate_pem).into());
    data.insert(secret_keys::TLS_KEY.into(), b64(key_pem).into());
    if !signed.ca_pem.is_empty() {
        data.insert(secret_keys::CA_CRT.into(), b64(&signed.ca_pem).into());
    }
    serde_json::json!({
        "metadata": {
            "namespace": cert.namespace().unwrap_or_default(),
            "labels": labels,
            "annotations": annotations,
        },
        "type": "kubernetes.io/tls",
        "data": data,
    })
}

// ---------------------------------------------------------------------------------------------
// ACME orders

/// One ACME order to drive to a certificate, for [`OrderDriver::drive`].
#[derive(Debug)]
pub struct OrderJob<'a> {
    /// The order (new, or resumed by the URL in the Certificate's status).
    pub order: &'a mut AcmeOrder,
    /// The Certificate it is for (its names, labels for solver selectors, namespace for Challenges).
    pub certificate: &'a Certificate,
    /// The issuer's kind and name (for the `Challenge`'s `issuerRef`).
    pub issuer: ferrite_api::certs::IssuerRef,
    /// The issuer's ACME configuration (solvers, skipSelfCheck).
    pub acme: &'a ferrite_api::certs::AcmeIssuer,
    /// Where the issuer's Secrets live (TSIG keys).
    pub issuer_namespace: &'a str,
    /// The CSR to finalize with (DER).
    pub csr_der: &'a [u8],
    /// Self-check and polling bounds (the controller's flags, `skipSelfCheck` applied).
    pub options: acme::DriveOptions,
}

/// Solves the challenges of an ACME order: present, self-check, validate, clean up, finalize
/// (typically by building an [`acme::ChallengeSolver`] for the job and calling
/// [`AcmeOrder::drive`]). Returns the chain, PEM, leaf first. [`crate::solvers::Solvers`]
/// implements it; tests may give their own.
pub trait OrderDriver: Send + Sync + 'static {
    /// Drives `job.order` to its certificate.
    fn drive<'a>(&'a self, job: OrderJob<'a>) -> BoxFuture<'a, Result<String, AcmeError>>;
}

/// The challenge solvers of `solvers.rs`: per order, the issuer's `solvers` pick HTTP-01 or DNS-01
/// for each name; the self-check runs unless the issuer sets `skipSelfCheck`.
impl OrderDriver for crate::solvers::Solvers {
    fn drive<'a>(&'a self, job: OrderJob<'a>) -> BoxFuture<'a, Result<String, AcmeError>> {
        Box::pin(async move {
            let solver = self
                .for_order(
                    job.certificate,
                    &job.issuer,
                    job.issuer_namespace,
                    &job.acme.solvers,
                )
                .map_err(|e| AcmeError::SolverFailed {
                    identifier: job.certificate.name_any(),
                    message: bounded(&format!("{e:#}")),
                })?;
            job.order.drive(&solver, job.csr_der, &job.options).await
        })
    }
}

fn issuer_key(kind: IssuerKind, ns: &str, name: &str) -> String {
    match kind {
        IssuerKind::Issuer => format!("Issuer/{ns}/{name}"),
        IssuerKind::ClusterIssuer => format!("ClusterIssuer/{name}"),
    }
}

/// A digest of what an order is for: a spec change abandons the order in progress.
fn order_hash(d: &Desired, issuer: &ResolvedIssuer, server: &str) -> String {
    let mut dns: Vec<String> = d.names.dns_names.iter().map(|n| n.to_ascii_lowercase()).collect();
    dns.sort();
    let mut ips: Vec<String> = d.names.ip_addresses.iter().map(ToString::to_string).collect();
    ips.sort();
    let text = format!(
        "{}|{}|{}|{}/{}|{}|{}/{:?}",
        dns.join(","),
        ips.join(","),
        d.names.common_name.as_deref().unwrap_or(""),
        issuer.kind.as_str(),
        issuer.name,
        server,
        d.key.algorithm,
        d.key.effective_size().ok().flatten()
    );
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    digest.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the Secret holding a Certificate's pending private key.
fn pending_key_name(cert: &str) -> String {
    let mut base: String = cert.chars().take(253 - "-next-key".len()).collect();
    base.push_str("-next-key");
    base
}

/// Deletes a pending private key Secret (best effort: a leftover is deleted next time).
async fn delete_pending_key(ctx: &Context, ns: &str, name: &str) {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match ctx
        .leadership
        .bounded(async { Ok(api.delete(name, &Default::default()).await?) })
        .await
    {
        Ok(_) => {}
        Err(ferrite_kit::Error::Kube(e)) if ferrite_kit::error::is_not_found(&e) => {}
        Err(e) => {
            tracing::warn!(secret = %name, error = %e, "could not delete the pending private key Secret")
        }
    }
}

/// The key of the issuance in progress: kept in a managed Secret (named in the status) so a
/// restarted controller finalizes the same order with the same key.
async fn pending_key(run: &mut CertRun<'_>, d: &Desired) -> Result<PrivateKey, IssueError> {
    let ctx = run.ctx;
    let name = run
        .old
        .next_private_key_secret_name
        .clone()
        .unwrap_or_else(|| pending_key_name(&run.name));
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &run.ns);
    let existing = api.get_opt(&name).await?;
    if existing.as_ref().is_some_and(|s| !is_managed(s)) {
        return Err(IssueError::Issuer(format!(
            "Secret {}/{name} (for the pending private key) exists and was not written by ferrite-certs; delete or rename it",
            run.ns
        )));
    }
    if let Some(s) = existing
        && let Some(k) = secret_bytes(&s, secret_keys::TLS_KEY).and_then(|k| PrivateKey::from_pem(k).ok())
        && k.matches_spec(&d.key)
    {
        run.status.next_private_key_secret_name = Some(name);
        return Ok(k);
    }
    let spec = d.key;
    let key = tokio::task::spawn_blocking(move || PrivateKey::generate(&spec))
        .await
        .map_err(|e| IssueError::Issuer(format!("key generation task: {e}")))??;
    let pem = key.to_pem(pki::KeyEncoding::Pkcs8)?;
    // Owned by the Certificate: deleted mid-order, its pending key goes with it (garbage collector).
    let owner = run.cert.controller_owner_ref(&());
    let body = serde_json::json!({
        "metadata": {
            "namespace": run.ns,
            "labels": {MANAGED_LABEL: "true"},
            "annotations": {secret_annotations::CERTIFICATE_NAME: run.name},
            "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
        },
        "type": "Opaque",
        "data": {secret_keys::TLS_KEY: base64::engine::general_purpose::STANDARD.encode(pem.as_bytes())},
    });
    ferrite_kit::status::apply(&api, &name, FIELD_MANAGER, body, &ctx.leadership)
        .await
        .map_err(|e| match e {
            ferrite_kit::Error::Kube(k) => IssueError::Kube(k),
            other => IssueError::Issuer(other.to_string()),
        })?;
    run.status.next_private_key_secret_name = Some(name);
    Ok(key)
}

/// True when resuming a recorded order failed for a reason that says nothing about the order
/// (the CA unreachable or rate limiting, `badNonce`): the order may well still be there.
fn resume_error_is_transient(e: &acme::AcmeError) -> bool {
    match e {
        acme::AcmeError::Unreachable(_) | acme::AcmeError::RateLimited { .. } => true,
        acme::AcmeError::Rejected(m) => m.starts_with("badNonce"),
        _ => false,
    }
}

/// Issues through an ACME issuer: one order at a time per Certificate, recorded in its status
/// (URL, server, spec hash) before it is driven, so a restart resumes it.
async fn acme_sign(
    run: &mut CertRun<'_>,
    d: &Desired,
    issuer: &ResolvedIssuer,
    reuse: Option<PrivateKey>,
    reason: &IssuanceReason,
    replaces: Option<String>,
) -> Result<(SignedCertificate, PrivateKey), IssueError> {
    let ctx = run.ctx;
    let Some(solver) = ctx.solver.clone() else {
        return Err(IssueError::Issuer(NO_SOLVER.into()));
    };
    let Some(acme) = issuer.config.acme.as_ref() else {
        return Err(IssueError::Issuer("the issuer has no acme configuration".into()));
    };
    let key_id = issuer_key(issuer.kind, &issuer.namespace, &issuer.name);
    let account = match acme_account(ctx, &key_id, acme, &issuer.namespace).await {
        Ok(Ok((a, _))) => a,
        Ok(Err(msg)) => return Err(IssueError::Issuer(msg)),
        Err(Error::Kube(e)) => return Err(IssueError::Issuer(e.to_string())),
    };
    let key = match reuse {
        Some(k) => k,
        None => pending_key(run, d).await?,
    };
    let hash = order_hash(d, issuer, &acme.server);
    let previous = run
        .old
        .order
        .clone()
        .filter(|o| o.spec_hash == hash && o.server == acme.server);
    let mut resumed = None;
    if let Some(o) = &previous {
        match account.resume_order(&o.url).await {
            Ok(mut order) => {
                if order.state() == acme::OrderState::Invalid {
                    tracing::info!(order = %o.url, "the recorded order is invalid; placing a new one");
                } else {
                    resumed = Some(order);
                }
            }
            // The CA could not be asked (unreachable, rate limited, a nonce refused past
            // instant-acme's retries): try again later rather than place a second order for the
            // same request, which a new leader resuming its predecessor's orders must not do.
            Err(e) if resume_error_is_transient(&e) => return Err(e.into()),
            Err(e) => {
                tracing::info!(order = %o.url, error = %e.message(), "the recorded order cannot be resumed; placing a new one")
            }
        }
    }
    let created = match (&resumed, &previous) {
        (Some(_), Some(o)) => o.created.clone(),
        _ => Some(Time(run.now)),
    };
    let mut order = match resumed {
        Some(o) => o,
        None => {
            account
                .new_order(&acme::OrderRequest {
                    dns_names: d.names.dns_names.clone(),
                    ip_addresses: d.names.ip_addresses.clone(),
                    profile: acme.profile.clone(),
                    replaces,
                })
                .await?
        }
    };
    run.status.order = Some(ferrite_api::certs::OrderStatus {
        url: order.url().to_string(),
        server: acme.server.clone(),
        spec_hash: hash,
        state: Some(order.state().as_str().to_string()),
        created,
    });
    run.set(
        cond::ISSUING,
        Status::True,
        reason.reason(),
        bounded(&reason.to_string()),
    );
    let labels = (issuer.name.clone(), issuer.kind.as_str().to_string());
    if !run
        .write(&labels)
        .await
        .map_err(|Error::Kube(e)| IssueError::Issuer(e.to_string()))?
    {
        return Err(IssueError::Conflict);
    }
    let csr = pki::csr_der(&key, &d.names)?;
    let job = OrderJob {
        order: &mut order,
        certificate: run.cert,
        issuer: ferrite_api::certs::IssuerRef {
            name: issuer.name.clone(),
            kind: issuer.kind,
            group: None,
        },
        acme,
        issuer_namespace: &issuer.namespace,
        csr_der: &csr,
        options: acme::DriveOptions {
            self_check: acme::SelfCheck {
                enabled: !acme.skip_self_check,
                timeout: ctx.args.self_check_timeout,
                http_port: ctx.args.self_check_http_port,
                http_address: ctx.args.self_check_http_address,
                nameservers: ctx.args.self_check_nameservers.clone(),
                recursive_only: ctx.args.dns01_recursive_nameservers_only,
                authoritative_port: ctx.args.self_check_authoritative_port,
                ..Default::default()
            },
            poll_timeout: ctx.args.acme_poll_timeout,
            ..Default::default()
        },
    };
    let chain = match solver.drive(job).await {
        Ok(c) => c,
        Err(e) => {
            // A failed order is not resumed; one interrupted by an unreachable CA is.
            if !e.is_transient() {
                run.status.order = None;
            }
            return Err(e.into());
        }
    };
    let ders = pki::split_pem_chain(chain.as_bytes(), "the ACME certificate")?;
    let info = pki::parse_certificate_der(&ders[0], "the ACME certificate")?;
    if !pki::key_matches(&info, &key) {
        run.status.order = None;
        return Err(IssueError::Issuer(
            "the CA returned a certificate for another key".into(),
        ));
    }
    Ok((
        SignedCertificate {
            certificate_pem: chain,
            ca_pem: String::new(),
            info,
        },
        key,
    ))
}

// ---------------------------------------------------------------------------------------------
// Wiring

fn refs_for_secret(
    s: &Secret,
    issuers: &Store<Issuer>,
    cluster_issuers: &Store<ClusterIssuer>,
    cluster_ns: &str,
) -> (Vec<ObjectRef<Issuer>>, Vec<ObjectRef<ClusterIssuer>>) {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let refers = |c: &IssuerConfig| {
        c.ca.as_ref().is_some_and(|ca| ca.secret_name == name)
            || c.acme
                .as_ref()
                .is_some_and(|a| a.private_key_secret_ref.name == name)
    };
    let is = issuers
        .state()
        .into_iter()
        .filter(|i| i.namespace().as_deref() == Some(ns.as_str()) && refers(&i.spec.config))
        .map(|i| ObjectRef::from_obj(&*i))
        .collect();
    let cis = if ns == cluster_ns {
        cluster_issuers
            .state()
            .into_iter()
            .filter(|i| refers(&i.spec.config))
            .map(|i| ObjectRef::from_obj(&*i))
            .collect()
    } else {
        Vec::new()
    };
    (is, cis)
}

fn certs_for_issuer(
    certs: &Store<Certificate>,
    kind: IssuerKind,
    ns: Option<&str>,
    name: &str,
) -> Vec<ObjectRef<Certificate>> {
    certs
        .state()
        .into_iter()
        .filter(|c| {
            c.spec.issuer_ref.kind == kind
                && c.spec.issuer_ref.name == name
                && (kind == IssuerKind::ClusterIssuer || c.namespace().as_deref() == ns)
        })
        .map(|c| ObjectRef::from_obj(&*c))
        .collect()
}

fn boxed<T: Send + 'static>(
    s: impl Stream<Item = T> + Send + 'static,
) -> futures::stream::BoxStream<'static, T> {
    s.boxed()
}

/// Runs the controller until shutdown, without ACME challenge solvers (see [`run_with`]).
pub async fn run(app: App, args: ControllerArgs) -> anyhow::Result<()> {
    run_with(app, args, None).await
}

/// Runs the controller until shutdown; `solver` solves the challenges of ACME orders.
pub async fn run_with(
    app: App,
    args: ControllerArgs,
    solver: Option<Arc<dyn OrderDriver>>,
) -> anyhow::Result<()> {
    let client = app.client.clone();
    ferrite_kit::client::require_crd::<Certificate>(&client).await?;
    ferrite_kit::client::require_crd::<Issuer>(&client).await?;
    ferrite_kit::client::require_crd::<ClusterIssuer>(&client).await?;
    let metrics = Metrics::register(&app.registry)?;
    let cluster_ns = args.cluster_namespace();

    let certs: SharedWatch<Certificate> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    let issuers: SharedWatch<Issuer> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    let cluster_issuers: SharedWatch<ClusterIssuer> =
        app.watches
            .shared(Api::all(client.clone()), watcher::Config::default(), Trim::all());
    // Only the Secrets ferrite-certs wrote: a label-selected list and watch, cached without their
    // certificate and key bytes (see summarize_secret).
    let secrets: SharedWatch<Secret> = app.watches.shared_transformed(
        Api::all(client.clone()),
        watcher::Config::default().labels(&format!("{MANAGED_LABEL}=true")),
        Trim::all(),
        Transform::new("ferrite-certs secret summary", summarize_secret),
    );
    app.readiness
        .gate("watch secrets")
        .open_when_synced(secrets.store());
    app.readiness
        .gate("watch issuers")
        .open_when_synced(issuers.store());
    app.readiness
        .gate("watch clusterissuers")
        .open_when_synced(cluster_issuers.store());

    let ctx = Arc::new(Context {
        client: client.clone(),
        events: app.events(REPORTER),
        leadership: app.leadership.clone(),
        metrics: metrics.clone(),
        args: args.clone(),
        cluster_ns: cluster_ns.clone(),
        certificates: certs.store(),
        issuers: issuers.store(),
        cluster_issuers: cluster_issuers.store(),
        secrets: secrets.store(),
        accounts: Mutex::default(),
        solver,
        ari: Mutex::default(),
    });

    // Deleted Certificates: their metric series and ARI answers go.
    {
        let mut sub = certs.subscribe();
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(change) = sub.next_change().await {
                if let Change::Deleted(c) = change {
                    let key = (c.namespace().unwrap_or_default(), c.name_any());
                    ctx.metrics.forget(&key.0, &key.1);
                    ctx.ari.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                }
            }
        });
    }

    // Certificates are reconciled on their own changes, on changes of their managed Secret, and on
    // changes of the issuer they name.
    let cert_triggers = {
        let store = ctx.certificates.clone();
        let from_secrets = secrets.subscribe().filter_map(move |c| {
            let s = c.object();
            let r = secret_owner(s).map(|owner| {
                ObjectRef::<Certificate>::new(&owner).within(&s.namespace().unwrap_or_default())
            });
            // A Secret of a Certificate that is gone (or not yet seen) triggers nothing.
            let r = r.filter(|r| store.get(r).is_some());
            async move { r }
        });
        let store = ctx.certificates.clone();
        let from_issuers = issuers.subscribe().flat_map(move |c| {
            let i = c.object();
            stream::iter(certs_for_issuer(
                &store,
                IssuerKind::Issuer,
                i.namespace().as_deref(),
                &i.name_any(),
            ))
        });
        let store = ctx.certificates.clone();
        let from_cluster = cluster_issuers.subscribe().flat_map(move |c| {
            stream::iter(certs_for_issuer(
                &store,
                IssuerKind::ClusterIssuer,
                None,
                &c.object().name_any(),
            ))
        });
        stream::select_all([boxed(from_secrets), boxed(from_issuers), boxed(from_cluster)])
    };
    let (issuer_triggers, cluster_triggers) = {
        let (i, ci, ns) = (
            ctx.issuers.clone(),
            ctx.cluster_issuers.clone(),
            cluster_ns.clone(),
        );
        let a = secrets
            .subscribe()
            .flat_map(move |c| stream::iter(refs_for_secret(c.object(), &i, &ci, &ns).0));
        let (i, ci, ns) = (
            ctx.issuers.clone(),
            ctx.cluster_issuers.clone(),
            cluster_ns.clone(),
        );
        let b = secrets
            .subscribe()
            .flat_map(move |c| stream::iter(refs_for_secret(c.object(), &i, &ci, &ns).1));
        (a, b)
    };

    let opts = app.run_options();
    tracing::info!(cluster_resource_namespace = %cluster_ns, "certificates controller starting");
    let issuer_runner = tokio::spawn(ferrite_kit::runner::run(
        issuers.controller().reconcile_on(issuer_triggers),
        ctx.clone(),
        reconcile_issuer,
        opts.clone(),
    ));
    let cluster_runner = tokio::spawn(ferrite_kit::runner::run(
        cluster_issuers.controller().reconcile_on(cluster_triggers),
        ctx.clone(),
        reconcile_cluster_issuer,
        opts.clone(),
    ));
    // Certificates wait for the Secrets and issuers to be listed, so the first pass does not
    // re-issue what already exists.
    ferrite_kit::admin::wait_synced(&ctx.secrets).await;
    ferrite_kit::admin::wait_synced(&ctx.issuers).await;
    ferrite_kit::admin::wait_synced(&ctx.cluster_issuers).await;
    ferrite_kit::runner::run(
        certs
            .controller()
            .with_config(controller::Config::default().concurrency(CERTIFICATE_RECONCILES))
            .reconcile_on(cert_triggers),
        ctx.clone(),
        reconcile_certificate,
        opts,
    )
    .await;
    let _ = issuer_runner.await;
    let _ = cluster_runner.await;
    app.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> ferrite_api::certs::CertificateSpec {
        serde_json::from_value(v).expect("spec parses")
    }

    #[test]
    fn bad_specs_name_their_field() {
        let base = json!({"secretName": "s", "issuerRef": {"name": "i"}});
        let cases: [(&str, serde_json::Value, &str); 6] = [
            ("no names", json!({}), "at least one of spec.dnsNames"),
            (
                "bad ip",
                json!({"ipAddresses": ["10.0.0.300"]}),
                "spec.ipAddresses",
            ),
            (
                "duration < renewBefore",
                json!({"dnsNames": ["a.test"], "duration": "1h", "renewBefore": "2h"}),
                "must be greater than renewBefore",
            ),
            (
                "rsa size",
                json!({"dnsNames": ["a.test"], "privateKey": {"algorithm": "RSA", "size": 1024}}),
                "spec.privateKey",
            ),
            (
                "foreign group",
                json!({"dnsNames": ["a.test"], "issuerRef": {"name": "i", "group": "example.com"}}),
                "spec.issuerRef.group",
            ),
            ("empty dns name", json!({"dnsNames": [" "]}), "spec.dnsNames"),
        ];
        for (what, extra, want) in cases {
            let mut v = base.clone();
            for (k, val) in extra.as_object().expect("object") {
                v[k] = val.clone();
            }
            let err = desired(&spec(v)).expect_err(what);
            assert!(err.contains(want), "{what}: {err}");
        }
    }

    #[test]
    fn defaults_follow_cert_manager() {
        let d = desired(&spec(json!({"secretName": "s", "issuerRef": {"name": "i"}, "dnsNames": ["a.test"], "ipAddresses": ["192.0.2.1"]})))
            .expect("valid");
        assert_eq!(d.key.algorithm, pki::KeyAlgorithm::Rsa);
        assert_eq!(d.rotation, renewal::RotationPolicy::Always);
        assert_eq!(d.renewal.duration, renewal::DEFAULT_DURATION);
        assert_eq!(
            d.names.ip_addresses,
            vec!["192.0.2.1".parse::<IpAddr>().expect("ip")]
        );
    }

    #[test]
    fn only_a_failure_that_says_nothing_about_the_order_keeps_it() {
        use acme::AcmeError as E;
        assert!(resume_error_is_transient(&E::Unreachable(
            "connection refused".into()
        )));
        assert!(resume_error_is_transient(&E::RateLimited {
            retry_after: None,
            message: "rateLimited: slow down".into()
        }));
        assert!(resume_error_is_transient(&E::Rejected(
            "badNonce: JWS has an invalid anti-replay nonce".into()
        )));
        assert!(!resume_error_is_transient(&E::Rejected(
            "malformed: order not found".into()
        )));
        assert!(!resume_error_is_transient(&E::Unauthorized(
            "unauthorized: not your order".into()
        )));
        assert!(!resume_error_is_transient(&E::OrderInvalid("expired".into())));
    }

    #[test]
    fn an_order_is_resumed_only_for_the_same_request() {
        let d = |v: serde_json::Value| {
            let mut base = json!({"secretName": "s", "issuerRef": {"name": "i"}});
            for (k, val) in v.as_object().expect("object") {
                base[k] = val.clone();
            }
            desired(&spec(base)).expect("valid")
        };
        let issuer = ResolvedIssuer {
            kind: IssuerKind::ClusterIssuer,
            name: "le".into(),
            namespace: "ferrite-system".into(),
            config: IssuerConfig::default(),
        };
        let server = "https://acme.test/dir";
        let a = order_hash(&d(json!({"dnsNames": ["a.test", "B.test"]})), &issuer, server);
        // Same names in another order and case, another key encoding or duration: same order.
        for same in [
            json!({"dnsNames": ["b.test", "a.test"]}),
            json!({"dnsNames": ["a.test", "b.test"], "privateKey": {"encoding": "PKCS8"}}),
            json!({"dnsNames": ["a.test", "b.test"], "duration": "48h"}),
        ] {
            assert_eq!(order_hash(&d(same.clone()), &issuer, server), a, "{same}");
        }
        // Another name, key type, server or issuer: a new order.
        for other in [
            json!({"dnsNames": ["a.test"]}),
            json!({"dnsNames": ["a.test", "b.test"], "privateKey": {"algorithm": "ECDSA"}}),
            json!({"dnsNames": ["a.test", "b.test"], "ipAddresses": ["192.0.2.1"]}),
        ] {
            assert_ne!(order_hash(&d(other.clone()), &issuer, server), a, "{other}");
        }
        let same = d(json!({"dnsNames": ["a.test", "b.test"]}));
        assert_ne!(order_hash(&same, &issuer, "https://other.test/dir"), a);
        let mut other_issuer = issuer.clone();
        other_issuer.name = "zerossl".into();
        assert_ne!(order_hash(&same, &other_issuer, server), a);

        assert_eq!(pending_key_name("web"), "web-next-key");
        assert_eq!(pending_key_name(&"x".repeat(253)).len(), 253);
    }

    #[test]
    fn label_values() {
        assert!(label_value_ok("web-tls"));
        assert!(!label_value_ok(&"a".repeat(64)));
        assert!(!label_value_ok("-x"));
        assert!(!label_value_ok(""));
    }

    #[test]
    fn issued_secret_is_what_the_controller_reads_back() {
        let cert: Certificate = serde_json::from_value(json!({
            "apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"secretName": "web-tls", "issuerRef": {"name": "ss"}, "dnsNames": ["web.test"],
                     "duration": "2h", "privateKey": {"algorithm": "ECDSA"},
                     "secretTemplate": {"labels": {"team": "a"}}}
        }))
        .expect("certificate");
        let d = desired(&cert.spec).expect("valid");
        let key = PrivateKey::generate(&d.key).expect("key");
        let now = Timestamp::now();
        let signed = pki::self_signed(
            &key,
            &pki::CertificateSpec {
                names: d.names.clone(),
                duration: d.renewal.duration,
                is_ca: false,
            },
            now,
        )
        .expect("signed");
        let issuer = ResolvedIssuer {
            kind: IssuerKind::Issuer,
            name: "ss".into(),
            namespace: "ns".into(),
            config: serde_json::from_value(json!({"selfSigned": {}})).expect("config"),
        };
        let body = secret_body(&cert, &issuer, &signed, &key.to_pem(d.key.encoding).expect("pem"));
        let mut body = body;
        body["metadata"]["name"] = "web-tls".into();
        let secret: Secret = serde_json::from_value(body).expect("secret");
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(secret.labels().get("team").map(String::as_str), Some("a"));
        assert_eq!(secret_owner(&secret).as_deref(), Some("web"));
        let o = observe_secret(Some(&secret));
        assert!(o.managed);
        let want = renewal::IssuerRef {
            name: "ss".into(),
            kind: "Issuer".into(),
        };
        assert_eq!(
            decide("web", &d, &want, &o, now),
            None,
            "fresh Secret needs nothing"
        );
        let other = renewal::IssuerRef {
            name: "other".into(),
            kind: "Issuer".into(),
        };
        assert_eq!(
            decide("web", &d, &other, &o, now).map(|r| r.reason()),
            Some("IncorrectIssuer")
        );
        let later = now
            .checked_add(jiff::SignedDuration::from_hours(2))
            .expect("time");
        assert_eq!(
            decide("web", &d, &want, &o, later).map(|r| r.reason()),
            Some("Expired")
        );
        assert_eq!(
            decide("web", &d, &want, &observe_secret(None), now).map(|r| r.reason()),
            Some("DoesNotExist")
        );
    }

    fn status(not_after: Option<i64>, renewal: Option<i64>, ready: Option<&str>) -> CertificateStatus {
        let t = |s: i64| Time(Timestamp::from_second(s).expect("t"));
        let mut st = CertificateStatus {
            not_after: not_after.map(t),
            renewal_time: renewal.map(t),
            ..Default::default()
        };
        if let Some(r) = ready {
            st.conditions = serde_json::from_value(json!([{"type": "Ready", "status": r, "reason": "X",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]))
            .expect("conditions");
        }
        st
    }

    fn exposition(r: &Registry) -> String {
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out).expect("encodes");
        String::from_utf8(out).expect("utf-8")
    }

    /// The per-Certificate gauges give exactly what GaugeVecs with the same names, labels and
    /// values give (what the metrics were before they were kept compactly).
    #[test]
    fn certificate_gauges_expose_what_gauge_vecs_did() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).expect("registered");
        let reference = Registry::new();
        let labels = &["namespace", "name", "issuer_name", "issuer_kind"];
        let g = |n: &str, h: &str, l: &[&str]| {
            let v = prometheus::GaugeVec::new(Opts::new(n, h), l).expect("vec");
            reference.register(Box::new(v.clone())).expect("reg");
            v
        };
        let exp = g(
            "ferrite_certs_certificate_expiration_timestamp_seconds",
            "notAfter of the certificate in a Certificate's Secret (Unix time).",
            labels,
        );
        let ren = g(
            "ferrite_certs_certificate_renewal_timestamp_seconds",
            "When a Certificate will be renewed (Unix time).",
            labels,
        );
        let rdy = g(
            "ferrite_certs_certificate_ready_status",
            "1 for the Ready condition's current status of a Certificate (True, False, Unknown), else 0.",
            &["namespace", "name", "condition"],
        );
        let ready = |ns: &str, n: &str, cur: &str| {
            for s in READY_STATES {
                rdy.with_label_values(&[ns, n, s])
                    .set(if s == cur { 1.0 } else { 0.0 });
            }
        };
        // Nothing observed: no per-Certificate family at all, as with empty vecs.
        assert!(!exposition(&registry).contains("ferrite_certs_certificate_"));
        let ca = ("ca".to_string(), "Issuer".to_string());
        m.observe(
            "a",
            "web",
            &ca,
            &status(Some(2_000_000_000), Some(1_900_000_000), Some("True")),
        );
        m.observe("b", "api", &ca, &status(None, None, Some("False")));
        m.observe("a", "new", &ca, &status(None, None, None));
        exp.with_label_values(&["a", "web", "ca", "Issuer"]).set(2e9);
        ren.with_label_values(&["a", "web", "ca", "Issuer"]).set(1.9e9);
        ready("a", "web", "True");
        ready("b", "api", "False");
        ready("a", "new", "Unknown");
        let only_certs = |t: String| {
            t.lines()
                .filter(|l| l.contains("ferrite_certs_certificate_"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            only_certs(exposition(&registry)),
            only_certs(exposition(&reference))
        );
        // Another issuer: the series under the old issuer labels go; deleted: all go.
        let other = ("other".to_string(), "ClusterIssuer".to_string());
        m.observe(
            "a",
            "web",
            &other,
            &status(Some(2_000_000_001), Some(1_900_000_001), Some("True")),
        );
        m.forget("b", "api");
        exp.remove_label_values(&["a", "web", "ca", "Issuer"])
            .expect("was there");
        ren.remove_label_values(&["a", "web", "ca", "Issuer"])
            .expect("was there");
        exp.with_label_values(&["a", "web", "other", "ClusterIssuer"])
            .set(2_000_000_001.0);
        ren.with_label_values(&["a", "web", "other", "ClusterIssuer"])
            .set(1_900_000_001.0);
        for s in READY_STATES {
            rdy.remove_label_values(&["b", "api", s]).expect("was there");
        }
        let text = exposition(&registry);
        assert_eq!(only_certs(text.clone()), only_certs(exposition(&reference)));
        assert!(text.contains("ferrite_certs_certificate_expiration_timestamp_seconds{issuer_kind=\"ClusterIssuer\",issuer_name=\"other\",name=\"web\",namespace=\"a\"} 2000000001"), "{text}");
        assert!(!text.contains("name=\"api\""), "{text}");
    }

    /// A managed Secret as issue() writes it, for `dns` with `key`, plus `extra` PEM after the leaf.
    fn tls_secret(dns: &str, key: &PrivateKey, extra: &str, now: Timestamp) -> Secret {
        let cert: Certificate = serde_json::from_value(json!({
            "apiVersion": "certs.ferrite.dev/v1alpha1", "kind": "Certificate",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"secretName": "web-tls", "issuerRef": {"name": "ss"}, "dnsNames": [dns],
                     "duration": "2h"}
        }))
        .expect("certificate");
        let d = desired(&cert.spec).expect("valid");
        let mut signed = pki::self_signed(
            key,
            &pki::CertificateSpec {
                names: d.names.clone(),
                duration: d.renewal.duration,
                is_ca: false,
            },
            now,
        )
        .expect("signed");
        signed.certificate_pem.push_str(extra);
        signed.ca_pem = extra.to_string();
        let issuer = ResolvedIssuer {
            kind: IssuerKind::Issuer,
            name: "ss".into(),
            namespace: "ns".into(),
            config: serde_json::from_value(json!({"selfSigned": {}})).expect("config"),
        };
        let mut body = secret_body(
            &cert,
            &issuer,
            &signed,
            &key.to_pem(pki::KeyEncoding::Pkcs8).expect("pem"),
        );
        body["metadata"]["name"] = "web-tls".into();
        serde_json::from_value(body).expect("secret")
    }

    #[test]
    fn the_cached_summary_decides_like_the_whole_secret() {
        let now = Timestamp::now();
        let ec = |size| {
            PrivateKey::generate(&KeySpec {
                algorithm: pki::KeyAlgorithm::Ecdsa,
                size,
                encoding: pki::KeyEncoding::Pkcs8,
            })
            .expect("key")
        };
        let (k256, k384) = (ec(Some(256)), ec(Some(384)));
        let ed = PrivateKey::generate(&KeySpec {
            algorithm: pki::KeyAlgorithm::Ed25519,
            size: None,
            encoding: pki::KeyEncoding::Pkcs8,
        })
        .expect("key");
        let other = tls_secret("other.test", &k384, "", now);
        let other_pem = String::from_utf8(secret_bytes(&other, secret_keys::TLS_CRT).expect("crt").to_vec())
            .expect("pem");
        let good = tls_secret("web.test", &k256, &other_pem, now);
        let mut cases = vec![
            ("chain and ca.crt", good.clone(), true),
            ("P-384", tls_secret("web.test", &k384, "", now), true),
            ("Ed25519", tls_secret("web.test", &ed, "", now), true),
            ("other names", tls_secret("old.test", &k256, "", now), true),
        ];
        let mut edited = good.clone();
        edited.data.as_mut().expect("data").insert(
            secret_keys::TLS_KEY.into(),
            k8s_openapi::ByteString(k384.to_pem(pki::KeyEncoding::Pkcs8).expect("pem").into_bytes()),
        );
        cases.push(("key of another certificate", edited, false));
        let mut no_key = good.clone();
        no_key.data.as_mut().expect("data").remove(secret_keys::TLS_KEY);
        cases.push(("no tls.key", no_key, false));
        let mut garbage = good.clone();
        garbage.data.as_mut().expect("data").insert(
            secret_keys::TLS_CRT.into(),
            k8s_openapi::ByteString(b"not a certificate".to_vec()),
        );
        cases.push(("tls.crt edited to garbage", garbage, false));

        let issuers = [
            renewal::IssuerRef {
                name: "ss".into(),
                kind: "Issuer".into(),
            },
            renewal::IssuerRef {
                name: "ss".into(),
                kind: "ClusterIssuer".into(),
            },
        ];
        let specs = [
            json!({"algorithm": "ECDSA"}),
            json!({"algorithm": "ECDSA", "size": 384}),
            json!({"algorithm": "Ed25519"}),
            json!({"algorithm": "RSA"}),
        ];
        let times = [
            now,
            now.checked_add(jiff::SignedDuration::from_mins(90)).expect("t"),
            now.checked_add(jiff::SignedDuration::from_hours(3)).expect("t"),
        ];
        for (what, whole, summarizes) in cases {
            let mut cached = whole.clone();
            summarize_secret(&mut cached);
            let data = cached.data.as_ref().expect("data");
            if summarizes {
                assert!(summarized(&cached).is_some(), "{what}");
                assert_eq!(
                    data.keys().map(String::as_str).collect::<Vec<_>>(),
                    vec![SUMMARY_KEY, SUMMARY_LEAF],
                    "{what}: no certificate or key bytes but the leaf"
                );
                let kept: usize = data.values().map(|v| v.0.len()).sum();
                let was: usize = whole
                    .data
                    .as_ref()
                    .expect("data")
                    .values()
                    .map(|v| v.0.len())
                    .sum();
                assert!(kept < was, "{what}: {kept} of {was} bytes kept");
                if what == "chain and ca.crt" {
                    assert!(kept * 3 < was, "{what}: {kept} of {was} bytes kept");
                }
            } else {
                assert_eq!(cached, whole, "{what}: cached whole");
            }
            assert_eq!(cached.metadata.annotations, whole.metadata.annotations, "{what}");
            assert_eq!(cached.metadata.labels, whole.metadata.labels, "{what}");
            let (o_cached, o_whole) = (observe_secret(Some(&cached)), observe_secret(Some(&whole)));
            assert_eq!(o_cached.managed, o_whole.managed);
            for pk in &specs {
                let spec = spec(json!({"secretName": "web-tls", "issuerRef": {"name": "ss"},
                                        "dnsNames": ["web.test"], "duration": "2h", "privateKey": pk}));
                let d = desired(&spec).expect("valid");
                for issuer in &issuers {
                    for t in times {
                        let a = decide("web", &d, issuer, &o_cached, t);
                        let b = decide("web", &d, issuer, &o_whole, t);
                        assert_eq!(
                            a.as_ref().map(|r| r.to_string()),
                            b.as_ref().map(|r| r.to_string()),
                            "{what}, {pk}, {issuer:?}, {t}"
                        );
                    }
                }
            }
            // What up_to_date and ARI read: the leaf, the same certificate.
            if let (Some(Ok(a)), Some(Ok(b))) = (&o_cached.parsed, &o_whole.parsed) {
                assert_eq!(a.leaf(), b.leaf(), "{what}");
                assert_eq!(a.key, b.key, "{what}");
            }
        }
        // The decisions above are not all "nothing to do".
        let mut cached = tls_secret("old.test", &k256, "", now);
        summarize_secret(&mut cached);
        let d = desired(&spec(
            json!({"secretName": "web-tls", "issuerRef": {"name": "ss"},
                                      "dnsNames": ["web.test"], "privateKey": {"algorithm": "ECDSA"}}),
        ))
        .expect("valid");
        assert_eq!(
            decide("web", &d, &issuers[0], &observe_secret(Some(&cached)), now).map(|r| r.reason()),
            Some("RequestChanged")
        );
        // A summary that cannot be read back is an invalid certificate (the reconcile reads live).
        cached
            .data
            .as_mut()
            .expect("data")
            .insert(SUMMARY_KEY.into(), k8s_openapi::ByteString(b"DSA 1024".to_vec()));
        assert!(matches!(summarized(&cached), Some(Err(_))));
    }
}
