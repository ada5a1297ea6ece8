//! A node reached over its agent's HTTP API: a `tartarus agent` on another machine.
//!
//! [`RemoteNode`] speaks the protocol of [`tartarus_hecatoncheir::api`]: JSON for unary calls,
//! `application/x-ndjson` output streams for `exec` and `logs`, every call with the realm's
//! agent secret. It keeps one HTTP client (and so one pool of kept-alive connections) per node.
//!
//! Answers map onto [`NodeError`]: a node that cannot be reached, is too slow, or answers
//! with something that is not the agent's protocol is `Unreachable` (the caller may try
//! again, or judge the node lost); the agent's own errors keep their meaning (`404` →
//! `NotFound`, `409` → `NotRunning`, others → `Failed`). A stream that breaks before its exit
//! event ends with a synthesized `failed` exit, so whoever reads it always sees an end.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use tartarus_core::{ExecRequest, ExitInfo, OutputEvent, SandboxId, SandboxRecord, SandboxState};
use tartarus_hecatoncheir::agent::error_chain;
use tartarus_hecatoncheir::api::{ErrorBody, Held, KillBody, Killed};
use tartarus_hecatoncheir::charon::{Crossing, Landing};
use tartarus_hecatoncheir::ExecStream;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::nodes::{Node, NodeError};

/// Longest wait for a TCP connection to an agent.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for a unary call, and for the first answer of a stream.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a launch: the agent answers once the sandbox runs, which for a session
/// includes waiting until `exec` can reach it.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// Output events buffered between the HTTP stream and its reader (as the agent does).
const STREAM_BUFFER: usize = 64;

/// Longest line accepted in an output stream. The agent writes at most 64 KiB of output per
/// event (base64: ~88 KiB), so anything near this is not the agent talking.
const MAX_LINE: usize = 4 * 1024 * 1024;

/// A node whose agent runs elsewhere, reached at its API address.
pub struct RemoteNode {
    name: String,
    /// `<address>/agent/v1`.
    base: String,
    secret: String,
    client: reqwest::Client,
}

impl RemoteNode {
    /// The agent of node `name` at `address` (e.g. `http://10.0.0.7:7071`), called with `secret`.
    pub fn new(name: &str, address: &str, secret: &str) -> Self {
        let address = address.trim_end_matches('/');
        let address = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
        // No client-wide timeout: streams last as long as their sandbox; each call sets its own.
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE)
            .tcp_keepalive(Duration::from_secs(30))
            .build()
            // Only a TLS backend failing to load can fail a build, and this client has none.
            .expect("an HTTP client without TLS always builds");
        Self { name: name.to_owned(), base: format!("{address}/agent/v1"), secret: secret.to_owned(), client }
    }

    fn unreachable(&self, reason: impl Into<String>) -> NodeError {
        NodeError::Unreachable { node: self.name.clone(), reason: reason.into() }
    }

    fn transport(&self, e: &reqwest::Error) -> NodeError {
        if e.is_timeout() {
            return self.unreachable(format!("no answer in time ({})", error_chain(e)));
        }
        self.unreachable(error_chain(e))
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.client.post(format!("{}{path}", self.base)).bearer_auth(&self.secret)
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.client.get(format!("{}{path}", self.base)).bearer_auth(&self.secret)
    }

    /// Sends a unary call (at most `timeout`) and reads its JSON answer.
    async fn call<T: DeserializeOwned>(&self, req: RequestBuilder, timeout: Duration) -> Result<T, NodeError> {
        let resp = req.timeout(timeout).send().await.map_err(|e| self.transport(&e))?;
        let resp = self.check(resp).await?;
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        serde_json::from_slice(&body).map_err(|e| self.unreachable(format!("answered with something unexpected: {e}")))
    }

    /// The response if it succeeded, else the agent's error as a [`NodeError`].
    async fn check(&self, resp: Response) -> Result<Response, NodeError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        // An answer that is not the agent's error body comes from something else at that address
        // (a proxy, another service): its status says nothing about the sandbox.
        let Ok(err) = serde_json::from_slice::<ErrorBody>(&body) else {
            return Err(self.unreachable(format!("answered HTTP {status}, not as a Tartarus agent")));
        };
        Err(error_of(&self.name, status, err))
    }

    /// Opens an output stream and forwards its events. With `ends_with_exit`, a stream that
    /// ends without an exit event is reported as lost.
    async fn stream(&self, req: RequestBuilder, ends_with_exit: bool) -> Result<ExecStream, NodeError> {
        // Only the answer (or an error's body) is timed: the stream lasts as long as the output does.
        let answer = async { self.check(req.send().await.map_err(|e| self.transport(&e))?).await };
        let resp = tokio::time::timeout(CALL_TIMEOUT, answer)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {CALL_TIMEOUT:?}")))??;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(forward(self.name.clone(), resp, tx, ends_with_exit));
        Ok(rx)
    }
}

