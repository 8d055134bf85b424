"""Ctrl-C and SIGTERM: one line and exit code 128 + the signal; a graceful section stops at the first signal's
request and at once on the second. Real signals, sent to this process."""

import os
import signal
import time

import pytest

from genre_sweep.interrupt import Interrupted, graceful
from genre_sweep.jobs import run_job


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_job_stopped_by_a_signal_says_so_in_one_line_with_128_plus_the_signal(signum, code, capsys):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def body() -> int:
        os.kill(os.getpid(), signum)
        time.sleep(5)  # interrupted long before
        return 0

    assert run_job(body) == code
    assert capsys.readouterr().err.strip() == f"interrupted ({signal.Signals(signum).name})"
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers before are back


def test_in_a_graceful_section_the_first_signal_asks_to_stop_and_a_second_stops_at_once():
    asked: list[str] = []
    with pytest.raises(Interrupted) as second:
        with graceful(lambda: asked.append("stop") is None, "work") as received:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # the handler runs between bytecodes: the section goes on
            assert asked == ["stop"] and received == [signal.SIGTERM]
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert second.value.exit_code == 130 and asked == ["stop"]


def test_in_a_graceful_section_with_nothing_to_stop_yet_the_first_signal_stops_at_once():
    with pytest.raises(Interrupted) as first:
        with graceful(lambda: False, "work"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert first.value.exit_code == 143
