//! The store: the only code that knows Redis. It owns every key ([`keys`]) and every Lua
//! script (`lua/`), and turns each command into one script call, so that each command is one
//! round trip and every multi-key change is atomic; only a DeleteUserSessions of more than
//! [`DELETE_STEP`] sessions takes one call per step, each atomic. It must not know about HTTP or
//! AMQP.
//!
//! Each script returns one JSON document (`{"s": "ok", "v": …}` or `{"s": "<error code>"}`);
//! when the command has a `message_id`, the same script (the last step's) records that document (for
//! `SESSION_IDEMPOTENCY_SEC`, 24 hours by default) and
//! returns it again for every repetition, so a repeated command repeats its first outcome.

mod connection;
mod keys;

use std::time::Duration;

use redis::{RedisError, Script};
use serde::Deserialize;
use serde_json::Value;

pub use connection::{RedisConnection, RedisMode};
pub use keys::Keys;

use crate::domain::{
    Bucket, CloseReason, Command, DeviceId, Error, Field, MessageId, MutableFields, Outcome,
    Secret, Session, SessionClosed, SessionId, SessionSummary, Timestamp, UserEmail, UserId,
};

/// Why the store could not apply a command.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis cannot be reached")]
    Unavailable(#[source] RedisError),
    #[error("Redis answered with an error")]
    Redis(#[source] RedisError),
    #[error("unexpected data from Redis: {0}")]
    Corrupt(String),
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
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
            StoreError::Unavailable(_) => Error::Unavailable(Box::new(error)),
            other => Error::Internal(Box::new(other)),
        }
    }
}

/// The keys of a bucket and `end_session`, shared by the command scripts and the tick.
const BUCKET_LUA: &str = include_str!("lua/bucket.lua");

/// A command script: the record check and policy, the bucket helpers, `live`/`touch`, `body`.
fn script(body: &str) -> Script {
    Script::new(&format!(
        "{}{BUCKET_LUA}{}{body}",
        include_str!("lua/prologue.lua"),
        include_str!("lua/live.lua")
    ))
}

/// The Lua scripts, loaded into Redis once and then called by SHA.
struct Scripts {
    create: Script,
    get: Script,
    update: Script,
    list: Script,
    delete: Script,
    delete_user: Script,
    tick: Script,
    acknowledge: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            create: script(include_str!("lua/create.lua")),
            get: script(include_str!("lua/get.lua")),
            update: script(include_str!("lua/update.lua")),
            list: script(include_str!("lua/list.lua")),
            delete: script(include_str!("lua/delete.lua")),
            delete_user: script(include_str!("lua/delete_user.lua")),
            tick: Script::new(&format!(
                "local base = ARGV[1]\n{BUCKET_LUA}{}",
                include_str!("lua/tick.lua")
            )),
            acknowledge: Script::new(include_str!("lua/acknowledge.lua")),
        }
    }
}

/// The session store over one Redis connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct Store {
    connection: RedisConnection,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    policy: Policy,
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

/// How long the progress of an unfinished DeleteUserSessions without message id is kept (an
/// instance stopped between its steps leaves it behind).
const PROGRESS_RETENTION: Duration = Duration::from_secs(60 * 60);

/// How far this host's clock may be from Redis's for a read to skip the script: a session
/// ending sooner than this is read by the script, which judges by Redis's clock.
pub const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// An event taken from an outbox, to publish and then acknowledge.
#[derive(Debug)]
pub struct OutboxEntry {
    pub id: String,
    pub event: Option<SessionClosed>,
}

/// The document every script returns.
#[derive(Deserialize)]
struct ScriptOutcome {
    s: String,
    #[serde(default)]
    v: Value,
    #[serde(default)]
    f: Option<String>,
}

impl Store {
    pub fn new(connection: RedisConnection, keys: Keys, policy: Policy) -> Self {
        Self {
            connection,
            keys,
            scripts: std::sync::Arc::new(Scripts::new()),
            policy,
        }
    }

    /// Whether a create may end another session (a per-user limit is set).
    pub fn evicts(&self) -> bool {
        self.policy.max_per_user.is_some()
    }

