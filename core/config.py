"""Job configs from defaults, then an optional YAML file, then command-line flags.

Every job has one frozen dataclass whose ``__post_init__`` validates it. ``field`` declares a setting
with its help text; ``build_parser`` turns such a class into an argparse parser (one ``--flag`` per
field, also accepted with underscores as Hugging Face users type it); ``resolve`` merges the three
layers into one validated instance. Every bad value, file or flag is one ``ConfigError`` line naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from genre_sweep.errors import GenreSweepError

C = TypeVar("C")


class ConfigError(GenreSweepError, ValueError):
    """A config value, file or flag is wrong; the message names it and the rule."""


RECORDED_NOTE = "a resumed sweep and retrain take the sweep record's"


def field(default: Any = dataclasses.MISSING, help: str = "", *, recorded: bool = False, **extra: Any) -> Any:  # noqa: A002
    """A config field with its help text (``--help`` shows it); ``choices=[...]`` limits the values.

    ``recorded``: a setting a sweep records and ``--resume``/``retrain`` take from its record. Its value is None
    until given, so a value that was not given can be told from one that was; ``default`` is what a new sweep
    takes (``new_defaults``), shown in ``--help``.
    """
    if recorded:
        return dataclasses.field(default=None, metadata={"help": help, "recorded": True, "new": default, **extra})
    return dataclasses.field(default=default, metadata={"help": help, **extra})


def recorded_fields(cls: type) -> list[str]:
    """The names of ``cls``'s recorded fields (``field(recorded=True)``)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("recorded")]


def new_default(cls: type, name: str) -> Any:
    """What a new sweep takes for ``cls``'s recorded field ``name`` when it is not given."""
    return next(f.metadata["new"] for f in dataclasses.fields(cls) if f.name == name)


def new_defaults(config: C) -> C:
    """``config`` with every recorded field that was not given set to its default (a new sweep's values)."""
    unset = {
        f.name: f.metadata["new"]
        for f in dataclasses.fields(config)
        if f.metadata.get("recorded") and getattr(config, f.name) is None
    }
    return dataclasses.replace(config, **unset)


