"""A model that pauses 1.5 s between chunks: keepalive comments, and a disconnect noticed while waiting."""

import time

import pytest

from harness import Stack, hs256_token, raw_post, wait_until


@pytest.fixture(scope="module")
def slow_stack(database_kind):
    started = Stack(mock_delay_ms=1500, extra_env={"CHATKIT_KEEPALIVE_SECONDS": "1"}, database=database_kind)
    yield started
    started.stop()


def open_stream(stack, text):
    return raw_post(stack.http_port, "/api/chat", {"messages": [{"role": "user", "content": text}]}, hs256_token("ivy"))


def test_keepalive_comments_flow_while_the_model_is_silent(slow_stack):
    raw = open_stream(slow_stack, "one")
    received = b""
    while b"data: [DONE]" not in received:
        received += raw.recv(65536)
    raw.close()
    assert b": keepalive\n\n" in received
    assert received.index(b": keepalive") < received.index(b"\"content\":\"one\"")


def test_a_disconnect_is_noticed_while_waiting_on_the_model(slow_stack):
    cancelled = slow_stack.model_stats()["streams_cancelled"]
    raw = open_stream(slow_stack, "one two three")
    received = b""
    while b'"content":"' not in received:
        received += raw.recv(65536)
    # The model is now silent for 1.5 s: only polling the FastCGI socket can notice us leaving.
    raw.close()
    closed_at = time.monotonic()
    wait_until(lambda: slow_stack.model_stats()["streams_cancelled"] > cancelled, timeout=5, what="upstream cancel")
    assert time.monotonic() - closed_at < 0.5


@pytest.fixture(scope="module")
def stalling_stack(database_kind):
    started = Stack(database=database_kind, extra_env={"CHATKIT_STALL_TIMEOUT_SECONDS": "2", "CHATKIT_UPSTREAM_RETRIES": "0",
                                                       "CHATKIT_KEEPALIVE_SECONDS": "30"})
    yield started
    started.stop()


def timed_chat(stack, text):
    import httpx
    started = time.monotonic()
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        response = http.post("/api/chat", headers={"Authorization": f"Bearer {hs256_token('stalled')}"},
                             json={"messages": [{"role": "user", "content": text}]})
    return response, time.monotonic() - started


@pytest.mark.parametrize("text", ["silent", "silent head"])
def test_a_model_silent_for_the_stall_timeout_is_cut_off_then_not_seconds_later(stalling_stack, text):
    """Silent after its head, or without even one: a 504 after 2 s, to within a few ticks."""
    response, elapsed = timed_chat(stalling_stack, text)
    assert response.status_code == 504 and response.json()["detail"] == "the model server timed out"
    assert 1.95 <= elapsed < 2.6, f"cut off after {elapsed:.2f} s"
    wait_until(lambda: "the server sent nothing for 2 s" in stalling_stack.responder.output(), what="the log line")
