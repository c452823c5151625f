//! A result as bytes for HTTP: JSON, CSV or Arrow IPC.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;

/// How results are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `{"columns": [{"name", "type"}], "rows": [{column: value}]}`.
    #[default]
    Json,
    /// A header line, then one line per row (RFC 4180).
    Csv,
    /// The Arrow IPC stream format (`application/vnd.apache.arrow.stream`).
    Arrow,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "json" => Some(Format::Json),
            "csv" => Some(Format::Csv),
            "arrow" => Some(Format::Arrow),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Writes `batches` (all of `schema`) in `format`.
pub fn encode(
    format: Format,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, ArrowError> {
    match format {
        Format::Json => json(schema, batches),
        Format::Csv => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                if batches.is_empty() {
                    // The header alone, for a result without rows.
                    w.write(&RecordBatch::new_empty(schema.clone()))?;
                }
                for b in batches {
                    w.write(b)?;
                }
            }
            Ok(out)
        }
        Format::Arrow => {
            let mut out = Vec::new();
            {
                let mut w =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, schema)?;
                for b in batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            Ok(out)
        }
    }
}

/// The rows alone, as one JSON array of objects (every column present).
pub fn json_rows(batches: &[RecordBatch]) -> Result<String, ArrowError> {
    let mut rows = Vec::new();
    {
        let mut w = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut rows);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    String::from_utf8(rows).map_err(|e| ArrowError::JsonError(e.to_string()))
}

fn json(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let rows = json_rows(batches)?.into_bytes();
    let columns: Vec<serde_json::Value> = schema
        .fields()
        .iter()
        .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let mut out = Vec::with_capacity(rows.len() + 128);
    out.extend_from_slice(b"{\"columns\":");
    out.extend_from_slice(
        &serde_json::to_vec(&columns).map_err(|e| ArrowError::JsonError(e.to_string()))?,
    );
    out.extend_from_slice(b",\"rows\":");
    out.extend_from_slice(&rows);
    out.extend_from_slice(b"}");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("device", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("a,b"), None])),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        (schema, b)
    }

    #[test]
    fn json_csv_and_arrow() {
        let (schema, b) = batch();
        let j: serde_json::Value = serde_json::from_slice(
            &encode(Format::Json, &schema, std::slice::from_ref(&b)).unwrap(),
        )
        .unwrap();
        assert_eq!(j["columns"][1]["name"], "n");
        assert_eq!(j["rows"][0]["device"], "a,b");
        assert_eq!(j["rows"][1]["n"], 2);
        assert!(j["rows"][1].as_object().unwrap().contains_key("device"));
        let csv =
            String::from_utf8(encode(Format::Csv, &schema, std::slice::from_ref(&b)).unwrap())
                .unwrap();
        assert_eq!(csv, "device,n\n\"a,b\",1\n,2\n");
        let ipc = encode(Format::Arrow, &schema, std::slice::from_ref(&b)).unwrap();
        let r = datafusion::arrow::ipc::reader::StreamReader::try_new(&ipc[..], None).unwrap();
        let back: Vec<RecordBatch> = r.map(|b| b.unwrap()).collect();
        assert_eq!(back, vec![b]);
    }

    #[test]
    fn empty_results_keep_their_columns() {
        let (schema, _) = batch();
        let j: serde_json::Value =
            serde_json::from_slice(&encode(Format::Json, &schema, &[]).unwrap()).unwrap();
        assert_eq!(j["rows"], serde_json::json!([]));
        assert_eq!(j["columns"][0]["name"], "device");
        let csv = String::from_utf8(encode(Format::Csv, &schema, &[]).unwrap()).unwrap();
        assert_eq!(csv, "device,n\n");
    }
}
