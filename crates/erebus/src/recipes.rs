//! Built-in template recipes: builds a root filesystem from Debian packages with debootstrap and packs it as an
//! OCI image layout.
//!
//! A recipe's output is an ordinary OCI layout (tag `latest`), imported like any other image, so recipes add no
//! second path into templates. Each recipe keeps its debootstrapped tree in the `work` directory given to it, with a
//! marker file next to it recording what was bootstrapped; a later build with the same settings reuses the tree
//! and only repacks it (debootstrap takes a minute and downloads a few hundred MB; packing takes seconds).
//!
//! Recipes need root (debootstrap and `chroot` do), network access to the Debian mirror, and `debootstrap`
//! installed. They block for minutes: call them from `spawn_blocking`.
//!
//! **Python bytecode.** Debian compiles `.pyc` files at install time, stamped with their source's mtime. The
//! layer packer clamps mtimes (see [`crate::layout::LAYER_MTIME_EPOCH`]), which would make every stamped `.pyc`
//! stale and cost each sandbox over a second recompiling numpy and pandas on first import. So the recipe
//! recompiles the existing `.pyc` files as *checked-hash* pycs (PEP 552), which compare a hash of the source
//! instead of its mtime: valid whatever the mtimes, and still recompiled if a sandbox edits a source file.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use nix::fcntl::OFlag;
use tracing::info;

use crate::ext4::find_program;
use crate::layout::{self, ImageConfig, LayerCompression, LayerSource, LayoutError};

/// The built-in recipes: name and one-line description.
pub const RECIPES: &[(&str, &str)] = &[("python-ds", "Debian bookworm python3 with numpy and pandas")];

/// The tag recipes give their image.
pub const RECIPE_TAG: &str = "latest";
/// `PATH` of recipe images, and of the tools recipes run.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Lines of a failed tool's output kept for the error.
const TAIL_LINES: usize = 30;

