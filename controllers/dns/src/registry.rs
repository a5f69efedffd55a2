//! external-dns's TXT registry: how ownership of a record is written into the zone itself.
//!
//! ```text
//!   record  app.example.com. A 192.0.2.10          (what a source wants)
//!   owner   a-app.example.com. TXT "heritage=external-dns,external-dns/owner=<id>,external-dns/resource=service/ns/app"
//!            └── NameMapper::to_txt_name            └── Labels::encode / Labels::decode
//!
//!   reading a zone:  TXT records ──> Ownership (labels by record name + type) ──> labels_for(name, type)
//! ```
//!
//! An RFC 2136 server holds records written by anyone. A record is ours only if a TXT record in this exact
//! format names our owner id, and the format is external-dns's, byte for byte, so a zone that external-dns
//! manages is taken over by reusing its owner id: nothing deleted, nothing re-created. The rules below are
//! external-dns's (`endpoint/labels.go`, `registry/mapper/mapper.go`, `registry/txt/registry.go`), and the
//! tests use the strings of its own tests and docs:
//!
//! - The text is `heritage=external-dns` then `external-dns/<key>=<value>` for each label, keys sorted,
//!   comma-separated. Reading it: surrounding quotes are dropped; tokens without `=` and keys without the
//!   `external-dns/` prefix are ignored; the value is everything after the first `=`; a `heritage` other
//!   than `external-dns` anywhere, or none at all, means "not a registry record".
//! - The TXT record's name (the "new format", since v0.12; the only one written since v0.18) is the record's
//!   name with `<type>-` put before its first label (`a-app.example.com`, `cname-www.example.com`), inside the
//!   optional `--txt-prefix` / `--txt-suffix` affixes (exclusive; `%{record_type}` in them is replaced by
//!   the type and then no `<type>-` is added) and with a leading `*` replaced by `--txt-wildcard-replacement`.
//! - The old format, without the type, is read too: a TXT record at the record's own name (or with only the
//!   affix) owns every type at that name except AAAA, and the new format wins where both exist.
//!
//! Not supported: encrypted registry records (`--txt-encrypt-enabled`; such a record does not decode and is
//! therefore not ours) and the AWS-only `cname-` fallback for A ALIAS records. Beyond external-dns, `caa-`
//! is recognised as a type prefix, since ferrite-dns publishes CAA records and external-dns does not.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::TXT;

/// The heritage value of every registry record.
pub const HERITAGE: &str = "external-dns";
/// The label holding the owner id (`--txt-owner-id`; ferrite-dns: the `DNSZone`'s `ownerId`).
pub const OWNER_LABEL: &str = "owner";
/// The label naming the Kubernetes object that wants the name: `<kind>/<namespace>/<name>`.
pub const RESOURCE_LABEL: &str = "resource";
/// external-dns keeps the nonce of encrypted records in this label and never writes it out in clear.
const ENCRYPTION_NONCE_LABEL: &str = "txt-encryption-nonce";
/// The template in a prefix or suffix that is replaced by the record type.
pub const RECORD_TYPE_TEMPLATE: &str = "%{record_type}";
/// A TXT character-string holds at most 255 bytes (RFC 1035 section 3.3); longer texts are split.
const TXT_STRING_MAX: usize = 255;

/// The record types whose name prefix external-dns recognises (its `supportedRecords`, in its order, which
/// matters: the first prefix that matches wins), plus CAA.
pub const PREFIXED_TYPES: [RecordType; 11] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::CNAME,
    RecordType::NS,
    RecordType::MX,
    RecordType::PTR,
    RecordType::SRV,
    RecordType::NAPTR,
    RecordType::TXT,
    RecordType::DNAME,
    RecordType::CAA,
];

/// A registry record or name that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The text has no `heritage=external-dns`: not a registry record (someone else's TXT).
    #[error("not an external-dns registry record: no heritage=external-dns in {text:?}")]
    NoHeritage {
        /// The text, as read.
        text: String,
    },
    /// The text names another heritage.
    #[error("not an external-dns registry record: heritage={heritage} in {text:?}")]
    ForeignHeritage {
        /// The other heritage.
        heritage: String,
        /// The text, as read.
        text: String,
    },
    /// A label that the format cannot carry.
    #[error("registry label {key:?}={value:?}: {reason}")]
    BadLabel {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A resource label not of the form `<kind>/<namespace>/<name>`.
    #[error("registry resource {text:?} is not <kind>/<namespace>/<name>")]
    BadResource {
        /// The label's value.
        text: String,
    },
    /// Both a prefix and a suffix (external-dns: "txt-prefix and txt-suffix are mutual exclusive").
    #[error("a TXT registry prefix ({prefix:?}) and suffix ({suffix:?}) cannot both be set; use one")]
    PrefixAndSuffix {
        /// The prefix.
        prefix: String,
        /// The suffix.
        suffix: String,
    },
}

