//! Reading values out of rows whatever the protocol (text rows carry bytes, binary rows
//! carry typed values) and whatever the server's column types.

use mysql_async::{Row, Value};

/// Column `i` as a string; `None` for NULL or a missing column.
pub fn text(row: &Row, i: usize) -> Option<String> {
    match row.as_ref(i)? {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(f) => Some(f.to_string()),
        other => Some(other.as_sql(true)),
    }
}

/// Column `i` as a non-negative integer; `None` for NULL, a missing column or a non-number.
pub fn number(row: &Row, i: usize) -> Option<u64> {
    match row.as_ref(i)? {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::UInt(n) => Some(*n),
        Value::Double(f) if *f >= 0.0 => Some(*f as u64),
        Value::Float(f) if *f >= 0.0 => Some(*f as u64),
        Value::Bytes(b) => {
            let s = String::from_utf8_lossy(b);
            s.trim().parse::<u64>().ok().or_else(|| {
                s.trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|f| *f >= 0.0)
                    .map(|f| f as u64)
            })
        }
        _ => None,
    }
}
