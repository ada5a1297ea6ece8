//! Writes OCI image layouts from root filesystem directories (or prepared tar streams): Tartarus's own image packer.
//!
//! Recipes use it to turn a debootstrapped tree into an image the normal import path takes, and tests use it to
//! make images (including hostile ones, from hand-made tar streams) without a registry or a container engine.
//!
//! **What a layer holds.** A [`LayerSource::Dir`] is packed with everything an image needs: modes (setuid and
//! sticky bits included), numeric owners, symlinks stored verbatim, hard links (detected by device and inode
//! within the layer: the first name in walk order carries the data, later ones are links to it), character and
//! block devices and FIFOs, and extended attributes as PAX `SCHILY.xattr.*` records (except `security.selinux` and
//! `trusted.overlay.*`, which describe the host, not the image). Sockets are skipped. The root directory itself is
//! not an entry: unpackers create it. Entries are sorted by name and modification times are clamped to
//! [`LAYER_MTIME_EPOCH`], user and group names are left empty, and gzip and zstd run single-threaded with fixed
//! settings, so packing the same tree twice gives the same digests. Only one filesystem's worth of tree is
//! expected: nothing here stops at mount points, so do not pack a tree with `/proc` mounted inside it.
//!
//! [`LayerSource::Paths`] packs only some paths of a tree (at any depth, with their parent directories emitted as
//! plain directory entries) so a big root filesystem can be split into several layers; [`remaining_paths`] lists
//! what a set of such paths leaves out, for the "everything else" layer. A hard link whose names end up in
//! different layers becomes separate files. [`LayerSource::Tar`] copies a tar stream verbatim, which is how tests
//! craft whiteouts and malformed layers.
//!
//! **Digests** are computed while streaming (tar → hash of the uncompressed stream, the `diff_id` → compressor →
//! hash of the blob → file), so layers are never held in memory. Each blob is written to a temporary name in
//! `blobs/sha256/` and renamed to its digest; `index.json` is replaced atomically last, so a reader never sees a
//! manifest whose blobs are missing. Writing into an existing layout adds the image next to the ones there (an
//! image with the same tag is replaced in the index; unreferenced blobs are left behind).
//!
//! JSON documents are written compactly with sorted keys, so their digests are stable too. This blocks on file
//! I/O and compression: from async code, call it inside `spawn_blocking`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndex,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};
use oci_spec::OciSpecError;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};
use tracing::{debug, info};

use crate::unpack::Compression;

/// Modification times later than this (2000-01-01T00:00:00Z) are written as this, for reproducible layers.
pub const LAYER_MTIME_EPOCH: u64 = 946_684_800;
/// [`LAYER_MTIME_EPOCH`] as the `created` time of configs and history entries.
const EPOCH_RFC3339: &str = "2000-01-01T00:00:00Z";
/// Index annotation naming an image's tag.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Longest tag accepted (Docker's limit).
const MAX_TAG_LEN: usize = 128;
/// Extended attributes that describe the host rather than the image.
const SKIPPED_XATTR_PREFIXES: &[&[u8]] = &[b"security.selinux", b"trusted.overlay."];

/// The runtime defaults recorded in an image's config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `Env`, as `NAME=value`.
    pub env: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `Labels`.
    pub labels: BTreeMap<String, String>,
}

/// Where a layer's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSource {
    /// Everything below a directory (the directory itself is the layer's root).
    Dir(PathBuf),
    /// Only the given paths of `root` (relative, at any depth; directories with everything below them), with their
    /// parent directories. An empty path stands for the whole of `root`.
    Paths {
        /// The tree the paths are in.
        root: PathBuf,
        /// Paths relative to `root`; no `..`, and no symlink on the way (only as the last component).
        include: Vec<PathBuf>,
    },
    /// An uncompressed tar stream, copied byte for byte (then compressed as asked).
    Tar(PathBuf),
}

/// How layer blobs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    /// Plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// Gzip, default level (`...tar+gzip`): what every tool reads.
    #[default]
    Gzip,
    /// Zstandard, level 3 (`...tar+zstd`): smaller and faster, not read by old tools.
    Zstd,
}

