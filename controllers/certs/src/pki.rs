//! Keys, CSRs and certificates, with no Kubernetes and no I/O.
//!
//! What this module owns, and how a controller uses it:
//!
//! ```text
//!  KeySpec ──generate──▶ PrivateKey ──to_pem(encoding)──▶ tls.key
//!                 tls.key ──PrivateKey::from_pem──▶ PrivateKey   (reuse under rotationPolicy Never)
//!  PrivateKey + Names ──csr_der──▶ CSR DER  ──▶ ACME finalize (acme.rs)
//!  PrivateKey + CertificateSpec ──self_signed──────────────▶ SignedCertificate
//!  PrivateKey + CertificateSpec + CaIssuer ──ca_signed──────▶ SignedCertificate
//!  tls.crt + tls.key ──parse_tls_secret──▶ TlsSecret { chain: [CertInfo], key } ──▶ renewal.rs
//! ```
//!
//! Keys follow cert-manager's `spec.privateKey`: RSA (default, 2048 bits), ECDSA (P-256 default,
//! P-384, P-521) and Ed25519; encoding PKCS#1 (cert-manager's default: `RSA PRIVATE KEY` for RSA,
//! SEC1 `EC PRIVATE KEY` for ECDSA, PKCS#8 for Ed25519, which has no other form) or PKCS#8
//! (`PRIVATE KEY`). Signing and key generation are rcgen on aws-lc-rs; the encodings rcgen does not
//! write come from aws-lc-rs directly (SEC1) or from unwrapping the PKCS#8 envelope (PKCS#1).
//!
//! Certificates follow cert-manager's defaults: key usages digital signature (plus key
//! encipherment for RSA), extended key usages server auth and client auth, a random positive
//! 128-bit serial, `notBefore` backdated by [`BACKDATE`] against clock skew, `notAfter` = now +
//! duration (clamped to the CA's own `notAfter`).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, PublicKeyData as _, SanType, SerialNumber,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;
use x509_parser::x509::SubjectPublicKeyInfo;

/// How far `notBefore` is set before "now", so a peer whose clock is a little behind accepts a
/// certificate issued a moment ago.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// The `kubernetes.io/tls` Secret keys.
pub const TLS_CRT: &str = "tls.crt";
/// See [`TLS_CRT`].
pub const TLS_KEY: &str = "tls.key";

const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_PKCS8: &str = "PRIVATE KEY";
const PEM_PKCS1_RSA: &str = "RSA PRIVATE KEY";
const PEM_SEC1_EC: &str = "EC PRIVATE KEY";

/// Errors of this module. Each names what was wrong; [`PkiError::reason`] gives a short stable
/// reason for conditions, Events and metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PkiError {
    #[error("privateKey.size {size} is invalid for {algorithm}: {allowed}")]
    InvalidKeySize {
        algorithm: KeyAlgorithm,
        size: u32,
        allowed: &'static str,
    },
    #[error("{what} is missing")]
    Missing { what: String },
    #[error("{what} is not PEM: {detail}")]
    NotPem { what: String, detail: String },
    #[error("{what} holds a PEM block {label:?} where a certificate (\"CERTIFICATE\") was expected")]
    NotACertificate { what: String, label: String },
    #[error("{what}: certificate {index} of the chain cannot be parsed: {detail}")]
    InvalidCertificate {
        what: String,
        index: usize,
        detail: String,
    },
    #[error(
        "{what} holds a PEM block {label:?} where a private key (\"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\") was expected"
    )]
    NotAPrivateKey { what: String, label: String },
    #[error("{what} holds more than one private key")]
    MultipleKeys { what: String },
    #[error("{what} is an encrypted private key; store it unencrypted")]
    EncryptedKey { what: String },
    #[error("{what} cannot be parsed as a {encoding} private key: {detail}")]
    InvalidKey {
        what: String,
        encoding: &'static str,
        detail: String,
    },
    #[error("{what}: the private key does not match the certificate's public key")]
    KeyMismatch { what: String },
    #[error("spec.subject.{field}: {detail}")]
    InvalidSubject { field: String, detail: String },
    #[error("the CA certificate {subject:?} is not a CA (basicConstraints CA:TRUE is missing)")]
    NotACa { subject: String },
    #[error("the CA certificate {subject:?} has a keyUsage without keyCertSign")]
    CaCannotSign { subject: String },
    #[error("the CA certificate {subject:?} expired at {not_after}")]
    CaExpired { subject: String, not_after: Timestamp },
    #[error("the certificate expired at {not_after}")]
    Expired { not_after: Timestamp },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: Timestamp },
    #[error("no names: set at least one of dnsNames, ipAddresses or commonName")]
    NoNames,
    #[error("dnsNames entry {name:?} is not a valid DNS name: {detail}")]
    InvalidDnsName { name: String, detail: String },
    #[error("commonName {name:?} is invalid: {detail}")]
    InvalidCommonName { name: String, detail: String },
    #[error("duration {duration:?} is out of range for a certificate")]
    InvalidDuration { duration: Duration },
    #[error("generating a {what} failed: {detail}")]
    Generate { what: String, detail: String },
    #[error("signing failed: {detail}")]
    Sign { detail: String },
}

impl PkiError {
    /// A short, stable reason (CamelCase, like Kubernetes condition reasons).
    pub fn reason(&self) -> &'static str {
        match self {
            PkiError::InvalidKeySize { .. } => "InvalidKeySize",
            PkiError::Missing { .. } => "MissingData",
            PkiError::NotPem { .. } => "NotPEM",
            PkiError::NotACertificate { .. } => "NotACertificate",
            PkiError::InvalidCertificate { .. } => "InvalidCertificate",
            PkiError::NotAPrivateKey { .. } => "NotAPrivateKey",
            PkiError::MultipleKeys { .. } => "MultiplePrivateKeys",
            PkiError::EncryptedKey { .. } => "EncryptedPrivateKey",
            PkiError::InvalidKey { .. } => "InvalidPrivateKey",
            PkiError::KeyMismatch { .. } => "InvalidKeyPair",
            PkiError::NotACa { .. } => "NotACA",
            PkiError::CaCannotSign { .. } => "CACannotSign",
            PkiError::CaExpired { .. } => "CAExpired",
            PkiError::Expired { .. } => "Expired",
            PkiError::NotYetValid { .. } => "NotYetValid",
            PkiError::NoNames => "NoNames",
            PkiError::InvalidDnsName { .. } => "InvalidDNSName",
            PkiError::InvalidCommonName { .. } => "InvalidCommonName",
            PkiError::InvalidSubject { .. } => "InvalidSubject",
            PkiError::InvalidDuration { .. } => "InvalidDuration",
            PkiError::Generate { .. } => "KeyGenerationFailed",
            PkiError::Sign { .. } => "SigningFailed",
        }
    }
}

/// `spec.privateKey.algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// cert-manager's default.
    #[default]
    Rsa,
    Ecdsa,
    Ed25519,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::Rsa => "RSA",
            KeyAlgorithm::Ecdsa => "ECDSA",
            KeyAlgorithm::Ed25519 => "Ed25519",
        })
    }
}

/// `spec.privateKey.encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyEncoding {
    /// cert-manager's default: PKCS#1 for RSA, SEC1 for ECDSA, PKCS#8 for Ed25519.
    #[default]
    Pkcs1,
    Pkcs8,
}

/// `spec.privateKey` without the rotation policy (see `renewal::RotationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeySpec {
    pub algorithm: KeyAlgorithm,
    /// Bits for RSA, curve size for ECDSA; `None` (or 0, as cert-manager treats it) = default.
    /// Ignored for Ed25519, as cert-manager ignores it.
    pub size: Option<u32>,
    pub encoding: KeyEncoding,
}

/// RSA sizes aws-lc-rs generates. cert-manager accepts any size in 2048..=8192; the sizes
/// in that range aws-lc-rs cannot generate are rejected with a message listing these.
const RSA_SIZES: [u32; 4] = [2048, 3072, 4096, 8192];

impl KeySpec {
    /// The size this spec asks for after defaults (RSA 2048, ECDSA 256), `None` for Ed25519,
    /// or the reason the size is not allowed.
    pub fn effective_size(&self) -> Result<Option<u32>, PkiError> {
        let size = self.size.filter(|s| *s != 0);
        match self.algorithm {
            KeyAlgorithm::Rsa => {
                let size = size.unwrap_or(2048);
                if !(2048..=8192).contains(&size) {
                    return Err(PkiError::InvalidKeySize {
                        algorithm: self.algorithm,
                        size,
                        allowed: "must be between 2048 and 8192 for RSA",
                    });
                }
                if !RSA_SIZES.contains(&size) {
                    return Err(PkiError::InvalidKeySize {
                        algorithm: self.algorithm,
                        size,
                        allowed: "ferrite-certs generates RSA keys of 2048, 3072, 4096 or 8192 bits",
                    });
                }
                Ok(Some(size))
            }
            KeyAlgorithm::Ecdsa => {
                let size = size.unwrap_or(256);
                if ![256, 384, 521].contains(&size) {
                    return Err(PkiError::InvalidKeySize {
                        algorithm: self.algorithm,
                        size,
                        allowed: "must be 256, 384 or 521 for ECDSA",
                    });
                }
                Ok(Some(size))
            }
            KeyAlgorithm::Ed25519 => Ok(None),
        }
    }

