//! NGINX directives to weir.toml keys. One listener set: the first `server` that passes
//! requests to an app (`uwsgi_pass`/`proxy_pass`) is imported; each of its locations that
//! passes becomes a `[[route]]`, each that serves files (`alias`/`root`) a `[[static]]`.
//! Directives NGINX inherits (limits, cache, timeouts) are looked up as NGINX does: the
//! location's own, else the server's, else http's.

use std::collections::BTreeMap;

use toml::{Table, Value};

use crate::nginx::Directive;
use crate::{nginx_duration, nginx_size, size_value, Builder};

fn text(d: &Directive) -> String {
    let mut s = d.name.clone();
    for a in &d.args {
        s.push(' ');
        if a.is_empty() || a.contains(char::is_whitespace) || a.contains(';') {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(a);
        }
    }
    if d.block.is_some() {
        s.push_str(" { }");
    }
    s
}

fn has_pass(d: &Directive) -> bool {
    d.block.as_ref().is_some_and(|b| {
        b.iter().any(|c| {
            (c.name == "uwsgi_pass" || c.name == "proxy_pass")
                || (c.name == "location" && has_pass(c))
        })
    })
}

/// Records `d` and everything inside it as not supported.
fn unsupported_tree(b: &mut Builder, d: &Directive, what: &str) {
    b.unsupported(&d.file, d.line, text(d), what);
    for c in d.block.iter().flatten() {
        unsupported_tree(b, c, what);
    }
}

/// Directives that say nothing weir needs, with why.
fn not_needed_why(name: &str) -> Option<&'static str> {
    Some(match name {
        "ssl_protocols" | "ssl_ciphers" | "ssl_prefer_server_ciphers" | "ssl_session_cache"
        | "ssl_session_timeout" | "ssl_session_tickets" | "ssl_dhparam" | "ssl_ecdh_curve"
        | "ssl_buffer_size" | "ssl_early_data" => {
            "weir uses rustls' safe defaults: TLS 1.2 and 1.3, AEAD suites with forward secrecy, session resumption by id and tickets (docs/tls.md)"
        }
        "http2" => "weir speaks HTTP/2 on its TLS listeners by ALPN ([server] h2c for plain ones)",
        "user" | "pid" | "daemon" | "master_process" => {
            "process management: weir runs as the user and under the supervisor that starts it (systemd)"
        }
        "worker_processes" | "worker_cpu_affinity" | "worker_priority" => {
            "weir's front door runs [server] threads event-loop threads; the app's processes are [app] workers"
        }
        "worker_rlimit_nofile" => "set LimitNOFILE= in weir's systemd unit",
        "worker_connections" | "use" | "multi_accept" | "accept_mutex" => {
            "weir's event loop needs no connection tuning"
        }
        "error_log" => "weir logs to stderr (journald under systemd)",
        "load_module" => "weir has no modules",
        "sendfile" | "tcp_nopush" | "tcp_nodelay" | "aio" | "directio" | "output_buffers" => {
            "socket tuning weir does itself"
        }
        "types" | "default_type" | "charset" | "charset_types" | "source_charset" => {
            "weir takes the Content-Type from the app, and from the extension for [[static]] files"
        }
        "server_tokens" => "weir sends no version",
        "server_name" | "server_name_in_redirect" | "server_names_hash_bucket_size"
        | "server_names_hash_max_size" => {
            "weir serves one site on its listeners, whatever the Host"
        }
        "log_format" => "weir's access log is one JSON line per request with fixed fields",
        "client_header_buffer_size" | "client_body_buffer_size" | "client_body_temp_path" => {
            "weir reads bodies up to 1 MiB before taking a worker, larger ones stream"
        }
        "uwsgi_param" | "uwsgi_pass_header" | "uwsgi_hide_header" | "uwsgi_modifier1"
        | "uwsgi_modifier2" | "uwsgi_pass_request_headers" | "uwsgi_pass_request_body" => {
            "weir builds the WSGI environ itself (PEP 3333)"
        }
        "proxy_set_header" | "proxy_http_version" | "proxy_redirect" | "proxy_pass_header"
        | "proxy_hide_header" | "proxy_pass_request_headers" => {
            "weir sends X-Forwarded-For, X-Forwarded-Proto and X-Request-ID to HTTP upstreams itself"
        }
        "uwsgi_buffers" | "uwsgi_buffer_size" | "uwsgi_busy_buffers_size" | "proxy_buffers"
        | "proxy_buffer_size" | "proxy_busy_buffers_size" | "uwsgi_temp_file_write_size"
        | "proxy_temp_file_write_size" => {
            "weir reads answers into [server] response_buffer (256KiB) then a temp file; a small buffer never turns a large head into a 502"
        }
        "uwsgi_cache_methods" | "proxy_cache_methods" => "weir caches GET and HEAD",
        "uwsgi_cache_lock_age" | "proxy_cache_lock_age" => {
            "weir's fill lock ends with the fill or lock_timeout"
        }
        "uwsgi_cache_convert_head" | "proxy_cache_convert_head" => {
            "weir fetches a HEAD as a GET on cached routes"
        }
        "gzip_vary" => "weir always sends Vary: Accept-Encoding on compressible answers",
        "gzip_proxied" | "gzip_buffers" | "gzip_http_version" | "gzip_disable" => {
            "weir compresses by Content-Type and Accept-Encoding alone"
        }
        "real_ip_header" => "weir reads X-Forwarded-For from [server] trusted_proxies",
        "real_ip_recursive" => "weir skips every trusted proxy in X-Forwarded-For",
        "keepalive" => "weir opens one upstream connection per request",
        "keepalive_requests" | "keepalive_time" => {
            "weir keeps a client connection for as many requests as it sends; idle ones end with keepalive_timeout"
        }
        "zone" => "weir's upstream state is in memory",
        "reset_timedout_connection" | "lingering_close" | "lingering_time"
        | "lingering_timeout" => "connection teardown weir does itself",
        "open_file_cache" | "open_file_cache_valid" | "open_file_cache_min_uses"
        | "open_file_cache_errors" => "weir keeps small [[static]] files in memory, checked per request",
        "etag" | "if_modified_since" => "weir's [[static]] answers always carry ETag and Last-Modified",
        "index" | "autoindex" => "weir serves no index files or listings",
        "limit_req_log_level" | "limit_conn_log_level" => {
            "weir logs each limited request in the access log (limit_outcome)"
        }
        "uwsgi_ignore_client_abort" | "proxy_ignore_client_abort" => {
            "weir cancels a request whose client left"
        }
        _ => return None,
    })
}

