"""The cluster presets and example scripts: what can be checked without a cluster or a GPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_slurm_launcher_preset_composes_onto_submitit() -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason='needs pip install "lmpre[cluster]"')
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        overrides = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.tasks_per_node=4"]
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 1)
    assert launcher.max_num_timeout == 3


@pytest.mark.parametrize("script", ["gpu_check.sh", "torchrun.sh", "slurm.sbatch"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_gpu_check_stops_clearly_without_a_gpu(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_check.sh")], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: gpu_check needs a CUDA GPU and torch finds none (torch.cuda.is_available() is False)"
    )
    assert list(tmp_path.iterdir()) == []  # stopped before any run started
