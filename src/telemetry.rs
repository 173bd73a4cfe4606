//! Logging: `tracing` to stdout, filtered by `RUST_LOG` (default `info`). Nothing in the service
//! logs a request body, a token or a URL with credentials.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .init();
}
