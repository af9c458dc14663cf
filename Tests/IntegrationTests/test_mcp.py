"""/api/mcp through nginx with the official Python MCP client (mcp 2.3.0)."""

import json

import httpx
import httpx2
import pytest
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from harness import hs256_token

pytestmark = pytest.mark.anyio
TOOLS = ["add_task", "list_tasks", "complete_task", "delete_task", "update_task"]


@pytest.fixture
def anyio_backend():
    return "asyncio"


def connect(stack, user, mode="auto"):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {hs256_token(user)}"}, timeout=httpx2.Timeout(30))
    return http, Client(streamable_http_client(f"{stack.base_url}/api/mcp", http_client=http), mode=mode)


async def test_the_official_client_lists_and_calls_every_tool(stack):
    http, client = connect(stack, "mcp-alice")
    async with http, client:
        assert client.protocol_version == "2025-11-25"
        tools = (await client.list_tools()).tools
        assert [tool.name for tool in tools] == TOOLS
        by_name = {tool.name: tool for tool in tools}
        assert by_name["add_task"].input_schema["required"] == ["title"]
        assert by_name["list_tasks"].output_schema["properties"]["tasks"]["type"] == "array"
        assert by_name["list_tasks"].annotations.read_only_hint is True
        assert by_name["delete_task"].annotations.destructive_hint is True

        added = await client.call_tool("add_task", {"title": "from mcp", "description": "via the client"})
        assert not added.is_error
        task_id = added.structured_content["task_id"]
        assert added.structured_content == {"task_id": task_id, "status": "created", "title": "from mcp"}
        assert json.loads(added.content[0].text) == added.structured_content

        listed = await client.call_tool("list_tasks", {"status": "pending"})
        assert [t["title"] for t in listed.structured_content["tasks"]] == ["from mcp"]
        updated = await client.call_tool("update_task", {"task_id": task_id, "title": "renamed"})
        assert updated.structured_content["status"] == "updated"
        completed = await client.call_tool("complete_task", {"task_id": task_id})
        assert completed.structured_content == {"task_id": task_id, "status": "completed", "title": "renamed"}
        deleted = await client.call_tool("delete_task", {"task_id": task_id})
        assert deleted.structured_content["status"] == "deleted"

        missing = await client.call_tool("complete_task", {"task_id": task_id})
        assert missing.is_error and "not found" in missing.content[0].text
        with pytest.raises(MCPError) as unknown:
            await client.call_tool("launch_rocket", {})
        assert unknown.value.code == -32602


async def test_legacy_mode_works_too(stack):
    http, client = connect(stack, "mcp-legacy", mode="legacy")
    async with http, client:
        assert [tool.name for tool in (await client.list_tools()).tools] == TOOLS


async def test_tasks_are_shared_with_the_chat_both_ways(stack, client):
    user = "mcp-and-chat"
    chat_headers = {"Authorization": f"Bearer {hs256_token(user)}"}
    http, mcp_client = connect(stack, user)
    async with http, mcp_client:
        await mcp_client.call_tool("add_task", {"title": "added over mcp"})
        with client.stream("POST", "/api/chat", headers=chat_headers,
                           json={"messages": [{"role": "user", "content": "list"}]}) as response:
            records = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        listed = next(r for r in records if r.get("type") == "tool_result")
        assert [t["title"] for t in listed["result"]] == ["added over mcp"]

        client.post("/api/chat", headers=chat_headers, json={"messages": [{"role": "user", "content": "add added in chat"}]})
        titles = [t["title"] for t in (await mcp_client.call_tool("list_tasks", {})).structured_content["tasks"]]
        assert titles == ["added over mcp", "added in chat"]


async def test_one_user_cannot_see_or_change_anothers_tasks(stack):
    http_a, alice = connect(stack, "mcp-owner")
    http_b, bob = connect(stack, "mcp-intruder")
    async with http_a, alice, http_b, bob:
        task_id = (await alice.call_tool("add_task", {"title": "mine"})).structured_content["task_id"]
        assert (await bob.call_tool("list_tasks", {})).structured_content == {"tasks": []}
        for name, arguments in [("complete_task", {"task_id": task_id}), ("delete_task", {"task_id": task_id}),
                                ("update_task", {"task_id": task_id, "title": "stolen"})]:
            result = await bob.call_tool(name, arguments)
            assert result.is_error and "not found" in result.content[0].text
        tasks = (await alice.call_tool("list_tasks", {})).structured_content["tasks"]
        assert [(t["title"], t["completed"]) for t in tasks] == [("mine", False)]


def test_http_level_rules(stack, client):
    url = "/api/mcp"
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    token = {"Authorization": f"Bearer {hs256_token('mcp-http')}"}

    unauthenticated = client.post(url, json=ping)
    assert unauthenticated.status_code == 401
    challenge = unauthenticated.headers["www-authenticate"]
    metadata_url = challenge.split('resource_metadata="')[1].split('"')[0]
    assert metadata_url == f"{stack.base_url}/.well-known/oauth-protected-resource/api/mcp"
    metadata = httpx.get(metadata_url).json()
    assert metadata["resource"] == f"{stack.base_url}/api/mcp" and metadata["authorization_servers"]
    assert httpx.get(f"{stack.base_url}/.well-known/oauth-protected-resource").json() == metadata

    assert client.post(url, json=ping, headers=token).json() == {"jsonrpc": "2.0", "id": 1, "result": {}}
    notification = client.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=token)
    assert notification.status_code == 202 and notification.content == b""
    assert client.get(url, headers=token).status_code == 405
    assert client.delete(url, headers=token).status_code == 405

    before = stack.row_counts()
    for body, status, code in [(b"{oops", 400, -32700), (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', 400, -32600),
                               (b'{"jsonrpc":"2.0","id":1}', 400, -32600)]:
        reply = client.post(url, content=body, headers={**token, "Content-Type": "application/json"})
        assert reply.status_code == status and reply.json()["error"]["code"] == code
    assert client.post(url, content=b"{}", headers={**token, "Content-Type": "text/plain"}).status_code == 415
    assert client.post(url, content=b"{" + b" " * 1_500_000 + b"}", headers={**token, "Content-Type": "application/json"}).status_code == 413
    assert client.post(url, json=ping, headers={**token, "Origin": "https://evil.example"}).status_code == 403
    assert stack.row_counts() == before


def test_allowed_browser_origins_get_cors():
    from harness import Stack
    stack = Stack(extra_env={"CHATKIT_MCP_ALLOWED_ORIGINS": "https://app.example"})
    try:
        url = f"{stack.base_url}/api/mcp"
        allowed, other = {"Origin": "https://app.example"}, {"Origin": "https://evil.example"}
        preflight = httpx.options(url, headers={**allowed, "Access-Control-Request-Method": "POST",
                                                "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        assert httpx.options(url, headers=other).status_code == 403
        ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        challenge = httpx.post(url, json=ping, headers=allowed)
        assert challenge.status_code == 401 and challenge.headers["access-control-allow-origin"] == "https://app.example"
        token = {"Authorization": f"Bearer {hs256_token('cors')}"}
        answer = httpx.post(url, json=ping, headers={**allowed, **token})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.post(url, json=ping, headers={**other, **token}).status_code == 403
    finally:
        stack.stop()
