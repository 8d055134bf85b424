"""The CUDA step: what only a GPU can show (skipped without one; the GPU check runs ``pytest -m gpu``).

Each compares the CUDA path with the one the CPU tests check: bf16 features against fp32 under autocast, batches
gathered on the GPU against batches gathered on the host, and a steady-state step that never waits for the GPU.
"""

import numpy as np
import pytest
import torch

from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.data import RESIDENT_MAX_BYTES, Gather, SplitArrays, TrainData, as_tensor, resident_fits
from genre_sweep.model.device import autocast, input_dtype
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.prefix_cache import build_cache
from genre_sweep.model.train import Stepper, example_weights, param_groups

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")
FRAMES = 256


def random_data(n: int = 64, classes: int = 4) -> TrainData:
    rng = np.random.default_rng(0)

    def split(size: int) -> SplitArrays:
        return SplitArrays(
            rng.standard_normal((size, FRAMES, 128)).astype(np.float16),
            rng.integers(0, classes, size),
            np.arange(size),
            tuple(map(str, range(size))),
        )

    return TrainData({"train": split(n), "val": split(16)}, tuple(f"g{i}" for i in range(classes)), FRAMES, 128, "r")


def tiny(data: TrainData):
    return build_model("tiny", len(data.genres), AdapterSettings(min_layer=10), FRAMES, 128).to(CUDA)


def test_features_fed_in_bf16_give_exactly_the_logits_of_fp32_under_autocast():
    data = random_data()
    model = tiny(data).eval()
    x = as_tensor(data.split("val").features).to(CUDA)
    torch.backends.cudnn.deterministic = True
    try:
        with torch.no_grad(), autocast(CUDA):
            upcast = model(x.float())
            direct = model(x.to(input_dtype(CUDA, cached=False)))
    finally:
        torch.backends.cudnn.deterministic = False
    assert input_dtype(CUDA, cached=False) == torch.bfloat16
    assert input_dtype(CUDA, cached=True) == torch.float32  # cached states enter the fp32 residual stream
    assert torch.equal(direct, upcast)


def test_batches_gathered_on_the_gpu_equal_those_gathered_on_the_host():
    data = random_data()
    xs, labels = as_tensor(data.split("train").features), torch.from_numpy(data.split("train").labels)
    assert resident_fits(xs.nbytes, CUDA) and not resident_fits(int(RESIDENT_MAX_BYTES) + 1, CUDA)
    host, resident = Gather((xs, labels), 8, CUDA), Gather((xs, labels), 8, CUDA, resident=True)
    assert resident.sources[0].device.type == "cuda" and host.index_device.type == "cpu"
    for _ in range(3):  # more batches than the host's two pinned buffers
        index = torch.randperm(len(labels))[:8]
        for a, b in zip(host(index), resident(index.to(resident.index_device)), strict=True):
            assert a.device.type == "cuda" and torch.equal(a, b)


@pytest.mark.parametrize("depth", [2, 4])
def test_the_prefetch_ring_on_cuda_gives_the_host_gathers_batches(depth):
    """Pinned buffers filled on the ring's thread, copied on a side stream: the same batches as the direct gather,
    each still intact after the next ones were gathered (the copy's event guards the buffer's reuse)."""
    from genre_sweep.model.prefetch import epoch_chunks

    data = random_data()
    xs, labels = as_tensor(data.split("train").features), torch.from_numpy(data.split("train").labels)
    direct, ringed = Gather((xs, labels), 8, CUDA), Gather((xs, labels), 8, CUDA, prefetch=depth)
    assert ringed.ring is not None
    for seed in range(3):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        chunks = epoch_chunks(order, 16, 8)
        ringed.plan(chunks)
        got = [tuple(t.clone() for t in ringed(c)) for c in chunks]  # cloned before the next call
        for c, batch in zip(chunks, got, strict=True):
            for a, b in zip(batch, direct(c), strict=True):
                assert a.device.type == "cuda" and torch.equal(a, b)
    assert ringed.ring.taken >= len(chunks)  # they came from the ring, not the fallback


@pytest.mark.parametrize("cached", [False, True])
def test_a_steady_state_step_never_waits_for_the_gpu(cached):
    data = random_data()
    model = tiny(data)
    start = None
    if cached:
        data, start = data.with_prefix(build_cache(model, data, 10, CUDA)), 10
    xs = data.prefix.split("train") if cached else as_tensor(data.split("train").features)
    labels = torch.from_numpy(data.split("train").labels)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / 100)
    step = Stepper(model, optimizer, scheduler, Gather((xs, labels), 16, CUDA, resident=True), start, CUDA, 1.0, 16)
    weights = example_weights(len(labels), 2, 8).to(CUDA)
    order = torch.randperm(len(labels)).to(CUDA)
    loss = step(order[:16], weights[:16])  # warm-up: allocations, kernel selection
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host synchronisation from here raises
    try:
        for first in range(16, 64, 16):
            loss = loss + step(order[first : first + 16], weights[first : first + 16])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss).item()


def test_a_step_replayed_as_cuda_graphs_gives_the_eager_steps_parameters():
    """Two passes per step under CUDA graphs: the second must not overwrite the first's gradients (it would if a
    replayed graph's output became a parameter's gradient). Last in this file: it compiles (tens of seconds)."""
    from tests.model.test_train import compiled_steps

    data = random_data()
    eager, _ = compiled_steps(data, "off", device=CUDA)
    graphed, step = compiled_steps(data, "reduce-overhead", device=CUDA)
    assert step.forward is not step.eager  # it stayed compiled
    for got, want in zip(graphed, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=1e-3)  # bf16 autocast: the same up to rounding
