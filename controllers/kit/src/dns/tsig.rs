//! TSIG (RFC 8945): algorithms, keys, finding the TSIG record in a raw message, the bytes a MAC
//! covers, and signing a message already encoded. Shared by the UPDATE client ([`super::update`]),
//! ferrite-dns's RFC2136 provider and zone transfers, and ferrite-certs's DNS-01 RFC2136 solver.
//!
//! hickory-proto parses and writes the TSIG record; the MAC is computed with aws-lc-rs over the message
//! bytes exactly as they were sent or received (re-encoding a parsed message could compress names
//! differently and break the MAC).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use hickory_proto::op::Message;
use hickory_proto::rr::rdata::tsig::{
    TSIG, TsigAlgorithm as HickoryTsigAlgorithm, TsigError, make_tsig_record,
};
use hickory_proto::rr::{Name, RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};

use super::update::UpdateError;

/// A TSIG algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TsigAlgorithm {
    /// hmac-sha1 (accepted for existing keys; RFC 8945 says SHA-256 should be used).
    HmacSha1,
    /// hmac-sha256, the default (`tsig-keygen`'s default too).
    #[default]
    HmacSha256,
    /// hmac-sha384.
    HmacSha384,
    /// hmac-sha512.
    HmacSha512,
}

impl TsigAlgorithm {
    /// Parses an algorithm name as BIND writes it (`hmac-sha256`, `hmac-sha512`, `hmac-sha384`,
    /// `hmac-sha1`) or as cert-manager does (`HMACSHA256`, ...): case-insensitive, a trailing `.`
    /// allowed.
    pub fn parse(name: &str) -> Result<Self, UpdateError> {
        let normal = name
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase()
            .replace('-', "");
        match normal.as_str() {
            "hmacsha1" => Ok(Self::HmacSha1),
            "hmacsha256" => Ok(Self::HmacSha256),
            "hmacsha384" => Ok(Self::HmacSha384),
            "hmacsha512" => Ok(Self::HmacSha512),
            _ => Err(UpdateError::Invalid(format!(
                "TSIG algorithm {:?} is not supported (supported: hmac-sha256, hmac-sha512, hmac-sha384, hmac-sha1)",
                name.trim()
            ))),
        }
    }

    /// The algorithm's name as BIND writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha1 => "hmac-sha1",
            Self::HmacSha256 => "hmac-sha256",
            Self::HmacSha384 => "hmac-sha384",
            Self::HmacSha512 => "hmac-sha512",
        }
    }

    /// The aws-lc-rs HMAC algorithm.
    pub fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::HmacSha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::HmacSha256 => hmac::HMAC_SHA256,
            Self::HmacSha384 => hmac::HMAC_SHA384,
            Self::HmacSha512 => hmac::HMAC_SHA512,
        }
    }

    /// hickory-proto's name for it (in the TSIG record).
    pub fn hickory(self) -> HickoryTsigAlgorithm {
        match self {
            Self::HmacSha1 => HickoryTsigAlgorithm::HmacSha1,
            Self::HmacSha256 => HickoryTsigAlgorithm::HmacSha256,
            Self::HmacSha384 => HickoryTsigAlgorithm::HmacSha384,
            Self::HmacSha512 => HickoryTsigAlgorithm::HmacSha512,
        }
    }
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The TSIG fudge we sign with: the clock difference the other side accepts (RFC 8945 recommends 300 s).
pub const FUDGE: u16 = 300;