    /// Answers whether Redis is reachable now.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<()>(&mut connection)
            .await
            .map_err(StoreError::from)
    }

    /// Applies one command in one script call and decodes its outcome.
    pub async fn apply(
        &self,
        command: &Command,
        message_id: Option<&MessageId>,
    ) -> Result<Result<Outcome, Error>, StoreError> {
        // A plain read changes nothing (no record, no idle deadline to move): read it without a
        // script, unless it is near or past its end, which the script then judges (and ends).
        if let (Command::GetSession(id), None, None) = (command, message_id, self.policy.idle) {
            if let Some(outcome) = self.read(id).await? {
                return Ok(outcome);
            }
        }
        let script = match command {
            Command::CreateSession(_) => &self.scripts.create,
            Command::GetSession(_) => &self.scripts.get,
            Command::ListSessions(_) => &self.scripts.list,
            Command::UpdateSession(..) => &self.scripts.update,
            Command::DeleteSession(_) => &self.scripts.delete,
            Command::DeleteUserSessions(_) => &self.scripts.delete_user,
        };
        let bucket = command.bucket();
        let keys = &self.keys;
        let policy = &self.policy;
        let mut invocation = script.prepare_invoke();
        // The arguments every script starts with (see lua/prologue.lua).
        let record_ttl = message_id.map_or(0, |_| policy.record_retention.as_secs().max(1));
        let millis = |duration: Duration| duration.as_millis() as u64;
        invocation
            .arg(record_ttl)
            .arg(keys.base(bucket))
            .arg(millis(policy.lifetime))
            .arg(policy.idle.map_or(0, millis))
            .arg(policy.max_per_user.unwrap_or(0))
            .arg(millis(TTL_MARGIN));
        let record = keys.record(command, message_id);
        match command {
            Command::CreateSession(new) => {
                let id = SessionId::generate(&new.user_id);
                invocation
                    .key(keys.session(&id))
                    .key(record)
                    .key(keys.index(&new.user_id))
                    .arg(id.as_str())
                    .arg(new.user_id.as_str())
                    .arg("d")
                    .arg(new.device_id.as_str());
                for (name, value) in stored_fields(&new.fields) {
                    invocation.arg(name).arg(value);
                }
            }
            Command::GetSession(id) | Command::DeleteSession(id) => {
                invocation
                    .key(keys.session(id))
                    .key(record)
                    .arg(id.as_str());
            }
            Command::ListSessions(user_id) => {
                invocation
                    .key(keys.index(user_id))
                    .key(record)
                    .arg(user_id.as_str());
            }
            Command::DeleteUserSessions(user_id) => {
                invocation
                    .key(keys.index(user_id))
                    .key(record)
                    .key(keys.progress(command, message_id))
                    .arg(user_id.as_str())
                    .arg(DELETE_STEP)
                    .arg(record_ttl.max(PROGRESS_RETENTION.as_secs()));
            }
            Command::UpdateSession(id, patch) => {
                let set = stored_fields(&MutableFields {
                    auth_code: value_of(&patch.auth_code),
                    access_token: value_of(&patch.access_token),
                    refresh_token: value_of(&patch.refresh_token),
                    expiration_time: value_of(&patch.expiration_time),
                    user_email: value_of(&patch.user_email),
                });
                invocation
                    .key(keys.session(id))
                    .key(record)
                    .arg(id.as_str())
                    .arg(patch.user_id.as_ref().map_or("", UserId::as_str))
                    .arg(patch.device_id.as_ref().map_or("", DeviceId::as_str))
                    .arg(set.len());
                for (name, value) in set {
                    invocation.arg(name).arg(value);
                }
                let cleared = [
                    ("ac", matches!(patch.auth_code, Field::Null)),
                    ("at", matches!(patch.access_token, Field::Null)),
                    ("rt", matches!(patch.refresh_token, Field::Null)),
                    ("et", matches!(patch.expiration_time, Field::Null)),
                    ("em", matches!(patch.user_email, Field::Null)),
                ];
                for (name, _) in cleared.iter().filter(|(_, clear)| *clear) {
                    invocation.arg(*name);
                }
            }
        }
        let mut connection = self.connection.clone();
        loop {
            let document: String = invocation.invoke_async(&mut connection).await?;
            // Only DeleteUserSessions answers 'more': it has further steps to take.
            if document != "more" {
                return decode(command, &document);
            }
        }
    }

    /// Reads a session with one `HGETALL`; `None` when the script must answer instead: the
    /// session ends within [`CLOCK_SLACK`] by this host's clock (the schedule, on Redis's clock,
    /// may already have ended it). Without idle expiry a session ends at its `expires_at`.
    async fn read(&self, id: &SessionId) -> Result<Option<Result<Outcome, Error>>, StoreError> {
        let mut connection = self.connection.clone();
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(self.keys.session(id))
            .query_async(&mut connection)
            .await?;
        if fields.is_empty() {
            return Ok(Some(Err(Error::session_not_found())));
        }
        let session = session_from_pairs(id, fields)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        if session.expires_at.unix_millis() <= now + CLOCK_SLACK.as_millis() as i64 {
            return Ok(None);
        }
        Ok(Some(Ok(Outcome::Session(session))))
    }

    /// Runs the periodic work of every bucket (see `lua/tick.lua`): ends the sessions whose
    /// moment has passed and takes up to `limit` outbox entries per bucket for `consumer`.
    pub async fn tick(
        &self,
        buckets: Option<&[Bucket]>,
        consumer: &str,
        limit: usize,
        stale_after: Duration,
        forget_idle_consumers: Option<Duration>,
    ) -> Result<Vec<(Bucket, Vec<OutboxEntry>)>, StoreError> {
        let buckets: Vec<Bucket> = match buckets {
            Some(buckets) => buckets.to_vec(),
            None => Bucket::all().collect(),
        };
        let calls = buckets.into_iter().map(|bucket| {
            let mut invocation = self.scripts.tick.prepare_invoke();
            invocation
                .key(self.keys.schedule(bucket))
                .arg(self.keys.base(bucket))
                .arg(consumer)
                .arg(limit)
                .arg(stale_after.as_millis() as u64)
                .arg(forget_idle_consumers.map_or(0, |idle| idle.as_millis().max(1) as u64));
            let mut connection = self.connection.clone();
            async move {
                let entries: Vec<(String, Vec<String>)> =
                    invocation.invoke_async(&mut connection).await?;
                let entries = entries
                    .into_iter()
                    .map(|(id, fields)| OutboxEntry {
                        event: outbox_event(fields),
                        id,
                    })
                    .collect::<Vec<_>>();
                Ok::<_, StoreError>((bucket, entries))
            }
        });
        let mut batches = Vec::new();
        for result in futures_util::future::join_all(calls).await {
            let (bucket, entries) = result?;
            if !entries.is_empty() {
                batches.push((bucket, entries));
            }
        }
        Ok(batches)
    }

    /// Removes published entries from a bucket's outbox.
    pub async fn acknowledge(&self, bucket: Bucket, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut invocation = self.scripts.acknowledge.prepare_invoke();
        invocation.key(self.keys.outbox(bucket));
        for id in ids {
            invocation.arg(id);
        }
        let mut connection = self.connection.clone();
        invocation
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(StoreError::from)
    }
}

