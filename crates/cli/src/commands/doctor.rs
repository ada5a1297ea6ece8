//! `tartarus doctor`: checks this host — runsc and its platforms, KVM, cgroups, busybox, the
//! data dir — by trying them, and says what to install or change for those that fail.
//!
//! It talks to no realm: it runs a trivial sandbox with `runsc` itself, so it also works
//! before the first `tartarus up`. With `--redis URL` it also checks a fleet's Redis: that it
//! answers, is new enough, and keeps what it acknowledges (AOF on, no eviction).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use tartarus_hecatoncheir::erinyes::CgroupVersion;
use tartarus_hecatoncheir::runtime::gvisor::{Platform, RunscInfo};
use tartarus_store::redis::RedisSettings;
use tartarus_store::{RedisConfig, RedisStore, StoreError};

use super::Global;
use crate::output::Format;
use crate::raw::{self, RawRun};

/// The static busybox session sandboxes are kept up with.
const BUSYBOX: &str = "/bin/busybox";
/// How long the sandbox on the chosen platform may take.
const RUN_LIMIT: Duration = Duration::from_secs(60);
/// How long the KVM sandbox may take; where KVM cannot boot guests it hangs.
const KVM_LIMIT: Duration = Duration::from_secs(15);
/// The cgroup parent of the test sandboxes.
const CGROUP_PARENT: &str = "/tartarus-doctor";
const INSTALL_RUNSC: &str = "install: scripts/setup.sh (or apt-get install runsc)";
/// The oldest Redis with `XAUTOCLAIM`, which Acheron's reclaiming of abandoned entries uses.
const REDIS_MIN: (u32, u32) = (6, 2);

/// Arguments.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  sudo tartarus doctor
  sudo tartarus doctor -o json | jq '.checks[] | select(.status != \"ok\")'
  sudo tartarus doctor --redis redis://10.0.0.2:6379   # and the Redis of a fleet

Exit code: 0 when runsc can run a sandbox on this host (and, with --redis, that Redis passes
its checks), 1 otherwise.")]
pub struct Args {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Also check the Redis of a fleet (Olympus and agents): reachable, 6.2 or newer, `appendonly
    /// yes`, `maxmemory-policy noeviction`.
    #[arg(long, env = "TARTARUS_REDIS", value_name = "URL")]
    pub redis: Option<String>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
        }
    }
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
struct Check {
    name: String,
    status: Status,
    detail: String,
    fix: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Ok, detail: detail.into(), fix: None }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Self { name: name.into(), status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }
}

#[derive(Serialize)]
struct Report {
    checks: Vec<Check>,
}

/// Runs the verb.
pub async fn execute(args: Args, g: &Global) -> anyhow::Result<i32> {
    let mut checks = vec![root()];
    let probe = tokio::task::spawn_blocking(|| RunscInfo::probe(None)).await?;
    let mut runs = false;
    match probe {
        Ok(info) => {
            let platform = raw::default_platform(&info);
            checks.push(runsc(&info, platform));
            let run = sandbox(&info, platform).await;
            runs = run.status == Status::Ok;
            checks.push(run);
            checks.push(kvm(Some(&info)).await);
        }
        Err(e) => {
            checks.push(Check::fail("runsc", e, INSTALL_RUNSC));
            checks.push(kvm(None).await);
        }
    }
    checks.push(cgroups(Path::new("/sys/fs/cgroup")));
    checks.push(iptables().await);
    checks.extend(networking(runs).await);
    checks.push(busybox(Path::new(BUSYBOX)));
    checks.push(data_dir(&g.data_dir));
    let mut redis_ok = true;
    if let Some(url) = &args.redis {
        let found = redis(url).await;
        redis_ok = found.iter().all(|c| c.status != Status::Fail);
        checks.extend(found);
    }
    match args.output {
        Format::Json => crate::output::print_json(&Report { checks })?,
        Format::Table => print!("{}", render(&checks)),
    }
    Ok(if runs && redis_ok { 0 } else { 1 })
}

