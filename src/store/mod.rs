//! The store: the only code that knows Redis. It owns every key ([`keys`]), the session hash's
//! fields (`hash`), the buckets that spread users over hash slots ([`Bucket`]) and every Lua
//! script; it must not know about HTTP or AMQP.
//!
//! # Layout
//!
//! - `ops/`: one file per operation (create, get, list, update, delete, delete_user), each with
//!   its script beside it, the keys and arguments it passes and the decoding of its answer.
//! - `outbox`: the outbox streams and the periodic tick, with their scripts.
//! - `rewrap`: re-sealing stored secret values under the keyring's first key.
//! - `script`: how scripts are assembled from a generated header and the pieces under `lua/`.
//! - `hash`, `keys`, `bucket`: the session hash's fields, every key, the buckets.
//! - `connection`: a standalone or cluster connection.
//!
//! Each command is one script call, so it is one round trip and every multi-key change is
//! atomic; only a DeleteUserSessions of more than [`DELETE_STEP`] sessions takes one call per
//! step, each atomic. A changing command with an idempotency key is recorded by the same script
//! (the last step's) for `SESSION_IDEMPOTENCY_SEC`, with the digest of its fingerprint; a
//! repetition answers the recorded outcome, the key used again for another command is refused;
//! reads are not recorded (contract §7.4, §8.3).
//!
//! # Keys a script derives
//!
//! Every key a script touches is passed in `KEYS`, except those it can only know once it runs,
//! all in the bucket of the command's user and so in the same hash slot:
//! - the session hashes of the user's sessions, read from the user's index (list, delete_user,
//!   and the eviction of create);
//! - the user's index, named by a stored user id, when a session is ended (get, update, delete,
//!   the tick);
//! - the session hashes named by the bucket's schedule (the tick).

mod bucket;
mod cluster;
mod connection;
mod cursor;
mod hash;
mod keys;
mod lease;
mod ops;
mod outbox;
mod rewrap;
mod script;
mod wait;

use std::time::Duration;

use redis::RedisError;

pub use bucket::{Bucket, BUCKETS};
pub use connection::{RedisConnection, RedisMode};
pub use hash::field_code;
pub use keys::{KeyKind, Keys};
pub use outbox::{OutboxEntry, GROUP};
pub use rewrap::{RewrapReport, PLAIN};

use self::{
    ops::{CommandCall, CommandScripts},
    outbox::OutboxScripts,
    rewrap::RewrapScripts,
    script::Constants,
};
use crate::{
    domain::{Command, Error, IdempotencyKey, Outcome},
    keyring::Keyring,
};

/// What makes a changing command apply at most once: its idempotency key, and the fingerprint
/// of the command and its caller ([`Command::fingerprint`]), whose digest the record keeps so
/// that the key used again for another request is told apart from a repetition.
#[derive(Debug, Clone, Copy)]
pub struct Idempotency<'a> {
    /// The client's key (`message_id`, `Idempotency-Key`) or a delivery's own.
    pub key: &'a IdempotencyKey,
    /// The name of the caller that gave it (`None`: anyone, no caller configured): keys are
    /// claimed in each caller's own namespace, so that no caller can take another's keys first.
    pub caller: Option<&'a str>,
    /// The command's fingerprint.
    pub fingerprint: &'a [u8],
}

