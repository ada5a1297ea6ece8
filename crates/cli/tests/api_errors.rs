//! Bad input gets a 4xx with a JSON `{code, message}`, never a 500.

mod common;

use common::Realm;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Collects every mismatch so one run reports them all.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    /// Expects `status` and an error body with `code` (and a non-empty message).
    fn error(&mut self, what: &str, got: (StatusCode, Value), status: u16, code: &str) {
        let (s, body) = got;
        if s.is_server_error() {
            self.0.push(format!("{what}: server error {s}: {body}"));
        }
        if s.as_u16() != status || body["code"] != code {
            self.0.push(format!("{what}: want {status} {code}, got {s} {body}"));
        }
        if !matches!(body["message"].as_str(), Some(m) if !m.trim().is_empty()) {
            self.0.push(format!("{what}: no message in {body}"));
        }
    }

    /// Expects the error message to mention `text`.
    fn mentions(&mut self, what: &str, body: &Value, text: &str) {
        if !body["message"].as_str().is_some_and(|m| m.contains(text)) {
            self.0.push(format!("{what}: message does not mention {text:?}: {body}"));
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} problem(s):\n{}", self.0.len(), self.0.join("\n"));
    }
}

#[tokio::test]
async fn bad_requests_get_4xx_json_errors() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;
    let mut c = Checks::default();
    let raw = |body: &'static str| {
        realm.request(Method::POST, "/v1/sandboxes").header("content-type", "application/json").body(body)
    };

    c.error("not JSON", realm.send(raw("{not json")).await, 400, "malformed_json");
    c.error("truncated JSON", realm.send(raw("{\"template\": \"busybox\"")).await, 400, "malformed_json");
    c.error("a JSON array", realm.send(raw("[1, 2]")).await, 400, "malformed_json");
    c.error(
        "unknown field",
        realm.post("/v1/sandboxes", json!({"template": "busybox", "command": ["true"], "colour": "red"})).await,
        400,
        "malformed_json",
    );
    c.error(
        "mistyped field",
        realm.post("/v1/sandboxes", json!({"template": "busybox", "command": "true"})).await,
        400,
        "malformed_json",
    );
    c.error(
        "negative memory",
        realm
            .post("/v1/sandboxes", json!({"template": "busybox", "command": ["true"], "resources": {"memory_mib": -5}}))
            .await,
        400,
        "malformed_json",
    );

    let unknown = realm.post("/v1/sandboxes", json!({"template": "no-such-template", "command": ["true"]})).await;
    c.mentions("unknown template", &unknown.1, "no-such-template");
    c.error("unknown template", unknown, 422, "unknown_template");

    let absurd = realm
        .post(
            "/v1/sandboxes",
            json!({"template": "busybox", "command": ["true"], "resources": {"memory_mib": 99999999}}),
        )
        .await;
    c.mentions("absurd memory", &absurd.1, "memory_mib");
    c.error("absurd memory", absurd, 422, "invalid_request");

    let zero_cpus = realm
        .post("/v1/sandboxes", json!({"template": "busybox", "command": ["true"], "resources": {"vcpus": 0}}))
        .await;
    c.mentions("zero vcpus", &zero_cpus.1, "vcpus");
    c.error("zero vcpus", zero_cpus, 422, "invalid_request");

    let empty = realm.post("/v1/sandboxes", json!({"template": "busybox", "command": []})).await;
    c.mentions("empty command", &empty.1, "command");
    c.error("empty command", empty, 422, "invalid_request");

    let workdir =
        realm.post("/v1/sandboxes", json!({"template": "busybox", "command": ["true"], "workdir": "relative"})).await;
    c.mentions("relative workdir", &workdir.1, "workdir");
    c.error("relative workdir", workdir, 422, "invalid_request");

    let duration = realm
        .post("/v1/sandboxes", json!({"template": "busybox", "command": ["true"], "max_duration": "100 years"}))
        .await;
    c.mentions("huge max_duration", &duration.1, "max_duration");
    c.error("huge max_duration", duration, 422, "invalid_request");

    // Sandbox ids that do not exist, or are not ids at all.
    for id in ["sb-0000000000000000", "nope", "..%2F..%2Fetc"] {
        c.error(&format!("GET {id}"), realm.get(&format!("/v1/sandboxes/{id}")).await, 404, "sandbox_not_found");
        c.error(&format!("DELETE {id}"), realm.delete(&format!("/v1/sandboxes/{id}")).await, 404, "sandbox_not_found");
        c.error(
            &format!("exec {id}"),
            realm.post(&format!("/v1/sandboxes/{id}/exec?stream=false"), json!({"command": ["true"]})).await,
            404,
            "sandbox_not_found",
        );
        c.error(&format!("logs {id}"), realm.get(&format!("/v1/sandboxes/{id}/logs")).await, 404, "sandbox_not_found");
    }

    // Authentication.
    let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30)).build().unwrap();
    let bare = client.get(format!("{}/v1/sandboxes", realm.url)).send().await.expect("request");
    let status = bare.status();
    let body: Value = serde_json::from_str(&bare.text().await.unwrap()).unwrap_or(Value::Null);
    c.error("missing token", (status, body), 401, "unauthorized");
    let wrong =
        client.get(format!("{}/v1/sandboxes", realm.url)).bearer_auth("wrong-token").send().await.expect("request");
    let status = wrong.status();
    let body: Value = serde_json::from_str(&wrong.text().await.unwrap()).unwrap_or(Value::Null);
    c.error("wrong token", (status, body), 401, "unauthorized");
    let post = client
        .post(format!("{}/v1/sandboxes", realm.url))
        .json(&json!({"template": "busybox", "command": ["true"]}))
        .send()
        .await
        .expect("request");
    let status = post.status();
    let body: Value = serde_json::from_str(&post.text().await.unwrap()).unwrap_or(Value::Null);
    c.error("POST without token", (status, body), 401, "unauthorized");

    // No such route.
    c.error("unknown route", realm.get("/v1/no-such-thing").await, 404, "not_found");

    // Templates.
    let bad_path = realm.post("/v1/templates", json!({"name": "ghost", "path": "/no/such/dir"})).await;
    if !bad_path.0.is_client_error() || !bad_path.1["code"].is_string() {
        c.0.push(format!("template from a missing dir: want a 4xx JSON error, got {} {}", bad_path.0, bad_path.1));
    }
    c.error("template: malformed", realm.post("/v1/templates", json!({"name": "x"})).await, 400, "malformed_json");

    // The open endpoints need no token.
    let health = client.get(format!("{}/healthz", realm.url)).send().await.expect("healthz");
    if health.status() != StatusCode::OK {
        c.0.push(format!("GET /healthz without token: {}", health.status()));
    }
    let openapi = client.get(format!("{}/v1/openapi.json", realm.url)).send().await.expect("openapi");
    if openapi.status() != StatusCode::OK {
        c.0.push(format!("GET /v1/openapi.json without token: {}", openapi.status()));
    }

    // None of it created a sandbox.
    let (status, list) = realm.get("/v1/sandboxes").await;
    if status != StatusCode::OK || list["sandboxes"].as_array().map(|a| a.len()) != Some(0) {
        c.0.push(format!("after refused requests: GET /v1/sandboxes {status} {list}"));
    }

    c.assert_none();
}

