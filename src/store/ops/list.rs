//! ListSessions: a page of the user's live sessions, oldest first, with their device ids and
//! the cursor of the next page; index entries of sessions that ended are dropped on the way.

use super::{run, session_id, strings, CommandCall};
use crate::{
    domain::{cursor, DeviceId, ListPage, Outcome, Position, SessionSummary, UserId},
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
        args: &[
            Arg::Text("user_id"),
            Arg::Number("limit"),
            Arg::Text("after"),
        ],
        rest: None,
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    user_id: &UserId,
    page: &ListPage,
) -> Result<Outcome, StoreError> {
    let mut call = record.call(store, &store.commands.list);
    call.key("index_key", store.keys.index(user_id))
        .arg("user_id", user_id.as_str())
        .arg("limit", page.limit)
        .arg(
            "after",
            page.after
                .map_or(String::new(), |Position(at)| at.to_string()),
        );
    let mut pairs = strings(run(&call, store).await?)?.into_iter();
    let next = match pairs.next().as_deref() {
        None | Some("") => None,
        Some(score) => {
            // Scores are whole microseconds, which Redis writes without a fraction.
            let at = score
                .parse::<i64>()
                .map_err(|_| StoreError::Corrupt(format!("index score {score:?}")))?;
            Some(cursor(user_id, Position(at)))
        }
    };
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
        next,
    })
}
