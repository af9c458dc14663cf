"""The responder as a process: the cgi-fcgi harness, socket handover, JWKS tokens, SIGTERM drain."""

import base64
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness import REPO, Stack, hs256_token, wait_until

VECTORS = json.load(open(os.path.join(REPO, "Tests", "ChatKitFCGITests", "Fixtures", "better-auth-jwt-test-vectors.json")))


def cgi_request(socket_path, text, token, path="/api/chat", method="POST", conversation_id=None):
    """One request through libfcgi's cgi-fcgi, as the README shows; returns (status line, headers, body lines with times)."""
    body = json.dumps({"messages": [{"role": "user", "content": text}], "conversation_id": conversation_id}).encode()
    env = {"REQUEST_METHOD": method, "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
           "REQUEST_URI": path, "DOCUMENT_URI": path, "HTTP_AUTHORIZATION": f"Bearer {token}"}
    process = subprocess.Popen(["cgi-fcgi", "-bind", "-connect", socket_path], env=env,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    process.stdin.write(body)
    process.stdin.close()
    head, lines = [], []
    for raw in process.stdout:
        line = raw.decode().rstrip("\r\n")
        if not lines and line and not head[-1:] == [""]:
            head.append(line)
            continue
        if not lines and line == "" and head[-1:] != [""]:
            head.append("")
            continue
        lines.append((time.monotonic(), line))
    process.wait(10)
    if not head:
        return "", [], []  # no response at all: nobody accepted the connection
    return head[0], head[1:-1], [(at, line) for at, line in lines if line]


@pytest.fixture(scope="module")
def bare(database_kind):
    started = Stack(with_nginx=False, database=database_kind)
    yield started
    started.stop()


def test_the_cgi_fcgi_harness_streams_records_as_they_are_made(bare):
    status, headers, lines = cgi_request(bare.socket, "slow 10", hs256_token("carol"))
    assert status == "Status: 200 OK"
    assert "X-Accel-Buffering: no" in headers
    records = [line for _, line in lines]
    assert json.loads(records[0][len("data: "):])["type"] == "conversation"
    assert records[-1] == "data: [DONE]"
    times = [at for at, line in lines if '"content":"w' in line]
    assert times[-1] - times[0] > 0.3


def test_cgi_fcgi_gets_json_errors(bare):
    status, headers, lines = cgi_request(bare.socket, "hi", "garbage")
    assert status == "Status: 401 Unauthorized"
    assert json.loads(lines[0][1]) == {"detail": "invalid token"}
    status, _, _ = cgi_request(bare.socket, "hi", hs256_token("carol"), path="/elsewhere")
    assert status == "Status: 404 Not Found"


def test_the_token_command_mints_a_working_token(bare):
    token = subprocess.run([bare.binary, "token", "--sub", "dave", "--ttl", "60"], env=bare.env, check=True,
                           capture_output=True, text=True).stdout.strip()
    claims = jwt.decode(token, bare.env["BETTER_AUTH_SECRET"], algorithms=["HS256"])
    assert claims["sub"] == "dave" and claims["exp"] - claims["iat"] == 60
    status, _, _ = cgi_request(bare.socket, "hi", token)
    assert status == "Status: 200 OK"


def test_check_config_explains_what_is_wrong(bare):
    ok = subprocess.run([bare.binary, "check-config"], env=bare.env, capture_output=True, text=True)
    assert ok.returncode == 0 and "configuration OK" in ok.stdout
    bad = subprocess.run([bare.binary, "check-config"], env={**bare.env, "BETTER_AUTH_SECRET": "short",
                                                              "CHATKIT_THREADS": "many", "JWT_JWKS_COOLDOWN_SECONDS": "0"},
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert "BETTER_AUTH_SECRET must be at least 32 bytes" in bad.stderr and "CHATKIT_THREADS=many" in bad.stderr
    assert "JWT_JWKS_COOLDOWN_SECONDS=0 must be an integer in 1...3600" in bad.stderr


class JWKSServer:
    """A stand-in for Better Auth's /api/auth/jwks on loopback."""

    def __init__(self, document):
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/auth/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_eddsa_tokens_verify_against_a_jwks_url_and_rotation_is_picked_up():
    issuer = "http://localhost:3000"
    seed = VECTORS["ed25519_private_key_for_generating_more"]["d"]
    first = Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(seed + "=" * (-len(seed) % 4)))
    rotated = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(VECTORS["rotated_private_seed_hex"]))
    server = JWKSServer(VECTORS["jwks"])
    stack = Stack(with_nginx=False, extra_env={"BETTER_AUTH_SECRET": "", "JWT_JWKS_URL": server.url,
                                               "JWT_ISSUER": issuer, "JWT_AUDIENCE": issuer,
                                               "JWT_JWKS_COOLDOWN_SECONDS": "1"})
    try:
        now = int(time.time())
        claims = {"sub": "erin", "iat": now, "exp": now + 900, "iss": issuer, "aud": issuer}
        token = jwt.encode(claims, first, algorithm="EdDSA", headers={"kid": "test-kid-1"})
        assert cgi_request(stack.socket, "hi", token)[0] == "Status: 200 OK"
        wrong_audience = jwt.encode({**claims, "aud": "elsewhere"}, first, algorithm="EdDSA", headers={"kid": "test-kid-1"})
        assert cgi_request(stack.socket, "hi", wrong_audience)[0] == "Status: 401 Unauthorized"
        hs256 = hs256_token("erin")
        assert cgi_request(stack.socket, "hi", hs256)[0] == "Status: 401 Unauthorized"
        # The identity server rotates to test-kid-2: the unknown kid triggers one refetch.
        server.document = VECTORS["jwks_after_rotation"]
        time.sleep(1.1)
        token = jwt.encode(claims, rotated, algorithm="EdDSA", headers={"kid": "test-kid-2"})
        assert cgi_request(stack.socket, "hi", token)[0] == "Status: 200 OK"
        assert server.fetches == 2
    finally:
        stack.stop()
        server.stop()


