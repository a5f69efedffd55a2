//! Structured logging with tracing: plain for people, JSON for collectors.

use crate::cli::LogFormat;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber. Calling it twice is harmless (the second call does nothing).
pub fn init(format: LogFormat, filter: &str) -> crate::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| crate::Error::Option(format!("--log-level {filter:?} is not a valid filter: {e}")))?;
    let registry = tracing_subscriber::registry().with(filter);
    let res = match format {
        LogFormat::Plain => registry.with(fmt::layer().with_target(true)).try_init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true)).try_init(),
    };
    // Already initialised (tests start several apps in one process): keep the first.
    let _ = res;
    Ok(())
}