/// Directives weir cannot follow, with what to do.
fn unsupported_why(name: &str) -> Option<&'static str> {
    Some(match name {
        "ssl" => "weir's TLS listeners are `listen ... ssl` ([server] tls_listen): write the port there",
        "ssl_stapling" | "ssl_stapling_verify" | "ssl_trusted_certificate" => {
            "weir does not staple OCSP responses"
        }
        "ssl_client_certificate" | "ssl_verify_client" | "ssl_verify_depth" => {
            "weir does not check client certificates: do it in front of weir or in the app"
        }
        "return" | "rewrite" | "if" | "set" | "map" | "geo" | "split_clients" | "try_files"
        | "error_page" | "internal" => {
            "weir has no rewriting or conditionals: do it in the app (Flask redirects, error handlers)"
        }
        "add_header" | "more_set_headers" | "expires" => {
            "weir sets no extra headers on app answers: set them in the app (Flask after_request)"
        }
        "auth_basic" | "auth_basic_user_file" | "auth_request" | "allow" | "deny" | "satisfy" => {
            "weir has no access control: do it in the app or at a firewall"
        }
        "uwsgi_intercept_errors" | "proxy_intercept_errors" => {
            "weir passes the app's error answers through; its own errors are docs/errors.md's"
        }
        "least_conn" | "ip_hash" | "hash" | "random" | "least_time" => {
            "weir sends each request to a server with a free max_conns slot; remove it"
        }
        "resolver" | "resolver_timeout" => "weir resolves upstream names when it connects",
        "stub_status" => "use weir's admin /metrics ([admin] listen)",
        _ => return None,
    })
}

fn pass_names(name: &str) -> bool {
    name == "uwsgi_pass" || name == "proxy_pass"
}

/// `uwsgi_` and `proxy_` spellings of one directive, as the `uwsgi_` one.
fn canon(name: &str) -> String {
    match name.strip_prefix("proxy_") {
        Some(rest) => format!("uwsgi_{rest}"),
        None => name.to_owned(),
    }
}

/// The route-level directives weir maps per `[[route]]`, inherited as NGINX does.
const ROUTE_LEVEL: &[&str] = &[
    "limit_req",
    "limit_req_status",
    "limit_req_dry_run",
    "limit_conn",
    "limit_conn_status",
    "limit_conn_dry_run",
    "limit_rate",
    "limit_rate_after",
    "uwsgi_limit_rate",
    "uwsgi_cache",
    "uwsgi_cache_valid",
    "uwsgi_cache_key",
    "uwsgi_cache_lock",
    "uwsgi_cache_lock_timeout",
    "uwsgi_cache_use_stale",
    "uwsgi_cache_background_update",
    "uwsgi_cache_bypass",
    "uwsgi_no_cache",
    "uwsgi_cache_min_uses",
    "uwsgi_cache_revalidate",
    "uwsgi_buffering",
    "uwsgi_read_timeout",
];

/// The directives named `name` (either spelling) at the innermost level that has any.
fn eff<'a>(chain: &[&'a [Directive]], name: &str) -> Vec<&'a Directive> {
    for level in chain {
        let v: Vec<&Directive> = level.iter().filter(|d| canon(&d.name) == name).collect();
        if !v.is_empty() {
            return v;
        }
    }
    Vec::new()
}

/// A pass target: `unix:/x`, `host:port`, or an upstream block's name.
enum Target {
    Addr(String),
    Upstream(String),
}

fn pass_target(d: &Directive) -> Result<(&'static str, Target), String> {
    let Some(arg) = d.args.first() else {
        return Err("no address".into());
    };
    if d.name == "uwsgi_pass" {
        if arg.starts_with("suwsgi://") {
            return Err("uwsgi over TLS: weir speaks plain uwsgi".into());
        }
        let a = arg.strip_prefix("uwsgi://").unwrap_or(arg);
        if a.starts_with("unix:") || weir_config::ListenAddr::parse(a).is_ok() {
            return Ok(("uwsgi", Target::Addr(a.to_owned())));
        }
        if a.contains('$') {
            return Err("a variable address: give weir a fixed one".into());
        }
        return Ok(("uwsgi", Target::Upstream(a.to_owned())));
    }
    let Some(rest) = arg.strip_prefix("http://") else {
        return Err(format!(
            "{arg}: weir's HTTP upstreams are plain http:// (no https, no variables)"
        ));
    };
    if let Some(unix) = rest.strip_prefix("unix:") {
        let path = unix.split(':').next().unwrap_or(unix);
        return Ok(("http", Target::Addr(format!("unix:{path}"))));
    }
    let host = rest.split('/').next().unwrap_or(rest);
    if host.contains('$') {
        return Err("a variable address: give weir a fixed one".into());
    }
    if weir_config::ListenAddr::parse(host).is_ok() {
        return Ok(("http", Target::Addr(host.to_owned())));
    }
    Ok(("http", Target::Upstream(host.to_owned())))
}

struct Ctx<'a> {
    app_given: bool,
    upstreams: BTreeMap<String, &'a Directive>,
    /// The upstream the imported server passes to: (protocol, name or address).
    chosen_pass: Option<(String, String)>,
    /// Parameters each limit_req zone got from its first `limit_req` (burst, nodelay, delay).
    zone_params: BTreeMap<String, String>,
    cache_paths: usize,
    max_read_timeout: Option<String>,
}

pub(crate) fn map(b: &mut Builder, tree: &[Directive], app_given: bool) {
    let mut ctx = Ctx {
        app_given,
        upstreams: BTreeMap::new(),
        chosen_pass: None,
        zone_params: BTreeMap::new(),
        cache_paths: 0,
        max_read_timeout: None,
    };
    let start = b.findings.len();
    walk(b, &mut ctx, tree);
    // Exactly one finding per directive, in the order of the files: a directive a mapping
    // did not look into (inside a block it does not import) is listed as not supported.
    let mut got: Vec<Option<crate::Finding>> = b.findings.drain(start..).map(Some).collect();
    let mut ordered = Vec::new();
    fn pre_order<'t>(t: &'t [Directive], out: &mut Vec<&'t Directive>) {
        for d in t {
            out.push(d);
            pre_order(d.block.as_deref().unwrap_or(&[]), out);
        }
    }
    let mut all = Vec::new();
    pre_order(tree, &mut all);
    for d in all {
        let t = text(d);
        let found = got.iter_mut().find(|f| {
            f.as_ref()
                .is_some_and(|f| f.source == d.file && f.line == d.line && f.directive == t)
        });
        match found.and_then(Option::take) {
            Some(f) => ordered.push(f),
            None => ordered.push(crate::Finding {
                source: d.file.clone(),
                line: d.line,
                directive: t,
                verdict: crate::Verdict::Unsupported {
                    what_to_do: "inside a block weir does not import".into(),
                },
            }),
        }
    }
    b.findings.extend(ordered);
}

