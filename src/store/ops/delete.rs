//! DeleteSession: ends one live session with reason `deleted`, writing its event.

use super::{answer, Record};
use crate::{
    domain::{Outcome, SessionId},
    store::{
        script::{Arg, Constants, Layout, LuaScript, COMMAND_PIECES},
        Store, StoreError,
    },
};

pub(in crate::store) const SCRIPT: &str = include_str!("delete.lua");
pub(in crate::store) static LAYOUT: Layout = Layout {
    keys: &["record_key", "schedule_key", "outbox_key", "session_key"],
    args: &[
        Arg::Number("record_ttl"),
        Arg::Text("base"),
        Arg::Text("session_id"),
    ],
    rest: None,
};

pub(in crate::store) fn script(constants: &Constants) -> LuaScript {
    LuaScript::assemble("delete.lua", SCRIPT, COMMAND_PIECES, &LAYOUT, constants)
}

pub(in crate::store) async fn apply(
    store: &Store,
    record: Record<'_>,
    id: &SessionId,
) -> Result<Outcome, StoreError> {
    let document: String = record
        .call(store, &store.commands.delete)
        .key("session_key", store.keys.session(id))
        .arg("session_id", id.as_str())
        .invoke(&store.connection)
        .await?;
    answer(&document)?;
    Ok(Outcome::SessionDeleted {
        session_id: id.clone(),
    })
}
