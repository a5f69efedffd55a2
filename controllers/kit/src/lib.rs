//! ferrite-kit: what every Ferrite controller needs, written once.
//!
//! ```text
//!   cli::CommonArgs ──> App::start ──────┬─ client    (kubeconfig or in-cluster; timeouts; aws-lc-rs)
//!   (BaseArgs + ElectionArgs)            ├─ telemetry (tracing, json | plain)
//!   cli::BaseArgs ──> App::start_base ───├─ admin     (/metrics, /livez, /readyz, extra routes; hyper)
//!                     (no election)      ├─ leader    (coordination.k8s.io/v1 Lease; only the holder writes)
//!                                        ├─ watches   (shared, trimmed watches per kind)
//!                                        └─ shutdown  (SIGTERM/SIGINT -> graceful stop, lease released)
//!   runner::run(Controller, reconcile) ── reconcile metrics, per-object backoff, resync, leader gating
//!   status / conditions / events        ── SSA status patches, API-convention conditions, Events
//!   finalizer                           ── external state cleaned up before an object goes
//!   endpointslice                       ── discovery.k8s.io/v1 with a v1beta1 fallback, one typed view
//!   watch                               ── one trimmed watch + cache per kind, shared by subscribers
//!   dns (feature `dns`)                 ── TSIG keys and MACs, TSIG-signed RFC 2136 UPDATE client
//! ```
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backoff;
pub mod cli;
pub mod client;
pub mod conditions;
#[cfg(feature = "dns")]
pub mod dns;
pub mod endpointslice;
pub mod error;
pub mod events;
pub mod finalizer;
pub mod leader;
pub mod metrics;
pub mod runner;
pub mod selector;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod watch;

pub use app::App;
pub use error::{Error, ReasonedError, Result};

// Re-exported so controllers use exactly the versions the kit was built with.
pub use k8s_openapi;
pub use kube;
pub use prometheus;
