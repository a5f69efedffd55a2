//! Pebble (Let's Encrypt's test ACME CA) and pebble-challtestsrv (its DNS), started on 127.0.0.1 for
//! component tests and benchmarks.
//!
//! ```ignore
//! let pebble = Pebble::start(PebbleOptions { http_port: 5002, ..Default::default() })?;
//! pebble.directory_url();          // https://127.0.0.1:<port>/dir, served with a cert from ca_pem()
//! pebble.set_txt("_acme-challenge.example.test", "value")?;  // DNS-01 answers
//! let roots = pebble.root_pem()?;  // the issuing root (management /roots/0), for chain checks
//! ```
//!
//! Pebble runs in strict mode with `PEBBLE_VA_NOSLEEP=1`, `PEBBLE_AUTHZREUSE=0` and its default 5%
//! nonce rejection (a client must retry `badNonce`). Every name resolves (through challtestsrv) to
//! 127.0.0.1 and has no AAAA, so Pebble's VA validates HTTP-01 at `127.0.0.1:<http_port>`, which
//! the test serves. With `PebbleOptions::dns_server` Pebble resolves through that server instead (a
//! test `named`, ferrite-dns), for DNS-01 against the real thing. Both processes run under
//! [`Supervised`] and are stopped on [`Pebble::stop`], on Drop, or when the test process exits.

use crate::process::{Supervised, remove_after_exit, tail};
use anyhow::{Context, Result, bail};
use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

/// What to start.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// The port Pebble's VA connects to for HTTP-01 (on 127.0.0.1); 0 picks a free one.
    pub http_port: u16,
    /// The port Pebble's VA connects to for TLS-ALPN-01; 0 picks a free one.
    pub tls_port: u16,
    /// Lifetime of issued certificates (`certificateValidityPeriod`); None keeps Pebble's default
    /// (about 5 years).
    pub certificate_validity: Option<Duration>,
    /// External account binding required, with this key: (key id, HMAC key in base64url).
    pub eab: Option<(String, String)>,
    /// `PEBBLE_WFE_NONCEREJECT`; None keeps Pebble's default (5%).
    pub nonce_reject_percent: Option<u8>,
    /// The DNS server Pebble resolves with (`-dnsserver`), e.g. a test `named` or ferrite-dns's
    /// embedded server for DNS-01; None: challtestsrv (every name 127.0.0.1, TXT from `set_txt`).
    /// challtestsrv runs either way.
    pub dns_server: Option<SocketAddr>,
}

/// A running Pebble and pebble-challtestsrv.
#[derive(Debug)]
pub struct Pebble {
    pebble: Supervised,
    challtestsrv: Supervised,
    listen: SocketAddr,
    management: SocketAddr,
    challtest_management: SocketAddr,
    dns: SocketAddr,
    resolver: SocketAddr,
    http_port: u16,
    tls_port: u16,
    ca_pem: String,
    tls: Arc<rustls::ClientConfig>,
    eab: Option<(String, String)>,
    dir: tempfile::TempDir,
}

/// A port free for both TCP and UDP on 127.0.0.1 (bound and released).
pub fn free_tcp_udp_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both TCP and UDP on 127.0.0.1")
}

fn binary(env: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} is not installed (set {env} or: apt-get install -y pebble, or run e2e/scripts/install-deps.sh)"
    )
}

/// A test CA and a leaf for 127.0.0.1 and localhost signed by it: (CA PEM, leaf PEM, leaf key PEM).
fn tls_material() -> Result<(String, String, String)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "ferrite test Pebble HTTPS CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
    leaf.distinguished_name.push(DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &ca)?;
    Ok((ca.pem(), leaf.pem(), key.serialize_pem()))
}

fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("parsing the test CA")?)?;
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Splits an HTTP/1.0 response into status code and body.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>)> {
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the HTTP header")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status code")?;
    Ok((code, raw[head_end + 4..].to_vec()))
}

fn request_bytes(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// One HTTPS request over rustls, bounded to 5 s.
fn https(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>)> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn = rustls::ClientConnection::new(tls.clone(), name)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    s.write_all(&request_bytes("GET", path, b""))?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // Go closes without close_notify after an HTTP/1.0 response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e).with_context(|| format!("GET https://{addr}{path}")),
    }
    parse_response(&raw)
}