/// Why a recipe failed.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// No such recipe.
    #[error("unknown recipe {0:?} (known: {known})", known = RECIPES.iter().map(|r| r.0).collect::<Vec<_>>().join(", "))]
    Unknown(String),
    /// `debootstrap` is not installed.
    #[error("debootstrap not found in PATH, /usr/sbin or /sbin (install it: apt-get install debootstrap)")]
    DebootstrapMissing,
    /// Not running as root.
    #[error("recipes must run as root: debootstrap and chroot need it")]
    NotRoot,
    /// A tool could not be started.
    #[error("cannot run {program}")]
    Spawn {
        /// The tool.
        program: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A tool ran and failed.
    #[error("{program} failed ({status}); its last output:\n{tail}")]
    Failed {
        /// The tool.
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// The last lines it printed (stdout and stderr together).
        tail: String,
    },
    /// Something is mounted inside the work tree (a debootstrap that was killed), so it cannot be removed or packed.
    #[error("{root:?} has filesystems mounted inside it ({mounts:?}); unmount them (umount -R) and retry")]
    Mounted {
        /// The tree.
        root: PathBuf,
        /// The mount points below it.
        mounts: Vec<PathBuf>,
    },
    /// The output exists and is not an OCI layout, so it is not replaced.
    #[error("{0:?} exists and is not an OCI layout (no oci-layout file); refusing to replace it")]
    NotALayout(PathBuf),
    /// Preparing the work directory, cleaning the tree or moving the output into place failed.
    #[error("recipe I/O error on {path:?}")]
    Io {
        /// The path the operation was about.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The OCI layout could not be written.
    #[error("cannot write the recipe's OCI layout")]
    Layout(#[source] LayoutError),
}

/// Builds recipe `name` (one of [`RECIPES`]) with [`python_ds`]'s conventions.
pub fn build(name: &str, work: &Path, out_layout: &Path, progress: &dyn Fn(&str)) -> Result<(), RecipeError> {
    match name {
        "python-ds" => python_ds(work, out_layout, progress),
        _ => Err(RecipeError::Unknown(name.to_owned())),
    }
}

/// A debootstrap invocation.
struct Bootstrap {
    suite: &'static str,
    mirror: &'static str,
    include: &'static [&'static str],
}

impl Bootstrap {
    /// What the marker file records: a reused tree must have been made with exactly these settings.
    fn marker_text(&self) -> String {
        format!("debootstrap --variant=minbase --include={} {} {}\n", self.include.join(","), self.suite, self.mirror)
    }
}

const PYTHON_DS: Bootstrap = Bootstrap {
    suite: "bookworm",
    mirror: "http://deb.debian.org/debian",
    include: &["python3", "python3-numpy", "python3-pandas"],
};

/// Builds the `python-ds` image into `out_layout` (replaced if it is an OCI layout; tag [`RECIPE_TAG`]): Debian
/// bookworm minbase with python3, numpy and pandas, in three gzip layers (the Python trees under `usr/lib`, the
/// shared libraries in `usr/lib/x86_64-linux-gnu`, and everything else). `progress` gets one line per step and
/// debootstrap's own output as it runs.
pub fn python_ds(work: &Path, out_layout: &Path, progress: &dyn Fn(&str)) -> Result<(), RecipeError> {
    python_ds_with(find_program("debootstrap").as_deref(), work, out_layout, progress)
}

fn python_ds_with(
    debootstrap: Option<&Path>,
    work: &Path,
    out_layout: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), RecipeError> {
    let debootstrap = debootstrap.ok_or(RecipeError::DebootstrapMissing)?;
    if !nix::unistd::geteuid().is_root() {
        return Err(RecipeError::NotRoot);
    }
    let rootfs = work.join("rootfs");
    bootstrap(debootstrap, &PYTHON_DS, work, &rootfs, progress)?;
    ensure_unmounted(&rootfs)?;
    progress("removing apt caches and package lists, device nodes and host files");
    clean(&rootfs)?;

    let usr_lib = Path::new("usr/lib");
    let python: Vec<PathBuf> = sorted_names(&rootfs.join(usr_lib))?
        .into_iter()
        .filter(|n| n.as_bytes().starts_with(b"python3"))
        .map(|n| usr_lib.join(n))
        .collect();
    let libs = vec![usr_lib.join("x86_64-linux-gnu")];
    let taken: Vec<PathBuf> = python.iter().chain(&libs).cloned().collect();
    let rest = layout::remaining_paths(&rootfs, &taken).map_err(RecipeError::Layout)?;
    let layers = [
        LayerSource::Paths { root: rootfs.clone(), include: rest },
        LayerSource::Paths { root: rootfs.clone(), include: libs },
        LayerSource::Paths { root: rootfs.clone(), include: python },
    ];
    let config = ImageConfig {
        cmd: Some(vec!["python3".into()]),
        env: vec![format!("PATH={PATH}"), "LANG=C.UTF-8".into()],
        working_dir: Some("/".into()),
        labels: [("org.opencontainers.image.title".to_owned(), "python-ds".to_owned())].into(),
        ..ImageConfig::default()
    };
    progress("writing the OCI layout (3 gzip layers)");
    write_replacing(out_layout, &layers, &config, progress)
}

/// Makes `rootfs` with debootstrap, unless the marker says an identical one is there already.
fn bootstrap(
    debootstrap: &Path,
    spec: &Bootstrap,
    work: &Path,
    rootfs: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), RecipeError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecipeError::Io { path, source }
    };
    fs::create_dir_all(work).map_err(io_err(work))?;
    let marker = work.join("rootfs.debootstrap-done");
    let marker_ok = fs::read_to_string(&marker).is_ok_and(|text| text == spec.marker_text());
    if marker_ok && fs::symlink_metadata(rootfs.join("usr/bin/python3")).is_ok() {
        progress(&format!("reusing the root filesystem debootstrapped earlier in {}", rootfs.display()));
        return Ok(());
    }

    remove_if_exists(&marker)?;
    if fs::symlink_metadata(rootfs).is_ok() {
        ensure_unmounted(rootfs)?;
        progress(&format!("removing the incomplete root filesystem in {}", rootfs.display()));
        fs::remove_dir_all(rootfs).map_err(io_err(rootfs))?;
    }
    progress(&format!("running {}", spec.marker_text().trim_end()));
    let mut cmd = Command::new(debootstrap);
    cmd.arg("--variant=minbase")
        .arg(format!("--include={}", spec.include.join(",")))
        .arg(spec.suite)
        .arg(rootfs)
        .arg(spec.mirror)
        .env("PATH", PATH)
        .env("LANG", "C")
        .env("DEBIAN_FRONTEND", "noninteractive");
    run_streaming(cmd, "debootstrap", "debootstrap: ", progress)?;

    progress("recompiling Python bytecode as hash-based .pyc files");
    let mut cmd = Command::new(find_program("chroot").unwrap_or_else(|| PathBuf::from("chroot")));
    cmd.arg(rootfs)
        .args(["/usr/bin/python3", "-c", REHASH_PYC, "/usr/lib"])
        .env_clear()
        .env("PATH", PATH)
        .env("LANG", "C.UTF-8")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_streaming(cmd, "chroot python3 (recompiling .pyc files)", "", progress)?;

    fs::write(&marker, spec.marker_text()).map_err(io_err(&marker))?;
    info!(rootfs = ?rootfs, "root filesystem debootstrapped");
    Ok(())
}

