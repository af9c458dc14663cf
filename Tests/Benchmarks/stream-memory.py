#!/usr/bin/env python3
"""What one open stream holds in the responder's heap, by allocation site.

Starts the stack of harness.py with the responder under valgrind's massif, sends STREAMS
concurrent /api/chat requests whose answers stream 60 chunks 50 ms apart (twice), and prints
the heap at massif's peak by top-level allocation site, divided by STREAMS. What the process
holds whatever its load (SQLite's schema and cache, libgnutls' tables) is in the figures too:
it is the part that does not grow with STREAMS.

    .build/test-venv/bin/python Tests/Benchmarks/stream-memory.py [--build-dir .build/release] [--streams 50]

Needs valgrind (ms_print comes with it).
"""

import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402  (path set up above)


def stream_all(stack, streams):
    token = harness.hs256_token("memory")
    body = json.dumps({"messages": [{"role": "user", "content": " ".join(f"t{i}" for i in range(1, 59))}]})

    def one():
        connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=300)
        connection.request("POST", "/api/chat", body=body,
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        reply = connection.getresponse()
        reply.read()
        connection.close()
        if reply.status != 200:
            raise RuntimeError(f"HTTP {reply.status}")

    threads = [threading.Thread(target=one) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def peak_sites(massif_out):
    """(total bytes, [(bytes, site)]) of the peak snapshot's top-level entries."""
    text = subprocess.run(["ms_print", massif_out], capture_output=True, text=True, check=True).stdout
    peak = int(re.search(r"Detailed snapshots: \[.*?(\d+) \(peak\)", text).group(1))
    start = re.search(rf"^\s+{peak}\s+[\d,]+\s+([\d,]+)", text, re.M)
    total = int(start.group(1).replace(",", ""))
    sites = []
    for line in text[start.end():].splitlines()[1:]:
        if re.match(r"^\s+\d+\s+[\d,]+\s+[\d,]+", line):
            break  # the next snapshot
        entry = re.match(r"^->\d+\.\d+% \(([\d,]+)B\) (.*)", line)
        if entry:
            sites.append((int(entry.group(1).replace(",", "")), entry.group(2)))
    return total, sites


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(harness.REPO, ".build", "release"))
    parser.add_argument("--streams", type=int, default=50)
    args = parser.parse_args()
    massif_out = os.path.join(tempfile.mkdtemp(prefix="chatkit-massif-"), "massif.out")
    stack = harness.Stack(max_requests=args.streams + 8, mock_delay_ms=50, build_dir=os.path.abspath(args.build_dir))
    try:
        stack.responder.stop()
        stack.processes.remove(stack.responder)
        stack.responder = stack.start_responder(argv=[
            "valgrind", "--tool=massif", "--threshold=0.5", "--max-snapshots=60", f"--massif-out-file={massif_out}",
            stack.binary, "serve", "--socket", stack.socket, "--max-requests", str(args.streams + 8)])
        harness.wait_until(lambda: os.path.exists(stack.socket), timeout=60, what="the responder under massif")
        for _ in range(2):
            stream_all(stack, args.streams)
    finally:
        stack.stop()
    total, sites = peak_sites(massif_out)
    print(f"heap at the peak: {total / 1024:.0f} KiB; per stream ({args.streams}): {total / 1024 / args.streams:.1f} KiB")
    for size, site in sites:
        print(f"{size / 1024 / args.streams:8.1f} KiB per stream  {site[:110]}")


if __name__ == "__main__":
    main()
