"""Document filters: each keeps a document (perhaps rewritten) or names why it is dropped; see `base.Filter`."""

from lmpre.data.filters.base import Filter, run_filters
from lmpre.data.filters.language import Language
from lmpre.data.filters.normalize import Normalize
from lmpre.data.filters.quality import GopherQuality
from lmpre.data.filters.repetition import GopherRepetition

__all__ = ["Filter", "GopherQuality", "GopherRepetition", "Language", "Normalize", "run_filters"]
