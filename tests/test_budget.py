"""A run ends at its step, token or time budget, whichever comes first, with the LR schedule spanning that budget."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from launch import TinyCorpus, launch, tiny_corpus
from test_train import compose_train, scalars

from lmpre.budget import Budget, from_config, parse_time
from lmpre.errors import ConfigError
from lmpre.train import check_config

LR, MIN_LR_RATIO = 1e-3, 0.1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


def test_time_budgets_are_seconds_or_a_clock() -> None:
    assert parse_time(90) == timedelta(seconds=90)
    assert parse_time("00:12:00:00") == timedelta(hours=12)
    assert parse_time("1:30:00") == timedelta(hours=1, minutes=30)
    assert parse_time(None) is None
    for bad in ("12h", 0, -5, "1:2"):
        with pytest.raises(ConfigError, match=r"budget\.max_time"):
            parse_time(bad)


def test_tokens_count_every_device_and_micro_batch() -> None:
    cfg = compose_train(
        "data.batch_size=4", "data.seq_len=32", "trainer.accumulate_grad_batches=3", "budget.max_tokens=100000"
    )
    budget = from_config(cfg, world_size=2)
    assert budget.tokens_per_step == 4 * 32 * 3 * 2
    assert budget.steps == 100000 // 768 == 130  # fewer than trainer.max_steps=1000: the tokens end the run
    assert "130 steps (99,840 tokens: budget.max_tokens=100,000)" in budget.describe()
    cfg.budget.max_tokens = 10**9
    assert from_config(cfg, world_size=2).steps == 1000  # now trainer.max_steps comes first
    assert "1,000 steps (768,000 tokens: trainer.max_steps)" in from_config(cfg, world_size=2).describe()
    unlimited = Budget(max_steps=None, max_tokens=None, max_time=timedelta(minutes=5), tokens_per_step=8)
    assert unlimited.steps is None
    assert "0:05:00 of training (budget.max_time)" in unlimited.describe()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["budget.max_tokens=100"], r"budget\.max_tokens=100 is less than one optimizer step \(8,192 tokens"),
        (["budget.max_tokens=lots"], r"budget\.max_tokens=lots must be an integer"),
        (["budget.max_time=soon"], r"budget\.max_time=soon must be seconds or DD:HH:MM:SS"),
        (["+trainer.max_time=00:01:00:00"], r"set budget\.max_time instead"),
        (["trainer.accumulate_grad_batches=0"], r"trainer\.accumulate_grad_batches=0 must be at least 1"),
        (["model.compile=fast"], r"model\.compile=fast must be true, false or a torch\.compile backend \(.*inductor"),
    ],
)
def test_bad_budget_and_parallelism_settings_are_one_clear_error(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_config(compose_train("data.batch_size=8", "data.seq_len=256", "trainer.devices=4", *overrides))


def lr_by_step(run_dir: Path) -> dict[int, float]:
    return {e.step: e.value for e in scalars(run_dir).Scalars("lr-AdamW/pg1")}


def test_a_token_budget_ends_the_run_and_the_schedule_at_its_step(corpus: TinyCorpus, tmp_path: Path) -> None:
    # 4 windows of 32 tokens, 2 micro-batches per step: 256 tokens a step, so 3,000 tokens are 11 steps.
    run = corpus.run(
        "gpt",
        "budget.max_tokens=3000",
        "trainer.accumulate_grad_batches=2",
        "trainer.val_check_interval=100",
        "optim.warmup_steps=2",
        f"optim.min_lr_ratio={MIN_LR_RATIO}",
    )
    result = launch(*run, run_dir=tmp_path)
    assert result.exitcode == 0, result.output[-3000:]
    log = (tmp_path / "train.log").read_text()
    assert (
        "budget: 11 steps (2,816 tokens: budget.max_tokens=3,000); 256 tokens per step; the LR schedule ends there"
        in log
    )
    lr = lr_by_step(tmp_path)
    assert max(lr) == 10  # steps 0..10
    progress = (10 - 2) / (11 - 2)  # the cosine after the warm-up, over the 11 steps of the budget
    assert lr[10] == pytest.approx(LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))))
    assert lr[1] == pytest.approx(LR)  # the end of the warm-up


def test_a_time_budget_ends_the_run_and_fits_the_schedule_to_it(corpus: TinyCorpus, tmp_path: Path) -> None:
    """The decay ends about when the time does: the schedule's length is the measured speed's, not a step count."""
    run = corpus.run(
        "gpt",
        "budget.max_time=6",
        "trainer.max_steps=-1",
        "trainer.val_check_interval=100000",
        "optim.warmup_steps=2",
        f"optim.min_lr_ratio={MIN_LR_RATIO}",
    )
    result = launch(*run, run_dir=tmp_path)
    assert result.exitcode == 0, result.output[-3000:]
    assert "Time limit reached" in result.output
    assert "so the LR schedule ends at step" in (tmp_path / "train.log").read_text()
    lr = lr_by_step(tmp_path)
    last = max(lr)
    assert last > 20  # enough steps were timed to fit the schedule
    assert lr[last // 4] > 0.7 * LR  # early: near the peak
    assert lr[last] < LR * (MIN_LR_RATIO + 0.25)  # at the deadline: near the end of the decay
