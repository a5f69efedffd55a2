//! `certs.ferrite.dev/v1alpha1`: ferrite-certs's API and annotation keys.
//!
//! ```text
//!   Issuer (namespaced) / ClusterIssuer   acme{...} | ca{secretName} | selfSigned{}
//!      ▲ issuerRef
//!   Certificate (namespaced) ──> Secret kubernetes.io/tls (tls.crt leaf+chain, tls.key, ca.crt)
//!      │ ACME order in progress
//!      └──> Challenge (namespaced, owned by the Certificate) ──> ferrite-ingress serves HTTP-01 tokens,
//!                                                               DNSRecord TXT for DNS-01 (ferrite-dns)
//!   Ingress with certs.ferrite.dev/issuer (or cert-manager.io/issuer) ──> one Certificate per spec.tls entry
//! ```
//!
//! Field names follow cert-manager's (`secretName`, `issuerRef`, `dnsNames`, `duration`, `renewBefore`,
//! `privateKey`, `acme.solvers` ...), so a cert-manager manifest ports by changing its `apiVersion`.
//! Durations are Go duration strings as cert-manager writes them (`2160h`, `1h30m`, `45m`); the pattern
//! here checks their shape, the controller checks their meaning (duration > renewBefore, at least 1h).
//!
//! The schema is written for the oldest API server the suite runs on (1.20): OpenAPI validation only, no
//! CEL. "Exactly one of" rules (an issuer's `acme`/`ca`/`selfSigned`, a solver's `http01`/`dns01`) are
//! checked by the controller and reported in the object's `Ready` condition, as cert-manager does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of ferrite-certs.
pub const GROUP: &str = "certs.ferrite.dev";

/// A Go duration string as cert-manager accepts it: one or more `<number><unit>` with units h, m, s,
/// ms, us, µs, ns (`2160h`, `1h30m`, `90m`, `1.5h`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms|us|µs|ns))+$";

/// `spec.duration` when not given: 90 days, cert-manager's default.
pub const DEFAULT_DURATION: &str = "2160h";

/// Label on every Secret ferrite-certs writes (certificates, pending private keys): the controller
/// watches only Secrets carrying it, never every Secret of the cluster. Value `true`.
pub const MANAGED_LABEL: &str = "certs.ferrite.dev/managed";
/// Label naming the `Certificate` a managed Secret belongs to.
pub const CERTIFICATE_NAME_LABEL: &str = "certs.ferrite.dev/certificate-name";

/// Keys of the Secrets ferrite-certs reads and writes.
pub mod secret_keys {
    /// The certificate chain, PEM, leaf first (`kubernetes.io/tls`).
    pub const TLS_CRT: &str = "tls.crt";
    /// The private key, PEM (`kubernetes.io/tls`).
    pub const TLS_KEY: &str = "tls.key";
    /// The issuing CA's certificate, PEM, where known (CA and self-signed issuers, ACME roots when known).
    pub const CA_CRT: &str = "ca.crt";
    /// An ACME account's credentials (instant-acme's JSON) in the account Secret, next to `tls.key`.
    pub const ACME_ACCOUNT: &str = "acme-account.json";
}

/// Annotations ferrite-certs writes on the Secrets it issues (read by people and by other tools).
pub mod secret_annotations {
    /// The `Certificate`'s name.
    pub const CERTIFICATE_NAME: &str = "certs.ferrite.dev/certificate-name";
    /// The issuer's name.
    pub const ISSUER_NAME: &str = "certs.ferrite.dev/issuer-name";
    /// The issuer's kind (`Issuer` or `ClusterIssuer`).
    pub const ISSUER_KIND: &str = "certs.ferrite.dev/issuer-kind";
    /// DNS names of the certificate, comma separated.
    pub const ALT_NAMES: &str = "certs.ferrite.dev/alt-names";
    /// IP addresses of the certificate, comma separated.
    pub const IP_SANS: &str = "certs.ferrite.dev/ip-sans";
    /// The certificate's common name, if any.
    pub const COMMON_NAME: &str = "certs.ferrite.dev/common-name";
    /// The certificate's expiry (RFC 3339).
    pub const NOT_AFTER: &str = "certs.ferrite.dev/not-after";
}

