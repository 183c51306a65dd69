"""Time to loss on Tiny Shakespeare (issue 10), three runs one after the other in one process, each for its full
schedule: lmpre configured as nanoGPT's CPU run (experiment=shakespeare_reference); nanoGPT's own training loop
written plainly over the same backbone, data and initialisation, with no framework (the stand-in for nanoGPT itself,
whose code is not ours to run); and the speedrun preset (experiment=shakespeare_speedrun). Every `--eval-every` steps
the training clock stops while the model is scored on the metric (nats per character over the whole val split cut
into 64-character blocks, `lmpre.evaluation.score_blocks`). Prints each run's training wall time, the training time
at which it first reached the target, its final metric and steps, then the ratios of the speedrun's time to the
target to each reference's whole training time (goal: <= 0.5).

    python scripts/bench_speedrun.py [--eval-every 100] [--target 1.90] [--speedrun OVERRIDE …]
        [--only plain reference speedrun]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from lmpre.evaluation import score_blocks, split_tokens
from lmpre.models import Transformer, TransformerConfig
from lmpre.objectives import PretrainingObjective
from lmpre.train import build

# What the bench leaves out of the timed run: checkpoints, Lightning's own validation, logging and the bar.
QUIET = [
    "callbacks.checkpoint=null",
    "callbacks.progress=null",
    "callbacks.progress_log=null",
    "callbacks.summary=null",
    "callbacks.throughput=null",
    "~logger",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
]


@dataclass
class Result:
    name: str
    steps: int
    seconds: float
    final: float
    time_to_target: float | None


@dataclass
class Clock:
    """Training wall time with the metric's evaluations left out: the clock stops while the model is scored."""

    stream: np.ndarray  # the val split, scored on the metric
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, training seconds, metric)
    seconds: float = 0.0
    _since: float = 0.0

    def start(self) -> None:
        self._since = time.perf_counter()

    def score(self, step: int, objective: PretrainingObjective) -> None:
        self.seconds += time.perf_counter() - self._since
        objective.eval()
        loss = score_blocks(objective, self.stream, batch_size=256).loss  # type: ignore[arg-type]
        objective.train()
        self.curve.append((step, self.seconds, loss))
        print(f"  step {step:5d}  {self.seconds:7.1f}s  {loss:.4f}", flush=True)
        self._since = time.perf_counter()

    def result(self, name: str, target: float) -> Result:
        reached = [seconds for _, seconds, loss in self.curve if loss <= target]
        step, _, final = self.curve[-1]
        return Result(name, step, self.seconds, final, reached[0] if reached else None)


class TrainingClock(L.Callback):
    """A Clock in lmpre's training: scores every `every` steps and at the last."""

    def __init__(self, clock: Clock, every: int) -> None:
        self.clock, self.every = clock, every

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.clock.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            assert isinstance(pl_module, PretrainingObjective)
            self.clock.score(step, pl_module)


def run(name: str, overrides: list[str], every: int, target: float, root: str) -> Result:
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        cfg = compose("train", [f"experiment={name}", f"paths.output_dir={root}/{name}", *QUIET, *overrides])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    clock = Clock(split_tokens(datamodule.prepared_dir, datamodule.manifest, "val"))
    trainer.callbacks.append(TrainingClock(clock, every))
    print(f"{name}: {' '.join(overrides)}", flush=True)
    trainer.fit(model, datamodule=datamodule)
    return clock.result(name, target)