    /// Validates the spec (the size) without generating anything.
    pub fn validate(&self) -> Result<(), PkiError> {
        self.effective_size().map(|_| ())
    }
}

/// A private key with its algorithm and size; signs CSRs and certificates.
pub struct PrivateKey {
    key_pair: KeyPair,
    algorithm: KeyAlgorithm,
    size: Option<u32>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a new key for `spec` (validated first).
    pub fn generate(spec: &KeySpec) -> Result<Self, PkiError> {
        let size = spec.effective_size()?;
        let generate_err = |detail: String| PkiError::Generate {
            what: format!("{} key", spec.algorithm),
            detail,
        };
        let key_pair = match (spec.algorithm, size) {
            (KeyAlgorithm::Rsa, Some(bits)) => {
                let key_size = match bits {
                    2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                    _ => aws_lc_rs::rsa::KeySize::Rsa8192,
                };
                let rsa =
                    aws_lc_rs::rsa::KeyPair::generate(key_size).map_err(|e| generate_err(e.to_string()))?;
                let pkcs8 = rsa.as_der().map_err(|e| generate_err(e.to_string()))?;
                key_pair_from_pkcs8(pkcs8.as_ref()).map_err(generate_err)?
            }
            (KeyAlgorithm::Ecdsa, Some(256)) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(|e| generate_err(e.to_string()))?,
            (KeyAlgorithm::Ecdsa, Some(384)) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
                .map_err(|e| generate_err(e.to_string()))?,
            // Go's x509 (cert-manager) signs with SHA-512 on P-521, as does rcgen's parser.
            (KeyAlgorithm::Ecdsa, _) => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P521_SHA512)
                .map_err(|e| generate_err(e.to_string()))?,
            (KeyAlgorithm::Rsa, None) | (KeyAlgorithm::Ed25519, _) => {
                // rcgen would keep aws-lc-rs's PKCS#8 v2 encoding, which OpenSSL 3 refuses to
                // load; v1 is what OpenSSL and Go write.
                let ed = aws_lc_rs::signature::Ed25519KeyPair::generate()
                    .map_err(|e| generate_err(e.to_string()))?;
                let v1 = ed.to_pkcs8v1().map_err(|e| generate_err(e.to_string()))?;
                key_pair_from_pkcs8(v1.as_ref()).map_err(generate_err)?
            }
        };
        Self::from_key_pair(key_pair).map_err(generate_err)
    }

    /// Parses `tls.key` (or a CA's key): the first private key block of `pem`, in PKCS#8
    /// (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`). `EC PARAMETERS`
    /// blocks (written by `openssl ecparam -genkey`) are skipped.
    pub fn from_pem(pem: &[u8]) -> Result<Self, PkiError> {
        Self::from_pem_named(pem, TLS_KEY)
    }

    /// Like [`PrivateKey::from_pem`], naming the input `what` in errors (e.g. "CA Secret tls.key").
    pub fn from_pem_named(pem: &[u8], what: &str) -> Result<Self, PkiError> {
        let blocks = pem_blocks(pem, what)?;
        let mut keys = blocks.iter().filter(|(label, _)| label != "EC PARAMETERS");
        let Some((label, der)) = keys.next() else {
            return Err(PkiError::Missing {
                what: format!("{what} private key"),
            });
        };
        if keys.next().is_some() {
            return Err(PkiError::MultipleKeys { what: what.into() });
        }
        let invalid = |encoding: &'static str, detail: String| PkiError::InvalidKey {
            what: what.into(),
            encoding,
            detail,
        };
        let pkcs8: Vec<u8> = match label.as_str() {
            PEM_PKCS8 => der.clone(),
            PEM_PKCS1_RSA => aws_lc_rs::rsa::KeyPair::from_der(der)
                .map_err(|e| invalid("PKCS#1 RSA", e.to_string()))?
                .as_der()
                .map_err(|e| invalid("PKCS#1 RSA", e.to_string()))?
                .as_ref()
                .to_vec(),
            PEM_SEC1_EC => sec1_to_pkcs8(der).map_err(|e| invalid("SEC1 EC", e))?,
            "ENCRYPTED PRIVATE KEY" => return Err(PkiError::EncryptedKey { what: what.into() }),
            other => {
                return Err(PkiError::NotAPrivateKey {
                    what: what.into(),
                    label: other.into(),
                });
            }
        };
        let key_pair = key_pair_from_pkcs8(&pkcs8).map_err(|e| invalid("PKCS#8", e))?;
        Self::from_key_pair(key_pair).map_err(|e| invalid("PKCS#8", e))
    }

    fn from_key_pair(key_pair: KeyPair) -> Result<Self, String> {
        let alg = key_pair.algorithm();
        let (algorithm, size) = if alg == &rcgen::PKCS_ED25519 {
            (KeyAlgorithm::Ed25519, None)
        } else if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            (KeyAlgorithm::Ecdsa, Some(256))
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            (KeyAlgorithm::Ecdsa, Some(384))
        } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
            (KeyAlgorithm::Ecdsa, Some(521))
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            let rsa =
                aws_lc_rs::rsa::KeyPair::from_pkcs8(key_pair.serialized_der()).map_err(|e| e.to_string())?;
            let bits = u32::try_from(rsa.public_modulus_len() * 8).map_err(|e| e.to_string())?;
            (KeyAlgorithm::Rsa, Some(bits))
        } else {
            return Err(format!("unsupported key algorithm {alg:?}"));
        };
        Ok(PrivateKey {
            key_pair,
            algorithm,
            size,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// RSA modulus bits or ECDSA curve size; `None` for Ed25519.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    /// Whether this key is what `spec` asks for (algorithm and size; the encoding is only how it
    /// is written). An invalid spec matches nothing.
    pub fn matches_spec(&self, spec: &KeySpec) -> bool {
        match spec.effective_size() {
            Ok(size) => spec.algorithm == self.algorithm && size == self.size,
            Err(_) => false,
        }
    }

    /// The key's algorithm and size, without the key.
    pub fn info(&self) -> KeyInfo {
        KeyInfo {
            algorithm: self.algorithm,
            size: self.size,
        }
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// The key as PEM in `encoding` (see [`KeyEncoding`]).
    pub fn to_pem(&self, encoding: KeyEncoding) -> Result<String, PkiError> {
        let pkcs8 = self.key_pair.serialized_der();
        let err = |detail: String| PkiError::Generate {
            what: format!("{encoding:?} encoding of the {} key", self.algorithm),
            detail,
        };
        Ok(match (encoding, self.algorithm) {
            (_, KeyAlgorithm::Ed25519) => {
                // Always PKCS#8 v1 (see `generate`), whatever version was parsed.
                let ed = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|e| err(e.to_string()))?;
                let v1 = ed.to_pkcs8v1().map_err(|e| err(e.to_string()))?;
                pem_encode(PEM_PKCS8, v1.as_ref())
            }
            (KeyEncoding::Pkcs8, _) => pem_encode(PEM_PKCS8, pkcs8),
            (KeyEncoding::Pkcs1, KeyAlgorithm::Rsa) => {
                pem_encode(PEM_PKCS1_RSA, pkcs8_inner_key(pkcs8).map_err(err)?)
            }
            (KeyEncoding::Pkcs1, KeyAlgorithm::Ecdsa) => {
                let alg = ec_signing_alg(self.size);
                let ec = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8)
                    .map_err(|e| err(e.to_string()))?;
                let sec1 = ec.private_key().as_der().map_err(|e| err(e.to_string()))?;
                pem_encode(PEM_SEC1_EC, sec1.as_ref())
            }
        })
    }
}

fn ec_signing_alg(size: Option<u32>) -> &'static aws_lc_rs::signature::EcdsaSigningAlgorithm {
    match size {
        Some(384) => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        Some(521) => &aws_lc_rs::signature::ECDSA_P521_SHA512_ASN1_SIGNING,
        _ => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
    }
}

fn key_pair_from_pkcs8(pkcs8: &[u8]) -> Result<KeyPair, String> {
    KeyPair::try_from(pkcs8).map_err(|e| e.to_string())
}

