//! Builds an ext4 filesystem image from a root filesystem directory with `mkfs.ext4 -d`, sized to its content.
//!
//! The image becomes a microVM's root disk, so it is made without loop mounts or root privileges: e2fsprogs
//! (1.43 or later) copies the directory straight into the new filesystem, keeping modes (setuid included), owners,
//! symlinks, hard links and extended attributes. The root directory itself is always `0755 root:root`
//! (mke2fs 1.47.0 does not copy the source directory's own mode).
//!
//! **Size.** The directory is walked once (with `symlink_metadata`, never following a symlink; hard links counted
//! once) to add up what ext4 will need for it: file contents rounded up to 4 KiB blocks, directory blocks, symlink
//! targets too long to live in the inode, and one 256-byte inode per entry. Free space on top of that is
//! [`Ext4Options::headroom_percent`] of the content, at least [`Ext4Options::min_headroom_mib`], and the inode count
//! (`-N`) gets the same headroom. ext4's own metadata (inode tables, bitmaps, group descriptors and their backups,
//! the journal) is computed the way mke2fs lays it out and added, so the headroom really is free afterwards. The
//! file is sparse: unused blocks cost no host disk.
//!
//! **Flags, and why.**
//! - `-T default -b 4096 -I 256`: without them mke2fs picks its "small" profile (1 KiB blocks, 128-byte inodes
//!   without room for nanosecond times or inline xattrs) for images under 512 MiB, which most templates are.
//! - `-m 0`: no blocks reserved for root; inside a sandbox everything runs as the same user anyway.
//! - The journal is **kept** (its size given explicitly with `-J size=`, so the estimate matches it). A sandbox VM
//!   can be killed at any moment (timeout, OOM, host crash) and its disk may be inspected or resumed afterwards;
//!   the journal makes that safe without an fsck. Its blocks are never written by mkfs here, so they cost nothing
//!   on the host until the guest uses them.
//! - `-E lazy_itable_init=0,lazy_journal_init=0`: otherwise every guest kernel that mounts the image starts a
//!   background thread zeroing inode tables, writing to every sandbox's disk. On a regular file mke2fs "zeroes"
//!   by punching holes, so this is free.
//! - `-E root_owner=0:0`: the root directory belongs to root, whoever runs the build.
//! - Reproducibility, as far as mke2fs allows: the UUID and directory hash seed are derived from a hash of the tree
//!   (names, types, modes, owners, sizes, mtimes) and the label, and `E2FSPROGS_FAKE_TIME` fixes the superblock
//!   times. Inode change times and the order in which mke2fs reads directories still vary, so two builds of the
//!   same tree are equivalent, not byte-identical.
//!
//! The image is written to `OUT.partial` (`out.with_extension("partial")`) and renamed into place, so `out` is
//! either complete or absent; the partial file is removed on every failure. This blocks for seconds to minutes:
//! call it from `spawn_blocking`.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use sha2::{Digest, Sha256};
use tracing::{debug, info};

/// ext4 block size used for every image.
const BLOCK: u64 = 4096;
/// On-disk inode size (`-I`): room for nanosecond timestamps and small xattrs.
const INODE_SIZE: u64 = 256;
/// Inodes ext4 reserves for itself (1..=10) plus `lost+found`.
const RESERVED_INODES: u64 = 11;
/// Blocks per block group with 4 KiB blocks (one block of bitmap, 8 bits per byte).
const BLOCKS_PER_GROUP: u64 = BLOCK * 8;
/// Group descriptor size with the `64bit` feature.
const DESC_SIZE: u64 = 64;
/// Longest symlink target stored inside the inode itself ("fast" symlink).
const FAST_SYMLINK_MAX: u64 = 59;
/// Headroom inodes are at least one per this many bytes of headroom space.
const BYTES_PER_SPARE_INODE: u64 = 16 * 1024;
/// Superblock times (`E2FSPROGS_FAKE_TIME`): 2000-01-01T00:00:00Z, the layer packer's epoch.
const FAKE_TIME: &str = "946684800";
/// Longest ext4 volume label, in bytes.
const MAX_LABEL_BYTES: usize = 16;

