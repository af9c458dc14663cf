"""Running it in production: health checks, metrics, request ids, per-user limits and budgets,
upstream retries, and the token checks a JWKS needs."""

import json
import re
import subprocess
import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import postgres
from harness import Stack, hs256_token, wait_until


def chat(stack, user, text, conversation_id=None, timeout=30):
    with httpx.Client(base_url=stack.base_url, timeout=timeout) as http:
        return http.post("/api/chat", headers={"Authorization": f"Bearer {hs256_token(user)}"},
                         json={"messages": [{"role": "user", "content": text}], "conversation_id": conversation_id})


def answer_text(response):
    return "".join(choice["delta"].get("content") or "" for line in response.text.splitlines() if line.startswith("data: {")
                   for choice in json.loads(line[6:]).get("choices", []))


def metrics(stack):
    """Every sample, keyed by name and its labels, as Prometheus' own parser reads them."""
    text = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---------------------------------------------------------------------------- health


def test_live_and_ready_answer_without_a_token(stack, client):
    live = client.get("/livez")
    assert live.status_code == 200 and live.json() == {"status": "live"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert client.post("/readyz").status_code == 405


def test_ready_turns_503_while_the_database_is_away_and_back_after(database_kind):
    if database_kind != "postgres":
        pytest.skip("an SQLite file does not go away on its own")
    server = postgres.PostgresServer()
    stack = Stack(extra_env={"DATABASE_URL": server.url(server.create_database())})
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            assert http.get("/readyz").status_code == 200
            server.stop("fast")
            down = http.get("/readyz")
            assert down.status_code == 503 and down.json() == {"detail": "the database does not answer"}
            assert down.headers["retry-after"] == "1"
            assert http.get("/livez").status_code == 200
            server.start()
            assert http.get("/readyz").status_code == 200
    finally:
        stack.stop()
        server.destroy()


# ---------------------------------------------------------------------------- metrics and ids


def test_metrics_are_prometheus_text_whose_values_move_with_requests(stack, client, alice):
    before = metrics(stack)
    assert answer_text(chat(stack, "metrics-user", "add water plants")).startswith("Added task ")
    assert client.post("/api/chat", headers=alice, json={"messages": []}).status_code == 422
    after = metrics(stack)
    assert sample(after, "chatkit_requests_total", face="chat", status="200") == \
        sample(before, "chatkit_requests_total", face="chat", status="200") + 1
    assert sample(after, "chatkit_requests_total", face="chat", status="422") == \
        sample(before, "chatkit_requests_total", face="chat", status="422") + 1
    assert sample(after, "chatkit_request_duration_seconds_count", face="chat") >= \
        sample(before, "chatkit_request_duration_seconds_count", face="chat") + 2
    # Two model calls: the tool call, then the answer.
    calls = ("gen_ai_client_operation_duration_seconds_count", {"gen_ai_request_model": "mock-model", "error_type": ""})
    assert sample(after, calls[0], **calls[1]) == sample(before, calls[0], **calls[1]) + 2
    assert sample(after, "gen_ai_client_operation_time_to_first_chunk_seconds_count", gen_ai_request_model="mock-model") \
        == sample(before, "gen_ai_client_operation_time_to_first_chunk_seconds_count", gen_ai_request_model="mock-model") + 2
    for kind in ("input", "output"):
        assert sample(after, "gen_ai_client_token_usage_total", gen_ai_token_type=kind) > \
            sample(before, "gen_ai_client_token_usage_total", gen_ai_token_type=kind)
    assert sample(after, "chatkit_tool_calls_total", tool="add_task", outcome="ok") == \
        sample(before, "chatkit_tool_calls_total", tool="add_task", outcome="ok") + 1
    for name in ("process_resident_memory_bytes", "process_open_fds", "process_max_fds", "process_cpu_seconds_total",
                 "process_start_time_seconds"):
        assert sample(after, name) > 0, name
    assert not any("metrics-user" in str(key) for key in after), "a user id became a label"


def test_open_streams_and_busy_workers_are_counted_while_they_last(stack):
    responses = {}
    slow = threading.Thread(target=lambda: responses.update(slow=chat(stack, "gauge-user", "slow 20")))
    slow.start()
    wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="the slow answer to start")
    during = metrics(stack)
    slow.join(30)
    assert sample(during, "chatkit_inflight_streams") == 1
    assert sample(during, "chatkit_requests_in_flight") >= 1
    assert sample(metrics(stack), "chatkit_inflight_streams") == 0


