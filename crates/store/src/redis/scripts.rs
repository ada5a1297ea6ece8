//! The Lua scripts that make multi-key writes atomic (a script runs alone on the server).
//!
//! Each is sent by hash (`EVALSHA`) and loaded again when Redis answers `NOSCRIPT`, which it
//! does after a restart: the script cache is not persisted.

use std::sync::LazyLock;

use redis::Script;

/// Inserts a record unless its id exists or its tenant is at quota; publishes it.
///
/// KEYS: record, `sandboxes` zset, tenant's live set. ARGV: record JSON, id, created (ms),
/// `1` if live, quota (`""`: none), events channel.
/// Returns `{0, 0}` stored, `{1, 0}` the id exists, `{2, live}` the tenant is at quota.
pub(super) static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0} end
if ARGV[5] ~= '' then
  local live = redis.call('SCARD', KEYS[3])
  if live >= tonumber(ARGV[5]) then return {2, live} end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if ARGV[4] == '1' then redis.call('SADD', KEYS[3], ARGV[2]) end
redis.call('PUBLISH', ARGV[6], ARGV[1])
return {0, 0}
",
    )
});

/// Replaces a record if it still holds what the caller read (compare-and-set); when the new
/// record is terminal, drops it from the live set and appends its failure (if any) to Cocytus.
///
/// KEYS: record, tenant's live set, Cocytus. ARGV: old JSON, new JSON, id, `1` if terminal,
/// failure JSON (`""`: none), events channel, Cocytus length kept.
/// Returns 1 written, 0 the record changed meanwhile (read again and retry).
pub(super) static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[4] == '1' then
  redis.call('SREM', KEYS[2], ARGV[3])
  if ARGV[5] ~= '' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'f', ARGV[5])
  end
end
redis.call('PUBLISH', ARGV[6], ARGV[2])
return 1
",
    )
});

/// Sets or clears a node's draining flag if the node is known.
///
/// KEYS: `nodes`, `draining`. ARGV: name, `1` to drain. Returns 1 if the node is known.
pub(super) static DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
if ARGV[2] == '1' then redis.call('SADD', KEYS[2], ARGV[1]) else redis.call('SREM', KEYS[2], ARGV[1]) end
return 1
",
    )
});

/// Acknowledges and deletes an Acheron entry. The acknowledgement may fail only because the
/// group is gone (then nothing is pending anyway); the entry is deleted regardless.
///
/// KEYS: Acheron. ARGV: group, entry id.
pub(super) static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
return redis.call('XDEL', KEYS[1], ARGV[2])
",
    )
});

/// Resets the idle time of entries still pending for this consumer (so `XAUTOCLAIM` elsewhere
/// leaves them alone); returns those no longer pending for it (taken by another consumer after
/// all, or gone). Checking the owner first matters: `XCLAIM` would take an entry back from a
/// consumer that already reclaimed it, and both would then work on it.
///
/// KEYS: Acheron. ARGV: group, consumer, entry ids…
pub(super) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local claim, lost = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}, {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if #p == 0 then table.insert(lost, ARGV[i]) else table.insert(claim, ARGV[i]) end
end
if #claim > 5 then
  table.insert(claim, 'JUSTID')
  redis.call(unpack(claim))
end
return lost
",
    )
});

/// Deletes consumers of the group that hold nothing (checked here, atomically: deleting a
/// consumer drops what it holds).
///
/// KEYS: Acheron. ARGV: group, consumer names… Returns how many were deleted.
pub(super) static FORGET_CONSUMERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for i = 2, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[i])
  if #p == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
",
    )
});
