//! uWSGI ini options and gunicorn.conf.py settings to `[app]` (and `[server]`) keys, and the
//! last fix-ups on the whole tree.

use toml::Value;

use crate::gunicorn::Setting;
use crate::uwsgi::Opt;
use crate::{size_value, Builder};

fn truthy(v: &str) -> bool {
    matches!(
        v.to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on" | "y"
    )
}

fn positive(v: &str) -> Option<i64> {
    v.trim().parse::<i64>().ok().filter(|n| *n > 0)
}

/// uWSGI options: `module`/`wsgi-file`+`callable`, `chdir`, `virtualenv`, `processes`, ...
pub(crate) fn uwsgi(b: &mut Builder, file: &str, opts: &[Opt], nginx_given: bool) {
    let mut module: Option<String> = None;
    let mut callable: Option<String> = None;
    for o in opts {
        let d = format!("{} = {}", o.key, o.value);
        let v = o.value.as_str();
        let l = o.line;
        match o.key.as_str() {
            "module" | "wsgi" => {
                module = Some(v.to_owned());
                b.mapped(file, l, d, "app.module");
            }
            "wsgi-file" | "file" => {
                let p = std::path::Path::new(v);
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                module = Some(stem);
                let mut note = "the file's name is the module".to_owned();
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    if b.get("app.chdir").is_none() {
                        b.set("app.chdir", dir.display().to_string());
                        note.push_str("; its directory is app.chdir");
                    }
                }
                b.mapped_note(file, l, d, "app.module", &note);
            }
            "callable" => {
                callable = Some(v.to_owned());
                b.mapped(file, l, d, "app.module");
            }
            "chdir" => {
                b.set("app.chdir", v.to_owned());
                b.mapped(file, l, d, "app.chdir");
            }
            "virtualenv" | "venv" | "home" | "pyhome" => {
                b.set("app.virtualenv", v.to_owned());
                b.mapped(file, l, d, "app.virtualenv");
            }
            "processes" | "workers" | "p" => match positive(v) {
                Some(n) => {
                    b.set("app.workers", n.min(1024));
                    b.mapped(file, l, d, "app.workers");
                }
                None => b.unsupported(file, l, d, "expected a number of processes"),
            },
            "harakiri" => match positive(v) {
                Some(n) => {
                    b.set("app.harakiri", n);
                    b.mapped(file, l, d, "app.harakiri");
                }
                None => b.not_needed(file, l, d, "0: no harakiri (leave app.harakiri unset)"),
            },
            "max-requests" => match positive(v) {
                Some(n) => {
                    b.set("app.max_requests", n);
                    b.mapped(file, l, d, "app.max_requests");
                }
                None => b.not_needed(file, l, d, "0: never recycle (weir's default)"),
            },
            "max-requests-delta" => match positive(v) {
                Some(n) => {
                    b.set("app.max_requests_jitter", n);
                    b.mapped(file, l, d, "app.max_requests_jitter");
                }
                None => b.not_needed(file, l, d, "0"),
            },
            "reload-on-rss" => match positive(v) {
                Some(n) => {
                    b.set("app.reload_on_rss", format!("{n}MiB"));
                    b.mapped_note(file, l, d, "app.reload_on_rss", "uWSGI counts megabytes");
                }
                None => b.not_needed(file, l, d, "0: off"),
            },
            "listen" => match positive(v) {
                Some(n) => {
                    b.set("server.backlog", n);
                    b.mapped_note(file, l, d, "server.backlog", "weir's listeners' backlog; requests beyond the workers wait in weir's [queue], not the kernel's");
                }
                None => b.unsupported(file, l, d, "expected a number"),
            },
            "socket" | "uwsgi-socket" | "http-socket" | "http" => {
                let http = o.key.starts_with("http");
                let addr = if v.starts_with(':') {
                    format!("0.0.0.0{v}")
                } else if v.starts_with('/') || v.starts_with('@') || v.starts_with('.') {
                    format!("unix:{v}")
                } else {
                    v.to_owned()
                };
                if nginx_given {
                    b.not_needed(file, l, d, "weir's front door takes NGINX's place, so NGINX's uwsgi_pass to this socket is gone (to keep NGINX in front, import without --nginx: it becomes [server] uwsgi_listen)");
                } else if weir_config::ListenAddr::parse(&addr).is_err()
                    || addr.starts_with("unix:@")
                {
                    b.unsupported(
                        file,
                        l,
                        d,
                        "not an address weir can listen on (HOST:PORT or a socket path)",
                    );
                } else if http {
                    b.push("server.listen", addr);
                    b.mapped(file, l, d, "server.listen");
                } else {
                    b.push("server.uwsgi_listen", addr);
                    b.mapped_note(
                        file,
                        l,
                        d,
                        "server.uwsgi_listen",
                        "weir speaks uwsgi there, behind your NGINX's uwsgi_pass",
                    );
                }
            }
            "lazy-apps" | "lazy" => {
                if truthy(v) {
                    b.set("app.preload", false);
                    b.mapped_note(
                        file,
                        l,
                        d,
                        "app.preload",
                        "every worker imports the app itself",
                    );
                } else {
                    b.not_needed(file, l, d, "weir's preload = \"auto\" forks the workers from one import when that is safe");
                }
            }
            "buffer-size" => match positive(v) {
                Some(n) => {
                    b.set("server.max_header_size", size_value((n as u64).max(1024)));
                    b.mapped_note(
                        file,
                        l,
                        d,
                        "server.max_header_size",
                        "the largest request head; weir's default is 32KiB",
                    );
                }
                None => b.unsupported(file, l, d, "expected a number of bytes"),
            },
            "disable-logging" => {
                if truthy(v) {
                    b.set("server.access_log", "off");
                    b.mapped(file, l, d, "server.access_log");
                } else {
                    b.not_needed(file, l, d, "weir logs every request");
                }
            }
            "master"
            | "vacuum"
            | "die-on-term"
            | "strict"
            | "need-app"
            | "single-interpreter"
            | "enable-threads"
            | "thunder-lock"
            | "plugin"
            | "plugins"
            | "auto-procname"
            | "procname-prefix"
            | "procname"
            | "harakiri-verbose"
            | "memory-report"
            | "post-buffering"
            | "chmod-socket"
            | "chown-socket"
            | "socket-timeout"
            | "uwsgi"
            | "log-x-forwarded-for"
            | "no-orphans"
            | "ignore-sigpipe"
            | "ignore-write-errors"
            | "disable-write-exception"
            | "py-call-osafterfork" => b.not_needed(file, l, d, uwsgi_not_needed(&o.key)),
            _ => b.unsupported(file, l, d, uwsgi_unsupported(&o.key)),
        }
    }
    if let Some(m) = module {
        let full = if m.contains(':') {
            m
        } else {
            format!("{m}:{}", callable.unwrap_or_else(|| "application".into()))
        };
        b.set("app.module", full);
    }
}

