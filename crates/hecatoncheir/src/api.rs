//! The agent's HTTP API: how Olympus drives a `tartarus agent` on another machine.
//!
//! Every route lives under `/agent/v1` and requires `Authorization: Bearer <agent secret>`,
//! compared in constant time; nothing is open, not even `/healthz`, because the agent runs
//! arbitrary commands in sandboxes and its only caller is Olympus, which holds the secret.
//!
//! | route                                  | answer                                                   |
//! |----------------------------------------|----------------------------------------------------------|
//! | `POST /sandboxes/{id}/launch`          | `{}` once it runs, or once its failure is recorded       |
//! | `POST /sandboxes/{id}/kill`            | body `{"reason": …}` → `{"killed": bool}`                |
//! | `POST /sandboxes/{id}/exec`            | body [`ExecRequest`] → ndjson output events, then exit   |
//! | `GET  /sandboxes/{id}/logs?follow=…`   | ndjson output events                                     |
//! | `POST /sandboxes/{id}/pause`, `resume` | the [`tartarus_core::SandboxRecord`]                     |
//! | `GET  /sandboxes`                      | `{"sandboxes": [ids]}`, what this node holds             |
//! | `GET  /healthz`                        | `{"node": name}`                                         |
//!
//! Streams are `application/x-ndjson`: one [`OutputEvent::to_wire`] line per event. A client
//! that goes away drops the stream's receiver, and the agent ends the exec it fed.
//! Errors are `{"code", "message"}` with the status of [`AgentApiError::status_and_code`].

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tartarus_core::{ExecRequest, KillOrder, KillReason, OutputEvent, SandboxId, SandboxRecord};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, warn};

use crate::agent::{error_chain, AgentError, Hecatoncheir};

/// Largest request body accepted (an [`ExecRequest`] is far smaller; this only stops abuse).
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// The content type of output streams.
pub const NDJSON: &str = "application/x-ndjson";

/// Every way a call to the agent's API can fail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentApiError {
    /// No or wrong agent secret.
    #[error("{0}")]
    Unauthorized(String),
    /// No such sandbox (or the path does not hold a sandbox id).
    #[error("{0}")]
    SandboxNotFound(String),
    /// No such route.
    #[error("{0}")]
    NotFound(String),
    /// The route exists, not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The sandbox is not in a state that allows this.
    #[error("{0}")]
    NotRunning(String),
    /// The body is not JSON of the right shape.
    #[error("{0}")]
    MalformedJson(String),
    /// The body is larger than [`BODY_LIMIT`].
    #[error("{0}")]
    PayloadTooLarge(String),
    /// A field is out of bounds.
    #[error("{0}")]
    InvalidRequest(String),
    /// The agent failed (its runtime or its store).
    #[error("{0}")]
    Agent(String),
    /// Hypnos refused to put the sandbox to sleep (it is left as it was).
    #[error("{0}")]
    CannotSleep(String),
    /// The sandbox does not expose the port.
    #[error("{0}")]
    NotExposed(String),
    /// The sandbox's port did not answer properly.
    #[error("{0}")]
    BadGateway(String),
}

impl AgentApiError {
    /// Status and stable code: the single table of the agent API's errors.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::SandboxNotFound(_) => (StatusCode::NOT_FOUND, "sandbox_not_found"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::NotRunning(_) => (StatusCode::CONFLICT, "not_running"),
            Self::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Self::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::InvalidRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
            Self::Agent(_) => (StatusCode::INTERNAL_SERVER_ERROR, "agent_error"),
            Self::CannotSleep(_) => (StatusCode::CONFLICT, "cannot_sleep"),
            Self::NotExposed(_) => (StatusCode::NOT_FOUND, "port_not_exposed"),
            Self::BadGateway(_) => (StatusCode::BAD_GATEWAY, "bad_gateway"),
        }
    }
}

/// The body of every error response.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

impl IntoResponse for AgentApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            error!(code, message = %self, "agent call failed");
        }
        let mut resp = (status, Json(ErrorBody { code: code.into(), message: self.to_string() })).into_response();
        // Marks the agent's own refusals apart from a sandbox's answers carried by Charon.
        resp.headers_mut().insert(crate::charon::refusal_header(), axum::http::HeaderValue::from_static("1"));
        resp
    }
}