fn walk<'a>(b: &mut Builder, ctx: &mut Ctx<'a>, tree: &'a [Directive]) {
    for d in tree {
        match d.name.as_str() {
            "http" => {
                b.not_needed(
                    &d.file,
                    d.line,
                    text(d),
                    "a block: its directives are listed one by one",
                );
                http(b, ctx, d);
            }
            "events" => {
                b.not_needed(
                    &d.file,
                    d.line,
                    text(d),
                    "weir's event loop needs no tuning",
                );
                for c in d.block.iter().flatten() {
                    generic(b, ctx, c);
                }
            }
            "stream" | "mail" => unsupported_tree(b, d, "weir serves HTTP only"),
            _ => generic(b, ctx, d),
        }
    }
}

fn http<'a>(b: &mut Builder, ctx: &mut Ctx<'a>, h: &'a Directive) {
    let block = h.block.as_deref().unwrap_or(&[]);
    for d in block {
        if d.name == "upstream" {
            if let Some(n) = d.args.first() {
                ctx.upstreams.insert(n.clone(), d);
            }
        }
    }
    let chosen = block
        .iter()
        .position(|d| d.name == "server" && has_pass(d))
        .or_else(|| block.iter().position(|d| d.name == "server"));
    // The imported server's first pass decides the upstream.
    if let Some(i) = chosen {
        fn first_pass(d: &Directive) -> Option<&Directive> {
            for c in d.block.iter().flatten() {
                if pass_names(&c.name) {
                    return Some(c);
                }
                if c.name == "location" {
                    if let Some(p) = first_pass(c) {
                        return Some(p);
                    }
                }
            }
            None
        }
        if let Some(p) = first_pass(&block[i]) {
            if let Ok((proto, t)) = pass_target(p) {
                let name = match t {
                    Target::Addr(a) | Target::Upstream(a) => a,
                };
                ctx.chosen_pass = Some((proto.to_owned(), name));
            }
        }
    }
    let chosen_line = chosen.map(|i| (block[i].file.clone(), block[i].line));
    for (i, d) in block.iter().enumerate() {
        match d.name.as_str() {
            "server" if Some(i) == chosen => server(b, ctx, h, d),
            "server" => {
                let (f, l) = chosen_line.clone().unwrap_or_default();
                unsupported_tree(
                    b,
                    d,
                    &format!("weir has one set of listeners and routes: only the server at {f}:{l} was imported; run another weir for this one (import a copy of the config with only this server)"),
                );
            }
            "upstream" => upstream(b, ctx, d),
            _ => level_directive(b, ctx, d, "http"),
        }
    }
}

fn upstream(b: &mut Builder, ctx: &Ctx, d: &Directive) {
    let name = d.args.first().cloned().unwrap_or_default();
    let used = ctx.chosen_pass.as_ref().is_some_and(|(_, n)| *n == name);
    if ctx.app_given {
        b.not_needed(
            &d.file,
            d.line,
            text(d),
            "weir runs the app itself: no upstream",
        );
        for c in d.block.iter().flatten() {
            b.not_needed(
                &c.file,
                c.line,
                text(c),
                "weir runs the app itself: no upstream",
            );
        }
        return;
    }
    if !used {
        unsupported_tree(
            b,
            d,
            "this upstream is not used by the imported server; weir has one [upstream]",
        );
        return;
    }
    b.mapped(&d.file, d.line, text(d), "upstream");
    for c in d.block.iter().flatten() {
        match c.name.as_str() {
            "server" => {
                let Some(addr) = c.args.first() else {
                    b.unsupported(&c.file, c.line, text(c), "a server without an address");
                    continue;
                };
                let addr = if addr.starts_with("unix:") || addr.contains(':') {
                    addr.clone()
                } else {
                    format!("{addr}:80")
                };
                if weir_config::ListenAddr::parse(&addr).is_err() {
                    b.unsupported(
                        &c.file,
                        c.line,
                        text(c),
                        "not an address weir can connect to (HOST:PORT or unix:PATH)",
                    );
                    continue;
                }
                b.push("upstream.servers", addr);
                let mut notes = Vec::new();
                for p in &c.args[1..] {
                    let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
                    match k {
                        "max_fails" => match v.parse::<i64>() {
                            Ok(n) if n > 0 => {
                                b.set("upstream.max_fails", n);
                            }
                            _ => notes.push(format!("{p}: weir's max_fails is at least 1")),
                        },
                        "fail_timeout" => match nginx_duration(v) {
                            Ok(t) => b.set("upstream.fail_timeout", t),
                            Err(e) => notes.push(e),
                        },
                        "max_conns" => match v.parse::<i64>() {
                            Ok(n) if n > 0 => b.set("upstream.max_conns", n),
                            _ => notes.push(format!(
                                "{p}: 0 (no limit) is not weir's: max_conns stays 16"
                            )),
                        },
                        _ => notes.push(format!(
                            "{p} ignored: weir weighs servers equally and has no backup servers"
                        )),
                    }
                }
                if notes.is_empty() {
                    b.mapped(&c.file, c.line, text(c), "upstream.servers");
                } else {
                    b.mapped_note(
                        &c.file,
                        c.line,
                        text(c),
                        "upstream.servers",
                        &notes.join("; "),
                    );
                }
            }
            "queue" => {
                match c.args.first().and_then(|n| n.parse::<i64>().ok()) {
                    Some(n) if n > 0 => b.set("queue.max_size", n),
                    _ => {}
                }
                for p in &c.args[1..] {
                    if let Some(t) = p.strip_prefix("timeout=") {
                        if let Ok(t) = nginx_duration(t) {
                            b.set("queue.timeout", t);
                        }
                    }
                }
                b.mapped(&c.file, c.line, text(c), "queue.max_size, queue.timeout");
            }
            _ => generic(b, ctx, c),
        }
    }
}

/// A directive outside the listed cases: a known verdict, or "not supported".
fn generic(b: &mut Builder, _ctx: &Ctx, d: &Directive) {
    if d.name == "include" {
        if let Some(why) = &d.missing {
            let base = d.args.first().map(String::as_str).unwrap_or("");
            let file = base.rsplit('/').next().unwrap_or(base);
            if [
                "uwsgi_params",
                "proxy_params",
                "mime.types",
                "fastcgi_params",
                "scgi_params",
            ]
            .contains(&file)
            {
                b.not_needed(
                    &d.file,
                    d.line,
                    text(d),
                    "weir builds the environ and picks Content-Types itself (the file was not read)",
                );
            } else {
                b.unsupported(
                    &d.file,
                    d.line,
                    text(d),
                    &format!("could not be read ({why}): its directives were not imported; import them by hand"),
                );
            }
            return;
        }
    }
    if d.name == "ssl_certificate" || d.name == "ssl_certificate_key" {
        certificate(b, d);
    } else if let Some(why) = not_needed_why(&d.name) {
        b.not_needed(&d.file, d.line, text(d), why);
    } else if let Some(what) = unsupported_why(&d.name) {
        b.unsupported(&d.file, d.line, text(d), what);
    } else {
        b.unsupported(
            &d.file,
            d.line,
            text(d),
            "weir import does not know this directive and weir has no equivalent; check docs/config.md",
        );
    }
    for c in d.block.iter().flatten() {
        if d.name == "types" {
            b.not_needed(&c.file, c.line, text(c), "a MIME type: weir takes Content-Types from the app, and from the extension for [[static]] files");
        } else if d.name == "if" || d.name == "map" || d.name == "geo" {
            b.unsupported(
                &c.file,
                c.line,
                text(c),
                "inside a block weir does not import",
            );
        } else {
            generic(b, _ctx, c);
        }
    }
}

