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
}

/// Import a directory as a template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    /// The template's name.
    pub name: String,
    /// An absolute path, on the realm's host, of a root filesystem directory.
    pub path: String,
}

/// Every template.
#[utoipa::path(get, path = "/v1/templates", responses((status = 200, body = TemplateList)))]
pub async fn list(State(ctx): State<Ctx>) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList { templates: ctx.state.templates.templates().await? }))
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
    if ctx.state.templates.template(&name).await?.is_some() {
        return Err(ApiError::Conflict(format!("template {name} exists already")));
    }
    let dest = ctx.templates_dir.join(name.as_str());
    if dest.exists() {
        // Left by an import that died half-way (it was never registered): start afresh.
        tokio::fs::remove_dir_all(&dest)
            .await
            .map_err(|e| ApiError::Internal(format!("clearing {}: {e}", dest.display())))?;
    }
    let size = copy_tree(&src, &dest).await?;
    let rec = TemplateRecord {
        name,
        rootfs: dest.join("rootfs"),
        source: src.display().to_string(),
        size_bytes: size,
        created_at: Utc::now(),
    };
    ctx.state.templates.put_template(&rec).await?;
    tracing::info!(template = %rec.name, bytes = size, "template imported");
    Ok((StatusCode::CREATED, Json(rec)))
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
    let size = tokio::task::spawn_blocking(move || tree_size(&root)).await.expect("size task");
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

fn tree_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum()).unwrap_or(0)
}
