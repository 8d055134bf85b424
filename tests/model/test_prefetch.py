import gc
import logging
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genre_sweep.config import ConfigError, resolve
from genre_sweep.model.configs import TrainConfig
from genre_sweep.model.data import Gather, SplitArrays, TrainData, as_tensor
from genre_sweep.model.prefetch import epoch_chunks, ring_depth
from genre_sweep.model.prefix_cache import build_for
from genre_sweep.model.train import Stopped, train

CPU = torch.device("cpu")


def sources(n: int = 53, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, 5, generator=g).to(torch.bfloat16), torch.randint(0, 10, (n,), generator=g)


def epoch(gather: Gather, order: torch.Tensor, effective: int, chunk: int, skip: int = 0, hold_s: float = 0.0):
    """Each pass's batch, cloned, as ``accumulate`` asks for them (the batch held ``hold_s`` before it is read)."""
    out = []
    for first in range(skip * effective, len(order), effective):
        index = order[first : first + effective]
        for f in range(0, len(index), chunk):
            batch = gather(index[f : f + chunk])
            time.sleep(hold_s)  # the ring's thread runs ahead meanwhile: it must not overwrite the held batch
            out.append(tuple(t.clone() for t in batch))
    return out


def expected(xs: tuple[torch.Tensor, ...], order: torch.Tensor, effective: int, chunk: int, skip: int = 0):
    return [tuple(s[index] for s in xs) for index in epoch_chunks(order, effective, chunk, skip)]


def same(a, b) -> bool:
    if len(a) != len(b):
        return False
    return all(torch.equal(x, y) for u, v in zip(a, b, strict=True) for x, y in zip(u, v, strict=True))


def test_epoch_chunks_are_the_passes_of_each_optimizer_step_in_order():
    order = torch.randperm(23, generator=torch.Generator().manual_seed(1))
    chunks = epoch_chunks(order, effective=6, chunk=4)
    assert [len(c) for c in chunks] == [4, 2, 4, 2, 4, 2, 4, 1]  # 6 = 4 + 2 per step; the last step has 5
    assert torch.equal(torch.cat(chunks), order)
    assert torch.equal(torch.cat(epoch_chunks(order, 6, 4, skip_steps=2)), order[12:])
    assert epoch_chunks(order, 6, 4, skip_steps=4) == []


