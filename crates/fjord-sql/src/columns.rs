//! A stream as a table: its columns, and records decoded into Arrow.
//!
//! Pure (no I/O): records in, `RecordBatch` out, building only the columns
//! a query reads.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use fjord_core::batch::RecordView;
use fjord_core::Record;
use fjord_schema::{Datum, FieldType, ValueSchema};

/// The header holding a record's MQTT topic (its routing topic).
pub const TOPIC_HEADER: &str = "mqtt.topic";

/// One column of a stream's table.
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
    /// functions read. Only in streams without a schema.
    Value,
    /// One typed field of the stream's value schema (by index).
    Field(u16),
    /// The value's bytes as they were published.
    Raw,
}

/// The columns every stream has before its value.
const SYSTEM: [Column; 7] = [
    Column::Partition,
    Column::Offset,
    Column::Key,
    Column::Topic,
    Column::PublishTs,
    Column::EventTs,
    Column::Headers,
];

impl Column {
    /// The name of a column other than a schema field.
    fn fixed_name(self) -> &'static str {
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
            Column::Field(_) => "",
        }
    }

    /// The system column (not a value column) of this name.
    pub fn by_name(name: &str) -> Option<Column> {
        SYSTEM.into_iter().find(|c| c.fixed_name() == name)
    }
}

/// Columns of a stream's table (all, or the ones a query reads), and the
/// value schema its typed columns come from.
#[derive(Debug, Clone)]
pub struct Projection {
    pub columns: Vec<Column>,
    pub values: Option<Arc<ValueSchema>>,
}

impl Projection {
    /// Every column of a stream with this value schema: the system columns,
    /// then the schema's fields (or `value`), then `_raw`.
    pub fn of_stream(values: Option<Arc<ValueSchema>>) -> Projection {
        let mut columns = SYSTEM.to_vec();
        match &values {
            Some(v) => columns.extend((0..v.fields().len()).map(|i| Column::Field(i as u16))),
            None => columns.push(Column::Value),
        }
        columns.push(Column::Raw);
        Projection { columns, values }
    }

    /// The columns at `indices`, in that order.
    pub fn project(&self, indices: &[usize]) -> Projection {
        Projection {
            columns: indices
                .iter()
                .filter_map(|&i| self.columns.get(i).copied())
                .collect(),
            values: self.values.clone(),
        }
    }

    pub fn name(&self, c: Column) -> &str {
        match (c, &self.values) {
            (Column::Field(i), Some(v)) => v
                .fields()
                .get(usize::from(i))
                .map_or("", |f| f.name.as_str()),
            _ => c.fixed_name(),
        }
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|&c| self.field(c))
                .collect::<Vec<_>>(),
        ))
    }

    fn field(&self, c: Column) -> Field {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
        let name = self.name(c);
        match c {
            Column::Partition => Field::new(name, DataType::Int32, false),
            Column::Offset => Field::new(name, DataType::Int64, false),
            Column::Key | Column::Topic | Column::Value => Field::new(name, DataType::Utf8, true),
            Column::Headers => Field::new(name, DataType::Utf8, false),
            Column::PublishTs | Column::EventTs => Field::new(name, ts, false),
            Column::Raw => Field::new(name, DataType::Binary, true),
            Column::Field(i) => {
                let ty = self
                    .values
                    .as_ref()
                    .and_then(|v| v.fields().get(usize::from(i)))
                    .map_or(FieldType::Json, |f| f.ty);
                let dt = match ty {
                    FieldType::Int64 => DataType::Int64,
                    FieldType::Float64 => DataType::Float64,
                    FieldType::Utf8 | FieldType::Json => DataType::Utf8,
                    FieldType::Boolean => DataType::Boolean,
                    FieldType::Timestamp => ts,
                    FieldType::Date => DataType::Date32,
                    FieldType::Binary => DataType::Binary,
                };
                Field::new(name, dt, true)
            }
        }
    }
}

/// The table schema of every stream without a value schema.
pub fn stream_schema() -> SchemaRef {
    Projection::of_stream(None).schema()
}