/// SEC1 carries its curve in `parameters`; aws-lc-rs checks it against the curve it is asked
/// for, so trying the three curves finds the right one.
fn sec1_to_pkcs8(der: &[u8]) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for alg in [Some(256), Some(384), Some(521)].map(ec_signing_alg) {
        match aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(alg, der) {
            Ok(kp) => {
                return kp
                    .to_pkcs8v1()
                    .map(|d| d.as_ref().to_vec())
                    .map_err(|e| e.to_string());
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("not a P-256, P-384 or P-521 key ({last})"))
}

/// One DER TLV: (tag, content, rest).
fn der_tlv(input: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = input.split_first().ok_or("truncated DER")?;
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("DER content shorter than its length".into());
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The `privateKey` OCTET STRING of a PKCS#8 PrivateKeyInfo (RFC 5208): for RSA that is the
/// PKCS#1 RSAPrivateKey.
fn pkcs8_inner_key(pkcs8: &[u8]) -> Result<&[u8], String> {
    let (tag, seq, _) = der_tlv(pkcs8)?;
    if tag != 0x30 {
        return Err("PKCS#8 is not a SEQUENCE".into());
    }
    let (tag, _version, rest) = der_tlv(seq)?;
    if tag != 0x02 {
        return Err("PKCS#8 version is not an INTEGER".into());
    }
    let (tag, _alg, rest) = der_tlv(rest)?;
    if tag != 0x30 {
        return Err("PKCS#8 algorithm is not a SEQUENCE".into());
    }
    let (tag, key, _) = der_tlv(rest)?;
    if tag != 0x04 {
        return Err("PKCS#8 privateKey is not an OCTET STRING".into());
    }
    Ok(key)
}

/// PEM text for one block, 64 columns, LF line endings.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// All PEM blocks of `input` as (label, DER). Empty input is [`PkiError::Missing`], input with
/// no PEM block is [`PkiError::NotPem`].
fn pem_blocks(input: &[u8], what: &str) -> Result<Vec<(String, Vec<u8>)>, PkiError> {
    if input.iter().all(u8::is_ascii_whitespace) {
        return Err(PkiError::Missing { what: what.into() });
    }
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(input) {
        let block = block.map_err(|e| PkiError::NotPem {
            what: what.into(),
            detail: e.to_string(),
        })?;
        out.push((block.label, block.contents));
    }
    if out.is_empty() {
        return Err(PkiError::NotPem {
            what: what.into(),
            detail: "no \"-----BEGIN\" block".into(),
        });
    }
    Ok(out)
}

/// Splits a PEM certificate chain into DER certificates, in order. Every block must be a
/// `CERTIFICATE` and parse as X.509.
pub fn split_pem_chain(pem: &[u8], what: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let blocks = pem_blocks(pem, what)?;
    let mut out = Vec::with_capacity(blocks.len());
    for (index, (label, der)) in blocks.into_iter().enumerate() {
        if label != PEM_CERTIFICATE {
            return Err(PkiError::NotACertificate {
                what: what.into(),
                label,
            });
        }
        X509Certificate::from_der(&der).map_err(|e| PkiError::InvalidCertificate {
            what: what.into(),
            index,
            detail: e.to_string(),
        })?;
        out.push(der);
    }
    Ok(out)
}

/// The names a certificate or CSR is for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub common_name: Option<String>,
    /// Subject attributes besides the common name (`spec.subject`).
    pub subject: SubjectFields,
}

/// Subject attributes besides the common name (`spec.subject`). rcgen writes one value per attribute
/// type, so each list holds at most one value ([`SubjectFields::validate`]); cert-manager's lists of
/// several organizations are refused with a message rather than cut short.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubjectFields {
    /// O.
    pub organizations: Vec<String>,
    /// OU.
    pub organizational_units: Vec<String>,
    /// C.
    pub countries: Vec<String>,
    /// L.
    pub localities: Vec<String>,
    /// ST.
    pub provinces: Vec<String>,
}

impl SubjectFields {
    /// The fields as (spec field name, DN attribute type, values).
    fn entries(&self) -> [(&'static str, DnType, &[String]); 5] {
        [
            ("organizations", DnType::OrganizationName, &self.organizations),
            (
                "organizationalUnits",
                DnType::OrganizationalUnitName,
                &self.organizational_units,
            ),
            ("countries", DnType::CountryName, &self.countries),
            ("localities", DnType::LocalityName, &self.localities),
            ("provinces", DnType::StateOrProvinceName, &self.provinces),
        ]
    }

    /// At most one non-empty value of at most 64 characters per attribute; countries are two letters.
    pub fn validate(&self) -> Result<(), PkiError> {
        for (field, _, values) in self.entries() {
            let bad = |detail: String| PkiError::InvalidSubject {
                field: field.to_string(),
                detail,
            };
            if values.len() > 1 {
                return Err(bad(format!(
                    "{} values given; one value per attribute is supported",
                    values.len()
                )));
            }
            for v in values {
                if v.trim().is_empty() || v.chars().count() > 64 {
                    return Err(bad(format!("{v:?} must be 1 to 64 characters")));
                }
                if field == "countries" && !(v.len() == 2 && v.bytes().all(|b| b.is_ascii_alphabetic())) {
                    return Err(bad(format!("{v:?} is not a two-letter ISO 3166 country code")));
                }
            }
        }
        Ok(())
    }

    /// Whether no attribute is set.
    pub fn is_empty(&self) -> bool {
        self.entries().iter().all(|(_, _, v)| v.is_empty())
    }
}

impl Names {
    fn is_empty(&self) -> bool {
        self.dns_names.is_empty()
            && self.ip_addresses.is_empty()
            && self.common_name.as_deref().is_none_or(str::is_empty)
    }

    /// Validates and applies the names to rcgen params (subject CN and SANs).
    fn apply(&self, params: &mut CertificateParams) -> Result<(), PkiError> {
        if self.is_empty() {
            return Err(PkiError::NoNames);
        }
        let mut dn = DistinguishedName::new();
        if let Some(cn) = self.common_name.as_deref().filter(|c| !c.is_empty()) {
            // RFC 5280's ub-common-name: 64 characters.
            if cn.chars().count() > 64 {
                return Err(PkiError::InvalidCommonName {
                    name: cn.into(),
                    detail: "longer than 64 characters".into(),
                });
            }
            dn.push(DnType::CommonName, cn);
        }
        self.subject.validate()?;
        for (_, ty, values) in self.subject.entries() {
            if let Some(v) = values.first() {
                dn.push(ty, v.as_str());
            }
        }
        params.distinguished_name = dn;
        params.subject_alt_names.clear();
        for name in &self.dns_names {
            validate_dns_name(name)?;
            let ia5 =
                rcgen::string::Ia5String::try_from(name.as_str()).map_err(|e| PkiError::InvalidDnsName {
                    name: name.clone(),
                    detail: e.to_string(),
                })?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        for ip in &self.ip_addresses {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        Ok(())
    }
}

/// A DNS name as a SAN: ASCII (IDNs in their `xn--` form), labels of 1..=63 letters, digits
/// and hyphens, an optional leading `*.` wildcard, at most 253 characters.
fn validate_dns_name(name: &str) -> Result<(), PkiError> {
    let bad = |detail: &str| PkiError::InvalidDnsName {
        name: name.into(),
        detail: detail.into(),
    };
    let host = name.strip_suffix('.').unwrap_or(name);
    if host.is_empty() {
        return Err(bad("empty"));
    }
    if host.len() > 253 {
        return Err(bad("longer than 253 characters"));
    }
    let host = host.strip_prefix("*.").unwrap_or(host);
    for label in host.split('.') {
        if label.is_empty() {
            return Err(bad("has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("has a label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "may hold only letters, digits, '-' and a leading '*.' (write IDNs as xn--)",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("has a label that starts or ends with '-'"));
        }
    }
    Ok(())
}

/// A CSR (DER) for `names`, signed by `key`: what ACME's finalize takes.
pub fn csr_der(key: &PrivateKey, names: &Names) -> Result<Vec<u8>, PkiError> {
    let mut params = CertificateParams::default();
    names.apply(&mut params)?;
    let csr = params
        .serialize_request(&key.key_pair)
        .map_err(|e| PkiError::Sign {
            detail: e.to_string(),
        })?;
    Ok(csr.der().to_vec())
}

/// What to put in a self-signed or CA-signed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSpec {
    pub names: Names,
    /// `spec.duration`; the certificate ends at now + duration (clamped to the CA's end).
    pub duration: Duration,
    /// `spec.isCA`: basicConstraints CA:TRUE and keyCertSign, and no extended key usages.
    pub is_ca: bool,
}

/// A certificate as the Secret stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCertificate {
    /// `tls.crt`: the leaf, then the intermediates of the issuing CA (not a self-signed root).
    pub certificate_pem: String,
    /// `ca.crt`: the top of the chain (the CA itself for a self-signed root); for a
    /// self-signed certificate, the certificate itself (as cert-manager does).
    pub ca_pem: String,
    /// The leaf, parsed.
    pub info: CertInfo,
}

/// A CA from a CA issuer's Secret: its certificate chain (CA first), its key, checked to match.
pub struct CaIssuer {
    chain: Vec<Vec<u8>>,
    info: CertInfo,
    key: PrivateKey,
}

impl fmt::Debug for CaIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaIssuer")
            .field("subject", &self.info.subject)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl CaIssuer {
    /// The CA Secret's `tls.crt` (the CA certificate first, optionally its own chain) and
    /// `tls.key`. Errors if either is missing or invalid, the certificate is not a CA, may not
    /// sign certificates (keyUsage without keyCertSign), or the key does not match.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, PkiError> {
        let chain = split_pem_chain(cert_pem, "CA Secret tls.crt")?;
        let info = parse_certificate_der(&chain[0], "CA Secret tls.crt")?;
        let key = PrivateKey::from_pem_named(key_pem, "CA Secret tls.key")?;
        if !info.is_ca {
            return Err(PkiError::NotACa {
                subject: info.subject.clone(),
            });
        }
        if !info.can_sign_certificates {
            return Err(PkiError::CaCannotSign {
                subject: info.subject.clone(),
            });
        }
        if !key_matches(&info, &key) {
            return Err(PkiError::KeyMismatch {
                what: "CA Secret".into(),
            });
        }
        Ok(CaIssuer { chain, info, key })
    }