/// http- or server-level directives (not `server`, `upstream`, `location`, `listen`).
fn level_directive(b: &mut Builder, ctx: &mut Ctx, d: &Directive, level: &str) {
    let name = canon(&d.name);
    let a0 = d.args.first().map(String::as_str).unwrap_or("");
    let f = &d.file;
    if (ctx.app_given || name != "uwsgi_read_timeout") && ROUTE_LEVEL.contains(&name.as_str()) {
        b.mapped_note(
            f,
            d.line,
            text(d),
            &format!("route[*].{}", route_key(&name)),
            &format!("set on every [[route]] whose location does not set its own ({level} level)"),
        );
        return;
    }
    match name.as_str() {
        "client_max_body_size" => match nginx_size(a0) {
            Ok(0) => b.unsupported(f, d.line, text(d), "0 (no limit) is not weir's: set [server] max_body_size to the largest body you accept"),
            Ok(n) => {
                b.set("server.max_body_size", size_value(n));
                b.mapped(f, d.line, text(d), "server.max_body_size");
            }
            Err(e) => b.unsupported(f, d.line, text(d), &e),
        },
        "large_client_header_buffers" => {
            let n: Option<u64> = a0.parse().ok();
            match (n, d.args.get(1).map(|s| nginx_size(s))) {
                (Some(n), Some(Ok(size))) => {
                    let total = (n * size).max(1024);
                    b.set("server.max_header_size", size_value(total));
                    b.mapped_note(f, d.line, text(d), "server.max_header_size", "number x size: weir bounds the whole head");
                }
                _ => b.unsupported(f, d.line, text(d), "expected NUMBER SIZE"),
            }
        }
        "keepalive_timeout" => match nginx_duration(a0) {
            Ok(t) => {
                b.set("server.keepalive_timeout", t);
                if d.args.len() > 1 {
                    b.mapped_note(f, d.line, text(d), "server.keepalive_timeout", "the second value (the Keep-Alive: timeout= header) is not sent");
                } else {
                    b.mapped(f, d.line, text(d), "server.keepalive_timeout");
                }
            }
            Err(e) => b.unsupported(f, d.line, text(d), &e),
        },
        "client_header_timeout" | "client_body_timeout" | "send_timeout" => {
            match nginx_duration(a0) {
                Ok(t) => {
                    let key = format!("server.{}", d.name);
                    b.set(&key, t);
                    b.mapped(f, d.line, text(d), &key);
                }
                Err(e) => b.unsupported(f, d.line, text(d), &e),
            }
        }
        "uwsgi_read_timeout" => match nginx_duration(a0) {
            // Only here without an app (see ROUTE_LEVEL): the upstream's.
            Ok(t) => {
                ctx.max_read_timeout = Some(t.clone());
                b.set("upstream.read_timeout", t);
                b.mapped(f, d.line, text(d), "upstream.read_timeout");
            }
            Err(e) => b.unsupported(f, d.line, text(d), &e),
        },
        "uwsgi_connect_timeout" | "uwsgi_send_timeout" => {
            let key = if name == "uwsgi_connect_timeout" {
                "upstream.connect_timeout"
            } else {
                "upstream.send_timeout"
            };
            if ctx.app_given {
                b.not_needed(f, d.line, text(d), "weir runs the app itself: no upstream connection");
            } else {
                match nginx_duration(a0) {
                    Ok(t) => {
                        b.set(key, t);
                        b.mapped(f, d.line, text(d), key);
                    }
                    Err(e) => b.unsupported(f, d.line, text(d), &e),
                }
            }
        }
        "uwsgi_next_upstream" => {
            if ctx.app_given {
                b.not_needed(f, d.line, text(d), "weir runs the app itself: no upstream");
            } else if a0 == "off" {
                b.set("upstream.next_upstream", false);
                b.mapped(f, d.line, text(d), "upstream.next_upstream");
            } else {
                b.mapped_note(f, d.line, text(d), "upstream.next_upstream", "weir tries the next server only before anything was sent, for idempotent methods");
            }
        }
        "uwsgi_max_temp_file_size" => match nginx_size(a0) {
            Ok(n) => {
                b.set("server.max_temp_file_size", size_value(n));
                b.mapped(f, d.line, text(d), "server.max_temp_file_size");
            }
            Err(e) => b.unsupported(f, d.line, text(d), &e),
        },
        "uwsgi_temp_path" => {
            b.set("server.temp_path", a0.to_owned());
            b.mapped_note(f, d.line, text(d), "server.temp_path", "levels are not needed: weir's temp files are unlinked at once");
        }
        "access_log" => {
            if a0 == "off" {
                b.set("server.access_log", "off");
                b.mapped(f, d.line, text(d), "server.access_log");
            } else if a0.starts_with("syslog:") {
                b.unsupported(f, d.line, text(d), "weir logs to a file, stdout or stderr: use \"stdout\" and journald");
            } else {
                b.set("server.access_log", a0.to_owned());
                let mut note = String::from("weir writes one JSON line per request, not NGINX's format");
                let mut bad = None;
                for p in &d.args[1..] {
                    if let Some(v) = p.strip_prefix("buffer=") {
                        match nginx_size(v) {
                            Ok(n) => {
                                b.set("server.access_log_buffer", size_value(n));
                                note.push_str("; buffer= is server.access_log_buffer");
                            }
                            Err(e) => bad = Some(e),
                        }
                    } else if let Some(v) = p.strip_prefix("flush=") {
                        match nginx_duration(v) {
                            Ok(t) => {
                                b.set("server.access_log_flush", t);
                                note.push_str("; flush= is server.access_log_flush");
                            }
                            Err(e) => bad = Some(e),
                        }
                    } else if p.starts_with("gzip") || p.starts_with("if=") {
                        note.push_str(&format!("; {p} is left out: weir's access log is neither compressed nor conditional"));
                    }
                }
                match bad {
                    Some(e) => b.unsupported(f, d.line, text(d), &e),
                    None => b.mapped_note(f, d.line, text(d), "server.access_log", &note),
                }
            }
        }
        "set_real_ip_from" => {
            if a0.starts_with("unix:") {
                b.not_needed(f, d.line, text(d), "weir trusts a Unix-socket peer");
            } else if weir_config::units::parse_cidr(a0).is_ok() {
                b.push("server.trusted_proxies", a0.to_owned());
                b.mapped(f, d.line, text(d), "server.trusted_proxies");
            } else {
                b.unsupported(f, d.line, text(d), "weir takes addresses and CIDR ranges, not host names");
            }
        }
        "gzip" => {
            if a0 == "on" {
                b.table("compression");
                b.mapped_note(f, d.line, text(d), "compression", "weir also offers br and zstd; set compression.algorithms = [\"gzip\"] for gzip only");
            } else {
                b.not_needed(f, d.line, text(d), "off: no [compression] section");
            }
        }
        "gzip_types" => {
            if d.args.iter().any(|t| t == "*") {
                b.unsupported(f, d.line, text(d), "weir lists types (TYPE/SUBTYPE or TYPE/*): name them");
            } else {
                b.push("compression.types", "text/html");
                for t in &d.args {
                    b.push("compression.types", t.clone());
                }
                b.mapped_note(f, d.line, text(d), "compression.types", "text/html added, as NGINX always compresses it");
            }
        }
        "gzip_min_length" => match a0.parse::<i64>() {
            Ok(n) => {
                b.set("compression.min_length", n);
                b.mapped(f, d.line, text(d), "compression.min_length");
            }
            Err(_) => b.unsupported(f, d.line, text(d), "expected a number of bytes"),
        },
        "gzip_comp_level" => match a0.parse::<i64>() {
            Ok(n) if (1..=9).contains(&n) => {
                b.set("compression.gzip_level", n);
                b.mapped(f, d.line, text(d), "compression.gzip_level");
            }
            _ => b.unsupported(f, d.line, text(d), "expected 1 to 9"),
        },
        "gzip_static" => b.not_needed(f, d.line, text(d), "weir serves .gz files only for [[static]] locations (precompressed)"),
        "limit_req_zone" => limit_req_zone(b, d),
        "limit_conn_zone" => limit_conn_zone(b, d),
        "uwsgi_cache_path" => {
            ctx.cache_paths += 1;
            if ctx.cache_paths > 1 {
                b.unsupported(f, d.line, text(d), "weir has one cache: routes of every zone share [cache]");
                return;
            }
            b.table("cache");
            let mut notes = vec!["weir's memory tier keeps the bodies too: [cache] memory (256MiB)".to_owned()];
            if a0.starts_with('/') {
                b.set("cache.disk", a0.to_owned());
            } else {
                notes.push("a relative path is not weir's: set cache.disk to an absolute directory".into());
            }
            for p in &d.args[1..] {
                let (k, v) = p.split_once('=').unwrap_or((p.as_str(), ""));
                match k {
                    "max_size" if a0.starts_with('/') => match nginx_size(v) {
                        Ok(n) if n >= 1 << 20 => b.set("cache.disk_max_size", size_value(n)),
                        _ => notes.push(format!("{p}: weir's disk_max_size is at least 1MiB")),
                    },
                    "levels" | "use_temp_path" | "keys_zone" | "inactive" | "loader_files"
                    | "loader_sleep" | "loader_threshold" | "manager_files" | "manager_sleep"
                    | "manager_threshold" | "min_free" => {}
                    _ => notes.push(format!("{p} ignored")),
                }
            }
            b.mapped_note(f, d.line, text(d), "cache.disk, cache.disk_max_size", &notes.join("; "));
        }
        "root" => b.not_needed(f, d.line, text(d), "used by the locations that serve files ([[static]])"),
        _ => generic(b, ctx, d),
    }
}

