"""Small sweeps on real local Ray with the tiny model: search, pruning, study, retrain, report."""

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from genre_sweep.config import resolve
from genre_sweep.model.card import wilson
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.node_store import NodeData
from genre_sweep.tune.configs import SweepConfig, SweepError
from genre_sweep.tune.retrain import load_results, retrain_seed
from genre_sweep.tune.sweep import command, run_sweep, watch_hints
from genre_sweep.tune.sweep import main as sweep_main
from tests.conftest import FAKE_SECRET

# A line Ray forwards from a worker, "(GenreSweepTrial(8d2c) pid=123)" after a colour code: as Ray ends a stopped
# trial's actor, Python in that worker may print "Exception ignored in ... SystemExit" (Ray's own teardown), which
# is not the driver's output.
RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(.*? pid=\d+(, ip=[\d.]+)?\)")


def driver_output(log: Path) -> str:
    """The driver's own lines of its log: without what Ray forwards from worker processes."""
    return "\n".join(line for line in log.read_text().splitlines() if not RAY_WORKER_LINE.match(line))


def sweep_args(shards, storage, name: str, space, trials: int, *more: str) -> list[str]:
    """The command line of a sweep of ``trials`` trials named ``name``; ``more`` adds flags."""
    return [
        "--pretrained",
        "tiny",  # the random test model; the shipped default is tested on its own
        "--shards",
        str(shards),
        "--storage",
        str(storage),
        "--name",
        name,
        "--space",
        str(space),
        "--trials",
        str(trials),
        # every trial the sampler's, as these tests count them; the recipe trial (on by default) is tested in
        # test_warm.py, which gives --recipe-trial after this
        "--no-recipe-trial",
        *more,
    ]


