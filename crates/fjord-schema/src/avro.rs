//! Avro values: a record schema's fields as columns, datums decoded with the
//! schema (bare, single-object encoded, or in Confluent's framing).

use apache_avro::rabin::Rabin;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema::Schema;
use apache_avro::types::Value as Avro;
use fjord_core::policy::AvroFraming;
use serde_json::Value;

use crate::{Datum, Field, FieldType, SchemaError};

#[derive(Debug)]
pub(crate) struct AvroDecoder {
    schema: Schema,
    framing: AvroFraming,
    /// Avro's single-object marker and this schema's fingerprint.
    single_object: [u8; 10],
    /// The top level is a record (one column per field), not one column.
    record: bool,
    /// Per field, the scale of a decimal (0 otherwise).
    scales: Vec<u32>,
}

impl AvroDecoder {
    pub(crate) fn new(
        definition: &Value,
        framing: AvroFraming,
    ) -> Result<(AvroDecoder, Vec<Field>), SchemaError> {
        let bad = |e: apache_avro::Error| SchemaError::Definition(format!("Avro schema: {e}"));
        let schema = match definition {
            // The schema as text, as schema registries hold it.
            Value::String(text) if text.trim_start().starts_with(['{', '[', '"']) => {
                Schema::parse_str(text).map_err(bad)?
            }
            other => Schema::parse(other).map_err(bad)?,
        };
        let (fields, scales, record) = match &schema {
            Schema::Record(r) => {
                let (fields, scales) = r
                    .fields
                    .iter()
                    .map(|f| {
                        let (ty, scale) = column_type(&f.schema);
                        (
                            Field {
                                name: f.name.clone(),
                                ty,
                            },
                            scale,
                        )
                    })
                    .unzip();
                (fields, scales, true)
            }
            other => {
                let (ty, scale) = column_type(other);
                (
                    vec![Field {
                        name: "value".into(),
                        ty,
                    }],
                    vec![scale],
                    false,
                )
            }
        };
        let fp = schema.fingerprint::<Rabin>().bytes;
        let mut single_object = [0u8; 10];
        single_object[0] = 0xC3;
        single_object[1] = 0x01;
        for (dst, src) in single_object[2..].iter_mut().zip(&fp) {
            *dst = *src;
        }
        Ok((
            AvroDecoder {
                schema,
                framing,
                single_object,
                record,
                scales,
            },
            fields,
        ))
    }

    fn datum<'v>(&self, v: &'v [u8]) -> Result<&'v [u8], SchemaError> {
        match self.framing {
            AvroFraming::Auto => Ok(v.strip_prefix(&self.single_object[..]).unwrap_or(v)),
            AvroFraming::Confluent => match v {
                [0, _, _, _, _, rest @ ..] => Ok(rest),
                _ => Err(SchemaError::Mismatch(
                    "not in Confluent's wire format (a zero byte and a 4-byte schema id first)"
                        .into(),
                )),
            },
        }
    }

    /// The whole value decoded; bytes left over are a mismatch.
    pub(crate) fn decode(&self, v: &[u8]) -> Result<Avro, SchemaError> {
        let mut rest = self.datum(v)?;
        let value = GenericDatumReader::builder(&self.schema)
            .build()
            .and_then(|r| r.read_value(&mut rest))
            .map_err(|e| SchemaError::Mismatch(format!("not an Avro datum of the schema: {e}")))?;
        if !rest.is_empty() {
            return Err(SchemaError::Mismatch(format!(
                "{} bytes left after the Avro datum",
                rest.len()
            )));
        }
        Ok(value)
    }

    pub(crate) fn decode_into(
        &self,
        v: &[u8],
        fields: &[Field],
        out: &mut [Datum],
    ) -> Result<usize, SchemaError> {
        let value = self.decode(v)?;
        let values: Vec<Avro> = match value {
            Avro::Record(fs) if self.record => fs.into_iter().map(|(_, v)| v).collect(),
            other => vec![other],
        };
        let mut misfits = 0;
        for (((v, field), scale), slot) in values
            .into_iter()
            .zip(fields)
            .zip(&self.scales)
            .zip(out.iter_mut())
        {
            match convert(v, field.ty, *scale) {
                Some(d) => *slot = d,
                None => misfits += 1,
            }
        }
        Ok(misfits)
    }
}

