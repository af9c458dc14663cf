"""PostgreSQL's own failures, each with a clear answer, nothing half-written, and recovery
without a restart; and the store behind PgBouncer's transaction pooling, as hosted poolers run."""

import json
import subprocess
import threading
import time

import httpx
import pytest

import postgres
from harness import Stack, hs256_token, read_sse, wait_until


@pytest.fixture(autouse=True)
def only_on_postgres(database_kind):
    if database_kind != "postgres":
        pytest.skip("PostgreSQL's own behaviour")


def chat(stack, user, text, timeout=30):
    with httpx.Client(base_url=stack.base_url, timeout=timeout) as http:
        return http.post("/api/chat", headers={"Authorization": f"Bearer {hs256_token(user)}"},
                         json={"messages": [{"role": "user", "content": text}]})


def answer_text(response):
    return "".join(choice["delta"].get("content") or "" for line in response.text.splitlines() if line.startswith("data: {")
                   for choice in json.loads(line[6:]).get("choices", []))


@pytest.fixture(scope="module")
def own_server(database_kind):
    """A server of this module's own, which its tests stop and start."""
    if database_kind != "postgres":
        yield None
        return
    server = postgres.PostgresServer()
    yield server
    server.destroy()


def stack_on(server, **env):
    name = server.create_database()
    return Stack(extra_env={"DATABASE_URL": server.url(name), **env})


def test_an_unreachable_database_stops_check_config_and_serve_plainly(stack):
    env = {**stack.env, "DATABASE_URL": "postgresql://todo:hunter2-secret@127.0.0.1:1/todo_db?connect_timeout=2"}
    for command in (["check-config"], ["serve", "--socket", stack.dir + "/never.sock"], ["migrate"]):
        done = subprocess.run([stack.binary, *command], env=env, capture_output=True, text=True, timeout=30)
        said = done.stdout + done.stderr
        assert done.returncode != 0, command
        assert "postgresql://todo:***@127.0.0.1:1/todo_db" in said and "Connection refused" in said, said
        assert "hunter2" not in said


def test_a_stopped_database_is_503_before_the_stream_an_error_record_after_and_no_restart_is_needed(own_server):
    stack = stack_on(own_server)
    try:
        assert answer_text(chat(stack, "pg-down", "hello")) == "You said: hello"
        # Mid-stream: the answer's words flow while the server goes away under them.
        responses = {}
        slow = threading.Thread(target=lambda: responses.update(slow=chat(stack, "pg-down", "slow 30")))
        slow.start()
        wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="the slow answer to start")
        own_server.stop("fast")
        slow.join(30)
        records = [line[6:] for line in responses["slow"].text.splitlines() if line.startswith("data: ")]
        assert responses["slow"].status_code == 200 and records[-1] == "[DONE]"
        assert json.loads(records[-2]) == {"type": "error", "code": "internal_error",
                                           "detail": "storage is temporarily unavailable; retry"}
        # Before the stream: a status the client can act on.
        down = chat(stack, "pg-down", "hello again")
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json() == {"detail": "storage is temporarily unavailable; retry"}
        own_server.start()
        back = chat(stack, "pg-down", "hello once more")
        assert back.status_code == 200 and answer_text(back) == "You said: hello once more"
        with stack.db() as db:
            # The turn cut by the outage kept its user message; the refused one stored nothing.
            users = [row[0] for row in db.execute("SELECT content FROM messages WHERE role = 'user' ORDER BY id")]
        assert users == ["hello", "slow 30", "hello once more"]
    finally:
        stack.stop()


def hold_lock(url, table):
    """Holds an exclusive lock on `table` until the returned function is called."""
    locker = postgres.psycopg.connect(url)
    locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    return locker.rollback


