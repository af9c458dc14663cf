#!/usr/bin/env python3
"""What one open stream holds in the responder's heap, by allocation site.

Starts the stack of harness.py with the responder under valgrind's massif, sends STREAMS
concurrent /api/chat requests (or /api/chatkit threads.create) whose answers stream 60 chunks
50 ms apart (twice), and prints the heap at massif's peak by top-level allocation site, divided
by STREAMS. What the process holds whatever its load (SQLite's schema and cache, libgnutls'
tables) is in the figures too: it is the part that does not grow with STREAMS. Then the tasks'
async frames (Swift's task allocator) by the function that called into the frame: an async
function's frame holds every value it keeps across an await, for as long as the stream lasts.

    .build/test-venv/bin/python Tests/Benchmarks/stream-memory.py [--build-dir .build/release] [--streams 50]
        [--path chat|chatkit]

Needs valgrind (ms_print comes with it).
"""

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402  (path set up above)


def stream_all(stack, streams, path):
    token = harness.hs256_token("memory")
    prompt = " ".join(f"t{i}" for i in range(1, 59))
    if path == "chatkit":
        url, body = "/api/chatkit", json.dumps({"type": "threads.create", "params": {"input": {
            "content": [{"type": "input_text", "text": prompt}], "attachments": [], "inference_options": {}}}})
    else:
        url, body = "/api/chat", json.dumps({"messages": [{"role": "user", "content": prompt}]})

    def one():
        connection = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=300)
        connection.request("POST", url, body=body,
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
    """(total bytes, [(bytes, site)] of the peak snapshot's top-level entries, [(bytes, caller)]
    of its task allocator entry)."""
    text = subprocess.run(["ms_print", massif_out], capture_output=True, text=True, check=True).stdout
    peak = int(re.search(r"Detailed snapshots: \[.*?(\d+) \(peak\)", text).group(1))
    start = re.search(rf"^\s+{peak}\s+[\d,]+\s+([\d,]+)", text, re.M)
    total = int(start.group(1).replace(",", ""))
    sites, frames, in_task_allocator = [], [], False
    for line in text[start.end():].splitlines()[1:]:
        if re.match(r"^\s+\d+\s+[\d,]+\s+[\d,]+", line):
            break  # the next snapshot
        entry = re.match(r"^->\d+\.\d+% \(([\d,]+)B\) (.*)", line)
        if entry:
            sites.append((int(entry.group(1).replace(",", "")), entry.group(2)))
            in_task_allocator = "StackAllocator" in entry.group(2)
        caller = re.match(r"^\| ->\d+\.\d+% \(([\d,]+)B\) (?:0x[0-9A-F]+: )?(\S+)", line)
        if caller and in_task_allocator:
            frames.append((int(caller.group(1).replace(",", "")), caller.group(2)))
    return total, sites, frames


def demangled(names):
    """Swift symbols readable, when the toolchain's demangler is at hand."""
    try:
        result = subprocess.run(["swift", "demangle", "--simplified", "--compact"], input="\n".join(names),
                                capture_output=True, text=True, check=True)
        return result.stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return names


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", default=os.path.join(harness.REPO, ".build", "release"))
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--path", choices=["chat", "chatkit"], default="chat")
    args = parser.parse_args()
    massif_dir = tempfile.mkdtemp(prefix="chatkit-massif-")
    massif_out = os.path.join(massif_dir, "massif.out")
    stack = harness.Stack(max_requests=args.streams + 8, mock_delay_ms=50, build_dir=os.path.abspath(args.build_dir))
    try:
        stack.responder.stop()
        stack.processes.remove(stack.responder)
        stack.responder = stack.start_responder(argv=[
            "valgrind", "--tool=massif", "--threshold=0.5", "--max-snapshots=60", f"--massif-out-file={massif_out}",
            stack.binary, "serve", "--socket", stack.socket, "--max-requests", str(args.streams + 8)])
        harness.wait_until(lambda: os.path.exists(stack.socket), timeout=60, what="the responder under massif")
        for _ in range(2):
            stream_all(stack, args.streams, args.path)
    finally:
        stack.stop()  # massif writes its file as the responder exits
    try:
        total, sites, frames = peak_sites(massif_out)
    finally:
        shutil.rmtree(massif_dir, ignore_errors=True)
    print(f"heap at the peak: {total / 1024:.0f} KiB; per stream ({args.streams}): {total / 1024 / args.streams:.1f} KiB")
    for size, site in sites:
        print(f"{size / 1024 / args.streams:8.1f} KiB per stream  {site[:110]}")
    print("task frames (the task allocator's slabs), by the function that called into the frame:")
    for (size, _), name in zip(frames, demangled([name for _, name in frames])):
        print(f"{size / args.streams:8.0f} B per stream  {name[:140]}")


if __name__ == "__main__":
    main()
