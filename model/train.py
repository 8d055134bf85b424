"""``train(config, data, report)``: the one training loop that sweep trials, retrain and benchmarks share.

AdamW (fused on GPU) with weight decay on non-bias, non-norm trainable weights; linear warmup then
linear decay (transformers' scheduler); gradient accumulation; clipping; bf16 autocast on GPU, fp32 on
CPU; validation (window and clip accuracy) after every epoch; one ``report(metrics, checkpoint_dir)``
per epoch; a checkpoint per epoch (the latest kept, with the best epoch's weights); resume from a checkpoint.
Asked to stop mid-epoch (``stop``: a trial whose node is being preempted), it checkpoints that exact step
(``Stopped``); resumed from there, it ends with exactly the parameters of a run that never stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import get_linear_schedule_with_warmup

from genre_sweep.cli import job_main
from genre_sweep.config import to_json
from genre_sweep.errors import one_line
from genre_sweep.model.card import CardFacts, Result, wilson
from genre_sweep.model.checkpoint import (
    TRAINABLE,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_position,
    load_trainable,
    restore_best,
    save_checkpoint,
)
from genre_sweep.model.configs import TrainConfig, score
from genre_sweep.model.data import (
    Gather,
    SplitArrays,
    TrainData,
    as_tensor,
    check_dataset,
    load_data,
    resident_budget,
    resident_copy,
    resident_fits,
)
from genre_sweep.model.device import autocast, describe, halving, input_dtype, resolve_device
from genre_sweep.model.dora_ast import GenreClassifier, build_model
from genre_sweep.model.export import export_model
from genre_sweep.model.prefetch import epoch_chunks, ring_depth
from genre_sweep.model.prefix_cache import check_cache
from genre_sweep.seeds import stable_seed

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any], Path], None]


class Stopped(Exception):
    """``train`` stopped before step ``step`` of epoch ``epoch`` because its ``stop`` said so; ``path`` is the
    checkpoint of that exact position (``train(..., resume=path)`` goes on from it)."""

    def __init__(self, path: Path, epoch: int, step: int, steps: int) -> None:
        super().__init__(f"stopped at epoch {epoch} step {step} of {steps}; checkpoint {path}")
        self.path, self.epoch, self.step, self.steps = path, epoch, step, steps


@dataclasses.dataclass
class TrainResult:
    model: GenreClassifier  # with the best epoch's weights loaded
    best_epoch: int
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: Path


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay on trainable matrices only: not on biases, norms or DoRA magnitude vectors."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or "magnitude" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def logits_from(model: GenreClassifier, x: torch.Tensor, start: int | None) -> torch.Tensor:
    """Logits from features (``start`` None) or from cached hidden states entering layer ``start``."""
    return model(x) if start is None else model.forward_from(x, start)


def example_weights(n: int, batch_size: int, accumulation: int) -> torch.Tensor:
    """Each position's weight in its optimizer step's loss under the recipe: the mean over its micro-batch of
    ``batch_size`` (the epoch's last may be shorter), divided by ``accumulation``."""
    weights = torch.full((n,), 1.0 / (accumulation * batch_size))
    if n % batch_size:
        weights[n - n % batch_size :] = 1.0 / (accumulation * (n % batch_size))
    return weights


def accumulate(
    model: GenreClassifier,
    gather: Gather,
    index: torch.Tensor,
    weights: torch.Tensor,
    chunk: int,
    start: int | None,
    device: torch.device,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward and backward of one optimizer step's examples (``index``, with their ``weights`` on ``device``) in
    passes of ``chunk``: the gradients of sum(weight x loss), the recipe's mean loss, whatever the chunking. Returns
    the sum of the examples' losses (detached, on ``device``). ``forward`` (default ``logits_from``) may be its
    compiled twin."""
    total = torch.zeros((), device=device)
    dtype = input_dtype(device, cached=start is not None)
    forward = forward or functools.partial(logits_from, model, start=start)
    for first in range(0, len(index), chunk):
        x, y = gather(index[first : first + chunk])  # (B, frames, mel), or (B, tokens, hidden) cached; (B,)
        with autocast(device):
            losses = F.cross_entropy(forward(x.to(dtype)).float(), y, reduction="none")
        (losses * weights[first : first + chunk]).sum().backward()
        total += losses.detach().sum()
    return total


# Graphs dynamo may keep per function (its default, 8, is reached by a reused process's trials of a few shapes; past
# it dynamo runs eagerly without a word). A process past RESET_AFTER shapes starts dynamo afresh.
RECOMPILE_LIMIT = 64
RESET_AFTER = 16
_compiled: dict[str, Callable[..., torch.Tensor]] = {}  # compile mode -> the process's compiled ``logits_from``
_compiled_shapes: set[tuple[Any, ...]] = set()  # the models (trainable shapes, start, device) compiled for so far
_compile_failed: dict[str, str] = {}  # compile mode -> why it failed in this process: later runs go eager at once


def compiler_error(e: BaseException) -> bool:
    """Whether ``e`` came from torch's compiler (dynamo or inductor), not from the step it compiles."""
    import torch._dynamo.exc

    kinds: list[type] = [torch._dynamo.exc.TorchDynamoException]
    inductor = getattr(sys.modules.get("torch._inductor.exc"), "InductorError", None)
    if isinstance(inductor, type):
        kinds.append(inductor)
    return isinstance(e, tuple(kinds))


def compile_mode(asked: str, device: torch.device) -> str:
    """The ``torch.compile`` mode a run uses: ``auto`` is ``default`` on a GPU and off elsewhere."""
    return ("default" if device.type == "cuda" else "off") if asked == "auto" else asked


def compiled_logits(mode: str, model: GenreClassifier, start: int | None) -> Callable[..., torch.Tensor]:
    """``logits_from`` compiled once per process for ``mode``, with the model an argument: a later model of the same
    shapes (the next trial of a reused trial actor) runs the graphs compiled for the first with no recompile, and the
    batch dimension is dynamic (the epoch's shorter last step compiles nothing new). Returns ``forward(x)``."""
    shape = (tuple((n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad), start)
    shape += (str(next(model.parameters()).device), repr(getattr(model, "adapters", None)))  # alpha: a guarded float
    if shape not in _compiled_shapes and len(_compiled_shapes) >= RESET_AFTER:
        torch._dynamo.reset()  # never near dynamo's limit, past which it would run eagerly without a word
        _compiled.clear()
        _compiled_shapes.clear()
    _compiled_shapes.add(shape)
    if mode not in _compiled:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        _compiled[mode] = torch.compile(logits_from, mode=mode)
    compiled = _compiled[mode]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            torch._dynamo.mark_dynamic(x, 0)
        return compiled(model, x, start)

    return forward


@dataclasses.dataclass
class Stepper:
    """One optimizer step over the given examples: forward and backward in passes of ``chunk`` windows (halved on
    a CUDA out-of-memory error, and the step redone), clipping, AdamW, the schedule. Nothing in it waits for the
    GPU: the loss comes back as a tensor on the device.

    ``compile`` (a ``torch.compile`` mode, "auto" or "off"): the trained part of the forward (from the cached states,
    or the whole forward from features) and its backward run compiled (``compiled_logits``: once per process, reused
    by later runs of the same shapes). If compiling fails, the step is redone eagerly, and this process's later runs
    stay eager, with one warning.
    """

    model: GenreClassifier
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch LR scheduler, or None
    gather: Gather
    start: int | None  # the layer cached states enter, None from features
    device: torch.device
    max_grad_norm: float
    chunk: int
    compile: str = "auto"

    def __post_init__(self) -> None:
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.eager = functools.partial(logits_from, self.model, start=self.start)
        self.forward = self.eager
        self.compile = compile_mode(self.compile, self.device)
        # gradients accumulate into buffers of their own under CUDA graphs: a replayed graph rewrites its outputs, so
        # a gradient adopted from one (as autograd adopts a first gradient) would be overwritten by the next pass
        self.keep_grads = self.compile == "reduce-overhead"
        if self.compile in _compile_failed:
            why = _compile_failed[self.compile]
            log.warning("torch.compile failed earlier in this process, training eagerly: %s", why)
        elif self.compile != "off":
            self.forward = compiled_logits(self.compile, self.model, self.start)
        if self.keep_grads:
            for p in self.trainable:
                p.grad = torch.zeros_like(p)

    def __call__(self, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        while True:
            out_of_memory = False
            try:
                loss = accumulate(
                    self.model, self.gather, index, weights, self.chunk, self.start, self.device, self.forward
                )
                break
            except torch.OutOfMemoryError:
                if self.device.type != "cuda" or self.chunk == 1:
                    raise
                out_of_memory = True  # handled below, once the failed pass's tensors are released with the exception
            except Exception as e:  # a failed compile; an eager failure is raised by the retry below
                if self.forward is self.eager or isinstance(e, OSError):  # an OSError: reading the data, not compiling
                    raise
                self.forward = self.eager
                if compiler_error(e):  # this process's later runs go eager at once; any other error, this run only
                    _compile_failed[self.compile] = one_line(e)
                log.warning("torch.compile failed, training eagerly from now on: %s", one_line(e))
            self.optimizer.zero_grad(set_to_none=not self.keep_grads)  # redo this step's passes
            if out_of_memory:
                torch.cuda.empty_cache()
                self.chunk //= 2
                log.warning("out of GPU memory: %d windows per forward/backward pass from now on", self.chunk)
        torch.nn.utils.clip_grad_norm_(self.trainable, self.max_grad_norm)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=not self.keep_grads)
        return loss


def split_inputs(data: TrainData, name: str) -> tuple[torch.Tensor, int | None]:
    """What a forward over split ``name`` starts from: cached prefix states if ``data`` has them, else features."""
    if data.prefix is not None:
        return data.prefix.split(name), data.prefix.start
    return as_tensor(data.split(name).features), None


@torch.no_grad()
def predict_logits(
    model: GenreClassifier,
    split: SplitArrays,
    batch_size: int,
    device: torch.device,
    inputs: tuple[torch.Tensor, int | None] | None = None,
) -> torch.Tensor:
    """Logits (N, C) float32 on CPU for every window of ``split``, the model in eval mode; ``batch_size`` halved on a
    CUDA out-of-memory error (``halving``).

    ``inputs`` (from ``split_inputs``) may replace the split's features with its cached prefix states.
    """
    was_training = model.training
    model.eval()
    xs, start = inputs if inputs is not None else (as_tensor(split.features), None)
    dtype = input_dtype(device, cached=start is not None)
    out: list[torch.Tensor] = []

    def batches(size: int) -> None:  # from the first window not done yet: a halved batch redoes only the failed one
        for i in range(sum(len(o) for o in out), len(split), size):
            x = xs[i : i + size].to(device).to(dtype)  # a plain copy: non_blocking from pageable memory gains nothing
            with autocast(device):
                out.append(logits_from(model, x, start).float())

    halving(batches, batch_size, device, "validation")
    model.train(was_training)
    return torch.cat(out).cpu() if out else torch.zeros(0)


def clip_logits(logits: torch.Tensor, clips: np.ndarray) -> torch.Tensor:
    """Mean window logits per clip: (n_clips, C)."""
    index = torch.from_numpy(clips)
    sums = torch.zeros(int(clips.max()) + 1, logits.shape[1]).index_add_(0, index, logits)
    return sums / torch.bincount(index).unsqueeze(1)


def validation_metrics(logits: torch.Tensor, split: SplitArrays, prefix: str = "val") -> dict[str, float]:
    labels = torch.from_numpy(split.labels)
    clip_labels = torch.zeros(len(split.clip_names), dtype=torch.long).index_copy_(
        0, torch.from_numpy(split.clips), labels
    )
    per_clip = clip_logits(logits, split.clips)
    return {
        f"{prefix}_loss": F.cross_entropy(logits, labels).item(),
        f"{prefix}_window_acc": (logits.argmax(1) == labels).float().mean().item(),
        f"{prefix}_clip_acc": (per_clip.argmax(1) == clip_labels).float().mean().item(),
    }


def epoch_key(metrics: dict[str, float], metric: str, mode: str) -> tuple[float, float]:
    """How good an epoch is, as a key to maximise: ``metric`` in its direction (``mode`` max or min), then the lower
    validation loss (the higher clip accuracy when the loss is the metric); a NaN is the worst value there is."""
    other, other_mode = ("val_clip_acc", "max") if metric == "val_loss" else ("val_loss", "min")
    return score(metrics.get(metric), mode), score(metrics.get(other), other_mode)


def better(new: dict[str, float], old: dict[str, float] | None, metric: str, mode: str) -> bool:
    """Whether epoch metrics ``new`` beat ``old`` (``epoch_key``); an equal later epoch does not."""
    return old is None or epoch_key(new, metric, mode) > epoch_key(old, metric, mode)


def clip_scores(logits: torch.Tensor, split: SplitArrays, metric: str) -> np.ndarray:
    """Each clip's part in ``metric`` (n_clips,) from a split's window ``logits``: 1 or 0 (its mean window logits
    right or not) for val_clip_acc, its windows' share right for val_window_acc, its windows' mean loss for
    val_loss. Their mean over clips is the clip accuracy, and the window metrics weighted per clip: the units a
    paired comparison of two models on the same clips resamples."""
    labels = torch.from_numpy(split.labels)
    clips = torch.from_numpy(split.clips)
    n = len(split.clip_names)
    if metric == "val_clip_acc":
        clip_labels = torch.zeros(n, dtype=torch.long).index_copy_(0, clips, labels)
        return (clip_logits(logits, split.clips).argmax(1) == clip_labels).double().numpy()
    if metric == "val_window_acc":
        per_window = (logits.argmax(1) == labels).double()
    else:
        per_window = F.cross_entropy(logits, labels, reduction="none").double()
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, clips, per_window)
    return (sums / torch.bincount(clips, minlength=n)).numpy()


def train(
    config: TrainConfig,
    data: TrainData,
    report: Report | None = None,
    started: float | None = None,
    model: GenreClassifier | None = None,
    stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train one configuration on ``data``; returns the model with its best epoch's weights.

    With ``data.prefix`` (a frozen-prefix cache whose key matches this model and data) every forward
    starts from the cached states. ``started`` (a ``time.perf_counter()`` value, default now) is when
    the caller began: epoch 1 reports ``first_step_s``, the time from it to the first optimizer step. ``model``,
    when given, is ``build_model``'s for this configuration (``model_for``), untrained. ``stop``, asked before
    every optimizer step, may end the run there: the exact position is checkpointed and ``Stopped`` raised.
    """
    started = time.perf_counter() if started is None else started
    run_dir = Path(config.out)
    if not config.resume and any((run_dir / "checkpoints").glob("epoch-*")):
        raise CheckpointError(f"{run_dir} already holds a run's checkpoints: pass --resume auto, or another --out")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(to_json(config))
    device = resolve_device(config.device)
    train_split, val_split = data.split("train"), data.split("val")

    model = model if model is not None else model_for(config, data)
    if data.prefix is not None:
        check_cache(data.prefix, model, data, device)  # before the move: the key of these very tensors is known
    model = model.to(device)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        param_groups(model, config.weight_decay), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused
    )
    effective = config.batch_size * config.gradient_accumulation_steps  # windows per optimizer step
    steps_per_epoch = math.ceil(len(train_split) / effective)
    total_steps = steps_per_epoch * config.num_train_epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    first_epoch = 1
    position: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None  # where a mid-epoch checkpoint stood
    if config.resume:
        path = latest_checkpoint(run_dir) if config.resume == "auto" else Path(config.resume)
        if path is not None:
            state = load_checkpoint(path, model, optimizer, scheduler)
            restore_best(path, state, run_dir / "best")  # a retried trial resumes in a new folder
            history, best, first_epoch = state["history"], state["best"], state["epoch"] + 1
            if "in_epoch" in state:
                position = state["in_epoch"], load_position(path)
                log.info("resumed from %s at epoch %d step %d", path, first_epoch, state["in_epoch"]["step"])
            else:
                log.info("resumed from %s at epoch %d", path, first_epoch)
    # metrics.jsonl holds exactly the epochs in ``history``: rewrite it from there
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))

    (xs, start_layer), labels = split_inputs(data, "train"), torch.from_numpy(train_split.labels)
    val_inputs = split_inputs(data, "val")
    resident = resident_fits(xs.nbytes + val_inputs[0].nbytes, device)
    if resident:  # gathered on the GPU from here on: nothing crosses the bus per step (None: out of memory, host)
        moved = resident_copy((xs, labels, val_inputs[0]), device)
        resident = moved is not None
        if moved is not None:
            xs, labels, val_inputs = moved[0], moved[1], (moved[2], val_inputs[1])
    if device.type == "cuda":
        limit = f"over this trial's {resident_budget(device) / 1e9:.2f} GB: its share of the GPU's memory less a margin"
        log.info(
            "%s: %.2f GB of training and validation %s %s",
            device,
            (xs.nbytes + val_inputs[0].nbytes) / 1e9,
            "states" if start_layer is not None else "features",
            "resident on the GPU" if resident else f"gathered on the host ({limit})",
        )
    chunk = min(config.execution_batch_size or effective, effective)
    step = Stepper(
        model,
        optimizer,
        scheduler,
        Gather((xs, labels), chunk, device, resident, ring_depth(config.prefetch, device)),
        start_layer,
        device,
        config.max_grad_norm,
        chunk,
        config.compile,
    )
    weights = example_weights(len(train_split), config.batch_size, config.gradient_accumulation_steps).to(device)
    first_step_s: float | None = None
    for epoch in range(first_epoch, config.num_train_epochs + 1):
        start = time.perf_counter()
        torch.manual_seed(stable_seed(config.seed, "epoch", epoch))  # dropout: the same on resume
        order = torch.randperm(
            len(train_split), generator=torch.Generator().manual_seed(stable_seed(config.seed, "order", epoch))
        ).to(step.gather.index_device)
        model.train()
        loss_sum = torch.zeros((), device=device)
        done = 0  # optimizer steps of this epoch already taken (by the run a mid-epoch checkpoint came from)
        if position is not None:
            (in_epoch, tensors), position = position, None
            done, start = in_epoch["step"], start - in_epoch["train_s"]
            step.chunk = min(step.chunk, in_epoch.get("chunk", step.chunk))  # the passes the stopped run took
            loss_sum += tensors["loss_sum"].to(device)[0]
            set_random_state(tensors, device)
        if step.gather.ring is not None:  # host-gathered: a thread gathers this epoch's passes ahead, in order
            step.gather.plan(epoch_chunks(order, effective, step.chunk, done))
        steps = range(0, len(order), effective)
        for index, first in enumerate(steps):
            if index < done:
                continue
            if stop is not None and stop():
                path = save_checkpoint(
                    run_dir / "checkpoints" / f"stopped-epoch-{epoch:03d}-step-{index:05d}",
                    model,
                    optimizer,
                    scheduler,
                    {
                        "epoch": epoch - 1,
                        "history": history,
                        "best": best,
                        "in_epoch": {  # and the pass size it ran at (halved after an out-of-memory error)
                            "epoch": epoch,
                            "step": index,
                            "train_s": time.perf_counter() - start,
                            "chunk": step.chunk,
                        },
                    },
                    best=None if best is None else run_dir / "best" / TRAINABLE,
                    position={"loss_sum": loss_sum.detach().reshape(1), **random_state(device)},
                )
                raise Stopped(path, epoch, index, len(steps))
            loss_sum += step(order[first : first + effective], weights[first : first + effective])
            if first_step_s is None:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)  # once per run: the time of a finished step
                first_step_s, first_step_at = time.perf_counter() - started, time.time()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's steps finished, not just enqueued
        train_s = time.perf_counter() - start
        val = validation_metrics(
            predict_logits(model, val_split, config.eval_batch_size, device, val_inputs), val_split
        )
        metrics = {  # the first four are the columns of Tune's live table: the metric being optimised among them
            "epoch": epoch,
            "val_clip_acc": val["val_clip_acc"],
            "val_loss": val["val_loss"],
            "train_loss": loss_sum.item() / len(train_split),
            "val_window_acc": val["val_window_acc"],
            "lr": scheduler.get_last_lr()[0],
            "train_examples_per_s": len(train_split) / train_s,
            "epoch_s": time.perf_counter() - start,
            "prefix_cache": start_layer is not None,
        }
        if epoch == first_epoch:  # where the run is, once: a trial on CPU where a GPU was meant is visible
            metrics |= describe(device)
            if first_step_s is not None:  # and its wall-clock time, which Tune's trial start is compared with
                metrics |= {"first_step_s": first_step_s, "first_step_at": first_step_at}
        history.append(metrics)
        if better(metrics, best, config.metric, config.direction):
            best = metrics
        ckpt = save_checkpoint(
            run_dir / "checkpoints" / f"epoch-{epoch:03d}",
            model,
            optimizer,
            scheduler,
            {"epoch": epoch, "history": history, "best": best},
            best=None if best["epoch"] == epoch else run_dir / "best" / TRAINABLE,
        )
        if best["epoch"] == epoch:
            (run_dir / "best").mkdir(exist_ok=True)
            shutil.copyfile(ckpt / TRAINABLE, run_dir / "best" / TRAINABLE)
        with (run_dir / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        log.info(
            "epoch %d/%d  train_loss %.4f  val_loss %.4f  val_window_acc %.3f  val_clip_acc %.3f  (%.1f ex/s)",
            epoch,
            config.num_train_epochs,
            metrics["train_loss"],
            metrics["val_loss"],
            metrics["val_window_acc"],
            metrics["val_clip_acc"],
            metrics["train_examples_per_s"],
        )
        if report is not None:
            report(metrics, ckpt)
        _prune(run_dir, keep=epoch)

    load_trainable(run_dir / "best", model)
    assert best is not None
    return TrainResult(model, best["epoch"], best, history, run_dir)


def random_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generators a training step draws from (dropout): the CPU's, and the GPU's on one."""
    state = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_random_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    """Put back ``random_state``'s generators."""
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)


def model_for(config: TrainConfig, data: TrainData) -> GenreClassifier:
    """The untrained model ``train(config, data)`` starts from."""
    return build_model(
        config.pretrained, len(data.genres), config.adapters, data.frames, data.mel_bins, seed=config.seed
    )


def _prune(run_dir: Path, keep: int) -> None:
    """Keep the latest epoch's checkpoint (it holds the best epoch's weights too); drop the rest."""
    for path in (run_dir / "checkpoints").glob("epoch-*"):
        if int(path.name.split("-")[1]) != keep:
            shutil.rmtree(path, ignore_errors=True)


# The settings the model card lists: the method's hyperparameters and the seed (not where files were).
CARD_SETTINGS = (
    "learning_rate",
    "batch_size",
    "gradient_accumulation_steps",
    "warmup_ratio",
    "weight_decay",
    "num_train_epochs",
    "encoder_min_layer_to_update",
    "encoder_update_rank",
    "encoder_update_alpha",
    "classifier_hidden_layer_size",
    "seed",
)


def train_card(cfg: TrainConfig, data: TrainData, best_epoch: int, val_clip_acc: float) -> CardFacts:
    """The card of a ``train`` run's export: its validation figure, said to be the one its epoch was chosen on."""
    clips = len(data.split("val").clip_names)
    result = Result(
        "accuracy",
        f"clip accuracy of the best epoch ({best_epoch}), chosen on this split, so optimistic",
        val_clip_acc,
        "validation",
        clips,
        f"seed {cfg.seed}",
        wilson(val_clip_acc, clips),
    )
    return CardFacts(
        name=Path(cfg.out).resolve().name,
        results=(result,),
        data=f"{len(data.genres)} genres of clips prepared by `genre-sweep prepare`, split by track; no test figure.",
        fingerprint=data.fingerprint,
        trained_with={k: getattr(cfg, k) for k in CARD_SETTINGS},
    )


def run(cfg: TrainConfig) -> None:
    check_dataset(cfg.shards, cfg.pretrained, cfg.options, splits=("train", "val"))  # seconds, before any loading
    data = load_data(cfg.shards, cfg.options, splits=("train", "val"))
    result = train(cfg, data)
    path = export_model(
        result.model,
        Path(cfg.out) / "model",
        data.genres,
        data.frames,
        data.mel_bins,
        base=cfg.pretrained,
        card=train_card(cfg, data, result.best_epoch, result.best_metrics["val_clip_acc"]),
    )
    log.info(
        "best epoch %d (by %s, %s): val_clip_acc %.3f val_window_acc %.3f val_loss %.4f; exported model: %s",
        result.best_epoch,
        cfg.metric,
        cfg.direction,
        result.best_metrics["val_clip_acc"],
        result.best_metrics["val_window_acc"],
        result.best_metrics["val_loss"],
        path,
    )


main = job_main("train")

if __name__ == "__main__":
    sys.exit(main())
