//! Names shared across controllers: field managers, condition types and reasons.
//!
//! Field managers are named like a domain, one per controller, so `kubectl get -o yaml --show-managed-fields`
//! tells who owns which field.

/// Condition type every Ferrite object reports: the object is accepted and in effect.
pub const CONDITION_READY: &str = "Ready";

/// Field manager of the load-balancer allocator (Service status, IPPool status).
pub const LB_CONTROLLER_MANAGER: &str = "lb.ferrite.dev/controller";
/// Field manager of the load-balancer speaker.
pub const LB_SPEAKER_MANAGER: &str = "lb.ferrite.dev/speaker";

/// `reportingController` of Events written by the allocator.
pub const LB_CONTROLLER_REPORTER: &str = "lb.ferrite.dev/controller";
/// `reportingController` of Events written by the speaker.
pub const LB_SPEAKER_REPORTER: &str = "lb.ferrite.dev/speaker";

/// Field manager of ferrite-dns (DNSZone and DNSRecord status).
pub const DNS_CONTROLLER_MANAGER: &str = "dns.ferrite.dev/controller";
/// `reportingController` of Events written by ferrite-dns.
pub const DNS_CONTROLLER_REPORTER: &str = "dns.ferrite.dev/controller";
/// Finalizer ferrite-dns puts on a `DNSZone` with an RFC 2136 provider while it has records on the server.
pub const DNS_ZONE_FINALIZER: &str = "dns.ferrite.dev/records";

/// Field manager of ferrite-certs (Certificate, Issuer, Challenge status; the Secrets it writes).
pub const CERTS_CONTROLLER_MANAGER: &str = "certs.ferrite.dev/controller";
/// `reportingController` of Events written by ferrite-certs.
pub const CERTS_CONTROLLER_REPORTER: &str = "certs.ferrite.dev/controller";