/// A TSIG key: name, algorithm, secret (the bytes, not base64). `Debug` does not print the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    name: Name,
    algorithm: TsigAlgorithm,
    secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// A key named `name` (as in named.conf's `key "name"`; a trailing `.` is optional).
    pub fn new(name: &str, algorithm: TsigAlgorithm, secret: &[u8]) -> Result<TsigKey, String> {
        let trimmed = name.trim();
        if trimmed.is_empty() {
            return Err("TSIG key name must not be empty".to_string());
        }
        let mut parsed = Name::from_ascii(trimmed).map_err(|e| format!("TSIG key name {name:?}: {e}"))?;
        parsed.set_fqdn(true);
        if secret.is_empty() {
            return Err(format!("TSIG key {trimmed}: the secret is empty"));
        }
        Ok(TsigKey {
            name: parsed.to_lowercase(),
            algorithm,
            secret: secret.to_vec(),
        })
    }

    /// The key's name (lowercase, absolute).
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> TsigAlgorithm {
        self.algorithm
    }

    /// The key as aws-lc-rs signs with it.
    pub fn hmac_key(&self) -> hmac::Key {
        hmac::Key::new(self.algorithm.hmac(), &self.secret)
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The TSIG record of a message: hickory-proto without its dnssec features leaves it, as the last record,
/// among the additionals.
pub fn tsig_of(message: &Message) -> Option<&TSIG> {
    if let Some(sig) = &message.signature {
        return Some(&sig.data);
    }
    match message.additionals.last().map(|r| &r.data) {
        Some(RData::TSIG(t)) => Some(t),
        _ => None,
    }
}

/// The TSIG record of a message with its owner (the key name).
pub fn tsig_record_of(message: &Message) -> Option<(Name, TSIG)> {
    if let Some(sig) = &message.signature {
        return Some((sig.name.clone(), sig.data.clone()));
    }
    match message.additionals.last() {
        Some(Record {
            name,
            data: RData::TSIG(t),
            ..
        }) => Some((name.clone(), t.clone())),
        _ => None,
    }
}

/// The offset of the last RR of the additional section (the TSIG) in a raw message.
pub fn tsig_offset(raw: &[u8]) -> Option<usize> {
    if raw.len() < 12 {
        return None;
    }
    let count = |i: usize| usize::from(u16::from_be_bytes([raw[i], raw[i + 1]]));
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if ar == 0 {
        return None;
    }
    let mut pos = 12;
    for _ in 0..qd {
        pos = skip_name(raw, pos)? + 4;
    }
    for _ in 0..(an + ns + ar - 1) {
        pos = skip_name(raw, pos)?;
        let rdlen = usize::from(u16::from_be_bytes([*raw.get(pos + 8)?, *raw.get(pos + 9)?]));
        pos += 10 + rdlen;
    }
    (pos < raw.len()).then_some(pos)
}

/// The offset after the (possibly compressed) name at `pos`; `None` when it runs off the message.
pub fn skip_name(raw: &[u8], mut pos: usize) -> Option<usize> {
    // At most 128 labels in a name.
    for _ in 0..128 {
        let len = *raw.get(pos)?;
        match len {
            0 => return Some(pos + 1),
            l if l & 0xc0 == 0xc0 => {
                raw.get(pos + 1)?;
                return Some(pos + 2);
            }
            l if l & 0xc0 == 0 => pos += 1 + usize::from(l),
            _ => return None,
        }
    }
    None
}

/// The bytes a received message's MAC covers (RFC 8945 4.3.1-4.3.3 and 5.3.1): the prior MAC (its
/// length and bytes, for an answer or a later message of a transfer), the messages left unsigned
/// since, the message itself up to its TSIG with the original id and ARCOUNT less one, then the full
/// TSIG variables (`first`) or only the timers.
pub fn received_tbs(
    raw: &[u8],
    tsig_start: usize,
    tsig: &TSIG,
    key_name: &Name,
    prior_mac: Option<&[u8]>,
    unsigned: &[u8],
    first: bool,
) -> Result<Vec<u8>, String> {
    let mut tbs = Vec::with_capacity(raw.len() + unsigned.len() + 128);
    if let Some(mac) = prior_mac {
        let len = u16::try_from(mac.len()).map_err(|_| "prior MAC longer than 65535 bytes".to_string())?;
        tbs.extend_from_slice(&len.to_be_bytes());
        tbs.extend_from_slice(mac);
    }
    tbs.extend_from_slice(unsigned);
    let mut header = [0u8; 12];
    header.copy_from_slice(raw.get(..12).ok_or("message shorter than a header")?);
    header[0..2].copy_from_slice(&tsig.oid.to_be_bytes());
    let arcount = u16::from_be_bytes([header[10], header[11]]).saturating_sub(1);
    header[10..12].copy_from_slice(&arcount.to_be_bytes());
    tbs.extend_from_slice(&header);
    tbs.extend_from_slice(raw.get(12..tsig_start).ok_or("TSIG offset out of the message")?);
    if first {
        let mut vars = Vec::with_capacity(128);
        let mut encoder = BinEncoder::new(&mut vars);
        tsig.emit_tsig_for_mac(&mut encoder, key_name)
            .map_err(|e| format!("cannot encode the TSIG variables: {e}"))?;
        tbs.extend_from_slice(&vars);
    } else {
        tbs.extend_from_slice(&((tsig.time >> 32) as u16).to_be_bytes());
        tbs.extend_from_slice(&(tsig.time as u32).to_be_bytes());
        tbs.extend_from_slice(&tsig.fudge.to_be_bytes());
    }
    Ok(tbs)
}

/// Signs an encoded request (or NOTIFY) with `key` (RFC 8945 4.3): appends the TSIG record with the
/// message's own id and returns the MAC, which the answer's signature covers.
pub fn sign_request(message: &mut Vec<u8>, key: &TsigKey) -> Result<Vec<u8>, String> {
    let id = message
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or("message shorter than a header")?;
    sign_encoded(message, SignWith::key(key, None, id))
}

/// How a response is signed.
#[derive(Debug)]
pub struct SignWith<'a> {
    /// The key's name (the TSIG record's owner).
    pub key_name: &'a Name,
    /// The algorithm.
    pub algorithm: HickoryTsigAlgorithm,
    /// The key's MAC key; `None`: unsigned (BADKEY and BADSIG answers carry no MAC, RFC 8945 5.3.2).
    pub hmac: Option<hmac::Key>,
    /// The request's MAC (first message) or the previous message's MAC (later messages of a transfer).
    pub prior_mac: Option<&'a [u8]>,
    /// The full TSIG variables (a single response or the first of a transfer) or only the timers.
    pub first: bool,
    /// The request's original id.
    pub oid: u16,
    /// The TSIG error to send (BADKEY, BADSIG, BADTIME answers).
    pub error: Option<TsigError>,
    /// Other data (the server's time in a BADTIME answer).
    pub other: Vec<u8>,
}

