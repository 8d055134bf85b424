"""The model jobs' configs (train, evaluate, predict) and the adapter settings: light, read by ``--help``."""

from __future__ import annotations

import dataclasses
import math

from genre_sweep.config import check, field
from genre_sweep.store import StoreFlags

# The checkpoint real runs fine-tune (docs/method.md). Without --pretrained, train and sweep fine-tune ``small``, the
# embedded default shipped in the package (model/pretrain.py made it); unit tests use the random ``tiny``.
HUB_DEFAULT = "MIT/ast-finetuned-audioset-10-10-0.4593"
PRETRAINED_HELP = (
    "hub id (real runs: MIT/ast-finetuned-audioset-10-10-0.4593), a local save_pretrained folder, or a name: "
    "small (the embedded default: genre-sweep's own small AST, pretrained on synthetic sounds, not genre), "
    "tiny or base-random (random weights, for tests and benchmarks)"
)
DEVICE_HELP = "auto, cpu or cuda[:N]"
# TrainConfig.compile: auto (default on a GPU, else off), off, or a torch.compile mode
COMPILE_MODES = ("auto", "off", "default", "reduce-overhead")
# The validation metrics every epoch reports, each with the direction that is better: the objectives a run's best
# epoch, a sweep's search and its winner can be chosen by.
METRICS = {"val_clip_acc": "max", "val_window_acc": "max", "val_loss": "min"}
METRIC_HELP = (
    "validation metric that picks the best epoch: val_clip_acc (accuracy of the clips' mean window logits), "
    "val_window_acc or val_loss"
)
MODE_HELP = "max or min: whether a higher --metric is better; unset: the metric's own (val_loss: min, else max)"


def metric_mode(metric: str, mode: str | None) -> str:
    """The mode of ``metric``: ``mode`` when given, else the metric's own direction."""
    return mode or METRICS[metric]


def score(value: float | None, mode: str) -> float:
    """``value`` as a number to maximise under ``mode`` (max or min); a missing value or a NaN is the worst there is.
    Every ranking by the objective (epochs, trials, candidates, seeds) compares these."""
    value = math.nan if value is None else float(value)
    return -math.inf if math.isnan(value) else (value if mode == "max" else -value)


@dataclasses.dataclass(frozen=True)
class AdapterSettings:
    min_layer: int = 10
    rank: int = 2
    alpha: float = 4.25
    hidden: int = 200  # classifier MLP hidden size H


