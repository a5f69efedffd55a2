//! When a certificate is (re)issued, and how long to wait after a failure. No I/O.
//!
//! ```text
//!  spec.duration / renewBefore / renewBeforePercentage ──validate_spec──▶ RenewalConfig
//!  CertInfo (notBefore, notAfter) + RenewalConfig ──renewal_time──▶ status.renewalTime
//!  Secret contents + spec + now ──needs_issuance──▶ Option<IssuanceReason>  (Issuing condition)
//!  failedIssuanceAttempts ──backoff──▶ wait before the next attempt
//!  rotationPolicy + existing key + spec ──plan_private_key──▶ reuse or generate
//! ```
//!
//! The rules are cert-manager's (`pkg/util/pki/renewaltime.go`, `internal/apis/certmanager/
//! validation`, the trigger policies and `scheduler.go`):
//! - the renewal time is notAfter − renewBefore, where renewBefore defaults to 1/3 of the
//!   *actual* lifetime (notAfter − notBefore, real elapsed time, never calendar months, so
//!   February 29 changes nothing), `spec.renewBefore` wins when it is shorter than the lifetime,
//!   else `spec.renewBeforePercentage` of the lifetime, else the default; the result is truncated
//!   to the second (status stores seconds: cert-manager #4399);
//! - duration ≥ 1h (default 2160h = 90 days), renewBefore ≥ 5m and < duration, the two renewal
//!   fields are mutually exclusive, 0 < percentage < 100 and the renewBefore it yields must be
//!   ≥ 5m and < duration;
//! - backoff after n failed issuances: base × 2^(n−1) capped (1h and 32h by default).

use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::pki::{self, CertInfo, KeySpec, Names, PkiError, PrivateKey, TlsSecret};

/// cert-manager's default `spec.duration` (90 days).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(2160 * 3600);
/// cert-manager's `MinimumCertificateDuration`.
pub const MINIMUM_DURATION: Duration = Duration::from_secs(3600);
/// cert-manager's `MinimumRenewBefore`.
pub const MINIMUM_RENEW_BEFORE: Duration = Duration::from_secs(5 * 60);
/// cert-manager's first retry delay after a failed issuance.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_secs(3600);
/// cert-manager's longest retry delay.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(32 * 3600);

/// Field paths used in error messages.
pub const FIELD_DURATION: &str = "spec.duration";
/// See [`FIELD_DURATION`].
pub const FIELD_RENEW_BEFORE: &str = "spec.renewBefore";
/// See [`FIELD_DURATION`].
pub const FIELD_RENEW_BEFORE_PERCENTAGE: &str = "spec.renewBeforePercentage";

/// A Go `time.ParseDuration` string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("negative durations are not allowed")]
    Negative,
    #[error(
        "invalid duration {input:?}: {detail} (Go syntax like \"2160h\", \"1h30m\", \"90m\", \"45s\"; units ns, us, ms, s, m, h; there is no day unit: 90 days is \"2160h\")"
    )]
    Invalid { input: String, detail: &'static str },
    #[error("duration {input:?} is too large")]
    Overflow { input: String },
}

/// Parses a Go duration (`metav1.Duration`): a sequence of decimal numbers with an optional
/// fraction and a unit (`ns`, `us`/`µs`/`μs`, `ms`, `s`, `m`, `h`), e.g. "2160h", "1h30m",
/// "1.5h", "45s"; "0" alone is zero. Negative values are rejected (no spec field allows them).
pub fn parse_go_duration(input: &str) -> Result<Duration, DurationError> {
    let invalid = |detail| DurationError::Invalid {
        input: input.into(),
        detail,
    };
    let overflow = || DurationError::Overflow { input: input.into() };
    let mut s = input.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Some(rest) = s.strip_prefix('-') {
        if rest == "0" {
            return Ok(Duration::ZERO);
        }
        return Err(DurationError::Negative);
    }
    s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(invalid("no number"));
    }
    let mut total: u128 = 0; // nanoseconds
    while !s.is_empty() {
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let (int_part, rest) = s.split_at(int_len);
        let (frac_part, rest) = match rest.strip_prefix('.') {
            Some(r) => {
                let n = r.bytes().take_while(u8::is_ascii_digit).count();
                r.split_at(n)
            }
            None => ("", rest),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid("expected a number"));
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let (unit, rest) = rest.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(invalid("missing unit")),
            "d" => return Err(invalid("unknown unit \"d\"")),
            _ => return Err(invalid("unknown unit")),
        };
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut value = int.checked_mul(unit_nanos).ok_or_else(overflow)?;
        // The fraction, digit by digit, as Go does (precision beyond a nanosecond is dropped).
        let mut scale = unit_nanos;
        for d in frac_part.bytes() {
            scale /= 10;
            if scale == 0 {
                break;
            }
            value += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(value).ok_or_else(overflow)?;
        s = rest;
    }
    // Go's time.Duration is an int64 of nanoseconds.
    if total > i64::MAX as u128 {
        return Err(overflow());
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| overflow())?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| overflow())?;
    Ok(Duration::new(secs, nanos))
}

/// Formats like Go's `Duration.String()` ("2160h0m0s", "1h30m0s", "1.5s", "0s"), so messages
/// read like cert-manager's.
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let total_secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if total_secs == 0 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let h = total_secs / 3600;
    let m = (total_secs % 3600) / 60;
    let s = total_secs % 60;
    let secs = if nanos == 0 {
        format!("{s}s")
    } else {
        let frac = format!("{nanos:09}");
        format!("{s}.{}s", frac.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs}")
    } else if m > 0 {
        format!("{m}m{secs}")
    } else {
        secs
    }
}

/// The Certificate fields that set the lifetime and renewal, as written by the user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RenewalSpec {
    pub duration: Option<String>,
    pub renew_before: Option<String>,
    pub renew_before_percentage: Option<i32>,
}

/// A validated [`RenewalSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalConfig {
    pub duration: Duration,
    pub renew_before: Option<Duration>,
    pub renew_before_percentage: Option<u32>,
}

