//! The errors of the REST front end: the core's, and those of HTTP alone (a method the route does
//! not have, a body too large or not JSON), each mapped to its status and the contract's JSON
//! error body here and nowhere else.

use serde::Serialize;
use warp::{
    http::{header, HeaderValue, StatusCode},
    reply::Response,
};

use super::json_response;
use crate::domain::{Error, ErrorBody, ErrorCode};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// What the core answered.
    #[error(transparent)]
    Core(#[from] Error),
    /// The route exists, without this method; the methods it has.
    #[error("method not allowed on this resource")]
    MethodNotAllowed(&'static str),
    /// The body is over 64 KiB.
    #[error("request body is larger than 64 KiB")]
    PayloadTooLarge,
    /// The body is not declared as JSON.
    #[error("request body must be application/json")]
    UnsupportedMediaType,
}

impl HttpError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Core(error) => {
                let status = match error.code() {
                    ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
                    ErrorCode::NotFound => StatusCode::NOT_FOUND,
                    ErrorCode::Conflict => StatusCode::CONFLICT,
                    ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
                    ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
                    ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
                };
                (status, error.code().as_str())
            }
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
        }
    }

    /// The response: the status, `{"error": {"code", "message"}}`, and the headers some
    /// statuses require.
    pub fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Envelope {
            error: ErrorBody,
        }
        let (status, code) = self.status_and_code();
        let unauthorized = code == ErrorCode::Unauthorized.as_str();
        let mut response = json_response(
            status,
            &Envelope {
                error: ErrorBody {
                    code,
                    message: self.to_string(),
                },
            },
        );
        let headers = response.headers_mut();
        if unauthorized {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // RFC 9110 §15.5.6: a 405 lists the methods the route has.
        if let Self::MethodNotAllowed(allowed) = self {
            headers.insert(header::ALLOW, HeaderValue::from_static(allowed));
        }
        response
    }
}
