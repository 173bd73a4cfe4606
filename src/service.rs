//! The core: applies a [`Command`] for either front end. It asks the store to apply the command
//! and publishes the `SessionClosed` events of the sessions that ended. Transports build the
//! command and map the outcome; nothing else talks to the store.

use crate::{
    domain::{Command, Error, MessageId, Outcome},
    events::EventPublisher,
    store::Store,
};

/// The one implementation of every session operation.
#[derive(Clone)]
pub struct SessionService {
    store: Store,
    events: EventPublisher,
}

impl SessionService {
    pub fn new(store: Store, events: EventPublisher) -> Self {
        Self { store, events }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn events(&self) -> &EventPublisher {
        &self.events
    }

    /// Applies `command` once per `message_id` (a repetition returns the first outcome) and
    /// publishes the events of the sessions it ended. When the events cannot be published the
    /// result is `Unavailable`: applying the same command again with the same `message_id`
    /// publishes them again (with the same event ids).
    pub async fn execute(
        &self,
        command: &Command,
        message_id: Option<&MessageId>,
    ) -> Result<Outcome, Error> {
        let applied = self.store.apply(command, message_id).await?;
        if !applied.closed.is_empty() {
            self.events
                .publish(&applied.closed)
                .await
                .map_err(|error| Error::Unavailable(Box::new(error)))?;
        }
        applied.outcome
    }
}
