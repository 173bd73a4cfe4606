//! # session-manager
//!
//! Keeps users' login sessions in Redis. A user may hold many sessions (one or more per device),
//! each holding the tokens an authorization server issued. Sessions are created, read, listed,
//! updated and closed over REST or by AMQP commands; every closed session produces a
//! `SessionClosed` CloudEvent. The external contract is in the README and `schemas/`.
//!
//! # Layout
//!
//! - [`config`]: settings from the environment, validated at start.
//! - [`domain`]: session types that parse their rules, commands, outcomes, events, errors.
//! - [`service`]: the core; both front ends call it.
//! - [`store`]: the only module that knows Redis (keys and Lua scripts).
//! - [`events`]: publishes `SessionClosed` to the events exchange.
//! - [`relay`]: the outbox relay and expiry tick, run by every instance.
//! - [`transport`]: the REST (warp) and AMQP (lapin) front ends.
//! - [`metrics`]: Prometheus metrics.
//! - [`startup`]: builds and runs one instance.
//! - [`telemetry`]: logging setup.

pub mod config;
pub mod domain;
pub mod events;
pub mod metrics;
pub mod relay;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
