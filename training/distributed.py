"""Distributed set-up of the trainer: joining the torchrun process group and wrapping the model
in DDP or sharding it with FSDP2 (train.dist.strategy)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from models.linear_dit import LinearDiT
from training.config import TrainConfig


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(cfg: TrainConfig) -> DistInfo:
    """Join the torchrun process group when launched by torchrun; pick the device."""
    want_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
    if not dist.is_torchelastic_launched():
        return DistInfo(device=torch.device(cfg.device if cfg.device != "auto" else
                                            ("cuda" if want_cuda else "cpu")))
    backend = cfg.dist.backend if cfg.dist.backend != "auto" else ("nccl" if want_cuda else "gloo")
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if want_cuda:
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return DistInfo(rank, world, device)


def wrap_model(model: LinearDiT, cfg: TrainConfig, info: DistInfo) -> torch.nn.Module:
    if info.world == 1:
        return model
    if cfg.dist.strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = None
        if info.device.type == "cuda" and cfg.optim.precision in ("bf16", "fp8"):
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mp_policy": mp} if mp is not None else {}
        for blk in model.blocks:
            fully_shard(blk, **kwargs)
        fully_shard(model, **kwargs)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids)
