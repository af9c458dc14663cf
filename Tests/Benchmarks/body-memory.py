#!/usr/bin/env python3
"""How much one JSON body raises the responder's peak memory (VmHWM), through the real nginx.

Starts the stack of harness.py (2 requests at once), sends one small /api/chat request so the
responder has opened everything it keeps, reads VmHWM, posts the body under test, and reads VmHWM again.
The default body is 1 MB of `[0],` inside `messages`: the most JSON values a megabyte can
hold, each one a node of the parsed tree. Each run starts a fresh responder.

    python3 Tests/Benchmarks/body-memory.py [--build-dir .build/release] [--count 250000]
"""

import argparse
import os
import re
import sys

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402  (path set up above)


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", default=harness.BUILD_DIR)
    parser.add_argument("--count", type=int, default=250_000, help="number of [0] elements (default 250000)")
    args = parser.parse_args()

    stack = harness.Stack(max_requests=2, build_dir=os.path.abspath(args.build_dir))
    try:
        headers = {"Authorization": f"Bearer {harness.hs256_token('body-memory')}", "Content-Type": "application/json"}
        warm = httpx.post(f"{stack.base_url}/api/chat", headers=headers, timeout=30,
                          json={"messages": [{"role": "user", "content": "hi"}]})
        assert warm.status_code == 200, warm.text
        pid = stack.responder.popen.pid
        before = peak_kib(pid)
        body = b'{"messages":[' + b",".join([b"[0]"] * args.count) + b"]}"
        reply = httpx.post(f"{stack.base_url}/api/chat", content=body, headers=headers, timeout=30)
        after = peak_kib(pid)
        print(f"body {len(body):,} bytes: HTTP {reply.status_code} {reply.text.strip()}")
        print(f"responder VmHWM {before:,} KiB before, {after:,} KiB after: +{after - before:,} KiB")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
