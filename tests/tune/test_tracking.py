"""`--report-to`: tested for real, against MLflow's SQLite store (its default backend: MLflow 3 refuses a file:
store unless MLFLOW_ALLOW_FILE_STORE is set) and W&B in offline mode, with no network and everything under the
test's own folder. The report's logging runs in the default suite on a report made here; a short real sweep,
whose every trial's epochs and whose report and model end up in both, is marked slow (about 45 s)."""

from __future__ import annotations

import json
import logging
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from genre_sweep.config import resolve
from genre_sweep.tune import internals
from genre_sweep.tune.configs import SweepConfig
from genre_sweep.tune.sweep import main as sweep_main
from genre_sweep.tune.tracking import ROOT_TAG, SWEEP_TAG, log_report, loggers, parse_report_to
from tests.tune.test_sweep import sweep_args

TWO_EPOCHS = """
space:
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: null
  num_train_epochs: null
fixed:
  num_train_epochs: 2
  batch_size: 16
  gradient_accumulation_steps: 1
"""


@pytest.mark.parametrize("extra", ["mlflow", "wandb"])
def test_a_tracker_not_installed_is_one_line_naming_its_extra_and_exit_2_before_anything(
    extra, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, extra, None)  # importlib finds no such module
    args = [
        "--shards",
        str(tmp_path / "no-shards"),
        "--storage",
        str(tmp_path / "s"),
        "--report-to",
        f"tensorboard,{extra}",
    ]
    with pytest.raises(SystemExit) as exit_:  # refused while parsing the flags
        sweep_main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pip install 'genre-sweep[{extra}]'" in err[0], err
    assert not (tmp_path / "s").exists()  # nothing written: the config refused it


def test_report_to_names_known_destinations_only():
    assert parse_report_to("TensorBoard, mlflow,wandb,mlflow") == ("tensorboard", "mlflow", "wandb")
    assert parse_report_to("none") == ()
    with pytest.raises(ValueError, match="report_to must be a comma-separated list of tensorboard, mlflow, wandb"):
        parse_report_to("tensorboard,comet")


def test_without_tensorboard_a_stand_in_keeps_tunes_own_out(tmp_path):
    from ray.tune.logger import TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    cfg = resolve(SweepConfig, {"shards": "s", "storage": str(tmp_path), "report_to": "none"})
    callbacks = _create_default_callbacks(loggers(cfg))  # what Tune's fit runs with
    tbx = [c for c in callbacks if isinstance(c, TBXLoggerCallback)]
    assert len(tbx) == 1 and type(tbx[0]) is not TBXLoggerCallback  # only the stand-in, which writes nothing
    with_tb = resolve(SweepConfig, {"shards": "s", "storage": str(tmp_path), "report_to": "tensorboard"})
    assert [type(c) for c in loggers(with_tb)] == [TBXLoggerCallback]


def test_a_tuners_callbacks_are_reachable_to_add_loggers(tmp_path):
    from ray import tune

    tuner = tune.Tuner(lambda config: None, run_config=tune.RunConfig(name="t", storage_path=str(tmp_path)))
    callbacks = internals.tuner_callbacks(tuner)
    assert callbacks == []
    callbacks.append("a logger")
    assert internals.tuner_callbacks(tuner) == ["a logger"]
    assert internals.wandb_logging_actor().__name__ == "_WandbLoggingActor"


@pytest.fixture
def offline_trackers(tmp_path, monkeypatch) -> dict[str, Path]:
    """W&B offline and silent, and both trackers' files, caches and settings under ``tmp_path``; no telemetry."""
    wandb_dir = tmp_path / "wandb-home"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CACHE_DIR": str(wandb_dir / "cache"),
        "WANDB_CONFIG_DIR": str(wandb_dir / "config"),
        "WANDB_DATA_DIR": str(wandb_dir / "data"),
        "WANDB_ARTIFACT_DIR": str(wandb_dir / "artifacts"),
        "WANDB_PROJECT": "genre-sweep-test",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb_dir.mkdir()
    monkeypatch.chdir(tmp_path)  # MLflow keeps a local store's artifacts in ./mlruns
    yield {"wandb": wandb_dir, "mlflow": tmp_path / "mlflow.db"}
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # the report run's W&B service, started in this process


def test_the_report_and_the_model_are_logged_to_mlflow_and_wandb(tmp_path, offline_trackers, caplog):
    storage, name = tmp_path / "sweeps", "r1"
    report = storage / name / "report"
    (report / "model").mkdir(parents=True)
    for path in ("summary.md", "trials.csv", "learning_curves.png", "model/config.json", "model/README.md"):
        (report / path).write_text(path)
    mlflow_uri = f"sqlite:///{offline_trackers['mlflow']}"
    given = {"shards": "s", "storage": str(storage), "name": name, "mlflow_uri": mlflow_uri}
    cfg = resolve(SweepConfig, {**given, "report_to": "tensorboard,mlflow,wandb"})
    tested = {"trial": "abc123", "test_clip_acc_mean": 0.75, "test_clip_acc_std": 0.05, "model": object()}
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        log_report(cfg, tested)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    [run] = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    assert run.data.tags[ROOT_TAG] == str(storage / name) and run.data.tags["chosen_trial"] == "abc123"
    assert run.info.status == "FINISHED" and run.data.metrics["test_clip_acc_mean"] == 0.75
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} == {
        "report/summary.md",
        "report/trials.csv",
        "report/learning_curves.png",
    }
    assert {a.path for a in client.list_artifacts(run.info.run_id, "model")} == {"model/config.json", "model/README.md"}
    [wandb_run] = (offline_trackers["wandb"] / "wandb").glob("offline-run-*")
    artifacts = {(r.artifact.name, r.artifact.type) for r in wandb_records(wandb_run) if r.HasField("artifact")}
    assert artifacts == {(f"{name}-report", "report"), (f"{name}-model", "model")}
    assert wandb_summary(wandb_run)["chosen_trial"] == "abc123"

    # a tracker that cannot take it is a warning: the report is in the sweep's storage anyway
    caplog.clear()
    file_store = resolve(SweepConfig, {**given, "report_to": "mlflow", "mlflow_uri": (tmp_path / "mlruns").as_uri()})
    log_report(file_store, tested)  # MLflow 3 refuses a file: store unless MLFLOW_ALLOW_FILE_STORE is set
    [warning] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warning.startswith("the report was not logged to mlflow:") and "MLFLOW_ALLOW_FILE_STORE" in warning


