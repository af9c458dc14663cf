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
