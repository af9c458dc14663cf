"""A client that stops reading holds up no other stream: its model download pauses, then resumes."""

import json
import select
import socket
import subprocess
import time

import pytest

from harness import Stack, dechunk, fastcgi_post, hs256_token, wait_until

WORDS = 60_000  # about 11 MB of records: more than every buffer between the client and us holds


@pytest.fixture(scope="module")
def impatient_stack(database_kind):
    # Long enough for the mock to start its answer even in an instrumented (sanitizer) build:
    # the same timeout also ends a model that sends nothing.
    started = Stack(extra_env={"CHATKIT_STALL_TIMEOUT_SECONDS": "3"}, database=database_kind)
    yield started
    started.stop()


def open_unread_stream(port, text):
    """A POST whose answer nobody reads yet; a small receive buffer makes the backlog reach us."""
    body = json.dumps({"messages": [{"role": "user", "content": text}]}).encode()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    raw.connect(("127.0.0.1", port))
    raw.sendall(f"POST /api/chat HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {hs256_token('sam')}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    raw.settimeout(30)
    return raw


def read_to_end(raw):
    received = bytearray()
    while chunk := raw.recv(1 << 20):
        received += chunk
    raw.close()
    return bytes(received)


def test_a_client_that_stops_reading_holds_up_no_other_stream(stack, client, alice):
    completed = stack.model_stats()["streams_completed"]
    unread = open_unread_stream(stack.http_port, " ".join(["w"] * WORDS))
    # The answer fills every buffer on its way, back to the mock's socket: once the mock's write
    # has waited a second for the responder to read, the download is paused (while the buffers
    # fill, the mock waits a tenth of that at most).
    wait_until(lambda: stack.model_stats()["longest_write_wait_ms"] >= 1000, what="the model download to pause")
    paused = stack.model_stats()
    assert paused["streams_waiting_to_write"] == 1

    started = time.monotonic()
    other = client.post("/api/chat", headers=alice, json={"messages": [{"role": "user", "content": "hello"}]},
                        timeout=10)
    assert other.status_code == 200 and other.text.endswith("data: [DONE]\n\n")
    assert time.monotonic() - started < 5

    # Still the same wait, no new one: the responder read nothing from the model meanwhile.
    still = stack.model_stats()
    assert still["streams_waiting_to_write"] == 1 and still["write_waits"] == paused["write_waits"]

    # Reading again resumes the download: the whole answer arrives, in order, then [DONE].
    head, _, body = read_to_end(unread).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    records = [line[len(b"data: "):] for line in dechunk(body).split(b"\n\n") if line.startswith(b"data: ")]
    assert records[-1] == b"[DONE]"
    words = [json.loads(record)["choices"][0]["delta"].get("content", "") for record in records[1:-1]
             if json.loads(record).get("choices")]
    assert "".join(words) == "You said: " + " ".join(["w"] * WORDS)
    wait_until(lambda: stack.model_stats()["streams_completed"] == completed + 2, what="both model streams to complete")
    assert stack.model_stats()["streams_waiting_to_write"] == 0


def test_a_client_that_reads_nothing_for_the_stall_timeout_ends_its_model_stream(impatient_stack):
    cancelled = impatient_stack.model_stats()["streams_cancelled"]
    unread = open_unread_stream(impatient_stack.http_port, " ".join(["w"] * WORDS))
    # libcurl does not time a paused download; the responder does, and lets the model go.
    wait_until(lambda: impatient_stack.model_stats()["streams_cancelled"] > cancelled, timeout=20,
               what="the paused model stream to end")
    unread.close()
    wait_until(lambda: "our client read nothing for 3 s" in impatient_stack.responder.output(), timeout=20,
               what="the request's log line")


def test_streams_whose_clients_read_nothing_end_without_holding_a_worker_thread(database_kind):
    """More unread streams than worker threads: each ends after the stall timeout, and frees its
    thread, though nobody reads its last records either."""
    # 5 s: three answers of 60,000 words at once take an instrumented mock seconds to begin.
    stack = Stack(extra_env={"CHATKIT_THREADS": "2", "CHATKIT_STALL_TIMEOUT_SECONDS": "5"}, database=database_kind)
    unread = []
    try:
        unread = [open_unread_stream(stack.http_port, " ".join(["w"] * WORDS)) for _ in range(3)]
        wait_until(lambda: stack.responder.output().count("our client read nothing for 5 s") == 3, timeout=120,
                   what="every unread stream's log line")
        started = time.monotonic()
        answered = stack_post(stack, hs256_token("reader"), {"type": "threads.list", "params": {}})
        assert json.loads(answered)["data"] == [] and time.monotonic() - started < 2
    finally:
        for raw in unread:
            raw.close()
        stack.stop()


def test_clients_that_read_no_json_answer_hold_no_worker_thread(database_kind):
    """A JSON answer larger than every socket buffer, asked for by more clients than there are
    worker threads, none of them reading: nginx takes each answer whole, so the threads are free
    and the next request is answered at once."""
    stack = Stack(extra_env={"CHATKIT_THREADS": "2"}, database=database_kind)
    readers = []
    try:
        token = hs256_token("hoarder")
        big = {"content": [{"type": "input_text", "text": "x" * 900_000}], "attachments": [], "inference_options": {}}
        created = stack_post(stack, token, {"type": "threads.create", "params": {"input": big}})
        thread_id = json.loads(created.split(b"\n\n")[0][len(b"data: "):])["thread"]["id"]
        # Each turn stores the message and the mock's echo of it: 8 items, about 7 MB of JSON,
        # more than the socket buffers between us and a client hold (TCP's grow to 4 MB).
        for _ in range(3):
            stack_post(stack, token, {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": big}})
        ask = json.dumps({"type": "threads.get_by_id", "params": {"thread_id": thread_id}}).encode()
        for _ in range(4):
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.connect(("127.0.0.1", stack.http_port))
            raw.sendall(f"POST /api/chatkit HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                        f"Authorization: Bearer {token}\r\nConnection: close\r\n"
                        f"Content-Length: {len(ask)}\r\n\r\n".encode() + ask)
            readers.append(raw)
        # Every one of them is answered in full, though nobody has read a byte.
        wait_until(lambda: stack.responder.output().count("POST /api/chatkit 200") >= 5, timeout=10,
                   what="the unread answers to be written")
        started = time.monotonic()
        listed = stack_post(stack, token, {"type": "threads.list", "params": {}})
        assert json.loads(listed)["data"][0]["id"] == thread_id
        assert time.monotonic() - started < 2
    finally:
        for raw in readers:
            raw.close()
        stack.stop()


def test_a_worker_thread_waits_on_a_reader_no_longer_than_the_stall_timeout(database_kind):
    """Without nginx to buffer it: a FastCGI client that asks for a large JSON answer and reads
    nothing holds the only worker thread for the stall timeout at most; then the write gives up
    and the next request is served."""
    stack = Stack(with_nginx=False, extra_env={"CHATKIT_THREADS": "1", "CHATKIT_STALL_TIMEOUT_SECONDS": "2"},
                  database=database_kind)
    hoarder = None
    try:
        token = hs256_token("hoarder")
        big = {"content": [{"type": "input_text", "text": "x" * 900_000}], "attachments": [], "inference_options": {}}
        status, _, created = fastcgi_post(stack.socket, "/api/chatkit", {"type": "threads.create", "params": {"input": big}},
                                          token)
        thread_id = json.loads(created.split("\n\n")[0][len("data: "):])["thread"]["id"]
        for _ in range(3):
            fastcgi_post(stack.socket, "/api/chatkit",
                         {"type": "threads.add_user_message", "params": {"thread_id": thread_id, "input": big}}, token)
        # cgi-fcgi stops reading the socket once nobody reads its output: about 7 MB stay unsent.
        ask = json.dumps({"type": "threads.get_by_id", "params": {"thread_id": thread_id}}).encode()
        env = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(ask)),
               "REQUEST_URI": "/api/chatkit", "DOCUMENT_URI": "/api/chatkit", "HTTP_AUTHORIZATION": f"Bearer {token}"}
        hoarder = subprocess.Popen(["cgi-fcgi", "-bind", "-connect", stack.socket], env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
        hoarder.stdin.write(ask)
        hoarder.stdin.close()
        # The answer has begun (the worker is writing it) when its first bytes reach the pipe.
        assert select.select([hoarder.stdout], [], [], 10)[0]
        started = time.monotonic()
        status, _, listed = fastcgi_post(stack.socket, "/api/chatkit", {"type": "threads.list", "params": {}}, token)
        assert status == 200 and json.loads(listed)["data"][0]["id"] == thread_id
        assert time.monotonic() - started < 2 + 3
    finally:
        if hoarder:
            hoarder.kill()
            hoarder.wait()
        stack.stop()


def stack_post(stack, token, payload):
    import httpx
    reply = httpx.post(f"{stack.base_url}/api/chatkit", json=payload, headers={"Authorization": f"Bearer {token}"},
                       timeout=10)
    assert reply.status_code == 200, reply.text
    return reply.content
