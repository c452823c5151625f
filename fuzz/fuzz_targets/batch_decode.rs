//! Any bytes given to the RecordBatch v2 decoder: no panic, no runaway
//! allocation; and whatever decodes re-encodes to records that decode the
//! same.
#![no_main]

use bytes::Bytes;
use fjord_core::batch::{self, BatchHeader, ProducerInfo};
use fjord_core::RecordInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let b = Bytes::copy_from_slice(data);
    let _ = batch::peek_total_len(&b);
    let Ok(h) = BatchHeader::parse(&b) else { return };
    let _ = batch::verify_crc(&b);
    let Ok(records) = batch::decode_records(&b) else { return };
    assert_eq!(records.len(), h.record_count as usize);
    let inputs: Vec<RecordInput> = records
        .iter()
        .map(|r| RecordInput {
            key: r.key.clone(),
            value: r.value.clone(),
            headers: r.headers.clone(),
            event_ts: Some(r.event_ts),
        })
        .collect();
    if inputs.is_empty() {
        return;
    }
    let again = Bytes::from(batch::encode(h.base_offset, h.publish_ts(), ProducerInfo::default(), &inputs));
    batch::verify_crc(&again).expect("our own encoding has a valid CRC");
    let decoded = batch::decode_records(&again).expect("our own encoding decodes");
    for (a, b) in records.iter().zip(&decoded) {
        assert_eq!((&a.key, &a.value, &a.headers), (&b.key, &b.value, &b.headers));
        // Times survive for batches as Fjord stores them (LogAppendTime). A
        // CreateTime record without a time (-1) has no publish time to fall
        // back on, so its re-encoding cannot keep "-1".
        if h.is_log_append_time() {
            assert_eq!((a.event_ts, a.publish_ts), (b.event_ts, b.publish_ts));
        }
    }
});
