//! The ACME layer the controller drives (RFC 8555 on instant-acme), with no Kubernetes in it.
//!
//! - [`ClientConfig`]: the directory URL, how the CA's HTTPS is trusted (system roots, an Issuer's
//!   `caBundle`, or `skipTLSVerify`), the User-Agent `ferrite-certs/<version>`, a per-request
//!   timeout and a hook counting requests by endpoint and status.
//! - [`AcmeAccount`]: created once (P-256 key, email contact, terms agreed, optional external
//!   account binding) and kept as bytes in a Secret; loaded from those bytes afterwards.
//! - [`AcmeOrder`]: a new order for DNS names and IP addresses (optional profile and ARI
//!   `replaces`), or an existing order resumed by its URL, so a restarted controller continues the
//!   order it stored instead of placing another. [`AcmeOrder::drive`] solves every pending
//!   authorization through a [`ChallengeSolver`], runs a bounded self-check, tells the CA to
//!   validate, polls (Retry-After respected, total time bounded), finalizes with the caller's CSR
//!   and downloads the full chain.
//! - ARI (RFC 9773): [`certificate_id`] and [`AcmeAccount::renewal_info`], `None` when the CA does
//!   not offer `renewalInfo` (Debian's Pebble 2.4 does not).
//! - [`AcmeError`]: typed, with a condition [`reason`](AcmeError::reason) and a message that never
//!   carries a raw response body: only an RFC 7807 problem's type and detail, bounded to
//!   [`MAX_MESSAGE`] characters with control characters removed, else the HTTP status code.
//!
//! badNonce is retried inside instant-acme (3 attempts per request); what is left after that comes
//! out as [`AcmeError::Rejected`].

/// The DNS-01 self-check at the zone's authoritative servers (zone walk, NS discovery).
pub mod dns_check;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, CertificateIdentifier,
    ChallengeType, ExternalAccountKey, HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, Problem,
    RetryPolicy,
};
use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// The User-Agent of every ACME request.
pub const USER_AGENT: &str = concat!("ferrite-certs/", env!("CARGO_PKG_VERSION"));

/// The longest error message (characters) taken from a CA's problem document.
pub const MAX_MESSAGE: usize = 256;

/// Response bodies larger than this are refused (cert-manager 1.21.1 caps at the same size).
pub const MAX_BODY: usize = 16 << 20;

/// Called once per ACME HTTP request with the endpoint (`directory`, `newNonce`, `newAccount`,
/// `newOrder`, `order`, `authz`, `challenge`, `finalize`, `certificate`, `account`, `renewalInfo`,
/// `revokeCert`, `keyChange`, `other`) and the status (`200`, `429`, ... or `error` when no
/// response came back). The controller exports it as `ferrite_certs_acme_requests_total`.
pub type RequestHook = Arc<dyn Fn(&'static str, &str) + Send + Sync>;

/// Request counts by (endpoint, status), for tests and benchmarks; [`RequestCounts::hook`] plugs it
/// into a [`ClientConfig`].
#[derive(Clone, Default, Debug)]
pub struct RequestCounts(Arc<Mutex<BTreeMap<(String, String), u64>>>);

impl RequestCounts {
    /// A hook that counts into this.
    pub fn hook(&self) -> RequestHook {
        let me = self.clone();
        Arc::new(move |endpoint, status| {
            let mut m = me.0.lock().unwrap_or_else(|e| e.into_inner());
            *m.entry((endpoint.to_string(), status.to_string())).or_default() += 1;
        })
    }

    /// All counts so far.
    pub fn snapshot(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests to `endpoint`, any status.
    pub fn endpoint(&self, endpoint: &str) -> u64 {
        self.snapshot()
            .iter()
            .filter(|((e, _), _)| e == endpoint)
            .map(|(_, n)| n)
            .sum()
    }

    /// All requests.
    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}

/// How to reach the CA.
#[derive(Clone)]
pub struct ClientConfig {
    /// The ACME directory URL (https://…/directory).
    pub directory_url: String,
    /// PEM certificates trusted for the CA's HTTPS instead of the system roots (`caBundle`).
    pub ca_bundle: Option<String>,
    /// Accept any certificate from the CA (`skipTLSVerify`; test CAs only).
    pub skip_tls_verify: bool,
    /// Per HTTP request, connect to response body.
    pub request_timeout: Duration,
    /// Counts requests (see [`RequestHook`]).
    pub on_request: Option<RequestHook>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("directory_url", &self.directory_url)
            .field("ca_bundle", &self.ca_bundle.as_ref().map(|_| ".."))
            .field("skip_tls_verify", &self.skip_tls_verify)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl ClientConfig {
    /// Defaults for `directory_url`: system roots, 30 s per request, no hook.
    pub fn new(directory_url: impl Into<String>) -> Self {
        Self {
            directory_url: directory_url.into(),
            ca_bundle: None,
            skip_tls_verify: false,
            request_timeout: Duration::from_secs(30),
            on_request: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What went wrong, as a condition reason and a message safe to show (Issuer/Certificate
/// conditions, Events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    /// No answer from the CA (connection refused, TLS failure, timeout, 5xx).
    #[error("ACME server unreachable: {0}")]
    Unreachable(String),
    /// 429 / `rateLimited`; `retry_after` from the response's Retry-After header when it had one.
    #[error("rate limited by the ACME server{}: {message}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited {
        /// How long the CA asks to wait.
        retry_after: Option<Duration>,
        /// The problem's type and detail.
        message: String,
    },
    /// The account or its external account binding was refused (`unauthorized`,
    /// `accountDoesNotExist`, `externalAccountRequired`, a bad EAB MAC).
    #[error("ACME account not authorized: {0}")]
    Unauthorized(String),
    /// The CA refused the request (`rejectedIdentifier`, `malformed`, `badCSR`, `caa`, ...).
    #[error("ACME server rejected the request: {0}")]
    Rejected(String),
    /// The order is invalid (a failed authorization, an expired order).
    #[error("ACME order invalid: {0}")]
    OrderInvalid(String),
    /// The CA could not validate a challenge.
    #[error("challenge for {identifier} failed: {message}")]
    ChallengeFailed {
        /// The identifier (e.g. `*.example.com`).
        identifier: String,
        /// The challenge's problem.
        message: String,
    },
    /// Our own check of a presented challenge did not see it in time.
    #[error("self-check for {identifier} failed: {message}")]
    SelfCheckFailed {
        /// The identifier.
        identifier: String,
        /// What was seen instead.
        message: String,
    },
    /// The solver could not present or remove a challenge.
    #[error("challenge solver failed for {identifier}: {message}")]
    SolverFailed {
        /// The identifier.
        identifier: String,
        /// The solver's error.
        message: String,
    },
    /// The order did not reach the next state within the bounded time.
    #[error("timed out waiting for the ACME server: {0}")]
    Timeout(String),
    /// Bad input from us (credentials, CA bundle, names).
    #[error("invalid ACME configuration: {0}")]
    InvalidInput(String),
    /// An answer that does not follow the protocol.
    #[error("unexpected answer from the ACME server: {0}")]
    Protocol(String),
}

impl AcmeError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "AcmeUnreachable",
            Self::RateLimited { .. } => "RateLimited",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Rejected(_) => "Rejected",
            Self::OrderInvalid(_) => "OrderInvalid",
            Self::ChallengeFailed { .. } => "ChallengeFailed",
            Self::SelfCheckFailed { .. } => "SelfCheckFailed",
            Self::SolverFailed { .. } => "SolverFailed",
            Self::Timeout(_) => "Timeout",
            Self::InvalidInput(_) => "InvalidInput",
            Self::Protocol(_) => "ProtocolError",
        }
    }

    /// The message for a condition or Event (bounded; see the module docs).
    pub fn message(&self) -> String {
        bounded(&self.to_string(), 2 * MAX_MESSAGE)
    }

    /// How long the CA asked to wait, for [`AcmeError::RateLimited`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for errors worth retrying soon with the same input (unreachable, rate limited,
    /// timeouts).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::RateLimited { .. } | Self::Timeout(_)
        )
    }
}

