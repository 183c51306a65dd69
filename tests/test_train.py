"""The real `train(cfg)` on real WikiText, composed from the real configs with small overrides."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lmpre.train import train

# A model and batch small enough for seconds per run on 2 CPU cores.
TINY = [
    "model.backbone.d_model=64",
    "model.backbone.n_layer=2",
    "model.backbone.n_head=2",
    "model.sample_tokens=8",
    "data.seq_len=64",
    "data.batch_size=8",
    "optim.warmup_steps=5",
    "trainer.limit_val_batches=4",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress=null",
]


def compose_train(*overrides: str) -> DictConfig:
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.fixture
def tiny_run(tmp_path: Path, wikitext_overrides: list[str]):
    def make(*overrides: str, out: Path = tmp_path) -> DictConfig:
        return compose_train(*wikitext_overrides, *TINY, f"paths.output_dir={out}", *overrides)

    return make


def scalars(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_training_on_wikitext_learns_logs_and_checkpoints(tiny_run, tmp_path: Path) -> None:
    # 70 is no multiple of 40: the run still validates and checkpoints after its last step.
    cfg = tiny_run("trainer.max_steps=70", "trainer.val_check_interval=40", "optim.lr=3e-3")
    metrics = train(cfg)

    events = scalars(tmp_path)
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/loss", "val/ppl", "val/bpb", "val/acc"} <= tags
    assert any(t.startswith("lr-") for t in tags), tags
    assert {"train/device/items_per_sec", "train/device/flops_per_sec"} <= tags, tags  # tokens/s, FLOP/s
    assert any(t.startswith("val/sample") for t in events.Tags()["tensors"])

    val = [e.value for e in events.Scalars("val/loss")]
    assert [e.step for e in events.Scalars("val/loss")] == [0, 39, 69]  # untrained, then every 40 and the last
    # Found: each text sample was logged one step after the scalars of its validation.
    assert [e.step for e in events.Tensors("val/sample/text_summary")] == [0, 39, 69]
    assert val[0] == pytest.approx(math.log(cfg.data.tokenizer.vocab_size), abs=0.5)
    assert val[-1] < val[1] < val[0] - 1.0
    assert metrics["val/ppl"] == pytest.approx(math.exp(metrics["val/loss"]), rel=1e-4)
    assert 0 < metrics["val/bpb"] < metrics["val/loss"] / math.log(2)  # > 1 byte per token

    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in checkpoints, checkpoints
    assert len(checkpoints) == 2, checkpoints  # last and best
    assert {"tokenizer.json", "manifest.json"} <= {p.name for p in (tmp_path / "checkpoints").iterdir()}


def train_losses(run_dir: Path) -> dict[int, float]:
    return {e.step: e.value for e in scalars(run_dir).Scalars("train/loss")}


def test_resume_continues_exactly_where_it_stopped(tiny_run, tmp_path: Path) -> None:
    # All 12 steps inside the warm-up, so stopping at 6 does not change the schedule (its cosine
    # would follow max_steps) but a scheduler that restarted on resume would.
    steps = ["trainer.val_check_interval=6", "trainer.limit_val_batches=1", "optim.warmup_steps=20"]
    train(tiny_run(*steps, "trainer.max_steps=12", out=tmp_path / "straight"))
    train(tiny_run(*steps, "trainer.max_steps=6", out=tmp_path / "resumed"))
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    metrics = train(tiny_run(*steps, "trainer.max_steps=12", f"ckpt_path={last}", out=tmp_path / "resumed"))

    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert max(resumed) == max(straight) == 11  # steps are 0-based: 12 steps in all, none repeated
    for step in range(6, 12):  # the same batches, the same weights: the same losses
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert metrics["val/loss"] == pytest.approx(train(tiny_run(*steps, "trainer.max_steps=12"))["val/loss"], abs=1e-5)


def test_bf16_mixed_precision_trains_close_to_fp32(tiny_run, tmp_path: Path) -> None:
    steps = ["trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.limit_val_batches=1"]
    fp32 = train(tiny_run(*steps, out=tmp_path / "fp32"))
    bf16 = train(tiny_run(*steps, "trainer.precision=bf16-mixed", out=tmp_path / "bf16"))
    assert math.isfinite(bf16["val/loss"])
    assert bf16["val/loss"] == pytest.approx(fp32["val/loss"], abs=0.05)


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # The timeout turns a collective that never returns (a rank-zero-only forward, say) into a failure.
    return subprocess.run(
        [sys.executable, "-m", "lmpre.train", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.fixture
def tiny_cli(wikitext_overrides: list[str], tmp_path: Path):
    """`python -m lmpre.train` on the prepared WikiText with the TINY model; it must succeed."""

    def run(*overrides: str) -> subprocess.CompletedProcess[str]:
        result = run_cli(*wikitext_overrides, *TINY, *overrides, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    return run


def test_multirun_sweep(tiny_cli, tmp_path: Path) -> None:
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]
    tiny_cli("hydra.mode=MULTIRUN", "optim.lr=1e-3,3e-4", *steps, f"hydra.sweep.dir={tmp_path}")  # = -m
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        assert (tmp_path / job / ".hydra" / "overrides.yaml").is_file()


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli(f"data.source={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "nowhere" in result.stderr
    assert "data.source" in result.stderr
    assert "Traceback" not in result.stderr


def test_objective_on_the_wrong_backbone_is_a_clear_error(wikitext_overrides: list[str], tmp_path: Path) -> None:
    result = run_cli("model=bert", "model.backbone.causal=true", *wikitext_overrides, cwd=tmp_path)
    assert result.returncode != 0
    assert "MaskedLM needs a bidirectional encoder-only backbone" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_is_a_clear_error(tiny_run, tmp_path: Path) -> None:
    from lmpre.errors import LmpreError

    with pytest.raises(LmpreError, match="ckpt_path"):
        train(tiny_run(f"ckpt_path={tmp_path / 'missing.ckpt'}"))


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes(strategy: str, tiny_cli, tmp_path: Path) -> None:
    """DDP and FSDP2 (ModelParallelStrategy + fully_shard) with gloo, as they would run on GPUs."""
    cpu = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    steps = ["optim.lr=3e-3", "trainer.max_steps=30", "trainer.val_check_interval=15"]
    tiny_cli(f"trainer={strategy}", *cpu, *steps, f"hydra.run.dir={tmp_path}")
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()
    val = [e.value for e in scalars(tmp_path).Scalars("val/loss")]
    assert len(val) == 3
    assert val[-1] < val[0] - 1.0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["gpt", "bert", "t5"])
def test_cpu_preset_learns_in_300_steps(preset: str, tmp_path: Path) -> None:
    """The issues' acceptance run: the default CPU preset and vocabulary, 300 steps on the bundled WikiText-2."""
    cfg = compose_train(
        f"model={preset}",
        f"data.cache_dir={tmp_path / 'cache'}",
        f"paths.output_dir={tmp_path}",
        "trainer.max_steps=300",
        "callbacks.progress=null",
    )
    train(cfg)
    val = [e.value for e in scalars(tmp_path).Scalars("val/loss")]
    assert val[-1] < val[0] - 1.5, val  # from ~ln(8192) = 9.0 untrained
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ------------------------------------------------------------------------------------------------ what a run shows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    from launch import tiny_corpus

    return tiny_corpus(tmp_path_factory)


