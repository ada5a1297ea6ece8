//! The integration tests' harness: a real `tartarus up` on a temporary data dir, real `runsc`.
//!
//! [`Realm::start`] builds a busybox root filesystem with `scripts/busybox-rootfs.sh`, starts
//! `tartarus --data-dir D up --listen 127.0.0.1:0`, learns its address from the
//! `listening on` line, reads `D/admin.token` and registers the `busybox` template through the
//! API. Each test starts its own realm (a fraction of a second), so the tests of a file run
//! in parallel without seeing each other's sandboxes. Every wait is bounded, so a hung realm
//! fails a test instead of hanging CI. When a test fails, the realm's own output is printed
//! with the failure.
//!
//! Tests call [`require_prereqs`] first: it skips them (or, with `CI=true`, fails them) on a
//! machine without root, `runsc` or `/bin/busybox`.
#![allow(dead_code)]

pub mod fleet;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The `tartarus` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_tartarus");
/// Where `scripts/setup.sh` installs the newer `runsc`.
pub const BUNDLED_RUNSC: &str = "/usr/local/lib/tartarus/runsc";
/// The template every realm of the harness has.
pub const TEMPLATE: &str = "busybox";

/// How long an ordinary API call may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `tartarus up` may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a CLI invocation may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// The repository's `scripts/` directory.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

fn runsc_available() -> bool {
    let executable = |p: &Path| p.metadata().map(|m| m.is_file() && m.mode() & 0o111 != 0).unwrap_or(false);
    executable(Path::new(BUNDLED_RUNSC))
        || std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| executable(&d.join("runsc"))))
            .unwrap_or(false)
}

/// True when this machine can run the tests: root, `runsc` and `/bin/busybox`.
///
/// Otherwise prints `skipping: <what> missing` and returns false, or, when `CI=true`,
/// panics naming what is missing (CI must never pass by skipping).
pub fn require_prereqs() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root (sandboxes need it for gVisor and cgroups)");
    }
    if !runsc_available() {
        missing.push("runsc (/usr/local/lib/tartarus/runsc or runsc on PATH; run scripts/setup.sh)");
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox (apt-get install busybox-static, or run scripts/setup.sh)");
    }
    if missing.is_empty() {
        return true;
    }
    let what = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisites missing: {what}");
    }
    eprintln!("skipping: {what} missing");
    false
}

