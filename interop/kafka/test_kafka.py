"""Kafka interoperability with kafka-python, confluent-kafka and kcat against a
real node.

Run:  python3 -m pip install -r interop/kafka/requirements.txt
      apt-get install kcat
      cargo build -p fjord && python3 interop/kafka/test_kafka.py [path/to/fjord]

Starts its own node on free localhost ports over a temporary data
directory.
"""

import json
import os
import threading
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fjord_node import NodeCase, main  # noqa: E402

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaTimeoutError


class KafkaPython(NodeCase):
    def consume_all(self, topic, partitions, expected):
        c = KafkaConsumer(bootstrap_servers=self.node.bootstrap, enable_auto_commit=False,
                          auto_offset_reset="earliest", consumer_timeout_ms=5000)
        c.assign([TopicPartition(topic, p) for p in partitions])
        out = []
        for m in c:
            out.append(m)
            if len(out) == expected:
                break
        c.close()
        return out

    def test_produce_consume_keys_headers_every_acks(self):
        for acks in (0, 1, "all"):
            topic = f"kp-acks-{acks}"
            p = KafkaProducer(bootstrap_servers=self.node.bootstrap, acks=acks, linger_ms=5)
            for i in range(50):
                p.send(topic, key=f"k{i % 5}".encode(), value=f"v{i}".encode(),
                       headers=[("seq", str(i).encode())])
            p.flush()
            p.close()
            got = self.consume_all(topic, [0], 50)
            self.assertEqual([m.value for m in got], [f"v{i}".encode() for i in range(50)])
            self.assertEqual([m.offset for m in got], list(range(50)))
            self.assertEqual(got[7].key, b"k2")
            self.assertEqual(got[7].headers, [("seq", b"7")])

    def test_offsets_for_times_and_ends(self):
        topic = "kp-times"
        p = KafkaProducer(bootstrap_servers=self.node.bootstrap)
        for i in range(5):
            p.send(topic, value=f"early{i}".encode())
        p.flush()
        time.sleep(0.05)
        mid = int(time.time() * 1000)
        time.sleep(0.05)
        for i in range(5):
            p.send(topic, value=f"late{i}".encode())
        p.flush()
        p.close()
        c = KafkaConsumer(bootstrap_servers=self.node.bootstrap, enable_auto_commit=False)
        tp = TopicPartition(topic, 0)
        self.assertEqual(c.beginning_offsets([tp])[tp], 0)
        self.assertEqual(c.end_offsets([tp])[tp], 10)
        found = c.offsets_for_times({tp: mid})[tp]
        self.assertEqual(found.offset, 5)
        self.assertGreaterEqual(found.timestamp, mid)
        self.assertIsNone(c.offsets_for_times({tp: int(time.time() * 1000) + 60_000})[tp])
        c.close()

    def test_topic_auto_creation_follows_the_namespace_policy(self):
        # public/default allows it, like Kafka's default.
        p = KafkaProducer(bootstrap_servers=self.node.bootstrap, max_block_ms=5000)
        p.send("made-by-kafka", value=b"x").get(timeout=10)
        # A namespace that turns it off: the topic never appears.
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.node.http}/v1/tenants/public/namespaces",
            data=json.dumps({"name": "locked", "policy": {"kafka_auto_create_topics": False}}).encode(),
            headers={"content-type": "application/json"}, method="POST")
        self.assertEqual(urllib.request.urlopen(req, timeout=10).status, 201)
        with self.assertRaises(KafkaTimeoutError):
            p.send("locked.newcomer", value=b"x").get(timeout=10)
        p.close()
        streams = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{self.node.http}/v1/streams/public/locked", timeout=10).read())
        self.assertEqual(streams.get("streams", streams), [])

    def test_admin_lists_and_describes_groups(self):
        from kafka.admin import KafkaAdminClient
        self.node.create_stream("desc", 2)
        c = KafkaConsumer("desc", bootstrap_servers=self.node.bootstrap, group_id="g-desc",
                          client_id="describer", enable_auto_commit=False)
        deadline = time.time() + 20
        while not c.assignment() and time.time() < deadline:
            c.poll(timeout_ms=200)
        self.assertEqual({tp.partition for tp in c.assignment()}, {0, 1})
        admin = KafkaAdminClient(bootstrap_servers=self.node.bootstrap)
        self.assertIn(("g-desc", "consumer"), admin.list_consumer_groups())
        (d,) = admin.describe_consumer_groups(["g-desc"])
        self.assertEqual((d.group, d.state, d.protocol_type, d.protocol), ("g-desc", "Stable", "consumer", "range"))
        self.assertEqual([m.client_id for m in d.members], ["describer"])
        admin.close()
        c.close()

    def test_admin_creates_grows_and_deletes_topics(self):
        from kafka.admin import KafkaAdminClient, NewPartitions, NewTopic
        from kafka.errors import TopicAlreadyExistsError
        admin = KafkaAdminClient(bootstrap_servers=self.node.bootstrap)
        admin.create_topics([NewTopic("adm", 4, 1, topic_configs={
            "retention.ms": "60000", "cleanup.policy": "compact", "max.message.bytes": "4096"})])
        info = json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{self.node.http}/v1/streams/public/default/adm", timeout=10).read())
        self.assertEqual(info["partitions"], 4)
        eff = info["effective_policy"]
        self.assertEqual((eff["retention_ms"], eff["compaction"], eff["max_message_bytes"]),
                         (60000, "latest-per-key", 4096))
        with self.assertRaises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic("adm", 1, 1)])
        admin.create_partitions({"adm": NewPartitions(6)})
        c = KafkaConsumer(bootstrap_servers=self.node.bootstrap)
        self.assertEqual(c.partitions_for_topic("adm"), set(range(6)))
        c.close()
        admin.delete_topics(["adm"])
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.node.http}/v1/streams/public/default/adm")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        self.assertEqual(e.exception.code, 404)
        admin.close()

    def test_consumer_group_rebalances_and_resumes_after_restart(self):
        self.node.create_stream("grp", 6)
        p = KafkaProducer(bootstrap_servers=self.node.bootstrap)
        for i in range(60):
            p.send("grp", key=f"k{i}".encode(), value=f"first{i}".encode())
        p.flush()
        seen, assignments, lock = [], {}, threading.Lock()
        stop = threading.Event()

        def share_all(members):
            # One generation: the members hold every partition, each some,
            # none twice (a member still on an older generation overlaps).
            with lock:
                held = [assignments.get(m, set()) for m in members]
            return (all(held) and set().union(*held) == set(range(6))
                    and sum(map(len, held)) == 6)

        def member(name, leave=False):
            c = KafkaConsumer("grp", bootstrap_servers=self.node.bootstrap, group_id="g-three",
                              auto_offset_reset="earliest", enable_auto_commit=False,
                              session_timeout_ms=10000, heartbeat_interval_ms=500)
            while not stop.is_set():
                batch = c.poll(timeout_ms=200, max_records=1)
                with lock:
                    assignments[name] = {tp.partition for tp in c.assignment()}
                for msgs in batch.values():
                    for m in msgs:
                        with lock:
                            seen.append(m.value)
                if batch:
                    try:
                        c.commit()
                    except CommitFailedError:
                        pass  # rebalanced meanwhile: the new owner re-reads it
                if leave and share_all("abc"):
                    break
            c.close()  # LeaveGroup: the others take its partitions over
            with lock:
                assignments[name + "-left"] = True

        threads = [threading.Thread(target=member, args=("a",)),
                   threading.Thread(target=member, args=("b",)),
                   threading.Thread(target=member, args=("c", True))]
        for t in threads:
            t.start()
        # c leaves once the three-member generation is in place; the two
        # that stay are stopped together once they hold all six partitions
        # between them (without a rebalance after the leave they would hold
        # four) -- or at the deadline, which fails the test below.
        deadline = time.time() + 60
        while time.time() < deadline:
            with lock:
                left = assignments.get("c-left")
                complete = set(seen) == {f"first{i}".encode() for i in range(60)}
            if left and complete and share_all("ab"):
                break
            time.sleep(0.1)
        final = share_all("ab")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        # Every message once or more (a leave may replay uncommitted ones),
        # none lost.
        self.assertTrue(assignments.get("c-left"))
        self.assertEqual(set(seen), {f"first{i}".encode() for i in range(60)})
        self.assertTrue(final, f"after the leave, a and b hold all six: {assignments}")

        # Committed offsets survive a restart: a new member resumes there.
        self.node.restart()
        p = KafkaProducer(bootstrap_servers=self.node.bootstrap)
        for i in range(30):
            p.send("grp", key=f"k{i}".encode(), value=f"second{i}".encode())
        p.flush()
        p.close()
        c = KafkaConsumer("grp", bootstrap_servers=self.node.bootstrap, group_id="g-three",
                          auto_offset_reset="earliest", enable_auto_commit=False,
                          consumer_timeout_ms=6000)
        after = [m.value for m in c]
        c.close()
        self.assertEqual(sorted(after), sorted(f"second{i}".encode() for i in range(30)))


