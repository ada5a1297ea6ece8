//! Applies OCI image layers (tar, gzip or zstd) to a root filesystem directory, never writing outside it.
//!
//! Layers come from arbitrary images, so every tar entry is hostile until proven otherwise:
//!
//! - **Paths.** A leading `/` is stripped (as tar does) and any `..` component is refused. Entries are then
//!   resolved one component at a time from a descriptor of the root with `openat(O_DIRECTORY | O_NOFOLLOW)`, so a
//!   symlink in a *parent* position — planted earlier in the same layer or by a lower layer — is refused with
//!   [`UnpackError::PathEscape`] instead of followed. Symlinks themselves are stored verbatim: they are only
//!   dangerous when followed, and nothing here follows them.
//! - **Final components are replaced, never written through.** Whatever exists at an entry's path (a file, a
//!   symlink, a hard link to something else, or a directory tree when the types differ) is removed first, and files
//!   are created with `O_CREAT | O_EXCL | O_NOFOLLOW`. Hard links resolve their target with the same rules, and the
//!   target must already exist inside the root; `linkat` never follows a symlink target.
//! - **Whiteouts.** `.wh.NAME` and `.wh..wh..opq` only hide what *lower* layers wrote: each layer remembers the
//!   paths it wrote, so a marker that appears after its siblings in the same tar does not remove them.
//! - **Bounds.** Bytes of regular-file content actually written and the number of entries are summed across all
//!   layers given to one [`Unpacker`]. Decompressed tar data that is not file content (headers, PAX records, data
//!   of entries we skip) gets 64 KiB per entry for free; more than that counts against the same byte limit, and
//!   more than 64 MiB between two entries is refused outright, since the tar crate buffers such records in memory.
//!   This keeps a small compressed layer from expanding into hours of work or gigabytes of RAM.
//!
//! On any error the root is left half-unpacked: the caller (the template builder) unpacks into a private temporary
//! directory and deletes it on failure. Nothing is ever created outside the root, error or not. The root must not
//! be modified by anyone else while layers are applied.

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{self, AtFlags, OFlag};
use nix::sys::stat::{self, FileStat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{self, Gid, Uid, UnlinkatFlags};
use tracing::debug;

/// Entry paths longer than this are refused: no tool downstream can name them anyway.
const MAX_PATH_BYTES: usize = 4096;
/// Non-content tar data per entry that is not counted against [`Limits::max_total_bytes`].
const GAP_FREE_BYTES: u64 = 64 * 1024;
/// Non-content tar data allowed between two entries at all (PAX records and long names are held in memory).
const GAP_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Prefix of OCI whiteout files.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Marker that makes its directory opaque: everything lower layers put there is hidden.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping files (`.wh..wh.plnk` and friends), which are never materialised.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
/// PAX record prefix carrying extended attributes (the one Docker, BuildKit and GNU tar write).
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Bounds on what the layers of one image may unpack to, summed over all its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of regular-file content (plus excess tar overhead, see the module docs).
    pub max_total_bytes: u64,
    /// Tar entries of every kind, whiteouts and skipped devices included.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_total_bytes: 8 << 30, max_entries: 1_000_000 }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// Gzip, possibly several concatenated members.
    Gzip,
    /// Zstandard, possibly several concatenated frames.
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares, or `None` if it is not a layer media type we unpack.
    pub fn from_media_type(mt: &str) -> Option<Self> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar" | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Self::None)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    /// Guesses the compression from a blob's first bytes (magic numbers); anything unrecognised is plain tar.
    pub fn sniff(first_bytes: &[u8]) -> Self {
        if first_bytes.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if first_bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// What applying one layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries read, of every kind.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteout and opaque markers applied.
    pub whiteouts: u64,
    /// Character devices, block devices and FIFOs, which are never created.
    pub skipped_devices: u64,
}

/// Why a layer could not be applied. Entry paths are the ones written in the tar, before normalisation.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry would create or modify something outside the root.
    #[error("layer {layer}: entry {path:?} would escape the root filesystem: {why}")]
    PathEscape {
        /// Layer name as given to [`Unpacker::apply`].
        layer: String,
        /// Entry path as written in the tar.
        path: PathBuf,
        /// What made it escape.
        why: String,
    },
    /// The image's content is larger than [`Limits::max_total_bytes`].
    #[error("layer {layer}: entry {path:?} takes the image past its limit of {limit} bytes (raise --max-image-size)")]
    TooLarge {
        /// Layer name as given to [`Unpacker::apply`].
        layer: String,
        /// Entry path as written in the tar (empty when the excess came after the last entry).
        path: PathBuf,
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The image has more entries than [`Limits::max_entries`].
    #[error(
        "layer {layer}: entry {path:?} takes the image past its limit of {limit} entries (raise --max-image-entries)"
    )]
    TooManyEntries {
        /// Layer name as given to [`Unpacker::apply`].
        layer: String,
        /// Entry path as written in the tar.
        path: PathBuf,
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The entry is well-formed tar but cannot be applied (missing hard link target, unsupported type, ...).
    #[error("layer {layer}: entry {path:?} cannot be unpacked: {why}")]
    BadEntry {
        /// Layer name as given to [`Unpacker::apply`].
        layer: String,
        /// Entry path as written in the tar.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The layer is not a readable tar stream in the declared compression (or it is truncated).
    #[error("layer {layer} is corrupt or truncated")]
    Corrupt {
        /// Layer name as given to [`Unpacker::apply`].
        layer: String,
        /// What the decompressor or tar reader reported.
        #[source]
        source: io::Error,
    },
    /// A filesystem operation under the root failed.
    #[error("cannot unpack to {path:?}")]
    Io {
        /// Host path the operation was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// Applies the layers of one image, in order, to one root directory.
///
/// Layers share the [`Limits`]: the totals keep growing from one [`apply`](Self::apply) to the next.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    /// Every path operation starts from this descriptor, never from `root` as a string.
    root_fd: OwnedFd,
    limits: Limits,
    bytes: u64,
    entries: u64,
    /// Non-content tar data beyond the free allowance, see [`GAP_FREE_BYTES`].
    overhead: u64,
}

impl Unpacker {
    /// Opens `root`, which must be an existing directory, either empty or prepared by the caller.
    pub fn new(root: &Path, limits: Limits) -> Result<Self, UnpackError> {
        let io = |e: Errno| UnpackError::Io { path: root.to_owned(), source: e.into() };
        let fd = fcntl::openat(None, root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(io)?;
        // SAFETY: `openat` just returned this descriptor and nothing else owns it.
        let root_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { root: root.to_owned(), root_fd, limits, bytes: 0, entries: 0, overhead: 0 })
    }

    /// Applies one layer on top of what earlier calls unpacked.
    ///
    /// `layer_name` (typically the blob digest) only appears in errors and logs. On error the root is left
    /// half-unpacked and must be discarded, together with this `Unpacker`. This blocks on file I/O: from async code,
    /// call it inside `spawn_blocking`.
    pub fn apply(
        &mut self,
        layer: impl Read,
        compression: Compression,
        layer_name: &str,
    ) -> Result<LayerStats, UnpackError> {
        let stats = match compression {
            Compression::None => self.apply_tar(layer, layer_name)?,
            Compression::Gzip => self.apply_tar(flate2::read::MultiGzDecoder::new(layer), layer_name)?,
            Compression::Zstd => {
                let decoder = zstd::stream::read::Decoder::new(layer)
                    .map_err(|source| UnpackError::Corrupt { layer: layer_name.to_owned(), source })?;
                self.apply_tar(decoder, layer_name)?
            }
        };
        debug!(
            layer = layer_name,
            entries = stats.entries,
            bytes = stats.bytes,
            whiteouts = stats.whiteouts,
            skipped_devices = stats.skipped_devices,
            "layer applied"
        );
        Ok(stats)
    }

    /// Bytes of file content written and entries read so far, over all layers.
    pub fn totals(&self) -> (u64, u64) {
        (self.bytes, self.entries)
    }

    fn apply_tar<R: Read>(&mut self, stream: R, layer: &str) -> Result<LayerStats, UnpackError> {
        let corrupt = |source| UnpackError::Corrupt { layer: layer.to_owned(), source };
        let gap = Rc::new(Gap::default());
        let mut archive = tar::Archive::new(Guarded { inner: stream, gap: Rc::clone(&gap) });
        let mut st = LayerState::default();
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let path = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
            let cx = Ctx { layer, entry: &path };
            self.charge_overhead(&cx, gap.bytes.replace(0))?;
            if self.entries >= self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    layer: layer.to_owned(),
                    path,
                    limit: self.limits.max_entries,
                });
            }
            self.entries += 1;
            st.stats.entries += 1;
            self.apply_entry(&mut st, &cx, &mut entry, &gap)?;
        }
        self.charge_overhead(&Ctx { layer, entry: Path::new("") }, gap.bytes.replace(0))?;
        self.finish_dir_times(&st)?;
        Ok(st.stats)
    }

    fn charge_overhead(&mut self, cx: &Ctx, gap_bytes: u64) -> Result<(), UnpackError> {
        self.overhead = self.overhead.saturating_add(gap_bytes.saturating_sub(GAP_FREE_BYTES));
        if self.overhead > self.limits.max_total_bytes {
            return Err(cx.too_large(self.limits.max_total_bytes));
        }
        Ok(())
    }

    fn apply_entry<R: Read>(
        &mut self,
        st: &mut LayerState,
        cx: &Ctx,
        entry: &mut tar::Entry<R>,
        gap: &Gap,
    ) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            return Ok(());
        }
        let rel = normalize(cx.entry.as_os_str().as_bytes()).map_err(|bad| bad.into_error(cx, "path"))?;
        if let Some(name) = rel.file_name() {
            if let Some(hidden) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
                return self.whiteout(st, cx, &rel, hidden);
            }
        }
        if kind.is_file() || kind.is_contiguous() || kind.is_gnu_sparse() {
            self.write_file(st, cx, &rel, entry, gap)?;
        } else if kind.is_dir() {
            self.make_dir(st, cx, &rel, entry)?;
        } else if kind.is_symlink() {
            self.make_symlink(cx, &rel, entry)?;
        } else if kind.is_hard_link() {
            self.make_hard_link(cx, &rel, entry)?;
        } else if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            debug!(layer = cx.layer, path = ?cx.entry, "skipped device node or fifo");
            st.stats.skipped_devices += 1;
            return Ok(());
        } else {
            return Err(cx.bad(format!("unsupported tar entry type {kind:?}")));
        }
        st.record(rel);
        Ok(())
    }

    fn write_file<R: Read>(
        &mut self,
        st: &mut LayerState,
        cx: &Ctx,
        rel: &Path,
        entry: &mut tar::Entry<R>,
        gap: &Gap,
    ) -> Result<(), UnpackError> {
        let max = self.limits.max_total_bytes;
        // For GNU sparse files the header's real size is what gets written, not the stored size.
        let declared = if entry.header().entry_type().is_gnu_sparse() {
            entry.header().size().map_err(|e| cx.corrupt(e))?
        } else {
            entry.size()
        };
        if self.bytes.saturating_add(declared) > max {
            return Err(cx.too_large(max));
        }
        let meta = Meta::read(cx, entry)?;
        let (dir, name) = self.create_parent(cx, rel)?;
        remove_at(&dir, name).map_err(|e| self.io(rel, e))?;
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        let mut file =
            File::from(openat(&dir, name, flags, Mode::from_bits_truncate(0o600)).map_err(|e| self.io(rel, e))?);

        let _content = gap.reading_content();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(cx.corrupt(e)),
            };
            // Counted as written, not as declared: the header may lie (sparse maps, decompression bombs).
            self.bytes += n as u64;
            st.stats.bytes += n as u64;
            if self.bytes > max {
                return Err(cx.too_large(max));
            }
            file.write_all(&buf[..n]).map_err(|e| self.io(rel, e))?;
        }
        meta.apply_to_fd(self, rel, file.as_raw_fd())?;
        stat::futimens(file.as_raw_fd(), &meta.mtime, &meta.mtime).map_err(|e| self.io(rel, e))
    }

    fn make_dir<R: Read>(
        &self,
        st: &mut LayerState,
        cx: &Ctx,
        rel: &Path,
        entry: &mut tar::Entry<R>,
    ) -> Result<(), UnpackError> {
        let meta = Meta::read(cx, entry)?;
        let dir = if rel.as_os_str().is_empty() {
            self.root_fd.try_clone().map_err(|e| self.io(rel, e))?
        } else {
            let (parent, name) = self.create_parent(cx, rel)?;
            match open_dir(&parent, name) {
                // An existing directory is merged into, keeping what lower layers put there.
                Ok(fd) => fd,
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => {
                    remove_at(&parent, name).map_err(|e| self.io(rel, e))?;
                    stat::mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.io(rel, e))?;
                    open_dir(&parent, name).map_err(|e| self.io(rel, e))?
                }
                Err(e) => return Err(self.io(rel, e)),
            }
        };
        meta.apply_to_fd(self, rel, dir.as_raw_fd())?;
        // Entries unpacked into the directory later would bump its mtime, so it is set at the end of the layer.
        st.dir_times.push((rel.to_owned(), meta.mtime));
        Ok(())
    }

    fn make_symlink<R: Read>(&self, cx: &Ctx, rel: &Path, entry: &mut tar::Entry<R>) -> Result<(), UnpackError> {
        let target = entry.link_name_bytes().ok_or_else(|| cx.bad("symlink entry has no target"))?.into_owned();
        let meta = Meta::read(cx, entry)?;
        let (dir, name) = self.create_parent(cx, rel)?;
        let io = |e: Errno| self.io(rel, e);
        remove_at(&dir, name).map_err(io)?;
        unistd::symlinkat(OsStr::from_bytes(&target), Some(dir.as_raw_fd()), name).map_err(io)?;
        unistd::fchownat(Some(dir.as_raw_fd()), name, Some(meta.uid), Some(meta.gid), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(io)?;
        if !meta.xattrs.is_empty() {
            // No descriptor can carry xattrs for a symlink; the parents were just resolved without following
            // symlinks, and lsetxattr does not follow the final one.
            let host_path = self.root.join(rel);
            for (key, value) in &meta.xattrs {
                self.xattr_result(rel, key, lsetxattr(&host_path, key, value))?;
            }
        }
        stat::utimensat(Some(dir.as_raw_fd()), name, &meta.mtime, &meta.mtime, UtimensatFlags::NoFollowSymlink)
            .map_err(io)
    }

    fn make_hard_link<R: Read>(&self, cx: &Ctx, rel: &Path, entry: &mut tar::Entry<R>) -> Result<(), UnpackError> {
        let raw = entry.link_name_bytes().ok_or_else(|| cx.bad("hard link entry has no target"))?.into_owned();
        let target = normalize(&raw).map_err(|bad| bad.into_error(cx, "hard link target"))?;
        if target == rel {
            // tar's way of saying "this file": nothing to do, and removing it first would lose it.
            return Ok(());
        }
        let Some(target_name) = target.file_name() else {
            return Err(cx.bad("hard link target is the root directory"));
        };
        let missing = || cx.bad(format!("hard link target {target:?} does not exist"));
        let target_dir = match self.walk(parent_of(&target), false)? {
            Walk::Dir(fd) => fd,
            Walk::Missing => return Err(missing()),
            blocked => return Err(blocked.into_error(cx, "hard link target")),
        };
        match stat::fstatat(Some(target_dir.as_raw_fd()), target_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if is_dir(&st) => return Err(cx.bad(format!("hard link target {target:?} is a directory"))),
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(missing()),
            Err(e) => return Err(self.io(&target, e)),
        }
        let (dir, name) = self.create_parent(cx, rel)?;
        remove_at(&dir, name).map_err(|e| self.io(rel, e))?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself, never resolved.
        unistd::linkat(Some(target_dir.as_raw_fd()), target_name, Some(dir.as_raw_fd()), name, AtFlags::empty())
            .map_err(|e| self.io(rel, e))
    }

    /// Applies `.wh.<hidden>` at `rel`: removes `hidden` (or, for the opaque marker, the directory's children) as
    /// far as lower layers wrote it.
    fn whiteout(&self, st: &mut LayerState, cx: &Ctx, rel: &Path, hidden: &[u8]) -> Result<(), UnpackError> {
        let name = rel.file_name().unwrap_or_default().as_bytes();
        if name != OPAQUE_MARKER && name.starts_with(AUFS_META_PREFIX) {
            debug!(layer = cx.layer, path = ?cx.entry, "skipped aufs metadata");
            return Ok(());
        }
        match hidden {
            b"" | b"." => return Err(cx.bad("whiteout does not name anything")),
            b".." => return Err(cx.escape("whiteout names `..`")),
            _ => {}
        }
        st.stats.whiteouts += 1;
        let parent = parent_of(rel);
        let dir = match self.walk(parent, false)? {
            Walk::Dir(fd) => fd,
            // Nothing below was ever unpacked, so there is nothing to hide.
            Walk::Missing => return Ok(()),
            blocked => return Err(blocked.into_error(cx, "whiteout")),
        };
        if name == OPAQUE_MARKER {
            return st.prune_lower(&dir, parent).map_err(|e| self.io(parent, e));
        }
        let hidden = OsStr::from_bytes(hidden);
        let target = parent.join(hidden);
        if !st.touched(&target) {
            return remove_at(&dir, hidden).map_err(|e| self.io(&target, e));
        }
        // This layer also writes below the whited-out name: keep its own entries, drop the lower ones.
        match open_dir(&dir, hidden) {
            Ok(sub) => st.prune_lower(&sub, &target).map_err(|e| self.io(&target, e)),
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => Ok(()),
            Err(e) => Err(self.io(&target, e)),
        }
    }

    /// Sets the mtimes of the directories this layer created or updated, now that nothing more is written to them.
    fn finish_dir_times(&self, st: &LayerState) -> Result<(), UnpackError> {
        for (rel, mtime) in &st.dir_times {
            let io = |e: Errno| self.io(rel, e);
            let Some(name) = rel.file_name() else {
                stat::futimens(self.root_fd.as_raw_fd(), mtime, mtime).map_err(io)?;
                continue;
            };
            // A later entry of the layer may have replaced the directory or one of its parents; then skip it.
            let Walk::Dir(dir) = self.walk(parent_of(rel), false)? else { continue };
            match stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_dir(&st) => {
                    stat::utimensat(Some(dir.as_raw_fd()), name, mtime, mtime, UtimensatFlags::NoFollowSymlink)
                        .map_err(io)?;
                }
                Ok(_) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(())
    }

    /// Opens the directory that will hold `rel`, creating missing parents (mode 0755, as tar does).
    fn create_parent<'r>(&self, cx: &Ctx, rel: &'r Path) -> Result<(OwnedFd, &'r OsStr), UnpackError> {
        let Some(name) = rel.file_name() else {
            return Err(cx.bad("names the root directory itself but is not a directory"));
        };
        match self.walk(parent_of(rel), true)? {
            Walk::Dir(fd) => Ok((fd, name)),
            Walk::Missing => Err(self.io(parent_of(rel), Errno::ENOENT)),
            blocked => Err(blocked.into_error(cx, "entry")),
        }
    }

    /// Opens directory `rel_dir` (normalised, relative to the root) one component at a time, never following a
    /// symlink. With `create`, missing directories are made; otherwise the walk stops at the first one.
    fn walk(&self, rel_dir: &Path, create: bool) -> Result<Walk, UnpackError> {
        let mut dir = self.root_fd.try_clone().map_err(|e| self.io(Path::new(""), e))?;
        let mut at = PathBuf::new();
        for name in rel_dir.iter() {
            at.push(name);
            dir = match open_dir(&dir, name) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    match stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.io(&at, e)),
                    }
                    let fd = open_dir(&dir, name).map_err(|e| self.io(&at, e))?;
                    // mkdirat honours the umask; implicit parents are 0755 whatever it is.
                    stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(0o755)).map_err(|e| self.io(&at, e))?;
                    fd
                }
                Err(Errno::ENOENT) => return Ok(Walk::Missing),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Ok(match fcntl::readlinkat(Some(dir.as_raw_fd()), name) {
                        Ok(target) => Walk::Symlink { at, target },
                        Err(_) => Walk::NotDir { at },
                    });
                }
                Err(e) => return Err(self.io(&at, e)),
            };
        }
        Ok(Walk::Dir(dir))
    }

    fn xattr_result(&self, rel: &Path, key: &CStr, result: io::Result<()>) -> Result<(), UnpackError> {
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                debug!(path = ?rel, xattr = ?key, "filesystem does not support this xattr, skipped");
                Ok(())
            }
            Err(e) => Err(self.io(rel, e)),
        }
    }

    fn io(&self, rel: &Path, source: impl Into<io::Error>) -> UnpackError {
        UnpackError::Io { path: self.root.join(rel), source: source.into() }
    }
}

