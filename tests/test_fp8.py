"""FP8 linear layers (models/fp8.py): which layers convert, state dicts unchanged, a clear error
without torchao, `train.optim.precision: fp8` validated and trained through the real Trainer on
the CPU (torchao's float8 matmul has a CPU path; the speed is measured on a GPU by
bench/train_fp8_gpu.py)."""

import sys
from pathlib import Path

import pytest
import torch

from manifests.configtools import ConfigError
from models.fp8 import MissingPackage, fp8_layers, to_fp8
from models.linear_dit import build
from training.config import load_train_config

OFFLINE = Path(__file__).resolve().parents[1] / "configs" / "offline.yaml"


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def test_to_fp8_converts_the_block_linears_only():
    pytest.importorskip("torchao")
    torch.manual_seed(0)
    model = build("tiny").eval()
    x, t = torch.randn(1, 4, 2, 8, 8), torch.rand(1)
    text = torch.randn(1, 5, model.cfg.text_dim)
    want, keys = model(x, t, text), set(model.state_dict())
    to_fp8(model)
    assert fp8_layers(model) == 6 * model.cfg.depth  # qkv, proj, cross q/proj, ffn in/out per block
    names = {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}
    assert "blocks.0.attn.qkv" in names and "blocks.0.cross.kv" not in names and "final.linear" not in names
    assert set(model.state_dict()) == keys  # checkpoints look the same as in bf16
    got = model(x, t, text)
    assert 0 < _rel(got, want) < 0.1  # really cast to float8, and still the same function


def test_missing_torchao_names_the_setting(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # import fails as if not installed
    with pytest.raises(MissingPackage, match=r"train\.optim\.precision=fp8 needs the torchao.*\[fp8\]"):
        to_fp8(build("tiny"))


def test_precision_is_validated(tmp_path):
    assert load_train_config(OFFLINE, ["optim.precision=fp8"], root=tmp_path).optim.precision == "fp8"
    with pytest.raises(ConfigError, match=r"train\.optim\.precision"):
        load_train_config(OFFLINE, ["optim.precision=fp16"], root=tmp_path)


def test_trainer_trains_in_fp8(tmp_path):
    """Two steps of the real Trainer with fp8 linears on random latents: the same losses as fp32
    to float8 rounding (same seed, data and noise)."""
    pytest.importorskip("torchao")
    from bench.train_common import RandomLatents, RandomText, train_config
    from training.checkpoint import unwrap
    from training.trainer import Trainer

    losses = {}
    for precision in ("fp32", "fp8"):
        cfg = train_config(tmp_path / precision, depth=1, grad_checkpoint=False, steps=2,
                           latent=(16, 2, 8, 8), device="cpu", model="tiny", precision=precision)
        tr = Trainer(cfg, loader=RandomLatents(1, (16, 2, 8, 8)), text_encoder=RandomText(64, 4))
        tr.save = lambda: None
        losses[precision] = [loss for _, loss in tr.fit().losses]
        assert fp8_layers(unwrap(tr.model)) == (6 if precision == "fp8" else 0)
    assert all(abs(a - b) / a < 0.02 for a, b in zip(losses["fp8"], losses["fp32"], strict=True)), losses