    /// The CA certificate, parsed.
    pub fn info(&self) -> &CertInfo {
        &self.info
    }
}

/// rcgen takes `time::OffsetDateTime`; x509-parser converts from a Unix timestamp, so no
/// direct `time` dependency is needed (the type is never named here).
fn set_validity(
    params: &mut CertificateParams,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<(), PkiError> {
    let convert = |ts: Timestamp| {
        x509_parser::time::ASN1Time::from_timestamp(ts.as_second()).map_err(|e| PkiError::Sign {
            detail: format!("time {ts} out of range: {e}"),
        })
    };
    params.not_before = convert(not_before)?.to_datetime();
    params.not_after = convert(not_after)?.to_datetime();
    Ok(())
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    use aws_lc_rs::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Sign {
            detail: "no randomness for the serial number".into(),
        })?;
    // Positive (top bit clear) and never zero, as RFC 5280 4.1.2.2 requires.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn certificate_params(
    key: &PrivateKey,
    spec: &CertificateSpec,
    now: Timestamp,
    not_after_limit: Option<Timestamp>,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    spec.names.apply(&mut params)?;
    let bad_duration = || PkiError::InvalidDuration {
        duration: spec.duration,
    };
    let duration = jiff::SignedDuration::try_from(spec.duration).map_err(|_| bad_duration())?;
    if duration.is_zero() {
        return Err(bad_duration());
    }
    let backdate = jiff::SignedDuration::try_from(BACKDATE).map_err(|_| bad_duration())?;
    let not_before = now.checked_sub(backdate).map_err(|_| bad_duration())?;
    let mut not_after = now.checked_add(duration).map_err(|_| bad_duration())?;
    if let Some(limit) = not_after_limit {
        not_after = not_after.min(limit);
    }
    set_validity(&mut params, not_before, not_after)?;
    params.serial_number = Some(random_serial()?);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if key.algorithm == KeyAlgorithm::Rsa {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    if spec.is_ca {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        params.key_usages.push(KeyUsagePurpose::CrlSign);
    } else {
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
    }
    Ok(params)
}

/// A self-signed certificate for `key` (the `selfSigned` issuer).
pub fn self_signed(
    key: &PrivateKey,
    spec: &CertificateSpec,
    now: Timestamp,
) -> Result<SignedCertificate, PkiError> {
    let params = certificate_params(key, spec, now, None)?;
    let cert = params.self_signed(&key.key_pair).map_err(|e| PkiError::Sign {
        detail: e.to_string(),
    })?;
    let info = parse_certificate_der(cert.der(), "issued certificate")?;
    let pem = pem_encode(PEM_CERTIFICATE, cert.der());
    Ok(SignedCertificate {
        certificate_pem: pem.clone(),
        ca_pem: pem,
        info,
    })
}

/// A certificate for `key` signed by `ca` (the `ca` issuer). Errors if the CA has expired.
pub fn ca_signed(
    key: &PrivateKey,
    spec: &CertificateSpec,
    ca: &CaIssuer,
    now: Timestamp,
) -> Result<SignedCertificate, PkiError> {
    if ca.info.not_after <= now {
        return Err(PkiError::CaExpired {
            subject: ca.info.subject.clone(),
            not_after: ca.info.not_after,
        });
    }
    let mut params = certificate_params(key, spec, now, Some(ca.info.not_after))?;
    params.use_authority_key_identifier_extension = true;
    let issuer = Issuer::from_ca_cert_der(&ca.chain[0].as_slice().into(), &ca.key.key_pair).map_err(|e| {
        PkiError::Sign {
            detail: format!("CA certificate: {e}"),
        }
    })?;
    let cert = params
        .signed_by(&key.key_pair, &issuer)
        .map_err(|e| PkiError::Sign {
            detail: e.to_string(),
        })?;
    let info = parse_certificate_der(cert.der(), "issued certificate")?;
    // tls.crt: leaf + the CA chain without a self-signed root; ca.crt: the top of the chain.
    let mut chain: Vec<&[u8]> = vec![cert.der().as_ref()];
    chain.extend(ca.chain.iter().map(Vec::as_slice));
    let top = chain[chain.len() - 1];
    let top_info = parse_certificate_der(top, "CA Secret tls.crt")?;
    if chain.len() > 1 && top_info.subject == top_info.issuer {
        chain.pop();
    }
    let certificate_pem = chain.iter().map(|der| pem_encode(PEM_CERTIFICATE, der)).collect();
    Ok(SignedCertificate {
        certificate_pem,
        ca_pem: pem_encode(PEM_CERTIFICATE, top),
        info,
    })
}

/// What a certificate says, for renewal decisions, status and Secret annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub common_name: Option<String>,
    /// The serial as lower-case hex without leading zeros (as `openssl x509 -serial`, lower-cased).
    pub serial: String,
    /// The serial's DER INTEGER content bytes, leading 0x00 included: what RFC 9773's
    /// certificate identifier encodes.
    pub serial_bytes: Vec<u8>,
    /// RFC 4514-style subject and issuer DNs.
    pub subject: String,
    /// The subject's O, OU, C, L and ST attributes.
    pub subject_fields: SubjectFields,
    pub issuer: String,
    pub is_ca: bool,
    /// No keyUsage extension, or one with keyCertSign.
    pub can_sign_certificates: bool,
    /// The authority key identifier's keyIdentifier (RFC 9773 uses it with the serial).
    pub authority_key_id: Option<Vec<u8>>,
    pub subject_key_id: Option<Vec<u8>>,
    /// The SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
    /// The certificate, DER.
    pub der: Vec<u8>,
}

impl CertInfo {
    /// `Ok` when `now` is within notBefore..notAfter.
    pub fn check_valid_at(&self, now: Timestamp) -> Result<(), PkiError> {
        if now >= self.not_after {
            return Err(PkiError::Expired {
                not_after: self.not_after,
            });
        }
        if now < self.not_before {
            return Err(PkiError::NotYetValid {
                not_before: self.not_before,
            });
        }
        Ok(())
    }

    /// Whether `issuer` signed this certificate (the signature verifies with its public key).
    /// `None` when the signature algorithm cannot be checked here (x509-parser's verifier has
    /// no P-521 or Ed25519 signatures).
    pub fn is_signed_by(&self, issuer: &CertInfo) -> Option<bool> {
        let (Ok((_, cert)), Ok((_, spki))) = (
            X509Certificate::from_der(&self.der),
            SubjectPublicKeyInfo::from_der(&issuer.public_key_der),
        ) else {
            return Some(false);
        };
        match cert.verify_signature(Some(&spki)) {
            Ok(()) => Some(true),
            Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm) => None,
            Err(_) => Some(false),
        }
    }
}

/// Parses one DER certificate.
pub fn parse_certificate_der(der: &[u8], what: &str) -> Result<CertInfo, PkiError> {
    let invalid = |detail: String| PkiError::InvalidCertificate {
        what: what.into(),
        index: 0,
        detail,
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| invalid(e.to_string()))?;
    let ts = |t: x509_parser::time::ASN1Time| {
        Timestamp::from_second(t.timestamp()).map_err(|e| invalid(e.to_string()))
    };
    let not_before = ts(cert.validity().not_before)?;
    let not_after = ts(cert.validity().not_after)?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    let mut authority_key_id = None;
    let mut subject_key_id = None;
    let mut can_sign_certificates = true;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(n) => dns_names.push((*n).to_string()),
                        GeneralName::IPAddress(b) => {
                            if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                                ip_addresses.push(IpAddr::from(v4));
                            } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                                ip_addresses.push(IpAddr::from(v6));
                            } else {
                                return Err(invalid(format!("IP address SAN of {} bytes", b.len())));
                            }
                        }
                        _ => {}
                    }
                }
            }
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                authority_key_id = aki.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            ParsedExtension::SubjectKeyIdentifier(ski) => subject_key_id = Some(ski.0.to_vec()),
            ParsedExtension::KeyUsage(ku) => can_sign_certificates = ku.key_cert_sign(),
            ParsedExtension::ParseError { error } => {
                return Err(invalid(format!("extension {}: {error}", ext.oid)));
            }
            _ => {}
        }
    }
    let common_name = match cert.subject().iter_common_name().next() {
        Some(cn) => Some(
            cn.as_str()
                .map_err(|e| invalid(format!("commonName: {e}")))?
                .to_string(),
        ),
        None => None,
    };
    let attrs = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let subject_fields = SubjectFields {
        organizations: attrs(&mut cert.subject().iter_organization()),
        organizational_units: attrs(&mut cert.subject().iter_organizational_unit()),
        countries: attrs(&mut cert.subject().iter_country()),
        localities: attrs(&mut cert.subject().iter_locality()),
        provinces: attrs(&mut cert.subject().iter_state_or_province()),
    };
    let serial_bytes = cert.raw_serial().to_vec();
    let serial = {
        let trimmed: Vec<u8> = serial_bytes.iter().copied().skip_while(|b| *b == 0).collect();
        if trimmed.is_empty() {
            "0".to_string()
        } else {
            let hex: String = trimmed.iter().map(|b| format!("{b:02x}")).collect();
            hex.trim_start_matches('0').to_string()
        }
    };
    Ok(CertInfo {
        not_before,
        not_after,
        dns_names,
        ip_addresses,
        common_name,
        serial,
        serial_bytes,
        subject: cert.subject().to_string(),
        subject_fields,
        issuer: cert.issuer().to_string(),
        is_ca: cert.is_ca(),
        can_sign_certificates,
        authority_key_id,
        subject_key_id,
        public_key_der: cert.public_key().raw.to_vec(),
        der: der.to_vec(),
    })
}

