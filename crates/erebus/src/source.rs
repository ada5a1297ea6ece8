//! Where images come from: an OCI registry, an OCI image layout directory, or a `docker save`
//! archive — each resolved to one linux/amd64 manifest whose blobs can be fetched.
//!
//! Every reference and every document read here is untrusted: digests are parsed before use
//! (so a digest can never be a path), and callers verify each blob's bytes against its digest.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use oci_client::manifest::{OciImageIndex, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::digest::Digest;

/// What image to build from, as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `host[:port]/repo[:tag][@digest]` in an OCI distribution registry.
    Registry(String),
    /// `oci:DIR[:TAG]`, an OCI image layout directory.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick; the only manifest when absent.
        tag: Option<String>,
    },
    /// `docker-archive:FILE`, what `docker save` (or `skopeo copy … docker-archive:`) writes.
    DockerArchive(PathBuf),
}

impl ImageRef {
    /// Parses a reference.
    pub fn parse(s: &str) -> Result<Self, PullError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("oci:") {
            // A tag never contains '/', a directory may: split at the last ':' after the last '/'.
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            let (dir, tag) = match rest[slash..].rfind(':') {
                Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_owned())),
                None => (rest, None),
            };
            if !dir.starts_with('/') {
                return Err(PullError::BadReference(format!(
                    "{s:?}: oci: needs an absolute directory, e.g. oci:/srv/image:latest"
                )));
            }
            return Ok(Self::Layout { dir: dir.into(), tag: tag.filter(|t| !t.is_empty()) });
        }
        if let Some(file) = s.strip_prefix("docker-archive:") {
            if !file.starts_with('/') {
                return Err(PullError::BadReference(format!("{s:?}: docker-archive: needs an absolute file path")));
            }
            return Ok(Self::DockerArchive(file.into()));
        }
        let r: Reference = s.parse().map_err(|e| PullError::BadReference(format!("{s:?}: {e}")))?;
        Ok(Self::Registry(r.whole()))
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Registry(r) => f.write_str(r),
            Self::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            Self::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            Self::DockerArchive(p) => write!(f, "docker-archive:{}", p.display()),
        }
    }
}

/// Credentials for a registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Credentials {
    /// None.
    #[default]
    Anonymous,
    /// HTTP basic (the registry may trade it for a bearer token).
    Basic {
        /// User name.
        username: String,
        /// Password or access token.
        password: String,
    },
    /// A bearer token.
    Bearer {
        /// The token.
        token: String,
    },
}

/// A blob named by a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// Its digest.
    pub digest: Digest,
    /// Its media type.
    pub media_type: String,
    /// Its announced size.
    pub size: u64,
}

/// An image resolved to one manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The manifest's digest (for a `docker save` archive: the config's, the image id).
    pub manifest_digest: Digest,
    /// The config blob.
    pub config: Blob,
    /// The layers, bottom first.
    pub layers: Vec<Blob>,
}

