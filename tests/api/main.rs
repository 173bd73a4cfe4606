//! Integration tests, one binary: every test runs its own instance (see `helpers`) against the
//! real Redis and RabbitMQ on this machine.

mod amqp;
mod api_docs;
mod broker_cluster;
mod callers;
mod cluster;
mod crashes;
mod devices;
mod encryption;
mod events;
mod expiry;
mod fuzz;
mod growth;
mod helpers;
mod idempotency;
mod leases;
mod logs;
mod outages;
mod pages;
mod process;
mod replicas;
mod replies;
mod rest;
mod scripts;
mod tls;
