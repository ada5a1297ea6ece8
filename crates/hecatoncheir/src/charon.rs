//! Charon — the ferry to exposed ports: carries one HTTP request to a port a sandbox exposes
//! (its contract's `ingress`), from the node it runs on, and brings the answer back.
//!
//! Olympus receives `/v1/sandboxes/{id}/ports/{port}/…`, authenticates it, strips the caller's
//! credentials, and hands it to the sandbox's node, which connects to the sandbox's address on
//! its bridge (Styx lets the host reach exposed ports and nothing else). No host port is ever
//! opened: a sandbox is reachable only through the realm's API. Bodies are buffered, up to
//! [`MAX_BODY`] each way.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use bytes::Bytes;
use tartarus_core::{SandboxId, SandboxState};

use crate::agent::{AgentError, Hecatoncheir};

/// Largest request or response body carried, bytes.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// How long the sandbox has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A request to carry.
#[derive(Debug, Clone)]
pub struct Crossing {
    /// Method.
    pub method: Method,
    /// Path and query inside the sandbox's server, starting with `/`.
    pub path: String,
    /// Headers (hop-by-hop ones and credentials are dropped before sending).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// The sandbox's answer.
#[derive(Debug, Clone)]
pub struct Landing {
    /// Status.
    pub status: StatusCode,
    /// Headers (hop-by-hop ones dropped).
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1), and the
/// caller's credentials for the realm, which are not the sandbox's business.
const DROPPED: [&str; 11] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
];

/// `headers` without hop-by-hop headers and credentials.
pub fn passable(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (k, v) in headers {
        if !DROPPED.contains(&k.as_str()) {
            out.append(k.clone(), v.clone());
        }
    }
    out
}

/// The header an agent marks its own refusals with, so a proxied 404 is not mistaken for one.
pub fn refusal_header() -> HeaderName {
    HeaderName::from_static("x-tartarus-refusal")
}

impl Hecatoncheir {
    /// Carries `c` to port `port` of sandbox `id`, which must run here and expose the port.
    pub async fn ferry(&self, id: &SandboxId, port: u16, c: Crossing) -> Result<Landing, AgentError> {
        let rec = self.get(id).await?;
        self.live_or_err(&rec, &[SandboxState::Running])?;
        if !rec.spec.network.ingress.contains(&port) {
            let exposed: Vec<String> = rec.spec.network.ingress.iter().map(u16::to_string).collect();
            return Err(AgentError::NotExposed(format!(
                "sandbox {id} does not expose port {port} (exposed: {})",
                if exposed.is_empty() { "none".to_owned() } else { exposed.join(", ") }
            )));
        }
        let address = rec
            .network
            .as_ref()
            .map(|n| n.address.clone())
            .ok_or_else(|| AgentError::NotExposed(format!("sandbox {id} has no network address on this node")))?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(ANSWER_WITHIN)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AgentError::Ferry(format!("cannot make an HTTP client: {e}")))?;
        let url = format!("http://{address}:{port}{}", c.path);
        let resp =
            client.request(c.method, &url).headers(passable(&c.headers)).body(c.body).send().await.map_err(|e| {
                AgentError::Ferry(format!("sandbox {id} port {port}: {}", crate::agent::error_chain(&e)))
            })?;
        let status = resp.status();
        let headers = passable(resp.headers());
        if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(AgentError::Ferry(format!(
                "sandbox {id} port {port}: the answer is larger than {MAX_BODY} bytes"
            )));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| AgentError::Ferry(format!("sandbox {id} port {port}: reading the answer: {e}")))?;
        if body.len() > MAX_BODY {
            return Err(AgentError::Ferry(format!(
                "sandbox {id} port {port}: the answer is larger than {MAX_BODY} bytes"
            )));
        }
        Ok(Landing { status, headers, body })
    }
}
