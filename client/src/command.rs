//! The six commands, their results and the error reply, as typed serde values that match the
//! JSON Schemas in `schemas/` (`command.*.json`, `result.*.json`, `reply.json`). It owns the
//! wire form only: how a command travels (AMQP or REST) is the business of [`crate::amqp`] and
//! [`crate::rest`].
//!
//! # Format
//!
//! A command serializes to its AMQP body, `type` included, optional fields left out when unset:
//!
//! ```text
//! {"type": "CreateSession", "user_id": "alice", "device_id": "phone", "access_token": "…"}
//! {"type": "UpdateSession", "session_id": "…", "access_token": "new", "auth_code": null}
//! ```
//!
//! Results deserialize from the `result` of an ok reply (or a REST success body) and ignore
//! fields they do not know, so that a newer service that adds fields does not break them.

use serde::{Deserialize, Serialize, Serializer, de::DeserializeOwned};

/// A command the service answers, tied to the type of its result.
pub trait Request: Serialize {
    /// The command's `type` on the wire, e.g. `"CreateSession"`.
    const TYPE: &'static str;
    /// The `result` of an ok reply to it.
    type Output: DeserializeOwned;
}

/// `CreateSession`: creates a session; answered with [`SessionCreated`].
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct CreateSession {
    /// The user: 1–256 bytes of UTF-8, no control characters.
    pub user_id: String,
    /// The device: 1–256 bytes of UTF-8, no control characters.
    pub device_id: String,
    /// Authorization code, at most 16 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_code: Option<String>,
    /// Access token, at most 16 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Refresh token, at most 16 KiB.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Seconds of validity of the access token, stored as given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_time: Option<u64>,
    /// At most 320 bytes, must contain `@`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_email: Option<String>,
    /// The IPv4 or IPv6 address the session is created from (stored normalised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    /// The client's user agent, at most 512 bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
}

impl CreateSession {
    /// A session of `user_id` on `device_id` with no optional field set.
    pub fn new(user_id: impl Into<String>, device_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            device_id: device_id.into(),
            ..Self::default()
        }
    }

    /// Sets `auth_code`.
    pub fn auth_code(mut self, value: impl Into<String>) -> Self {
        self.auth_code = Some(value.into());
        self
    }

    /// Sets `access_token`.
    pub fn access_token(mut self, value: impl Into<String>) -> Self {
        self.access_token = Some(value.into());
        self
    }

    /// Sets `refresh_token`.
    pub fn refresh_token(mut self, value: impl Into<String>) -> Self {
        self.refresh_token = Some(value.into());
        self
    }

    /// Sets `expiration_time` (seconds).
    pub fn expiration_time(mut self, seconds: u64) -> Self {
        self.expiration_time = Some(seconds);
        self
    }

    /// Sets `user_email`.
    pub fn user_email(mut self, value: impl Into<String>) -> Self {
        self.user_email = Some(value.into());
        self
    }

    /// Sets `ip_address` (IPv4 or IPv6 text; the service stores it normalised).
    pub fn ip_address(mut self, value: impl Into<String>) -> Self {
        self.ip_address = Some(value.into());
        self
    }

    /// Sets `user_agent`.
    pub fn user_agent(mut self, value: impl Into<String>) -> Self {
        self.user_agent = Some(value.into());
        self
    }
}

impl Request for CreateSession {
    const TYPE: &'static str = "CreateSession";
    type Output = SessionCreated;
}

/// `GetSession`: reads one session; answered with [`Session`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct GetSession {
    /// The session to read.
    pub session_id: String,
}

impl GetSession {
    /// Reads `session_id`.
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
        }
    }
}

impl Request for GetSession {
    const TYPE: &'static str = "GetSession";
    type Output = Session;
}

/// `ListSessions`: a page of a user's sessions, oldest first; answered with [`SessionList`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct ListSessions {
    /// The user whose sessions to list.
    pub user_id: String,
    /// At most this many (1–1000; the service's default is 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `next` cursor of the page before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl ListSessions {
    /// Lists the (first page of the) sessions of `user_id`.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            limit: None,
            after: None,
        }
    }

    /// At most `limit` sessions.
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The page after the one whose `next` was `cursor`.
    pub fn after(mut self, cursor: impl Into<String>) -> Self {
        self.after = Some(cursor.into());
        self
    }
}

impl Request for ListSessions {
    const TYPE: &'static str = "ListSessions";
    type Output = SessionList;
}