/// Annotations on Ingresses read by the ingress-shim, each with cert-manager's key as an alias (read in
/// this order; the first present wins).
pub mod annotations {
    /// Name of an `Issuer` in the Ingress's namespace to issue the Ingress's `spec.tls` certificates.
    pub const ISSUER: &str = "certs.ferrite.dev/issuer";
    /// cert-manager's issuer key.
    pub const CERT_MANAGER_ISSUER: &str = "cert-manager.io/issuer";
    /// Name of a `ClusterIssuer` to issue the Ingress's `spec.tls` certificates.
    pub const CLUSTER_ISSUER: &str = "certs.ferrite.dev/cluster-issuer";
    /// cert-manager's cluster-issuer key.
    pub const CERT_MANAGER_CLUSTER_ISSUER: &str = "cert-manager.io/cluster-issuer";
    /// `"true"`: issue with the controller's default issuer (`--default-issuer-name`/`-kind`), as
    /// cert-manager's `kubernetes.io/tls-acme`.
    pub const TLS_ACME: &str = "kubernetes.io/tls-acme";
    /// Common name of the generated Certificates.
    pub const COMMON_NAME: &str = "certs.ferrite.dev/common-name";
    /// cert-manager's common-name key.
    pub const CERT_MANAGER_COMMON_NAME: &str = "cert-manager.io/common-name";
    /// `duration` of the generated Certificates (Go duration).
    pub const DURATION: &str = "certs.ferrite.dev/duration";
    /// cert-manager's duration key.
    pub const CERT_MANAGER_DURATION: &str = "cert-manager.io/duration";
    /// `renewBefore` of the generated Certificates (Go duration).
    pub const RENEW_BEFORE: &str = "certs.ferrite.dev/renew-before";
    /// cert-manager's renew-before key.
    pub const CERT_MANAGER_RENEW_BEFORE: &str = "cert-manager.io/renew-before";
    /// `privateKey.algorithm` of the generated Certificates (`RSA`, `ECDSA`, `Ed25519`).
    pub const PRIVATE_KEY_ALGORITHM: &str = "certs.ferrite.dev/private-key-algorithm";
    /// cert-manager's private-key-algorithm key.
    pub const CERT_MANAGER_PRIVATE_KEY_ALGORITHM: &str = "cert-manager.io/private-key-algorithm";
    /// `privateKey.size` of the generated Certificates.
    pub const PRIVATE_KEY_SIZE: &str = "certs.ferrite.dev/private-key-size";
    /// cert-manager's private-key-size key.
    pub const CERT_MANAGER_PRIVATE_KEY_SIZE: &str = "cert-manager.io/private-key-size";
    /// `privateKey.rotationPolicy` of the generated Certificates (`Always`, `Never`).
    pub const PRIVATE_KEY_ROTATION_POLICY: &str = "certs.ferrite.dev/private-key-rotation-policy";
    /// cert-manager's private-key-rotation-policy key.
    pub const CERT_MANAGER_PRIVATE_KEY_ROTATION_POLICY: &str = "cert-manager.io/private-key-rotation-policy";

    /// The issuer keys, in the order they are read.
    pub const ISSUER_KEYS: [&str; 2] = [ISSUER, CERT_MANAGER_ISSUER];
    /// The cluster-issuer keys, in the order they are read.
    pub const CLUSTER_ISSUER_KEYS: [&str; 2] = [CLUSTER_ISSUER, CERT_MANAGER_CLUSTER_ISSUER];
    /// The common-name keys, in the order they are read.
    pub const COMMON_NAME_KEYS: [&str; 2] = [COMMON_NAME, CERT_MANAGER_COMMON_NAME];
    /// The duration keys, in the order they are read.
    pub const DURATION_KEYS: [&str; 2] = [DURATION, CERT_MANAGER_DURATION];
    /// The renew-before keys, in the order they are read.
    pub const RENEW_BEFORE_KEYS: [&str; 2] = [RENEW_BEFORE, CERT_MANAGER_RENEW_BEFORE];
    /// The private-key-algorithm keys, in the order they are read.
    pub const PRIVATE_KEY_ALGORITHM_KEYS: [&str; 2] =
        [PRIVATE_KEY_ALGORITHM, CERT_MANAGER_PRIVATE_KEY_ALGORITHM];
    /// The private-key-size keys, in the order they are read.
    pub const PRIVATE_KEY_SIZE_KEYS: [&str; 2] = [PRIVATE_KEY_SIZE, CERT_MANAGER_PRIVATE_KEY_SIZE];
    /// The private-key-rotation-policy keys, in the order they are read.
    pub const PRIVATE_KEY_ROTATION_POLICY_KEYS: [&str; 2] = [
        PRIVATE_KEY_ROTATION_POLICY,
        CERT_MANAGER_PRIVATE_KEY_ROTATION_POLICY,
    ];
}

