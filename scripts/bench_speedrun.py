"""Time to loss on Tiny Shakespeare (issue 10): lmpre configured as nanoGPT's CPU run (experiment=
shakespeare_reference) and the speedrun preset (experiment=shakespeare_speedrun), one after the other in one run,
each for its full schedule. Every `--eval-every` steps the training clock stops while the model is scored on the
metric (nats per character over the whole val split cut into 64-character blocks, `lmpre.evaluation.score_blocks`);
prints each run's training wall time, the training time at which it first reached the target, its final metric and
steps, then the ratio of the speedrun's time to the target to the reference's whole training time (goal: <= 0.5).

    python scripts/bench_speedrun.py [--eval-every 100] [--target 1.90] [--speedrun OVERRIDE …] [--only speedrun]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
from hydra import compose, initialize_config_module

from lmpre.evaluation import score_blocks, split_tokens
from lmpre.objectives import PretrainingObjective
from lmpre.train import build

# What the bench leaves out of the timed run: checkpoints, Lightning's own validation, logging and the bar.
QUIET = [
    "callbacks.checkpoint=null",
    "callbacks.progress=null",
    "callbacks.progress_log=null",
    "callbacks.summary=null",
    "callbacks.lr_monitor=null",
    "callbacks.throughput=null",
    "~logger",
    "trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
]


@dataclass
class TrainingClock(L.Callback):
    """Training wall time with the metric's evaluations left out: the clock stops while the model is scored."""

    stream: np.ndarray
    every: int
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, training seconds, metric)
    seconds: float = 0.0
    _since: float = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every and step != trainer.max_steps:
            return
        self.seconds += time.perf_counter() - self._since
        assert isinstance(pl_module, PretrainingObjective)
        pl_module.eval()
        loss = score_blocks(pl_module, self.stream, batch_size=256).loss  # type: ignore[arg-type]
        pl_module.train()
        self.curve.append((step, self.seconds, loss))
        print(f"  step {step:5d}  {self.seconds:7.1f}s  {loss:.4f}", flush=True)
        self._since = time.perf_counter()


@dataclass
class Result:
    name: str
    steps: int
    seconds: float
    final: float
    time_to_target: float | None


def run(name: str, overrides: list[str], every: int, target: float, root: str) -> Result:
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        cfg = compose("train", [f"experiment={name}", f"paths.output_dir={root}/{name}", *QUIET, *overrides])
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    clock = TrainingClock(split_tokens(datamodule.prepared_dir, datamodule.manifest, "val"), every)
    trainer.callbacks.append(clock)
    print(f"{name}: {' '.join(overrides)}", flush=True)
    trainer.fit(model, datamodule=datamodule)
    reached = [seconds for _, seconds, loss in clock.curve if loss <= target]
    step, _, final = clock.curve[-1]
    return Result(name, step, clock.seconds, final, reached[0] if reached else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between evaluations of the metric")
    parser.add_argument("--target", type=float, default=1.90, help="the metric to reach, nats per character")
    parser.add_argument("--reference", nargs="*", default=[], help="overrides for the reference run")
    parser.add_argument("--speedrun", nargs="*", default=[], help="overrides for the speedrun preset")
    parser.add_argument("--preset", default="shakespeare_speedrun", help="the experiment config timed as the speedrun")
    parser.add_argument("--only", choices=("reference", "speedrun"), help="run only one of the two")
    args = parser.parse_args()
    runs = {"shakespeare_reference": args.reference, args.preset: args.speedrun}
    results = {}
    with tempfile.TemporaryDirectory() as root:
        for name, overrides in runs.items():
            if args.only is None or (name == "shakespeare_reference") == (args.only == "reference"):
                results[name] = run(name, overrides, args.eval_every, args.target, root)
    print(f"\n{'run':<24}{'steps':>7}{'train s':>10}{f'to {args.target} s':>12}{'final':>9}")
    for r in results.values():
        reached = f"{r.time_to_target:.1f}" if r.time_to_target is not None else "never"
        print(f"{r.name:<24}{r.steps:>7}{r.seconds:>10.1f}{reached:>12}{r.final:>9.4f}")
    if len(results) == 2:
        reference, speedrun = results.values()
        if speedrun.time_to_target is None:
            print(f"ratio: the speedrun never reached {args.target}")
        else:
            print(
                f"ratio (speedrun's time to {args.target} / reference's training time): "
                f"{speedrun.time_to_target / reference.seconds:.3f}  (goal <= 0.5)"
            )


if __name__ == "__main__":
    main()
