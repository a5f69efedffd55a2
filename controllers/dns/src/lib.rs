//! ferrite-dns: DNS records from Services, Ingresses and `DNSRecord`s.
//!
//! The binary `ferrite-dns controller` ([`controller`]) runs it against Kubernetes; the other modules are
//! the core it is built on (the pure ones with no I/O and no Kubernetes):
//!
//! ```text
//!   desired records ──> zone::Zone::build ──> Zone snapshot ──> resolve::ZoneSet::resolve ──> Answer
//!   (sources)           (validation errors)   (immutable)       (RFC 1034/2308/4592 rules)   (sections, rcode, AA)
//!
//!   TXT records on a server <──> registry (external-dns's ownership format, both record-name formats)
//! ```
//! - [`controller`]: the controller on ferrite-kit: watches, debounced passes, the embedded server's
//!   zones (every replica), status, Events and RFC2136 syncs (the leader).
//! - [`zone`]: one immutable, validated snapshot of a zone: RRsets keyed by owner name and type, SOA and
//!   NS from the zone's settings, empty non-terminals known.
//! - [`resolve`]: the authoritative answer semantics over a set of snapshots. hickory-server's own
//!   authority answers several RFC 4592/2308 cases wrongly, so the lookup is ours and hickory supplies the
//!   names, types, RDATA and (later) the wire format.
//! - [`registry`]: external-dns's TXT registry: the ownership text and the names of the TXT records.
//! - [`rfc2136`]: the RFC2136 provider's client: TSIG-signed dynamic UPDATE batches and AXFR over TCP,
//!   with typed errors (`reason()`) for the zone's conditions.
//! - [`source`]: the desired records of every zone from Services, Ingresses and `DNSRecord`s (annotations
//!   under `dns.ferrite.dev/` and both external-dns prefixes), with per-object errors and oldest-wins conflicts.
//! - [`plan`]: desired vs. current records of a provider's zone -> delete/update/create batches, touching
//!   only records our registry owner id owns, by policy, behind the deletion guard.
//! - [`server`]: the embedded authoritative server over UDP and TCP: answers from a `ZoneSet` swapped
//!   atomically, hickory-proto for the wire format, our own hot path (a `SO_REUSEPORT` socket per worker).
//! - [`transfer`]: zone transfers to secondaries: AXFR and IXFR over TCP authorised by TSIG keys,
//!   signed answers, IXFR differences kept per serial, NOTIFY on every new serial; [`transfer::next_serial`].
//! - [`tsig`]: TSIG keys and the MAC rules (RFC 8945) shared by [`rfc2136`] and [`transfer`].
#![forbid(unsafe_code)]

pub mod controller;
pub mod plan;
pub mod registry;
pub mod resolve;
pub mod rfc2136;
pub mod server;
pub mod source;
pub mod transfer;
pub mod tsig;
pub mod zone;
