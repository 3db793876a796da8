//! `limit_conn` shared through Redis: requests in progress per key, counted for every weir
//! instance on one Redis, with leases so that a dead instance cannot hold slots forever.
//!
//! # Leases
//! A zone's key is one sorted set in Redis (`weir:lc:ZONE:KEY`). A request in progress is
//! one member of it: `INSTANCE:N` (a random id of this process and a counter), scored by
//! the moment its lease ends, in Redis's own clock (`TIME`, milliseconds; instances need
//! not agree on time). Taking slots is one atomic script ([`ACQUIRE_SCRIPT`]) over all the
//! request's zones: in each set it drops the members whose lease has ended, counts the
//! rest against the zone's `max`, and, when no enforcing zone is full, adds the request's
//! member to every set with room and makes sure the set lives at least one lease. Giving
//! them back is a `ZREM` per set, sent when the request's guard ([`Lease`]) is dropped:
//! fire-and-forget, on a task spawned on the current tokio runtime (a `Drop` never waits
//! on the network), bounded by a timeout.
//!
//! A lease lasts [`RedisOptions::lease`](crate::RedisOptions::lease) (30 s by default).
//! An instance that dies (crash, kill -9, lost network) stops renewing and releasing: its
//! slots are freed when their leases end, at most one lease later. That is the price of a
//! crash, and the reason for a lease at all.
//!
//! # Renewal: one task per instance
//! Requests that last longer than a lease keep their slots because one background task
//! per instance renews every live lease of the instance every third of a lease, in
//! batches of [`RENEW_BATCH`] leases per script ([`RENEW_SCRIPT`]). One task, not one per
//! request: nearly every request ends long before its first renewal would be due, so a
//! per-request timer would cost a task and a timer wheel entry per request for nothing,
//! while the one task costs an insert and a remove in a map per request and one round trip
//! per batch every 10 s whatever the traffic. The task ends when the store is dropped.
//!
//! A renewal only extends a member that is still there and not yet expired (`ZADD` after
//! a `ZSCORE`), so a renewal racing a release never brings a released slot back, and a
//! lease that expired while Redis was unreachable from this instance (someone else may
//! have its slot now) is not revived either: the request goes on without a slot. After a
//! Redis restart (the sets are lost) requests in progress hold no slot either; the count
//! is right again once they are done.
//!
//! # Failures
//! Taking slots has the limit_req check's bounded timeout, and its failures are the same
//! [`StoreError`]s, which [`crate::Limits`] turns into `on_store_error`. A request whose
//! script timed out, or whose future was dropped while the script was on its way (the
//! client left), may still have been given slots by Redis: its guard was armed before the
//! script was sent, and releases them (a `ZREM` of a member that is not there does
//! nothing). A release or renewal that fails is not retried: the slot is freed when its
//! lease ends.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;

use crate::redis_store::{store_error, RedisStore, StoreError};

/// Takes the slots of one request. KEYS: one lease set per zone; ARGV: the lease in ms,
/// the request's member, then `max` and `dry` (0 or 1) per zone. Answers
/// `{taken, room_1, ..., room_k}`: `room_i` is 1 when zone i had a free slot; `taken` is 1
/// when the member was added (to every zone with room: no enforcing zone was full), else
/// 0 and zone k, the last one answered, is the first enforcing zone that was full.
pub const ACQUIRE_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local member = ARGV[2]
local out = {0}
for i = 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now))
  local max = tonumber(ARGV[1 + 2 * i])
  if redis.call('ZCARD', KEYS[i]) < max then
    out[i + 1] = 1
  else
    out[i + 1] = 0
    if ARGV[2 + 2 * i] ~= '1' then return out end
  end
end
out[1] = 1
local score = string.format('%.0f', now + lease)
for i = 1, #KEYS do
  if out[i + 1] == 1 then
    redis.call('ZADD', KEYS[i], score, member)
    if redis.call('PTTL', KEYS[i]) < lease then
      redis.call('PEXPIRE', KEYS[i], lease)
    end
  end
end
return out
"#;

