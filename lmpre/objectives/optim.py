"""Optimizer configs (conf/optim/): each builds a torch optimizer and its per-step learning-rate schedule.

`adamw`: AdamW with decoupled weight-decay groups. `muon`: Muon (momentum orthogonalised by Newton–Schulz) for the
hidden 2-D matrices, AdamW for embeddings, the output head, gains and biases. Both share the schedule: linear
warm-up, then `cosine` decay to `min_lr_ratio`, or `wsd` (warm-up, stable, decay: flat, then a linear decay over
the last `decay_fraction` of the steps)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from lmpre.errors import ConfigError
from lmpre.objectives.muon import MuonWithAdamW

DECAYS = ("cosine", "wsd")


@dataclass
class Schedule:
    """The learning rate's factor at each step: a pure function of (step, total_steps)."""

    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | wsd
    min_lr_ratio: float = 0.1  # the decay ends at lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: the last fraction of the steps decays linearly

    def __post_init__(self) -> None:
        if self.decay not in DECAYS:
            raise ConfigError(f"optim.decay={self.decay!r} must be one of {', '.join(DECAYS)}")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"optim.decay_fraction={self.decay_fraction} must be in (0, 1]")

    def lr_factor(self, step: int, total_steps: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "wsd":
            decay_steps = max(1, round(self.decay_fraction * (total_steps - self.warmup_steps)))
            progress = min(1.0, max(0.0, (step - (total_steps - decay_steps)) / decay_steps))
            return 1 - (1 - self.min_lr_ratio) * progress
        progress = min(1.0, (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class ScheduledLR(LambdaLR):
    """LambdaLR over a `Schedule`, whose `total_steps` may be changed after construction (e.g. by a callback that
    sizes the run to a budget). Neither the schedule nor the total goes into the state dict: a resumed run takes
    both from its config, like the rest of its settings."""

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule, total_steps: int) -> None:
        self.schedule, self.total_steps = schedule, total_steps
        super().__init__(optimizer, lambda step: self.schedule.lr_factor(step, self.total_steps))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in ("schedule", "total_steps"):
            state.pop(key, None)
        return state


@dataclass
class OptimizerConfig:
    """What an objective's `optim` is: plain settings (saved in checkpoints as a dict with its `name`) that build
    the optimizer and its schedule for a model."""

    name: ClassVar[str]
    lr: float = 1e-3
    warmup_steps: int = 100
    decay: str = "cosine"  # cosine | wsd: see Schedule
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        self.schedule()  # raises on a bad decay setting

    def schedule(self) -> Schedule:
        return Schedule(self.warmup_steps, self.decay, self.min_lr_ratio, self.decay_fraction)

    def lr_factor(self, step: int, total_steps: int) -> float:
        return self.schedule().lr_factor(step, total_steps)

    def build(
        self, model: nn.Module, total_steps: int, *, fusable: bool = True
    ) -> tuple[torch.optim.Optimizer, ScheduledLR]:
        """`fusable=False` when the trainer cannot step a fused optimizer: Lightning's mixed precision refuses to
        clip the gradients of one (it would unscale them itself). Optimizers without a fused kernel (Muon) ignore it."""
        optimizer = self.optimizer(model, fusable)
        return optimizer, ScheduledLR(optimizer, self.schedule(), total_steps)

    def optimizer(self, model: nn.Module, fusable: bool = True) -> torch.optim.Optimizer:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only, so checkpoints load with torch.load(weights_only=True)."""
        return {"name": self.name, **asdict(self)}


@dataclass
class AdamW(OptimizerConfig):
    name: ClassVar[str] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # torch's fused kernel: one pass over all parameters instead of a dozen ops per tensor (on CPU, torch's default
    # otherwise, a loop over the tensors: 4x slower). null: fused wherever torch has the kernel and the trainer
    # allows it; false: torch's default (foreach on GPUs).
    fused: bool | None = None

    def optimizer(self, model: nn.Module, fusable: bool = True) -> torch.optim.AdamW:
        # Decay matrices and embeddings; biases and norm gains stay free (decaying them only hurts).
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = self._fused(params, fusable)
        return torch.optim.AdamW(
            groups, lr=self.lr, betas=(self.betas[0], self.betas[1]), eps=self.eps, fused=fused or None
        )

    def _fused(self, params: list[nn.Parameter], fusable: bool) -> bool:
        devices = _get_fused_kernels_supported_devices()
        supported = all(p.device.type in devices and p.is_floating_point() for p in params)
        if self.fused is None:
            return fusable and supported
        if self.fused and not fusable:
            raise ConfigError(
                "optim.fused=true cannot step with this trainer: Lightning's mixed precision (trainer.precision="
                "bf16-mixed or 16-mixed) refuses to clip a fused optimizer's gradients. Set optim.fused=null (fused "
                "where allowed), or trainer.gradient_clip_val=null"
            )
        if self.fused and not supported:
            found = sorted({p.device.type for p in params})
            raise ConfigError(
                f"optim.fused=true needs floating-point parameters on {', '.join(devices)}; these are on "
                f"{', '.join(found)}. Set optim.fused=null (fused where torch has the kernel)"
            )
        return self.fused


@dataclass
class Muon(OptimizerConfig):
    """Muon (Keller Jordan, 2024) for the 2-D weights of hidden linear layers; AdamW for the rest (embeddings,
    output head, norm gains, biases), whose update is not a matrix acting on activations."""

    name: ClassVar[str] = "muon"
    lr: float = 0.02  # Muon's: an update of spectral norm ~lr per step, whatever the gradient's scale
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5
    weight_decay: float = 0.0  # on the Muon matrices, decoupled
    adam_lr: float = 3e-3  # AdamW's, for everything Muon does not update
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    adam_weight_decay: float = 0.0  # on embeddings and the head (gains and biases are never decayed)

    def optimizer(self, model: nn.Module, fusable: bool = True) -> MuonWithAdamW:
        matrices = {id(p) for p in hidden_matrices(model)}
        params = [p for p in model.parameters() if p.requires_grad]
        adam = {"use_muon": False, "lr": self.adam_lr, "betas": self.adam_betas, "eps": self.adam_eps}
        groups = [
            {"params": [p for p in params if id(p) in matrices], "use_muon": True, "weight_decay": self.weight_decay},
            {
                "params": [p for p in params if id(p) not in matrices and p.dim() >= 2],
                "weight_decay": self.adam_weight_decay,
                **adam,
            },
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, **adam},
        ]
        return MuonWithAdamW(
            [g for g in groups if g["params"]],
            lr=self.lr,
            momentum=self.momentum,
            nesterov=self.nesterov,
            ns_steps=self.ns_steps,
        )


def hidden_matrices(model: nn.Module) -> list[torch.Tensor]:
    """Weights of the linear layers inside the network: every nn.Linear but the output head (`model.head`, which
    may be the tied embedding)."""
    head = getattr(model, "head", None)
    head_weight = getattr(head, "weight", None)
    return [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.Linear) and m is not head and m.weight is not head_weight and m.weight.requires_grad
    ]


OPTIMIZERS: dict[str, type[OptimizerConfig]] = {cls.name: cls for cls in (AdamW, Muon)}


def optimizer_config(settings: OptimizerConfig | Mapping[str, Any] | None) -> OptimizerConfig:
    """An optimizer config from itself, or from the dict a checkpoint saved (`name` picks the class; AdamW when
    absent, as in checkpoints made before there was a choice)."""
    if isinstance(settings, OptimizerConfig):
        return settings
    settings = dict(settings or {})
    name = settings.pop("name", "adamw")
    if name not in OPTIMIZERS:
        raise ConfigError(f"optim name={name!r} is not one of {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"optim={name} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}")
    plain: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}
    return cls(**plain)
