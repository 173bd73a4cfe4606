//! DeleteSession: ends one live session with reason `deleted`, writing its event.

use super::{run, CommandCall, ONE_SESSION};
use crate::{
    domain::{Outcome, SessionId, UserId},
    store::{
        script::{Source, COMMAND_PIECES},
        Store, StoreError,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "delete.lua",
    text: include_str!("delete.lua"),
    pieces: COMMAND_PIECES,
    layout: ONE_SESSION,
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    id: &SessionId,
) -> Result<Outcome, StoreError> {
    let call = record.call_on_session(store, &store.commands.delete, id);
    let user_id = run(&call, store).await?;
    Ok(Outcome::SessionDeleted {
        session_id: id.clone(),
        user_id: user_id
            .as_str()
            .map(|id| UserId::from_stored(id.to_owned())),
    })
}
