//! Acheron on a Redis Stream read through the consumer group `moirai`, with held entries renewed.
//!
//! An entry read through the group is pending for this consumer until acknowledged. Entries
//! this process has read come back to it in three ways: given back by [`Acheron::nack`] (kept in
//! memory and read again by id), read again from its own pending list once after connecting
//! (what the process held before a restart, when its consumer name is stable), and claimed with
//! `XAUTOCLAIM` once they sat idle for `claim_after` (what a dead consumer held). So that
//! `XAUTOCLAIM` elsewhere does not take what a live process is still working on, a task resets
//! the idle time of every entry held here every `claim_after / 3`.
//!
//! The blocking read (`XREADGROUP … BLOCK`) has a connection of its own: on the shared,
//! multiplexed connection it would hold up every other command for as long as it blocks.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::StreamInfoConsumersReply;
use redis::{Cmd, RedisError, Value};
use tartarus_core::SandboxId;
use tracing::{debug, info, warn};

use super::{db, entries, read_entries, scripts, text, transient, Entry, RedisStore, GROUP, PAGE};
use crate::{Acheron, Delivery, StoreError};

/// Entries asked for per read.
const BATCH: usize = 100;
/// How long the blocking read waits for new entries before looking at the other sources again.
const BLOCK_MS: u64 = 1000;
/// Pages of `XAUTOCLAIM` per round (the rest waits for the next round).
const CLAIM_PAGES: usize = 10;
/// Consumers holding nothing and idle this long are removed from the group (the default
/// consumer names carry a pid, so every restart leaves one behind).
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// How often idle consumers are looked for.
const FORGET_EVERY: Duration = Duration::from_secs(600);

/// Acheron's side of the store: its blocking connection and what this process holds.
pub(super) struct Queue {
    /// Only for `XREADGROUP … BLOCK`.
    blocking: ConnectionManager,
    /// One puller fetches from Redis at a time (others wait, then find the buffer filled).
    fetch: tokio::sync::Mutex<Fetch>,
    /// Never held across an await: `ack`/`nack` and the renewals must not wait for a pull.
    local: Mutex<Local>,
}

impl Queue {
    pub(super) fn new(blocking: ConnectionManager) -> Self {
        Self { blocking, fetch: Default::default(), local: Default::default() }
    }
}

#[derive(Default)]
struct Fetch {
    /// This consumer's pending entries were read once since connecting.
    recovered: bool,
    last_claim: Option<Instant>,
    last_forget: Option<Instant>,
}

/// Entries pending for this consumer that this process knows of.
#[derive(Default)]
struct Local {
    /// Read, not yet handed out.
    ready: VecDeque<Delivery>,
    /// Handed out by `pull`, not yet acknowledged or given back.
    held: HashSet<String>,
    /// Given back by `nack`, to be handed out again.
    retry: VecDeque<String>,
}

impl Local {
    fn owns(&self, receipt: &str) -> bool {
        self.held.contains(receipt)
            || self.retry.iter().any(|r| r == receipt)
            || self.ready.iter().any(|d| d.receipt == receipt)
    }

    fn owned(&self) -> Vec<String> {
        let mut all: Vec<String> = self.held.iter().cloned().collect();
        all.extend(self.retry.iter().cloned());
        all.extend(self.ready.iter().map(|d| d.receipt.clone()));
        all
    }

    fn forget(&mut self, receipts: &[String]) {
        for r in receipts {
            self.held.remove(r);
        }
        self.retry.retain(|r| !receipts.contains(r));
        self.ready.retain(|d| !receipts.contains(&d.receipt));
    }
}

/// Creates Acheron's stream and group unless they exist.
pub(super) async fn ensure_group(conn: &mut ConnectionManager, key: &str) -> Result<(), RedisError> {
    let created =
        redis::cmd("XGROUP").arg("CREATE").arg(key).arg(GROUP).arg("0").arg("MKSTREAM").query_async::<()>(conn).await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Whether a command failed because the group is gone (Redis lost the stream, or the key was
/// deleted — which also wakes a blocked reader with `UNBLOCKED`).
fn lost_group(e: &RedisError) -> bool {
    matches!(e.code(), Some("NOGROUP" | "UNBLOCKED")) || e.to_string().contains("NOGROUP")
}

/// The sandbox an entry names (`None`: deleted entry or no sandbox id).
fn sandbox_of(e: &Entry) -> Option<SandboxId> {
    let id = std::str::from_utf8(e.field("id")?).ok()?;
    SandboxId::parse(id).ok()
}

fn check_receipt(receipt: &str) -> Result<(), StoreError> {
    let valid = receipt
        .split_once('-')
        .is_some_and(|(ms, seq)| [ms, seq].iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));
    if valid {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            key: format!("acheron/{receipt}"),
            source: serde::de::Error::custom("not a receipt of this queue"),
        })
    }
}

