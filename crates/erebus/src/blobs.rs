//! The blob store: image blobs kept content-addressed and verified, shared by every template.
//!
//! Blobs live at `blobs/sha256/<hex>` in an [`object_store`]: the local filesystem by default,
//! an S3-compatible bucket when configured. Unpacking needs local files, so with a remote
//! store a local cache holds the working copies. A blob enters the store only after its bytes
//! hashed to the digest it was asked for; a mismatch leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher};

/// A blob store operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The bytes did not hash to the expected digest.
    #[error("blob {expected} is corrupt: its content hashes to {actual} ({bytes} bytes); nothing was stored")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hashed to.
        actual: Digest,
        /// How many bytes came.
        bytes: u64,
    },
    /// More bytes came than the descriptor announced.
    #[error("blob {digest} is larger than the {limit} bytes its descriptor announced")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// The announced size.
        limit: u64,
    },
    /// Reading the source failed.
    #[error("reading blob {digest}")]
    Source {
        /// The blob.
        digest: Digest,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The local cache failed.
    #[error("blob cache {path}")]
    Cache {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The object store failed.
    #[error("object store: {context}")]
    Store {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: object_store::Error,
    },
    /// The blob is in neither the cache nor the store.
    #[error("blob {0} is not in the store")]
    Missing(Digest),
}

/// Where blobs are kept.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Local working copies; for the local store this *is* the store's directory.
    cache: PathBuf,
    /// Whether the store is elsewhere (S3), so blobs are copied to it and fetched from it.
    remote: bool,
    describe: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").field("store", &self.describe).field("cache", &self.cache).finish()
    }
}

fn key(d: &Digest) -> ObjectPath {
    ObjectPath::from(format!("blobs/sha256/{}", d.hex()))
}

