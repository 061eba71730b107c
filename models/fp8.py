"""FP8 matmuls for the Linear DiT's linear layers, through torchao's float8 training recipe.

``to_fp8(model)`` swaps the token-wise ``nn.Linear`` layers of every block (self-attention qkv and
output, cross-attention query and output, the Mix-FFN's two 1x1 convs: ~97% of the model's FLOPs
outside attention) for torchao's ``Float8Linear``. Each call casts the input and the weight to
float8 e4m3 with one dynamic scale per tensor, multiplies on the fp8 tensor cores (H100/H200:
twice the bf16 rate) and returns the input's dtype; the backward casts output gradients to e5m2.
Weights stay in their own dtype (fp32 master weights in training, bf16 when sampling) and keep
their names, so checkpoints are the same as in bf16. Layers that see few rows (timestep MLP,
text projection, cross-attention keys/values over text tokens) and the final projection stay
as they are. torchao recommends torch.compile around fp8 layers: the casts then fuse into the
neighbouring kernels (``train.model.compile``, and the sampler's compiled step).

torchao is an optional dependency (``pip install 'reelsift[fp8]'``); it is imported only here.
"""

from __future__ import annotations

import re

import torch

FP8_LAYERS = re.compile(r"^blocks\.\d+\.(attn\.qkv|attn\.proj|cross\.q|cross\.proj|ffn\.inp|ffn\.out)$")
"""Fully qualified names of the linear layers that run in fp8."""


class MissingPackage(RuntimeError):
    """An optional package that a chosen setting needs is not installed."""


def fp8_layer(module: torch.nn.Module, fqn: str) -> bool:
    """True for the layers ``to_fp8`` converts: the block's token-wise linears whose sizes suit
    the fp8 matmul (both dims multiples of 16)."""
    return (isinstance(module, torch.nn.Linear) and FP8_LAYERS.match(fqn) is not None
            and module.in_features % 16 == 0 and module.out_features % 16 == 0)


def to_fp8(model: torch.nn.Module, key: str = "train.optim.precision") -> torch.nn.Module:
    """Convert ``model``'s block linears to float8 in place (see module docstring); returns it.
    ``key`` names the setting that asked for fp8, for the error when torchao is missing."""
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as exc:
        raise MissingPackage(
            f"{key}=fp8 needs the torchao package: pip install 'reelsift[fp8]' (or choose bf16)"
        ) from exc
    n = sum(fp8_layer(m, name) for name, m in model.named_modules())
    if n == 0:
        raise ValueError(f"{key}=fp8: the model has no linear layer that fp8 can run")
    return convert_to_float8_training(model, config=Float8LinearConfig(), module_filter_fn=fp8_layer)


def fp8_layers(model: torch.nn.Module) -> int:
    """How many of ``model``'s layers run in fp8 (0 before ``to_fp8``)."""
    try:
        from torchao.float8.float8_linear import Float8Linear
    except ImportError:
        return 0
    return sum(isinstance(m, Float8Linear) for m in model.modules())
