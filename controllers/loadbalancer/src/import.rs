//! `ferrite-lb import-metallb`: reads MetalLB's configuration and prints the equivalent ferrite-lb objects.
//!
//! ```text
//!   FILE... / stdin ──YAML documents──> objects (kind: List flattened)
//!        │
//!        ├─ metallb.io IPAddressPool ─────────────> IPPool
//!        ├─ metallb.io L2Advertisement ───────────> L2Advertisement
//!        ├─ metallb.io AddressPool (0.13, legacy) ─┐
//!        ├─ ConfigMap data.config (<= 0.12) ───────┼> IPPool (+ L2Advertisement for a layer2 pool)
//!        ├─ bare ConfigMap data (address-pools:) ──┘
//!        ├─ v1 Service (LoadBalancer), Namespace ─> checked: is each address still offered and allowed?
//!        └─ BGP*, BFDProfile, Community, other kinds, unknown fields ──> one line each ("not translated")
//!
//!   checks: one namespace, unique names, valid addresses and selectors ──> refused (exit 2) otherwise
//!   output: YAML on stdout (the lines also as comments at its top), the lines on stderr
//! ```
//!
//! Exit codes: [`EXIT_TRANSLATED`] (0) everything translated, [`EXIT_PARTIAL`] (1) objects printed but some
//! things were not translated (each on a line of its own), [`EXIT_UNREADABLE`] (2) the input cannot be read as
//! MetalLB configuration (nothing printed on stdout). Notes (`note:` lines) do not change the exit code.
//!
//! MetalLB's objects are namespaced and read only from the namespace MetalLB runs in; ferrite-lb's are
//! cluster-scoped. So the input must hold one namespace (or `--namespace` picks one), and a name used twice
//! (two files, or a ConfigMap pool and a CR) is refused instead of guessed.
//!
//! The translation is pure ([`translate`]); [`run`] does the reading and printing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::addr::PoolAddresses;

/// Everything was translated.
pub const EXIT_TRANSLATED: u8 = 0;
/// Objects were printed, but some things were not translated (listed on stderr).
pub const EXIT_PARTIAL: u8 = 1;
/// The input could not be read as MetalLB configuration; nothing was printed.
pub const EXIT_UNREADABLE: u8 = 2;

const API_VERSION: &str = "lb.ferrite.dev/v1alpha1";
const METALLB_GROUP: &str = "metallb.io";
/// The kind given to a document that is the bare data of MetalLB's ConfigMap.
const LEGACY_DATA: &str = "ConfigMap data";

/// Arguments of `ferrite-lb import-metallb`.
#[derive(clap::Args, Debug, Clone)]
pub struct ImportArgs {
    /// MetalLB manifests: multi-document YAML (`kubectl get -o yaml` lists too); `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<String>,

    /// Import only the objects of this namespace (MetalLB reads its configuration from the namespace it
    /// runs in). Objects without a namespace are imported too.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
}

/// One input: its name for messages (`-` is shown as `stdin`) and its text.
#[derive(Debug, Clone)]
pub struct Source {
    /// Shown in messages and in the output's comments.
    pub name: String,
    /// The YAML text.
    pub text: String,
}

/// How much a [`Finding`] matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Something of the input has no equivalent in the output (the exit code becomes [`EXIT_PARTIAL`]).
    NotTranslated,
    /// Worth knowing, but the output means what the input meant.
    Note,
}

/// One line about the input: where, and what was not translated or is worth knowing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Source, document and object (`pools.yaml#2: IPAddressPool metallb-system/lan`).
    pub at: String,
    /// How much it matters.
    pub severity: Severity,
    /// The message (field and reason).
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.severity {
            Severity::NotTranslated => write!(f, "{}: {}", self.at, self.message),
            Severity::Note => write!(f, "{}: note: {}", self.at, self.message),
        }
    }
}

/// Why the input was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct ImportError {
    /// Source, document and object.
    pub at: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// The ferrite-lb objects, with where each came from, and the findings.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// Names of the sources, for the header.
    pub sources: Vec<String>,
    /// Output objects in input order.
    pub objects: Vec<Output>,
    /// Lines about what was not translated, in input order.
    pub findings: Vec<Finding>,
}

/// One printed object.
#[derive(Debug, Clone)]
pub struct Output {
    /// The MetalLB object (or ConfigMap entry) it was translated from.
    pub from: String,
    /// `IPPool` or `L2Advertisement`.
    pub kind: &'static str,
    /// The object as YAML (`apiVersion`, `kind`, `metadata`, `spec`, in that order).
    pub yaml: String,
}

impl Translation {
    /// [`EXIT_TRANSLATED`] or [`EXIT_PARTIAL`].
    pub fn exit_code(&self) -> u8 {
        if self
            .findings
            .iter()
            .any(|f| f.severity == Severity::NotTranslated)
        {
            EXIT_PARTIAL
        } else {
            EXIT_TRANSLATED
        }
    }

    /// The output: a header comment (with every finding), then one YAML document per object.
    pub fn to_yaml(&self) -> String {
        let mut out = format!(
            "# ferrite-lb import-metallb: {} from {}\n",
            API_VERSION,
            self.sources.join(", ")
        );
        let untranslated = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::NotTranslated)
            .count();
        if untranslated > 0 {
            out.push_str(&format!("# {untranslated} not translated (also on stderr):\n"));
        }
        for f in &self.findings {
            out.push_str(&format!("#   {f}\n"));
        }
        for o in &self.objects {
            out.push_str("---\n");
            out.push_str(&format!("# from {}\n", o.from));
            out.push_str(&o.yaml);
        }
        out
    }
}

// ---- output shapes: the same field names and omission rules as ferrite-api's lb types (tests/import.rs
// checks every printed object against those types, both ways) ----

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<S> {
    api_version: &'static str,
    kind: &'static str,
    metadata: Meta,
    spec: S,
}

#[derive(Serialize)]
struct Meta {
    name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    addresses: Vec<String>,
    auto_assign: bool,
    #[serde(rename = "avoidBuggyIPs", skip_serializing_if = "std::ops::Not::not")]
    avoid_buggy_ips: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_allocation: Option<Allocation>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Allocation {
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    namespace_selectors: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_selectors: Vec<LabelSelector>,
}

#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
struct AdvSpec {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ip_pools: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ip_pool_selectors: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    node_selectors: Vec<LabelSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interfaces: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    service_selectors: Vec<LabelSelector>,
}

enum Item {
    Pool {
        from: String,
        name: String,
        labels: BTreeMap<String, String>,
        spec: PoolSpec,
    },
    Adv {
        from: String,
        name: String,
        labels: BTreeMap<String, String>,
        spec: AdvSpec,
    },
}

/// One Kubernetes object of the input.
struct Obj {
    /// `file#doc` (and `items[i]` inside a list).
    at: String,
    api_version: String,
    kind: String,
    namespace: Option<String>,
    name: Option<String>,
    map: Map<String, Value>,
}

impl Obj {
    /// `file#1: IPAddressPool metallb-system/lan`.
    fn origin(&self) -> String {
        let name = self.name.as_deref().unwrap_or("(no name)");
        if self.kind == LEGACY_DATA {
            return format!("{}: {LEGACY_DATA}", self.at);
        }
        match &self.namespace {
            Some(ns) => format!("{}: {} {ns}/{name}", self.at, self.kind),
            None => format!("{}: {} {name}", self.at, self.kind),
        }
    }

