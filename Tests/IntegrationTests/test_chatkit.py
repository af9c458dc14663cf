"""/api/chatkit through nginx, every event and reply validated with the official `openai-chatkit` models."""

import json
import time

import httpx
import pytest
from chatkit.types import Page, Thread, ThreadItem, ThreadStreamEvent
from pydantic import TypeAdapter

from harness import Stack, hs256_token, raw_post, wait_until

EVENT = TypeAdapter(ThreadStreamEvent)
THREAD = TypeAdapter(Thread)
THREADS = TypeAdapter(Page[Thread])
ITEMS = TypeAdapter(Page[ThreadItem])
CLIENT_TOOLS = [{"name": "get_selection", "description": "The todos selected in the page",
                 "parameters": {"type": "object", "properties": {"scope": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def kit(database_kind):
    started = Stack(extra_env={"CHATKIT_CLIENT_TOOLS": json.dumps(CLIENT_TOOLS)}, database=database_kind)
    yield started
    started.stop()


class Session:
    def __init__(self, stack, user):
        self.stack = stack
        self.http = httpx.Client(base_url=stack.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {hs256_token(user)}", "Accept-Language": "en-US"})

    def post(self, type_, params, raw=None):
        return self.http.post("/api/chatkit", content=raw if raw is not None else json.dumps({"type": type_, "params": params}),
                              headers={"Content-Type": "application/json"})

    def stream(self, type_, params):
        """Posts a streaming request; returns the validated events (and checks the framing)."""
        response = self.post(type_, params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        events = []
        for block in response.text.split("\n\n")[:-1]:
            if block.startswith(":"):
                continue  # keepalive comment
            assert block.startswith("data: ") and "\n" not in block, block
            events.append(EVENT.validate_json(block[len("data: "):]))
        return events

    def json(self, type_, params, adapter=None):
        response = self.post(type_, params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        return adapter.validate_json(response.content) if adapter else response.json()


def user_input(text):
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


def kinds(events):
    return [event.update.type if event.type == "thread.item.updated" else event.type for event in events]


def assistant_sequence_is_complete(events):
    """Every added item gets a done; the deltas add up to the done text."""
    added = {e.item.id for e in events if e.type == "thread.item.added"}
    done = {e.item.id: e.item for e in events if e.type == "thread.item.done"}
    assert added <= done.keys()
    for item_id in added:
        if done[item_id].type == "assistant_message":
            deltas = "".join(e.update.delta for e in events if e.type == "thread.item.updated" and e.item_id == item_id
                             and e.update.type == "assistant_message.content_part.text_delta")
            assert deltas == done[item_id].content[0].text


def test_a_scripted_conversation_covers_every_request_type(kit):
    alice = Session(kit, "kit-alice")

    # create: the official server's order of events
    events = alice.stream("threads.create", {"input": user_input("hello there")})
    assert kinds(events)[:5] == ["thread.created", "thread.item.done", "stream_options", "thread.item.added",
                                 "assistant_message.content_part.added"]
    assert set(kinds(events)[5:-3]) == {"assistant_message.content_part.text_delta"}
    assert kinds(events)[-3:] == ["assistant_message.content_part.done", "thread.item.done", "thread.updated"]
    assert events[1].item.type == "user_message" and events[1].item.content[0].text == "hello there"
    assert events[-2].item.content[0].text == "You said: hello there"
    assert events[-1].thread.title == "hello there"
    assistant_sequence_is_complete(events)
    thread_id = events[0].thread.id
    first_user_item = events[1].item.id
    assert thread_id.startswith("thr_") and first_user_item.startswith("msg_")
    assert alice.json("threads.get_by_id", {"thread_id": thread_id}, THREAD).title == "hello there"

    # a tool turn: progress, a workflow with one task per call, then the answer
    events = alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("add buy milk")})
    assert kinds(events)[:4] == ["thread.item.done", "stream_options", "progress_update", "thread.item.added"]
    workflow = next(e.item for e in events if e.type == "thread.item.done" and e.item.type == "workflow")
    assert [task.title for task in workflow.workflow.tasks] == ["Add task"]
    assert workflow.workflow.tasks[0].content == "buy milk" and workflow.workflow.tasks[0].status_indicator == "complete"
    assert kinds(events).index("workflow.task.updated") < kinds(events).index("assistant_message.content_part.added")
    assert events[-1].type == "thread.item.done" and events[-1].item.type == "assistant_message"
    assistant_sequence_is_complete(events)
    with kit.db() as db:
        assert db.execute("SELECT count(*) FROM tasks WHERE user_id = 'kit-alice' AND title = 'buy milk'").fetchone()[0] == 1

    # a second message: the tool call and its result are replayed to the model
    alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("history")})
    sent = kit.model_requests()[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user", "assistant", "tool", "assistant", "user"]
    assert sent[4]["tool_calls"][0]["function"]["name"] == "add_task"
    assert sent[5]["tool_call_id"] == sent[4]["tool_calls"][0]["id"]

    # get_by_id, and items.list paginated both ways with stable cursors
    thread = alice.json("threads.get_by_id", {"thread_id": thread_id}, THREAD)
    shown = [item.type for item in thread.items.data]
    assert shown == ["user_message", "assistant_message", "user_message", "workflow", "assistant_message",
                     "user_message", "assistant_message"]
    every = [item.id for item in thread.items.data]
    collected, after = [], None
    while True:
        page = alice.json("items.list", {"thread_id": thread_id, "limit": 3, "order": "desc", "after": after}, ITEMS)
        collected += [item.id for item in page.data]
        if not page.has_more:
            assert page.after is None
            break
        assert page.after == page.data[-1].id
        after = page.after
    assert collected == every[::-1]
    asc = alice.json("items.list", {"thread_id": thread_id, "limit": 2, "order": "asc", "after": every[1]}, ITEMS)
    assert [item.id for item in asc.data] == every[2:4] and asc.has_more

    # threads.list pagination over several threads
    second = alice.stream("threads.create", {"input": user_input("second thread")})[0].thread.id
    third = alice.stream("threads.create", {"input": user_input("third thread")})[0].thread.id
    page = alice.json("threads.list", {"limit": 2}, THREADS)
    assert [t.id for t in page.data] == [third, second] and page.has_more and page.after == second
    rest = alice.json("threads.list", {"limit": 2, "after": page.after}, THREADS)
    assert [t.id for t in rest.data] == [thread_id] and not rest.has_more
    assert alice.json("threads.list", {"limit": 10, "order": "asc"}, THREADS).data[0].id == thread_id

    # rename
    renamed = alice.json("threads.update", {"thread_id": thread_id, "title": "Groceries"}, THREAD)
    assert renamed.title == "Groceries"
    assert alice.json("threads.get_by_id", {"thread_id": thread_id}, THREAD).title == "Groceries"

    # feedback is stored
    answer_id = thread.items.data[1].id
    assert alice.json("items.feedback", {"thread_id": thread_id, "item_ids": [answer_id], "kind": "negative"}) == {}
    with kit.db() as db:
        assert db.execute("SELECT f.kind FROM feedback f JOIN messages m ON m.id = f.message_id WHERE m.public_id = ?",
                          (answer_id,)).fetchone()[0] == "negative"

    # retry: everything after the first user message goes, and it is answered again
    events = alice.stream("threads.retry_after_item", {"thread_id": thread_id, "item_id": first_user_item})
    assert kinds(events)[:3] == ["stream_options", "thread.item.added", "assistant_message.content_part.added"]
    assert events[-1].item.content[0].text == "You said: hello there"
    after_retry = alice.json("items.list", {"thread_id": thread_id, "order": "asc"}, ITEMS)
    assert [item.id for item in after_retry.data] == [first_user_item, events[-1].item.id]

    # a client tool round trip
    events = alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("use get_selection")})
    call = events[-1].item
    assert call.type == "client_tool_call" and call.status == "pending" and call.name == "get_selection"
    assert call.arguments == {"scope": "todos"}
    events = alice.stream("threads.add_client_tool_output", {"thread_id": thread_id, "result": {"selected": [1, 2]}})
    assert kinds(events)[0] == "stream_options"
    assert events[-1].item.content[0].text == 'The get_selection tool returned {"selected":[1,2]}.'
    stored_call = next(i for i in alice.json("items.list", {"thread_id": thread_id}, ITEMS).data if i.id == call.id)
    assert stored_call.status == "completed" and stored_call.output == {"selected": [1, 2]}

    # a pending call that is never answered does not break the thread
    alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("use get_selection")})
    events = alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("never mind")})
    assert events[-1].item.content[0].text == "You said: never mind"
    replayed = kit.model_requests()[-1]["messages"]
    unanswered = [m for m in replayed if m["role"] == "tool" and "did not return a result" in m["content"]]
    assert len(unanswered) == 1

    # custom actions: a proper error while there are no widgets
    events = alice.stream("threads.custom_action", {"thread_id": thread_id, "action": {"type": "noop"}})
    assert [(e.type, e.code, e.allow_retry) for e in events] == [("error", "custom", False)]

    # delete
    assert alice.json("threads.delete", {"thread_id": second}) == {}
    assert alice.post("threads.get_by_id", {"thread_id": second}).status_code == 404


