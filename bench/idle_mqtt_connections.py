"""Memory per idle MQTT connection: opens N MQTT 3.1.1 connections (CONNECT,
wait for CONNACK, then nothing) to a running node and reports the node's RSS
growth per connection.

    python3 bench/idle_mqtt_connections.py <node pid> <mqtt port> [N=2000]

Keep N under the per-process open-files limit of both processes.
"""

import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    pid, port = sys.argv[1], int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    before = rss_kib(pid)
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        cid = f"idle-{i:06d}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        s.sendall(bytes([0x10, len(body)]) + body)
        socks.append(s)
    for s in socks:
        if s.recv(4) != b"\x20\x02\x00\x00":
            raise RuntimeError("connection refused")
    time.sleep(1)
    after = rss_kib(pid)
    print(f"{n} idle connections: RSS {before} KiB -> {after} KiB, {(after - before) * 1024 / n:.0f} bytes each")


if __name__ == "__main__":
    main()
