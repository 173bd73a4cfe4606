//! A TCP proxy between a client and a server, to break the connection on purpose.

/// A TCP proxy in the test harness, between the service and a server: it can hold back the
/// server's answers (to see what the service sends meanwhile), cut every connection and refuse
/// new ones, and counts what clients sent.
pub struct TcpProxy {
    /// Where clients connect.
    pub port: u16,
    hold: tokio::sync::watch::Sender<bool>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pipes: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port and forwards every connection to `upstream`.
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