def test_a_statement_that_waits_past_the_timeout_is_503_and_writes_nothing(stack):
    timed = Stack(extra_env={"DATABASE_URL": stack.database_url, "CHATKIT_DB_STATEMENT_TIMEOUT_MS": "300"}, with_nginx=True)
    try:
        before = stack.row_counts()
        release = hold_lock(stack.database_url, "conversations")
        started = time.monotonic()
        try:
            refused = chat(timed, "pg-timeout", "hello")
        finally:
            release()
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert time.monotonic() - started < 3
        assert stack.row_counts() == before
        assert answer_text(chat(timed, "pg-timeout", "hello")) == "You said: hello"
    finally:
        timed.stop()


def test_a_request_waits_a_bounded_time_for_a_busy_pool_then_is_503(stack):
    small = Stack(extra_env={"DATABASE_URL": stack.database_url, "CHATKIT_DB_POOL_SIZE": "1",
                             "CHATKIT_DB_POOL_WAIT_MS": "300", "CHATKIT_DB_STATEMENT_TIMEOUT_MS": "5000"})
    try:
        release = hold_lock(stack.database_url, "conversations")
        try:
            # The first request takes the only connection and waits on the lock...
            held = {}
            first = threading.Thread(target=lambda: held.update(first=chat(small, "pg-pool", "first")))
            first.start()
            wait_until(lambda: "chatkit-fcgi" in lock_waiters(stack.database_url), what="the first request to wait")
            # ...so the second finds no connection for 300 ms.
            started = time.monotonic()
            second = chat(small, "pg-pool", "second")
            waited = time.monotonic() - started
        finally:
            release()
        first.join(10)
        assert second.status_code == 503 and second.headers["retry-after"] == "1"
        assert 0.25 < waited < 3
        assert held["first"].status_code == 200 and answer_text(held["first"]) == "You said: first"
        assert "every database connection is busy" in small.responder.output()
    finally:
        small.stop()


def lock_waiters(url):
    with postgres.psycopg.connect(url, autocommit=True) as watcher:
        return [row[0] for row in watcher.execute(
            "SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock'")]


def test_the_store_works_through_pgbouncer_in_transaction_pooling_mode(stack):
    server = postgres.shared()
    name = server.create_database()
    bouncer = postgres.PgBouncer(server, name, pool_size=2)
    pooled = Stack(extra_env={"DATABASE_URL": bouncer.url(name), "CHATKIT_DB_POOL_SIZE": "6"})
    try:
        with httpx.Client(base_url=pooled.base_url, timeout=30) as http:
            alice = {"Authorization": f"Bearer {hs256_token('pooled')}"}
            # More connections on our side than server connections behind PgBouncer: every
            # transaction may land on another one, and nothing may depend on the last.
            answers = []
            workers = [threading.Thread(target=lambda n=n: answers.append(answer_text(http.post(
                "/api/chat", headers=alice, json={"messages": [{"role": "user", "content": f"add task {n}"}]}))))
                for n in range(6)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join(30)
            assert sorted(answer.split(": ")[1] for answer in answers) == [f"{n}." for n in range(6)]
            listed = http.post("/api/chatkit", headers=alice, json={"type": "threads.list", "params": {"limit": 100}})
            assert listed.status_code == 200 and len(listed.json()["data"]) == 6
            tools = http.post("/api/mcp", headers=alice, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                                               "params": {"name": "list_tasks", "arguments": {}}})
            assert len(tools.json()["result"]["structuredContent"]["tasks"]) == 6
    finally:
        pooled.stop()
        bouncer.stop()
        server.drop_database(name)


def test_libpq_s_own_variables_fill_in_what_the_url_leaves_out(stack):
    server = postgres.shared()
    name = server.create_database()
    plain = Stack(extra_env={"DATABASE_URL": "postgresql://", "PGHOST": "127.0.0.1", "PGPORT": str(server.port),
                             "PGDATABASE": name, "PGUSER": "postgres", "PGAPPNAME": "ignored"})
    try:
        assert answer_text(chat(plain, "pg-env", "add buy bread")).startswith("Added task ")
        with server.connect(name) as db:
            assert db.execute("SELECT title FROM tasks").fetchall() == [("buy bread",)]
    finally:
        plain.stop()
        server.drop_database(name)