impl BlobStore {
    /// A store on the local filesystem under `dir`.
    pub fn local(dir: &Path) -> Result<Self, BlobError> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .map_err(|source| BlobError::Cache { path: dir.into(), source })?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|source| BlobError::Store { context: format!("opening {}", dir.display()), source })?;
        Ok(Self {
            store: Arc::new(store),
            cache: dir.into(),
            remote: false,
            describe: format!("file://{}", dir.display()),
        })
    }

    /// A store in an S3-compatible bucket (`s3://bucket/prefix`), with a local cache in `cache`.
    /// Endpoint and credentials come from the usual `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL` for S3-compatible servers, `AWS_ALLOW_HTTP=true` for plain HTTP).
    pub fn s3(url: &str, cache: &Path) -> Result<Self, BlobError> {
        let parsed = url::Url::parse(url).map_err(|e| BlobError::Store {
            context: format!("{url:?} is not an s3://bucket/prefix URL"),
            source: object_store::Error::Generic { store: "S3", source: Box::new(e) },
        })?;
        let bucket = parsed.host_str().unwrap_or_default().to_owned();
        let prefix = parsed.path().trim_matches('/').to_owned();
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|source| BlobError::Store { context: format!("configuring {url}"), source })?;
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(s3, prefix.as_str()))
        };
        std::fs::create_dir_all(cache.join("blobs/sha256"))
            .map_err(|source| BlobError::Cache { path: cache.into(), source })?;
        Ok(Self { store, cache: cache.into(), remote: true, describe: url.to_owned() })
    }

    /// Where the store is, for people.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// The local path of blob `d` (present or not).
    pub fn path(&self, d: &Digest) -> PathBuf {
        self.cache.join("blobs/sha256").join(d.hex())
    }

    /// Whether blob `d` is stored.
    pub async fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file() || (self.remote && self.store.head(&key(d)).await.is_ok())
    }

    /// Stores the bytes of `stream` as blob `expected`, verifying them first. At most `limit`
    /// bytes are accepted. `on_bytes` is told how many bytes arrived so far.
    pub async fn put<S>(
        &self,
        expected: &Digest,
        limit: u64,
        stream: S,
        on_bytes: &(dyn Fn(u64) + Sync),
    ) -> Result<(), BlobError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let dest = self.path(expected);
        // Unique per call: two fetches of one blob never write the same file.
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let tmp = dest.with_extension(format!("partial-{}-{unique:x}", std::process::id()));
        let cache_err = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Cache { path, source }
        };
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(cache_err(&tmp))?;
            let mut hasher = Hasher::default();
            futures::pin_mut!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|source| BlobError::Source { digest: expected.clone(), source })?;
                hasher.update(&chunk);
                if hasher.len() > limit {
                    return Err(BlobError::TooLarge { digest: expected.clone(), limit });
                }
                file.write_all(&chunk).await.map_err(cache_err(&tmp))?;
                on_bytes(hasher.len());
            }
            file.flush().await.map_err(cache_err(&tmp))?;
            let bytes = hasher.len();
            let actual = hasher.finish();
            if &actual != expected {
                return Err(BlobError::DigestMismatch { expected: expected.clone(), actual, bytes });
            }
            file.sync_all().await.map_err(cache_err(&tmp))?;
            tokio::fs::rename(&tmp, &dest).await.map_err(cache_err(&dest))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return result;
        }
        if self.remote {
            self.upload(&dest, &key(expected)).await?;
        }
        Ok(())
    }

    /// Copies a local file to `key` in the remote store.
    async fn upload(&self, file: &Path, key: &ObjectPath) -> Result<(), BlobError> {
        let mut src =
            tokio::fs::File::open(file).await.map_err(|source| BlobError::Cache { path: file.into(), source })?;
        let mut writer = object_store::buffered::BufWriter::new(self.store.clone(), key.clone());
        tokio::io::copy(&mut src, &mut writer)
            .await
            .map_err(|source| BlobError::Cache { path: file.into(), source })?;
        writer.shutdown().await.map_err(|e| BlobError::Store {
            context: format!("uploading {key}"),
            source: object_store::Error::Generic { store: "upload", source: Box::new(e) },
        })
    }

    /// Stores an artifact that is not a blob (an ext4 image) under `name` in the remote store;
    /// nothing to do for the local store, where the file already is.
    pub async fn put_artifact(&self, file: &Path, name: &str) -> Result<(), BlobError> {
        if self.remote {
            self.upload(file, &ObjectPath::from(format!("artifacts/{name}"))).await?;
        }
        Ok(())
    }

    /// Removes an artifact stored with [`BlobStore::put_artifact`] (nothing to do locally).
    pub async fn delete_artifact(&self, name: &str) -> Result<(), BlobError> {
        if self.remote {
            match self.store.delete(&ObjectPath::from(format!("artifacts/{name}"))).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(BlobError::Store { context: format!("deleting artifact {name}"), source }),
            }
        }
        Ok(())
    }

    /// A local, verified copy of blob `d` (fetched from the remote store when needed).
    pub async fn local_copy(&self, d: &Digest) -> Result<PathBuf, BlobError> {
        let path = self.path(d);
        if path.is_file() {
            return Ok(path);
        }
        if !self.remote {
            return Err(BlobError::Missing(d.clone()));
        }
        let got = self.store.get(&key(d)).await.map_err(|source| match source {
            object_store::Error::NotFound { .. } => BlobError::Missing(d.clone()),
            source => BlobError::Store { context: format!("fetching {d}"), source },
        })?;
        let stream = got.into_stream().map_err(std::io::Error::other);
        // Written to the cache only: it is in the remote store already.
        let remote = Self { remote: false, ..self.clone() };
        remote.put(d, u64::MAX, stream, &|_| {}).await?;
        Ok(path)
    }

    /// Removes the partial files of fetches that never finished (the process died). Call only
    /// while no fetch runs.
    pub fn sweep_partials(&self) -> u64 {
        let mut freed = 0;
        if let Ok(entries) = std::fs::read_dir(self.cache.join("blobs/sha256")) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().contains(".partial-") {
                    freed += e.metadata().map(|m| m.len()).unwrap_or(0);
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        freed
    }

    /// Every stored blob.
    pub async fn list(&self) -> Result<Vec<Digest>, BlobError> {
        let prefix = ObjectPath::from("blobs/sha256");
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|source| BlobError::Store { context: "listing blobs".into(), source })?;
        Ok(metas
            .iter()
            .filter_map(|m| m.location.filename())
            .filter_map(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
            .collect())
    }

    /// Removes blob `d` (cache and store). Returns the bytes freed locally.
    pub async fn delete(&self, d: &Digest) -> Result<u64, BlobError> {
        let path = self.path(d);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(BlobError::Cache { path, source: e }),
            _ => {}
        }
        if self.remote {
            match self.store.delete(&key(d)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(source) => return Err(BlobError::Store { context: format!("deleting {d}"), source }),
            }
        }
        Ok(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>())
    }

    #[tokio::test]
    async fn verified_blobs_are_stored_and_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let d = Digest::of(b"hello world");
        store.put(&d, 100, chunks(&[b"hello ", b"world"]), &|_| {}).await.unwrap();
        assert!(store.has(&d).await);
        assert_eq!(std::fs::read(store.local_copy(&d).await.unwrap()).unwrap(), b"hello world");
        assert_eq!(store.list().await.unwrap(), vec![d.clone()]);
        assert_eq!(store.delete(&d).await.unwrap(), 11);
        assert!(!store.has(&d).await);
    }

    #[tokio::test]
    async fn a_mismatch_or_oversize_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::local(dir.path()).unwrap();
        let d = Digest::of(b"expected");
        let err = store.put(&d, 100, chunks(&[b"tampered"]), &|_| {}).await.unwrap_err();
        assert!(matches!(err, BlobError::DigestMismatch { .. }), "{err}");
        let err = store.put(&d, 3, chunks(&[b"expected"]), &|_| {}).await.unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { .. }), "{err}");
        assert!(!store.has(&d).await);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().collect();
        assert!(left.is_empty(), "nothing half-written: {left:?}");
    }
}
