"""Memory that adds up: a trial's share of the GPU, out-of-memory halving, the page cache, GPU tasks that let go."""

import logging
import os

import pytest
import torch

from genre_sweep.model.data import RESIDENT_MARGIN_BYTES, RESIDENT_MAX_BYTES, resident_allowance, resident_fits
from genre_sweep.model.device import gpu_fraction, halving, released_task
from genre_sweep.model.node_store import memory_available, page_cache_note

GB = 1e9
CUDA = torch.device("cuda")  # a name only: halving never touches the GPU unless it runs out of its memory


def test_a_trials_share_is_its_fraction_of_the_gpus_total_memory_not_of_what_is_free():
    # two trials of half a GPU start together on an empty 80 GB GPU: each may keep 40 GB less the margin (capped),
    # not a share of the 80 GB each sees free
    assert resident_allowance(80 * GB, 80 * GB, 0.5, margin=4 * GB, cap=100 * GB) == 36 * GB
    assert resident_allowance(80 * GB, 80 * GB, 0.5) == RESIDENT_MAX_BYTES  # the start-up copy's cap
    assert resident_allowance(80 * GB, 10 * GB, 0.5, margin=4 * GB, cap=100 * GB) == 6 * GB  # never over what's free
    assert resident_allowance(16 * GB, 16 * GB, 0.25, margin=4 * GB) == 0  # a quarter of 16 GB: the margin takes it
    assert resident_allowance(24 * GB, 24 * GB, 1.0, margin=RESIDENT_MARGIN_BYTES, cap=100 * GB) == 20 * GB


def test_the_cpu_keeps_no_resident_copy_and_outside_ray_a_process_has_a_whole_gpu():
    assert not resident_fits(1, torch.device("cpu"))
    assert gpu_fraction() == 1.0


def rows_squared(limit: int, sizes: list[int]):
    """A computation over 100 rows in batches that runs out of memory for batches over ``limit``; it keeps its
    progress, as predict_logits and compute_states do."""
    out: list[int] = []

    def run(batch: int) -> list[int]:
        for i in range(len(out), 100, batch):
            sizes.append(batch)
            if batch > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory: {batch} rows")
            out.extend(r * r for r in range(i, min(i + batch, 100)))
        return out

    return run


def test_out_of_gpu_memory_halves_the_batch_and_gives_the_same_result_with_one_line(caplog):
    sizes: list[int] = []
    with caplog.at_level(logging.WARNING, logger="genre_sweep.model.device"):
        result = halving(rows_squared(16, sizes), 64, CUDA, "validation")
    assert result == [r * r for r in range(100)]
    assert sizes[:3] == [64, 32, 16] and set(sizes[2:]) == {16}
    [line] = caplog.records
    assert line.getMessage() == "out of GPU memory in validation: redone with batches of 16 (from 64)"
    caplog.clear()
    assert halving(rows_squared(64, []), 64, CUDA, "validation") == [r * r for r in range(100)]
    assert not caplog.records  # no halving, no line


def test_out_of_memory_on_the_cpu_or_at_one_row_is_raised():
    with pytest.raises(torch.OutOfMemoryError):
        halving(rows_squared(16, []), 64, torch.device("cpu"), "validation")
    sizes: list[int] = []
    with pytest.raises(torch.OutOfMemoryError):
        halving(rows_squared(0, sizes), 4, CUDA, "the prefix cache build")
    assert sizes == [4, 2, 1]


def test_a_cache_larger_than_the_memory_for_the_page_cache_is_said_to_be_read_from_disk_each_epoch():
    available = memory_available()
    assert available is not None and available > 0  # Linux: /proc/meminfo's MemAvailable
    assert page_cache_note(available // 2, available) is None
    assert page_cache_note(available, available) is None
    note = page_cache_note(available + 10**9, available)
    assert note is not None and "read from disk each epoch" in note and "\n" not in note
    assert page_cache_note(10**15, None) is None  # nothing known: nothing said


def worker_pid() -> int:
    return os.getpid()


def test_gpu_tasks_end_their_worker_after_each_call(ray_local):
    task = released_task(worker_pid, 1, 0)
    first = ray_local.get(task.remote())
    second = ray_local.get(task.remote())
    assert first != second  # a new worker process: the first one's CUDA context is gone with it