def test_train_log_holds_what_the_console_shows(corpus, tmp_path: Path) -> None:
    """Found: train.log held only "reusing prepared data". Now it has the parameter count, the model summary (without
    Lightning's FLOPs column of zeros: training FLOPs are logged after the first step), every validation's metrics,
    the progress lines, and errors."""
    from launch import launch

    run_dir = tmp_path / "run"
    result = launch(*corpus.run("gpt", "trainer.max_steps=12", "trainer.val_check_interval=5"), run_dir=run_dir)
    assert result.exitcode == 0, result.output[-3000:]
    log = (run_dir / "train.log").read_text()
    assert "CausalLM: 45,536 parameters without embeddings, 57,024 in all" in log
    assert "Total params" in log
    assert "FLOPs" not in log.split("Total params")[0]  # the summary table has no FLOPs column
    assert "training FLOPs per batch and process" in log
    validations = [line.split(" - ", 1)[1] for line in log.splitlines() if ": val/acc " in line]
    assert [line.split(":")[0] for line in validations] == ["step 0/12", "step 5/12", "step 10/12", "step 12/12"]
    assert all("val/loss" in line and "val/bpb" in line for line in validations)
    assert "step 10/12 | train/loss" in log
    assert "tokens/s | ETA" in log

    refused = launch(*corpus.run("gpt", "resume=never"), run_dir=run_dir)
    assert refused.exitcode == 1
    assert f"error: {run_dir} already holds a run" in (run_dir / "train.log").read_text()


