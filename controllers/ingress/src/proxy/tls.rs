//! TLS for the HTTPS listener: rustls on the process's crypto provider (aws-lc-rs), TLS 1.2 and 1.3
//! only, ALPN `h2`, `http/1.1`, `http/1.0` (in that order of preference; a client offering only
//! `http/1.0`, as `curl --http1.0` does, would otherwise fail the handshake), and a certificate
//! resolver that reads the current snapshot on every handshake, so a new certificate is served from
//! the next handshake on without a restart.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, version};

use super::SharedSnapshot;

struct SnapshotResolver(Arc<SharedSnapshot>);

impl fmt::Debug for SnapshotResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SnapshotResolver")
    }
}

impl ResolvesServerCert for SnapshotResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI (an IP address, an old client) gets the default certificate.
        Some(self.0.load().certificate_for(hello.server_name()))
    }
}

/// The HTTPS listener's rustls configuration, resolving certificates from `snapshot`.
pub fn server_config(snapshot: Arc<SharedSnapshot>) -> Result<ServerConfig, rustls::Error> {
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&version::TLS13, &version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SnapshotResolver(snapshot)));
    // nginx selects from `h2, http/1.1, http/1.0`; rustls refuses a ClientHello whose ALPN list has
    // no overlap (`no_application_protocol`), so HTTP/1.0 must be listed for HTTP/1.0 clients.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    Ok(config)
}
