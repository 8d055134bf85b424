"""``genre-sweep retrain``: a finished sweep's winner confirmed over seeds, tested once, exported and reported.

Also the sweep's last stage (``retrain_and_report``). The search's top configurations (``--confirm-top``) are
each retrained with the seeds (``--retrain-seeds``) as Ray tasks on a trial's resources, as many at once as the
cluster holds, on the nodes' stores and the trials' frozen-prefix cache; each retrain trains the sweep record's
template with the candidate's searched values and its seed. The one with the best mean validation metric is
chosen (``tune.confirm``); only its retrains are evaluated on the test split, so the test split is touched once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray import tune

from genre_sweep.cli import job_main
from genre_sweep.data.shards import open_dataset
from genre_sweep.errors import one_line, user_error
from genre_sweep.jobs import worker_logging
from genre_sweep.model.checkpoint import TRAINABLE, load_trainable
from genre_sweep.model.configs import TrainConfig, score
from genre_sweep.model.device import released_task, resolve_device
from genre_sweep.model.evaluate import evaluate_split
from genre_sweep.model.node_store import NodeData
from genre_sweep.model.train import epoch_key
from genre_sweep.ray_start import init_ray
from genre_sweep.store import filesystem
from genre_sweep.tune import lease
from genre_sweep.tune.configs import RetrainConfig, SweepError
from genre_sweep.tune.confirm import Candidate, Confirmation, Run, top_candidates
from genre_sweep.tune.ledger import record_stage
from genre_sweep.tune.preflight import before_sweep, cache_start
from genre_sweep.tune.record import WHERE, SweepRecord
from genre_sweep.tune.report import write_report
from genre_sweep.tune.tracking import log_report
from genre_sweep.tune.trial import TRIAL_ERROR, run_trial, train_on_node
from genre_sweep.tune.warm import with_recipe

log = logging.getLogger(__name__)


def trial_source(cfg: RetrainConfig, record: SweepRecord) -> NodeData:
    """Where trials and the confirmation's retrains find their data: each node's store, with the frozen-prefix
    cache below the space's lowest adapter unless it is off (the retrains reuse the trials' cache)."""
    start = cache_start(cfg, record.search_space.lowest_adapted_layer(), ("train", "val"))
    return NodeData(cfg.shards, cfg.options, cfg.node_store, start, cfg.node_disk_gb)


def failures(results: tune.ResultGrid) -> list[tuple[str, str]]:
    """(trial name, reason) of each failed trial: one whose configuration could not train (not retried), or one
    that crashed through all its retries."""
    out = []
    for r in results:
        name = Path(r.path).name
        if r.error is not None:
            cause = user_error(r.error) or getattr(r.error, "cause", r.error)  # Ray's wrapper: the cause is the trial's
            out.append((name, one_line(cause)))
        elif r.metrics and TRIAL_ERROR in r.metrics:
            out.append((name, r.metrics[TRIAL_ERROR]))
    return out


def ranked_trials(cfg: RetrainConfig, results: tune.ResultGrid) -> list[Candidate]:
    """Every trial with a finite best epoch by ``cfg.metric``, best first (by ``cfg.direction``); SweepError when
    none has one."""
    ranked = []
    for r in results:
        df = r.metrics_dataframe
        if df is None or cfg.metric not in df or (r.metrics and TRIAL_ERROR in r.metrics):
            continue
        rows = [row for _, row in df.iterrows() if math.isfinite(float(row[cfg.metric]))]
        if not rows:
            continue
        # the epoch the trial's training kept, by its rule (the first of equals, as model.train.better keeps it)
        best = max(rows, key=lambda row: epoch_key(row, cfg.metric, cfg.direction))
        ranked.append(
            Candidate(
                Path(r.path).name, r.path, dict(r.config), float(best[cfg.metric]), int(best["training_iteration"])
            )
        )
    if not ranked:
        failed = failures(results)
        why = f"; the first error: {failed[0][1]} (trial {failed[0][0]})" if failed else ""
        raise SweepError(
            f"no trial of {cfg.root} reported a {cfg.metric} to retrain from ({len(failed)} of {len(results)} "
            f"trials failed{why})"
        )
    return sorted(ranked, key=lambda c: -score(c.value, cfg.direction))  # a stable sort: ties keep Tune's order


def retrain_seed(config: TrainConfig, source: NodeData) -> dict[str, Any]:
    """Ray task (a trial's resources): train ``config`` once, as a trial does, on this node's store and cache, in a
    scratch folder; its best epoch on validation, that epoch's metrics, each validation clip's part in the metric
    there, and its trained weights."""
    from genre_sweep.model.train import clip_scores, predict_logits, split_inputs

    began = time.perf_counter()  # its running time, for the cost ledger (tune/ledger.py)
    worker_logging()  # each epoch's line reaches the driver's output (and `ray job logs`)
    with tempfile.TemporaryDirectory() as tmp:
        result, data = train_on_node(dataclasses.replace(config, out=str(Path(tmp) / "run")), source)
        weights = (result.run_dir / "best" / TRAINABLE).read_bytes()
    device = resolve_device(config.device)
    val = data.split("val")
    logits = predict_logits(result.model, val, config.eval_batch_size, device, split_inputs(data, "val"))
    return {
        "best_epoch": result.best_epoch,
        "val": {k: result.best_metrics[k] for k in ("val_clip_acc", "val_window_acc", "val_loss")},
        "clips": clip_scores(logits, val, config.metric).tolist(),
        "weights": weights,
        "seconds": time.perf_counter() - began,
    }


def test_seeds(configs: list[TrainConfig], weights: list[bytes], source: NodeData, export: int) -> dict[str, Any]:
    """Ray task: the chosen configuration's retrained models, each evaluated once on the test split; returns their
    evaluations and model ``export`` (the best seed on validation) on the CPU, to export."""
    from genre_sweep.model.train import model_for

    began = time.perf_counter()
    worker_logging()
    data = source.load(("test",))
    tests, kept = [], None
    for i, (config, trained) in enumerate(zip(configs, weights, strict=True)):
        model = model_for(config, data)
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / TRAINABLE).write_bytes(trained)
            load_trainable(Path(tmp), model)
        device = resolve_device(config.device)
        tests.append(
            evaluate_split(model.to(device), data.split("test"), list(data.genres), config.eval_batch_size, device)
        )
        log.info("test, seed %d: clip accuracy %.3f", config.seed, tests[-1]["clip_acc"])
        if i == export:
            kept = model.cpu()
    return {"tests": tests, "seeds": [c.seed for c in configs], "model": kept, "seconds": time.perf_counter() - began}


def confirm(
    cfg: RetrainConfig, record: SweepRecord, candidates: list[Candidate], source: NodeData
) -> tuple[Confirmation, dict[tuple[str, int], bytes]]:
    """Retrain each candidate with each seed (Ray tasks, as many at once as the cluster holds); the confirmation and
    each retrain's weights by (trial, seed)."""
    # seeds no trial used (every trial trains with --seed): a retrain with it would repeat the very run that put
    # its candidate in the top k, and count that luck again
    seeds = retrain_seeds(cfg)
    task = released_task(retrain_seed, cfg.cpus_per_trial, cfg.gpus_per_trial)  # each worker ends after its call
    configs = {(c.trial, s): record.train_config(cfg, **c.params, seed=s) for c in candidates for s in seeds}
    log.info(
        "confirmation: the search's top %d configurations%s (%s) x %d seeds = %d retrains",
        sum(c.recipe != "added" for c in candidates),
        " and the recipe's" if any(c.recipe == "added" for c in candidates) else "",
        ", ".join(c.trial + (" (the recipe's)" if c.recipe else "") for c in candidates),
        len(seeds),
        len(configs),
    )
    began = time.monotonic()
    pending = {task.remote(config, source): key for key, config in configs.items()}
    runs: dict[tuple[str, int], dict[str, Any]] = {}
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ref)
        runs[key] = ray.get(ref)
        log.info(
            "confirmation: trial %s, seed %d: best epoch %d, %s %.4f (%d of %d retrains done)",
            *key,
            runs[key]["best_epoch"],
            cfg.metric,
            runs[key]["val"][cfg.metric],
            len(runs),
            len(configs),
        )
    confirmation = Confirmation(
        metric=cfg.metric,
        mode=cfg.direction,
        candidates=candidates,
        runs=[
            Run(trial, seed, out["best_epoch"], out["val"], trained_config(configs[trial, seed]), out["clips"])
            for (trial, seed), out in sorted(runs.items(), key=lambda kv: (candidates_index(candidates, kv[0]), kv[0]))
        ],
        seconds=time.monotonic() - began,
    )
    spent, wall = [out["seconds"] for out in runs.values()], confirmation.seconds
    record_stage(cfg.root, cfg.options, "confirmation", spent, wall, cfg.gpus_per_trial, cfg.cpus_per_trial)
    return confirmation, {key: out["weights"] for key, out in runs.items()}


