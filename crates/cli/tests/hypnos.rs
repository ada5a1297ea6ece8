//! Hypnos end to end with real gVisor: a sandbox running a counter sleeps (checkpointed,
//! compressed, its node released) and wakes with the counter going on and its files intact;
//! sessions fall asleep when idle; a sandbox asleep past its max_sleep is ended; sandboxes
//! launched from a snapshot or a pool sleep like booted ones; and the whole feature is refused
//! while ENABLE_HYPNOS is off.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{id_of, Realm, TEMPLATE};
use reqwest::StatusCode;
use serde_json::json;

/// Counts, one number a line, every 200 ms; writes a file first.
const COUNTER: &str = "echo before-sleep > /kept.txt; i=0; while true; do i=$((i+1)); echo $i; sleep 0.2; done";

async fn hypnos_realm() -> Realm {
    Realm::start_with(&[], &[("ENABLE_HYPNOS", "1")]).await
}

/// The stored blob of a checkpoint digest in the realm's local blob store.
fn blob(realm: &Realm, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    realm.data_dir.join("erebus/store/blobs/sha256").join(hex)
}

/// The numbers the counter printed so far.
async fn counted(realm: &Realm, id: &str) -> Vec<u64> {
    let out = realm.logs(id).await;
    out.stdout.lines().map(|l| l.trim().parse().unwrap_or_else(|_| panic!("not a number: {l:?} in {out:?}"))).collect()
}

/// Waits until `ready` says the file at `path` is there (or gone).
async fn until(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn runsc_knows(realm: &Realm, id: &str) -> bool {
    let out = std::process::Command::new("runsc")
        .args(["--root", &realm.data_dir.join("runsc").display().to_string(), "list", "-q"])
        .output()
        .expect("runsc list");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == id)
}

