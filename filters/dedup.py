"""Near-duplicate groups from unit-norm clip embeddings, in near-linear time and bounded memory.

Two clips are near-duplicates when the cosine similarity of their embeddings is >= `threshold`;
a group is a connected component of that relation (so a chain a~b~c is one group even if a and c
are further apart). Comparing all pairs is quadratic, so the corpus is cut first:

  0. the stream is read once and spilled to a float32 file on disk (embeddings never have to fit
     in RAM; every later step reads it back in blocks);
  1. mini-batch spherical k-means over the embeddings (a few passes over blocks);
  2. every embedding is assigned to its `n_probe` nearest centroids;
  3. per cluster, its "home" members (nearest centroid) are compared with every member (home +
     boundary guests from neighbouring clusters), pairs above the threshold are joined;
  4. one global connected-components pass over the per-cluster edges gives the groups.

Cost: ~(kmeans_iters + 1) * N * k * D for k-means and assignment plus n_probe * N * cluster_size * D
for the comparisons (k = N / clips_per_cluster). The comparisons dominate and cost is linear in N
up to N ~ clips_per_cluster^2 / 2 (~500k clips at 1000); beyond that the k-means term grows as
N^2 / clips_per_cluster, so raise clips_per_cluster to ~sqrt(N / 2) (overall O(N^1.5)); a
two-level centroid index would make it linear again. RAM: O(N) small ints/floats plus one
cluster's block; the embeddings live in the spill file.
A pair whose clips land in clusters that neither probes is missed; `n_probe` trades time for
recall at cluster boundaries. Each group keeps its best clip by a score (`pick_kept`); the filter
turns the others into rejections (via the `duplicates` table of curation/stages/dedup.py).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from filters.config import DedupConfig

Batches = Callable[[], Iterator[np.ndarray]]
"""A source of embeddings: calling it yields (n, D) float32 unit-norm batches."""


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def spherical_kmeans(batches: Batches, k: int, iters: int, seed: int) -> np.ndarray:
    """Mini-batch k-means on the unit sphere (cosine): -> (k, D) unit-norm centroids.

    Initial centroids: k distinct rows sampled from the first batches; each batch then moves
    every centroid towards the mean of its assigned rows with a per-centroid rate 1/count
    (Sculley 2010), renormalised. Empty centroids keep their position.
    """
    rng = np.random.default_rng(seed)
    seeds: list[np.ndarray] = []
    have = 0
    for x in batches():
        take = min(len(x), k - have)
        seeds.append(x[rng.choice(len(x), take, replace=False)])
        have += take
        if have >= k:
            break
    centroids = _normalize(np.concatenate(seeds).astype(np.float32))  # (k, D)
    counts = np.zeros(len(centroids), np.float64)
    for _ in range(iters):
        for x in batches():
            assign = np.argmax(x @ centroids.T, axis=1)  # (n,)
            sums = np.zeros_like(centroids)
            np.add.at(sums, assign, x)
            n = np.bincount(assign, minlength=len(centroids)).astype(np.float64)
            hit = n > 0
            counts[hit] += n[hit]
            rate = (n[hit] / counts[hit])[:, None].astype(np.float32)  # per-centroid step
            centroids[hit] = (1 - rate) * centroids[hit] + rate * sums[hit] / n[hit, None]
            centroids[hit] = _normalize(centroids[hit])
    return centroids


def _top_clusters(x: np.ndarray, centroids: np.ndarray, n_probe: int) -> np.ndarray:
    """(n, D) -> (n, n_probe) cluster ids, nearest first."""
    sim = x @ centroids.T  # (n, k)
    if n_probe == 1:
        return np.argmax(sim, axis=1)[:, None]
    top = np.argpartition(-sim, n_probe - 1, axis=1)[:, :n_probe]  # (n, n_probe) unordered
    order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def _cluster_edges(
    emb: np.ndarray, home: np.ndarray, members: np.ndarray, threshold: float, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Edges (a, b) joining every near-duplicate pair inside one cluster, reduced to a spanning
    forest: at most len(members) edges however dense the cluster is.

    home: global ids of the cluster's home members; members: all its global ids (home first).
    """
    x = np.asarray(emb[members])  # (m, D) gathered from the memmap, sorted reads
    rows, cols = [], []
    for start in range(0, len(home), block):
        s = x[start : start + len(home[start : start + block])] @ x.T  # (b, m)
        i, j = np.nonzero(s >= threshold)
        keep = i + start != j
        rows.append(i[keep] + start)
        cols.append(j[keep])
    i, j = np.concatenate(rows), np.concatenate(cols)
    if len(i) == 0:
        return i, j
    m = len(members)
    n_comp, labels = connected_components(
        coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(m, m)), directed=False
    )
    # link each member to the first member of its component (a star spans the component)
    first = np.full(n_comp, -1)
    first[labels[::-1]] = np.arange(m)[::-1]
    linked = first[labels] != np.arange(m)
    sizes = np.bincount(labels, minlength=n_comp)
    linked &= sizes[labels] > 1
    return members[first[labels[linked]]], members[linked]


