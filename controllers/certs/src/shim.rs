//! ingress-shim: a `Certificate` for every `spec.tls` entry of an annotated Ingress, as cert-manager's.
//!
//! ```text
//!   Ingress (networking.k8s.io/v1, shared trimmed watch)
//!     │ certs.ferrite.dev/issuer | cert-manager.io/issuer            -> issuerRef {kind: Issuer}
//!     │ certs.ferrite.dev/cluster-issuer | cert-manager.io/cluster-issuer -> issuerRef {kind: ClusterIssuer}
//!     │ kubernetes.io/tls-acme: "true"                               -> the default issuer (flags)
//!     ▼
//!   plan()  (pure: annotations + spec.tls -> desired Certificates, skipped entries, problems)
//!     ▼
//!   reconcile: owner check (ours / another Ingress's / not the shim's), oldest Ingress wins a name,
//!              server-side apply (controller ownerReference to the Ingress, label ingress-name),
//!              delete the Certificates this Ingress owns but no longer asks for, Warning Events
//!   sweep:     an Ingress gone -> the Certificates it controlled are deleted (the garbage collector
//!              does the same through the ownerReference; the sweep does not wait for it)
//! ```
//!
//! The mapping follows cert-manager's `certificate-shim`: the Certificate is named after the Secret,
//! `dnsNames`/`ipAddresses` are the entry's hosts (IP literals go to `ipAddresses`), a TLS entry without
//! hosts or secretName is skipped with a Warning, two entries of one Ingress naming the same Secret make
//! the Ingress invalid, and both an issuer and a cluster-issuer annotation is refused. A Certificate
//! that exists and is not controlled by this Ingress is never touched.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrite_api::certs::{
    Certificate, CertificateSpec, IssuerKind, IssuerRef, KeyAlgorithm, PrivateKeySpec, RotationPolicy,
    annotations as keys,
};
use ferrite_api::names;
use ferrite_kit::watch::{Change, Trim};
use ferrite_kit::{App, ReasonedError};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

/// Label on every Certificate the shim writes: the owning Ingress's name (cut to 63 characters, the
/// longest label value). An index only; ownership is the controller ownerReference.
pub const INGRESS_NAME_LABEL: &str = "certs.ferrite.dev/ingress-name";

/// cert-manager's Ingress annotation naming the (legacy) ingress class the HTTP-01 solver routes through.
pub const HTTP01_INGRESS_CLASS: &str = "acme.cert-manager.io/http01-ingress-class";
/// cert-manager's Ingress annotation naming the IngressClass (`spec.ingressClassName`) of the solver.
pub const HTTP01_INGRESS_CLASS_NAME: &str = "acme.cert-manager.io/http01-ingress-ingressclassname";
/// cert-manager's edit-in-place annotation (solver routes added to the Ingress itself): not supported.
pub const HTTP01_EDIT_IN_PLACE: &str = "acme.cert-manager.io/http01-edit-in-place";
/// Annotation on the Certificate carrying [`HTTP01_INGRESS_CLASS`] (cert-manager's key), for the solver.
pub const HTTP01_OVERRIDE_INGRESS_CLASS: &str = "acme.cert-manager.io/http01-override-ingress-class";
/// Annotation on the Certificate carrying [`HTTP01_INGRESS_CLASS_NAME`] (cert-manager's key).
pub const HTTP01_OVERRIDE_INGRESS_CLASS_NAME: &str =
    "acme.cert-manager.io/http01-override-ingress-ingressclassname";

/// cert-manager Ingress annotations the shim knows and does not support: each present one is
/// reported once in a Warning and otherwise ignored.
pub const UNSUPPORTED_ANNOTATIONS: [&str; 14] = [
    "cert-manager.io/issuer-kind",
    "cert-manager.io/issuer-group",
    "cert-manager.io/usages",
    "cert-manager.io/alt-names",
    "cert-manager.io/ip-sans",
    "cert-manager.io/uri-sans",
    "cert-manager.io/email-sans",
    "cert-manager.io/subject-organizations",
    "cert-manager.io/subject-organizationalunits",
    "cert-manager.io/subject-countries",
    "cert-manager.io/private-key-encoding",
    "cert-manager.io/revision-history-limit",
    "cert-manager.io/allow-direct-injection",
    HTTP01_EDIT_IN_PLACE,
];

/// kubectl's applyset label: copied onto a Certificate it would make the Certificate pruned with the
/// applyset (cert-manager#7306), so it is not copied.
const APPLYSET_LABEL: &str = "applyset.kubernetes.io/part-of";

/// Event reasons (cert-manager's, so alerts on them keep working).
pub mod reasons {
    /// The Ingress's annotations or TLS entries are invalid, or a TLS entry was skipped.
    pub const BAD_CONFIG: &str = "BadConfig";
    /// A Certificate was created.
    pub const CREATE_CERTIFICATE: &str = "CreateCertificate";
    /// A Certificate was updated.
    pub const UPDATE_CERTIFICATE: &str = "UpdateCertificate";
    /// A Certificate the Ingress no longer asks for was deleted.
    pub const DELETE_CERTIFICATE: &str = "DeleteCertificate";
    /// Another Ingress, or something else, already has the Certificate of that name.
    pub const CERTIFICATE_CONFLICT: &str = "CertificateConflict";
    /// A cert-manager annotation the shim does not support is present.
    pub const UNSUPPORTED_ANNOTATION: &str = "UnsupportedAnnotation";
}

// ---------------------------------------------------------------------------------------------------
// Configuration

/// What the shim needs beyond the Ingresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimConfig {
    /// The issuer of Ingresses annotated only `kubernetes.io/tls-acme: "true"`.
    pub default_issuer: Option<IssuerRef>,
}

/// The shim's flags; flatten into the controller's command line.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq)]
pub struct ShimArgs {
    /// Issuer of Ingresses annotated `kubernetes.io/tls-acme: "true"` without an issuer annotation
    /// (cert-manager's `--default-issuer-name`). Unset: such Ingresses get a Warning, no Certificate.
    #[arg(long, env = "FERRITE_CERTS_DEFAULT_ISSUER_NAME")]
    pub default_issuer_name: Option<String>,
    /// Kind of `--default-issuer-name`: `Issuer` (in the Ingress's namespace) or `ClusterIssuer`.
    #[arg(long, env = "FERRITE_CERTS_DEFAULT_ISSUER_KIND", default_value = "Issuer", value_parser = parse_issuer_kind)]
    pub default_issuer_kind: IssuerKindArg,
}

/// `Issuer` or `ClusterIssuer` as a flag value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IssuerKindArg(pub IssuerKind);

fn parse_issuer_kind(s: &str) -> Result<IssuerKindArg, String> {
    match s {
        "Issuer" => Ok(IssuerKindArg(IssuerKind::Issuer)),
        "ClusterIssuer" => Ok(IssuerKindArg(IssuerKind::ClusterIssuer)),
        other => Err(format!(
            "{other:?} is not an issuer kind: use Issuer or ClusterIssuer"
        )),
    }
}

impl ShimArgs {
    /// The configuration these flags give; an empty name is refused.
    pub fn config(&self) -> Result<ShimConfig, String> {
        let default_issuer = match self.default_issuer_name.as_deref().map(str::trim) {
            None => None,
            Some("") => return Err("--default-issuer-name is empty: give a name or leave it out".into()),
            Some(name) => Some(IssuerRef {
                name: name.to_string(),
                kind: self.default_issuer_kind.0,
                group: None,
            }),
        };
        Ok(ShimConfig { default_issuer })
    }
}

// ---------------------------------------------------------------------------------------------------
// The mapping (pure)

