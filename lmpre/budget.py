"""What ends a run: optimizer steps, tokens or wall time, whichever is reached first, with the LR schedule spanning
the budget that ends it.

Tokens are counted as litgpt counts them: the model inputs processed per optimizer step over every device and
micro-batch (`data.batch_size × data.seq_len × trainer.accumulate_grad_batches × world size`), so a token budget is
an exact number of steps, known before training starts. A time budget stops through Lightning's `max_time` (its
Timer, whose elapsed time is checkpointed, so a resumed run gets only what is left); how many steps fit in it is
known only once steps have been timed, so `ScheduleToBudget` measures the speed and moves the schedule's end to the
step the deadline falls on. That schedule depends on measured speed: a time-budgeted run is not bit-exact on
resume.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer

from lmpre.errors import ConfigError
from lmpre.objectives.optim import ScheduledLR

log = logging.getLogger(__name__)

# [DD:]HH:MM:SS, as Lightning's max_time strings are written
_CLOCK = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2}):(\d{1,2})$")


def parse_time(value: Any, setting: str = "budget.max_time") -> timedelta | None:
    """A wall-time budget: seconds, or a `[DD:]HH:MM:SS` string; None for no limit."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _CLOCK.match(str(value).strip())
        if match is None:
            raise ConfigError(f"{setting}={value} must be seconds or DD:HH:MM:SS (e.g. {setting}=00:12:00:00)")
        days, hours, minutes, secs = (int(part or 0) for part in match.groups())
        seconds = timedelta(days=days, hours=hours, minutes=minutes, seconds=secs).total_seconds()
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"{setting}={value} must be a positive duration")
    return timedelta(seconds=seconds)


@dataclass(frozen=True)
class Budget:
    """The limits of one run; `None` is no limit of that kind."""

    max_steps: int | None  # trainer.max_steps
    max_tokens: int | None  # budget.max_tokens
    max_time: timedelta | None  # budget.max_time
    tokens_per_step: int

    @property
    def steps(self) -> int | None:
        """The step limit: trainer.max_steps, or fewer when the token budget ends the run first."""
        limits = [n for n in (self.max_steps, self.token_steps) if n is not None]
        return min(limits) if limits else None

    @property
    def token_steps(self) -> int | None:
        """Steps that fit in the token budget (never more tokens than it allows, as litgpt rounds)."""
        return None if self.max_tokens is None else self.max_tokens // self.tokens_per_step

    def describe(self) -> str:
        """The run plan's budget line: what stops the run and what the LR schedule spans."""
        parts = []
        steps = self.steps
        if steps is not None:
            tokens = f"{steps * self.tokens_per_step:,} tokens"
            if self.token_steps is not None and steps == self.token_steps:
                parts.append(f"{steps:,} steps ({tokens}: budget.max_tokens={self.max_tokens:,})")
            else:
                parts.append(f"{steps:,} steps ({tokens}: trainer.max_steps)")
        if self.max_time is not None:
            parts.append(f"{self.max_time} of training (budget.max_time)")
        if not parts:
            return f"budget: none set (epochs decide), {self.tokens_per_step:,} tokens per step"
        if self.max_time is None:
            schedule = "the LR schedule ends there"
        else:
            schedule = "the LR schedule ends where the measured speed reaches the time limit"
            schedule += ", or at the step limit if that comes first" if steps is not None else ""
        first = ", whichever comes first" if len(parts) > 1 else ""
        return f"budget: {' or '.join(parts)}{first}; {self.tokens_per_step:,} tokens per step; {schedule}"


def from_config(cfg: Any, world_size: int) -> Budget:
    """The budget a (checked) config gives a run on `world_size` processes."""
    trainer = cfg.trainer
    max_steps = int(trainer.get("max_steps", -1))
    max_tokens = (cfg.get("budget") or {}).get("max_tokens")
    return Budget(
        max_steps=max_steps if max_steps > 0 else None,
        max_tokens=None if max_tokens is None else int(max_tokens),
        max_time=parse_time((cfg.get("budget") or {}).get("max_time")),
        tokens_per_step=tokens_per_step(cfg, world_size),
    )


