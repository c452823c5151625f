//! Validated names of tenants, namespaces and streams (ARCHITECTURE §2).
//!
//! Names are `[a-z0-9_-]`, 1–64 characters; stream names may also hold upper
//! case. No dots, so protocols can join them with `.` (Kafka's
//! `namespace.stream`) and no slashes, so they are safe as path components of
//! the data directory.

use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

pub const NAME_LEN_MAX: usize = 64;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} name must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} name {name:?} is longer than {NAME_LEN_MAX} characters")]
    TooLong { kind: &'static str, name: String },
    #[error("{kind} name {name:?} holds {ch:?}; allowed are {allowed}")]
    BadChar {
        kind: &'static str,
        name: String,
        ch: char,
        allowed: &'static str,
    },
}

fn validate(kind: &'static str, name: &str, upper_ok: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > NAME_LEN_MAX {
        return Err(NameError::TooLong {
            kind,
            name: name.to_string(),
        });
    }
    let allowed = if upper_ok {
        "a-z A-Z 0-9 _ -"
    } else {
        "a-z 0-9 _ -"
    };
    for ch in name.chars() {
        let ok = ch.is_ascii_lowercase()
            || ch.is_ascii_digit()
            || ch == '_'
            || ch == '-'
            || (upper_ok && ch.is_ascii_uppercase());
        if !ok {
            return Err(NameError::BadChar {
                kind,
                name: name.to_string(),
                ch,
                allowed,
            });
        }
    }
    Ok(())
}

macro_rules! name_type {
    ($ty:ident, $kind:literal, $upper:literal) => {
        /// Shared, immutable text: names are cloned on every record's way
        /// (delivery queues, cursors), and a clone is a reference count.
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(std::sync::Arc<str>);

        impl $ty {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate($kind, &name, $upper)?;
                Ok(Self(name.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(TenantName, "tenant", false);
name_type!(NamespaceName, "namespace", false);
name_type!(StreamName, "stream", true);

/// The full name of a stream: `tenant/namespace/stream`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamRef {
    pub tenant: TenantName,
    pub namespace: NamespaceName,
    pub stream: StreamName,
}

impl StreamRef {
    pub fn new(tenant: &str, namespace: &str, stream: &str) -> Result<Self, NameError> {
        Ok(Self {
            tenant: TenantName::new(tenant)?,
            namespace: NamespaceName::new(namespace)?,
            stream: StreamName::new(stream)?,
        })
    }
}

impl fmt::Display for StreamRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant, self.namespace, self.stream)
    }
}

/// The tenant every anonymous connection belongs to, created at first start.
pub const PUBLIC_TENANT: &str = "public";
/// The namespace created in every tenant.
pub const DEFAULT_NAMESPACE: &str = "default";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        assert!(TenantName::new("acme-01").is_ok());
        assert!(NamespaceName::new("plant_1").is_ok());
        assert!(StreamName::new("Temperatures").is_ok());
        assert!(StreamName::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn rejects_invalid_names_with_clear_errors() {
        assert_eq!(
            TenantName::new(""),
            Err(NameError::Empty { kind: "tenant" })
        );
        let e = TenantName::new("Acme").unwrap_err();
        assert!(e.to_string().contains("'A'"), "{e}");
        assert!(NamespaceName::new("a.b").is_err());
        assert!(StreamName::new("a/b").is_err());
        assert!(StreamName::new("ä").is_err());
        assert!(matches!(
            StreamName::new("a".repeat(65)),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn deserialize_validates() {
        let r: Result<TenantName, _> = serde_json::from_str("\"bad name\"");
        assert!(r.is_err());
    }
}
