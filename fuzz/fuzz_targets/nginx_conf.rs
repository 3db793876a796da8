//! Any text as an NGINX config: parsed or refused with a line inside the text, never a
//! panic; what parses converts (no app server) to a weir.toml that is valid TOML with weir's
//! keys (Config::parse), and every directive gets exactly one finding. Any text as a uWSGI
//! ini: parsed or refused with a line inside the text.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weir_import::{convert, nginx, render_toml, uwsgi, Inputs};

fn count(t: &[nginx::Directive]) -> usize {
    t.iter()
        .map(|d| 1 + count(d.block.as_deref().unwrap_or(&[])))
        .sum()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines = text.split('\n').count();
    match nginx::parse_text(text, "f.conf") {
        Err(e) => assert!(e.line >= 1 && e.line <= lines, "{e}"),
        Ok(tree) => {
            let n = count(&tree);
            let imported = convert(&Inputs {
                nginx: Some(("f.conf".into(), tree)),
                ..Inputs::default()
            });
            assert_eq!(imported.findings.len(), n);
            let out = render_toml(&imported, &[]);
            if let Err(e) = weir_config::Config::parse(&out, Path::new("out.toml")) {
                panic!("{e}\n{out}");
            }
        }
    }
    if let Err((line, _)) = uwsgi::parse(text, Path::new("/u.ini"), "uwsgi", &|_| None) {
        assert!(line >= 1 && line <= lines.max(1));
    }
});
