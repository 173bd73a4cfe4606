//! The test kit of session-manager (not published): what the tests and the bench need to run
//! against real servers without touching the shared ones. A private `redis-server` on a free
//! port and a private Redis Cluster, both killed when dropped; a binary run as a child process
//! with its output captured; a TCP proxy that holds, cuts and refuses connections; free ports;
//! and [`eventually`], which polls until a probe answers.
//!
//! It knows nothing of the service's own types: the tests and the bench pass it commands,
//! ports and URLs.

use std::{
    io::Read,
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
        Self::start_on(free_port(), extra)
    }

    /// Starts a server on `port` (e.g. again, after stopping one there).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
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
    }
}

/// A TCP proxy in the test harness, between the service and a server: it can hold back the
/// server's answers (to see what the service sends meanwhile), cut every connection and refuse
/// new ones, and counts what clients sent.
pub struct TcpProxy {
    pub port: u16,
    hold: tokio::sync::watch::Sender<bool>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pipes: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, _) = tokio::sync::watch::channel(false);
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let pipes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let hold = hold.clone();
            let sent = sent.clone();
            let refusing = refusing.clone();
            let pipes = pipes.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let pipe = tokio::spawn(pipe(client, server, hold.subscribe(), sent.clone()));
                    pipes.lock().unwrap().push(pipe);
                }
            }
        });
        Self {
            port,
            hold,
            sent,
            refusing,
            pipes,
            accept,
        }
    }

    /// Closes every connection through the proxy; with `refuse`, also every new one until
    /// [`TcpProxy::allow`].
    pub fn cut(&self, refuse: bool) {
        self.refusing
            .store(refuse, std::sync::atomic::Ordering::SeqCst);
        for pipe in self.pipes.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Lets new connections through again.
    pub fn allow(&self) {
        self.refusing
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// While held, the server's answers wait in the proxy.
    pub fn hold_answers(&self, held: bool) {
        self.hold.send_replace(held);
    }

    /// How often `needle` occurs in everything clients have sent so far.
    pub fn count_sent(&self, needle: &[u8]) -> usize {
        let sent = self.sent.lock().unwrap();
        sent.windows(needle.len()).filter(|w| *w == needle).count()
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut(true);
    }
}

async fn pipe(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut hold: tokio::sync::watch::Receiver<bool>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = client_read.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            sent.lock().unwrap().extend_from_slice(&buffer[..read]);
            if server_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    };
    let downstream = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        while let Ok(read) = server_read.read(&mut buffer).await {
            if read == 0 {
                break;
            }
            if hold.wait_for(|held| !*held).await.is_err() {
                break;
            }
            if client_write.write_all(&buffer[..read]).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(upstream, downstream);
}

/// A private Redis Cluster of three masters, each on a free port (with its bus port free too).
pub struct PrivateCluster {
    pub nodes: Vec<PrivateRedis>,
    dir: std::path::PathBuf,
}

impl PrivateCluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("cluster-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut nodes = Vec::new();
        while nodes.len() < 3 {
            let port = free_port();
            // The cluster bus listens on port + 10000.
            if port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err() {
                continue;
            }
            let config = dir.join(format!("nodes-{port}.conf"));
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--cluster-enabled",
                    "yes",
                ])
                .args(["--cluster-config-file", config.to_str().unwrap()])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            let node = PrivateRedis { port, child };
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "cluster node did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "redis-cli --cluster create failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let info = Command::new("redis-cli")
                    .args(["-p", &node.port.to_string(), "cluster", "info"])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Self { nodes, dir }
    }

    pub fn seed_url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.nodes[0].port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.nodes.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
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
