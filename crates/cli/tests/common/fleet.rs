//! The fleet tests' harness: a real Redis, `tartarus olympus` and several `tartarus agent`s on
//! this machine (separate data dirs, ports and node ids), with the busybox template.
//!
//! Everything is a real process the test can kill -9, stop (SIGSTOP) or restart: Redis runs
//! with AOF on a fixed port and directory so a restart finds its data again.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::{build_busybox_rootfs, kill_leftovers, read_secret, signal, Api, Daemon, TEMPLATE};

/// One fleet at a time: each runs dozens of gVisor sandboxes on a machine of two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How fast agents heartbeat in tests.
pub const HEARTBEAT: &str = "300ms";
/// When Olympus declares a silent node dead in tests (the default; a 2-core machine launching
/// dozens of gVisor sandboxes can delay a heartbeat by seconds).
pub const DEAD_AFTER: &str = "10s";
/// When another Olympus takes over queue entries a dead one held, in tests.
pub const CLAIM_AFTER: &str = "3s";

/// True when `redis-server` can be run; otherwise skips (or, with `CI=true`, fails) naming it.
pub fn require_redis() -> bool {
    if Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing: redis-server (apt-get install redis-server, or run scripts/setup.sh)");
    }
    eprintln!("skipping: redis-server missing");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A real Redis with AOF, on a port and directory of its own.
