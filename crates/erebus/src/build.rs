//! Building a template from an image: resolve, fetch and verify blobs (cached ones are reused),
//! unpack the layers into a root filesystem, make its ext4 image, and move it into place.
//!
//! Unpacked images are kept by manifest digest, so a second template of the same image costs a
//! lookup. Everything is built in a scratch directory and renamed into place at the end, so a
//! failed build leaves nothing half-made.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use tartarus_core::{ImageDefaults, ImageInfo};

use crate::blobs::{BlobError, BlobStore};
use crate::ext4::{self, Ext4Error, Ext4Options};
use crate::source::{Blob, Credentials, ImageRef, PullError, Resolved, Source};
use crate::unpack::{Compression, Limits, UnpackError, Unpacker};

/// How to build.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Registry credentials.
    pub creds: Credentials,
    /// Allow plain HTTP to the registry.
    pub insecure: bool,
    /// Bounds on the unpacked image.
    pub limits: Limits,
    /// The ext4 image's sizing; `None` skips the ext4 image.
    pub ext4: Option<Ext4Options>,
}

/// What a build reports as it goes (sent to clients as progress events).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum BuildEvent {
    /// Looking the image up.
    Resolving {
        /// The reference.
        reference: String,
    },
    /// The manifest is known.
    Resolved {
        /// Its digest.
        manifest_digest: String,
        /// Layer count.
        layers: usize,
        /// Bytes of all layers (compressed).
        bytes: u64,
    },
    /// A blob is being fetched (or was found in the store).
    Blob {
        /// Its digest.
        digest: String,
        /// Its size.
        size: u64,
        /// Already in the store: not fetched.
        cached: bool,
    },
    /// Bytes of a blob fetched so far.
    BlobProgress {
        /// Its digest.
        digest: String,
        /// Bytes so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// This image was unpacked before: reused, nothing fetched or unpacked.
    Reused {
        /// Its manifest digest.
        manifest_digest: String,
    },
    /// The layers are being unpacked.
    Unpacking {
        /// Layer count.
        layers: usize,
    },
    /// The ext4 image is being made.
    Ext4,
    /// Finished.
    Done {
        /// Bytes in the root filesystem.
        size_bytes: u64,
    },
}

/// Receives build events.
pub trait ProgressSink: Send + Sync {
    /// One event.
    fn emit(&self, ev: BuildEvent);
}

impl<F: Fn(BuildEvent) + Send + Sync> ProgressSink for F {
    fn emit(&self, ev: BuildEvent) {
        self(ev)
    }
}

/// A build that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Resolving or fetching failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Storing or verifying a blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A layer could not be applied.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The ext4 image could not be made.
    #[error(transparent)]
    Ext4(#[from] Ext4Error),
    /// The image's config is unusable.
    #[error("image config: {0}")]
    Config(String),
    /// Scratch or destination directories failed.
    #[error("{path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// What a build produced, in place at its destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The root filesystem directory.
    pub rootfs: PathBuf,
    /// The ext4 image, when asked for.
    pub ext4: Option<PathBuf>,
    /// Where it came from and its defaults.
    pub image: ImageInfo,
    /// Bytes of files in the root filesystem.
    pub size_bytes: u64,
}

/// The file that says an unpacked image is whole (written last, before it is moved into place).
pub const COMPLETE: &str = "complete";

/// Largest config blob accepted.
const CONFIG_LIMIT: u64 = 4 * 1024 * 1024;

