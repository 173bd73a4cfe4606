//! Publishing `SessionClosed` events to the topic exchange (contract §4): persistent, CloudEvents
//! structured mode, publisher confirms on. [`AmqpEvents`] is the relay's [`EventSink`]: it owns
//! the events channel, opened on the current connection of the [`AmqpLink`] when there is none
//! or the last one broke. What to publish is decided by the relay.

use std::sync::Arc;

use lapin::{
    options::{BasicPublishOptions, ConfirmSelectOptions},
    BasicProperties, Channel, Confirmation,
};
use tokio::sync::Mutex;

use super::{topology, AmqpLink};
use crate::{domain::SessionClosed, relay::EventSink};

/// The routing key of every `SessionClosed` event.
pub const ROUTING_KEY: &str = "session.closed";

/// Why events could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to RabbitMQ now.
    #[error("not connected to RabbitMQ")]
    NotConnected,
    /// The channel or the broker failed.
    #[error("RabbitMQ failed to take the event")]
    Amqp(#[from] lapin::Error),
    /// The broker refused an event.
    #[error("RabbitMQ refused the event (nack)")]
    Nacked,
}

/// The events channel of one instance.
pub struct AmqpEvents {
    link: Arc<AmqpLink>,
    exchange: String,
    /// Held across an open, so that concurrent publishers open one channel, not one each.
    channel: Mutex<Option<Channel>>,
}

impl AmqpEvents {
    /// Publishes to `exchange` over the connection `link` keeps.
    pub fn new(link: Arc<AmqpLink>, exchange: String) -> Self {
        Self {
            link,
            exchange,
            channel: Mutex::new(None),
        }
    }

    /// The open events channel, opened (and the exchange declared) when needed.
    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut channel = self.channel.lock().await;
        if let Some(open) = channel.as_ref().filter(|c| c.status().connected()) {
            return Ok(open.clone());
        }
        let connection = self.link.current().ok_or(PublishError::NotConnected)?;
        let opened = connection.create_channel().await?;
        opened
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_events_exchange(&opened, &self.exchange).await?;
        *channel = Some(opened.clone());
        Ok(opened)
    }
}

impl EventSink for AmqpEvents {
    type Error = PublishError;

    async fn publish(&self, events: &[SessionClosed]) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(events.len());
        for event in events {
            let seconds = u64::try_from(event.closed_at.unix_millis() / 1000)
                .expect("a Timestamp is never before 1970");
            let properties = BasicProperties::default()
                .with_content_type(SessionClosed::CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_message_id(event.event_id().into())
                .with_type(SessionClosed::TYPE.into())
                .with_timestamp(seconds);
            let confirm = channel
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
        Ok(())
    }

    /// Closes the events channel.
    async fn close(&self) {
        if let Some(channel) = self.channel.lock().await.take() {
            if let Err(error) = channel.close(200, "shutting down".into()).await {
                tracing::debug!(error = %error, "closing the events channel");
            }
        }
    }
}
