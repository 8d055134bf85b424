"""One Tune trial: ``train()`` with the sweep's trial template and the trial's searched values, reporting each
epoch with its checkpoint."""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import posixpath
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genre_sweep.config import ConfigError, replace_typed
from genre_sweep.data.manifest import DatasetError
from genre_sweep.errors import one_line
from genre_sweep.jobs import worker_logging
from genre_sweep.model.checkpoint import OPTIMIZER, STATE, TRAINABLE, read_state
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.node_store import NodeData
from genre_sweep.store import all_files, with_retries
from genre_sweep.tune import internals, preemption

log = logging.getLogger(__name__)

# The key of the one result a trial reports when its configuration cannot train (see ``run_trial``).
TRIAL_ERROR = "trial_error"


# The class of every trial's actor, as Ray shows it (dashboard, `ray list actors`, process title ray::GenreSweepTrial).
TRIAL_ACTOR = "GenreSweepTrial"


def trial_actor(trainable: Callable[..., None], resources: dict[str, float], **parameters: Any) -> type:
    """Tune's trainable running ``trainable(config, **parameters)`` with ``resources`` per trial, as a class named
    ``GenreSweepTrial`` instead of Tune's anonymous ``ImplicitFunc``, whose repr names its trial:
    ``GenreSweepTrial(<trial>)`` is the Ray dashboard's Repr of the actor and the prefix of its forwarded log lines.

    Ray takes an actor's repr once, when it is created: an actor Tune reuses for a later trial (``reuse_actors``)
    keeps its first trial's in the dashboard, while its log lines are prefixed with the trial it runs now
    (``internals.name_actor_in_logs``). Tune's name for the trainable stays ``trainable``'s, which
    ``Tuner.restore(trainable=...)`` checks, so a sweep restores with this class or with ``trainable`` itself."""
    from ray import tune
    from ray.tune.trainable import wrap_function

    implicit = wrap_function(tune.with_resources(tune.with_parameters(trainable, **parameters), resources))

    class Trial(implicit):  # type: ignore[misc, valid-type]
        def __repr__(self) -> str:
            return f"{TRIAL_ACTOR}({self.trial_name})"

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            reset = super().reset_config(new_config)  # Tune has set the new trial's name by now
            if reset:
                internals.name_actor_in_logs(repr(self))
            return reset

    Trial.__name__ = Trial.__qualname__ = TRIAL_ACTOR  # Ray names the actor's class by these
    return Trial


def run_trial(config: dict[str, Any], data: NodeData, template: TrainConfig) -> None:
    """Tune's trainable: the sweep's ``template`` with the searched values of ``config`` put in, trained on ``data``
    mapped from this node's store, with the frozen-prefix cache there when the sweep uses one (the node's first
    trial builds it).

    A retried or resumed trial continues from its last checkpoint (or from the exact step it stopped at, when its
    node was being preempted: ``tune.preemption``). Every report carries the node id and process
    id, so placement is visible in the results, and whether the backbone came from the memory of the process's
    previous trial (Tune reuses a trial's actor for the next: ``reuse_actors``).

    A setting that cannot train (a ``ConfigError``: a value the config or the model refuses, which fails again
    however often it is tried), or a damaged shard (a ``DatasetError``: its checksum disagrees), is not raised,
    which Tune would retry: the trial reports it once as ``trial_error`` (with the metric as NaN, which the
    scheduler, the searcher and the report know) and ends. A trial whose node is being preempted checkpoints and
    ends with ``TrialPreempted``, which Tune retries elsewhere without counting it. Anything else (a
    killed process, a lost node, a store outage, an unreachable hub, a GPU a node cannot use) is raised and retried
    from the checkpoint, up to ``--max-failures``.
    """
    started = time.perf_counter()  # per-trial overhead: from here to the first optimizer step (first_step_s)
    worker_logging()  # each epoch's line goes to the trial's stderr, which Ray forwards to the driver
    from ray import tune

    try:
        on_trial_thread(train_trial, config, data, template, started)
    except (ConfigError, DatasetError) as e:  # a setting that cannot train, a damaged shard: retrying cannot help
        reason = one_line(e)
        log.warning("trial %s cannot train its configuration: %s", tune.get_context().get_trial_id(), reason)
        tune.report({template.metric: math.nan, TRIAL_ERROR: reason})


# The one thread of a trial process that trains: Tune runs each trial's function in a thread of its own, and a reused
# process's next trial in another, while torch's CUDA graphs (``compile: reduce-overhead``) belong to the thread that
# recorded them. Every trial of the process trains here, so its compiled step and graphs serve them all.
# A daemon thread, so that a process ending with a trial blocked in ``tune.report`` does not wait for it.
_trial_jobs: queue.SimpleQueue[tuple[concurrent.futures.Future, Callable[..., None], tuple[Any, ...]]] = (
    queue.SimpleQueue()
)
_trial_thread: threading.Thread | None = None


