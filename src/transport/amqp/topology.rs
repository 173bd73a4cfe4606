//! What the service declares on the broker: the durable quorum command queue, dead-lettering to
//! `<queue>.dead` (a quorum queue too), and the durable topic exchange of the events. Declared by
//! the worker on every connection before it consumes (the exchange first, so that it exists by
//! the time the instance is ready), and the exchange again by the events channel when it opens.

use lapin::{
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable},
    Channel, ExchangeKind,
};

/// The name of the dead-letter queue of `queue`.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Declares the command queue and its dead-letter queue.
pub async fn declare_queues(channel: &Channel, queue: &str) -> Result<(), lapin::Error> {
    let dead_letter_queue = dead_letter_queue(queue);
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(dead_letter_queue.as_str().into(), durable, quorum.clone())
        .await?;
    let mut arguments = quorum;
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
        .queue_declare(queue.into(), durable, arguments)
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
