"""Shared fixtures: one embedded Ray instance per test session, and a demo run root."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest


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
    from curation.demo_data import write_demo_corpus

    return write_demo_corpus(tmp_path_factory.mktemp("demo") / "videos", with_samples=True)


@pytest.fixture(scope="session")
def demo_run(ray_local, demo_corpus, tmp_path_factory) -> tuple[Path, object]:
    """The whole pipeline over the demo corpus through real Ray, with configs/offline.yaml."""
    from curation import pipeline
    from curation.config import load_config

    logging.getLogger("reelsift").setLevel(logging.INFO)
    cfg = load_config(Path(__file__).parent.parent / "configs" / "offline.yaml")
    root = tmp_path_factory.mktemp("run")
    pipeline.run_all(cfg, root, demo_corpus.root)
    return root, cfg