/// Builds `image` under `images_dir`, where unpacked images are kept by manifest digest:
/// `<images_dir>/<hex>/rootfs` and `rootfs.ext4`. An image unpacked before is reused as it is
/// (templates of the same image share it; they are only ever read).
pub async fn build(
    blobs: &BlobStore,
    image: &ImageRef,
    images_dir: &Path,
    opts: &BuildOptions,
    sink: &dyn ProgressSink,
) -> Result<Built, BuildError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::Io { path, source }
    };
    tokio::fs::create_dir_all(images_dir).await.map_err(io(images_dir))?;
    let scratch = images_dir.join(format!(".build-{:x}", std::process::id() as u64 ^ nanos()));
    tokio::fs::create_dir_all(&scratch).await.map_err(io(&scratch))?;
    let result = async {
        sink.emit(BuildEvent::Resolving { reference: image.to_string() });
        let (image2, creds, insecure, archive_dir) =
            (image.clone(), opts.creds.clone(), opts.insecure, scratch.join("archive"));
        let limits = opts.limits;
        let source =
            tokio::task::spawn_blocking(move || Source::open(&image2, &creds, insecure, &archive_dir, &limits))
                .await
                .expect("open task panicked")?;
        let resolved = source.resolve().await?;
        sink.emit(BuildEvent::Resolved {
            manifest_digest: resolved.manifest_digest.to_string(),
            layers: resolved.layers.len(),
            bytes: resolved.layers.iter().fold(0u64, |a, l| a.saturating_add(l.size)),
        });
        let dest = images_dir.join(resolved.manifest_digest.hex());
        if !dest.join(COMPLETE).is_file() {
            if dest.exists() {
                // Half-removed by an interrupted prune: unpack afresh.
                let _ = tokio::fs::remove_dir_all(&dest).await;
            }
            build_in(blobs, &source, &resolved, &scratch, opts, sink).await?;
            let marker = scratch.join(COMPLETE);
            tokio::fs::write(&marker, resolved.manifest_digest.as_str()).await.map_err(io(&marker))?;
            if let Err(e) = tokio::fs::rename(&scratch, &dest).await {
                // Someone else finished the same image first: theirs is as good.
                if !dest.join(COMPLETE).is_file() {
                    return Err(BuildError::Io { path: dest, source: e });
                }
            }
        } else {
            sink.emit(BuildEvent::Reused { manifest_digest: resolved.manifest_digest.to_string() });
            fetch(blobs, &source, &resolved.config, CONFIG_LIMIT, sink).await?;
        }
        finish(blobs, image, &resolved, &dest, opts, sink).await
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&scratch).await;
    result
}

/// The result for the unpacked image in `dest`: its defaults, and its ext4 image (made now
/// when asked for and missing).
async fn finish(
    blobs: &BlobStore,
    image: &ImageRef,
    resolved: &Resolved,
    dest: &Path,
    opts: &BuildOptions,
    sink: &dyn ProgressSink,
) -> Result<Built, BuildError> {
    let config_path = blobs.local_copy(&resolved.config.digest).await?;
    let config_bytes =
        tokio::fs::read(&config_path).await.map_err(|source| BuildError::Io { path: config_path, source })?;
    let defaults = defaults(&config_bytes)?;
    let rootfs = dest.join("rootfs");
    let ext4_path = dest.join("rootfs.ext4");
    let ext4 = match &opts.ext4 {
        Some(_) if ext4_path.is_file() => Some(ext4_path),
        Some(o) => {
            sink.emit(BuildEvent::Ext4);
            let (root2, out, o) = (rootfs.clone(), ext4_path.clone(), o.clone());
            tokio::task::spawn_blocking(move || ext4::build(&root2, &out, &o).map(|_| out))
                .await
                .expect("ext4 task panicked")
                .map(Some)?
        }
        None => None,
    };
    let root2 = rootfs.clone();
    let size_bytes = tokio::task::spawn_blocking(move || tree_size(&root2)).await.expect("size task panicked");
    sink.emit(BuildEvent::Done { size_bytes });
    Ok(Built {
        rootfs,
        ext4,
        image: ImageInfo {
            reference: image.to_string(),
            manifest_digest: resolved.manifest_digest.to_string(),
            layers: resolved.layers.iter().map(|l| l.digest.to_string()).collect(),
            config_digest: resolved.config.digest.to_string(),
            defaults,
        },
        size_bytes,
    })
}

fn nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

async fn fetch(
    blobs: &BlobStore,
    source: &Source,
    b: &Blob,
    limit: u64,
    sink: &dyn ProgressSink,
) -> Result<(), BuildError> {
    let cached = blobs.has(&b.digest).await;
    sink.emit(BuildEvent::Blob { digest: b.digest.to_string(), size: b.size, cached });
    if cached {
        return Ok(());
    }
    let stream = source.fetch(b).await?;
    let last = AtomicU64::new(0);
    let report = |done: u64| {
        // About every 4 MiB, so progress stays cheap.
        if done - last.load(Ordering::Relaxed) >= 4 << 20 || done == b.size {
            last.store(done, Ordering::Relaxed);
            sink.emit(BuildEvent::BlobProgress { digest: b.digest.to_string(), done, size: b.size });
        }
    };
    blobs.put(&b.digest, limit, stream, &report).await?;
    Ok(())
}

