"""Pretrain a language model: `python -m lmpre.train model=gpt data=wiki [overrides]`.

First the composed config is checked (a mistake is one `error:` line naming the setting, before any data is
prepared) and the run directory decides what this launch is: a new run, or the continuation of the run whose
checkpoints it holds (`resume=auto`). Then the data is prepared when missing (raw text → tokenizer → litdata
shards), the objective is built on the shared backbone and Lightning fits it; logs and checkpoints land in the run
directory (Hydra's run dir). SIGINT/SIGTERM save a checkpoint and exit 130/143 (lmpre.callbacks.StopOnSignal).
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lmpre import budget, checkpoint, init, sweep
from lmpre.budget import ScheduleToBudget
from lmpre.callbacks import LogStepOnResume, StopOnSignal
from lmpre.checkpoint import AtomicCheckpointIO, CheckpointInfo
from lmpre.errors import CheckpointError, ConfigError, Interrupted, LmpreError
from lmpre.models import TransformerConfig
from lmpre.objectives import PretrainingObjective
from lmpre.profiler import NoProfiler

log = logging.getLogger(__name__)

RESUME = ("auto", "never")


# ------------------------------------------------------------------------------------------------ checks, up front


def check_config(cfg: DictConfig) -> None:
    """Raise on every setting that cannot work, naming it; cheap, so it runs before anything expensive."""
    data, optim, trainer = cfg.data, cfg.optim, cfg.trainer
    batch_size = _number(data.batch_size, "data.batch_size", int)
    if batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size} must be at least 1 (windows per batch and process)")
    seq_len = _number(data.seq_len, "data.seq_len", int)
    if seq_len < 2:
        raise ConfigError(f"data.seq_len={seq_len} must be at least 2 (tokens per training example), e.g. 256")
    try:
        config = TransformerConfig(**{**_backbone(cfg), "vocab_size": 1})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.backbone: {err}") from None
    if seq_len > config.max_seq_len:
        raise ConfigError(
            f"data.seq_len={seq_len} is longer than model.backbone.max_seq_len={config.max_seq_len}: "
            "lower data.seq_len or raise model.backbone.max_seq_len"
        )
    lr = _number(optim.lr, "optim.lr", float)
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"optim.lr={optim.lr} must be a positive learning rate, e.g. optim.lr=3e-4")
    for key in ("warmup_steps", "weight_decay"):
        if key in optim and _number(optim[key], f"optim.{key}", float) < 0:
            raise ConfigError(f"optim.{key}={optim[key]} must be 0 or more")
    max_steps = _number(trainer.get("max_steps", -1), "trainer.max_steps", int)
    if max_steps == 0 or max_steps < -1:
        raise ConfigError(f"trainer.max_steps={max_steps} must be a positive number of steps (or -1: epochs decide)")
    _check_budget(cfg, tokens_per_process=batch_size * seq_len)
    _check_parallelism(cfg.model)
    accelerator = str(trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} needs a CUDA GPU, and torch finds none: on this machine use "
            "trainer=cpu, or keep the preset and add trainer.accelerator=cpu trainer.precision=32-true "
            "(e.g. trainer=ddp trainer.accelerator=cpu trainer.devices=2 trainer.precision=32-true)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps needs Apple's Metal backend, and torch finds none: use trainer=cpu")
    if cfg.get("resume", "auto") not in RESUME:
        raise ConfigError(f"resume={cfg.resume} is not one of {', '.join(RESUME)}")
    init.check_settings(cfg)


def _check_budget(cfg: DictConfig, tokens_per_process: int) -> None:
    trainer, limits = cfg.trainer, cfg.get("budget") or DictConfig({})
    accumulate = _number(trainer.get("accumulate_grad_batches", 1), "trainer.accumulate_grad_batches", int)
    if accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate} must be at least 1 (micro-batches per step)")
    if trainer.get("max_time") is not None:
        raise ConfigError(
            f"trainer.max_time={trainer.max_time}: set budget.max_time instead (the LR schedule is fitted to it)"
        )
    budget.parse_time(limits.get("max_time"))
    if limits.get("max_tokens") is not None:
        max_tokens = _number(limits.max_tokens, "budget.max_tokens", int)
        devices = trainer.get("devices", 1)
        processes = devices * int(trainer.get("num_nodes", 1)) if isinstance(devices, int) and devices > 0 else 1
        per_step = tokens_per_process * accumulate * processes
        if max_tokens < per_step:
            raise ConfigError(
                f"budget.max_tokens={limits.max_tokens} is less than one optimizer step ({per_step:,} tokens: "
                "data.batch_size × data.seq_len × trainer.accumulate_grad_batches × devices): raise it, or unset it"
            )


def _check_parallelism(model: DictConfig) -> None:
    if not isinstance(model.get("activation_checkpointing", False), bool):
        raise ConfigError(f"model.activation_checkpointing={model.activation_checkpointing} must be true or false")
    compile = model.get("compile", False)
    if isinstance(compile, bool):
        return
    backends = torch.compiler.list_backends(exclude_tags=())  # imports dynamo: half a second
    if compile not in backends:
        raise ConfigError(
            f"model.compile={compile} must be true, false or a torch.compile backend ({', '.join(backends)})"
        )


def _backbone(cfg: DictConfig) -> dict[str, Any]:
    return cast(dict[str, Any], OmegaConf.to_container(cfg.model.get("backbone") or {}, resolve=True))


def _number(value: Any, setting: str, kind: type[int] | type[float]) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not float(value).is_integer())
    ):
        raise ConfigError(f"{setting}={value} must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


# -------------------------------------------------------------------------------------- which run this launch is


@dataclass(frozen=True)
class RunPlan:
    run_dir: Path
    checkpoint_dir: Path
    resume_from: CheckpointInfo | None  # None: a new run


def plan_run(cfg: DictConfig) -> RunPlan:
    """A new run, or the checkpoint this launch continues from: `ckpt_path` (a path, or `last`: the newest that
    loads), else with `resume=auto` the newest checkpoint of the run directory. A run directory never holds two
    runs: `resume=never` refuses one that holds checkpoints, and a foreign `ckpt_path` is refused there too."""
    run_dir = Path(cfg.paths.output_dir)
    ckpt_cfg = (cfg.get("callbacks") or {}).get("checkpoint")
    checkpoint_dir = Path(ckpt_cfg.dirpath) if ckpt_cfg and ckpt_cfg.get("dirpath") else run_dir / "checkpoints"
    sharded_ok = "FullyShardedStrategy" in str(cfg.trainer.get("strategy", ""))
    existing = checkpoint.candidates(checkpoint_dir)
    ckpt_path = cfg.get("ckpt_path")
    info: CheckpointInfo | None = None
    if ckpt_path == "last":
        info = checkpoint.latest(checkpoint_dir, sharded_ok=sharded_ok)
        if info is None:
            raise CheckpointError(
                f"ckpt_path=last, but {checkpoint_dir} holds no checkpoint that loads: pass ckpt_path=PATH, "
                "or leave it unset to start a new run"
            )
    elif ckpt_path == "best":
        raise CheckpointError("ckpt_path=best is not supported: pass the checkpoint's path, or ckpt_path=last")
    elif ckpt_path:
        info = checkpoint.inspect(Path(str(ckpt_path)), sharded_ok=sharded_ok)
        if existing and checkpoint_dir.resolve() not in info.path.resolve().parents:
            raise CheckpointError(
                f"{run_dir} already holds a run ({', '.join(p.name for p in existing)}); starting from "
                f"ckpt_path={ckpt_path} there would mix two runs: choose a new directory (hydra.run.dir=DIR), "
                "or leave ckpt_path unset to continue the run in it"
            )
    elif existing:
        if cfg.get("resume", "auto") == "never":
            raise CheckpointError(
                f"{run_dir} already holds a run ({', '.join(p.name for p in existing)}): resume=auto continues "
                "it; for a new run choose another directory (hydra.run.dir=DIR)"
            )
        info = checkpoint.latest(checkpoint_dir, sharded_ok=sharded_ok)
        if info is None:
            raise CheckpointError(
                f"{checkpoint_dir} holds checkpoints but none of them loads (see the warnings above): move them "
                "away to start a new run there, or pass ckpt_path=PATH"
            )
    if info is not None:
        if info.record and info.record.get("consolidated_from"):
            raise CheckpointError(
                f"{info.path} holds weights only (consolidated from {info.record['consolidated_from']}): continue "
                "training from that directory with trainer=fsdp, or use this file with lmpre.checkpoint.load_objective"
            )
        checkpoint.check_matches(info.path, info.record, _configured_record(cfg, info.record))
    return RunPlan(run_dir, checkpoint_dir, info)


def _configured_record(cfg: DictConfig, recorded: dict[str, Any] | None) -> dict[str, Any]:
    """What the config says about a checkpoint's run before the data is prepared (the tokenizer is not known)."""
    vocab_size = (recorded or {}).get("backbone", {}).get("vocab_size", 1)
    return {
        "objective": checkpoint.class_path(get_class(cfg.model._target_)),
        "backbone": asdict(TransformerConfig(**{**_backbone(cfg), "vocab_size": vocab_size})),
        "seq_len": int(cfg.data.seq_len),
    }


