//! The data plane's Prometheus metrics, `ferrite_ingress_*`, registered in the registry the
//! binary's admin server exposes (`ProxyConfig::registry`).
//!
//! Label values come only from the route table and from fixed sets, never from the request:
//! `namespace`/`ingress`/`service` are those of the matched route (`unmatched` for requests that
//! matched none, `acme`/`redirect` for the proxy's own answers), `method` is one of the standard
//! methods or `other`, `code` is a class (`2xx` .. `5xx`). Paths and Host headers never become labels.

use std::sync::{Arc, OnceLock};

use hyper::{Method, StatusCode};
use std::collections::{HashMap, HashSet};

use prometheus::core::{Collector, Desc, MetricVec, MetricVecBuilder};
use prometheus::proto::MetricFamily;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use super::SharedSnapshot;

/// Every data-plane metric. Cheap to clone (handles to the same series).
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    pub(crate) requests: IntCounterVec,
    pub(crate) request_duration: HistogramVec,
    pub(crate) upstream_duration: HistogramVec,
    pub(crate) request_bytes: IntCounterVec,
    pub(crate) response_bytes: IntCounterVec,
    pub(crate) connections: IntGaugeVec,
    pub(crate) connections_total: IntCounterVec,
    pub(crate) in_flight: IntGauge,
    pub(crate) overload: IntCounter,
    pub(crate) tls_handshakes: IntCounterVec,
    pub(crate) tls_errors: IntCounterVec,
    pub(crate) upstream_connect_errors: IntCounterVec,
    pub(crate) upstream_retries: IntCounterVec,
    pub(crate) upstream_ejections: IntCounterVec,
    pub(crate) upstream_timeouts: IntCounterVec,
    pub(crate) proxy_protocol_errors: IntCounterVec,
    pub(crate) access_log_dropped: IntCounter,
    pub(crate) header_timeouts: IntCounterVec,
    pub(crate) downstream_errors: IntCounterVec,
}

const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const ROUTE_LABELS: [&str; 3] = ["namespace", "ingress", "service"];