def run_plain(every: int, target: float, root: str, steps: int = 2000) -> Result:
    """nanoGPT's CPU run as nanoGPT's train.py runs it, written plainly over lmpre's backbone, with no framework:
    12 windows of 64 characters at random offsets of the train split per step, AdamW (lr 1e-3, betas (0.9, 0.99),
    weight decay 0.1 on matrices), lr rising linearly over 100 steps, then cosine to 1e-4 at step 2000, gradients
    clipped to norm 1.0. The model, its initialisation and the data are those of experiment=shakespeare_reference."""
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        cfg = compose("train", ["experiment=shakespeare_reference", f"paths.output_dir={root}/plain", *QUIET])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, objective, _ = build(cfg)
    assert isinstance(objective, PretrainingObjective)
    train = torch.from_numpy(split_tokens(datamodule.prepared_dir, datamodule.manifest, "train").astype(np.int64))
    val = split_tokens(datamodule.prepared_dir, datamodule.manifest, "val")
    model, (batch, block) = objective.model, (cfg.data.batch_size, cfg.data.seq_len)
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    others = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99)
    )

    def lr(step: int, peak: float = 1e-3, low: float = 1e-4, warmup: int = 100) -> float:
        if step < warmup:
            return peak * (step + 1) / (warmup + 1)
        return low + 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * (peak - low)

    print("plain nanoGPT loop over lmpre's backbone", flush=True)
    clock = Clock(val)
    model.train()
    clock.start()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr(step)
        offsets = torch.randint(len(train) - block, (batch,))
        windows = torch.stack([train[i : i + block + 1] for i in offsets.tolist()])
        logits = model(windows[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % every == 0 or step + 1 == steps:
            clock.score(step + 1, objective)
    return clock.result("plain_nanogpt_loop", target)


def warm_up(steps: int = 20) -> None:
    """Steps of a throwaway model of the reference's shape, untimed: the process's one-time start (thread pools,
    kernel choices, lazy imports) is then paid by no run, whichever goes first."""
    model = Transformer(TransformerConfig(vocab_size=256, d_model=128, n_layer=4, n_head=4, max_seq_len=64))
    optimizer = torch.optim.AdamW(model.parameters())
    for _ in range(steps):
        windows = torch.randint(256, (12, 65))
        F.cross_entropy(model(windows[:, :-1]).flatten(0, 1), windows[:, 1:].flatten()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations of the metric")
    parser.add_argument("--target", type=float, default=1.90, help="the metric to reach, nats per character")
    parser.add_argument("--reference", nargs="*", default=[], help="overrides for the reference run")
    parser.add_argument("--speedrun", nargs="*", default=[], help="overrides for the speedrun preset")
    parser.add_argument("--preset", default="shakespeare_speedrun", help="the experiment config timed as the speedrun")
    parser.add_argument(
        "--only", choices=("plain", "reference", "speedrun"), nargs="+", help="run only these (default: all three)"
    )
    args = parser.parse_args()
    wanted = set(args.only or ("plain", "reference", "speedrun"))
    results: dict[str, Result] = {}
    warm_up()
    with tempfile.TemporaryDirectory() as root:
        if "reference" in wanted:
            results["reference"] = run("shakespeare_reference", args.reference, args.eval_every, args.target, root)
        if "plain" in wanted:
            results["plain"] = run_plain(args.eval_every, args.target, root)
        if "speedrun" in wanted:
            results["speedrun"] = run(args.preset, args.speedrun, args.eval_every, args.target, root)
    print(f"\n{'run':<24}{'steps':>7}{'train s':>10}{f'to {args.target} s':>12}{'final':>9}")
    for r in results.values():
        reached = f"{r.time_to_target:.1f}" if r.time_to_target is not None else "never"
        print(f"{r.name:<24}{r.steps:>7}{r.seconds:>10.1f}{reached:>12}{r.final:>9.4f}")
    speedrun = results.get("speedrun")
    for key, what in (("reference", "lmpre as the reference"), ("plain", "the plain nanoGPT loop")):
        if speedrun is None or key not in results:
            continue
        if speedrun.time_to_target is None:
            print(f"ratio: the speedrun never reached {args.target}")
            break
        print(
            f"ratio (speedrun's time to {args.target} / {what}'s training time): "
            f"{speedrun.time_to_target / results[key].seconds:.3f}  (goal <= 0.5)"
        )


if __name__ == "__main__":
    main()
