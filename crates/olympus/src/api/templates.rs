//! `/v1/templates`: list templates and import a root filesystem directory as one.

use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tartarus_core::{TemplateName, TemplateRecord};
use utoipa::ToSchema;

use super::{Body, Ctx};
use crate::error::{ApiError, ErrorBody};

/// A listing of templates.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    /// By name.
    pub templates: Vec<TemplateRecord>,
    /// Warm pools on the nodes alive now, by template name (templates with a pool, or with
    /// sandboxes still pooled).
    pub pools: std::collections::BTreeMap<String, PoolView>,
}

/// A template's warm pools across the realm.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct PoolView {
    /// Sandboxes each node keeps ready.
    pub size: u32,
    /// Sandboxes ready now, all nodes together.
    pub ready: u32,
    /// Requests served from a pool since the nodes' agents started.
    pub served: u64,
    /// Nodes alive now.
    pub nodes: u32,
}

/// The warm pools of `templates` as the nodes alive now report them.
pub async fn pool_views(
    ctx: &Ctx,
    templates: &[TemplateRecord],
) -> Result<std::collections::BTreeMap<String, PoolView>, ApiError> {
    let mut out: std::collections::BTreeMap<String, PoolView> = templates
        .iter()
        .filter(|t| t.pool_size > 0)
        .map(|t| (t.name.to_string(), PoolView { size: t.pool_size, ..Default::default() }))
        .collect();
    let now = Utc::now();
    let nodes = ctx.moirai.nodes().await?;
    let alive: Vec<_> =
        nodes.iter().filter(|n| n.state(now, ctx.moirai.cfg.dead_after) != tartarus_core::NodeState::Dead).collect();
    for view in out.values_mut() {
        view.nodes = alive.len() as u32;
    }
    for n in alive {
        for (name, count) in &n.pools {
            let view = out.entry(name.clone()).or_default();
            view.ready += count.ready;
            view.served += count.served;
        }
    }
    Ok(out)
}

/// Import a directory as a template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The template's name.
    pub name: String,
    /// An absolute path, on the realm's host, of a root filesystem directory.
    pub path: String,
    /// Replace the template of that name if it exists (refused while live sandboxes use it).
    /// Its Nyx snapshot is kept on the record, now stale: the next launch rebuilds it.
    #[serde(default)]
    pub replace: bool,
}

/// Every template.
#[utoipa::path(get, path = "/v1/templates", responses((status = 200, body = TemplateList)))]
pub async fn list(State(ctx): State<Ctx>) -> Result<Json<TemplateList>, ApiError> {
    let templates = ctx.state.templates.templates().await?;
    let pools = pool_views(&ctx, &templates).await?;
    Ok(Json(TemplateList { templates, pools }))
}

