"""prepare's publish: the old dataset survives a typo, a store outage and a killed run; litter is cleaned up."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from genre_sweep.config import resolve
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.pipeline import run_prepare
from genre_sweep.data.prepare import main as prepare_main
from genre_sweep.data.shards import open_dataset
from genre_sweep.store import StoreError, StoreOptions
from tests.conftest import make_corpus

GENRES = ("blues", "jazz")


def _config(source, out, **kw) -> PrepareConfig:
    return resolve(
        PrepareConfig,
        {"source": str(source), "out": str(out), "genres": ",".join(GENRES), "effects": "none", **kw},
    )


def _files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("publish"), per_genre=3, genres=GENRES)


@pytest.fixture
def dataset(ray_local, corpus, tmp_path):
    out = tmp_path / "ds"
    run_prepare(_config(corpus, out))
    return out


def test_a_typo_in_the_source_with_overwrite_leaves_the_dataset_untouched(dataset, tmp_path, capsys):
    before = {f: (dataset / f).read_bytes() for f in _files(dataset)}
    code = prepare_main(["--source", str(tmp_path / "corpsu"), "--out", str(dataset), "--genres", "blues,jazz"])
    code_overwrite = prepare_main(
        ["--source", str(tmp_path / "corpsu"), "--out", str(dataset), "--genres", "blues,jazz", "--overwrite"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == code_overwrite == 2
    assert "already holds a dataset; pass --overwrite" in err[0]
    assert err[1].startswith("error: ") and "corpsu" in err[1] and len(err) == 2
    assert {f: (dataset / f).read_bytes() for f in _files(dataset)} == before  # not a byte lost, nothing added


def test_a_bucket_root_or_a_folder_of_other_files_is_refused_before_any_work(corpus, tmp_path, s3_endpoint):
    with pytest.raises(StoreError, match="bucket root; give a prefix of its own"):
        run_prepare(_config(corpus, "s3://somebucket", s3_endpoint=s3_endpoint, overwrite=True))
    other = tmp_path / "home"
    (other / "notes").mkdir(parents=True)
    (other / "notes" / "todo.txt").write_text("mine")
    (other / "manifest.json").write_text("{}")
    with pytest.raises(StoreError, match=r"holds files that are not a genre-sweep dataset \(1, e.g. notes/todo.txt\)"):
        run_prepare(_config(corpus, other, overwrite=True))
    assert _files(other) == ["manifest.json", "notes/todo.txt"]


def test_a_killed_prepare_leaves_the_old_dataset_and_the_next_run_leaves_no_stray_file(dataset, corpus, tmp_path):
    old = open_dataset(str(dataset)).manifest
    command = [
        sys.executable,
        "-m",
        "genre_sweep.data.prepare",
        "--source",
        str(corpus),
        "--out",
        str(dataset),
        "--genres",
        "blues,jazz",
        "--effects",
        "echo,highpass,lowpass,bundle",  # slow enough to be killed half-way
        "--tracks-per-task",
        "1",
        "--overwrite",
    ]
    log = (tmp_path / "prepare.log").open("w")
    driver = subprocess.Popen(command, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
    new_shards = []
    deadline = time.monotonic() + 180
    while not new_shards and time.monotonic() < deadline and driver.poll() is None:
        time.sleep(0.2)
        new_shards = [p for p in dataset.glob("v-*/*/*.parquet") if p.parts[-3] != old["version_dir"]]
    assert driver.poll() is None and new_shards, (tmp_path / "prepare.log").read_text()[-3000:]
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, half-way through the shards
    driver.wait()

    assert open_dataset(str(dataset)).manifest == old  # the previous dataset still opens, unchanged
    assert open_dataset(str(dataset)).read_split("train").num_rows == old["summary"]["rows_out"]["train"]
    assert len(list(dataset.glob("v-*"))) == 2  # and the partial version is there, unreferenced

    new = run_prepare(_config(corpus, dataset, overwrite=True))
    assert _files(dataset) == sorted(["manifest.json", *(f"{new['version_dir']}/{s['path']}" for s in new["shards"])])


def test_an_s3_outage_mid_prepare_is_one_line_and_the_same_command_completes_once_it_is_back(
    ray_local, corpus, restartable_s3, capsys
):
    endpoint, s3 = restartable_s3.endpoint, restartable_s3.client()
    s3.create_bucket(Bucket="outage")
    out = "s3://outage/ds"
    command = ["--source", str(corpus), "--out", out, "--genres", "blues,jazz", "--s3-endpoint", endpoint]
    assert prepare_main([*command, "--effects", "none"]) == 0
    old = json.loads(s3.get_object(Bucket="outage", Key="ds/manifest.json")["Body"].read())
    slow = [*command, "--effects", "echo,highpass,lowpass,bundle", "--tracks-per-task", "1", "--overwrite"]

    def stop_once_new_shards_appear() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/").get("Contents", [])]
            if any(k.endswith(".parquet") and old["version_dir"] not in k for k in keys):
                restartable_s3.stop()
                return
            time.sleep(0.1)

    stopper = threading.Thread(target=stop_once_new_shards_appear)
    stopper.start()
    capsys.readouterr()
    try:
        code = prepare_main(slow)
        stopper.join()
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, err
        assert err[-1].startswith("error: cannot write") and out in err[-1], err
    finally:
        restartable_s3.start()  # the store comes back as it was
    manifest = json.loads(s3.get_object(Bucket="outage", Key="ds/manifest.json")["Body"].read())
    assert manifest == old  # no new manifest; the previous dataset still opens
    assert open_dataset(out, StoreOptions(endpoint)).read_split("train").num_rows > 0
    assert prepare_main(slow) == 0
    new = open_dataset(out, StoreOptions(endpoint)).manifest
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="outage", Prefix="ds/")["Contents"])
    expected = sorted(["ds/manifest.json", *(f"ds/{new['version_dir']}/{s['path']}" for s in new["shards"])])
    assert [k for k in keys if not k.endswith("/")] == expected  # directory markers aside: no stray object
