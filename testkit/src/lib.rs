//! The test kit of session-manager (not published): what the tests, the client's doc examples
//! and the bench need to run against real servers without disturbing the shared ones or each
//! other.
//!
//! # Layout
//!
//! - [`instance`]: one instance of the service in-process, on its own key prefix, queue,
//!   exchange and port, cleaned up when dropped.
//! - [`redis`]: a private `redis-server` and a private Redis Cluster, plain or TLS, killed when
//!   dropped.
//! - [`process`]: the service binary as a child process, or run to its exit.
//! - [`rabbitmq`]: a private RabbitMQ cluster, and users of the shared broker made for a test.
//! - [`proxy`]: a TCP proxy that holds, cuts and refuses connections.
//! - [`tls`]: certificates made at test time, and a TLS-terminating proxy.
//! - here: free ports, [`wait_for_port`], [`eventually`], which polls until a probe answers, and
//!   [`sha256_hex`] for callers files.

#![warn(missing_docs)]

pub mod instance;
pub mod process;
pub mod proxy;
pub mod rabbitmq;
pub mod redis;
pub mod tls;

use std::{net::TcpListener, time::Duration};

pub use instance::{isolated_settings, with_callers, Instance};
pub use process::Service;
pub use proxy::TcpProxy;
pub use rabbitmq::{BrokerUser, PrivateRabbitCluster};
pub use redis::{PrivateCluster, PrivateRedis, RedisTls};
pub use tls::{Identity, TestCertificates, TlsProxy};

/// The machine's shared Redis.
pub const LOCAL_REDIS_URL: &str = "redis://127.0.0.1:6379/";
/// The machine's shared RabbitMQ.
pub const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The SHA-256 of `token` in lower-case hex: the `token_sha256` of a callers file entry.
pub fn sha256_hex(token: &str) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest.as_ref().iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How long [`eventually`] polls, and how long a test waits for a reply or an event.
pub const WAIT: Duration = Duration::from_secs(10);

/// Asks `probe` every 50 ms until it answers `Ok`; fails with its last `Err` after [`WAIT`].
pub async fn eventually<T>(mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until something listens on `port` of 127.0.0.1; fails after 20 s.
pub async fn wait_for_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
