//! Graceful shutdown: SIGTERM or SIGINT cancels one token that every task of the process watches.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
pub fn on_signals() -> crate::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| crate::Error::Setup(format!("SIGTERM: {e}")))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| crate::Error::Setup(format!("SIGINT: {e}")))?;
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
            _ = t.cancelled() => {}
        }
        t.cancel();
    });
    Ok(token)
}
