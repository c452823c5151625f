//! The PostgreSQL settings clients read — by `SHOW name` or
//! `current_setting('name')` — with the values a Fjord session has.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// A setting's value, by its name in any case; `None` if there is none.
pub fn get(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "transaction isolation level" | "transaction_isolation" => "read committed",
        "server_version" => "16.0",
        "server_version_num" => "160000",
        "server_encoding" | "client_encoding" => "UTF8",
        "standard_conforming_strings" => "on",
        "datestyle" => "ISO, MDY",
        "timezone" => "UTC",
        "integer_datetimes" => "on",
        "max_identifier_length" => "63",
        // Unqualified names resolve in namespace `default` (a keyword,
        // hence quoted, as PostgreSQL writes it).
        "search_path" => "\"default\"",
        _ => return None,
    })
}

/// `current_setting(name [, missing_ok])`.
pub fn current_setting() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::from(CurrentSetting {
        signature: Signature::variadic_any(Volatility::Stable),
    }))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        match args.len() {
            1 | 2 => Ok(DataType::Utf8),
            _ => Err(DataFusionError::Plan(
                "current_setting(name [, missing_ok]) takes one or two arguments".into(),
            )),
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let names = cast(&args.args[0].to_array(n)?, &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let missing_ok = match args.args.get(1) {
            Some(v) => {
                let v = cast(&v.to_array(n)?, &DataType::Boolean)?;
                let v = v.as_boolean();
                (0..n).map(|i| v.is_valid(i) && v.value(i)).collect()
            }
            None => vec![false; n],
        };
        let mut out = Vec::with_capacity(n);
        for (i, missing_ok) in missing_ok.into_iter().enumerate() {
            if names.is_null(i) {
                out.push(None);
                continue;
            }
            match get(names.value(i)) {
                Some(v) => out.push(Some(v)),
                None if missing_ok => out.push(None),
                None => {
                    return Err(DataFusionError::Plan(format!(
                        "unrecognized configuration parameter \"{}\"",
                        names.value(i)
                    )))
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(out))))
    }
}
