use std::path::{Path, PathBuf};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// weir serve --check's own checks: parse, defaults, validate.
fn check(imported: &Imported) -> weir_config::Config {
    let text = render_toml(imported, &["x".into()]);
    let mut c = weir_config::Config::parse(&text, Path::new("out.toml"))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.apply_defaults();
    c.validate().unwrap_or_else(|e| panic!("{e}\n{text}"));
    c
}

fn verdict_of<'a>(i: &'a Imported, directive_start: &str) -> &'a Verdict {
    &i.findings
        .iter()
        .find(|f| f.directive.starts_with(directive_start))
        .unwrap_or_else(|| panic!("no finding for {directive_start}: {:#?}", i.findings))
        .verdict
}

fn key_of(i: &Imported, directive_start: &str) -> String {
    match verdict_of(i, directive_start) {
        Verdict::Mapped { key, .. } => key.clone(),
        v => panic!("{directive_start}: {v:?}"),
    }
}

fn is_not_needed(i: &Imported, d: &str) -> bool {
    matches!(verdict_of(i, d), Verdict::NotNeeded { .. })
}

fn is_unsupported(i: &Imported, d: &str) -> bool {
    matches!(verdict_of(i, d), Verdict::Unsupported { .. })
}

fn paper() -> Imported {
    import_files(
        Some(&fixture("paper-nginx.conf")),
        AppFile::Uwsgi(&fixture("paper-uwsgi.ini"), "uwsgi"),
        None,
    )
    .unwrap()
}

#[test]
fn the_papers_configuration_imports_and_validates() {
    let i = paper();
    let c = check(&i);
    assert_eq!(c.app.module.as_deref(), Some("app:app"));
    assert!(c.app.chdir.as_ref().unwrap().ends_with("examples/shop"));
    assert_eq!(c.app.workers, 10);
    assert_eq!(c.app.harakiri, Some(weir_config::Seconds::from_secs(30)));
    assert_eq!(c.app.max_requests, 5000);
    assert_eq!(c.server.backlog, 1024);
    assert!(
        c.upstream.is_none(),
        "uwsgi_pass with an ini: weir runs the app"
    );
    assert_eq!(c.server.listen[0].to_string(), "0.0.0.0:80");
    assert!(c.server.uwsgi_listen.is_empty());
    assert_eq!(c.server.max_body_size.bytes(), 10 << 20);
    let z = &c.limit_req["mylimit"];
    assert_eq!(
        (
            z.key.as_str(),
            z.rate.as_str(),
            z.burst,
            z.nodelay,
            z.status
        ),
        ("$remote_addr", "10r/s", 20, false, 429)
    );
    assert_eq!(z.max_keys, 160_000);
    assert_eq!(c.limit_conn["addr"].max, 10);
    let root = &c.route[0];
    assert_eq!(root.path, "/");
    assert_eq!(root.limit_req, vec!["mylimit"]);
    assert_eq!(root.limit_conn, vec!["addr"]);
    // uwsgi_read_timeout 30s and harakiri 30: the route's deadline.
    assert_eq!(
        root.request_timeout,
        Some(weir_config::Seconds::from_secs(30))
    );
    let rc = root.cache.as_ref().unwrap();
    assert_eq!(rc.key, "$request_uri");
    assert_eq!(rc.valid_for(200), Some(std::time::Duration::from_secs(2)));
    let cache = c.cache.as_ref().unwrap();
    assert_eq!(
        cache.disk.as_deref(),
        Some(Path::new("/var/cache/nginx/shop"))
    );
    assert_eq!(cache.disk_max_size.unwrap().bytes(), 100 << 20);
    assert_eq!(c.route[1].path, "/big");
    assert_eq!(c.route[1].limit_rate.unwrap().bytes(), 10 << 10);
    // Every directive of both files has a verdict.
    fn count(t: &[nginx::Directive]) -> usize {
        t.iter()
            .map(|d| 1 + count(d.block.as_deref().unwrap_or(&[])))
            .sum()
    }
    let tree = nginx::parse_file(&fixture("paper-nginx.conf"), &nginx::Fs).unwrap();
    assert_eq!(count(&tree), 31);
    for (file, n) in [("paper-nginx.conf", 31), ("paper-uwsgi.ini", 10)] {
        let got = i
            .findings
            .iter()
            .filter(|f| f.source.ends_with(file))
            .count();
        assert_eq!(got, n, "{file}: {:#?}", i.findings);
    }
    assert!(is_not_needed(&i, "uwsgi_buffers 8 128"));
    assert!(is_not_needed(&i, "uwsgi_buffer_size"));
    assert!(is_not_needed(&i, "include uwsgi_params"));
    assert!(is_not_needed(&i, "socket = /run/uwsgi/shop.sock"));
    assert_eq!(key_of(&i, "uwsgi_pass"), "app");
    assert_eq!(key_of(&i, "limit_req_zone"), "limit_req.mylimit");
    assert_eq!(key_of(&i, "processes"), "app.workers");
    assert_eq!(key_of(&i, "keepalive_timeout"), "server.keepalive_timeout");
    assert_eq!(
        check(&i).server.keepalive_timeout,
        weir_config::Seconds::from_secs(65)
    );
    let table = render_table(&i.findings);
    assert!(table.contains("not needed"), "{table}");
    assert!(table.contains("41 directives"), "{table}");
}

