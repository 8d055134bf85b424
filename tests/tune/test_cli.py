"""The one console command: synth -> prepare -> inspect through ``genre-sweep``'s entry point."""

import subprocess
import sys

from tune.cli import main


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


def test_unknown_jobs_and_bad_flags_are_clear_errors(capsys):
    assert main(["fly"]) == 2
    assert "unknown job 'fly'" in capsys.readouterr().err
    try:
        main(["prepare", "--source", "x", "--out", "y", "--split", "0.9,0.2,0.1"])
    except SystemExit as e:
        assert e.code == 2
    assert "split must be three fractions" in capsys.readouterr().err


def test_jobs_run_as_modules():
    for module in (
        "data.synth",
        "data.prepare",
        "data.inspect",
        "model.train",
        "model.evaluate",
        "model.predict",
        "tune.cli",
    ):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout, module
