"""One Tune trial: ``train()`` with the trial's configuration, reporting each epoch with its checkpoint."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from genre_sweep.config import resolve
from genre_sweep.jobs import worker_logging
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.node_store import NodeData
from genre_sweep.store import with_retries


def run_trial(config: dict[str, Any], data: NodeData, base: dict[str, Any]) -> None:
    """Tune's trainable: ``base`` settings plus the sampled ``config``, on ``data`` mapped from this node's
    store, with the frozen-prefix cache there when the sweep uses one (the node's first trial builds it).

    A retried or resumed trial continues from its last checkpoint. Every report carries the node id and process
    id, so placement is visible in the results, and whether the backbone came from the memory of the process's
    previous trial (Tune reuses a trial's actor for the next: ``reuse_actors``).
    """
    started = time.perf_counter()  # per-trial overhead: from here to the first optimizer step (first_step_s)
    worker_logging()  # each epoch's line goes to the trial's stderr, which Ray forwards to the driver
    import ray
    from ray import tune

    from genre_sweep.model.train import model_for, train  # torch and transformers load in the trial's process

    release_previous_trial()

    out = Path(tempfile.mkdtemp(prefix="trial-", dir=os.getcwd()))
    values = {**base, **config, "out": str(out)}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_dir = out / "resume-from"
        with checkpoint.as_directory() as d:
            shutil.copytree(d, resume_dir)
        values["resume"] = str(resume_dir)
    node_id = ray.get_runtime_context().get_node_id()

    def report(metrics: dict[str, Any], ckpt: Path) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt))
        # Tune uploads the checkpoint inside report() before it records the result, so a report that failed
        # recorded nothing and is safe to repeat (the failed upload's partial folder stays unreferenced).
        where = {"node_id": node_id, "pid": os.getpid(), "backbone_reused": model.backbone_reused}
        with_retries(lambda: tune.report({**metrics, **where}, checkpoint=checkpoint), "report an epoch")

    cfg = resolve(TrainConfig, values)
    loaded = data.load(("train", "val"))
    model = model_for(cfg, loaded)  # built once: for the prefix cache's key (and its build), then trained
    train(cfg, data.cached(loaded, model, cfg.device), report=report, started=started, model=model)


def release_previous_trial() -> None:
    """In a process that ran a trial before (Tune reuses a trial's actor for the next), free what that trial left:
    its model, optimizer and GPU-resident data, and on a GPU the allocator's cached blocks, for the other trials
    sharing the GPU."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
