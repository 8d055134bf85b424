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
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from genre_sweep.cli import job_main
from genre_sweep.model.configs import EvaluateConfig
from genre_sweep.model.data import SplitArrays, load_data
from genre_sweep.model.device import resolve_device
from genre_sweep.model.dora_ast import ModelError
from genre_sweep.model.export import load_exported
from genre_sweep.model.train import clip_logits, predict_logits, validation_metrics

log = logging.getLogger(__name__)


def per_genre_scores(true: np.ndarray, pred: np.ndarray, genres: list[str]) -> dict[str, dict[str, float]]:
    """Each genre's precision, recall, F1 and support (true clips) of predictions ``pred`` of labels ``true``
    (scikit-learn; a genre never predicted, or never present, scores 0 there)."""
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=list(range(len(genres))), zero_division=0
    )
    return {
        g: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, g in enumerate(genres)
    }


def plot_confusion(matrix: np.ndarray, genres: list[str], title: str, path: Path, values_format: str = "d") -> None:
    """The confusion matrix (rows true genres, columns predicted) as a PNG: counts, or with ``values_format``
    ``".2f"`` a matrix normalised by true genre (scikit-learn's ``ConfusionMatrixDisplay``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.6 * len(genres)), max(4.0, 1.0 + 0.6 * len(genres))))
    display = ConfusionMatrixDisplay(matrix, display_labels=genres)
    display.plot(ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45, values_format=values_format)
    if values_format != "d":
        display.im_.set_clim(0.0, 1.0)  # a share of the true genre's clips: the same scale in every report
    for text in display.text_.ravel():
        text.set_fontsize(8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def evaluate_split(
    model: torch.nn.Module, split: SplitArrays, genres: list[str], batch_size: int, device: torch.device
) -> dict[str, Any]:
    """Metrics of ``model`` on ``split``, with the clip-level confusion matrix (counts) and each clip's true and
    predicted genre (``clip_true``, ``clip_pred``: indices into ``genres``)."""
    logits = predict_logits(model, split, batch_size, device)
    metrics = validation_metrics(logits, split, prefix="eval")
    clip_labels = np.zeros(len(split.clip_names), np.int64)
    clip_labels[split.clips] = split.labels
    pred = clip_logits(logits, split.clips).argmax(1).numpy()
    labels = list(range(len(genres)))
    matrix = confusion_matrix(clip_labels, pred, labels=labels)
    macro_f1 = f1_score(clip_labels, pred, labels=labels, average="macro", zero_division=0)
    return {
        "window_acc": metrics["eval_window_acc"],
        "clip_acc": metrics["eval_clip_acc"],
        "clip_macro_f1": float(macro_f1),
        "loss": metrics["eval_loss"],
        "windows": len(split),
        "clips": len(split.clip_names),
        "per_genre": per_genre_scores(clip_labels, pred, genres),
        "confusion": matrix.tolist(),
        "genres": genres,
        "clip_true": clip_labels.tolist(),
        "clip_pred": pred.tolist(),
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
    summary = {k: v for k, v in result.items() if k not in ("confusion", "clip_true", "clip_pred")}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
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