/// What an [`UpdateSession`] does to one optional field.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Change<T> {
    /// Leaves the field as it is (the field is not sent).
    #[default]
    Keep,
    /// Sets the field to this value.
    Set(T),
    /// Clears the field (sent as `null`).
    Clear,
}

impl<T> Change<T> {
    /// Whether the field is left alone, and so not sent.
    pub fn is_keep(&self) -> bool {
        matches!(self, Change::Keep)
    }
}

impl<T> From<T> for Change<T> {
    fn from(value: T) -> Self {
        Change::Set(value)
    }
}

impl From<&str> for Change<String> {
    fn from(value: &str) -> Self {
        Change::Set(value.to_owned())
    }
}

impl<T: Serialize> Serialize for Change<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Change::Set(value) => value.serialize(serializer),
            Change::Keep | Change::Clear => serializer.serialize_none(),
        }
    }
}

/// `UpdateSession`: changes a session's optional fields; answered with the whole [`Session`]
/// after the change. At least one field must be given besides `session_id`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct UpdateSession {
    /// The session to change.
    pub session_id: String,
    /// When given, must equal the stored user, else the answer is `conflict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// When given, must equal the stored device, else the answer is `conflict`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// Authorization code.
    #[serde(skip_serializing_if = "Change::is_keep")]
    pub auth_code: Change<String>,
    /// Access token.
    #[serde(skip_serializing_if = "Change::is_keep")]
    pub access_token: Change<String>,
    /// Refresh token.
    #[serde(skip_serializing_if = "Change::is_keep")]
    pub refresh_token: Change<String>,
    /// Seconds of validity of the access token.
    #[serde(skip_serializing_if = "Change::is_keep")]
    pub expiration_time: Change<u64>,
    /// E-mail address.
    #[serde(skip_serializing_if = "Change::is_keep")]
    pub user_email: Change<String>,
}

impl UpdateSession {
    /// Changes `session_id`; every field is left alone until a setter says otherwise.
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
            ..Self::default()
        }
    }

    /// Asserts the stored `user_id`.
    pub fn user_id(mut self, value: impl Into<String>) -> Self {
        self.user_id = Some(value.into());
        self
    }

    /// Asserts the stored `device_id`.
    pub fn device_id(mut self, value: impl Into<String>) -> Self {
        self.device_id = Some(value.into());
        self
    }

    /// Sets (`"code"`) or clears ([`Change::Clear`]) `auth_code`.
    pub fn auth_code(mut self, change: impl Into<Change<String>>) -> Self {
        self.auth_code = change.into();
        self
    }

    /// Sets (`"token"`) or clears ([`Change::Clear`]) `access_token`.
    pub fn access_token(mut self, change: impl Into<Change<String>>) -> Self {
        self.access_token = change.into();
        self
    }

    /// Sets (`"token"`) or clears ([`Change::Clear`]) `refresh_token`.
    pub fn refresh_token(mut self, change: impl Into<Change<String>>) -> Self {
        self.refresh_token = change.into();
        self
    }

    /// Sets (`Change::Set(3600)`) or clears ([`Change::Clear`]) `expiration_time`.
    pub fn expiration_time(mut self, change: Change<u64>) -> Self {
        self.expiration_time = change;
        self
    }

    /// Sets (`"a@example.com"`) or clears ([`Change::Clear`]) `user_email`.
    pub fn user_email(mut self, change: impl Into<Change<String>>) -> Self {
        self.user_email = change.into();
        self
    }
}

impl Request for UpdateSession {
    const TYPE: &'static str = "UpdateSession";
    type Output = Session;
}

/// `DeleteSession`: ends one session; answered with [`SessionDeleted`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct DeleteSession {
    /// The session to end.
    pub session_id: String,
}

impl DeleteSession {
    /// Ends `session_id`.
    pub fn new(session_id: impl Into<String>) -> Self {
        Self {
            session_id: session_id.into(),
        }
    }
}

impl Request for DeleteSession {
    const TYPE: &'static str = "DeleteSession";
    type Output = SessionDeleted;
}

/// `DeleteUserSessions`: ends all of a user's sessions, or all but one; answered with
/// [`UserSessionsDeleted`].
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type")]
pub struct DeleteUserSessions {
    /// The user whose sessions to end.
    pub user_id: String,
    /// A live session of the user to keep ("sign out everywhere else"); if it is not one, the
    /// answer is `not_found` and nothing is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub except: Option<String>,
}

