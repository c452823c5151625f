//! Stream schemas on a running node: an enforced JSON Schema refuses what
//! does not fit over MQTT 5 (PUBACK 0x99) and HTTP (422), Avro values sent
//! by a Kafka producer (librdkafka, Confluent framing) are refused with
//! INVALID_RECORD when they are not Avro, and SQL sees typed columns;
//! columns declared over untidy JSON read what fits and NULL otherwise.

mod common;

use std::time::Duration;

use common::{http, Node};
use serde_json::{json, Value};

async fn create(node: &Node, name: &str, policy: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{}/v1/streams/public/default", node.url))
        .json(&json!({"name": name, "partitions": 2, "policy": policy}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn query(node: &Node, q: &str) -> Vec<Value> {
    let r = http()
        .post(format!("{}/v1/sql", node.url))
        .json(&json!({ "sql": q }))
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    body["rows"].as_array().unwrap().clone()
}

fn reading_schema() -> Value {
    json!({
        "format": "json-schema",
        "definition": {
            "type": "object",
            "properties": {
                "device": {"type": "string"},
                "temp": {"type": "number", "minimum": -50, "maximum": 150},
                "at": {"type": "string", "format": "date-time"}
            },
            "required": ["device", "temp"]
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enforced_json_schema_refuses_misfits_over_mqtt_and_http_and_types_sql_columns() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (s, v) = create(&node, "readings", json!({"schema": reading_schema()})).await;
    assert_eq!(s, 201, "{v}");

    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("gw-5", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    // Good, too hot (maximum), no temp (required), not JSON: in this order.
    let payloads = [
        json!({"device": "d1", "temp": 21.5, "at": "2026-12-01T10:00:00Z"}).to_string(),
        json!({"device": "d1", "temp": 900}).to_string(),
        json!({"device": "d2"}).to_string(),
        "temp=21".to_string(),
        json!({"device": "d2", "temp": 19}).to_string(),
    ];
    // rumqttc reports a refused publish as an error of the event loop
    // (and reconnects on the next poll): one publish at a time.
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for body in &payloads {
        c.publish("readings/gw", QoS::AtLeastOnce, false, body.clone())
            .await
            .unwrap();
        loop {
            match tokio::time::timeout_at(deadline, ev.poll())
                .await
                .expect("acks in time")
            {
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    reasons.push(a.reason);
                    break;
                }
                Err(ConnectionError::MqttState(StateError::PubAckFail { reason })) => {
                    reasons.push(reason);
                    break;
                }
                Ok(_) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
    }
    assert_eq!(
        reasons,
        [
            PubAckReason::Success,
            PubAckReason::PayloadFormatInvalid,
            PubAckReason::PayloadFormatInvalid,
            PubAckReason::PayloadFormatInvalid,
            PubAckReason::Success
        ]
    );

    // MQTT 3.1.1 cannot refuse: misfits are acknowledged, dropped and
    // counted; pipelined good values around them are all stored.
    {
        use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
        let mut o = MqttOptions::new("gw-311", h, p.parse().unwrap());
        o.set_keep_alive(Duration::from_secs(5));
        let (c, mut ev) = AsyncClient::new(o, 100);
        for i in 0..40 {
            let body = if i % 4 == 3 {
                json!({"device": "p", "temp": "n/a"})
            } else {
                json!({"device": "p", "temp": i})
            };
            c.publish("readings/p", QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap();
        }
        let mut acked = 0;
        common::poll_until(&mut ev, |e| {
            if matches!(e, Event::Incoming(Packet::PubAck(_))) {
                acked += 1;
            }
            acked == 40
        })
        .await;
        let got = query(
            &node,
            "SELECT count(*) AS n, sum(temp) AS total FROM readings WHERE device = 'p'",
        )
        .await;
        let want: i64 = (0..40).filter(|i| i % 4 != 3).sum();
        assert_eq!(got[0], json!({"n": 30, "total": want as f64}));
        let dropped = common::metric(
            &node.url,
            "fjord_protocol_errors_total{protocol=\"mqtt\",reason=\"invalid_record\"}",
        )
        .await;
        assert_eq!(dropped, 10.0);
    }

    // HTTP: 422 with the reason; a good record is stored.
    let url = format!("{}/v1/streams/public/default/readings/records", node.url);
    let r = http()
        .post(&url)
        .json(&json!({"records": [{"value": {"device": "d3", "temp": "warm"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_record", "{body}");
    // The message says where the value is wrong.
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("/temp"), "{message}");
    let r = http()
        .post(&url)
        .json(&json!({"records": [{"value": {"device": "d3", "temp": 30}}]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // SQL: the properties are typed columns in place of `value`.
    let cols = query(
        &node,
        "SELECT column_name, data_type FROM information_schema.columns \
         WHERE table_name = 'readings' ORDER BY ordinal_position",
    )
    .await;
    let cols: Vec<(String, String)> = cols
        .iter()
        .map(|c| {
            (
                c["column_name"].as_str().unwrap().to_string(),
                c["data_type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let named: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        named,
        [
            "_partition",
            "_offset",
            "_key",
            "_topic",
            "_publish_ts",
            "_event_ts",
            "_headers",
            // In the order the schema declares them.
            "device",
            "temp",
            "at",
            "_raw"
        ]
    );
    assert_eq!(cols[8].1, "Float64", "{cols:?}");
    assert!(cols[9].1.starts_with("Timestamp"), "{cols:?}");
    let got = query(
        &node,
        "SELECT device, count(*) AS n, sum(temp) AS total, max(at) IS NOT NULL AS timed \
         FROM readings WHERE device <> 'p' GROUP BY device ORDER BY device",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"device": "d1", "n": 1, "total": 21.5, "timed": true}),
            json!({"device": "d2", "n": 1, "total": 19.0, "timed": false}),
            json!({"device": "d3", "n": 1, "total": 30.0, "timed": false}),
        ]
    );
    let got = query(
        &node,
        "SELECT count(*) AS n FROM readings WHERE at = TIMESTAMP '2026-12-01T10:00:00Z'",
    )
    .await;
    assert_eq!(got[0]["n"], 1);

    // A schema that is not one is refused when set, with the reason.
    let (s, v) = create(
        &node,
        "broken",
        json!({"schema": {"format": "json-schema", "definition": {"type": "object"}}}),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert!(v.to_string().contains("properties"), "{v}");
}

fn avro_schema() -> Value {
    json!({
        "type": "record", "name": "Reading", "namespace": "plant",
        "fields": [
            {"name": "device", "type": "string"},
            {"name": "temp", "type": "double"},
            {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "note", "type": ["null", "string"], "default": null}
        ]
    })
}

fn avro(device: &str, temp: f64, at: i64, note: Option<&str>) -> Vec<u8> {
    use apache_avro::types::Value as A;
    let schema = apache_avro::Schema::parse(&avro_schema()).unwrap();
    let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(A::Record(vec![
            ("device".into(), A::String(device.into())),
            ("temp".into(), A::Double(temp)),
            ("at".into(), A::TimestampMillis(at)),
            (
                "note".into(),
                match note {
                    Some(n) => A::Union(1, Box::new(A::String(n.into()))),
                    None => A::Union(0, Box::new(A::Null)),
                },
            ),
        ]))
        .unwrap();
    // Confluent's wire format: magic byte, schema id 7, datum.
    let mut framed = vec![0, 0, 0, 0, 7];
    framed.extend(datum);
    framed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_from_a_kafka_producer_is_checked_and_queried_as_columns() {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let policy = json!({"schema": {
        "format": "avro",
        // As a schema registry holds it: the schema as text.
        "definition": avro_schema().to_string(),
        "framing": "confluent"
    }});
    let (s, v) = create(&node, "avro_readings", policy).await;
    assert_eq!(s, 201, "{v}");

    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &node.kafka)
        .set("broker.address.family", "v4")
        .set("message.timeout.ms", "10000")
        .set("log_level", "3")
        .create()
        .unwrap();
    let sent = [
        ("d1", 20.0, 1_000, None),
        ("d2", 22.5, 2_000, Some("door open")),
        ("d1", 21.0, 3_000, None),
    ];
    for (d, t, at, note) in sent {
        let payload = avro(d, t, at, note);
        producer
            .send(
                FutureRecord::to("avro_readings").key(d).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // JSON on an Avro stream: refused, nothing stored.
    let refused = producer
        .send(
            FutureRecord::to("avro_readings")
                .key("d9")
                .payload(r#"{"device":"d9"}"#),
            Duration::from_secs(10),
        )
        .await;
    match refused {
        Err((KafkaError::MessageProduction(code), _)) => {
            assert_eq!(code, RDKafkaErrorCode::InvalidRecord)
        }
        other => panic!("expected INVALID_RECORD, got {other:?}"),
    }

    let got = query(
        &node,
        "SELECT device, temp, CAST(at AS BIGINT) AS at_ms, note FROM avro_readings \
         ORDER BY at",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"device": "d1", "temp": 20.0, "at_ms": 1000, "note": null}),
            json!({"device": "d2", "temp": 22.5, "at_ms": 2000, "note": "door open"}),
            json!({"device": "d1", "temp": 21.0, "at_ms": 3000, "note": null}),
        ]
    );
    let got = query(
        &node,
        "SELECT device, avg(temp) AS avg_temp FROM avro_readings GROUP BY device ORDER BY device",
    )
    .await;
    assert_eq!(got[0], json!({"device": "d1", "avg_temp": 20.5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_columns_read_untidy_json_and_never_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let policy = json!({"schema": {"format": "json-columns", "columns": [
        {"name": "device", "type": "text", "path": "/meta/id"},
        {"name": "temp", "type": "double", "path": "/readings/0"},
        {"name": "ok", "type": "boolean"}
    ]}});
    let (s, v) = create(&node, "untidy", policy).await;
    assert_eq!(s, 201, "{v}");
    let url = format!("{}/v1/streams/public/default/untidy/records", node.url);
    let values = [
        json!({"meta": {"id": "a"}, "readings": [20.5, 1], "ok": true}),
        // Numbers and booleans as strings, as some firmware sends them.
        json!({"meta": {"id": "b"}, "readings": ["21.25"], "ok": "false"}),
        // Wrong types read as NULL; the record is still stored.
        json!({"meta": {"id": 7}, "readings": "n/a", "ok": 3}),
        json!("not an object"),
    ];
    let records: Vec<Value> = values.iter().map(|v| json!({ "value": v })).collect();
    let r = http()
        .post(&url)
        .json(&json!({ "records": records }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let got = query(
        &node,
        "SELECT device, temp, ok FROM untidy ORDER BY _offset",
    )
    .await;
    assert_eq!(
        got,
        [
            json!({"device": "a", "temp": 20.5, "ok": true}),
            json!({"device": "b", "temp": 21.25, "ok": false}),
            json!({"device": "7", "temp": null, "ok": null}),
            json!({"device": null, "temp": null, "ok": null}),
        ]
    );
}