# -------------------------------------------------------------------------------------------------------- building


def build_objective(cfg: DictConfig) -> tuple[L.LightningDataModule, PretrainingObjective]:
    """The datamodule (its data prepared if needed) and the objective sized to its tokenizer."""
    datamodule = instantiate(cfg.data)
    datamodule.check()
    datamodule.prepare_data()
    model = instantiate(
        cfg.model,
        backbone={"vocab_size": datamodule.vocab_size},
        optim=cfg.optim,
        special_tokens=datamodule.special_tokens,
        _convert_="all",
    )
    datamodule.window = model.window_length(cfg.data.seq_len)
    return datamodule, model


def build(
    cfg: DictConfig, *, callbacks_extra: list[L.Callback] | None = None, purge_step: int | None = None
) -> tuple[L.LightningDataModule, PretrainingObjective, L.Trainer]:
    """The datamodule, objective and trainer a config describes. Checkpoints are always written atomically;
    without a progress bar among the callbacks, Lightning draws none (plain log lines instead); without a logger, no
    learning-rate monitor; without a profiler (`trainer.profiler`), hooks are called without one's bookkeeping."""
    datamodule, model = build_objective(cfg)
    loggers = build_loggers(cfg, purge_step)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if not loggers:  # the learning rate has nowhere to go, and Lightning's monitor would refuse to start
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    callbacks += [LogStepOnResume(), ScheduleToBudget(), sweep.run_result(cfg), *(callbacks_extra or [])]
    plugins = list(instantiate(cfg.trainer.get("plugins") or [], _convert_="all"))
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=plugins,
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        profiler=cfg.trainer.get("profiler") or NoProfiler(),
        **budget.trainer_limits(cfg),
    )
    budget.apply(cfg, trainer)
    return datamodule, model, trainer