/// Whether `key` is the private key of `cert`: the same algorithm and public key bits.
pub fn key_matches(cert: &CertInfo, key: &PrivateKey) -> bool {
    let key_spki = key.public_key_der();
    match (
        SubjectPublicKeyInfo::from_der(&cert.public_key_der),
        SubjectPublicKeyInfo::from_der(&key_spki),
    ) {
        (Ok((_, a)), Ok((_, b))) => {
            a.algorithm.algorithm == b.algorithm.algorithm
                && a.subject_public_key.data == b.subject_public_key.data
        }
        _ => false,
    }
}

/// A private key's algorithm and size: what renewal decisions read of a key (the key itself is
/// parsed where it is used, see [`PrivateKey::from_pem`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    pub algorithm: KeyAlgorithm,
    /// RSA modulus bits or ECDSA curve size; `None` for Ed25519.
    pub size: Option<u32>,
}

impl KeyInfo {
    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// RSA modulus bits or ECDSA curve size; `None` for Ed25519.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    /// Like [`PrivateKey::matches_spec`].
    pub fn matches_spec(&self, spec: &KeySpec) -> bool {
        match spec.effective_size() {
            Ok(size) => spec.algorithm == self.algorithm && size == self.size,
            Err(_) => false,
        }
    }
}

/// What a `kubernetes.io/tls` Secret holds, parsed and checked: the chain (leaf first) and what
/// the key is (it matches the leaf).
#[derive(Debug)]
pub struct TlsSecret {
    pub chain: Vec<CertInfo>,
    pub key: KeyInfo,
}

impl TlsSecret {
    /// The leaf certificate.
    pub fn leaf(&self) -> &CertInfo {
        // parse_tls_secret never builds an empty chain.
        &self.chain[0]
    }
}

