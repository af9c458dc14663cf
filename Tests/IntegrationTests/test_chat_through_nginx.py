"""/api/chat through a real nginx, the built responder, a real SQLite file and the mock model."""

import json
import subprocess
import time

import pytest

from harness import raw_post, read_sse, wait_until


def chat(client, headers, text, conversation_id=None):
    body = {"messages": [{"role": "user", "content": text}], "conversation_id": conversation_id}
    with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
        return response, read_sse(response) if response.status_code == 200 else response.read()


def payloads(records):
    return [payload for _, payload in records]


def text_of(records):
    return "".join(choice["delta"].get("content") or ""
                   for payload in payloads(records) if isinstance(payload, dict) and payload.get("object") == "chat.completion.chunk"
                   for choice in payload["choices"])


def test_records_stream_incrementally_with_sse_headers(client, alice):
    response, records = chat(client, alice, "slow 12")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    conversation_id = int(response.headers["x-conversation-id"])
    first = payloads(records)[0]
    assert first == {"type": "conversation", "conversation_id": conversation_id}
    assert payloads(records)[-1] == "[DONE]"
    assert text_of(records) == " ".join(f"w{i}" for i in range(1, 13))
    # The mock sleeps 50 ms between words: arrival times must show that spacing, not one burst.
    content_times = [at for at, payload in records
                     if isinstance(payload, dict) and payload.get("choices") and payload["choices"][0]["delta"].get("content")]
    gaps = [later - earlier for earlier, later in zip(content_times, content_times[1:])]
    assert len(gaps) >= 10
    assert sorted(gaps)[len(gaps) // 2] > 0.03, gaps
    assert content_times[-1] - content_times[0] > 0.4


def test_chunks_are_the_models_own_objects(client, alice):
    _, records = chat(client, alice, "hello there")
    chunks = [p for p in payloads(records) if isinstance(p, dict) and p.get("object") == "chat.completion.chunk"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["id"].startswith("chatcmpl-mock")
    assert any(chunk.get("usage") for chunk in chunks)
    assert text_of(records) == "You said: hello there"


def test_a_tool_turn_creates_the_task_and_stores_the_whole_turn(stack, client, alice):
    response, records = chat(client, alice, "add buy milk and call mum")
    conversation_id = int(response.headers["x-conversation-id"])
    results = [p for p in payloads(records) if isinstance(p, dict) and p.get("type") == "tool_result"]
    assert [r["name"] for r in results] == ["add_task", "add_task"]
    assert [r["result"]["title"] for r in results] == ["buy milk", "call mum"]
    assert all(r["result"]["status"] == "created" and not r["is_error"] for r in results)
    assert payloads(records)[-1] == "[DONE]"

    with stack.db() as db:
        tasks = db.execute("SELECT id, title, completed FROM tasks WHERE user_id = 'alice' ORDER BY id").fetchall()
        assert [tuple(t)[1:] for t in tasks][-2:] == [("buy milk", 0), ("call mum", 0)]
        rows = db.execute("SELECT role, content, tool_calls, tool_call_id FROM messages WHERE conversation_id = ? ORDER BY id",
                          (conversation_id,)).fetchall()
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "tool", "assistant"]
    calls = json.loads(rows[1]["tool_calls"])
    assert [c["arguments"] for c in calls] == ['{"title":"buy milk"}', '{"title":"call mum"}']
    assert [r["tool_call_id"] for r in rows[2:4]] == [c["id"] for c in calls]
    assert rows[4]["content"] == text_of(records)
    milk, mum = tasks[-2]["id"], tasks[-1]["id"]
    assert rows[4]["content"] == f"Added task {milk}: buy milk. Added task {mum}: call mum."


def test_a_second_turn_replays_history_exactly(stack, client, alice):
    response, first = chat(client, alice, "add water plants")
    conversation_id = int(response.headers["x-conversation-id"])
    chat(client, alice, "history", conversation_id)
    sent = stack.model_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert sent[1]["content"] == "add water plants"
    call = sent[2]["tool_calls"][0]
    assert sent[2]["content"] is None
    assert call["function"] == {"name": "add_task", "arguments": '{"title":"water plants"}'}
    assert sent[3]["tool_call_id"] == call["id"]
    assert json.loads(sent[3]["content"])["status"] == "created"
    assert sent[4]["content"] == text_of(first)
    assert sent[5]["content"] == "history"


def test_another_users_conversation_is_not_found(stack, client, alice, bob):
    response, _ = chat(client, alice, "private words")
    conversation_id = int(response.headers["x-conversation-id"])
    before = stack.row_counts()
    for target in (conversation_id, 999_999):
        response, body = chat(client, bob, "let me in", target)
        assert response.status_code == 404
        assert json.loads(body) == {"detail": "conversation not found"}
    assert stack.row_counts() == before


def test_tool_errors_go_back_to_the_model(client, alice):
    _, records = chat(client, alice, "badargs")
    result = next(p for p in payloads(records) if isinstance(p, dict) and p.get("type") == "tool_result")
    assert result["is_error"] and "not valid JSON" in result["result"]["error"]
    assert text_of(records).startswith("Sorry, that did not work: arguments are not valid JSON")
    assert payloads(records)[-1] == "[DONE]"


def test_the_round_limit_ends_with_a_clear_record(client, alice):
    _, records = chat(client, alice, "loop")
    tail = payloads(records)[-2:]
    assert tail[0]["type"] == "error" and tail[0]["code"] == "max_tool_rounds"
    assert tail[1] == "[DONE]"


def test_crlf_and_comments_from_the_model_are_handled(client, alice):
    _, records = chat(client, alice, "crlf")
    assert text_of(records) == "crlf works"


@pytest.mark.parametrize("trigger,status", [("fail 429", 429), ("fail 500", 502), ("fail 401", 502)])
def test_upstream_errors_before_output_map_to_a_status(stack, client, alice, trigger, status):
    response, body = chat(client, alice, trigger)
    assert response.status_code == status
    detail = json.loads(body)
    assert detail["detail"] and detail["conversation_id"] == int(response.headers["x-conversation-id"])
    if status == 429:
        assert response.headers["retry-after"] == "7"


@pytest.mark.parametrize("trigger", ["midstream error", "truncate"])
def test_upstream_errors_after_output_are_records_and_keep_the_text(stack, client, alice, trigger):
    response, records = chat(client, alice, trigger)
    assert response.status_code == 200
    error, done = payloads(records)[-2:]
    assert error["type"] == "error" and error["code"] == "upstream_error" and done == "[DONE]"
    conversation_id = int(response.headers["x-conversation-id"])
    with stack.db() as db:
        answer, note = db.execute("SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 2",
                                  (conversation_id,)).fetchall()[::-1]
    assert answer["role"] == "assistant" and answer["content"] == text_of(records)
    # The model reads its cut answer back with a note that it was cut.
    assert note["role"] == "system" and "cut off" in note["content"]


def test_a_client_disconnect_stops_the_upstream_and_keeps_the_partial_answer(stack, alice):
    cancelled_before = stack.model_stats()["streams_cancelled"]
    raw = raw_post(stack.http_port, "/api/chat", {"messages": [{"role": "user", "content": "slow 200"}]},
                   alice["Authorization"].split()[1])
    received = b""
    while received.count(b"\"content\":\"w") < 3:
        received += raw.recv(65536)
    conversation_id = int(received.split(b"X-Conversation-Id: ")[1].split(b"\r\n")[0])
    closed_at = time.monotonic()
    raw.close()
    wait_until(lambda: stack.model_stats()["streams_cancelled"] > cancelled_before, timeout=5, what="upstream cancel")
    assert time.monotonic() - closed_at < 1.0
    with stack.db() as db:
        wait_until(lambda: db.execute("SELECT count(*) FROM messages WHERE conversation_id = ? AND role = 'assistant'",
                                      (conversation_id,)).fetchone()[0] == 1, what="partial answer stored")
        partial = db.execute("SELECT content FROM messages WHERE conversation_id = ? AND role = 'assistant'",
                             (conversation_id,)).fetchone()[0]
    assert partial.startswith("w1 w2 w3") and not partial.startswith("w1 w2 w3 " + " ".join(f"w{i}" for i in range(4, 200)))
    with stack.db() as db:
        last = db.execute("SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 1",
                          (conversation_id,)).fetchone()
    assert tuple(last) == ("system", "Your previous answer was cut off before it was complete.")


def test_the_readmes_curl_command_streams(stack, alice):
    out = subprocess.run(
        ["curl", "-sN", f"{stack.base_url}/api/chat", "-H", f"Authorization: {alice['Authorization']}",
         "-H", "Content-Type: application/json",
         "-d", '{"messages":[{"role":"user","content":"hi"}],"conversation_id":null}'],
        capture_output=True, text=True, timeout=30)
    lines = [line for line in out.stdout.splitlines() if line]
    assert json.loads(lines[0][len("data: "):])["type"] == "conversation"
    assert lines[-1] == "data: [DONE]"