/// The agent's error answer as a [`NodeError`].
fn error_of(node: &str, status: StatusCode, err: ErrorBody) -> NodeError {
    match (status, err.code.as_str()) {
        (StatusCode::UNAUTHORIZED, _) => NodeError::Failed(format!(
            "the agent on node {node} refused the realm's agent secret ({}); give Olympus and the agent the same secret",
            err.message
        )),
        // A route the agent does not know: it speaks another version of the protocol.
        (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, "not_found" | "method_not_allowed") => {
            NodeError::Failed(format!(
                "the agent on node {node} does not know this call ({}); is it another version of Tartarus?",
                err.message
            ))
        }
        (StatusCode::NOT_FOUND, "port_not_exposed") => NodeError::NotExposed(err.message),
        (StatusCode::BAD_GATEWAY, "bad_gateway") => NodeError::BadGateway(err.message),
        (StatusCode::NOT_FOUND, _) => NodeError::NotFound(err.message),
        (StatusCode::CONFLICT, "cannot_sleep") => NodeError::CannotSleep(err.message),
        (StatusCode::CONFLICT, _) => NodeError::NotRunning(err.message),
        _ => NodeError::Failed(format!("node {node}: {}", err.message)),
    }
}

/// The exit event of a stream lost before its end.
fn lost(node: &str, why: &str) -> OutputEvent {
    OutputEvent::Exit(ExitInfo {
        state: SandboxState::Failed,
        exit_code: None,
        kill_reason: None,
        error: Some(format!("lost the stream from node {node}: {why}")),
    })
}

/// Reads an ndjson output stream into `tx` until its exit event, its end, or until nobody
/// reads `tx` any more. Returning drops `resp`, which closes the connection: the agent sees
/// its client gone and ends what fed the stream (an exec is killed).
async fn forward(node: String, resp: Response, tx: mpsc::Sender<OutputEvent>, ends_with_exit: bool) {
    let mut body = resp.bytes_stream();
    let mut lines = Lines::default();
    let broke = 'read: loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            () = tx.closed() => {
                debug!(node, "the reader of a stream went away; hanging up");
                return;
            }
        };
        let (complete, ended) = match chunk {
            // A last line without its newline still counts: it may be the exit.
            None => match lines.finish() {
                Ok(last) => (Vec::from_iter(last), true),
                Err(e) => break 'read e,
            },
            Some(Err(e)) => break 'read error_chain(&e),
            Some(Ok(bytes)) => match lines.push(&bytes) {
                Ok(complete) => (complete, false),
                Err(e) => break 'read e,
            },
        };
        for line in complete {
            let event = match OutputEvent::from_wire(&line) {
                Ok(ev) => ev,
                Err(e) => break 'read e,
            };
            let exit = matches!(event, OutputEvent::Exit(_));
            if tx.send(event).await.is_err() || exit {
                return;
            }
        }
        if ended {
            if !ends_with_exit {
                return;
            }
            break 'read "the node ended the stream before its exit".to_owned();
        }
    };
    warn!(node, cause = %broke, "an output stream from a node broke");
    let _ = tx.send(lost(&node, &broke)).await;
}

