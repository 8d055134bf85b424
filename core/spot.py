"""``genre-sweep spot-watch``: turn AWS's spot interruption notice into a Ray drain of this node.

AWS warns a spot instance two minutes before reclaiming it: the instance metadata endpoint
``/latest/meta-data/spot/instance-action`` answers 404 while there is no notice, and
``{"action": "terminate", "time": "...Z"}`` once there is one. Ray ignores it. This watcher polls the endpoint
(IMDSv2: a session token first, IMDSv1 where the token endpoint refuses) and, on a notice, asks Ray's GCS to drain
the node for preemption with the notice's deadline (``ray drain-node``, as a subprocess), so the trials on it
checkpoint and move before the instance goes. It exits 0 once Ray accepted the drain.

No Ray import until a notice comes (then only to find the node): it runs beside every worker for the node's life.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import math
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from genre_sweep.cli import job_main
from genre_sweep.config import check, field
from genre_sweep.errors import GenreSweepError, one_line

log = logging.getLogger(__name__)

NOTICE_URL = "http://169.254.169.254/latest/meta-data/spot/instance-action"
TOKEN_URL = "http://169.254.169.254/latest/api/token"
TOKEN_TTL_S = 21600  # IMDSv2's longest session: 6 h
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
REASON = "DRAIN_NODE_REASON_PREEMPTION"
DRAIN_TIMEOUT_S = 30.0  # one `ray drain-node` call; past it, the next poll tries again
NODE_ID = re.compile(r"[0-9a-f]{56}")  # a Ray NodeID in hex (28 bytes)


class NoticeError(GenreSweepError, ValueError):
    """The endpoint's body is not a spot interruption notice; the message says what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class SpotWatchConfig:
    """Watch this instance's AWS spot interruption notice and, when one comes, drain this Ray node for preemption
    with the notice's deadline (`ray drain-node`), so its trials checkpoint and move before the instance goes.
    Exits 0 once Ray accepted the drain. On an on-demand instance the notice never comes: it just polls.
    cluster.yaml starts it on every worker after `ray start`; see docs/cluster.md, "Spot GPU workers"."""

    endpoint: str = field(NOTICE_URL, "the instance metadata URL of the spot interruption notice")
    token_endpoint: str | None = field(
        TOKEN_URL, "the IMDSv2 session-token URL (PUT); none: IMDSv1, no token (also the fallback when it refuses)"
    )
    interval: float = field(5.0, "seconds between polls (AWS gives two minutes' notice)")
    timeout: float = field(2.0, "seconds one request to the metadata endpoint may take")
    ray_address: str = field("auto", "the Ray cluster (GCS host:port); auto: the one this node's `ray start` joined")
    node_id: str | None = field(
        None, "hex id of the Ray node to drain; unset: the one raylet running on this host (`ray start`'s)"
    )

    def __post_init__(self) -> None:
        for name in ("endpoint", "token_endpoint"):
            url = getattr(self, name)
            check(
                url is None or url.startswith(("http://", "https://")),
                f"{name} must be an http(s) URL, got {url!r}",
            )
        check(self.interval > 0, f"interval must be > 0 seconds, got {self.interval}")
        check(self.timeout > 0, f"timeout must be > 0 seconds, got {self.timeout}")
        check(bool(self.ray_address.strip()), "ray_address must not be empty (auto: this node's cluster)")
        check(
            self.node_id is None or NODE_ID.fullmatch(self.node_id) is not None,
            f"node_id must be a Ray node id (56 hex digits), got {self.node_id!r}",
        )