/// Something wrong with an Ingress's annotations or TLS entries: no Certificate is written for it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Both an issuer and a cluster-issuer annotation.
    #[error("both {issuer:?} and {cluster_issuer:?} are set; set only one")]
    BothIssuers {
        /// The issuer key found.
        issuer: &'static str,
        /// The cluster-issuer key found.
        cluster_issuer: &'static str,
    },
    /// `kubernetes.io/tls-acme` asks for the default issuer and none is configured.
    #[error(
        "{} is \"true\" but no default issuer is configured: start ferrite-certs with --default-issuer-name (and --default-issuer-kind), or set {:?} or {:?}",
        keys::TLS_ACME,
        keys::CLUSTER_ISSUER,
        keys::ISSUER
    )]
    NoDefaultIssuer,
    /// An annotation with a value that cannot be used.
    #[error("annotation {key:?}: {value:?} {why}")]
    BadAnnotation {
        /// The annotation.
        key: &'static str,
        /// Its value (bounded).
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Two TLS entries name the same Secret (one Certificate per entry, so they would collide).
    #[error(
        "spec.tls[{first}].secretName: {name:?}: this secret name must only appear in one TLS entry but is also used in spec.tls[{second}]"
    )]
    DuplicateSecretName {
        /// The Secret's name.
        name: String,
        /// First entry using it.
        first: usize,
        /// Second entry using it.
        second: usize,
    },
}

/// Problems of one Ingress, all of them (so one Event tells everything to fix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidIngress(pub Vec<Problem>);

impl std::fmt::Display for InvalidIngress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One Certificate an Ingress asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredCertificate {
    /// Name of the Certificate (= `spec.secretName`, as cert-manager names it).
    pub name: String,
    /// Labels: the Ingress's (without kubectl's applyset label) and [`INGRESS_NAME_LABEL`].
    pub labels: BTreeMap<String, String>,
    /// Annotations for the solver ([`HTTP01_OVERRIDE_INGRESS_CLASS`], ...).
    pub annotations: BTreeMap<String, String>,
    /// The spec.
    pub spec: CertificateSpec,
}

/// What an Ingress asks for.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    /// The Certificates, in `spec.tls` order.
    pub certificates: Vec<DesiredCertificate>,
    /// TLS entries skipped, with the reason (Warning `BadConfig`, the others are still issued).
    pub skipped: Vec<String>,
    /// Unsupported cert-manager annotations present on the Ingress.
    pub unsupported: Vec<&'static str>,
}

/// The value of the first key of `ks` present on `ann`, with that key.
fn first<'a>(ann: &'a BTreeMap<String, String>, ks: &[&'static str]) -> Option<(&'static str, &'a str)> {
    ks.iter().find_map(|k| ann.get(*k).map(|v| (*k, v.as_str())))
}

/// Go's `strconv.ParseBool` true values (cert-manager reads `kubernetes.io/tls-acme` with it).
fn go_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// True when the Ingress asks the shim for certificates at all (an issuer annotation, or tls-acme true).
pub fn requested(ingress: &Ingress) -> bool {
    let ann = ingress.annotations();
    first(ann, &keys::ISSUER_KEYS).is_some()
        || first(ann, &keys::CLUSTER_ISSUER_KEYS).is_some()
        || ann.get(keys::TLS_ACME).is_some_and(|v| go_true(v))
}

fn bounded(v: &str) -> String {
    const MAX: usize = 128;
    if v.len() <= MAX {
        return v.to_string();
    }
    let mut cut = MAX;
    while !v.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &v[..cut])
}

fn bad(key: &'static str, value: &str, why: impl Into<String>) -> Problem {
    Problem::BadAnnotation {
        key,
        value: bounded(value),
        why: why.into(),
    }
}

fn issuer_of(
    ann: &BTreeMap<String, String>,
    config: &ShimConfig,
    problems: &mut Vec<Problem>,
) -> Option<IssuerRef> {
    let issuer = first(ann, &keys::ISSUER_KEYS);
    let cluster = first(ann, &keys::CLUSTER_ISSUER_KEYS);
    let named = |(key, v): (&'static str, &str), kind, problems: &mut Vec<Problem>| {
        let name = v.trim();
        if name.is_empty() {
            problems.push(bad(key, v, "is empty: name the issuer"));
            None
        } else if name.len() > 253 {
            problems.push(bad(key, v, "is longer than 253 characters"));
            None
        } else {
            Some(IssuerRef {
                name: name.to_string(),
                kind,
                group: None,
            })
        }
    };
    match (issuer, cluster) {
        (Some((ik, _)), Some((ck, _))) => {
            problems.push(Problem::BothIssuers {
                issuer: ik,
                cluster_issuer: ck,
            });
            None
        }
        (Some(i), None) => named(i, IssuerKind::Issuer, problems),
        (None, Some(c)) => named(c, IssuerKind::ClusterIssuer, problems),
        (None, None) => match &config.default_issuer {
            Some(d) => Some(d.clone()),
            None => {
                problems.push(Problem::NoDefaultIssuer);
                None
            }
        },
    }
}

fn duration_of(
    ann: &BTreeMap<String, String>,
    ks: &[&'static str],
    problems: &mut Vec<Problem>,
) -> Option<(&'static str, Duration, String)> {
    let (key, v) = first(ann, ks)?;
    match crate::renewal::parse_go_duration(v) {
        Ok(d) if d.is_zero() => {
            problems.push(bad(
                key,
                v,
                "is zero: give a positive Go duration such as \"2160h\"",
            ));
            None
        }
        // Written the way Go prints a duration ("2160h0m0s"), as cert-manager's metav1.Duration does.
        Ok(d) => Some((key, d, crate::renewal::format_go_duration(d))),
        Err(e) => {
            use crate::renewal::DurationError as E;
            // Not the parser's message: it repeats the (unbounded) value.
            let why = match e {
                E::Empty => "is empty".to_string(),
                E::Negative => "is negative; give a positive Go duration".to_string(),
                E::Overflow { .. } => "is too large".to_string(),
                E::Invalid { detail, .. } => format!(
                    "is not a duration ({detail}): write a Go duration like \"2160h\", \"1h30m\" or \"45m\"; there is no day unit, 90 days is \"2160h\""
                ),
            };
            problems.push(bad(key, v, why));
            None
        }
    }
}

fn private_key_of(ann: &BTreeMap<String, String>, problems: &mut Vec<Problem>) -> Option<PrivateKeySpec> {
    let mut pk = PrivateKeySpec::default();
    if let Some((key, v)) = first(ann, &keys::PRIVATE_KEY_ALGORITHM_KEYS) {
        match v.trim().to_ascii_uppercase().as_str() {
            "RSA" => pk.algorithm = Some(KeyAlgorithm::Rsa),
            "ECDSA" => pk.algorithm = Some(KeyAlgorithm::Ecdsa),
            "ED25519" => pk.algorithm = Some(KeyAlgorithm::Ed25519),
            _ => problems.push(bad(key, v, "is not a key algorithm: use RSA, ECDSA or Ed25519")),
        }
    }
    if let Some((key, v)) = first(ann, &keys::PRIVATE_KEY_SIZE_KEYS) {
        match v.trim().parse::<i32>() {
            Ok(n) if n > 0 => pk.size = Some(n),
            _ => problems.push(bad(
                key,
                v,
                "is not a key size: a positive number of bits (RSA 2048-8192, ECDSA 256 or 384)",
            )),
        }
    }
    if let Some((key, v)) = first(ann, &keys::PRIVATE_KEY_ROTATION_POLICY_KEYS) {
        match v.trim().to_ascii_lowercase().as_str() {
            "always" => pk.rotation_policy = Some(RotationPolicy::Always),
            "never" => pk.rotation_policy = Some(RotationPolicy::Never),
            _ => problems.push(bad(key, v, "is not a rotation policy: use Always or Never")),
        }
    }
    (pk != PrivateKeySpec::default()).then_some(pk)
}

/// A label value for `name`: at most 63 characters, ending with an alphanumeric.
pub fn label_value(name: &str) -> String {
    let mut v: String = name.chars().take(63).collect();
    while v.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        v.pop();
    }
    v
}

