"""``genre-sweep preflight``: the checks to pass before paying for a cluster run, each with a clear verdict.

1. the cluster config against Ray's own schema (offline);
2. some node type (of the config, or of the running cluster) able to hold one trial's resources;
3. the sweep's storage writable (a probe object written and deleted);
4. the shards' manifest matching the model: frames and mel bins of ``--pretrained``;
5. what each node type that runs trials will store: the dataset and the frozen-prefix cache, against its disk.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
from typing import Any, TypeVar

import jsonschema
import ray
import yaml
from ray import tune

from genre_sweep.cli import job_main
from genre_sweep.config import flag
from genre_sweep.data.shards import open_dataset
from genre_sweep.model.data import check_dataset
from genre_sweep.model.dora_ast import ModelError
from genre_sweep.model.node_store import NodeSizes, node_sizes
from genre_sweep.ray_start import RayConnectError, init_ray
from genre_sweep.store import StoreError, StoreOptions, filesystem, probe_writable
from genre_sweep.tune.capacity import Capacity, cluster_capacity, from_cluster_config
from genre_sweep.tune.configs import LaunchConfig, PreflightConfig, RetrainConfig, SweepConfig, SweepError
from genre_sweep.tune.internals import prepare_cluster_config
from genre_sweep.tune.record import (
    SweepRecord,
    has_record,
    make_record,
    new_sweep,
    read_record,
    reconcile,
)
from genre_sweep.tune.space import load_space
from genre_sweep.tune.state import check_tune_state
from genre_sweep.tune.study import resumed_study_url, study_exists

C = TypeVar("C", bound=RetrainConfig)

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
    return [t.name for t in from_cluster_config(config, "cluster config").holding(cpus, gpus)]


def check_gpu_images(config: dict[str, Any]) -> tuple[bool, str]:
    """Every GPU node type names its AMI: Ray's default AMI has an NVIDIA driver too old for torch 2.11's CUDA 13."""
    gpu_types = {n: t for n, t in config["available_node_types"].items() if t.get("resources", {}).get("GPU", 0)}
    missing = [n for n, t in gpu_types.items() if not t.get("node_config", {}).get("ImageId")]
    if missing:
        return False, (
            f"{', '.join(missing)} set no ImageId, so Ray's default AMI (a driver too old for CUDA 13) would run; "
            "use AWS's Deep Learning Base OSS Nvidia Driver GPU AMI (see cluster.yaml)"
        )
    images = sorted({t["node_config"]["ImageId"] for t in gpu_types.values()})
    return True, f"{', '.join(images)} (the driver must support CUDA 13; it is checked on the node at trial start)"


def check_storage_writable(uri: str, options: StoreOptions) -> None:
    fs, root = filesystem(uri, options)
    try:
        probe_writable(fs, root)
    except OSError as e:
        raise StoreError(f"storage {uri} is not writable: {e}") from e


def check_shards_match_model(shards: str, pretrained: str, options: StoreOptions) -> str:
    ds = check_dataset(shards, pretrained, options, splits=("train", "val", "test"))
    return f"{len(ds.genres)} genres, windows of {ds.frames} x {ds.mel_bins} fit {pretrained}"


def before_sweep(cfg: C, action: str | None, test_split: bool) -> tuple[C, SweepRecord]:
    """The checks of this module that apply to a sweep or a retrain, run before Ray starts anything, so a bad
    input costs seconds, and the sweep record they go by.

    A new sweep (``action`` None): its space read once, its recorded settings resolved (``record.new_sweep``), the
    shards fit the model and hold the splits needed, the storage is writable; its record is made (and written when
    the sweep starts). ``--resume`` and ``retrain`` (``action`` names which): the sweep is there and ours, its record
    is read and ``cfg`` reconciled with it (``record.reconcile``), then the same checks. Returns ``cfg`` resolved,
    with the study URL to use (a resumed sweep's own, restored from the storage's copy when the driver has none),
    and the record.
    """
    splits = ("train", "val", "test") if test_split else ("train", "val")
    fs, storage_path = filesystem(cfg.storage, cfg.options)
    if action is None:
        assert isinstance(cfg, SweepConfig)
        cfg, space = new_sweep(cfg)
        dataset = check_dataset(cfg.shards, cfg.pretrained, cfg.options, splits)
        check_storage_writable(cfg.storage, cfg.options)
        if tune.Tuner.can_restore(storage_path + "/" + cfg.name, storage_filesystem=fs) or has_record(cfg):
            raise SweepError(
                f"a sweep named {cfg.name!r} is already in {cfg.storage}: finish it with --resume, or give another "
                "--name"
            )
        url = cfg.study_url()
        if study_exists(url, cfg.name):
            raise SweepError(
                f"the study {cfg.name!r} already exists in {url} (another sweep's): give another --name, or "
                "--study-storage"
            )
        return dataclasses.replace(cfg, study_storage=url), make_record(cfg, space, dataset, url)
    check_storage_writable(cfg.storage, cfg.options)
    if not tune.Tuner.can_restore(storage_path + "/" + cfg.name, storage_filesystem=fs):
        raise SweepError(f"{action}: no sweep named {cfg.name!r} in {cfg.storage}")
    record = read_record(cfg, action)
    check_tune_state(cfg, action)
    cfg = reconcile(cfg, record, open_dataset(cfg.shards or record.dataset["shards"], cfg.options), action)
    check_dataset(cfg.shards, cfg.pretrained, cfg.options, splits)
    return dataclasses.replace(cfg, study_storage=resumed_study_url(cfg, record.study_url)), record


def cache_start(cfg: RetrainConfig, start: int, cached: tuple[str, ...]) -> int | None:
    """The layer where the frozen-prefix cache starts, or None when it is off: by ``--no-prefix-cache``, or because
    a node's store would outgrow ``--node-disk-gb`` (then one warning says why and what it costs). Each node also
    checks its own free disk before it builds (``model.node_store.node_prefix``)."""
    if not cfg.prefix_cache:
        return None
    if cfg.node_disk_gb is not None:
        sizes = node_sizes(open_dataset(cfg.shards, cfg.options), cfg.pretrained, start, cached)
        if sizes.total > cfg.node_disk_gb * 1e9:
            log.warning(
                "prefix cache off: each node would store %s, over --node-disk-gb %g; every step then also runs "
                "the %d frozen layers and the attention of layer %d below the lowest adapter (the same mathematics, "
                "slower: bench/train.py measures it)",
                sizes.describe(),
                cfg.node_disk_gb,
                start,
                start,
            )
            return None
    return start


def disk_gb(node_config: dict[str, Any]) -> float | None:
    """The EBS volumes a node type's AWS node_config asks for, in GB (None when it names none)."""
    sizes = [d.get("Ebs", {}).get("VolumeSize") for d in node_config.get("BlockDeviceMappings", [])]
    sizes = [float(s) for s in sizes if s]
    return sum(sizes) if sizes else None


