"""Every interruption exits non-zero with one line saying what was saved; every mistake is one `error:` line,
raised before any expensive work."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from launch import TinyCorpus, kill_at, launch, scalars, tiny_corpus
from test_train import compose_train

from lmpre import checkpoint
from lmpre.errors import ConfigError
from lmpre.train import train

RUN = ["trainer.max_steps=20", "trainer.val_check_interval=5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def straight(corpus: TinyCorpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run the interrupted ones are compared with, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = launch(*corpus.run("gpt", *RUN), run_dir=run_dir)
    assert result.exitcode == 0, result.output[-3000:]
    return run_dir


def messages(output: str, start: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(start)]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_in_training_saves_the_step_then_exits(
    signum: int, code: int, corpus: TinyCorpus, straight: Path, tmp_path: Path
) -> None:
    """Found: SIGTERM during training exited 0 (and Ctrl-C 1), losing the steps since the last checkpoint. Now
    the step in progress completes, is saved, and the run exits 143/130 with one line; relaunched it continues
    exactly."""
    run_dir = tmp_path / "run"
    result = launch(*corpus.run("gpt", *RUN), kill_at(7, "train", signum), run_dir=run_dir)
    assert result.exitcode == code, result.output[-3000:]
    name = signal.Signals(signum).name
    last = run_dir / "checkpoints" / "last.ckpt"
    assert messages(result.output, "interrupted") == [
        f"interrupted by {name} at step 8: saved {last}; run the same command with hydra.run.dir={run_dir} "
        "to continue from it"
    ]
    assert "Traceback" not in result.output
    assert checkpoint.inspect(last).step == 8  # not 5, the last validation's
    if signum == signal.SIGTERM:
        resumed = launch(*corpus.run("gpt", *RUN), run_dir=run_dir)
        assert resumed.exitcode == 0, resumed.output[-3000:]
        assert scalars(run_dir, "train/loss") == scalars(straight, "train/loss")
        assert scalars(run_dir, "val/loss") == scalars(straight, "val/loss")


def test_a_signal_during_validation_lets_it_finish(corpus: TinyCorpus, straight: Path, tmp_path: Path) -> None:
    """Lightning alone stops in the middle of a validation (its metrics partial, no checkpoint of them)."""
    run_dir = tmp_path / "run"
    result = launch(*corpus.run("gpt", *RUN), kill_at(10, "validation", signal.SIGINT), run_dir=run_dir)
    assert result.exitcode == 130, result.output[-3000:]
    assert checkpoint.inspect(run_dir / "checkpoints" / "last.ckpt").step == 10
    validated = scalars(run_dir, "val/loss")
    assert validated[9] == scalars(straight, "val/loss")[9]  # over all its batches, as uninterrupted


def test_a_second_signal_exits_at_once(corpus: TinyCorpus, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = launch(*corpus.run("gpt", *RUN), kill_at(7, "train", signal.SIGTERM, times=2), run_dir=run_dir)
    assert result.exitcode == 143, result.output[-3000:]
    assert messages(result.output, "interrupted") == [
        "interrupted by a second SIGTERM: exiting at once, without saving"
    ]
    assert checkpoint.inspect(run_dir / "checkpoints" / "last.ckpt").step == 5  # the validation's, nothing after


def test_a_signal_before_training_exits_with_nothing_to_save(corpus: TinyCorpus, tmp_path: Path) -> None:
    result = launch(*corpus.run("gpt", *RUN), kill_at(0, "validate", signal.SIGTERM), run_dir=tmp_path / "run")
    assert result.exitcode == 143, result.output[-3000:]
    assert messages(result.output, "interrupted") == ["interrupted by SIGTERM before training started: nothing to save"]
    assert "Traceback" not in result.output
    assert not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_ctrl_c_while_train_prepares_data_exits_130(tmp_path: Path) -> None:
    """Found: Ctrl-C during train's own data preparation exited 0 without a word. (Preparing the bundled WikiText-2
    with a trained tokenizer takes many seconds: the signal, sent once the first stage's build has taken its lock,
    lands in it however loaded the machine is.)"""
    fresh = ["data=wiki", "data.tokenizer.vocab_size=512", f"data.output_dir={tmp_path / 'prepared'}"]
    fresh.append(f"data.cache_dir={tmp_path / 'cache'}")
    building = tmp_path / "cache" / "locks"  # made by the first build, before it starts its work
    watcher: list[threading.Thread] = []

    def interrupt_when_building(pid: int) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 120
            while not building.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(pid, signal.SIGINT)

        watcher.append(threading.Thread(target=watch, daemon=True))
        watcher[0].start()

    result = launch(*fresh, run_dir=tmp_path / "run", start=interrupt_when_building)
    assert result.exitcode == 130, result.output[-3000:]
    assert messages(result.output, "interrupted") == ["interrupted by SIGINT before training started: nothing to save"]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be at least 1"),
        ("data.seq_len=0", "data.seq_len=0 must be at least 2"),
        ("data.seq_len=1", "data.seq_len=1 must be at least 2"),
        ("data.seq_len=-8", "data.seq_len=-8 must be at least 2"),
        ("data.seq_len=2048", "data.seq_len=2048 is longer than model.backbone.max_seq_len=1024"),
        ("optim.lr=-1", "optim.lr=-1 must be a positive learning rate"),
        ("trainer=gpu", "trainer.accelerator=gpu needs a CUDA GPU, and torch finds none"),
        ("trainer=ddp", "trainer.accelerator=cpu"),
        ("model.backbone.n_head=3", "model.backbone: d_model=32 must be divisible by n_head=3"),
    ],
)
def test_a_setting_that_cannot_work_is_an_error_before_data_is_prepared(
    override: str, message: str, corpus: TinyCorpus, tmp_path: Path
) -> None:
    """Found as tracebacks (optim.lr=-1 only after the whole step-0 validation; trainer=gpu after preparing)."""
    if override.startswith("trainer=") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = compose_train(*corpus.run("gpt", f"paths.output_dir={tmp_path / 'run'}"), override)
    cfg.data.output_dir = str(tmp_path / "never-prepared")
    with pytest.raises(ConfigError) as error:
        train(cfg)
    assert message in str(error.value)
    assert not (tmp_path / "never-prepared").exists()
    assert not (tmp_path / "run").exists()


def test_a_config_error_on_the_command_line_is_one_line(corpus: TinyCorpus, tmp_path: Path) -> None:
    result = launch(*corpus.run("gpt"), "data.batch_size=0", run_dir=tmp_path / "run")
    assert result.exitcode == 1
    assert messages(result.output, "error:") == [
        "error: data.batch_size=0 must be at least 1 (windows per batch and process)"
    ]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_sigterm_to_one_of_two_ddp_processes_stops_both_after_the_same_step(corpus: TinyCorpus, tmp_path: Path) -> None:
    """A signal that reaches one process of a DDP run (rank 0 here) stops every process after the same step,
    with one checkpoint of that step."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    args = [*corpus.run("gpt", *RUN), *ddp, kill_at(7, "train", signal.SIGTERM, rank=0), f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    result = subprocess.run(
        [sys.executable, "-m", "lmpre.train", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 143, result.stderr[-3000:]
    assert checkpoint.inspect(run_dir / "checkpoints" / "last.ckpt").step == 8
    resumed = subprocess.run(
        [sys.executable, "-m", "lmpre.train", *args[:-2], f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert checkpoint.inspect(run_dir / "checkpoints" / "last.ckpt").step == 20