/// Copy a root filesystem directory into the realm as a new template.
#[utoipa::path(post, path = "/v1/templates", request_body = ImportRequest,
    responses((status = 201, body = TemplateRecord), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn import(
    State(ctx): State<Ctx>,
    Body(req): Body<ImportRequest>,
) -> Result<(StatusCode, Json<TemplateRecord>), ApiError> {
    let name = TemplateName::parse(&req.name).map_err(|e| ApiError::InvalidRequest(format!("name: {e}")))?;
    let src = PathBuf::from(&req.path);
    if !src.is_absolute() {
        return Err(ApiError::InvalidRequest(format!("path: {:?} must be absolute", req.path)));
    }
    if !src.is_dir() {
        return Err(ApiError::InvalidRequest(format!("path: {:?} is not a directory on the realm's host", req.path)));
    }
    let _importing = ctx.imports.lock().await;
    let old = ctx.state.templates.template(&name).await?;
    match &old {
        Some(_) if !req.replace => {
            return Err(ApiError::Conflict(format!(
                "template {name} exists already; replace it with --replace (\"replace\": true)"
            )))
        }
        Some(_) => {
            let users = live_users(&ctx, &name).await?;
            if users > 0 {
                return Err(ApiError::Conflict(format!(
                    "{users} live sandboxes use template {name}; kill them before replacing it"
                )));
            }
        }
        None => {}
    }
    let dest = ctx.templates_dir.join(name.as_str());
    // The files of the template being replaced step aside until the new ones are in place.
    let aside = dest.with_file_name(format!(".replaced-{:016x}", rand_u64()));
    if dest.exists() {
        if old.is_some() {
            tokio::fs::rename(&dest, &aside)
                .await
                .map_err(|e| ApiError::Internal(format!("moving {} aside: {e}", dest.display())))?;
        } else {
            // Left by an import that died half-way (it was never registered): start afresh.
            tokio::fs::remove_dir_all(&dest)
                .await
                .map_err(|e| ApiError::Internal(format!("clearing {}: {e}", dest.display())))?;
        }
    }
    let size = match copy_tree(&src, &dest).await {
        Ok(size) => size,
        Err(e) => {
            if aside.exists() {
                let _ = tokio::fs::rename(&aside, &dest).await;
            }
            return Err(e);
        }
    };
    let rec = TemplateRecord {
        name,
        rootfs: dest.join("rootfs"),
        source: src.display().to_string(),
        size_bytes: size,
        created_at: Utc::now(),
        image: None,
        ext4: None,
        pool_size: old.as_ref().map_or(0, |o| o.pool_size),
        snapshot: old.and_then(|o| o.snapshot),
    };
    ctx.state.templates.put_template(&rec).await?;
    if aside.exists() {
        let _ = tokio::fs::remove_dir_all(&aside).await;
    }
    tracing::info!(template = %rec.name, bytes = size, "template imported");
    Ok((StatusCode::CREATED, Json(rec)))
}

/// How many live sandboxes use template `name`.
async fn live_users(ctx: &Ctx, name: &TemplateName) -> Result<usize, ApiError> {
    let live = tartarus_store::SandboxFilter {
        states: vec![
            tartarus_core::SandboxState::Queued,
            tartarus_core::SandboxState::Starting,
            tartarus_core::SandboxState::Running,
            tartarus_core::SandboxState::Paused,
        ],
        ..Default::default()
    };
    Ok(ctx.state.sandboxes.list(&live).await?.into_iter().filter(|r| &r.spec.template == name).count())
}

/// Copies `src` to `<dest>/rootfs` via a temporary directory, so a failed copy leaves nothing.
async fn copy_tree(src: &Path, dest: &Path) -> Result<u64, ApiError> {
    // A name no template can have (they never start with a dot), unique per import.
    let tmp = dest.with_file_name(format!(".import-{:016x}", rand_u64()));
    let io = |what: &str, e: std::io::Error| ApiError::Internal(format!("{what}: {e}"));
    tokio::fs::create_dir_all(tmp.join("rootfs")).await.map_err(|e| io("creating the template directory", e))?;
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(format!("{}/.", src.display()))
        .arg(tmp.join("rootfs"))
        .output()
        .await
        .map_err(|e| io("running cp", e))?;
    if !out.status.success() {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Err(ApiError::InvalidRequest(format!(
            "path: copying failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let root = tmp.join("rootfs");
    let size = tokio::task::spawn_blocking(move || tartarus_erebus::build::tree_size(&root)).await.expect("size task");
    if let Err(e) = tokio::fs::rename(&tmp, dest).await {
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        return Err(io("installing the template", e));
    }
    Ok(size)
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.finish()
}

/// Build a template from an OCI image (or a built-in recipe).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// The template's name.
    pub name: String,
    /// `host/repo:tag` in a registry, `oci:DIR[:TAG]`, or `docker-archive:FILE` (paths on the realm's host).
    #[serde(default)]
    pub image: Option<String>,
    /// A built-in recipe instead of an image (`python-ds`).
    #[serde(default)]
    pub recipe: Option<String>,
    /// Allow plain HTTP to the registry.
    #[serde(default)]
    pub insecure: bool,
    /// Registry credentials: `{"kind":"basic","username":…,"password":…}` or `{"kind":"bearer","token":…}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub credentials: tartarus_erebus::source::Credentials,
    /// Also make the ext4 image for microVM runtimes (default true).
    #[serde(default = "yes")]
    pub ext4: bool,
    /// Largest unpacked image, bytes (default 8 GiB).
    #[serde(default)]
    pub max_image_bytes: Option<u64>,
    /// Most entries in the unpacked image (default 1,000,000).
    #[serde(default)]
    pub max_image_entries: Option<u64>,
}

fn yes() -> bool {
    true
}

/// Query of `build`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BuildQuery {
    /// `false`: answer once built, with the template (201), instead of streaming progress.
    #[serde(default = "yes")]
    pub stream: bool,
}

/// How a build failure is reported.
fn build_error(e: tartarus_erebus::build::BuildError) -> ApiError {
    use tartarus_erebus::blobs::BlobError;
    use tartarus_erebus::build::BuildError as B;
    use tartarus_erebus::source::PullError as P;
    let message = tartarus_hecatoncheir::agent::error_chain(&e);
    match e {
        B::Pull(P::BadReference(_)) => ApiError::InvalidRequest(message),
        B::Pull(P::Registry { .. }) => ApiError::Upstream(message),
        B::Pull(P::Io { .. }) => ApiError::InvalidRequest(message),
        B::Pull(P::Invalid { .. }) | B::Unpack(_) | B::Config(_) => ApiError::ImageRejected(message),
        B::Blob(BlobError::DigestMismatch { .. } | BlobError::TooLarge { .. }) => ApiError::ImageRejected(message),
        B::Blob(BlobError::Source { .. }) => ApiError::Upstream(message),
        _ => ApiError::Internal(message),
    }
}

/// Build a template from an image or recipe; progress streams as Server-Sent Events
/// (`progress` events, then `template` with the record, or `error` with `{code, message}`).
#[utoipa::path(post, path = "/v1/templates/build", request_body = BuildRequest, params(BuildQuery),
    responses(
        (status = 200, description = "text/event-stream of progress, then the template or an error"),
        (status = 201, description = "With stream=false: built", body = TemplateRecord),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn build(
    State(ctx): State<Ctx>,
    super::Q(q): super::Q<BuildQuery>,
    Body(req): Body<BuildRequest>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let name = TemplateName::parse(&req.name).map_err(|e| ApiError::InvalidRequest(format!("name: {e}")))?;
    let image = match (&req.image, &req.recipe) {
        (Some(i), None) => Some(
            tartarus_erebus::source::ImageRef::parse(i).map_err(|e| ApiError::InvalidRequest(format!("image: {e}")))?,
        ),
        (None, Some(r)) if tartarus_erebus::recipes::RECIPES.iter().any(|(n, _)| n == r) => None,
        (None, Some(r)) => {
            let known: Vec<&str> = tartarus_erebus::recipes::RECIPES.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::InvalidRequest(format!(
                "recipe: unknown recipe {r:?} (known: {})",
                known.join(", ")
            )));
        }
        _ => return Err(ApiError::InvalidRequest("give exactly one of image and recipe".into())),
    };
    let guard = ctx.imports.clone().lock_owned().await;
    if ctx.state.templates.template(&name).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "template {name} exists already; remove it first (tartarus template rm {name})"
        )));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<BuildMessage>(256);
    let task = tokio::spawn(run_build(ctx.clone(), name, image, req, tx, guard));
    if q.stream {
        return Ok(build_sse(rx).into_response());
    }
    drop(rx);
    let rec = task.await.map_err(|e| ApiError::Internal(format!("build task: {e}")))??;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

/// What a build tells its client.
enum BuildMessage {
    Progress(serde_json::Value),
    Done(Box<TemplateRecord>),
    Failed(ApiError),
}

fn build_sse(
    rx: tokio::sync::mpsc::Receiver<BuildMessage>,
) -> axum::response::sse::Sse<impl futures::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>>
{
    use axum::response::sse::{Event, KeepAlive, Sse};
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await? {
            BuildMessage::Progress(v) => Event::default().event("progress").data(v.to_string()),
            BuildMessage::Done(rec) => {
                Event::default().event("template").data(serde_json::to_string(&rec).expect("record"))
            }
            BuildMessage::Failed(e) => {
                let (_, code) = e.status_and_code();
                Event::default()
                    .event("error")
                    .data(serde_json::json!({"code": code, "message": e.to_string()}).to_string())
            }
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// Runs one build to its end (whether or not anyone still listens) and registers the template.
async fn run_build(
    ctx: Ctx,
    name: TemplateName,
    image: Option<tartarus_erebus::source::ImageRef>,
    req: BuildRequest,
    tx: tokio::sync::mpsc::Sender<BuildMessage>,
    _guard: tokio::sync::OwnedMutexGuard<()>,
) -> Result<TemplateRecord, ApiError> {
    let progress = |v: serde_json::Value| {
        let _ = tx.try_send(BuildMessage::Progress(v));
    };
    let result: Result<TemplateRecord, ApiError> = async {
        let image = match (image, req.recipe.as_deref()) {
            (Some(i), _) => i,
            (None, Some(recipe)) => run_recipe(&ctx, recipe, &progress).await?,
            (None, None) => unreachable!("checked by the handler"),
        };
        let mut limits = tartarus_erebus::unpack::Limits::default();
        if let Some(b) = req.max_image_bytes {
            limits.max_total_bytes = b;
        }
        if let Some(n) = req.max_image_entries {
            limits.max_entries = n;
        }
        let opts = tartarus_erebus::build::BuildOptions {
            creds: req.credentials.clone(),
            insecure: req.insecure,
            limits,
            ext4: req
                .ext4
                .then(|| tartarus_erebus::ext4::Ext4Options { label: Some(name.to_string()), ..Default::default() }),
        };
        let sink = |ev: tartarus_erebus::build::BuildEvent| progress(serde_json::to_value(ev).expect("event"));
        let built = tartarus_erebus::build::build(&ctx.blobs, &image, &ctx.images_dir, &opts, &sink)
            .await
            .map_err(build_error)?;
        if let Some(ext4) = &built.ext4 {
            let artifact = tartarus_erebus::build::ext4_artifact(&built.image.manifest_digest);
            ctx.blobs.put_artifact(ext4, &artifact).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let rec = TemplateRecord {
            name: name.clone(),
            rootfs: built.rootfs,
            source: built.image.reference.clone(),
            size_bytes: built.size_bytes,
            created_at: Utc::now(),
            image: Some(built.image),
            ext4: built.ext4,
            snapshot: None,
            pool_size: 0,
        };
        ctx.state.templates.put_template(&rec).await?;
        tracing::info!(template = %rec.name, source = %rec.source, bytes = rec.size_bytes, "template built");
        Ok(rec)
    }
    .await;
    let _ = match &result {
        Ok(rec) => tx.send(BuildMessage::Done(Box::new(rec.clone()))).await,
        Err(e) => tx.send(BuildMessage::Failed(e.clone())).await,
    };
    result
}

/// Runs a recipe into an OCI layout under the recipes directory and names the image in it.
async fn run_recipe(
    ctx: &Ctx,
    recipe: &str,
    progress: &(dyn Fn(serde_json::Value) + Sync),
) -> Result<tartarus_erebus::source::ImageRef, ApiError> {
    let work = ctx.recipes_dir.join(recipe);
    let layout = work.join("layout");
    let (work2, layout2, recipe2) = (work.join("work"), layout.clone(), recipe.to_owned());
    let (line_tx, mut line_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::task::spawn_blocking(move || {
        let say = |l: &str| {
            let _ = line_tx.send(l.to_owned());
        };
        let _ = std::fs::remove_dir_all(&layout2);
        tartarus_erebus::recipes::build(&recipe2, &work2, &layout2, &say)
    });
    while let Some(line) = line_rx.recv().await {
        progress(serde_json::json!({"step": "recipe", "line": line}));
    }
    task.await.map_err(|e| ApiError::Internal(format!("recipe task: {e}")))?.map_err(|e| {
        ApiError::Internal(format!("recipe {recipe}: {}", tartarus_hecatoncheir::agent::error_chain(&e)))
    })?;
    Ok(tartarus_erebus::source::ImageRef::Layout {
        dir: layout,
        tag: Some(tartarus_erebus::recipes::RECIPE_TAG.into()),
    })
}

/// One template's record (`tartarus template inspect`).
#[utoipa::path(get, path = "/v1/templates/{name}", params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = TemplateRecord), (status = 404, body = ErrorBody)))]
pub async fn inspect(
    State(ctx): State<Ctx>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<TemplateRecord>, ApiError> {
    let name = TemplateName::parse(&name).map_err(|_| ApiError::TemplateNotFound(format!("no template {name:?}")))?;
    stored(&ctx, &name).await.map(Json)
}

/// Template `name` as stored, or `404 template_not_found`.
async fn stored(ctx: &Ctx, name: &TemplateName) -> Result<TemplateRecord, ApiError> {
    ctx.state.templates.template(name).await?.ok_or_else(|| ApiError::TemplateNotFound(format!("no template {name}")))
}

/// Remove a template (its blobs stay until `prune`). Refused while live sandboxes use it.
#[utoipa::path(delete, path = "/v1/templates/{name}", params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = TemplateRecord), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove(
    State(ctx): State<Ctx>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<TemplateRecord>, ApiError> {
    let name = TemplateName::parse(&name).map_err(|_| ApiError::TemplateNotFound(format!("no template {name:?}")))?;
    let _guard = ctx.imports.lock().await;
    let rec = stored(&ctx, &name).await?;
    let users = live_users(&ctx, &name).await?;
    if users > 0 {
        return Err(ApiError::Conflict(format!("{users} live sandboxes use template {name}; kill them first")));
    }
    ctx.state.templates.remove_template(&name).await?;
    if rec.image.is_none() {
        // An imported directory belongs to this template alone; unpacked images may be shared
        // and go with `prune`.
        let dir = ctx.templates_dir.join(name.as_str());
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            tracing::warn!(template = %name, error = %e, "removing the template's files failed");
        }
    }
    Ok(Json(rec))
}

/// What `prune` freed.
#[derive(Debug, Serialize, ToSchema)]
pub struct PruneResult {
    /// Blobs removed.
    pub blobs_removed: usize,
    /// Unpacked images removed.
    pub images_removed: usize,
    /// Bytes freed on this host.
    pub bytes_freed: u64,
}

/// Remove every stored blob no template uses.
#[utoipa::path(post, path = "/v1/templates/prune", responses((status = 200, body = PruneResult)))]
pub async fn prune(State(ctx): State<Ctx>) -> Result<Json<PruneResult>, ApiError> {
    let _guard = ctx.imports.lock().await;
    let mut used = std::collections::HashSet::new();
    let mut images = std::collections::HashSet::new();
    for t in ctx.state.templates.templates().await? {
        if let Some(snap) = &t.snapshot {
            used.insert(snap.artifact.clone());
        }
        if let Some(i) = t.image {
            used.extend(i.layers);
            used.insert(i.config_digest);
            images.insert(i.manifest_digest.trim_start_matches("sha256:").to_owned());
        }
    }
    let all = ctx.blobs.list().await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut result = PruneResult { blobs_removed: 0, images_removed: 0, bytes_freed: ctx.blobs.sweep_partials() };
    // Unpacked images no template uses (and scratch left by interrupted builds).
    if let Ok(entries) = std::fs::read_dir(&ctx.images_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !images.contains(&name) {
                // Out of sight first, so an interrupted removal is never mistaken for an image.
                let path = ctx.images_dir.join(format!(".trash-{name}"));
                if tokio::fs::rename(e.path(), &path).await.is_err() {
                    continue;
                }
                let size = tokio::task::spawn_blocking({
                    let p = path.clone();
                    move || tartarus_erebus::build::disk_usage(&p)
                })
                .await
                .unwrap_or(0);
                if tokio::fs::remove_dir_all(&path).await.is_ok() {
                    result.images_removed += 1;
                    result.bytes_freed += size;
                    let artifact = tartarus_erebus::build::ext4_artifact(name.trim_start_matches(".trash-"));
                    ctx.blobs.delete_artifact(&artifact).await.map_err(|e| ApiError::Internal(e.to_string()))?;
                }
            }
        }
    }
    for d in all.into_iter().filter(|d| !used.contains(d.as_str())) {
        result.bytes_freed += ctx.blobs.delete(&d).await.map_err(|e| ApiError::Internal(e.to_string()))?;
        result.blobs_removed += 1;
    }
    Ok(Json(result))
}

/// Nyx.Prepare: start a sandbox of the template, run the warm-up command, start the resident
/// Python with its preloaded modules, pause and checkpoint it; later sandboxes of the template
/// are restored from the snapshot instead of booting.
#[utoipa::path(post, path = "/v1/templates/{name}/warm", request_body = tartarus_core::Warming,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 201, body = tartarus_core::SnapshotInfo), (status = 404, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn warm(
    State(ctx): State<Ctx>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Body(req): Body<tartarus_core::Warming>,
) -> Result<(StatusCode, Json<tartarus_core::SnapshotInfo>), ApiError> {
    let name = TemplateName::parse(&name).map_err(|_| ApiError::TemplateNotFound(format!("no template {name:?}")))?;
    req.validate().map_err(ApiError::InvalidRequest)?;
    let _guard = ctx.imports.lock().await;
    if ctx.state.templates.template(&name).await?.is_none() {
        return Err(ApiError::TemplateNotFound(format!("no template {name}")));
    }
    let now = Utc::now();
    let nodes = ctx.moirai.nodes().await?;
    let node = nodes
        .iter()
        .filter(|n| n.state(now, ctx.moirai.cfg.dead_after) == tartarus_core::NodeState::Alive)
        .find_map(|n| ctx.moirai.nodes.get(n))
        .ok_or_else(|| ApiError::NodeUnreachable("no node is alive and reachable to warm the template on".into()))?;
    let snap = node.warm(&name, &req).await.map_err(|e| match e {
        crate::nodes::NodeError::Failed(m) => ApiError::WarmFailed(m),
        e => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(snap)))
}

/// A template's snapshot, and whether it can be used.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotEntry {
    /// The template.
    #[schema(value_type = String)]
    pub template: TemplateName,
    /// The snapshot.
    pub snapshot: tartarus_core::SnapshotInfo,
    /// Why it would be refused (made of older template content), if it would.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
}

/// Every snapshot.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotList {
    /// By template name.
    pub snapshots: Vec<SnapshotEntry>,
}

/// The snapshots of all templates.
#[utoipa::path(get, path = "/v1/snapshots", responses((status = 200, body = SnapshotList)))]
pub async fn snapshots(State(ctx): State<Ctx>) -> Result<Json<SnapshotList>, ApiError> {
    let mut out = Vec::new();
    for t in ctx.state.templates.templates().await? {
        let Some(snap) = t.snapshot.clone() else { continue };
        let stale = t.usable_snapshot(&snap.runtime_version).err();
        out.push(SnapshotEntry { template: t.name, snapshot: snap, stale });
    }
    Ok(Json(SnapshotList { snapshots: out }))
}

/// Drop a template's snapshot (its artifact is freed by `prune`); sandboxes boot cold again.
#[utoipa::path(delete, path = "/v1/templates/{name}/snapshot", params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = tartarus_core::SnapshotInfo), (status = 404, body = ErrorBody)))]
pub async fn remove_snapshot(
    State(ctx): State<Ctx>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<tartarus_core::SnapshotInfo>, ApiError> {
    let name = TemplateName::parse(&name).map_err(|_| ApiError::TemplateNotFound(format!("no template {name:?}")))?;
    let _guard = ctx.imports.lock().await;
    let mut rec = stored(&ctx, &name).await?;
    let snap = rec.snapshot.take().ok_or_else(|| ApiError::NotFound(format!("template {name} has no snapshot")))?;
    ctx.state.templates.put_template(&rec).await?;
    Ok(Json(snap))
}

/// A warm pool's size.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolRequest {
    /// Sandboxes every node keeps ready for the template (0 to 64; 0 empties the pools).
    pub size: u32,
}

/// Set how many sandboxes of the template every node keeps ready (a warm pool). Nodes fill
/// their pools in the background — restored from the template's snapshot when it has a usable
/// one — and hand one over to each request, which then only runs its command.
#[utoipa::path(put, path = "/v1/templates/{name}/pool", request_body = PoolRequest,
    params(("name" = String, Path, description = "Template name")),
    responses((status = 200, body = TemplateRecord), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_pool(
    State(ctx): State<Ctx>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Body(req): Body<PoolRequest>,
) -> Result<Json<TemplateRecord>, ApiError> {
    let name = TemplateName::parse(&name).map_err(|_| ApiError::TemplateNotFound(format!("no template {name:?}")))?;
    if req.size > tartarus_core::MAX_POOL_SIZE {
        return Err(ApiError::InvalidRequest(format!(
            "size: {} is more than {} sandboxes per node",
            req.size,
            tartarus_core::MAX_POOL_SIZE
        )));
    }
    let _guard = ctx.imports.lock().await;
    let mut rec = stored(&ctx, &name).await?;
    rec.pool_size = req.size;
    ctx.state.templates.put_template(&rec).await?;
    Ok(Json(rec))
}
