//! Realm-wide endpoints: nodes, health, metrics, the OpenAPI document, and the 404 fallback.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use tartarus_core::NodeInfo;
use utoipa::{OpenApi, ToSchema};

use super::{ApiDoc, Ctx};
use crate::error::{ApiError, ErrorBody};

/// A listing of nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Every node Hades knows.
    pub nodes: Vec<NodeInfo>,
}

/// The nodes in Hades.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = NodeList), (status = 401, body = ErrorBody)))]
pub async fn nodes(State(ctx): State<Ctx>) -> Result<Json<NodeList>, ApiError> {
    let mut nodes = ctx.state.hades.nodes().await?;
    // In-process nodes answer for themselves; the registry may be a heartbeat behind.
    for n in &mut nodes {
        if let Some(live) = ctx.moirai.nodes.get(&n.name) {
            *n = live.info();
        }
    }
    Ok(Json(NodeList { nodes }))
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", security(), responses((status = 200, description = "{\"status\":\"ok\"}")))]
pub async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", security(), responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(ctx): State<Ctx>) -> impl IntoResponse {
    if let Ok(depth) = ctx.state.acheron.depth().await {
        ctx.metrics.queue_depth.set(depth as i64);
    }
    let running: u32 = ctx.moirai.nodes.values().map(|n| n.info().running).sum();
    ctx.metrics.running.set(i64::from(running));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], ctx.metrics.render())
}

/// The OpenAPI document.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Known routes, wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{method} is not allowed on {}; see GET /v1/openapi.json", uri.path()))
}

/// Unknown routes.
pub async fn fallback(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route {uri}; see GET /v1/openapi.json"))
}
