"""Object storage: a state file is written whole or not at all, even when the writer is killed mid-write."""

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.fs as pafs

from genre_sweep.store import write_bytes

WRITER = """
import json, sys
import pyarrow.fs as pafs
from genre_sweep.store import write_bytes
path, n = sys.argv[1], 0
while True:
    n += 1
    write_bytes(pafs.LocalFileSystem(), path, json.dumps({"n": n, "pad": "x" * 20_000_000}).encode())
    print(n, flush=True)
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_or_the_new_one_never_half(tmp_path):
    path = tmp_path / "state" / "asha-state.json"
    for delay in (0.05, 0.2, 0.45):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "1"  # one whole write done; the next one is under way
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = json.loads(path.read_text())  # a half-written file would not parse
        assert state["n"] >= 1 and len(state["pad"]) == 20_000_000


def test_a_write_replaces_the_file_and_leaves_nothing_beside_it(tmp_path):
    path = tmp_path / "a" / "manifest.json"
    write_bytes(pafs.LocalFileSystem(), str(path), b"one")
    write_bytes(pafs.LocalFileSystem(), str(path), b"two")
    assert path.read_bytes() == b"two" and [p.name for p in path.parent.iterdir()] == ["manifest.json"]