/// `s` without control characters, at most `max` characters (an ellipsis marks a cut).
pub fn bounded(s: &str, max: usize) -> String {
    let clean: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let clean = clean.trim();
    if clean.chars().count() <= max {
        return clean.to_string();
    }
    let mut out: String = clean.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A problem document as text: the short type and the detail, bounded; the status code when the
/// document has neither.
pub fn problem_text(p: &Problem) -> String {
    let kind = p
        .r#type
        .as_deref()
        .map(|t| t.strip_prefix("urn:ietf:params:acme:error:").unwrap_or(t));
    let text = match (kind, p.detail.as_deref()) {
        (Some(k), Some(d)) if !d.trim().is_empty() => format!("{k}: {d}"),
        (Some(k), _) => k.to_string(),
        (None, Some(d)) if !d.trim().is_empty() => d.to_string(),
        _ => match p.status {
            Some(s) => format!("HTTP {s}"),
            None => "no details".to_string(),
        },
    };
    let mut text = bounded(&text, MAX_MESSAGE);
    if let Some(first) = p.subproblems.first() {
        let more = match p.subproblems.len() {
            1 => String::new(),
            n => format!(" (+{} more)", n - 1),
        };
        let sub = first.detail.as_deref().or(first.r#type.as_deref()).unwrap_or("");
        let who = first
            .identifier
            .as_ref()
            .map(|i| match i {
                Identifier::Dns(d) => format!("{}: ", bounded(d, 128)),
                Identifier::Ip(ip) => format!("{ip}: "),
                _ => String::new(),
            })
            .unwrap_or_default();
        text = format!(
            "{text}; {}{more}",
            bounded(&format!("{who}{sub}"), MAX_MESSAGE / 2)
        );
    }
    text
}

/// Maps a problem document (and a Retry-After seen with it) to an error.
pub fn problem_error(p: &Problem, retry_after: Option<Duration>) -> AcmeError {
    let kind = p
        .r#type
        .as_deref()
        .and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:"))
        .unwrap_or("");
    let text = problem_text(p);
    let status = p.status.unwrap_or(0);
    match kind {
        "rateLimited" => AcmeError::RateLimited {
            retry_after,
            message: text,
        },
        _ if status == 429 => AcmeError::RateLimited {
            retry_after,
            message: text,
        },
        "unauthorized" | "accountDoesNotExist" | "externalAccountRequired" | "userActionRequired" => {
            AcmeError::Unauthorized(text)
        }
        "serverInternal" => AcmeError::Unreachable(text),
        "" if status >= 500 => AcmeError::Unreachable(text),
        "" if status == 401 || status == 403 => AcmeError::Unauthorized(text),
        _ => AcmeError::Rejected(text),
    }
}

/// A non-2xx answer to the directory GET (which instant-acme would otherwise try to parse).
#[derive(Debug)]
struct DirectoryStatus(StatusCode);

impl fmt::Display for DirectoryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the directory answered HTTP {}", self.0.as_u16())
    }
}
impl std::error::Error for DirectoryStatus {}

/// No response: connect/TLS/timeout/body errors (our own text, never the CA's).
#[derive(Debug)]
struct Transport(String);

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Transport {}

fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        src = s.source();
    }
    bounded(&parts.join(": "), MAX_MESSAGE)
}

impl Shared {
    fn map(&self, e: instant_acme::Error) -> AcmeError {
        use instant_acme::Error as E;
        match e {
            E::Api(p) => {
                let retry = if p.status == Some(429)
                    || p.r#type.as_deref() == Some("urn:ietf:params:acme:error:rateLimited")
                {
                    self.take_retry_after()
                } else {
                    None
                };
                problem_error(&p, retry)
            }
            E::Other(inner) => {
                if let Some(d) = inner.downcast_ref::<DirectoryStatus>() {
                    let p = Problem {
                        r#type: None,
                        detail: None,
                        status: Some(d.0.as_u16()),
                        subproblems: Vec::new(),
                    };
                    let retry = (d.0 == StatusCode::TOO_MANY_REQUESTS)
                        .then(|| self.take_retry_after())
                        .flatten();
                    return match problem_error(&p, retry) {
                        AcmeError::Rejected(m) => AcmeError::Unreachable(format!(
                            "{m} for the directory {}",
                            bounded(&self.directory_url, 128)
                        )),
                        other => other,
                    };
                }
                if inner.downcast_ref::<Transport>().is_some()
                    || inner
                        .downcast_ref::<hyper_util::client::legacy::Error>()
                        .is_some()
                {
                    return AcmeError::Unreachable(chain_text(inner.as_ref()));
                }
                AcmeError::Protocol(chain_text(inner.as_ref()))
            }
            E::Hyper(h) => AcmeError::Unreachable(chain_text(&h)),
            E::Timeout(_) => AcmeError::Timeout("the order did not change state in time".into()),
            E::Json(j) => AcmeError::Protocol(bounded(&format!("not the JSON expected: {j}"), MAX_MESSAGE)),
            E::Unsupported(what) => AcmeError::Rejected(format!("the CA does not support {what}")),
            E::KeyRejected => AcmeError::InvalidInput("the account key is not a P-256 PKCS#8 key".into()),
            E::Crypto => AcmeError::InvalidInput("a cryptographic operation failed".into()),
            E::InvalidUri(u) => AcmeError::InvalidInput(bounded(&format!("invalid URL: {u}"), MAX_MESSAGE)),
            E::Http(h) => AcmeError::InvalidInput(bounded(&format!("invalid request: {h}"), MAX_MESSAGE)),
            E::Str(s) => AcmeError::Protocol(s.to_string()),
            other => AcmeError::Protocol(bounded(&other.to_string(), MAX_MESSAGE)),
        }
    }

