"""Runs killed at any point resume exactly (across epoch boundaries too), and a run directory holds one run."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from hydra.utils import instantiate
from launch import (
    TinyCorpus,
    assert_checkpoints_load,
    elsewhere,  # noqa: F401  (a fixture)
    kill_at,
    launch,
    scalars,
    tiny_corpus,
)
from test_train import compose_train

from lmpre.checkpoint import inspect

STEPS = 40  # 4+ epochs of the tiny corpus for every objective
EVERY = 5  # val_check_interval: a checkpoint every 5 steps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


def test_the_train_loader_resumes_exactly_across_epoch_boundaries(corpus: TinyCorpus) -> None:
    """The datamodule's loader, driven as Lightning drives it (len(loader) batches per epoch, then a new iter()),
    yields after a restore exactly what it yields uninterrupted, epoch after epoch."""

    def loader():
        datamodule = instantiate(compose_train(*corpus.run("gpt")).data)
        datamodule.window = 33
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    def batches(dl, epochs: int, skip: int = 0, save_after: int | None = None):
        seen, state = [], None
        for epoch in range(epochs):
            iterator = iter(dl)
            for _ in range(len(dl) - (skip if epoch == 0 else 0)):
                batch = next(iterator, None)  # None: the loader ended its epoch early
                seen.append(None if batch is None else batch["tokens"][:, 0].tolist())
                if len(seen) == save_after:
                    state = dl.state_dict()
        return seen, state

    per_epoch = len(loader())
    for stop in (per_epoch // 2, per_epoch + 3):  # mid epoch 0, mid epoch 1
        straight, state = batches(loader(), 4, save_after=stop)
        resumed = loader()
        resumed.load_state_dict(state)
        after, _ = batches(resumed, 4 - stop // per_epoch, skip=stop % per_epoch)
        assert after == straight[stop:], f"restored after batch {stop} of {per_epoch} per epoch"


@pytest.mark.parametrize("model", ["gpt", "bert", "t5"])
def test_killed_anywhere_a_run_resumes_exactly(model: str, corpus: TinyCorpus, elsewhere: Path, tmp_path: Path) -> None:  # noqa: F811
    """SIGKILL during a training step, during a validation and (the kernel's SIGXFSZ at a file-size limit) in the
    middle of writing a checkpoint, with the run directory on another filesystem than the temporary directory:
    after each kill every checkpoint present loads and nothing is left in the temporary directory; relaunched,
    the run continues where its last checkpoint was saved and ends with every step's loss equal, to the last
    bit, to an uninterrupted run's, across 4+ epoch boundaries."""
    run = corpus.run(model, f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={EVERY}")
    straight = launch(*run, run_dir=tmp_path / "straight")
    assert straight.exitcode == 0, straight.output[-3000:]

    run_dir, tmp = elsewhere / "run", tmp_path / "tmpdir"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp)}
    kills = [
        ([kill_at(13, "train")], None, -signal.SIGKILL, 10),  # in step 13: resumes from the checkpoint of step 10
        ([kill_at(20, "validation")], None, -signal.SIGKILL, 15),  # inside the validation of step 20
        ([], 200_000, -signal.SIGXFSZ, 15),  # writing the checkpoint of step 20 (~700 kB) at its 200,000th byte
    ]
    for extra, fsize_limit, died_by, last_step in kills:
        killed = launch(*run, *extra, run_dir=run_dir, env=env, fsize_limit=fsize_limit)
        assert killed.exitcode == died_by, killed.output[-3000:]
        assert assert_checkpoints_load(run_dir)
        assert scalars(run_dir, "val/loss"), "nothing logged before the kill"
        assert inspect(run_dir / "checkpoints" / "last.ckpt").step == last_step
        assert not list(tmp.iterdir()), "left in the temporary directory"
    finished = launch(*run, run_dir=run_dir, env=env)
    assert finished.exitcode == 0, finished.output[-3000:]
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "a killed save's temporary file stayed"
    assert_checkpoints_load(run_dir)

    expected, got = scalars(tmp_path / "straight", "train/loss"), scalars(run_dir, "train/loss")
    assert sorted(got) == sorted(expected) == list(range(STEPS))
    assert got == expected  # every step, bit for bit
    assert scalars(run_dir, "val/loss") == scalars(tmp_path / "straight", "val/loss")


def test_a_second_launch_into_a_run_directory_continues_it_or_is_refused(corpus: TinyCorpus, tmp_path: Path) -> None:
    """Found: a second run into a run directory wrote last-v1.ckpt beside the first run's last.ckpt, overwrote its
    .hydra/overrides.yaml and interleaved both runs' curves in one TensorBoard run. Now with resume=auto (the
    default) it continues the run; with resume=never it is refused and the directory is left as it was."""
    run_dir = tmp_path / "run"
    first = launch(*corpus.run("gpt", "trainer.max_steps=10", f"trainer.val_check_interval={EVERY}"), run_dir=run_dir)
    assert first.exitcode == 0, first.output[-3000:]
    longer = corpus.run("gpt", "trainer.max_steps=16", f"trainer.val_check_interval={EVERY}")
    second = launch(*longer, run_dir=run_dir)
    assert second.exitcode == 0, second.output[-3000:]
    assert "resuming from" in second.output

    names = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert len(names) == 2, names  # last.ckpt and the best: no last-v1.ckpt
    assert inspect(run_dir / "checkpoints" / "last.ckpt").step == 16
    assert list(scalars(run_dir, "train/loss")) == list(range(16))  # each step once, in order
    launches = run_dir / ".hydra" / "launches"
    assert "trainer.max_steps=10" in (launches / "1" / "overrides.yaml").read_text()
    assert "trainer.max_steps=16" in (launches / "2" / "overrides.yaml").read_text()

    refused = launch(*corpus.run("gpt", "trainer.max_steps=30", "resume=never"), run_dir=run_dir)
    assert refused.exitcode == 1
    assert [line for line in refused.output.splitlines() if line.startswith("error:")] == [
        f"error: {run_dir} already holds a run (last.ckpt, {names[1]}): resume=auto continues it; for a new run "
        "choose another directory (hydra.run.dir=DIR)"
    ]
    assert "trainer.max_steps=16" in (run_dir / ".hydra" / "overrides.yaml").read_text()  # put back
    assert inspect(run_dir / "checkpoints" / "last.ckpt").step == 16

    foreign = launch(*corpus.run("gpt", f"ckpt_path={tmp_path / 'elsewhere.ckpt'}"), run_dir=run_dir)
    assert foreign.exitcode == 1
    (tmp_path / "other.ckpt").write_bytes((run_dir / "checkpoints" / "last.ckpt").read_bytes())
    mixing = launch(*corpus.run("gpt", "trainer.max_steps=30", f"ckpt_path={tmp_path / 'other.ckpt'}"), run_dir=run_dir)
    assert mixing.exitcode == 1
    assert "would mix two runs" in mixing.output


def test_ckpt_path_last_without_a_checkpoint_is_an_error(corpus: TinyCorpus, tmp_path: Path) -> None:
    """Found: ckpt_path=last in a run directory without checkpoints silently started a new run."""
    from lmpre.errors import CheckpointError
    from lmpre.train import train

    cfg = compose_train(*corpus.run("gpt", "ckpt_path=last", f"paths.output_dir={tmp_path}"))
    with pytest.raises(CheckpointError, match=r"^ckpt_path=last, but .* holds no checkpoint that loads"):
        train(cfg)
