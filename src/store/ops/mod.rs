//! The six operations of the store, one file each (as mini-redis keeps a command's parsing,
//! application and reply in one file): the operation's script (`<operation>.lua` beside it), the
//! keys and arguments it is called with, and the decoding of its answer.
//!
//! Every command script starts with the same keys and arguments (its idempotency record, its
//! bucket's schedule and outbox; the record's TTL, the digests of the command's fingerprint and
//! the bucket's key base), which [`CommandCall`] adds, and answers one JSON document, `{"s": "ok", "v": …}` or `{"s": "<error>", "f": …}`,
//! which [`answer`] reads; except the list's, which is never recorded and cannot fail, and
//! answers its page as a plain array.

pub(super) mod create;
pub(super) mod delete;
pub(super) mod delete_user;
pub(super) mod get;
pub(super) mod list;
pub(super) mod update;

use serde::Deserialize;
use serde_json::Value;

use super::{
    script::{Arg, Call, Constants, Layout, LuaScript, Source},
    Bucket, Idempotency, Store, StoreError,
};
use crate::domain::{Command, IdempotencyKey, SessionId};

/// The command scripts of one store.
#[derive(Debug)]
pub(super) struct CommandScripts {
    pub create: LuaScript,
    pub get: LuaScript,
    pub list: LuaScript,
    pub update: LuaScript,
    pub delete: LuaScript,
    pub delete_user: LuaScript,
    /// Not a command: marks a read session as seen.
    pub seen: LuaScript,
    /// Not a command: claims an idempotency key for a command (`claim.lua`).
    pub claim: LuaScript,
}

/// The claim of an idempotency key, before the command it is given with.
pub(super) static CLAIM: Source = Source {
    name: "claim.lua",
    text: include_str!("../lua/claim.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["claim_key"],
        args: &[Arg::Text("digests"), Arg::Number("ttl")],
        rest: None,
    },
};

impl CommandScripts {
    pub fn new(constants: &Constants) -> Self {
        let assemble = |source| LuaScript::assemble(source, constants);
        Self {
            create: assemble(&create::SCRIPT),
            get: assemble(&get::SCRIPT),
            list: assemble(&list::SCRIPT),
            update: assemble(&update::SCRIPT),
            delete: assemble(&delete::SCRIPT),
            delete_user: assemble(&delete_user::SCRIPT),
            seen: assemble(&get::SEEN),
            claim: assemble(&CLAIM),
        }
    }
}

/// The statuses a command script answers with, `STATUS.<status>` in the scripts.
pub(super) mod status {
    /// Done; `v` holds the result.
    pub const OK: &str = "ok";
    /// No such live session.
    pub const NOT_FOUND: &str = "not_found";
    /// The command asserts a user or device id (`f`) other than the stored one.
    pub const CONFLICT: &str = "conflict";
    /// A step of a DeleteUserSessions that leaves sessions to end: call again.
    pub const MORE: &str = "more";
    /// The idempotency key was used for another command (or by another caller).
    pub const REUSED: &str = "reused";
    /// An update found secret fields not sealed under the current key (`v`: their codes and
    /// values) and wrote nothing: re-seal them and call again.
    pub const STALE: &str = "stale";
    /// Every status.
    pub const ALL: [&str; 6] = [OK, NOT_FOUND, CONFLICT, MORE, STALE, REUSED];
}

/// How long the record of a command applied under a delivery's own key is kept: long enough for
/// the worker's retries of that delivery (they run every few seconds while Redis can be reached),
/// short enough that commands without `message_id` cost little memory.
pub const DELIVERY_RECORD_RETENTION: std::time::Duration = std::time::Duration::from_secs(10 * 60);

/// How long the record (and a stepped deletion's progress) of a command applied under `id` is
/// kept.
pub(super) fn record_retention(store: &Store, id: &IdempotencyKey) -> std::time::Duration {
    if id.is_of_delivery() {
        DELIVERY_RECORD_RETENTION
    } else {
        store.policy.record_retention
    }
}

/// A command on its way to its script: the command and what names its idempotency record.
pub(super) struct CommandCall<'a> {
    pub command: &'a Command,
    pub idempotency: Option<Idempotency<'a>>,
    /// The digests of the fingerprint, comma-separated (`Keyring::digests`; empty without
    /// idempotency), made once for the claim and every call of the script.
    digests: String,
}

impl<'a> CommandCall<'a> {
    /// The call of `command`, recorded under `idempotency` when it changes the sessions.
    pub fn new(store: &Store, command: &'a Command, idempotency: Option<Idempotency<'a>>) -> Self {
        let idempotency = idempotency.filter(|_| command.changes());
        let digests = idempotency.map_or_else(String::new, |idempotency| {
            store.keyring.digests(idempotency.fingerprint).join(",")
        });
        Self {
            command,
            idempotency,
            digests,
        }
    }