fn route_key(name: &str) -> &'static str {
    match name {
        "limit_req" | "limit_req_status" | "limit_req_dry_run" => "limit_req",
        "limit_conn" | "limit_conn_status" | "limit_conn_dry_run" => "limit_conn",
        "limit_rate" | "uwsgi_limit_rate" => "limit_rate",
        "limit_rate_after" => "limit_rate_after",
        "uwsgi_buffering" => "buffering",
        "uwsgi_read_timeout" => "request_timeout",
        _ => "cache",
    }
}

fn template(s: &str) -> Result<String, String> {
    let t = s.replace("$binary_remote_addr", "$remote_addr");
    weir_config::parse_template(&t).map_err(|e| format!("{e}: weir's keys use $remote_addr, $http_NAME, $cookie_NAME, $arg_NAME, $uri, $request_uri, $scheme, $host, $request_method"))?;
    Ok(t)
}

fn zone_arg(d: &Directive) -> Option<(String, Option<u64>)> {
    let z = d.args.iter().find_map(|a| a.strip_prefix("zone="))?;
    match z.split_once(':') {
        Some((n, size)) => Some((n.to_owned(), nginx_size(size).ok())),
        None => Some((z.to_owned(), None)),
    }
}

fn limit_req_zone(b: &mut Builder, d: &Directive) {
    let f = &d.file;
    let Some((name, size)) = zone_arg(d) else {
        b.unsupported(f, d.line, text(d), "no zone=NAME:SIZE");
        return;
    };
    let key = match template(d.args.first().map(String::as_str).unwrap_or("")) {
        Ok(k) => k,
        Err(e) => return b.unsupported(f, d.line, text(d), &e),
    };
    let Some(rate) = d.args.iter().find_map(|a| a.strip_prefix("rate=")) else {
        return b.unsupported(f, d.line, text(d), "no rate=");
    };
    if let Err(e) = weir_config::units::parse_rate(rate) {
        return b.unsupported(f, d.line, text(d), &e);
    }
    let sec = format!("limit_req.{name}");
    b.set(&format!("{sec}.key"), key);
    b.set(&format!("{sec}.rate"), rate.to_owned());
    if b.get(&format!("{sec}.status")).is_none() {
        b.set(&format!("{sec}.status"), 503);
    }
    let mut note = "status 503 as NGINX's default (weir's own default is 429); burst, nodelay and delay come from limit_req".to_owned();
    if let Some(bytes) = size {
        // NGINX: "one megabyte zone can keep about 16 thousand 64-byte states".
        let keys = (bytes * 16_000 / (1 << 20)).max(1000);
        b.set(&format!("{sec}.max_keys"), keys as i64);
        note.push_str("; the zone's size becomes max_keys (16000 per MiB)");
    }
    if d.args.iter().any(|a| a == "sync") {
        note.push_str("; sync: share zones with [limits] store = \"redis://...\"");
    }
    b.mapped_note(f, d.line, text(d), &sec, &note);
}