fn uwsgi_not_needed(key: &str) -> &'static str {
    match key {
        "master" | "die-on-term" | "no-orphans" => {
            "weir is always a master that supervises its workers and drains on SIGTERM"
        }
        "vacuum" | "chmod-socket" | "chown-socket" => "weir removes its sockets itself",
        "enable-threads" | "py-call-osafterfork" => {
            "weir's workers run Python with threads allowed"
        }
        "post-buffering" => "weir reads bodies up to 1 MiB before taking a worker",
        "harakiri-verbose" | "memory-report" | "log-x-forwarded-for" => {
            "weir logs harakiri, memory recycling and the client in its own log lines"
        }
        "plugin" | "plugins" => "weir embeds CPython: no plugins",
        _ => "weir does this itself",
    }
}

fn uwsgi_unsupported(key: &str) -> &'static str {
    match key {
        "threads" => "weir's workers take one request at a time: raise app.workers instead",
        "uid" | "gid" => "run weir as that user (systemd User=/Group=)",
        "env" => "set it in weir's environment (systemd Environment=)",
        "pythonpath" | "python-path" | "pp" => {
            "app.chdir is on sys.path; for more, set PYTHONPATH in weir's environment"
        }
        "logto" | "daemonize" | "logger" | "req-logger" => {
            "weir logs to stdout/stderr (journald); the access log is [server] access_log"
        }
        "pidfile" => "systemd tracks weir's pid",
        "cheaper" | "cheaper-algo" | "cheaper-initial" | "cheaper-step" => {
            "weir's pool has a fixed size: app.workers"
        }
        "max-worker-lifetime" => "use app.max_requests or app.reload_on_rss",
        "py-autoreload" | "touch-reload" => "send weir SIGHUP to reload (new workers ready first)",
        "mount" | "manage-script-name" => "weir runs one app: app.module",
        "static-map" | "check-static" => "use [[static]] (prefix, root)",
        "stats" => "use [admin] listen: /metrics",
        "ini" | "include" => "import that file too",
        _ => {
            "weir import does not know this option and weir has no equivalent; check docs/config.md"
        }
    }
}