def _run_trial_jobs() -> None:
    while True:
        done, fn, args = _trial_jobs.get()
        try:
            done.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 (Tune's stop is a SystemExit from tune.report: passed on as is)
            done.set_exception(e)


def on_trial_thread(fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` on the process's trial thread, waited for; what it raises is raised here (Tune's stop of a trial,
    a ``SystemExit`` from ``tune.report`` there, included)."""
    global _trial_thread
    if _trial_thread is None or not _trial_thread.is_alive():
        _trial_thread = threading.Thread(target=_run_trial_jobs, name="genre-sweep-trial", daemon=True)
        _trial_thread.start()
    done: concurrent.futures.Future = concurrent.futures.Future()
    _trial_jobs.put((done, fn, args))
    done.result()


def train_trial(config: dict[str, Any], data: NodeData, template: TrainConfig, started: float) -> None:
    import ray
    from ray import tune

    from genre_sweep.model.train import Stopped

    release_previous_trial()
    trial_id, node_id = tune.get_context().get_trial_id(), ray.get_runtime_context().get_node_id()
    if preemption.node_draining(node_id, trial_id):  # a reused actor on a node being preempted (Ray starts none there)
        raise preemption.TrialPreempted(
            f"trial {trial_id} was given an actor on node {node_id[:8]}, which is being preempted: starting elsewhere"
        )
    out = Path(tempfile.mkdtemp(prefix="trial-", dir=os.getcwd()))
    values = {**config, "out": str(out)}
    checkpoint, completed = resumable(tune.get_checkpoint(), trial_id), 0
    if checkpoint is not None:
        resume_dir = out / "resume-from"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_dir)
        values["resume"] = str(resume_dir)
        completed = read_state(resume_dir)["epoch"]
    storage = preemption.trial_storage()
    moved = preemption.pick_up(storage, completed, out / "preempted-from")  # the step a preempted node stopped at
    if moved is not None:
        values["resume"] = str(out / "preempted-from")

    def report(metrics: dict[str, Any], ckpt: Path) -> None:
        nonlocal moved
        checkpoint = tune.Checkpoint.from_directory(str(ckpt))
        # Tune uploads the checkpoint inside report() before it records the result, so a report that failed
        # recorded nothing and is safe to repeat (the failed upload's partial folder stays unreferenced).
        where = {"node_id": node_id, "pid": os.getpid(), "thread": threading.get_ident()}
        where |= preemption.moved_report(moved) if moved else {}
        with_retries(lambda: tune.report({**metrics, **where}, checkpoint=checkpoint), "report an epoch")
        if moved is not None:  # Tune's checkpoint is the newer now; a stale one left behind is ignored anyway
            with_retries(lambda: preemption.forget(storage), "delete a moved trial's mid-epoch checkpoint", (1,), False)
            moved = None

    watch = preemption.DrainWatch(node_id)
    try:
        train_on_node(replace_typed(template, values, "trial config: "), data, report, started, stop=watch)
    except Stopped as stopped:
        kept: list[dict[str, Any]] = []  # the node has two minutes: a store blip is ridden out (about 30 s)
        at = stopped
        with_retries(lambda: kept.append(preemption.keep(at, node_id, watch, storage)), "keep the checkpoint")
        info = kept[-1]
        line = (
            f"trial {trial_id} preempted on node {node_id[:8]} at epoch {stopped.epoch} step {stopped.step} of "
            f"{stopped.steps}: checkpointed {preemption.moved_report(info)['notice_to_checkpoint_s']:.1f} s after the "
            "drain was seen; Tune restarts it on another node from that step, not counted as a failure"
        )
        log.warning("%s", line)
        raise preemption.TrialPreempted(line) from None
    finally:
        watch.close()


def resumable(checkpoint: Any, trial: str) -> Any:
    """The checkpoint a retried or resumed trial continues from: the one Tune names, while it is complete. If it
    is gone (Tune's last snapshot named one that retention deleted before the driver died), the oldest complete
    checkpoint after it in the trial's folder (the nearest to where Tune believes the trial is); with none, the
    trial's start. Either is said in one line, naming ``trial``."""
    if checkpoint is None:
        return None
    from pyarrow.fs import FileSelector, FileType
    from ray import tune

    fs, named = checkpoint.filesystem, checkpoint.path

    def complete(path: str) -> bool:  # Ray uploads a checkpoint's files in no fixed order: all of them, not empty
        return all_files(fs, path, (STATE, TRAINABLE, OPTIMIZER))

    if complete(named):
        return checkpoint
    folder, name = posixpath.split(named)
    later = sorted(
        info.path
        for info in fs.get_file_info(FileSelector(folder, allow_not_found=True))
        if info.type == FileType.Directory
        and info.base_name.startswith("checkpoint_")
        and info.base_name > name
        and complete(info.path)
    )
    if not later:
        log.warning("trial %s: its checkpoint %s is gone and no later one is complete: starting over", trial, named)
        return None
    log.warning("trial %s: its checkpoint %s is gone: resuming from %s, the next complete one", trial, named, later[0])
    return tune.Checkpoint(later[0], filesystem=fs)


def train_on_node(
    cfg: TrainConfig,
    data: NodeData,
    report: Any = None,
    started: float | None = None,
    stop: Callable[[], bool] | None = None,
) -> tuple[Any, Any]:
    """``train(cfg)`` on ``data`` mapped from this node's store, with the node's frozen-prefix cache when ``data``
    asks for one: what a trial and a confirmation's retrain both run. Each ``report`` also says whether the backbone
    came from the memory of the process's previous run (``backbone_reused``). Returns the TrainResult and the data
    it trained on."""
    from genre_sweep.model.train import model_for, train  # torch and transformers load in the worker's process

    loaded = data.load(("train", "val"))
    model = model_for(cfg, loaded)  # built once: for the prefix cache's key (and its build), then trained

    def reported(metrics: dict[str, Any], ckpt: Path) -> None:
        report({**metrics, "backbone_reused": model.backbone_reused}, ckpt)

    cached = data.cached(loaded, model, cfg.device)
    result = train(cfg, cached, report=reported if report else None, started=started, model=model, stop=stop)
    return result, cached


def release_previous_trial() -> None:
    """In a process that ran a trial before (Tune reuses a trial's actor for the next), free what that trial left:
    its model, optimizer and GPU-resident data, and on a GPU the allocator's cached blocks, for the other trials
    sharing the GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