/// Renews leases. KEYS: lease sets; ARGV: the lease in ms, then the member for each key.
/// Extends only members still there and not expired. Answers how many it extended.
pub const RENEW_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local score = string.format('%.0f', now + lease)
local n = 0
for i = 1, #KEYS do
  local s = redis.call('ZSCORE', KEYS[i], ARGV[i + 1])
  if s and tonumber(s) > now then
    redis.call('ZADD', KEYS[i], score, ARGV[i + 1])
    if redis.call('PTTL', KEYS[i]) < lease then
      redis.call('PEXPIRE', KEYS[i], lease)
    end
    n = n + 1
  end
end
return n
"#;

/// Leases renewed by one script call.
pub const RENEW_BATCH: usize = 256;

/// How long a release (`ZREM`) may take before it is given up (the lease then ends it).
const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

/// One zone of a request, as [`RedisStore::acquire`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct ConnCheck<'a> {
    /// The zone's name.
    pub zone: &'a str,
    /// The request's key in it (not empty).
    pub key: &'a str,
    /// Requests in progress allowed per key.
    pub max: u64,
    /// A dry-run zone: counted (a slot is taken when there is room) but never refuses.
    pub dry_run: bool,
}

/// What [`RedisStore::acquire`] got.
#[derive(Debug)]
pub struct Acquired {
    /// The slots (`None`: refused, or no zone had room).
    pub lease: Option<Lease>,
    /// Per zone, in order, up to the refusing one: whether it had a free slot.
    pub room: Vec<bool>,
    /// An enforcing zone was full (the last of `room`): no slot was taken.
    pub refused: bool,
}

/// Reads [`ACQUIRE_SCRIPT`]'s answer for zones whose dry-run flags are `dry`: `(taken,
/// room)`. Anything else is [`StoreError::Reply`], never a panic.
pub fn parse_acquire_reply(v: &Value, dry: &[bool]) -> Result<(bool, Vec<bool>), StoreError> {
    let bad = || StoreError::Reply(format!("{v:?}").chars().take(200).collect());
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let mut flags = Vec::with_capacity(items.len());
    for it in items {
        match it {
            Value::Int(0) => flags.push(false),
            Value::Int(1) => flags.push(true),
            _ => return Err(bad()),
        }
    }
    let Some((&taken, room)) = flags.split_first() else {
        return Err(bad());
    };
    let ok = if taken {
        // every zone answered; a full one must be a dry run
        room.len() == dry.len() && room.iter().zip(dry).all(|(r, d)| *r || *d)
    } else {
        // answered up to the first full enforcing zone, and only dry runs were full before
        !room.is_empty()
            && room.len() <= dry.len()
            && !room[room.len() - 1]
            && !dry[room.len() - 1]
            && room[..room.len() - 1]
                .iter()
                .zip(dry)
                .all(|(r, d)| *r || *d)
    };
    if !ok {
        return Err(bad());
    }
    Ok((taken, room.to_vec()))
}

/// A live lease as its renewal needs it: the lease sets it is in, and its member.
type LiveLease = (Arc<[String]>, Arc<str>);

/// The live leases of one instance (one [`RedisStore`]), which its renewal task renews.
pub(crate) struct Leases {
    instance: String,
    next: AtomicU64,
    live: Mutex<HashMap<u64, LiveLease>>,
    renewing: AtomicBool,
    acquire: redis::Script,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = std::hash::RandomState::new().hash_one((std::process::id(), seed));
        Leases {
            instance: format!("{id:016x}"),
            next: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
            renewing: AtomicBool::new(false),
            acquire: redis::Script::new(ACQUIRE_SCRIPT),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, LiveLease>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases this instance holds now.
    pub(crate) fn len(&self) -> usize {
        self.live().len()
    }
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases")
            .field("instance", &self.instance)
            .field("live", &self.len())
            .finish()
    }
}

/// Loads both scripts (start-up warm-up, so the first request does not pay for it).
pub(crate) async fn load_scripts(c: &mut ConnectionManager) -> redis::RedisResult<()> {
    redis::Script::new(ACQUIRE_SCRIPT).load_async(c).await?;
    redis::Script::new(RENEW_SCRIPT).load_async(c).await?;
    Ok(())
}