/// The event of an outbox entry (fields `s u d r t`); `None` when it cannot be read.
fn outbox_event(fields: Vec<String>) -> Option<SessionClosed> {
    let mut fields = fields.into_iter();
    let (mut session_id, mut user_id, mut device_id, mut reason, mut closed_at) =
        (None, None, None, None, None);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        match name.as_str() {
            "s" => session_id = SessionId::parse(&value),
            "u" => user_id = Some(UserId::from_stored(value)),
            "d" => device_id = Some(DeviceId::from_stored(value)),
            "r" => reason = CloseReason::parse(&value),
            "t" => closed_at = value.parse().ok().map(Timestamp::from_unix_millis),
            _ => {}
        }
    }
    Some(SessionClosed {
        session_id: session_id?,
        user_id: user_id?,
        device_id: device_id?,
        reason: reason?,
        closed_at: closed_at?,
    })
}

fn value_of<T: Clone>(field: &Field<T>) -> Option<T> {
    match field {
        Field::Value(value) => Some(value.clone()),
        Field::Absent | Field::Null => None,
    }
}

/// The optional fields that have a value, under their names in the session hash.
fn stored_fields(fields: &MutableFields) -> Vec<(&'static str, String)> {
    [
        (
            "ac",
            fields.auth_code.as_ref().map(|s| s.expose().to_owned()),
        ),
        (
            "at",
            fields.access_token.as_ref().map(|s| s.expose().to_owned()),
        ),
        (
            "rt",
            fields.refresh_token.as_ref().map(|s| s.expose().to_owned()),
        ),
        ("et", fields.expiration_time.map(|t| t.to_string())),
        (
            "em",
            fields.user_email.as_ref().map(|e| e.as_str().to_owned()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|value| (name, value)))
    .collect()
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

/// The strings of a script's `v`; an empty Lua table arrives as `{}`.
fn strings(value: Value) -> Result<Vec<String>, StoreError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(corrupt(format!("expected a string, got {other}"))),
            })
            .collect(),
        Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        other => Err(corrupt(format!("expected a list, got {other}"))),
    }
}