/// One line per check, and a `→ fix:` line under each that is not ok.
fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{:<4}  {:<width$}  {}\n", c.status.label(), c.name, c.detail));
        if let (Some(fix), true) = (&c.fix, c.status != Status::Ok) {
            out.push_str(&format!("{:<4}  → fix: {fix}\n", ""));
        }
    }
    out
}

fn root() -> Check {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Check::ok("root", "running as root")
    } else {
        Check::fail(
            "root",
            format!("running as uid {uid}; runsc and cgroups need root"),
            "run it as root: sudo tartarus …",
        )
    }
}

fn runsc(info: &RunscInfo, platform: Platform) -> Check {
    let detail = format!(
        "runsc {} at {}; systrap: {}; platform: {}",
        info.version,
        info.path.display(),
        if info.has_systrap { "yes" } else { "no" },
        platform.as_str()
    );
    if info.has_systrap {
        Check::ok("runsc", detail)
    } else {
        Check::warn("runsc", detail, "scripts/setup.sh installs a newer runsc with systrap (faster than ptrace)")
    }
}

/// Runs `/bin/busybox true` in a throwaway sandbox on `platform`; how long it took, or why not.
async fn try_sandbox(info: &RunscInfo, platform: Platform, limit: Duration) -> Result<Duration, String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let rootfs = tmp.path().join("rootfs");
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("cannot make {}: {e}", bin.display()))?;
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .map_err(|e| format!("cannot copy {BUSYBOX} into the test rootfs: {e}"))?;
    let id = format!("doctor-{}-{}", std::process::id(), platform.as_str());
    let bundle = tmp.path().join("bundle");
    let cgroup = format!("{CGROUP_PARENT}/{id}");
    raw::write_bundle(&bundle, &rootfs, &[BUSYBOX, "true"], &cgroup)
        .map_err(|e| format!("cannot write the test bundle: {e}"))?;
    let state = tmp.path().join("state");
    let run = RawRun { runsc: &info.path, root: &state, platform, overlay: None, bundle: &bundle, id: &id, limit };
    let outcome = run.run().await;
    raw::remove_cgroup(&cgroup);
    raw::remove_cgroup(CGROUP_PARENT);
    match outcome.failure {
        None => Ok(outcome.elapsed),
        Some(f) => Err(f),
    }
}

async fn sandbox(info: &RunscInfo, platform: Platform) -> Check {
    let name = format!("sandbox ({})", platform.as_str());
    match try_sandbox(info, platform, RUN_LIMIT).await {
        Ok(d) => Check::ok(name, format!("runsc ran `{BUSYBOX} true` in {} ms", d.as_millis())),
        Err(e) => Check::fail(
            name,
            format!("runsc could not run a sandbox: {e}"),
            "run as root on the host (or in a --privileged container); for runsc's own logs add \
             --debug --debug-log=/tmp/runsc/ to a `runsc run`; scripts/setup.sh installs a runsc known to work",
        ),
    }
}

async fn kvm(info: Option<&RunscInfo>) -> Check {
    let dev = Path::new("/dev/kvm");
    let fix = "keep the default platform; for --platform kvm, run on bare metal or enable nested virtualisation";
    if !dev.exists() {
        return Check::warn(
            "kvm",
            "no /dev/kvm: runsc's kvm platform is unavailable (systrap and ptrace do not need it)",
            fix,
        );
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return Check::warn(
            "kvm",
            format!("/dev/kvm exists but cannot be opened: {e}"),
            "run as root, or join the kvm group",
        );
    }
    let Some(info) = info else {
        return Check::warn(
            "kvm",
            "/dev/kvm opens; runsc is missing, so its kvm platform was not tried",
            INSTALL_RUNSC,
        );
    };
    match try_sandbox(info, Platform::Kvm, KVM_LIMIT).await {
        Ok(d) => Check::ok("kvm", format!("/dev/kvm opens and runsc's kvm platform ran a sandbox in {} ms", d.as_millis())),
        Err(e) => Check::warn(
            "kvm",
            format!("/dev/kvm opens but runsc's kvm platform did not run a sandbox ({e}): normal guests likely cannot boot here"),
            fix,
        ),
    }
}

