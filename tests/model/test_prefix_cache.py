"""The frozen-prefix cache: same logits and validation accuracy as the full forward, and a key that refuses reuse."""

import dataclasses

import pytest
import torch

from genre_sweep.model import prefix_cache
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.prefix_cache import CacheMismatch, build_cache, cache_key, check_cache, prefix_weights_digest
from genre_sweep.model.train import predict_logits, split_inputs, train
from tests.model.conftest import quick_config

CPU = torch.device("cpu")


def tiny(data, min_layer=10, seed=0):
    return build_model("tiny", len(data.genres), AdapterSettings(min_layer=min_layer), data.frames, data.mel_bins, seed)


def test_cached_logits_match_the_full_forward_within_bf16(small_data):
    model = tiny(small_data, min_layer=11)
    with torch.no_grad():  # move the adapters and head away from their identity initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    cached = small_data.with_prefix(build_cache(model, small_data, start=10, device=CPU))
    val = small_data.split("val")
    full = predict_logits(model, val, 64, CPU)
    from_cache = predict_logits(model, val, 64, CPU, split_inputs(cached, "val"))
    assert cached.prefix.split("val").dtype == torch.bfloat16
    assert cached.prefix.split("val").shape[0] == len(val)
    torch.testing.assert_close(from_cache, full, rtol=2e-2, atol=2e-2)  # bf16 keeps 8 bits of mantissa
    assert (from_cache.argmax(1) == full.argmax(1)).float().mean() > 0.95


def test_training_from_the_cache_gives_the_same_validation_accuracy(small_data, tmp_path):
    cache = build_cache(tiny(small_data), small_data, start=10, device=CPU)
    cached = small_data.with_prefix(cache)
    plain = train(quick_config("x", tmp_path / "plain", num_train_epochs="3"), small_data)
    fast = train(quick_config("x", tmp_path / "cached", num_train_epochs="3"), cached)
    assert [m["prefix_cache"] for m in fast.history] == [True] * 3
    assert [m["prefix_cache"] for m in plain.history] == [False] * 3
    assert [m["val_clip_acc"] for m in fast.history] == [m["val_clip_acc"] for m in plain.history]
    for a, b in zip(fast.history, plain.history, strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=2e-2)
    assert plain.history[0]["first_step_s"] > 0 and fast.history[0]["first_step_s"] > 0


def test_the_key_refuses_states_of_other_weights_another_dataset_or_a_higher_layer(small_data, tmp_path):
    model = tiny(small_data)
    cache = build_cache(model, small_data, start=10, device=CPU)
    check_cache(cache, model, small_data, CPU)  # the same model and data: accepted
    with torch.no_grad():  # training the adapters and the head doesn't change the prefix: still accepted
        model.head[1].weight.add_(1.0)
    check_cache(cache, model, small_data, CPU)
    with pytest.raises(CacheMismatch, match="other weights or another dataset"):
        check_cache(cache, model, dataclasses.replace(small_data, fingerprint="another dataset"), CPU)
    with pytest.raises(CacheMismatch, match="above this model's lowest adapter"):
        check_cache(cache, tiny(small_data, min_layer=9), small_data, CPU)
    without_val = dataclasses.replace(cache, states={"train": cache.states["train"]})
    with pytest.raises(CacheMismatch, match="no states for all .* windows of split 'val'"):
        check_cache(without_val, model, small_data, CPU)
    with torch.no_grad():  # layer 10's FFN comes after the cached states: not part of the key
        model.backbone.layers[10].mlp.fc1.weight[0, 0] += 1e-3
    check_cache(cache, model, small_data, CPU)
    q = model.backbone.layers[10].attention.q_proj.weight
    kept = q.detach().clone()
    with torch.no_grad():  # but layer 10's attention comes before them
        q[0, 0] += 1e-3
    with pytest.raises(CacheMismatch, match="other weights"):
        check_cache(cache, model, small_data, CPU)
    with torch.no_grad():
        q.copy_(kept)
    check_cache(cache, model, small_data, CPU)
    with torch.no_grad():  # another checkpoint: one prefix weight differs
        model.backbone.layers[3].mlp.fc1.weight[0, 0] += 1e-3
    with pytest.raises(CacheMismatch, match="other weights"):
        check_cache(cache, model, small_data, CPU)
    with pytest.raises(CacheMismatch):  # and train() refuses it before any step
        train(quick_config("x", tmp_path / "r"), small_data.with_prefix(build_cache(model, small_data, 10, CPU)))


def test_the_key_names_the_kind_of_device_and_the_precision_the_states_were_computed_in(small_data):
    model = tiny(small_data)
    cpu = cache_key(model, small_data, 10, CPU)
    assert cpu == cache_key(model, small_data, 10, CPU, torch.float32)  # the CPU computes in fp32
    cuda = cache_key(model, small_data, 10, torch.device("cuda"))  # no GPU needed: the key only names it
    assert cuda == cache_key(model, small_data, 10, torch.device("cuda:1"), torch.bfloat16)
    cpu_bf16 = cache_key(model, small_data, 10, CPU, torch.bfloat16)
    cuda_fp32 = cache_key(model, small_data, 10, torch.device("cuda"), torch.float32)
    assert len({cpu, cuda, cpu_bf16, cuda_fp32}) == 4
    cache = build_cache(model, small_data, start=10, device=CPU)
    check_cache(cache, model, small_data, CPU)
    with pytest.raises(CacheMismatch, match="another kind of device or precision than cuda's"):
        check_cache(cache, model, small_data, torch.device("cuda"))  # a CPU-built store is not used on a GPU


def test_a_process_hashes_a_checkpoints_prefix_once_and_other_weights_again(small_data):
    prefix_cache._untouched_digests.clear()  # whatever earlier tests of this process hashed
    first = tiny(small_data, seed=1)
    hashed = prefix_cache.hashes
    digest = prefix_weights_digest(first, 10)
    assert prefix_cache.hashes == hashed + 1
    second = tiny(small_data, seed=2)  # another trial's model, from the same checkpoint: not hashed again
    assert prefix_weights_digest(second, 10) == digest and prefix_cache.hashes == hashed + 1
    assert prefix_weights_digest(second.to(torch.float64), 10) != digest  # another precision: hashed
    assert prefix_cache.hashes == hashed + 2
    third = tiny(small_data, seed=3)
    with torch.no_grad():  # other weights, the same checkpoint stamp: hashed, and another digest
        third.backbone.layers[2].attention.q_proj.weight[0, 0] += 1e-3
    changed = prefix_weights_digest(third, 10)
    assert changed != digest and prefix_cache.hashes == hashed + 3
    assert prefix_weights_digest(tiny(small_data, seed=4), 10) == digest and prefix_cache.hashes == hashed + 3
