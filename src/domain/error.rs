//! The one error type of the service. Its variants are the contract's error codes (§2); both
//! transports map it to their wire form (an HTTP status or an AMQP error reply) in one place each.

use serde::Serialize;

/// The contract's error codes, as they appear on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unavailable,
    Internal,
}

impl ErrorCode {
    /// The code as written on the wire, e.g. `"not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Why an operation failed. The `Display` text is the message sent to clients, so it never
/// contains a secret; `Unavailable` and `Internal` keep their cause for the logs only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("missing or wrong API token")]
    Unauthorized,
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    #[error("request body must be application/json")]
    UnsupportedMediaType,
    #[error("the session store cannot be reached now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn session_not_found() -> Self {
        Self::NotFound("no such session".into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal(message.into().into())
    }
}

/// The wire form of an error: `{"code": "...", "message": "..."}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(error: &Error) -> Self {
        Self {
            code: error.code(),
            message: error.to_string(),
        }
    }
}
