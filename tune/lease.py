"""One driver per sweep: a lease on the sweep's name, held while a ``sweep`` (or its ``--resume``) runs.

The lease is ``<storage>/<name>-lease.json`` (beside the sweep's folder, as its ASHA state is: a resumed Tune
re-uploads its stale copy of that folder), holding the holder's host, pid and start time for the refusal's line.

- **Local storage:** the holder keeps an exclusive ``flock`` on the file for its life. The kernel drops it when
  the process ends, however it ends, so a killed driver's lease is free at once; no clock is involved.
- **S3:** the lease object is created with a conditional PUT (``If-None-Match: *``) and renewed every
  ``RENEW_S`` seconds with ``If-Match`` on its own ETag. A lease is stale once its holder's process on this host is
  gone, or when it has not been renewed for ``STALE_S`` seconds (a head that died); a stale lease is taken over
  with ``If-Match`` on the stale one's ETag, so of two drivers taking it over only one wins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from genre_sweep.errors import one_line
from genre_sweep.store import StoreError, StoreOptions, filesystem, is_s3, put_if_unchanged, read_bytes, s3_etag
from genre_sweep.tune.configs import SweepError

log = logging.getLogger(__name__)

SUFFIX = "-lease.json"
RENEW_S = 30.0
STALE_S = 120.0


class LeaseHeld(SweepError):
    """Another driver runs this sweep now."""


@dataclasses.dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    started: float  # epoch seconds
    renewed: float

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), now, now)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def parse(cls, data: bytes) -> Holder | None:
        """None for a lease that is not one (empty, cut off): it protects nothing."""
        try:
            raw = json.loads(data)
            return cls(str(raw["host"]), int(raw["pid"]), float(raw["started"]), float(raw["renewed"]))
        except (ValueError, KeyError, TypeError):
            return None

    def stale(self, now: float) -> bool:
        if self.host == socket.gethostname() and not _alive(self.pid):
            return True
        return now - self.renewed > STALE_S

    def describe(self, now: float) -> str:
        began = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"pid {self.pid} on {self.host}, running since {began} (renewed {now - self.renewed:.0f} s ago)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _refusal(name: str, holder: Holder | None) -> LeaseHeld:
    who = holder.describe(time.time()) if holder else "another driver"
    return LeaseHeld(
        f"sweep {name!r} is running now ({who}): one driver per sweep; wait for it, or stop it "
        f"(its lease frees when that process ends, or {STALE_S:.0f} s after its last renewal on another host)"
    )


def refuse_if_held(root: str, name: str, options: StoreOptions) -> None:
    """``LeaseHeld`` if another driver holds the lease now; nothing otherwise (nor when the store cannot say).
    Writes nothing where no lease is."""
    uri = root.rstrip("/") + SUFFIX
    try:
        there = s3_etag(uri, options) is not None if is_s3(uri) else Path(uri.removeprefix("file://")).exists()
    except OSError:
        return
    if there:
        with contextlib.suppress(StoreError, OSError), holding(root, name, options):
            pass


@contextlib.contextmanager
def holding(root: str, name: str, options: StoreOptions) -> Iterator[None]:
    """Hold the lease of the sweep at ``root`` for the time inside; ``LeaseHeld`` (one line) if another driver
    holds it."""
    uri = root.rstrip("/") + SUFFIX
    with _local_lease(Path(uri.removeprefix("file://")), name) if not is_s3(uri) else _s3_lease(uri, name, options):
        yield


@contextlib.contextmanager
def _local_lease(path: Path, name: str) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _refusal(name, Holder.parse(path.read_bytes())) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me().to_json(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # unlocked below; an empty lease names no holder
    finally:
        os.close(fd)


@contextlib.contextmanager
def _s3_lease(uri: str, name: str, options: StoreOptions) -> Iterator[None]:
    me = Holder.me()
    try:
        etag = put_if_unchanged(uri, me.to_json(), options, None)
        if etag is None:
            current = s3_etag(uri, options)
            holder = Holder.parse(read_bytes(uri, options)) if current else None
            if holder is not None and not holder.stale(time.time()):
                raise _refusal(name, holder)
            # take the stale lease over (of two takers one wins), or create it if it was given back meanwhile
            etag = put_if_unchanged(uri, me.to_json(), options, current)
            if etag is None:
                raise _refusal(name, None)
            if holder is not None:
                log.warning("sweep %s: took over a stale lease (%s)", name, holder.describe(time.time()))
    except OSError as e:
        raise StoreError(f"cannot take the sweep's lease {uri}: {one_line(e)}") from e
    stop = threading.Event()
    state = {"etag": etag}

    def renew() -> None:
        while not stop.wait(RENEW_S):
            try:
                new = put_if_unchanged(
                    uri, dataclasses.replace(me, renewed=time.time()).to_json(), options, state["etag"]
                )
            except OSError as e:  # an outage: the next renewal tries again
                log.warning("sweep %s: could not renew its lease %s (%s)", name, uri, one_line(e))
                continue
            if new is None:  # our own last write, whose answer was lost? else another driver took the lease over
                with contextlib.suppress(OSError):
                    now = Holder.parse(read_bytes(uri, options))
                    if now is not None and (now.host, now.pid, now.started) == (me.host, me.pid, me.started):
                        state["etag"] = s3_etag(uri, options) or state["etag"]
                        continue
                log.error("sweep %s: another driver took its lease %s over; stopping this one", name, uri)
                os.kill(os.getpid(), signal.SIGTERM)  # the sweep stops as on SIGTERM, its state kept
                return
            state["etag"] = new

    renewer = threading.Thread(target=renew, name="sweep-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join(timeout=5)
        with contextlib.suppress(OSError):
            if s3_etag(uri, options) == state["etag"]:  # still ours
                fs, path = filesystem(uri, options)
                fs.delete_file(path)