@dataclasses.dataclass(frozen=True)
class Notice:
    action: str  # terminate, stop or hibernate
    time: datetime  # when AWS acts, UTC
    deadline_s: int  # whole seconds from now until then, at least 0

    def message(self) -> str:
        return f"spot interruption notice: {self.action} at {self.time.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def parse_notice(body: bytes | str, now: datetime) -> Notice:
    """The notice in ``body`` (the endpoint's JSON) with its deadline counted from ``now`` (aware, UTC): whole
    seconds, rounded down, at least 0. NoticeError names what is wrong with a body that is not a notice."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise NoticeError(f"not JSON ({e})") from e
    if not isinstance(data, dict):
        raise NoticeError(f"expected a JSON object with action and time, got {type(data).__name__}")
    action, when = data.get("action"), data.get("time")
    if not isinstance(action, str) or not action.strip():
        raise NoticeError(f"no action in {data}")
    if not isinstance(when, str):
        raise NoticeError(f"no time in {data}")
    try:
        at = datetime.fromisoformat(when)
    except ValueError as e:
        raise NoticeError(f"time {when!r} is not an ISO 8601 time") from e
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)  # AWS writes UTC
    return Notice(action.strip(), at, seconds_left(at, now))


# `ray drain-node` counts its --deadline-remaining-seconds from its own start, a second or two after the watcher
# counted them (Python starting, Ray imported): taken off, so that the deadline Ray holds is not later than AWS's.
DRAIN_START_S = 2


def seconds_left(at: datetime, now: datetime) -> int:
    """Whole seconds from ``now`` until ``at``, rounded down, at least 0."""
    return max(0, math.floor((at - now).total_seconds()))


def drain_command(address: str, node_id: str, notice: Notice) -> list[str]:
    """``ray drain-node`` for ``notice``, run by this Python (the Ray beside it, whatever PATH says)."""
    return [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "drain-node",
        "--address",
        address,
        "--node-id",
        node_id,
        "--reason",
        REASON,
        "--reason-message",
        notice.message(),
        "--deadline-remaining-seconds",
        str(notice.deadline_s),
    ]


def drain_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The drain client's environment: this one, with token authentication on when a token is at hand and
    ``RAY_AUTH_MODE`` is unset (what `ray start` does on its own; `ray drain-node` does not)."""
    env = dict(os.environ if environ is None else environ)
    if "RAY_AUTH_MODE" not in env:
        path = env.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        if env.get("RAY_AUTH_TOKEN") or Path(path).is_file():
            env["RAY_AUTH_MODE"] = "token"
    return env


def local_node_id() -> str:
    """The id of the one Ray node (raylet) running on this host: the one to drain when --node-id is unset."""
    from ray._private.services import find_node_ids  # only now: a watcher never imports Ray before a notice

    ids = sorted(find_node_ids())
    if len(ids) != 1:
        found = f"{len(ids)} ({', '.join(ids)})" if ids else "none"
        raise GenreSweepError(f"Ray nodes running on this host: {found}; give --node-id")
    return ids[0]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


Runner = Callable[..., subprocess.CompletedProcess]


