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

/// The current UTC time as RFC 3339 with milliseconds (`2026-01-31T12:00:00.123Z`).
pub fn now_rfc3339() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs() as i64, d.subsec_millis())
}

/// Formats seconds since the epoch (UTC) as RFC 3339 with milliseconds.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
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
