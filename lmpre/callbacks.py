"""Lightning callbacks that make a run end, log and show its progress the way users expect."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import (
    BatchesProcessedColumn,
    CustomBarColumn,
    CustomTimeColumn,
)
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table
from rich.progress import ProgressColumn, Task, TextColumn
from rich.text import Text
from torch import Tensor

from lmpre.errors import Interrupted

log = logging.getLogger(__name__)


class ValidateOnLastStep(L.Callback):
    """Validate (and so checkpoint) after the final step even when `max_steps` is not a multiple of
    `val_check_interval`: otherwise the steps after the last validation are never saved."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates before it stops


class LogStepOnResume(L.Callback):
    """Log a resumed run's metrics at the steps an uninterrupted run logs them.

    Lightning logs at its count of batches that stepped, which it restores from a checkpoint as the saved count
    plus one, except when the checkpoint was saved at the validation of a run's last step: resumed from there, every
    metric lands one step early, on top of the first run's last one. At the first batch after a (re)start that
    count is exactly the number of optimizer steps taken."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first_batch = True

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if getattr(self, "_first_batch", False):
            self._first_batch = False
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step


def logging_step(trainer: L.Trainer) -> int:
    """The step Lightning logs metrics at now (during a validation: the step it validates)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def logs_this_step(trainer: L.Trainer) -> bool:
    """Whether Lightning writes the training step in progress to the loggers: every `log_every_n_steps` steps and at
    the run's last step. A value logged on other steps is never written, only its bookkeeping paid for."""
    last_step = 0 < trainer.max_steps <= trainer.global_step + 1
    return bool(trainer._logger_connector.should_update_logs) or last_step