impl RenewalConfig {
    /// The renewal time of a certificate with these validity bounds.
    pub fn renewal_time(&self, not_before: Timestamp, not_after: Timestamp) -> Timestamp {
        renewal_time(
            not_before,
            not_after,
            self.renew_before,
            self.renew_before_percentage,
        )
    }
}

/// An invalid renewal spec. Every message names its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {source}")]
    Parse {
        field: &'static str,
        #[source]
        source: DurationError,
    },
    #[error("spec.duration: certificate duration {} must be at least {}", format_go_duration(*.duration), format_go_duration(MINIMUM_DURATION))]
    DurationTooShort { duration: Duration },
    #[error("{field}: renewBefore {} must be at least {}", format_go_duration(*.renew_before), format_go_duration(MINIMUM_RENEW_BEFORE))]
    RenewBeforeTooShort {
        field: &'static str,
        renew_before: Duration,
    },
    #[error("{field}: certificate duration {} must be greater than renewBefore {}", format_go_duration(*.duration), format_go_duration(*.renew_before))]
    RenewBeforeNotBeforeExpiry {
        field: &'static str,
        duration: Duration,
        renew_before: Duration,
    },
    #[error("spec.renewBeforePercentage: {value} must be greater than 0 and less than 100")]
    PercentageOutOfRange { value: i32 },
    #[error("spec.renewBefore and spec.renewBeforePercentage are mutually exclusive: set one")]
    MutuallyExclusive,
}

impl SpecError {
    /// The field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            SpecError::Parse { field, .. }
            | SpecError::RenewBeforeTooShort { field, .. }
            | SpecError::RenewBeforeNotBeforeExpiry { field, .. } => field,
            SpecError::DurationTooShort { .. } => FIELD_DURATION,
            SpecError::PercentageOutOfRange { .. } => FIELD_RENEW_BEFORE_PERCENTAGE,
            SpecError::MutuallyExclusive => FIELD_RENEW_BEFORE,
        }
    }
}

/// Validates the lifetime fields as cert-manager's webhook does.
pub fn validate_spec(spec: &RenewalSpec) -> Result<RenewalConfig, SpecError> {
    let parse = |field, value: &Option<String>| {
        value
            .as_deref()
            .map(parse_go_duration)
            .transpose()
            .map_err(|source| SpecError::Parse { field, source })
    };
    let duration = parse(FIELD_DURATION, &spec.duration)?.unwrap_or(DEFAULT_DURATION);
    let renew_before = parse(FIELD_RENEW_BEFORE, &spec.renew_before)?;
    if duration < MINIMUM_DURATION {
        return Err(SpecError::DurationTooShort { duration });
    }
    if renew_before.is_some() && spec.renew_before_percentage.is_some() {
        return Err(SpecError::MutuallyExclusive);
    }
    if let Some(rb) = renew_before {
        if rb < MINIMUM_RENEW_BEFORE {
            return Err(SpecError::RenewBeforeTooShort {
                field: FIELD_RENEW_BEFORE,
                renew_before: rb,
            });
        }
        if rb >= duration {
            return Err(SpecError::RenewBeforeNotBeforeExpiry {
                field: FIELD_RENEW_BEFORE,
                duration,
                renew_before: rb,
            });
        }
    }
    let percentage = match spec.renew_before_percentage {
        None => None,
        Some(p) if !(1..=99).contains(&p) => return Err(SpecError::PercentageOutOfRange { value: p }),
        Some(p) => {
            let p = p.unsigned_abs();
            let rb = percentage_of(duration, p);
            if rb < MINIMUM_RENEW_BEFORE {
                return Err(SpecError::RenewBeforeTooShort {
                    field: FIELD_RENEW_BEFORE_PERCENTAGE,
                    renew_before: rb,
                });
            }
            Some(p)
        }
    };
    Ok(RenewalConfig {
        duration,
        renew_before,
        renew_before_percentage: percentage,
    })
}

fn percentage_of(d: Duration, percent: u32) -> Duration {
    // u128 nanoseconds: no overflow for any Duration times 100.
    let nanos = d.as_nanos() * u128::from(percent) / 100;
    Duration::new(
        u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX),
        u32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    )
}

/// When a certificate valid from `not_before` to `not_after` is renewed (cert-manager's
/// `RenewalTime`): notAfter − renewBefore, truncated to the second, where renewBefore is
/// `renew_before` if it is shorter than the actual lifetime, else `renew_before_percentage`% of
/// the lifetime, else a third of it. A certificate whose notAfter is not after its notBefore is
/// due at notAfter.
pub fn renewal_time(
    not_before: Timestamp,
    not_after: Timestamp,
    renew_before: Option<Duration>,
    renew_before_percentage: Option<u32>,
) -> Timestamp {
    let lifetime = not_after.duration_since(not_before);
    if lifetime <= SignedDuration::ZERO {
        return truncate_to_second(not_after);
    }
    let lifetime_std = lifetime.unsigned_abs();
    let before = match (renew_before, renew_before_percentage) {
        (Some(rb), _) if rb < lifetime_std => rb,
        (_, Some(p)) => percentage_of(lifetime_std, p.min(100)),
        _ => lifetime_std / 3,
    };
    let before = SignedDuration::try_from(before).unwrap_or(SignedDuration::MAX);
    let at = not_after.checked_sub(before).unwrap_or(not_before);
    truncate_to_second(at)
}

fn truncate_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// How long to wait before issuance attempt `failed_attempts + 1`: zero with no failure, then
/// base × 2^(n−1), never more than `cap` (saturating for any n).
pub fn backoff(failed_attempts: u32, base: Duration, cap: Duration) -> Duration {
    if failed_attempts == 0 {
        return Duration::ZERO;
    }
    let exp = failed_attempts - 1;
    let factor = if exp >= 64 { u64::MAX } else { 1u64 << exp };
    let factor = u32::try_from(factor).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(Duration::MAX).min(cap)
}

/// When the next issuance may start after `failed_attempts` failures, the last at
/// `last_failure`.
pub fn next_attempt(
    last_failure: Timestamp,
    failed_attempts: u32,
    base: Duration,
    cap: Duration,
) -> Timestamp {
    let wait = SignedDuration::try_from(backoff(failed_attempts, base, cap)).unwrap_or(SignedDuration::MAX);
    last_failure.checked_add(wait).unwrap_or(Timestamp::MAX)
}

