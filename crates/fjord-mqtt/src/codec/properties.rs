//! MQTT 5.0 properties (§2.2.2): one struct for all of them, and per packet
//! the set that packet may carry. A property a packet may not carry, a
//! property given twice (other than User Property and, in PUBLISH,
//! Subscription Identifier), or a value out of its range is a protocol error.

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{
    binary_len, put_binary, put_string, put_varint, varint_len, Reader, VARINT_MAX,
};
use super::DecodeError;

/// Where a property list appears; decides which properties are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_identifiers: Vec<u32>,
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay_interval: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// Whether property `p` may appear in `ctx` (MQTT 5.0 table 2-4).
fn allowed(p: u8, ctx: Context) -> bool {
    use id::*;
    use Context::*;
    match p {
        PAYLOAD_FORMAT_INDICATOR
        | MESSAGE_EXPIRY_INTERVAL
        | CONTENT_TYPE
        | RESPONSE_TOPIC
        | CORRELATION_DATA => {
            matches!(ctx, Publish | Will)
        }
        SUBSCRIPTION_IDENTIFIER => matches!(ctx, Publish | Subscribe),
        SESSION_EXPIRY_INTERVAL => matches!(ctx, Connect | ConnAck | Disconnect),
        ASSIGNED_CLIENT_IDENTIFIER
        | SERVER_KEEP_ALIVE
        | RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => ctx == ConnAck,
        AUTHENTICATION_METHOD | AUTHENTICATION_DATA => matches!(ctx, Connect | ConnAck | Auth),
        REQUEST_PROBLEM_INFORMATION | REQUEST_RESPONSE_INFORMATION => ctx == Connect,
        WILL_DELAY_INTERVAL => ctx == Will,
        SERVER_REFERENCE => matches!(ctx, ConnAck | Disconnect),
        REASON_STRING => matches!(ctx, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | MAXIMUM_PACKET_SIZE => {
            matches!(ctx, Connect | ConnAck)
        }
        TOPIC_ALIAS => ctx == Publish,
        USER_PROPERTY => true,
        _ => false,
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(v);
    Ok(())
}

fn flag(v: u8, what: &'static str) -> Result<u8, DecodeError> {
    if v > 1 {
        return Err(DecodeError::Protocol(what));
    }
    Ok(v)
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property list (its length, then the properties).
    pub fn read(r: &mut Reader, ctx: Context) -> Result<Self, DecodeError> {
        use id::*;
        let len = r.varint("property length")? as usize;
        if len > r.remaining() {
            return Err(DecodeError::Malformed(
                "property length runs past the packet",
            ));
        }
        let end = r.remaining() - len;
        let mut p = Properties::default();
        while r.remaining() > end {
            let pid = r.varint("property identifier")?;
            let pid = u8::try_from(pid)
                .map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            if !allowed(pid, ctx) {
                return Err(DecodeError::Protocol(
                    "a property this packet may not carry",
                ));
            }
            match pid {
                PAYLOAD_FORMAT_INDICATOR => {
                    let v = flag(
                        r.u8("payload format indicator")?,
                        "payload format indicator must be 0 or 1",
                    )?;
                    set_once(&mut p.payload_format_indicator, v)?
                }
                MESSAGE_EXPIRY_INTERVAL => {
                    set_once(&mut p.message_expiry_interval, r.u32("message expiry")?)?
                }
                CONTENT_TYPE => set_once(&mut p.content_type, r.string("content type")?)?,
                RESPONSE_TOPIC => {
                    let t = r.string("response topic")?;
                    super::topic::validate_name(&t)
                        .map_err(|_| DecodeError::Protocol("response topic holds a wildcard"))?;
                    set_once(&mut p.response_topic, t)?
                }
                CORRELATION_DATA => {
                    set_once(&mut p.correlation_data, r.binary("correlation data")?)?
                }
                SUBSCRIPTION_IDENTIFIER => {
                    let v = r.varint("subscription identifier")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    if ctx == Context::Subscribe && !p.subscription_identifiers.is_empty() {
                        return Err(DecodeError::Protocol("a property appears twice"));
                    }
                    p.subscription_identifiers.push(v);
                }
                SESSION_EXPIRY_INTERVAL => {
                    set_once(&mut p.session_expiry_interval, r.u32("session expiry")?)?
                }
                ASSIGNED_CLIENT_IDENTIFIER => set_once(
                    &mut p.assigned_client_identifier,
                    r.string("assigned client id")?,
                )?,
                SERVER_KEEP_ALIVE => {
                    set_once(&mut p.server_keep_alive, r.u16("server keep alive")?)?
                }
                AUTHENTICATION_METHOD => set_once(
                    &mut p.authentication_method,
                    r.string("authentication method")?,
                )?,
                AUTHENTICATION_DATA => {
                    set_once(&mut p.authentication_data, r.binary("authentication data")?)?
                }
                REQUEST_PROBLEM_INFORMATION => {
                    let v = flag(
                        r.u8("request problem information")?,
                        "request problem information must be 0 or 1",
                    )?;
                    set_once(&mut p.request_problem_information, v)?
                }
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, r.u32("will delay")?)?,
                REQUEST_RESPONSE_INFORMATION => {
                    let v = flag(
                        r.u8("request response information")?,
                        "request response information must be 0 or 1",
                    )?;
                    set_once(&mut p.request_response_information, v)?
                }
                RESPONSE_INFORMATION => set_once(
                    &mut p.response_information,
                    r.string("response information")?,
                )?,
                SERVER_REFERENCE => {
                    set_once(&mut p.server_reference, r.string("server reference")?)?
                }
                REASON_STRING => set_once(&mut p.reason_string, r.string("reason string")?)?,
                RECEIVE_MAXIMUM => {
                    let v = r.u16("receive maximum")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                TOPIC_ALIAS_MAXIMUM => {
                    set_once(&mut p.topic_alias_maximum, r.u16("topic alias maximum")?)?
                }
                TOPIC_ALIAS => {
                    let v = r.u16("topic alias")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("topic alias 0"));
                    }
                    set_once(&mut p.topic_alias, v)?
                }
                MAXIMUM_QOS => {
                    let v = flag(r.u8("maximum qos")?, "maximum qos must be 0 or 1")?;
                    set_once(&mut p.maximum_qos, v)?
                }
                RETAIN_AVAILABLE => set_once(
                    &mut p.retain_available,
                    flag(r.u8("retain available")?, "retain available must be 0 or 1")?,
                )?,
                USER_PROPERTY => {
                    let k = r.string("user property name")?;
                    let v = r.string("user property value")?;
                    p.user.push((k, v));
                }
                MAXIMUM_PACKET_SIZE => {
                    let v = r.u32("maximum packet size")?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.wildcard_subscription_available,
                    flag(
                        r.u8("wildcard subscription available")?,
                        "wildcard subscription available must be 0 or 1",
                    )?,
                )?,
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => set_once(
                    &mut p.subscription_identifier_available,
                    flag(
                        r.u8("subscription identifier available")?,
                        "subscription identifier available must be 0 or 1",
                    )?,
                )?,
                SHARED_SUBSCRIPTION_AVAILABLE => set_once(
                    &mut p.shared_subscription_available,
                    flag(
                        r.u8("shared subscription available")?,
                        "shared subscription available must be 0 or 1",
                    )?,
                )?,
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        if r.remaining() != end {
            return Err(DecodeError::Malformed(
                "a property runs past the property length",
            ));
        }
        Ok(p)
    }

    /// Bytes of the properties themselves (without the length prefix).
    pub fn body_len(&self) -> usize {
        let s = |v: &Option<String>| v.as_ref().map_or(0, |s| 1 + binary_len(s.as_bytes()));
        let b = |v: &Option<Bytes>| v.as_ref().map_or(0, |b| 1 + binary_len(b));
        let n1 = |v: &Option<u8>| v.map_or(0, |_| 2);
        let n2 = |v: &Option<u16>| v.map_or(0, |_| 3);
        let n4 = |v: &Option<u32>| v.map_or(0, |_| 5);
        n1(&self.payload_format_indicator)
            + n4(&self.message_expiry_interval)
            + s(&self.content_type)
            + s(&self.response_topic)
            + b(&self.correlation_data)
            + self
                .subscription_identifiers
                .iter()
                .map(|&v| 1 + varint_len(v))
                .sum::<usize>()
            + n4(&self.session_expiry_interval)
            + s(&self.assigned_client_identifier)
            + n2(&self.server_keep_alive)
            + s(&self.authentication_method)
            + b(&self.authentication_data)
            + n1(&self.request_problem_information)
            + n4(&self.will_delay_interval)
            + n1(&self.request_response_information)
            + s(&self.response_information)
            + s(&self.server_reference)
            + s(&self.reason_string)
            + n2(&self.receive_maximum)
            + n2(&self.topic_alias_maximum)
            + n2(&self.topic_alias)
            + n1(&self.maximum_qos)
            + n1(&self.retain_available)
            + self
                .user
                .iter()
                .map(|(k, v)| 1 + binary_len(k.as_bytes()) + binary_len(v.as_bytes()))
                .sum::<usize>()
            + n4(&self.maximum_packet_size)
            + n1(&self.wildcard_subscription_available)
            + n1(&self.subscription_identifier_available)
            + n1(&self.shared_subscription_available)
    }

    /// Bytes with the length prefix.
    pub fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n as u32) + n
    }

    pub fn write(&self, buf: &mut BytesMut) {
        use id::*;
        let n = self.body_len();
        debug_assert!(n as u32 <= VARINT_MAX);
        put_varint(buf, n as u32);
        macro_rules! w {
            ($f:expr, $id:expr, u8) => {
                if let Some(v) = $f {
                    buf.put_u8($id);
                    buf.put_u8(v);
                }
            };
            ($f:expr, $id:expr, u16) => {
                if let Some(v) = $f {
                    buf.put_u8($id);
                    buf.put_u16(v);
                }
            };
            ($f:expr, $id:expr, u32) => {
                if let Some(v) = $f {
                    buf.put_u8($id);
                    buf.put_u32(v);
                }
            };
            ($f:expr, $id:expr, str) => {
                if let Some(v) = &$f {
                    buf.put_u8($id);
                    put_string(buf, v);
                }
            };
            ($f:expr, $id:expr, bin) => {
                if let Some(v) = &$f {
                    buf.put_u8($id);
                    put_binary(buf, v);
                }
            };
        }
        w!(self.payload_format_indicator, PAYLOAD_FORMAT_INDICATOR, u8);
        w!(self.message_expiry_interval, MESSAGE_EXPIRY_INTERVAL, u32);
        w!(self.content_type, CONTENT_TYPE, str);
        w!(self.response_topic, RESPONSE_TOPIC, str);
        w!(self.correlation_data, CORRELATION_DATA, bin);
        for &v in &self.subscription_identifiers {
            buf.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(buf, v);
        }
        w!(self.session_expiry_interval, SESSION_EXPIRY_INTERVAL, u32);
        w!(
            self.assigned_client_identifier,
            ASSIGNED_CLIENT_IDENTIFIER,
            str
        );
        w!(self.server_keep_alive, SERVER_KEEP_ALIVE, u16);
        w!(self.authentication_method, AUTHENTICATION_METHOD, str);
        w!(self.authentication_data, AUTHENTICATION_DATA, bin);
        w!(
            self.request_problem_information,
            REQUEST_PROBLEM_INFORMATION,
            u8
        );
        w!(self.will_delay_interval, WILL_DELAY_INTERVAL, u32);
        w!(
            self.request_response_information,
            REQUEST_RESPONSE_INFORMATION,
            u8
        );
        w!(self.response_information, RESPONSE_INFORMATION, str);
        w!(self.server_reference, SERVER_REFERENCE, str);
        w!(self.reason_string, REASON_STRING, str);
        w!(self.receive_maximum, RECEIVE_MAXIMUM, u16);
        w!(self.topic_alias_maximum, TOPIC_ALIAS_MAXIMUM, u16);
        w!(self.topic_alias, TOPIC_ALIAS, u16);
        w!(self.maximum_qos, MAXIMUM_QOS, u8);
        w!(self.retain_available, RETAIN_AVAILABLE, u8);
        for (k, v) in &self.user {
            buf.put_u8(USER_PROPERTY);
            put_string(buf, k);
            put_string(buf, v);
        }
        w!(self.maximum_packet_size, MAXIMUM_PACKET_SIZE, u32);
        w!(
            self.wildcard_subscription_available,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            u8
        );
        w!(
            self.subscription_identifier_available,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            u8
        );
        w!(
            self.shared_subscription_available,
            SHARED_SUBSCRIPTION_AVAILABLE,
            u8
        );
    }
}
