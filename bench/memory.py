#!/usr/bin/env python3
"""Resident memory of a `portcullis` process over many sessions.

Starts the given binary with a small configuration (JWT login, one target, a policy) on a free
loopback port in front of PostgreSQL on 127.0.0.1:5432, and drives it with psycopg 3: each round
is 50 logins at once and 50 one after another (ten statements each), garbage instead of a
startup packet, a bad token, a 100 KB password message, an 8 MiB statement and an 8 MiB row.
Prints VmRSS after start, after a warm-up round, and after three more rounds (300 sessions).

    target/test-venv/bin/python bench/memory.py target/release/portcullis
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psycopg

CONFIG = """
[gateway]
node = "memory-bench"
log_level = "warn"
[postgres]
listen = "127.0.0.1:{port}"
[identity.jwt]
issuer = "bench"
audience = ["portcullis"]
algorithms = ["HS256"]
hs256_secret_file = "secret"
[[targets]]
name = "postgres"
host = "127.0.0.1"
port = 5432
user = "postgres"
[policy]
[[policy.access]]
name = "everyone"
groups = ["*"]
mode = "read-write"
[[policy.rules]]
name = "no-drop"
action = "deny"
kinds = ["drop"]
message = "no"
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/portcullis")
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "secret"), "w") as f:
            f.write(os.urandom(32).hex())
        with open(os.path.join(d, "portcullis.toml"), "w") as f:
            f.write(CONFIG.format(port=port))
        token = subprocess.run(
            [binary, "token", "mint", "--key", os.path.join(d, "secret"), "--iss", "bench",
             "--aud", "portcullis", "--sub", "alice", "--ttl", "1h"],
            check=True, capture_output=True, text=True).stdout.strip()
        dsn = f"host=127.0.0.1 port={port} dbname=postgres user=alice"
        gateway = subprocess.Popen([binary, "run", "--config", os.path.join(d, "portcullis.toml")])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)

            def session(i):
                with psycopg.connect(dsn, password=token) as c:
                    for j in range(10):
                        c.execute("select %s::int + %s", (i, j)).fetchone()
                        c.execute(f"select {i * 100 + j} as v, 'x{j}'").fetchone()

            def malformed_and_large():
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(b"GET / HTTP/1.1\r\n\r\n")
                s.recv(100)
                s.close()
                for password in ("not-a-token", "p" * 100_000):
                    try:
                        psycopg.connect(dsn, password=password).close()
                    except psycopg.Error:
                        pass
                with psycopg.connect(dsn, password=token) as c:
                    c.execute("select length(%s)", ("x" * (8 << 20),)).fetchone()
                    c.execute("select repeat('r', 8 * 1024 * 1024)").fetchone()

            def one_round():
                threads = [threading.Thread(target=session, args=(i,)) for i in range(50)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for i in range(50):
                    session(i)
                malformed_and_large()

            print(f"VmRSS after start: {rss_mib(gateway.pid):.1f} MiB")
            one_round()
            time.sleep(2)
            print(f"VmRSS after a warm-up round: {rss_mib(gateway.pid):.1f} MiB")
            for _ in range(3):
                one_round()
            time.sleep(3)
            print(f"VmRSS after 3 more rounds (300 sessions): {rss_mib(gateway.pid):.1f} MiB")
        finally:
            gateway.terminate()
            gateway.wait()


if __name__ == "__main__":
    main()
