"""A newcomer's first conversation through nginx: todo commands in plain words, answers in sentences.

The module has a database of its own, so the first task is task 1.
"""

import json


def say(client, headers, text, conversation_id=None):
    """Sends one message to /api/chat; returns the conversation's id and the answer's text."""
    body = {"messages": [{"role": "user", "content": text}], "conversation_id": conversation_id}
    with client.stream("POST", "/api/chat", json=body, headers=headers) as response:
        assert response.status_code == 200
        records = [json.loads(line[len("data: "):]) for line in response.iter_lines() if line.startswith("data: {")]
    answer = "".join(choice["delta"].get("content") or ""
                     for record in records if record.get("object") == "chat.completion.chunk"
                     for choice in record["choices"])
    return int(response.headers["x-conversation-id"]), answer


def test_a_first_conversation_reads_like_one(client, alice):
    conversation, answer = say(client, alice, "add buy milk")
    assert answer == "Added task 1: buy milk."

    def reply(text):
        return say(client, alice, text, conversation)[1]

    assert reply("complete task 1") == "Completed task 1: buy milk."
    assert reply("list") == "You have 1 task: 1. buy milk (done)."
    assert reply("Add walk the dog and call mum.") == "Added task 2: walk the dog. Added task 3: call mum."
    assert reply("show my pending tasks") == "You have 2 pending tasks: 2. walk the dog (pending); 3. call mum (pending)."
    assert reply("rename task 3 to call dad") == "Updated task 3: call dad."
    assert reply("remove task #2") == "Deleted task 2: walk the dog."
    assert reply("what are my tasks?") == "You have 2 tasks: 1. buy milk (done); 3. call dad (pending)."
    assert reply("list completed") == "You have 1 completed task: 1. buy milk (done)."
    assert reply("mark task 7 as done") == "Sorry, that did not work: task 7 not found."
    assert reply("hello") == "You said: hello"


def test_another_users_tasks_are_not_found(client, alice, bob):
    say(client, alice, "add alice's secret")
    assert say(client, bob, "list my tasks")[1] == "You have no tasks."
    assert say(client, bob, "delete task 1")[1] == "Sorry, that did not work: task 1 not found."
    assert say(client, bob, "list pending")[1] == "You have no pending tasks."
