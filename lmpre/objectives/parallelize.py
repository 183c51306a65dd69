"""How the backbone is made to fit and run fast on many devices: activation checkpointing, torch.compile and FSDP2
sharding, applied to each block from outside (the blocks stay plain `nn.Module`s, their parameter names unchanged)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed._composable.checkpoint_activation import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from lmpre.models import Transformer


@dataclass(frozen=True)
class Parallelism:
    activation_checkpointing: bool = False  # recompute each block's activations in the backward: less memory
    compile: bool | str = False  # torch.compile each block: true for the default backend (inductor), or a backend


def parallelize(model: Transformer, mesh: DeviceMesh | None, options: Parallelism) -> None:
    """Apply, in this order, activation checkpointing, compilation and (given a mesh) FSDP2 sharding to every block.

    The order matters: compiling a checkpointed block compiles the recomputation with it, and sharding comes last
    so each compiled block is one FSDP unit whose parameters are gathered just before it runs."""
    for block in blocks(model):
        if options.activation_checkpointing:
            checkpoint(block)
        if options.compile:
            block.compile(**({} if options.compile is True else {"backend": options.compile}))
    if mesh is not None:
        shard(model, mesh)


def blocks(model: Transformer) -> list[nn.Module]:
    """Every block of the encoder and the decoder."""
    return [block for stack in (model.encoder, model.decoder) if stack is not None for block in stack.blocks]


def shard(model: Transformer, mesh: DeviceMesh) -> None:
    """Each block is its own FSDP unit, gathered just before it runs and freed after; embeddings,
    the tied head and final norms form the root unit."""
    for block in blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


class FullyShardedStrategy(ModelParallelStrategy):
    """Plain FSDP2: Lightning's ModelParallelStrategy with every process of every node in the data-parallel
    (sharding) dimension and no tensor parallelism. Its "auto" would shard across nodes only."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # known only once launched
        super().setup_environment()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Every rank writes its shards into a partial directory beside the target, renamed into place once all
        have written: Lightning writes into the target itself, so a kill mid-save left a mix of two steps'
        shards under the name of a complete checkpoint."""
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        target = Path(self.broadcast(filepath))
        partial, old = (target.with_name(f".{target.name}.{suffix}") for suffix in ("partial", "old"))
        if self.is_global_zero:
            for leftover in (partial, old):  # from a save that was killed
                shutil.rmtree(leftover, ignore_errors=True)
        self.barrier()
        super().save_checkpoint(checkpoint, partial, storage_options)
        self.barrier()
        if self.is_global_zero:
            if target.exists():
                target.replace(old)
            partial.replace(target)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()
