//! Standard reconcile metrics, one set per controller:
//!
//! - `ferrite_<controller>_reconcile_total{result="success|error|skipped"}`
//! - `ferrite_<controller>_reconcile_errors_total{reason}`
//! - `ferrite_<controller>_reconcile_duration_seconds` (histogram)

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use std::time::Duration;

/// Reconcile metrics of one controller.
#[derive(Clone, Debug)]
pub struct ReconcileMetrics {
    total: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
}

impl ReconcileMetrics {
    /// Registers the metrics of `controller` (e.g. `lb`) in `registry`.
    pub fn register(registry: &Registry, controller: &str) -> prometheus::Result<Self> {
        let m = Self::new(controller)?;
        m.register_in(registry)?;
        Ok(m)
    }

    /// Creates the metrics of `controller` without registering them.
    pub fn new(controller: &str) -> prometheus::Result<Self> {
        let p = format!("ferrite_{controller}");
        let total = IntCounterVec::new(
            Opts::new(
                format!("{p}_reconcile_total"),
                "Reconciles by result (success, error, skipped).",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                format!("{p}_reconcile_errors_total"),
                "Failed reconciles by reason.",
            ),
            &["reason"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                format!("{p}_reconcile_duration_seconds"),
                "Time spent in one reconcile.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        // Make the families visible from the first scrape, before any reconcile.
        for r in ["success", "error", "skipped"] {
            total.with_label_values(&[r]);
        }
        Ok(Self {
            total,
            errors,
            duration,
        })
    }

    /// Registers the metrics in `registry`.
    pub fn register_in(&self, registry: &Registry) -> prometheus::Result<()> {
        registry.register(Box::new(self.total.clone()))?;
        registry.register(Box::new(self.errors.clone()))?;
        registry.register(Box::new(self.duration.clone()))
    }

    /// Records a successful reconcile.
    pub fn success(&self, took: Duration) {
        self.total.with_label_values(&["success"]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a failed reconcile.
    pub fn error(&self, reason: &str, took: Duration) {
        self.total.with_label_values(&["error"]).inc();
        self.errors.with_label_values(&[reason]).inc();
        self.duration.observe(took.as_secs_f64());
    }

    /// Records a reconcile skipped because this replica is not the leader.
    pub fn skipped(&self) {
        self.total.with_label_values(&["skipped"]).inc();
    }
}