/// One plain HTTP request, bounded to 5 s.
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&request_bytes(method, path, body))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("{method} http://{addr}{path}"))?;
    parse_response(&raw)
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Pebble {
    /// Writes the config, starts challtestsrv and Pebble, and waits (at most 20 s) until Pebble's
    /// directory answers over HTTPS.
    pub fn start(opts: PebbleOptions) -> Result<Self> {
        let pebble_bin = binary("PEBBLE", "pebble")?;
        let challtestsrv_bin = binary("CHALLTESTSRV", "pebble-challtestsrv")?;
        let dir = tempfile::Builder::new().prefix("ferrite-pebble").tempdir()?;
        remove_after_exit(dir.path())?;

        let (ca_pem, cert_pem, key_pem) = tls_material()?;
        std::fs::write(dir.path().join("ca.pem"), &ca_pem)?;
        std::fs::write(dir.path().join("cert.pem"), &cert_pem)?;
        std::fs::write(dir.path().join("key.pem"), &key_pem)?;

        let port = |p: u16| -> Result<u16> {
            if p == 0 {
                crate::process::free_port()
            } else {
                Ok(p)
            }
        };
        let local = |p: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, p));
        let listen = local(crate::process::free_port()?);
        let management = local(crate::process::free_port()?);
        let challtest_management = local(crate::process::free_port()?);
        let dns = local(free_tcp_udp_port()?);
        let http_port = port(opts.http_port)?;
        let tls_port = port(opts.tls_port)?;

        let mut config = serde_json::json!({
            "listenAddress": listen.to_string(),
            "managementListenAddress": management.to_string(),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": opts.eab.is_some(),
        });
        if let Some((kid, hmac)) = &opts.eab {
            config["externalAccountMACKeys"] = serde_json::json!({ kid: hmac });
        }
        if let Some(validity) = opts.certificate_validity {
            config["certificateValidityPeriod"] = validity.as_secs().max(1).into();
        }
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&serde_json::json!({ "pebble": config }))?,
        )?;

        let challtestsrv = Supervised::spawn(
            "pebble-challtestsrv",
            &challtestsrv_bin,
            &[
                "-management".into(),
                challtest_management.to_string(),
                "-dns01".into(),
                dns.to_string(),
                "-defaultIPv4".into(),
                "127.0.0.1".into(),
                "-defaultIPv6".into(),
                String::new(),
                "-http01".into(),
                String::new(),
                "-https01".into(),
                String::new(),
                "-tlsalpn01".into(),
                String::new(),
            ],
            &[],
            &dir.path().join("challtestsrv.log"),
        )?;

        let reject = opts.nonce_reject_percent.map(|p| p.to_string());
        let mut env = vec![("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_AUTHZREUSE", "0")];
        if let Some(r) = &reject {
            env.push(("PEBBLE_WFE_NONCEREJECT", r));
        }
        let pebble = Supervised::spawn(
            "pebble",
            &pebble_bin,
            &[
                "-config".into(),
                config_path.display().to_string(),
                "-dnsserver".into(),
                opts.dns_server.unwrap_or(dns).to_string(),
                "-strict".into(),
            ],
            &env,
            &dir.path().join("pebble.log"),
        )?;

        let tls = client_config(&ca_pem)?;
        let mut me = Self {
            pebble,
            challtestsrv,
            listen,
            management,
            challtest_management,
            dns,
            resolver: opts.dns_server.unwrap_or(dns),
            http_port,
            tls_port,
            ca_pem,
            tls,
            eab: opts.eab,
            dir,
        };
        me.wait_ready(Duration::from_secs(20))?;
        Ok(me)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let mut last;
        loop {
            if !self.pebble.is_running() || !self.challtestsrv.is_running() {
                bail!(
                    "Pebble exited while starting:\n{}\n--- challtestsrv:\n{}",
                    self.pebble.log_tail(30),
                    self.challtestsrv.log_tail(30)
                );
            }
            let challtest_up =
                TcpStream::connect_timeout(&self.challtest_management, Duration::from_millis(200)).is_ok();
            match https(&self.tls, self.listen, "/dir") {
                Ok((200, _)) if challtest_up => return Ok(()),
                Ok((code, _)) => last = format!("directory answered {code}, challtestsrv up: {challtest_up}"),
                Err(e) => last = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                bail!(
                    "Pebble not ready after {limit:?} ({last}):\n{}",
                    self.pebble.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The address of Pebble's ACME listener.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// PEM of the CA that signed Pebble's HTTPS certificate (an Issuer's `caBundle`).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Path of [`Pebble::ca_pem`] on disk (for lego/certbot).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root that issues Pebble's certificates (management `/roots/0`); Pebble makes a new one
    /// at every start.
    pub fn root_pem(&self) -> Result<String> {
        let (code, body) = https(&self.tls, self.management, "/roots/0")?;
        if code != 200 {
            bail!("GET /roots/0 answered {code}");
        }
        Ok(String::from_utf8(body)?)
    }

    /// The port Pebble's VA connects to (on 127.0.0.1) for HTTP-01.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The port Pebble's VA connects to for TLS-ALPN-01.
    pub fn tls_port(&self) -> u16 {
        self.tls_port
    }

    /// challtestsrv's DNS server (UDP and TCP), which Pebble resolves names with unless
    /// [`PebbleOptions::dns_server`] names another.
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns
    }

    /// The DNS server Pebble resolves names with (`-dnsserver`): [`PebbleOptions::dns_server`] or
    /// challtestsrv's.
    pub fn resolver(&self) -> SocketAddr {
        self.resolver
    }

    /// The EAB key id and HMAC key (base64url) this Pebble requires, if any.
    pub fn eab(&self) -> Option<(&str, &str)> {
        self.eab.as_ref().map(|(k, h)| (k.as_str(), h.as_str()))
    }

    fn challtest(&self, path: &str, body: serde_json::Value) -> Result<()> {
        let (code, resp) = http(
            self.challtest_management,
            "POST",
            path,
            &serde_json::to_vec(&body)?,
        )?;
        if code != 200 {
            bail!(
                "challtestsrv {path} answered {code}: {}",
                String::from_utf8_lossy(&resp)
            );
        }
        Ok(())
    }

    /// Adds a TXT record `value` at `name` (e.g. `_acme-challenge.example.test`).
    pub fn set_txt(&self, name: &str, value: &str) -> Result<()> {
        self.challtest(
            "/set-txt",
            serde_json::json!({"host": fqdn(name), "value": value}),
        )
    }

    /// Removes every TXT record at `name`.
    pub fn clear_txt(&self, name: &str) -> Result<()> {
        self.challtest("/clear-txt", serde_json::json!({"host": fqdn(name)}))
    }

    /// The last lines of Pebble's log (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.pebble.log, lines)
    }

    /// Stops both processes (SIGTERM, then SIGKILL after 2 s), by PID.
    pub fn stop(&mut self) {
        self.pebble.stop(Duration::from_secs(2));
        self.challtestsrv.stop(Duration::from_secs(2));
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
    }
}