/// Condition types and reasons of ferrite-certs's objects (cert-manager's where it has them).
pub mod conditions {
    /// `Certificate`: the Secret holds a valid, current certificate for the spec. `Issuer`: usable.
    pub const READY: &str = "Ready";
    /// `Certificate`: True while a certificate is being issued; the reason says why it is issued.
    pub const ISSUING: &str = "Issuing";

    /// Ready=True: the certificate is current.
    pub const REASON_READY: &str = "Ready";
    /// The Secret does not exist yet.
    pub const REASON_DOES_NOT_EXIST: &str = "DoesNotExist";
    /// The Secret lacks `tls.crt` or `tls.key`.
    pub const REASON_MISSING_DATA: &str = "MissingData";
    /// The Secret's key does not match its certificate, or cannot be parsed.
    pub const REASON_INVALID_KEY_PAIR: &str = "InvalidKeyPair";
    /// The Secret's certificate does not match the spec (names, key algorithm, usages).
    pub const REASON_SECRET_MISMATCH: &str = "SecretMismatch";
    /// The Secret's certificate was issued by another issuer than the spec names.
    pub const REASON_INCORRECT_ISSUER: &str = "IncorrectIssuer";
    /// The certificate reached its renewal time.
    pub const REASON_RENEWING: &str = "Renewing";
    /// The certificate has expired.
    pub const REASON_EXPIRED: &str = "Expired";
    /// The spec is invalid (the message names the field); no order is placed.
    pub const REASON_INVALID_SPEC: &str = "InvalidSpec";
    /// The referenced issuer does not exist.
    pub const REASON_ISSUER_NOT_FOUND: &str = "IssuerNotFound";
    /// The referenced issuer exists but is not Ready.
    pub const REASON_ISSUER_NOT_READY: &str = "IssuerNotReady";
    /// Issuing failed; the next attempt is at `status.nextAttemptTime` (exponential backoff).
    pub const REASON_FAILED: &str = "Failed";
    /// Issuer: its configuration is invalid (the message says why).
    pub const REASON_BAD_CONFIG: &str = "BadConfig";
    /// Issuer: the ACME account is registered.
    pub const REASON_ACME_ACCOUNT_REGISTERED: &str = "ACMEAccountRegistered";
    /// Issuer: the ACME server cannot be reached or refused the account.
    pub const REASON_ERR_REGISTER_ACME_ACCOUNT: &str = "ErrRegisterACMEAccount";
    /// Issuer (CA): the CA Secret is missing or unusable.
    pub const REASON_ERR_GET_KEY_PAIR: &str = "ErrGetKeyPair";
    /// Issuer (CA): the CA key pair is loaded.
    pub const REASON_KEY_PAIR_VERIFIED: &str = "KeyPairVerified";
    /// Issuer (selfSigned): always usable.
    pub const REASON_IS_READY: &str = "IsReady";
}

// ---------------------------------------------------------------------------------------------------
// Certificate

