//! Event-time windows: the SQL functions that name them in `GROUP BY`, and
//! which windows a time falls in (pure).
//!
//! * `tumble(ts, size)`: fixed, non-overlapping windows; the window's start.
//!   A plain function, usable in ad-hoc queries too.
//! * `hop(ts, slide, size)`: windows of `size` every `slide`, overlapping
//!   when `slide < size`; a row belongs to each window holding it.
//! * `session(ts, gap)`: per group, rows closer than `gap` form one window.
//!
//! `hop` and `session` put a row in several (or growing) windows, which
//! only a continuous query's state can do; in an ad-hoc query they fail
//! with a message saying so.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMillisecondType};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// The window functions' names, as the planner sees them.
pub const TUMBLE: &str = "tumble";
pub const HOP: &str = "hop";
pub const SESSION: &str = "session";

/// How rows are grouped in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WindowSpec {
    Tumble { size_ms: i64 },
    Hop { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

impl WindowSpec {
    /// Starts of the fixed windows holding `ts` (tumbling: one; hopping:
    /// `size / slide` rounded up), earliest first. Sessions have no fixed
    /// windows: a row opens `[ts, ts + gap)`, merged with its neighbours.
    pub fn assign(&self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match *self {
            WindowSpec::Tumble { size_ms } => out.push(ts - ts.rem_euclid(size_ms)),
            WindowSpec::Hop { size_ms, slide_ms } => {
                let last = ts - ts.rem_euclid(slide_ms);
                let mut start = last;
                while start + size_ms > ts {
                    out.push(start);
                    start -= slide_ms;
                }
                out.reverse();
            }
            WindowSpec::Session { .. } => out.push(ts),
        }
    }

    /// The (exclusive) end of the fixed window starting at `start`.
    pub fn end(&self, start: i64) -> i64 {
        match *self {
            WindowSpec::Tumble { size_ms } => start + size_ms,
            WindowSpec::Hop { size_ms, .. } => start + size_ms,
            WindowSpec::Session { gap_ms } => start + gap_ms,
        }
    }
}

/// An interval literal as milliseconds; calendar months have no fixed
/// length and are refused.
pub fn interval_ms(v: &ScalarValue) -> Result<i64, String> {
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            if i.months != 0 {
                return Err("a window cannot be months long (months differ in length)".into());
            }
            i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => i.days as i64 * 86_400_000 + i.milliseconds as i64,
        ScalarValue::DurationSecond(Some(s)) => s * 1000,
        ScalarValue::DurationMillisecond(Some(ms)) => *ms,
        ScalarValue::DurationMicrosecond(Some(us)) => us / 1000,
        ScalarValue::DurationNanosecond(Some(ns)) => ns / 1_000_000,
        other => {
            return Err(format!(
                "a window's length is an INTERVAL (like INTERVAL '1 minute'), not {other}"
            ))
        }
    };
    if ms <= 0 {
        return Err("a window's length must be at least one millisecond".into());
    }
    Ok(ms)
}

/// Timestamps of any unit as milliseconds since the epoch.
pub fn to_millis(a: &ArrayRef) -> DfResult<ArrayRef> {
    match a.data_type() {
        DataType::Timestamp(_, _) => {
            Ok(cast(a, &DataType::Timestamp(TimeUnit::Millisecond, None))?)
        }
        other => Err(DataFusionError::Plan(format!(
            "a window's time is a timestamp (like _event_ts), not {other}"
        ))),
    }
}