pub struct Redis {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Redis {
    /// Starts a Redis keeping its data in `dir`.
    pub fn start(dir: &Path) -> Redis {
        std::fs::create_dir_all(dir).expect("redis dir");
        let mut r = Redis { port: free_port(), dir: dir.to_owned(), child: None };
        r.start_again();
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it again on the same port and directory (AOF replayed).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis already running");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"])
            .args(["--save", "", "--logfile", "redis.log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn redis-server"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.pong() {
            assert!(Instant::now() < deadline, "redis-server did not answer PING on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pong(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// Kills it with SIGKILL (its AOF is fsynced every second: the last second may be lost).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One agent of the fleet.
pub struct Agent {
    /// Its node id.
    pub name: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    /// The process.
    pub daemon: Daemon,
}

/// What an agent offers, for [`Fleet::start`].
#[derive(Clone)]
pub struct AgentSpec {
    /// Node id.
    pub name: &'static str,
    /// Labels.
    pub labels: &'static str,
    /// Memory offered, MiB.
    pub memory_mib: u64,
    /// Most sandboxes.
    pub slots: u32,
}

/// Redis, one or more Olympus processes, and agents, all on this machine.
pub struct Fleet {
    /// The first Olympus's API.
    pub api: Api,
    /// Redis.
    pub redis: Redis,
    /// Olympus processes (the first is the one `api` talks to).
    pub olympus: Vec<Daemon>,
    /// The agents.
    pub agents: Vec<Agent>,
    tmp: tempfile::TempDir,
    rootfs: PathBuf,
    /// Released when the fleet is gone (after its processes are killed).
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Fleet {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Fleet {
    /// Starts Redis, one Olympus (`o1`) and the agents, waits until every agent is alive in
    /// Hades, and registers the busybox template.
    pub async fn start(agents: &[AgentSpec]) -> Fleet {
        Fleet::start_with(agents, &[]).await
    }

    /// [`Fleet::start`] with extra arguments for the first Olympus (e.g. `["--dead-after", "3s"]`).
    pub async fn start_with(agents: &[AgentSpec], olympus_args: &[&str]) -> Fleet {
        Fleet::start_full(agents, olympus_args, &[]).await
    }

    /// [`Fleet::start_with`] with environment variables for the first Olympus (e.g.
    /// `ENABLE_HYPNOS=1`).
    pub async fn start_full(agents: &[AgentSpec], olympus_args: &[&str], env: &[(&str, &str)]) -> Fleet {
        let serial = SERIAL.lock().await;
        let tmp = tempfile::Builder::new().prefix("tartarus-fleet-").tempdir().expect("tempdir");
        let rootfs = tmp.path().join("busybox-rootfs");
        build_busybox_rootfs(&rootfs);
        let redis = Redis::start(&tmp.path().join("redis"));
        let o1_dir = tmp.path().join("o1");
        let mut o1 = olympus_daemon(&o1_dir, &redis.url(), "o1", olympus_args, env);
        let mut api = Api::new(&o1_dir, o1.log.clone());
        api.url = o1.start().await;
        api.token = read_secret(&o1_dir.join("admin.token"), &o1).await;
        let mut fleet = Fleet { api, redis, olympus: vec![o1], agents: Vec::new(), tmp, rootfs, _serial: serial };
        for spec in agents {
            fleet.add_agent(spec).await;
        }
        fleet.wait_alive(agents.iter().map(|a| a.name).collect()).await;
        fleet.api.register_template(TEMPLATE, &fleet.rootfs).await;
        fleet
    }

    /// A directory of the fleet's own, removed with it.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The realm's agent secret file (written by `o1`).
    pub fn secret_file(&self) -> PathBuf {
        self.tmp.path().join("o1").join("agent.secret")
    }

    /// Starts another agent.
    pub async fn add_agent(&mut self, spec: &AgentSpec) {
        let secret = self.secret_file();
        self.add_agent_with_secret(spec, &secret).await;
    }

    /// Starts another agent that authenticates with the secret in `secret_file`.
    pub async fn add_agent_with_secret(&mut self, spec: &AgentSpec, secret_file: &Path) {
        self.add_agent_with(spec, secret_file, &[]).await;
    }

    /// Starts another agent with the secret in `secret_file` and extra arguments.
    pub async fn add_agent_with(&mut self, spec: &AgentSpec, secret_file: &Path, extra: &[&str]) {
        let data_dir = self.tmp.path().join(spec.name);
        let mut args: Vec<String> = vec!["--data-dir".into(), data_dir.display().to_string(), "agent".into()];
        args.extend(
            [
                "--olympus",
                &self.api.url,
                "--redis",
                &self.redis.url(),
                "--node-id",
                spec.name,
                "--listen",
                "127.0.0.1:0",
                "--heartbeat",
                HEARTBEAT,
                "--memory",
                &spec.memory_mib.to_string(),
                "--slots",
                &spec.slots.to_string(),
            ]
            .map(String::from),
        );
        args.extend(["--agent-secret-file".to_string(), secret_file.display().to_string()]);
        if !spec.labels.is_empty() {
            args.extend(["--labels".to_string(), spec.labels.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let announce = format!("tartarus: agent {} listening on ", spec.name);
        let mut daemon = Daemon::new(&format!("agent {}", spec.name), args, &[], &announce);
        daemon.start().await;
        self.agents.push(Agent { name: spec.name.into(), data_dir, daemon });
    }

    /// Starts another Olympus on the same Redis (sharing the agent secret); returns its API.
    pub async fn add_olympus(&mut self, name: &str) -> Api {
        let dir = self.tmp.path().join(name);
        let secret = self.secret_file().display().to_string();
        let mut d = olympus_daemon(&dir, &self.redis.url(), name, &["--agent-secret-file", &secret], &[]);
        let mut api = Api::new(&dir, d.log.clone());
        api.url = d.start().await;
        api.token = read_secret(&dir.join("admin.token"), &d).await;
        self.olympus.push(d);
        api
    }

    /// The agent called `name`.
    pub fn agent(&mut self, name: &str) -> &mut Agent {
        self.agents.iter_mut().find(|a| a.name == name).unwrap_or_else(|| panic!("no agent {name}"))
    }

    /// `GET /v1/nodes` as (name → node view).
    pub async fn nodes(&self) -> Vec<Value> {
        let (status, body) = self.get("/v1/nodes").await;
        assert_eq!(status, StatusCode::OK, "GET /v1/nodes: {body}");
        body["nodes"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until every node in `names` is alive in Hades.
    pub async fn wait_alive(&self, names: Vec<&str>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let nodes = self.nodes().await;
            let alive = |n: &str| nodes.iter().any(|v| v["name"] == n && v["state"] == "alive");
            if names.iter().all(|n| alive(n)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nodes {names:?} not all alive within 30 s: {nodes:?}\n{}",
                self.daemon_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything every daemon printed.
    pub fn daemon_logs(&self) -> String {
        let mut s = String::new();
        for (i, o) in self.olympus.iter().enumerate() {
            s.push_str(&format!("----- olympus #{i} -----\n{}", o.log()));
        }
        for a in &self.agents {
            s.push_str(&format!("----- agent {} -----\n{}", a.name, a.daemon.log()));
        }
        s
    }
}

fn olympus_daemon(dir: &Path, redis: &str, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
    std::fs::create_dir_all(dir).expect("olympus dir");
    let mut args: Vec<String> = vec!["--data-dir".into(), dir.display().to_string(), "olympus".into()];
    let dead_after = if extra.contains(&"--dead-after") { None } else { Some(["--dead-after", DEAD_AFTER]) };
    args.extend(dead_after.into_iter().flatten().map(String::from));
    args.extend(
        [
            "--redis",
            redis,
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--claim-after",
            CLAIM_AFTER,
            "--pending-timeout",
            "90s",
            "--max-live",
            "1000",
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    Daemon::new(&format!("olympus {name}"), args, env, "tartarus: listening on ")
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.daemon_logs());
        }
        for a in &mut self.agents {
            a.daemon.kill();
        }
        for o in &mut self.olympus {
            o.kill();
        }
        for a in &self.agents {
            kill_leftovers(self.tmp.path(), &a.data_dir.join("sandboxes"));
            super::remove_networks(&a.data_dir);
        }
    }
}

/// Stops (SIGSTOP) or continues (SIGCONT) a daemon: a frozen agent sends no heartbeat.
pub fn freeze(d: &Daemon, frozen: bool) {
    signal(d.pid() as i32, if frozen { libc::SIGSTOP } else { libc::SIGCONT });
}
