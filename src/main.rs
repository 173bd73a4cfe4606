//! The `session-manager` binary: reads settings, sets up logging, runs one instance until
//! SIGTERM or SIGINT. The only place that uses `anyhow`.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use mimalloc::MiMalloc;
use session_manager::{
    config::{Cli, Settings, Task},
    startup::{open_store, Application},
    store::RewrapReport,
    telemetry,
};

#[global_allocator]
static ALLOCATOR: MiMalloc = MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => error.exit(), // --help, --version
        Err(error) => {
            let rendered = error.to_string();
            let first = rendered.lines().next().unwrap_or_default();
            eprintln!(
                "session-manager: bad configuration: {}",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    if cli.healthcheck {
        return healthcheck(cli.service_listen_addr, cli.service_port);
    }
    let task = cli.task;
    let settings = match Settings::try_from(cli) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("session-manager: bad configuration: {error}");
            return ExitCode::from(2);
        }
    };
    if let Err(error) = telemetry::init() {
        eprintln!("session-manager: bad configuration: {error}");
        return ExitCode::from(2);
    }
    if task == Some(Task::Rewrap) && settings.keyring.is_empty() {
        eprintln!("session-manager: bad configuration: SESSION_ENCRYPTION_KEY: rewrap needs the keyring to seal under");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("session-manager: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let done = match task {
        Some(Task::Rewrap) => runtime.block_on(rewrap(settings)),
        None => runtime.block_on(run(settings)),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let application = Application::build(settings)
        .await
        .context("session-manager could not start")?;
    application
        .run_until_stopped(shutdown_signal())
        .await
        .context("session-manager stopped with an error")
}

/// `session-manager rewrap`: re-seals under the ring's first key, with progress on stderr about
/// once a second and the count of values per key id at the end.
async fn rewrap(settings: Settings) -> anyhow::Result<()> {
    let sealing_id = settings.keyring.sealing_id().unwrap_or_default().to_owned();
    let store = open_store(&settings)
        .await
        .context("rewrap could not connect to Redis")?;
    eprintln!("rewrap: re-sealing under key id {sealing_id:?}");
    let mut last = std::time::Instant::now();
    let report = store
        .rewrap(|report| {
            if last.elapsed() >= Duration::from_secs(1) {
                last = std::time::Instant::now();
                eprintln!(
                    "rewrap: {} keys scanned, {} values re-sealed",
                    report.keys_scanned, report.values_resealed
                );
            }
        })
        .await
        .context("rewrap stopped; run it again to finish")?;
    print_report(&report);
    if !report.unknown_keys.is_empty() || report.keys_skipped > 0 || report.broken > 0 {
        anyhow::bail!("rewrap left values as they were (see above); run it again once resolved");
    }
    Ok(())
}

fn print_report(report: &RewrapReport) {
    eprintln!(
        "rewrap: done: {} keys scanned, {} values re-sealed",
        report.keys_scanned, report.values_resealed
    );
    for (key_id, count) in &report.by_key {
        eprintln!("rewrap: values under {key_id}: {count}");
    }
    for (key_id, count) in &report.unknown_keys {
        eprintln!("rewrap: values under key id {key_id:?}, which the ring does not hold: {count}");
    }
    if report.broken > 0 {
        eprintln!(
            "rewrap: values in the sealed form that do not open (damaged, or moved): {}",
            report.broken
        );
    }
    if report.read_records_deleted > 0 {
        eprintln!(
            "rewrap: records of reads deleted (written before reads went unrecorded): {}",
            report.read_records_deleted
        );
    }
    if report.session_copies_deleted > 0 {
        eprintln!(
            "rewrap: copies of a session deleted from update records (older versions kept them): {}",
            report.session_copies_deleted
        );
    }
    if report.keys_skipped > 0 {
        eprintln!(
            "rewrap: keys changed by instances through every attempt: {}",
            report.keys_skipped
        );
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested");
}

/// `--healthcheck`: asks this machine's instance for /healthz (the image has no curl), on the
/// address it listens on (`SERVICE_LISTEN_ADDR`), or on loopback when it listens on every one.
fn healthcheck(listen: Option<IpAddr>, port: u16) -> ExitCode {
    let address = match listen {
        Some(IpAddr::V6(any)) if any.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        Some(address) if !address.is_unspecified() => address,
        _ => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let ask = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect((address, port))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200"))
    };
    match ask() {
        Ok(true) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    }
}