class StopOnSignal(L.Callback):
    """SIGINT (Ctrl-C) and SIGTERM (pre-emption, `kill`, a scheduler ending a job) stop a run without losing a step.

    Used as a context manager around the whole run. Before training (config checks, data preparation, the step-0
    validation) a signal stops the run at once: there is nothing to save. During training the step in progress
    finishes, and a validation in progress too (its metrics and checkpoint stay whole); then `checkpoint` is
    saved and the run ends with `Interrupted` (exit 130 for SIGINT, 143 for SIGTERM). A second signal exits at
    once without saving. With several processes, all stop after the same step.

    Lightning's own SIGTERM handling would stop in the middle of a validation; this replaces it during training.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint: Path, run_dir: Path | None = None) -> None:
        self.checkpoint = checkpoint
        self.run_dir = run_dir
        self.signum: int | None = None
        self.saved_step: int | None = None
        self._started = False  # training has started (on_train_start)
        self._trainer: L.Trainer | None = None
        self._training = False
        self._stopping = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        self._install()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may handle signals: leave them as they are
        for signum in self.SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:
            _write_stderr(f"interrupted by a second {name}: exiting at once, without saving")
            launcher = getattr(getattr(self._trainer, "strategy", None), "launcher", None)
            if launcher is not None:  # processes Lightning started for the other ranks would wait forever
                launcher.kill(signal.SIGKILL)
            os._exit(128 + signum)
        self.signum = signum
        if not self._training:
            raise self.interrupted()
        _write_stderr(f"{name}: saving a checkpoint after this step, then stopping (send it again to exit at once)")

    def interrupted(self) -> Interrupted:
        """The exception that ends the run, saying what was saved."""
        assert self.signum is not None
        name = signal.Signals(self.signum).name
        if not self._started:
            return Interrupted(self.signum, f"interrupted by {name} before training started: nothing to save")
        if self.saved_step is None:
            return Interrupted(self.signum, f"interrupted by {name}: nothing saved since the last checkpoint")
        where = f" with hydra.run.dir={self.run_dir}" if self.run_dir else ""
        return Interrupted(
            self.signum,
            f"interrupted by {name} at step {self.saved_step}: saved {self.checkpoint}; "
            f"run the same command{where} to continue from it",
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = self._training = True
        self._trainer = trainer
        self._install()  # Lightning has just put its own SIGTERM handler in place

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._training = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._training and self._agreed(trainer):
            self._stop(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stopping:  # Lightning would stop after the next validation batch: finish the validation first
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._training and not trainer.sanity_checking and self._agreed(trainer):
            self._stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._stopping and isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.checkpoint)
            self.saved_step = trainer.global_step
        self._training = False

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any process received a signal (a collective with several: all call it at the same points)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(self.signum is not None, all=False))
        return self.signum is not None

    def _stop(self, trainer: L.Trainer) -> None:
        # Lightning ends the run with SIGTERMException once this training step (and its validation) is complete,
        # at a point where the loops' state is consistent: the checkpoint is saved then (`on_exception`).
        self._stopping = True
        trainer._signal_connector.received_sigterm = True


def _write_stderr(line: str) -> None:
    os.write(2, f"{line}\n".encode())  # from a signal handler: no buffered stream or lock involved


class ProgressLog(L.Callback):
    """Lines for the console and train.log: every validation's metrics and, every `every_n_steps` steps, the step
    of max_steps, the train loss, tokens per second and the time left (the plain-log progress)."""

    def __init__(self, every_n_steps: int = 50) -> None:
        self.every_n_steps = every_n_steps
        self._start = 0.0
        self._start_step = 0
        self._tokens = 0
        self._flops_logged = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step, self._tokens = time.monotonic(), trainer.global_step, 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, Tensor):
            self._tokens += batch.numel() * trainer.world_size
        if not trainer.is_global_zero:
            return
        flops = getattr(pl_module, "flops_per_batch", None)
        if flops and not self._flops_logged:
            self._flops_logged = True
            log.info("training FLOPs per batch and process: %s (forward and backward)", _human(flops))
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0:
            log.info("%s", self.progress_line(trainer))

    def progress_line(self, trainer: L.Trainer) -> str:
        step, total = trainer.global_step, _total_steps(trainer)
        parts = [f"step {step}/{total}" if total else f"step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"train/loss {float(loss):.4f}")
        elapsed, done = time.monotonic() - self._start, step - self._start_step
        if elapsed > 0 and done > 0:
            parts.append(f"{_human(self._tokens / elapsed)} tokens/s")
            if total:
                parts.append(f"ETA {_duration((total - step) * elapsed / done)}")
        return " | ".join(parts)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if metrics:
            total = _total_steps(trainer)
            step = f"step {trainer.global_step}/{total}" if total else f"step {trainer.global_step}"
            log.info("%s: %s", step, "  ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items())))


def _total_steps(trainer: L.Trainer) -> int | None:
    if trainer.max_steps > 0:
        return int(trainer.max_steps)
    try:
        steps = trainer.estimated_stepping_batches
    except Exception:  # no train loader yet (e.g. the step-0 validation)
        return None
    return int(steps) if steps != float("inf") else None


def _human(number: float) -> str:
    for unit in ("", "k", "M", "G", "T", "P"):
        if abs(number) < 1000:
            return f"{number:.1f}{unit}" if unit else f"{number:.0f}"
        number /= 1000
    return f"{number:.1f}E"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


class StepProgressBar(RichProgressBar):
    """Rich's bar over the whole run's steps instead of one epoch's batches: step/max_steps, elapsed • time left
    and tokens/s. A resumed run starts the bar where it stopped. (callbacks.progress=null: plain log lines.)

    It is redrawn at most `refresh_rate` times a second, by default once, as often as its clock changes (Lightning's
    100 redraws it after nearly every step of a small model). Each redraw is ~4.5 ms of Rich layout in a thread that
    holds the GIL, which training waits for: 4 a second cost a tiny model ~1.5% of its speed. Its step and metrics
    (tensors to floats) are updated as often: after the first and the last step, and before a validation or the end.
    Rich keeps a sample per update for its speed and time-left estimates (up to 1000, summed at every redraw), so
    updating it after every step costs both the step and every redraw; the estimates span the same last 30 s
    either way."""

    def __init__(self, refresh_rate: int = 1, **kwargs: Any) -> None:
        super().__init__(refresh_rate=refresh_rate, **kwargs)
        self.tokens_per_step = 0
        self._shown = -math.inf  # time.monotonic() of the last update of the step and metrics

    @property
    def total_train_batches(self) -> int | float:
        return _total_steps(self.trainer) or float("inf")

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{'step':{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # one task for the whole run, not one per epoch
            self._initialize_train_progress_bar_id()
        self.refresh()

    def _initialize_train_progress_bar_id(self) -> None:
        super()._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, self.trainer.global_step)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if isinstance(batch, Tensor):
            self.tokens_per_step = batch.numel() * trainer.world_size * trainer.accumulate_grad_batches
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        now = time.monotonic()
        if now - self._shown >= 1 / max(self.refresh_rate, 1) or trainer.global_step == trainer.max_steps:
            self._shown = now
            self._update_metrics(trainer, pl_module)
            self._update(self.train_progress_bar_id, trainer.global_step)  # and a redraw

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(self.train_progress_bar_id, trainer.global_step)  # the step validated, while it is validated
        super().on_validation_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._update(self.train_progress_bar_id, trainer.global_step)  # a run stopped early (budget, signal)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._update(self.train_progress_bar_id, trainer.global_step)
        super().on_exception(trainer, pl_module, exception)

    def configure_columns(self, trainer: L.Trainer) -> list[Any]:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            BatchesProcessedColumn(style=self.theme.batch_progress),
            CustomTimeColumn(style=self.theme.time),
            TokensPerSecondColumn(self),
        ]


class TokensPerSecondColumn(ProgressColumn):
    """Training tokens per second, from the bar's steps per second."""

    def __init__(self, bar: StepProgressBar) -> None:
        super().__init__()
        self.bar = bar

    def render(self, task: Task) -> Text:
        if task.id != self.bar.train_progress_bar_id or not task.speed or not self.bar.tokens_per_step:
            return Text("")
        return Text(f"{_human(task.speed * self.bar.tokens_per_step)} tokens/s", style=self.bar.theme.processing_speed)


class ModelSummary(LightningModelSummary):
    """Lightning's table, logged (so it reaches train.log), without its FLOPs column: Lightning fills it only for a
    model with an `example_input_array`, and prints 0 otherwise. Training FLOPs are logged after the first step
    (and as train/device/flops_per_sec)."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, total_flops, *columns
        )
        log.info("\n%s", "\n".join(line for line in table.splitlines() if not line.endswith("Total Flops")))
