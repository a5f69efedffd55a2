//! A real `named` (Debian's bind9) for tests: started on 127.0.0.1 on a free port (or a given one) with its
//! own configuration in a temporary directory, under the [`Supervised`] watchdog (so it never outlives the
//! test), stopped by its PID. Shared by ferrite-kit's UPDATE tests, ferrite-dns's RFC2136, controller and
//! transfer tests, and ferrite-certs's RFC2136 DNS-01 tests.
//!
//! ```ignore
//! let named = Named::start(NamedConfig {
//!     keys: vec![NamedKey::new("ferrite-key", "hmac-sha256", SECRET)],
//!     zones: vec![NamedZone::primary("apps.example.test", "foreign IN A 192.0.2.99\n")
//!         .allow_update(&["ferrite-key"])],
//!     ..NamedConfig::default()
//! })?;
//! assert_eq!(named.answers("foreign.apps.example.test.", "A"), ["192.0.2.99"]);
//! ```
//!
//! Needs `named` and `dig`: `apt-get install -y bind9 bind9-dnsutils` (e2e/scripts/install-deps.sh).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pebble::free_tcp_udp_port;
use crate::process::{Supervised, tail};

/// A TSIG key in named.conf.
#[derive(Debug, Clone)]
pub struct NamedKey {
    /// `key "<name>"`.
    pub name: String,
    /// BIND's algorithm name (`hmac-sha256`, `hmac-sha1`, `hmac-sha512` ...).
    pub algorithm: String,
    /// The secret's bytes (written base64, as `tsig-keygen` does).
    pub secret: Vec<u8>,
}

impl NamedKey {
    /// A key.
    pub fn new(name: &str, algorithm: &str, secret: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            algorithm: algorithm.to_string(),
            secret: secret.to_vec(),
        }
    }
}

/// A zone named serves.
#[derive(Debug, Clone)]
pub enum NamedZone {
    /// A primary zone from a zone file: SOA (serial 1), NS `ns1.<zone>.`, `ns1 A 127.0.0.1`, then `records`.
    Primary {
        /// The zone's name (no trailing dot needed).
        name: String,
        /// More zone-file lines (relative names are below the zone).
        records: String,
        /// `allow-update { key K; ... }` (ignored when `update_policy` is set).
        allow_update: Vec<String>,
        /// `update-policy { ... }` statements, verbatim (`grant k name _acme-challenge.x.test. TXT;`).
        update_policy: Option<String>,
        /// `allow-transfer { key K; ... }`.
        allow_transfer: Vec<String>,
    },
    /// A secondary zone loaded from `primary`, its transfers signed with `key`.
    Secondary {
        /// The zone's name.
        name: String,
        /// The primary.
        primary: SocketAddr,
        /// The transfer key's name.
        key: String,
    },
}

impl NamedZone {
    /// A primary zone with these extra records, updatable and transferable by no one yet.
    pub fn primary(name: &str, records: &str) -> Self {
        Self::Primary {
            name: name.trim_end_matches('.').to_string(),
            records: records.to_string(),
            allow_update: Vec::new(),
            update_policy: None,
            allow_transfer: Vec::new(),
        }
    }

    /// A secondary of `primary`, transfers signed with `key`.
    pub fn secondary(name: &str, primary: SocketAddr, key: &str) -> Self {
        Self::Secondary {
            name: name.trim_end_matches('.').to_string(),
            primary,
            key: key.to_string(),
        }
    }

    /// Lets these keys update the (primary) zone.
    pub fn allow_update(mut self, keys: &[&str]) -> Self {
        if let Self::Primary { allow_update, .. } = &mut self {
            *allow_update = keys.iter().map(|k| k.to_string()).collect();
        }
        self
    }

    /// Lets these keys transfer the (primary) zone.
    pub fn allow_transfer(mut self, keys: &[&str]) -> Self {
        if let Self::Primary { allow_transfer, .. } = &mut self {
            *allow_transfer = keys.iter().map(|k| k.to_string()).collect();
        }
        self
    }

    /// An `update-policy` (verbatim statements) instead of `allow-update`.
    pub fn update_policy(mut self, policy: &str) -> Self {
        if let Self::Primary { update_policy, .. } = &mut self {
            *update_policy = Some(policy.to_string());
        }
        self
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Primary { name, .. } | Self::Secondary { name, .. } => name,
        }
    }
}

/// What a [`Named`] is started with.
#[derive(Debug, Clone, Default)]
pub struct NamedConfig {
    /// The port on 127.0.0.1 (TCP and UDP); `None`: a free one.
    pub port: Option<u16>,
    /// TSIG keys.
    pub keys: Vec<NamedKey>,
    /// Zones.
    pub zones: Vec<NamedZone>,
    /// More named.conf, verbatim (a `logging { ... };` block).
    pub extra: String,
}

/// A running (or stopped) `named`.
#[derive(Debug)]
pub struct Named {
    dir: tempfile::TempDir,
    port: u16,
    named: PathBuf,
    process: Option<Supervised>,
    /// The first primary zone: named is ready when it answers its SOA over TCP.
    ready_zone: Option<String>,
    runs: usize,
}

