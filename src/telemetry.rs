//! Logging: `tracing` to stdout, filtered by `RUST_LOG` (default `info`), and [`Chain`] to log
//! an error with its causes. Nothing in the service logs a request body, a token or a URL with
//! credentials, at any level; what other crates log is capped (see [`libraries_capped`]), and a
//! panic is logged by its place, not its message (see [`log_panics`]).

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
                .with_filter(asked.and(libraries_capped())),
        )
        .init();
    log_panics();
    Ok(())
}

/// The cap on what other crates log, whatever `RUST_LOG` asks: their events pass up to `warn`
/// only, and two of lapin's not at all. At lower levels they print what passes through them:
/// lapin every AMQP frame and RPC (message bodies, and so tokens), h2 and hyper headers (bearer
/// tokens), redis-rs values it could not convert, rustls handshake messages. At `warn`, lapin
/// prints a message the broker returned (`lapin::returned_messages`: the whole reply, tokens
/// included; the worker logs its own line naming the queue, correlation id and command type)
/// and a delivery it could not hand to a dropped consumer (`lapin::consumer`, at `error`). Both
/// filters must let an event pass, so the cap only ever lowers a level, never raises one above
/// what `RUST_LOG` asks; the service's own events (`session_manager`) are not capped.
pub fn libraries_capped() -> Targets {
    Targets::new()
        .with_default(LevelFilter::WARN)
        .with_target("session_manager", LevelFilter::TRACE)
        .with_target("lapin::returned_messages", LevelFilter::OFF)
        .with_target("lapin::consumer", LevelFilter::OFF)
}

/// Replaces the default panic hook, which prints the panic's message to stderr: a message made
/// with `format!` (an `expect` on an error, an assertion) can carry what the code held, a
/// session's tokens included. The hook logs where the panic happened, and its message only when
/// it is a literal of the code (a `&'static str` payload), which holds nothing from run time.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|place| format!("{}:{}", place.file(), place.line()));
        let message = info.payload().downcast_ref::<&'static str>().copied();
        tracing::error!(
            location = location.as_deref().unwrap_or("unknown"),
            message = message.unwrap_or("(formatted at run time; not shown)"),
            "panicked"
        );
    }));
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

    #[test]
    fn other_crates_are_capped_at_warn_and_the_payload_printing_targets_are_off() {
        use tracing::Level;
        let cap = libraries_capped();
        let passes = |target: &str, level: Level| cap.would_enable(target, &level);
        assert!(passes("session_manager::transport::amqp", Level::TRACE));
        assert!(passes("session_manager::audit", Level::INFO));
        for library in [
            "lapin::channels",
            "redis::aio",
            "h2::codec",
            "hyper",
            "rustls::conn",
        ] {
            assert!(!passes(library, Level::INFO), "{library}");
            assert!(passes(library, Level::WARN), "{library}");
        }
        for silenced in ["lapin::returned_messages", "lapin::consumer"] {
            assert!(!passes(silenced, Level::ERROR), "{silenced}");
        }
    }

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
