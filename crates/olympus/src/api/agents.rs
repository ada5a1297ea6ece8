//! `/v1/agents`: what node agents tell Olympus — authenticated with the realm's agent secret,
//! never with tenants' keys.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tartarus_core::SandboxId;
use tracing::{info, warn};
use utoipa::ToSchema;

use super::{Body, Ctx};
use crate::error::{ApiError, ErrorBody};
use crate::reconcile;

/// An agent's report after it (re)started: what it found of its sandboxes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Hello {
    /// The node.
    pub node: String,
    /// Still running: watched again.
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub adopted: Vec<SandboxId>,
    /// Ended while the agent was away: recorded from their exit status.
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub finished: Vec<SandboxId>,
    /// Gone without a trace: recorded as lost.
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub lost: Vec<SandboxId>,
    /// Placed but never started: queued again.
    #[schema(value_type = Vec<String>)]
    #[serde(default)]
    pub requeued: Vec<SandboxId>,
}

/// Checks the agent secret in the `Authorization` header, in constant time.
fn authorize(ctx: &Ctx, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = ctx.agent_secret.as_deref() else {
        return Err(ApiError::NotFound("this realm has no remote agents (it runs its node in process)".into()));
    };
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if bool::from(presented.as_bytes().ct_eq(secret.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized("agent calls need `Authorization: Bearer <agent secret>`".into()))
    }
}

/// An agent reports its (re)start; Olympus reconciles the realm in the background.
#[utoipa::path(post, path = "/v1/agents/hello", request_body = Hello, security(),
    responses((status = 200, description = "Noted"), (status = 401, body = ErrorBody)))]
pub async fn hello(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Body(hello): Body<Hello>,
) -> Result<Json<serde_json::Value>, ApiError> {
    authorize(&ctx, &headers)?;
    info!(
        node = %hello.node,
        adopted = hello.adopted.len(),
        finished = hello.finished.len(),
        lost = hello.lost.len(),
        requeued = hello.requeued.len(),
        "agent (re)started"
    );
    let moirai = ctx.moirai.clone();
    tokio::spawn(async move {
        if let Err(e) = reconcile::reconcile(&moirai).await {
            warn!(error = %e, "reconciliation after an agent's start failed");
        }
    });
    Ok(Json(serde_json::json!({})))
}
