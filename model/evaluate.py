"""``genre-sweep evaluate``: an exported model on one split of a prepared dataset.

Window accuracy, clip accuracy (mean window logits per clip), per-genre precision, recall and F1,
and the clip-level confusion matrix as JSON and PNG, written to ``--out``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score

from genre_sweep.cli import job_main
from genre_sweep.model.configs import EvaluateConfig
from genre_sweep.model.data import SplitArrays, load_data
from genre_sweep.model.device import resolve_device
from genre_sweep.model.dora_ast import ModelError
from genre_sweep.model.export import load_exported
from genre_sweep.model.train import clip_logits, predict_logits, validation_metrics

log = logging.getLogger(__name__)


def confusion(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts: rows are true genres, columns predicted."""
    return np.bincount(true * n + pred, minlength=n * n).reshape(n, n)


def per_class(matrix: np.ndarray, genres: list[str]) -> dict[str, dict[str, float]]:
    tp = np.diag(matrix).astype(float)
    precision = np.divide(tp, matrix.sum(0), out=np.zeros_like(tp), where=matrix.sum(0) > 0)
    recall = np.divide(tp, matrix.sum(1), out=np.zeros_like(tp), where=matrix.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    return {
        g: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(matrix[i].sum()),
        }
        for i, g in enumerate(genres)
    }


def plot_confusion(matrix: np.ndarray, genres: list[str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(genres), 0.8 + 0.6 * len(genres)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(genres)), genres, rotation=45, ha="right")
    ax.set_yticks(range(len(genres)), genres)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(genres)):
        for j in range(len(genres)):
            color = "white" if matrix[i, j] > matrix.max() / 2 else "black"
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate_split(
    model: torch.nn.Module, split: SplitArrays, genres: list[str], batch_size: int, device: torch.device
) -> dict[str, Any]:
    """Metrics of ``model`` on ``split``, with the clip-level confusion matrix."""
    logits = predict_logits(model, split, batch_size, device)
    metrics = validation_metrics(logits, split, prefix="eval")
    clip_labels = np.zeros(len(split.clip_names), np.int64)
    clip_labels[split.clips] = split.labels
    pred = clip_logits(logits, split.clips).argmax(1).numpy()
    matrix = confusion(clip_labels, pred, len(genres))
    macro_f1 = f1_score(clip_labels, pred, labels=list(range(len(genres))), average="macro", zero_division=0)
    return {
        "window_acc": metrics["eval_window_acc"],
        "clip_acc": metrics["eval_clip_acc"],
        "clip_macro_f1": float(macro_f1),
        "loss": metrics["eval_loss"],
        "windows": len(split),
        "clips": len(split.clip_names),
        "per_genre": per_class(matrix, genres),
        "confusion": matrix.tolist(),
        "genres": genres,
    }


def run(cfg: EvaluateConfig) -> None:
    device = resolve_device(cfg.device)
    model, info = load_exported(cfg.model, device)
    data = load_data(cfg.shards, cfg.options, splits=(cfg.split,))
    if list(data.genres) != info["genres"] or (data.frames, data.mel_bins) != (
        info["features"]["frames"],
        info["features"]["mel_bins"],
    ):
        raise ModelError(f"model {cfg.model} and shards {cfg.shards} differ in genres or feature shape")
    result = evaluate_split(model, data.split(cfg.split), info["genres"], cfg.batch_size, device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
    (out / "confusion.json").write_text(json.dumps({"genres": result["genres"], "matrix": result["confusion"]}))
    plot_confusion(
        np.array(result["confusion"]),
        result["genres"],
        f"{cfg.split}: clip accuracy {result['clip_acc']:.3f}",
        out / "confusion.png",
    )
    lines = [
        f"{cfg.split}: window accuracy {result['window_acc']:.3f}, clip accuracy {result['clip_acc']:.3f} "
        f"({result['clips']} clips, {result['windows']} windows)",
        f"{'genre':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}",
    ]
    for g, m in result["per_genre"].items():
        lines.append(f"{g:<12}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}")
    print("\n".join(lines) + f"\nwritten: {out}/metrics.json, confusion.json, confusion.png")


main = job_main("evaluate")


if __name__ == "__main__":
    sys.exit(main())
