//! `exec` into running session sandboxes: the API (buffered and streamed) and the CLI.

mod common;

use std::time::{Duration, Instant};

use common::{id_of, soul, Realm};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// `POST /v1/sandboxes/{id}/exec?stream=false`.
async fn exec(realm: &Realm, id: &str, body: Value) -> (StatusCode, Value) {
    let req = realm
        .request(Method::POST, &format!("/v1/sandboxes/{id}/exec?stream=false"))
        .json(&body)
        .timeout(Duration::from_secs(60));
    realm.send(req).await
}

/// Starts a session sandbox and waits until it runs.
async fn session(realm: &Realm) -> String {
    let rec = realm.run(json!({"template": "busybox"})).await;
    assert_eq!(rec["state"], "running", "a session is returned once it runs: {rec}");
    assert!(rec["spec"]["command"].is_null(), "{rec}");
    id_of(&rec)
}

#[tokio::test]
async fn exec_runs_commands_in_a_session() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;

    let (status, out) = exec(&realm, &id, json!({"command": ["sh", "-c", "echo hi; echo oops >&2; exit 4"]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "hi\n", "{out}");
    assert_eq!(out["stderr"], "oops\n", "{out}");
    assert_eq!(out["exit"]["state"], "exited", "{out}");
    assert_eq!(out["exit"]["exit_code"], 4, "{out}");

    // One exec's writes are seen by the next: they share the sandbox.
    let (status, out) = exec(&realm, &id, json!({"command": ["sh", "-c", "echo kept > /tmp/note"]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["exit"]["exit_code"], 0, "{out}");
    let (status, out) = exec(&realm, &id, json!({"command": ["cat", "/tmp/note"]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "kept\n", "{out}");
    assert_eq!(out["exit"]["exit_code"], 0, "{out}");

    // env and workdir of the exec.
    let (status, out) = exec(
        &realm,
        &id,
        json!({"command": ["sh", "-c", "echo $WHO; pwd"], "env": {"WHO": "charon"}, "workdir": "/tmp"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["stdout"], "charon\n/tmp\n", "{out}");

    // A program that does not exist fails the exec, not the session.
    let (status, out) = exec(&realm, &id, json!({"command": ["no-such-program"]})).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["exit"]["state"], "failed", "{out}");
    assert!(out["exit"]["error"].as_str().is_some_and(|e| !e.is_empty()), "failed exec without error: {out}");
    assert_eq!(realm.record(&id).await["state"], "running");

    // The CLI.
    let cli = realm.cli(&["exec", &id, "--", "echo", "hello"]).await;
    assert_eq!(cli.code, 0, "{cli}");
    assert_eq!(cli.stdout, "hello\n", "{cli}");
    let cli = realm.cli(&["exec", &id, "--", "sh", "-c", "echo to-err >&2; exit 5"]).await;
    assert_eq!(cli.code, 5, "{cli}");
    assert_eq!(cli.stdout, "", "{cli}");
    assert_eq!(cli.stderr, "to-err\n", "{cli}");
    let cli = realm.cli(&["exec", &id, "--", "cat", "/tmp/note"]).await;
    assert_eq!(cli.stdout, "kept\n", "{cli}");

    let (status, fin) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{fin}");
    assert_eq!(fin["state"], "killed", "{fin}");
    assert_eq!(fin["kill_reason"], "requested", "{fin}");
}

#[tokio::test]
async fn exec_streams_events_by_default() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;

    let req = realm
        .request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
        .json(&json!({"command": ["sh", "-c", "echo one; sleep 1; echo two >&2; exit 2"]}));
    let events = realm.stream(req, Duration::from_secs(60)).await;
    let evs: Vec<_> = events.iter().map(|(_, e)| e.clone()).collect();
    let out = common::Output::from_events(&evs);
    assert_eq!(out.stdout, "one\n", "{events:?}");
    assert_eq!(out.stderr, "two\n", "{events:?}");
    let exit = out.exit.unwrap_or_else(|| panic!("no exit event: {events:?}"));
    assert_eq!(exit["state"], "exited", "{exit}");
    assert_eq!(exit["exit_code"], 2, "{exit}");
    assert_eq!(out.after_exit, 0, "events after exit: {events:?}");
    let one = events.iter().find(|(_, e)| e.event == "stdout").unwrap().0;
    let two = events.iter().find(|(_, e)| e.event == "stderr").unwrap().0;
    assert!(two >= one + Duration::from_millis(700), "one at {one:?}, two at {two:?}: not streamed");

    realm.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn exec_timeout_ends_the_command() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;
    let t0 = Instant::now();
    let (status, out) = exec(&realm, &id, json!({"command": ["sleep", "30"], "timeout": "1s"})).await;
    let took = t0.elapsed();
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["exit"]["state"], "killed", "{out}");
    assert_eq!(out["exit"]["kill_reason"], "timeout", "{out}");
    assert!(took < Duration::from_secs(10), "exec with timeout 1s took {took:?}");
    // The session itself goes on.
    let (_, out) = exec(&realm, &id, json!({"command": ["true"]})).await;
    assert_eq!(out["exit"]["exit_code"], 0, "{out}");
    realm.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn exec_needs_a_running_sandbox() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;

    // A sandbox whose command has ended.
    let done = realm.run(soul(&["true"])).await;
    assert_eq!(done["state"], "exited", "{done}");
    let (status, body) = exec(&realm, &id_of(&done), json!({"command": ["echo", "late"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "not_running", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");

    // A session that was killed.
    let id = session(&realm).await;
    let (status, fin) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{fin}");
    let (status, body) = exec(&realm, &id, json!({"command": ["echo", "late"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "not_running", "{body}");

    // The streaming form refuses the same way, before any stream.
    let req = realm.request(Method::POST, &format!("/v1/sandboxes/{id}/exec")).json(&json!({"command": ["true"]}));
    let (status, body) = realm.send(req).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "not_running", "{body}");

    // The CLI says so and fails.
    let cli = realm.cli(&["exec", &id, "--", "echo", "late"]).await;
    assert_ne!(cli.code, 0, "{cli}");
    assert!(!cli.stdout.contains("late"), "{cli}");
}

#[tokio::test]
async fn idle_sessions_are_ended() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let rec = realm.run(json!({"template": "busybox", "idle_timeout": "2s"})).await;
    let id = id_of(&rec);
    assert_eq!(rec["state"], "running", "{rec}");
    let fin = realm.wait_ended(&id, Duration::from_secs(15)).await;
    assert_eq!(fin["state"], "killed", "{fin}");
    assert_eq!(fin["kill_reason"], "idle", "{fin}");
}

#[tokio::test]
async fn exec_environment_values_arrive_whole() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;
    let (_, out) = exec(
        &realm,
        &id,
        json!({"command": ["sh", "-c", "echo \"[$A]\"; echo \"[$B]\""], "env": {"A": "x,B=injected"}}),
    )
    .await;
    assert_eq!(out["stdout"], "[x,B=injected]\n[]\n", "{out}");
    assert_eq!(out["exit"]["exit_code"], 0, "{out}");
    realm.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn exec_timeout_kills_the_command_inside_the_sandbox() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;
    let script = "sleep 3; echo late > /done";
    let (_, out) = exec(&realm, &id, json!({"command": ["sh", "-c", script], "timeout": "1s"})).await;
    assert_eq!(out["exit"]["kill_reason"], "timeout", "{out}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, out) = exec(&realm, &id, json!({"command": ["test", "-e", "/done"]})).await;
    assert_eq!(out["exit"]["exit_code"], 1, "the timed-out command must not have gone on: {out}");
    realm.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn exec_returns_when_its_command_exits_even_with_background_children() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;
    let t0 = Instant::now();
    let (_, out) = exec(&realm, &id, json!({"command": ["sh", "-c", "sleep 30 & echo hi"]})).await;
    assert_eq!((out["stdout"].as_str(), &out["exit"]["exit_code"]), (Some("hi\n"), &json!(0)), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
    realm.delete(&format!("/v1/sandboxes/{id}")).await;
}

#[tokio::test]
async fn a_running_exec_keeps_its_session_from_idling_out() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let rec = realm.run(json!({"template": "busybox", "idle_timeout": "2s"})).await;
    let id = id_of(&rec);
    let (_, out) = exec(&realm, &id, json!({"command": ["sleep", "4"]})).await;
    assert_eq!(out["exit"]["exit_code"], 0, "the exec ran to its end: {out}");
    assert_eq!(realm.record(&id).await["state"], "running");
    // Idle from now on: it ends by itself.
    let ended = realm.wait_ended(&id, Duration::from_secs(15)).await;
    assert_eq!((ended["state"].as_str(), ended["kill_reason"].as_str()), (Some("killed"), Some("idle")), "{ended}");
}

#[tokio::test]
async fn pause_and_resume_check_the_state_and_paused_sandboxes_die_quickly() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let id = session(&realm).await;
    let (status, body) = realm.post(&format!("/v1/sandboxes/{id}/resume"), json!({})).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::CONFLICT, Some("not_running")), "{body}");
    let (status, body) = realm.post(&format!("/v1/sandboxes/{id}/pause"), json!({})).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("paused")), "{body}");
    let (status, body) = realm.post(&format!("/v1/sandboxes/{id}/pause"), json!({})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = exec(&realm, &id, json!({"command": ["true"]})).await;
    assert_eq!(status, StatusCode::CONFLICT, "no exec into a paused sandbox");
    let t0 = Instant::now();
    let (status, body) = realm.delete(&format!("/v1/sandboxes/{id}")).await;
    assert_eq!((status, body["state"].as_str()), (StatusCode::OK, Some("killed")), "{body}");
    assert!(t0.elapsed() < Duration::from_secs(4), "killing a paused sandbox took {:?}", t0.elapsed());
}