    /// Claims the idempotency key of the command for it, in its caller's namespace:
    /// `Err(KeyReused)` when the caller used the key for another command (of any session or
    /// user). A delivery's own key is unique and needs no claim, and a command without key none.
    pub async fn claim(&self, store: &Store) -> Result<(), StoreError> {
        let Some(idempotency) = self.idempotency.filter(|i| !i.key.is_of_delivery()) else {
            return Ok(());
        };
        let ttl = record_retention(store, idempotency.key).as_secs().max(1);
        let mut call = store.commands.claim.call();
        call.key(
            "claim_key",
            store.keys.claim(idempotency.caller, idempotency.key),
        )
        .arg("digests", &self.digests)
        .arg("ttl", ttl);
        match call.invoke::<i64>(&store.connection).await? {
            1 => Ok(()),
            _ => Err(StoreError::KeyReused),
        }
    }

    /// The idempotency key, if the command is recorded.
    pub fn key(&self) -> Option<&IdempotencyKey> {
        self.idempotency.map(|idempotency| idempotency.key)
    }

    /// A call of `script` with the keys and arguments every command script starts with.
    pub fn call<'s>(&self, store: &Store, script: &'s LuaScript) -> Call<'s> {
        let bucket = Bucket::of_command(self.command);
        let key = self.key();
        let ttl = key.map_or(0, |key| record_retention(store, key).as_secs().max(1));
        let mut call = script.call();
        call.key("record_key", store.keys.record(self.command, key))
            .key("schedule_key", store.keys.schedule(bucket))
            .key("outbox_key", store.keys.outbox(bucket))
            .arg("record_ttl", ttl)
            .arg("digests", &self.digests)
            .arg("base", store.keys.base(bucket));
        call
    }

    /// A call of a script about one session: its layout starts as [`ONE_SESSION`] does.
    pub fn call_on_session<'s>(
        &self,
        store: &Store,
        script: &'s LuaScript,
        id: &SessionId,
    ) -> Call<'s> {
        let mut call = self.call(store, script);
        call.key("session_key", store.keys.session(id))
            .arg("session_id", id.as_str());
        call
    }
}

/// The keys and arguments of a command script about one session and nothing else.
pub(super) const ONE_SESSION: Layout = Layout {
    command_script: true,
    keys: &["session_key"],
    args: &[Arg::Text("session_id")],
    rest: None,
};

/// The document every command script answers.
#[derive(Deserialize)]
struct Document {
    s: String,
    #[serde(default)]
    v: Value,
    #[serde(default)]
    f: Option<String>,
}

/// Runs a command script and answers the `v` of its document, or the error it answered.
async fn run(call: &Call<'_>, store: &Store) -> Result<Value, StoreError> {
    let document: String = call.invoke(&store.connection).await?;
    answer(&document)
}

/// The `v` of a script's document, or the error it answered.
fn answer(document: &str) -> Result<Value, StoreError> {
    Document::parse(document)?.into_value()
}

impl Document {
    /// The document a script answered.
    fn parse(document: &str) -> Result<Self, StoreError> {
        serde_json::from_str(document)
            .map_err(|e| StoreError::Corrupt(format!("script answer: {}", super::json_error(&e))))
    }

    /// Its `v`, or the error it answered.
    fn into_value(self) -> Result<Value, StoreError> {
        match self.s.as_str() {
            status::OK => Ok(self.v),
            status::NOT_FOUND => Err(StoreError::NotFound),
            status::REUSED => Err(StoreError::KeyReused),
            status::CONFLICT => {
                let field = self
                    .f
                    .ok_or_else(|| StoreError::Corrupt("a conflict that names no field".into()))?;
                Err(StoreError::Conflict(field))
            }
            other => Err(StoreError::Corrupt(format!(
                "unknown script status {other:?}"
            ))),
        }
    }
}

/// The strings of a script's `v`; an empty Lua table arrives as `{}`.
fn strings(value: Value) -> Result<Vec<String>, StoreError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                _ => Err(StoreError::Corrupt(
                    "expected a list of strings, got another value".into(),
                )),
            })
            .collect(),
        Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        _ => Err(StoreError::Corrupt(
            "expected a list, got another value".into(),
        )),
    }
}

/// A session id a script answered.
fn session_id(id: &str) -> Result<SessionId, StoreError> {
    // The text is not shown: what is no session id could be anything, a secret included.
    SessionId::parse(id).ok_or_else(|| StoreError::Corrupt("a session id of another form".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::script::tests::check_pieces;

    #[test]
    fn every_command_script_meets_its_needs_and_assembles() {
        let constants = Constants::new(&crate::store::Policy {
            lifetime: std::time::Duration::from_secs(60),
            idle: Some(std::time::Duration::from_secs(30)),
            max_per_user: Some(3),
            record_retention: std::time::Duration::from_secs(60),
        });
        for source in [
            &create::SCRIPT,
            &get::SCRIPT,
            &list::SCRIPT,
            &update::SCRIPT,
            &delete::SCRIPT,
            &delete_user::SCRIPT,
            &get::SEEN,
            &CLAIM,
        ] {
            check_pieces(source);
            // Panics at a constant that the Rust side does not define.
            LuaScript::assemble(source, &constants);
        }
    }
}