@pytest.mark.parametrize("depth", [2, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ring_gives_exactly_the_direct_gathers_batches_over_a_whole_epoch(depth, seed):
    xs = sources(53, seed)
    ring, direct = Gather(xs, 8, CPU, prefetch=depth), Gather(xs, 8, CPU)
    for effective, chunk, skip in [(16, 8, 0), (12, 5, 0), (16, 8, 2)]:  # last chunks short: 53 = 3 x 16 + 5
        order = torch.randperm(53, generator=torch.Generator().manual_seed(seed))
        want = expected(xs, order, effective, chunk, skip)
        assert same(epoch(direct, order, effective, chunk, skip), want)
        taken = ring.ring.taken
        ring.plan(epoch_chunks(order, effective, chunk, skip))
        assert same(epoch(ring, order, effective, chunk, skip, hold_s=0.002), want)
        assert ring.ring.taken - taken == len(want) and ring.ring.missed == 0  # every pass came from the ring
    assert ring.ring.busy_s > 0 and ring.ring.wait_s >= 0


def test_a_request_off_the_plan_is_gathered_directly_and_a_new_plan_prefetches_again():
    xs = sources()
    gather = Gather(xs, 8, CPU, prefetch=3)
    order = torch.randperm(53, generator=torch.Generator().manual_seed(3))
    gather.plan(epoch_chunks(order, 16, 8))
    assert same([gather(order[0:8])], [tuple(s[order[0:8]] for s in xs)])
    # the step is redone in halves (as the Stepper does after a CUDA out-of-memory error): off the plan
    halves = [order[f : f + 4] for f in range(0, 16, 4)]
    assert same(
        [tuple(t.clone() for t in gather(i)) for i in halves],  # each valid until the next call
        [tuple(s[i] for s in xs) for i in halves],
    )
    assert gather.ring.missed == 1 and gather.ring.taken == 1
    assert same(epoch(gather, order, 16, 8), expected(xs, order, 16, 8))  # the rest of the epoch: directly
    gather.plan(epoch_chunks(order, 16, 8))
    assert same(epoch(gather, order, 16, 8), expected(xs, order, 16, 8))
    assert gather.ring.taken == 1 + 7 and gather.ring.missed == 1


def test_an_error_in_the_gather_thread_is_raised_at_the_next_call_then_gathering_goes_on_directly():
    xs = sources()
    gather = Gather(xs, 8, CPU, prefetch=2)
    bad = torch.tensor([0, 99])  # out of range: index_select fails in the thread
    gather.plan([bad])
    gather.ring._thread.join(timeout=10)
    with pytest.raises((IndexError, RuntimeError), match="index"):
        gather(torch.tensor([1, 2]))  # the next call, whatever it asks for
    assert same([gather(torch.tensor([1, 2]))], [tuple(s[[1, 2]] for s in xs)])  # the plan is gone: directly


def test_a_ring_dropped_mid_plan_stops_its_thread():
    gather = Gather(sources(), 8, CPU, prefetch=2)
    order = torch.arange(53)
    gather.plan(epoch_chunks(order, 16, 8))
    thread = gather.ring._thread
    time.sleep(0.05)  # the thread fills the ring, then waits for a buffer to be handed back
    assert thread.is_alive()
    del gather
    gc.collect()
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_prefetch_is_0_or_at_least_2_buffers_and_unset_on_a_gpu_only(tmp_path):
    values = {"shards": "s", "out": str(tmp_path)}
    assert resolve(TrainConfig, values).prefetch is None
    assert ring_depth(None, torch.device("cuda")) == 3 and ring_depth(None, CPU) == 0 and ring_depth(2, CPU) == 2
    assert resolve(TrainConfig, values | {"prefetch": "0"}).prefetch == 0
    with pytest.raises(ConfigError, match="prefetch"):
        resolve(TrainConfig, values | {"prefetch": "1"})


def synthetic(n: int, frames: int = 128) -> TrainData:
    rng = np.random.default_rng(0)

    def split(size: int) -> SplitArrays:
        return SplitArrays(
            rng.standard_normal((size, frames, 128)).astype(np.float16),
            rng.integers(0, 4, size),
            np.arange(size),
            tuple(map(str, range(size))),
        )

    return TrainData({"train": split(n), "val": split(8)}, ("a", "b", "c", "d"), frames, 128, "synthetic")


def config(out, prefetch: int, **extra) -> TrainConfig:
    values = {
        "shards": "synthetic",
        "out": str(out),
        "pretrained": "tiny",
        "batch_size": "2",
        "gradient_accumulation_steps": "3",
        "execution_batch_size": "4",  # passes of 4 and 2 per step of 6; the epoch's last step (37 = 6 x 6 + 1) has 1
        "num_train_epochs": "2",
        "device": "cpu",
        "prefetch": str(prefetch),
        **extra,
    }
    return resolve(TrainConfig, values)


def trained(run) -> dict[str, torch.Tensor]:
    """The last epoch's trainable parameters, every one of them."""
    return load_file(str(run / "checkpoints" / "epoch-002" / "trainable.safetensors"))


def same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def ring_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "genre_sweep.model.prefetch"]


@pytest.mark.parametrize("cached", [False, True], ids=["features", "prefix cache"])
def test_train_on_the_host_path_gives_the_same_parameters_with_and_without_the_ring(cached, tmp_path, caplog):
    data = synthetic(37)
    if cached:
        data = data.with_prefix(build_for("tiny", data, 10, "cpu"))
    assert not Gather((as_tensor(data.split("train").features),), 4, CPU).resident  # on a CPU: gathered on the host
    train(config(tmp_path / "without", 0), data)
    with caplog.at_level(logging.DEBUG, logger="genre_sweep.model.prefetch"):
        train(config(tmp_path / "with", 3), data)
    planned = [m for m in ring_lines(caplog) if m.startswith("prefetching")]
    assert planned == ["prefetching 13 passes, 2 buffers ahead"] * 2  # per epoch: 6 x (4 + 2) + 1
    assert sum(m.startswith("prefetched 13 passes") for m in ring_lines(caplog)) == 2  # all from the ring
    assert same_parameters(trained(tmp_path / "with"), trained(tmp_path / "without"))


def test_stopped_mid_epoch_and_resumed_with_the_ring_it_ends_with_the_no_ring_runs_parameters(tmp_path, caplog):
    data = synthetic(37)
    data = data.with_prefix(build_for("tiny", data, 10, "cpu"))
    train(config(tmp_path / "straight", 0), data)
    asked: list[int] = []

    def stop() -> bool:  # before epoch 2's step 3 (7 steps per epoch)
        asked.append(1)
        return len(asked) == 7 + 3 + 1

    with pytest.raises(Stopped) as stopped:
        train(config(tmp_path / "stopped", 3), data, stop=stop)
    with caplog.at_level(logging.DEBUG, logger="genre_sweep.model.prefetch"):
        train(config(tmp_path / "resumed", 3, resume=str(stopped.value.path)), data)
    planned, served = ring_lines(caplog)  # epoch 2 only, from its step 3 on: 3 x (4 + 2) + 1 passes
    assert planned == "prefetching 7 passes, 2 buffers ahead" and served.startswith("prefetched 7 passes")
    assert same_parameters(trained(tmp_path / "resumed"), trained(tmp_path / "straight"))
