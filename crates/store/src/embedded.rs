//! The embedded store: every seam on one `redb` database file, for a single-node realm.
//!
//! Each call is one redb transaction run on tokio's blocking pool; writes are durable when
//! the call returns (redb commits with fsync), so a killed realm loses nothing it acknowledged.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use tartarus_core::{Failure, NodeInfo, SandboxId, SandboxRecord, TemplateName, TemplateRecord};
use tokio::sync::Notify;

use crate::{
    Acheron, Cocytus, Delivery, FailureFilter, Hades, Mutation, SandboxFilter, SandboxStore, StoreError, TemplateStore,
};

const SANDBOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("sandboxes");
const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const ACHERON: TableDefinition<u64, &str> = TableDefinition::new("acheron");
/// Index of the sandboxes not yet ended: id → tenant.
const LIVE: TableDefinition<&str, &str> = TableDefinition::new("live");
/// Nodes taken out of placement by `tartarus node drain`.
const DRAINING: TableDefinition<&str, ()> = TableDefinition::new("draining");
/// Cocytus, in order of arrival.
const COCYTUS: TableDefinition<u64, &[u8]> = TableDefinition::new("cocytus");

/// Most failures Cocytus keeps; the oldest go first.
const COCYTUS_KEEP: u64 = 100_000;

/// All state in one redb file.
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Acheron entries handed out and not yet acknowledged (in memory on purpose: after a
    /// restart nothing is in flight, so unacknowledged entries are delivered again).
    in_flight: Arc<Mutex<BTreeSet<u64>>>,
    arrivals: Arc<Notify>,
}

fn db_err(context: &str) -> impl FnOnce(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Database { context: context.to_owned(), source: Box::new(e) }
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { key: key.to_owned(), source })
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("domain types always serialize")
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(|e| db_err("open")(e.into()))?;
        let tx = db.begin_write().map_err(|e| db_err("create tables")(e.into()))?;
        {
            for t in [SANDBOXES, TEMPLATES, NODES] {
                tx.open_table(t).map_err(|e| db_err("create tables")(e.into()))?;
            }
            tx.open_table(LIVE).map_err(|e| db_err("create tables")(e.into()))?;
            tx.open_table(ACHERON).map_err(|e| db_err("create tables")(e.into()))?;
            tx.open_table(DRAINING).map_err(|e| db_err("create tables")(e.into()))?;
            tx.open_table(COCYTUS).map_err(|e| db_err("create tables")(e.into()))?;
        }
        tx.commit().map_err(|e| db_err("create tables")(e.into()))?;
        Ok(Self { db: Arc::new(db), in_flight: Default::default(), arrivals: Default::default() })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db)).await.expect("store task panicked")
    }

    fn put(
        db: &Database,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
        must_be_new: bool,
    ) -> Result<(), StoreError> {
        let err = db_err("write");
        let tx = db.begin_write().map_err(|e| db_err("write")(e.into()))?;
        {
            let mut t = tx.open_table(table).map_err(|e| db_err("write")(e.into()))?;
            if must_be_new && t.get(key).map_err(|e| db_err("read")(e.into()))?.is_some() {
                return Err(StoreError::Exists(key.to_owned()));
            }
            t.insert(key, value).map_err(|e| db_err("write")(e.into()))?;
        }
        tx.commit().map_err(|e| err(e.into()))
    }

    fn get_one<T: DeserializeOwned>(
        db: &Database,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
        let t = tx.open_table(table).map_err(|e| db_err("read")(e.into()))?;
        let v = t.get(key).map_err(|e| db_err("read")(e.into()))?;
        v.map(|v| decode(key, v.value())).transpose()
    }

    fn all<T: DeserializeOwned>(db: &Database, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, StoreError> {
        let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
        let t = tx.open_table(table).map_err(|e| db_err("read")(e.into()))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| db_err("read")(e.into()))? {
            let (k, v) = row.map_err(|e| db_err("read")(e.into()))?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }
}