def test_a_conversation_from_api_chat_is_a_thread_and_the_reverse(kit):
    token = {"Authorization": f"Bearer {hs256_token('kit-both')}"}
    response = httpx.post(f"{kit.base_url}/api/chat", headers=token,
                          json={"messages": [{"role": "user", "content": "from the chat api"}]})
    conversation_id = int(response.headers["x-conversation-id"])
    with kit.db() as db:
        thread_id = db.execute("SELECT public_id FROM conversations WHERE id = ?", (conversation_id,)).fetchone()[0]
    both = Session(kit, "kit-both")
    thread = both.json("threads.get_by_id", {"thread_id": thread_id}, THREAD)
    assert [(i.type, i.content[0].text) for i in thread.items.data] == [
        ("user_message", "from the chat api"), ("assistant_message", "You said: from the chat api")]

    events = both.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("and from chatkit")})
    assert events[-1].item.content[0].text == "You said: and from chatkit"
    reply = httpx.post(f"{kit.base_url}/api/chat", headers=token,
                       json={"messages": [{"role": "user", "content": "history"}], "conversation_id": conversation_id})
    assert "I received 6 messages." in "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in reply.text.splitlines() if line.startswith("data: {\"id\"") and json.loads(line[6:])["choices"])


def test_errors_after_the_stream_starts_are_error_events(kit):
    alice = Session(kit, "kit-errors")
    events = alice.stream("threads.create", {"input": user_input("midstream error")})
    error_at = kinds(events).index("error")
    assert events[error_at].code == "stream.error" and events[error_at].allow_retry
    # As the official server does, a title set by this turn may still follow the error.
    assert kinds(events)[error_at + 1:] in ([], ["thread.updated"])
    # Unlike it, the partial answer the user saw is kept, and the model is told that it was cut.
    thread_id = events[0].thread.id
    assert alice.json("items.list", {"thread_id": thread_id}, ITEMS).data[0].content[0].text == "partial answer "
    alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("history")})
    replayed = kit.model_requests()[-1]["messages"]
    assert replayed[-3]["content"] == "partial answer " and "cut off" in replayed[-2]["content"]