impl<'a> SignWith<'a> {
    /// Signs with `key`: the first message of an answer (or a request when `prior_mac` is `None`).
    pub fn key(key: &'a TsigKey, prior_mac: Option<&'a [u8]>, oid: u16) -> SignWith<'a> {
        SignWith {
            key_name: &key.name,
            algorithm: key.algorithm.hickory(),
            hmac: Some(key.hmac_key()),
            prior_mac,
            first: true,
            oid,
            error: None,
            other: Vec::new(),
        }
    }
}

/// Appends a TSIG record to the encoded message `out` (RFC 8945 4.3 and 5.3) and returns its MAC.
pub fn sign_encoded(out: &mut Vec<u8>, with: SignWith<'_>) -> Result<Vec<u8>, String> {
    if out.len() < 12 {
        return Err("message shorter than a header".to_string());
    }
    let pre = TSIG::new(
        with.algorithm.clone(),
        unix_now(),
        FUDGE,
        Vec::new(),
        with.oid,
        with.error,
        with.other,
    );
    let mac = if let Some(key) = &with.hmac {
        let mut tbs = Vec::with_capacity(out.len() + 128);
        if let Some(prior) = with.prior_mac {
            let len = u16::try_from(prior.len()).map_err(|_| "prior MAC too long".to_string())?;
            tbs.extend_from_slice(&len.to_be_bytes());
            tbs.extend_from_slice(prior);
        }
        tbs.extend_from_slice(out);
        if with.first {
            let mut vars = Vec::with_capacity(128);
            let mut encoder = BinEncoder::new(&mut vars);
            pre.emit_tsig_for_mac(&mut encoder, with.key_name)
                .map_err(|e| format!("cannot encode the TSIG variables: {e}"))?;
            tbs.extend_from_slice(&vars);
        } else {
            tbs.extend_from_slice(&((pre.time >> 32) as u16).to_be_bytes());
            tbs.extend_from_slice(&(pre.time as u32).to_be_bytes());
            tbs.extend_from_slice(&pre.fudge.to_be_bytes());
        }
        hmac::sign(key, &tbs).as_ref().to_vec()
    } else {
        Vec::new()
    };
    let record = make_tsig_record(with.key_name.clone(), pre.set_mac(mac.clone()));
    let mut tail = Vec::with_capacity(128);
    {
        let mut encoder = BinEncoder::new(&mut tail);
        record
            .emit(&mut encoder)
            .map_err(|e| format!("cannot encode the TSIG record: {e}"))?;
    }
    let arcount = u16::from_be_bytes([out[10], out[11]])
        .checked_add(1)
        .ok_or("too many additional records")?;
    out[10..12].copy_from_slice(&arcount.to_be_bytes());
    out.extend_from_slice(&tail);
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_and_debug_hides_the_secret() {
        let key = TsigKey::new("Transfer-Key", TsigAlgorithm::HmacSha256, b"secret").unwrap();
        assert_eq!(key.name().to_string(), "transfer-key.");
        assert!(!format!("{key:?}").contains("secret\""));
        assert!(format!("{key:?}").contains("redacted"));
        assert!(TsigKey::new(" ", TsigAlgorithm::HmacSha256, b"s").is_err());
        assert!(TsigKey::new("k", TsigAlgorithm::HmacSha256, b"").is_err());
    }

    #[test]
    fn a_signed_message_verifies_and_a_changed_one_does_not() {
        let key = TsigKey::new("k", TsigAlgorithm::HmacSha512, b"0123456789").unwrap();
        let mut message = Message::query();
        message.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("example.").unwrap(),
            hickory_proto::rr::RecordType::SOA,
        ));
        let mut raw = message.to_vec().unwrap();
        let id = message.metadata.id;
        let mac = sign_encoded(&mut raw, SignWith::key(&key, None, id)).unwrap();
        let parsed = Message::from_vec(&raw).unwrap();
        let (name, tsig) = tsig_record_of(&parsed).unwrap();
        assert_eq!(tsig.mac, mac);
        let start = tsig_offset(&raw).unwrap();
        let tbs = received_tbs(&raw, start, &tsig, &name, None, &[], true).unwrap();
        assert!(hmac::verify(&key.hmac_key(), &tbs, &tsig.mac).is_ok());
        raw[13] ^= 1;
        let tbs = received_tbs(&raw, start, &tsig, &name, None, &[], true).unwrap();
        assert!(hmac::verify(&key.hmac_key(), &tbs, &tsig.mac).is_err());
    }

    #[test]
    fn tsig_offset_skips_names_and_pointers() {
        assert_eq!(tsig_offset(&[0; 11]), None);
        assert_eq!(tsig_offset(&[0; 12]), None, "no additional");
        // Truncated message with one additional: no room for it.
        let mut m = vec![0u8; 12];
        m[11] = 1;
        assert_eq!(tsig_offset(&m), None);
        m.push(0);
        assert_eq!(tsig_offset(&m), Some(12));
        assert_eq!(skip_name(&[3, b'a', b'b', b'c', 0xc0, 12], 0), Some(6));
        assert_eq!(skip_name(&[0x80], 0), None);
    }
}
