"""What every pretraining objective shares; a subclass only says how a window of tokens becomes
model inputs and targets (`forward`) and how long that window must be (`window_length`)."""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.utils.flop_counter import FlopCounterMode
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import Self

from lmpre.callbacks import logs_this_step
from lmpre.checkpoint import RECORD_KEY, check_matches, inspect, objective_class, run_record
from lmpre.errors import CheckpointError, ConfigError
from lmpre.models import Transformer, TransformerConfig
from lmpre.objectives.optim import OptimizerConfig, optimizer_config
from lmpre.objectives.parallelize import Parallelism, parallelize

IGNORE_INDEX = -100  # target value for positions that carry no loss
UNKNOWN_LENGTH = 2**62  # steps of an LR schedule whose end is not known yet


@dataclass
class Prediction:
    logits: Tensor  # (B, T, vocab); in training maybe (1, N, vocab): only the N scored positions (MaskedLM)
    targets: Tensor  # (B, T), IGNORE_INDEX where there is no loss; or (1, N)


class PretrainingObjective(L.LightningModule):
    flops_per_batch: int | None = None  # read by ThroughputMonitor for FLOP/s and, on GPUs, MFU

    def __init__(
        self,
        backbone: TransformerConfig | Mapping[str, Any],
        optim: OptimizerConfig | Mapping[str, Any] | None = None,
        special_tokens: Mapping[str, Any] | None = None,
        seed: int = 0,
        activation_checkpointing: bool = False,
        compile: bool | str = False,  # true: torch.compile's default backend; or a backend's name
    ) -> None:
        super().__init__()
        self.config = backbone if isinstance(backbone, TransformerConfig) else TransformerConfig(**backbone)
        self.optim = optimizer_config(optim)  # AdamW, Muon, …: conf/optim/
        self.special_tokens = dict(special_tokens or {})
        self.seed = seed
        self.save_hyperparameters()
        # Plain containers only, so checkpoints load with torch.load(weights_only=True).
        self.hparams.update(
            backbone=asdict(self.config), optim=self.optim.to_dict(), special_tokens=self.special_tokens
        )
        self.model = Transformer(self.config)
        # Applied to the model by configure_model (lmpre.objectives.parallelize), never written into its blocks.
        self.parallel = Parallelism(activation_checkpointing=activation_checkpointing, compile=compile)
        self._parallelized = False
        self._scored = torch.zeros((), dtype=torch.long)  # scored positions of this optimizer step so far
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(self.config.vocab_size, average="micro", ignore_index=IGNORE_INDEX)

    def configure_model(self) -> None:
        # Lightning calls this hook for every stage (validate, then fit): parallelize only once. The mesh is set by
        # ModelParallelStrategy (conf/trainer/fsdp.yaml); without it (one device, DDP) nothing is sharded.
        if not self._parallelized:
            self._parallelized = True
            mesh = None if self.device_mesh is None else self.device_mesh["data_parallel"]
            parallelize(self.model, mesh, self.parallel)

    # ------------------------------------------------------------------------------------- gradient accumulation

    def accumulate(self, loss_sum: Tensor, scored: Tensor) -> Tensor:
        """The loss to back-propagate for a micro-batch whose scored positions sum to `loss_sum`.

        The update of k accumulated micro-batches must be that of one k-times larger batch: the mean over every
        scored position of all of them (and of every process). Masked LM scores a random number of positions per
        micro-batch, so a mean of per-micro-batch means is not that. The sum goes back instead, and the gradient is
        divided by the whole step's count of scored positions before the optimizer sees it
        (`on_before_optimizer_step`). A step of one micro-batch on one process needs none of this: its mean is the
        step's mean, and the gradients are not touched again."""
        if self._one_batch_per_step():
            return loss_sum / scored.clamp(min=1)
        self._scored = self._scored + scored.detach()
        return loss_sum

    def _one_batch_per_step(self) -> bool:
        trainer = self._trainer
        return trainer is None or (trainer.accumulate_grad_batches == 1 and trainer.world_size == 1)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        one_batch, logs = self._one_batch_per_step(), logs_this_step(self.trainer)
        if one_batch and not logs:  # most steps: nothing to rescale or log
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not one_batch:
            scored = self.trainer.strategy.reduce(self._scored, reduce_op="sum")  # every process's
            # Lightning divided each micro-batch's loss by k, and DDP/FSDP average gradients over the processes.
            scale = self.trainer.accumulate_grad_batches * self.trainer.world_size / scored.clamp(min=1)
            torch._foreach_mul_([g.to_local() if isinstance(g, DTensor) else g for g in grads], scale)
            self._scored = torch.zeros((), dtype=torch.long, device=self.device)
        if grads and logs:  # logging steps only: the norm costs a sync
            norm = torch.nn.utils.get_total_norm(grads)  # before clipping, which Lightning does next
            self.log("train/grad_norm", norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def window_length(self, seq_len: int) -> int:
        """Raw tokens per training example for model inputs of `seq_len` tokens."""
        return seq_len

    def forward(self, window: Tensor, generator: torch.Generator | None = None) -> Prediction:
        raise NotImplementedError

    def special_token(self, name: str) -> Any:
        if name not in self.special_tokens:
            raise ConfigError(
                f"{type(self).__name__} needs the special token {name!r}, but the tokenizer provides only "
                f"{sorted(self.special_tokens)}; prepare the data with lmpre's tokenizer (python -m lmpre.prepare)"
            )
        return self.special_tokens[name]

    def batch_generator(self, stage: str, batch_idx: int, device: torch.device) -> torch.Generator:
        """A generator seeded by (seed, stage, step, batch, rank): random corruption is fresh for every
        batch, identical on an exact resume, and the same at every validation."""
        step = self.global_step if stage == "train" else 0
        key = f"{self.seed}/{stage}/{step}/{batch_idx}/{self.global_rank}".encode()
        return torch.Generator(device=device).manual_seed(zlib.crc32(key))

    def training_step(self, window: Tensor, batch_idx: int) -> Tensor:
        # FLOPs are counted once, on the real shapes of this objective's model inputs.
        counter = FlopCounterMode(display=False) if self.flops_per_batch is None else contextlib.nullcontext()
        with counter:
            pred = self(window, self.batch_generator("train", batch_idx, window.device))
        if isinstance(counter, FlopCounterMode):
            self.flops_per_batch = 3 * counter.get_total_flops()  # backward costs about twice the forward
        targets = pred.targets.flatten()
        loss_sum = F.cross_entropy(
            pred.logits.flatten(0, 1).float(), targets, ignore_index=IGNORE_INDEX, reduction="sum"
        )
        scored = (targets != IGNORE_INDEX).sum()
        # Only on the steps Lightning writes: each self.log pays its bookkeeping, written or not.
        if self._trainer is None or logs_this_step(self._trainer):
            self.log("train/loss", loss_sum / scored, prog_bar=True)
        return self.accumulate(loss_sum, scored)

    def validation_step(self, window: Tensor, batch_idx: int) -> None:
        pred = self(window, self.batch_generator("val", batch_idx, window.device))
        logits, targets = pred.logits.flatten(0, 1).float(), pred.targets.flatten()
        scored = targets != IGNORE_INDEX
        loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        self.val_loss.update(loss / scored.sum(), weight=scored.sum())
        self.val_acc.update(logits[scored].argmax(-1), targets[scored])

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.validation_metrics(self.val_loss.compute()), prog_bar=True)
        self.val_loss.reset()

    def validation_metrics(self, loss: Tensor) -> dict[str, Tensor]:
        metrics = {"val/loss": loss, "val/ppl": loss.exp(), "val/acc": self.val_acc.compute()}
        self.val_acc.reset()
        return metrics

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What the checkpoint belongs to (lmpre.checkpoint): compared when a run resumes it or loads it.
        trainer = self._trainer
        checkpoint[RECORD_KEY] = run_record(self, getattr(trainer, "datamodule", None))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainer = self._trainer
        if trainer is not None:  # resuming: the checkpoint must be of this objective, backbone and data
            current = run_record(self, getattr(trainer, "datamodule", None))
            check_matches(Path(str(trainer.ckpt_path)), checkpoint.get(RECORD_KEY), current)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path: str | Path | IO[bytes],
        map_location: Any = None,
        hparams_file: str | Path | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> Self:
        """Lightning's, after a check that the checkpoint holds this objective (a clear error otherwise).

        `PretrainingObjective.load_from_checkpoint` (like `lmpre.checkpoint.load_objective`) builds whichever
        objective the checkpoint records."""
        target: type[PretrainingObjective] = cls
        if isinstance(checkpoint_path, (str, Path)):
            path = Path(checkpoint_path)
            info = inspect(path, setting="checkpoint")
            if info.record is not None:
                target = objective_class(path, info.record)
                if not issubclass(target, cls):
                    raise CheckpointError(
                        f"{path} holds a {target.__name__} checkpoint, not a {cls.__name__}: load it with "
                        f"{target.__name__}.load_from_checkpoint or lmpre.checkpoint.load_objective"
                    )
            elif cls is PretrainingObjective:
                objective_class(path, None)  # raises: which class to build is unknown
        # Lightning's own, for the class the checkpoint holds.
        model = super(PretrainingObjective, target).load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs
        )
        return cast(Self, model)

    def configure_optimizers(self) -> Any:
        # A time budget alone leaves the length unknown here (infinite): lmpre.budget.ScheduleToBudget sets it once
        # it has measured the speed; until then the schedule holds the peak LR after the warm-up.
        total = self.trainer.estimated_stepping_batches
        # Lightning's mixed precision refuses to clip a fused optimizer's gradients.
        clips = bool(self.trainer.gradient_clip_val)
        fusable = not (clips and isinstance(self.trainer.precision_plugin, MixedPrecision))
        length = int(total) if math.isfinite(total) else UNKNOWN_LENGTH
        optimizer, scheduler = self.optim.build(self.model, length, fusable=fusable)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
