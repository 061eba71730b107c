"""CPU throughput and recall of near-duplicate grouping (filters/dedup.py) on synthetic embeddings.

The corpus imitates CLIP embeddings: unit vectors around `--topics` topic directions (two
unrelated clips of one topic have cosine ~0.4), plus planted near-duplicate groups: a base clip
and 1-5 copies, each copy at cosine 0.97-0.995 to its base (two copies may be < threshold to each
other: they must be joined through the base, as connected components do). It reports clips/s of
`find_groups` (one streamed read spilled to disk, k-means, per-cluster comparisons, kept-clip
pick) on one thread, and how well the planted groups are recovered:

  group recall  planted groups found whole (every member in one found group)
  pair recall   planted same-group pairs found in one group
  false merges  clips put in a group with a clip of another planted group or a stranger

    python bench/dedup_cpu.py                       # 100k x 768, table + bench/results/dedup_cpu.json
    python bench/dedup_cpu.py --n 20000 --clips-per-cluster 500 1000 --n-probe 1 2

Not a pass/fail test: timings depend on the machine (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import Result  # noqa: E402  (after sys.path)
from filters.config import DedupConfig  # noqa: E402
from filters.dedup import find_groups  # noqa: E402


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_corpus(n: int, dim: int, topics: int, dup_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (n, dim) unit embeddings in random order, (n,) planted group label (-1 = stranger)."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.normal(size=(topics, dim)))
    planted_rows = int(n * dup_frac)
    sizes = []
    while sum(sizes) < planted_rows:
        sizes.append(int(rng.integers(2, 7)))  # base + 1..5 copies
    sizes[-1] -= sum(sizes) - planted_rows
    if sizes[-1] < 2:
        sizes.pop()
    n_base = n - sum(sizes) + len(sizes)  # every group's base is also a corpus clip
    spread = 1.2 / np.sqrt(dim)  # per-dim noise: |noise| ~1.2, same-topic cosine ~0.4
    base = _unit(centers[rng.integers(0, topics, n_base)] + spread * rng.normal(size=(n_base, dim)))
    rows, labels = [base], [np.full(n_base, -1)]
    for g, size in enumerate(sizes):
        labels[0][g] = g
        eps = rng.uniform(np.tan(np.arccos(0.995)), np.tan(np.arccos(0.97)), size - 1)  # copy-to-base angle
        noise = _unit(rng.normal(size=(size - 1, dim))) * eps[:, None]
        rows.append(_unit(base[g] + noise))
        labels.append(np.full(size - 1, g))
    x, label = np.concatenate(rows), np.concatenate(labels)
    perm = rng.permutation(len(x))
    return x[perm], label[perm]


def recall(found: np.ndarray, planted: np.ndarray) -> dict[str, float]:
    idx = np.nonzero(planted >= 0)[0]
    p, f = planted[idx], found[idx]
    order = np.lexsort((f, p))
    p, f = p[order], f[order]
    starts = np.r_[0, np.nonzero(np.diff(p))[0] + 1]
    whole = np.array(
        [len(np.unique(f[s:e])) == 1 for s, e in zip(starts, np.r_[starts[1:], len(p)], strict=True)]
    )
    pairs_planted = pairs_found = 0
    for s, e in zip(starts, np.r_[starts[1:], len(p)], strict=True):
        _, counts = np.unique(f[s:e], return_counts=True)
        pairs_planted += (e - s) * (e - s - 1) // 2
        pairs_found += int((counts * (counts - 1) // 2).sum())
    # false merges: found groups holding more than one planted label (strangers count as their own)
    lab = np.where(planted >= 0, planted, -1 - np.arange(len(planted)))
    order = np.lexsort((lab, found))
    fg, lb = found[order], lab[order]
    new_label = np.r_[True, (np.diff(fg) != 0) | (np.diff(lb) != 0)]
    labels_per_group = np.bincount(fg[new_label])
    mixed = labels_per_group[found] > 1
    return {
        "groups_planted": int(len(starts)),
        "group_recall": float(whole.mean()),
        "pair_recall": float(pairs_found / max(1, pairs_planted)),
        "false_merge_clips": int(mixed.sum()),
    }


def run_one(x: np.ndarray, planted: np.ndarray, cfg: DedupConfig, workdir: Path | None) -> dict:
    def batches():
        return (x[i : i + cfg.batch_rows] for i in range(0, len(x), cfg.batch_rows))

    t0, c0 = time.perf_counter(), time.process_time()
    res = find_groups(batches, np.zeros(len(x)), np.arange(len(x)).astype(str), cfg, workdir)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "clips_per_cluster": cfg.clips_per_cluster,
        "n_probe": cfg.n_probe,
        "n_clusters": res.n_clusters,
        "cpu_s": round(cpu, 2),
        "wall_s": round(wall, 2),
        "clips_per_cpu_s": round(len(x) / cpu),
        "sims_per_clip": round(res.pairs_compared / len(x)),
        "dropped": int((res.kept != np.arange(len(x))).sum()),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in recall(res.group, planted).items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--topics", type=int, default=300)
    ap.add_argument("--dup-frac", type=float, default=0.2, help="fraction of clips in planted groups")
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--clips-per-cluster", type=int, nargs="+", default=[1000])
    ap.add_argument("--n-probe", type=int, nargs="+", default=[2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None, help="where embeddings are spilled")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dedup_cpu.json")
    args = ap.parse_args()

    x, planted = make_corpus(args.n, args.dim, args.topics, args.dup_frac, args.seed)
    rows = []
    with threadpool_limits(args.threads):
        for cpc in args.clips_per_cluster:
            for probe in args.n_probe:
                cfg = DedupConfig(threshold=args.threshold, clips_per_cluster=cpc, n_probe=probe)
                rows.append(run_one(x, planted, cfg, args.workdir))
                print(rows[-1], flush=True)

    cols = ["clips_per_cluster", "n_probe", "n_clusters", "cpu_s", "clips_per_cpu_s", "sims_per_clip",
            "group_recall", "pair_recall", "false_merge_clips"]
    res = Result("dedup_cpu", out=args.out.parent, suffix="")
    res.add("what", "near-duplicate grouping: clips/s per CPU-second (process time) and planted-group recall")
    res.add("threads", args.threads)
    res.add("numpy", np.__version__)
    res.add("params", {
        "n": args.n, "dim": args.dim, "topics": args.topics, "dup_frac": args.dup_frac,
        "threshold": args.threshold, "seed": args.seed,
        "base_config": asdict(DedupConfig(threshold=args.threshold)),
    })
    res.add("rows", rows)
    res.table(cols, ([r[c] for c in cols] for r in rows), title=(
        f"{args.n} clips x {args.dim}, {int(args.dup_frac * 100)}% in planted groups, "
        f"threshold {args.threshold}, {args.threads} thread(s)"))
    res.write()


if __name__ == "__main__":
    main()
