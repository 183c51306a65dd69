"""Multiruns as a user starts them (`python -m lmpre.train -m …`): the summary, Optuna, submitit, DDP inside a sweep."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_module
from launch import TinyCorpus, scalars, tiny_corpus
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from test_train import compose_train

from lmpre.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
STEPS = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


def multirun(corpus: TinyCorpus, sweep_dir: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m lmpre.train -m` on the tiny corpus, from a directory of its own (nothing may land beside it)."""
    cwd = sweep_dir.parent / f"{sweep_dir.name}.cwd"
    cwd.mkdir(parents=True)
    args = [*corpus.run("gpt", *STEPS), *overrides, f"hydra.sweep.dir={sweep_dir}"]
    return subprocess.run(
        [sys.executable, "-m", "lmpre.train", "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def summary(sweep_dir: Path) -> list[dict[str, str]]:
    with (sweep_dir / "summary.csv").open() as file:
        return list(csv.DictReader(file))


def test_a_sweep_ends_with_a_summary_and_a_failed_job_is_a_row(corpus: TinyCorpus, tmp_path: Path) -> None:
    # Windows of 32 tokens do not fit a backbone of 16 positions: job 1 stops on a config error, job 2 still runs.
    sweep_dir = tmp_path / "sweep"
    result = multirun(corpus, sweep_dir, "model.backbone.max_seq_len=32,16,64")
    assert result.returncode == 1, result.stderr[-3000:]

    rows = summary(sweep_dir)
    assert [row["job"] for row in rows] == ["0", "1", "2"]
    assert rows[1]["error"].startswith("error: data.seq_len=32 is longer than model.backbone.max_seq_len=16")
    assert rows[1]["best_val_loss"] == rows[1]["final_val_loss"] == ""
    for row, positions in ((rows[0], 32), (rows[2], 64)):
        assert row["error"] == ""
        assert f"model.backbone.max_seq_len={positions}" in row["overrides"].split()
        assert Path(row["run_dir"]) == sweep_dir / row["job"]
        val = scalars(Path(row["run_dir"]), "val/loss")  # what TensorBoard shows for the same run
        best_step = min(val, key=val.__getitem__)
        assert float(row["best_val_loss"]) == pytest.approx(val[best_step])
        assert int(row["best_step"]) == best_step + (best_step > 0)  # TensorBoard logs a step's metrics at step-1
        assert float(row["final_val_loss"]) == pytest.approx(val[max(val)])
        assert int(row["tokens"]) == 4 * 4 * 32  # steps × batch × seq_len
        assert float(row["wall_time_s"]) > 0

    table = (sweep_dir / "summary.md").read_text()
    assert table.splitlines()[0].startswith("| job | overrides | best_val_loss |")
    assert "| 1 | model.backbone.max_seq_len=16 |" in table  # only the overrides that differ between jobs
    assert table in result.stdout  # printed at the end, then the exit status says a job failed
    assert result.stdout.rstrip().endswith("error: 1 of 3 jobs failed: 1")


def test_a_run_without_logger_or_checkpoints_still_records_its_result(corpus: TinyCorpus, tmp_path: Path) -> None:
    """Found: with no logger and no checkpoints nothing had made the run directory (built outside Hydra, as the
    benchmarks do), and writing result.json at the end failed. Now its directory is made for it."""
    import json

    from lmpre.train import build

    run_dir = tmp_path / "not_made_yet"
    cfg = compose_train(
        *corpus.run("gpt", *STEPS),
        "~logger",  # the learning-rate monitor is dropped with it: Lightning's refuses to start without a logger
        "callbacks.checkpoint=null",
        f"paths.output_dir={run_dir}",
    )
    datamodule, model, trainer = build(cfg)
    trainer.fit(model, datamodule=datamodule)
    assert json.loads((run_dir / "result.json").read_text())["step"] == 4


def test_hparams_tab_shows_the_config_with_final_metrics(corpus: TinyCorpus, tmp_path: Path) -> None:
    metrics = train(compose_train(*corpus.run("gpt", *STEPS, "optim.lr=0.002"), f"paths.output_dir={tmp_path}"))

    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["optim/lr"].number_value == pytest.approx(0.002)
    assert hparams["model/backbone/d_model"].number_value == 32
    assert hparams["data/_target_"].string_value == "lmpre.data.TokenDataModule"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hp/val/loss", "hp/val/best_loss", "hp/val/ppl"}
    assert events.Scalars("hp/val/loss")[0].value == pytest.approx(metrics["val/loss"])
    assert events.Scalars("hp/val/best_loss")[0].value == pytest.approx(min(scalars(tmp_path, "val/loss").values()))


def test_optuna_search_finds_the_best_of_its_trials(corpus: TinyCorpus, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install "lmpre[sweeps]"')
    sweep_dir = tmp_path / "search"
    result = multirun(corpus, sweep_dir, "hparams_search=lr", "hydra.sweeper.n_trials=3")
    assert result.returncode == 0, result.stderr[-3000:]

    rows = summary(sweep_dir)
    assert len(rows) == 3
    study = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min(rows, key=lambda row: float(row["final_val_loss"]))
    assert study["best_value"] == pytest.approx(float(best["final_val_loss"]))
    overrides = dict(o.split("=", 1) for o in best["overrides"].split())
    assert float(overrides["optim.lr"]) == pytest.approx(study["best_params"]["optim.lr"])
    assert len({row["overrides"] for row in rows}) == 3  # three different trials


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONF.glob("hparams_search/*.yaml")))
def test_each_search_preset_searches_settings_that_exist(preset: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason='needs pip install "lmpre[sweeps]"')
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"hparams_search={preset}"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper")
    assert sweeper.direction == "minimize"
    assert sweeper.params
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None, key


def test_a_sweep_through_submitit_runs_each_job_as_a_cluster_would(corpus: TinyCorpus, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install "lmpre[cluster]"')
    sweep_dir = tmp_path / "cluster"
    result = multirun(corpus, sweep_dir, "hydra/launcher=submitit_local", "optim.lr=1e-3,3e-3")
    assert result.returncode == 0, result.stderr[-3000:]

    rows = summary(sweep_dir)
    assert [(row["job"], row["error"]) for row in rows] == [("0", ""), ("1", "")]
    for row in rows:
        assert (Path(row["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
        assert float(row["final_val_loss"]) == pytest.approx(scalars(Path(row["run_dir"]), "val/loss")[3])
    assert sorted(p.suffix for p in (sweep_dir / ".submitit").glob("*/*_result.pkl")) == [".pkl", ".pkl"]


def test_ddp_inside_a_sweep_keeps_one_run_per_job(corpus: TinyCorpus, tmp_path: Path) -> None:
    """Lightning starts the second process of each job with the sweep's argv: without lmpre.sweep.job_as_single_run
    it would run the whole sweep again, the second job would wait forever for processes that never start."""
    sweep_dir = tmp_path / "ddp"
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
    result = multirun(corpus, sweep_dir, *ddp, "optim.lr=1e-3,3e-3")
    assert result.returncode == 0, result.stderr[-3000:]

    rows = summary(sweep_dir)
    assert [(row["job"], row["error"]) for row in rows] == [("0", ""), ("1", "")]
    assert int(rows[0]["tokens"]) == 2 * 4 * 4 * 32  # two processes
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]
    assert list((tmp_path / "ddp.cwd").iterdir()) == []  # no outputs/ or multirun/ of the second processes
    for row in rows:
        run_dir = Path(row["run_dir"])
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
        assert len(checkpoints) == 2, checkpoints  # last and best, one set
        assert "last.ckpt" in checkpoints
        assert [p.name for p in (run_dir / "tensorboard").iterdir() if p.is_dir()] == []  # no version_N
        assert sorted(scalars(run_dir, "val/loss")) == [0, 1, 3]  # one run's curve, logged once
        assert (run_dir / "train_ddp_process_1.log").is_file()  # the second process logged into this job's run
