//! The Redis store: zones shared by every weir instance using one Redis. This module is
//! the connection, the `limit_req` script and the failure accounting; `limit_conn`'s
//! leases on the same connection are [`crate::redis_conn`].
//!
//! One check is one atomic run of a server-side Lua script ([`SCRIPT`]) over the request's
//! zones (of one kind: enforcing or dry-run), batched with the checks of other requests
//! that arrive while calls are on their way (at most [`MAX_IN_FLIGHT`] calls in flight per
//! instance; the next carries everything that came meanwhile, up to [`MAX_BATCH`]): one
//! round trip and one script call for many requests under load, one for one when idle.
//! Identical checks of a batch (one busy client) go as one group, answered in closed
//! form, so the script's work is per distinct check. The script reads Redis's own clock
//! (`TIME`, so instances need not agree on time), runs NGINX's arithmetic
//! ([`crate::limit_req`]) on every zone, writes the buckets only when none refuses, and
//! sets each bucket's TTL to the moment it is fully drained (a forgotten key then behaves
//! exactly as the drained one it replaces). The delay and the headers are computed here
//! from the excesses it answers, with the same code as the memory store.
//!
//! Failures never reach the request as an error: every check is bounded by a timeout (a
//! few ms, [`RedisOptions::timeout`]); a connection that cannot be made is retried in the
//! background with a doubling backoff (100 ms to 5 s) while checks fail fast; every failure
//! (timeout, refused connection, script error, an answer of the wrong shape) is one
//! [`StoreError`], which the caller turns into `on_store_error`'s verdict. [`StoreHealth`]
//! logs an outage once (a warning when it starts, an info line when it ends) and counts
//! errors by kind for /metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::sync::{mpsc, oneshot};

use crate::limit_req::{Decision, Rule};

/// The check script, for a batch of checks (concurrent requests' checks go to Redis
/// together, see [`RedisStore::check`]), the identical ones grouped (see [`call`]).
/// ARGV: the number of groups, then for each its number of checks, its number of zones and
/// `rate, burst` per zone (NGINX's units, times 1000); KEYS: one bucket per zone of each
/// group, in order. A bucket is a string `"excess last_ms"` with a TTL. The batch runs on
/// one clock reading, as if its checks had come in the same millisecond, and each bucket is
/// read and written once per batch however many checks meet it.
///
/// A group's first check runs NGINX's arithmetic on the buckets' latest state. Its other
/// checks come in the same millisecond, so each adds exactly 1000 to every zone's excess
/// until one zone's burst is exceeded; from then on every one is refused by that zone with
/// the same excess (a refusal changes nothing). So a group's answer is closed-form, one
/// array for the whole batch, per group: the number admitted `m`; when `m > 0`, the first
/// check's excess per zone; when some were refused, the refusing zone (from 0) and its
/// excess. Checks are expanded from it by [`expand_group`].
pub const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local groups = tonumber(ARGV[1])
local a, k = 2, 1
local res, r = {}, 0
-- The batch's buckets, read once and written once at the end: a key met by several groups
-- of the batch (a zone keyed by $host, a client under two zones) costs one GET and one SET.
local cache, order = {}, {}
local function bucket(key)
  local b = cache[key]
  if b then return b end
  local v = redis.call('GET', key)
  if not v then
    b = {e = nil, l = nil, dirty = false}
  else
    local sp = string.find(v, ' ', 1, true)
    local e = sp and tonumber(string.sub(v, 1, sp - 1))
    local l = sp and tonumber(string.sub(v, sp + 1))
    if not e or not l then
      return nil
    end
    b = {e = e, l = l, dirty = false}
  end
  cache[key] = b
  return b
