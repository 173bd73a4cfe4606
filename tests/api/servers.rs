//! Servers a test may break: a private `redis-server` on a free port, killed when dropped, and
//! the real `session-manager` binary as a child process.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of the test's own; never the shared one.
pub struct PrivateRedis {
    pub port: u16,
    child: Child,
}

impl PrivateRedis {
    /// Starts a server with the given extra arguments (e.g. `["--requirepass", "x"]`).
    pub fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { port, child }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service binary built by cargo for these tests.
pub fn service_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_session-manager"));
    // Start from a clean slate: only what the test sets.
    for (name, _) in std::env::vars() {
        if name.starts_with("SESSION_")
            || name.starts_with("REDIS_")
            || name.starts_with("AMQP_")
            || name == "SERVICE_PORT"
            || name == "RUST_LOG"
        {
            command.env_remove(name);
        }
    }
    command
}
