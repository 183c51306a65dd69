"""What a sweep compares, and its summary: `python -m lmpre.train -m optim.lr=1e-3,3e-4 …` ends with one row per job.

Each run records its result in RUN/result.json (`RunResult`, a Lightning callback: best and final `val/loss`, tokens
seen) and hands its hyper-parameters with its final metrics to its loggers (TensorBoard's HPARAMS tab). In a multirun,
`SweepSummary` (a Hydra callback, in `hydra.callbacks`) adds each job's overrides, status, error and wall time when the
job ends, in the job's own process (also under submitit), and rewrites SWEEP/summary.csv and summary.md from every
job's result: the summary exists even when the sweep is killed. A failed job becomes a row with its error and NaN as
its objective, so the sweepers go on (Hydra's basic sweeper would stop at the first failure, Optuna would count it a
failed trial); the sweep prints the table at its end and then exits 1 if any job failed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from filelock import FileLock
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from lmpre.budget import tokens_per_step

RESULT = "result.json"
# Set by Lightning's launcher in the process that starts the others.
LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
COLUMNS = ("job", "overrides", "best_val_loss", "best_step", "final_val_loss", "tokens", "wall_time_s", "run_dir")


class JobFailed(Exception):
    """A multirun job that stopped on an `error:` to fix: a row of the sweep's summary, not a traceback."""


# ------------------------------------------------------------------------------------------------- one run's result


class RunResult(L.Callback):
    """RUN/result.json, rewritten at every validation: best `val/loss` and its step, final `val/loss`, tokens seen
    (steps × accumulation × batch × seq_len × processes, as litgpt counts them). A resumed run keeps its earlier best.
    When training ends, every logger gets `hparams` with the final `val/*` metrics (`hp/…`)."""

    def __init__(self, run_dir: str | Path, tokens_per_process_step: int, hparams: dict[str, Any]) -> None:
        self.path = Path(run_dir) / RESULT
        self.tokens_per_process_step = tokens_per_process_step
        self.hparams = hparams
        self.result: dict[str, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.result and self.path.is_file():
            self.result = {k: v for k, v in json.loads(self.path.read_text()).items() if k.startswith("best_")}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or loss is None or not trainer.is_global_zero:
            return
        step, value = trainer.global_step, float(loss)
        if math.isfinite(value) and value < self.result.get("best_val_loss", math.inf):
            self.result.update(best_val_loss=value, best_step=step)
        tokens = step * self.tokens_per_process_step * trainer.world_size
        self.result.update(final_val_loss=value, step=step, tokens=tokens)
        _write_json(self.path, self.result)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {f"hp/{k}": float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if "best_val_loss" in self.result:
            metrics["hp/val/best_loss"] = self.result["best_val_loss"]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):  # the only one whose HPARAMS view pairs them with metrics
                logger.log_hyperparams(self.hparams, metrics)
            else:
                logger.log_hyperparams(self.hparams)


def run_result(cfg: DictConfig) -> RunResult:
    """The `RunResult` of a training config; its hyper-parameters are the config, less where it writes and watches."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(hparams, dict)
    for key in ("paths", "callbacks", "logger"):
        hparams.pop(key, None)
    return RunResult(cfg.paths.output_dir, tokens_per_step(cfg, world_size=1), cast(dict[str, Any], hparams))


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, json.dumps(data, indent=1) + "\n")


def _write_text(path: Path, text: str) -> None:
    """Readers (the summary, another job) never see half a file."""
    partial = path.with_name(f".{path.name}.partial")
    partial.parent.mkdir(parents=True, exist_ok=True)  # a run without a logger or checkpoints has made no dir yet
    partial.write_text(text)
    partial.replace(path)


# ------------------------------------------------------------------------------------------------ a multirun's jobs


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@contextmanager
def job_as_single_run() -> Iterator[None]:
    """Inside a multirun job, present the job as a single run to the processes Lightning starts per device.

    Lightning's DDP launcher starts each other device's process as `sys.argv` plus `hydra.run.dir=<hydra.run.dir>`:
    under `-m` that would run the whole sweep again in every such process, in run directories of its own. With the
    job's own overrides as argv and its output directory as hydra.run.dir, they join this job's run instead. The
    job's process group and the variables Lightning set for it (LOCAL_RANK=0 would tell the next job that its
    processes are started by someone else) end with the job: the next job's processes form their own group. So does
    its wandb run, which would otherwise take in the next job's metrics."""
    if not in_multirun():
        yield
        return
    hydra_cfg = HydraConfig.get()
    argv, environment = sys.argv, {key: os.environ.get(key) for key in LAUNCH_VARIABLES}
    sys.argv = [argv[0], *hydra_cfg.overrides.task]
    with read_write(cast(DictConfig, hydra_cfg.run)):
        hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        sys.argv = argv
        for key, value in environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:  # else the next job's WandbLogger would log into this run
            wandb.finish()