    fn take_retry_after(&self) -> Option<Duration> {
        let mut g = self.retry_after.lock().unwrap_or_else(|e| e.into_inner());
        g.take()
            .map(|at| at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP client

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// State shared by the HTTP client instant-acme holds and our own code.
struct Shared {
    directory_url: String,
    /// URL -> endpoint name, learnt from the directory.
    endpoints: Mutex<HashMap<String, &'static str>>,
    /// The Retry-After of the last 429.
    retry_after: Mutex<Option<SystemTime>>,
    hook: Option<RequestHook>,
}

struct AcmeHttp {
    client: HyperClient<Connector, BodyWrapper<Bytes>>,
    user_agent: HeaderValue,
    timeout: Duration,
    shared: Arc<Shared>,
}

const DIRECTORY_KEYS: &[(&str, &str)] = &[
    ("newNonce", "newNonce"),
    ("newAccount", "newAccount"),
    ("newOrder", "newOrder"),
    ("revokeCert", "revokeCert"),
    ("keyChange", "keyChange"),
    ("renewalInfo", "renewalInfo"),
    ("newAuthz", "newAuthz"),
];

impl Shared {
    fn endpoint(&self, url: &str) -> &'static str {
        if url == self.directory_url {
            return "directory";
        }
        {
            let map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(url) {
                return e;
            }
            if let Some((_, e)) = map
                .iter()
                .find(|(u, e)| **e == "renewalInfo" && url.starts_with(u.as_str()))
            {
                return e;
            }
        }
        // Objects the CA created: named by their paths (Pebble: /my-order/, /authZ/, /chalZ/,
        // /finalize-order/, /certZ/, /my-account/; Boulder: /acme/order/, /acme/authz/, ...).
        let path = url
            .split_once("://")
            .map(|(_, rest)| rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
            .unwrap_or(url)
            .to_ascii_lowercase();
        for (needle, name) in [
            ("finalize", "finalize"),
            ("authz", "authz"),
            ("chal", "challenge"),
            ("cert", "certificate"),
            ("order", "order"),
            ("acct", "account"),
            ("account", "account"),
        ] {
            if path.contains(needle) {
                return name;
            }
        }
        "other"
    }

    fn learn_directory(&self, body: &[u8]) {
        let Ok(serde_json::Value::Object(dir)) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let mut map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        for (key, name) in DIRECTORY_KEYS {
            if let Some(serde_json::Value::String(url)) = dir.get(*key) {
                map.insert(url.clone(), name);
            }
        }
    }

    fn renewal_info_url(&self) -> Option<String> {
        let map = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .find(|(_, e)| **e == "renewalInfo")
            .map(|(u, _)| u.clone())
    }

    fn count(&self, endpoint: &'static str, status: &str) {
        if let Some(h) = &self.hook {
            h(endpoint, status);
        }
    }
}

fn retry_after_header(parts: &http::response::Parts) -> Option<SystemTime> {
    let v = parts.headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs.min(7 * 24 * 3600)));
    }
    let ts: jiff::Timestamp = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let secs = ts.as_second();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        mut req: Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        req.headers_mut()
            .insert(header::USER_AGENT, self.user_agent.clone());
        let url = req.uri().to_string();
        let is_get = req.method() == http::Method::GET;
        let shared = self.shared.clone();
        let endpoint = shared.endpoint(&url);
        let timeout = self.timeout;
        let fut = self.client.request(req);
        Box::pin(async move {
            let result = tokio::time::timeout(timeout, async {
                let rsp = fut
                    .await
                    .map_err(|e| instant_acme::Error::Other(Box::new(Transport(chain_text(&e)))))?;
                let (parts, body) = rsp.into_parts();
                let body = http_body_util::Limited::new(body, MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| {
                        instant_acme::Error::Other(Box::new(Transport(format!(
                            "reading the response: {}",
                            bounded(&e.to_string(), MAX_MESSAGE)
                        ))))
                    })?
                    .to_bytes();
                Ok::<_, instant_acme::Error>((parts, body))
            })
            .await;
            let (parts, mut body) = match result {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    shared.count(endpoint, "error");
                    return Err(e);
                }
                Err(_) => {
                    shared.count(endpoint, "error");
                    return Err(instant_acme::Error::Other(Box::new(Transport(format!(
                        "no answer within {timeout:?}"
                    )))));
                }
            };
            let status = parts.status;
            shared.count(endpoint, status.as_str());
            if status == StatusCode::TOO_MANY_REQUESTS {
                *shared.retry_after.lock().unwrap_or_else(|e| e.into_inner()) = retry_after_header(&parts);
            }
            if endpoint == "directory" && is_get {
                if !status.is_success() {
                    return Err(instant_acme::Error::Other(Box::new(DirectoryStatus(status))));
                }
                shared.learn_directory(&body);
            }
            // Only a problem document reaches instant-acme from an error response; any other
            // body (an HTML error page from a proxy, ...) becomes a bare status.
            if status.as_u16() >= 400 {
                let is_json = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.contains("json"));
                if !is_json || serde_json::from_slice::<Problem>(&body).is_err() {
                    body = Bytes::from(format!("{{\"status\":{}}}", status.as_u16()));
                }
            }
            Ok(BytesResponse {
                parts,
                body: Box::new(body),
            })
        })
    }
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(cfg: &ClientConfig) -> Result<rustls::ClientConfig, AcmeError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::InvalidInput(format!("TLS setup: {e}")))?;
    if cfg.skip_tls_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.ca_bundle {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert
                    .map_err(|e| AcmeError::InvalidInput(format!("caBundle is not PEM certificates: {e}")))?;
                roots.add(cert).map_err(|e| {
                    AcmeError::InvalidInput(format!("caBundle has an unusable certificate: {e}"))
                })?;
            }
            if roots.is_empty() {
                return Err(AcmeError::InvalidInput(
                    "caBundle holds no PEM certificate".into(),
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(AcmeError::InvalidInput(
                    "no system CA certificates found (install ca-certificates or set caBundle)".into(),
                ));
            }
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn http_client(cfg: &ClientConfig) -> Result<(Box<dyn HttpClient>, Arc<Shared>), AcmeError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.request_timeout.min(Duration::from_secs(10))));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(cfg)?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let shared = Arc::new(Shared {
        directory_url: cfg.directory_url.clone(),
        endpoints: Mutex::new(HashMap::new()),
        retry_after: Mutex::new(None),
        hook: cfg.on_request.clone(),
    });
    let client = AcmeHttp {
        client: HyperClient::builder(TokioExecutor::new()).build(connector),
        user_agent: HeaderValue::from_static(USER_AGENT),
        timeout: cfg.request_timeout,
        shared: shared.clone(),
    };
    Ok((Box::new(client), shared))
}

// ---------------------------------------------------------------------------------------------
// Account