/// A request's slots in Redis: dropping it gives them back (in the background) and stops
/// their renewal.
pub struct Lease {
    id: u64,
    keys: Arc<[String]>,
    member: Arc<str>,
    leases: Weak<Leases>,
    slot: Arc<Mutex<Option<ConnectionManager>>>,
    armed: bool,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("member", &self.member)
            .field("keys", &self.keys)
            .finish()
    }
}

impl Lease {
    /// The Redis member of this request's slots (`INSTANCE:N`).
    pub fn member(&self) -> &str {
        &self.member
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(l) = self.leases.upgrade() {
            l.live().remove(&self.id);
        }
        if !self.armed {
            return;
        }
        // Never wait here: hand the ZREMs to the runtime. No runtime or no connection: the
        // lease ends them.
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(mut conn) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return;
        };
        let mut pipe = redis::pipe();
        for k in self.keys.iter() {
            pipe.zrem(k, &*self.member).ignore();
        }
        rt.spawn(async move {
            let r = tokio::time::timeout(RELEASE_TIMEOUT, pipe.query_async::<()>(&mut conn)).await;
            if !matches!(r, Ok(Ok(()))) {
                tracing::debug!(
                    "limit_conn: a release did not reach Redis; its lease will free the slot"
                );
            }
        });
    }
}

/// Resets the "renewal task running" flag when the task ends (the store was dropped, or
/// its runtime shut down), so that a later lease starts a new one.
struct Renewing(Weak<Leases>);

impl Drop for Renewing {
    fn drop(&mut self) {
        if let Some(l) = self.0.upgrade() {
            l.renewing.store(false, Ordering::Release);
        }
    }
}

/// The instance's renewal task: every `every`, renews every live lease. Ends when the
/// store is dropped (bounded by the store's life).
async fn renew_all(
    leases: Weak<Leases>,
    slot: Arc<Mutex<Option<ConnectionManager>>>,
    lease: Duration,
    every: Duration,
) {
    let _flag = Renewing(leases.clone());
    let script = redis::Script::new(RENEW_SCRIPT);
    let lease_ms = lease.as_millis() as u64;
    loop {
        tokio::time::sleep(every).await;
        let Some(l) = leases.upgrade() else { return };
        let batch: Vec<LiveLease> = l.live().values().cloned().collect();
        drop(l);
        if batch.is_empty() {
            continue;
        }
        let Some(mut conn) = slot.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            continue;
        };
        for chunk in batch.chunks(RENEW_BATCH) {
            let mut inv = script.prepare_invoke();
            inv.arg(lease_ms);
            for (keys, member) in chunk {
                for k in keys.iter() {
                    inv.key(k.as_str());
                    inv.arg(&**member);
                }
            }
            match tokio::time::timeout(every, inv.invoke_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "limit_conn: lease renewal failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!("limit_conn: lease renewal timed out");
                    break;
                }
            }
        }
    }
}

impl RedisStore {
    /// The Redis key of a `limit_conn` zone's lease set for `key`.
    pub fn lease_key(&self, zone: &str, key: &str) -> String {
        let p = &self.opts.conn_prefix;
        let mut k = String::with_capacity(p.len() + zone.len() + 1 + key.len());
        k.push_str(p);
        k.push_str(zone);
        k.push(':');
        k.push_str(key);
        k
    }

    /// Live leases of this instance (requests holding shared `limit_conn` slots).
    pub fn live_leases(&self) -> usize {
        self.leases.len()
    }

