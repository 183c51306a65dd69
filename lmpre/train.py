"""Pretrain a language model: `python -m lmpre.train model=gpt data=wiki [overrides]`.

Prepares the data when it is missing (raw text → tokenizer → litdata shards), builds the objective
on the shared backbone, and fits it with Lightning; logs and checkpoints land in Hydra's run dir.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from lmpre.errors import LmpreError
from lmpre.objectives import PretrainingObjective

log = logging.getLogger(__name__)


def build_objective(cfg: DictConfig) -> tuple[L.LightningDataModule, PretrainingObjective]:
    """The datamodule (its data prepared if needed) and the objective sized to its tokenizer."""
    datamodule = instantiate(cfg.data)
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


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, PretrainingObjective, L.Trainer]:
    """The datamodule, objective and trainer a config describes."""
    datamodule, model = build_objective(cfg)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return datamodule, model, trainer


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the model a config describes; returns the final logged metrics."""
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and ckpt_path not in ("last", "best") and not Path(ckpt_path).exists():
        raise LmpreError(
            f"ckpt_path={ckpt_path} does not exist; pass the path of a checkpoint, e.g. RUN_DIR/checkpoints/last.ckpt"
        )
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    rank_zero_info(
        f"{type(model).__name__}: {model.model.num_parameters():,} parameters without embeddings, "
        f"{model.model.num_parameters(exclude_embeddings=False):,} in all"
    )
    if cfg.validate_first and not ckpt_path:  # the untrained model's val/loss: the curve's true start
        trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="pkg://lmpre.conf", config_name="train")
def main(cfg: DictConfig) -> Any:
    log.debug("config:\n%s", OmegaConf.to_yaml(cfg))
    try:
        metrics = train(cfg)
    except (LmpreError, InstantiationException) as err:  # a config or input to fix, not a bug: no traceback
        raise SystemExit(f"error: {err}") from None
    # A sweeper (e.g. Optuna) optimises the value returned here.
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
