//! The one error type of the core. Its variants are the contract's error codes (§2) that an
//! operation can end with; both transports map it to their wire form (an HTTP status or an AMQP
//! error reply) in one place each. Errors of one transport alone (a wrong HTTP method, a body
//! that is not JSON) belong to that transport.

use serde::Serialize;

use super::Scope;

/// The contract's error codes that an operation can end with, as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The input breaks a rule; the message names the field.
    InvalidArgument,
    /// No such session (or route).
    NotFound,
    /// The input contradicts what is stored (an update naming another user or device), or an
    /// idempotency key is used again for another request.
    Conflict,
    /// No caller could be recognised (contract §8.1).
    Unauthorized,
    /// The caller lacks the scope the operation needs.
    PermissionDenied,
    /// The store cannot be reached now; the same request may succeed later.
    Unavailable,
    /// Anything else; the cause is logged, not sent.
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire, e.g. `"not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::Unauthorized => "unauthorized",
            Self::PermissionDenied => "permission_denied",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Why an operation failed. The `Display` text is the message sent to clients, so it never
/// contains a secret; `Unavailable` and `Internal` keep their cause for the logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input breaks a rule; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The input contradicts what is stored.
    #[error("{0}")]
    Conflict(String),
    /// No caller could be recognised: no token or AMQP user, or one no caller has.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller lacks this scope.
    #[error("this needs the scope {0}")]
    PermissionDenied(Scope),
    /// The store cannot be reached now.
    #[error("the session store cannot be reached now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A failure that is not the client's; the cause is for the logs.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unauthorized(_) => ErrorCode::Unauthorized,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The one `not_found` answer for a session, whether it never existed or has ended.
    pub fn session_not_found() -> Self {
        Self::NotFound("no such session".into())
    }

    /// The `conflict` of an idempotency key used again for another request (contract §8.3).
    pub fn key_reused() -> Self {
        Self::Conflict("this key was used for another request".into())
    }

    /// An internal error with a cause written here.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into().into())
    }
}

/// The wire form of an error: `{"code": "...", "message": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The code, e.g. `"not_found"`.
    pub code: &'static str,
    /// The text for people.
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(error: &Error) -> Self {
        Self {
            code: error.code().as_str(),
            message: error.to_string(),
        }
    }
}
