//! The command worker: consumes with a prefetch window and applies up to that many commands
//! concurrently. A delivery is acknowledged only after its command is applied and its reply
//! published (with a broker confirm); a message that cannot be understood gets an error reply
//! and is rejected without requeue, which dead-letters it to `<queue>.dead`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    },
    types::{FieldTable, ShortString},
    BasicProperties, Channel, Confirmation, Connection,
};
use serde::Serialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{topology, AmqpLink};
use crate::{
    backoff::Backoff,
    domain::{Command, Error, ErrorBody, MessageId, Outcome},
    metrics::Metrics,
    service::SessionService,
    telemetry::Chain,
};

/// Waits between tries of a command that finds Redis out of reach.
const REDIS_RETRY: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// Wait before consuming again after the consumer stopped.
const CONSUME_AGAIN_AFTER: Duration = Duration::from_millis(500);
/// Wait before requeueing a command whose reply could not be published.
const REQUEUE_AFTER: Duration = Duration::from_secs(5);
/// How long a reply may wait for the broker's confirm.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker needs to know about the broker's topology.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The command queue (`SESSION_COMMAND_QUEUE`).
    pub queue: String,
    /// The events exchange (`SESSION_EVENTS_EXCHANGE`), declared with the queues.
    pub events_exchange: String,
    /// Commands taken at once (`AMQP_PREFETCH`).
    pub prefetch: u16,
}

/// Whether the worker consumes commands now (false while it is not connected, or when the broker
/// refuses its consumer, say because the queue exists with other arguments).
#[derive(Debug, Clone, Default)]
pub struct Consuming(Arc<AtomicBool>);

impl Consuming {
    /// Whether a consumer is up now.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    fn set(&self, consuming: bool) {
        self.0.store(consuming, Ordering::SeqCst);
    }
}

/// The body of a reply.
#[derive(Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
enum Reply<'a> {
    Ok { result: &'a Outcome },
    Error { error: ErrorBody },
}

impl Reply<'_> {
    fn encode(outcome: &Result<Outcome, Error>) -> Vec<u8> {
        let reply = match outcome {
            Ok(result) => Reply::Ok { result },
            Err(error) => Reply::Error {
                error: ErrorBody::from(error),
            },
        };
        serde_json::to_vec(&reply).expect("a reply serializes: strings, numbers and lists only")
    }
}

