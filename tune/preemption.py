"""A trial on a node being preempted checkpoints the step it is at, moves, and goes on from there: not a failure.

A spot instance's interruption notice reaches Ray through ``genre-sweep spot-watch`` (``genre_sweep.core.spot``),
which drains the node for preemption with the notice's deadline: the node takes no new work from then on. Every
trial watches Ray's draining nodes (``DrainWatch``, one poll a second in a thread of its own). When its own node is
drained, ``train`` stops before its next optimizer step with a checkpoint of that exact position
(``model.train.Stopped``: weights, optimizer, schedule, the step in the epoch's order, the random state); the trial
copies it into its folder of the sweep's storage (``preempted/``, read by whichever node the trial moves to) and
ends with ``TrialPreempted``: an actor error marked as preempted, which Tune restarts from the trial's last
checkpoint without counting it against ``--max-failures`` (Tune's rule for actors lost to a preempted node). The
restarted trial lands on another node, finds the mid-epoch checkpoint newer than Tune's and goes on from that
step (``pick_up``): its parameters end exactly as if it had never stopped. Its first report names where it came
from; the driver's progress says it in one line. The Optuna study sees one trial throughout.

A node lost without a notice is what it was before: its trials resume from their last epoch's checkpoint, and
count a failure.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ray.exceptions import RayActorError

from genre_sweep.model.checkpoint import OPTIMIZER, POSITION, STATE, TRAINABLE
from genre_sweep.store import all_files
from genre_sweep.tune import internals

log = logging.getLogger(__name__)

POLL_S = 1.0  # how often a trial asks Ray whether its node is being drained
FOLDER = "preempted"  # in the trial's folder of the sweep's storage: its mid-epoch checkpoints
INFO = "preempted.json"  # written last: a checkpoint folder with it is complete
# the keys of a moved trial's first report: where it was preempted
REPORTED = ("preempted_node", "preempted_epoch", "preempted_step", "preempted_at", "notice_to_checkpoint_s")


class TrialPreempted(RayActorError):
    """A trial that stopped because its node is being preempted, its position checkpointed: an actor error with
    ``preempted`` set, which Tune retries without counting it as a failure."""

    def __init__(self, message: str = "trial preempted") -> None:
        super().__init__(error_msg=message, preempted=True)

    def __reduce__(self) -> tuple[Any, ...]:  # crosses from the trial's process to the driver
        return type(self), (self.error_msg,)


class DrainWatch:
    """Whether Ray is draining node ``node_id``, polled every ``poll_s`` in a daemon thread; ``watch()`` is true
    from the first poll that saw the drain. ``seen_at`` (wall clock) and ``deadline_ms`` say when and until when."""

    def __init__(self, node_id: str, poll_s: float = POLL_S) -> None:
        self.node_id, self.poll_s = node_id, poll_s
        self.seen_at: float | None = None
        self.deadline_ms = 0
        self._drained, self._closed = threading.Event(), threading.Event()
        self._failing = False
        self._changed: internals.LibraryChanged | None = None  # raised by the next call, on the training thread
        self._thread = threading.Thread(target=self._poll, name="genre-sweep-drain-watch", daemon=True)
        self._thread.start()

    def __call__(self) -> bool:
        if self._changed is not None:
            raise self._changed
        return self._drained.is_set()

    def close(self) -> None:
        self._closed.set()

    def _poll(self) -> None:
        while not self._closed.is_set():
            try:
                nodes = internals.draining_nodes()
                self._failing = False
            except internals.LibraryChanged as e:  # an upgrade of Ray: said once, on the training thread
                self._changed = e
                return
            except Exception as e:  # the GCS out of reach a moment: ask again at the next poll
                if not self._failing:
                    log.warning("cannot ask Ray whether this node is being drained (%s); asking again", e)
                self._failing = True
                nodes = {}
            if self.node_id in nodes:
                self.seen_at, self.deadline_ms = time.time(), int(nodes[self.node_id])
                self._drained.set()
                return
            self._closed.wait(self.poll_s)


def node_draining(node_id: str, trial_id: str) -> bool:
    """Whether Ray is draining ``node_id`` now (one question to the GCS); when the GCS does not answer, one warning
    and no (the trial's ``DrainWatch`` asks again every second)."""
    try:
        return node_id in internals.draining_nodes()
    except internals.LibraryChanged:
        raise
    except Exception as e:
        log.warning("trial %s: cannot ask Ray whether this node is being drained (%s); going on", trial_id, e)
        return False


def trial_storage() -> tuple[Any, str]:
    """This trial's folder in the sweep's storage: (pyarrow filesystem, path), from Tune's storage context."""
    from ray import tune

    storage = tune.get_context().get_storage()
    return storage.storage_filesystem, storage.trial_fs_path


def keep(stopped: Any, node_id: str, watch: DrainWatch, storage: tuple[Any, str]) -> dict[str, Any]:
    """Copy ``stopped``'s checkpoint (a ``model.train.Stopped``) into the trial's ``preempted/`` folder of the
    sweep's storage, its ``preempted.json`` last; returns what that file says."""
    from pyarrow import fs as pafs

    filesystem, trial_path = storage
    name = f"epoch-{stopped.epoch:03d}-step-{stopped.step:05d}"
    dest = posixpath.join(trial_path, FOLDER, name)
    filesystem.create_dir(dest, recursive=True)
    for file in sorted(Path(stopped.path).iterdir()):
        pafs.copy_files(str(file), posixpath.join(dest, file.name), destination_filesystem=filesystem)
    info = {
        "node": node_id,
        "epoch": stopped.epoch,
        "step": stopped.step,
        "steps": stopped.steps,
        "drain_seen_at": watch.seen_at,
        "deadline_ms": watch.deadline_ms,
        "checkpointed_at": time.time(),
    }
    with filesystem.open_output_stream(posixpath.join(dest, INFO)) as f:
        f.write(json.dumps(info).encode())
    return info


def pick_up(storage: tuple[Any, str], completed: int, into: Path) -> dict[str, Any] | None:
    """The newest complete mid-epoch checkpoint in the trial's ``preempted/`` folder taken after epoch ``completed``
    (the last whole epoch of the checkpoint Tune restarts the trial from; 0 without one), copied to ``into``; returns
    its ``preempted.json``, or None when there is none (a stale one, from before Tune's checkpoint, is ignored)."""
    from pyarrow import fs as pafs

    filesystem, trial_path = storage
    found = filesystem.get_file_info(pafs.FileSelector(posixpath.join(trial_path, FOLDER), allow_not_found=True))
    for folder in sorted((i.path for i in found if i.type == pafs.FileType.Directory), reverse=True):
        if not all_files(filesystem, folder, (INFO, STATE, TRAINABLE, OPTIMIZER)):
            continue
        with filesystem.open_input_stream(posixpath.join(folder, INFO)) as f:
            info = json.loads(f.read())
        if info["epoch"] - 1 < completed:  # before Tune's checkpoint: the trial went on past it
            continue
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        pafs.copy_files(folder, str(into), source_filesystem=filesystem)
        if not (into / POSITION).exists():
            continue
        return info
    return None


def forget(storage: tuple[Any, str]) -> None:
    """Delete the trial's ``preempted/`` folder: once the moved trial reported an epoch, Tune's checkpoint is newer."""
    from pyarrow import fs as pafs

    filesystem, trial_path = storage
    folder = posixpath.join(trial_path, FOLDER)
    if filesystem.get_file_info(folder).type == pafs.FileType.Directory:
        filesystem.delete_dir(folder)


def moved_report(info: dict[str, Any]) -> dict[str, Any]:
    """The fields a moved trial's first report adds: where it was preempted, and how long its checkpoint took from
    the moment the trial saw the drain."""
    seen = info.get("drain_seen_at") or info["checkpointed_at"]
    return {
        "preempted_node": info["node"],
        "preempted_epoch": info["epoch"],
        "preempted_step": info["step"],
        "preempted_at": info["checkpointed_at"],  # wall clock, once the checkpoint was in the sweep's storage
        "notice_to_checkpoint_s": info["checkpointed_at"] - seen,
    }


def moved_line(trial_id: str, result: dict[str, Any]) -> str:
    """The driver's one line on a trial that moved: ``trial X preempted on node N at epoch e step s, resumed on
    node M``."""
    return (
        f"trial {trial_id} preempted on node {str(result['preempted_node'])[:8]} at epoch {result['preempted_epoch']} "
        f"step {result['preempted_step']}, resumed on node {str(result.get('node_id', '?'))[:8]} (checkpointed "
        f"{result['notice_to_checkpoint_s']:.1f} s after the drain was seen; not counted as a failure)"
    )


class _QuietPreempted(logging.Filter):
    """Drops Tune's "Trial task failed" error, with its traceback, when the trial ended preempted: not a failure, and
    the trial's own line and the driver's say what happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], TrialPreempted))


def quiet_tune_on_preemption() -> None:
    """Keep Tune's controller from logging a preempted trial as a failed one (once per process)."""
    controller = logging.getLogger("ray.tune.execution.tune_controller")
    if not any(isinstance(f, _QuietPreempted) for f in controller.filters):
        controller.addFilter(_QuietPreempted())