#[tokio::test]
async fn a_sleeping_counter_wakes_where_it_was() {
    if !common::require_prereqs() {
        return;
    }
    let realm = hypnos_realm().await;
    let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", COUNTER], "max_duration": "10m"});
    let id = id_of(&realm.create(soul).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = realm.cli(&["sleep", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.starts_with(&format!("{id} asleep: ")), "{out}");
    let rec = realm.record(&id).await;
    assert_eq!(rec["state"], "sleeping", "{rec}");
    assert!(rec["node"].is_null(), "a sleeping sandbox holds no node: {rec}");
    let sleep = rec["sleep"].clone();
    let (memory, stored) =
        (sleep["memory_bytes"].as_u64().unwrap_or(0), sleep["compressed_bytes"].as_u64().unwrap_or(0));
    assert!(stored > 0 && stored < memory, "the checkpoint is stored compressed: {sleep}");
    let artifact = sleep["artifact"].as_str().expect("artifact digest").to_owned();
    assert_eq!(std::fs::metadata(blob(&realm, &artifact)).map(|m| m.len()).ok(), Some(stored), "stored artifact");
    // Nothing of it runs on the node any more.
    assert!(!runsc_knows(&realm, &id), "runsc still has {id}");
    assert!(!Path::new(&format!("/sys/fs/cgroup/memory/tartarus/{id}")).exists(), "its cgroup outlived its sleep");
    let at_sleep = counted(&realm, &id).await;
    let last = *at_sleep.last().expect("it counted before sleeping");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(counted(&realm, &id).await, at_sleep, "it counted while asleep");
    let (status, listed) = realm.get("/v1/sleeping").await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let me = listed["sleeping"].as_array().and_then(|l| l.iter().find(|s| s["id"] == id.as_str()).cloned());
    let me = me.unwrap_or_else(|| panic!("{id} not in /v1/sleeping: {listed}"));
    assert_eq!(me["sleep"]["compressed_bytes"], stored, "{me}");
    assert!(me["asleep_ms"].as_u64().unwrap_or(0) >= 1000, "{me}");

    let out = realm.cli(&["wake", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    let rec = realm.record(&id).await;
    assert_eq!(rec["state"], "running", "{rec}");
    assert!(rec["sleep"].is_null(), "{rec}");
    assert!(rec["slept_ms"].as_u64().unwrap_or(0) >= 1500, "{rec}");
    let kinds: Vec<&str> = rec["events"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
    assert_eq!(kinds, ["slept", "woke"], "{rec}");
    // The checkpoint served its wake and is gone.
    until("the used checkpoint was not freed", Duration::from_secs(10), || !blob(&realm, &artifact).exists()).await;
    // The counter goes on from where it stopped: no restart, no gap.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = counted(&realm, &id).await;
    assert!(after.len() > at_sleep.len() + 2, "not counting after the wake: {after:?}");
    let expected: Vec<u64> = (1..=after.len() as u64).collect();
    assert_eq!(after, expected, "the count restarted or skipped (slept at {last})");
    // Its files are there; new execs work.
    let out = realm.cli(&["exec", &id, "--", "cat", "/kept.txt"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "before-sleep\n"), "{out}");
    // It ends like any sandbox, its exit status read after the wake.
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{id}?grace=5s")).await;
    assert!(status.is_success(), "{body}");
    let ended = realm.wait_ended(&id, Duration::from_secs(30)).await;
    assert_eq!(
        (ended["state"].as_str(), ended["kill_reason"].as_str()),
        (Some("killed"), Some("requested")),
        "{ended}"
    );
    assert_eq!(ended["exit_code"], 128 + 15, "the shell died of SIGTERM: {ended}");
    assert_eq!(ended["termination"]["graceful"], true, "{ended}");
}

#[tokio::test]
async fn idle_sessions_fall_asleep_and_long_sleepers_are_ended() {
    if !common::require_prereqs() {
        return;
    }
    let realm = hypnos_realm().await;
    // Auto-sleep: a session idle for 1 s sleeps instead of ending.
    let session = id_of(&realm.create(json!({"template": TEMPLATE, "sleep_after": "1s"})).await);
    realm.wait_running(&session, Duration::from_secs(60)).await;
    let out = realm.cli(&["exec", &session, "--", "sh", "-c", "echo note > /note.txt"]).await;
    assert_eq!(out.code, 0, "{out}");
    let rec = realm.wait_for(&session, "asleep", Duration::from_secs(30), |r| r["state"] == "sleeping").await;
    assert!(rec["sleep"]["compressed_bytes"].as_u64().unwrap_or(0) > 0, "{rec}");
    let woken =
        realm.api.send(realm.request(reqwest::Method::POST, &format!("/v1/sandboxes/{session}/wake?wait=true"))).await;
    assert_eq!(woken.0, StatusCode::OK, "{}", woken.1);
    assert_eq!(woken.1["state"], "running", "{}", woken.1);
    let out = realm.cli(&["exec", &session, "--", "cat", "/note.txt"]).await;
    assert_eq!((out.code, out.stdout.as_str()), (0, "note\n"), "{out}");
    let out = realm.cli(&["kill", &session]).await;
    assert_eq!(out.code, 0, "{out}");

    // max_sleep: asleep longer than 2 s, it is ended and its checkpoint freed.
    let soul = json!({"template": TEMPLATE, "command": ["sh", "-c", COUNTER], "max_sleep": "2s"});
    let id = id_of(&realm.create(soul).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    let out = realm.cli(&["sleep", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    let artifact = realm.record(&id).await["sleep"]["artifact"].as_str().unwrap().to_owned();
    let ended = realm.wait_ended(&id, Duration::from_secs(30)).await;
    assert_eq!(ended["kill_reason"], "slept_too_long", "{ended}");
    assert_eq!(ended["termination"]["reason"], "timeout", "{ended}");
    until("the expired checkpoint was not freed", Duration::from_secs(10), || !blob(&realm, &artifact).exists()).await;

    // Killing a sleeping sandbox ends it without waking it.
    let id = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["sh", "-c", COUNTER]})).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    let out = realm.cli(&["sleep", &id]).await;
    assert_eq!(out.code, 0, "{out}");
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!((body["state"].as_str(), body["kill_reason"].as_str()), (Some("killed"), Some("requested")), "{body}");
}

#[tokio::test]
async fn hypnos_is_refused_while_disabled() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["sleep", "30"]})).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    let (status, body) = realm.post(&format!("/v1/sandboxes/{id}/sleep"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "cannot_sleep", "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("ENABLE_HYPNOS=1"), "{body}");
    let (status, body) = realm.post("/v1/sandboxes", json!({"template": TEMPLATE, "sleep_after": "1m"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["message"].as_str().unwrap_or_default().contains("sleep_after"), "{body}");
    let out = realm.cli(&["sleep", &id]).await;
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("ENABLE_HYPNOS=1"), "{out}");
    assert_eq!(realm.record(&id).await["state"], "running", "a refused sleep changed the sandbox");
}

#[tokio::test]
async fn sandboxes_launched_from_a_snapshot_or_a_pool_sleep_and_wake_too() {
    if !common::require_prereqs() {
        return;
    }
    let realm = hypnos_realm().await;
    let out = realm.cli(&["template", "warm", TEMPLATE]).await;
    assert_eq!(out.code, 0, "{out}");
    let restored = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["sh", "-c", COUNTER]})).await);
    let out = realm.cli(&["template", "pool", TEMPLATE, "1"]).await;
    assert_eq!(out.code, 0, "{out}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, list) = realm.get("/v1/templates").await;
        if list["pools"][TEMPLATE]["ready"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool never got ready: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pooled = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["sh", "-c", COUNTER]})).await);
    for (id, from) in [(&restored, "snapshot "), (&pooled, "pool ")] {
        realm.wait_running(id, Duration::from_secs(60)).await;
        let rec = realm.record(id).await;
        assert!(rec["launched_from"].as_str().unwrap_or_default().starts_with(from), "{rec}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let out = realm.cli(&["sleep", id]).await;
        assert_eq!(out.code, 0, "{out}");
        let at_sleep = counted(&realm, id).await;
        let last = *at_sleep.last().expect("it counted before sleeping");
        let out = realm.cli(&["wake", id]).await;
        assert_eq!(out.code, 0, "{out}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = counted(&realm, id).await;
        assert!(after.len() > at_sleep.len(), "it did not count after waking: {after:?}");
        assert_eq!(after[at_sleep.len()], last + 1, "the count restarted or skipped: {after:?}");
        let out = realm.cli(&["exec", id, "--", "cat", "/kept.txt"]).await;
        assert_eq!((out.code, out.stdout.as_str()), (0, "before-sleep\n"), "{out}");
        let (status, body) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
