//! The API's one error type: a Connect error code and a message meant for the caller.
//! Internal causes are logged where they happen and never reach the response.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Connect error codes the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    ResourceExhausted,
    DeadlineExceeded,
    Unimplemented,
    Unavailable,
    Internal,
}

impl Code {
    /// The code's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::Unauthenticated => "unauthenticated",
            Code::PermissionDenied => "permission_denied",
            Code::NotFound => "not_found",
            Code::ResourceExhausted => "resource_exhausted",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::Unimplemented => "unimplemented",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The HTTP status the Connect protocol maps the code to.
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument => StatusCode::BAD_REQUEST,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered as `{"code","message"}` (JSON for every codec) with a non-200 status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Overrides the code's status (415 for an unsupported content type).
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            status: None,
        }
    }

    /// A bad request parameter; `field` is its name as the caller wrote it.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> Self {
        ApiError::new(Code::InvalidArgument, format!("{field}: {message}"))
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ApiError::new(Code::Unauthenticated, message)
    }

    /// The same answer whether or not the organization exists or has events.
    pub fn permission_denied() -> Self {
        ApiError::new(
            Code::PermissionDenied,
            "only the organization's owners may read its audit logs",
        )
    }

    /// An internal failure: logged here, answered without detail.
    pub fn internal(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "query API: {what}");
        ApiError::new(Code::Internal, "internal error")
    }

    pub fn unavailable(what: &str, cause: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %cause, "query API: {what}");
        ApiError::new(
            Code::Unavailable,
            "the relay is shutting down or overloaded; retry",
        )
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"code": self.code.as_str(), "message": self.message});
        (
            self.status.unwrap_or(self.code.status()),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_with_their_status() {
        let r = ApiError::invalid("organizationId", "must be a UUID").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(ApiError::permission_denied().into_response().status(), 403);
        assert_eq!(ApiError::unauthenticated("x").into_response().status(), 401);
        let e = ApiError::internal("test", "secret path /etc/x");
        assert_eq!(e.message, "internal error");
    }
}