/// Fetches what is missing and unpacks the layers into `<scratch>/rootfs`.
async fn build_in(
    blobs: &BlobStore,
    source: &Source,
    resolved: &Resolved,
    scratch: &Path,
    opts: &BuildOptions,
    sink: &dyn ProgressSink,
) -> Result<(), BuildError> {
    fetch(blobs, source, &resolved.config, CONFIG_LIMIT, sink).await?;
    let config_path = blobs.local_copy(&resolved.config.digest).await?;
    let config_bytes =
        tokio::fs::read(&config_path).await.map_err(|source| BuildError::Io { path: config_path, source })?;
    defaults(&config_bytes)?; // refuse other platforms before fetching layers
    for layer in &resolved.layers {
        // What the manifest announces, but never more than the image may hold.
        let limit =
            if layer.size > 0 { layer.size.min(opts.limits.max_total_bytes) } else { opts.limits.max_total_bytes };
        fetch(blobs, source, layer, limit, sink).await?;
    }
    // The archive's unpacked copy is not needed any more.
    let _ = tokio::fs::remove_dir_all(scratch.join("archive")).await;

    let rootfs = scratch.join("rootfs");
    tokio::fs::create_dir_all(&rootfs).await.map_err(|source| BuildError::Io { path: rootfs.clone(), source })?;
    let mut layer_files = Vec::new();
    for layer in &resolved.layers {
        layer_files.push((blobs.local_copy(&layer.digest).await?, layer.clone()));
    }
    sink.emit(BuildEvent::Unpacking { layers: layer_files.len() });
    let limits = opts.limits;
    let unpacked = tokio::task::spawn_blocking(move || -> Result<(), BuildError> {
        let mut unpacker = Unpacker::new(&rootfs, limits)?;
        for (path, layer) in &layer_files {
            let mut file = std::fs::File::open(path).map_err(|source| BuildError::Io { path: path.clone(), source })?;
            let compression = match Compression::from_media_type(&layer.media_type) {
                Some(c) => c,
                None => {
                    let mut head = [0u8; 8];
                    let n = std::io::Read::read(&mut file, &mut head).unwrap_or(0);
                    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))
                        .map_err(|source| BuildError::Io { path: path.clone(), source })?;
                    Compression::sniff(&head[..n])
                }
            };
            unpacker.apply(std::io::BufReader::with_capacity(1 << 20, file), compression, layer.digest.short())?;
        }
        Ok(())
    });
    unpacked.await.expect("unpack task panicked")
}

/// The parts of an image config Tartarus reads (the OCI spec makes everything else optional,
/// `history` included, so nothing else is required).
#[derive(serde::Deserialize)]
struct ConfigDoc {
    architecture: String,
    os: String,
    #[serde(default)]
    config: Option<ContainerConfig>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

/// The defaults an image config sets (and a check that it is a linux/amd64 image).
pub fn defaults(config: &[u8]) -> Result<ImageDefaults, BuildError> {
    let c: ConfigDoc = serde_json::from_slice(config).map_err(|e| BuildError::Config(e.to_string()))?;
    if c.os != "linux" || c.architecture != "amd64" {
        return Err(BuildError::Config(format!("a {}/{} image; only linux/amd64 runs here", c.os, c.architecture)));
    }
    let cfg = c.config.unwrap_or_default();
    Ok(ImageDefaults {
        entrypoint: cfg.entrypoint,
        cmd: cfg.cmd,
        env: cfg.env.unwrap_or_default(),
        working_dir: cfg.working_dir.filter(|w| !w.is_empty()),
        user: cfg.user.filter(|u| !u.is_empty()),
    })
}

/// The name under which an image's ext4 image is stored as an artifact (one per image, shared
/// by its templates).
pub fn ext4_artifact(manifest_digest: &str) -> String {
    format!("images/{}.ext4", manifest_digest.trim_start_matches("sha256:"))
}

/// Bytes the files under `p` occupy on disk (sparse files count what they use).
pub fn disk_usage(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum()).unwrap_or(0)
}

/// Bytes of the files under `p` (symlinks counted as links).
pub fn tree_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| tree_size(&e.path())).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_without_history_or_config_are_fine() {
        let d = defaults(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert_eq!(d, ImageDefaults::default());
        let d = defaults(br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/srv","User":"app","Entrypoint":["/bin/echo"]}}"#).unwrap();
        assert_eq!(
            (d.env, d.working_dir.as_deref(), d.user.as_deref()),
            (vec!["A=1".to_owned()], Some("/srv"), Some("app"))
        );
        assert!(defaults(br#"{"architecture":"arm64","os":"linux"}"#).is_err());
    }
}
