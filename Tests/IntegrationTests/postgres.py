"""A throwaway PostgreSQL server, and PgBouncer in front of it, on loopback.

Used by the integration tests, the benchmark and `Tests/run-all` (which starts one server for
the Swift unit tests too: `python3 postgres.py serve DIR` prints its URL and runs until stdin
closes). Debian's `postgresql` package provides the binaries; as root, the server runs as the
`postgres` user, which owns its data directory. Durability is off (`fsync=off`): these servers
hold test data only, and benchmark figures from them say so.
"""

import atexit
import glob
import os
import pwd
import signal
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

import psycopg

from harness import free_port, port_open, wait_until

_shared = None


def shared():
    """The server every test of this process shares: `CHATKIT_TEST_POSTGRES_URL`'s when set
    (`Tests/run-all` starts one), else one started now and stopped when the process exits."""
    global _shared
    if _shared is None:
        if os.environ.get("CHATKIT_TEST_POSTGRES_URL"):
            _shared = Postgres(os.environ["CHATKIT_TEST_POSTGRES_URL"])
        else:
            _shared = PostgresServer()
            atexit.register(_shared.destroy)
    return _shared

ADMIN = "postgres"


def _binary(name):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package")
    return found[-1]


def _as_server_user(argv):
    """Runs as `postgres` when we are root: the server refuses to run as root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _own(path):
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


class Postgres:
    """A server the tests may create databases on, reached as its superuser."""

    def __init__(self, admin_url):
        self.admin_url = admin_url
        self.port = urllib.parse.urlsplit(admin_url).port

    def url(self, database=ADMIN):
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    def connect(self, database=ADMIN):
        return psycopg.connect(self.url(database), autocommit=True)

    def create_database(self):
        name = "chatkit_" + uuid.uuid4().hex[:12]
        with self.connect() as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name):
        with self.connect() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class PostgresServer(Postgres):
    """One cluster in its own directory, listening on a loopback port and a socket there."""

    def __init__(self, directory=None):
        self.owns_directory = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="chatkit-pg-")
        os.chmod(self.dir, 0o755)
        _own(self.dir)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        subprocess.run(_as_server_user([_binary("initdb"), "-D", self.data, "-U", ADMIN, "--auth=trust", "-E", "UTF8",
                                        "--locale=C.UTF-8"]), check=True, capture_output=True)
        super().__init__(f"postgresql://{ADMIN}@127.0.0.1:{self.port}/{ADMIN}")
        self.start()

    def start(self):
        options = (f"-k {self.dir} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        subprocess.run(_as_server_user([_binary("pg_ctl"), "-D", self.data, "-o", options,
                                        "-l", os.path.join(self.dir, "server.log"), "-w", "start"]),
                       check=True, capture_output=True)

    def stop(self, mode="fast"):
        subprocess.run(_as_server_user([_binary("pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"]),
                       capture_output=True)

    def destroy(self):
        self.stop("immediate")
        if self.owns_directory:
            shutil.rmtree(self.dir, ignore_errors=True)


class PgBouncer:
    """PgBouncer in transaction pooling mode in front of `server`, as hosted poolers run."""

    def __init__(self, server, database, pool_size=4):
        self.dir = tempfile.mkdtemp(prefix="chatkit-pgbouncer-")
        os.chmod(self.dir, 0o755)
        _own(self.dir)
        self.port = free_port()
        config = os.path.join(self.dir, "pgbouncer.ini")
        with open(config, "w") as out:
            out.write(f"""[databases]
{database} = host=127.0.0.1 port={server.port} dbname={database} user={ADMIN}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
""")
        with open(os.path.join(self.dir, "users.txt"), "w") as out:
            out.write(f'"{ADMIN}" ""\n')
        for name in ("pgbouncer.ini", "users.txt"):
            _own(os.path.join(self.dir, name))
        self.process = subprocess.Popen(_as_server_user(["pgbouncer", config]), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port) or self.process.poll() is not None, what="pgbouncer")
        if self.process.poll() is not None:
            log = open(os.path.join(self.dir, "pgbouncer.log")).read()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(log)

    def url(self, database):
        return f"postgresql://{ADMIN}@127.0.0.1:{self.port}/{database}"

    def stop(self):
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Row(tuple):
    """A row read by position or by column name, as sqlite3.Row reads."""

    def __new__(cls, names, values):
        row = super().__new__(cls, values)
        row.names = names
        return row

    def __getitem__(self, key):
        return super().__getitem__(self.names.index(key) if isinstance(key, str) else key)


def _rows(cursor):
    names = [column.name for column in cursor.description or []]
    return lambda values: Row(names, values)


class PostgresDB:
    """What `Stack.db()` gives on PostgreSQL: `execute` with `?` placeholders and rows read by
    position or name, as sqlite3 gives them."""

    def __init__(self, url):
        self.connection = psycopg.connect(url, autocommit=True, row_factory=_rows)

    def execute(self, sql, parameters=()):
        return self.connection.execute(sql.replace("?", "%s"), parameters)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.connection.close()


if __name__ == "__main__" and sys.argv[1:2] == ["serve"]:
    # A plain kill stops the server too: SIGTERM unwinds through `finally`.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = PostgresServer(sys.argv[2] if len(sys.argv) > 2 else None)
    try:
        print(server.url(), flush=True)
        sys.stdin.read()  # until the caller closes it
    finally:
        server.destroy()
