"""Every config group composes and builds its class; published presets have their published sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from test_train import compose_train

from lmpre.objectives import CausalLM, MaskedLM, PretrainingObjective, SpanCorruption

SPECIAL = {"eot": 0, "pad": 1, "mask": 2, "sentinels": list(range(3, 103))}


def build_model(preset: str, vocab_size: int) -> PretrainingObjective:
    cfg = compose_train(f"model={preset}")
    return instantiate(
        cfg.model, backbone={"vocab_size": vocab_size}, optim=cfg.optim, special_tokens=SPECIAL, _convert_="all"
    )


@pytest.mark.parametrize(
    ("preset", "cls"), [("gpt", CausalLM), ("bert", MaskedLM), ("bert-rope", MaskedLM), ("t5", SpanCorruption)]
)
def test_cpu_presets_build_their_objective(preset: str, cls: type) -> None:
    model = build_model(preset, vocab_size=8192)
    assert type(model) is cls
    assert 1e6 < model.model.num_parameters() < 2e7  # minutes on a laptop CPU, yet a real model


@pytest.mark.parametrize(
    ("preset", "vocab_size", "params"),
    [
        ("gpt2-124m", 50257, 124_439_808),  # GPT-2 small, as published
        ("bert-base", 30522, 108.9e6),  # BERT-base without token-type embeddings and pooler
        ("t5-base", 32128, 222.9e6),  # T5-base with tied embeddings
    ],
)
def test_published_presets_have_published_sizes(preset: str, vocab_size: int, params: float) -> None:
    model = build_model(preset, vocab_size)
    assert model.model.num_parameters(exclude_embeddings=False) == pytest.approx(params, rel=1e-3)


def test_cpu_trainer_logger_callbacks_and_optim_build(tmp_path: Path) -> None:
    cfg = compose_train(f"paths.output_dir={tmp_path}")
    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger.tensorboard))
    assert trainer.precision == "32-true"
    assert Path(trainer.logger.log_dir) == tmp_path / "tensorboard"
    callbacks = [instantiate(c) for c in cfg.callbacks.values()]
    assert {type(c).__name__ for c in callbacks} >= {"ModelCheckpoint", "LearningRateMonitor", "ThroughputMonitor"}
    optim = instantiate(cfg.optim)
    assert optim.lr_factor(0, 1000) < optim.lr_factor(optim.warmup_steps, 1000) == 1.0
    assert optim.lr_factor(1000, 1000) == pytest.approx(optim.min_lr_ratio)


@pytest.mark.parametrize(
    ("preset", "precision", "strategy"),
    [("gpu", "bf16-mixed", None), ("ddp", "bf16-mixed", "ddp"), ("fsdp", "bf16-mixed", "FullyShardedStrategy")],
)
def test_accelerator_presets_compose(preset: str, precision: str, strategy: str | None) -> None:
    trainer = compose_train(f"trainer={preset}").trainer
    assert trainer.accelerator == "gpu"
    assert trainer.precision == precision
    if strategy is None:
        assert "strategy" not in trainer
    else:
        assert strategy in str(trainer.strategy)


@pytest.mark.parametrize("experiment", ["shakespeare_reference", "shakespeare_speedrun"])
def test_shakespeare_experiments_compose_into_runs_of_the_benchmark(experiment: str) -> None:
    cfg = compose_train(f"experiment={experiment}")
    assert (cfg.data.seq_len, cfg.model.backbone.d_model, cfg.model.backbone.n_layer) == (64, 128, 4)
    assert cfg.data.tokenizer.kind == "bytes"
    model = instantiate(
        cfg.model, backbone={"vocab_size": 359}, optim=cfg.optim, special_tokens=SPECIAL, _convert_="all"
    )
    optimizer, scheduler = model.optim.build(model.model, int(cfg.trainer.max_steps))
    muon = any(group["use_muon"] for group in optimizer.param_groups) if "use_muon" in optimizer.defaults else False
    assert muon == (experiment == "shakespeare_speedrun")
    assert scheduler.total_steps == cfg.trainer.max_steps
