"""The shape of a dataset's ``manifest.json``, checked before anything is read through it.

A manifest that is valid JSON but not ours (a list, a missing key, a count that is not a number) and a
shard path that would leave the dataset (absolute, ``..``) are a ``DatasetError`` naming the manifest
and the first thing wrong, in one line, instead of a ``KeyError`` or a read outside the dataset later.
"""

from __future__ import annotations

import re
from typing import Any

from genre_sweep.data.configs import SPLITS
from genre_sweep.store import StoreError

SHA256 = re.compile(r"[0-9a-f]{64}")
# what prepare writes and readers use; other keys (summary, timings) are optional
REQUIRED = ("format_version", "genres", "features", "sources", "splits", "shards", "rejected", "config")
FEATURE_INTS = ("frames", "mel_bins", "sample_rate", "frame_shift_ms")


class DatasetError(StoreError):
    """A dataset's manifest or one of its shards is damaged or not ours; the message names the file."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def plain_name(name: Any) -> bool:
    """A single folder name: not empty, not ``.`` or ``..``, no separator."""
    return isinstance(name, str) and name not in ("", ".", "..") and not re.search(r"[/\\\x00]", name)


def inside(path: Any) -> bool:
    """A relative path that stays inside the folder it is relative to: plain names joined by ``/``."""
    return isinstance(path, str) and all(plain_name(part) for part in path.split("/"))


def manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` (parsed JSON) not a genre-sweep manifest, as a phrase; None when its shape is ours."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        return f"it lacks the key(s) {', '.join(missing)}"
    genres = manifest["genres"]
    if not (isinstance(genres, list) and genres and all(isinstance(g, str) for g in genres)):
        return f"genres must be a non-empty list of names, got {_show(genres)}"
    if len(set(genres)) != len(genres):
        return f"genres repeats a name: {_show(genres)}"
    features = manifest["features"]
    if not isinstance(features, dict):
        return f"features must be an object, got {_show(features)}"
    for key in FEATURE_INTS:
        if not (_count(features.get(key)) and features[key] > 0):
            return f"features.{key} must be a positive integer, got {_show(features.get(key))}"
    for key in ("dtype", "normalisation"):
        if not isinstance(features.get(key), str):
            return f"features.{key} must be a string, got {_show(features.get(key))}"
    for key in ("sources", "config", "splits"):
        if not isinstance(manifest[key], dict):
            return f"{key} must be an object, got {_show(manifest[key])}"
    if not isinstance(manifest["sources"].get("fingerprint"), str):
        return f"sources.fingerprint must be a string, got {_show(manifest['sources'].get('fingerprint'))}"
    for split in SPLITS:
        counts = manifest["splits"].get(split)
        if not isinstance(counts, dict) or not all(
            isinstance(c, dict) and _count(c.get("tracks")) and _count(c.get("rows")) for c in counts.values()
        ):
            return f"splits.{split} must map each genre to its tracks and rows, got {_show(counts)}"
    if not isinstance(manifest["rejected"], list):
        return f"rejected must be a list, got {_show(manifest['rejected'])}"
    if "version_dir" in manifest and not plain_name(manifest["version_dir"]):
        return f"version_dir {_show(manifest['version_dir'])} is not a folder name inside the dataset"
    if not isinstance(manifest["shards"], list):
        return f"shards must be a list, got {_show(manifest['shards'])}"
    for i, shard in enumerate(manifest["shards"]):
        problem = _shard_problem(shard)
        if problem:
            return f"shards[{i}]: {problem}"
    return None


def _shard_problem(shard: Any) -> str | None:
    if not isinstance(shard, dict):
        return f"must be an object, got {_show(shard)}"
    if not inside(shard.get("path")):
        return f"path {_show(shard.get('path'))} leaves the dataset (a shard path is relative, without '..')"
    if shard.get("split") not in SPLITS:
        return f"split {_show(shard.get('split'))} is not one of {', '.join(SPLITS)}"
    if not _count(shard.get("rows")):
        return f"rows must be an integer >= 0, got {_show(shard.get('rows'))}"
    if "sha256" in shard and not (isinstance(shard["sha256"], str) and SHA256.fullmatch(shard["sha256"])):
        return f"sha256 must be 64 hex digits, got {_show(shard['sha256'])}"
    return None
