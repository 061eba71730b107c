"""`reelsift train` and `reelsift cache-latents`: thin layers over Trainer(cfg).fit() and
training.latents.cache_latents. Wired into curation/cli.py with `register(sub)`.

    reelsift train --config C --root R [--set k=v ...] [--resume] [--steps N] [--out DIR]
    reelsift cache-latents --config C --root R [--set k=v ...] [--overwrite]

`--set` keys are under `train.` (the prefix may be left out: `--set optim.lr=3e-4`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def register(subparsers) -> None:
    """Add the `train` and `cache-latents` subcommands (each sets its handler as `func`)."""
    p = subparsers.add_parser("train", help="train the Linear DiT on a run root's shards")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--steps", type=int, default=None,
                   help="train until this many steps in total (overrides train.steps)")
    p.add_argument("--out", default=None, help="checkpoint folder (default: <root>/checkpoints)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("cache-latents", help="encode every shard clip once with the VAE")
    _common(p)
    p.add_argument("--overwrite", action="store_true", help="re-encode tars that already have latents")
    p.add_argument("--device", default="cpu", help="device of the VAE (cpu, cuda)")
    p.set_defaults(func=cmd_cache_latents)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML config; its `train:` section is read")
    p.add_argument("--root", "-r", required=True, help="run root holding shards/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a train config key, e.g. --set train.optim.lr=3e-4 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs)")


def _load(args):
    from training.config import load_train_config

    cfg = load_train_config(args.config, args.overrides, root=args.root)
    if args.no_progress:
        cfg = replace(cfg, progress=False)
    return cfg


def cmd_train(args) -> int:
    from training.trainer import Trainer

    cfg = _load(args)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    if args.out:
        cfg = replace(cfg, checkpoint=replace(cfg.checkpoint, dir=args.out))
    if str(cfg.checkpoint.dir or cfg.data.root).startswith("s3://"):
        from manifests.configtools import ConfigError

        raise ConfigError("train: shards may be read from s3:// but checkpoints and metrics.jsonl are "
                          "written to a local folder: pass --out DIR (train.checkpoint.dir)")
    trainer = Trainer(cfg, resume=args.resume)
    result = trainer.fit()
    if trainer.info.main:
        first, last = (result.losses[0][1], result.losses[-1][1]) if result.losses else (None, None)
        ckpt = str(result.checkpoint) if result.checkpoint else None
        print(json.dumps({"step": result.step, "checkpoint": ckpt, "first_loss": first, "last_loss": last,
                          "samples_per_s": round(result.samples_per_s, 2)}))
    return 0


def cmd_cache_latents(args) -> int:
    from training.latents import cache_latents

    stats = cache_latents(_load(args), device=args.device, overwrite=args.overwrite)
    print(json.dumps(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training.commands train ...`: the same commands without the curation CLI."""
    import logging
    import sys

    from manifests.configtools import ConfigError

    parser = argparse.ArgumentParser(prog="reelsift")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"error (config): {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
