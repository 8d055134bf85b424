"""Side by side, in one run on one machine: the original recipe's training step, ours, ours with the cache.

(a) original: the published recipe's loop, HF-Trainer style: a DataLoader of feature batches, the full
    forward through every layer under fp16 autocast with a GradScaler (fp32 on a CPU), per-step
    host synchronisation (``loss.item()`` for the running loss), unfused AdamW, clipping.
(b) ours:     the project's ``train()`` (bf16 autocast on a GPU, features fed in bf16, fused AdamW, no
    per-step sync; the effective batch executed as one pass, gathered with one index per pass, on the
    GPU when the data fits there; the last layer computed for the two pooled tokens only).
(c) cached:   the same ``train()`` starting from the frozen-prefix cache (the cache's one-off build time
    is printed apart: a sweep pays it once for all its trials); then twice more with the states gathered on the
    host whatever the GPU could hold (what a sweep at GTZAN size runs: its states do not fit the resident bound),
    without the prefetch ring (``prefetch`` 0: the gather in series with the step, on the training thread) and
    with it (a background thread gathers ahead; the training thread's wait per step is printed against the gather
    thread's own time per step, and the host gather alone, timed apart).
(d) compiled: (c) with ``--compile default`` and ``--compile reduce-overhead`` (torch.compile of the trained
    part of the step; the second also replays it as a CUDA graph); on a GPU unless a sweep follows, or as
    ``--compile`` names them.

Every path trains the same model and configuration (the original's best by default: batch 2 x
accumulation 8, DoRA rank 2 alpha 4.25 on layers 10-11, head 200) on the same random features, and
prints examples/s and the ratios; FLOPs per example come from torch's FlopCounterMode, and every row's
achieved TFLOP/s is compared with a matmul peak measured in the same run (bf16 on a GPU, fp32 on a CPU, which
trains in fp32). Every timed region ends with a device synchronisation (``train()``'s epochs too).
``--sweep-trials N`` also runs a real N-trial sweep (Ray Tune, ASHA, the cache) on a generated corpus, and prints
its wall time and the per-trial overhead (trial start to first optimizer step).

    python bench/train.py                                            # tiny model, CPU
    python bench/train.py --model base-random --examples 512         # AST-base size, GPU
    python bench/train.py --model base-random --sweep-trials 35 --gpus-per-trial 0.25
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from genre_sweep.config import resolve
from genre_sweep.model import train as train_module
from genre_sweep.model.configs import AdapterSettings, TrainConfig
from genre_sweep.model.data import Gather, SplitArrays, TrainData, as_tensor
from genre_sweep.model.device import autocast, resolve_device
from genre_sweep.model.dora_ast import GenreClassifier, build_model
from genre_sweep.model.prefetch import epoch_chunks
from genre_sweep.model.prefix_cache import build_for
from genre_sweep.model.train import Stepper, example_weights, param_groups, train


def synthetic_data(n: int, frames: int, mel_bins: int, classes: int = 10) -> TrainData:
    rng = np.random.default_rng(0)

    def split(size: int) -> SplitArrays:
        return SplitArrays(
            features=rng.standard_normal((size, frames, mel_bins)).astype(np.float16),
            labels=rng.integers(0, classes, size),
            clips=np.arange(size),
            clip_names=tuple(map(str, range(size))),
        )

    return TrainData(
        {"train": split(n), "val": split(max(n // 8, 1))},
        tuple(f"g{i}" for i in range(classes)),
        frames,
        mel_bins,
        "synthetic",
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def original_recipe(model: GenreClassifier, data: TrainData, args: argparse.Namespace, device: torch.device) -> float:
    """(a) examples/s of the original's step: full forward, fp16 autocast + GradScaler, HF-Trainer-style loop."""
    split = data.split("train")
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(as_tensor(split.features), torch.from_numpy(split.labels)),
        batch_size=args.batch_size,
        shuffle=True,
    )
    optimizer = torch.optim.AdamW(param_groups(model, 0.0676), lr=1.32e-4, foreach=False)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]

    def epoch() -> int:
        seen, running = 0, 0.0
        for i, (x, y) in enumerate(loader):
            x, y = x.to(device).float(), y.to(device)
            with amp:
                loss = F.cross_entropy(model.full_forward(x).float(), y)
            scaler.scale(loss / args.accumulation).backward()
            running += loss.item()  # the Trainer's logging reads the loss back every step
            seen += len(y)
            if (i + 1) % args.accumulation == 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad()
        return seen

    epoch()  # warm-up
    sync(device)
    start = time.perf_counter()
    seen = epoch()
    sync(device)
    return seen / (time.perf_counter() - start)


