"""Checkpoints are written atomically, record the run they belong to, load on their own or fail clearly."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from launch import (
    TinyCorpus,
    elsewhere,  # noqa: F401  (a fixture)
    forkserver,
    launch,
    save_with_lmpre_io,
    tiny_corpus,
)
from test_train import compose_train

from lmpre import checkpoint
from lmpre.errors import CheckpointError
from lmpre.objectives import CausalLM, MaskedLM, PretrainingObjective
from lmpre.train import train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(corpus: TinyCorpus, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished 6-step run of each objective (its run directory)."""
    root = tmp_path_factory.mktemp("runs")
    for model in ("gpt", "bert"):
        overrides = ["trainer.max_steps=6", "trainer.val_check_interval=3", f"paths.output_dir={root / model}"]
        train(compose_train(*corpus.run(model, *overrides)))
    return {model: root / model for model in ("gpt", "bert")}


def test_a_save_never_leaves_a_partial_file_under_the_checkpoints_name(
    corpus: TinyCorpus,
    elsewhere: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Found: with the run directory on another filesystem than the temporary directory, a kill during a save left
    a truncated last.ckpt (Lightning's save wrote a temporary file there and copied it over). Here a process saving
    a 100 MB checkpoint through lmpre's Trainer is SIGKILLed the moment the checkpoint's own name is opened for
    writing: whenever that happens, or if it never does, the name holds a whole checkpoint that loads."""
    target = elsewhere / "checkpoints" / "last.ckpt"
    target.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3), "global_step": 0}, target)  # the previous checkpoint
    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    killed = []

    def kill_when_target_opens(pid: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                fds = [str(fd.readlink()) for fd in Path(f"/proc/{pid}/fd").iterdir()]
            except OSError:  # gone, or an fd closed while listing
                if not Path(f"/proc/{pid}").exists():
                    return
                continue
            if str(target) in fds:
                os.kill(pid, signal.SIGKILL)
                killed.append(True)
                return

    overrides = corpus.run("gpt", f"paths.output_dir={elsewhere}")
    child = forkserver().Process(target=save_with_lmpre_io, args=(overrides, str(target), 25_000_000, str(tmp)))
    child.start()
    kill_when_target_opens(child.pid)
    child.join(120)
    loaded = torch.load(target, weights_only=True)  # raises on a truncated file
    assert loaded["weights"].numel() in (3, 25_000_000)
    assert not killed, "the checkpoint's own name was opened for writing: a kill there would truncate it"
    assert child.exitcode == 0
    assert not list(tmp.iterdir())


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "directory"])
def test_an_unusable_checkpoint_is_a_clear_error_before_any_work(
    damage: str, runs: dict[str, Path], corpus: TinyCorpus, tmp_path: Path
) -> None:
    """Found as tracebacks: an empty, truncated or directory checkpoint. Each is one CheckpointError naming
    ckpt_path, raised before the data is prepared."""
    path = tmp_path / "given.ckpt"
    if damage == "empty":
        path.touch()
    elif damage == "truncated":
        path.write_bytes((runs["gpt"] / "checkpoints" / "last.ckpt").read_bytes()[:100_000])
    elif damage == "directory":
        path.mkdir()
    fresh_data = tmp_path / "never-prepared"
    cfg = compose_train(*corpus.run("gpt", f"ckpt_path={path}", f"paths.output_dir={tmp_path / 'run'}"))
    cfg.data.output_dir = str(fresh_data)
    with pytest.raises(CheckpointError, match=rf"^ckpt_path={path}") as error:
        train(cfg)
    assert "\n" not in str(error.value)
    assert {"missing": "does not exist", "empty": "empty", "truncated": "truncated", "directory": "directory"}[
        damage
    ] in str(error.value)
    assert not fresh_data.exists(), "the data was prepared before the checkpoint was checked"


def test_resume_picks_the_newest_checkpoint_that_loads(runs: dict[str, Path], tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    shutil.copytree(runs["gpt"] / "checkpoints", directory)
    steps = {path.name: checkpoint.inspect(path).step for path in directory.glob("*.ckpt")}
    assert checkpoint.latest(directory).path.name == "last.ckpt"
    (directory / "last.ckpt").write_bytes((directory / "last.ckpt").read_bytes()[:5000])  # left by an old lmpre
    older = checkpoint.latest(directory)
    assert older is not None
    assert older.path.name != "last.ckpt"
    assert older.step == steps[older.path.name]


def test_a_checkpoint_records_its_run_and_rebuilds_on_its_own(runs: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint records objective, backbone, window, tokenizer and data; copied away with the tokenizer and
    manifest saved beside it, it rebuilds the trained objective alone (the right class, the same weights)."""
    source = runs["gpt"] / "checkpoints"
    record = checkpoint.inspect(source / "last.ckpt").record
    assert record is not None
    assert record["objective"] == "lmpre.objectives.causal_lm.CausalLM"
    assert record["backbone"]["d_model"] == 32
    assert (record["seq_len"], record["window"]) == (32, 33)
    assert len(record["tokenizer_sha256"]) == 64
    assert record["data_key"]

    alone = tmp_path / "copied"
    alone.mkdir()
    for name in ("last.ckpt", "tokenizer.json", "manifest.json"):
        shutil.copy(source / name, alone / name)
    model = checkpoint.load_objective(alone / "last.ckpt")
    assert type(model) is CausalLM
    state = torch.load(alone / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(value, state[key]) for key, value in model.state_dict().items())
    assert type(PretrainingObjective.load_from_checkpoint(alone / "last.ckpt")) is CausalLM
    tokenizer = checkpoint.load_tokenizer(alone / "last.ckpt")
    prompt = torch.tensor([tokenizer.encode("ROMEO:").ids])
    assert tokenizer.decode(model.model.generate(prompt, 5, temperature=0.0)[0].tolist()).startswith("ROMEO:")


def test_loading_a_checkpoint_as_another_objective_is_a_clear_error(runs: dict[str, Path]) -> None:
    bert = runs["bert"] / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match="holds a MaskedLM checkpoint, not a CausalLM"):
        CausalLM.load_from_checkpoint(bert)
    assert type(MaskedLM.load_from_checkpoint(bert)) is MaskedLM


@pytest.mark.parametrize(
    ("override", "difference"),
    [
        ("model=gpt", "model: MaskedLM in the checkpoint, CausalLM now"),
        ("data.seq_len=16", "data.seq_len: 32 in the checkpoint, 16 now"),
        ("model.backbone.d_model=64", "model.backbone.d_model: 32 in the checkpoint, 64 now"),
    ],
)
def test_resuming_with_another_model_or_window_is_refused_before_any_work(
    override: str, difference: str, runs: dict[str, Path], corpus: TinyCorpus, tmp_path: Path
) -> None:
    """Found: a BERT checkpoint resumed under model=gpt ran to the end with exit 0 (or failed deep in litdata,
    depending on seq_len). Now: one error naming every difference, before the data is prepared."""
    run_dir = tmp_path / "bert"
    shutil.copytree(runs["bert"], run_dir)
    overrides = corpus.run("bert", "trainer.max_steps=12", f"paths.output_dir={run_dir}")
    if override == "model=gpt":
        overrides = corpus.run("gpt", "trainer.max_steps=12", f"paths.output_dir={run_dir}")
    cfg = compose_train(*overrides, *([] if override == "model=gpt" else [override]))
    cfg.data.output_dir = str(tmp_path / "never-prepared")
    with pytest.raises(CheckpointError, match="belongs to another run") as error:
        train(cfg)
    assert difference in str(error.value)
    assert not (tmp_path / "never-prepared").exists()


def test_resuming_with_another_tokenizer_is_refused(runs: dict[str, Path], corpus: TinyCorpus, tmp_path: Path) -> None:
    run_dir = tmp_path / "gpt"
    shutil.copytree(runs["gpt"], run_dir)
    cfg = compose_train(
        *corpus.run("gpt", "trainer.max_steps=12", f"paths.output_dir={run_dir}"),
        "data.tokenizer.kind=bpe",
        "data.tokenizer.vocab_size=400",
        f"data.output_dir={tmp_path / 'bpe'}",
    )
    with pytest.raises(CheckpointError, match=r"tokenizer: sha256 .* in the checkpoint, .* now"):
        train(cfg)
    assert checkpoint.inspect(run_dir / "checkpoints" / "last.ckpt").step == 6  # untouched


def test_a_sharded_checkpoint_is_refused_without_fsdp_and_consolidates(
    runs: dict[str, Path], corpus: TinyCorpus, tmp_path: Path
) -> None:
    """An FSDP checkpoint is a directory (torch.distributed.checkpoint shards and Lightning's meta.pt). Without
    FSDP it is a clear error that says how to make one file of it; `python -m lmpre.checkpoint consolidate` does."""
    full = torch.load(runs["gpt"] / "checkpoints" / "last.ckpt", weights_only=False)
    sharded = tmp_path / "sharded.ckpt"
    dcp.save({"state_dict": full.pop("state_dict")}, checkpoint_id=sharded)
    full.pop("optimizer_states")
    torch.save(full, sharded / checkpoint.SHARDED_METADATA)

    cfg = compose_train(*corpus.run("gpt", f"ckpt_path={sharded}", f"paths.output_dir={tmp_path / 'run'}"))
    with pytest.raises(CheckpointError, match=r"sharded \(FSDP\) checkpoint directory: resume it with trainer=fsdp"):
        train(cfg)
    with pytest.raises(CheckpointError, match="consolidate"):
        checkpoint.load_objective(sharded)

    checkpoint.main(["consolidate", str(sharded), str(tmp_path / "full.ckpt")])
    model = checkpoint.load_objective(tmp_path / "full.ckpt")
    original = checkpoint.load_objective(runs["gpt"] / "checkpoints" / "last.ckpt")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.state_dict().values(), strict=True)
    )
    resume = compose_train(
        *corpus.run("gpt", f"ckpt_path={tmp_path / 'full.ckpt'}", f"paths.output_dir={tmp_path / 'r'}")
    )
    with pytest.raises(CheckpointError, match="holds weights only"):
        train(resume)


