"""A Ray worker killed mid-batch costs a retry, never a lost or duplicated key."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from curation.chain import Chain
from curation.runner import PartSink, run_stage
from curation.stages.ingest import IngestStage
from manifests.configtools import Resources
from manifests.store import Table
from tests.media import make_video


class DyingIngest(IngestStage):
    """Kills its own worker process the first time it sees `die.mp4` (a marker file records it)."""

    def __call__(self, batch):
        paths = [str(p) for p in batch["path"]]
        marker = Path(paths[0]).parent / "died.marker"
        if any(p.endswith("die.mp4") for p in paths) and not marker.exists():
            marker.write_text("x")
            os._exit(1)  # like an OOM kill: no exception, no cleanup
        return super().__call__(batch)


def test_killed_worker_is_retried_without_duplicates(ray_local, tmp_path):
    from curation.config import load_config

    cfg = load_config("configs/offline.yaml")
    vids = tmp_path / "v"
    paths = [make_video(vids / f"{n}.mp4", n_frames=6, seed=i) for i, n in enumerate("abcdefg")]
    paths.append(make_video(vids / "die.mp4", n_frames=6, seed=9))
    items = pa.table({"path": [str(p) for p in paths]})
    sink = PartSink(Table(tmp_path / "root", "videos"), rows=1)
    chain = Chain.of((DyingIngest, cfg.ingest, Resources(num_cpus=1, batch_size=2, concurrency=2)))
    run_stage("ingest", chain, items, sink, ray_cfg=cfg.ray)
    assert (vids / "died.marker").exists()
    got = Table(tmp_path / "root", "videos").read(["path"]).column("path").to_pylist()
    assert sorted(got) == sorted(str(p) for p in paths)