/// Parses a Secret's `tls.crt` (`None`: the key is absent) and `tls.key`, checks the key
/// matches the leaf. Expiry is not an error here (renewal decides); see
/// [`CertInfo::check_valid_at`].
pub fn parse_tls_secret(tls_crt: Option<&[u8]>, tls_key: Option<&[u8]>) -> Result<TlsSecret, PkiError> {
    let crt = tls_crt.ok_or_else(|| PkiError::Missing { what: TLS_CRT.into() })?;
    let key = tls_key.ok_or_else(|| PkiError::Missing { what: TLS_KEY.into() })?;
    let ders = split_pem_chain(crt, TLS_CRT)?;
    let chain = ders
        .iter()
        .enumerate()
        .map(|(index, der)| {
            parse_certificate_der(der, TLS_CRT).map_err(|e| match e {
                PkiError::InvalidCertificate { what, detail, .. } => {
                    PkiError::InvalidCertificate { what, index, detail }
                }
                other => other,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKey::from_pem(key)?;
    if !key_matches(&chain[0], &key) {
        return Err(PkiError::KeyMismatch {
            what: "tls.key and tls.crt".into(),
        });
    }
    Ok(TlsSecret {
        chain,
        key: key.info(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::path::Path;
    use std::process::Command;

    fn now() -> Timestamp {
        Timestamp::from_second(1_780_000_000).unwrap()
    }

    fn spec(algorithm: KeyAlgorithm, size: Option<u32>, encoding: KeyEncoding) -> KeySpec {
        KeySpec {
            algorithm,
            size,
            encoding,
        }
    }

    fn names(dns: &[&str], ips: &[IpAddr], cn: Option<&str>) -> Names {
        Names {
            dns_names: dns.iter().map(|s| s.to_string()).collect(),
            ip_addresses: ips.to_vec(),
            common_name: cn.map(String::from),
            subject: SubjectFields::default(),
        }
    }

    fn ec_key() -> PrivateKey {
        PrivateKey::generate(&spec(KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs8)).unwrap()
    }

    fn leaf_spec(dns: &[&str]) -> CertificateSpec {
        CertificateSpec {
            names: names(dns, &[], None),
            duration: Duration::from_secs(90 * 24 * 3600),
            is_ca: false,
        }
    }

    fn ca_spec(cn: &str, days: u64) -> CertificateSpec {
        CertificateSpec {
            names: names(&[], &[], Some(cn)),
            duration: Duration::from_secs(days * 24 * 3600),
            is_ca: true,
        }
    }

    /// A self-signed root CA: (PEM cert, PEM key, key).
    fn root_ca(key_spec: KeySpec) -> (SignedCertificate, String) {
        let key = PrivateKey::generate(&key_spec).unwrap();
        let cert = self_signed(&key, &ca_spec("Ferrite Test Root", 3650), now()).unwrap();
        let key_pem = key.to_pem(key_spec.encoding).unwrap();
        (cert, key_pem)
    }

    #[test]
    fn subject_fields_are_written_read_back_and_bounded() {
        let key = ec_key();
        let mut spec = leaf_spec(&["subject.example.com"]);
        spec.names.subject = SubjectFields {
            organizations: vec!["Example Org".into()],
            organizational_units: vec!["Platform".into()],
            countries: vec!["DE".into()],
            localities: vec!["Berlin".into()],
            provinces: vec!["Berlin".into()],
        };
        let cert = self_signed(&key, &spec, Timestamp::now()).expect("self-signed with a subject");
        assert_eq!(cert.info.subject_fields, spec.names.subject);
        assert!(
            cert.info.subject.contains("O=Example Org"),
            "{}",
            cert.info.subject
        );
        let csr = csr_der(&key, &spec.names).expect("CSR with a subject");
        assert!(!csr.is_empty());

        for (subject, field) in [
            (
                SubjectFields {
                    organizations: vec!["A".into(), "B".into()],
                    ..Default::default()
                },
                "organizations",
            ),
            (
                SubjectFields {
                    countries: vec!["Germany".into()],
                    ..Default::default()
                },
                "countries",
            ),
            (
                SubjectFields {
                    localities: vec![" ".into()],
                    ..Default::default()
                },
                "localities",
            ),
            (
                SubjectFields {
                    provinces: vec!["x".repeat(65)],
                    ..Default::default()
                },
                "provinces",
            ),
        ] {
            let mut bad = leaf_spec(&["subject.example.com"]);
            bad.names.subject = subject;
            let err = self_signed(&key, &bad, Timestamp::now()).expect_err("refused");
            assert_eq!(err.reason(), "InvalidSubject");
            assert!(
                err.to_string().starts_with(&format!("spec.subject.{field}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn key_spec_sizes_follow_cert_manager() {
        use KeyAlgorithm::*;
        type Case = (KeyAlgorithm, Option<u32>, Result<Option<u32>, &'static str>);
        let cases: &[Case] = &[
            (Rsa, None, Ok(Some(2048))),
            (Rsa, Some(0), Ok(Some(2048))),
            (Rsa, Some(2048), Ok(Some(2048))),
            (Rsa, Some(3072), Ok(Some(3072))),
            (Rsa, Some(4096), Ok(Some(4096))),
            (Rsa, Some(8192), Ok(Some(8192))),
            (Rsa, Some(1024), Err("between 2048 and 8192")),
            (Rsa, Some(2047), Err("between 2048 and 8192")),
            (Rsa, Some(8193), Err("between 2048 and 8192")),
            (Rsa, Some(16384), Err("between 2048 and 8192")),
            (Rsa, Some(2500), Err("2048, 3072, 4096 or 8192")),
            (Rsa, Some(6144), Err("2048, 3072, 4096 or 8192")),
            (Ecdsa, None, Ok(Some(256))),
            (Ecdsa, Some(0), Ok(Some(256))),
            (Ecdsa, Some(256), Ok(Some(256))),
            (Ecdsa, Some(384), Ok(Some(384))),
            (Ecdsa, Some(521), Ok(Some(521))),
            (Ecdsa, Some(224), Err("256, 384 or 521")),
            (Ecdsa, Some(512), Err("256, 384 or 521")),
            (Ecdsa, Some(2048), Err("256, 384 or 521")),
            (Ed25519, None, Ok(None)),
            // cert-manager ignores the size for Ed25519.
            (Ed25519, Some(256), Ok(None)),
        ];
        for (algorithm, size, want) in cases {
            let s = spec(*algorithm, *size, KeyEncoding::Pkcs1);
            match (s.effective_size(), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "{algorithm} {size:?}"),
                (Err(e), Err(fragment)) => {
                    let msg = e.to_string();
                    assert!(msg.contains(fragment), "{algorithm} {size:?}: {msg}");
                    assert!(msg.contains("privateKey.size"), "{msg}");
                    assert_eq!(e.reason(), "InvalidKeySize");
                    assert!(PrivateKey::generate(&s).is_err());
                }
                (got, want) => panic!("{algorithm} {size:?}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(KeySpec::default().effective_size().unwrap(), Some(2048));
        assert_eq!(KeySpec::default().encoding, KeyEncoding::Pkcs1);
    }

    /// generate -> PEM (each encoding) -> parse -> CSR -> sign (CA) -> parse Secret -> key_matches.
    #[test]
    fn round_trip_for_each_algorithm_and_encoding() {
        use KeyAlgorithm::*;
        use KeyEncoding::*;
        let cases = [
            (Rsa, None, Pkcs1, PEM_PKCS1_RSA, Some(2048)),
            (Rsa, Some(3072), Pkcs8, PEM_PKCS8, Some(3072)),
            (Ecdsa, None, Pkcs1, PEM_SEC1_EC, Some(256)),
            (Ecdsa, Some(384), Pkcs8, PEM_PKCS8, Some(384)),
            (Ecdsa, Some(384), Pkcs1, PEM_SEC1_EC, Some(384)),
            (Ecdsa, Some(521), Pkcs1, PEM_SEC1_EC, Some(521)),
            (Ecdsa, Some(521), Pkcs8, PEM_PKCS8, Some(521)),
            (Ed25519, None, Pkcs1, PEM_PKCS8, None),
            (Ed25519, None, Pkcs8, PEM_PKCS8, None),
        ];
        let (ca_cert, ca_key_pem) = root_ca(spec(Ecdsa, Some(384), Pkcs1));
        let ca = CaIssuer::from_pem(ca_cert.certificate_pem.as_bytes(), ca_key_pem.as_bytes()).unwrap();
        for (algorithm, size, encoding, label, want_size) in cases {
            let name = format!("{algorithm} {size:?} {encoding:?}");
            let s = spec(algorithm, size, encoding);
            let key = PrivateKey::generate(&s).unwrap();
            assert_eq!(key.algorithm(), algorithm, "{name}");
            assert_eq!(key.size(), want_size, "{name}");
            assert!(key.matches_spec(&s), "{name}");
            let pem = key.to_pem(encoding).unwrap();
            assert!(
                pem.starts_with(&format!("-----BEGIN {label}-----\n")),
                "{name}: {pem}"
            );
            let parsed = PrivateKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(parsed.algorithm(), algorithm, "{name}");
            assert_eq!(parsed.size(), want_size, "{name}");
            assert_eq!(parsed.public_key_der(), key.public_key_der(), "{name}");
            // And back in the other encoding.
            let other = match encoding {
                Pkcs1 => Pkcs8,
                Pkcs8 => Pkcs1,
            };
            let again = PrivateKey::from_pem(parsed.to_pem(other).unwrap().as_bytes()).unwrap();
            assert_eq!(again.public_key_der(), key.public_key_der(), "{name}");

            let want = names(
                &["a.example.com", "*.b.example.com"],
                &[IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
                Some("a.example.com"),
            );
            let csr = csr_der(&parsed, &want).unwrap();
            let (_, req) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
            // x509-parser's verifier has no P-521 or Ed25519 support; openssl_agrees checks
            // those CSRs.
            match req.verify_signature() {
                Ok(()) => {}
                Err(x509_parser::error::X509Error::SignatureUnsupportedAlgorithm)
                    if algorithm == Ed25519 || size == Some(521) => {}
                Err(e) => panic!("{name}: CSR signature: {e}"),
            }
            assert_eq!(
                req.certification_request_info.subject_pki.raw,
                key.public_key_der().as_slice(),
                "{name}"
            );

            let spec = CertificateSpec {
                names: want.clone(),
                duration: Duration::from_secs(30 * 24 * 3600),
                is_ca: false,
            };
            let signed = ca_signed(&parsed, &spec, &ca, now()).unwrap();
            let secret =
                parse_tls_secret(Some(signed.certificate_pem.as_bytes()), Some(pem.as_bytes())).unwrap();
            let leaf = secret.leaf();
            assert!(key_matches(leaf, &key), "{name}");
            assert!(!key_matches(leaf, &ec_key()), "{name}");
            assert!(!key_matches(ca.info(), &key), "{name}");
            assert_eq!(leaf.dns_names, want.dns_names, "{name}");
            assert_eq!(leaf.ip_addresses, want.ip_addresses, "{name}");
            assert_eq!(leaf.common_name.as_deref(), Some("a.example.com"));
            // The CA is P-384: always checkable.
            assert_eq!(leaf.is_signed_by(ca.info()), Some(true), "{name}");
            assert_ne!(leaf.is_signed_by(leaf), Some(true), "{name}");
            assert_eq!(leaf.issuer, ca.info().subject);
        }
    }

    #[test]
    fn certificate_fields_follow_cert_manager_defaults() {
        let rsa = PrivateKey::generate(&KeySpec::default()).unwrap();
        let ec = ec_key();
        let (ca_cert, ca_key_pem) = root_ca(spec(KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs8));
        let ca = CaIssuer::from_pem(ca_cert.certificate_pem.as_bytes(), ca_key_pem.as_bytes()).unwrap();
        assert!(ca.info().is_ca);
        assert!(ca_cert.info.subject_key_id.is_some());
        for (key, encipherment) in [(&rsa, true), (&ec, false)] {
            let signed = ca_signed(key, &leaf_spec(&["x.example.com"]), &ca, now()).unwrap();
            let info = &signed.info;
            assert_eq!(info.not_before, now() - jiff::SignedDuration::from_secs(60));
            assert_eq!(info.not_after, now() + jiff::SignedDuration::from_hours(90 * 24));
            assert!(!info.is_ca);
            assert_eq!(info.authority_key_id, ca.info().subject_key_id);
            assert!(info.serial_bytes.len() >= 16 && info.serial_bytes[0] & 0x80 == 0);
            assert!(!info.serial.starts_with('0') && !info.serial.is_empty());
            let (_, cert) = X509Certificate::from_der(&info.der).unwrap();
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature());
            assert_eq!(ku.key_encipherment(), encipherment);
            assert!(!ku.key_cert_sign());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);
            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(!bc.ca);
            // A root CA is not repeated in tls.crt; it is ca.crt.
            assert_eq!(signed.certificate_pem.matches("BEGIN CERTIFICATE").count(), 1);
            assert_eq!(signed.ca_pem, ca_cert.certificate_pem);
        }
        // Two issuances never share a serial.
        let a = ca_signed(&ec, &leaf_spec(&["x.example.com"]), &ca, now()).unwrap();
        let b = ca_signed(&ec, &leaf_spec(&["x.example.com"]), &ca, now()).unwrap();
        assert_ne!(a.info.serial, b.info.serial);

        // Self-signed: its own CA, CA:FALSE unless isCA.
        let ss = self_signed(&ec, &leaf_spec(&["self.example.com"]), now()).unwrap();
        assert_eq!(ss.certificate_pem, ss.ca_pem);
        assert!(!ss.info.is_ca);
        assert_eq!(ss.info.is_signed_by(&ss.info), Some(true));
        assert_eq!(ss.info.is_signed_by(&ca_cert.info), Some(false));
        assert_eq!(ss.info.subject, ss.info.issuer);
        let (_, cert) = X509Certificate::from_der(&ca_cert.info.der).unwrap();
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        assert!(cert.extended_key_usage().unwrap().is_none());
    }

    #[test]
    fn ca_signed_clamps_to_the_ca_and_refuses_an_expired_ca() {
        let key = ec_key();
        let ca_key = ec_key();
        let ca_cert = self_signed(&ca_key, &ca_spec("Short CA", 10), now()).unwrap();
        let ca = CaIssuer::from_pem(
            ca_cert.certificate_pem.as_bytes(),
            ca_key.to_pem(KeyEncoding::Pkcs1).unwrap().as_bytes(),
        )
        .unwrap();
        let signed = ca_signed(&key, &leaf_spec(&["x.example.com"]), &ca, now()).unwrap();
        assert_eq!(signed.info.not_after, ca.info().not_after);
        let later = now() + jiff::SignedDuration::from_hours(11 * 24);
        let err = ca_signed(&key, &leaf_spec(&["x.example.com"]), &ca, later).unwrap_err();
        assert!(matches!(err, PkiError::CaExpired { .. }), "{err}");
        assert!(err.to_string().contains("Short CA"), "{err}");
    }

    #[test]
    fn intermediate_ca_chain() {
        let (root, root_key_pem) = root_ca(spec(KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs1));
        let root_ca = CaIssuer::from_pem(root.certificate_pem.as_bytes(), root_key_pem.as_bytes()).unwrap();
        let int_key = ec_key();
        let int = ca_signed(&int_key, &ca_spec("Ferrite Intermediate", 365), &root_ca, now()).unwrap();
        assert!(int.info.is_ca);
        // The CA issuer's Secret: intermediate + root in tls.crt.
        let int_secret_crt = format!("{}{}", int.certificate_pem, root.certificate_pem);
        assert_eq!(int.certificate_pem.matches("BEGIN CERTIFICATE").count(), 1);
        let int_ca = CaIssuer::from_pem(
            int_secret_crt.as_bytes(),
            int_key.to_pem(KeyEncoding::Pkcs8).unwrap().as_bytes(),
        )
        .unwrap();
        let key = ec_key();
        let leaf = ca_signed(&key, &leaf_spec(&["x.example.com"]), &int_ca, now()).unwrap();
        let chain = split_pem_chain(leaf.certificate_pem.as_bytes(), TLS_CRT).unwrap();
        assert_eq!(chain.len(), 2, "leaf + intermediate");
        assert_eq!(chain[1], int.info.der);
        assert_eq!(leaf.ca_pem, root.certificate_pem);
        let secret = parse_tls_secret(
            Some(leaf.certificate_pem.as_bytes()),
            Some(key.to_pem(KeyEncoding::Pkcs1).unwrap().as_bytes()),
        )
        .unwrap();
        assert_eq!(secret.chain.len(), 2);
        assert_eq!(secret.chain[0].is_signed_by(&secret.chain[1]), Some(true));
        assert_eq!(secret.chain[1].is_signed_by(&root.info), Some(true));
        assert_eq!(secret.chain[0].is_signed_by(&root.info), Some(false));
    }

    #[test]
    fn ca_issuer_errors() {
        let (root, root_key_pem) = root_ca(spec(KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs1));
        let other_key = ec_key().to_pem(KeyEncoding::Pkcs1).unwrap();
        let leaf_key = ec_key();
        let leaf = self_signed(&leaf_key, &leaf_spec(&["x.example.com"]), now()).unwrap();
        let leaf_key_pem = leaf_key.to_pem(KeyEncoding::Pkcs8).unwrap();
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "key of another CA",
                &root.certificate_pem,
                &other_key,
                "InvalidKeyPair",
            ),
            ("a leaf, not a CA", &leaf.certificate_pem, &leaf_key_pem, "NotACA"),
            ("no key", &root.certificate_pem, "", "MissingData"),
            ("no certificate", "", &root_key_pem, "MissingData"),
            ("key in tls.crt", &root_key_pem, &root_key_pem, "NotACertificate"),
            (
                "certificate in tls.key",
                &root.certificate_pem,
                &root.certificate_pem,
                "NotAPrivateKey",
            ),
            ("garbage", "hello", &root_key_pem, "NotPEM"),
        ];
        for (name, crt, key, reason) in cases {
            let err = CaIssuer::from_pem(crt.as_bytes(), key.as_bytes()).unwrap_err();
            assert_eq!(err.reason(), *reason, "{name}: {err}");
            let msg = err.to_string();
            assert!(msg.contains("CA") || msg.contains("ca"), "{name}: {msg}");
        }
        let err = CaIssuer::from_pem(root.certificate_pem.as_bytes(), other_key.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CA Secret: the private key does not match the certificate's public key"
        );
        let err = CaIssuer::from_pem(leaf.certificate_pem.as_bytes(), leaf_key_pem.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("is not a CA"), "{err}");
    }

    #[test]
    fn tls_secret_errors() {
        let key = ec_key();
        let cert = self_signed(&key, &leaf_spec(&["x.example.com"]), now()).unwrap();
        let key_pem = key.to_pem(KeyEncoding::Pkcs1).unwrap();
        let other_key = ec_key().to_pem(KeyEncoding::Pkcs8).unwrap();
        let two_keys = format!("{key_pem}{other_key}");
        let bad_der = pem_encode(PEM_CERTIFICATE, b"not a certificate");
        let bad_key = pem_encode(PEM_SEC1_EC, b"not a key");
        let bad_pkcs8 = pem_encode(PEM_PKCS8, b"not a key");
        let encrypted = pem_encode("ENCRYPTED PRIVATE KEY", b"whatever");
        let chain_with_key = format!("{}{}", cert.certificate_pem, key_pem);
        let crt = cert.certificate_pem.as_str();
        // (name, tls.crt, tls.key, reason, message fragment)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            (
                "no tls.crt",
                None,
                Some(&key_pem),
                "MissingData",
                "tls.crt is missing",
            ),
            ("no tls.key", Some(crt), None, "MissingData", "tls.key is missing"),
            (
                "empty tls.crt",
                Some(" \n"),
                Some(&key_pem),
                "MissingData",
                "tls.crt is missing",
            ),
            (
                "text tls.crt",
                Some("not pem"),
                Some(&key_pem),
                "NotPEM",
                "tls.crt is not PEM",
            ),
            (
                "bad DER",
                Some(&bad_der),
                Some(&key_pem),
                "InvalidCertificate",
                "tls.crt: certificate 0",
            ),
            (
                "key in chain",
                Some(&chain_with_key),
                Some(&key_pem),
                "NotACertificate",
                "\"EC PRIVATE KEY\"",
            ),
            (
                "text tls.key",
                Some(crt),
                Some("not pem"),
                "NotPEM",
                "tls.key is not PEM",
            ),
            (
                "cert as key",
                Some(crt),
                Some(crt),
                "NotAPrivateKey",
                "\"CERTIFICATE\"",
            ),
            (
                "two keys",
                Some(crt),
                Some(&two_keys),
                "MultiplePrivateKeys",
                "more than one",
            ),
            (
                "bad SEC1",
                Some(crt),
                Some(&bad_key),
                "InvalidPrivateKey",
                "SEC1 EC",
            ),
            (
                "bad PKCS8",
                Some(crt),
                Some(&bad_pkcs8),
                "InvalidPrivateKey",
                "PKCS#8",
            ),
            (
                "encrypted",
                Some(crt),
                Some(&encrypted),
                "EncryptedPrivateKey",
                "unencrypted",
            ),
            (
                "mismatch",
                Some(crt),
                Some(&other_key),
                "InvalidKeyPair",
                "does not match",
            ),
        ];
        for (name, crt, key, reason, fragment) in cases {
            let err = parse_tls_secret(crt.map(str::as_bytes), key.map(str::as_bytes)).unwrap_err();
            assert_eq!(err.reason(), *reason, "{name}: {err}");
            assert!(err.to_string().contains(fragment), "{name}: {err}");
        }
        let ok = parse_tls_secret(Some(crt.as_bytes()), Some(key_pem.as_bytes())).unwrap();
        assert_eq!(ok.leaf().dns_names, vec!["x.example.com".to_string()]);
    }

    #[test]
    fn validity_checks() {
        let key = ec_key();
        let info = self_signed(&key, &leaf_spec(&["x.example.com"]), now())
            .unwrap()
            .info;
        let cases = [
            (now(), None),
            (now() - jiff::SignedDuration::from_secs(60), None),
            (now() - jiff::SignedDuration::from_secs(61), Some("NotYetValid")),
            (info.not_after - jiff::SignedDuration::from_secs(1), None),
            (info.not_after, Some("Expired")),
            (
                info.not_after + jiff::SignedDuration::from_hours(1),
                Some("Expired"),
            ),
        ];
        for (at, want) in cases {
            assert_eq!(info.check_valid_at(at).err().map(|e| e.reason()), want, "{at}");
        }
    }

    #[test]
    fn names_validation() {
        let key = ec_key();
        let long_label = format!("{}.example.com", "a".repeat(64));
        let long_name = format!("{}.com", "abcdefgh.".repeat(30));
        let long_cn = "c".repeat(65);
        let cases: &[(Names, Option<&str>)] = &[
            (names(&["example.com"], &[], None), None),
            (names(&["*.example.com"], &[], None), None),
            (names(&["example.com."], &[], None), None),
            (names(&["xn--bcher-kva.example"], &[], None), None),
            (names(&[], &[IpAddr::V6(Ipv6Addr::LOCALHOST)], None), None),
            (names(&[], &[], Some("just a common name")), None),
            (names(&[], &[], None), Some("NoNames")),
            (names(&[], &[], Some("")), Some("NoNames")),
            (names(&[""], &[], None), Some("InvalidDNSName")),
            (names(&["bücher.example"], &[], None), Some("InvalidDNSName")),
            (names(&["a..example.com"], &[], None), Some("InvalidDNSName")),
            (names(&["a.*.example.com"], &[], None), Some("InvalidDNSName")),
            (names(&["-a.example.com"], &[], None), Some("InvalidDNSName")),
            (names(&["a b.example.com"], &[], None), Some("InvalidDNSName")),
            (names(&[long_label.as_str()], &[], None), Some("InvalidDNSName")),
            (names(&[long_name.as_str()], &[], None), Some("InvalidDNSName")),
            (
                names(&["ok.example"], &[], Some(long_cn.as_str())),
                Some("InvalidCommonName"),
            ),
        ];
        for (n, want) in cases {
            let csr = csr_der(&key, n);
            let cert = self_signed(
                &key,
                &CertificateSpec {
                    names: n.clone(),
                    duration: Duration::from_secs(3600),
                    is_ca: false,
                },
                now(),
            );
            assert_eq!(csr.as_ref().err().map(|e| e.reason()), *want, "{n:?}");
            assert_eq!(cert.as_ref().err().map(|e| e.reason()), *want, "{n:?}");
            if let Some(e) = csr.err() {
                let msg = e.to_string();
                assert!(msg.contains("dnsNames") || msg.contains("commonName"), "{msg}");
            }
        }
    }

    #[test]
    fn zero_or_huge_duration_is_an_error() {
        let key = ec_key();
        for d in [Duration::ZERO, Duration::from_secs(u64::MAX)] {
            let mut s = leaf_spec(&["x.example.com"]);
            s.duration = d;
            let err = self_signed(&key, &s, now()).unwrap_err();
            assert_eq!(err.reason(), "InvalidDuration", "{d:?}");
        }
    }

    #[test]
    fn pem_helpers() {
        let pem = pem_encode("CERTIFICATE", &[7u8; 100]);
        let lines: Vec<_> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN CERTIFICATE-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert!(pkcs8_inner_key(&[0x30, 0x03, 0x02, 0x01]).is_err());
        assert!(pkcs8_inner_key(&[]).is_err());
        assert!(pkcs8_inner_key(&[0x04, 0x00]).is_err());
        assert!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_err());
        let err = split_pem_chain(b"", TLS_CRT).unwrap_err();
        assert_eq!(err.reason(), "MissingData");
        // Text around blocks (openssl's "subject=" lines) is ignored.
        let key = ec_key();
        let cert = self_signed(&key, &leaf_spec(&["x.example.com"]), now()).unwrap();
        let noisy = format!("subject=CN = x\n{}\n", cert.certificate_pem);
        assert_eq!(split_pem_chain(noisy.as_bytes(), TLS_CRT).unwrap().len(), 1);
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = ec_key();
        let dbg = format!("{key:?}");
        assert!(dbg.contains("Ecdsa") && !dbg.contains("serialized"), "{dbg}");
    }

    const OPENSSL: &str = "/usr/bin/openssl";

    fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
        let out = Command::new(OPENSSL)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("running {OPENSSL}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// openssl, not only this crate, accepts what we write: the keys in every encoding, a
    /// CA-signed leaf (`openssl verify -CAfile`), a chain through an intermediate; and we read
    /// keys openssl writes.
    #[test]
    fn openssl_agrees() {
        if !Path::new(OPENSSL).exists() {
            eprintln!("SKIPPED openssl_agrees: {OPENSSL} is absent (apt-get install openssl)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        let real_now = Timestamp::now();

        for (algorithm, size, encoding) in [
            (KeyAlgorithm::Rsa, None, KeyEncoding::Pkcs1),
            (KeyAlgorithm::Rsa, None, KeyEncoding::Pkcs8),
            (KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs1),
            (KeyAlgorithm::Ecdsa, None, KeyEncoding::Pkcs8),
            (KeyAlgorithm::Ecdsa, Some(384), KeyEncoding::Pkcs1),
            (KeyAlgorithm::Ecdsa, Some(521), KeyEncoding::Pkcs1),
            (KeyAlgorithm::Ed25519, None, KeyEncoding::Pkcs1),
            (KeyAlgorithm::Ed25519, None, KeyEncoding::Pkcs8),
        ] {
            let key_spec = spec(algorithm, size, encoding);
            // Root CA (same algorithm), leaf signed by it.
            let ca_key = PrivateKey::generate(&key_spec).unwrap();
            let root = self_signed(&ca_key, &ca_spec("OpenSSL Test Root", 30), real_now).unwrap();
            let ca = CaIssuer::from_pem(
                root.certificate_pem.as_bytes(),
                ca_key.to_pem(encoding).unwrap().as_bytes(),
            )
            .unwrap();
            let key = PrivateKey::generate(&key_spec).unwrap();
            let leaf_spec = CertificateSpec {
                names: names(&["leaf.example.com"], &[IpAddr::V4(Ipv4Addr::LOCALHOST)], None),
                duration: Duration::from_secs(24 * 3600),
                is_ca: false,
            };
            let leaf = ca_signed(&key, &leaf_spec, &ca, real_now).unwrap();
            write("ca.pem", &leaf.ca_pem);
            write("leaf.pem", &leaf.certificate_pem);
            write("leaf.key", &key.to_pem(encoding).unwrap());
            let (ok, out) = openssl(
                d,
                &["verify", "-purpose", "sslserver", "-CAfile", "ca.pem", "leaf.pem"],
            );
            assert!(
                ok && out.contains("leaf.pem: OK"),
                "{algorithm} {encoding:?}: {out}"
            );
            let (ok, out) = openssl(d, &["verify", "-CAfile", "leaf.pem", "leaf.pem"]);
            assert!(!ok, "a leaf is not its own CA: {out}");
            let (ok, out) = openssl(d, &["pkey", "-in", "leaf.key", "-noout"]);
            assert!(ok, "{algorithm} {encoding:?} key: {out}");
            // openssl agrees the key belongs to the certificate.
            let (ok1, pub_from_key) = openssl(d, &["pkey", "-in", "leaf.key", "-pubout"]);
            let (ok2, pub_from_cert) = openssl(d, &["x509", "-in", "leaf.pem", "-noout", "-pubkey"]);
            assert!(
                ok1 && ok2 && pub_from_key == pub_from_cert,
                "{pub_from_key}\n{pub_from_cert}"
            );
            let (ok, text) = openssl(
                d,
                &[
                    "x509",
                    "-in",
                    "leaf.pem",
                    "-noout",
                    "-ext",
                    "subjectAltName,extendedKeyUsage",
                ],
            );
            assert!(
                ok && text.contains("DNS:leaf.example.com") && text.contains("IP Address:127.0.0.1"),
                "{text}"
            );
            assert!(
                text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
                "{text}"
            );
            // The CSR, too.
            let csr = csr_der(&key, &leaf_spec.names).unwrap();
            write("req.pem", &pem_encode("CERTIFICATE REQUEST", &csr));
            let (ok, out) = openssl(d, &["req", "-in", "req.pem", "-verify", "-noout"]);
            assert!(ok, "{algorithm} CSR: {out}");
        }

        // A chain through an intermediate.
        let root_key = ec_key();
        let root = self_signed(&root_key, &ca_spec("OpenSSL Root", 30), real_now).unwrap();
        let root_ca = CaIssuer::from_pem(
            root.certificate_pem.as_bytes(),
            root_key.to_pem(KeyEncoding::Pkcs1).unwrap().as_bytes(),
        )
        .unwrap();
        let int_key = ec_key();
        let int = ca_signed(&int_key, &ca_spec("OpenSSL Intermediate", 20), &root_ca, real_now).unwrap();
        let int_ca = CaIssuer::from_pem(
            format!("{}{}", int.certificate_pem, root.certificate_pem).as_bytes(),
            int_key.to_pem(KeyEncoding::Pkcs8).unwrap().as_bytes(),
        )
        .unwrap();
        let leaf = ca_signed(&ec_key(), &leaf_spec(&["deep.example.com"]), &int_ca, real_now).unwrap();
        write("root.pem", &leaf.ca_pem);
        write("chain.pem", &leaf.certificate_pem);
        write("int.pem", &int.certificate_pem);
        let (ok, out) = openssl(
            d,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "int.pem",
                "chain.pem",
            ],
        );
        assert!(ok, "{out}");

        // Keys written by openssl: PKCS#1 RSA, SEC1 with EC PARAMETERS, PKCS#8 Ed25519.
        let generated = [
            (
                "rsa.key",
                vec!["genrsa", "-traditional", "-out", "rsa.key", "2048"],
                KeyAlgorithm::Rsa,
                Some(2048),
                "RSA PRIVATE KEY",
            ),
            (
                "ec.key",
                vec!["ecparam", "-name", "secp384r1", "-genkey", "-out", "ec.key"],
                KeyAlgorithm::Ecdsa,
                Some(384),
                "EC PRIVATE KEY",
            ),
            (
                "ed.key",
                vec!["genpkey", "-algorithm", "ed25519", "-out", "ed.key"],
                KeyAlgorithm::Ed25519,
                None,
                "PRIVATE KEY",
            ),
            (
                "p8.key",
                vec![
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    "p8.key",
                ],
                KeyAlgorithm::Ecdsa,
                Some(256),
                "PRIVATE KEY",
            ),
        ];
        for (file, args, algorithm, size, label) in generated {
            let (ok, out) = openssl(d, &args);
            assert!(ok, "{out}");
            let pem = std::fs::read(d.join(file)).unwrap();
            assert!(String::from_utf8_lossy(&pem).contains(&format!("BEGIN {label}-----")));
            let key = PrivateKey::from_pem(&pem).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!((key.algorithm(), key.size()), (algorithm, size), "{file}");
            // And a certificate made with openssl's key matches it.
            let ss = self_signed(&key, &leaf_spec(&["o.example.com"]), real_now).unwrap();
            assert!(key_matches(&ss.info, &key));
            // openssl's public key equals ours.
            let (ok, pubkey) = openssl(
                d,
                &[
                    "pkey", "-in", file, "-pubout", "-outform", "DER", "-out", "pub.der",
                ],
            );
            assert!(ok, "{pubkey}");
            let der = std::fs::read(d.join("pub.der")).unwrap();
            assert_eq!(der, key.public_key_der(), "{file}");
        }
    }
}