/// Milliseconds as timestamps of the type `want`.
pub fn from_millis(ms: Vec<Option<i64>>, want: &DataType) -> DfResult<ArrayRef> {
    let a = datafusion::arrow::array::TimestampMillisecondArray::from(ms);
    Ok(cast(&a, want)?)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFn {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for WindowFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let want = if self.name == HOP { 3 } else { 2 };
        if args.len() != want {
            return Err(DataFusionError::Plan(format!(
                "{}() takes {want} arguments: {}",
                self.name,
                usage(self.name)
            )));
        }
        match &args[0] {
            t @ DataType::Timestamp(_, _) => Ok(t.clone()),
            other => Err(DataFusionError::Plan(format!(
                "{}()'s first argument is a timestamp (like _event_ts), not {other}: {}",
                self.name,
                usage(self.name)
            ))),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.name != TUMBLE {
            return Err(DataFusionError::Plan(format!(
                "{}() windows belong to continuous queries (CREATE STREAM … AS SELECT … GROUP BY {}); in an ad-hoc query use tumble() or date_bin()",
                self.name,
                usage(self.name)
            )));
        }
        let size = match &args.args[1] {
            ColumnarValue::Scalar(s) => interval_ms(s).map_err(DataFusionError::Plan)?,
            ColumnarValue::Array(_) => {
                return Err(DataFusionError::Plan(
                    "tumble()'s length must be a constant INTERVAL".into(),
                ))
            }
        };
        let want = args.return_field.data_type().clone();
        let ts = args.args[0].to_array(args.number_rows)?;
        let ms = to_millis(&ts)?;
        let ms = ms.as_primitive::<TimestampMillisecondType>();
        let spec = WindowSpec::Tumble { size_ms: size };
        let mut starts = Vec::with_capacity(1);
        let out: Vec<Option<i64>> = ms
            .iter()
            .map(|v| {
                v.map(|t| {
                    spec.assign(t, &mut starts);
                    starts[0]
                })
            })
            .collect();
        Ok(ColumnarValue::Array(from_millis(out, &want)?))
    }
}

fn usage(name: &str) -> &'static str {
    match name {
        HOP => "hop(_event_ts, INTERVAL '10 seconds', INTERVAL '1 minute') (slide, then size)",
        SESSION => "session(_event_ts, INTERVAL '30 seconds') (the gap)",
        _ => "tumble(_event_ts, INTERVAL '1 minute')",
    }
}

/// `tumble`, `hop` and `session`, for a session's function registry.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    [TUMBLE, HOP, SESSION]
        .into_iter()
        .map(|name| {
            let arity = if name == HOP { 3 } else { 2 };
            Arc::new(ScalarUDF::from(WindowFn {
                name,
                signature: Signature::any(arity, Volatility::Immutable),
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_windows_hold_one_time_each() {
        let w = WindowSpec::Tumble { size_ms: 1000 };
        let mut out = Vec::new();
        w.assign(1999, &mut out);
        assert_eq!(out, [1000]);
        w.assign(2000, &mut out);
        assert_eq!(out, [2000]);
        // Before the epoch, windows still align to it.
        w.assign(-1, &mut out);
        assert_eq!(out, [-1000]);
        assert_eq!(w.end(1000), 2000);
    }

    #[test]
    fn hopping_windows_overlap() {
        let w = WindowSpec::Hop {
            size_ms: 60_000,
            slide_ms: 20_000,
        };
        let mut out = Vec::new();
        w.assign(65_000, &mut out);
        assert_eq!(out, [20_000, 40_000, 60_000]);
        // Every window holding the time, and no other.
        for s in &out {
            assert!(*s <= 65_000 && 65_000 < w.end(*s));
        }
        // Slide longer than size: gaps, a time may be in no window.
        let gappy = WindowSpec::Hop {
            size_ms: 10,
            slide_ms: 30,
        };
        gappy.assign(45, &mut out);
        assert!(out.is_empty());
        gappy.assign(31, &mut out);
        assert_eq!(out, [30]);
    }

    #[test]
    fn intervals_in_milliseconds() {
        use datafusion::arrow::datatypes::IntervalMonthDayNano;
        let v =
            ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(0, 1, 500_000_000)));
        assert_eq!(interval_ms(&v), Ok(86_400_500));
        let months = ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(1, 0, 0)));
        assert!(interval_ms(&months).is_err());
        assert!(interval_ms(&ScalarValue::Int64(Some(5))).is_err());
    }
}
