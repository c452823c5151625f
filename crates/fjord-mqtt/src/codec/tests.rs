//! Round-trip property tests for every packet of both versions, decoding of
//! arbitrary bytes, and the specification's MUSTs on packet form.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

/// A small deterministic generator, so one proptest seed fills the many
/// optional fields of a property list.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn coin(&mut self) -> bool {
        self.next().is_multiple_of(3)
    }
    fn string(&mut self) -> String {
        let n = (self.next() % 12) as usize;
        (0..n)
            .map(|_| (b'a' + (self.next() % 26) as u8) as char)
            .collect()
    }
    fn bytes(&mut self) -> Bytes {
        let n = (self.next() % 12) as usize;
        Bytes::from((0..n).map(|_| self.next() as u8).collect::<Vec<u8>>())
    }
    fn opt<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        if self.coin() {
            Some(f(self))
        } else {
            None
        }
    }
}

fn props(seed: u64, ctx: Context) -> Properties {
    use Context::*;
    let mut g = Gen(seed | 1);
    let mut p = Properties::default();
    let is = |set: &[Context]| set.contains(&ctx);
    if is(&[Publish, Will]) {
        p.payload_format_indicator = g.opt(|g| (g.next() % 2) as u8);
        p.message_expiry_interval = g.opt(|g| g.next() as u32);
        p.content_type = g.opt(Gen::string);
        p.response_topic = g.opt(|g| format!("r/{}", g.string()));
        p.correlation_data = g.opt(Gen::bytes);
    }
    if is(&[Publish, Subscribe]) {
        let n = if ctx == Subscribe {
            g.next() % 2
        } else {
            g.next() % 3
        };
        p.subscription_identifiers = (0..n)
            .map(|_| 1 + (g.next() % primitives::VARINT_MAX as u64) as u32)
            .collect();
    }
    if is(&[Connect, ConnAck, Disconnect]) {
        p.session_expiry_interval = g.opt(|g| g.next() as u32);
    }
    if is(&[ConnAck]) {
        p.assigned_client_identifier = g.opt(Gen::string);
        p.server_keep_alive = g.opt(|g| g.next() as u16);
        p.response_information = g.opt(Gen::string);
        p.maximum_qos = g.opt(|g| (g.next() % 2) as u8);
        p.retain_available = g.opt(|g| (g.next() % 2) as u8);
        p.wildcard_subscription_available = g.opt(|g| (g.next() % 2) as u8);
        p.subscription_identifier_available = g.opt(|g| (g.next() % 2) as u8);
        p.shared_subscription_available = g.opt(|g| (g.next() % 2) as u8);
    }
    if is(&[Connect, ConnAck, Auth]) {
        p.authentication_method = g.opt(Gen::string);
        p.authentication_data = g.opt(Gen::bytes);
    }
    if is(&[Connect]) {
        p.request_problem_information = g.opt(|g| (g.next() % 2) as u8);
        p.request_response_information = g.opt(|g| (g.next() % 2) as u8);
    }
    if is(&[Will]) {
        p.will_delay_interval = g.opt(|g| g.next() as u32);
    }
    if is(&[ConnAck, Disconnect]) {
        p.server_reference = g.opt(Gen::string);
    }
    if is(&[ConnAck, Ack, SubAck, UnsubAck, Disconnect, Auth]) {
        p.reason_string = g.opt(Gen::string);
    }
    if is(&[Connect, ConnAck]) {
        p.receive_maximum = g.opt(|g| 1 + (g.next() % 65535) as u16);
        p.topic_alias_maximum = g.opt(|g| g.next() as u16);
        p.maximum_packet_size = g.opt(|g| 1 + (g.next() % u32::MAX as u64) as u32);
    }
    if is(&[Publish]) {
        p.topic_alias = g.opt(|g| 1 + (g.next() % 65535) as u16);
    }
    let n = g.next() % 3;
    p.user = (0..n).map(|_| (g.string(), g.string())).collect();
    p
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn topic_name() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,8}(/[a-z0-9]{0,8}){0,3}"
}

