//! The Redis tier: entries shared by every weir instance on one Redis, and the channel
//! that carries purges from one instance to the others.
//!
//! Instances read through memory, then disk, then Redis, and fill every tier on the way
//! back; an entry one instance stored is a hit for all of them. A purge removes the entries
//! from Redis ([`RedisTier::purge`]) and is published ([`RedisTier::publish`]) so that the
//! other instances drop them from their local tiers ([`RedisTier::subscribe`]).
//!
//! # Key layout
//! - `weir:cache:e:<tier key>`: an entry's record ([`Stored::encode`], checksummed), `SET`
//!   with `PX` = [`Stored::time_to_keep`]: Redis forgets it when it is of no use even stale.
//! - `weir:cache:uris`: a sorted set, every score 0, members `<uri>\0<tier key>`: the index
//!   of purges by prefix. A prefix purge is `ZRANGEBYLEX [<prefix> [<prefix>\xff` (a byte
//!   range, not a glob: nothing is escaped; `\xff` never occurs in UTF-8, so the range is
//!   exactly the members whose URI starts with the prefix), then `DEL` of the entries and
//!   `ZREM` of the members.
//! - `weir:cache:t:<tag>`: a set of the tier keys the app tagged so, its `PEXPIRE` extended
//!   to the longest time to keep of its entries (it goes when they all have). A tag purge
//!   pops its members, `DEL`s their entries, and the set is gone when empty.
//! - `weir:cache:v:<cache key>`: a set of the tier keys of the key's variants (a tier key
//!   with [`VARIANT_SEP`]), its `PEXPIRE` extended likewise. A key purge `DEL`s the key's
//!   entry and those of its variants found in this set: a few members, where a `SCAN MATCH`
//!   would walk every key of the Redis (the limits' buckets too) and need glob escaping.
//!
//! A put is one script call ([`PUT_SCRIPT`]: `SET PX`, `ZADD`, `SADD` + `PEXPIRE` per set),
//! one round trip; a get is one `GET`. Each purge is a script ([`KEY_SCRIPT`],
//! [`PREFIX_SCRIPT`], [`TAG_SCRIPT`]), atomic per batch of [`PURGE_BATCH`] entries: a purge
//! of a million entries does not hold Redis for seconds in one script, and a put racing it
//! lands before or after a batch, never inside one. The scripts touch keys they compute
//! (entries named by the indexes), which is fine on a standalone Redis, not on a cluster.
//!
//! # Garbage in the indexes
//! An entry that expires on its own (or is evicted, or purged by key or tag) leaves its
//! member in `weir:cache:uris` and in its tag sets. The sets expire with their longest
//! entry, so their garbage is bounded by their life. The URI index never expires: a prefix
//! purge removes the members it meets, and every put samples [`TRIM_SAMPLE`] random members
//! (`ZRANDMEMBER`, Redis 6.2+) and removes those whose entry no longer `EXISTS`. Each put
//! adds at most one member and removes garbage in proportion to its share, so garbage
//! settles at about 1/[`TRIM_SAMPLE`] of the index: the index stays within about 1.5 times
//! the live entries, for three `EXISTS` per put, with no threshold and no sweep. A garbage
//! member whose key was since stored again under another URI or other tags can make a
//! purge remove that entry too: more than asked, never less (a refetch, not a stale hit).
//!
//! Give the Redis a `maxmemory-policy` of `volatile-lru` / `volatile-ttl` (or none): the
//! entries and sets have a TTL and may be evicted; the URI index has none and must not be,
//! or purges by prefix would miss what it indexed.
//!
//! # Failures
//! Redis down or slow never fails a request; the cache then works from its local tiers.
//! - Every call is bounded by [`OP_TIMEOUT`] (a purge's batch by [`PURGE_TIMEOUT`]).
//! - Until a first connection is made, calls fail fast while one is attempted in the
//!   background with a doubling backoff (100 ms to 5 s). Once made, the connection
//!   (redis's `ConnectionManager`) reconnects by itself when a call finds it lost.
//! - After [`TRIP_AFTER`] calls in a row found Redis unreachable or silent, calls fail
//!   fast but for one probe every [`PROBE_EVERY`]: a Redis host that swallows packets costs
//!   a request the timeout now and then, not every request. Errors Redis answers (OOM
//!   refusing writes, say) do not count toward this: reads may still work.
//! - After [`RESET_AFTER_TIMEOUTS`] timeouts in a row the connection is dropped and made
//!   anew: a half-open TCP connection (a Redis host gone without a reset) never answers
//!   and never errors.
//! - Every failed call (failing fast included) counts once in [`RedisTier::errors`] and is
//!   logged as a warning at most every [`WARN_EVERY`], with how many were held back; the
//!   end of an outage is logged once.
//! - A get of a record that does not decode (or is another key's) answers `None`, deletes
//!   it and counts it in [`RedisTier::corrupt`] (warnings rate-limited likewise).
//!
//! # Purges between instances
//! [`RedisTier::publish`] sends `{"from": <instance id>, "purge": <Purge>}` on the channel
//! `weir:cache:purge`; [`RedisTier::subscribe`] applies those of the other instances. Pub/sub
//! delivers at most once: a purge published while an instance is cut off from Redis does
//! not reach it, and its local tiers keep what it named until it expires there. Channels
//! are not scoped by database: instances on other databases of the same Redis receive the
//! purges too (they purge more than they need, never less).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use futures_core::Stream;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink, PubSubStream};
use serde::{Deserialize, Serialize};

use crate::entry::{unix_ms, Purge, Stored, VARIANT_SEP};
use crate::CacheError;

/// Prefix of an entry's key.
const ENTRY_PREFIX: &str = "weir:cache:e:";
/// The URI index (purges by prefix).
const URIS_KEY: &str = "weir:cache:uris";
/// Prefix of a tag's set.
const TAG_PREFIX: &str = "weir:cache:t:";
/// Prefix of a cache key's variants set.
const VARIANTS_PREFIX: &str = "weir:cache:v:";
/// The channel purges are published on.
const PURGE_CHANNEL: &str = "weir:cache:purge";

