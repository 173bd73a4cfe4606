//! The core: applies a [`Command`] for either front end. The store applies it atomically,
//! writing the `SessionClosed` events of the sessions it ends into the outbox in the same step;
//! the core then wakes the relay so that they are published at once. Transports build the
//! command and map the outcome; nothing else talks to the store.

use std::sync::Arc;

use crate::{
    domain::{Command, Error, MessageId, Outcome},
    metrics::Metrics,
    relay::RelayWake,
    store::{Store, StoreError},
};

/// The one implementation of every session operation.
#[derive(Clone)]
pub struct SessionService {
    store: Store,
    relay_wake: Arc<RelayWake>,
    metrics: Arc<Metrics>,
}

impl SessionService {
    /// `relay_wake` is notified whenever a command may have written events to the outbox;
    /// `metrics` counts what fails on a value sealed under a key the ring does not hold.
    pub fn new(store: Store, relay_wake: Arc<RelayWake>, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            relay_wake,
            metrics,
        }
    }

    /// The store, for readiness checks.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Applies `command`; a changing one once per `message_id`: a repetition returns the first
    /// outcome (reads are answered from the current state).
    pub async fn execute(
        &self,
        command: &Command,
        message_id: Option<&MessageId>,
    ) -> Result<Outcome, Error> {
        let outcome = match self.store.apply(command, message_id).await {
            Ok(outcome) => outcome,
            Err(error) => {
                if matches!(error, StoreError::UnknownKey { .. }) {
                    self.metrics.record_unknown_key();
                }
                return Err(error.into());
            }
        };
        // Deletes and evictions wrote events: have them published now rather than at the next
        // tick (sessions found past their end are left to the tick).
        let wrote_events = match command {
            Command::DeleteSession(_) | Command::DeleteUserSessions(..) => true,
            Command::CreateSession(_) => self.store.evicts(),
            _ => false,
        };
        if wrote_events {
            self.relay_wake.mark(command);
        }
        Ok(outcome)
    }
}
