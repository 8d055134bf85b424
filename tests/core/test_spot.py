"""`genre-sweep spot-watch`: a fake metadata service on loopback; a real Ray node drained in a subprocess."""

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from genre_sweep.cli import main
from genre_sweep.spot import (
    DRAIN_START_S,
    NoticeError,
    SpotWatchConfig,
    Watcher,
    drain_command,
    drain_env,
    parse_notice,
)
from tests.core.imds import NOTICE_PATH, TOKEN_PATH, FakeIMDS

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 4, 21, 28, 0, tzinfo=UTC)
NODE = "ab" * 28


class Runner:
    """Stands in for subprocess.run of `ray drain-node`: records each command, answers ``codes`` in turn."""

    def __init__(self, *codes: int) -> None:
        self.codes = list(codes) or [0]
        self.commands: list[list[str]] = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        code = self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]
        err = "Traceback ...\nError: The drain request is not accepted: node is dead\n" if code else ""
        return subprocess.CompletedProcess(command, code, "", err)


def watcher(imds_or_port, runner: Runner, **flags) -> Watcher:
    if isinstance(imds_or_port, FakeIMDS):
        endpoints = {"endpoint": imds_or_port.endpoint, "token_endpoint": imds_or_port.token_endpoint}
    else:
        base = f"http://127.0.0.1:{imds_or_port}"
        endpoints = {"endpoint": base + NOTICE_PATH, "token_endpoint": base + TOKEN_PATH}
    cfg = SpotWatchConfig(**endpoints, interval=0.01, timeout=1.0, node_id=NODE, **flags)
    return Watcher(cfg, runner=runner, now=lambda: NOW, sleep=lambda s: None)