/// Pulling failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The reference cannot be understood.
    #[error("bad image reference {0}")]
    BadReference(String),
    /// The registry refused or failed.
    #[error("registry {reference}: {message}")]
    Registry {
        /// The image.
        reference: String,
        /// What happened.
        message: String,
    },
    /// A file of a layout or archive could not be read.
    #[error("reading {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A document of the image is malformed or unsupported.
    #[error("{what}: {problem}")]
    Invalid {
        /// Which document.
        what: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(what: impl Into<String>, problem: impl Into<String>) -> PullError {
    PullError::Invalid { what: what.into(), problem: problem.into() }
}

fn digest(what: &str, s: &str) -> Result<Digest, PullError> {
    Digest::parse(s).map_err(|e| invalid(what, e.to_string()))
}

fn blob(what: &str, d: &oci_client::manifest::OciDescriptor) -> Result<Blob, PullError> {
    Ok(Blob {
        digest: digest(what, &d.digest)?,
        media_type: d.media_type.clone(),
        size: u64::try_from(d.size).unwrap_or(0),
    })
}

fn from_manifest(manifest_digest: Digest, m: &OciImageManifest) -> Result<Resolved, PullError> {
    Ok(Resolved {
        manifest_digest,
        config: blob("manifest config", &m.config)?,
        layers: m.layers.iter().map(|l| blob("manifest layer", l)).collect::<Result<_, _>>()?,
    })
}

/// The stream of one blob's bytes.
pub type BlobStream = BoxStream<'static, std::io::Result<Bytes>>;

/// An opened image source.
pub enum Source {
    /// A registry, through `oci-client`.
    Registry {
        /// The client.
        client: Box<Client>,
        /// The image.
        reference: Reference,
        /// Its credentials.
        auth: RegistryAuth,
    },
    /// Blobs in a directory laid out as `blobs/sha256/<hex>` (an OCI layout, or an unpacked archive).
    Dir {
        /// The directory.
        root: PathBuf,
        /// The image to pick.
        tag: Option<String>,
        /// For legacy `docker save` archives: where each blob's file is (they are not content-addressed).
        files: Option<Vec<(Digest, PathBuf)>>,
        /// For legacy archives: the image resolved from `manifest.json`.
        legacy: Option<Resolved>,
    },
}

impl Source {
    /// Opens `image`; `insecure` allows plain HTTP to that registry. A `docker save` archive
    /// is unpacked into `scratch` (a fresh directory the caller removes).
    pub fn open(
        image: &ImageRef,
        creds: &Credentials,
        insecure: bool,
        scratch: &Path,
        limits: &crate::unpack::Limits,
    ) -> Result<Self, PullError> {
        match image {
            ImageRef::Registry(r) => {
                let reference: Reference = r.parse().map_err(|e| PullError::BadReference(format!("{r}: {e}")))?;
                let protocol = if insecure {
                    oci_client::client::ClientProtocol::HttpsExcept(vec![reference.registry().to_owned()])
                } else {
                    oci_client::client::ClientProtocol::Https
                };
                let config = oci_client::client::ClientConfig {
                    protocol,
                    platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
                    // A registry that stops answering fails the build instead of hanging it.
                    connect_timeout: Some(std::time::Duration::from_secs(10)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    ..Default::default()
                };
                let auth = match creds {
                    Credentials::Anonymous => RegistryAuth::Anonymous,
                    Credentials::Basic { username, password } => {
                        RegistryAuth::Basic(username.clone(), password.clone())
                    }
                    Credentials::Bearer { token } => RegistryAuth::Bearer(token.clone()),
                };
                Ok(Self::Registry { client: Box::new(Client::new(config)), reference, auth })
            }
            ImageRef::Layout { dir, tag } => {
                if !dir.join("index.json").is_file() {
                    return Err(invalid(format!("oci:{}", dir.display()), "not an OCI image layout (no index.json)"));
                }
                Ok(Self::Dir { root: dir.clone(), tag: tag.clone(), files: None, legacy: None })
            }
            ImageRef::DockerArchive(file) => open_archive(file, scratch, limits),
        }
    }

    /// Resolves the image to one linux/amd64 manifest.
    pub async fn resolve(&self) -> Result<Resolved, PullError> {
        match self {
            Self::Registry { client, reference, auth } => {
                let (manifest, manifest_digest) = client
                    .pull_image_manifest(reference, auth)
                    .await
                    .map_err(|e| PullError::Registry { reference: reference.whole(), message: registry_message(&e) })?;
                from_manifest(digest("manifest digest", &manifest_digest)?, &manifest)
            }
            Self::Dir { legacy: Some(r), .. } => Ok(r.clone()),
            Self::Dir { root, tag, .. } => {
                let (root, tag) = (root.clone(), tag.clone());
                tokio::task::spawn_blocking(move || resolve_layout(&root, tag.as_deref()))
                    .await
                    .expect("resolve task panicked")
            }
        }
    }

    /// The bytes of a blob (unverified: the blob store verifies them).
    pub async fn fetch(&self, b: &Blob) -> Result<BlobStream, PullError> {
        match self {
            Self::Registry { client, reference, .. } => {
                let sized = client
                    .pull_blob_stream(reference, b.digest.as_str())
                    .await
                    .map_err(|e| PullError::Registry { reference: reference.whole(), message: registry_message(&e) })?;
                Ok(sized.stream.map_err(std::io::Error::other).boxed())
            }
            Self::Dir { root, files, .. } => {
                let path = match files {
                    Some(files) => files.iter().find(|(d, _)| d == &b.digest).map(|(_, p)| p.clone()),
                    None => Some(root.join("blobs/sha256").join(b.digest.hex())),
                };
                let path = path.ok_or_else(|| invalid("archive", format!("no file for blob {}", b.digest)))?;
                let file = tokio::fs::File::open(&path).await.map_err(|source| PullError::Io { path, source })?;
                Ok(tokio_util_stream(file))
            }
        }
    }
}

/// Reads a file as a stream of chunks.
fn tokio_util_stream(file: tokio::fs::File) -> BlobStream {
    futures::stream::unfold(file, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .boxed()
}

/// A registry error in words a user can act on.
fn registry_message(e: &oci_client::errors::OciDistributionError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("401") || lower.contains("unauthorized") || lower.contains("not authorized") {
        format!("{text} (check the credentials: --username/--password or TARTARUS_REGISTRY_USERNAME/PASSWORD)")
    } else if lower.contains("https://") && lower.contains("error sending request") {
        format!("{text} (if this registry speaks plain HTTP, add --insecure)")
    } else {
        text
    }
}

/// Reads a regular file of at most `limit` bytes (whatever its metadata claims).
fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, PullError> {
    use std::io::Read;
    let io = |source| PullError::Io { path: path.into(), source };
    let file = std::fs::File::open(path).map_err(io)?;
    if !file.metadata().map_err(io)?.is_file() {
        return Err(invalid(path.display().to_string(), "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(invalid(path.display().to_string(), format!("larger than {limit} bytes")));
    }
    Ok(bytes)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, limit: u64) -> Result<(T, Vec<u8>), PullError> {
    let bytes = read_bounded(path, limit)?;
    let v = serde_json::from_slice(&bytes).map_err(|e| invalid(path.display().to_string(), e.to_string()))?;
    Ok((v, bytes))
}

const DOC_LIMIT: u64 = 4 * 1024 * 1024;

/// Picks the manifest of an OCI layout: by tag, else the only one; an index is resolved to
/// its linux/amd64 entry.
fn resolve_layout(root: &Path, tag: Option<&str>) -> Result<Resolved, PullError> {
    let (index, _) = read_json::<OciImageIndex>(&root.join("index.json"), DOC_LIMIT)?;
    let entry = match tag {
        Some(t) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations.as_ref().and_then(|a| a.get("org.opencontainers.image.ref.name")).is_some_and(|n| n == t)
            })
            .ok_or_else(|| invalid(format!("oci:{}", root.display()), format!("no image tagged {t:?}")))?,
        None if index.manifests.len() == 1 => &index.manifests[0],
        None => {
            return Err(invalid(
                format!("oci:{}", root.display()),
                format!("{} images inside; name one with oci:DIR:TAG", index.manifests.len()),
            ))
        }
    };
    let mut d = digest("index entry", &entry.digest)?;
    // Follow nested indexes (multi-platform images) to the linux/amd64 manifest.
    for _ in 0..4 {
        let path = root.join("blobs/sha256").join(d.hex());
        let (doc, bytes) = read_json::<OciManifest>(&path, DOC_LIMIT)?;
        if Digest::of(&bytes) != d {
            return Err(invalid(format!("manifest {d}"), "its content does not match its digest"));
        }
        match doc {
            OciManifest::Image(m) => return from_manifest(d, &m),
            OciManifest::ImageIndex(i) => {
                let chosen = oci_client::client::linux_amd64_resolver(&i.manifests)
                    .ok_or_else(|| invalid(format!("index {d}"), "no linux/amd64 image in it"))?;
                d = digest("index entry", &chosen)?;
            }
        }
    }
    Err(invalid(format!("oci:{}", root.display()), "indexes nested too deeply"))
}

/// Checks that every symlink under `root` resolves to something inside it, so nothing read
/// from an unpacked archive can come from the host.
fn links_stay_inside(root: &Path) -> Result<(), String> {
    let root = root.canonicalize().map_err(|e| format!("{}: {e}", root.display()))?;
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?.flatten() {
            let Ok(kind) = e.file_type() else { continue };
            let rel = e.path().strip_prefix(&root).map(|p| p.display().to_string()).unwrap_or_default();
            if kind.is_symlink() {
                match e.path().canonicalize() {
                    Ok(target) if target.starts_with(&root) => {}
                    _ => return Err(format!("link {rel:?} points outside the archive")),
                }
            } else if kind.is_dir() {
                dirs.push(e.path());
            }
        }
    }
    Ok(())
}

/// `manifest.json` of a legacy `docker save` archive.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    layers: Vec<String>,
}

/// Unpacks a `docker save` archive into `scratch` and opens what is inside: an OCI layout
/// (newer Docker) or the legacy `manifest.json` form.
fn open_archive(file: &Path, scratch: &Path, limits: &crate::unpack::Limits) -> Result<Source, PullError> {
    let f = std::fs::File::open(file).map_err(|source| PullError::Io { path: file.into(), source })?;
    std::fs::create_dir_all(scratch).map_err(|source| PullError::Io { path: scratch.into(), source })?;
    let mut archive = tar::Archive::new(f);
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in archive.entries().map_err(|source| PullError::Io { path: file.into(), source })? {
        let mut entry = entry.map_err(|source| PullError::Io { path: file.into(), source })?;
        let kind = entry.header().entry_type();
        let name = entry.path().map(|p| p.display().to_string()).unwrap_or_default();
        // Files, directories and links (`docker save` links repeated layers); nothing else:
        // no sparse files that balloon on disk, no devices. Links are checked below.
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink() || kind.is_hard_link()) {
            return Err(invalid(
                file.display().to_string(),
                format!("entry {name:?} is not a file, directory or link"),
            ));
        }
        entries += 1;
        bytes = bytes.saturating_add(entry.size());
        if entries > limits.max_entries || bytes > limits.max_total_bytes {
            return Err(invalid(
                file.display().to_string(),
                format!("more than {} entries or {} bytes", limits.max_entries, limits.max_total_bytes),
            ));
        }
        // `unpack_in` refuses paths that leave `scratch`.
        entry.unpack_in(scratch).map_err(|source| PullError::Io { path: file.into(), source })?;
    }
    links_stay_inside(scratch).map_err(|why| invalid(file.display().to_string(), why))?;
    if scratch.join("index.json").is_file() && scratch.join("blobs").is_dir() {
        return Ok(Source::Dir { root: scratch.into(), tag: None, files: None, legacy: None });
    }
    let (manifests, _) = read_json::<Vec<ArchiveManifest>>(&scratch.join("manifest.json"), DOC_LIMIT)?;
    let m = match manifests.as_slice() {
        [one] => one,
        other => {
            return Err(invalid(
                file.display().to_string(),
                format!("{} images inside; only one is supported", other.len()),
            ))
        }
    };
    let inside = |name: &str| -> Result<PathBuf, PullError> {
        if name.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(invalid("manifest.json", format!("bad path {name:?}")));
        }
        Ok(scratch.join(name))
    };
    let config_path = inside(&m.config)?;
    let config_bytes =
        std::fs::read(&config_path).map_err(|source| PullError::Io { path: config_path.clone(), source })?;
    let config_digest = Digest::of(&config_bytes);
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).map_err(|e| invalid("image config", e.to_string()))?;
    let diff_ids: Vec<Digest> = config["rootfs"]["diff_ids"]
        .as_array()
        .ok_or_else(|| invalid("image config", "no rootfs.diff_ids"))?
        .iter()
        .map(|v| digest("diff_id", v.as_str().unwrap_or_default()))
        .collect::<Result<_, _>>()?;
    if diff_ids.len() != m.layers.len() {
        return Err(invalid("manifest.json", "layer count differs from the config's diff_ids"));
    }
    // Legacy layers are plain tars named by position; their digest is their diff_id.
    let mut files = vec![(config_digest.clone(), config_path)];
    let mut layers = Vec::new();
    for (name, diff_id) in m.layers.iter().zip(diff_ids) {
        let path = inside(name)?;
        let size = std::fs::metadata(&path).map_err(|source| PullError::Io { path: path.clone(), source })?.len();
        layers.push(Blob {
            digest: diff_id.clone(),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            size,
        });
        files.push((diff_id, path));
    }
    let config_blob = Blob {
        digest: config_digest.clone(),
        media_type: "application/vnd.oci.image.config.v1+json".into(),
        size: config_bytes.len() as u64,
    };
    let legacy = Resolved { manifest_digest: config_digest, config: config_blob, layers };
    Ok(Source::Dir { root: scratch.into(), tag: None, files: Some(files), legacy: Some(legacy) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_may_not_link_to_the_host() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("evil.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "manifest.json", "/etc/passwd").unwrap();
        b.finish().unwrap();
        drop(b);
        let scratch = tmp.path().join("scratch");
        let err = open_archive(&archive, &scratch, &crate::unpack::Limits::default()).err().expect("refused");
        assert!(err.to_string().contains("points outside the archive"), "{err}");
    }

    #[test]
    fn archive_bounds_hold() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("big.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        for i in 0..3 {
            let mut h = tar::Header::new_gnu();
            h.set_size(4);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("f{i}"), &b"data"[..]).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let limits = crate::unpack::Limits { max_entries: 2, ..Default::default() };
        assert!(open_archive(&archive, &tmp.path().join("s"), &limits).is_err());
    }

    #[test]
    fn references() {
        assert_eq!(
            ImageRef::parse("oci:/tmp/img:v1").unwrap(),
            ImageRef::Layout { dir: "/tmp/img".into(), tag: Some("v1".into()) }
        );
        assert_eq!(ImageRef::parse("oci:/img").unwrap(), ImageRef::Layout { dir: "/img".into(), tag: None });
        assert!(ImageRef::parse("oci:./img").is_err(), "paths are the realm's: absolute only");
        assert_eq!(ImageRef::parse("docker-archive:/x.tar").unwrap(), ImageRef::DockerArchive("/x.tar".into()));
        assert_eq!(
            ImageRef::parse("localhost:5000/python:3").unwrap(),
            ImageRef::Registry("localhost:5000/python:3".into())
        );
        assert!(ImageRef::parse("oci:").is_err());
        assert!(ImageRef::parse("Not A Ref!").is_err());
    }
}
