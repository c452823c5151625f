//! A stream's value schema compiled for use: the typed fields SQL shows as
//! columns, a check for values being appended (when the schema is
//! enforced), and a decoder from a value to one datum per field.
//!
//! Three kinds (see [`fjord_core::StreamSchema`]): a JSON Schema over JSON
//! values, an Avro schema over Avro binary values, and columns declared
//! over JSON values. Pure: no I/O, no network (a JSON Schema's remote
//! `$ref`s are refused when the schema is set).

mod avro;
mod json;

use fjord_core::StreamSchema;

/// The type of one field, as SQL sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Int64,
    Float64,
    Utf8,
    Boolean,
    /// Milliseconds since the epoch, UTC.
    Timestamp,
    /// Days since the epoch.
    Date,
    Binary,
    /// Nested values (objects, arrays, maps, records) as JSON text, for
    /// the JSON functions.
    Json,
}

/// One typed field of a value: a column of the stream's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
}

/// One field's value in one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(String),
    /// Milliseconds since the epoch.
    Ts(i64),
    Date(i32),
    Bytes(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// The schema itself is wrong (refused when the policy is set).
    #[error("invalid schema: {0}")]
    Definition(String),
    /// A value does not fit the schema.
    #[error("the value does not match the stream's schema: {0}")]
    Mismatch(String),
}

/// Names the system columns own; a field may not take one.
pub const RESERVED: [&str; 8] = [
    "_partition",
    "_offset",
    "_key",
    "_topic",
    "_publish_ts",
    "_event_ts",
    "_headers",
    "_raw",
];

/// Fields at most (a table of thousands of columns is a mistake).
pub const FIELDS_MAX: usize = 1000;

/// A compiled schema.
#[derive(Debug)]
pub struct ValueSchema {
    fields: Vec<Field>,
    enforce: bool,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Json(json::JsonDecoder),
    Avro(avro::AvroDecoder),
}

impl ValueSchema {
    /// Checks and compiles `schema`; the error says what is wrong with it.
    pub fn compile(schema: &StreamSchema) -> Result<ValueSchema, SchemaError> {
        let (kind, fields, enforce) = match schema {
            StreamSchema::JsonSchema {
                definition,
                enforce,
            } => {
                let (d, fields) = json::JsonDecoder::from_json_schema(definition)?;
                (Kind::Json(d), fields, *enforce)
            }
            StreamSchema::JsonColumns { columns } => {
                let (d, fields) = json::JsonDecoder::from_columns(columns)?;
                (Kind::Json(d), fields, false)
            }
            StreamSchema::Avro {
                definition,
                framing,
                enforce,
            } => {
                let (d, fields) = avro::AvroDecoder::new(definition, *framing)?;
                (Kind::Avro(d), fields, *enforce)
            }
        };
        check_names(&fields)?;
        Ok(ValueSchema {
            fields,
            enforce,
            kind,
        })
    }

    /// The fields, in column order.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Whether appended values must match.
    pub fn enforced(&self) -> bool {
        self.enforce
    }

    /// Whether `value` may be appended: always when the schema is not
    /// enforced, and for a record without a value (a tombstone).
    pub fn check(&self, value: Option<&[u8]>) -> Result<(), SchemaError> {
        match value {
            Some(v) if self.enforce => match &self.kind {
                Kind::Json(d) => d.check(v),
                Kind::Avro(d) => d.decode(v).map(|_| ()),
            },
            _ => Ok(()),
        }
    }

    /// One datum per field into `out` (cleared first). A value that cannot
    /// be decoded at all is an error and leaves every field NULL; a field
    /// of the wrong type is NULL. Returns how many fields did not fit.
    pub fn decode(&self, value: Option<&[u8]>, out: &mut Vec<Datum>) -> Result<usize, SchemaError> {
        out.clear();
        out.resize(self.fields.len(), Datum::Null);
        let Some(v) = value else { return Ok(0) };
        match &self.kind {
            Kind::Json(d) => d.decode(v, &self.fields, out),
            Kind::Avro(d) => d.decode_into(v, &self.fields, out),
        }
    }
}