def node_store_plan(
    capacity: Capacity, config: dict[str, Any], sizes: NodeSizes, cpus: float, gpus: float
) -> tuple[bool, str]:
    """(every node type that runs trials has the disk for its store, what each will store)."""
    ok, parts = True, []
    for t in capacity.holding(cpus, gpus):
        disk = disk_gb(config["available_node_types"][t.name].get("node_config", {}))
        room = "disk unknown" if disk is None else f"{disk:g} GB of EBS"
        if disk is not None and sizes.dataset > disk * 1e9:
            ok, room = False, f"{room}: too small for the dataset (pass --node-store on instance NVMe)"
        elif disk is not None and sizes.total > disk * 1e9:
            room = f"{room}: the cache will not fit and is turned off"
        parts.append(f"{t.name}: {sizes.describe()} ({room})")
    return ok, "; ".join(parts) or "no node type runs trials"


def run_checks(cfg: PreflightConfig) -> list[tuple[str, bool, str]]:
    """(check, passed, detail) for every check; nothing raises."""
    options = cfg.options
    results: list[tuple[str, bool, str]] = []
    trial = f"{cfg.cpus_per_trial:g} CPU + {cfg.gpus_per_trial:g} GPU"
    if cfg.cluster:
        try:
            full = check_cluster_config(cfg.cluster)
            results.append(("cluster config matches Ray's schema", True, cfg.cluster))
            capacity = from_cluster_config(full, cfg.cluster)
            fits = capacity.holding(cfg.cpus_per_trial, cfg.gpus_per_trial)
            at_once = capacity.concurrency(cfg.cpus_per_trial, cfg.gpus_per_trial)
            results.append(
                (
                    f"a node type holds one trial ({trial})",
                    bool(fits),
                    f"fits: {', '.join(t.name for t in fits)}; {at_once} trials at once when scaled up"
                    if fits
                    else f"none does; node types offer {capacity.describe()}",
                )
            )
            ok, detail = check_gpu_images(full)
            results.append(("GPU node types run a CUDA 13 AMI", ok, detail))
            try:
                start = load_space(cfg.space).lowest_adapted_layer()
                sizes = node_sizes(open_dataset(cfg.shards, options), cfg.pretrained, start)
                ok, detail = node_store_plan(capacity, full, sizes, cfg.cpus_per_trial, cfg.gpus_per_trial)
                results.append(("each node's store (dataset + prefix cache) fits its disk", ok, detail))
            except (StoreError, ModelError) as e:
                results.append(("each node's store (dataset + prefix cache) fits its disk", False, str(e)))
        except ValueError as e:
            results.append(("cluster config matches Ray's schema", False, str(e)))
    if cfg.ray_address:
        try:
            init_ray(cfg.ray_address)
            results.append(("the cluster accepts this client (token auth)", True, cfg.ray_address))
            capacity = cluster_capacity(None, ray.nodes())
            fits = capacity.holding(cfg.cpus_per_trial, cfg.gpus_per_trial)
            results.append((f"a node of {capacity.source} holds one trial ({trial})", bool(fits), capacity.describe()))
        except RayConnectError as e:
            results.append(("the cluster accepts this client (token auth)", False, str(e)))
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


