"""Two responder processes on one database behind one nginx upstream: many hosts, on one machine.

Requests are self-contained, so whichever responder serves a request finds what the other
stored. Each test sends its steps to one responder's socket or the other's (straight through
FastCGI, as nginx would), so it cannot pass by both steps landing on the same process.
"""

import json
import subprocess

import pytest

from harness import Stack, fastcgi_post, hs256_token, sse_payloads

CLIENT_TOOLS = [{"name": "get_selection", "description": "The todos selected in the page",
                 "parameters": {"type": "object", "properties": {"scope": {"type": "string"}}}}]


@pytest.fixture(scope="module")
def hosts(database_kind):
    started = Stack(responders=2, extra_env={"CHATKIT_CLIENT_TOOLS": json.dumps(CLIENT_TOOLS)}, database=database_kind)
    yield started
    started.stop()


def chat(socket, token, text, conversation_id=None):
    status, headers, body = fastcgi_post(socket, "/api/chat", {"messages": [{"role": "user", "content": text}],
                                                               "conversation_id": conversation_id}, token)
    assert status == 200, body
    records = sse_payloads(body)
    assert records[-1] == "[DONE]"
    text = "".join(choice["delta"].get("content") or "" for record in records if isinstance(record, dict)
                   for choice in record.get("choices", []))
    return int(headers["x-conversation-id"]), text


def chatkit(socket, token, type_, params):
    status, headers, body = fastcgi_post(socket, "/api/chatkit", {"type": type_, "params": params}, token)
    assert status == 200, body
    return sse_payloads(body) if headers["content-type"].startswith("text/event-stream") else json.loads(body)


def user_input(text):
    return {"content": [{"type": "input_text", "text": text}], "attachments": [], "inference_options": {}}


def test_a_conversation_started_on_one_host_continues_on_the_other_with_its_whole_history(hosts):
    first, second = hosts.sockets
    token = hs256_token("many-chat")
    conversation_id, answer = chat(first, token, "add buy milk")
    task_id = int(answer.removeprefix("Added task ").split(":")[0])
    assert answer == f"Added task {task_id}: buy milk."
    same, answer = chat(second, token, "history", conversation_id)
    # system prompt, the first user message, the tool call, its result, the answer, this message
    assert same == conversation_id and answer == "I received 6 messages."
    _, answer = chat(first, token, f"complete task {task_id}", conversation_id)
    assert answer == f"Completed task {task_id}: buy milk."


def test_a_chatkit_thread_made_on_one_host_is_listed_read_renamed_and_deleted_on_the_other(hosts):
    first, second = hosts.sockets
    token = hs256_token("many-kit")
    events = chatkit(first, token, "threads.create", {"input": user_input("hello there")})
    thread_id = next(event["thread"]["id"] for event in events if event["type"] == "thread.created")
    listed = chatkit(second, token, "threads.list", {})
    assert [thread["id"] for thread in listed["data"]] == [thread_id]
    read = chatkit(second, token, "threads.get_by_id", {"thread_id": thread_id})
    assert [item["type"] for item in read["items"]["data"]] == ["user_message", "assistant_message"]
    renamed = chatkit(second, token, "threads.update", {"thread_id": thread_id, "title": "Renamed elsewhere"})
    assert renamed["title"] == "Renamed elsewhere"
    assert chatkit(first, token, "threads.get_by_id", {"thread_id": thread_id})["title"] == "Renamed elsewhere"
    assert chatkit(second, token, "threads.delete", {"thread_id": thread_id}) == {}
    status, _, _ = fastcgi_post(first, "/api/chatkit", {"type": "threads.get_by_id", "params": {"thread_id": thread_id}},
                                token)
    assert status == 404


def test_a_client_tool_call_made_on_one_host_is_answered_on_the_other(hosts):
    first, second = hosts.sockets
    token = hs256_token("many-client-tool")
    events = chatkit(first, token, "threads.create", {"input": user_input("use get_selection")})
    thread_id = next(event["thread"]["id"] for event in events if event["type"] == "thread.created")
    call = [event["item"] for event in events if event["type"] == "thread.item.done"][-1]
    assert call["type"] == "client_tool_call" and call["status"] == "pending"
    events = chatkit(second, token, "threads.add_client_tool_output", {"thread_id": thread_id, "result": {"selected": [3]}})
    done = [event["item"] for event in events if event["type"] == "thread.item.done"]
    assert done[-1]["content"][0]["text"] == 'The get_selection tool returned {"selected":[3]}.'
    # Answered once, wherever the second answer goes.
    status, _, _ = fastcgi_post(first, "/api/chatkit", {"type": "threads.add_client_tool_output",
                                                        "params": {"thread_id": thread_id, "result": {}}}, token)
    assert status == 400


def test_tasks_added_over_mcp_on_one_host_are_listed_by_the_agent_on_the_other(hosts):
    first, second = hosts.sockets
    token = hs256_token("many-mcp")
    ids = []
    for title in ("walk the dog", "water plants"):
        status, _, body = fastcgi_post(first, "/api/mcp", {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                           "params": {"name": "add_task", "arguments": {"title": title}}},
                                       token)
        assert status == 200 and not json.loads(body)["result"]["isError"], body
        ids.append(json.loads(body)["result"]["structuredContent"]["task_id"])
    _, answer = chat(second, token, "list")
    assert answer == f"You have 2 tasks: {ids[0]}. walk the dog (pending); {ids[1]}. water plants (pending)."


def test_hosts_that_migrate_at_once_migrate_once(hosts):
    """Four processes migrate one empty database at the same moment: all succeed, and the
    schema is made once (a second run of a step would fail on the tables the first made)."""
    fresh = {**hosts.env, "DATABASE_URL": hosts.fresh_database_url()}
    migrations = [subprocess.Popen([hosts.binary, "migrate"], env=fresh, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True) for _ in range(4)]
    outcomes = [(process.wait(30), *process.communicate()) for process in migrations]
    assert all(code == 0 for code, _, _ in outcomes), outcomes
    versions = {out.strip().rsplit(" ", 1)[-1] for _, out, _ in outcomes}
    assert len(versions) == 1, outcomes
    served = Stack(responders=2, with_nginx=False, extra_env={"DATABASE_URL": fresh["DATABASE_URL"]})
    try:
        conversation_id, answer = chat(served.sockets[0], hs256_token("fresh"), "hello")
        assert answer == "You said: hello" and conversation_id == 1
    finally:
        served.stop()