impl RedisStore {
    /// Runs a command of the group. If the group is gone, makes it again and runs the command
    /// once more; if the connection failed under it, runs it once more too — each is safe to
    /// repeat: entries a lost reply delivered stay pending here unseen, and `XAUTOCLAIM` (here
    /// or elsewhere) takes them back after `claim_after`.
    async fn grouped(&self, conn: &ConnectionManager, cmd: &Cmd, context: &str) -> Result<Value, StoreError> {
        let mut c = conn.clone();
        let (mut regrouped, mut repeated) = (false, false);
        loop {
            match cmd.query_async::<Value>(&mut c).await {
                Err(e) if lost_group(&e) && !regrouped => {
                    regrouped = true;
                    self.regroup().await?;
                }
                Err(e) if transient(&e) && !repeated => {
                    repeated = true;
                    debug!(error = %e, context, "Redis connection failed; trying once more");
                }
                other => return other.map_err(db(context)),
            }
        }
    }

    async fn regroup(&self) -> Result<(), StoreError> {
        warn!(stream = %self.keys.acheron, group = GROUP, "Acheron's consumer group is gone; creating it again");
        self.repeatable("create Acheron's consumer group", |mut c| {
            let key = self.keys.acheron.clone();
            async move { ensure_group(&mut c, &key).await }
        })
        .await
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.queue.local.lock().expect("Acheron state lock")
    }

    /// Files entries just read (all now pending for this consumer) as ready, unless already
    /// known here. Deleted entries are dropped from the group; entries naming no sandbox are
    /// acknowledged and deleted. Returns how many became ready.
    async fn take(&self, read: Vec<Entry>) -> Result<usize, StoreError> {
        let (mut gone, mut bad, mut taken) = (Vec::new(), Vec::new(), 0);
        {
            let mut local = self.local();
            for e in read {
                match (e.fields.is_some(), sandbox_of(&e)) {
                    (false, _) => gone.push(e.id),
                    (true, None) => bad.push(e.id),
                    (true, Some(id)) if !local.owns(&e.id) => {
                        local.ready.push_back(Delivery { receipt: e.id, id });
                        taken += 1;
                    }
                    (true, Some(_)) => {}
                }
            }
        }
        if !gone.is_empty() {
            debug!(entries = gone.len(), "dropping deleted Acheron entries from the group");
            self.grouped(&self.conn, redis::cmd("XACK").arg(&self.keys.acheron).arg(GROUP).arg(&gone), "acknowledge")
                .await?;
        }
        for receipt in bad {
            warn!(entry = %receipt, "Acheron entry names no sandbox; dropping it");
            self.remove(&receipt).await?;
        }
        Ok(taken)
    }

    /// Acknowledges and deletes an entry.
    async fn remove(&self, receipt: &str) -> Result<(), StoreError> {
        let mut ack = scripts::ACK.prepare_invoke();
        ack.key(&self.keys.acheron).arg(GROUP).arg(receipt);
        let ack = &ack;
        self.repeatable(&format!("acknowledge Acheron entry {receipt}"), |mut c| async move {
            ack.invoke_async::<i64>(&mut c).await
        })
        .await?;
        self.local().forget(&[receipt.to_owned()]);
        Ok(())
    }

