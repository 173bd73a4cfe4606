//! The RabbitMQ connection of one instance. [`AmqpLink::maintain`] connects, notices a lost
//! connection and connects again, with backoff, for as long as the instance runs; the worker
//! takes the current connection from it and the relay an events channel. lapin's own opt-in
//! auto-recovery is not used: it gives up after its backoff's retries, and this loop, which
//! never gives up, re-runs the whole consumer setup (topology, QoS, consume) on every
//! connection anyway.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use lapin::{Connection, ConnectionProperties};
use tokio::sync::{watch, Mutex};
use tokio_util::sync::CancellationToken;

use crate::{config::SecretString, events::EventPublisher, metrics::Metrics};

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a live connection is checked.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The current connection, if any, and the events channel on it.
pub struct AmqpLink {
    url: SecretString,
    exchange: String,
    metrics: Arc<Metrics>,
    current: watch::Sender<Option<Arc<Connection>>>,
    publisher: Mutex<Option<EventPublisher>>,
    /// Whether the worker consumes commands now (set by the worker).
    consuming: AtomicBool,
}

impl AmqpLink {
    pub fn new(url: SecretString, exchange: String, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            url,
            exchange,
            metrics,
            current: watch::Sender::new(None),
            publisher: Mutex::new(None),
            consuming: AtomicBool::new(false),
        })
    }

    /// Whether a connection is up now (for `/readyz`).
    pub fn is_connected(&self) -> bool {
        self.current
            .borrow()
            .as_ref()
            .is_some_and(|connection| connection.status().connected())
    }

    /// Whether commands are being consumed now: connected, and the worker's consumer is up
    /// (it is not when, say, the queue exists with other arguments).
    pub fn is_ready(&self) -> bool {
        self.is_connected() && self.consuming.load(Ordering::SeqCst)
    }

    /// Set by the worker when its consumer starts and stops.
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::SeqCst);
    }

    /// Keeps a connection up until `shutdown`, then closes it.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut delay = RETRY_MIN;
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
                    // The events exchange exists before anything else uses the connection.
                    let opened =
                        EventPublisher::open(&connection, &self.exchange, self.metrics.clone())
                            .await;
                    match opened {
                        Ok(opened) => *self.publisher.lock().await = Some(opened),
                        Err(error) => {
                            tracing::warn!(error = %error, "cannot open the events channel")
                        }
                    }
                    self.current.send_replace(Some(Arc::new(connection)));
                    delay = RETRY_MIN;
                }
                Ok(Err(error)) => {
                    tracing::warn!(error = %error, retry_in = ?delay, "cannot connect to RabbitMQ");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break,
                    }
                    delay = (delay * 2).min(RETRY_MAX);
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

    /// The events channel, opened (and the exchange declared) on the current connection when
    /// there is none or the last one broke.
    pub async fn publisher(&self) -> Result<EventPublisher, lapin::Error> {
        // Held across the open, so that concurrent callers open one channel, not one each.
        let mut publisher = self.publisher.lock().await;
        if let Some(open) = publisher.as_ref().filter(|p| p.is_open()) {
            return Ok(open.clone());
        }
        let connection = self
            .current
            .borrow()
            .clone()
            .filter(|connection| connection.status().connected())
            .ok_or_else(|| {
                lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                    lapin::ConnectionState::Closed,
                ))
            })?;
        let opened =
            EventPublisher::open(&connection, &self.exchange, self.metrics.clone()).await?;
        *publisher = Some(opened.clone());
        Ok(opened)
    }

    async fn close(&self) {
        if let Some(publisher) = self.publisher.lock().await.take() {
            publisher.close().await;
        }
        let connection = self.current.send_replace(None);
        if let Some(connection) = connection.filter(|c| c.status().connected()) {
            if let Err(error) = connection.close(200, "shutting down".into()).await {
                tracing::debug!(error = %error, "closing the RabbitMQ connection");
            }
        }
    }
}