impl LayerCompression {
    /// The OCI layer media type for this compression.
    pub fn media_type(self) -> MediaType {
        match self {
            Self::None => MediaType::ImageLayer,
            Self::Gzip => MediaType::ImageLayerGzip,
            Self::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

impl From<LayerCompression> for Compression {
    fn from(c: LayerCompression) -> Self {
        match c {
            LayerCompression::None => Compression::None,
            LayerCompression::Gzip => Compression::Gzip,
            LayerCompression::Zstd => Compression::Zstd,
        }
    }
}

/// Digests of one written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDigests {
    /// `sha256:…` of the blob as stored (compressed).
    pub digest: String,
    /// Size of the blob in bytes.
    pub size: u64,
    /// `sha256:…` of the uncompressed tar stream (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
    /// Size of the uncompressed tar stream in bytes.
    pub uncompressed_size: u64,
}

/// Digests of a written image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageDigests {
    /// `sha256:…` of the manifest (what the index points to; the image's identity).
    pub manifest: String,
    /// Size of the manifest in bytes.
    pub manifest_size: u64,
    /// `sha256:…` of the config blob.
    pub config: String,
    /// The layers, bottom first.
    pub layers: Vec<LayerDigests>,
}

/// Why a layout could not be written.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The tag is not a valid OCI/Docker tag.
    #[error("tag {0:?} is invalid: 1 to {MAX_TAG_LEN} characters of [A-Za-z0-9_.-], not starting with . or -")]
    BadTag(String),
    /// A [`LayerSource::Paths`] path cannot be packed.
    #[error("cannot pack {path:?} of {root:?}: {why}")]
    BadPath {
        /// The tree.
        root: PathBuf,
        /// The path as given, relative to `root`.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A layer source (directory, file, tar stream) could not be read, or changed while it was packed.
    #[error("cannot read layer source {path:?}")]
    Read {
        /// The host path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The layout could not be written.
    #[error("cannot write OCI layout file {path:?}")]
    Write {
        /// The host path.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The layout's existing `index.json` is not an OCI image index.
    #[error("existing {path:?} is not a valid OCI image index")]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: OciSpecError,
    },
    /// An OCI document could not be built or serialised (a bug, not bad input).
    #[error("cannot build OCI {what}")]
    Spec {
        /// Which document.
        what: &'static str,
        /// What oci-spec or serde said.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Writes image `tag` with `layers` (bottom first) and `config` into the OCI layout directory `out`, creating it
/// if needed. See the module docs for what is packed and how.
pub fn write_layout(
    out: &Path,
    tag: &str,
    layers: &[LayerSource],
    config: &ImageConfig,
    compression: LayerCompression,
) -> Result<ImageDigests, LayoutError> {
    check_tag(tag)?;
    let blobs = out.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(|source| LayoutError::Write { path: blobs.clone(), source })?;

    let mut written = Vec::with_capacity(layers.len());
    let mut history = Vec::with_capacity(layers.len());
    for source in layers {
        let layer = write_layer(&blobs, source, compression)?;
        debug!(digest = %layer.digest, size = layer.size, diff_id = %layer.diff_id, "layer written");
        history.push(
            HistoryBuilder::default()
                .created(EPOCH_RFC3339)
                .created_by(describe(source))
                .build()
                .map_err(spec("history"))?,
        );
        written.push(layer);
    }

    let mut runtime = ConfigBuilder::default();
    if let Some(v) = &config.entrypoint {
        runtime = runtime.entrypoint(v.clone());
    }
    if let Some(v) = &config.cmd {
        runtime = runtime.cmd(v.clone());
    }
    if !config.env.is_empty() {
        runtime = runtime.env(config.env.clone());
    }
    if let Some(v) = &config.working_dir {
        runtime = runtime.working_dir(v.clone());
    }
    if let Some(v) = &config.user {
        runtime = runtime.user(v.clone());
    }
    if !config.labels.is_empty() {
        runtime = runtime.labels(config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<HashMap<_, _>>());
    }
    let image_config = ImageConfigurationBuilder::default()
        .created(EPOCH_RFC3339)
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(runtime.build().map_err(spec("config"))?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(written.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>())
                .build()
                .map_err(spec("rootfs"))?,
        )
        .history(history)
        .build()
        .map_err(spec("image config"))?;
    let (config_digest, config_size) = write_json_blob(&blobs, &image_config, "image config")?;

    let layer_descriptors = written
        .iter()
        .map(|l| descriptor(compression.media_type(), &l.digest, l.size))
        .collect::<Result<Vec<_>, _>>()?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config_digest, config_size)?)
        .layers(layer_descriptors)
        .build()
        .map_err(spec("manifest"))?;
    let (manifest_digest, manifest_size) = write_json_blob(&blobs, &manifest, "manifest")?;

    let layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build().map_err(spec("oci-layout"))?;
    write_json_file(&out.join("oci-layout"), &layout, "oci-layout")?;
    update_index(out, tag, &manifest_digest, manifest_size)?;
    info!(layout = ?out, tag, manifest = %manifest_digest, layers = written.len(), "OCI layout written");
    Ok(ImageDigests { manifest: manifest_digest, manifest_size, config: config_digest, layers: written })
}

/// The entries of `root` that a [`LayerSource::Paths`] layer with `taken` leaves out, as an `include` list that
/// packs the rest of the tree: siblings of the taken paths and of their parents (missing taken paths are ignored).
pub fn remaining_paths(root: &Path, taken: &[PathBuf]) -> Result<Vec<PathBuf>, LayoutError> {
    fn walk(
        root: &Path,
        rel: &Path,
        taken: &BTreeMap<OsString, Select>,
        out: &mut Vec<PathBuf>,
    ) -> Result<(), LayoutError> {
        for name in sorted_children(&root.join(rel))? {
            let child = rel.join(&name);
            match taken.get(&name) {
                None => out.push(child),
                Some(Select::All) => {}
                Some(Select::Some(below)) => {
                    let host = root.join(&child);
                    let meta =
                        fs::symlink_metadata(&host).map_err(|source| LayoutError::Read { path: host, source })?;
                    if !meta.is_dir() {
                        return Err(LayoutError::BadPath {
                            root: root.to_owned(),
                            path: child,
                            why: "is on the way to a taken path but is not a directory (a symlink?)".into(),
                        });
                    }
                    walk(root, &child, below, out)?;
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    if let Select::Some(taken) = Select::from_paths(root, taken)? {
        walk(root, Path::new(""), &taken, &mut out)?;
    }
    Ok(out)
}

fn check_tag(tag: &str) -> Result<(), LayoutError> {
    let ok = !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && !tag.starts_with(['.', '-'])
        && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(LayoutError::BadTag(tag.to_owned()))
    }
}

/// The history line for a layer: what it holds, without host paths (they would make digests host-dependent).
fn describe(source: &LayerSource) -> String {
    match source {
        LayerSource::Dir(_) => "tartarus layout: directory".to_owned(),
        LayerSource::Paths { include, .. } => {
            let paths: Vec<String> = include.iter().map(|p| p.display().to_string()).collect();
            format!("tartarus layout: paths {}", paths.join(" "))
        }
        LayerSource::Tar(_) => "tartarus layout: tar stream".to_owned(),
    }
}

fn spec<E: std::error::Error + Send + Sync + 'static>(what: &'static str) -> impl FnOnce(E) -> LayoutError {
    move |e| LayoutError::Spec { what, source: Box::new(e) }
}

fn descriptor(media_type: MediaType, digest: &str, size: u64) -> Result<Descriptor, LayoutError> {
    let digest: oci_spec::image::Digest = digest.parse().map_err(spec("descriptor"))?;
    DescriptorBuilder::default().media_type(media_type).digest(digest).size(size).build().map_err(spec("descriptor"))
}

/// Adds (or replaces) the manifest tagged `tag` in `out/index.json`, keeping the other images there.
fn update_index(out: &Path, tag: &str, digest: &str, size: u64) -> Result<(), LayoutError> {
    let path = out.join("index.json");
    let mut manifests = match File::open(&path) {
        Ok(file) => {
            let index = ImageIndex::from_reader(io::BufReader::new(file))
                .map_err(|source| LayoutError::BadIndex { path: path.clone(), source })?;
            index.manifests().clone()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(LayoutError::Read { path, source }),
    };
    manifests
        .retain(|d| d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).map(String::as_str) != Some(tag));
    let mut entry = descriptor(MediaType::ImageManifest, digest, size)?;
    entry.set_annotations(Some(HashMap::from([(REF_NAME_ANNOTATION.to_owned(), tag.to_owned())])));
    entry.set_platform(Some(
        PlatformBuilder::default().architecture(Arch::Amd64).os(Os::Linux).build().map_err(spec("platform"))?,
    ));
    manifests.push(entry);
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec("index"))?;
    write_json_file(&path, &index, "index")
}

/// Serialises `value` compactly with object keys sorted, whatever serde_json's map type is.
fn canonical_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<Vec<u8>, LayoutError> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let sorted: BTreeMap<String, serde_json::Value> = map.into_iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(spec(what))?;
    serde_json::to_vec(&sort(value)).map_err(spec(what))
}

fn write_json_blob<T: serde::Serialize>(
    blobs: &Path,
    value: &T,
    what: &'static str,
) -> Result<(String, u64), LayoutError> {
    let bytes = canonical_json(value, what)?;
    let tmp = TempBlob::create(blobs)?;
    let mut file = tmp.file.as_ref().expect("fresh temp blob");
    file.write_all(&bytes).map_err(|source| LayoutError::Write { path: tmp.path.clone(), source })?;
    let hex = hex::encode(Sha256::digest(&bytes));
    tmp.persist(&hex)?;
    Ok((format!("sha256:{hex}"), bytes.len() as u64))
}

/// Writes a small file atomically (temporary name, then rename).
fn write_json_file<T: serde::Serialize>(path: &Path, value: &T, what: &'static str) -> Result<(), LayoutError> {
    let bytes = canonical_json(value, what)?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, path)).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        LayoutError::Write { path: path.to_owned(), source }
    })
}