/// Builds the columns of a projection from records of one partition.
pub struct BatchBuilder {
    schema: SchemaRef,
    partition: i32,
    builders: Vec<Builder>,
    rows: usize,
    /// The value schema, when typed columns are built.
    values: Option<Arc<ValueSchema>>,
    /// One record's fields, decoded.
    datums: Vec<Datum>,
    misfits: u64,
}

enum Builder {
    Partition(Int32Builder),
    Offset(Int64Builder),
    Text(Column, StringBuilder),
    Ts(Column, TimestampMillisecondBuilder),
    Raw(BinaryBuilder),
    Typed(usize, Typed),
}

/// The builder of one typed value column.
enum Typed {
    Int(Int64Builder),
    Float(Float64Builder),
    Text(StringBuilder),
    Bool(BooleanBuilder),
    Ts(TimestampMillisecondBuilder),
    Date(Date32Builder),
    Bytes(BinaryBuilder),
}

impl Typed {
    fn new(ty: FieldType) -> Typed {
        match ty {
            FieldType::Int64 => Typed::Int(Int64Builder::new()),
            FieldType::Float64 => Typed::Float(Float64Builder::new()),
            FieldType::Utf8 | FieldType::Json => Typed::Text(StringBuilder::new()),
            FieldType::Boolean => Typed::Bool(BooleanBuilder::new()),
            FieldType::Timestamp => {
                Typed::Ts(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            FieldType::Date => Typed::Date(Date32Builder::new()),
            FieldType::Binary => Typed::Bytes(BinaryBuilder::new()),
        }
    }

    /// Appends `d`, or NULL when it is not of this column's type.
    fn append(&mut self, d: &Datum) {
        match (self, d) {
            (Typed::Int(b), Datum::Int(v)) => b.append_value(*v),
            (Typed::Float(b), Datum::Float(v)) => b.append_value(*v),
            (Typed::Text(b), Datum::Text(v)) => b.append_value(v),
            (Typed::Bool(b), Datum::Bool(v)) => b.append_value(*v),
            (Typed::Ts(b), Datum::Ts(v)) => b.append_value(*v),
            (Typed::Date(b), Datum::Date(v)) => b.append_value(*v),
            (Typed::Bytes(b), Datum::Bytes(v)) => b.append_value(v),
            (Typed::Int(b), _) => b.append_null(),
            (Typed::Float(b), _) => b.append_null(),
            (Typed::Text(b), _) => b.append_null(),
            (Typed::Bool(b), _) => b.append_null(),
            (Typed::Ts(b), _) => b.append_null(),
            (Typed::Date(b), _) => b.append_null(),
            (Typed::Bytes(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Typed::Int(b) => Arc::new(b.finish()),
            Typed::Float(b) => Arc::new(b.finish()),
            Typed::Text(b) => Arc::new(b.finish()),
            Typed::Bool(b) => Arc::new(b.finish()),
            Typed::Ts(b) => Arc::new(b.finish()),
            Typed::Date(b) => Arc::new(b.finish()),
            Typed::Bytes(b) => Arc::new(b.finish()),
        }
    }
}

impl BatchBuilder {
    /// `schema` must be `projection`'s.
    pub fn new(schema: SchemaRef, projection: &Projection, partition: u32) -> Self {
        let fields = projection.values.as_ref().map(|v| v.fields());
        let builders: Vec<Builder> = projection
            .columns
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
                Column::Field(i) => {
                    let i = usize::from(i);
                    let ty = fields
                        .and_then(|f| f.get(i))
                        .map_or(FieldType::Json, |f| f.ty);
                    Builder::Typed(i, Typed::new(ty))
                }
            })
            .collect();
        let typed = builders.iter().any(|b| matches!(b, Builder::Typed(..)));
        BatchBuilder {
            schema,
            partition: partition as i32,
            builders,
            rows: 0,
            values: projection.values.clone().filter(|_| typed),
            datums: Vec::new(),
            misfits: 0,
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values (or fields of values) that did not fit the schema and read
    /// as NULL, so far.
    pub fn misfits(&self) -> u64 {
        self.misfits
    }

    pub fn push(&mut self, r: &impl Row) {
        self.rows += 1;
        if let Some(values) = &self.values {
            match values.decode(r.value(), &mut self.datums) {
                Ok(n) => self.misfits += n as u64,
                Err(_) => self.misfits += 1,
            }
        }
        for b in &mut self.builders {
            match b {
                Builder::Partition(b) => b.append_value(self.partition),
                Builder::Offset(b) => b.append_value(r.offset()),
                Builder::Ts(Column::PublishTs, b) => b.append_value(r.publish_ts()),
                Builder::Ts(_, b) => b.append_value(r.event_ts()),
                Builder::Text(Column::Key, b) => match r.key() {
                    // Checked directly: the lossy conversion's chunking
                    // costs more than the check on short keys.
                    Some(k) => match std::str::from_utf8(k) {
                        Ok(k) => b.append_value(k),
                        Err(_) => b.append_value(String::from_utf8_lossy(k)),
                    },
                    None => b.append_null(),
                },
                Builder::Text(Column::Topic, b) => {
                    b.append_option(r.header(TOPIC_HEADER).map(String::from_utf8_lossy))
                }
                Builder::Text(Column::Headers, b) => b.append_value(headers_json(r)),
                Builder::Text(_, b) => {
                    b.append_option(r.value().and_then(|v| std::str::from_utf8(v).ok()))
                }
                Builder::Raw(b) => b.append_option(r.value()),
                Builder::Typed(i, b) => b.append(self.datums.get(*i).unwrap_or(&Datum::Null)),
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
                    Builder::Typed(_, b) => b.finish(),
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

/// Receives one header's name and value.
pub type HeaderVisitor<'f> = dyn FnMut(&[u8], Option<&[u8]>) + 'f;

/// A record as the columns read it: owned, or borrowed from a stored batch.
pub trait Row {
    fn offset(&self) -> i64;
    fn publish_ts(&self) -> i64;
    fn event_ts(&self) -> i64;
    fn key(&self) -> Option<&[u8]>;
    fn value(&self) -> Option<&[u8]>;
    /// Each header's name and value, in order.
    fn each_header(&self, f: &mut HeaderVisitor<'_>);

    /// The value of the first header named `name`.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl Row for Record {
    fn offset(&self) -> i64 {
        self.offset
    }
    fn publish_ts(&self) -> i64 {
        self.publish_ts
    }
    fn event_ts(&self) -> i64 {
        self.event_ts
    }
    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }
    fn value(&self) -> Option<&[u8]> {
        self.value.as_deref()
    }
    fn each_header(&self, f: &mut HeaderVisitor<'_>) {
        for h in &self.headers {
            f(h.key.as_bytes(), h.value.as_deref());
        }
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value.as_deref())
    }
}

impl Row for RecordView<'_> {
    fn offset(&self) -> i64 {
        self.offset
    }
    fn publish_ts(&self) -> i64 {
        self.publish_ts
    }
    fn event_ts(&self) -> i64 {
        self.event_ts
    }
    fn key(&self) -> Option<&[u8]> {
        self.key
    }
    fn value(&self) -> Option<&[u8]> {
        self.value
    }
    fn each_header(&self, f: &mut HeaderVisitor<'_>) {
        for (k, v) in self.headers() {
            f(k, v);
        }
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(k, _)| *k == name.as_bytes())
            .and_then(|(_, v)| v)
    }
}

fn headers_json(r: &impl Row) -> String {
    let mut map = serde_json::Map::new();
    r.each_header(&mut |k, v| {
        let v = match v {
            Some(v) => serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
            None => serde_json::Value::Null,
        };
        map.insert(String::from_utf8_lossy(k).into_owned(), v);
    });
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
        let projection = Projection {
            columns: wanted.to_vec(),
            values: None,
        };
        let mut b = BatchBuilder::new(projection.schema(), &projection, 2);
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
        let projection = Projection::of_stream(None).project(&[]);
        let mut b = BatchBuilder::new(projection.schema(), &projection, 0);
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
