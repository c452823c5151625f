"""A real Fjord node for the interop suites: started on free localhost
ports over a temporary data directory, readiness awaited with a deadline,
stopped with SIGTERM (a clean exit is asserted)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

# The fjord binary; set by main() from the command line.
BIN = None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, data_dir, env=None):
        self.data_dir = data_dir
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.start()

    def start(self):
        for _ in range(5):
            self.http, self.mqtt, self.ws, self.kafka, self.pg = (free_port() for _ in range(5))
            self.env["FJORD_SQL__PG_ADDR"] = f"127.0.0.1:{self.pg}"
            self.proc = subprocess.Popen(
                [BIN, "serve", "--data-dir", self.data_dir,
                 "--http-addr", f"127.0.0.1:{self.http}",
                 "--mqtt-addr", f"127.0.0.1:{self.mqtt}",
                 "--mqtt-ws-addr", f"127.0.0.1:{self.ws}",
                 "--kafka-addr", f"127.0.0.1:{self.kafka}", "--log-level", "warn"],
                env=self.env)
            deadline = time.time() + 30
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=2).status == 200:
                        return
                except OSError:
                    time.sleep(0.02)
        raise RuntimeError("fjord did not start")

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.kafka}"

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0

    def restart(self):
        self.stop()
        self.start()

    def create_stream(self, name, partitions):
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}/v1/streams/public/default",
            data=json.dumps({"name": name, "partitions": partitions}).encode(),
            headers={"content-type": "application/json"}, method="POST")
        assert urllib.request.urlopen(req, timeout=10).status == 201


class NodeCase(unittest.TestCase):
    """One node per test class, started with `node_env` set."""

    node_env = None

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp()
        cls.node = Node(cls.dir, env=cls.node_env)

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
        shutil.rmtree(cls.dir)


def main():
    """Runs the calling suite: `suite.py [path/to/fjord] [unittest args]`."""
    global BIN
    target = os.environ.get("CARGO_TARGET_DIR",
                            os.path.join(os.path.dirname(__file__), "..", "target"))
    BIN = sys.argv.pop(1) if len(sys.argv) > 1 else os.path.join(target, "debug", "fjord")
    unittest.main(module="__main__", verbosity=2)
