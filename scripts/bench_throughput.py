"""Is the data pipeline ever the bottleneck? Tokens/s of the streaming loader vs. a training step of each
CPU preset, measured side by side on the same prepared WikiText-2.

    python scripts/bench_throughput.py [--steps 5] [--source ../shared/data/wikitext-2-raw]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lmpre.objectives import PretrainingObjective
from lmpre.train import build_objective

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"


def config(model: str, source: Path, cache: Path) -> DictConfig:
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        return compose(
            "train",
            [f"model={model}", f"data.source={source}", "data.splits.train=wiki.test.raw", f"data.cache_dir={cache}"],
        )


def loader_tokens_per_sec(datamodule: L.LightningDataModule, batches: int) -> float:
    datamodule.setup("fit")
    start, tokens = time.perf_counter(), 0
    for i, batch in enumerate(datamodule.train_dataloader()):
        tokens += batch.numel()
        if i + 1 == batches:
            break
    return tokens / (time.perf_counter() - start)


def train_tokens_per_sec(model: PretrainingObjective, batch: torch.Tensor, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        pred = model(batch, generator)
        loss = torch.nn.functional.cross_entropy(pred.logits.flatten(0, 1), pred.targets.flatten(), ignore_index=-100)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch.numel() / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--source", type=Path, default=SHARED)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "lmpre")
    args = parser.parse_args()
    torch.manual_seed(0)

    print(f"{'preset':8} {'params':>8} {'window':>6} {'train tok/s':>12} {'loader tok/s':>13} {'loader/train':>13}")
    for name in ("gpt", "bert", "t5"):
        cfg = config(name, args.source, args.cache)
        datamodule, model = build_objective(cfg)
        loader = loader_tokens_per_sec(datamodule, batches=200)
        batch = next(iter(datamodule.train_dataloader()))
        train = train_tokens_per_sec(model, batch, args.steps)
        params = model.model.num_parameters(exclude_embeddings=False)
        ratio = loader / train
        print(f"{name:8} {params / 1e6:7.1f}M {datamodule.window:6d} {train:12,.0f} {loader:13,.0f} {ratio:12,.0f}x")


if __name__ == "__main__":
    main()
