//! API errors: one table maps each kind to its HTTP status and stable `code`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code (see docs/api.md).
    pub code: &'static str,
    /// What went wrong and what to do about it.
    pub message: String,
}

/// Every way an API call can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON of the right shape.
    #[error("{0}")]
    MalformedJson(String),
    /// No or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// A policy refused the request.
    #[error("{0}")]
    PolicyDenied(String),
    /// No such sandbox.
    #[error("{0}")]
    SandboxNotFound(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The body is too large.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The sandbox is not in a state that allows this.
    #[error("{0}")]
    NotRunning(String),
    /// A resource with this name exists.
    #[error("{0}")]
    Conflict(String),
    /// A field is out of bounds.
    #[error("{0}")]
    InvalidRequest(String),
    /// The template does not exist.
    #[error("{0}")]
    UnknownTemplate(String),
    /// No such template.
    #[error("{0}")]
    TemplateNotFound(String),
    /// The image is malformed, hostile or corrupt.
    #[error("{0}")]
    ImageRejected(String),
    /// A registry (or other upstream) failed.
    #[error("{0}")]
    Upstream(String),
    /// A quota refused the request.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Warming a template failed (its warm-up command, or the checkpoint).
    #[error("{0}")]
    WarmFailed(String),
    /// Hypnos refused to put a sandbox to sleep, or is disabled.
    #[error("{0}")]
    CannotSleep(String),
    /// The sandbox does not expose that port.
    #[error("{0}")]
    PortNotExposed(String),
    /// A sandbox's exposed port did not answer properly.
    #[error("{0}")]
    BadGateway(String),
    /// The node holding the sandbox cannot be reached.
    #[error("{0}")]
    NodeUnreachable(String),
    /// A fault of Tartarus itself.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Status and code, the single table of the API's errors.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::PolicyDenied(_) => (StatusCode::FORBIDDEN, "policy_denied"),
            Self::SandboxNotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            Self::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Self::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::UnknownTemplate(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_template"),
            Self::QuotaExceeded(_) => (StatusCode::TOO_MANY_REQUESTS, "quota_exceeded"),
            Self::TemplateNotFound(_) => (StatusCode::NOT_FOUND, "template_not_found"),
            Self::WarmFailed(_) => (StatusCode::UNPROCESSABLE_ENTITY, "warm_failed"),
            Self::CannotSleep(_) => (StatusCode::CONFLICT, "cannot_sleep"),
            Self::PortNotExposed(_) => (StatusCode::NOT_FOUND, "port_not_exposed"),
            Self::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
            Self::ImageRejected(_) => (StatusCode::UNPROCESSABLE_ENTITY, "image_rejected"),
            Self::Upstream(_) => (StatusCode::BAD_GATEWAY, "registry_error"),
            Self::NodeUnreachable(_) => (StatusCode::SERVICE_UNAVAILABLE, "node_unreachable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(code, message = %self, "request failed");
        }
        (status, Json(ErrorBody { code, message: self.to_string() })).into_response()
    }
}

impl From<tartarus_store::StoreError> for ApiError {
    fn from(e: tartarus_store::StoreError) -> Self {
        Self::Internal(tartarus_hecatoncheir::agent::error_chain(&e))
    }
}

impl From<crate::nodes::NodeError> for ApiError {
    fn from(e: crate::nodes::NodeError) -> Self {
        use crate::nodes::NodeError as N;
        match e {
            N::NotFound(m) => Self::SandboxNotFound(m),
            N::NotRunning(m) => Self::NotRunning(m),
            N::Failed(m) => Self::Internal(m),
            N::CannotSleep(m) => Self::CannotSleep(m),
            N::NotExposed(m) => Self::PortNotExposed(m),
            N::BadGateway(m) => Self::BadGateway(m),
            e @ N::Unreachable { .. } => Self::NodeUnreachable(e.to_string()),
        }
    }
}
