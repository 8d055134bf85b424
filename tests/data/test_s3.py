"""prepare between S3 buckets on a real S3-protocol server (moto) on loopback, through Ray's workers."""

import logging

import boto3
import pytest

from genre_sweep.config import resolve
from genre_sweep.data.configs import PrepareConfig
from genre_sweep.data.pipeline import run_prepare
from genre_sweep.data.prepare import main as prepare_main
from genre_sweep.data.shards import open_dataset
from genre_sweep.data.sources import discover
from genre_sweep.store import StoreError, StoreOptions
from tests.conftest import FAKE_SECRET, make_corpus


def _upload(corpus, bucket, endpoint) -> list[str]:
    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = []
    for path in sorted(corpus.rglob("*.wav")):
        key = "audio/" + str(path.relative_to(corpus))
        s3.upload_file(str(path), bucket, key)
        keys.append(key)
    return keys


def test_prepare_reads_and_writes_s3_and_never_writes_a_credential(ray_local, s3_endpoint, s3_bucket, tmp_path, caplog):
    corpus = make_corpus(tmp_path / "c", per_genre=2, genres=("blues", "jazz"))
    keys = _upload(corpus, s3_bucket, s3_endpoint)
    lines = ["path,label"] + [f"s3://{s3_bucket}/{k},{k.split('/')[1]}" for k in keys]
    lines.append(f"s3://{s3_bucket}/audio/blues/missing.wav,blues")  # an unreadable object
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="list.csv", Body="\n".join(lines).encode())

    caplog.set_level(logging.DEBUG)
    cfg = resolve(
        PrepareConfig,
        {
            "source": f"s3://{s3_bucket}/list.csv",
            "out": f"s3://{s3_bucket}/ds",
            "genres": "blues,jazz",
            "s3_endpoint": s3_endpoint,
        },
    )
    manifest = run_prepare(cfg)

    assert [r["reason"][:12] for r in manifest["rejected"]] == ["cannot read:"]
    ds = open_dataset(f"s3://{s3_bucket}/ds", cfg.track_settings().store)
    assert ds.read_split("train").num_rows == manifest["summary"]["rows_out"]["train"] > 0
    written = s3.list_objects_v2(Bucket=s3_bucket, Prefix="ds/")["Contents"]
    assert any(o["Key"] == "ds/manifest.json" for o in written)
    for o in written:
        body = s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
        assert FAKE_SECRET.encode() not in body, o["Key"]
    assert FAKE_SECRET not in caplog.text


def test_an_s3_folder_is_discovered_with_labels_from_folder_names(s3_endpoint, s3_bucket, tmp_path):
    corpus = make_corpus(tmp_path / "c", per_genre=1, seconds=2.0, genres=("blues", "jazz"))
    _upload(corpus, s3_bucket, s3_endpoint)
    tracks, rejected = discover(f"s3://{s3_bucket}/audio", ("blues", "jazz"), StoreOptions(s3_endpoint))
    assert rejected == []
    assert [(t.track_id, t.label, t.source) for t in tracks] == [
        (f"{g}/{g}.00000", g, f"s3://{s3_bucket}/audio/{g}/{g}.00000.wav") for g in ("blues", "jazz")
    ]


def test_an_unreachable_output_store_stops_with_a_clear_message(tmp_path):
    cfg = resolve(
        PrepareConfig, {"source": str(tmp_path), "out": "s3://nobucket/ds", "s3_endpoint": "http://127.0.0.1:9"}
    )
    with pytest.raises(StoreError, match="cannot reach the output store s3://nobucket/ds"):
        run_prepare(cfg)


def test_a_missing_bucket_is_reported_by_the_command(s3_endpoint, tmp_path, capsys):
    code = prepare_main(["--source", str(tmp_path), "--out", "s3://no-such-bucket/ds", "--s3-endpoint", s3_endpoint])
    assert code == 2
    assert "no-such-bucket" in capsys.readouterr().err
