"""The bundled mock model keeps its records on a fixed schedule, which the benchmark relies on."""

import json
import socket
import time

import httpx
import pytest

from harness import MODEL_KEY, Stack, dechunk, raw_post

DELAY_MS = 1
WORDS = 1500
WORD = "w" * 4000  # about 4 KB per record: the unread ones soon fill every socket buffer


@pytest.fixture(scope="module")
def paced_stack(database_kind):
    started = Stack(mock_delay_ms=DELAY_MS, with_nginx=False, max_requests=2, database=database_kind)
    yield started
    started.stop()


def test_a_reader_that_pauses_gets_every_record_and_the_stream_keeps_its_schedule(paced_stack):
    completed = paced_stack.model_stats()["streams_completed"]
    body = json.dumps({"model": "mock", "stream": True,
                       "messages": [{"role": "user", "content": " ".join([WORD] * WORDS)}]}).encode()
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", paced_stack.model_port))
    raw.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {MODEL_KEY}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
                .encode() + body)
    raw.settimeout(30)
    received = bytearray(raw.recv(1 << 20))  # the head and the first record: the schedule's start
    first_record = time.monotonic()
    # Read nothing for most of the stream: the mock's socket fills and its records wait.
    time.sleep(WORDS * DELAY_MS / 1000 * 0.8)
    assert paced_stack.model_stats()["streams_waiting_to_write"] == 1
    while chunk := raw.recv(1 << 20):
        received += chunk
    elapsed = time.monotonic() - first_record
    raw.close()

    head, _, chunked = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    records = [record for record in dechunk(chunked).decode().split("\n\n") if record]
    assert records[-1] == "data: [DONE]"
    text = "".join(json.loads(record[6:])["choices"][0]["delta"].get("content") or ""
                   for record in records[:-1] if json.loads(record[6:])["choices"])
    assert text == "You said: " + " ".join([WORD] * WORDS)
    assert paced_stack.model_stats()["streams_completed"] == completed + 1
    assert paced_stack.model_stats()["streams_waiting_to_write"] == 0
    # Records fall due at fixed times from the first: the pause delayed none but the ones
    # waiting in the full socket. Pauses after each write would have ended the stream later by
    # the time the socket stayed full, most of the stream.
    nominal = (len(records) - 1) * DELAY_MS / 1000
    assert elapsed < nominal * 1.1 + 0.15, f"{elapsed:.2f} s for a stream scheduled over {nominal:.2f} s"


def test_records_leave_when_they_fall_due_never_before_and_not_much_after(paced_stack):
    # "slow 6": six words 50 ms apart, then the finish and [DONE] records on the same schedule.
    interval = 0.050
    sent = time.monotonic()  # the schedule starts later, when the mock has read the request
    raw = raw_post(paced_stack.model_port, "/v1/chat/completions",
                   {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "slow 6"}]}, MODEL_KEY)
    arrivals, seen = [], 0
    received = bytearray()
    while not received.endswith(b"\r\n0\r\n\r\n"):  # the last chunk: the connection stays open
        chunk = raw.recv(1 << 16)
        assert chunk, "the mock closed before its last chunk"
        received += chunk
        now = time.monotonic()
        count = received.count(b"data: ")
        arrivals += [now] * (count - seen)
        seen = count
    raw.close()
    assert dechunk(bytes(received).partition(b"\r\n\r\n")[2]).endswith(b"data: [DONE]\n\n")
    assert len(arrivals) >= 8
    # The first record leaves with the head; record i falls due i intervals after it.
    lateness = [arrival - sent - index * interval for index, arrival in enumerate(arrivals)]
    assert min(lateness) > 0, f"a record left early: {lateness}"
    assert sorted(lateness)[len(lateness) // 2] < 0.010, f"records left late: {lateness}"


def exchange(port, head, body=b""):
    """One request with exactly these head lines; the status line and body of the answer."""
    with socket.create_connection(("127.0.0.1", port)) as raw:
        raw.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        raw.settimeout(10)
        received = bytearray()
        while chunk := raw.recv(1 << 16):
            received += chunk
    status, _, rest = bytes(received).partition(b"\r\n")
    return status, rest.partition(b"\r\n\r\n")[2]


def test_header_names_are_read_in_any_case_and_values_without_their_spaces(paced_stack):
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, reply = exchange(paced_stack.model_port, [
        "POST /v1/chat/completions HTTP/1.1", "host: localhost", f"AUTHORIZATION: \t Bearer {MODEL_KEY} \t",
        "content-TYPE:application/json", "Connection:  close", f"content-length: {len(body)}"], body)
    assert status.startswith(b"HTTP/1.1 200"), reply
    assert json.loads(reply)["choices"][0]["message"]["content"] == "You said: hi"


@pytest.mark.parametrize("head", [
    ["POST /v1/chat/completions HTTP/1.1", "Host localhost"],  # a header line without a colon
    ["POST /v1/chat/completions SPDY/3", "Host: localhost"],
    ["POST  HTTP/1.1", "Host: localhost"],  # no target
])
def test_a_malformed_request_head_gets_a_400(paced_stack, head):
    status, reply = exchange(paced_stack.model_port, head)
    assert status.startswith(b"HTTP/1.1 400"), reply
    assert json.loads(reply)["error"]["type"] == "invalid_request_error"


def streamed_deltas(stack, content):
    """The `delta` of every chunk the mock streams for one user message, read to the last one."""
    raw = raw_post(stack.model_port, "/v1/chat/completions",
                   {"model": "mock", "stream": True, "messages": [{"role": "user", "content": content}]}, MODEL_KEY)
    received = bytearray()
    while not received.endswith(b"\r\n0\r\n\r\n"):
        chunk = raw.recv(1 << 16)
        assert chunk, "the mock closed before its last chunk"
        received += chunk
    raw.close()
    records = dechunk(bytes(received).partition(b"\r\n\r\n")[2]).decode().split("\n\n")
    return [json.loads(record[6:])["choices"][0]["delta"] for record in records
            if record.startswith("data: {") and json.loads(record[6:])["choices"]]


def test_an_echoed_answer_streams_a_piece_per_space_and_keeps_the_text_exactly(paced_stack):
    pieces = [delta.get("content") for delta in streamed_deltas(paced_stack, "a  b é 😀x")]
    assert [piece for piece in pieces if piece] == ["You ", "said: ", "a ", " ", "b ", "é ", "😀x"]


def test_say_then_streams_text_before_the_tool_calls(paced_stack):
    """What models often do, and what the ChatKit face must finish before the tools run."""
    deltas = streamed_deltas(paced_stack, "say Adding milk then add milk")
    contents = [delta["content"] for delta in deltas if delta.get("content")]
    first_call = next(index for index, delta in enumerate(deltas) if delta.get("tool_calls"))
    assert contents == ["Adding ", "milk "] and all(not delta.get("content") for delta in deltas[first_call:])
    assert deltas[first_call]["tool_calls"][0]["function"]["name"] == "add_task"

    whole = httpx.post(f"http://127.0.0.1:{paced_stack.model_port}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {MODEL_KEY}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": "say Adding milk then add milk"}]}).json()
    message = whole["choices"][0]["message"]
    assert message["content"] == "Adding milk " and message["tool_calls"][0]["function"]["name"] == "add_task"