fn limit_conn_zone(b: &mut Builder, d: &Directive) {
    let f = &d.file;
    let Some((name, _)) = zone_arg(d) else {
        return b.unsupported(f, d.line, text(d), "no zone=NAME:SIZE");
    };
    let key = match template(d.args.first().map(String::as_str).unwrap_or("")) {
        Ok(k) => k,
        Err(e) => return b.unsupported(f, d.line, text(d), &e),
    };
    let sec = format!("limit_conn.{name}");
    b.set(&format!("{sec}.key"), key);
    if b.get(&format!("{sec}.status")).is_none() {
        b.set(&format!("{sec}.status"), 503);
    }
    b.mapped_note(
        f,
        d.line,
        text(d),
        &sec,
        "status 503 as NGINX's default; max comes from limit_conn",
    );
}

fn server<'a>(b: &mut Builder, ctx: &mut Ctx<'a>, http: &'a Directive, s: &'a Directive) {
    b.mapped_note(
        &s.file,
        s.line,
        text(s),
        "server",
        "the imported server: its listeners and locations",
    );
    let block = s.block.as_deref().unwrap_or(&[]);
    let http_block = http.block.as_deref().unwrap_or(&[]);
    let mut listened = false;
    for d in block {
        match d.name.as_str() {
            "listen" => {
                listened = true;
                listen(b, d);
            }
            "location" => {
                let chain = vec![block, http_block];
                location(b, ctx, d, &chain);
            }
            _ => level_directive(b, ctx, d, "server"),
        }
    }
    if !listened {
        b.push("server.listen", "0.0.0.0:80");
    }
}

/// `ssl_certificate` / `ssl_certificate_key`: `[tls] certificate` / `key`, the first of
/// each; another server block's certificate is for `[[tls.sni]]`, written by hand.
fn certificate(b: &mut Builder, d: &Directive) {
    let key = if d.name == "ssl_certificate" {
        "tls.certificate"
    } else {
        "tls.key"
    };
    let path = d.args.first().cloned().unwrap_or_default();
    if path.contains('$') || path.starts_with("data:") || path.starts_with("engine:") {
        return b.unsupported(
            &d.file,
            d.line,
            text(d),
            "weir reads certificates from files named in weir.toml, not from variables",
        );
    }
    let (_, name) = key.rsplit_once('.').expect("section.key");
    if b.table("tls").contains_key(name) {
        return b.unsupported(
            &d.file,
            d.line,
            text(d),
            "a second certificate (another server block): add it as a [[tls.sni]] entry with its server names (docs/tls.md)",
        );
    }
    b.set(key, path);
    b.mapped(&d.file, d.line, text(d), key);
}

fn listen(b: &mut Builder, d: &Directive) {
    let f = &d.file;
    let a0 = d.args.first().cloned().unwrap_or_default();
    let addr = if a0.starts_with("unix:") {
        a0.clone()
    } else if a0.chars().all(|c| c.is_ascii_digit()) {
        format!("0.0.0.0:{a0}")
    } else if a0.starts_with('[') && !a0.contains("]:") {
        format!("{a0}:80")
    } else if a0.contains(':') {
        a0.replace("*:", "0.0.0.0:")
    } else {
        format!("{a0}:80")
    };
    if weir_config::ListenAddr::parse(&addr).is_err() {
        return b.unsupported(f, d.line, text(d), "not an address weir can listen on");
    }
    let mut notes = Vec::new();
    let ssl = d.args[1..].iter().any(|p| p == "ssl");
    for p in &d.args[1..] {
        if let Some(n) = p.strip_prefix("backlog=") {
            if let Ok(n) = n.parse::<i64>() {
                if n > 0 {
                    b.set("server.backlog", n);
                }
            }
        } else if p == "ssl" {
        } else if p == "http2" && ssl {
            notes.push("http2: HTTP/2 by ALPN on every TLS listener".into());
        } else if p == "http2" {
            b.set("server.h2c", true);
            notes.push("http2 without ssl: server.h2c = true (HTTP/2 with prior knowledge)".into());
        } else if p == "quic" {
            notes.push("quic: weir has no HTTP/3".into());
        } else if p == "proxy_protocol" {
            notes.push(
                "proxy_protocol: weir does not read it; use trusted_proxies and X-Forwarded-For"
                    .into(),
            );
        } else {
            notes.push(format!("{p}: not needed"));
        }
    }
    let key = if ssl {
        "server.tls_listen"
    } else {
        "server.listen"
    };
    b.push(key, addr);
    if notes.is_empty() {
        b.mapped(f, d.line, text(d), key);
    } else {
        b.mapped_note(f, d.line, text(d), key, &notes.join("; "));
    }
}

