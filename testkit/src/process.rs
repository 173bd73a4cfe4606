//! A `session-manager` binary run as a child process, with its output captured, stopped by
//! SIGTERM or SIGKILL, and killed if the test or the bench ends early.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// A running binary with its output captured; killed if the test ends early.
pub struct Service {
    child: std::process::Child,
    port: u16,
    /// Everything the process prints, drained by threads so that it never blocks on a full pipe.
    output: Vec<std::thread::JoinHandle<String>>,
}

fn drain(mut stream: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stream.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Service {
    /// Runs `command` with `SERVICE_PORT=port` and waits until it listens there (20 s at most).
    pub fn start(command: &mut Command, port: u16) -> Self {
        let mut child = command
            .env("SERVICE_PORT", port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = vec![
            drain(child.stdout.take().unwrap()),
            drain(child.stderr.take().unwrap()),
        ];
        let service = Self {
            child,
            port,
            output,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the service did not start listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        service
    }

    /// Its REST port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The URL of `path` on its REST port.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends SIGTERM and returns the exit status and everything the process printed.
    pub fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        };
        let printed = self
            .output
            .drain(..)
            .map(|reader| reader.join().unwrap())
            .collect();
        (status, printed)
    }
}

impl Service {
    /// Sends SIGKILL and waits for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
