"""Starts the real pieces on loopback: the mock model, chatkit-fcgi and nginx.

Used by the integration tests and the benchmark. Everything started here is stopped by
`Stack.stop()`; ports are picked free, files live in one temporary directory.
"""

import base64
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD_DIR = os.environ.get("CHATKIT_BUILD_DIR", os.path.join(REPO, ".build", "debug"))
# Which store a Stack uses unless told: the test suite runs once with each (conftest.py).
DATABASE = os.environ.get("CHATKIT_TEST_DATABASE", "sqlite")
SECRET = "integration-test-secret-0123456789abcdef"
MODEL_KEY = "mock-api-key-for-tests"


def free_ports(count):
    """`count` distinct free ports: each probe stays bound until all are picked, because the
    kernel may hand a port just released to the very next bind."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def free_port():
    return free_ports(1)[0]


def wait_until(predicate, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def port_open(port):
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def hs256_token(sub, ttl=600, secret=SECRET, now=None):
    """The same HS256 token `chatkit-fcgi token` mints, built independently in Python."""
    import hashlib
    import hmac

    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    issued = int(now if now is not None else time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps({"sub": sub, "iat": issued, "exp": issued + ttl}).encode())
    signature = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


class Process:
    def __init__(self, name, argv, env, log_dir, **kwargs):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, **kwargs)

    def alive(self):
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.alive():
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()
        return self.popen.returncode

    def output(self):
        with open(self.log_path, "rb") as log:
            return log.read().decode(errors="replace")


class Stack:
    """mock model <- chatkit-fcgi <- nginx, all on loopback, in one temporary directory."""

    def __init__(self, max_requests=16, extra_env=None, mock_delay_ms=0, with_nginx=True, build_dir=BUILD_DIR, database=None,
                 responders=1):
        """`responders` > 1 starts that many responder processes on one database, each on its
        own socket, with nginx spreading requests over them: many hosts, on one machine."""
        self.dir = tempfile.mkdtemp(prefix="chatkit-it-")
        # nginx workers run as nobody when the tests run as root: they must reach the socket.
        os.chmod(self.dir, 0o711)
        self.sockets = [os.path.join(self.dir, "app.sock" if index == 0 else f"app{index + 1}.sock")
                        for index in range(responders)]
        self.socket = self.sockets[0]
        self.database_kind = database or DATABASE
        self.postgres_databases = []
        self.model_port, self.http_port = free_ports(2) if with_nginx else (free_port(), None)
        self.processes = []
        self.build_dir = build_dir
        try:
            self.database_url = self.fresh_database_url()
            self.mock = self.start_mock(mock_delay_ms)
            wait_until(lambda: port_open(self.model_port) or not self.mock.alive(), what="mock model")
            assert self.mock.alive(), self.mock.output()
            self.env = {
                "DATABASE_URL": self.database_url,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{self.model_port}/v1",
                "OPENAI_API_KEY": MODEL_KEY,
                "OPENAI_MODEL": "mock-model",
                "BETTER_AUTH_SECRET": SECRET,
                "CHATKIT_SOCKET_MODE": "0666",
                "CHATKIT_MAX_TOOL_ROUNDS": "3",
                # Tests and benchmarks send far more than one person would; test_operations.py
                # sets the per-user limits it exercises.
                "CHATKIT_USER_MAX_STREAMS": "0",
                "CHATKIT_USER_REQUESTS": "0",
                # As nginx/run-local sets it: the chat page at "/" reads the tasks through /api/mcp.
                **({"CHATKIT_MCP_ALLOWED_ORIGINS": f"http://127.0.0.1:{self.http_port}"} if with_nginx else {}),
                **(extra_env or {}),
            }
            self.database_url = self.env["DATABASE_URL"]  # a test may name another database
            self.responders = [self.start_responder(max_requests, socket=socket) for socket in self.sockets]
            self.responder = self.responders[0]
            if with_nginx:
                subprocess.run([os.path.join(REPO, "nginx", "render-local-conf"), os.path.join(self.dir, "nginx"),
                                str(self.http_port), *self.sockets], check=True, capture_output=True)
                prefix = os.path.join(self.dir, "nginx")
                self.nginx = self._start("nginx", ["nginx", "-p", prefix, "-c", os.path.join(prefix, "nginx.conf"),
                                                   "-e", "stderr"], {})
                wait_until(lambda: port_open(self.http_port) or not self.nginx.alive(), what="nginx")
                assert self.nginx.alive(), self.nginx.output()
        except BaseException:
            self.stop()
            raise

    def _start(self, name, argv, env, **kwargs):
        # A sanitizer's settings (Tests/sanitize) reach every process the stack starts.
        passed = {name: os.environ[name] for name in ("ASAN_OPTIONS", "TSAN_OPTIONS", "CHATKIT_THREAD_STACK_KIB")
                  if name in os.environ}
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **passed, **env}
        process = Process(name, argv, full_env, self.dir, **kwargs)
        self.processes.append(process)
        return process

    def start_mock(self, delay_ms=0, wrapper=()):
        """The mock model on `model_port`, under `wrapper` (valgrind, say) when one is given."""
        return self._start("mock-model", [*wrapper, os.path.join(self.build_dir, "mock-model"), "--port", str(self.model_port)],
                           {"MOCK_API_KEY": MODEL_KEY, "MOCK_DELAY_MS": str(delay_ms)})

    def start_responder(self, max_requests=16, argv=None, env=None, socket=None, **kwargs):
        socket = socket or self.socket
        argv = argv or [self.binary, "serve", "--socket", socket, "--max-requests", str(max_requests)]
        name = "chatkit-fcgi" if socket == self.sockets[0] else "chatkit-fcgi-" + os.path.basename(socket).split(".")[0]
        process = self._start(name, argv, {**self.env, **(env or {})}, **kwargs)
        wait_until(lambda: os.path.exists(socket) or not process.alive(), what="responder socket")
        assert process.alive(), process.output()
        return process

    @property
    def binary(self):
        return os.path.join(self.build_dir, "chatkit-fcgi")

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.http_port}"

    # The mock model's own view: what it was sent, and what happened to its streams.
    def model_requests(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.model_port}/_mock/requests") as reply:
            return json.load(reply)

    def model_stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.model_port}/_mock/stats") as reply:
            return json.load(reply)

    def fresh_database_url(self):
        """An empty database of this stack's kind, removed with the stack."""
        if self.database_kind == "postgres":
            import postgres
            server = postgres.shared()
            self.postgres_databases.append(server.create_database())
            return server.url(self.postgres_databases[-1])
        return "sqlite://" + os.path.join(self.dir, f"chat{len(self.processes)}-{time.monotonic_ns()}.db")

    def db(self):
        """A connection to the stack's database that takes `?` placeholders, whichever it is."""
        if self.database_kind == "postgres":
            import postgres
            return postgres.PostgresDB(self.database_url)
        connection = sqlite3.connect(self.database_url[len("sqlite://"):])
        connection.row_factory = sqlite3.Row
        return connection

    def row_counts(self):
        with self.db() as db:
            return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in ("conversations", "messages", "tasks", "attachments")}

    def stop(self):
        for process in reversed(self.processes):
            process.stop(signal.SIGQUIT if process.name == "nginx" else signal.SIGTERM)
        self.processes = []
        if self.postgres_databases:
            import postgres
            for name in self.postgres_databases:
                postgres.shared().drop_database(name)
            self.postgres_databases = []
        shutil.rmtree(self.dir, ignore_errors=True)