end
local ex, ls, bs = {}, {}, {}
for g = 1, groups do
  local c = tonumber(ARGV[a])
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  -- the group's first check
  local rz, rx = nil, 0
  for i = 1, n do
    local key = KEYS[k + i - 1]
    local b = bucket(key)
    if not b then
      return redis.error_reply('weir: key ' .. key .. ' is not a weir bucket')
    end
    bs[i] = b
    if b.e == nil then
      ex[i] = 0
      ls[i] = now
    else
      local ms = now - b.l
      if ms < -60000 then ms = 1 elseif ms < 0 then ms = 0 end
      local x = b.e + 1000 - math.floor(tonumber(ARGV[a + 2 * i - 2]) * ms / 1000)
      if x < 0 then x = 0 end
      if x > tonumber(ARGV[a + 2 * i - 1]) then
        rz, rx = i - 1, x
        break
      end
      ex[i] = x
      if ms ~= 0 then ls[i] = now else ls[i] = b.l end
    end
  end
  if rz then
    res[r + 1], res[r + 2], res[r + 3] = 0, rz, rx
    r = r + 3
  else
    -- the others: zone i admits floor((burst - excess) / 1000) more; the first zone with
    -- the least room refuses the one after
    local m = c
    for i = 1, n do
      local room = math.floor((tonumber(ARGV[a + 2 * i - 1]) - ex[i]) / 1000) + 1
      if room < m then
        m, rz = room, i - 1
      end
    end
    r = r + 1
    res[r] = m
    for i = 1, n do
      local b = bs[i]
      if not b.dirty then
        b.dirty = true
        order[#order + 1] = KEYS[k + i - 1]
      end
      b.e = ex[i] + (m - 1) * 1000
      b.l = ls[i]
      b.rate = tonumber(ARGV[a + 2 * i - 2])
      r = r + 1
      res[r] = ex[i]
    end
    if rz then
      res[r + 1], res[r + 2] = rz, ex[rz + 1] + m * 1000
      r = r + 2
    end
  end
  a = a + 2 * n
  k = k + n
end
for _, key in ipairs(order) do
  local b = cache[key]
  redis.call('SET', key, b.e .. ' ' .. b.l, 'PX', math.floor((b.e + 1000) * 1000 / b.rate) + 1)
end
return res
"#;

/// Why a check got no answer from Redis.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No answer within the timeout.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// No connection (refused, closed, reconnecting).
    #[error("Redis connection: {0}")]
    Connect(String),
    /// Redis answered an error (the script failed, NOSCRIPT, OOM, READONLY...).
    #[error("Redis answered an error: {0}")]
    Script(String),
    /// An answer of the wrong shape.
    #[error("Redis answered something that is not the script's answer: {0}")]
    Reply(String),
}

impl StoreError {
    /// The metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::Connect(_) => "connect",
            StoreError::Script(_) => "script",
            StoreError::Reply(_) => "reply",
        }
    }
}

/// Outage tracking and error counters of a store (shown in /metrics).
#[derive(Debug, Default)]
pub struct StoreHealth {
    down: AtomicBool,
    since_ms: AtomicU64,
    errors: [AtomicU64; 4],
    outages: AtomicU64,
    checks: AtomicU64,
}

impl StoreHealth {
    const KINDS: [&'static str; 4] = ["timeout", "connect", "script", "reply"];

    /// Records a failure: the first of an outage is logged as a warning.
    pub fn failed(&self, e: &StoreError, policy: &str) {
        let k = Self::KINDS.iter().position(|k| *k == e.kind()).unwrap_or(0);
        self.errors[k].fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            tracing::warn!(error = %e, on_store_error = policy, "limits store (Redis) is failing: requests get on_store_error until it answers again");
        }
    }

