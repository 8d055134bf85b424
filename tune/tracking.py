"""Tracking where teams already look: ``--report-to tensorboard,mlflow,wandb``.

Every trial's per-epoch metrics go to each destination named, through Tune's own logger callbacks, and at the
end the report (summary.md, the plots, the tables) and the exported model are logged to MLflow and W&B:

- **TensorBoard** is Tune's ``TBXLoggerCallback`` (event files in each trial's folder). Tune adds it to every
  run unless one is there, so without ``tensorboard`` a stand-in that writes nothing takes its place.
- **MLflow** (the extra ``genre-sweep[mlflow]``): Ray's ``MLflowLoggerCallback``, one run per trial, named by
  its trial id, in the experiment named after the sweep, each a child of the sweep's own run (tagged with the
  sweep's folder), which gets the report and the model as artifacts and the test figures as metrics. Tracking
  URI: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default.
- **W&B** (the extra ``genre-sweep[wandb]``): Ray's ``WandbLoggerCallback``, one run per trial, grouped by the
  sweep's name, in ``--wandb-project`` (else ``$WANDB_PROJECT``, else ``genre-sweep``); at the end a run of job
  type ``report`` logs the report and the model as artifacts. The trials' loggers are Ray actors, which do not
  see the driver's environment: its ``WANDB_*`` settings (``WANDB_MODE=offline`` needs no network) are handed to
  them, and its runs go to ``$WANDB_DIR``, else the folder the sweep runs from.

The loggers are given to the Tuner after it is made or restored (``use_loggers``), so Tune's saved state holds
none of them: a resumed sweep reports where today's flags say. This module imports neither Ray nor the trackers
at import time: the configs check ``--report-to`` with it before Ray starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from genre_sweep.tune.configs import EXTRAS, RetrainConfig, parse_report_to

if TYPE_CHECKING:
    from ray import tune


log = logging.getLogger(__name__)

WANDB_DEFAULT_PROJECT = "genre-sweep"
SWEEP_TAG = "genre_sweep.sweep"  # the sweep's name, on every MLflow run the sweep makes
ROOT_TAG = "genre_sweep.root"  # the sweep's folder, on its parent run: the run that holds the report
PARENT_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
WANDB_ENV = "_genre_sweep_environment"  # the driver's W&B settings, handed to each trial's W&B logging actor
METRICS = ("test_clip_acc_mean", "test_clip_acc_std", "test_window_acc_mean", "test_clip_macro_f1_mean")


@dataclasses.dataclass(frozen=True)
class Tracking:
    """Where a sweep reports, resolved once from its flags and the environment."""

    report_to: tuple[str, ...]
    sweep: str  # the sweep's name: MLflow's experiment, W&B's group
    root: str  # the sweep's folder (local or s3://): tags its MLflow run
    mlflow_uri: str | None  # None: MLflow's default
    wandb_project: str
    wandb_dir: str  # where W&B writes its runs (its wandb/ folder): $WANDB_DIR, else the folder the sweep runs from
    wandb_env: dict[str, str]  # the driver's W&B settings (WANDB_*, but the key: Ray hands that on itself)

    @classmethod
    def of(cls, cfg: RetrainConfig) -> Tracking:
        from genre_sweep.store import absolute

        return cls(
            report_to=parse_report_to(cfg.report_to),
            sweep=cfg.name,
            root=absolute(cfg.root),
            mlflow_uri=cfg.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None,
            wandb_project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or WANDB_DEFAULT_PROJECT,
            wandb_dir=str(Path(os.environ.get("WANDB_DIR") or ".").resolve()),
            wandb_env={k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k != "WANDB_API_KEY"},
        )


# --- the trials' per-epoch metrics: Tune's logger callbacks ----------------------------------------------------


def loggers(cfg: RetrainConfig) -> list[tune.Callback]:
    """Tune's logger callbacks for ``cfg.report_to``: TensorBoard's (or the stand-in keeping Tune's default out),
    MLflow's and W&B's."""
    from ray.tune.logger import TBXLoggerCallback

    tracking = Tracking.of(cfg)
    out: list[tune.Callback] = [TBXLoggerCallback() if "tensorboard" in tracking.report_to else no_tensorboard()]
    if "mlflow" in tracking.report_to:
        out.append(mlflow_logger(tracking))
    if "wandb" in tracking.report_to:
        out.append(wandb_logger(tracking))
    return out


def use_loggers(tuner: tune.Tuner, cfg: RetrainConfig) -> None:
    """Give ``tuner`` (new or restored) the loggers ``cfg.report_to`` asks for. They are added after Tune saved the
    tuner, so its saved state holds none: a resume takes today's flags, and needs no tracker it no longer uses."""
    from genre_sweep.tune import internals

    added = loggers(cfg)
    internals.tuner_callbacks(tuner).extend(added)
    tracking = Tracking.of(cfg)
    if "mlflow" in tracking.report_to:
        log.info("MLflow: each trial a run in experiment %s at %s", tracking.sweep, mlflow_place(tracking))
    if "wandb" in tracking.report_to:
        log.info(
            "W&B: each trial a run in project %s, group %s (%s)",
            tracking.wandb_project,
            tracking.sweep,
            tracking.wandb_env.get("WANDB_MODE", "online"),
        )


def no_tensorboard() -> tune.Callback:
    """A TensorBoard logger that writes nothing: Tune adds its own unless the callbacks hold one."""
    from ray.tune.logger import LoggerCallback, TBXLoggerCallback

    class NoTensorBoard(TBXLoggerCallback):
        _SAVED_FILE_TEMPLATES: list[str] = []

        def __init__(self) -> None:
            LoggerCallback.__init__(self)  # not TBX's: it opens nothing

        def log_trial_start(self, trial: Any) -> None:
            pass

        def log_trial_result(self, iteration: int, trial: Any, result: dict[str, Any]) -> None:
            pass

        def log_trial_end(self, trial: Any, failed: bool = False) -> None:
            pass

    return NoTensorBoard()


def mlflow_logger(tracking: Tracking) -> tune.Callback:
    """Ray's MLflow logger, each trial's run a child of the sweep's run (found or made when the sweep starts)."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class SweepMLflowLogger(MLflowLoggerCallback):
        def setup(self, *args: Any, **kwargs: Any) -> None:
            super().setup(*args, **kwargs)  # sets the tracking URI, makes the experiment
            self.tags = {**self.tags, PARENT_TAG: sweep_run(tracking)}

    return SweepMLflowLogger(tracking.mlflow_uri, experiment_name=tracking.sweep, tags={SWEEP_TAG: tracking.sweep})


def wandb_logger(tracking: Tracking) -> tune.Callback:
    """Ray's W&B logger, whose per-trial logging actors run in the driver's W&B environment: a Ray actor sees the
    environment its node's Ray started with, not the driver's (``WANDB_MODE=offline`` set since would not reach it)."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    from genre_sweep.tune import internals

    class TrialLogger(internals.wandb_logging_actor()):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            os.environ.update(kwargs.pop(WANDB_ENV, {}))  # before W&B reads it
            super().__init__(*args, **kwargs)

    class SweepWandbLogger(WandbLoggerCallback):
        _logger_actor_cls = TrialLogger

    return SweepWandbLogger(
        project=tracking.wandb_project, group=tracking.sweep, dir=tracking.wandb_dir, **{WANDB_ENV: tracking.wandb_env}
    )


# --- MLflow: the sweep's parent run ---------------------------------------------------------------------------


def mlflow_client(tracking: Tracking) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking.mlflow_uri)


