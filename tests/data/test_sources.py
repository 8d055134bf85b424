from collections import Counter

import pytest

from genre_sweep.data.configs import GTZAN_GENRES
from genre_sweep.data.sources import Track, discover, labels_of, split_tracks
from genre_sweep.store import StoreError, StoreOptions


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize(("folder", "ext"), [("genres", "au"), ("genres_original", "wav")])
def test_both_public_gtzan_layouts_take_labels_from_folder_names(tmp_path, folder, ext):
    for g in ("blues", "jazz"):
        for i in range(2):
            _touch(tmp_path / folder / g / f"{g}.0000{i}.{ext}")
    tracks, rejected = discover(str(tmp_path / folder), GTZAN_GENRES, StoreOptions())
    assert rejected == []
    assert {(t.track_id, t.label) for t in tracks} == {
        (f"{g}/{g}.0000{i}", g) for g in ("blues", "jazz") for i in range(2)
    }


def test_without_pinned_genres_the_labels_are_the_folder_names_sorted(tmp_path):
    for g in ("strings", "brass", "drums", "synth pad", "choir"):  # not GTZAN's: any folder names
        _touch(tmp_path / g / "take-1.wav")
    _touch(tmp_path / "README.md")
    tracks, rejected = discover(str(tmp_path), None, StoreOptions())
    assert labels_of(tracks, str(tmp_path)) == ("brass", "choir", "drums", "strings", "synth pad")
    assert [r.reason for r in rejected] == ["not inside a genre folder"]
    with pytest.raises(StoreError, match=r"found only \['brass'\]; a classifier needs audio of at least two"):
        labels_of([t for t in tracks if t.label == "brass"], str(tmp_path))


def test_unknown_labels_stray_files_and_duplicates_are_rejected_with_reasons(tmp_path):
    _touch(tmp_path / "blues" / "blues.00000.wav")
    _touch(tmp_path / "blues" / "blues.00000.au")  # same track twice
    _touch(tmp_path / "polka" / "polka.00000.wav")
    _touch(tmp_path / "blues" / "notes.txt")
    _touch(tmp_path / "README.md")
    tracks, rejected = discover(str(tmp_path), GTZAN_GENRES, StoreOptions())
    assert [t.track_id for t in tracks] == ["blues/blues.00000"]
    reasons = {r.source.rsplit("/", 2)[-2] + "/" + r.source.rsplit("/", 1)[-1]: r.reason for r in rejected}
    assert "duplicate track" in reasons["blues/blues.00000.wav"] or "duplicate track" in reasons["blues/blues.00000.au"]
    assert "unknown label 'polka'" in reasons["polka/polka.00000.wav"]
    assert "not an audio file extension" in reasons["blues/notes.txt"]
    assert any("not inside a genre folder" in r.reason for r in rejected)
    assert len(rejected) == 4


def test_a_csv_manifest_resolves_relative_paths_and_rejects_bad_rows(tmp_path):
    _touch(tmp_path / "audio" / "a.wav")
    (tmp_path / "list.csv").write_text("path,label\naudio/a.wav,jazz\naudio/b.wav,polka\n,rock\naudio/c.wav,\n")
    tracks, rejected = discover(str(tmp_path / "list.csv"), GTZAN_GENRES, StoreOptions())
    assert tracks == [Track(str(tmp_path / "audio" / "a"), str(tmp_path / "audio" / "a.wav"), "jazz")]
    assert sorted(r.reason.split(" ")[0] for r in rejected) == ["empty", "no", "unknown"]


def test_a_manifest_without_path_and_label_columns_is_an_error(tmp_path):
    (tmp_path / "list.csv").write_text("file,genre\na.wav,jazz\n")
    with pytest.raises(StoreError, match="lacks column"):
        discover(str(tmp_path / "list.csv"), GTZAN_GENRES, StoreOptions())


def _tracks(per_label: int) -> list[Track]:
    return [Track(f"{g}/{g}.{i:05d}", f"/x/{g}/{i}.wav", g) for g in GTZAN_GENRES for i in range(per_label)]


def test_split_is_stratified_8_1_1_by_genre():
    tracks = _tracks(20)
    splits = split_tracks(tracks, (0.8, 0.1, 0.1), seed=0)
    per = Counter((t.label, splits[t.track_id]) for t in tracks)
    for g in GTZAN_GENRES:
        assert (per[(g, "train")], per[(g, "val")], per[(g, "test")]) == (16, 2, 2)


def test_split_is_deterministic_for_a_seed_and_changes_with_it():
    tracks = _tracks(10)
    a = split_tracks(tracks, (0.8, 0.1, 0.1), seed=1)
    assert a == split_tracks(list(reversed(tracks)), (0.8, 0.1, 0.1), seed=1)
    assert a != split_tracks(tracks, (0.8, 0.1, 0.1), seed=2)


def test_every_label_keeps_a_training_track_even_when_tiny():
    splits = split_tracks(_tracks(1), (0.1, 0.45, 0.45), seed=0)
    assert set(splits.values()) == {"train"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("m.csv", b"path,label\na.wav,blues,extra\n", "cannot be read as csv: CSV parse error"),
        ("m.parquet", b"PAR1 this is not parquet", "cannot be read as parquet"),
    ],
)
def test_a_malformed_source_manifest_is_one_store_error_naming_it(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(StoreError, match=f"manifest {tmp_path / name} {message}") as e:
        discover(str(tmp_path / name), GTZAN_GENRES, StoreOptions())
    assert "\n" not in str(e.value)
