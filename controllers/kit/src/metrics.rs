//! Standard reconcile metrics, one set per controller binary, labelled by the kind reconciled so one
//! binary that runs several controllers (ferrite-lb: IPPools and Services) counts them apart:
//!
//! - `ferrite_<controller>_reconcile_total{kind, result="success|error|skipped"}`
//! - `ferrite_<controller>_reconcile_errors_total{kind, reason}`
//! - `ferrite_<controller>_reconcile_duration_seconds{kind}` (histogram)
//!
//! `kind` is the Kubernetes kind (`Service`, `IPPool`); [`crate::runner::run`] fills it from the
//! controller's `K::kind` and makes the kind's series visible (at 0) as soon as it starts. Two
//! controllers of the same kind in one binary set their own label first
//! (`opts.metrics = opts.metrics.for_kind("Service-dns")`); the runner keeps a label already set.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::{sync::Arc, time::Duration};

/// Reconcile metrics of one controller binary, recording for one kind (see [`ReconcileMetrics::for_kind`]).
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    total: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    kind: Arc<str>,
}

impl ReconcileMetrics {
    /// Registers the metrics of `controller` (e.g. `lb`) in `registry`.
    pub fn register(registry: &Registry, controller: &str) -> prometheus::Result<Self> {
        let m = Self::new(controller)?;
        m.register_in(registry)?;
        Ok(m)
    }

    /// Creates the metrics of `controller` without registering them. Until [`ReconcileMetrics::for_kind`]
    /// is called, records carry `kind=""`.
    pub fn new(controller: &str) -> prometheus::Result<Self> {
        let p = format!("ferrite_{controller}");
        let total = IntCounterVec::new(
            Opts::new(
                format!("{p}_reconcile_total"),
                "Reconciles by kind and result (success, error, skipped).",
            ),
            &["kind", "result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                format!("{p}_reconcile_errors_total"),
                "Failed reconciles by kind and reason.",
            ),
            &["kind", "reason"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                format!("{p}_reconcile_duration_seconds"),
                "Time spent in one reconcile, by kind.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )?;
        Ok(Self {
            total,
            errors,
            duration,
            kind: Arc::from(""),
        })
    }

    /// The same metrics recording for `kind` (e.g. `Service`); its series appear at once, at 0.
    pub fn for_kind(&self, kind: &str) -> Self {
        for r in ["success", "error", "skipped"] {
            self.total.with_label_values(&[kind, r]);
        }
        self.duration.with_label_values(&[kind]);
        Self {
            kind: Arc::from(kind),
            ..self.clone()
        }
    }

    /// The kind this handle records for.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Registers the metrics in `registry`.
    pub fn register_in(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.total.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.duration.clone()))
    }

    /// Records a successful reconcile.
    pub fn success(&self, took: Duration) {
        self.total.with_label_values(&[&*self.kind, "success"]).inc();
        self.duration
            .with_label_values(&[&*self.kind])
            .observe(took.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn error(&self, reason: &str, took: Duration) {
        self.total.with_label_values(&[&*self.kind, "error"]).inc();
        self.errors.with_label_values(&[&*self.kind, reason]).inc();
        self.duration
            .with_label_values(&[&*self.kind])
            .observe(took.as_secs_f64());
    }

    /// Records a reconcile skipped because this replica is not the leader.
    pub fn skipped(&self) {
        self.total.with_label_values(&[&*self.kind, "skipped"]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(registry: &Registry) -> String {
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf)
            .expect("encodes");
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn two_kinds_in_one_binary_are_counted_apart() {
        let registry = Registry::new();
        let m = ReconcileMetrics::register(&registry, "t").expect("registers");
        let services = m.for_kind("Service");
        let pools = m.for_kind("IPPool");
        assert_eq!(services.kind(), "Service");
        let before = scrape(&registry);
        for want in [
            "ferrite_t_reconcile_total{kind=\"IPPool\",result=\"skipped\"} 0",
            "ferrite_t_reconcile_total{kind=\"Service\",result=\"success\"} 0",
            "ferrite_t_reconcile_duration_seconds_count{kind=\"Service\"} 0",
        ] {
            assert!(
                before.contains(want),
                "visible before the first reconcile: {want}\n{before}"
            );
        }
        services.success(Duration::from_millis(3));
        services.success(Duration::from_millis(3));
        services.error("PoolExhausted", Duration::from_millis(1));
        pools.skipped();
        let after = scrape(&registry);
        for want in [
            "ferrite_t_reconcile_total{kind=\"Service\",result=\"success\"} 2",
            "ferrite_t_reconcile_total{kind=\"Service\",result=\"error\"} 1",
            "ferrite_t_reconcile_total{kind=\"IPPool\",result=\"success\"} 0",
            "ferrite_t_reconcile_total{kind=\"IPPool\",result=\"skipped\"} 1",
            "ferrite_t_reconcile_errors_total{kind=\"Service\",reason=\"PoolExhausted\"} 1",
            "ferrite_t_reconcile_duration_seconds_count{kind=\"Service\"} 3",
            "ferrite_t_reconcile_duration_seconds_count{kind=\"IPPool\"} 0",
        ] {
            assert!(after.contains(want), "{want}\n{after}");
        }
    }
}
