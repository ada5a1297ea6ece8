//! `/v1/sandboxes`: admit souls, list and inspect them, kill them, exec into them, read their logs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tartarus_core::{
    ExecRequest, ExitInfo, KillReason, OutputEvent, SandboxId, SandboxRecord, SandboxState, SoulRequest, Stream,
};
use tartarus_store::SandboxFilter;
use utoipa::{IntoParams, ToSchema};

use super::{stream, Body, Ctx, IdPath, Q};
use crate::cerberus::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::nodes::Node;

/// Parses a sandbox id from a path; a string that is not an id is simply not found.
fn parse_id(raw: &str) -> Result<SandboxId, ApiError> {
    SandboxId::parse(raw)
        .map_err(|_| ApiError::SandboxNotFound(format!("no sandbox {raw:?} (ids look like sb-0123456789abcdef)")))
}

async fn record(ctx: &Ctx, id: &SandboxId) -> Result<SandboxRecord, ApiError> {
    ctx.state.sandboxes.get(id).await?.ok_or_else(|| ApiError::SandboxNotFound(format!("no sandbox {id}")))
}

/// The node running `rec`, or why there is none to ask.
async fn node_of(ctx: &Ctx, rec: &SandboxRecord) -> Result<Arc<dyn Node>, ApiError> {
    let not_running = || ApiError::NotRunning(format!("sandbox {} is {}, not running", rec.id, rec.state.as_str()));
    let name = rec.node.as_deref().ok_or_else(not_running)?;
    match ctx.moirai.node_of(name).await? {
        Some((_, node)) => Ok(node),
        None => Err(ApiError::NodeUnreachable(format!(
            "sandbox {} is on node {name}, which is not registered with Hades or not reachable from this Olympus",
            rec.id
        ))),
    }
}

/// Query of `POST /v1/sandboxes`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CreateQuery {
    /// Answer once the sandbox has ended (a session: once it runs), with 201.
    #[serde(default)]
    pub wait: bool,
}

/// Admit a soul: validate, judge, queue.
#[utoipa::path(post, path = "/v1/sandboxes", params(CreateQuery), request_body = SoulRequest,
    responses(
        (status = 202, description = "Admitted and queued", body = SandboxRecord),
        (status = 201, description = "With wait=true: ended (or, for a session, running)", body = SandboxRecord),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    Q(q): Q<CreateQuery>,
    Body(req): Body<SoulRequest>,
) -> Result<Response, ApiError> {
    let result = admit(&ctx, &who, req).await;
    if let Err(e) = &result {
        ctx.metrics.refused.with_label_values(&[e.status_and_code().1]).inc();
    }
    let rec = result?;
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(rec)).into_response());
    }
    let id = rec.id.clone();
    let done = if rec.spec.is_session() {
        wait_until(&ctx, &id, |r| r.state != SandboxState::Queued && r.state != SandboxState::Starting).await?
    } else {
        ctx.events.wait_terminal(ctx.state.sandboxes.as_ref(), &id).await?.expect("admitted record exists")
    };
    Ok((StatusCode::CREATED, Json(done)).into_response())
}

async fn admit(ctx: &Ctx, who: &Principal, req: SoulRequest) -> Result<SandboxRecord, ApiError> {
    let spec = req.validate(&who.tenant).map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    if spec.sleep_after_ms.is_some() && !ctx.hypnos {
        return Err(ApiError::InvalidRequest(format!("sleep_after: {HYPNOS_OFF}")));
    }
    if ctx.state.templates.template(&spec.template).await?.is_none() {
        return Err(ApiError::UnknownTemplate(format!(
            "template {} does not exist; see GET /v1/templates (or `tartarus template ls`)",
            spec.template
        )));
    }
    let verdict = ctx.tribunal.judge(who, &spec).await?;
    let rec = SandboxRecord::admitted(SandboxId::generate(), spec, verdict);
    // Minos ruled on a count that concurrent admissions may have changed since: the store checks
    // the quota again, atomically with storing the record.
    ctx.state.sandboxes.insert(&rec, Some(ctx.max_live_per_tenant)).await.map_err(|e| match e {
        tartarus_store::StoreError::QuotaExceeded { tenant, live, max } => ApiError::QuotaExceeded(format!(
            "tenant {tenant} already has {live} live sandboxes (quota {max}); wait for some to end or kill them"
        )),
        e => e.into(),
    })?;
    if let Err(e) = ctx.state.acheron.push(&rec.id).await {
        // Recorded but not queued: end the record rather than leave it queued forever.
        let error = format!("could not be queued: {e}");
        let _ = ctx
            .state
            .sandboxes
            .update(
                &rec.id,
                Box::new(move |r| {
                    r.state = SandboxState::Failed;
                    r.error = Some(error.clone());
                    r.ended_at = Some(Utc::now());
                }),
            )
            .await;
        return Err(e.into());
    }
    ctx.metrics.admitted.inc();
    ctx.events.publish(&rec);
    Ok(rec)
}