class RingFigures(logging.Handler):
    """The prefetch ring's figures of each finished plan (an epoch): (passes, training thread's wait s, gather
    thread's busy s), from its debug line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.plans: list[tuple[int, float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("prefetched"):
            self.plans.append(record.args)


@contextlib.contextmanager
def host_gathered() -> Iterator[None]:
    """``train()`` with its data gathered on the host however much the GPU could hold (the resident bound forced
    off): what a sweep whose states do not fit runs. On a CPU that is every run."""
    fits = train_module.resident_fits
    train_module.resident_fits = lambda nbytes, device: False
    try:
        yield
    finally:
        train_module.resident_fits = fits


def ours(
    data: TrainData,
    args: argparse.Namespace,
    device: torch.device,
    compile: str = "off",
    prefetch: int | None = None,
    host: bool = False,
) -> tuple[float, float, tuple[int, float, float] | None]:
    """(b)/(c)/(d) the last epoch's examples/s of the real ``train()`` (``compile``: its --compile; ``prefetch``: its
    --prefetch, default its own; ``host``: ``host_gathered``), its first_step_s, and the prefetch ring's figures of
    that epoch (``RingFigures``; None where the ring did not run)."""
    values = {
        "pretrained": args.model,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.accumulation,
        "num_train_epochs": args.epochs,
        "encoder_min_layer_to_update": args.min_layer,
        "device": str(device),
        "compile": compile,
    }
    if prefetch is not None:
        values["prefetch"] = prefetch
    ring, logger = RingFigures(), logging.getLogger("genre_sweep.model.prefetch")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(ring)
    try:
        with tempfile.TemporaryDirectory() as out, host_gathered() if host else contextlib.nullcontext():
            history = train(resolve(TrainConfig, {"shards": "synthetic", "out": out, **values}), data).history
    finally:
        logger.removeHandler(ring)
        logger.setLevel(level)
    return history[-1]["train_examples_per_s"], history[0]["first_step_s"], ring.plans[-1] if ring.plans else None


def host_gather_per_step(data: TrainData, args: argparse.Namespace, device: torch.device) -> float:
    """Seconds per optimizer step of the host gather alone (no ring: what the training thread pays in series with
    each step without one), over one epoch of ``data``'s cached training states in passes of the effective batch,
    the copy to the device included."""
    xs, labels = data.prefix.split("train"), torch.from_numpy(data.split("train").labels)
    effective = args.batch_size * args.accumulation
    gather = Gather((xs, labels), effective, device)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    chunks = epoch_chunks(order, effective, effective)
    for index in chunks[:2]:  # warm-up
        gather(index)
    sync(device)
    start = time.perf_counter()
    for index in chunks:
        gather(index)
    sync(device)
    return (time.perf_counter() - start) / len(chunks)


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


# torch's FlopCounterMode counts the CUDA attention kernels but not the CPU one, which SDPA uses here
aten = torch.ops.aten
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def flops_per_example(
    model: GenreClassifier, data: TrainData, device: torch.device, start: int | None, original: bool = False
) -> float:
    """Training FLOPs per example of one step: the original's full forward, ours from features (``start``
    None) or ours from the cached states."""
    x = torch.randn(2, data.frames, data.mel_bins, device=device)
    if start is not None:
        with torch.no_grad():
            x = model.prefix(x, start)
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter, autocast(device):
        if original:
            logits = model.full_forward(x)
        else:
            logits = model(x) if start is None else model.forward_from(x, start)
        F.cross_entropy(logits.float(), torch.zeros(2, dtype=torch.long, device=device)).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


class OpCounter(TorchDispatchMode):
    """Counts the aten operators dispatched (each about one kernel launch on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def kernel_launches(step: Callable[[], None]) -> int | None:
    """CUDA kernel and graph launches of one ``step()``, as torch's profiler records the runtime's calls; None (with
    a line saying why) where the profiler fails, so that the bench's other figures still come."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if e.key in LAUNCHES)
    except Exception as e:  # a bench figure, not a result: say so and go on
        print(f"CUDA launches not counted: torch's profiler failed ({type(e).__name__}: {e})", flush=True)
        return None


def per_step(
    model: GenreClassifier,
    data: TrainData,
    args: argparse.Namespace,
    device: torch.device,
    start: int | None,
    chunk: int = 0,
    compile: str = "off",
) -> tuple[int | None, int | None]:
    """(operators dispatched, CUDA launches or None off a GPU) of one optimizer step of batch x accumulation windows
    run as passes of ``chunk`` (after warm-up steps), by the real ``Stepper`` (``compile``: its mode; a compiled
    step's own kernels dispatch no operators, so those are not counted); ``start`` None: from features, else from
    the cached states; ``chunk`` 0: the original's full forward, one pass per micro-batch."""
    xs = as_tensor(data.split("train").features) if start is None else data.prefix.split("train")
    labels = torch.from_numpy(data.split("train").labels)
    effective = args.batch_size * args.accumulation
    index, weights = torch.arange(effective), example_weights(effective, args.batch_size, args.accumulation)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0676), lr=1e-6, fused=device.type == "cuda")
    model.train()
    if chunk:
        gather = Gather((xs, labels), chunk, device)
        stepper = Stepper(model, optimizer, None, gather, start, device, 1.0, chunk, compile)
        weights = weights.to(device)

    def step() -> None:
        if chunk:
            stepper(index, weights)
            return
        for first in range(0, effective, args.batch_size):
            x = xs[first : first + args.batch_size].to(device).float()
            y = labels[first : first + args.batch_size].to(device)
            with autocast(device):
                loss = F.cross_entropy(model.full_forward(x).float(), y)
            (loss / args.accumulation).backward()
            loss.item()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (a compiled step compiles, and reduce-overhead records its graph, here)
        step()
    ops = None
    if compile == "off":
        with OpCounter() as counter:
            step()
        ops = counter.ops
    return ops, kernel_launches(step) if device.type == "cuda" else None


