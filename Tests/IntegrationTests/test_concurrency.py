"""Many streams at once, through nginx: every one completes and is stored whole, and the streams
hold no thread each while the model talks. Correctness under concurrency, not a timing test."""

import json
import os
import resource
import sys
import threading

from harness import BUILD_DIR, Stack, hs256_token

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Benchmarks"))
import bench  # noqa: E402  (path set up above)

# A sanitizer's instrumented build (Tests/sanitize) is several times slower: fewer streams,
# each long enough that the last starts before the first ends.
INSTRUMENTED = "TSAN_OPTIONS" in os.environ or "ASAN_OPTIONS" in os.environ
STREAMS = 100 if INSTRUMENTED else 1000
WORDS = 400 if INSTRUMENTED else 100  # "slow N": a word every 50 ms, so 5 s (or 20 s) per answer


def thread_count(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def test_a_thousand_streams_at_once_all_complete_on_a_few_threads(database_kind):
    # Each stream is a connection in the client, nginx, the responder and the mock.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * STREAMS + 256)), hard))
    stack = Stack(max_requests=STREAMS + 16, database=database_kind)
    try:
        body = json.dumps({"messages": [{"role": "user", "content": f"slow {WORDS}"}]}).encode()
        target = bench.Target("nginx", stack.http_port, "/api/chat",
                              [("Authorization", f"Bearer {hs256_token('crowd')}")], body)
        target.expected_records = bench.probe(target).count(b"data: ")
        pid = stack.responder.popen.pid
        peak = {"model_streams": 0, "threads": 0}
        finished = threading.Event()

        def watch():
            while not finished.wait(0.1):
                peak["model_streams"] = max(peak["model_streams"], stack.model_stats()["active_streams"])
                peak["threads"] = max(peak["threads"], thread_count(pid))

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            phase = bench.run_phase(os.path.join(BUILD_DIR, "bench-client"), target, STREAMS, per_slot=1)
        finally:
            finished.set()
            watcher.join()

        assert phase["errors"] == {}
        assert len(phase["total"]) == STREAMS
        # All of them were at the model at once, and the responder held them on its fixed threads
        # (32 workers, 2 acceptors, the transfer loop, the checkpointer, the main thread).
        assert peak["model_streams"] == STREAMS
        assert peak["threads"] < 48
        answer = " ".join(f"w{index}" for index in range(1, WORDS + 1))
        with stack.db() as db:
            stored = db.execute("SELECT count(*) FROM messages WHERE role = 'assistant' AND content = ?",
                                (answer,)).fetchone()[0]
        assert stored == STREAMS + 1  # and the probe's
    finally:
        stack.stop()
