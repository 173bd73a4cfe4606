//! GetSession. Without idle expiry a read changes nothing (reads are not recorded, and there is no
//! idle deadline to move), so it is one `HGETALL` without a script, unless the session ends
//! within [`CLOCK_SLACK`] by this host's clock: the script then judges by Redis's clock, and ends
//! it if its moment has passed.

use super::{run, strings, CommandCall, ONE_SESSION};
use crate::{
    domain::{Outcome, SessionId},
    store::{
        hash,
        script::{Source, COMMAND_PIECES},
        Store, StoreError, CLOCK_SLACK,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "get.lua",
    text: include_str!("get.lua"),
    pieces: COMMAND_PIECES,
    layout: ONE_SESSION,
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

/// The session read with one `HGETALL`; `None` when the script must answer instead. Without idle
/// expiry a session ends at its `expires_at`.
async fn read(store: &Store, id: &SessionId) -> Result<Option<Outcome>, StoreError> {
    let mut connection = store.connection.clone();
    let pairs: Vec<String> = redis::cmd("HGETALL")
        .arg(store.keys.session(id))
        .query_async(&mut connection)
        .await?;
    if pairs.is_empty() {
        return Err(StoreError::NotFound);
    }
    let session = hash::session(id, pairs, &store.keyring)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64);
    if session.expires_at.unix_millis() <= now + CLOCK_SLACK.as_millis() as i64 {
        return Ok(None);
    }
    Ok(Some(Outcome::Session(session)))
}
