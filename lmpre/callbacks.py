"""Lightning callbacks that make a run end the way users expect."""

from __future__ import annotations

from typing import Any

import lightning as L


class ValidateOnLastStep(L.Callback):
    """Validate (and so checkpoint) after the final step even when `max_steps` is not a multiple of
    `val_check_interval`: otherwise the steps after the last validation are never saved."""

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True  # Lightning validates before it stops