class Watcher:
    """One poll at a time (``poll``); ``run`` polls every ``interval`` until Ray accepted a drain.

    ``runner`` runs the drain command (``subprocess.run``'s signature); ``now`` and ``sleep`` are the clock."""

    def __init__(
        self,
        cfg: SpotWatchConfig,
        runner: Runner = subprocess.run,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.runner = runner
        self.now = now
        self.sleep = sleep
        self.token: str | None = None
        self.token_at = 0.0  # time.monotonic() of the token
        self.imdsv1 = cfg.token_endpoint is None
        self.said_imdsv1 = False  # the fallback to IMDSv1 is told once
        self.unreachable = False  # one warning per outage, one info line when it ends
        self.bad_bodies: set[bytes] = set()  # one warning per malformed body
        self.node_id = cfg.node_id
        # straight to the endpoint: the instance metadata is never behind an HTTP(S)_PROXY the node may set
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def run(self) -> int:
        log.info(
            "watching %s every %g s for a spot interruption notice (%s)",
            self.cfg.endpoint,
            self.cfg.interval,
            "IMDSv1" if self.imdsv1 else "IMDSv2",
        )
        while not self.poll():
            self.sleep(self.cfg.interval)
        return 0

    def poll(self) -> bool:
        """Read the endpoint once; on a notice, ask Ray to drain. True once Ray accepted the drain."""
        body = self.read_notice()
        if body is None:
            return False
        try:
            notice = parse_notice(body, self.now())
        except NoticeError as e:
            if body not in self.bad_bodies:
                self.bad_bodies.add(body)
                log.warning("%s answered something that is not a notice: %s; polling on", self.cfg.endpoint, e)
            return False
        return self.drain(notice)

    # --- the metadata endpoint ---

    def read_notice(self) -> bytes | None:
        """The notice's body, or None: no notice (404), or the endpoint unreachable (logged once per outage)."""
        try:
            headers = self.token_headers()
            status, body = self.request("GET", self.cfg.endpoint, headers)
            if status == 401 and self.cfg.token_endpoint:  # the token expired, or IMDSv2 became required
                self.token, self.imdsv1 = None, False
                status, body = self.request("GET", self.cfg.endpoint, self.token_headers())
        except (OSError, http.client.HTTPException, UnicodeError) as e:  # URLError, timeouts, refused, cut-off replies
            self.down(getattr(e, "reason", None) or e)
            return None
        if status not in (200, 404):  # 5xx, or a refusal (IMDS turned off answers 403)
            self.down(f"HTTP {status}")
            return None
        self.up()
        return body if status == 200 else None

    def token_headers(self) -> dict[str, str]:
        """The IMDSv2 token header (fetching a token when there is none or it is old), or none for IMDSv1."""
        if self.imdsv1:
            return {}
        if self.token is None or time.monotonic() - self.token_at > TOKEN_TTL_S - 60:
            status, body = self.request("PUT", self.cfg.token_endpoint, {TOKEN_TTL_HEADER: str(TOKEN_TTL_S)})
            if status in (403, 404, 405):
                if not self.said_imdsv1:
                    self.said_imdsv1 = True
                    log.info("%s refused a session token (HTTP %d): IMDSv1, no token", self.cfg.token_endpoint, status)
                self.imdsv1 = True
                return {}
            if status != 200:
                raise OSError(f"token request: HTTP {status}")
            self.token, self.token_at = body.decode().strip(), time.monotonic()
        return {TOKEN_HEADER: self.token}

    def request(self, method: str, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """(status, body) of one request; an HTTP error status is returned, not raised."""
        req = urllib.request.Request(url, method=method, headers=headers)
        try:
            with self.opener.open(req, timeout=self.cfg.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read()

    def down(self, reason: object) -> None:
        if not self.unreachable:
            self.unreachable = True
            log.warning("cannot read %s (%s); polling on every %g s", self.cfg.endpoint, reason, self.cfg.interval)

    def up(self) -> None:
        if self.unreachable:
            self.unreachable = False
            log.info("%s answers again", self.cfg.endpoint)

    # --- the drain ---

    def drain(self, notice: Notice) -> bool:
        """Ask Ray to drain the node for ``notice``; True once accepted, else one error line (tried again next poll)."""
        if self.node_id is None:
            try:
                self.node_id = local_node_id()
            except GenreSweepError as e:
                log.error("spot %s notice, but no node to drain: %s", notice.action, e)
                return False
        # counted again: finding the node, or an earlier failed try, may have taken a while
        notice = dataclasses.replace(notice, deadline_s=max(0, seconds_left(notice.time, self.now()) - DRAIN_START_S))
        started = time.monotonic()
        try:
            done = self.runner(
                drain_command(self.cfg.ray_address, self.node_id, notice),
                capture_output=True,
                text=True,
                timeout=DRAIN_TIMEOUT_S,
                env=drain_env(),
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            log.error("drain request for node %s failed: %s; trying again", self.node_id, one_line(e))
            return False
        took = time.monotonic() - started
        if done.returncode != 0:
            log.error(
                "drain request for node %s failed (exit %d): %s; trying again",
                self.node_id,
                done.returncode,
                last_line(done.stderr or done.stdout or ""),
            )
            return False
        log.info(
            "drained node %s for spot %s at %s: deadline %d s, the drain request took %.2f s",
            self.node_id,
            notice.action,
            notice.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            notice.deadline_s,
            took,
        )
        return True


def run(cfg: SpotWatchConfig) -> int:
    return Watcher(cfg).run()


main = job_main("spot-watch")


if __name__ == "__main__":
    sys.exit(main())