#[test]
fn nginx_alone_becomes_an_upstream() {
    let i = import_files(Some(&fixture("paper-nginx.conf")), AppFile::None, None).unwrap();
    let c = check(&i);
    let u = c.upstream.as_ref().unwrap();
    assert_eq!(u.servers[0].to_string(), "unix:/run/uwsgi/shop.sock");
    assert_eq!(u.servers.len(), 1);
    assert_eq!(u.protocol, weir_config::UpstreamProtocol::Uwsgi);
    assert_eq!(u.read_timeout, weir_config::Seconds::from_secs(30));
    assert!(c.app.module.is_none());
    assert_eq!(key_of(&i, "uwsgi_read_timeout"), "upstream.read_timeout");
}

#[test]
fn the_full_fixture_maps_every_family() {
    let i = import_files(Some(&fixture("full-nginx.conf")), AppFile::None, None).unwrap();
    let c = check(&i);
    let listens: Vec<String> = c.server.listen.iter().map(|l| l.to_string()).collect();
    assert_eq!(listens, vec!["127.0.0.1:8080", "unix:/run/weir.sock"]);
    assert_eq!(c.server.backlog, 512);
    assert_eq!(c.server.send_timeout, weir_config::Seconds::from_secs(45));
    assert_eq!(c.server.max_body_size.bytes(), 20 << 20);
    assert_eq!(c.server.max_header_size.bytes(), 64 << 10);
    assert_eq!(
        c.server.client_header_timeout,
        weir_config::Seconds::from_secs(15)
    );
    assert_eq!(
        c.server.client_body_timeout,
        weir_config::Seconds::from_secs(20)
    );
    assert_eq!(c.server.trusted_proxies, vec!["10.0.0.0/8"]);
    let comp = c.compression.as_ref().unwrap();
    assert_eq!(
        comp.types,
        vec!["text/html", "application/json", "text/css"]
    );
    assert_eq!((comp.min_length.bytes(), comp.gzip_level), (256, 5));
    let u = c.upstream.as_ref().unwrap();
    let servers: Vec<String> = u.servers.iter().map(|s| s.to_string()).collect();
    assert_eq!(servers, vec!["127.0.0.1:3031", "unix:/run/app2.sock"]);
    assert_eq!((u.max_fails, u.max_conns), (3, 8));
    assert_eq!(u.fail_timeout, weir_config::Seconds::from_secs(5));
    assert_eq!(u.read_timeout, weir_config::Seconds::from_secs(120));
    let s = &c.statics[0];
    assert_eq!(
        (s.prefix.as_str(), s.root.to_str().unwrap(), s.precompressed),
        ("/static", "/tmp", true)
    );
    assert_eq!(s.expires, Some(weir_config::Seconds::from_secs(7 * 86400)));
    let api = c.route.iter().find(|r| r.path == "/api").unwrap();
    assert_eq!(api.buffering, Some(false));
    assert_eq!(api.limit_req, vec!["api"]);
    let z = &c.limit_req["api"];
    assert_eq!(
        (z.burst, z.nodelay, z.status, z.max_keys),
        (5, true, 503, 16_000)
    );
    // limit_rate at server level reaches every route.
    for r in &c.route {
        assert_eq!(r.limit_rate.unwrap().bytes(), 1 << 20, "{}", r.path);
        assert_eq!(r.limit_rate_after.unwrap().bytes(), 2 << 20);
    }
    let root = c.route.iter().find(|r| r.path == "/").unwrap();
    let rc = root.cache.as_ref().unwrap();
    assert_eq!(rc.valid_for(301), Some(std::time::Duration::from_secs(600)));
    assert_eq!(rc.valid_for(404), Some(std::time::Duration::from_secs(60)));
    assert!(rc.lock && rc.background_update);
    assert_eq!(rc.use_stale.len(), 4);
    assert_eq!(rc.bypass, vec!["$cookie_nocache", "$arg_nocache"]);
    assert!(c.route.iter().any(|r| r.path == "/health"));
    assert!(is_unsupported(&i, "location ~"));
    assert!(is_unsupported(&i, "return 404"));
    assert!(is_unsupported(&i, "add_header"));
    assert!(
        is_unsupported(&i, "proxy_pass http://127.0.0.1:9000"),
        "the second server"
    );
    assert!(is_not_needed(&i, "keepalive 16"));
    assert!(is_not_needed(&i, "set_real_ip_from unix:"));
    assert_eq!(key_of(&i, "send_timeout"), "server.send_timeout");
    assert!(i
        .findings
        .iter()
        .any(|f| f.source.ends_with("conf.d/timeouts.conf") && f.line == 2));
}