/// The column type of a field's schema, and its decimal scale.
fn column_type(s: &Schema) -> (FieldType, u32) {
    let ty = match s {
        Schema::Boolean => FieldType::Boolean,
        Schema::Int | Schema::Long | Schema::TimeMillis | Schema::TimeMicros => FieldType::Int64,
        Schema::Float | Schema::Double | Schema::BigDecimal => FieldType::Float64,
        Schema::Decimal(d) => return (FieldType::Float64, d.scale as u32),
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => FieldType::Utf8,
        Schema::Bytes | Schema::Fixed(_) => FieldType::Binary,
        Schema::Date => FieldType::Date,
        Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => FieldType::Timestamp,
        Schema::Union(u) => {
            let mut others = u.variants().iter().filter(|v| !matches!(v, Schema::Null));
            match (others.next(), others.next()) {
                (Some(only), None) => return column_type(only),
                _ => FieldType::Json,
            }
        }
        _ => FieldType::Json,
    };
    (ty, 0)
}

fn convert(v: Avro, ty: FieldType, scale: u32) -> Option<Datum> {
    if ty == FieldType::Json {
        return match v {
            Avro::Null => Some(Datum::Null),
            Avro::Union(_, inner) => convert(*inner, ty, scale),
            other => Some(Datum::Text(Value::try_from(other).ok()?.to_string())),
        };
    }
    let d = match v {
        Avro::Null => Datum::Null,
        Avro::Union(_, inner) => return convert(*inner, ty, scale),
        Avro::Boolean(b) => Datum::Bool(b),
        Avro::Int(i) | Avro::TimeMillis(i) => Datum::Int(i64::from(i)),
        Avro::Long(i) | Avro::TimeMicros(i) => Datum::Int(i),
        Avro::Float(f) => Datum::Float(f64::from(f)),
        Avro::Double(f) => Datum::Float(f),
        Avro::Decimal(d) => Datum::Float(decimal(&Vec::<u8>::try_from(&d).ok()?, scale)?),
        Avro::BigDecimal(d) => Datum::Float(d.to_string().parse().ok()?),
        Avro::String(s) | Avro::Enum(_, s) => Datum::Text(s),
        Avro::Uuid(u) => Datum::Text(u.to_string()),
        Avro::Bytes(b) | Avro::Fixed(_, b) => Datum::Bytes(b),
        Avro::Date(d) => Datum::Date(d),
        Avro::TimestampMillis(t) | Avro::LocalTimestampMillis(t) => Datum::Ts(t),
        Avro::TimestampMicros(t) | Avro::LocalTimestampMicros(t) => Datum::Ts(t.div_euclid(1000)),
        Avro::TimestampNanos(t) | Avro::LocalTimestampNanos(t) => {
            Datum::Ts(t.div_euclid(1_000_000))
        }
        _ => return None,
    };
    let fits = matches!(
        (&d, ty),
        (Datum::Null, _)
            | (Datum::Bool(_), FieldType::Boolean)
            | (Datum::Int(_), FieldType::Int64)
            | (Datum::Float(_), FieldType::Float64)
            | (Datum::Text(_), FieldType::Utf8)
            | (Datum::Bytes(_), FieldType::Binary)
            | (Datum::Date(_), FieldType::Date)
            | (Datum::Ts(_), FieldType::Timestamp)
    );
    fits.then_some(d)
}

/// A big-endian two's-complement unscaled decimal, as a float.
fn decimal(bytes: &[u8], scale: u32) -> Option<f64> {
    if bytes.is_empty() || bytes.len() > 16 {
        return None;
    }
    let negative = bytes[0] & 0x80 != 0;
    let mut unscaled: i128 = if negative { -1 } else { 0 };
    for b in bytes {
        unscaled = (unscaled << 8) | i128::from(*b);
    }
    Some(unscaled as f64 / 10f64.powi(scale as i32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_sign_and_scale() {
        assert_eq!(decimal(&[0x04, 0xD2], 2), Some(12.34));
        assert_eq!(decimal(&[0xFB, 0x2E], 2), Some(-12.34));
        assert_eq!(decimal(&[], 0), None);
    }
}