# The same flag, not the same setting: launch's --ray-address is the dashboard's HTTP address (where the job is
# submitted), preflight's the address of a running cluster whose nodes it checks.
NOT_LAUNCHS = {"ray_address"}


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def launch_default_notes(cfg: PreflightConfig) -> list[str]:
    """A note for each setting preflight shares with launch whose defaults differ, where ``cfg`` has preflight's
    value: its checks then pass for a trial, or a model, that launch (left to its defaults) will not run."""
    launch = {f.name: f.default for f in dataclasses.fields(LaunchConfig) if f.default is not dataclasses.MISSING}
    notes = []
    for f in dataclasses.fields(PreflightConfig):
        if f.name in NOT_LAUNCHS or f.name not in launch or f.default in (dataclasses.MISSING, launch[f.name]):
            continue
        if getattr(cfg, f.name) == f.default:
            notes.append(
                f"note: {flag(f.name)} is {_shown(f.default)}, preflight's default; launch's default is "
                f"{_shown(launch[f.name])}: pass the value you will launch with"
            )
    return notes


def run(cfg: PreflightConfig) -> int:
    """Print where its defaults differ from launch's, then each check's verdict; exit code 0 when all pass, 2
    otherwise."""
    for note in launch_default_notes(cfg):
        print(note)
    results = run_checks(cfg)
    for name, ok, detail in results:
        print(f"{'ok  ' if ok else 'FAIL'}  {name}: {detail}")
    failed = sum(not ok for _, ok, _ in results)
    print("preflight passed" if not failed else f"preflight failed: {failed} of {len(results)} checks")
    return 0 if not failed else 2


main = job_main("preflight")

if __name__ == "__main__":
    sys.exit(main())
