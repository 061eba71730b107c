"""What the CLI prints: a run root's summary counts, and query results as a table, CSV or JSON."""

from __future__ import annotations

import json
from pathlib import Path

from manifests import fs


def print_summary(root: Path | fs.S3Path) -> None:
    from manifests.db import connect

    con = connect(root)  # one connection: each one lists every table's parts again

    def one(sql):
        return con.sql(sql).to_arrow_table().to_pylist()

    print("status counts:")
    for table in ("videos", "clips"):
        rows = one(f"SELECT status, count(*) AS n FROM {table} GROUP BY 1 ORDER BY 1")
        print(f"  {table:9s} " + ", ".join(f"{r['status']}={r['n']}" for r in rows))
    kept = one("SELECT tier, count(*) AS n FROM decisions WHERE keep GROUP BY 1 ORDER BY 1")
    rej = one("SELECT count(*) AS n FROM decisions WHERE NOT keep")[0]["n"]
    print("  decisions " + ", ".join([f"kept@{r['tier']}={r['n']}" for r in kept] + [f"rejected={rej}"]))
    sh = one("SELECT status, count(*) AS n FROM shards GROUP BY 1 ORDER BY 1")
    print("  shards    " + ", ".join(f"{r['status']}={r['n']}" for r in sh))
    hin = one("SELECT coalesce(sum(duration_s), 0) / 3600 AS h FROM videos WHERE status = 'ok'")[0]["h"]
    hout = one("SELECT coalesce(sum(n_frames / fps), 0) / 3600 AS h FROM shards WHERE status = 'ok'")[0]["h"]
    print(f"hours in: {hin:.4f}  hours out: {hout:.4f}")



def write_table(table, fmt: str, max_rows: int, out) -> None:
    import pyarrow.csv as pacsv

    if fmt == "csv":
        import io

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        out.write(buf.getvalue().decode())
    elif fmt == "json":
        out.write(json.dumps(table.to_pylist(), default=str, indent=1) + "\n")
    else:
        out.write(format_table(table, max_rows) + "\n")


def format_table(table, max_rows: int = 200) -> str:
    names = table.column_names
    rows = [[_cell(v) for v in r.values()] for r in table.slice(0, max_rows).to_pylist()]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [line(names), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows]
    if table.num_rows > max_rows:
        out.append(f"... {table.num_rows - max_rows} more rows (use --format csv for all)")
    out.append(f"({table.num_rows} rows)")
    return "\n".join(out)


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    text = "NULL" if v is None else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
