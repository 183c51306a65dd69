"""Where a new run's weights come from (`init=…`): random, or a trained checkpoint's, as they are or reshaped.

    init=random                                  the backbone's own random initialisation (the default)
    init=checkpoint init.path=CKPT               every weight of CKPT: continue pretraining, e.g. on new data
    init=depth_upscale init.path=CKPT init.drop=M  SOLAR's depth up-scaling: 2 * (n - M) layers from n
    init=downscale init.path=CKPT init.layers=[0,2,3]  keep a subset of the layers

Only the weights are taken: the optimizer, schedule, step and data position start afresh. Starting from a checkpoint
is not resuming a run (`ckpt_path`): the two are never asked for at once. A launch that resumes a run (`resume=auto`)
does not apply the init again: the run's own checkpoints hold its weights from then on.

The config must describe the model the init makes (its backbone is the checkpoint's, with the new layer counts),
so the run's config, its checkpoints' records and a later resume all agree; a difference is one error naming the
overrides to pass. The checkpoint's tokenizer must be the data's (a token id must mean the same token).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, cast

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lmpre import checkpoint
from lmpre.checkpoint import CheckpointInfo
from lmpre.errors import CheckpointError, ConfigError
from lmpre.models import TransformerConfig, surgery

if TYPE_CHECKING:
    from lmpre.objectives import PretrainingObjective

log = logging.getLogger(__name__)

STATE_PREFIX = "model."  # the backbone's keys in an objective's state dict (`objective.model`)


@dataclass(frozen=True)
class RandomInit:
    """The backbone's own random initialisation (`Transformer._init_weights`)."""

    option: ClassVar[str] = "random"