    fn is_metallb(&self) -> bool {
        self.api_version.split('/').next() == Some(METALLB_GROUP)
    }
}

#[derive(Default)]
struct Ctx {
    findings: Vec<Finding>,
    errors: Vec<ImportError>,
    items: Vec<Item>,
    /// Whether any MetalLB object (translatable or not) was seen.
    saw_metallb: bool,
    /// LoadBalancer Services of the input, checked against the translated pools.
    services: Vec<Svc>,
    /// Labels of the Namespaces of the input (for `namespaceSelectors`).
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// A LoadBalancer Service of the input (`kubectl get svc -A -o yaml`): what it holds and asks for.
struct Svc {
    at: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    ips: Vec<String>,
}

impl Ctx {
    fn error(&mut self, at: &str, message: impl Into<String>) {
        self.errors.push(ImportError {
            at: at.to_string(),
            message: message.into(),
        });
    }
    fn untranslated(&mut self, at: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            at: at.to_string(),
            severity: Severity::NotTranslated,
            message: message.into(),
        });
    }
    fn note(&mut self, at: &str, message: impl Into<String>) {
        self.findings.push(Finding {
            at: at.to_string(),
            severity: Severity::Note,
            message: message.into(),
        });
    }

    /// One line per field of `map` that is not in `known` (`path` is the field's parent, e.g. `spec.`).
    fn unknown_fields(&mut self, at: &str, map: &Map<String, Value>, path: &str, known: &[&str]) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            let hint = match known
                .iter()
                .find(|f| f.eq_ignore_ascii_case(key) || f.eq_ignore_ascii_case(&format!("{key}s")))
            {
                Some(f) => format!("did you mean {f}? "),
                None => String::new(),
            };
            self.untranslated(
                at,
                format!(
                    "{path}{key}: unknown field, not translated ({hint}known: {})",
                    known.join(", ")
                ),
            );
        }
    }

    fn strings(&mut self, at: &str, v: Option<&Value>, path: &str) -> Vec<String> {
        match v {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.error(
                            at,
                            format!("{path}[{i}]: expected a string, found {}", describe(other)),
                        ),
                    }
                }
                out
            }
            Some(other) => {
                self.error(
                    at,
                    format!("{path}: expected a list of strings, found {}", describe(other)),
                );
                Vec::new()
            }
        }
    }

    fn bool(&mut self, at: &str, v: Option<&Value>, path: &str) -> Option<bool> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                self.error(
                    at,
                    format!("{path}: expected true or false, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn int(&mut self, at: &str, v: Option<&Value>, path: &str) -> Option<i64> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
            Some(other) => {
                self.error(
                    at,
                    format!("{path}: expected an integer, found {}", describe(other)),
                );
                None
            }
        }
    }

    fn object<'a>(&mut self, at: &str, v: Option<&'a Value>, path: &str) -> Option<&'a Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                self.error(
                    at,
                    format!("{path}: expected a mapping, found {}", describe(other)),
                );
                None
            }
        }
    }

    /// A list of label selectors, each checked as the API server would.
    fn selectors(&mut self, at: &str, v: Option<&Value>, path: &str) -> Vec<LabelSelector> {
        let items = match v {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.error(
                    at,
                    format!(
                        "{path}: expected a list of label selectors, found {}",
                        describe(other)
                    ),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(sel) = self.selector(at, item, &format!("{path}[{i}]")) {
                out.push(sel);
            }
        }
        out
    }

    fn selector(&mut self, at: &str, v: &Value, path: &str) -> Option<LabelSelector> {
        if let Value::Object(m) = v
            && let Some(key) = m.keys().find(|k| *k != "matchLabels" && *k != "matchExpressions")
        {
            self.error(
                at,
                format!("{path}.{key}: not a label selector field (matchLabels, matchExpressions)"),
            );
            return None;
        }
        match serde_json::from_value::<LabelSelector>(v.clone()) {
            Ok(sel) => match ferrite_kit::selector::validate(&sel) {
                Ok(()) => Some(sel),
                Err(e) => {
                    self.error(at, format!("{path}: {e}"));
                    None
                }
            },
            Err(e) => {
                self.error(at, format!("{path}: not a label selector: {e}"));
                None
            }
        }
    }

    /// The addresses of a pool: at least one, each a CIDR, a range or an address.
    fn addresses(&mut self, at: &str, v: Option<&Value>, path: &str) -> Vec<String> {
        let addresses = self.strings(at, v, path);
        if addresses.is_empty() {
            if !matches!(v, Some(Value::Array(a)) if !a.is_empty()) {
                self.error(
                    at,
                    format!("{path} is missing or empty: a pool needs at least one CIDR or range"),
                );
            }
            return addresses;
        }
        if let Err(e) = PoolAddresses::parse(&addresses) {
            self.error(at, format!("{path}: {e}"));
        }
        addresses
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
    }
}

/// Kubernetes object names (RFC 1123 subdomain): what IPPool and L2Advertisement names must be.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A ConfigMap pool name made into an object name the way MetalLB's `configmaptocrs` does it: truncated to
/// 63 characters, lowercased, `_` -> `-`, everything before the first letter dropped. `None` when nothing is
/// left, or when the result is still not a valid name.
pub fn legacy_name(name: &str) -> Option<String> {
    let valid = |s: &str| {
        let b = s.as_bytes();
        (2..=63).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
    };
    if valid(name) {
        return Some(name.to_string());
    }
    let truncated: String = name.chars().take(63).collect();
    let lower = truncated.to_lowercase().replace('_', "-");
    let start = lower.find(|c: char| c.is_ascii_lowercase())?;
    let out = lower[start..].to_string();
    is_dns_subdomain(&out).then_some(out)
}

