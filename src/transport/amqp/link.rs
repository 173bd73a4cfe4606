//! The RabbitMQ connection of one instance. [`AmqpLink::maintain`] connects, notices a lost
//! connection and connects again, with backoff, for as long as the instance runs; the worker and
//! the events channel take the current connection from it. `AMQP_URL` may name several nodes of a
//! cluster, comma-separated: the link holds one connection, and when it is lost or an attempt
//! fails it tries the next node, round robin. It knows nothing of what runs over
//! the connection. lapin's own opt-in auto-recovery is not used: it gives up after its
//! backoff's retries, and this loop, which never gives up, lets the worker re-run its whole
//! setup (topology, QoS, consume) on every connection anyway.
//!
//! Over `amqps://` the link does the TLS handshake itself, with a rustls configuration made once
//! from the [`TlsSettings`]: so the CA file replaces the system's roots (lapin's own TLS would
//! add it to them), as it does for Redis. A handshake that fails is a failed attempt like any
//! other: logged with its cause, retried with backoff.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{
    tcp::{AMQPUriTcpExt, RustlsConnector},
    uri::{AMQPScheme, AMQPUri},
    Connection, ConnectionProperties,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    backoff::Backoff,
    config::SecretString,
    tls::{TlsSettings, Transport},
};

/// Waits between connection attempts.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live connection is checked.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Where the link connects.
enum Broker {
    /// `amqp://`, or a URL that does not parse (connecting then fails, saying why).
    Plain(SecretString),
    /// `amqps://`: TLS with the link's own configuration.
    Tls {
        uri: AMQPUri,
        connector: RustlsConnector,
    },
}

/// The current connection, if any.
pub struct AmqpLink {
    /// The nodes of `AMQP_URL`, in its order.
    brokers: Vec<Broker>,
    /// The node of the next attempt (an index into `brokers`, modulo its length).
    next: AtomicUsize,
    current: watch::Sender<Option<Arc<Connection>>>,
}

/// The URLs of `AMQP_URL`: one, or several separated by commas.
fn urls(url: &str) -> impl Iterator<Item = &str> {
    url.split(',').map(str::trim).filter(|url| !url.is_empty())
}

impl AmqpLink {
    /// A link to `url`, not yet connected: [`AmqpLink::maintain`] connects it. An `amqps://`
    /// URL is verified against `tls` (its CA file, or the system's roots) and shows its client
    /// certificate, if any; `Err` when that configuration cannot be made.
    pub fn new(url: SecretString, tls: &TlsSettings) -> Result<Arc<Self>, rustls::Error> {
        let mut brokers = Vec::new();
        for url in urls(url.expose()) {
            brokers.push(match url.parse::<AMQPUri>() {
                Ok(uri) if uri.scheme == AMQPScheme::AMQPS => Broker::Tls {
                    uri,
                    connector: RustlsConnector::from(tls.client_config()?),
                },
                _ => Broker::Plain(SecretString::new(url)),
            });
        }
        Ok(Arc::new(Self {
            brokers,
            next: AtomicUsize::new(0),
            current: watch::Sender::new(None),
        }))
    }

    /// Whether `url` (one AMQP URL, or several separated by commas) is one this service can use,
    /// and whether it asks for TLS (any of its URLs does); `Err` says what is wrong with it,
    /// without quoting it (it may hold a password).
    pub fn transport(url: &str) -> Result<Transport, &'static str> {
        let mut transport = None;
        for url in urls(url) {
            let this = match url.parse::<AMQPUri>() {
                Ok(uri) if uri.scheme == AMQPScheme::AMQPS => Transport::Tls,
                Ok(_) => Transport::Plain,
                Err(_) => return Err("is not a valid AMQP URL (or list of them, comma-separated)"),
            };
            if transport != Some(Transport::Tls) {
                transport = Some(this);
            }
        }
        transport.ok_or("names no AMQP URL")
    }

    /// Whether a connection is up now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.current().is_some()
    }

    /// The connection, if one is up now.
    pub fn current(&self) -> Option<Arc<Connection>> {
        self.current
            .borrow()
            .clone()
            .filter(|connection| connection.status().connected())
    }

    /// Keeps a connection up until `shutdown`, then closes it.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut backoff = RECONNECT;
        while !shutdown.is_cancelled() {
            if self.is_connected() {
                tokio::select! {
                    () = tokio::time::sleep(WATCH_EVERY) => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            if self.current.borrow().is_some() {
                tracing::warn!("lost the connection to RabbitMQ; reconnecting");
                self.current.send_replace(None);
            }
            // Round robin over the nodes: each attempt, after a lost connection or a failure,
            // goes to the next one.
            let node = self.next.fetch_add(1, Ordering::Relaxed) % self.brokers.len();
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, self.connect(node));
            let connected = tokio::select! {
                connected = connect => connected,
                () = shutdown.cancelled() => break,
            };
            match connected {
                Ok(Ok(connection)) => {
                    tracing::info!(
                        node = node + 1,
                        of = self.brokers.len(),
                        "connected to RabbitMQ"
                    );
                    self.current.send_replace(Some(Arc::new(connection)));
                    backoff.reset();
                }
                Ok(Err(error)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error, node = node + 1, of = self.brokers.len(), retry_in = ?delay, "cannot connect to RabbitMQ");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(_) => tracing::warn!(
                    node = node + 1,
                    of = self.brokers.len(),
                    "connecting to RabbitMQ timed out; trying the next node"
                ),
            }
        }
        self.close().await;
    }

    /// One attempt to connect to the `node`th broker.
    async fn connect(&self, node: usize) -> lapin::Result<Connection> {
        let properties =
            ConnectionProperties::default().with_connection_name("session-manager".into());
        let (uri, connector) = match &self.brokers[node] {
            Broker::Plain(url) => return Connection::connect(url.expose(), properties).await,
            Broker::Tls { uri, connector } => (uri.clone(), connector.clone()),
        };
        // What lapin's own connect does, but for the handshake, which uses our configuration.
        let handshake = async move |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let tcp = AMQPUri {
                scheme: AMQPScheme::AMQP,
                ..uri
            };
            let stream = tcp.connect_async(&runtime).await?;
            Ok(stream.into_rustls(&connector, &host).await?)
        };
        Connection::connector(
            uri,
            lapin::runtime::default_runtime()?,
            handshake,
            properties,
        )
        .await
    }

    /// Waits for a live connection; `None` once `shutdown` is cancelled.
    pub async fn connection(&self, shutdown: &CancellationToken) -> Option<Arc<Connection>> {
        let mut current = self.current.subscribe();
        let live = current.wait_for(|connection| {
            connection
                .as_ref()
                .is_some_and(|connection| connection.status().connected())
        });
        tokio::select! {
            live = live => live.ok().and_then(|connection| connection.clone()),
            () = shutdown.cancelled() => None,
        }
    }

    async fn close(&self) {
        let connection = self.current.send_replace(None);
        if let Some(connection) = connection.filter(|c| c.status().connected()) {
            if let Err(error) = connection.close(200, "shutting down".into()).await {
                tracing::debug!(error = %error, "closing the RabbitMQ connection");
            }
        }
    }
}
