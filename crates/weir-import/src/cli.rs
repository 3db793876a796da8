//! `weir import`'s command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args};

use crate::{import_files, render_table, render_toml, AppFile};

/// `weir import`: write a weir.toml from an NGINX config and a uWSGI ini or gunicorn.conf.py.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("appserver").args(["uwsgi", "gunicorn"])),
    after_help = "Example:\n  weir import --nginx /etc/nginx/sites-enabled/shop.conf --uwsgi /etc/uwsgi/shop.ini -o weir.toml\n  weir serve --check --config weir.toml\n\nWith --uwsgi or --gunicorn weir runs the app itself: NGINX's uwsgi_pass/proxy_pass to it\nbecomes [app]. With --nginx alone the pass target becomes [upstream] (weir in front of the\nexisting uWSGI or Gunicorn). Every directive read is listed with its verdict: mapped (the\nkey), not needed (why) or not supported (what to do). docs/import.md has the whole mapping.\n\nExit status: 0 written (a warning names anything `weir serve --check` would refuse here, e.g.\na chdir that does not exist on this machine); 2 a file is missing or does not parse (named\nwith its line)."
)]
pub struct ImportArgs {
    /// The NGINX configuration (its `include`s are read too, relative to its directory).
    #[arg(long, value_name = "NGINX_CONF")]
    pub nginx: Option<PathBuf>,
    /// A uWSGI ini file; `FILE:SECTION` reads another section than [uwsgi].
    #[arg(long, value_name = "INI")]
    pub uwsgi: Option<PathBuf>,
    /// A gunicorn.conf.py (run by python3, or $WEIR_PYTHON, as Gunicorn runs it).
    #[arg(long, value_name = "PY")]
    pub gunicorn: Option<PathBuf>,
    /// The app as MODULE:CALLABLE when the app server's config does not say (Gunicorn takes
    /// it from its command line); wins over the file's.
    #[arg(long, value_name = "MODULE:CALLABLE")]
    pub app: Option<String>,
    /// Where to write the weir.toml; the table goes to stdout. Without it the weir.toml goes
    /// to stdout and the table to stderr.
    #[arg(short, long, value_name = "WEIR_TOML")]
    pub output: Option<PathBuf>,
}

/// Runs `weir import`.
pub fn main(args: ImportArgs) -> ExitCode {
    if args.nginx.is_none() && args.uwsgi.is_none() && args.gunicorn.is_none() && args.app.is_none()
    {
        eprintln!("weir import: give --nginx, --uwsgi or --gunicorn (see weir import --help)");
        return ExitCode::from(2);
    }
    let (uwsgi_path, section) = match &args.uwsgi {
        Some(p) if !p.exists() => {
            let s = p.display().to_string();
            match s.rsplit_once(':') {
                Some((f, sec)) if !sec.contains('/') && PathBuf::from(f).exists() => {
                    (Some(PathBuf::from(f)), sec.to_owned())
                }
                _ => (Some(p.clone()), "uwsgi".to_owned()),
            }
        }
        other => (other.clone(), "uwsgi".to_owned()),
    };
    let app = match (&uwsgi_path, &args.gunicorn) {
        (Some(u), _) => AppFile::Uwsgi(u, &section),
        (None, Some(g)) => AppFile::Gunicorn(g),
        (None, None) => AppFile::None,
    };
    let imported = match import_files(args.nginx.as_deref(), app, args.app.clone()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("weir import: {e}");
            return ExitCode::from(2);
        }
    };
    let sources: Vec<String> = [&args.nginx, &uwsgi_path, &args.gunicorn]
        .into_iter()
        .flatten()
        .map(|p| p.display().to_string())
        .collect();
    let toml_text = render_toml(&imported, &sources);
    let table = render_table(&imported.findings);
    match &args.output {
        Some(out) => {
            if let Err(e) = std::fs::write(out, &toml_text) {
                eprintln!("weir import: cannot write {}: {e}", out.display());
                return ExitCode::from(2);
            }
            print!("{table}");
            println!("wrote {}", out.display());
        }
        None => {
            print!("{toml_text}");
            eprint!("{table}");
        }
    }
    let out_name = args
        .output
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "weir.toml".into());
    match weir_config::Config::parse(&toml_text, std::path::Path::new(&out_name)) {
        Ok(mut c) => {
            c.apply_defaults();
            if let Err(e) = c.validate() {
                eprintln!(
                    "weir import: warning: `weir serve --check` refuses {out_name} on this machine: {e}\n  (edit that key before serving)"
                );
            }
        }
        Err(e) => eprintln!("weir import: warning: {e}"),
    }
    ExitCode::SUCCESS
}