/// An external account binding (`externalAccountBinding` of an Issuer).
#[derive(Clone)]
pub struct Eab {
    /// The key id the CA gave.
    pub key_id: String,
    /// The HMAC key, base64url (with or without padding), as the CA gave it.
    pub hmac_key_b64url: String,
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// A new account.
#[derive(Debug, Clone, Default)]
pub struct NewAccountRequest {
    /// Contact email (sent as `mailto:`), optional.
    pub email: Option<String>,
    /// External account binding, when the CA requires one.
    pub eab: Option<Eab>,
}

/// An ACME account, ready to order.
#[derive(Clone)]
pub struct AcmeAccount {
    account: Account,
    shared: Arc<Shared>,
}

impl fmt::Debug for AcmeAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeAccount")
            .field("uri", &self.account.id())
            .finish_non_exhaustive()
    }
}

fn decode_b64url(s: &str) -> Result<Vec<u8>, AcmeError> {
    use base64::Engine as _;
    let s = s.trim().trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .map_err(|_| AcmeError::InvalidInput("the EAB HMAC key is not base64url".into()))
}

impl AcmeAccount {
    /// Creates an account (P-256 key, terms of service agreed). Returns the account and its
    /// credentials (JSON with the private key: keep them in a Secret); the account URI is
    /// [`AcmeAccount::uri`].
    pub async fn create(cfg: &ClientConfig, req: &NewAccountRequest) -> Result<(Self, Vec<u8>), AcmeError> {
        let (http, shared) = http_client(cfg)?;
        let contact = req
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains(['\r', '\n', ',']) || !e.contains('@') {
                    Err(AcmeError::InvalidInput(format!(
                        "email {:?} is not an address",
                        bounded(e, 64)
                    )))
                } else {
                    Ok(format!("mailto:{e}"))
                }
            })
            .transpose()?;
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = match &req.eab {
            Some(e) => {
                if e.key_id.trim().is_empty() {
                    return Err(AcmeError::InvalidInput("the EAB key id is empty".into()));
                }
                Some(ExternalAccountKey::new(
                    e.key_id.trim().to_string(),
                    &decode_b64url(&e.hmac_key_b64url)?,
                ))
            }
            None => None,
        };
        let (account, creds) = Account::builder_with_http(http)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                cfg.directory_url.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| shared.map(e))?;
        let bytes = serde_json::to_vec(&creds)
            .map_err(|e| AcmeError::Protocol(format!("serialising credentials: {e}")))?;
        Ok((Self { account, shared }, bytes))
    }

    /// Loads an account from the bytes [`AcmeAccount::create`] returned. Fails with
    /// [`AcmeError::InvalidInput`] when they are not credentials or belong to another directory.
    pub async fn load(cfg: &ClientConfig, credentials: &[u8]) -> Result<Self, AcmeError> {
        let value: serde_json::Value = serde_json::from_slice(credentials).map_err(|_| {
            AcmeError::InvalidInput("the account Secret does not hold ACME credentials".into())
        })?;
        if let Some(dir) = value.get("directory").and_then(|d| d.as_str())
            && dir != cfg.directory_url
        {
            return Err(AcmeError::InvalidInput(format!(
                "the account belongs to {}, not {}",
                bounded(dir, 128),
                bounded(&cfg.directory_url, 128)
            )));
        }
        let creds: AccountCredentials = serde_json::from_value(value).map_err(|_| {
            AcmeError::InvalidInput("the account Secret does not hold ACME credentials".into())
        })?;
        let (http, shared) = http_client(cfg)?;
        let account = Account::builder_with_http(http)
            .from_credentials(creds)
            .await
            .map_err(|e| shared.map(e))?;
        Ok(Self { account, shared })
    }

    /// The account URI (Issuer status).
    pub fn uri(&self) -> &str {
        self.account.id()
    }

    /// Names of the profiles the CA offers (empty when it offers none).
    pub fn profiles(&self) -> Vec<String> {
        self.account.profiles().map(|p| p.name.to_string()).collect()
    }

    /// True when the CA's directory has `renewalInfo` (ARI).
    pub fn supports_ari(&self) -> bool {
        self.shared.renewal_info_url().is_some()
    }

    /// Places a new order. `replaces` is dropped (and [`AcmeOrder::replaces_dropped`] is true)
    /// when the CA has no ARI.
    pub async fn new_order(&self, req: &OrderRequest) -> Result<AcmeOrder, AcmeError> {
        let mut ids: Vec<Identifier> = Vec::new();
        for name in &req.dns_names {
            let n = name.trim().trim_end_matches('.').to_ascii_lowercase();
            if n.is_empty() {
                return Err(AcmeError::InvalidInput("an empty DNS name".into()));
            }
            if !ids.contains(&Identifier::Dns(n.clone())) {
                ids.push(Identifier::Dns(n));
            }
        }
        for ip in &req.ip_addresses {
            if !ids.contains(&Identifier::Ip(*ip)) {
                ids.push(Identifier::Ip(*ip));
            }
        }
        if ids.is_empty() {
            return Err(AcmeError::InvalidInput(
                "an order needs at least one DNS name or IP address".into(),
            ));
        }
        let replaces = match &req.replaces {
            Some(id) if self.supports_ari() => Some(parse_cert_id(id)?),
            _ => None,
        };
        let mut new_order = NewOrder::new(&ids);
        if let Some(p) = req.profile.as_deref() {
            new_order = new_order.profile(p);
        }
        if let Some(r) = replaces.clone() {
            new_order = new_order.replaces(r);
        }
        let order = self
            .account
            .new_order(&new_order)
            .await
            .map_err(|e| self.shared.map(e))?;
        Ok(AcmeOrder {
            order,
            shared: self.shared.clone(),
            account: self.account.clone(),
            replaces_dropped: req.replaces.is_some() && replaces.is_none(),
        })
    }

    /// Resumes an order by its URL ([`AcmeOrder::url`], kept in the Certificate's status).
    pub async fn resume_order(&self, url: &str) -> Result<AcmeOrder, AcmeError> {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(AcmeError::InvalidInput(format!(
                "order URL {:?} is not a URL",
                bounded(url, 128)
            )));
        }
        let order = self
            .account
            .order(url.to_string())
            .await
            .map_err(|e| self.shared.map(e))?;
        Ok(AcmeOrder {
            order,
            shared: self.shared.clone(),
            account: self.account.clone(),
            replaces_dropped: false,
        })
    }

    /// The CA's suggested renewal window for the certificate with this ARI id
    /// ([`certificate_id`]); `Ok(None)` when the CA offers no ARI.
    pub async fn renewal_info(&self, cert_id: &str) -> Result<Option<RenewalWindow>, AcmeError> {
        if !self.supports_ari() {
            return Ok(None);
        }
        let id = parse_cert_id(cert_id)?;
        match self.account.renewal_info(&id).await {
            Ok((info, retry)) => {
                let ts = |t: i128| {
                    jiff::Timestamp::from_nanosecond(t)
                        .map_err(|e| AcmeError::Protocol(format!("renewal window out of range: {e}")))
                };
                let start = ts(info.suggested_window.start.unix_timestamp_nanos())?;
                let end = ts(info.suggested_window.end.unix_timestamp_nanos())?;
                if end < start {
                    return Err(AcmeError::Protocol("renewal window ends before it starts".into()));
                }
                Ok(Some(RenewalWindow {
                    start,
                    end,
                    retry_after: retry,
                    explanation_url: info.explanation_url.map(|u| bounded(&u, MAX_MESSAGE)),
                }))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(self.shared.map(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ARI

/// A suggested renewal window (RFC 9773 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenewalWindow {
    /// Renew after this.
    pub start: jiff::Timestamp,
    /// Renew before this.
    pub end: jiff::Timestamp,
    /// When to ask again (the response's Retry-After).
    pub retry_after: Duration,
    /// The CA's explanation page, if any.
    pub explanation_url: Option<String>,
}

/// The ARI certificate identifier (`base64url(AKI keyIdentifier).base64url(serial)`) of the
/// first certificate in `cert` (PEM or DER).
pub fn certificate_id(cert: &[u8]) -> Result<String, AcmeError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let is_pem = cert
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .is_some_and(|i| cert[i..].starts_with(b"-----BEGIN"));
    let der = if is_pem {
        CertificateDer::pem_slice_iter(cert)
            .next()
            .ok_or_else(|| AcmeError::InvalidInput("no PEM certificate".into()))?
            .map_err(|e| AcmeError::InvalidInput(format!("bad PEM certificate: {e}")))?
    } else {
        CertificateDer::from(cert.to_vec())
    };
    let id = CertificateIdentifier::try_from(&der)
        .map_err(|e| AcmeError::InvalidInput(bounded(&e, MAX_MESSAGE)))?;
    Ok(id.to_string())
}

fn parse_cert_id(id: &str) -> Result<CertificateIdentifier<'static>, AcmeError> {
    let bad = || AcmeError::InvalidInput(format!("{:?} is not an ARI certificate id", bounded(id, 64)));
    let (aki, serial) = id.split_once('.').ok_or_else(bad)?;
    let b64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !b64(aki) || !b64(serial) {
        return Err(bad());
    }
    Ok(CertificateIdentifier {
        authority_key_identifier: Cow::Owned(aki.to_string()),
        serial: Cow::Owned(serial.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// Orders

/// A new order.
#[derive(Debug, Clone, Default)]
pub struct OrderRequest {
    /// DNS names (`*.example.com` for a wildcard).
    pub dns_names: Vec<String>,
    /// IP addresses.
    pub ip_addresses: Vec<IpAddr>,
    /// An ACME profile (`profile` of the Issuer), if the CA offers profiles.
    pub profile: Option<String>,
    /// The ARI id ([`certificate_id`]) of the certificate this order replaces.
    pub replaces: Option<String>,
}

/// An order's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderState {
    /// Authorizations to solve.
    Pending,
    /// Ready to finalize.
    Ready,
    /// Finalized; the CA is issuing.
    Processing,
    /// Issued.
    Valid,
    /// Failed; a new order is needed.
    Invalid,
}

impl OrderState {
    /// As ACME spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        }
    }
}

fn order_state(s: OrderStatus) -> OrderState {
    match s {
        OrderStatus::Pending => OrderState::Pending,
        OrderStatus::Ready => OrderState::Ready,
        OrderStatus::Processing => OrderState::Processing,
        OrderStatus::Valid => OrderState::Valid,
        OrderStatus::Invalid => OrderState::Invalid,
    }
}

/// A challenge type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// `http-01`.
    Http01,
    /// `dns-01`.
    Dns01,
    /// `tls-alpn-01` (listed, not solved by ferrite-certs).
    TlsAlpn01,
    /// Anything else.
    Other(String),
}

impl ChallengeKind {
    /// As ACME spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
            Self::Other(s) => s,
        }
    }

    fn from_acme(t: &ChallengeType) -> Self {
        match t {
            ChallengeType::Http01 => Self::Http01,
            ChallengeType::Dns01 => Self::Dns01,
            ChallengeType::TlsAlpn01 => Self::TlsAlpn01,
            ChallengeType::Unknown(s) => Self::Other(bounded(s, 64)),
            other => Self::Other(bounded(&format!("{other:?}"), 64)),
        }
    }

    fn to_acme(&self) -> ChallengeType {
        match self {
            Self::Http01 => ChallengeType::Http01,
            Self::Dns01 => ChallengeType::Dns01,
            Self::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Self::Other(s) => ChallengeType::Unknown(s.clone()),
        }
    }
}

/// One challenge of an authorization, with what a solver needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeInfo {
    /// Its type.
    pub kind: ChallengeKind,
    /// Its URL.
    pub url: String,
    /// The token (the HTTP-01 path's last segment).
    pub token: String,
    /// The key authorization (the HTTP-01 response body).
    pub key_authorization: String,
    /// The DNS-01 TXT value (base64url SHA-256 of the key authorization).
    pub dns_txt_value: String,
    /// `pending`, `processing`, `valid`, `invalid`.
    pub status: String,
    /// The CA's problem for an invalid challenge (safe text).
    pub error: Option<String>,
}

