//! The Redis store against a real `redis-server`, one per test, started on a free port.
//!
//! Without `redis-server` on the PATH these tests are skipped, except under `CI=true`, where
//! they fail: CI must run them (install the `redis-server` apt package).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tartarus_core::{
    Capacity, Failure, KillReason, NodeInfo, SandboxId, SandboxRecord, SandboxState, SoulRequest, TemplateName,
    TemplateRecord, Verdict,
};
use tartarus_store::{
    Acheron, Cocytus, Events, FailureFilter, Hades, RedisConfig, RedisStore, SandboxFilter, SandboxStore, StoreError,
    TemplateStore,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` child with AOF on, killed when dropped.
struct Server {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server; `None` (after saying so) when `redis-server` is not installed.
    async fn start() -> Option<Self> {
        let installed = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "redis-server is not on the PATH: the Redis store tests need it in CI (apt package redis-server)"
            );
            eprintln!("skipping: redis-server is not on the PATH (apt package redis-server)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let server = Self { child: spawn(port, dir.path()), port, dir };
        server.wait_ready().await;
        Some(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn config(&self, prefix: &str, consumer: &str) -> RedisConfig {
        RedisConfig {
            prefix: prefix.into(),
            consumer: consumer.into(),
            claim_after: Duration::from_secs(1),
            ..RedisConfig::new(self.url())
        }
    }

    async fn store(&self, prefix: &str, consumer: &str) -> Arc<RedisStore> {
        RedisStore::connect(self.config(prefix, consumer)).await.unwrap()
    }

    /// A plain connection, to act behind the store's back.
    async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        ::redis::Client::open(self.url()).unwrap().get_multiplexed_async_connection().await.unwrap()
    }

    /// Kills the server (SIGKILL): no shutdown, no final save.
    fn crash(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Starts the server again on the same port and directory (so from its AOF).
    async fn start_again(&mut self) {
        self.child = spawn(self.port, self.dir.path());
        self.wait_ready().await;
    }

    /// How many client connections the server has.
    async fn clients(&self) -> usize {
        let list: String = ::redis::cmd("CLIENT").arg("LIST").query_async(&mut self.raw().await).await.unwrap();
        list.lines().count() - 1 // not counting the asking connection
    }

    async fn wait_ready(&self) {
        for _ in 0..400 {
            if ping(self.port).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(port: u16, dir: &Path) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction"])
        .args(["--save", ""])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

async fn ping(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else { return false };
    let mut buf = [0u8; 64];
    s.write_all(b"PING\r\n").await.is_ok()
        && matches!(tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await, Ok(Ok(n)) if buf[..n].starts_with(b"+PONG"))
}

fn record(tenant: &str) -> SandboxRecord {
    let spec = SoulRequest { template: "busybox".into(), ..Default::default() }.validate(tenant).unwrap();
    let verdict = Verdict { principal: "p".into(), rulings: vec![], judged_at: Utc::now() };
    SandboxRecord::admitted(SandboxId::generate(), spec, verdict)
}

/// Retries `f` until it succeeds or `within` passes (a restarting Redis answers with errors).
async fn eventually<T, F, Fut>(within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("not yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {within:?}: {e:?}"),
        }
    }
}

async fn pull_within(q: &RedisStore, within: Duration) -> Option<tartarus_store::Delivery> {
    tokio::time::timeout(within, q.pull()).await.ok().map(|d| d.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn insert_checks_existence_and_quota_atomically() {
    let Some(srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let (a, b, c) = (record("acme"), record("acme"), record("acme"));
    s.insert(&a, Some(2)).await.unwrap();
    s.insert(&b, Some(2)).await.unwrap();
    assert!(matches!(s.insert(&a, None).await, Err(StoreError::Exists(id)) if id == a.id.as_str()));
    match s.insert(&c, Some(2)).await {
        Err(StoreError::QuotaExceeded { tenant, live: 2, max: 2 }) => assert_eq!(tenant, "acme"),
        other => panic!("expected the quota to refuse: {other:?}"),
    }
    assert_eq!((s.count_live("acme").await.unwrap(), s.count_live("other").await.unwrap()), (2, 0));
    assert_eq!(s.get(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(s.get(&SandboxId::generate()).await.unwrap(), None);

    s.update(&a.id, Box::new(|r| r.state = SandboxState::Exited)).await.unwrap();
    assert_eq!(s.count_live("acme").await.unwrap(), 1);
    s.insert(&c, Some(2)).await.unwrap();
    // A terminal record never changes again, and the change is not even applied.
    let applied = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = applied.clone();
    let after = s
        .update(
            &a.id,
            Box::new(move |r| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                r.state = SandboxState::Running;
            }),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.state, SandboxState::Exited);
    assert!(!applied.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(s.get(&a.id).await.unwrap().unwrap().state, SandboxState::Exited);
    assert_eq!(s.count_live("acme").await.unwrap(), 2);
    assert!(s.update(&SandboxId::generate(), Box::new(|_| {})).await.unwrap().is_none());
    // Inserting an already ended record does not count it as live.
    let mut done = record("acme");
    done.state = SandboxState::Exited;
    s.insert(&done, Some(2)).await.unwrap_err();
    s.insert(&done, None).await.unwrap();
    assert_eq!(s.count_live("acme").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_from_two_processes_all_land() {
    let Some(srv) = Server::start().await else { return };
    let (s1, s2) = (srv.store("t", "c1").await, srv.store("t", "c2").await);
    let rec = record("acme");
    s1.insert(&rec, None).await.unwrap();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let id = rec.id.clone();
            tokio::spawn(async move { s.update(&id, Box::new(|r| r.attempts += 1)).await.unwrap().unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(s2.get(&rec.id).await.unwrap().unwrap().attempts, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_land_in_cocytus_once_and_filter_newest_first() {
    let Some(srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let (a, b, c) = (record("acme"), record("acme"), record("zeta"));
    for r in [&a, &b, &c] {
        s.insert(r, None).await.unwrap();
    }
    // Exiting is not a failure.
    s.update(&a.id, Box::new(|r| r.state = SandboxState::Exited)).await.unwrap();
    assert!(s.failures(&FailureFilter::default()).await.unwrap().is_empty());
    s.update(
        &b.id,
        Box::new(|r| {
            r.node = Some("n1".into());
            r.state = SandboxState::Failed;
            r.error = Some("boom".into());
        }),
    )
    .await
    .unwrap();
    // Further updates of the ended record change nothing and append nothing.
    for _ in 0..3 {
        s.update(&b.id, Box::new(|r| r.state = SandboxState::Lost)).await.unwrap();
    }
    s.update(
        &c.id,
        Box::new(|r| {
            r.node = Some("n2".into());
            r.state = SandboxState::Killed;
            r.kill_reason = Some(KillReason::Timeout);
        }),
    )
    .await
    .unwrap();
    let retry = Failure {
        sandbox: a.id.clone(),
        tenant: "acme".into(),
        node: Some("n2".into()),
        kind: "retry".into(),
        reason: "launch failed".into(),
        at: Utc::now(),
    };
    s.report(&retry).await.unwrap();

    let all = s.failures(&FailureFilter::default()).await.unwrap();
    let kinds: Vec<(&str, &SandboxId)> = all.iter().map(|f| (f.kind.as_str(), &f.sandbox)).collect();
    assert_eq!(kinds, vec![("retry", &a.id), ("killed", &c.id), ("failed", &b.id)], "newest first, once each");
    assert_eq!(all[2].reason, "boom");
    let only = |filter: FailureFilter| {
        let s = s.clone();
        async move { s.failures(&filter).await.unwrap().into_iter().map(|f| f.kind).collect::<Vec<_>>() }
    };
    assert_eq!(only(FailureFilter { tenant: Some("acme".into()), ..Default::default() }).await, ["retry", "failed"]);
    assert_eq!(only(FailureFilter { node: Some("n2".into()), ..Default::default() }).await, ["retry", "killed"]);
    assert_eq!(only(FailureFilter { sandbox: Some(b.id.clone()), ..Default::default() }).await, ["failed"]);
    assert_eq!(only(FailureFilter { limit: Some(2), ..Default::default() }).await, ["retry", "killed"]);
    let later = FailureFilter { since: Some(Utc::now() + chrono::Duration::hours(1)), ..Default::default() };
    assert!(only(later).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_filter_and_come_newest_first() {
    let Some(srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let base = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    // 1200 records (more than one page of the index), one second apart; every 100th is
    // tenant `rare`'s, and the newest three are special.
    let mut all = Vec::new();
    for i in 0..1200i64 {
        let mut r = record(if i % 100 == 0 { "rare" } else { "acme" });
        r.created_at = base + chrono::Duration::seconds(i);
        if i % 3 == 0 {
            r.state = SandboxState::Running;
            r.node = Some(format!("n{}", i % 2));
        }
        s.insert(&r, None).await.unwrap();
        all.push(r);
    }
    let ids = |v: Vec<SandboxRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let expect = |f: &dyn Fn(&SandboxRecord) -> bool, limit: Option<usize>| {
        let mut v: Vec<SandboxId> = all.iter().rev().filter(|r| f(r)).map(|r| r.id.clone()).collect();
        v.truncate(limit.unwrap_or(usize::MAX));
        v
    };

    let everything = s.list(&SandboxFilter::default()).await.unwrap();
    assert_eq!(everything.len(), 1200);
    assert_eq!(ids(everything), expect(&|_| true, None));
    let newest = s.list(&SandboxFilter { limit: Some(3), ..Default::default() }).await.unwrap();
    assert_eq!(ids(newest), expect(&|_| true, Some(3)));
    let rare = SandboxFilter { tenant: Some("rare".into()), limit: Some(5), ..Default::default() };
    assert_eq!(ids(s.list(&rare).await.unwrap()), expect(&|r| r.spec.tenant == "rare", Some(5)));
    let running = SandboxFilter { states: vec![SandboxState::Running], ..Default::default() };
    assert_eq!(ids(s.list(&running).await.unwrap()), expect(&|r| r.state == SandboxState::Running, None));
    let on_n1 = SandboxFilter { node: Some("n1".into()), limit: Some(10), ..Default::default() };
    assert_eq!(ids(s.list(&on_n1).await.unwrap()), expect(&|r| r.node.as_deref() == Some("n1"), Some(10)));
    let queued_rare =
        SandboxFilter { states: vec![SandboxState::Queued], tenant: Some("rare".into()), ..Default::default() };
    assert_eq!(
        ids(s.list(&queued_rare).await.unwrap()),
        expect(&|r| r.state == SandboxState::Queued && r.spec.tenant == "rare", None)
    );
    assert!(s.list(&SandboxFilter { limit: Some(0), ..Default::default() }).await.unwrap().is_empty());
    // Records created within the same millisecond: ties go by id, as in the embedded store.
    let t = base + chrono::Duration::days(1);
    let mut same: Vec<SandboxRecord> = (0..3).map(|_| record("tie")).collect();
    for r in &mut same {
        r.created_at = t;
        s.insert(r, None).await.unwrap();
    }
    let mut tied: Vec<SandboxId> = same.iter().map(|r| r.id.clone()).collect();
    tied.sort();
    let got = s.list(&SandboxFilter { limit: Some(2), ..Default::default() }).await.unwrap();
    assert_eq!(ids(got), tied[..2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn templates_are_stored_listed_and_removed() {
    let Some(srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let tpl = |name: &str, size| TemplateRecord {
        name: TemplateName::parse(name).unwrap(),
        rootfs: PathBuf::from(format!("/var/lib/tartarus/templates/{name}")),
        source: "dir".into(),
        size_bytes: size,
        created_at: Utc::now(),
        image: None,
        ext4: None,
        snapshot: None,
        pool_size: 0,
    };
    s.put_template(&tpl("python", 1)).await.unwrap();
    s.put_template(&tpl("busybox", 2)).await.unwrap();
    s.put_template(&tpl("python", 3)).await.unwrap();
    let names: Vec<(String, u64)> =
        s.templates().await.unwrap().into_iter().map(|t| (t.name.to_string(), t.size_bytes)).collect();
    assert_eq!(names, [("busybox".to_owned(), 2), ("python".to_owned(), 3)]);
    let python = TemplateName::parse("python").unwrap();
    assert_eq!(s.template(&python).await.unwrap().unwrap().size_bytes, 3);
    assert!(s.remove_template(&python).await.unwrap());
    assert!(!s.remove_template(&python).await.unwrap());
    assert!(s.template(&python).await.unwrap().is_none());
    assert_eq!(s.templates().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hades_keeps_draining_apart_from_heartbeats() {
    let Some(srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let node = |name: &str| NodeInfo {
        name: name.into(),
        address: Some("http://10.0.0.5:7071".into()),
        runtimes: vec!["gvisor".into()],
        runtime_version: "runsc".into(),
        capacity: Capacity { vcpus: 8, memory_mib: 16384, slots: 20 },
        used: Capacity::default(),
        holds: Vec::new(),
        labels: Default::default(),
        started_at: Utc::now(),
        heartbeat_at: Utc::now(),
        draining: false,
        pools: Default::default(),
    };
    assert!(!s.set_draining("n1", true).await.unwrap(), "unknown node");
    s.heartbeat(&node("n2")).await.unwrap();
    s.heartbeat(&node("n1")).await.unwrap();
    assert!(s.set_draining("n1", true).await.unwrap());
    // A heartbeat claiming otherwise does not undo the drain.
    s.heartbeat(&NodeInfo { draining: false, ..node("n1") }).await.unwrap();
    let got: Vec<(String, bool)> = s.nodes().await.unwrap().into_iter().map(|n| (n.name, n.draining)).collect();
    assert_eq!(got, [("n1".to_owned(), true), ("n2".to_owned(), false)]);
    // Nor does a heartbeat claiming to drain start one.
    s.heartbeat(&NodeInfo { draining: true, ..node("n2") }).await.unwrap();
    assert!(s.set_draining("n1", false).await.unwrap());
    assert!(s.nodes().await.unwrap().iter().all(|n| !n.draining));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acheron_delivers_acknowledges_and_redelivers_given_back_entries() {
    let Some(srv) = Server::start().await else { return };
    let q = srv.store("t", "c").await;
    let (a, b) = (SandboxId::generate(), SandboxId::generate());
    let ra = q.push(&a).await.unwrap();
    // An entry naming no sandbox is dropped, never handed out.
    ::redis::cmd("XADD")
        .arg("t:acheron")
        .arg("*")
        .arg("id")
        .arg("../etc/passwd")
        .query_async::<String>(&mut srv.raw().await)
        .await
        .unwrap();
    q.push(&b).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 3);

    let d = q.pull().await.unwrap();
    assert_eq!((d.id.clone(), d.receipt.clone()), (a.clone(), ra));
    q.ack(&d.receipt).await.unwrap();
    let d = q.pull().await.unwrap();
    assert_eq!(d.id, b);
    assert_eq!(q.depth().await.unwrap(), 1, "acknowledged and invalid entries are deleted");
    assert_eq!(q.entries().await.unwrap(), vec![b.clone()], "taken entries are still entries");
    q.nack(&d.receipt).await.unwrap();
    assert_eq!(q.pull().await.unwrap(), d, "a given-back entry is delivered again");
    q.ack(&d.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
    assert!(matches!(q.ack("not-a-receipt").await, Err(StoreError::Corrupt { .. })));

    // A pull waits for the next push.
    let c = SandboxId::generate();
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.pull().await.unwrap() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    q.push(&c).await.unwrap();
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().id, c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_consumer_takes_back_what_it_held_before_a_restart() {
    let Some(srv) = Server::start().await else { return };
    let mut cfg = srv.config("t", "moirai-1");
    cfg.claim_after = Duration::from_secs(600); // so only the consumer's own pending list can bring it back
    let id = SandboxId::generate();
    let held = {
        let q = RedisStore::connect(cfg.clone()).await.unwrap();
        q.push(&id).await.unwrap();
        q.pull().await.unwrap()
    };
    let q = RedisStore::connect(cfg).await.unwrap();
    let again = pull_within(&q, Duration::from_secs(3)).await.expect("the held entry comes back at once");
    assert_eq!(again, held);
    q.ack(&again.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_entries_are_reclaimed_and_renewed_ones_are_not() {
    let Some(srv) = Server::start().await else { return };
    let (kept, abandoned) = (SandboxId::generate(), SandboxId::generate());
    let live = srv.store("t", "live").await;
    live.push(&kept).await.unwrap();
    let held = live.pull().await.unwrap();
    assert_eq!(held.id, kept);
    {
        let dead = srv.store("t", "dead").await;
        dead.push(&abandoned).await.unwrap();
        assert_eq!(dead.pull().await.unwrap().id, abandoned);
    } // gone without acknowledging or renewing

    let other = srv.store("t", "other").await;
    let started = Instant::now();
    let d = pull_within(&other, Duration::from_secs(5)).await.expect("the abandoned entry is reclaimed");
    assert_eq!(d.id, abandoned);
    assert!(started.elapsed() >= Duration::from_millis(500), "not before it sat idle: {:?}", started.elapsed());
    other.ack(&d.receipt).await.unwrap();
    // The entry the live store holds (and renews) is left alone.
    assert_eq!(pull_within(&other, Duration::from_secs(3)).await, None);
    live.ack(&held.receipt).await.unwrap();
    assert_eq!(other.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_stream_and_group_are_made_again() {
    let Some(srv) = Server::start().await else { return };
    let q = srv.store("t", "c").await;
    let mut raw = srv.raw().await;
    q.push(&SandboxId::generate()).await.unwrap();
    ::redis::cmd("DEL").arg("t:acheron").query_async::<i64>(&mut raw).await.unwrap();
    let a = SandboxId::generate();
    q.push(&a).await.unwrap();
    let d = eventually(Duration::from_secs(5), || q.pull()).await;
    assert_eq!(d.id, a);
    q.ack(&d.receipt).await.unwrap();

    // Deleted while an entry is held: renewals find the group gone and make it again, and
    // acknowledging the vanished entry is harmless.
    q.push(&SandboxId::generate()).await.unwrap();
    let held = q.pull().await.unwrap();
    ::redis::cmd("DEL").arg("t:acheron").query_async::<i64>(&mut raw).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    q.ack(&held.receipt).await.unwrap();

    // Deleted while a pull is blocked reading it.
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { eventually(Duration::from_secs(5), || q.pull()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    ::redis::cmd("DEL").arg("t:acheron").query_async::<i64>(&mut raw).await.unwrap();
    let b = SandboxId::generate();
    q.push(&b).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(8), waiter).await.unwrap().unwrap();
    assert_eq!(d.id, b);
    q.ack(&d.receipt).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn everything_works_again_after_redis_restarts() {
    let Some(mut srv) = Server::start().await else { return };
    let s = srv.store("t", "c").await;
    let writer = srv.store("t", "w").await;
    let events = Events::relayed();
    s.relay(events.clone());
    let before = record("acme");
    s.insert(&before, None).await.unwrap();
    let queued = SandboxId::generate();
    s.push(&queued).await.unwrap();
    let held = s.pull().await.unwrap();
    let waiting = SandboxId::generate();
    s.push(&waiting).await.unwrap();

    srv.crash();
    // While Redis is down calls fail, promptly: no hang, no panic.
    let t = Instant::now();
    assert!(s.get(&before.id).await.is_err());
    assert!(s.push(&SandboxId::generate()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_secs(15), s.pull()).await.expect("pull fails, not hangs").is_err());
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    tokio::time::sleep(Duration::from_millis(500)).await; // the relay and the keepalive find it down too
    srv.start_again().await;

    let after = record("acme");
    eventually(Duration::from_secs(10), || s.insert(&after, None)).await;
    assert_eq!(s.get(&before.id).await.unwrap(), Some(before.clone()), "the AOF kept the record");
    assert_eq!(s.count_live("acme").await.unwrap(), 2);
    let d = eventually(Duration::from_secs(10), || s.pull()).await;
    assert_eq!(d.id, waiting, "entries pushed before the restart are still there");
    s.ack(&d.receipt).await.unwrap();
    s.ack(&held.receipt).await.unwrap();
    assert_eq!(s.depth().await.unwrap(), 0);
    let fresh = SandboxId::generate();
    s.push(&fresh).await.unwrap();
    assert_eq!(pull_within(&s, Duration::from_secs(5)).await.unwrap().id, fresh);

    // The relay subscribed again by itself.
    let mut rx = events.subscribe();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    loop {
        n += 1;
        writer.update(&after.id, Box::new(move |r| r.attempts = n)).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            Ok(Ok(r)) if r.id == after.id => break,
            _ if Instant::now() < deadline => {}
            other => panic!("no change relayed after the restart: {other:?}"),
        }
    }
    let settings = s.settings().await.unwrap();
    assert!(settings.version.starts_with('7'), "{settings:?}");
    assert!(settings.appendonly);
    assert_eq!(settings.maxmemory_policy, "noeviction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_relay_delivers_changes_made_by_other_processes() {
    let Some(srv) = Server::start().await else { return };
    let (here, there) = (srv.store("t", "here").await, srv.store("t", "there").await);
    let other_realm = srv.store("u", "x").await;
    let events = Events::relayed();
    here.relay(events.clone());
    let mut rx = events.subscribe();
    let rec = record("acme");
    there.insert(&rec, None).await.unwrap();
    // The subscription may not be up yet: change the record until a change arrives.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        there.update(&rec.id, Box::new(|r| r.attempts += 1)).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            Ok(Ok(r)) => {
                assert_eq!(r.id, rec.id);
                break;
            }
            _ => assert!(Instant::now() < deadline, "no change relayed"),
        }
    }
    while tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_ok() {} // the rest in flight
    other_realm.insert(&record("acme"), None).await.unwrap();
    there
        .update(
            &rec.id,
            Box::new(|r| {
                r.state = SandboxState::Exited;
                r.exit_code = Some(0);
            }),
        )
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await.unwrap().unwrap();
    assert_eq!((&got.id, got.state), (&rec.id, SandboxState::Exited), "only this realm's changes");
    // `publish` is for stores without a feed: with a relay it would only duplicate.
    events.publish(&got);
    assert!(tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_err());
    let waited = events.wait_terminal(here.as_ref(), &rec.id).await.unwrap().unwrap();
    assert_eq!(waited.state, SandboxState::Exited);

    // Dropping the store ends its tasks and closes its connections, the relay's included.
    let before = srv.clients().await;
    drop(here);
    let deadline = Instant::now() + Duration::from_secs(3);
    while srv.clients().await > before - 3 {
        assert!(Instant::now() < deadline, "{} of {before} connections still open", srv.clients().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn connect_names_the_unreachable_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let started = Instant::now();
    let err = match RedisStore::connect(RedisConfig::new(url)).await {
        Ok(_) => panic!("nothing listens there"),
        Err(e) => e,
    };
    let shown = err.to_string();
    assert!(shown.contains(&format!("cannot reach Redis at redis://:***@127.0.0.1:{port}/")), "{shown}");
    assert!(!shown.contains("hunter2"));
    assert!(started.elapsed() < Duration::from_secs(15), "{:?}", started.elapsed());
}