@dataclasses.dataclass(frozen=True)
class TrainConfig(StoreFlags):
    """Train one DoRA-AST configuration on prepared shards and write its run folder: config.json, metrics.jsonl,
    checkpoints/, best/ and model/ (the exported best epoch). The hyperparameter names are the method's
    (docs/method.md), and its best trial is the default."""

    shards: str = field(help="prepared dataset (folder or s3://)")
    out: str = field(help="run folder: config, metrics, checkpoints, best model")
    pretrained: str = field("small", PRETRAINED_HELP)
    learning_rate: float = field(1.32e-4, "peak learning rate")
    batch_size: int = field(2, "windows per micro-batch")
    warmup_ratio: float = field(0.085, "fraction of optimizer steps of linear warmup")
    weight_decay: float = field(0.0676, "AdamW weight decay (not on biases, norms, DoRA magnitudes)")
    num_train_epochs: int = field(13, "epochs")
    encoder_min_layer_to_update: int = field(10, "lowest encoder layer with a DoRA adapter")
    encoder_update_rank: int = field(2, "DoRA rank r")
    encoder_update_alpha: float = field(4.25, "DoRA scale alpha (lora_alpha = alpha x r)")
    classifier_hidden_layer_size: int = field(200, "hidden size H of the classifier MLP")
    gradient_accumulation_steps: int = field(8, "micro-batches per optimizer step")
    execution_batch_size: int | None = field(
        None,
        "windows per forward/backward pass; the optimizer still steps every batch_size x gradient_accumulation_steps "
        "windows, on the same loss, so results do not depend on it; unset: that whole effective batch at once "
        "(halved on a CUDA out-of-memory error)",
    )
    max_grad_norm: float = field(1.0, "gradient clipping norm")
    compile: str = field(
        "auto",
        "torch.compile the trained part of each step: default (fused kernels) or reduce-overhead (also CUDA graphs: "
        "the step replayed with one launch on a GPU), compiled once per process (a reused trial process's later "
        "trials of the same shapes do not recompile); auto: default on a GPU, off on a CPU; if compiling fails, "
        "training goes on eagerly with one warning",
        choices=list(COMPILE_MODES),
    )
    prefetch: int | None = field(
        None,
        "when the data is gathered on the host (too big for the GPU, or a CPU run): buffers a background thread fills "
        "with the coming passes' windows while the step computes (pinned on a GPU); 0: gather on the training thread; "
        "unset: 3 on a GPU, 0 on a CPU (where the data is in memory and the gather cheap). Results do not depend on it",
    )
    seed: int = field(0, "seed of the head's init, data order and dropout")
    device: str = field("auto", DEVICE_HELP)
    eval_batch_size: int = field(64, "windows per validation batch")
    metric: str = field("val_clip_acc", METRIC_HELP, choices=list(METRICS))
    mode: str | None = field(None, MODE_HELP, choices=["max", "min"])
    resume: str | None = field(None, "checkpoint folder to resume from, or 'auto' for the run's latest (if any)")

    def __post_init__(self) -> None:
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.num_train_epochs >= 1, f"num_train_epochs must be >= 1, got {self.num_train_epochs}")
        check(self.encoder_min_layer_to_update >= 0, "encoder_min_layer_to_update must be >= 0")
        check(self.encoder_update_rank >= 1, f"encoder_update_rank must be >= 1, got {self.encoder_update_rank}")
        check(self.encoder_update_alpha > 0, f"encoder_update_alpha must be > 0, got {self.encoder_update_alpha}")
        check(self.classifier_hidden_layer_size >= 1, "classifier_hidden_layer_size must be >= 1")
        check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
        check(self.execution_batch_size is None or self.execution_batch_size >= 1, "execution_batch_size must be >= 1")
        check(self.prefetch in (None, 0) or self.prefetch >= 2, f"prefetch must be 0 or >= 2, got {self.prefetch}")
        check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        check(self.compile in COMPILE_MODES, f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        check(self.metric in METRICS, f"metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        check(self.mode in (None, "max", "min"), f"mode must be max or min, got {self.mode!r}")

    @property
    def direction(self) -> str:
        """max or min: the mode ``metric`` is judged by (``mode``, or the metric's own)."""
        return metric_mode(self.metric, self.mode)

    @property
    def adapters(self) -> AdapterSettings:
        return AdapterSettings(
            self.encoder_min_layer_to_update,
            self.encoder_update_rank,
            self.encoder_update_alpha,
            self.classifier_hidden_layer_size,
        )


@dataclasses.dataclass(frozen=True)
class EvaluateConfig(StoreFlags):
    """Evaluate an exported model on one split of a prepared dataset: window and clip accuracy, per-genre
    precision, recall and F1, and the clip-level confusion matrix (metrics.json, confusion.json, confusion.png)."""

    model: str = field(help="exported model folder (a run's model/)")
    shards: str = field(help="prepared dataset (folder or s3://)")
    out: str = field(help="folder for metrics.json, confusion.json, confusion.png")
    split: str = field("test", "split to evaluate", choices=["train", "val", "test"])
    batch_size: int = field(64, "windows per batch")
    device: str = field("auto", DEVICE_HELP)


@dataclasses.dataclass(frozen=True)
class PredictConfig(StoreFlags):
    """Predict each song's genre with an exported model: K windows evenly spaced over each song, a majority vote,
    and the mean probability of the winning genre as confidence (the exported folder's Hugging Face pipeline
    votes the same way). Writes a table, predictions.csv and .json; exits 1 when no song could be predicted."""

    inputs: str = field(help="an audio file, a folder, or an s3:// prefix (also positional)")
    model: str = field(help="exported model folder")
    windows: int = field(20, "windows per song (K), evenly spaced from its start to its end")
    out: str = field("predictions.csv", "CSV to write (a .json beside it)")
    batch_size: int = field(32, "windows per forward pass")
    device: str = field("auto", DEVICE_HELP)
    ray_threshold: int = field(16, "songs from which Ray Data is used")
    ray_address: str | None = field(None, "Ray cluster address; local Ray when unset")

    def __post_init__(self) -> None:
        check(self.windows >= 1, f"windows must be >= 1, got {self.windows}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """Pretrain the small AST that is the embedded default's frozen backbone, from scratch and from its seed,
    on a synthetic sound-attribute task that is not genre (the instrument family, pitch register, note density,
    distortion and pulse of generated sounds), and save it as a Hugging Face AST checkpoint (config.json,
    model.safetensors, preprocessor_config.json) with pretraining.json (the task, settings, accuracies)."""

    out: str = field(help="folder to write the checkpoint into")
    seed: int = field(0, "seed of the sounds, the initialisation and the order: the same seed, the same weights")
    clips: int = field(3200, "training sounds (one window each)")
    val_clips: int = field(300, "held-out sounds the accuracies are measured on")
    epochs: int = field(3, "passes over the training sounds")
    batch_size: int = field(16, "sounds per optimizer step")
    learning_rate: float = field(1e-3, "peak AdamW learning rate (linear warmup, then linear decay)")
    weight_decay: float = field(0.01, "AdamW weight decay")
    hidden_size: int = field(64, "transformer width")
    layers: int = field(12, "encoder layers (12, like AST-base, so the method's adapter layers 10-11 apply)")
    heads: int = field(4, "attention heads")
    intermediate_size: int = field(256, "FFN width")
    stride: int = field(16, "patch stride in frequency and time (16: patches do not overlap)")
    frames: int = field(1024, "fbank frames per window, prepare's default")
    mel_bins: int = field(128, "mel bins, prepare's default")
    workers: int = field(2, "processes generating sounds")
    overwrite: bool = field(False, "replace an existing checkpoint in --out")

    def __post_init__(self) -> None:
        check(
            self.clips >= self.batch_size >= 1, f"clips ({self.clips}) must be >= batch_size ({self.batch_size}) >= 1"
        )
        check(self.val_clips >= 1, f"val_clips must be >= 1, got {self.val_clips}")
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.hidden_size % self.heads == 0, f"hidden_size {self.hidden_size} must divide by heads {self.heads}")
        check(1 <= self.stride <= 16, f"stride must be in [1, 16], got {self.stride}")
        check(16 <= self.frames <= 4096, f"frames must be in [16, 4096], got {self.frames}")
        check(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