def test_a_small_sweep_prunes_confirms_its_top_two_over_seeds_and_names_each_trial_once(
    sweep_shards, quick_space, tmp_path, capsys, caplog, monkeypatch
):
    storage = tmp_path / "sweeps"
    monkeypatch.chdir(tmp_path)  # the shards given relative to here, as `make demo` gives them
    shards = os.path.relpath(sweep_shards, tmp_path)
    args = sweep_args(shards, storage, "s1", quick_space, 6, "--retrain-seeds", "2", "--max-concurrent-trials", "2")
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        code = sweep_main([*args, "--confirm-top", "2"])
    assert code == 0
    assert list(Path(os.environ["GENRE_SWEEP_NODE_STORE"]).glob("dataset-*/index.json"))  # trials mapped a node store
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{storage / 's1' / 'optuna.db'}")
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and "COMPLETE" in states
    assert "PRUNED" in states  # ASHA stopped some trials, and the study knows them as pruned
    assert study.metric_names == ["val_clip_acc"]  # optuna-dashboard names the objective
    for t in study.trials:
        best = max(t.intermediate_values.values())
        assert t.user_attrs["best_value"] == best and t.user_attrs["last_epoch"] == len(t.intermediate_values)
        if t.state.name == "PRUNED":
            assert len(t.intermediate_values) < t.params["num_train_epochs"]
        else:
            assert len(t.intermediate_values) == t.params["num_train_epochs"]
            assert t.value == best
    report = storage / "s1" / "report"
    for name in (
        "summary.md",
        "best_config.json",
        "trials.csv",
        "history.png",
        "learning_curves.png",
        "confusion.png",
        "retrain.json",
        "sweep_record.json",
        "model/model.safetensors",
    ):
        assert (report / name).exists(), name
    # the exported model's card: the exported seed's test figures with the interval, and the mean over both seeds
    meta = yaml.safe_load((report / "model" / "README.md").read_text().split("---")[1])
    results = [r["metrics"][0] for r in meta["model-index"][0]["results"]]
    assert [r["type"] for r in results] == ["accuracy", "f1", "accuracy"], results
    assert "on the test split" in results[0]["name"] and "95 % interval" in results[0]["name"]
    assert "mean of 2 seeds" in results[2]["name"]

    # The confirmation: the search's top two configurations by their best epoch, each retrained with both seeds from
    # the record's template; the chosen one has the best mean; only its retrains were tested.
    record = json.loads((storage / "s1" / "genre-sweep.json").read_text())
    retrained = json.loads((report / "retrain.json").read_text())
    confirmation = retrained["confirmation"]
    ranked = sorted(study.trials, key=lambda t: -max(t.intermediate_values.values()))
    top = [ranked[0].user_attrs["trial"]]
    top += [t.user_attrs["trial"] for t in ranked[1:] if t.params != ranked[0].params][:1]
    candidates = [c["trial"] for c in confirmation["candidates"]]
    assert candidates[0] == top[0] and len(candidates) == 2
    assert [c["value"] for c in confirmation["candidates"]][0] == max(t.user_attrs["best_value"] for t in study.trials)
    runs = confirmation["runs"]  # with seeds 1 and 2: no trial's (each trained with --seed 0), so no search run again
    assert sorted((r["trial"], r["seed"]) for r in runs) == sorted((c, s) for c in candidates for s in (1, 2))
    assert all(len(r["clips"]) == 8 for r in runs)  # each validation clip's score, for the paired comparison
    means = {c: sum(r["val"]["val_clip_acc"] for r in runs if r["trial"] == c) / 2 for c in candidates}
    chosen = confirmation["chosen"]
    assert means[chosen] == max(means.values())
    by_name = {t.user_attrs["trial"]: t for t in study.trials}
    for r in runs:  # each retrain trained the record's template with the candidate's searched values and its seed
        assert r["config"] == {**record["template"], **by_name[r["trial"]].params, "seed": r["seed"]}
    assert [p["seed"] for p in retrained["per_seed"]] == [1, 2] and retrained["trial"] == chosen
    assert 0 <= retrained["test_clip_acc_mean"] <= 1 and retrained["test_clips"] > 0
    # what the test task evaluated, as it reports it: the chosen configuration's two retrains, nothing else
    assert retrained["tested"] == [{"trial": chosen, "seed": 1}, {"trial": chosen, "seed": 2}]
    best = json.loads((report / "best_config.json").read_text())
    assert best["trial"] == chosen and best["params"] == by_name[chosen].params
    assert best["config"] == {k: v for k, v in runs[0]["config"].items() if k != "seed"} | by_name[chosen].params
    assert (report / "space.yaml").exists() and "--space space.yaml" in (report / "summary.md").read_text()

    summary = (report / "summary.md").read_text()
    assert f"The chosen configuration is trial `{chosen}`'s" in summary and "## Confirmation" in summary
    assert "2 configurations x 2 seeds = 4 retrains in" in summary and "| **chosen** |" in summary
    assert f"on the test split ({retrained['test_clips']} clips" in summary and "95 % interval" in summary
    assert "clip macro-F1" in summary and "random by track" in summary and "artist" in summary
    assert "genre-sweep predict SONGS --model model" in summary
    for path in (p for p in report.rglob("*") if p.is_file()):  # every path the report names is relative to it
        assert str(tmp_path).encode() not in path.read_bytes(), path
    assert 'pipeline("audio-classification"' in summary
    assert "test clip accuracy" in capsys.readouterr().out

    # One name per trial: the progress lines, trials.csv, the summary, the study and the trial's folder (TensorBoard)
    rows = list(csv.DictReader((report / "trials.csv").open()))
    assert len(rows) == 6 and {r["trial"] for r in rows} == set(by_name)
    for row in rows:
        t = study.trials[int(row["number"])]
        assert float(row["best_value"]) == max(t.intermediate_values.values())
        assert float(row["last_value"]) == t.intermediate_values[max(t.intermediate_values)]
    started = [m.split()[1] for m in caplog.messages if m.startswith("trial ") and " started (" in m]
    assert sorted(started) == sorted(by_name)
    for name, t in by_name.items():
        assert t.user_attrs["folder"] == f"{storage}/s1/{name}" and (storage / "s1" / name / "result.json").exists()
    assert f"`{chosen}`" in summary
    assert_dashboards_can_read(storage / "s1", study)

    firsts = []
    for result in (storage / "s1").glob("*/result.json"):  # trials started from the frozen-prefix cache
        first = json.loads(result.read_text().splitlines()[0])
        assert first["prefix_cache"] is True and first["first_step_s"] > 0
        assert first["device"] == "cpu"  # each trial's first report says where it ran
        firsts.append(first)
    # Tune ran later trials in earlier trials' processes (reuse_actors), which kept the backbone in memory
    by_process: dict[int, list[dict]] = {}
    for first in sorted(firsts, key=lambda f: f["first_step_at"]):
        by_process.setdefault(first["pid"], []).append(first)
    assert max(len(trials) for trials in by_process.values()) >= 2
    for trials in by_process.values():
        assert [t["backbone_reused"] for t in trials] == [False] + [True] * (len(trials) - 1)
        assert len({t["thread"] for t in trials}) == 1  # one training thread per process: its CUDA graphs serve all
    # Tune's own results name the same best trial, with no metric or mode to pass
    cfg = resolve(
        SweepConfig, {"shards": str(sweep_shards), "storage": str(storage), "name": "s1", "pretrained": "tiny"}
    )
    assert Path(load_results(cfg).get_best_result(scope="all").path).name == top[0]


