//! Fjord's MQTT front-end (ARCHITECTURE §3).
//!
//! [`codec`] is the pure MQTT 3.1.1 / 5.0 packet codec: bytes in, typed
//! packets out and back, every "MUST" of the specifications about packet
//! form checked on decode, no I/O and no broker state, so it can be fuzzed
//! and property-tested on its own. [`mapping`] maps MQTT topics to Fjord
//! streams and back. Sessions and the listener build on both.

pub mod codec;
pub mod connection;
pub mod groups;
mod login;
pub mod mapping;
pub mod record;
pub mod retained;
pub mod server;
pub mod session_store;
pub mod space;
pub mod state;
pub mod tree;
pub mod wills;
pub mod ws;
