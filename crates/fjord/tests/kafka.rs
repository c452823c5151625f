//! Kafka's wire protocol with a real client nobody here wrote (`rskafka`):
//! produce and fetch with keys, headers and timestamps, offsets by time,
//! the same offsets over HTTP, and an MQTT publish read as a Kafka record.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{create_stream, get_json, http, Node};
use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::Record;
use serde_json::{json, Value};

fn record(i: usize) -> Record {
    Record {
        key: Some(format!("key-{i}").into_bytes()),
        value: Some(format!("value-{i}").into_bytes()),
        headers: BTreeMap::from([("source".to_string(), b"rskafka".to_vec())]),
        timestamp: chrono::Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_and_offsets_with_rskafka() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    create_stream(&node, "orders", 3).await;
    let client = ClientBuilder::new(vec![node.kafka.clone()])
        .build()
        .await
        .unwrap();
    let topics = client.list_topics().await.unwrap();
    let orders = topics.iter().find(|t| t.name == "orders").expect("listed");
    assert_eq!(orders.partitions.len(), 3);

    let pc = client
        .partition_client("orders", 1, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let before = chrono::Utc::now().timestamp_millis();
    let first = pc
        .produce((0..5).map(record).collect(), Compression::NoCompression)
        .await
        .unwrap();
    assert_eq!(first, vec![0, 1, 2, 3, 4]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = chrono::Utc::now().timestamp_millis();
    let second = pc
        .produce((5..10).map(record).collect(), Compression::NoCompression)
        .await
        .unwrap();
    assert_eq!(second, vec![5, 6, 7, 8, 9]);

    // Fetch from the middle of the first batch: whole batches come back,
    // the client drops what is before the offset.
    let (got, hwm) = pc.fetch_records(3, 1..1_000_000, 1_000).await.unwrap();
    assert_eq!(hwm, 10);
    let got: Vec<_> = got.into_iter().filter(|r| r.offset >= 3).collect();
    assert_eq!(got.len(), 7);
    for (i, r) in got.iter().enumerate() {
        let n = i + 3;
        assert_eq!(r.offset, n as i64);
        assert_eq!(r.record.key.as_deref(), Some(format!("key-{n}").as_bytes()));
        assert_eq!(
            r.record.value.as_deref(),
            Some(format!("value-{n}").as_bytes())
        );
        assert_eq!(
            r.record.headers.get("source").map(|v| &v[..]),
            Some(&b"rskafka"[..])
        );
        assert!(r.record.timestamp.timestamp_millis() >= before);
    }

    // Long poll: nothing new, the fetch waits about max_wait and returns empty.
    let started = std::time::Instant::now();
    let (none, _) = pc.fetch_records(10, 1..1_000_000, 300).await.unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250));

    assert_eq!(pc.get_offset(OffsetAt::Earliest).await.unwrap(), 0);
    assert_eq!(pc.get_offset(OffsetAt::Latest).await.unwrap(), 10);
    let at = pc
        .get_offset(OffsetAt::Timestamp(
            chrono::DateTime::from_timestamp_millis(mid).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(at, 5, "the first record appended at or after the time");

    // HTTP reads the same records at the same offsets.
    let v: Value = get_json(&format!(
        "{}/v1/streams/public/default/orders/records?partition=1&offset=0&max_records=10",
        node.url
    ))
    .await;
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 10);
    assert_eq!(recs[7]["offset"], 7);
    assert_eq!(recs[7]["key"], "key-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_publish_is_a_kafka_record_and_unknown_topics_are_errors() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = node.mqtt.rsplit_once(':').unwrap();
    let (c, mut ev) = AsyncClient::new(MqttOptions::new("dev-7", host, port.parse().unwrap()), 10);
    c.publish("plant/line1/temp", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .unwrap()
            .unwrap();
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            break;
        }
    }
    let client = ClientBuilder::new(vec![node.kafka.clone()])
        .build()
        .await
        .unwrap();
    let pc = client
        .partition_client("plant", 0, UnknownTopicHandling::Error)
        .await
        .unwrap();
    let (recs, _) = pc.fetch_records(0, 1..1_000_000, 1_000).await.unwrap();
    let r = &recs[0].record;
    assert_eq!(r.key.as_deref(), Some(&b"plant/line1/temp"[..]));
    assert_eq!(r.value.as_deref(), Some(&b"21.5"[..]));
    assert_eq!(r.headers.get("mqtt.qos").map(|v| &v[..]), Some(&b"1"[..]));
    assert_eq!(
        r.headers.get("mqtt.client").map(|v| &v[..]),
        Some(&b"dev-7"[..])
    );

    // A topic name that is not a valid stream name is refused by name.
    let bad = client
        .partition_client("not a topic", 0, UnknownTopicHandling::Error)
        .await;
    assert!(bad.is_err());
}

/// Frames a request the way any client does: length, header, body.
fn frame(
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &impl kafka_protocol::protocol::Encodable,
) -> Vec<u8> {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut header = RequestHeader::default();
    header.request_api_key = api as i16;
    header.request_api_version = version;
    header.correlation_id = 42;
    header.client_id = Some(StrBytes::from_static_str("raw"));
    let mut b = bytes::BytesMut::new();
    header
        .encode(&mut b, api.request_header_version(version))
        .unwrap();
    body.encode(&mut b, version).unwrap();
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

fn read_frame(s: &mut std::net::TcpStream) -> Vec<u8> {
    use std::io::Read;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    body
}

/// Versions a client may not use get the protocol's answer, not a closed
/// connection; a malformed frame closes only its own connection.
#[test]
fn unsupported_versions_are_answered_and_bad_frames_close_only_their_connection() {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, ApiVersionsRequest, ApiVersionsResponse, ProduceRequest, ProduceResponse, TopicName,
    };
    use kafka_protocol::protocol::{Decodable, StrBytes};
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let mut s = std::net::TcpStream::connect(&node.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();

    // ApiVersions in a version from the future: version 0 answer with
    // UNSUPPORTED_VERSION (35) and the supported list (KIP-511).
    let mut req = frame(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
    req[6..8].copy_from_slice(&99i16.to_be_bytes());
    s.write_all(&req).unwrap();
    let resp = read_frame(&mut s);
    assert_eq!(&resp[..4], &42i32.to_be_bytes());
    let mut body = bytes::Bytes::copy_from_slice(&resp[4..]);
    let v = ApiVersionsResponse::decode(&mut body, 0).unwrap();
    assert_eq!(v.error_code, 35);
    let produce = v
        .api_keys
        .iter()
        .find(|k| k.api_key == ApiKey::Produce as i16)
        .unwrap();
    assert_eq!((produce.min_version, produce.max_version), (3, 9));

    // Produce v11 (the protocol has it, this server serves up to 9): each
    // partition refused with UNSUPPORTED_VERSION, in v11's own layout.
    let mut p = ProduceRequest::default();
    p.acks = 1;
    p.timeout_ms = 1000;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("old"));
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    t.partition_data.push(pd);
    p.topic_data.push(t);
    s.write_all(&frame(ApiKey::Produce, 11, &p)).unwrap();
    let resp = read_frame(&mut s);
    // A flexible version: the header has tagged fields after the id.
    assert_eq!(&resp[..4], &42i32.to_be_bytes());
    let mut body = bytes::Bytes::copy_from_slice(&resp[5..]);
    let r = ProduceResponse::decode(&mut body, 11).unwrap();
    assert_eq!(r.responses[0].partition_responses[0].error_code, 35);

    // The same connection still serves.
    s.write_all(&frame(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    ))
    .unwrap();
    let resp = read_frame(&mut s);
    assert_eq!(&resp[..4], &42i32.to_be_bytes());

    // Garbage: that connection closes, counted; the node keeps serving.
    let mut bad = std::net::TcpStream::connect(&node.kafka).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(&[0, 0, 0, 8, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1])
        .unwrap();
    let mut rest = Vec::new();
    use std::io::Read;
    let _ = bad.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without an answer");
    s.write_all(&frame(
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    ))
    .unwrap();
    assert_eq!(&read_frame(&mut s)[..4], &42i32.to_be_bytes());
}

/// A request whose array length claims two billion elements (what the
/// `kafka_decode` fuzz target found): the decoder sizes a vector from it
/// before reading; the node must not abort on the allocation — the request
/// is malformed, its connection closes, the node keeps serving.
#[test]
fn an_array_length_of_billions_does_not_take_the_node_down() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let mut s = std::net::TcpStream::connect(&node.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // DescribeGroups v0: header (key 15, version 0, correlation 1, no
    // client id), then the groups array: length 0x7fffffff, no elements.
    let mut body = vec![0, 15, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    body.extend_from_slice(&0x7fff_ffffi32.to_be_bytes());
    let mut req = (body.len() as i32).to_be_bytes().to_vec();
    req.extend_from_slice(&body);
    s.write_all(&req).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed without an answer");
    // Still serving.
    let mut again = std::net::TcpStream::connect(&node.kafka).unwrap();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    again
        .write_all(&frame(
            kafka_protocol::messages::ApiKey::ApiVersions,
            3,
            &kafka_protocol::messages::ApiVersionsRequest::default(),
        ))
        .unwrap();
    assert_eq!(&read_frame(&mut again)[..4], &42i32.to_be_bytes());
}

/// A request/response round trip over a raw connection.
fn call<R: kafka_protocol::protocol::Decodable>(
    s: &mut std::net::TcpStream,
    api: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &impl kafka_protocol::protocol::Encodable,
) -> R {
    use std::io::Write;
    s.write_all(&frame(api, version, body)).unwrap();
    let resp = read_frame(s);
    assert_eq!(&resp[..4], &42i32.to_be_bytes());
    // Flexible versions carry tagged fields after the correlation id.
    let skip = if api.response_header_version(version) >= 1 {
        5
    } else {
        4
    };
    R::decode(&mut bytes::Bytes::copy_from_slice(&resp[skip..]), version).unwrap()
}

/// Offsets committed by any protocol (here a named HTTP consumer) are a
/// group to Kafka's admin APIs: listed as Empty, described, deleted by
/// partition (OffsetDelete) and as a whole (DeleteGroups).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_are_groups_that_can_be_listed_and_deleted() {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, DeleteGroupsRequest, DeleteGroupsResponse, GroupId, ListGroupsRequest,
        ListGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    create_stream(&node, "temps", 2).await;
    let base = format!("{}/v1/streams/public/default/temps", node.url);
    for i in 0..4 {
        http()
            .post(format!("{base}/records"))
            .json(&json!({"records": [{"value": i}], "partition": i % 2}))
            .send()
            .await
            .unwrap();
    }
    let r = http()
        .put(format!("{base}/consumers/app-1"))
        .json(&json!({"offsets": [{"partition": 0, "offset": 2}, {"partition": 1, "offset": 1}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let mut s = std::net::TcpStream::connect(&node.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let listed: ListGroupsResponse =
        call(&mut s, ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    let g = listed
        .groups
        .iter()
        .find(|g| &*g.group_id.0 == "app-1")
        .expect("listed");
    assert_eq!(&*g.group_state, "Empty");

    // OffsetDelete of partition 0 only.
    let mut od = OffsetDeleteRequest::default();
    od.group_id = GroupId(StrBytes::from_static_str("app-1"));
    let mut t = OffsetDeleteRequestTopic::default();
    t.name = TopicName(StrBytes::from_static_str("temps"));
    let mut p = OffsetDeleteRequestPartition::default();
    p.partition_index = 0;
    t.partitions.push(p);
    od.topics.push(t);
    let r: OffsetDeleteResponse = call(&mut s, ApiKey::OffsetDelete, 0, &od);
    assert_eq!(r.error_code, 0);
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    let c: Value = get_json(&format!("{base}/consumers")).await;
    let offsets = c["consumers"][0]["offsets"].as_array().unwrap().clone();
    assert_eq!(offsets.len(), 1, "only partition 1 is left: {c}");

    // DeleteGroups: gone; a second delete finds nothing (GROUP_ID_NOT_FOUND).
    let mut dg = DeleteGroupsRequest::default();
    dg.groups_names = vec![GroupId(StrBytes::from_static_str("app-1"))];
    let r: DeleteGroupsResponse = call(&mut s, ApiKey::DeleteGroups, 2, &dg);
    assert_eq!(r.results[0].error_code, 0);
    let c: Value = get_json(&format!("{base}/consumers")).await;
    assert_eq!(c["consumers"], json!([]), "{c}");
    let r: DeleteGroupsResponse = call(&mut s, ApiKey::DeleteGroups, 2, &dg);
    assert_eq!(r.results[0].error_code, 69);
}

/// A batch whose CRC is right but whose records cannot be read (here it
/// claims gzip and holds plain records) is refused with CORRUPT_MESSAGE and
/// not stored: MQTT and HTTP readers of the stream never meet it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_batches_are_refused_not_stored() {
    use fjord_core::batch::{encode, ProducerInfo};
    use fjord_core::record::RecordInput;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    create_stream(&node, "clean", 1).await;
    let rec = [RecordInput {
        value: Some(bytes::Bytes::from_static(b"plain")),
        ..Default::default()
    }];
    let mut b = encode(0, 0, ProducerInfo::default(), &rec);
    let attrs = i16::from_be_bytes([b[21], b[22]]) | 1; // gzip
    b[21..23].copy_from_slice(&attrs.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());

    let mut p = ProduceRequest::default();
    p.acks = -1;
    p.timeout_ms = 5000;
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_static_str("clean"));
    let mut pd = PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(bytes::Bytes::from(b));
    t.partition_data.push(pd);
    p.topic_data.push(t);
    let mut s = std::net::TcpStream::connect(&node.kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &p);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 2);
    let end = get_json(&format!(
        "{}/v1/streams/public/default/clean/records?partition=0&from=latest",
        node.url
    ))
    .await;
    assert_eq!(end["high_watermark"], 0, "{end}");
}
