//! The data plane's view of the world: one immutable [`Snapshot`] the controller builds and swaps
//! as a unit ([`SharedSnapshot`]), so a request or a TLS handshake always sees a route table, the
//! endpoints and the certificates of the same moment.
//!
//! ```text
//!   controller ──build──> Snapshot { routes, endpoints, certificates, default cert, ACME tokens }
//!                            │ SharedSnapshot::store (arc-swap, one pointer swap)
//!                            v
//!   handshake: certificate for SNI      request: ACME token, redirect, route, endpoints
//! ```
//!
//! A request holds an `Arc` of the snapshot it started with, so a swap never changes what an
//! in-flight request or an open tunnel uses; the old snapshot is freed when its last reader ends.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::host::{HostPattern, RequestHost};
use crate::routes::{BackendRef, RouteTable, SecretRef};

/// The name in the self-signed default certificate's SAN. `.invalid` (RFC 2606) can never be a real
/// host, so no client mistakes it for a configured one.
pub const DEFAULT_CERT_NAME: &str = "ingress-default.ferrite.invalid";

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("tls.crt holds no PEM certificate")]
    NoCertificate,
    #[error("tls.crt is not valid PEM: {0}")]
    CertificatePem(String),
    #[error("tls.key holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {0}")]
    KeyPem(String),
    #[error("tls.key is not a private key this proxy can sign with: {0}")]
    Key(#[source] rustls::Error),
    #[error("tls.key does not belong to the first certificate of tls.crt")]
    KeyMismatch,
    #[error("generating the self-signed default certificate failed: {0}")]
    SelfSigned(#[source] rcgen::Error),
}

impl CertError {
    /// Stable reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            CertError::NoCertificate | CertError::CertificatePem(_) => "InvalidCertificate",
            CertError::KeyPem(_) | CertError::Key(_) => "InvalidKey",
            CertError::KeyMismatch => "KeyMismatch",
            CertError::SelfSigned(_) => "DefaultCertificate",
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Builds a signing certificate from a `kubernetes.io/tls` Secret's `tls.crt` (chain, leaf first)
/// and `tls.key`, checking that the key belongs to the leaf.
pub fn certified_key_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::CertificatePem(e.to_string()))?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::KeyPem(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(CertError::Key)?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => Ok(Arc::new(certified)),
        // The provider could not tell (no SPKI for this key type): accept, rustls will fail the
        // handshake rather than sign with a wrong key.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(certified)),
        Err(_) => Err(CertError::KeyMismatch),
    }
}

/// A fresh self-signed certificate for [`DEFAULT_CERT_NAME`]: what the proxy serves when no
/// default certificate is configured and the SNI name has no certificate of its own.
pub fn self_signed_default() -> Result<Arc<CertifiedKey>, CertError> {
    let mut params =
        rcgen::CertificateParams::new(vec![DEFAULT_CERT_NAME.to_string()]).map_err(CertError::SelfSigned)?;
    // The subject names it too, so `openssl s_client`/`curl -v` show where a client landed.
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, DEFAULT_CERT_NAME);
    let key = rcgen::KeyPair::generate().map_err(CertError::SelfSigned)?;
    let cert = params.self_signed(&key).map_err(CertError::SelfSigned)?;
    certified_key_from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
}

/// Why an ACME HTTP-01 token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME challenge host {0:?} is not a DNS name")]
    Host(String),
    #[error("ACME token {0:?} is not base64url (RFC 8555 section 8.3)")]
    Token(String),
    #[error("ACME key authorization for token {0:?} is not printable ASCII")]
    KeyAuthorization(String),
}

fn is_base64url(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Everything the data plane reads, as of one moment. Built by the controller, never mutated once
/// stored in a [`SharedSnapshot`].
#[derive(Clone)]
pub struct Snapshot {
    routes: RouteTable,
    endpoints: HashMap<BackendRef, Arc<[SocketAddr]>>,
    certificates: HashMap<SecretRef, Arc<CertifiedKey>>,
    /// TLS host patterns whose Secret's certificate is not valid for them: served the default.
    default_for: HashSet<HostPattern>,
    default_certificate: Arc<CertifiedKey>,
    /// (normalized host, token) -> key authorization.
    acme: HashMap<(String, String), String>,
    generation: u64,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("routes", &self.routes.routes().len())
            .field("endpoints", &self.endpoints.len())
            .field("certificates", &self.certificates.keys().collect::<Vec<_>>())
            .field("acme_tokens", &self.acme.len())
            .finish()
    }
}

