"""Ray Data plumbing: start/join Ray, apply a stage class with its resources, stream to parts.

A stage is a chain of callable classes (`registry.Chain`): `__init__(cfg)` loads once per actor,
`__call__(batch) -> table` returns the rows it produced. `run_stage` feeds pending rows through
Ray Data (or inline, curation/inline.py, for a small stage) and writes the
results as parts while the pipeline is still running, so a killed run loses at most the rows
that were not flushed yet (and those are simply redone by the next run).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from curation import nodewatch
from curation.chain import Chain
from curation.config import RayConfig
from curation.errors import DiskFull, disk_full_rows, is_disk_full
from curation.nodewatch import NodeWatch
from manifests import fs
from manifests.configtools import InputError, Resources
from manifests.store import Table, conform

log = logging.getLogger("reelsift")


# An embedded instance serves one command: no idle workers started ahead of the first task
# (they would never be used by our actors), and no metrics export nobody reads.
LOCAL_SYSTEM_CONFIG = {
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "enable_metrics_collection": False,
}


def ray_log_level() -> int:
    """Ray's own log level: its warnings only when the CLI's -v lets other libraries speak
    (the root logger at INFO or below), otherwise errors only."""
    return max(logging.WARNING, logging.getLogger().getEffectiveLevel())


def init_ray(cfg: RayConfig, address: str | None = None) -> None:
    """Join `address` / RAY_ADDRESS / cfg.address if given, else start an embedded local Ray."""
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or cfg.address
        if address:
            try:
                ray.init(address=address, log_to_driver=False, logging_level=ray_log_level())
            except ConnectionError as exc:
                raise InputError(
                    f"cannot join the Ray cluster at {address!r} ({exc}). Start one on this "
                    "machine with `reelsift cluster start` (make ray-up), or unset RAY_ADDRESS "
                    "and ray.address to run on an embedded Ray"
                ) from exc
        else:
            ray.init(
                # "local": a fresh instance for this command, even when another Ray (e.g. one
                # from `reelsift cluster start`) runs on this machine; joining one is explicit.
                address="local",
                num_cpus=cfg.num_cpus,
                object_store_memory=cfg.object_store_mb * 1024 * 1024,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=ray_log_level(),
                _system_config=LOCAL_SYSTEM_CONFIG,
            )
    ctx = DataContext.get_current()
    # Ray Data prints its progress as INFO log lines when stdout is not a terminal; keep those
    # out of logs unless progress is asked for on a terminal. PartSink logs its own progress.
    show = cfg.progress and sys.stdout.isatty()
    logging.getLogger("ray.data").setLevel(logging.INFO if show else ray_log_level())
    ctx.enable_progress_bars = show
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = show


def cluster_cpus() -> float:
    import ray

    return max(1.0, float(ray.cluster_resources().get("CPU", 1)))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


def plan_concurrency(
    ops: list[Resources], total_cpus: float, n_items: int, total_gpus: float = 0.0
) -> tuple[list[int], float]:
    """Actors per operator of one stage's chain, and a factor for their CPU requests, so that
    every operator can hold its actors at the same time (an operator that can't get a CPU
    stalls the whole stream).

    Operators with a fixed `concurrency` keep it; a GPU operator without one gets as many
    actors as the cluster's GPUs hold (one per GPU at num_gpus 1); the others share the CPUs
    left in equal parts; every operator gets at least one actor and no more than it has
    batches. When even one actor each asks for more CPUs than the cluster has (a 1-core
    machine, a cluster that lost a node), every request is scaled down by the returned factor.
    """
    gpu_n = {  # GPU operators without a fixed concurrency: one actor per num_gpus of the cluster
        i: max(1, int(total_gpus // r.num_gpus))
        for i, r in enumerate(ops)
        if r.num_gpus and not r.concurrency
    }
    fixed = sum(r.num_cpus * (r.concurrency or gpu_n.get(i, 0)) for i, r in enumerate(ops))
    auto = [r for i, r in enumerate(ops) if not r.concurrency and i not in gpu_n]
    left = max(0.0, total_cpus - fixed)
    out = []
    for i, r in enumerate(ops):
        if r.concurrency or i in gpu_n:
            n = r.concurrency or gpu_n[i]
        else:
            share = left / len(auto)
            n = int(share // r.num_cpus) if r.num_cpus > 0 else int(total_cpus)
        out.append(max(1, min(n, -(-n_items // r.batch_size))))
    need = sum(r.num_cpus * n for r, n in zip(ops, out, strict=True))
    factor = 1.0 if need <= total_cpus + 1e-9 else total_cpus / need
    if factor < 1.0:
        log.info(
            "stage operators ask for %.2f CPUs, the cluster has %.2f: CPU requests scaled by %.2f",
            need,
            total_cpus,
            factor,
        )
    return out, factor


def map_kwargs(
    stage_cls: type, cfg: Any, res: Resources, concurrency: int, cpu_factor: float = 1.0
) -> dict[str, Any]:
    """map_batches arguments for one operator from its Resources block."""
    from ray.data import ActorPoolStrategy

    kwargs: dict[str, Any] = dict(
        fn_constructor_args=(cfg,),
        batch_size=res.batch_size,
        batch_format=getattr(stage_cls, "BATCH_FORMAT", "numpy"),
        num_cpus=res.num_cpus * cpu_factor,
        compute=ActorPoolStrategy(size=concurrency),
    )
    if res.num_gpus:
        kwargs["num_gpus"] = res.num_gpus
    return kwargs


NODE_COLUMN = "_ray_node"


def node_tagged(cls: type) -> type:
    """Subclass of a stage whose output carries the Ray node id that produced each row.

    The sink strips the column and counts rows per node into the stage's metrics, so a cluster
    run shows where work ran without touching any table schema.
    """

    def __call__(self, batch):
        import ray

        out = cls.__call__(self, batch)
        node = ray.get_runtime_context().get_node_id()
        return out.append_column(NODE_COLUMN, pa.array([node] * out.num_rows, pa.string()))

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


class PartSink:
    """Collects result tables and writes a part every `rows` rows or `seconds` seconds."""

    def __init__(
        self,
        table: Table,
        rows: int = 256,
        seconds: float = 20.0,
        transform: Callable[[pa.Table], pa.Table] | None = None,
    ):
        self.table = table
        self.rows = rows
        self.seconds = seconds
        self.transform = transform
        self._pending: list[pa.Table] = []
        self._n = 0
        self._last = time.monotonic()
        self.name = table.name
        self.expected: int | None = None  # output rows expected, for an ETA (1:1 stages)
        self._t0 = time.monotonic()
        self._last_log = 0.0
        self.written = 0
        self.counts: dict[str, int] = {}
        self.nodes: dict[str, int] = {}  # Ray node id -> rows produced there
        self.lanes: dict[str, int] = {}  # decode lane -> clips it decoded

    def add(self, batch: pa.Table) -> None:
        if NODE_COLUMN in batch.column_names:
            for node in batch.column(NODE_COLUMN).to_pylist():
                self.nodes[node] = self.nodes.get(node, 0) + 1
            batch = batch.drop_columns([NODE_COLUMN])
        if self.transform is not None:
            batch = self.transform(batch)
        full = disk_full_rows(batch)
        if full is not None:  # a worker ran out of space: store what it did write, then stop the stage
            import pyarrow.compute as pc

            self._pending.append(batch.filter(pc.invert(full)))
            self.flush()
            raise DiskFull.from_rows(self.table, batch.filter(full))
        if batch.num_rows == 0:
            return
        self._pending.append(batch)
        self._n += batch.num_rows
        if self._n >= self.rows or time.monotonic() - self._last >= self.seconds:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        merged = pa.concat_tables(  # (a stage may leave out nullable columns and created_at)
            [conform(t, self.table.schema) if t.schema != self.table.schema else t for t in self._pending]
        )
        try:
            self.table.write(merged)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.table.clean_temp()  # the half-written temp part goes; no part became visible
            raise DiskFull.for_part(self.table, merged, exc) from exc
        if "status" in merged.column_names:
            for status in merged.column("status").to_pylist():
                self.counts[status] = self.counts.get(status, 0) + 1
        if "decode_lane" in merged.column_names:  # which decode lane served each clip (score)
            for vc in pc.value_counts(merged.column("decode_lane").drop_null()).to_pylist():
                self.lanes[vc["values"]] = self.lanes.get(vc["values"], 0) + vc["counts"]
        self.written += merged.num_rows
        self._pending, self._n, self._last = [], 0, time.monotonic()
        self._progress()

    def _progress(self) -> None:
        now = time.monotonic()
        if now - self._last_log < 10.0:
            return
        self._last_log = now
        elapsed = now - self._t0
        rate = self.written / max(elapsed, 1e-9)
        if self.expected:
            eta = max(self.expected - self.written, 0) / max(rate, 1e-9)
            log.info(
                "%s: %d/%d rows written, %.2f rows/s, ETA %.0fs",
                self.name,
                self.written,
                self.expected,
                rate,
                eta,
            )
        else:
            log.info("%s: %d rows written, %.2f rows/s", self.name, self.written, rate)


def run_stage(
    name: str,
    chain: Chain,
    items: pa.Table,
    sink: PartSink,
    *,
    ray_address: str | None = None,
    ray_cfg: RayConfig | None = None,
) -> PartSink:
    """Run `chain` over `items` (one row per unit of work) into `sink`: through Ray Data, or in
    this process when the stage is small (`runs_inline`). Both executors take the same chain and
    feed each operator batches of its own `resources.batch_size`, so they give the same rows."""
    if items.num_rows == 0:
        log.info("%s: nothing to do", name)
        return sink
    ray_cfg = ray_cfg or RayConfig()
    t0 = time.monotonic()
    resources = [op.resources for op in chain.ops]
    if runs_inline(ray_cfg, ray_address, resources, items.num_rows):
        from curation.inline import run_inline

        run_inline(name, chain, items, sink, cpus=ray_cfg.num_cpus or os.cpu_count() or 1)
        return _finish(name, items, sink, t0, inline=True)
    import ray.data  # not before: an inline stage never pays for importing Ray (~0.9 CPU-s)

    init_ray(ray_cfg, ray_address)
    # One block per batch, made on the driver, so the work spreads over every actor from the
    # start. from_blocks reads the blocks' metadata here; from_arrow would start a worker
    # process for a metadata task (about 0.7 CPU-seconds and 0.7 s per stage).
    size = resources[0].batch_size
    ds = ray.data.from_blocks([items.slice(i, size) for i in range(0, items.num_rows, size)])
    planned = cluster_cpus()
    actors, cpu_factor = plan_concurrency(resources, planned, items.num_rows, cluster_gpus())
    for i, (op, n) in enumerate(zip(chain.ops, actors, strict=True)):
        cls = node_tagged(op.cls) if i == len(chain.ops) - 1 else op.cls
        ds = ds.map_batches(cls, **map_kwargs(cls, op.cfg, op.resources, n, cpu_factor))
    watch = NodeWatch(planned)
    batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))  # a generator
    try:
        with watch:
            for batch in batches:
                with watch.storing():
                    sink.add(batch)
    except nodewatch.ClusterShrank:
        batches.close()  # Ray Data's executor stops: its actors give their CPUs back
        sink.flush()  # what arrived is kept; the next run of the stage does the rest
        raise
    except Exception as exc:  # a task or actor lost with its node: the same, if a node is gone
        if isinstance(exc, DiskFull):
            raise
        watch.seen = nodewatch.alive_cpus()
        if watch.seen >= planned - 1e-9:
            raise
        sink.flush()
        raise watch.shrank() from exc
    return _finish(name, items, sink, t0, inline=False)


def runs_inline(cfg: RayConfig, address: str | None, ops: list[Resources], n_items: int) -> bool:
    """True when a stage this small is cheaper without Ray (see RayConfig.inline_max_items)."""
    if n_items > cfg.inline_max_items or any(r.num_gpus for r in ops):
        return False
    if address or os.environ.get("RAY_ADDRESS") or cfg.address:
        return False
    ray = sys.modules.get("ray")  # no import: importing Ray alone costs ~1 CPU-second
    return ray is None or not ray.is_initialized()  # Ray already up (a `run` needed it): use it


def _finish(name: str, items: pa.Table, sink: PartSink, t0: float, *, inline: bool) -> PartSink:
    sink.flush()
    elapsed = time.monotonic() - t0
    log.info(
        "%s: %d in, %d rows out %s in %.1fs (%.2f items/s)",
        name,
        items.num_rows,
        sink.written,
        dict(sorted(sink.counts.items())),
        elapsed,
        items.num_rows / max(elapsed, 1e-9),
    )
    try:
        _write_metrics(sink, name, items, elapsed, inline)
    except OSError as exc:  # metrics are a convenience: a full disk must not fail a finished stage
        log.warning("%s: metrics not written (%s)", name, exc)
    return sink


def _write_metrics(sink: PartSink, name: str, items: pa.Table, elapsed: float, inline: bool) -> None:
    write_metrics(
        sink.table.root,
        name,
        dict(
            items=items.num_rows,
            rows=sink.written,
            counts=sink.counts,
            nodes=sink.nodes,
            seconds=round(elapsed, 3),
            items_per_s=round(items.num_rows / max(elapsed, 1e-9), 4),
            inline=inline,
            **({"decode_lanes": sink.lanes} if sink.lanes else {}),
        ),
    )


def write_metrics(root: Path | fs.S3Path, stage: str, metrics: dict[str, Any]) -> Path:
    """One JSON per stage run under `<root>/_metrics/` (what ran where, how fast)."""
    out = fs.upath(root) / "_metrics"
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = out / f"{stage}-{stamp}-{time.time_ns() % 10**6:06d}.json"
    path.write_text(json.dumps({"stage": stage, "finished_at": stamp, **metrics}, indent=1))
    return path
