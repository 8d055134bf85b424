import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genre_sweep.model.checkpoint import CheckpointError, load_trainable
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.data import Gather
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.export import export_model, load_exported
from genre_sweep.model.node_store import NodeData
from genre_sweep.model.prefix_cache import build_cache
from genre_sweep.model.train import (
    Stepper,
    Stopped,
    accumulate,
    compile_mode,
    compiler_error,
    example_weights,
    predict_logits,
    split_inputs,
    train,
    train_card,
)
from tests.model.conftest import quick_config

CPU = torch.device("cpu")


def test_the_loss_falls_and_the_tiny_model_learns_well_above_chance(small_shards, small_data, tmp_path):
    result = train(quick_config(small_shards, tmp_path / "run", num_train_epochs="10"), small_data)
    losses = [m["train_loss"] for m in result.history]
    assert losses[-1] < 0.6 * losses[0]
    assert result.best_metrics["val_clip_acc"] >= 0.6  # chance: 0.25 (4 genres)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["learning_rate"] == 3e-3
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 10


def test_reports_once_per_epoch_with_a_checkpoint_and_keeps_only_the_latest(small_shards, small_data, tmp_path):
    seen = []
    result = train(
        quick_config(small_shards, tmp_path / "run", num_train_epochs="3"),
        small_data,
        report=lambda metrics, ckpt: seen.append((metrics["epoch"], ckpt.exists())),
    )
    assert seen == [(1, True), (2, True), (3, True)]
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["epoch-003"]
    files = {p.name for p in (tmp_path / "run" / "checkpoints" / "epoch-003").iterdir()}
    best = {"best.safetensors"} if result.best_epoch != 3 else set()  # the best epoch's weights, when earlier
    assert files == {"trainable.safetensors", "optimizer.safetensors", "state.json"} | best


def test_a_run_folder_with_checkpoints_is_not_trained_over_without_resume(small_shards, small_data, tmp_path):
    train(quick_config(small_shards, tmp_path / "run", num_train_epochs="1"), small_data)
    with pytest.raises(CheckpointError, match="--resume auto"):
        train(quick_config(small_shards, tmp_path / "run", num_train_epochs="1"), small_data)