impl Snapshot {
    /// A snapshot with `routes`, no endpoints, no certificates but `default_certificate`, no tokens.
    pub fn new(routes: RouteTable, default_certificate: Arc<CertifiedKey>) -> Self {
        Snapshot {
            routes,
            endpoints: HashMap::new(),
            certificates: HashMap::new(),
            default_for: HashSet::new(),
            default_certificate,
            acme: HashMap::new(),
            generation: 0,
        }
    }

    /// Sets the ready endpoints of a backend (replacing earlier ones). An empty list means the
    /// backend answers 503.
    pub fn set_endpoints(&mut self, backend: BackendRef, ready: Vec<SocketAddr>) {
        self.endpoints.insert(backend, ready.into());
    }

    /// Adds an already built certificate for a TLS Secret.
    pub fn set_certificate(&mut self, secret: SecretRef, key: Arc<CertifiedKey>) {
        self.certificates.insert(secret, key);
    }

    /// Loads a TLS Secret's PEM. A broken Secret is not added (its hosts get the default certificate)
    /// and the error is returned for the controller's Warning Event.
    pub fn set_certificate_pem(
        &mut self,
        secret: SecretRef,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<(), CertError> {
        let key = certified_key_from_pem(cert_pem, key_pem)?;
        self.certificates.insert(secret, key);
        Ok(())
    }

    /// Loads several Secrets, returning the ones that failed (name and reason); the others are added.
    pub fn load_certificates<'a>(
        &mut self,
        secrets: impl IntoIterator<Item = (SecretRef, &'a [u8], &'a [u8])>,
    ) -> Vec<(SecretRef, CertError)> {
        let mut failed = Vec::new();
        for (secret, cert, key) in secrets {
            if let Err(e) = self.set_certificate_pem(secret.clone(), cert, key) {
                failed.push((secret, e));
            }
        }
        failed
    }

    /// Serves the default certificate for the TLS host pattern `host` (a binding of the route table)
    /// although its Secret is loaded: the controller found the certificate not valid for that host.
    /// The host still counts as a TLS host (redirected), as in ingress-nginx.
    pub fn serve_default_certificate_for(&mut self, host: HostPattern) {
        self.default_for.insert(host);
    }

    pub fn set_default_certificate(&mut self, key: Arc<CertifiedKey>) {
        self.default_certificate = key;
    }

    /// Publishes an ACME HTTP-01 answer: `GET http://<host>/.well-known/acme-challenge/<token>` on the
    /// plain listener answers `key_authorization`.
    pub fn set_acme_token(
        &mut self,
        host: &str,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), AcmeError> {
        let host = RequestHost::parse(host).ok_or_else(|| AcmeError::Host(host.to_string()))?;
        if !is_base64url(token) {
            return Err(AcmeError::Token(token.to_string()));
        }
        if key_authorization.is_empty() || !key_authorization.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AcmeError::KeyAuthorization(token.to_string()));
        }
        self.acme.insert(
            (host.as_str().to_string(), token.to_string()),
            key_authorization.to_string(),
        );
        Ok(())
    }

    /// A counter the controller may set to tell snapshots apart (logs, metrics).
    pub fn set_generation(&mut self, generation: u64) {
        self.generation = generation;
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// Ready endpoints of a backend; empty when unknown.
    pub fn endpoints(&self, backend: &BackendRef) -> &[SocketAddr] {
        self.endpoints.get(backend).map(|e| &e[..]).unwrap_or(&[])
    }

    /// The certificate served for an SNI name: the host's Secret when it is loaded (and valid for the
    /// host, see [`Snapshot::serve_default_certificate_for`]), else the default.
    pub fn certificate_for(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        sni.and_then(|name| self.routes.tls_for(name))
            .filter(|b| self.default_for.is_empty() || !self.default_for.contains(&b.host))
            .and_then(|b| b.secret.as_ref())
            .and_then(|secret| self.certificates.get(secret))
            .unwrap_or(&self.default_certificate)
            .clone()
    }

    /// The key authorization for a token on a host, if published.
    pub fn acme_answer(&self, host: &str, token: &str) -> Option<&str> {
        let host = RequestHost::parse(host)?;
        self.acme
            .get(&(host.as_str().to_string(), token.to_string()))
            .map(String::as_str)
    }
}