/// A certificate ferrite-certs keeps issued and renewed in a Secret.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "certs.ferrite.dev",
    version = "v1alpha1",
    kind = "Certificate",
    plural = "certificates",
    shortname = "cert",
    shortname = "certs",
    category = "ferrite",
    namespaced,
    status = "CertificateStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".spec.secretName"}"#,
    printcolumn = r#"{"name":"Issuer","type":"string","jsonPath":".spec.issuerRef.name","priority":1}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Expires","type":"date","jsonPath":".status.notAfter"}"#,
    printcolumn = r#"{"name":"Renewal","type":"date","jsonPath":".status.renewalTime","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    /// The Secret (same namespace) the certificate is written to, type `kubernetes.io/tls`. Created if
    /// absent; an existing Secret not written by ferrite-certs is left alone and reported.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,

    /// The `Issuer` (same namespace) or `ClusterIssuer` that issues the certificate.
    pub issuer_ref: IssuerRef,

    /// The subject's common name. Optional; when set it should also be one of `dnsNames` (CAs ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub common_name: Option<String>,

    /// DNS names (subject alternative names); `*.example.com` for a wildcard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 253)))]
    pub dns_names: Vec<String>,

    /// IP addresses (subject alternative names), IPv4 or IPv6.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 2, max = 45)))]
    pub ip_addresses: Vec<String>,

    /// The requested lifetime (Go duration). ACME CAs may ignore it. Default `2160h` (90 days); at least 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duration: Option<String>,

    /// Renew this long before expiry (Go duration). Default: at 2/3 of the actual lifetime. Must be
    /// shorter than `duration`. At most one of `renewBefore` and `renewBeforePercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub renew_before: Option<String>,

    /// Renew when this share of the actual lifetime remains (1-99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i32>,

    /// The certificate is a CA (basic constraints CA:TRUE, key usage certSign): for a private CA
    /// bootstrapped with a `selfSigned` issuer.
    #[serde(default, rename = "isCA", skip_serializing_if = "std::ops::Not::not")]
    pub is_ca: bool,

    /// The private key: algorithm, size, encoding and rotation policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,

    /// Subject fields besides the common name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Subject>,

    /// Labels and annotations copied onto the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,
}

/// Which issuer issues a Certificate.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (same namespace, the default) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// The issuer's API group: `certs.ferrite.dev` (default); `cert-manager.io` is accepted as the same,
    /// so ported manifests keep their `group`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// Kind of issuer a reference names.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum IssuerKind {
    /// An `Issuer` in the Certificate's namespace.
    #[default]
    Issuer,
    /// A cluster-scoped `ClusterIssuer`.
    ClusterIssuer,
}

impl IssuerKind {
    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// The private key of a Certificate.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrivateKeySpec {
    /// `RSA`, `ECDSA` or `Ed25519`. Default `RSA` (cert-manager's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<KeyAlgorithm>,
    /// Key size: RSA 2048 (default) to 8192; ECDSA 256 (default) or 384; ignored for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i32>,
    /// `PKCS1` (default; SEC1 for ECDSA keys) or `PKCS8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<KeyEncoding>,
    /// `Always` (default): a new key for every issuance; `Never`: keep the Secret's key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

/// Private key algorithms.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyAlgorithm {
    /// RSA.
    #[serde(rename = "RSA")]
    Rsa,
    /// ECDSA over P-256 or P-384.
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// Ed25519.
    Ed25519,
}

/// Private key encodings in `tls.key`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyEncoding {
    /// PKCS#1 for RSA (`RSA PRIVATE KEY`), SEC1 for ECDSA (`EC PRIVATE KEY`), PKCS#8 for Ed25519.
    #[serde(rename = "PKCS1")]
    Pkcs1,
    /// PKCS#8 (`PRIVATE KEY`).
    #[serde(rename = "PKCS8")]
    Pkcs8,
}

/// When a Certificate's private key is replaced.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RotationPolicy {
    /// A new private key for every issuance (cert-manager's default since 1.18).
    Always,
    /// Reuse the key in the Secret while it is valid for the spec.
    Never,
}

/// Subject fields of a certificate besides the common name.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// Organizations (O).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    pub organizations: Vec<String>,
    /// Organizational units (OU).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    pub organizational_units: Vec<String>,
    /// Countries (C).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    pub countries: Vec<String>,
    /// Localities (L).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    pub localities: Vec<String>,
    /// Provinces or states (ST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 64)))]
    pub provinces: Vec<String>,
}

/// Metadata copied onto a Certificate's Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretTemplate {
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What ferrite-certs observed and is doing for a Certificate.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// `Ready` and `Issuing`, with reasons from [`conditions`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Start of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When the current certificate will be renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// How many certificates were written to the Secret so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Failed issuances since the last success; drives the backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_issuance_attempts: Option<i32>,
    /// When the last issuance failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// The earliest time of the next issuance attempt after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// The managed Secret holding the private key of the issuance in progress (rotationPolicy Always),
    /// so a restarted controller finalizes with the same key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_private_key_secret_name: Option<String>,
    /// The ACME order in progress, so a restart resumes it instead of ordering again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderStatus>,
}