impl DeleteUserSessions {
    /// Ends every session of `user_id`.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            except: None,
        }
    }

    /// Keeps the session `session_id`.
    pub fn except(mut self, session_id: impl Into<String>) -> Self {
        self.except = Some(session_id.into());
        self
    }
}

impl Request for DeleteUserSessions {
    const TYPE: &'static str = "DeleteUserSessions";
    type Output = UserSessionsDeleted;
}

/// Result of [`CreateSession`] (REST: the 201 body of `POST /a01/session`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionCreated {
    /// The new session's id.
    pub session_id: String,
}

/// The whole session: result of [`GetSession`] and [`UpdateSession`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Issued by the service.
    pub session_id: String,
    /// The user.
    pub user_id: String,
    /// The device.
    pub device_id: String,
    /// Authorization code, if set.
    pub auth_code: Option<String>,
    /// Access token, if set.
    pub access_token: Option<String>,
    /// Refresh token, if set.
    pub refresh_token: Option<String>,
    /// Seconds of validity of the access token, if set.
    pub expiration_time: Option<u64>,
    /// E-mail address, if set.
    pub user_email: Option<String>,
    /// When the session was created (RFC 3339, UTC).
    pub created_at: String,
    /// When it was last changed (RFC 3339, UTC).
    pub updated_at: String,
    /// When it will expire (RFC 3339, UTC).
    pub expires_at: String,
    /// The address it was created from, if given.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// The user agent it was created from, if given.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// When it was last used (RFC 3339, UTC); `None` from services before 7.6.
    #[serde(default)]
    pub last_seen_at: Option<String>,
}

/// Result of [`ListSessions`]: the user's live sessions, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionList {
    /// The user.
    pub user_id: String,
    /// Oldest first; empty when the user has none.
    pub sessions: Vec<SessionSummary>,
    /// The cursor of the next page ([`ListSessions::after`]), when more sessions follow.
    #[serde(default)]
    pub next: Option<String>,
}

/// One entry of a [`SessionList`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session.
    pub session_id: String,
    /// Its device.
    pub device_id: String,
    /// The address it was created from, if given.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// The user agent it was created from, if given.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// When it was created (RFC 3339, UTC); `None` from services before 7.6.
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it was last used (RFC 3339, UTC), if known.
    #[serde(default)]
    pub last_seen_at: Option<String>,
}

/// Result of [`DeleteSession`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionDeleted {
    /// The session that was ended.
    pub session_id: String,
}

/// Result of [`DeleteUserSessions`]: the sessions this command ended (may be empty).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserSessionsDeleted {
    /// The user.
    pub user_id: String,
    /// The sessions it ended.
    pub session_ids: Vec<String>,
}

/// The `error` of an error reply, `{"status": "error", "error": {"code", "message"}}`, and of a
/// REST error body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorReply {
    /// Machine-readable: `not_found`, `invalid_argument`, `conflict`, `unavailable`, …
    pub code: String,
    /// Human-readable; names the offending field where there is one.
    pub message: String,
}

