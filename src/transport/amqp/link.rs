//! The RabbitMQ connection of one instance. [`AmqpLink::maintain`] connects, notices a lost
//! connection and connects again, with backoff, for as long as the instance runs; the worker and
//! the events channel take the current connection from it. It knows nothing of what runs over
//! the connection. lapin's own opt-in auto-recovery is not used: it gives up after its
//! backoff's retries, and this loop, which never gives up, lets the worker re-run its whole
//! setup (topology, QoS, consume) on every connection anyway.
//!
//! Over `amqps://` the link does the TLS handshake itself, with a rustls configuration made once
//! from the [`TlsSettings`]: so the CA file replaces the system's roots (lapin's own TLS would
//! add it to them), as it does for Redis. A handshake that fails is a failed attempt like any
//! other: logged with its cause, retried with backoff.

use std::{sync::Arc, time::Duration};

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
    broker: Broker,
    current: watch::Sender<Option<Arc<Connection>>>,
}

impl AmqpLink {
    /// A link to `url`, not yet connected: [`AmqpLink::maintain`] connects it. An `amqps://`
    /// URL is verified against `tls` (its CA file, or the system's roots) and shows its client
    /// certificate, if any; `Err` when that configuration cannot be made.
    pub fn new(url: SecretString, tls: &TlsSettings) -> Result<Arc<Self>, rustls::Error> {
        let broker = match url.expose().parse::<AMQPUri>() {
            Ok(uri) if uri.scheme == AMQPScheme::AMQPS => Broker::Tls {
                uri,
                connector: RustlsConnector::from(tls.client_config()?),
            },
            _ => Broker::Plain(url),
        };
        Ok(Arc::new(Self {
            broker,
            current: watch::Sender::new(None),
        }))
    }

    /// Whether `url` is an AMQP URL this service can use, and whether it asks for TLS; `Err`
    /// says what is wrong with it, without quoting it (it may hold a password).
    pub fn transport(url: &str) -> Result<Transport, &'static str> {
        match url.parse::<AMQPUri>() {
            Ok(uri) if uri.scheme == AMQPScheme::AMQPS => Ok(Transport::Tls),
            Ok(_) => Ok(Transport::Plain),
            Err(_) => Err("is not a valid AMQP URL"),
        }
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
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, self.connect());
            let connected = tokio::select! {
                connected = connect => connected,
                () = shutdown.cancelled() => break,
            };
            match connected {
                Ok(Ok(connection)) => {
                    tracing::info!("connected to RabbitMQ");
                    self.current.send_replace(Some(Arc::new(connection)));
                    backoff.reset();
                }
                Ok(Err(error)) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error, retry_in = ?delay, "cannot connect to RabbitMQ");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                }
                Err(_) => tracing::warn!("connecting to RabbitMQ timed out; retrying"),
            }
        }
        self.close().await;
    }

    /// One attempt to connect.
    async fn connect(&self) -> lapin::Result<Connection> {
        let properties =
            ConnectionProperties::default().with_connection_name("session-manager".into());
        let (uri, connector) = match &self.broker {
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
