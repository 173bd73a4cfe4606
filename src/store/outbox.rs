//! The outbox: each bucket's stream of `SessionClosed` events that the scripts wrote in the same
//! step as the change that ended a session, read by the relays of all instances through one
//! consumer group, and the periodic tick that also ends the sessions whose moment has passed.

use std::time::Duration;

use super::{
    script::{Arg, Constants, Layout, LuaScript, Source, BUCKET},
    Bucket, Store, StoreError,
};
use crate::domain::{CloseReason, DeviceId, SessionClosed, SessionId, UserId};

/// The consumer group of the relays in every bucket's outbox.
pub const GROUP: &str = "relay";

/// A field of an outbox entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventField {
    SessionId,
    UserId,
    DeviceId,
    Reason,
    ClosedAt,
}

impl EventField {
    /// Every field, with the name the scripts use (`EVENT.<name>`) and its stored code.
    pub const TABLE: [(Self, &'static str, &'static str); 5] = [
        (Self::SessionId, "session_id", "s"),
        (Self::UserId, "user_id", "u"),
        (Self::DeviceId, "device_id", "d"),
        (Self::Reason, "reason", "r"),
        (Self::ClosedAt, "closed_at", "t"),
    ];
}

static TICK: Source = Source {
    name: "tick.lua",
    text: include_str!("lua/tick.lua"),
    pieces: &[BUCKET],
    layout: Layout {
        command_script: false,
        keys: &["schedule_key", "outbox_key"],
        args: &[
            Arg::Text("base"),
            Arg::Text("consumer"),
            Arg::Number("limit"),
            Arg::Number("stale_after"),
            Arg::Number("forget_after"),
        ],
        rest: None,
    },
};

static ACKNOWLEDGE: Source = Source {
    name: "acknowledge.lua",
    text: include_str!("lua/acknowledge.lua"),
    pieces: &[],
    layout: Layout {
        command_script: false,
        keys: &["outbox_key"],
        args: &[],
        rest: Some("ids_at"),
    },
};

/// The outbox scripts of one store.
#[derive(Debug)]
pub(super) struct OutboxScripts {
    pub tick: LuaScript,
    pub acknowledge: LuaScript,
}

impl OutboxScripts {
    pub fn new(constants: &Constants) -> Self {
        Self {
            tick: LuaScript::assemble(&TICK, constants),
            acknowledge: LuaScript::assemble(&ACKNOWLEDGE, constants),
        }
    }
}

/// An event taken from an outbox, to publish and then acknowledge.
#[derive(Debug)]
pub struct OutboxEntry {
    /// The stream entry's id, to acknowledge it by.
    pub id: String,
    /// The event; `None` when the entry cannot be read (it is dropped).
    pub event: Option<SessionClosed>,
}

impl Store {
    /// Runs the periodic work of one bucket (see `lua/tick.lua`): ends the sessions whose
    /// moment has passed and takes up to `limit` outbox entries for `consumer`. Each bucket is
    /// its own call, so that a bucket on a node that cannot be reached holds up no other.
    pub async fn tick(
        &self,
        bucket: Bucket,
        consumer: &str,
        limit: usize,
        stale_after: Duration,
        forget_idle_consumers: Option<Duration>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let entries: Vec<(String, Vec<String>)> = self
            .outbox
            .tick
            .call()
            .key("schedule_key", self.keys.schedule(bucket))
            .key("outbox_key", self.keys.outbox(bucket))
            .arg("base", self.keys.base(bucket))
            .arg("consumer", consumer)
            .arg("limit", limit)
            .arg("stale_after", stale_after.as_millis() as u64)
            .arg(
                "forget_after",
                forget_idle_consumers.map_or(0, |idle| idle.as_millis().max(1) as u64),
            )
            .invoke(&self.connection)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| OutboxEntry {
                event: event(fields),
                id,
            })
            .collect())
    }

    /// Removes published entries from a bucket's outbox.
    pub async fn acknowledge(&self, bucket: Bucket, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut call = self.outbox.acknowledge.call();
        call.key("outbox_key", self.keys.outbox(bucket));
        for id in ids {
            call.rest(id);
        }
        call.invoke::<i64>(&self.connection).await.map(drop)
    }
}

/// The event of an outbox entry's field/value list; `None` when it cannot be read.
fn event(fields: Vec<String>) -> Option<SessionClosed> {
    let mut fields = fields.into_iter();
    let (mut session_id, mut user_id, mut device_id, mut reason, mut closed_at) =
        (None, None, None, None, None);
    while let (Some(code), Some(value)) = (fields.next(), fields.next()) {
        match super::hash::of_code(&EventField::TABLE, &code) {
            Some(EventField::SessionId) => session_id = SessionId::parse(&value),
            Some(EventField::UserId) => user_id = Some(UserId::from_stored(value)),
            Some(EventField::DeviceId) => device_id = Some(DeviceId::from_stored(value)),
            Some(EventField::Reason) => reason = CloseReason::parse(&value),
            Some(EventField::ClosedAt) => closed_at = super::hash::timestamp(&value).ok(),
            None => {}
        }
    }
    Some(SessionClosed {
        session_id: session_id?,
        user_id: user_id?,
        device_id: device_id?,
        reason: reason?,
        closed_at: closed_at?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::script::tests::check_pieces;

    #[test]
    fn the_outbox_scripts_meet_their_needs() {
        check_pieces(&TICK);
        check_pieces(&ACKNOWLEDGE);
    }
}
