"""The one console command: its jobs, flags, config files, help and errors, through ``genre-sweep``'s entry point."""

import subprocess
import sys

import pytest

from genre_sweep.cli import main


def test_synth_prepare_inspect_through_the_command(ray_local, tmp_path, capsys):
    corpus, shards = tmp_path / "corpus", tmp_path / "shards"
    genres = "blues,metal"
    assert main(["synth", "--out", str(corpus), "--per-genre", "2", "--seconds", "11", "--genres", genres]) == 0
    assert len(list(corpus.rglob("*.wav"))) == 4
    assert (
        main(["prepare", "--source", str(corpus), "--out", str(shards), "--genres", genres, "--effects", "echo"]) == 0
    )
    assert (shards / "manifest.json").exists()
    capsys.readouterr()
    assert main(["inspect", "--shards", str(shards)]) == 0
    out = capsys.readouterr().out
    assert "(1024, 128) float16" in out and "augmentations (train only): echo" in out


def test_no_arguments_prints_the_jobs_to_stderr_and_exits_2(capsys):
    from genre_sweep.cli import JOBS

    assert main([]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: genre-sweep") and all(f"  {job} " in err for job in JOBS)
    assert main(["--help"]) == 0 and capsys.readouterr().out.startswith("usage: genre-sweep")  # asked for: stdout, 0


@pytest.mark.parametrize(
    ("job", "suggested"),
    [("trian", "did you mean train or retrain or pretrain?"), ("preflite", "did you mean preflight"), ("fly", None)],
)
def test_an_unknown_job_names_the_closest_jobs_in_one_line(capsys, job, suggested):
    assert main([job, "--shards", "s"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"unknown job {job!r}" in err and "jobs: synth, prepare" in err
    assert (suggested in err) if suggested else ("did you mean" not in err)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--learnin-rate", "1"], "unrecognized arguments: --learnin-rate 1; did you mean --learning-rate?"),
        (["train", "--learning_rat=0.1"], "did you mean --learning-rate?"),  # underscores and =value too
        (["sweep", "--prefix-cach"], "did you mean --prefix-cache or --no-prefix-cache?"),
        (
            ["train", "--learnin-rate", "0.1", "--num-epochs", "2"],
            "did you mean --learning-rate for --learnin-rate, --num-train-epochs for --num-epochs?",
        ),
        (["launch", "--address", "http://127.0.0.1:8265"], "did you mean --ray-address?"),  # its old name
        (["train", "--colour", "red"], "unrecognized arguments: --colour red (see genre-sweep train --help)"),
    ],
)
def test_an_unknown_flag_names_the_closest_flags_in_one_line(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_every_job_that_reaches_ray_names_its_address_ray_address():
    import dataclasses

    from genre_sweep.cli import JOBS, _load

    for name, job in JOBS.items():
        addresses = [f.name for f in dataclasses.fields(_load(job.config)) if "address" in f.name]
        assert addresses in ([], ["ray_address"]), (name, addresses)
    assert "ray_address" in {f.name for f in dataclasses.fields(_load(JOBS["launch"].config))}


def test_unknown_jobs_and_bad_flags_are_clear_errors(capsys):
    assert main(["fly"]) == 2
    assert "unknown job 'fly'" in capsys.readouterr().err
    try:
        main(["prepare", "--source", "x", "--out", "y", "--split", "0.9,0.2,0.1"])
    except SystemExit as e:
        assert e.code == 2
    assert "split must be three fractions" in capsys.readouterr().err


def test_jobs_run_as_modules():
    started = {}
    for module in (
        "genre_sweep.data.synth",
        "genre_sweep.data.prepare",
        "genre_sweep.data.inspect",
        "genre_sweep.model.train",
        "genre_sweep.model.evaluate",
        "genre_sweep.model.predict",
        "genre_sweep.cli",
        "genre_sweep",
    ):  # all at once: each is mostly a process's start and imports
        started[module] = subprocess.Popen(
            [sys.executable, "-m", module, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    for module, proc in started.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "usage" in out, module


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"genre-sweep {version('genre-sweep')}"


def test_hugging_face_underscore_flags_mean_the_same_as_dashed_ones(capsys):
    import yaml

    dashed = ["train", "--shards", "s", "--out", "o", "--learning-rate", "0.01", "--num-train-epochs", "3"]
    underscored = ["train", "--shards", "s", "--out", "o", "--learning_rate", "0.01", "--num_train_epochs", "3"]
    printed = []
    for argv in (dashed, underscored):
        assert main([*argv, "--print-config"]) == 0
        printed.append(yaml.safe_load(capsys.readouterr().out))
    assert printed[0] == printed[1] and printed[0]["learning_rate"] == 0.01 and printed[0]["num_train_epochs"] == 3
    assert main(["sweep", "--shards", "s", "--storage", "t", "--no_prefix_cache", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["prefix_cache"] is False


def test_print_config_is_a_config_file_that_gives_the_same_config(tmp_path, capsys):
    argv = ["prepare", "--source", "a", "--out", "b", "--genres", "jazz,metal", "--split", "0.6,0.2,0.2"]
    assert main([*argv, "--print-config"]) == 0
    first = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(first)
    assert main(["prepare", "--config", str(tmp_path / "c.yaml"), "--print-config"]) == 0
    assert capsys.readouterr().out == first
    assert "genres:\n- jazz\n- metal\n" in first


@pytest.mark.parametrize(
    ("text", "flag", "message"),
    [
        ("shards: [a\nout: b\n", "--config", "not valid YAML at line 2"),
        ("- just\n- a list\n", "--config", "expected a mapping of field: value"),
        ("batch_size: eight\n", "--config", "batch_size: 'eight' is not a valid int"),
        ("space: {learning_rate: [1\n", "--space", "not valid YAML at line"),
        ("[1, 2]\n", "--space", "expected a mapping with sections"),
        ("space:\n  learning_rate: 0.1\n", "--space", "learning_rate: expected {type: ..."),
    ],
)
def test_a_malformed_yaml_file_is_one_line_naming_the_file(tmp_path, capsys, text, flag, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    job = (
        ["train", "--shards", "s", "--out", "o"] if flag == "--config" else ["sweep", "--shards", "s", "--storage", "t"]
    )
    try:  # a --config is read while the flags are parsed; the --space file once, when the sweep starts
        code = main([*job, flag, str(path)])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{flag} {path}" in err and message in err


def test_a_bad_flag_value_or_unknown_flag_is_one_line(capsys):
    for argv, message in (
        (["train", "--shards", "s", "--out", "o", "--batch-size", "x"], "--batch-size: 'x' is not a valid int"),
        (["train", "--shards", "s", "--out", "o", "--colour", "red"], "unrecognized arguments: --colour"),
        (["evaluate", "--model", "m", "--shards", "s", "--out", "o", "--split", "dev"], "invalid choice: 'dev'"),
        (["train", "--shards", "s", "--out", "o", "--learning-r", "1"], "unrecognized arguments"),  # no prefixes
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_retrain_shows_only_the_settings_it_uses(capsys):
    with pytest.raises(SystemExit):
        main(["retrain", "--help"])
    retrain_help = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    sweep_help = capsys.readouterr().out
    for sweep_only in ("--trials", "--grace-period", "--resume", "--max-concurrent-trials", "--no-retrain"):
        assert sweep_only in sweep_help and sweep_only not in retrain_help
    for shared in ("--retrain-seeds", "--storage", "--space", "--gpus-per-trial", "--s3-endpoint"):
        assert shared in retrain_help


def test_help_is_clean_and_imports_no_heavy_library():
    from genre_sweep.cli import JOBS

    code = (
        "import sys, contextlib, io\n"
        "from genre_sweep.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    main([sys.argv[1], '--help'])\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'optuna', 'peft') if m in sys.modules]\n"
        "print(out.getvalue()); print('HEAVY', heavy)\n"
    )
    for job in JOBS:
        done = subprocess.run([sys.executable, "-c", code, job], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        text, heavy = done.stdout.rsplit("HEAVY", 1)
        assert heavy.strip() == "[]", f"`genre-sweep {job} --help` imports {heavy.strip()}"
        assert "``" not in text and f"usage: genre-sweep {job}" in text
        for line in text.split("\n  -"):
            assert line.count("(default") <= 1, f"{job}: {line}"


def test_an_expected_error_inside_a_ray_task_is_one_line(ray_local, capsys):
    from genre_sweep.jobs import run_job
    from genre_sweep.model.dora_ast import ModelError

    def fails() -> None:
        raise ModelError("--pretrained nowhere: no AST config.json")

    task = ray_local.remote(fails)
    assert run_job(lambda: ray_local.get(task.remote())) == 2
    assert capsys.readouterr().err == "error: --pretrained nowhere: no AST config.json\n"


def test_every_error_a_job_expects_shares_one_base():
    from genre_sweep.config import ConfigError
    from genre_sweep.data.audio import AudioError
    from genre_sweep.data.pipeline import PrepareError
    from genre_sweep.errors import GenreSweepError
    from genre_sweep.model.checkpoint import CheckpointError
    from genre_sweep.model.dora_ast import ModelError
    from genre_sweep.model.prefix_cache import CacheMismatch
    from genre_sweep.store import StoreError
    from genre_sweep.tune.configs import SweepError
    from genre_sweep.tune.internals import LibraryChanged
    from genre_sweep.tune.launch import LaunchError

    for cls in (ConfigError, StoreError, PrepareError, AudioError, ModelError, CheckpointError, CacheMismatch):
        assert issubclass(cls, GenreSweepError), cls
    for cls in (SweepError, LaunchError, LibraryChanged):
        assert issubclass(cls, GenreSweepError), cls
