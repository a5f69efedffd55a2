//! Small helpers: quantiles, /proc RSS, the shared HTTP GET and a Prometheus text-format reader.

pub use ferrite_e2e::http_get;
use std::time::Duration;

/// Nearest-rank quantile `q` (0..=1) of `values`; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return None;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// `VmRSS` of `pid` in kB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Sum of the samples `name` whose labels include every `labels` pair (series that differ in other
/// labels, e.g. `kind` of the reconcile metrics, are added up); `None` when there is none.
pub fn sample(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let Some(rest) = l.strip_prefix(name) else {
                return false;
            };
            (rest.starts_with('{') || rest.starts_with(' '))
                && labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(None, |sum, v| Some(sum.unwrap_or(0.0) + v))
}

/// Cumulative buckets `(le, count)` of histogram `name`, `+Inf` (parsed as infinity) last; series that
/// differ in other labels (e.g. `kind`) are added up per `le`.
pub fn buckets(body: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut out: Vec<(f64, f64)> = Vec::new();
    for (le, count) in body.lines().filter_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        let le = rest.split("le=\"").nth(1)?.split('"').next()?;
        let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
        Some((le.parse::<f64>().ok()?, count))
    }) {
        match out.iter_mut().find(|(l, _)| *l == le) {
            Some((_, c)) => *c += count,
            None => out.push((le, count)),
        }
    }
    out
}

/// Upper bound (bucket `le`) of quantile `q` of the observations between two scrapes.
pub fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, c)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map(|(_, c)| *c)
                .unwrap_or(0.0);
            (*le, c - b)
        })
        .collect();
    let total = sample_total(&delta)?;
    delta.iter().find(|(_, c)| *c >= q * total).map(|(le, _)| *le)
}

fn sample_total(delta: &[(f64, f64)]) -> Option<f64> {
    // The `+Inf` bucket counts every observation.
    delta.last().map(|(_, c)| *c).filter(|c| *c > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_millis(10)));
        assert_eq!(quantile(&v, 0.9), Some(Duration::from_millis(18)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(20)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn prometheus_text_is_read() {
        let body = "# HELP x\nferrite_lb_reconcile_total{kind=\"IPPool\",result=\"success\"} 2\n\
            ferrite_lb_reconcile_total{kind=\"Service\",result=\"success\"} 40\n\
            ferrite_lb_reconcile_total{kind=\"Service\",result=\"error\"} 1\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"IPPool\",le=\"0.001\"} 1\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"IPPool\",le=\"0.01\"} 2\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"IPPool\",le=\"+Inf\"} 2\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"Service\",le=\"0.001\"} 9\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"Service\",le=\"0.01\"} 38\n\
            ferrite_lb_reconcile_duration_seconds_bucket{kind=\"Service\",le=\"+Inf\"} 41\n\
            ferrite_lb_reconcile_duration_seconds_sum{kind=\"IPPool\"} 0.05\n\
            ferrite_lb_reconcile_duration_seconds_sum{kind=\"Service\"} 0.15\n";
        assert_eq!(
            sample(body, "ferrite_lb_reconcile_total", &[("result", "success")]),
            Some(42.0)
        );
        assert_eq!(
            sample(body, "ferrite_lb_reconcile_duration_seconds_sum", &[]),
            Some(0.2)
        );
        assert_eq!(
            sample(
                body,
                "ferrite_lb_reconcile_total",
                &[("kind", "Service"), ("result", "success")]
            ),
            Some(40.0)
        );
        assert_eq!(
            sample(body, "ferrite_lb_reconcile_total", &[("result", "skipped")]),
            None
        );
        let b = buckets(body, "ferrite_lb_reconcile_duration_seconds");
        assert_eq!(&b[..2], &[(0.001, 10.0), (0.01, 40.0)]);
        assert!(b[2].0.is_infinite() && b[2].1 == 43.0);
        assert_eq!(bucket_quantile(&[], &b, 0.5), Some(0.01));
        assert_eq!(bucket_quantile(&[], &b, 0.2), Some(0.001));
    }
}
