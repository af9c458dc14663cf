#!/usr/bin/env python3
"""What nginx + chatkit-fcgi add to a streamed model answer, measured against the model itself.

The benchmark starts the real stack on loopback through Tests/IntegrationTests/harness.py
(the mock model with a fixed pause between chunks -> chatkit-fcgi, release build, serving
>= 300 requests at once -> nginx) and sends the SAME streaming chat request two ways:

  direct  POST http://127.0.0.1:<model_port>/v1/chat/completions, with the exact JSON body the
          responder itself sends the model (captured from the mock's request log after a probe
          through nginx: model, stream, stream_options.include_usage, system + user messages,
          tools) and the mock's API key;
  nginx   POST http://127.0.0.1:<http_port>/api/chat with an HS256 Bearer token: JWT check,
          new conversation + user message in SQLite, the libcurl call to the same mock, every
          chunk relayed as SSE over FastCGI and nginx, the answer stored at the end.

Before the first level, 2 x max-requests requests through nginx at 64 streams warm the
responder (its worker threads, SQLite readers and model connections, all opened on first use;
--no-prewarm shows that cold cost).

The prompt makes the mock answer "You said: t1 ... tN" (default 20 words, one chunk per word,
one record every MOCK_DELAY_MS, default 10 ms, on a fixed schedule from the first: a busy machine
does not slow the model down), so both paths wait for exactly the same model.
At each concurrency level (default 1, 32, 256) each path gets a warm-up, then every stream slot
runs the same number of requests back to back, each on a fresh connection (HTTP/1.1,
`Connection: close`, chunked decoding), from bench-client, the package's load generator: one
thread on epoll, so the client's cost is small and identical on both paths (it shares the two
cores with the nginx path's processes; at 256 streams it needs about 0.11 ms of CPU per request,
the Python client it replaced about 0.3). The slots start spread over one request's duration:
every request takes the same time, so slots started together would stay in step and send their
requests in bursts of `concurrency` for the whole level (--burst measures that).

Per request: TTFT = time from writing the request to the arrival of the first SSE record whose
choices[0].delta.content is non-empty (ChatKit: the first text delta); total = until the server
closed the stream (after the first content the client waits for the close alone and then reads
the rest at once: two wake-ups per stream, not one per record); an error is a non-200 status, a
stream without its last chunk or its final record (`data: [DONE]`), a different number of
records than the probe showed (one request through http.client first), an in-band error record,
a timeout or a failed connection.

Per level: direct and nginx TTFT p50/p99, the ADDED latency (nginx minus direct, per
percentile), throughput (completed streams/s, summed over the slots' own rates) of both and
their ratio, errors, responder CPU seconds per request (utime+stime from /proc/<pid>/stat
around the nginx phase), its minor page faults and context switches per request (where its
kernel time goes), responder VmRSS/VmHWM after the level, plus CPU per request of nginx, the
mock and the client itself and how busy the machine was (the machine is shared by all four).

Targets (reported as PASS/FAIL, they do not change the exit status):
  added TTFT p50 <= 1 ms and p99 <= 3 ms at 32 streams;
  nginx throughput >= 0.97 x direct at 256 streams, with 0 errors.

Run from the repository root (needs nginx on PATH):

    swift build -c release && python3 Tests/Benchmarks/bench.py [--path chatkit]

    options: --build-dir DIR (with chatkit-fcgi, mock-model and bench-client; default
             .build/release), --max-requests 300, --delay-ms 10, --words 20,
             --concurrency 1,32,256, --duration 10 (s per path per level), --requests N (per
             slot, overrides --duration), --min-samples 100, --warmup 2 (s), --burst, --no-prewarm,
             --env NAME=VALUE (for chatkit-fcgi), --json PATH

Exit status: 0 when every request succeeded, 1 when any request failed (warm-ups included),
2 when the harness itself failed (build missing, a process did not start or died, the first
probe request failed, ...). Missed targets do not fail it.
"""

import argparse
import http.client
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "IntegrationTests"))

import harness  # noqa: E402  (path set up above)

perf_counter = time.perf_counter
CLK_TCK = os.sysconf("SC_CLK_TCK")
REQUEST_TIMEOUT = 60.0


# --------------------------------------------------------------------------- client