/// The path of a peer binary (named, dig, knotd), or an error saying how to install it.
pub fn require(tool: &str) -> Result<PathBuf> {
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
            return Ok(p);
        }
    }
    bail!(
        "{tool} is not installed; this test runs real DNS peers: apt-get install -y bind9 bind9-dnsutils knot \
         (or run e2e/scripts/install-deps.sh)"
    )
}

/// Standard base64, as `tsig-keygen` prints a secret.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `dig @127.0.0.1 -p <port> +short +time=2 +tries=1 <args>`: its stdout.
pub fn dig_short(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &port.to_string(),
            "+short",
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(_) => String::new(),
    }
}

impl Named {
    /// Writes the configuration and starts named; when there is a primary zone, waits (up to 20 s) until
    /// it answers that zone's SOA over TCP.
    pub fn start(config: NamedConfig) -> Result<Named> {
        let named = require("named")?;
        require("dig")?;
        let dir = tempfile::tempdir().context("temp dir for named")?;
        let port = match config.port {
            Some(p) => p,
            None => free_tcp_udp_port()?,
        };
        let d = dir.path().display();
        let mut conf = format!(
            r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
"#
        );
        for k in &config.keys {
            conf += &format!(
                "key \"{}\" {{ algorithm {}; secret \"{}\"; }};\n",
                k.name,
                k.algorithm,
                base64(&k.secret)
            );
        }
        let keys = |ks: &[String]| -> String { ks.iter().map(|k| format!("key {k}; ")).collect() };
        let mut ready_zone = None;
        for z in &config.zones {
            match z {
                NamedZone::Primary {
                    name,
                    records,
                    allow_update,
                    update_policy,
                    allow_transfer,
                } => {
                    let file = format!("{name}.db");
                    let zone_file = format!(
                        "$TTL 300\n@ IN SOA ns1.{name}. hostmaster.{name}. 1 3600 600 86400 60\n@ IN NS ns1.{name}.\nns1 IN A 127.0.0.1\n{records}"
                    );
                    std::fs::write(dir.path().join(&file), zone_file).context("writing a zone file")?;
                    conf += &format!("zone \"{name}\" {{\n    type primary;\n    file \"{d}/{file}\";\n");
                    match update_policy {
                        Some(p) => conf += &format!("    update-policy {{ {p} }};\n"),
                        None if !allow_update.is_empty() => {
                            conf += &format!("    allow-update {{ {}}};\n", keys(allow_update))
                        }
                        None => {}
                    }
                    if !allow_transfer.is_empty() {
                        conf += &format!("    allow-transfer {{ {}}};\n", keys(allow_transfer));
                    }
                    conf += "};\n";
                    ready_zone.get_or_insert_with(|| format!("{name}."));
                }
                NamedZone::Secondary { name, primary, key } => {
                    conf += &format!(
                        "zone \"{name}\" {{\n    type secondary;\n    file \"{d}/{name}.db\";\n    primaries {{ {} port {} key {key}; }};\n}};\n",
                        primary.ip(),
                        primary.port()
                    );
                }
            }
        }
        conf += &config.extra;
        std::fs::write(dir.path().join("named.conf"), conf).context("writing named.conf")?;
        let mut n = Named {
            dir,
            port,
            named,
            process: None,
            ready_zone,
            runs: 0,
        };
        n.run()?;
        Ok(n)
    }

    /// Starts named again after [`Named::stop`] (same directory, zones as named left them) and waits as
    /// [`Named::start`] does.
    pub fn run(&mut self) -> Result<()> {
        self.stop();
        self.runs += 1;
        let log = self.dir.path().join(format!("named-{}.log", self.runs));
        let conf = self.dir.path().join("named.conf");
        let args: Vec<String> = ["-g", "-u", "root", "-4", "-n", "1", "-c"]
            .iter()
            .map(|s| s.to_string())
            .chain([conf.display().to_string()])
            .collect();
        self.process = Some(Supervised::spawn("named", &self.named, &args, &[], &log)?);
        let Some(zone) = self.ready_zone.clone() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exited) = self.exited() {
                bail!("{exited}");
            }
            if self.dig(&["+tcp", &zone, "SOA"]).contains("hostmaster") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("named did not answer {zone} SOA within 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM (then SIGKILL after 10 s) to named, by its PID; a no-op when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// `Some(why)` when named has exited by itself.
    pub fn exited(&mut self) -> Option<String> {
        let p = self.process.as_mut()?;
        if p.is_running() {
            return None;
        }
        Some(format!("named exited:\n{}", self.log()))
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Its directory (named.conf, zone files, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything named logged, every run.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|i| tail(&self.dir.path().join(format!("named-{i}.log")), 2000))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `dig +short` against it.
    pub fn dig(&self, args: &[&str]) -> String {
        dig_short(self.port, args)
    }

    /// `dig +short <name> <rtype>` lines, sorted.
    pub fn answers(&self, name: &str, rtype: &str) -> Vec<String> {
        let mut v: Vec<String> = self.dig(&[name, rtype]).lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop();
    }
}
