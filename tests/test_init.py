"""`init=…`: a new run that starts from a trained checkpoint's weights (as they are, depth up-scaled, or a subset of
its layers), through the real `train(cfg)` on real WikiText; what it refuses; and resuming such a run."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train import TINY, compose_train, scalars, train_losses

from lmpre import checkpoint
from lmpre.errors import CheckpointError, ConfigError
from lmpre.train import train

SOURCE_STEPS = 150
# The TINY model, for any objective (sample_tokens is the causal LM's).
TINY_ANY = [o for o in TINY if not o.startswith("model.sample_tokens=")]


def val_losses(run_dir: Path) -> list[float]:
    return [e.value for e in scalars(run_dir).Scalars("val/loss")]


@pytest.fixture(scope="module")
def run(wikitext_overrides: list[str]):
    def make(out: Path, *overrides: str):
        tiny = TINY if not any(o.startswith("model=") and o != "model=gpt" for o in overrides) else TINY_ANY
        return compose_train(*wikitext_overrides, *tiny, f"paths.output_dir={out}", *overrides)

    return make


@pytest.fixture(scope="module")
def source(run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """A 4-layer GPT trained on WikiText-2 (its last checkpoint, and its val losses: untrained, then trained)."""
    out = tmp_path_factory.mktemp("source")
    steps = [f"trainer.max_steps={SOURCE_STEPS}", f"trainer.val_check_interval={SOURCE_STEPS}", "optim.lr=3e-3"]
    train(run(out, "model.backbone.n_layer=4", *steps))
    return out / "checkpoints" / "last.ckpt", val_losses(out)


def test_checkpoint_init_starts_at_the_source_val_loss_and_trains_on(run, source, tmp_path: Path) -> None:
    ckpt, (_, trained) = source
    steps = ["trainer.max_steps=30", "trainer.val_check_interval=30", "optim.lr=1e-3"]
    train(run(tmp_path, "model.backbone.n_layer=4", "init=checkpoint", f"init.path={ckpt}", *steps))

    val = val_losses(tmp_path)
    assert val[0] == pytest.approx(trained, abs=1e-4)  # the very same weights, before any step of this run
    assert val[-1] < val[0]  # and it trains on
    last = checkpoint.inspect(tmp_path / "checkpoints" / "last.ckpt")
    assert last.step == 30  # a new run: its own steps, optimizer and schedule
    assert min(train_losses(tmp_path)) == 0


def test_depth_upscaled_model_starts_near_its_source_and_keeps_improving(run, source, tmp_path: Path) -> None:
    ckpt, (untrained, trained) = source
    steps = ["trainer.max_steps=40", "trainer.val_check_interval=20", "optim.lr=1e-3"]
    upscale = ["init=depth_upscale", f"init.path={ckpt}", "init.drop=1"]
    train(run(tmp_path, "model.backbone.n_layer=6", *upscale, *steps))  # 2 * (4 - 1) layers

    val = val_losses(tmp_path)
    # Found: untrained 6.25 (ln 512), source 4.35; up-scaled 4.38 before any training, 4.31 after 40 steps.
    assert abs(val[0] - trained) < 0.1 * abs(untrained - trained), (untrained, trained, val)
    assert val[-1] < val[1] < val[0], val
    weights = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert {k.split(".")[3] for k in weights if k.startswith("model.encoder.blocks.")} == {str(i) for i in range(6)}


def test_resuming_an_initialised_run_does_not_apply_the_init_again(run, source, tmp_path: Path) -> None:
    ckpt, (untrained, _) = source
    copied = tmp_path / "source.ckpt"
    shutil.copy(ckpt, copied)
    downscale = ["model.backbone.n_layer=3", "init=downscale", f"init.path={copied}", "init.layers=[0,2,3]"]
    steps = ["trainer.val_check_interval=4", "trainer.limit_val_batches=1", "optim.warmup_steps=20"]
    train(run(tmp_path / "straight", *downscale, *steps, "trainer.max_steps=8"))
    train(run(tmp_path / "resumed", *downscale, *steps, "trainer.max_steps=4"))
    copied.unlink()  # a resumed run never reads its init's checkpoint again
    train(run(tmp_path / "resumed", *downscale, *steps, "trainer.max_steps=8"))  # the same command: resume=auto

    straight, resumed = train_losses(tmp_path / "straight"), train_losses(tmp_path / "resumed")
    assert sorted(resumed) == sorted(straight) == list(range(8))
    for step in range(4, 8):
        assert resumed[step] == pytest.approx(straight[step], abs=1e-5), step
    assert val_losses(tmp_path / "straight")[0] < untrained - 1.0  # a subset of trained layers is far from random


@pytest.mark.parametrize("preset", ["bert", "t5"])
def test_every_objective_is_depth_upscaled(preset: str, run, tmp_path: Path) -> None:
    """Encoder-decoders: the encoder and the decoder are each up-scaled with the same drop (T5 here: 3 -> 4 layers
    each)."""
    steps = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]
    train(run(tmp_path / "source", f"model={preset}", "model.backbone.n_layer=3", *steps))
    source = tmp_path / "source" / "checkpoints" / "last.ckpt"
    decoder = ["model.backbone.n_decoder_layer=4"] if preset == "t5" else []
    upscale = ["init=depth_upscale", f"init.path={source}", "init.drop=1"]
    metrics = train(run(tmp_path / "up", f"model={preset}", "model.backbone.n_layer=4", *decoder, *upscale, *steps))
    assert math.isfinite(metrics["val/loss"])
    record = checkpoint.inspect(tmp_path / "up" / "checkpoints" / "last.ckpt").record
    assert record is not None
    expected = {"bert": (4, 0), "t5": (4, 4)}[preset]
    assert (record["backbone"]["n_layer"], record["backbone"]["n_decoder_layer"]) == expected


# ------------------------------------------------------------------------------------------------- what is refused


def test_init_and_ckpt_path_are_never_both_set(run, source, tmp_path: Path) -> None:
    ckpt, _ = source
    with pytest.raises(ConfigError, match="pass one of them"):
        train(run(tmp_path, "init=checkpoint", f"init.path={ckpt}", f"ckpt_path={ckpt}"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["init=depth_upscale", "init.drop=1"], r"pass model\.backbone\.n_layer=6$"),
        (["init=checkpoint", "model.backbone.d_model=32"], "pass model.backbone.d_model=64 model.backbone.n_layer=4"),
        (["init=checkpoint", "model=bert"], "holds a CausalLM, and model= builds a MaskedLM"),
        (["init=depth_upscale", "init.drop=4"], "init.drop: drop=4 must be at least 0 and less than"),
        (["init=downscale", "init.layers=[1,0]"], r"init.layers=\[1, 0\] must list distinct layers in increasing"),
    ],
)
def test_a_backbone_the_init_does_not_make_is_refused(
    overrides: list[str], message: str, run, source, tmp_path: Path
) -> None:
    ckpt, _ = source
    with pytest.raises(ConfigError, match=message) as err:
        train(run(tmp_path, f"init.path={ckpt}", *overrides))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was built


def test_init_without_a_path_is_refused(run, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"init=checkpoint needs init\.path=PATH"):
        train(run(tmp_path, "init=checkpoint"))
    with pytest.raises(CheckpointError, match=r"init\.path=.*does not exist"):
        train(run(tmp_path, "init=checkpoint", f"init.path={tmp_path / 'missing.ckpt'}"))


def test_another_tokenizer_is_refused_and_the_checkpoints_one_continues_on_new_data(
    run, source, tmp_path: Path, wikitext_overrides: list[str]
) -> None:
    """Domain adaptation: the WikiText model continues on Shakespeare, prepared with the model's tokenizer."""
    ckpt, (untrained, _) = source
    shakespeare = ["data=shakespeare", f"data.cache_dir={tmp_path / 'cache'}", *TINY, "model.backbone.n_layer=4"]
    init = ["init=checkpoint", f"init.path={ckpt}"]
    result = subprocess.run(
        [sys.executable, "-m", "lmpre.train", *shakespeare, *init, f"hydra.run.dir={tmp_path / 'bytes'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "another tokenizer" in lines[0]
    hint = f"data.tokenizer.kind=file data.tokenizer.path={ckpt.parent / 'tokenizer.json'}"
    assert lines[0].endswith(hint)
    assert "Traceback" not in result.stderr

    steps = ["trainer.max_steps=10", "trainer.val_check_interval=10", "optim.lr=1e-3"]
    train(compose_train(*shakespeare, *hint.split(), *init, *steps, f"paths.output_dir={tmp_path / 'adapted'}"))
    val = val_losses(tmp_path / "adapted")
    # Found: 5.14 at step 0 (untrained: 6.25), 4.76 after 10 steps.
    assert val[0] < untrained - 1.0  # English from Wikipedia already predicts much of Shakespeare's
    assert val[-1] < val[0]


INIT_CLASSES = {
    "random": "RandomInit",
    "checkpoint": "FromCheckpoint",
    "depth_upscale": "DepthUpscale",
    "downscale": "Downscale",
}


@pytest.mark.parametrize("option", INIT_CLASSES)
def test_every_init_config_builds_its_class(option: str) -> None:
    from lmpre.init import from_config

    init = from_config(compose_train(f"init={option}"))
    assert type(init).__name__ == INIT_CLASSES[option]
    assert init.option == option


def test_encoder_decoder_layer_counts() -> None:
    from lmpre.init import DepthUpscale, Downscale, FromCheckpoint

    t5 = {"n_layer": 3, "n_decoder_layer": 2, "causal": False}
    assert FromCheckpoint().backbone(t5) == t5
    assert DepthUpscale(drop=1).backbone(t5) == {**t5, "n_layer": 4, "n_decoder_layer": 2}  # 2 * (2 - 1) = 2
    assert Downscale(layers=[0, 2], decoder_layers=[1]).backbone(t5) == {**t5, "n_layer": 2, "n_decoder_layer": 1}
    assert Downscale(layers=[1]).backbone(t5) == {**t5, "n_layer": 1, "n_decoder_layer": 1}  # the same list
    with pytest.raises(ConfigError, match=r"init\.layers=\[0, 2\]: the source has layers 0…1 \(decoder\)"):
        Downscale(layers=[0, 2]).backbone(t5)  # the encoder's layers, reused for the decoder: not all there
    with pytest.raises(ConfigError, match=r"drop=2 must be .* less than the source's 2 layers \(decoder\)"):
        DepthUpscale(drop=2).backbone(t5)
    with pytest.raises(ConfigError, match=r"init\.drop=x must be an integer"):
        DepthUpscale(drop="x").backbone(t5)  # type: ignore[arg-type]
