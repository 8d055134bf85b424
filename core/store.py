"""Object storage: one way to reach a local folder or an ``s3://`` prefix through pyarrow's filesystems.

Credentials and region come from the usual AWS environment or profile; only the endpoint (for
S3-compatible stores) and region are ever passed explicitly, so nothing secret is held, pickled or
written by this project.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from genre_sweep.config import field
from genre_sweep.errors import GenreSweepError, one_line

log = logging.getLogger(__name__)


class StoreError(GenreSweepError, RuntimeError):
    """A store can't be reached, read or written; the message names the location."""


class StoreUnreachable(StoreError):
    """A write failed because the store could not be reached (not because it is full): what was written before
    stays useful to a rerun."""


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """How to reach S3: an endpoint override (``http://host:port``) and a region, both optional."""

    endpoint: str | None = None
    region: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class StoreFlags:
    """The storage flags every job that reads or writes a store takes: declared once, here."""

    s3_endpoint: str | None = field(None, "endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000")
    s3_region: str | None = field(None, "S3 region (else from the AWS config)")

    @property
    def options(self) -> StoreOptions:
        return StoreOptions(self.s3_endpoint, self.s3_region)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, options: StoreOptions = StoreOptions()) -> tuple[pafs.FileSystem, str]:
    """The filesystem for ``uri`` and the path inside it (``bucket/key`` for S3, absolute for local)."""
    if is_s3(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise StoreError(f"{uri}: an s3:// location needs a bucket name")
        kwargs: dict = {
            "connect_timeout": 5,
            "request_timeout": 60,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
        }
        if options.endpoint:
            endpoint = urlparse(options.endpoint if "://" in options.endpoint else "http://" + options.endpoint)
            kwargs["endpoint_override"] = endpoint.netloc
            kwargs["scheme"] = endpoint.scheme or "http"
        if options.region:
            kwargs["region"] = options.region
        path = (parsed.netloc + "/" + parsed.path.lstrip("/")).rstrip("/")
        return pafs.S3FileSystem(**kwargs), path
    if "://" in uri and not uri.startswith("file://"):
        raise StoreError(f"{uri}: unsupported location (use a local path or s3://bucket/prefix)")
    local = uri.removeprefix("file://")
    return pafs.LocalFileSystem(), str(Path(local).expanduser().resolve())


def absolute(uri: str) -> str:
    """``uri`` as every process can read it: a local path made absolute (Ray's workers and Tune's trials run in
    other working directories); s3:// as it is."""
    return uri if is_s3(uri) else str(Path(uri.removeprefix("file://")).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def read_bytes(uri: str, options: StoreOptions = StoreOptions()) -> bytes:
    fs, path = filesystem(uri, options)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_to(uri: str, data: bytes, options: StoreOptions = StoreOptions()) -> None:
    """``write_bytes`` to a location given as a URI (local or s3://): the twin of ``read_bytes``."""
    fs, path = filesystem(uri, options)
    write_bytes(fs, path, data)


def write_bytes(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` whole or not at all: one PUT on S3 (an object appears only when complete), a temporary
    file renamed over ``path`` locally, so a reader or a process killed mid-write never leaves half a file."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    write_atomic(Path(path), data)


def write_atomic(path: Path, data: bytes | str) -> None:
    """A local file written to a temporary name beside it and renamed over ``path`` (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


STORE_RETRY_WAITS_S = (1.0, 2.0, 4.0, 8.0, 16.0)  # about 30 s of an outage before giving up


def with_retries(
    action: Callable[[], None], what: str, waits: tuple[float, ...] = STORE_RETRY_WAITS_S, fatal: bool = True
) -> bool:
    """Run ``action``; a storage error (pyarrow's ``OSError``: unreachable, timed out) is retried after each of
    ``waits`` seconds with a warning, so a store that goes away for a while costs time, not the run.

    When every attempt failed: re-raises (``fatal``), or logs that ``what`` was skipped and returns False.
    """
    for attempt, wait in enumerate((*waits, None), start=1):
        try:
            action()
            return True
        except OSError as e:
            if wait is None:
                if fatal:
                    raise
                log.warning("could not %s after %d attempts (%s); going on without it", what, attempt, one_line(e))
                return False
            log.warning("could not %s (%s); attempt %d, retrying in %g s", what, one_line(e), attempt, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def list_files(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """Every file below ``path`` (recursively), sorted by path; empty if ``path`` does not exist."""
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def all_files(fs: pafs.FileSystem, folder: str, names: tuple[str, ...]) -> bool:
    """Whether ``folder`` holds each of ``names`` as a non-empty file (a folder uploaded in no fixed order, or cut
    off, lacks one)."""
    infos = fs.get_file_info([posixpath.join(folder, name) for name in names])
    return all(i.type == pafs.FileType.File and i.size for i in infos)


def own_location(uri: str, options: StoreOptions, example: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of an output location that a job may fill or empty: never a bucket root or the
    filesystem root (``example`` names a sensible sub-folder in the error)."""
    fs, path = filesystem(uri, options)
    if is_s3(uri) and "/" not in path:
        raise StoreError(f"{uri} is a bucket root; give a prefix of its own, e.g. {uri.rstrip('/')}/{example}")
    if not is_s3(uri) and path == "/":
        raise StoreError(f"{uri} is the filesystem root; give a folder of its own")
    return fs, path


def probe_writable(fs: pafs.FileSystem, path: str) -> None:
    """Write a small object under ``path`` and delete it; raises pyarrow's ``OSError`` when that fails."""
    probe = join(path, f".write-probe-{uuid.uuid4().hex}")
    write_bytes(fs, probe, b"ok")
    fs.delete_file(probe)


def prepare_destination(uri: str, options: StoreOptions, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """Check that ``uri`` can be written and is empty (or emptied, with ``overwrite``).

    Raises StoreError with a clear message when the store can't be reached or holds files.
    """
    fs, path = own_location(uri, options, "corpus")
    try:
        existing = list_files(fs, path)
    except OSError as e:
        raise StoreError(f"cannot reach the output store {uri}: {e}") from e
    if existing and not overwrite:
        raise StoreError(
            f"output {uri} is not empty ({len(existing)} files, e.g. {existing[0].path}); "
            "pass --overwrite to replace it"
        )
    try:
        if existing:
            log.info("overwrite: removing %d files under %s", len(existing), uri)
            fs.delete_dir_contents(path, missing_dir_ok=True)
        probe_writable(fs, path)
    except OSError as e:
        raise StoreError(f"cannot write to the output store {uri}: {e}") from e
    return fs, path


# What a full filesystem says, through pyarrow (its OSError text), SQLite (the study) and Python (errno ENOSPC).
FULL = ("No space left on device", "database or disk is full", "Disk quota exceeded")


def storage_full(error: BaseException | str | None) -> bool:
    """Whether ``error`` (an exception and its causes, or a traceback's text) is a full disk or quota."""
    seen: set[int] = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(error) for text in FULL):
            return True
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return isinstance(error, str) and any(text in error for text in FULL)


# --- S3's conditional writes (pyarrow has none): boto3, with the same endpoint and region ------------------


def s3_client(options: StoreOptions) -> Any:
    import boto3

    endpoint = options.endpoint
    if endpoint and "://" not in endpoint:
        endpoint = "http://" + endpoint
    return boto3.client("s3", endpoint_url=endpoint, region_name=options.region)


def _bucket_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, parsed.path.lstrip("/")


def s3_etag(uri: str, options: StoreOptions) -> str | None:
    """The ETag of the object at ``uri`` now; None when there is none."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(uri)
    try:
        return s3_client(options).head_object(Bucket=bucket, Key=key)["ETag"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise OSError(f"cannot read {uri}: {e}") from e
    except BotoCoreError as e:  # unreachable
        raise OSError(f"cannot read {uri}: {e}") from e


def put_if_unchanged(uri: str, data: bytes, options: StoreOptions, etag: str | None) -> str | None:
    """Write ``data`` to ``uri`` only if the object there is still the one with ``etag`` (None: only if there is
    none): S3's conditional PUT (If-Match / If-None-Match). Returns the new ETag, or None when another writer got
    there first; raises OSError when the store cannot be reached."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = _bucket_key(uri)
    condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
    try:
        return s3_client(options).put_object(Bucket=bucket, Key=key, Body=data, **condition)["ETag"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return None
        raise OSError(f"cannot write {uri}: {e}") from e
    except BotoCoreError as e:
        raise OSError(f"cannot write {uri}: {e}") from e