/// Translates the sources. `namespace`: import only that namespace (and objects without one).
pub fn translate(sources: &[Source], namespace: Option<&str>) -> Result<Translation, Vec<ImportError>> {
    let mut ctx = Ctx::default();
    let mut objects = Vec::new();
    for source in sources {
        read_source(source, &mut objects, &mut ctx);
    }
    // Which objects take part: MetalLB's (and legacy ConfigMaps); of the namespace asked for.
    let mut relevant = Vec::new();
    for obj in objects {
        let metallbish = obj.is_metallb() || is_legacy_candidate(&obj);
        if metallbish
            && let (Some(want), Some(ns)) = (namespace, obj.namespace.as_deref())
            && want != ns
        {
            ctx.note(
                &obj.origin(),
                format!("skipped: not in namespace {want} (--namespace)"),
            );
            continue;
        }
        relevant.push(obj);
    }
    check_one_namespace(&relevant, &mut ctx);
    for obj in &relevant {
        translate_object(obj, &mut ctx);
    }
    if !ctx.saw_metallb && ctx.errors.is_empty() {
        let at = sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        ctx.error(
            &at,
            "no MetalLB configuration found (IPAddressPool, L2Advertisement or another metallb.io object, \
             or MetalLB's ConfigMap with data.config)",
        );
    }
    check_names(&mut ctx);
    if !ctx.errors.is_empty() {
        return Err(ctx.errors);
    }
    let pools: BTreeSet<String> = ctx
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Pool { name, .. } => Some(name.clone()),
            Item::Adv { .. } => None,
        })
        .collect();
    allocate_only_notes(&mut ctx);
    check_services(&mut ctx);
    let mut out = Translation {
        sources: sources.iter().map(|s| s.name.clone()).collect(),
        ..Default::default()
    };
    for item in std::mem::take(&mut ctx.items) {
        let (from, kind, yaml) = match item {
            Item::Pool {
                from,
                name,
                labels,
                spec,
            } => (from, "IPPool", render("IPPool", name, labels, spec)),
            Item::Adv {
                from,
                name,
                labels,
                spec,
            } => {
                for p in spec.ip_pools.iter().filter(|p| !pools.contains(*p)) {
                    ctx.note(
                        &from,
                        format!(
                            "spec.ipAddressPools: pool \"{p}\" is not in the input; create IPPool \"{p}\" too"
                        ),
                    );
                }
                (
                    from,
                    "L2Advertisement",
                    render("L2Advertisement", name, labels, spec),
                )
            }
        };
        match yaml {
            Ok(yaml) => out.objects.push(Output { from, kind, yaml }),
            Err(e) => ctx.error(&from, format!("cannot render: {e}")),
        }
    }
    if !ctx.errors.is_empty() {
        return Err(ctx.errors);
    }
    out.findings = ctx.findings;
    Ok(out)
}

/// `metadata.<key>` as a string map (labels, annotations); anything else is left out.
fn string_map(meta: Option<&Value>, key: &str) -> BTreeMap<String, String> {
    meta.and_then(|m| m.get(key))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A Service of the input: kept for [`check_services`] if it is a LoadBalancer with addresses; any other
/// Service (ClusterIP, pending) is of no interest and left out silently.
fn service(obj: &Obj, ctx: &mut Ctx) {
    let spec_type = obj
        .map
        .get("spec")
        .and_then(|s| s.get("type"))
        .and_then(Value::as_str);
    if spec_type != Some("LoadBalancer") {
        return;
    }
    let ips: Vec<String> = obj
        .map
        .get("status")
        .and_then(|s| s.get("loadBalancer"))
        .and_then(|l| l.get("ingress"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|i| i.get("ip").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let meta = obj.map.get("metadata");
    ctx.services.push(Svc {
        at: obj.origin(),
        namespace: obj.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: string_map(meta, "labels"),
        annotations: string_map(meta, "annotations"),
        ips,
    });
}

/// The cut-over keeps a Service's address only if an IPPool offers it and allows the Service (see the
/// allocator's adoption rule); an address in no pool is kept but not announced. Say so before the switch.
fn check_services(ctx: &mut Ctx) {
    struct P<'a> {
        name: &'a str,
        addrs: PoolAddresses,
        spec: &'a PoolSpec,
    }
    let pools: Vec<P<'_>> = ctx
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Pool { name, spec, .. } => {
                PoolAddresses::parse(&spec.addresses)
                    .ok()
                    .map(|addrs| P { name, addrs, spec })
            }
            Item::Adv { .. } => None,
        })
        .collect();
    let mut lines: Vec<(String, Severity, String)> = Vec::new();
    for svc in &ctx.services {
        for key in [
            ferrite_api::lb::annotations::POOL,
            ferrite_api::lb::annotations::METALLB_POOL,
            ferrite_api::lb::annotations::METALLB_LEGACY_POOL,
        ] {
            if let Some(p) = svc.annotations.get(key)
                && !pools.iter().any(|pool| pool.name == p)
            {
                lines.push((
                    svc.at.clone(),
                    Severity::NotTranslated,
                    format!("annotation {key}: pool \"{p}\" is not in the output: the Service gets no new address until it names an IPPool that exists"),
                ));
            }
        }
        let from = svc
            .annotations
            .get(ferrite_api::lb::annotations::METALLB_IP_ALLOCATED_FROM_POOL)
            .map(|p| format!(" (MetalLB allocated it from pool \"{p}\")"))
            .unwrap_or_default();
        for raw in &svc.ips {
            let Ok(ip) = raw.parse::<std::net::IpAddr>() else {
                lines.push((
                    svc.at.clone(),
                    Severity::Note,
                    format!("status address \"{raw}\" is not an IP; not checked"),
                ));
                continue;
            };
            let offering: Vec<&P<'_>> = pools
                .iter()
                .filter(|p| p.addrs.offers(ip, p.spec.avoid_buggy_ips))
                .collect();
            if offering.is_empty() {
                lines.push((
                    svc.at.clone(),
                    Severity::NotTranslated,
                    format!(
                        "{ip}{from} is in no IPPool of the output: ferrite-lb keeps it with the Service but \
                         does not announce it (Warning NotAnnounced); add it to a pool"
                    ),
                ));
                continue;
            }
            let mut unknown_ns = false;
            let allowed = offering
                .iter()
                .any(|p| match allows(p.spec, svc, &ctx.namespaces) {
                    Some(a) => a,
                    None => {
                        unknown_ns = true;
                        false
                    }
                });
            if allowed {
                continue;
            }
            let names = offering
                .iter()
                .map(|p| format!("\"{}\"", p.name))
                .collect::<Vec<_>>()
                .join(", ");
            if unknown_ns {
                lines.push((
                    svc.at.clone(),
                    Severity::Note,
                    format!(
                        "{ip}: IPPool {names} selects namespaces by label and Namespace {} is not in the \
                         input: not checked (add `kubectl get namespaces -o yaml` to the input)",
                        svc.namespace
                    ),
                ));
            } else {
                lines.push((
                    svc.at.clone(),
                    Severity::NotTranslated,
                    format!(
                        "{ip} is in IPPool {names}, whose serviceAllocation does not allow this Service: \
                         ferrite-lb's allocator will move it to another address"
                    ),
                ));
            }
        }
    }
    for (at, severity, message) in lines {
        ctx.findings.push(Finding {
            at,
            severity,
            message,
        });
    }
}

