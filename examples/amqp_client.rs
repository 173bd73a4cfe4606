//! A small AMQP client for session-manager: sends one command and prints its reply, or prints
//! the `SessionClosed` events as they are published. It talks to RabbitMQ only, never to the
//! service directly, so a running instance must be consuming the command queue.
//!
//! # Usage
//!
//! ```text
//! cargo run --example amqp_client -- call '{"type": "CreateSession", "user_id": "alice", "device_id": "phone"}'
//! cargo run --example amqp_client -- call --message-id my-key-1 '{"type": "DeleteSession", "session_id": "…"}'
//! cargo run --example amqp_client -- watch
//! ```
//!
//! Both use the client crate, `session-manager-client`. `call` publishes the command with
//! [`AmqpClient::call_raw`]: to the default exchange with the command queue as routing key,
//! persistent, `content_type: application/json`, a fresh `correlation_id`, a `message_id` (a new
//! UUIDv4 unless `--message-id` gives one, which makes a repeated call idempotent) and
//! `reply_to` set to the client's exclusive, server-named queue, under a publisher confirm; it
//! then waits up to 10 s for the reply (publishing again, same `message_id`, up to twice) and
//! prints it. It exits 0 on `"status": "ok"`, 1 on an error reply or no reply.
//!
//! `watch` subscribes with [`Subscriber`] (an exclusive, server-named queue bound to the events
//! exchange with the routing key `session.closed`) and prints each event once (repeats, which
//! carry the same id, are dropped) until Ctrl-C. The service declares the exchange at start, so
//! start the service first.
//!
//! Environment (the service's names and defaults):
//!
//! ```text
//! AMQP_URL                 amqp://guest:guest@127.0.0.1:5672/%2f
//! SESSION_COMMAND_QUEUE    session.commands
//! SESSION_EVENTS_EXCHANGE  session.events
//! ```

use std::{env, process::ExitCode, time::Duration};

use serde_json::Value;
use session_manager_client::{amqp::AmqpClient, events::Subscriber};

/// How long `call` waits for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

type Error = Box<dyn std::error::Error + Send + Sync>;

const USAGE: &str = "usage:
  amqp_client call [--message-id <id>] '<command json>'
  amqp_client watch";

/// What the command line asks for.
enum Mode {
    Call {
        command: Value,
        message_id: Option<String>,
    },
    Watch,
}

fn parse_args(args: &[String]) -> Result<Mode, String> {
    match args {
        [mode] if mode == "watch" => Ok(Mode::Watch),
        [mode, rest @ ..] if mode == "call" => {
            let (message_id, json) = match rest {
                [flag, id, json] if flag == "--message-id" => (Some(id.clone()), json),
                [json] => (None, json),
                _ => return Err(USAGE.into()),
            };
            let command = serde_json::from_str(json)
                .map_err(|error| format!("the command is not JSON: {error}\n{USAGE}"))?;
            Ok(Mode::Call {
                command,
                message_id,
            })
        }
        _ => Err(USAGE.into()),
    }
}

fn setting(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let mode = match parse_args(&args) {
        Ok(mode) => mode,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let amqp_url = setting("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let result = match mode {
        Mode::Call {
            command,
            message_id,
        } => {
            let queue = setting("SESSION_COMMAND_QUEUE", "session.commands");
            call(&amqp_url, &queue, &command, message_id).await
        }
        Mode::Watch => {
            let exchange = setting("SESSION_EVENTS_EXCHANGE", "session.events");
            watch(&amqp_url, &exchange).await.map(|()| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            // The URL is never printed: it may carry a password.
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Sends one command and prints its reply; `Ok(true)` when the reply's status is `ok`.
async fn call(
    amqp_url: &str,
    command_queue: &str,
    command: &Value,
    message_id: Option<String>,
) -> Result<bool, Error> {
    let client = AmqpClient::connect(amqp_url, command_queue)
        .await
        .map_err(|error| format!("cannot connect to RabbitMQ (AMQP_URL): {error}"))?
        .with_timeout(REPLY_TIMEOUT);
    let message_id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    println!("sending to {command_queue}: message_id={message_id}");
    let reply = client
        .call_raw(&serde_json::to_vec(command)?, Some(&message_id))
        .await
        .map_err(|error| format!("{error}: is session-manager consuming {command_queue}?"))?;
    let reply: Value = reply.json()?;
    println!("reply:");
    println!("{}", serde_json::to_string_pretty(&reply)?);
    Ok(reply["status"] == "ok")
}

/// Prints every `SessionClosed` event published from now on, each once, until Ctrl-C.
async fn watch(amqp_url: &str, exchange: &str) -> Result<(), Error> {
    let mut events = Subscriber::connect(amqp_url, exchange)
        .await
        .map_err(|error| {
            format!("cannot subscribe to {exchange} (is session-manager running?): {error}")
        })?;
    println!("watching {exchange}; Ctrl-C to stop");
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let event = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            event = events.next() => event?,
        };
        println!("event id={}", event.id);
        println!("{}", serde_json::to_string_pretty(&event)?);
    }
}
