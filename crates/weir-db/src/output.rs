//! Where results go: `--json FILE` (`-` for stdout) and timestamps for log lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::error::DbError;

/// Writes `value` as pretty JSON to `path`, or to `stdout` when `path` is `-`.
pub fn write_json<T: Serialize>(
    path: &Path,
    value: &T,
    stdout: &mut dyn Write,
) -> Result<(), DbError> {
    let text = serde_json::to_string_pretty(value)
        .expect("reports serialize: plain structs of strings and numbers");
    if path == Path::new("-") {
        return writeln!(stdout, "{text}").map_err(|source| DbError::Write {
            path: PathBuf::from("<stdout>"),
            source,
        });
    }
    std::fs::write(path, text + "\n").map_err(|source| DbError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Prints a report's text to `stdout`, unless its JSON goes there (`--json -`), then
/// writes the JSON when `--json` was given.
pub fn emit<T: Serialize>(
    report: &T,
    json: Option<&Path>,
    stdout: &mut (dyn Write + Send),
    print_text: fn(&T, &mut (dyn Write + Send)) -> std::io::Result<()>,
) -> Result<(), DbError> {
    if json != Some(Path::new("-")) {
        print_text(report, stdout).map_err(|source| DbError::Write {
            path: PathBuf::from("<stdout>"),
            source,
        })?;
    }
    if let Some(path) = json {
        write_json(path, report, stdout)?;
    }
    Ok(())
}

/// The current UTC time as RFC 3339 with milliseconds (`2026-01-31T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the epoch (UTC) as RFC 3339 with milliseconds.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let t = std::time::UNIX_EPOCH
        + std::time::Duration::new(secs.max(0) as u64, millis.min(999) * 1_000_000);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_700_000_000, 250), "2023-11-14T22:13:20.250Z");
    }
}