#[async_trait]
impl SandboxStore for EmbeddedStore {
    async fn insert(&self, rec: &SandboxRecord, max_live: Option<usize>) -> Result<(), StoreError> {
        let (key, bytes, tenant, live) =
            (rec.id.to_string(), encode(rec), rec.spec.tenant.clone(), !rec.state.is_terminal());
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("insert")(e.into()))?;
            {
                let mut t = tx.open_table(SANDBOXES).map_err(|e| db_err("insert")(e.into()))?;
                if t.get(key.as_str()).map_err(|e| db_err("insert")(e.into()))?.is_some() {
                    return Err(StoreError::Exists(key));
                }
                let mut l = tx.open_table(LIVE).map_err(|e| db_err("insert")(e.into()))?;
                if let Some(max) = max_live {
                    let n = live_of(&l, &tenant)?;
                    if n >= max {
                        return Err(StoreError::QuotaExceeded { tenant, live: n, max });
                    }
                }
                t.insert(key.as_str(), bytes.as_slice()).map_err(|e| db_err("insert")(e.into()))?;
                if live {
                    l.insert(key.as_str(), tenant.as_str()).map_err(|e| db_err("insert")(e.into()))?;
                }
            }
            tx.commit().map_err(|e| db_err("insert")(e.into()))
        })
        .await
    }

    async fn count_live(&self, tenant: &str) -> Result<usize, StoreError> {
        let tenant = tenant.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let t = tx.open_table(LIVE).map_err(|e| db_err("read")(e.into()))?;
            live_of(&t, &tenant)
        })
        .await
    }

    async fn get(&self, id: &SandboxId) -> Result<Option<SandboxRecord>, StoreError> {
        let key = id.to_string();
        self.blocking(move |db| Self::get_one(db, SANDBOXES, &key)).await
    }

    async fn list(&self, filter: &SandboxFilter) -> Result<Vec<SandboxRecord>, StoreError> {
        let filter = filter.clone();
        self.blocking(move |db| {
            let mut all: Vec<SandboxRecord> = Self::all(db, SANDBOXES)?;
            all.retain(|r| filter.matches(r));
            all.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
            if let Some(n) = filter.limit {
                all.truncate(n);
            }
            Ok(all)
        })
        .await
    }

    async fn update(&self, id: &SandboxId, mut change: Mutation) -> Result<Option<SandboxRecord>, StoreError> {
        let key = id.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("update")(e.into()))?;
            let rec = {
                let mut t = tx.open_table(SANDBOXES).map_err(|e| db_err("update")(e.into()))?;
                let current: Option<SandboxRecord> =
                    match t.get(key.as_str()).map_err(|e| db_err("update")(e.into()))? {
                        Some(v) => Some(decode(&key, v.value())?),
                        None => None,
                    };
                let Some(mut rec) = current else { return Ok(None) };
                if rec.state.is_terminal() {
                    return Ok(Some(rec));
                }
                change(&mut rec);
                t.insert(key.as_str(), encode(&rec).as_slice()).map_err(|e| db_err("update")(e.into()))?;
                if rec.state.is_terminal() {
                    let mut l = tx.open_table(LIVE).map_err(|e| db_err("update")(e.into()))?;
                    l.remove(key.as_str()).map_err(|e| db_err("update")(e.into()))?;
                    if let Some(f) = Failure::of(&rec) {
                        let mut c = tx.open_table(COCYTUS).map_err(|e| db_err("update")(e.into()))?;
                        append_failure(&mut c, &f)?;
                    }
                }
                rec
            };
            tx.commit().map_err(|e| db_err("update")(e.into()))?;
            Ok(Some(rec))
        })
        .await
    }
}

#[async_trait]
impl TemplateStore for EmbeddedStore {
    async fn put_template(&self, t: &TemplateRecord) -> Result<(), StoreError> {
        let (key, bytes) = (t.name.to_string(), encode(t));
        self.blocking(move |db| Self::put(db, TEMPLATES, &key, &bytes, false)).await
    }

