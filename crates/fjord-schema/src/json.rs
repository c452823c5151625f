//! JSON values: typed fields from a JSON Schema's top-level `properties` or
//! from declared columns (JSON Pointers), validation against the schema.

use fjord_core::policy::DeclaredColumn;
use serde_json::Value;

use crate::{Datum, Field, FieldType, SchemaError};

pub(crate) struct JsonDecoder {
    /// Per field, the JSON Pointer's reference tokens.
    paths: Vec<Vec<String>>,
    validator: Option<jsonschema::Validator>,
}

impl std::fmt::Debug for JsonDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonDecoder")
            .field("paths", &self.paths)
            .field("validator", &self.validator.is_some())
            .finish()
    }
}

impl JsonDecoder {
    pub(crate) fn from_json_schema(
        definition: &Value,
    ) -> Result<(JsonDecoder, Vec<Field>), SchemaError> {
        let validator = jsonschema::validator_for(definition)
            .map_err(|e| SchemaError::Definition(format!("JSON Schema: {e}")))?;
        let Some(properties) = definition.get("properties").and_then(Value::as_object) else {
            return Err(SchemaError::Definition(
                "a stream's JSON Schema needs top-level `properties`: they are its columns".into(),
            ));
        };
        let fields: Vec<Field> = properties
            .iter()
            .map(|(name, sub)| Field {
                name: name.clone(),
                ty: schema_type(sub),
            })
            .collect();
        let paths = fields.iter().map(|f| vec![f.name.clone()]).collect();
        Ok((
            JsonDecoder {
                paths,
                validator: Some(validator),
            },
            fields,
        ))
    }

    pub(crate) fn from_columns(
        columns: &[DeclaredColumn],
    ) -> Result<(JsonDecoder, Vec<Field>), SchemaError> {
        let mut fields = Vec::with_capacity(columns.len());
        let mut paths = Vec::with_capacity(columns.len());
        for c in columns {
            let ty = declared_type(&c.ty).ok_or_else(|| {
                SchemaError::Definition(format!(
                    "column {:?}: unknown type {:?} (bigint, double, text, boolean, timestamp, date or json)",
                    c.name, c.ty
                ))
            })?;
            let path = match &c.path {
                None => vec![c.name.clone()],
                Some(p) => pointer(p).ok_or_else(|| {
                    SchemaError::Definition(format!(
                        "column {:?}: path {p:?} is not a JSON Pointer (\"/a/b\")",
                        c.name
                    ))
                })?,
            };
            fields.push(Field {
                name: c.name.clone(),
                ty,
            });
            paths.push(path);
        }
        Ok((
            JsonDecoder {
                paths,
                validator: None,
            },
            fields,
        ))
    }

    pub(crate) fn check(&self, value: &[u8]) -> Result<(), SchemaError> {
        let doc = parse(value)?;
        match &self.validator {
            Some(v) => v.validate(&doc).map_err(|e| {
                let at = e.instance_path().to_string();
                let at = if at.is_empty() { "/".to_string() } else { at };
                SchemaError::Mismatch(format!("at {at}: {e}"))
            }),
            None => Ok(()),
        }
    }

    pub(crate) fn decode(
        &self,
        value: &[u8],
        fields: &[Field],
        out: &mut [Datum],
    ) -> Result<usize, SchemaError> {
        let doc = parse(value)?;
        let mut misfits = 0;
        for ((path, field), slot) in self.paths.iter().zip(fields).zip(out.iter_mut()) {
            let Some(v) = lookup(&doc, path) else {
                continue;
            };
            match convert(v, field.ty) {
                Some(d) => *slot = d,
                None => misfits += 1,
            }
        }
        Ok(misfits)
    }
}

fn parse(value: &[u8]) -> Result<Value, SchemaError> {
    serde_json::from_slice(value).map_err(|e| SchemaError::Mismatch(format!("not JSON: {e}")))
}

/// The column type of one property's subschema.
fn schema_type(sub: &Value) -> FieldType {
    let mut types: Vec<&str> = match sub.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    types.retain(|t| *t != "null");
    types.sort_unstable();
    match types.as_slice() {
        ["integer"] => FieldType::Int64,
        ["number"] | ["integer", "number"] => FieldType::Float64,
        ["boolean"] => FieldType::Boolean,
        ["string"] => match sub.get("format").and_then(Value::as_str) {
            Some("date-time") => FieldType::Timestamp,
            Some("date") => FieldType::Date,
            _ => FieldType::Utf8,
        },
        _ => FieldType::Json,
    }
}

