//! The fifteen control packets: their types, and decoding and encoding of
//! their variable headers and payloads for both protocol versions.

use bytes::{BufMut, Bytes, BytesMut};

use super::primitives::{binary_len, put_binary, put_string, put_varint, varint_len, Reader};
use super::properties::{Context, Properties};
use super::{reason, topic, DecodeError, Protocol, QoS};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: Protocol,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<LastWill>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (5.0): delay, expiry, content type, …
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A 5.0 reason code, or a 3.1.1 return code.
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// May be empty in 5.0 when a Topic Alias stands for it.
    pub topic: String,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<u16>,
    pub payload: Bytes,
    pub properties: Properties,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    /// Always 0 (success) in 3.1.1.
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRequest {
    /// Not validated by the codec: an invalid filter is answered per filter
    /// in SUBACK (0x8F / 0x80) by the session.
    pub filter: String,
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0: send retained on subscribe; 1: only if new; 2: never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub filters: Vec<SubscriptionRequest>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub filters: Vec<String>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// One per filter in 5.0; empty in 3.1.1.
    pub codes: Vec<u8>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: u8,
    pub properties: Properties,
}

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const PUBLISH: u8 = 3;
const PUBACK: u8 = 4;
const PUBREC: u8 = 5;
const PUBREL: u8 = 6;
const PUBCOMP: u8 = 7;
const SUBSCRIBE: u8 = 8;
const SUBACK: u8 = 9;
const UNSUBSCRIBE: u8 = 10;
const UNSUBACK: u8 = 11;
const PINGREQ: u8 = 12;
const PINGRESP: u8 = 13;
const DISCONNECT: u8 = 14;
const AUTH: u8 = 15;

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16("packet identifier")?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

fn end(r: &Reader) -> Result<(), DecodeError> {
    if !r.is_empty() {
        return Err(DecodeError::Malformed(
            "bytes left after the packet's fields",
        ));
    }
    Ok(())
}