/// Why the store could not apply a command.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The session does not exist, or has ended.
    #[error("no such session")]
    NotFound,
    /// The command asserts a user or device id (named) other than the stored one.
    #[error("{0}: a session's {0} cannot be changed")]
    Conflict(String),
    /// Redis cannot be reached now, or asks to try again later.
    #[error("Redis cannot be reached")]
    Unavailable(#[source] RedisError),
    /// Redis refused a command.
    #[error("Redis answered with an error")]
    Redis(#[source] RedisError),
    /// Too few replicas confirmed a change in time (`REDIS_WAIT_REPLICAS`): it may be lost if its
    /// master fails now, so it is not reported done.
    #[error("only {confirmed} of {wanted} replicas confirmed the write within {within:?}")]
    NotReplicated {
        /// Replicas that confirmed.
        confirmed: i64,
        /// Replicas wanted.
        wanted: u32,
        /// How long the service waited.
        within: Duration,
    },
    /// Redis answered `MOVED` to a standalone connection: it is a cluster node.
    #[error("Redis is a cluster node, talked to as a standalone server (REDIS_CLUSTER=no)")]
    ClusterNode,
    /// A script failed; the message names the piece and its line.
    #[error("a script failed: {0}")]
    Script(String),
    /// An idempotency key was used before for another command, or by another caller.
    #[error("the idempotency key was used for another request")]
    KeyReused,
    /// A list's `after` is not a cursor the service issued for this user.
    #[error("after: is not a cursor of this user's list")]
    BadCursor,
    /// Redis answered something the store never writes.
    #[error("unexpected data from Redis: {0}")]
    Corrupt(String),
    /// A value of a session is sealed under a key the keyring does not hold.
    #[error("a value of session {session_id} is sealed under key id {key_id:?}, which SESSION_ENCRYPTION_KEY does not hold")]
    UnknownKey {
        /// The session, named in full so that an operator can find it.
        session_id: String,
        /// The key id of the value's header.
        key_id: String,
    },
}

/// A JSON error of something Redis answered, without the text serde_json would quote from it
/// (an "invalid type: string \"…\"" quotes the value, which could be a secret).
pub(super) fn json_error(error: &serde_json::Error) -> String {
    let what = match error.classify() {
        serde_json::error::Category::Io => "cannot be read",
        serde_json::error::Category::Syntax => "is not JSON",
        serde_json::error::Category::Data => "is JSON of another shape",
        serde_json::error::Category::Eof => "ends early",
    };
    format!("{what} (line {}, column {})", error.line(), error.column())
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        // redis-rs puts the value it could not convert into the error's text: it is not kept.
        if matches!(
            error.kind(),
            redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
        ) {
            return Self::Corrupt(
                "Redis answered a value of another type than expected (not shown)".into(),
            );
        }
        let unavailable = error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_cluster_error()
            || matches!(
                error.kind(),
                redis::ErrorKind::Server(
                    redis::ServerErrorKind::BusyLoading
                        | redis::ServerErrorKind::TryAgain
                        | redis::ServerErrorKind::ClusterDown
                        | redis::ServerErrorKind::MasterDown
                        | redis::ServerErrorKind::ReadOnly
                        // To a standalone connection: a cluster node, or one being resharded
                        // (a cluster connection follows redirections itself).
                        | redis::ServerErrorKind::Moved
                        | redis::ServerErrorKind::Ask
                )
            )
            // Out of memory, or busy with a long script: the same command may succeed later.
            || matches!(error.code(), Some("OOM" | "BUSY"));
        if unavailable {
            Self::Unavailable(error)
        } else {
            Self::Redis(error)
        }
    }
}

impl From<StoreError> for Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Error::session_not_found(),
            StoreError::KeyReused => Error::key_reused(),
            StoreError::BadCursor => crate::domain::Cursor::refused(),
            StoreError::Conflict(_) => Error::Conflict(error.to_string()),
            StoreError::Unavailable(_)
            | StoreError::ClusterNode
            | StoreError::NotReplicated { .. } => Error::Unavailable(Box::new(error)),
            other => Error::Internal(Box::new(other)),
        }
    }
}

/// When sessions end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Absolute lifetime from creation (`SESSION_EXP_SEC`).
    pub lifetime: Duration,
    /// A session not read or updated for this long ends (`SESSION_IDLE_SEC`).
    pub idle: Option<Duration>,
    /// Creating one more ends the user's oldest (`SESSION_MAX_PER_USER`).
    pub max_per_user: Option<u32>,
    /// How long a command's outcome is kept under its `message_id`.
    pub record_retention: Duration,
}

/// How long Redis keeps a session past its scheduled end, as a safety net: the schedule ends
/// sessions (with their events); the TTL only frees memory if no instance runs for this long.
pub const TTL_MARGIN: Duration = Duration::from_secs(24 * 60 * 60);

/// The most sessions one step of a DeleteUserSessions ends. A step blocks Redis while it runs:
/// `session-bench` saw another client wait at most 6–9 ms during a deletion of 10,000 sessions
/// (all of it 80–180 ms). A user with no more sessions is deleted in one step.
pub const DELETE_STEP: usize = 500;

/// A read counts as use of its session (`last_seen_at`) at most this often, so that reads stay
/// reads: one write a minute per session at the most (contract §7.6).
pub const SEEN_EVERY: Duration = Duration::from_secs(60);

/// How far this host's clock may be from Redis's for a read to skip the script: a session
/// ending sooner than this is read by the script, which judges by Redis's clock.
pub const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// How many replicas must have a change before it counts as done (`REDIS_WAIT_REPLICAS`), and
/// how long to wait for them (`REDIS_WAIT_TIMEOUT_MS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must acknowledge the write.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: Duration,
}

