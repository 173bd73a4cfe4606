//! UpdateSession: sets and clears the client's fields of a live session, checks the user and
//! device ids the client asserts, moves the idle deadline, and answers the whole session. With a
//! key set, the secret fields it did not change are sealed too if they were still plain or under
//! an older key (a second call, needed only for sessions written before the ring changed).

use super::{run, strings, CommandCall};
use crate::{
    domain::{DeviceId, Outcome, SessionId, SessionPatch, UserId},
    store::{
        hash,
        script::{Arg, Layout, Source, COMMAND_PIECES},
        Store, StoreError,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "update.lua",
    text: include_str!("update.lua"),
    pieces: COMMAND_PIECES,
    layout: Layout {
        command_script: true,
        keys: &["session_key"],
        args: &[
            Arg::Text("session_id"),
            Arg::Text("asserted_user_id"),
            Arg::Text("asserted_device_id"),
        ],
        rest: Some("set_at"),
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    id: &SessionId,
    patch: &SessionPatch,
) -> Result<Outcome, StoreError> {
    let (set, cleared) = hash::patch(patch, id, &store.keyring);
    let mut call = record.call_on_session(store, &store.commands.update, id);
    call.arg(
        "asserted_user_id",
        patch.user_id.as_ref().map_or("", UserId::as_str),
    )
    .arg(
        "asserted_device_id",
        patch.device_id.as_ref().map_or("", DeviceId::as_str),
    )
    .rest(set.len());
    for (code, value) in set {
        call.rest(code).rest(value);
    }
    for code in cleared {
        call.rest(code);
    }
    let pairs = strings(run(&call, store).await?)?;
    store.reseal_stale_fields(id, &pairs).await?;
    Ok(Outcome::Session(hash::session(id, pairs, &store.keyring)?))
}
