//! The checks: pure functions from [`Facts`] to findings. [`run`] calls them all.
//!
//! The timeouts are checked per *scope*: the server's defaults and each `[[route]]` with
//! its own `request_timeout` or `harakiri`, because a route's values replace the
//! server's for its requests.

use std::time::Duration;

use weir_config::{ListenAddr, Preload};

use crate::facts::{AppFacts, DbFacts, Facts};
use crate::{Finding, Report, Severity, Skipped};

/// Share of `max_connections` kept for other clients (at least [`MIN_DB_RESERVE`]): admin
/// sessions, migrations, cron jobs, monitoring, replication, `weir db guard`. A pool sized
/// to the last slot leaves an operator unable to connect during the incident.
pub const DB_RESERVE_PERCENT: u64 = 10;
/// The least number of connections kept for other clients.
pub const MIN_DB_RESERVE: u64 = 10;
/// Descriptors the master needs besides listeners, workers and clients (standard streams,
/// the access log, epoll, signalfd, the runtime's own, the database and Redis clients).
pub const NOFILE_BASE: u64 = 64;
/// Descriptors the master holds per worker (its socket, its pidfd, its claim words' memfd,
/// a spare for the replacement started before the old one is reaped).
pub const NOFILE_PER_WORKER: u64 = 4;

/// Runs every check. Errors come first, then warnings, each in the order below.
pub fn run(f: &Facts) -> Report {
    let mut r = Report::default();
    timeout_chain(f, &mut r);
    statement_timeout(f, &mut r);
    wait_timeout(f, &mut r);
    db_connections(f, &mut r);
    memory(f, &mut r);
    reload_on_rss(f, &mut r);
    backlog(f, &mut r);
    nofile(f, &mut r);
    preload(f, &mut r);
    safeguards(f, &mut r);
    admin_listen(f, &mut r);
    r.findings.sort_by_key(|x| x.severity);
    r
}

fn skip(r: &mut Report, check: &'static str, reason: impl Into<String>) {
    r.skipped.push(Skipped {
        check,
        reason: reason.into(),
    });
}

/// A duration as weir.toml writes it ("30s", "1.5s", "250ms").
pub fn dur(d: Duration) -> String {
    format!("{d:?}")
}