/// Whether `pool` allows `svc` (MetalLB's rule: namespace criterion AND Service criterion). `None`: the
/// answer depends on labels of a Namespace the input does not have.
fn allows(
    pool: &PoolSpec,
    svc: &Svc,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Option<bool> {
    let Some(a) = &pool.service_allocation else {
        return Some(true);
    };
    let matches = |sels: &[LabelSelector], labels: &BTreeMap<String, String>| {
        sels.iter()
            .any(|s| ferrite_kit::selector::matches(s, labels).unwrap_or(false))
    };
    let service_ok = a.service_selectors.is_empty() || matches(&a.service_selectors, &svc.labels);
    let no_criterion = a.namespaces.is_empty() && a.namespace_selectors.is_empty();
    let namespace_ok = if no_criterion || a.namespaces.contains(&svc.namespace) {
        true
    } else if a.namespace_selectors.is_empty() {
        false
    } else {
        match namespaces.get(&svc.namespace) {
            Some(labels) => matches(&a.namespace_selectors, labels),
            None if service_ok => return None,
            None => false,
        }
    };
    Some(service_ok && namespace_ok)
}

/// MetalLB's rule, and ours: a pool no advertisement selects is handed out but never announced.
fn allocate_only_notes(ctx: &mut Ctx) {
    let advs: Vec<&AdvSpec> = ctx
        .items
        .iter()
        .filter_map(|i| match i {
            Item::Adv { spec, .. } => Some(spec),
            Item::Pool { .. } => None,
        })
        .collect();
    let selects = |adv: &AdvSpec, name: &str, labels: &BTreeMap<String, String>| {
        (adv.ip_pools.is_empty() && adv.ip_pool_selectors.is_empty())
            || adv.ip_pools.iter().any(|p| p == name)
            || adv
                .ip_pool_selectors
                .iter()
                .any(|s| ferrite_kit::selector::matches(s, labels).unwrap_or(false))
    };
    let mut notes = Vec::new();
    for item in &ctx.items {
        if let Item::Pool {
            from, name, labels, ..
        } = item
            && !advs.iter().any(|a| selects(a, name, labels))
        {
            notes.push(from.clone());
        }
    }
    for from in notes {
        ctx.note(
            &from,
            "no L2Advertisement of the input selects this pool: allocate-only (addresses handed out, not \
             announced) unless one in the cluster selects it, as in MetalLB",
        );
    }
}

fn render<S: Serialize>(
    kind: &'static str,
    name: String,
    labels: BTreeMap<String, String>,
    spec: S,
) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&Manifest {
        api_version: API_VERSION,
        kind,
        metadata: Meta { name, labels },
        spec,
    })
}

/// Splits a source into objects; `kind: List` (and `*List`) items are objects of their own.
fn read_source(source: &Source, objects: &mut Vec<Obj>, ctx: &mut Ctx) {
    use serde::Deserialize;
    for (i, doc) in serde_yaml::Deserializer::from_str(&source.text).enumerate() {
        let at = format!("{}#{}", source.name, i + 1);
        let value = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                ctx.error(&source.name, format!("not YAML: {e}"));
                return;
            }
        };
        let value = match serde_json::to_value(&value) {
            Ok(v) => v,
            Err(e) => {
                ctx.error(&at, format!("not a Kubernetes object: {e}"));
                continue;
            }
        };
        push_object(&at, value, objects, ctx);
    }
}

fn push_object(at: &str, value: Value, objects: &mut Vec<Obj>, ctx: &mut Ctx) {
    let map = match value {
        Value::Null => return,
        Value::Object(m) => m,
        other => {
            ctx.error(at, format!("not a Kubernetes object: found {}", describe(&other)));
            return;
        }
    };
    let text = |k: &str| map.get(k).and_then(Value::as_str).map(str::to_string);
    let (api_version, kind) = match (text("apiVersion"), text("kind")) {
        (Some(a), Some(k)) => (a, k),
        _ if map.contains_key("address-pools") || map.contains_key("peers") => {
            // The bare data of MetalLB's ConfigMap (what configmaptocrs reads with -only-data).
            objects.push(Obj {
                at: at.to_string(),
                api_version: String::new(),
                kind: LEGACY_DATA.into(),
                namespace: None,
                name: None,
                map,
            });
            return;
        }
        _ => {
            ctx.error(at, "not a Kubernetes object: no apiVersion and kind");
            return;
        }
    };
    if kind.ends_with("List")
        && let Some(Value::Array(items)) = map.get("items")
    {
        for (i, item) in items.iter().enumerate() {
            push_object(&format!("{at} items[{i}]"), item.clone(), objects, ctx);
        }
        return;
    }
    let meta = map.get("metadata").and_then(Value::as_object);
    let meta_text = |k: &str| {
        meta.and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    objects.push(Obj {
        at: at.to_string(),
        api_version,
        kind,
        namespace: meta_text("namespace"),
        name: meta_text("name"),
        map,
    });
}

fn is_legacy_candidate(obj: &Obj) -> bool {
    obj.kind == LEGACY_DATA
        || (obj.kind == "ConfigMap"
            && obj.api_version == "v1"
            && obj.map.get("data").and_then(|d| d.get("config")).is_some())
}

/// MetalLB reads one namespace; an input spanning several would merge configurations MetalLB keeps apart.
fn check_one_namespace(objects: &[Obj], ctx: &mut Ctx) {
    let mut seen: BTreeMap<&str, &Obj> = BTreeMap::new();
    for obj in objects
        .iter()
        .filter(|o| o.is_metallb() || is_legacy_candidate(o))
    {
        if let Some(ns) = obj.namespace.as_deref() {
            seen.entry(ns).or_insert(obj);
        }
    }
    if seen.len() > 1 {
        let list = seen
            .iter()
            .map(|(ns, o)| format!("{ns} (first: {})", o.origin()))
            .collect::<Vec<_>>()
            .join(", ");
        ctx.error(
            "input",
            format!(
                "MetalLB objects in {} namespaces: {list}. MetalLB reads only the namespace it runs in, and \
                 ferrite-lb's objects are cluster-scoped: import one namespace with --namespace NAMESPACE",
                seen.len()
            ),
        );
    }
}

/// IPPool and L2Advertisement names are cluster-wide: each may be used once.
fn check_names(ctx: &mut Ctx) {
    let mut pools: BTreeMap<String, String> = BTreeMap::new();
    let mut advs: BTreeMap<String, String> = BTreeMap::new();
    let mut errors = Vec::new();
    for item in &ctx.items {
        let (seen, kind, name, from) = match item {
            Item::Pool { name, from, .. } => (&mut pools, "IPPool", name, from),
            Item::Adv { name, from, .. } => (&mut advs, "L2Advertisement", name, from),
        };
        if let Some(first) = seen.get(name) {
            errors.push(ImportError {
                at: from.clone(),
                message: format!(
                    "duplicate name: {kind} \"{name}\" would also come from {first}; names must be unique \
                     (ferrite-lb's objects are cluster-scoped): leave one out, or rename it (and the annotations that name it)"
                ),
            });
        } else {
            seen.insert(name.clone(), from.clone());
        }
    }
    ctx.errors.extend(errors);
}

fn translate_object(obj: &Obj, ctx: &mut Ctx) {
    if obj.is_metallb() {
        ctx.saw_metallb = true;
        match obj.kind.as_str() {
            "IPAddressPool" => ip_address_pool(obj, ctx),
            "L2Advertisement" => l2_advertisement(obj, ctx),
            "AddressPool" => address_pool(obj, ctx),
            "BGPAdvertisement" => bgp_advertisement(obj, ctx),
            "BGPPeer" => ctx.untranslated(
                &obj.origin(),
                format!(
                    "not translated: BGP peer{} (ferrite-lb announces on layer 2 only)",
                    peer_summary(obj.map.get("spec"), "peerAddress", "peerASN")
                ),
            ),
            "BFDProfile" => ctx.untranslated(
                &obj.origin(),
                "not translated: BFD is for BGP sessions (ferrite-lb has no BGP)",
            ),
            "Community" => ctx.untranslated(
                &obj.origin(),
                "not translated: BGP community aliases (ferrite-lb has no BGP)",
            ),
            "ServiceL2Status" | "ServiceBGPStatus" | "ConfigurationState" => ctx.note(
                &obj.origin(),
                "skipped: status written by MetalLB, not configuration",
            ),
            other => ctx.untranslated(
                &obj.origin(),
                format!(
                    "not translated: unknown MetalLB kind {other} ({})",
                    obj.api_version
                ),
            ),
        }
        return;
    }
    if is_legacy_candidate(obj) {
        legacy_config_map(obj, ctx);
        return;
    }
    if obj.api_version == "v1" && obj.kind == "Service" {
        service(obj, ctx);
        return;
    }
    if obj.api_version == "v1" && obj.kind == "Namespace" {
        if let Some(name) = &obj.name {
            ctx.namespaces
                .insert(name.clone(), string_map(obj.map.get("metadata"), "labels"));
        }
        return;
    }
    ctx.untranslated(
        &obj.origin(),
        format!(
            "skipped: {} {} is not MetalLB configuration",
            obj.api_version, obj.kind
        ),
    );
}

/// Name, labels and spec of a MetalLB CR.
type Header<'a> = (String, BTreeMap<String, String>, Option<&'a Map<String, Value>>);

