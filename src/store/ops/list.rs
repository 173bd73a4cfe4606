//! ListSessions: the user's live sessions, oldest first, with their device ids; index entries of
//! sessions that ended are dropped on the way.

use super::{run, session_id, strings, CommandCall};
use crate::{
    domain::{DeviceId, Outcome, SessionSummary, UserId},
    store::{
        script::{Arg, Layout, Source, COMMAND_PIECES},
        Store, StoreError,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "list.lua",
    text: include_str!("list.lua"),
    pieces: COMMAND_PIECES,
    layout: Layout {
        command_script: true,
        keys: &["index_key"],
        args: &[Arg::Text("user_id")],
        rest: None,
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    user_id: &UserId,
) -> Result<Outcome, StoreError> {
    let mut call = record.call(store, &store.commands.list);
    call.key("index_key", store.keys.index(user_id))
        .arg("user_id", user_id.as_str());
    let mut pairs = strings(run(&call, store).await?)?.into_iter();
    let mut sessions = Vec::new();
    while let (Some(id), Some(device_id)) = (pairs.next(), pairs.next()) {
        sessions.push(SessionSummary {
            session_id: session_id(&id)?,
            device_id: DeviceId::from_stored(device_id),
        });
    }
    Ok(Outcome::SessionList {
        user_id: user_id.clone(),
        sessions,
    })
}