fn counter(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

impl ProxyMetrics {
    /// Creates the metrics without registering them anywhere.
    pub fn new() -> prometheus::Result<Self> {
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(DURATION_BUCKETS.to_vec()),
                &ROUTE_LABELS,
            )
        };
        Ok(ProxyMetrics {
            requests: counter(
                "ferrite_ingress_requests_total",
                "Requests answered, by the matched Ingress and Service, method and status class.",
                &["namespace", "ingress", "service", "method", "code"],
            )?,
            request_duration: histogram(
                "ferrite_ingress_request_duration_seconds",
                "Time from the request head to the last byte of the response, by Ingress and Service.",
            )?,
            upstream_duration: histogram(
                "ferrite_ingress_upstream_response_duration_seconds",
                "Time from sending the request upstream to the upstream's response head (successful attempts).",
            )?,
            request_bytes: counter(
                "ferrite_ingress_request_bytes_total",
                "Request body bytes received from clients, by Ingress and Service.",
                &ROUTE_LABELS,
            )?,
            response_bytes: counter(
                "ferrite_ingress_response_bytes_total",
                "Response body bytes sent to clients, by Ingress and Service.",
                &ROUTE_LABELS,
            )?,
            connections: IntGaugeVec::new(
                Opts::new(
                    "ferrite_ingress_connections_open",
                    "Open downstream connections by listener (http, https) and protocol (http1, h2; \
                     pending until the first request or the TLS handshake tells).",
                ),
                &["listener", "protocol"],
            )?,
            connections_total: counter(
                "ferrite_ingress_connections_total",
                "Downstream connections accepted, by listener.",
                &["listener"],
            )?,
            in_flight: IntGauge::new(
                "ferrite_ingress_requests_in_flight",
                "Requests being answered (until the last response byte).",
            )?,
            overload: IntCounter::new(
                "ferrite_ingress_overload_rejected_total",
                "Requests answered 503 at once because max_in_flight requests were already being answered.",
            )?,
            tls_handshakes: counter(
                "ferrite_ingress_tls_handshakes_total",
                "Completed TLS handshakes by protocol version and ALPN protocol.",
                &["version", "alpn"],
            )?,
            tls_errors: counter(
                "ferrite_ingress_tls_handshake_errors_total",
                "Failed TLS handshakes by reason.",
                &["reason"],
            )?,
            upstream_connect_errors: counter(
                "ferrite_ingress_upstream_connect_errors_total",
                "Upstream connections refused or timed out, by Service.",
                &["namespace", "service"],
            )?,
            upstream_retries: counter(
                "ferrite_ingress_upstream_retries_total",
                "Requests sent to another endpoint after a connect failure, by Service.",
                &["namespace", "service"],
            )?,
            upstream_ejections: counter(
                "ferrite_ingress_upstream_ejections_total",
                "Endpoints ejected (tried last) after a connect failure, by Service.",
                &["namespace", "service"],
            )?,
            upstream_timeouts: counter(
                "ferrite_ingress_upstream_timeouts_total",
                "Upstream responses (head, or a gap in the body) slower than upstream_response_timeout, by Service.",
                &["namespace", "service"],
            )?,
            proxy_protocol_errors: counter(
                "ferrite_ingress_proxy_protocol_errors_total",
                "Connections closed for a missing or invalid PROXY protocol header, by listener.",
                &["listener"],
            )?,
            access_log_dropped: IntCounter::new(
                "ferrite_ingress_access_log_dropped_total",
                "Access log lines dropped because the log writer was behind (requests never wait for it).",
            )?,
            header_timeouts: counter(
                "ferrite_ingress_header_timeouts_total",
                "Connections closed because the TLS handshake or PROXY header did not finish in header_read_timeout, by listener.",
                &["listener"],
            )?,
            downstream_errors: counter(
                "ferrite_ingress_downstream_errors_total",
                "Client connections that ended with an error hyper answered or closed itself \
                 (never seen by the request path, not in the access log), by listener and reason: \
                 parse (400), too_large (431), timeout (header read timeout), incomplete, other.",
                &["listener", "reason"],
            )?,
        })
    }

    /// Creates and registers the metrics, with the snapshot gauges reading `snapshot` at scrape time.
    pub fn register(registry: &Registry, snapshot: Arc<SharedSnapshot>) -> prometheus::Result<Self> {
        let m = Self::new()?;
        for c in m.collectors() {
            registry.register(c)?;
        }
        registry.register(Box::new(SnapshotCollector::new(snapshot, m.clone())?))?;
        Ok(m)
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.request_duration.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.request_bytes.clone()),
            Box::new(self.response_bytes.clone()),
            Box::new(self.connections.clone()),
            Box::new(self.connections_total.clone()),
            Box::new(self.in_flight.clone()),
            Box::new(self.overload.clone()),
            Box::new(self.tls_handshakes.clone()),
            Box::new(self.tls_errors.clone()),
            Box::new(self.upstream_connect_errors.clone()),
            Box::new(self.upstream_retries.clone()),
            Box::new(self.upstream_ejections.clone()),
            Box::new(self.upstream_timeouts.clone()),
            Box::new(self.proxy_protocol_errors.clone()),
            Box::new(self.access_log_dropped.clone()),
            Box::new(self.header_timeouts.clone()),
            Box::new(self.downstream_errors.clone()),
        ]
    }

    /// Removes the series of Ingresses and Services the route table no longer has, so a cluster
    /// that creates and deletes Ingresses (preview environments) does not grow the series forever.
    /// Series with fixed words (`unmatched`, `acme`, ...) stay.
    pub(crate) fn prune(&self, routes: &crate::routes::RouteTable) {
        let mut ingresses: HashSet<(&str, &str)> = HashSet::new();
        let mut services: HashSet<(&str, &str)> = HashSet::new();
        let defaults = routes.default_backends().map(|d| (&d.ingress, &d.backend));
        for (ingress, backend) in routes
            .routes()
            .iter()
            .map(|r| (&r.ingress, &r.backend))
            .chain(defaults)
        {
            ingresses.insert((&ingress.namespace, &ingress.name));
            services.insert((&backend.namespace, &backend.service));
        }
        // Redirect series name the Ingress of the host's TLS entry.
        for tls in routes.tls_bindings() {
            ingresses.insert((&tls.ingress.namespace, &tls.ingress.name));
        }
        let live_route = |l: &HashMap<&str, &str>| {
            let ns = l.get("namespace").copied().unwrap_or("");
            ns.is_empty() || ingresses.contains(&(ns, l.get("ingress").copied().unwrap_or("")))
        };
        prune_vec(&self.requests, &live_route);
        prune_vec(&self.request_duration, &live_route);
        prune_vec(&self.upstream_duration, &live_route);
        prune_vec(&self.request_bytes, &live_route);
        prune_vec(&self.response_bytes, &live_route);
        let live_service = |l: &HashMap<&str, &str>| {
            let ns = l.get("namespace").copied().unwrap_or("");
            services.contains(&(ns, l.get("service").copied().unwrap_or("")))
        };
        prune_vec(&self.upstream_connect_errors, &live_service);
        prune_vec(&self.upstream_retries, &live_service);
        prune_vec(&self.upstream_ejections, &live_service);
        prune_vec(&self.upstream_timeouts, &live_service);
    }
}

