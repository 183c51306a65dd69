"""What every filter shares: one call that keeps a document (perhaps rewritten) or names why it is dropped."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from lmpre.data.document import Document


class Filter(ABC):
    """One step of cleaning, run on every document in the worker processes.

    Filters are pickled into the workers and built before the run's settings are checked, so constructors only
    store settings: no I/O, no model loading. A drop reason is `"<name>.<rule>"` (e.g. `gopher_quality.word_count`),
    so the cleaning report counts drops per rule and names the setting that caused them.
    """

    name: str

    @abstractmethod
    def __call__(self, document: Document) -> Document | str:
        """The document, its text perhaps transformed (`dataclasses.replace`), or the reason it is dropped."""

    def prepare(self) -> None:
        """Build what every document needs (lookup tables, models). Called once in the preparing process before the
        worker processes fork, which then share it instead of each building its own."""
        return None  # most filters need nothing

    def drop(self, rule: str) -> str:
        return f"{self.name}.{rule}"


def run_filters(filters: Sequence[Filter], document: Document) -> Document | str:
    """Apply `filters` in order; the first drop reason ends the run (later filters never see the document)."""
    for filter_ in filters:
        result = filter_(document)
        if isinstance(result, str):
            return result
        document = result
    return document