/// Decodes the variable header and payload of a packet whose first byte is
/// `first`.
pub(super) fn decode_body(
    first: u8,
    body: Bytes,
    protocol: Option<Protocol>,
) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0f;
    let v5 = protocol == Some(Protocol::V5);
    let Some(protocol) = protocol else {
        if kind != CONNECT {
            return Err(DecodeError::Protocol("the first packet must be CONNECT"));
        }
        return decode_connect(flags, body).map(|c| Packet::Connect(Box::new(c)));
    };
    // Fixed-header flags (MQTT-2.2.2-1, MQTT-2.2.2-2).
    let expected_flags = match kind {
        PUBLISH => flags,
        PUBREL | SUBSCRIBE | UNSUBSCRIBE => 0b0010,
        _ => 0,
    };
    if flags != expected_flags {
        return Err(DecodeError::Malformed("reserved flags of the fixed header"));
    }
    let mut r = Reader::new(body);
    let packet = match kind {
        CONNECT => return Err(DecodeError::Protocol("a second CONNECT")),
        CONNACK => {
            let ack_flags = r.u8("connect acknowledge flags")?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::Malformed("reserved connect acknowledge flags"));
            }
            let code = r.u8("connect reason code")?;
            let properties = if v5 {
                Properties::read(&mut r, Context::ConnAck)?
            } else {
                Properties::default()
            };
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 == 1,
                code,
                properties,
            })
        }
        PUBLISH => Packet::Publish(decode_publish(flags, &mut r, protocol)?),
        PUBACK | PUBREC | PUBREL | PUBCOMP => {
            let packet_id = packet_id(&mut r)?;
            let (reason, properties) = if v5 && !r.is_empty() {
                let reason = r.u8("reason code")?;
                let valid: &[u8] = match kind {
                    PUBACK | PUBREC => &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99],
                    _ => &[0x00, 0x92],
                };
                if !valid.contains(&reason) {
                    return Err(DecodeError::Protocol(
                        "reason code not valid for this acknowledgement",
                    ));
                }
                let props = if r.is_empty() {
                    Properties::default()
                } else {
                    Properties::read(&mut r, Context::Ack)?
                };
                (reason, props)
            } else {
                (reason::SUCCESS, Properties::default())
            };
            let ack = Ack {
                packet_id,
                reason,
                properties,
            };
            match kind {
                PUBACK => Packet::PubAck(ack),
                PUBREC => Packet::PubRec(ack),
                PUBREL => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        SUBSCRIBE => {
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::read(&mut r, Context::Subscribe)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string("topic filter")?;
                let o = r.u8("subscription options")?;
                let qos =
                    QoS::from_u8(o & 0b11).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
                let (no_local, rap, rh) = if v5 {
                    if o & 0b1100_0000 != 0 {
                        return Err(DecodeError::Malformed("reserved subscription option bits"));
                    }
                    let rh = (o >> 4) & 0b11;
                    if rh == 3 {
                        return Err(DecodeError::Protocol("retain handling 3"));
                    }
                    (o & 0b100 != 0, o & 0b1000 != 0, rh)
                } else {
                    if o & 0b1111_1100 != 0 {
                        return Err(DecodeError::Malformed("reserved subscription option bits"));
                    }
                    (false, false, 0)
                };
                filters.push(SubscriptionRequest {
                    filter,
                    qos,
                    no_local,
                    retain_as_published: rap,
                    retain_handling: rh,
                });
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                filters,
                properties,
            })
        }
        SUBACK => {
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::read(&mut r, Context::SubAck)?
            } else {
                Properties::default()
            };
            let codes = r.rest().to_vec();
            if codes.is_empty() {
                return Err(DecodeError::Protocol("SUBACK without a reason code"));
            }
            Packet::SubAck(SubAck {
                packet_id,
                codes,
                properties,
            })
        }
        UNSUBSCRIBE => {
            let packet_id = packet_id(&mut r)?;
            let properties = if v5 {
                Properties::read(&mut r, Context::Unsubscribe)?
            } else {
                Properties::default()
            };
            let mut filters = Vec::new();
            while !r.is_empty() {
                filters.push(r.string("topic filter")?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        }
        UNSUBACK => {
            let packet_id = packet_id(&mut r)?;
            let (codes, properties) = if v5 {
                let p = Properties::read(&mut r, Context::UnsubAck)?;
                let codes = r.rest().to_vec();
                if codes.is_empty() {
                    return Err(DecodeError::Protocol("UNSUBACK without a reason code"));
                }
                (codes, p)
            } else {
                (Vec::new(), Properties::default())
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                codes,
                properties,
            })
        }
        PINGREQ => Packet::PingReq,
        PINGRESP => Packet::PingResp,
        DISCONNECT => {
            let (reason, properties) = if v5 && !r.is_empty() {
                let reason = r.u8("disconnect reason code")?;
                let p = if r.is_empty() {
                    Properties::default()
                } else {
                    Properties::read(&mut r, Context::Disconnect)?
                };
                (reason, p)
            } else {
                (reason::SUCCESS, Properties::default())
            };
            Packet::Disconnect(Disconnect { reason, properties })
        }
        AUTH if v5 => {
            let (reason, properties) = if r.is_empty() {
                (reason::SUCCESS, Properties::default())
            } else {
                let reason = r.u8("authenticate reason code")?;
                if ![
                    reason::SUCCESS,
                    reason::CONTINUE_AUTHENTICATION,
                    reason::REAUTHENTICATE,
                ]
                .contains(&reason)
                {
                    return Err(DecodeError::Protocol("reason code not valid for AUTH"));
                }
                let p = if r.is_empty() {
                    Properties::default()
                } else {
                    Properties::read(&mut r, Context::Auth)?
                };
                (reason, p)
            };
            Packet::Auth(Auth { reason, properties })
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    };
    end(&r)?;
    Ok(packet)
}

