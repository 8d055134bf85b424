"""Shared fixtures: one local Ray for the session, a loopback S3 server (moto), tiny generated corpora.

AWS settings are put in the environment before Ray starts, so Ray's workers reach the same S3 server
with the same (fake) credentials, exactly as a cluster's workers inherit theirs.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

# A recognisable secret: tests assert it never reaches a written file or a log.
FAKE_SECRET = "genre-sweep-test-SECRET-9f3b2c"
os.environ.update(
    {
        "AWS_ACCESS_KEY_ID": "genre-sweep-test-KEYID",
        "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }
)
os.environ.pop("AWS_PROFILE", None)
# Every node store the tests build (model.node_store) goes here, not into the machine's shared temp folder.
NODE_STORE = tempfile.mkdtemp(prefix="genre-sweep-test-store-")
os.environ["GENRE_SWEEP_NODE_STORE"] = NODE_STORE
atexit.register(shutil.rmtree, NODE_STORE, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class RestartableS3:
    """A moto S3 server on a fixed loopback port that a test can stop and start again: moto keeps its buckets in
    this process, so the store comes back as it was, like a real one after an outage."""

    def __init__(self):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server = None
        self.down = threading.Event()  # set while an outage has the server stopped
        self.start()

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            # moto's stop() ends the serving loop but leaves the listening socket open, so a "stopped" server still
            # accepted connections and the S3 client's own retries waited out the outage unseen; close it, so the
            # outage is a refused connection, as when a real endpoint goes away
            self.server._server.server_close()
            self.server = None

    def outage(self, seconds: float, until: threading.Event | None = None) -> None:
        """Stop the server for ``seconds``, or, with ``until``, until that event is set (``seconds`` at most)."""
        self.stop()
        self.down.set()
        if until is not None:
            until.wait(seconds)
        else:
            import time

            time.sleep(seconds)
        self.start()
        self.down.clear()

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)


@pytest.fixture
def restartable_s3():
    server = RestartableS3()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    import boto3

    name = "gs-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def make_corpus(root: Path, per_genre: int = 2, seconds: float = 11.0, genres=None, fmt: str = "wav") -> Path:
    """A synthetic GTZAN-format corpus in ``root`` (the real generator, tiny settings)."""
    from genre_sweep.data.configs import GTZAN_GENRES, SynthConfig
    from genre_sweep.data.synth import generate

    generate(
        SynthConfig(
            out=str(root),
            per_genre=per_genre,
            seconds=seconds,
            genres=tuple(genres or GTZAN_GENRES),
            format=fmt,
            workers=1,
            overwrite=True,
        )
    )
    return root


def save_small_pretrained(path: Path):
    """A small ASTForAudioClassification (1024 frames x 128 bins) saved with save_pretrained, like a hub download."""
    from transformers import ASTConfig, ASTForAudioClassification

    model = ASTForAudioClassification(
        ASTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_length=1024,
            num_mel_bins=128,
            num_labels=5,
        )
    )
    model.save_pretrained(path)
    return model


def prepare_small(root: Path, genres: tuple[str, ...], per_genre: int, split: str) -> Path:
    """A generated corpus of 6 s clips prepared into 256-frame windows with one augmentation (real Ray)."""
    from genre_sweep.config import resolve
    from genre_sweep.data.configs import PrepareConfig
    from genre_sweep.data.pipeline import run_prepare

    corpus = make_corpus(root / "corpus", per_genre=per_genre, seconds=6.0, genres=genres)
    out = root / "shards"
    run_prepare(
        resolve(
            PrepareConfig,
            {
                "source": str(corpus),
                "out": str(out),
                "genres": ",".join(genres),
                "frames": "256",
                "effects": "echo",
                "split": split,
            },
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """10 genres x 3 clips of 11 s (two windows each), read-only for tests."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), per_genre=3)


SWEEP_GENRES = ("blues", "classical", "metal", "reggae")
QUICK_SPACE = """
space:
  learning_rate: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
  batch_size: {type: categorical, choices: [8, 16]}
  num_train_epochs: {type: int, low: 3, high: 6}
fixed:
  gradient_accumulation_steps: 1
"""


@pytest.fixture(scope="session")
def sweep_shards(ray_local, tmp_path_factory):
    """4 genres x 8 clips of 6 s, windows of 256 frames, split 4/2/2 per genre."""
    return prepare_small(tmp_path_factory.mktemp("sweep-data"), SWEEP_GENRES, per_genre=8, split="0.5,0.25,0.25")


@pytest.fixture
def quick_space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(QUICK_SPACE)
    return path


def flac_declaring_2_tib() -> bytes:
    """A valid 8-channel FLAC whose STREAMINFO declares 2**36 - 1 frames: decoding it asks for 2 TiB at once, a real
    MemoryError (unless the kernel grants any allocation: ``GRANTS_ANY_ALLOCATION``)."""
    import io

    import numpy as np
    import soundfile as sf

    t = np.arange(22050 * 2) / 22050
    buf = io.BytesIO()
    sf.write(buf, np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 8, axis=1), 22050, format="FLAC")
    data = bytearray(buf.getvalue())
    fields = int.from_bytes(data[18:26], "big")  # 'fLaC', a block header, then rate/channels/bits/36-bit total
    data[18:26] = (fields | ((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


_OVERCOMMIT = Path("/proc/sys/vm/overcommit_memory")
GRANTS_ANY_ALLOCATION = _OVERCOMMIT.exists() and _OVERCOMMIT.read_text().strip() == "1"  # vm.overcommit_memory=1


class SmallDisk:
    """A tmpfs of a given size mounted at ``path`` (root only): a disk that fills, and can be given room."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        if subprocess.run(mount, capture_output=True).returncode:
            pytest.skip("mounting a small tmpfs needs root")

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(size)``: a ``SmallDisk`` under ``tmp_path``, unmounted after the test."""
    disks: list[SmallDisk] = []

    def mount(size: str) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"small-disk-{len(disks)}", size))
        return disks[-1]

    yield mount
    for disk in disks:
        subprocess.run(["umount", "-l", str(disk.path)], check=False)