/// How much room to leave in an image beyond its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Options {
    /// Free space, as a percentage of the content size; free inodes, as a percentage of the entries.
    pub headroom_percent: u32,
    /// Free space at least this many MiB, however small the content.
    pub min_headroom_mib: u64,
    /// Volume label (at most 16 bytes), e.g. the template name.
    pub label: Option<String>,
}

impl Default for Ext4Options {
    fn default() -> Self {
        Self { headroom_percent: 20, min_headroom_mib: 64, label: None }
    }
}

/// What was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ext4Image {
    /// Size of the image file (the filesystem fills it), a multiple of 1 MiB.
    pub size_bytes: u64,
    /// Space the root filesystem's entries were estimated to take, before headroom and ext4 metadata.
    pub content_bytes: u64,
    /// Entries (distinct inodes) found in the root filesystem, the root directory included.
    pub entries: u64,
    /// Inodes the filesystem has (`-N`, rounded up by mke2fs to whole inode table blocks).
    pub inode_count: u64,
    /// Inodes in use after the copy: the entries plus ext4's reserved inodes and `lost+found`.
    pub inodes_used: u64,
    /// Free space left in the filesystem.
    pub free_bytes: u64,
}

/// Why an image could not be built. No partial image is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// `mkfs.ext4` is not installed.
    #[error("mkfs.ext4 not found in PATH, /usr/sbin or /sbin (install e2fsprogs: apt-get install e2fsprogs)")]
    MkfsMissing,
    /// `mkfs.ext4` could not be started.
    #[error("cannot run {program:?}")]
    MkfsSpawn {
        /// The program that was run.
        program: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// `mkfs.ext4` ran and failed.
    #[error("mkfs.ext4 failed ({status}): {stderr}")]
    MkfsFailed {
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr (and stdout), trimmed.
        stderr: String,
    },
    /// The root filesystem is not a directory.
    #[error("root filesystem {0:?} is not a directory")]
    NotADirectory(PathBuf),
    /// The label is longer than ext4 allows or contains a NUL byte.
    #[error("ext4 label {0:?} is invalid: at most {MAX_LABEL_BYTES} bytes, no NUL")]
    BadLabel(String),
    /// The new image's superblock does not look like ext4 (mke2fs misbehaved).
    #[error("{0:?} does not have an ext4 superblock after mkfs.ext4")]
    BadSuperblock(PathBuf),
    /// Reading the root filesystem or writing the image failed.
    #[error("cannot build ext4 image: I/O error on {path:?}")]
    Io {
        /// The path the operation was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// Builds an ext4 image of directory `rootfs` at `out` (replacing it), sized as described in the module docs.
pub fn build(rootfs: &Path, out: &Path, opts: &Ext4Options) -> Result<Ext4Image, Ext4Error> {
    build_with(find_program("mkfs.ext4").as_deref(), rootfs, out, opts)
}

/// [`build`] with the mkfs program given (`None`: not installed), so tests can stand in a missing or failing one.
fn build_with(mkfs: Option<&Path>, rootfs: &Path, out: &Path, opts: &Ext4Options) -> Result<Ext4Image, Ext4Error> {
    let label = opts.label.as_deref().unwrap_or("");
    if label.len() > MAX_LABEL_BYTES || label.contains('\0') {
        return Err(Ext4Error::BadLabel(label.to_owned()));
    }
    let usage = measure(rootfs)?;
    let plan = Plan::new(&usage, opts);
    debug!(
        rootfs = ?rootfs,
        content_bytes = usage.content_bytes(),
        entries = usage.inodes,
        size_bytes = plan.size_bytes(),
        inodes = plan.inodes,
        "ext4 image planned"
    );
    let mkfs = mkfs.ok_or(Ext4Error::MkfsMissing)?;

    let partial = Partial::create(out.with_extension("partial"), plan.size_bytes())?;
    let seed = usage.tree_hash(label);
    let mut cmd = Command::new(mkfs);
    cmd.args(["-F", "-q", "-t", "ext4", "-T", "default", "-b", "4096", "-I", "256", "-m", "0"])
        .arg("-N")
        .arg(plan.inodes.to_string())
        .arg("-J")
        .arg(format!("size={}", (plan.journal_blocks * BLOCK) >> 20))
        .arg("-U")
        .arg(uuid(&seed[..16]))
        .arg("-E")
        .arg(format!("root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,hash_seed={}", uuid(&seed[16..])));
    if !label.is_empty() {
        cmd.arg("-L").arg(label);
    }
    cmd.arg("-d")
        .arg(rootfs)
        .arg(&partial.path)
        .arg(plan.blocks.to_string())
        .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
        .env("SOURCE_DATE_EPOCH", FAKE_TIME)
        .stdin(Stdio::null());
    let output = cmd.output().map_err(|source| Ext4Error::MkfsSpawn { program: mkfs.to_owned(), source })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.trim().is_empty() {
            text = format!("{text}\n{}", stdout.trim()).trim().to_owned();
        }
        return Err(Ext4Error::MkfsFailed { status: output.status, stderr: text });
    }

    let sb = Superblock::read(&partial.path)?;
    let image = Ext4Image {
        size_bytes: plan.size_bytes(),
        content_bytes: usage.content_bytes(),
        entries: usage.inodes,
        inode_count: sb.inodes,
        inodes_used: sb.inodes - sb.free_inodes,
        free_bytes: sb.free_blocks * sb.block_size,
    };
    partial.commit(out)?;
    info!(
        image = ?out,
        size_bytes = image.size_bytes,
        free_bytes = image.free_bytes,
        inodes = image.inode_count,
        inodes_used = image.inodes_used,
        "ext4 image built"
    );
    Ok(image)
}

/// Finds an executable `name` in `PATH`, then in the sbin directories a non-login root `PATH` may lack.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// What a root filesystem needs in ext4, in blocks and inodes.
#[derive(Debug, Default)]
struct Usage {
    /// Data blocks of files, directories and slow symlinks.
    blocks: u64,
    /// Distinct inodes (hard links counted once), the root directory included.
    inodes: u64,
    /// Hash of the tree's names and metadata, for the UUID.
    hasher: Sha256,
}

impl Usage {
    fn content_bytes(&self) -> u64 {
        self.blocks * BLOCK
    }

    /// Counts one inode: its data blocks (directories are counted when listed) and its metadata in the hash.
    fn add(&mut self, meta: &fs::Metadata, symlink_target_len: u64, rel: &Path) {
        self.inodes += 1;
        let ft = meta.file_type();
        if ft.is_file() {
            self.blocks += meta.size().div_ceil(BLOCK);
        } else if ft.is_symlink() && symlink_target_len > FAST_SYMLINK_MAX {
            self.blocks += 1;
        }
        // Extended attributes that do not fit in the inode take a block, shared by identical sets; not counted:
        // they are rare in root filesystems and the metadata slack covers a few.
        self.hasher.update(rel.as_os_str().as_bytes());
        self.hasher.update([0]);
        // A directory's size depends on its history on the host filesystem, not on what it holds.
        let size = if ft.is_dir() { 0 } else { meta.size() };
        for field in [u64::from(meta.mode()), u64::from(meta.uid()), u64::from(meta.gid()), size, meta.mtime() as u64] {
            self.hasher.update(field.to_le_bytes());
        }
    }

    fn tree_hash(&self, label: &str) -> [u8; 32] {
        let mut hasher = self.hasher.clone();
        hasher.update(label.as_bytes());
        hasher.finalize().into()
    }
}

/// Walks `rootfs` without following symlinks and adds up what its entries need.
fn measure(rootfs: &Path) -> Result<Usage, Ext4Error> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Ext4Error::Io { path, source }
    };
    let meta = fs::symlink_metadata(rootfs).map_err(io(rootfs))?;
    if !meta.is_dir() {
        return Err(Ext4Error::NotADirectory(rootfs.to_owned()));
    }
    let mut usage = Usage::default();
    let mut seen_links = HashSet::new();
    // (host path, path relative to the root) of directories still to list.
    let mut stack = vec![(rootfs.to_owned(), PathBuf::new())];
    usage.add(&meta, 0, Path::new(""));
    while let Some((dir, rel)) = stack.pop() {
        let mut names: Vec<OsString> = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))? {
            names.push(entry.map_err(io(&dir))?.file_name());
        }
        names.sort();
        // `.` and `..` take 12 bytes each; each entry 8 bytes plus its name, padded to 4.
        let dir_bytes: u64 = 24 + names.iter().map(|n| (8 + n.len() as u64).next_multiple_of(4)).sum::<u64>();
        // Large directories also get hash-tree index blocks: about one per 500 leaf blocks, plus the root.
        let leaf_blocks = dir_bytes.div_ceil(BLOCK);
        usage.blocks += leaf_blocks + if leaf_blocks > 1 { 1 + leaf_blocks / 500 } else { 0 };
        for name in names {
            let path = dir.join(&name);
            let child_rel = rel.join(&name);
            let meta = fs::symlink_metadata(&path).map_err(io(&path))?;
            if !meta.is_dir() && meta.nlink() > 1 && !seen_links.insert((meta.dev(), meta.ino())) {
                // Another name of an inode already counted: only its directory entry costs anything.
                usage.hasher.update(child_rel.as_os_str().as_bytes());
                usage.hasher.update(b"\0link\0");
                continue;
            }
            let target_len =
                if meta.is_symlink() { fs::read_link(&path).map_err(io(&path))?.as_os_str().len() } else { 0 };
            usage.add(&meta, target_len as u64, &child_rel);
            if meta.is_dir() {
                stack.push((path, child_rel));
            }
        }
    }
    Ok(usage)
}

