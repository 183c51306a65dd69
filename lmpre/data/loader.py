"""litdata's StreamingDataLoader, resumable across epoch boundaries when Lightning drives it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from litdata import StreamingDataLoader


class ResumableStreamingDataLoader(StreamingDataLoader):
    """A StreamingDataLoader whose restored position applies to the one epoch it was restored into.

    `load_state_dict` sets litdata's `restore` flag, which makes the next `__iter__` continue from the saved
    position instead of starting a new epoch; litdata clears the flag only when that iteration runs to its end.
    Lightning never lets it: it knows the loader's length, stops asking after the last batch and starts the
    next epoch with a fresh `iter()`. The flag then stays set, so the next epoch skips its reset (no new
    shuffle, no epoch counter, the dataset re-applies the checkpoint's position): the resumed run replays
    batches of the previous epoch and runs behind the uninterrupted one from there on.

    Here the restored position is consumed by the first iteration that starts after `load_state_dict`; every
    later iteration is a new epoch, as it is in a run that was never interrupted.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_pending = False

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._resume_pending = True

    def __iter__(self) -> Iterator[Any]:
        # A generator: this runs at the first `next()`, so iterators created but never started change nothing.
        if not self._resume_pending:
            self.restore = False
        self._resume_pending = False
        yield from super().__iter__()
