//! The six operations of the store, one file each (as mini-redis keeps a command's parsing,
//! application and reply in one file): the operation's script (`<operation>.lua` beside it), the
//! keys and arguments it is called with, and the decoding of its answer.
//!
//! Every command script starts with the same keys and arguments (its idempotency record, its
//! bucket's schedule and outbox; the record's TTL and the bucket's key base), which [`Record`]
//! adds, and answers one JSON document, `{"s": "ok", "v": …}` or `{"s": "<error>", "f": …}`,
//! which [`answer`] reads.

pub(super) mod create;
pub(super) mod delete;
pub(super) mod delete_user;
pub(super) mod get;
pub(super) mod list;
pub(super) mod update;

use serde::Deserialize;
use serde_json::Value;

use super::{
    script::{Call, Constants, LuaScript},
    Bucket, Store, StoreError,
};
use crate::domain::{Command, MessageId, SessionId};

/// The command scripts of one store.
#[derive(Debug)]
pub(super) struct CommandScripts {
    pub create: LuaScript,
    pub get: LuaScript,
    pub list: LuaScript,
    pub update: LuaScript,
    pub delete: LuaScript,
    pub delete_user: LuaScript,
}

impl CommandScripts {
    pub fn new(constants: &Constants) -> Self {
        Self {
            create: create::script(constants),
            get: get::script(constants),
            list: list::script(constants),
            update: update::script(constants),
            delete: delete::script(constants),
            delete_user: delete_user::script(constants),
        }
    }
}

/// A command on its way to its script, with its idempotency record.
pub(super) struct Record<'a> {
    pub command: &'a Command,
    pub message_id: Option<&'a MessageId>,
}

impl Record<'_> {
    /// A call of `script` with the keys and arguments every command script starts with.
    pub fn call<'s>(&self, store: &Store, script: &'s LuaScript) -> Call<'s> {
        let bucket = Bucket::of_command(self.command);
        let ttl = self
            .message_id
            .map_or(0, |_| store.policy.record_retention.as_secs().max(1));
        let mut call = script.call();
        call.key(
            "record_key",
            store.keys.record(self.command, self.message_id),
        )
        .key("schedule_key", store.keys.schedule(bucket))
        .key("outbox_key", store.keys.outbox(bucket))
        .arg("record_ttl", ttl)
        .arg("base", store.keys.base(bucket));
        call
    }
}

/// The document every command script answers.
#[derive(Deserialize)]
struct Document {
    s: String,
    #[serde(default)]
    v: Value,
    #[serde(default)]
    f: Option<String>,
}

/// The `v` of a script's document, or the error it answered.
fn answer(document: &str) -> Result<Value, StoreError> {
    let document: Document = serde_json::from_str(document)
        .map_err(|e| StoreError::Corrupt(format!("script answer: {e}")))?;
    match document.s.as_str() {
        "ok" => Ok(document.v),
        "not_found" => Err(StoreError::NotFound),
        "conflict" => Err(StoreError::Conflict(document.f.unwrap_or_default())),
        other => Err(StoreError::Corrupt(format!(
            "unknown script status {other:?}"
        ))),
    }
}

/// The strings of a script's `v`; an empty Lua table arrives as `{}`.
fn strings(value: Value) -> Result<Vec<String>, StoreError> {
    match value {
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => Ok(text),
                other => Err(StoreError::Corrupt(format!(
                    "expected a string, got {other}"
                ))),
            })
            .collect(),
        Value::Object(map) if map.is_empty() => Ok(Vec::new()),
        other => Err(StoreError::Corrupt(format!("expected a list, got {other}"))),
    }
}

/// A session id a script answered.
fn session_id(id: &str) -> Result<SessionId, StoreError> {
    SessionId::parse(id).ok_or_else(|| StoreError::Corrupt(format!("bad session id {id:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::script::{tests::check_pieces, Piece, COMMAND_PIECES};

    #[test]
    fn every_command_script_meets_its_needs() {
        let scripts = [
            ("create.lua", create::SCRIPT, &create::LAYOUT),
            ("get.lua", get::SCRIPT, &get::LAYOUT),
            ("list.lua", list::SCRIPT, &list::LAYOUT),
            ("update.lua", update::SCRIPT, &update::LAYOUT),
            ("delete.lua", delete::SCRIPT, &delete::LAYOUT),
            ("delete_user.lua", delete_user::SCRIPT, &delete_user::LAYOUT),
        ];
        for (name, text, layout) in scripts {
            check_pieces(Piece { name, text }, COMMAND_PIECES, layout);
        }
    }
}