/// A blob being written under a temporary name in `blobs/sha256/`; removed on drop unless persisted.
struct TempBlob {
    dir: PathBuf,
    path: PathBuf,
    file: Option<File>,
}

impl TempBlob {
    fn create(dir: &Path) -> Result<Self, LayoutError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(".tmp-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let path = dir.join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(|source| LayoutError::Write { path: path.clone(), source })?;
        Ok(Self { dir: dir.to_owned(), path, file: Some(file) })
    }

    /// Flushes the blob to disk and renames it to `hex`, its digest.
    fn persist(mut self, hex: &str) -> Result<(), LayoutError> {
        let file = self.file.take().expect("blob persisted once");
        let dest = self.dir.join(hex);
        file.sync_all()
            .and_then(|()| fs::rename(&self.path, &dest))
            .map_err(|source| LayoutError::Write { path: dest, source })
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        // After a successful persist the temporary name no longer exists and this fails harmlessly.
        let _ = fs::remove_file(&self.path);
    }
}

/// Counts and hashes what is written through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), len: 0 }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.hasher.finalize()), self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressor of a layer, finished explicitly (dropping it would lose the trailer).
enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(inner: W, compression: LayerCompression) -> io::Result<Self> {
        Ok(match compression {
            LayerCompression::None => Self::None(inner),
            // GzEncoder writes a fixed header (mtime 0, no name), so equal input gives equal output.
            LayerCompression::Gzip => Self::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default())),
            LayerCompression::Zstd => Self::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Self::None(w) => Ok(w),
            Self::Gzip(e) => e.finish(),
            Self::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::None(w) => w.write(buf),
            Self::Gzip(e) => e.write(buf),
            Self::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::None(w) => w.flush(),
            Self::Gzip(e) => e.flush(),
            Self::Zstd(e) => e.flush(),
        }
    }
}

/// The writer stack of one layer: tar bytes → diff_id hash → compressor → blob hash → file.
type LayerWriter = Hashing<Encoder<Hashing<BufWriter<File>>>>;

/// Streams one layer into a blob, returning its digests.
fn write_layer(blobs: &Path, source: &LayerSource, compression: LayerCompression) -> Result<LayerDigests, LayoutError> {
    let mut tmp = TempBlob::create(blobs)?;
    let tmp_path = tmp.path.clone();
    let write_err = |source| LayoutError::Write { path: tmp_path.clone(), source };
    let file = tmp.file.take().expect("fresh temp blob");
    let stream: LayerWriter = Hashing::new(
        Encoder::new(Hashing::new(BufWriter::with_capacity(1 << 20, file)), compression).map_err(write_err)?,
    );

    let stream = match source {
        LayerSource::Tar(path) => {
            let read_err = |source| LayoutError::Read { path: path.clone(), source };
            let mut input = File::open(path).map_err(read_err)?;
            let mut stream = stream;
            copy_tracking(&mut input, &mut stream).map_err(|e| match e {
                Side::Read(e) => read_err(e),
                Side::Write(e) => write_err(e),
            })?;
            stream
        }
        LayerSource::Dir(root) => pack_tree(root, Select::All, stream, &tmp_path)?,
        LayerSource::Paths { root, include } => pack_tree(root, Select::from_paths(root, include)?, stream, &tmp_path)?,
    };

    let (encoder, diff_hex, uncompressed_size) = stream.finish();
    let (buffered, blob_hex, size) = encoder.finish().map_err(write_err)?.finish();
    let file = buffered.into_inner().map_err(|e| write_err(e.into_error()))?;
    tmp.file = Some(file);
    tmp.persist(&blob_hex)?;
    Ok(LayerDigests {
        digest: format!("sha256:{blob_hex}"),
        size,
        diff_id: format!("sha256:{diff_hex}"),
        uncompressed_size,
    })
}

/// Which side of a copy failed.
enum Side {
    Read(io::Error),
    Write(io::Error),
}

fn copy_tracking(input: &mut impl Read, output: &mut impl Write) -> Result<(), Side> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Side::Read(e)),
        };
        output.write_all(&buf[..n]).map_err(Side::Write)?;
    }
}

/// Which part of a tree goes into a layer.
#[derive(Debug)]
enum Select {
    /// This entry and everything below it.
    All,
    /// This directory as an entry, and only the named children (each with its own selection).
    Some(BTreeMap<OsString, Select>),
}