def test_sigterm_lets_a_running_stream_finish_then_exits():
    stack = Stack(with_nginx=False)
    try:
        result = {}
        runner = threading.Thread(target=lambda: result.update(out=cgi_request(stack.socket, "slow 20", hs256_token("f"))))
        runner.start()
        wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="stream started")
        stack.responder.popen.send_signal(signal.SIGTERM)
        runner.join(10)
        status, _, lines = result["out"]
        assert status == "Status: 200 OK" and lines[-1][1] == "data: [DONE]"
        assert sum('"content":"w' in line for _, line in lines) == 20
        assert stack.responder.popen.wait(5) == 0
        assert not os.path.exists(stack.socket)
    finally:
        stack.stop()


def test_sigterm_ends_streams_still_running_at_the_grace_deadline():
    stack = Stack(with_nginx=False, extra_env={"CHATKIT_SHUTDOWN_GRACE_SECONDS": "1"})
    try:
        result = {}
        runner = threading.Thread(target=lambda: result.update(out=cgi_request(stack.socket, "slow 400", hs256_token("g"))))
        runner.start()
        wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="stream started")
        stopped_at = time.monotonic()
        stack.responder.popen.send_signal(signal.SIGTERM)
        assert stack.responder.popen.wait(5) == 0
        assert time.monotonic() - stopped_at < 2.5
        runner.join(5)
        _, _, lines = result["out"]
        assert json.loads(lines[-2][1][len("data: "):])["code"] == "server_shutdown"
        assert lines[-1][1] == "data: [DONE]"
    finally:
        stack.stop()


