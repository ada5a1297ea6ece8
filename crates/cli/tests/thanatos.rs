//! Thanatos and Tisiphone end to end, with real gVisor: graceful and forced terminations with
//! their phases recorded in order, the post-mortem callback received by a server of the test's
//! own, and a memory hog warned about, then killed for its resource limit.

mod common;

use std::time::{Duration, Instant};

use common::{id_of, Realm, TEMPLATE};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The phases a record's termination went through, by name.
fn phases(rec: &Value) -> Vec<String> {
    rec["termination"]["phases"]
        .as_array()
        .map(|a| a.iter().map(|p| p["phase"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

/// A server on 127.0.0.1 that hands every JSON body POSTed to `/done` to the returned channel.
async fn callback_server() -> (String, mpsc::UnboundedReceiver<Value>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/done",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/done", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// Creates a sandbox and waits until it runs and its main process had time to set its traps.
async fn running(realm: &Realm, soul: Value) -> String {
    let id = id_of(&realm.create(soul).await);
    realm.wait_running(&id, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    id
}

#[tokio::test]
async fn a_graceful_exit_within_the_grace_and_a_forced_one_after_it_are_both_recorded() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let (url, mut callbacks) = callback_server().await;

    // Traps SIGTERM and leaves cleanly.
    let polite = running(
        &realm,
        json!({"template": TEMPLATE, "callback_url": url,
               "command": ["sh", "-c", "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done"]}),
    )
    .await;
    let t0 = Instant::now();
    let out = realm.cli(&["kill", "--grace", "20s", &polite]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("ended within its grace period"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(10), "a graceful exit took {:?}", t0.elapsed());
    let rec = realm.record(&polite).await;
    assert_eq!((rec["state"].as_str(), rec["exit_code"].as_i64()), (Some("killed"), Some(0)), "{rec}");
    let t = &rec["termination"];
    assert_eq!(
        (t["reason"].as_str(), t["signal"].as_str(), t["graceful"].as_bool()),
        (Some("user_request"), Some("SIGTERM"), Some(true)),
        "{rec}"
    );
    assert_eq!(t["grace_ms"], 20_000, "{rec}");
    assert_eq!(phases(&rec), ["initiated", "signaled", "draining", "terminating", "completed"], "{rec}");
    assert_eq!(realm.logs(&polite).await.stdout, "bye\n");
    // The post-mortem callback carries the final record.
    let called = tokio::time::timeout(Duration::from_secs(15), callbacks.recv()).await.expect("no callback").unwrap();
    assert_eq!(called["id"], polite.as_str(), "{called}");
    assert_eq!(called["termination"], rec["termination"], "{called}");

    // Ignores SIGTERM: SIGKILLed once its grace of 2 s is over.
    let stubborn = running(
        &realm,
        json!({"template": TEMPLATE, "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]}),
    )
    .await;
    let t0 = Instant::now();
    let (status, rec) = realm.delete(&format!("/v1/sandboxes/{stubborn}?grace=2s")).await;
    let took = t0.elapsed();
    assert_eq!(status.as_u16(), 200, "{rec}");
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(15), "killed after {took:?}");
    let t = &rec["termination"];
    assert_eq!((t["graceful"].as_bool(), t["signal"].as_str()), (Some(false), Some("SIGTERM")), "{rec}");
    assert_eq!(phases(&rec), ["initiated", "signaled", "draining", "terminating", "completed"], "{rec}");
    let at = |i: usize| t["phases"][i]["at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap();
    assert!(at(3) - at(2) >= chrono::Duration::milliseconds(1900), "SIGKILL before the grace was over: {rec}");

    // A plain kill and a main process that simply ends are recorded too.
    let plain = running(&realm, json!({"template": TEMPLATE, "command": ["sleep", "600"]})).await;
    let (_, rec) = realm.delete(&format!("/v1/sandboxes/{plain}")).await;
    assert_eq!(rec["termination"]["signal"], "SIGKILL", "{rec}");
    assert_eq!(phases(&rec), ["initiated", "signaled", "terminating", "completed"], "{rec}");
    let done = realm.run(json!({"template": TEMPLATE, "command": ["true"]})).await;
    assert_eq!(
        (done["termination"]["reason"].as_str(), done["termination"]["graceful"].as_bool()),
        (Some("completed"), Some(true)),
        "{done}"
    );
    assert_eq!(phases(&done), ["terminating", "completed"], "{done}");

    // Bad input: nothing is killed.
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{plain}?signal=STOP&grace=1s")).await;
    assert_eq!((status.as_u16(), body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    let (status, body) =
        realm.post("/v1/sandboxes", json!({"template": TEMPLATE, "callback_url": "file:///etc/passwd"})).await;
    assert_eq!(status.as_u16(), 422, "{body}");
}

#[tokio::test]
async fn a_memory_hog_is_warned_about_then_killed_for_its_resource_limit() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    // Grows by 4 MiB (in /tmp, which is memory) every 0.3 s, in a sandbox allowed 64 MiB.
    let hog = "i=0; while true; do dd if=/dev/zero of=/tmp/f$i bs=1M count=4 2>/dev/null; i=$((i+1)); sleep 0.3; done";
    let rec = realm
        .run(json!({"template": TEMPLATE, "command": ["sh", "-c", hog],
                    "resources": {"memory_mib": 64}, "max_duration": "90s"}))
        .await;
    assert_eq!((rec["state"].as_str(), rec["kill_reason"].as_str()), (Some("killed"), Some("out_of_memory")), "{rec}");
    assert_eq!(rec["termination"]["reason"], "resource_limit", "{rec}");
    let warnings: Vec<&Value> = rec["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["kind"] == "memory_warning").collect())
        .unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{rec}");
    assert!(warnings[0]["message"].as_str().unwrap_or_default().contains("of its 96 MiB limit"), "{rec}");
    // Cocytus has both the warning and the kill.
    let (_, failures) = realm.get(&format!("/v1/failures?sandbox={}", id_of(&rec))).await;
    let mut kinds: Vec<&str> =
        failures["failures"].as_array().unwrap().iter().filter_map(|f| f["kind"].as_str()).collect();
    kinds.sort();
    assert_eq!(kinds, ["killed", "memory_warning"], "{failures}");
}

#[tokio::test]
async fn a_drain_with_eviction_ends_what_runs_on_the_node() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let polite = running(
        &realm,
        json!({"template": TEMPLATE, "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.1; done"]}),
    )
    .await;
    // Ignores SIGTERM: killed after the grace.
    let deaf = running(
        &realm,
        json!({"template": TEMPLATE, "command": ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]}),
    )
    .await;
    let (_, nodes) = realm.get("/v1/nodes").await;
    let node = nodes["nodes"][0]["name"].as_str().unwrap().to_owned();
    let out = realm.cli(&["node", "drain", &node, "--evict", "--grace", "2s"]).await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("2 asked to end within 2s"), "{out}");
    for (id, graceful) in [(&polite, true), (&deaf, false)] {
        let r = realm.wait_ended(id, Duration::from_secs(30)).await;
        assert_eq!(r["kill_reason"], "node_drain", "{r}");
        assert_eq!(
            (r["termination"]["reason"].as_str(), r["termination"]["graceful"].as_bool()),
            (Some("node_drain"), Some(graceful)),
            "{r}"
        );
    }
    // Drained: nothing new is placed until it is undrained.
    let waiting = id_of(&realm.create(json!({"template": TEMPLATE, "command": ["true"]})).await);
    let r = realm.wait_for(&waiting, "pending", Duration::from_secs(10), |r| r["pending_reason"].is_string()).await;
    assert_eq!(r["state"], "queued", "{r}");
    let out = realm.cli(&["node", "undrain", &node]).await;
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(realm.wait_ended(&waiting, Duration::from_secs(60)).await["state"], "exited");
}
