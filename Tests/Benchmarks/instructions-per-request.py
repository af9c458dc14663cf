#!/usr/bin/env python3
"""Instructions the responder executes per request, counted by callgrind: repeatable to a few
tenths of a percent whatever else the machine is doing, so it compares two builds (or /api/chat
with /api/chatkit) where timing runs on a shared machine differ by 5%.

Starts the stack of harness.py (mock model without pauses, nginx) with chatkit-fcgi under
`valgrind --tool=callgrind`, sends --warmup requests (every thread opens its SQLite and model
connections), zeroes the counters, sends --requests requests one after another through nginx,
dumps the counters and prints instructions per request, then the functions that take the most
(inclusive, per request) when --top is given.

With --process mock-model it counts the mock model instead, as bench.py's direct path uses it:
the body the responder sends the model (taken from the mock's log after one request through
nginx), posted straight to the mock under callgrind.

    swift build -c release
    python3 Tests/Benchmarks/instructions-per-request.py [--path chat|chatkit] [--build-dir DIR]
        [--process chatkit-fcgi|mock-model] [--requests 100] [--warmup 10] [--top 30] [--save FILE]

The request is the one bench.py sends: a new conversation (or ChatKit thread) whose answer is
20 streamed words. Needs valgrind (Debian: valgrind).
"""

import argparse
import glob
import http.client
import json
import os
import re
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402  (path set up above)

MAX_REQUESTS = 4


def request_body(path, words):
    prompt = " ".join(f"t{i}" for i in range(1, words - 1))
    if path == "chatkit":
        return "/api/chatkit", {"type": "threads.create", "params": {"input": {
            "content": [{"type": "input_text", "text": prompt}], "attachments": [], "inference_options": {}}}}
    return "/api/chat", {"messages": [{"role": "user", "content": prompt}], "conversation_id": None}


def send(port, url, body, token):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", url, body, {"Authorization": f"Bearer {token}",
                                           "Content-Type": "application/json"})
    reply = connection.getresponse()
    data = reply.read()
    connection.close()
    complete = data.endswith(b"data: [DONE]\n\n") or data.endswith(b'"has_more":false}}}\n\n')  # chat, chatkit
    if reply.status != 200 or not complete or b'"type":"error"' in data or b'data: {"error"' in data:
        raise RuntimeError(f"request failed: HTTP {reply.status}: {data[:300]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", choices=["chat", "chatkit"], default="chat")
    parser.add_argument("--build-dir", default=os.path.join(harness.REPO, ".build", "release"))
    parser.add_argument("--process", choices=["chatkit-fcgi", "mock-model"], default="chatkit-fcgi")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--words", type=int, default=20)
    parser.add_argument("--top", type=int, default=0, help="also print the N costliest functions")
    parser.add_argument("--save", help="copy callgrind's dump here, for callgrind_annotate")
    args = parser.parse_args()

    stack = harness.Stack(max_requests=MAX_REQUESTS, build_dir=args.build_dir)
    try:
        out = os.path.join(stack.dir, "callgrind.out")
        callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no"]
        port = stack.http_port
        url, payload = request_body(args.path, args.words)
        body = json.dumps(payload).encode()
        token = harness.hs256_token("bench", ttl=24 * 3600)
        if args.process == "mock-model":
            send(port, url, body, token)
            port, url, token = stack.model_port, "/v1/chat/completions", harness.MODEL_KEY
            body = json.dumps(stack.model_requests()[-1], separators=(",", ":")).encode()
            stack.mock.stop()
            stack.processes.remove(stack.mock)
            measured = stack.mock = stack.start_mock(wrapper=callgrind)
            harness.wait_until(lambda: harness.port_open(port), timeout=60, what="mock model under valgrind")
        else:
            stack.responder.stop()
            stack.processes.remove(stack.responder)
            measured = stack.responder = stack.start_responder(argv=callgrind + [
                stack.binary, "serve", "--socket", stack.socket, "--max-requests", str(MAX_REQUESTS)])
            harness.wait_until(lambda: os.path.exists(stack.socket), timeout=60, what="responder under valgrind")
        for _ in range(args.warmup):
            send(port, url, body, token)
        pid = measured.popen.pid
        subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
        for _ in range(args.requests):
            send(port, url, body, token)
        subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        if not dumps:
            raise RuntimeError("callgrind wrote no dump")
        if args.save:
            shutil.copyfile(dumps[-1], args.save)
        annotate = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", dumps[-1]],
                                  check=True, capture_output=True, text=True).stdout
        total = next(int(line.split()[0].replace(",", "")) for line in annotate.splitlines()
                     if line.strip().endswith("PROGRAM TOTALS"))
        print(f"{args.process}, /{url.strip('/')}: {total / args.requests:,.0f} instructions per request "
              f"({args.requests} requests, {args.build_dir})")
        if args.top:
            # "  1,234 (12.34%)  file:function [object]": a function's inclusive cost
            rows = [(count, place.split(" [")[0].split(":", 1)[-1])
                    for count, place in re.findall(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", annotate, re.MULTILINE)
                    if place != "PROGRAM TOTALS"][:args.top]
            names = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(
                name for _, name in rows), capture_output=True, text=True).stdout
            for (count, _), name in zip(rows, names.splitlines()):
                print(f"{int(count.replace(',', '')) / args.requests:12,.0f}  {name[:160]}")
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
