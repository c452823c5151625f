//! Fjord's Kafka front-end (ARCHITECTURE §2–§4): Kafka clients produce to
//! and fetch from Fjord streams on port 9092.
//!
//! [`codec`] frames requests and responses (length-prefixed, the header
//! version each API and version calls for) over the `kafka-protocol`
//! crate's generated message types; it does no I/O. [`names`] maps Kafka
//! topics to streams. [`server`] accepts connections and answers requests
//! in order, one connection per task.
//!
//! Produced batches are stored exactly as the client sent them (whatever
//! their compression); the log assigns offsets and the append time. Fetch
//! serves the stored batches without re-encoding them.

pub mod codec;
mod config_api;
pub mod configs;
mod group_api;
mod groups;
mod handlers;
pub mod names;
mod producers;
pub mod sasl;
pub mod server;

pub use server::{start, Advertised, KafkaConfig, Listener};