    /// Records that Redis did not answer at start-up ([`crate::Limits::connect`]): the
    /// outage starts now, logged once here (the checks that fail next log nothing more).
    pub fn failed_at_start(&self, e: &StoreError, policy: &str, within: Duration) {
        let k = Self::KINDS.iter().position(|k| *k == e.kind()).unwrap_or(0);
        self.errors[k].fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            self.since_ms.store(now_ms(), Ordering::Relaxed);
            tracing::warn!(error = %e, on_store_error = policy, waited = ?within, "limits store (Redis) does not answer at start-up: serving anyway; requests get on_store_error until it answers");
        }
    }

    /// Records a success: the end of an outage is logged.
    pub fn succeeded(&self) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            let secs =
                now_ms().saturating_sub(self.since_ms.load(Ordering::Relaxed)) as f64 / 1000.0;
            tracing::info!(
                outage_secs = secs,
                "limits store (Redis) answers again: shared limiting resumed"
            );
        }
    }

    /// Whether the store is failing now.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Errors so far by kind (`timeout`, `connect`, `script`, `reply`).
    pub fn errors(&self) -> [(&'static str, u64); 4] {
        std::array::from_fn(|i| (Self::KINDS[i], self.errors[i].load(Ordering::Relaxed)))
    }

    /// Outages so far (a run of failures between two successes).
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// Checks Redis answered.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Internal knobs (not in weir.toml).
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Longest wait for one check, script load included. Default 10 ms.
    pub timeout: Duration,
    /// Longest wait for one connection attempt. Default 250 ms.
    pub connect_timeout: Duration,
    /// Prefix of every bucket's key. Default `weir:lr:`.
    pub prefix: String,
    /// Prefix of every `limit_conn` lease set's key. Default `weir:lc:`.
    pub conn_prefix: String,
    /// How long a `limit_conn` slot taken in Redis lives without renewal: an instance
    /// that dies holds its slots this long. Renewed every third of it. Default 30 s.
    pub lease: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            timeout: Duration::from_millis(10),
            connect_timeout: Duration::from_millis(250),
            prefix: "weir:lr:".into(),
            conn_prefix: "weir:lc:".into(),
            lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug)]
struct Reconnect {
    next_attempt: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

/// What the batching task has sent: script calls and the checks they carried (their
/// ratio is the batch size, in /metrics).
#[derive(Debug, Default)]
pub struct BatchCounters {
    calls: AtomicU64,
    checks: AtomicU64,
}

impl BatchCounters {
    /// Script calls sent for `limit_req` checks, and the checks they carried.
    pub fn get(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.checks.load(Ordering::Relaxed),
        )
    }
}