impl From<AgentError> for AgentApiError {
    fn from(e: AgentError) -> Self {
        match e {
            AgentError::NotFound(id) => Self::SandboxNotFound(format!("no sandbox {id}")),
            e @ AgentError::NotRunning { .. } => Self::NotRunning(e.to_string()),
            AgentError::CannotSleep(m) => Self::CannotSleep(m),
            AgentError::NotExposed(m) => Self::NotExposed(m),
            AgentError::Ferry(m) => Self::BadGateway(m),
            e => Self::Agent(error_chain(&e)),
        }
    }
}

impl From<JsonRejection> for AgentApiError {
    fn from(r: JsonRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge(format!("the body exceeds {BODY_LIMIT} bytes")),
            _ => Self::MalformedJson(r.body_text()),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    agent: Arc<Hecatoncheir>,
    secret: Arc<str>,
}

/// The agent's API around `agent`, open only to callers presenting `secret`.
///
/// An empty `secret` opens nothing: no presented token matches it.
pub fn router(agent: Arc<Hecatoncheir>, secret: String) -> Router {
    if secret.is_empty() {
        warn!("the agent secret is empty: the agent API will refuse every call");
    }
    let ctx = Ctx { agent, secret: secret.into() };
    let v1 = Router::new()
        .route("/healthz", get(healthz))
        .route("/sandboxes", get(held))
        .route("/sandboxes/{id}/launch", post(launch))
        .route("/sandboxes/{id}/kill", post(kill))
        .route("/sandboxes/{id}/exec", post(exec))
        .route("/sandboxes/{id}/logs", get(logs))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/sleep", post(sleep))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/templates/{name}/warm", post(warm))
        .route(
            "/sandboxes/{id}/ports/{port}",
            axum::routing::any(ferry).layer(DefaultBodyLimit::max(crate::charon::MAX_BODY)),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/",
            axum::routing::any(ferry).layer(DefaultBodyLimit::max(crate::charon::MAX_BODY)),
        )
        .route(
            "/sandboxes/{id}/ports/{port}/{*rest}",
            axum::routing::any(ferry).layer(DefaultBodyLimit::max(crate::charon::MAX_BODY)),
        );
    Router::new()
        .nest("/agent/v1", v1)
        .fallback(|| async { AgentApiError::NotFound("no such route in the agent API".into()) })
        .method_not_allowed_fallback(|| async {
            AgentApiError::MethodNotAllowed("this route does not take this method".into())
        })
        // Added after the routes and fallbacks, so it guards them all: unknown routes answer
        // 401 too, and an unauthenticated caller learns nothing about the API.
        .layer(middleware::from_fn_with_state(ctx.clone(), guard))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(ctx)
}

/// Whether `presented` is the agent secret, in time independent of where they differ.
fn authentic(secret: &str, presented: &str) -> bool {
    !presented.is_empty() && bool::from(secret.as_bytes().ct_eq(presented.as_bytes()))
}

/// Middleware: refuses calls without the agent secret.
async fn guard(State(ctx): State<Ctx>, req: Request, next: Next) -> Result<Response, AgentApiError> {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        warn!(path = %req.uri().path(), "refused an agent call without `Authorization: Bearer`");
        return Err(AgentApiError::Unauthorized(
            "missing `Authorization: Bearer <agent secret>`; only Olympus calls the agent".into(),
        ));
    };
    if !authentic(&ctx.secret, token.trim()) {
        warn!(path = %req.uri().path(), "refused an agent call with the wrong secret");
        return Err(AgentApiError::Unauthorized("wrong agent secret".into()));
    }
    Ok(next.run(req).await)
}

/// The sandbox id in a path; anything else names no sandbox.
fn sandbox_id(raw: &str) -> Result<SandboxId, AgentApiError> {
    SandboxId::parse(raw).map_err(|e| AgentApiError::SandboxNotFound(e.to_string()))
}

/// Runs `work` in its own task and waits for it. A caller that hangs up drops the handler's
/// future; a launch or pause cut off halfway would leave the sandbox and its record apart, so
/// the work runs to its end whoever still waits (a retried launch joins it: launches are
/// idempotent).
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentApiError> {
    match tokio::spawn(work).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(AgentApiError::Agent(format!("the agent's task failed: {e}"))),
    }
}

