"""`python -m lmpre.train` in child processes that can be killed, on a tiny corpus that cycles in a few steps.

Children are forked from a server that imported lmpre, torch and Lightning once (multiprocessing's forkserver):
each launch is a fresh process, as from the shell, without paying seconds of imports. `KillAt` (a callback added
with `+callbacks.kill=...`) signals its own process at an exact point; `fsize_limit` makes the kernel kill a launch
(SIGXFSZ) at an exact byte of the first file it writes beyond that size: in the middle of a checkpoint.
"""

from __future__ import annotations

import lzma
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmpre.data.corpora import bundled

# One layer, 32 wide, windows of 32 tokens, 4 per batch: a step takes milliseconds.
TINY_MODEL = [
    "model.backbone.d_model=32",
    "model.backbone.n_layer=1",
    "model.backbone.n_head=2",
    "data.seq_len=32",
    "data.batch_size=4",
    "optim.warmup_steps=100",  # the learning rate keeps changing: a step replayed with the wrong schedule shows
    "trainer.limit_val_batches=2",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=null",
    "callbacks.progress_log.every_n_steps=5",
]
OBJECTIVES = {"gpt": ["model.sample_tokens=4"], "bert": [], "t5": ["model.backbone.n_decoder_layer=1"]}


@dataclass(frozen=True)
class TinyCorpus:
    """1.8 kB of Tiny Shakespeare, one token per byte: about 9 training batches per epoch (fewer for T5, whose
    windows are longer), so a run of 40 steps crosses 4 epoch boundaries or more."""

    text: Path
    root: Path

    @property
    def overrides(self) -> list[str]:
        return [
            "data=shakespeare",
            f"data.source={self.text}",
            "data.sources.corpus.val_fraction=0.3",
            f"data.cache_dir={self.root / 'cache'}",
            f"data.output_dir={self.root / 'prepared'}",
            "data.workers=1",
        ]

    def run(self, model: str, *overrides: str) -> list[str]:
        """Every override for a tiny run of `model` on this corpus."""
        return [f"model={model}", *OBJECTIVES[model], *self.overrides, *TINY_MODEL, *overrides]


_corpus: TinyCorpus | None = None


def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    """The session's tiny corpus, prepared once (its text written here; preparing it is lmpre's own job)."""
    global _corpus
    if _corpus is None:
        from hydra.utils import instantiate
        from test_train import compose_train

        root = tmp_path_factory.mktemp("tiny")
        text = root / "tiny.txt"
        with lzma.open(bundled("tinyshakespeare") / "input.txt.xz", "rt") as file:
            text.write_text(file.read(1800))
        corpus = TinyCorpus(text, root)
        datamodule = instantiate(compose_train(*corpus.run("gpt")).data)
        datamodule.prepare_data()
        _corpus = corpus
    return _corpus


# ---------------------------------------------------------------------------------------------------- launching


@dataclass
class Launch:
    exitcode: int
    output: str

    @property
    def signal(self) -> int | None:
        return -self.exitcode if self.exitcode < 0 else None


_context: Any = None


def forkserver() -> Any:
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["lmpre.train", "launch"])
    return _context


def save_with_lmpre_io(overrides: list[str], path: str, numel: int, tmpdir: str) -> None:
    """In a child: save a checkpoint of `numel` floats through the checkpoint I/O lmpre gives its Trainer."""
    from test_train import compose_train

    from lmpre.train import build

    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = None

    _, _, trainer = build(compose_train(*overrides))
    trainer.strategy.checkpoint_io.save_checkpoint({"weights": torch.ones(numel), "global_step": 1}, path)


def launch(
    *overrides: str,
    run_dir: Path,
    env: dict[str, str] | None = None,
    fsize_limit: int | None = None,
    timeout: float = 120,
    start: Any = None,
) -> Launch:
    """Run `python -m lmpre.train OVERRIDES hydra.run.dir=RUN_DIR` in a fresh child; `start(pid)` runs in the
    parent once it is started (to watch or signal it)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir.parent / f"{run_dir.name}.launch.log"
    argv = [*overrides, f"hydra.run.dir={run_dir}"]
    child = forkserver().Process(target=_main, args=(argv, str(output), env or {}, fsize_limit))
    child.start()
    if start is not None:
        start(child.pid)
    child.join(timeout)
    if child.exitcode is None:
        child.kill()
        child.join()
        raise TimeoutError(f"lmpre.train {' '.join(argv)} ran over {timeout}s:\n{output.read_text()[-3000:]}")
    return Launch(child.exitcode, output.read_text())


def _main(argv: list[str], output: str, env: dict[str, str], fsize_limit: int | None) -> None:
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    tempfile.tempdir = None  # TMPDIR may have changed
    if fsize_limit is not None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    torch.set_num_threads(1)  # the same arithmetic in every launch, however busy the machine
    sys.argv = ["lmpre.train", *argv]
    from lmpre.train import main

    main()


class KillAt(L.Callback):
    """Send `signum` to this process `times` times at `step` of `phase`: train (before the step runs), validation
    (after its first batch) or validate (the step-0 validation before training); only on `rank` when given."""

    def __init__(
        self, step: int, phase: str = "train", signum: int = signal.SIGKILL, times: int = 1, rank: int | None = None
    ) -> None:
        self.step, self.phase, self.signum, self.times, self.rank = step, phase, signum, times, rank
        self.done = False

    def _fire(self, trainer: L.Trainer, phase: str) -> None:
        if self.rank is not None and trainer.global_rank != self.rank:
            return
        if not self.done and phase == self.phase and trainer.global_step == self.step:
            self.done = True
            for _ in range(self.times):
                os.kill(os.getpid(), self.signum)

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        self._fire(trainer, "train")

    def on_validation_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.sanity_checking:
            self._fire(trainer, "validate" if trainer.state.fn == "validate" else "validation")


def kill_at(
    step: int, phase: str = "train", signum: int = signal.SIGKILL, times: int = 1, rank: int | None = None
) -> str:
    spec = f"_target_: launch.KillAt, step: {step}, phase: {phase}, signum: {signum}, times: {times}"
    if rank is not None:
        spec += f", rank: {rank}"
    return f"+callbacks.kill={{{spec}}}"


# ---------------------------------------------------------------------------------------------------- inspecting


def scalars(run_dir: Path, tag: str) -> dict[int, float]:
    """`tag` per step as TensorBoard shows it (what a later launch logged again replaces the earlier)."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def assert_checkpoints_load(run_dir: Path) -> list[Path]:
    """Every *.ckpt of the run loads in full; returns them."""
    paths = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    for path in paths:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        assert "state_dict" in checkpoint, path
        assert "lmpre" in checkpoint, path
    return paths


@pytest.fixture
def elsewhere(tmp_path: Path) -> Iterator[Path]:
    """A directory on another filesystem than the temporary directory's, where there is one (/dev/shm)."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        path = Path(tempfile.mkdtemp(prefix="lmpre-test-", dir=shm))
        yield path
        shutil.rmtree(path, ignore_errors=True)
    else:
        yield tmp_path / "elsewhere"