def notice(seconds: float, action: str = "terminate") -> dict:
    return {"action": action, "time": (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")}


def deadline_of(command: list[str]) -> int:
    return int(command[command.index("--deadline-remaining-seconds") + 1])


def lines(caplog, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "genre_sweep.spot" and r.levelno == level]


def test_no_notice_no_drain_and_one_imdsv2_token_for_every_poll(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner()
    with FakeIMDS() as imds:
        w = watcher(imds, runner)
        assert not any(w.poll() for _ in range(6))
        assert imds.gets == 6 and imds.puts == 1 and imds.bad_ttl == 0  # every GET carried the token
    assert runner.commands == [] and caplog.records == []  # quiet while there is no notice


def test_a_notice_drains_this_node_with_the_notices_deadline(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner()
    with FakeIMDS() as imds:
        w = watcher(imds, runner, ray_address="10.0.0.1:6379")
        imds.notice = notice(119)
        assert w.poll()
    (command,) = runner.commands
    asked = dataclasses.replace(parse_notice(json.dumps(notice(119)), NOW), deadline_s=119 - DRAIN_START_S)
    assert command == drain_command("10.0.0.1:6379", NODE, asked)
    assert command[command.index("--reason") + 1] == "DRAIN_NODE_REASON_PREEMPTION"
    # the seconds left, less the drain command's own start, from which Ray counts them
    assert command[command.index("--node-id") + 1] == NODE and deadline_of(command) == 119 - DRAIN_START_S
    assert "spot interruption notice: terminate at 2026-12-04T21:29:59Z" in command
    (line,) = lines(caplog, logging.INFO)
    assert NODE in line and "terminate at 2026-12-04T21:29:59Z" in line and f"deadline {119 - DRAIN_START_S} s" in line
    assert "drain request took" in line


def test_an_unreachable_endpoint_warns_once_then_the_notice_still_drains(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = Runner()
    w = watcher(port, runner)
    assert not any(w.poll() for _ in range(5))
    (warning,) = lines(caplog, logging.WARNING)
    assert "cannot read" in warning and "polling on" in warning
    with FakeIMDS(port=port) as imds:  # the service comes back, with a notice
        imds.notice = notice(60)
        assert w.poll()
    assert len(lines(caplog, logging.WARNING)) == 1
    assert any("answers again" in line for line in lines(caplog, logging.INFO))
    assert deadline_of(runner.commands[0]) == 60 - DRAIN_START_S


def test_a_5xx_is_an_outage_too_and_no_traceback_reaches_the_log(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    with FakeIMDS(tokens=500) as imds:
        w = watcher(imds, Runner())
        assert not any(w.poll() for _ in range(4))
    (warning,) = lines(caplog, logging.WARNING)
    assert "HTTP 500" in warning and not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("refusal", [403, 404, 405])
def test_a_refused_token_falls_back_to_imdsv1_with_one_line(caplog, refusal):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner()
    with FakeIMDS(tokens=refusal) as imds:
        w = watcher(imds, runner)
        assert not any(w.poll() for _ in range(3))
        imds.notice = notice(30)
        assert w.poll()
        assert imds.puts == 1
    (info, _drained) = lines(caplog, logging.INFO)
    assert f"HTTP {refusal}" in info and "IMDSv1" in info
    assert deadline_of(runner.commands[0]) == 30 - DRAIN_START_S


def test_an_expired_token_is_renewed_on_a_401(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    with FakeIMDS() as imds:
        w = watcher(imds, Runner())
        assert not w.poll()
        imds.issued.clear()  # the token expired
        assert not w.poll() and not w.poll()
        assert imds.puts == 2
    assert lines(caplog, logging.WARNING) == []


def test_a_malformed_notice_warns_once_and_polling_goes_on(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner()
    with FakeIMDS() as imds:
        w = watcher(imds, runner)
        imds.notice = "<html>oops</html>"
        assert not any(w.poll() for _ in range(4))
        imds.notice = notice(45)
        assert w.poll()
    (warning,) = lines(caplog, logging.WARNING)
    assert "not a notice" in warning and "not JSON" in warning
    assert len(runner.commands) == 1


def test_a_refused_drain_is_one_error_line_and_tried_again_at_the_next_poll(caplog):
    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner(1, 0)
    with FakeIMDS() as imds:
        w = watcher(imds, runner)
        imds.notice = notice(100)
        assert not w.poll()
        assert w.poll()
    (error,) = lines(caplog, logging.ERROR)
    assert "exit 1" in error and error.endswith("The drain request is not accepted: node is dead; trying again")
    assert len(runner.commands) == 2


def test_without_node_id_the_one_raylet_on_this_host_is_drained(monkeypatch, caplog):
    import ray._private.services as services

    caplog.set_level(logging.INFO, "genre_sweep.spot")
    runner = Runner()
    with FakeIMDS() as imds:
        cfg = SpotWatchConfig(endpoint=imds.endpoint, token_endpoint=imds.token_endpoint)
        w = Watcher(cfg, runner=runner, now=lambda: NOW, sleep=lambda s: None)
        imds.notice = notice(90)
        monkeypatch.setattr(services, "find_node_ids", lambda: {"cd" * 28, "ef" * 28})
        assert not w.poll()  # two Ray nodes on this host: which one is not ours to guess
        monkeypatch.setattr(services, "find_node_ids", lambda: {"cd" * 28})
        assert w.poll()
    (error,) = lines(caplog, logging.ERROR)
    assert "Ray nodes running on this host: 2" in error and "give --node-id" in error
    assert runner.commands[0][runner.commands[0].index("--node-id") + 1] == "cd" * 28
    assert runner.commands[0][runner.commands[0].index("--address") + 1] == "auto"


def test_the_notice_parser():
    half_past = NOW + timedelta(seconds=0.5)
    assert parse_notice(json.dumps(notice(120)), half_past).deadline_s == 119  # whole seconds, rounded down
    assert parse_notice('{"action": "stop", "time": "2026-12-04T21:00:00Z"}', NOW).deadline_s == 0  # past
    hib = parse_notice(b'{"action": "hibernate", "time": "2026-12-04T22:29:00+01:00"}', NOW)  # 21:29 UTC
    assert (hib.action, hib.deadline_s) == ("hibernate", 60)
    naive = parse_notice('{"action": "terminate", "time": "2026-12-04T21:28:10"}', NOW)  # read as UTC
    assert naive.deadline_s == 10 and naive.time.tzinfo is UTC
    assert naive.message() == "spot interruption notice: terminate at 2026-12-04T21:28:10Z"
    for body, error in [
        ("{not json", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"action": "terminate"}', "no time"),
        ('{"time": "2026-12-04T21:30:00Z"}', "no action"),
        ('{"action": "terminate", "time": "tomorrow"}', "not an ISO 8601 time"),
    ]:
        with pytest.raises(NoticeError, match=error):
            parse_notice(body, NOW)


def test_the_drain_client_turns_token_auth_on_when_a_token_is_at_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert "RAY_AUTH_MODE" not in drain_env({})
    assert drain_env({"RAY_AUTH_TOKEN": "x"})["RAY_AUTH_MODE"] == "token"
    assert drain_env({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"})["RAY_AUTH_MODE"] == "disabled"
    (tmp_path / "t").write_text("x")
    assert drain_env({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "t")})["RAY_AUTH_MODE"] == "token"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("x")
    assert drain_env({})["RAY_AUTH_MODE"] == "token"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0"], "interval must be > 0"),
        (["--node-id", "node-1"], "node_id must be a Ray node id"),
        (["--endpoint", "169.254.169.254/x"], "endpoint must be an http(s) URL"),
    ],
)
def test_bad_flags_are_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["spot-watch", *argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_a_notice_drains_a_real_ray_node_with_the_notices_deadline():
    """tests/core/spot_cluster.py: a two-node Ray cluster with token auth, `genre-sweep spot-watch` as a subprocess."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("spot_cluster.py"))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,  # its own group: on a timeout, Ray's GCS and raylets go with it
    )
    try:
        out, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"spot_cluster.py ran past 150 s; its stderr ends:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    (line,) = [line for line in out.splitlines() if line.startswith("OUTCOME ")]
    outcome = json.loads(line.removeprefix("OUTCOME "))
    assert outcome["quiet"] and outcome["gets_before"] >= 3  # polled with no notice, and did nothing
    assert outcome["rc"] == 0, outcome["log"]
    assert outcome["puts"] >= 1 and outcome["bad_ttl"] == 0  # IMDSv2
    assert list(outcome["draining"]) == [outcome["worker"]]  # that node, not the head
    # the GCS's deadline is the notice's time, never later: rounded down to whole seconds, less DRAIN_START_S for the
    # drain command's start, from which Ray counts them
    early = outcome["notice_ms"] - outcome["draining"][outcome["worker"]]
    assert 0 <= early < 1000 * (DRAIN_START_S + 2), outcome
    (drained,) = [line for line in outcome["log"].splitlines() if "drained node" in line]
    assert outcome["worker"] in drained and "terminate at" in drained
