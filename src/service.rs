//! The core: applies a [`Command`] for a [`Caller`], for either front end. It checks the
//! caller's scope, has the store apply the command atomically (writing the `SessionClosed`
//! events of the sessions it ends into the outbox in the same step), takes the sealed fields out
//! of the answer for a caller that may not read them, writes one audit line per changing
//! command, and wakes the relay so that the events are published at once. Transports recognise
//! the caller, build the command and map the outcome; nothing else talks to the store.

use std::sync::Arc;

use crate::{
    domain::{Caller, Command, Error, IdempotencyKey, Outcome, UserId},
    metrics::Metrics,
    relay::RelayWake,
    store::{Idempotency, Store, StoreError},
};

/// The target of the audit lines, one per changing command (contract §8.1), so that they can
/// be routed or kept apart from the rest of the log.
pub const AUDIT_TARGET: &str = "session_manager::audit";

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

    /// Applies `command` for `caller`, when it holds the command's scope; a changing one once
    /// per idempotency `key`: a repetition of the same command by the same caller answers the
    /// first outcome, another command under that key is a `conflict` (reads are answered from
    /// the current state).
    pub async fn execute(
        &self,
        caller: &Caller,
        command: &Command,
        key: Option<&IdempotencyKey>,
    ) -> Result<Outcome, Error> {
        let outcome = self.apply(caller, command, key).await;
        if command.changes() {
            audit(caller, command, &outcome);
        }
        outcome
    }

    async fn apply(
        &self,
        caller: &Caller,
        command: &Command,
        key: Option<&IdempotencyKey>,
    ) -> Result<Outcome, Error> {
        caller.require(command.scope())?;
        let fingerprint;
        let idempotency = match key {
            Some(key) if command.changes() => {
                fingerprint = command.fingerprint(caller);
                Some(Idempotency {
                    key,
                    caller: caller.name().map(|name| name.as_str()),
                    fingerprint: &fingerprint,
                })
            }
            _ => None,
        };
        let mut outcome = match self.store.apply(command, idempotency).await {
            Ok(outcome) => outcome,
            Err(error) => {
                if matches!(error, StoreError::UnknownKey { .. }) {
                    self.metrics.record_unknown_key();
                }
                return Err(error.into());
            }
        };
        if !caller.reads_secrets() {
            if let Outcome::Session(session) = &mut outcome {
                session.withhold_secrets();
            }
        }
        #[cfg(debug_assertions)]
        fault::panic_if_asked(&outcome);
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

/// Logs the audit line of a changing command: who, what, whose, and how it ended. Never a
/// token and never a whole session id (its `Debug` shows a prefix).
fn audit(caller: &Caller, command: &Command, outcome: &Result<Outcome, Error>) {
    let user_id: Option<&UserId> = match (command, outcome) {
        (Command::CreateSession(new), _) => Some(&new.user_id),
        (Command::DeleteUserSessions(user_id, _), _) => Some(user_id),
        (_, Ok(Outcome::Session(session))) => Some(&session.user_id),
        (_, Ok(Outcome::SessionDeleted { user_id, .. })) => user_id.as_ref(),
        _ => None,
    };
    let session = match (command, outcome) {
        (Command::UpdateSession(id, _) | Command::DeleteSession(id), _) => Some(id),
        (_, Ok(Outcome::SessionCreated { session_id })) => Some(session_id),
        _ => None,
    };
    let code = match outcome {
        Ok(_) => "ok",
        Err(error) => error.code().as_str(),
    };
    tracing::info!(
        target: AUDIT_TARGET,
        caller = caller.shown(),
        command = command.name(),
        user_id = user_id.map(UserId::as_str),
        session = session.map(tracing::field::debug),
        outcome = code,
        "audit"
    );
}

/// A fault that tests inject into debug builds only (release builds have no such code): with
/// `SESSION_DEBUG_PANIC_FOR_USER` set, a command whose answer is a session of that user panics
/// in its handler, with the whole answer in the panic's message, so that a test can show that
/// neither front end prints what a panicking handler held.
#[cfg(debug_assertions)]
mod fault {
    use std::sync::OnceLock;

    use crate::domain::Outcome;

    pub fn panic_if_asked(outcome: &Outcome) {
        static USER: OnceLock<Option<String>> = OnceLock::new();
        let user = USER.get_or_init(|| std::env::var("SESSION_DEBUG_PANIC_FOR_USER").ok());
        if let (Some(user), Outcome::Session(session)) = (user, outcome) {
            if session.user_id.as_str() == user {
                let answer = serde_json::to_string(outcome).unwrap_or_default();
                panic!("injected panic (SESSION_DEBUG_PANIC_FOR_USER) holding {answer}");
            }
        }
    }
}
