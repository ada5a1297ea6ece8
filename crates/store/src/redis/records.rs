//! Sandbox records, templates, Hades and Cocytus as Redis keys, sets and a stream.

use std::collections::HashSet;

use async_trait::async_trait;
use redis::Value;
use tartarus_core::{Failure, NodeInfo, SandboxId, SandboxRecord, TemplateName, TemplateRecord};
use tracing::{debug, instrument, warn};

use super::{db, decode, encode, entries, scripts, transient, RedisStore, COCYTUS_KEEP, PAGE};
use crate::{Cocytus, FailureFilter, Hades, Mutation, SandboxFilter, SandboxStore, StoreError, TemplateStore};

/// How often an update is tried again when another writer changed the record in between
/// (each try reads the record anew; only a hot record in a large fleet comes near this).
const CAS_TRIES: usize = 1000;

impl RedisStore {
    /// The values of `keys` that exist, decoded, in order.
    async fn values<T: serde::de::DeserializeOwned>(&self, keys: &[String]) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(PAGE) {
            let found: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(chunk), "read").await?;
            for (key, bytes) in chunk.iter().zip(found) {
                if let Some(bytes) = bytes {
                    out.push(decode(key, &bytes)?);
                }
            }
        }
        Ok(out)
    }

    async fn members(&self, set: &str) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(set), "read").await?;
        names.sort();
        Ok(names)
    }
}

#[async_trait]
impl SandboxStore for RedisStore {
    #[instrument(skip_all, fields(sandbox = %rec.id))]
    async fn insert(&self, rec: &SandboxRecord, max_live: Option<usize>) -> Result<(), StoreError> {
        let (id, key, bytes) = (rec.id.as_str(), self.keys.sandbox(rec.id.as_str()), encode(rec));
        let mut insert = scripts::INSERT.prepare_invoke();
        insert
            .key(&key)
            .key(&self.keys.sandboxes)
            .key(self.keys.live(&rec.spec.tenant))
            .arg(&bytes)
            .arg(id)
            .arg(rec.created_at.timestamp_millis())
            .arg(u8::from(!rec.state.is_terminal()))
            .arg(max_live.map(|m| m.to_string()).unwrap_or_default())
            .arg(&self.keys.events);
        let context = format!("insert {id}");
        let (code, live): (i64, i64) = match insert.invoke_async(&mut self.conn.clone()).await {
            Ok(reply) => reply,
            Err(e) if transient(&e) => {
                // It may have been stored before the connection failed: the key says.
                match self.query::<Option<Vec<u8>>>(redis::cmd("GET").arg(&key), "read").await? {
                    Some(stored) if stored == bytes => (0, 0),
                    Some(_) => (1, 0),
                    None => insert.invoke_async(&mut self.conn.clone()).await.map_err(db(context))?,
                }
            }
            Err(e) => return Err(db(context)(e)),
        };
        match (code, max_live) {
            (0, _) => Ok(()),
            (2, Some(max)) => Err(StoreError::QuotaExceeded {
                tenant: rec.spec.tenant.clone(),
                live: usize::try_from(live).unwrap_or(max),
                max,
            }),
            _ => Err(StoreError::Exists(id.to_owned())),
        }
    }

    async fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let key = self.keys.sandbox(id.as_str());
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key), "read").await?;
        bytes.map(|b| decode(&key, &b)).transpose()
    }

    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>, StoreError> {
        // Pages of the creation index, newest first. With a limit, reading stops once a page
        // starts before the millisecond of the last record kept: nothing older can make the cut.
        let mut out: Vec<SandboxRecord> = Vec::new();
        let mut seen = HashSet::new();
        let mut start = 0;
        loop {
            let page: Vec<(String, f64)> = self
                .query(
                    redis::cmd("ZREVRANGE")
                        .arg(&self.keys.sandboxes)
                        .arg(start)
                        .arg(start + PAGE - 1)
                        .arg("WITHSCORES"),
                    "list sandboxes",
                )
                .await?;
            let Some(&(_, newest)) = page.first() else { break };
            if let Some(n) = filter.limit {
                sort_newest_first(&mut out);
                if n == 0 || out.get(n - 1).is_some_and(|r| newest < r.created_at.timestamp_millis() as f64) {
                    break;
                }
            }
            let keys: Vec<String> =
                page.iter().filter(|(id, _)| seen.insert(id.clone())).map(|(id, _)| self.keys.sandbox(id)).collect();
            let recs: Vec<SandboxRecord> = self.values(&keys).await?;
            out.extend(recs.into_iter().filter(|r| filter.matches(r)));
            if page.len() < PAGE {
                break;
            }
            start += PAGE;
        }
        sort_newest_first(&mut out);
        if let Some(n) = filter.limit {
            out.truncate(n);
        }
        Ok(out)
    }

    async fn count_live(&self, tenant: &str) -> Result<usize, StoreError> {
        self.query(redis::cmd("SCARD").arg(self.keys.live(tenant)), "count live sandboxes").await
    }

    #[instrument(skip_all, fields(sandbox = %id))]
    async fn update(&self, id: &SandboxId, mut change: Mutation) -> Result<Option<SandboxRecord>, StoreError> {
        let key = self.keys.sandbox(id.as_str());
        for _ in 0..CAS_TRIES {
            let Some(old) = self.query::<Option<Vec<u8>>>(redis::cmd("GET").arg(&key), "read").await? else {
                return Ok(None);
            };
            let mut rec: SandboxRecord = decode(&key, &old)?;
            if rec.state.is_terminal() {
                return Ok(Some(rec));
            }
            let live = self.keys.live(&rec.spec.tenant);
            change(&mut rec);
            let terminal = rec.state.is_terminal();
            let failure = terminal.then(|| Failure::of(&rec)).flatten().map(|f| encode(&f)).unwrap_or_default();
            let new = encode(&rec);
            let mut cas = scripts::UPDATE.prepare_invoke();
            cas.key(&key)
                .key(live)
                .key(&self.keys.cocytus)
                .arg(&old)
                .arg(&new)
                .arg(id.as_str())
                .arg(u8::from(terminal))
                .arg(failure)
                .arg(&self.keys.events)
                .arg(COCYTUS_KEEP);
            let written: i64 = match cas.invoke_async(&mut self.conn.clone()).await {
                Ok(written) => written,
                Err(e) if transient(&e) => {
                    // It may have run before the connection failed: the record says. (Running
                    // the change again on top of its own result would apply it twice.)
                    let now: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key), "read").await?;
                    match now {
                        Some(now) if now == new => 1,
                        Some(now) if now == old => 0,
                        _ => return Err(db(format!("update {id}"))(e)),
                    }
                }
                Err(e) => return Err(db(format!("update {id}"))(e)),
            };
            if written == 1 {
                return Ok(Some(rec));
            }
            debug!("record changed meanwhile; applying the change again");
        }
        Err(StoreError::Database {
            context: format!("update {id}"),
            source: format!("the record kept changing during {CAS_TRIES} tries").into(),
        })
    }
}

