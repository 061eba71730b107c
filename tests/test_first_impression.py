"""What a fresh user sees: `reelsift run` prints reelsift's own lines only (no third-party log
lines, warnings or blank lines unless -v), and a weight the hub cannot serve stops a stage in the
driver with one line naming the config key and the `--set` for a local path (exit 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.media import make_video

REPO = Path(__file__).resolve().parent.parent
# one of ours: "== stage", a reelsift log line, or the closing summary
OURS = re.compile(
    r"^(== \w+|\S+ \S+ (INFO|WARNING|ERROR) reelsift: .*|status counts:|  \w+ .*|hours in: .*)$"
)


def reelsift(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curation.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def test_run_prints_only_reelsifts_lines(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    make_video(videos / "a.mp4", n_frames=72, size=(320, 256), kind="cuts", cuts=(36,))
    root = tmp_path / "r"
    out = reelsift("run", "--config", "configs/offline.yaml", "--input", str(videos), "--root", str(root))
    assert out.returncode == 0, out.stderr[-3000:]
    lines = (out.stdout + out.stderr).splitlines()
    assert "== caption" in lines and "status counts:" in lines  # the captioner and CLIP did load
    strangers = [line for line in lines if not OURS.match(line)]
    assert strangers == [], strangers  # no blank line, no library's log line, warning or progress bar


def _one_line_error(out: subprocess.CompletedProcess, key: str) -> str:
    assert out.returncode == 2, (out.stdout[-1000:], out.stderr[-3000:])
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert key in lines[0] and f"--set {key}=" in lines[0], lines[0]
    return lines[0]


def test_missing_weight_stops_in_the_driver_with_one_line_when_the_hub_is_unreachable(tmp_path):
    """default.yaml's aesthetic head is a hub file; nothing listens on the endpoint."""
    hub = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    root = tmp_path / "root"
    out = reelsift("score", "--config", "configs/default.yaml", "--root", str(root), env=hub)
    _one_line_error(out, "score.aesthetic.head_weights")
    assert not root.exists()  # no work started: not even the run root


@pytest.mark.parametrize(("stage", "key"), [("align", "score.aesthetic.clip_pretrained"),
                                            ("caption", "caption.transformers.model")])
def test_every_model_of_a_stage_is_resolved_first(tmp_path, stage, key):
    """The CLIP tag and the VLM of default.yaml, with the hub set offline and an empty cache."""
    hub = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = reelsift(stage, "--config", "configs/default.yaml", "--root", str(tmp_path / "root"), env=hub)
    _one_line_error(out, key)
