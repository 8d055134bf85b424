import hashlib
import os
from collections import Counter

import pytest

from genre_sweep.data.configs import GTZAN_GENRES, TrackSettings
from genre_sweep.data.sources import Track, discover, labels_of, split_tracks, work_items
from genre_sweep.data.tracks import process_track
from genre_sweep.store import StoreError, StoreOptions


def _touch(path, data=None):
    """A file whose content is its own path unless given: distinct files, distinct contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(str(path).encode() if data is None else data)


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
    sha = hashlib.sha256(str(tmp_path / "audio" / "a.wav").encode()).hexdigest()
    assert tracks == [Track(str(tmp_path / "audio" / "a"), str(tmp_path / "audio" / "a.wav"), "jazz", sha)]
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


def test_a_folder_link_loop_is_walked_once_and_a_dangling_link_is_listed(tmp_path):
    for g in ("blues", "jazz"):
        for i in range(3):
            _touch(tmp_path / g / f"{g}.0000{i}.wav")
    os.symlink("..", tmp_path / "blues" / "loop")  # blues/loop/blues/loop/... for ever, if followed
    os.symlink("../jazz", tmp_path / "blues" / "more")  # a second path to a folder walked anyway
    os.symlink(tmp_path / "nowhere.wav", tmp_path / "jazz" / "ghost.wav")
    tracks, rejected = discover(str(tmp_path), None, StoreOptions())
    assert [t.track_id for t in tracks] == [f"{g}/{g}.0000{i}" for g in ("blues", "jazz") for i in range(3)]
    reasons = {os.path.relpath(r.source, tmp_path): r.reason for r in rejected}
    assert reasons == {
        "blues/loop": f"link to {tmp_path}, a folder already walked (a loop or a second path): not followed",
        "blues/more": f"link to {tmp_path / 'jazz'}, a folder already walked (a loop or a second path): not followed",
        "jazz/ghost.wav": f"dangling link: its target {tmp_path / 'nowhere.wav'} does not exist",
    }
    assert {r.label for r in rejected} == {"blues", "jazz"}


def test_a_folder_linked_in_from_outside_is_walked_under_its_link(tmp_path):
    _touch(tmp_path / "elsewhere" / "take.wav")
    _touch(tmp_path / "corpus" / "blues" / "blues.00000.wav")
    os.symlink(tmp_path / "elsewhere", tmp_path / "corpus" / "jazz")
    tracks, rejected = discover(str(tmp_path / "corpus"), None, StoreOptions())
    assert rejected == [] and [(t.track_id, t.label) for t in tracks] == [
        ("blues/blues.00000", "blues"),
        ("jazz/take", "jazz"),
    ]


def test_the_same_content_under_two_names_is_taken_once_and_the_other_rejected_as_its_duplicate(tmp_path):
    audio = b"RIFF the same recording"
    _touch(tmp_path / "blues" / "a.wav", audio)
    _touch(tmp_path / "jazz" / "copy.wav", audio)  # a copy under another genre: would land in two splits
    _touch(tmp_path / "jazz" / "b.wav")
    os.symlink(tmp_path / "jazz" / "b.wav", tmp_path / "blues" / "b-link.wav")  # a file link: the same content
    tracks, rejected = discover(str(tmp_path), None, StoreOptions())
    assert [t.track_id for t in tracks] == ["blues/a", "blues/b-link"]
    assert len({t.sha256 for t in tracks}) == 2 and tracks[0].sha256 == hashlib.sha256(audio).hexdigest()
    by_name = {os.path.relpath(r.source, tmp_path): r.reason for r in rejected}
    assert by_name.keys() == {"jazz/copy.wav", "jazz/b.wav"}
    assert by_name["jazz/copy.wav"].startswith(f"duplicate of {tmp_path / 'blues' / 'a.wav'} (the same content")
    assert by_name["jazz/b.wav"].startswith(f"duplicate of {tmp_path / 'blues' / 'b-link.wav'}")


def test_a_track_whose_content_changed_after_discovery_is_rejected_by_its_task(tmp_path):
    _touch(tmp_path / "blues" / "a.wav")
    _touch(tmp_path / "jazz" / "b.wav")
    tracks, _ = discover(str(tmp_path), None, StoreOptions())
    item = work_items(tracks, (0.5, 0.5, 0.0), 0, ("blues", "jazz"))[0]
    (tmp_path / "blues" / "a.wav").write_bytes(b"another recording")
    result = process_track(item, TrackSettings())
    assert result.reject_reason.startswith("changed while preparing: sha256 ")
    assert result.sha256 == hashlib.sha256(b"another recording").hexdigest()
