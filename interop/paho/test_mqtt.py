"""MQTT interoperability with Eclipse Paho (paho-mqtt 2.x) against a real node.

Run:  python3 -m pip install -r interop/paho/requirements.txt
      cargo build -p fjord && python3 interop/paho/test_mqtt.py [path/to/fjord]

Starts its own node on free localhost ports over a temporary data directory
(and restarts it for the persistence test); every check waits on events with
deadlines, never on fixed sleeps, except where time passing is the point
(message expiry).
"""

import os
import queue
import socket
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fjord_node import NodeCase, main  # noqa: E402

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

TIMEOUT = 15


class Client:
    """A paho client with its messages in a queue."""

    def __init__(self, node, client_id, v5=False, clean=True, will=None, session_expiry=None,
                 websocket=False, keepalive=30):
        self.messages = queue.Queue()
        self.connected = queue.Queue()
        self.disconnected = queue.Queue()
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        if websocket:
            kwargs["transport"] = "websockets"
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto, **kwargs)
        if websocket:
            self.c.ws_set_options(path="/mqtt")
        if will:
            self.c.will_set(*will)
        self.c.on_message = lambda c, u, m: self.messages.put(m)
        self.c.on_connect = lambda c, u, flags, rc, props: self.connected.put((flags, rc, props))
        self.c.on_disconnect = lambda c, u, flags, rc, props: self.disconnected.put(rc)
        props = None
        if v5 and session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        port = node.ws if websocket else node.mqtt
        if v5:
            self.c.connect("127.0.0.1", port, keepalive, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive)
        self.c.loop_start()
        self.flags, self.rc, self.connack_props = self.connected.get(timeout=TIMEOUT)

    def subscribe(self, topic, qos=1, **kw):
        done = queue.Queue()
        self.c.on_subscribe = lambda *a: done.put(a)
        self.c.subscribe(topic, qos, **kw)
        done.get(timeout=TIMEOUT)

    def publish(self, topic, payload, qos=1, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(TIMEOUT)
        return info

    def take(self, n):
        return [self.messages.get(timeout=TIMEOUT) for _ in range(n)]

    def close(self, clean=True):
        if clean:
            self.c.disconnect()
        else:
            self.c.socket().close()
        self.c.loop_stop()


class Paho(NodeCase):
    def test_qos_levels_both_versions(self):
        for v5 in (False, True):
            sub = Client(self.node, f"q-sub-{v5}", v5=v5)
            sub.subscribe(f"q{int(v5)}/#", qos=2)
            pub = Client(self.node, f"q-pub-{v5}", v5=v5)
            for qos in (0, 1, 2):
                pub.publish(f"q{int(v5)}/level{qos}", f"m{qos}", qos=qos)
            got = sub.take(3)
            self.assertEqual([(m.topic, m.payload, m.qos) for m in got],
                             [(f"q{int(v5)}/level{q}", f"m{q}".encode(), q) for q in (0, 1, 2)])
            sub.close(); pub.close()

    def test_retained_set_and_clear(self):
        pub = Client(self.node, "r-pub")
        pub.publish("ret/a", "kept", retain=True)
        sub = Client(self.node, "r-sub")
        sub.subscribe("ret/+")
        m = sub.take(1)[0]
        self.assertEqual((m.topic, m.payload, m.retain), ("ret/a", b"kept", True))
        pub.publish("ret/a", "", retain=True)
        sub.take(1)  # the clearing message itself, live
        late = Client(self.node, "r-late")
        late.subscribe("ret/+")
        pub.publish("ret/marker", "after")
        self.assertEqual(late.take(1)[0].topic, "ret/marker")
        for c in (pub, sub, late):
            c.close()

    def test_will_on_abnormal_disconnect(self):
        watcher = Client(self.node, "w-watch")
        watcher.subscribe("will/#")
        doomed = Client(self.node, "w-doomed", will=("will/doomed", "bye", 1, False))
        doomed.close(clean=False)
        m = watcher.take(1)[0]
        self.assertEqual((m.topic, m.payload), ("will/doomed", b"bye"))
        watcher.close()

    def test_persistent_session_across_restart(self):
        c = Client(self.node, "p-dev", clean=False)
        c.subscribe("persist/#")
        c.close()
        pub = Client(self.node, "p-pub")
        for i in range(5):
            pub.publish("persist/x", f"p{i}")
        pub.close()
        self.node.restart()
        c = Client(self.node, "p-dev", clean=False)
        self.assertTrue(c.flags.session_present)
        self.assertEqual([m.payload for m in c.take(5)], [f"p{i}".encode() for i in range(5)])
        c.close()

    def test_shared_subscription(self):
        a = Client(self.node, "s-a", v5=True)
        b = Client(self.node, "s-b", v5=True)
        for c in (a, b):
            c.subscribe("$share/g/jobs/#")
        pub = Client(self.node, "s-pub", v5=True)
        for i in range(20):
            pub.publish("jobs/x", f"j{i}")
        seen = []
        deadline = time.time() + TIMEOUT
        while len(seen) < 20 and time.time() < deadline:
            for c in (a, b):
                try:
                    seen.append((c, c.messages.get(timeout=0.1).payload))
                except queue.Empty:
                    pass
        self.assertEqual(sorted(p for _, p in seen), sorted(f"j{i}".encode() for i in range(20)))
        self.assertTrue(any(c is a for c, _ in seen) and any(c is b for c, _ in seen))
        for c in (a, b, pub):
            c.close()

    def test_shared_subscription_keeps_messages_while_members_are_away(self):
        # The stream exists before the group forms; what was there before
        # the subscription is not the group's.
        pub = Client(self.node, "sp-pub", v5=True)
        pub.publish("sjobs/x", "before")
        a = Client(self.node, "sp-a", v5=True, clean=False, session_expiry=300)
        a.subscribe("$share/pg/sjobs/#")
        pub.publish("sjobs/x", "live")
        self.assertEqual(a.take(1)[0].payload, b"live")
        a.close()  # session kept: the group waits in the log
        for i in range(5):
            pub.publish("sjobs/x", f"away{i}")
        pub.close()
        self.node.restart()
        pub = Client(self.node, "sp-pub", v5=True)
        for i in range(5, 8):
            pub.publish("sjobs/x", f"away{i}")
        pub.close()
        a = Client(self.node, "sp-a", v5=True, clean=False, session_expiry=300)
        self.assertTrue(a.flags.session_present)
        self.assertEqual([m.payload for m in a.take(8)], [f"away{i}".encode() for i in range(8)])
        a.close()

    def test_v5_properties_topic_alias_and_expiry(self):
        sub = Client(self.node, "v5-sub", v5=True)
        sub.subscribe("props/#")
        pub = Client(self.node, "v5-pub", v5=True)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("site", "north")]
        props.ContentType = "text/plain"
        props.TopicAlias = 1
        pub.publish("props/a", "with alias", properties=props)
        alias_only = Properties(PacketTypes.PUBLISH)
        alias_only.TopicAlias = 1
        pub.publish("", "alias again", properties=alias_only)
        first, second = sub.take(2)
        self.assertEqual((first.topic, second.topic), ("props/a", "props/a"))
        self.assertEqual(first.properties.UserProperty, [("site", "north")])
        self.assertEqual(first.properties.ContentType, "text/plain")
        # Message expiry: a message that outlives its interval while the
        # subscriber's session is away is not delivered.
        away = Client(self.node, "v5-away", v5=True, clean=False, session_expiry=60)
        away.subscribe("exp/#")
        away.close()
        short = Properties(PacketTypes.PUBLISH)
        short.MessageExpiryInterval = 1
        pub.publish("exp/short", "gone", properties=short)
        pub.publish("exp/long", "kept")
        time.sleep(2.1)
        back = Client(self.node, "v5-away", v5=True, clean=False, session_expiry=60)
        self.assertEqual(back.take(1)[0].topic, "exp/long")
        for c in (sub, pub, back):
            c.close()

    def test_bad_input_closes_only_that_connection(self):
        s = socket.create_connection(("127.0.0.1", self.node.mqtt), timeout=TIMEOUT)
        connect = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 2]) + b"bx"
        s.sendall(connect + bytes([0x30, 5, 0, 3]) + b"a/#")
        data = b""
        while True:
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        s.close()
        self.assertEqual(data, bytes([0x20, 2, 0, 0]), "CONNACK, then closed")
        ok = Client(self.node, "after-bad")
        self.assertEqual(ok.rc, 0)
        ok.close()

    def test_delayed_will_survives_restart(self):
        # A persistent watcher, so nothing depends on when it reconnects.
        watcher = Client(self.node, "dw-watch", clean=False)
        watcher.subscribe("dwill/#")
        watcher.close()
        def will(topic, delay):
            props = Properties(PacketTypes.WILLMESSAGE)
            props.WillDelayInterval = delay
            return (topic, f"will of {topic}", 1, False, props)
        doomed = Client(self.node, "dw-doomed", v5=True, clean=False, session_expiry=60,
                        will=will("dwill/doomed", 2))
        back = Client(self.node, "dw-back", v5=True, clean=False, session_expiry=60,
                      will=will("dwill/back", 6))
        doomed.close(clean=False)
        back.close(clean=False)
        # Both wills are pending when the node goes down.
        self.node.restart()
        # "back" returns within its delay: its will is off, also across the
        # next restart; "doomed" does not: its will goes out after 2 s.
        back = Client(self.node, "dw-back", v5=True, clean=False, session_expiry=60)
        self.assertTrue(back.flags.session_present)
        back.close()
        self.node.restart()
        watcher = Client(self.node, "dw-watch", clean=False)
        m = watcher.take(1)[0]
        self.assertEqual((m.topic, m.payload), ("dwill/doomed", b"will of dwill/doomed"))
        time.sleep(6.5)  # past the returned client's will delay
        marker = Client(self.node, "dw-marker")
        marker.publish("dwill/marker", "end")
        self.assertEqual(watcher.take(1)[0].topic, "dwill/marker", "no will from the returned client")
        marker.close()
        watcher.close()

    def test_websocket_transport(self):
        # Both directions between a WebSocket client and a TCP client, at
        # QoS 1 and 2, in both protocol versions.
        for v5 in (False, True):
            ws = Client(self.node, f"ws-{v5}", v5=v5, websocket=True)
            tcp = Client(self.node, f"tcp-{v5}", v5=v5)
            ws.subscribe(f"wsx{int(v5)}/to-ws", qos=2)
            tcp.subscribe(f"wsx{int(v5)}/to-tcp", qos=2)
            for i in range(10):
                tcp.publish(f"wsx{int(v5)}/to-ws", f"t{i}", qos=1 + i % 2)
                ws.publish(f"wsx{int(v5)}/to-tcp", f"w{i}", qos=1 + i % 2)
            self.assertEqual([m.payload for m in ws.take(10)], [f"t{i}".encode() for i in range(10)])
            self.assertEqual([m.payload for m in tcp.take(10)], [f"w{i}".encode() for i in range(10)])
            ws.close(); tcp.close()


