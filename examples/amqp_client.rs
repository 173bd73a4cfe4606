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
//! `call` publishes the command to the default exchange with the command queue as routing key,
//! persistent, `content_type: application/json`, a fresh `correlation_id`, a `message_id` (a new
//! UUIDv4 unless `--message-id` gives one, which makes a repeated call idempotent) and
//! `reply_to` set to an exclusive, server-named queue; it then waits up to 10 s for the reply
//! and prints it. It exits 0 on `"status": "ok"`, 1 on an error reply or no reply.
//!
//! `watch` binds an exclusive, server-named queue to the events exchange with the routing key
//! `session.closed` and prints each event (its `message_id` and JSON body) until Ctrl-C. The
//! service declares the exchange at start, so start the service first.
//!
//! Environment (the service's names and defaults):
//!
//! ```text
//! AMQP_URL                 amqp://guest:guest@127.0.0.1:5672/%2f
//! SESSION_COMMAND_QUEUE    session.commands
//! SESSION_EVENTS_EXCHANGE  session.events
//! ```

use std::{env, process::ExitCode, time::Duration};

use futures_util::StreamExt;
use lapin::{
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
};
use serde_json::Value;

/// How long `call` waits for the reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The routing key of every `SessionClosed` event.
const EVENTS_ROUTING_KEY: &str = "session.closed";

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
    let connection = match Connection::connect(
        &amqp_url,
        ConnectionProperties::default().with_connection_name("amqp_client example".into()),
    )
    .await
    {
        Ok(connection) => connection,
        Err(error) => {
            // The URL is not printed: it may carry a password.
            eprintln!("cannot connect to RabbitMQ (AMQP_URL): {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match mode {
        Mode::Call {
            command,
            message_id,
        } => {
            let queue = setting("SESSION_COMMAND_QUEUE", "session.commands");
            call(&connection, &queue, &command, message_id).await
        }
        Mode::Watch => {
            let exchange = setting("SESSION_EVENTS_EXCHANGE", "session.events");
            watch(&connection, &exchange).await.map(|()| true)
        }
    };
    let _ = connection.close(200, "bye".into()).await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Declares an exclusive queue with a server-chosen name (deleted when the connection closes)
/// and consumes it without acks.
async fn private_queue(channel: &Channel, consumer_tag: &str) -> Result<(String, Consumer), Error> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?
        .name()
        .to_string();
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            consumer_tag.into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue, consumer))
}

/// Sends one command and prints its reply; `Ok(true)` when the reply's status is `ok`.
async fn call(
    connection: &Connection,
    command_queue: &str,
    command: &Value,
    message_id: Option<String>,
) -> Result<bool, Error> {
    let channel = connection.create_channel().await?;
    let (reply_queue, mut replies) = private_queue(&channel, "replies").await?;
    // Confirms tell us the broker took the command (an unroutable one is confirmed too, so a
    // missing command queue shows up as a reply timeout).
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let correlation_id = uuid::Uuid::new_v4().to_string();
    let message_id = message_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id(correlation_id.as_str().into())
        .with_message_id(message_id.as_str().into());
    let body = serde_json::to_vec(command)?;
    let confirmation = channel
        .basic_publish(
            "".into(),
            command_queue.into(),
            BasicPublishOptions::default(),
            &body,
            properties,
        )
        .await?
        .await?;
    if let Confirmation::Nack(_) = confirmation {
        return Err("the broker refused the command".into());
    }
    println!("sent to {command_queue}: message_id={message_id} correlation_id={correlation_id}");

    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    loop {
        let delivery = match tokio::time::timeout_at(deadline, replies.next()).await {
            Err(_) => {
                return Err(format!(
                    "no reply within {} s: is session-manager consuming {command_queue}?",
                    REPLY_TIMEOUT.as_secs()
                )
                .into())
            }
            Ok(None) => return Err("the reply queue was closed".into()),
            Ok(Some(delivery)) => delivery?,
        };
        let replied_to = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.as_str());
        if replied_to != Some(correlation_id.as_str()) {
            continue; // Not ours (cannot happen on a private queue, but cheap to check).
        }
        let reply: Value = serde_json::from_slice(&delivery.data)?;
        println!("reply (correlation_id={correlation_id}):");
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(reply["status"] == "ok");
    }
}

/// Prints every `SessionClosed` event published from now on, until Ctrl-C.
async fn watch(connection: &Connection, exchange: &str) -> Result<(), Error> {
    let channel = connection.create_channel().await?;
    let (queue, mut events) = private_queue(&channel, "events").await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.into(),
            EVENTS_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|error| {
            format!("cannot bind to exchange {exchange} (is session-manager running?): {error}")
        })?;
    println!("watching {exchange} ({EVENTS_ROUTING_KEY}); Ctrl-C to stop");
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let delivery = tokio::select! {
            _ = &mut interrupted => return Ok(()),
            delivery = events.next() => delivery,
        };
        let Some(delivery) = delivery else {
            return Err("the event consumer was cancelled".into());
        };
        let delivery = delivery?;
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or("-", |id| id.as_str());
        println!("event message_id={message_id}");
        match serde_json::from_slice::<Value>(&delivery.data) {
            Ok(body) => println!("{}", serde_json::to_string_pretty(&body)?),
            Err(_) => println!("{}", String::from_utf8_lossy(&delivery.data)),
        }
    }
}