/// An ACME order in progress for a Certificate.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrderStatus {
    /// The order's URL at the CA.
    pub url: String,
    /// The ACME server (directory URL) the order was placed with.
    pub server: String,
    /// A digest of what the order is for (names, issuer, key); a spec change abandons the order.
    pub spec_hash: String,
    /// The order's state as last seen (`pending`, `ready`, `processing`, `valid`, `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// When the order was placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<Time>,
}

// ---------------------------------------------------------------------------------------------------
// Issuer and ClusterIssuer

/// An issuer usable by Certificates of its own namespace.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "certs.ferrite.dev",
    version = "v1alpha1",
    kind = "Issuer",
    plural = "issuers",
    category = "ferrite",
    namespaced,
    status = "IssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IssuerSpec {
    /// Exactly one of `acme`, `ca` and `selfSigned`.
    #[serde(flatten)]
    pub config: IssuerConfig,
}

/// An issuer usable by Certificates of every namespace. Secrets it references (ACME account key, EAB
/// key, TSIG key, CA key pair) live in the controller's cluster-resource namespace
/// (`--cluster-resource-namespace`, the chart's release namespace), as with cert-manager.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "certs.ferrite.dev",
    version = "v1alpha1",
    kind = "ClusterIssuer",
    plural = "clusterissuers",
    category = "ferrite",
    status = "IssuerStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterIssuerSpec {
    /// Exactly one of `acme`, `ca` and `selfSigned`.
    #[serde(flatten)]
    pub config: IssuerConfig,
}

/// How an issuer issues: exactly one of the fields (checked by the controller: `Ready=False`,
/// reason `BadConfig` otherwise).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerConfig {
    /// An ACME CA (Let's Encrypt, ZeroSSL, step-ca, Pebble ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuer>,
    /// A private CA whose certificate and key are in a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Each certificate signs itself (or bootstraps a private CA with `isCA: true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
}

/// An ACME issuer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuer {
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`,
    /// `https://acme-staging-v02.api.letsencrypt.org/directory`).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    pub server: String,
    /// Contact address registered with the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 254))]
    pub email: Option<String>,
    /// The Secret holding the account: created on first use (`tls.key` and the account's credentials),
    /// reused afterwards. `key` is ignored (cert-manager compatibility).
    pub private_key_secret_ref: SecretKeySelector,
    /// External account binding (ZeroSSL, Google, step-ca with EAB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<ExternalAccountBinding>,
    /// The ACME profile to order (`tlsserver`, `shortlived`, `classic` at Let's Encrypt). The CA must
    /// advertise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub profile: Option<String>,
    /// PEM bundle of CAs trusted for the ACME server's HTTPS, base64 (as cert-manager). Default: the
    /// system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "caBundle")]
    pub ca_bundle: Option<String>,
    /// Do not verify the ACME server's HTTPS certificate (tests only).
    #[serde(default, rename = "skipTLSVerify", skip_serializing_if = "std::ops::Not::not")]
    pub skip_tls_verify: bool,
    /// Ask the CA to validate without our own self-check first (cert-manager's `waitInsteadOfSelfCheck`
    /// idea): faster, but a missing record costs a failed authorization.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_self_check: bool,
    /// How challenges are solved; the most specific matching selector wins (cert-manager's rules).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub solvers: Vec<AcmeSolver>,
}

/// A key of a Secret in the issuer's namespace (ClusterIssuer: the cluster-resource namespace).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key inside the Secret (meaning depends on the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// ACME external account binding.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAccountBinding {
    /// The key identifier the CA gave.
    #[serde(rename = "keyID")]
    #[schemars(length(min = 1, max = 512))]
    pub key_id: String,
    /// The Secret key holding the HMAC key (base64url, as the CA gives it). Default key `secret`.
    pub key_secret_ref: SecretKeySelector,
    /// Deprecated in cert-manager (only HS256 is used); accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_algorithm: Option<String>,
}

