//! ListSessions: a page of the user's live sessions, oldest first, with what a device list
//! shows of each (device, address, user agent, creation, last use) and the cursor of the next
//! page; index entries of sessions that ended are dropped on the way.

use super::{session_id, CommandCall};
use crate::{
    domain::{DeviceId, IpAddress, ListPage, Outcome, Position, SessionSummary, UserAgent, UserId},
    store::{
        hash,
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
    let after = match &page.after {
        Some(cursor) => Some(
            store
                .cursor_key()
                .await?
                .check(user_id, cursor)
                .ok_or(StoreError::BadCursor)?,
        ),
        None => None,
    };
    let mut call = record.call(store, &store.commands.list);
    call.key("index_key", store.keys.index(user_id))
        .arg("user_id", user_id.as_str())
        .arg("limit", page.limit)
        .arg(
            "after",
            after.map_or(String::new(), |Position(at)| at.to_string()),
        );
    let mut pairs = call
        .invoke::<Vec<String>>(&store.connection)
        .await?
        .into_iter();
    let next = match pairs.next().as_deref() {
        None | Some("") => None,
        Some(score) => {
            // The script writes the cursor's score as a whole number of microseconds.
            let at = score
                .parse::<i64>()
                .map_err(|_| StoreError::Corrupt(format!("index score {score:?}")))?;
            Some(store.cursor_key().await?.issue(user_id, Position(at)))
        }
    };
    let mut sessions = Vec::new();
    let present = |value: String| Some(value).filter(|value| !value.is_empty());
    while let (Some(id), Some(device_id), Some(ip), Some(agent), Some(created), Some(seen)) = (
        pairs.next(),
        pairs.next(),
        pairs.next(),
        pairs.next(),
        pairs.next(),
        pairs.next(),
    ) {
        sessions.push(SessionSummary {
            session_id: session_id(&id)?,
            device_id: DeviceId::from_stored(device_id),
            ip_address: present(ip).map(IpAddress::from_stored),
            user_agent: present(agent).map(UserAgent::from_stored),
            created_at: hash::timestamp(&created)?,
            last_seen_at: present(seen)
                .map(|seen| hash::timestamp(&seen))
                .transpose()?,
        });
    }
    Ok(Outcome::SessionList {
        user_id: user_id.clone(),
        sessions,
        next,
    })
}