/// An authorization: one identifier of the order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzInfo {
    /// Its URL.
    pub url: String,
    /// The name without `*.` (or the IP address).
    pub identifier: String,
    /// True for `*.identifier`.
    pub wildcard: bool,
    /// True for an IP identifier.
    pub is_ip: bool,
    /// `pending`, `valid`, `invalid`, `deactivated`, `expired`, `revoked`.
    pub status: String,
    /// Its challenges.
    pub challenges: Vec<ChallengeInfo>,
}

impl AuthzInfo {
    /// The name as the Certificate lists it (`*.example.com` for a wildcard).
    pub fn name(&self) -> String {
        if self.wildcard {
            format!("*.{}", self.identifier)
        } else {
            self.identifier.clone()
        }
    }

    /// The challenge of `kind`, if the CA offered it.
    pub fn challenge(&self, kind: &ChallengeKind) -> Option<&ChallengeInfo> {
        self.challenges.iter().find(|c| &c.kind == kind)
    }
}

/// What a solver presents: one challenge of one authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The authorization.
    pub authz: AuthzInfo,
    /// The chosen challenge.
    pub challenge: ChallengeInfo,
}

impl Presented {
    /// The DNS-01 record name: `_acme-challenge.<identifier>` (no trailing dot).
    pub fn dns_record_name(&self) -> String {
        format!("_acme-challenge.{}", self.authz.identifier)
    }

    /// The HTTP-01 path: `/.well-known/acme-challenge/<token>`.
    pub fn http_path(&self) -> String {
        format!("/.well-known/acme-challenge/{}", self.challenge.token)
    }
}

/// The controller's side of solving: which challenge for an authorization, and how to put the
/// answer where the CA looks (a `Challenge` object, a `DNSRecord`, an RFC2136 update).
pub trait ChallengeSolver: Send + Sync {
    /// The challenge to solve `authz` with (from its [`AuthzInfo::challenges`]); None when no
    /// solver applies (the order then fails with [`AcmeError::SolverFailed`]).
    fn choose(&self, authz: &AuthzInfo) -> Option<ChallengeKind>;
    /// Puts the answer in place.
    fn present(&self, p: &Presented) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Removes it (called for every presented challenge, on success and failure).
    fn cleanup(&self, p: &Presented) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Called when the self-check passed (or was skipped), right before the CA is asked to validate
    /// `p` (a `Challenge`'s `processing`). Default: nothing.
    fn validating(&self, p: &Presented) -> impl Future<Output = ()> + Send {
        let _ = p;
        async {}
    }
}