/// Name, labels and the spec mapping of a MetalLB CR; `None` (with an error) if unusable.
fn header<'a>(obj: &'a Obj, ctx: &mut Ctx) -> Option<Header<'a>> {
    let at = obj.origin();
    ctx.unknown_fields(
        &at,
        &obj.map,
        "",
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );
    let Some(name) = obj.name.clone() else {
        ctx.error(&at, "metadata.name is missing");
        return None;
    };
    if !is_dns_subdomain(&name) {
        ctx.error(
            &at,
            format!("metadata.name \"{name}\" is not a valid object name (lowercase RFC 1123 subdomain)"),
        );
        return None;
    }
    let mut labels = BTreeMap::new();
    let meta = ctx.object(&at, obj.map.get("metadata"), "metadata");
    if let Some(l) = meta.and_then(|m| ctx.object(&at, m.get("labels"), "metadata.labels")) {
        for (k, v) in l {
            match v {
                Value::String(s) => {
                    labels.insert(k.clone(), s.clone());
                }
                other => ctx.error(
                    &at,
                    format!(
                        "metadata.labels.{k}: expected a string, found {}",
                        describe(other)
                    ),
                ),
            }
        }
    }
    let spec = ctx.object(&at, obj.map.get("spec"), "spec");
    Some((name, labels, spec))
}

fn ip_address_pool(obj: &Obj, ctx: &mut Ctx) {
    let at = obj.origin();
    let Some((name, labels, spec)) = header(obj, ctx) else {
        return;
    };
    let Some(spec) = spec else {
        ctx.error(&at, "spec is missing: a pool needs spec.addresses");
        return;
    };
    ctx.unknown_fields(
        &at,
        spec,
        "spec.",
        &["addresses", "autoAssign", "avoidBuggyIPs", "serviceAllocation"],
    );
    let addresses = ctx.addresses(&at, spec.get("addresses"), "spec.addresses");
    let auto_assign = ctx
        .bool(&at, spec.get("autoAssign"), "spec.autoAssign")
        .unwrap_or(true);
    let avoid_buggy_ips = ctx
        .bool(&at, spec.get("avoidBuggyIPs"), "spec.avoidBuggyIPs")
        .unwrap_or(false);
    let service_allocation = ctx
        .object(&at, spec.get("serviceAllocation"), "spec.serviceAllocation")
        .and_then(|a| allocation(&at, a, ctx));
    ctx.items.push(Item::Pool {
        from: at,
        name,
        labels,
        spec: PoolSpec {
            addresses,
            auto_assign,
            avoid_buggy_ips,
            service_allocation,
        },
    });
}

/// `serviceAllocation`: the same fields and meaning in both. A pool that has one (even `{}` or only a
/// priority) is tried before the pools without one, by priority (lower first, 0 or unset last), so the
/// block is kept even when empty. MetalLB's priority is a Go `int`; ferrite-lb's is an int32 (the CRD's
/// `format: int32`), so a larger one is refused.
fn allocation(at: &str, a: &Map<String, Value>, ctx: &mut Ctx) -> Option<Allocation> {
    let path = "spec.serviceAllocation";
    ctx.unknown_fields(
        at,
        a,
        "spec.serviceAllocation.",
        &["priority", "namespaces", "namespaceSelectors", "serviceSelectors"],
    );
    let priority = match a.get("priority") {
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => {
            let p = n.as_i64().and_then(|p| i32::try_from(p).ok());
            if p.is_none() {
                ctx.error(
                    at,
                    format!(
                        "{path}.priority: {n} is out of range: ferrite-lb's priority is an int32 ({} to {}); \
                         renumber the pools' priorities within it (only their order counts)",
                        i32::MIN,
                        i32::MAX
                    ),
                );
            }
            p
        }
        other => ctx
            .int(at, other, &format!("{path}.priority"))
            .and_then(|p| i32::try_from(p).ok()),
    };
    if let Some(p) = priority.filter(|p| *p < 0) {
        ctx.note(
            at,
            format!(
                "{path}.priority: {p} is negative: MetalLB's order of negative priorities is undefined (its \
                 sort compares them inconsistently); ferrite-lb tries them before every positive one, lowest first"
            ),
        );
    }
    let out = Allocation {
        // MetalLB's 0 is "unset" (its field is a plain int with omitempty); here too, so it is left out.
        priority: priority.filter(|p| *p != 0),
        namespaces: ctx.strings(at, a.get("namespaces"), &format!("{path}.namespaces")),
        namespace_selectors: ctx.selectors(
            at,
            a.get("namespaceSelectors"),
            &format!("{path}.namespaceSelectors"),
        ),
        service_selectors: ctx.selectors(at, a.get("serviceSelectors"), &format!("{path}.serviceSelectors")),
    };
    Some(out)
}

fn l2_advertisement(obj: &Obj, ctx: &mut Ctx) {
    let at = obj.origin();
    let Some((name, labels, spec)) = header(obj, ctx) else {
        return;
    };
    let empty = Map::new();
    let spec = spec.unwrap_or(&empty);
    ctx.unknown_fields(
        &at,
        spec,
        "spec.",
        &[
            "ipAddressPools",
            "ipAddressPoolSelectors",
            "nodeSelectors",
            "interfaces",
            "serviceSelectors",
            "preferredNodeSelectors",
        ],
    );
    if spec.get("preferredNodeSelectors").is_some_and(|v| !v.is_null()) {
        ctx.untranslated(
            &at,
            "spec.preferredNodeSelectors: not translated (ferrite-lb's election has no node preference; \
             use nodeSelectors to restrict the nodes instead)",
        );
    }
    let spec = AdvSpec {
        ip_pools: ctx.strings(&at, spec.get("ipAddressPools"), "spec.ipAddressPools"),
        ip_pool_selectors: ctx.selectors(
            &at,
            spec.get("ipAddressPoolSelectors"),
            "spec.ipAddressPoolSelectors",
        ),
        node_selectors: ctx.selectors(&at, spec.get("nodeSelectors"), "spec.nodeSelectors"),
        interfaces: ctx.strings(&at, spec.get("interfaces"), "spec.interfaces"),
        service_selectors: ctx.selectors(&at, spec.get("serviceSelectors"), "spec.serviceSelectors"),
    };
    ctx.items.push(Item::Adv {
        from: at,
        name,
        labels,
        spec,
    });
}

