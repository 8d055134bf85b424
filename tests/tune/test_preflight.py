"""cluster.yaml against Ray's own schema (offline), and each preflight check passing and failing."""

import dataclasses
import logging
from pathlib import Path

import yaml

from genre_sweep.model.configs import HUB_DEFAULT
from genre_sweep.tune.configs import PreflightConfig, RetrainConfig
from genre_sweep.tune.preflight import cache_start, check_cluster_config, launch_default_notes, run_checks
from genre_sweep.tune.preflight import main as preflight_main
from tests.conftest import save_small_pretrained

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema_and_keeps_the_rules():
    full = check_cluster_config(str(CLUSTER))
    raw = yaml.safe_load(CLUSTER.read_text())
    assert raw["docker"]["image"] == "rayproject/ray:2.60.0-py312-gpu"  # pinned, not latest
    assert raw["provider"]["type"] == "aws" and raw["idle_timeout_minutes"] > 0
    gpu = full["available_node_types"]["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and gpu["resources"]["GPU"] >= 1
    assert "GPU" not in full["available_node_types"]["head"]["resources"]
    for node in raw["available_node_types"].values():
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    assert any("--dashboard-host=127.0.0.1" in c for c in raw["head_start_ray_commands"])
    text = CLUSTER.read_text().lower()
    assert "aws_access_key_id" not in text and "aws_secret" not in text
    assert any("pip install" in c and "/home/ray/genre-sweep" in c for c in raw["setup_commands"])


def test_every_check_passes_for_a_sound_setup(sweep_shards, tmp_path, capsys):
    code = preflight_main(
        [
            "--cluster",
            str(CLUSTER),
            "--shards",
            str(sweep_shards),
            "--storage",
            str(tmp_path / "s"),
            "--gpus-per-trial",
            "0.5",
            "--pretrained",
            "tiny",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "preflight passed" in out and "fits: gpu_worker" in out
    (store,) = [line for line in out.splitlines() if "each node's store" in line]
    # the node type that runs trials, what it will store, and the disk cluster.yaml gives it
    assert store.startswith("ok") and "gpu_worker: dataset " in store and "prefix cache " in store
    assert "states entering layer 10" in store and "(150 GB of EBS)" in store


def test_a_disk_budget_too_small_for_the_cache_turns_it_off_with_one_line(sweep_shards, tmp_path, caplog):
    cfg = RetrainConfig(shards=str(sweep_shards), storage=str(tmp_path), node_disk_gb=0.001, pretrained="tiny")
    with caplog.at_level(logging.WARNING, logger="genre_sweep.tune.preflight"):
        assert cache_start(cfg, 10, ("train", "val")) is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("prefix cache off: each node would store dataset ") and "over --node-disk-gb 0.001" in line
    assert "runs the 10 frozen layers and the attention of layer 10" in line
    assert cache_start(dataclasses.replace(cfg, node_disk_gb=100.0), 10, ("train", "val")) == 10
    assert cache_start(dataclasses.replace(cfg, prefix_cache=False), 10, ("train", "val")) is None


def test_each_failure_is_reported_with_its_reason(sweep_shards, tmp_path, s3_endpoint):
    broken = tmp_path / "cluster.yaml"
    raw = yaml.safe_load(CLUSTER.read_text())
    raw["available_node_types"]["gpu_worker"]["min_wrkers"] = 0
    broken.write_text(yaml.safe_dump(raw))
    save_small_pretrained(tmp_path / "ast")
    results = run_checks(
        PreflightConfig(
            shards=str(sweep_shards),
            storage="s3://no-such-bucket/x",
            cluster=str(broken),
            pretrained=str(tmp_path / "ast"),
            s3_endpoint=s3_endpoint,
        )
    )
    verdicts = {name: (ok, detail) for name, ok, detail in results}
    ok, detail = verdicts["cluster config matches Ray's schema"]
    assert not ok and "available_node_types/gpu_worker" in detail and "min_wrkers" in detail
    ok, detail = verdicts["storage writable"]
    assert not ok and "no-such-bucket" in detail
    ok, detail = verdicts["shards match the model"]
    assert not ok and "--frames 1024" in detail


def test_a_trial_no_node_type_can_hold_fails_preflight(sweep_shards, tmp_path):
    results = run_checks(
        PreflightConfig(
            shards=str(sweep_shards), storage=str(tmp_path), cluster=str(CLUSTER), gpus_per_trial=2, pretrained="tiny"
        )
    )
    ((name, ok, detail),) = [r for r in results if r[0].startswith("a node type")]
    assert not ok and "none does" in detail


def test_launch_without_a_reachable_dashboard_says_how_to_get_one(tmp_path, capsys):
    from genre_sweep.tune.launch import main as launch_main

    code = launch_main(
        [
            "--cluster",
            str(CLUSTER),
            "--source",
            str(tmp_path),
            "--bucket",
            str(tmp_path / "b"),
            "--ray-address",
            "http://127.0.0.1:9",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in err and "ray dashboard" in err


def test_preflight_says_where_its_defaults_are_not_launchs(tmp_path, capsys):
    code = preflight_main(["--shards", str(tmp_path / "none"), "--storage", str(tmp_path / "s")])
    out = capsys.readouterr().out
    assert code == 2 and "FAIL  shards match the model" in out  # no shards there: the notes come all the same
    assert [line for line in out.splitlines() if line.startswith("note:")] == [
        f"note: --pretrained is small, preflight's default; launch's default is {HUB_DEFAULT}: pass the value you "
        "will launch with",
        "note: --cpus-per-trial is 1, preflight's default; launch's default is 4: pass the value you will launch with",
        "note: --gpus-per-trial is 0, preflight's default; launch's default is 0.5: pass the value you will launch "
        "with",
    ]
    as_launched = PreflightConfig(
        shards="s", storage="t", pretrained=HUB_DEFAULT, cpus_per_trial=4, gpus_per_trial=0.5, ray_address="h:6379"
    )
    assert launch_default_notes(as_launched) == []  # and --ray-address, the same flag for another address, never


def test_launch_prints_the_dashboard_with_the_command_giving_its_token():
    from genre_sweep.config import resolve
    from genre_sweep.tune.configs import LaunchConfig
    from genre_sweep.tune.launch import instructions

    cfg = resolve(
        LaunchConfig,
        {"cluster": "cluster.yaml", "source": "s3://b/gtzan", "bucket": "s3://b/gs", "ray_address": "http://h:8265"},
    )
    text = instructions(cfg, "job-1")
    assert "Ray dashboard:  http://h:8265" in text and "`ray exec cluster.yaml 'ray get-auth-token'`" in text
    assert "ray job logs --address http://h:8265 --follow job-1" in text


def test_launch_refuses_a_trial_no_node_type_can_hold(tmp_path, capsys):
    from genre_sweep.tune.launch import main as launch_main

    code = launch_main(
        ["--cluster", str(CLUSTER), "--source", str(tmp_path), "--bucket", str(tmp_path / "b"), "--gpus-per-trial", "4"]
    )
    assert code == 2 and "no node type" in capsys.readouterr().err


def test_every_node_installs_the_tested_versions_from_a_gpu_ami_without_the_virtualenv():
    import re

    raw = yaml.safe_load(CLUSTER.read_text())
    assert ".venv" in raw["rsync_exclude"] and "demo-run" in raw["rsync_exclude"]  # never GBs of torch over rsync
    assert all("-c /home/ray/genre-sweep/constraints.txt" in c for c in raw["setup_commands"] if "pip install" in c)
    pins = dict(
        line.split("==")
        for line in (CLUSTER.parent / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert re.fullmatch(r"2\.11\.\d+", pins["torch"]) and pins["torchaudio"].startswith("2.11.")
    assert pins["ray"].startswith("2.60.")
    for name, node in raw["available_node_types"].items():
        assert "nvidia-driver-gpu" in node["node_config"]["ImageId"], name
    assert {"CPU", "cpu_node"} <= set(raw["available_node_types"]["cpu_worker"]["resources"])
    assert "cpu_node" not in raw["available_node_types"]["gpu_worker"]["resources"]  # prepare never starts a GPU


def test_a_gpu_node_type_on_rays_default_ami_fails_preflight(sweep_shards, tmp_path):
    raw = yaml.safe_load(CLUSTER.read_text())
    del raw["available_node_types"]["gpu_worker"]["node_config"]["ImageId"]
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(raw))
    results = run_checks(
        PreflightConfig(shards=str(sweep_shards), storage=str(tmp_path), cluster=str(broken), pretrained="tiny")
    )
    ((_, ok, detail),) = [r for r in results if r[0] == "GPU node types run a CUDA 13 AMI"]
    assert not ok and "gpu_worker set no ImageId" in detail