def raw_connect(node, client_id, v5):
    """A socket that has sent CONNECT and read its CONNACK."""
    s = socket.create_connection(("127.0.0.1", node.mqtt), timeout=TIMEOUT)
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + bytes([5 if v5 else 4, 2, 0, 30]) + (b"\x00" if v5 else b"")
    body = var + len(cid).to_bytes(2, "big") + cid
    s.sendall(bytes([0x10, len(body)]) + body)
    first = s.recv(2)
    rest = first[1] - 0
    ack = first + recv_exactly(s, rest)
    assert ack[0] == 0x20 and ack[3] == 0, ack
    return s


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_until_closed(s):
    """What the server sent before closing (a close with our bytes still
    unread arrives as a reset: closed all the same)."""
    data = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def protocol_errors(node, reason):
    text = urllib.request.urlopen(f"http://127.0.0.1:{node.http}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("fjord_protocol_errors_total{") and 'protocol="mqtt"' in line \
                and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


class PahoLimits(NodeCase):
    """Bad input against a node with small limits: each case ends only its
    own connection, with the MQTT 5 reason code, and is counted."""

    node_env = {"FJORD_MQTT__MAX_PACKET_BYTES": "4096",
                "FJORD_MQTT__CONNECT_TIMEOUT_MS": "500",
                "FJORD_MQTT__KEEP_ALIVE_MAX_S": "60"}

    def assert_still_serving(self):
        ok = Client(self.node, "still-serving", v5=True)
        ok.subscribe("alive/#")
        ok.publish("alive/x", "yes")
        self.assertEqual(ok.take(1)[0].payload, b"yes")
        ok.close()

    def test_oversize_publish_is_refused_with_packet_too_large(self):
        before = protocol_errors(self.node, "0x95")
        big = Client(self.node, "big", v5=True)
        big.c.publish("big/x", b"x" * 10_000, qos=1)
        self.assertEqual(big.disconnected.get(timeout=TIMEOUT), 0x95)
        big.c.loop_stop()
        # 3.1.1 has no reason codes: the connection just closes.
        s = raw_connect(self.node, "big-311", v5=False)
        payload = b"y" * 10_000
        body = (5).to_bytes(2, "big") + b"big/y" + payload
        rl, n = b"", len(body)
        while True:
            byte, n = n % 128, n // 128
            rl += bytes([byte | (0x80 if n else 0)])
            if not n:
                break
        s.sendall(bytes([0x30]) + rl + body)
        self.assertEqual(read_until_closed(s), b"")
        s.close()
        self.assertGreaterEqual(protocol_errors(self.node, "0x95"), before + 2)
        self.assert_still_serving()

    def test_keep_alive_beyond_the_maximum(self):
        # 5.0: the server's keep alive replaces the client's (MQTT-3.2.2-21).
        c = Client(self.node, "ka-v5", v5=True, keepalive=120)
        self.assertEqual(c.rc, 0)
        self.assertEqual(c.connack_props.ServerKeepAlive, 60)
        c.close()
        within = Client(self.node, "ka-v5-ok", v5=True, keepalive=30)
        self.assertFalse(hasattr(within.connack_props, "ServerKeepAlive"))
        within.close()
        # 3.1.1 cannot be told: refused ("identifier rejected", as Mosquitto).
        old = Client(self.node, "ka-311", keepalive=120)
        self.assertEqual(old.rc.value if hasattr(old.rc, "value") else old.rc, 0x85)
        old.c.loop_stop()
        self.assert_still_serving()

    def test_connect_that_never_finishes_is_closed(self):
        before = protocol_errors(self.node, "connect_timeout")
        s = socket.create_connection(("127.0.0.1", self.node.mqtt), timeout=TIMEOUT)
        s.sendall(bytes([0x10, 14, 0, 4]) + b"MQ")  # and nothing more
        started = time.time()
        self.assertEqual(read_until_closed(s), b"")
        self.assertLess(time.time() - started, TIMEOUT)
        s.close()
        self.assertEqual(protocol_errors(self.node, "connect_timeout"), before + 1)
        self.assert_still_serving()

    def test_invalid_utf8_topic_is_a_malformed_packet(self):
        s = raw_connect(self.node, "utf8", v5=True)
        topic = b"bad/\xff\xfe"
        body = len(topic).to_bytes(2, "big") + topic + b"\x00" + b"payload"
        s.sendall(bytes([0x30, len(body)]) + body)
        data = read_until_closed(s)
        s.close()
        # DISCONNECT (0xE0) with reason 0x81 Malformed Packet, then closed.
        self.assertEqual(data[:1], b"\xe0")
        self.assertEqual(data[2], 0x81)
        self.assert_still_serving()


if __name__ == "__main__":
    main()
