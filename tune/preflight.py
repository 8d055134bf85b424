"""``genre-sweep preflight``: the checks to pass before paying for a cluster run, each with a clear verdict.

1. the cluster config against Ray's own schema (offline);
2. some node type (of the config, or of the running cluster) able to hold one trial's resources;
3. the sweep's storage writable (a probe object written and deleted);
4. the shards' manifest matching the model: frames and mel bins of ``--pretrained``.
"""

from __future__ import annotations

import copy
import logging
import sys
import uuid
from typing import Any

import jsonschema
import ray
import yaml

from genre_sweep.cli import job_main
from genre_sweep.data.shards import open_dataset
from genre_sweep.model.dora_ast import ModelError, backbone_config
from genre_sweep.store import StoreError, StoreOptions, filesystem, join, write_bytes
from genre_sweep.tune.configs import PreflightConfig
from genre_sweep.tune.internals import prepare_cluster_config

log = logging.getLogger(__name__)


def check_cluster_config(path: str) -> dict[str, Any]:
    """The config with Ray's defaults filled in; raises ValueError naming the first schema violation."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read as YAML: {e}") from e
    try:
        full = prepare_cluster_config(copy.deepcopy(config))
    except jsonschema.ValidationError as e:
        where = "/".join(map(str, e.absolute_path)) or "top level"
        raise ValueError(f"{path}: at {where}: {e.message}") from e
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: {e}") from e
    return full


def node_types_holding(config: dict[str, Any], cpus: float, gpus: float) -> list[str]:
    """Node types of a cluster config whose advertised resources hold one trial."""
    return [
        name
        for name, node in config["available_node_types"].items()
        if node.get("resources", {}).get("CPU", 0) >= cpus and node.get("resources", {}).get("GPU", 0) >= gpus
    ]


def check_storage_writable(uri: str, options: StoreOptions) -> None:
    fs, root = filesystem(uri, options)
    probe = join(root, f".preflight-{uuid.uuid4().hex}")
    try:
        write_bytes(fs, probe, b"ok")
        fs.delete_file(probe)
    except OSError as e:
        raise StoreError(f"storage {uri} is not writable: {e}") from e


def check_shards_match_model(shards: str, pretrained: str, options: StoreOptions) -> str:
    ds = open_dataset(shards, options)
    backbone_config(pretrained, ds.frames, ds.mel_bins)  # raises ModelError naming the mismatch
    return f"{len(ds.genres)} genres, windows of {ds.frames} x {ds.mel_bins} fit {pretrained}"


def run_checks(cfg: PreflightConfig) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for every check; nothing raises."""
    options = cfg.options
    results: list[tuple[str, bool, str]] = []
    trial = f"{cfg.cpus_per_trial:g} CPU + {cfg.gpus_per_trial:g} GPU"
    if cfg.cluster:
        try:
            full = check_cluster_config(cfg.cluster)
            results.append(("cluster config matches Ray's schema", True, cfg.cluster))
            fits = node_types_holding(full, cfg.cpus_per_trial, cfg.gpus_per_trial)
            offered = ", ".join(f"{n}: {v.get('resources', {})}" for n, v in full["available_node_types"].items())
            results.append(
                (
                    f"a node type holds one trial ({trial})",
                    bool(fits),
                    f"fits: {', '.join(fits)}" if fits else f"none does; node types offer {offered}",
                )
            )
        except ValueError as e:
            results.append(("cluster config matches Ray's schema", False, str(e)))
    if cfg.ray_address:
        ray.init(address=cfg.ray_address)
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        fits = [n for n in nodes if n.get("CPU", 0) >= cfg.cpus_per_trial and n.get("GPU", 0) >= cfg.gpus_per_trial]
        results.append((f"a running node holds one trial ({trial})", bool(fits), f"{len(fits)} of {len(nodes)} nodes"))
    try:
        check_storage_writable(cfg.storage, options)
        results.append(("storage writable", True, cfg.storage))
    except StoreError as e:
        results.append(("storage writable", False, str(e)))
    try:
        results.append(("shards match the model", True, check_shards_match_model(cfg.shards, cfg.pretrained, options)))
    except (StoreError, ModelError) as e:
        results.append(("shards match the model", False, str(e)))
    return results


def run(cfg: PreflightConfig) -> int:
    """Print each check's verdict; exit code 0 when all pass, 2 otherwise."""
    results = run_checks(cfg)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    failed = sum(not ok for _, ok, _ in results)
    print("preflight passed" if not failed else f"preflight failed: {failed} of {len(results)} checks")
    return 0 if not failed else 2


main = job_main("preflight")

if __name__ == "__main__":
    sys.exit(main())
