//! Publishing `SessionClosed` events to the topic exchange (contract §4): persistent, CloudEvents
//! structured mode, publisher confirms on. It owns the events channel and nothing else; what to
//! publish is decided by the core.

use std::sync::Arc;

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions},
    types::FieldTable,
    BasicProperties, Channel, Confirmation, Connection, ExchangeKind,
};

use crate::{domain::SessionClosed, metrics::Metrics};

/// The routing key of every `SessionClosed` event.
pub const ROUTING_KEY: &str = "session.closed";

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ failed to take the event")]
    Amqp(#[from] lapin::Error),
    #[error("RabbitMQ refused the event (nack)")]
    Nacked,
}

/// Publishes events on its own confirm-mode channel.
#[derive(Clone)]
pub struct EventPublisher {
    channel: Channel,
    exchange: String,
    metrics: Arc<Metrics>,
}

impl EventPublisher {
    /// Opens the events channel and declares the durable topic exchange.
    pub async fn open(
        connection: &Connection,
        exchange: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
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
            .await?;
        Ok(Self {
            channel,
            exchange: exchange.to_owned(),
            metrics,
        })
    }

    /// Whether the channel can still publish.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Closes the events channel (at shutdown, after the last publish).
    pub async fn close(&self) {
        if let Err(error) = self.channel.close(200, "shutting down".into()).await {
            tracing::debug!(error = %error, "closing the events channel");
        }
    }

    /// Publishes the events and waits until the broker has confirmed every one of them.
    pub async fn publish(&self, events: &[SessionClosed]) -> Result<(), PublishError> {
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let properties = BasicProperties::default()
                .with_content_type(SessionClosed::CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_message_id(event.event_id().into())
                .with_type(SessionClosed::TYPE.into())
                .with_timestamp(u64::try_from(event.closed_at.unix_millis() / 1000).unwrap_or(0));
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    ROUTING_KEY.into(),
                    BasicPublishOptions::default(),
                    &event.to_cloudevent_json(),
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            if let Confirmation::Nack(_) = confirm.await? {
                return Err(PublishError::Nacked);
            }
        }
        self.metrics.record_events_published(events.len());
        Ok(())
    }
}