def assert_dashboards_can_read(sweep_dir, study) -> None:
    """Where the README points them, TensorBoard finds every trial's epochs and optuna-dashboard the study."""
    from wsgiref.util import setup_testing_defaults

    import optuna_dashboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trial_dirs = sorted(p.parent for p in sweep_dir.glob("*/result.json"))
    assert len(trial_dirs) == len(study.trials)
    epochs_logged = []
    for d in trial_dirs:
        events = EventAccumulator(str(d))
        events.Reload()
        epochs_logged.append(len(events.Scalars("ray/tune/val_clip_acc")))
    assert sorted(epochs_logged) == sorted(len(t.intermediate_values) for t in study.trials)
    environ: dict = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"] = "/api/studies"
    app = optuna_dashboard.wsgi(f"sqlite:///{sweep_dir / 'optuna.db'}")
    body = b"".join(app(environ, lambda status, headers, exc_info=None: None))
    assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == [sweep_dir.name]


def test_a_trial_that_no_node_can_hold_fails_the_sweep_at_once(ray_local, sweep_shards, tmp_path):
    cfg = resolve(
        SweepConfig,
        {"shards": str(sweep_shards), "storage": str(tmp_path), "gpus_per_trial": "1", "pretrained": "tiny"},
    )
    with pytest.raises(SweepError, match="no node can hold a trial of 1 CPU \\+ 1 GPU"):
        run_sweep(cfg)


def test_a_retrain_is_reproducible_from_its_seed(sweep_shards):
    cfg = resolve(
        TrainConfig,
        {
            "shards": str(sweep_shards),
            "out": "-",
            "pretrained": "tiny",
            "device": "cpu",
            "learning_rate": 3e-3,
            "batch_size": 8,
            "gradient_accumulation_steps": 1,
            "num_train_epochs": 2,
            "seed": 7,
        },
    )
    a, b = retrain_seed(cfg, NodeData(cfg.shards)), retrain_seed(cfg, NodeData(cfg.shards))
    assert a.pop("seconds") > 0 and b.pop("seconds") > 0  # its running time, for the cost ledger: not reproducible
    assert a == b and a["best_epoch"] in (1, 2) and len(a["weights"]) > 0  # the same epochs, metrics and weights


