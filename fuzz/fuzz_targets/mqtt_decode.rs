//! Any bytes as an MQTT stream, before CONNECT and in either version: the
//! decoder never panics, and every packet it accepts re-encodes to bytes
//! that decode to the same packet.
#![no_main]

use bytes::BytesMut;
use fjord_mqtt::codec::{self, Packet, Protocol};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let proto = match mode % 3 {
        0 => None,
        1 => Some(Protocol::V311),
        _ => Some(Protocol::V5),
    };
    let mut buf = BytesMut::from(rest);
    while let Ok(Some(packet)) = codec::decode(&mut buf, proto, 1 << 20) {
        let version = match (&packet, proto) {
            (Packet::Connect(c), _) => c.protocol,
            (_, Some(v)) => v,
            (_, None) => unreachable!("only CONNECT decodes before the version is known"),
        };
        let mut out = BytesMut::new();
        codec::encode(&packet, version, &mut out);
        assert_eq!(out.len(), codec::encoded_len(&packet, version));
        let again_proto = if matches!(packet, Packet::Connect(_)) { None } else { Some(version) };
        let again = codec::decode(&mut out, again_proto, usize::MAX).expect("re-encoding decodes").expect("whole");
        assert_eq!(again, packet);
        if proto.is_none() {
            break;
        }
    }
});