/// Splits a byte stream into lines, whatever the chunk boundaries; holds back a partial line
/// until the rest arrives.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes, in order (empty lines skipped).
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, String> {
        let Some(last_newline) = chunk.iter().rposition(|&b| b == b'\n') else {
            self.pending.extend_from_slice(chunk);
            if self.pending.len() > MAX_LINE {
                return Err(format!("a line of more than {MAX_LINE} bytes"));
            }
            return Ok(Vec::new());
        };
        let mut complete = std::mem::take(&mut self.pending);
        complete.extend_from_slice(&chunk[..last_newline]);
        self.pending.extend_from_slice(&chunk[last_newline + 1..]);
        complete.split(|&b| b == b'\n').filter_map(line).collect()
    }

    /// What is left once the input ended: a last line without its newline, if any.
    fn finish(&mut self) -> Result<Option<String>, String> {
        line(&std::mem::take(&mut self.pending)).transpose()
    }
}

/// One line as text (`None` when blank); a trailing `\r` is dropped.
fn line(bytes: &[u8]) -> Option<Result<String, String>> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(String::from_utf8(bytes.to_vec()).map_err(|_| "a line that is not UTF-8".to_owned()))
}

#[async_trait]
impl Node for RemoteNode {
    fn name(&self) -> &str {
        &self.name
    }

    async fn launch(&self, id: &SandboxId) -> Result<(), NodeError> {
        let _: serde_json::Value = self.call(self.post(&format!("/sandboxes/{id}/launch")), LAUNCH_TIMEOUT).await?;
        Ok(())
    }

    async fn warm(
        &self,
        template: &tartarus_core::TemplateName,
        warming: &tartarus_core::Warming,
    ) -> Result<tartarus_core::SnapshotInfo, NodeError> {
        let req = self.post(&format!("/templates/{template}/warm")).json(warming);
        self.call(req, LAUNCH_TIMEOUT).await
    }

    async fn kill(&self, id: &SandboxId, order: tartarus_core::KillOrder) -> Result<bool, NodeError> {
        let req = self.post(&format!("/sandboxes/{id}/kill")).json(&KillBody::from(order));
        let killed: Killed = self.call(req, CALL_TIMEOUT).await?;
        Ok(killed.killed)
    }

    async fn exec(&self, id: &SandboxId, req: ExecRequest) -> Result<ExecStream, NodeError> {
        self.stream(self.post(&format!("/sandboxes/{id}/exec")).json(&req), true).await
    }

    async fn logs(&self, id: &SandboxId, follow: bool) -> Result<mpsc::Receiver<OutputEvent>, NodeError> {
        // Without `follow` the agent ends at what is there now, with no exit while it runs.
        self.stream(self.get(&format!("/sandboxes/{id}/logs?follow={follow}")), follow).await
    }

    async fn pause(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        self.call(self.post(&format!("/sandboxes/{id}/pause")), CALL_TIMEOUT).await
    }

    async fn resume(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        self.call(self.post(&format!("/sandboxes/{id}/resume")), CALL_TIMEOUT).await
    }

    async fn ferry(&self, id: &SandboxId, port: u16, c: Crossing) -> Result<Landing, NodeError> {
        let url = format!("{}/sandboxes/{id}/ports/{port}{}", self.base, c.path);
        let resp = self
            .client
            .request(c.method, url)
            .bearer_auth(&self.secret)
            .headers(tartarus_hecatoncheir::charon::passable(&c.headers))
            .body(c.body)
            .timeout(Duration::from_secs(90))
            .send()
            .await
            .map_err(|e| self.transport(&e))?;
        if resp.headers().contains_key(tartarus_hecatoncheir::charon::refusal_header()) {
            // The agent's own refusal (not running, port not exposed, no answer), not the sandbox's.
            return Err(self.check(resp).await.err().unwrap_or_else(|| self.unreachable("an empty refusal")));
        }
        let status = resp.status();
        let headers = tartarus_hecatoncheir::charon::passable(resp.headers());
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        Ok(Landing { status, headers, body })
    }