/// A reply envelope, `{"status": "ok", "result": …}` or `{"status": "error", "error": …}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Reply<T> {
    /// The command was applied; its result.
    Ok {
        /// The command's result.
        result: T,
    },
    /// The command was refused or failed.
    Error {
        /// Why.
        error: ErrorReply,
    },
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::schemas::assert_valid;

    /// Serializes `command` and checks it against the schema of its type.
    fn wire<R: Request>(command: &R) -> Value {
        let body = serde_json::to_value(command).unwrap();
        assert_eq!(body["type"], R::TYPE);
        assert_valid(&format!("command.{}.json", R::TYPE), &body);
        body
    }

    const ID: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[test]
    fn create_session_leaves_out_unset_fields_and_sends_set_ones() {
        assert_eq!(
            wire(&CreateSession::new("alice", "phone")),
            json!({"type": "CreateSession", "user_id": "alice", "device_id": "phone"})
        );
        let full = CreateSession::new("alice", "phone")
            .auth_code("code")
            .access_token("access")
            .refresh_token("refresh")
            .expiration_time(3600)
            .user_email("alice@example.com");
        assert_eq!(
            wire(&full),
            json!({"type": "CreateSession", "user_id": "alice", "device_id": "phone",
                   "auth_code": "code", "access_token": "access", "refresh_token": "refresh",
                   "expiration_time": 3600, "user_email": "alice@example.com"})
        );
    }

    #[test]
    fn commands_naming_one_session_or_one_user_match_their_schemas() {
        let session = json!({"type": "GetSession", "session_id": ID});
        assert_eq!(wire(&GetSession::new(ID)), session);
        let session = json!({"type": "DeleteSession", "session_id": ID});
        assert_eq!(wire(&DeleteSession::new(ID)), session);
        let user = json!({"type": "ListSessions", "user_id": "alice"});
        assert_eq!(wire(&ListSessions::new("alice")), user);
        let user = json!({"type": "DeleteUserSessions", "user_id": "alice"});
        assert_eq!(wire(&DeleteUserSessions::new("alice")), user);
    }

    #[test]
    fn update_session_sends_set_fields_as_values_cleared_ones_as_null_and_kept_ones_not() {
        let update = UpdateSession::new(ID)
            .user_id("alice")
            .device_id("phone")
            .access_token("new")
            .auth_code(Change::Clear)
            .expiration_time(Change::Set(60))
            .user_email(Change::Clear);
        assert_eq!(
            wire(&update),
            json!({"type": "UpdateSession", "session_id": ID, "user_id": "alice",
                   "device_id": "phone", "access_token": "new", "auth_code": null,
                   "expiration_time": 60, "user_email": null})
        );
        let clear_one = UpdateSession::new(ID).refresh_token(Change::Clear);
        assert_eq!(
            wire(&clear_one),
            json!({"type": "UpdateSession", "session_id": ID, "refresh_token": null})
        );
    }

    #[test]
    fn results_read_their_schema_examples_and_ignore_fields_they_do_not_know() {
        let session = json!({"session_id": ID, "user_id": "alice", "device_id": "phone",
            "auth_code": null, "access_token": "a", "refresh_token": null,
            "expiration_time": 3600, "user_email": null,
            "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:01.5Z",
            "expires_at": "2025-01-31T00:00:00Z", "ip_address": "192.0.2.1", "user_agent": null,
            "last_seen_at": "2025-01-01T00:00:01.5Z"});
        assert_valid("result.Session.json", &session);
        let mut newer = session.clone();
        newer["device_kind"] = json!("phone");
        let read: Session = serde_json::from_value(newer).unwrap();
        assert_eq!(read.access_token.as_deref(), Some("a"));
        assert_eq!(read.expiration_time, Some(3600));
        assert_eq!(serde_json::to_value(&read).unwrap(), session);

        let list = json!({"user_id": "alice", "sessions": [{"session_id": ID, "device_id": "d",
            "ip_address": null, "user_agent": "ua", "created_at": "2025-01-01T00:00:00Z",
            "last_seen_at": null}], "next": "AQ"});
        assert_valid("result.SessionList.json", &list);
        let read: SessionList = serde_json::from_value(list).unwrap();
        assert_eq!(read.sessions[0].device_id, "d");
        assert_eq!(read.next.as_deref(), Some("AQ"));
        // A service from before pages had no `next`.
        let older = json!({"user_id": "alice", "sessions": []});
        let read: SessionList = serde_json::from_value(older).unwrap();
        assert_eq!(read.next, None);

        let deleted = json!({"user_id": "alice", "session_ids": [ID]});
        assert_valid("result.UserSessionsDeleted.json", &deleted);
        let read: UserSessionsDeleted = serde_json::from_value(deleted).unwrap();
        assert_eq!(read.session_ids, [ID]);

        for (schema, body) in [
            ("result.SessionCreated.json", json!({"session_id": ID})),
            ("result.SessionDeleted.json", json!({"session_id": ID})),
        ] {
            assert_valid(schema, &body);
            let created: SessionCreated = serde_json::from_value(body.clone()).unwrap();
            let deleted: SessionDeleted = serde_json::from_value(body).unwrap();
            assert_eq!(
                (created.session_id, deleted.session_id),
                (ID.into(), ID.into())
            );
        }
    }

    #[test]
    fn reply_envelopes_read_as_ok_or_error() {
        let ok = json!({"status": "ok", "result": {"session_id": ID}});
        let error = json!({"status": "error", "error": {"code": "not_found", "message": "no"}});
        for reply in [&ok, &error] {
            assert_valid("reply.json", reply);
        }
        let ok: Reply<SessionDeleted> = serde_json::from_value(ok).unwrap();
        assert_eq!(
            ok,
            Reply::Ok {
                result: SessionDeleted {
                    session_id: ID.into()
                }
            }
        );
        let error: Reply<SessionDeleted> = serde_json::from_value(error).unwrap();
        let Reply::Error { error } = error else {
            panic!("{error:?}")
        };
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("not_found", "no")
        );
    }
}
