//! `session-manager rewrap` (contract §7.1): re-seals every stored secret value that is plain
//! text or sealed under a key other than the keyring's first, while instances keep serving.
//!
//! It walks every key under the prefix with `SCAN` (on each master of a cluster). For a session
//! hash it reads the values, re-seals them here, and writes them back with a compare-and-set
//! script: one small atomic call per key, so that Redis is never blocked for long, and a value
//! that an instance wrote in between (already sealed under its first key) is left as it is and
//! read again. Stopping it at any point leaves every value readable; running it again finishes
//! the work. Values under a key id the ring does not hold, and values in the sealed form that do
//! not open, are counted and left alone. What older versions kept in idempotency records is
//! taken out: records of reads, which versions before reads went unrecorded (contract §7.4)
//! wrote with a copy of the session, are deleted (nothing reads them), and the copy of the
//! session in an UpdateSession's record, which versions before records were bound to their
//! command (contract §8.3) kept, is deleted from it (the same compare-and-set).

use std::collections::BTreeMap;

use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::Value;

use super::{
    hash::{of_code, HashField},
    keys::KeyKind,
    script::{Arg, Constants, Layout, LuaScript, Source},
    Store, StoreError,
};
use crate::{
    domain::SessionId,
    keyring::{Keyring, OpenError, Sealing},
};

static REWRAP_HASH: Source = Source {
    name: "rewrap_hash.lua",
    text: include_str!("lua/rewrap_hash.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["session_key"],
        args: &[],
        rest: Some("changes_at"),
    },
};

static REWRAP_RECORD: Source = Source {
    name: "rewrap_record.lua",
    text: include_str!("lua/rewrap_record.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["record_key"],
        args: &[Arg::Text("old"), Arg::Text("new")],
        rest: None,
    },
};

/// Keys asked of each `SCAN` step. `SCAN` itself is one of the longest commands of a rewrap: at
/// 500 it took 8.3 ms on a million keys (docs/BENCHMARKS.md), so a step asks for fewer.
const SCAN_COUNT: usize = 100;
/// Keys re-sealed at once.
const IN_FLIGHT: usize = 16;
/// How often a key is read again when instances keep changing it meanwhile.
const ATTEMPTS: usize = 5;
/// How an unsealed value is counted.
pub const PLAIN: &str = "(plain text)";

/// What a rewrap has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RewrapReport {
    /// Keys under the prefix looked at.
    pub keys_scanned: u64,
    /// Values written back re-sealed.
    pub values_resealed: u64,
    /// Secret values by how they are stored now: the key id, or [`PLAIN`].
    pub by_key: BTreeMap<String, u64>,
    /// Values under a key id the ring does not hold (left as they are), by that id.
    pub unknown_keys: BTreeMap<String, u64>,
    /// Keys that instances kept changing through every attempt (run again).
    pub keys_skipped: u64,
    /// Values in the sealed form that do not open (damaged, or moved), left as they are.
    pub broken: u64,
    /// Records of reads (`GetSession`, `ListSessions`) deleted: versions before reads went
    /// unrecorded kept a copy of the session in them, and nothing reads them any more.
    pub read_records_deleted: u64,
    /// Copies of a session taken out of UpdateSession records, which versions before records
    /// were bound to their command kept (contract §8.3).
    pub session_copies_deleted: u64,
}

impl RewrapReport {
    fn add(&mut self, other: Self) {
        self.keys_scanned += other.keys_scanned;
        self.values_resealed += other.values_resealed;
        self.keys_skipped += other.keys_skipped;
        self.broken += other.broken;
        self.read_records_deleted += other.read_records_deleted;
        self.session_copies_deleted += other.session_copies_deleted;
        for (into, from) in [
            (&mut self.by_key, other.by_key),
            (&mut self.unknown_keys, other.unknown_keys),
        ] {
            for (id, count) in from {
                *into.entry(id).or_default() += count;
            }
        }
    }

    fn count(&mut self, stored: &str) {
        let label = match Keyring::sealing(stored) {
            Sealing::Plain => PLAIN,
            Sealing::Sealed(id) => id,
        };
        *self.by_key.entry(label.to_owned()).or_default() += 1;
    }
}