fn packet(v: Protocol) -> impl Strategy<Value = Packet> {
    let v5 = v == Protocol::V5;
    let p = move |seed: u64, ctx: Context| {
        if v5 {
            props(seed, ctx)
        } else {
            Properties::default()
        }
    };
    let pid = 1u16..;
    prop_oneof![
        (
            any::<bool>(),
            any::<u16>(),
            "[a-zA-Z0-9]{0,23}",
            proptest::option::of((
                topic_name(),
                proptest::collection::vec(any::<u8>(), 0..32),
                qos(),
                any::<bool>(),
                any::<u64>()
            )),
            proptest::option::of("[a-z]{0,10}"),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            any::<u64>()
        )
            .prop_map(move |(clean, ka, id, will, user, pass, seed)| {
                // 3.1.1 allows a password only with a user name.
                let pass = if v5 || user.is_some() { pass } else { None };
                Packet::Connect(Box::new(Connect {
                    protocol: v,
                    clean_start: clean,
                    keep_alive: ka,
                    client_id: id,
                    will: will.map(|(topic, payload, qos, retain, s)| LastWill {
                        topic,
                        payload: Bytes::from(payload),
                        qos,
                        retain,
                        properties: p(s, Context::Will),
                    }),
                    username: user,
                    password: pass.map(Bytes::from),
                    properties: p(seed, Context::Connect),
                }))
            }),
        (any::<bool>(), any::<u8>(), any::<u64>()).prop_map(move |(sp, code, seed)| {
            Packet::ConnAck(ConnAck {
                session_present: sp,
                code,
                properties: p(seed, Context::ConnAck),
            })
        }),
        (
            qos(),
            any::<bool>(),
            any::<bool>(),
            topic_name(),
            pid.clone(),
            proptest::collection::vec(any::<u8>(), 0..64),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                move |(qos, dup, retain, topic, id, payload, seed, alias_only)| {
                    let properties = p(seed, Context::Publish);
                    let topic = if v5 && alias_only && properties.topic_alias.is_some() {
                        String::new()
                    } else {
                        topic
                    };
                    Packet::Publish(Publish {
                        dup: dup && qos != QoS::AtMostOnce,
                        qos,
                        retain,
                        topic,
                        packet_id: (qos != QoS::AtMostOnce).then_some(id),
                        payload: Bytes::from(payload),
                        properties,
                    })
                }
            ),
        (0u8..4, pid.clone(), any::<u64>(), 0usize..9).prop_map(move |(kind, id, seed, r)| {
            let reasons: &[u8] = if kind < 2 {
                &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99]
            } else {
                &[0x00, 0x92]
            };
            let reason = if v5 { reasons[r % reasons.len()] } else { 0 };
            let a = Ack {
                packet_id: id,
                reason,
                properties: p(seed, Context::Ack),
            };
            match kind {
                0 => Packet::PubAck(a),
                1 => Packet::PubRec(a),
                2 => Packet::PubRel(a),
                _ => Packet::PubComp(a),
            }
        }),
        (
            pid.clone(),
            proptest::collection::vec(
                (
                    "[a-z+#/]{1,10}",
                    qos(),
                    any::<bool>(),
                    any::<bool>(),
                    0u8..3
                ),
                1..5
            ),
            any::<u64>()
        )
            .prop_map(move |(id, fs, seed)| Packet::Subscribe(Subscribe {
                packet_id: id,
                filters: fs
                    .into_iter()
                    .map(|(filter, qos, nl, rap, rh)| SubscriptionRequest {
                        filter,
                        qos,
                        no_local: v5 && nl,
                        retain_as_published: v5 && rap,
                        retain_handling: if v5 { rh } else { 0 },
                    })
                    .collect(),
                properties: p(seed, Context::Subscribe),
            })),
        (
            pid.clone(),
            proptest::collection::vec(any::<u8>(), 1..5),
            any::<u64>()
        )
            .prop_map(move |(id, codes, seed)| Packet::SubAck(SubAck {
                packet_id: id,
                codes,
                properties: p(seed, Context::SubAck)
            })),
        (
            pid.clone(),
            proptest::collection::vec("[a-z+#/]{1,10}", 1..5),
            any::<u64>()
        )
            .prop_map(move |(id, filters, seed)| Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                filters,
                properties: p(seed, Context::Unsubscribe)
            })),
        (
            pid,
            proptest::collection::vec(any::<u8>(), 1..5),
            any::<u64>()
        )
            .prop_map(move |(id, codes, seed)| Packet::UnsubAck(UnsubAck {
                packet_id: id,
                codes: if v5 { codes } else { Vec::new() },
                properties: p(seed, Context::UnsubAck),
            })),
        Just(Packet::PingReq),
        Just(Packet::PingResp),
        (any::<u8>(), any::<u64>()).prop_map(move |(r, seed)| Packet::Disconnect(Disconnect {
            reason: if v5 { r } else { 0 },
            properties: p(seed, Context::Disconnect)
        })),
    ]
}

