"""Runs the masking bypass cases (tests/masking_bypass.rs) through one Python driver.

    bypass_runner.py MODE CASES_JSON

MODE is `psycopg-text` (extended protocol with named prepared statements, text results),
`psycopg-binary` (extended protocol, unnamed statements, binary results) or `asyncpg` (extended
protocol, binary results, values decoded by type). psycopg sends a text-format query without
parameters in the simple protocol, so the text mode prepares every statement (`prepare=True`).
The connection comes from the libpq environment (PGHOST, PGPORT, PGDATABASE, PGUSER,
PGPASSWORD). Before each case the runner selects `'case-marker:<id>:'`, so that the recording
relay in front of the gateway can attribute every byte it saw to a case. For each case it prints
one JSON line: the case id and, per step, either the rows (each value as `type:text`) or the
error's SQLSTATE and message. A case whose marker fails (the session became unusable) says so.
"""

import asyncio
import datetime
import decimal
import json
import os
import sys


def show(value):
    """One value as `type:text`, bytes as hex and as Latin-1 (so every byte can be scanned)."""
    if value is None:
        return "null"
    kind = type(value).__name__
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return "bytes:" + raw.hex() + ":" + raw.decode("latin-1")
    if isinstance(value, (dict, list)):
        return kind + ":" + json.dumps(value, default=str)
    return kind + ":" + str(value)


def error_of(e):
    code = getattr(e, "sqlstate", None)
    if code is None:
        code = getattr(e, "pgcode", None)
    return {"ok": False, "sqlstate": code or "", "message": str(e)}


def psycopg_main(mode, cases):
    import psycopg

    binary = mode == "psycopg-binary"
    conninfo = psycopg.conninfo.make_conninfo(sslmode="disable")

    def connect():
        return psycopg.connect(conninfo, autocommit=True)

    conn = connect()
    for case in cases:
        result = {"id": case["id"], "steps": []}
        try:
            conn.execute("SELECT 'case-marker:%s:'" % case["id"]).fetchone()
        except Exception as e:  # noqa: BLE001 - any failure means the session is unusable
            result["marker_error"] = str(e)
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass
            conn = connect()
            conn.execute("SELECT 'case-marker:%s:'" % case["id"]).fetchone()
        for step in case["steps"]:
            try:
                rows = []
                if case.get("portal_rows"):
                    # A server-side cursor: DECLARE, then FETCH FORWARD n until empty.
                    with conn.transaction():
                        with conn.cursor(name="bypass_portal", binary=binary) as cur:
                            cur.itersize = case["portal_rows"]
                            cur.execute(step["sql"])
                            while True:
                                part = cur.fetchmany(case["portal_rows"])
                                if not part:
                                    break
                                rows.extend(part)
                else:
                    with conn.cursor(binary=binary) as cur:
                        cur.execute(step["sql"], prepare=not binary)
                        while True:
                            if cur.description is not None:
                                rows.extend(cur.fetchall())
                            if not cur.nextset():
                                break
                result["steps"].append(
                    {"ok": True, "rows": [[show(v) for v in r] for r in rows]}
                )
            except psycopg.Error as e:
                result["steps"].append(error_of(e))
        print(json.dumps(result), flush=True)
    conn.execute("SELECT 'case-marker:end:'").fetchone()
    conn.close()


async def asyncpg_main(cases):
    import asyncpg

    async def connect():
        conn = await asyncpg.connect(ssl=False, statement_cache_size=0)
        # asyncpg switches JIT off around its type introspection with set_config(), which the
        # gateway's session fence refuses (for every identity, masked or not); the suite wants
        # the introspection itself, so asyncpg is told the server has no JIT.
        conn._server_caps = conn._server_caps._replace(jit=False)
        return conn

    conn = await connect()
    for case in cases:
        result = {"id": case["id"], "steps": []}
        try:
            await conn.fetch("SELECT 'case-marker:%s:'" % case["id"])
        except Exception as e:  # noqa: BLE001
            result["marker_error"] = str(e)
            try:
                await conn.close()
            except Exception:  # noqa: BLE001
                pass
            conn = await connect()
            await conn.fetch("SELECT 'case-marker:%s:'" % case["id"])
        for step in case["steps"]:
            try:
                if case.get("portal_rows"):
                    # A portal run in pieces: Bind once, Execute with a row limit until done.
                    rows = []
                    async with conn.transaction():
                        cur = await conn.cursor(step["sql"])
                        while True:
                            part = await cur.fetch(case["portal_rows"])
                            if not part:
                                break
                            rows.extend(part)
                else:
                    rows = await conn.fetch(step["sql"])
                result["steps"].append(
                    {"ok": True, "rows": [[show(v) for v in r.values()] for r in rows]}
                )
            except asyncpg.PostgresError as e:
                result["steps"].append(error_of(e))
            except Exception as e:  # noqa: BLE001 - a value that does not decode by its type
                result["steps"].append(
                    {"ok": False, "sqlstate": "client", "message": "%s: %s" % (type(e).__name__, e)}
                )
        print(json.dumps(result), flush=True)
    await conn.fetch("SELECT 'case-marker:end:'")
    await conn.close()


def main():
    mode, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        cases = json.load(f)
    if mode in ("psycopg-text", "psycopg-binary"):
        psycopg_main(mode, cases)
    elif mode == "asyncpg":
        asyncio.run(asyncpg_main(cases))
    else:
        sys.exit("unknown mode %r" % mode)


if __name__ == "__main__":
    main()