/// Longest wait for a get, a put or a publish.
pub const OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest wait for one batch of a purge.
pub const PURGE_TIMEOUT: Duration = Duration::from_secs(1);
/// A purge still finding entries after this long stops (logged).
const PURGE_DEADLINE: Duration = Duration::from_secs(10);
/// Entries removed by one purge script call.
pub const PURGE_BATCH: usize = 500;
/// Members of the URI index each put checks for garbage.
pub const TRIM_SAMPLE: usize = 3;
/// Longest wait for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// How long [`RedisTier::connect`] waits for its first attempt.
const CONNECT_WAIT: Duration = Duration::from_millis(500);
/// Reconnection backoff (calls and the subscription).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Failures are logged at most this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);
/// Timeouts in a row after which the connection is made again.
pub const RESET_AFTER_TIMEOUTS: u64 = 8;
/// Failures in a row (Redis unreachable or not answering, not errors it answers) after
/// which calls fail fast, but for one probe every [`PROBE_EVERY`].
pub const TRIP_AFTER: u64 = 3;
/// While calls fail fast, how often one goes to Redis to see whether it is back.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How often the subscription is checked with a PING, and how long the answer may take.
const PING_EVERY: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Stores an entry and indexes it. KEYS: the entry's key, the URI index, then the sets to
/// add its tier key to (its tags', its cache key's variants set); ARGV: the record, its
/// time to keep in ms, its URI index member, its tier key, how many index members to check
/// for garbage, the entry key prefix. Answers how many garbage members it removed.
pub const PUT_SCRIPT: &str = r#"
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], ARGV[4])
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
local gone = 0
local n = tonumber(ARGV[5])
if n > 0 then
  -- pcall: a Redis without ZRANDMEMBER (before 6.2) stores, and does not trim
  local sample = redis.pcall('ZRANDMEMBER', KEYS[2], n)
  if type(sample) ~= 'table' or sample.err then sample = {} end
  for _, m in ipairs(sample) do
    local sep = string.find(m, '\0', 1, true)
    if not sep or redis.call('EXISTS', ARGV[6] .. string.sub(m, sep + 1)) == 0 then
      redis.call('ZREM', KEYS[2], m)
      gone = gone + 1
    end
  end
end
return gone
"#;