    async fn template(&self, name: &TemplateName) -> Result<Option<TemplateRecord>, StoreError> {
        let key = name.to_string();
        self.blocking(move |db| Self::get_one(db, TEMPLATES, &key)).await
    }

    async fn templates(&self) -> Result<Vec<TemplateRecord>, StoreError> {
        self.blocking(|db| Self::all(db, TEMPLATES)).await
    }

    async fn remove_template(&self, name: &TemplateName) -> Result<bool, StoreError> {
        let key = name.to_string();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("remove template")(e.into()))?;
            let removed = {
                let mut t = tx.open_table(TEMPLATES).map_err(|e| db_err("remove template")(e.into()))?;
                let removed = t.remove(key.as_str()).map_err(|e| db_err("remove template")(e.into()))?.is_some();
                removed
            };
            tx.commit().map_err(|e| db_err("remove template")(e.into()))?;
            Ok(removed)
        })
        .await
    }
}

#[async_trait]
impl Hades for EmbeddedStore {
    async fn heartbeat(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let (key, bytes) = (node.name.clone(), encode(node));
        self.blocking(move |db| Self::put(db, NODES, &key, &bytes, false)).await
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, StoreError> {
        self.blocking(|db| {
            let mut nodes: Vec<NodeInfo> = Self::all(db, NODES)?;
            let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let d = tx.open_table(DRAINING).map_err(|e| db_err("read")(e.into()))?;
            for n in &mut nodes {
                n.draining = d.get(n.name.as_str()).map_err(|e| db_err("read")(e.into()))?.is_some();
            }
            Ok(nodes)
        })
        .await
    }

    async fn set_draining(&self, name: &str, draining: bool) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("drain")(e.into()))?;
            let known = {
                let nodes = tx.open_table(NODES).map_err(|e| db_err("drain")(e.into()))?;
                let known = nodes.get(name.as_str()).map_err(|e| db_err("drain")(e.into()))?.is_some();
                let mut d = tx.open_table(DRAINING).map_err(|e| db_err("drain")(e.into()))?;
                if known && draining {
                    d.insert(name.as_str(), ()).map_err(|e| db_err("drain")(e.into()))?;
                } else {
                    d.remove(name.as_str()).map_err(|e| db_err("drain")(e.into()))?;
                }
                known
            };
            tx.commit().map_err(|e| db_err("drain")(e.into()))?;
            Ok(known)
        })
        .await
    }
}

/// Live sandboxes of `tenant` in the live index.
fn live_of(t: &impl ReadableTable<&'static str, &'static str>, tenant: &str) -> Result<usize, StoreError> {
    let mut n = 0;
    for row in t.iter().map_err(|e| db_err("read")(e.into()))? {
        let (_, v) = row.map_err(|e| db_err("read")(e.into()))?;
        n += usize::from(v.value() == tenant);
    }
    Ok(n)
}

/// Appends to Cocytus, dropping the oldest entry beyond [`COCYTUS_KEEP`].
fn append_failure(c: &mut redb::Table<u64, &[u8]>, f: &Failure) -> Result<(), StoreError> {
    let last = c.last().map_err(|e| db_err("cocytus")(e.into()))?.map(|(k, _)| k.value());
    let seq = last.map_or(1, |l| l + 1);
    c.insert(seq, encode(f).as_slice()).map_err(|e| db_err("cocytus")(e.into()))?;
    if seq > COCYTUS_KEEP {
        c.remove(seq - COCYTUS_KEEP).map_err(|e| db_err("cocytus")(e.into()))?;
    }
    Ok(())
}

