"""SQL interoperability over the PostgreSQL wire protocol: psycopg 3
(extended protocol: server-side parameters, prepared statements) and psql
(simple protocol, errors with positions), against a real node.

Run:  python3 -m pip install -r interop/sql/requirements.txt
      cargo build -p fjord && python3 interop/sql/test_sql.py [path/to/fjord]
"""

import json
import os
import subprocess
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from fjord_node import NodeCase, main  # noqa: E402

import psycopg

READINGS = 50


def http(node, method, path, body=None, auth=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{node.http}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"})
    if auth:
        import base64
        req.add_header("authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


class SqlTest(NodeCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.node.create_stream("plant1", 1)
        records = [{"key": f"dev-{i % 5}", "value": json.dumps({"temp": i / 2})}
                   for i in range(READINGS)]
        assert http(cls.node, "POST", "/v1/streams/public/default/plant1/records",
                    {"records": records}) == 200

    def connect(self, **kw):
        args = {"host": "127.0.0.1", "port": self.node.pg, "dbname": "public", "user": "analyst"}
        args.update(kw)
        return psycopg.connect(**args, autocommit=True)

    def test_psycopg_parameters_are_bound_by_the_server(self):
        with self.connect() as c:
            rows = c.execute(
                "SELECT _key, count(*) AS n FROM plant1 WHERE _offset >= %s AND _key <> %s "
                "GROUP BY _key ORDER BY _key", (10, "dev-4")).fetchall()
        expect = [(f"dev-{k}", sum(1 for i in range(10, READINGS) if i % 5 == k)) for k in range(4)]
        self.assertEqual(rows, expect)

    def test_psycopg_prepared_statement_reused(self):
        with self.connect() as c:
            for bound in (3, 20, 100):
                n = c.execute("SELECT count(*) FROM plant1 WHERE _offset < %s", (bound,),
                              prepare=True).fetchone()[0]
                self.assertEqual(n, min(bound, READINGS))

    def test_psycopg_json_values_and_types(self):
        with self.connect() as c:
            row = c.execute("SELECT avg(json_get_float(value, 'temp')), max(_offset), "
                            "min(_publish_ts) FROM plant1").fetchone()
        self.assertAlmostEqual(row[0], sum(i / 2 for i in range(READINGS)) / READINGS)
        self.assertEqual(row[1], READINGS - 1)
        self.assertIsNotNone(row[2].tzinfo)

    def test_psql_simple_protocol(self):
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.node.pg), "-U", "analyst", "-d", "public",
             "-At", "-c", "SELECT count(*) FROM plant1"],
            capture_output=True, text=True, timeout=30, env=dict(os.environ, PGCONNECT_TIMEOUT="10"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), str(READINGS))

    def test_psql_errors_say_where(self):
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.node.pg), "-U", "analyst", "-d", "public",
             "-At", "-c", "SELECT count(*) FROM plant1 WHERE nope > 1"],
            capture_output=True, text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("ERROR", out.stderr)
        self.assertIn("nope", out.stderr)

    def psql(self, *args):
        return subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.node.pg), "-U", "analyst", "-d", "public",
             *args],
            capture_output=True, text=True, timeout=30, env=dict(os.environ, PGCONNECT_TIMEOUT="10"))

    def test_psql_lists_and_describes_streams(self):
        out = self.psql("-c", "\\dt")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("plant1", out.stdout)
        out = self.psql("-c", "\\d plant1")
        self.assertEqual(out.returncode, 0, out.stderr)
        for column in ("_offset", "_publish_ts", "value"):
            self.assertIn(column, out.stdout)

    def test_continuous_query_from_psycopg_and_its_alerts(self):
        self.node.create_stream("boiler", 1)
        with self.connect() as c:
            c.execute("CREATE STREAM boiler_hot AS SELECT _key, value FROM boiler "
                      "WHERE json_get_float(value, 'temp') > 90")
            cur = c.execute("SHOW QUERIES")
            name = [d.name for d in cur.description].index("name")
            names = [r[name] for r in cur.fetchall()]
            self.assertIn("default.boiler_hot", names)
            records = [{"key": f"b-{i}", "value": json.dumps({"temp": 80 + i * 5})}
                       for i in range(5)]
            self.assertEqual(http(self.node, "POST", "/v1/streams/public/default/boiler/records",
                                  {"records": records}), 200)
            import time
            deadline = time.time() + 20
            rows = []
            while time.time() < deadline:
                rows = c.execute("SELECT _key FROM boiler_hot ORDER BY _key").fetchall()
                if len(rows) >= 2:
                    break
                time.sleep(0.1)
            self.assertEqual(rows, [("b-3",), ("b-4",)])
            c.execute("DROP STREAM boiler_hot")
            with self.assertRaises(psycopg.errors.UndefinedTable):
                c.execute("SELECT * FROM boiler_hot")

    def test_psycopg_push_query_cancelled_by_the_client(self):
        import threading
        import time
        self.node.create_stream("feed", 1)
        got = []
        errors = []
        with self.connect() as c:
            def reader():
                try:
                    with c.cursor() as cur:
                        for row in cur.stream(
                                "SELECT _key, json_get_float(value, 'temp') AS temp FROM feed "
                                "WHERE json_get_float(value, 'temp') > 30 EMIT CHANGES"):
                            if row[0] == "probe":
                                started.set()
                            else:
                                got.append(row)
                except psycopg.errors.QueryCanceled as e:
                    errors.append(e)
            started = threading.Event()
            t = threading.Thread(target=reader)
            t.start()
            # The query sees what is published once it runs: probes until
            # one comes back.
            deadline = time.time() + 20
            while not started.is_set():
                self.assertLess(time.time(), deadline, "the push query never started")
                self.assertEqual(http(self.node, "POST", "/v1/streams/public/default/feed/records",
                                      {"records": [{"key": "probe", "value": "{\"temp\": 99}"}]}), 200)
                started.wait(0.2)
            records = [{"key": f"s-{i}", "value": json.dumps({"temp": 25 + i * 3})}
                       for i in range(6)]
            self.assertEqual(http(self.node, "POST", "/v1/streams/public/default/feed/records",
                                  {"records": records}), 200)
            deadline = time.time() + 20
            while len(got) < 3 and time.time() < deadline:
                time.sleep(0.05)
            c.cancel()
            t.join(20)
            self.assertFalse(t.is_alive(), "the cancel ended the push query")
            # The hot readings, in order, as they came (the last may or may
            # not have arrived before the cancel).
            self.assertGreaterEqual(len(got), 3)
            self.assertEqual(got, [("s-2", 31.0), ("s-3", 34.0), ("s-4", 37.0),
                                   ("s-5", 40.0)][:len(got)])
            self.assertEqual(len(errors), 1, "ended by the cancel, as QueryCanceled")
            # The connection goes on.
            self.assertEqual(c.execute(
                "SELECT count(*) FROM feed WHERE _key <> 'probe'").fetchone()[0], 6)

    def test_tenant_user_with_password(self):
        admin = None
        self.assertEqual(http(self.node, "POST", "/v1/tenants", {"name": "acme"}, admin), 201)
        self.assertEqual(http(self.node, "PUT", "/v1/tenants/acme/users/dash",
                              {"password": "dash-password"}, admin), 200)
        # libpq refuses to go on unless the server asks for SCRAM-SHA-256
        # (the password never crosses the wire).
        with self.connect(dbname="acme", user="dash", password="dash-password",
                          require_auth="scram-sha-256") as c:
            self.assertEqual(c.execute("SELECT 1::BIGINT").fetchone()[0], 1)
        with self.assertRaises(psycopg.OperationalError) as e:
            self.connect(dbname="acme", user="dash", password="wrong")
        self.assertIn("password authentication failed", str(e.exception))


if __name__ == "__main__":
    main()
