//! The kit's error type. Every variant says what was wrong and what to do about it, and maps to a short
//! stable reason used as a metric label and Event reason.

use std::net::SocketAddr;

/// Result with the kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error a controller can report: a short, stable reason for metric labels and Event reasons.
pub trait ReasonedError: std::error::Error + Send + Sync + 'static {
    /// Short CamelCase reason, e.g. `PoolExhausted`; low cardinality.
    fn reason(&self) -> &'static str;
}

/// Errors of the kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No kubeconfig and not in a cluster.
    #[error(
        "no Kubernetes configuration found ({0}): set KUBECONFIG to a kubeconfig file or run inside a cluster"
    )]
    NoConfig(#[source] kube::config::InferConfigError),

    /// An explicitly given kubeconfig cannot be used.
    #[error("cannot use kubeconfig {path}: {message}")]
    BadKubeconfig {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },

    /// The kubeconfig could not be turned into a client.
    #[error("invalid Kubernetes client configuration: {0}")]
    BadConfig(#[source] kube::Error),

    /// The API server did not answer.
    #[error(
        "cannot reach the Kubernetes API server at {url}: {source}; check that it is running and that KUBECONFIG points at it"
    )]
    Unreachable {
        /// The server URL from the configuration.
        url: String,
        /// What the client saw.
        #[source]
        source: kube::Error,
    },

    /// The API server did not answer in time.
    #[error(
        "the Kubernetes API server at {url} did not answer within {secs} s; check that it is running and that KUBECONFIG points at it"
    )]
    Timeout {
        /// The server URL from the configuration.
        url: String,
        /// Seconds waited.
        secs: u64,
    },

    /// A CRD the controller needs is not installed.
    #[error(
        "the CustomResourceDefinition {crd} is not installed: apply crds/ (kubectl apply -f crds/) or install the chart"
    )]
    MissingCrd {
        /// `<plural>.<group>`
        crd: String,
    },

    /// The admin server could not bind.
    #[error("cannot listen on admin address {addr}: {source}; choose another with --admin-addr")]
    AdminBind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },

    /// An invalid command-line or environment option.
    #[error("invalid option: {0}")]
    Option(String),

    /// This replica does not hold the lease, so it must not write.
    #[error("not the leader: only the holder of the lease writes")]
    NotLeader,

    /// A call to the API server failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// A call at run time did not finish in time (a stalled connection, an overloaded API server); it
    /// is retried like any failed call. Not a setup problem.
    #[error("{what} did not finish within {after:?} (API server slow or connection stalled); will retry")]
    CallTimeout {
        /// The call, e.g. `renew Lease ferrite-system/ferrite-lb-controller`.
        what: String,
        /// How long it was given.
        after: std::time::Duration,
    },

    /// Installing the process-wide crypto provider or the signal handler failed.
    #[error("process setup failed: {0}")]
    Setup(String),
}

impl ReasonedError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::NoConfig(_) => "NoConfig",
            Error::BadConfig(_) | Error::BadKubeconfig { .. } => "BadConfig",
            Error::Unreachable { .. } | Error::Timeout { .. } => "Unreachable",
            Error::MissingCrd { .. } => "MissingCrd",
            Error::AdminBind { .. } => "AdminBind",
            Error::Option(_) => "InvalidOption",
            Error::NotLeader => "NotLeader",
            Error::Kube(e) => kube_reason(e),
            Error::CallTimeout { .. } => "Timeout",
            Error::Setup(_) => "Setup",
        }
    }
}

/// A low-cardinality reason for an API error: `Conflict`, `NotFound`, `Forbidden`, `ApiError`, ...
pub fn kube_reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            400 => "BadRequest",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            410 => "Gone",
            422 => "Invalid",
            429 => "TooManyRequests",
            _ => "ApiError",
        },
        kube::Error::SerdeError(_) => "DecodeError",
        _ => "ConnectionError",
    }
}

/// True when `e` is a run-time call timeout ([`Error::CallTimeout`]).
pub fn is_timeout(e: &Error) -> bool {
    matches!(e, Error::CallTimeout { .. })
}

/// True when the API answered 404 for this call.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_timeout_is_not_a_setup_error() {
        let e = Error::CallTimeout {
            what: "renew Lease ns/l".into(),
            after: std::time::Duration::from_secs(2),
        };
        assert_eq!(e.reason(), "Timeout");
        assert!(is_timeout(&e));
        assert!(!is_timeout(&Error::Setup("x".into())));
        assert_eq!(
            e.to_string(),
            "renew Lease ns/l did not finish within 2s (API server slow or connection stalled); will retry"
        );
    }
}