/// The self-check before asking the CA to validate.
#[derive(Debug, Clone)]
pub struct SelfCheck {
    /// False skips it.
    pub enabled: bool,
    /// How long to keep trying (total).
    pub timeout: Duration,
    /// Between attempts.
    pub interval: Duration,
    /// HTTP-01: the port (80).
    pub http_port: u16,
    /// HTTP-01: connect here instead of resolving the name (the Host header is still the name).
    pub http_address: Option<SocketAddr>,
    /// DNS-01: the recursive resolvers through which the zone's apex, its NS records and their
    /// addresses are found; the TXT record is then asked of those authoritative servers. Empty
    /// skips the DNS check.
    pub nameservers: Vec<SocketAddr>,
    /// DNS-01: ask only `nameservers` for the TXT record, with no authoritative discovery
    /// (cert-manager's `--dns01-recursive-nameservers-only`); one of them holding it is enough.
    pub recursive_only: bool,
    /// DNS-01: the port the discovered authoritative servers are asked on (53; tests whose servers
    /// run on loopback with another port override it).
    pub authoritative_port: u16,
}

impl Default for SelfCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            timeout: Duration::from_secs(60),
            interval: Duration::from_millis(500),
            http_port: 80,
            http_address: None,
            nameservers: Vec::new(),
            recursive_only: false,
            authoritative_port: 53,
        }
    }
}

/// Bounds for [`AcmeOrder::drive`].
#[derive(Debug, Clone)]
pub struct DriveOptions {
    /// The self-check.
    pub self_check: SelfCheck,
    /// Waiting for the order to become ready (after the challenges) and for the certificate
    /// (after finalize), each; Retry-After is followed inside this bound.
    pub poll_timeout: Duration,
    /// The first poll delay (then x1.5 per poll, unless the CA sends Retry-After).
    pub poll_initial_delay: Duration,
}

impl Default for DriveOptions {
    fn default() -> Self {
        Self {
            self_check: SelfCheck::default(),
            poll_timeout: Duration::from_secs(120),
            poll_initial_delay: Duration::from_millis(200),
        }
    }
}

/// An ACME order.
pub struct AcmeOrder {
    order: instant_acme::Order,
    account: Account,
    shared: Arc<Shared>,
    replaces_dropped: bool,
}

impl fmt::Debug for AcmeOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeOrder")
            .field("url", &self.order.url())
            .finish_non_exhaustive()
    }
}

fn authz_status(s: &AuthorizationStatus) -> &'static str {
    match s {
        AuthorizationStatus::Pending => "pending",
        AuthorizationStatus::Valid => "valid",
        AuthorizationStatus::Invalid => "invalid",
        AuthorizationStatus::Revoked => "revoked",
        AuthorizationStatus::Expired => "expired",
        AuthorizationStatus::Deactivated => "deactivated",
    }
}

fn challenge_status(s: &instant_acme::ChallengeStatus) -> &'static str {
    use instant_acme::ChallengeStatus as C;
    match s {
        C::Pending => "pending",
        C::Processing => "processing",
        C::Valid => "valid",
        C::Invalid => "invalid",
    }
}

impl AcmeOrder {
    /// The order URL (keep it in status to resume with [`AcmeAccount::resume_order`]).
    pub fn url(&self) -> &str {
        self.order.url()
    }

    /// The last known state.
    pub fn state(&mut self) -> OrderState {
        order_state(self.order.state().status)
    }

    /// The order's problem, if the CA set one (safe text).
    pub fn error(&mut self) -> Option<String> {
        self.order.state().error.as_ref().map(problem_text)
    }

    /// True when the caller asked for `replaces` but the CA has no ARI, so it was not sent.
    pub fn replaces_dropped(&self) -> bool {
        self.replaces_dropped
    }

    /// The ARI id this order replaces, as the CA echoed it.
    pub fn replaces(&mut self) -> Option<String> {
        self.order.state().replaces.as_ref().map(|r| r.to_string())
    }

    /// Fetches the order's state from the CA.
    pub async fn refresh(&mut self) -> Result<OrderState, AcmeError> {
        let s = self.order.refresh().await.map_err(|e| self.shared.map(e))?;
        Ok(order_state(s.status))
    }

    /// The authorizations, fetched once and then cached (refresh with [`AcmeOrder::refresh`]
    /// and call again to fetch anew).
    pub async fn authorizations(&mut self) -> Result<Vec<AuthzInfo>, AcmeError> {
        let thumb = self.account.key_thumbprint().to_string();
        let mut out = Vec::new();
        let mut authzs = self.order.authorizations();
        while let Some(a) = authzs.next().await {
            let a = a.map_err(|e| self.shared.map(e))?;
            let id = a.identifier();
            let (identifier, is_ip) = match id.identifier {
                Identifier::Dns(d) => (d.clone(), false),
                Identifier::Ip(ip) => (ip.to_string(), true),
                other => (bounded(&format!("{other:?}"), 128), false),
            };
            let challenges = a
                .challenges
                .iter()
                .map(|c| {
                    let key_authorization = format!("{}.{thumb}", c.token);
                    ChallengeInfo {
                        kind: ChallengeKind::from_acme(&c.r#type),
                        url: c.url.clone(),
                        token: c.token.clone(),
                        dns_txt_value: dns_value(&key_authorization),
                        key_authorization,
                        status: challenge_status(&c.status).to_string(),
                        error: c.error.as_ref().map(problem_text),
                    }
                })
                .collect();
            out.push(AuthzInfo {
                url: a.url().to_string(),
                identifier,
                wildcard: id.wildcard,
                is_ip,
                status: authz_status(&a.status).to_string(),
                challenges,
            });
        }
        Ok(out)
    }

    /// Tells the CA that the challenge of `kind` for the authorization at `authz_url` is ready.
    pub async fn set_ready(&mut self, authz_url: &str, kind: &ChallengeKind) -> Result<(), AcmeError> {
        let shared = self.shared.clone();
        let mut authzs = self.order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a.map_err(|e| shared.map(e))?;
            if a.url() != authz_url {
                continue;
            }
            let mut ch = a.challenge(kind.to_acme()).ok_or_else(|| {
                AcmeError::Protocol(format!("the authorization has no {} challenge", kind.as_str()))
            })?;
            return ch.set_ready().await.map_err(|e| shared.map(e));
        }
        Err(AcmeError::Protocol("no such authorization in the order".into()))
    }

    fn retry(opts: &DriveOptions) -> RetryPolicy {
        RetryPolicy::new()
            .initial_delay(opts.poll_initial_delay)
            .backoff(1.5)
            .timeout(opts.poll_timeout)
    }

