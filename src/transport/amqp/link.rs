//! The RabbitMQ connection of one instance. [`AmqpLink::maintain`] connects, notices a lost
//! connection and connects again, with backoff, for as long as the instance runs; the worker and
//! the events channel take the current connection from it. It knows nothing of what runs over
//! the connection. lapin's own opt-in auto-recovery is not used: it gives up after its
//! backoff's retries, and this loop, which never gives up, lets the worker re-run its whole
//! setup (topology, QoS, consume) on every connection anyway.

use std::{sync::Arc, time::Duration};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{backoff::Backoff, config::SecretString};

/// Waits between connection attempts.
const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live connection is checked.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The current connection, if any.
pub struct AmqpLink {
    url: SecretString,
    current: watch::Sender<Option<Arc<Connection>>>,
}

impl AmqpLink {
    /// A link to `url`, not yet connected: [`AmqpLink::maintain`] connects it.
    pub fn new(url: SecretString) -> Arc<Self> {
        Arc::new(Self {
            url,
            current: watch::Sender::new(None),
        })
    }

    /// Whether `url` is an AMQP URL this service can use.
    pub fn is_valid_url(url: &str) -> bool {
        url.parse::<lapin::uri::AMQPUri>().is_ok()
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
            let properties =
                ConnectionProperties::default().with_connection_name("session-manager".into());
            let connect = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Connection::connect(self.url.expose(), properties),
            );
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