/// The layer and entry an error is about.
struct Ctx<'a> {
    layer: &'a str,
    entry: &'a Path,
}

impl Ctx<'_> {
    fn escape(&self, why: impl Into<String>) -> UnpackError {
        UnpackError::PathEscape { layer: self.layer.to_owned(), path: self.entry.to_owned(), why: why.into() }
    }

    fn bad(&self, why: impl Into<String>) -> UnpackError {
        UnpackError::BadEntry { layer: self.layer.to_owned(), path: self.entry.to_owned(), why: why.into() }
    }

    fn too_large(&self, limit: u64) -> UnpackError {
        UnpackError::TooLarge { layer: self.layer.to_owned(), path: self.entry.to_owned(), limit }
    }

    fn corrupt(&self, source: io::Error) -> UnpackError {
        UnpackError::Corrupt { layer: self.layer.to_owned(), source }
    }
}

/// What one layer has done so far.
#[derive(Default)]
struct LayerState {
    /// Paths of the entries this layer created.
    written: HashSet<PathBuf>,
    /// Every parent of those paths: directories this layer writes into.
    parents: HashSet<PathBuf>,
    /// Directory mtimes to set once the layer is complete.
    dir_times: Vec<(PathBuf, TimeSpec)>,
    stats: LayerStats,
}

