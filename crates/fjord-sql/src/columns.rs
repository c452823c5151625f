//! A stream as a table: its columns, and records decoded into Arrow.
//!
//! Pure (no I/O): records in, `RecordBatch` out, building only the columns
//! a query reads.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use fjord_core::Record;

/// The header holding a record's MQTT topic (its routing topic).
pub const TOPIC_HEADER: &str = "mqtt.topic";

/// Every column of a stream's table, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Partition,
    Offset,
    Key,
    Topic,
    PublishTs,
    EventTs,
    /// The headers as one JSON object (`{"name": "value"}`, values as
    /// UTF-8, lossy).
    Headers,
    /// The value as text (NULL when it is not UTF-8): what the JSON
    /// functions read.
    Value,
    /// The value's bytes as they were published.
    Raw,
}

pub const COLUMNS: [Column; 9] = [
    Column::Partition,
    Column::Offset,
    Column::Key,
    Column::Topic,
    Column::PublishTs,
    Column::EventTs,
    Column::Headers,
    Column::Value,
    Column::Raw,
];

impl Column {
    pub fn name(self) -> &'static str {
        match self {
            Column::Partition => "_partition",
            Column::Offset => "_offset",
            Column::Key => "_key",
            Column::Topic => "_topic",
            Column::PublishTs => "_publish_ts",
            Column::EventTs => "_event_ts",
            Column::Headers => "_headers",
            Column::Value => "value",
            Column::Raw => "_raw",
        }
    }

    pub fn by_name(name: &str) -> Option<Column> {
        COLUMNS.into_iter().find(|c| c.name() == name)
    }

    fn field(self) -> Field {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        match self {
            Column::Partition => Field::new(self.name(), DataType::Int32, false),
            Column::Offset => Field::new(self.name(), DataType::Int64, false),
            Column::Key | Column::Topic | Column::Value => {
                Field::new(self.name(), DataType::Utf8, true)
            }
            Column::Headers => Field::new(self.name(), DataType::Utf8, false),
            Column::PublishTs | Column::EventTs => Field::new(self.name(), ts, false),
            Column::Raw => Field::new(self.name(), DataType::Binary, true),
        }
    }
}

/// The table schema of every stream without a declared schema.
pub fn stream_schema() -> SchemaRef {
    Arc::new(Schema::new(
        COLUMNS.iter().map(|c| c.field()).collect::<Vec<_>>(),
    ))
}

/// Builds the columns `wanted` (in that order) of records of one
/// partition.
pub struct BatchBuilder {
    schema: SchemaRef,
    partition: i32,
    builders: Vec<Builder>,
    rows: usize,
}

enum Builder {
    Partition(Int32Builder),
    Offset(Int64Builder),
    Text(Column, StringBuilder),
    Ts(Column, TimestampMillisecondBuilder),
    Raw(BinaryBuilder),
}

