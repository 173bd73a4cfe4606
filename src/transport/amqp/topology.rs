//! What the service declares on the broker: the durable quorum command queue, dead-lettering to
//! `<queue>.dead` (a quorum queue too, whose messages live `SESSION_DEAD_LETTER_TTL_SEC`), and
//! the durable topic exchange of the events. Declared by
//! the worker on every connection before it consumes (the exchange first, so that it exists by
//! the time the instance is ready), and the exchange again by the events channel when it opens.

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, Connection, ExchangeKind,
};

/// Whether this process has warned of a dead-letter queue declared without the TTL.
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The name of the dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the dead-letter queue of `queue`, keeping a message at most `ttl`. One declared
/// without that TTL (by version 2) or with another keeps working: the broker refuses the
/// declaration, the queue is only checked to exist, and the log says how to set the TTL with a
/// policy.
pub async fn declare_dead_letter_queue(
    connection: &Connection,
    queue: &str,
    ttl: Duration,
) -> Result<(), lapin::Error> {
    let dead_letter_queue = dead_letter_queue(queue);
    let mut arguments = quorum();
    let ttl_ms = ttl.as_millis().min(u32::MAX as u128) as u32;
    arguments.insert("x-message-ttl".into(), AMQPValue::LongUInt(ttl_ms));
    // A refused declaration closes its channel: each try has a channel of its own.
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(dead_letter_queue.as_str().into(), durable(), arguments)
        .await;
    match declared {
        Ok(_) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(())
        }
        Err(error) if error.is_amqp_soft_error() => {
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    dead_letter_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = channel.close(200, "checked".into()).await;
            // Once per process: a policy that sets the TTL does not change the queue's declared
            // arguments, so the broker refuses the declaration on every connection.
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            let pattern = format!("^{}$", dead_letter_queue.replace('.', "\\."));
            tracing::warn!(
                queue = %dead_letter_queue,
                ttl_ms,
                "the dead-letter queue exists without this message TTL in its arguments \
                 (declared by an older version, or with another SESSION_DEAD_LETTER_TTL_SEC) and \
                 is used as it is; unless a policy gives it a TTL already, add one: rabbitmqctl \
                 set_policy session-dead-letters '{pattern}' '{{\"message-ttl\": {ttl_ms}}}' \
                 --apply-to queues (this warning stays: a policy does not change the arguments)"
            );
            Ok(())
        }
        Err(error) => Err(error),
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn quorum() -> FieldTable {
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    quorum
}

/// Declares the command queue, which dead-letters to `<queue>.dead` (declared before it).
pub async fn declare_command_queue(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let dead_letter_queue = dead_letter_queue(queue);
    let mut arguments = quorum();
    arguments.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    // At-least-once dead-lettering (RabbitMQ >= 3.10): a rejected command is kept until the
    // dead-letter queue has confirmed it, never dropped on the way. It requires reject-publish.
    arguments.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    arguments.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead_letter_queue.as_str().into()),
    );
    channel
        .queue_declare(queue.into(), durable(), arguments)
        .await?;
    Ok(())
}

/// Declares the durable topic exchange of the events.
pub async fn declare_events_exchange(
    channel: &Channel,
    exchange: &str,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