impl Select {
    /// The selection of `include` (relative paths) in `root`; an empty path selects everything.
    fn from_paths(root: &Path, include: &[PathBuf]) -> Result<Self, LayoutError> {
        let mut top = Select::Some(BTreeMap::new());
        for path in include {
            let mut names = Vec::new();
            for c in path.components() {
                match c {
                    Component::Normal(name) => names.push(name.to_owned()),
                    Component::CurDir => {}
                    Component::RootDir | Component::ParentDir | Component::Prefix(_) => {
                        return Err(LayoutError::BadPath {
                            root: root.to_owned(),
                            path: path.clone(),
                            why: "must be relative, without `..`".into(),
                        })
                    }
                }
            }
            let mut node = &mut top;
            for name in names {
                node = match node {
                    Select::All => break,
                    Select::Some(children) => children.entry(name).or_insert_with(|| Select::Some(BTreeMap::new())),
                };
            }
            *node = Select::All;
        }
        Ok(top)
    }
}

/// Packs the selected part of `root` as a tar stream into `stream`.
fn pack_tree(root: &Path, select: Select, stream: LayerWriter, blob: &Path) -> Result<LayerWriter, LayoutError> {
    let meta = fs::symlink_metadata(root).map_err(|source| LayoutError::Read { path: root.to_owned(), source })?;
    if !meta.is_dir() {
        return Err(LayoutError::Read {
            path: root.to_owned(),
            source: io::Error::new(io::ErrorKind::NotADirectory, "layer root is not a directory"),
        });
    }
    let mut builder = tar::Builder::new(stream);
    let mut packer =
        Packer { root, blob, builder: &mut builder, links: HashMap::new(), read_error: Rc::new(RefCell::new(None)) };
    packer.children(Path::new(""), &select)?;
    builder.into_inner().map_err(|source| LayoutError::Write { path: blob.to_owned(), source })
}

struct Packer<'a, W: Write> {
    root: &'a Path,
    /// The blob being written, for write errors.
    blob: &'a Path,
    builder: &'a mut tar::Builder<W>,
    /// First name packed for each multiply-linked inode, by (device, inode).
    links: HashMap<(u64, u64), PathBuf>,
    /// A source read error that reached the tar builder as an opaque I/O error.
    read_error: Rc<RefCell<Option<(PathBuf, io::Error)>>>,
}

impl<W: Write> Packer<'_, W> {
    /// Packs the selected children of directory `rel`, sorted by name.
    fn children(&mut self, rel: &Path, select: &Select) -> Result<(), LayoutError> {
        match select {
            Select::All => {
                for name in sorted_children(&self.root.join(rel))? {
                    self.entry(&rel.join(name), &Select::All, false)?;
                }
            }
            Select::Some(children) => {
                for (name, below) in children {
                    self.entry(&rel.join(name), below, true)?;
                }
            }
        }
        Ok(())
    }

    /// Packs `rel` and the selected part of what is below it; `named` says it was named by an include path
    /// (rather than found by listing its directory).
    fn entry(&mut self, rel: &Path, select: &Select, named: bool) -> Result<(), LayoutError> {
        let host = self.root.join(rel);
        let meta = match fs::symlink_metadata(&host) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && named => return Err(self.bad_path(rel, "does not exist")),
            Err(source) => return Err(LayoutError::Read { path: host, source }),
        };
        if matches!(select, Select::Some(_)) && !meta.is_dir() {
            return Err(self.bad_path(rel, "is on the way to an included path but is not a directory (a symlink?)"));
        }
        self.append(rel, &host, &meta)?;
        if meta.is_dir() {
            self.children(rel, select)?;
        }
        Ok(())
    }

    fn bad_path(&self, rel: &Path, why: &str) -> LayoutError {
        LayoutError::BadPath { root: self.root.to_owned(), path: rel.to_owned(), why: why.to_owned() }
    }

    /// Appends the tar entry (with its PAX xattr and GNU long-link records) for one filesystem entry.
    fn append(&mut self, rel: &Path, host: &Path, meta: &fs::Metadata) -> Result<(), LayoutError> {
        let read_err = |source| LayoutError::Read { path: host.to_owned(), source };
        let ft = meta.file_type();
        if ft.is_socket() {
            debug!(path = ?host, "socket skipped");
            return Ok(());
        }
        let mut header = Header::new_gnu();
        header.set_mode(meta.mode() & 0o7777);
        header.set_uid(u64::from(meta.uid()));
        header.set_gid(u64::from(meta.gid()));
        header.set_mtime(u64::try_from(meta.mtime()).unwrap_or(0).min(LAYER_MTIME_EPOCH));
        header.set_size(0);

        let xattrs = list_xattrs(host).map_err(read_err)?;
        if !xattrs.is_empty() {
            let records: Vec<(Vec<u8>, Vec<u8>)> =
                xattrs.into_iter().map(|(k, v)| ([b"SCHILY.xattr.".as_slice(), &k].concat(), v)).collect();
            self.raw(EntryType::XHeader, b"././@PaxHeader", &pax_records(&records))?;
        }

        if ft.is_dir() {
            header.set_entry_type(EntryType::Directory);
            return self.data(&mut header, rel, io::empty());
        }
        if ft.is_symlink() {
            header.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(host).map_err(read_err)?;
            return self.link(&mut header, rel, target.as_os_str().as_bytes());
        }
        if meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                header.set_entry_type(EntryType::Link);
                let first = first.as_os_str().as_bytes().to_vec();
                return self.link(&mut header, rel, &first);
            }
            self.links.insert((meta.dev(), meta.ino()), rel.to_owned());
        }
        if ft.is_file() {
            header.set_entry_type(EntryType::Regular);
            header.set_size(meta.len());
            let file = File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(host).map_err(read_err)?;
            let exact =
                Exact { inner: file, left: meta.len(), path: host.to_owned(), error: Rc::clone(&self.read_error) };
            return self.data(&mut header, rel, exact);
        }
        header.set_entry_type(if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        });
        if ft.is_char_device() || ft.is_block_device() {
            let rdev = meta.rdev();
            header.set_device_major(libc::major(rdev)).map_err(|e| self.write_err(e))?;
            header.set_device_minor(libc::minor(rdev)).map_err(|e| self.write_err(e))?;
        }
        self.data(&mut header, rel, io::empty())
    }

    /// Appends an entry with content (the tar crate adds a GNU long-name record when the path needs one).
    fn data(&mut self, header: &mut Header, rel: &Path, content: impl Read) -> Result<(), LayoutError> {
        match self.builder.append_data(header, rel, content) {
            Ok(()) => Ok(()),
            Err(e) => Err(match self.read_error.borrow_mut().take() {
                Some((path, source)) => LayoutError::Read { path, source },
                None => self.write_err(e),
            }),
        }
    }

    /// Appends a symlink or hard link entry, its target stored byte for byte (the tar crate's own link helper
    /// normalises targets, dropping `./` components and trailing slashes).
    fn link(&mut self, header: &mut Header, rel: &Path, target: &[u8]) -> Result<(), LayoutError> {
        let field = &mut header.as_old_mut().linkname;
        if target.len() > field.len() {
            self.raw(EntryType::GNULongLink, b"././@LongLink", &[target, b"\0"].concat())?;
        }
        let n = target.len().min(field.len());
        field.fill(0);
        field[..n].copy_from_slice(&target[..n]);
        self.data(header, rel, io::empty())
    }

    /// Appends a metadata record (PAX header or GNU long link) named `name` with `content`.
    fn raw(&mut self, kind: EntryType, name: &[u8], content: &[u8]) -> Result<(), LayoutError> {
        // PAX records go in a POSIX (ustar) header, GNU long links in a GNU one, as tar itself writes them.
        let mut header = if kind == EntryType::XHeader { Header::new_ustar() } else { Header::new_gnu() };
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_size(content.len() as u64);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_cksum();
        self.builder.append(&header, content).map_err(|e| self.write_err(e))
    }

    fn write_err(&self, source: io::Error) -> LayoutError {
        LayoutError::Write { path: self.blob.to_owned(), source }
    }
}

