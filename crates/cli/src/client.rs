//! The HTTP client the verbs use to talk to a realm: typed calls, API errors, output streams.
//!
//! Every call carries the bearer token (`--token`, else `<data-dir>/admin.token`). Errors come
//! back as [`ApiError`] (`CODE: message`, as `docs/api.md` defines them); a realm that does not
//! answer at all is reported as such, with the likely cause. Output (`logs`, `exec`) arrives as
//! Server-Sent Events, read by [`SseReader`] and decoded into [`OutputEvent`]s by
//! [`OutputStream`].

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use futures::stream::BoxStream;
use futures::StreamExt;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tartarus_core::{
    ExecRequest, ExitInfo, Failure, NodeInfo, NodeState, OutputEvent, SandboxId, SandboxRecord, SandboxState,
    SnapshotInfo, SoulRequest, Stream, TemplateRecord,
};

use crate::commands::Global;

/// An error the API answered with: its status and the stable `code` and `message` of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code, e.g. `sandbox_not_found` (or `HTTP 502` when the body was not an API error).
    pub code: String,
    /// What a person can act on.
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

/// The JSON body of every API error.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl ApiError {
    /// Reads an error from a status and a body, whatever the body is.
    fn from_body(status: StatusCode, body: &[u8]) -> Self {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => Self { status: status.as_u16(), code: b.code, message: b.message },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let message = if text.is_empty() {
                    status.canonical_reason().unwrap_or("no message").to_owned()
                } else {
                    text.chars().take(500).collect()
                };
                Self { status: status.as_u16(), code: format!("HTTP {}", status.as_u16()), message }
            }
        }
    }
}

/// Where the token came from, to say so when the realm refuses it.
#[derive(Debug, Clone)]
enum TokenSource {
    Flag,
    File(PathBuf),
    Missing(PathBuf),
}

/// Filters for listing sandboxes.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only these states (any of them).
    pub states: Vec<SandboxState>,
    /// Only sandboxes with all these labels.
    pub labels: Vec<(String, String)>,
    /// At most this many, newest first; `None` leaves it to the realm.
    pub limit: Option<u32>,
}

impl ListFilter {
    /// The query string pairs (`state=a,b`, `label=k=v` once per label, `limit=n`).
    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if !self.states.is_empty() {
            let states: Vec<&str> = self.states.iter().map(|s| s.as_str()).collect();
            q.push(("state", states.join(",")));
        }
        for (k, v) in &self.labels {
            q.push(("label", format!("{k}={v}")));
        }
        if let Some(n) = self.limit {
            q.push(("limit", n.to_string()));
        }
        q
    }
}

#[derive(Deserialize)]
struct SandboxList {
    sandboxes: Vec<SandboxRecord>,
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct NodeView {
    /// Registration and last heartbeat.
    #[serde(flatten)]
    pub info: NodeInfo,
    /// Health.
    pub state: NodeState,
    /// Largest share of any resource in use.
    pub load: f64,
    /// Sandboxes a drain with eviction asked to end.
    #[serde(default)]
    pub evicted: Vec<tartarus_core::SandboxId>,
}

#[derive(Deserialize)]
struct NodeList {
    nodes: Vec<NodeView>,
}

#[derive(Deserialize)]
struct FailureList {
    failures: Vec<Failure>,
}

/// `s` safe inside one URL path segment.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
struct TemplateList {
    templates: Vec<TemplateRecord>,
    #[serde(default)]
    pools: BTreeMap<String, PoolView>,
}

/// A template's warm pools across the realm, as `GET /v1/templates` reports them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
pub struct PoolView {
    /// Sandboxes each node keeps ready.
    pub size: u32,
    /// Ready now, all nodes together.
    pub ready: u32,
    /// Requests served from pools.
    pub served: u64,
    /// Nodes alive.
    pub nodes: u32,
}

/// A client of one realm's API. (Not `Debug`: it holds the token.)
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    token_source: TokenSource,
}