def answer(stack, content):
    """The mock's whole (non-streamed) answer to one user message: its tool calls, or its text."""
    reply = httpx.post(f"http://127.0.0.1:{stack.model_port}/v1/chat/completions",
                       headers={"Authorization": f"Bearer {MODEL_KEY}"},
                       json={"model": "mock", "messages": [{"role": "user", "content": content}]})
    message = reply.json()["choices"][0]["message"]
    if message.get("tool_calls"):
        return [(call["function"]["name"], json.loads(call["function"]["arguments"])) for call in message["tool_calls"]]
    return message["content"]


@pytest.mark.parametrize("command,calls", [
    ("add buy milk", [("add_task", {"title": "buy milk"})]),
    ("Add Buy milk and walk the dog.", [("add_task", {"title": "Buy milk"}), ("add_task", {"title": "walk the dog"})]),
    ("add task buy milk", [("add_task", {"title": "buy milk"})]),
    ("add a task buy milk", [("add_task", {"title": "buy milk"})]),
    ("add task", [("add_task", {"title": "task"})]),
    ("list", [("list_tasks", {"status": "all"})]),
    ("list pending", [("list_tasks", {"status": "pending"})]),
    ("list completed", [("list_tasks", {"status": "completed"})]),
    ("list my done tasks", [("list_tasks", {"status": "completed"})]),
    ("list anything", [("list_tasks", {"status": "all"})]),
    ("show my tasks", [("list_tasks", {"status": "all"})]),
    ("Show me all my pending tasks", [("list_tasks", {"status": "pending"})]),
    ("what are my tasks?", [("list_tasks", {"status": "all"})]),
    ("complete 1", [("complete_task", {"task_id": 1})]),
    ("complete task 1", [("complete_task", {"task_id": 1})]),
    ("Complete task #12.", [("complete_task", {"task_id": 12})]),
    ("done 1", [("complete_task", {"task_id": 1})]),
    ("mark task 1 done", [("complete_task", {"task_id": 1})]),
    ("mark 1 as completed", [("complete_task", {"task_id": 1})]),
    ("delete 1", [("delete_task", {"task_id": 1})]),
    ("delete task 1", [("delete_task", {"task_id": 1})]),
    ("remove task #1", [("delete_task", {"task_id": 1})]),
    ("rename 1 to Call Mum", [("update_task", {"task_id": 1, "title": "Call Mum"})]),
    ("rename task 1 to Call  Mum", [("update_task", {"task_id": 1, "title": "Call  Mum"})]),
    ("update task 1 to Call Mum.", [("update_task", {"task_id": 1, "title": "Call Mum"})]),
])
def test_todo_commands_read_naturally(paced_stack, command, calls):
    assert answer(paced_stack, command) == calls


@pytest.mark.parametrize("text", ["add", "show", "show the weather", "what is this?", "complete task", "done",
                                  "mark 1", "mark 1 as read", "remove the dog", "delete 1 2", "rename 1 to", "update me"])
def test_anything_else_is_echoed(paced_stack, text):
    assert answer(paced_stack, text) == f"You said: {text}"