def test_every_answer_carries_its_request_id_and_the_log_line_names_it(stack, client, alice):
    response = client.post("/api/chat", headers=alice, json={"messages": [{"role": "user", "content": "hello"}]})
    request_id = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id), request_id  # nginx's $request_id
    wait_until(lambda: f"id={request_id} POST /api/chat 200" in stack.responder.output(), what="the log line")
    assert client.get("/api/nowhere").headers["x-request-id"] != request_id


# ---------------------------------------------------------------------------- limits


def test_a_user_has_at_most_the_configured_streams_at_once(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_USER_MAX_STREAMS": "1"})
    try:
        responses = {}
        first = threading.Thread(target=lambda: responses.update(first=chat(stack, "streamer", "slow 10")))
        first.start()
        wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="the first answer to start")
        rows = stack.row_counts()
        second = chat(stack, "streamer", "hello")
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json() == {"detail": "too many answers at once: at most 1 per user"}
        assert stack.row_counts() == rows, "a refused request stored something"
        assert chat(stack, "someone-else", "hello").status_code == 200
        first.join(30)
        assert responses["first"].status_code == 200
        assert chat(stack, "streamer", "hello").status_code == 200, "the place was not given back"
        assert sample(metrics(stack), "chatkit_ratelimited_total", limit="streams") == 1
    finally:
        stack.stop()


def test_requests_per_window_are_limited_and_counted_down_in_headers(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_USER_REQUESTS": "3",
                                                     "CHATKIT_USER_REQUESTS_WINDOW_SECONDS": "2"})
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            kit = {"Authorization": f"Bearer {hs256_token('counted')}"}
            list_threads = {"type": "threads.list", "params": {}}
            # Start at a window's beginning, so all four requests fall in one.
            time.sleep(2 - time.time() % 2 + 0.05)
            remaining = [http.post("/api/chatkit", headers=kit, json=list_threads).headers["x-ratelimit-remaining-requests"]
                         for _ in range(3)]
            assert remaining == ["2", "1", "0"]
            refused = http.post("/api/chatkit", headers=kit, json=list_threads)
            assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 2
            assert refused.json()["detail"] == "too many requests: at most 3 in 2 s"
            time.sleep(int(refused.headers["retry-after"]))
            again = http.post("/api/chatkit", headers=kit, json=list_threads)
            assert again.status_code == 200 and again.headers["x-ratelimit-limit-requests"] == "3"
    finally:
        stack.stop()


def test_the_daily_token_budget_is_charged_kept_across_a_restart_and_renewed_with_the_day(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_USER_TOKENS_PER_DAY": "100"})
    try:
        first = chat(stack, "spender", "hello")
        assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "100"
        assert first.headers["x-ratelimit-remaining-tokens"] == "100"
        # Each answer uses about 45 tokens: two fit, the third finds the budget spent.
        assert chat(stack, "spender", "hello").status_code == 200
        assert chat(stack, "spender", "hello").status_code == 200
        with stack.db() as db:
            used = db.execute("SELECT tokens FROM token_usage WHERE user_id = 'spender'").fetchone()[0]
        assert used >= 100
        stack.responder.stop()
        stack.responder = stack.start_responder()
        refused = chat(stack, "spender", "hello")
        assert refused.status_code == 429 and refused.json() == {"detail": "the daily token budget (100) is used up"}
        assert 0 < int(refused.headers["retry-after"]) <= 86_400
        assert chat(stack, "saver", "hello").status_code == 200
        # The next day starts a new count.
        with stack.db() as db:
            db.execute("UPDATE token_usage SET day = '2000-01-01' WHERE user_id = 'spender'")
            if database_kind == "sqlite":
                db.commit()
        assert chat(stack, "spender", "hello").status_code == 200
    finally:
        stack.stop()


def test_a_stream_cut_short_is_charged_what_it_used(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_USER_TOKENS_PER_DAY": "100000"})
    try:
        response = chat(stack, "cutter", "truncate")
        assert response.status_code == 200
        with stack.db() as db:
            wait_until(lambda: db.execute("SELECT count(*) FROM token_usage WHERE user_id = 'cutter'").fetchone()[0] == 1,
                       what="the charge")
            assert db.execute("SELECT tokens FROM token_usage WHERE user_id = 'cutter'").fetchone()[0] > 0
    finally:
        stack.stop()


def test_history_and_tool_results_sent_to_the_model_are_bounded(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_HISTORY_MAX_BYTES": "4096",
                                                     "CHATKIT_TOOL_RESULT_MAX_BYTES": "2048"})
    try:
        token = hs256_token("bounded")
        with httpx.Client(base_url=stack.base_url, timeout=30) as http:
            for n in range(60):
                added = http.post("/api/mcp", headers={"Authorization": f"Bearer {token}"},
                                  json={"jsonrpc": "2.0", "id": n, "method": "tools/call",
                                        "params": {"name": "add_task", "arguments": {"title": f"task number {n}"}}})
                assert not added.json()["result"]["isError"]
        listed = chat(stack, "bounded", "list")
        results = [json.loads(line[6:]) for line in listed.text.splitlines() if '"type":"tool_result"' in line]
        assert results[0]["result"]["note"].startswith("showing the newest ")
        assert results[0]["result"]["items"][-1]["title"] == "task number 59"
        sent = stack.model_requests()[-1]["messages"][-1]
        assert sent["role"] == "tool" and len(sent["content"].encode()) <= 2048
        assert answer_text(listed).startswith("Your list is long (showing the newest ")
        # A long conversation: the model is sent its newest messages only.
        conversation_id = int(listed.headers["x-conversation-id"])
        for _ in range(4):
            assert chat(stack, "bounded", "x" * 1500, conversation_id).status_code == 200
        history = chat(stack, "bounded", "history", conversation_id)
        count = int(re.search(r"I received (\d+) messages", answer_text(history))[1])
        assert count < 10, count
        assert sum(len((message.get("content") or "").encode()) for message in stack.model_requests()[-1]["messages"][1:]) <= 4096
    finally:
        stack.stop()


def test_a_user_keeps_at_most_the_configured_tasks(database_kind):
    stack = Stack(database=database_kind, extra_env={"CHATKIT_USER_MAX_TASKS": "2"})
    try:
        with httpx.Client(base_url=stack.base_url, timeout=10) as http:
            def add(title):
                return http.post("/api/mcp", headers={"Authorization": f"Bearer {hs256_token('hoarder')}"},
                                 json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                       "params": {"name": "add_task", "arguments": {"title": title}}}).json()["result"]
            assert not add("one")["isError"] and not add("two")["isError"]
            full = add("three")
            assert full["isError"] and full["content"][0]["text"] == "the todo list is full (2 tasks): delete some first"
        assert stack.row_counts()["tasks"] == 2
    finally:
        stack.stop()