fn as_str(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn as_list(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Array(a) => a.iter().filter_map(as_str).collect(),
        other => as_str(other)
            .map(|s| {
                s.split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
    }
}

const HOOKS: &[&str] = &[
    "on_starting",
    "on_reload",
    "when_ready",
    "pre_fork",
    "post_fork",
    "post_worker_init",
    "worker_int",
    "worker_abort",
    "pre_exec",
    "pre_request",
    "post_request",
    "child_exit",
    "worker_exit",
    "nworkers_changed",
    "on_exit",
    "ssl_context",
];

/// gunicorn.conf.py settings (Gunicorn's names).
pub(crate) fn gunicorn(b: &mut Builder, file: &str, settings: &[Setting], nginx_given: bool) {
    for s in settings {
        let shown = match &s.value {
            serde_json::Value::String(x) => format!("{x:?}"),
            other => other.to_string(),
        };
        let d = format!("{} = {}", s.name, shown);
        let l = s.line;
        if s.hook {
            if HOOKS.contains(&s.name.as_str()) {
                b.unsupported(file, l, d, "weir has no server hooks: use os.register_at_fork(after_in_child=...) in the app for post_fork, app.ready_check for readiness");
            } else {
                b.not_needed(file, l, d, "a helper function, not a Gunicorn setting");
            }
            continue;
        }
        let v = as_str(&s.value).unwrap_or_default();
        let int = positive(&v);
        match s.name.as_str() {
            "wsgi_app" => {
                b.set("app.module", v.clone());
                b.mapped(file, l, d, "app.module");
            }
            "chdir" => {
                b.set("app.chdir", v.clone());
                b.mapped(file, l, d, "app.chdir");
            }
            "workers" => match int {
                Some(n) => {
                    b.set("app.workers", n.min(1024));
                    b.mapped(file, l, d, "app.workers");
                }
                None => b.unsupported(file, l, d, "expected a number"),
            },
            "timeout" => match int {
                Some(n) => {
                    b.set("app.harakiri", n);
                    b.mapped_note(file, l, d, "app.harakiri", "a sync worker silent this long is killed: a request running this long");
                }
                None => b.not_needed(file, l, d, "0: no timeout"),
            },
            "graceful_timeout" => match int {
                Some(n) => {
                    b.set("app.graceful_timeout", n);
                    b.mapped(file, l, d, "app.graceful_timeout");
                }
                None => b.unsupported(file, l, d, "expected seconds"),
            },
            "max_requests" | "max_requests_jitter" => match int {
                Some(n) => {
                    let key = format!("app.{}", s.name);
                    b.set(&key, n);
                    b.mapped(file, l, d, &key);
                }
                None => b.not_needed(file, l, d, "0: off"),
            },
            "preload_app" => {
                let on = s.value.as_bool().unwrap_or(false);
                b.set("app.preload", on);
                b.mapped(file, l, d, "app.preload");
            }
            "backlog" => match int {
                Some(n) => {
                    b.set("server.backlog", n);
                    b.mapped(file, l, d, "server.backlog");
                }
                None => b.unsupported(file, l, d, "expected a number"),
            },
            "bind" => {
                if nginx_given {
                    b.not_needed(file, l, d, "weir's front door takes NGINX's place, so NGINX's proxy_pass to this address is gone (to keep NGINX in front, import without --nginx)");
                    continue;
                }
                let mut ok = true;
                for a in as_list(&s.value) {
                    let a = if let Some(p) = a.strip_prefix("unix:") { format!("unix:{p}") } else if a.starts_with(':') { format!("0.0.0.0{a}") } else { a };
                    if weir_config::ListenAddr::parse(&a).is_ok() {
                        b.push("server.listen", a);
                    } else {
                        ok = false;
                    }
                }
                if ok {
                    b.mapped(file, l, d, "server.listen");
                } else {
                    b.mapped_note(file, l, d, "server.listen", "addresses that are not HOST:PORT or unix:PATH were left out");
                }
            }
            "forwarded_allow_ips" => {
                let mut n = 0;
                for ip in as_list(&s.value) {
                    let ip = if ip == "*" { "0.0.0.0/0".to_owned() } else { ip };
                    if weir_config::units::parse_cidr(&ip).is_ok() {
                        b.push("server.trusted_proxies", ip);
                        n += 1;
                    }
                }
                if n > 0 {
                    b.mapped(file, l, d, "server.trusted_proxies");
                } else {
                    b.unsupported(file, l, d, "weir takes addresses and CIDR ranges");
                }
            }
            "accesslog" => {
                let target = match v.as_str() {
                    "-" => "stdout".to_owned(),
                    "" | "None" | "null" => "off".to_owned(),
                    p => p.to_owned(),
                };
                b.set("server.access_log", target);
                b.mapped_note(file, l, d, "server.access_log", "one JSON line per request");
            }
            "limit_request_line" | "limit_request_field_size" | "limit_request_fields" => {
                b.not_needed(file, l, d, "weir bounds the whole request head with [server] max_header_size (32KiB)")
            }
            "worker_class" => {
                if v == "sync" || v.ends_with("SyncWorker") {
                    b.not_needed(file, l, d, "weir's workers are sync workers");
                } else {
                    b.unsupported(file, l, d, "weir's workers take one request at a time (as sync): raise app.workers; async apps need another server");
                }
            }
            "threads" => {
                if int.unwrap_or(1) <= 1 {
                    b.not_needed(file, l, d, "one thread per worker, as weir's");
                } else {
                    b.unsupported(file, l, d, "weir's workers take one request at a time: raise app.workers instead");
                }
            }
            "keepalive" | "worker_connections" | "errorlog" | "loglevel" | "capture_output"
            | "proc_name" | "worker_tmp_dir" | "access_log_format" | "daemon" | "pidfile"
            | "umask" | "tmp_upload_dir" | "logger_class" | "syslog" | "disable_redirect_access_to_syslog" => {
                b.not_needed(file, l, d, "weir handles it itself (logs to stdout/stderr, keep-alive, no daemon mode)")
            }
            "user" | "group" => b.unsupported(file, l, d, "run weir as that user (systemd User=/Group=)"),
            "raw_env" => b.unsupported(file, l, d, "set it in weir's environment (systemd Environment=)"),
            "pythonpath" => b.unsupported(file, l, d, "app.chdir is on sys.path; for more, set PYTHONPATH in weir's environment"),
            "reload" | "reload_extra_files" | "reload_engine" => b.unsupported(file, l, d, "send weir SIGHUP to reload"),
            "certfile" | "keyfile" | "ca_certs" | "ssl_version" | "cert_reqs" | "ciphers" => {
                b.unsupported(file, l, d, "weir terminates TLS itself: put the certificate and key in [tls] and the address in [server] tls_listen (docs/tls.md)")
            }
            "statsd_host" | "statsd_prefix" | "dogstatsd_tags" => b.unsupported(file, l, d, "use [admin] listen: Prometheus /metrics"),
            "proxy_protocol" | "proxy_allow_ips" => b.unsupported(file, l, d, "weir does not read the PROXY protocol: use trusted_proxies and X-Forwarded-For"),
            _ => b.not_needed(file, l, d, "not a Gunicorn setting weir knows (Gunicorn ignores unknown names; if it is one, check docs/config.md)"),
        }
    }
}

fn secs(v: Option<&Value>) -> Option<std::time::Duration> {
    match v? {
        Value::Integer(n) => Some(std::time::Duration::from_secs(*n as u64)),
        Value::String(s) => weir_config::units::parse_duration(s).ok(),
        _ => None,
    }
}

/// Fix-ups over the whole tree: a deadline shorter than harakiri is raised to it (weir
/// refuses the contradiction; NGINX would have answered 504 first), with a note on the
/// directive that set it.
pub(crate) fn finish(b: &mut Builder) {
    // Zones: a limit_req/limit_conn may come before (or without) its zone's definition;
    // a zone without its definition is dropped, with the routes' references to it.
    for (kind, needed) in [
        ("limit_req", ["key", "rate"]),
        ("limit_conn", ["key", "max"]),
    ] {
        let mut defined: Vec<String> = Vec::new();
        if let Some(zones) = b.t.get_mut(kind).and_then(Value::as_table_mut) {
            zones.retain(|_, z| needed.iter().all(|k| z.get(*k).is_some()));
            defined = zones.keys().cloned().collect();
        }
        if defined.is_empty() {
            b.t.remove(kind);
        }
        for f in b.findings.iter_mut() {
            let zone = match (kind, f.directive.split(' ').collect::<Vec<_>>().as_slice()) {
                ("limit_req", ["limit_req", args @ ..]) => args
                    .iter()
                    .find_map(|a| a.strip_prefix("zone="))
                    .map(str::to_owned),
                ("limit_conn", ["limit_conn", z, ..]) => Some((*z).to_owned()),
                _ => None,
            };
            if let Some(z) = zone {
                if !defined.contains(&z) {
                    f.verdict = crate::Verdict::Unsupported {
                        what_to_do: format!("zone {z:?} has no valid {kind}_zone: define it (key and rate/max), or remove this"),
                    };
                }
            }
        }
        for r in b.routes.iter_mut() {
            if let Some(Value::Array(list)) = r.get_mut(kind) {
                list.retain(|z| z.as_str().is_some_and(|z| defined.iter().any(|d| d == z)));
                if list.is_empty() {
                    r.remove(kind);
                }
            }
        }
    }
    let harakiri = secs(b.get("app.harakiri"));
    let Some(h) = harakiri else { return };
    let raise = |b: &mut Builder, key: &str, current: std::time::Duration| {
        if current < h {
            let note = format!(
                "raised to app.harakiri ({}s): weir refuses a deadline shorter than harakiri",
                h.as_secs()
            );
            for f in b.findings.iter_mut() {
                if let crate::Verdict::Mapped { key: k, note: n } = &mut f.verdict {
                    if k == key || (key.starts_with("route[") && k == "route[*].request_timeout") {
                        *n = Some(note.clone());
                    }
                }
            }
            true
        } else {
            false
        }
    };
    if let Some(t) = secs(b.get("server.request_timeout")) {
        if raise(b, "server.request_timeout", t) {
            b.set("server.request_timeout", h.as_secs() as i64);
        }
    }
    for i in 0..b.routes.len() {
        if let Some(t) = secs(b.routes[i].get("request_timeout")) {
            if raise(b, &format!("route[{i}].request_timeout"), t) {
                b.routes[i].insert("request_timeout".into(), Value::Integer(h.as_secs() as i64));
            }
        }
    }
}
