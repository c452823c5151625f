//! Kafka request decoding: any bytes as a stream of frames must give
//! requests or errors, never a panic, and never read past the frame.
#![no_main]

use bytes::BytesMut;
use fjord_kafka::codec::{decode_request, next_frame};
use libfuzzer_sys::fuzz_target;

// The node's allocator: a length field claiming billions of elements makes
// the decoder reserve, not commit, memory (see crates/fjord/src/alloc.rs).
#[path = "../../crates/fjord/src/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static ALLOCATOR: alloc::ReserveLarge = alloc::ReserveLarge;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Every API in every version kafka-protocol knows, so the fuzzer reaches
    // every body decoder, not only the ones the server answers.
    let all = |api: kafka_protocol::messages::ApiKey| {
        let v = api.valid_versions();
        Some((v.min, v.max))
    };
    while let Ok(Some(frame)) = next_frame(&mut buf, 1 << 20) {
        let _ = decode_request(frame, all);
    }
});