/// `spec.issuerRef`, as recorded in the Secret's annotations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IssuerRef {
    pub name: String,
    /// "Issuer" or "ClusterIssuer"; empty means "Issuer" (cert-manager's default).
    pub kind: String,
}

impl IssuerRef {
    fn normalized_kind(&self) -> &str {
        if self.kind.is_empty() {
            "Issuer"
        } else {
            &self.kind
        }
    }

    fn same_as(&self, other: &IssuerRef) -> bool {
        self.name == other.name && self.normalized_kind() == other.normalized_kind()
    }
}

impl fmt::Display for IssuerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.normalized_kind(), self.name)
    }
}

/// Why a certificate is (re)issued: the `Issuing` condition's reason and message. The reasons
/// are cert-manager's trigger reasons; `RequestChanged` is cert-manager's reason for a spec
/// whose names no longer match what was issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuanceReason {
    /// The Secret does not exist.
    DoesNotExist,
    /// The Secret lacks `tls.crt` or `tls.key` (or one is empty).
    MissingData { detail: String },
    /// `tls.crt` is not a valid PEM certificate chain.
    InvalidCertificate { detail: String },
    /// `tls.key` is invalid, or does not match the certificate.
    InvalidKeyPair { detail: String },
    /// The key's algorithm or size differs from `spec.privateKey`.
    SecretMismatch { detail: String },
    /// The Secret records another issuer than `spec.issuerRef`.
    IncorrectIssuer { recorded: IssuerRef, desired: IssuerRef },
    /// The Secret was issued for another Certificate.
    IncorrectCertificate { recorded: String },
    /// The DNS names, IP addresses or common name changed.
    RequestChanged { detail: String },
    /// The certificate has expired.
    Expired { not_after: Timestamp },
    /// The renewal time has come.
    Renewing { renewal_time: Timestamp },
    /// A user asked for a re-issue (e.g. an annotation).
    ManuallyTriggered,
}

impl IssuanceReason {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            IssuanceReason::DoesNotExist => "DoesNotExist",
            IssuanceReason::MissingData { .. } => "MissingData",
            IssuanceReason::InvalidCertificate { .. } => "InvalidCertificate",
            IssuanceReason::InvalidKeyPair { .. } => "InvalidKeyPair",
            IssuanceReason::SecretMismatch { .. } => "SecretMismatch",
            IssuanceReason::IncorrectIssuer { .. } => "IncorrectIssuer",
            IssuanceReason::IncorrectCertificate { .. } => "IncorrectCertificate",
            IssuanceReason::RequestChanged { .. } => "RequestChanged",
            IssuanceReason::Expired { .. } => "Expired",
            IssuanceReason::Renewing { .. } => "Renewing",
            IssuanceReason::ManuallyTriggered => "ManuallyTriggered",
        }
    }
}

impl fmt::Display for IssuanceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuanceReason::DoesNotExist => f.write_str("Issuing certificate as Secret does not exist"),
            IssuanceReason::MissingData { detail } => write!(
                f,
                "Issuing certificate as Secret does not contain a certificate: {detail}"
            ),
            IssuanceReason::InvalidCertificate { detail } => write!(
                f,
                "Issuing certificate as Secret contains an invalid certificate: {detail}"
            ),
            IssuanceReason::InvalidKeyPair { detail } => write!(
                f,
                "Issuing certificate as Secret contains an invalid key-pair: {detail}"
            ),
            IssuanceReason::SecretMismatch { detail } => write!(
                f,
                "Issuing certificate as Secret's private key does not match spec.privateKey: {detail}"
            ),
            IssuanceReason::IncorrectIssuer { recorded, desired } => write!(
                f,
                "Issuing certificate as Secret was previously issued by {recorded}, spec.issuerRef is {desired}"
            ),
            IssuanceReason::IncorrectCertificate { recorded } => write!(
                f,
                "Secret was issued for {recorded:?}; if this is not transient, two Certificates may name the same secretName"
            ),
            IssuanceReason::RequestChanged { detail } => write!(
                f,
                "Issuing certificate as the names in the spec changed: {detail}"
            ),
            IssuanceReason::Expired { not_after } => write!(
                f,
                "Issuing certificate as the existing certificate expired at {not_after}"
            ),
            IssuanceReason::Renewing { renewal_time } => write!(
                f,
                "Renewing certificate as its renewal time {renewal_time} has passed"
            ),
            IssuanceReason::ManuallyTriggered => {
                f.write_str("Issuing certificate as a re-issue was requested")
            }
        }
    }
}

/// What the controller observed and wants, for [`needs_issuance`].
#[derive(Debug)]
pub struct IssuanceCheck<'a> {
    /// `None`: the Secret does not exist; else [`pki::parse_tls_secret`] of its data.
    pub secret: Option<&'a Result<TlsSecret, PkiError>>,
    /// The Certificate's name and the one recorded on the Secret (annotation), if any.
    pub certificate_name: &'a str,
    pub secret_certificate_name: Option<&'a str>,
    pub desired_names: &'a Names,
    pub desired_issuer: &'a IssuerRef,
    /// The issuer recorded on the Secret (annotations); `None` when not recorded.
    pub secret_issuer: Option<&'a IssuerRef>,
    pub key_spec: &'a KeySpec,
    pub renewal: &'a RenewalConfig,
    /// A renewal time from elsewhere (ACME ARI's suggested window) that wins over the computed
    /// one when earlier.
    pub suggested_renewal: Option<Timestamp>,
    pub manually_triggered: bool,
    pub now: Timestamp,
}