def matmul_peak_tflops(device: torch.device) -> tuple[float, str]:
    """The device's measured matmul peak and what it is: a bf16 8192 x 8192 matmul on a GPU (what autocast trains
    in), an fp32 2048 x 2048 one on a CPU (which trains in fp32)."""
    cuda = device.type == "cuda"
    n, dtype, warm, reps = (8192, torch.bfloat16, 3, 20) if cuda else (2048, torch.float32, 1, 5)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warm):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12, "bf16" if cuda else "fp32 (CPU)"


def sweep_figures(args: argparse.Namespace) -> None:
    """A real sweep of ``--sweep-trials`` on a generated corpus: wall time and per-trial overhead."""
    from genre_sweep.data.configs import PrepareConfig, SynthConfig
    from genre_sweep.data.pipeline import run_prepare
    from genre_sweep.data.synth import generate
    from genre_sweep.tune.configs import SweepConfig
    from genre_sweep.tune.sweep import run_sweep

    work = Path(args.work)
    corpus, shards = work / "sweep-corpus", work / "sweep-shards"
    seconds = args.frames / 100 + 0.5  # one window per clip
    generate(SynthConfig(out=str(corpus), per_genre=args.sweep_clips, seconds=seconds, overwrite=True))
    run_prepare(
        resolve(
            PrepareConfig,
            {"source": str(corpus), "out": str(shards), "frames": args.frames, "overwrite": True},
        )
    )
    cfg = resolve(
        SweepConfig,
        {
            "shards": str(shards),
            "storage": str(work / "sweeps"),
            "name": f"bench-{time.strftime('%H%M%S')}",
            "pretrained": args.model,
            "space": args.sweep_space,
            "trials": args.sweep_trials,
            "gpus_per_trial": args.gpus_per_trial,
            "cpus_per_trial": args.cpus_per_trial,
            "retrain": False,
        },
    )
    summary = Lines("per-trial overhead")  # the sweep's own figure, from Tune's start of each trial
    progress = logging.getLogger("genre_sweep.tune.progress")
    progress.setLevel(logging.INFO)
    progress.addHandler(summary)
    start = time.perf_counter()
    results = run_sweep(cfg)
    wall = time.perf_counter() - start
    frames = [r.metrics_dataframe for r in results if r.metrics_dataframe is not None]
    overhead = [df["first_step_s"].dropna().iloc[0] for df in frames]
    epochs = sum(len(df) for df in frames)
    print(
        f"sweep: {len(results)} trials ({epochs} epochs in all) in {wall:.1f} s = {wall / 60:.1f} min, "
        f"{args.gpus_per_trial:g} GPU + {args.cpus_per_trial:g} CPU per trial; from the trial function's start to "
        f"its first optimizer step: median {statistics.median(overhead):.2f} s, max {max(overhead):.2f} s"
    )
    for line in summary.lines:
        print(f"sweep: {line}")