fn location<'a>(b: &mut Builder, ctx: &mut Ctx<'a>, l: &'a Directive, outer: &[&'a [Directive]]) {
    let f = &l.file;
    let block = l.block.as_deref().unwrap_or(&[]);
    let (modifier, path) = match l.args.as_slice() {
        [p] => ("", p.clone()),
        [m, p] => (m.as_str(), p.clone()),
        _ => ("?", String::new()),
    };
    if !matches!(modifier, "" | "=" | "^~") || path.starts_with('@') || !path.starts_with('/') {
        return unsupported_tree(
            b,
            l,
            "weir routes by path prefix: write a [[route]] (or [[static]]) per prefix, and match the rest in the app",
        );
    }
    let mut chain: Vec<&[Directive]> = vec![block];
    chain.extend_from_slice(outer);
    let prefix = if path == "/" {
        "/".to_owned()
    } else {
        path.trim_end_matches('/').to_owned()
    };
    let exact_note = if modifier == "=" {
        "; an exact match (=) becomes a prefix"
    } else {
        ""
    };
    let pass = block.iter().find(|d| pass_names(&d.name));
    let own_root = block.iter().find(|d| d.name == "alias" || d.name == "root");
    if pass.is_some() {
        let idx = b.routes.len();
        let mut route = Table::new();
        route.insert("path".into(), Value::String(prefix.clone()));
        b.routes.push(route);
        b.mapped_note(
            f,
            l.line,
            text(l),
            &format!("route[{idx}]"),
            &format!("path {prefix:?}{exact_note}"),
        );
        route_settings(b, ctx, idx, &chain);
        for d in block {
            if pass_names(&d.name) {
                pass_directive(b, ctx, d);
            } else if d.name == "location" {
                location(b, ctx, d, &chain);
            } else {
                location_directive(b, ctx, d, idx);
            }
        }
    } else if let Some(r) = own_root.or_else(|| {
        outer
            .iter()
            .find_map(|lvl| lvl.iter().find(|d| d.name == "root"))
    }) {
        let dir = r.args.first().cloned().unwrap_or_default();
        let root = if r.name == "alias" {
            dir.trim_end_matches('/').to_owned()
        } else {
            format!(
                "{}{}",
                dir.trim_end_matches('/'),
                prefix.trim_end_matches('/')
            )
        };
        let idx = b.statics.len();
        let mut st = Table::new();
        st.insert("prefix".into(), Value::String(prefix.clone()));
        st.insert("root".into(), Value::String(root.clone()));
        b.mapped_note(
            f,
            l.line,
            text(l),
            &format!("static[{idx}]"),
            &format!("prefix {prefix:?}, root {root:?}{exact_note}"),
        );
        for d in block {
            match d.name.as_str() {
                "alias" | "root" => {
                    b.mapped(&d.file, d.line, text(d), &format!("static[{idx}].root"))
                }
                "expires" => {
                    let a = d.args.first().map(String::as_str).unwrap_or("");
                    let v = match a {
                        "max" => Ok("3650d".to_owned()),
                        "off" => Err(None),
                        x if x.starts_with('@')
                            || x.starts_with('-')
                            || x == "epoch"
                            || x == "modified" =>
                        {
                            Err(Some("weir's expires is a time from now (e.g. 7d)"))
                        }
                        x => nginx_duration(x).map_err(|_| Some("expected a time")),
                    };
                    match v {
                        Ok(t) => {
                            st.insert("expires".into(), Value::String(t));
                            b.mapped(&d.file, d.line, text(d), &format!("static[{idx}].expires"));
                        }
                        Err(None) => b.not_needed(&d.file, d.line, text(d), "off: no expires"),
                        Err(Some(w)) => b.unsupported(&d.file, d.line, text(d), w),
                    }
                }
                "gzip_static" | "brotli_static" => {
                    if d.args.first().is_some_and(|a| a == "on" || a == "always") {
                        st.insert("precompressed".into(), Value::Boolean(true));
                        b.mapped(
                            &d.file,
                            d.line,
                            text(d),
                            &format!("static[{idx}].precompressed"),
                        );
                    } else {
                        b.not_needed(&d.file, d.line, text(d), "off: precompressed = false");
                    }
                }
                "access_log" => b.not_needed(
                    &d.file,
                    d.line,
                    text(d),
                    "weir logs every request, static ones with \"static\": true",
                ),
                "try_files" => b.not_needed(
                    &d.file,
                    d.line,
                    text(d),
                    "weir serves the file or answers 404",
                ),
                "location" => location(b, ctx, d, &chain),
                _ => {
                    if ROUTE_LEVEL.contains(&canon(&d.name).as_str()) {
                        b.unsupported(
                            &d.file,
                            d.line,
                            text(d),
                            "on a [[static]] prefix: add a [[route]] with the same path for limits",
                        );
                    } else {
                        generic(b, ctx, d);
                    }
                }
            }
        }
        b.statics.push(st);
    } else {
        unsupported_tree(
            b,
            l,
            "a location that neither passes to the app nor serves files: weir has no equivalent; do it in the app",
        );
    }
}

fn pass_directive(b: &mut Builder, ctx: &Ctx, d: &Directive) {
    let f = &d.file;
    let target = match pass_target(d) {
        Ok(t) => t,
        Err(e) => return b.unsupported(f, d.line, text(d), &e),
    };
    if ctx.app_given {
        return b.mapped_note(
            f,
            d.line,
            text(d),
            "app",
            "weir runs the app itself: the app server's config gives [app]",
        );
    }
    let (proto, t) = target;
    let name = match &t {
        Target::Addr(a) | Target::Upstream(a) => a.clone(),
    };
    if ctx.chosen_pass.as_ref() != Some(&(proto.to_owned(), name.clone())) {
        return b.unsupported(f, d.line, text(d), "weir has one [upstream]: this location's target differs from the first one's; run another weir for it");
    }
    b.set("upstream.protocol", proto);
    match t {
        Target::Addr(a) => b.push("upstream.servers", a),
        Target::Upstream(u) => {
            if !ctx.upstreams.contains_key(&u) {
                let addr = if proto == "http" {
                    format!("{u}:80")
                } else {
                    u.clone()
                };
                if weir_config::ListenAddr::parse(&addr).is_ok() {
                    b.push("upstream.servers", addr);
                } else {
                    return b.unsupported(
                        f,
                        d.line,
                        text(d),
                        "no upstream block of this name, and not an address",
                    );
                }
            }
        }
    }
    b.mapped(f, d.line, text(d), "upstream.servers, upstream.protocol");
}

/// A directive inside a passing location (the route-level ones were mapped already by
/// [`route_settings`]; here each gets its finding).
fn location_directive(b: &mut Builder, ctx: &mut Ctx, d: &Directive, idx: usize) {
    let name = canon(&d.name);
    if ROUTE_LEVEL.contains(&name.as_str()) {
        if name == "uwsgi_read_timeout" && !ctx.app_given {
            if let Ok(t) = nginx_duration(d.args.first().map(String::as_str).unwrap_or("")) {
                let longer = ctx.max_read_timeout.as_ref().is_none_or(|m| {
                    weir_config::units::parse_duration(m).ok()
                        < weir_config::units::parse_duration(&t).ok()
                });
                if longer {
                    ctx.max_read_timeout = Some(t.clone());
                    b.set("upstream.read_timeout", t);
                }
            }
            return b.mapped_note(
                &d.file,
                d.line,
                text(d),
                "upstream.read_timeout",
                "weir has one read_timeout: the longest is kept",
            );
        }
        let key = format!("route[{idx}].{}", route_key(&name));
        let note = match name.as_str() {
            "uwsgi_limit_rate" => Some("weir paces the answer to the client and frees the worker at once (NGINX paces the read from uWSGI)"),
            "uwsgi_read_timeout" => Some("the route's deadline: 504 when the whole request takes longer"),
            "limit_req_status" | "limit_conn_status" => Some("on the zones this route uses"),
            _ => None,
        };
        return match note {
            Some(n) => b.mapped_note(&d.file, d.line, text(d), &key, n),
            None => b.mapped(&d.file, d.line, text(d), &key),
        };
    }
    match name.as_str() {
        "client_max_body_size" => b.unsupported(
            &d.file,
            d.line,
            text(d),
            "weir has one max_body_size: set it in [server]",
        ),
        "alias" | "root" => b.not_needed(
            &d.file,
            d.line,
            text(d),
            "unused: this location passes to the app",
        ),
        _ => level_directive(b, ctx, d, "location"),
    }
}

