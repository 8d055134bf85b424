"""The sweep's cost ledger: each trial's running time, device, GPU fraction, epochs and GPU-hours, the search's wall
time across resumes, the stop rule that ended the search (if one did), and the confirmation's and test's costs.

It lives beside the sweep's folder, ``<storage>/<name>-budget.json`` (local or s3://, written whole), like the
scheduler's state: the sweep's stop rules (``tune.budget``) read it back on ``--resume``, so the search's wall time
and GPU-hours count across resumes; ``retrain`` adds its stages; the report (trials.csv, summary.md) reads it.

A trial's running time is the sum of its epochs' ``time_this_iter_s`` as Tune reports them (from the trial's start,
or its restore, to each report, so its model load and data mapping count in its first epoch), over every session
that ran it: an epoch run again after a resume counts again, as it was paid again. Its GPU-hours are its GPU
fraction (its Ray resources) times that time; its CPU-hours its CPUs times that time. A trial on the CPU (no GPU
reserved) has 0 GPU-hours. Light: no Ray, no torch (``--help`` reads ``duration_s``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from typing import Any

from genre_sweep.config import ConfigError, check
from genre_sweep.store import StoreOptions, read_bytes, with_retries, write_to

log = logging.getLogger(__name__)

SUFFIX = "-budget.json"
STAGES = ("confirmation", "test")  # after the search, in order
UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|m|min|h)?\s*")


def duration_s(text: str) -> float:
    """``text`` as seconds: a number of seconds, or one with a unit (``90s``, ``45m``, ``2h``); ValueError else."""
    match = DURATION.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration (seconds, or a number with s, m or h: 90s, 45m, 2h)")
    return float(match.group(1)) * UNITS[match.group(2) or ""]


def check_budgets(cfg: Any) -> None:
    """A sweep config's budgets and stop rules are well-formed (ConfigError naming the flag)."""
    if cfg.time_budget is not None:
        try:
            seconds = duration_s(cfg.time_budget)
        except ValueError as e:
            raise ConfigError(f"time_budget: {e}") from None
        check(seconds > 0, f"time_budget must be > 0, got {cfg.time_budget!r}")
    check(cfg.gpu_hours is None or cfg.gpu_hours > 0, f"gpu_hours must be > 0, got {cfg.gpu_hours}")
    check(
        cfg.gpu_hours is None or cfg.gpus_per_trial > 0,
        f"--gpu-hours {cfg.gpu_hours} with --gpus-per-trial 0: trials reserve no GPU, so no GPU-hour is ever spent "
        "(give --gpus-per-trial, or use --time-budget)",
    )
    check(cfg.patience is None or cfg.patience >= 1, f"patience must be >= 1, got {cfg.patience}")
    check(cfg.min_delta >= 0, f"min_delta must be >= 0, got {cfg.min_delta}")


def show_duration(seconds: float) -> str:
    """Seconds as a person reads them: ``42 s``, ``12.5 min``, ``3.20 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def ledger_uri(root: str) -> str:
    """Where the ledger of the sweep in ``root`` (``<storage>/<name>``) lives: beside its folder, not in it (a resumed
    Tune uploads its stale copy of that folder)."""
    return root.rstrip("/") + SUFFIX


class Hours:
    """GPU- and CPU-hours of a run that held ``gpus`` and ``cpus`` for ``seconds``."""

    gpus: float
    cpus: float
    seconds: float

    @property
    def gpu_hours(self) -> float:
        return self.gpus * self.seconds / 3600

    @property
    def cpu_hours(self) -> float:
        return self.cpus * self.seconds / 3600


@dataclasses.dataclass
class TrialCost(Hours):
    """One trial's cost, and what the stop rules judge it by."""

    trial: str
    gpus: float = 0.0  # its GPU fraction (Ray resources)
    cpus: float = 0.0
    device: str = ""  # where it ran, from its first report: cpu, or cuda:0 with the GPU's name
    seconds: float = 0.0  # the sum of its reported epochs' times
    epochs: int = 0  # the most epochs it reported
    planned: int | None = None  # the epochs it was to train
    best: float | None = None  # its best epoch's value of the objective so far
    finished: int | None = None  # 1 for the first trial to finish, 2 for the next...; None while it runs or if failed
    stopped_by: str = ""  # the stop rule that stopped it before its planned epochs
    last: list[float] | None = None  # (training_iteration, time_total_s) of the last report counted


