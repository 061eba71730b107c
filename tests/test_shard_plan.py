"""Shard planning at scale: the plan cut into many buckets and passes (as at 10^7 clips) holds
exactly the rows of a plan made in one bucket and one pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.manifest_scale_root import build_root
from curation import shard_plan
from curation.config import load_config
from tests.procs import REPO

CONFIG = REPO / "configs" / "offline.yaml"


@pytest.fixture(scope="module")
def decided(tmp_path_factory) -> Path:
    """A synthetic root of 4,000 clips (the bench's schemas and mix), decided by `filter`."""
    root = tmp_path_factory.mktemp("plan") / "root"
    build_root(root, 4000)
    cmd = [sys.executable, "-m", "curation.cli", "filter", "--config", str(CONFIG), "--root", str(root)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return root


def _plan(root: Path) -> tuple[list[dict], dict[int, list[dict]], int]:
    """-> (groups without their plan file, each group's rows as its writer reads them, plan files)"""
    cfg = load_config(str(CONFIG), [])
    groups = shard_plan.plan_shards(root, cfg.filter, cfg.shard)
    rows = {g["group_index"]: shard_plan.read_group(g["plan"], g["group_index"]) for g in groups.to_pylist()}
    plans = {Path(p) for p in groups.column("plan").to_pylist()}
    assert {p for p in shard_plan.plan_dir(root).iterdir() if p.name != "spill"} == plans  # no temp files
    shard_plan.clean_plans(root)
    return groups.drop_columns(["plan"]).to_pylist(), rows, len(plans)


def test_a_plan_in_many_buckets_and_passes_equals_one_in_one(decided, monkeypatch):
    one_groups, one_rows, one_files = _plan(decided)
    monkeypatch.setattr(shard_plan, "BUCKET_ROWS", 40)  # ~10 groups of 4 clips a bucket
    monkeypatch.setattr(shard_plan, "PASS_ROWS", 500)  # each wide table read in ~4 passes
    many_groups, many_rows, many_files = _plan(decided)
    assert one_files == 1 and many_files > 20
    assert many_groups == one_groups and len(one_groups) > 100
    assert many_rows == one_rows
    assert sum(len(r) for r in one_rows.values()) == sum(g["n_clips"] for g in one_groups)
    groups = {g["group_index"]: g for g in one_groups}
    for index, rows in many_rows.items():  # each row carries its own clip's manifest rows
        for r in rows:
            assert r["tier"] == groups[index]["tier"] == r["meta"]["decision"]["tier"]
            assert r["meta"]["decision"]["keep"]
            assert r["clip_id"] == r["meta"]["clip"]["clip_id"] == r["meta"]["scores"]["clip_id"]
            assert r["meta"]["video"]["video_id"] == r["meta"]["clip"]["video_id"]
            assert r["path"] == r["meta"]["clip"]["path"] and len(r["meta"]["scores"]["clip_embedding"]) == 64
    assert any(r["caption"] for rows in many_rows.values() for r in rows)
