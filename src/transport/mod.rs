//! The two front ends. Each maps its wire format to a domain `Command`, calls the core
//! (`SessionService`) and maps the outcome back; neither talks to Redis.

pub mod amqp;
pub mod http;