fn cgroups(mount: &Path) -> Check {
    let version = match CgroupVersion::detect(mount) {
        Ok(v) => v,
        Err(e) => {
            return Check::fail(
                "cgroups",
                format!("cannot read {}: {e}", mount.display()),
                "mount the cgroup hierarchy at /sys/fs/cgroup",
            )
        }
    };
    let (label, wanted, present): (&str, &[&str], Vec<String>) = match version {
        CgroupVersion::V1 => {
            let wanted: &[&str] = &["memory", "cpu", "cpuacct", "pids"];
            let present = wanted.iter().filter(|c| mount.join(c).is_dir()).map(|c| c.to_string()).collect();
            ("v1", wanted, present)
        }
        CgroupVersion::V2 => {
            let text = std::fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
            ("v2", &["memory", "cpu", "pids"], text.split_whitespace().map(str::to_owned).collect())
        }
    };
    let missing: Vec<&str> = wanted.iter().copied().filter(|c| !present.iter().any(|p| p == c)).collect();
    if missing.is_empty() {
        Check::ok("cgroups", format!("{label}: {} present", wanted.join(", ")))
    } else {
        Check::fail(
            "cgroups",
            format!("{label}: missing {}", missing.join(", ")),
            "enable the missing controllers (e.g. cgroup_enable=memory on the kernel command line), or boot with cgroup v2",
        )
    }
}

/// Styx's needs: namespaces and veths (`ip`), isolated bridge ports (`bridge`), forwarding, and
/// which network mode gVisor gets.
async fn networking(runs: bool) -> Vec<Check> {
    let mut out = Vec::new();
    let fix = "apt-get install iproute2";
    for tool in ["ip", "bridge"] {
        out.push(match tokio::process::Command::new(tool).arg("-V").output().await {
            Ok(o) if o.status.success() => Check::ok(tool, String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            _ => Check::fail(tool, format!("`{tool}` is missing: sandboxes cannot have a network"), fix),
        });
    }
    out.push(match tokio::process::Command::new("ip").args(["netns", "list"]).output().await {
        Ok(o) if o.status.success() => Check::ok("network namespaces", "ip netns works"),
        Ok(o) => Check::fail(
            "network namespaces",
            raw::tail(&String::from_utf8_lossy(&o.stderr), 2),
            "run as root on a kernel with network namespaces",
        ),
        Err(e) => Check::fail("network namespaces", e.to_string(), fix),
    });
    out.push(match std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").map(|v| v.trim().to_owned()) {
        Ok(v) if v == "1" => Check::ok("IP forwarding", "on"),
        Ok(_) => Check::warn("IP forwarding", "off", "nothing to do: the agent turns it on when it sets up its bridge"),
        Err(e) => Check::fail("IP forwarding", e.to_string(), "a kernel with IPv4 forwarding"),
    });
    let bridge = match tokio::process::Command::new("ip").args(["-br", "addr", "show", "tartarus0"]).output().await {
        Ok(o) if o.status.success() => Check::ok(
            "bridge tartarus0",
            String::from_utf8_lossy(&o.stdout).split_whitespace().collect::<Vec<_>>().join(" "),
        ),
        _ => Check::warn(
            "bridge tartarus0",
            "not there yet",
            "nothing to do: `tartarus up` or `tartarus agent` creates it",
        ),
    };
    out.push(bridge);
    // The same probe an agent makes at start: a throwaway sandbox with gVisor's netstack in a
    // throwaway namespace (runsc releases before 2024-08-01 refuse it on kernels 6.x).
    if runs {
        out.push(network_mode().await);
    }
    out
}