class ConfluentKafka(NodeCase):
    """The same node through confluent-kafka (librdkafka 2.x, bundled in
    its wheel) and Debian's kcat (librdkafka as a command-line tool)."""


    def consume(self, topic, n, partitions=(0,)):
        from confluent_kafka import Consumer, TopicPartition as TP, OFFSET_BEGINNING
        c = Consumer({"bootstrap.servers": self.node.bootstrap, "group.id": f"check-{topic}",
                      "enable.auto.commit": False})
        c.assign([TP(topic, p, OFFSET_BEGINNING) for p in partitions])
        out, deadline = [], time.time() + 30
        while len(out) < n and time.time() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append(m)
        c.close()
        return out

    def test_every_codec_with_an_idempotent_producer(self):
        from confluent_kafka import Producer
        for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
            topic = f"ck-{codec}"
            p = Producer({"bootstrap.servers": self.node.bootstrap, "enable.idempotence": True,
                          "compression.type": codec, "linger.ms": 20})
            errors = []
            for i in range(200):
                p.produce(topic, key=f"k{i}", value=(f"{codec}-{i} " * 20).encode(),
                          headers=[("i", str(i).encode())],
                          on_delivery=lambda e, m: e and errors.append(e))
            self.assertEqual(p.flush(30), 0)
            self.assertEqual(errors, [])
            got = self.consume(topic, 200)
            self.assertEqual([m.value() for m in got], [(f"{codec}-{i} " * 20).encode() for i in range(200)])
            self.assertEqual([m.offset() for m in got], list(range(200)))
            self.assertEqual(got[9].headers(), [("i", b"9")])

    def test_admin_config_errors_carry_kafka_codes(self):
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry,
                                           ConfigResource, NewTopic, ResourceType)
        a = AdminClient({"bootstrap.servers": self.node.bootstrap})
        for f in a.create_topics([NewTopic("ck-admin", 1, 1)]).values():
            f.result()
        # Unknown topic, unknown config: refused with their Kafka codes.
        f = a.describe_configs([ConfigResource(ResourceType.TOPIC, "ck-nope")])
        with self.assertRaises(KafkaException) as e:
            list(f.values())[0].result()
        self.assertEqual(e.exception.args[0].code(), KafkaError.UNKNOWN_TOPIC_OR_PART)
        bad = ConfigResource(ResourceType.TOPIC, "ck-admin", set_config={"unclean.leader.election.enable": "true"})
        with self.assertRaises(KafkaException) as e, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy API, on purpose
            list(a.alter_configs([bad]).values())[0].result()
        self.assertEqual(e.exception.args[0].code(), KafkaError.INVALID_CONFIG)
        # IncrementalAlterConfigs: APPEND compact to cleanup.policy.
        inc = ConfigResource(ResourceType.TOPIC, "ck-admin", incremental_configs=[
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.APPEND),
            ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET)])
        list(a.incremental_alter_configs([inc]).values())[0].result()
        d = list(a.describe_configs([ConfigResource(ResourceType.TOPIC, "ck-admin")]).values())[0].result()
        self.assertEqual(d["cleanup.policy"].value, "compact")
        self.assertEqual(d["retention.ms"].value, "3600000")

    def test_kcat_produces_and_consumes_keys_headers_and_compression(self):
        for codec in ("gzip", "snappy", "lz4", "zstd"):
            topic = f"kcat-{codec}"
            lines = "".join(f"dev{i}:reading {i}\n" for i in range(30))
            subprocess.run(["kcat", "-b", self.node.bootstrap, "-t", topic, "-P", "-K:", "-z", codec,
                            "-H", "source=kcat"], input=lines.encode(), check=True, timeout=60)
            out = subprocess.run(["kcat", "-b", self.node.bootstrap, "-t", topic, "-C", "-o", "beginning",
                                  "-e", "-q", "-f", "%o|%k|%s|%h\n"], capture_output=True, check=True,
                                 timeout=60).stdout.decode().splitlines()
            self.assertEqual(out, [f"{i}|dev{i}|reading {i}|source=kcat" for i in range(30)])
        # kcat's metadata listing sees the broker at its advertised address.
        meta = subprocess.run(["kcat", "-b", self.node.bootstrap, "-L", "-J"], capture_output=True,
                              check=True, timeout=60).stdout
        brokers = json.loads(meta)["brokers"]
        self.assertEqual([b["name"] for b in brokers], [f"127.0.0.1:{self.node.kafka}"])


