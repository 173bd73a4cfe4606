//! The typed client of session-manager: what a service that keeps its users' sessions there
//! uses to send commands over AMQP and wait for their replies, to follow the `SessionClosed`
//! events, and to call the REST front end. It depends on the wire contract only, never on the
//! service's code.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let amqp_url = session_manager_testkit::LOCAL_AMQP_URL;
//! # use session_manager_testkit::{Instance, isolated_settings};
//! # let instance = Instance::start(isolated_settings()).await;
//! # let command_queue = instance.settings().command_queue.clone();
//! # let events_exchange = instance.settings().events_exchange.clone();
//! use session_manager_client::{amqp::AmqpClient, command::*, events::{CloseReason, Subscriber}};
//!
//! let mut events = Subscriber::connect(amqp_url, &events_exchange).await?;
//! let client = AmqpClient::connect(amqp_url, &command_queue).await?;
//!
//! let create = CreateSession::new("alice", "phone").access_token("secret");
//! let SessionCreated { session_id } = client.call(&create).await?;
//! let session = client.call(&GetSession::new(&session_id)).await?;
//! assert_eq!(session.device_id, "phone");
//! client.call(&DeleteSession::new(&session_id)).await?;
//!
//! let closed = events.next().await?;
//! assert_eq!((closed.data.session_id, closed.data.reason), (session_id, CloseReason::Deleted));
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! - [`command`]: the six commands, their results and the error reply, as serde types that match
//!   `schemas/`; [`command::Request`] ties each command to its result.
//! - [`amqp`]: [`amqp::AmqpClient`] (calls with replies, raw publishes, replies nobody waited
//!   for) and [`amqp::PrivateQueue`], the exclusive queue replies and events are read from.
//! - [`events`]: [`events::Subscriber`], the `SessionClosed` events without repeats, or raw.
//! - [`rest`]: [`rest::RestClient`], the same calls over HTTP.

#![warn(missing_docs)]

pub mod amqp;
pub mod command;
pub mod events;
pub mod rest;

/// Checks messages against the repository's `schemas/`, so that types and schemas cannot drift
/// apart.
#[cfg(test)]
mod schemas {
    use std::{collections::HashMap, sync::OnceLock};

    use serde_json::Value;

    /// Asserts that `instance` is valid against `schemas/<schema>` (whose `$ref`s reach the
    /// other files by their `$id`s).
    pub fn assert_valid(schema: &str, instance: &Value) {
        static FILES: OnceLock<HashMap<String, Value>> = OnceLock::new();
        let files = FILES.get_or_init(|| {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");
            std::fs::read_dir(dir)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|e| e == "json"))
                .map(|path| {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let schema: Value = serde_json::from_str(&text).unwrap();
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    (name, schema)
                })
                .collect()
        });
        let resources = files.iter().map(|(name, schema)| {
            let uri = format!("https://session-manager.example/schemas/{name}");
            (
                uri,
                jsonschema::Resource::from_contents(schema.clone()).unwrap(),
            )
        });
        let validator = jsonschema::options()
            .with_resources(resources)
            .build(&files[schema])
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(
            errors.is_empty(),
            "{instance} does not match {schema}: {errors:?}"
        );
    }
}
