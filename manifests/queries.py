"""Named queries: `.sql` files under `manifests/queries/`, run with `reelsift sql --named NAME`.

Each file is one read-only SELECT over the run root's views (see `manifests/db.py`); its leading
`--` comment says what the result means. Add a query by adding a file: its name (without `.sql`)
is the query's name. `docs/queries.md` holds the output of each one on the demo run, written by
`python -m manifests.queries --root R > docs/queries.md`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pyarrow as pa

from manifests import db

QUERY_DIR = Path(__file__).with_name("queries")

class UnknownQuery(LookupError):
    """A named query that has no `.sql` file; the message lists the names there are."""


def names() -> list[str]:
    """Sorted names of the named queries."""
    return sorted(p.stem for p in QUERY_DIR.glob("*.sql"))


def load(name: str) -> str:
    """SQL text of the named query (comments included)."""
    path = QUERY_DIR / f"{name}.sql"
    if "/" in name or "\\" in name or not path.is_file():
        raise UnknownQuery(f"no named query {name!r}; named queries are: {', '.join(names())}")
    return path.read_text()


def describe(name: str) -> str:
    """The leading `--` comment of the named query, as one paragraph."""
    lines = []
    for line in load(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[2:].strip())
    return " ".join(lines)


def run(root: str | Path, name: str) -> pa.Table:
    """Run the named query over the run root (read-only) and return its rows."""
    sql = load(name)
    con = db.connect(root)
    db.check_read_only(con, sql)
    return con.sql(sql).to_arrow_table()


def format_markdown(table: pa.Table, max_rows: int = 50) -> str:
    """Rows as a GitHub markdown table (floats to 4 significant digits)."""
    names_ = table.column_names
    rows = [[_cell(v) for v in r.values()] for r in table.slice(0, max_rows).to_pylist()]
    out = ["| " + " | ".join(names_) + " |", "|" + "|".join("---" for _ in names_) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    if table.num_rows > max_rows:
        out.append(f"\n... {table.num_rows - max_rows} more rows")
    if table.num_rows == 0:
        out.append("\n(no rows)")
    return "\n".join(out)


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.4g}"
    text = str(v).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def markdown_doc(root: str | Path) -> str:
    """docs/queries.md: each named query's purpose, its command and its output on `root`."""
    parts = [
        "# Named queries",
        "",
        "`reelsift sql --named NAME --root R` runs `manifests/queries/NAME.sql` (read-only) over the "
        'run root\'s tables; `reelsift sql "SELECT ..."` accepts the same SQL. The output below is real: '
        f"the demo corpus (`reelsift demo-data`) run with `configs/offline.yaml` into `{root}`, "
        f"written by `python -m manifests.queries --root {root} > docs/queries.md`.",
        "",
        "With `configs/offline.yaml` the aesthetic/CLIP scores and the captions come from untrained, "
        "randomly initialised tiny models (`scores.aesthetic_untrained`, `captions.untrained` and "
        "`alignment.untrained` are true): they prove the plumbing and carry no meaning.",
    ]
    for name in names():
        command = f"reelsift sql --named {name} --root {root}"
        parts += [
            "",
            f"## {name}",
            "",
            describe(name),
            "",
            "```",
            command,
            "```",
            "",
            format_markdown(run(root, name)),
        ]
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print docs/queries.md for a run root.")
    parser.add_argument("--root", required=True)
    args = parser.parse_args(argv)
    print(markdown_doc(args.root), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
