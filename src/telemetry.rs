//! Logging: `tracing` to stdout, filtered by `RUST_LOG` (default `info`), and [`Chain`] to log
//! an error with its causes. Nothing in the service logs a request body, a token or a URL with
//! credentials.

use std::{
    fmt,
    io::{stdout, IsTerminal},
};

use tracing_subscriber::{
    filter::{FilterExt, LevelFilter, Targets},
    layer::SubscriberExt,
    util::SubscriberInitExt,
    EnvFilter, Layer,
};

/// Installs the global subscriber; call once, from `main`. A `RUST_LOG` that cannot be parsed
/// is an error (naming the variable), not silently replaced.
pub fn init() -> Result<(), crate::config::ConfigError> {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let asked = EnvFilter::try_new(&directives).map_err(|error| crate::config::ConfigError {
        variable: "RUST_LOG",
        message: format!("is not a valid log filter: {error}"),
    })?;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(stdout().is_terminal())
                .with_target(true)
                .with_filter(asked.and(frames_capped())),
        )
        .init();
    Ok(())
}

/// lapin logs every AMQP frame at trace level, message bodies (and so tokens) included: its
/// events pass only up to debug, whatever `RUST_LOG` asks. Both filters must let an event pass,
/// so the cap only ever lowers lapin's level, never raises it above what `RUST_LOG` asks.
fn frames_capped() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_target("lapin", LevelFilter::DEBUG)
        .with_target("amq_protocol", LevelFilter::DEBUG)
}

/// Displays an error followed by each of its sources: `outer: inner: innermost`.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}
