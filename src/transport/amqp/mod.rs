//! The AMQP front end (contract §3): declares the command queue and its dead-letter queue,
//! consumes commands, hands each to the core and publishes the reply. It maps AMQP messages to
//! and from the core and holds no session logic.
//!
//! # Format
//!
//! ```text
//! command  {"type": "GetSession", "session_id": "…"}      reply_to, correlation_id, message_id
//! reply    {"status": "ok", "result": {…}}
//!          {"status": "error", "error": {"code": "not_found", "message": "…"}}
//! ```

mod link;
mod worker;

pub use link::AmqpLink;
pub use worker::{run_worker, WorkerSettings};
