"""The export is a Hugging Face model folder as the Hub has them: in a process where genre-sweep cannot be imported,
its card parses, AutoModelForAudioClassification loads it, its own pipeline names each whole song's genre as
``predict`` does, and peft rebuilds it from the adapter folder over the base checkpoint; nothing in it names the
machine that wrote it."""

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch
from transformers import ASTConfig, ASTForAudioClassification, AutoModelForAudioClassification

from genre_sweep.model.card import CardFacts, Result
from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import build_model
from genre_sweep.model.export import export_model, load_exported
from genre_sweep.model.predict import main as predict_main

GENRES = ["brass", "drums", "strings"]

# Run in a fresh interpreter in which ``import genre_sweep`` fails: the folder must stand on its own.
WITHOUT_GENRE_SWEEP = """
import importlib.abc, json, sys

class NoGenreSweep(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "genre_sweep":
            raise ImportError("genre_sweep is not importable in this process")

sys.meta_path.insert(0, NoGenreSweep())
import numpy as np, torch, yaml
from peft import PeftModel
from transformers import AutoConfig, AutoModelForAudioClassification, pipeline

folder, base, features, songs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
try:
    import genre_sweep
    raise SystemExit("genre_sweep was importable")
except ImportError:
    pass
card = open(folder + "/README.md").read()
meta = yaml.safe_load(card.split("---")[1])
model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True).eval()
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
adapted = AutoModelForAudioClassification.from_pretrained(base, config=config)
adapted = PeftModel.from_pretrained(adapted, folder, subfolder="adapter").eval()
x = torch.from_numpy(np.load(features))
with torch.no_grad():
    logits, peft_logits = model(x).logits, adapted(input_values=x).logits
classify = pipeline("audio-classification", model=folder, trust_remote_code=True)
out = {
    "meta": meta,
    "class": type(model).__name__,
    "pipeline": type(classify).__name__,
    "peft": type(adapted).__name__,
    "id2label": model.config.id2label,
    "logits": logits.tolist(),
    "peft_logits": peft_logits.tolist(),
    "songs": {song: classify(song) for song in songs},
}
print(json.dumps(out))
"""


