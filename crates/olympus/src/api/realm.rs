//! Realm-wide endpoints: nodes (list, drain), failures (Cocytus), reconciliation, health,
//! metrics, the OpenAPI document, and the 404 fallback.

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tartarus_core::{Failure, NodeInfo, NodeState, SandboxId, SandboxState};
use tartarus_store::FailureFilter;
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{ApiDoc, Ctx, Q};
use crate::error::{ApiError, ErrorBody};
use crate::reconcile::{self, ReconcileReport};

/// A node as Hades knows it, with its health.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// Its registration and last heartbeat.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Alive, draining or dead (heartbeat older than the realm's `dead_after`).
    pub state: NodeState,
    /// Largest share of any resource in use, 0 to 1.
    pub load: f64,
    /// Sandboxes asked to end by a drain with `evict` (Thanatos, reason `node_drain`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub evicted: Vec<tartarus_core::SandboxId>,
}

/// A listing of nodes.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// Every node Hades knows, by name.
    pub nodes: Vec<NodeView>,
}

fn view(ctx: &Ctx, info: NodeInfo) -> NodeView {
    let state = info.state(Utc::now(), ctx.moirai.cfg.dead_after);
    NodeView { load: info.load(), state, info, evicted: Vec::new() }
}

/// The nodes in Hades.
#[utoipa::path(get, path = "/v1/nodes", responses((status = 200, body = NodeList), (status = 401, body = ErrorBody)))]
pub async fn nodes(State(ctx): State<Ctx>) -> Result<Json<NodeList>, ApiError> {
    let mut nodes = ctx.moirai.nodes().await?;
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(NodeList { nodes: nodes.into_iter().map(|n| view(&ctx, n)).collect() }))
}

async fn set_draining(ctx: &Ctx, name: &str, draining: bool) -> Result<NodeView, ApiError> {
    if !ctx.state.hades.set_draining(name, draining).await? {
        return Err(ApiError::NotFound(format!("no node {name:?} in Hades; see GET /v1/nodes")));
    }
    // Placements by this Olympus follow at once (others within their view's 250 ms).
    ctx.moirai.invalidate_view();
    let info = ctx.moirai.nodes().await?.into_iter().find(|n| n.name == name);
    let info = info.ok_or_else(|| ApiError::NotFound(format!("node {name:?} left Hades")))?;
    Ok(view(ctx, info))
}

/// Query of `POST /v1/nodes/{name}/drain`.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
pub struct DrainQuery {
    /// Also end the sandboxes running there (Thanatos: SIGTERM, the grace, then SIGKILL).
    #[serde(default)]
    pub evict: bool,
    /// With `evict`: how long each sandbox has to end after SIGTERM (default 30s, at most 1h).
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub grace: Option<tartarus_core::HumanDuration>,
}

/// Stop new placements on a node; its running sandboxes keep running, or with `evict` are
/// ended gracefully (reason `node_drain`).
#[utoipa::path(post, path = "/v1/nodes/{name}/drain", params(("name" = String, Path, description = "Node name"), DrainQuery),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn drain(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    super::Q(q): super::Q<DrainQuery>,
) -> Result<Json<NodeView>, ApiError> {
    let grace = super::sandboxes::check_grace(q.grace.map_or(std::time::Duration::from_secs(30), |g| g.0))?;
    let mut view = set_draining(&ctx, &name, true).await?;
    if q.evict {
        let filter = tartarus_store::SandboxFilter {
            states: vec![SandboxState::Starting, SandboxState::Running, SandboxState::Paused],
            node: Some(name.clone()),
            ..Default::default()
        };
        let node = ctx.moirai.node_of(&name).await?.map(|(_, n)| n).ok_or_else(|| {
            ApiError::NodeUnreachable(format!("node {name} cannot be reached to evict its sandboxes"))
        })?;
        let order = tartarus_core::KillOrder {
            reason: tartarus_core::KillReason::NodeDrain,
            signal: 15,
            grace_ms: grace.as_millis() as u64,
        };
        for rec in ctx.state.sandboxes.list(&filter).await? {
            if matches!(node.kill(&rec.id, order).await, Ok(true)) {
                view.evicted.push(rec.id);
            }
        }
        tracing::info!(node = %name, evicted = view.evicted.len(), "node drained with eviction");
    }
    Ok(Json(view))
}

/// Allow placements on a drained node again.
#[utoipa::path(post, path = "/v1/nodes/{name}/undrain", params(("name" = String, Path, description = "Node name")),
    responses((status = 200, body = NodeView), (status = 404, body = ErrorBody)))]
pub async fn undrain(State(ctx): State<Ctx>, Path(name): Path<String>) -> Result<Json<NodeView>, ApiError> {
    Ok(Json(set_draining(&ctx, &name, false).await?))
}

/// Query of `GET /v1/failures`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct FailuresQuery {
    /// Only failures at or after this time (RFC 3339).
    pub since: Option<DateTime<Utc>>,
    /// Only this node's.
    pub node: Option<String>,
    /// Only this sandbox's.
    pub sandbox: Option<String>,
    /// At most this many, newest first (default 100, at most 10000).
    pub limit: Option<usize>,
}

/// A listing of failures.
#[derive(Debug, Serialize, ToSchema)]
pub struct FailureList {
    /// Newest first.
    pub failures: Vec<Failure>,
}

/// Cocytus: launch errors, lost sandboxes, enforcement kills, retried placements.
#[utoipa::path(get, path = "/v1/failures", params(FailuresQuery),
    responses((status = 200, body = FailureList), (status = 422, body = ErrorBody)))]
pub async fn failures(State(ctx): State<Ctx>, Q(q): Q<FailuresQuery>) -> Result<Json<FailureList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit: {limit} is outside 1..=10000")));
    }
    let sandbox = q
        .sandbox
        .map(|s| {
            SandboxId::parse(&s).map_err(|_| ApiError::InvalidRequest(format!("sandbox: {s:?} is not a sandbox id")))
        })
        .transpose()?;
    let filter = FailureFilter { since: q.since, node: q.node, tenant: None, sandbox, limit: Some(limit) };
    Ok(Json(FailureList { failures: ctx.state.cocytus.failures(&filter).await? }))
}

/// Rebuild the realm's view from Hades and the agents, and repair records. Safe to repeat.
#[utoipa::path(post, path = "/v1/admin/reconcile", responses((status = 200, body = ReconcileReport), (status = 401, body = ErrorBody)))]
pub async fn reconcile(State(ctx): State<Ctx>) -> Result<Json<ReconcileReport>, ApiError> {
    Ok(Json(reconcile::reconcile(&ctx.moirai).await?))
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
    if let Ok(nodes) = ctx.moirai.nodes().await {
        let now = Utc::now();
        let alive: Vec<&NodeInfo> =
            nodes.iter().filter(|n| n.state(now, ctx.moirai.cfg.dead_after) != NodeState::Dead).collect();
        ctx.metrics.nodes_alive.set(alive.len() as i64);
        ctx.metrics.running.set(alive.iter().map(|n| i64::from(n.used.slots)).sum());
    }
    if let Ok(templates) = ctx.state.templates.templates().await {
        if let Ok(pools) = super::templates::pool_views(&ctx, &templates).await {
            ctx.metrics.pool_ready.reset();
            ctx.metrics.pool_served.reset();
            for (name, view) in pools {
                ctx.metrics.pool_ready.with_label_values(&[name.as_str()]).set(i64::from(view.ready));
                ctx.metrics.pool_served.with_label_values(&[name.as_str()]).set(view.served as i64);
            }
        }
    }
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