#[test]
fn gunicorn_conf_runs_in_python() {
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_err()
    {
        return;
    }
    let i = import_files(None, AppFile::Gunicorn(&fixture("gunicorn.conf.py")), None).unwrap();
    let c = check(&i);
    assert_eq!(c.app.module.as_deref(), Some("app:app"));
    assert!(c.app.workers >= 3 && c.app.workers <= 10);
    assert_eq!(c.app.harakiri, Some(weir_config::Seconds::from_secs(30)));
    assert_eq!((c.app.max_requests, c.app.max_requests_jitter), (5000, 500));
    assert_eq!(c.app.preload, weir_config::Preload::On);
    assert_eq!(
        c.server.listen[0].to_string(),
        "unix:/run/gunicorn/shop.sock"
    );
    assert_eq!(c.server.access_log, "stdout");
    assert!(is_unsupported(&i, "post_fork"));
    assert!(is_not_needed(&i, "worker_class"));
    let workers = i
        .findings
        .iter()
        .find(|f| f.directive.starts_with("workers"))
        .unwrap();
    assert_eq!(workers.line, 6);
}

#[test]
fn bad_inputs_name_file_and_line() {
    let dir = std::env::temp_dir().join(format!("weir-import-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.conf");
    std::fs::write(&bad, "http {\n  server {\n    listen 80\n  }\n}\n").unwrap();
    let e = import_files(Some(&bad), AppFile::None, None).unwrap_err();
    assert_eq!(e.line, 4, "{e}");
    assert!(
        e.to_string().starts_with(&format!("{}:4: ", bad.display())),
        "{e}"
    );
    let e = import_files(Some(&dir.join("nope.conf")), AppFile::None, None).unwrap_err();
    assert!(e.message.contains("no such file"), "{e}");
    let ini = dir.join("bad.ini");
    std::fs::write(&ini, "[uwsgi]\nmodule = a:b\n[broken\n").unwrap();
    let e = import_files(None, AppFile::Uwsgi(&ini, "uwsgi"), None).unwrap_err();
    assert_eq!(e.line, 3);
    if std::process::Command::new("python3")
        .arg("-V")
        .output()
        .is_ok()
    {
        let py = dir.join("g.conf.py");
        std::fs::write(&py, "workers = 2\nbind = (\n").unwrap();
        let e = import_files(None, AppFile::Gunicorn(&py), None).unwrap_err();
        assert_eq!(e.file, py.display().to_string());
        assert!(e.line >= 2, "{e}");
        std::fs::write(&py, "workers = 2\nraise ValueError('x')\n").unwrap();
        let e = import_files(None, AppFile::Gunicorn(&py), None).unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn conv(nginx: &str, ini: Option<&str>) -> Imported {
    let tree = nginx::parse_text(nginx, "n.conf").unwrap();
    let app = match ini {
        Some(t) => AppSource::Uwsgi {
            file: "u.ini".into(),
            opts: uwsgi::parse(t, Path::new("/x/u.ini"), "uwsgi", &|_| None).unwrap(),
        },
        None => AppSource::None,
    };
    convert(&Inputs {
        nginx: Some(("n.conf".into(), tree)),
        app,
        app_override: None,
    })
}

#[test]
fn units() {
    assert_eq!(nginx_duration("60s").unwrap(), "60s");
    assert_eq!(nginx_duration("1m").unwrap(), "60s");
    assert_eq!(nginx_duration("500ms").unwrap(), "500ms");
    assert_eq!(nginx_duration("1h 30m").unwrap(), "5400s");
    assert_eq!(nginx_duration("10").unwrap(), "10s");
    assert!(nginx_duration("x").is_err());
    assert!(nginx_duration("").is_err());
    assert_eq!(nginx_size("1k").unwrap(), 1024);
    assert_eq!(nginx_size("10m").unwrap(), 10 << 20);
    assert_eq!(size_value(10 << 20), toml::Value::String("10MiB".into()));
    assert_eq!(size_value(1000), toml::Value::Integer(1000));
}

#[test]
fn harakiri_longer_than_read_timeout_raises_the_deadline() {
    let i = conv(
        "http { server { listen 80; uwsgi_read_timeout 10s; location / { uwsgi_pass 127.0.0.1:3031; } } }",
        Some("[uwsgi]\nmodule = app\nharakiri = 20\n"),
    );
    let c = i.config.get("route").unwrap().as_array().unwrap()[0].clone();
    assert_eq!(c.get("request_timeout"), Some(&toml::Value::Integer(20)));
    match verdict_of(&i, "uwsgi_read_timeout") {
        Verdict::Mapped { note, .. } => assert!(note.as_ref().unwrap().contains("raised")),
        v => panic!("{v:?}"),
    }
    assert_eq!(
        i.config["app"]["module"],
        toml::Value::String("app:application".into())
    );
}

#[test]
fn uwsgi_without_nginx_keeps_the_socket_and_maps_the_rest() {
    let tree_free = convert(&Inputs {
        nginx: None,
        app: AppSource::Uwsgi {
            file: "u.ini".into(),
            opts: uwsgi::parse(
                "[uwsgi]\nwsgi-file = /srv/app/wsgi.py\ncallable = app\nvirtualenv = /srv/venv\nsocket = :3031\nhttp-socket = 127.0.0.1:9090\nlazy-apps = true\nbuffer-size = 32768\nreload-on-rss = 200\nthreads = 4\nenable-threads = true\n",
                Path::new("/x/u.ini"),
                "uwsgi",
                &|_| None,
            )
            .unwrap(),
        },
        app_override: None,
    });
    let t = &tree_free.config;
    assert_eq!(t["app"]["module"].as_str(), Some("wsgi:app"));
    assert_eq!(t["app"]["chdir"].as_str(), Some("/srv/app"));
    assert_eq!(t["app"]["virtualenv"].as_str(), Some("/srv/venv"));
    assert_eq!(t["app"]["preload"].as_bool(), Some(false));
    assert_eq!(t["app"]["reload_on_rss"].as_str(), Some("200MiB"));
    assert_eq!(t["server"]["max_header_size"].as_str(), Some("32KiB"));
    assert_eq!(
        t["server"]["uwsgi_listen"][0].as_str(),
        Some("0.0.0.0:3031")
    );
    assert_eq!(t["server"]["listen"][0].as_str(), Some("127.0.0.1:9090"));
    assert!(is_unsupported(&tree_free, "threads"));
    assert!(is_not_needed(&tree_free, "enable-threads"));
}

#[test]
fn more_servers_and_regex_locations_are_reported() {
    let i = conv(
        "http { server { listen 81; location / { return 200; } } server { listen 80; location / { proxy_pass http://unix:/run/g.sock:/; } location @x { } } }",
        None,
    );
    assert!(is_unsupported(&i, "listen 81"));
    let c = check(&i);
    assert_eq!(
        c.upstream.as_ref().unwrap().protocol,
        weir_config::UpstreamProtocol::Http
    );
    assert_eq!(
        c.upstream.unwrap().servers[0].to_string(),
        "unix:/run/g.sock"
    );
    assert!(is_unsupported(&i, "location @x"));
}

#[test]
fn zone_used_twice_with_other_parameters_keeps_the_first() {
    let i = conv(
        "http { limit_req_zone $remote_addr zone=z:1m rate=5r/s; server { location /a { limit_req zone=z burst=3; uwsgi_pass 127.0.0.1:1; } location /b { limit_req zone=z burst=9 nodelay; uwsgi_pass 127.0.0.1:1; } } }",
        None,
    );
    let c = check(&i);
    assert_eq!(c.limit_req["z"].burst, 3);
    assert!(c.route[1].limit_req.is_empty());
}

#[test]
fn every_directive_is_listed() {
    let i = conv(
        "http { server { listen 80; location / { uwsgi_pass 127.0.0.1:1; something_new on; if ($x) { return 403; } } } }",
        None,
    );
    let names: Vec<&str> = i
        .findings
        .iter()
        .map(|f| f.directive.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "http",
            "server",
            "listen",
            "location",
            "uwsgi_pass",
            "something_new",
            "if",
            "return"
        ]
    );
    assert!(is_unsupported(&i, "something_new"));
}

#[test]
fn a_zone_never_defined_is_dropped() {
    let i = conv(
        "http { server { location / { limit_req zone=x; uwsgi_pass 127.0.0.1:1; } } }",
        None,
    );
    let c = check(&i);
    assert!(c.route[0].limit_req.is_empty());
    assert!(is_unsupported(&i, "limit_req zone=x"));
}

#[test]
fn zones_defined_after_their_use_or_never() {
    let i = conv(
        "http { server { location / { limit_req zone=late burst=2; limit_req_status 444; limit_req zone=nowhere; limit_conn c 3; uwsgi_pass 127.0.0.1:1; } } limit_req_zone $remote_addr zone=late:1m rate=1r/s; }",
        None,
    );
    let c = check(&i);
    assert_eq!(c.route[0].limit_req, vec!["late"]);
    assert_eq!(
        (c.limit_req["late"].burst, c.limit_req["late"].status),
        (2, 444)
    );
    assert!(!c.limit_req.contains_key("nowhere"));
    assert!(c.route[0].limit_conn.is_empty());
    assert!(c.limit_conn.is_empty());
    assert!(is_unsupported(&i, "limit_req zone=nowhere"));
    assert!(is_unsupported(&i, "limit_conn c 3"));
    assert_eq!(key_of(&i, "limit_req zone=late"), "route[0].limit_req");
}

#[test]
fn directives_inside_unimported_blocks_are_listed_in_file_order() {
    let i = conv(
        "http {\n server {\n  location / {\n   uwsgi_pass 127.0.0.1:1;\n   if ($x) { location /y { z 1; } }\n   client_max_body_size 1m { odd; }\n  }\n }\n}\n",
        None,
    );
    let lines: Vec<usize> = i.findings.iter().map(|f| f.line).collect();
    assert_eq!(lines, vec![1, 2, 3, 4, 5, 5, 5, 6, 6]);
    assert!(is_unsupported(&i, "z 1"));
    assert!(is_unsupported(&i, "odd"));
}

#[test]
fn types_blocks_and_server_roots() {
    let i = conv(
        "http { types { text/html html; } server { listen 80; root /srv/www/; location / { try_files $uri =404; } location /img { } } }",
        None,
    );
    assert!(is_not_needed(&i, "text/html html"));
    let st = i.config["static"].as_array().unwrap();
    assert_eq!(st[0]["root"].as_str(), Some("/srv/www"));
    assert_eq!(st[1]["root"].as_str(), Some("/srv/www/img"));
}

#[test]
fn tls_listeners_and_certificates_map_to_tls_listen_and_tls() {
    let dir = std::env::temp_dir().join(format!("weir-import-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("tls.conf");
    std::fs::write(
        &conf,
        "http {\n  server {\n    listen 80;\n    listen 443 ssl http2;\n    ssl_certificate /etc/ssl/a.pem;\n    ssl_certificate_key /etc/ssl/a.key;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_stapling on;\n    location / { uwsgi_pass unix:/run/app.sock; }\n  }\n  server {\n    listen 8443 ssl;\n    ssl_certificate /etc/ssl/$ssl_server_name.pem;\n  }\n}\n",
    )
    .unwrap();
    let i = import_files(Some(&conf), AppFile::None, None).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(key_of(&i, "listen 443 ssl http2"), "server.tls_listen");
    assert_eq!(key_of(&i, "listen 80"), "server.listen");
    assert_eq!(key_of(&i, "ssl_certificate /etc"), "tls.certificate");
    assert_eq!(key_of(&i, "ssl_certificate_key"), "tls.key");
    assert!(is_not_needed(&i, "ssl_protocols"));
    assert!(is_unsupported(&i, "ssl_stapling"));
    let text = render_toml(&i, &["x".into()]);
    assert!(text.contains("tls_listen = [\"0.0.0.0:443\"]"), "{text}");
    assert!(text.contains("certificate = \"/etc/ssl/a.pem\""), "{text}");
}

#[test]
fn access_log_buffer_and_flush_map_to_their_keys() {
    let i = conv(
        "http { access_log /var/log/nginx/a.log combined buffer=32k flush=5s; server { listen 80; location / { uwsgi_pass 127.0.0.1:3031; } } }",
        Some("[uwsgi]\nmodule = app\n"),
    );
    let c = check(&i);
    assert_eq!(c.server.access_log, "/var/log/nginx/a.log");
    assert_eq!(c.server.access_log_buffer.bytes(), 32 << 10);
    assert_eq!(
        c.server.access_log_flush,
        weir_config::Seconds::from_secs(5)
    );
    match verdict_of(&i, "access_log") {
        Verdict::Mapped { key, note } => {
            assert_eq!(key, "server.access_log");
            let note = note.as_deref().unwrap_or("");
            assert!(
                note.contains("server.access_log_buffer")
                    && note.contains("server.access_log_flush"),
                "{note}"
            );
        }
        v => panic!("{v:?}"),
    }
    let bad = conv(
        "http { access_log /a.log buffer=lots; server { listen 80; location / { uwsgi_pass 127.0.0.1:3031; } } }",
        None,
    );
    assert!(is_unsupported(&bad, "access_log"));
}