class Target:
    """Where one path sends its request: the port and the exact request, and what its stream ends with."""

    def __init__(self, name, port, path, headers, body, expected_records=None, last_record=b"data: [DONE]\n\n"):
        self.name = name
        self.port = port
        self.path = path
        self.headers = [("Content-Type", "application/json"), ("Accept", "text/event-stream")] + headers
        self.body = body
        self.last_record = last_record
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        self.request = head.encode() + b"\r\n" + body
        self.expected_records = expected_records


def probe(target):
    """One request through http.client (not the load client, which needs the record count this
    learns); returns its body, or raises with the reason."""
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("POST", target.path, body=target.body, headers=dict(target.headers))
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    if reply.status != 200 or not body.endswith(target.last_record) or b'"type":"error"' in body:
        raise RuntimeError(f"probe through {target.name} failed: HTTP {reply.status}: {body[:300]!r}")
    return body


def run_phase(client, target, concurrency, per_slot=None, seconds=None, stagger_s=0.0):
    """`concurrency` slots in the load client, each running requests back to back: `per_slot` of
    them, or for `seconds` (warm-up). Slot i starts i/concurrency of `stagger_s` late, so the
    slots' requests are spread over time rather than sent in bursts (see --burst).

    Throughput is the sum of each slot's own rate (its completed requests over its own running
    time): a late start does not count as slowness."""
    settings = {"port": target.port, "request": target.request.decode(), "concurrency": concurrency,
                "requests_per_slot": per_slot or 100_000, "seconds": seconds, "stagger_s": stagger_s,
                "expected_records": target.expected_records, "last_record": target.last_record.decode(),
                "timeout_s": REQUEST_TIMEOUT}
    started = perf_counter()
    run = subprocess.run([client], input=json.dumps(settings).encode(), capture_output=True, check=False)
    wall = perf_counter() - started
    if run.returncode != 0:
        raise RuntimeError(f"bench-client exited with {run.returncode}: {run.stderr.decode()[-500:]}")
    ttft, total, connect, errors, slot_rates = [], [], [], {}, []
    for line in run.stdout.decode().splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "ok":
            first, whole, conn = (int(value) / 1e9 for value in rest.split())
            ttft.append(first)
            total.append(whole)
            connect.append(conn)
        elif kind == "error":
            errors[rest] = errors.get(rest, 0) + 1
        elif kind == "slot":
            slot_rates.append(float(rest))
    return {"ttft": ttft, "total": total, "connect": connect, "errors": errors, "wall": wall,
            "throughput": sum(slot_rates)}


# --------------------------------------------------------------------------- /proc readings


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def kernel_events(pid):
    """Minor page faults (whole process) and context switches (summed over its threads): where
    the kernel's share of the responder's CPU goes, counted rather than timed."""
    events = {"minor_faults": 0, "context_switches": 0}
    try:
        with open(f"/proc/{pid}/stat") as stat:
            events["minor_faults"] = int(stat.read().rsplit(")", 1)[1].split()[7])
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/status") as status:
                for line in status:
                    if "ctxt_switches:" in line:
                        events["context_switches"] += int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return events


def memory_kib(pid):
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0])
    except OSError:
        pass
    return values


def thread_count(pid):
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the responder's VmRSS and its open streams (the `chatkit_inflight_streams`
    gauge, read from /metrics through nginx) every `interval` s while a phase runs, and keeps
    the peak of each: the memory the open streams hold at most, and how many they were. (RSS
    does not fall back when streams end: freed memory stays in the allocator.)"""

    def __init__(self, pid, metrics_url, interval=0.1):
        super().__init__(daemon=True)
        self.pid, self.metrics_url, self.interval = pid, metrics_url, interval
        self.peak_rss_kib, self.peak_streams = 0, 0
        self.finished = threading.Event()

    def run(self):
        while not self.finished.wait(self.interval):
            self.peak_rss_kib = max(self.peak_rss_kib, memory_kib(self.pid).get("VmRSS", 0))
            self.peak_streams = max(self.peak_streams, self.open_streams())

    def open_streams(self):
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
                for line in reply.read().decode().splitlines():
                    if line.startswith("chatkit_inflight_streams"):
                        return int(float(line.rsplit(" ", 1)[1]))
        except (OSError, ValueError):
            pass
        return 0

    def stop(self):
        self.finished.set()
        self.join()


def children_of(pid):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def machine_busy():
    """(busy jiffies, total jiffies) of all CPUs."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