def retrain_seeds(cfg: RetrainConfig) -> list[int]:
    """The confirmation's seeds: ``--seed`` + 1, ..., ``--seed`` + ``--retrain-seeds``, none of them a trial's."""
    return [cfg.seed + 1 + i for i in range(cfg.retrain_seeds)]


def candidates_index(candidates: list[Candidate], key: tuple[str, int]) -> int:
    return next(i for i, c in enumerate(candidates) if c.trial == key[0])


def trained_config(config: TrainConfig) -> dict[str, Any]:
    """A retrain's complete config as the report records it: every field but the run's own place."""
    return {k: v for k, v in dataclasses.asdict(config).items() if k not in WHERE}


def test_chosen(
    cfg: RetrainConfig,
    record: SweepRecord,
    confirmation: Confirmation,
    weights: dict[tuple[str, int], bytes],
    source: NodeData,
) -> dict[str, Any]:
    """Evaluate the chosen configuration's retrains, and only theirs, on the test split: per-seed and mean ± std
    figures, every seed's evaluation (``test_evaluations``: its confusion matrix and clip predictions, which the
    report pools), and the exported seed (the best on validation) and its model."""
    chosen = confirmation.chosen
    runs = confirmation.runs_of(chosen.trial)
    export = max(range(len(runs)), key=lambda i: (score(runs[i].val[cfg.metric], confirmation.mode), -i))
    configs = [record.train_config(cfg, **chosen.params, seed=r.seed) for r in runs]
    task = released_task(test_seeds, cfg.cpus_per_trial, cfg.gpus_per_trial)  # each worker ends after its call
    began = time.monotonic()
    out = ray.get(task.remote(configs, [weights[chosen.trial, r.seed] for r in runs], source, export))
    wall = time.monotonic() - began
    record_stage(cfg.root, cfg.options, "test", [out["seconds"]], wall, cfg.gpus_per_trial, cfg.cpus_per_trial)
    tests = out["tests"]

    def stats(key: str) -> tuple[float, float]:  # mean and sample std over the seeds
        values = [t[key] for t in tests]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    (clip, clip_sd), (window, window_sd), (f1, f1_sd) = stats("clip_acc"), stats("window_acc"), stats("clip_macro_f1")
    return {
        "trial": chosen.trial,
        "seeds": [r.seed for r in runs],
        "per_seed": [
            {
                "seed": r.seed,
                "best_epoch": r.best_epoch,
                **r.val,
                "test_clip_acc": t["clip_acc"],
                "test_window_acc": t["window_acc"],
                "test_clip_macro_f1": t["clip_macro_f1"],
            }
            for r, t in zip(runs, tests, strict=True)
        ],
        "test_clips": tests[export]["clips"],
        "test_windows": tests[export]["windows"],
        "test_clip_acc_mean": clip,
        "test_clip_acc_std": clip_sd,
        "test_window_acc_mean": window,
        "test_window_acc_std": window_sd,
        "test_clip_macro_f1_mean": f1,
        "test_clip_macro_f1_std": f1_sd,
        "exported_seed": runs[export].seed,
        "tested": [{"trial": chosen.trial, "seed": seed} for seed in out["seeds"]],  # what the test split saw
        "test_evaluations": [{"seed": r.seed, **t} for r, t in zip(runs, tests, strict=True)],
        "model": out["model"],
    }


