//! Command-line and environment options every controller accepts.
//!
//! Each flag has an environment variable (`FERRITE_*`) so the chart can set it either way.

use std::{net::SocketAddr, time::Duration};

/// Log output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Options of every Ferrite process: client, admin server, logging, identity, resync. Flatten into
/// the clap struct of a binary that does not elect a leader (and start it with [`crate::App::start_base`]).
#[derive(clap::Args, Clone, Debug)]
pub struct BaseArgs {
    /// Kubeconfig file; without it `KUBECONFIG`, `~/.kube/config` or the in-cluster account is used.
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,

    /// Address of the admin server (/metrics, /livez, /readyz).
    #[arg(long, env = "FERRITE_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    pub admin_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "FERRITE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter in tracing's EnvFilter syntax, e.g. `info` or `info,ferrite_lb=debug`.
    #[arg(long, env = "FERRITE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Identity of this replica in the lease (defaults to the pod name, then the hostname).
    #[arg(long, env = "FERRITE_IDENTITY")]
    pub identity: Option<String>,

    /// Every object is reconciled again at least this often, even without a change.
    #[arg(long, env = "FERRITE_RESYNC_INTERVAL", value_parser = parse_duration, default_value = "5m")]
    pub resync_interval: Duration,

    /// Time allowed to open a connection (TCP + TLS) to the API server; also bounds the check at start.
    #[arg(long, env = "FERRITE_API_CONNECT_TIMEOUT", value_parser = parse_duration, default_value = "10s")]
    pub api_connect_timeout: Duration,

    /// A connection to the API server that delivers no byte for this long is dropped (a half-open
    /// connection). Watches are idle up to their server-side timeout (290 s), so this must be above
    /// 295 s; 0 turns it off (kube-runtime's watcher still drops watches idle for 295 s).
    #[arg(long, env = "FERRITE_API_READ_TIMEOUT", value_parser = parse_duration, default_value = "300s")]
    pub api_read_timeout: Duration,

    /// A request whose bytes the API server does not take for this long fails.
    #[arg(long, env = "FERRITE_API_WRITE_TIMEOUT", value_parser = parse_duration, default_value = "30s")]
    pub api_write_timeout: Duration,
}

/// Leader-election options: flatten into a binary whose replicas elect a leader (or use [`CommonArgs`]).
#[derive(clap::Args, Clone, Debug)]
pub struct ElectionArgs {
    /// Elect a leader among replicas with a Lease; only the leader writes. Off: this process always writes.
    #[arg(long, env = "FERRITE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,

    /// Name of the coordination.k8s.io/v1 Lease used for leader election.
    #[arg(long, env = "FERRITE_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of the Lease (defaults to the pod's namespace, then `ferrite-system`).
    #[arg(long, env = "FERRITE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long a lease is valid without renewal.
    #[arg(long, env = "FERRITE_LEASE_DURATION", value_parser = parse_duration, default_value = "15s")]
    pub lease_duration: Duration,

    /// The leader stops writing when it could not renew for this long (must be below the lease duration).
    #[arg(long, env = "FERRITE_LEASE_RENEW_DEADLINE", value_parser = parse_duration, default_value = "10s")]
    pub lease_renew_deadline: Duration,

    /// How often the lease is renewed or, by a follower, tried.
    #[arg(long, env = "FERRITE_LEASE_RETRY_PERIOD", value_parser = parse_duration, default_value = "2s")]
    pub lease_retry_period: Duration,
}

/// Options of a leader-elected Ferrite controller: [`BaseArgs`] and [`ElectionArgs`] flattened. The
/// base fields are reachable directly (`args.kubeconfig`, through `Deref`), the election ones as
/// `args.election.leader_elect`.
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Client, admin server, logging, identity, resync.
    #[command(flatten)]
    pub base: BaseArgs,
    /// Leader election.
    #[command(flatten)]
    pub election: ElectionArgs,
}

impl std::ops::Deref for CommonArgs {
    type Target = BaseArgs;
    fn deref(&self) -> &BaseArgs {
        &self.base
    }
}

impl std::ops::DerefMut for CommonArgs {
    fn deref_mut(&mut self) -> &mut BaseArgs {
        &mut self.base
    }
}

/// The watch timeout kube-runtime's watcher asks the server for by default (seconds) plus its idle
/// margin: a read timeout must be above this or it cuts quiet watches.
pub const WATCH_IDLE: Duration = Duration::from_secs(290 + 5);