/// One way of solving challenges, for the names its selector matches.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeSolver {
    /// Which names this solver is for; absent: every name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<SolverSelector>,
    /// HTTP-01: the token served at `http://<name>/.well-known/acme-challenge/<token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http01: Option<Http01Solver>,
    /// DNS-01: a TXT record at `_acme-challenge.<name>` (the only way for wildcards).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns01: Option<Dns01Solver>,
}

/// Which names a solver applies to (cert-manager's rules: dnsNames beats dnsZones beats labels; the
/// longest matching zone wins).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SolverSelector {
    /// Exact names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// Zones: a name at or below one matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_zones: Vec<String>,
    /// Labels the Certificate must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// HTTP-01 solving.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http01Solver {
    /// Route the token through an Ingress. Absent: as `ingress: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Http01Ingress>,
}

/// How HTTP-01 tokens reach the CA through the cluster's ingress.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Http01Ingress {
    /// The IngressClass the CA's request arrives through. Of ferrite's class (controller
    /// `ferrite.dev/ingress`) the proxy serves the token from the `Challenge` itself; of any other class
    /// a temporary Ingress routes `/.well-known/acme-challenge/<token>` to ferrite-certs's own listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// cert-manager's older spelling (the `kubernetes.io/ingress.class` annotation value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// DNS-01 solving: exactly one provider.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Dns01Solver {
    /// TSIG-signed RFC 2136 updates straight to an authoritative server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rfc2136: Option<Rfc2136Solver>,
    /// A `DNSRecord` TXT object in the Certificate's namespace, published by ferrite-dns.
    #[serde(default, rename = "ferriteDNS", skip_serializing_if = "Option::is_none")]
    pub ferrite_dns: Option<FerriteDnsSolver>,
}

/// DNS-01 over RFC 2136.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rfc2136Solver {
    /// The server, `host` or `host:port` (`[v6]:port`); port 53 by default.
    #[schemars(length(min = 1, max = 260))]
    pub nameserver: String,
    /// The TSIG key's name as the server knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_key_name: Option<String>,
    /// The Secret key holding the TSIG secret (base64, as `tsig-keygen` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_secret_secret_ref: Option<SecretKeySelector>,
    /// `HMACSHA256` (default), `HMACSHA384`, `HMACSHA512`, `HMACSHA1` (cert-manager's spelling), or the
    /// lower-case `hmac-sha256` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tsig_algorithm: Option<String>,
}

/// DNS-01 through ferrite-dns's `DNSRecord`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FerriteDnsSolver {
    /// TTL of the TXT record, seconds. Default 60.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub ttl: Option<i64>,
}

/// A CA issuer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaIssuer {
    /// The Secret (`tls.crt` = the CA certificate, `tls.key` = its key) in the issuer's namespace
    /// (ClusterIssuer: the cluster-resource namespace).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A self-signed issuer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct SelfSignedIssuer {}

/// What ferrite-certs observed of an issuer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    /// `Ready`, with reasons from [`conditions`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// ACME: the registered account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme: Option<AcmeIssuerStatus>,
}

/// The ACME account of an issuer.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcmeIssuerStatus {
    /// The account's URI at the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// The contact address the account was registered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_registered_email: Option<String>,
}

// ---------------------------------------------------------------------------------------------------
// Challenge

/// One ACME challenge being solved, created by ferrite-certs and owned by its Certificate. ferrite-ingress
/// serves HTTP-01 tokens from these; people read them to see where an issuance is stuck.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "certs.ferrite.dev",
    version = "v1alpha1",
    kind = "Challenge",
    plural = "challenges",
    category = "ferrite",
    namespaced,
    status = "ChallengeStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.dnsName"}"#,
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.reason","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeSpec {
    /// `HTTP-01` or `DNS-01`.
    #[serde(rename = "type")]
    pub challenge_type: ChallengeType,
    /// The name being validated (without `*.` for a wildcard).
    pub dns_name: String,
    /// The authorization is for `*.<dnsName>`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wildcard: bool,
    /// The challenge token (HTTP-01: the last path segment).
    pub token: String,
    /// The key authorization: HTTP-01 serves it as the response body; DNS-01 publishes its SHA-256
    /// digest (base64url) as the TXT value.
    pub key: String,
    /// The challenge's URL at the CA.
    pub url: String,
    /// The authorization's URL at the CA.
    #[serde(rename = "authorizationURL")]
    pub authorization_url: String,
    /// The issuer that placed the order.
    pub issuer_ref: IssuerRef,
    /// HTTP-01: the IngressClass the token must be served through (from the solver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
}