    /// Why the order is invalid: the first failed challenge, else the order's problem.
    async fn why_invalid(&mut self) -> AcmeError {
        // Authorization states are cached from before validation: fetch them again.
        let url = self.order.url().to_string();
        let fresh = match self.account.order(url).await {
            Ok(o) => o,
            Err(e) => return self.shared.map(e),
        };
        self.order = fresh;
        let order_error = self.error();
        match self.authorizations().await {
            Ok(authzs) => {
                for a in authzs {
                    if a.status == "invalid"
                        && let Some(c) = a.challenges.iter().find(|c| c.status == "invalid")
                    {
                        return AcmeError::ChallengeFailed {
                            identifier: a.name(),
                            message: c.error.clone().unwrap_or_else(|| "invalid".into()),
                        };
                    }
                }
                AcmeError::OrderInvalid(order_error.unwrap_or_else(|| "the order is invalid".into()))
            }
            Err(e) => e,
        }
    }

    /// Waits until the order is ready (or invalid), bounded by `opts.poll_timeout`.
    pub async fn poll_ready(&mut self, opts: &DriveOptions) -> Result<OrderState, AcmeError> {
        match self.order.poll_ready(&Self::retry(opts)).await {
            Ok(s) => Ok(order_state(s)),
            Err(instant_acme::Error::Api(_)) if self.order.state().status == OrderStatus::Invalid => {
                Err(self.why_invalid().await)
            }
            Err(e) => Err(self.shared.map(e)),
        }
    }

    /// Solves every pending authorization with `solver`, finalizes with `csr_der` and returns the
    /// full chain (PEM, leaf first). Works from whatever state the order is in (a resumed order
    /// that is already ready, processing or valid skips the steps done).
    pub async fn drive<S: ChallengeSolver>(
        &mut self,
        solver: &S,
        csr_der: &[u8],
        opts: &DriveOptions,
    ) -> Result<String, AcmeError> {
        if self.state() == OrderState::Pending {
            self.solve(solver, opts).await?;
        }
        match self.state() {
            OrderState::Ready => self.finalize(csr_der, opts).await,
            OrderState::Processing | OrderState::Valid => self.certificate(opts).await,
            OrderState::Invalid => Err(self.why_invalid().await),
            OrderState::Pending => Err(AcmeError::Protocol(
                "the order is still pending after its challenges".into(),
            )),
        }
    }

    async fn solve<S: ChallengeSolver>(&mut self, solver: &S, opts: &DriveOptions) -> Result<(), AcmeError> {
        let authzs = self.authorizations().await?;
        let mut chosen = Vec::new();
        for a in authzs {
            match a.status.as_str() {
                "valid" => continue,
                "pending" => {}
                other => {
                    return Err(AcmeError::OrderInvalid(format!(
                        "authorization for {} is {other}",
                        a.name()
                    )));
                }
            }
            let kind = solver.choose(&a).ok_or_else(|| AcmeError::SolverFailed {
                identifier: a.name(),
                message: "no solver matches this name".into(),
            })?;
            let ch = a
                .challenge(&kind)
                .cloned()
                .ok_or_else(|| AcmeError::SolverFailed {
                    identifier: a.name(),
                    message: format!("the CA offers no {} challenge for it", kind.as_str()),
                })?;
            chosen.push(Presented {
                authz: a,
                challenge: ch,
            });
        }
        let mut presented = Vec::new();
        let result = self
            .present_check_ready(solver, opts, &chosen, &mut presented)
            .await;
        // Clean up whatever was presented, whatever happened.
        let mut cleanup_error = None;
        for p in &presented {
            if let Err(e) = solver.cleanup(p).await {
                cleanup_error.get_or_insert(AcmeError::SolverFailed {
                    identifier: p.authz.name(),
                    message: bounded(&format!("cleanup: {e:#}"), MAX_MESSAGE),
                });
            }
        }
        result?;
        match cleanup_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn present_check_ready<S: ChallengeSolver>(
        &mut self,
        solver: &S,
        opts: &DriveOptions,
        chosen: &[Presented],
        presented: &mut Vec<Presented>,
    ) -> Result<(), AcmeError> {
        for p in chosen {
            solver.present(p).await.map_err(|e| AcmeError::SolverFailed {
                identifier: p.authz.name(),
                message: bounded(&format!("{e:#}"), MAX_MESSAGE),
            })?;
            presented.push(p.clone());
        }
        if opts.self_check.enabled {
            let checks = chosen.iter().map(|p| self_check(p, &opts.self_check));
            for r in futures::future::join_all(checks).await {
                r?;
            }
        }
        for p in chosen {
            if p.challenge.status == "pending" {
                solver.validating(p).await;
                self.set_ready(&p.authz.url, &p.challenge.kind).await?;
            }
        }
        match self.poll_ready(opts).await? {
            OrderState::Invalid => Err(self.why_invalid().await),
            _ => Ok(()),
        }
    }

    /// Finalizes a ready order with `csr_der` and downloads the chain.
    pub async fn finalize(&mut self, csr_der: &[u8], opts: &DriveOptions) -> Result<String, AcmeError> {
        if csr_der.is_empty() {
            return Err(AcmeError::InvalidInput("empty CSR".into()));
        }
        self.order
            .finalize_csr(csr_der)
            .await
            .map_err(|e| self.shared.map(e))?;
        self.certificate(opts).await
    }

    /// Waits for a finalized order's certificate and downloads the full chain (PEM).
    pub async fn certificate(&mut self, opts: &DriveOptions) -> Result<String, AcmeError> {
        let chain = match self.order.state().status {
            OrderStatus::Valid => self
                .order
                .certificate()
                .await
                .and_then(|c| c.ok_or(instant_acme::Error::Str("no certificate in a valid order"))),
            _ => self.order.poll_certificate(&Self::retry(opts)).await,
        };
        let chain = chain.map_err(|e| self.shared.map(e))?;
        if !chain.contains("-----BEGIN CERTIFICATE-----") {
            return Err(AcmeError::Protocol("the certificate download is not PEM".into()));
        }
        Ok(chain)
    }
}

/// base64url(SHA-256(key authorization)), the DNS-01 TXT value.
pub fn dns_value(key_authorization: &str) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key_authorization.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

// ---------------------------------------------------------------------------------------------
// Self-checks

async fn self_check(p: &Presented, cfg: &SelfCheck) -> Result<(), AcmeError> {
    let deadline = Instant::now() + cfg.timeout;
    let mut last;
    // DNS-01: the zone's authoritative servers, found once per self-check (each attempt tries
    // again until they are found).
    let mut authoritative = None;
    loop {
        let seen = match p.challenge.kind {
            ChallengeKind::Http01 => check_http(p, cfg).await,
            ChallengeKind::Dns01 => {
                if cfg.nameservers.is_empty() {
                    return Ok(());
                }
                check_dns(p, cfg, &mut authoritative).await
            }
            _ => return Ok(()),
        };
        match seen {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if Instant::now() + cfg.interval > deadline {
            return Err(AcmeError::SelfCheckFailed {
                identifier: p.authz.name(),
                message: bounded(&format!("{last} (for {:?})", cfg.timeout), MAX_MESSAGE),
            });
        }
        tokio::time::sleep(cfg.interval).await;
    }
}

async fn check_http(p: &Presented, cfg: &SelfCheck) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = &p.authz.identifier;
    let path = p.http_path();
    let one = async {
        let mut s = match cfg.http_address {
            Some(a) => tokio::net::TcpStream::connect(a).await,
            None => match host.parse::<IpAddr>() {
                Ok(ip) => tokio::net::TcpStream::connect((ip, cfg.http_port)).await,
                Err(_) => tokio::net::TcpStream::connect((host.as_str(), cfg.http_port)).await,
            },
        }
        .map_err(|e| format!("connecting for http://{host}{path}: {e}"))?;
        let host_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        s.write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .map_err(|e| format!("sending to {host}: {e}"))?;
        let mut buf = Vec::new();
        s.take(64 * 1024)
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("reading from {host}: {e}"))?;
        Ok::<_, String>(buf)
    };
    let raw = tokio::time::timeout(Duration::from_secs(5), one)
        .await
        .map_err(|_| format!("http://{host}{path} did not answer in 5s"))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).unwrap_or("?");
    if code != "200" {
        return Err(format!("http://{host}{path} answered {}", bounded(code, 8)));
    }
    if body.trim() != p.challenge.key_authorization {
        return Err(format!(
            "http://{host}{path} does not serve the key authorization"
        ));
    }
    Ok(())
}

