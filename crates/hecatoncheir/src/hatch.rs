//! The hatch — how a sandbox started ahead of its request (from a Nyx snapshot, or waiting in a
//! warm pool) is given that request's command: through its door, without `runsc exec`.
//!
//! Such a sandbox's first process is the hatch (`hatch/hatch.rs`, a static binary embedded here
//! and mounted read-only at [`IN_SANDBOX`]), or a resident that speaks the same protocol (see
//! [`resident_python`]). Its standard input is the sandbox's door: a FIFO in the sandbox's
//! directory ([`door`]), held open by the shim. The agent writes one [`Order`] into the door; the
//! hatch becomes the command (`execve`), so the command is the sandbox's init exactly as if the
//! sandbox had booted with it — its exit is the sandbox's, signals reach it, Hypnos can put it to
//! sleep. A checkpoint taken while the hatch waits keeps it waiting: a sandbox restored from it is
//! ready for its order as soon as it runs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lethe::SandboxDir;
use crate::runtime::LaunchSpec;

/// The hatch binary, built by `build.rs`.
const HATCH: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tartarus-hatch"));

/// Where the hatch is mounted inside every sandbox.
pub const IN_SANDBOX: &str = "/.tartarus/hatch";

/// The version of the door protocol; part of a runtime's description, so a snapshot made with
/// another protocol (or none) is never restored.
pub const PROTOCOL: u32 = 3;

/// How long a door may stay unopened by its shim before an order is given up.
const OPEN_LIMIT: Duration = Duration::from_secs(10);

/// Writes the hatch binary as `path` (executable), unless it is there already with this content.
pub fn install(path: &Path) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|b| b == HATCH) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::OpenOptions::new().create(true).truncate(true).write(true).mode(0o755).open(&tmp)?.write_all(HATCH)?;
    std::fs::rename(&tmp, path)
}

/// The door of the sandbox in `dir`.
pub fn door(dir: &SandboxDir) -> PathBuf {
    dir.root().join("door")
}

/// Makes the door of the sandbox in `dir` (a FIFO; an old one is replaced).
pub fn make_door(dir: &SandboxDir) -> std::io::Result<PathBuf> {
    let path = door(dir);
    let _ = std::fs::remove_file(&path);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(std::io::Error::from)?;
    Ok(path)
}

/// One command for a hatch: what it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The program's path inside the sandbox (resolved already; the hatch does not search PATH).
    pub program: String,
    /// The working directory.
    pub cwd: String,
    /// Arguments, the first being the program's name as given.
    pub argv: Vec<String>,
    /// `KEY=VALUE` environment, the whole of it.
    pub env: Vec<String>,
    /// The program keeps the door as its stdin (a resident waiting for the next order); else
    /// its stdin is `/dev/null`.
    pub keeps_door: bool,
}

impl Order {
    /// The order running `spec`'s command, or for a session (no command) the hatch itself as its
    /// keeper (`hatch keep`); `program` is the command's program resolved inside the template.
    pub fn of(spec: &LaunchSpec, program: Option<String>) -> Self {
        let argv = spec.command.clone().unwrap_or_else(|| vec![IN_SANDBOX.to_owned(), "keep".to_owned()]);
        Self {
            program: program.unwrap_or_else(|| argv[0].clone()),
            cwd: spec.workdir.clone(),
            argv,
            env: spec.env.clone(),
            keeps_door: false,
        }
    }

    /// The message as written into the door: a decimal length, a newline, then NUL-terminated
    /// fields (program, cwd, stdin: `door` or `null`, argument count, arguments, environment).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        let count = self.argv.len().to_string();
        let stdin = if self.keeps_door { "door" } else { "null" }.to_owned();
        let fields = [&self.program, &self.cwd, &stdin, &count].into_iter().chain(&self.argv).chain(&self.env);
        for f in fields {
            body.extend_from_slice(f.as_bytes());
            body.push(0);
        }
        let mut out = format!("{}\n", body.len()).into_bytes();
        out.extend(body);
        out
    }
}