@dataclasses.dataclass
class StageCost(Hours):
    """A stage after the search (the confirmation's retrains, the chosen configuration's test): its runs (Ray tasks
    on a trial's resources), their summed running time and its wall time."""

    runs: int
    seconds: float
    wall_s: float
    gpus: float
    cpus: float


@dataclasses.dataclass
class Ledger:
    elapsed_s: float = 0.0  # the search's wall time, over every session of the sweep
    trials: dict[str, TrialCost] = dataclasses.field(default_factory=dict)
    stages: dict[str, StageCost] = dataclasses.field(default_factory=dict)
    fired: dict[str, str] | None = None  # {"rule": "--time-budget", "message": ...}: what ended the search

    @property
    def gpu_hours(self) -> float:
        """The search's GPU-hours: the sum over its trials."""
        return sum(t.gpu_hours for t in self.trials.values())

    @property
    def cpu_hours(self) -> float:
        return sum(t.cpu_hours for t in self.trials.values())

    @property
    def seconds(self) -> float:
        """The trials' running time, summed."""
        return sum(t.seconds for t in self.trials.values())

    def finished(self) -> list[TrialCost]:
        """The finished trials, in the order they finished."""
        return sorted((t for t in self.trials.values() if t.finished is not None), key=lambda t: t.finished or 0)

    def as_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Ledger:
        data = json.loads(raw)
        fields = {f.name for f in dataclasses.fields(TrialCost)}
        return cls(
            elapsed_s=float(data.get("elapsed_s", 0.0)),
            trials={k: TrialCost(**{f: v for f, v in t.items() if f in fields}) for k, t in data["trials"].items()},
            stages={k: StageCost(**s) for k, s in data.get("stages", {}).items()},
            fired=data.get("fired"),
        )


def load(uri: str, options: StoreOptions) -> Ledger:
    """The ledger at ``uri``; an empty one when there is none, or (with a warning) when it cannot be read."""
    try:
        return Ledger.from_json(read_bytes(uri, options))
    except FileNotFoundError:
        return Ledger()
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("the cost ledger %s cannot be read (%s): its counts start from zero", uri, e)
        return Ledger()


def save(uri: str, ledger: Ledger, options: StoreOptions, waits: tuple[float, ...] = (1.0, 2.0)) -> None:
    """Write ``ledger`` to ``uri`` whole; a store that is unreachable is retried after each of ``waits`` seconds, then
    skipped with a warning (the next save writes it again), never the end of the sweep."""
    with_retries(lambda: write_to(uri, ledger.as_json(), options), f"write the cost ledger {uri}", waits, False)


def record_stage(
    root: str, options: StoreOptions, stage: str, seconds: list[float], wall_s: float, gpus: float, cpus: float
) -> StageCost:
    """Add a stage after the search (``confirmation`` or ``test``: runs of ``seconds`` each, ``wall_s`` in all, each on
    ``gpus`` + ``cpus``) to the sweep's ledger, replacing that stage's earlier cost (a second ``retrain``)."""
    cost = StageCost(len(seconds), sum(seconds), wall_s, gpus, cpus)
    uri = ledger_uri(root)
    ledger = load(uri, options)
    ledger.stages[stage] = cost
    save(uri, ledger, options)
    log.info(
        "%s: %d runs, %s of running time (%s of wall time): %.4f GPU-hours, %.4f CPU-hours",
        stage,
        cost.runs,
        show_duration(cost.seconds),
        show_duration(wall_s),
        cost.gpu_hours,
        cost.cpu_hours,
    )
    return cost


# --- what the progress lines and the report say --------------------------------------------------------------


def money(hours: float, price: float | None) -> str:
    return "" if price is None else f"{hours * price:.2f}"


def cost_note(ledger: Ledger, trials: int, price: float | None = None) -> str:
    """The progress line's cost so far, and a projection for all ``trials`` at the finished trials' mean (labelled
    as such: pruning and the epochs drawn change it)."""
    finished = ledger.finished()
    gpu = ledger.gpu_hours > 0 or any(t.gpus for t in ledger.trials.values())
    unit, spent = ("GPU-h", ledger.gpu_hours) if gpu else ("CPU-h", ledger.cpu_hours)
    note = f"{spent:.4f} {unit} so far" if gpu else f"0 GPU-h ({spent:.4f} CPU-h) so far"
    if price is not None and gpu:
        note += f" (cost {money(spent, price)})"
    if finished:
        per_trial = sum(t.gpu_hours if gpu else t.cpu_hours for t in finished) / len(finished)
        projected = spent + per_trial * max(0, trials - len(finished))
        note += f", projected {projected:.4f} {unit} for all {trials} trials at the finished trials' mean"
    return note


