import pytest
import torch

from genre_sweep.model.ast_layers import last_layer_tokens
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import ModelError, _load_backbone, backbone_config, build_model
from tests.conftest import save_small_pretrained


def _tiny(**kw):
    return build_model("tiny", 4, AdapterSettings(**kw), frames=256, mel_bins=128)


def test_only_dora_and_head_parameters_require_grad():
    model = _tiny(min_layer=10, rank=2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("head.") or "lora_" in n for n in trainable)
    adapted = {n.split(".mlp.fc2")[0] for n in trainable if "lora_" in n}
    assert adapted == {"backbone.layers.10", "backbone.layers.11"}
    assert not any(
        p.requires_grad for n, p in model.named_parameters() if n.startswith(("head_norm", "backbone.embeddings"))
    )


def test_dora_scale_is_alpha():
    model = _tiny(min_layer=11, rank=3, alpha=4.25)
    assert model.backbone.layers[11].mlp.fc2.scaling["default"] == pytest.approx(4.25)


def test_at_initialisation_dora_leaves_the_frozen_models_hidden_states_unchanged():
    model = _tiny(min_layer=8, rank=2)
    plain, _ = _load_backbone(*backbone_config("tiny", 256, 128))
    x = torch.randn(3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x).last_hidden_state, plain(x).last_hidden_state, rtol=0, atol=1e-6)


def test_the_frozen_prefix_and_the_rest_compose_to_the_full_forward():
    model = _tiny(min_layer=10).eval()
    x = torch.randn(2, 256, 128)
    with torch.no_grad():
        full = model.full_forward(x)  # every token through every layer (HF's own ASTModel forward)
        torch.testing.assert_close(model(x), full, rtol=1e-5, atol=1e-5)
        for start in (0, 5, 10, 11):
            torch.testing.assert_close(model.forward_from(model.prefix(x, start), start), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", ["tiny", "base-random"])
def test_the_last_layer_for_the_two_pooled_tokens_equals_the_full_layer_with_the_same_gradients(config):
    model = build_model(config, 4, AdapterSettings(min_layer=10), frames=128, mel_bins=128)
    with torch.no_grad():  # adapters away from their identity initialisation
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    layer = model.backbone.layers[-1]
    h = torch.randn(3, model.backbone.embeddings(torch.zeros(1, 128, 128)).shape[1], model.backbone.config.hidden_size)
    trainable = [p for p in layer.parameters() if p.requires_grad]
    full = layer(h, None)[:, :2]
    expected = torch.autograd.grad(full.square().sum(), trainable)
    short = last_layer_tokens(layer, h)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(short.square().sum(), trainable), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())  # float32 sums


def test_a_local_pretrained_folder_loads_offline_and_must_match_the_shards(tmp_path):
    saved = save_small_pretrained(tmp_path / "ast")
    model = build_model(str(tmp_path / "ast"), 4, AdapterSettings(min_layer=1), frames=1024, mel_bins=128)
    torch.testing.assert_close(model.head_norm.weight, saved.classifier.layernorm.weight)
    torch.testing.assert_close(
        model.backbone.layers[0].mlp.fc1.weight, saved.audio_spectrogram_transformer.layers[0].mlp.fc1.weight
    )
    with pytest.raises(ModelError, match="--frames 1024"):
        build_model(str(tmp_path / "ast"), 4, AdapterSettings(min_layer=1), frames=256, mel_bins=128)


def test_a_hub_id_offline_fails_fast_naming_the_local_folder_alternative():
    with pytest.raises(ModelError, match="save_pretrained\\(DIR\\).*--pretrained DIR"):
        build_model("MIT/ast-finetuned-audioset-10-10-0.4593", 10, AdapterSettings(), 1024, 128)


def test_min_layer_beyond_the_model_is_refused():
    with pytest.raises(ModelError, match="must be in \\[0, 11\\]"):
        _tiny(min_layer=12)


def test_a_process_loads_a_checkpoint_once_and_each_model_gets_its_own_copy(tmp_path):
    folder = str(tmp_path / "ast")
    saved = save_small_pretrained(tmp_path / "ast")
    first = build_model(folder, 4, AdapterSettings(min_layer=1), frames=1024, mel_bins=128)
    second = build_model(folder, 4, AdapterSettings(min_layer=1), frames=1024, mel_bins=128, seed=1)
    assert (first.backbone_reused, second.backbone_reused) == (False, True)  # the second came from memory
    with torch.no_grad():  # a model's weights are its own: changing one's frozen weights leaves the next alone
        first.backbone.layers[0].mlp.fc1.weight.add_(1.0)
    third = build_model(folder, 4, AdapterSettings(min_layer=1), frames=1024, mel_bins=128)
    want = saved.audio_spectrogram_transformer.layers[0].mlp.fc1.weight
    for model in (second, third):
        torch.testing.assert_close(model.backbone.layers[0].mlp.fc1.weight, want, rtol=0, atol=0)
    with torch.no_grad():  # a checkpoint rewritten in place is read again
        want.mul_(2.0)
    saved.save_pretrained(folder)
    rewritten = build_model(folder, 4, AdapterSettings(min_layer=1), frames=1024, mel_bins=128)
    assert not rewritten.backbone_reused
    torch.testing.assert_close(rewritten.backbone.layers[0].mlp.fc1.weight, want, rtol=0, atol=0)  # doubled