fn decode_connect(flags: u8, body: Bytes) -> Result<Connect, DecodeError> {
    if flags != 0 {
        return Err(DecodeError::Malformed("reserved flags of the fixed header"));
    }
    let mut r = Reader::new(body);
    let name = r.string("protocol name")?;
    let level = r.u8("protocol level")?;
    let protocol = match (name.as_str(), level) {
        ("MQTT", 4) => Protocol::V311,
        ("MQTT", 5) => Protocol::V5,
        ("MQTT", l) | ("MQIsdp", l) => return Err(DecodeError::UnsupportedProtocol(l)),
        _ => return Err(DecodeError::BadProtocolName(name)),
    };
    let v5 = protocol == Protocol::V5;
    let f = r.u8("connect flags")?;
    if f & 1 != 0 {
        return Err(DecodeError::Malformed("reserved connect flag"));
    }
    let clean_start = f & 0b10 != 0;
    let will_flag = f & 0b100 != 0;
    let will_qos = (f >> 3) & 0b11;
    let will_retain = f & 0b10_0000 != 0;
    let password_flag = f & 0b100_0000 != 0;
    let username_flag = f & 0b1000_0000 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
    if !v5 && password_flag && !username_flag {
        return Err(DecodeError::Malformed("password without user name"));
    }
    let keep_alive = r.u16("keep alive")?;
    let properties = if v5 {
        Properties::read(&mut r, Context::Connect)?
    } else {
        Properties::default()
    };
    let client_id = r.string("client identifier")?;
    let will = if will_flag {
        let wp = if v5 {
            Properties::read(&mut r, Context::Will)?
        } else {
            Properties::default()
        };
        let topic = r.string("will topic")?;
        if topic.is_empty() {
            return Err(DecodeError::TopicName(topic::TopicError::Empty));
        }
        topic::validate_name(&topic).map_err(DecodeError::TopicName)?;
        let payload = r.binary("will payload")?;
        Some(LastWill {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            properties: wp,
        })
    } else {
        None
    };
    let username = if username_flag {
        Some(r.string("user name")?)
    } else {
        None
    };
    let password = if password_flag {
        Some(r.binary("password")?)
    } else {
        None
    };
    end(&r)?;
    Ok(Connect {
        protocol,
        clean_start,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, protocol: Protocol) -> Result<Publish, DecodeError> {
    let dup = flags & 0b1000 != 0;
    let qos = QoS::from_u8((flags >> 1) & 0b11).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
    let retain = flags & 1 != 0;
    if qos == QoS::AtMostOnce && dup {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = r.string("topic name")?;
    topic::validate_name(&topic).map_err(DecodeError::TopicName)?;
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(r)?)
    };
    let properties = if protocol == Protocol::V5 {
        Properties::read(r, Context::Publish)?
    } else {
        Properties::default()
    };
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(match protocol {
            Protocol::V311 => DecodeError::TopicName(topic::TopicError::Empty),
            Protocol::V5 => DecodeError::Protocol("empty topic name without a topic alias"),
        });
    }
    let payload = r.rest();
    Ok(Publish {
        dup,
        qos,
        retain,
        topic,
        packet_id,
        payload,
        properties,
    })
}

fn props_len(p: &Properties, v5: bool) -> usize {
    if v5 {
        p.encoded_len()
    } else {
        0
    }
}

/// Length of the variable header and payload.
fn body_len(packet: &Packet, protocol: Protocol) -> usize {
    let v5 = protocol == Protocol::V5;
    match packet {
        Packet::Connect(c) => {
            let mut n = binary_len(b"MQTT")
                + 1
                + 1
                + 2
                + props_len(&c.properties, v5)
                + binary_len(c.client_id.as_bytes());
            if let Some(w) = &c.will {
                n += props_len(&w.properties, v5)
                    + binary_len(w.topic.as_bytes())
                    + binary_len(&w.payload);
            }
            n += c.username.as_ref().map_or(0, |u| binary_len(u.as_bytes()));
            n += c.password.as_ref().map_or(0, |p| binary_len(p));
            n
        }
        Packet::ConnAck(c) => 2 + props_len(&c.properties, v5),
        Packet::Publish(p) => {
            binary_len(p.topic.as_bytes())
                + p.packet_id.map_or(0, |_| 2)
                + props_len(&p.properties, v5)
                + p.payload.len()
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            ack_len(a, v5)
        }
        Packet::Subscribe(s) => {
            2 + props_len(&s.properties, v5)
                + s.filters
                    .iter()
                    .map(|f| binary_len(f.filter.as_bytes()) + 1)
                    .sum::<usize>()
        }
        Packet::SubAck(s) => 2 + props_len(&s.properties, v5) + s.codes.len(),
        Packet::Unsubscribe(u) => {
            2 + props_len(&u.properties, v5)
                + u.filters
                    .iter()
                    .map(|f| binary_len(f.as_bytes()))
                    .sum::<usize>()
        }
        Packet::UnsubAck(u) => {
            2 + if v5 {
                u.properties.encoded_len() + u.codes.len()
            } else {
                0
            }
        }
        Packet::PingReq | Packet::PingResp => 0,
        Packet::Disconnect(d) => reason_len(d.reason, &d.properties, v5),
        Packet::Auth(a) => reason_len(a.reason, &a.properties, v5),
    }
}

fn ack_len(a: &Ack, v5: bool) -> usize {
    if !v5 || (a.reason == reason::SUCCESS && a.properties.is_empty()) {
        2
    } else if a.properties.is_empty() {
        3
    } else {
        3 + a.properties.encoded_len()
    }
}

/// DISCONNECT and AUTH: nothing when success without properties.
fn reason_len(code: u8, p: &Properties, v5: bool) -> usize {
    if !v5 || (code == reason::SUCCESS && p.is_empty()) {
        0
    } else if p.is_empty() {
        1
    } else {
        1 + p.encoded_len()
    }
}

