"""Security interoperability: Eclipse Paho over TLS (passwords, client
certificates, MQTT 5 refusals), confluent-kafka over SASL_SSL with
SCRAM-SHA-512, kafka-python with SCRAM-SHA-256, against a real node.

Run:  python3 -m pip install -r interop/security/requirements.txt
      cargo build -p fjord && python3 interop/security/test_security.py [path/to/fjord]

Certificates are made at test time with the openssl command line tool in a
temporary directory (nothing is committed).
"""

import atexit
import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fjord_node import NodeCase, free_port, main  # noqa: E402

import paho.mqtt.client as mqtt
from confluent_kafka import Consumer, KafkaException, Producer
from kafka import KafkaConsumer, KafkaProducer

TIMEOUT = 15
ADMIN_PW = "interop admin password"
PKI = tempfile.mkdtemp()


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki():
    """A CA, a server certificate for localhost/127.0.0.1, and a client
    certificate whose CN is `acme:sensor-1`."""
    p = lambda n: os.path.join(PKI, n)  # noqa: E731
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "2", "-subj", "/CN=interop CA")
    with open(p("server.ext"), "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    with open(p("client.ext"), "w") as f:
        f.write("extendedKeyUsage=clientAuth\n")
    for name, cn, ext in [("server", "localhost", "server.ext"), ("client", "acme:sensor-1", "client.ext")]:
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p(f"{name}.key"), "-out", p(f"{name}.csr"), "-subj", f"/CN={cn}")
        openssl("x509", "-req", "-in", p(f"{name}.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p(f"{name}.pem"), "-days", "2", "-extfile", p(ext))
    with open(p("admin-password"), "w") as f:
        f.write(ADMIN_PW)
    return p


P = make_pki()
PORTS = {k: free_port() for k in ["mqtts", "kafka_tls", "https", "wss"]}


def admin(node, method, path, body=None):
    auth = base64.b64encode(f"system:admin:{ADMIN_PW}".encode()).decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Basic {auth}"},
        method=method)
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read()
        return json.loads(text) if text else None


class Security(NodeCase):
    node_env = {
        "FJORD_TLS__CERT_FILE": P("server.pem"),
        "FJORD_TLS__KEY_FILE": P("server.key"),
        "FJORD_TLS__CLIENT_CA_FILE": P("ca.pem"),
        "FJORD_MQTT__TLS_ADDR": f"127.0.0.1:{PORTS['mqtts']}",
        "FJORD_MQTT__WSS_ADDR": f"127.0.0.1:{PORTS['wss']}",
        "FJORD_MQTT__TLS_CLIENT_AUTH": "optional",
        "FJORD_KAFKA__TLS_ADDR": f"127.0.0.1:{PORTS['kafka_tls']}",
        "FJORD_HTTP__TLS_ADDR": f"127.0.0.1:{PORTS['https']}",
        "FJORD_AUTH__ADMIN_PASSWORD_FILE": P("admin-password"),
    }

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        admin(cls.node, "POST", "/v1/tenants", {"name": "acme"})
        admin(cls.node, "PUT", "/v1/tenants/acme/users/dev", {"password": "dev-password"})

    def stored(self, stream):
        page = admin(self.node, "GET",
                     f"/v1/streams/acme/default/{stream}/records?partition=0&offset=0&max_records=1000")
        return [r["value"] for r in page["records"]]

    def mqtt_client(self, cid, v5=False, user=None, cert=False):
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                        protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        c.tls_set(ca_certs=P("ca.pem"),
                  certfile=P("client.pem") if cert else None,
                  keyfile=P("client.key") if cert else None)
        if user:
            c.username_pw_set(*user)
        connected = queue.Queue()
        c.on_connect = lambda cl, u, flags, rc, props: connected.put(rc)
        c.connect("localhost", PORTS["mqtts"], 30)
        c.loop_start()
        rc = connected.get(timeout=TIMEOUT)
        return c, rc

    def test_paho_over_tls_with_a_password(self):
        c, rc = self.mqtt_client("tls-pw", user=("acme:dev", "dev-password"))
        self.assertEqual(rc, 0)
        for i in range(20):
            c.publish("tlsdata/x", f"m{i}", qos=1).wait_for_publish(TIMEOUT)
        c.disconnect()
        c.loop_stop()
        self.assertEqual(self.stored("tlsdata"), [f"m{i}" for i in range(20)])

    def test_paho_refusals_carry_the_protocol_codes(self):
        # paho 2 reports 3.1.1's CONNACK code 4 by its 5.0 name.
        c, rc = self.mqtt_client("tls-bad", user=("acme:dev", "wrong password"))
        self.assertEqual(str(rc), "Bad user name or password", "3.1.1 code 4")
        c.loop_stop()
        c, rc = self.mqtt_client("tls-bad5", v5=True, user=("acme:dev", "wrong password"))
        self.assertEqual(rc.value, 0x86, "5.0: bad user name or password")
        c.loop_stop()

    def test_paho_with_a_client_certificate(self):
        c, rc = self.mqtt_client("tls-cert", cert=True)
        self.assertEqual(rc, 0)
        c.publish("certdata/x", "from the certificate", qos=1).wait_for_publish(TIMEOUT)
        c.disconnect()
        c.loop_stop()
        self.assertEqual(self.stored("certdata"), ["from the certificate"])

    def test_confluent_kafka_sasl_ssl_scram_sha_512(self):
        conf = {
            "bootstrap.servers": f"127.0.0.1:{PORTS['kafka_tls']}",
            "security.protocol": "SASL_SSL",
            "ssl.ca.location": P("ca.pem"),
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "acme:dev",
            "sasl.password": "dev-password",
        }
        p = Producer(conf)
        for i in range(50):
            p.produce("scramdata", value=f"r{i}".encode())
        self.assertEqual(p.flush(30), 0)
        c = Consumer(dict(conf, **{"group.id": "scram-readers", "auto.offset.reset": "earliest"}))
        c.subscribe(["scramdata"])
        got = []
        deadline = time.time() + 30
        while len(got) < 50 and time.time() < deadline:
            m = c.poll(1)
            if m is not None and not m.error():
                got.append(m.value().decode())
        c.close()
        self.assertEqual(got, [f"r{i}" for i in range(50)])
        # A wrong password: no metadata is ever served.
        bad = Producer(dict(conf, **{"sasl.password": "wrong"}))
        with self.assertRaises(KafkaException):
            bad.list_topics(timeout=5)

    def test_kafka_python_scram_sha_256(self):
        common = dict(bootstrap_servers=self.node.bootstrap, security_protocol="SASL_PLAINTEXT",
                      sasl_mechanism="SCRAM-SHA-256", sasl_plain_username="acme:dev",
                      sasl_plain_password="dev-password")
        p = KafkaProducer(**common)
        for i in range(20):
            p.send("kpscram", f"k{i}".encode())
        p.flush(30)
        p.close()
        c = KafkaConsumer("kpscram", auto_offset_reset="earliest", consumer_timeout_ms=10000,
                          group_id=None, **common)
        got = [m.value.decode() for m in c]
        c.close()
        self.assertEqual(got, [f"k{i}" for i in range(20)])


if __name__ == "__main__":
    atexit.register(shutil.rmtree, PKI, True)
    main()