fn prune_vec<T: MetricVecBuilder>(vec: &MetricVec<T>, live: &dyn Fn(&HashMap<&str, &str>) -> bool) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> =
                metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if !live(&labels) {
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// The label values of one request: from the route table, or fixed words.
#[derive(Debug, Clone)]
pub(crate) struct RouteLabels {
    pub namespace: Arc<str>,
    pub ingress: Arc<str>,
    pub service: Arc<str>,
}

impl RouteLabels {
    pub fn fixed(word: &'static str) -> Self {
        RouteLabels {
            namespace: Arc::from(""),
            ingress: Arc::from(word),
            service: Arc::from(word),
        }
    }
}

/// The per-route series a request records into at its end, looked up once per route (the request
/// path caches them per connection): the labelled vectors hash and lock on every lookup.
pub(crate) struct RouteSeries {
    pub labels: RouteLabels,
    pub request_duration: Histogram,
    pub request_bytes: IntCounter,
    pub response_bytes: IntCounter,
    /// Only routes that reached an upstream have this series.
    upstream_duration: OnceLock<Histogram>,
    /// `ferrite_ingress_requests_total` by method and code class, each made on first use.
    requests: [OnceLock<IntCounter>; METHODS.len() * CODES.len()],
}

impl RouteSeries {
    pub fn new(metrics: &ProxyMetrics, labels: RouteLabels) -> Self {
        let l = [&*labels.namespace, &*labels.ingress, &*labels.service];
        RouteSeries {
            request_duration: metrics.request_duration.with_label_values(&l),
            request_bytes: metrics.request_bytes.with_label_values(&l),
            response_bytes: metrics.response_bytes.with_label_values(&l),
            upstream_duration: OnceLock::new(),
            requests: std::array::from_fn(|_| OnceLock::new()),
            labels,
        }
    }

    pub fn requests(&self, metrics: &ProxyMetrics, method: &Method, status: StatusCode) -> &IntCounter {
        let (m, c) = (method_index(method), code_index(status));
        self.requests[m * CODES.len() + c].get_or_init(|| {
            let l = &self.labels;
            metrics.requests.with_label_values(&[
                &*l.namespace,
                &*l.ingress,
                &*l.service,
                METHODS[m],
                CODES[c],
            ])
        })
    }

    pub fn upstream_duration(&self, metrics: &ProxyMetrics) -> &Histogram {
        self.upstream_duration.get_or_init(|| {
            let l = &self.labels;
            metrics
                .upstream_duration
                .with_label_values(&[&*l.namespace, &*l.ingress, &*l.service])
        })
    }
}

const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE", "other",
];
const CODES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(m: &Method) -> usize {
    match *m {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::PATCH => 5,
        Method::OPTIONS => 6,
        Method::CONNECT => 7,
        Method::TRACE => 8,
        _ => 9,
    }
}