/// Reads exactly `left` bytes of a file, failing if it is shorter or longer (it changed while being packed).
struct Exact {
    inner: File,
    left: u64,
    path: PathBuf,
    error: Rc<RefCell<Option<(PathBuf, io::Error)>>>,
}

impl Exact {
    fn fail(&self, source: io::Error) -> io::Error {
        let kind = source.kind();
        *self.error.borrow_mut() = Some((self.path.clone(), source));
        io::Error::new(kind, "layer source read failed")
    }
}

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe) {
                Ok(0) => Ok(0),
                Ok(_) => Err(self.fail(io::Error::new(io::ErrorKind::InvalidData, "file grew while being packed"))),
                Err(e) => Err(self.fail(e)),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        match self.inner.read(&mut buf[..want]) {
            Ok(0) => Err(self.fail(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being packed"))),
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => Err(self.fail(e)),
        }
    }
}

/// Names in directory `dir`, sorted by bytes.
fn sorted_children(dir: &Path) -> Result<Vec<OsString>, LayoutError> {
    let read_err = |source| LayoutError::Read { path: dir.to_owned(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_err)? {
        names.push(entry.map_err(read_err)?.file_name());
    }
    names.sort();
    Ok(names)
}

/// PAX extended header records (`"LEN key=value\n"`, LEN counting itself).
fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = 1 + key.len() + 1 + value.len() + 1; // ' ' key '=' value '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// Extended attributes of `path` (not following a symlink), sorted by name, without host-only ones.
fn list_xattrs(path: &Path) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let names = loop {
        // SAFETY: `c_path` is NUL-terminated; a null buffer of size 0 asks for the needed size.
        let size = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOTSUP) => Ok(Vec::new()),
                _ => Err(e),
            };
        }
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
        let got = unsafe { libc::llistxattr(c_path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            break buf;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
        // The list grew between the two calls: ask again.
    };
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if SKIPPED_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let c_name = CString::new(name).expect("split on NUL");
        if let Some(value) = get_xattr(&c_path, &c_name)? {
            out.push((name.to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// One attribute's value; `None` if it disappeared since it was listed.
fn get_xattr(path: &CString, name: &CString) -> io::Result<Option<Vec<u8>>> {
    loop {
        // SAFETY: both strings are NUL-terminated; a null buffer of size 0 asks for the needed size.
        let size = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(e) };
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
        let got = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => continue,
            Some(libc::ENODATA) => return Ok(None),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::{Limits, Unpacker};
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use oci_spec::image::{ImageConfiguration, ImageManifest};
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;

    const OLD_MTIME: i64 = 631_152_000; // 1990-01-01

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let p = CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = CString::new(name).unwrap();
        // SAFETY: NUL-terminated strings and a live slice.
        let rc = unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
        assert_eq!(rc, 0, "setxattr: {}", io::Error::last_os_error());
    }

    /// A tree with every kind of entry and metadata an image carries.
    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("dir/sub/deep")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::create_dir(root.join("tmp")).unwrap();
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(root.join("dir/a.txt"), b"hello\n").unwrap();
        fs::hard_link(root.join("dir/a.txt"), root.join("dir/hard")).unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        fs::write(root.join("dir/sub/deep/data.bin"), data).unwrap();
        fs::write(root.join("dir/exec"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("dir/exec"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("suid"), b"x").unwrap();
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::write(root.join("owned"), b"mine").unwrap();
        std::os::unix::fs::lchown(root.join("owned"), Some(1000), Some(1001)).unwrap();
        fs::write(root.join("dir").join("n".repeat(150)), b"long name").unwrap();
        symlink("dir/a.txt", root.join("link")).unwrap();
        symlink("/etc/passwd", root.join("abs-link")).unwrap();
        symlink("./sub//deep/", root.join("dir/odd-link")).unwrap();
        symlink("../".repeat(60), root.join("dir/long-link")).unwrap();
        fs::write(root.join("old"), b"old").unwrap();
        let old = TimeSpec::new(OLD_MTIME, 0);
        utimensat(None, &root.join("old"), &old, &old, UtimensatFlags::NoFollowSymlink).unwrap();
        set_xattr(&root.join("dir/a.txt"), "user.tartarus", b"hello");
    }

    /// What matters of a tree: type, mode, owner, content or target, and `user.*` xattrs; the root excluded.
    fn snapshot(root: &Path, xattrs: bool) -> BTreeMap<String, String> {
        fn walk(root: &Path, dir: &Path, xattrs: bool, out: &mut BTreeMap<String, String>) {
            for name in sorted_children(dir).unwrap() {
                let path = dir.join(&name);
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                let meta = fs::symlink_metadata(&path).unwrap();
                let mode = meta.mode() & 0o7777;
                let owner = format!("{}:{}", meta.uid(), meta.gid());
                let ft = meta.file_type();
                let mut what = if ft.is_dir() {
                    format!("dir {mode:o} {owner}")
                } else if ft.is_symlink() {
                    format!("symlink {owner} -> {}", fs::read_link(&path).unwrap().display())
                } else if ft.is_file() {
                    format!("file {mode:o} {owner} {}", hex::encode(Sha256::digest(fs::read(&path).unwrap())))
                } else {
                    format!("other {:o}", meta.mode())
                };
                if xattrs {
                    for (k, v) in list_xattrs(&path).unwrap() {
                        if k.starts_with(b"user.") {
                            what += &format!(" {}={}", String::from_utf8_lossy(&k), String::from_utf8_lossy(&v));
                        }
                    }
                }
                out.insert(rel, what);
                if ft.is_dir() {
                    walk(root, &path, xattrs, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(root, root, xattrs, &mut out);
        out
    }

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec!["echo hi".into()]),
            env: vec!["PATH=/usr/bin:/bin".into(), "LANG=C.UTF-8".into()],
            working_dir: Some("/".into()),
            user: Some("0:0".into()),
            labels: BTreeMap::from([("b".into(), "2".into()), ("a".into(), "1".into())]),
        }
    }

    fn blob_path(layout: &Path, digest: &str) -> PathBuf {
        layout.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap())
    }

    fn read_image(layout: &Path, tag: &str) -> (ImageManifest, ImageConfiguration) {
        let index = ImageIndex::from_file(layout.join("index.json")).unwrap();
        let desc = index
            .manifests()
            .iter()
            .find(|d| d.annotations().as_ref().unwrap().get(REF_NAME_ANNOTATION).map(String::as_str) == Some(tag))
            .expect("tag in index");
        let manifest = ImageManifest::from_file(blob_path(layout, desc.digest().as_ref())).unwrap();
        let config = ImageConfiguration::from_file(blob_path(layout, manifest.config().digest().as_ref())).unwrap();
        (manifest, config)
    }

    fn decompressed(layout: &Path, layer: &Descriptor) -> Vec<u8> {
        let compression = Compression::from_media_type(layer.media_type().as_ref()).unwrap();
        let file = File::open(blob_path(layout, layer.digest().as_ref())).unwrap();
        let mut out = Vec::new();
        match compression {
            Compression::None => io::BufReader::new(file).read_to_end(&mut out),
            Compression::Gzip => flate2::read::MultiGzDecoder::new(file).read_to_end(&mut out),
            Compression::Zstd => zstd::stream::read::Decoder::new(file).unwrap().read_to_end(&mut out),
        }
        .unwrap();
        out
    }

    fn entry_names(tar_bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect()
    }

    fn unpack_with_crate(layout: &Path, tag: &str, dest: &Path) {
        fs::create_dir(dest).unwrap();
        let (manifest, _) = read_image(layout, tag);
        let mut unpacker = Unpacker::new(dest, Limits::default()).unwrap();
        for layer in manifest.layers() {
            let compression = Compression::from_media_type(layer.media_type().as_ref()).unwrap();
            let blob = File::open(blob_path(layout, layer.digest().as_ref())).unwrap();
            unpacker.apply(blob, compression, layer.digest().as_ref()).unwrap();
        }
    }

    fn no_temp_blobs(layout: &Path) {
        let blobs = layout.join("blobs/sha256");
        if blobs.exists() {
            let stray: Vec<_> =
                sorted_children(&blobs).unwrap().into_iter().filter(|n| n.as_bytes().starts_with(b".tmp")).collect();
            assert!(stray.is_empty(), "temporary blobs left: {stray:?}");
        }
    }

    #[test]
    fn directory_layer_round_trips_through_the_unpacker() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        sample_tree(&src);
        let out = tmp.path().join("layout");
        let digests =
            write_layout(&out, "v1", &[LayerSource::Dir(src.clone())], &config(), LayerCompression::Gzip).unwrap();

        // Every blob is stored under its digest, and diff_ids hash the uncompressed stream.
        let (manifest, image_config) = read_image(&out, "v1");
        assert_eq!(manifest.layers().len(), 1);
        let layer = &manifest.layers()[0];
        assert_eq!(layer.media_type(), &MediaType::ImageLayerGzip);
        let blob = fs::read(blob_path(&out, layer.digest().as_ref())).unwrap();
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&blob))), digests.layers[0].digest);
        assert_eq!(blob.len() as u64, layer.size());
        let tar_bytes = decompressed(&out, layer);
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes)));
        assert_eq!(image_config.rootfs().diff_ids(), &vec![diff_id.clone()]);
        assert_eq!(digests.layers[0].diff_id, diff_id);
        assert_eq!(digests.layers[0].uncompressed_size, tar_bytes.len() as u64);
        let manifest_blob = fs::read(blob_path(&out, &digests.manifest)).unwrap();
        assert_eq!(format!("sha256:{}", hex::encode(Sha256::digest(&manifest_blob))), digests.manifest);
        assert_eq!(manifest.config().digest().to_string(), digests.config);

        // The config carries what was asked.
        assert_eq!(image_config.architecture(), &Arch::Amd64);
        assert_eq!(image_config.os(), &Os::Linux);
        assert_eq!(image_config.history().len(), 1);
        let runtime = image_config.config().as_ref().unwrap();
        assert_eq!(runtime.cmd().as_deref(), Some(&["echo hi".to_owned()][..]));
        assert_eq!(runtime.entrypoint().as_ref().unwrap()[0], "/bin/sh");
        assert_eq!(runtime.env().as_ref().unwrap().len(), 2);
        assert_eq!(runtime.working_dir().as_deref(), Some("/"));
        assert_eq!(runtime.user().as_deref(), Some("0:0"));
        assert_eq!(runtime.labels().as_ref().unwrap().get("a").map(String::as_str), Some("1"));
        let layout_file: serde_json::Value =
            serde_json::from_slice(&fs::read(out.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout_file["imageLayoutVersion"], "1.0.0");

        // Entries are sorted, parents first.
        let names = entry_names(&tar_bytes);
        assert_eq!(names.first().map(String::as_str), Some("abs-link"));
        assert!(names.iter().position(|n| n == "dir").unwrap() < names.iter().position(|n| n == "dir/a.txt").unwrap());

        let dest = tmp.path().join("unpacked");
        unpack_with_crate(&out, "v1", &dest);
        assert_eq!(snapshot(&dest, true), snapshot(&src, true));
        let a = fs::metadata(dest.join("dir/a.txt")).unwrap();
        assert_eq!(a.ino(), fs::metadata(dest.join("dir/hard")).unwrap().ino(), "hard link kept");
        assert_eq!(a.mtime(), LAYER_MTIME_EPOCH as i64, "recent mtimes are clamped");
        assert_eq!(fs::symlink_metadata(dest.join("old")).unwrap().mtime(), OLD_MTIME, "older mtimes are kept");
        no_temp_blobs(&out);
    }

    #[test]
    fn layouts_are_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        sample_tree(&src);
        for compression in [LayerCompression::None, LayerCompression::Gzip, LayerCompression::Zstd] {
            let one =
                write_layout(&tmp.path().join("one"), "t", &[LayerSource::Dir(src.clone())], &config(), compression)
                    .unwrap();
            // Touching a file changes nothing: its mtime is clamped anyway.
            fs::write(src.join("dir/a.txt"), b"hello\n").unwrap();
            let two =
                write_layout(&tmp.path().join("two"), "t", &[LayerSource::Dir(src.clone())], &config(), compression)
                    .unwrap();
            assert_eq!(one, two, "{compression:?}");
            let (manifest, _) = read_image(&tmp.path().join("two"), "t");
            assert_eq!(manifest.layers()[0].media_type(), &compression.media_type());
            let dest = tmp.path().join(format!("unpacked-{compression:?}"));
            unpack_with_crate(&tmp.path().join("two"), "t", &dest);
            assert_eq!(snapshot(&dest, true), snapshot(&src, true));
        }
    }

    /// A small merged-/usr tree like a debootstrapped one.
    fn usr_tree(root: &Path) {
        for dir in [
            "usr/bin",
            "usr/lib/python3/dist-packages/numpy",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/os-release.d",
            "etc",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::set_permissions(root.join("usr/lib"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("usr/bin/python3.11"), b"ELF").unwrap();
        symlink("python3.11", root.join("usr/bin/python3")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        fs::write(root.join("usr/lib/python3/dist-packages/numpy/__init__.py"), b"# numpy").unwrap();
        fs::write(root.join("usr/lib/x86_64-linux-gnu/libc.so.6"), b"libc").unwrap();
        fs::write(root.join("usr/lib/os-release"), b"ID=debian").unwrap();
        fs::write(root.join("etc/hostname"), b"sandbox").unwrap();
    }

    #[test]
    fn paths_layers_split_a_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        usr_tree(&src);
        let taken = vec![PathBuf::from("usr/lib/python3"), PathBuf::from("./usr/lib/x86_64-linux-gnu")];
        let rest = remaining_paths(&src, &taken).unwrap();
        assert_eq!(
            rest,
            ["etc", "lib", "usr/bin", "usr/lib/os-release", "usr/lib/os-release.d"].map(PathBuf::from).to_vec()
        );
        let layers = [
            LayerSource::Paths { root: src.clone(), include: rest },
            LayerSource::Paths { root: src.clone(), include: taken },
        ];
        let out = tmp.path().join("layout");
        write_layout(&out, "latest", &layers, &ImageConfig::default(), LayerCompression::Zstd).unwrap();

        let (manifest, config) = read_image(&out, "latest");
        assert_eq!(manifest.layers().len(), 2);
        assert_eq!(config.rootfs().diff_ids().len(), 2);
        assert_eq!(
            config.history()[1].created_by().as_deref(),
            Some("tartarus layout: paths usr/lib/python3 ./usr/lib/x86_64-linux-gnu")
        );
        let top = entry_names(&decompressed(&out, &manifest.layers()[1]));
        assert_eq!(
            top,
            [
                "usr",
                "usr/lib",
                "usr/lib/python3",
                "usr/lib/python3/dist-packages",
                "usr/lib/python3/dist-packages/numpy",
                "usr/lib/python3/dist-packages/numpy/__init__.py",
                "usr/lib/x86_64-linux-gnu",
                "usr/lib/x86_64-linux-gnu/libc.so.6",
            ]
        );
        let base = entry_names(&decompressed(&out, &manifest.layers()[0]));
        assert!(base.contains(&"usr/bin/python3".to_owned()) && !base.iter().any(|n| n.contains("numpy")), "{base:?}");

        let dest = tmp.path().join("unpacked");
        unpack_with_crate(&out, "latest", &dest);
        assert_eq!(snapshot(&dest, false), snapshot(&src, false));

        // Including the whole tree (an empty path) is the same as a directory layer.
        let whole = write_layout(
            &tmp.path().join("whole"),
            "t",
            &[LayerSource::Paths { root: src.clone(), include: vec![PathBuf::new()] }],
            &ImageConfig::default(),
            LayerCompression::None,
        )
        .unwrap();
        let dir = write_layout(
            &tmp.path().join("dir"),
            "t",
            &[LayerSource::Dir(src.clone())],
            &ImageConfig::default(),
            LayerCompression::None,
        )
        .unwrap();
        assert_eq!(whole.layers[0].diff_id, dir.layers[0].diff_id);
    }

    #[test]
    fn tar_layers_are_copied_verbatim() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        sample_tree(&src);
        let file_header = |mode: u32, size: u64| {
            let mut header = Header::new_gnu();
            header.set_entry_type(EntryType::Regular);
            header.set_mode(mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_size(size);
            header
        };
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_data(&mut file_header(0o644, 0), "dir/.wh.a.txt", io::empty()).unwrap();
        builder.append_data(&mut file_header(0o600, 3), "added", &b"new"[..]).unwrap();
        let tar_bytes = builder.into_inner().unwrap();
        let tar_path = tmp.path().join("whiteout.tar");
        fs::write(&tar_path, &tar_bytes).unwrap();

        let out = tmp.path().join("layout");
        let layers = [LayerSource::Dir(src.clone()), LayerSource::Tar(tar_path)];
        let digests = write_layout(&out, "t", &layers, &ImageConfig::default(), LayerCompression::Gzip).unwrap();
        assert_eq!(digests.layers[1].diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes))));

        let dest = tmp.path().join("unpacked");
        unpack_with_crate(&out, "t", &dest);
        let mut expected = snapshot(&src, true);
        expected.remove("dir/a.txt");
        let added = format!("file 600 0:0 {}", hex::encode(Sha256::digest(b"new")));
        expected.insert("added".into(), added);
        assert_eq!(snapshot(&dest, true), expected);
    }

    #[test]
    fn tags_accumulate_in_one_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        usr_tree(&src);
        let out = tmp.path().join("layout");
        let write = |tag: &str, cfg: &ImageConfig| {
            write_layout(&out, tag, &[LayerSource::Dir(src.clone())], cfg, LayerCompression::Gzip).unwrap()
        };
        let a = write("a", &ImageConfig::default());
        write("b", &config());
        let a2 = write("a", &config());
        assert_ne!(a.manifest, a2.manifest);
        let index = ImageIndex::from_file(out.join("index.json")).unwrap();
        let tags: Vec<(String, String)> = index
            .manifests()
            .iter()
            .map(|d| (d.annotations().as_ref().unwrap()[REF_NAME_ANNOTATION].clone(), d.digest().to_string()))
            .collect();
        assert_eq!(tags.len(), 2, "{tags:?}");
        assert!(tags.contains(&("a".to_owned(), a2.manifest.clone())));
        assert_eq!(read_image(&out, "b").0.layers().len(), 1);
    }

    #[test]
    fn bad_inputs_are_refused_cleanly() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        usr_tree(&src);
        let out = tmp.path().join("layout");
        let write = |tag: &str, layer: LayerSource| {
            write_layout(&out, tag, &[layer], &ImageConfig::default(), LayerCompression::Gzip)
        };
        for tag in ["", ".hidden", "-x", "a:b", "a/b", &"x".repeat(129)] {
            assert!(matches!(write(tag, LayerSource::Dir(src.clone())), Err(LayoutError::BadTag(_))), "{tag:?}");
        }
        let paths = |p: &str| LayerSource::Paths { root: src.clone(), include: vec![PathBuf::from(p)] };
        for (include, why) in [
            ("../etc", "without `..`"),
            ("/usr", "without `..`"),
            ("usr/nope", "does not exist"),
            ("lib/x86_64-linux-gnu", "not a directory"),
            ("etc/hostname/x", "not a directory"),
        ] {
            let err = write("t", paths(include)).unwrap_err();
            assert!(matches!(&err, LayoutError::BadPath { .. }) && err.to_string().contains(why), "{include}: {err}");
        }
        let err = write("t", LayerSource::Dir(tmp.path().join("missing"))).unwrap_err();
        assert!(matches!(err, LayoutError::Read { .. }), "{err:?}");
        let err = write("t", LayerSource::Tar(tmp.path().join("missing.tar"))).unwrap_err();
        assert!(matches!(err, LayoutError::Read { .. }), "{err:?}");
        assert!(!out.join("index.json").exists());
        no_temp_blobs(&out);

        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("index.json"), b"{\"not\": \"an index\"}").unwrap();
        let err = write("t", LayerSource::Dir(src.clone())).unwrap_err();
        assert!(matches!(err, LayoutError::BadIndex { .. }), "{err:?}");
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let records = pax_records(&[(b"k".to_vec(), b"v".to_vec()), (b"key".to_vec(), vec![b'x'; 95])]);
        let text = String::from_utf8(records).unwrap();
        for line in text.split_inclusive('\n') {
            let (len, _) = line.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), line.len(), "{line:?}");
        }
    }

    fn tool(name: &str) -> Option<PathBuf> {
        let found = crate::ext4::find_program(name);
        if found.is_none() {
            eprintln!("{name} is not installed (apt-get install {name}): skipping its check");
        }
        found
    }

    #[test]
    fn skopeo_and_umoci_read_our_layouts() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        sample_tree(&src);
        let out = tmp.path().join("layout");
        let layers = [
            LayerSource::Paths { root: src.clone(), include: vec!["dir".into()] },
            LayerSource::Paths { root: src.clone(), include: remaining_paths(&src, &["dir".into()]).unwrap() },
        ];
        let digests = write_layout(&out, "v1", &layers, &config(), LayerCompression::Gzip).unwrap();
        let reference = format!("oci:{}:v1", out.display());

        if let Some(skopeo) = tool("skopeo") {
            let inspect = Command::new(&skopeo).args(["inspect", &reference]).output().unwrap();
            assert!(inspect.status.success(), "skopeo inspect: {}", String::from_utf8_lossy(&inspect.stderr));
            let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
            assert_eq!(info["Architecture"], "amd64");
            assert_eq!(info["Os"], "linux");
            assert_eq!(info["Digest"], digests.manifest);
            assert_eq!(info["Layers"].as_array().unwrap().len(), 2);
            assert_eq!(info["Labels"]["a"], "1");
            let raw = Command::new(&skopeo).args(["inspect", "--config", &reference]).output().unwrap();
            assert!(raw.status.success(), "skopeo inspect --config: {}", String::from_utf8_lossy(&raw.stderr));
        }

        if let Some(umoci) = tool("umoci") {
            let bundle = tmp.path().join("bundle");
            let image = format!("{}:v1", out.display());
            let unpack = Command::new(&umoci).args(["unpack", "--image", &image]).arg(&bundle).output().unwrap();
            assert!(unpack.status.success(), "umoci unpack: {}", String::from_utf8_lossy(&unpack.stderr));
            assert_eq!(snapshot(&bundle.join("rootfs"), false), snapshot(&src, false));
            let a = fs::metadata(bundle.join("rootfs/dir/a.txt")).unwrap();
            assert_eq!(a.ino(), fs::metadata(bundle.join("rootfs/dir/hard")).unwrap().ino());
        }
    }
}