/// Purges a cache key and its variants. KEYS: the key's entry, its variants set; ARGV:
/// the entry key prefix, the key. A variant is a member equal to the key or starting with
/// the key and `\1` (the key may itself be a variant's). Answers the entries deleted.
pub const KEY_SCRIPT: &str = r#"
local n = redis.call('DEL', KEYS[1])
local k = ARGV[2]
local pre = k .. '\1'
for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  if m == k or string.sub(m, 1, #pre) == pre then
    n = n + redis.call('DEL', ARGV[1] .. m)
    redis.call('SREM', KEYS[2], m)
  end
end
return n
"#;

/// One batch of a prefix purge. KEYS: the URI index; ARGV: the prefix, the entry key
/// prefix, the batch size. Answers `{entries deleted, members removed}`.
pub const PREFIX_SCRIPT: &str = r#"
local p = ARGV[1]
local ms = redis.call('ZRANGEBYLEX', KEYS[1], '[' .. p, '[' .. p .. '\255', 'LIMIT', 0, tonumber(ARGV[3]))
local n = 0
for _, m in ipairs(ms) do
  local sep = string.find(m, '\0', 1, true)
  if sep then
    n = n + redis.call('DEL', ARGV[2] .. string.sub(m, sep + 1))
  end
  redis.call('ZREM', KEYS[1], m)
end
return {n, #ms}
"#;

/// One batch of a tag purge. KEYS: the tag's set; ARGV: the entry key prefix, the batch
/// size. Answers `{entries deleted, members popped}`.
pub const TAG_SCRIPT: &str = r#"
local ks = redis.call('SPOP', KEYS[1], tonumber(ARGV[2]))
local n = 0
for _, k in ipairs(ks) do
  n = n + redis.call('DEL', ARGV[1] .. k)
end
return {n, #ks}
"#;

/// What goes on the purge channel.
#[derive(Debug, Serialize, Deserialize)]
struct PurgeMessage {
    /// The publishing instance's id.
    from: String,
    /// The purge.
    purge: Purge,
}

/// The Redis tier (see the module doc). Cheap to share behind an `Arc`; every method
/// takes `&self`.
pub struct RedisTier {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("url", &self.inner.url)
            .field("instance", &self.inner.instance)
            .field("max_entry", &self.inner.max_entry)
            .field("errors", &self.errors())
            .field("corrupt", &self.corrupt())
            .finish()
    }
}

struct Inner {
    client: redis::Client,
    /// The URL, password hidden (for logs).
    url: String,
    instance: String,
    max_entry: u64,
    slot: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    reconnect: Mutex<Reconnect>,
    errors: AtomicU64,
    corrupt: AtomicU64,
    timeouts_in_a_row: AtomicU64,
    failures_in_a_row: AtomicU64,
    /// Milliseconds since `born` before which no probe goes (while failing fast).
    probe_at_ms: AtomicU64,
    born: Instant,
    down: AtomicBool,
    down_since_ms: AtomicU64,
    warn_log: LogLimit,
    corrupt_log: LogLimit,
    put: redis::Script,
    key: redis::Script,
    prefix: redis::Script,
    tag: redis::Script,
}

#[derive(Debug)]
struct Reconnect {
    next_attempt: Instant,
    backoff: Duration,
}

/// Lets a line be logged at most every [`WARN_EVERY`], counting the ones it holds back.
#[derive(Debug, Default)]
struct LogLimit {
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl LogLimit {
    /// `Some(lines held back since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let now = unix_ms(SystemTime::now()).max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if (last != 0 && now.saturating_sub(last) < WARN_EVERY.as_millis() as u64)
            || self
                .last_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

/// Why a call got no answer.
enum Failure {
    NotConnected,
    FailingFast,
    Timeout(Duration),
    Redis(redis::RedisError),
}

impl Failure {
    /// Whether it says Redis is unreachable or stuck (not an error Redis answered, such
    /// as OOM refusing writes while reads go on): what makes calls fail fast.
    fn is_outage(&self) -> bool {
        match self {
            Failure::NotConnected | Failure::Timeout(_) => true,
            // already counted by the failures that started it
            Failure::FailingFast => false,
            Failure::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
            }
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NotConnected => f.write_str("not connected (connecting in the background)"),
            Failure::FailingFast => write!(
                f,
                "Redis failed {TRIP_AFTER} calls in a row: not asked (one call every {PROBE_EVERY:?} is)"
            ),
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
            Failure::Redis(e) => write!(f, "{e}"),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// The connection, or `Err` (and a connection attempt in the background).
    fn conn(self: &Arc<Self>) -> Result<ConnectionManager, Failure> {
        if let Some(c) = lock(&self.slot).as_ref() {
            return Ok(c.clone());
        }
        self.start_connecting();
        Err(Failure::NotConnected)
    }

    /// One bounded connection attempt in the background, at most one at a time, no
    /// sooner than the backoff allows. The attempt's task, when one was started.
    fn start_connecting(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        if Instant::now() < lock(&self.reconnect).next_attempt {
            return None;
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return None;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return None;
        };
        let inner = self.clone();
        Some(rt.spawn(async move {
            // The manager reconnects by itself after a lost connection (the next command
            // starts it): one retry a second or so later, bounded attempts.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_number_of_retries(1)
                .set_max_delay(BACKOFF_MAX.as_millis() as u64);
            let attempt = tokio::time::timeout(
                CONNECT_TIMEOUT * 2,
                ConnectionManager::new_with_config(inner.client.clone(), config),
            )
            .await;
            let failed = match attempt {
                Ok(Ok(mut c)) => {
                    // warm-up: the first put and purge need not load their script
                    let load = async {
                        for s in [&inner.put, &inner.key, &inner.prefix, &inner.tag] {
                            s.prepare_invoke().load_async(&mut c).await?;
                        }
                        Ok::<(), redis::RedisError>(())
                    };
                    if let Ok(Err(e)) = tokio::time::timeout(CONNECT_TIMEOUT, load).await {
                        tracing::debug!(error = %e, "cache: Redis tier: scripts not preloaded");
                    }
                    *lock(&inner.slot) = Some(c);
                    inner.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    let mut r = lock(&inner.reconnect);
                    r.backoff = BACKOFF_MIN;
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no connection within {:?}", CONNECT_TIMEOUT * 2)),
            };
            if let Some(e) = failed {
                {
                    let mut r = lock(&inner.reconnect);
                    r.next_attempt = Instant::now() + r.backoff;
                    r.backoff = (r.backoff * 2).min(BACKOFF_MAX);
                }
                inner.log_failure("connect", &e, true);
            }
            inner.connecting.store(false, Ordering::Release);
        }))
    }

    /// Whether a call may go to Redis: yes, unless the last [`TRIP_AFTER`] failed; then
    /// one call every [`PROBE_EVERY`] (so that a Redis that swallows packets costs one
    /// request a timeout now and then, not every request).
    fn admit(&self) -> bool {
        if self.failures_in_a_row.load(Ordering::Relaxed) < TRIP_AFTER {
            return true;
        }
        let now = self.born.elapsed().as_millis() as u64;
        let at = self.probe_at_ms.load(Ordering::Relaxed);
        now >= at
            && self
                .probe_at_ms
                .compare_exchange(
                    at,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Records a failed call: counted, the outage's start noted, logged (rate-limited).
    fn failed(&self, what: &'static str, why: &Failure) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if why.is_outage()
            && self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1 >= TRIP_AFTER
        {
            // the next probe a while after this failure, not after its start
            let next = self.born.elapsed() + PROBE_EVERY;
            self.probe_at_ms
                .store(next.as_millis() as u64, Ordering::Relaxed);
        }
        if matches!(why, Failure::Timeout(_)) {
            let n = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= RESET_AFTER_TIMEOUTS && lock(&self.slot).take().is_some() {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                tracing::info!(
                    timeouts = n,
                    "cache: the Redis tier's connection answers nothing: making a new one"
                );
            }
        }
        self.log_failure(what, why, why.is_outage());
    }

    /// Logs a failure (rate-limited) and, for an `outage` (Redis unreachable or silent),
    /// notes its start; counts nothing.
    fn log_failure(&self, what: &'static str, why: &dyn fmt::Display, outage: bool) {
        if outage && !self.down.swap(true, Ordering::AcqRel) {
            self.down_since_ms
                .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
        }
        if let Some(held) = self.warn_log.allow() {
            tracing::warn!(
                op = what,
                error = %why,
                url = %self.url,
                not_logged = held,
                "cache: the Redis tier is failing; the cache works from its local tiers (logged at most every 10 s)"
            );
        }
    }

    /// Records a call Redis answered: the end of an outage is logged.
    fn succeeded(&self) {
        self.timeouts_in_a_row.store(0, Ordering::Relaxed);
        if self.failures_in_a_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_a_row.store(0, Ordering::Relaxed);
        }
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            let since = self.down_since_ms.load(Ordering::Relaxed);
            let secs = unix_ms(SystemTime::now()).saturating_sub(since) as f64 / 1000.0;
            tracing::info!(
                outage_secs = secs,
                url = %self.url,
                "cache: the Redis tier answers again"
            );
        }
    }
}

impl RedisTier {
    /// Parses the URL and starts connecting in the background; an unparsable URL is
    /// [`CacheError::Redis`] naming it (password hidden). Waits at most half a second for
    /// the first connection attempt, so that a live Redis serves the first requests; never
    /// fails because Redis is down (the cache starts and works without it, and connects
    /// when it can). Records over `max_entry` bytes are not stored.
    pub async fn connect(url: &str, max_entry: u64) -> Result<RedisTier, CacheError> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|e| {
            CacheError::Redis(format!(
                "{shown:?} cannot be used: {e}; use redis://HOST:PORT/DB or redis+unix:///PATH"
            ))
        })?;
        let inner = Arc::new(Inner {
            client,
            url: shown,
            instance: instance_id(),
            max_entry,
            slot: Mutex::new(None),
            connecting: AtomicBool::new(false),
            reconnect: Mutex::new(Reconnect {
                next_attempt: Instant::now(),
                backoff: BACKOFF_MIN,
            }),
            errors: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            timeouts_in_a_row: AtomicU64::new(0),
            failures_in_a_row: AtomicU64::new(0),
            probe_at_ms: AtomicU64::new(0),
            born: Instant::now(),
            down: AtomicBool::new(false),
            down_since_ms: AtomicU64::new(0),
            warn_log: LogLimit::default(),
            corrupt_log: LogLimit::default(),
            put: redis::Script::new(PUT_SCRIPT),
            key: redis::Script::new(KEY_SCRIPT),
            prefix: redis::Script::new(PREFIX_SCRIPT),
            tag: redis::Script::new(TAG_SCRIPT),
        });
        if let Some(first) = inner.start_connecting() {
            // the attempt goes on in the background if it takes longer
            let _ = tokio::time::timeout(CONNECT_WAIT, first).await;
        }
        Ok(RedisTier { inner })
    }

    /// One call to Redis on the connection, bounded by `limit`: its answer, or `None`
    /// (counted and logged).
    async fn call<T, F, Fut>(&self, what: &'static str, limit: Duration, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !self.inner.admit() {
            self.inner.failed(what, &Failure::FailingFast);
            return None;
        }
        let conn = match self.inner.conn() {
            Ok(c) => c,
            Err(e) => {
                self.inner.failed(what, &e);
                return None;
            }
        };
        let why = match tokio::time::timeout(limit, f(conn)).await {
            Ok(Ok(v)) => {
                self.inner.succeeded();
                return Some(v);
            }
            Ok(Err(e)) => Failure::Redis(e),
            Err(_) => Failure::Timeout(limit),
        };
        self.inner.failed(what, &why);
        None
    }

    /// The entry under tier key `key`. Redis unreachable or slow (each call is bounded by
    /// [`OP_TIMEOUT`], so a stuck Redis never stalls requests): `None`, counted in
    /// [`RedisTier::errors`]. A record that fails [`Stored::decode`] or is another key's:
    /// `None`, deleted, counted in [`RedisTier::corrupt`]. Failures are logged as warnings,
    /// rate-limited so that a down Redis does not flood the log.
    pub async fn get(&self, key: &str) -> Option<Stored> {
        let rkey = entry_key(key);
        let raw: Vec<u8> = self
            .call("get", OP_TIMEOUT, |mut c| {
                let rkey = rkey.clone();
                async move {
                    redis::cmd("GET")
                        .arg(&rkey)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                }
            })
            .await??;
        let why = match Stored::decode(&raw) {
            Ok(s) if s.key() == key => return Some(s),
            Ok(s) => format!("the record is key {:?}'s", s.key()),
            Err(e) => e.to_string(),
        };
        self.inner.corrupt.fetch_add(1, Ordering::Relaxed);
        if let Some(held) = self.inner.corrupt_log.allow() {
            tracing::warn!(
                key,
                error = %why,
                not_logged = held,
                "cache: a Redis record is damaged; deleted, the request goes to the app"
            );
        }
        self.call("get", OP_TIMEOUT, |mut c| async move {
            redis::cmd("DEL")
                .arg(&rkey)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
        None
    }

    /// Stores `stored` with `PX` = its [`Stored::time_to_keep`] (nothing when that is zero
    /// or its record is over `max_entry` bytes), and indexes it for purges by prefix, tag
    /// and key (one script call, one round trip). Errors are counted and logged, never
    /// returned.
    pub async fn put(&self, stored: &Stored) {
        let ttl_ms = stored.time_to_keep(SystemTime::now()).as_millis() as u64;
        if ttl_ms == 0 {
            return;
        }
        let record = stored.encode();
        if record.len() as u64 > self.inner.max_entry {
            tracing::debug!(
                key = stored.key(),
                bytes = record.len(),
                max = self.inner.max_entry,
                "cache: entry over the Redis tier's max_entry, not stored there"
            );
            return;
        }
        let key = stored.key();
        let mut inv = self.inner.put.prepare_invoke();
        inv.key(entry_key(key)).key(URIS_KEY);
        for t in stored.tags() {
            inv.key(format!("{TAG_PREFIX}{t}"));
        }
        if let Some((base, _)) = key.split_once(VARIANT_SEP) {
            inv.key(variants_key(base));
        }
        inv.arg(record)
            .arg(ttl_ms)
            .arg(uri_member(stored.uri(), key))
            .arg(key)
            .arg(TRIM_SAMPLE)
            .arg(ENTRY_PREFIX);
        self.call("put", OP_TIMEOUT, |mut c| async move {
            inv.invoke_async::<i64>(&mut c).await
        })
        .await;
    }

    /// Removes from Redis what `purge` names: [`Purge::Key`] the key and its variants,
    /// [`Purge::Prefix`] the entries whose URI starts with it, [`Purge::Tag`] the entries
    /// with that tag. Returns how many entries went. Errors are logged and counted; the
    /// answer is then what went before the error (0 when the first call failed).
    pub async fn purge(&self, purge: &Purge) -> usize {
        match purge {
            Purge::Key(k) => {
                let base = k.split_once(VARIANT_SEP).map_or(k.as_str(), |(b, _)| b);
                let mut inv = self.inner.key.prepare_invoke();
                inv.key(entry_key(k))
                    .key(variants_key(base))
                    .arg(ENTRY_PREFIX)
                    .arg(k.as_str());
                self.call("purge", PURGE_TIMEOUT, |mut c| async move {
                    inv.invoke_async::<u64>(&mut c).await
                })
                .await
                .map_or(0, |n| n as usize)
            }
            Purge::Prefix(p) => {
                self.purge_batches(purge, || {
                    let mut inv = self.inner.prefix.prepare_invoke();
                    inv.key(URIS_KEY)
                        .arg(p.as_str())
                        .arg(ENTRY_PREFIX)
                        .arg(PURGE_BATCH);
                    inv
                })
                .await
            }
            Purge::Tag(t) => {
                self.purge_batches(purge, || {
                    let mut inv = self.inner.tag.prepare_invoke();
                    inv.key(format!("{TAG_PREFIX}{t}"))
                        .arg(ENTRY_PREFIX)
                        .arg(PURGE_BATCH);
                    inv
                })
                .await
            }
        }
    }

    /// Runs a batch script (answering `{deleted, seen}`) until a batch sees fewer than
    /// [`PURGE_BATCH`] members, an error, or [`PURGE_DEADLINE`].
    async fn purge_batches<'a>(
        &'a self,
        purge: &Purge,
        batch: impl Fn() -> redis::ScriptInvocation<'a>,
    ) -> usize {
        let started = Instant::now();
        let mut total = 0usize;
        loop {
            let inv = batch();
            let Some((deleted, seen)) = self
                .call("purge", PURGE_TIMEOUT, |mut c| async move {
                    inv.invoke_async::<(u64, u64)>(&mut c).await
                })
                .await
            else {
                return total;
            };
            total += deleted as usize;
            if (seen as usize) < PURGE_BATCH {
                return total;
            }
            if started.elapsed() >= PURGE_DEADLINE {
                tracing::warn!(
                    ?purge,
                    deleted = total,
                    "cache: a Redis purge still found entries after {PURGE_DEADLINE:?}; stopped (purge again to go on)"
                );
                return total;
            }
        }
    }

    /// Tells the other instances to purge their local tiers: `PUBLISH` on
    /// `weir:cache:purge` of `{"from": <this instance's id>, "purge": <purge>}`. Errors are
    /// counted and logged.
    pub async fn publish(&self, purge: &Purge) {
        let msg = PurgeMessage {
            from: self.inner.instance.clone(),
            purge: purge.clone(),
        };
        let body = match serde_json::to_string(&msg) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cache: a purge could not be written as JSON");
                return;
            }
        };
        self.call("publish", OP_TIMEOUT, |mut c| async move {
            redis::cmd("PUBLISH")
                .arg(PURGE_CHANNEL)
                .arg(&body)
                .query_async::<i64>(&mut c)
                .await
        })
        .await;
    }

    /// Starts a task that subscribes to `weir:cache:purge` (on a connection of its own) and
    /// calls `on_purge` for every purge published by another instance (this instance's
    /// own messages are ignored, by the instance id made at connect: pid, time and a
    /// random hash). When Redis goes away it resubscribes with a doubling backoff (100 ms
    /// to 5 s), logging the outage once and its end once; a connection that stops
    /// answering PING is replaced likewise. Returns the task's handle: it stops when the
    /// handle is aborted. Call it from a tokio runtime (it spawns).
    pub fn subscribe(
        &self,
        on_purge: impl Fn(Purge) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(listen(self.inner.clone(), on_purge))
    }

    /// Redis errors since start (each failed call counts once; so does each failed or
    /// lost subscription).
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// Records that failed to decode (or were another key's) since start.
    pub fn corrupt(&self) -> u64 {
        self.inner.corrupt.load(Ordering::Relaxed)
    }
}

/// The subscriber task: subscribe, pass the others' purges to `on_purge` until the
/// connection is lost, wait, again.
async fn listen(inner: Arc<Inner>, on_purge: impl Fn(Purge) + Send + Sync + 'static) {
    let mut backoff = BACKOFF_MIN;
    let mut down_since: Option<Instant> = None;
    loop {
        let opened = tokio::time::timeout(CONNECT_TIMEOUT * 2, async {
            let mut ps = inner.client.get_async_pubsub().await?;
            ps.subscribe(PURGE_CHANNEL).await?;
            Ok::<_, redis::RedisError>(ps.split())
        })
        .await;
        let why = match opened {
            Ok(Ok((sink, stream))) => {
                match down_since.take() {
                    Some(t) => tracing::info!(
                        outage_secs = t.elapsed().as_secs_f64(),
                        "cache: subscribed to purges again"
                    ),
                    None => tracing::debug!("cache: subscribed to purges"),
                }
                backoff = BACKOFF_MIN;
                receive(&inner, sink, stream, &on_purge).await
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no subscription within {:?}", CONNECT_TIMEOUT * 2),
        };
        inner.errors.fetch_add(1, Ordering::Relaxed);
        if down_since.is_none() {
            down_since = Some(Instant::now());
            tracing::warn!(
                error = %why,
                url = %inner.url,
                "cache: not subscribed to purges (Redis unreachable): purges made by other instances do not reach this one's local tiers; resubscribing"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Passes the purges of other instances to `on_purge` until the subscription's
/// connection ends or stops answering PING; answers why it ended.
async fn receive(
    inner: &Inner,
    mut sink: PubSubSink,
    mut stream: PubSubStream,
    on_purge: &(impl Fn(Purge) + Send + Sync),
) -> String {
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            msg = std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)) => {
                let Some(msg) = msg else {
                    return "the connection was closed".into();
                };
                match serde_json::from_slice::<PurgeMessage>(msg.get_payload_bytes()) {
                    Ok(m) if m.from == inner.instance => {}
                    Ok(m) => {
                        // a panicking callback must not end the subscription
                        let call = std::panic::AssertUnwindSafe(|| on_purge(m.purge));
                        if std::panic::catch_unwind(call).is_err() {
                            tracing::error!("cache: the purge callback panicked; subscription goes on");
                        }
                    }
                    Err(e) => {
                        if let Some(held) = inner.warn_log.allow() {
                            tracing::warn!(
                                error = %e,
                                not_logged = held,
                                "cache: a message on {PURGE_CHANNEL} is not a purge; ignored"
                            );
                        }
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return e.to_string(),
                    Err(_) => return format!("no answer to PING within {PING_TIMEOUT:?}"),
                }
            }
        }
    }
}

/// The Redis key of tier key `key`'s record.
fn entry_key(key: &str) -> String {
    let mut k = String::with_capacity(ENTRY_PREFIX.len() + key.len());
    k.push_str(ENTRY_PREFIX);
    k.push_str(key);
    k
}

/// The Redis key of cache key `base`'s variants set.
fn variants_key(base: &str) -> String {
    format!("{VARIANTS_PREFIX}{base}")
}

/// The URI index's member of an entry.
fn uri_member(uri: &str, key: &str) -> String {
    let mut m = String::with_capacity(uri.len() + 1 + key.len());
    m.push_str(uri);
    m.push('\0');
    m.push_str(key);
    m
}

/// This process's id on the purge channel: the pid, and a hash of the pid, the time and a
/// per-process random seed.
fn instance_id() -> String {
    use std::hash::BuildHasher;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = std::hash::RandomState::new().hash_one((std::process::id(), nanos));
    format!("{}-{h:016x}", std::process::id())
}

/// `url` with its password (userinfo or `password=` query parameter) replaced by `***`.
fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = &out[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..auth_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let (from, to) = (scheme_end + 3 + colon + 1, scheme_end + 3 + at);
                out.replace_range(from..to, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{head}{}", query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::VaryMarker;
    use bytes::Bytes;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};

    /// A private redis-server on a Unix socket in a temporary directory; killed (and the
    /// directory removed) when dropped.
    struct Server {
        child: Option<Child>,
        dir: PathBuf,
    }

    const SKIPPED: &str =
        "SKIPPED: redis-server is not on PATH (scripts/install-deps.sh installs it)";

    fn have_redis() -> bool {
        Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn temp_dir() -> PathBuf {
        use std::sync::atomic::AtomicUsize;
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weir-cache-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    impl Server {
        /// A server, or `None` (with a SKIPPED line) when redis-server is not installed.
        fn start_or_skip() -> Option<Server> {
            if !have_redis() {
                eprintln!("{SKIPPED}");
                return None;
            }
            let mut s = Server {
                child: None,
                dir: temp_dir(),
            };
            s.start();
            Some(s)
        }

        fn sock(&self) -> PathBuf {
            self.dir.join("r.sock")
        }

        fn url(&self) -> String {
            format!("redis+unix://{}", self.sock().display())
        }

        /// Starts redis-server on the socket and waits (bounded) until it answers PING.
        fn start(&mut self) {
            assert!(self.child.is_none());
            let child = Command::new("redis-server")
                .arg("--port")
                .arg("0")
                .arg("--unixsocket")
                .arg(self.sock())
                .arg("--unixsocketperm")
                .arg("700")
                .arg("--dir")
                .arg(&self.dir)
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            self.child = Some(child);
            let client = redis::Client::open(self.url()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(mut c) = client.get_connection() {
                    if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                        return;
                    }
                }
                assert!(Instant::now() < deadline, "redis-server did not answer");
                std::thread::sleep(Duration::from_millis(10));
            }
        }

        fn stop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }

        /// A plain connection, to look at what the tier wrote.
        async fn conn(&self) -> redis::aio::MultiplexedConnection {
            redis::Client::open(self.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap()
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    macro_rules! server_or_skip {
        () => {
            match Server::start_or_skip() {
                Some(s) => s,
                None => return,
            }
        };
    }

    /// A response for `key`, kept `keep` from now, with `tags`.
    fn entry(key: &str, uri: &str, tags: &[&str], keep: Duration) -> Stored {
        let body = Bytes::from(format!("body of {key}"));
        crate::entry::tests::entry_kept(key, uri, tags, body, keep, SystemTime::now())
    }

    fn body(s: &Stored) -> Bytes {
        match s {
            Stored::Response(e) => e.body.clone(),
            Stored::Vary(_) => panic!("a marker"),
        }
    }

    const MIN: Duration = Duration::from_secs(60);

    /// Polls `f` until it is true (bounded).
    async fn eventually<F, Fut>(what: &str, within: Duration, mut f: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        loop {
            if f().await {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: not within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_unusable_url_is_refused() {
        for bad in ["nonsense", "http://h:1/", "rediss://:secret@h:1/"] {
            let Err(CacheError::Redis(msg)) = RedisTier::connect(bad, 1 << 20).await else {
                panic!("{bad} accepted");
            };
            assert!(!msg.contains("secret"), "{msg}");
            assert!(msg.contains(&redact(bad)), "{msg}");
        }
        assert_eq!(
            redact("redis://u:pw@h:1/0?password=x&db=1"),
            "redis://u:***@h:1/0?password=***&db=1"
        );
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instances_share_entries() {
        let srv = server_or_skip!();
        let a = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let b = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let e = entry("httpa/items", "/items", &["t1"], MIN);
        a.put(&e).await;
        let got = b.get("httpa/items").await.expect("B sees A's entry");
        assert_eq!(body(&got), body(&e));
        assert_eq!(got.uri(), "/items");
        assert!(b.get("httpa/other").await.is_none());

        // PX: the time to keep
        let mut c = srv.conn().await;
        let pttl: i64 = redis::cmd("PTTL")
            .arg("weir:cache:e:httpa/items")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(pttl > 0 && pttl <= MIN.as_millis() as i64, "{pttl}");
        let tag_ttl: i64 = redis::cmd("PTTL")
            .arg("weir:cache:t:t1")
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(
            tag_ttl > 0 && tag_ttl <= MIN.as_millis() as i64,
            "{tag_ttl}"
        );

        // a Vary marker and its variant
        let marker = Stored::Vary(Arc::new(VaryMarker {
            key: "httpa/v".into(),
            uri: "/v".into(),
            names: vec!["accept-encoding".into()],
            useless_after_ms: unix_ms(SystemTime::now()) + 60_000,
        }));
        a.put(&marker).await;
        let Some(Stored::Vary(m)) = b.get("httpa/v").await else {
            panic!("no marker")
        };
        assert_eq!(m.names, vec!["accept-encoding".to_string()]);

        // not stored: useless already, or over max_entry
        let small = RedisTier::connect(&srv.url(), 64).await.unwrap();
        small.put(&entry("big", "/big", &[], MIN)).await;
        a.put(&entry("old", "/old", &[], Duration::ZERO)).await;
        assert!(a.get("big").await.is_none());
        assert!(a.get("old").await.is_none());
        assert_eq!(a.errors() + b.errors() + small.errors(), 0);
        assert_eq!(a.corrupt() + b.corrupt(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purges_by_key_prefix_and_tag() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let variant = format!("httpa/items{VARIANT_SEP}gzip");
        for e in [
            entry("httpa/items", "/items", &["a"], MIN),
            entry(&variant, "/items", &["a"], MIN),
            entry("httpa/itemsx", "/itemsx", &[], MIN),
            entry("httpa/items?p=2", "/items?p=2", &["a", "b"], MIN),
            entry("httpa/users", "/users", &["b"], MIN),
            entry("httpa/users/1", "/users/1", &["c"], MIN),
            entry("httpa/other", "/other", &["c"], MIN),
        ] {
            t.put(&e).await;
        }
        // by key: the key and its variant, not a key it is a prefix of
        assert_eq!(t.purge(&Purge::Key("httpa/items".into())).await, 2);
        assert!(t.get("httpa/items").await.is_none());
        assert!(t.get(&variant).await.is_none());
        assert!(t.get("httpa/itemsx").await.is_some());
        assert_eq!(t.purge(&Purge::Key("httpa/items".into())).await, 0);

        // by prefix: what is left under /items (the purged entries' members are garbage)
        assert_eq!(t.purge(&Purge::Prefix("/items".into())).await, 2);
        assert!(t.get("httpa/itemsx").await.is_none());
        assert!(t.get("httpa/items?p=2").await.is_none());
        assert!(t.get("httpa/users").await.is_some());
        let mut c = srv.conn().await;
        let left = uri_index(&mut c).await;
        assert!(left.iter().all(|m| !m.starts_with("/items")), "{left:?}");

        // by tag: b is left on /users only (its entry on /items?p=2 went by prefix)
        assert_eq!(t.purge(&Purge::Tag("b".into())).await, 1);
        assert!(t.get("httpa/users").await.is_none());
        assert!(t.get("httpa/users/1").await.is_some());
        let exists: i64 = redis::cmd("EXISTS")
            .arg("weir:cache:t:b")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(exists, 0);
        assert_eq!(t.purge(&Purge::Tag("c".into())).await, 2);
        assert!(t.get("httpa/other").await.is_none());
        assert_eq!(t.purge(&Purge::Tag("nothing".into())).await, 0);
        assert_eq!(t.errors(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_variant_key_purges_its_own_variants_only() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let s = VARIANT_SEP;
        for k in [
            format!("k{s}gzip{s}en"),
            format!("k{s}gzip{s}fr"),
            format!("k{s}br{s}en"),
        ] {
            t.put(&entry(&k, "/", &[], MIN)).await;
        }
        assert_eq!(t.purge(&Purge::Key(format!("k{s}gzip"))).await, 2);
        assert!(t.get(&format!("k{s}br{s}en")).await.is_some());
        assert_eq!(t.purge(&Purge::Key("k".into())).await, 1);
    }

    /// The members of the URI index.
    async fn uri_index(c: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
        redis::cmd("ZRANGE")
            .arg(URIS_KEY)
            .arg(0)
            .arg(-1)
            .query_async(c)
            .await
            .unwrap()
    }

    /// `n` entries under `/many/`, tagged `many`.
    async fn put_many(t: &RedisTier, n: usize) {
        for i in 0..n {
            let e = entry(&format!("k{i}"), &format!("/many/{i}"), &["many"], MIN);
            t.put(&e).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefix_purges_go_in_batches() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let n = PURGE_BATCH * 2 + 7;
        put_many(&t, n).await;
        t.put(&entry("keep", "/manx", &[], MIN)).await;
        assert_eq!(t.purge(&Purge::Prefix("/many/".into())).await, n);
        assert!(t.get("keep").await.is_some());
        put_many(&t, n).await;
        assert_eq!(t.purge(&Purge::Tag("many".into())).await, n);
        assert_eq!(t.errors(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_record_is_dropped() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let mut c = srv.conn().await;
        let _: () = redis::cmd("SET")
            .arg("weir:cache:e:bad")
            .arg(b"WEIR-CACHE1 garbage".as_slice())
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(t.get("bad").await.is_none());
        assert_eq!(t.corrupt(), 1);
        let exists: i64 = redis::cmd("EXISTS")
            .arg("weir:cache:e:bad")
            .query_async(&mut c)
            .await
            .unwrap();
        assert_eq!(exists, 0, "the damaged record stays");
        // a good record under another key's name
        let raw = entry("mine", "/", &[], MIN).encode();
        let _: () = redis::cmd("SET")
            .arg("weir:cache:e:yours")
            .arg(raw)
            .query_async(&mut c)
            .await
            .unwrap();
        assert!(t.get("yours").await.is_none());
        assert_eq!(t.corrupt(), 2);
        assert_eq!(t.errors(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_in_the_uri_index_is_trimmed_by_puts() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        for i in 0..10 {
            t.put(&entry(&format!("g{i}"), &format!("/g/{i}"), &[], MIN))
                .await;
        }
        let mut c = srv.conn().await;
        for i in 0..10 {
            // as if they had expired
            let _: i64 = redis::cmd("DEL")
                .arg(format!("weir:cache:e:g{i}"))
                .query_async(&mut c)
                .await
                .unwrap();
        }
        let live = entry("live", "/live", &[], MIN);
        for _ in 0..300 {
            t.put(&live).await;
        }
        let members = uri_index(&mut c).await;
        assert_eq!(members, vec!["/live\0live".to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn purges_reach_the_other_instances() {
        let srv = server_or_skip!();
        let a = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let b = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let got_a = Arc::new(Mutex::new(Vec::new()));
        let got_b = Arc::new(Mutex::new(Vec::new()));
        let ga = got_a.clone();
        let gb = got_b.clone();
        let ha = a.subscribe(move |p| lock(&ga).push(p));
        let hb = b.subscribe(move |p| lock(&gb).push(p));
        let mut c = srv.conn().await;
        eventually("both subscribed", Duration::from_secs(5), || {
            let mut c = c.clone();
            async move {
                let n: (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(PURGE_CHANNEL)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                n.1 == 2
            }
        })
        .await;
        let purges = [
            Purge::Key("k".into()),
            Purge::Prefix("/p".into()),
            Purge::Tag("t".into()),
        ];
        for p in &purges {
            a.publish(p).await;
        }
        eventually("B got them", Duration::from_secs(5), || {
            let n = lock(&got_b).len();
            async move { n == 3 }
        })
        .await;
        assert_eq!(*lock(&got_b), purges.to_vec());
        // what is not a purge is ignored
        let _: i64 = redis::cmd("PUBLISH")
            .arg(PURGE_CHANNEL)
            .arg("junk")
            .query_async(&mut c)
            .await
            .unwrap();
        b.publish(&Purge::Tag("from b".into())).await;
        eventually("A got B's", Duration::from_secs(5), || {
            let n = lock(&got_a).len();
            async move { n == 1 }
        })
        .await;
        assert_eq!(*lock(&got_a), vec![Purge::Tag("from b".into())]);
        assert_eq!(lock(&got_b).len(), 3, "B got its own purge");
        ha.abort();
        hb.abort();
        assert_eq!(a.errors() + b.errors(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_callback_does_not_end_the_subscription() {
        let srv = server_or_skip!();
        let a = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let b = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let h = b.subscribe(move |p| {
            assert!(p != Purge::Tag("boom".into()), "boom");
            lock(&g).push(p);
        });
        eventually("subscribed", Duration::from_secs(5), || async {
            a.publish(&Purge::Tag("boom".into())).await;
            a.publish(&Purge::Tag("ok".into())).await;
            !lock(&got).is_empty()
        })
        .await;
        assert!(lock(&got).iter().all(|p| *p == Purge::Tag("ok".into())));
        assert!(!h.is_finished());
        h.abort();
    }

    #[test]
    fn the_tier_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<RedisTier>();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_redis_does_not_stall_requests() {
        let srv = server_or_skip!();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let e = entry("k", "/k", &[], MIN);
        t.put(&e).await;
        let mut c = srv.conn().await;
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(3000)
            .arg("ALL")
            .query_async(&mut c)
            .await
            .unwrap();
        let t0 = Instant::now();
        for i in 0..10 {
            let t1 = Instant::now();
            assert!(t.get("k").await.is_none(), "answered while paused");
            let took = t1.elapsed();
            assert!(took < OP_TIMEOUT + Duration::from_millis(150), "{took:?}");
            if i >= TRIP_AFTER as usize {
                // failing fast now, but for a probe now and then
                assert!(took < OP_TIMEOUT / 2 || took >= OP_TIMEOUT, "{took:?}");
            }
        }
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t0.elapsed()
        );
        assert!(t.errors() >= 10);
        eventually(
            "answers after the pause",
            Duration::from_secs(10),
            || async { t.get("k").await.is_some() },
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_at_start_then_up() {
        if !have_redis() {
            eprintln!("{SKIPPED}");
            return;
        }
        let mut srv = Server {
            child: None,
            dir: temp_dir(),
        };
        let started = Instant::now();
        let t = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        let e = entry("k", "/k", &["t"], MIN);
        let t0 = Instant::now();
        assert!(t.get("k").await.is_none());
        t.put(&e).await;
        assert_eq!(t.purge(&Purge::Tag("t".into())).await, 0);
        t.publish(&Purge::Tag("t".into())).await;
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert!(t.errors() >= 4, "{}", t.errors());
        let sub = t.subscribe(|_| {});

        srv.start();
        eventually("the tier connects", Duration::from_secs(15), || async {
            t.put(&e).await;
            t.get("k").await.is_some()
        })
        .await;
        sub.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_going_away_and_coming_back() {
        let mut srv = server_or_skip!();
        let a = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let b = RedisTier::connect(&srv.url(), 1 << 20).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let hb = b.subscribe(move |p| lock(&g).push(p));
        let e = entry("k", "/k", &["t"], MIN);
        a.put(&e).await;
        eventually("B subscribed", Duration::from_secs(5), || async {
            a.publish(&Purge::Key("before".into())).await;
            !lock(&got).is_empty()
        })
        .await;

        srv.stop();
        for _ in 0..5 {
            let t0 = Instant::now();
            assert!(a.get("k").await.is_none());
            a.put(&e).await;
            a.publish(&Purge::Key("lost".into())).await;
            assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        }
        assert!(a.errors() >= 10, "{}", a.errors());
        assert_eq!(a.purge(&Purge::Prefix("/".into())).await, 0);

        srv.start();
        eventually("A works again", Duration::from_secs(15), || async {
            a.put(&e).await;
            a.get("k").await.is_some()
        })
        .await;
        lock(&got).clear();
        eventually("B resubscribed", Duration::from_secs(15), || async {
            a.publish(&Purge::Key("after".into())).await;
            lock(&got).contains(&Purge::Key("after".into()))
        })
        .await;
        assert!(b.errors() >= 1, "the lost subscription counts");
        hb.abort();
    }
}