/// Waits until `id`'s record satisfies `done` (or is terminal).
async fn wait_until(
    ctx: &Ctx,
    id: &SandboxId,
    done: impl Fn(&SandboxRecord) -> bool,
) -> Result<SandboxRecord, ApiError> {
    let mut rx = ctx.events.subscribe();
    loop {
        let rec = record(ctx, id).await?;
        if done(&rec) || rec.state.is_terminal() {
            return Ok(rec);
        }
        // Any change (or a lag) means: look again.
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv()).await;
    }
}

/// Query of `GET /v1/sandboxes`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ListQuery {
    /// Comma-separated states, e.g. `running,exited`.
    pub state: Option<String>,
    /// Comma-separated `key=value` labels that must all match.
    pub label: Option<String>,
    /// At most this many (newest first).
    pub limit: Option<usize>,
}

/// A listing of sandboxes.
#[derive(Debug, Serialize, ToSchema)]
pub struct SandboxList {
    /// Newest first.
    pub sandboxes: Vec<SandboxRecord>,
}

/// List sandboxes, newest first.
#[utoipa::path(get, path = "/v1/sandboxes", params(ListQuery),
    responses((status = 200, body = SandboxList), (status = 422, body = ErrorBody)))]
pub async fn list(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
    Q(q): Q<ListQuery>,
) -> Result<Json<SandboxList>, ApiError> {
    let mut filter = SandboxFilter { limit: q.limit, tenant: Some(who.tenant), ..Default::default() };
    for s in q.state.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        filter.states.push(SandboxState::parse(s).ok_or_else(|| {
            ApiError::InvalidRequest(format!(
                "state: unknown state {s:?} (queued, starting, running, paused, sleeping, exited, killed, failed, lost)"
            ))
        })?);
    }
    let mut labels = BTreeMap::new();
    for l in q.label.iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        let (k, v) =
            l.split_once('=').ok_or_else(|| ApiError::InvalidRequest(format!("label: {l:?} is not key=value")))?;
        labels.insert(k.to_owned(), v.to_owned());
    }
    filter.labels = labels;
    Ok(Json(SandboxList { sandboxes: ctx.state.sandboxes.list(&filter).await? }))
}

/// One sandbox.
#[utoipa::path(get, path = "/v1/sandboxes/{id}", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxRecord), (status = 404, body = ErrorBody)))]
pub async fn get_one(State(ctx): State<Ctx>, IdPath(id): IdPath) -> Result<Json<SandboxRecord>, ApiError> {
    Ok(Json(record(&ctx, &parse_id(&id)?).await?))
}

/// Query of `DELETE /v1/sandboxes/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct KillQuery {
    /// Grace period ("10s"): the signal first, SIGKILL only if the sandbox is still alive after it.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub grace: Option<tartarus_core::HumanDuration>,
    /// The signal sent first (`SIGTERM` by default with a grace, else `SIGKILL`): HUP, INT,
    /// QUIT, KILL, USR1, USR2, TERM, by name or number.
    #[serde(default)]
    pub signal: Option<String>,
}

/// Longest grace a termination may be given.
const MAX_GRACE: Duration = Duration::from_secs(3600);

/// Checks a termination grace period against [`MAX_GRACE`].
pub(super) fn check_grace(grace: Duration) -> Result<Duration, ApiError> {
    if grace > MAX_GRACE {
        return Err(ApiError::InvalidRequest(format!("grace: at most {}", humantime::format_duration(MAX_GRACE))));
    }
    Ok(grace)
}

