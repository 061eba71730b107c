"""The contract of both executors (Ray Data and inline, curation/runner.py): a chain of operators."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manifests.configtools import Resources


@dataclass(frozen=True)
class Op:
    """One operator of a chain: a callable class (`__init__(cfg)` once per actor,
    `__call__(batch) -> batch`; `BATCH_FORMAT` 'numpy' or 'pyarrow'), what its constructor gets,
    and its resources (`batch_size` included: each operator batches at its own size)."""

    cls: type
    cfg: Any
    resources: Resources


@dataclass(frozen=True)
class Chain:
    """Operators in order, each fed batches of its own `resources.batch_size` from the one
    before, by either executor."""

    ops: tuple[Op, ...]

    @classmethod
    def of(cls, *ops: Op | tuple[type, Any, Resources]) -> Chain:
        return cls(tuple(op if isinstance(op, Op) else Op(*op) for op in ops))