impl BatchBuilder {
    /// `schema` must hold exactly the fields of `wanted`.
    pub fn new(schema: SchemaRef, wanted: &[Column], partition: u32) -> Self {
        let builders = wanted
            .iter()
            .map(|&c| match c {
                Column::Partition => Builder::Partition(Int32Builder::new()),
                Column::Offset => Builder::Offset(Int64Builder::new()),
                Column::Key | Column::Topic | Column::Headers | Column::Value => {
                    Builder::Text(c, StringBuilder::new())
                }
                Column::PublishTs | Column::EventTs => {
                    Builder::Ts(c, TimestampMillisecondBuilder::new().with_timezone("UTC"))
                }
                Column::Raw => Builder::Raw(BinaryBuilder::new()),
            })
            .collect();
        BatchBuilder {
            schema,
            partition: partition as i32,
            builders,
            rows: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn push(&mut self, r: &Record) {
        self.rows += 1;
        for b in &mut self.builders {
            match b {
                Builder::Partition(b) => b.append_value(self.partition),
                Builder::Offset(b) => b.append_value(r.offset),
                Builder::Ts(Column::PublishTs, b) => b.append_value(r.publish_ts),
                Builder::Ts(_, b) => b.append_value(r.event_ts),
                Builder::Text(Column::Key, b) => {
                    b.append_option(r.key.as_ref().map(|k| String::from_utf8_lossy(k)))
                }
                Builder::Text(Column::Topic, b) => b.append_option(
                    r.headers
                        .iter()
                        .find(|h| h.key == TOPIC_HEADER)
                        .and_then(|h| h.value.as_ref())
                        .map(|v| String::from_utf8_lossy(v)),
                ),
                Builder::Text(Column::Headers, b) => b.append_value(headers_json(r)),
                Builder::Text(_, b) => {
                    b.append_option(r.value.as_ref().and_then(|v| std::str::from_utf8(v).ok()))
                }
                Builder::Raw(b) => b.append_option(r.value.as_deref()),
            }
        }
    }

    /// The rows pushed so far as one batch; the builder starts afresh.
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = self
            .builders
            .iter_mut()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Partition(b) => Arc::new(b.finish()),
                    Builder::Offset(b) => Arc::new(b.finish()),
                    Builder::Text(_, b) => Arc::new(b.finish()),
                    Builder::Ts(_, b) => Arc::new(b.finish()),
                    Builder::Raw(b) => Arc::new(b.finish()),
                }
            })
            .collect();
        let rows = std::mem::take(&mut self.rows);
        // Explicit row count: a query reading no column (COUNT(*)) still
        // counts rows.
        RecordBatch::try_new_with_options(
            self.schema.clone(),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
    }
}

fn headers_json(r: &Record) -> String {
    let map: serde_json::Map<String, serde_json::Value> = r
        .headers
        .iter()
        .map(|h| {
            let v = match &h.value {
                Some(v) => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                None => serde_json::Value::Null,
            };
            (h.key.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use fjord_core::Header;

    fn rec(offset: i64, value: &[u8]) -> Record {
        Record {
            offset,
            key: Some(Bytes::from_static(b"dev-1")),
            value: Some(Bytes::copy_from_slice(value)),
            headers: vec![Header {
                key: TOPIC_HEADER.into(),
                value: Some(Bytes::from_static(b"plant/1/temp")),
            }],
            publish_ts: 1_000 + offset,
            event_ts: 500 + offset,
        }
    }

    #[test]
    fn builds_only_the_wanted_columns() {
        let wanted = [
            Column::Offset,
            Column::EventTs,
            Column::Topic,
            Column::Value,
            Column::Raw,
        ];
        let schema = Arc::new(stream_schema().project(&[1, 5, 3, 7, 8]).unwrap());
        let mut b = BatchBuilder::new(schema, &wanted, 2);
        b.push(&rec(7, br#"{"t":21.5}"#));
        b.push(&rec(8, &[0xff, 0x00]));
        let batch = b.finish().unwrap();
        assert_eq!(batch.num_columns(), 5);
        assert_eq!(
            batch.column(0).as_primitive::<Int64Type>().values(),
            &[7, 8]
        );
        assert_eq!(
            batch
                .column(1)
                .as_primitive::<TimestampMillisecondType>()
                .value(0),
            507
        );
        assert_eq!(batch.column(2).as_string::<i32>().value(1), "plant/1/temp");
        let text = batch.column(3).as_string::<i32>();
        assert_eq!(text.value(0), r#"{"t":21.5}"#);
        // Not UTF-8: no text, the bytes stay in `_raw`.
        assert!(text.is_null(1));
        assert_eq!(batch.column(4).as_binary::<i32>().value(1), &[0xff, 0x00]);
        assert_eq!(b.rows(), 0);
    }

    #[test]
    fn no_columns_still_counts_rows() {
        let schema = Arc::new(stream_schema().project(&[]).unwrap());
        let mut b = BatchBuilder::new(schema, &[], 0);
        b.push(&rec(1, b"x"));
        b.push(&rec(2, b"y"));
        assert_eq!(b.finish().unwrap().num_rows(), 2);
    }

    #[test]
    fn headers_become_one_json_object() {
        let r = rec(0, b"v");
        let j: serde_json::Value = serde_json::from_str(&headers_json(&r)).unwrap();
        assert_eq!(j["mqtt.topic"], "plant/1/temp");
    }
}
