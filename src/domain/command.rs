//! The six operations of the service as one enum, parsed from an AMQP command body, and their
//! results. REST builds the same `Command` from a route, so both front ends share one core.
//!
//! # Format
//!
//! ```text
//! {"type": "UpdateSession", "session_id": "…", "access_token": "…"}
//! ```

use serde::Serialize;

use super::{
    fields::{Field, Fields},
    DeviceId, Error, IpAddress, ListPage, NewSession, Session, SessionId, SessionPatch, Timestamp,
    UserAgent, UserId,
};

/// One operation on the sessions.
#[derive(Debug, Clone)]
pub enum Command {
    /// Create a session of a user on a device.
    CreateSession(NewSession),
    /// Read one session.
    GetSession(SessionId),
    /// List a page of a user's live sessions.
    ListSessions(UserId, ListPage),
    /// Change a session's client fields.
    UpdateSession(SessionId, SessionPatch),
    /// End one session.
    DeleteSession(SessionId),
    /// End every session of a user, but the one given ("sign out everywhere else").
    DeleteUserSessions(UserId, Option<SessionId>),
}

impl Command {
    /// Parses an AMQP command body. `InvalidArgument` means the message cannot be understood; a
    /// `NotFound` is a well-formed command naming a session id that cannot exist.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let mut fields = Fields::from_slice(body)?;
        let kind = fields.required_string("type")?;
        // Every field is taken and the rest rejected before a session id is judged, so that an
        // unknown field is reported as invalid rather than as a missing session.
        match kind.as_str() {
            "CreateSession" => {
                let new = NewSession::take_from(&mut fields)?;
                fields.finish()?;
                Ok(Self::CreateSession(new))
            }
            "GetSession" => Ok(Self::GetSession(only_session_id(fields)?)),
            "ListSessions" => {
                let user_id = UserId::parse(fields.required_string("user_id")?)?;
                let limit = not_null("limit", fields.unsigned("limit")?)?;
                let after = not_null("after", fields.string("after")?)?;
                fields.finish()?;
                let page = ListPage::parse(limit, after.as_deref())?;
                Ok(Self::ListSessions(user_id, page))
            }
            "UpdateSession" => {
                let id = fields.required_string("session_id")?;
                let patch = SessionPatch::take_from(&mut fields)?;
                fields.finish()?;
                Ok(Self::UpdateSession(SessionId::parse_existing(&id)?, patch))
            }
            "DeleteSession" => Ok(Self::DeleteSession(only_session_id(fields)?)),
            "DeleteUserSessions" => {
                let user_id = UserId::parse(fields.required_string("user_id")?)?;
                let except = not_null("except", fields.string("except")?)?;
                fields.finish()?;
                let except = except
                    .as_deref()
                    .map(SessionId::parse_existing)
                    .transpose()?;
                Ok(Self::DeleteUserSessions(user_id, except))
            }
            other => Err(Error::InvalidArgument(format!(
                "type: unknown command {}",
                super::shown_name(other)
            ))),
        }
    }

    /// The id the command is about: its session's, or its user's.
    pub fn target(&self) -> &str {
        match self {
            Self::CreateSession(new) => new.user_id.as_str(),
            Self::GetSession(id) | Self::UpdateSession(id, _) | Self::DeleteSession(id) => {
                id.as_str()
            }
            Self::ListSessions(user_id, _) | Self::DeleteUserSessions(user_id, _) => {
                user_id.as_str()
            }
        }
    }

    /// Whether the command can change the sessions. Only those are recorded under their
    /// `message_id` (contract §7.4): a read repeated is answered from the current state.
    pub fn changes(&self) -> bool {
        !matches!(self, Self::GetSession(_) | Self::ListSessions(..))
    }

    /// The command's `type`, also used as a metrics label.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateSession(_) => "CreateSession",
            Self::GetSession(_) => "GetSession",
            Self::ListSessions(..) => "ListSessions",
            Self::UpdateSession(..) => "UpdateSession",
            Self::DeleteSession(_) => "DeleteSession",
            Self::DeleteUserSessions(..) => "DeleteUserSessions",
        }
    }
}

/// The fields of a command that names one session and nothing else.
fn only_session_id(mut fields: Fields) -> Result<SessionId, Error> {
    let id = fields.required_string("session_id")?;
    fields.finish()?;
    SessionId::parse_existing(&id)
}

