//! A `session-manager` binary run as a child process, with its output captured (and readable
//! while it runs), stopped by SIGTERM or SIGKILL, and killed if the test or the bench ends early;
//! or run to its exit.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A running binary with its output captured; killed if the test ends early.
pub struct Service {
    child: std::process::Child,
    port: u16,
    /// Everything the process printed so far, line by line, stdout and stderr as they come.
    printed: Arc<Mutex<String>>,
    /// The threads that drain its output, so that it never blocks on a full pipe.
    output: Vec<std::thread::JoinHandle<()>>,
}

fn drain(
    stream: impl Read + Send + 'static,
    printed: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut stream = BufReader::new(stream);
        let mut line = Vec::new();
        while stream
            .read_until(b'\n', &mut line)
            .is_ok_and(|read| read > 0)
        {
            printed
                .lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&line));
            line.clear();
        }
    })
}

/// Runs `command` to its exit, which must come `within`, and returns its status and output.
pub fn run_to_exit(command: &mut Command, within: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the service did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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
        let printed = Arc::new(Mutex::new(String::new()));
        let output = vec![
            drain(child.stdout.take().unwrap(), printed.clone()),
            drain(child.stderr.take().unwrap(), printed.clone()),
        ];
        let service = Self {
            child,
            port,
            printed,
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

    /// What the process has printed so far.
    pub fn printed(&self) -> String {
        self.printed.lock().unwrap().clone()
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
        for reader in self.output.drain(..) {
            reader.join().unwrap();
        }
        (status, self.printed())
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
