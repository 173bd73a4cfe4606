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
    Caller, DeviceId, Error, IpAddress, ListPage, NewSession, Scope, Secret, Session, SessionId,
    SessionPatch, Timestamp, UserAgent, UserEmail, UserId,
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

    /// The scope a caller needs for it (contract §8.1).
    pub fn scope(&self) -> Scope {
        match self {
            Self::CreateSession(_) => Scope::SessionsCreate,
            Self::GetSession(_) | Self::ListSessions(..) => Scope::SessionsRead,
            Self::UpdateSession(..) => Scope::SessionsUpdate,
            Self::DeleteSession(_) | Self::DeleteUserSessions(..) => Scope::SessionsDelete,
        }
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
// The whole session is the most common answer (every read): boxing it would cost an allocation
// per read for an enum that lives only until it is serialized.
#[allow(clippy::large_enum_variant)]
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
        /// Its user, for the audit line (not in the answer); `None` when the store did not
        /// say (a repeat recorded by an older version).
        #[serde(skip)]
        user_id: Option<UserId>,
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

/// The idempotency key of a changing command: an AMQP command's `message_id` property (1–255
/// bytes), a REST request's `Idempotency-Key` header (1–255 visible ASCII characters), or, for an
/// AMQP command without `message_id`, a key of its delivery's own, under which the worker's
/// retries of that delivery find what an earlier try may have done. Both kinds a client gives
/// share one namespace: a key given over REST and over AMQP is the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    id: String,
    of_delivery: bool,
}

impl IdempotencyKey {
    /// The key of an AMQP `message_id`; `None` for an empty id, which identifies nothing.
    pub fn from_message_id(id: &str) -> Option<Self> {
        (!id.is_empty() && id.len() <= 255).then(|| Self::given(id))
    }

    /// The key of an `Idempotency-Key` header: 1–255 visible ASCII characters, optionally in
    /// the double quotes of a structured-field string (the IETF draft's form).
    pub fn from_header(value: &[u8]) -> Result<Self, Error> {
        let inner = match value {
            [b'"', inner @ .., b'"'] => inner,
            other => other,
        };
        let visible =
            (1..=255).contains(&inner.len()) && inner.iter().all(|b| b.is_ascii_graphic());
        match std::str::from_utf8(inner) {
            Ok(key) if visible => Ok(Self::given(key)),
            _ => Err(Error::InvalidArgument(
                "Idempotency-Key: must be 1 to 255 visible ASCII characters".into(),
            )),
        }
    }

    fn given(id: &str) -> Self {
        Self {
            id: id.to_owned(),
            of_delivery: false,
        }
    }

    /// A fresh key for the retries of one delivery of a command without `message_id`.
    pub fn of_delivery() -> Self {
        Self {
            id: format!("delivery-{}", uuid::Uuid::new_v4().simple()),
            of_delivery: true,
        }
    }

    /// Whether this is a delivery's own key rather than a client's: its record is kept only as
    /// long as the delivery's retries need it.
    pub fn is_of_delivery(&self) -> bool {
        self.of_delivery
    }

    /// The key.
    pub fn as_str(&self) -> &str {
        &self.id
    }
}

/// The bytes that identify a command and its caller, for an idempotency record: a key used
/// again is the same request only when these are the same (contract §8.3). Each part is
/// length-prefixed, so no two commands share them.
#[derive(Default)]
struct Fingerprint(Vec<u8>);

impl Fingerprint {
    fn text(&mut self, text: &str) -> &mut Self {
        self.0.extend_from_slice(&(text.len() as u64).to_be_bytes());
        self.0.extend_from_slice(text.as_bytes());
        self
    }

    fn tag(&mut self, tag: u8) -> &mut Self {
        self.0.push(tag);
        self
    }

    fn optional(&mut self, text: Option<&str>) -> &mut Self {
        match text {
            None => self.tag(0),
            Some(text) => self.tag(1).text(text),
        }
    }

    fn field(&mut self, field: Field<&str>) -> &mut Self {
        match field {
            Field::Absent => self.tag(0),
            Field::Null => self.tag(1),
            Field::Value(text) => self.tag(2).text(text),
        }
    }
}

impl Command {
    /// The fingerprint of this command asked by `caller` (see [`Fingerprint`]); it holds the
    /// command's secret values, so it is wiped when dropped.
    pub fn fingerprint(&self, caller: &Caller) -> zeroize::Zeroizing<Vec<u8>> {
        let mut print = Fingerprint::default();
        print
            .optional(caller.name().map(|name| name.as_str()))
            .text(self.name());
        let number = |n: Option<u64>| n.map(|n| n.to_string());
        match self {
            Self::CreateSession(new) => {
                let fields = &new.fields;
                print
                    .text(new.user_id.as_str())
                    .text(new.device_id.as_str())
                    .optional(new.ip_address.as_ref().map(IpAddress::as_str))
                    .optional(new.user_agent.as_ref().map(UserAgent::as_str))
                    .optional(fields.auth_code.as_ref().map(Secret::expose))
                    .optional(fields.access_token.as_ref().map(Secret::expose))
                    .optional(fields.refresh_token.as_ref().map(Secret::expose))
                    .optional(number(fields.expiration_time).as_deref())
                    .optional(fields.user_email.as_ref().map(UserEmail::as_str));
            }
            Self::GetSession(id) | Self::DeleteSession(id) => {
                print.text(id.as_str());
            }
            Self::ListSessions(user_id, _) => {
                print.text(user_id.as_str());
            }
            Self::UpdateSession(id, patch) => {
                let expiration = patch.expiration_time.as_ref().map(u64::to_string);
                print
                    .text(id.as_str())
                    .optional(patch.user_id.as_ref().map(UserId::as_str))
                    .optional(patch.device_id.as_ref().map(DeviceId::as_str))
                    .optional(patch.ip_address.as_ref().map(IpAddress::as_str))
                    .optional(patch.user_agent.as_ref().map(UserAgent::as_str))
                    .field(patch.auth_code.as_ref().map(Secret::expose))
                    .field(patch.access_token.as_ref().map(Secret::expose))
                    .field(patch.refresh_token.as_ref().map(Secret::expose))
                    .field(expiration.as_ref().map(String::as_str))
                    .field(patch.user_email.as_ref().map(UserEmail::as_str));
            }
            Self::DeleteUserSessions(user_id, except) => {
                print
                    .text(user_id.as_str())
                    .optional(except.as_ref().map(SessionId::as_str));
            }
        }
        zeroize::Zeroizing::new(print.0)
    }
}