/// Bytes as MiB (or GiB) with one decimal.
pub fn bytes(b: u64) -> String {
    let mib = b as f64 / (1u64 << 20) as f64;
    if mib >= 10240.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// A duration value under its key, e.g. `route[0].harakiri`.
#[derive(Debug, Clone)]
struct Keyed {
    value: Duration,
    key: String,
}

/// One set of timeouts requests run under: the server's, or a route's. `harakiri` is what
/// ends a request's run: `harakiri` for weir's own workers, `upstream.read_timeout` in
/// front of an external app server.
#[derive(Debug, Clone)]
struct Scope {
    /// `the server` or `route "/reports"`.
    name: String,
    request_timeout: Option<Keyed>,
    harakiri: Option<Keyed>,
}

fn scopes(f: &Facts) -> Vec<Scope> {
    let c = &f.config;
    let keyed = |v: Option<weir_config::Seconds>, key: &str| {
        v.map(|s| Keyed {
            value: s.as_duration(),
            key: key.to_owned(),
        })
    };
    let server_rt = keyed(c.server.request_timeout, "server.request_timeout");
    // In front of an external app server, its read timeout is what ends a request's run.
    let app_hk = match &c.upstream {
        Some(u) => keyed(Some(u.read_timeout), "upstream.read_timeout"),
        None => keyed(c.app.harakiri, "app.harakiri"),
    };
    let mut out = vec![Scope {
        name: "the server's defaults".into(),
        request_timeout: server_rt.clone(),
        harakiri: app_hk.clone(),
    }];
    for (i, route) in c.route.iter().enumerate() {
        if route.request_timeout.is_none() && route.harakiri.is_none() {
            continue;
        }
        out.push(Scope {
            name: format!("route {:?}", route.path),
            request_timeout: keyed(
                route.request_timeout,
                &format!("route[{i}].request_timeout"),
            )
            .or_else(|| server_rt.clone()),
            harakiri: match c.upstream {
                Some(_) => app_hk.clone(),
                None => keyed(route.harakiri, &format!("route[{i}].harakiri"))
                    .or_else(|| app_hk.clone()),
            },
        });
    }
    out
}

/// Whether weir runs the app itself (`[app]`), rather than fronting an `[upstream]`.
fn runs_app(f: &Facts) -> bool {
    f.config.upstream.is_none() && f.config.app.module.is_some()
}

/// `timeout_chain`: the client's timeout > `request_timeout` > `harakiri` (the last link,
/// harakiri at most request_timeout, is refused at load time by weir-config).
pub fn timeout_chain(f: &Facts, r: &mut Report) {
    const CHECK: &str = "timeout_chain";
    let Some(client) = f.client_timeout else {
        skip(
            r,
            CHECK,
            "no --client-timeout: give the client's or load balancer's timeout (e.g. --client-timeout 60s) to check request_timeout and harakiri against it",
        );
        return;
    };
    let queue = f.config.queue.timeout.as_duration();
    for s in scopes(f) {
        match (&s.request_timeout, &s.harakiri) {
            (Some(rt), _) if rt.value >= client => r.findings.push(Finding::error(
                CHECK,
                format!(
                    "{} = {} is not shorter than the client's timeout ({}, for {}): the client gives up first and sees its own timeout, while weir goes on queueing and running the request for nobody and its 504 never arrives",
                    rt.key, dur(rt.value), dur(client), s.name
                ),
                format!(
                    "set {} below {} (a few seconds less, so weir's attributed 504 reaches the client), and harakiri below that",
                    rt.key, dur(client)
                ),
            )),
            (Some(_), _) => {}
            (None, Some(hk)) if queue + hk.value >= client => r.findings.push(Finding::error(
                CHECK,
                format!(
                    "no request_timeout for {}: a request may wait queue.timeout ({}) and then run {} = {}, {} in all, not shorter than the client's timeout ({}): the client gives up first while the work goes on",
                    s.name, dur(queue), hk.key, dur(hk.value), dur(queue + hk.value), dur(client)
                ),
                format!(
                    "set server.request_timeout below {} (it bounds the wait and the run together, and reaches the app as environ[\"weir.deadline\"])",
                    dur(client)
                ),
            )),
            (None, Some(_)) => r.findings.push(Finding::warning(
                CHECK,
                format!(
                    "no request_timeout for {}: requests have no deadline, so the app cannot bound its queries by the time left (environ[\"weir.deadline\"]) and a request whose client left is still started",
                    s.name
                ),
                format!("set server.request_timeout below the client's timeout ({})", dur(client)),
            )),
            (None, None) if runs_app(f) => r.findings.push(Finding::error(
                CHECK,
                format!(
                    "neither request_timeout nor harakiri is set for {}: nothing ends a request before the client's timeout ({}); the client gives up and the worker keeps running the request, under load every worker ends up busy for clients that have gone",
                    s.name, dur(client)
                ),
                format!(
                    "set server.request_timeout below {} and app.harakiri at most that",
                    dur(client)
                ),
            )),
            (None, None) => {}
        }
    }
}

/// `statement_timeout`: the database's statement limit below harakiri (or the request's
/// deadline), so a statement does not go on after its worker was killed.
pub fn statement_timeout(f: &Facts, r: &mut Report) {
    const CHECK: &str = "statement_timeout";
    let Some(db) = &f.db else {
        skip(
            r,
            CHECK,
            "no --database-url: the database's statement limit was not read",
        );
        return;
    };
    // The innermost bound of each scope: harakiri, else the request's deadline.
    let bounds: Vec<(Keyed, String)> = scopes(f)
        .into_iter()
        .filter_map(|s| Some((s.harakiri.or(s.request_timeout)?, s.name)))
        .collect();
    match &db.statement_limit {
        Some(limit) => {
            for (inner, scope) in bounds.iter().filter(|(b, _)| limit.value >= b.value) {
                r.findings.push(Finding::error(
                    CHECK,
                    format!(
                        "the database lets a statement run {} ({} on {}), not shorter than {} = {} ({scope}): when weir ends that request the statement goes on in the database, holding its locks and a connection, and under load killed requests pile up there",
                        dur(limit.value), limit.variable, db.target, inner.key, dur(inner.value)
                    ),
                    statement_fix(&limit.variable, inner.value),
                ));
            }
        }
        None => {
            // One warning, against the shortest bound (the fix must fit every scope).
            if let Some((inner, scope)) = bounds.iter().min_by_key(|(b, _)| b.value) {
                r.findings.push(Finding::warning(
                    CHECK,
                    format!(
                        "the database on {} has no statement time limit (max_statement_time / max_execution_time are 0): a statement outlives {} = {} ({scope}) when weir ends its request, holding its locks and a connection",
                        db.target, inner.key, dur(inner.value)
                    ),
                    statement_fix(statement_var(db), inner.value),
                ));
            }
        }
    }
}

fn statement_var(db: &DbFacts) -> &'static str {
    if db.version.to_ascii_lowercase().contains("mariadb") {
        "max_statement_time"
    } else {
        "max_execution_time"
    }
}