/// The order of listings: newest first, ties by id (as the embedded store).
fn sort_newest_first(recs: &mut [SandboxRecord]) {
    recs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
}

#[async_trait]
impl TemplateStore for RedisStore {
    async fn put_template(&self, t: &TemplateRecord) -> Result<(), StoreError> {
        let name = t.name.as_str();
        let put = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.template(name))
            .arg(encode(t))
            .ignore()
            .cmd("SADD")
            .arg(&self.keys.templates)
            .arg(name)
            .ignore()
            .clone();
        let put = &put;
        self.repeatable(&format!("store template {name}"), |mut c| async move { put.query_async::<()>(&mut c).await })
            .await
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateRecord>, StoreError> {
        let key = self.keys.template(name.as_str());
        let bytes: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(&key), "read").await?;
        bytes.map(|b| decode(&key, &b)).transpose()
    }

    async fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        let names = self.members(&self.keys.templates).await?;
        let keys: Vec<String> = names.iter().map(|n| self.keys.template(n)).collect();
        self.values(&keys).await
    }

    async fn remove_template(&self, name: &TemplateName) -> Result<bool, StoreError> {
        let name = name.as_str();
        let (deleted, _): (i64, i64) = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(self.keys.template(name))
            .cmd("SREM")
            .arg(&self.keys.templates)
            .arg(name)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db(format!("remove template {name}")))?;
        Ok(deleted > 0)
    }
}

#[async_trait]
impl Hades for RedisStore {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError> {
        // The flag lives in its own set, owned by `set_draining`: a heartbeat cannot undo a drain.
        let stored = NodeInfo { draining: false, ..node.clone() };
        let beat = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(self.keys.node(&node.name))
            .arg(encode(&stored))
            .ignore()
            .cmd("SADD")
            .arg(&self.keys.nodes)
            .arg(&node.name)
            .ignore()
            .clone();
        let beat = &beat;
        self.repeatable(
            &format!("heartbeat of {}", node.name),
            |mut c| async move { beat.query_async::<()>(&mut c).await },
        )
        .await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        let names = self.members(&self.keys.nodes).await?;
        let keys: Vec<String> = names.iter().map(|n| self.keys.node(n)).collect();
        let mut nodes: Vec<NodeInfo> = self.values(&keys).await?;
        let draining: HashSet<String> = self.members(&self.keys.draining).await?.into_iter().collect();
        for n in &mut nodes {
            n.draining = draining.contains(&n.name);
        }
        Ok(nodes)
    }

    async fn set_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError> {
        let mut drain = scripts::DRAIN.prepare_invoke();
        drain.key(&self.keys.nodes).key(&self.keys.draining).arg(name).arg(u8::from(draining));
        let drain = &drain;
        let known: i64 =
            self.repeatable(&format!("drain {name}"), |mut c| async move { drain.invoke_async(&mut c).await }).await?;
        Ok(known == 1)
    }
}

#[async_trait]
impl Cocytus for RedisStore {
    async fn report(&self, failure: &Failure) -> Result<(), StoreError> {
        // Not repeated on a connection failure: it may have been appended already.
        redis::cmd("XADD")
            .arg(&self.keys.cocytus)
            .arg("MAXLEN")
            .arg("~")
            .arg(COCYTUS_KEEP)
            .arg("*")
            .arg("f")
            .arg(encode(failure))
            .query_async::<Value>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(db("report a failure"))
    }

    async fn failures(&self, filter: &FailureFilter) -> Result<Vec<Failure>, StoreError> {
        let mut out = Vec::new();
        let mut end = "+".to_owned();
        loop {
            let page: Value = self
                .query(
                    redis::cmd("XREVRANGE").arg(&self.keys.cocytus).arg(&end).arg("-").arg("COUNT").arg(PAGE),
                    "read failures",
                )
                .await?;
            let page = entries(&page);
            for e in &page {
                let Some(bytes) = e.field("f") else {
                    warn!(entry = %e.id, "Cocytus entry without a failure; skipped");
                    continue;
                };
                let f: Failure = decode(&format!("{}/{}", self.keys.cocytus, e.id), bytes)?;
                if filter.matches(&f) {
                    out.push(f);
                    if filter.limit.is_some_and(|n| out.len() >= n) {
                        return Ok(out);
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE => end = format!("({}", last.id),
                _ => return Ok(out),
            }
        }
    }
}
