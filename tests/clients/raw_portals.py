"""Runs protocol-level masking bypass cases (tests/masking_bypass.rs) over a raw socket.

    raw_portals.py CASES_JSON

No driver lets a client Execute a portal it never bound, or Bind to a statement prepared with SQL
PREPARE, so this speaks the frontend protocol itself. Each step of a case is one line:

    Q <sql>               a simple Query; waits for its ReadyForQuery
    P <name>|<sql>        Parse
    B <portal>|<stmt>     Bind (no parameters, text results)
    D <P or S>|<name>     Describe
    E <portal>|<rows>     Execute (0: all rows)
    C <P or S>|<name>     Close
    S                     Sync, then wait for every ReadyForQuery still owed
    SS                    Sync without waiting (the next S waits for it too)

The connection comes from PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD (cleartext, as the
gateway asks). Before each case the runner sends `SELECT 'case-marker:<id>:'`. For each case it
prints one JSON line in bypass_runner.py's format: per step, the rows received (values as text)
or the first error's SQLSTATE.
"""

import json
import os
import socket
import struct
import sys


class Conn:
    def __init__(self):
        self.sock = socket.create_connection((os.environ["PGHOST"], int(os.environ["PGPORT"])), 10)
        self.buf = b""
        self.out = b""
        self.owed = 0
        params = b"user\0" + os.environ["PGUSER"].encode() + b"\0database\0" + os.environ["PGDATABASE"].encode() + b"\0\0"
        self.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        while True:
            ty, body = self.read()
            if ty == b"R":
                code = struct.unpack("!i", body[:4])[0]
                if code == 3:
                    self.send(b"p", os.environ["PGPASSWORD"].encode() + b"\0")
                    self.flush()
                elif code != 0:
                    sys.exit("unsupported authentication %d" % code)
            elif ty == b"E":
                sys.exit("login failed: %r" % body)
            elif ty == b"Z":
                return

    def read(self):
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!i", self.buf[1:5])[0]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            self.buf += chunk
        n = struct.unpack("!i", self.buf[1:5])[0]
        ty, body, self.buf = self.buf[:1], self.buf[5 : 1 + n], self.buf[1 + n :]
        return ty, body

    def send(self, ty, body):
        self.out += ty + struct.pack("!i", 4 + len(body)) + body

    def flush(self):
        self.sock.sendall(self.out)
        self.out = b""

    def wait(self):
        """Reads until every ReadyForQuery owed has come: the rows and the first error."""
        rows, error = [], None
        while self.owed > 0:
            ty, body = self.read()
            if ty == b"D":
                count = struct.unpack("!h", body[:2])[0]
                pos, row = 2, []
                for _ in range(count):
                    n = struct.unpack("!i", body[pos : pos + 4])[0]
                    pos += 4
                    if n < 0:
                        row.append("null")
                    else:
                        row.append(body[pos : pos + n].decode("latin-1"))
                        pos += n
                rows.append(row)
            elif ty == b"E" and error is None:
                fields = dict((f[:1], f[1:].decode("utf-8", "replace")) for f in body.split(b"\0") if f)
                error = {"ok": False, "sqlstate": fields.get(b"C", ""), "message": fields.get(b"M", "")}
            elif ty == b"Z":
                self.owed -= 1
        return error or {"ok": True, "rows": rows}

    def step(self, line):
        op, _, arg = line.partition(" ")
        parts = arg.split("|", 1)
        if op == "Q":
            self.send(b"Q", arg.encode() + b"\0")
            self.flush()
            self.owed += 1
            return self.wait()
        if op == "P":
            self.send(b"P", parts[0].encode() + b"\0" + parts[1].encode() + b"\0" + struct.pack("!h", 0))
        elif op == "B":
            self.send(
                b"B",
                parts[0].encode() + b"\0" + parts[1].encode() + b"\0" + struct.pack("!hhh", 0, 0, 0),
            )
        elif op == "D":
            self.send(b"D", parts[0].encode() + parts[1].encode() + b"\0")
        elif op == "E":
            self.send(b"E", parts[0].encode() + b"\0" + struct.pack("!i", int(parts[1])))
        elif op == "C":
            self.send(b"C", parts[0].encode() + parts[1].encode() + b"\0")
        elif op in ("S", "SS"):
            self.send(b"S", b"")
            self.flush()
            self.owed += 1
            if op == "S":
                return self.wait()
        else:
            sys.exit("unknown step %r" % line)
        return {"ok": True, "rows": []}


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    conn = Conn()
    for case in cases:
        result = {"id": case["id"], "steps": []}
        marker = conn.step("Q SELECT 'case-marker:%s:'" % case["id"])
        if not marker.get("ok"):
            result["marker_error"] = marker.get("message", "")
        for step in case["steps"]:
            result["steps"].append(conn.step(step["sql"]))
        print(json.dumps(result), flush=True)
    end = conn.step("Q SELECT 'case-marker:end:'")
    if not end.get("ok"):
        sys.exit("the session was unusable at the end: %r" % end)
    conn.send(b"X", b"")
    conn.flush()


if __name__ == "__main__":
    main()