def build_loggers(cfg: DictConfig, purge_step: int | None = None) -> list[Any]:
    """One logger per entry of `logger` (`logger=[tensorboard,csv]`; an entry set to null is dropped)."""
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg is None:
            continue
        is_tensorboard = issubclass(get_class(logger_cfg._target_), TensorBoardLogger)
        # purge_step: TensorBoard drops what an earlier launch logged from this step on, so curves never interleave
        extra = {"purge_step": purge_step} if is_tensorboard and purge_step is not None else {}
        loggers.append(instantiate(logger_cfg, **extra))
    return loggers


# -------------------------------------------------------------------------------------------------------- training


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model a config describes (a new run or a resumed one); returns the final logged metrics.

    Raises LmpreError for a setting or input to fix, and `Interrupted` when SIGINT/SIGTERM stopped it."""
    check_config(cfg)
    # ModelCheckpoint warns about a non-empty directory: a run directory's checkpoints are this run's (plan_run).
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    plan = _plan_keeping_launches(cfg)
    resume = plan.resume_from
    start = init.plan(cfg, resuming=resume is not None)  # None: random weights, or the run's own checkpoint
    stop = StopOnSignal(plan.checkpoint_dir / "last.ckpt", run_dir=plan.run_dir)
    trainer: L.Trainer | None = None
    with stop:
        try:
            L.seed_everything(cfg.seed, workers=True)
            datamodule, model, trainer = build(cfg, callbacks_extra=[stop], purge_step=resume.step if resume else 0)
            if resume is not None:
                checkpoint.check_matches(resume.path, resume.record, checkpoint.run_record(model, datamodule))
                log.info("resuming from %s (step %d)", resume.path, resume.step)
            elif start is not None:
                start.apply(model, datamodule)
            if _rank() == 0:
                for path in checkpoint.remove_temporaries(plan.checkpoint_dir):
                    log.info("removed %s, left by a save that was killed", path)
                _save_run_files(plan.checkpoint_dir, datamodule)
                log.info(
                    "%s: %s parameters without embeddings, %s in all",
                    type(model).__name__,
                    f"{model.model.num_parameters():,}",
                    f"{model.model.num_parameters(exclude_embeddings=False):,}",
                )
                log.info("%s", budget.from_config(cfg, trainer.world_size).describe())
            if cfg.validate_first and resume is None:  # the untrained model's val/loss: the curve's true start
                trainer.validate(model, datamodule=datamodule, verbose=False)
            trainer.fit(model, datamodule=datamodule, ckpt_path=resume.path if resume else None)
        except Interrupted:
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning turns both signals into one of these
            if stop.signum is None:
                raise
            raise stop.interrupted() from None
        if stop.signum is not None:  # arrived as the run ended: its last checkpoint is saved
            raise stop.interrupted()
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def _plan_keeping_launches(cfg: DictConfig) -> RunPlan:
    """`plan_run`, keeping each launch's Hydra config: Hydra overwrites RUN/.hydra/*.yaml at every launch, so each
    launch that uses the directory copies them to .hydra/launches/N/, and one that is refused puts the previous
    launch's back."""
    hydra_dir = Path(cfg.paths.output_dir) / ".hydra"
    launches = hydra_dir / "launches"
    keep = _rank() == 0 and hydra_dir.is_dir()
    previous = (
        sorted((p for p in launches.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        if launches.is_dir()
        else []
    )
    try:
        plan = plan_run(cfg)
    except LmpreError:
        if keep and previous:
            for file in previous[-1].glob("*.yaml"):
                shutil.copy2(file, hydra_dir / file.name)
        raise
    if keep:
        target = launches / str(int(previous[-1].name) + 1 if previous else 1)
        target.mkdir(parents=True, exist_ok=True)
        for file in hydra_dir.glob("*.yaml"):
            shutil.copy2(file, target / file.name)
    return plan


def _rank() -> int:
    """This process's global rank, known from the launcher's environment before Lightning starts."""
    return int(getattr(rank_zero_only, "rank", 0))


def _save_run_files(directory: Path, datamodule: Any) -> None:
    prepared_dir = getattr(datamodule, "prepared_dir", None)
    if prepared_dir is not None:
        checkpoint.save_run_files(directory, Path(prepared_dir) / "tokenizer.json", datamodule.manifest)


# ---------------------------------------------------------------------------------------------------- entry point


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="train")
def main(cfg: DictConfig) -> Any:
    _log_through_hydra()
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        with sweep.job_as_single_run():
            metrics = train(cfg)
    except Interrupted as err:
        _report(err.message)
        raise SystemExit(err.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C before the signal handling was in place
        _report("interrupted by SIGINT")
        raise SystemExit(130) from None
    except (LmpreError, InstantiationException) as err:  # a config or input to fix, not a bug: no traceback
        _report(f"error: {err}")
        if sweep.in_multirun():  # SystemExit would end the whole sweep: a failed job is a row of its summary
            raise sweep.JobFailed(f"error: {err}") from None
        raise SystemExit(1) from None
    except Exception:
        _log_to_file(logging.ERROR, "training failed", exc_info=True)
        raise
    # A sweeper (e.g. Optuna, hparams_search=…) minimises the value returned here: the final val/loss.
    return metrics.get("val/loss")


def _log_through_hydra() -> None:
    """Lightning's loggers print on their own handler and skip Hydra's: route them (and Python warnings) through
    the root logger, so train.log holds what the console shows."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if type(h) is logging.StreamHandler]:
            logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)


def _report(line: str) -> None:
    """One line for the user on stderr, and in train.log."""
    print(line, file=sys.stderr)
    _log_to_file(logging.ERROR, line)


def _log_to_file(level: int, message: str, exc_info: bool = False) -> None:
    record = log.makeRecord(log.name, level, __file__, 0, message, (), sys.exc_info() if exc_info else None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    # Run lmpre.train's own `main`, not this __main__ copy's: launchers that pickle the task function (submitit)
    # then pickle a reference to an importable function, not the function and everything it refers to.
    from lmpre.train import main as importable_main

    importable_main()
