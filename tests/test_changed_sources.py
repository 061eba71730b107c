"""A source file that changes after ingest: never cut or scored from new bytes under the old
video_id, found by the next ingest from the listing (no probe of unchanged files), and ingested
again as a new video."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from curation import pipeline
from curation.config import load_config
from manifests.db import query
from tests.media import make_video

CFG = load_config(Path(__file__).resolve().parent.parent / "configs" / "offline.yaml")


def rows(root: Path, sql: str) -> list[dict]:
    return query(root, sql).to_pylist()


def test_a_source_changed_after_ingest_is_never_cut_or_scored_then_reingested_as_new(tmp_path):
    src = tmp_path / "in"
    a = make_video(src / "a.mp4", n_frames=72, size=(96, 64), kind="moving", seed=1)
    b = make_video(src / "b.mp4", n_frames=72, size=(96, 64), kind="moving", seed=2)
    c = make_video(src / "c.mp4", n_frames=72, size=(96, 64), kind="moving", seed=3)
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)
    pipeline.split(CFG, root)
    old = {r["path"]: r["video_id"] for r in rows(root, "SELECT path, video_id FROM videos")}
    # a: new bytes of another size before split ever saw... score; c: same size, newer mtime
    make_video(a, n_frames=96, size=(96, 64), kind="moving", seed=4)
    st = os.stat(c)
    os.utime(c, (st.st_atime, st.st_mtime + 3600))
    pipeline.score(CFG, root)
    scored = rows(
        root,
        """SELECT regexp_extract(c.path, '[^/]+$') AS f, s.status, s.error
                           FROM scores s JOIN clips c USING (clip_id)""",
    )
    by_file = {}
    for r in scored:
        by_file.setdefault(r["f"], set()).add((r["status"], (r["error"] or "").split(":")[0]))
    assert by_file["b.mp4"] == {("ok", "")}
    assert by_file["a.mp4"] == {("error", "source changed since ingest")}
    assert by_file["c.mp4"] == {("error", "source changed since ingest")}

    # ingest again: a and c come back as new videos (new ids for a; c's bytes are the same, so
    # its new row is the same video_id: a duplicate of nothing but itself, still one id)
    pipeline.ingest(CFG, root, src)
    new = rows(root, f"SELECT video_id, status FROM videos WHERE path = '{a}' ORDER BY created_at")
    assert [r["video_id"] for r in new][0] == old[str(a)] and len(new) == 2
    assert new[1]["video_id"] != old[str(a)] and new[1]["status"] == "ok"
    assert len(rows(root, f"SELECT * FROM videos WHERE path = '{b}'")) == 1
    pipeline.split(CFG, root)
    fresh = rows(root, f"SELECT status, end_frame FROM clips WHERE video_id = '{new[1]['video_id']}'")
    assert fresh and max(r["end_frame"] for r in fresh) > 72  # cut from the new, longer bytes


def test_ingest_again_probes_only_changed_files_and_leaves_missing_ones(tmp_path, caplog):
    """Change detection comes from the listing (one join, no probe): an unchanged folder gives
    nothing to probe, a changed file is ingested again as a new row, a file gone since its ok
    row is counted in the log and gets no new row, on this run or the next; a list file of the
    same paths (stat'ed in a thread pool) finds the same."""
    src = tmp_path / "in"
    for i in range(3):
        make_video(src / f"v{i}.mp4", n_frames=12, seed=i)
    root = tmp_path / "root"
    assert pipeline.ingest(CFG, root, src).expected == 3
    assert pipeline.ingest(CFG, root, src).expected == 0
    (src / "list.txt").write_text("".join(f"v{i}.mp4\n" for i in range(3)))
    assert pipeline.ingest(CFG, root, src / "list.txt").expected == 0

    make_video(src / "v0.mp4", n_frames=18, seed=7)  # new bytes, another size
    (src / "v2.mp4").unlink()
    # v0 once (its new row is then newer than its bytes); v2 never: the folder no longer lists
    # it, the list file does and the log counts it, on every run
    lst = src / "list.txt"
    for spec, probed, missing in ((src, 1, 0), (lst, 0, 1), (lst, 0, 1), (src, 0, 0)):
        caplog.clear()
        with caplog.at_level("INFO", logger="reelsift"):
            assert pipeline.ingest(CFG, root, spec).expected == probed
        said = "1 listed files ingested ok before are no longer there" in caplog.text
        assert said == bool(missing)
    got = rows(root, "SELECT regexp_extract(path, '[^/]+$') AS f, count(*) AS n, "
                     "count(DISTINCT video_id) AS ids FROM videos GROUP BY 1 ORDER BY 1")
    assert got == [{"f": "v0.mp4", "n": 2, "ids": 2}, {"f": "v1.mp4", "n": 1, "ids": 1},
                   {"f": "v2.mp4", "n": 1, "ids": 1}]


@pytest.mark.parametrize("size_change", [True, False])
def test_split_refuses_a_changed_source(tmp_path, size_change):
    src = tmp_path / "in"
    v = make_video(src / "v.mp4", n_frames=48, size=(96, 64), kind="moving")
    root = tmp_path / "root"
    pipeline.ingest(CFG, root, src)
    if size_change:
        with open(v, "ab") as fh:
            fh.write(b"\0" * 8)
    else:
        os.utime(v, (os.stat(v).st_atime, os.stat(v).st_mtime + 3600))
    pipeline.split(CFG, root)
    got = rows(root, "SELECT status, error FROM clips")
    assert len(got) == 1 and got[0]["status"] == "error"
    assert got[0]["error"].startswith("source changed since ingest")
