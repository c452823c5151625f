//! A continuous query's result rows as records of its output stream
//! (pure).
//!
//! * a column `_key` becomes the record's key (as text); without one, an
//!   aggregate's results are keyed by their `GROUP BY` values (the window
//!   aside), so one group's results stay in one partition, in order;
//! * a timestamp column `_event_ts` becomes its event time (otherwise a
//!   window's result carries the window's last millisecond, and a row of a
//!   query without windows the time it is written);
//! * the other columns are the value: one JSON object per row — unless the
//!   only one left is the stream's own `value` (its text, as published) or
//!   `_raw` (its bytes), so a filter passes records through unchanged.

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Schema, TimeUnit, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use fjord_core::RecordInput;

/// How rows of one schema become records.
#[derive(Debug, Clone)]
pub struct Shape {
    key: Option<usize>,
    /// Without `_key`: the columns whose values make the key.
    key_columns: Vec<usize>,
    event_ts: Option<usize>,
    body: Body,
}

#[derive(Debug, Clone)]
enum Body {
    Text(usize),
    Raw(usize),
    Json(Vec<usize>),
}

impl Shape {
    pub fn of(schema: &Schema) -> Shape {
        Self::keyed(schema, Vec::new())
    }

    /// Rows keyed by `key_columns` when they have no `_key`.
    pub fn keyed(schema: &Schema, key_columns: Vec<usize>) -> Shape {
        let find = |name: &str| schema.fields().iter().position(|f| f.name() == name);
        let key = find("_key");
        let event_ts = find("_event_ts")
            .filter(|&i| matches!(schema.field(i).data_type(), DataType::Timestamp(_, _)));
        let rest: Vec<usize> = (0..schema.fields().len())
            .filter(|i| Some(*i) != key && Some(*i) != event_ts)
            .collect();
        let body = match rest.as_slice() {
            [i] if schema.field(*i).name() == "value"
                && matches!(
                    schema.field(*i).data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                Body::Text(*i)
            }
            [i] if schema.field(*i).name() == "_raw"
                && matches!(schema.field(*i).data_type(), DataType::Binary) =>
            {
                Body::Raw(*i)
            }
            _ => Body::Json(rest),
        };
        Shape {
            key,
            key_columns,
            event_ts,
            body,
        }
    }

    /// Every column in the JSON value (no metadata columns), keyed by
    /// `key_columns`: a materialized view's rows, read back by their types.
    pub fn plain(schema: &Schema, key_columns: Vec<usize>) -> Shape {
        Shape {
            key: None,
            key_columns,
            event_ts: None,
            body: Body::Json((0..schema.fields().len()).collect()),
        }
    }

    /// The records of `batch`'s rows; `event_ts` for rows without their own.
    pub fn records(
        &self,
        batch: &RecordBatch,
        event_ts: Option<i64>,
    ) -> Result<Vec<RecordInput>, ArrowError> {
        let n = batch.num_rows();
        let keys = match self.key {
            Some(i) => text(batch.column(i))?,
            None if !self.key_columns.is_empty() => {
                let parts: Vec<Vec<Option<String>>> = self
                    .key_columns
                    .iter()
                    .map(|&i| text(batch.column(i)))
                    .collect::<Result<_, _>>()?;
                // One column: its text; several: joined by `/` (NULL as
                // empty), which also reads well as an MQTT topic.
                (0..n)
                    .map(|r| {
                        Some(
                            parts
                                .iter()
                                .map(|p| p[r].clone().unwrap_or_default())
                                .collect::<Vec<_>>()
                                .join("/"),
                        )
                    })
                    .collect()
            }
            None => vec![None; n],
        };
        let times: Vec<Option<i64>> = match self.event_ts {
            Some(i) => {
                let ms = cast(
                    batch.column(i),
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                )?;
                let ms = ms.as_primitive::<TimestampMillisecondType>();
                ms.iter().map(|t| t.or(event_ts)).collect()
            }
            None => vec![event_ts; n],
        };
        let values: Vec<Option<Bytes>> = match &self.body {
            Body::Text(i) => text(batch.column(*i))?
                .into_iter()
                .map(|t| t.map(Bytes::from))
                .collect(),
            Body::Raw(i) => {
                let a = batch.column(*i).as_binary::<i32>();
                (0..n)
                    .map(|r| (!a.is_null(r)).then(|| Bytes::copy_from_slice(a.value(r))))
                    .collect()
            }
            Body::Json(cols) => json_rows(&batch.project(cols)?)?
                .into_iter()
                .map(Some)
                .collect(),
        };
        Ok(keys
            .into_iter()
            .zip(times)
            .zip(values)
            .map(|((key, event_ts), value)| RecordInput {
                key: key.map(Bytes::from),
                value,
                headers: Vec::new(),
                event_ts,
            })
            .collect())
    }
}

/// Each value as text (NULL stays absent).
fn text(a: &ArrayRef) -> Result<Vec<Option<String>>, ArrowError> {
    if let Some(s) = a.as_string_opt::<i32>() {
        return Ok(s.iter().map(|v| v.map(str::to_string)).collect());
    }
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(a.as_ref(), &options)?;
    Ok((0..a.len())
        .map(|i| (!a.is_null(i)).then(|| f.value(i).to_string()))
        .collect())
}

/// One JSON object per row, every column present (nulls as `null`).
fn json_rows(batch: &RecordBatch) -> Result<Vec<Bytes>, ArrowError> {
    let mut out = Vec::new();
    {
        let mut w = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::LineDelimited>(&mut out);
        w.write(batch)?;
        w.finish()?;
    }
    let rows: Vec<Bytes> = out
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(Bytes::copy_from_slice)
        .collect();
    if rows.len() != batch.num_rows() {
        return Err(ArrowError::JsonError(format!(
            "{} rows written as {} lines",
            batch.num_rows(),
            rows.len()
        )));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn key_time_and_json_body() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("_key", DataType::Utf8, true),
            Field::new("device", DataType::Utf8, true),
            Field::new("avg_t", DataType::Float64, true),
            Field::new(
                "_event_ts",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("d1"), None])),
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(Float64Array::from(vec![Some(21.5), None])),
                Arc::new(TimestampMillisecondArray::from(vec![Some(5), None]).with_timezone("UTC")),
            ],
        )
        .unwrap();
        let r = Shape::of(&schema).records(&batch, Some(99)).unwrap();
        assert_eq!(r[0].key.as_deref(), Some(&b"d1"[..]));
        assert_eq!(r[1].key, None);
        assert_eq!((r[0].event_ts, r[1].event_ts), (Some(5), Some(99)));
        let v: serde_json::Value = serde_json::from_slice(r[1].value.as_ref().unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"device": "d2", "avg_t": null}));
    }

    #[test]
    fn a_lone_value_passes_through() {
        let schema = Arc::new(Schema::new(vec![Field::new("value", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(StringArray::from(vec![r#"{"t": 30}"#]))],
        )
        .unwrap();
        let r = Shape::of(&schema).records(&batch, None).unwrap();
        assert_eq!(r[0].value.as_deref(), Some(&br#"{"t": 30}"#[..]));
        assert_eq!(r[0].event_ts, None);
    }
}
