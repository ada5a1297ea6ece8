//! The Redis store: records, templates, Hades, Acheron (a Redis Stream) and Cocytus on one Redis.
//!
//! Layout:
//! - this file: configuration, connecting, key names, error mapping and stream-reply parsing;
//! - `records`: sandbox records, templates, Hades and Cocytus. Writes touching several keys are
//!   atomic (`MULTI`, or a Lua script when they must check first); updates are compare-and-set
//!   in a script, as `WATCH` cannot be used on a shared, multiplexed connection;
//! - `acheron`: the queue, a stream read through the consumer group `moirai`, with the entries
//!   a process holds renewed so that no other process takes them;
//! - `relay`: the change feed (every write is published) into [`Events`];
//! - `scripts`: the Lua scripts.
//!
//! Keys (`P` is [`RedisConfig::prefix`]): `P:sb:{id}` record JSON, `P:sandboxes` (zset by
//! creation time), `P:live:{tenant}` (set of live ids), `P:tpl:{name}` and `P:templates`,
//! `P:node:{name}`, `P:nodes` and `P:draining`, the streams `P:acheron` and `P:cocytus`, and the
//! channel `P:events`.
//!
//! Connections reconnect by themselves (a `ConnectionManager`) and every command times out, so a
//! Redis restart shows up as errors from the calls made meanwhile, never as a hang or a panic;
//! afterwards everything works again without anyone stepping in. A background task pings every
//! second so that an idle connection broken by a restart is replaced before a caller needs it,
//! and commands safe to repeat are run once more when the connection failed under them.

mod acheron;
mod records;
mod relay;
mod scripts;

use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, FromRedisValue, RedisError, RedisResult, Value};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tracing::{debug, info, warn};

use crate::{Events, StoreError};

/// Acheron's consumer group: every Moirai of a realm reads the queue through it.
const GROUP: &str = "moirai";
/// How long one command may take before it fails (a Redis restart must not hang callers).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection attempt may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`RedisStore::connect`] keeps trying (Redis may be starting alongside us).
const CONNECT_FOR: Duration = Duration::from_secs(10);
/// Most failures Cocytus keeps (approximately: the stream is trimmed with `MAXLEN ~`).
const COCYTUS_KEEP: usize = 100_000;
/// Keys read per `MGET`, entries per stream range read.
const PAGE: usize = 500;
/// How often an otherwise idle connection is checked, so that one broken by a Redis restart is
/// replaced before a caller's command finds it broken.
const KEEPALIVE: Duration = Duration::from_secs(1);

/// How to reach Redis and who this process is in the Acheron consumer group.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key (default `tartarus`), so realms can share one Redis.
    pub prefix: String,
    /// This process's consumer name in Acheron's group (stable across restarts).
    pub consumer: String,
    /// Entries a consumer holds without renewing for this long are reclaimed by others.
    pub claim_after: Duration,
}

impl RedisConfig {
    /// The defaults for `url`: prefix `tartarus`, entries reclaimed after 30 s, and the consumer
    /// named `{hostname}-{pid}`.
    ///
    /// The pid makes two processes on one host distinct consumers (sharing a name, each would
    /// renew and re-read the other's entries); the price is that a restarted process does not
    /// find what its predecessor held — others (or itself) reclaim it after `claim_after`. Set
    /// `consumer` to a name stable across restarts to get those entries back at once.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "tartarus".into(),
            consumer: default_consumer(),
            claim_after: Duration::from_secs(30),
        }
    }
}

fn default_consumer() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tartarus".into());
    format!("{host}-{}", std::process::id())
}

/// What `tartarus doctor` checks of a Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis_version`.
    pub version: String,
    /// `appendonly yes`.
    pub appendonly: bool,
    /// `appendfsync`: `always`, `everysec` or `no`.
    pub appendfsync: String,
    /// `maxmemory-policy`.
    pub maxmemory_policy: String,
}

/// Every seam on one Redis.
pub struct RedisStore {
    cfg: RedisConfig,
    client: Client,
    keys: Keys,
    /// Every command but Acheron's blocking read.
    conn: ConnectionManager,
    queue: acheron::Queue,
    /// Dropped with the store: background tasks watch it to end.
    alive: watch::Sender<()>,
}

