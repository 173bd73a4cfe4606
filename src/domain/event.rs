//! `SessionClosed`: the event published for every ended session (contract §4), as a CloudEvents
//! 1.0 JSON document in structured mode.

use serde::Serialize;
use uuid::Uuid;

use super::{DeviceId, SessionId, Timestamp, UserId};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// By DeleteSession.
    Deleted,
    /// By DeleteUserSessions.
    UserSessionsDeleted,
    /// Its absolute or idle end passed.
    Expired,
    /// Ended by a create beyond the per-user limit.
    Evicted,
}

impl CloseReason {
    /// Every reason.
    pub const ALL: [Self; 4] = [
        Self::Deleted,
        Self::UserSessionsDeleted,
        Self::Expired,
        Self::Evicted,
    ];

    /// The wire name, e.g. `"user_sessions_deleted"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::UserSessionsDeleted => "user_sessions_deleted",
            Self::Expired => "expired",
            Self::Evicted => "evicted",
        }
    }

    /// Parses the wire name.
    pub fn parse(reason: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|known| known.as_str() == reason)
    }
}

/// One ended session.
#[derive(Debug, Clone)]
pub struct SessionClosed {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// Its device.
    pub device_id: DeviceId,
    /// Why it ended.
    pub reason: CloseReason,
    /// When it ended, by the store's clock.
    pub closed_at: Timestamp,
}

/// Namespace of event ids: an event id is the UUIDv5 of the session id in it, so every publish
/// of the same ended session carries the same id and subscribers can drop duplicates.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_52a4_0d6e_4a3e_9a55_1c3e_2f4b_8d71);

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: String,
    source: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    time: &'a Timestamp,
    subject: &'a SessionId,
    datacontenttype: &'static str,
    data: Data<'a>,
}

#[derive(Serialize)]
struct Data<'a> {
    session_id: &'a SessionId,
    user_id: &'a UserId,
    device_id: &'a DeviceId,
    reason: CloseReason,
    closed_at: &'a Timestamp,
}

impl SessionClosed {
    /// The CloudEvents `type`, also the AMQP `type` property.
    pub const TYPE: &'static str = "SessionClosed";
    /// The content type of the event body.
    pub const CONTENT_TYPE: &'static str = "application/cloudevents+json";

    /// The event id: unique per ended session, the same on every publish of it.
    pub fn event_id(&self) -> String {
        Uuid::new_v5(&EVENT_ID_NAMESPACE, self.session_id.as_str().as_bytes()).to_string()
    }

    /// The CloudEvents JSON body.
    pub fn to_cloudevent_json(&self) -> Vec<u8> {
        let event = CloudEvent {
            specversion: "1.0",
            id: self.event_id(),
            source: "/session-manager",
            kind: Self::TYPE,
            time: &self.closed_at,
            subject: &self.session_id,
            datacontenttype: "application/json",
            data: Data {
                session_id: &self.session_id,
                user_id: &self.user_id,
                device_id: &self.device_id,
                reason: self.reason,
                closed_at: &self.closed_at,
            },
        };
        serde_json::to_vec(&event).expect("an event serializes: strings and an enum only")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_written_as_they_are_parsed() {
        for reason in CloseReason::ALL {
            let written = serde_json::to_value(reason).unwrap();
            assert_eq!(written, reason.as_str());
            assert_eq!(CloseReason::parse(reason.as_str()), Some(reason));
        }
    }
}