class Lines(logging.Handler):
    """Keeps the messages of log records that contain ``marker``."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker, self.lines = marker, []

    def emit(self, record: logging.LogRecord) -> None:
        if self.marker in record.getMessage():
            self.lines.append(record.getMessage())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="named config (tiny, base-random) or a pretrained folder")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--examples", type=int, default=128, help="training windows per epoch")
    p.add_argument("--epochs", type=int, default=2, help="ours: the last epoch's throughput is reported")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--accumulation", type=int, default=8)
    p.add_argument("--min-layer", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--sweep-trials", type=int, default=0, help="also run a real sweep of N trials (0: no)")
    p.add_argument("--sweep-space", default=None, help="search space YAML of that sweep (default: docs/method.md's)")
    p.add_argument("--sweep-clips", type=int, default=20, help="generated clips per genre for that sweep")
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--work", default="bench-run/train", help="folder for the sweep's corpus, shards and trials")
    p.add_argument(
        "--compile",
        default="auto",
        help="(d): (c) with each of these --compile modes, comma-separated (default, reduce-overhead) or none, each "
        "run twice (the second reuses the process's compiled step, as a reused trial process does); auto: both on a "
        "GPU unless a sweep follows, else default",
    )
    p.add_argument("--sweep-only", action="store_true", help="run only the sweep (--sweep-trials), not the step paths")
    args = p.parse_args()
    if args.sweep_only:
        if not args.sweep_trials:
            p.error("--sweep-only needs --sweep-trials N")
        sweep_figures(args)
        return
    device = resolve_device(args.device)
    data = synthetic_data(args.examples, args.frames, 128)
    model = build_model(args.model, 10, AdapterSettings(min_layer=args.min_layer), args.frames, 128).to(device)
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    print(
        f"device: {device}{name}   model: {args.model}, {total / 1e6:.2f} M parameters, {trainable / 1e3:.1f} k "
        f"trainable (layers >= {args.min_layer}), {args.frames} frames   batch {args.batch_size} x accumulation "
        f"{args.accumulation}, {args.examples} examples per epoch"
    )
    original_flops = flops_per_example(model, data, device, None, original=True)
    full_flops = flops_per_example(model, data, device, None)
    cached_flops = flops_per_example(model, data, device, args.min_layer)
    peak, peak_kind = matmul_peak_tflops(device)
    print(f"measured {peak_kind} matmul peak: {peak:.3g} TFLOP/s")

    def row(label: str, eps: float, flops: float, first: float | None = None) -> None:
        """One path's line, printed as soon as it is measured (a later path's time limit loses only that path)."""
        tflops = eps * flops / 1e12
        line = (
            f"{label:<41} {eps:9.1f} examples/s   x{eps / original:6.2f} vs (a)   "
            f"{flops / 1e9:7.3f} GFLOP/example -> {tflops:8.3f} TFLOP/s ({100 * tflops / peak:.1f} % of "
            f"{peak_kind} peak)"
        )
        if first is not None:
            line += f"   first step after {first:.2f} s"
        print(line, flush=True)

    original = original_recipe(model, data, args, device)
    row("(a) original recipe", original, original_flops)
    plain, plain_first, _ = ours(data, args, device)
    row("(b) ours, no cache", plain, full_flops, plain_first)
    began = time.perf_counter()
    cache = build_for(args.model, data, args.min_layer, str(device))
    sync(device)
    build_s = time.perf_counter() - began
    with_cache = data.with_prefix(cache)
    cached, cached_first, _ = ours(with_cache, args, device)
    where = "resident if it fits" if device.type == "cuda" else "on a CPU: host, no ring"
    row(f"(c) ours, cached ({where})", cached, cached_flops, cached_first)
    steps = math.ceil(args.examples / (args.batch_size * args.accumulation))
    host, host_first, _ = ours(with_cache, args, device, prefetch=0, host=True)
    row("(c) host-gathered, no ring", host, cached_flops, host_first)
    ringed, ringed_first, figures = ours(with_cache, args, device, prefetch=3, host=True)
    row("(c) host-gathered, ring of 3", ringed, cached_flops, ringed_first)
    alone = host_gather_per_step(with_cache, args, device)
    ring_line = (
        "the ring did not run"
        if figures is None
        else (
            f"the training thread waited {1e3 * figures[1] / steps:.3f} ms per step for the ring, whose thread "
            f"gathered {1e3 * figures[2] / steps:.3f} ms per step"
        )
    )
    print(
        f"host-gathered, per optimizer step ({steps} per epoch, last epoch): {ring_line}; the host gather alone "
        f"(timed apart, with its copy to the device) takes {1e3 * alone:.3f} ms per step; ring / no ring: "
        f"x{ringed / host:.2f}",
        flush=True,
    )
    print(
        f"cached / uncached: x{cached / plain:.2f}   cache build: {build_s:.1f} s for {len(data.split('train'))} + "
        f"{len(data.split('val'))} windows, {cache.nbytes / 1e6:.1f} MB bf16 "
        f"({cache.nbytes / (len(data.split('train')) + len(data.split('val'))) / 1e6:.2f} MB per window)"
    )
    effective = args.batch_size * args.accumulation
    counts = {
        "(a)": per_step(model, data, args, device, None),
        "(b)": per_step(model, data, args, device, None, effective),
        "(c)": per_step(model, with_cache, args, device, args.min_layer, effective),
        f"(c) as {args.accumulation} micro-batches of {args.batch_size}": per_step(
            model, with_cache, args, device, args.min_layer, args.batch_size
        ),
    }
    print(
        "operators per optimizer step (about one kernel launch each on a GPU): "
        + ", ".join(f"{k} {ops}" for k, (ops, _) in counts.items()),
        flush=True,
    )
    if device.type == "cuda":
        print("CUDA launches per optimizer step: " + ", ".join(f"{k} {n}" for k, (_, n) in counts.items()), flush=True)
    modes = args.compile
    if modes == "auto":  # on a CPU, default only: the compiled-reused row is the one a sweep's reused process runs
        modes = "default,reduce-overhead" if device.type == "cuda" and not args.sweep_trials else "default"
    for mode in [m for m in modes.split(",") if m != "none"]:
        compiled, compiled_first, _ = ours(with_cache, args, device, compile=mode)
        row(f"(d) (c), compile {mode}", compiled, cached_flops, compiled_first)
        # a second run in this process (a reused trial actor's next trial): a new model, the compiled step kept
        reused, reused_first, _ = ours(with_cache, args, device, compile=mode)
        row(f"(d) (c), compile {mode}, reused", reused, cached_flops, reused_first)
        launches = ""
        if device.type == "cuda":
            n = per_step(model, with_cache, args, device, args.min_layer, effective, mode)[1]
            launches = f"; CUDA launches per optimizer step {n}"
        print(f"compiled ({mode}) / cached: x{compiled / cached:.2f} (its first step includes the compile){launches}")
    del model
    if args.sweep_trials:
        sweep_figures(args)


if __name__ == "__main__":
    main()