fn declared_type(name: &str) -> Option<FieldType> {
    Some(match name.to_ascii_lowercase().as_str() {
        "bigint" | "int" | "integer" | "long" | "int64" => FieldType::Int64,
        "double" | "float" | "real" | "float64" | "number" | "double precision" => {
            FieldType::Float64
        }
        "text" | "string" | "varchar" | "utf8" => FieldType::Utf8,
        "boolean" | "bool" => FieldType::Boolean,
        "timestamp" | "timestamptz" => FieldType::Timestamp,
        "date" => FieldType::Date,
        "json" => FieldType::Json,
        _ => return None,
    })
}

/// The reference tokens of a JSON Pointer (RFC 6901).
fn pointer(p: &str) -> Option<Vec<String>> {
    let rest = p.strip_prefix('/')?;
    Some(
        rest.split('/')
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect(),
    )
}

fn lookup<'v>(doc: &'v Value, path: &[String]) -> Option<&'v Value> {
    let mut at = doc;
    for token in path {
        at = match at {
            Value::Object(m) => m.get(token)?,
            Value::Array(a) => a.get(token.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!at.is_null()).then_some(at)
}

/// `v` as a datum of type `ty`; `None` when it does not fit. Numbers and
/// booleans written as strings are read as such: devices send both.
fn convert(v: &Value, ty: FieldType) -> Option<Datum> {
    Some(match ty {
        FieldType::Int64 => Datum::Int(match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => i,
                None => integral(n.as_f64()?)?,
            },
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        }),
        FieldType::Float64 => Datum::Float(match v {
            Value::Number(n) => n.as_f64()?,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        }),
        FieldType::Boolean => Datum::Bool(match v {
            Value::Bool(b) => *b,
            Value::String(s) => s.trim().parse().ok()?,
            _ => return None,
        }),
        FieldType::Utf8 | FieldType::Binary => match v {
            Value::String(s) => Datum::Text(s.clone()),
            other => Datum::Text(other.to_string()),
        },
        FieldType::Json => Datum::Text(v.to_string()),
        FieldType::Timestamp => Datum::Ts(match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) => i,
                None => n.as_f64().filter(|f| f.is_finite())? as i64,
            },
            Value::String(s) => timestamp_ms(s.trim())?,
            _ => return None,
        }),
        FieldType::Date => Datum::Date(match v {
            Value::Number(n) => i32::try_from(n.as_i64()?).ok()?,
            Value::String(s) => {
                let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
                i32::try_from((d - epoch).num_days()).ok()?
            }
            _ => return None,
        }),
    })
}

fn integral(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// RFC 3339, or `YYYY-MM-DD HH:MM:SS[.fff]` read as UTC.
pub(crate) fn timestamp_ms(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn property_types_become_column_types() {
        let (_, fields) = JsonDecoder::from_json_schema(&json!({
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": ["number", "null"]},
                "c": {"type": "string", "format": "date-time"},
                "d": {"type": "object"},
                "e": {"type": "boolean"},
                "f": {"type": ["integer", "number"]},
                "g": {"enum": ["x", "y"]}
            }
        }))
        .unwrap();
        let types: Vec<FieldType> = fields.iter().map(|f| f.ty).collect();
        use FieldType::*;
        assert_eq!(
            types,
            [Int64, Float64, Timestamp, Json, Boolean, Float64, Json]
        );
    }

    #[test]
    fn pointers_unescape_and_index_arrays() {
        let doc = json!({"a/b": {"x": [10, 20]}, "m~n": 1});
        assert_eq!(
            lookup(&doc, &pointer("/a~1b/x/1").unwrap()),
            Some(&json!(20))
        );
        assert_eq!(lookup(&doc, &pointer("/m~0n").unwrap()), Some(&json!(1)));
        assert_eq!(lookup(&doc, &pointer("/a~1b/x/9").unwrap()), None);
        assert!(pointer("a").is_none());
    }

    #[test]
    fn conversions_are_lenient_where_devices_vary_and_strict_elsewhere() {
        assert_eq!(
            convert(&json!("42"), FieldType::Int64),
            Some(Datum::Int(42))
        );
        assert_eq!(convert(&json!(4.0), FieldType::Int64), Some(Datum::Int(4)));
        assert_eq!(convert(&json!(4.5), FieldType::Int64), None);
        assert_eq!(convert(&json!(true), FieldType::Float64), None);
        assert_eq!(
            convert(&json!("2026-12-01T10:00:00.250Z"), FieldType::Timestamp),
            Some(Datum::Ts(1_796_119_200_250))
        );
        assert_eq!(
            convert(&json!("1970-01-02"), FieldType::Date),
            Some(Datum::Date(1))
        );
        assert_eq!(
            convert(&json!({"k": [1]}), FieldType::Json),
            Some(Datum::Text(r#"{"k":[1]}"#.into()))
        );
    }
}
