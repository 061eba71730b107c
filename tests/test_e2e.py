"""End to end through real Ray, real video files, real DuckDB and real WebDataset tars."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import pytest
import webdataset as wds

from curation.verify import verify
from manifests.db import query


def q(root: Path, sql: str) -> list[dict]:
    return query(root, sql).to_pylist()


def clips_of(root: Path, name: str) -> list[dict]:
    return q(
        root,
        f"""
        SELECT c.*, d.keep, d.tier, d.reasons AS decision_reasons, s.ocr_text, s.motion_mean
        FROM clips c JOIN videos v USING (video_id)
        LEFT JOIN decisions d USING (clip_id) LEFT JOIN scores s USING (clip_id)
        WHERE v.path LIKE '%/{name}' ORDER BY c.start_frame""",
    )


def test_every_input_file_has_exactly_one_video_row(demo_run, demo_corpus):
    root, _ = demo_run
    rows = q(root, "SELECT path, status, error FROM videos")
    inputs = sorted(str(p.resolve()) for p in demo_corpus.root.glob("*.mp4"))
    assert sorted(r["path"] for r in rows) == inputs
    assert len({r["path"] for r in rows}) == len(rows)


def test_inputs_are_untouched_and_outputs_are_named_by_keys(demo_run, demo_corpus, demo_digests):
    import hashlib
    import re
    import tarfile

    root, _ = demo_run
    now = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in demo_corpus.root.iterdir()}
    assert now == demo_digests
    odd = q(root, """SELECT v.status, count(s.clip_id) AS sharded FROM videos v
                     JOIN clips c USING (video_id) LEFT JOIN shards s USING (clip_id)
                     WHERE v.path LIKE '%$(echo x)%' GROUP BY 1""")
    assert odd[0]["status"] == "ok" and odd[0]["sharded"] > 0
    for tar in (root / "shards").glob("*/*.tar"):
        assert re.fullmatch(r"[0-9a-f]{16}-\d{3}\.tar", tar.name)
        with tarfile.open(tar) as t:
            assert all(re.fullmatch(r"[0-9a-f]{16}\.(mp4|txt|json)", m.name) for m in t.getmembers())
    for path in root.rglob("*"):
        assert path.resolve().is_relative_to(root.resolve())


def test_corrupt_file_is_an_error_row_with_a_message(demo_run):
    root, _ = demo_run
    (row,) = q(root, "SELECT status, error FROM videos WHERE path LIKE '%/corrupt.mp4'")
    assert row["status"] == "error"
    assert "invalid data" in row["error"].lower() or "moov" in row["error"].lower()


def test_known_cuts_are_found_within_two_frames(demo_run, demo_corpus):
    root, cfg = demo_run
    cuts = demo_corpus.cuts["cuts_three_scenes.mp4"]
    clips = clips_of(root, "cuts_three_scenes.mp4")
    trim = cfg.split.trim_frames
    # each cut c shows up as a clip ending at c - trim and the next one starting at c + trim
    for c in cuts:
        assert any(abs(r["end_frame"] + trim - c) <= 2 for r in clips), (c, clips)
        assert any(abs(r["start_frame"] - trim - c) <= 2 for r in clips), (c, clips)
    assert len({r["scene_index"] for r in clips}) == len(cuts) + 1


def test_static_black_and_text_shots_are_rejected_with_reasons(demo_run):
    root, _ = demo_run
    (static,) = clips_of(root, "static_shot.mp4")
    assert static["keep"] is False
    assert any(r.startswith("motion_mean=") for r in static["decision_reasons"])
    (black,) = clips_of(root, "black.mp4")
    assert black["keep"] is False
    assert any(r.startswith("quality_dark_frac=") for r in black["decision_reasons"])
    (text,) = clips_of(root, "text_overlay.mp4")
    assert text["keep"] is False
    assert any(r.startswith("ocr_area=") for r in text["decision_reasons"])
    assert "REELSIFT" in text["ocr_text"].upper()


def test_moving_texture_is_kept_at_720p(demo_run):
    root, _ = demo_run
    rows = clips_of(root, "moving_texture.mp4")
    assert rows and all(r["keep"] and r["tier"] == "720p" for r in rows), rows


def test_a_360p_source_never_lands_in_the_720p_tier(demo_run):
    root, _ = demo_run
    bad = q(
        root,
        """SELECT count(*) AS n FROM decisions d JOIN clips c USING (clip_id)
                     WHERE d.tier = '720p' AND least(c.width, c.height) < 720""",
    )
    assert bad[0]["n"] == 0
    reasons = [r for row in clips_of(root, "cuts_three_scenes.mp4") for r in row["decision_reasons"]]
    assert "short_side=360<720@720p" in reasons


def test_shards_read_back_and_match_the_table(demo_run):
    root, _ = demo_run
    rows = q(root, "SELECT * FROM shards WHERE status = 'ok'")
    assert rows
    kept = q(root, "SELECT count(*) AS n FROM decisions WHERE keep")[0]["n"]
    assert len(rows) == kept
    tars = sorted(str(root / s) for s in {r["shard"] for r in rows})
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == len(rows)
    by_key = {r["key"]: r for r in rows}
    for s in samples:
        row = by_key[s["__key__"]]
        meta = json.loads(s["json"])
        assert meta["clip"]["clip_id"] == row["clip_id"]
        assert meta["decision"]["tier"] == row["tier"]
        assert s["txt"].decode() == (row["caption"] or "")
        with av.open(io.BytesIO(s["mp4"])) as c:
            stream = c.streams.video[0]
            assert (
                min(stream.codec_context.width, stream.codec_context.height)
                == {"720p": 720, "480p": 480, "256p": 256}[row["tier"]]
            )
            assert sum(1 for _ in c.decode(stream)) == row["n_frames"]


def test_verify_passes_then_names_a_truncated_shard(demo_run, tmp_path):
    import shutil

    root, _ = demo_run
    checked, problems = verify(root)
    assert checked > 0 and problems == []
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    shard = q(copy, "SELECT shard FROM shards WHERE status = 'ok' LIMIT 1")[0]["shard"]
    path = copy / shard
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _, problems = verify(copy)
    assert any(p.shard == shard for p in problems), problems


def test_refilter_with_new_thresholds_changes_decisions_not_scores(demo_run, tmp_path):
    import shutil

    from curation import pipeline
    from curation.config import load_config

    root, _ = demo_run
    copy = tmp_path / "refilter"
    shutil.copytree(root, copy)
    before_scores = query(copy, "SELECT * FROM scores ORDER BY clip_id")
    before = {r["clip_id"]: r["keep"] for r in q(copy, "SELECT clip_id, keep FROM decisions")}
    runs = q(copy, "SELECT count(DISTINCT filter_run) AS n FROM decisions_history")[0]["n"]
    cfg = load_config(
        Path(__file__).parent.parent / "configs" / "offline.yaml",
        ["filter.tiers.256p.bounds.motion_mean.min=15"],
    )
    pipeline.filter_(cfg, copy)
    after = {r["clip_id"]: r["keep"] for r in q(copy, "SELECT clip_id, keep FROM decisions")}
    assert query(copy, "SELECT * FROM scores ORDER BY clip_id").equals(before_scores)
    assert set(after) == set(before)
    assert sum(after.values()) < sum(before.values())
    history = q(copy, "SELECT count(DISTINCT filter_run) AS n FROM decisions_history")[0]["n"]
    assert history == runs + 1


def test_kept_clips_are_captioned_and_aligned_with_untrained_flags(demo_run):
    root, _ = demo_run
    rows = q(
        root,
        """SELECT c.status, c.untrained, a.clip_score, a.untrained AS a_untrained
                      FROM captions c LEFT JOIN alignment a USING (clip_id)""",
    )
    assert rows and all(r["untrained"] for r in rows)  # offline VLM has random weights
    assert all(r["a_untrained"] for r in rows if r["clip_score"] is not None)


@pytest.mark.parametrize(
    "view", ["videos", "clips", "scores", "decisions", "shards", "captions", "alignment"]
)
def test_sql_works_on_every_view(demo_run, view):
    root, _ = demo_run
    assert q(root, f"SELECT count(*) AS n FROM {view}")[0]["n"] >= 0


def test_status_report_and_named_queries_through_the_cli(demo_run, capsys):
    from curation.cli import main
    from manifests import queries

    root, _ = demo_run
    assert main(["status", "--root", str(root)]) == 0
    assert "shards" in capsys.readouterr().out
    for name in queries.names():
        assert main(["sql", "--named", name, "--root", str(root), "--format", "json"]) == 0
        json.loads(capsys.readouterr().out)
    assert main(["report", "--config", "configs/offline.yaml", "--root", str(root)]) == 0
    assert "index.html" in capsys.readouterr().out
    html = (root / "report" / "index.html").read_text()
    import re

    assert "UNTRAINED" in html.upper()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # nothing from the network
    assert (
        main(
            [
                "filter",
                "--config",
                "configs/offline.yaml",
                "--root",
                str(root),
                "--dry-run",
                "--set",
                "filter.tiers.256p.bounds.motion_mean.min=0.01",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    assert json.loads(out.out)["written"] is False and "current" in out.err
