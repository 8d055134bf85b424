"""The exported folder's ``README.md``: a Hugging Face model card (YAML metadata, then what a user needs).

The metadata (``library_name``, ``pipeline_tag``, ``tags``, ``base_model`` when the base is a Hub id,
``model-index`` with each test result, its split, seeds and interval) is what the Hub reads; the text says what
the model is, its labels, the data it was trained on (with the dataset's fingerprint), the limits, and how to
use it with ``pipeline``, ``AutoModelForAudioClassification`` and peft. Nothing in it names a path of the
machine that wrote it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml

from genre_sweep.model.dora_ast import NAMED_CONFIGS, SHIPPED

Z95 = 1.96  # the normal quantile of a two-sided 95 % interval
TAGS = ["audio-classification", "music-genre-classification", "audio-spectrogram-transformer", "peft", "dora"]


def wilson(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy measured on ``n`` independent items."""
    if n == 0:
        return 0.0, 1.0
    centre = (accuracy + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(accuracy * (1 - accuracy) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclasses.dataclass(frozen=True)
class Result:
    """One figure measured on a split: ``value`` of ``metric`` over ``clips`` clips, with its 95 % interval."""

    metric: str  # a Hub metric type: "accuracy", "f1"
    name: str  # what it is, in words: "clip accuracy"
    value: float
    split: str
    clips: int
    seeds: str  # which training seeds it covers: "seed 1 (exported)", "3 seeds, mean ± std 0.81 ± 0.02"
    interval: tuple[float, float] | None = None  # the 95 % interval, where one is known

    def words(self) -> str:
        spread = f", 95 % interval {self.interval[0]:.3f}-{self.interval[1]:.3f}" if self.interval else ""
        return f"{self.name} {self.value:.3f} on the {self.split} split ({self.clips} clips, {self.seeds}{spread})"


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What the card says beyond the folder's own files: where the model came from and how well it does."""

    name: str = "genre-sweep-ast"  # the model's name in model-index
    results: tuple[Result, ...] = ()
    data: str = "a dataset prepared by genre-sweep prepare"  # the training data, in a sentence
    fingerprint: str | None = None  # the dataset's fingerprint (its manifest's hash)
    trained_with: dict[str, Any] = dataclasses.field(default_factory=dict)  # the hyperparameters that made it
    made_by: str = "genre-sweep train"  # the command that made it


def is_hub_id(base: str | None) -> bool:
    """Whether ``base`` reads as a Hugging Face Hub repository id (``owner/name``) rather than a name or folder."""
    if not base or base.count("/") != 1 or base.startswith((".", "/", "~")):
        return False
    return all(part and not part.startswith(".") for part in base.split("/"))


def model_card(
    facts: CardFacts, base: str | None, genres: list[str], frames: int, windows: int, portable_base: str | None
) -> str:
    """The ``README.md`` of an exported folder (``base``: the --pretrained value as given; ``portable_base``: the
    adapter's record of it)."""
    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": "audio-classification", "tags": TAGS}
    if is_hub_id(base):
        meta["base_model"] = base
    if facts.results:
        meta["model-index"] = [
            {
                "name": facts.name,
                "results": [
                    {
                        "task": {"type": "audio-classification", "name": "Music genre classification"},
                        "dataset": {
                            "type": "genre-sweep-prepared",
                            "name": f"genre-sweep dataset {(facts.fingerprint or 'unknown')[:12]}",
                            "split": r.split,
                        },
                        "metrics": [{"type": r.metric, "value": round(r.value, 4), "name": r.words()}],
                    }
                    for r in facts.results
                ],
            }
        ]
    seconds = frames / 100
    base_words = _base_words(base, portable_base)
    parts = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {facts.name}",
        "",
        f"A music-genre classifier: an Audio Spectrogram Transformer ({base_words}) with DoRA adapters on its "
        "upper encoder layers and an MLP head, fine-tuned and exported by "
        f"genre-sweep (`{facts.made_by}`).",
        "",
        f"**Labels ({len(genres)}):** " + ", ".join(f"`{g}`" for g in genres),
        "",
        "## Results",
        "",
        *([f"- {r.words()}" for r in facts.results] or ["- No test result: this export was not tested."]),
        "",
        "A result on a small split is uncertain: read the interval, not only the figure. Two models whose intervals "
        "overlap are not shown to differ.",
        "",
        "## Training data",
        "",
        facts.data + (f" Dataset fingerprint: `{facts.fingerprint}`." if facts.fingerprint else ""),
        "",
        *(
            ["Hyperparameters:", "", "| name | value |", "|---|---|"]
            + [f"| `{k}` | {_value(v)} |" for k, v in sorted(facts.trained_with.items())]
            + [""]
            if facts.trained_with
            else []
        ),
        "## Limits",
        "",
        f"- The model hears windows of {frames} frames ({seconds:.2f} s of 16 kHz audio). A whole song is judged by "
        f"a vote of {windows} windows evenly spaced from its start to its end (this folder's pipeline and "
        "`genre-sweep predict` do the same); a song shorter than a window is padded with silence.",
        "- The split is by track: no recording (nor its augmented copies) is in two splits, and identical files "
        "are refused as duplicates. It does not keep an artist's or an album's other tracks out of the test split, "
        "so the test figure can be optimistic for artists the data holds.",
        "- It knows only the labels above: any song gets one of them.",
        "",
        "## How to use",
        "",
        "The folder holds its own model and pipeline code (`modeling_genre_sweep.py`, `pipeline_genre_sweep.py`), "
        "so loading it needs `trust_remote_code=True` and nothing of genre-sweep.",
        "",
        "A whole song (its windows' vote, as `genre-sweep predict` gives it):",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        'classify = pipeline("audio-classification", model="MODEL", trust_remote_code=True)',
        'classify("song.ogg")  # or {"array": wave, "sampling_rate": rate}; windows=K to change the vote',
        "# [{'label': ..., 'score': share of the votes, 'confidence': ..., 'votes': ..., 'windows': ...}, ...]",
        "```",
        "",
        "One window of features (`input_values`: the feature extractor's output):",
        "",
        "```python",
        "from transformers import AutoFeatureExtractor, AutoModelForAudioClassification",
        "",
        'extractor = AutoFeatureExtractor.from_pretrained("MODEL")',
        'model = AutoModelForAudioClassification.from_pretrained("MODEL", trust_remote_code=True).eval()',
        'logits = model(**extractor(wave, sampling_rate=16000, return_tensors="pt")).logits',
        "```",
        "",
        "The DoRA adapter and the head, unmerged, on the base checkpoint (`adapter/`, as peft saves one; the head "
        "travels as peft's `modules_to_save`):",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoConfig, AutoModelForAudioClassification",
        "",
        _base_line(base, portable_base),
        'config = AutoConfig.from_pretrained("MODEL", trust_remote_code=True)  # registers the model class',
        "base = AutoModelForAudioClassification.from_pretrained(BASE, config=config)  # the base, a fresh head",
        'model = PeftModel.from_pretrained(base, "MODEL", subfolder="adapter").eval()',
        "```",
        "",
        "`MODEL` is this folder, or its Hub id once pushed (`push_to_hub` needs nothing else).",
        "",
    ]
    return "\n".join(parts)


def _base_words(base: str | None, portable: str | None) -> str:
    if base is None:
        return "trained from scratch"
    if is_hub_id(base):
        return f"base checkpoint [`{base}`](https://huggingface.co/{base})"
    if base in SHIPPED:
        return f"base `{base}`: genre-sweep's embedded AST, `{_shipped(base)}` in genre-sweep's repository"
    if base in NAMED_CONFIGS:
        return f"base `{base}`: an AST of random weights genre-sweep names, for tests"
    return f"base: a local checkpoint, the folder `{portable}`"


def _base_line(base: str | None, portable: str | None) -> str:
    """The snippet's line naming the base checkpoint."""
    if is_hub_id(base):
        return f'BASE = "{base}"'
    if base in SHIPPED:
        return f'BASE = "{_shipped(base)}"  # in genre-sweep\'s repository'
    return f'BASE = "{portable}"  # the checkpoint it was trained on (see above)'


def _shipped(name: str) -> str:
    folder = SHIPPED[name]
    return f"model/{folder.parent.name}/{folder.name}"


def _value(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:.4g}"
    return f"`{v}`"
