"""Activation checkpointing, compilation and FSDP2 sharding applied to the backbone from outside: the same numbers,
less memory, and runs on 2 CPU processes with DDP and FSDP2; FSDP2 checkpoints are replaced whole or not at all."""

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from lmpre.models import Transformer, TransformerConfig
from lmpre.objectives.parallelize import FullyShardedStrategy, Parallelism, parallelize

TINY = TransformerConfig(
    vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=32, n_decoder_layer=1, causal=False
)


def twins(options: Parallelism) -> tuple[Transformer, Transformer]:
    """A plain encoder-decoder and a copy of it with `options` applied."""
    torch.manual_seed(0)
    plain = Transformer(TINY)
    applied = Transformer(TINY)
    applied.load_state_dict(plain.state_dict())
    parallelize(applied, None, options)
    assert applied.state_dict().keys() == plain.state_dict().keys()  # checkpoints stay interchangeable
    return plain, applied


def loss_and_grads(model: nn.Module, saved: list[int] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a fixed batch and its gradients; `saved` counts the tensors autograd keeps for the backward."""
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if saved is not None:
            saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(tokens, tokens[:, :8]).logsumexp(-1).mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_gives_the_same_gradients_keeping_fewer_activations() -> None:
    plain, checkpointed = twins(Parallelism(activation_checkpointing=True))
    kept, kept_checkpointed = [], []
    loss, grads = loss_and_grads(plain, kept)
    loss_checkpointed, grads_checkpointed = loss_and_grads(checkpointed, kept_checkpointed)
    assert loss_checkpointed == loss
    torch.testing.assert_close(grads_checkpointed, grads, rtol=0, atol=0)
    assert sum(kept_checkpointed) < sum(kept) / 2  # blocks keep only their inputs; found: a tenth here


def test_compiled_blocks_give_the_same_outputs_and_gradients() -> None:
    """aot_eager traces each block through dynamo and AOTAutograd as inductor does, in a second instead of a minute;
    inductor itself is the slow test below."""
    plain, compiled = twins(Parallelism(activation_checkpointing=True, compile="aot_eager"))
    loss, grads = loss_and_grads(plain)
    loss_compiled, grads_compiled = loss_and_grads(compiled)
    torch.testing.assert_close(loss_compiled, loss)
    torch.testing.assert_close(grads_compiled, grads)
    assert all(hasattr(block, "_compiled_call_impl") for block in compiled.encoder.blocks)


@pytest.mark.slow
def test_inductor_compiled_checkpointed_blocks_match() -> None:
    plain, compiled = twins(Parallelism(activation_checkpointing=True, compile=True))
    loss, grads = loss_and_grads(plain)
    loss_compiled, grads_compiled = loss_and_grads(compiled)
    torch.testing.assert_close(loss_compiled, loss, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads_compiled, grads, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes_train_checkpointed_compiled_blocks(
    strategy: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """DDP and FSDP2 with gloo, each block checkpointed and compiled, two micro-batches per step: the run learns and
    logs its gradient norm."""
    from launch import tiny_corpus
    from test_train import run_cli, scalars

    corpus = tiny_corpus(tmp_path_factory)
    run_dir = tmp_path_factory.mktemp(strategy)
    cpu = [f"trainer={strategy}", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    options = ["model.activation_checkpointing=true", "model.compile=aot_eager", "trainer.accumulate_grad_batches=2"]
    steps = ["trainer.max_steps=16", "trainer.val_check_interval=8", "optim.lr=3e-3", "optim.warmup_steps=2"]
    result = run_cli(*corpus.run("gpt", *cpu, *options, *steps), f"hydra.run.dir={run_dir}", cwd=run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    events = scalars(run_dir)
    val = [e.value for e in events.Scalars("val/loss")]
    assert len(val) == 5, val  # val_check_interval counts micro-batches: every 4 steps
    assert val[-1] < val[0] - 0.5, val
    norms = [e.value for e in events.Scalars("train/grad_norm")]
    assert len(norms) == 16, norms
    assert all(0 < n < 100 for n in norms), norms


def fake_save(fail_after: int | None):
    """Lightning's sharded save, as files written one by one into the directory it is given."""

    def save(self: Any, checkpoint: dict[str, Any], filepath: Path, storage_options: Any = None) -> None:
        filepath.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            if i == fail_after:
                raise KeyboardInterrupt  # killed mid-save
            (filepath / f"shard{i}.distcp").write_text(str(checkpoint["step"]))
        (filepath / "meta.pt").write_text(str(checkpoint["step"]))

    return save


def contents(path: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in path.iterdir()}


def test_a_killed_sharded_save_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strategy = FullyShardedStrategy()
    target = tmp_path / "last.ckpt"
    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", fake_save(None))
    strategy.save_checkpoint({"step": 1}, target)
    assert contents(target) == {"shard0.distcp": "1", "shard1.distcp": "1", "shard2.distcp": "1", "meta.pt": "1"}

    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", fake_save(2))
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint({"step": 2}, target)
    assert contents(target) == {"shard0.distcp": "1", "shard1.distcp": "1", "shard2.distcp": "1", "meta.pt": "1"}

    monkeypatch.setattr(ModelParallelStrategy, "save_checkpoint", fake_save(None))
    strategy.save_checkpoint({"step": 3}, target)
    assert set(contents(target).values()) == {"3"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # the killed save's partial is gone
