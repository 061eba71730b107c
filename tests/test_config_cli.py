"""Config tree, --set overrides, and CLI exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from curation.config import load_config
from manifests.configtools import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["offline.yaml", "default.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(REPO / "configs" / name)
    assert set(cfg.filter.tiers) == {"720p", "480p", "256p"}


def test_default_names_real_models_and_offline_downloads_nothing():
    default = load_config(REPO / "configs/default.yaml")
    offline = load_config(REPO / "configs/offline.yaml")
    assert default.score.aesthetic.clip_model == "ViT-L-14" and not default.score.aesthetic.random_init
    assert offline.score.aesthetic.random_init


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        REPO / "configs/offline.yaml",
        ["split.min_clip_s=1", "filter.tiers.480p.bounds.motion_mean.min=0.9", "ingest.extensions=[.mp4]"],
    )
    assert cfg.split.min_clip_s == 1.0 and isinstance(cfg.split.min_clip_s, float)
    assert cfg.filter.tiers["480p"].bounds["motion_mean"].min == 0.9
    assert cfg.ingest.extensions == (".mp4",)


@pytest.mark.parametrize(
    "override, key",
    [
        ("split.min_clp_s=1", "split"),
        ("split.min_clip_s=-1", "split.min_clip_s"),
        ("shard.resources.batch_size=0", "shard.resources.batch_size"),
        ("split.scenes.detector=nope", "split.scenes.detector"),
        ("score.ocr.n_frames=0", "score.ocr.n_frames"),
        ("split.min_clip_s=abc", "split.min_clip_s"),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(REPO / "configs/offline.yaml", [override])


def _cli(*args, cwd=REPO):
    return subprocess.run(
        [sys.executable, "-m", "curation.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_cli_bad_config_and_missing_input_exit_nonzero_with_message(tmp_path):
    out = _cli(
        "split", "--root", str(tmp_path), "--config", "configs/offline.yaml", "--set", "split.max_clip_s=0.1"
    )
    assert out.returncode == 2 and "split.max_clip_s" in out.stderr
    out = _cli("ingest", "--root", str(tmp_path), "--input", str(tmp_path / "nope"))
    assert out.returncode == 2 and "no such folder" in out.stderr
    out = _cli(
        "run", "--root", str(tmp_path), "--config", str(tmp_path / "missing.yaml"), "--input", str(tmp_path)
    )
    assert out.returncode == 2 and "config file not found" in out.stderr
