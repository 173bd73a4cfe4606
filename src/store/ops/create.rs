//! CreateSession: a new session in its user's bucket, on the schedule and in the user's index;
//! with a per-user limit, the user's oldest live sessions are evicted (their events written).

use super::{run, session_id, CommandCall};
use crate::{
    domain::{NewSession, Outcome},
    store::{
        hash::{self, HashField},
        script::{Arg, Layout, Source, COMMAND_PIECES},
        Bucket, Store, StoreError,
    },
};

pub(in crate::store) static SCRIPT: Source = Source {
    name: "create.lua",
    text: include_str!("create.lua"),
    pieces: COMMAND_PIECES,
    layout: Layout {
        command_script: true,
        keys: &["session_key", "index_key"],
        args: &[Arg::Text("session_id"), Arg::Text("user_id")],
        rest: Some("fields_at"),
    },
};

pub(in crate::store) async fn apply(
    store: &Store,
    record: CommandCall<'_>,
    new: &NewSession,
) -> Result<Outcome, StoreError> {
    let id = Bucket::of_user(&new.user_id).new_session_id();
    let mut call = record.call(store, &store.commands.create);
    call.key("session_key", store.keys.session(&id))
        .key("index_key", store.keys.index(&new.user_id))
        .arg("session_id", id.as_str())
        .arg("user_id", new.user_id.as_str())
        .rest(HashField::DeviceId.code())
        .rest(new.device_id.as_str());
    if let Some(ip) = &new.ip_address {
        call.rest(HashField::IpAddress.code()).rest(ip.as_str());
    }
    if let Some(agent) = &new.user_agent {
        call.rest(HashField::UserAgent.code()).rest(agent.as_str());
    }
    for (code, value) in hash::pairs(&new.fields, &id, &store.keyring) {
        call.rest(code).rest(value);
    }
    let created = run(&call, store).await?;
    let created = created
        .as_str()
        .ok_or_else(|| StoreError::Corrupt("create answered no session id".into()))?;
    Ok(Outcome::SessionCreated {
        session_id: session_id(created)?,
    })
}