# ---------------------------------------------------------------------------- retries


def test_a_call_that_fails_before_any_output_is_retried_until_it_succeeds(stack):
    started = stack.model_stats()["requests"]
    before = sample(metrics(stack), "chatkit_upstream_retries_total")
    response = chat(stack, "retry-user", "flaky 2 503")
    assert response.status_code == 200 and answer_text(response) == "Recovered after 2 failed attempts."
    assert stack.model_stats()["requests"] - started == 3
    assert sample(metrics(stack), "chatkit_upstream_retries_total") == before + 2
    wait_until(lambda: "retries=2" in stack.responder.output(), what="the log line")
    # A connection closed before any answer is retried too.
    assert answer_text(chat(stack, "retry-user", "flaky 1 reset")) == "Recovered after 1 failed attempts."


def test_retries_honour_retry_after_and_stop_at_the_limit(stack):
    started = time.monotonic()
    assert answer_text(chat(stack, "retry-after", "flaky 1 429")) == "Recovered after 1 failed attempts."
    assert time.monotonic() - started >= 0.95, "Retry-After: 1 was not waited for"
    requests = stack.model_stats()["requests"]
    gave_up = chat(stack, "retry-limit", "flaky 5 502")
    assert gave_up.status_code == 502 and stack.model_stats()["requests"] - requests == 3


def test_a_refused_request_or_a_started_answer_is_never_sent_again(stack):
    requests = stack.model_stats()["requests"]
    refused = chat(stack, "no-retry", "flaky 1 400")
    assert refused.status_code == 502 and stack.model_stats()["requests"] - requests == 1
    requests = stack.model_stats()["requests"]
    broken = chat(stack, "no-retry", "midstream error")
    assert broken.status_code == 200 and answer_text(broken).startswith("partial answer")
    assert stack.model_stats()["requests"] - requests == 1


# ---------------------------------------------------------------------------- token checks


def test_a_jwks_without_issuer_and_audience_is_refused(stack, tmp_path):
    keys = tmp_path / "jwks.json"
    keys.write_text('{"keys": []}')
    env = {**stack.env, "BETTER_AUTH_SECRET": "", "JWT_JWKS_FILE": str(keys)}
    refused = subprocess.run([stack.binary, "check-config"], env=env, capture_output=True, text=True)
    assert refused.returncode == 78 and "set JWT_ISSUER and JWT_AUDIENCE too" in refused.stderr
    accepted = subprocess.run([stack.binary, "check-config"], capture_output=True, text=True,
                              env={**env, "JWT_ISSUER": "https://app.example", "JWT_AUDIENCE": "https://app.example"})
    assert "set JWT_ISSUER and JWT_AUDIENCE too" not in accepted.stderr