/// The session store over one Redis connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct Store {
    connection: RedisConnection,
    keys: Keys,
    policy: Policy,
    replication: Option<Replication>,
    cursor_key: std::sync::Arc<tokio::sync::OnceCell<cursor::CursorKey>>,
    keyring: std::sync::Arc<Keyring>,
    commands: std::sync::Arc<CommandScripts>,
    outbox: std::sync::Arc<OutboxScripts>,
    leases: std::sync::Arc<lease::LeaseScripts>,
    rewrap: std::sync::Arc<RewrapScripts>,
}

impl Store {
    /// A store over `connection`, with keys under `keys`, sessions ending by `policy` and
    /// secret fields sealed by `keyring` (stored as given when it is empty).
    pub fn new(connection: RedisConnection, keys: Keys, policy: Policy, keyring: Keyring) -> Self {
        let constants = Constants::new(&policy);
        Self {
            connection,
            keys,
            policy,
            replication: None,
            cursor_key: std::sync::Arc::default(),
            keyring: std::sync::Arc::new(keyring),
            commands: std::sync::Arc::new(CommandScripts::new(&constants)),
            outbox: std::sync::Arc::new(OutboxScripts::new(&constants)),
            leases: std::sync::Arc::new(lease::LeaseScripts::new(&constants)),
            rewrap: std::sync::Arc::new(RewrapScripts::new(&constants)),
        }
    }

    /// This store, answering a change only once `replication` says enough replicas have it.
    pub fn waiting_for(mut self, replication: Option<Replication>) -> Self {
        self.replication = replication;
        self
    }

    /// Whether a create may end another session (a per-user limit is set).
    pub fn evicts(&self) -> bool {
        self.policy.max_per_user.is_some()
    }

    /// Answers whether Redis is reachable now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if self.connection.answered_moved() {
            return Err(StoreError::ClusterNode);
        }
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(StoreError::from)
    }

    /// Applies one command. A changing command is applied once per idempotency key: a
    /// repetition (the same fingerprint) answers the first outcome, another command under the
    /// key is [`StoreError::KeyReused`]. A read is not recorded: it always answers the current
    /// state.
    pub async fn apply(
        &self,
        command: &Command,
        idempotency: Option<Idempotency<'_>>,
    ) -> Result<Outcome, StoreError> {
        let record = CommandCall::new(self, command, idempotency);
        record.claim(self).await?;
        let outcome = match command {
            Command::CreateSession(new) => ops::create::apply(self, record, new).await,
            Command::GetSession(id) => ops::get::apply(self, record, id).await,
            Command::ListSessions(user_id, page) => {
                ops::list::apply(self, record, user_id, page).await
            }
            Command::UpdateSession(id, patch) => ops::update::apply(self, record, id, patch).await,
            Command::DeleteSession(id) => ops::delete::apply(self, record, id).await,
            Command::DeleteUserSessions(user_id, except) => {
                ops::delete_user::apply(self, record, user_id, except.as_ref()).await
            }
        }?;
        if let (Some(replication), true) = (self.replication, command.changes()) {
            self.await_replicas(Bucket::of_command(command), replication)
                .await?;
        }
        Ok(outcome)
    }

    /// Waits (`WAIT`, on the master of `bucket`) until `replication.replicas` replicas have the
    /// writes made so far; too few in time is [`StoreError::NotReplicated`].
    async fn await_replicas(
        &self,
        bucket: Bucket,
        replication: Replication,
    ) -> Result<(), StoreError> {
        let confirmed = self
            .connection
            .wait(&self.keys.base(bucket), replication)
            .await?;
        if confirmed < i64::from(replication.replicas) {
            return Err(StoreError::NotReplicated {
                confirmed,
                wanted: replication.replicas,
                within: replication.timeout,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Chain;

    #[test]
    fn a_value_redis_rs_could_not_convert_is_not_kept_in_the_error() {
        let answer = redis::Value::BulkString(b"access-token-4d3c2b".to_vec());
        let error = redis::from_redis_value::<i64>(answer).unwrap_err();
        assert!(
            error.to_string().contains("access-token-4d3c2b"),
            "redis-rs quotes it: {error}"
        );
        let error = Error::from(StoreError::from(RedisError::from(error)));
        let logged = Chain(&error).to_string();
        assert!(!logged.contains("access-token"), "{logged}");
        assert!(logged.contains("another type"), "{logged}");
    }

    #[test]
    fn json_errors_of_answers_do_not_quote_them() {
        let error = serde_json::from_str::<u64>(r#""refresh-token-1a2b""#).unwrap_err();
        assert!(error.to_string().contains("refresh-token-1a2b"), "{error}");
        assert!(!json_error(&error).contains("refresh-token"));
    }
}
