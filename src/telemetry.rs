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

/// Displays an error followed by each of its sources: `outer: inner: innermost`. A source whose
/// text the error before it already ends with is not repeated (redis-rs's errors print their I/O
/// cause, which is also their source).
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.0.to_string();
        f.write_str(&shown)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !shown.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            shown = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn chain(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .expect("at least one layer")
    }

    #[test]
    fn a_chain_shows_every_cause_once() {
        let error = chain(&["Redis cannot be reached", "timed out", "os error 110"]);
        assert_eq!(
            Chain(&error).to_string(),
            "Redis cannot be reached: timed out: os error 110"
        );
        // redis-rs prints its I/O cause and also gives it as source.
        let error = chain(&["unavailable", "Io: bad certificate", "bad certificate"]);
        assert_eq!(
            Chain(&error).to_string(),
            "unavailable: Io: bad certificate"
        );
    }
}
