"""Find the input tracks (a GTZAN-style folder or a path,label manifest) and split them by track.

Anything that can't be an input (unknown label, not an audio extension, a duplicate) is returned as
a ``Rejection`` with its reason, never dropped silently.

Each file is taken once. A local folder is walked level by level, each real folder once: a folder link
that leads to a folder already walked (a loop such as ``genre/loop -> ..``, or a second path to one
folder) is listed as refused, not followed, and so is a dangling link. Every candidate's content is
hashed (sha256) here, streamed, before the split: a file whose content was already taken is refused as a
duplicate of the first, so one recording can never land in two splits. For ``s3://`` sources this reads
every object once more from the driver (S3 has no content hash that multipart uploads keep), in threads;
the task that decodes a track checks that it reads the content hashed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from genre_sweep.data.audio import AUDIO_EXTENSIONS
from genre_sweep.data.configs import SPLITS
from genre_sweep.errors import one_line
from genre_sweep.seeds import stable_seed
from genre_sweep.store import StoreError, StoreOptions, filesystem, is_s3, list_files


@dataclasses.dataclass(frozen=True)
class Track:
    track_id: str  # unique; for a folder, "<genre>/<file stem>"
    source: str  # local absolute path or s3:// URI
    label: str
    sha256: str = ""  # of the content, hashed at discovery; unique among the tracks taken


@dataclasses.dataclass(frozen=True)
class Rejection:
    source: str
    label: str | None
    reason: str
    track_id: str | None = None
    split: str | None = None


def _uri(fs_path: str, s3: bool) -> str:
    return "s3://" + fs_path if s3 else fs_path


def _stem(path: str) -> str:
    return posixpath.splitext(path)[0]


def discover(source: str, genres: tuple[str, ...] | None, options: StoreOptions) -> tuple[list[Track], list[Rejection]]:
    """Tracks in ``source`` (folder, or .csv/.parquet manifest), and every input that was refused; with ``genres``
    None every label is taken (``labels_of`` then lists them)."""
    fs, path = filesystem(source, options)
    try:
        info = fs.get_file_info(path)
    except OSError as e:
        raise StoreError(f"cannot reach the source {source}: {e}") from e
    if info.type == pa.fs.FileType.NotFound:
        raise StoreError(f"source {source} does not exist")
    if info.type == pa.fs.FileType.File:
        entries = _manifest_entries(source, fs, path)
    elif is_s3(source):
        entries = _folder_entries([i.path for i in list_files(fs, path)], [], path, True)
    else:
        entries = _folder_entries(*walk_local(path), path, False)
    return _admit(entries, genres, options)


Entry = tuple[str, str | None, str, str | None]  # (uri, label, track id, reason it is refused or None)


def walk_local(root: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Every file below the local folder ``root``, sorted, each real folder walked once; and (path, reason) of
    what was not followed: folder links to a folder already walked (loops), dangling links, unreadable folders.

    Level by level, real folders before links at each level, so a link never takes a folder's files away from
    the folder's own path.
    """
    files: list[str] = []
    refused: list[tuple[str, str]] = []
    visited = {os.path.realpath(root)}
    level = [root]
    while level:
        folders: list[str] = []
        links: list[str] = []
        for folder in level:
            try:
                with os.scandir(folder) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as e:
                refused.append((folder, f"cannot list the folder: {e.strerror or e}"))
                continue
            for child in children:
                if child.is_symlink() and not os.path.exists(child.path):
                    refused.append((child.path, f"dangling link: its target {os.readlink(child.path)} does not exist"))
                elif child.is_dir():
                    (links if child.is_symlink() else folders).append(child.path)
                elif child.is_file():
                    files.append(child.path)
                else:
                    refused.append((child.path, "not a regular file"))
        level = []
        for folder in folders + links:
            real = os.path.realpath(folder)
            if real in visited:
                why = f"link to {real}, a folder already walked (a loop or a second path): not followed"
                refused.append((folder, why))
            else:
                visited.add(real)
                level.append(folder)
    return sorted(files), refused


def _folder_entries(files: list[str], refused: list[tuple[str, str]], root: str, s3: bool) -> list[Entry]:
    """Every file below ``root``; its label is the name of the folder holding it."""
    entries: list[Entry] = []
    for path in files:
        rel = posixpath.relpath(path, root)
        parts = rel.split("/")
        if len(parts) < 2:
            entries.append((_uri(path, s3), None, rel, "not inside a genre folder"))
        else:
            entries.append((_uri(path, s3), parts[-2], _stem(rel), None))
    for path, reason in refused:
        parts = posixpath.relpath(path, root).split("/")
        entries.append((path, parts[-2] if len(parts) >= 2 else None, "", reason))
    return entries