fn check_names(fields: &[Field]) -> Result<(), SchemaError> {
    if fields.is_empty() {
        return Err(SchemaError::Definition("the schema has no fields".into()));
    }
    if fields.len() > FIELDS_MAX {
        return Err(SchemaError::Definition(format!(
            "{} fields, at most {FIELDS_MAX}",
            fields.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for f in fields {
        if f.name.is_empty() {
            return Err(SchemaError::Definition("a field has an empty name".into()));
        }
        if RESERVED.contains(&f.name.as_str()) {
            return Err(SchemaError::Definition(format!(
                "field {:?} has the name of a system column",
                f.name
            )));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(SchemaError::Definition(format!(
                "field {:?} is declared twice",
                f.name
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::types::Value as Avro;
    use fjord_core::policy::{AvroFraming, DeclaredColumn};
    use serde_json::json;

    fn reading_schema() -> StreamSchema {
        StreamSchema::JsonSchema {
            definition: json!({
                "type": "object",
                "properties": {
                    "device": {"type": "string"},
                    "temp": {"type": "number", "maximum": 200},
                    "seq": {"type": "integer"}
                },
                "required": ["device", "temp"]
            }),
            enforce: true,
        }
    }

    #[test]
    fn json_schema_checks_values_and_types_columns() {
        let s = ValueSchema::compile(&reading_schema()).unwrap();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name.as_str()).collect();
        // In the order the schema declares them.
        assert_eq!(names, ["device", "temp", "seq"]);
        assert!(s.check(Some(br#"{"device":"d1","temp":21.5}"#)).is_ok());
        assert!(s.check(None).is_ok(), "tombstones pass");
        let e = s.check(Some(br#"{"device":"d1","temp":500}"#)).unwrap_err();
        assert!(e.to_string().contains("/temp"), "{e}");
        let e = s.check(Some(br#"{"device":"d1"}"#)).unwrap_err();
        assert!(e.to_string().contains("temp"), "{e}");
        assert!(s.check(Some(b"not json")).is_err());

        let mut out = Vec::new();
        let misfits = s
            .decode(Some(br#"{"device":"d1","temp":21.5,"seq":"x"}"#), &mut out)
            .unwrap();
        assert_eq!(misfits, 1);
        assert_eq!(
            out,
            [Datum::Text("d1".into()), Datum::Float(21.5), Datum::Null]
        );
    }

    #[test]
    fn unenforced_schemas_accept_anything() {
        let StreamSchema::JsonSchema { definition, .. } = reading_schema() else {
            unreachable!()
        };
        let s = ValueSchema::compile(&StreamSchema::JsonSchema {
            definition,
            enforce: false,
        })
        .unwrap();
        assert!(s.check(Some(b"\xff")).is_ok());
        let mut out = Vec::new();
        assert!(s.decode(Some(b"\xff"), &mut out).is_err());
        assert!(out.iter().all(|d| *d == Datum::Null));
    }

    #[test]
    fn bad_definitions_are_refused_with_a_reason() {
        let cases = [
            StreamSchema::JsonSchema {
                definition: json!({"type": "object"}),
                enforce: true,
            },
            StreamSchema::JsonSchema {
                definition: json!({"type": 12, "properties": {"a": {}}}),
                enforce: true,
            },
            StreamSchema::JsonSchema {
                definition: json!({"properties": {"_offset": {"type": "integer"}}}),
                enforce: true,
            },
            StreamSchema::Avro {
                definition: json!({"type": "record", "name": "r"}),
                framing: AvroFraming::Auto,
                enforce: true,
            },
            StreamSchema::JsonColumns {
                columns: vec![DeclaredColumn {
                    name: "t".into(),
                    ty: "decimalish".into(),
                    path: None,
                }],
            },
            StreamSchema::JsonColumns {
                columns: vec![DeclaredColumn {
                    name: "t".into(),
                    ty: "double".into(),
                    path: Some("no-slash".into()),
                }],
            },
        ];
        for c in cases {
            match ValueSchema::compile(&c) {
                Err(SchemaError::Definition(m)) => assert!(!m.is_empty()),
                other => panic!("{c:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn declared_columns_read_nested_fields_and_never_refuse() {
        let s = ValueSchema::compile(&StreamSchema::JsonColumns {
            columns: vec![
                DeclaredColumn {
                    name: "temp".into(),
                    ty: "double".into(),
                    path: Some("/readings/temp".into()),
                },
                DeclaredColumn {
                    name: "at".into(),
                    ty: "timestamp".into(),
                    path: None,
                },
            ],
        })
        .unwrap();
        assert!(s.check(Some(b"junk")).is_ok());
        let mut out = Vec::new();
        s.decode(
            Some(br#"{"readings":{"temp":"19.25"},"at":"2026-01-01T00:00:00Z"}"#),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [Datum::Float(19.25), Datum::Ts(1_767_225_600_000)]);
    }

    fn avro_schema() -> serde_json::Value {
        json!({
            "type": "record", "name": "Reading",
            "fields": [
                {"name": "device", "type": "string"},
                {"name": "temp", "type": ["null", "double"]},
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "tags", "type": {"type": "map", "values": "string"}}
            ]
        })
    }

    fn avro_bytes(temp: Option<f64>) -> Vec<u8> {
        let schema = apache_avro::Schema::parse(&avro_schema()).unwrap();
        let value = Avro::Record(vec![
            ("device".into(), Avro::String("d7".into())),
            (
                "temp".into(),
                match temp {
                    Some(t) => Avro::Union(1, Box::new(Avro::Double(t))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            ("at".into(), Avro::TimestampMillis(1_000)),
            (
                "tags".into(),
                Avro::Map([("site".to_string(), Avro::String("north".into()))].into()),
            ),
        ]);
        apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap()
            .write_value_to_vec(value)
            .unwrap()
    }

    #[test]
    fn avro_records_decode_in_every_framing() {
        let s = ValueSchema::compile(&StreamSchema::Avro {
            definition: avro_schema(),
            framing: AvroFraming::Auto,
            enforce: true,
        })
        .unwrap();
        let types: Vec<FieldType> = s.fields().iter().map(|f| f.ty).collect();
        use FieldType::*;
        assert_eq!(types, [Utf8, Float64, Timestamp, Json]);
        let bare = avro_bytes(Some(21.5));
        let mut out = Vec::new();
        assert_eq!(s.decode(Some(&bare), &mut out), Ok(0));
        assert_eq!(
            out,
            [
                Datum::Text("d7".into()),
                Datum::Float(21.5),
                Datum::Ts(1_000),
                Datum::Text(r#"{"site":"north"}"#.into())
            ]
        );
        // Single-object encoding: marker and fingerprint first.
        let apache = apache_avro::Schema::parse(&avro_schema()).unwrap();
        let mut single = vec![0xC3, 0x01];
        single.extend(apache.fingerprint::<apache_avro::rabin::Rabin>().bytes);
        single.extend(avro_bytes(None));
        assert_eq!(s.decode(Some(&single), &mut out), Ok(0));
        assert_eq!(out[1], Datum::Null);
        // Trailing bytes and truncation are mismatches.
        let mut longer = bare.clone();
        longer.push(0);
        assert!(s.check(Some(&longer)).is_err());
        assert!(s.check(Some(&bare[..bare.len() - 2])).is_err());

        let confluent = ValueSchema::compile(&StreamSchema::Avro {
            definition: serde_json::Value::String(avro_schema().to_string()),
            framing: AvroFraming::Confluent,
            enforce: true,
        })
        .unwrap();
        let mut framed = vec![0, 0, 0, 0, 42];
        framed.extend(&bare);
        assert!(confluent.check(Some(&framed)).is_ok());
        assert!(confluent.check(Some(&bare)).is_err());
    }

    #[test]
    fn a_primitive_avro_schema_is_one_value_column() {
        let s = ValueSchema::compile(&StreamSchema::Avro {
            definition: json!("double"),
            framing: AvroFraming::Auto,
            enforce: true,
        })
        .unwrap();
        assert_eq!(
            s.fields(),
            [Field {
                name: "value".into(),
                ty: FieldType::Float64
            }]
        );
        let mut out = Vec::new();
        s.decode(Some(&1.5f64.to_le_bytes()), &mut out).unwrap();
        assert_eq!(out, [Datum::Float(1.5)]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            for schema in [reading_schema(), StreamSchema::Avro { definition: avro_schema(), framing: AvroFraming::Auto, enforce: true }] {
                let s = ValueSchema::compile(&schema).unwrap();
                let _ = s.check(Some(&bytes));
                let _ = s.decode(Some(&bytes), &mut out);
            }
        }
    }
}