    /// The next entry already known here: given back first, then read.
    async fn next_local(&self) -> Result<Option<Delivery>, StoreError> {
        loop {
            let receipt = {
                let mut guard = self.local();
                let local = &mut *guard;
                match local.retry.pop_front() {
                    Some(r) => r,
                    None => {
                        let next = local.ready.pop_front();
                        if let Some(d) = &next {
                            local.held.insert(d.receipt.clone());
                        }
                        return Ok(next);
                    }
                }
            };
            let cmd = redis::cmd("XRANGE").arg(&self.keys.acheron).arg(&receipt).arg(&receipt).clone();
            let read: Value = match self.query(&cmd, "read Acheron").await {
                Ok(v) => v,
                Err(e) => {
                    self.local().retry.push_front(receipt.clone());
                    return Err(e);
                }
            };
            match entries(&read).first().map(sandbox_of) {
                Some(Some(id)) => {
                    self.local().held.insert(receipt.clone());
                    return Ok(Some(Delivery { receipt, id }));
                }
                Some(None) => {
                    warn!(entry = %receipt, "Acheron entry names no sandbox; dropping it");
                    self.remove(&receipt).await?;
                }
                None => {
                    debug!(entry = %receipt, "an entry given back is gone");
                    self.take(vec![Entry { id: receipt, fields: None }]).await?;
                }
            }
        }
    }

    /// Reads this consumer's pending entries: what the process held before a restart.
    async fn recover(&self) -> Result<(), StoreError> {
        let mut after = "0".to_owned();
        let mut taken = 0;
        loop {
            let cmd = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.cfg.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("STREAMS")
                .arg(&self.keys.acheron)
                .arg(&after)
                .clone();
            let read = read_entries(&self.grouped(&self.conn, &cmd, "read Acheron entries held before").await?);
            let Some(last) = read.last() else { break };
            after = last.id.clone();
            taken += self.take(read).await?;
        }
        if taken > 0 {
            info!(entries = taken, consumer = %self.cfg.consumer, "taking back Acheron entries held before a restart");
        }
        Ok(())
    }

    /// Claims entries idle for `claim_after` (their holder stopped renewing them).
    async fn autoclaim(&self) -> Result<usize, StoreError> {
        let idle_ms = u64::try_from(self.cfg.claim_after.as_millis()).unwrap_or(u64::MAX);
        let (mut start, mut taken) = ("0-0".to_owned(), 0);
        for _ in 0..CLAIM_PAGES {
            let cmd = redis::cmd("XAUTOCLAIM")
                .arg(&self.keys.acheron)
                .arg(GROUP)
                .arg(&self.cfg.consumer)
                .arg(idle_ms)
                .arg(&start)
                .arg("COUNT")
                .arg(BATCH)
                .clone();
            let reply = self.grouped(&self.conn, &cmd, "reclaim Acheron entries").await?;
            let Value::Array(parts) = &reply else { break };
            let mut read = parts.get(1).map(entries).unwrap_or_default();
            if let Some(Value::Array(deleted)) = parts.get(2) {
                read.extend(deleted.iter().filter_map(text).map(|id| Entry { id, fields: None }));
            }
            taken += self.take(read).await?;
            match parts.first().and_then(text) {
                Some(next) if next != "0-0" => start = next,
                _ => break,
            }
        }
        if taken > 0 {
            info!(entries = taken, "reclaimed Acheron entries their holder stopped renewing");
        }
        Ok(taken)
    }

    /// Removes consumers that hold nothing and have not read for long (dead processes).
    async fn forget_idle_consumers(&self) -> Result<(), StoreError> {
        let reply: StreamInfoConsumersReply = self
            .query(redis::cmd("XINFO").arg("CONSUMERS").arg(&self.keys.acheron).arg(GROUP), "list Acheron consumers")
            .await?;
        let idle: Vec<String> = reply
            .consumers
            .into_iter()
            .filter(|c| c.pending == 0 && c.name != self.cfg.consumer)
            .filter(|c| Duration::from_millis(c.idle as u64) >= FORGET_CONSUMERS_AFTER)
            .map(|c| c.name)
            .collect();
        if !idle.is_empty() {
            let mut forget = scripts::FORGET_CONSUMERS.prepare_invoke();
            forget.key(&self.keys.acheron).arg(GROUP).arg(&idle);
            let forget = &forget;
            let n: i64 = self
                .repeatable("remove idle Acheron consumers", |mut c| async move { forget.invoke_async(&mut c).await })
                .await?;
            debug!(consumers = n, "removed idle Acheron consumers");
        }
        Ok(())
    }

