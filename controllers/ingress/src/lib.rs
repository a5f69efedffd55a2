//! ferrite-ingress: the routing core of the ingress proxy.
//!
//! Ingress objects never become configuration text: they compile into one immutable, typed
//! [`RouteTable`] that the proxy reads without locks and the controller swaps atomically
//! ([`SharedRouteTable`]) whenever an Ingress, IngressClass or TLS Secret changes.
//!
//! ```text
//!   IngressClasses ─┐
//!                   ├─> class::decide ──> served Ingresses, oldest first
//!   Ingresses ──────┘   (ingressClassName,        │
//!                        legacy annotation,       │ routes::RouteTable::build
//!                        default class)           v
//!         ┌───────────────────────────────────────────────────────────────┐
//!         │ RouteTable (immutable snapshot)                               │
//!         │   hosts: exact "a.example.com" | wildcard "*.example.com"     │──> Warnings (invalid host,
//!         │          | rules without host                                 │    path, backend, TLS entry;
//!         │     └─ paths: Exact map + Prefix map ──> BackendRef           │    conflicts: oldest wins)
//!         │   defaultBackend: per host (oldest Ingress with a rule for    │    -> Events on the Ingress
//!         │     it) | catch-all (oldest Ingress without rules) | 404      │
//!         │   TLS: host pattern ──> Secret (namespace/name)               │
//!         └───────────────────────────────────────────────────────────────┘
//!                  │ SharedRouteTable (arc-swap)
//!                  v
//!   proxy: route(host, target) -> Match { Route | Default | NotFound }; tls_secret_for(sni)
//! ```
//!
//! - [`class`]: which Ingresses this controller serves (a pure function of the Ingress and the
//!   IngressClasses).
//! - [`host`]: rule hosts (exact, one-label wildcards) and request hosts (normalized without allocation).
//! - [`path`]: rule path validation and the Exact/Prefix matching rules.
//! - [`routes`]: the table, its build (merging, conflicts, warnings) and its lookups.
//! - [`controller`]: the control plane (watches, debounced snapshot builds, status, Events) of the
//!   `ferrite-ingress controller` binary.
//! - [`proxy`]: the data plane (listeners, TLS by SNI, request path, upstream pools) serving a
//!   [`proxy::Snapshot`] of the table, endpoints, certificates and ACME tokens.
//!
//! The exact semantics, with the Kubernetes documentation's examples, are in `docs/ingress.md`.
#![forbid(unsafe_code)]

pub mod class;
pub mod controller;
pub mod host;
pub mod path;
pub mod proxy;
pub mod routes;

pub use class::{CONTROLLER_NAME, ClassDecision, ClassSource, NotServed, decide as decide_class};
pub use host::{HostError, HostPattern, RequestHost};
pub use path::{MatchKind, PathError, PathType, RulePath};
pub use routes::{
    BackendError, BackendRef, Compiled, DefaultBackend, IngressRef, Match, Route, RouteTable, SecretRef,
    ServicePort, SharedRouteTable, TlsBinding, Warning, WarningKind,
};