impl BaseArgs {
    /// The identity this replica uses in leases and Events.
    pub fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("ferrite-{}", std::process::id()))
    }

    /// Client timeouts from `--api-*-timeout`.
    pub fn timeouts(&self) -> crate::client::Timeouts {
        crate::client::Timeouts {
            connect: self.api_connect_timeout,
            read: (!self.api_read_timeout.is_zero()).then_some(self.api_read_timeout),
            write: self.api_write_timeout,
        }
    }

    /// Checks relations between options that clap cannot.
    pub fn validate(&self) -> crate::Result<()> {
        if self.resync_interval < Duration::from_secs(1) {
            return Err(crate::Error::Option(
                "--resync-interval must be at least 1s".into(),
            ));
        }
        if self.api_connect_timeout < Duration::from_millis(100) {
            return Err(crate::Error::Option(
                "--api-connect-timeout must be at least 100ms".into(),
            ));
        }
        if self.api_write_timeout < Duration::from_secs(1) {
            return Err(crate::Error::Option(
                "--api-write-timeout must be at least 1s".into(),
            ));
        }
        if !self.api_read_timeout.is_zero() && self.api_read_timeout <= WATCH_IDLE {
            return Err(crate::Error::Option(format!(
                "--api-read-timeout ({:?}) must be above {:?} (watches are quiet up to their 290 s server timeout) or 0 to turn it off",
                self.api_read_timeout, WATCH_IDLE
            )));
        }
        Ok(())
    }
}

impl ElectionArgs {
    /// The namespace of the lease.
    pub fn lease_namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .or_else(|| {
                std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
            })
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ferrite-system".to_string())
    }

    /// Checks that the lease timings nest (only when electing).
    pub fn validate(&self) -> crate::Result<()> {
        if self.leader_elect {
            if self.lease_renew_deadline >= self.lease_duration {
                return Err(crate::Error::Option(format!(
                    "--lease-renew-deadline ({:?}) must be shorter than --lease-duration ({:?})",
                    self.lease_renew_deadline, self.lease_duration
                )));
            }
            if self.lease_retry_period >= self.lease_renew_deadline {
                return Err(crate::Error::Option(format!(
                    "--lease-retry-period ({:?}) must be shorter than --lease-renew-deadline ({:?})",
                    self.lease_retry_period, self.lease_renew_deadline
                )));
            }
        }
        Ok(())
    }
}

impl CommonArgs {
    /// The namespace of the lease.
    pub fn lease_namespace(&self) -> String {
        self.election.lease_namespace()
    }

    /// Checks relations between options that clap cannot.
    pub fn validate(&self) -> crate::Result<()> {
        self.election.validate()?;
        self.base.validate()
    }
}

/// Parses `250ms`, `15s`, `5m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 15s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?} has unknown unit {unit:?}; use ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=365.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("15s", Some(Duration::from_secs(15))),
            ("5m", Some(Duration::from_secs(300))),
            ("1h", Some(Duration::from_secs(3600))),
            ("7", Some(Duration::from_secs(7))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("", None),
            ("5d", None),
            ("s", None),
            ("-1s", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), want, "input {input:?}");
        }
    }

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[derive(clap::Parser, Debug)]
    struct BaseCli {
        #[command(flatten)]
        base: BaseArgs,
    }

    #[test]
    fn base_args_have_no_lease_flags() {
        use clap::Parser;
        let ok = BaseCli::try_parse_from(["x", "--admin-addr", "127.0.0.1:1", "--identity", "n1"])
            .expect("parses");
        assert!(ok.base.validate().is_ok());
        assert_eq!(ok.base.identity(), "n1");
        for flag in ["--leader-elect=false", "--lease-name=x", "--lease-duration=5s"] {
            let err = BaseCli::try_parse_from(["x", flag]).expect_err(flag);
            assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument, "{flag}");
        }
        // CommonArgs has both halves, base fields reachable as before.
        let c = Cli::try_parse_from(["x", "--identity", "n2", "--leader-elect=false"]).expect("parses");
        assert_eq!(c.common.identity(), "n2");
        assert!(c.common.kubeconfig.is_none());
        assert!(!c.common.election.leader_elect);
    }

    #[test]
    fn api_timeouts_parse_and_a_read_timeout_must_outlast_a_quiet_watch() {
        use clap::Parser;
        let d = BaseCli::try_parse_from(["x"]).expect("defaults");
        let t = d.base.timeouts();
        assert_eq!(t.connect, Duration::from_secs(10));
        assert_eq!(t.read, Some(Duration::from_secs(300)));
        assert_eq!(t.write, Duration::from_secs(30));
        let off = BaseCli::try_parse_from(["x", "--api-read-timeout=0"]).expect("parses");
        assert!(off.base.validate().is_ok());
        assert_eq!(off.base.timeouts().read, None);
        let short = BaseCli::try_parse_from(["x", "--api-read-timeout=30s"]).expect("parses");
        let err = short.base.validate().expect_err("cuts quiet watches");
        assert!(err.to_string().contains("--api-read-timeout"), "{err}");
        let tiny = BaseCli::try_parse_from(["x", "--api-connect-timeout=10ms"]).expect("parses");
        assert!(tiny.base.validate().is_err());
    }

    #[test]
    fn lease_timings_must_nest() {
        use clap::Parser;
        let ok = Cli::try_parse_from(["x"]).expect("defaults parse");
        assert!(ok.common.validate().is_ok());
        let bad = Cli::try_parse_from(["x", "--lease-duration", "5s", "--lease-renew-deadline", "10s"])
            .expect("parses");
        let err = bad
            .common
            .validate()
            .expect_err("renew deadline above duration is refused");
        assert!(err.to_string().contains("--lease-renew-deadline"), "{err}");
    }
}