fn statement_fix(var: &str, below: Duration) -> String {
    let secs = below.as_secs_f64();
    let value = if var == "max_execution_time" {
        format!(
            "{} (milliseconds; it bounds SELECTs only)",
            (secs * 900.0) as u64
        )
    } else {
        format!("{:.1} (seconds)", secs * 0.9)
    };
    format!(
        "set {var} below {} (e.g. SET GLOBAL {var} = {value}, and in the server's config file), or per session in the app from environ[\"weir.deadline\"]; `weir db guard --busy-time` ends long statements on servers without a limit",
        dur(below)
    )
}

/// `wait_timeout`: a connection idle longer than the server's `wait_timeout` is closed by
/// the server; a request that may run longer can find its connection gone mid-request.
pub fn wait_timeout(f: &Facts, r: &mut Report) {
    const CHECK: &str = "wait_timeout";
    let Some(db) = &f.db else {
        skip(
            r,
            CHECK,
            "no --database-url: the database's wait_timeout was not read",
        );
        return;
    };
    let longest = scopes(f)
        .into_iter()
        .filter_map(|s| s.request_timeout.or(s.harakiri))
        .max_by_key(|k| k.value);
    if let Some(l) = longest {
        if db.wait_timeout <= l.value {
            r.findings.push(Finding::warning(
                CHECK,
                format!(
                    "the database closes connections idle for wait_timeout = {} ({}), no longer than {} = {}: a request that waits on something else between two queries can find its connection closed under it (\"MySQL server has gone away\"), and a worker's pooled connection dies whenever the worker sits idle that long",
                    dur(db.wait_timeout), db.target, l.key, dur(l.value)
                ),
                format!(
                    "raise wait_timeout well above {} (SET GLOBAL wait_timeout, and in the server's config), and have the app's pool check or recycle connections sooner (SQLAlchemy pool_pre_ping / pool_recycle below wait_timeout)",
                    dur(l.value)
                ),
            ));
        }
    }
}

/// Connections per worker and how that number was had.
fn per_worker(f: &Facts) -> Option<(u64, String)> {
    if let Some(n) = f.pool_size {
        return Some((n, format!("{n} per worker (--pool-size)")));
    }
    match f.app.as_ref()?.db_connections? {
        0 => Some((
            1,
            "1 per worker (none of the import's connections was seen in the process list: it opened none, or it connects as another user and the doctor's user lacks PROCESS; an app that uses the database holds at least one while it serves: pass --pool-size for its pool's real size)".into(),
        )),
        n => Some((n, format!("{n} per worker (measured: the app's import opened {n})"))),
    }
}

