"""How the backbone is sharded with FSDP2; applied to the model, never written into its blocks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from lmpre.models import Transformer


def shard(model: Transformer, mesh: DeviceMesh) -> None:
    """Each block is its own FSDP unit, gathered just before it runs and freed after; embeddings,
    the tied head and final norms form the root unit."""
    for stack in (model.encoder, model.decoder):
        if stack is not None:
            for block in stack.blocks:
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