def trial_columns(rows: list[dict[str, Any]], ledger: Ledger, price: float | None) -> list[dict[str, Any]]:
    """trials.csv's rows (named by their ``trial``) with each trial's cost: its running time (``wall_s``), device,
    GPU fraction and CPUs, GPU- and CPU-hours, money at ``price`` per GPU-hour, and the stop rule that stopped it.
    A study trial the ledger does not hold (one drawn before it existed) has them empty."""
    out = []
    for row in rows:
        cost = ledger.trials.get(str(row.get("trial", "")))
        columns: dict[str, Any] = dict.fromkeys(("wall_s", "device", "gpus", "cpus", "gpu_hours", "cpu_hours"), "")
        if price is not None:
            columns["cost"] = ""
        columns["stopped_by"] = ""
        if cost is not None:
            columns |= {
                "wall_s": round(cost.seconds, 3),
                "device": cost.device,
                "gpus": cost.gpus,
                "cpus": cost.cpus,
                "gpu_hours": round(cost.gpu_hours, 6),
                "cpu_hours": round(cost.cpu_hours, 6),
                "stopped_by": cost.stopped_by,
            }
            if price is not None:
                columns["cost"] = round(cost.gpu_hours * price, 4)
        out.append({**row, **columns})
    return out


def stop_lines(ledger: Ledger) -> list[str]:
    """The summary's sentence on the stop rule that ended the search, if one did."""
    if not ledger.fired:
        return []
    rule = ledger.fired["rule"]
    stopped = sum(1 for t in ledger.trials.values() if t.stopped_by == rule)
    running = (
        "no trial was running then"
        if not stopped
        else f"the {plural(stopped, 'trial')} still running stopped at the end of that epoch (pruned in the study, "
        "`stopped_by` in trials.csv)"
    )
    return [
        f"**A stop rule ended the search:** {ledger.fired['message']}. No trial started after it, {running}, and the "
        "confirmation ran on what the search had found. `--resume` with a larger budget goes on.",
        "",
    ]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def stage_rows(ledger: Ledger) -> list[tuple[str, str, float, float, float, float]]:
    """(stage, its runs, wall time, running time, GPU-hours, CPU-hours) of the search, each later stage the ledger
    holds, and their total."""
    rows = [
        (
            "search",
            plural(len(ledger.trials), "trial"),
            ledger.elapsed_s,
            ledger.seconds,
            ledger.gpu_hours,
            ledger.cpu_hours,
        )
    ]
    for name in STAGES:
        if name in ledger.stages:
            s = ledger.stages[name]
            runs = plural(s.runs, "retrain" if name == "confirmation" else "task")
            rows.append((name, runs, s.wall_s, s.seconds, s.gpu_hours, s.cpu_hours))
    wall, running, gpu_h, cpu_h = (sum(r[i] for r in rows) for i in range(2, 6))  # type: ignore[misc]
    return [*rows, ("**total**", "", wall, running, gpu_h, cpu_h)]


def cost_lines(ledger: Ledger, price: float | None) -> list[str]:
    """summary.md's cost table: the search (its trials), the confirmation and the test, and their total; none for a
    sweep without a ledger (one run before it existed)."""
    if not ledger.trials and not ledger.stages:
        return []
    priced = price is not None
    lines = [
        "## Cost",
        "",
        "A run's running time is its own (a trial's: the sum of its epochs' times as Tune reports them, across "
        "resumes); its GPU-hours are its GPU fraction times that time (0 on the CPU), its CPU-hours its CPUs times "
        "it. The search's wall time counts across resumes. [trials.csv](trials.csv) has each trial's (`wall_s`, "
        f"`device`, `gpus`, `cpus`, `gpu_hours`, `cpu_hours`{', `cost`' if priced else ''}).",
        "",
        "| stage | runs | wall time | running time | GPU-hours | CPU-hours |" + (" cost |" if priced else ""),
        "|---|---|---|---|---|---|" + ("---|" if priced else ""),
    ]
    for name, runs, wall, running, gpu_h, cpu_h in stage_rows(ledger):
        cells = [name, runs, show_duration(wall), show_duration(running), f"{gpu_h:.4f}", f"{cpu_h:.4f}"]
        lines.append("| " + " | ".join(cells + ([money(gpu_h, price)] if priced else [])) + " |")
    lines.append("")
    if priced:
        lines += [f"Cost: GPU-hours at {price:g} per GPU-hour (`--gpu-hour-price`).", ""]
    return lines