/// Consumes commands until `shutdown` is cancelled, on whatever connection `link` has, starting
/// over (topology, QoS, consumer) on each new connection; `consuming` tells whether it consumes
/// now.
pub async fn run_worker(
    link: Arc<AmqpLink>,
    service: SessionService,
    metrics: Arc<Metrics>,
    settings: WorkerSettings,
    consuming: Consuming,
    shutdown: CancellationToken,
) {
    while let Some(connection) = link.connection(&shutdown).await {
        let consumed = consume(
            &connection,
            &consuming,
            service.clone(),
            metrics.clone(),
            &settings,
            shutdown.clone(),
        )
        .await;
        consuming.set(false);
        if shutdown.is_cancelled() {
            break;
        }
        match consumed {
            Ok(()) => tracing::warn!("the broker cancelled the command consumer; consuming again"),
            Err(error) => {
                tracing::warn!(error = %Chain(&error), "command consumer stopped; resuming")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(CONSUME_AGAIN_AFTER) => {}
            () = shutdown.cancelled() => break,
        }
    }
    tracing::info!("command worker stopped");
}

/// Consumes commands on one connection until `shutdown` is cancelled or the channel fails,
/// then stops consuming and waits for the commands in flight to be answered and acknowledged.
async fn consume(
    connection: &Connection,
    consuming: &Consuming,
    service: SessionService,
    metrics: Arc<Metrics>,
    settings: &WorkerSettings,
    shutdown: CancellationToken,
) -> Result<(), lapin::Error> {
    // The events exchange first, on a channel of its own (a refused declare closes its
    // channel), so that it exists by the time the instance is ready; a refusal (an exchange of
    // that name with other properties) stops the events, which the relay then reports, not the
    // commands.
    let events = connection.create_channel().await?;
    match topology::declare_events_exchange(&events, &settings.events_exchange).await {
        Ok(()) => {
            let _ = events.close(200, "declared".into()).await;
        }
        Err(error) => {
            tracing::error!(error = %error, exchange = %settings.events_exchange,
                "cannot declare the events exchange; events cannot be published");
        }
    }
    let channel = connection.create_channel().await?;
    topology::declare_queues(&channel, &settings.queue).await?;
    // The prefetch window is the worker's concurrency: up to this many commands are applied at
    // once, and no more are taken while they are (so a stalled Redis stops intake).
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    // Replies go out on their own channel in confirm mode, so an ack follows a confirmed reply.
    let replies = connection.create_channel().await?;
    replies
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let consumer_tag = format!("session-manager-{}", uuid::Uuid::new_v4());
    let mut consumer = channel
        .basic_consume(
            settings.queue.as_str().into(),
            consumer_tag.as_str().into(),
            // Manual acks: a command is acknowledged only once it is applied and answered.
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consuming.set(true);
    tracing::info!(queue = %settings.queue, prefetch = settings.prefetch, "consuming commands");

    let in_flight = TaskTracker::new();
    // Cancelled when this consumer stops for any reason: a command still waiting for Redis
    // then gives up its delivery (the broker redelivers it) instead of outliving its channel.
    let consumer_stopped = shutdown.child_token();
    let handler = Arc::new(Handler {
        service,
        replies,
        metrics,
        stopped: consumer_stopped.clone(),
    });
    let mut failure = None;
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            delivery = consumer.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let handler = handler.clone();
                in_flight.spawn(async move { handler.handle(delivery).await });
            }
            Some(Err(error)) => {
                failure = Some(error);
                break;
            }
            None => break,
        }
    }
    if channel.status().connected() {
        if let Err(error) = channel
            .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(error = %error, "could not cancel the command consumer");
        }
    }
    consumer_stopped.cancel();
    in_flight.close();
    in_flight.wait().await;
    for open in [&channel, &handler.replies] {
        if open.status().connected() {
            if let Err(error) = open.close(200, "shutting down".into()).await {
                tracing::debug!(error = %error, "closing a worker channel");
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

struct Handler {
    service: SessionService,
    replies: Channel,
    metrics: Arc<Metrics>,
    /// Cancelled when the consumer stops (shutdown or a lost channel).
    stopped: CancellationToken,
}

impl Handler {
    async fn handle(&self, delivery: Delivery) {
        let started = std::time::Instant::now();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| MessageId::parse(id.as_str()));
        let command = match Command::parse(&delivery.data) {
            Ok(command) => command,
            Err(error @ Error::InvalidArgument(_)) => {
                // Debug-formatted: the message quotes client text, which must not forge log lines.
                tracing::warn!(error = ?error.to_string(), "dead-lettering a command that cannot be understood");
                self.reply(&delivery, &Err(error)).await;
                if let Err(error) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                    tracing::error!(error = %error, "could not dead-letter a command");
                }
                self.metrics
                    .record_command("invalid", "dead_lettered", started.elapsed());
                return;
            }
            Err(error) => {
                // Well-formed, but naming a session that cannot exist: answered like any miss.
                let outcome = Err(error);
                self.finish(&delivery, message_id.as_ref(), "unknown", &outcome, started)
                    .await;
                return;
            }
        };
        // A try that timed out or lost its connection may have been applied: its retries go
        // under the same key, the client's message_id or else one of this delivery's own, so
        // that they answer what it did instead of applying it again.
        let key = message_id
            .clone()
            .or_else(|| command.changes().then(MessageId::of_delivery));
        let mut backoff = REDIS_RETRY;
        let outcome = loop {
            match self.service.execute(&command, key.as_ref()).await {
                Err(Error::Unavailable(cause)) => {
                    // Redis is out of reach: keep the delivery unacked and
                    // retry; with the prefetch window full, no new commands are taken meanwhile.
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %Chain(cause.as_ref()), command = command.name(), retry_in = ?delay,
                        "cannot apply command now; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.stopped.cancelled() => {
                            // Leave it unacked: the broker redelivers it to another consumer.
                            return;
                        }
                    }
                }
                outcome => break outcome,
            }
        };
        self.finish(
            &delivery,
            message_id.as_ref(),
            command.name(),
            &outcome,
            started,
        )
        .await;
    }

    /// Replies, then acknowledges the delivery.
    async fn finish(
        &self,
        delivery: &Delivery,
        message_id: Option<&MessageId>,
        command: &'static str,
        outcome: &Result<Outcome, Error>,
        started: std::time::Instant,
    ) {
        if !self.reply(delivery, outcome).await {
            if message_id.is_some() {
                // Requeued after a pause: the command comes back, and its recorded outcome is
                // what the next reply repeats (it is not applied again).
                tokio::select! {
                    () = tokio::time::sleep(REQUEUE_AFTER) => {}
                    () = self.stopped.cancelled() => return,
                }
                if let Err(error) = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
                {
                    tracing::error!(error = %error, "could not requeue a command");
                }
                return;
            }
            // Without a message_id a requeued command would be applied again: acknowledge it,
            // its reply is lost.
            tracing::error!(
                command,
                "the reply of an applied command without message_id is lost"
            );
        }
        if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
            tracing::error!(error = %error, "could not acknowledge a command");
            return;
        }
        let label = match outcome {
            Ok(_) => "ok",
            Err(error) => error.code().as_str(),
        };
        if let Err(Error::Internal(cause)) = outcome {
            tracing::error!(error = %Chain(cause.as_ref()), command, "command failed");
        }
        self.metrics
            .record_command(command, label, started.elapsed());
    }

    /// Publishes the reply when the command asked for one; `false` if it could not be published.
    async fn reply(&self, delivery: &Delivery, outcome: &Result<Outcome, Error>) -> bool {
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            return true;
        };
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        if let Some(correlation_id) = delivery.properties.correlation_id() {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        let published = async {
            let confirm = self
                .replies
                .basic_publish(
                    "".into(),
                    reply_to.clone(),
                    // Mandatory, so that a reply no queue takes comes back and is logged below
                    // instead of vanishing unseen.
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &Reply::encode(outcome),
                    properties,
                )
                .await?;
            confirm.await
        };
        // A blocked connection (a broker alarm) never confirms: do not wait forever.
        match tokio::time::timeout(CONFIRM_TIMEOUT, published).await {
            Ok(Ok(Confirmation::Nack(_))) => {
                tracing::error!("the broker refused a reply");
                false
            }
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                // The reply queue is gone (its client went away): nobody waits for the reply.
                tracing::warn!(
                    reply_to = reply_to.as_str(),
                    reason = returned.reply_text.as_str(),
                    "a reply could not be delivered: no queue of that name; it is dropped"
                );
                true
            }
            Ok(Ok(_)) => true,
            Ok(Err(error)) => {
                tracing::error!(error = %error, "could not publish a reply");
                false
            }
            Err(_) => {
                tracing::error!("the broker did not confirm a reply in time");
                false
            }
        }
    }
}