/// What `ingress` asks for: `Ok(None)` when it asks nothing of the shim, `Err` when its annotations
/// or TLS entries are invalid (then nothing is written for it and its Certificates are left alone).
pub fn plan(ingress: &Ingress, config: &ShimConfig) -> Result<Option<Plan>, InvalidIngress> {
    if !requested(ingress) {
        return Ok(None);
    }
    let ann = ingress.annotations();
    let mut problems = Vec::new();
    let issuer = issuer_of(ann, config, &mut problems);

    let common_name = first(ann, &keys::COMMON_NAME_KEYS).and_then(|(key, v)| {
        let v = v.trim();
        if v.is_empty() {
            problems.push(bad(key, v, "is empty"));
            None
        } else if v.len() > 64 {
            // X.509's upper bound for a common name (RFC 5280 ub-common-name).
            problems.push(bad(
                key,
                v,
                "is longer than 64 characters, the most a common name may have",
            ));
            None
        } else {
            Some(v.to_string())
        }
    });
    let duration = duration_of(ann, &keys::DURATION_KEYS, &mut problems);
    let renew_before = duration_of(ann, &keys::RENEW_BEFORE_KEYS, &mut problems);
    if let (Some((dk, d, _)), Some((rk, r, _))) = (&duration, &renew_before)
        && r >= d
    {
        problems.push(bad(
            rk,
            &ann[*rk],
            format!(
                "is not shorter than {dk:?} ({:?}): the certificate would always be renewing",
                ann[*dk]
            ),
        ));
    }
    let private_key = private_key_of(ann, &mut problems);

    let tls = ingress
        .spec
        .as_ref()
        .and_then(|s| s.tls.as_deref())
        .unwrap_or_default();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in tls.iter().enumerate() {
        if let Some(name) = entry.secret_name.as_deref().filter(|n| !n.is_empty()) {
            if let Some(&first) = seen.get(name) {
                problems.push(Problem::DuplicateSecretName {
                    name: name.to_string(),
                    first,
                    second: i,
                });
            } else {
                seen.insert(name, i);
            }
        }
    }
    if !problems.is_empty() {
        return Err(InvalidIngress(problems));
    }
    let Some(issuer) = issuer else {
        // issuer_of pushes a problem whenever it returns None.
        return Err(InvalidIngress(vec![Problem::NoDefaultIssuer]));
    };

    let mut labels: BTreeMap<String, String> = ingress
        .labels()
        .iter()
        .filter(|(k, _)| k.as_str() != APPLYSET_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(INGRESS_NAME_LABEL.to_string(), label_value(&ingress.name_any()));
    let mut annotations = BTreeMap::new();
    for (from, to) in [
        (HTTP01_INGRESS_CLASS, HTTP01_OVERRIDE_INGRESS_CLASS),
        (HTTP01_INGRESS_CLASS_NAME, HTTP01_OVERRIDE_INGRESS_CLASS_NAME),
    ] {
        if let Some(v) = ann.get(from).map(|v| v.trim()).filter(|v| !v.is_empty()) {
            annotations.insert(to.to_string(), v.to_string());
        }
    }

    let mut out = Plan {
        unsupported: UNSUPPORTED_ANNOTATIONS
            .iter()
            .copied()
            .filter(|k| ann.contains_key(*k))
            .collect(),
        ..Plan::default()
    };
    for (i, entry) in tls.iter().enumerate() {
        let hosts: Vec<&str> = entry
            .hosts
            .iter()
            .flatten()
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .collect();
        let Some(secret_name) = entry.secret_name.as_deref().filter(|n| !n.is_empty()) else {
            out.skipped.push(format!(
                "spec.tls[{i}] has no secretName, so there is no Secret to write"
            ));
            continue;
        };
        if hosts.is_empty() {
            out.skipped.push(format!(
                "spec.tls[{i}] (secretName {secret_name:?}) has no hosts, so there is nothing to certify"
            ));
            continue;
        }
        let mut dns_names: Vec<String> = Vec::new();
        let mut ips: Vec<IpAddr> = Vec::new();
        for h in hosts {
            match h.parse::<IpAddr>() {
                Ok(ip) => {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
                Err(_) => {
                    if !dns_names.iter().any(|d| d == h) {
                        dns_names.push(h.to_string());
                    }
                }
            }
        }
        out.certificates.push(DesiredCertificate {
            name: secret_name.to_string(),
            labels: labels.clone(),
            annotations: annotations.clone(),
            spec: CertificateSpec {
                secret_name: secret_name.to_string(),
                issuer_ref: issuer.clone(),
                common_name: common_name.clone(),
                dns_names,
                ip_addresses: ips.iter().map(IpAddr::to_string).collect(),
                duration: duration.as_ref().map(|(_, _, s)| s.clone()),
                renew_before: renew_before.as_ref().map(|(_, _, s)| s.clone()),
                renew_before_percentage: None,
                is_ca: false,
                private_key: private_key.clone(),
                subject: None,
                secret_template: None,
            },
        });
    }
    Ok(Some(out))
}

/// Who gets the Certificate named like a Secret that `ingress` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This Ingress: create or update it.
    Ours,
    /// Another Ingress has it, or is older and asks for it with a different spec: Warning, no write.
    /// (Same spec: the other Ingress's Certificate serves both; nothing to say.)
    Rival {
        /// The other Ingress.
        ingress: String,
        /// True when the other one asks for the same spec (no Warning then).
        same_spec: bool,
    },
    /// A Certificate of that name exists and is not controlled by an Ingress: left alone.
    NotOurs,
}

/// The Ingress controlling `cert` (its controller ownerReference of kind Ingress), if any.
pub fn controlling_ingress(cert: &Certificate) -> Option<&OwnerReference> {
    cert.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .filter(|o| o.kind == "Ingress" && o.api_version.starts_with("networking.k8s.io/"))
}

/// Sort key of "oldest": creation time, then name (cert-manager: the first to create it wins; the
/// oldest is the one that would have, and the rule does not depend on event order).
fn age_key(
    i: &Ingress,
) -> (
    Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    String,
) {
    (i.metadata.creation_timestamp.as_ref(), i.name_any())
}

/// Decides who gets Certificate `want.name` in `ingress`'s namespace. `existing`: the Certificate of
/// that name if there is one; `others`: the other Ingresses of the namespace with their plans.
pub fn claim<'a>(
    ingress: &Ingress,
    want: &DesiredCertificate,
    existing: Option<&Certificate>,
    others: impl IntoIterator<Item = (&'a Ingress, &'a DesiredCertificate)>,
) -> Claim {
    let uid = ingress.uid();
    let others: Vec<(&Ingress, &DesiredCertificate)> = others
        .into_iter()
        .filter(|(i, d)| i.uid() != uid && d.name == want.name && i.metadata.deletion_timestamp.is_none())
        .collect();
    if let Some(cert) = existing {
        return match controlling_ingress(cert) {
            Some(owner) if Some(&owner.uid) == uid.as_ref() => Claim::Ours,
            Some(owner) => match others.iter().find(|(i, _)| i.uid().as_ref() == Some(&owner.uid)) {
                // The owner still asks for it: it keeps it.
                Some((i, d)) => Claim::Rival {
                    ingress: i.name_any(),
                    same_spec: d.spec == want.spec,
                },
                // The owner is gone or no longer asks: its Certificate is about to be deleted, and
                // the deletion brings this Ingress back here. Not a conflict to report.
                None => Claim::Rival {
                    ingress: owner.name.clone(),
                    same_spec: true,
                },
            },
            None => Claim::NotOurs,
        };
    }
    match others
        .iter()
        .filter(|(i, _)| age_key(i) < age_key(ingress))
        .min_by(|a, b| age_key(a.0).cmp(&age_key(b.0)))
    {
        Some((i, d)) => Claim::Rival {
            ingress: i.name_any(),
            same_spec: d.spec == want.spec,
        },
        None => Claim::Ours,
    }
}

/// The controller ownerReference of a shim Certificate.
pub fn owner_reference(ingress: &Ingress) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: "networking.k8s.io/v1".into(),
        kind: "Ingress".into(),
        name: ingress.metadata.name.clone()?,
        uid: ingress.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    })
}

/// True when `cert` already is what `want` describes (no write needed).
///
/// Labels are compared as "ours are all there": a label another tool added must not make every pass
/// write (and tell `UpdateCertificate`) again. A label removed from the Ingress therefore leaves the
/// Certificate with the next change that writes it (server-side apply then drops it).
pub fn up_to_date(cert: &Certificate, want: &DesiredCertificate) -> bool {
    let labels_match = want.labels.iter().all(|(k, v)| cert.labels().get(k) == Some(v));
    let ann = cert.annotations();
    let annotations_match = want.annotations.iter().all(|(k, v)| ann.get(k) == Some(v))
        && [HTTP01_OVERRIDE_INGRESS_CLASS, HTTP01_OVERRIDE_INGRESS_CLASS_NAME]
            .iter()
            .all(|k| ann.contains_key(*k) == want.annotations.contains_key(*k));
    cert.spec == want.spec && labels_match && annotations_match
}