@pytest.mark.slow
def test_mlflow_and_wandb_hold_every_trials_epochs_and_the_report(sweep_shards, tmp_path, offline_trackers):
    space = tmp_path / "space.yaml"
    space.write_text(TWO_EPOCHS)
    storage, name = tmp_path / "sweeps", "tracked"
    # MLflow's own default backend: a SQLite store (MLflow 3 refuses a file: store unless MLFLOW_ALLOW_FILE_STORE)
    mlflow_uri = f"sqlite:///{offline_trackers['mlflow']}"
    args = sweep_args(sweep_shards, storage, name, space, 2, "--grace-period", "2", "--max-concurrent-trials", "2")
    more = ["--retrain-seeds", "1", "--confirm-top", "1", "--report-to", "mlflow,wandb", "--mlflow-uri", mlflow_uri]
    assert sweep_main([*args, *more]) == 0

    epochs = tune_epochs(storage / name)  # what Tune recorded: trial -> {epoch: val_clip_acc}
    assert len(epochs) == 2 and all(len(e) == 2 for e in epochs.values())
    assert not list((storage / name).rglob("events.out.tfevents.*"))  # tensorboard was not asked for

    # MLflow: a run per trial, each a child of the sweep's run, with every epoch's val_clip_acc
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id])
    [parent] = [r for r in runs if ROOT_TAG in r.data.tags]
    trials = {r.data.tags["trial_name"]: r for r in runs if "trial_name" in r.data.tags}
    assert set(trials) == set(epochs)
    for trial, run in trials.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags[SWEEP_TAG] == name
        history = client.get_metric_history(run.info.run_id, "val_clip_acc")
        assert {m.step: m.value for m in history} == pytest.approx(epochs[trial])
    # ... and the sweep's run holds the report and the exported model
    assert parent.info.status == "FINISHED" and "test_clip_acc_mean" in parent.data.metrics
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/summary.md", "report/trials.csv"} <= report and any(p.endswith(".png") for p in report)
    model = {a.path for a in client.list_artifacts(parent.info.run_id, "model")}
    assert "model/config.json" in model and "model/README.md" in model
    assert (tmp_path / "mlruns").is_dir() and not (Path(__file__).parents[2] / "mlruns").exists()  # all in tmp

    # W&B, offline: a run per trial (its id the trial's), every epoch in its history and the last in its summary;
    # a report run with the report and the model as artifacts and the test figures in its summary
    runs_dir = offline_trackers["wandb"] / "wandb"
    for trial, values in epochs.items():
        [run_dir] = runs_dir.glob(f"offline-run-*-{trial}")
        history = {}
        for row in wandb_rows(run_dir, "history"):
            if "val_clip_acc" in row:
                history[row["training_iteration"]] = row["val_clip_acc"]
        assert history == pytest.approx(values)
        assert wandb_summary(run_dir)["val_clip_acc"] == pytest.approx(values[max(values)])
    [report_run] = set(runs_dir.glob("offline-run-*")) - {
        d for t in epochs for d in runs_dir.glob(f"offline-run-*-{t}")
    }
    artifacts = {(r.artifact.name, r.artifact.type) for r in wandb_records(report_run) if r.HasField("artifact")}
    assert artifacts == {(f"{name}-report", "report"), (f"{name}-model", "model")}
    assert wandb_summary(report_run)["test_clip_acc_mean"] == pytest.approx(parent.data.metrics["test_clip_acc_mean"])


def tune_epochs(sweep: Path) -> dict[str, dict[int, float]]:
    """Each trial's val_clip_acc by epoch, from the result.json Tune wrote in its folder."""
    out = {}
    for path in sweep.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = {r["training_iteration"]: r["val_clip_acc"] for r in rows if "val_clip_acc" in r}
    return out


# W&B's offline run file (run-<id>.wandb): a 7-byte header (":W&B", magic, version), then LevelDB-style log
# blocks of 32 KiB, each record a 7-byte header (CRC-32, length, chunk type) and a chunk of a protobuf Record.
BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_rows(run_dir: Path, kind: str) -> Iterator[dict[str, Any]]:
    """Each history row (``kind`` history) or summary update (``kind`` summary) of a W&B offline run, as a dict."""
    for record in wandb_records(run_dir):
        if record.HasField(kind):
            items = record.history.item if kind == "history" else record.summary.update
            yield {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def wandb_summary(run_dir: Path) -> dict[str, Any]:
    """A W&B offline run's summary: its updates in order (wandb-core writes no wandb-summary.json offline)."""
    summary: dict[str, Any] = {}
    for update in wandb_rows(run_dir, "summary"):
        summary.update(update)
    return summary


def wandb_records(run_dir: Path) -> Iterator[Any]:
    """The records of the W&B offline run in ``run_dir``, as ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    [path] = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the block's tail is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        if kind == 0 and length == 0:  # zeros: the rest of the block unused
            pos += room
            continue
        pos += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        else:
            assert kind == LAST, f"{path}: unknown chunk type {kind} at {pos}"
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        yield record