def test_a_cli_error_is_one_line(corpus: TinyCorpus, tmp_path: Path) -> None:
    result = launch(*corpus.run("gpt", f"ckpt_path={tmp_path / 'missing.ckpt'}"), run_dir=tmp_path / "run")
    assert result.exitcode == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: ckpt_path={tmp_path / 'missing.ckpt'} does not exist: pass the path of a checkpoint, "
        "e.g. RUN/checkpoints/last.ckpt"
    ]
    assert "Traceback" not in result.output
    assert errors[0] in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_a_real_fsdp_checkpoint_consolidates_into_a_loadable_file(corpus: TinyCorpus, tmp_path: Path) -> None:
    """FSDP2 on two CPU processes saves a sharded directory; `python -m lmpre.checkpoint consolidate` makes one file
    of it that rebuilds the objective without FSDP."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    fsdp = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    args = [*corpus.run("gpt", "trainer.max_steps=6", "trainer.val_check_interval=3"), *fsdp]
    result = subprocess.run(
        [sys.executable, "-m", "lmpre.train", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sharded = run_dir / "checkpoints" / "last.ckpt"
    assert checkpoint.is_sharded(sharded)
    assert checkpoint.latest(run_dir / "checkpoints", sharded_ok=True).step == 6
    with pytest.raises(CheckpointError, match="consolidate"):
        checkpoint.inspect(sharded)
    merged = subprocess.run(
        [sys.executable, "-m", "lmpre.checkpoint", "consolidate", str(sharded), str(tmp_path / "full.ckpt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert merged.returncode == 0, merged.stderr[-3000:]
    model = checkpoint.load_objective(tmp_path / "full.ckpt")
    assert type(model) is CausalLM
    fresh = CausalLM(model.config, special_tokens=model.special_tokens)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    assert not all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True)
    )
