//! # session-manager
//!
//! Keeps users' login sessions in Redis. A user may hold many sessions (one or more per device),
//! each holding the tokens an authorization server issued. Sessions are created, read, listed,
//! updated and closed over REST or by AMQP commands; every closed session produces a
//! `SessionClosed` CloudEvent. The external contract is in the README and `schemas/`.
//!
//! # Layout
//!
//! Arrows point one way: the transports call the core, the core calls the store, and all of
//! them use the domain; the domain and the core import nothing from the transports or Redis.
//!
//! - [`config`]: settings from the environment, validated at start.
//! - [`callers`]: who may call (the callers file, API tokens), found by token or AMQP user.
//! - [`domain`]: session types that parse their rules, commands, outcomes, events, errors.
//! - [`service`]: the core; both front ends call it.
//! - [`store`]: the only module that knows Redis (keys, buckets, Lua scripts).
//! - [`relay`]: the outbox relay and expiry tick, run by every instance; publishes through an
//!   [`relay::EventSink`].
//! - [`transport`]: the REST (warp) and AMQP (lapin) front ends; everything RabbitMQ, the event
//!   sink included, is under [`transport::amqp`].
//! - [`keyring`]: sealing secret values at rest (`SESSION_ENCRYPTION_KEY`).
//! - [`backoff`]: retrying with backoff.
//! - [`metrics`]: Prometheus metrics.
//! - [`startup`]: builds and runs one instance.
//! - [`telemetry`]: logging setup.
//! - [`tls`]: the CA and client certificates of `rediss://` and `amqps://` connections.

#![warn(missing_docs)]

pub mod backoff;
pub mod callers;
pub mod config;
pub mod domain;
pub mod keyring;
pub mod metrics;
pub mod relay;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;