/// An output stream as ndjson: one wire event per line, ending after the exit event.
///
/// The response body owns the receiver: when the client goes away the body is dropped, and
/// with it the receiver, which tells the agent nobody reads any more.
fn ndjson(rx: mpsc::Receiver<OutputEvent>) -> Response {
    let lines = ReceiverStream::new(rx).scan(false, |ended, ev| {
        if *ended {
            return futures::future::ready(None);
        }
        *ended = matches!(ev, OutputEvent::Exit(_));
        let mut line = ev.to_wire();
        line.push('\n');
        futures::future::ready(Some(Ok::<_, Infallible>(line)))
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(lines)).into_response()
}

#[derive(Serialize, Deserialize)]
struct Health {
    node: String,
}

async fn healthz(State(ctx): State<Ctx>) -> Json<Health> {
    Json(Health { node: ctx.agent.name().to_owned() })
}

/// The answer of `GET /sandboxes`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Held {
    /// The sandboxes this node holds: running, paused, or being launched.
    pub sandboxes: Vec<SandboxId>,
}

async fn held(State(ctx): State<Ctx>) -> Json<Held> {
    Json(Held { sandboxes: ctx.agent.held() })
}

async fn launch(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<serde_json::Value>, AgentApiError> {
    let id = sandbox_id(&id)?;
    let agent = ctx.agent.clone();
    to_completion(async move { agent.launch(&id).await }).await?;
    Ok(Json(serde_json::json!({})))
}

/// `POST /templates/{name}/warm` (the body is a [`tartarus_core::Warming`]).
async fn warm(
    State(ctx): State<Ctx>,
    Path(name): Path<String>,
    Json(body): Json<tartarus_core::Warming>,
) -> Result<Json<tartarus_core::SnapshotInfo>, AgentApiError> {
    let name =
        tartarus_core::TemplateName::parse(&name).map_err(|e| AgentApiError::from(AgentError::Warm(e.to_string())))?;
    let agent = ctx.agent.clone();
    Ok(Json(to_completion(async move { agent.warm(&name, body).await }).await?))
}

/// The body of `POST /sandboxes/{id}/kill`.
#[derive(Debug, Serialize, Deserialize)]
pub struct KillBody {
    /// Why it is killed (recorded as its kill reason).
    pub reason: KillReason,
    /// The signal sent first (default SIGKILL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// Grace period after the signal, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

impl From<KillOrder> for KillBody {
    fn from(o: KillOrder) -> Self {
        Self { reason: o.reason, signal: Some(o.signal), grace_ms: Some(o.grace_ms) }
    }
}

/// The answer of `POST /sandboxes/{id}/kill`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Killed {
    /// `false` when it was not running on this node.
    pub killed: bool,
}

async fn kill(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<KillBody>, JsonRejection>,
) -> Result<Json<Killed>, AgentApiError> {
    let id = sandbox_id(&id)?;
    let Json(body) = body?;
    let order = KillOrder {
        reason: body.reason,
        signal: body.signal.unwrap_or(libc::SIGKILL),
        grace_ms: body.grace_ms.unwrap_or(0),
    };
    Ok(Json(Killed { killed: ctx.agent.kill(&id, order) }))
}

async fn exec(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    body: Result<Json<ExecRequest>, JsonRejection>,
) -> Result<Response, AgentApiError> {
    let id = sandbox_id(&id)?;
    let Json(req) = body?;
    req.validate().map_err(|e| AgentApiError::InvalidRequest(e.to_string()))?;
    let rx = ctx.agent.exec(&id, req).await?;
    Ok(ndjson(rx))
}

/// The query of `GET /sandboxes/{id}/logs`.
#[derive(Debug, Deserialize)]
struct LogsQuery {
    #[serde(default)]
    follow: bool,
}

async fn logs(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AgentApiError> {
    let id = sandbox_id(&id)?;
    let Query(q) = query.map_err(|e| AgentApiError::InvalidRequest(e.body_text()))?;
    // The log reader simply ends for a sandbox without a record; say so instead.
    let known = ctx.agent.state().sandboxes.get(&id).await.map_err(AgentError::from)?;
    if known.is_none() {
        return Err(AgentError::NotFound(id).into());
    }
    Ok(ndjson(ctx.agent.logs(&id, q.follow)))
}

async fn pause(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<SandboxRecord>, AgentApiError> {
    let id = sandbox_id(&id)?;
    let agent = ctx.agent.clone();
    Ok(Json(to_completion(async move { agent.pause(&id).await }).await?))
}

async fn sleep(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<SandboxRecord>, AgentApiError> {
    let id = sandbox_id(&id)?;
    let agent = ctx.agent.clone();
    Ok(Json(to_completion(async move { agent.sleep(&id).await }).await?))
}

/// Charon: carries the request to the sandbox's exposed port and answers with what it said.
async fn ferry(
    State(ctx): State<Ctx>,
    Path(params): Path<Vec<(String, String)>>,
    req: Request,
) -> Result<Response, AgentApiError> {
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    let id = sandbox_id(&param("id"))?;
    let port: u16 = param("port")
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| AgentApiError::NotExposed(format!("{:?} is not a port", param("port"))))?;
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let path = format!("/{}{query}", param("rest"));
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, crate::charon::MAX_BODY)
        .await
        .map_err(|e| AgentApiError::PayloadTooLarge(format!("the body: {e}")))?;
    let crossing = crate::charon::Crossing { method: parts.method, path, headers: parts.headers, body };
    let landing = ctx.agent.ferry(&id, port, crossing).await?;
    let mut resp = Response::new(Body::from(landing.body));
    *resp.status_mut() = landing.status;
    *resp.headers_mut() = landing.headers;
    Ok(resp)
}

async fn resume(State(ctx): State<Ctx>, Path(id): Path<String>) -> Result<Json<SandboxRecord>, AgentApiError> {
    let id = sandbox_id(&id)?;
    let agent = ctx.agent.clone();
    Ok(Json(to_completion(async move { agent.resume(&id).await }).await?))
}

#[cfg(test)]
mod tests {
    use tartarus_core::{SandboxState, SoulRequest, Verdict};
    use tartarus_store::{EmbeddedStore, Events, State as Stores};

    use super::*;
    use crate::agent::AgentConfig;
    use crate::runtime::refusing::Refusing;

    const SECRET: &str = "agent-s3cret";

    /// An agent named `n1` serving its API on a free port.
    struct Served {
        agent: Arc<Hecatoncheir>,
        base: String,
        http: reqwest::Client,
        _dir: tempfile::TempDir,
    }

    async fn serve() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let cfg = AgentConfig {
            node_name: "n1".into(),
            sandboxes_dir: dir.path().join("sandboxes"),
            shim_exe: "/nonexistent/tartarus".into(),
            vcpus: 2,
            memory_mib: 1024,
            slots: 4,
            labels: Default::default(),
            address: None,
            nyx: None,
            hypnos: None,
            styx: None,
            simulate_launch: None,
        };
        let agent = Hecatoncheir::new(cfg, Arc::new(Refusing), Stores::embedded(store), Events::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/agent/v1", listener.local_addr().unwrap());
        let app = router(agent.clone(), SECRET.into());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Served { agent, base, http: reqwest::Client::new(), _dir: dir }
    }

    impl Served {
        fn post(&self, path: &str) -> reqwest::RequestBuilder {
            self.http.post(format!("{}{path}", self.base)).bearer_auth(SECRET)
        }
        fn get(&self, path: &str) -> reqwest::RequestBuilder {
            self.http.get(format!("{}{path}", self.base)).bearer_auth(SECRET)
        }
        /// Stores a record of a sandbox in `state`, placed on this node.
        async fn sandbox(&self, state: SandboxState) -> SandboxId {
            let spec = SoulRequest { template: "busybox".into(), ..Default::default() }.validate("acme").unwrap();
            let verdict = Verdict { principal: "p".into(), rulings: vec![], judged_at: chrono::Utc::now() };
            let mut rec = SandboxRecord::admitted(SandboxId::generate(), spec, verdict);
            rec.state = state;
            rec.node = Some("n1".into());
            self.agent.state().sandboxes.insert(&rec, None).await.unwrap();
            rec.id
        }
    }

    /// Status and error code of a response that must be an error.
    async fn error_of(resp: reqwest::Response) -> (u16, String) {
        let status = resp.status().as_u16();
        let body: ErrorBody = resp.json().await.expect("an error body");
        assert!(!body.message.is_empty());
        (status, body.code)
    }

    #[tokio::test]
    async fn every_route_needs_the_secret() {
        let s = serve().await;
        let unauthorized = (401, "unauthorized".to_owned());
        let bare = s.http.get(format!("{}/healthz", s.base)).send().await.unwrap();
        assert_eq!(error_of(bare).await, unauthorized);
        for wrong in ["agent-s3cre", "agent-s3cret2", "AGENT-S3CRET", ""] {
            let resp = s.http.get(format!("{}/sandboxes", s.base)).bearer_auth(wrong).send().await.unwrap();
            assert_eq!(error_of(resp).await, unauthorized, "{wrong:?}");
        }
        let basic = s.http.get(format!("{}/healthz", s.base)).basic_auth("x", Some(SECRET)).send().await.unwrap();
        assert_eq!(error_of(basic).await, unauthorized);
        // Unknown routes and streaming routes too: nothing answers without the secret.
        let unknown = s.http.get(format!("{}/nope", s.base)).send().await.unwrap();
        assert_eq!(error_of(unknown).await, unauthorized);
        let id = SandboxId::generate();
        let exec = s.http.post(format!("{}/sandboxes/{id}/exec", s.base)).json(&serde_json::json!({"command": ["id"]}));
        assert_eq!(error_of(exec.send().await.unwrap()).await, unauthorized);

        let health: Health = s.get("/healthz").send().await.unwrap().json().await.unwrap();
        assert_eq!(health.node, "n1");
    }

    #[test]
    fn the_secret_is_compared_whole() {
        assert!(authentic("s3cret", "s3cret"));
        for wrong in ["", "s3cre", "s3cret2", "S3CRET"] {
            assert!(!authentic("s3cret", wrong), "{wrong:?}");
        }
        assert!(!authentic("", ""), "an empty secret opens nothing");
    }

    #[tokio::test]
    async fn streams_end_at_the_exit_and_release_their_channel_when_dropped() {
        use tartarus_core::{ExitInfo, Stream};
        let text = |b: axum::body::Bytes| String::from_utf8(b.to_vec()).unwrap();

        let (tx, rx) = mpsc::channel(4);
        let mut body = ndjson(rx).into_body().into_data_stream();
        let out = OutputEvent::Output(Stream::Stdout, b"hi\n".to_vec());
        tx.send(out.clone()).await.unwrap();
        assert_eq!(text(body.next().await.unwrap().unwrap()), format!("{}\n", out.to_wire()));
        // The client went away: the agent must see its receiver gone.
        drop(body);
        assert!(tx.is_closed());

        let (tx, rx) = mpsc::channel(4);
        let mut body = ndjson(rx).into_body().into_data_stream();
        let exit = OutputEvent::Exit(ExitInfo {
            state: SandboxState::Exited,
            exit_code: Some(0),
            kill_reason: None,
            error: None,
        });
        tx.send(exit.clone()).await.unwrap();
        tx.send(out).await.unwrap();
        assert_eq!(text(body.next().await.unwrap().unwrap()), format!("{}\n", exit.to_wire()));
        assert!(body.next().await.is_none(), "nothing follows the exit, even with the sender still open");
    }

    #[tokio::test]
    async fn lists_what_the_node_holds() {
        let s = serve().await;
        let held: Held = s.get("/sandboxes").send().await.unwrap().json().await.unwrap();
        assert!(held.sandboxes.is_empty());
    }

    #[tokio::test]
    async fn unknown_sandboxes_and_routes_are_not_found() {
        let s = serve().await;
        let not_found = (404, "sandbox_not_found".to_owned());
        let id = SandboxId::generate();
        for path in ["launch", "pause", "resume"] {
            let resp = s.post(&format!("/sandboxes/{id}/{path}")).send().await.unwrap();
            assert_eq!(error_of(resp).await, not_found, "{path}");
        }
        let exec = s.post(&format!("/sandboxes/{id}/exec")).json(&serde_json::json!({"command": ["id"]}));
        assert_eq!(error_of(exec.send().await.unwrap()).await, not_found);
        let logs = s.get(&format!("/sandboxes/{id}/logs?follow=true")).send().await.unwrap();
        assert_eq!(error_of(logs).await, not_found);
        let bad_id = s.post("/sandboxes/sb-NOT-AN-ID/launch").send().await.unwrap();
        assert_eq!(error_of(bad_id).await, not_found);

        let kill = s.post(&format!("/sandboxes/{id}/kill")).json(&serde_json::json!({"reason": "requested"}));
        let killed: Killed = kill.send().await.unwrap().json().await.unwrap();
        assert!(!killed.killed, "nothing to kill here");

        let route = s.get("/nope").send().await.unwrap();
        assert_eq!(error_of(route).await, (404, "not_found".to_owned()));
        let method = s.get(&format!("/sandboxes/{id}/launch")).send().await.unwrap();
        assert_eq!(error_of(method).await, (405, "method_not_allowed".to_owned()));
    }

    #[tokio::test]
    async fn sandboxes_not_running_here_conflict() {
        let s = serve().await;
        let id = s.sandbox(SandboxState::Running).await;
        for path in ["pause", "resume"] {
            let resp = s.post(&format!("/sandboxes/{id}/{path}")).send().await.unwrap();
            assert_eq!(error_of(resp).await, (409, "not_running".to_owned()), "{path}");
        }
        let exec = s.post(&format!("/sandboxes/{id}/exec")).json(&serde_json::json!({"command": ["id"]}));
        assert_eq!(error_of(exec.send().await.unwrap()).await, (409, "not_running".to_owned()));
    }

    #[tokio::test]
    async fn bodies_are_checked() {
        let s = serve().await;
        let id = s.sandbox(SandboxState::Running).await;
        let exec = |body: serde_json::Value| s.post(&format!("/sandboxes/{id}/exec")).json(&body).send();
        let empty = exec(serde_json::json!({"command": []})).await.unwrap();
        assert_eq!(error_of(empty).await, (422, "invalid_request".to_owned()));
        let relative = exec(serde_json::json!({"command": ["id"], "workdir": "tmp"})).await.unwrap();
        assert_eq!(error_of(relative).await, (422, "invalid_request".to_owned()));
        let shape = exec(serde_json::json!({"argv": ["id"]})).await.unwrap();
        assert_eq!(error_of(shape).await, (400, "malformed_json".to_owned()));
        let text = s.post(&format!("/sandboxes/{id}/exec")).body("{").send().await.unwrap();
        assert_eq!(error_of(text).await, (400, "malformed_json".to_owned()));
        let reason = s.post(&format!("/sandboxes/{id}/kill")).json(&serde_json::json!({"reason": "boredom"}));
        assert_eq!(error_of(reason.send().await.unwrap()).await, (400, "malformed_json".to_owned()));

        let huge = serde_json::json!({"command": ["echo", "x".repeat(BODY_LIMIT)]});
        let resp = exec(huge).await.unwrap();
        assert_eq!(error_of(resp).await, (413, "payload_too_large".to_owned()));
    }

    #[tokio::test]
    async fn a_failed_launch_is_recorded_and_answered() {
        let s = serve().await;
        // Template `busybox` does not exist here: the agent records the failure and answers.
        let id = s.sandbox(SandboxState::Starting).await;
        let resp = s.post(&format!("/sandboxes/{id}/launch")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), serde_json::json!({}));
        let rec = s.agent.state().sandboxes.get(&id).await.unwrap().unwrap();
        assert_eq!(rec.state, SandboxState::Failed);
        assert!(rec.error.unwrap().contains("busybox"));
    }

    #[tokio::test]
    async fn logs_stream_as_ndjson_to_the_exit() {
        let s = serve().await;
        let id = s.sandbox(SandboxState::Starting).await;
        s.post(&format!("/sandboxes/{id}/launch")).send().await.unwrap();
        for follow in [false, true] {
            let resp = s.get(&format!("/sandboxes/{id}/logs?follow={follow}")).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()[header::CONTENT_TYPE], NDJSON);
            let body = resp.text().await.unwrap();
            let events: Vec<OutputEvent> = body.lines().map(|l| OutputEvent::from_wire(l).unwrap()).collect();
            match events.as_slice() {
                [OutputEvent::Exit(e)] => assert_eq!(e.state, SandboxState::Failed),
                other => panic!("expected only the exit, got {other:?}"),
            }
            assert!(body.ends_with('\n'));
        }
        let bad = s.get(&format!("/sandboxes/{id}/logs?follow=maybe")).send().await.unwrap();
        assert_eq!(error_of(bad).await, (422, "invalid_request".to_owned()));
    }
}
