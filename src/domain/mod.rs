//! The domain: what a session is, the rules its fields obey, the commands and their outcomes,
//! the `SessionClosed` event and the one error type. No I/O here: nothing in this module knows
//! Redis, RabbitMQ or HTTP.

mod caller;
mod command;
mod error;
mod event;
mod fields;
mod page;
#[cfg(test)]
mod properties;
mod session;

pub use caller::{Caller, CallerName, Scope, Scopes};
pub use command::{Command, IdempotencyKey, Outcome, SessionSummary};
pub use error::{Error, ErrorBody, ErrorCode};
pub use event::{CloseReason, SessionClosed};
pub use fields::{shown_name, strict_json, Field, Fields};
pub use page::{Cursor, ListPage, Position, MAX_LIMIT, TAG_BYTES};
pub use session::{
    DeviceId, IpAddress, MutableFields, NewSession, Secret, Session, SessionId, SessionPatch,
    Timestamp, UserAgent, UserEmail, UserId,
};