#[tokio::test]
async fn cli_reports_api_errors() {
    if !common::require_prereqs() {
        return;
    }
    let realm = Realm::start().await;

    let out = realm.cli(&["run", "--template", "no-such-template", "--", "true"]).await;
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("no-such-template"), "{out}");

    let out = realm.cli(&["logs", "sb-0000000000000000"]).await;
    assert_ne!(out.code, 0, "{out}");
    assert!(!out.stderr.is_empty(), "{out}");

    let mut wrong = realm.cli(&["--token", "wrong-token", "ps"]).await;
    assert_ne!(wrong.code, 0, "{wrong}");
    wrong.stderr.make_ascii_lowercase();
    assert!(wrong.stderr.contains("unauthorized") || wrong.stderr.contains("token"), "{wrong}");
}

#[tokio::test]
async fn malformed_queries_and_methods_get_json_errors() {
    if !common::require_prereqs() {
        return;
    }
    let realm = common::Realm::start().await;
    for (method, path, status, code) in [
        (reqwest::Method::GET, "/v1/sandboxes?limit=abc", reqwest::StatusCode::UNPROCESSABLE_ENTITY, "invalid_request"),
        (
            reqwest::Method::GET,
            "/v1/sandboxes?state=zombie",
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        ),
        (reqwest::Method::GET, "/v1/sandboxes/%ff%fe", reqwest::StatusCode::NOT_FOUND, "sandbox_not_found"),
        (reqwest::Method::PUT, "/v1/sandboxes", reqwest::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ] {
        let (got, body) = realm.send(realm.request(method.clone(), path)).await;
        assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{method} {path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
    let huge = "x".repeat(3 * 1024 * 1024);
    let (got, body) = realm.send(realm.request(reqwest::Method::POST, "/v1/sandboxes").body(huge)).await;
    assert_eq!(
        (got, body["code"].as_str()),
        (reqwest::StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")),
        "{body}"
    );
}

#[tokio::test]
async fn concurrent_imports_of_one_name_register_one_whole_template() {
    if !common::require_prereqs() {
        return;
    }
    let realm = common::Realm::start().await;
    let rootfs = realm.template_rootfs().await;
    let body = serde_json::json!({"name": "twin", "path": rootfs});
    let (a, b) = tokio::join!(realm.post("/v1/templates", body.clone()), realm.post("/v1/templates", body));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [reqwest::StatusCode::CREATED, reqwest::StatusCode::CONFLICT], "{a:?} {b:?}");
    let rec = realm.run(serde_json::json!({"template": "twin", "command": ["echo", "whole"]})).await;
    assert_eq!(rec["exit_code"], 0, "{rec}");
}