def test_progress_null_means_no_bar(corpus, tmp_path: Path) -> None:
    """Found: callbacks.progress=null still drew Rich's bar (Lightning picks it when rich is installed)."""
    from lmpre.callbacks import StepProgressBar
    from lmpre.train import build

    cfg = compose_train(*corpus.run("gpt", f"paths.output_dir={tmp_path}"))  # callbacks.progress=null
    assert build(cfg)[2].progress_bar_callback is None
    cfg.callbacks.progress = {"_target_": "lmpre.callbacks.StepProgressBar"}  # the default
    assert isinstance(build(cfg)[2].progress_bar_callback, StepProgressBar)


def test_hooks_pay_for_a_profiler_only_when_one_is_asked_for(corpus, tmp_path: Path) -> None:
    """Lightning wraps each of ~85 hook calls a step in `profiler.profile(name)`; lmpre's default does nothing there,
    and `+trainer.profiler=simple` still gets Lightning's profiler, which times every hook."""
    from lightning.pytorch.profilers import SimpleProfiler

    from lmpre.profiler import NoProfiler
    from lmpre.train import build

    cfg = compose_train(*corpus.run("gpt", f"paths.output_dir={tmp_path}"))
    datamodule, model, trainer = build(cfg)
    assert type(trainer.profiler) is NoProfiler
    with trainer.profiler.profile("[Callback]X.on_train_batch_end") as name:
        assert name == "[Callback]X.on_train_batch_end"
    overrides = (f"paths.output_dir={tmp_path}", "trainer.max_steps=2", "+trainer.profiler=simple")
    cfg = compose_train(*corpus.run("gpt", *overrides))
    datamodule, model, trainer = build(cfg)
    assert isinstance(trainer.profiler, SimpleProfiler)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.profiler.recorded_durations["run_training_batch"]  # it timed the training steps


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", None)])
def test_adamw_is_fused_unless_mixed_precision_clips(
    corpus, tmp_path: Path, precision: str, fused: bool | None
) -> None:
    """Lightning's mixed precision refuses to clip a fused optimizer's gradients (the CPU preset clips at 1.0): the
    objective then leaves torch's default, and fuses otherwise."""
    from lmpre.train import build

    overrides = (f"paths.output_dir={tmp_path}", "trainer.max_steps=1", f"trainer.precision={precision}")
    datamodule, model, trainer = build(compose_train(*corpus.run("gpt", *overrides)))
    trainer.fit(model, datamodule=datamodule)
    assert trainer.gradient_clip_val == 1.0
    assert trainer.optimizers[0].defaults["fused"] is fused


def test_the_bar_counts_the_runs_steps_across_epochs_and_resumes(corpus, tmp_path: Path) -> None:
    """Found: the bar showed "Epoch 0/-2" on step-based runs and "40/19" after a resume. Now one bar over the run:
    step of max_steps (from where a resumed run stopped), time left and tokens/s."""
    import io

    import lightning as L

    from lmpre.callbacks import StepProgressBar
    from lmpre.train import build

    class FirstStep(L.Callback):
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            if not hasattr(self, "completed"):
                self.completed = bar.train_progress_bar.completed

    for max_steps, resume in ((6, None), (14, tmp_path / "checkpoints" / "last.ckpt")):
        screen = io.StringIO()
        bar = StepProgressBar(console_kwargs={"file": screen, "force_terminal": True, "width": 160})
        first = FirstStep()
        cfg = compose_train(*corpus.run("gpt", f"trainer.max_steps={max_steps}", f"paths.output_dir={tmp_path}"))
        datamodule, model, trainer = build(cfg, callbacks_extra=[bar, first])
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        task = bar.train_progress_bar
        assert (task.total, task.completed) == (max_steps, max_steps)  # 14 steps cross an epoch: still one bar
        assert first.completed == (1 if resume is None else 7)
        assert task.description.strip() == "step"
        shown = screen.getvalue()
        assert f"{max_steps}/{max_steps}" in shown
        assert "tokens/s" in shown
        assert "Epoch" not in shown