impl RegistryError {
    /// A short, stable reason for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::NoHeritage { .. } => "NoHeritage",
            RegistryError::ForeignHeritage { .. } => "ForeignHeritage",
            RegistryError::BadLabel { .. } => "BadRegistryLabel",
            RegistryError::BadResource { .. } => "BadRegistryResource",
            RegistryError::PrefixAndSuffix { .. } => "RegistryPrefixAndSuffix",
        }
    }
}

/// The Kubernetes object a record is published for, as external-dns writes it: `service/default/app`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    /// Lower-case kind: `service`, `ingress`, `crd` (external-dns's DNSEndpoint), `dnsrecord`.
    pub kind: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl Resource {
    /// Parses `<kind>/<namespace>/<name>`; all three parts non-empty, the name without `/`.
    pub fn parse(text: &str) -> Result<Resource, RegistryError> {
        let mut parts = text.splitn(3, '/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(kind), Some(namespace), Some(name))
                if !kind.is_empty() && !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(Resource {
                    kind: kind.to_string(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(RegistryError::BadResource {
                text: text.to_string(),
            }),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// The labels of one registry record (keys without the `external-dns/` prefix; `heritage` is implied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    labels: BTreeMap<String, String>,
}

impl Labels {
    /// The labels for a record owned by `owner`, published for `resource`.
    pub fn owned(owner: &str, resource: &Resource) -> Result<Labels, RegistryError> {
        let mut labels = Labels::default();
        labels.insert(OWNER_LABEL, owner)?;
        labels.insert(RESOURCE_LABEL, &resource.to_string())?;
        Ok(labels)
    }

    /// Sets a label. The format is comma- and `=`-separated, so a key may contain neither and a value no
    /// comma; a key is not empty and has no `/` beyond what external-dns itself writes.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), RegistryError> {
        let bad = |reason| RegistryError::BadLabel {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        if key.contains([',', '=', '"']) {
            return Err(bad("a key cannot contain ',', '=' or '\"'"));
        }
        if value.contains([',', '"']) {
            return Err(bad(
                "a value cannot contain ',' or '\"' (the registry text is comma-separated)",
            ));
        }
        self.labels.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// A label's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The owner id.
    pub fn owner(&self) -> Option<&str> {
        self.get(OWNER_LABEL)
    }

    /// True if the record is owned by `owner_id` (exact match, as external-dns compares).
    pub fn is_owned_by(&self, owner_id: &str) -> bool {
        self.owner() == Some(owner_id)
    }

    /// The resource label, as written.
    pub fn resource(&self) -> Option<&str> {
        self.get(RESOURCE_LABEL)
    }

    /// Every label, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.labels
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
    }

    /// The registry text, exactly as external-dns writes it (`SerializePlain(false)`):
    /// `heritage=external-dns,external-dns/owner=<id>,external-dns/resource=<kind>/<ns>/<name>`.
    pub fn encode(&self) -> String {
        let mut text = format!("heritage={HERITAGE}");
        for (key, value) in &self.labels {
            if key == ENCRYPTION_NONCE_LABEL {
                continue;
            }
            text.push_str(&format!(",{HERITAGE}/{key}={value}"));
        }
        text
    }

    /// The text as TXT RDATA: one character-string, split every 255 bytes when longer (a resource name can
    /// be 253 characters); [`Labels::decode_txt`] joins them again.
    pub fn to_txt(&self) -> TXT {
        let text = self.encode();
        TXT::from_bytes(text.as_bytes().chunks(TXT_STRING_MAX).collect())
    }

    /// Reads a registry text, as external-dns does (`NewLabelsFromStringPlain`).
    pub fn decode(text: &str) -> Result<Labels, RegistryError> {
        let trimmed = text.trim_matches('"');
        let mut labels = BTreeMap::new();
        let mut heritage = false;
        for token in trimmed.split(',') {
            let Some((key, value)) = token.split_once('=') else {
                continue;
            };
            if key == "heritage" {
                if value != HERITAGE {
                    return Err(RegistryError::ForeignHeritage {
                        heritage: value.to_string(),
                        text: text.to_string(),
                    });
                }
                heritage = true;
                continue;
            }
            // external-dns tests `HasPrefix(key, "external-dns")` and then trims `external-dns/`.
            if key.starts_with(HERITAGE) {
                let key = key.strip_prefix(&format!("{HERITAGE}/")).unwrap_or(key);
                labels.insert(key.to_string(), value.to_string());
            }
        }
        if !heritage {
            return Err(RegistryError::NoHeritage {
                text: text.to_string(),
            });
        }
        Ok(Labels { labels })
    }

    /// Reads a registry record's TXT RDATA: its character-strings joined, then [`Labels::decode`].
    pub fn decode_txt(txt: &TXT) -> Result<Labels, RegistryError> {
        let bytes: Vec<u8> = txt
            .txt_data
            .iter()
            .flat_map(|part| part.iter().copied())
            .collect();
        Labels::decode(&String::from_utf8_lossy(&bytes))
    }
}

/// Maps a record's name to the name of its registry TXT record and back (external-dns's
/// `AffixNameMapper`). Names are text, with or without the trailing dot (it is kept as given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameMapper {
    prefix: String,
    suffix: String,
    wildcard_replacement: String,
}

impl NameMapper {
    /// A mapper with `--txt-prefix`, `--txt-suffix` and `--txt-wildcard-replacement` (each may be empty;
    /// prefix and suffix are exclusive). All three are compared lower-case, as external-dns does.
    pub fn new(prefix: &str, suffix: &str, wildcard_replacement: &str) -> Result<NameMapper, RegistryError> {
        if !prefix.is_empty() && !suffix.is_empty() {
            return Err(RegistryError::PrefixAndSuffix {
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            });
        }
        Ok(NameMapper {
            prefix: prefix.to_lowercase(),
            suffix: suffix.to_lowercase(),
            wildcard_replacement: wildcard_replacement.to_lowercase(),
        })
    }

    /// The name of the TXT record that holds the ownership of `name`'s `rtype` record (`ToTXTName`).
    pub fn to_txt_name(&self, name: &str, rtype: RecordType) -> String {
        let rtype = type_label(rtype);
        let (first, rest) = match name.split_once('.') {
            Some((first, rest)) => (first, Some(rest)),
            None => (name, None),
        };
        let prefix = self.prefix.replace(RECORD_TYPE_TEMPLATE, &rtype);
        let suffix = self.suffix.replace(RECORD_TYPE_TEMPLATE, &rtype);
        let first = if !self.wildcard_replacement.is_empty() && first == "*" {
            self.wildcard_replacement.as_str()
        } else {
            first
        };
        let first = if self.type_in_affix() {
            first.to_string()
        } else {
            format!("{rtype}-{first}")
        };
        match rest {
            Some(rest) => format!("{prefix}{first}{suffix}.{rest}"),
            None => format!("{prefix}{first}{suffix}"),
        }
    }

    /// The record a registry TXT name stands for (`ToEndpointName`): its name (lower-case) and its type, or
    /// no type for the old format. `None` if the name does not carry this mapper's affix.
    pub fn to_record_name(&self, txt_name: &str) -> Option<(String, Option<RecordType>)> {
        let lower = txt_name.to_lowercase();
        let found = if self.suffix.is_empty() {
            self.drop_affix_extract_type(&lower)
        } else {
            // The suffix sits after the first label; a suffix with dots spans that many more labels.
            let dots = self.suffix.matches('.').count();
            let parts: Vec<&str> = lower.splitn(dots + 2, '.').collect();
            if parts.len() <= dots {
                return None;
            }
            let (name, rtype) = self.drop_affix_extract_type(&parts[..=dots].join("."))?;
            match parts.get(dots + 1) {
                Some(rest) => Some((format!("{name}.{rest}"), rtype)),
                None => Some((name, rtype)),
            }
        };
        found.filter(|(name, _)| !name.is_empty())
    }

    fn type_in_affix(&self) -> bool {
        self.prefix.contains(RECORD_TYPE_TEMPLATE) || self.suffix.contains(RECORD_TYPE_TEMPLATE)
    }

    fn drop_affix_extract_type(&self, name: &str) -> Option<(String, Option<RecordType>)> {
        let (mut prefix, mut suffix) = (self.prefix.clone(), self.suffix.clone());
        let is_prefix = self.suffix.is_empty();
        if self.type_in_affix() {
            for rtype in PREFIXED_TYPES {
                let label = type_label(rtype);
                let typed_prefix = prefix.replace(RECORD_TYPE_TEMPLATE, &label);
                let typed_suffix = suffix.replace(RECORD_TYPE_TEMPLATE, &label);
                if is_prefix && let Some(rest) = name.strip_prefix(typed_prefix.as_str()) {
                    return Some((rest.to_string(), Some(rtype)));
                }
                if !is_prefix && let Some(rest) = name.strip_suffix(typed_suffix.as_str()) {
                    return Some((rest.to_string(), Some(rtype)));
                }
            }
            // Old records, written before the template was in the affix.
            prefix = prefix.replace(RECORD_TYPE_TEMPLATE, "");
            suffix = suffix.replace(RECORD_TYPE_TEMPLATE, "");
        }
        let rest = if is_prefix {
            name.strip_prefix(prefix.as_str())
        } else {
            name.strip_suffix(suffix.as_str())
        };
        rest.map(type_from_default_position)
    }
}

/// `a-app.example.com` -> (`app.example.com`, A); no known type before the first `-`: the old format.
fn type_from_default_position(name: &str) -> (String, Option<RecordType>) {
    let first = name.split('-').next().unwrap_or(name);
    for rtype in PREFIXED_TYPES {
        if first == type_label(rtype) {
            let rest = name.strip_prefix(&format!("{first}-")).unwrap_or(name);
            return (rest.to_string(), Some(rtype));
        }
    }
    (name.to_string(), None)
}

fn type_label(rtype: RecordType) -> String {
    rtype.to_string().to_ascii_lowercase()
}

/// The ownership found in a zone: the labels of every registry TXT record, by the record they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    mapper: NameMapper,
    labels: HashMap<(String, Option<RecordType>), Labels>,
}

impl Ownership {
    /// An empty index reading names with `mapper`.
    pub fn new(mapper: NameMapper) -> Ownership {
        Ownership {
            mapper,
            labels: HashMap::new(),
        }
    }

    /// Reads one TXT record of the zone (its name and its text). Returns whether it is a registry record;
    /// a TXT that is not (no heritage, or a name without the mapper's affix) is someone else's data.
    pub fn insert(&mut self, txt_name: &str, text: &str) -> bool {
        let Ok(labels) = Labels::decode(text) else {
            return false;
        };
        let Some((name, rtype)) = self.mapper.to_record_name(txt_name) else {
            return false;
        };
        self.labels.insert((normalize(&name), rtype), labels);
        true
    }

    /// The labels that own `name`'s `rtype` record: the new format first, then the old one (not for AAAA,
    /// which never had the old format), with a leading `*` replaced as the mapper replaces it.
    pub fn labels_for(&self, name: &str, rtype: RecordType) -> Option<&Labels> {
        let name = match name.split_once('.') {
            Some(("*", rest)) if !self.mapper.wildcard_replacement.is_empty() => {
                format!("{}.{rest}", self.mapper.wildcard_replacement)
            }
            _ => name.to_string(),
        };
        let name = normalize(&name);
        let key = (name, Some(rtype));
        if let Some(labels) = self.labels.get(&key) {
            return Some(labels);
        }
        if rtype == RecordType::AAAA {
            return None;
        }
        self.labels.get(&(key.0, None))
    }

    /// How many registry records were read.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True if none were.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// Lower-case, without the trailing dot: the key both spellings of a name share.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    // The strings of external-dns's endpoint/labels_test.go.
    const FOO_AS_TEXT: &str =
        "heritage=external-dns,external-dns/owner=foo-owner,external-dns/resource=foo-resource";
    const BAR_TEXT: &str = "heritage=external-dns,,external-dns/owner=bar-owner,external-dns/resource=bar-resource,external-dns/new-key=bar-new-key,random=stuff,no-equal-sign,,";
    const NO_HERITAGE_TEXT: &str = "external-dns/owner=random-owner";
    const WRONG_HERITAGE_TEXT: &str = "heritage=mate,external-dns/owner=random-owner";
    const MULTIPLE_HERITAGE_TEXT: &str =
        "heritage=mate,heritage=external-dns,external-dns/owner=random-owner";
    // One of its fooAsTextEncrypted strings: encrypted records are not read (no heritage in clear).
    const FOO_ENCRYPTED: &str = "+lvP8q9KHJ6BS6O81i2Q6DLNdf2JSKy8j/gbZKviTZlGYj7q+yDoYMgkQ1hPn6urtGllM5bfFMcaaHto52otQtiOYrX8990J3kQqg4s47m3bH3Ejl8RSxSSuWJM3HJtPghQzYg0/LSOsdQ0=";

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        let mut labels = Labels::default();
        for (key, value) in pairs {
            labels.insert(key, value).expect("valid test label");
        }
        labels
    }

    #[test]
    fn encodes_like_external_dns() {
        let foo = labels(&[("owner", "foo-owner"), ("resource", "foo-resource")]);
        assert_eq!(foo.encode(), FOO_AS_TEXT);
        let owned = Labels::owned(
            "default",
            &Resource::parse("service/default/app").expect("resource"),
        )
        .expect("labels");
        assert_eq!(
            owned.encode(),
            "heritage=external-dns,external-dns/owner=default,external-dns/resource=service/default/app"
        );
        let mut with_nonce = foo.clone();
        with_nonce.insert(ENCRYPTION_NONCE_LABEL, "abc").expect("label");
        assert_eq!(
            with_nonce.encode(),
            FOO_AS_TEXT,
            "the nonce is never written in clear"
        );
    }

    #[test]
    fn decodes_like_external_dns() {
        type Want = Result<&'static [(&'static str, &'static str)], &'static str>;
        let foo: &[(&str, &str)] = &[("owner", "foo-owner"), ("resource", "foo-resource")];
        let cases: Vec<(&str, String, Want)> = vec![
            ("plain", FOO_AS_TEXT.to_string(), Ok(foo)),
            ("with quotes", format!("\"{FOO_AS_TEXT}\""), Ok(foo)),
            (
                "gibberish and empty tokens ignored, unknown keys kept",
                BAR_TEXT.to_string(),
                Ok(&[("new-key", "bar-new-key"), ("owner", "bar-owner"), ("resource", "bar-resource")]),
            ),
            ("no heritage", NO_HERITAGE_TEXT.to_string(), Err("NoHeritage")),
            ("wrong heritage", WRONG_HERITAGE_TEXT.to_string(), Err("ForeignHeritage")),
            ("a wrong heritage among several", MULTIPLE_HERITAGE_TEXT.to_string(), Err("ForeignHeritage")),
            ("encrypted", FOO_ENCRYPTED.to_string(), Err("NoHeritage")),
            (
                "parses regular owner value",
                "heritage=external-dns,external-dns/owner=team-platform,external-dns/resource=ingress/default/example"
                    .to_string(),
                Ok(&[("owner", "team-platform"), ("resource", "ingress/default/example")]),
            ),
            (
                "preserves equals in owner value",
                "heritage=external-dns,external-dns/owner=team=platform,external-dns/resource=ingress/default/example"
                    .to_string(),
                Ok(&[("owner", "team=platform"), ("resource", "ingress/default/example")]),
            ),
            (
                "registry_test.go: owner only",
                "\"heritage=external-dns,external-dns/owner=owner\"".to_string(),
                Ok(&[("owner", "owner")]),
            ),
            ("not a registry record at all", "random".to_string(), Err("NoHeritage")),
        ];
        for (case, text, want) in cases {
            let got = Labels::decode(&text);
            match want {
                Ok(pairs) => {
                    let got = got.unwrap_or_else(|err| panic!("{case}: {err}"));
                    let got: Vec<(&str, &str)> = got.iter().collect();
                    assert_eq!(got, pairs, "{case}");
                }
                Err(reason) => {
                    let err = got.expect_err(case);
                    assert_eq!(err.reason(), reason, "{case}: {err}");
                }
            }
        }
        let err = Labels::decode(WRONG_HERITAGE_TEXT).expect_err("foreign");
        assert_eq!(
            err.to_string(),
            "not an external-dns registry record: heritage=mate in \"heritage=mate,external-dns/owner=random-owner\""
        );
    }

    #[test]
    fn round_trips_through_txt_rdata_even_when_long() {
        let long_name = "n".repeat(253);
        let resource = Resource {
            kind: "service".into(),
            namespace: "team-a".into(),
            name: long_name,
        };
        let labels = Labels::owned("cluster-1", &resource).expect("labels");
        let txt = labels.to_txt();
        assert!(txt.txt_data.len() > 1, "split into 255-byte strings");
        assert!(txt.txt_data.iter().all(|part| part.len() <= 255));
        let back = Labels::decode_txt(&txt).expect("decodes");
        assert_eq!(back, labels);
        assert_eq!(back.resource().map(Resource::parse), Some(Ok(resource)));
        assert!(back.is_owned_by("cluster-1"));
        assert!(!back.is_owned_by("cluster-2"));
    }

    #[test]
    fn labels_and_resources_the_format_cannot_carry() {
        let mut labels = Labels::default();
        let err = labels.insert("owner", "a,b").expect_err("comma");
        assert_eq!(err.reason(), "BadRegistryLabel");
        assert_eq!(
            err.to_string(),
            "registry label \"owner\"=\"a,b\": a value cannot contain ',' or '\"' (the registry text is comma-separated)"
        );
        assert!(labels.insert("ow=ner", "x").is_err());
        assert!(labels.insert("", "x").is_err());
        for bad in [
            "service/default",
            "service//app",
            "/default/app",
            "service/default/a/b",
            "",
        ] {
            let err = Resource::parse(bad).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("registry resource {bad:?} is not <kind>/<namespace>/<name>")
            );
        }
        assert_eq!(
            Resource::parse("ingress/default/example")
                .map(|r| r.to_string())
                .as_deref(),
            Ok("ingress/default/example")
        );
        let err = NameMapper::new("pre-", "-suf", "").expect_err("both");
        assert_eq!(err.reason(), "RegistryPrefixAndSuffix");
    }

    #[test]
    fn txt_names_like_external_dns() {
        use RecordType::*;
        // external-dns registry/mapper/mapper_test.go (TestAffixNameMapper_ToTXTName) and docs/registry/txt.md.
        let cases: &[(&str, &str, &str, &str, RecordType, &str)] = &[
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                A,
                "a-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                AAAA,
                "aaaa-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                CNAME,
                "cname-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                NS,
                "ns-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                MX,
                "mx-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                SRV,
                "srv-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "2.49.168.192.in-addr.arpa",
                PTR,
                "ptr-2.49.168.192.in-addr.arpa",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                NAPTR,
                "naptr-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                DNAME,
                "dname-foo.example.com",
            ),
            (
                "%{record_type}-",
                "",
                "",
                "foo.example.com",
                TXT,
                "txt-foo.example.com",
            ),
            (
                "",
                "-%{record_type}",
                "",
                "foo.example.com",
                A,
                "foo-a.example.com",
            ),
            (
                "",
                "-%{record_type}",
                "",
                "foo.example.com",
                CNAME,
                "foo-cname.example.com",
            ),
            (
                "",
                "-%{record_type}",
                "",
                "foo.example.com",
                TXT,
                "foo-txt.example.com",
            ),
            ("txt-", "", "wild", "*.example.com", A, "txt-a-wild.example.com"),
            ("txt-", "", "wild", "*.example.com", MX, "txt-mx-wild.example.com"),
            (
                "txt-",
                "",
                "wild",
                "*.example.com",
                TXT,
                "txt-txt-wild.example.com",
            ),
            ("", "", "", "foo.example.com", A, "a-foo.example.com"),
            ("", "", "", "foo.example.com", AAAA, "aaaa-foo.example.com"),
            ("", "", "", "foo.example.com", CNAME, "cname-foo.example.com"),
            ("", "", "", "foo.example.com", NS, "ns-foo.example.com"),
            ("", "", "", "foo.example.com", MX, "mx-foo.example.com"),
            ("", "", "", "foo.example.com", SRV, "srv-foo.example.com"),
            (
                "",
                "",
                "",
                "2.49.168.192.in-addr.arpa",
                PTR,
                "ptr-2.49.168.192.in-addr.arpa",
            ),
            // docs/registry/txt.md: `--txt-prefix="%{record_type}-abc-."` at the apex and below it.
            (
                "%{record_type}-abc-.",
                "",
                "",
                "ex.com",
                CNAME,
                "cname-abc-.ex.com",
            ),
            (
                "%{record_type}-abc-.",
                "",
                "",
                "www.ex.com",
                CNAME,
                "cname-abc-.www.ex.com",
            ),
            // docs/registry/txt.md: `--txt-suffix="-.%{record_type}"`.
            (
                "",
                "-.%{record_type}",
                "",
                "www.ex.com",
                CNAME,
                "www-.cname.ex.com",
            ),
            // registry_test.go: prefix `txt.` puts the type after it.
            (
                "txt.",
                "",
                "",
                "dualstack.test-zone.example.org",
                AAAA,
                "txt.aaaa-dualstack.test-zone.example.org",
            ),
            (
                "txt.",
                "",
                "wc",
                "*.wildcard.test-zone.example.org",
                CNAME,
                "txt.cname-wc.wildcard.test-zone.example.org",
            ),
            // Ours: absolute names keep their dot; CAA has a prefix too; a wildcard without replacement stays.
            ("", "", "", "app.example.com.", A, "a-app.example.com."),
            ("", "", "", "example.com.", CAA, "caa-example.com."),
            ("", "", "", "*.apps.example.com.", A, "a-*.apps.example.com."),
        ];
        for (prefix, suffix, wildcard, name, rtype, want) in cases {
            let mapper = NameMapper::new(prefix, suffix, wildcard).expect("mapper");
            assert_eq!(
                mapper.to_txt_name(name, *rtype),
                *want,
                "prefix {prefix:?} suffix {suffix:?} {name} {rtype}"
            );
        }
    }

    #[test]
    fn record_names_from_txt_names_like_external_dns() {
        use RecordType::*;
        // external-dns registry/mapper/mapper_test.go (TestAffixNameMapper_ToEndpointName).
        /// prefix, suffix, TXT name, the record it stands for (no type: the old format).
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            Option<(&'static str, Option<RecordType>)>,
        );
        let cases: &[Case] = &[
            (
                "%{record_type}-",
                "",
                "a-foo.example.com",
                Some(("foo.example.com", Some(A))),
            ),
            (
                "%{record_type}-",
                "",
                "aaaa-foo.example.com",
                Some(("foo.example.com", Some(AAAA))),
            ),
            (
                "%{record_type}-",
                "",
                "cname-foo.example.com",
                Some(("foo.example.com", Some(CNAME))),
            ),
            (
                "%{record_type}-",
                "",
                "ns-foo.example.com",
                Some(("foo.example.com", Some(NS))),
            ),
            (
                "%{record_type}-",
                "",
                "mx-foo.example.com",
                Some(("foo.example.com", Some(MX))),
            ),
            (
                "%{record_type}-",
                "",
                "srv-foo.example.com",
                Some(("foo.example.com", Some(SRV))),
            ),
            (
                "%{record_type}-",
                "",
                "ptr-2.49.168.192.in-addr.arpa",
                Some(("2.49.168.192.in-addr.arpa", Some(PTR))),
            ),
            (
                "%{record_type}-",
                "",
                "naptr-foo.example.com",
                Some(("foo.example.com", Some(NAPTR))),
            ),
            (
                "%{record_type}-",
                "",
                "dname-foo.example.com",
                Some(("foo.example.com", Some(DNAME))),
            ),
            (
                "",
                "-%{record_type}",
                "foo-a.example.com",
                Some(("foo.example.com", Some(A))),
            ),
            (
                "",
                "-%{record_type}",
                "foo-cname.example.com",
                Some(("foo.example.com", Some(CNAME))),
            ),
            (
                "",
                ".foo.bar",
                "a-example.foo.bar.com",
                Some(("example.com", Some(A))),
            ),
            ("", ".foo.bar", "a-example.foo.bar", Some(("example", Some(A)))),
            ("", ".foo.bar", "a-example.foo", None),
            ("", "", "a-foo.example.com", Some(("foo.example.com", Some(A)))),
            (
                "",
                "",
                "aaaa-foo.example.com",
                Some(("foo.example.com", Some(AAAA))),
            ),
            (
                "",
                "",
                "cname-foo.example.com",
                Some(("foo.example.com", Some(CNAME))),
            ),
            ("", "", "ns-foo.example.com", Some(("foo.example.com", Some(NS)))),
            ("", "", "mx-foo.example.com", Some(("foo.example.com", Some(MX)))),
            (
                "",
                "",
                "srv-foo.example.com",
                Some(("foo.example.com", Some(SRV))),
            ),
            (
                "",
                "",
                "ptr-2.49.168.192.in-addr.arpa",
                Some(("2.49.168.192.in-addr.arpa", Some(PTR))),
            ),
            (
                "",
                "",
                "naptr-foo.example.com",
                Some(("foo.example.com", Some(NAPTR))),
            ),
            (
                "",
                "",
                "txt-foo.example.com",
                Some(("foo.example.com", Some(TXT))),
            ),
            // The old format: no type in the name.
            ("", "", "foo.example.com", Some(("foo.example.com", None))),
            (
                "txt.",
                "",
                "txt.bar.test-zone.example.org",
                Some(("bar.test-zone.example.org", None)),
            ),
            (
                "txt.",
                "",
                "TxT.tar.test-zone.example.org",
                Some(("tar.test-zone.example.org", None)),
            ),
            (
                "txt.",
                "",
                "txt.aaaa-dualstack.test-zone.example.org",
                Some(("dualstack.test-zone.example.org", Some(AAAA))),
            ),
            (
                "txt.",
                "",
                "txt._sip._udp.sip1.test-zone.example.org",
                Some(("_sip._udp.sip1.test-zone.example.org", None)),
            ),
            // A name without the prefix is not a registry name.
            ("txt.", "", "foobar.test-zone.example.org", None),
            ("", "", "caa-example.com.", Some(("example.com.", Some(CAA)))),
        ];
        for (prefix, suffix, txt_name, want) in cases {
            let mapper = NameMapper::new(prefix, suffix, "").expect("mapper");
            let got = mapper.to_record_name(txt_name);
            let want = want.map(|(name, rtype)| (name.to_string(), rtype));
            assert_eq!(got, want, "prefix {prefix:?} suffix {suffix:?} {txt_name}");
        }
    }

    #[test]
    fn every_type_round_trips_through_its_txt_name() {
        for (prefix, suffix) in [
            ("", ""),
            ("%{record_type}-", ""),
            ("", "-%{record_type}"),
            ("txt.", ""),
            ("", "-txt"),
        ] {
            let mapper = NameMapper::new(prefix, suffix, "").expect("mapper");
            for rtype in PREFIXED_TYPES {
                let txt = mapper.to_txt_name("app.example.com.", rtype);
                assert_eq!(
                    mapper.to_record_name(&txt),
                    Some(("app.example.com.".to_string(), Some(rtype))),
                    "prefix {prefix:?} suffix {suffix:?} {rtype}: {txt}"
                );
            }
        }
    }

    #[test]
    fn ownership_of_a_zone_like_external_dns_reads_it() {
        // registry_test.go testTXTRegistryRecordsPrefixed: prefix `txt.`, wildcard replacement `wc`.
        let owned = "\"heritage=external-dns,external-dns/owner=owner\"";
        let owned_2 = "\"heritage=external-dns,external-dns/owner=owner-2\"";
        let mut ownership = Ownership::new(NameMapper::new("txt.", "", "wc").expect("mapper"));
        let txt_records = [
            ("txt.bar.test-zone.example.org", owned, true),
            ("qux.test-zone.example.org", "random", false),
            ("TxT.tar.test-zone.example.org", owned_2, true),
            ("foobar.test-zone.example.org", owned, false),
            ("txt.wc.wildcard.test-zone.example.org", owned, true),
            ("txt.dualstack.test-zone.example.org", owned, true),
            ("txt.aaaa-dualstack.test-zone.example.org", owned_2, true),
            ("txt.mx-mail.test-zone.example.org", owned, true),
            ("txt._sip._udp.sip1.test-zone.example.org", owned, true),
            ("txt.sip1.test-zone.example.org", owned, true),
        ];
        for (name, text, registry) in txt_records {
            assert_eq!(ownership.insert(name, text), registry, "{name}");
        }
        assert_eq!(ownership.len(), 8);
        // The expected owners of that test.
        let cases: &[(&str, RecordType, Option<&str>)] = &[
            ("foo.test-zone.example.org", RecordType::CNAME, None),
            ("bar.test-zone.example.org", RecordType::CNAME, Some("owner")),
            ("txt.bar.test-zone.example.org", RecordType::CNAME, None),
            ("qux.test-zone.example.org", RecordType::TXT, None),
            ("tar.test-zone.example.org", RecordType::CNAME, Some("owner-2")),
            ("foobar.test-zone.example.org", RecordType::CNAME, None),
            (
                "*.wildcard.test-zone.example.org",
                RecordType::CNAME,
                Some("owner"),
            ),
            ("dualstack.test-zone.example.org", RecordType::A, Some("owner")),
            (
                "dualstack.test-zone.example.org",
                RecordType::AAAA,
                Some("owner-2"),
            ),
            ("mail.test-zone.example.org", RecordType::MX, Some("owner")),
            (
                "_sip._udp.sip1.test-zone.example.org",
                RecordType::SRV,
                Some("owner"),
            ),
            ("sip1.test-zone.example.org", RecordType::NAPTR, Some("owner")),
            // Same names, absolute and in another case.
            ("Bar.Test-Zone.Example.Org.", RecordType::CNAME, Some("owner")),
        ];
        for (name, rtype, owner) in cases {
            assert_eq!(
                ownership.labels_for(name, *rtype).and_then(Labels::owner),
                *owner,
                "{name} {rtype}"
            );
        }
    }

    #[test]
    fn new_format_wins_and_aaaa_never_reads_the_old_one() {
        let mut ownership = Ownership::new(NameMapper::default());
        assert!(ownership.insert("app.example.com.", "heritage=external-dns,external-dns/owner=old"));
        assert!(ownership.insert(
            "a-app.example.com.",
            "heritage=external-dns,external-dns/owner=new"
        ));
        assert_eq!(
            ownership
                .labels_for("app.example.com.", RecordType::A)
                .and_then(Labels::owner),
            Some("new")
        );
        assert_eq!(
            ownership
                .labels_for("app.example.com.", RecordType::CNAME)
                .and_then(Labels::owner),
            Some("old")
        );
        assert_eq!(ownership.labels_for("app.example.com.", RecordType::AAAA), None);
        assert!(!ownership.is_empty());
    }
}
