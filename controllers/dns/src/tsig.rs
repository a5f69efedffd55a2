//! TSIG (RFC 8945) keys and MAC rules, shared by the RFC2136 client ([`crate::rfc2136`]) and the embedded
//! server's zone transfers ([`crate::transfer`]). They live in ferrite-kit (`ferrite_kit::dns::tsig`, so
//! ferrite-certs signs its DNS-01 updates with the same code); this module re-exports them under their
//! old path.

pub use ferrite_kit::dns::tsig::*;