def test_text_before_tool_calls_is_done_before_the_tools_run(kit):
    alice = Session(kit, "kit-preamble")
    events = alice.stream("threads.create", {"input": user_input("say Adding milk then add milk")})
    assistant_sequence_is_complete(events)
    first_tool = kinds(events).index("progress_update")
    text = next(e.item for e in events if e.type == "thread.item.done" and e.item.type == "assistant_message")
    assert text.content[0].text == "Adding milk "
    assert kinds(events)[first_tool - 2:first_tool] == ["assistant_message.content_part.done", "thread.item.done"]
    # The model reads its text and its call as one message, the way it wrote them.
    call_message = kit.model_requests()[-1]["messages"][-2]
    assert call_message["content"] == "Adding milk " and call_message["tool_calls"][0]["function"]["name"] == "add_task"


def test_a_disconnect_keeps_the_partial_answer_and_a_hidden_note(kit):
    alice = Session(kit, "kit-cancel")
    thread_id = alice.stream("threads.create", {"input": user_input("hi")})[0].thread.id
    cancelled = kit.model_stats()["streams_cancelled"]
    raw = raw_post(kit.http_port, "/api/chatkit", {"type": "threads.add_user_message",
                   "params": {"thread_id": thread_id, "input": user_input("slow 200")}}, hs256_token("kit-cancel"))
    received = b""
    while received.count(b"text_delta") < 3:
        received += raw.recv(65536)
    raw.close()
    wait_until(lambda: kit.model_stats()["streams_cancelled"] > cancelled, timeout=5, what="upstream cancel")

    def stored():
        return alice.json("items.list", {"thread_id": thread_id, "order": "asc"}, ITEMS).data
    wait_until(lambda: stored()[-1].type == "assistant_message", what="partial answer stored")
    time.sleep(0.2)
    partial = stored()[-1].content[0].text
    assert partial.startswith("w1 w2 w3") and not partial.endswith("w200")
    with kit.db() as db:
        note = db.execute("SELECT role, content, audience FROM messages m JOIN conversations c ON c.id = m.conversation_id "
                          "WHERE c.public_id = ? ORDER BY m.id DESC LIMIT 1", (thread_id,)).fetchone()
    assert tuple(note) == ("system", "The user cancelled the stream. Stop responding to the prior request.", "model")
    assert all(item.type != "sdk_hidden_context" for item in stored())

    alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("history")})
    assert kit.model_requests()[-1]["messages"][-2]["content"].startswith("The user cancelled the stream")


