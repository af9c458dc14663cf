"""The benchmark's load client (bench-client, run through bench.py) reports what its streams did."""

import json
import os
import sys
import time

import pytest

from harness import BUILD_DIR, Stack, free_port, hs256_token

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "Benchmarks"))
import bench  # noqa: E402  (path set up above)

DELAY_MS = 5
CLIENT = os.path.join(BUILD_DIR, "bench-client")
PROMPT = "one two three"  # the mock answers "You said: one two three", a record per word


@pytest.fixture(scope="module")
def stack(database_kind):
    started = Stack(mock_delay_ms=DELAY_MS, max_requests=4, database=database_kind)
    yield started
    started.stop()


def chat(stack, token=None, port=None):
    body = json.dumps({"messages": [{"role": "user", "content": PROMPT}]}).encode()
    return bench.Target("nginx", port or stack.http_port, "/api/chat",
                        [("Authorization", f"Bearer {token or hs256_token('bench-client-test')}")], body)


def probed(target):
    target.expected_records = bench.probe(target).count(b"data: ")
    return target


def test_every_stream_is_timed_and_really_served(stack):
    target = probed(chat(stack))
    before = stack.row_counts()["conversations"]
    phase = bench.run_phase(CLIENT, target, concurrency=2, per_slot=3)
    assert phase["errors"] == {}
    assert len(phase["ttft"]) == len(phase["total"]) == 6
    assert stack.row_counts()["conversations"] == before + 6
    # The first word follows the mock's first record by one pause; the other four by one each.
    for first, whole in zip(phase["ttft"], phase["total"]):
        assert DELAY_MS / 1000 <= first < 1
        assert whole >= first + 4 * DELAY_MS / 1000
    assert 0 < phase["throughput"] < 2 / (5 * DELAY_MS / 1000)


def test_chatkit_streams_are_timed_to_the_first_text_delta(stack):
    body = json.dumps({"type": "threads.create", "params": {"input": {
        "content": [{"type": "input_text", "text": PROMPT}], "attachments": [], "inference_options": {}}}}).encode()
    target = probed(bench.Target("nginx", stack.http_port, "/api/chatkit",
                                 [("Authorization", f"Bearer {hs256_token('bench-client-test')}")], body,
                                 last_record=b'"has_more":false}}}\n\n'))
    phase = bench.run_phase(CLIENT, target, concurrency=1, per_slot=2)
    assert phase["errors"] == {}
    assert all(DELAY_MS / 1000 <= first < 1 for first in phase["ttft"]) and len(phase["ttft"]) == 2


def test_a_stream_with_other_records_than_the_probe_showed_fails(stack):
    target = probed(chat(stack))
    target.expected_records += 1
    phase = bench.run_phase(CLIENT, target, concurrency=1, per_slot=2)
    assert phase["ttft"] == []
    assert phase["errors"] == {f"{target.expected_records - 1} records, expected {target.expected_records}": 2}


def test_rejected_and_refused_requests_fail_with_their_reason(stack):
    rejected = chat(stack, token="not-a-token")
    rejected.expected_records = 9
    assert bench.run_phase(CLIENT, rejected, concurrency=2, per_slot=1)["errors"] == {"HTTP 401": 2}
    refused = chat(stack, port=free_port())
    refused.expected_records = 9
    assert bench.run_phase(CLIENT, refused, concurrency=1, per_slot=1)["errors"] == {"connect: Connection refused": 1}


def test_a_timed_phase_stops_at_its_deadline(stack):
    target = probed(chat(stack))
    started = time.monotonic()
    phase = bench.run_phase(CLIENT, target, concurrency=2, seconds=0.3)
    # The deadline, then the requests running at it (about 30 ms each), and no idle wait after.
    assert 0.3 <= time.monotonic() - started < 0.8
    assert phase["errors"] == {} and len(phase["ttft"]) >= 2
