//! The AMQP front end (contract §3) and everything else that speaks to RabbitMQ: the connection
//! ([`AmqpLink`]), the broker topology, the command worker, which maps AMQP messages to and from
//! the core and holds no session logic, the dead-letter copies it makes, and the events channel ([`AmqpEvents`]), the relay's
//! event sink.
//!
//! # Format
//!
//! ```text
//! command  {"type": "GetSession", "session_id": "…"}      reply_to, correlation_id, message_id
//! reply    {"status": "ok", "result": {…}}
//!          {"status": "error", "error": {"code": "not_found", "message": "…"}}
//! ```

mod dead_letter;
mod events;
mod link;
mod topology;
mod worker;

pub use events::{AmqpEvents, PublishError, ROUTING_KEY};
pub use link::AmqpLink;
pub use worker::{run_worker, Consuming, WorkerSettings};