async fn check_dns(
    p: &Presented,
    cfg: &SelfCheck,
    authoritative: &mut Option<dns_check::Authoritative>,
) -> Result<(), String> {
    let name = dns_check::fqdn(&p.dns_record_name())?;
    let value = &p.challenge.dns_txt_value;
    if cfg.recursive_only {
        return dns_check::check_recursive(&name, value, &cfg.nameservers).await;
    }
    let auth = match authoritative.take() {
        Some(a) => a,
        None => dns_check::discover(&cfg.nameservers, &name, cfg.authoritative_port).await?,
    };
    let r = dns_check::check_authoritative(&name, value, &auth).await;
    *authoritative = Some(auth);
    r
}

/// The DNS-01 self-check of a TXT value at `name`: at the zone's authoritative servers found through
/// `cfg.nameservers`, or at `cfg.nameservers` themselves with `cfg.recursive_only`. One attempt (no
/// retries); `Err` says what was seen where.
pub async fn dns01_self_check(name: &str, value: &str, cfg: &SelfCheck) -> Result<(), String> {
    let name = dns_check::fqdn(name)?;
    if cfg.recursive_only {
        return dns_check::check_recursive(&name, value, &cfg.nameservers).await;
    }
    let auth = dns_check::discover(&cfg.nameservers, &name, cfg.authoritative_port).await?;
    dns_check::check_authoritative(&name, value, &auth).await
}

/// The TXT values at `name` as `server` answers (UDP, then TCP when truncated; recursion not
/// desired), bounded to 3 s.
pub async fn txt_lookup(name: &str, server: SocketAddr) -> Result<Vec<String>, String> {
    let name = dns_check::fqdn(name)?;
    let m = dns_check::query(server, &name, hickory_proto::rr::RecordType::TXT, false).await?;
    Ok(dns_check::txt_values(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_strips_control_and_cuts() {
        let s = format!("a\u{1b}[31mb\r\nc{}", "x".repeat(1000));
        let b = bounded(&s, MAX_MESSAGE);
        assert!(b.chars().count() <= MAX_MESSAGE);
        assert!(!b.chars().any(char::is_control));
        assert!(b.ends_with('…'));
    }

    fn problem(t: Option<&str>, detail: Option<&str>, status: Option<u16>) -> Problem {
        serde_json::from_value(serde_json::json!({"type": t, "detail": detail, "status": status})).unwrap()
    }

    #[test]
    fn problems_map_to_reasons() {
        let p = problem(
            Some("urn:ietf:params:acme:error:rateLimited"),
            Some("slow down"),
            Some(429),
        );
        let e = problem_error(&p, Some(Duration::from_secs(7)));
        assert_eq!(e.reason(), "RateLimited");
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
        assert!(e.message().contains("rateLimited: slow down"), "{}", e.message());
        let p = problem(
            Some("urn:ietf:params:acme:error:unauthorized"),
            Some("no"),
            Some(403),
        );
        assert_eq!(problem_error(&p, None).reason(), "Unauthorized");
        let p = problem(None, None, Some(502));
        let e = problem_error(&p, None);
        assert_eq!(e.reason(), "AcmeUnreachable");
        assert!(e.message().contains("HTTP 502"));
        let p = problem(
            Some("urn:ietf:params:acme:error:rejectedIdentifier"),
            Some(&"d".repeat(5000)),
            Some(400),
        );
        let e = problem_error(&p, None);
        assert_eq!(e.reason(), "Rejected");
        assert!(e.message().chars().count() <= 2 * MAX_MESSAGE);
    }

    #[test]
    fn cert_id_parsing() {
        assert!(parse_cert_id("abc.def").is_ok());
        assert!(parse_cert_id("abc").is_err());
        assert!(parse_cert_id("a.b.c").is_err());
        assert!(parse_cert_id("a/b.c").is_err());
    }

    #[test]
    fn endpoints_by_path() {
        let s = Shared {
            directory_url: "https://ca/dir".into(),
            endpoints: Mutex::new(HashMap::new()),
            retry_after: Mutex::new(None),
            hook: None,
        };
        s.learn_directory(br#"{"newNonce":"https://ca/nonce-plz","newOrder":"https://ca/order-plz","renewalInfo":"https://ca/ari"}"#);
        assert_eq!(s.endpoint("https://ca/dir"), "directory");
        assert_eq!(s.endpoint("https://ca/nonce-plz"), "newNonce");
        assert_eq!(s.endpoint("https://ca/order-plz"), "newOrder");
        assert_eq!(s.endpoint("https://ca/ari/abc.def"), "renewalInfo");
        assert_eq!(s.endpoint("https://ca/my-order/1"), "order");
        assert_eq!(s.endpoint("https://ca/authZ/1"), "authz");
        assert_eq!(s.endpoint("https://ca/chalZ/1"), "challenge");
        assert_eq!(s.endpoint("https://ca/finalize-order/1"), "finalize");
        assert_eq!(s.endpoint("https://ca/certZ/1"), "certificate");
        assert_eq!(s.endpoint("https://ca/x"), "other");
        assert_eq!(s.renewal_info_url().as_deref(), Some("https://ca/ari"));
    }

    #[test]
    fn dns_value_is_rfc8555() {
        // RFC 8555 §8.4: base64url(SHA-256(keyAuthorization)); SHA-256("abc") is well known.
        assert_eq!(dns_value("abc"), "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0");
    }
}