impl Client {
    /// A client for the realm at `g.api`, with the token of `g.token` or of the data dir.
    pub fn new(g: &Global) -> anyhow::Result<Self> {
        let file = g.data_dir.join("admin.token");
        let (token, token_source) = match g.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => (Some(t.to_owned()), TokenSource::Flag),
            _ => match read_token(&file) {
                Some(t) => (Some(t), TokenSource::File(file)),
                None => (None, TokenSource::Missing(file)),
            },
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("tartarus/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base: g.api.trim_end_matches('/').to_owned(), token, token_source })
    }

    /// The realm's address.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request; any answer but a success becomes an error that says what happened.
    async fn send(&self, rb: RequestBuilder) -> anyhow::Result<Response> {
        let resp = rb.send().await.map_err(|e| {
            if e.is_connect() {
                anyhow::anyhow!("cannot reach the realm at {}: is `tartarus up` running?", self.base)
            } else {
                anyhow::Error::new(e).context(format!("request to the realm at {} failed", self.base))
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        let err = ApiError::from_body(status, &body);
        if status == StatusCode::UNAUTHORIZED {
            let hint = match &self.token_source {
                TokenSource::Flag => "the realm refused the token given with --token/TARTARUS_TOKEN".to_owned(),
                TokenSource::File(p) => format!("the realm refused the token in {}", p.display()),
                TokenSource::Missing(p) => {
                    format!("no token: pass --token (or TARTARUS_TOKEN), or make {} readable", p.display())
                }
            };
            return Err(anyhow::Error::new(err).context(hint));
        }
        Err(err.into())
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder, what: &str) -> anyhow::Result<T> {
        let resp = self.send(rb).await?;
        let body = resp.bytes().await.with_context(|| format!("reading {what} from the realm"))?;
        serde_json::from_slice(&body).with_context(|| format!("the realm sent an unreadable {what}"))
    }

    /// `POST /v1/sandboxes`: admits a soul; with `wait`, returns once it has ended (sessions:
    /// once they run).
    pub async fn create(&self, soul: &SoulRequest, wait: bool) -> anyhow::Result<SandboxRecord> {
        let path = if wait { "/v1/sandboxes?wait=true" } else { "/v1/sandboxes" };
        self.json(self.request(Method::POST, path).json(soul), "sandbox record").await
    }

    /// `GET /v1/sandboxes`: sandboxes, newest first.
    pub async fn list(&self, filter: &ListFilter) -> anyhow::Result<Vec<SandboxRecord>> {
        let rb = self.request(Method::GET, "/v1/sandboxes").query(&filter.query());
        let list: SandboxList = self.json(rb, "sandbox list").await?;
        Ok(list.sandboxes)
    }

    /// `GET /v1/sandboxes/{id}`.
    pub async fn get(&self, id: &SandboxId) -> anyhow::Result<SandboxRecord> {
        self.json(self.request(Method::GET, &format!("/v1/sandboxes/{id}")), "sandbox record").await
    }

    /// `GET /v1/nodes`: the nodes Hades knows, with their state and load.
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        let list: NodeList = self.json(self.request(Method::GET, "/v1/nodes"), "node list").await?;
        Ok(list.nodes)
    }

    /// `POST /v1/nodes/{name}/drain` (or `undrain`).
    pub async fn drain(&self, name: &str, drain: bool) -> anyhow::Result<NodeView> {
        self.drain_with(name, drain, &[]).await
    }

    /// [`Client::drain`] with a query (`evict`, `grace`).
    pub async fn drain_with(&self, name: &str, drain: bool, query: &[(&str, String)]) -> anyhow::Result<NodeView> {
        let verb = if drain { "drain" } else { "undrain" };
        let path = format!("/v1/nodes/{}/{verb}", urlencode(name));
        self.json(self.request(Method::POST, &path).query(query), "node").await
    }

    /// `GET /v1/failures`: Cocytus, newest first.
    pub async fn failures(&self, query: &[(&str, String)]) -> anyhow::Result<Vec<Failure>> {
        let list: FailureList =
            self.json(self.request(Method::GET, "/v1/failures").query(query), "failure list").await?;
        Ok(list.failures)
    }

    /// `POST /v1/admin/reconcile`: the realm's report of what it repaired.
    pub async fn reconcile(&self) -> anyhow::Result<serde_json::Value> {
        self.json(self.request(Method::POST, "/v1/admin/reconcile"), "reconciliation report").await
    }

    /// `DELETE /v1/sandboxes/{id}`: kills it; returns the final record once it has ended.
    pub async fn delete(&self, id: &SandboxId) -> anyhow::Result<SandboxRecord> {
        self.delete_with(id, &[]).await
    }

    /// `DELETE /v1/sandboxes/{id}?grace=…&signal=…`: Thanatos's gentle path.
    pub async fn delete_with(&self, id: &SandboxId, query: &[(&str, String)]) -> anyhow::Result<SandboxRecord> {
        self.json(self.request(Method::DELETE, &format!("/v1/sandboxes/{id}")).query(query), "sandbox record").await
    }

    /// `GET /v1/sandboxes/{id}/logs`: the main process's output (until it ends, with `follow`).
    pub async fn logs(&self, id: &SandboxId, follow: bool) -> anyhow::Result<OutputStream> {
        let path =
            if follow { format!("/v1/sandboxes/{id}/logs?follow=true") } else { format!("/v1/sandboxes/{id}/logs") };
        let resp = self.send(self.request(Method::GET, &path).header("accept", "text/event-stream")).await?;
        Ok(OutputStream::new(resp))
    }

    /// `POST /v1/sandboxes/{id}/exec`: runs a further command; its output streams back.
    pub async fn exec(&self, id: &SandboxId, req: &ExecRequest) -> anyhow::Result<OutputStream> {
        let rb = self
            .request(Method::POST, &format!("/v1/sandboxes/{id}/exec"))
            .header("accept", "text/event-stream")
            .json(req);
        Ok(OutputStream::new(self.send(rb).await?))
    }

    /// `GET /v1/templates`.
    pub async fn templates(&self) -> anyhow::Result<Vec<TemplateRecord>> {
        Ok(self.templates_and_pools().await?.0)
    }

    /// `GET /v1/templates` with the warm pools of each pooled template.
    pub async fn templates_and_pools(&self) -> anyhow::Result<(Vec<TemplateRecord>, BTreeMap<String, PoolView>)> {
        let list: TemplateList = self.json(self.request(Method::GET, "/v1/templates"), "template list").await?;
        Ok((list.templates, list.pools))
    }

    /// `POST /v1/sandboxes/{id}/sleep` (Hypnos).
    pub async fn sleep(&self, id: &SandboxId) -> anyhow::Result<SandboxRecord> {
        self.json(self.request(Method::POST, &format!("/v1/sandboxes/{id}/sleep")), "sandbox").await
    }

    /// `POST /v1/sandboxes/{id}/wake[?wait=true]` (Hypnos).
    pub async fn wake(&self, id: &SandboxId, wait: bool) -> anyhow::Result<SandboxRecord> {
        let rb = self.request(Method::POST, &format!("/v1/sandboxes/{id}/wake")).query(&[("wait", wait)]);
        self.json(rb, "sandbox").await
    }

    /// `GET /v1/sleeping` (Hypnos).
    pub async fn sleeping(&self) -> anyhow::Result<serde_json::Value> {
        self.json(self.request(Method::GET, "/v1/sleeping"), "sleeping list").await
    }

    /// `PUT /v1/templates/{name}/pool`: every node keeps `size` sandboxes of it ready.
    pub async fn set_pool(&self, name: &str, size: u32) -> anyhow::Result<TemplateRecord> {
        let body = serde_json::json!({ "size": size });
        self.json(self.request(Method::PUT, &format!("/v1/templates/{name}/pool")).json(&body), "template").await
    }

    /// `POST /v1/templates/build`: builds a template; its progress streams back as SSE.
    pub async fn build_template(&self, body: &serde_json::Value) -> anyhow::Result<SseReader> {
        let rb = self.request(Method::POST, "/v1/templates/build").header("accept", "text/event-stream").json(body);
        Ok(SseReader::from_response(self.send(rb).await?))
    }

    /// `GET /v1/templates/{name}`.
    pub async fn template(&self, name: &str) -> anyhow::Result<TemplateRecord> {
        self.json(self.request(Method::GET, &format!("/v1/templates/{name}")), "template").await
    }

    /// `DELETE /v1/templates/{name}`.
    pub async fn remove_template(&self, name: &str) -> anyhow::Result<TemplateRecord> {
        self.json(self.request(Method::DELETE, &format!("/v1/templates/{name}")), "template").await
    }

    /// `POST /v1/templates/prune`: `(blobs removed, unpacked images removed, bytes freed)`.
    pub async fn prune_templates(&self) -> anyhow::Result<(u64, u64, u64)> {
        let v: serde_json::Value = self.json(self.request(Method::POST, "/v1/templates/prune"), "prune result").await?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok((n("blobs_removed"), n("images_removed"), n("bytes_freed")))
    }

    /// `POST /v1/templates`: registers the directory `path` (on the realm's machine) as `name`.
    pub async fn import_template(&self, name: &str, path: &Path) -> anyhow::Result<TemplateRecord> {
        self.import_template_as(name, path, false).await
    }

    /// [`Client::import_template`], replacing a template of that name when `replace`.
    pub async fn import_template_as(&self, name: &str, path: &Path, replace: bool) -> anyhow::Result<TemplateRecord> {
        let path = path.to_str().context("the template directory's path is not UTF-8")?;
        let body = serde_json::json!({ "name": name, "path": path, "replace": replace });
        self.json(self.request(Method::POST, "/v1/templates").json(&body), "template").await
    }

    /// `POST /v1/templates/{name}/warm`: Nyx.Prepare; returns the snapshot made.
    pub async fn warm_template(&self, name: &str, warming: &tartarus_core::Warming) -> anyhow::Result<SnapshotInfo> {
        self.json(self.request(Method::POST, &format!("/v1/templates/{name}/warm")).json(warming), "snapshot").await
    }

    /// `GET /v1/snapshots`: every template's snapshot, with why it is stale if it is.
    pub async fn snapshots(&self) -> anyhow::Result<serde_json::Value> {
        self.json(self.request(Method::GET, "/v1/snapshots"), "snapshot list").await
    }

    /// `DELETE /v1/templates/{name}/snapshot`.
    pub async fn remove_snapshot(&self, name: &str) -> anyhow::Result<SnapshotInfo> {
        self.json(self.request(Method::DELETE, &format!("/v1/templates/{name}/snapshot")), "snapshot").await
    }
}

/// The token in `path`, trimmed; `None` when absent, unreadable or empty.
fn read_token(path: &Path) -> Option<String> {
    let t = std::fs::read_to_string(path).ok()?;
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

/// One Server-Sent Event: its type (`message` when unnamed) and its data lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: String,
    /// The `data:` fields, joined.
    pub data: String,
}

/// Incremental SSE parser: bytes in, complete events out.
///
/// Lines end with `\n` or `\r\n`. Comments (`:`) and `id`/`retry` fields are ignored; an
/// event is dispatched at a blank line if it has data. A partial event at the end of the
/// stream is dropped, as the SSE specification says.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
}

impl SseParser {
    /// Feeds bytes; complete events are appended to `out`.
    pub fn push(&mut self, bytes: &[u8], out: &mut VecDeque<SseEvent>) {
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&String::from_utf8_lossy(&line), out);
            } else {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &str, out: &mut VecDeque<SseEvent>) {
        if line.is_empty() {
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if std::mem::take(&mut self.has_data) {
                let event = if event.is_empty() { "message".to_owned() } else { event };
                out.push_back(SseEvent { event, data });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

/// Reads Server-Sent Events from a byte stream (a response body).
pub struct SseReader {
    body: BoxStream<'static, anyhow::Result<Vec<u8>>>,
    parser: SseParser,
    ready: VecDeque<SseEvent>,
}

impl SseReader {
    /// A reader over `body`'s chunks.
    pub fn new(body: BoxStream<'static, anyhow::Result<Vec<u8>>>) -> Self {
        Self { body, parser: SseParser::default(), ready: VecDeque::new() }
    }

    /// A reader over a response's body.
    pub fn from_response(resp: Response) -> Self {
        let body = resp
            .bytes_stream()
            .map(|chunk| chunk.map(|b| b.to_vec()).context("the realm's event stream broke off"))
            .boxed();
        Self::new(body)
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<anyhow::Result<SseEvent>> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(Ok(ev));
            }
            match self.body.next().await? {
                Ok(chunk) => self.parser.push(&chunk, &mut self.ready),
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Decodes one event of an output stream; `None` for events it does not know (keep-alives).
///
/// `stdout`/`stderr` data is a JSON string, `exit` an [`ExitInfo`], and `error` (should a realm
/// end a stream with one) an API error body.
pub fn decode_output(ev: &SseEvent) -> anyhow::Result<Option<OutputEvent>> {
    let stream = match ev.event.as_str() {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        "exit" => {
            let exit: ExitInfo =
                serde_json::from_str(&ev.data).with_context(|| format!("unreadable exit event {:?}", ev.data))?;
            return Ok(Some(OutputEvent::Exit(exit)));
        }
        "error" => {
            let err = match serde_json::from_str::<ErrorBody>(&ev.data) {
                Ok(b) => ApiError { status: 200, code: b.code, message: b.message },
                Err(_) => ApiError { status: 200, code: "stream_error".into(), message: ev.data.clone() },
            };
            return Err(err.into());
        }
        _ => return Ok(None),
    };
    let text: String =
        serde_json::from_str(&ev.data).with_context(|| format!("unreadable {} event {:?}", ev.event, ev.data))?;
    Ok(Some(OutputEvent::Output(stream, text.into_bytes())))
}

/// The output of a sandbox or an exec, as [`OutputEvent`]s; the last one is the exit.
pub struct OutputStream {
    sse: SseReader,
    ended: bool,
}

impl OutputStream {
    /// The output stream in a response's body.
    pub fn new(resp: Response) -> Self {
        Self::from_reader(SseReader::from_response(resp))
    }

    /// The output stream read by `sse`.
    pub fn from_reader(sse: SseReader) -> Self {
        Self { sse, ended: false }
    }

    /// The next event; `None` after the exit or when the stream ends without one.
    pub async fn next(&mut self) -> Option<anyhow::Result<OutputEvent>> {
        while !self.ended {
            let ev = match self.sse.next().await? {
                Ok(ev) => ev,
                Err(e) => return Some(Err(e)),
            };
            match decode_output(&ev) {
                Ok(None) => continue,
                Ok(Some(out)) => {
                    self.ended = matches!(out, OutputEvent::Exit(_));
                    return Some(Ok(out));
                }
                Err(e) => return Some(Err(e)),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tartarus_core::KillReason;

    fn parse(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = VecDeque::new();
        for c in chunks {
            p.push(c, &mut out);
        }
        out.into_iter().collect()
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent { event: event.into(), data: data.into() }
    }

    #[test]
    fn sse_events_split_anywhere() {
        let text =
            b"event: stdout\ndata: \"hello\\n\"\n\nevent: exit\ndata: {\"state\":\"exited\",\"exit_code\":0}\n\n";
        let whole = parse(&[text]);
        assert_eq!(whole, vec![ev("stdout", "\"hello\\n\""), ev("exit", "{\"state\":\"exited\",\"exit_code\":0}")]);
        // Byte by byte gives the same events.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse(&bytes), whole);
    }

    #[test]
    fn sse_crlf_comments_multiline_and_defaults() {
        let got = parse(&[
            b": keep-alive\r\n\r\ndata:a\r\ndata: b\r\n\r\nevent:x\nid: 7\nretry: 10\ndata\n\nevent: lone\n\n",
        ]);
        assert_eq!(got, vec![ev("message", "a\nb"), ev("x", "")]);
    }

    #[test]
    fn sse_partial_event_at_the_end_is_dropped() {
        assert_eq!(parse(&[b"event: stdout\ndata: \"x\"\n"]), vec![]);
    }

    #[test]
    fn decodes_output_events() {
        let out = decode_output(&ev("stderr", "\"warn \\u00e9\\n\"")).unwrap();
        assert_eq!(out, Some(OutputEvent::Output(Stream::Stderr, "warn é\n".as_bytes().to_vec())));
        let exit = decode_output(&ev("exit", r#"{"state":"killed","kill_reason":"timeout"}"#)).unwrap();
        let Some(OutputEvent::Exit(info)) = exit else { panic!("not an exit: {exit:?}") };
        assert_eq!((info.state, info.kill_reason), (SandboxState::Killed, Some(KillReason::Timeout)));
        assert_eq!(decode_output(&ev("ping", "")).unwrap(), None);
        assert!(decode_output(&ev("stdout", "not json")).is_err());
        let err = decode_output(&ev("error", r#"{"code":"internal","message":"boom"}"#)).unwrap_err();
        assert_eq!(err.to_string(), "internal: boom");
    }

    #[tokio::test]
    async fn output_stream_stops_after_exit() {
        let chunks: Vec<anyhow::Result<Vec<u8>>> = vec![
            Ok(b"event: stdout\ndata: \"a\"\n\nevent: ex".to_vec()),
            Ok(b"it\ndata: {\"state\":\"exited\",\"exit_code\":3}\n\nevent: stdout\ndata: \"late\"\n\n".to_vec()),
        ];
        let mut s = OutputStream::from_reader(SseReader::new(futures::stream::iter(chunks).boxed()));
        assert_eq!(s.next().await.unwrap().unwrap(), OutputEvent::Output(Stream::Stdout, b"a".to_vec()));
        let Some(Ok(OutputEvent::Exit(info))) = s.next().await else { panic!("no exit") };
        assert_eq!(info.exit_code, Some(3));
        assert!(s.next().await.is_none());
    }

    /// Serves one HTTP exchange on a free port: returns the address and what the client sent.
    async fn serve_once(response: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "the client hung up");
                req.extend_from_slice(&buf[..n]);
            }
            sock.write_all(response.as_bytes()).await.unwrap();
            sock.shutdown().await.unwrap();
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, task)
    }

    fn global(api: &str, token: Option<&str>) -> Global {
        Global { api: api.into(), token: token.map(String::from), data_dir: "/nonexistent-tartarus-test".into() }
    }

    #[tokio::test]
    async fn unreachable_realms_are_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = Client::new(&global(&api, None)).unwrap().templates().await.unwrap_err();
        assert_eq!(format!("{err:#}"), format!("cannot reach the realm at {api}: is `tartarus up` running?"));
    }

    #[tokio::test]
    async fn api_errors_come_back_as_code_and_message() {
        let body = r#"{"code":"sandbox_not_found","message":"no sandbox sb-0123456789abcdef"}"#;
        let resp: &'static str = Box::leak(
            format!(
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let (api, server) = serve_once(resp).await;
        let id = SandboxId::parse("sb-0123456789abcdef").unwrap();
        let err = Client::new(&global(&api, Some(" secret\n"))).unwrap().get(&id).await.unwrap_err();
        assert_eq!(format!("{err:#}"), "sandbox_not_found: no sandbox sb-0123456789abcdef");
        assert_eq!(err.downcast_ref::<ApiError>().unwrap().status, 404);
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /v1/sandboxes/sb-0123456789abcdef HTTP/1.1"), "{req}");
        assert!(req.to_ascii_lowercase().contains("authorization: bearer secret\r\n"), "{req}");
    }

    #[tokio::test]
    async fn logs_stream_over_http() {
        let mut resp =
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_owned();
        // Chunk boundaries fall inside events, as they may on a real connection.
        for part in
            ["event: stdout\ndata: \"hi\\n\"\n\nevent: ex", "it\ndata: {\"state\":\"exited\",\"exit_code\":0}\n\n"]
        {
            resp.push_str(&format!("{:x}\r\n{part}\r\n", part.len()));
        }
        resp.push_str("0\r\n\r\n");
        let (api, server) = serve_once(Box::leak(resp.into_boxed_str())).await;
        let id = SandboxId::parse("sb-0123456789abcdef").unwrap();
        let mut s = Client::new(&global(&api, None)).unwrap().logs(&id, true).await.unwrap();
        assert_eq!(s.next().await.unwrap().unwrap(), OutputEvent::Output(Stream::Stdout, b"hi\n".to_vec()));
        assert!(matches!(s.next().await, Some(Ok(OutputEvent::Exit(ExitInfo { exit_code: Some(0), .. })))));
        assert!(s.next().await.is_none());
        let req = server.await.unwrap();
        assert!(req.starts_with("GET /v1/sandboxes/sb-0123456789abcdef/logs?follow=true "), "{req}");
        assert!(!req.to_ascii_lowercase().contains("authorization"), "{req}");
    }

    #[test]
    fn api_errors_read_any_body() {
        let e =
            ApiError::from_body(StatusCode::NOT_FOUND, br#"{"code":"sandbox_not_found","message":"no sandbox sb-1"}"#);
        assert_eq!(e.to_string(), "sandbox_not_found: no sandbox sb-1");
        let e = ApiError::from_body(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(e.to_string(), "HTTP 502: Bad Gateway");
        let e = ApiError::from_body(StatusCode::INTERNAL_SERVER_ERROR, b"oops\n");
        assert_eq!(e.to_string(), "HTTP 500: oops");
    }

    #[test]
    fn list_filter_query() {
        let f = ListFilter {
            states: vec![SandboxState::Running, SandboxState::Exited],
            labels: vec![("team".into(), "a".into()), ("env".into(), "ci".into())],
            limit: Some(50),
        };
        let q = f.query();
        assert_eq!(
            q,
            vec![
                ("state", "running,exited".to_owned()),
                ("label", "team=a".to_owned()),
                ("label", "env=ci".to_owned()),
                ("limit", "50".to_owned())
            ]
        );
        assert!(ListFilter::default().query().is_empty());
    }
}