def notify_listener(directory):
    path = os.path.join(directory, "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(path)
    listener.settimeout(10)
    return path, listener


def test_the_watchdog_is_pinged_while_the_transfer_loop_turns():
    stack = Stack(with_nginx=False)
    try:
        stack.responder.stop()
        notify_path, listener = notify_listener(stack.dir)
        watched = stack.start_responder(env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000"})
        messages = [listener.recv(4096) for _ in range(3)]
        assert b"READY=1" in messages[0] and messages[1:] == [b"WATCHDOG=1", b"WATCHDOG=1"], messages
        status, _, lines = cgi_request(stack.socket, "hello", hs256_token("w"))
        assert status == "Status: 200 OK" and lines[-1][1] == "data: [DONE]"
        assert listener.recv(4096) == b"WATCHDOG=1"
        watched.stop()
        listener.close()
    finally:
        stack.stop()


@pytest.mark.parametrize("launcher", ["systemd-socket-activate", "spawn-fcgi"])
def test_the_listen_socket_can_be_handed_over(launcher):
    stack = Stack(with_nginx=False)
    try:
        stack.responder.stop()
        assert not os.path.exists(stack.socket)  # the responder removes the socket it created
        notify_path, listener = notify_listener(stack.dir)
        if launcher == "systemd-socket-activate":
            # It passes on only the variables named with -E, as a unit's Environment= would.
            passed = [flag for name in [*stack.env, "NOTIFY_SOCKET"] for flag in ("-E", name)]
            argv = ["systemd-socket-activate", "-l", stack.socket, *passed, stack.binary, "serve"]
        else:
            argv = ["spawn-fcgi", "-n", "-s", stack.socket, "-M", "0600", "--", stack.binary, "serve"]
        handed = stack.start_responder(argv=argv, env={"NOTIFY_SOCKET": notify_path})
        status, _, lines = cgi_request(stack.socket, "hello", hs256_token("h"))
        assert status == "Status: 200 OK" and lines[-1][1] == "data: [DONE]"
        assert b"READY=1" in listener.recv(4096)
        handed.popen.send_signal(signal.SIGTERM)
        assert b"STOPPING=1" in listener.recv(4096)
        assert handed.popen.wait(5) == 0
        listener.close()
    finally:
        stack.stop()


def test_help_version_and_migrate(bare, tmp_path):
    help_text = subprocess.run([bare.binary, "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "usage: chatkit-fcgi" in help_text.stdout and "DATABASE_URL" in help_text.stdout
    version = subprocess.run([bare.binary, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("chatkit-fcgi ")
    fresh = {**bare.env, "DATABASE_URL": bare.fresh_database_url()}
    migrated = subprocess.run([bare.binary, "migrate"], env=fresh, capture_output=True, text=True)
    latest = re.search(r"schema version 0 -> (\d+)", migrated.stdout)
    assert migrated.returncode == 0 and latest and int(latest[1]) >= 1, migrated.stdout + migrated.stderr
    again = subprocess.run([bare.binary, "migrate"], env=fresh, capture_output=True, text=True)
    assert f"schema version {latest[1]} -> {latest[1]}" in again.stdout
    unknown = subprocess.run([bare.binary, "serve", "--sockets", "x"], capture_output=True, text=True, env=bare.env)
    assert unknown.returncode == 64 and "unknown option --sockets" in unknown.stderr


def socket_activated(stack, listener):
    """A responder started as systemd starts one on a socket it holds: the socket as fd 3, with
    LISTEN_FDS=1 and LISTEN_PID naming the responder (the shell's own pid, which exec keeps).
    bash, not sh: dash cannot redirect descriptors above 9."""
    fd = listener.fileno()
    script = f'export LISTEN_FDS=1 LISTEN_PID=$$; exec "$@" 3<&{fd} {fd}<&-'
    return stack.start_responder(argv=["bash", "-c", script, "bash", stack.binary, "serve"],
                                 pass_fds=(fd,))


def test_a_draining_responder_leaves_new_connections_to_the_next_instance():
    """With an inherited socket, SIGTERM must stop accepting at once: a connection that arrives
    during the drain stays in the socket's queue, untouched, and the next instance serves it."""
    stack = Stack(with_nginx=False)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        stack.responder.stop()
        # The test holds the socket, as systemd does, so it outlives each instance.
        listener.bind(stack.socket)
        listener.listen(16)
        draining = socket_activated(stack, listener)
        results = {}
        first = threading.Thread(target=lambda: results.update(first=cgi_request(stack.socket, "slow 30", hs256_token("j"))))
        first.start()
        wait_until(lambda: stack.model_stats()["active_streams"] == 1, what="stream started")
        threads = len(os.listdir(f"/proc/{draining.popen.pid}/task"))
        draining.popen.send_signal(signal.SIGTERM)
        # The two acceptor threads leave accept() and end; the stream goes on.
        wait_until(lambda: len(os.listdir(f"/proc/{draining.popen.pid}/task")) == threads - 2, what="the acceptors to end")
        second = threading.Thread(target=lambda: results.update(second=cgi_request(stack.socket, "hi", hs256_token("k"))))
        second.start()
        first.join(10)
        assert results["first"][0] == "Status: 200 OK" and results["first"][2][-1][1] == "data: [DONE]"
        assert draining.popen.wait(5) == 0
        # The old instance is gone and the second connection is still waiting: nothing answered or closed it.
        assert second.is_alive() and "second" not in results

        socket_activated(stack, listener)
        second.join(10)
        status, _, lines = results["second"]
        assert status == "Status: 200 OK" and lines[-1][1] == "data: [DONE]"
    finally:
        stack.stop()
        listener.close()


def test_a_complete_answer_survives_a_server_that_hangs_on_after_done():
    """The model sends [DONE] but keeps the body open past the stall timeout: the answer is
    complete, so it is an answer, not an upstream error."""
    stack = Stack(with_nginx=False, extra_env={"CHATKIT_STALL_TIMEOUT_SECONDS": "1"})
    try:
        status, _, lines = cgi_request(stack.socket, "linger", hs256_token("l"))
        records = [line[len("data: "):] for _, line in lines]
        assert status == "Status: 200 OK" and records[-1] == "[DONE]"
        assert not any('"type":"error"' in record for record in records)
        with stack.db() as db:
            stored = db.execute("SELECT content FROM messages WHERE role = 'assistant'").fetchone()[0]
        assert stored == "complete answer"
    finally:
        stack.stop()
