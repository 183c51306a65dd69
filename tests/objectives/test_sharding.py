"""FSDP2 checkpoints (directories of shards) are replaced whole or not at all."""

from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.strategies import ModelParallelStrategy

from lmpre.objectives.sharding import FullyShardedStrategy


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