/// Gives `order` to the hatch behind `door`. Waits (up to 10 s) for the shim to have opened the
/// door; the write itself lands in the pipe, read whenever the sandbox gets to it.
pub async fn give(door: &Path, order: &Order) -> std::io::Result<()> {
    let (door, bytes) = (door.to_owned(), order.encode());
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + OPEN_LIMIT;
        let mut file = loop {
            // Non-blocking: a door nobody reads yet (ENXIO) is retried, never waited on forever.
            match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&door) {
                Ok(f) => break f,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e),
            }
        };
        // Blocking from here: an order larger than the pipe is read as it is written.
        let flags = nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), nix::fcntl::FcntlArg::F_GETFL)
            .map_err(std::io::Error::from)?;
        let flags = nix::fcntl::OFlag::from_bits_truncate(flags) - nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(std::io::Error::from)?;
        file.write_all(&bytes)
    })
    .await
    .expect("door task panicked")
}

/// The line a resident prints on its standard error once it is ready for its order.
pub const RESIDENT_READY: &str = "tartarus resident: ready";

/// The order that replaces a hatch with a resident Python interpreter (`python` being its path
/// inside the sandbox) that has imported `modules` and waits at the same door. When its order is
/// `python -c CODE …` (the same interpreter), it runs CODE itself in a fresh `__main__`, its
/// imports already done, and then ends without tearing the preloaded modules down (see
/// `RESIDENT_PY`); any other order it execs, like the hatch.
pub fn resident_python(python: &str, modules: &[String], spec: &LaunchSpec) -> Order {
    let mut argv = vec![python.to_owned(), "-c".into(), RESIDENT_PY.replace("@READY@", RESIDENT_READY)];
    argv.extend(modules.iter().cloned());
    Order { program: python.to_owned(), cwd: spec.workdir.clone(), argv, env: spec.env.clone(), keeps_door: true }
}

/// The resident interpreter (see [`resident_python`]): reads orders like the hatch.
const RESIDENT_PY: &str = r#"
import importlib, os, sys
for _m in sys.argv[1:]:
    importlib.import_module(_m)
del _m
sys.stderr.write("@READY@\n"); sys.stderr.flush()

def _fail(what):
    sys.stderr.write("tartarus resident: " + what + "\n")
    sys.stderr.flush()
    os._exit(125)

def _order():
    head = b""
    while not head.endswith(b"\n"):
        c = os.read(0, 1)
        if not c:
            _fail("the door closed before a command came")
        head += c
    n, body = int(head), b""
    while len(body) < n:
        c = os.read(0, n - len(body))
        if not c:
            _fail("the door closed in the middle of an order")
        body += c
    f = [x.decode("utf-8", "surrogateescape") for x in body.split(b"\0")[:-1]]
    argc = int(f[3])
    return f[0], f[1], f[4:4 + argc], f[4 + argc:]

