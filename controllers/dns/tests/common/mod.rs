//! Shared by ferrite-dns's test binaries: free ports, peer binaries, TSIG secrets as BIND writes them
//! (ferrite-e2e's, which its `named` helper uses too).
#![allow(dead_code)]

use std::path::PathBuf;

/// A port free for both TCP and UDP on 127.0.0.1.
pub fn free_port() -> u16 {
    ferrite_e2e::pebble::free_tcp_udp_port().unwrap_or_else(|e| panic!("{e:#}"))
}

/// Standard base64, as `tsig-keygen` prints a secret.
pub use ferrite_e2e::named::base64;

/// The path of a peer binary (named, dig, knotd), or a panic saying how to install it.
pub fn require(tool: &str) -> PathBuf {
    ferrite_e2e::named::require(tool).unwrap_or_else(|e| panic!("{e:#}"))
}