#[async_trait]
impl Cocytus for EmbeddedStore {
    async fn report(&self, failure: &Failure) -> Result<(), StoreError> {
        let f = failure.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("cocytus")(e.into()))?;
            {
                let mut c = tx.open_table(COCYTUS).map_err(|e| db_err("cocytus")(e.into()))?;
                append_failure(&mut c, &f)?;
            }
            tx.commit().map_err(|e| db_err("cocytus")(e.into()))
        })
        .await
    }

    async fn failures(&self, filter: &FailureFilter) -> Result<Vec<Failure>, StoreError> {
        let filter = filter.clone();
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let c = tx.open_table(COCYTUS).map_err(|e| db_err("read")(e.into()))?;
            let mut out = Vec::new();
            for row in c.iter().map_err(|e| db_err("read")(e.into()))?.rev() {
                let (k, v) = row.map_err(|e| db_err("read")(e.into()))?;
                let f: Failure = decode(&format!("cocytus/{}", k.value()), v.value())?;
                if filter.matches(&f) {
                    out.push(f);
                    if filter.limit.is_some_and(|n| out.len() >= n) {
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Acheron for EmbeddedStore {
    async fn push(&self, id: &SandboxId) -> Result<String, StoreError> {
        let id = id.to_string();
        let seq = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(|e| db_err("enqueue")(e.into()))?;
                let seq = {
                    let mut t = tx.open_table(ACHERON).map_err(|e| db_err("enqueue")(e.into()))?;
                    let last = t.last().map_err(|e| db_err("enqueue")(e.into()))?.map(|(k, _)| k.value());
                    let seq = last.map_or(1, |l| l + 1);
                    t.insert(seq, id.as_str()).map_err(|e| db_err("enqueue")(e.into()))?;
                    seq
                };
                tx.commit().map_err(|e| db_err("enqueue")(e.into()))?;
                Ok(seq)
            })
            .await?;
        self.arrivals.notify_one();
        Ok(seq.to_string())
    }

    async fn pull(&self) -> Result<Delivery, StoreError> {
        loop {
            let arrival = self.arrivals.notified();
            tokio::pin!(arrival);
            arrival.as_mut().enable();
            let in_flight = self.in_flight.clone();
            let next = self
                .blocking(move |db| {
                    let tx = db.begin_read().map_err(|e| db_err("dequeue")(e.into()))?;
                    let t = tx.open_table(ACHERON).map_err(|e| db_err("dequeue")(e.into()))?;
                    let mut taken = in_flight.lock().expect("lock");
                    for row in t.iter().map_err(|e| db_err("dequeue")(e.into()))? {
                        let (k, v) = row.map_err(|e| db_err("dequeue")(e.into()))?;
                        if taken.insert(k.value()) {
                            let id = SandboxId::parse(v.value()).map_err(|e| StoreError::Corrupt {
                                key: format!("acheron/{}", k.value()),
                                source: serde::de::Error::custom(e),
                            })?;
                            return Ok(Some(Delivery { receipt: k.value().to_string(), id }));
                        }
                    }
                    Ok(None)
                })
                .await?;
            match next {
                Some(d) => return Ok(d),
                None => arrival.await,
            }
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), StoreError> {
        let seq = parse_receipt(receipt)?;
        let in_flight = self.in_flight.clone();
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(|e| db_err("ack")(e.into()))?;
            tx.open_table(ACHERON)
                .and_then(|mut t| t.remove(seq).map(|_| ()).map_err(Into::into))
                .map_err(|e| db_err("ack")(e.into()))?;
            tx.commit().map_err(|e| db_err("ack")(e.into()))?;
            in_flight.lock().expect("lock").remove(&seq);
            Ok(())
        })
        .await
    }

    async fn nack(&self, receipt: &str) -> Result<(), StoreError> {
        let seq = parse_receipt(receipt)?;
        self.in_flight.lock().expect("lock").remove(&seq);
        self.arrivals.notify_one();
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let t = tx.open_table(ACHERON).map_err(|e| db_err("read")(e.into()))?;
            t.len().map_err(|e| db_err("read")(e.into()))
        })
        .await
    }

    async fn entries(&self) -> Result<Vec<SandboxId>, StoreError> {
        self.blocking(|db| {
            let tx = db.begin_read().map_err(|e| db_err("read")(e.into()))?;
            let t = tx.open_table(ACHERON).map_err(|e| db_err("read")(e.into()))?;
            let mut out = Vec::new();
            for row in t.iter().map_err(|e| db_err("read")(e.into()))? {
                let (_, v) = row.map_err(|e| db_err("read")(e.into()))?;
                out.extend(SandboxId::parse(v.value()).ok());
            }
            Ok(out)
        })
        .await
    }
}

