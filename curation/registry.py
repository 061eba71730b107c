"""Every curation stage, declared once as a `Stage` and registered in the order `run` takes them.

The CLI's stage commands, the order of `reelsift run`, `reelsift status` (whose pending counts run
each stage's own `pending` query) and the retries (a stage's `pending` query takes its
retryable rows again) are all read from here. Adding a stage is one module (its operator
classes) and one `register(Stage(...))`; `curation/pipeline.py` registers the built-in ones.

Nothing here imports a stage's module: `ops`, `step` and `decode` import theirs when called, so
`reelsift --help` and `status` import no torch, cv2 or Ray.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.chain import Chain
from curation.nodewatch import ATTEMPTS, ClusterShrank
from manifests import schemas
from manifests.db import connect
from manifests.store import Table


@dataclass(frozen=True)
class Context:
    """What a stage's step gets: the config, the run root, the Ray address, and the command's
    options (`input` for ingest, `dry_run`/`pre_align` for filter)."""

    cfg: Any
    root: Path
    ray_address: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    """One curation stage.

    pending(con, cfg): SQL of the work the stage's next run takes (its input rows, retryable
      error rows included), over the views of `manifests.db.connect`; `status` counts the same
      query. It returns None where the figure needs what it was not given: the config (`cfg` is
      None for `reelsift status` without `--config`).
    ops(cfg, root): the operator chain with each operator's resources, for stages that run
      through an executor; None for stages the driver runs alone (dedup, filter).
    step(stage, ctx): how the stage runs; None: `run_chain` (pending -> chain -> parts).
    flush_rows(cfg): rows per part the sink writes (default `ray.flush_rows`).
    decode(cfg): what the stage needs decoded from each clip (a DecodeSpec), None if nothing.
    """

    name: str
    help: str
    table: str  # the output table
    key: str  # what a row of `table` is done for
    unit: str  # what `pending` counts: videos, clips
    pending: Callable[[duckdb.DuckDBPyConnection, Any], str | None] | None
    ops: Callable[[Any, Path], Chain] | None = None
    step: Callable[[Stage, Context], Any] | None = None
    flush_rows: Callable[[Any], int] = lambda cfg: cfg.ray.flush_rows
    decode: Callable[[Any], Any] | None = None
    args: Callable[[argparse.ArgumentParser], None] | None = None  # the command's own arguments
    show: Callable[[Any, Context], None] | None = None  # prints the result (default: the summary)
    run_options: dict[str, Any] = field(default_factory=dict)  # its options inside `run`
    refilter_after: bool = False  # `run` decides again after it: its table holds bounded scores
    optional: bool = False  # `status` shows it once its table has rows
    done: str = "status <> 'error'"  # SQL over `table`: rows done (ok + rejected) ...
    rejected: str = "status = 'rejected'"  # ... of them rejected ...
    error: str = "status = 'error'"  # ... and error rows
    schema: pa.Schema | None = None  # a table of its own, not in manifests.schemas yet

    def pending_sql(self, con: duckdb.DuckDBPyConnection, cfg: Any) -> str | None:
        return None if self.pending is None else self.pending(con, cfg)

    def run(self, ctx: Context) -> Any:
        """Run the stage: its `step`, or its pending rows through its chain (`run_chain`). When
        the Ray cluster loses a node mid-stage (curation/nodewatch.py), what was stored stays
        and the stage runs again on the nodes left, from its pending rows."""
        once = lambda: self.step(self, ctx) if self.step is not None else run_chain(self, ctx)  # noqa: E731
        for attempt in range(2, ATTEMPTS + 1):
            try:
                return once()
            except ClusterShrank as exc:
                log.warning("%s: %s; running the stage again on the nodes left (%d/%d)",
                            self.name, exc, attempt, ATTEMPTS)
        return once()  # the last run: a cluster still shrinking is the command's error


_STAGES: dict[str, Stage] = {}


def register(stage: Stage, *, before: str | None = None) -> Stage:
    """Add `stage` at the end of the run order (or before the stage named `before`); its
    `schema`, if given, becomes a table (newest row per `key` wins)."""
    if stage.name in _STAGES:
        raise ValueError(f"stage {stage.name!r} is registered already")
    if stage.schema is not None:
        schemas.register(stage.table, stage.schema, stage.key, newest_wins=True)
    items = list(_STAGES.items())
    at = len(items) if before is None else [n for n, _ in items].index(before)
    items.insert(at, (stage.name, stage))
    _STAGES.clear()
    _STAGES.update(items)
    return stage


def unregister(name: str) -> None:
    """Take a stage out again (tests)."""
    stage = _STAGES.pop(name)
    if stage.schema is not None:
        schemas.TABLES.pop(stage.table, None)


def stages() -> list[Stage]:
    """Every registered stage in run order (importing curation.pipeline registers the built-in
    ones: use `pipeline.all_stages()`)."""
    return list(_STAGES.values())


def get(name: str) -> Stage:
    for stage in stages():
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; stages are: {', '.join(s.name for s in stages())}")


log = logging.getLogger("reelsift")


def run_chain(stage: Stage, ctx: Context, items: pa.Table | None = None, sink: Any = None) -> Any:
    """The usual step: the stage's pending rows (or `items`) through its chain into parts of its
    table (a runner.PartSink, flushed every `stage.flush_rows(cfg)` rows or `ray.flush_s` s)."""
    from curation.runner import PartSink, run_stage

    cfg = ctx.cfg
    table = Table(ctx.root, stage.table)
    table.clean_temp()
    if items is None:
        con = connect(ctx.root)
        items = con.sql(stage.pending_sql(con, cfg)).to_arrow_table()
        log.info("%s: %d %s to do", stage.name, items.num_rows, stage.unit)
    if sink is None:
        sink = PartSink(table, rows=stage.flush_rows(cfg), seconds=cfg.ray.flush_s)
        sink.expected = items.num_rows
    chain = stage.ops(cfg, ctx.root)
    return run_stage(stage.name, chain, items, sink, ray_address=ctx.ray_address, ray_cfg=cfg.ray)
