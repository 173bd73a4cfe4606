//! The command worker: consumes with a prefetch window and applies up to that many commands
//! concurrently. A delivery is acknowledged only after its command is applied and its reply
//! published (with a broker confirm). Before a command is applied:
//! - its `reply_to`, if any, must name a queue replies may go to (contract §8.2): a server-named
//!   queue, Direct Reply-to, or one under `SESSION_REPLY_TO_PREFIXES`; else it is dead-lettered;
//! - with callers configured, its `user_id` property (which the broker checks against the
//!   publishing connection's user) must be a caller's AMQP user; else it is answered
//!   `unauthorized`;
//! - it must parse; else it gets an `invalid_argument` reply and is dead-lettered.
//!
//! The worker dead-letters itself (see `dead_letter`): a redacted copy goes to `<queue>.dead`,
//! and the original is acknowledged once the broker has confirmed the copy. A handler that
//! panics answers `internal` and dead-letters its command instead of leaving it unacknowledged.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::{FutureExt, StreamExt};
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

use super::{
    dead_letter::{self, Reason},
    topology, AmqpLink,
};
use crate::{
    backoff::Backoff,
    callers::Callers,
    domain::{Caller, Command, Error, ErrorBody, IdempotencyKey, Outcome},
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

/// What the worker needs to know: the broker's topology, who may call, where replies may go.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// The command queue (`SESSION_COMMAND_QUEUE`).
    pub queue: String,
    /// The events exchange (`SESSION_EVENTS_EXCHANGE`), declared with the queues.
    pub events_exchange: String,
    /// Commands taken at once (`AMQP_PREFETCH`).
    pub prefetch: u16,
    /// How long the dead-letter queue keeps a message (`SESSION_DEAD_LETTER_TTL_SEC`).
    pub dead_letter_ttl: Duration,
    /// Who may call (`SESSION_CALLERS_FILE`, `SESSION_API_TOKEN`); none: anyone may.
    pub callers: Callers,
    /// Where replies may go besides `amq.gen-…` and Direct Reply-to
    /// (`SESSION_REPLY_TO_PREFIXES`).
    pub reply_to_prefixes: Vec<String>,
}

/// The prefixes of the queue names that replies may always go to: server-named queues, and
/// Direct Reply-to (the broker gives a command published with `reply_to:
/// amq.rabbitmq.reply-to` a `reply_to` of `amq.rabbitmq.reply-to.<channel's token>`).
const ALWAYS_REPLIABLE: [&str; 2] = ["amq.gen-", DIRECT_REPLY_TO];

/// The pseudo-queue of Direct Reply-to, which every such `reply_to` starts with.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

