//! DeleteSession: ends one live session with reason `deleted`, writing its event.

use super::{answer, Record, ONE_SESSION};
use crate::{
    domain::{Outcome, SessionId},
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
    record: Record<'_>,
    id: &SessionId,
) -> Result<Outcome, StoreError> {
    let document: String = record
        .call_on_session(store, &store.commands.delete, id)
        .invoke(&store.connection)
        .await?;
    answer(&document)?;
    Ok(Outcome::SessionDeleted {
        session_id: id.clone(),
    })
}
