"""The search space: the method's nine hyperparameters (docs/method.md) by default, changed or extended by a YAML file.

A YAML file has two optional sections: ``space`` (name -> {type: float|int|categorical, low, high, log,
choices}; a listed name replaces the default, ``null`` removes it) and ``fixed`` (TrainConfig fields
held constant in every trial, e.g. ``gradient_accumulation_steps: 1``).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import optuna.distributions as od
import yaml

from genre_sweep.config import ConfigError, load_yaml, resolve
from genre_sweep.model.configs import TrainConfig

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 5e-6, "high": 5e-4, "log": True},
    "batch_size": {"type": "categorical", "choices": [2, 4, 8, 16]},
    "warmup_ratio": {"type": "float", "low": 0.01, "high": 0.1},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.15},
    "num_train_epochs": {"type": "int", "low": 7, "high": 20},
    "encoder_min_layer_to_update": {"type": "int", "low": 10, "high": 11},
    "encoder_update_rank": {"type": "int", "low": 1, "high": 3},
    "encoder_update_alpha": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    "classifier_hidden_layer_size": {"type": "categorical", "choices": [50, 100, 200]},
}
# Fields a trial never takes from the space: they belong to the sweep, not to a configuration.
# (The objective and the seed too: a trial's best epoch must be picked by the sweep's own metric, and the seed is the
# sweep's, which the confirmation's seeds are counted from.)
NOT_SEARCHABLE = {
    "shards",
    "out",
    "resume",
    "device",
    "s3_endpoint",
    "s3_region",
    "pretrained",
    "metric",
    "mode",
    "seed",
}


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    params: dict[str, dict[str, Any]]
    fixed: dict[str, Any]

    def distributions(self) -> dict[str, od.BaseDistribution]:
        return {name: _distribution(name, spec) for name, spec in self.params.items()}

    def extreme(self, name: str, pick: Any = max) -> Any:
        """The largest (or, with ``pick=min``, smallest) value ``name`` can take in a trial."""
        spec = self.params.get(name)
        if spec is None:
            return self.fixed.get(name, TrainConfig.__dataclass_fields__[name].default)
        return pick(spec["choices"]) if spec["type"] == "categorical" else spec["high" if pick is max else "low"]

    def max_epochs(self) -> int:
        return int(self.extreme("num_train_epochs"))

    def lowest_adapted_layer(self) -> int:
        """Where a frozen-prefix cache must end: below every trial's lowest DoRA layer."""
        return int(self.extreme("encoder_min_layer_to_update", min))

    def as_record(self) -> dict[str, Any]:
        """The space as the sweep record holds it: each range as Optuna's JSON, the fixed values as typed."""
        return {
            "params": {name: json.loads(od.distribution_to_json(d)) for name, d in self.distributions().items()},
            "specs": self.params,
            "fixed": self.fixed,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> SearchSpace:
        return cls(dict(record["specs"]), dict(record["fixed"]))

    def as_yaml(self) -> str:
        """The space as a ``--space`` file that reads back to it (a default parameter it lacks is written as null)."""
        removed = {name: None for name in DEFAULT_SPACE if name not in self.params}
        return yaml.safe_dump({"space": {**self.params, **removed}, "fixed": self.fixed}, sort_keys=False)

    def differences(self, other: SearchSpace) -> list[tuple[str, str, str]]:
        """Each setting whose range or fixed value differs between this space and ``other``, as (``searched name`` or
        ``fixed name``, this one's, the other's), ranges compared as Optuna reads them (``1e-3`` is ``0.001``)."""
        mine, theirs = self.as_record(), other.as_record()
        out = []
        for section in ("params", "fixed"):
            for name in sorted(set(mine[section]) | set(theirs[section])):
                a, b = mine[section].get(name, ABSENT), theirs[section].get(name, ABSENT)
                if a != b:
                    kind = "searched" if section == "params" else "fixed"
                    out.append((f"{kind} {name}", _shown(a), _shown(b)))
        return out


ABSENT = object()


def _shown(value: Any) -> str:
    """A recorded range or value, short: ``float [0.001, 0.01] log``, ``categorical [8, 16]``, ``4``."""
    if value is ABSENT:
        return "absent"
    if isinstance(value, dict) and "attributes" in value:
        kind, attrs = value.get("name", "").replace("Distribution", "").lower(), value["attributes"]
        if "choices" in attrs:
            return f"{kind} {list(attrs['choices'])}"
        return f"{kind} [{attrs['low']}, {attrs['high']}]{' log' if attrs.get('log') else ''}"
    return repr(value)


def _distribution(name: str, spec: dict[str, Any]) -> od.BaseDistribution:
    kind = spec.get("type")
    try:
        if kind == "float":
            return od.FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        if kind == "int":
            return od.IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        if kind == "categorical":
            return od.CategoricalDistribution(list(spec["choices"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"search space {name}: {spec} is not a valid {kind} range ({e})") from e
    raise ConfigError(f"search space {name}: type must be float, int or categorical, got {kind!r}")


def load_space(path: str | None) -> SearchSpace:
    """The default space, changed by the YAML file at ``path`` if given; every name is checked."""
    params = {k: dict(v) for k, v in DEFAULT_SPACE.items()}
    fixed: dict[str, Any] = {}
    if path:
        loaded = load_yaml(path, "--space") or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--space {path}: expected a mapping with sections space: and fixed:")
        unknown_sections = set(loaded) - {"space", "fixed"}
        if unknown_sections:
            raise ConfigError(f"--space {path}: unknown section(s) {sorted(unknown_sections)}; use space: and fixed:")
        for section in ("space", "fixed"):
            if not isinstance(loaded.get(section) or {}, dict):
                raise ConfigError(f"--space {path}: section {section}: must be a mapping of name: value")
        for name, spec in (loaded.get("space") or {}).items():
            if spec is None:
                params.pop(name, None)
            elif not isinstance(spec, dict):
                raise ConfigError(f"--space {path}: {name}: expected {{type: ..., low/high or choices}}, got {spec!r}")
            else:
                params[name] = spec
        fixed = dict(loaded.get("fixed") or {})
    fields = set(TrainConfig.__dataclass_fields__) - NOT_SEARCHABLE
    for name in [*params, *fixed]:
        if name not in fields:
            raise ConfigError(f"search space: {name!r} is not a training setting; known: {sorted(fields)}")
    both = set(params) & set(fixed)
    if both:
        raise ConfigError(f"search space: {sorted(both)} are both searched and fixed")
    try:  # the fixed values, checked now rather than by every trial, and kept as the config reads them
        typed = resolve(TrainConfig, {"shards": "-", "out": "-", **fixed})
    except ConfigError as e:
        raise ConfigError(f"search space, fixed: {e}") from e
    fixed = {name: getattr(typed, name) for name in fixed}
    if "compile" in params:
        raise ConfigError(
            "search space: compile is not searched (it changes speed, not results); fix it instead, e.g. "
            "fixed: {compile: reduce-overhead} (default: auto, compiled on a GPU)"
        )
    space = SearchSpace(params, fixed)
    space.distributions()  # validates every range
    try:
        for name, spec in params.items():
            check_values(name, spec, fixed)
    except ConfigError as e:
        raise ConfigError(f"--space {path}: {e}" if path else str(e)) from e
    return space


def check_values(name: str, spec: dict[str, Any], fixed: dict[str, Any]) -> None:
    """Every bound and every choice of searched ``name`` goes through the rules its training flag does (with the
    fixed values beside it), so a range no trial could train is one line before Ray starts, not a failed trial."""
    kind = spec["type"]
    values = [("choice", v) for v in spec["choices"]] if kind == "categorical" else [("low", spec["low"])]
    values += [("high", spec["high"])] if kind != "categorical" else []
    for which, value in values:
        try:
            resolve(TrainConfig, {"shards": "-", "out": "-", **fixed, name: value})
        except ConfigError as e:
            raise ConfigError(f"search space {name}: {which} {value!r}: {e}") from e
