"""prepare on real local Ray over tiny generated corpora, with every kind of bad input mixed in."""

import hashlib
import json
import logging
import shutil
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from genre_sweep.config import resolve
from genre_sweep.data.audio import load_clip
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.features import clip_windows
from genre_sweep.data.inspect import main as inspect_main
from genre_sweep.data.manifest import DatasetError
from genre_sweep.data.pipeline import PrepareError, run_prepare
from genre_sweep.data.shards import features_array, open_dataset
from genre_sweep.store import StoreError
from tests.conftest import make_corpus

GENRES = ("blues", "jazz", "metal")


def _config(source, out, **kw) -> PrepareConfig:
    return resolve(PrepareConfig, {"source": str(source), "out": str(out), "genres": ",".join(GENRES), **kw})


def _wav(path, wave, sr, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, sr, subtype=subtype)


def _tone(seconds, sr, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = (0.4 * np.sin(2 * np.pi * 330 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
    return np.stack([x, x[::-1]], axis=1) if channels == 2 else x


@pytest.fixture(scope="module")
def messy_corpus(tmp_path_factory):
    """3 genres x 4 good clips, plus every bad input of the issue (all under blues/ unless noted)."""
    root = make_corpus(tmp_path_factory.mktemp("messy"), per_genre=4, genres=GENRES)
    good = (root / "jazz" / "jazz.00000.wav").read_bytes()
    b = root / "blues"
    (b / "truncated.wav").write_bytes(good[: len(good) // 3][:60])
    (b / "empty.wav").write_bytes(b"")
    (b / "text.mp3").write_bytes(b"ID3? no, this is a text file with an audio extension")
    _wav(b / "silence.wav", np.zeros(22050 * 11, np.float32), 22050)
    nan = _tone(11, 22050)
    nan[1000] = np.nan
    _wav(b / "nan.wav", nan, 22050, "FLOAT")
    _wav(b / "tooshort.wav", _tone(0.5, 22050), 22050)
    _wav(b / "short.wav", _tone(4, 22050), 22050)  # shorter than a window: padded
    _wav(b / "stereo.wav", _tone(11, 44100, channels=2), 44100)
    _wav(b / "rate8k.wav", _tone(11, 8000), 8000)
    _wav(b / "rate48k.wav", _tone(11, 48000), 48000)
    _wav(b / "u8.wav", _tone(11, 22050), 22050, "PCM_U8")
    _wav(b / "float.wav", _tone(11, 22050), 22050, "FLOAT")
    _wav(root / "polka" / "polka.00000.wav", _tone(11, 22050), 22050)
    _wav(b / "rate44101.wav", _tone(11, 44101), 44101)  # 16000/44101 in lowest terms: GBs of sinc kernel if exact
    _wav(b / "rate768k.wav", _tone(11, 16000), 768000)  # a header above 384 kHz (its 11 s of samples last 0.23 s)
    (b / "zz-copy.wav").write_bytes((b / "blues.00000.wav").read_bytes())  # the same recording twice
    (b / "loop").symlink_to("..")  # blues/loop/blues/loop/... if followed
    return root


@pytest.fixture(scope="module")
def prepared(ray_local, messy_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards") / "ds"
    manifest = run_prepare(_config(messy_corpus, out))
    return out, manifest


EXPECTED_REJECTIONS = {
    "truncated.wav": "truncated",
    "empty.wav": "empty file",
    "text.mp3": "cannot decode",
    "silence.wav": "digital silence",
    "nan.wav": "NaN or infinite",
    "tooshort.wav": "too short",
    "polka.00000.wav": "unknown label",
    "rate768k.wav": "sample rate 768000 Hz is above the 384000 Hz accepted",
    "zz-copy.wav": "duplicate of ",
    "loop": "a folder already walked (a loop or a second path): not followed",
}


def test_every_bad_input_is_rejected_with_its_reason_and_nothing_else_is(prepared, messy_corpus):
    _, manifest = prepared
    got = {r["source"].rsplit("/", 1)[-1]: r["reason"] for r in manifest["rejected"]}
    assert set(got) == set(EXPECTED_REJECTIONS)
    for name, reason in EXPECTED_REJECTIONS.items():
        assert reason in got[name], (name, got[name])
    assert got["zz-copy.wav"].startswith(f"duplicate of {messy_corpus / 'blues' / 'blues.00000.wav'} (the same content")
    assert manifest["summary"]["rejected"] == len(EXPECTED_REJECTIONS)


def test_converted_inputs_become_rows(prepared):
    out, manifest = prepared
    ds = open_dataset(str(out))
    sources = set()
    for split in ("train", "val", "test"):
        sources |= {s.rsplit("/", 1)[-1] for s in ds.read_split(split, ["source"]).column("source").to_pylist()}
    for name in ("short.wav", "stereo.wav", "rate8k.wav", "rate48k.wav", "rate44101.wav", "u8.wav", "float.wav"):
        assert name in sources
    # 12 good + 16 other blues inputs + polka, all accounted for
    assert sum(manifest["summary"]["tracks_out"].values()) + manifest["summary"]["rejected"] == 12 + 16 + 1


def test_manifest_counts_match_the_shards(prepared):
    out, manifest = prepared
    ds = open_dataset(str(out))
    for split in ("train", "val", "test"):
        table = ds.read_split(split, ["genre", "track_id"])
        rows = Counter(table.column("genre").to_pylist())
        tracks = Counter(
            g for g, _ in set(zip(table.column("genre").to_pylist(), table.column("track_id").to_pylist(), strict=True))
        )
        for g in GENRES:
            assert manifest["splits"][split][g] == {"tracks": tracks.get(g, 0), "rows": rows.get(g, 0)}
    assert manifest["features"]["shape"] == [1024, 128]
    assert len(manifest["sources"]["fingerprint"]) == 64


def test_only_training_tracks_are_augmented_once_per_effect_with_recorded_parameters(prepared):
    out, manifest = prepared
    ds = open_dataset(str(out))
    train = ds.read_split("train", ["track_id", "variant", "effect_params", "window", "n_windows"]).to_pylist()
    variants = defaultdict(set)
    for r in train:
        variants[r["track_id"]].add(r["variant"])
        if r["variant"] != "original":
            assert json.loads(r["effect_params"])
    assert all(v == {"original", *manifest["config"]["effects"]} for v in variants.values())
    for split in ("val", "test"):
        assert set(ds.read_split(split, ["variant"]).column("variant").to_pylist()) <= {"original"}


def test_no_track_crosses_splits(prepared):
    out, _ = prepared
    ds = open_dataset(str(out))
    seen = {s: set(ds.read_split(s, ["track_id"]).column("track_id").to_pylist()) for s in ("train", "val", "test")}
    assert not (seen["train"] & seen["val"]) and not (seen["train"] & seen["test"]) and not (seen["val"] & seen["test"])


def test_shard_features_equal_features_computed_directly(prepared, messy_corpus):
    out, _ = prepared
    ds = open_dataset(str(out))
    clip = load_clip((messy_corpus / "jazz" / "jazz.00001.wav").read_bytes(), 16000, 1.0)
    expected, _ = clip_windows(clip.wave, 1024, 128)
    found = 0
    for split in ("train", "val", "test"):
        table = ds.read_split(split)
        for i, r in enumerate(table.select(["track_id", "variant", "window"]).to_pylist()):
            if r["track_id"] == "jazz/jazz.00001" and r["variant"] == "original":
                got = features_array(table.slice(i, 1))[0].astype(np.float32)
                np.testing.assert_allclose(got, expected[r["window"]], atol=2e-3)  # float16 storage
                found += 1
    assert found == len(expected)


def test_two_runs_write_identical_shards(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=2, genres=GENRES)
    a, b = tmp_path / "a", tmp_path / "b"
    ma = run_prepare(_config(corpus, a))
    mb = run_prepare(_config(corpus, b))
    va, vb = a / ma["version_dir"], b / mb["version_dir"]  # each run's own version folder
    files = sorted(p.relative_to(va) for p in va.rglob("*.parquet"))
    assert files == sorted(p.relative_to(vb) for p in vb.rglob("*.parquet")) and files
    for f in files:
        assert (va / f).read_bytes() == (vb / f).read_bytes(), f
    assert ma["shards"] == mb["shards"] and ma["sources"]["fingerprint"] == mb["sources"]["fingerprint"]


def test_a_dataset_is_replaced_only_with_overwrite_and_leaves_no_older_version(
    ray_local, prepared, messy_corpus, tmp_path
):
    out, _ = prepared
    with pytest.raises(StoreError, match="already holds a dataset; pass --overwrite"):
        run_prepare(_config(messy_corpus, out))
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    old_version = open_dataset(str(copy)).manifest["version_dir"]
    manifest = run_prepare(_config(messy_corpus, copy, overwrite=True, effects="none"))
    assert open_dataset(str(copy)).manifest["config"]["effects"] == []
    assert sorted(p.name for p in copy.iterdir()) == sorted(["manifest.json", manifest["version_dir"]])
    assert manifest["version_dir"] != old_version


def test_readers_refuse_a_dataset_without_manifest_or_with_a_missing_shard(prepared, tmp_path):
    out, manifest = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / manifest["version_dir"] / manifest["shards"][0]["path"]).unlink()
    with pytest.raises(StoreError, match=r"shard .* is missing"):
        open_dataset(str(copy)).read_split(manifest["shards"][0]["split"])
    (copy / "manifest.json").unlink()
    with pytest.raises(StoreError, match="no manifest.json"):
        open_dataset(str(copy))


def test_a_genre_left_without_training_rows_stops_the_run_and_removes_its_shards(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=2, genres=("blues", "jazz"))
    for f in (corpus / "jazz").iterdir():
        f.write_bytes(b"")
    with pytest.raises(PrepareError, match=r"\['jazz'\] ended up with no training rows"):
        run_prepare(_config(corpus, tmp_path / "out", genres="blues,jazz"))
    with pytest.raises(StoreError, match="no manifest.json"):
        open_dataset(str(tmp_path / "out"))
    assert list((tmp_path / "out").iterdir()) == []  # the blues shards it wrote went with its version folder


def test_a_genre_with_no_tracks_at_all_stops_before_any_work(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=1, genres=("blues", "jazz"))
    with pytest.raises(PrepareError, match=r"\['metal'\] have no usable tracks"):
        run_prepare(_config(corpus, tmp_path / "out"))


def test_without_genres_the_labels_are_the_sources_folder_names_recorded_in_the_manifest(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=2, seconds=3.0, genres=("blues", "jazz"))
    (corpus / "blues").rename(corpus / "woodwinds")  # names prepare has never seen
    (corpus / "jazz").rename(corpus / "percussion")
    cfg = resolve(PrepareConfig, {"source": str(corpus), "out": str(tmp_path / "out"), "effects": "none"})
    manifest = run_prepare(cfg)
    assert manifest["genres"] == ["percussion", "woodwinds"]  # sorted; label i is genres[i]
    assert open_dataset(str(tmp_path / "out")).genres == ["percussion", "woodwinds"]


def test_shards_are_parquet_with_float16_tensor_features(prepared):
    out, manifest = prepared
    table = pq.read_table(out / manifest["version_dir"] / manifest["shards"][0]["path"])
    assert str(table.schema.field("features").type.value_type) == "halffloat"
    assert features_array(table).shape[1:] == (1024, 128)
    assert {"label", "genre", "track_id", "window", "variant", "effect_params", "split"} <= set(table.column_names)


def test_a_task_resource_no_node_offers_is_refused_before_any_task(ray_local, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=1, seconds=3.0, genres=GENRES)
    with pytest.raises(PrepareError, match="--task-resource cpu_node: no node of this cluster advertises it"):
        run_prepare(_config(corpus, tmp_path / "out", task_resource="cpu_node"))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_the_manifest_records_each_shards_sha256_as_written(prepared):
    out, manifest = prepared
    for shard in manifest["shards"]:
        data = (out / manifest["version_dir"] / shard["path"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest(), shard["path"]


def _copy_with(out, manifest, dest, files=(), **changes):
    """A copy of the dataset at ``out`` holding the shards ``files`` only, with ``changes`` made to its manifest."""
    for shard in files:
        target = dest / manifest["version_dir"] / shard["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / manifest["version_dir"] / shard["path"], target)
    dest.mkdir(exist_ok=True)
    (dest / "manifest.json").write_text(json.dumps({**manifest, **changes}))
    return dest


def test_a_flipped_byte_in_a_shard_is_one_line_naming_it(prepared, tmp_path):
    out, manifest = prepared
    shard = manifest["shards"][0]
    copy = _copy_with(out, manifest, tmp_path / "copy", [shard])
    path = copy / manifest["version_dir"] / shard["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, in the middle of the features
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as e:
        open_dataset(str(copy)).read_shard(shard)
    assert str(e.value).startswith(f"dataset {copy}: shard {shard['path']} is damaged: its sha256 is ")
    assert "\n" not in str(e.value)


def test_a_manifest_without_checksums_still_loads_with_a_note_that_it_cannot_be_verified(prepared, tmp_path, caplog):
    out, manifest = prepared
    shard = manifest["shards"][0]
    old = [{k: v for k, v in s.items() if k != "sha256"} for s in manifest["shards"]]
    copy = _copy_with(out, manifest, tmp_path / "old", [shard], shards=old)
    with caplog.at_level(logging.WARNING, logger="genre_sweep.data.shards"):
        ds = open_dataset(str(copy))
    assert ds.read_shard(old[0]).num_rows == shard["rows"]
    assert [r.getMessage() for r in caplog.records] == [
        f"dataset {copy}: its manifest predates shard checksums; its shards cannot be verified"
    ]


def _without(manifest, *keys):
    return {k: v for k, v in manifest.items() if k not in keys}


MALFORMED = {  # name: (manifest from the real one, what the error says after "manifest.json ")
    "a list": (lambda m: [m], "is not a genre-sweep manifest: it holds a JSON list, not an object"),
    "missing keys": (
        lambda m: _without(m, "genres", "shards"),
        "is not a genre-sweep manifest: it lacks the key(s) genres, shards",
    ),
    "a shard path with ..": (
        lambda m: {**m, "shards": [{**m["shards"][0], "path": "../../../etc/passwd"}]},
        "is not a genre-sweep manifest: shards[0]: path '../../../etc/passwd' leaves the dataset",
    ),
    "an absolute shard path": (
        lambda m: {**m, "shards": [{**m["shards"][0], "path": "/etc/passwd"}]},
        "is not a genre-sweep manifest: shards[0]: path '/etc/passwd' leaves the dataset",
    ),
    "a version folder ..": (
        lambda m: {**m, "version_dir": ".."},
        "is not a genre-sweep manifest: version_dir '..' is not a folder name inside the dataset",
    ),
    "rows as text": (
        lambda m: {**m, "shards": [{**m["shards"][0], "rows": "12"}]},
        "is not a genre-sweep manifest: shards[0]: rows must be an integer >= 0, got '12'",
    ),
    "features as a list": (
        lambda m: {**m, "features": [1024, 128]},
        "is not a genre-sweep manifest: features must be an object, got [1024, 128]",
    ),
    "not UTF-8": (lambda m: b"\xff\xfe{}", "is not JSON: "),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_manifest_that_is_not_ours_is_one_line_naming_it_and_what_is_wrong(prepared, tmp_path, case, capsys):
    _, manifest = prepared
    change, message = MALFORMED[case]
    content = change(manifest)
    path = tmp_path / "ds" / "manifest.json"
    path.parent.mkdir()
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(DatasetError) as e:
        open_dataset(str(path.parent))
    assert str(e.value).startswith(f"{path} {message}") and "\n" not in str(e.value)
    assert inspect_main(["--shards", str(path.parent)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {e.value}"]


def test_inspect_on_a_truncated_or_foreign_shard_is_one_line_naming_it_with_exit_2(prepared, tmp_path, capsys):
    out, manifest = prepared
    copy = _copy_with(out, manifest, tmp_path / "copy", manifest["shards"])
    assert inspect_main(["--shards", str(copy)]) == 0
    assert "columns: features extension<arrow.fixed_shape_tensor" in capsys.readouterr().out
    shard = manifest["shards"][-1]
    path = copy / manifest["version_dir"] / shard["path"]
    path.write_bytes(path.read_bytes()[:-100])  # cut short, as a full disk or an interrupted copy leaves it
    assert inspect_main(["--shards", str(copy)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: dataset {copy}: shard {shard['path']} is not a readable Parquet file: "
        "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."
    ]
    pq.write_table(pa.table({"x": [1, 2]}), path)  # another program's Parquet file in its place
    assert inspect_main(["--shards", str(copy)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: dataset {copy}: shard {shard['path']} is not a genre-sweep shard: it lacks the")


def test_a_blocks_record_covers_its_tracks_only_when_each_is_whole_in_it():
    import pyarrow as pa

    from genre_sweep.data.pipeline import _whole_tracks

    def block(rows):
        names = ["track_id", "split", "variant", "window", "n_windows", "reject_reason"]
        return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})

    whole = [("a", "train", v, w, 2, None) for v in ("original", "echo") for w in (0, 1)]
    rejected = [("b", "val", None, None, None, "too short")]
    assert _whole_tracks(block(whole + rejected), ("echo",)) == ["a", "b"]
    assert _whole_tracks(block(whole[:-1]), ("echo",)) == []  # a window in another block
    assert _whole_tracks(block(whole[:2]), ("echo",)) == []  # the echo copy in another block
    assert _whole_tracks(block([("c", "val", "original", 0, 1, None)]), ("echo",)) == ["c"]  # no copies off train
