"""Where documents come from: one module per kind of source, all behind `Source` (base.py)."""

from lmpre.data.sources.base import Source, WorkUnit

__all__ = ["Source", "WorkUnit"]