def one_step(data, batch_size, accumulation, chunk):
    """The parameters after one optimizer step over the first batch_size x accumulation windows, dropout off."""
    model = build_model("tiny", len(data.genres), AdapterSettings(min_layer=10), data.frames, data.mel_bins, seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    xs, labels = split_inputs(data, "train")[0], torch.from_numpy(data.split("train").labels)
    index = torch.arange(batch_size * accumulation)
    weights = example_weights(len(labels), batch_size, accumulation)[: len(index)]
    accumulate(model, Gather((xs, labels), chunk, CPU), index, weights, chunk, None, CPU)
    optimizer.step()
    return [p.detach().clone() for p in trainable]


def test_one_step_of_2x8_and_of_16x1_give_the_same_parameters_however_it_is_executed(small_data):
    recipe = one_step(small_data, 2, 8, chunk=2)  # the original's execution: 8 passes of 2
    for batch_size, accumulation, chunk in [(2, 8, 16), (2, 8, 5), (16, 1, 16), (16, 1, 4)]:
        for got, want in zip(one_step(small_data, batch_size, accumulation, chunk), recipe, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_example_weights_give_each_micro_batch_its_mean_over_the_accumulation():
    w = example_weights(7, batch_size=3, accumulation=2)  # micro-batches of 3, 3 and the last 1
    assert w.tolist() == pytest.approx([1 / 6] * 6 + [1 / 2])


class Stop(Exception):
    pass


@pytest.mark.parametrize("source", ["in memory", "node store with prefix cache"])
def test_resuming_from_a_checkpoint_gives_identical_logits(source, small_shards, small_data, tmp_path):
    if source != "in memory":  # mapped from the node's store, states entering layer 10 mapped from there too
        small_data = NodeData(str(small_shards), root=str(tmp_path / "store"), prefix_start=10).load(
            ("train", "val"), "tiny", "cpu"
        )
        assert small_data.prefix is not None
    straight = train(quick_config(small_shards, tmp_path / "a", num_train_epochs="2"), small_data)

    def stop_after_first(metrics, ckpt):
        if metrics["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(quick_config(small_shards, tmp_path / "b", num_train_epochs="2"), small_data, report=stop_after_first)
    resumed = train(quick_config(small_shards, tmp_path / "b", num_train_epochs="2", resume="auto"), small_data)
    assert [m["epoch"] for m in resumed.history] == [1, 2]
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 2
    # compare the final epoch's weights (train() returns the best epoch's)
    load_trainable(tmp_path / "a" / "checkpoints" / "epoch-002", straight.model)
    load_trainable(tmp_path / "b" / "checkpoints" / "epoch-002", resumed.model)
    val, inputs = small_data.split("val"), split_inputs(small_data, "val")
    a = predict_logits(straight.model, val, 64, torch.device("cpu"), inputs)
    b = predict_logits(resumed.model, val, 64, torch.device("cpu"), inputs)
    assert torch.equal(a, b)


@pytest.mark.parametrize("at", [(2, 3), (1, 0)], ids=["epoch 2 step 3", "before the first step"])
def test_stopped_mid_epoch_and_resumed_elsewhere_it_ends_with_the_parameters_of_a_run_that_never_stopped(
    at, small_shards, small_data, tmp_path
):
    """A preempted trial: stopped before a step, its checkpoint moved to a fresh folder and resumed there."""
    settings = {"num_train_epochs": "3", "gradient_accumulation_steps": "2", "batch_size": "4"}
    straight = train(quick_config(small_shards, tmp_path / "a", **settings), small_data)
    asked: list[int] = []  # (epoch, step) positions stop() was asked at, counted from the start

    def stop() -> bool:
        asked.append(1)
        steps = -(-len(small_data.split("train")) // 8)  # optimizer steps per epoch (4 x 2 windows each)
        return len(asked) == (at[0] - 1) * steps + at[1] + 1

    with pytest.raises(Stopped) as stopped:
        train(quick_config(small_shards, tmp_path / "b", **settings), small_data, stop=stop)
    assert (stopped.value.epoch, stopped.value.step) == at
    moved = tmp_path / "elsewhere" / "from"  # only the checkpoint travels, as to a trial's new node
    shutil.copytree(stopped.value.path, moved)
    resumed = train(quick_config(small_shards, tmp_path / "c", resume=str(moved), **settings), small_data)
    assert [m["epoch"] for m in resumed.history] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_clip_acc"):  # the interrupted epoch's loss sum included
        assert [m[key] for m in resumed.history] == [m[key] for m in straight.history], key
    assert resumed.best_epoch == straight.best_epoch
    for a_dir, b_dir in [(tmp_path / "a", tmp_path / "c")]:  # the last epoch's parameters, every one of them
        a = load_file(str(a_dir / "checkpoints" / "epoch-003" / "trainable.safetensors"))
        b = load_file(str(b_dir / "checkpoints" / "epoch-003" / "trainable.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_alone_resumes_in_a_new_folder_and_keeps_its_earlier_best_epoch(
    small_shards, small_data, tmp_path
):
    """A retried Tune trial: Tune's copy of a checkpoint, resumed in a fresh folder, when the best epoch is earlier."""
    kept = tmp_path / "kept"

    def keep(metrics, ckpt):  # what Tune does with each reported checkpoint
        shutil.copytree(ckpt, kept / ckpt.name)

    settings = {"num_train_epochs": "5", "weight_decay": "0"}  # under which epoch 3 is the best (checked below)
    straight = train(quick_config(small_shards, tmp_path / "a", **settings), small_data, report=keep)
    assert straight.best_epoch < 4, straight.history  # else this test would show nothing
    resume = kept / f"epoch-{straight.best_epoch + 1:03d}"  # an epoch after the best, not the last
    resumed = train(quick_config(small_shards, tmp_path / "b", resume=str(resume), **settings), small_data)
    assert resumed.best_epoch == straight.best_epoch
    val_metrics = [[m[k] for k in ("epoch", "val_clip_acc", "val_loss")] for m in straight.history]
    assert [[m[k] for k in ("epoch", "val_clip_acc", "val_loss")] for m in resumed.history] == val_metrics
    val, inputs = small_data.split("val"), split_inputs(small_data, "val")
    a = predict_logits(straight.model, val, 64, torch.device("cpu"), inputs)
    b = predict_logits(resumed.model, val, 64, torch.device("cpu"), inputs)
    assert torch.equal(a, b)  # the best epoch's weights, from the checkpoint, not the last epoch's


def test_export_round_trip_gives_the_same_logits(small_shards, small_data, tmp_path):
    cfg = quick_config(small_shards, tmp_path / "run", num_train_epochs="2")
    result = train(cfg, small_data)
    val = small_data.split("val")
    # the card of train's export: its validation figure, called optimistic (the epoch was chosen on it)
    (figure,) = train_card(cfg, small_data, result.best_epoch, result.best_metrics["val_clip_acc"]).results
    assert (figure.split, figure.clips, figure.value) == (
        "validation",
        len(val.clip_names),
        result.best_metrics["val_clip_acc"],
    )
    assert "optimistic" in figure.name and figure.interval[0] <= figure.value <= figure.interval[1]
    before = predict_logits(result.model, val, 64, torch.device("cpu"))
    path = export_model(result.model, tmp_path / "export", small_data.genres, small_data.frames, small_data.mel_bins)
    loaded, info = load_exported(path)
    after = predict_logits(loaded, val, 64, torch.device("cpu"))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)  # DoRA merged into the weights
    again, _ = load_exported(export_model(loaded, tmp_path / "export2", info["genres"], 256, 128))
    assert torch.equal(predict_logits(again, val, 64, torch.device("cpu")), after)
    assert info["genres"] == list(small_data.genres) and not loaded.training
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md",
        "adapter",
        "config.json",
        "genre_sweep.json",
        "model.safetensors",
        "modeling_genre_sweep.py",
        "pipeline_genre_sweep.py",
        "preprocessor_config.json",
    ]
    assert not any("lora" in k for k in loaded.state_dict())
    assert np.isfinite(after.numpy()).all()


def test_a_truncated_checkpoint_file_is_one_line_not_a_traceback(small_shards, small_data, tmp_path, capsys):
    import shutil

    from genre_sweep.cli import main

    train(quick_config(small_shards, tmp_path / "run", num_train_epochs="1"), small_data)
    for name, message in [
        ("state.json", "state.json is not valid JSON"),
        ("trainable.safetensors", "trainable.safetensors: cannot read it"),
        ("optimizer.safetensors", "optimizer.safetensors: cannot read it"),
    ]:
        run = tmp_path / name
        shutil.copytree(tmp_path / "run", run)
        cut = run / "checkpoints" / "epoch-001" / name
        cut.write_bytes(cut.read_bytes()[:100])  # a write cut short
        flags = ["--shards", str(small_shards), "--out", str(run), "--device", "cpu", "--resume", "auto"]
        flags += ["--pretrained", "tiny"]
        assert main(["train", *flags, "--num-train-epochs", "2", "--batch-size", "8"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


def compiled_steps(data, compile: str, steps: int = 2, device: torch.device = CPU):
    """The trainable parameters after ``steps`` optimizer steps of 16 windows, each run as two passes of 8, from
    cached states, dropout off (compiled dropout draws other random numbers), compiled or eager; and the Stepper.
    SGD, so that the parameters show the gradients (Adam's first steps would hide their scale)."""
    model = build_model("tiny", len(data.genres), AdapterSettings(min_layer=10), data.frames, data.mel_bins, seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    cached = data.with_prefix(build_cache(model, data, 10, device))
    xs, labels = cached.prefix.split("train"), torch.from_numpy(data.split("train").labels)
    model = model.to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    step = Stepper(model, optimizer, None, Gather((xs, labels), 8, device), 10, device, 1.0, 8, compile)
    weights = example_weights(len(labels), 16, 1).to(device)
    for first in range(0, 16 * steps, 16):
        step(torch.arange(first, first + 16), weights[first : first + 16])
    return [p.detach().clone() for p in model.parameters() if p.requires_grad], step


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_a_compiled_step_gives_the_eager_steps_parameters(small_data, mode):
    eager, _ = compiled_steps(small_data, compile="off")
    compiled, step = compiled_steps(small_data, compile=mode)
    assert step.forward is not step.eager  # it stayed compiled
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_later_run_in_the_process_reuses_the_compiled_step_without_recompiling(small_data):
    """A reused trial process: the next trial's model (same shapes, other weights) runs the graphs compiled for the
    first, and the batch is dynamic: a shorter last pass compiles nothing new either."""
    from torch._dynamo.utils import counters

    compiled_steps(small_data, compile="default")  # the process's first run (or an earlier test's) compiled it
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1
    params, step = compiled_steps(small_data, compile="default", steps=3)  # a new model, three steps
    assert step.forward is not step.eager and counters["stats"]["unique_graphs"] == graphs  # no recompile
    short = Gather(step.gather.sources, 5, CPU)  # passes of 5 windows: another batch size
    step.gather, step.chunk = short, 5
    step(torch.arange(0, 10), example_weights(10, 10, 1))
    assert counters["stats"]["unique_graphs"] == graphs


def test_only_the_compilers_own_errors_keep_a_process_eager():
    import torch._dynamo.exc

    assert compiler_error(torch._dynamo.exc.TorchDynamoException("inductor: no C++ compiler"))
    assert not compiler_error(OSError("a shard could not be read"))  # the data, not the compiler
    assert not compiler_error(RuntimeError("shape mismatch"))


def test_auto_compiles_on_a_gpu_only():
    assert compile_mode("auto", torch.device("cuda")) == "default" and compile_mode("auto", CPU) == "off"
    assert compile_mode("reduce-overhead", CPU) == "reduce-overhead"


def test_train_with_compile_goes_on_eagerly_when_compiling_fails(small_shards, tmp_path):
    """The real fault, in a process of its own: no C++ compiler for inductor's CPU kernels, none cached."""
    env = {**os.environ, "CXX": "/nonexistent/c++", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    args = ["--shards", str(small_shards), "--out", str(tmp_path / "run"), "--pretrained", "tiny", "--device", "cpu"]
    done = subprocess.run(
        [sys.executable, "-m", "genre_sweep.model.train", *args, "--num-train-epochs", "1", "--compile", "default"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.compile failed, training eagerly from now on" in done.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_the_metric_and_its_mode_pick_the_best_epoch_whose_weights_are_kept(small_shards, small_data, tmp_path):
    from genre_sweep.model.train import validation_metrics

    # a learning rate high enough that the validation loss turns up again: its best epoch is not the last
    cfg = quick_config(small_shards, tmp_path / "run", num_train_epochs="5", learning_rate="3e-2", metric="val_loss")
    result = train(cfg, small_data)
    losses = [m["val_loss"] for m in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses)) < 5
    logits = predict_logits(result.model, small_data.split("val"), 64, CPU)
    assert validation_metrics(logits, small_data.split("val"))["val_loss"] == pytest.approx(min(losses), abs=1e-5)


def test_the_better_epoch_is_judged_by_the_metric_in_its_direction_ties_by_the_other():
    from genre_sweep.model.train import better

    a, b = {"val_clip_acc": 0.8, "val_loss": 0.9}, {"val_clip_acc": 0.7, "val_loss": 0.5}
    assert better(a, b, "val_clip_acc", "max") and better(b, a, "val_loss", "min")
    assert better(a, b, "val_loss", "max")  # a mode that inverts the metric is obeyed
    tie = {"val_clip_acc": 0.8, "val_loss": 0.7}
    assert better(tie, a, "val_clip_acc", "max") and not better(a, tie, "val_clip_acc", "max")
    assert not better(dict(a), a, "val_clip_acc", "max")  # an equal later epoch does not replace the earlier