/// The filesystem geometry chosen for a [`Usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    /// Filesystem size in blocks (a whole number of MiB).
    blocks: u64,
    /// Inode count given to mke2fs.
    inodes: u64,
    /// Journal size in blocks.
    journal_blocks: u64,
}

impl Plan {
    fn new(usage: &Usage, opts: &Ext4Options) -> Self {
        let pct = u64::from(opts.headroom_percent);
        let headroom = (usage.content_bytes() * pct / 100).max(opts.min_headroom_mib << 20).div_ceil(BLOCK);
        let spare_inodes = (usage.inodes * pct / 100).max(headroom * BLOCK / BYTES_PER_SPARE_INODE);
        let inodes = usage.inodes + RESERVED_INODES + spare_inodes;
        let data = usage.blocks + headroom + 1; // + lost+found's block
                                                // Metadata depends on the size, which depends on the metadata: a few rounds settle it.
        let mut blocks = data;
        for _ in 0..4 {
            blocks = (data + metadata_blocks(blocks, inodes)).next_multiple_of((1 << 20) / BLOCK);
        }
        Self { blocks, inodes, journal_blocks: journal_blocks(blocks) }
    }

    fn size_bytes(&self) -> u64 {
        self.blocks * BLOCK
    }
}

/// Blocks mke2fs spends on metadata for a filesystem of `blocks` blocks and `inodes` inodes, with some slack.
fn metadata_blocks(blocks: u64, inodes: u64) -> u64 {
    let groups = blocks.div_ceil(BLOCKS_PER_GROUP).max(1);
    let desc_per_block = BLOCK / DESC_SIZE;
    let gdt = groups.div_ceil(desc_per_block);
    // Blocks reserved for growing the descriptor table (resize_inode), for up to 1024 times the size.
    let max_groups = (blocks * 1024).min(1 << 32).div_ceil(BLOCKS_PER_GROUP);
    let reserved_gdt = max_groups.div_ceil(desc_per_block).saturating_sub(gdt).min(BLOCK / 4);
    // sparse_super: superblock and descriptor copies in groups 0, 1 and powers of 3, 5 and 7.
    let copies = (0..groups).filter(|&g| has_super_backup(g)).count() as u64;
    let inode_tables = (inodes * INODE_SIZE).div_ceil(BLOCK) + groups; // rounding to whole blocks per group
    let bitmaps = 2 * groups;
    let slack = 256 + blocks / 200; // extent tree blocks, xattr blocks, resize inode, rounding: 1 MiB + 0.5%
    copies * (1 + gdt + reserved_gdt) + inode_tables + bitmaps + journal_blocks(blocks) + slack
}