/// Challenge types ferrite-certs solves.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ChallengeType {
    /// HTTP-01.
    #[serde(rename = "HTTP-01")]
    Http01,
    /// DNS-01.
    #[serde(rename = "DNS-01")]
    Dns01,
}

/// Where a Challenge is.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeStatus {
    /// The ACME state: `pending`, `processing`, `valid`, `invalid`, or `errored` (ours: presenting failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The token is published (Ingress route, TXT record) and the self-check passed or was skipped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub presented: bool,
    /// The CA was asked to validate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub processing: bool,
    /// Why the challenge is where it is (self-check result, the CA's problem detail, bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl IssuerConfig {
    /// The issuer's kind of configuration, or why it has none or several.
    pub fn which(&self) -> Result<&'static str, String> {
        let set: Vec<&'static str> = [
            self.acme.as_ref().map(|_| "acme"),
            self.ca.as_ref().map(|_| "ca"),
            self.self_signed.as_ref().map(|_| "selfSigned"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match set.as_slice() {
            [one] => Ok(one),
            [] => Err("exactly one of acme, ca and selfSigned must be set; none is".to_string()),
            many => Err(format!(
                "exactly one of acme, ca and selfSigned must be set; {} are",
                many.join(" and ")
            )),
        }
    }
}