/// Whether to (re)issue now, and why; `None` when the Secret is good until its renewal time.
/// The checks run in cert-manager's order, so the first problem is the one reported.
pub fn needs_issuance(check: &IssuanceCheck<'_>) -> Option<IssuanceReason> {
    let Some(secret) = check.secret else {
        return Some(IssuanceReason::DoesNotExist);
    };
    let secret = match secret {
        Ok(s) => s,
        Err(e) => {
            let detail = e.to_string();
            return Some(match e {
                PkiError::Missing { .. } => IssuanceReason::MissingData { detail },
                PkiError::NotPem { what, .. }
                | PkiError::NotAPrivateKey { what, .. }
                | PkiError::MultipleKeys { what }
                | PkiError::EncryptedKey { what }
                | PkiError::InvalidKey { what, .. }
                    if what == pki::TLS_KEY =>
                {
                    IssuanceReason::InvalidKeyPair { detail }
                }
                PkiError::KeyMismatch { .. } => IssuanceReason::InvalidKeyPair { detail },
                _ => IssuanceReason::InvalidCertificate { detail },
            });
        }
    };
    if !secret.key.matches_spec(check.key_spec) {
        let want = match check.key_spec.effective_size() {
            Ok(Some(size)) => format!("{} {size}", check.key_spec.algorithm),
            _ => check.key_spec.algorithm.to_string(),
        };
        let have = match secret.key.size() {
            Some(size) => format!("{} {size}", secret.key.algorithm()),
            None => secret.key.algorithm().to_string(),
        };
        return Some(IssuanceReason::SecretMismatch {
            detail: format!("the key is {have}, the spec asks for {want}"),
        });
    }
    if let Some(recorded) = check.secret_issuer
        && !recorded.name.is_empty()
        && !recorded.same_as(check.desired_issuer)
    {
        return Some(IssuanceReason::IncorrectIssuer {
            recorded: recorded.clone(),
            desired: check.desired_issuer.clone(),
        });
    }
    if let Some(recorded) = check.secret_certificate_name
        && !recorded.is_empty()
        && recorded != check.certificate_name
    {
        return Some(IssuanceReason::IncorrectCertificate {
            recorded: recorded.into(),
        });
    }
    let leaf = secret.leaf();
    if let Some(detail) = names_differ(check.desired_names, leaf) {
        return Some(IssuanceReason::RequestChanged { detail });
    }
    if check.now >= leaf.not_after {
        return Some(IssuanceReason::Expired {
            not_after: leaf.not_after,
        });
    }
    let mut renewal_time = check.renewal.renewal_time(leaf.not_before, leaf.not_after);
    if let Some(suggested) = check.suggested_renewal {
        renewal_time = renewal_time.min(suggested);
    }
    if check.now >= renewal_time {
        return Some(IssuanceReason::Renewing { renewal_time });
    }
    if check.manually_triggered {
        return Some(IssuanceReason::ManuallyTriggered);
    }
    None
}

/// How the issued names differ from the desired ones (`None`: the same). DNS names compare
/// case-insensitively and as sets, like IP addresses; the common name only when one is asked for
/// (ACME CAs may add or drop it).
fn names_differ(desired: &Names, cert: &CertInfo) -> Option<String> {
    use std::collections::BTreeSet;
    let lower = |v: &[String]| -> BTreeSet<String> {
        v.iter()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    };
    let (want, have) = (lower(&desired.dns_names), lower(&cert.dns_names));
    if want != have {
        let added: Vec<_> = want.difference(&have).cloned().collect();
        let removed: Vec<_> = have.difference(&want).cloned().collect();
        return Some(format!("dnsNames: added {added:?}, removed {removed:?}"));
    }
    let want: BTreeSet<_> = desired.ip_addresses.iter().collect();
    let have: BTreeSet<_> = cert.ip_addresses.iter().collect();
    if want != have {
        let added: Vec<_> = want.difference(&have).map(ToString::to_string).collect();
        let removed: Vec<_> = have.difference(&want).map(ToString::to_string).collect();
        return Some(format!("ipAddresses: added {added:?}, removed {removed:?}"));
    }
    if let Some(cn) = desired.common_name.as_deref().filter(|c| !c.is_empty())
        && cert.common_name.as_deref() != Some(cn)
    {
        return Some(format!(
            "commonName: {:?} is now {cn:?}",
            cert.common_name.as_deref().unwrap_or("")
        ));
    }
    if desired.subject != cert.subject_fields {
        return Some(format!(
            "subject: {:?} is now {:?}",
            cert.subject_fields, desired.subject
        ));
    }
    None
}

/// `spec.privateKey.rotationPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RotationPolicy {
    /// A new key for every issuance (cert-manager's default since 1.18).
    #[default]
    Always,
    /// Reuse the Secret's key while it matches the spec.
    Never,
}

/// Which key the next issuance uses.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyPlan {
    Generate,
    /// Reuse the Secret's key (rotationPolicy Never).
    Reuse,
}

/// rotationPolicy Never with a Secret key that does not match the spec: cert-manager waits for
/// the user (it neither rotates nor issues with the wrong key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rotationPolicy is Never but the Secret's private key is {have}, spec.privateKey asks for {want}: delete the Secret's tls.key or set rotationPolicy Always"
)]
pub struct KeyPlanError {
    pub have: String,
    pub want: String,
}

