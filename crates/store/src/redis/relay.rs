//! The change feed: every record write is published on `P:events`; the relay delivers it to [`Events`].

use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::{Client, RedisError, Value};
use tartarus_core::SandboxRecord;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{CONNECTION_TIMEOUT, RESPONSE_TIMEOUT};
use crate::Events;

/// Pause between attempts while Redis is unreachable.
const RETRY: Duration = Duration::from_millis(300);
/// How often a quiet subscription is checked with a `PING` (a silently dead connection would
/// otherwise wait forever).
const PING_EVERY: Duration = Duration::from_secs(10);

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("Redis refused or failed")]
    Redis(#[from] RedisError),
    #[error("Redis did not answer in time")]
    Timeout(#[from] tokio::time::error::Elapsed),
    #[error("the connection closed")]
    Closed,
}

/// Subscribes to `channel` and delivers every record into `events`, subscribing again after
/// any failure, until `alive`'s sender (the store) is dropped.
pub(super) async fn run(client: Client, channel: String, events: Events, mut alive: watch::Receiver<()>) {
    // Set while cut off, so an outage is reported once rather than every attempt.
    let mut down_since: Option<Instant> = None;
    loop {
        let ended = tokio::select! {
            _ = alive.changed() => return,
            ended = listen(&client, &channel, &events, &mut down_since) => ended,
        };
        if down_since.is_none() {
            warn!(channel = %channel, error = %ended, "change feed cut off; subscribing again");
            down_since = Some(Instant::now());
        }
        tokio::select! {
            _ = alive.changed() => return,
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// One subscription, until it fails.
async fn listen(client: &Client, channel: &str, events: &Events, down_since: &mut Option<Instant>) -> FeedError {
    let subscribed = async {
        let (mut sink, stream) = tokio::time::timeout(CONNECTION_TIMEOUT, client.get_async_pubsub()).await??.split();
        tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(channel)).await??;
        Ok::<_, FeedError>((sink, stream))
    };
    let (mut sink, mut stream) = match subscribed.await {
        Ok(s) => s,
        Err(e) => return e,
    };
    if let Some(since) = down_since.take() {
        info!(channel = %channel, down_for = ?since.elapsed(), "change feed back");
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                None => return FeedError::Closed,
                Some(msg) => match serde_json::from_slice::<SandboxRecord>(msg.get_payload_bytes()) {
                    Ok(rec) => events.deliver(rec),
                    Err(e) => warn!(channel = %channel, error = %e, "undecodable change on the feed; skipped"),
                },
            },
            _ = ping.tick() => {
                match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.into(),
                    Err(e) => return e.into(),
                }
            }
        }
    }
}
