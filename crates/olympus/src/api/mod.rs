//! The versioned REST API: routes, shared context, and the OpenAPI document built from the code.

pub mod agents;
pub mod realm;
pub mod sandboxes;
pub mod stream;
pub mod templates;

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::FromRequest;
use axum::routing::{get, post};
use axum::Router;
use tartarus_store::{Events, State};
use utoipa::OpenApi;

use crate::cerberus::{self, Cerberus};
use crate::error::ApiError;
use crate::judges::Tribunal;
use crate::metrics::Metrics;
use crate::moirai::Moirai;

/// What every handler can reach.
#[derive(Clone)]
pub struct Ctx {
    /// State seams.
    pub state: State,
    /// Record changes.
    pub events: Events,
    /// The judges.
    pub tribunal: Arc<Tribunal>,
    /// The scheduler and its nodes.
    pub moirai: Arc<Moirai>,
    /// Metrics.
    pub metrics: Metrics,
    /// Where imported templates are kept.
    pub templates_dir: PathBuf,
    /// Most live sandboxes per tenant, enforced atomically when a record is stored.
    pub max_live_per_tenant: usize,
    /// The secret agents present to Olympus (and Olympus to them); `None` without remote agents.
    pub agent_secret: Option<String>,
    /// Hypnos is enabled (`ENABLE_HYPNOS=1`).
    pub hypnos: bool,
    /// Held while a template is imported or built, so two of one name cannot interleave.
    pub imports: Arc<tokio::sync::Mutex<()>>,
    /// Erebus's blob store.
    pub blobs: tartarus_erebus::blobs::BlobStore,
    /// Where recipes keep their work between builds.
    pub recipes_dir: PathBuf,
    /// Where unpacked images are kept, by manifest digest.
    pub images_dir: PathBuf,
}

/// A JSON body (whatever the `Content-Type` says); anything unparsable is a `malformed_json`
/// error carrying serde's explanation (which field, which line and column).
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the request body is larger than {BODY_LIMIT} bytes"))
            } else {
                ApiError::MalformedJson(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        if bytes.is_empty() {
            return Err(ApiError::MalformedJson("the request body is empty; send a JSON object".into()));
        }
        serde_json::from_slice(&bytes).map(Body).map_err(|e| ApiError::MalformedJson(format!("invalid JSON body: {e}")))
    }
}

/// Largest request body accepted.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Query parameters whose rejections become `invalid_request` errors.
pub struct Q<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Q<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| ApiError::InvalidRequest(format!("query: {}", e.body_text())))
    }
}

/// The `{id}` path segment, as text; a segment that cannot be decoded names no sandbox.
pub struct IdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|_| ApiError::SandboxNotFound("no such sandbox (ids look like sb-0123456789abcdef)".into()))
    }
}

/// The OpenAPI document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Tartarus", description = "Run untrusted code in isolated sandboxes. Errors are `{code, message}`; see docs/api.md."),
    paths(
        sandboxes::create, sandboxes::list, sandboxes::get_one, sandboxes::kill, sandboxes::exec, sandboxes::logs,
        sandboxes::pause, sandboxes::resume, sandboxes::sleep, sandboxes::wake, sandboxes::sleeping, sandboxes::ferry, templates::list, templates::import, templates::build, templates::inspect,
        templates::remove, templates::prune, templates::warm, templates::set_pool, templates::snapshots, templates::remove_snapshot, realm::nodes, realm::drain, realm::undrain, realm::failures,
        realm::reconcile, realm::healthz, realm::metrics, agents::hello
    ),
    components(schemas(
        tartarus_core::SoulRequest, tartarus_core::SandboxRecord, tartarus_core::SandboxSpec, tartarus_core::Verdict,
        tartarus_core::Ruling, tartarus_core::SandboxState, tartarus_core::KillReason, tartarus_core::SandboxStats,
        tartarus_core::Resources, tartarus_core::NetworkContract, tartarus_core::HeatLevel, tartarus_core::ExecRequest,
        tartarus_core::ExitInfo, tartarus_core::TemplateRecord, tartarus_core::NodeInfo, crate::error::ErrorBody,
        sandboxes::SandboxList, sandboxes::ExecResult, templates::TemplateList, templates::ImportRequest, templates::BuildRequest, templates::PruneResult,
        tartarus_core::ImageInfo, tartarus_core::ImageDefaults, tartarus_core::SnapshotInfo, tartarus_core::Warming,
        templates::SnapshotEntry, templates::SnapshotList, templates::PoolRequest, templates::PoolView, sandboxes::Sleeper, sandboxes::SleeperList, tartarus_core::SleepInfo, tartarus_core::PoolCount, realm::NodeList, realm::NodeView, realm::FailureList,
        tartarus_core::Failure, tartarus_core::Capacity, tartarus_core::NodeState, crate::reconcile::ReconcileReport, agents::Hello
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The whole router: `/v1` behind Cerberus, health, metrics and the document open.
pub fn router(ctx: Ctx, cerberus: Cerberus) -> Router {
    let v1 = Router::new()
        .route("/sandboxes", post(sandboxes::create).get(sandboxes::list))
        .route("/sandboxes/{id}", get(sandboxes::get_one).delete(sandboxes::kill))
        .route("/sandboxes/{id}/exec", post(sandboxes::exec))
        .route("/sandboxes/{id}/logs", get(sandboxes::logs))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/sleep", post(sandboxes::sleep))
        .route("/sandboxes/{id}/wake", post(sandboxes::wake))
        .route("/sleeping", get(sandboxes::sleeping))
        .route(
            "/sandboxes/{id}/ports/{port}",
            axum::routing::any(sandboxes::ferry)
                .layer(axum::extract::DefaultBodyLimit::max(tartarus_hecatoncheir::charon::MAX_BODY)),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/",
            axum::routing::any(sandboxes::ferry)
                .layer(axum::extract::DefaultBodyLimit::max(tartarus_hecatoncheir::charon::MAX_BODY)),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/{*rest}",
            axum::routing::any(sandboxes::ferry)
                .layer(axum::extract::DefaultBodyLimit::max(tartarus_hecatoncheir::charon::MAX_BODY)),
        )
        .route("/templates", get(templates::list).post(templates::import))
        .route("/templates/build", post(templates::build))
        .route("/templates/prune", post(templates::prune))
        .route("/templates/{name}", get(templates::inspect).delete(templates::remove))
        .route("/templates/{name}/warm", post(templates::warm))
        .route("/templates/{name}/pool", axum::routing::put(templates::set_pool))
        .route("/templates/{name}/snapshot", axum::routing::delete(templates::remove_snapshot))
        .route("/snapshots", get(templates::snapshots))
        .route("/nodes", get(realm::nodes))
        .route("/nodes/{name}/drain", post(realm::drain))
        .route("/nodes/{name}/undrain", post(realm::undrain))
        .route("/failures", get(realm::failures))
        .route("/admin/reconcile", post(realm::reconcile))
        .route_layer(axum::middleware::from_fn_with_state(cerberus, cerberus::guard));
    Router::new()
        .nest("/v1", v1)
        .route("/v1/openapi.json", get(realm::openapi))
        .route("/v1/agents/hello", post(agents::hello))
        .route("/healthz", get(realm::healthz))
        .route("/metrics", get(realm::metrics))
        .fallback(realm::fallback)
        .method_not_allowed_fallback(realm::method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(ctx)
}
