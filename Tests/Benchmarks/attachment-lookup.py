#!/usr/bin/env python3
"""What reading an attachment row's "uploaded" flag costs in SQLite when the row holds a large
file: `data IS NOT NULL` in the select list loads the blob's overflow pages, `typeof(data)`
reads only the row's header. Usage: python3 Tests/Benchmarks/attachment-lookup.py [--mib 10]"""

import argparse
import os
import sqlite3
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--mib", type=int, default=10, help="size of the stored file")
parser.add_argument("--reads", type=int, default=200)
arguments = parser.parse_args()

with tempfile.TemporaryDirectory() as directory:
    connection = sqlite3.connect(os.path.join(directory, "lookup.db"))
    connection.execute("CREATE TABLE attachments (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    connection.execute("INSERT INTO attachments VALUES (1, 'a.png', randomblob(?))", (arguments.mib << 20,))
    connection.commit()
    print(f"SQLite {sqlite3.sqlite_version}, one row with a {arguments.mib} MiB file, {arguments.reads} reads each")
    for flag in ("data IS NOT NULL", "typeof(data) <> 'null'"):
        started = time.perf_counter()
        for _ in range(arguments.reads):
            connection.execute(f"SELECT name, {flag} FROM attachments WHERE id = 1").fetchone()
        print(f"  {flag:24} {(time.perf_counter() - started) / arguments.reads * 1e6:9.1f} µs per lookup")