def check(condition: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``condition``: the one validation helper configs use."""
    if not condition:
        raise ConfigError(message)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _convert(tp: Any, value: Any, where: str) -> Any:
    """One flag string or YAML value as the field's type; ``where`` names the flag or file key."""
    base, optional = _unwrap_optional(tp)
    if optional and (value is None or (isinstance(value, str) and value.lower() in ("", "none", "null"))):
        return None
    if typing.get_origin(base) is tuple:
        (item_tp, *_) = typing.get_args(base)
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")]
        elif isinstance(value, list | tuple):
            items = list(value)
        else:
            items = [value]
        return tuple(_scalar(item_tp, v, where) for v in items)
    return _scalar(base, value, where)


def _scalar(tp: Any, value: Any, where: str) -> Any:
    try:
        if isinstance(value, dict | list):
            raise ValueError(value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return tp(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {value!r} is not a valid {getattr(tp, '__name__', tp)}") from e


def did_you_mean(typed: str, known: list[str]) -> list[str]:
    """The closest of ``known`` to ``typed`` (at most 3, best first; none when nothing is close). Words are compared
    without their leading dashes, underscores read as dashes (``--learning_rat`` is near ``--learning-rate``)."""
    plain = {k.lstrip("-"): k for k in known}
    word = typed.partition("=")[0].lstrip("-").replace("_", "-")
    return [plain[m] for m in difflib.get_close_matches(word, list(plain), n=3)]


def unknown_flags_message(extras: list[str], known: list[str]) -> str:
    """argparse's "unrecognized arguments: ..." with the closest known flag(s) of each unknown one."""
    hints = {typo: did_you_mean(typo, known) for typo in extras if typo.startswith("--")}
    hints = {typo: close for typo, close in hints.items() if close}
    message = f"unrecognized arguments: {' '.join(extras)}"
    if len(hints) == 1:
        (close,) = hints.values()
        return f"{message}; did you mean {' or '.join(close)}?"
    if hints:
        return f"{message}; did you mean " + ", ".join(f"{' or '.join(c)} for {t}" for t, c in hints.items()) + "?"
    return message


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line (no usage block), exit code 2; an unknown flag is answered
    with the closest of ``flags`` (the flags ``--help`` lists)."""

    flags: list[str]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unknown_flags_message(extras, self.flags))
        return parsed


def _fields_in_help_order(cls: type) -> list[dataclasses.Field]:
    """The job's own fields first, then the shared keyword-only ones (storage options)."""
    fields = dataclasses.fields(cls)
    return [f for f in fields if not f.kw_only] + [f for f in fields if f.kw_only]


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def build_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """One ``--flag`` per field of ``cls`` (``--flag_name`` accepted too), plus ``--config`` and ``--print-config``."""
    parser = _Parser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # a flag is spelt out, never guessed from a prefix
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of field: value (flags override it)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML (a valid --config) and exit"
    )
    parser.flags = ["--help", "--config", "--print-config"]
    hints = typing.get_type_hints(cls)
    for f in _fields_in_help_order(cls):
        dashed, underscored = flag(f.name), "--" + f.name
        tp, _ = _unwrap_optional(hints[f.name])
        text = f.metadata.get("help", "")
        if f.metadata.get("recorded"):
            new = f.metadata["new"]
            text += f" (default: {new}; {RECORDED_NOTE})" if new is not None else f" ({RECORDED_NOTE})"
        elif _required(f):
            text += " (required)"
        elif f.default is not None:
            shown = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            text += f" (default: {shown})"
        parser.flags += [dashed, "--no-" + dashed[2:]] if tp is bool else [dashed]
        if tp is bool:
            parser.add_argument(
                dashed, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
            if underscored != dashed:  # --no_prefix_cache as well as --no-prefix-cache
                for spelling, value in ((underscored, True), ("--no_" + f.name, False)):
                    parser.add_argument(
                        spelling,
                        dest=f.name,
                        action="store_const",
                        const=value,
                        default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS,
                    )
            continue
        kwargs = {"dest": f.name, "type": str, "default": argparse.SUPPRESS, "choices": f.metadata.get("choices")}
        parser.add_argument(dashed, metavar=f.name.upper(), help=text, **kwargs)
        if underscored != dashed:
            parser.add_argument(underscored, help=argparse.SUPPRESS, **kwargs)
    return parser


def load_yaml(path: str, what: str) -> Any:
    """A YAML file's content; a missing or malformed file is one ConfigError naming ``what`` (the flag) and the line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {path}: no such file")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{what} {path}: not valid YAML{where}: {problem}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {path}: cannot read it: {e}") from e


def resolve(cls: type[C], overrides: dict[str, Any], config_file: str | None = None) -> C:
    """Defaults, then the YAML file's values, then ``overrides`` (already-typed values or flag strings)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    sourced: dict[str, tuple[Any, str]] = {}  # field -> (value, where it came from)
    if config_file:
        loaded = load_yaml(config_file, "--config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"--config {config_file}: expected a mapping of field: value, got {type(loaded).__name__}"
            )
        for key, value in loaded.items():
            name = str(key).replace("-", "_")
            if name not in fields:
                raise ConfigError(f"--config {config_file}: unknown field {key!r}; known: {sorted(fields)}")
            sourced[name] = (value, f"--config {config_file}: {name}")
    for name, value in overrides.items():
        if name not in fields:
            raise ConfigError(f"unknown config field {name!r}; known: {sorted(fields)}")
        sourced[name] = (value, flag(name))
    typed = _typed(cls, sourced)
    missing = [flag(n) for n, f in fields.items() if n not in typed and _required(f)]
    if missing:
        raise ConfigError("missing required " + ", ".join(missing))
    try:
        return cls(**typed)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def _typed(cls: type, sourced: dict[str, tuple[Any, str]]) -> dict[str, Any]:
    """Each field's value (name -> (value, where it came from)) as the field's type: what ``resolve`` and
    ``replace_typed`` both do to a flag string, a YAML value or an already-typed value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    return {
        name: value if _a_choice(fields[name], value) else _convert(hints[name], _yaml_word(fields[name], value), where)
        for name, (value, where) in sourced.items()
    }


def _a_choice(f: dataclasses.Field, value: Any) -> bool:
    """Whether ``value`` is one of the field's choices as written: ``--scheduler none`` is the choice ``none``, not
    an optional field left unset."""
    return isinstance(value, str) and value in (f.metadata.get("choices") or ())


def replace_typed(config: C, values: dict[str, Any], where: str = "") -> C:
    """``dataclasses.replace(config, **values)`` with each value typed as ``resolve`` types a flag (a trial's searched
    values, a record's), and validated again; a bad one is a ConfigError naming it (``where`` says whence)."""
    known = {f.name for f in dataclasses.fields(config)}
    for name in values:
        if name not in known:
            raise ConfigError(f"{where}unknown config field {name!r}; known: {sorted(known)}")
    typed = _typed(type(config), {name: (value, f"{where}{name}") for name, value in values.items()})
    try:
        return dataclasses.replace(config, **typed)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}{e}") from e


def _yaml_word(f: dataclasses.Field, value: Any) -> Any:
    """YAML 1.1 reads a bare ``off`` or ``on`` as a boolean: a field whose choices offer the word gets it back."""
    if isinstance(value, bool) and ("on" if value else "off") in (f.metadata.get("choices") or ()):
        return "on" if value else "off"
    return value


def parse_args(cls: type[C], argv: list[str] | None, prog: str, description: str) -> tuple[C, bool]:
    """``argv`` as a validated ``cls`` and whether ``--print-config`` was given; errors exit 2 with one line."""
    parser = build_parser(cls, prog, description)
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    print_config = args.pop("print_config", False)
    try:
        return resolve(cls, args, config_file), print_config
    except ConfigError as e:
        parser.error(str(e))


def _plain(config: Any) -> dict[str, Any]:
    """Field -> value in ``--help``'s order, tuples as lists (what YAML writes)."""
    values = {f.name: getattr(config, f.name) for f in _fields_in_help_order(type(config))}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def to_json(config: Any) -> str:
    """The resolved config as JSON, for saving beside every run's output."""
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def to_yaml(config: Any) -> str:
    """The resolved config as YAML that ``--config`` reads back to the same config."""
    return yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=False)