def _manifest_entries(source: str, fs: pa.fs.FileSystem, path: str) -> list[Entry]:
    with fs.open_input_stream(path) as f:
        data = f.read()
    if not path.endswith((".parquet", ".csv")):
        raise StoreError(f"source {source}: a manifest must be .csv or .parquet (or give a folder)")
    try:
        if path.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        else:
            table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as e:
        raise StoreError(f"manifest {source} cannot be read as {path.rsplit('.', 1)[1]}: {one_line(e)}") from e
    missing = {"path", "label"} - set(table.column_names)
    if missing:
        raise StoreError(f"manifest {source} lacks column(s) {sorted(missing)}; it needs path,label")
    base = posixpath.dirname(source)
    entries: list[Entry] = []
    for n, row in enumerate(table.select(["path", "label"]).to_pylist(), start=1):
        p, label = row["path"], row["label"]
        label = None if label is None else str(label)
        if not p:
            entries.append((f"{source} row {n}", label, "", "empty path in manifest"))
            continue
        p = str(p)
        if not is_s3(p) and not posixpath.isabs(p):
            p = posixpath.join(base, p) if is_s3(base) else posixpath.normpath(posixpath.join(base, p))
        entries.append((p, label, _stem(p), None if label else "no label in manifest"))
    return entries


def labels_of(tracks: list[Track], source: str) -> tuple[str, ...]:
    """The distinct labels of ``tracks``, sorted: the genres of a source whose labels were not pinned."""
    labels = tuple(sorted({t.label for t in tracks}))
    if len(labels) < 2:
        found = f"only {list(labels)}" if labels else "no labelled audio"
        raise StoreError(f"source {source}: found {found}; a classifier needs audio of at least two genres")
    return labels


HASH_THREADS = 8  # files hashed at once (S3's latency, several local disks)


def content_sha256(uri: str, options: StoreOptions) -> str:
    """The sha256 of a file's content, read in 1 MiB chunks (never whole in memory)."""
    fs, path = filesystem(uri, options)
    h = hashlib.sha256()
    with fs.open_input_stream(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _hash_or_reason(uri: str, options: StoreOptions) -> tuple[str, str | None]:
    try:
        return content_sha256(uri, options), None
    except (OSError, StoreError) as e:
        return "", f"cannot read: {one_line(e)}"


def _admit(
    entries: list[Entry], genres: tuple[str, ...] | None, options: StoreOptions
) -> tuple[list[Track], list[Rejection]]:
    """Tracks (each id and each content once, the first in ``entries``' order kept) and the refused entries."""
    candidates: list[tuple[str, str | None, str]] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    for uri, label, track_id, reason in entries:
        if reason:
            pass
        elif genres is not None and label not in genres:
            reason = f"unknown label {label!r} (expected one of {', '.join(genres)})"
        elif not uri.lower().endswith(AUDIO_EXTENSIONS):
            reason = f"not an audio file extension (accepted: {' '.join(AUDIO_EXTENSIONS)})"
        elif track_id in seen:
            reason = f"duplicate track {track_id!r} (already taken from {seen[track_id]})"
        if reason:
            rejected.append(Rejection(uri, label, reason))
        else:
            seen[track_id] = uri
            candidates.append((uri, label, track_id))
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashes = list(pool.map(lambda c: _hash_or_reason(c[0], options), candidates))
    tracks: list[Track] = []
    first: dict[str, str] = {}
    for (uri, label, track_id), (sha, reason) in zip(candidates, hashes, strict=True):
        if not reason and sha in first:
            reason = f"duplicate of {first[sha]} (the same content, sha256 {sha[:12]}...)"
        if reason:
            rejected.append(Rejection(uri, label, reason))
        else:
            first[sha] = uri
            tracks.append(Track(track_id, uri, label, sha))
    return sorted(tracks, key=lambda t: t.track_id), rejected


def split_tracks(tracks: list[Track], fractions: tuple[float, ...], seed: int) -> dict[str, str]:
    """track_id -> split, stratified by label and seeded; each label's counts by largest remainder.

    A label with at least one track always gets at least one training track.
    """
    by_label: dict[str, list[str]] = {}
    for t in tracks:
        by_label.setdefault(t.label, []).append(t.track_id)
    out: dict[str, str] = {}
    for label, ids in sorted(by_label.items()):
        ids = sorted(ids)
        order = np.random.default_rng(stable_seed(seed, label)).permutation(len(ids))
        exact = np.asarray(fractions) * len(ids)
        counts = np.floor(exact).astype(int)
        for i in np.argsort(-(exact - counts), kind="stable")[: len(ids) - counts.sum()]:
            counts[i] += 1
        if counts[0] == 0:
            counts[int(np.argmax(counts))] -= 1
            counts[0] = 1
        names = np.repeat(np.array(SPLITS), counts)
        for idx, name in zip(order, names, strict=True):
            out[ids[idx]] = str(name)
    return out


def work_items(tracks: list[Track], fractions: tuple[float, ...], seed: int, genres: tuple[str, ...]) -> list[dict]:
    """Tracks in processing order (split, then id), each with its split, label index and position."""
    splits = split_tracks(tracks, fractions, seed)
    order = sorted(tracks, key=lambda t: (SPLITS.index(splits[t.track_id]), t.track_id))
    return [
        {
            "track_id": t.track_id,
            "source": t.source,
            "label": t.label,
            "label_index": genres.index(t.label),
            "split": splits[t.track_id],
            "track_index": i,
            "sha256": t.sha256,
        }
        for i, t in enumerate(order)
    ]