@dataclass(frozen=True)
class FromCheckpoint:
    """Every weight of a checkpoint's backbone: continued pretraining (domain adaptation when the data is new)."""

    path: str | None = None
    option: ClassVar[str] = "checkpoint"

    def source_layers(self, n_layer: int, stack: str) -> list[int]:
        """The source layers that make the new `stack`, in order."""
        return list(range(n_layer))

    def backbone(self, source: Mapping[str, Any]) -> dict[str, Any]:
        """The backbone fields of the model made from a checkpoint with backbone `source`."""
        made = {**source, "n_layer": len(self.source_layers(int(source["n_layer"]), "encoder"))}
        if source.get("n_decoder_layer"):
            made["n_decoder_layer"] = len(self.source_layers(int(source["n_decoder_layer"]), "decoder"))
        return made

    def state_dict(self, source: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The backbone state dict of the new model, made from the source backbone's."""
        state = dict(source)
        for stack in surgery.STACKS:
            n = surgery.num_layers(state, stack)
            if n:
                state = surgery.select_layers(state, self.source_layers(n, stack), stack)
        return state

    def source(self) -> CheckpointInfo:
        if not self.path:
            raise ConfigError(
                f"init={self.option} needs init.path=PATH: the checkpoint to start from, e.g. RUN/checkpoints/last.ckpt"
            )
        info = checkpoint.inspect(Path(str(self.path)).expanduser(), setting="init.path")
        if info.record is None or "backbone" not in info.record:
            raise CheckpointError(
                f"init.path={self.path} records no backbone (made before lmpre recorded one): it cannot be checked "
                "against this run; start from a newer checkpoint"
            )
        return info

    def check(self, cfg: DictConfig) -> CheckpointInfo:
        """Raise unless the checkpoint can start the model `cfg` describes; cheap (nothing is loaded)."""
        info = self.source()
        record: dict[str, Any] = info.record or {}
        objective = checkpoint.class_path(get_class(cfg.model._target_))
        if record.get("objective") not in (None, objective):
            raise ConfigError(
                f"init.path={self.path} holds a {str(record['objective']).rsplit('.', 1)[-1]}, and model= builds a "
                f"{objective.rsplit('.', 1)[-1]}: choose the model= of the checkpoint"
            )
        made = asdict(TransformerConfig(**self.backbone(record["backbone"])))
        fields = cast(dict[str, Any], OmegaConf.to_container(cfg.model.get("backbone") or {}, resolve=True))
        differ = _differences(made, {**fields, "vocab_size": made["vocab_size"]})
        if differ:
            # The fewest overrides: a derived field (d_ff from d_model) is named only when setting the others
            # leaves it different.
            named = [k for k in differ if k != "d_ff"]
            if _differences(made, {**fields, **{k: made[k] for k in named}, "vocab_size": made["vocab_size"]}):
                named = differ
            configured = asdict(TransformerConfig(**{**fields, "vocab_size": made["vocab_size"]}))
            raise ConfigError(
                f"init={self.option} from {self.path} makes a model with "
                f"{', '.join(f'{k}={made[k]}' for k in named)}, and the config describes "
                f"{', '.join(f'{k}={configured[k]}' for k in named)}: pass "
                + " ".join(f"model.backbone.{k}={_override(made[k])}" for k in named)
            )
        return info

    def apply(self, model: PretrainingObjective, datamodule: Any) -> None:
        """Load the new weights into `model`, after checking that the checkpoint's tokenizer is the data's."""
        info = self.source()
        record: dict[str, Any] = info.record or {}
        expected = record.get("tokenizer_sha256")
        actual = datamodule.provenance["tokenizer_sha256"] if hasattr(type(datamodule), "provenance") else None
        if expected and actual and expected != actual:
            raise CheckpointError(
                f"init.path={self.path} was trained with another tokenizer (sha256 {expected[:12]}…) than this run's "
                f"data (sha256 {actual[:12]}…), so its token ids would mean other tokens: prepare the data with the "
                f"checkpoint's tokenizer, data.tokenizer.kind=file "
                f"data.tokenizer.path={info.path.parent / checkpoint.RUN_FILES[0]}"
            )
        weights = _backbone_state(info.path)
        model.model.load_state_dict(self.state_dict(weights))  # strict: every weight of the new model, no other
        log.info("%s", self.describe(info, record["backbone"]))

    def describe(self, info: CheckpointInfo, source: Mapping[str, Any]) -> str:
        return f"init={self.option}: weights of {info.path} (step {info.step})"


@dataclass(frozen=True)
class DepthUpscale(FromCheckpoint):
    """SOLAR's depth up-scaling (arXiv:2312.15166): two copies of an n-layer stack, the last `drop` layers dropped
    from the first copy and the first `drop` from the second, so 2 * (n - drop) layers. An encoder-decoder's
    encoder and decoder are each up-scaled so, with the same `drop`."""

    drop: int = 0
    option: ClassVar[str] = "depth_upscale"

    def source_layers(self, n_layer: int, stack: str) -> list[int]:
        if isinstance(self.drop, bool) or not isinstance(self.drop, int):
            raise ConfigError(f"init.drop={self.drop} must be an integer (layers dropped from each copy)")
        try:
            return surgery.depth_upscale_layers(n_layer, self.drop)
        except ValueError as err:
            raise ConfigError(f"init.drop: {err} ({stack})") from None

    def describe(self, info: CheckpointInfo, source: Mapping[str, Any]) -> str:
        stacks = [("encoder", int(source["n_layer"])), ("decoder", int(source.get("n_decoder_layer") or 0))]
        shapes = ", ".join(f"{stack} {n} → {len(self.source_layers(n, stack))} layers" for stack, n in stacks if n)
        return f"{super().describe(info, source)}, depth up-scaled with drop={self.drop}: {shapes}"


@dataclass(frozen=True)
class Downscale(FromCheckpoint):
    """A subset of a checkpoint's layers, in their order: `layers` of the encoder (or the decoder-only stack) and
    `decoder_layers` of an encoder-decoder's decoder (None: the same as `layers`)."""

    layers: list[int] = field(default_factory=list)
    decoder_layers: list[int] | None = None
    option: ClassVar[str] = "downscale"

    def source_layers(self, n_layer: int, stack: str) -> list[int]:
        chosen, setting = self.layers, "init.layers"
        if stack == "decoder" and self.decoder_layers is not None:
            chosen, setting = self.decoder_layers, "init.decoder_layers"
        try:
            return surgery.check_subset(chosen, n_layer, setting)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{err} ({stack})") from None

    def describe(self, info: CheckpointInfo, source: Mapping[str, Any]) -> str:
        stacks = [("encoder", int(source["n_layer"])), ("decoder", int(source.get("n_decoder_layer") or 0))]
        kept = ", ".join(f"{stack} layers {self.source_layers(n, stack)} of {n}" for stack, n in stacks if n)
        return f"{super().describe(info, source)}, down-scaled to {kept}"


Init = RandomInit | FromCheckpoint


def from_config(cfg: DictConfig) -> Init:
    """The init `cfg.init` describes (`random` when it names none)."""
    if not cfg.get("init"):
        return RandomInit()
    init = instantiate(cfg.init, _convert_="all")
    if not isinstance(init, (RandomInit, FromCheckpoint)):
        raise ConfigError(f"init._target_={cfg.init._target_} is not an lmpre.init class")
    return init


def check_settings(cfg: DictConfig) -> None:
    """The settings alone (nothing read): an init from a checkpoint and a resumed checkpoint are never both asked."""
    init = from_config(cfg)
    if isinstance(init, FromCheckpoint) and cfg.get("ckpt_path"):
        raise ConfigError(
            f"init={init.option} starts a new run from a checkpoint's weights and ckpt_path={cfg.ckpt_path} resumes "
            "a run: pass one of them (a run started with init= resumes without ckpt_path, from its run directory)"
        )


def plan(cfg: DictConfig, resuming: bool) -> FromCheckpoint | None:
    """The init this launch applies, checked against the config: None for random weights, and when it resumes
    a run (whose checkpoints already hold the weights the init made)."""
    init = from_config(cfg)
    if not isinstance(init, FromCheckpoint):
        return None
    if resuming:
        log.info("init=%s is not applied again: the run resumes from its own checkpoint", init.option)
        return None
    init.check(cfg)
    return init


def _backbone_state(path: Path) -> dict[str, Tensor]:
    try:
        content = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError:  # objects weights_only refuses (e.g. a callback's state): as Lightning loads it
        content = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    state = content.get("state_dict") or {}
    weights = {k.removeprefix(STATE_PREFIX): v for k, v in state.items() if k.startswith(STATE_PREFIX)}
    if not weights:
        raise CheckpointError(f"init.path={path} holds no backbone weights (no {STATE_PREFIX}* in its state_dict)")
    return weights


def _differences(made: Mapping[str, Any], configured_fields: Mapping[str, Any]) -> list[str]:
    """The backbone fields, after derivation, in which the configured backbone is not the one `made`."""
    try:
        configured = asdict(TransformerConfig(**configured_fields))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model.backbone: {err}") from None
    skip = checkpoint.RESUMABLE_BACKBONE_CHANGES
    return sorted(k for k in made if k not in skip and made[k] != configured[k])


def _override(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
