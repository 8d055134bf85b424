"""Ray start-up, the one way every job reaches Ray: an explicit address, the job's own cluster, or a fresh local Ray."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from genre_sweep.config import ConfigError
from genre_sweep.errors import GenreSweepError
from genre_sweep.interrupt import install

# Where `ray up` puts the cluster config on the head (Ray's monitor reads it from there).
BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()

TOKEN_HELP = (
    "set RAY_AUTH_MODE=token and give this machine the cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN_PATH "
    "or RAY_AUTH_TOKEN; `ray get-auth-token` prints it on the head), or run the command on the head"
)


class RayConnectError(GenreSweepError, ConnectionError):
    """The Ray cluster named by --ray-address can't be joined; the message says what to set."""


def init_ray(address: str | None) -> str | None:
    """Connect to ``address``; without one, start a fresh local Ray, or join the job's cluster inside a Ray job.
    Returns the Ray dashboard's URL (http://host:port), or None when the cluster has none or Ray was already
    started in this process.

    Never an implicit "whatever ran last on this machine": a stale pointer to a stopped cluster makes
    plain ``ray.init()`` hang or join the wrong cluster. A cluster started with `ray start` uses token
    authentication: refused for want of a token, this says in one line what to set.
    """
    import ray  # here, not at the top: `genre-sweep <job> --help` must not pay for importing Ray

    if ray.is_initialized():
        return None
    if address is None and not os.environ.get("RAY_ADDRESS"):
        address = "local"
    try:
        context = ray.init(address=address, log_to_driver=True)
        install()  # ray.init made SIGTERM exit with code 15: a job stops in one line with 143 instead
    except (ConnectionError, RuntimeError) as e:
        if not _refused_token(e):
            raise
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        raise RayConnectError(
            f"--ray-address {address}: the cluster refused this client's token (RAY_AUTH_MODE is {mode}): {TOKEN_HELP}"
        ) from e
    url = context.dashboard_url  # host:port, without its scheme
    return None if not url else url if "://" in url else f"http://{url}"


def resource_offered(name: str) -> bool:
    """Whether a node up now, or a node type of a `ray up` head's bootstrap config, advertises resource ``name``."""
    import ray

    if any(n.get("Alive") and n["Resources"].get(name) for n in ray.nodes()):
        return True
    if BOOTSTRAP_CONFIG.exists():
        types = read_cluster_config(BOOTSTRAP_CONFIG).get("available_node_types", {})
        return any(t.get("resources", {}).get(name) for t in types.values())
    return False


def read_cluster_config(path: str | Path) -> dict[str, Any]:
    """A cluster config (`ray up`'s YAML, or the head's bootstrap JSON) as a mapping; ConfigError naming the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())  # the bootstrap config is JSON, which YAML reads too
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--cluster {path}: cannot read it as a cluster config: {e}") from e
    if not isinstance(loaded, dict):
        raise ConfigError(f"--cluster {path}: not a cluster config (expected a mapping)")
    return loaded


def _refused_token(exc: BaseException | None) -> bool:
    """Whether Ray's connection failure, or one it wraps (possibly only as text), is a refused token."""
    while exc is not None:
        if type(exc).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