impl WorkerSettings {
    /// Whether a reply may go to the queue named `reply_to` (contract §8.2).
    fn may_reply_to(&self, reply_to: &str) -> bool {
        ALWAYS_REPLIABLE
            .iter()
            .copied()
            .chain(self.reply_to_prefixes.iter().map(String::as_str))
            .any(|prefix| reply_to.starts_with(prefix))
    }
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
    topology::declare_dead_letter_queue(connection, &settings.queue, settings.dead_letter_ttl)
        .await?;
    let channel = connection.create_channel().await?;
    topology::declare_command_queue(&channel, &settings.queue).await?;
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
    let replies_lost = CancellationToken::new();
    let handler = Arc::new(Handler {
        service,
        replies,
        metrics,
        settings: settings.clone(),
        dead_letter_queue: topology::dead_letter_queue(&settings.queue),
        stopped: consumer_stopped.clone(),
        replies_lost: replies_lost.clone(),
    });
    let mut failure = None;
    loop {
        let delivery = tokio::select! {
            () = shutdown.cancelled() => break,
            () = replies_lost.cancelled() => {
                // Without it nothing is answered or dead-lettered: start over on new channels
                // (the commands in flight are redelivered).
                tracing::warn!("the replies channel was closed by the broker; consuming again on new channels");
                break;
            }
            delivery = consumer.next() => delivery,
        };
        match delivery {
            Some(Ok(delivery)) => {
                let handler = handler.clone();
                in_flight.spawn(async move {
                    // A panic is a bug: the command is answered `internal` and dead-lettered
                    // rather than left unacknowledged (and taken again by the next consumer).
                    let handled = AssertUnwindSafe(handler.handle(&delivery))
                        .catch_unwind()
                        .await;
                    if handled.is_err() {
                        handler.after_panic(&delivery).await;
                    }
                });
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
    settings: WorkerSettings,
    dead_letter_queue: String,
    /// Cancelled when the consumer stops (shutdown or a lost channel).
    stopped: CancellationToken,
    /// Cancelled when the replies channel is found closed, so that the consumer starts over.
    replies_lost: CancellationToken,
}

impl Handler {
    /// The name under which a command's publisher appears in logs: its caller's name, else its
    /// `user_id` (the broker-validated AMQP user), else `-`.
    fn publisher<'a>(&'a self, delivery: &'a Delivery) -> &'a str {
        let Some(user) = delivery.properties.user_id() else {
            return "-";
        };
        self.settings
            .callers
            .by_amqp_user(user.as_str())
            .and_then(Caller::name)
            .map_or(user.as_str(), |name| name.as_str())
    }

    async fn handle(&self, delivery: &Delivery) {
        let started = std::time::Instant::now();
        // A reply_to replies may not go to is dead-lettered whoever sent it (contract §8.2);
        // then a publisher that is no caller is answered unauthorized, its body never parsed.
        if !self.may_reply(delivery) {
            // Debug-formatted: the name is the publisher's text, which must not forge lines.
            let reply_to = delivery
                .properties
                .reply_to()
                .as_ref()
                .map(ShortString::as_str);
            tracing::warn!(caller = ?self.publisher(delivery), reply_to = ?reply_to,
                "dead-lettering a command whose reply_to is not a queue replies may go to");
            self.dead_letter(delivery, Reason::ReplyToRefused).await;
            self.metrics
                .record_command("refused", "reply_to_refused", started.elapsed());
            return;
        }
        let caller = match self.caller_of(delivery) {
            Ok(caller) => caller,
            Err(error) => {
                tracing::warn!(caller = ?self.publisher(delivery),
                    "refusing a command whose user_id is no caller's AMQP user");
                self.finish(delivery, None, "refused", &Err(error), started)
                    .await;
                return;
            }
        };
        let key = delivery
            .properties
            .message_id()
            .as_ref()
            .and_then(|id| IdempotencyKey::from_message_id(id.as_str()));
        let command = match Command::parse(&delivery.data) {
            Ok(command) => command,
            Err(error @ Error::InvalidArgument(_)) => {
                // Debug-formatted: the message quotes client text, which must not forge log lines.
                tracing::warn!(caller = caller.shown(), error = ?error.to_string(),
                    "dead-lettering a command that cannot be understood");
                self.reply(delivery, "invalid", &Err(error)).await;
                self.dead_letter(delivery, Reason::InvalidArgument).await;
                self.metrics
                    .record_command("invalid", "dead_lettered", started.elapsed());
                return;
            }
            Err(error) => {
                // Well-formed, but naming a session that cannot exist: answered like any miss.
                let outcome = Err(error);
                self.finish(delivery, key.as_ref(), "unknown", &outcome, started)
                    .await;
                return;
            }
        };
        // A try that timed out or lost its connection may have been applied: its retries go
        // under the same key, the client's message_id or else one of this delivery's own, so
        // that they answer what it did instead of applying it again.
        let key = key.or_else(|| command.changes().then(IdempotencyKey::of_delivery));
        let mut backoff = REDIS_RETRY;
        let outcome = loop {
            match self.service.execute(&caller, &command, key.as_ref()).await {
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
            delivery,
            key.filter(|key| !key.is_of_delivery()).as_ref(),
            command.name(),
            &outcome,
            started,
        )
        .await;
    }

    /// The caller of a command: anyone when no caller is configured, else the one whose AMQP
    /// user the message's `user_id` is (the broker refuses a publish whose `user_id` is not the
    /// publishing connection's user, so it vouches for it).
    fn caller_of(&self, delivery: &Delivery) -> Result<Caller, Error> {
        let callers = &self.settings.callers;
        if callers.is_empty() {
            return Ok(Caller::anyone());
        }
        delivery
            .properties
            .user_id()
            .as_ref()
            .and_then(|user| callers.by_amqp_user(user.as_str()))
            .cloned()
            .ok_or(Error::Unauthorized(
                "the command has no user_id property, or one that is no caller's AMQP user",
            ))
    }

    /// Whether the command's `reply_to`, if it has one, names a queue replies may go to.
    fn may_reply(&self, delivery: &Delivery) -> bool {
        delivery
            .properties
            .reply_to()
            .as_ref()
            .is_none_or(|reply_to| self.settings.may_reply_to(reply_to.as_str()))
    }

    /// After a handler panicked on `delivery`: answers `internal` where a reply may go, and
    /// dead-letters the command (the panic hook has logged where it happened).
    async fn after_panic(&self, delivery: &Delivery) {
        tracing::error!("a command handler panicked; answering internal and dead-lettering it");
        if self.may_reply(delivery) {
            let outcome = Err(Error::internal("a handler panicked"));
            self.reply(delivery, "unknown", &outcome).await;
        }
        self.dead_letter(delivery, Reason::Internal).await;
        self.metrics
            .record_command("unknown", "internal", Duration::ZERO);
    }

    /// Replies, then acknowledges the delivery.
    async fn finish(
        &self,
        delivery: &Delivery,
        message_id: Option<&IdempotencyKey>,
        command: &'static str,
        outcome: &Result<Outcome, Error>,
        started: std::time::Instant,
    ) {
        if !self.reply(delivery, command, outcome).await {
            if message_id.is_some() {
                // Requeued after a pause: the command comes back, and its recorded outcome is
                // what the next reply repeats (it is not applied again).
                self.requeue_later(delivery).await;
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

    /// Gives `delivery` back to the queue after a pause (unless the consumer stops first, when
    /// the broker redelivers it anyway).
    async fn requeue_later(&self, delivery: &Delivery) {
        tokio::select! {
            () = tokio::time::sleep(REQUEUE_AFTER) => {}
            () = self.stopped.cancelled() => return,
        }
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        if let Err(error) = delivery.nack(requeue).await {
            tracing::error!(error = %error, "could not requeue a command");
        }
    }

    /// Dead-letters `delivery`: publishes its redacted copy to the dead-letter queue and, once
    /// the broker has confirmed it, acknowledges the original; if it cannot be published, the
    /// command is requeued after a pause (never dropped).
    async fn dead_letter(&self, delivery: &Delivery, reason: Reason) {
        let (body, properties) =
            dead_letter::copy_of(delivery, reason, self.settings.dead_letter_ttl);
        let routing_key = ShortString::from(self.dead_letter_queue.as_str());
        match self.publish(routing_key, &body, properties).await {
            Ok(Confirmation::Ack(None)) => {
                if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::error!(error = %error, "could not acknowledge a dead-lettered command");
                }
            }
            Ok(_) => {
                // The queue is gone, or refuses (a length limit): requeued, the command would come
                // back for ever. It is given to the broker's own dead-lettering instead.
                tracing::error!(queue = %self.dead_letter_queue,
                    "the dead-letter queue did not take a copy; rejecting the command to the broker's dead-lettering");
                let reject = BasicRejectOptions { requeue: false };
                if let Err(error) = delivery.reject(reject).await {
                    tracing::error!(error = %error, "could not reject a command");
                }
            }
            Err(why) => {
                tracing::error!(error = %why, "could not dead-letter a command; requeueing it");
                self.requeue_later(delivery).await;
            }
        }
    }

    /// Publishes on the replies channel (confirm mode) to the default exchange, `mandatory` so
    /// that a message no queue takes comes back (as the confirmation's returned message)
    /// instead of vanishing unseen, and waits for the confirm: a blocked connection (a broker
    /// alarm) never confirms, so not for ever. A Direct Reply-to reply is not `mandatory`: it is
    /// routed by no queue, and RabbitMQ (3.10 here) returns it although it delivered it.
    async fn publish(
        &self,
        routing_key: ShortString,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<Confirmation, String> {
        let mandatory = !routing_key.as_str().starts_with(DIRECT_REPLY_TO);
        let published = async {
            let confirm = self
                .replies
                .basic_publish(
                    "".into(),
                    routing_key,
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    body,
                    properties,
                )
                .await?;
            confirm.await
        };
        let confirmed = match tokio::time::timeout(CONFIRM_TIMEOUT, published).await {
            Ok(confirmed) => confirmed.map_err(|error| error.to_string()),
            Err(_) => Err(format!("no confirm within {CONFIRM_TIMEOUT:?}")),
        };
        if confirmed.is_err() && !self.replies.status().connected() {
            self.replies_lost.cancel();
        }
        confirmed
    }

    /// Publishes the reply when the command asked for one; `false` if it could not be published.
    async fn reply(
        &self,
        delivery: &Delivery,
        command: &'static str,
        outcome: &Result<Outcome, Error>,
    ) -> bool {
        let Some(reply_to) = delivery.properties.reply_to().clone() else {
            return true;
        };
        let mut properties = BasicProperties::default()
            .with_content_type(ShortString::from("application/json"))
            .with_delivery_mode(2);
        let correlation_id = delivery.properties.correlation_id().clone();
        if let Some(correlation_id) = &correlation_id {
            properties = properties.with_correlation_id(correlation_id.clone());
        }
        let shown_correlation_id = correlation_id.as_ref().map(ShortString::as_str);
        match self
            .publish(reply_to.clone(), &Reply::encode(outcome), properties)
            .await
        {
            Ok(Confirmation::Ack(Some(_))) => {
                // The reply queue is gone (its client went away): nobody waits for the reply.
                // Its body is not logged: it may hold the session's tokens.
                tracing::warn!(
                    reply_to = ?reply_to.as_str(),
                    correlation_id = ?shown_correlation_id,
                    command,
                    "a reply could not be delivered: no queue of that name; it is dropped"
                );
                true
            }
            Ok(Confirmation::Nack(_)) => {
                // The reply queue refuses it (a length limit, say): requeued, the command would
                // hold its delivery and come back for as long as the queue refuses. The outcome
                // is recorded, so the client's retry under its message_id gets it.
                tracing::warn!(
                    reply_to = ?reply_to.as_str(),
                    correlation_id = ?shown_correlation_id,
                    command,
                    "the reply queue refused a reply; it is dropped"
                );
                true
            }
            Ok(_) => true,
            Err(why) => {
                tracing::error!(error = %why, command, "could not publish a reply");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_to_server_named_queues_direct_reply_to_and_the_configured_prefixes() {
        let settings = WorkerSettings {
            queue: "q".into(),
            events_exchange: "e".into(),
            prefetch: 1,
            dead_letter_ttl: Duration::from_secs(1),
            callers: Callers::default(),
            reply_to_prefixes: vec!["replies.".into()],
        };
        for allowed in [
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "amq.rabbitmq.reply-to.g1h2AA5yZXBseUAyNjY2ODQzMAAAAAkAAAAAZ2hSoA==",
            "replies.bff-1",
        ] {
            assert!(settings.may_reply_to(allowed), "{allowed}");
        }
        for refused in [
            "session.commands",
            "q.dead",
            "amq.genx",
            "replies",
            "",
            "other.replies.",
        ] {
            assert!(!settings.may_reply_to(refused), "{refused}");
        }
    }
}
