//! `WITH (…)` options of a continuous query (pure).

use std::collections::BTreeMap;

use crate::error::{SqlError, SqlErrorKind};

/// Where reading starts when the query is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only records appended from now on (the default).
    Latest,
    /// Everything the stream still holds.
    Earliest,
}

/// What happens to rows whose window has closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Late {
    /// Left out, counted in `SHOW QUERIES` (`late_rows`).
    Drop,
    /// Appended to this stream (of the query's namespace) as well.
    Stream(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// How far behind the latest event time a row may be and still be on
    /// time: the watermark is the latest event time less this.
    pub out_of_orderness_ms: i64,
    /// How long a window stays open after it fired, for late rows that
    /// update it.
    pub allowed_lateness_ms: i64,
    /// After this long without rows, time moves on with the clock; `None`
    /// waits for rows forever.
    pub idle_timeout_ms: Option<i64>,
    pub late: Late,
    pub start: Start,
    /// Partitions of the stream the query creates.
    pub partitions: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out_of_orderness_ms: 0,
            allowed_lateness_ms: 0,
            idle_timeout_ms: Some(10_000),
            late: Late::Drop,
            start: Start::Latest,
            partitions: None,
        }
    }
}

fn invalid(message: String) -> SqlError {
    SqlError::new(SqlErrorKind::Invalid, message)
}

impl Options {
    pub fn parse(raw: &BTreeMap<String, String>) -> Result<Options, SqlError> {
        let mut o = Options::default();
        for (k, v) in raw {
            match k.as_str() {
                "out_of_orderness" => o.out_of_orderness_ms = duration_ms(k, v)?,
                "allowed_lateness" => o.allowed_lateness_ms = duration_ms(k, v)?,
                "idle_timeout" => {
                    o.idle_timeout_ms = match v.to_ascii_lowercase().as_str() {
                        "none" | "off" | "never" => None,
                        _ => Some(duration_ms(k, v)?),
                    }
                }
                "late_rows" => {
                    o.late = match v.as_str() {
                        "drop" => Late::Drop,
                        s => {
                            fjord_core::StreamName::new(s).map_err(|e| {
                                invalid(format!("late_rows: 'drop' or a stream name ({e})"))
                            })?;
                            Late::Stream(s.to_string())
                        }
                    }
                }
                "start" => {
                    o.start = match v.to_ascii_lowercase().as_str() {
                        "latest" => Start::Latest,
                        "earliest" => Start::Earliest,
                        _ => {
                            return Err(invalid(format!(
                                "start is 'latest' or 'earliest', not '{v}'"
                            )))
                        }
                    }
                }
                "partitions" => {
                    o.partitions = Some(v.parse().map_err(|_| {
                        invalid(format!("partitions is a number, not '{v}'"))
                    })?)
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option {k} (known: out_of_orderness, allowed_lateness, idle_timeout, late_rows, start, partitions)"
                    )))
                }
            }
        }
        Ok(o)
    }
}

/// `'5 seconds'`, `'250 ms'`, `'2 minutes'`, `'1h'`, or a number of
/// milliseconds.
pub fn duration_ms(option: &str, v: &str) -> Result<i64, SqlError> {
    let t = v.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        invalid(format!(
            "{option} is a duration like '5 seconds' or '250 ms', not '{v}'"
        ))
    };
    let n: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "ms" | "millisecond" | "milliseconds" => 1.0,
        "s" | "sec" | "secs" | "second" | "seconds" => 1e3,
        "m" | "min" | "mins" | "minute" | "minutes" => 60e3,
        "h" | "hour" | "hours" => 3600e3,
        "d" | "day" | "days" => 86_400e3,
        _ => return Err(bad()),
    };
    let ms = n * scale;
    if !(0.0..=1e15).contains(&ms) {
        return Err(bad());
    }
    Ok(ms as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("x", "5 seconds").unwrap(), 5000);
        assert_eq!(duration_ms("x", "250ms").unwrap(), 250);
        assert_eq!(duration_ms("x", "1.5 min").unwrap(), 90_000);
        assert_eq!(duration_ms("x", "100").unwrap(), 100);
        assert!(duration_ms("x", "soon").is_err());
        assert!(duration_ms("x", "-1 s").is_err());
    }

    #[test]
    fn options() {
        let raw: BTreeMap<String, String> = [
            ("out_of_orderness", "2 s"),
            ("late_rows", "late_readings"),
            ("start", "earliest"),
            ("idle_timeout", "none"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let o = Options::parse(&raw).unwrap();
        assert_eq!(o.out_of_orderness_ms, 2000);
        assert_eq!(o.late, Late::Stream("late_readings".into()));
        assert_eq!(o.start, Start::Earliest);
        assert_eq!(o.idle_timeout_ms, None);
        let bad: BTreeMap<String, String> = [("colour".to_string(), "red".to_string())].into();
        assert!(Options::parse(&bad)
            .unwrap_err()
            .message
            .contains("unknown option"));
    }
}