/// metallb.io AddressPool (MetalLB 0.13; removed in 0.14): a pool with its protocol, like the ConfigMap's.
fn address_pool(obj: &Obj, ctx: &mut Ctx) {
    let at = obj.origin();
    let Some((name, labels, spec)) = header(obj, ctx) else {
        return;
    };
    let Some(spec) = spec else {
        ctx.error(
            &at,
            "spec is missing: a pool needs spec.protocol and spec.addresses",
        );
        return;
    };
    ctx.unknown_fields(
        &at,
        spec,
        "spec.",
        &[
            "protocol",
            "addresses",
            "autoAssign",
            "avoidBuggyIPs",
            "bgpAdvertisements",
        ],
    );
    let pool = LegacyPool {
        at: at.clone(),
        name,
        labels,
        protocol: spec.get("protocol").cloned(),
        addresses: ctx.addresses(&at, spec.get("addresses"), "spec.addresses"),
        auto_assign: ctx
            .bool(&at, spec.get("autoAssign"), "spec.autoAssign")
            .unwrap_or(true),
        avoid_buggy_ips: ctx
            .bool(&at, spec.get("avoidBuggyIPs"), "spec.avoidBuggyIPs")
            .unwrap_or(false),
        bgp_advertisements: spec.get("bgpAdvertisements").cloned(),
        bgp_path: "spec.bgpAdvertisements",
        protocol_path: "spec.protocol",
    };
    legacy_pool(pool, ctx);
}

fn bgp_advertisement(obj: &Obj, ctx: &mut Ctx) {
    let at = obj.origin();
    let spec = obj.map.get("spec").and_then(Value::as_object);
    let pools = match spec {
        Some(s) if s.get("ipAddressPools").is_some() || s.get("ipAddressPoolSelectors").is_some() => {
            let names = s
                .get("ipAddressPools")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            match (names.is_empty(), s.get("ipAddressPoolSelectors").is_some()) {
                (false, true) => format!("pools {names} and those its ipAddressPoolSelectors select"),
                (false, false) => format!("pools {names}"),
                _ => "the pools its ipAddressPoolSelectors select".to_string(),
            }
        }
        _ => "every pool".to_string(),
    };
    let fields = spec
        .map(|s| {
            s.keys()
                .filter(|k| *k != "ipAddressPools" && *k != "ipAddressPoolSelectors")
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let fields = if fields.is_empty() {
        String::new()
    } else {
        format!("; dropped: {fields}")
    };
    ctx.untranslated(
        &at,
        format!(
            "not translated: BGP advertisement of {pools} (ferrite-lb announces on layer 2 only; a pool no \
             L2Advertisement selects is allocate-only){fields}"
        ),
    );
}

fn peer_summary(spec: Option<&Value>, addr: &str, asn: &str) -> String {
    let Some(spec) = spec else { return String::new() };
    match (spec.get(addr), spec.get(asn)) {
        (Some(a), Some(n)) => format!(" {} AS {}", plain(a), plain(n)),
        (Some(a), None) => format!(" {}", plain(a)),
        _ => String::new(),
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct LegacyPool {
    at: String,
    name: String,
    labels: BTreeMap<String, String>,
    protocol: Option<Value>,
    addresses: Vec<String>,
    auto_assign: bool,
    avoid_buggy_ips: bool,
    bgp_advertisements: Option<Value>,
    bgp_path: &'static str,
    protocol_path: &'static str,
}

/// A pool with a protocol: layer2 -> IPPool + an L2Advertisement of it; bgp -> IPPool (allocate-only).
fn legacy_pool(p: LegacyPool, ctx: &mut Ctx) {
    let has_bgp_ads = p
        .bgp_advertisements
        .as_ref()
        .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()));
    let protocol = match p.protocol.as_ref() {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => {
            ctx.error(
                &p.at,
                format!(
                    "{} is missing (layer2 or bgp), as MetalLB requires",
                    p.protocol_path
                ),
            );
            return;
        }
        Some(other) => {
            ctx.error(
                &p.at,
                format!(
                    "{}: expected layer2 or bgp, found {}",
                    p.protocol_path,
                    describe(other)
                ),
            );
            return;
        }
    };
    let l2 = match protocol {
        "layer2" => {
            if has_bgp_ads {
                ctx.error(
                    &p.at,
                    format!(
                        "{} in a layer2 pool: MetalLB refuses this configuration",
                        p.bgp_path
                    ),
                );
                return;
            }
            true
        }
        "bgp" => {
            ctx.untranslated(
                &p.at,
                format!(
                    "{}: bgp not translated (ferrite-lb announces on layer 2 only): IPPool \"{}\" is \
                     allocate-only until an L2Advertisement selects it",
                    p.protocol_path, p.name
                ),
            );
            match &p.bgp_advertisements {
                Some(Value::Array(ads)) => {
                    for (i, ad) in ads.iter().enumerate() {
                        let fields = ad
                            .as_object()
                            .map(|m| m.keys().cloned().collect::<Vec<_>>().join(", "))
                            .unwrap_or_default();
                        ctx.untranslated(
                            &p.at,
                            format!("{}[{i}]: not translated (BGP): {fields}", p.bgp_path),
                        );
                    }
                }
                Some(Value::Null) | None => {}
                Some(other) => ctx.error(
                    &p.at,
                    format!("{}: expected a list, found {}", p.bgp_path, describe(other)),
                ),
            }
            false
        }
        other => {
            ctx.error(
                &p.at,
                format!(
                    "{}: unknown protocol \"{other}\" (MetalLB knows layer2 and bgp)",
                    p.protocol_path
                ),
            );
            return;
        }
    };
    ctx.items.push(Item::Pool {
        from: p.at.clone(),
        name: p.name.clone(),
        labels: p.labels.clone(),
        spec: PoolSpec {
            addresses: p.addresses,
            auto_assign: p.auto_assign,
            avoid_buggy_ips: p.avoid_buggy_ips,
            service_allocation: None,
        },
    });
    if l2 {
        ctx.items.push(Item::Adv {
            from: p.at,
            name: p.name.clone(),
            labels: p.labels,
            spec: AdvSpec {
                ip_pools: vec![p.name],
                ..Default::default()
            },
        });
    }
}

/// MetalLB up to 0.12: ConfigMap `config` whose `data.config` is YAML with `address-pools`, `peers`,
/// `bgp-communities` and `bfd-profiles`.
fn legacy_config_map(obj: &Obj, ctx: &mut Ctx) {
    let at = obj.origin();
    let data: Value = if obj.kind == LEGACY_DATA {
        Value::Object(obj.map.clone())
    } else {
        let Some(text) = obj
            .map
            .get("data")
            .and_then(|d| d.get("config"))
            .and_then(Value::as_str)
        else {
            ctx.untranslated(
                &at,
                "skipped: data.config is not a string, so this is not MetalLB's ConfigMap",
            );
            return;
        };
        match serde_yaml::from_str::<serde_yaml::Value>(text).map(|v| serde_json::to_value(&v)) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                ctx.error(&at, format!("data.config: not MetalLB's configuration: {e}"));
                return;
            }
            Err(e) => {
                ctx.error(&at, format!("data.config: not YAML: {e}"));
                return;
            }
        }
    };
    let Value::Object(config) = data else {
        ctx.error(
            &at,
            format!(
                "data.config: expected MetalLB's configuration (a mapping), found {}",
                describe(&data)
            ),
        );
        return;
    };
    let known = ["address-pools", "peers", "bgp-communities", "bfd-profiles"];
    if obj.kind == "ConfigMap" && !config.keys().any(|k| known.contains(&k.as_str())) {
        ctx.untranslated(
            &at,
            "skipped: data.config has none of MetalLB's sections, so this is not MetalLB's ConfigMap",
        );
        return;
    }
    ctx.saw_metallb = true;
    ctx.unknown_fields(&at, &config, "data.config.", &known);
    if let Some(Value::Array(peers)) = config.get("peers") {
        for (i, peer) in peers.iter().enumerate() {
            ctx.untranslated(
                &at,
                format!(
                    "data.config.peers[{i}]:{} not translated (BGP; ferrite-lb announces on layer 2 only)",
                    peer_summary(Some(peer), "peer-address", "peer-asn")
                ),
            );
        }
    }
    if let Some(Value::Object(c)) = config.get("bgp-communities")
        && !c.is_empty()
    {
        let names = c.keys().cloned().collect::<Vec<_>>().join(", ");
        ctx.untranslated(
            &at,
            format!("data.config.bgp-communities: {names}: not translated (BGP)"),
        );
    }
    if let Some(Value::Array(profiles)) = config.get("bfd-profiles") {
        for (i, p) in profiles.iter().enumerate() {
            let name = p.get("name").map(plain).unwrap_or_default();
            ctx.untranslated(
                &at,
                format!("data.config.bfd-profiles[{i}] {name}: not translated (BFD is for BGP)"),
            );
        }
    }
    let pools = match config.get("address-pools") {
        None | Some(Value::Null) => return,
        Some(Value::Array(p)) => p,
        Some(other) => {
            ctx.error(
                &at,
                format!(
                    "data.config.address-pools: expected a list, found {}",
                    describe(other)
                ),
            );
            return;
        }
    };
    for (i, pool) in pools.iter().enumerate() {
        let path = format!("data.config.address-pools[{i}]");
        let Some(pool) = ctx.object(&at, Some(pool), &path) else {
            continue;
        };
        let raw_name = pool.get("name").and_then(Value::as_str).unwrap_or_default();
        let pool_at = format!("{at} address-pools[{i}] {raw_name}");
        if raw_name.is_empty() {
            ctx.error(
                &pool_at,
                format!("{path}.name is missing (MetalLB: missing pool name)"),
            );
            continue;
        }
        let Some(name) = legacy_name(raw_name) else {
            ctx.error(
                &pool_at,
                format!("{path}.name \"{raw_name}\" cannot be made into an object name (no letter)"),
            );
            continue;
        };
        if name != raw_name {
            ctx.untranslated(
                &pool_at,
                format!(
                    "name \"{raw_name}\" is not a valid object name: imported as \"{name}\" (as MetalLB's \
                     configmaptocrs does); change metallb.universe.tf/address-pool annotations that name it"
                ),
            );
        }
        let mut rest = pool.clone();
        if rest.remove("interfaces").is_some() {
            let hint = if pool.get("protocol").and_then(Value::as_str) == Some("layer2") {
                format!("; to restrict them, add spec.interfaces to L2Advertisement \"{name}\"")
            } else {
                String::new()
            };
            ctx.untranslated(
                &pool_at,
                format!(
                    "{path}.interfaces: not translated: the ConfigMap format has no interfaces (MetalLB 0.12 \
                     refuses the field){hint}"
                ),
            );
        }
        ctx.unknown_fields(
            &pool_at,
            &rest,
            &format!("{path}."),
            &[
                "name",
                "protocol",
                "addresses",
                "auto-assign",
                "avoid-buggy-ips",
                "bgp-advertisements",
            ],
        );
        let p = LegacyPool {
            at: pool_at.clone(),
            name,
            labels: BTreeMap::new(),
            protocol: pool.get("protocol").cloned(),
            addresses: ctx.addresses(&pool_at, pool.get("addresses"), &format!("{path}.addresses")),
            auto_assign: ctx
                .bool(&pool_at, pool.get("auto-assign"), &format!("{path}.auto-assign"))
                .unwrap_or(true),
            avoid_buggy_ips: ctx
                .bool(
                    &pool_at,
                    pool.get("avoid-buggy-ips"),
                    &format!("{path}.avoid-buggy-ips"),
                )
                .unwrap_or(false),
            bgp_advertisements: pool.get("bgp-advertisements").cloned(),
            bgp_path: "bgp-advertisements",
            protocol_path: "protocol",
        };
        legacy_pool(p, ctx);
    }
}