class SweepSummary(Callback):
    """Writes SWEEP/summary.csv and summary.md when each job of a multirun ends, prints the table at the end."""

    def __init__(self) -> None:
        self.started = time.time()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or getattr(rank_zero_only, "rank", 0) != 0:  # SLURM: a task per GPU
            return
        run_dir = Path(config.hydra.runtime.output_dir)
        result = json.loads((run_dir / RESULT).read_text()) if (run_dir / RESULT).is_file() else {}
        result.update(
            job=int(config.hydra.job.num),
            overrides=list(job_return.overrides or []),
            wall_time_s=round(time.time() - self.started, 1),
            run_dir=str(run_dir),
            error=None,
        )
        if job_return.status == JobStatus.FAILED:
            error = job_return._return_value
            result["error"] = str(error) if isinstance(error, JobFailed) else f"{type(error).__name__}: {error}"
            # The sweepers stop at a failed job; NaN is a value Optuna records as a failed trial and goes on.
            job_return.status, job_return.return_value = JobStatus.COMPLETED, math.nan
        _write_json(run_dir / RESULT, result)
        write_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = write_summary(sweep_dir)
        print(f"\nSweep summary ({sweep_dir / 'summary.csv'}, summary.md):\n\n{markdown(rows)}", flush=True)
        failed = [row for row in rows if row.get("error")]
        scored = [row for row in rows if not row.get("error") and row.get("final_val_loss") is not None]
        if scored:
            best = min(scored, key=lambda row: row["final_val_loss"])
            print(f"best final val/loss: job {best['job']}, {best['final_val_loss']:.4f} in {best['run_dir']}")
        if failed:
            print(f"error: {len(failed)} of {len(rows)} jobs failed: {', '.join(str(r['job']) for r in failed)}")
            raise SystemExit(1)


# ------------------------------------------------------------------------------------------------------ the summary


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rewrite SWEEP/summary.csv and summary.md from every finished job's result; returns the rows, by job. Under a
    lock: jobs that end at once (submitit) each see the others' results."""
    with FileLock(sweep_dir / ".summary.lock"):
        rows = [json.loads(path.read_text()) for path in sweep_dir.glob(f"**/{RESULT}")]
        rows = sorted((row for row in rows if "job" in row), key=lambda row: row["job"])
        _write_text(sweep_dir / "summary.csv", to_csv(rows))
        _write_text(sweep_dir / "summary.md", markdown(rows) + "\n")
    return rows


def to_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, "error"])
    for row in rows:
        cells = [" ".join(row["overrides"]) if key == "overrides" else row.get(key) for key in COLUMNS]
        writer.writerow(["" if cell is None else cell for cell in [*cells, row.get("error")]])
    return out.getvalue()


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per job; overrides shown are those that differ between the jobs (all of them for a single job)."""
    common = set.intersection(*(set(row["overrides"]) for row in rows)) if len(rows) > 1 else set()
    lines = ["| " + " | ".join([*COLUMNS, "error"]) + " |", "|" + " --- |" * (len(COLUMNS) + 1)]
    for row in rows:
        cells = {
            **{key: _cell(row.get(key)) for key in COLUMNS},
            "overrides": " ".join(o for o in row["overrides"] if o not in common),
            "tokens": f"{row['tokens']:,}" if row.get("tokens") is not None else "",
            "wall_time_s": f"{row['wall_time_s']:.1f}",
        }
        error = (row.get("error") or "").replace("|", "\\|").replace("\n", " ")
        lines.append("| " + " | ".join([*(cells[key] for key in COLUMNS), error]) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)