/// Which network mode gVisor gets here, found by booting a throwaway sandbox with netstack.
async fn network_mode() -> Check {
    let probed = tokio::task::spawn_blocking(|| {
        let tmp = tempfile::Builder::new().prefix("tartarus-doctor-").tempdir().map_err(|e| e.to_string())?;
        let rt =
            tartarus_hecatoncheir::runtime::gvisor::Gvisor::new(tartarus_hecatoncheir::runtime::gvisor::GvisorConfig {
                runsc: None,
                platform: None,
                state_root: tmp.path().join("runsc"),
                session_init: BUSYBOX.into(),
                cgroup_mount: "/sys/fs/cgroup".into(),
            })
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(rt.probe_network(tmp.path()))
    })
    .await;
    match probed {
        Ok(Ok((mode, None))) => Check::ok("sandbox network mode", mode.describe()),
        Ok(Ok((mode, Some(why)))) => {
            Check::ok("sandbox network mode", format!("{} (netstack refused: {why})", mode.describe()))
        }
        Ok(Err(e)) => Check::warn("sandbox network mode", e, "see the runsc check above"),
        Err(e) => Check::warn("sandbox network mode", e.to_string(), "see the runsc check above"),
    }
}

async fn iptables() -> Check {
    let fix = "apt-get install iptables";
    match tokio::process::Command::new("iptables").arg("--version").output().await {
        Ok(o) if o.status.success() => Check::ok("iptables", String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => Check::warn(
            "iptables",
            format!("`iptables --version` failed: {}", raw::tail(&String::from_utf8_lossy(&o.stderr), 2)),
            fix,
        ),
        Err(e) => Check::warn(
            "iptables",
            format!("not found ({e}); sandbox networking will need it (only `none` exists so far)"),
            fix,
        ),
    }
}

fn busybox(path: &Path) -> Check {
    let fix = "apt-get install busybox-static";
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return Check::fail(
                "busybox",
                format!("{}: {e} (session sandboxes need a static busybox)", path.display()),
                fix,
            )
        }
    };
    match elf_is_static(&bytes) {
        Ok(true) => Check::ok("busybox", format!("{} is statically linked", path.display())),
        Ok(false) => Check::fail(
            "busybox",
            format!("{} is dynamically linked; session sandboxes need a static one", path.display()),
            fix,
        ),
        Err(e) => Check::fail("busybox", format!("{}: {e}", path.display()), fix),
    }
}