def dechunk(body):
    """The payload of an HTTP/1.1 chunked body that ends with its last chunk."""
    out, position = bytearray(), 0
    while True:
        end = body.index(b"\r\n", position)
        size = int(body[position:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2:end + 2 + size]
        position = end + 2 + size + 2


def raw_post(port, path, payload, token):
    """A POST on a bare socket, so a test can close it mid-stream like a browser tab."""
    body = json.dumps(payload).encode()
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    raw.settimeout(10)
    return raw


def read_sse(response):
    """As a plain SSE client reads: every line that starts with `data: `, with its arrival time."""
    records = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: "):]
            records.append((time.monotonic(), payload if payload == "[DONE]" else json.loads(payload)))
    return records


def fastcgi_post(socket_path, path, payload, token):
    """A POST straight to one responder's socket through libfcgi's cgi-fcgi, bypassing nginx:
    returns (status code, headers with lower-case names, body text)."""
    body = json.dumps(payload).encode()
    env = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
           "REQUEST_URI": path, "DOCUMENT_URI": path, "HTTP_AUTHORIZATION": f"Bearer {token}"}
    done = subprocess.run(["cgi-fcgi", "-bind", "-connect", socket_path], env=env, input=body, capture_output=True,
                          timeout=30)
    head, _, text = done.stdout.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("Status: ") else 0
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines[1:])}
    return status, headers, text


def sse_payloads(text):
    """The `data:` payloads of an SSE body, JSON decoded (`[DONE]` as is)."""
    payloads = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            payloads.append(data if data == "[DONE]" else json.loads(data))
    return payloads
