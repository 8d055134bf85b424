"""Job configs from defaults, then an optional YAML file, then command-line flags.

Every job has one frozen dataclass whose ``__post_init__`` validates it; this module turns such a
class into an argparse parser (help text from each field's ``metadata["help"]``) and resolves the
three layers into one instance.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

C = TypeVar("C")


class ConfigError(ValueError):
    """A config value, file or flag is wrong; the message names it and the rule."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _converter(tp: Any, name: str):
    """Return a function turning one flag string (or YAML value) into the field's type."""
    base, optional = _unwrap_optional(tp)

    def convert(value: Any) -> Any:
        if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none"))):
            return None
        if typing.get_origin(base) is tuple:
            (item_tp, *_) = typing.get_args(base)
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(_scalar(item_tp, v.strip() if isinstance(v, str) else v, name) for v in items)
        return _scalar(base, value, name)

    return convert


def _scalar(tp: Any, value: Any, name: str) -> Any:
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from e


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag`` per field of ``cls`` plus ``--config FILE``."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of field: value (flags override it)")
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp, _ = _unwrap_optional(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        help_text = f.metadata.get("help", "")
        if required:
            help_text += " (required)"
        if tp is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text + f" (default: {f.default})",
            )
            continue
        if not required:
            default = f.default
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        parser.add_argument(
            flag,
            dest=f.name,
            type=str,
            default=argparse.SUPPRESS,
            metavar=f.name.upper(),
            help=help_text,
            choices=f.metadata.get("choices"),
        )
    return parser


def resolve(cls: type[C], overrides: dict[str, Any], config_file: str | None = None) -> C:
    """Defaults, then the YAML file's values, then ``overrides`` (already-typed or flag strings)."""
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"--config {config_file}: no such file")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"--config {config_file}: expected a mapping of field: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update(overrides)
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; known: {sorted(names)}")
    typed = {k: _converter(hints[k], k)(v) for k, v in values.items()}
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in typed and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError("missing required " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return cls(**typed)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(str(e)) from e


def parse(cls: type[C], argv: list[str] | None, prog: str, description: str) -> C:
    """Parse ``argv`` into a validated ``cls``; config errors exit through argparse with a message."""
    parser = build_parser(cls, prog, description)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    try:
        return resolve(cls, args, config_file)
    except ConfigError as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def to_json(config: Any) -> str:
    """The resolved config as JSON, for saving beside every run's output."""
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition``: the one validation helper configs use."""
    if not condition:
        raise ConfigError(message)