impl IssuerRef {
    /// The group, if it is one ferrite-certs serves (`certs.ferrite.dev`, `cert-manager.io`, or absent).
    pub fn group_is_ours(&self) -> bool {
        matches!(
            self.group.as_deref(),
            None | Some("") | Some(GROUP) | Some("cert-manager.io")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    #[test]
    fn cert_manager_certificate_ports_by_changing_the_api_version() {
        // cert-manager's documentation example (apiVersion aside).
        let spec: CertificateSpec = serde_json::from_value(json!({
            "secretName": "example-com-tls",
            "duration": "2160h",
            "renewBefore": "360h",
            "isCA": false,
            "privateKey": {"algorithm": "RSA", "encoding": "PKCS1", "size": 2048, "rotationPolicy": "Always"},
            "subject": {"organizations": ["jetstack"]},
            "commonName": "example.com",
            "dnsNames": ["example.com", "www.example.com"],
            "ipAddresses": ["192.168.0.5"],
            "issuerRef": {"name": "ca-issuer", "kind": "Issuer", "group": "cert-manager.io"}
        }))
        .expect("cert-manager example parses");
        assert_eq!(spec.issuer_ref.kind, IssuerKind::Issuer);
        assert!(spec.issuer_ref.group_is_ours());
        let pk = spec.private_key.as_ref().expect("privateKey");
        assert_eq!(pk.algorithm, Some(KeyAlgorithm::Rsa));
        assert_eq!(pk.encoding, Some(KeyEncoding::Pkcs1));
        assert_eq!(pk.rotation_policy, Some(RotationPolicy::Always));
        let v = serde_json::to_value(&spec).expect("serializes");
        assert_eq!(v["privateKey"]["algorithm"], "RSA");
        assert_eq!(v["issuerRef"]["kind"], "Issuer");
        assert!(v.get("isCA").is_none(), "false isCA is omitted: {v}");
        let back: CertificateSpec = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, spec);
    }

    #[test]
    fn issuer_configs() {
        let acme: IssuerSpec = serde_json::from_value(json!({"acme": {
            "server": "https://acme-staging-v02.api.letsencrypt.org/directory",
            "email": "ops@example.com",
            "privateKeySecretRef": {"name": "le-staging"},
            "externalAccountBinding": {"keyID": "kid-1", "keySecretRef": {"name": "eab", "key": "secret"}},
            "skipTLSVerify": true,
            "solvers": [
                {"http01": {"ingress": {"ingressClassName": "ferrite"}}},
                {"selector": {"dnsZones": ["example.com"]}, "dns01": {"rfc2136": {
                    "nameserver": "192.0.2.53:53", "tsigKeyName": "k",
                    "tsigSecretSecretRef": {"name": "tsig", "key": "secret"}, "tsigAlgorithm": "HMACSHA256"}}},
                {"selector": {"dnsNames": ["*.apps.example.com"]}, "dns01": {"ferriteDNS": {}}}
            ]
        }}))
        .expect("acme issuer parses");
        assert_eq!(acme.config.which(), Ok("acme"));
        let a = acme.config.acme.as_ref().expect("acme");
        assert!(a.skip_tls_verify);
        assert_eq!(a.solvers.len(), 3);
        assert!(
            a.solvers[2]
                .dns01
                .as_ref()
                .and_then(|d| d.ferrite_dns.as_ref())
                .is_some()
        );
        let v = serde_json::to_value(&acme).expect("serializes");
        assert_eq!(v["acme"]["skipTLSVerify"], true);
        assert_eq!(v["acme"]["externalAccountBinding"]["keyID"], "kid-1");
        assert_eq!(v["acme"]["solvers"][2]["dns01"]["ferriteDNS"], json!({}));

        let ss: ClusterIssuerSpec = serde_json::from_value(json!({"selfSigned": {}})).expect("selfSigned");
        assert_eq!(ss.config.which(), Ok("selfSigned"));
        let ca: IssuerSpec = serde_json::from_value(json!({"ca": {"secretName": "root"}})).expect("ca");
        assert_eq!(ca.config.which(), Ok("ca"));
        let none: IssuerSpec = serde_json::from_value(json!({})).expect("empty parses");
        assert!(none.config.which().unwrap_err().contains("none"));
        let two: IssuerSpec =
            serde_json::from_value(json!({"ca": {"secretName": "r"}, "selfSigned": {}})).expect("two parse");
        assert!(two.config.which().unwrap_err().contains("ca and selfSigned"));
    }

    #[test]
    fn challenge_spelling() {
        let c: ChallengeSpec = serde_json::from_value(json!({
            "type": "HTTP-01", "dnsName": "example.com", "token": "t", "key": "t.k",
            "url": "https://ca/chall/1", "authorizationURL": "https://ca/authz/1",
            "issuerRef": {"name": "le", "kind": "ClusterIssuer"}
        }))
        .expect("challenge parses");
        assert_eq!(c.challenge_type, ChallengeType::Http01);
        assert_eq!(c.issuer_ref.kind, IssuerKind::ClusterIssuer);
        let v = serde_json::to_value(&c).expect("serializes");
        assert_eq!(v["type"], "HTTP-01");
        assert_eq!(v["authorizationURL"], "https://ca/authz/1");
    }

    #[test]
    fn duration_pattern() {
        let re = regex::Regex::new(DURATION_PATTERN).expect("pattern compiles");
        let re = |s: &str| re.is_match(s);
        for ok in ["2160h", "1h30m", "90m", "45s", "1.5h", "100ms"] {
            assert!(re(ok), "{ok} should match");
        }
        for bad in ["", "90d", "h", "1 h", "-1h", "2160"] {
            assert!(!re(bad), "{bad} should not match");
        }
    }

    #[test]
    fn crds_are_named_and_scoped() {
        for (crd, name, scope) in [
            (Certificate::crd(), "certificates.certs.ferrite.dev", "Namespaced"),
            (Issuer::crd(), "issuers.certs.ferrite.dev", "Namespaced"),
            (
                ClusterIssuer::crd(),
                "clusterissuers.certs.ferrite.dev",
                "Cluster",
            ),
            (Challenge::crd(), "challenges.certs.ferrite.dev", "Namespaced"),
        ] {
            assert_eq!(crd.metadata.name.as_deref(), Some(name));
            assert_eq!(crd.spec.scope, scope);
            let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
            let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
            assert!(spec.is_object(), "{name}: spec schema present");
        }
        let schema = serde_json::to_value(&Certificate::crd().spec.versions[0].schema).expect("schema");
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        let required: Vec<&str> = spec["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert!(
            required.contains(&"secretName") && required.contains(&"issuerRef"),
            "{required:?}"
        );
        assert_eq!(spec["properties"]["duration"]["pattern"], DURATION_PATTERN);
    }
}