/// Kill a sandbox (reason `requested`), gracefully with `grace` (Thanatos); answers with its
/// final record, its `termination` saying how it went.
#[utoipa::path(delete, path = "/v1/sandboxes/{id}", params(("id" = String, Path, description = "Sandbox id"), KillQuery),
    responses((status = 200, body = SandboxRecord), (status = 202, description = "Kill under way", body = SandboxRecord), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn kill(
    State(ctx): State<Ctx>,
    IdPath(id): IdPath,
    super::Q(q): super::Q<KillQuery>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let grace = check_grace(q.grace.map(|g| g.0).unwrap_or_default())?;
    let signal = match q.signal.as_deref() {
        None if grace.is_zero() => 9,
        None => 15,
        Some(s) => tartarus_core::parse_signal(s).ok_or_else(|| {
            ApiError::InvalidRequest(format!("signal: {s:?} is not one of HUP, INT, QUIT, KILL, USR1, USR2, TERM"))
        })?,
    };
    let order = tartarus_core::KillOrder { reason: KillReason::Requested, signal, grace_ms: grace.as_millis() as u64 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let rec = record(&ctx, &id).await?;
        match rec.state {
            s if s.is_terminal() => return Ok((StatusCode::OK, Json(rec)).into_response()),
            SandboxState::Sleeping => {
                // Nothing runs: end the record; its checkpoint is freed as the end is seen.
                crate::hypnos::end(&ctx.state, &ctx.events, &id, KillReason::Requested).await?;
                continue;
            }
            SandboxState::Queued => {
                // Not placed yet: end it here; the scheduler skips records no longer queued.
                let updated = ctx
                    .state
                    .sandboxes
                    .update(
                        &id,
                        Box::new(|r| {
                            if r.state == SandboxState::Queued {
                                r.state = SandboxState::Killed;
                                r.kill_reason = Some(KillReason::Requested);
                                r.ended_at = Some(Utc::now());
                            }
                        }),
                    )
                    .await?;
                if let Some(r) = updated {
                    ctx.events.publish(&r);
                }
                continue;
            }
            _ => {
                if let Ok(node) = node_of(&ctx, &rec).await {
                    if let Ok(true) = node.kill(&id, order).await {
                        break;
                    }
                }
                // Starting: the node does not hold it yet; ask again shortly.
                if tokio::time::Instant::now() > deadline {
                    return Ok((StatusCode::ACCEPTED, Json(rec)).into_response());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let waited = tokio::time::timeout(
        grace + Duration::from_secs(15),
        ctx.events.wait_terminal(ctx.state.sandboxes.as_ref(), &id),
    )
    .await;
    match waited {
        Ok(r) => Ok((StatusCode::OK, Json(r?.expect("exists"))).into_response()),
        Err(_) => Ok((StatusCode::ACCEPTED, Json(record(&ctx, &id).await?)).into_response()),
    }
}

/// Query of `exec`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct ExecQuery {
    /// `false`: answer with one JSON document once the command has ended.
    #[serde(default = "yes")]
    pub stream: bool,
}

fn yes() -> bool {
    true
}

/// The result of a buffered `exec` (`stream=false`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecResult {
    /// Standard output (UTF-8, invalid sequences replaced; at most 16 MiB).
    pub stdout: String,
    /// Standard error (same).
    pub stderr: String,
    /// How it ended.
    pub exit: ExitInfo,
}

const BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// Run a further command in a running sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", request_body = ExecRequest,
    params(("id" = String, Path, description = "Sandbox id"), ExecQuery),
    responses(
        (status = 200, description = "text/event-stream of stdout/stderr/exit events, or with stream=false an ExecResult", body = ExecResult),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn exec(
    State(ctx): State<Ctx>,
    IdPath(id): IdPath,
    Q(q): Q<ExecQuery>,
    Body(req): Body<ExecRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    req.validate().map_err(|e| ApiError::InvalidRequest(e.to_string()))?;
    let rec = record(&ctx, &id).await?;
    let mut rx = node_of(&ctx, &rec).await?.exec(&id, req).await?;
    if q.stream {
        return Ok(stream::sse(rx).into_response());
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut exit = None;
    while let Some(ev) = rx.recv().await {
        match ev {
            OutputEvent::Output(s, bytes) => {
                let buf = if s == Stream::Stdout { &mut out } else { &mut err };
                let room = BUFFER_LIMIT.saturating_sub(buf.len());
                buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            OutputEvent::Exit(info) => exit = Some(info),
        }
    }
    let exit = exit.ok_or_else(|| ApiError::Internal("exec ended without an exit status".into()))?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok(Json(ExecResult { stdout: text(out), stderr: text(err), exit }).into_response())
}

/// Query of `logs`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct LogsQuery {
    /// Keep streaming until the sandbox ends.
    #[serde(default)]
    pub follow: bool,
}

/// The main process's output as Server-Sent Events.
#[utoipa::path(get, path = "/v1/sandboxes/{id}/logs", params(("id" = String, Path, description = "Sandbox id"), LogsQuery),
    responses((status = 200, description = "text/event-stream of stdout/stderr events, and exit once ended"), (status = 404, body = ErrorBody)))]
pub async fn logs(State(ctx): State<Ctx>, IdPath(id): IdPath, Q(q): Q<LogsQuery>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let mut rec = record(&ctx, &id).await?;
    let mut follow = q.follow;
    if let Some(sleep) = rec.sleep.as_ref().filter(|_| rec.state == SandboxState::Sleeping) {
        // Asleep: its logs are where it fell asleep, and nothing is added until it wakes.
        rec.node = Some(sleep.node.clone());
        follow = false;
    }
    if rec.node.is_none() && !rec.state.is_terminal() {
        // Not placed yet: its logs will be written on the node it goes to.
        rec = wait_until(&ctx, &id, |r| r.node.is_some()).await?;
    }
    if rec.node.is_none() {
        // Ended before it was placed (killed while queued, unschedulable): nothing was written.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.try_send(OutputEvent::Exit(ExitInfo::from(&rec))).expect("room for one");
        return Ok(stream::sse(rx).into_response());
    }
    Ok(stream::sse(node_of(&ctx, &rec).await?.logs(&id, follow).await?).into_response())
}

/// Freeze a running sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/pause", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(State(ctx): State<Ctx>, IdPath(id): IdPath) -> Result<Json<SandboxRecord>, ApiError> {
    let id = parse_id(&id)?;
    let rec = record(&ctx, &id).await?;
    Ok(Json(node_of(&ctx, &rec).await?.pause(&id).await?))
}

/// Thaw a paused sandbox.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/resume", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(State(ctx): State<Ctx>, IdPath(id): IdPath) -> Result<Json<SandboxRecord>, ApiError> {
    let id = parse_id(&id)?;
    let rec = record(&ctx, &id).await?;
    Ok(Json(node_of(&ctx, &rec).await?.resume(&id).await?))
}

/// Why Hypnos's calls are refused on a realm without it.
const HYPNOS_OFF: &str = "Hypnos (sleep and wake) is disabled on this realm; start it with ENABLE_HYPNOS=1";

fn hypnos_on(ctx: &Ctx) -> Result<(), ApiError> {
    if ctx.hypnos {
        Ok(())
    } else {
        Err(ApiError::CannotSleep(HYPNOS_OFF.into()))
    }
}

/// Hypnos: pause the sandbox, checkpoint it, store the checkpoint (zstd) in the blob store and
/// release everything it held on its node. Its record says `sleeping`, with sizes and times in
/// `sleep`; `POST …/wake` restores it. Only sandboxes that booted (`launched_from: cold`) can
/// sleep. Needs `ENABLE_HYPNOS=1`.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/sleep", params(("id" = String, Path, description = "Sandbox id")),
    responses((status = 200, body = SandboxRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn sleep(State(ctx): State<Ctx>, IdPath(id): IdPath) -> Result<Json<SandboxRecord>, ApiError> {
    hypnos_on(&ctx)?;
    let id = parse_id(&id)?;
    let rec = record(&ctx, &id).await?;
    if rec.state == SandboxState::Sleeping {
        return Ok(Json(rec));
    }
    Ok(Json(node_of(&ctx, &rec).await?.sleep(&id).await?))
}

/// Query of `POST /v1/sandboxes/{id}/wake`.
#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct WakeQuery {
    /// Answer once it runs again (or has failed to), not once it is queued.
    #[serde(default)]
    pub wait: bool,
}

/// Hypnos: wake a sleeping sandbox. It is queued for placement like a new one (on any node of
/// its runtime with room) and restored there from its checkpoint, its processes going on where
/// they were. With `wait=true` the answer comes once it runs again.
#[utoipa::path(post, path = "/v1/sandboxes/{id}/wake", params(("id" = String, Path, description = "Sandbox id"), WakeQuery),
    responses((status = 200, body = SandboxRecord), (status = 202, body = SandboxRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn wake(State(ctx): State<Ctx>, IdPath(id): IdPath, Q(q): Q<WakeQuery>) -> Result<Response, ApiError> {
    hypnos_on(&ctx)?;
    let id = parse_id(&id)?;
    let rec = record(&ctx, &id).await?;
    let queued = match crate::hypnos::wake(&ctx.state, &ctx.events, &id).await? {
        Some(r) => r,
        None if rec.sleep.is_some() && !rec.state.is_terminal() => rec, // being woken already
        None => {
            return Err(ApiError::NotRunning(format!("sandbox {id} is {}, not sleeping", rec.state.as_str())));
        }
    };
    if !q.wait {
        return Ok((StatusCode::ACCEPTED, Json(queued)).into_response());
    }
    let done = wait_until(&ctx, &id, |r| r.sleep.is_none() && r.state != SandboxState::Queued).await?;
    Ok((StatusCode::OK, Json(done)).into_response())
}

/// A sleeping sandbox, as `GET /v1/sleeping` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Sleeper {
    /// The sandbox.
    #[schema(value_type = String)]
    pub id: SandboxId,
    /// Its tenant.
    pub tenant: String,
    /// Its template.
    pub template: String,
    /// Its checkpoint: sizes, node, when.
    pub sleep: tartarus_core::SleepInfo,
    /// Asleep for, milliseconds.
    pub asleep_ms: u64,
    /// When it will be ended unless woken (its `max_sleep`).
    pub ends_at: chrono::DateTime<Utc>,
}

/// Sleeping sandboxes.
#[derive(Debug, Serialize, ToSchema)]
pub struct SleeperList {
    /// Longest asleep first.
    pub sleeping: Vec<Sleeper>,
}

/// Hypnos: the tenant's sleeping sandboxes, with their checkpoint sizes (memory, compressed)
/// and times.
#[utoipa::path(get, path = "/v1/sleeping", responses((status = 200, body = SleeperList), (status = 409, body = ErrorBody)))]
pub async fn sleeping(
    State(ctx): State<Ctx>,
    Extension(who): Extension<Principal>,
) -> Result<Json<SleeperList>, ApiError> {
    hypnos_on(&ctx)?;
    let filter = SandboxFilter { states: vec![SandboxState::Sleeping], tenant: Some(who.tenant), ..Default::default() };
    let now = Utc::now();
    let mut sleeping: Vec<Sleeper> = ctx
        .state
        .sandboxes
        .list(&filter)
        .await?
        .into_iter()
        .filter_map(|r| {
            let sleep = r.sleep?;
            let max = chrono::Duration::from_std(r.spec.max_sleep()).unwrap_or(chrono::Duration::MAX);
            Some(Sleeper {
                id: r.id,
                tenant: r.spec.tenant,
                template: r.spec.template.to_string(),
                asleep_ms: (now - sleep.slept_at).num_milliseconds().max(0) as u64,
                ends_at: sleep.slept_at + max,
                sleep,
            })
        })
        .collect();
    sleeping.sort_by_key(|s| std::cmp::Reverse(s.asleep_ms));
    Ok(Json(SleeperList { sleeping }))
}

/// Charon: carry an HTTP request to a port the sandbox exposes (its contract's `ingress`) and
/// answer with what the sandbox answered. The caller's `Authorization` is not passed on. Errors
/// of the realm itself are JSON with a stable code (`404 port_not_exposed`, `409 not_running`,
/// `502 bad_gateway` when nothing answers on the port).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/ports/{port}/{path}",
    params(("id" = String, Path, description = "Sandbox id"), ("port" = String, Path, description = "An exposed port"),
           ("path" = String, Path, description = "Path on the sandbox's server")),
    responses((status = 200, description = "The sandbox's answer, whatever its status"), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn ferry(State(ctx): State<Ctx>, req: axum::extract::Request) -> Result<Response, ApiError> {
    // /v1/sandboxes/{id}/ports/{port}[/{rest}]
    let full = req.uri().path().to_owned();
    let after = full.split_once("/sandboxes/").map_or("", |(_, rest)| rest);
    let mut parts = after.splitn(4, '/');
    let (id, _, port, rest) = (parts.next(), parts.next(), parts.next(), parts.next().unwrap_or(""));
    let id = parse_id(id.unwrap_or_default())?;
    let port: u16 = port.and_then(|p| p.parse().ok()).filter(|p| *p > 0).ok_or_else(|| {
        ApiError::PortNotExposed(format!("{:?} is not a port (1 to 65535)", port.unwrap_or_default()))
    })?;
    let rec = record(&ctx, &id).await?;
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let path = format!("/{rest}{query}");
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, tartarus_hecatoncheir::charon::MAX_BODY)
        .await
        .map_err(|e| ApiError::PayloadTooLarge(format!("the body: {e}")))?;
    let crossing = tartarus_hecatoncheir::charon::Crossing { method: parts.method, path, headers: parts.headers, body };
    let landing = node_of(&ctx, &rec).await?.ferry(&id, port, crossing).await?;
    let mut resp = Response::new(axum::body::Body::from(landing.body));
    *resp.status_mut() = landing.status;
    *resp.headers_mut() = landing.headers;
    Ok(resp)
}
