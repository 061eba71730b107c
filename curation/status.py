"""`reelsift status` and the filter dry-run diff: where a run root stands, read from its tables.

status: one row per registered stage (curation/registry.py) with what its table holds and what is
still to do. `pending` counts the rows of the stage's own `pending` query (the work its next run
would take: keys with no row yet, and retryable error rows), in the stage's unit of input:
videos for split, clips after it. Caption's and align's depend on the config (model, prompt,
CLIP): `status --config C` gives them, without it they are `?`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.pipeline import all_stages
from manifests import fs
from manifests.db import connect, shared_views
from manifests.store import Table

STATUS_SCHEMA = pa.schema([
    pa.field("stage", pa.string()),
    pa.field("table", pa.string()),
    pa.field("done", pa.int64()),  # rows written without error (ok + rejected; kept + rejected for filter)
    pa.field("rejected", pa.int64()),  # of done: rejected (split: too short; filter: not kept)
    pa.field("error", pa.int64()),  # rows with status='error'
    pa.field("pending", pa.int64()),  # what the stage's next run takes; null when not known here
    pa.field("pending_unit", pa.string()),  # what `pending` counts: videos or clips
    pa.field("pending_needs", pa.string()),  # why pending is null: 'input' or 'config'
    pa.field("last_run", pa.timestamp("us", tz="UTC")),  # newest created_at in the table
])


def stage_status(root: str | Path, cfg: Any = None) -> pa.Table:
    """One row per registered stage (STATUS_SCHEMA), in run order; an optional stage (dedup,
    caption, align) only once its table has rows. `pending` runs the stage's own `pending`
    query: the rows its next run would take. A query that needs the config (`cfg`, the
    CurateConfig) is left null without one. Every figure comes from one query (`shared_views`)."""
    root = fs.upath(root)
    con = connect(root)
    shown = [s for s in all_stages() if not (s.optional and not Table(root, s.table).exists())]
    pending = [stage.pending_sql(con, cfg) for stage in shown]
    parts = []
    for i, (stage, sql) in enumerate(zip(shown, pending, strict=True)):
        parts.append(f"""(SELECT count(*) FILTER (WHERE {stage.done}) AS done_{i},
                                 count(*) FILTER (WHERE {stage.rejected}) AS rejected_{i},
                                 count(*) FILTER (WHERE {stage.error}) AS error_{i},
                                 max(created_at) AS last_{i} FROM {stage.table})""")
        if sql is not None:
            parts.append(f"(SELECT count(*) AS pending_{i} FROM ({sql}))")
    body = f"SELECT * FROM {', '.join(parts)}"
    got = con.execute(shared_views(body) + body).fetchall()[0]
    got = dict(zip([d[0] for d in con.description], got, strict=True))
    rows = []
    for i, (stage, sql) in enumerate(zip(shown, pending, strict=True)):
        needs = None if sql is not None else ("input" if stage.pending is None else "config")
        rows.append(dict(stage=stage.name, table=stage.table, done=got[f"done_{i}"],
                         rejected=got[f"rejected_{i}"], error=got[f"error_{i}"],
                         pending=got.get(f"pending_{i}"), pending_unit=stage.unit, pending_needs=needs,
                         last_run=got[f"last_{i}"]))
    return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)


def format_status(table: pa.Table, *, root: str | Path = "R", now: datetime | None = None) -> str:
    """The status table as aligned text, with the age of each stage's last run and a hint."""
    now = now or datetime.now(timezone.utc)
    head = ["stage", "table", "done", "rejected", "error", "pending", "last run (UTC)"]
    lines = []
    for r in table.to_pylist():
        pending = (_count(r["pending"], r["pending_unit"]) if r["pending"] is not None
                   else "?" if r["pending_needs"] == "config" else "-")
        last = "never" if r["last_run"] is None else (
            f"{r['last_run']:%Y-%m-%d %H:%M:%S} ({_age(now - r['last_run'])} ago)")
        lines.append([r["stage"], r["table"], str(r["done"]), str(r["rejected"]), str(r["error"]),
                      pending, last])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(head)]
    numeric = {2, 3, 4}
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.rjust(w) if i in numeric else c.ljust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()
    out = [fmt(head)] + [fmt(x) for x in lines]
    todo = [f"{r['stage']} ({_count(r['pending'], r['pending_unit'])})"
            for r in table.to_pylist() if r["pending"]]
    errors = sum(r["error"] for r in table.to_pylist())
    unknown = [r["stage"] for r in table.to_pylist() if r["pending_needs"] == "config"]
    if todo:
        out.append("pending: " + ", ".join(todo) + " -- re-run the same command to finish")
    elif not unknown:
        out.append("nothing pending")
    if unknown:
        out.append(f"? {', '.join(unknown)}: what is pending depends on the config (caption's model and "
                   f"prompt, align's CLIP): reelsift status --root {root} --config C")
    if errors:
        out.append(f"{errors} error row(s), see: reelsift sql --named errors --root {root}")
    return "\n".join(out)


def _count(n: int, unit: str) -> str:
    return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"


def _age(delta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}min"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"