/// What to do with one stored value.
enum Verdict {
    /// It is stored as the ring would store it now.
    Current,
    /// Write this instead.
    Reseal(String),
    /// It is sealed under this key id, which the ring does not hold.
    Unknown(String),
    /// It has the sealed form but does not open.
    Broken,
}

/// The error of a sealed value of `field` of session `id` that does not open.
pub(super) fn broken(id: &SessionId, field: HashField) -> StoreError {
    StoreError::Corrupt(format!(
        "the {} of session {id:?} does not open: damaged, or moved from elsewhere",
        field.name()
    ))
}

/// The scripts that write re-sealed values back.
#[derive(Debug)]
pub(super) struct RewrapScripts {
    hash: LuaScript,
    record: LuaScript,
}

impl RewrapScripts {
    pub fn new(constants: &Constants) -> Self {
        Self {
            hash: LuaScript::assemble(&REWRAP_HASH, constants),
            record: LuaScript::assemble(&REWRAP_RECORD, constants),
        }
    }
}

impl Store {
    /// Re-seals every secret value under the prefix that is not sealed under the keyring's
    /// first key, calling `progress` after each `SCAN` step. The ring must not be empty.
    pub async fn rewrap(
        &self,
        mut progress: impl FnMut(&RewrapReport),
    ) -> Result<RewrapReport, StoreError> {
        let scripts = &*self.rewrap;
        let pattern = self.keys.pattern();
        let mut report = RewrapReport::default();
        for node in self.connection.scan_nodes().await? {
            let mut cursor = 0;
            loop {
                let (next, keys) = self
                    .connection
                    .scan_step(&node, cursor, &pattern, SCAN_COUNT)
                    .await?;
                report.keys_scanned += keys.len() as u64;
                let done: Vec<RewrapReport> = stream::iter(keys)
                    .map(|key| self.rewrap_key(scripts, key))
                    .buffer_unordered(IN_FLIGHT)
                    .try_collect()
                    .await?;
                for one in done {
                    report.add(one);
                }
                progress(&report);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(report)
    }

    async fn rewrap_key(
        &self,
        scripts: &RewrapScripts,
        key: String,
    ) -> Result<RewrapReport, StoreError> {
        match self.keys.kind_of(&key) {
            KeyKind::Session(id) => self.rewrap_session(scripts, &key, &id).await,
            KeyKind::Record {
                update_of: Some(_), ..
            } => self.rewrap_record(scripts, &key).await,
            KeyKind::Record { read: true, .. } => {
                let deleted: u64 = redis::cmd("DEL")
                    .arg(&key)
                    .query_async(&mut self.connection.clone())
                    .await?;
                Ok(RewrapReport {
                    read_records_deleted: deleted,
                    ..RewrapReport::default()
                })
            }
            KeyKind::Record { .. } | KeyKind::Claim | KeyKind::Other => Ok(RewrapReport::default()),
        }
    }

    /// The verdict on `stored`, the value of `field` of session `id`.
    fn verdict(&self, id: &SessionId, field: HashField, stored: &str) -> Verdict {
        if self.keyring.is_current(stored) {
            return Verdict::Current;
        }
        match self
            .keyring
            .open(id.as_str(), field.name(), stored.to_owned())
        {
            Ok(plain) => Verdict::Reseal(self.keyring.seal(id.as_str(), field.name(), &plain)),
            Err(OpenError::UnknownKey(key_id)) => Verdict::Unknown(key_id),
            Err(OpenError::Forged) => Verdict::Broken,
        }
    }

    /// The re-sealed form of the `stale` field/value pairs of session `id` that an update
    /// answered: field code, old value, new value. A value under a key the ring lacks, or one
    /// that does not open, fails the update before it writes anything.
    pub(super) fn reseal(
        &self,
        id: &SessionId,
        stale: Vec<String>,
    ) -> Result<Vec<(&'static str, String, String)>, StoreError> {
        let mut resealed = Vec::new();
        let mut stale = stale.into_iter();
        while let (Some(code), Some(old)) = (stale.next(), stale.next()) {
            let field = of_code(&HashField::TABLE, &code)
                .filter(|field| field.is_sealed())
                .ok_or_else(|| {
                    StoreError::Corrupt("an unknown field code among the stale ones".into())
                })?;
            match self.verdict(id, field, &old) {
                Verdict::Current => {}
                Verdict::Reseal(new) => resealed.push((field.code(), old, new)),
                Verdict::Unknown(key_id) => {
                    return Err(StoreError::UnknownKey {
                        session_id: id.as_str().to_owned(),
                        key_id,
                    })
                }
                Verdict::Broken => return Err(broken(id, field)),
            }
        }
        Ok(resealed)
    }

    async fn rewrap_session(
        &self,
        scripts: &RewrapScripts,
        key: &str,
        id: &SessionId,
    ) -> Result<RewrapReport, StoreError> {
        let codes: Vec<&str> = HashField::SEALED.iter().map(|field| field.code()).collect();
        for _ in 0..ATTEMPTS {
            let mut connection = self.connection.clone();
            let values: Vec<Option<String>> = redis::cmd("HMGET")
                .arg(key)
                .arg(&codes)
                .query_async(&mut connection)
                .await?;
            let mut report = RewrapReport::default();
            let mut changes = Vec::new();
            for (field, stored) in HashField::SEALED.into_iter().zip(values) {
                let Some(stored) = stored else { continue };
                match self.verdict(id, field, &stored) {
                    Verdict::Current => report.count(&stored),
                    Verdict::Broken => report.broken += 1,
                    Verdict::Unknown(key_id) => {
                        *report.unknown_keys.entry(key_id).or_default() += 1
                    }
                    Verdict::Reseal(new) => changes.push((field.code(), stored, new)),
                }
            }
            if changes.is_empty() {
                return Ok(report);
            }
            let mut call = scripts.hash.call();
            call.key("session_key", key);
            for (code, old, new) in &changes {
                call.rest(*code).rest(old).rest(new);
            }
            let written: usize = call.invoke(&self.connection).await?;
            if written == changes.len() {
                report.values_resealed += written as u64;
                for (_, _, new) in &changes {
                    report.count(new);
                }
                return Ok(report);
            }
            // An instance wrote in between: read the key again.
        }
        Ok(RewrapReport {
            keys_skipped: 1,
            ..RewrapReport::default()
        })
    }

    /// Strips the copy of the session that versions before 8.3 kept in an UpdateSession's
    /// record (`{"s": "ok", "v": [code, value, …]}`): the record becomes `{"s": "ok", "c": 1}`,
    /// whose repeat answers the session as it is now, and so holds no secret, sealed or not.
    async fn rewrap_record(
        &self,
        scripts: &RewrapScripts,
        key: &str,
    ) -> Result<RewrapReport, StoreError> {
        for _ in 0..ATTEMPTS {
            let mut connection = self.connection.clone();
            let Some(old): Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection)
                .await?
            else {
                return Ok(RewrapReport::default());
            };
            let document: Value = serde_json::from_str(&old).map_err(|error| {
                StoreError::Corrupt(format!("a record: {}", super::json_error(&error)))
            })?;
            // An error outcome holds no value; a record of this version holds none either.
            if !matches!(document.get("v"), Some(Value::Array(_))) {
                return Ok(RewrapReport::default());
            }
            let mut call = scripts.record.call();
            call.key("record_key", key)
                .arg("old", &old)
                .arg("new", r#"{"s":"ok","c":1}"#);
            let written: usize = call.invoke(&self.connection).await?;
            if written == 1 {
                return Ok(RewrapReport {
                    session_copies_deleted: 1,
                    ..RewrapReport::default()
                });
            }
        }
        Ok(RewrapReport {
            keys_skipped: 1,
            ..RewrapReport::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::script::tests::check_pieces;

    #[test]
    fn the_rewrap_scripts_meet_their_needs_and_assemble() {
        let constants = Constants::new(&crate::store::Policy {
            lifetime: std::time::Duration::from_secs(60),
            idle: None,
            max_per_user: None,
            record_retention: std::time::Duration::from_secs(60),
        });
        for source in [&REWRAP_HASH, &REWRAP_RECORD] {
            check_pieces(source);
            LuaScript::assemble(source, &constants);
        }
    }
}
