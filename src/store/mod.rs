//! The store: the only code that knows Redis. It owns every key ([`keys`]) and every Lua
//! script (`lua/`), and turns each command into one script call, so that each command is one
//! round trip and every multi-key change is atomic. It must not know about HTTP or AMQP.
//!
//! Each script returns one JSON document (`{"s": "ok", "v": …}` or `{"s": "<error code>"}`);
//! when the command has a `message_id`, the same script records that document for 24 hours and
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
    Applied, CloseReason, Command, DeviceId, Error, Field, MessageId, MutableFields, Outcome,
    Secret, Session, SessionClosed, SessionId, SessionSummary, Timestamp, UserEmail, UserId,
};

/// How long a command's outcome is remembered under its `message_id`.
pub const RECORD_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

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
            );
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

fn script(body: &str) -> Script {
    Script::new(&format!("{}{}", include_str!("lua/prologue.lua"), body))
}

/// The Lua scripts, loaded into Redis once and then called by SHA.
struct Scripts {
    create: Script,
    get: Script,
    update: Script,
    list: Script,
    delete: Script,
    delete_user: Script,
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
        }
    }
}

/// The session store over one Redis connection (multiplexed, reconnecting).
#[derive(Clone)]
pub struct Store {
    connection: RedisConnection,
    keys: Keys,
    scripts: std::sync::Arc<Scripts>,
    lifetime: Duration,
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
    /// `lifetime` is the absolute lifetime of a session (`SESSION_EXP_SEC`).
    pub fn new(connection: RedisConnection, keys: Keys, lifetime: Duration) -> Self {
        Self {
            connection,
            keys,
            scripts: std::sync::Arc::new(Scripts::new()),
            lifetime,
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
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
    ) -> Result<Applied, StoreError> {
        let record_ttl = if message_id.is_some() {
            RECORD_RETENTION.as_secs()
        } else {
            0
        };
        let keys = &self.keys;
        let mut invocation;
        match command {
            Command::CreateSession(new) => {
                let id = SessionId::generate(&new.user_id);
                invocation = self.scripts.create.prepare_invoke();
                invocation
                    .key(keys.session(&id))
                    .key(keys.record(id.bucket(), command.name(), message_id))
                    .key(keys.index(&new.user_id))
                    .arg(record_ttl)
                    .arg(keys.session_prefix(id.bucket()))
                    .arg(id.as_str())
                    .arg(self.lifetime.as_millis() as u64)
                    .arg("u")
                    .arg(new.user_id.as_str())
                    .arg("d")
                    .arg(new.device_id.as_str());
                for (name, value) in stored_fields(&new.fields) {
                    invocation.arg(name).arg(value);
                }
            }
            Command::GetSession(id) => {
                invocation = self.scripts.get.prepare_invoke();
                invocation
                    .key(keys.session(id))
                    .key(keys.record(id.bucket(), command.name(), message_id))
                    .arg(record_ttl);
            }
            Command::ListSessions(user_id) => {
                invocation = self.scripts.list.prepare_invoke();
                invocation
                    .key(keys.index(user_id))
                    .key(keys.record(user_id.bucket(), command.name(), message_id))
                    .arg(record_ttl)
                    .arg(keys.session_prefix(user_id.bucket()));
            }
            Command::UpdateSession(id, patch) => {
                invocation = self.scripts.update.prepare_invoke();
                let set = MutableFields {
                    auth_code: value_of(&patch.auth_code),
                    access_token: value_of(&patch.access_token),
                    refresh_token: value_of(&patch.refresh_token),
                    expiration_time: value_of(&patch.expiration_time),
                    user_email: value_of(&patch.user_email),
                };
                let set = stored_fields(&set);
                invocation
                    .key(keys.session(id))
                    .key(keys.record(id.bucket(), command.name(), message_id))
                    .arg(record_ttl)
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
            Command::DeleteSession(id) => {
                invocation = self.scripts.delete.prepare_invoke();
                invocation
                    .key(keys.session(id))
                    .key(keys.record(id.bucket(), command.name(), message_id))
                    .arg(record_ttl)
                    .arg(keys.index_prefix(id.bucket()))
                    .arg(id.as_str());
            }
            Command::DeleteUserSessions(user_id) => {
                invocation = self.scripts.delete_user.prepare_invoke();
                invocation
                    .key(keys.index(user_id))
                    .key(keys.record(user_id.bucket(), command.name(), message_id))
                    .arg(record_ttl)
                    .arg(keys.session_prefix(user_id.bucket()));
            }
        }
        let mut connection = self.connection.clone();
        let document: String = invocation.invoke_async(&mut connection).await?;
        decode(command, &document)
    }
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

/// Turns a script's document into the command's outcome and the sessions it ended.
fn decode(command: &Command, document: &str) -> Result<Applied, StoreError> {
    let outcome: ScriptOutcome =
        serde_json::from_str(document).map_err(|e| corrupt(format!("script outcome: {e}")))?;
    let failed = |error: Error| Applied {
        outcome: Err(error),
        closed: Vec::new(),
    };
    match outcome.s.as_str() {
        "ok" => {}
        "not_found" => return Ok(failed(Error::session_not_found())),
        "conflict" => {
            let field = outcome.f.unwrap_or_default();
            return Ok(failed(Error::Conflict(format!(
                "{field}: a session's {field} cannot be changed"
            ))));
        }
        other => return Err(corrupt(format!("unknown script status {other:?}"))),
    }
    let done = |outcome: Outcome, closed: Vec<SessionClosed>| Applied {
        outcome: Ok(outcome),
        closed,
    };
    Ok(match command {
        Command::CreateSession(_) => {
            let id = outcome.v.as_str().and_then(SessionId::parse);
            let id = id.ok_or_else(|| corrupt("create returned no session id"))?;
            done(Outcome::SessionCreated { session_id: id }, Vec::new())
        }
        Command::GetSession(id) | Command::UpdateSession(id, _) => done(
            Outcome::Session(session_from_pairs(id, strings(outcome.v)?)?),
            Vec::new(),
        ),
        Command::ListSessions(user_id) => {
            let mut sessions = Vec::new();
            let mut pairs = strings(outcome.v)?.into_iter();
            while let (Some(id), Some(device_id)) = (pairs.next(), pairs.next()) {
                sessions.push(SessionSummary {
                    session_id: SessionId::parse(&id).ok_or_else(|| corrupt("bad session id"))?,
                    device_id: DeviceId::from_stored(device_id),
                });
            }
            done(
                Outcome::SessionList {
                    user_id: user_id.clone(),
                    sessions,
                },
                Vec::new(),
            )
        }
        Command::DeleteSession(id) => {
            let values = strings(outcome.v)?;
            let [user_id, device_id, closed_at] = <[String; 3]>::try_from(values)
                .map_err(|_| corrupt("delete returned a bad list"))?;
            let closed = SessionClosed {
                session_id: id.clone(),
                user_id: UserId::from_stored(user_id),
                device_id: DeviceId::from_stored(device_id),
                reason: CloseReason::Deleted,
                closed_at: millis(&closed_at)?,
            };
            done(
                Outcome::SessionDeleted {
                    session_id: id.clone(),
                },
                vec![closed],
            )
        }
        Command::DeleteUserSessions(user_id) => {
            let mut values = strings(outcome.v)?.into_iter();
            let closed_at = millis(&values.next().unwrap_or_default())?;
            let mut closed = Vec::new();
            while let (Some(id), Some(device_id)) = (values.next(), values.next()) {
                closed.push(SessionClosed {
                    session_id: SessionId::parse(&id).ok_or_else(|| corrupt("bad session id"))?,
                    user_id: user_id.clone(),
                    device_id: DeviceId::from_stored(device_id),
                    reason: CloseReason::UserSessionsDeleted,
                    closed_at,
                });
            }
            let session_ids = closed.iter().map(|c| c.session_id.clone()).collect();
            done(
                Outcome::UserSessionsDeleted {
                    user_id: user_id.clone(),
                    session_ids,
                },
                closed,
            )
        }
    })
}
