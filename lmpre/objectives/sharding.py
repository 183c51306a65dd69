"""How the backbone is sharded with FSDP2; applied to the model, never written into its blocks."""

from __future__ import annotations

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