/// The snapshot currently served, swapped atomically as one unit.
pub struct SharedSnapshot(ArcSwap<Snapshot>, std::sync::atomic::AtomicU64);

impl fmt::Debug for SharedSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedSnapshot").field(&*self.0.load()).finish()
    }
}

impl SharedSnapshot {
    pub fn new(snapshot: Snapshot) -> Self {
        SharedSnapshot(
            ArcSwap::from_pointee(snapshot),
            std::sync::atomic::AtomicU64::new(0),
        )
    }

    /// The current snapshot; hold the `Arc` for as long as one request or handshake needs it.
    pub fn load(&self) -> Arc<Snapshot> {
        self.0.load_full()
    }

    /// Replaces the served snapshot. Readers holding the previous one keep it until they finish.
    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Arc::new(snapshot));
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times [`SharedSnapshot::store`] was called (the swaps metric).
    pub fn swaps(&self) -> u64 {
        self.1.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_string()]).expect("rcgen");
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    fn secret(name: &str) -> SecretRef {
        SecretRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn invalid_certificates_are_reported_and_not_loaded() {
        let (cert_a, key_a) = pem("a.test");
        let (_, key_b) = pem("b.test");
        let mut s = Snapshot::new(RouteTable::empty(), self_signed_default().expect("default"));
        let cases: [(&str, &[u8], &[u8], &str); 5] = [
            ("no-cert", b"", key_a.as_bytes(), "InvalidCertificate"),
            (
                "garbage-cert",
                b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                key_a.as_bytes(),
                "InvalidCertificate",
            ),
            ("no-key", cert_a.as_bytes(), b"", "InvalidKey"),
            ("cert-as-key", cert_a.as_bytes(), cert_a.as_bytes(), "InvalidKey"),
            ("mismatch", cert_a.as_bytes(), key_b.as_bytes(), "KeyMismatch"),
        ];
        let failed = s.load_certificates(cases.iter().map(|(n, c, k, _)| (secret(n), *c, *k)).chain([(
            secret("good"),
            cert_a.as_bytes(),
            key_a.as_bytes(),
        )]));
        let reasons: Vec<(String, &str)> = failed.iter().map(|(s, e)| (s.name.clone(), e.reason())).collect();
        let want: Vec<(String, &str)> = cases.iter().map(|(n, _, _, r)| (n.to_string(), *r)).collect();
        assert_eq!(reasons, want);
        assert_eq!(s.certificates.len(), 1);
        assert!(s.certificates.contains_key(&secret("good")));
    }

    #[test]
    fn acme_tokens_are_validated_and_matched_by_normalized_host() {
        let mut s = Snapshot::new(RouteTable::empty(), self_signed_default().expect("default"));
        s.set_acme_token("Shop.Example.com.", "abc_DEF-1", "abc_DEF-1.thumb")
            .expect("valid");
        assert_eq!(
            s.acme_answer("shop.example.com:80", "abc_DEF-1"),
            Some("abc_DEF-1.thumb")
        );
        assert_eq!(s.acme_answer("other.example.com", "abc_DEF-1"), None);
        assert_eq!(s.acme_answer("shop.example.com", "abc_DEF-2"), None);
        assert!(matches!(
            s.set_acme_token("shop.example.com", "../etc", "x"),
            Err(AcmeError::Token(_))
        ));
        assert!(matches!(
            s.set_acme_token("shop.example.com", "", "x"),
            Err(AcmeError::Token(_))
        ));
        assert!(matches!(
            s.set_acme_token("shop.example.com", "t", "a\r\nb"),
            Err(AcmeError::KeyAuthorization(_))
        ));
        assert!(matches!(s.set_acme_token("", "t", "k"), Err(AcmeError::Host(_))));
    }

    #[test]
    fn default_certificate_names_itself() {
        let key = self_signed_default().expect("default");
        let der = key.cert.first().expect("leaf");
        let name = DEFAULT_CERT_NAME.as_bytes();
        assert!(der.as_ref().windows(name.len()).any(|w| w == name));
    }
}
