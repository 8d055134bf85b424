"""The persistent ASHA's state file against a real S3-protocol server that goes away for a while."""

import json
import logging
import socket
import threading

import boto3
from moto.server import ThreadedMotoServer

from genre_sweep.store import StoreOptions, read_bytes
from genre_sweep.tune.search import PersistentASHA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_asha_state_is_written_once_the_store_is_back_and_the_sweep_goes_on(caplog):
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="asha")
    uri, options = "s3://asha/sweep-asha-state.json", StoreOptions(endpoint)
    asha = PersistentASHA(state_uri=uri, options=options, max_t=9, grace_period=1, reduction_factor=3)
    server.stop()  # the store is unreachable ...
    back = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    restart = threading.Timer(2.0, back.start)  # ... for two seconds
    restart.start()
    try:
        with caplog.at_level(logging.WARNING, logger="genre_sweep.tune.search"):
            asha._save()  # what every scheduler decision does; it must not raise
        state = json.loads(read_bytes(uri, options))
        assert len(state["rungs"]) >= 1 and state["trial_bracket"] == {}
        assert any("attempt 1, retrying in 1 s" in r.getMessage() for r in caplog.records)
    finally:
        restart.join()
        back.stop()
