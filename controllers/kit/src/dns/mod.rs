//! DNS pieces two controllers need (feature `dns`): ferrite-dns (its RFC2136 provider and zone
//! transfers) and ferrite-certs (DNS-01 TXT records written with RFC2136).
//!
//! ```text
//!   tsig    TsigAlgorithm, TsigKey, the RFC 8945 MAC rules over raw message bytes
//!   update  UpdateClient: one TSIG-signed RFC 2136 UPDATE (UDP when small, else TCP), the signed
//!           answer verified, typed UpdateError; and the exchange pieces (sign, verify, frame,
//!           rcode mapping) ferrite-dns's batching client and AXFR reader are built on
//!   query   unsigned queries: the zone a name is in (its SOA), the TXT values at a name
//! ```
//!
//! hickory-proto builds and parses the messages; the MACs are aws-lc-rs's (hmac-sha1/256/384/512, as
//! BIND keys come). Nothing here knows Kubernetes.

pub mod query;
pub mod tsig;
pub mod update;