fn code_index(s: StatusCode) -> usize {
    match s.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

#[cfg(test)]
pub(crate) fn method_label(m: &Method) -> &'static str {
    METHODS[method_index(m)]
}

#[cfg(test)]
pub(crate) fn code_class(s: StatusCode) -> &'static str {
    CODES[code_index(s)]
}

/// Classifies an error a downstream connection ended with.
pub(crate) fn downstream_error_reason(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let Some(h) = e.downcast_ref::<hyper::Error>() else {
        return "other";
    };
    if h.is_parse_too_large() {
        "too_large"
    } else if h.is_parse() {
        "parse"
    } else if h.is_timeout() {
        "timeout"
    } else if h.is_incomplete_message() {
        "incomplete"
    } else {
        "other"
    }
}

/// Classifies a failed TLS handshake into a small fixed set of reasons.
pub(crate) fn tls_error_reason(e: &std::io::Error) -> &'static str {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls {
            rustls::Error::PeerIncompatible(_) => "peer_incompatible",
            rustls::Error::NoApplicationProtocol => "no_application_protocol",
            rustls::Error::AlertReceived(_) => "alert_received",
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                "invalid_message"
            }
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => "certificate",
            rustls::Error::PeerMisbehaved(_) => "peer_misbehaved",
            _ => "other",
        };
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::ConnectionReset
        | std::io::ErrorKind::BrokenPipe => "closed",
        std::io::ErrorKind::InvalidData => "invalid_message",
        _ => "other",
    }
}

/// The served snapshot's generation, read at scrape time (swaps are counted by the controller,
/// `ferrite_ingress_route_table_swaps_total`); each scrape also prunes the series of Ingresses and
/// Services that left the route table.
struct SnapshotCollector {
    snapshot: Arc<SharedSnapshot>,
    metrics: ProxyMetrics,
    generation: IntGauge,
    descs: Vec<Desc>,
}

impl SnapshotCollector {
    fn new(snapshot: Arc<SharedSnapshot>, metrics: ProxyMetrics) -> prometheus::Result<Self> {
        let generation = IntGauge::new(
            "ferrite_ingress_snapshot_generation",
            "Generation of the snapshot (route table, endpoints, certificates) being served.",
        )?;
        let descs: Vec<Desc> = generation.desc().into_iter().cloned().collect();
        Ok(SnapshotCollector {
            snapshot,
            metrics,
            generation,
            descs,
        })
    }
}

impl Collector for SnapshotCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let snapshot = self.snapshot.load();
        self.metrics.prune(snapshot.routes());
        self.generation
            .set(i64::try_from(snapshot.generation()).unwrap_or(i64::MAX));
        self.generation.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_label(&Method::from_bytes(b"PROPFIND").expect("m")),
            "other"
        );
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(code_class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(code_class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(code_class(StatusCode::GATEWAY_TIMEOUT), "5xx");
        let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof");
        assert_eq!(tls_error_reason(&eof), "closed");
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
        );
        assert_eq!(tls_error_reason(&tls), "peer_incompatible");
    }

    #[test]
    fn registers_once_and_scrapes() {
        let registry = Registry::new();
        let shared = Arc::new(SharedSnapshot::new(super::super::Snapshot::new(
            crate::routes::RouteTable::empty(),
            super::super::self_signed_default().expect("cert"),
        )));
        ProxyMetrics::register(&registry, shared.clone()).expect("register");
        assert!(
            ProxyMetrics::register(&registry, shared.clone()).is_err(),
            "twice"
        );
        let mut next = super::super::Snapshot::new(
            crate::routes::RouteTable::empty(),
            super::super::self_signed_default().expect("cert"),
        );
        next.set_generation(7);
        shared.store(next);
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf)
            .expect("encode");
        let text = String::from_utf8(buf).expect("utf-8");
        assert!(text.contains("ferrite_ingress_snapshot_generation 7"), "{text}");
    }
}