impl LayerState {
    fn record(&mut self, rel: PathBuf) {
        for parent in rel.ancestors().skip(1) {
            if !self.parents.insert(parent.to_owned()) {
                break;
            }
        }
        self.written.insert(rel);
    }

    /// Whether this layer wrote `rel` or something below it.
    fn touched(&self, rel: &Path) -> bool {
        self.written.contains(rel) || self.parents.contains(rel)
    }

    /// Removes from directory `dir` (at `rel_dir`) everything lower layers put there, recursively keeping what this
    /// layer wrote.
    fn prune_lower(&self, dir: &OwnedFd, rel_dir: &Path) -> nix::Result<()> {
        for name in list_dir(dir)? {
            let child = rel_dir.join(&name);
            if !self.touched(&child) {
                remove_at(dir, &name)?;
                continue;
            }
            match open_dir(dir, &name) {
                Ok(sub) => self.prune_lower(&sub, &child)?,
                Err(Errno::ELOOP | Errno::ENOTDIR) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Result of resolving a directory path under the root.
enum Walk {
    Dir(OwnedFd),
    Missing,
    Symlink { at: PathBuf, target: OsString },
    NotDir { at: PathBuf },
}

impl Walk {
    /// The error for a walk that hit a symlink or a non-directory; `what` says whose path it was.
    fn into_error(self, cx: &Ctx, what: &str) -> UnpackError {
        match self {
            Walk::Symlink { at, target } => cx.escape(format!(
                "{what} path goes through {at:?}, a symlink (to {target:?}); unpacking never follows symlinks"
            )),
            Walk::NotDir { at } => cx.bad(format!("{what} path goes through {at:?}, which is not a directory")),
            Walk::Dir(_) | Walk::Missing => cx.bad(format!("{what} path cannot be resolved")),
        }
    }
}

/// Why a path from a tar entry was refused.
enum BadPath {
    DotDot,
    Nul,
    TooLong,
}

impl BadPath {
    fn into_error(self, cx: &Ctx, what: &str) -> UnpackError {
        match self {
            BadPath::DotDot => cx.escape(format!("{what} has a `..` component")),
            BadPath::Nul => cx.bad(format!("{what} contains a NUL byte")),
            BadPath::TooLong => cx.bad(format!("{what} is longer than {MAX_PATH_BYTES} bytes")),
        }
    }
}

/// Turns a tar path into one relative to the root: strips leading `/` and `.` components, refuses `..`.
fn normalize(raw: &[u8]) -> Result<PathBuf, BadPath> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(BadPath::TooLong);
    }
    if raw.contains(&0) {
        return Err(BadPath::Nul);
    }
    let mut rel = PathBuf::new();
    for component in Path::new(OsStr::from_bytes(raw)).components() {
        match component {
            Component::Normal(name) => rel.push(name),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => return Err(BadPath::DotDot),
        }
    }
    Ok(rel)
}

fn parent_of(rel: &Path) -> &Path {
    rel.parent().unwrap_or(Path::new(""))
}

/// Ownership, permissions, mtime and xattrs of an entry.
struct Meta {
    mode: Mode,
    uid: Uid,
    gid: Gid,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl Meta {
    fn read<R: Read>(cx: &Ctx, entry: &mut tar::Entry<R>) -> Result<Self, UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| cx.corrupt(e))? & 0o7777;
        // The tar crate already applied PAX `uid`/`gid` records to the header.
        let id = |value: u64, what: &str| {
            u32::try_from(value)
                .ok()
                .filter(|&id| id != u32::MAX)
                .ok_or_else(|| cx.bad(format!("{what} {value} is out of range")))
        };
        let uid = Uid::from_raw(id(header.uid().map_err(|e| cx.corrupt(e))?, "uid")?);
        let gid = Gid::from_raw(id(header.gid().map_err(|e| cx.corrupt(e))?, "gid")?);
        let secs = header.mtime().map_err(|e| cx.corrupt(e))?;
        let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(|e| cx.corrupt(e))? {
            for record in records {
                let record = record.map_err(|e| cx.corrupt(e))?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    mtime = parse_pax_time(record.value_bytes()).unwrap_or(mtime);
                } else if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                    let name = CString::new(name).map_err(|_| cx.bad("xattr name contains a NUL byte"))?;
                    xattrs.push((name, record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Self { mode: Mode::from_bits_truncate(mode), uid, gid, mtime, xattrs })
    }

    /// Sets owner, mode and xattrs of a file or directory, in that order: chown clears setuid/setgid bits and file
    /// capabilities (`security.capability`), so those must come after it.
    fn apply_to_fd(&self, u: &Unpacker, rel: &Path, fd: RawFd) -> Result<(), UnpackError> {
        unistd::fchown(fd, Some(self.uid), Some(self.gid)).map_err(|e| u.io(rel, e))?;
        stat::fchmod(fd, self.mode).map_err(|e| u.io(rel, e))?;
        for (key, value) in &self.xattrs {
            u.xattr_result(rel, key, fsetxattr(fd, key, value))?;
        }
        Ok(())
    }
}

/// Parses a PAX time (`1700000000.5`, `-1.25`) into seconds and nanoseconds.
fn parse_pax_time(value: &[u8]) -> Option<TimeSpec> {
    let value = std::str::from_utf8(value).ok()?;
    let (secs, frac) = value.split_once('.').unwrap_or((value, ""));
    let negative = secs.starts_with('-');
    let mut secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if negative && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(TimeSpec::new(secs, nanos))
}

/// Counts decompressed bytes that are not file content, refusing more than [`GAP_MAX_BYTES`] between entries.
#[derive(Default)]
struct Gap {
    bytes: Cell<u64>,
    in_content: Cell<bool>,
}

impl Gap {
    fn reading_content(&self) -> ContentGuard<'_> {
        self.in_content.set(true);
        ContentGuard(self)
    }
}

/// Marks reads as file content (limited elsewhere) until dropped.
struct ContentGuard<'a>(&'a Gap);

impl Drop for ContentGuard<'_> {
    fn drop(&mut self) {
        self.0.in_content.set(false);
    }
}