    /// Takes one slot in each of `zones` for one request ([`ACQUIRE_SCRIPT`]), bounded by
    /// the timeout. Cancel-safe: dropping the future releases whatever Redis may have
    /// given.
    pub async fn acquire(&self, zones: &[ConnCheck<'_>]) -> Result<Acquired, StoreError> {
        if zones.is_empty() {
            return Ok(Acquired {
                lease: None,
                room: Vec::new(),
                refused: false,
            });
        }
        let mut conn = self.connection()?;
        let lease_ms = self.opts.lease.as_millis().max(1) as u64;
        let id = self.leases.next.fetch_add(1, Ordering::Relaxed);
        let member: Arc<str> = format!("{}:{id:x}", self.leases.instance).into();
        let keys: Vec<String> = zones
            .iter()
            .map(|z| self.lease_key(z.zone, z.key))
            .collect();
        let mut inv = self.leases.acquire.prepare_invoke();
        inv.arg(lease_ms).arg(&*member);
        for (z, k) in zones.iter().zip(&keys) {
            inv.key(k.as_str());
            inv.arg(z.max).arg(u8::from(z.dry_run));
        }
        // armed before the script is sent: an error, a timeout or a dropped future
        // releases what Redis may have given
        let mut lease = Lease {
            id,
            keys: keys.into(),
            member,
            leases: Arc::downgrade(&self.leases),
            slot: self.slot.clone(),
            armed: true,
        };
        let reply = tokio::time::timeout(self.opts.timeout, inv.invoke_async::<Value>(&mut conn))
            .await
            .map_err(|_| StoreError::Timeout(self.opts.timeout))?
            .map_err(store_error)?;
        let dry: Vec<bool> = zones.iter().map(|z| z.dry_run).collect();
        let (taken, room) = parse_acquire_reply(&reply, &dry)?;
        if !taken || !room.iter().any(|r| *r) {
            lease.armed = false;
            return Ok(Acquired {
                lease: None,
                refused: !taken,
                room,
            });
        }
        lease.keys = lease
            .keys
            .iter()
            .zip(&room)
            .filter(|(_, r)| **r)
            .map(|(k, _)| k.clone())
            .collect();
        self.leases
            .live()
            .insert(id, (lease.keys.clone(), lease.member.clone()));
        self.start_renewing();
        Ok(Acquired {
            lease: Some(lease),
            room,
            refused: false,
        })
    }

    /// Starts the instance's renewal task unless it runs.
    fn start_renewing(&self) {
        if self.leases.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.leases.renewing.store(false, Ordering::Release);
            return;
        };
        let every = (self.opts.lease / 3).max(Duration::from_millis(1));
        rt.spawn(renew_all(
            Arc::downgrade(&self.leases),
            self.slot.clone(),
            self.opts.lease,
            every,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|i| Value::Int(*i)).collect())
    }

    #[test]
    fn acquire_replies_are_read_and_checked() {
        let (e, d) = (false, true);
        // taken in both zones
        assert_eq!(
            parse_acquire_reply(&ints(&[1, 1, 1]), &[e, e]).unwrap(),
            (true, vec![true, true])
        );
        // the dry-run zone was full, the enforcing one had room
        assert_eq!(
            parse_acquire_reply(&ints(&[1, 0, 1]), &[d, e]).unwrap(),
            (true, vec![false, true])
        );
        // the second (enforcing) zone was full: refused there, the third never looked at
        assert_eq!(
            parse_acquire_reply(&ints(&[0, 1, 0]), &[e, e, e]).unwrap(),
            (false, vec![true, false])
        );
        assert_eq!(
            parse_acquire_reply(&ints(&[0, 0, 0]), &[d, e]).unwrap(),
            (false, vec![false, false])
        );
        let ee: &[bool] = &[e, e];
        for (garbage, dry) in [
            (Value::Okay, ee),
            (Value::Nil, ee),
            (Value::Int(1), ee),
            (ints(&[]), ee),
            (ints(&[1]), ee),
            (ints(&[1, 1]), ee),               // one zone answered, two asked
            (ints(&[1, 0, 1]), ee),            // an enforcing zone full, yet taken
            (ints(&[0, 1, 1]), ee),            // refused, but no zone was full
            (ints(&[0, 0]), &[d]),             // refused by a dry-run zone
            (ints(&[0, 0, 1, 0]), &[e, e, e]), // an enforcing zone full before the refusing one
            (ints(&[2, 1, 1]), ee),            // not a flag
            (ints(&[1, 1, 1, 1, 1]), ee),      // more zones than asked
            (Value::SimpleString("OK".into()), ee),
        ] {
            assert!(
                matches!(
                    parse_acquire_reply(&garbage, dry),
                    Err(StoreError::Reply(_))
                ),
                "{garbage:?}"
            );
        }
    }
}