fn parse_receipt(receipt: &str) -> Result<u64, StoreError> {
    receipt.parse().map_err(|_| StoreError::Corrupt {
        key: format!("acheron/{receipt}"),
        source: serde::de::Error::custom("not a receipt of this queue"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn queue_survives_reopen_and_redelivers_unacked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let (a, b) = (SandboxId::generate(), SandboxId::generate());
        {
            let s = EmbeddedStore::open(&path).unwrap();
            s.push(&a).await.unwrap();
            s.push(&b).await.unwrap();
            let d = s.pull().await.unwrap();
            assert_eq!(d.id, a);
            s.ack(&d.receipt).await.unwrap();
            assert_eq!(s.pull().await.unwrap().id, b); // taken, never acknowledged
        }
        let s = EmbeddedStore::open(&path).unwrap();
        assert_eq!(s.depth().await.unwrap(), 1);
        let d = s.pull().await.unwrap();
        assert_eq!(d.id, b);
        s.nack(&d.receipt).await.unwrap();
        assert_eq!(s.pull().await.unwrap(), d, "a nacked entry is delivered again");
    }

    #[tokio::test]
    async fn live_index_follows_records_to_their_end() {
        use tartarus_core::{SandboxState, SoulRequest, Verdict};
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        let spec = SoulRequest { template: "busybox".into(), ..Default::default() }.validate("acme").unwrap();
        let verdict = Verdict { principal: "p".into(), rulings: vec![], judged_at: chrono::Utc::now() };
        let a = SandboxRecord::admitted(SandboxId::generate(), spec.clone(), verdict.clone());
        let b = SandboxRecord::admitted(SandboxId::generate(), spec, verdict);
        s.insert(&a, Some(2)).await.unwrap();
        s.insert(&b, Some(2)).await.unwrap();
        assert!(matches!(s.insert(&a, None).await, Err(StoreError::Exists(_))));
        let c = SandboxRecord::admitted(SandboxId::generate(), a.spec.clone(), a.verdict.clone());
        assert!(matches!(s.insert(&c, Some(2)).await, Err(StoreError::QuotaExceeded { live: 2, max: 2, .. })));
        assert_eq!((s.count_live("acme").await.unwrap(), s.count_live("other").await.unwrap()), (2, 0));
        s.update(&a.id, Box::new(|r| r.state = SandboxState::Exited)).await.unwrap();
        assert_eq!(s.count_live("acme").await.unwrap(), 1);
        s.insert(&c, Some(2)).await.unwrap();
        // Ending as a failure lands in Cocytus in the same step; exiting does not.
        s.update(
            &c.id,
            Box::new(|r| {
                r.state = SandboxState::Failed;
                r.error = Some("boom".into());
            }),
        )
        .await
        .unwrap();
        let failures = s.failures(&FailureFilter::default()).await.unwrap();
        assert_eq!(failures.len(), 1);
        assert_eq!((failures[0].sandbox.clone(), failures[0].kind.as_str()), (c.id.clone(), "failed"));
        // A terminal record never changes again.
        let after = s.update(&a.id, Box::new(|r| r.state = SandboxState::Running)).await.unwrap().unwrap();
        assert_eq!(after.state, SandboxState::Exited);
        assert_eq!(s.count_live("acme").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn pull_waits_for_push() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(EmbeddedStore::open(&dir.path().join("s.redb")).unwrap());
        let id = SandboxId::generate();
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.pull().await.unwrap() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        s.push(&id).await.unwrap();
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().id, id);
    }
}
