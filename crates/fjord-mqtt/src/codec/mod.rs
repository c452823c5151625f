//! The MQTT 3.1.1 and 5.0 packet codec (OASIS MQTT Version 3.1.1 and
//! Version 5.0). Pure: [`decode`] takes bytes and returns typed packets,
//! [`encode`] writes them back; no I/O, no broker state.
//!
//! One set of packet types serves both versions: fields that only 5.0 has
//! (reason codes on acknowledgements, properties) are empty for 3.1.1 and
//! are neither read nor written for it. Decoding checks every requirement the
//! specifications put on a packet's form; which of them is a "malformed
//! packet" and which a "protocol error" follows MQTT 5.0 §4.13, so the
//! session can answer with the right reason code.

mod packets;
pub mod primitives;
pub mod properties;
pub use fjord_core::topic;

pub use packets::*;
pub use properties::{Context, Properties};

use bytes::{Buf, BytesMut};
use thiserror::Error;

use primitives::read_varint;

/// The protocol level of CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1 (level 4).
    V311,
    /// MQTT 5.0 (level 5).
    V5,
}

impl Protocol {
    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// Why bytes are not a valid packet. Each maps to the MQTT 5.0 reason code
/// the server sends before closing ([`DecodeError::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("invalid UTF-8 in {0}")]
    InvalidUtf8(&'static str),
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("unsupported protocol level {0}")]
    UnsupportedProtocol(u8),
    #[error("protocol name {0:?} is not MQTT")]
    BadProtocolName(String),
    #[error("invalid topic name: {0:?}")]
    TopicName(topic::TopicError),
    #[error("invalid topic filter: {0:?}")]
    TopicFilter(topic::TopicError),
}

impl DecodeError {
    /// The reason code of MQTT 5.0 for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) | DecodeError::InvalidUtf8(_) => reason::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol(_) | DecodeError::BadProtocolName(_) => {
                reason::UNSUPPORTED_PROTOCOL_VERSION
            }
            DecodeError::TopicName(_) => reason::TOPIC_NAME_INVALID,
            DecodeError::TopicFilter(_) => reason::TOPIC_FILTER_INVALID,
        }
    }
}

/// MQTT 5.0 reason codes (§2.4) and the 3.1.1 CONNACK return codes.
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const GRANTED_QOS_2: u8 = 0x02;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const CONTINUE_AUTHENTICATION: u8 = 0x18;
    pub const REAUTHENTICATE: u8 = 0x19;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const BANNED: u8 = 0x8A;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_IN_USE: u8 = 0x91;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    pub const SERVER_MOVED: u8 = 0x9D;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const CONNECTION_RATE_EXCEEDED: u8 = 0x9F;
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0xA2;

    /// MQTT 3.1.1 CONNACK return codes (§3.2.2.3).
    pub mod v311 {
        pub const ACCEPTED: u8 = 0;
        pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 1;
        pub const IDENTIFIER_REJECTED: u8 = 2;
        pub const SERVER_UNAVAILABLE: u8 = 3;
        pub const BAD_USER_NAME_OR_PASSWORD: u8 = 4;
        pub const NOT_AUTHORIZED: u8 = 5;
        /// SUBACK return code for a refused subscription.
        pub const SUBACK_FAILURE: u8 = 0x80;
    }
}

/// How big the next packet in `buf` is, if its fixed header is complete:
/// `(header bytes, remaining length)`.
pub fn peek_len(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    match read_varint(&buf[1..])? {
        Some((len, n)) => Ok(Some((1 + n, len as usize))),
        None => Ok(None),
    }
}

/// Decodes one packet from the front of `buf`, consuming it. `Ok(None)`:
/// more bytes are needed. `protocol` is `None` until CONNECT has been read
/// (CONNECT declares it); `max_packet_size` bounds the whole packet.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Option<Protocol>,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    // Before CONNECT, the very first byte must be CONNECT's (MQTT-3.1.0-1):
    // refuse other bytes at once instead of waiting for a "length" of
    // garbage to arrive.
    if protocol.is_none() && buf.first().is_some_and(|&b| b != 0x10) {
        return Err(DecodeError::Protocol("the first packet must be CONNECT"));
    }
    let Some((header_len, remaining)) = peek_len(buf)? else {
        // A fixed header that cannot be complete within the limit is refused
        // before waiting for more bytes.
        if buf.len() >= 5 {
            return Err(DecodeError::Malformed("remaining length"));
        }
        return Ok(None);
    };
    let size = header_len + remaining;
    if size > max_packet_size {
        return Err(DecodeError::TooLarge {
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        return Ok(None);
    }
    let first = buf[0];
    buf.advance(header_len);
    let body = buf.split_to(remaining).freeze();
    packets::decode_body(first, body, protocol).map(Some)
}

/// Appends the encoding of `packet` for `protocol` to `buf`.
pub fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    packets::encode(packet, protocol, buf)
}

/// Bytes `packet` takes when encoded for `protocol` (to check a client's
/// Maximum Packet Size before sending).
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    packets::encoded_len(packet, protocol)
}

#[cfg(test)]
mod tests;