def mlflow_place(tracking: Tracking) -> str:
    import mlflow

    return tracking.mlflow_uri or f"{mlflow.get_tracking_uri()} (MLflow's default)"


def sweep_run(tracking: Tracking) -> str:
    """The id of the sweep's own MLflow run (in the experiment named after the sweep, tagged with its folder),
    made if there is none yet: the trials' runs are its children, and it holds the report."""
    client = mlflow_client(tracking)
    experiment = client.get_experiment_by_name(tracking.sweep)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.sweep)
    # by its name (a plain word: nothing to escape), then its folder (another sweep of that name elsewhere)
    named = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.runName` = '{tracking.sweep}'",
        order_by=["attributes.start_time DESC"],
    )
    found = [r for r in named if r.data.tags.get(ROOT_TAG) == tracking.root]
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id, run_name=tracking.sweep, tags={SWEEP_TAG: tracking.sweep, ROOT_TAG: tracking.root}
    )
    return run.info.run_id


# --- the report and the model, at the end ---------------------------------------------------------------------


def log_report(cfg: RetrainConfig, tested: dict[str, Any]) -> None:
    """Once the report is written: log it and the exported model to MLflow (the sweep's run) and W&B (a run of job
    type ``report``), with the chosen trial and its test figures. A tracker that cannot take them is a warning:
    the report is already in the sweep's storage."""
    tracking = Tracking.of(cfg)
    targets = [t for t in tracking.report_to if t in EXTRAS]
    if not targets:
        return
    figures = {k: float(tested[k]) for k in METRICS if k in tested}
    with local_report(cfg) as report:
        for target in targets:
            try:
                where = (mlflow_report if target == "mlflow" else wandb_report)(
                    tracking, report, tested["trial"], figures
                )
            except Exception as e:  # any tracker's failure: the report itself is safe in the storage
                log.warning("the report was not logged to %s: %s", target, e)
            else:
                log.info("report and model logged to %s", where)


@contextlib.contextmanager
def local_report(cfg: RetrainConfig) -> Iterator[Path]:
    """The report's folder on this machine: the sweep's own for local storage, else a copy of it."""
    from genre_sweep.store import filesystem, is_s3

    if not is_s3(cfg.storage):
        yield Path(cfg.root) / "report"
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(cfg.root + "/report", cfg.options)
    with tempfile.TemporaryDirectory() as tmp:
        pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        yield Path(tmp)


def report_files(report: Path) -> list[Path]:
    """The report's files but the model's (logged on its own), relative to the report's folder."""
    return sorted(
        p.relative_to(report) for p in report.rglob("*") if p.is_file() and p.relative_to(report).parts[0] != "model"
    )


def mlflow_report(tracking: Tracking, report: Path, chosen: str, figures: dict[str, float]) -> str:
    """The report (under ``report/``) and the model (under ``model/``) as the sweep's run's artifacts, the test
    figures as its metrics; the run is marked finished."""
    client = mlflow_client(tracking)
    run_id = sweep_run(tracking)
    for rel in report_files(report):
        folder = "/".join(("report", *rel.parent.parts))
        client.log_artifact(run_id, str(report / rel), artifact_path=folder)
    client.log_artifacts(run_id, str(report / "model"), artifact_path="model")
    client.set_tag(run_id, "chosen_trial", chosen)
    for key, value in figures.items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id, "FINISHED")
    return f"MLflow run {run_id} ({mlflow_place(tracking)})"


def wandb_report(tracking: Tracking, report: Path, chosen: str, figures: dict[str, float]) -> str:
    """A W&B run of job type ``report`` in the sweep's group: the report and the model as artifacts (types
    ``report`` and ``model``), the chosen trial and its test figures in its summary."""
    import wandb

    run = wandb.init(
        project=tracking.wandb_project,
        group=tracking.sweep,
        name=f"{tracking.sweep}-report",
        job_type="report",
        dir=tracking.wandb_dir,
        reinit="create_new",
        settings={"console": "off"},  # this process's output stays as it is
    )
    try:
        summary = wandb.Artifact(f"{tracking.sweep}-report", type="report")
        for rel in report_files(report):
            summary.add_file(str(report / rel), name=rel.as_posix())
        run.log_artifact(summary)
        model = wandb.Artifact(f"{tracking.sweep}-model", type="model")
        model.add_dir(str(report / "model"))
        run.log_artifact(model)
        run.summary.update({"chosen_trial": chosen, **figures})
    finally:
        run.finish()
    return f"W&B run {run.id} (project {tracking.wandb_project}, {tracking.wandb_env.get('WANDB_MODE', 'online')})"