/// Sets a route's limits, rate, cache, buffering and deadline from the directives in
/// effect for its location.
fn route_settings(b: &mut Builder, ctx: &mut Ctx, idx: usize, chain: &[&[Directive]]) {
    let mut route = std::mem::take(&mut b.routes[idx]);
    // limit_req zone=NAME [burst=N] [nodelay | delay=N]
    let status = eff(chain, "limit_req_status")
        .first()
        .and_then(|d| d.args.first()?.parse::<i64>().ok());
    let dry = eff(chain, "limit_req_dry_run")
        .first()
        .is_some_and(|d| d.args.first().is_some_and(|a| a == "on"));
    let mut zones = Vec::new();
    for d in eff(chain, "limit_req") {
        let Some(zone) = d.args.iter().find_map(|a| a.strip_prefix("zone=")) else {
            continue;
        };

        let params: Vec<&String> = d.args.iter().filter(|a| !a.starts_with("zone=")).collect();
        let sig = format!("{params:?}");
        match ctx.zone_params.get(zone) {
            Some(prev) if *prev != sig => continue,
            Some(_) => {}
            None => {
                ctx.zone_params.insert(zone.to_owned(), sig);
                let sec = format!("limit_req.{zone}");
                for p in params {
                    if let Some(n) = p.strip_prefix("burst=") {
                        if let Ok(n) = n.parse::<i64>() {
                            b.set(&format!("{sec}.burst"), n);
                        }
                    } else if p == "nodelay" {
                        b.set(&format!("{sec}.nodelay"), true);
                    } else if let Some(n) = p.strip_prefix("delay=") {
                        if let Ok(n) = n.parse::<i64>() {
                            if n > 0 {
                                b.set(&format!("{sec}.delay"), n);
                            }
                        }
                    }
                }
                if let Some(s) = status {
                    b.set(&format!("{sec}.status"), s);
                }
                if dry {
                    b.set(&format!("{sec}.dry_run"), true);
                }
            }
        }
        zones.push(Value::String(zone.to_owned()));
    }
    if !zones.is_empty() {
        route.insert("limit_req".into(), Value::Array(zones));
    }
    let cstatus = eff(chain, "limit_conn_status")
        .first()
        .and_then(|d| d.args.first()?.parse::<i64>().ok());
    let cdry = eff(chain, "limit_conn_dry_run")
        .first()
        .is_some_and(|d| d.args.first().is_some_and(|a| a == "on"));
    let mut czones = Vec::new();
    for d in eff(chain, "limit_conn") {
        let (Some(zone), Some(max)) = (
            d.args.first(),
            d.args.get(1).and_then(|m| m.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let sec = format!("limit_conn.{zone}");
        if b.get(&format!("{sec}.max")).is_none() {
            b.set(&format!("{sec}.max"), max);
            if let Some(s) = cstatus {
                b.set(&format!("{sec}.status"), s);
            }
            if cdry {
                b.set(&format!("{sec}.dry_run"), true);
            }
        }
        czones.push(Value::String(zone.clone()));
    }
    if !czones.is_empty() {
        route.insert("limit_conn".into(), Value::Array(czones));
    }
    let rate = eff(chain, "limit_rate")
        .first()
        .or(eff(chain, "uwsgi_limit_rate").first())
        .and_then(|d| nginx_size(d.args.first()?).ok());
    if let Some(r) = rate.filter(|r| *r > 0) {
        route.insert("limit_rate".into(), size_value(r));
        if let Some(after) = eff(chain, "limit_rate_after")
            .first()
            .and_then(|d| nginx_size(d.args.first()?).ok())
        {
            route.insert("limit_rate_after".into(), size_value(after));
        }
    }
    if let Some(d) = eff(chain, "uwsgi_buffering").first() {
        if d.args.first().is_some_and(|a| a == "off") {
            route.insert("buffering".into(), Value::Boolean(false));
        }
    }
    if ctx.app_given {
        if let Some(t) = eff(chain, "uwsgi_read_timeout")
            .first()
            .and_then(|d| nginx_duration(d.args.first()?).ok())
        {
            route.insert("request_timeout".into(), Value::String(t));
        }
    }
    // The cache.
    let on = eff(chain, "uwsgi_cache")
        .first()
        .is_some_and(|d| d.args.first().is_some_and(|a| a != "off"));
    if on {
        let mut c = Table::new();
        let mut valid = Table::new();
        for d in eff(chain, "uwsgi_cache_valid") {
            let Some((time, codes)) = d.args.split_last() else {
                continue;
            };
            let Ok(t) = nginx_duration(time) else {
                continue;
            };
            let codes: Vec<String> = if codes.is_empty() {
                vec!["200".into(), "301".into(), "302".into()]
            } else {
                codes.to_vec()
            };
            for code in codes {
                valid.insert(code, Value::String(t.clone()));
            }
        }
        c.insert("valid".into(), Value::Table(valid));
        if let Some(k) = eff(chain, "uwsgi_cache_key")
            .first()
            .and_then(|d| d.args.first())
        {
            if let Ok(k) = template(k) {
                c.insert("key".into(), Value::String(k));
            }
        }
        let flag = |n: &str| {
            eff(chain, n)
                .first()
                .is_some_and(|d| d.args.first().is_some_and(|a| a == "on"))
        };
        if flag("uwsgi_cache_lock") {
            c.insert("lock".into(), Value::Boolean(true));
        }
        if let Some(t) = eff(chain, "uwsgi_cache_lock_timeout")
            .first()
            .and_then(|d| nginx_duration(d.args.first()?).ok())
        {
            c.insert("lock_timeout".into(), Value::String(t));
        }
        if flag("uwsgi_cache_background_update") {
            c.insert("background_update".into(), Value::Boolean(true));
        }
        if flag("uwsgi_cache_revalidate") {
            c.insert("revalidate".into(), Value::Boolean(true));
        }
        if let Some(n) = eff(chain, "uwsgi_cache_min_uses")
            .first()
            .and_then(|d| d.args.first()?.parse::<i64>().ok())
        {
            if n > 0 {
                c.insert("min_uses".into(), Value::Integer(n));
            }
        }
        let stale: Vec<Value> = eff(chain, "uwsgi_cache_use_stale")
            .iter()
            .flat_map(|d| d.args.iter())
            .filter(|a| a.parse::<weir_config::UseStale>().is_ok())
            .map(|a| Value::String(a.clone()))
            .collect();
        if !stale.is_empty() {
            c.insert("use_stale".into(), Value::Array(stale));
        }
        for (n, key) in [
            ("uwsgi_cache_bypass", "bypass"),
            ("uwsgi_no_cache", "no_cache"),
        ] {
            let list: Vec<Value> = eff(chain, n)
                .iter()
                .flat_map(|d| d.args.iter())
                .filter_map(|a| template(a).ok())
                .map(Value::String)
                .collect();
            if !list.is_empty() {
                c.insert(key.into(), Value::Array(list));
            }
        }
        route.insert("cache".into(), Value::Table(c));
        b.table("cache");
    }
    b.routes[idx] = route;
}
