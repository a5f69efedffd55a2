//! ferrite-certs: certificates from ACME CAs, a private CA or self-signed, renewed on time.
//!
//! - [`pki`]: private keys (ECDSA, RSA, Ed25519), CSRs, CA-signed and self-signed certificates,
//!   parsing and validating what a `kubernetes.io/tls` Secret holds (key/cert match, names, expiry).
//! - [`renewal`]: when a certificate is renewed, and the backoff after failed issuances.
//! - [`acme`]: the ACME client on instant-acme: the account kept in its Secret, one order per
//!   Certificate (resumable by URL), HTTP-01/DNS-01 authorizations, self-checks, finalize, ARI.
//! - [`controller`]: the watches and reconcilers of Issuers, ClusterIssuers and Certificates, the
//!   Secrets they write, metrics.
//! - [`shim`]: ingress-shim: a Certificate per `spec.tls` entry of an annotated Ingress, owned by it.
//! - [`solvers`]: ACME challenge solvers: selection by the issuer's selectors, Challenge objects,
//!   HTTP-01 (ferrite's IngressClass, or a temporary Ingress to our own listener), DNS-01 through
//!   a `DNSRecord` or RFC2136.
#![forbid(unsafe_code)]

pub mod acme;
pub mod controller;
pub mod pki;
pub mod renewal;
pub mod shim;
pub mod solvers;