def trained_like(base: str = "tiny"):
    """A tiny classifier with its adapters and head away from their initialisation (as after training)."""
    model = build_model(base, len(GENRES), AdapterSettings(min_layer=10), 256, 128, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def base_checkpoint(folder):
    """A small AST checkpoint as the Hub holds one (ASTForAudioClassification), saved to ``folder``."""
    torch.manual_seed(5)
    config = ASTConfig(
        hidden_size=64, num_hidden_layers=12, num_attention_heads=4, intermediate_size=128, max_length=256
    )
    ASTForAudioClassification(config).save_pretrained(folder)
    return folder


def songs_of_several_lengths(folder):
    """A song shorter than a window (256 frames: 2.56 s), one of one window, and stereo songs of several windows
    (OGG and MP3 at 44.1 kHz, which both decode and resample) whose parts differ (a quiet tone, noise, clicks), so
    their windows disagree and the vote is a real one."""
    folder.mkdir()
    rng = np.random.default_rng(0)

    def part(kind: str, seconds: float, rate: int) -> np.ndarray:
        t = np.arange(int(seconds * rate)) / rate
        if kind == "tone":
            return 0.02 * np.sin(2 * np.pi * 100 * t)
        if kind == "noise":
            return 0.8 * rng.standard_normal(len(t)).clip(-1.2, 1.2)
        clicks = np.zeros(len(t))
        clicks[:: rate // 20] = 0.9
        return clicks

    paths = []
    for name, parts, rate, channels in [
        ("short.flac", [("noise", 1.5)], 16000, 1),
        ("one-window.flac", [("tone", 1.0), ("noise", 1.56)], 16000, 1),
        ("several.ogg", [("tone", 4.5), ("noise", 4.5)], 44100, 2),
        ("several.mp3", [("clicks", 3.5), ("noise", 3.8)], 44100, 2),
    ]:
        wave = np.concatenate([part(kind, seconds, rate) for kind, seconds in parts])
        wave = np.stack([wave, 0.5 * wave], axis=1) if channels == 2 else wave
        path = folder / name
        sf.write(path, wave.astype(np.float32), rate)
        paths.append(str(path))
    return paths


def test_the_export_stands_alone_as_a_hub_folder_and_its_pipeline_agrees_with_predict_on_whole_songs(tmp_path):
    base = base_checkpoint(tmp_path / "base-ast")
    facts = CardFacts(
        name="genres-demo",
        results=(Result("accuracy", "clip accuracy", 0.8, "test", 30, "seed 1 (exported)", (0.63, 0.9)),),
        fingerprint="ab" * 32,
    )
    folder = export_model(trained_like(str(base)), tmp_path / "model", GENRES, 256, 128, base=str(base), card=facts)
    songs = songs_of_several_lengths(tmp_path / "songs")
    features = np.random.default_rng(0).standard_normal((2, 256, 128)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)

    for file in folder.rglob("*"):  # push_to_hub-ready: nothing names this machine's paths
        if file.suffix in (".json", ".md", ".py"):
            assert str(tmp_path) not in file.read_text(), file
    adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "base-ast"
    assert adapter_config["task_type"] == "SEQ_CLS" and adapter_config["modules_to_save"] == ["head_norm", "head"]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_GENRE_SWEEP, str(folder), str(base), str(tmp_path / "features.npy"), *songs],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    hf = json.loads(run.stdout.strip().splitlines()[-1])

    meta = hf["meta"]
    assert meta["pipeline_tag"] == "audio-classification" and meta["library_name"] == "transformers"
    assert "base_model" not in meta  # a local folder is no Hub id
    (result,) = meta["model-index"][0]["results"]
    assert result["dataset"]["split"] == "test" and result["metrics"][0] == {
        "type": "accuracy",
        "value": 0.8,
        "name": "clip accuracy 0.800 on the test split (30 clips, seed 1 (exported), 95 % interval 0.630-0.900)",
    }
    assert hf["class"] == "GenreSweepASTForAudioClassification" and hf["pipeline"] == "SongGenrePipeline"
    assert hf["id2label"] == {str(i): g for i, g in enumerate(GENRES)}
    ours, _ = load_exported(folder)
    with torch.no_grad():
        expected = ours(torch.from_numpy(features))
    torch.testing.assert_close(torch.tensor(hf["logits"]), expected, rtol=1e-5, atol=1e-5)
    assert hf["peft"] == "PeftModelForSequenceClassification"  # the adapter and head, unmerged, on the base
    torch.testing.assert_close(torch.tensor(hf["peft_logits"]), expected, rtol=1e-4, atol=1e-4)

    out = tmp_path / "pred.csv"
    flags = ["--model", str(folder), "--out", str(out), "--device", "cpu", "--ray-threshold", "99"]
    assert predict_main([str(tmp_path / "songs"), *flags]) == 0
    predicted = {r["source"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    windows = {}
    for song in songs:
        top, p = hf["songs"][song][0], predicted[song]
        assert [g["label"] for g in hf["songs"][song]].count(top["label"]) == 1 and len(hf["songs"][song]) == 3
        assert (top["label"], top["votes"], top["windows"]) == (p["genre"], p["votes"], p["windows"]), song
        assert abs(top["confidence"] - p["confidence"]) < 1e-3 and top["score"] == p["votes"] / p["windows"]
        windows[song.rsplit("/", 1)[-1]] = p["windows"]
    assert windows == {"short.flac": 1, "one-window.flac": 1, "several.ogg": 20, "several.mp3": 20}
    assert all(hf["songs"][s][0]["votes"] < 20 for s in songs[2:])  # the windows disagreed: a real vote

    # in a process with genre-sweep, the Auto classes know ours: no trust_remote_code
    assert type(AutoModelForAudioClassification.from_pretrained(folder)).__name__ == hf["class"]


def test_a_base_named_by_genre_sweep_or_the_hub_is_kept_as_named_and_the_card_says_how_to_load_it(tmp_path):
    folder = export_model(trained_like(), tmp_path / "model", GENRES, 256, 128, base="tiny")
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    card = (folder / "README.md").read_text()
    assert "No test result" in card and 'BASE = "tiny"' in card and "random weights" in card

    from genre_sweep.model.card import model_card

    hub = model_card(CardFacts(), "MIT/ast-finetuned-audioset-10-10-0.4593", GENRES, 1024, 20, None)
    assert "base_model: MIT/ast-finetuned-audioset-10-10-0.4593" in hub
    assert 'BASE = "MIT/ast-finetuned-audioset-10-10-0.4593"' in hub
    small = model_card(CardFacts(), "small", GENRES, 1024, 20, "small")
    assert "base_model:" not in small and 'BASE = "model/pretrained/small-ast"' in small
    assert "10.24 s" in hub and "vote of 20 windows" in hub


def _tampered(folder, how: str) -> None:
    config, info = folder / "config.json", folder / "genre_sweep.json"
    if how == "swapped labels":
        values = json.loads(config.read_text())
        values["id2label"] = {"0": GENRES[1], "1": GENRES[0], "2": GENRES[2]}
        config.write_text(json.dumps(values))
    elif how == "fewer genres":
        values = json.loads(info.read_text())
        values["genres"] = GENRES[:2]
        info.write_text(json.dumps(values))
        values = json.loads(config.read_text())
        values["id2label"] = {"0": GENRES[0], "1": GENRES[1]}
        config.write_text(json.dumps(values))
    elif how == "truncated weights":
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1000])
    elif how == "bad json":
        info.write_text(info.read_text()[:-10])
    elif how == "missing key":
        values = json.loads(info.read_text())
        del values["trained_with"]
        info.write_text(json.dumps(values))


TAMPERED = {
    "swapped labels": "config.json: its id2label .* disagrees with the genres of genre_sweep.json",
    "fewer genres": "model.safetensors does not fit the model .* \\(2 genres\\): size mismatch",
    "truncated weights": "model.safetensors: cannot read the weights .*damaged",
    "bad json": "genre_sweep.json: not valid JSON",
    "missing key": "genre_sweep.json: not an export's settings \\(KeyError",
}


def test_a_tampered_export_is_refused_in_one_line_naming_the_file(tmp_path, capsys):
    import shutil

    import pytest

    from genre_sweep.model.dora_ast import ModelError

    exported = export_model(trained_like(), tmp_path / "export", GENRES, 256, 128)
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).normal(0, 0.1, 16000 * 6).astype("float32"), 16000)
    for how, message in TAMPERED.items():
        folder = tmp_path / how.replace(" ", "-")
        shutil.copytree(exported, folder)
        _tampered(folder, how)
        with pytest.raises(ModelError, match=message):
            load_exported(folder)
        capsys.readouterr()
        assert predict_main([str(song), "--model", str(folder), "--out", str(tmp_path / f"{how}.csv")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and str(folder) in err[0], (how, err)