// ---------------------------------------------------------------------------------------------------
// The controller

/// Errors of a shim reconcile (API calls; bad Ingresses are reported in Events, not as errors).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// An API call failed (or this replica lost the lease mid-way).
    #[error("{what}: {source}")]
    Api {
        /// The call.
        what: String,
        /// Why.
        #[source]
        source: ferrite_kit::Error,
    },
}

impl ReasonedError for ShimError {
    fn reason(&self) -> &'static str {
        match self {
            ShimError::Api { source, .. } => source.reason(),
        }
    }
}

struct Context {
    client: kube::Client,
    config: ShimConfig,
    events: ferrite_kit::events::Events,
    leadership: ferrite_kit::leader::Leadership,
    ingresses: Store<Ingress>,
    certificates: Store<Certificate>,
    resync: Duration,
    /// Warnings already told per Ingress (namespace/name), so a problem gives one Event, not one per pass;
    /// a problem that goes away and comes back is told again.
    told: Mutex<HashMap<String, BTreeSet<String>>>,
}

fn key_of(ingress: &Ingress) -> String {
    format!(
        "{}/{}",
        ingress.namespace().unwrap_or_default(),
        ingress.name_any()
    )
}

impl Context {
    fn lock_told(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<String>>> {
        self.told.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes each of `warnings` (reason, note) not told for this Ingress since it last went away.
    async fn warn(&self, ingress: &Ingress, warnings: Vec<(&'static str, String)>) {
        let key = key_of(ingress);
        let now: BTreeSet<String> = warnings.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        let new: Vec<(&'static str, String)> = {
            let mut told = self.lock_told();
            let before = told.remove(&key).unwrap_or_default();
            let new = warnings
                .into_iter()
                .filter(|(r, n)| !before.contains(&format!("{r}: {n}")))
                .collect();
            if !now.is_empty() {
                told.insert(key, now);
            }
            new
        };
        let on = ingress.object_ref(&());
        for (reason, note) in new {
            tracing::warn!(ingress = %key_of(ingress), reason, "{note}");
            self.events.warning(&on, reason, "Reconcile", note).await;
        }
    }

    async fn normal(&self, on: &ObjectReference, reason: &str, note: String) {
        self.events.normal(on, reason, "Reconcile", note).await;
    }

    fn api(&self, ns: &str) -> Api<Certificate> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Plans of the other Ingresses of `ns` asking for a Certificate named `name`.
    fn rivals(&self, ns: &str, name: &str, me: &Ingress) -> Vec<(Arc<Ingress>, DesiredCertificate)> {
        self.ingresses
            .state()
            .into_iter()
            .filter(|i| i.namespace().as_deref() == Some(ns) && i.uid() != me.uid())
            .filter(|i| wants_secret(i, name))
            .filter_map(|i| {
                let d = plan(&i, &self.config)
                    .ok()
                    .flatten()?
                    .certificates
                    .into_iter()
                    .find(|d| d.name == name)?;
                Some((i, d))
            })
            .collect()
    }
}

/// True when `ingress` has a TLS entry for Secret `name` and asks the shim for certificates.
fn wants_secret(ingress: &Ingress, name: &str) -> bool {
    requested(ingress)
        && ingress
            .spec
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .is_some_and(|t| t.iter().any(|e| e.secret_name.as_deref() == Some(name)))
}

fn certificate_object(
    ingress: &Ingress,
    ns: &str,
    want: &DesiredCertificate,
) -> Result<serde_json::Value, ShimError> {
    let owner = owner_reference(ingress).ok_or_else(|| ShimError::Api {
        what: format!("Ingress {} has no name or uid", key_of(ingress)),
        source: ferrite_kit::Error::Option("an Ingress from the watch without metadata".into()),
    })?;
    Ok(json!({
        "apiVersion": "certs.ferrite.dev/v1alpha1",
        "kind": "Certificate",
        "metadata": {
            "name": want.name,
            "namespace": ns,
            "labels": want.labels,
            "annotations": want.annotations,
            "ownerReferences": [owner],
        },
        "spec": want.spec,
    }))
}

async fn reconcile(ingress: Arc<Ingress>, ctx: Arc<Context>) -> Result<Action, ShimError> {
    let safety_net = Action::requeue(ctx.resync);
    if ingress.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector (or the sweep) removes its Certificates; recreating them
        // now would race it (cert-manager skips such Ingresses too).
        return Ok(safety_net);
    }
    let Some(ns) = ingress.namespace() else {
        return Ok(Action::await_change());
    };
    let uid = ingress.uid();
    let on = ingress.object_ref(&());
    let mut warnings: Vec<(&'static str, String)> = Vec::new();
    let wanted = match plan(&ingress, &ctx.config) {
        Ok(p) => p,
        Err(invalid) => {
            // Nothing is written and nothing deleted: the Certificates already issued stay as they are.
            warnings.push((
                reasons::BAD_CONFIG,
                format!("no Certificate written for this Ingress: {invalid}"),
            ));
            ctx.warn(&ingress, warnings).await;
            return Ok(safety_net);
        }
    };
    let plan = wanted.unwrap_or_default();
    for s in &plan.skipped {
        warnings.push((reasons::BAD_CONFIG, format!("skipped a TLS entry: {s}")));
    }
    for k in &plan.unsupported {
        warnings.push((
            reasons::UNSUPPORTED_ANNOTATION,
            format!("annotation {k:?} is not supported by ferrite-certs and is ignored (see docs/certs.md, ingress-shim)"),
        ));
    }
    let api = ctx.api(&ns);
    let mut failure = None;
    for want in &plan.certificates {
        let existing = ctx.certificates.get(&ObjectRef::new(&want.name).within(&ns));
        let rivals = ctx.rivals(&ns, &want.name, &ingress);
        match claim(
            &ingress,
            want,
            existing.as_deref(),
            rivals.iter().map(|(i, d)| (&**i, d)),
        ) {
            Claim::Ours => {}
            Claim::Rival {
                ingress: other,
                same_spec,
            } => {
                if !same_spec {
                    warnings.push((
                        reasons::CERTIFICATE_CONFLICT,
                        format!(
                            "Certificate {:?} (secretName) is also asked for by Ingress {other:?}, which is older or already has it, with other hosts or settings; it keeps it and this entry gets no Certificate of its own",
                            want.name
                        ),
                    ));
                }
                continue;
            }
            Claim::NotOurs => {
                warnings.push((
                    reasons::CERTIFICATE_CONFLICT,
                    format!(
                        "Certificate {:?} exists and is not managed by this Ingress; it is left alone (delete it, or rename the secretName, to have the shim manage it)",
                        want.name
                    ),
                ));
                continue;
            }
        }
        if existing.as_deref().is_some_and(|c| up_to_date(c, want)) {
            continue;
        }
        let obj = certificate_object(&ingress, &ns, want)?;
        // A new Certificate is applied without force: one created meanwhile by someone else conflicts
        // instead of being adopted. Ours is applied with force (fields another manager took come back).
        let params = if existing.is_some() {
            PatchParams::apply(names::CERTS_CONTROLLER_MANAGER).force()
        } else {
            PatchParams::apply(names::CERTS_CONTROLLER_MANAGER)
        };
        let res = ctx
            .leadership
            .bounded(async { Ok(api.patch(&want.name, &params, &Patch::Apply(&obj)).await?) })
            .await;
        match res {
            Ok(_) if existing.is_some() => {
                ctx.normal(
                    &on,
                    reasons::UPDATE_CERTIFICATE,
                    format!("updated Certificate {:?}", want.name),
                )
                .await
            }
            Ok(_) => {
                ctx.normal(
                    &on,
                    reasons::CREATE_CERTIFICATE,
                    format!("created Certificate {:?}", want.name),
                )
                .await
            }
            Err(source) => {
                failure.get_or_insert(ShimError::Api {
                    what: format!("applying Certificate {ns}/{}", want.name),
                    source,
                });
            }
        }
    }

    // Certificates this Ingress controls and no longer asks for (cert-manager deletes them too).
    let keep: BTreeSet<&str> = plan.certificates.iter().map(|d| d.name.as_str()).collect();
    let stale: Vec<Arc<Certificate>> = ctx
        .certificates
        .state()
        .into_iter()
        .filter(|c| c.namespace().as_deref() == Some(ns.as_str()))
        .filter(|c| controlling_ingress(c).is_some_and(|o| Some(&o.uid) == uid.as_ref()))
        .filter(|c| !keep.contains(c.name_any().as_str()))
        .collect();
    for cert in stale {
        let name = cert.name_any();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: cert.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        let res = ctx
            .leadership
            .bounded(async {
                match api.delete(&name, &dp).await {
                    Ok(_) => Ok(true),
                    Err(e) if ferrite_kit::error::is_not_found(&e) => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })
            .await;
        match res {
            Ok(true) => {
                ctx.normal(
                    &on,
                    reasons::DELETE_CERTIFICATE,
                    format!("deleted Certificate {name:?}, which this Ingress no longer asks for"),
                )
                .await
            }
            Ok(false) => {}
            Err(source) => {
                failure.get_or_insert(ShimError::Api {
                    what: format!("deleting Certificate {ns}/{name}"),
                    source,
                });
            }
        }
    }
    ctx.warn(&ingress, warnings).await;
    match failure {
        Some(e) => Err(e),
        None => Ok(safety_net),
    }
}

/// Deletes the Certificates whose controlling Ingress is gone. Each candidate is read again and
/// deleted only at the version read: a Certificate whose ownerReference the garbage collector removed
/// meanwhile (the Ingress was deleted with `propagationPolicy: Orphan`) is kept.
async fn sweep(ctx: &Context) {
    if !ctx.leadership.is_leader() {
        return;
    }
    let live: HashMap<String, Option<String>> = ctx
        .ingresses
        .state()
        .iter()
        .map(|i| (key_of(i), i.uid()))
        .collect();
    for cert in ctx.certificates.state() {
        if !cert.labels().contains_key(INGRESS_NAME_LABEL) {
            continue;
        }
        let (Some(owner), Some(ns)) = (controlling_ingress(&cert), cert.namespace()) else {
            continue;
        };
        if live.get(&format!("{ns}/{}", owner.name)) == Some(&Some(owner.uid.clone())) {
            continue;
        }
        if let Err(e) = delete_orphan(ctx, &ns, &cert.name_any(), &owner.uid).await {
            tracing::warn!(certificate = %format!("{ns}/{}", cert.name_any()), error = %e, "could not delete the Certificate of a deleted Ingress; will retry");
        }
    }
    let mut told = ctx.lock_told();
    told.retain(|k, _| live.contains_key(k));
}

async fn delete_orphan(
    ctx: &Context,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<(), ferrite_kit::Error> {
    let ingresses: Api<Ingress> = Api::namespaced(ctx.client.clone(), ns);
    let api = ctx.api(ns);
    let Some(cert) = ctx
        .leadership
        .bounded(async { Ok(api.get_opt(name).await?) })
        .await?
    else {
        return Ok(());
    };
    let Some(owner) = controlling_ingress(&cert).filter(|o| o.uid == owner_uid) else {
        return Ok(());
    };
    // The store may lag: ask the API whether the Ingress is really gone.
    let ing = ctx
        .leadership
        .bounded(async { Ok(ingresses.get_opt(&owner.name).await?) })
        .await?;
    if ing.is_some_and(|i| i.uid().as_deref() == Some(owner_uid)) {
        return Ok(());
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: cert.uid(),
            resource_version: cert.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match ctx
        .leadership
        .bounded(async { Ok(api.delete(name, &dp).await?) })
        .await
    {
        Ok(_) => {
            tracing::info!(certificate = %format!("{ns}/{name}"), ingress = %owner.name, "deleted the Certificate of a deleted Ingress");
            Ok(())
        }
        Err(ferrite_kit::Error::Kube(e)) if ferrite_kit::error::is_not_found(&e) => Ok(()),
        // 409: changed since read (e.g. orphaned by the garbage collector); the next sweep looks again.
        Err(ferrite_kit::Error::Kube(kube::Error::Api(s))) if s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Everything the shim takes from the [`App`], so it can be spawned (`'static`).
struct Parts {
    client: kube::Client,
    events: ferrite_kit::events::Events,
    leadership: ferrite_kit::leader::Leadership,
    watches: ferrite_kit::watch::Watches,
    readiness: ferrite_kit::admin::Readiness,
    /// Also carries the shutdown token.
    opts: ferrite_kit::runner::RunOptions,
}

impl Parts {
    fn of(app: &App) -> Self {
        let opts = app.run_options();
        Self {
            client: app.client.clone(),
            events: app.events(names::CERTS_CONTROLLER_REPORTER),
            leadership: app.leadership.clone(),
            watches: app.watches.clone(),
            readiness: app.readiness.clone(),
            opts,
        }
    }
}

/// Runs the ingress-shim until `app` shuts down: watches Ingresses (the process's shared trimmed
/// watch) and Certificates, keeps the Certificates the Ingresses ask for, deletes those no longer
/// asked for or whose Ingress is gone. Only the leader writes. Fails at start when the Certificate
/// CRD is not installed.
pub async fn run(app: &App, config: ShimConfig) -> anyhow::Result<()> {
    run_parts(Parts::of(app), config).await
}

/// [`run`] on its own task (what the controller does next to its own reconcilers).
pub fn spawn(app: &App, config: ShimConfig) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(run_parts(Parts::of(app), config))
}

async fn run_parts(parts: Parts, config: ShimConfig) -> anyhow::Result<()> {
    let client = parts.client.clone();
    ferrite_kit::client::require_crd::<Certificate>(&client).await?;
    let ingresses_w = parts.watches.shared(
        Api::<Ingress>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let certs_w = parts.watches.shared(
        Api::<Certificate>::all(client.clone()),
        watcher::Config::default(),
        Trim::all(),
    );
    let ingresses = ingresses_w.store();
    let certificates = certs_w.store();
    parts
        .readiness
        .gate("ingress-shim: watch certificates")
        .open_when_synced(certificates.clone());

    let ctx = Arc::new(Context {
        client,
        config,
        events: parts.events,
        leadership: parts.leadership.clone(),
        ingresses: ingresses.clone(),
        certificates: certificates.clone(),
        resync: parts.opts.resync,
        told: Mutex::new(HashMap::new()),
    });

    // A Certificate changed or went: reconcile the Ingress controlling it; when it went, also the
    // Ingresses of its namespace asking for its name (one waiting for an older Ingress takes it over).
    let cert_triggers = {
        let ingresses = ingresses.clone();
        futures::stream::unfold(certs_w.subscribe(), |mut sub| async move {
            sub.next_change().await.map(|c| (c, sub))
        })
        .flat_map(move |change| {
            let cert = change.object().clone();
            let ns = cert.namespace().unwrap_or_default();
            let name = cert.name_any();
            // Only Ingresses that exist: the Controller reports a reference it cannot find as an error.
            let mut refs: Vec<ObjectRef<Ingress>> = controlling_ingress(&cert)
                .map(|o| ObjectRef::new(&o.name).within(&ns))
                .filter(|r| ingresses.get(r).is_some())
                .into_iter()
                .collect();
            // Only a deletion frees a name; scanning the Ingresses on every status update of every
            // Certificate would cost O(Ingresses) per update.
            if matches!(change, Change::Deleted(_)) {
                refs.extend(
                    ingresses
                        .state()
                        .iter()
                        .filter(|i| i.namespace().as_deref() == Some(ns.as_str()) && wants_secret(i, &name))
                        .map(|i| ObjectRef::from_obj(&**i)),
                );
            }
            futures::stream::iter(refs)
        })
    };
    // An Ingress went: its rivals may take over its names.
    let rival_triggers = {
        let ingresses = ingresses.clone();
        futures::stream::unfold(ingresses_w.subscribe(), |mut sub| async move {
            sub.next_change().await.map(|c| (c, sub))
        })
        .filter_map(|c| async move {
            match c {
                Change::Deleted(i) => Some(i),
                Change::Applied(_) => None,
            }
        })
        .flat_map(move |gone| {
            let ns = gone.namespace();
            let names: Vec<String> = gone
                .spec
                .iter()
                .flat_map(|s| s.tls.iter().flatten())
                .filter_map(|t| t.secret_name.clone())
                .collect();
            let refs: Vec<ObjectRef<Ingress>> = ingresses
                .state()
                .iter()
                .filter(|i| i.namespace() == ns && names.iter().any(|n| wants_secret(i, n)))
                .map(|i| ObjectRef::from_obj(&**i))
                .collect();
            futures::stream::iter(refs)
        })
    };

    // The sweep: when an Ingress is deleted, at every resync, and when this replica becomes leader.
    let sweeper = {
        let ctx = ctx.clone();
        let shutdown = parts.opts.shutdown.clone();
        let mut sub = ingresses_w.subscribe();
        let mut leader = parts.leadership.subscribe();
        let every = parts.opts.resync;
        tokio::spawn(async move {
            if !(ferrite_kit::admin::wait_synced(&ctx.ingresses).await
                && ferrite_kit::admin::wait_synced(&ctx.certificates).await)
            {
                return;
            }
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = sub.next_change() => match c {
                        None => break,
                        Some(Change::Applied(_)) => continue,
                        Some(Change::Deleted(_)) => {}
                    },
                    _ = tick.tick() => {}
                    r = leader.changed() => if r.is_err() { break },
                }
                sweep(&ctx).await;
            }
        })
    };

    let controller = ingresses_w
        .controller()
        .reconcile_on(futures::stream::select(cert_triggers, rival_triggers));
    tracing::info!(
        default_issuer = ?ctx.config.default_issuer.as_ref().map(|i| format!("{}/{}", i.kind.as_str(), i.name)),
        "ingress-shim starting"
    );
    ferrite_kit::runner::run(controller, ctx, reconcile, parts.opts).await;
    sweeper.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ingress(name: &str, annotations: Value, tls: Value) -> Ingress {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {
                "name": name, "namespace": "web", "uid": format!("uid-{name}"),
                "annotations": annotations,
                "labels": {"app": "shop", APPLYSET_LABEL: "applyset-1"},
            },
            "spec": {"tls": tls},
        }))
        .expect("test Ingress parses")
    }

    fn with_created(mut i: Ingress, ts: &str) -> Ingress {
        i.metadata.creation_timestamp = Some(serde_json::from_value(json!(ts)).expect("timestamp"));
        i
    }

    fn one_entry() -> Value {
        json!([{"hosts": ["shop.example.com"], "secretName": "shop-tls"}])
    }

    fn config() -> ShimConfig {
        ShimConfig {
            default_issuer: Some(IssuerRef {
                name: "letsencrypt".into(),
                kind: IssuerKind::ClusterIssuer,
                group: None,
            }),
        }
    }

    fn only(p: Plan) -> DesiredCertificate {
        assert_eq!(p.certificates.len(), 1, "{p:?}");
        p.certificates.into_iter().next().expect("one")
    }

    #[test]
    fn issuer_annotations() {
        // (annotations, default issuer configured, expected issuer (kind, name) or error substring)
        type Case<'a> = (&'a str, Value, bool, Result<(IssuerKind, &'a str), &'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                "ours, issuer",
                json!({"certs.ferrite.dev/issuer": "ca"}),
                false,
                Ok((IssuerKind::Issuer, "ca")),
            ),
            (
                "cert-manager, issuer",
                json!({"cert-manager.io/issuer": "ca"}),
                false,
                Ok((IssuerKind::Issuer, "ca")),
            ),
            (
                "ours, cluster-issuer",
                json!({"certs.ferrite.dev/cluster-issuer": "le"}),
                false,
                Ok((IssuerKind::ClusterIssuer, "le")),
            ),
            (
                "cert-manager, cluster-issuer",
                json!({"cert-manager.io/cluster-issuer": "le"}),
                false,
                Ok((IssuerKind::ClusterIssuer, "le")),
            ),
            (
                "ours before cert-manager's",
                json!({"certs.ferrite.dev/issuer": "a", "cert-manager.io/issuer": "b"}),
                false,
                Ok((IssuerKind::Issuer, "a")),
            ),
            (
                "an issuer annotation wins over tls-acme",
                json!({"kubernetes.io/tls-acme": "true", "cert-manager.io/issuer": "ca"}),
                true,
                Ok((IssuerKind::Issuer, "ca")),
            ),
            (
                "tls-acme with a default issuer",
                json!({"kubernetes.io/tls-acme": "true"}),
                true,
                Ok((IssuerKind::ClusterIssuer, "letsencrypt")),
            ),
            (
                "tls-acme Go-style true",
                json!({"kubernetes.io/tls-acme": "True"}),
                true,
                Ok((IssuerKind::ClusterIssuer, "letsencrypt")),
            ),
            (
                "tls-acme without a default issuer",
                json!({"kubernetes.io/tls-acme": "true"}),
                false,
                Err("--default-issuer-name"),
            ),
            (
                "both issuer and cluster-issuer",
                json!({"cert-manager.io/issuer": "a", "certs.ferrite.dev/cluster-issuer": "b"}),
                true,
                Err("both \"cert-manager.io/issuer\" and \"certs.ferrite.dev/cluster-issuer\" are set"),
            ),
            (
                "empty issuer name",
                json!({"cert-manager.io/cluster-issuer": " "}),
                true,
                Err("annotation \"cert-manager.io/cluster-issuer\": \" \" is empty"),
            ),
        ];
        for (what, ann, default, want) in cases {
            let cfg = if default { config() } else { ShimConfig::default() };
            let got = plan(&ingress("i", ann, one_entry()), &cfg);
            match (want, got) {
                (Ok((kind, name)), Ok(Some(p))) => {
                    let c = only(p);
                    assert_eq!(c.spec.issuer_ref.kind, kind, "{what}");
                    assert_eq!(c.spec.issuer_ref.name, name, "{what}");
                }
                (Err(needle), Err(e)) => assert!(e.to_string().contains(needle), "{what}: {e}"),
                (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn not_asked() {
        for (what, ann) in [
            ("no annotations", json!({})),
            ("tls-acme false", json!({"kubernetes.io/tls-acme": "false"})),
            (
                "tls-acme nonsense",
                json!({"kubernetes.io/tls-acme": "yes please"}),
            ),
            ("other annotations", json!({"cert-manager.io/duration": "1h"})),
        ] {
            assert_eq!(
                plan(&ingress("i", ann, one_entry()), &config()),
                Ok(None),
                "{what}"
            );
        }
    }

    #[test]
    fn spec_annotations_both_prefixes() {
        for prefix in ["certs.ferrite.dev", "cert-manager.io"] {
            let ann = json!({
                "cert-manager.io/cluster-issuer": "le",
                format!("{prefix}/common-name"): "shop.example.com",
                format!("{prefix}/duration"): "2160h",
                format!("{prefix}/renew-before"): "360h",
                format!("{prefix}/private-key-algorithm"): "ECDSA",
                format!("{prefix}/private-key-size"): "384",
                format!("{prefix}/private-key-rotation-policy"): "Never",
            });
            let c = only(plan(&ingress("i", ann, one_entry()), &config()).unwrap().unwrap());
            assert_eq!(c.name, "shop-tls", "{prefix}");
            assert_eq!(c.spec.secret_name, "shop-tls");
            assert_eq!(c.spec.common_name.as_deref(), Some("shop.example.com"));
            assert_eq!(c.spec.duration.as_deref(), Some("2160h0m0s"));
            assert_eq!(c.spec.renew_before.as_deref(), Some("360h0m0s"));
            assert_eq!(
                c.spec.private_key,
                Some(PrivateKeySpec {
                    algorithm: Some(KeyAlgorithm::Ecdsa),
                    size: Some(384),
                    encoding: None,
                    rotation_policy: Some(RotationPolicy::Never),
                }),
                "{prefix}"
            );
        }
        // Spelling as cert-manager writes it and in other cases both work.
        for (v, want) in [
            ("RSA", KeyAlgorithm::Rsa),
            ("rsa", KeyAlgorithm::Rsa),
            ("Ed25519", KeyAlgorithm::Ed25519),
            ("ecdsa", KeyAlgorithm::Ecdsa),
        ] {
            let ann = json!({"cert-manager.io/issuer": "ca", "cert-manager.io/private-key-algorithm": v});
            let c = only(plan(&ingress("i", ann, one_entry()), &config()).unwrap().unwrap());
            assert_eq!(c.spec.private_key.and_then(|p| p.algorithm), Some(want), "{v}");
        }
        // Without spec annotations, nothing but the names and the issuer is set.
        let c = only(
            plan(
                &ingress("i", json!({"cert-manager.io/issuer": "ca"}), one_entry()),
                &config(),
            )
            .unwrap()
            .unwrap(),
        );
        assert_eq!(
            (
                c.spec.common_name,
                c.spec.duration,
                c.spec.renew_before,
                c.spec.private_key
            ),
            (None, None, None, None)
        );
    }

    #[test]
    fn bad_values_name_the_annotation() {
        // (annotation, value, substring of the error)
        let cases = [
            ("cert-manager.io/duration", "90d", "no day unit"),
            ("certs.ferrite.dev/duration", "soon", "is not a duration"),
            ("cert-manager.io/duration", "0s", "is zero"),
            ("cert-manager.io/renew-before", "-1h", "negative"),
            (
                "cert-manager.io/private-key-algorithm",
                "DSA",
                "use RSA, ECDSA or Ed25519",
            ),
            ("certs.ferrite.dev/private-key-size", "big", "is not a key size"),
            ("cert-manager.io/private-key-size", "-2048", "is not a key size"),
            (
                "cert-manager.io/private-key-rotation-policy",
                "Sometimes",
                "use Always or Never",
            ),
            ("cert-manager.io/common-name", "", "is empty"),
        ];
        for (key, value, needle) in cases {
            let ann = json!({"cert-manager.io/cluster-issuer": "le", key: value});
            let err = plan(&ingress("i", ann, one_entry()), &config()).expect_err(key);
            let msg = err.to_string();
            assert!(msg.contains(&format!("annotation {key:?}")), "{key}: {msg}");
            assert!(msg.contains(needle), "{key}={value}: {msg}");
        }
        let long_cn = "a".repeat(65);
        let ann = json!({"cert-manager.io/issuer": "ca", "cert-manager.io/common-name": long_cn});
        assert!(
            plan(&ingress("i", ann, one_entry()), &config())
                .unwrap_err()
                .to_string()
                .contains("64")
        );
        // renewBefore must be shorter than duration.
        let ann = json!({"cert-manager.io/issuer": "ca", "cert-manager.io/duration": "24h",
            "cert-manager.io/renew-before": "48h"});
        let msg = plan(&ingress("i", ann, one_entry()), &config())
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("\"cert-manager.io/renew-before\"") && msg.contains("not shorter"),
            "{msg}"
        );
        // Several problems are all reported at once.
        let ann = json!({"cert-manager.io/issuer": "ca", "cert-manager.io/duration": "x",
            "cert-manager.io/private-key-size": "y"});
        let err = plan(&ingress("i", ann, one_entry()), &config()).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        // A long value is cut in the message.
        let ann = json!({"cert-manager.io/issuer": "ca", "cert-manager.io/duration": "x".repeat(5000)});
        assert!(
            plan(&ingress("i", ann, one_entry()), &config())
                .unwrap_err()
                .to_string()
                .len()
                < 600
        );
    }

    #[test]
    fn tls_entries() {
        let ann = json!({"cert-manager.io/cluster-issuer": "le"});
        // (case, tls, certificates (name, dnsNames, ipAddresses), skipped reasons substrings)
        type Want<'a> = Vec<(&'a str, Vec<&'a str>, Vec<&'a str>)>;
        let cases: Vec<(&str, Value, Want<'_>, Vec<&str>)> = vec![
            (
                "one per entry, in order",
                json!([{"hosts": ["a.example.com"], "secretName": "a"},
                       {"hosts": ["b.example.com", "c.example.com"], "secretName": "b"}]),
                vec![
                    ("a", vec!["a.example.com"], vec![]),
                    ("b", vec!["b.example.com", "c.example.com"], vec![]),
                ],
                vec![],
            ),
            (
                "IP hosts go to ipAddresses, duplicates dropped",
                json!([{"hosts": ["x.example.com", "192.0.2.7", "x.example.com", "2001:db8::1", "2001:0db8::1"],
                        "secretName": "x"}]),
                vec![("x", vec!["x.example.com"], vec!["192.0.2.7", "2001:db8::1"])],
                vec![],
            ),
            (
                "wildcard kept as is",
                json!([{"hosts": ["*.apps.example.com"], "secretName": "w"}]),
                vec![("w", vec!["*.apps.example.com"], vec![])],
                vec![],
            ),
            (
                "no secretName: skipped",
                json!([{"hosts": ["a.example.com"]}, {"hosts": ["b.example.com"], "secretName": "b"}]),
                vec![("b", vec!["b.example.com"], vec![])],
                vec!["spec.tls[0] has no secretName"],
            ),
            (
                "no hosts: skipped",
                json!([{"secretName": "a"}, {"hosts": [], "secretName": "b"}, {"hosts": [""], "secretName": "c"}]),
                vec![],
                vec![
                    "spec.tls[0] (secretName \"a\") has no hosts",
                    "spec.tls[1]",
                    "spec.tls[2]",
                ],
            ),
            ("no tls at all", json!(null), vec![], vec![]),
        ];
        for (what, tls, want, skipped) in cases {
            let p = plan(&ingress("i", ann.clone(), tls), &config()).unwrap().unwrap();
            let got: Vec<(String, Vec<String>, Vec<String>)> = p
                .certificates
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        c.spec.dns_names.clone(),
                        c.spec.ip_addresses.clone(),
                    )
                })
                .collect();
            let want: Vec<(String, Vec<String>, Vec<String>)> = want
                .into_iter()
                .map(|(n, d, i)| {
                    (
                        n.to_string(),
                        d.into_iter().map(String::from).collect(),
                        i.into_iter().map(String::from).collect(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{what}");
            assert_eq!(p.skipped.len(), skipped.len(), "{what}: {:?}", p.skipped);
            for (s, needle) in p.skipped.iter().zip(skipped) {
                assert!(s.contains(needle), "{what}: {s}");
            }
        }
        // Two entries naming one Secret: the whole Ingress is refused (cert-manager does the same).
        let tls = json!([{"hosts": ["a.example.com"], "secretName": "same"},
                         {"hosts": ["b.example.com"], "secretName": "same"}]);
        let err = plan(&ingress("i", ann, tls), &config()).unwrap_err().to_string();
        assert!(
            err.contains("spec.tls[0].secretName") && err.contains("spec.tls[1]"),
            "{err}"
        );
    }

    #[test]
    fn labels_annotations_and_unsupported() {
        let ann = json!({
            "cert-manager.io/cluster-issuer": "le",
            HTTP01_INGRESS_CLASS: "nginx",
            HTTP01_INGRESS_CLASS_NAME: "ferrite",
            HTTP01_EDIT_IN_PLACE: "true",
            "cert-manager.io/usages": "server auth",
        });
        let p = plan(&ingress("shop", ann, one_entry()), &config())
            .unwrap()
            .unwrap();
        assert_eq!(
            p.unsupported,
            vec!["cert-manager.io/usages", HTTP01_EDIT_IN_PLACE]
        );
        let c = only(p);
        assert_eq!(c.labels.get("app").map(String::as_str), Some("shop"));
        assert_eq!(c.labels.get(INGRESS_NAME_LABEL).map(String::as_str), Some("shop"));
        assert!(!c.labels.contains_key(APPLYSET_LABEL), "{:?}", c.labels);
        assert_eq!(
            c.annotations
                .get(HTTP01_OVERRIDE_INGRESS_CLASS)
                .map(String::as_str),
            Some("nginx")
        );
        assert_eq!(
            c.annotations
                .get(HTTP01_OVERRIDE_INGRESS_CLASS_NAME)
                .map(String::as_str),
            Some("ferrite")
        );
        // Label values: 63 characters at most, ending alphanumeric.
        assert_eq!(label_value("shop"), "shop");
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(label_value(&long), "a".repeat(62));
    }

    fn certificate(name: &str, owner: Option<&Ingress>, spec: &CertificateSpec) -> Certificate {
        let mut c = Certificate::new(name, spec.clone());
        c.metadata.namespace = Some("web".into());
        c.metadata.owner_references = owner.and_then(owner_reference).map(|o| vec![o]);
        c
    }

    #[test]
    fn claims() {
        let ann = json!({"cert-manager.io/cluster-issuer": "le"});
        let old = with_created(ingress("old", ann.clone(), one_entry()), "2026-01-01T00:00:00Z");
        let new = with_created(ingress("new", ann.clone(), one_entry()), "2026-06-01T00:00:00Z");
        let other_hosts = json!([{"hosts": ["other.example.com"], "secretName": "shop-tls"}]);
        let new_other = with_created(
            ingress("new", ann.clone(), other_hosts.clone()),
            "2026-06-01T00:00:00Z",
        );
        let old_other = with_created(ingress("old", ann, other_hosts), "2026-01-01T00:00:00Z");
        let want = |i: &Ingress| only(plan(i, &config()).unwrap().unwrap());
        let (w_old, w_new, w_new_other, w_old_other) =
            (want(&old), want(&new), want(&new_other), want(&old_other));
        let user_made = certificate("shop-tls", None, &w_new.spec);
        let by_old = certificate("shop-tls", Some(&old), &w_old.spec);
        let by_new = certificate("shop-tls", Some(&new_other), &w_new_other.spec);
        let rival = |ingress: &str, same_spec| Claim::Rival {
            ingress: ingress.into(),
            same_spec,
        };
        // (case, me, my wish, existing, the others with their wishes, expected)
        type Others<'a> = Vec<(&'a Ingress, &'a DesiredCertificate)>;
        type Case<'a> = (
            &'a str,
            &'a Ingress,
            &'a DesiredCertificate,
            Option<&'a Certificate>,
            Others<'a>,
            Claim,
        );
        let cases: Vec<Case<'_>> = vec![
            ("alone, none yet", &new, &w_new, None, vec![], Claim::Ours),
            (
                "alone, ours exists",
                &old,
                &w_old,
                Some(&by_old),
                vec![],
                Claim::Ours,
            ),
            (
                "a user's Certificate",
                &new,
                &w_new,
                Some(&user_made),
                vec![],
                Claim::NotOurs,
            ),
            (
                "older rival, same hosts: no conflict",
                &new,
                &w_new,
                None,
                vec![(&old, &w_old)],
                rival("old", true),
            ),
            (
                "older rival, other hosts",
                &new_other,
                &w_new_other,
                None,
                vec![(&old, &w_old)],
                rival("old", false),
            ),
            (
                "I am the older one",
                &old,
                &w_old,
                None,
                vec![(&new_other, &w_new_other)],
                Claim::Ours,
            ),
            (
                "the owner keeps it even when younger",
                &old_other,
                &w_old_other,
                Some(&by_new),
                vec![(&new_other, &w_new_other)],
                rival("new", true),
            ),
            (
                "the owner keeps it, other hosts",
                &old,
                &w_old,
                Some(&by_new),
                vec![(&new_other, &w_new_other)],
                rival("new", false),
            ),
            (
                "the owner is gone: wait quietly for its deletion",
                &old,
                &w_old,
                Some(&by_new),
                vec![],
                rival("new", true),
            ),
            (
                "I am listed among the others: ignored",
                &new,
                &w_new,
                None,
                vec![(&new, &w_new)],
                Claim::Ours,
            ),
        ];
        for (what, me, wish, existing, others, want) in cases {
            assert_eq!(claim(me, wish, existing, others), want, "{what}");
        }
        // An older rival being deleted does not count.
        let mut dying = old.clone();
        dying.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-07-01T00:00:00Z")).unwrap());
        assert_eq!(
            claim(&new_other, &w_new_other, None, [(&dying, &w_old)]),
            Claim::Ours
        );
        // Same creation time: the name decides, so every replica agrees.
        let a = with_created(
            ingress("a", json!({"cert-manager.io/issuer": "x"}), one_entry()),
            "2026-01-01T00:00:00Z",
        );
        let b = with_created(
            ingress("b", json!({"cert-manager.io/issuer": "y"}), one_entry()),
            "2026-01-01T00:00:00Z",
        );
        let (wa, wb) = (want(&a), want(&b));
        assert_eq!(claim(&a, &wa, None, [(&b, &wb)]), Claim::Ours);
        assert_eq!(claim(&b, &wb, None, [(&a, &wa)]), rival("a", false));
    }

    #[test]
    fn up_to_date_compares_spec_labels_and_solver_annotations() {
        let ann = json!({"cert-manager.io/cluster-issuer": "le", HTTP01_INGRESS_CLASS_NAME: "ferrite"});
        let ing = ingress("shop", ann, one_entry());
        let want = only(plan(&ing, &config()).unwrap().unwrap());
        let mut cert = certificate("shop-tls", Some(&ing), &want.spec);
        cert.metadata.labels = Some(want.labels.clone());
        cert.metadata.annotations = Some(want.annotations.clone());
        assert!(up_to_date(&cert, &want));
        let mut changed = want.clone();
        changed.spec.dns_names.push("www.example.com".into());
        assert!(!up_to_date(&cert, &changed), "hosts changed");
        let mut changed = want.clone();
        changed.labels.insert("tier".into(), "web".into());
        assert!(!up_to_date(&cert, &changed), "labels changed");
        let mut changed = want.clone();
        changed.annotations.clear();
        assert!(!up_to_date(&cert, &changed), "solver annotation removed");
        // Annotations and labels of others on the Certificate do not matter.
        cert.metadata
            .annotations
            .get_or_insert_default()
            .insert("note".into(), "x".into());
        cert.metadata
            .labels
            .get_or_insert_default()
            .insert("backup".into(), "daily".into());
        assert!(up_to_date(&cert, &want));
        let mut changed = want.clone();
        changed.labels.insert("app".into(), "other".into());
        assert!(!up_to_date(&cert, &changed), "a label value changed");
    }

    #[test]
    fn owner_reference_is_a_controller_reference() {
        let ing = ingress("shop", json!({}), one_entry());
        let o = owner_reference(&ing).expect("named Ingress");
        assert_eq!(
            (
                o.api_version.as_str(),
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str(),
                o.controller
            ),
            ("networking.k8s.io/v1", "Ingress", "shop", "uid-shop", Some(true))
        );
        let c = certificate(
            "shop-tls",
            Some(&ing),
            &CertificateSpec {
                secret_name: "shop-tls".into(),
                issuer_ref: IssuerRef {
                    name: "x".into(),
                    kind: IssuerKind::Issuer,
                    group: None,
                },
                common_name: None,
                dns_names: vec![],
                ip_addresses: vec![],
                duration: None,
                renew_before: None,
                renew_before_percentage: None,
                is_ca: false,
                private_key: None,
                subject: None,
                secret_template: None,
            },
        );
        assert_eq!(controlling_ingress(&c).map(|o| o.uid.as_str()), Some("uid-shop"));
        let mut not_controller = c.clone();
        not_controller.metadata.owner_references.as_mut().unwrap()[0].controller = None;
        assert!(controlling_ingress(&not_controller).is_none());
        let obj = certificate_object(
            &ing,
            "web",
            &only(
                plan(
                    &ingress("shop", json!({"cert-manager.io/issuer": "ca"}), one_entry()),
                    &config(),
                )
                .unwrap()
                .unwrap(),
            ),
        )
        .expect("object");
        assert_eq!(obj["metadata"]["ownerReferences"][0]["controller"], true);
        assert_eq!(obj["spec"]["issuerRef"]["kind"], "Issuer");
        assert_eq!(obj["spec"]["dnsNames"], json!(["shop.example.com"]));
    }

    #[test]
    fn flags() {
        let args = |name: Option<&str>, kind| ShimArgs {
            default_issuer_name: name.map(String::from),
            default_issuer_kind: IssuerKindArg(kind),
        };
        assert_eq!(args(None, IssuerKind::Issuer).config(), Ok(ShimConfig::default()));
        assert_eq!(
            args(Some("le"), IssuerKind::ClusterIssuer)
                .config()
                .unwrap()
                .default_issuer,
            Some(IssuerRef {
                name: "le".into(),
                kind: IssuerKind::ClusterIssuer,
                group: None
            })
        );
        assert!(args(Some(" "), IssuerKind::Issuer).config().is_err());
        assert_eq!(
            parse_issuer_kind("ClusterIssuer"),
            Ok(IssuerKindArg(IssuerKind::ClusterIssuer))
        );
        assert!(
            parse_issuer_kind("clusterissuer")
                .unwrap_err()
                .contains("Issuer or ClusterIssuer")
        );
    }
}
