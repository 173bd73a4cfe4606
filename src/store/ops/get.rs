//! GetSession. Without idle expiry a read changes nothing (reads are not recorded, and there is no
//! idle deadline to move), so it is one `HMGET` of every field without a script, unless the
//! session ends within [`CLOCK_SLACK`] by this host's clock: the script then judges by Redis's
//! clock, and ends it if its moment has passed. A read counts as use (`last_seen_at`) at most once every
//! [`SEEN_EVERY`]: then a small script writes the moment, so most reads write nothing.

use super::{run, strings, CommandCall, ONE_SESSION};
use crate::{
    domain::Timestamp,
    domain::{Outcome, SessionId},
    store::{
        hash,
        script::{Layout, Source, COMMAND_PIECES},
        Store, StoreError, CLOCK_SLACK, SEEN_EVERY,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "get.lua",
    text: include_str!("get.lua"),
    pieces: COMMAND_PIECES,
    layout: ONE_SESSION,
};

pub(in crate::store) static SEEN: Source = Source {
    name: "seen.lua",
    text: include_str!("seen.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["session_key"],
        args: &[],
        rest: None,
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    id: &SessionId,
) -> Result<Outcome, StoreError> {
    if store.policy.idle.is_none() {
        if let Some(outcome) = read(store, id).await? {
            return Ok(outcome);
        }
    }
    let call = record.call_on_session(store, &store.commands.get, id);
    let pairs = strings(run(&call, store).await?)?;
    Ok(Outcome::Session(hash::session(id, pairs, &store.keyring)?))
}

/// The session read with one `HMGET` of every field; `None` when the script must answer
/// instead. Without idle expiry a session ends at its `expires_at`.
async fn read(store: &Store, id: &SessionId) -> Result<Option<Outcome>, StoreError> {
    let mut connection = store.connection.clone();
    let values: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(store.keys.session(id))
        .arg(&hash::EVERY_CODE)
        .query_async(&mut connection)
        .await?;
    let mut session =
        hash::session_of_values(id, values, &store.keyring)?.ok_or(StoreError::NotFound)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    if session.expires_at.unix_millis() <= now + CLOCK_SLACK.as_millis() as i64 {
        return Ok(None);
    }
    let seen = session.last_seen_at.map_or(0, Timestamp::unix_millis);
    if now - seen >= SEEN_EVERY.as_millis() as i64 {
        let mut call = store.commands.seen.call();
        call.key("session_key", store.keys.session(id));
        let written: i64 = call.invoke(&store.connection).await?;
        if written == 0 {
            return Err(StoreError::NotFound);
        }
        session.last_seen_at = Timestamp::from_unix_millis(written).or(session.last_seen_at);
    }
    Ok(Some(Outcome::Session(session)))
}