fn has_super_backup(group: u64) -> bool {
    fn power_of(n: u64, base: u64) -> bool {
        let mut p = base;
        while p < n {
            p *= base;
        }
        p == n
    }
    group <= 1 || power_of(group, 3) || power_of(group, 5) || power_of(group, 7)
}

/// Journal size in blocks for a filesystem of `blocks` blocks (e2fsprogs' `ext2fs_default_journal_size` table).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..32_768 => 1024,
        32_768..262_144 => 4096,
        262_144..524_288 => 8192,
        524_288..4_194_304 => 16_384,
        4_194_304..8_388_608 => 32_768,
        8_388_608..16_777_216 => 65_536,
        16_777_216..33_554_432 => 131_072,
        _ => 262_144,
    }
}

/// Formats 16 hash bytes as a version-4-shaped UUID.
fn uuid(bytes: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The fields of an ext4 superblock this module reports.
struct Superblock {
    block_size: u64,
    inodes: u64,
    free_inodes: u64,
    free_blocks: u64,
}

impl Superblock {
    fn read(image: &Path) -> Result<Self, Ext4Error> {
        let io = |source| Ext4Error::Io { path: image.to_owned(), source };
        let mut file = File::open(image).map_err(io)?;
        file.seek(SeekFrom::Start(1024)).map_err(io)?;
        let mut sb = [0u8; 1024];
        file.read_exact(&mut sb).map_err(io)?;
        let u32_at = |off: usize| u64::from(u32::from_le_bytes(sb[off..off + 4].try_into().expect("4 bytes")));
        if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 || u32_at(24) > 6 {
            return Err(Ext4Error::BadSuperblock(image.to_owned()));
        }
        let incompat_64bit = u32_at(0x60) & 0x80 != 0;
        let free_hi = if incompat_64bit { u32_at(0x158) } else { 0 };
        Ok(Self {
            block_size: 1024 << u32_at(24),
            inodes: u32_at(0),
            free_inodes: u32_at(16),
            free_blocks: (free_hi << 32) | u32_at(12),
        })
    }
}

/// The image being written; removed when dropped unless [`commit`](Self::commit)ted.
struct Partial {
    path: PathBuf,
    committed: bool,
}

impl Partial {
    /// Creates a fresh sparse file of `size` bytes at `path`, replacing any leftover from an earlier run.
    fn create(path: PathBuf, size: u64) -> Result<Self, Ext4Error> {
        let io = |source| Ext4Error::Io { path: path.clone(), source };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let file = File::options().write(true).create_new(true).open(&path).map_err(io)?;
        let partial = Self { path: path.clone(), committed: false };
        file.set_len(size).map_err(io)?;
        Ok(partial)
    }

    fn commit(mut self, out: &Path) -> Result<(), Ext4Error> {
        File::open(&self.path)
            .and_then(|f| f.sync_all())
            .and_then(|()| fs::rename(&self.path, out))
            .map_err(|source| Ext4Error::Io { path: out.to_owned(), source })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// A root filesystem with the kinds of entries images have.
    fn sample_rootfs(root: &Path) {
        fs::create_dir_all(root.join("dir/sub/deep")).unwrap();
        fs::create_dir(root.join("empty")).unwrap();
        fs::write(root.join("dir/a.txt"), b"hello\n").unwrap();
        fs::write(root.join("dir/sub/deep/data.bin"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("dir/b"), b"b").unwrap();
        fs::hard_link(root.join("dir/a.txt"), root.join("dir/hard")).unwrap();
        symlink("dir/a.txt", root.join("link")).unwrap();
        symlink("/".to_owned() + &"x".repeat(200), root.join("dir/long-link")).unwrap();
        fs::write(root.join("suid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(root.join("dir/b"), Some(1000), Some(1001)).unwrap();
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new(find_program("debugfs").expect("debugfs installed"))
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs {request}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn inode_number(stat: &str) -> String {
        stat.split_whitespace().skip_while(|w| *w != "Inode:").nth(1).unwrap().to_owned()
    }

    #[test]
    fn builds_a_checkable_image_with_all_metadata() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        sample_rootfs(&root);
        let out = tmp.path().join("root.ext4");
        let opts = Ext4Options { label: Some("tartarus-test".into()), ..Default::default() };
        let image = build(&root, &out, &opts).unwrap();

        assert!(!out.with_extension("partial").exists());
        assert_eq!(fs::metadata(&out).unwrap().len(), image.size_bytes);
        assert_eq!(image.size_bytes % (1 << 20), 0);
        // root, dir, sub, deep, empty, a.txt(=hard), data.bin, b, link, long-link, suid
        assert_eq!(image.entries, 11);
        // Inodes 1..=10 are reserved (the root directory is inode 2), lost+found takes 11.
        assert_eq!(image.inodes_used, image.entries + 10);
        assert!(image.free_bytes >= 64 << 20, "{image:?}");
        assert!(image.free_bytes < 96 << 20, "too much headroom: {image:?}");
        assert!(image.inode_count >= image.inodes_used + 4096, "{image:?}");

        let fsck =
            Command::new(find_program("e2fsck").expect("e2fsck installed")).arg("-fn").arg(&out).output().unwrap();
        assert!(
            fsck.status.success(),
            "e2fsck: {}{}",
            String::from_utf8_lossy(&fsck.stdout),
            String::from_utf8_lossy(&fsck.stderr)
        );

        let listing = debugfs(&out, "ls -l /dir");
        let mut names: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().last()).collect();
        names.retain(|n| *n != "." && *n != "..");
        names.sort();
        assert_eq!(names, ["a.txt", "b", "hard", "long-link", "sub"]);

        let suid = debugfs(&out, "stat /suid");
        assert!(suid.contains("Mode:  04755"), "{suid}");
        let b = debugfs(&out, "stat /dir/b");
        assert!(b.contains("User:  1000   Group:  1001"), "{b}");
        let a = debugfs(&out, "stat /dir/a.txt");
        assert!(a.contains("Links: 2"), "{a}");
        assert_eq!(inode_number(&a), inode_number(&debugfs(&out, "stat /dir/hard")));
        let link = debugfs(&out, "stat /link");
        assert!(link.contains("Fast link dest: \"dir/a.txt\""), "{link}");
        assert_eq!(debugfs(&out, "cat /dir/a.txt"), "hello\n");
        assert_eq!(debugfs(&out, "cat /dir/sub/deep/data.bin").len(), 300_000);
        let root_dir = debugfs(&out, "stat /");
        assert!(root_dir.contains("User:     0   Group:     0"), "{root_dir}");

        let super_block = debugfs(&out, "stats");
        assert!(super_block.contains("Filesystem volume name:   tartarus-test"), "{super_block}");
        assert!(super_block.contains("has_journal"), "{super_block}");
        assert!(super_block.contains("Block size:               4096"), "{super_block}");
    }

    #[test]
    fn same_tree_gives_the_same_uuid() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        sample_rootfs(&root);
        let uuid_of = |out: &Path| {
            build(&root, out, &Ext4Options::default()).unwrap();
            let stats = debugfs(out, "stats");
            stats.lines().find(|l| l.starts_with("Filesystem UUID:")).unwrap().to_owned()
        };
        assert_eq!(uuid_of(&tmp.path().join("one.img")), uuid_of(&tmp.path().join("two.img")));
    }

    #[test]
    fn large_content_gets_proportional_headroom() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        fs::create_dir(&root).unwrap();
        for i in 0..2000 {
            fs::write(root.join(format!("f{i:04}")), vec![1u8; 100_000]).unwrap();
        }
        let opts = Ext4Options { headroom_percent: 50, min_headroom_mib: 1, label: None };
        let out = tmp.path().join("big.ext4");
        let image = build(&root, &out, &opts).unwrap();
        // 2000 files of 25 blocks each: 195 MiB of content, so at least 97 MiB free.
        assert!(image.content_bytes >= 2000 * 25 * BLOCK);
        assert!(image.free_bytes >= image.content_bytes / 2, "{image:?}");
        assert!(image.inode_count >= image.inodes_used + 1000, "{image:?}");
        // Inode tables are zeroed at mkfs time in every group, so guests have no lazy init to do.
        let dump = Command::new(find_program("dumpe2fs").expect("dumpe2fs installed")).arg(&out).output().unwrap();
        let dump = String::from_utf8(dump.stdout).unwrap();
        let groups: Vec<&str> = dump.lines().filter(|l| l.starts_with("Group ") && l.contains("(Blocks")).collect();
        assert!(groups.len() > 1, "{dump}");
        assert!(groups.iter().all(|g| g.contains("ITABLE_ZEROED")), "{dump}");
    }

    #[test]
    fn failures_leave_no_partial_file() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("root.ext4");
        let partial = out.with_extension("partial");

        let missing = build(&tmp.path().join("nope"), &out, &Ext4Options::default()).unwrap_err();
        assert!(matches!(missing, Ext4Error::Io { .. }), "{missing:?}");

        let root = tmp.path().join("rootfs");
        sample_rootfs(&root);
        let err = build_with(None, &root, &out, &Ext4Options::default()).unwrap_err();
        assert!(err.to_string().contains("apt-get install e2fsprogs"), "{err}");

        // A stale partial file from a crashed run is replaced, then removed when mkfs fails.
        fs::write(&partial, b"stale").unwrap();
        let err = build_with(Some(Path::new("/bin/false")), &root, &out, &Ext4Options::default()).unwrap_err();
        assert!(matches!(err, Ext4Error::MkfsFailed { .. }), "{err:?}");

        let label = Ext4Options { label: Some("a-label-longer-than-16".into()), ..Default::default() };
        assert!(matches!(build(&root, &out, &label), Err(Ext4Error::BadLabel(_))));

        let not_dir = build(&root.join("suid"), &out, &Ext4Options::default()).unwrap_err();
        assert!(matches!(not_dir, Ext4Error::NotADirectory(_)), "{not_dir:?}");

        assert!(!partial.exists());
        assert!(!out.exists());
    }

    #[test]
    fn mkfs_errors_carry_its_stderr() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("rootfs");
        sample_rootfs(&root);
        let out = tmp.path().join("root.ext4");
        // An output directory that does not exist: the partial file cannot even be created.
        let err = build(&root, &tmp.path().join("no/such/dir/x.ext4"), &Ext4Options::default()).unwrap_err();
        assert!(matches!(err, Ext4Error::Io { .. }), "{err:?}");
        // A real mkfs failure: a script standing in for mkfs that complains like it.
        let fake = tmp.path().join("mkfs.ext4");
        fs::write(&fake, "#!/bin/sh\necho 'mke2fs: Could not allocate block in ext2 filesystem' >&2\nexit 1\n")
            .unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let err = build_with(Some(&fake), &root, &out, &Ext4Options::default()).unwrap_err();
        assert!(err.to_string().contains("Could not allocate block"), "{err}");
        assert!(!out.with_extension("partial").exists());
    }

    #[test]
    fn geometry() {
        assert!(has_super_backup(0) && has_super_backup(1) && has_super_backup(3) && has_super_backup(49));
        assert!(!has_super_backup(2) && !has_super_backup(6) && !has_super_backup(50));
        assert_eq!(journal_blocks(20_000), 1024);
        assert_eq!(journal_blocks(131_072), 4096);
        assert_eq!(uuid(&[0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
    }
}