/// An optional field that may be left out but not given as `null`.
fn not_null<T>(name: &str, field: Field<T>) -> Result<Option<T>, Error> {
    match field {
        Field::Absent => Ok(None),
        Field::Null => Err(Error::InvalidArgument(format!(
            "{name}: must not be null (leave it out instead)"
        ))),
        Field::Value(value) => Ok(Some(value)),
    }
}

/// One entry of a session list: what a "your devices" page shows (contract §7.6).
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// The session.
    pub session_id: SessionId,
    /// Its device.
    pub device_id: DeviceId,
    /// The address it was created from, or `null`.
    pub ip_address: Option<IpAddress>,
    /// The user agent it was created from, or `null`.
    pub user_agent: Option<UserAgent>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last used, or `null` for a session from before the service kept it.
    pub last_seen_at: Option<Timestamp>,
}

/// The result of a successful command: the same JSON as the REST success body.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    /// A session was created.
    SessionCreated {
        /// Its id.
        session_id: SessionId,
    },
    /// The whole session, after a read or an update.
    Session(Session),
    /// A page of a user's live sessions, oldest first.
    SessionList {
        /// The user.
        user_id: UserId,
        /// Id and device of each session.
        sessions: Vec<SessionSummary>,
        /// The cursor of the next page when more sessions follow, else `null`.
        next: Option<String>,
    },
    /// A session was ended.
    SessionDeleted {
        /// Its id.
        session_id: SessionId,
    },
    /// A user's sessions were ended.
    UserSessionsDeleted {
        /// The user.
        user_id: UserId,
        /// The ids of the sessions ended, oldest first.
        session_ids: Vec<SessionId>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Command, Error> {
        Command::parse(json.as_bytes())
    }

    #[test]
    fn parses_every_command_type() {
        let id = format!("0a{}", "A".repeat(43));
        let cases = [
            (
                r#"{"type":"CreateSession","user_id":"u","device_id":"d"}"#.to_string(),
                "CreateSession",
            ),
            (
                format!(r#"{{"type":"GetSession","session_id":"{id}"}}"#),
                "GetSession",
            ),
            (
                r#"{"type":"ListSessions","user_id":"u"}"#.to_string(),
                "ListSessions",
            ),
            (
                format!(r#"{{"type":"UpdateSession","session_id":"{id}","auth_code":"x"}}"#),
                "UpdateSession",
            ),
            (
                format!(r#"{{"type":"DeleteSession","session_id":"{id}"}}"#),
                "DeleteSession",
            ),
            (
                r#"{"type":"DeleteUserSessions","user_id":"u"}"#.to_string(),
                "DeleteUserSessions",
            ),
        ];
        for (json, name) in cases {
            assert_eq!(parse(&json).unwrap().name(), name);
        }
    }

    #[test]
    fn rejects_what_cannot_be_understood() {
        for json in [
            "not json",
            r#"{"user_id":"u"}"#,
            r#"{"type":"Nope"}"#,
            r#"{"type":"ListSessions"}"#,
            r#"{"type":"ListSessions","user_id":"u","extra":1}"#,
            r#"{"type":"GetSession","session_id":"x","extra":1}"#,
            r#"{"type":"UpdateSession","session_id":"x"}"#,
        ] {
            assert!(
                matches!(parse(json), Err(Error::InvalidArgument(_))),
                "{json}"
            );
        }
    }

    #[test]
    fn an_id_that_cannot_exist_is_not_found_not_invalid() {
        assert!(matches!(
            parse(r#"{"type":"GetSession","session_id":"nope"}"#),
            Err(Error::NotFound(_))
        ));
    }
}

/// The idempotency key of an AMQP command: its `message_id` property (1–255 bytes), or, for a
/// command without one, a key of its delivery's own, under which the worker's retries of that
/// delivery find what an earlier try may have done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId {
    id: String,
    of_delivery: bool,
}

impl MessageId {
    /// `None` for an empty id, which identifies nothing.
    pub fn parse(id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= 255).then(|| Self {
            id: id.to_owned(),
            of_delivery: false,
        })
    }

    /// A fresh key for the retries of one delivery of a command without `message_id`.
    pub fn of_delivery() -> Self {
        Self {
            id: format!("delivery-{}", uuid::Uuid::new_v4().simple()),
            of_delivery: true,
        }
    }

    /// Whether this is a delivery's own key rather than a client's `message_id`: its record is
    /// kept only as long as the delivery's retries need it.
    pub fn is_of_delivery(&self) -> bool {
        self.of_delivery
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}