/// Decides the key for the next issuance. `existing` is the Secret's parsed key, if any (an
/// unparseable key counts as none: there is nothing to reuse).
pub fn plan_private_key(
    policy: RotationPolicy,
    existing: Option<&PrivateKey>,
    spec: &KeySpec,
) -> Result<KeyPlan, KeyPlanError> {
    match (policy, existing) {
        (RotationPolicy::Always, _) | (RotationPolicy::Never, None) => Ok(KeyPlan::Generate),
        (RotationPolicy::Never, Some(key)) if key.matches_spec(spec) => Ok(KeyPlan::Reuse),
        (RotationPolicy::Never, Some(key)) => Err(KeyPlanError {
            have: match key.size() {
                Some(s) => format!("{} {s}", key.algorithm()),
                None => key.algorithm().to_string(),
            },
            want: match spec.effective_size() {
                Ok(Some(s)) => format!("{} {s}", spec.algorithm),
                _ => spec.algorithm.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateSpec, KeyAlgorithm, KeyEncoding};
    use std::net::IpAddr;

    const H: u64 = 3600;
    const D: u64 = 24 * H;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn go_durations() {
        let ok: &[(&str, Duration)] = &[
            ("2160h", secs(2160 * H)),
            ("1h30m", secs(H + 30 * 60)),
            ("90m", secs(90 * 60)),
            ("45s", secs(45)),
            ("1h0m0s", secs(H)),
            ("2160h0m0s", secs(2160 * H)),
            ("1.5h", secs(H + 30 * 60)),
            (".5s", Duration::from_millis(500)),
            ("1.s", secs(1)),
            ("300ms", Duration::from_millis(300)),
            ("1us", Duration::from_micros(1)),
            ("1µs", Duration::from_micros(1)),
            ("7ns", Duration::from_nanos(7)),
            ("1.0000000001s", secs(1)),
            ("0", Duration::ZERO),
            ("-0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+5m", secs(300)),
            (" 5m ", secs(300)),
            ("2562047h", secs(2_562_047 * H)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_go_duration(input).as_ref(), Ok(want), "{input:?}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("   ", "empty"),
            ("-5m", "negative"),
            ("90d", "no day unit"),
            ("5", "missing unit"),
            ("h", "expected a number"),
            ("1hh", "unknown unit"),
            ("1.5.5h", "missing unit"),
            ("abc", "expected a number"),
            ("+", "no number"),
            ("5 m", "unknown unit"),
            ("2562048h", "too large"),
            ("99999999999999999999999999999999999999999h", "too large"),
        ];
        for (input, fragment) in bad {
            let err = parse_go_duration(input).unwrap_err();
            assert!(err.to_string().contains(fragment), "{input:?}: {err}");
        }
    }

    #[test]
    fn go_duration_strings() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0s"),
            (secs(2160 * H), "2160h0m0s"),
            (secs(H + 30 * 60), "1h30m0s"),
            (secs(300), "5m0s"),
            (secs(45), "45s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(300), "300ms"),
            (Duration::from_micros(2), "2µs"),
            (Duration::from_nanos(7), "7ns"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(*d), *want);
            assert_eq!(parse_go_duration(want).unwrap(), *d, "{want} round trip");
        }
    }

    #[test]
    fn renewal_times_match_cert_manager() {
        let nb = ts("2026-01-01T00:00:00Z");
        let d90 = ts("2026-04-01T00:00:00Z"); // 90 days later
        // (name, notBefore, notAfter, renewBefore, percentage, want)
        type Case = (
            &'static str,
            Timestamp,
            Timestamp,
            Option<Duration>,
            Option<u32>,
            Timestamp,
        );
        let cases: &[Case] = &[
            (
                "default: 2/3 of 90d",
                nb,
                d90,
                None,
                None,
                ts("2026-03-02T00:00:00Z"),
            ),
            (
                "renewBefore 30d",
                nb,
                d90,
                Some(secs(30 * D)),
                None,
                ts("2026-03-02T00:00:00Z"),
            ),
            (
                "renewBefore 10d",
                nb,
                d90,
                Some(secs(10 * D)),
                None,
                ts("2026-03-22T00:00:00Z"),
            ),
            (
                "renewBefore 1h",
                nb,
                d90,
                Some(secs(H)),
                None,
                ts("2026-03-31T23:00:00Z"),
            ),
            (
                "renewBefore = lifetime: default",
                nb,
                d90,
                Some(secs(90 * D)),
                None,
                ts("2026-03-02T00:00:00Z"),
            ),
            (
                "renewBefore > lifetime: default",
                nb,
                d90,
                Some(secs(100 * D)),
                None,
                ts("2026-03-02T00:00:00Z"),
            ),
            (
                "renewBefore > lifetime: percentage",
                nb,
                d90,
                Some(secs(100 * D)),
                Some(50),
                ts("2026-02-15T00:00:00Z"),
            ),
            (
                "percentage 25",
                nb,
                d90,
                None,
                Some(25),
                ts("2026-03-09T12:00:00Z"),
            ),
            ("percentage 1", nb, d90, None, Some(1), ts("2026-03-31T02:24:00Z")),
            (
                "percentage 99",
                nb,
                d90,
                None,
                Some(99),
                ts("2026-01-01T21:36:00Z"),
            ),
            (
                "renewBefore wins over percentage",
                nb,
                d90,
                Some(secs(D)),
                Some(50),
                ts("2026-03-31T00:00:00Z"),
            ),
            // Let's Encrypt's 45-day certificates renew after 30 days.
            (
                "45d",
                nb,
                ts("2026-02-15T00:00:00Z"),
                None,
                None,
                ts("2026-01-31T00:00:00Z"),
            ),
            // Across February 29: real elapsed time (30 days, one of them Feb 29).
            (
                "leap month",
                ts("2028-02-10T00:00:00Z"),
                ts("2028-03-11T00:00:00Z"),
                None,
                None,
                ts("2028-03-01T00:00:00Z"),
            ),
            // 366 days across Feb 29 2028: 244 days later, not "8 months".
            (
                "leap year",
                ts("2027-06-01T00:00:00Z"),
                ts("2028-06-01T00:00:00Z"),
                None,
                None,
                ts("2028-01-31T00:00:00Z"),
            ),
            (
                "truncated to the second",
                nb,
                ts("2026-01-01T00:00:10Z"),
                None,
                None,
                ts("2026-01-01T00:00:06Z"),
            ),
            (
                "sub-second bounds",
                ts("2026-01-01T00:00:00.9Z"),
                ts("2026-01-01T00:00:03.9Z"),
                None,
                None,
                ts("2026-01-01T00:00:02Z"),
            ),
            ("notAfter = notBefore", nb, nb, None, None, nb),
            ("notAfter < notBefore", d90, nb, None, None, nb),
        ];
        for (name, not_before, not_after, rb, pct, want) in cases {
            assert_eq!(renewal_time(*not_before, *not_after, *rb, *pct), *want, "{name}");
        }
    }

    #[test]
    fn spec_validation() {
        let spec = |d: Option<&str>, rb: Option<&str>, p: Option<i32>| RenewalSpec {
            duration: d.map(String::from),
            renew_before: rb.map(String::from),
            renew_before_percentage: p,
        };
        let ok: &[(RenewalSpec, RenewalConfig)] = &[
            (
                spec(None, None, None),
                RenewalConfig {
                    duration: DEFAULT_DURATION,
                    renew_before: None,
                    renew_before_percentage: None,
                },
            ),
            (
                spec(Some("1h"), None, None),
                RenewalConfig {
                    duration: secs(H),
                    renew_before: None,
                    renew_before_percentage: None,
                },
            ),
            (
                spec(Some("1h"), Some("5m"), None),
                RenewalConfig {
                    duration: secs(H),
                    renew_before: Some(secs(300)),
                    renew_before_percentage: None,
                },
            ),
            (
                spec(None, Some("720h"), None),
                RenewalConfig {
                    duration: DEFAULT_DURATION,
                    renew_before: Some(secs(720 * H)),
                    renew_before_percentage: None,
                },
            ),
            (
                spec(Some("1080h"), None, Some(50)),
                RenewalConfig {
                    duration: secs(1080 * H),
                    renew_before: None,
                    renew_before_percentage: Some(50),
                },
            ),
            (
                spec(None, None, Some(99)),
                RenewalConfig {
                    duration: DEFAULT_DURATION,
                    renew_before: None,
                    renew_before_percentage: Some(99),
                },
            ),
        ];
        for (s, want) in ok {
            assert_eq!(validate_spec(s).as_ref(), Ok(want), "{s:?}");
        }
        let bad: &[(RenewalSpec, &str, &str)] = &[
            (
                spec(Some("59m"), None, None),
                FIELD_DURATION,
                "spec.duration: certificate duration 59m0s must be at least 1h0m0s",
            ),
            (
                spec(Some("90d"), None, None),
                FIELD_DURATION,
                "spec.duration: invalid duration \"90d\"",
            ),
            (
                spec(Some("-1h"), None, None),
                FIELD_DURATION,
                "spec.duration: negative",
            ),
            (
                spec(None, Some("4m"), None),
                FIELD_RENEW_BEFORE,
                "spec.renewBefore: renewBefore 4m0s must be at least 5m0s",
            ),
            (
                spec(None, Some("soon"), None),
                FIELD_RENEW_BEFORE,
                "spec.renewBefore: invalid duration",
            ),
            (
                spec(Some("2h"), Some("2h"), None),
                FIELD_RENEW_BEFORE,
                "spec.renewBefore: certificate duration 2h0m0s must be greater than renewBefore 2h0m0s",
            ),
            (
                spec(None, Some("2161h"), None),
                FIELD_RENEW_BEFORE,
                "greater than renewBefore 2161h0m0s",
            ),
            (
                spec(None, Some("1h"), Some(50)),
                FIELD_RENEW_BEFORE,
                "mutually exclusive",
            ),
            (
                spec(None, None, Some(0)),
                FIELD_RENEW_BEFORE_PERCENTAGE,
                "spec.renewBeforePercentage: 0 must be greater than 0 and less than 100",
            ),
            (
                spec(None, None, Some(100)),
                FIELD_RENEW_BEFORE_PERCENTAGE,
                "100 must be",
            ),
            (
                spec(None, None, Some(-5)),
                FIELD_RENEW_BEFORE_PERCENTAGE,
                "-5 must be",
            ),
            // 1% of 1h is 36s: below the 5m minimum.
            (
                spec(Some("1h"), None, Some(1)),
                FIELD_RENEW_BEFORE_PERCENTAGE,
                "spec.renewBeforePercentage: renewBefore 36s must be at least 5m0s",
            ),
        ];
        for (s, field, fragment) in bad {
            let err = validate_spec(s).unwrap_err();
            assert_eq!(err.field(), *field, "{s:?}: {err}");
            assert!(err.to_string().contains(fragment), "{s:?}: {err}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (b, c) = (DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP);
        let cases: &[(u32, Duration, Duration, Duration)] = &[
            (0, b, c, Duration::ZERO),
            (1, b, c, secs(H)),
            (2, b, c, secs(2 * H)),
            (3, b, c, secs(4 * H)),
            (5, b, c, secs(16 * H)),
            (6, b, c, secs(32 * H)),
            (7, b, c, secs(32 * H)),
            (33, b, c, secs(32 * H)),
            (64, b, c, secs(32 * H)),
            (65, b, c, secs(32 * H)),
            (u32::MAX, b, c, secs(32 * H)),
            (10, Duration::from_millis(100), secs(10), secs(10)),
            (
                4,
                Duration::from_millis(100),
                secs(10),
                Duration::from_millis(800),
            ),
            (3, Duration::ZERO, c, Duration::ZERO),
            (2, Duration::MAX, c, c),
            (40, Duration::MAX, Duration::MAX, Duration::MAX),
        ];
        for (n, base, cap, want) in cases {
            assert_eq!(backoff(*n, *base, *cap), *want, "n={n} base={base:?} cap={cap:?}");
        }
        let t = ts("2026-01-01T00:00:00Z");
        assert_eq!(next_attempt(t, 0, b, c), t);
        assert_eq!(next_attempt(t, 3, b, c), ts("2026-01-01T04:00:00Z"));
        assert_eq!(next_attempt(t, 1, Duration::MAX, Duration::MAX), Timestamp::MAX);
    }

    struct Fixture {
        ok: Result<TlsSecret, PkiError>,
        rsa_ok: Result<TlsSecret, PkiError>,
        info: CertInfo,
    }

    fn issue(key_spec: KeySpec, names: &Names, now: Timestamp) -> Result<TlsSecret, PkiError> {
        let key = PrivateKey::generate(&key_spec).unwrap();
        let cert = pki::self_signed(
            &key,
            &CertificateSpec {
                names: names.clone(),
                duration: secs(90 * D),
                is_ca: false,
            },
            now,
        )
        .unwrap();
        pki::parse_tls_secret(
            Some(cert.certificate_pem.as_bytes()),
            Some(key.to_pem(key_spec.encoding).unwrap().as_bytes()),
        )
    }

    fn desired() -> Names {
        Names {
            dns_names: vec!["a.example.com".into(), "b.example.com".into()],
            ip_addresses: vec!["192.0.2.1".parse().unwrap()],
            common_name: Some("a.example.com".into()),
            subject: Default::default(),
        }
    }

    fn ec() -> KeySpec {
        KeySpec {
            algorithm: KeyAlgorithm::Ecdsa,
            size: None,
            encoding: KeyEncoding::Pkcs1,
        }
    }

    fn issued_at() -> Timestamp {
        ts("2026-01-01T00:00:00Z")
    }

    #[test]
    fn needs_issuance_reasons() {
        let fx = {
            let ok = issue(ec(), &desired(), issued_at());
            let info = ok.as_ref().unwrap().leaf().clone();
            let rsa_ok = issue(KeySpec::default(), &desired(), issued_at());
            Fixture { ok, rsa_ok, info }
        };
        let missing = pki::parse_tls_secret(None, Some(b"x"));
        let not_pem = pki::parse_tls_secret(Some(b"garbage"), Some(b"x"));
        let other_key = PrivateKey::generate(&ec())
            .unwrap()
            .to_pem(KeyEncoding::Pkcs8)
            .unwrap();
        let crt = pki::pem_encode("CERTIFICATE", &fx.info.der);
        let mismatch = pki::parse_tls_secret(Some(crt.as_bytes()), Some(other_key.as_bytes()));
        let bad_key = pki::parse_tls_secret(Some(crt.as_bytes()), Some(b"not a key"));
        let issuer = IssuerRef {
            name: "ca".into(),
            kind: "ClusterIssuer".into(),
        };
        let other_issuer = IssuerRef {
            name: "le".into(),
            kind: "ClusterIssuer".into(),
        };
        let same_issuer_default_kind = IssuerRef {
            name: "ca".into(),
            kind: String::new(),
        };
        let issuer_kind_only = IssuerRef {
            name: "ca".into(),
            kind: "Issuer".into(),
        };
        let unnamed = IssuerRef::default();
        let renewal = validate_spec(&RenewalSpec::default()).unwrap();
        let rb_10d = RenewalConfig {
            renew_before: Some(secs(10 * D)),
            ..renewal
        };
        let mut upper = desired();
        upper.dns_names = vec!["B.example.com.".into(), "A.EXAMPLE.com".into()];
        let mut added = desired();
        added.dns_names.push("c.example.com".into());
        let mut new_ip = desired();
        new_ip.ip_addresses = vec!["2001:db8::1".parse::<IpAddr>().unwrap()];
        let mut new_cn = desired();
        new_cn.common_name = Some("b.example.com".into());
        let mut no_cn = desired();
        no_cn.common_name = None;
        let fresh = ts("2026-01-02T00:00:00Z");
        // Issued with notBefore backdated 60s: lifetime 90d+60s, renewal 30d+20s before the end.
        let at_renewal = ts("2026-03-01T23:59:40Z");
        let before_renewal = ts("2026-03-01T23:59:39Z");
        let expired = ts("2026-04-01T00:00:00Z");

        let want_names = desired();
        let base = || IssuanceCheck {
            secret: Some(&fx.ok),
            certificate_name: "web",
            secret_certificate_name: Some("web"),
            desired_names: &want_names,
            desired_issuer: &issuer,
            secret_issuer: Some(&issuer),
            key_spec: &EC,
            renewal: &renewal,
            suggested_renewal: None,
            manually_triggered: false,
            now: fresh,
        };
        static EC: KeySpec = KeySpec {
            algorithm: KeyAlgorithm::Ecdsa,
            size: None,
            encoding: KeyEncoding::Pkcs1,
        };
        static RSA: KeySpec = KeySpec {
            algorithm: KeyAlgorithm::Rsa,
            size: None,
            encoding: KeyEncoding::Pkcs1,
        };
        static EC384: KeySpec = KeySpec {
            algorithm: KeyAlgorithm::Ecdsa,
            size: Some(384),
            encoding: KeyEncoding::Pkcs1,
        };
        static EC_PKCS8: KeySpec = KeySpec {
            algorithm: KeyAlgorithm::Ecdsa,
            size: None,
            encoding: KeyEncoding::Pkcs8,
        };

        let cases: Vec<(&str, IssuanceCheck<'_>, Option<&str>, &str)> = vec![
            ("all good", base(), None, ""),
            (
                "no Secret",
                IssuanceCheck {
                    secret: None,
                    ..base()
                },
                Some("DoesNotExist"),
                "does not exist",
            ),
            (
                "no tls.crt",
                IssuanceCheck {
                    secret: Some(&missing),
                    ..base()
                },
                Some("MissingData"),
                "tls.crt is missing",
            ),
            (
                "tls.crt not PEM",
                IssuanceCheck {
                    secret: Some(&not_pem),
                    ..base()
                },
                Some("InvalidCertificate"),
                "tls.crt is not PEM",
            ),
            (
                "key of another cert",
                IssuanceCheck {
                    secret: Some(&mismatch),
                    ..base()
                },
                Some("InvalidKeyPair"),
                "does not match",
            ),
            (
                "tls.key not PEM",
                IssuanceCheck {
                    secret: Some(&bad_key),
                    ..base()
                },
                Some("InvalidKeyPair"),
                "tls.key is not PEM",
            ),
            (
                "spec now RSA",
                IssuanceCheck {
                    key_spec: &RSA,
                    ..base()
                },
                Some("SecretMismatch"),
                "the key is ECDSA 256, the spec asks for RSA 2048",
            ),
            (
                "spec now P-384",
                IssuanceCheck {
                    key_spec: &EC384,
                    ..base()
                },
                Some("SecretMismatch"),
                "ECDSA 384",
            ),
            (
                "only the encoding changed",
                IssuanceCheck {
                    key_spec: &EC_PKCS8,
                    ..base()
                },
                None,
                "",
            ),
            (
                "RSA Secret, RSA spec",
                IssuanceCheck {
                    secret: Some(&fx.rsa_ok),
                    key_spec: &RSA,
                    ..base()
                },
                None,
                "",
            ),
            (
                "other issuer",
                IssuanceCheck {
                    secret_issuer: Some(&other_issuer),
                    ..base()
                },
                Some("IncorrectIssuer"),
                "previously issued by ClusterIssuer/le, spec.issuerRef is ClusterIssuer/ca",
            ),
            (
                "issuer kind changed",
                IssuanceCheck {
                    secret_issuer: Some(&issuer_kind_only),
                    ..base()
                },
                Some("IncorrectIssuer"),
                "Issuer/ca",
            ),
            (
                "empty kind is Issuer",
                IssuanceCheck {
                    desired_issuer: &issuer_kind_only,
                    secret_issuer: Some(&same_issuer_default_kind),
                    ..base()
                },
                None,
                "",
            ),
            (
                "issuer not recorded",
                IssuanceCheck {
                    secret_issuer: None,
                    ..base()
                },
                None,
                "",
            ),
            (
                "issuer name empty",
                IssuanceCheck {
                    secret_issuer: Some(&unnamed),
                    ..base()
                },
                None,
                "",
            ),
            (
                "Secret of another Certificate",
                IssuanceCheck {
                    secret_certificate_name: Some("api"),
                    ..base()
                },
                Some("IncorrectCertificate"),
                "\"api\"",
            ),
            (
                "certificate name not recorded",
                IssuanceCheck {
                    secret_certificate_name: None,
                    ..base()
                },
                None,
                "",
            ),
            (
                "DNS name added",
                IssuanceCheck {
                    desired_names: &added,
                    ..base()
                },
                Some("RequestChanged"),
                "added [\"c.example.com\"]",
            ),
            (
                "DNS case and order",
                IssuanceCheck {
                    desired_names: &upper,
                    ..base()
                },
                None,
                "",
            ),
            (
                "IP changed",
                IssuanceCheck {
                    desired_names: &new_ip,
                    ..base()
                },
                Some("RequestChanged"),
                "ipAddresses: added [\"2001:db8::1\"], removed [\"192.0.2.1\"]",
            ),
            (
                "CN changed",
                IssuanceCheck {
                    desired_names: &new_cn,
                    ..base()
                },
                Some("RequestChanged"),
                "commonName",
            ),
            (
                "CN no longer asked for",
                IssuanceCheck {
                    desired_names: &no_cn,
                    ..base()
                },
                None,
                "",
            ),
            (
                "just before renewal",
                IssuanceCheck {
                    now: before_renewal,
                    ..base()
                },
                None,
                "",
            ),
            (
                "at renewal",
                IssuanceCheck {
                    now: at_renewal,
                    ..base()
                },
                Some("Renewing"),
                "2026-03-01T23:59:40Z",
            ),
            (
                "renewBefore 10d, day 61",
                IssuanceCheck {
                    renewal: &rb_10d,
                    now: at_renewal,
                    ..base()
                },
                None,
                "",
            ),
            (
                "ARI window earlier",
                IssuanceCheck {
                    suggested_renewal: Some(fresh),
                    ..base()
                },
                Some("Renewing"),
                "2026-01-02",
            ),
            (
                "ARI window later: ours wins",
                IssuanceCheck {
                    suggested_renewal: Some(expired),
                    now: at_renewal,
                    ..base()
                },
                Some("Renewing"),
                "2026-03-01T23:59:40Z",
            ),
            (
                "expired",
                IssuanceCheck {
                    now: expired,
                    ..base()
                },
                Some("Expired"),
                "expired at 2026-04-01T00:00:00Z",
            ),
            (
                "names changed beats expiry",
                IssuanceCheck {
                    now: expired,
                    desired_names: &added,
                    ..base()
                },
                Some("RequestChanged"),
                "",
            ),
            (
                "missing beats issuer",
                IssuanceCheck {
                    secret: None,
                    secret_issuer: Some(&other_issuer),
                    ..base()
                },
                Some("DoesNotExist"),
                "",
            ),
            (
                "manual",
                IssuanceCheck {
                    manually_triggered: true,
                    ..base()
                },
                Some("ManuallyTriggered"),
                "requested",
            ),
        ];
        for (name, check, want, fragment) in cases {
            let got = needs_issuance(&check);
            assert_eq!(got.as_ref().map(IssuanceReason::reason), want, "{name}: {got:?}");
            if let Some(reason) = got {
                assert!(reason.to_string().contains(fragment), "{name}: {reason}");
            }
        }
    }

    #[test]
    fn private_key_plans() {
        let ec_key = PrivateKey::generate(&ec()).unwrap();
        let rsa = KeySpec::default();
        let ec_pkcs8 = KeySpec {
            encoding: KeyEncoding::Pkcs8,
            ..ec()
        };
        // (name, policy, the Secret's key, spec, plan or error fragment)
        type Case<'a> = (
            &'a str,
            RotationPolicy,
            Option<&'a PrivateKey>,
            KeySpec,
            Result<KeyPlan, &'a str>,
        );
        let cases: Vec<Case<'_>> = vec![
            (
                "Always, no key",
                RotationPolicy::Always,
                None,
                ec(),
                Ok(KeyPlan::Generate),
            ),
            (
                "Always, matching key",
                RotationPolicy::Always,
                Some(&ec_key),
                ec(),
                Ok(KeyPlan::Generate),
            ),
            (
                "Never, no key",
                RotationPolicy::Never,
                None,
                ec(),
                Ok(KeyPlan::Generate),
            ),
            (
                "Never, matching key",
                RotationPolicy::Never,
                Some(&ec_key),
                ec(),
                Ok(KeyPlan::Reuse),
            ),
            (
                "Never, other encoding",
                RotationPolicy::Never,
                Some(&ec_key),
                ec_pkcs8,
                Ok(KeyPlan::Reuse),
            ),
            (
                "Never, spec now RSA",
                RotationPolicy::Never,
                Some(&ec_key),
                rsa,
                Err("the Secret's private key is ECDSA 256, spec.privateKey asks for RSA 2048"),
            ),
        ];
        for (name, policy, key, spec, want) in cases {
            match (plan_private_key(policy, key, &spec), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err(fragment)) => assert!(e.to_string().contains(fragment), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(RotationPolicy::default(), RotationPolicy::Always);
    }
}