/// The decompressed layer, with non-content bytes counted into a [`Gap`].
struct Guarded<R> {
    inner: R,
    gap: Rc<Gap>,
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.gap.in_content.get() {
            let total = self.gap.bytes.get() + n as u64;
            self.gap.bytes.set(total);
            if total > GAP_MAX_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "more than {} MiB of tar metadata or skipped data between two entries",
                        GAP_MAX_BYTES >> 20
                    ),
                ));
            }
        }
        Ok(n)
    }
}

fn openat(dir: &OwnedFd, name: &OsStr, flags: OFlag, mode: Mode) -> nix::Result<OwnedFd> {
    let fd = fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens child directory `name` of `dir`; a symlink fails with `ELOOP`, a non-directory with `ENOTDIR`.
fn open_dir(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(dir, name, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW, Mode::empty())
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR
}

/// Removes `name` from `dir` whatever it is (a directory with everything below it); absent is fine.
fn remove_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<()> {
    match stat::fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if is_dir(&st) => {
            let sub = open_dir(dir, name)?;
            for child in list_dir(&sub)? {
                remove_at(&sub, &child)?;
            }
            unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        }
        Ok(_) => unistd::unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir),
    }
}

/// Names in directory `dir`, without `.` and `..`.
fn list_dir(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let mut listing = Dir::openat(
        Some(dir.as_raw_fd()),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            names.push(OsString::from(OsStr::from_bytes(&name)));
        }
    }
    Ok(names)
}

