//! Nyx — template snapshots: packs a warmed sandbox's checkpoint into one compressed artifact in
//! the blob store, and gives nodes a local copy to restore sandboxes from.
//!
//! A snapshot is made once per template ([`crate::agent::Hecatoncheir::warm`]: start a session,
//! run the warm-up command, pause, checkpoint) and stored as a zstd-compressed tar, addressed by
//! its sha256 like every other blob, so a node that lacks it fetches and verifies it (from S3 when
//! the realm's store is a bucket). Each node keeps one unpacked copy per snapshot under
//! `<data-dir>/nyx/<snapshot-id>/image`; restores only read it, so any number of sandboxes can be
//! restored from one copy.

use std::path::{Path, PathBuf};

use tartarus_core::SnapshotInfo;
use tartarus_erebus::blobs::{BlobError, BlobStore};
use tartarus_erebus::digest::{Digest, Hasher};

/// A snapshot that could not be stored or made available.
#[derive(Debug, thiserror::Error)]
pub enum NyxError {
    /// Reading or writing local files failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The snapshot's record names no valid artifact.
    #[error("snapshot {0} names an invalid artifact digest")]
    BadArtifact(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NyxError {
    let context = context.into();
    move |source| NyxError::Io { context, source }
}

/// What [`Nyx::store`] wrote.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Digest of the compressed artifact.
    pub artifact: Digest,
    /// Bytes of the checkpoint before compression.
    pub size_bytes: u64,
    /// Bytes of the artifact.
    pub compressed_bytes: u64,
}

/// The snapshot store of one node.
#[derive(Debug, Clone)]
pub struct Nyx {
    root: PathBuf,
    blobs: BlobStore,
}

impl Nyx {
    /// Snapshots unpacked under `root` (`<data-dir>/nyx`), artifacts in `blobs`.
    pub fn new(root: PathBuf, blobs: BlobStore) -> Self {
        Self { root, blobs }
    }

    /// Where a checkpoint of snapshot `id` is written before it is stored, and restored from.
    pub fn image_dir(&self, id: &str) -> PathBuf {
        self.root.join(id).join("image")
    }

    /// Packs the checkpoint in [`Nyx::image_dir`]`(id)` into a compressed artifact and stores it.
    pub async fn store(&self, id: &str) -> Result<Stored, NyxError> {
        let image = self.image_dir(id);
        let packed = self.root.join(id).join("artifact.tar.zst");
        let (image_c, packed_c) = (image.clone(), packed.clone());
        let (digest, size, compressed) =
            tokio::task::spawn_blocking(move || pack(&image_c, &packed_c)).await.expect("pack task")?;
        let file = tokio::fs::File::open(&packed).await.map_err(io(format!("opening {}", packed.display())))?;
        let stream = tokio_util_stream(file);
        let stored = self.blobs.put(&digest, u64::MAX, stream, &|_| {}).await;
        let _ = tokio::fs::remove_file(&packed).await;
        stored?;
        Ok(Stored { artifact: digest, size_bytes: size, compressed_bytes: compressed })
    }

    /// A local, unpacked copy of `snap`'s checkpoint, fetched from the blob store when this node
    /// has none (verified against its digest, unpacked beside, then renamed into place).
    pub async fn image(&self, snap: &SnapshotInfo) -> Result<PathBuf, NyxError> {
        self.image_of(&snap.id, &snap.artifact).await
    }

    /// [`Nyx::image`] of checkpoint `id` stored as `artifact` (a digest).
    pub async fn image_of(&self, id: &str, artifact: &str) -> Result<PathBuf, NyxError> {
        let dir = self.image_dir(id);
        if dir.join(".complete").is_file() {
            return Ok(dir);
        }
        let digest = Digest::parse(artifact).map_err(|_| NyxError::BadArtifact(id.to_owned()))?;
        let artifact = self.blobs.local_copy(&digest).await?;
        let (dir_c, id) = (dir.clone(), id.to_owned());
        tokio::task::spawn_blocking(move || unpack(&artifact, &dir_c, &id)).await.expect("unpack task")?;
        Ok(dir)
    }

    /// Removes checkpoint `id` everywhere: this node's copy and the stored `artifact` (Hypnos's
    /// checkpoints serve one wake only).
    pub async fn discard(&self, id: &str, artifact: &str) -> Result<(), NyxError> {
        self.forget(id).await;
        let digest = Digest::parse(artifact).map_err(|_| NyxError::BadArtifact(id.to_owned()))?;
        self.blobs.delete(&digest).await?;
        Ok(())
    }

    /// Marks a freshly written checkpoint as complete (it is restorable as it is).
    pub fn complete(&self, id: &str) -> Result<(), NyxError> {
        let mark = self.image_dir(id).join(".complete");
        std::fs::write(&mark, b"").map_err(io(format!("writing {}", mark.display())))
    }

