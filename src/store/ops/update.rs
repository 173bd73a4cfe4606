//! UpdateSession: sets and clears the client's fields of a live session, checks the user and
//! device ids the client asserts, moves the idle deadline, and answers the whole session. With a
//! key set, a secret field the update leaves that is still plain or under an older key (written
//! before the ring changed) is re-sealed in the same atomic step: the script answers `stale`
//! with those values, and the update is called again with them re-sealed.

use super::{status, strings, CommandCall, Document};
use crate::{
    domain::{DeviceId, IpAddress, Outcome, SessionId, SessionPatch, UserAgent, UserId},
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
            Arg::Text("asserted_ip_address"),
            Arg::Text("asserted_user_agent"),
            Arg::Text("sealed_prefix"),
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
    let sealed_prefix = store.keyring.sealed_prefix().unwrap_or_default();
    let mut resealed: Vec<(&str, String, String)> = Vec::new();
    // Instances may re-write a stale field in between: each round re-seals what is stale now.
    for _ in 0..STALE_ROUNDS {
        let mut call = record.call_on_session(store, &store.commands.update, id);
        call.arg(
            "asserted_user_id",
            patch.user_id.as_ref().map_or("", UserId::as_str),
        )
        .arg(
            "asserted_device_id",
            patch.device_id.as_ref().map_or("", DeviceId::as_str),
        )
        .arg(
            "asserted_ip_address",
            patch.ip_address.as_ref().map_or("", IpAddress::as_str),
        )
        .arg(
            "asserted_user_agent",
            patch.user_agent.as_ref().map_or("", UserAgent::as_str),
        )
        .arg("sealed_prefix", &sealed_prefix)
        .rest(set.len());
        for (code, value) in &set {
            call.rest(*code).rest(value);
        }
        call.rest(resealed.len());
        for (code, old, new) in &resealed {
            call.rest(*code).rest(old).rest(new);
        }
        for code in &cleared {
            call.rest(*code);
        }
        let document = Document::parse(&call.invoke::<String>(&store.connection).await?)?;
        if document.s != status::STALE {
            let pairs = strings(document.into_value()?)?;
            return Ok(Outcome::Session(hash::session(id, pairs, &store.keyring)?));
        }
        resealed = store.reseal(id, strings(document.v)?)?;
    }
    Err(StoreError::Corrupt(format!(
        "the secret fields of session {id:?} kept changing while an update re-sealed them"
    )))
}

/// How often an update re-seals stale fields before it gives up.
const STALE_ROUNDS: usize = 5;