/// `db_connections`: workers x connections per worker against `max_connections`, with
/// room for other clients and for a reload's second generation.
pub fn db_connections(f: &Facts, r: &mut Report) {
    const CHECK: &str = "db_connections";
    let Some(db) = &f.db else {
        skip(r, CHECK, "no --database-url: max_connections was not read");
        return;
    };
    if !runs_app(f) {
        skip(r, CHECK, "no [app]: weir runs no workers of its own");
        return;
    }
    let Some((per, how)) = per_worker(f) else {
        skip(
            r,
            CHECK,
            "the app was not imported (--no-import): pass --pool-size N, the connections one worker holds",
        );
        return;
    };
    let workers = f.config.app.workers as u64;
    let need = workers * per;
    let (limit, limit_name) = match db.max_user_connections {
        u if u > 0 && u < db.max_connections => (u, "max_user_connections"),
        _ => (db.max_connections, "max_connections"),
    };
    let reserve = (limit * DB_RESERVE_PERCENT)
        .div_ceil(100)
        .max(MIN_DB_RESERVE);
    let room = limit.saturating_sub(reserve);
    let count = format!("{workers} workers x {how} = {need} connections");
    if need > room {
        r.findings.push(Finding::error(
            CHECK,
            format!(
                "{count}, over what {} allows weir ({limit_name} = {limit}, less {reserve} kept for other clients: admin sessions, migrations, monitoring, replication): under load the last workers get \"Too many connections\" (1040) and their requests fail",
                db.target
            ),
            format!(
                "keep app.workers x pool size at most {room}: fewer workers or a smaller pool, or raise {limit_name} (SET GLOBAL {limit_name}, and in the server's config) to at least {}",
                need + reserve
            ),
        ));
    } else if 2 * need > room {
        r.findings.push(Finding::warning(
            CHECK,
            format!(
                "{count}; during a reload (SIGHUP) the new generation connects before the old one leaves, {} in all, over what {} allows weir ({limit_name} = {limit}, less {reserve} kept for other clients): reloads under load can fail connections",
                2 * need, db.target
            ),
            format!(
                "raise {limit_name} to at least {}, or keep app.workers x pool size at most {}",
                2 * need + reserve,
                room / 2
            ),
        ));
    }
}

/// `memory`: workers x a worker's RSS after import against the machine's memory.
pub fn memory(f: &Facts, r: &mut Report) {
    const CHECK: &str = "memory";
    if !runs_app(f) {
        return;
    }
    let (Some(m), Some(app)) = (&f.machine, &f.app) else {
        skip(
            r,
            CHECK,
            "the app was not imported (--no-import), so a worker's memory is unknown",
        );
        return;
    };
    let (procs, total) = worker_memory(f, app);
    let (limit, limit_name) = m.memory_limit();
    let workers = f.config.app.workers as u64;
    let forked = procs > workers;
    let (who, bound) = if forked {
        (
            format!("{procs} processes ({workers} workers and the zygote they are forked from)"),
            " (an upper bound: forked workers share the import's pages until they write them)",
        )
    } else {
        (format!("{procs} processes ({workers} workers)"), "")
    };
    let what = format!(
        "{who} x {} (a worker's RSS right after importing the app) = {}{bound}",
        bytes(app.rss),
        bytes(total),
    );
    if total > limit {
        r.findings.push(Finding::error(
            CHECK,
            format!(
                "{what}, more than {limit_name} ({}): the workers cannot all start, or the OOM killer ends them under load",
                bytes(limit)
            ),
            format!(
                "run at most {} workers here (app.workers), or give the machine more memory",
                (limit / app.rss.max(1)).saturating_sub(procs - workers).max(1)
            ),
        ));
    } else if total > m.mem_available {
        r.findings.push(Finding::warning(
            CHECK,
            format!(
                "{what}, more than the memory available now (MemAvailable {} of {}): starting them pushes out the page cache or other services (if this weir already runs, its workers are part of what is used)",
                bytes(m.mem_available), bytes(limit)
            ),
            "free memory on the machine, or run fewer workers (app.workers)",
        ));
    }
}

/// The processes that hold the app (the workers, and the zygote when preload forks) and
/// their memory: an upper bound when forked, since forked workers share the import's pages
/// until they write them.
fn worker_memory(f: &Facts, app: &AppFacts) -> (u64, u64) {
    let workers = f.config.app.workers as u64;
    let zygote = match f.config.app.preload {
        Preload::On => 1,
        Preload::Auto if app.fork_findings.is_none() => 1,
        _ => 0,
    };
    (workers + zygote, (workers + zygote) * app.rss)
}