fn millis(text: &str) -> Result<Timestamp, StoreError> {
    text.parse()
        .map(Timestamp::from_unix_millis)
        .map_err(|_| corrupt(format!("bad timestamp {text:?}")))
}

fn session_from_pairs(id: &SessionId, pairs: Vec<String>) -> Result<Session, StoreError> {
    let (mut user_id, mut device_id) = (None, None);
    let (mut created_at, mut updated_at, mut expires_at) = (None, None, None);
    let mut fields = MutableFields::default();
    let mut pairs = pairs.into_iter();
    while let (Some(name), Some(value)) = (pairs.next(), pairs.next()) {
        match name.as_str() {
            "u" => user_id = Some(UserId::from_stored(value)),
            "d" => device_id = Some(DeviceId::from_stored(value)),
            "ac" => fields.auth_code = Some(Secret::from_stored(value)),
            "at" => fields.access_token = Some(Secret::from_stored(value)),
            "rt" => fields.refresh_token = Some(Secret::from_stored(value)),
            "et" => {
                fields.expiration_time =
                    Some(value.parse().map_err(|_| corrupt("bad expiration_time"))?)
            }
            "em" => fields.user_email = Some(UserEmail::from_stored(value)),
            "c" => created_at = Some(millis(&value)?),
            "m" => updated_at = Some(millis(&value)?),
            "x" => expires_at = Some(millis(&value)?),
            _ => {}
        }
    }
    let missing = || corrupt("session hash lacks a required field");
    Ok(Session {
        session_id: id.clone(),
        user_id: user_id.ok_or_else(missing)?,
        device_id: device_id.ok_or_else(missing)?,
        auth_code: fields.auth_code,
        access_token: fields.access_token,
        refresh_token: fields.refresh_token,
        expiration_time: fields.expiration_time,
        user_email: fields.user_email,
        created_at: created_at.ok_or_else(missing)?,
        updated_at: updated_at.ok_or_else(missing)?,
        expires_at: expires_at.ok_or_else(missing)?,
    })
}

/// Turns a script's document into the command's outcome.
fn decode(command: &Command, document: &str) -> Result<Result<Outcome, Error>, StoreError> {
    let outcome: ScriptOutcome =
        serde_json::from_str(document).map_err(|e| corrupt(format!("script outcome: {e}")))?;
    match outcome.s.as_str() {
        "ok" => {}
        "not_found" => return Ok(Err(Error::session_not_found())),
        "conflict" => {
            let field = outcome.f.unwrap_or_default();
            return Ok(Err(Error::Conflict(format!(
                "{field}: a session's {field} cannot be changed"
            ))));
        }
        other => return Err(corrupt(format!("unknown script status {other:?}"))),
    }
    let session_ids = |value: Value| -> Result<Vec<SessionId>, StoreError> {
        strings(value)?
            .iter()
            .map(|id| SessionId::parse(id).ok_or_else(|| corrupt("bad session id")))
            .collect()
    };
    Ok(Ok(match command {
        Command::CreateSession(_) => {
            let id = outcome.v.as_str().and_then(SessionId::parse);
            Outcome::SessionCreated {
                session_id: id.ok_or_else(|| corrupt("create returned no session id"))?,
            }
        }
        Command::GetSession(id) | Command::UpdateSession(id, _) => {
            Outcome::Session(session_from_pairs(id, strings(outcome.v)?)?)
        }
        Command::ListSessions(user_id) => {
            let mut sessions = Vec::new();
            let mut pairs = strings(outcome.v)?.into_iter();
            while let (Some(id), Some(device_id)) = (pairs.next(), pairs.next()) {
                sessions.push(SessionSummary {
                    session_id: SessionId::parse(&id).ok_or_else(|| corrupt("bad session id"))?,
                    device_id: DeviceId::from_stored(device_id),
                });
            }
            Outcome::SessionList {
                user_id: user_id.clone(),
                sessions,
            }
        }
        Command::DeleteSession(id) => Outcome::SessionDeleted {
            session_id: id.clone(),
        },
        Command::DeleteUserSessions(user_id) => Outcome::UserSessionsDeleted {
            user_id: user_id.clone(),
            session_ids: session_ids(outcome.v)?,
        },
    }))
}