fn round_trip(packet: &Packet, v: Protocol) -> Packet {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf);
    assert_eq!(buf.len(), encoded_len(packet, v));
    let proto = if matches!(packet, Packet::Connect(_)) {
        None
    } else {
        Some(v)
    };
    let out = decode(&mut buf, proto, usize::MAX)
        .expect("decodes")
        .expect("complete");
    assert!(buf.is_empty(), "consumed exactly one packet");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_v311_packet_round_trips(p in packet(Protocol::V311)) {
        prop_assert_eq!(round_trip(&p, Protocol::V311), p);
    }

    #[test]
    fn every_v5_packet_round_trips(p in packet(Protocol::V5)) {
        prop_assert_eq!(round_trip(&p, Protocol::V5), p);
    }

    #[test]
    fn auth_round_trips(r in prop_oneof![Just(0u8), Just(0x18u8), Just(0x19u8)], seed in any::<u64>()) {
        let p = Packet::Auth(Auth { reason: r, properties: props(seed, Context::Auth) });
        prop_assert_eq!(round_trip(&p, Protocol::V5), p);
    }

    /// Split anywhere, a packet is reported incomplete until its last byte.
    #[test]
    fn partial_packets_wait_for_more(p in packet(Protocol::V5), cut in any::<prop::sample::Index>()) {
        let mut full = BytesMut::new();
        encode(&p, Protocol::V5, &mut full);
        let at = cut.index(full.len());
        let mut part = BytesMut::from(&full[..at]);
        let proto = if matches!(p, Packet::Connect(_)) { None } else { Some(Protocol::V5) };
        prop_assert_eq!(decode(&mut part, proto, usize::MAX).unwrap(), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), v5 in any::<bool>(), first in any::<bool>()) {
        let proto = if first { None } else if v5 { Some(Protocol::V5) } else { Some(Protocol::V311) };
        let mut buf = BytesMut::from(&data[..]);
        while let Ok(Some(_)) = decode(&mut buf, proto, 1 << 20) {}
    }
}

fn decode_one(bytes: &[u8], proto: Option<Protocol>) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), proto, 1 << 20)
}

const V4: Option<Protocol> = Some(Protocol::V311);
const V5: Option<Protocol> = Some(Protocol::V5);

#[test]
fn connect_form_is_checked() {
    // A valid 3.1.1 CONNECT: "MQTT", level 4, clean, keep alive 60, id "c".
    let ok = [
        0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0b10, 0, 60, 0, 1, b'c',
    ];
    assert!(matches!(
        decode_one(&ok, None),
        Ok(Some(Packet::Connect(_)))
    ));
    // Reserved flag set (MQTT-3.1.2-3).
    let mut bad = ok;
    bad[9] |= 1;
    assert!(matches!(
        decode_one(&bad, None),
        Err(DecodeError::Malformed(_))
    ));
    // Will QoS without the will flag (MQTT-3.1.2-11).
    let mut bad = ok;
    bad[9] |= 0b1000;
    assert!(matches!(
        decode_one(&bad, None),
        Err(DecodeError::Malformed(_))
    ));
    // Unknown level: answered with "unacceptable protocol version".
    let mut bad = ok;
    bad[8] = 7;
    assert_eq!(
        decode_one(&bad, None),
        Err(DecodeError::UnsupportedProtocol(7))
    );
    // Not MQTT at all.
    let mut bad = ok;
    bad[4] = b'X';
    assert!(matches!(
        decode_one(&bad, None),
        Err(DecodeError::BadProtocolName(_))
    ));
    // Anything before CONNECT (MQTT-3.1.0-1); a second CONNECT (MQTT-3.1.0-2).
    assert!(matches!(
        decode_one(&[0xc0, 0], None),
        Err(DecodeError::Protocol(_))
    ));
    assert!(matches!(decode_one(&ok, V4), Err(DecodeError::Protocol(_))));
}

#[test]
fn publish_form_is_checked() {
    // QoS 3 (MQTT-3.3.1-4).
    assert!(matches!(
        decode_one(&[0x36, 5, 0, 1, b'a', 0, 1], V4),
        Err(DecodeError::Malformed(_))
    ));
    // DUP on QoS 0 (MQTT-3.3.1-2).
    assert!(matches!(
        decode_one(&[0x38, 3, 0, 1, b'a'], V4),
        Err(DecodeError::Malformed(_))
    ));
    // Wildcards in a topic name (MQTT-3.3.2-2).
    assert!(matches!(
        decode_one(&[0x30, 3, 0, 1, b'#'], V4),
        Err(DecodeError::TopicName(_))
    ));
    assert_eq!(
        decode_one(&[0x30, 3, 0, 1, b'+'], V4)
            .unwrap_err()
            .reason_code(),
        reason::TOPIC_NAME_INVALID
    );
    // Invalid UTF-8 in the topic (MQTT-1.5.4-1).
    assert!(matches!(
        decode_one(&[0x30, 3, 0, 1, 0xff], V4),
        Err(DecodeError::InvalidUtf8(_))
    ));
    // Packet id 0 on QoS 1.
    assert!(matches!(
        decode_one(&[0x32, 5, 0, 1, b'a', 0, 0], V4),
        Err(DecodeError::Protocol(_))
    ));
    // 5.0: empty topic without an alias is a protocol error.
    assert!(matches!(
        decode_one(&[0x30, 3, 0, 0, 0], V5),
        Err(DecodeError::Protocol(_))
    ));
}