/// True for an ELF executable without a program interpreter (`PT_INTERP`): it needs no
/// dynamic loader or libraries, so it runs in any root filesystem.
fn elf_is_static(b: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if b.len() < 52 || &b[..4] != b"\x7fELF" {
        return Err("not an ELF executable".into());
    }
    let little = match b[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown ELF byte order".into()),
    };
    let field = |at: usize, len: usize| -> Result<u64, String> {
        let s = at.checked_add(len).and_then(|end| b.get(at..end)).ok_or("truncated ELF file")?;
        let mut v = 0u64;
        for i in 0..len {
            let byte = if little { s[len - 1 - i] } else { s[i] };
            v = (v << 8) | u64::from(byte);
        }
        Ok(v)
    };
    let (phoff, phentsize, phnum) = match b[4] {
        1 => (field(0x1c, 4)?, field(0x2a, 2)?, field(0x2c, 2)?),
        2 => (field(0x20, 8)?, field(0x36, 2)?, field(0x38, 2)?),
        _ => return Err("unknown ELF class".into()),
    };
    for i in 0..phnum {
        let at = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or("truncated ELF file")?;
        if field(at, 4)? == u64::from(PT_INTERP) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn data_dir(dir: &Path) -> Check {
    let fix = "run as root, or pass --data-dir (TARTARUS_DATA_DIR) naming a writable directory";
    if let Err(e) = std::fs::create_dir_all(dir) {
        return Check::fail("data dir", format!("cannot create {}: {e}", dir.display()), fix);
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            Check::ok("data dir", format!("{} is writable", dir.display()))
        }
        Err(e) => Check::fail("data dir", format!("cannot write in {}: {e}", dir.display()), fix),
    }
}

/// Connects to the Redis at `url` as Olympus and the agents do, and judges its settings.
async fn redis(url: &str) -> Vec<Check> {
    let shown = redacted(url);
    let cfg = RedisConfig {
        url: url.to_owned(),
        prefix: "tartarus".into(),
        consumer: "doctor".into(),
        claim_after: Duration::from_secs(30),
    };
    let store = match RedisStore::connect(cfg).await {
        Ok(s) => s,
        Err(e) => {
            let why = tcp_probe(url).await;
            return vec![Check::fail(
                "redis",
                format!("{}{why}", store_error(&e)),
                "check the URL (redis://[:PASSWORD@]HOST:PORT[/DB]) and that Redis 6.2 or newer listens there; \
                 for a local one: scripts/redis.sh start (prints REDIS_URL)",
            )];
        }
    };
    match store.settings().await {
        Ok(s) => redis_verdict(&shown, &s),
        Err(e) => vec![Check::fail(
            "redis",
            format!("connected to {shown} but cannot read its settings: {}", store_error(&e)),
            "let this user run INFO and CONFIG GET (an ACL may forbid them)",
        )],
    }
}

/// The checks of a reachable Redis (`shown` is its URL, password masked) from its settings.
fn redis_verdict(shown: &str, s: &RedisSettings) -> Vec<Check> {
    let (min_major, min_minor) = REDIS_MIN;
    let version = match parse_version(&s.version) {
        Some(v) if v >= REDIS_MIN => Check::ok("redis", format!("Redis {} at {shown}", s.version)),
        Some(_) => Check::fail(
            "redis",
            format!(
                "Redis {} at {shown} is older than {min_major}.{min_minor}: it lacks XAUTOCLAIM, which Acheron needs \
                 to take back entries a dead process held",
                s.version
            ),
            format!("upgrade to Redis {min_major}.{min_minor} or newer (Debian 12's redis-server is 7.0)"),
        ),
        None => Check::warn(
            "redis",
            format!("Redis at {shown} reports no version Tartarus understands ({:?})", s.version),
            format!("make sure it is Redis {min_major}.{min_minor} or newer"),
        ),
    };
    let aof = if s.appendonly && s.appendfsync == "no" {
        Check::warn(
            "redis aof",
            "appendonly yes but appendfsync no: the kernel decides when the log reaches the disk, so a \
             machine crash can lose tens of seconds of records and queue entries",
            "set appendfsync everysec (at most a second lost) or always in redis.conf, or CONFIG SET then CONFIG REWRITE",
        )
    } else if s.appendonly {
        Check::ok(
            "redis aof",
            format!("appendonly yes, appendfsync {}: what Redis acknowledged survives its restart", s.appendfsync),
        )
    } else {
        Check::fail(
            "redis aof",
            "appendonly no: Acheron and records acknowledged to clients can be lost on a Redis restart",
            "set `appendonly yes` (and appendfsync everysec or always) in redis.conf, or CONFIG SET then \
             CONFIG REWRITE; scripts/redis.sh starts a Redis set up so",
        )
    };
    let eviction = if s.maxmemory_policy == "noeviction" {
        Check::ok("redis eviction", "maxmemory-policy noeviction: Redis refuses writes rather than drop keys")
    } else {
        Check::fail(
            "redis eviction",
            format!(
                "maxmemory-policy {}: Redis may evict sandbox records and queue entries under memory pressure",
                s.maxmemory_policy
            ),
            "set maxmemory-policy noeviction in redis.conf, or CONFIG SET then CONFIG REWRITE",
        )
    };
    vec![version, aof, eviction]
}

/// `major.minor` of a `redis_version` such as `7.0.15`.
fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Why a TCP connection to the Redis of `url` fails, as ` (…)`; empty if it does not (or for
/// URLs without a TCP address). The store gives up on a deadline; this names the network cause
/// (refused, no route, unknown host) when there is one.
async fn tcp_probe(url: &str) -> String {
    let Some(addr) = tcp_address(url) else { return String::new() };
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => String::new(),
        Ok(Err(e)) => format!(" (TCP connect to {addr}: {e})"),
        Err(_) => format!(" (TCP connect to {addr}: no answer in 2 s)"),
    }
}

/// A store error and its causes on one line, without the generic "state database" label.
fn store_error(e: &StoreError) -> String {
    match e {
        StoreError::Database { context, source } => format!("{context}: {}", causes(source.as_ref())),
        other => causes(other),
    }
}

/// An error and its causes on one line.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source()).map(|e| e.to_string()).collect::<Vec<_>>().join(": ")
}

