//! Shared by ferrite-dns's test binaries: free ports, peer binaries, TSIG secrets as BIND writes them.
#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
};

/// A port free for both TCP and UDP on 127.0.0.1.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = tcp.local_addr().expect("local address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1");
}

/// Standard base64, as `tsig-keygen` prints a secret.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// The path of a peer binary (named, dig, knotd), or a panic saying how to install it.
pub fn require(tool: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{tool} is not installed; this test runs real DNS peers: apt-get install -y bind9 bind9-dnsutils knot \
         (or run e2e/scripts/install-deps.sh)"
    );
}