def test_train_loss_is_logged_at_the_steps_lightning_writes(corpus, tmp_path: Path) -> None:
    """The loss and gradient norm are logged only where Lightning writes them (every log_every_n_steps and the last
    step): each self.log costs Lightning's bookkeeping, written or not, and the norm a pass over the gradients. The
    values written are the same as when logging every step."""
    import lightning as L

    from lmpre.train import build

    def logged(every: int) -> dict[str, dict[int, float]]:
        out = tmp_path / str(every)
        overrides = ("trainer.max_steps=12", f"trainer.log_every_n_steps={every}", f"paths.output_dir={out}")
        L.seed_everything(0)
        datamodule, model, trainer = build(compose_train(*corpus.run("gpt", *overrides)))
        trainer.fit(model, datamodule=datamodule)
        events = scalars(out)
        return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in ("train/loss", "train/grad_norm")}

    every_step, every_fifth = logged(1), logged(5)
    for tag, values in every_step.items():
        assert list(values) == list(range(12)), tag
        assert every_fifth[tag] == {step: values[step] for step in (4, 9, 11)}, tag


def test_the_bar_reads_its_metrics_at_its_refresh_rate(corpus, tmp_path: Path) -> None:
    """Found: the bar read its metrics (a tensor-to-float each) after every step and Lightning's default redrew it up
    to 100 times a second. Now at most `refresh_rate` times a second, and after the last step: the bar ends on the
    run's last loss."""
    import io
    from unittest import mock

    import lightning as L

    from lmpre.callbacks import StepProgressBar
    from lmpre.train import build

    bar = StepProgressBar(refresh_rate=1, console_kwargs={"file": io.StringIO(), "force_terminal": True})
    assert StepProgressBar().refresh_rate == 1
    cfg = compose_train(*corpus.run("gpt", "trainer.max_steps=12", f"paths.output_dir={tmp_path}"))
    datamodule, model, trainer = build(cfg, callbacks_extra=[bar])
    steps: list[int] = []  # the training steps after which the bar read its metrics
    read = bar._update_metrics

    def record(trainer: L.Trainer, *args: object) -> None:
        if trainer.training:
            steps.append(trainer.global_step)
        read(trainer, *args)

    with (
        mock.patch("lmpre.callbacks.time", monotonic=lambda: trainer.global_step / 10),  # a step takes 0.1 s
        mock.patch.object(bar, "_update_metrics", side_effect=record),
    ):
        trainer.fit(model, datamodule=datamodule)
    # After the first step, a second later, after the last; and at step 9, the first epoch's end (Lightning's read).
    assert sorted(set(steps)) == [1, 9, 11, 12]
    assert bar.get_metrics(trainer, model)["train/loss"] == pytest.approx(float(trainer.callback_metrics["train/loss"]))


def test_the_bar_shows_the_step_at_its_refresh_rate_and_the_step_it_validates(corpus, tmp_path: Path) -> None:
    """Found: the bar's step was updated after every step, and Rich keeps a sample per update for its speed and time
    left, all summed at every redraw. Now the step is updated with the metrics, at most `refresh_rate` times a second;
    a validation shows the step it validates, and the run ends on its last step."""
    import io
    from unittest import mock

    import lightning as L

    from lmpre.callbacks import StepProgressBar
    from lmpre.train import build

    screen = io.StringIO()
    bar = StepProgressBar(refresh_rate=1, console_kwargs={"file": screen, "force_terminal": True, "width": 160})
    shown: list[tuple[str, int, float]] = []  # (hook, step, the bar's step then)

    class Watch(L.Callback):  # runs after the bar
        def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
            shown.append(("train", trainer.global_step, bar.train_progress_bar.completed))

        def on_validation_start(self, trainer: L.Trainer, *args: object) -> None:
            if not trainer.sanity_checking:
                shown.append(("val", trainer.global_step, bar.train_progress_bar.completed))

    overrides = ("trainer.max_steps=12", "trainer.val_check_interval=5", f"paths.output_dir={tmp_path}")
    datamodule, model, trainer = build(compose_train(*corpus.run("gpt", *overrides)), callbacks_extra=[bar, Watch()])
    with mock.patch("lmpre.callbacks.time", monotonic=lambda: trainer.global_step / 10):  # a step takes 0.1 s
        trainer.fit(model, datamodule=datamodule)
    # Updated after step 1, a second later (11) and after the last; each validation shows its step.
    expected = [("train", s, 1) for s in range(1, 6)] + [("val", 5, 5)]
    expected += [("train", s, 5) for s in range(6, 11)] + [("val", 10, 10)]
    expected += [("train", 11, 11), ("train", 12, 12), ("val", 12, 12)]
    assert shown == expected
    assert len(bar.train_progress_bar._progress) <= 6  # Rich's speed samples: one per update, not one per step
    assert "12/12" in screen.getvalue()