@pytest.mark.slow
def test_a_sweep_stopped_by_ctrl_c_or_sigterm_then_killed_resumes_and_finishes_every_trial(
    sweep_shards, quick_space, tmp_path, capsys
):
    """Ctrl-C and SIGTERM stop the sweep in one line (exit 130, 143; no retrain, nothing failed); a second driver is
    refused while one runs; a killed driver loses nothing; --resume finishes every trial, each told to the study
    once."""
    import signal
    import sqlite3
    import time

    storage, name, trials = tmp_path / "sweeps", "r1", 5
    args = sweep_args(
        sweep_shards, storage, name, quick_space, trials, "--max-concurrent-trials", "1", "--retrain-seeds", "1"
    )
    args += ["--confirm-top", "1"]
    db = f"sqlite:///{storage / name / 'optuna.db'}"

    def states() -> list[str]:
        """The study's trial states, read without Optuna (its storage set-up writes to the file the sweep creates)."""
        try:
            with sqlite3.connect(f"file:{storage / name / 'optuna.db'}?mode=ro", uri=True, timeout=1) as con:
                return [state for (state,) in con.execute("SELECT state FROM trials ORDER BY number")]
        except sqlite3.Error:  # not created yet, or busy
            return []

    def driver_until(finished: int, *more: str) -> tuple[subprocess.Popen, Path]:
        """A driver in its own process group, once the study holds ``finished`` finished trials and runs another."""
        log = tmp_path / f"driver-{finished}.log"
        driver = subprocess.Popen(
            [sys.executable, "-m", "genre_sweep.tune.sweep", *args, *more],
            start_new_session=True,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            now = states()
            if sum(s in ("COMPLETE", "PRUNED") for s in now) >= finished and "RUNNING" in now:
                break
            time.sleep(0.5)
        assert driver.poll() is None, log.read_text()[-4000:]  # still mid-sweep
        return driver, log

    driver, log = driver_until(1)
    # a second driver for the same sweep is refused in one line while the first runs
    capsys.readouterr()
    assert sweep_main([*args, "--resume"]) == 2
    assert "is running now" in capsys.readouterr().err
    driver.send_signal(signal.SIGINT)  # Ctrl-C, to the driver only
    assert driver.wait(timeout=120) == 130, log.read_text()[-4000:]
    (said,) = [line for line in log.read_text().splitlines() if line.startswith("interrupted")]  # one line
    assert said.startswith("interrupted (SIGINT): finish with `genre-sweep sweep --storage ")
    assert said.endswith(f"--name {name} --resume`") and "Traceback" not in driver_output(log)
    assert not (storage / name / "report").exists()  # no retrain, no report from a cut-off search
    assert "FAIL" not in states()  # the running trial stays resumable, not failed

    driver, log = driver_until(2, "--resume")
    driver.send_signal(signal.SIGTERM)  # as `ray job stop` or a scheduler stops it
    assert driver.wait(timeout=120) == 143, log.read_text()[-4000:]
    (said,) = [line for line in log.read_text().splitlines() if line.startswith("interrupted")]
    assert said.startswith("interrupted (SIGTERM): finish with `genre-sweep sweep --storage ")
    assert not (storage / name / "report").exists() and "FAIL" not in states()

    driver, log = driver_until(3, "--resume")
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, mid-trial
    driver.wait()
    rungs_before = json.loads((storage / f"{name}-asha-state.json").read_text())["rungs"]

    # the last resume runs as users run it; its output shows every epoch, each trial's overhead and the retrain
    done = subprocess.run(
        [sys.executable, "-m", "genre_sweep", "sweep", *args, "--resume"], capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert "genre_sweep.model.train: epoch " in output and "s after Tune started it)" in output
    assert "per-trial overhead, from Tune's start of a trial" in output
    assert ", seed 1: best epoch" in output and "test, seed 1: clip accuracy" in output  # the retrains, from the tasks
    for said in [output, *(f.read_text() for f in tmp_path.glob("driver-*.log"))]:
        assert "is already reported" not in said  # Optuna is told each epoch once, across the resumes too
    study = optuna.load_study(study_name=name, storage=db)
    results = load_results(resolve(SweepConfig, {"storage": str(storage), "name": name, "resume": "true"}))
    assert len(results) == trials and not any(r.error for r in results)  # every trial finished
    by_trial = {t.user_attrs.get("trial"): t for t in study.trials}
    for r in results:  # each told to the study once, as finished, each epoch once
        t = by_trial[r.metrics["trial_id"]]
        assert t.state.name in ("COMPLETE", "PRUNED"), (t.number, t.state)
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
    # a study entry no Tune trial owns was drawn after Tune's last snapshot (at most 2 s old) and cut off by the
    # kill: marked so; or it finished in those seconds, and the study keeps its result
    for t in study.trials:
        if t.user_attrs.get("trial") not in {r.metrics["trial_id"] for r in results}:
            cut_off = t.state.name == "FAIL" and "drew a new trial in its place" in t.user_attrs["fail_reason"]
            assert cut_off or t.state.name in ("COMPLETE", "PRUNED"), (t.number, t.state, t.user_attrs)
    assert "RUNNING" not in {t.state.name for t in study.trials}
    assert (storage / name / "report" / "summary.md").exists()
    newest = max((storage / name).glob("experiment_state-*.json"))
    assert (storage / name / ".state-copies" / newest.name).exists()  # the sweep kept a whole copy ...
    shutil.rmtree(storage / name / ".state-copies")  # ... without which a state cut off is refused
    newest.write_bytes(newest.read_bytes()[:100])  # cut off, as a full disk leaves it
    assert sweep_main([*args, "--resume"]) == 2 and f"{newest.name} is damaged" in capsys.readouterr().err
    rungs_after = json.loads((storage / f"{name}-asha-state.json").read_text())["rungs"]
    for (milestone, recorded), (milestone_after, recorded_after) in zip(rungs_before[0], rungs_after[0], strict=True):
        assert milestone == milestone_after and recorded.items() <= recorded_after.items()  # old rungs kept


def test_a_sweep_on_s3_storage_minimising_the_loss_leaves_trials_report_and_study_in_the_bucket(
    sweep_shards, quick_space, s3_endpoint, s3_bucket, tmp_path
):
    import boto3

    study_db = tmp_path / "study.db"
    args = sweep_args(sweep_shards, f"s3://{s3_bucket}/sweeps", "s3run", quick_space, 3, "--s3-endpoint", s3_endpoint)
    more = ["--retrain-seeds", "1", "--confirm-top", "1", "--study-storage", f"sqlite:///{study_db}"]
    assert sweep_main([*args, *more, "--metric", "val_loss"]) == 0
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="sweeps/")["Contents"]}
    for name in ("summary.md", "best_config.json", "trials.csv", "optuna.db", "model/model.safetensors"):
        assert f"sweeps/s3run/report/{name}" in keys, name
    assert any("/checkpoint_" in k for k in keys)  # trial checkpoints went to the bucket too
    assert "sweeps/s3run/genre-sweep.json" in keys  # the sweep record
    assert "sweeps/s3run-lease.json" not in keys  # the driver's lease, given back at its end
    # the driver's AWS credentials (conftest sets them) reach no log or file of Ray's, nor the bucket's text
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    leaked = [f for f in session.rglob("*") if f.is_file() and FAKE_SECRET.encode() in f.read_bytes()]
    assert not leaked, leaked
    for key in keys - {k for k in keys if k.endswith((".safetensors", ".parquet", ".db", ".png"))}:
        assert FAKE_SECRET.encode() not in s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read(), key

    # --metric val_loss is minimised everywhere: the study's direction, each trial's best epoch, the winner
    study = optuna.load_study(study_name="s3run", storage=f"sqlite:///{study_db}")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE and study.metric_names == ["val_loss"]
    for t in study.trials:
        assert t.user_attrs["best_value"] == min(t.intermediate_values.values())
        if t.state.name == "COMPLETE":
            assert t.value == min(t.intermediate_values.values())
    best = json.loads(s3.get_object(Bucket=s3_bucket, Key="sweeps/s3run/report/best_config.json")["Body"].read())
    lowest = min(study.trials, key=lambda t: min(t.intermediate_values.values()))
    assert best["trial"] == lowest.user_attrs["trial"] and best["search"]["mode"] == "min"
    assert best["search"]["value"] == min(lowest.intermediate_values.values())
    assert best["config"]["metric"] == "val_loss" and best["config"]["mode"] == "min"  # its retrain's best epoch, too
    summary = s3.get_object(Bucket=s3_bucket, Key="sweeps/s3run/report/summary.md")["Body"].read().decode()
    assert "validation val_loss (lower is better), retrained with 1 seed" in summary and "--confirm-top 1" in summary