def tokens_per_step(cfg: Any, world_size: int) -> int:
    """Model-input tokens of one optimizer step, as litgpt counts them: every micro-batch of every process."""
    accumulation = int(cfg.trainer.get("accumulate_grad_batches", 1))
    return int(cfg.data.batch_size) * int(cfg.data.seq_len) * accumulation * world_size


def trainer_limits(cfg: Any) -> dict[str, Any]:
    """Trainer arguments for the budget: Lightning's `max_time` stops the run; with a token budget the steps decide
    (set once the world size is known, `apply`), never Lightning's default of 1000 epochs."""
    limits: dict[str, Any] = {"max_time": parse_time((cfg.get("budget") or {}).get("max_time"))}
    if (cfg.get("budget") or {}).get("max_tokens") is not None and cfg.trainer.get("max_epochs") is None:
        limits["max_epochs"] = -1
    return limits


def apply(cfg: Any, trainer: L.Trainer) -> Budget:
    """Set the trainer's step limit to the budget's (the token budget needs the world size, known once the trainer is
    built); returns the budget."""
    limits = from_config(cfg, trainer.world_size)
    if limits.token_steps == 0:
        raise ConfigError(
            f"budget.max_tokens={limits.max_tokens:,} is less than one optimizer step ({limits.tokens_per_step:,} "
            "tokens: data.batch_size × data.seq_len × trainer.accumulate_grad_batches × devices)"
        )
    if limits.steps is not None:
        trainer.fit_loop.epoch_loop.max_steps = limits.steps
    return limits


# -------------------------------------------------------------------------------------------- the LR schedule's end


def set_schedule_length(trainer: L.Trainer, total_steps: int) -> None:
    """Make every LR schedule of the trainer end at `total_steps` (lmpre.objectives.optim.ScheduledLR's)."""
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, ScheduledLR):
            config.scheduler.total_steps = total_steps


class ScheduleToBudget(L.Callback):
    """The LR schedule spans the budget that ends the run.

    At the start of training (also after a resume, whose checkpoint restores the schedule it was saved with) the
    schedule ends at the step limit. With a time budget it is re-estimated every `every_n_steps` steps once
    `skip_steps` steps (compilation, warm caches) have passed: the steps taken, plus the time left over the average
    time per step since then (validation included), capped by the step limit. Every rank sets the same length: the
    estimate is rank zero's, broadcast."""

    def __init__(self, skip_steps: int = 3, every_n_steps: int = 10) -> None:
        self.skip_steps, self.every_n_steps = skip_steps, every_n_steps
        self.total_steps: int | None = None  # the schedule's length now (None: as configure_optimizers built it)
        self._timer: Timer | None = None
        self._origin: tuple[int, float] | None = None  # (step, time) speed is measured from
        self._start_step = self._last_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        timers = [c for c in trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
        self._timer = timers[0] if timers and timers[0].time_remaining() is not None else None
        self._origin, self._start_step, self._last_step = None, trainer.global_step, trainer.global_step
        if trainer.max_steps > 0:
            self._set(trainer, trainer.max_steps)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if self._timer is None or step == self._last_step:  # no time budget, or inside an accumulation
            return
        self._last_step = step
        if self._origin is None:
            if step - self._start_step >= self.skip_steps:
                self._origin = (step, time.monotonic())
            return
        origin_step, origin_time = self._origin
        if (step - origin_step) % self.every_n_steps:
            return
        seconds_per_step = (time.monotonic() - origin_time) / (step - origin_step)
        remaining = max(0.0, self._timer.time_remaining() or 0.0)
        total = step + int(remaining / seconds_per_step)
        if trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        total = int(trainer.strategy.broadcast(total))
        if step - origin_step == self.every_n_steps and trainer.is_global_zero:  # the first estimate of this launch
            log.info("time budget: %.3g s per step, so the LR schedule ends at step %d", seconds_per_step, total)
        self._set(trainer, total)

    def _set(self, trainer: L.Trainer, total_steps: int) -> None:
        if total_steps != self.total_steps:
            self.total_steps = total_steps
            set_schedule_length(trainer, total_steps)
