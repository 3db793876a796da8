//! gunicorn.conf.py: a Python file, so it is run by Python rather than parsed.
//!
//! Gunicorn itself `exec`s the file and reads its module-level names; settings are often
//! computed (`workers = multiprocessing.cpu_count() * 2 + 1`), so a parser of Python
//! literals would miss them and a Python parser in Rust would still not evaluate them.
//! weir runs the system `python3` (or `$WEIR_PYTHON`) on the file in a subprocess, the way
//! Gunicorn does (`runpy.run_path`), and prints every top-level name as JSON with the line
//! of its last assignment (from `ast`). Functions are reported as hooks; modules are
//! skipped. The file is the user's own, run as Gunicorn would run it, from its own directory
//! (which is put on `sys.path`, as Gunicorn's working directory is).

use std::path::Path;
use std::process::Command;

/// One top-level name of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The name (`workers`).
    pub name: String,
    /// Its value as JSON (a function is the string `"<hook>"`; anything not JSON is its
    /// `repr`).
    pub value: serde_json::Value,
    /// Whether it is a function (a server hook).
    pub hook: bool,
    /// The line it is set on (0 when unknown).
    pub line: usize,
}

const SCRIPT: &str = r#"
import ast, json, os, runpy, sys, types
path = sys.argv[1]
sys.path.insert(0, os.getcwd())
src = open(path, encoding="utf-8").read()
try:
    tree = ast.parse(src, path)
except SyntaxError as e:
    print(json.dumps({"error": "%s:%s: %s" % (path, e.lineno or 0, e.msg)}))
    sys.exit(0)
lines = {}
for node in tree.body:
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines[node.name] = node.lineno
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                lines[n.id] = node.lineno
try:
    ns = runpy.run_path(path, run_name="__config__")
except BaseException as e:
    tb = e.__traceback__
    line = 0
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == path:
            line = tb.tb_lineno
        tb = tb.tb_next
    print(json.dumps({"error": "%s:%s: %s: %s" % (path, line, type(e).__name__, e)}))
    sys.exit(0)
out = []
for k, v in ns.items():
    if k.startswith("__") or isinstance(v, types.ModuleType) or isinstance(v, type):
        continue
    hook = callable(v)
    if hook:
        val = "<hook>"
    else:
        try:
            json.dumps(v)
            val = v
        except (TypeError, ValueError):
            val = repr(v)
    out.append({"name": k, "value": val, "hook": hook, "line": lines.get(k, 0)})
out.sort(key=lambda s: (s["line"], s["name"]))
print(json.dumps({"settings": out}))
"#;

/// Runs the file with Python and returns its settings, or `file:line: message`.
pub fn eval(path: &Path) -> Result<Vec<Setting>, String> {
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let out = Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(path)
        .current_dir(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .output()
        .map_err(|e| format!("{}: cannot run {python} to read it: {e}", path.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(last).map_err(|_| {
        format!(
            "{}: {python} could not read it: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Err(e.to_owned());
    }
    let mut settings = Vec::new();
    for s in v["settings"].as_array().cloned().unwrap_or_default() {
        settings.push(Setting {
            name: s["name"].as_str().unwrap_or_default().to_owned(),
            value: s["value"].clone(),
            hook: s["hook"].as_bool().unwrap_or(false),
            line: s["line"].as_u64().unwrap_or(0) as usize,
        });
    }
    Ok(settings)
}