/// A shared store on Redis (`limit_req` buckets here, `limit_conn` leases in
/// [`crate::redis_conn`]).
pub struct RedisStore {
    client: redis::Client,
    pub(crate) opts: RedisOptions,
    connecting: Arc<AtomicBool>,
    reconnect: Arc<Mutex<Reconnect>>,
    script: redis::Script,
    /// The batching task's inbox (started with the first check).
    batches: std::sync::OnceLock<mpsc::UnboundedSender<Job>>,
    /// What the batching task has sent.
    pub(crate) sent: Arc<BatchCounters>,
    pub(crate) slot: Arc<Mutex<Option<ConnectionManager>>>,
    pub(crate) leases: Arc<crate::redis_conn::Leases>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("opts", &self.opts)
            .finish()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

impl RedisStore {
    /// A store on `url` (checked by weir-config). Connects lazily, on the first check,
    /// from a tokio runtime.
    pub fn new(url: &str, opts: RedisOptions) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Connect(e.to_string()))?;
        Ok(RedisStore {
            client,
            opts,
            connecting: Arc::new(AtomicBool::new(false)),
            reconnect: Arc::new(Mutex::new(Reconnect {
                next_attempt: Instant::now(),
                backoff: BACKOFF_MIN,
                last_error: None,
            })),
            script: redis::Script::new(SCRIPT),
            batches: std::sync::OnceLock::new(),
            sent: Arc::new(BatchCounters::default()),
            slot: Arc::new(Mutex::new(None)),
            leases: Arc::new(crate::redis_conn::Leases::new()),
        })
    }

    /// Waits (at most `within`) until a connection is made and the scripts are loaded, so
    /// the first checks need not wait for either. `Err`: the last reason it could not.
    pub async fn connect(&self, within: Duration) -> Result<(), StoreError> {
        let deadline = tokio::time::Instant::now() + within;
        // bounded: every turn waits 10 ms, and the loop ends at the deadline
        let conn = loop {
            if let Ok(c) = self.connection() {
                break c;
            }
            if tokio::time::Instant::now() >= deadline {
                let r = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
                return Err(StoreError::Connect(r.last_error.clone().unwrap_or_else(
                    || "no connection attempt finished in time".into(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let rest = deadline.saturating_duration_since(tokio::time::Instant::now());
        let load = async {
            let mut c = conn.clone();
            self.script.prepare_invoke().load_async(&mut c).await?;
            crate::redis_conn::load_scripts(&mut c).await
        };
        match tokio::time::timeout(rest.max(self.opts.timeout), load).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(store_error(e)),
            Err(_) => Err(StoreError::Timeout(rest)),
        }
    }

    /// The Redis key of a zone's bucket for `key`.
    pub fn bucket_key(&self, zone: &str, key: &str) -> String {
        let mut k = String::with_capacity(self.opts.prefix.len() + zone.len() + 1 + key.len());
        k.push_str(&self.opts.prefix);
        k.push_str(zone);
        k.push(':');
        k.push_str(key);
        k
    }

    pub(crate) fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.slot.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        self.start_connecting();
        Err(StoreError::Connect(
            "not connected (connecting in the background)".into(),
        ))
    }

    /// One bounded connection attempt in the background, at most one at a time, no
    /// sooner than the backoff allows.
    fn start_connecting(&self) {
        {
            let r = self.reconnect.lock().unwrap_or_else(|p| p.into_inner());
            if Instant::now() < r.next_attempt {
                return;
            }
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.connecting.store(false, Ordering::Release);
            return;
        };
        let client = self.client.clone();
        let slot = self.slot.clone();
        let reconnect = self.reconnect.clone();
        let connecting = self.connecting.clone();
        let timeout = self.opts.connect_timeout;
        handle.spawn(async move {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(timeout)
                .set_number_of_retries(1)
                .set_exponent_base(2)
                .set_factor(100)
                .set_max_delay(BACKOFF_MAX.as_millis() as u64);
            let attempt = tokio::time::timeout(
                timeout * 2,
                ConnectionManager::new_with_config(client, config),
            )
            .await;
            let mut r = reconnect.lock().unwrap_or_else(|p| p.into_inner());
            match attempt {
                Ok(Ok(c)) => {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
                    r.backoff = BACKOFF_MIN;
                    r.last_error = None;
                }
                Ok(Err(e)) => {
                    r.last_error = Some(e.to_string());
                    r.next_attempt = Instant::now() + r.backoff;
                    r.backoff = (r.backoff * 2).min(BACKOFF_MAX);
                }
                Err(_) => {
                    r.last_error = Some(format!("no connection within {:?}", timeout * 2));
                    r.next_attempt = Instant::now() + r.backoff;
                    r.backoff = (r.backoff * 2).min(BACKOFF_MAX);
                }
            }
            connecting.store(false, Ordering::Release);
        });
    }

    /// Checks one request against `zones` (zone name, key, rule), in the route's order:
    /// NGINX's multi-zone algorithm in one script. Bounded by the timeout.
    pub async fn check(&self, zones: &[(&str, &str, Rule)]) -> Result<Decision, StoreError> {
        if zones.is_empty() {
            return Ok(Decision::NONE);
        }
        // Not connected: fail fast (and connect in the background). Connected: the batching
        // task uses the connection (no clone of it here, on every request's path).
        if self
            .slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            self.start_connecting();
            return Err(StoreError::Connect(
                "not connected (connecting in the background)".into(),
            ));
        }
        let Some(batches) = self.batches() else {
            return Err(StoreError::Connect("no tokio runtime".into()));
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            keys: zones
                .iter()
                .map(|(z, k, _)| self.bucket_key(z, k))
                .collect(),
            rules: zones.iter().map(|z| z.2).collect(),
            deadline: Instant::now() + self.opts.timeout,
            reply,
        };
        if batches.send(job).is_err() {
            return Err(StoreError::Connect("the batching task stopped".into()));
        }
        // No timer here: the batching task answers every check by its deadline (one
        // timer per call, not one per request).
        match answer.await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Connect("the batching task stopped".into())),
        }
    }

    /// The batching task's inbox, started on first use (from a tokio runtime).
    fn batches(&self) -> Option<&mpsc::UnboundedSender<Job>> {
        if let Some(tx) = self.batches.get() {
            return Some(tx);
        }
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (tx, rx) = mpsc::unbounded_channel();
        if self.batches.set(tx).is_ok() {
            handle.spawn(run_batches(
                rx,
                self.slot.clone(),
                self.script.clone(),
                self.opts.timeout,
                self.sent.clone(),
            ));
        }
        self.batches.get()
    }
}

/// The most checks in one script call.
pub const MAX_BATCH: usize = 64;