impl RedisStore {
    /// Connects (retrying briefly) and makes sure Acheron's stream and group exist.
    pub async fn connect(cfg: RedisConfig) -> Result<Arc<Self>, StoreError> {
        let shown = redacted(&cfg.url);
        let client = Client::open(cfg.url.as_str()).map_err(db(format!("invalid Redis URL {shown}")))?;
        let keys = Keys::new(&cfg.prefix);
        let deadline = tokio::time::Instant::now() + CONNECT_FOR;
        let (conn, blocking) = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let err: Box<dyn std::error::Error + Send + Sync> =
                match tokio::time::timeout(left, open(&client, &keys.acheron)).await {
                    Ok(Ok(conns)) => break conns,
                    Ok(Err(e)) => Box::new(e),
                    Err(e) => Box::new(e),
                };
            if tokio::time::Instant::now() + Duration::from_millis(250) >= deadline {
                return Err(StoreError::Database { context: format!("cannot reach Redis at {shown}"), source: err });
            }
            debug!(url = %shown, error = %err, "Redis not reachable yet; retrying");
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let store = Arc::new(Self {
            queue: acheron::Queue::new(blocking),
            cfg,
            client,
            keys,
            conn,
            alive: watch::channel(()).0,
        });
        tokio::spawn(maintain(Arc::downgrade(&store), store.alive.subscribe()));
        info!(url = %shown, prefix = %store.cfg.prefix, consumer = %store.cfg.consumer, "connected to Redis");
        Ok(store)
    }

    /// Delivers every record change published by any process of the realm into `events`.
    ///
    /// Runs on a task of its own (call it within a Tokio runtime) until the store is dropped; it
    /// resubscribes by itself after a Redis restart. Changes published while it was cut off
    /// are not delivered: waiters look at the records themselves now and then for that.
    pub fn relay(self: &Arc<Self>, events: Events) {
        tokio::spawn(relay::run(self.client.clone(), self.keys.events.clone(), events, self.alive.subscribe()));
    }

    /// The server settings the realm depends on.
    pub async fn settings(&self) -> Result<RedisSettings, StoreError> {
        let info: String = self.query(redis::cmd("INFO").arg("server"), "read Redis server info").await?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        let appendonly = self.config_get("appendonly").await? == "yes";
        let appendfsync = self.config_get("appendfsync").await?;
        let maxmemory_policy = self.config_get("maxmemory-policy").await?;
        Ok(RedisSettings { version, appendonly, appendfsync, maxmemory_policy })
    }

    async fn config_get(&self, name: &str) -> Result<String, StoreError> {
        let v: std::collections::HashMap<String, String> =
            self.query(redis::cmd("CONFIG").arg("GET").arg(name), &format!("read Redis setting {name}")).await?;
        Ok(v.get(name).cloned().unwrap_or_default())
    }

    /// Runs a command that is safe to repeat (see [`RedisStore::repeatable`]).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd, context: &str) -> Result<T, StoreError> {
        self.repeatable(context, |mut c| async move { cmd.query_async(&mut c).await }).await
    }

    /// Runs something safe to repeat, once more if the connection failed under it: the first
    /// command after a Redis restart can find the old connection broken, and the manager has a
    /// new one for the second.
    async fn repeatable<T, F, Fut>(&self, context: &str, run: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        match run(self.conn.clone()).await {
            Err(e) if transient(&e) => {
                debug!(error = %e, context, "Redis connection failed; trying once more");
                run(self.conn.clone()).await
            }
            other => other,
        }
        .map_err(db(context))
    }
}

/// Until the store is dropped: renews the Acheron entries held here, and keeps the connection
/// checked.
async fn maintain(store: Weak<RedisStore>, mut alive: watch::Receiver<()>) {
    let Some(renew_every) = store.upgrade().map(|s| (s.cfg.claim_after / 3).max(Duration::from_millis(50))) else {
        return;
    };
    let mut renew = tokio::time::interval(renew_every);
    let mut ping = tokio::time::interval(KEEPALIVE);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let renewing = tokio::select! {
            _ = alive.changed() => return,
            _ = renew.tick() => true,
            _ = ping.tick() => false,
        };
        let Some(store) = store.upgrade() else { return };
        if renewing {
            if let Err(e) = store.renew_held().await {
                warn!(error = %e, "could not renew the Acheron entries held here");
            }
        } else if let Err(e) = redis::cmd("PING").query_async::<Value>(&mut store.conn.clone()).await {
            debug!(error = %e, "Redis did not answer PING");
        }
    }
}

