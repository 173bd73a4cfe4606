//! One instance of the service run in-process against the machine's Redis and RabbitMQ,
//! isolated by its own key prefix, command queue, events exchange and OS-chosen port, and
//! everything it left on the shared servers removed when it is dropped.

use std::time::Duration;

use lapin::{
    options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::FieldTable,
    Connection, ConnectionProperties,
};
use redis::AsyncCommands;
use session_manager::{config::Settings, startup::Application};
use tokio_util::sync::CancellationToken;

use crate::{LOCAL_AMQP_URL, LOCAL_REDIS_URL, WAIT};

/// Settings isolated for one instance: a unique key prefix, queue and exchange, and port 0.
pub fn isolated_settings() -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Settings {
        port: 0,
        key_prefix: format!("test-{id}"),
        command_queue: format!("test.{id}.commands"),
        events_exchange: format!("test.{id}.events"),
        ..Settings::local_defaults()
    }
}

/// Settings isolated as [`isolated_settings`], with the callers of `file` (the JSON of a
/// callers file).
pub fn with_callers(file: &str) -> Settings {
    Settings {
        callers: session_manager::callers::Callers::from_json(file).expect("a callers file"),
        ..isolated_settings()
    }
}

/// A running instance. Dropping it stops it and removes its keys, queues and exchange.
pub struct Instance {
    settings: Settings,
    port: u16,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    keep_state: bool,
}

impl Instance {
    /// Starts an instance with `settings` and waits until some instance consumes its command
    /// queue.
    pub async fn start(settings: Settings) -> Self {
        let instance = Self::start_not_waiting(settings).await;
        wait_for_consumer(&instance.settings.command_queue).await;
        instance
    }

    /// Starts an instance without waiting for its worker to consume.
    pub async fn start_not_waiting(settings: Settings) -> Self {
        let application = Application::build(settings.clone())
            .await
            .expect("the application builds");
        let port = application.port();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                application
                    .run_until_stopped(stop.cancelled_owned())
                    .await
                    .expect("the application runs");
            }
        });
        Self {
            settings,
            port,
            stop,
            task: Some(task),
            keep_state: false,
        }
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Its REST port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `path` on its REST front end, e.g. `url("/a01/session")`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Stops the instance gracefully and waits for it to finish.
    pub async fn stop(mut self) {
        self.stop_instance().await;
    }

    /// Stops the instance but keeps its keys, queues and exchange for another instance.
    pub async fn stop_keeping_state(mut self) {
        self.stop_instance().await;
        self.keep_state = true;
    }

    async fn stop_instance(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the application stops cleanly");
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop.cancel();
        if self.keep_state {
            return;
        }
        // Drop cannot await: clean up from a thread of its own.
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up")
                .block_on(clean_up(&settings));
        })
        .join();
    }
}

/// Removes what an instance with `settings` left on the machine's servers: every key under
/// its prefix, its command and dead-letter queues, its events exchange.
pub async fn clean_up(settings: &Settings) {
    if let Ok(client) = redis::Client::open(LOCAL_REDIS_URL) {
        if let Ok(mut redis) = client.get_multiplexed_async_connection().await {
            let pattern = format!("{}:*", settings.key_prefix);
            let mut keys = Vec::new();
            if let Ok(mut iter) = redis.scan_match::<_, String>(&pattern).await {
                while let Some(Ok(key)) = iter.next_item().await {
                    keys.push(key);
                }
            }
            for chunk in keys.chunks(500) {
                let _: Result<(), _> = redis::cmd("DEL").arg(chunk).query_async(&mut redis).await;
            }
        }
    }
    if let Ok(connection) =
        Connection::connect(LOCAL_AMQP_URL, ConnectionProperties::default()).await
    {
        if let Ok(channel) = connection.create_channel().await {
            for queue in [
                settings.command_queue.clone(),
                format!("{}.dead", settings.command_queue),
            ] {
                let _ = channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    settings.events_exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        }
        let _ = connection.close(200, "test done".into()).await;
    }
}

/// Waits until some instance consumes from `queue` on the machine's RabbitMQ (twice [`WAIT`] at
/// the most: an instance starting on a busy machine may take long).
pub async fn wait_for_consumer(queue: &str) {
    let connection = Connection::connect(LOCAL_AMQP_URL, ConnectionProperties::default())
        .await
        .expect("RabbitMQ is running on 127.0.0.1:5672");
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        // A passive declare of a missing queue closes its channel: use a fresh one each time.
        let channel = connection.create_channel().await.expect("a channel");
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        if declared.is_ok_and(|queue| queue.consumer_count() > 0) {
            let _ = connection.close(200, "consumer seen".into()).await;
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody consumes from {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
