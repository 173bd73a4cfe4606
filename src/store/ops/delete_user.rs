//! DeleteUserSessions: ends every session the user had when the command began but the kept one
//! (`except`), in atomic steps of at most [`DELETE_STEP`] sessions, each step one script call;
//! the progress between steps is kept beside the record, so that a redelivered command resumes
//! and still answers every id. A kept session that is not a live session of the user closes
//! nothing and answers `not_found`.

use std::time::Duration;

use super::{answer, session_id, strings, CommandCall};
use crate::{
    domain::{Outcome, SessionId, UserId},
    store::{
        script::{Arg, Layout, Source, COMMAND_PIECES},
        Bucket, Store, StoreError, DELETE_STEP,
    },
};

/// How long the progress of an unfinished DeleteUserSessions without message id is kept (an
/// instance stopped between its steps leaves it behind).
const PROGRESS_RETENTION: Duration = Duration::from_secs(60 * 60);

pub(in crate::store) static SCRIPT: Source = Source {
    name: "delete_user.lua",
    text: include_str!("delete_user.lua"),
    pieces: COMMAND_PIECES,
    layout: Layout {
        command_script: true,
        keys: &["index_key", "progress_key", "kept_key"],
        args: &[
            Arg::Text("user_id"),
            Arg::Text("kept_id"),
            Arg::Number("step"),
            Arg::Number("progress_ttl"),
        ],
        rest: None,
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    user_id: &UserId,
    except: Option<&SessionId>,
) -> Result<Outcome, StoreError> {
    // A session of another bucket cannot be this user's.
    if except.is_some_and(|kept| Bucket::of_session(kept) != Bucket::of_user(user_id)) {
        return Err(StoreError::NotFound);
    }
    let progress_ttl = match record.key() {
        Some(key) => super::record_retention(store, key).max(PROGRESS_RETENTION),
        None => PROGRESS_RETENTION,
    };
    let mut call = record.call(store, &store.commands.delete_user);
    call.key("index_key", store.keys.index(user_id))
        .key(
            "progress_key",
            store.keys.progress(record.command, record.key()),
        )
        // Without a kept session, a key of the same slot stands in (the script reads none).
        .key(
            "kept_key",
            except.map_or_else(
                || store.keys.index(user_id),
                |kept| store.keys.session(kept),
            ),
        )
        .arg("user_id", user_id.as_str())
        .arg("kept_id", except.map_or("", SessionId::as_str))
        .arg("step", DELETE_STEP)
        .arg("progress_ttl", progress_ttl.as_secs());
    loop {
        let document: String = call.invoke(&store.connection).await?;
        // A step that leaves sessions to end answers MORE: call again with the same keys.
        if document != super::status::MORE {
            let ids = strings(answer(&document)?)?;
            return Ok(Outcome::UserSessionsDeleted {
                user_id: user_id.clone(),
                session_ids: ids
                    .iter()
                    .map(|id| session_id(id))
                    .collect::<Result<_, _>>()?,
            });
        }
    }
}