#[test]
fn fixed_header_flags_and_sizes() {
    // SUBSCRIBE must carry flags 0010 (MQTT-3.8.1-1).
    assert!(matches!(
        decode_one(&[0x80, 6, 0, 1, 0, 1, b'a', 0], V4),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_one(&[0x82, 6, 0, 1, 0, 1, b'a', 0], V4),
        Ok(Some(Packet::Subscribe(_)))
    ));
    // SUBSCRIBE with no filter (MQTT-3.8.3-3).
    assert!(matches!(
        decode_one(&[0x82, 2, 0, 1], V4),
        Err(DecodeError::Protocol(_))
    ));
    // Reserved subscription option bits.
    assert!(matches!(
        decode_one(&[0x82, 6, 0, 1, 0, 1, b'a', 0b100], V4),
        Err(DecodeError::Malformed(_))
    ));
    // PINGREQ with flags.
    assert!(matches!(
        decode_one(&[0xc1, 0], V4),
        Err(DecodeError::Malformed(_))
    ));
    // Reserved type 0, and AUTH in 3.1.1.
    assert!(matches!(
        decode_one(&[0x00, 0], V4),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_one(&[0xf0, 0], V4),
        Err(DecodeError::Malformed(_))
    ));
    // Too large: refused from the fixed header alone, before the body arrives.
    let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x03][..]);
    assert!(matches!(
        decode(&mut buf, V4, 1024),
        Err(DecodeError::TooLarge { .. })
    ));
    // A remaining length of more than four bytes.
    assert!(matches!(
        decode_one(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01], V4),
        Err(DecodeError::Malformed(_))
    ));
    // Bytes left over.
    assert!(matches!(
        decode_one(&[0xc0, 1, 0], V4),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn property_rules() {
    // A property not allowed in PUBLISH (session expiry).
    let pkt = [0x30, 9, 0, 1, b'a', 5, 0x11, 0, 0, 0, 1];
    assert!(matches!(
        decode_one(&pkt, V5),
        Err(DecodeError::Protocol(_))
    ));
    // The same property twice.
    let pkt = [0x30, 8, 0, 1, b'a', 4, 0x01, 0, 0x01, 1];
    assert!(matches!(
        decode_one(&pkt, V5),
        Err(DecodeError::Protocol(_))
    ));
    // Topic alias 0.
    let pkt = [0x30, 7, 0, 1, b'a', 3, 0x23, 0, 0];
    assert!(matches!(
        decode_one(&pkt, V5),
        Err(DecodeError::Protocol(_))
    ));
    // Property length past the packet.
    let pkt = [0x30, 4, 0, 1, b'a', 9];
    assert!(matches!(
        decode_one(&pkt, V5),
        Err(DecodeError::Malformed(_))
    ));
    // Several subscription identifiers are fine in PUBLISH.
    let pkt = [0x30, 9, 0, 1, b'a', 4, 0x0b, 1, 0x0b, 2, b'x'];
    match decode_one(&pkt, V5) {
        Ok(Some(Packet::Publish(p))) => {
            assert_eq!(p.properties.subscription_identifiers, vec![1, 2])
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn short_forms_of_v5_acknowledgements() {
    // PUBACK with only a packet id means success.
    match decode_one(&[0x40, 2, 0, 7], V5) {
        Ok(Some(Packet::PubAck(a))) => assert_eq!((a.packet_id, a.reason), (7, 0)),
        other => panic!("{other:?}"),
    }
    // DISCONNECT with no body means normal disconnection.
    assert!(matches!(
        decode_one(&[0xe0, 0], V5),
        Ok(Some(Packet::Disconnect(Disconnect { reason: 0, .. })))
    ));
    // A reason code not allowed on PUBREL.
    assert!(matches!(
        decode_one(&[0x62, 3, 0, 7, 0x10], V5),
        Err(DecodeError::Protocol(_))
    ));
}
