//! Fjord's MQTT front-end (ARCHITECTURE §3).
//!
//! [`codec`] is the pure MQTT 3.1.1 / 5.0 packet codec: bytes in, typed
//! packets out and back, every "MUST" of the specifications about packet
//! form checked on decode, no I/O and no broker state, so it can be fuzzed
//! and property-tested on its own. Sessions, topic mapping and the listener
//! build on it.

pub mod codec;