/// Builds a busybox root filesystem at `dir` with `scripts/busybox-rootfs.sh`.
pub fn build_busybox_rootfs(dir: &Path) {
    let script = scripts_dir().join("busybox-rootfs.sh");
    let out = Command::new("bash").arg(&script).arg(dir).output().expect("run busybox-rootfs.sh");
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        script.display(),
        dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running `tartarus up` on its own temporary data dir, with the `busybox` template.
///
/// It dereferences to its [`Api`], so `realm.create(…)`, `realm.url` and the like work directly.
pub struct Realm {
    /// The realm's API.
    pub api: Api,
    /// The data dir (`--data-dir`).
    pub data_dir: PathBuf,
    /// The busybox root filesystem the template was imported from.
    pub rootfs: PathBuf,
    daemon: Daemon,
    tmp: tempfile::TempDir,
}

impl std::ops::Deref for Realm {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Realm {
    /// Starts a realm on a fresh data dir and registers the `busybox` template.
    ///
    /// Call it from the test's own future (not from a spawned task): `tartarus up` is tied to
    /// the calling thread, so it is killed if the test process dies without dropping it.
    pub async fn start() -> Realm {
        Realm::start_with(&[], &[]).await
    }

    /// [`Realm::start`] with extra arguments for `tartarus up` (e.g. `["--store", "s3://b/p"]`)
    /// and extra environment variables; restarts keep both.
    pub async fn start_with(args: &[&str], env: &[(&str, &str)]) -> Realm {
        let tmp = tempfile::Builder::new().prefix("tartarus-it-").tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        let rootfs = tmp.path().join("busybox-rootfs");
        std::fs::create_dir_all(&data_dir).expect("create data dir");
        build_busybox_rootfs(&rootfs);
        let mut up: Vec<String> = vec!["--data-dir".into(), data_dir.display().to_string()];
        up.extend(["up", "--listen", "127.0.0.1:0"].map(String::from));
        up.extend(args.iter().map(|a| a.to_string()));
        let daemon = Daemon::new("tartarus up", up, env, "tartarus: listening on ");
        let api = Api::new(&data_dir, daemon.log.clone());
        let mut realm = Realm { api, data_dir, rootfs, daemon, tmp };
        realm.start_again().await;
        realm.api.register_template(TEMPLATE, &realm.rootfs).await;
        realm
    }

    /// Starts `tartarus up` again on the same data dir (after [`Realm::kill`] or [`Realm::stop`]).
    pub async fn start_again(&mut self) {
        let url = self.daemon.start().await;
        assert!(url.starts_with("http://127.0.0.1:"), "unexpected address line: {url}");
        self.api.url = url;
        self.api.token = read_secret(&self.data_dir.join("admin.token"), &self.daemon).await;
    }

    /// The pid of `tartarus up`.
    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Kills `tartarus up` with SIGKILL (sandboxes keep running: their shims are detached).
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Stops `tartarus up` with SIGTERM; panics unless it exits successfully within 20 s.
    pub async fn stop(&mut self) {
        self.daemon.stop().await;
    }

    /// SIGKILLs `tartarus up` and starts it again on the same data dir (on a new port).
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// What `tartarus up` printed so far.
    pub fn log(&self) -> String {
        self.daemon.log()
    }

    /// The directory of a sandbox on the node.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("sandboxes").join(id)
    }

    /// The pid of a sandbox's shim, from `<data-dir>/sandboxes/<id>/shim.pid`.
    pub fn shim_pid(&self, id: &str) -> u32 {
        shim_pid_in(&self.data_dir, id)
    }
}

/// The pid of a sandbox's shim, from `<data_dir>/sandboxes/<id>/shim.pid`.
pub fn shim_pid_in(data_dir: &Path, id: &str) -> u32 {
    let f = data_dir.join("sandboxes").join(id).join("shim.pid");
    let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    text.trim().parse().unwrap_or_else(|e| panic!("{}: {text:?}: {e}", f.display()))
}

/// Reads a token or secret file a daemon writes at start-up (waits for it a little).
pub async fn read_secret(path: &Path, daemon: &Daemon) -> String {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match std::fs::read_to_string(path) {
            Ok(t) if !t.trim().is_empty() => return t.trim().to_string(),
            _ if Instant::now() > deadline => panic!("{} missing or empty:\n{}", path.display(), daemon.log()),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A `tartarus` daemon (`up`, `olympus`, `agent`) run by a test: its output kept, its start
/// recognised by a line on stdout, killed with the test process if that dies.
pub struct Daemon {
    label: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    announce: String,
    child: Option<Child>,
    /// Everything it printed, across restarts (stdout lines prefixed `[stdout]`).
    pub log: Arc<Mutex<Vec<u8>>>,
}

impl Daemon {
    /// A daemon `tartarus ARGS` (not started) that announces itself with a stdout line starting
    /// with `announce`.
    pub fn new(label: &str, args: Vec<String>, env: &[(&str, &str)], announce: &str) -> Daemon {
        Daemon {
            label: label.into(),
            args,
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            announce: announce.into(),
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Starts it; returns what follows the announcement on its line (an address).
    pub async fn start(&mut self) -> String {
        assert!(self.child.is_none(), "{} is already running", self.label);
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env_remove("TARTARUS_API")
            .env_remove("TARTARUS_TOKEN")
            .env_remove("TARTARUS_DATA_DIR")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. If the test process dies without dropping the
        // daemon (a CI timeout), the kernel kills it rather than leaving it behind.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.label));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        self.child = Some(child);
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            let mut stderr = stderr;
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                log.lock().unwrap().extend_from_slice(format!("[stdout] {line}\n").as_bytes());
                let _ = tx.send(line);
            }
        });
        loop {
            match tokio::time::timeout_at((started + START_TIMEOUT).into(), rx.recv()).await {
                Ok(Some(line)) => {
                    if let Some(rest) = line.strip_prefix(&self.announce) {
                        return rest.trim().trim_end_matches('/').to_string();
                    }
                }
                Ok(None) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!("{} ended ({status:?}) before announcing itself:\n{}", self.label, self.log());
                }
                Err(_) => panic!(
                    "{} printed no {:?} line within {START_TIMEOUT:?}:\n{}",
                    self.label,
                    self.announce,
                    self.log()
                ),
            }
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap_or_else(|| panic!("{} not running", self.label)).id()
    }

    /// Whether it has been started and not killed or stopped.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops it with SIGTERM; panics unless it exits successfully within 20 s.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().unwrap_or_else(|| panic!("{} not running", self.label));
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait().expect("wait for the daemon") {
                Some(status) => {
                    assert!(status.success(), "{} exited with {status} on SIGTERM:\n{}", self.label, self.log());
                    return;
                }
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("{} did not exit within 20 s of SIGTERM:\n{}", self.label, self.log());
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// What it printed so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A realm's API, as the tests call it: HTTP with the admin token, and the CLI.
pub struct Api {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The admin token.
    pub token: String,
    /// The data dir the CLI is pointed at (`TARTARUS_DATA_DIR`).
    pub cli_data_dir: PathBuf,
    http: reqwest::Client,
    /// The serving daemon's output, shown when a request fails.
    log: Arc<Mutex<Vec<u8>>>,
}

impl Api {
    /// An API client (url and token filled in once the daemon runs).
    pub fn new(data_dir: &Path, log: Arc<Mutex<Vec<u8>>>) -> Api {
        let http = reqwest::Client::builder().timeout(HTTP_TIMEOUT).build().expect("http client");
        Api { url: String::new(), token: String::new(), cli_data_dir: data_dir.to_owned(), http, log }
    }

    fn daemon_log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }

    /// Registers template `name` from the root filesystem at `rootfs`.
    pub async fn register_template(&self, name: &str, rootfs: &Path) {
        let (status, body) = self.post("/v1/templates", json!({"name": name, "path": rootfs})).await;
        assert_eq!(status, StatusCode::CREATED, "POST /v1/templates: {body}");
    }

    // --- HTTP ----------------------------------------------------------------------------

    /// A request to the realm with the admin token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url)).bearer_auth(&self.token)
    }

    /// Sends a request; returns the status and the body as JSON (a JSON string if it is not JSON).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.send().await.unwrap_or_else(|e| panic!("request failed: {e:#}\n{}", self.daemon_log()));
        let status = resp.status();
        let text = resp.text().await.expect("response body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::GET, path)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.request(Method::POST, path).json(&body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// Creates a sandbox without waiting: expects `202` and returns the record.
    pub async fn create(&self, soul: Value) -> Value {
        let (status, body) = self.post("/v1/sandboxes", soul.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "POST /v1/sandboxes {soul}: {body}");
        assert!(body["id"].is_string(), "record without id: {body}");
        body
    }

    /// Creates a sandbox with `wait=true`: expects `201` and returns the record (ended, or
    /// running for a session).
    pub async fn run(&self, soul: Value) -> Value {
        let req = self.request(Method::POST, "/v1/sandboxes?wait=true").json(&soul).timeout(Duration::from_secs(120));
        let (status, body) = self.send(req).await;
        assert_eq!(status, StatusCode::CREATED, "POST /v1/sandboxes?wait=true {soul}: {body}");
        assert!(body["id"].is_string(), "record without id: {body}");
        body
    }

    /// `GET /v1/sandboxes/{id}`, expecting `200`.
    pub async fn record(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK, "GET /v1/sandboxes/{id}: {body}");
        body
    }

    /// Polls the record of `id` until `done` holds; panics after `timeout`.
    pub async fn wait_for(&self, id: &str, what: &str, timeout: Duration, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let rec = self.record(id).await;
            if done(&rec) {
                return rec;
            }
            assert!(Instant::now() < deadline, "{id} not {what} within {timeout:?}; last record: {rec}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `id` is running.
    pub async fn wait_running(&self, id: &str, timeout: Duration) -> Value {
        let rec = self.wait_for(id, "running or ended", timeout, |r| r["state"] == "running" || is_terminal(r)).await;
        assert_eq!(rec["state"], "running", "{id} ended before it was seen running: {rec}");
        rec
    }

    /// Waits until `id` has ended.
    pub async fn wait_ended(&self, id: &str, timeout: Duration) -> Value {
        self.wait_for(id, "ended", timeout, is_terminal).await
    }

    /// `GET /v1/sandboxes/{id}/logs` (without `follow`): the output so far.
    pub async fn logs(&self, id: &str) -> Output {
        let resp = self
            .request(Method::GET, &format!("/v1/sandboxes/{id}/logs"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET logs of {id}: {e:#}"));
        let status = resp.status();
        let text = resp.text().await.expect("logs body");
        assert_eq!(status, StatusCode::OK, "GET /v1/sandboxes/{id}/logs: {text}");
        Output::from_events(&parse_sse(&text))
    }

    /// Reads an event stream to its end, noting when each event arrived (since the call).
    pub async fn stream(&self, req: reqwest::RequestBuilder, timeout: Duration) -> Vec<(Duration, SseEvent)> {
        let t0 = Instant::now();
        let resp = req.timeout(timeout).send().await.unwrap_or_else(|e| panic!("stream request: {e:#}"));
        assert_eq!(resp.status(), StatusCode::OK, "event stream refused: {:?}", resp.text().await);
        let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ctype.starts_with("text/event-stream"), "content-type {ctype:?}, not text/event-stream");
        let mut bytes = resp.bytes_stream();
        let mut buf = String::new();
        let mut events = Vec::new();
        while let Some(chunk) = tokio::time::timeout_at((t0 + timeout).into(), bytes.next())
            .await
            .unwrap_or_else(|_| panic!("event stream still open after {timeout:?}; got {events:?}"))
        {
            buf.push_str(&String::from_utf8_lossy(&chunk.expect("event stream chunk")));
            buf = buf.replace("\r\n", "\n");
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(ev) = parse_sse_block(&block) {
                    events.push((t0.elapsed(), ev));
                }
            }
        }
        if let Some(ev) = parse_sse_block(&buf) {
            events.push((t0.elapsed(), ev));
        }
        events
    }

    /// The host path of the template's copy in the data dir (`rootfs` in `GET /v1/templates`).
    pub async fn template_rootfs(&self) -> PathBuf {
        let (status, body) = self.get("/v1/templates").await;
        assert_eq!(status, StatusCode::OK, "GET /v1/templates: {body}");
        let t = body["templates"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == TEMPLATE))
            .unwrap_or_else(|| panic!("template {TEMPLATE} not listed: {body}"));
        PathBuf::from(t["rootfs"].as_str().unwrap_or_else(|| panic!("template without rootfs: {t}")))
    }

    // --- CLI -----------------------------------------------------------------------------

    /// Runs `tartarus ARGS` against this realm (TARTARUS_API, TARTARUS_TOKEN, TARTARUS_DATA_DIR).
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(args)
            .env("TARTARUS_API", &self.url)
            .env("TARTARUS_TOKEN", &self.token)
            .env("TARTARUS_DATA_DIR", &self.cli_data_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(CLI_TIMEOUT, cmd.output())
            .await
            .unwrap_or_else(|_| panic!("tartarus {args:?} did not finish within {CLI_TIMEOUT:?}"))
            .expect("run tartarus");
        CliOutput {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Drop for Realm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- tartarus up ({}) output -----\n{}-----", self.data_dir.display(), self.log());
        }
        self.kill();
        // Sandboxes outlive `tartarus up` by design; end whatever of ours still runs.
        kill_leftovers(self.tmp.path(), &self.data_dir.join("sandboxes"));
        remove_networks(&self.data_dir);
    }
}

/// Kills every process whose command line mentions `marker` (sandboxes' shims and runsc) and
/// removes the cgroups of sandboxes under `sandboxes`.
pub fn kill_leftovers(marker: &Path, sandboxes: &Path) {
    let marker = marker.to_string_lossy().into_owned();
    let pids = pids_matching(|cmdline| cmdline.contains(&marker));
    for &pid in &pids {
        signal(pid, libc::SIGKILL);
    }
    wait_gone(&pids, Duration::from_secs(5));
    remove_cgroups(sandboxes);
}
/// What a CLI invocation did.
pub struct CliOutput {
    /// The arguments.
    pub args: Vec<String>,
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl fmt::Display for CliOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tartarus {:?} exited {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// `event:` (default `message`).
    pub event: String,
    /// `data:` lines joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// `data` parsed as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("event {self:?}: data is not JSON: {e}"))
    }
}

fn parse_sse_block(block: &str) -> Option<SseEvent> {
    let mut event = None;
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if event.is_none() && data.is_empty() {
        return None;
    }
    Some(SseEvent { event: event.unwrap_or_else(|| "message".into()), data: data.join("\n") })
}

/// Parses a whole `text/event-stream` body.
pub fn parse_sse(text: &str) -> Vec<SseEvent> {
    text.replace("\r\n", "\n").split("\n\n").filter_map(parse_sse_block).collect()
}

/// A sandbox's (or an exec's) output, from its event stream.
#[derive(Debug, Default, Clone)]
pub struct Output {
    /// All `stdout` chunks.
    pub stdout: String,
    /// All `stderr` chunks.
    pub stderr: String,
    /// The `exit` event's data, if one came.
    pub exit: Option<Value>,
    /// Events after `exit` (there must be none).
    pub after_exit: usize,
}

impl Output {
    /// Collects stdout, stderr and the exit of an event stream.
    pub fn from_events(events: &[SseEvent]) -> Output {
        let mut out = Output::default();
        for ev in events {
            if out.exit.is_some() {
                out.after_exit += 1;
                continue;
            }
            match ev.event.as_str() {
                "stdout" => out.stdout.push_str(ev.json().as_str().expect("stdout data is a JSON string")),
                "stderr" => out.stderr.push_str(ev.json().as_str().expect("stderr data is a JSON string")),
                "exit" => out.exit = Some(ev.json()),
                _ => {}
            }
        }
        out
    }
}

/// True when a record (or exit info) is in a terminal state.
pub fn is_terminal(r: &Value) -> bool {
    matches!(r["state"].as_str(), Some("exited" | "killed" | "failed" | "lost"))
}

/// A sandbox request for the busybox template running `command`.
pub fn soul(command: &[&str]) -> Value {
    json!({"template": TEMPLATE, "command": command})
}

/// `sh -c SCRIPT` in the busybox template.
pub fn sh(script: &str) -> Value {
    soul(&["sh", "-c", script])
}

/// The id of a record.
pub fn id_of(rec: &Value) -> String {
    rec["id"].as_str().unwrap_or_else(|| panic!("record without id: {rec}")).to_string()
}

// --- processes ---------------------------------------------------------------------------

/// Sends `sig` to `pid` (negative: a process group); errors (already gone) are ignored.
pub fn signal(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True when `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// (pid, ppid, pgid) of every process.
fn process_table() -> Vec<(i32, i32, i32)> {
    let mut table = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after "(comm)": state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if let (Some(ppid), Some(pgid)) = (f.get(1).and_then(|s| s.parse().ok()), f.get(2).and_then(|s| s.parse().ok()))
        {
            table.push((pid, ppid, pgid));
        }
    }
    table
}

/// `pid`, its process group and all their descendants.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let table = process_table();
    let mut tree = vec![pid];
    tree.extend(table.iter().filter(|(p, _, g)| *g == pid && *p != pid).map(|(p, _, _)| *p));
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        for (p, pp, _) in &table {
            if *pp == parent && !tree.contains(p) {
                tree.push(*p);
            }
        }
        i += 1;
    }
    tree
}

/// SIGKILLs `pid`, its group and all their descendants, and waits until they are gone.
pub fn kill_tree(pid: i32) -> Vec<i32> {
    let tree = process_tree(pid);
    signal(-pid, libc::SIGKILL);
    for &p in &tree {
        signal(p, libc::SIGKILL);
    }
    wait_gone(&tree, Duration::from_secs(10));
    tree
}

fn wait_gone(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes whose command line (arguments joined by spaces) satisfies `pred`.
pub fn pids_matching(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if pred(&cmdline) {
            pids.push(pid);
        }
    }
    pids
}

/// Removes the sandbox networks (Styx) an agent with data dir `data_dir` left: its agent is gone
/// for good, so nobody else would. Best effort.
pub fn remove_networks(data_dir: &Path) {
    let leases = Path::new("/run/tartarus/styx/tartarus0/leases");
    let owner = data_dir.display().to_string();
    let run = |args: &[&str]| {
        let _ = Command::new(args[0]).args(&args[1..]).output();
    };
    for e in std::fs::read_dir(leases).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let Some((id, who)) = text.trim().split_once(' ') else { continue };
        if who != owner {
            continue;
        }
        let hex = id.trim_start_matches("sb-");
        let ip = e.file_name().to_string_lossy().into_owned();
        let (tt, tx) = (format!("TT-{hex}"), format!("TX-{hex}"));
        run(&["iptables", "-w", "-D", "TARTARUS-SBX", "-s", &format!("{ip}/32"), "-i", "tartarus0", "-j", &tt]);
        run(&["iptables", "-w", "-D", "TARTARUS-EXP", "-d", &format!("{ip}/32"), "-j", &tx]);
        for chain in [&tt, &tx] {
            run(&["iptables", "-w", "-F", chain]);
            run(&["iptables", "-w", "-X", chain]);
        }
        run(&["ip", "netns", "del", &format!("tt-{hex}")]);
        run(&["ip", "link", "del", &format!("tt{}", &hex[..12.min(hex.len())])]);
        let _ = std::fs::remove_file(e.path());
    }
}

/// Removes the (empty) cgroups of the sandboxes under `sandboxes`, best effort.
fn remove_cgroups(sandboxes: &Path) {
    let Ok(entries) = std::fs::read_dir(sandboxes) else {
        return;
    };
    let ids: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let root = Path::new("/sys/fs/cgroup");
    let mut hierarchies = vec![root.to_path_buf()];
    hierarchies
        .extend(std::fs::read_dir(root).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    for id in &ids {
        for h in &hierarchies {
            let dir = h.join("tartarus").join(id);
            for _ in 0..20 {
                if !dir.exists() || std::fs::remove_dir(&dir).is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
}

// --- files -------------------------------------------------------------------------------

/// Every entry under `root` with its type, size, mode and mtime, for before/after comparisons.
pub fn tree_listing(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let meta = std::fs::symlink_metadata(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let rel = dir.strip_prefix(root).unwrap().to_path_buf();
        let kind = if meta.file_type().is_symlink() {
            format!("link->{}", std::fs::read_link(dir).unwrap().display())
        } else if meta.is_dir() {
            "dir".to_string()
        } else {
            "file".to_string()
        };
        out.insert(
            rel,
            format!(
                "{kind} size={} mode={:o} mtime={}.{:09}",
                meta.len(),
                meta.mode(),
                meta.mtime(),
                meta.mtime_nsec()
            ),
        );
        if meta.is_dir() {
            for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                walk(root, &entry.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}