_prog, _cwd, _argv, _env = _order()
_null = os.open("/dev/null", os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.chdir(_cwd)
_envd = dict(e.split("=", 1) for e in _env if "=" in e)
_same = os.path.realpath(_prog) == os.path.realpath(sys.executable)
if not (_same and len(_argv) >= 3 and _argv[1] == "-c"):
    os.execve(_prog, _argv, _envd)
os.environ.clear()
os.environ.update(_envd)
import atexit, traceback, types
_main = types.ModuleType("__main__")
sys.modules["__main__"] = _main
sys.argv = ["-c"] + _argv[3:]
_status = 0
try:
    exec(compile(_argv[2], "<string>", "exec"), _main.__dict__)
except SystemExit as _e:
    if _e.code is None:
        _status = 0
    elif isinstance(_e.code, int):
        _status = _e.code
    else:
        sys.stderr.write(str(_e.code) + "\n")
        _status = 1
except BaseException as _e:
    traceback.print_exception(type(_e), _e, _e.__traceback__.tb_next)
    _status = 1
# Ends without the interpreter's teardown of the preloaded modules (a quarter of a second with
# pandas under gVisor): exit handlers run, the code's globals are dropped (closing its files,
# running their finalizers), standard streams are flushed.
try:
    atexit._run_exitfuncs()
except BaseException:
    traceback.print_exc()
_main.__dict__.clear()
for _f in (sys.stdout, sys.stderr):
    try:
        _f.flush()
    except BaseException:
        pass
os._exit(_status & 0xFF)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_a_length_then_nul_terminated_fields() {
        let order = Order {
            program: "/bin/echo".into(),
            cwd: "/tmp".into(),
            argv: vec!["echo".into(), "a b".into()],
            env: vec!["A=1,2".into()],
            keeps_door: false,
        };
        let bytes = order.encode();
        let (head, body) = bytes.split_at(bytes.iter().position(|b| *b == b'\n').unwrap() + 1);
        assert_eq!(head, format!("{}\n", body.len()).as_bytes());
        assert_eq!(body, b"/bin/echo\0/tmp\0null\x002\0echo\0a b\0A=1,2\0");
    }

    /// Runs the resident under the host's python3 with `order` at its door; (code, stdout, stderr).
    fn resident_runs(order: impl FnOnce(&str) -> Order) -> (Option<i32>, String, String) {
        let python = "/usr/bin/python3";
        let spec = LaunchSpec {
            id: tartarus_core::SandboxId::generate(),
            rootfs: "/".into(),
            command: None,
            env: vec!["PATH=/usr/bin:/bin".into()],
            workdir: "/".into(),
            user: (0, 0),
            resources: tartarus_core::Resources::default(),
            netns: None,
            door: true,
        };
        let resident = resident_python(python, &["json".into()], &spec);
        assert!(resident.keeps_door);
        let mut child = std::process::Command::new(&resident.program)
            .args(&resident.argv[1..])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&order(python).encode()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    }

    #[test]
    fn the_resident_python_runs_python_c_itself_and_execs_anything_else() {
        if !Path::new("/usr/bin/python3").exists() {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "missing prerequisite: /usr/bin/python3");
            return;
        }
        let python_c = |code: &str, cwd: &str| {
            let code = code.to_owned();
            let cwd = cwd.to_owned();
            move |python: &str| Order {
                program: python.to_owned(),
                cwd,
                argv: vec!["python3".into(), "-c".into(), code, "extra".into()],
                env: vec!["V=from-order".into()],
                keeps_door: false,
            }
        };
        let code = "import os, sys; print('json' in sys.modules, sys.argv, os.environ['V'], os.getcwd(), __name__); sys.exit(4)";
        let (status, out, err) = resident_runs(python_c(code, "/tmp"));
        assert_eq!(status, Some(4), "{err}");
        assert_eq!(out, "True ['-c', 'extra'] from-order /tmp __main__\n", "{err}");
        assert_eq!(err, format!("{RESIDENT_READY}\n"));
        let (status, _, err) = resident_runs(python_c("1/0", "/"));
        assert_eq!(status, Some(1));
        assert!(err.ends_with("ZeroDivisionError: division by zero\n"), "{err}");
        assert_eq!(err.matches("File ").count(), 1, "only the code's own frame: {err}");
        assert_eq!(resident_runs(python_c("import sys; sys.exit('bad')", "/")).0, Some(1));
        // What a script leaves to the interpreter's exit still happens: exit handlers, its
        // open files flushed and closed, buffered output written.
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("left-open");
        let code = format!(
            "import atexit, sys; atexit.register(lambda: print('bye')); f = open({:?}, 'w'); f.write('kept'); sys.stdout.write('no newline')",
            file.display()
        );
        let (status, out, err) = resident_runs(python_c(&code, "/"));
        assert_eq!((status, out.as_str()), (Some(0), "no newlinebye\n"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "kept");
        let (status, out, _) = resident_runs(|_| Order {
            program: "/bin/sh".into(),
            cwd: "/".into(),
            argv: vec!["sh".into(), "-c".into(), "echo \"$V\"; exit 6".into()],
            env: vec!["V=exec'd".into()],
            keeps_door: false,
        });
        assert_eq!((status, out.as_str()), (Some(6), "exec'd\n"));
    }

    #[test]
    fn the_embedded_hatch_is_a_static_executable() {
        assert_eq!(&HATCH[..4], b"\x7fELF");
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("hatch");
        install(&path).unwrap();
        install(&path).unwrap();
        // Run on the host, it reads an order from stdin and becomes it.
        let order = Order {
            program: "/bin/sh".into(),
            cwd: tmp.path().display().to_string(),
            argv: vec!["sh".into(), "-c".into(), "echo \"$X in $(pwd)\"; exit 7".into()],
            env: vec!["X=hatched".into()],
            keeps_door: false,
        };
        let mut child = std::process::Command::new(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&order.encode()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(7));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("hatched in {}", tmp.path().display()));
    }
}
