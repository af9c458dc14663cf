#!/usr/bin/env python3
"""A long run at steady load: does anything grow or break with time?

Starts the stack of harness.py (release build, nginx, the mock model pausing --delay-ms between
chunks, SQLite or PostgreSQL) and keeps --streams requests in flight for --minutes, mixing the
three faces: chat turns (plain answers and tool turns), ChatKit threads, MCP tool calls. Every
20th request asks the model for a fault (an HTTP 500, which the retries cannot cure, or an
error record mid-stream) and every 25th client walks away mid-answer. Every 10 s it samples the
responder's RSS, open descriptors and threads, and the database's size (and SQLite's WAL).

Reports: requests by outcome (anything but the faults' documented answers is an error), and
whether RSS and descriptors stayed flat after the first minute (the mean of the last third of
the samples within 5% of the first third's) and the WAL bounded. Exit status 0 when there were no errors and nothing grew.

    swift build -c release
    .build/test-venv/bin/python Tests/Benchmarks/soak.py [--minutes 10] [--streams 256] [--database sqlite|postgres]
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402


class Counts(dict):
    def __missing__(self, key):
        return 0


def sample(stack):
    pid = stack.responder.popen.pid
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    figures = {"rss_mib": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
               "fds": len(os.listdir(f"/proc/{pid}/fd"))}
    if stack.database_url.startswith("sqlite://"):
        path = stack.database_url[len("sqlite://"):]
        figures["db_mib"] = os.path.getsize(path) / 2**20
        figures["wal_mib"] = os.path.getsize(path + "-wal") / 2**20 if os.path.exists(path + "-wal") else 0.0
    else:
        with stack.db() as db:
            figures["db_mib"] = db.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20
    return figures


async def one_request(http, number, outcomes):
    user = f"soak-{number % 500}"
    headers = {"Authorization": f"Bearer {harness.hs256_token(user, ttl=7200)}"}
    fault = number % 20 == 0
    walk_away = number % 25 == 0
    kind = number % 4
    try:
        if fault:
            text = "fail 500" if number % 40 == 0 else "midstream error"
            response = await http.post("/api/chat", headers=headers, json={"messages": [{"role": "user", "content": text}]})
            ok = (response.status_code == 502) if text == "fail 500" else \
                (response.status_code == 200 and '"code":"upstream_error"' in response.text)
            outcomes["fault answered as documented" if ok else "error: fault answered otherwise"] += 1
        elif kind == 3:
            response = await http.post("/api/mcp", headers=headers, json={
                "jsonrpc": "2.0", "id": number, "method": "tools/call",
                "params": {"name": "list_tasks", "arguments": {"status": "pending"}}})
            outcomes["ok" if response.status_code == 200 and not response.json()["result"]["isError"] else "error: mcp"] += 1
        else:
            if kind == 2:
                path, body = "/api/chatkit", {"type": "threads.create", "params": {"input": {
                    "content": [{"type": "input_text", "text": f"add soak task {number}"}], "attachments": [],
                    "inference_options": {}}}}
            else:
                text = f"add soak task {number}" if kind == 1 else " ".join(f"w{i}" for i in range(20))
                path, body = "/api/chat", {"messages": [{"role": "user", "content": text}]}
            async with http.stream("POST", path, headers=headers, json=body) as response:
                received = b""
                async for piece in response.aiter_bytes():
                    received += piece
                    if walk_away and len(received) > 200:
                        break
            if walk_away:
                outcomes["client walked away"] += 1
            elif response.status_code == 200 and (b"[DONE]" in received or b'"thread.updated"' in received):
                outcomes["ok"] += 1
            else:
                outcomes[f"error: {path} {response.status_code}"] += 1
    except httpx.HTTPError as error:
        outcomes[f"error: {type(error).__name__}"] += 1


async def drive(stack, args, deadline, outcomes):
    limits = httpx.Limits(max_connections=args.streams + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=stack.base_url, timeout=60, limits=limits) as http:
        counter = iter(range(1, 10**9))

        async def slot():
            while time.monotonic() < deadline:
                await one_request(http, next(counter), outcomes)

        await asyncio.gather(*(slot() for _ in range(args.streams)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--streams", type=int, default=256)
    parser.add_argument("--delay-ms", type=int, default=10)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--build-dir", default=os.path.join(HERE, "..", "..", ".build", "release"))
    args = parser.parse_args()

    stack = harness.Stack(max_requests=max(300, args.streams + 16), mock_delay_ms=args.delay_ms, build_dir=args.build_dir,
                          database=args.database)
    outcomes = Counts()
    samples = []
    try:
        started = time.monotonic()
        deadline = started + args.minutes * 60

        async def run():
            load = asyncio.create_task(drive(stack, args, deadline, outcomes))
            while not load.done():
                samples.append((time.monotonic() - started, sample(stack)))
                print(f"{samples[-1][0]:6.0f} s  {samples[-1][1]}  requests so far {sum(outcomes.values())}", flush=True)
                await asyncio.wait([load], timeout=10)
            await load

        asyncio.run(run())
        samples.append((time.monotonic() - started, sample(stack)))
        alive = stack.responder.alive()
    finally:
        stack.stop()

    print()
    total = sum(outcomes.values())
    errors = sum(count for outcome, count in outcomes.items() if outcome.startswith("error"))
    print(f"{total} requests in {args.minutes:g} min at {args.streams} streams ({args.database}):")
    for outcome, count in sorted(outcomes.items(), key=lambda item: -item[1]):
        print(f"  {count:8d}  {outcome}")
    # After the first minute, the last third of the samples against the first: growth, not the
    # swing of the connections in flight from one sample to the next.
    steady = [figures for at, figures in samples[:-1] if at >= 60] or [samples[-1][1]]
    third = max(1, len(steady) // 3)
    growth = {}
    for name in ("rss_mib", "fds"):
        values = [figures[name] for figures in steady]
        early, late = statistics.mean(values[:third]), statistics.mean(values[-third:])
        growth[name] = (late - early) / early if early else 0.0
        print(f"  {name}: {min(values):.1f} to {max(values):.1f} after the first minute; the last third's mean "
              f"{late:.1f} against the first third's {early:.1f} ({growth[name] * 100:+.1f}%)")
    if "wal_mib" in steady[0]:
        print(f"  WAL: at most {max(figures['wal_mib'] for figures in steady):.1f} MiB; "
              f"database {steady[-1]['db_mib']:.1f} MiB at the end")
    else:
        print(f"  database {steady[-1]['db_mib']:.1f} MiB at the end")
    flat = all(value <= 0.05 for value in growth.values())
    print(f"soak: {'PASS' if errors == 0 and flat and alive else 'FAIL'} (errors {errors}, flat {flat}, responder alive {alive})")
    return 0 if errors == 0 and flat and alive else 1


if __name__ == "__main__":
    sys.exit(main())
