"""`reelsift status` and the filter dry-run diff: where a run root stands, read from its tables.

status: one row per stage with what its table holds and what is still to do. `pending` counts the
upstream keys that are ok but have no row downstream yet (the work the next run of that stage
would take), in the stage's unit of input: videos for split, clips after it.

funnel_diff: what a `filter --dry-run` would change against the current decisions.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

from curation.stages.filter import FilterSummary
from manifests import fs, queries
from manifests.schemas import TABLES
from manifests.store import Table

STATUS_SCHEMA = pa.schema([
    pa.field("stage", pa.string()),
    pa.field("table", pa.string()),
    pa.field("done", pa.int64()),  # rows written without error (ok + rejected; kept + rejected for filter)
    pa.field("rejected", pa.int64()),  # of done: rejected (split: too short; filter: not kept)
    pa.field("error", pa.int64()),  # rows with status='error'
    pa.field("pending", pa.int64()),  # upstream ok keys with no row here yet; null when unknowable
    pa.field("pending_unit", pa.string()),  # what `pending` counts: videos or clips
    pa.field("last_run", pa.timestamp("us", tz="UTC")),  # newest created_at in the table
])

_OK_CLIPS = """
    SELECT c.clip_id FROM clips c JOIN videos v ON v.video_id = c.video_id AND v.status = 'ok'
    WHERE c.status = 'ok'
"""

# stage, table, SQL giving (done, rejected, error, pending, last_run), pending unit
_STAGES: list[tuple[str, str, str, str | None]] = [
    ("ingest", "videos", """
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'error'), NULL, max(created_at) FROM videos
    """, None),
    ("split", "clips", """
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'error'),
               (SELECT count(*) FROM videos WHERE status = 'ok'
                AND video_id NOT IN (SELECT video_id FROM clips)),
               max(created_at) FROM clips
    """, "videos"),
    ("score", "scores", f"""
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'error'),
               (SELECT count(*) FROM ({_OK_CLIPS}) WHERE clip_id NOT IN (SELECT clip_id FROM scores)),
               max(created_at) FROM scores
    """, "clips"),
    ("filter", "decisions", f"""
        SELECT count(*), count(*) FILTER (WHERE NOT keep), 0,
               (SELECT count(*) FROM ({_OK_CLIPS}) WHERE clip_id NOT IN (SELECT clip_id FROM decisions)),
               max(created_at) FROM decisions
    """, "clips"),
    ("caption", "captions", """
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'error'),
               (SELECT count(*) FROM decisions WHERE keep
                AND clip_id NOT IN (SELECT clip_id FROM captions)),
               max(created_at) FROM captions
    """, "clips"),
    ("align", "alignment", """
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'rejected'),
               count(*) FILTER (WHERE status = 'error'),
               (SELECT count(*) FROM captions WHERE status = 'ok'
                AND clip_id IN (SELECT clip_id FROM decisions WHERE keep)
                AND clip_id NOT IN (SELECT clip_id FROM alignment)),
               max(created_at) FROM alignment
    """, "clips"),
    # rejected: clips a re-filter took out of their tar ('removed'); pending counts them again
    # once kept (in any tier) and a clip kept now in another tier than its tar's
    ("shard", "shards", """
        SELECT count(*) FILTER (WHERE status <> 'error'), count(*) FILTER (WHERE status = 'removed'),
               count(*) FILTER (WHERE status = 'error'),
               (SELECT count(*) FROM decisions d WHERE keep AND NOT EXISTS (
                    SELECT 1 FROM shards s WHERE s.clip_id = d.clip_id
                    AND (s.status = 'error' OR (s.status = 'ok' AND s.tier = d.tier)))),
               max(created_at) FROM shards
    """, "clips"),
]


def stage_status(root: str | Path) -> pa.Table:
    """One row per stage (STATUS_SCHEMA); caption and align rows only once their tables have rows."""
    root = fs.upath(root)
    con = queries.connect(root)
    rows = []
    for stage, table, sql, unit in _STAGES:
        if table in queries.PLANNED and not (table in TABLES and Table(root, table).exists()):
            continue  # an optional stage (caption, align) that has not run on this root
        done, rejected, error, pending, last = con.execute(sql).fetchall()[0]
        rows.append(dict(stage=stage, table=table, done=done, rejected=rejected, error=error,
                         pending=pending, pending_unit=unit, last_run=last))
    return pa.Table.from_pylist(rows, schema=STATUS_SCHEMA)


def format_status(table: pa.Table, *, root: str | Path = "R", now: datetime | None = None) -> str:
    """The status table as aligned text, with the age of each stage's last run and a hint."""
    now = now or datetime.now(timezone.utc)
    head = ["stage", "table", "done", "rejected", "error", "pending", "last run (UTC)"]
    lines = []
    for r in table.to_pylist():
        pending = "-" if r["pending"] is None else _count(r["pending"], r["pending_unit"])
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
    if todo:
        out.append("pending: " + ", ".join(todo) + " -- re-run the same command to finish")
    else:
        out.append("nothing pending")
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