/// Whether a command failed on the way (connection broken or timed out) rather than being
/// refused by Redis: it may or may not have run.
fn transient(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// The main connection and the one reserved for Acheron's blocking read, with the group made.
async fn open(client: &Client, acheron: &str) -> Result<(ConnectionManager, ConnectionManager), RedisError> {
    let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
    let blocking = ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
    acheron::ensure_group(&mut conn, acheron).await?;
    Ok((conn, blocking))
}

fn manager_config() -> ConnectionManagerConfig {
    // Few, short reconnection retries: a call made while Redis is down fails within seconds
    // (and the next call tries again) rather than waiting out a long backoff.
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECTION_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(3)
        .set_max_delay(Duration::from_secs(1))
}

/// Key names under one prefix.
struct Keys {
    prefix: String,
    sandboxes: String,
    templates: String,
    nodes: String,
    draining: String,
    acheron: String,
    cocytus: String,
    events: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let k = |name: &str| format!("{prefix}:{name}");
        Self {
            prefix: prefix.to_owned(),
            sandboxes: k("sandboxes"),
            templates: k("templates"),
            nodes: k("nodes"),
            draining: k("draining"),
            acheron: k("acheron"),
            cocytus: k("cocytus"),
            events: k("events"),
        }
    }

    fn sandbox(&self, id: &str) -> String {
        format!("{}:sb:{id}", self.prefix)
    }

    fn live(&self, tenant: &str) -> String {
        format!("{}:live:{tenant}", self.prefix)
    }

    fn template(&self, name: &str) -> String {
        format!("{}:tpl:{name}", self.prefix)
    }

    fn node(&self, name: &str) -> String {
        format!("{}:node:{name}", self.prefix)
    }
}

/// Maps a Redis error to [`StoreError::Database`] saying what was being done.
fn db(context: impl Into<String>) -> impl FnOnce(RedisError) -> StoreError {
    let context = context.into();
    move |e| StoreError::Database { context, source: Box::new(e) }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("domain types always serialize")
}

/// The URL with its password masked, for messages and logs.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    match url[scheme_end..].find('@').map(|i| scheme_end + i) {
        Some(at) => match url[scheme_end..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// One stream entry as read back: its id and its fields (`None`: the entry was deleted, which
/// reads of a consumer's pending entries report).
#[derive(Debug, PartialEq)]
struct Entry {
    id: String,
    fields: Option<Vec<(Vec<u8>, Vec<u8>)>>,
}

impl Entry {
    fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields.as_ref()?.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice())
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// The entries of an `XRANGE`/`XREVRANGE` reply (or of the entry list inside other replies).
fn entries(v: &Value) -> Vec<Entry> {
    let Value::Array(items) = v else { return Vec::new() };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(parts) = item else { return None };
            let id = text(parts.first()?)?;
            let fields = match parts.get(1) {
                Some(Value::Array(kv)) => {
                    Some(kv.chunks(2).filter_map(|p| Some((bytes(p.first()?)?, bytes(p.get(1)?)?))).collect())
                }
                Some(Value::Map(kv)) => Some(kv.iter().filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?))).collect()),
                _ => None,
            };
            Some(Entry { id, fields })
        })
        .collect()
}

/// The entries of an `XREADGROUP` reply for one stream (nil: nothing arrived).
fn read_entries(v: &Value) -> Vec<Entry> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .flat_map(|s| match s {
                Value::Array(kv) => kv.get(1).map(entries).unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked() {
        assert_eq!(redacted("redis://:s3cret@db:6379/0"), "redis://:***@db:6379/0");
        assert_eq!(redacted("redis://me:s3cret@db"), "redis://me:***@db");
        assert_eq!(redacted("redis://db:6379"), "redis://db:6379");
        assert_eq!(redacted("rediss://me@db"), "rediss://me@db");
    }

    #[test]
    fn stream_replies_parse_with_deleted_entries() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let reply = Value::Array(vec![Value::Array(vec![
            b("tartarus:acheron"),
            Value::Array(vec![
                Value::Array(vec![b("1-0"), Value::Array(vec![b("id"), b("sb-0123456789abcdef")])]),
                Value::Array(vec![b("2-0"), Value::Nil]),
            ]),
        ])]);
        let got = read_entries(&reply);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].field("id"), Some(&b"sb-0123456789abcdef"[..]));
        assert_eq!(got[1], Entry { id: "2-0".into(), fields: None });
        assert!(read_entries(&Value::Nil).is_empty());
    }
}