    /// Removes this node's copy of snapshot `id` (the artifact stays until `template prune`).
    pub async fn forget(&self, id: &str) {
        let dir = self.root.join(id);
        if !id.is_empty() && !id.contains('/') && dir.exists() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }
}

/// A file as a stream of byte chunks.
fn tokio_util_stream(file: tokio::fs::File) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
}

/// Writes `image` (a directory of plain files) as a zstd-compressed tar to `out`; returns the
/// artifact's digest, the bytes packed and the artifact's size.
fn pack(image: &Path, out: &Path) -> Result<(Digest, u64, u64), NyxError> {
    let file = std::fs::File::create(out).map_err(io(format!("creating {}", out.display())))?;
    let encoder = zstd::stream::write::Encoder::new(file, 3).map_err(io("starting zstd"))?;
    let mut tar = tar::Builder::new(encoder);
    let mut size = 0;
    for entry in std::fs::read_dir(image).map_err(io(format!("reading {}", image.display())))? {
        let entry = entry.map_err(io(format!("reading {}", image.display())))?;
        let meta = entry.metadata().map_err(io("reading a checkpoint file"))?;
        let name = entry.file_name();
        if !meta.is_file() || name == ".complete" {
            continue;
        }
        size += meta.len();
        tar.append_path_with_name(entry.path(), &name).map_err(io(format!("packing {}", entry.path().display())))?;
    }
    let encoder = tar.into_inner().map_err(io("finishing the tar"))?;
    encoder.finish().map_err(io("finishing zstd"))?.sync_all().map_err(io("syncing the artifact"))?;
    let mut hasher = Hasher::default();
    let mut f = std::fs::File::open(out).map_err(io(format!("reading {}", out.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).map_err(io(format!("reading {}", out.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let compressed = hasher.len();
    Ok((hasher.finish(), size, compressed))
}

/// Unpacks an artifact made by [`pack`] into `dir` (plain files only, no paths), atomically.
fn unpack(artifact: &Path, dir: &Path, id: &str) -> Result<(), NyxError> {
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(io(format!("creating {}", partial.display())))?;
    let result = (|| {
        let file = std::fs::File::open(artifact).map_err(io(format!("opening {}", artifact.display())))?;
        let decoder = zstd::stream::read::Decoder::new(file).map_err(io("starting zstd"))?;
        let mut archive = tar::Archive::new(decoder);
        for entry in archive.entries().map_err(io(format!("reading snapshot {id}")))? {
            let mut entry = entry.map_err(io(format!("reading snapshot {id}")))?;
            let path = entry.path().map_err(io("reading an entry's name"))?.into_owned();
            let plain_name = path.components().count() == 1
                && matches!(path.components().next(), Some(std::path::Component::Normal(_)));
            if !entry.header().entry_type().is_file() || !plain_name {
                return Err(NyxError::BadArtifact(id.to_owned()));
            }
            let dest = partial.join(&path);
            let mut out = std::fs::File::create(&dest).map_err(io(format!("writing {}", dest.display())))?;
            std::io::copy(&mut entry, &mut out).map_err(io(format!("writing {}", dest.display())))?;
        }
        std::fs::write(partial.join(".complete"), b"").map_err(io("marking the copy complete"))?;
        let _ = std::fs::remove_dir_all(dir);
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
        }
        std::fs::rename(&partial, dir).map_err(io(format!("placing {}", dir.display())))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks_a_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        let image = tmp.path().join("image");
        std::fs::create_dir_all(&image).unwrap();
        std::fs::write(image.join("checkpoint.img"), vec![7u8; 100_000]).unwrap();
        std::fs::write(image.join("pages.img"), b"pages").unwrap();
        let out = tmp.path().join("a.tar.zst");
        let (digest, size, compressed) = pack(&image, &out).unwrap();
        assert_eq!(size, 100_005);
        assert!(compressed < 2_000, "{compressed}");
        assert!(digest.as_str().starts_with("sha256:"));
        let dest = tmp.path().join("copy").join("image");
        unpack(&out, &dest, "snap-x").unwrap();
        assert_eq!(std::fs::read(dest.join("pages.img")).unwrap(), b"pages");
        assert_eq!(std::fs::read(dest.join("checkpoint.img")).unwrap().len(), 100_000);
        assert!(dest.join(".complete").is_file());
    }

    #[test]
    fn refuses_artifacts_with_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("evil.tar.zst");
        let file = std::fs::File::create(&out).unwrap();
        let mut tar = tar::Builder::new(zstd::stream::write::Encoder::new(file, 3).unwrap().auto_finish());
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, "sub/x", &b"x"[..]).unwrap();
        drop(tar.into_inner().unwrap());
        let dest = tmp.path().join("copy").join("image");
        assert!(matches!(unpack(&out, &dest, "snap-x"), Err(NyxError::BadArtifact(_))));
        assert!(!dest.exists());
    }
}
