"""Ray start-up, the one way every job reaches Ray: an explicit address, the job's own cluster, or a fresh local Ray."""

from __future__ import annotations

import os


def init_ray(address: str | None) -> None:
    """Connect to ``address``; without one, start a fresh local Ray, or join the job's cluster inside a Ray job.

    Never an implicit "whatever ran last on this machine": a stale pointer to a stopped cluster makes
    plain ``ray.init()`` hang or join the wrong cluster.
    """
    import ray  # here, not at the top: `genre-sweep <job> --help` must not pay for importing Ray

    if not ray.is_initialized():
        if address is None and not os.environ.get("RAY_ADDRESS"):
            address = "local"
        ray.init(address=address, log_to_driver=True)