def test_retrain_takes_everything_from_the_sweep_record_and_refuses_what_contradicts_it(
    sweep_shards, quick_space, tmp_path, capsys
):
    from genre_sweep.tune.retrain import main as retrain_cli

    args = sweep_args(sweep_shards, tmp_path, "nr", quick_space, 2, "--retrain-seeds", "1")
    assert sweep_main([*args, "--no-retrain"]) == 0
    assert not (tmp_path / "nr" / "report").exists()
    record = json.loads((tmp_path / "nr" / "genre-sweep.json").read_text())
    assert record["template"]["pretrained"] == "tiny" and record["template"]["gradient_accumulation_steps"] == 1
    assert record["settings"]["metric"] == "val_clip_acc" and record["settings"]["mode"] == "max"
    assert record["space"]["fixed"] == {"gradient_accumulation_steps": 1}

    def files() -> dict[str, float]:
        return {str(p): p.stat().st_mtime for p in (tmp_path / "nr").rglob("*")}

    before = files()
    other = tmp_path / "other.yaml"
    other.write_text(quick_space.read_text().replace("high: 6", "high: 9"))
    refusals = [
        (
            sweep_main,
            [*args, "--resume", "--space", str(other)],
            "searched num_train_epochs: int [3, 9] given, int [3, 6] in the record",
        ),
        (retrain_cli, ["--storage", str(tmp_path), "--name", "nr", "--metric", "val_loss"], "--metric val_loss"),
        (retrain_cli, ["--storage", str(tmp_path), "--name", "nr", "--seed", "3"], "which has 0; leave it out"),
        (sweep_main, [*args, "--resume", "--trials", "9"], "--trials 9 contradicts the sweep record"),
        (sweep_main, args, "a sweep named 'nr' is already in"),  # the same name again, without --resume
    ]
    for job, argv, message in refusals:
        capsys.readouterr()
        assert job(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert files() == before  # nothing written, nothing started

    # Compatible: only the storage and name (everything else from the record), a changed number of seeds
    assert retrain_cli(["--storage", str(tmp_path), "--name", "nr", "--retrain-seeds", "1", "--confirm-top", "1"]) == 0
    retrained = json.loads((tmp_path / "nr" / "report" / "retrain.json").read_text())
    study = optuna.load_study(study_name="nr", storage=f"sqlite:///{tmp_path / 'nr' / 'optuna.db'}")
    params = {t.user_attrs["trial"]: t.params for t in study.trials}
    for run in retrained["confirmation"]["runs"]:  # exactly the record's template plus the chosen values
        assert run["config"] == {**record["template"], **params[run["trial"]], "seed": 1}
    capsys.readouterr()
    assert retrain_cli(["--storage", str(tmp_path), "--name", "nothing-here"]) == 2
    assert "no sweep named 'nothing-here'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_trial_given_a_gpu_it_cannot_use_fails_at_once_in_one_line(sweep_shards, quick_space, tmp_path):
    args = sweep_args(sweep_shards, tmp_path, "g", quick_space, 2, "--gpus-per-trial", "0.5", "--no-retrain")
    code = (
        "import sys, ray\n"
        "ray.init(address='local', num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)\n"
        "from genre_sweep.tune.sweep import main\n"
        f"sys.exit(main({args!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-3000:]
    assert "cannot use CUDA although Ray reserved GPU" in errors[0] and "--device cpu" in errors[0]
    assert "Traceback" not in done.stderr
    assert not list(tmp_path.glob("g/run_trial_*"))  # no trial started on the CPU


def test_the_sweep_says_where_ray_users_look_for_its_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = resolve(SweepConfig, {"shards": "s", "storage": "sweeps", "name": "s1"})
    ray_hint, tensorboard = watch_hints(cfg, "http://127.0.0.1:8265")
    assert ray_hint.startswith("Ray dashboard: http://127.0.0.1:8265 (the trials are its GenreSweepTrial actors)")
    assert ray_hint.endswith(f"for the token it asks for, run `{command('ray')} get-auth-token`")
    # the sweep's own folder, where the trials' event files are (not Ray's temp folder)
    assert tensorboard == f"TensorBoard: `{command('tensorboard')} --logdir {tmp_path / 'sweeps' / 's1'}`"
    s3 = resolve(SweepConfig, {"shards": "s", "storage": "s3://bucket/sweeps", "name": "s1"})
    assert watch_hints(s3, None) == [f"TensorBoard: `{command('tensorboard')} --logdir s3://bucket/sweeps/s1`"]
    monkeypatch.setenv("PATH", "")  # a virtualenv that is not activated: its own copy, which is there
    assert command("ray") == str(Path(sys.executable).parent / "ray") and Path(command("ray")).is_file()


def test_a_sweep_whose_every_trial_fails_ends_in_one_line(sweep_shards, tmp_path, capsys, caplog):
    space = tmp_path / "space.yaml"
    space.write_text(  # the tiny model has layers 0-11: every trial's model build fails
        "space:\n  encoder_min_layer_to_update: null\n  num_train_epochs: null\n"
        "fixed:\n  encoder_min_layer_to_update: 12\n  num_train_epochs: 1\n"
    )
    args = sweep_args(sweep_shards, tmp_path, "f", space, 2, "--no-prefix-cache")
    with caplog.at_level(logging.INFO, logger="genre_sweep"):
        assert sweep_main([*args, "--retrain-seeds", "1"]) == 2
    assert f"--logdir {tmp_path / 'f'}`" in caplog.text  # where TensorBoard finds the trials
    out, err = capsys.readouterr()
    assert "To visualize your results with TensorBoard" not in out + err  # Tune's hint, at Ray's temp folder
    err = err.strip().splitlines()
    assert err[-1].startswith("error: no trial of") and "2 of 2 trials failed" in err[-1]
    assert "encoder_min_layer_to_update 12 must be in [0, 11]" in err[-1]


def test_a_trial_whose_configuration_cannot_train_fails_once_and_the_sweep_goes_on_then_exits_1(
    sweep_shards, tmp_path, capsys
):
    space = tmp_path / "space.yaml"
    space.write_text(  # only a trial can find layer 12 wrong: the tiny model has layers 0-11
        "space:\n  encoder_min_layer_to_update: {type: categorical, choices: [11, 12]}\n  num_train_epochs: null\n"
        "fixed:\n  num_train_epochs: 1\n"
    )
    args = sweep_args(sweep_shards, tmp_path, "some", space, 4, "--retrain-seeds", "1", "--confirm-top", "1")
    assert sweep_main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    study = optuna.load_study(study_name="some", storage=f"sqlite:///{tmp_path / 'some' / 'optuna.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and len(failed) < 4 and len(study.trials) == 4  # the sweep went on past the failures
    for t in failed:  # told once, with why, and never retried (a retry would add a failure and a start)
        assert t.params["encoder_min_layer_to_update"] == 12
        assert "encoder_min_layer_to_update 12 must be in [0, 11]" in t.user_attrs["fail_reason"]
        folder = tmp_path / "some" / t.user_attrs["trial"]
        assert len((folder / "result.json").read_text().splitlines()) == 1 and not (folder / "error.txt").exists()
    assert err[-1].startswith(f"sweep: {len(failed)} of 4 trials failed; the first, trial ")
    assert "encoder_min_layer_to_update 12 must be in [0, 11]" in err[-1]
    summary = (tmp_path / "some" / "report" / "summary.md").read_text()
    for t in failed:
        assert f"- `{t.user_attrs['trial']}`: " in summary
    rows = list(csv.DictReader((tmp_path / "some" / "report" / "trials.csv").open()))
    assert sorted(r["trial"] for r in rows if r["fail_reason"]) == sorted(t.user_attrs["trial"] for t in failed)


def test_the_test_accuracys_interval_is_wilsons():
    low, high = wilson(0.8, 100)
    assert (round(low, 4), round(high, 4)) == (0.7112, 0.8666)  # 80 of 100: the textbook example
    assert wilson(1.0, 10)[1] == 1.0 and wilson(0.0, 10)[0] == 0.0 and wilson(0.5, 0) == (0.0, 1.0)