    /// Resets the idle time of everything held here; lets go of what is no longer ours.
    pub(super) async fn renew_held(&self) -> Result<(), StoreError> {
        let owned = self.local().owned();
        for chunk in owned.chunks(PAGE) {
            let mut renew = scripts::RENEW.prepare_invoke();
            renew.key(&self.keys.acheron).arg(GROUP).arg(&self.cfg.consumer).arg(chunk);
            let renew = &renew;
            let renewed =
                self.repeatable("renew Acheron entries", |mut c| async move {
                    renew.invoke_async::<Vec<String>>(&mut c).await
                })
                .await;
            let lost = match renewed {
                Ok(lost) => lost,
                Err(StoreError::Database { source, .. })
                    if source.downcast_ref::<RedisError>().is_some_and(lost_group) =>
                {
                    // A new group has nothing pending: what was held here is no longer held.
                    self.regroup().await?;
                    chunk.to_vec()
                }
                Err(e) => return Err(e),
            };
            if !lost.is_empty() {
                warn!(entries = lost.len(), "Acheron entries held here were taken over or vanished; letting them go");
                self.local().forget(&lost);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Acheron for RedisStore {
    async fn push(&self, id: &SandboxId) -> Result<String, StoreError> {
        // A push to a lost stream creates it again; the group follows at the next read.
        redis::cmd("XADD")
            .arg(&self.keys.acheron)
            .arg("*")
            .arg("id")
            .arg(id.as_str())
            .query_async(&mut self.conn.clone())
            .await
            .map_err(db(format!("enqueue {id}")))
    }

    async fn pull(&self) -> Result<Delivery, StoreError> {
        let mut fetch = self.queue.fetch.lock().await;
        loop {
            if let Some(d) = self.next_local().await? {
                return Ok(d);
            }
            if !fetch.recovered {
                self.recover().await?;
                fetch.recovered = true;
                continue;
            }
            if fetch.last_claim.is_none_or(|t| t.elapsed() >= self.cfg.claim_after / 2) {
                fetch.last_claim = Some(Instant::now());
                if fetch.last_forget.is_none_or(|t| t.elapsed() >= FORGET_EVERY) {
                    fetch.last_forget = Some(Instant::now());
                    if let Err(e) = self.forget_idle_consumers().await {
                        debug!(error = %e, "could not look for idle Acheron consumers");
                    }
                }
                if self.autoclaim().await? > 0 {
                    continue;
                }
            }
            let cmd = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.cfg.consumer)
                .arg("COUNT")
                .arg(BATCH)
                .arg("BLOCK")
                .arg(BLOCK_MS)
                .arg("STREAMS")
                .arg(&self.keys.acheron)
                .arg(">")
                .clone();
            let read = self.grouped(&self.queue.blocking, &cmd, "read Acheron").await?;
            self.take(read_entries(&read)).await?;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), StoreError> {
        check_receipt(receipt)?;
        self.remove(receipt).await
    }

    async fn nack(&self, receipt: &str) -> Result<(), StoreError> {
        check_receipt(receipt)?;
        let mut local = self.local();
        if local.held.remove(receipt) {
            local.retry.push_back(receipt.to_owned());
        }
        Ok(())
    }

    async fn depth(&self) -> Result<u64, StoreError> {
        self.query(redis::cmd("XLEN").arg(&self.keys.acheron), "read Acheron").await
    }

    async fn entries(&self) -> Result<Vec<SandboxId>, StoreError> {
        let (mut out, mut start) = (Vec::new(), "-".to_owned());
        loop {
            let page: Value = self
                .query(
                    redis::cmd("XRANGE").arg(&self.keys.acheron).arg(&start).arg("+").arg("COUNT").arg(PAGE),
                    "read Acheron",
                )
                .await?;
            let page = entries(&page);
            out.extend(page.iter().filter_map(sandbox_of));
            match page.last() {
                Some(last) if page.len() == PAGE => start = format!("({}", last.id),
                _ => return Ok(out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_are_stream_ids() {
        assert!(check_receipt("1700000000000-0").is_ok());
        for bad in ["", "12", "-1", "1-", "a-1", "1-2-3", "+"] {
            assert!(check_receipt(bad).is_err(), "{bad}");
        }
    }
}