/// Recompiles every `__pycache__/*.pyc` of this interpreter that has its source next to it, as a checked-hash pyc
/// (same optimisation level), in parallel when multiprocessing works in the chroot.
const REHASH_PYC: &str = r#"
import os, sys, py_compile
tag = sys.implementation.cache_tag
def work(job):
    src, pyc, opt = job
    py_compile.compile(src, cfile=pyc, doraise=True, optimize=opt,
                       invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
jobs = []
for top in sys.argv[1:]:
    for d, dirs, files in os.walk(top):
        dirs.sort()
        if os.path.basename(d) != '__pycache__':
            continue
        for f in sorted(files):
            parts = f.split('.')
            if parts[-1] != 'pyc' or len(parts) not in (3, 4) or parts[1] != tag:
                continue
            opt = -1
            if len(parts) == 4:
                if not parts[2].startswith('opt-') or not parts[2][4:].isdigit():
                    continue
                opt = int(parts[2][4:])
            src = os.path.join(os.path.dirname(d), parts[0] + '.py')
            if os.path.isfile(src):
                jobs.append((src, os.path.join(d, f), opt))
try:
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor() as pool:
        list(pool.map(work, jobs, chunksize=32))
except (ImportError, OSError, NotImplementedError):
    for job in jobs:
        work(job)
print(f'recompiled {len(jobs)} .pyc files as checked-hash')
"#;

/// Runs `cmd`, passing each line it prints (stdout and stderr merged, in order) to `progress` after `prefix`.
fn run_streaming(mut cmd: Command, program: &str, prefix: &str, progress: &dyn Fn(&str)) -> Result<(), RecipeError> {
    let spawn_err = |source: io::Error| RecipeError::Spawn { program: program.to_owned(), source };
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(write.try_clone().map_err(spawn_err)?)).stderr(Stdio::from(write));
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // The command holds the parent's copies of the write end: drop it so the pipe ends when the child exits.
    drop(cmd);
    let mut tail = VecDeque::with_capacity(TAIL_LINES);
    for line in BufReader::new(File::from(read)).split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_err(source));
            }
        };
        let line = String::from_utf8_lossy(&line).trim_end().to_owned();
        if line.is_empty() {
            continue;
        }
        progress(&format!("{prefix}{line}"));
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        Ok(())
    } else {
        Err(RecipeError::Failed { program: program.to_owned(), status, tail: Vec::from(tail).join("\n") })
    }
}