/// `host:port` of a `redis://` or `rediss://` URL (port 6379 when none is given).
fn tcp_address(url: &str) -> Option<String> {
    let rest = url.strip_prefix("redis://").or_else(|| url.strip_prefix("rediss://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        return None;
    }
    let has_port = match host_port.rfind(']') {
        Some(close) => host_port[close..].contains(':'),
        None => host_port.contains(':'),
    };
    Some(if has_port { host_port.to_owned() } else { format!("{host_port}:6379") })
}

/// The URL with its password masked.
fn redacted(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let Some(at) = url[start..].find('@').map(|i| start + i) else { return url.to_owned() };
    match url[start..at].find(':') {
        Some(colon) => format!("{}:***{}", &url[..start + colon], &url[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF header with program headers of the given types.
    fn elf(class64: bool, little: bool, types: &[u32]) -> Vec<u8> {
        let (ehsize, phentsize) = if class64 { (64usize, 56usize) } else { (52, 32) };
        let mut b = vec![0u8; ehsize + phentsize * types.len()];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = if class64 { 2 } else { 1 };
        b[5] = if little { 1 } else { 2 };
        let mut put = |at: usize, len: usize, v: u64| {
            for i in 0..len {
                let byte = (v >> (8 * i)) as u8;
                b[if little { at + i } else { at + len - 1 - i }] = byte;
            }
        };
        if class64 {
            put(0x20, 8, ehsize as u64);
            put(0x36, 2, phentsize as u64);
            put(0x38, 2, types.len() as u64);
        } else {
            put(0x1c, 4, ehsize as u64);
            put(0x2a, 2, phentsize as u64);
            put(0x2c, 2, types.len() as u64);
        }
        for (i, t) in types.iter().enumerate() {
            put(ehsize + i * phentsize, 4, u64::from(*t));
        }
        b
    }

    #[test]
    fn static_and_dynamic_elves() {
        // PT_LOAD = 1, PT_INTERP = 3, PT_DYNAMIC = 2.
        for (class64, little) in [(true, true), (true, false), (false, true), (false, false)] {
            assert_eq!(elf_is_static(&elf(class64, little, &[1, 1])), Ok(true));
            assert_eq!(elf_is_static(&elf(class64, little, &[1, 3, 2])), Ok(false));
        }
        assert!(elf_is_static(b"#!/bin/sh\necho not an elf, but long enough to have a header at all\n").is_err());
        let mut truncated = elf(true, true, &[1, 3]);
        truncated.truncate(70);
        assert!(elf_is_static(&truncated).is_err());
    }

    #[test]
    fn this_test_binary_is_elf() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_is_static(&me).is_ok());
    }

    #[test]
    fn renders_checks_with_fixes() {
        let checks = [
            Check::ok("root", "running as root"),
            Check::fail("busybox", "/bin/busybox: missing", "apt-get install busybox-static"),
            Check::warn("kvm", "no /dev/kvm", "enable it"),
        ];
        assert_eq!(
            render(&checks),
            "ok    root     running as root\n\
             FAIL  busybox  /bin/busybox: missing\n      → fix: apt-get install busybox-static\n\
             warn  kvm      no /dev/kvm\n      → fix: enable it\n"
        );
        let json = serde_json::to_value(Report { checks: checks.to_vec() }).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][0]["fix"], serde_json::Value::Null);
    }

    fn settings(version: &str, appendonly: bool, policy: &str) -> RedisSettings {
        RedisSettings {
            version: version.into(),
            appendonly,
            appendfsync: "everysec".into(),
            maxmemory_policy: policy.into(),
        }
    }

    fn statuses(checks: &[Check]) -> Vec<(&str, Status)> {
        checks.iter().map(|c| (c.name.as_str(), c.status)).collect()
    }

    #[test]
    fn redis_set_up_for_tartarus_passes() {
        let checks = redis_verdict("redis://127.0.0.1:6379", &settings("7.0.15", true, "noeviction"));
        assert_eq!(
            statuses(&checks),
            [("redis", Status::Ok), ("redis aof", Status::Ok), ("redis eviction", Status::Ok)]
        );
        assert_eq!(checks[0].detail, "Redis 7.0.15 at redis://127.0.0.1:6379");
        assert!(redis_verdict("u", &settings("6.2.0", true, "noeviction")).iter().all(|c| c.status == Status::Ok));
        assert!(redis_verdict("u", &settings("10.0.1", true, "noeviction")).iter().all(|c| c.status == Status::Ok));
    }

    #[test]
    fn redis_without_aof_or_with_eviction_fails() {
        let checks = redis_verdict("u", &settings("7.2.4", false, "allkeys-lru"));
        assert_eq!(
            statuses(&checks),
            [("redis", Status::Ok), ("redis aof", Status::Fail), ("redis eviction", Status::Fail)]
        );
        assert!(checks[1].detail.contains("can be lost on a Redis restart"), "{}", checks[1].detail);
        assert!(checks[1].fix.as_deref().unwrap().contains("appendonly yes"));
        assert!(checks[2].detail.contains("allkeys-lru"), "{}", checks[2].detail);
        assert!(checks[2].fix.as_deref().unwrap().contains("maxmemory-policy noeviction"));
        let checks = redis_verdict("u", &settings("7.2.4", true, "volatile-lru"));
        assert_eq!(checks[2].status, Status::Fail);
        let lazy = RedisSettings { appendfsync: "no".into(), ..settings("7.2.4", true, "noeviction") };
        let checks = redis_verdict("u", &lazy);
        assert_eq!(checks[1].status, Status::Warn);
        assert!(checks[1].fix.as_deref().unwrap().contains("appendfsync everysec"));
    }

    #[test]
    fn redis_older_than_6_2_fails() {
        for old in ["6.0.16", "5.0.14", "6.1.0"] {
            let checks = redis_verdict("u", &settings(old, true, "noeviction"));
            assert_eq!(checks[0].status, Status::Fail, "{old}");
            assert!(checks[0].detail.contains("XAUTOCLAIM"), "{}", checks[0].detail);
        }
        let checks = redis_verdict("u", &settings("", true, "noeviction"));
        assert_eq!(checks[0].status, Status::Warn);
    }

    #[test]
    fn versions_and_urls() {
        assert_eq!(parse_version("7.0.15"), Some((7, 0)));
        assert_eq!(parse_version("6.2"), Some((6, 2)));
        assert_eq!(parse_version("255.255.255"), Some((255, 255)));
        assert_eq!(parse_version("7"), None);
        assert_eq!(parse_version("x.y"), None);
        assert_eq!(redacted("redis://:secret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redacted("redis://user:secret@h:6379"), "redis://user:***@h:6379");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        assert_eq!(redacted("redis://user@h"), "redis://user@h");
        assert_eq!(tcp_address("redis://:p@w@10.0.0.2:6380/1").as_deref(), Some("10.0.0.2:6380"));
        assert_eq!(tcp_address("rediss://redis.example?protocol=resp3").as_deref(), Some("redis.example:6379"));
        assert_eq!(tcp_address("redis://[::1]").as_deref(), Some("[::1]:6379"));
        assert_eq!(tcp_address("redis://[::1]:7000/0").as_deref(), Some("[::1]:7000"));
        assert_eq!(tcp_address("redis+unix:///run/redis.sock"), None);
        assert_eq!(tcp_address("redis://"), None);
    }

    #[test]
    fn data_dir_is_created() {
        let tmp = tempfile::tempdir().unwrap();
        let c = data_dir(&tmp.path().join("a/b"));
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(tmp.path().join("a/b").is_dir());
    }
}
