"""Benchmark of the trainer: training and inference examples/s through the real ``train()``.

Random features of the right shape (no shards needed) go through the same ``train(config, data,
report)`` that trials and retrains use; the last epoch's reported throughput is the figure (the
first pays warm-up). FLOPs per example come from torch's FlopCounterMode on one training step; on a
GPU the achieved TFLOP/s is compared with a measured bf16 matrix-multiply peak.

    python bench/train.py                                   # tiny model on CPU
    python bench/train.py --model base-random --examples 2048 --batch-size 16   # AST-base size, GPU
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from data.config import resolve
from model.data import SplitArrays, TrainData
from model.dora_ast import AdapterSettings, build_model
from model.train import TrainConfig, autocast, predict_logits, resolve_device, train


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
        {"train": split(n), "val": split(max(n // 4, 1))},
        tuple(f"g{i}" for i in range(classes)),
        frames,
        mel_bins,
        "synthetic",
    )


def flops_per_example(args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """(training, inference) FLOPs per example, counted on one step of the real model."""
    model = build_model(args.model, 10, AdapterSettings(min_layer=args.min_layer), args.frames, 128).to(device)
    x = torch.randn(2, args.frames, 128, device=device)
    with FlopCounterMode(display=False) as counter:
        with autocast(device):
            F.cross_entropy(model(x).float(), torch.zeros(2, dtype=torch.long, device=device)).backward()
    train_flops = counter.get_total_flops() / 2
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad(), autocast(device):
        model(x)
    return train_flops, counter.get_total_flops() / 2


def bf16_peak_tflops(device: torch.device) -> float:
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, reps = time.perf_counter(), 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="named config (tiny, base-random) or a pretrained folder")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--examples", type=int, default=256, help="training windows per epoch")
    p.add_argument("--epochs", type=int, default=2, help="the last epoch's throughput is reported")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--accumulation", type=int, default=8)
    p.add_argument("--min-layer", type=int, default=10)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = synthetic_data(args.examples, args.frames, 128)
    reports = []
    with tempfile.TemporaryDirectory() as out:
        cfg = resolve(
            TrainConfig,
            {
                "shards": "synthetic",
                "out": out,
                "pretrained": args.model,
                "batch_size": args.batch_size,
                "gradient_accumulation_steps": args.accumulation,
                "num_train_epochs": args.epochs,
                "encoder_min_layer_to_update": args.min_layer,
                "device": str(device),
                "eval_batch_size": 64,
            },
        )
        result = train(cfg, data, report=lambda m, _: reports.append(m))
    train_eps = reports[-1]["train_examples_per_s"]
    val = data.split("val")
    predict_logits(result.model, val, 64, device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    predict_logits(result.model, val, 64, device)
    infer_eps = len(val) / (time.perf_counter() - start)
    train_flops, infer_flops = flops_per_example(args, device)
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in result.model.parameters())
    print(
        f"device: {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}   "
        f"model: {args.model}, {total / 1e6:.2f} M parameters, {trainable / 1e3:.1f} k trainable (layers >= "
        f"{args.min_layer}), {args.frames} frames"
    )
    print(
        f"training: {train_eps:.1f} examples/s (batch {args.batch_size} x accumulation {args.accumulation}, "
        f"epoch {len(reports)} of {args.epochs}, {args.examples} examples)   "
        f"{train_flops / 1e9:.2f} GFLOP/example -> {train_eps * train_flops / 1e12:.3f} TFLOP/s"
    )
    print(
        f"inference: {infer_eps:.1f} examples/s (batch 64)   {infer_flops / 1e9:.2f} GFLOP/example -> "
        f"{infer_eps * infer_flops / 1e12:.3f} TFLOP/s"
    )
    if device.type == "cuda":
        peak = bf16_peak_tflops(device)
        print(
            f"measured bf16 matmul peak: {peak:.0f} TFLOP/s -> training at "
            f"{100 * train_eps * train_flops / 1e12 / peak:.1f} %, inference at "
            f"{100 * infer_eps * infer_flops / 1e12 / peak:.1f} % of it"
        )


if __name__ == "__main__":
    main()
