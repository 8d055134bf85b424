"""A prefetch ring for ``Gather``'s host path: the epoch's order is known at its start, so a background thread
gathers the coming passes' rows from the host arrays (memory-mapped numpy) into a ring of preallocated buffers
while the training thread computes; the training thread only takes a ready buffer (and, on CUDA, starts its copy
to the device).

A buffer is handed back to the thread when the training thread asks for its next pass (the batch a call returns is
valid until the next call, the host gather's contract without the ring), and on CUDA it is refilled only once its
device copy has finished (the thread waits for that copy's event, not the training thread). So a ring of ``depth``
buffers runs up to ``depth - 1`` passes ahead.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import torch

log = logging.getLogger(__name__)


def epoch_chunks(order: torch.Tensor, effective: int, chunk: int, skip_steps: int = 0) -> list[torch.Tensor]:
    """The indices ``train()`` asks its gather for in an epoch of ``order``, in order: one optimizer step per
    ``effective`` windows (after the first ``skip_steps`` steps, which a resumed epoch has taken already), each as
    passes of ``chunk`` windows (``accumulate``'s)."""
    steps = (order[first : first + effective] for first in range(skip_steps * effective, len(order), effective))
    return [index[f : f + chunk] for index in steps for f in range(0, len(index), chunk)]


def ring_depth(prefetch: int | None, device: torch.device) -> int:
    """The ring's depth for ``TrainConfig.prefetch`` on ``device``: as set, or unset 3 on CUDA and 0 (off) on a CPU,
    where the data is in memory already and the gather takes under 1 % of a step: the ring gained nothing there
    (docs/performance.md)."""
    if prefetch is not None:
        return prefetch
    return 3 if device.type == "cuda" else 0


def same_index(index: torch.Tensor, planned: torch.Tensor) -> bool:
    """Whether ``index`` is the planned one: the same view of the same memory (what ``accumulate``'s slices of the
    epoch's order are), or equal values."""
    if index.shape != planned.shape:
        return False
    if index.data_ptr() == planned.data_ptr() and index.stride() == planned.stride() and index.dtype == planned.dtype:
        return True
    return torch.equal(index, planned)


class _Plan:
    """One plan's state, shared by the training thread and the gather thread (under ``cond``)."""

    def __init__(self, chunks: Sequence[torch.Tensor]) -> None:
        self.chunks = list(chunks)
        self.cond = threading.Condition()
        self.filled = 0  # chunks gathered into the ring
        self.released = 0  # chunks the training thread has handed back
        self.cancelled = False
        self.error: BaseException | None = None
        self.busy_s = 0.0  # the gather thread's time in index_select
        self.wait_s = 0.0  # the training thread's time waiting for a chunk

    def cancel(self) -> None:
        with self.cond:
            self.cancelled = True
            self.cond.notify_all()


def _fill(
    plan: _Plan,
    sources: tuple[torch.Tensor, ...],
    buffers: list[tuple[torch.Tensor, ...]],
    events: list[Any],
    threads: int | None,
) -> None:
    """The gather thread: each planned chunk into slot ``k % depth`` once the chunk ``depth`` before it is handed
    back (and, on CUDA, its copy to the device has finished), with ``threads`` intra-op threads (None: torch's).
    Holds no reference to its ring, so that a ring dropped mid-plan is collected (and its plan cancelled)."""
    depth = len(buffers)
    if threads is not None:
        torch.set_num_threads(threads)  # this thread's own intra-op threads (OpenMP's count is per thread)
    try:
        for k, index in enumerate(plan.chunks):
            with plan.cond:
                plan.cond.wait_for(lambda k=k: plan.cancelled or k < plan.released + depth)
                if plan.cancelled:
                    return
                event = events[k % depth]
            if event is not None:
                event.synchronize()  # the slot's last device copy has finished
            began = time.perf_counter()
            for source, buffer in zip(sources, buffers[k % depth], strict=True):
                torch.index_select(source, 0, index, out=buffer[: len(index)])
            busy = time.perf_counter() - began
            with plan.cond:
                plan.busy_s += busy
                plan.filled = k + 1
                plan.cond.notify_all()
    except BaseException as e:  # re-raised on the training thread at its next call
        with plan.cond:
            plan.error = e
            plan.cond.notify_all()


def _cancel(box: dict[str, _Plan | None]) -> None:
    plan = box.get("plan")
    if plan is not None:
        plan.cancel()


class Ring:
    """``depth`` preallocated buffers per source (``rows`` rows each; pinned when ``pin``) that a daemon thread fills
    with a plan's chunks, in order, using ``threads`` intra-op threads (None: torch's count; 1 where the step itself
    computes on the CPU's cores: two thread teams on the same cores slowed a 2-core machine's step by a quarter).
    ``take(index)`` returns the next planned chunk's rows when ``index`` is it, and otherwise cancels the plan and
    returns None (the caller gathers directly).

    ``wait_s``: the training thread's total wait for ready buffers; ``busy_s``: the gather thread's own time
    gathering; ``taken`` and ``missed``: chunks served from the ring, and requests that cancelled a plan."""

    def __init__(
        self, sources: tuple[torch.Tensor, ...], rows: int, depth: int, pin: bool, threads: int | None = None
    ) -> None:
        if depth < 1:
            raise ValueError(f"a prefetch ring needs at least one buffer, got depth {depth}")
        self.sources, self.depth, self.threads = sources, depth, threads
        self.buffers = [
            tuple(torch.empty((rows, *s.shape[1:]), dtype=s.dtype, pin_memory=pin) for s in sources)
            for _ in range(depth)
        ]
        self.events: list[Any] = [None] * depth  # each slot's last device copy (CUDA), waited for before a refill
        self.wait_s, self.taken, self.missed = 0.0, 0, 0
        self._busy_done = 0.0  # busy_s of finished plans
        self._box: dict[str, _Plan | None] = {"plan": None}
        self._thread: threading.Thread | None = None
        self._next = 0  # the next planned chunk the training thread takes
        self._held: int | None = None  # the chunk the training thread holds (returned by the last take)
        weakref.finalize(self, _cancel, self._box)  # a ring dropped mid-plan stops its thread

    @property
    def busy_s(self) -> float:
        plan = self._box["plan"]
        return self._busy_done + (plan.busy_s if plan is not None else 0.0)

    def plan(self, chunks: Sequence[torch.Tensor]) -> None:
        """Gather ``chunks`` ahead, in this order, from now on (any earlier plan is cancelled first)."""
        self.cancel()
        if self._thread is not None:
            self._thread.join()  # it may be writing into a buffer the new plan will fill
            self._thread = None
        if not chunks:
            return
        plan = _Plan(chunks)
        self._box["plan"], self._next = plan, 0
        log.debug("prefetching %d passes, %d buffers ahead", len(plan.chunks), self.depth - 1)
        self._thread = threading.Thread(
            target=_fill,
            args=(plan, self.sources, self.buffers, self.events, self.threads),
            name="gather-prefetch",
            daemon=True,
        )
        self._thread.start()

    def cancel(self) -> None:
        """Drop the current plan (its thread stops before its next chunk)."""
        plan = self._box["plan"]
        if plan is None:
            return
        with plan.cond:
            self._release(plan)
            plan.cancelled = True
            plan.cond.notify_all()
        self._busy_done += plan.busy_s
        self._box["plan"] = None

    def copied(self, event: Any) -> None:
        """The device copy of the chunk just taken was enqueued; its slot is refilled once ``event`` has passed."""
        if self._held is not None:
            self.events[self._held % self.depth] = event

    def take(self, index: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The rows of ``index`` from the ring (views of its buffer, valid until the next call), when ``index`` is the
        plan's next chunk; else None, and the plan is cancelled. Raises the gather thread's exception, if any."""
        plan = self._box["plan"]
        if plan is None:
            return None
        with plan.cond:
            self._release(plan)
            error = plan.error
        if error is not None:
            self.cancel()
            raise error
        k = self._next
        if k >= len(plan.chunks) or not same_index(index, plan.chunks[k]):
            log.debug("prefetch plan left at chunk %d of %d: gathering directly", k, len(plan.chunks))
            self.missed += 1
            self.cancel()
            return None
        began = time.perf_counter()
        with plan.cond:
            plan.cond.wait_for(lambda: plan.filled > k or plan.error is not None)
            error = None if plan.filled > k else plan.error
        waited = time.perf_counter() - began
        self.wait_s += waited
        if error is not None:
            self.cancel()
            raise error
        self._next, self._held, self.taken = k + 1, k, self.taken + 1
        plan.wait_s += waited
        if self._next == len(plan.chunks):
            log.debug(
                "prefetched %d passes: the training thread waited %.4f s for them, the gather thread gathered %.4f s",
                len(plan.chunks),
                plan.wait_s,
                plan.busy_s,
            )
        return tuple(b[: len(index)] for b in self.buffers[k % self.depth])

    def _release(self, plan: _Plan) -> None:
        """Hand the chunk the training thread holds back to the gather thread (under ``plan.cond``)."""
        if self._held is not None:
            plan.released = self._held + 1
            self._held = None
            plan.cond.notify_all()