/// Script calls on their way at once; the checks arriving meanwhile gather for the next.
/// One: on /hello with Redis on the same two cores, two in flight made smaller batches
/// (more script calls, more of Redis's CPU) and served no more (bench/RESULTS.md, "Limits").
pub const MAX_IN_FLIGHT: usize = 1;

/// One request's check, waiting for its batch.
struct Job {
    keys: Vec<String>,
    rules: Vec<Rule>,
    /// Answered `StoreError::Timeout` by then, whatever happens to its call.
    deadline: Instant,
    reply: oneshot::Sender<Result<Decision, StoreError>>,
}

/// The batching task: takes what has arrived (at least one check) once a call may leave,
/// sends it as one script call on a task of its own, and goes on; each check is answered
/// by its call, or at its deadline (while it waits for a call to leave too). It ends when
/// the store is dropped (its inbox closes). A check whose caller has given up (its client
/// gone) is left out.
async fn run_batches(
    mut inbox: mpsc::UnboundedReceiver<Job>,
    slot: Arc<Mutex<Option<ConnectionManager>>>,
    script: redis::Script,
    timeout: Duration,
    sent: Arc<BatchCounters>,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    // Checks in arrival order, so by deadline too (every check has the same timeout).
    let mut pending: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    loop {
        if pending.is_empty() {
            match inbox.recv().await {
                Some(j) => pending.push_back(j),
                None => return,
            }
        }
        while let Ok(j) = inbox.try_recv() {
            pending.push_back(j);
        }
        let oldest = pending.front().map_or_else(Instant::now, |j| j.deadline);
        let permit = tokio::select! {
            biased;
            p = in_flight.clone().acquire_owned() => match p {
                Ok(p) => Some(p),
                Err(_) => return,
            },
            () = tokio::time::sleep_until(oldest.into()) => None,
        };
        if permit.is_some() {
            // A call may leave. First let the tasks already ready to run on this runtime
            // go (on a busy one, requests about to reach their checks; on an idle one,
            // none, and no wait), again while that brings more checks, a few times at
            // most: larger batches, fewer calls (on /hello under load, about 9 checks a
            // call instead of 6-7), and no wait for anything not yet ready.
            for _ in 0..4 {
                tokio::task::yield_now().await;
                let before = pending.len();
                while let Ok(j) = inbox.try_recv() {
                    pending.push_back(j);
                }
                if pending.len() == before {
                    break;
                }
            }
        }
        let now = Instant::now();
        while let Some(j) = pending.front() {
            if j.deadline > now && !j.reply.is_closed() {
                break;
            }
            if let Some(j) = pending.pop_front() {
                let _ = j.reply.send(Err(StoreError::Timeout(timeout)));
            }
        }
        let Some(permit) = permit else { continue };
        let take = pending.len().min(MAX_BATCH);
        let jobs: Vec<Job> = pending
            .drain(..take)
            .filter(|j| !j.reply.is_closed())
            .collect();
        if jobs.is_empty() {
            continue;
        }
        sent.calls.fetch_add(1, Ordering::Relaxed);
        sent.checks.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let conn = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let script = script.clone();
        tokio::spawn(async move {
            let _permit = permit;
            call(jobs, conn, &script, timeout, now).await;
        });
    }
}

/// One script call for `jobs` (each answered), bounded by the earliest deadline among them.
/// Identical checks (the same buckets under the same rules: one busy client, a zone keyed
/// by `$host`) go as one group: the script's work and the call's size are per group, so a
/// flood from one key costs Redis about what one check does.
async fn call(
    jobs: Vec<Job>,
    conn: Option<ConnectionManager>,
    script: &redis::Script,
    timeout: Duration,
    now: Instant,
) {
    let bound = jobs
        .iter()
        .map(|j| j.deadline.saturating_duration_since(now))
        .min()
        .unwrap_or(timeout);
    let groups = group(jobs);
    let result = match conn {
        None => Err(StoreError::Connect("not connected".into())),
        Some(mut conn) => {
            let mut inv = script.prepare_invoke();
            inv.arg(groups.len());
            for g in &groups {
                let first = &g[0];
                inv.arg(g.len()).arg(first.rules.len());
                for (key, rule) in first.keys.iter().zip(&first.rules) {
                    inv.key(key);
                    inv.arg(rule.rate).arg(rule.burst);
                }
            }
            match tokio::time::timeout(bound, inv.invoke_async::<Value>(&mut conn)).await {
                Err(_) => Err(StoreError::Timeout(timeout)),
                Ok(Err(e)) => Err(store_error(e)),
                Ok(Ok(v)) => {
                    let shape: Vec<(usize, &[Rule])> =
                        groups.iter().map(|g| (g.len(), &g[0].rules[..])).collect();
                    parse_reply(&v, &shape)
                }
            }
        }
    };
    match result {
        Ok(decisions) => {
            for (j, d) in groups.into_iter().flatten().zip(decisions) {
                let _ = j.reply.send(Ok(d));
            }
        }
        Err(e) => {
            for j in groups.into_iter().flatten() {
                let _ = j.reply.send(Err(e.clone()));
            }
        }
    }
}