class CPUSnapshot:
    """`pids` maps a name to its processes: a list, or a function that lists them now."""

    def __init__(self, pids):
        self.pids = pids
        self.values = {name: sum(cpu_seconds(pid) for pid in (group() if callable(group) else group))
                       for name, group in pids.items()}
        self.values["client"] = sum(os.times()[:4])  # ours and the load clients', once reaped
        self.machine = machine_busy()

    def since(self, earlier):
        used = {name: self.values[name] - earlier.values[name] for name in self.values}
        busy = self.machine[0] - earlier.machine[0]
        total = self.machine[1] - earlier.machine[1]
        ours = sum(used.values()) * CLK_TCK
        used["machine_busy_fraction"] = busy / total if total else 0.0
        # CPU used by anything outside the benchmark (another build, say): it skews the numbers.
        used["other_busy_fraction"] = max(0.0, busy - ours) / total if total else 0.0
        return used


# --------------------------------------------------------------------------- statistics and output


def percentile(samples, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(phase):
    completed = len(phase["ttft"])
    ms = lambda values, p: percentile(values, p) * 1000  # noqa: E731
    return {
        "requests": completed + sum(phase["errors"].values()),
        "completed": completed,
        "errors": sum(phase["errors"].values()),
        "error_kinds": phase["errors"],
        "wall_s": phase["wall"],
        "throughput_per_s": phase["throughput"],
        "ttft_ms": {f"p{p}": ms(phase["ttft"], p) for p in (50, 90, 99)} | {
            "min": min(phase["ttft"], default=float("nan")) * 1000,
            "max": max(phase["ttft"], default=float("nan")) * 1000},
        "total_ms": {f"p{p}": ms(phase["total"], p) for p in (50, 90, 99)},
        "connect_ms": {f"p{p}": ms(phase["connect"], p) for p in (50, 99)},
    }


def fmt(value, digits=2):
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def verdict(ok):
    return "PASS" if ok else "FAIL"


def markdown(results, args):
    lines = []
    lines.append(f"Path /api/{args.path}. Mock delay {args.delay_ms} ms/chunk, {args.words}-word answer ({args.words} content chunks), "
                 f"responder serving {args.max_requests} requests at once{' (warmed first)' if args.prewarm else ''}, "
                 f"fresh connection per request, native client (bench-client), "
                 f"{'slots started together (--burst)' if args.burst else 'slot starts spread over one request'}, "
                 f"{os.cpu_count()} CPUs shared by client, nginx, responder and mock.")
    lines.append("")
    lines.append("| streams | requests/path | direct TTFT p50 / p99 (ms) | nginx TTFT p50 / p99 (ms) "
                 "| **added p50 / p99 (ms)** | direct streams/s | nginx streams/s | nginx/direct | errors d / n |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in results:
        d, n, a = level["direct"], level["nginx"], level["added_ms"]
        lines.append(
            f"| {level['concurrency']} | {n['requests']} "
            f"| {fmt(d['ttft_ms']['p50'])} / {fmt(d['ttft_ms']['p99'])} "
            f"| {fmt(n['ttft_ms']['p50'])} / {fmt(n['ttft_ms']['p99'])} "
            f"| **{fmt(a['ttft_p50'])} / {fmt(a['ttft_p99'])}** "
            f"| {fmt(d['throughput_per_s'], 1)} | {fmt(n['throughput_per_s'], 1)} "
            f"| {fmt(level['throughput_ratio'], 3)} | {d['errors']} / {n['errors']} |")
    lines.append("")
    lines.append("| streams | total p50 / p99 direct (ms) | total p50 / p99 nginx (ms) | responder CPU ms/req "
                 "| nginx CPU ms/req | mock CPU ms/req (d / n) | client CPU ms/req (d / n) | machine busy (d / n) "
                 "| responder RSS / HWM (MiB) |")
    lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for level in results:
        d, n, c = level["direct"], level["nginx"], level["cpu_ms_per_request"]
        lines.append(
            f"| {level['concurrency']} "
            f"| {fmt(d['total_ms']['p50'], 1)} / {fmt(d['total_ms']['p99'], 1)} "
            f"| {fmt(n['total_ms']['p50'], 1)} / {fmt(n['total_ms']['p99'], 1)} "
            f"| {fmt(c['nginx']['responder'])} | {fmt(c['nginx']['nginx'])} "
            f"| {fmt(c['direct']['mock'])} / {fmt(c['nginx']['mock'])} "
            f"| {fmt(c['direct']['client'])} / {fmt(c['nginx']['client'])} "
            f"| {level['machine_busy']['direct'] * 100:.0f}% / {level['machine_busy']['nginx'] * 100:.0f}% "
            f"| {fmt(level['responder_memory_kib'].get('VmRSS', 0) / 1024, 1)} / "
            f"{fmt(level['responder_memory_kib'].get('VmHWM', 0) / 1024, 1)} |")
    lines.append("")
    lines.append("| streams | responder idle / peak RSS (MiB) | peak open streams | **KiB per open stream** "
                 "| chunks relayed / req | **responder CPU µs per chunk** |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for level in results:
        peak = level["responder_peak"]
        lines.append(f"| {level['concurrency']} | {fmt(peak['idle_rss_kib'] / 1024, 1)} / {fmt(peak['peak_rss_kib'] / 1024, 1)} "
                     f"| {peak['open_streams']} | **{fmt(peak['kib_per_stream'], 1)}** | {level['chunks_per_request']} "
                     f"| **{fmt(level['responder_cpu_us_per_chunk'], 1)}** |")
    lines.append("")
    lines.append("| streams | responder minor page faults / req | responder context switches / req |")
    lines.append("|---:|---:|---:|")
    for level in results:
        events = level["responder_events_per_request"]
        lines.append(f"| {level['concurrency']} | {fmt(events['minor_faults'], 1)} | {fmt(events['context_switches'], 1)} |")
    if "postgres_transactions_per_request" in results[0]:
        lines.append("")
        lines.append("| streams | PostgreSQL server CPU ms/req (nginx phase) | transactions = round trips / req |")
        lines.append("|---:|---:|---:|")
        for level in results:
            lines.append(f"| {level['concurrency']} | {fmt(level['cpu_ms_per_request']['nginx']['postgres'])} "
                         f"| {fmt(level['postgres_transactions_per_request'], 2)} |")
    return "\n".join(lines)


def side_by_side(runs):
    """One line per store and level: what the store changes."""
    lines = ["| store | streams | added TTFT p50 / p99 (ms) | nginx/direct | responder CPU ms/req | database CPU ms/req "
             "| transactions / req | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for kind, results in runs.items():
        for level in results:
            a, c = level["added_ms"], level["cpu_ms_per_request"]["nginx"]
            lines.append(f"| {kind} | {level['concurrency']} | {fmt(a['ttft_p50'])} / {fmt(a['ttft_p99'])} "
                         f"| {fmt(level['throughput_ratio'], 3)} | {fmt(c['responder'])} "
                         f"| {fmt(c['postgres']) if 'postgres' in c else 'in the responder'} "
                         f"| {fmt(level['postgres_transactions_per_request'], 2) if 'postgres' in c else '-'} "
                         f"| {level['direct']['errors'] + level['nginx']['errors']} |")
    return "\n".join(lines)


# Per store: added TTFT p50 and p99 at 32 streams (ms), throughput against direct at 256. The
# PostgreSQL server shares the machine's two cores with everything else.
TARGETS = {"sqlite": (1.0, 3.0, 0.97), "postgres": (2.0, 5.0, 0.95)}


def check_targets(results, kind="sqlite"):
    p50, p99, ratio = TARGETS[kind]
    by_level = {level["concurrency"]: level for level in results}
    targets = []
    if 32 in by_level:
        a = by_level[32]["added_ms"]
        targets.append({"target": f"{kind}: added TTFT p50 <= {p50:g} ms at 32 streams", "value_ms": a["ttft_p50"],
                        "pass": a["ttft_p50"] <= p50})
        targets.append({"target": f"{kind}: added TTFT p99 <= {p99:g} ms at 32 streams", "value_ms": a["ttft_p99"],
                        "pass": a["ttft_p99"] <= p99})
    if 256 in by_level:
        level = by_level[256]
        errors = level["direct"]["errors"] + level["nginx"]["errors"]
        targets.append({"target": f"{kind}: nginx throughput >= {ratio:g} x direct at 256 streams, 0 errors",
                        "ratio": level["throughput_ratio"], "errors": errors,
                        "pass": level["throughput_ratio"] >= ratio and errors == 0})
    return targets


# --------------------------------------------------------------------------- main


# Named settings for one question each; any option given on the command line wins.
PROFILES = {
    # Many long answers at once, as a few thousand people chatting: 60 chunks 50 ms apart
    # (3 s per answer), from a cold responder.
    "2000": {"max_requests": 2100, "concurrency": "2000", "delay_ms": 50, "words": 60, "duration": 15.0, "prewarm": False},
    # Slow answers held open: a chunk a second for 30 s, each stream's one request measured.
    "10000-slow": {"max_requests": 10240, "concurrency": "10000", "delay_ms": 1000, "words": 30, "requests": 1,
                   "warmup": 0.0, "prewarm": False},
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="settings for one question: 2000 = 2,000 streams of 60 chunks 50 ms apart, "
                             f"{PROFILES['2000']['max_requests']} requests at once, no prewarm; 10000-slow = "
                             "10,000 streams of a chunk a second for 30 s")
    parser.add_argument("--build-dir", default=os.path.join(REPO, ".build", "release"),
                        help="directory with chatkit-fcgi, mock-model and bench-client (default: <repo>/.build/release)")
    parser.add_argument("--max-requests", type=int, default=300,
                        help="requests the responder serves at once, CHATKIT_MAX_REQUESTS (default 300)")
    parser.add_argument("--delay-ms", type=int, default=10, help="MOCK_DELAY_MS, pause between chunks (default 10)")
    parser.add_argument("--words", type=int, default=20, help="words (content chunks) in the answer (default 20, >= 3)")
    parser.add_argument("--concurrency", default="1,32,256", help="comma-separated stream counts (default 1,32,256)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="target seconds per path per level; sets requests per slot (default 10)")
    parser.add_argument("--requests", type=int, help="requests per stream slot (overrides --duration)")
    parser.add_argument("--min-samples", type=int, default=100,
                        help="at least this many requests per path per level (default 100)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per path per level (default 2)")
    parser.add_argument("--burst", action="store_true",
                        help="start every stream slot at once instead of spreading the starts over one "
                             "request's duration; the mock's fixed timing then keeps the slots' requests "
                             "arriving in bursts of `concurrency` for the whole level")
    parser.add_argument("--no-prewarm", dest="prewarm", action="store_false",
                        help="skip the initial 2 x max-requests requests that warm the responder")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for chatkit-fcgi, e.g. CHATKIT_HISTORY_LIMIT=20 (repeatable)")
    parser.add_argument("--path", choices=["chat", "chatkit"], default="chat",
                        help="the face to measure: /api/chat records, or /api/chatkit threads.create where TTFT "
                             "is the first text_delta (default chat)")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="sqlite",
                        help="the responder's store: SQLite, a PostgreSQL server started on this machine, or one "
                             "run on each, reported side by side (default sqlite)")
    parser.add_argument("--json", help="also write the results as JSON to this path")
    chosen, _ = parser.parse_known_args()
    if chosen.profile:
        parser.set_defaults(**PROFILES[chosen.profile])
    args = parser.parse_args()
    args.levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.words < 3 or not args.levels or min(args.levels) < 1 or args.delay_ms < 0:
        parser.error("--words must be >= 3, --concurrency positive integers, --delay-ms >= 0")
    if args.max_requests < max(args.levels):
        parser.error("--max-requests must be at least the largest concurrency level")
    if any("=" not in item for item in args.env):
        parser.error("--env takes NAME=VALUE")
    args.env = dict(item.split("=", 1) for item in args.env)
    return args


def raise_fd_limit(needed=65536):
    """For this process and the stack it starts: each stream is a descriptor in the client and
    two in the responder and in nginx. Root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def mock_call(stack, method, path):
    request = urllib.request.Request(f"http://127.0.0.1:{stack.model_port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=10) as reply:
        body = reply.read()
    return json.loads(body) if body else None


def benchmark(stack, args):
    client = os.path.join(args.build_dir, "bench-client")
    idle_rss_kib = memory_kib(stack.responder.popen.pid).get("VmRSS", 0)  # started, nothing served yet
    prompt = " ".join(f"t{i}" for i in range(1, args.words - 1))  # "You said: " + words-2 more words
    token = harness.hs256_token("bench", ttl=24 * 3600)
    if args.path == "chatkit":
        # A new ChatKit thread per request: the stream ends with thread.updated (the title).
        body = json.dumps({"type": "threads.create", "params": {"input": {
            "content": [{"type": "input_text", "text": prompt}], "attachments": [], "inference_options": {}}}}).encode()
        nginx = Target("nginx", stack.http_port, "/api/chatkit", [("Authorization", f"Bearer {token}")], body,
                       last_record=b'"has_more":false}}}\n\n')
    else:
        body = json.dumps({"messages": [{"role": "user", "content": prompt}], "conversation_id": None}).encode()
        nginx = Target("nginx", stack.http_port, "/api/chat", [("Authorization", f"Bearer {token}")], body)

    # Probe through nginx, then take the exact body the responder sent the model for the direct path.
    nginx_body = probe(nginx)
    sent = mock_call(stack, "GET", "/_mock/requests")[-1]
    mock_call(stack, "DELETE", "/_mock/requests")  # the mock keeps every body; keep its memory flat
    direct = Target("direct", stack.model_port, "/v1/chat/completions",
                    [("Authorization", f"Bearer {harness.MODEL_KEY}")],
                    json.dumps(sent, separators=(",", ":")).encode())
    direct_body = probe(direct)
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in direct_body.decode().split("\n\n")
                   if line.startswith("data: {") and json.loads(line[6:])["choices"])
    if text != f"You said: {prompt}":
        raise RuntimeError(f"unexpected mock answer: {text!r}")
    direct.expected_records = direct_body.count(b"data: ")
    nginx.expected_records = nginx_body.count(b"data: ")
    print(f"probe ok: answer {len(text.split())} words; records per stream: direct {direct.expected_records}, "
          f"nginx {nginx.expected_records}; direct body {len(direct.request)} bytes", flush=True)

    responder_pid = stack.responder.popen.pid
    nginx_pids = [stack.nginx.popen.pid] + children_of(stack.nginx.popen.pid)
    pids = {"responder": [responder_pid], "nginx": nginx_pids, "mock": [stack.mock.popen.pid]}
    database = PostgresCounters(stack) if stack.database_kind == "postgres" else None
    if database:
        pids["postgres"] = database.server_pids

    prewarm = None
    if args.prewarm:
        # Worker threads, SQLite readers and keep-alive model connections are opened on first
        # use; without this the first requests (all of a 1-stream level) pay for that.
        width = min(64, args.max_requests)
        phase = run_phase(client, nginx, width, per_slot=math.ceil(2 * args.max_requests / width))
        prewarm = {"requests": len(phase["ttft"]) + sum(phase["errors"].values()), "concurrency": width,
                   "errors": sum(phase["errors"].values())}
        print(f"prewarm: {prewarm['requests']} requests through nginx at {width} streams, "
              f"errors {prewarm['errors']}", flush=True)
        mock_call(stack, "DELETE", "/_mock/requests")

    results = []
    for concurrency in args.levels:
        level = {"concurrency": concurrency}
        # Warm-up, both paths (opens the responder's model connections too); --warmup 0: none.
        warm = {}
        for target in (direct, nginx):
            warm[target.name] = (run_phase(client, target, concurrency, seconds=args.warmup) if args.warmup > 0
                                 else {"total": [], "errors": {}})
        mean_total = (sum(warm["direct"]["total"]) / len(warm["direct"]["total"])
                      if warm["direct"]["total"] else (args.words + 3) * args.delay_ms / 1000)
        if args.requests:
            per_slot = args.requests
        else:
            per_slot = max(math.ceil(args.duration / max(mean_total, 1e-3)),
                           math.ceil(args.min_samples / concurrency), 1)
        level["requests_per_slot"] = per_slot
        level["warmup_errors"] = {name: sum(phase["errors"].values()) for name, phase in warm.items()}
        if any(level["warmup_errors"].values()):
            print(f"  {concurrency:>4} streams warm-up errors: "
                  + ", ".join(f"{name} {phase['errors']}" for name, phase in warm.items()), flush=True)

        cpu = {}
        busy = {}
        other = {}
        for target in (direct, nginx):
            mock_call(stack, "DELETE", "/_mock/requests")
            if database and target is nginx:
                transactions_before = database.transactions()
            before = CPUSnapshot(pids)
            events_before = kernel_events(responder_pid)
            if target is nginx:
                peak = PeakMemory(responder_pid, f"{stack.base_url}/metrics")
                peak.start()
            phase = run_phase(client, target, concurrency, per_slot=per_slot,
                                    stagger_s=0.0 if args.burst else mean_total)
            used = CPUSnapshot(pids).since(before)
            if target is nginx:
                peak.stop()
            events_after = kernel_events(responder_pid)
            summary = summarize(phase)
            summary["mock_stats"] = mock_call(stack, "GET", "/_mock/stats")
            level[target.name] = summary
            requests = max(summary["requests"], 1)
            busy[target.name] = used.pop("machine_busy_fraction")
            other[target.name] = used.pop("other_busy_fraction")
            if other[target.name] > 0.10:
                print(f"  warning: {other[target.name] * 100:.0f}% of the machine was busy with other processes "
                      f"during the {target.name} phase", flush=True)
            cpu[target.name] = {name: seconds * 1000 / requests for name, seconds in used.items()}
            if target is nginx:
                level["responder_events_per_request"] = {
                    name: (events_after[name] - events_before[name]) / requests for name in events_after}
                if database:
                    # Each transaction is one pipelined round trip: the counts are the same.
                    level["postgres_transactions_per_request"] = (database.transactions() - transactions_before) / requests
            print(f"  {concurrency:>4} streams {target.name:>6}: {summary['requests']} requests, "
                  f"TTFT p50 {summary['ttft_ms']['p50']:.2f} ms p99 {summary['ttft_ms']['p99']:.2f} ms, "
                  f"{summary['throughput_per_s']:.1f} streams/s, errors {summary['errors']}"
                  + (f" {summary['error_kinds']}" if summary["errors"] else ""), flush=True)
        level["cpu_ms_per_request"] = cpu
        level["responder_cpu_s_per_request"] = cpu["nginx"]["responder"] / 1000
        level["machine_busy"] = busy
        level["other_busy"] = other
        level["responder_memory_kib"] = memory_kib(responder_pid)
        level["responder_peak"] = {
            "idle_rss_kib": idle_rss_kib, "peak_rss_kib": peak.peak_rss_kib, "open_streams": peak.peak_streams,
            "kib_per_stream": ((peak.peak_rss_kib - idle_rss_kib) / peak.peak_streams
                               if peak.peak_streams else float("nan"))}
        # The model's records relayed per answer ([DONE] aside): the responder's CPU per chunk,
        # everything it does for the request included.
        level["chunks_per_request"] = direct.expected_records - 1
        level["responder_cpu_us_per_chunk"] = cpu["nginx"]["responder"] * 1000 / level["chunks_per_request"]
        level["responder_threads"] = thread_count(responder_pid)
        d, n = level["direct"], level["nginx"]
        level["added_ms"] = {
            "ttft_p50": n["ttft_ms"]["p50"] - d["ttft_ms"]["p50"],
            "ttft_p99": n["ttft_ms"]["p99"] - d["ttft_ms"]["p99"],
            "total_p50": n["total_ms"]["p50"] - d["total_ms"]["p50"],
            "total_p99": n["total_ms"]["p99"] - d["total_ms"]["p99"],
        }
        level["throughput_ratio"] = (n["throughput_per_s"] / d["throughput_per_s"]) if d["throughput_per_s"] else 0.0
        if prewarm is not None:
            level["prewarm"] = prewarm
        results.append(level)
    return results


class PostgresCounters:
    """The PostgreSQL server's side of a run: its processes' CPU, and the transactions the
    responder committed or rolled back in its database."""

    def __init__(self, stack):
        import postgres
        self.server = postgres.shared()
        self.database = stack.database_url.rsplit("/", 1)[1]
        with self.server.connect() as admin:
            data = admin.execute("SHOW data_directory").fetchone()[0]
        with open(os.path.join(data, "postmaster.pid")) as pid_file:
            self.postmaster = int(pid_file.readline())

    def server_pids(self):
        return [self.postmaster] + children_of(self.postmaster)

    def transactions(self):
        """Committed and rolled-back transactions so far. A backend publishes its counts when it
        ends (or after ten idle seconds), so the responder's connections are ended first; its
        pool opens new ones on the next request."""
        with self.server.connect() as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = %s AND application_name = 'chatkit-fcgi'", (self.database,))
            harness.wait_until(lambda: not admin.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name = 'chatkit-fcgi'",
                (self.database,)).fetchall(), what="the responder's connections to end")
            admin.execute("SELECT pg_stat_clear_snapshot()")
            row = admin.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                                (self.database,)).fetchone()
        return row[0]


def main():
    args = parse_args()
    raise_fd_limit()
    # SIGTERM ends the run like Ctrl-C does, so the stack is always stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    for binary in ("chatkit-fcgi", "mock-model", "bench-client"):
        if not os.access(os.path.join(args.build_dir, binary), os.X_OK):
            print(f"bench: {binary} not found in {args.build_dir}; run `swift build -c release` first",
                  file=sys.stderr)
            return 2
    started = time.time()
    runs = {}
    for kind in (["sqlite", "postgres"] if args.database == "both" else [args.database]):
        outcome = run_on(kind, args)
        if isinstance(outcome, int):
            return outcome
        runs[kind] = outcome

    targets = []
    errors = 0
    for kind, results in runs.items():
        print()
        print(f"### {kind}")
        print()
        print(markdown(results, args))
        targets += check_targets(results, kind)
        errors += sum(level["direct"]["errors"] + level["nginx"]["errors"] + sum(level["warmup_errors"].values())
                      for level in results)
        errors += results[0].get("prewarm", {}).get("errors", 0) if results else 0
    if len(runs) > 1:
        print()
        print(side_by_side(runs))
    print()
    for target in targets:
        detail = (f"{target['value_ms']:.2f} ms" if "value_ms" in target
                  else f"ratio {target['ratio']:.3f}, errors {target['errors']}")
        print(f"- {verdict(target['pass'])}  {target['target']}: {detail}")

    if args.json:
        report = {
            "started_unix": started,
            "duration_s": time.time() - started,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
            "runs": {kind: {"levels": results, "markdown": markdown(results, args)} for kind, results in runs.items()},
            "targets": targets,
        }
        with open(args.json, "w") as out:
            json.dump(report, out, indent=2)
        print(f"\nJSON written to {args.json}")
    if errors:
        print(f"bench: {errors} request(s) failed", file=sys.stderr)
        return 1
    return 0


def run_on(kind, args):
    """The whole benchmark on one store: its levels' results, or an exit status on failure."""
    try:
        stack = harness.Stack(max_requests=args.max_requests, mock_delay_ms=args.delay_ms, with_nginx=True,
                              build_dir=args.build_dir, extra_env=args.env, database=kind)
    except Exception as error:  # noqa: BLE001 - any start-up failure is the harness's
        print(f"bench: could not start the stack: {error!r}", file=sys.stderr)
        return 2
    print(f"{kind}: stack up in {stack.dir}: mock :{stack.model_port}, nginx :{stack.http_port}, "
          f"responder pid {stack.responder.popen.pid}", flush=True)
    try:
        results = benchmark(stack, args)
        alive = {p.name: p.alive() for p in stack.processes}
        if not all(alive.values()):
            raise RuntimeError(f"a process died during the run: {alive}")
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        stack.stop()
        return 2
    except Exception as error:  # noqa: BLE001
        print(f"bench: harness failure: {error!r}", file=sys.stderr)
        for process in stack.processes:
            if process.name == "chatkit-fcgi":
                print(process.output()[-2000:], file=sys.stderr)
        stack.stop()
        return 2
    stack.stop()
    return results


if __name__ == "__main__":
    sys.exit(main())