    async fn sleep(&self, id: &SandboxId) -> Result<SandboxRecord, NodeError> {
        // Checkpointing and storing a large sandbox takes a while.
        self.call(self.post(&format!("/sandboxes/{id}/sleep")), Duration::from_secs(600)).await
    }

    async fn held(&self) -> Result<Vec<SandboxId>, NodeError> {
        let held: Held = self.call(self.get("/sandboxes"), CALL_TIMEOUT).await?;
        Ok(held.sandboxes)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::Arc;

    use axum::body::{Body, Bytes};
    use axum::routing::post;
    use tartarus_core::{SoulRequest, Stream, Verdict};
    use tartarus_hecatoncheir::runtime::refusing::Refusing;
    use tartarus_hecatoncheir::{AgentConfig, Hecatoncheir};
    use tartarus_store::{EmbeddedStore, Events, State};

    use super::*;

    const SECRET: &str = "agent-s3cret";

    #[test]
    fn lines_are_whole_whatever_the_chunks() {
        let text = b"{\"stdout\":\"aGk=\"}\n\n{\"stderr\":\"\"}\r\n{\"exit\":{\"state\":\"exited\"}}\n";
        let want = vec!["{\"stdout\":\"aGk=\"}", "{\"stderr\":\"\"}", "{\"exit\":{\"state\":\"exited\"}}"];
        for size in 1..=text.len() {
            let mut lines = Lines::default();
            let mut got = Vec::new();
            for chunk in text.chunks(size) {
                got.extend(lines.push(chunk).unwrap());
            }
            assert_eq!(lines.finish().unwrap(), None, "chunks of {size}");
            assert_eq!(got, want, "chunks of {size}");
        }
        // A last line without its newline comes out at the end.
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"a\nb").unwrap(), vec!["a"]);
        assert_eq!(lines.finish().unwrap().as_deref(), Some("b"));
        // A multi-byte character split across chunks stays whole.
        let mut lines = Lines::default();
        let snow = "☃\n".as_bytes();
        assert!(lines.push(&snow[..1]).unwrap().is_empty());
        assert_eq!(lines.push(&snow[1..]).unwrap(), vec!["☃"]);
        // Not the agent talking.
        assert!(Lines::default().push(&[0xff, b'\n']).is_err());
        let mut lines = Lines::default();
        let long = vec![b'x'; 64 * 1024];
        let overflow = (0..=MAX_LINE / long.len()).map(|_| lines.push(&long)).find(Result::is_err);
        assert!(overflow.is_some(), "an endless line is refused");
    }

    /// Serves `app` on a free port of 127.0.0.1; its address.
    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        address
    }

    /// A real agent called `n1` (its API served on a free port), and its state directory.
    async fn agent() -> (Arc<Hecatoncheir>, String, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(&dir.path().join("state.redb")).unwrap());
        let cfg = AgentConfig {
            node_name: "n1".into(),
            sandboxes_dir: dir.path().join("sandboxes"),
            shim_exe: "/nonexistent/tartarus".into(),
            vcpus: 2,
            memory_mib: 1024,
            slots: 4,
            labels: Default::default(),
            address: None,
            nyx: None,
            hypnos: None,
            styx: None,
            simulate_launch: None,
        };
        let agent = Hecatoncheir::new(cfg, Arc::new(Refusing), State::embedded(store), Events::default());
        let address = serve(tartarus_hecatoncheir::api::router(agent.clone(), SECRET.into())).await;
        (agent, address, dir)
    }

    /// Stores a record of a sandbox in `state`, placed on `n1`.
    async fn sandbox(agent: &Hecatoncheir, state: SandboxState) -> SandboxId {
        let spec = SoulRequest { template: "busybox".into(), ..Default::default() }.validate("acme").unwrap();
        let verdict = Verdict { principal: "p".into(), rulings: vec![], judged_at: chrono::Utc::now() };
        let mut rec = SandboxRecord::admitted(SandboxId::generate(), spec, verdict);
        rec.state = state;
        rec.node = Some("n1".into());
        agent.state().sandboxes.insert(&rec, None).await.unwrap();
        rec.id
    }

    async fn drain(mut rx: mpsc::Receiver<OutputEvent>) -> Vec<OutputEvent> {
        let mut events = Vec::new();
        while let Some(ev) = rx.recv().await {
            events.push(ev);
        }
        events
    }

    #[tokio::test]
    async fn speaks_to_a_real_agent() {
        let (agent, address, _dir) = agent().await;
        let node = RemoteNode::new("n1", &format!("{address}/"), SECRET);
        assert_eq!(node.name(), "n1");
        assert_eq!(node.held().await.unwrap(), Vec::<SandboxId>::new());

        let unknown = SandboxId::generate();
        assert!(matches!(node.launch(&unknown).await, Err(NodeError::NotFound(m)) if m.contains(unknown.as_str())));
        assert!(matches!(node.pause(&unknown).await, Err(NodeError::NotFound(_))));
        assert!(matches!(node.logs(&unknown, true).await, Err(NodeError::NotFound(_))));
        let exec = ExecRequest { command: vec!["id".into()], ..Default::default() };
        assert!(matches!(node.exec(&unknown, exec.clone()).await, Err(NodeError::NotFound(_))));
        assert!(!node.kill(&unknown, tartarus_core::KillReason::Requested.into()).await.unwrap());
        let bad = ExecRequest::default();
        assert!(matches!(node.exec(&unknown, bad).await, Err(NodeError::Failed(m)) if m.contains("command")));

        // Recorded as running, but not running here.
        let elsewhere = sandbox(&agent, SandboxState::Running).await;
        assert!(matches!(node.resume(&elsewhere).await, Err(NodeError::NotRunning(_))));
        assert!(matches!(node.exec(&elsewhere, exec).await, Err(NodeError::NotRunning(_))));

        // A launch that fails (no such template) is recorded, and its logs end with that.
        let failing = sandbox(&agent, SandboxState::Starting).await;
        node.launch(&failing).await.unwrap();
        for follow in [false, true] {
            match drain(node.logs(&failing, follow).await.unwrap()).await.as_slice() {
                [OutputEvent::Exit(e)] => {
                    assert_eq!(e.state, SandboxState::Failed);
                    assert!(e.error.as_deref().unwrap().contains("busybox"), "{e:?}");
                }
                other => panic!("expected only the exit, got {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_wrong_secret_is_a_failure_that_says_so() {
        let (_agent, address, _dir) = agent().await;
        let node = RemoteNode::new("n1", &address, "not-the-secret");
        match node.held().await {
            Err(NodeError::Failed(m)) => assert!(m.contains("refused the realm's agent secret"), "{m}"),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_closed_port_or_a_stranger_is_unreachable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let node = RemoteNode::new("n9", &address, SECRET);
        match node.held().await {
            Err(NodeError::Unreachable { node, reason }) => assert_eq!(node, "n9", "{reason}"),
            other => panic!("expected unreachable, got {other:?}"),
        }
        // Some other service at that address: its 404 says nothing about sandboxes.
        let stranger = serve(axum::Router::new()).await;
        let node = RemoteNode::new("n9", &stranger, SECRET);
        let id = SandboxId::generate();
        assert!(matches!(node.pause(&id).await, Err(NodeError::Unreachable { .. })));
        assert!(matches!(node.logs(&id, false).await, Err(NodeError::Unreachable { .. })));
    }

    /// An agent stand-in whose exec answers with `body` as the stream.
    async fn fake_exec(body: impl Fn() -> Body + Clone + Send + Sync + 'static) -> RemoteNode {
        let app = axum::Router::new().route(
            "/agent/v1/sandboxes/{id}/exec",
            post(move || {
                let body = body.clone();
                async move { ([("content-type", "application/x-ndjson")], body()) }
            }),
        );
        RemoteNode::new("n1", &serve(app).await, SECRET)
    }

    fn line(ev: &OutputEvent) -> Result<Bytes, std::io::Error> {
        Ok(Bytes::from(format!("{}\n", ev.to_wire())))
    }

    fn hi() -> OutputEvent {
        OutputEvent::Output(Stream::Stdout, b"hi".to_vec())
    }

    fn is_lost(ev: &OutputEvent) -> bool {
        matches!(ev, OutputEvent::Exit(ExitInfo { state: SandboxState::Failed, error: Some(e), .. })
            if e.starts_with("lost the stream from node n1"))
    }

    #[tokio::test]
    async fn a_broken_stream_still_ends_with_an_exit() {
        let id = SandboxId::generate();
        let req = ExecRequest { command: vec!["id".into()], ..Default::default() };
        // The connection breaks midway (once the answer has begun: hyper sends its head with
        // the first chunk).
        let broken = fake_exec(|| {
            let chunks = futures::stream::iter([line(&hi()), Err(std::io::Error::other("agent died"))]);
            Body::from_stream(chunks.then(|c| async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                c
            }))
        })
        .await;
        let events = drain(broken.exec(&id, req.clone()).await.unwrap()).await;
        assert!(matches!(events.as_slice(), [e, exit] if *e == hi() && is_lost(exit)), "{events:?}");
        // It ends cleanly, but without the exit.
        let cut = fake_exec(|| Body::from_stream(futures::stream::iter([line(&hi())]))).await;
        let events = drain(cut.exec(&id, req.clone()).await.unwrap()).await;
        assert!(matches!(events.as_slice(), [e, exit] if *e == hi() && is_lost(exit)), "{events:?}");
        // It says something that is not an output event.
        let garbage = fake_exec(|| Body::from("{\"stdout\":\"aGk=\"}\n<html>\n")).await;
        let events = drain(garbage.exec(&id, req.clone()).await.unwrap()).await;
        assert!(matches!(events.as_slice(), [e, exit] if *e == hi() && is_lost(exit)), "{events:?}");
        // A proper stream, its exit line split in two chunks and without its last newline.
        let exit = OutputEvent::Exit(ExitInfo {
            state: SandboxState::Exited,
            exit_code: Some(0),
            kill_reason: None,
            error: None,
        });
        let wire = exit.to_wire();
        let (a, b) = wire.split_at(wire.len() / 2);
        let (a, b) = (Bytes::from(a.to_owned()), Bytes::from(b.to_owned()));
        let fine = fake_exec(move || {
            let chunks = [line(&hi()), Ok(a.clone()), Ok(b.clone())];
            Body::from_stream(futures::stream::iter(chunks))
        })
        .await;
        assert_eq!(drain(fine.exec(&id, req).await.unwrap()).await, vec![hi(), exit]);
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_hangs_up_on_the_agent() {
        let (hung_up_tx, mut hung_up) = mpsc::channel::<()>(1);
        // The body lives as long as the agent's side of the stream; dropping it is what the
        // agent sees when its client goes away.
        struct Sentinel(mpsc::Sender<()>);
        impl Drop for Sentinel {
            fn drop(&mut self) {
                let _ = self.0.try_send(());
            }
        }
        let node = fake_exec(move || {
            let sentinel = Sentinel(hung_up_tx.clone());
            let forever = futures::stream::unfold(sentinel, |s| async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((Ok::<_, Infallible>(Bytes::from(format!("{}\n", hi().to_wire()))), s))
            });
            Body::from_stream(forever)
        })
        .await;
        let req = ExecRequest { command: vec!["yes".into()], ..Default::default() };
        let mut rx = node.exec(&SandboxId::generate(), req).await.unwrap();
        assert_eq!(rx.recv().await, Some(hi()));
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), hung_up.recv())
            .await
            .expect("the agent's stream is dropped once nobody reads it");
    }
}