/// Reads the files (`-`: stdin), translates, prints; the process's exit code.
pub fn run(args: &ImportArgs) -> u8 {
    let mut sources = Vec::with_capacity(args.files.len());
    let mut failed = false;
    for file in &args.files {
        let read = if file == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map(|_| ("stdin".to_string(), text))
        } else {
            std::fs::read_to_string(file).map(|text| (file.clone(), text))
        };
        match read {
            Ok((name, text)) => sources.push(Source { name, text }),
            Err(e) => {
                eprintln!("ferrite-lb import-metallb: {file}: cannot read: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return EXIT_UNREADABLE;
    }
    match translate(&sources, args.namespace.as_deref()) {
        Ok(t) => {
            let yaml = t.to_yaml();
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout.write_all(yaml.as_bytes()).and_then(|()| stdout.flush()) {
                eprintln!("ferrite-lb import-metallb: cannot write the output: {e}");
                return EXIT_UNREADABLE;
            }
            for f in &t.findings {
                eprintln!("{f}");
            }
            t.exit_code()
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "ferrite-lb import-metallb: input refused ({} error{}); nothing printed",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" }
            );
            EXIT_UNREADABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Result<Translation, Vec<ImportError>> {
        translate(
            &[Source {
                name: "in.yaml".into(),
                text: text.into(),
            }],
            None,
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match one(text) {
            Ok(t) => panic!("accepted: {}", t.to_yaml()),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    fn pool(spec: &str) -> String {
        format!(
            "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata: {{name: p, namespace: metallb-system}}\nspec: {spec}\n"
        )
    }

    #[test]
    fn legacy_names_as_configmaptocrs_converts_them() {
        // (ConfigMap name, object name), from configmaptocrs/testdata and its formatToK8S rules.
        let table = [
            ("my-ip-space", Some("my-ip-space")),
            ("01-numbered-addresspool", Some("numbered-addresspool")),
            ("Capitalized-AddressPool", Some("capitalized-addresspool")),
            ("underscored_bfd_profile", Some("underscored-bfd-profile")),
            (
                "tooLongBFDProfileName01-tooLongBFDProfileName02-tooLongBFDProfileName03-tooLongBFDProfileName04",
                Some("toolongbfdprofilename01-toolongbfdprofilename02-toolongbfdprofi"),
            ),
            ("default", Some("default")),
            ("1234", None),
            ("pool with spaces", None),
        ];
        for (name, want) in table {
            assert_eq!(legacy_name(name).as_deref(), want, "{name}");
        }
    }

    #[test]
    fn object_names_are_dns_subdomains() {
        for ok in ["a", "first-pool", "a.b-c", "0pool"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["", "First", "-a", "a-", "a..b", "a_b", &"a".repeat(254)] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }

    #[test]
    fn priority_zero_is_unset_as_in_metallb_and_the_pinning_is_kept() {
        // MetalLB pins a pool with an empty serviceAllocation or one with only a priority to every
        // Service (tried before the pools without one): the block stays, empty.
        for spec in [
            "{addresses: [192.0.2.0/28], serviceAllocation: {priority: 0}}",
            "{addresses: [192.0.2.0/28], serviceAllocation: {}}",
        ] {
            let t = one(&pool(spec)).expect("translates");
            assert!(
                t.objects[0].yaml.contains("serviceAllocation: {}\n"),
                "{spec}: {}",
                t.objects[0].yaml
            );
        }
        let t = one(&pool(
            "{addresses: [192.0.2.0/28], serviceAllocation: {priority: -4}}",
        ))
        .expect("translates");
        assert!(
            t.objects[0].yaml.contains("priority: -4\n"),
            "{}",
            t.objects[0].yaml
        );
        assert!(
            t.findings.iter().any(|f| f.severity == Severity::Note
                && f.message
                    .starts_with("spec.serviceAllocation.priority: -4 is negative: MetalLB's order")),
            "{:?}",
            t.findings
        );
        let t = one(&pool("{addresses: [192.0.2.0/28], serviceAllocation: null}")).expect("translates");
        assert!(
            !t.objects[0].yaml.contains("serviceAllocation"),
            "{}",
            t.objects[0].yaml
        );
        let t = one(&pool(
            "{addresses: [192.0.2.0/28], serviceAllocation: {priority: 7}}",
        ))
        .expect("translates");
        assert!(
            t.objects[0]
                .yaml
                .contains("serviceAllocation:\n    priority: 7\n"),
            "{}",
            t.objects[0].yaml
        );
    }

    #[test]
    fn wrong_types_are_refused_with_the_field() {
        let table = [
            (
                "{addresses: 192.0.2.0/28}",
                "spec.addresses: expected a list of strings, found the string",
            ),
            (
                "{addresses: [192.0.2.0/28], autoAssign: \"no\"}",
                "spec.autoAssign: expected true or false",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {priority: high}}",
                "spec.serviceAllocation.priority: expected an integer",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {priority: 2147483648}}",
                "spec.serviceAllocation.priority: 2147483648 is out of range: ferrite-lb's priority is an int32 (-2147483648 to 2147483647)",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {priority: -2147483649}}",
                "spec.serviceAllocation.priority: -2147483649 is out of range",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {priority: 18446744073709551615}}",
                "spec.serviceAllocation.priority: 18446744073709551615 is out of range",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {namespaces: web}}",
                "spec.serviceAllocation.namespaces: expected a list",
            ),
            (
                "{addresses: [192.0.2.0/28], serviceAllocation: {serviceSelectors: [{app: web}]}}",
                "serviceSelectors[0].app: not a label selector field",
            ),
            (
                "{addresses: [192.0.2.20-192.0.2.10]}",
                "range \"192.0.2.20-192.0.2.10\" is reversed",
            ),
            ("{addresses: []}", "spec.addresses is missing or empty"),
        ];
        for (spec, want) in table {
            let errs = errors(&pool(spec));
            assert!(errs.iter().any(|e| e.contains(want)), "{spec}: {errs:?}");
        }
    }

    #[test]
    fn legacy_protocols() {
        let cm = |pools: &str| {
            format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: config, namespace: metallb-system}}\ndata:\n  config: |\n    address-pools: {pools}\n"
            )
        };
        let errs = errors(&cm("[{name: a, addresses: [192.0.2.0/28]}]"));
        assert!(errs[0].contains("protocol is missing"), "{errs:?}");
        let errs = errors(&cm(
            "[{name: a, protocol: layer2, addresses: [192.0.2.0/28], bgp-advertisements: [{localpref: 1}]}]",
        ));
        assert!(
            errs[0].contains("bgp-advertisements in a layer2 pool"),
            "{errs:?}"
        );
        let t = one(&cm("[{name: a, protocol: bgp, addresses: [192.0.2.0/28]}]")).expect("translates");
        assert_eq!(t.exit_code(), EXIT_PARTIAL);
        assert_eq!(t.objects.iter().map(|o| o.kind).collect::<Vec<_>>(), ["IPPool"]);
        let t = one(&cm(
            "[{name: a, protocol: layer2, addresses: [192.0.2.0/28], auto-assign: false}]",
        ))
        .expect("translates");
        assert_eq!(t.exit_code(), EXIT_TRANSLATED);
        assert_eq!(
            t.objects.iter().map(|o| o.kind).collect::<Vec<_>>(),
            ["IPPool", "L2Advertisement"]
        );
        assert!(t.objects[0].yaml.contains("autoAssign: false"));
        // Interfaces in the ConfigMap: reported; the hint names the advertisement only where there is one.
        let t = one(&cm(
            "[{name: a, protocol: bgp, interfaces: [eth0], addresses: [192.0.2.0/28]}]",
        ))
        .expect("translates");
        assert!(
            t.findings[0]
                .message
                .ends_with("(MetalLB 0.12 refuses the field)"),
            "{}",
            t.findings[0]
        );
        let t = one(&cm(
            "[{name: a, protocol: layer2, interfaces: [eth0], addresses: [192.0.2.0/28]}]",
        ))
        .expect("translates");
        assert!(
            t.findings[0]
                .message
                .ends_with("add spec.interfaces to L2Advertisement \"a\""),
            "{}",
            t.findings[0]
        );
        // Not MetalLB's ConfigMap: reported, and with nothing else the input is refused.
        let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {config: 'log: debug'}\n";
        assert!(errors(other)[0].contains("no MetalLB configuration found"));
    }

    #[test]
    fn unknown_fields_get_a_hint() {
        let t = one(&pool("{addresses: [192.0.2.0/28], autoassign: false}")).expect("translates");
        assert_eq!(t.exit_code(), EXIT_PARTIAL);
        assert!(
            t.findings[0]
                .message
                .starts_with("spec.autoassign: unknown field, not translated (did you mean autoAssign?"),
            "{}",
            t.findings[0]
        );
    }

    #[test]
    fn notes_do_not_change_the_exit_code() {
        let t = one(&pool("{addresses: [192.0.2.0/28]}")).expect("translates");
        assert_eq!(t.findings.len(), 1, "{:?}", t.findings);
        assert_eq!(t.findings[0].severity, Severity::Note);
        assert_eq!(t.exit_code(), EXIT_TRANSLATED);
        assert!(
            t.to_yaml()
                .contains("#   in.yaml#1: IPAddressPool metallb-system/p: note: no L2Advertisement")
        );
    }
}
