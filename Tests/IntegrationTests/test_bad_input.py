"""Bad input through nginx: a clear 4xx with a JSON detail, no crash, nothing stored."""

import json
import socket
import struct

import pytest

from harness import hs256_token

GOOD = {"messages": [{"role": "user", "content": "hi"}], "conversation_id": None}


@pytest.mark.parametrize("content,content_type,status", [
    (b"{not json", "application/json", 400),
    (b"[]", "application/json", 422),
    (json.dumps({"messages": []}).encode(), "application/json", 422),
    (json.dumps({"messages": "hi"}).encode(), "application/json", 422),
    (json.dumps({"messages": [{"role": "assistant", "content": "hi"}]}).encode(), "application/json", 422),
    (json.dumps({"messages": [{"role": "user", "content": 42}]}).encode(), "application/json", 422),
    (json.dumps({**GOOD, "conversation_id": "1"}).encode(), "application/json", 422),
    (json.dumps(GOOD).encode(), "text/plain", 415),
    (b"", "application/json", 400),
    (b"\xff\xfe", "application/json", 400),
    (b"[" * 100_000, "application/json", 400),
    (b'{"messages":[' + b",".join([b"[0]"] * 250_000) + b"]}", "application/json", 400),  # a 22 MB tree
    (json.dumps({**GOOD, "pad": "x" * (1_200_000)}).encode(), "application/json", 413),
    (json.dumps({**GOOD, "pad": "x" * (3_000_000)}).encode(), "application/json", 413),
])
def test_bad_bodies_get_a_json_4xx_and_store_nothing(stack, client, alice, content, content_type, status):
    before = stack.row_counts()
    response = client.post("/api/chat", content=content, headers={**alice, "Content-Type": content_type})
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["detail"]
    assert stack.row_counts() == before
    assert stack.responder.alive()


def test_wrong_method_and_unknown_path(client, alice):
    response = client.get("/api/chat", headers=alice)
    assert response.status_code == 405 and response.headers["allow"] == "POST" and response.json()["detail"]
    response = client.post("/api/nothing-here", json=GOOD, headers=alice)
    assert response.status_code == 404 and response.json()["detail"]


@pytest.mark.parametrize("authorization,detail", [
    (None, "missing bearer token"),
    ("Basic YWxpY2U6cHc=", "missing bearer token"),
    ("Bearer not-a-jwt", "invalid token"),
    (f"Bearer {hs256_token('alice', ttl=-120)}", "token expired"),
    (f"Bearer {hs256_token('alice', secret='some-other-secret-that-is-long-enough')}", "invalid token"),
])
def test_bad_tokens_get_401_with_www_authenticate(stack, client, authorization, detail):
    before = stack.row_counts()
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/api/chat", json=GOOD, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": detail}
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert stack.row_counts() == before


def test_client_supplied_user_headers_are_ignored(stack, client, alice):
    response = client.post("/api/chat", json={"messages": [{"role": "user", "content": "add spoofed"}]},
                           headers={**alice, "X-User-Id": "bob"})
    assert response.status_code == 200
    with stack.db() as db:
        owners = {row[0] for row in db.execute("SELECT user_id FROM tasks WHERE title = 'spoofed'")}
    assert owners == {"alice"}


def fastcgi_record(kind, content):
    return struct.pack(">BBHHBB", 1, kind, 1, len(content), 0, 0) + content


def fastcgi_params(params):
    encoded = b""
    for name, value in params.items():
        name, value = name.encode(), value.encode()
        encoded += bytes([len(name)]) + (bytes([len(value)]) if len(value) < 128 else struct.pack(">I", len(value) | 1 << 31))
        encoded += name + value
    return encoded


def test_a_body_cut_off_by_its_connection_is_a_400_that_runs_nothing(stack):
    """Straight to the responder's socket: params, then STDIN that ends with the connection."""
    body = json.dumps({"messages": [{"role": "user", "content": "add never stored"}]}).encode()
    params = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
              "REQUEST_URI": "/api/chat", "DOCUMENT_URI": "/api/chat", "HTTP_AUTHORIZATION": f"Bearer {hs256_token('cut')}"}
    before = stack.row_counts()
    with socket.socket(socket.AF_UNIX) as raw:
        raw.settimeout(10)
        raw.connect(stack.socket)
        raw.sendall(fastcgi_record(1, struct.pack(">HB5x", 1, 0)) + fastcgi_record(4, fastcgi_params(params))
                    + fastcgi_record(4, b"") + fastcgi_record(5, body[:20]))
        raw.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := raw.recv(65536):
            answer += chunk
    assert b"Status: 400" in answer and b"the request body ended early" in answer
    assert stack.row_counts() == before
    assert stack.responder.output().count("POST /api/chat 400") >= 1