fn fsetxattr(fd: RawFd, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `key` is NUL-terminated, `value` is a live slice of `value.len()` bytes, `fd` is open.
    let rc = unsafe { libc::fsetxattr(fd, key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lsetxattr(path: &Path, key: &CStr, value: &[u8]) -> io::Result<()> {
    let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` and `key` are NUL-terminated, `value` is a live slice of `value.len()` bytes.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use tar::{EntryType, Header};

    const MTIME: u64 = 1_600_000_000;

    fn header(kind: EntryType, mode: u32, size: u64) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h
    }

    /// A layer under construction.
    struct Layer(tar::Builder<Vec<u8>>);

    impl Layer {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn file(self, path: &str, data: &[u8]) -> Self {
            self.file_with(path, data, |_| {})
        }

        fn file_with(mut self, path: &str, data: &[u8], edit: impl FnOnce(&mut Header)) -> Self {
            let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
            edit(&mut h);
            self.0.append_data(&mut h, path, data).unwrap();
            self
        }

        fn dir(self, path: &str) -> Self {
            self.dir_with(path, |_| {})
        }

        fn dir_with(mut self, path: &str, edit: impl FnOnce(&mut Header)) -> Self {
            let mut h = header(EntryType::Directory, 0o755, 0);
            edit(&mut h);
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }

        fn symlink(mut self, path: &str, target: impl AsRef<Path>) -> Self {
            let mut h = header(EntryType::Symlink, 0o777, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        fn hard_link(mut self, path: &str, target: impl AsRef<Path>) -> Self {
            let mut h = header(EntryType::Link, 0o644, 0);
            self.0.append_link(&mut h, path, target).unwrap();
            self
        }

        fn device(mut self, path: &str, kind: EntryType) -> Self {
            let mut h = header(kind, 0o666, 0);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            self.0.append_data(&mut h, path, io::empty()).unwrap();
            self
        }

        /// Writes `name` into the header verbatim, bypassing the tar crate's refusal of `..` and absolute paths.
        fn raw(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
            let mut h = header(kind, 0o644, data.len() as u64);
            let old = h.as_old_mut();
            old.name = [0; 100];
            old.name[..name.len()].copy_from_slice(name);
            old.linkname = [0; 100];
            old.linkname[..link.len()].copy_from_slice(link);
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }

        /// Adds PAX records describing the next entry.
        fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
            let mut data = Vec::new();
            for (key, value) in records {
                // "<len> <key>=<value>\n", where <len> counts its own digits too.
                let body = key.len() + value.len() + 3;
                let mut len = body;
                while body + len.to_string().len() != len {
                    len = body + len.to_string().len();
                }
                data.extend_from_slice(format!("{len} {key}=").as_bytes());
                data.extend_from_slice(value);
                data.push(b'\n');
            }
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            self.0.append_data(&mut h, "PaxHeaders/entry", &data[..]).unwrap();
            self
        }

        fn tar(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    /// A root to unpack into, next to an `outside` directory that hostile layers aim at.
    struct Fixture {
        tmp: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        outside_before: BTreeMap<PathBuf, String>,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let outside = tmp.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("victim"), "safe").unwrap();
        let outside_before = snapshot(&outside);
        Fixture { tmp, root, outside, outside_before }
    }

    impl Fixture {
        fn unpacker(&self) -> Unpacker {
            self.unpacker_with(Limits::default())
        }

        fn unpacker_with(&self, limits: Limits) -> Unpacker {
            Unpacker::new(&self.root, limits).unwrap()
        }

        fn assert_outside_untouched(&self) {
            assert_eq!(snapshot(&self.outside), self.outside_before, "something changed outside the root");
            let siblings: BTreeSet<_> =
                fs::read_dir(self.tmp.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
            assert_eq!(siblings, BTreeSet::from(["outside".to_owned(), "root".to_owned()]));
        }

        fn tree(&self) -> Vec<String> {
            snapshot(&self.root).into_keys().map(|p| p.to_string_lossy().into_owned()).collect()
        }
    }

    /// Every path below `dir` with a description of what it is, never following symlinks.
    fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
        fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(base).unwrap().to_owned();
                if meta.is_dir() {
                    out.insert(rel, format!("dir {:o}", meta.mode()));
                    walk(base, &path, out);
                } else if meta.is_symlink() {
                    out.insert(rel, format!("symlink to {:?}", fs::read_link(&path).unwrap()));
                } else {
                    out.insert(rel, format!("file {:o} {:?}", meta.mode(), fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(dir, dir, &mut out);
        out
    }

    fn apply(u: &mut Unpacker, layer: Vec<u8>) -> Result<LayerStats, UnpackError> {
        u.apply(&layer[..], Compression::None, "test-layer")
    }

    #[test]
    fn dot_dot_paths_are_refused() {
        for hostile in [&b"../escape"[..], b"a/../../escape", b"/../escape", b"./../outside/victim", b"a/b/../c"] {
            let fx = fixture();
            let mut u = fx.unpacker();
            let layer = Layer::new().raw(hostile, EntryType::Regular, b"", b"pwned").tar();
            let err = apply(&mut u, layer).unwrap_err();
            assert!(matches!(err, UnpackError::PathEscape { .. }), "{hostile:?}: {err}");
            fx.assert_outside_untouched();
        }
    }

    #[test]
    fn absolute_paths_land_inside_the_root() {
        let fx = fixture();
        let mut u = fx.unpacker();
        apply(&mut u, Layer::new().raw(b"/etc/x", EntryType::Regular, b"", b"inside").tar()).unwrap();
        assert_eq!(fs::read(fx.root.join("etc/x")).unwrap(), b"inside");
        assert_eq!(fs::metadata(fx.root.join("etc")).unwrap().mode() & 0o7777, 0o755);
        fx.assert_outside_untouched();
    }

    #[test]
    fn symlink_in_the_same_layer_is_not_followed() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let layer = Layer::new().symlink("link", &fx.outside).file("link/file", b"pwned").tar();
        let err = apply(&mut u, layer).unwrap_err();
        assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
        assert!(err.to_string().contains("\"link\""), "{err}");
        assert_eq!(fs::read_link(fx.root.join("link")).unwrap(), fx.outside);
        fx.assert_outside_untouched();
    }

    #[test]
    fn symlink_from_a_lower_layer_is_not_followed() {
        let fx = fixture();
        let hostile = [
            Layer::new().file("etc/passwd", b"pwned").tar(),
            Layer::new().file("up/victim", b"pwned").tar(),
            Layer::new().dir("etc/sub").tar(),
            Layer::new().raw(b"/etc/victim", EntryType::Regular, b"", b"pwned").tar(),
        ];
        for layer in hostile {
            let mut u = fx.unpacker();
            let lower = Layer::new().symlink("etc", &fx.outside).symlink("up", "../outside").tar();
            apply(&mut u, lower).unwrap();
            let err = apply(&mut u, layer).unwrap_err();
            assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
            fx.assert_outside_untouched();
        }
    }

    #[test]
    fn replacing_a_symlink_does_not_write_through_it() {
        let fx = fixture();
        let mut u = fx.unpacker();
        apply(&mut u, Layer::new().symlink("f", fx.outside.join("victim")).symlink("d", &fx.outside).tar()).unwrap();
        apply(&mut u, Layer::new().file("f", b"new").dir("d").file("d/victim", b"new").tar()).unwrap();
        assert_eq!(fs::read(fx.root.join("f")).unwrap(), b"new");
        assert!(fs::symlink_metadata(fx.root.join("d")).unwrap().is_dir());
        assert_eq!(fs::read(fx.root.join("d/victim")).unwrap(), b"new");
        fx.assert_outside_untouched();
    }

    #[test]
    fn hard_links_must_stay_inside() {
        let fx = fixture();
        let cases = [
            (Layer::new().hard_link("x", "../../etc/passwd").tar(), "escape"),
            (Layer::new().hard_link("x", "../outside/victim").tar(), "escape"),
            (Layer::new().hard_link("x", "hostdir/victim").tar(), "escape"),
            // Absolute targets are taken relative to the root, where there is no passwd.
            (Layer::new().hard_link("x", "/etc/passwd").tar(), "bad"),
            (Layer::new().hard_link("x", fx.outside.join("victim")).tar(), "bad"),
        ];
        for (layer, expect) in cases {
            let mut u = fx.unpacker();
            apply(&mut u, Layer::new().symlink("hostdir", &fx.outside).tar()).unwrap();
            let err = apply(&mut u, layer).unwrap_err();
            match expect {
                "escape" => assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}"),
                _ => assert!(matches!(err, UnpackError::BadEntry { .. }), "{err}"),
            }
            assert!(fs::symlink_metadata(fx.root.join("x")).is_err());
            assert_eq!(fs::metadata(fx.outside.join("victim")).unwrap().nlink(), 1);
            fx.assert_outside_untouched();
        }
    }

    #[test]
    fn hard_links_to_earlier_entries_work() {
        let fx = fixture();
        let mut u = fx.unpacker();
        apply(&mut u, Layer::new().file("bin/busybox", b"bb").symlink("l", "/nowhere").tar()).unwrap();
        apply(&mut u, Layer::new().hard_link("bin/sh", "/bin/busybox").hard_link("l2", "l").tar()).unwrap();
        let (a, b) =
            (fs::metadata(fx.root.join("bin/busybox")).unwrap(), fs::metadata(fx.root.join("bin/sh")).unwrap());
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        assert_eq!(fs::read_link(fx.root.join("l2")).unwrap(), Path::new("/nowhere"));
        let err = apply(&mut u, Layer::new().hard_link("d", "bin").tar()).unwrap_err();
        assert!(matches!(err, UnpackError::BadEntry { .. }), "{err}");
    }

    #[test]
    fn total_size_is_bounded_across_layers() {
        let fx = fixture();
        let mut u = fx.unpacker_with(Limits { max_total_bytes: 10, ..Limits::default() });
        apply(&mut u, Layer::new().file("a", b"123456").tar()).unwrap();
        let err = apply(&mut u, Layer::new().file("b", b"123456").tar()).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { limit: 10, .. }), "{err}");
        assert!(err.to_string().contains("--max-image-size"), "{err}");
        assert_eq!(u.totals().0, 6);
        fx.assert_outside_untouched();
    }

    #[test]
    fn entry_count_is_bounded_across_layers() {
        let fx = fixture();
        let mut u = fx.unpacker_with(Limits { max_entries: 3, ..Limits::default() });
        assert_eq!(apply(&mut u, Layer::new().dir("a").file("a/b", b"").tar()).unwrap().entries, 2);
        let err = apply(&mut u, Layer::new().file("c", b"").file("d", b"").tar()).unwrap_err();
        assert!(matches!(err, UnpackError::TooManyEntries { limit: 3, ref path, .. } if path == Path::new("d")));
        assert_eq!(u.totals().1, 3);
    }

    #[test]
    fn data_outside_files_counts_towards_the_size_limit() {
        let fx = fixture();
        let mut u = fx.unpacker_with(Limits { max_total_bytes: 1000, ..Limits::default() });
        let layer = Layer::new().raw(b"dev/zero", EntryType::Char, b"", &vec![0; 200 * 1024]).file("x", b"").tar();
        let err = apply(&mut u, layer).unwrap_err();
        assert!(matches!(err, UnpackError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn gzip_and_zstd_layers() {
        use flate2::write::GzEncoder;
        let fx = fixture();
        let mut u = fx.unpacker();
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&Layer::new().file("from-gzip", b"gz").tar()).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&Layer::new().file("from-zstd", b"zst").tar()[..], 3).unwrap();
        assert_eq!(Compression::sniff(&gz), Compression::Gzip);
        assert_eq!(Compression::sniff(&zst), Compression::Zstd);
        u.apply(&gz[..], Compression::Gzip, "gz").unwrap();
        u.apply(&zst[..], Compression::Zstd, "zst").unwrap();
        assert_eq!(fs::read(fx.root.join("from-gzip")).unwrap(), b"gz");
        assert_eq!(fs::read(fx.root.join("from-zstd")).unwrap(), b"zst");
        assert_eq!(u.totals(), (5, 2));
    }

    #[test]
    fn media_types_and_magic_numbers() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(Compression::None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Compression::Zstd)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar", Some(Compression::None)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Some(Compression::Zstd)),
            ("application/vnd.docker.image.rootfs.diff.tar.gzip", Some(Compression::Gzip)),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Some(Compression::Gzip)),
            ("application/vnd.oci.image.config.v1+json", None),
        ];
        for (mt, expected) in cases {
            assert_eq!(Compression::from_media_type(mt), expected, "{mt}");
        }
        assert_eq!(Compression::sniff(b""), Compression::None);
        assert_eq!(Compression::sniff(b"usr/"), Compression::None);
    }

    #[test]
    fn whiteouts_and_opaque_directories_across_three_layers() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let lower = Layer::new()
            .dir("a")
            .file("a/keep", b"")
            .file("a/gone", b"")
            .dir("b")
            .file("b/x", b"")
            .dir("c")
            .file("c/old", b"")
            .file("c/sub/deep", b"")
            .file("c/keepdir/lower", b"")
            .dir("d")
            .file("d/old", b"")
            .file("f", b"");
        apply(&mut u, lower.tar()).unwrap();
        let middle = Layer::new()
            .file("a/.wh.gone", b"")
            .file(".wh.b", b"")
            // New entries first, the opaque marker after them: it must only hide what lower layers wrote.
            .file("c/new", b"")
            .file("c/keepdir/upper", b"")
            .file("c/.wh..wh..opq", b"")
            .file("d/.wh..wh..opq", b"")
            .file("d/new", b"")
            .file("e/.wh.nothing", b"")
            .file("a/.wh..wh.plnk", b"");
        assert_eq!(apply(&mut u, middle.tar()).unwrap().whiteouts, 5);
        // A whiteout only hides lower layers: `g` from this same layer stays.
        let upper = Layer::new().file(".wh.f", b"").file("b/y", b"").file("g", b"").file(".wh.g", b"");
        assert_eq!(apply(&mut u, upper.tar()).unwrap().whiteouts, 2);
        let expected = ["a", "a/keep", "b", "b/y", "c", "c/keepdir", "c/keepdir/upper", "c/new", "d", "d/new", "g"]
            .map(String::from);
        assert_eq!(fx.tree(), expected);
        fx.assert_outside_untouched();
    }

    #[test]
    fn whiteouts_do_not_follow_symlinks() {
        let fx = fixture();
        for marker in ["hostdir/.wh.victim", "hostdir/.wh..wh..opq"] {
            let mut u = fx.unpacker();
            apply(&mut u, Layer::new().symlink("hostdir", &fx.outside).tar()).unwrap();
            let err = apply(&mut u, Layer::new().file(marker, b"").tar()).unwrap_err();
            assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
            fx.assert_outside_untouched();
        }
        let mut u = fx.unpacker();
        let err = apply(&mut u, Layer::new().raw(b"x/.wh...", EntryType::Regular, b"", b"").tar()).unwrap_err();
        assert!(matches!(err, UnpackError::PathEscape { .. }), "{err}");
        // Whiting out the symlink itself removes the link, not its target.
        apply(&mut u, Layer::new().file(".wh.hostdir", b"").tar()).unwrap();
        assert!(fs::symlink_metadata(fx.root.join("hostdir")).is_err());
        fx.assert_outside_untouched();
    }

    #[test]
    fn type_changes_replace_lower_entries() {
        let fx = fixture();
        let mut u = fx.unpacker();
        apply(&mut u, Layer::new().file("x", b"file").dir("y").file("y/z", b"").tar()).unwrap();
        apply(&mut u, Layer::new().dir("x").file("x/inner", b"").file("y", b"now a file").tar()).unwrap();
        assert_eq!(fx.tree(), ["x", "x/inner", "y"].map(String::from));
        assert_eq!(fs::read(fx.root.join("y")).unwrap(), b"now a file");
    }

    #[test]
    fn permissions_ownership_and_times_are_kept() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let layer = Layer::new()
            .raw(b"./", EntryType::Directory, b"", b"")
            .file_with("bin/su", b"su", |h| {
                h.set_mode(0o4755);
                h.set_uid(1234);
                h.set_gid(5678);
            })
            .file_with("bin/wall", b"wall", |h| {
                h.set_mode(0o2755);
                h.set_gid(5);
            })
            .dir_with("tmp", |h| h.set_mode(0o1777))
            .file("tmp/x", b"")
            .dir_with("srv", |h| {
                h.set_mode(0o2770);
                h.set_uid(42);
            });
        let mut layer = layer;
        let mut h = header(EntryType::Symlink, 0o777, 0);
        h.set_uid(7);
        h.set_gid(8);
        layer.0.append_link(&mut h, "bin/link", "su").unwrap();
        apply(&mut u, layer.tar()).unwrap();

        let meta = |p: &str| fs::symlink_metadata(fx.root.join(p)).unwrap();
        let su = meta("bin/su");
        assert_eq!((su.mode() & 0o7777, su.uid(), su.gid()), (0o4755, 1234, 5678));
        assert_eq!((meta("bin/wall").mode() & 0o7777, meta("bin/wall").gid()), (0o2755, 5));
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!((meta("srv").mode() & 0o7777, meta("srv").uid()), (0o2770, 42));
        assert_eq!((meta("bin/link").uid(), meta("bin/link").gid()), (7, 8));
        // The raw "./" entry has mode 0644 and names the root itself.
        assert_eq!(fs::metadata(&fx.root).unwrap().mode() & 0o7777, 0o644);
        for p in ["bin/su", "tmp", "srv", "bin/link"] {
            assert_eq!(meta(p).mtime(), MTIME as i64, "{p}");
        }
    }

    #[test]
    fn pax_times_ids_and_xattrs_are_read() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let layer = Layer::new()
            .pax(&[
                ("mtime", b"1700000000.25"),
                ("uid", b"3000000"),
                ("SCHILY.xattr.user.test", b"hello"),
                // Unknown namespaces fail with EOPNOTSUPP, which is skipped rather than fatal.
                ("SCHILY.xattr.bogus.test", b"x"),
            ])
            .file("data", b"x");
        apply(&mut u, layer.tar()).unwrap();
        let meta = fs::metadata(fx.root.join("data")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec(), meta.uid()), (1_700_000_000, 250_000_000, 3_000_000));

        let probe = fx.tmp.path().join("probe");
        fs::write(&probe, "").unwrap();
        if lsetxattr(&probe, c"user.probe", b"1").is_err() {
            eprintln!("skipping the xattr assertion: the temporary filesystem has no user xattrs");
            return;
        }
        let path = CString::new(fx.root.join("data").as_os_str().as_bytes()).unwrap();
        let mut buf = [0u8; 64];
        // SAFETY: both strings are NUL-terminated and `buf` is a live buffer of `buf.len()` bytes.
        let n = unsafe { libc::lgetxattr(path.as_ptr(), c"user.test".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        assert_eq!(usize::try_from(n).ok().map(|n| &buf[..n]), Some(&b"hello"[..]));
    }

    #[test]
    fn pax_time_parsing() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(t("12"), Some((12, 0)));
        assert_eq!(t("12.5"), Some((12, 500_000_000)));
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("1.0000000019"), Some((1, 1)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
    }

    #[test]
    fn devices_and_fifos_are_skipped() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let layer = Layer::new()
            .device("dev/null", EntryType::Char)
            .device("dev/sda", EntryType::Block)
            .device("run/fifo", EntryType::Fifo)
            .file("etc/hostname", b"h");
        let stats = apply(&mut u, layer.tar()).unwrap();
        assert_eq!((stats.entries, stats.skipped_devices, stats.bytes), (4, 3, 1));
        assert_eq!(fx.tree(), ["etc", "etc/hostname"].map(String::from));
    }

    #[test]
    fn corrupt_layers_are_reported() {
        let fx = fixture();
        let mut u = fx.unpacker();
        let garbage = b"this is not a tar archive ".repeat(40);
        let err = u.apply(&garbage[..], Compression::None, "garbage").unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt { ref layer, .. } if layer == "garbage"), "{err}");
        let err = u.apply(&garbage[..], Compression::Zstd, "garbage").unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt { .. }), "{err}");

        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&Layer::new().file("big", &[7; 100_000]).tar()).unwrap();
        let gz = gz.finish().unwrap();
        let err = u.apply(&gz[..gz.len() / 2], Compression::Gzip, "truncated").unwrap_err();
        assert!(matches!(err, UnpackError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn root_must_be_an_existing_directory() {
        let fx = fixture();
        assert!(matches!(
            Unpacker::new(&fx.tmp.path().join("missing"), Limits::default()),
            Err(UnpackError::Io { .. })
        ));
        let file = fx.outside.join("victim");
        assert!(matches!(Unpacker::new(&file, Limits::default()), Err(UnpackError::Io { .. })));
    }
}
