"""Shared fixtures: one embedded Ray instance per test session, and a demo run root."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.s3server import s3_server  # noqa: F401  (one SeaweedFS per session, see tests/s3server.py)


@pytest.fixture
def one_thread():
    """One torch intra-op thread: the model tests' shapes are tiny, and on a small shared machine
    OpenMP's spin-waiting with more threads makes them several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local():
    """Embedded local Ray (2 CPUs), started once and shut down at the end of the session."""
    import ray

    from curation.config import RayConfig
    from curation.runner import init_ray

    init_ray(RayConfig(num_cpus=2, object_store_mb=512, progress=False))
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    import shutil

    from curation.demo_data import write_demo_corpus

    corpus = write_demo_corpus(tmp_path_factory.mktemp("demo") / "videos", with_samples=True)
    # a name with spaces, non-ASCII and shell metacharacters must not leak into outputs
    odd = corpus.root / "a b $(echo x);'q' vidéo.mp4"
    shutil.copy(corpus.root / "cuts_three_scenes.mp4", odd)
    with open(odd, "ab") as fh:  # trailing bytes after the moov box: still plays, new video_id
        fh.write(b"\0" * 16)
    for f in corpus.root.iterdir():
        f.chmod(0o444)  # the pipeline must only ever read its inputs
    return corpus


@pytest.fixture(scope="session")
def demo_digests(demo_corpus) -> dict[str, str]:
    """sha256 of every input before the pipeline runs."""
    import hashlib

    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in demo_corpus.root.iterdir()}


@pytest.fixture(scope="session")
def demo_run(ray_local, demo_corpus, demo_digests, tmp_path_factory) -> tuple[Path, object]:
    """The whole pipeline over the demo corpus through real Ray, with configs/offline.yaml."""
    from curation import pipeline
    from curation.config import load_config

    logging.getLogger("reelsift").setLevel(logging.INFO)
    cfg = load_config(Path(__file__).parent.parent / "configs" / "offline.yaml")
    root = tmp_path_factory.mktemp("run")
    pipeline.run_all(cfg, root, demo_corpus.root)
    return root, cfg