/// `reload_on_rss`: unset (nothing recycles a leaking worker), below a fresh worker's RSS
/// (every worker recycles after each request), or too high for the machine.
pub fn reload_on_rss(f: &Facts, r: &mut Report) {
    const CHECK: &str = "reload_on_rss";
    if !runs_app(f) {
        return;
    }
    let app = &f.config.app;
    let Some(limit) = app.reload_on_rss else {
        let hint = match &f.app {
            Some(a) => format!(
                " (a fresh worker is {}; e.g. reload_on_rss = \"{}MiB\")",
                bytes(a.rss),
                (a.rss * 2) >> 20
            ),
            None => String::new(),
        };
        r.findings.push(Finding::warning(
            CHECK,
            "app.reload_on_rss is unset: a worker whose memory grows (a leak, a cache without bound, one huge response) keeps it until the OOM killer ends it, with the requests it was serving",
            format!("set app.reload_on_rss to about twice a fresh worker's RSS{hint}"),
        ));
        return;
    };
    let Some(a) = &f.app else {
        return;
    };
    if limit.bytes() <= a.rss {
        r.findings.push(Finding::error(
            CHECK,
            format!(
                "app.reload_on_rss = {} is not above a worker's RSS right after import ({}): every worker is recycled after each request, and under load the pool spends its time importing the app",
                bytes(limit.bytes()),
                bytes(a.rss)
            ),
            format!("set app.reload_on_rss well above {} (e.g. \"{}MiB\")", bytes(a.rss), (a.rss * 2) >> 20),
        ));
        return;
    }
    if let Some(m) = &f.machine {
        let (mem, mem_name) = m.memory_limit();
        let workers = app.workers as u64;
        if workers * limit.bytes() > mem {
            r.findings.push(Finding::warning(
                CHECK,
                format!(
                    "{workers} workers may each grow to app.reload_on_rss = {} before they are recycled, {} in all, more than {mem_name} ({}): the OOM killer may act before reload_on_rss does",
                    bytes(limit.bytes()),
                    bytes(workers * limit.bytes()),
                    bytes(mem)
                ),
                format!("set app.reload_on_rss to at most {} (the memory over app.workers)", bytes(mem / workers.max(1))),
            ));
        }
    }
}

/// `backlog`: `server.backlog` above `net.core.somaxconn`, which the kernel silently caps
/// it at.
pub fn backlog(f: &Facts, r: &mut Report) {
    const CHECK: &str = "backlog";
    let Some(max) = f.machine.as_ref().and_then(|m| m.somaxconn) else {
        skip(r, CHECK, "net.core.somaxconn could not be read");
        return;
    };
    let b = u64::from(f.config.server.backlog);
    if b > max {
        r.findings.push(Finding::warning(
            CHECK,
            format!(
                "server.backlog = {b} is above net.core.somaxconn ({max}): the kernel silently caps every listen backlog at {max}, so a burst of connections beyond that is refused (or its SYNs dropped) before weir sees it"
            ),
            format!(
                "raise the kernel's limit (sysctl -w net.core.somaxconn={b}, and a file in /etc/sysctl.d/), or lower server.backlog to {max}"
            ),
        ));
    }
}

/// The descriptors the master needs: listeners, workers, the clients it may hold (queued,
/// in service, and as many again idle on keep-alive), upstream connections.
pub fn nofile_needed(f: &Facts) -> u64 {
    let c = &f.config;
    let listeners = (c.server.listen.len() + c.server.uwsgi_listen.len()) as u64
        + u64::from(c.admin.listen.is_some());
    let (workers, upstream) = match &c.upstream {
        Some(u) => (0, (u.servers.len() * u.max_conns) as u64),
        None => (c.app.workers as u64, 0),
    };
    let slots = if workers > 0 { workers } else { upstream };
    let clients = c.queue.effective_max_size(slots as usize) as u64 + slots;
    NOFILE_BASE + listeners + NOFILE_PER_WORKER * workers + upstream + 2 * clients
}

/// `nofile`: `ulimit -n` below what the listeners, workers and connections need.
pub fn nofile(f: &Facts, r: &mut Report) {
    const CHECK: &str = "nofile";
    let Some(m) = &f.machine else {
        skip(r, CHECK, "the open-files limit could not be read");
        return;
    };
    let Some(soft) = m.nofile_soft else {
        skip(r, CHECK, "the open-files limit could not be read");
        return;
    };
    let need = nofile_needed(f);
    if soft < need {
        let hard = match m.nofile_hard {
            Some(h) if h >= need => format!(" (the hard limit, {h}, allows it: ulimit -n {need})"),
            _ => String::new(),
        };
        r.findings.push(Finding::warning(
            CHECK,
            format!(
                "ulimit -n is {soft}, below the {need} descriptors weir may need ({NOFILE_BASE} of its own, its listeners, {NOFILE_PER_WORKER} per worker, and twice the clients it may hold: queue.max_size + workers, plus as many idle on keep-alive): past it accept() fails with EMFILE and new connections wait unanswered"
            ),
            format!(
                "raise the open-files limit to at least {need}{hard}: LimitNOFILE= in the systemd unit, `ulimit -n` in the start script, or --ulimit nofile= for a container"
            ),
        ));
    }
}

