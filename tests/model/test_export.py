"""The export is a Hugging Face model: AutoModelForAudioClassification and pipeline agree with predict, offline,
without genre-sweep; its adapter loads with peft on the base checkpoint."""

import json
import os
import subprocess
import sys

import numpy as np
import soundfile as sf
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForAudioClassification

from genre_sweep.model.configs import AdapterSettings
from genre_sweep.model.dora_ast import _load_backbone, backbone_config, build_model
from genre_sweep.model.export import export_model, load_exported
from genre_sweep.model.predict import main as predict_main

GENRES = ["brass", "drums", "strings"]

PLAIN_TRANSFORMERS = """
import json, sys
import numpy as np, soundfile as sf, torch
from transformers import AutoModelForAudioClassification, pipeline

folder, features, songs = sys.argv[1], sys.argv[2], sys.argv[3:]
model = AutoModelForAudioClassification.from_pretrained(folder, trust_remote_code=True)
with torch.no_grad():
    logits = model(torch.from_numpy(np.load(features))).logits
classify = pipeline("audio-classification", model=folder, trust_remote_code=True)
out = {"class": type(model).__name__, "id2label": model.config.id2label, "logits": logits.tolist(), "songs": {}}
for song in songs:
    wave, rate = sf.read(song, dtype="float32")
    out["songs"][song] = classify({"raw": wave, "sampling_rate": rate}, top_k=3)
print(json.dumps(out))
"""


def trained_like():
    """A tiny classifier with its adapters and head away from their initialisation (as after training)."""
    model = build_model("tiny", len(GENRES), AdapterSettings(min_layer=10), 256, 128, seed=3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def test_the_export_loads_with_plain_transformers_and_its_pipeline_agrees_with_predict(tmp_path):
    folder = export_model(trained_like(), tmp_path / "model", GENRES, 256, 128, base="tiny")
    songs = []  # 2 s each: shorter than a window, so predict and the pipeline see the same (padded) window
    for rate in (16000, 44100):  # the pipeline resamples like prepare and predict do
        song = tmp_path / f"song-{rate}.wav"
        n = int(2.0 * rate)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / rate) * np.hanning(n)).astype(np.float32)
        sf.write(song, wave, rate, subtype="FLOAT")
        songs.append(str(song))
    features = np.random.default_rng(0).standard_normal((2, 256, 128)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(folder), str(tmp_path / "features.npy"), *songs],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,  # not the repository: nothing of genre-sweep is imported
    )
    assert run.returncode == 0, run.stderr[-3000:]
    hf = json.loads(run.stdout.strip().splitlines()[-1])
    assert hf["class"] == "GenreSweepASTForAudioClassification"
    assert hf["id2label"] == {str(i): g for i, g in enumerate(GENRES)}
    ours, _ = load_exported(folder)
    with torch.no_grad():
        expected = ours(torch.from_numpy(features))
    torch.testing.assert_close(torch.tensor(hf["logits"]), expected, rtol=1e-5, atol=1e-5)

    out = tmp_path / "pred.csv"
    flags = ["--model", str(folder), "--out", str(out), "--windows", "1", "--device", "cpu", "--ray-threshold", "99"]
    assert predict_main([str(tmp_path), *flags]) == 0
    predicted = {r["source"]: r for r in json.loads(out.with_suffix(".json").read_text())}
    for song in songs:
        top = hf["songs"][song][0]
        assert top["label"] == predicted[song]["genre"], song
        assert abs(top["score"] - predicted[song]["confidence"]) < 1e-4, (song, top, predicted[song])

    # in a process with genre-sweep, the Auto classes know ours: no trust_remote_code
    assert type(AutoModelForAudioClassification.from_pretrained(folder)).__name__ == hf["class"]


def test_the_adapter_alone_rebuilds_the_adapted_backbone_with_peft_on_the_base(tmp_path):
    model = trained_like()
    folder = export_model(model, tmp_path / "model", GENRES, 256, 128, base="tiny")
    assert json.loads((folder / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "tiny"
    base, _ = _load_backbone(*backbone_config("tiny", 256, 128))  # the base checkpoint ("tiny": a seeded one)
    adapted = PeftModel.from_pretrained(base, str(folder / "adapter")).eval()
    x = torch.randn(2, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(
            adapted(x).last_hidden_state, model.backbone(x).last_hidden_state, rtol=1e-5, atol=1e-5
        )
    head = load_file(str(folder / "adapter" / "head.safetensors"))
    assert set(head) == {k for k in model.state_dict() if k.startswith("head")}


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