def test_another_users_threads_look_missing(kit):
    alice, bob = Session(kit, "kit-owner"), Session(kit, "kit-intruder")
    created = alice.stream("threads.create", {"input": user_input("private")})
    thread_id, item_id = created[0].thread.id, created[1].item.id
    before = kit.row_counts()
    for type_, params in [("threads.get_by_id", {"thread_id": thread_id}),
                          ("items.list", {"thread_id": thread_id}),
                          ("threads.update", {"thread_id": thread_id, "title": "mine now"}),
                          ("threads.delete", {"thread_id": thread_id}),
                          ("items.feedback", {"thread_id": thread_id, "item_ids": [item_id], "kind": "positive"}),
                          ("threads.add_user_message", {"thread_id": thread_id, "input": user_input("hi")}),
                          ("threads.retry_after_item", {"thread_id": thread_id, "item_id": item_id}),
                          ("threads.get_by_id", {"thread_id": "thr_doesnotexist"})]:
        response = bob.post(type_, params)
        assert response.status_code == 404 and response.json() == {"detail": "thread not found"}, type_
    assert bob.json("threads.list", {}, THREADS).data == []
    assert kit.row_counts() == before


@pytest.mark.parametrize("raw,status", [
    (b"{nope", 400),
    (b"[]", 422),
    (json.dumps({"type": "threads.list"}).encode(), 422),
    (json.dumps({"type": "threads.explode", "params": {}}).encode(), 400),
    (json.dumps({"type": "threads.create", "params": {}}).encode(), 422),
    (json.dumps({"type": "threads.create", "params": {"input": {"content": []}}}).encode(), 422),
    (json.dumps({"type": "threads.create", "params": {"input": {"content": [{"type": "input_text", "text": 5}]}}}).encode(), 422),
    (json.dumps({"type": "threads.list", "params": {"limit": "ten"}}).encode(), 422),
    (json.dumps({"type": "threads.list", "params": {"order": "sideways"}}).encode(), 422),
    (json.dumps({"type": "threads.list", "params": {"after": "thr_unknown"}}).encode(), 404),
    (json.dumps({"type": "items.feedback", "params": {"thread_id": "thr_x", "item_ids": "all", "kind": "meh"}}).encode(), 404),
    (json.dumps({"type": "threads.add_structured_input", "params": {"thread_id": "thr_x"}}).encode(), 400),
    (json.dumps({"type": "input.transcribe", "params": {"audio_base64": "", "mime_type": "audio/webm"}}).encode(), 422),
    (json.dumps({"type": "threads.create", "params": {"input": {**user_input("x"), "quoted_text": 5}}}).encode(), 422),
    (json.dumps({"type": "threads.create", "params": {"input": {**user_input("x"), "inference_options": "fast"}}}).encode(), 422),
    (json.dumps({"type": "threads.create", "params": {"input": {**user_input("x"), "inference_options": {"model": 5}}}}).encode(), 422),
    (json.dumps({"type": "threads.create",
                 "params": {"input": {**user_input("x"), "inference_options": {"tool_choice": "auto"}}}}).encode(), 422),
    (json.dumps({"type": "threads.create",
                 "params": {"input": {**user_input("x"), "inference_options": {"tool_choice": {"id": 3}}}}}).encode(), 422),
])
def test_bad_requests_get_a_4xx_and_store_nothing(kit, raw, status):
    session = Session(kit, "kit-bad")
    before = kit.row_counts()
    response = session.post(None, None, raw=raw)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert kit.row_counts() == before


