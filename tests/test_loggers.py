"""`logger=` presets: each records the run's metrics and config where its preset says, alone or several at once."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from launch import TinyCorpus, scalars, tiny_corpus
from test_train import compose_train

from lmpre.train import train

STEPS = ["trainer.max_steps=4", "trainer.val_check_interval=2", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> TinyCorpus:
    return tiny_corpus(tmp_path_factory)


def run(corpus: TinyCorpus, out: Path, *overrides: str) -> dict[str, float]:
    return train(compose_train(*corpus.run("gpt", *STEPS, "optim.lr=0.002"), f"paths.output_dir={out}", *overrides))


def csv_val_loss(run_dir: Path) -> dict[int, float]:
    with (run_dir / "csv" / "metrics.csv").open() as file:
        return {int(row["step"]): float(row["val/loss"]) for row in csv.DictReader(file) if row["val/loss"]}


def test_csv_alone_records_metrics_and_config(corpus: TinyCorpus, tmp_path: Path) -> None:
    metrics = run(corpus, tmp_path, "logger=csv")  # the text sample, TensorBoard-only, is skipped without it

    val = csv_val_loss(tmp_path)
    assert sorted(val) == [0, 1, 3]  # the untrained model's, then every 2 steps
    assert val[3] == pytest.approx(metrics["val/loss"])
    hparams = yaml.safe_load((tmp_path / "csv" / "hparams.yaml").read_text())
    assert hparams["optim"]["lr"] == pytest.approx(0.002)
    assert hparams["model"]["backbone"]["d_model"] == 32
    assert not (tmp_path / "tensorboard").exists()


def test_several_loggers_at_once_see_the_same_run(corpus: TinyCorpus, tmp_path: Path) -> None:
    metrics = run(corpus, tmp_path, "logger=[tensorboard,csv]")
    assert scalars(tmp_path, "val/loss") == pytest.approx(csv_val_loss(tmp_path))
    assert scalars(tmp_path, "val/loss")[3] == pytest.approx(metrics["val/loss"])


def test_wandb_offline_gives_each_job_of_a_sweep_its_own_run(corpus: TinyCorpus, tmp_path: Path) -> None:
    pytest.importorskip("wandb", reason='needs pip install "lmpre[loggers]"')
    args = [*corpus.run("gpt", *STEPS), "logger=wandb", "optim.lr=1e-3,2e-3", f"hydra.sweep.dir={tmp_path}"]
    result = subprocess.run(
        [sys.executable, "-m", "lmpre.train", "-m", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job, lr in (("0", b"0.001"), ("1", b"0.002")):
        (record,) = (tmp_path / job / "wandb").glob("offline-run-*/run-*.wandb")  # what `wandb sync` uploads
        data = record.read_bytes()  # wandb's own binary log: its reader is not public, the names are in it
        assert b"val/loss" in data
        assert lr in data  # the config, logged as hyper-parameters: this job's


@pytest.mark.slow  # MLflow creates its database tables at each run's start: 10 s and more
def test_mlflow_logs_into_a_local_store_in_the_run_directory(corpus: TinyCorpus, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason='needs pip install "lmpre[loggers]"')
    from mlflow import MlflowClient

    metrics = run(corpus, tmp_path, "logger=mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("lmpre").experiment_id])
    history = {m.step: m.value for m in client.get_metric_history(mlflow_run.info.run_id, "val/loss")}
    assert sorted(history) == [0, 1, 3]
    assert history[3] == pytest.approx(metrics["val/loss"])
    assert float(mlflow_run.data.params["optim/lr"]) == pytest.approx(0.002)