def funnel_diff(root: str | Path, summary: FilterSummary) -> str:
    """How a (dry-run) filter `summary` would change the funnel vs the current decisions.

    Rows: clips kept per tier, rejected, and the reasons of rejected clips (`score@tier`), each
    with the current count, the new count and the change; unchanged reason rows are left out.
    """
    con = queries.connect(root)
    kept = dict(con.execute("SELECT tier, count(*) FROM decisions WHERE keep GROUP BY tier").fetchall())
    rejected = con.execute("SELECT count(*) FROM decisions WHERE NOT keep").fetchall()[0][0]
    reasons = dict(con.execute("""
        SELECT reason_head(r), count(*) FROM (SELECT unnest(reasons) AS r FROM decisions WHERE NOT keep)
        GROUP BY 1
    """).fetchall())  # the same `score@tier` heads as FilterSummary.reasons
    current = con.execute(
        "SELECT any_value(filter_run), any_value(config_hash), count(*) FROM decisions").fetchall()[0]

    tiers = sorted(set(kept) | set(summary.kept_per_tier), key=_tier_key)
    rows = [(f"kept@{t}", kept.get(t, 0), summary.kept_per_tier.get(t, 0)) for t in tiers]
    rows.append(("kept (all tiers)", sum(kept.values()), sum(summary.kept_per_tier.values())))
    rows.append(("rejected", rejected, summary.rejected))
    reason_rows = [(f"  {h}", reasons.get(h, 0), summary.reasons.get(h, 0))
                   for h in sorted(set(reasons) | set(summary.reasons))
                   if reasons.get(h, 0) != summary.reasons.get(h, 0)]

    base = ("no decisions yet" if not current[2] else
            f"current = filter run {current[0]} (config {current[1]}, {current[2]} clips)")
    out = [f"funnel change of this filter config vs the current decisions ({base}):"]
    w = max(len(x[0]) for x in rows + reason_rows + [("reasons of rejected clips:", 0, 0)])
    line = lambda name, a, b: f"{name:<{w}}  {a:>8}  {b:>8}  {_signed(b - a):>7}"  # noqa: E731
    out.append(f"{'':<{w}}  {'current':>8}  {'new':>8}  {'change':>7}")
    out += [line(*r) for r in rows]
    if reason_rows:
        out.append("reasons of rejected clips (changed only):")
        out += [line(*r) for r in reason_rows]
    else:
        out.append("reasons of rejected clips: unchanged")
    return "\n".join(out)


def _signed(n: int) -> str:
    return f"+{n}" if n > 0 else ("0" if n == 0 else str(n))


def _tier_key(tier: str) -> tuple[int, str]:
    digits = "".join(ch for ch in tier if ch.isdigit())
    return (-int(digits) if digits else 0, tier)
