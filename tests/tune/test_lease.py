"""One driver per sweep: the lease on local storage (a real second process, a killed holder) and on S3 (moto)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import boto3
import pytest

from genre_sweep.store import StoreOptions
from genre_sweep.tune import lease
from genre_sweep.tune.lease import LeaseHeld, holding

HOLD = "import sys, time; from genre_sweep.tune.lease import holding; from genre_sweep.store import StoreOptions\n"
HOLD += "with holding(sys.argv[1], 'held', StoreOptions()):\n    print('held', flush=True); time.sleep(60)\n"


def test_a_second_driver_is_refused_while_the_first_holds_the_lease_and_a_killed_holder_frees_it(tmp_path):
    root = str(tmp_path / "sweeps" / "held")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, root], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld) as refused:
            with holding(root, "held", StoreOptions()):
                pass
        line = str(refused.value)
        assert "\n" not in line and f"pid {holder.pid} on {socket.gethostname()}" in line
        assert "sweep 'held' is running now" in line
        holder.send_signal(signal.SIGKILL)  # no clean-up ran: the kernel drops its lock
        holder.wait()
        with holding(root, "held", StoreOptions()):
            recorded = json.loads((tmp_path / "sweeps" / "held-lease.json").read_text())
            assert recorded["pid"] == os.getpid()
    finally:
        holder.kill()


def test_on_s3_the_lease_is_conditional_a_live_one_refuses_and_a_stale_one_is_taken_over(s3_endpoint, s3_bucket):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    root, key, options = f"s3://{s3_bucket}/sweeps/x", "sweeps/x-lease.json", StoreOptions(s3_endpoint)
    with holding(root, "x", options):
        mine = json.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            with holding(root, "x", options):
                pass
    assert "Contents" not in s3.list_objects_v2(Bucket=s3_bucket, Prefix=key)  # given back

    def other(host: str, renewed_ago: float, pid: int = 1) -> None:
        now = time.time()
        body = {"host": host, "pid": pid, "started": now - 600, "renewed": now - renewed_ago}
        s3.put_object(Bucket=s3_bucket, Key=key, Body=json.dumps(body).encode())

    other("another-head", renewed_ago=5)  # a driver elsewhere, renewing: refused
    with pytest.raises(LeaseHeld, match="another-head"):
        with holding(root, "x", options):
            pass
    other("another-head", renewed_ago=lease.STALE_S + 1)  # a head that died: taken over
    with holding(root, "x", options):
        assert json.loads(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read())["pid"] == os.getpid()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    other(socket.gethostname(), renewed_ago=1, pid=int(dead.stdout))  # this host, its process gone: taken over
    with holding(root, "x", options):
        pass