def test_inference_options_are_stored_in_the_sdks_shape(kit):
    alice = Session(kit, "kit-options")
    options = {"model": "gpt-x", "tool_choice": {"id": "add_task", "extra": 1}, "unknown": True}
    thread_id = alice.stream("threads.create", {"input": {**user_input("hi"), "inference_options": options}})[0].thread.id
    items = alice.post("items.list", {"thread_id": thread_id, "order": "asc"}).json()["data"]
    assert items[0]["inference_options"] == {"tool_choice": {"id": "add_task"}, "model": "gpt-x"}
    nulls = {"model": None, "tool_choice": None}
    thread_id = alice.stream("threads.create", {"input": {**user_input("hi"), "inference_options": nulls}})[0].thread.id
    assert alice.post("items.list", {"thread_id": thread_id}).json()["data"][-1]["inference_options"] == {}


@pytest.mark.parametrize("content_type,status", [(None, 200), ("text/plain;charset=UTF-8", 200),
                                                 ("Application/JSON", 200), ("application/xml", 415)])
def test_the_body_is_read_as_json_whatever_its_label(kit, content_type, status):
    """The official server ignores the label, and the ChatKit client's own is not documented."""
    session = Session(kit, "kit-labels")
    response = session.http.post("/api/chatkit", content=json.dumps({"type": "threads.list", "params": {}}),
                                 headers={} if content_type is None else {"Content-Type": content_type})
    assert response.request.headers.get("content-type") == content_type
    assert response.status_code == status, response.text
    if status == 200:
        THREADS.validate_json(response.content)


def test_feedback_names_at_most_a_page_of_items(kit):
    alice = Session(kit, "kit-feedback")
    created = alice.stream("threads.create", {"input": user_input("hello")})
    thread_id, answer_id = created[0].thread.id, created[-2].item.id
    response = alice.post("items.feedback", {"thread_id": thread_id, "kind": "negative",
                                             "item_ids": [f"msg_{n}" for n in range(101)]})
    assert response.status_code == 422 and "at most 100" in response.json()["detail"]
    repeated = alice.post("items.feedback", {"thread_id": thread_id, "kind": "positive", "item_ids": [answer_id] * 500})
    assert repeated.status_code == 200
    with kit.db() as db:
        assert db.execute("SELECT count(*) FROM feedback f JOIN messages m ON m.id = f.message_id "
                          "WHERE m.public_id = ?", (answer_id,)).fetchone()[0] == 1


def test_every_item_has_the_same_time_in_the_stream_and_in_the_store(kit):
    alice = Session(kit, "kit-times")
    events = alice.stream("threads.create", {"input": user_input("add milk")})
    thread_id = events[0].thread.id
    # Records 50 ms apart: an answer is stored well after it was added.
    events += alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("slow 3")})
    streamed = {e.item.id: e.item.created_at for e in events if e.type in ("thread.item.added", "thread.item.done")}
    added = {e.item.id: e.item.created_at for e in events if e.type == "thread.item.added"}
    assert {e.item.type for e in events if e.type == "thread.item.done"} >= {"user_message", "workflow", "assistant_message"}
    stored = {item.id: item.created_at for item in alice.json("items.list", {"thread_id": thread_id}, ITEMS).data}
    assert stored == streamed
    assert all(streamed[item_id] == time for item_id, time in added.items())


def test_pre_stream_failures_are_4xx_not_dropped_streams(kit):
    alice = Session(kit, "kit-pre")
    created = alice.stream("threads.create", {"input": user_input("hello")})
    thread_id = created[0].thread.id
    answer_id = created[-2].item.id
    assert alice.post("threads.retry_after_item", {"thread_id": thread_id, "item_id": "msg_missing"}).status_code == 404
    assert alice.post("threads.retry_after_item", {"thread_id": thread_id, "item_id": answer_id}).status_code == 400
    assert alice.post("threads.add_client_tool_output", {"thread_id": thread_id, "result": {}}).status_code == 400
    assert alice.post("threads.add_user_message", {"thread_id": "thr_nope", "input": user_input("x")}).status_code == 404


def test_model_made_titles_are_an_option():
    stack = Stack(with_nginx=True, extra_env={"CHATKIT_TITLES": "model"})
    try:
        events = Session(stack, "kit-titles").stream("threads.create", {"input": user_input("plan my week")})
        assert events[-1].type == "thread.updated"
        title_request = stack.model_requests()[-1]["messages"]
        assert title_request[0]["role"] == "system" and "title" in title_request[0]["content"]
        assert events[-1].thread.title == "You said: plan my week"
    finally:
        stack.stop()
