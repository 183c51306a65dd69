"""No framework tax: tokens/s of lmpre's full training path against a minimal plain-PyTorch loop, side by side.

lmpre: the objective, datamodule, trainer, default callbacks and TensorBoard logger composed and instantiated by
lmpre's own configs exactly as `python -m lmpre.train` builds them (`lmpre.train.build`), batches streamed by
litdata from the prepared shards. Plain: the same backbone (a copy of lmpre's initial weights), the same batches
(the same windows of the same prepared data, in the same order, held in memory) and the same optimizer (lmpre's
AdamW groups and warm-up/cosine schedule, gradients clipped to norm 1.0 as conf/trainer/cpu.yaml does).

The two alternate inside one process (same threads, same load): a callback pauses lmpre's fit at the start of a
training batch, runs K plain steps, and resumes. Timed: K consecutive optimizer steps of each, round after round
(lmpre: everything from the start of one training batch to the start of the K-th after it - data streaming,
forward, loss, backward, clipping, AdamW, schedule, every hook, callback, metric, progress bar refresh and
TensorBoard write; plain: forward, loss, backward, clipping, AdamW, schedule, zero_grad on in-memory batches).
Not timed: composing the config, preparing the data, building the model, the sanity validation, the warm-up steps
of each (the first lmpre step counts FLOPs), the final validation and checkpoint. The progress bar is drawn as in a
terminal (TTY_COMPATIBLE=1), where users see it.

    python scripts/bench_overhead.py [--cases cpu tiny] [--rounds 20] [--threads 1] > /tmp/b.txt; tail -n 5 /tmp/b.txt
    python scripts/bench_overhead.py --cases tiny --profile /tmp/lmpre.prof  # what lmpre's steps spend their time on
    python scripts/bench_overhead.py --cases tiny --overrides callbacks.progress=null  # what the bar costs
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TTY_COMPATIBLE", "1")  # the bar renders as in a terminal even when stdout is a file

import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from lmpre.models import Transformer
from lmpre.objectives import PretrainingObjective
from lmpre.train import build, build_objective


@dataclass
class Case:
    overrides: list[str]
    steps: int  # K: optimizer steps per timed segment
    warmup: int


CASES = {
    "cpu": Case(["model=gpt", "data=wiki"], steps=3, warmup=3),  # the CPU preset
    # where per-step overhead shows most: nanoGPT's CPU Shakespeare shape, 12x64 tokens per step
    "tiny": Case(["model=gpt", "data=shakespeare", "model.backbone.d_model=128"], steps=25, warmup=20),
}


@dataclass
class Timings:
    """Seconds per timed segment: wall clock, and CPU time of the whole process (all its threads: the bar's too),
    which a loaded machine disturbs far less than the wall clock."""

    lmpre: list[tuple[float, float]] = field(default_factory=list)
    plain: list[tuple[float, float]] = field(default_factory=list)


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = clock()
    return wall - start[0], cpu - start[1]


def compose_config(case: Case, rounds: int, run_dir: Path, overrides: list[str]) -> DictConfig:
    max_steps = case.warmup + rounds * case.steps + 1
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        return compose(
            "train",
            [
                *case.overrides,
                *overrides,
                f"paths.output_dir={run_dir}",
                f"trainer.max_steps={max_steps}",
                f"trainer.val_check_interval={max_steps}",  # validation (and its checkpoint) only after the timing
                "trainer.limit_val_batches=2",
            ],
        )


class PlainLoop:
    """The minimal loop: what any PyTorch user writes for causal LM."""

    def __init__(self, objective: PretrainingObjective, batches: list[torch.Tensor], total_steps: int) -> None:
        self.model = Transformer(objective.config)
        self.model.load_state_dict(objective.model.state_dict())
        self.model.train()
        self.optimizer, self.scheduler = objective.optim.build(self.model, total_steps)
        self.batches: Iterator[torch.Tensor] = iter(batches)

    def step(self) -> None:
        window = next(self.batches)
        logits = self.model(window[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1).float(), window[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)


class Alternate(L.Callback):
    """Interleaves the plain loop with lmpre's fit: K timed lmpre steps, then K timed plain steps, and so on."""

    def __init__(self, case: Case, rounds: int, make_plain: Any, profile: cProfile.Profile | None = None) -> None:
        self.case, self.rounds, self.make_plain = case, rounds, make_plain
        self.profile = profile  # enabled over lmpre's timed segments only
        self.timings = Timings()
        self.plain: PlainLoop | None = None
        self._started = (0.0, 0.0)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        step, case = trainer.global_step, self.case
        if step < case.warmup or (step - case.warmup) % case.steps or len(self.timings.plain) == self.rounds:
            return
        if self.plain is None:  # end of lmpre's warm-up: build the plain loop and warm it up the same
            assert isinstance(pl_module, PretrainingObjective)
            self.plain = self.make_plain(pl_module)
            for _ in range(case.warmup):
                self.plain.step()
        else:
            if self.profile:
                self.profile.disable()
            self.timings.lmpre.append(since(self._started))
            start = clock()
            for _ in range(case.steps):
                self.plain.step()
            self.timings.plain.append(since(start))
            if len(self.timings.plain) == self.rounds:
                return
        if self.profile:
            self.profile.enable()
        self._started = clock()


def same_batches(cfg: DictConfig, count: int) -> list[torch.Tensor]:
    """The windows lmpre's train loader yields, in its order, from a second datamodule on the same prepared data."""
    datamodule, _ = build_objective(cfg)
    datamodule.setup("fit")
    batches = []
    while len(batches) < count:
        for batch in datamodule.train_dataloader():
            batches.append(datamodule.on_before_batch_transfer(batch, 0))
            if len(batches) == count:
                break
    return batches


def run_case(
    case: Case, rounds: int, overrides: list[str], profile: cProfile.Profile | None = None
) -> tuple[Timings, int]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(case, rounds, Path(tmp) / "run", overrides)
        L.seed_everything(cfg.seed)
        plain_steps = case.warmup + rounds * case.steps
        batches = same_batches(cfg, plain_steps)
        total = int(cfg.trainer.max_steps)
        alternate = Alternate(case, rounds, lambda objective: PlainLoop(objective, batches, total), profile)
        datamodule, model, trainer = build(cfg, callbacks_extra=[alternate])
        trainer.fit(model, datamodule=datamodule)
        return alternate.timings, batches[0].numel()


def report(name: str, timings: Timings, tokens_per_step: int, steps: int) -> str:
    tokens = tokens_per_step * steps
    columns = []
    for kind in (0, 1):  # wall, CPU
        lmpre = tokens * len(timings.lmpre) / sum(t[kind] for t in timings.lmpre)
        plain = tokens * len(timings.plain) / sum(t[kind] for t in timings.plain)
        rounds = sorted(p[kind] / q[kind] for p, q in zip(timings.plain, timings.lmpre, strict=True))
        columns.append(f"{lmpre:10,.0f} {plain:10,.0f} {lmpre / plain:6.3f}x {rounds[len(rounds) // 2]:6.3f}x")
    return f"{name:5} {tokens_per_step:6d} {len(timings.lmpre):3d}x{steps:<3d} | {columns[0]} | {columns[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=["cpu", "tiny"])
    parser.add_argument("--rounds", type=int, default=20, help="timed lmpre/plain segment pairs per case")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    parser.add_argument("--overrides", nargs="*", default=[], help="lmpre's Hydra overrides: callbacks.progress=null")
    parser.add_argument("--profile", type=Path, help="cProfile lmpre's timed steps (this file: pstats), print the top")
    args = parser.parse_args()
    profile = cProfile.Profile() if args.profile else None
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = []
    for name in args.cases:
        timings, tokens_per_step = run_case(CASES[name], args.rounds, args.overrides, profile)
        lines.append(report(name, timings, tokens_per_step, CASES[name].steps))
    print(
        f"\ntorch threads: {torch.get_num_threads()}; tokens/s over all timed segments, per second of wall clock and "
        "per second of the process's CPU time; ratio = lmpre / plain (median: of the rounds' ratios)"
    )
    head = f"{'lmpre':>10} {'plain':>10} {'ratio':>7} {'median':>7}"
    print(f"{'':5} {'':6} {'':7} | {'tokens/s (wall)':^37} | {'tokens/s (CPU time)':^37}")
    print(f"{'case':5} {'tok/st':>6} {'rounds':>7} | {head} | {head}")
    print("\n".join(lines))
    if profile:
        profile.dump_stats(args.profile)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