pub(super) fn encoded_len(packet: &Packet, protocol: Protocol) -> usize {
    let n = body_len(packet, protocol);
    1 + varint_len(n as u32) + n
}

pub(super) fn encode(packet: &Packet, protocol: Protocol, buf: &mut BytesMut) {
    let v5 = protocol == Protocol::V5;
    let n = body_len(packet, protocol);
    buf.reserve(1 + varint_len(n as u32) + n);
    let first = match packet {
        Packet::Connect(_) => CONNECT << 4,
        Packet::ConnAck(_) => CONNACK << 4,
        Packet::Publish(p) => {
            (PUBLISH << 4) | ((p.dup as u8) << 3) | ((p.qos as u8) << 1) | p.retain as u8
        }
        Packet::PubAck(_) => PUBACK << 4,
        Packet::PubRec(_) => PUBREC << 4,
        Packet::PubRel(_) => (PUBREL << 4) | 0b0010,
        Packet::PubComp(_) => PUBCOMP << 4,
        Packet::Subscribe(_) => (SUBSCRIBE << 4) | 0b0010,
        Packet::SubAck(_) => SUBACK << 4,
        Packet::Unsubscribe(_) => (UNSUBSCRIBE << 4) | 0b0010,
        Packet::UnsubAck(_) => UNSUBACK << 4,
        Packet::PingReq => PINGREQ << 4,
        Packet::PingResp => PINGRESP << 4,
        Packet::Disconnect(_) => DISCONNECT << 4,
        Packet::Auth(_) => AUTH << 4,
    };
    buf.put_u8(first);
    put_varint(buf, n as u32);
    let start = buf.len();
    match packet {
        Packet::Connect(c) => {
            put_string(buf, "MQTT");
            buf.put_u8(c.protocol.level());
            let mut f = 0u8;
            if c.clean_start {
                f |= 0b10;
            }
            if let Some(w) = &c.will {
                f |= 0b100 | ((w.qos as u8) << 3);
                if w.retain {
                    f |= 0b10_0000;
                }
            }
            if c.password.is_some() {
                f |= 0b100_0000;
            }
            if c.username.is_some() {
                f |= 0b1000_0000;
            }
            buf.put_u8(f);
            buf.put_u16(c.keep_alive);
            if v5 {
                c.properties.write(buf);
            }
            put_string(buf, &c.client_id);
            if let Some(w) = &c.will {
                if v5 {
                    w.properties.write(buf);
                }
                put_string(buf, &w.topic);
                put_binary(buf, &w.payload);
            }
            if let Some(u) = &c.username {
                put_string(buf, u);
            }
            if let Some(p) = &c.password {
                put_binary(buf, p);
            }
        }
        Packet::ConnAck(c) => {
            buf.put_u8(c.session_present as u8);
            buf.put_u8(c.code);
            if v5 {
                c.properties.write(buf);
            }
        }
        Packet::Publish(p) => {
            put_string(buf, &p.topic);
            if let Some(id) = p.packet_id {
                buf.put_u16(id);
            }
            if v5 {
                p.properties.write(buf);
            }
            buf.put_slice(&p.payload);
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            buf.put_u16(a.packet_id);
            let n = ack_len(a, v5);
            if n >= 3 {
                buf.put_u8(a.reason);
            }
            if n > 3 {
                a.properties.write(buf);
            }
        }
        Packet::Subscribe(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.write(buf);
            }
            for f in &s.filters {
                put_string(buf, &f.filter);
                let mut o = f.qos as u8;
                if v5 {
                    o |= (f.no_local as u8) << 2
                        | (f.retain_as_published as u8) << 3
                        | (f.retain_handling & 0b11) << 4;
                }
                buf.put_u8(o);
            }
        }
        Packet::SubAck(s) => {
            buf.put_u16(s.packet_id);
            if v5 {
                s.properties.write(buf);
            }
            buf.put_slice(&s.codes);
        }
        Packet::Unsubscribe(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                u.properties.write(buf);
            }
            for f in &u.filters {
                put_string(buf, f);
            }
        }
        Packet::UnsubAck(u) => {
            buf.put_u16(u.packet_id);
            if v5 {
                u.properties.write(buf);
                buf.put_slice(&u.codes);
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(Disconnect {
            reason: code,
            properties,
        })
        | Packet::Auth(Auth {
            reason: code,
            properties,
        }) => {
            let n = reason_len(*code, properties, v5);
            if n >= 1 {
                buf.put_u8(*code);
            }
            if n > 1 {
                properties.write(buf);
            }
        }
    }
    debug_assert_eq!(buf.len() - start, n, "encoded length of {packet:?}");
}
