"""The report at a million clips (tables only): the page stays under 2 MB apart from its media
folder, and the driver's peak memory stays bounded (DuckDB aggregates, a fixed sample)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from curation.stages.filter import run_filter
from tests.report_synth import filter_config, synth_root, write_config

_CHILD = """
import json, resource, sys, time
from curation.config import load_config
from curation.report import write_report
from manifests.db import cpus
t = time.monotonic()
page = write_report(sys.argv[1], load_config(sys.argv[2]), config_path=sys.argv[2])
ru = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"seconds": time.monotonic() - t, "cpu_s": ru.ru_utime + ru.ru_stime,
                  "bytes": page.stat().st_size, "max_rss_mb": ru.ru_maxrss / 1024, "cpus": cpus()}))
"""


@pytest.mark.slow
def test_report_of_a_million_clips(tmp_path):
    root = synth_root(tmp_path / "run", 1_000_000, parts=8)
    run_filter(root, filter_config())  # the stored decisions the funnel and groups read
    config = write_config(tmp_path / "filter.yaml")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(config)], check=True, text=True,
                         capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=600)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"report of 1M clips: {res['seconds']:.1f} s wall, {res['cpu_s']:.1f} CPU-s (with start-up), "
          f"page {res['bytes'] / 1e6:.2f} MB, "
          f"peak RSS {res['max_rss_mb']:.0f} MB, {res['cpus']} CPUs")
    assert res["bytes"] < 2_000_000
    # The 1.0 GiB target (issue 14) is measured by bench/manifest_scale.py, not gated here: the
    # same code peaked at 0.69 GiB on one 2-core machine and 1.7 GiB on another (CI). This bound
    # catches the regression that matters, rows of every clip in Python (2.6 GiB at 1M before).
    assert res["max_rss_mb"] < 2048