/// Removes what should not be in an image: apt's caches and package lists (`apt-get update` restores them),
/// device nodes (the sandbox gets its own `/dev`), the bootstrap log, and the build host's name and resolver.
fn clean(rootfs: &Path) -> Result<(), RecipeError> {
    let cache = rootfs.join("var/cache/apt");
    for name in sorted_names(&cache).unwrap_or_default() {
        if name.as_bytes().ends_with(b".bin") {
            remove_if_exists(&cache.join(name))?;
        }
    }
    for dir in [
        "var/cache/apt/archives",
        "var/cache/apt/archives/partial",
        "var/lib/apt/lists",
        "var/lib/apt/lists/partial",
        "dev",
    ] {
        empty_dir(&rootfs.join(dir), &["partial", "lock"])?;
    }
    remove_if_exists(&rootfs.join("var/log/bootstrap.log"))?;
    for (file, content) in [("etc/hostname", "localhost\n"), ("etc/resolv.conf", "")] {
        let path = rootfs.join(file);
        // Only regular files: a symlink here (systemd-resolved) is left as it is, never written through.
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            fs::write(&path, content).map_err(|source| RecipeError::Io { path, source })?;
        }
    }
    Ok(())
}

/// Removes everything in `dir` (if it exists) except the directories or files named in `keep`.
fn empty_dir(dir: &Path, keep: &[&str]) -> Result<(), RecipeError> {
    let Ok(names) = sorted_names(dir) else { return Ok(()) };
    for name in names {
        let path = dir.join(&name);
        if keep.iter().any(|k| name.as_bytes() == k.as_bytes()) {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(|source| RecipeError::Io { path: path.clone(), source })?;
        let result = if meta.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
        result.map_err(|source| RecipeError::Io { path, source })?;
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), RecipeError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecipeError::Io { path: path.to_owned(), source }),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, RecipeError> {
    let io_err = |source| RecipeError::Io { path: dir.to_owned(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        names.push(entry.map_err(io_err)?.file_name());
    }
    names.sort();
    Ok(names)
}

/// Refuses a tree with something mounted inside it: removing or packing it would reach into the mounted
/// filesystem (debootstrap mounts `/proc` and `/sys` in the target while it runs and unmounts them at the end).
fn ensure_unmounted(root: &Path) -> Result<(), RecipeError> {
    let Ok(root) = fs::canonicalize(root) else { return Ok(()) };
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| RecipeError::Io { path: "/proc/self/mountinfo".into(), source })?;
    let mounts = mounts_below(&mountinfo, &root);
    if mounts.is_empty() {
        Ok(())
    } else {
        Err(RecipeError::Mounted { root, mounts })
    }
}

/// Mount points in `mountinfo` (the format of `/proc/self/mountinfo`) at or below `root`.
fn mounts_below(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|mount| mount.starts_with(root))
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in a mountinfo path.
fn unescape_mount_path(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    OsString::from_vec(out)
}

/// Writes the layout next to `out` and swaps it in, so `out` is never half-written. An existing `out` is only
/// replaced if it is an OCI layout.
fn write_replacing(
    out: &Path,
    layers: &[LayerSource],
    config: &ImageConfig,
    progress: &dyn Fn(&str),
) -> Result<(), RecipeError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| RecipeError::Io { path, source }
    };
    if fs::symlink_metadata(out).is_ok() && fs::symlink_metadata(out.join("oci-layout")).is_err() {
        return Err(RecipeError::NotALayout(out.to_owned()));
    }
    let partial = out.with_extension("partial");
    if fs::symlink_metadata(&partial).is_ok() {
        fs::remove_dir_all(&partial).map_err(io_err(&partial))?;
    }
    let written = layout::write_layout(&partial, RECIPE_TAG, layers, config, LayerCompression::Gzip);
    let digests = match written {
        Ok(digests) => digests,
        Err(e) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(RecipeError::Layout(e));
        }
    };
    if fs::symlink_metadata(out).is_ok() {
        fs::remove_dir_all(out).map_err(io_err(out))?;
    }
    fs::rename(&partial, out).map_err(io_err(out))?;
    let size: u64 = digests.layers.iter().map(|l| l.size).sum();
    progress(&format!(
        "wrote {} ({RECIPE_TAG}, manifest {}, {} layers, {} MiB compressed)",
        out.display(),
        digests.manifest,
        digests.layers.len(),
        size >> 20
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unpack::{Compression, Limits, Unpacker};
    use oci_spec::image::{ImageIndex, ImageManifest};
    use std::cell::RefCell;
    use std::io::Read;

    #[test]
    fn recipes_are_listed_and_unknown_ones_refused() {
        assert_eq!(RECIPES[0].0, "python-ds");
        let tmp = tempfile::tempdir().unwrap();
        let err = build("nope", tmp.path(), &tmp.path().join("out"), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("known: python-ds"), "{err}");
    }

    #[test]
    fn missing_debootstrap_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let err = python_ds_with(None, tmp.path(), &tmp.path().join("out"), &|_| {}).unwrap_err();
        assert!(err.to_string().contains("apt-get install debootstrap"), "{err}");
    }

    #[test]
    fn failing_tools_report_their_last_lines() {
        let lines = RefCell::new(Vec::new());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 3"]);
        let err = run_streaming(cmd, "sh", "sh: ", &|l| lines.borrow_mut().push(l.to_owned())).unwrap_err();
        assert_eq!(*lines.borrow(), ["sh: one", "sh: two"]);
        match err {
            RecipeError::Failed { status, tail, .. } => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(tail, "one\ntwo");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cleaning_removes_caches_devices_and_host_files() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        for dir in ["var/cache/apt/archives/partial", "var/lib/apt/lists/partial", "dev/pts", "etc", "var/log"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for file in [
            "var/cache/apt/pkgcache.bin",
            "var/cache/apt/srcpkgcache.bin",
            "var/cache/apt/archives/python3_3.11.deb",
            "var/cache/apt/archives/partial/x.deb",
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "var/lib/apt/lists/lock",
            "var/log/bootstrap.log",
            "var/log/dpkg.log",
            "dev/null",
        ] {
            fs::write(root.join(file), b"x").unwrap();
        }
        fs::write(root.join("etc/hostname"), b"build-host\n").unwrap();
        fs::write(root.join("etc/resolv.conf"), b"nameserver 10.0.0.1\n").unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", root.join("dev/fd")).unwrap();
        clean(root).unwrap();

        let left = |dir: &str| sorted_names(&root.join(dir)).unwrap();
        assert!(left("var/cache/apt") == ["archives"], "{:?}", left("var/cache/apt"));
        assert!(left("var/cache/apt/archives") == ["partial"]);
        assert!(left("var/cache/apt/archives/partial").is_empty());
        assert!(left("var/lib/apt/lists") == ["lock", "partial"]);
        assert!(left("dev").is_empty());
        assert!(left("var/log") == ["dpkg.log"]);
        assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "localhost\n");
        assert_eq!(fs::read_to_string(root.join("etc/resolv.conf")).unwrap(), "");
        clean(root).unwrap(); // idempotent
    }

    #[test]
    fn mounts_inside_the_tree_are_found() {
        let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:5 / /work/rootfs/proc rw - proc proc rw
99 22 0:6 / /work/rootfs\\040x/sys rw - sysfs sysfs rw
100 22 0:7 / /work/rootfs2 rw - tmpfs tmpfs rw
";
        assert_eq!(mounts_below(mountinfo, Path::new("/work/rootfs")), [PathBuf::from("/work/rootfs/proc")]);
        assert_eq!(mounts_below(mountinfo, Path::new("/work/rootfs x")), [PathBuf::from("/work/rootfs x/sys")]);
        assert!(ensure_unmounted(Path::new("/nonexistent/tree")).is_ok());
    }

    #[test]
    fn an_existing_non_layout_output_is_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("precious");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("data"), b"keep me").unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let err = write_replacing(&out, &[LayerSource::Dir(src)], &ImageConfig::default(), &|_| {}).unwrap_err();
        assert!(matches!(err, RecipeError::NotALayout(_)), "{err:?}");
        assert!(out.join("data").exists());
    }

    /// Builds python-ds for real (debootstrap from the Debian mirror: about a minute and 400 MB), twice to check the
    /// reuse, then unpacks it and imports pandas inside it. Only with `TARTARUS_SLOW_TESTS=1` (and as root).
    #[test]
    fn python_ds_builds_a_working_image() {
        if std::env::var("TARTARUS_SLOW_TESTS").as_deref() != Ok("1") {
            eprintln!("skipped: set TARTARUS_SLOW_TESTS=1 to debootstrap and pack python-ds (needs root and network)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let work = tmp.path().join("work");
        let out = tmp.path().join("python-ds");
        let lines = RefCell::new(Vec::<String>::new());
        let progress = |line: &str| {
            eprintln!("python-ds: {line}");
            lines.borrow_mut().push(line.to_owned());
        };
        python_ds(&work, &out, &progress).unwrap();
        assert!(lines.borrow().iter().any(|l| l.starts_with("debootstrap: I: ")), "debootstrap output streamed");

        lines.borrow_mut().clear();
        python_ds(&work, &out, &progress).unwrap();
        assert!(lines.borrow().iter().any(|l| l.starts_with("reusing")), "second build reuses the tree");
        assert!(!lines.borrow().iter().any(|l| l.starts_with("debootstrap: ")));

        let index = ImageIndex::from_file(out.join("index.json")).unwrap();
        assert_eq!(index.manifests().len(), 1);
        let blob = |digest: &str| out.join("blobs/sha256").join(digest.strip_prefix("sha256:").unwrap());
        let manifest = ImageManifest::from_file(blob(index.manifests()[0].digest().as_ref())).unwrap();
        assert!(manifest.layers().len() >= 2, "{} layers", manifest.layers().len());
        let mut found_python = false;
        let rootfs = tmp.path().join("unpacked");
        fs::create_dir(&rootfs).unwrap();
        let mut unpacker = Unpacker::new(&rootfs, Limits::default()).unwrap();
        for layer in manifest.layers() {
            let compression = Compression::from_media_type(layer.media_type().as_ref()).unwrap();
            assert_eq!(compression, Compression::Gzip);
            let mut archive =
                tar::Archive::new(flate2::read::GzDecoder::new(File::open(blob(layer.digest().as_ref())).unwrap()));
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                found_python |= entry.path().unwrap() == Path::new("usr/bin/python3");
                io::copy(&mut entry, &mut io::sink()).unwrap();
            }
            unpacker
                .apply(File::open(blob(layer.digest().as_ref())).unwrap(), compression, layer.digest().as_ref())
                .unwrap();
        }
        assert!(found_python, "usr/bin/python3 is in a layer");

        let import = Command::new("chroot")
            .arg(&rootfs)
            .args(["/usr/bin/python3", "-c", "import numpy, pandas; print(pandas.DataFrame({'a': [1, 2]}).a.sum())"])
            .env_clear()
            .env("PATH", PATH)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .unwrap();
        assert!(import.status.success(), "{}", String::from_utf8_lossy(&import.stderr));
        assert_eq!(String::from_utf8_lossy(&import.stdout).trim(), "3");
        // The stdlib's bytecode is hash-based, so clamped mtimes do not make it stale.
        let mut header = [0u8; 8];
        File::open(rootfs.join("usr/lib/python3.11/__pycache__/os.cpython-311.pyc"))
            .unwrap()
            .read_exact(&mut header)
            .unwrap();
        assert_eq!(header[4] & 0b11, 0b11, "checked-hash pyc");
    }
}