@dataclass
class DedupResult:
    """Groups of near-duplicates over N embeddings (rows in stream order)."""

    group: np.ndarray
    """(N,) int64 group label; singletons have a group of their own."""
    group_size: np.ndarray
    """(N,) int64 size of each row's group."""
    kept: np.ndarray
    """(N,) int64 row of the clip each row's group keeps (see `pick_kept`); == row when kept."""
    similarity: np.ndarray
    """(N,) float32 cosine to the kept clip; NaN for kept rows."""
    n_clusters: int
    pairs_compared: int
    """Similarities computed in step 3 (the dominant cost)."""


def _spill(batches: Batches, path: Path) -> np.ndarray:
    """Write the stream once to a raw float32 file; -> read-only (N, D) memmap of it."""
    n, dim = 0, 0
    with open(path, "wb") as f:
        for x in batches():
            f.write(np.ascontiguousarray(x, np.float32).tobytes())
            n, dim = n + len(x), x.shape[1]
    if n == 0:
        return np.zeros((0, 0), np.float32)
    return np.memmap(path, np.float32, "r", shape=(n, dim))


def find_groups(
    batches: Batches, scores: np.ndarray, ids: np.ndarray, cfg: DedupConfig, workdir: str | Path | None = None
) -> DedupResult:
    """Group near-duplicate embeddings and pick each group's kept clip.

    batches: read exactly once and spilled to a file under `workdir` (a temp dir when None),
    which k-means, assignment and comparisons then read in blocks; removed at the end.
    scores, ids: (N,) in stream order, for `pick_kept`.
    """
    with tempfile.TemporaryDirectory(dir=workdir, prefix="reelsift-dedup-") as tmp:
        emb = _spill(batches, Path(tmp) / "emb.f32")
        n = len(emb)
        if len(scores) != n or len(ids) != n:
            raise ValueError(f"{n} embeddings but {len(scores)} scores and {len(ids)} ids")
        if n == 0:
            empty = np.zeros(0, np.int64)
            return DedupResult(empty, empty, empty, np.zeros(0, np.float32), 0, 0)
        rows = cfg.batch_rows

        def blocks() -> Iterator[np.ndarray]:
            return (np.asarray(emb[i : i + rows]) for i in range(0, n, rows))

        k = max(1, min(n, math.ceil(n / cfg.clips_per_cluster)))
        n_probe = min(cfg.n_probe, k)
        centroids = spherical_kmeans(blocks, k, cfg.kmeans_iters, cfg.seed)
        assign = np.concatenate([_top_clusters(x, centroids, n_probe) for x in blocks()])  # (n, n_probe)
        by_home = np.argsort(assign[:, 0], kind="stable")
        home_bounds = np.searchsorted(assign[by_home, 0], np.arange(k + 1))
        # guests: (row, cluster) for each row's 2nd..n_probe-th nearest cluster
        guest_ids = np.repeat(np.arange(n), n_probe - 1)  # (n * (n_probe - 1),)
        guest_cl = assign[:, 1:].ravel()
        by_guest = np.argsort(guest_cl, kind="stable")
        guest_bounds = np.searchsorted(guest_cl[by_guest], np.arange(k + 1))
        edges_a, edges_b, compared = [], [], 0
        for c in range(k):
            home = np.sort(by_home[home_bounds[c] : home_bounds[c + 1]])
            if len(home) == 0:
                continue
            guest = np.sort(guest_ids[by_guest[guest_bounds[c] : guest_bounds[c + 1]]])
            members = np.concatenate([home, guest])
            a, b = _cluster_edges(emb, home, members, cfg.threshold)
            compared += len(home) * len(members)
            edges_a.append(a)
            edges_b.append(b)
        a, b = np.concatenate(edges_a), np.concatenate(edges_b)
        _, group = connected_components(
            coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)), directed=False
        )
        group = group.astype(np.int64)
        kept = pick_kept(group, scores, ids)
        similarity = np.full(n, np.nan, np.float32)
        dup = np.nonzero(kept != np.arange(n))[0]
        for i in range(0, len(dup), rows):  # row-wise dot of each dropped clip with its kept clip
            d = dup[i : i + rows]
            similarity[d] = np.einsum("nd,nd->n", emb[d], emb[kept[d]])
    return DedupResult(group, np.bincount(group)[group], kept, similarity, k, compared)


def pick_kept(group: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N,) row index of the clip each row's group keeps: highest score, then smallest id;
    NaN scores rank last."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((ids, -s, group))  # by group, best first
    first = np.empty(group.max() + 1 if len(group) else 0, np.int64)
    first[group[order[::-1]]] = order[::-1]  # last write wins = first in order
    return first[group]
