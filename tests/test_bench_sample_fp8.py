"""The issue-27 benches run end to end at their CPU smoke sizes (slow): bench/sample_clip_gpu.py
(Gemma-2 and Wan2.1 VAE architectures, tiny, bf16 stand-in and fp8 cases, PSNR) and
bench/train_fp8_gpu.py (the Trainer in fp32 and fp8, loss curves compared)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _bench(name, out, *extra):
    pytest.importorskip("torchao")
    pytest.importorskip("diffusers")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / name), "--smoke", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_sample_clip_bench_smoke(tmp_path):
    _bench("sample_clip_gpu.py", tmp_path, "--fp8")
    res = json.loads((tmp_path / "sample_clip_smoke_cpu.json").read_text())
    bf16, fp8 = res["cases"]["smoke_bf16"], res["cases"]["smoke_fp8"]
    for case in (bf16, fp8):
        assert case["frames"] == 9 and case["latent_frames"] == 3 and case["mp4_bytes"] > 0
        assert case["total_s"] >= case["denoise_s"] + case["decode_s"]
    assert 20 < fp8["psnr_vs_bf16_db"] < 200 and 0 < fp8["latent_rel_diff_vs_bf16"] < 0.2
    assert res["plain_s_per_step"]["smoke"] > 0 and res["card"].startswith("cpu")


def test_train_fp8_bench_smoke(tmp_path):
    _bench("train_fp8_gpu.py", tmp_path)
    res = json.loads((tmp_path / "train_fp8_smoke_cpu.json").read_text())
    assert res["runs"]["fp8"]["fp8_layers"] == 6 and res["runs"]["bf16"]["fp8_layers"] == 0
    assert len(res["runs"]["fp8"]["losses"]) == 4
    assert res["comparison"]["common_steps"] == 4 and res["comparison"]["loss_rel_diff_last"] < 0.02