/// `jobs` in groups of identical checks (the same keys and rules), each in arrival order,
/// the groups in the order of their first check. A batch holds at most [`MAX_BATCH`]
/// checks, so a linear search is the cheap way.
fn group(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut groups: Vec<Vec<Job>> = Vec::new();
    for j in jobs {
        match groups
            .iter_mut()
            .find(|g| g[0].keys == j.keys && g[0].rules == j.rules)
        {
            Some(g) => g.push(j),
            None => groups.push(vec![j]),
        }
    }
    groups
}

/// A client error as a [`StoreError`]: the connection's, or Redis's answer.
pub(crate) fn store_error(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StoreError::Connect(e.to_string())
    } else {
        StoreError::Script(e.to_string())
    }
}

/// Reads the script's answer for a batch of groups, each `(checks, rules)`: one decision per
/// check, group after group, in order. Anything else is [`StoreError::Reply`], never a panic.
pub fn parse_reply(v: &Value, groups: &[(usize, &[Rule])]) -> Result<Vec<Decision>, StoreError> {
    let bad = || StoreError::Reply(format!("{v:?}").chars().take(200).collect());
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let mut ints = items.iter().map(|it| match it {
        Value::Int(i) if *i >= 0 => Some(*i as u64),
        _ => None,
    });
    let mut next = || ints.next().flatten().ok_or_else(bad);
    let mut out = Vec::with_capacity(groups.iter().map(|g| g.0).sum());
    let mut first = Vec::new();
    for &(checks, rules) in groups {
        let admitted = next()? as usize;
        if admitted > checks || rules.is_empty() {
            return Err(bad());
        }
        first.clear();
        if admitted > 0 {
            for _ in rules {
                first.push(next()?);
            }
        }
        let refusal = if admitted < checks {
            let (zone, excess) = (next()? as usize, next()?);
            if zone >= rules.len() {
                return Err(bad());
            }
            Some((zone, excess))
        } else {
            None
        };
        expand_group(rules, checks, admitted, &first, refusal, &mut out);
    }
    if ints.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// The decisions of a group of `checks` identical checks of which the first `admitted`
/// were admitted, the first with `first` (excess per zone), each next one 1000 more in
/// every zone (the same millisecond); the rest refused by `refusal` (zone, excess).
pub fn expand_group(
    rules: &[Rule],
    checks: usize,
    admitted: usize,
    first: &[u64],
    refusal: Option<(usize, u64)>,
    out: &mut Vec<Decision>,
) {
    let mut excesses = first.to_vec();
    for j in 0..admitted {
        if j > 0 {
            for e in &mut excesses {
                *e += 1000;
            }
        }
        out.push(Decision::charged(rules, &excesses));
    }
    if let Some((zone, excess)) = refusal {
        for _ in admitted..checks {
            out.push(Decision::refused(rules, zone, excess));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit_req::{check, Bucket, DelayMode, VecBuckets, Verdict};

    fn ints(v: &[i64]) -> Value {
        Value::Array(v.iter().map(|&i| Value::Int(i)).collect())
    }

    fn rule(rate: &str, burst: u64, mode: DelayMode) -> Rule {
        Rule::new(weir_config::units::parse_rate(rate).unwrap(), burst, mode)
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors() {
        let r = rule("10r/s", 2, DelayMode::All);
        let rules = [r, r];
        // one group of one check, admitted with excesses 0 and 1000
        let d = parse_reply(&ints(&[1, 0, 1000]), &[(1, &rules)]).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].verdict, Verdict::Delay(Duration::from_millis(100)));
        // one group of one check, refused by the second zone
        let d = parse_reply(&ints(&[0, 1, 3000]), &[(1, &rules)]).unwrap();
        assert_eq!(d[0].zone, Some(1));
        assert!(matches!(d[0].verdict, Verdict::Refuse { .. }));
        for garbage in [
            Value::Okay,
            Value::Nil,
            Value::Int(1),
            ints(&[]),
            // the refusing zone does not exist
            ints(&[0, 7, 1]),
            // one excess missing, one too many
            ints(&[1, 0]),
            ints(&[1, 0, 0, 0]),
            // more admitted than checks
            ints(&[2, 0, 0]),
            ints(&[1, 0, -1]),
            Value::Array(vec![Value::Int(1), Value::Nil, Value::Int(0)]),
            Value::SimpleString("OK".into()),
        ] {
            assert!(
                matches!(
                    parse_reply(&garbage, &[(1, &rules)]),
                    Err(StoreError::Reply(_))
                ),
                "{garbage:?}"
            );
        }
    }

    /// What the script answers for a group, computed as it does (first check by NGINX's
    /// arithmetic, the others closed-form), from the pure `check` for the first one.
    fn script_answer(
        buckets: &mut VecBuckets,
        rules: &[Rule],
        checks: usize,
        now: u64,
    ) -> Vec<i64> {
        let first = check(buckets, rules, || now);
        if let Verdict::Refuse { .. } = first.verdict {
            return vec![0, first.zone.unwrap() as i64, first.excess as i64];
        }
        let ex: Vec<u64> = buckets
            .0
            .iter()
            .map(|b| b.map_or(0, |b| b.excess))
            .collect();
        let mut m = checks;
        let mut refusing = None;
        for (i, r) in rules.iter().enumerate() {
            let room = ((r.burst - ex[i]) / 1000 + 1) as usize;
            if room < m {
                m = room;
                refusing = Some(i);
            }
        }
        let mut out = vec![m as i64];
        out.extend(ex.iter().map(|&e| e as i64));
        if let Some(i) = refusing {
            out.extend([i as i64, (ex[i] + m as u64 * 1000) as i64]);
        }
        out
    }

    /// A group's closed form gives each check the decision NGINX's algorithm gives it
    /// when the checks come one after the other in one millisecond: every delay mode,
    /// one and two zones, fresh and half-full buckets, groups smaller and larger than the
    /// burst.
    #[test]
    fn a_group_of_identical_checks_decides_as_one_check_after_the_other() {
        let zone_sets: Vec<Vec<Rule>> = vec![
            vec![rule("10r/s", 0, DelayMode::NoDelay)],
            vec![rule("10r/s", 5, DelayMode::NoDelay)],
            vec![rule("2r/s", 4, DelayMode::All)],
            vec![rule("1r/m", 6, DelayMode::After(2))],
            vec![
                rule("10r/s", 3, DelayMode::All),
                rule("1r/s", 5, DelayMode::NoDelay),
            ],
            vec![
                rule("5r/s", 5, DelayMode::After(1)),
                rule("5r/s", 2, DelayMode::All),
            ],
        ];
        let now = 1_000_000;
        for rules in &zone_sets {
            for prior in [None, Some(0), Some(1500), Some(4000)] {
                for checks in [1, 2, 3, 7, 12] {
                    let start: Vec<Option<Bucket>> = rules
                        .iter()
                        .map(|_| {
                            prior.map(|excess| Bucket {
                                excess,
                                last: now - 40,
                            })
                        })
                        .collect();
                    let mut one_by_one = VecBuckets(start.clone());
                    let want: Vec<Decision> = (0..checks)
                        .map(|_| check(&mut one_by_one, rules, || now))
                        .collect();
                    let answer = script_answer(&mut VecBuckets(start), rules, checks, now);
                    let got = parse_reply(&ints(&answer), &[(checks, rules)]).unwrap();
                    assert_eq!(got, want, "{rules:?} prior {prior:?} x{checks}: {answer:?}");
                }
            }
        }
    }
}
