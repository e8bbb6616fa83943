//! The edge's error: an HTTP status plus the Key Vault error body. The one place a service
//! error becomes a response; nothing below `http/` knows this type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keystead_core::error::ErrorBody;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub inner: Option<(String, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            inner: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    pub fn with_inner(mut self, code: &str, message: impl Into<String>) -> Self {
        self.inner = Some((code.to_string(), message.into()));
        self
    }

    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(&self.code, &self.message);
        match &self.inner {
            Some((c, m)) => body.with_inner(c, m),
            None => body,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, axum::Json(self.body())).into_response();
        // For the audit record's `errorCode`.
        r.extensions_mut()
            .insert(super::ErrorCodeTag(self.code.clone()));
        r
    }
}

impl From<crate::service::Error> for ApiError {
    fn from(e: crate::service::Error) -> Self {
        let status =
            StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError {
            status,
            code: e.code,
            message: e.message,
            inner: e.inner,
        }
    }
}

impl From<crate::consensus::ProposeError> for ApiError {
    fn from(e: crate::consensus::ProposeError) -> Self {
        crate::service::Error::from(e).into()
    }
}