class SaslRequired(NodeCase):
    """A listener with `kafka.sasl = required`: PLAIN logins of a tenant's
    user through kafka-python (SaslHandshake v0, raw token) and
    confluent-kafka (v1 and SaslAuthenticate)."""

    node_env = {"FJORD_KAFKA__SASL": "required"}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        base = f"http://127.0.0.1:{cls.node.http}"
        for method, path, body in (("POST", "/v1/tenants", {"name": "acme"}),
                                   ("PUT", "/v1/tenants/acme/users/alice", {"password": "alice-secret"})):
            req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                         headers={"content-type": "application/json"}, method=method)
            urllib.request.urlopen(req, timeout=30)

    def records(self, tenant, stream):
        url = f"http://127.0.0.1:{self.node.http}/v1/streams/{tenant}/default/{stream}/records?offset=0"
        return json.loads(urllib.request.urlopen(url, timeout=10).read())["records"]

    def test_kafka_python_logs_in_and_writes_to_its_tenant(self):
        p = KafkaProducer(bootstrap_servers=self.node.bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="PLAIN", sasl_plain_username="acme:alice",
                          sasl_plain_password="alice-secret")
        for i in range(5):
            p.send("kp-sasl", value=f"v{i}".encode())
        p.flush()
        p.close()
        self.assertEqual([r["value"] for r in self.records("acme", "kp-sasl")], [f"v{i}" for i in range(5)])
        with self.assertRaises(Exception):
            KafkaProducer(bootstrap_servers=self.node.bootstrap, security_protocol="SASL_PLAINTEXT",
                          sasl_mechanism="PLAIN", sasl_plain_username="acme:alice",
                          sasl_plain_password="wrong-password", api_version_auto_timeout_ms=5000)

    def test_confluent_kafka_logs_in_and_a_wrong_password_is_refused(self):
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient
        conf = {"bootstrap.servers": self.node.bootstrap, "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN", "sasl.username": "acme:alice", "sasl.password": "alice-secret"}
        p = Producer(conf)
        for i in range(5):
            p.produce("ck-sasl", value=f"v{i}".encode())
        self.assertEqual(p.flush(30), 0)
        self.assertEqual(len(self.records("acme", "ck-sasl")), 5)
        bad = AdminClient(dict(conf, **{"sasl.password": "wrong-password"}))
        with self.assertRaises(Exception):
            bad.list_topics(timeout=5)
        # Without SASL the listener lets nothing through.
        anon = AdminClient({"bootstrap.servers": self.node.bootstrap})
        with self.assertRaises(Exception):
            anon.list_topics(timeout=5)


if __name__ == "__main__":
    main()
