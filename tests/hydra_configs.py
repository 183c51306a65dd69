"""The real Hydra configs, composed as the entry points compose them."""

from hydra import compose, initialize_config_module
from omegaconf import DictConfig


def compose_config(name: str, *overrides: str) -> DictConfig:
    with initialize_config_module(config_module="lmpre.conf", version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