def load_results(cfg: RetrainConfig) -> tune.ResultGrid:
    """The ResultGrid of a finished sweep in ``cfg``'s storage (checked to be there and ours: ``before_sweep``)."""
    fs, storage_path = filesystem(cfg.storage, cfg.options)
    path = storage_path + "/" + cfg.name
    return tune.Tuner.restore(path, trainable=run_trial, storage_filesystem=fs).get_results()


def retrain_and_report(
    cfg: RetrainConfig, record: SweepRecord, results: tune.ResultGrid, source: NodeData
) -> dict[str, Any]:
    """After a sweep: confirm its top configurations over seeds, test the chosen one, write the report."""
    ranked = ranked_trials(cfg, results)
    # the recipe trial's configuration too (tune.warm), to say how far the chosen one beats it
    candidates = with_recipe(cfg, results, ranked, top_candidates(ranked, cfg.confirm_top))
    confirmation, weights = confirm(cfg, record, candidates, source)
    chosen = confirmation.chosen
    log.info(
        "confirmation done in %.1f s: chosen trial %s, mean %s %.4f over %d seeds. %s",
        confirmation.seconds,
        chosen.trial,
        cfg.metric,
        confirmation.mean(chosen.trial),
        cfg.retrain_seeds,
        confirmation.verdict(),
    )
    tested = test_chosen(cfg, record, confirmation, weights, source)
    dataset = open_dataset(cfg.shards, cfg.options)  # the manifest only, for the report; before_sweep checked it
    write_report(cfg, record, confirmation, tested, dataset, failures(results))
    log_report(cfg, tested)  # --report-to mlflow, wandb: the report and the model as artifacts
    print(
        f"chosen: trial {chosen.trial} (of {len(candidates)} confirmed over {cfg.retrain_seeds} seeds); test clip "
        f"accuracy {tested['test_clip_acc_mean']:.4f} ± {tested['test_clip_acc_std']:.4f}; report: "
        f"{cfg.root}/report/summary.md"
    )
    return tested


def failed_trials_exit(cfg: RetrainConfig, results: tune.ResultGrid) -> int:
    """The sweep's exit code: 1, with one line giving how many trials failed and the first reason, when any did;
    else 0."""
    failed = failures(results)
    if not failed:
        return 0
    name, reason = failed[0]
    print(
        f"sweep: {len(failed)} of {len(results)} trials failed; the first, trial {name}: {reason} (each is listed "
        f"with its reason in {cfg.root}/report/summary.md when the report is written)",
        file=sys.stderr,
    )
    return 1


def run(cfg: RetrainConfig) -> None:
    cfg, record = before_sweep(cfg, "retrain", test_split=True)
    with lease.holding(cfg.root, cfg.name, cfg.options):  # not while the sweep's own driver still runs
        init_ray(cfg.ray_address)
        retrain_and_report(cfg, record, load_results(cfg), trial_source(cfg, record))


main = job_main("retrain")

if __name__ == "__main__":
    sys.exit(main())
