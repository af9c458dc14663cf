#!/usr/bin/env python3
"""What one turn costs the PostgreSQL server: its CPU time per request and the transactions
(each one pipelined round trip) per request, for the requests bench.py sends.

Starts the stack of harness.py on a PostgreSQL server of its own (the mock model without pauses,
nginx, chatkit-fcgi with a pool of ONE connection, so one server backend serves every request),
sends --warmup requests, then --requests requests one after another, and reads that backend's
CPU time from /proc before and after. One client, one backend, nothing concurrent: repeatable
to a few percent, so it compares two builds where bench.py's timing on a shared machine cannot.

    swift build -c release
    python3 Tests/Benchmarks/postgres-cost.py [--build-dir DIR] [--path chat|chatkit] [--requests 500]

Needs Debian's postgresql and the test virtualenv's psycopg (.build/test-venv/bin/python). The
server runs with fsync and synchronous_commit off: the figures are CPU, not durability.
"""

import argparse
import json
import os
import sys

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402
import postgres  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def backend(server, database):
    with server.connect() as admin:
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'chatkit-fcgi'",
                             (database,)).fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]


def transactions(server, database, pid):
    """Ends the backend, which publishes its counts when it exits, and reads them."""
    with server.connect() as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        admin.execute("SELECT pg_stat_clear_snapshot()")
        return admin.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                             (database,)).fetchone()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(HERE, "..", "..", ".build", "release"))
    parser.add_argument("--path", choices=["chat", "chatkit"], default="chat")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    server = postgres.PostgresServer()
    stack = None
    try:
        database = server.create_database()
        stack = harness.Stack(max_requests=4, build_dir=args.build_dir, database="postgres",
                              extra_env={"DATABASE_URL": server.url(database), "CHATKIT_DB_POOL_SIZE": "1"})
        prompt = " ".join(f"t{i}" for i in range(1, 19))
        if args.path == "chatkit":
            path, body = "/api/chatkit", {"type": "threads.create", "params": {"input": {
                "content": [{"type": "input_text", "text": prompt}], "attachments": [], "inference_options": {}}}}
        else:
            path, body = "/api/chat", {"messages": [{"role": "user", "content": prompt}], "conversation_id": None}
        headers = {"Authorization": f"Bearer {harness.hs256_token('cost', ttl=3600)}"}
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            def send(count):
                for _ in range(count):
                    response = http.post(path, headers=headers, json=body)
                    assert response.status_code == 200 and response.text.rstrip().endswith(
                        "[DONE]" if args.path == "chat" else "}"), response.text[-200:]
            send(args.warmup)
            pid = backend(server, database)
            before = transactions(server, database, pid)
            send(1)  # opens the pool's new connection: not counted below
            pid = backend(server, database)
            started = cpu_seconds(pid)
            send(args.requests)
            used = cpu_seconds(pid) - started
            after = transactions(server, database, pid)
        print(f"PostgreSQL server, /api/{args.path}: {used * 1000 / args.requests:.3f} ms of CPU per request, "
              f"{(after - before) / (args.requests + 1):.2f} transactions (round trips) per request "
              f"({args.requests} requests, {args.build_dir})")
    finally:
        if stack:
            stack.stop()
        server.destroy()


if __name__ == "__main__":
    main()