/// `preload`: what preload's fork-safety check found in the app's import.
pub fn preload(f: &Facts, r: &mut Report) {
    const CHECK: &str = "preload";
    if !runs_app(f) {
        return;
    }
    let Some(app) = &f.app else {
        skip(
            r,
            CHECK,
            "the app was not imported (--no-import), so its fork safety was not checked",
        );
        return;
    };
    let Some(found) = &app.fork_findings else {
        return;
    };
    const ADVICE: &str = "open connections lazily (on first use) or in os.register_at_fork(after_in_child=...), and start threads there too";
    match f.config.app.preload {
        Preload::Auto => r.findings.push(Finding::warning(
            CHECK,
            format!(
                "the app left {found} after its import: preload = \"auto\" falls back and every worker imports the app itself (no memory shared between workers, and each respawn imports again)"
            ),
            format!("{ADVICE}; then the workers are forked from one import"),
        )),
        Preload::On => r.findings.push(Finding::error(
            CHECK,
            format!(
                "the app left {found} after its import, and preload = true forks every worker from it: the workers share those sockets (their database packets interleave under load, and one worker's close ends everyone's connection) and the threads do not run in any worker"
            ),
            format!("{ADVICE}; or set app.preload = \"auto\" to have each worker import the app while it is not fork-safe"),
        )),
        Preload::Off => {}
    }
}

/// The safeguards a production pool should have: harakiri, max_requests, ready_check, an
/// access log.
pub fn safeguards(f: &Facts, r: &mut Report) {
    let c = &f.config;
    if runs_app(f) {
        let app = &c.app;
        if app.harakiri.is_none() {
            let uncovered = if c.route.iter().any(|r| r.harakiri.is_some()) {
                " (only the routes that set their own harakiri have one)"
            } else {
                ""
            };
            r.findings.push(Finding::warning(
                "harakiri",
                format!("app.harakiri is unset{uncovered}: a request stuck in the app (a lock, a hung query, an endless loop) holds its worker for ever, and under load stuck workers add up until none serves"),
                "set app.harakiri a little below server.request_timeout (e.g. request_timeout = \"30s\", harakiri = 25): the worker is killed and replaced, the client gets 504 harakiri",
            ));
        }
        if app.max_requests == 0 {
            r.findings.push(Finding::warning(
                "max_requests",
                "app.max_requests is 0: workers are never recycled, so whatever grows in them (leaks, fragmentation, caches) grows for the life of the service",
                "set app.max_requests (e.g. 5000) with app.max_requests_jitter (e.g. 500), so workers recycle now and then, and not all at once",
            ));
        }
        if app.ready_check.is_none() {
            r.findings.push(Finding::warning(
                "ready_check",
                "app.ready_check is unset: /readyz says ready once the app is imported, even when the database it needs is down, so the balancer keeps sending traffic that can only fail",
                "set app.ready_check = \"module:function\" to a function that pings the database (returns None or a truthy value when ready, raises or returns False otherwise), and point the balancer's health check at /readyz",
            ));
        }
    }
    if c.server.access_log == "off" {
        r.findings.push(Finding::warning(
            "access_log",
            "server.access_log is off: no record of requests, their status, error class (x-weir-error) and where their time went (queue, worker), which is what tells an incident's cause",
            "set server.access_log to a file path, or \"stdout\" under systemd or in a container",
        ));
    }
}

/// Whether `HOST:PORT` names a loopback host.
pub fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// `admin_listen`: the admin listener (metrics, readiness, cache purges) on an address
/// other hosts can reach.
pub fn admin_listen(f: &Facts, r: &mut Report) {
    if let Some(ListenAddr::Tcp(a)) = &f.config.admin.listen {
        if !is_loopback(a) {
            r.findings.push(Finding::warning(
                "admin_listen",
                format!("admin.listen = {a:?} is not a loopback address: anyone who can reach it can read /metrics and purge the cache (POST /cache/purge)"),
                "listen on 127.0.0.1:PORT or unix:PATH, and let the metrics scraper reach it through the host (or a proxy with authentication)",
            ));
        }
    }
}

/// Every finding's severity, for tests and summaries.
pub fn count(r: &Report, s: Severity) -> usize {
    r.findings.iter().filter(|f| f.severity == s).count()
}

#[cfg(test)]
mod tests;
