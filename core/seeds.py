"""Seeds from names: the same integer on every machine and Python run, so shards and trials repeat exactly."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from the parts' text: the same on every machine and Python run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
