"""The stage registry (curation/registry.py) and the executor contract (registry.Chain).

A stage declared once appears in the CLI, in `run` and in `status`; the inline and the Ray
executors take the same chain and give the same rows, each operator at its own batch size."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from curation import pipeline, registry
from curation.chain import Chain
from curation.cli import build_parser, main
from curation.config import CurateConfig, RayConfig, load_config
from curation.registry import Stage
from curation.status import format_status, stage_status
from manifests.configtools import Resources
from manifests.db import query
from manifests.schemas import CLIPS, TABLES
from manifests.store import Table, rows_to_table

TOY = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),
    pa.field("loud", pa.string()),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
])


class Shout:
    """The toy stage's one operator: clip ids -> rows with the id in capitals."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("clip_id").to_pylist()
        return pa.table({"clip_id": ids, "loud": [i.upper() for i in ids], "status": ["ok"] * len(ids)})


@pytest.fixture
def toy():
    stage = registry.register(Stage(
        "toy", "shout every ok clip's id -> toy_rows", table="toy_rows", key="clip_id", unit="clips",
        pending=lambda con, cfg: "SELECT clip_id FROM clips WHERE status = 'ok' "
                                 "AND clip_id NOT IN (SELECT clip_id FROM toy_rows) ORDER BY clip_id",
        ops=lambda cfg, root: Chain.of((Shout, None, Resources(num_cpus=1, batch_size=2))),
        schema=TOY,
    ), before="shard")
    yield stage
    registry.unregister("toy")


def test_a_stage_registered_once_is_in_the_cli_run_and_status(toy, tmp_path):
    assert "toy_rows" in TABLES
    args = build_parser().parse_args(["toy", "--root", str(tmp_path)])
    assert args.command == "toy"
    names = [name for name, _ in pipeline.stages(CurateConfig(), tmp_path, "in", None)]
    assert names[-2:] == ["toy", "shard"] and names[:3] == ["ingest", "split", "score"]

    Table(tmp_path, "clips").write(rows_to_table(
        [dict(clip_id=c, video_id="v", status="ok") for c in ("a", "b", "c")]
        + [dict(clip_id="x", video_id="w", status="error", error="broken")], CLIPS))
    st = {r["stage"]: r for r in stage_status(tmp_path).to_pylist()}
    assert (st["toy"]["done"], st["toy"]["pending"]) == (0, 3)
    assert "toy (3 clips)" in format_status(stage_status(tmp_path))

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["toy", "--root", str(tmp_path), "--config", "configs/offline.yaml",
                     "--set", "ray.inline_max_items=100"]) == 0
    rows = query(tmp_path, "SELECT clip_id, loud FROM toy_rows ORDER BY 1").to_pylist()
    assert rows == [dict(clip_id=c, loud=c.upper()) for c in ("a", "b", "c")]
    st = {r["stage"]: r for r in stage_status(tmp_path).to_pylist()}
    assert (st["toy"]["done"], st["toy"]["pending"]) == (3, 0)
    step = dict(pipeline.stages(load_config("configs/offline.yaml"), tmp_path, "in", None))["toy"]
    assert step().written == 0  # `run`'s step: nothing left


def test_registry_refuses_a_second_stage_of_one_name(toy):
    with pytest.raises(ValueError, match="registered already"):
        registry.register(toy)


class Pairs:
    """Each row x -> two rows (x, 0) and (x, 1); numpy batches."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self, batch: dict) -> dict:
        x = np.repeat(batch["x"], 2)
        return {"x": x, "k": np.tile([0, 1], len(batch["x"]))}


class AtMostThree:
    """A model with room for 3 rows a batch: it refuses more, as a fixed-memory GPU batch would."""

    BATCH_FORMAT = "pyarrow"

    def __init__(self, cfg):
        self.limit = cfg

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows > self.limit:
            raise ValueError(f"got {batch.num_rows} rows, room for {self.limit}")
        y = [x * 10 + k for x, k in zip(batch.column("x").to_pylist(), batch.column("k").to_pylist(),
                                        strict=True)]
        return batch.append_column("y", pa.array(y, pa.int64())).append_column(
            "status", pa.array(["ok"] * batch.num_rows))


class Collect:
    """A sink that keeps what it gets (the runner's PartSink interface, no table)."""

    def __init__(self, root):
        self.table = SimpleNamespace(root=root)  # where the runner writes the stage's metrics
        self.tables, self.written, self.counts, self.nodes, self.lanes = [], 0, {}, {}, {}

    def add(self, batch: pa.Table) -> None:
        self.tables.append(batch.drop_columns([c for c in batch.column_names if c.startswith("_")]))
        self.written += batch.num_rows

    def flush(self) -> None:
        pass

    def rows(self) -> list[tuple]:
        t = pa.concat_tables(self.tables, promote_options="default")
        return sorted(zip(*(t.column(c).to_pylist() for c in ("x", "k", "y")), strict=True))


def test_inline_and_ray_executors_give_the_same_rows(ray_local, tmp_path):
    """One chain whose operators batch 8 and 3 rows: each executor feeds each operator batches of
    its own size (the inline one used to feed the whole chain the first operator's 8)."""
    from curation.inline import run_inline
    from curation.runner import run_stage

    chain = Chain.of((Pairs, None, Resources(num_cpus=0.5, batch_size=8)),
                     (AtMostThree, 3, Resources(num_cpus=0.5, batch_size=3)))
    items = pa.table({"x": pa.array(range(21), pa.int64())})
    inline, ray = Collect(tmp_path), Collect(tmp_path)
    run_inline("chain", chain, items, inline, cpus=2)
    run_stage("chain", chain, items, ray, ray_cfg=RayConfig(num_cpus=2, progress=False))
    expected = sorted((x, k, x * 10 + k) for x in range(21) for k in (0, 1))
    assert inline.rows() == ray.rows() == expected
